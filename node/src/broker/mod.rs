//! The broker: what one node knows and hosts, shared by every connection.
//!
//! It holds the storage handles, the arbiters partition actors run on, the `__meta` partition
//! and the catalog built from it (topics and the partition actors hosted here). Metadata
//! changes (create/delete topic) are appended to `__meta`; a single applier task applies
//! committed `__meta` records in offset order and starts or stops partition actors to match,
//! both for live changes and when a restarted node replays its log.
//!
//! In a cluster, `__meta` runs as one replica per voter (the initial voters, stored at the
//! first start). A node that is no voter is a learner: its applier fetches committed `__meta`
//! records from the voter that leads it and applies them the same way. Gossip (membership)
//! feeds the broker a view of the other nodes: their addresses (for the peer transport and
//! metadata), liveness (for placement, `NotEnoughReplicas`, and a hint that a leader left)
//! and the partitions they say they lead (for leader hints of partitions not hosted here).
//! None of it decides leadership; the replicas' epochs and quorums do.
//!
//! One `Broker`, its methods split by job:
//!
//! - this file: the state, start-up, the `__meta` voters, and the peer inbox (a peer message
//!   goes to the hosted replica it names).
//! - `applier`: committed `__meta` records become the catalog and the partition actors hosted
//!   here (also on a learner, which fetches them); readiness.
//! - `routing`: which partition actor serves a request; quorum checks; other nodes' addresses.
//! - `leadership`: gossip's view of the other nodes and the leadership hints built from it.
//! - `describe`: topic metadata, descriptions, lagging and damaged replicas, metrics.
//! - `admin`: create, alter and delete topics through `__meta`; internal topics; producer ids.
//! - `group_support`: what the consumer-group coordinators need (`__offsets`, bounds, leaders).

use crate::compactor::{Compactor, FlushTimes};
use crate::config::NodeConfig;
use crate::group::assign::TopicPartitionCounts;
use crate::group::state::PartitionBounds;
use crate::meta::{
    self, Applied, MetaRecord, MetadataState, ProducerIdStatus, TopicId, TopicState,
};
use crate::metrics::NodeMetrics;
use crate::partition::{
    wall_clock_ms, Clock, CompactionSettings, LeadershipEvents, PartitionHandle, PartitionSnapshot,
    PartitionSpec,
};
use crate::peer::{PeerInbox, PeerSend};
use cairn_control::schema::SCHEMAS_TOPIC;
use cairn_membership::{ClusterChange, LeadershipHints, NodeInfo};
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::group::{FindCoordinatorRequest, OFFSETS_TOPIC};
use cairn_protocol::ids::validate_topic_name;
use cairn_protocol::messages::{
    Acks, AlterTopicRequest, BrokerInfo, ConfigChange, CreateTopicRequest, FetchPartition,
    FetchRequest, PartitionDescription, PartitionMetadata, TopicConfig, TopicMetadata,
};
use cairn_protocol::peer::ReplicaKey;
use cairn_protocol::{ApiError, Epoch, NodeId, Offset, PartitionId};
use cairn_replica::{PeerMessage, Role};
use cairn_storage::group_commit::GroupCommitter;
use cairn_storage::{LogStore, PartitionLog, RetentionPolicy};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

mod admin;
mod applier;
mod describe;
mod group_support;
#[cfg(test)]
mod in_process_tests;
mod leadership;
mod routing;

/// Topics and the partition actors hosted here, consistent with `MetadataState`.
struct Catalog<S: LogStore> {
    state: MetadataState,
    /// The replicas hosted here, by topic and partition number. Looked up for every peer
    /// message and, per partition, for every leadership-hints round: a linear scan by log
    /// name cost a thousand string comparisons per lookup at a thousand partitions.
    partitions: HashMap<TopicId, BTreeMap<u32, PartitionHandle<S>>>,
}

