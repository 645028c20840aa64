//! `ClusterStatus`: this node's view of the cluster, for `cairn cluster status`.
//!
//! Everything here is read from what the node already keeps: the brokers it can hand to
//! clients (itself plus the nodes gossip hears), the `__meta` voters, and every topic's
//! partitions with their leaders (its own replica's view where it hosts one, gossip's
//! leadership hints elsewhere). A lone node answers with itself only. Liveness is this node's
//! opinion; it decides nothing, it is shown.

use crate::broker::Broker;
use crate::meta::META_TOPIC;
use crate::partition::LogHealth;
use cairn_protocol::messages::{
    ClusterStatusRequest, ClusterStatusResponse, Liveness, NodeStatus, PartitionDescription,
    PartitionStatus, Response, TopicMetadata,
};
use cairn_protocol::{ApiError, NodeId};
use cairn_storage::LogStore;
use std::collections::{BTreeMap, BTreeSet};

pub fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: ClusterStatusRequest,
) -> Result<Response, ApiError> {
    broker.check_ready()?;
    let mut topics = Vec::new();
    for name in broker.topic_names()? {
        match broker.topic_metadata(&name) {
            Ok(topic) => topics.push(topic),
            // Deleted since the names were read: it is no longer part of the cluster.
            Err(ApiError::UnknownTopic { .. } | ApiError::NotReady { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    let view = View {
        node_id: broker.node_id(),
        heard: broker
            .brokers()
            .into_iter()
            .map(|info| (info.node_id, info.address))
            .collect(),
        meta: broker.meta_description(),
        damaged: broker.damaged_replicas(),
        last_addresses: broker.last_known_addresses(),
        lagging: broker.lagging_replicas(),
    };
    Ok(Response::ClusterStatus(
        view.status(topics, request.include_internal),
    ))
}

/// What the answering node knows, separated from the broker so the assembly can be tested.
struct View {
    node_id: NodeId,
    /// Nodes this node hears (itself included), with their client addresses.
    heard: BTreeMap<NodeId, String>,
    /// The `__meta` partition as this node sees it; its replicas are the metadata voters.
    meta: PartitionDescription,
    /// This node's own replicas that lost committed data, by (topic, partition).
    damaged: BTreeMap<(String, u32), LogHealth>,
    /// The client address gossip last gave each node it ever heard, alive or not: a node
    /// that went down is shown where it was, so an operator knows which one to look at.
    last_addresses: BTreeMap<NodeId, String>,
    /// The partitions this node leads with followers out of sync, and those followers.
    lagging: BTreeMap<(String, u32), Vec<NodeId>>,
}

impl View {
    fn status(&self, topics: Vec<TopicMetadata>, include_internal: bool) -> ClusterStatusResponse {
        let voters: BTreeSet<NodeId> = self.meta.replicas.iter().copied().collect();
        let mut partitions = Vec::new();
        if include_internal {
            partitions.push(self.partition_status(
                META_TOPIC,
                0,
                true,
                self.meta.replicas.clone(),
                self.meta.leader,
                self.meta.leader_epoch,
            ));
        }
        let mut topics = topics;
        topics.sort_by(|left, right| left.name.cmp(&right.name));
        // Internal topics (`__offsets`) only when asked for, like `__meta`.
        for topic in topics
            .into_iter()
            .filter(|topic| include_internal || !topic.internal)
        {
            for partition in topic.partitions {
                partitions.push(self.partition_status(
                    &topic.name,
                    partition.partition,
                    topic.internal,
                    partition.replicas,
                    partition.leader,
                    partition.leader_epoch,
                ));
            }
        }
        let mut known: BTreeSet<NodeId> = self.heard.keys().copied().collect();
        known.insert(self.node_id);
        known.extend(voters.iter().copied());
        for partition in &partitions {
            known.extend(partition.replicas.iter().copied());
        }
        let nodes = known
            .into_iter()
            .map(|node_id| NodeStatus {
                node_id,
                address: self
                    .heard
                    .get(&node_id)
                    .or_else(|| self.last_addresses.get(&node_id))
                    .cloned(),
                liveness: self.liveness(node_id),
                metadata_voter: voters.contains(&node_id),
            })
            .collect();
        ClusterStatusResponse {
            node_id: self.node_id,
            nodes,
            partitions,
        }
    }

    fn liveness(&self, node_id: NodeId) -> Liveness {
        if node_id == self.node_id {
            Liveness::Local
        } else if self.heard.contains_key(&node_id) {
            Liveness::Alive
        } else {
            Liveness::Down
        }
    }

    fn partition_status(
        &self,
        topic: &str,
        partition: u32,
        internal: bool,
        replicas: Vec<NodeId>,
        leader: Option<NodeId>,
        leader_epoch: cairn_protocol::Epoch,
    ) -> PartitionStatus {
        let offline_replicas = replicas
            .iter()
            .copied()
            .filter(|replica| self.liveness(*replica) == Liveness::Down)
            .collect();
        let health = self
            .damaged
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(LogHealth::Healthy);
        let mine = |wanted: bool| {
            if wanted {
                vec![self.node_id]
            } else {
                Vec::new()
            }
        };
        PartitionStatus {
            topic: topic.to_string(),
            partition,
            internal,
            replicas,
            leader,
            leader_epoch,
            offline_replicas,
            repairing_replicas: mine(matches!(health, LogHealth::Repairing { .. })),
            corrupted_replicas: mine(matches!(health, LogHealth::Corrupted { .. })),
            lagging_replicas: self
                .lagging
                .get(&(topic.to_string(), partition))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::messages::PartitionMetadata;
    use cairn_protocol::{Epoch, Offset};

    fn meta(voters: &[u32], leader: Option<u32>) -> PartitionDescription {
        PartitionDescription {
            partition: 0,
            leader: leader.map(NodeId),
            leader_epoch: Epoch(2),
            replicas: voters.iter().copied().map(NodeId).collect(),
            log_start: Offset(0),
            high_watermark: Offset(5),
            log_end: Offset(5),
        }
    }

    fn topic(name: &str, partitions: &[(&[u32], Option<u32>)]) -> TopicMetadata {
        TopicMetadata {
            name: name.to_string(),
            internal: false,
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(index, (replicas, leader))| PartitionMetadata {
                    partition: index as u32,
                    leader: leader.map(NodeId),
                    leader_epoch: Epoch(1),
                    replicas: replicas.iter().copied().map(NodeId).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_lone_node_reports_itself_and_nothing_under_replicated() {
        let view = View {
            node_id: NodeId(1),
            heard: BTreeMap::from([(NodeId(1), "127.0.0.1:7171".to_string())]),
            meta: meta(&[1], Some(1)),
            damaged: BTreeMap::new(),
            last_addresses: BTreeMap::new(),
            lagging: BTreeMap::new(),
        };
        let offsets = TopicMetadata {
            internal: true,
            ..topic("__offsets", &[(&[1], Some(1))])
        };
        let topics = vec![topic("orders", &[(&[1], Some(1))]), offsets];
        // Internal topics only when asked for: `__meta` and `__offsets` first.
        let all = view.status(topics.clone(), true);
        let names: Vec<&str> = all.partitions.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(names, ["__meta", "__offsets", "orders"]);
        let status = view.status(topics, false);
        assert_eq!(
            status.nodes,
            vec![NodeStatus {
                node_id: NodeId(1),
                address: Some("127.0.0.1:7171".to_string()),
                liveness: Liveness::Local,
                metadata_voter: true,
            }]
        );
        assert_eq!(status.partitions.len(), 1);
        assert_eq!(status.partitions[0].topic, "orders");
        assert!(status.partitions[0].offline_replicas.is_empty());
    }

    #[test]
    fn replicas_on_unheard_nodes_are_offline_and_their_nodes_listed_down() {
        // Node 3 is a voter and a replica, but gossip does not hear it.
        let view = View {
            node_id: NodeId(2),
            heard: BTreeMap::from([
                (NodeId(1), "127.0.0.1:7171".to_string()),
                (NodeId(2), "127.0.0.1:7172".to_string()),
            ]),
            meta: meta(&[1, 2, 3], Some(1)),
            damaged: BTreeMap::from([(
                ("b".to_string(), 1),
                LogHealth::Repairing { until: Offset(9) },
            )]),
            // Gossip heard node 3 before it went down.
            last_addresses: BTreeMap::from([(NodeId(3), "127.0.0.1:7173".to_string())]),
            // Node 2 leads a-0, and node 1 has not caught up with it.
            lagging: BTreeMap::from([(("a".to_string(), 0), vec![NodeId(1)])]),
        };
        let status = view.status(
            vec![
                topic("b", &[(&[1, 2, 3], Some(1)), (&[2, 3, 1], None)]),
                topic("a", &[(&[1, 2], Some(2))]),
            ],
            true,
        );
        let liveness: Vec<(u32, Liveness, bool)> = status
            .nodes
            .iter()
            .map(|node| (node.node_id.0, node.liveness, node.address.is_some()))
            .collect();
        assert_eq!(
            liveness,
            vec![
                (1, Liveness::Alive, true),
                (2, Liveness::Local, true),
                (3, Liveness::Down, true)
            ]
        );
        let rows: Vec<(String, u32, Vec<NodeId>)> = status
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition, p.offline_replicas.clone()))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("__meta".to_string(), 0, vec![NodeId(3)]),
                ("a".to_string(), 0, vec![]),
                ("b".to_string(), 0, vec![NodeId(3)]),
                ("b".to_string(), 1, vec![NodeId(3)]),
            ]
        );
        assert!(status.partitions[0].internal);
        assert_eq!(status.partitions[3].leader, None);
        let lagging: Vec<Vec<NodeId>> = status
            .partitions
            .iter()
            .map(|p| p.lagging_replicas.clone())
            .collect();
        assert_eq!(lagging, vec![vec![], vec![NodeId(1)], vec![], vec![]]);
        // Its own damaged replica is reported by the answering node, and only that one.
        assert_eq!(status.partitions[3].repairing_replicas, vec![NodeId(2)]);
        assert!(status.partitions[2].repairing_replicas.is_empty());
        assert!(status.partitions[3].corrupted_replicas.is_empty());
    }
}
