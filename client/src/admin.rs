//! [`Admin`]: create, delete, list and describe topics; the cluster's status; list, describe,
//! delete consumer groups and reset their offsets.

use crate::cluster::{unexpected, Cluster};
use crate::config::ClientConfig;
use crate::error::Result;
use cairn_protocol::group::{
    CommittedPartitionOffset, DeleteGroupRequest, DescribeGroupRequest, DescribeGroupResponse,
    GroupListing, ListGroupsRequest, OffsetFetchRequest, OffsetResetTarget,
    ResetGroupOffsetsRequest,
};
use cairn_protocol::messages::{
    AlterTopicRequest, ClusterStatusRequest, ClusterStatusResponse, ConfigChange,
    CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, DescribeTopicResponse,
    ListTopicsRequest, Liveness, OffsetSpec, TopicConfig, TopicMetadata, TopicSummary,
};
use cairn_protocol::{NodeId, Offset, Request, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Topic administration. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn example() -> Result<(), cairn_client::ClientError> {
/// use cairn_client::{Admin, ClientConfig, TopicConfig};
///
/// let admin = Admin::new(ClientConfig::new("127.0.0.1:7171")?)?;
/// admin.create_topic("orders", 3, None, TopicConfig::default()).await?;
/// for topic in admin.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partitions);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Admin {
    cluster: Arc<Cluster>,
}

impl Admin {
    /// An admin client for the cluster `config` names. Connects lazily, on the first call.
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Cluster::new(config)?,
        })
    }

    /// Creates `name` with `partitions` partitions. `replication_factor` `None` takes the
    /// cluster default. Returns the new topic's metadata.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        config: TopicConfig,
    ) -> Result<TopicMetadata> {
        let reply = self
            .cluster
            .call_any(Request::CreateTopic(CreateTopicRequest {
                name: name.to_owned(),
                partitions,
                replication_factor,
                config,
            }))
            .await?;
        self.cluster.invalidate();
        match reply {
            Response::CreateTopic(reply) => Ok(reply.topic),
            other => Err(unexpected("CreateTopic", &other)),
        }
    }

    /// Grows `name` to `partitions` partitions (never fewer; `None` keeps them) and applies
    /// config changes (`retention.ms`, `retention.bytes`; a `None` value returns a key to the
    /// node's default). Returns the topic's metadata after the change.
    ///
    /// ```no_run
    /// use cairn_client::{Admin, ClientConfig, ConfigChange};
    ///
    /// # async fn run() -> cairn_client::error::Result<()> {
    /// let admin = Admin::new(ClientConfig::new("127.0.0.1:7171")?)?;
    /// let week = ConfigChange { key: "retention.ms".into(), value: Some("604800000".into()) };
    /// let topic = admin.alter_topic("orders", Some(12), vec![week]).await?;
    /// assert_eq!(topic.partitions.len(), 12);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn alter_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        configs: Vec<ConfigChange>,
    ) -> Result<TopicMetadata> {
        let reply = self
            .cluster
            .call_any(Request::AlterTopic(AlterTopicRequest {
                name: name.to_owned(),
                partitions,
                configs,
            }))
            .await?;
        self.cluster.invalidate();
        match reply {
            Response::AlterTopic(reply) => Ok(reply.topic),
            other => Err(unexpected("AlterTopic", &other)),
        }
    }

    /// Deletes `name` and its data (`UnknownTopic` if there is no such topic).
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let reply = self
            .cluster
            .call_any(Request::DeleteTopic(DeleteTopicRequest {
                name: name.to_owned(),
            }))
            .await?;
        self.cluster.invalidate();
        match reply {
            Response::DeleteTopic(_) => Ok(()),
            other => Err(unexpected("DeleteTopic", &other)),
        }
    }

    /// User topics (internal ones such as `__meta` are left out).
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.list_topics_with(false).await
    }

    /// Topics, internal ones included when `include_internal`.
    pub async fn list_topics_with(&self, include_internal: bool) -> Result<Vec<TopicSummary>> {
        let reply = self
            .cluster
            .call_any(Request::ListTopics(ListTopicsRequest { include_internal }))
            .await?;
        match reply {
            Response::ListTopics(reply) => Ok(reply.topics),
            other => Err(unexpected("ListTopics", &other)),
        }
    }

    /// Per partition: leader, replicas, epoch, log start, high watermark and log end.
    ///
    /// A node describes the replicas it hosts as it sees them, and a follower learns the high
    /// watermark only with the leader's next append or heartbeat: right after a produce, a
    /// follower's answer shows a high watermark behind the log end. So each partition's
    /// figures are taken from its leader (one request per leading node); a partition whose
    /// leader does not answer keeps the first node's figures.
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse> {
        let mut reply = self.describe_topic_at(None, name).await?;
        let mut leaders: Vec<NodeId> = reply.partitions.iter().filter_map(|p| p.leader).collect();
        leaders.sort();
        leaders.dedup();
        if leaders.is_empty() {
            return Ok(reply);
        }
        let brokers = self.cluster.refresh(&[]).await?.brokers.clone();
        let answers = futures::future::join_all(leaders.iter().map(|leader| async {
            let address = brokers.get(leader)?;
            let answer = self.describe_topic_at(Some(address), name).await.ok()?;
            Some((*leader, answer))
        }))
        .await;
        let index: HashMap<u32, usize> = reply
            .partitions
            .iter()
            .enumerate()
            .map(|(at, p)| (p.partition, at))
            .collect();
        for (leader, answer) in answers.into_iter().flatten() {
            for from_leader in answer.partitions {
                let Some(&at) = index.get(&from_leader.partition) else {
                    continue;
                };
                let partition = &mut reply.partitions[at];
                if from_leader.leader == Some(leader) && partition.leader == Some(leader) {
                    *partition = from_leader;
                }
            }
        }
        Ok(reply)
    }

    /// `DescribeTopic` asked of one broker, or of any when `address` is `None`.
    async fn describe_topic_at(
        &self,
        address: Option<&str>,
        name: &str,
    ) -> Result<DescribeTopicResponse> {
        let request = Request::DescribeTopic(DescribeTopicRequest {
            name: name.to_owned(),
        });
        let reply = match address {
            None => self.cluster.call_any(request).await?,
            Some(address) => {
                self.cluster
                    .connection(address)
                    .await?
                    .call(request)
                    .await?
            }
        };
        match reply {
            Response::DescribeTopic(reply) => Ok(reply),
            other => Err(unexpected("DescribeTopic", &other)),
        }
    }

    /// One node's view of the cluster: nodes and their liveness (that node's gossip
    /// opinion), every partition's replicas and leader, and replicas on nodes it does not
    /// hear. Internal partitions (`__meta`) are included when `include_internal`.
    ///
    /// Whether a follower is out of sync (`lagging_replicas`) only its partition's leader
    /// knows: every other node the answering node hears is asked too, and each partition
    /// takes the lagging replicas its leader reports. A leader that does not answer reports
    /// nothing (its partitions then show its followers as in sync as far as this call knows).
    pub async fn cluster_status(&self, include_internal: bool) -> Result<ClusterStatusResponse> {
        let request = ClusterStatusRequest { include_internal };
        let reply = self
            .cluster
            .call_any(Request::ClusterStatus(request.clone()))
            .await?;
        let mut status = match reply {
            Response::ClusterStatus(reply) => reply,
            other => return Err(unexpected("ClusterStatus", &other)),
        };
        let leaders: std::collections::BTreeSet<NodeId> = status
            .partitions
            .iter()
            .filter_map(|partition| partition.leader)
            .filter(|leader| *leader != status.node_id)
            .collect();
        for leader in leaders {
            let Some(address) = status
                .nodes
                .iter()
                .find(|node| node.node_id == leader && node.liveness != Liveness::Down)
                .and_then(|node| node.address.clone())
            else {
                continue;
            };
            let answer = match self.cluster.connection(&address).await {
                Ok(connection) => connection
                    .call(Request::ClusterStatus(request.clone()))
                    .await
                    .ok(),
                Err(_) => None,
            };
            let Some(Response::ClusterStatus(answer)) = answer else {
                continue;
            };
            for partition in status
                .partitions
                .iter_mut()
                .filter(|partition| partition.leader == Some(leader))
            {
                if let Some(theirs) = answer.partitions.iter().find(|theirs| {
                    theirs.topic == partition.topic && theirs.partition == partition.partition
                }) {
                    partition.lagging_replicas = theirs.lagging_replicas.clone();
                }
            }
        }
        Ok(status)
    }

    /// Topic metadata as producers and consumers see it (leaders per partition).
    pub async fn topic_metadata(&self, name: &str) -> Result<Arc<TopicMetadata>> {
        self.cluster.invalidate();
        self.cluster.topic(name).await
    }

    /// Every group of the cluster: each node lists the groups it coordinates, so every
    /// broker is asked and the answers merged (a group seen twice during a coordinator
    /// move is listed once). Sorted by group id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let metadata = self.cluster.refresh(&[]).await?;
        let mut addresses: Vec<String> = metadata.brokers.values().cloned().collect();
        if addresses.is_empty() {
            addresses = self.cluster.config().bootstrap.clone();
        }
        addresses.sort();
        let mut groups: Vec<GroupListing> = Vec::new();
        let mut last_error = None;
        let mut answered = 0usize;
        for address in &addresses {
            let reply = match self.cluster.connection(address).await {
                Ok(connection) => {
                    connection
                        .call(Request::ListGroups(ListGroupsRequest {}))
                        .await
                }
                Err(error) => Err(error),
            };
            match reply {
                Ok(Response::ListGroups(reply)) => {
                    answered += 1;
                    groups.extend(reply.groups);
                }
                Ok(other) => return Err(unexpected("ListGroups", &other)),
                Err(error) => last_error = Some(error),
            }
        }
        if answered == 0 {
            if let Some(error) = last_error {
                return Err(error);
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// A group's state, members and their assignments, and per partition the committed
    /// offset, log end and lag, from its coordinator.
    ///
    /// The coordinator knows the log end only of the partitions its node hosts, and as that
    /// replica sees it (a follower's high watermark trails the leader's), so each partition's
    /// log end is asked of its leader and the lag recomputed; a partition whose leader does
    /// not answer keeps the coordinator's figures.
    pub async fn describe_group(&self, group_id: &str) -> Result<DescribeGroupResponse> {
        let request = Request::DescribeGroup(DescribeGroupRequest {
            group_id: group_id.to_owned(),
        });
        let mut reply = match self.call_coordinator(group_id, request).await? {
            Response::DescribeGroup(reply) => reply,
            other => return Err(unexpected("DescribeGroup", &other)),
        };
        let ends = futures::future::join_all(reply.partitions.iter().map(|partition| {
            self.list_offset(&partition.topic, partition.partition, OffsetSpec::Latest)
        }))
        .await;
        for (partition, end) in reply.partitions.iter_mut().zip(ends) {
            let Ok(end) = end else { continue };
            let lag = match (partition.committed, partition.log_end, partition.lag) {
                (Some(committed), _, _) => Some(end.0.saturating_sub(committed.0)),
                // No commit: the lag counts from the log start, which the old figures hold.
                (None, Some(old_end), Some(old_lag)) => {
                    Some((old_lag + end.0).saturating_sub(old_end.0))
                }
                (None, _, _) => self
                    .list_offset(&partition.topic, partition.partition, OffsetSpec::Earliest)
                    .await
                    .ok()
                    .map(|start| end.0.saturating_sub(start.0)),
            };
            partition.log_end = Some(end);
            partition.lag = lag;
        }
        Ok(reply)
    }

    /// An offset of a partition, from its leader: its log start (`Earliest`), high watermark
    /// (`Latest`), or the first offset at or after a timestamp.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Offset> {
        self.cluster.list_offset(topic, partition, spec).await
    }

    /// Deletes an empty group and its committed offsets (`GroupNotEmpty` while it has
    /// members).
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        let request = Request::DeleteGroup(DeleteGroupRequest {
            group_id: group_id.to_owned(),
        });
        match self.call_coordinator(group_id, request).await? {
            Response::DeleteGroup(_) => Ok(()),
            other => Err(unexpected("DeleteGroup", &other)),
        }
    }

    /// Moves an empty group's committed offsets of `topic` (all partitions, or those named)
    /// to `to`; returns the offsets now committed. `GroupNotEmpty` while it has members.
    pub async fn reset_group_offsets(
        &self,
        group_id: &str,
        topic: &str,
        partitions: Option<Vec<u32>>,
        to: OffsetResetTarget,
    ) -> Result<Vec<CommittedPartitionOffset>> {
        let request = Request::ResetGroupOffsets(ResetGroupOffsetsRequest {
            group_id: group_id.to_owned(),
            topic: topic.to_owned(),
            partitions,
            to,
        });
        match self.call_coordinator(group_id, request).await? {
            Response::ResetGroupOffsets(reply) => Ok(reply.partitions),
            other => Err(unexpected("ResetGroupOffsets", &other)),
        }
    }

    /// Every offset the group has committed, sorted by topic and partition.
    pub async fn group_offsets(&self, group_id: &str) -> Result<Vec<CommittedPartitionOffset>> {
        let request = Request::OffsetFetch(OffsetFetchRequest {
            group_id: group_id.to_owned(),
            member: None,
            partitions: None,
        });
        match self.call_coordinator(group_id, request).await? {
            Response::OffsetFetch(reply) => Ok(reply.partitions),
            other => Err(unexpected("OffsetFetch", &other)),
        }
    }

    async fn call_coordinator(&self, group_id: &str, request: Request) -> Result<Response> {
        cairn_protocol::group::validate_group_id(group_id)?;
        let deadline = Instant::now() + self.cluster.config().request_timeout;
        self.cluster
            .call_coordinator(group_id, deadline, || request.clone())
            .await
    }
}