pub struct Broker<S: LogStore> {
    pub config: Arc<NodeConfig>,
    store: S,
    committer: GroupCommitter,
    /// Applies committed compaction decisions to the partitions hosted here.
    compactor: Compactor<S>,
    /// This node's event metrics, handed to every partition actor, group coordinator and
    /// connection here (see [`crate::metrics`]).
    metrics: Arc<NodeMetrics>,
    arbiters: Vec<actix::ArbiterHandle>,
    clock: Clock,
    advertised_address: String,
    /// Where Kafka clients reach this node; `None` without a Kafka listener.
    kafka_advertised_address: Option<String>,
    /// Where the replicas hosted here send to their peers: TCP in a node process, the
    /// in-memory twin when a whole cluster runs in one process.
    peers: Arc<dyn PeerSend>,
    /// Counts changes of what [`Broker::leadership_hints`] returns (a hosted replica's role
    /// or epoch, or the set of hosted replicas) and leaders starting to serve.
    leadership_changes: Arc<LeadershipEvents>,
    /// This node's `__meta` replica; `None` on a learner, which is no metadata voter and
    /// follows `__meta` by fetching it from the voters instead.
    meta: Option<PartitionHandle<S>>,
    /// The voters of `__meta` (empty on a learner, which does not know them).
    meta_voters: Vec<NodeId>,
    /// A learner has fetched `__meta` up to a voter's high watermark at least once.
    learner_caught_up: std::sync::atomic::AtomicBool,
    /// The highest `__meta` high watermark a voter answered this learner's fetches with.
    learner_commit_heard: AtomicU64,
    catalog: RwLock<Catalog<S>>,
    /// Other nodes as gossip last described them (a hint: addresses, liveness, leaderships).
    /// Empty for a lone node.
    cluster: RwLock<HashMap<NodeId, NodeInfo>>,
    /// `__meta` offset below which every record is applied.
    applied: watch::Sender<Offset>,
    ready: watch::Sender<bool>,
    /// The consumer-group coordinators of the `__offsets` partitions this node leads.
    groups: Arc<crate::groups::Coordinators<S>>,
    /// The schema registry's ids per subject, for broker-side validation at produce.
    pub schemas: crate::schemas::validation::Attachment<S>,
    /// Topics created or grown while this node served, oldest first, with when it applied
    /// that: their first leaders may not be known here yet (see
    /// [`Broker::new_partitions_deadline`]). At most [`NEW_TOPICS_MAX`], none older than
    /// [`Broker::new_partitions_window`].
    new_topics: std::sync::Mutex<std::collections::VecDeque<(TopicId, tokio::time::Instant)>>,
}

/// Topics remembered as new at once; more are forgotten oldest first (they are then answered
/// as they stand, which a client retries).
const NEW_TOPICS_MAX: usize = 1024;

