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

use crate::compactor::Compactor;
use crate::config::NodeConfig;
use crate::group::assign::TopicPartitionCounts;
use crate::group::state::PartitionBounds;
use crate::meta::{
    self, Applied, MetaRecord, MetadataState, ProducerIdStatus, TopicId, TopicState,
};
use crate::partition::{
    wall_clock_ms, Clock, CompactionSettings, LeadershipEvents, PartitionHandle, PartitionSnapshot,
    PartitionSpec,
};
use crate::peer::{PeerInbox, PeerTransport, PeerTransportConfig};
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
    arbiters: Vec<actix::ArbiterHandle>,
    clock: Clock,
    advertised_address: String,
    /// Where Kafka clients reach this node; `None` without a Kafka listener.
    kafka_advertised_address: Option<String>,
    peers: Arc<PeerTransport>,
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
}

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
/// The compactor's read budget: a quarter of what one node's disk takes in sequential reads,
/// so that cleaning never starves produce and fetch of I/O.
const COMPACTION_BYTES_PER_SECOND: u64 = 64 << 20;
/// How long a metadata change waits to be committed and applied before `Timeout`.
const META_CHANGE_TIMEOUT_MS: u64 = 10_000;

impl<S: LogStore> Broker<S> {
    /// Opens `__meta`, starts its actor and the applier. The broker is ready (see
    /// [`Broker::wait_ready`]) once `__meta` has a leader and its committed records are applied.
    pub fn start(
        config: Arc<NodeConfig>,
        store: S,
        committer: GroupCommitter,
        arbiters: Vec<actix::ArbiterHandle>,
        advertised_address: String,
        kafka_advertised_address: Option<String>,
    ) -> Result<Arc<Broker<S>>, String> {
        assert!(!arbiters.is_empty(), "partition actors need an arbiter");
        let clock = Clock::new();
        let config_groups = config.groups.clone();
        let mut peer_config =
            PeerTransportConfig::with_frame_bytes_max(config.limits.frame_bytes_max as usize);
        // A restarted peer should hear its leader's heartbeats within a couple of heartbeat
        // periods, not after a long reconnect back-off (it would stand for election for
        // nothing meanwhile). Connection attempts to a dead peer are cheap.
        peer_config.reconnect_backoff_max_ms =
            (config.replica.heartbeat_ms * 2).clamp(peer_config.reconnect_backoff_min_ms, 1_000);
        peer_config.source_ip = Some(config.listen.ip());
        peer_config.secret = config.cluster_secret.clone();
        let peers = PeerTransport::new(config.node_id, peer_config);
        let leadership_changes = Arc::new(LeadershipEvents::new());
        let compactor = Compactor::start(COMPACTION_BYTES_PER_SECOND);
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
                peers: Arc::clone(&peers),
                leadership_changes: Arc::clone(&leadership_changes),
            };
            let arbiter = &arbiters[place(meta::META_LOG_NAME, arbiters.len())];
            Some(PartitionHandle::start(spec, arbiter)?)
        };
        let broker = Arc::new(Broker {
            config,
            store,
            committer,
            compactor,
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

    /// Outgoing replication traffic of this node.
    pub fn peers(&self) -> &Arc<PeerTransport> {
        &self.peers
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

    /// The applier: applies committed `__meta` records in order, forever.
    async fn apply_meta(self: Arc<Self>) {
        let meta = self
            .meta
            .clone()
            .expect("voters apply their own __meta replica");
        let mut high_watermark = meta.shared.subscribe_high_watermark();
        loop {
            let target = *high_watermark.borrow_and_update();
            let applied = *self.applied.borrow();
            if applied < target {
                match meta.read(applied, META_READ_BYTES_MAX, true).await {
                    Ok(read) => {
                        for batch in read.batches {
                            self.apply_meta_batch(&batch).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reading __meta failed; retrying");
                        tokio::time::sleep(Duration::from_millis(self.config.replica.tick_ms))
                            .await;
                    }
                }
                continue;
            }
            self.update_readiness();
            // Wake on a new high watermark, or on a tick to re-check readiness (partition
            // leaders are elected after the metadata is applied).
            let tick = Duration::from_millis(self.config.replica.tick_ms);
            if let Ok(Err(_)) = tokio::time::timeout(tick, high_watermark.changed()).await {
                return;
            }
        }
    }

    /// The learner's applier: fetches committed `__meta` records from the voter that leads
    /// it (as gossip names it; any live node otherwise, which answers with a leader hint) and
    /// applies them in order, forever. A learner keeps no copy: after a restart it fetches
    /// from the start again (metadata is small).
    async fn learn_meta(self: Arc<Self>) {
        let client = cairn_client::ClientConfig::default()
            .client_id(format!("cairn-node-{}-learner", self.config.node_id))
            .request_timeout(Duration::from_millis(
                u64::from(LEARNER_FETCH_WAIT_MS) + 5_000,
            ))
            .connect_timeout(Duration::from_secs(1));
        let mut connection: Option<cairn_client::Connection> = None;
        let mut hint: Option<NodeId> = None;
        let mut attempt = 0usize;
        loop {
            self.update_readiness();
            if connection.as_ref().is_none_or(|open| open.is_closed()) {
                connection = None;
                let source = self.meta_source(hint.take(), attempt);
                attempt += 1;
                match source {
                    Some(address) => {
                        match cairn_client::Connection::connect(&address, &client).await {
                            Ok(open) => connection = Some(open),
                            Err(error) => tracing::debug!(%address, %error, "cannot reach a voter"),
                        }
                    }
                    None => tracing::debug!("no node known yet to learn __meta from"),
                }
                if connection.is_none() {
                    tokio::time::sleep(Duration::from_millis(LEARNER_RETRY_MS)).await;
                    continue;
                }
            }
            let open = connection.as_ref().expect("connected above");
            let from = *self.applied.borrow();
            let request = cairn_protocol::Request::Fetch(FetchRequest {
                max_wait_ms: LEARNER_FETCH_WAIT_MS,
                min_bytes: 1,
                max_bytes: META_READ_BYTES_MAX as u32,
                partitions: vec![FetchPartition {
                    topic: meta::META_TOPIC.to_string(),
                    partition: 0,
                    offset: from,
                    max_bytes: META_READ_BYTES_MAX as u32,
                }],
            });
            let fetched = match open.call(request).await {
                Ok(cairn_protocol::Response::Fetch(mut response))
                    if response.partitions.len() == 1 =>
                {
                    response.partitions.remove(0).result
                }
                Ok(other) => Err(ApiError::Internal {
                    reason: format!("unexpected reply to a __meta fetch: {other:?}"),
                }),
                Err(error) => Err(ApiError::Internal {
                    reason: error.to_string(),
                }),
            };
            match fetched {
                Ok(fetched) => {
                    self.learner_commit_heard
                        .fetch_max(fetched.high_watermark.0, Ordering::AcqRel);
                    if let Err(reason) = self.apply_fetched_meta(from, &fetched.batches).await {
                        tracing::warn!(%reason, "bad __meta from a voter; asking another");
                        connection = None;
                        continue;
                    }
                    if *self.applied.borrow() >= fetched.high_watermark {
                        self.learner_caught_up.store(true, Ordering::Release);
                    }
                }
                Err(error) => {
                    if let ApiError::NotLeader { leader_hint, .. } = &error {
                        hint = *leader_hint;
                    }
                    tracing::debug!(%error, "learning __meta failed; retrying");
                    connection = None;
                    tokio::time::sleep(Duration::from_millis(LEARNER_RETRY_MS)).await;
                }
            }
        }
    }

    /// Checks fetched `__meta` batches (framing, checksums, contiguity from `from`) before
    /// applying any of them.
    async fn apply_fetched_meta(&self, from: Offset, bytes: &bytes::Bytes) -> Result<(), String> {
        let mut batches = Vec::new();
        let mut next = from;
        for batch in cairn_protocol::batch::split_batches(bytes) {
            let batch = batch.map_err(|error| error.to_string())?;
            batch.verify_checksum().map_err(|error| error.to_string())?;
            if batch.next_offset() <= next {
                continue;
            }
            if batch.base_offset() > next {
                return Err(format!(
                    "a gap: expected offset {next}, got {}",
                    batch.base_offset()
                ));
            }
            next = batch.next_offset();
            batches.push(batch);
        }
        for batch in &batches {
            self.apply_meta_batch(batch).await;
        }
        Ok(())
    }

    /// Where a learner fetches `__meta`: the hinted node, else the voter gossip says leads
    /// it, else any live node in turn (it answers with a leader hint).
    fn meta_source(&self, hint: Option<NodeId>, attempt: usize) -> Option<String> {
        let view = self.cluster_view();
        let address = |node: NodeId| {
            view.get(&node)
                .filter(|info| info.alive)
                .map(|info| info.client_addr.to_string())
        };
        if let Some(address) = hint.and_then(address) {
            return Some(address);
        }
        if let Some(address) = self
            .hinted_leader(meta::META_TOPIC, 0)
            .and_then(|(leader, _)| address(leader))
        {
            return Some(address);
        }
        let mut alive: Vec<&NodeInfo> = view
            .values()
            .filter(|info| info.alive && info.node_id != self.config.node_id)
            .collect();
        alive.sort_by_key(|info| info.node_id);
        alive
            .get(attempt % alive.len().max(1))
            .map(|info| info.client_addr.to_string())
    }

    async fn apply_meta_batch(&self, batch: &RecordBatch) {
        let next = batch.next_offset();
        if next <= *self.applied.borrow() {
            return;
        }
        if batch.header().is_control() {
            self.catalog
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .state
                .skip_to(next);
        } else {
            for record in batch.records() {
                let record = match record {
                    Ok(record) => record,
                    Err(error) => {
                        // Checksums were verified on read: this is a bug, not bad input.
                        panic!(
                            "committed __meta batch at {} is malformed: {error}",
                            batch.base_offset()
                        );
                    }
                };
                let applied = {
                    let mut catalog = self
                        .catalog
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    catalog
                        .state
                        .apply(record.offset, record.value.as_deref().unwrap_or_default())
                };
                match applied {
                    Some(Applied::Created(topic)) => self.host_partitions(&topic, 0),
                    Some(Applied::PartitionsAdded { topic, first }) => {
                        self.host_partitions(&topic, first)
                    }
                    Some(Applied::ConfigChanged(topic)) => self.reconfigure(&topic).await,
                    Some(Applied::Deleted(topic)) => self.drop_topic(&topic).await,
                    Some(Applied::Rejected { reason }) => {
                        tracing::info!(offset = %record.offset, %reason, "metadata change refused at apply time");
                    }
                    Some(Applied::ProducerIdAllocated { .. }) | None => {}
                }
            }
            self.catalog
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .state
                .skip_to(next);
        }
        self.applied.send_replace(next);
    }

    /// What retention `topic`'s partitions run: its own config, else the node's defaults;
    /// none for internal topics (`__offsets` holds state that must replay from the start).
    /// A topic whose cleanup policy is `compact` alone keeps every key's newest record
    /// however old: retention does not apply to it (Kafka's rule).
    fn retention_of(&self, topic: &TopicState) -> RetentionPolicy {
        if is_internal(&topic.name) || !topic.config.deletes() {
            return RetentionPolicy::default();
        }
        RetentionPolicy {
            max_age_ms: topic
                .config
                .retention_ms
                .or(self.config.retention.retention_ms),
            max_bytes: topic
                .config
                .retention_bytes
                .or(self.config.retention.retention_bytes),
        }
    }

    /// Gives the partitions of `topic` hosted here its (new) retention.
    async fn reconfigure(&self, topic: &TopicState) {
        let retention = self.retention_of(topic);
        let compaction = CompactionSettings::of(&topic.config);
        let handles: Vec<PartitionHandle<S>> = self
            .catalog()
            .partitions
            .get(&topic.id)
            .map(|handles| handles.values().cloned().collect())
            .unwrap_or_default();
        for handle in handles {
            handle.set_retention(retention, compaction).await;
        }
    }

    /// Starts the actors of the partitions of `topic` from `first` on that this node holds a
    /// replica of (all of them for a new topic, the added ones after `AddPartitions`).
    fn host_partitions(&self, topic: &TopicState, first: u32) {
        let mut handles = BTreeMap::new();
        for partition in first..topic.partitions {
            let voters = topic.replicas[partition as usize].clone();
            if !voters.contains(&self.config.node_id) {
                continue;
            }
            let log_name = meta::partition_log_name(topic.id, partition);
            let log = match self.store.open_log(&log_name) {
                Ok(log) => log,
                Err(error) => {
                    tracing::error!(%log_name, %error, "cannot open a partition log; it stays unavailable");
                    continue;
                }
            };
            let spec = PartitionSpec {
                log_name: log_name.clone(),
                key: ReplicaKey::Partition {
                    topic: topic.id.0,
                    partition,
                },
                node: self.config.node_id,
                voters,
                store: self.store.clone(),
                log,
                committer: self.committer.clone(),
                clock: self.clock,
                replica_config: self.config.replica.replica_config(),
                tick_ms: self.config.replica.tick_ms,
                lag_time_max_ms: self.config.replica.lag_time_max_ms,
                leader_rebalance_ms: self.config.replica.leader_rebalance_ms,
                mailbox_max: self.config.limits.partition_mailbox_max as usize,
                retention: self.retention_of(topic),
                retention_check_ms: self.config.retention.retention_check_ms,
                compaction: CompactionSettings::of(&topic.config),
                compactor: self.compactor.clone(),
                peers: Arc::clone(&self.peers),
                leadership_changes: Arc::clone(&self.leadership_changes),
            };
            let arbiter = &self.arbiters[place(&log_name, self.arbiters.len())];
            match PartitionHandle::start(spec, arbiter) {
                Ok(handle) => {
                    handles.insert(partition, handle);
                }
                Err(error) => {
                    tracing::error!(%log_name, %error, "cannot start a partition replica");
                }
            }
        }
        self.catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .partitions
            .entry(topic.id)
            .or_default()
            .extend(handles);
        self.leadership_changes.bump();
    }

    async fn drop_topic(&self, topic: &TopicState) {
        let handles = self
            .catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .partitions
            .remove(&topic.id)
            .unwrap_or_default();
        self.leadership_changes.bump();
        for handle in handles.into_values() {
            handle
                .stop(
                    ApiError::UnknownTopic {
                        topic: topic.name.clone(),
                    },
                    true,
                )
                .await;
        }
    }

    fn update_readiness(&self) {
        if *self.ready.borrow() {
            return;
        }
        // Recovered means: `__meta` is led, the leader's epoch marker is committed (so every
        // record before it is committed too), and everything committed is applied. Until the
        // marker commits, the high watermark may still be below records written before a
        // restart, and an empty catalog would look recovered.
        // On a follower of `__meta` (a cluster), recovered means: a leader is known and what
        // it told us is committed is applied. For a lone node this is the same rule, since it
        // is the only voter and so the leader.
        // A restarted follower's own high watermark starts at its log start and moves up only
        // once the leader found where their logs match (a new leader's first append to it
        // diverges): "applied up to my high watermark" then held with nothing applied, and
        // the node answered from an empty catalog. So a follower also waits for a commit
        // point a leader told it since it started, so that a ready node has applied every
        // `__meta` record committed before it started (see also `Broker::metadata_lag`).
        match &self.meta {
            Some(handle) => {
                let meta = handle.shared.snapshot();
                let applied = *self.applied.borrow();
                if meta.leader.is_none()
                    || (meta.role == Role::Leader && meta.high_watermark < meta.log_end)
                    || applied < meta.high_watermark
                {
                    return;
                }
                if meta.role != Role::Leader
                    && handle
                        .shared
                        .commit_heard()
                        .is_none_or(|commit| applied < commit)
                {
                    return;
                }
            }
            // A learner: it has applied what a voter had committed when it last asked.
            None => {
                if !self.learner_caught_up.load(Ordering::Acquire) {
                    return;
                }
            }
        }
        let catalog = self.catalog();
        // A single-voter partition leads itself once its lease wait is over; wait for that
        // so the first requests after "ready" are served rather than refused.
        let all_led = catalog
            .partitions
            .values()
            .flat_map(BTreeMap::values)
            .all(|handle| {
                let snapshot = handle.shared.snapshot();
                snapshot.leader.is_some() || snapshot.storage_failure.is_some()
            });
        if all_led {
            drop(catalog);
            self.ready.send_replace(true);
        }
    }

    /// The partition a fetch reads: any topic partition as [`Broker::partition`], and also
    /// `__meta`, which learners fetch from its leader (produce never reaches `__meta`).
    pub fn fetch_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionHandle<S>, ApiError> {
        if topic != meta::META_TOPIC {
            return self.partition(topic, partition);
        }
        self.check_ready()?;
        if partition != 0 {
            return Err(ApiError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: 1,
            });
        }
        self.meta.clone().ok_or_else(|| {
            let (leader_hint, epoch) = self
                .hinted_leader(meta::META_TOPIC, 0)
                .map_or((None, Epoch::ZERO), |(leader, epoch)| (Some(leader), epoch));
            ApiError::NotLeader { leader_hint, epoch }
        })
    }

    /// The partition handle for a request, or the typed reason there is none.
    /// Whether `topic` exists and is compacted (its records need keys).
    pub fn is_compacted(&self, topic: &str) -> bool {
        self.catalog()
            .state
            .topic(topic)
            .is_some_and(|state| state.config.is_compacted())
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<PartitionHandle<S>, ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let state = catalog
            .state
            .topic(topic)
            .ok_or_else(|| self.missing_topic(topic))?;
        if partition >= state.partitions {
            return Err(ApiError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: state.partitions,
            });
        }
        if let Some(handle) = hosted_partition(&catalog, state, partition) {
            self.check_quorum_alive(&state.replicas[partition as usize])?;
            return Ok(handle.clone());
        }
        let (leader_hint, epoch) = match self.hinted_leader(topic, partition) {
            Some((leader, epoch)) => (Some(leader), epoch),
            None => (
                state.replicas[partition as usize].first().copied(),
                Epoch::ZERO,
            ),
        };
        Err(ApiError::NotLeader { leader_hint, epoch })
    }

    /// Refuses with `NotEnoughReplicas` when gossip says fewer than a majority of `replicas`
    /// are alive (this node counts as alive), as a Kafka leader refuses below
    /// `min.insync.replicas`. Without a majority no replica can commit, and a leader's lease
    /// lapses with it, so this is a better reason for a refusal that is coming anyway; it is
    /// only ever a refusal, never consulted to accept anything.
    fn check_quorum_alive(&self, replicas: &[NodeId]) -> Result<(), ApiError> {
        if !self.config.cluster.is_clustered() {
            return Ok(());
        }
        let view = self.cluster_view();
        let alive = replicas
            .iter()
            .filter(|node| {
                **node == self.config.node_id || view.get(node).is_some_and(|info| info.alive)
            })
            .count();
        let needed = replicas.len() / 2 + 1;
        if alive < needed {
            return Err(ApiError::NotEnoughReplicas {
                needed: needed as u16,
                alive: alive as u16,
            });
        }
        Ok(())
    }

    /// The client address of every node gossip ever told of, alive or not.
    pub fn last_known_addresses(&self) -> BTreeMap<NodeId, String> {
        self.cluster_view()
            .values()
            .map(|info| (info.node_id, info.client_addr.to_string()))
            .collect()
    }

    /// This node and every node gossip says is alive, by node id.
    pub fn brokers(&self) -> Vec<BrokerInfo> {
        let mut brokers = vec![BrokerInfo {
            node_id: self.config.node_id,
            address: self.advertised_address.clone(),
        }];
        for info in self.cluster_view().values() {
            if info.alive && info.node_id != self.config.node_id {
                brokers.push(BrokerInfo {
                    node_id: info.node_id,
                    address: info.client_addr.to_string(),
                });
            }
        }
        brokers.sort_by_key(|broker| broker.node_id);
        brokers
    }

    /// The address Kafka clients are told to reach this node at, when it runs a Kafka
    /// listener.
    pub fn kafka_advertised_address(&self) -> Option<&str> {
        self.kafka_advertised_address.as_deref()
    }

    /// The Kafka address of this node and of every node gossip says is alive and runs a
    /// Kafka listener, by node id: the brokers a Kafka Metadata answer lists.
    pub fn kafka_brokers(&self) -> Vec<(NodeId, String)> {
        let mut brokers: Vec<(NodeId, String)> = self
            .kafka_advertised_address
            .iter()
            .map(|address| (self.config.node_id, address.clone()))
            .collect();
        for info in self.cluster_view().values() {
            if info.alive && info.node_id != self.config.node_id {
                if let Some(address) = &info.kafka_addr {
                    brokers.push((info.node_id, address.clone()));
                }
            }
        }
        brokers.sort();
        brokers
    }

    /// The Cairn listener address of a node gossip says is alive (not this node's own).
    pub fn client_address(&self, node: NodeId) -> Option<std::net::SocketAddr> {
        self.cluster_view()
            .get(&node)
            .filter(|info| info.alive)
            .map(|info| info.client_addr)
    }

    fn cluster_view(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, NodeInfo>> {
        self.cluster
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Folds one membership change into the view, and routes peers to their new address. A
    /// node that left and led a partition hosted here is reported to that replica as
    /// suspected: a hint that may start a candidacy sooner, never more (DESIGN 5.8). So is a
    /// node whose leadership hints stop claiming a partition whose preferred replica is
    /// hosted here, when that replica still follows it: the leader resigned for it
    /// (preferred-leader rebalancing), and the hint lets it stand as soon as its own grant
    /// expires, ahead of the other replicas' election timeouts.
    pub fn apply_cluster_change(&self, change: ClusterChange) {
        match change {
            ClusterChange::Joined(info) | ClusterChange::Updated(info) => {
                if info.node_id == self.config.node_id {
                    return;
                }
                let node_id = info.node_id;
                self.peers
                    .set_address(info.node_id, info.peer_addr.to_string());
                // Hints change only with leaderships, so the copy is rare.
                let hints_before = self
                    .cluster_view()
                    .get(&node_id)
                    .filter(|before| before.hints != info.hints)
                    .map(|before| before.hints.clone());
                let resigned = hints_before
                    .map(|before| {
                        self.preferred_replicas_resigned_by(node_id, &before, &info.hints)
                    })
                    .unwrap_or_default();
                self.cluster
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(info.node_id, info);
                if !resigned.is_empty() {
                    tracing::info!(leader = %node_id, partitions = resigned.len(), "a leader gave up partitions whose preferred replica is here: they stand once their grants expire");
                    self.suspect_until_led(resigned, node_id);
                }
            }
            ClusterChange::Left(node_id) => {
                if let Some(info) = self
                    .cluster
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get_mut(&node_id)
                {
                    info.alive = false;
                }
                let suspects: Vec<PartitionHandle<S>> = self
                    .hosted()
                    .into_iter()
                    .filter(|handle| handle.shared.snapshot().leader == Some(node_id))
                    .collect();
                if suspects.is_empty() {
                    return;
                }
                self.suspect_until_led(suspects, node_id);
            }
        }
    }

    /// The hosted replicas that are their partition's preferred replica and still follow
    /// `node_id`, whose leadership hints claimed the partition `before` and no longer do
    /// `after`: a leader that resigned for them, or lost its lease.
    fn preferred_replicas_resigned_by(
        &self,
        node_id: NodeId,
        before: &LeadershipHints,
        after: &LeadershipHints,
    ) -> Vec<PartitionHandle<S>> {
        let catalog = self.catalog();
        let mut resigned = Vec::new();
        for (topic_name, partition, _) in before.iter() {
            if after.get(topic_name, partition).is_some() {
                continue;
            }
            let Some(topic) = catalog.state.topic(topic_name) else {
                continue;
            };
            let Some(handle) = hosted_partition(&catalog, topic, partition.0) else {
                continue;
            };
            let snapshot = handle.shared.snapshot();
            if handle.shared.preferred()
                && snapshot.role == Role::Follower
                && snapshot.leader == Some(node_id)
            {
                resigned.push(handle.clone());
            }
        }
        resigned
    }

    /// Tells each replica of `suspects` that its leader `node_id` is gone, now and then
    /// again every heartbeat while it has no other leader: a first pre-vote may be refused by
    /// a follower whose own grant lapses a few milliseconds later, and the next try should
    /// not be a whole election timeout away. Bounded, and only ever a hint: the lease rules
    /// still decide (DESIGN 5.8).
    fn suspect_until_led(&self, suspects: Vec<PartitionHandle<S>>, node_id: NodeId) {
        for handle in &suspects {
            handle.suspect_leader();
        }
        let period = Duration::from_millis(self.config.replica.heartbeat_ms);
        let rounds =
            (2 * self.config.replica.election_timeout_ms) / self.config.replica.heartbeat_ms.max(1);
        tokio::spawn(async move {
            for _ in 0..rounds {
                tokio::time::sleep(period).await;
                let mut leaderless = false;
                for handle in &suspects {
                    let snapshot = handle.shared.snapshot();
                    if snapshot.role != Role::Leader
                        && (snapshot.leader.is_none() || snapshot.leader == Some(node_id))
                    {
                        handle.suspect_leader();
                        leaderless = true;
                    }
                }
                if !leaderless {
                    return;
                }
            }
        });
    }

    /// The partitions this node leads now, for gossip. Oversized hints are the caller's to
    /// refuse (membership bounds them).
    /// Changes when what [`Broker::leadership_hints`] returns may have: read it before
    /// building the hints, and build them again only once it moved.
    pub fn leadership_version(&self) -> u64 {
        self.leadership_changes.count()
    }

    /// Wakes after each change of [`Broker::leadership_version`].
    pub fn leadership_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.leadership_changes.subscribe()
    }

    pub fn leadership_hints(&self) -> LeadershipHints {
        let mut hints = LeadershipHints::new();
        if let Some(meta) = &self.meta {
            let meta = meta.shared.snapshot();
            if meta.role == Role::Leader {
                let _ = hints.insert(meta::META_TOPIC, PartitionId(0), meta.epoch);
            }
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            for partition in 0..topic.partitions {
                if let Some(handle) = hosted_partition(&catalog, topic, partition) {
                    let snapshot = handle.shared.snapshot();
                    if snapshot.role == Role::Leader {
                        let _ = hints.insert(&topic.name, PartitionId(partition), snapshot.epoch);
                    }
                }
            }
        }
        hints
    }

    /// The leader and epoch to report for a partition: the hosted replica's own view, else
    /// the leader gossip names (see [`Broker::hinted_leader`]), else none.
    fn reported_leader(
        &self,
        topic: &str,
        partition: u32,
        snapshot: Option<&PartitionSnapshot>,
    ) -> (Option<NodeId>, Epoch) {
        match snapshot {
            Some(snapshot) => (self.live(snapshot.leader), snapshot.epoch),
            None => match self.hinted_leader(topic, partition) {
                Some((leader, epoch)) => (Some(leader), epoch),
                None => (None, Epoch::ZERO),
            },
        }
    }

    /// `leader` if it can still hold a lease: this node, or a node gossip says is alive. A
    /// replica remembers its last leader until it hears of a newer one, which without a
    /// majority never comes; a leader gossip has declared dead cannot be renewing its lease
    /// (gossip's detection takes longer than a lease), so it is shown as no leader.
    fn live(&self, leader: Option<NodeId>) -> Option<NodeId> {
        leader.filter(|node| {
            *node == self.config.node_id
                || self.cluster_view().get(node).is_some_and(|info| info.alive)
        })
    }

    /// The leader gossip names for a partition not hosted here: the node claiming the highest
    /// epoch. A hint for clients' routing only; the leader itself checks its epoch.
    pub(crate) fn hinted_leader(&self, topic: &str, partition: u32) -> Option<(NodeId, Epoch)> {
        self.cluster_view()
            .values()
            .filter(|info| info.alive)
            .filter_map(|info| {
                info.hints
                    .get(topic, PartitionId(partition))
                    .map(|epoch| (info.node_id, epoch))
            })
            .max_by_key(|(_, epoch)| *epoch)
    }

    fn partition_metadata(
        &self,
        catalog: &Catalog<S>,
        topic: &TopicState,
    ) -> Vec<PartitionMetadata> {
        (0..topic.partitions)
            .map(|partition| {
                let snapshot = hosted_partition(catalog, topic, partition)
                    .map(|handle| handle.shared.snapshot());
                let (leader, leader_epoch) =
                    self.reported_leader(&topic.name, partition, snapshot.as_ref());
                PartitionMetadata {
                    partition,
                    leader,
                    leader_epoch,
                    replicas: topic.replicas[partition as usize].clone(),
                }
            })
            .collect()
    }

    pub fn topic_metadata(&self, name: &str) -> Result<TopicMetadata, ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let topic = catalog
            .state
            .topic(name)
            .ok_or_else(|| self.missing_topic(name))?;
        Ok(TopicMetadata {
            name: topic.name.clone(),
            internal: is_internal(&topic.name),
            partitions: self.partition_metadata(&catalog, topic),
        })
    }

    pub fn topic_names(&self) -> Result<Vec<String>, ApiError> {
        self.check_ready()?;
        Ok(self
            .catalog()
            .state
            .topics()
            .map(|topic| topic.name.clone())
            .collect())
    }

    pub fn topic_states(&self) -> Result<Vec<TopicState>, ApiError> {
        self.check_ready()?;
        Ok(self.catalog().state.topics().cloned().collect())
    }

    /// The internal `__meta` partition, as a topic summary for `include_internal`.
    /// On a learner: the leader gossip names, no voters (it does not know them), and the
    /// applied offset as both high watermark and log end.
    /// This node's own replicas that lost committed data, by (topic, partition): being
    /// repaired from the leader, or corrupted beyond repair.
    pub fn damaged_replicas(&self) -> BTreeMap<(String, u32), crate::partition::LogHealth> {
        use crate::partition::LogHealth;
        let mut damaged = BTreeMap::new();
        if let Some(meta) = &self.meta {
            let health = meta.shared.snapshot().health;
            if health != LogHealth::Healthy {
                damaged.insert((meta::META_TOPIC.to_string(), 0), health);
            }
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            let Some(handles) = catalog.partitions.get(&topic.id) else {
                continue;
            };
            for (partition, handle) in handles {
                let health = handle.shared.snapshot().health;
                if health != LogHealth::Healthy {
                    damaged.insert((topic.name.clone(), *partition), health);
                }
            }
        }
        damaged
    }

    /// The partitions this node leads that have followers out of sync (Kafka's ISR sense:
    /// see `PartitionActor::publish_followers`), with those followers. Only a leader knows.
    pub fn lagging_replicas(&self) -> BTreeMap<(String, u32), Vec<NodeId>> {
        let mut lagging = BTreeMap::new();
        let mut note = |topic: &str, partition: u32, shared: &crate::partition::PartitionShared| {
            let nodes = shared.lagging_followers();
            if !nodes.is_empty() {
                lagging.insert((topic.to_string(), partition), nodes);
            }
        };
        if let Some(meta) = &self.meta {
            note(meta::META_TOPIC, 0, &meta.shared);
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            let Some(handles) = catalog.partitions.get(&topic.id) else {
                continue;
            };
            for (partition, handle) in handles {
                note(&topic.name, *partition, &handle.shared);
            }
        }
        lagging
    }

    /// Every hosted replica, `__meta` first, as a metrics scrape sees it: offsets, whether
    /// this node leads, and on the leader each follower's lag and whether a replica is on a
    /// node gossip does not hear (as `cairn cluster status` counts under-replication).
    pub fn partition_metrics(&self) -> Vec<crate::metrics::PartitionMetrics> {
        let heard: std::collections::BTreeSet<NodeId> = self
            .brokers()
            .into_iter()
            .map(|broker| broker.node_id)
            .collect();
        let describe = |topic: &str, partition: u32, handle: &PartitionHandle<S>| {
            let snapshot = handle.shared.snapshot();
            let leader_here = snapshot.role == Role::Leader;
            let damaged = snapshot.health != crate::partition::LogHealth::Healthy;
            let follower_lag = if leader_here {
                handle
                    .shared
                    .follower_matched()
                    .into_iter()
                    .map(|(node, matched)| (node, snapshot.log_end.0.saturating_sub(matched.0)))
                    .collect()
            } else {
                Vec::new()
            };
            let under_replicated = leader_here
                && (damaged
                    || handle.shared.followers().any(|node| !heard.contains(&node))
                    || !handle.shared.lagging_followers().is_empty());
            crate::metrics::PartitionMetrics {
                topic: topic.to_string(),
                partition,
                log_start: snapshot.log_start.0,
                log_end: snapshot.log_end.0,
                high_watermark: snapshot.high_watermark.0,
                leader_here,
                follower_lag,
                under_replicated,
                damaged,
            }
        };
        let mut partitions = Vec::new();
        if let Some(meta) = &self.meta {
            partitions.push(describe(meta::META_TOPIC, 0, meta));
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            let Some(handles) = catalog.partitions.get(&topic.id) else {
                continue;
            };
            for (partition, handle) in handles {
                partitions.push(describe(&topic.name, *partition, handle));
            }
        }
        partitions
    }

    pub fn meta_description(&self) -> PartitionDescription {
        let Some(meta) = &self.meta else {
            let (leader, leader_epoch) = self
                .hinted_leader(meta::META_TOPIC, 0)
                .map_or((None, Epoch::ZERO), |(leader, epoch)| (Some(leader), epoch));
            let applied = *self.applied.borrow();
            return PartitionDescription {
                partition: 0,
                leader,
                leader_epoch,
                replicas: Vec::new(),
                log_start: Offset::ZERO,
                high_watermark: applied,
                log_end: applied,
            };
        };
        let snapshot = meta.shared.snapshot();
        PartitionDescription {
            partition: 0,
            leader: self.live(snapshot.leader),
            leader_epoch: snapshot.epoch,
            replicas: self.meta_voters.clone(),
            log_start: snapshot.log_start,
            high_watermark: snapshot.high_watermark,
            log_end: snapshot.log_end,
        }
    }

    pub fn describe(
        &self,
        name: &str,
    ) -> Result<(TopicConfig, Vec<PartitionDescription>), ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let topic = catalog
            .state
            .topic(name)
            .ok_or_else(|| self.missing_topic(name))?;
        let partitions = (0..topic.partitions)
            .map(|partition| {
                let snapshot = hosted_partition(&catalog, topic, partition)
                    .map(|handle| handle.shared.snapshot());
                // Not hosted here: the leader as gossip names it; the log positions of a
                // replica on another node are not known here (zero).
                let (leader, leader_epoch) =
                    self.reported_leader(&topic.name, partition, snapshot.as_ref());
                PartitionDescription {
                    partition,
                    leader,
                    leader_epoch,
                    replicas: topic.replicas[partition as usize].clone(),
                    log_start: snapshot.as_ref().map(|s| s.log_start).unwrap_or_default(),
                    high_watermark: snapshot
                        .as_ref()
                        .map(|s| s.high_watermark)
                        .unwrap_or_default(),
                    log_end: snapshot.as_ref().map(|s| s.log_end).unwrap_or_default(),
                }
            })
            .collect();
        Ok((topic.config.clone(), partitions))
    }

    /// Nodes a new topic's replicas may be placed on: this node and every node gossip says is
    /// alive, by node id (one still recovering metadata starts its replicas once it applies
    /// the topic). Placement only; a wrong opinion costs balance, not safety.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        let mut live: Vec<NodeId> = self
            .cluster_view()
            .values()
            .filter(|info| info.alive && info.node_id != self.config.node_id)
            .map(|info| info.node_id)
            .collect();
        live.push(self.config.node_id);
        live.sort_unstable();
        live
    }

    /// Every node this one has heard of, alive or not: itself, the `__meta` voters, and every
    /// node gossip has reported.
    fn known_nodes(&self) -> std::collections::BTreeSet<NodeId> {
        let mut known: std::collections::BTreeSet<NodeId> =
            self.cluster_view().keys().copied().collect();
        known.extend(self.meta_voters.iter().copied());
        known.insert(self.config.node_id);
        known
    }

    /// Validates, appends `CreateTopic` to `__meta`, waits until it is applied, and reports
    /// the outcome decided at apply time.
    pub async fn create_topic(
        &self,
        request: CreateTopicRequest,
    ) -> Result<TopicMetadata, ApiError> {
        self.check_ready()?;
        // Clients may not create `__` topics (validate_topic_name refuses them); the node
        // creates its own internal topics through `create_topic_unchecked`.
        validate_topic_name(&request.name).map_err(|error| ApiError::InvalidTopicName {
            name: request.name.clone(),
            reason: error.to_string(),
        })?;
        if request.name == SCHEMAS_TOPIC {
            // Another node's schema registry asks this one (the `__meta` leader) to create
            // `_schemas`; it gets the registry's shape whatever the request says.
            return self.create_schemas_topic().await;
        }
        self.create_topic_unchecked(request).await
    }

    /// Whether `_schemas` exists in the applied catalog.
    pub fn schemas_topic_exists(&self) -> bool {
        self.catalog().state.topic(SCHEMAS_TOPIC).is_some()
    }

    /// Creates `_schemas` (one partition, as many replicas as `__offsets` gets) here when this
    /// node leads `__meta`, else asks the `__meta` leader to. Returns once it is asked; the
    /// topic exists when `__meta` has applied it.
    pub async fn ensure_schemas_topic(&self) -> Result<(), ApiError> {
        self.check_ready()?;
        if self.schemas_topic_exists() {
            return Ok(());
        }
        let request = CreateTopicRequest {
            name: SCHEMAS_TOPIC.to_string(),
            partitions: 1,
            replication_factor: None,
            config: TopicConfig::default(),
        };
        match crate::kafka::forward::create_topic(self, request).await {
            Ok(_) | Err(ApiError::TopicAlreadyExists { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn create_schemas_topic(&self) -> Result<TopicMetadata, ApiError> {
        let live = self.live_nodes().len() as u16;
        // As for `__offsets`: wait until as many nodes are alive as the replication factor
        // wants, rather than create the registry's log with fewer replicas for good.
        let replication_factor =
            (self.known_nodes().len() as u16).min(OFFSETS_REPLICATION_FACTOR_MAX);
        if live < replication_factor {
            return Err(ApiError::CoordinatorNotAvailable);
        }
        tracing::info!(replication_factor, "creating {SCHEMAS_TOPIC}");
        self.create_topic_unchecked(CreateTopicRequest {
            name: SCHEMAS_TOPIC.to_string(),
            partitions: 1,
            replication_factor: Some(replication_factor),
            config: TopicConfig::default(),
        })
        .await
    }

    /// [`Broker::create_topic`] without the name rules, for internal topics.
    async fn create_topic_unchecked(
        &self,
        request: CreateTopicRequest,
    ) -> Result<TopicMetadata, ApiError> {
        let partitions_max = self.config.limits.partitions_per_topic_max;
        if request.partitions == 0 || request.partitions > partitions_max {
            return Err(ApiError::InvalidPartitionCount {
                requested: request.partitions,
                max: partitions_max,
            });
        }
        let live = self.live_nodes();
        let available = live.len() as u16;
        let replication_factor = match request.replication_factor {
            None => self.config.default_replication_factor.min(available),
            Some(requested) if requested == 0 || requested > available => {
                return Err(ApiError::InvalidReplicationFactor {
                    requested,
                    available,
                })
            }
            Some(requested) => requested,
        };
        if request.config.retention_ms == Some(0) || request.config.retention_bytes == Some(0) {
            return Err(ApiError::InvalidTopicConfig {
                reason: "retention_ms and retention_bytes must be above 0 (omit them to keep \
                         forever)"
                    .to_string(),
            });
        }
        if self.catalog().state.topic(&request.name).is_some() {
            return Err(ApiError::TopicAlreadyExists {
                topic: request.name,
            });
        }
        let replicas = {
            let catalog = self.catalog();
            crate::placement::assign(
                &request.name,
                &live,
                catalog
                    .state
                    .topics()
                    .flat_map(|topic| topic.replicas.iter()),
                request.partitions,
                replication_factor,
            )
        };
        let record = MetaRecord::CreateTopic {
            name: request.name.clone(),
            partitions: request.partitions,
            replication_factor,
            replicas,
            config: request.config,
        };
        let offset = self.append_meta(&record).await?;
        let created = self
            .catalog()
            .state
            .topic(&request.name)
            .is_some_and(|topic| topic.id == TopicId(offset.0));
        if !created {
            return Err(ApiError::TopicAlreadyExists {
                topic: request.name,
            });
        }
        self.wait_for_leaders(TopicId(offset.0)).await;
        self.topic_metadata(&request.name)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        self.check_ready()?;
        if self.catalog().state.topic(name).is_none() {
            return Err(self.missing_topic(name));
        }
        let offset = self
            .append_meta(&MetaRecord::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        let _ = offset;
        // A racing delete of the same name may have won; either way the topic is gone, which
        // is what was asked for. A racing create after it would be a new incarnation.
        Ok(())
    }

    /// Adds partitions to a topic and/or changes its config (`AlterTopic`): validated here,
    /// decided when the `__meta` records are applied. Partitions only grow, as in Kafka (keys
    /// then map to other partitions: the partitioner counts them).
    pub async fn alter_topic(&self, request: AlterTopicRequest) -> Result<TopicMetadata, ApiError> {
        self.check_ready()?;
        if is_internal(&request.name) {
            return Err(ApiError::InvalidTopicConfig {
                reason: format!("internal topic '{}' cannot be altered", request.name),
            });
        }
        let topic = self
            .catalog()
            .state
            .topic(&request.name)
            .cloned()
            .ok_or_else(|| self.missing_topic(&request.name))?;
        let config = apply_config_changes(&topic.config, &request.configs)?;
        let partitions_max = self.config.limits.partitions_per_topic_max;
        let added = match request.partitions {
            None => 0,
            Some(requested) if requested > partitions_max => {
                return Err(ApiError::InvalidPartitionCount {
                    requested,
                    max: partitions_max,
                })
            }
            Some(requested) if requested < topic.partitions => {
                return Err(ApiError::InvalidTopicConfig {
                    reason: format!(
                        "topic '{}' has {}; partitions can be added, never removed",
                        topic.name,
                        cairn_protocol::error::plural(u64::from(topic.partitions), "partition")
                    ),
                })
            }
            Some(requested) => requested - topic.partitions,
        };
        if config != topic.config {
            self.append_meta(&MetaRecord::AlterTopicConfig {
                name: topic.name.clone(),
                topic: topic.id,
                config,
            })
            .await?;
        }
        if added > 0 {
            // New partitions get the topic's replication factor, on nodes alive now.
            let live = self.live_nodes();
            let replication_factor = topic.replication_factor;
            if usize::from(replication_factor) > live.len() {
                return Err(ApiError::InvalidReplicationFactor {
                    requested: replication_factor,
                    available: live.len() as u16,
                });
            }
            let replicas = {
                let catalog = self.catalog();
                crate::placement::assign(
                    &format!("{}-{}", topic.name, topic.partitions),
                    &live,
                    catalog
                        .state
                        .topics()
                        .flat_map(|topic| topic.replicas.iter()),
                    added,
                    replication_factor,
                )
            };
            self.append_meta(&MetaRecord::AddPartitions {
                name: topic.name.clone(),
                topic: topic.id,
                partitions_before: topic.partitions,
                replicas,
            })
            .await?;
            let grown = self.catalog().state.topic(&topic.name).is_some_and(|now| {
                now.id == topic.id && now.partitions >= topic.partitions + added
            });
            if !grown {
                return Err(ApiError::InvalidTopicConfig {
                    reason: format!(
                        "topic '{}' changed while partitions were being added; try again",
                        topic.name
                    ),
                });
            }
            self.wait_for_leaders(topic.id).await;
        }
        self.topic_metadata(&request.name)
    }

    /// Appends one record to `__meta` with acks=all; returns its offset once applied here.
    async fn append_meta(&self, record: &MetaRecord) -> Result<Offset, ApiError> {
        let batch = record.to_batch(wall_clock_ms());
        let Some(meta) = &self.meta else {
            // A learner cannot write metadata: send the client to the voter that leads.
            let (leader_hint, epoch) = self
                .hinted_leader(meta::META_TOPIC, 0)
                .map_or((None, Epoch::ZERO), |(leader, epoch)| (Some(leader), epoch));
            return Err(ApiError::NotLeader { leader_hint, epoch });
        };
        // Without a majority of the voters nobody can write metadata (a producer id, a
        // topic): say so, rather than that this node does not lead (or, on a leader whose
        // lease lapsed with the majority, name itself as the leader to go to).
        self.check_quorum_alive(&self.meta_voters)?;
        let reply = meta.produce(batch, Acks::All)?;
        let timeout = Duration::from_millis(META_CHANGE_TIMEOUT_MS);
        let response = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(meta.shared.not_leader()),
            Err(_) => {
                return Err(ApiError::Timeout {
                    waited_ms: META_CHANGE_TIMEOUT_MS,
                })
            }
        };
        let offset = response.base_offset;
        let mut applied = self.applied.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            applied
                .wait_for(|applied| *applied > offset)
                .await
                .map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(_)) => Ok(offset),
            Ok(Err(_)) => Err(ApiError::ShuttingDown),
            Err(_) => Err(ApiError::Timeout {
                waited_ms: META_CHANGE_TIMEOUT_MS,
            }),
        }
    }

    /// Waits (bounded) until every partition of a new topic serves: a local one has a
    /// leader, and where this node leads, the leader's epoch marker is committed; one hosted
    /// elsewhere has a leader gossip names. Then a producer or a consumer right after
    /// "created" is served, and the high watermark it sees is the one new records will start
    /// at. Past the bound the topic is reported as is.
    async fn wait_for_leaders(&self, topic_id: TopicId) {
        let bound_ms = self.config.replica.election_timeout_ms + 2 * self.config.replica.lease_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(bound_ms);
        while tokio::time::Instant::now() < deadline {
            let serving = {
                let catalog = self.catalog();
                let local = catalog.partitions.get(&topic_id).is_none_or(|handles| {
                    handles.values().all(|handle| {
                        let snapshot = handle.shared.snapshot();
                        snapshot.leader.is_some()
                            && (snapshot.role != Role::Leader
                                || snapshot.high_watermark >= snapshot.log_end)
                    })
                });
                let elsewhere = catalog
                    .state
                    .topics()
                    .find(|topic| topic.id == topic_id)
                    .is_none_or(|topic| {
                        (0..topic.partitions).all(|partition| {
                            hosted_partition(&catalog, topic, partition).is_some()
                                || self.hinted_leader(&topic.name, partition).is_some()
                        })
                    });
                local && elsewhere
            };
            if serving {
                return;
            }
            tokio::time::sleep(Duration::from_millis(self.config.replica.tick_ms)).await;
        }
    }

    /// A producer id unique across the cluster and its restarts: the `__meta` offset of an
    /// `AllocateProducerId` record. Only the `__meta` leader serves it; elsewhere the refusal
    /// is `NotLeader` with its hint, which clients follow.
    pub async fn allocate_producer_id(&self) -> Result<i64, ApiError> {
        self.check_ready()?;
        let offset = self
            .append_meta(&MetaRecord::AllocateProducerId {
                node: self.config.node_id,
            })
            .await?;
        i64::try_from(offset.0).map_err(|_| ApiError::Internal {
            reason: format!("__meta offset {offset} does not fit a producer id"),
        })
    }

    /// Refuses a producer id the cluster never allocated (`ProducerIdNotAllocated`), so a
    /// client cannot invent one; an id above the `__meta` applied here may have been
    /// allocated since, and gets the retriable `NotReady` (nothing is appended either way).
    pub fn check_producer_id(&self, producer_id: i64) -> Result<(), ApiError> {
        match self.catalog().state.producer_id_status(producer_id) {
            ProducerIdStatus::Allocated => Ok(()),
            ProducerIdStatus::NeverAllocated => {
                Err(ApiError::ProducerIdNotAllocated { producer_id })
            }
            ProducerIdStatus::NotAppliedYet { applied_end } => Err(ApiError::NotReady {
                reason: format!(
                    "producer id {producer_id} is not in the cluster metadata applied here \
                     (up to offset {applied_end}); it may have been allocated since"
                ),
            }),
        }
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

/// Consumer groups: what the coordinators and the group request handlers need.
impl<S: LogStore> Broker<S> {
    pub fn groups(&self) -> &Arc<crate::groups::Coordinators<S>> {
        &self.groups
    }

    /// Milliseconds on this node's monotonic clock (group session deadlines).
    pub fn now_ms(&self) -> u64 {
        self.clock.now().0
    }

    /// The partition count of `__offsets` and its partitions hosted here; `None` while the
    /// topic does not exist.
    #[allow(clippy::type_complexity)]
    pub fn offsets_handles(&self) -> Option<(u32, Vec<(u32, PartitionHandle<S>)>)> {
        let catalog = self.catalog();
        let topic = catalog.state.topic(OFFSETS_TOPIC)?;
        let handles = (0..topic.partitions)
            .filter_map(|partition| {
                hosted_partition(&catalog, topic, partition).map(|h| (partition, h.clone()))
            })
            .collect();
        Some((topic.partitions, handles))
    }

    /// Partition counts of the topics groups may subscribe to (every non-internal topic).
    pub fn group_topic_counts(&self) -> TopicPartitionCounts {
        self.catalog()
            .state
            .topics()
            .filter(|topic| !is_internal(&topic.name))
            .map(|topic| (topic.name.clone(), topic.partitions))
            .collect()
    }

    /// (log start, high watermark) of a partition hosted here, for lag and offset resets.
    /// A follower's high watermark may trail the leader's a little: lag reads high, not low.
    pub fn partition_bounds(&self, topic: &str, partition: u32) -> Option<PartitionBounds> {
        let catalog = self.catalog();
        let state = catalog.state.topic(topic)?;
        let snapshot = hosted_partition(&catalog, state, partition)?
            .shared
            .snapshot();
        Some((snapshot.log_start, snapshot.high_watermark))
    }

    /// The leader of a partition: the local replica's opinion where hosted, else gossip's.
    pub fn partition_leader(&self, topic: &str, partition: u32) -> Option<NodeId> {
        let local = {
            let catalog = self.catalog();
            let state = catalog.state.topic(topic)?;
            hosted_partition(&catalog, state, partition).map(|h| h.shared.snapshot().leader)
        };
        match local {
            Some(leader) => leader,
            None => self
                .hinted_leader(topic, partition)
                .map(|(leader, _)| leader),
        }
    }

    /// The client address of a node (this one, or one gossip says is alive).
    pub fn broker_address(&self, node: NodeId) -> Option<String> {
        self.brokers()
            .into_iter()
            .find(|broker| broker.node_id == node)
            .map(|broker| broker.address)
    }

    /// Creates `__offsets` if it does not exist: here when this node leads `__meta`, else by
    /// asking the `__meta` leader (a `FindCoordinator` makes it do the same).
    pub async fn ensure_offsets_topic(&self, group_id: &str) -> Result<(), ApiError> {
        self.check_ready()?;
        if self.catalog().state.topic(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        let meta_leader = match &self.meta {
            Some(meta) => meta.shared.snapshot().leader,
            None => self
                .hinted_leader(meta::META_TOPIC, 0)
                .map(|(leader, _)| leader),
        };
        let Some(meta_leader) = meta_leader else {
            return Err(ApiError::CoordinatorNotAvailable);
        };
        if meta_leader == self.config.node_id {
            let live = self.live_nodes().len() as u16;
            // As Kafka does for its offsets topic: wait (the client retries) until as many
            // nodes are alive as the replication factor wants, rather than create it with
            // fewer replicas because a group was used before every node had joined; a
            // replication factor is never raised later.
            let known = self.known_nodes().len() as u16;
            let replication_factor = known.min(OFFSETS_REPLICATION_FACTOR_MAX);
            if live < replication_factor {
                tracing::info!(
                    live,
                    replication_factor,
                    "waiting for nodes before creating __offsets"
                );
                return Err(ApiError::CoordinatorNotAvailable);
            }
            let request = CreateTopicRequest {
                name: OFFSETS_TOPIC.to_string(),
                partitions: self.config.groups.offsets_partitions,
                replication_factor: Some(replication_factor),
                config: TopicConfig::default(),
            };
            tracing::info!(partitions = request.partitions, replication_factor = ?request.replication_factor, "creating __offsets");
            return match self.create_topic_unchecked(request).await {
                Ok(_) | Err(ApiError::TopicAlreadyExists { .. }) => Ok(()),
                Err(error) => Err(error),
            };
        }
        let address = self
            .broker_address(meta_leader)
            .ok_or(ApiError::CoordinatorNotAvailable)?;
        let client = cairn_client::ClientConfig::default()
            .client_id(format!("cairn-node-{}-groups", self.config.node_id))
            .request_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1));
        let connection = cairn_client::Connection::connect(&address, &client)
            .await
            .map_err(|error| ApiError::Internal {
                reason: error.to_string(),
            })?;
        let request = cairn_protocol::Request::FindCoordinator(FindCoordinatorRequest {
            group_id: group_id.to_string(),
        });
        // Its answer does not matter: the creation, if it happened, reaches this node
        // through `__meta`.
        let _ = connection.call(request).await;
        Ok(())
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

/// Topics the node creates for itself (`__offsets`); clients cannot create `__` names.
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
