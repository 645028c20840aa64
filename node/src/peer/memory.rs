//! The peer transport's in-memory twin: the replicas of a whole cluster in one process.
//!
//! A [`MemoryNetwork`] stands for the wires between nodes. Each node sends through its own
//! [`MemoryTransport`] (a [`PeerSend`], as [`PeerTransport`](super::PeerTransport) is) and
//! receives through the [`PeerInbox`] it attached. A message goes through the same wire form
//! as over TCP ([`to_wire`](super::to_wire), a peer frame encoded and decoded,
//! [`from_wire`](super::from_wire)), so whatever the wire cannot carry fails here too, and is
//! then handed to the receiver's inbox at once, in the order sent. Links can be cut, one way
//! or both, and healed; what a cut link carries is dropped, as the TCP transport drops what a
//! broken connection held.
//!
//! Partition actors of several nodes then run on one actix system. With tokio's clock paused
//! (`tokio::time::pause`), the replicas' clock ([`crate::partition::Clock`]), their ticks and
//! every sleep run on virtual time, which the test helper `on_virtual_time` moves ten times
//! faster than real time: seconds of leases, elections and failovers take a fraction of a
//! second, and no real process is needed. The tests below run bare partition actors on it;
//! `broker::in_process_tests` runs whole brokers (`__meta`, catalog, partitions). What needs
//! processes (gossip, the listener, kills, disks) stays with the integration tests and the
//! chaos harness.

use super::{from_wire, to_wire, PeerInbox, PeerSend};
use cairn_protocol::peer::ReplicaKey;
use cairn_protocol::peer::{decode_peer_frame, encode_peer_frame, PartitionPeerMessage, PeerFrame};
use cairn_protocol::NodeId;
use cairn_replica::PeerMessage;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// The wires between the nodes of an in-process cluster. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetworkState>>,
}

#[derive(Default)]
struct NetworkState {
    inboxes: HashMap<NodeId, Arc<dyn PeerInbox>>,
    /// Directed links that drop what they carry: `(from, to)`.
    cut: HashSet<(NodeId, NodeId)>,
    delivered: u64,
    dropped: u64,
}

/// What a network carried so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Messages handed to an inbox.
    pub delivered: u64,
    /// Messages dropped: a cut link, or no inbox attached for the receiver.
    pub dropped: u64,
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sending side of `node`.
    pub fn transport(&self, node: NodeId) -> Arc<MemoryTransport> {
        Arc::new(MemoryTransport {
            node,
            network: self.clone(),
        })
    }

    /// Delivers what is sent to `node` to `inbox` from now on (replacing any earlier one, as
    /// a restarted node does). Until then, messages to `node` are dropped, as they are for a
    /// node not yet listening.
    pub fn attach(&self, node: NodeId, inbox: Arc<dyn PeerInbox>) {
        self.lock().inboxes.insert(node, inbox);
    }

    /// `node` stopped: what is sent to it is dropped until it attaches again.
    pub fn detach(&self, node: NodeId) {
        self.lock().inboxes.remove(&node);
    }

    /// Drops everything `from` sends to `to` until healed (the other direction still works).
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Cuts every link between `node` and each of `others`, both ways.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        let mut state = self.lock();
        for &other in others {
            state.cut.insert((node, other));
            state.cut.insert((other, node));
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn counters(&self) -> NetworkCounters {
        let state = self.lock();
        NetworkCounters {
            delivered: state.delivered,
            dropped: state.dropped,
        }
    }
}

/// One node's sending side of a [`MemoryNetwork`].
pub struct MemoryTransport {
    node: NodeId,
    network: MemoryNetwork,
}

impl PeerSend for MemoryTransport {
    fn send(&self, to: NodeId, replica: ReplicaKey, message: &PeerMessage) {
        if to == self.node {
            return;
        }
        let inbox = {
            let mut state = self.network.lock();
            match state.inboxes.get(&to) {
                Some(inbox) if !state.cut.contains(&(self.node, to)) => {
                    let inbox = Arc::clone(inbox);
                    state.delivered += 1;
                    inbox
                }
                _ => {
                    state.dropped += 1;
                    return;
                }
            }
        };
        let frame = encode_peer_frame(&PeerFrame {
            messages: vec![PartitionPeerMessage {
                replica,
                message: to_wire(message),
            }],
        });
        // A message our own wire form cannot carry is a bug on the sending side, which the
        // TCP transport would only show as a dropped connection; here it fails the test.
        let mut decoded = decode_peer_frame(&frame).expect("a peer frame we encoded decodes");
        let wire = decoded.messages.pop().expect("one message per frame");
        let message = from_wire(wire.message).expect("a message we converted converts back");
        inbox.deliver(self.node, wire.replica, message);
    }

    /// Ignored: the network routes by node id, so an in-process node needs no address.
    fn set_address(&self, _peer: NodeId, _address: String) {}
}