/// `__offsets` gets this many replicas at most (fewer on a smaller cluster).
const OFFSETS_REPLICATION_FACTOR_MAX: u16 = 3;
/// Bytes of `__meta` read per applier step; bounds the applier's memory.
const META_READ_BYTES_MAX: usize = 1 << 20;
/// Key of the `__meta` voters in the `__meta` log's own values, once this node is a voter.
const META_VOTERS_KEY: &str = "voters";
/// How long a learner's fetch of `__meta` waits for new records (a long poll).
const LEARNER_FETCH_WAIT_MS: u32 = 500;
/// A learner's wait after a failed fetch before it tries again (another node, maybe).
const LEARNER_RETRY_MS: u64 = 100;
/// How long a metadata change waits to be committed and applied before `Timeout`.
const META_CHANGE_TIMEOUT_MS: u64 = 10_000;
impl<S: LogStore> Broker<S> {
    /// Opens `__meta`, starts its actor and the applier. The broker is ready (see
    /// [`Broker::wait_ready`]) once `__meta` has a leader and its committed records are applied.
    ///
    /// `metrics` and `flush_times` are this node's own, which `node::run` also hands the
    /// store's flush observer; the compactor paces itself by `flush_times`. `peers` is the
    /// caller's so that a test can run several brokers in one process over the in-memory
    /// network (`crate::peer::memory`); the node process passes its TCP transport.
    // Each argument is one of the node's parts, made once by `node::run` (or an in-process
    // cluster test); a struct to carry them there would only repeat this list.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: Arc<NodeConfig>,
        store: S,
        committer: GroupCommitter,
        arbiters: Vec<actix::ArbiterHandle>,
        advertised_address: String,
        kafka_advertised_address: Option<String>,
        metrics: Arc<NodeMetrics>,
        flush_times: Arc<FlushTimes>,
        peers: Arc<dyn PeerSend>,
    ) -> Result<Arc<Broker<S>>, String> {
        assert!(!arbiters.is_empty(), "partition actors need an arbiter");
        let clock = Clock::new();
        let config_groups = config.groups.clone();
        let leadership_changes = Arc::new(LeadershipEvents::new());
        let compactor = Compactor::start(
            config.retention.compaction_bytes_per_second,
            config.retention.compaction_index_bytes_max(),
            Arc::clone(&metrics),
            flush_times,
        );
        let mut log = store
            .open_log(meta::META_LOG_NAME)
            .map_err(|error| format!("cannot open the {} log: {error}", meta::META_LOG_NAME))?;
        let meta_voters = resolve_meta_voters(&store, &mut log, &config)?;
        let meta = if meta_voters.is_empty() {
            tracing::info!("not a metadata voter: following __meta from the voters");
            None
        } else {
            let spec = PartitionSpec {
                log_name: meta::META_LOG_NAME.to_string(),
                key: ReplicaKey::Meta,
                node: config.node_id,
                voters: meta_voters.clone(),
                store: store.clone(),
                log,
                committer: committer.clone(),
                clock,
                replica_config: config.replica.replica_config(),
                tick_ms: config.replica.tick_ms,
                lag_time_max_ms: config.replica.lag_time_max_ms,
                // Metadata leadership stays where elections put it: moving it would pause
                // metadata changes for an election and balance nothing worth it.
                leader_rebalance_ms: 0,
                mailbox_max: config.limits.partition_mailbox_max as usize,
                // Metadata is small and must be replayable from the start: never trimmed.
                retention: RetentionPolicy::default(),
                retention_check_ms: config.retention.retention_check_ms,
                compaction: None,
                compactor: compactor.clone(),
                peers: peers.clone(),
                leadership_changes: Arc::clone(&leadership_changes),
                metrics: Arc::clone(&metrics),
            };
            let arbiter = &arbiters[place(meta::META_LOG_NAME, arbiters.len())];
            Some(PartitionHandle::start(spec, arbiter)?)
        };
        let broker = Arc::new(Broker {
            config,
            store,
            committer,
            compactor,
            metrics,
            arbiters,
            clock,
            advertised_address,
            kafka_advertised_address,
            peers,
            leadership_changes,
            meta,
            meta_voters,
            learner_caught_up: std::sync::atomic::AtomicBool::new(false),
            learner_commit_heard: AtomicU64::new(0),
            catalog: RwLock::new(Catalog {
                state: MetadataState::default(),
                partitions: HashMap::new(),
            }),
            cluster: RwLock::new(HashMap::new()),
            applied: watch::channel(Offset::ZERO).0,
            ready: watch::channel(false).0,
            groups: Arc::new(crate::groups::Coordinators::new(
                config_groups.group_config(),
            )),
            schemas: crate::schemas::validation::Attachment::default(),
            new_topics: std::sync::Mutex::new(std::collections::VecDeque::new()),
        });
        tokio::spawn(Arc::clone(&broker.groups).run(
            Arc::downgrade(&broker),
            broker.leadership_events(),
            config_groups.expiry_check_ms,
        ));
        if broker.meta.is_some() {
            tokio::spawn(Arc::clone(&broker).apply_meta());
        } else {
            tokio::spawn(Arc::clone(&broker).learn_meta());
        }
        Ok(broker)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// This node's event metrics, which the `/metrics` scrape encodes.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// The replica stored as `log`, if this node hosts it now.
    pub fn hosted_log(&self, log: &str) -> Option<PartitionHandle<S>> {
        self.with_hosted_log(log, PartitionHandle::clone)
    }

    /// Runs `then` on the replica stored as `log`, if hosted here, without cloning its handle.
    fn with_hosted_log<T>(
        &self,
        log: &str,
        then: impl FnOnce(&PartitionHandle<S>) -> T,
    ) -> Option<T> {
        if log == meta::META_LOG_NAME {
            return self.meta.as_ref().map(then);
        }
        let (topic, partition) = meta::parse_partition_log_name(log)?;
        self.catalog()
            .partitions
            .get(&topic)?
            .get(&partition)
            // The name parses loosely ("t1-007"); only the exact log name is this replica.
            .filter(|handle| handle.log_name == log)
            .map(then)
    }

    pub fn committer(&self) -> &GroupCommitter {
        &self.committer
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Resolves once the node can serve (metadata recovered, hosted partitions led).
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        while !*ready.borrow_and_update() {
            if ready.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn check_ready(&self) -> Result<(), ApiError> {
        if *self.ready.borrow() {
            Ok(())
        } else {
            Err(ApiError::NotReady {
                reason: "cluster metadata is still being recovered".to_string(),
            })
        }
    }

    /// `Some((applied, committed))` while this node has applied less of `__meta` than the
    /// highest commit point it knows of (its own replica's high watermark, what a leader
    /// told it, or what a voter answered the learner): its catalog may lack a topic that
    /// exists. A topic missing from the catalog is then answered with the retriable
    /// `NotReady` instead of the definite `UnknownTopic`, so a client asks again (another
    /// node, or this one a moment later).
    pub fn metadata_lag(&self) -> Option<(Offset, Offset)> {
        let applied = *self.applied.borrow();
        let committed = match &self.meta {
            Some(meta) => {
                let own = meta.shared.high_watermark();
                meta.shared
                    .commit_heard()
                    .map_or(own, |heard| heard.max(own))
            }
            None => Offset(self.learner_commit_heard.load(Ordering::Acquire)),
        };
        (applied < committed).then_some((applied, committed))
    }

    /// The refusal for a topic not in the catalog: `UnknownTopic` once the catalog is up to
    /// date with every commit point this node knows, `NotReady` while it catches up.
    fn missing_topic(&self, topic: &str) -> ApiError {
        match self.metadata_lag() {
            Some((applied, committed)) => ApiError::NotReady {
                reason: format!(
                    "cluster metadata is catching up (applied to offset {applied} of \
                     {committed} committed); topic '{topic}' may exist"
                ),
            },
            None => ApiError::UnknownTopic {
                topic: topic.to_string(),
            },
        }
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog<S>> {
        self.catalog
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every hosted partition handle (for shutdown and tests).
    pub fn hosted(&self) -> Vec<PartitionHandle<S>> {
        let catalog = self.catalog();
        self.meta
            .iter()
            .cloned()
            .chain(
                catalog
                    .partitions
                    .values()
                    .flat_map(BTreeMap::values)
                    .cloned(),
            )
            .collect()
    }
}

impl<S: LogStore> PeerInbox for Broker<S> {
    /// A message for a replica not hosted here (yet, or any more) is dropped: the sender
    /// repeats what matters (heartbeats, lease requests) and epochs fence what is stale.
    fn deliver(&self, from: NodeId, replica: ReplicaKey, message: PeerMessage) {
        let delivered = match replica {
            ReplicaKey::Meta => self
                .meta
                .as_ref()
                .map(|meta| meta.deliver_peer(from, message)),
            ReplicaKey::Partition { topic, partition } => self
                .catalog()
                .partitions
                .get(&TopicId(topic))
                .and_then(|handles| handles.get(&partition))
                .map(|handle| handle.deliver_peer(from, message)),
        };
        if delivered.is_none() {
            tracing::trace!(%from, %replica, "peer message for a replica not hosted here");
        }
    }
}

/// Topic config keys `topic alter` accepts, in Kafka's spelling (Cairn's own is accepted too).
pub use cairn_protocol::messages::TOPIC_CONFIG_KEYS;

/// `config` with `changes` applied: see [`TopicConfig::with_changes`].
pub fn apply_config_changes(
    config: &TopicConfig,
    changes: &[ConfigChange],
) -> Result<TopicConfig, ApiError> {
    config.with_changes(changes)
}

/// Topics the node keeps its own state in: the `__` ones (clients cannot create those names)
/// and the schema registry's `_schemas` (Confluent's name, which clients expect).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__") || topic == SCHEMAS_TOPIC
}

/// The voters of `__meta` this node runs with; empty when it is a learner.
///
/// The first start decides and a voter stores the answer with `__meta`, so that later starts
/// need no flag (as etcd's and KRaft's initial cluster settings): a stored set wins, and
/// flags that disagree with it are refused. Without a stored set, `--initial-voters` that
/// include this node make it a voter; a node outside them, or given only seeds, is a learner;
/// a node with neither is a cluster of one.
fn resolve_meta_voters<S: LogStore>(
    store: &S,
    log: &mut S::Log,
    config: &NodeConfig,
) -> Result<Vec<NodeId>, String> {
    let stored = log
        .get_value(META_VOTERS_KEY)
        .map_err(|error| format!("cannot read the __meta voters: {error}"))?;
    let given = &config.cluster.initial_voters;
    if let Some(stored) = stored {
        let text = String::from_utf8_lossy(&stored).into_owned();
        let voters = text
            .split(',')
            .map(|id| id.parse::<u32>().map(NodeId))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("stored __meta voters {text:?} are corrupt: {error}"))?;
        let mut sorted_stored = voters.clone();
        sorted_stored.sort_unstable();
        let mut sorted_given = given.clone();
        sorted_given.sort_unstable();
        if !given.is_empty() && sorted_given != sorted_stored {
            return Err(format!(
                "--initial-voters {} disagrees with the voters this node was bootstrapped \
                 with ({text}); the voters are fixed at the first start",
                ids_text(given)
            ));
        }
        return Ok(voters);
    }
    let voters = if given.contains(&config.node_id) {
        given.clone()
    } else if given.is_empty() && config.cluster.seeds.is_empty() {
        vec![config.node_id]
    } else {
        return Ok(Vec::new());
    };
    log.put_value(META_VOTERS_KEY, ids_text(&voters).as_bytes())
        .and_then(|()| store.flush())
        .map_err(|error| format!("cannot store the __meta voters: {error}"))?;
    Ok(voters)
}

fn ids_text(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|id| id.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Arbiter index for a partition log: a stable hash, so placement spreads evenly.
fn place(log_name: &str, arbiters: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    log_name.hash(&mut hasher);
    (hasher.finish() % arbiters as u64) as usize
}

fn hosted_partition<'a, S: LogStore>(
    catalog: &'a Catalog<S>,
    topic: &TopicState,
    partition: u32,
) -> Option<&'a PartitionHandle<S>> {
    catalog.partitions.get(&topic.id)?.get(&partition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigBuilder;
    use cairn_storage::MemoryStore;

    fn config(node_id: &str, flags: &[(&str, &str)]) -> NodeConfig {
        let mut builder = ConfigBuilder::new().set("flag", "node_id", node_id).set(
            "flag",
            "data_dir",
            "/tmp/unused",
        );
        for (key, value) in flags {
            builder = builder.set("flag", key, value);
        }
        builder.build().unwrap()
    }

    fn resolve(store: &MemoryStore, config: &NodeConfig) -> Result<Vec<NodeId>, String> {
        let mut log = store.open_log(meta::META_LOG_NAME).unwrap();
        resolve_meta_voters(store, &mut log, config)
    }

    #[test]
    fn the_first_start_fixes_the_voters_and_later_flags_must_agree() {
        let lone = MemoryStore::new();
        assert_eq!(resolve(&lone, &config("1", &[])), Ok(vec![NodeId(1)]));
        let seeds = ("seeds", "127.0.0.1:7000");
        // A lone node's data joined later to a cluster keeps its own single voter.
        assert_eq!(resolve(&lone, &config("1", &[seeds])), Ok(vec![NodeId(1)]));

        let voter = MemoryStore::new();
        let first = config("2", &[seeds, ("initial_voters", "3,2,1")]);
        assert_eq!(
            resolve(&voter, &first),
            Ok(vec![NodeId(3), NodeId(2), NodeId(1)])
        );
        // Restarted without the flag, or with the same set in another order: the same voters.
        assert_eq!(
            resolve(&voter, &config("2", &[seeds])),
            Ok(vec![NodeId(3), NodeId(2), NodeId(1)])
        );
        assert!(resolve(&voter, &config("2", &[seeds, ("initial_voters", "1,2,3")])).is_ok());
        let refused = resolve(&voter, &config("2", &[seeds, ("initial_voters", "1,2")]));
        assert!(refused.unwrap_err().contains("disagrees"));

        // Seeds only, or voters that leave this node out: a learner, and nothing is stored.
        let learner = MemoryStore::new();
        assert_eq!(resolve(&learner, &config("4", &[seeds])), Ok(vec![]));
        let outside = config("4", &[seeds, ("initial_voters", "1,2,3")]);
        assert_eq!(resolve(&learner, &outside), Ok(vec![]));
        assert_eq!(resolve(&learner, &config("4", &[])), Ok(vec![NodeId(4)]));
    }
}
