//! Whole brokers of a three-node cluster in one process, on virtual time.
//!
//! Each node is a [`Broker`] over its own [`MemoryStore`], with `__meta` voters 1-3, sending
//! through one [`MemoryNetwork`] and attached to it as its own [`PeerInbox`]. Gossip is
//! replaced by telling each broker once that the two others joined (the `Joined` changes
//! `node::run` feeds it from membership); no leadership hints are exchanged, so everything
//! below is decided by the replicas' epochs and quorums alone. Gossip, the listeners and
//! the learners' fetches (a TCP client) stay with the real-process tests.
//!
//! Everything runs on the system's one arbiter (see `on_virtual_time`): a second arbiter
//! would bring its own runtime, whose clock is not the paused one.

use super::*;
use crate::config::{ConfigBuilder, Preset};
use crate::peer::memory::{on_virtual_time, single_leader, MemoryNetwork};
use cairn_membership::Generation;
use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_storage::MemoryStore;

const TOPIC: &str = "events";
const PARTITIONS: u32 = 3;
/// Generous for the test preset's 300 ms election timeout and 200 ms lease, in virtual time.
const WITHIN: Duration = Duration::from_secs(10);

struct Cluster {
    network: MemoryNetwork,
    nodes: Vec<NodeId>,
    brokers: Vec<Arc<Broker<MemoryStore>>>,
}

/// The test preset for node `id` of a cluster whose `__meta` voters are nodes 1-3.
fn node_config(id: NodeId) -> NodeConfig {
    ConfigBuilder::new()
        .preset(Preset::Test)
        .set("test", "node_id", &id.0.to_string())
        .set("test", "data_dir", "/nonexistent/in-process")
        .set("test", "listen", "127.0.0.1:0")
        .set("test", "initial_voters", "1,2,3")
        .build()
        .expect("a valid clustered test configuration")
}

/// What gossip would say about node `id`: alive and ready, at addresses nobody dials (the
/// memory transport routes by node id).
fn joined(id: NodeId) -> ClusterChange {
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", 9_000 + id.0).parse().unwrap();
    ClusterChange::Joined(NodeInfo {
        node_id: id,
        generation: Generation(1),
        gossip_addr: address,
        client_addr: address,
        peer_addr: address,
        kafka_addr: None,
        http_addr: None,
        ready: true,
        alive: true,
        hints: LeadershipHints::new(),
    })
}

impl Cluster {
    fn start() -> Cluster {
        let network = MemoryNetwork::new();
        let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let brokers: Vec<Arc<Broker<MemoryStore>>> = nodes
            .iter()
            .map(|&id| {
                let config = Arc::new(node_config(id));
                assert!(config.cluster.is_clustered());
                let store = MemoryStore::new();
                let broker = Broker::start(
                    config,
                    store.clone(),
                    GroupCommitter::start(store),
                    vec![actix::Arbiter::current()],
                    format!("127.0.0.1:{}", 9_000 + id.0),
                    None,
                    Arc::new(NodeMetrics::new()),
                    Arc::new(FlushTimes::new()),
                    network.transport(id),
                )
                .expect("a broker over a memory store starts");
                network.attach(id, Arc::clone(&broker) as Arc<dyn PeerInbox>);
                broker
            })
            .collect();
        for broker in &brokers {
            for &other in &nodes {
                broker.apply_cluster_change(joined(other));
            }
        }
        Cluster {
            network,
            nodes,
            brokers,
        }
    }

    /// Waits until every broker is ready (its `__meta` has a leader and is applied).
    async fn ready(&self) {
        for broker in &self.brokers {
            tokio::time::timeout(WITHIN, broker.wait_ready())
                .await
                .unwrap_or_else(|_| {
                    panic!("node {} not ready within {WITHIN:?}", broker.node_id())
                });
        }
    }

    /// The one broker among `among` whose replica of `log` leads, with its epoch, once
    /// exactly one does.
    async fn leader(&self, log: &str, among: &[usize]) -> (usize, Epoch) {
        single_leader(among, WITHIN, log, |index| {
            Some(self.brokers[index].hosted_log(log)?.shared.snapshot())
        })
        .await
    }

    /// Produces `value` to `partition` through broker `index`'s produce routing, with
    /// `acks=all`, and waits for the answer.
    async fn produce(
        &self,
        index: usize,
        partition: u32,
        value: String,
    ) -> Result<Offset, ApiError> {
        let handle = self.brokers[index].partition(TOPIC, partition)?;
        let mut builder = RecordBatchBuilder::new(1);
        builder.push(&Record::new(value));
        let reply = handle.produce(builder.build(), Acks::All)?;
        let answer = tokio::time::timeout(WITHIN, reply)
            .await
            .expect("a produce is answered within its timeout")
            .expect("the partition actor answers");
        answer.map(|response| response.base_offset)
    }

    /// The committed values broker `index`'s replica of `partition` serves, in offset order.
    async fn committed_values(&self, index: usize, partition: u32) -> Vec<String> {
        let log = self.log_name(partition);
        let handle = self.brokers[index]
            .hosted_log(&log)
            .unwrap_or_else(|| panic!("node {} hosts no replica of {log}", self.nodes[index]));
        let mut values = Vec::new();
        let mut from = Offset::ZERO;
        loop {
            let read = handle.read(from, 1 << 20, true).await.unwrap();
            let Some(last) = read.batches.last() else {
                return values;
            };
            from = last.next_offset();
            for batch in read.batches.iter().filter(|b| !b.header().is_control()) {
                for record in batch.records() {
                    let value = record.unwrap().value.unwrap();
                    values.push(String::from_utf8(value.to_vec()).unwrap());
                }
            }
        }
    }