#[cfg(test)]
/// Runs `test` on a new actix system whose tokio clock is paused and moved by a driver task.
///
/// Left to itself, a paused runtime jumps to its next timer whenever it is idle, and it is
/// idle while a replica's flush runs on its group committer's thread, which it does not
/// see: it would then skip straight to another replica's election deadline. So the driver
/// keeps it busy and moves the clock itself, one millisecond per 100 µs of real time, and
/// a flush takes a few virtual milliseconds at most, well inside a lease.
///
/// Everything the test starts must run on this system's one arbiter (the current one): another
/// arbiter's runtime keeps real time.
pub(crate) fn on_virtual_time<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) {
    actix::System::new().block_on(async {
        tokio::time::pause();
        let driver = actix::spawn(async {
            loop {
                std::thread::sleep(std::time::Duration::from_micros(100));
                tokio::time::advance(std::time::Duration::from_millis(1)).await;
            }
        });
        test().await;
        driver.abort();
    });
}

#[cfg(test)]
/// Waits, on virtual time, until exactly one of the replicas `among` leads, and returns its
/// index and epoch. `snapshot` reads replica `index`'s state (`None`: not hosted there yet);
/// `what` names the replicas in the failure message.
pub(crate) async fn single_leader(
    among: &[usize],
    within: std::time::Duration,
    what: &str,
    snapshot: impl Fn(usize) -> Option<crate::partition::PartitionSnapshot>,
) -> (usize, cairn_protocol::Epoch) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let leaders: Vec<(usize, cairn_protocol::Epoch)> = among
            .iter()
            .filter_map(|&index| {
                let snapshot = snapshot(index)?;
                (snapshot.role == cairn_replica::Role::Leader).then_some((index, snapshot.epoch))
            })
            .collect();
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single leader of {what} among {among:?} within {within:?}: {leaders:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compactor::Compactor;
    use crate::partition::{Clock, LeadershipEvents, PartitionHandle, PartitionSpec};
    use cairn_protocol::batch::{Record, RecordBatchBuilder};
    use cairn_protocol::messages::Acks;
    use cairn_protocol::{ApiError, Epoch, Offset};
    use cairn_replica::Role;
    use cairn_storage::group_commit::GroupCommitter;
    use cairn_storage::MemoryStore;
    use cairn_storage::{LogStore, RetentionPolicy};
    use std::time::Duration;

    const KEY: ReplicaKey = ReplicaKey::Partition {
        topic: 1,
        partition: 0,
    };

    /// A node's inbox that hosts one replica, `KEY`'s.
    struct OneReplica(PartitionHandle<MemoryStore>);

    impl PeerInbox for OneReplica {
        fn deliver(&self, from: NodeId, replica: ReplicaKey, message: PeerMessage) {
            assert_eq!(
                replica, KEY,
                "a message for a replica this cluster does not have"
            );
            self.0.deliver_peer(from, message);
        }
    }

    /// Three replicas of one partition on nodes 1-3, each with its own store, over one
    /// in-memory network.
    struct Cluster {
        network: MemoryNetwork,
        nodes: Vec<NodeId>,
        replicas: Vec<PartitionHandle<MemoryStore>>,
    }

    impl Cluster {
        fn start() -> Cluster {
            let network = MemoryNetwork::new();
            let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
            let replicas = nodes
                .iter()
                .map(|&node| {
                    let store = MemoryStore::new();
                    // Each node's own, as in a node process.
                    let metrics = Arc::new(crate::metrics::NodeMetrics::new());
                    let spec = PartitionSpec {
                        log_name: KEY.to_string(),
                        key: KEY,
                        node,
                        voters: nodes.clone(),
                        log: store.open_log(&KEY.to_string()).unwrap(),
                        committer: GroupCommitter::start(store.clone()),
                        store,
                        clock: Clock::new(),
                        replica_config: cairn_replica::Config::for_tests(),
                        tick_ms: 5,
                        lag_time_max_ms: 1_000,
                        leader_rebalance_ms: 0,
                        mailbox_max: 256,
                        retention: RetentionPolicy::default(),
                        retention_check_ms: 1_000,
                        compaction: None,
                        compactor: Compactor::start(
                            0,
                            crate::config::COMPACTION_INDEX_BYTES_MIN as usize,
                            Arc::clone(&metrics),
                            Arc::new(crate::compactor::FlushTimes::new()),
                        ),
                        peers: network.transport(node),
                        leadership_changes: Arc::new(LeadershipEvents::new()),
                        metrics,
                    };
                    let handle = PartitionHandle::start(spec, &actix::Arbiter::current()).unwrap();
                    network.attach(node, Arc::new(OneReplica(handle.clone())));
                    handle
                })
                .collect();
            Cluster {
                network,
                nodes,
                replicas,
            }
        }

        /// The index of the one replica among `among` that leads, with its epoch, once
        /// exactly one does, within `within` (virtual time).
        async fn leader(&self, among: &[usize], within: Duration) -> (usize, Epoch) {
            single_leader(among, within, "the partition", |index| {
                Some(self.replicas[index].shared.snapshot())
            })
            .await
        }

        /// Produces one record `value` through replica `index` and waits for its answer.
        async fn produce(&self, index: usize, value: String) -> Result<Offset, ApiError> {
            let mut builder = RecordBatchBuilder::new(1);
            builder.push(&Record::new(value));
            let reply = self.replicas[index].produce(builder.build(), Acks::All)?;
            let response = tokio::time::timeout(Duration::from_secs(10), reply)
                .await
                .expect("a produce is answered within its timeout")
                .expect("the actor answers");
            response.map(|response| response.base_offset)
        }

        /// The committed record values replica `index` serves, in offset order.
        async fn committed_values(&self, index: usize) -> Vec<String> {
            let mut values = Vec::new();
            let mut from = Offset::ZERO;
            loop {
                let read = self.replicas[index]
                    .read(from, 1 << 20, true)
                    .await
                    .unwrap();
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

        /// Waits until every replica serves the same committed values as replica `index`.
        async fn converged(&self, index: usize, within: Duration) -> Vec<String> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let expected = self.committed_values(index).await;
                let mut all_equal = true;
                for other in 0..self.replicas.len() {
                    all_equal &= self.committed_values(other).await == expected;
                }
                if all_equal {
                    return expected;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "replicas did not converge within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Three replicas elect one leader; every record it acknowledged is then served, in the
    /// same order, by every replica, and the network carried the traffic.
    #[test]
    fn three_replicas_elect_one_leader_and_every_replica_serves_what_it_acknowledged() {
        on_virtual_time(|| async {
            let cluster = Cluster::start();
            let (leader, _) = cluster.leader(&[0, 1, 2], Duration::from_secs(10)).await;
            let mut acknowledged = Vec::new();
            for index in 0..50 {
                let value = format!("record-{index}");
                cluster.produce(leader, value.clone()).await.unwrap();
                acknowledged.push(value);
            }
            assert_eq!(
                cluster.converged(leader, Duration::from_secs(10)).await,
                acknowledged
            );
            let counters = cluster.network.counters();
            assert!(counters.delivered > 100, "{counters:?}");
        });
    }

    /// The leader is cut off: it acknowledges nothing more, the two others elect a leader of
    /// a higher epoch, and once the network heals the old leader follows it, its
    /// unacknowledged record gone and every acknowledged one kept, on all three replicas.
    /// Seconds of leases and elections, on virtual time.
    #[test]
    fn an_isolated_leader_is_replaced_and_rejoins_with_every_acknowledged_record() {
        on_virtual_time(|| async {
            let cluster = Cluster::start();
            let (old, old_epoch) = cluster.leader(&[0, 1, 2], Duration::from_secs(10)).await;
            let mut acknowledged = Vec::new();
            for index in 0..20 {
                let value = format!("before-{index}");
                cluster.produce(old, value.clone()).await.unwrap();
                acknowledged.push(value);
            }

            let others: Vec<usize> = (0..3).filter(|&index| index != old).collect();
            let other_nodes: Vec<NodeId> = others.iter().map(|&i| cluster.nodes[i]).collect();
            cluster.network.isolate(cluster.nodes[old], &other_nodes);
            let stranded = cluster.produce(old, "stranded".to_owned()).await;
            assert!(
                stranded.is_err(),
                "acknowledged without a majority: {stranded:?}"
            );

            let (new, new_epoch) = cluster.leader(&others, Duration::from_secs(10)).await;
            assert!(new_epoch > old_epoch, "{new_epoch} after {old_epoch}");
            for index in 0..20 {
                let value = format!("after-{index}");
                cluster.produce(new, value.clone()).await.unwrap();
                acknowledged.push(value);
            }

            cluster.network.heal();
            assert_eq!(
                cluster.converged(new, Duration::from_secs(10)).await,
                acknowledged
            );
            let rejoined = cluster.replicas[old].shared.snapshot();
            assert_eq!(
                (rejoined.role, rejoined.leader),
                (Role::Follower, Some(cluster.nodes[new]))
            );
        });
    }

    /// A one-way cut from the leader to one follower: the other follower still makes a
    /// majority, so the leader goes on acknowledging; the cut follower catches up after the
    /// heal.
    #[test]
    fn a_leader_cut_from_one_follower_still_commits_with_the_other() {
        on_virtual_time(|| async {
            let cluster = Cluster::start();
            let (leader, epoch) = cluster.leader(&[0, 1, 2], Duration::from_secs(10)).await;
            let cut = (leader + 1) % 3;
            cluster
                .network
                .cut_one_way(cluster.nodes[leader], cluster.nodes[cut]);
            let mut acknowledged = Vec::new();
            for index in 0..30 {
                let value = format!("record-{index}");
                cluster.produce(leader, value.clone()).await.unwrap();
                acknowledged.push(value);
            }
            assert!(cluster.network.counters().dropped > 0);
            cluster.network.heal();
            assert_eq!(
                cluster.converged(leader, Duration::from_secs(10)).await,
                acknowledged
            );
            let now = cluster.leader(&[0, 1, 2], Duration::from_secs(1)).await;
            assert_eq!(now, (leader, epoch), "the leader kept its epoch");
        });
    }
}