    /// Waits until every replica of `partition` serves exactly `expected`.
    async fn converged(&self, partition: u32, expected: &[String]) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let mut served = Vec::new();
            for index in 0..self.brokers.len() {
                served.push(self.committed_values(index, partition).await);
            }
            if served.iter().all(|values| values == expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas of partition {partition} did not converge within {WITHIN:?}: \
                 acknowledged {expected:?}, served {served:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_name(&self, partition: u32) -> String {
        let catalog = self.brokers[0].catalog();
        let topic = catalog.state.topic(TOPIC).expect("the topic exists");
        hosted_partition(&catalog, topic, partition)
            .expect("every node hosts every partition (replication factor 3)")
            .log_name
            .clone()
    }
}

/// Three brokers elect one `__meta` leader; a topic created through it appears on every
/// node with a replica of each partition there; what each partition's leader acknowledged is
/// served by every replica. Then the node leading partition 0 is cut off: the two others elect
/// new leaders for what it led, on virtual time, and go on acknowledging, while it
/// acknowledges nothing; after the heal every acknowledged record is on every replica.
#[test]
fn three_brokers_replicate_a_topic_and_survive_an_isolated_leader() {
    on_virtual_time(|| async {
        let cluster = Cluster::start();
        cluster.ready().await;
        let (meta_leader, _) = cluster.leader(meta::META_LOG_NAME, &[0, 1, 2]).await;

        let created = cluster.brokers[meta_leader]
            .create_topic(CreateTopicRequest {
                name: TOPIC.to_string(),
                partitions: PARTITIONS,
                replication_factor: Some(3),
                config: TopicConfig::default(),
            })
            .await
            .expect("the __meta leader creates the topic");
        assert_eq!(created.partitions.len(), PARTITIONS as usize);
        for partition in &created.partitions {
            assert_eq!(partition.replicas.len(), 3, "{created:?}");
        }
        // Followers of `__meta` apply the topic once they hear it committed.
        let deadline = tokio::time::Instant::now() + WITHIN;
        for broker in &cluster.brokers {
            while broker.topic_metadata(TOPIC).is_err() || broker.hosted().len() != 4 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {} has not applied {TOPIC}",
                    broker.node_id()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        let mut acknowledged: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
        let mut leaders = Vec::new();
        for partition in 0..PARTITIONS {
            let (leader, epoch) = cluster
                .leader(&cluster.log_name(partition), &[0, 1, 2])
                .await;
            leaders.push((leader, epoch));
            for index in 0..10 {
                let value = format!("p{partition}-before-{index}");
                cluster
                    .produce(leader, partition, value.clone())
                    .await
                    .unwrap();
                acknowledged[partition as usize].push(value);
            }
        }
        for partition in 0..PARTITIONS {
            cluster
                .converged(partition, &acknowledged[partition as usize])
                .await;
        }

        let isolated = leaders[0].0;
        let others: Vec<usize> = (0..3).filter(|&index| index != isolated).collect();
        let other_nodes: Vec<NodeId> = others.iter().map(|&i| cluster.nodes[i]).collect();
        cluster
            .network
            .isolate(cluster.nodes[isolated], &other_nodes);
        let stranded = cluster.produce(isolated, 0, "stranded".to_string()).await;
        assert!(
            stranded.is_err(),
            "acknowledged without a majority: {stranded:?}"
        );

        for partition in 0..PARTITIONS {
            let (leader, epoch) = cluster.leader(&cluster.log_name(partition), &others).await;
            let (old_leader, old_epoch) = leaders[partition as usize];
            if old_leader == isolated {
                assert!(
                    epoch > old_epoch,
                    "partition {partition}: {epoch} after {old_epoch}"
                );
            }
            for index in 0..10 {
                let value = format!("p{partition}-after-{index}");
                cluster
                    .produce(leader, partition, value.clone())
                    .await
                    .unwrap();
                acknowledged[partition as usize].push(value);
            }
        }
        // Metadata goes on without the isolated node as well (it may have led `__meta`).
        let (meta_leader, _) = cluster.leader(meta::META_LOG_NAME, &others).await;
        cluster.brokers[meta_leader]
            .create_topic(CreateTopicRequest {
                name: "during-the-partition".to_string(),
                partitions: 1,
                replication_factor: Some(2),
                config: TopicConfig::default(),
            })
            .await
            .expect("the majority's __meta leader creates a topic");

        cluster.network.heal();
        for partition in 0..PARTITIONS {
            cluster
                .converged(partition, &acknowledged[partition as usize])
                .await;
        }
        let deadline = tokio::time::Instant::now() + WITHIN;
        while cluster.brokers[isolated]
            .topic_metadata("during-the-partition")
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the healed node never applied the topic created without it"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let counters = cluster.network.counters();
        assert!(counters.dropped > 0, "{counters:?}");
    });
}
