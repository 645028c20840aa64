//! The broker: what one node knows and hosts, shared by every connection.
//!
//! It holds the storage handles, the arbiters partition actors run on, the `__meta` partition
//! and the catalog built from it (topics and the partition actors hosted here). Metadata
//! changes (create/delete topic) are appended to `__meta`; a single applier task applies
//! committed `__meta` records in offset order and starts or stops partition actors to match,
//! both for live changes and when a restarted node replays its log.

use crate::config::NodeConfig;
use crate::meta::{self, Applied, MetaRecord, MetadataState, TopicId, TopicState};
use crate::partition::{wall_clock_ms, Clock, PartitionHandle, PartitionSpec};
use crate::peer::{PeerInbox, PeerTransport, PeerTransportConfig};
use cairn_membership::{ClusterChange, LeadershipHints, NodeInfo};
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::ids::validate_topic_name;
use cairn_protocol::messages::{
    Acks, BrokerInfo, CreateTopicRequest, PartitionDescription, PartitionMetadata, TopicConfig,
    TopicMetadata,
};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset, PartitionId};
use cairn_replica::{PeerMessage, Role};
use cairn_storage::group_commit::GroupCommitter;
use cairn_storage::{LogStore, RetentionPolicy};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Topics and the partition actors hosted here, consistent with `MetadataState`.
struct Catalog<S: LogStore> {
    state: MetadataState,
    partitions: HashMap<TopicId, Vec<PartitionHandle<S>>>,
}

pub struct Broker<S: LogStore> {
    pub config: Arc<NodeConfig>,
    store: S,
    committer: GroupCommitter,
    arbiters: Vec<actix::ArbiterHandle>,
    clock: Clock,
    advertised_address: String,
    peers: Arc<PeerTransport>,
    meta: PartitionHandle<S>,
    catalog: RwLock<Catalog<S>>,
    /// Other nodes as gossip last described them (a hint: addresses, liveness, leaderships).
    /// Empty for a lone node.
    cluster: RwLock<HashMap<NodeId, NodeInfo>>,
    /// `__meta` offset below which every record is applied.
    applied: watch::Sender<Offset>,
    ready: watch::Sender<bool>,
}

/// Bytes of `__meta` read per applier step; bounds the applier's memory.
const META_READ_BYTES_MAX: usize = 1 << 20;
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
    ) -> Result<Arc<Broker<S>>, String> {
        assert!(!arbiters.is_empty(), "partition actors need an arbiter");
        let clock = Clock::new();
        let peers = PeerTransport::new(
            config.node_id,
            PeerTransportConfig::with_frame_bytes_max(config.limits.frame_bytes_max as usize),
        );
        let log = store
            .open_log(meta::META_LOG_NAME)
            .map_err(|error| format!("cannot open the {} log: {error}", meta::META_LOG_NAME))?;
        let spec = PartitionSpec {
            log_name: meta::META_LOG_NAME.to_string(),
            node: config.node_id,
            voters: config.cluster.initial_voters.clone(),
            store: store.clone(),
            log,
            committer: committer.clone(),
            clock,
            replica_config: config.replica.replica_config(),
            tick_ms: config.replica.tick_ms,
            mailbox_max: config.limits.partition_mailbox_max as usize,
            // Metadata is small and must be replayable from the start: never trimmed.
            retention: RetentionPolicy::default(),
            retention_check_ms: config.retention.retention_check_ms,
            peers: Arc::clone(&peers),
        };
        let arbiter = &arbiters[place(meta::META_LOG_NAME, arbiters.len())];
        let meta = PartitionHandle::start(spec, arbiter)?;
        let broker = Arc::new(Broker {
            config,
            store,
            committer,
            arbiters,
            clock,
            advertised_address,
            peers,
            meta,
            catalog: RwLock::new(Catalog {
                state: MetadataState::default(),
                partitions: HashMap::new(),
            }),
            cluster: RwLock::new(HashMap::new()),
            applied: watch::channel(Offset::ZERO).0,
            ready: watch::channel(false).0,
        });
        tokio::spawn(Arc::clone(&broker).apply_meta());
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
        if log == meta::META_LOG_NAME {
            return Some(self.meta.clone());
        }
        let (topic, _partition) = meta::parse_partition_log_name(log)?;
        self.catalog()
            .partitions
            .get(&topic)?
            .iter()
            .find(|handle| handle.log_name == log)
            .cloned()
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

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog<S>> {
        self.catalog
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The applier: applies committed `__meta` records in order, forever.
    async fn apply_meta(self: Arc<Self>) {
        let mut high_watermark = self.meta.shared.subscribe_high_watermark();
        loop {
            let target = *high_watermark.borrow_and_update();
            let applied = *self.applied.borrow();
            if applied < target {
                match self.meta.read(applied, META_READ_BYTES_MAX, true).await {
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
                    catalog.state.apply(record.offset, &record.value)
                };
                match applied {
                    Some(Applied::Created(topic)) => self.host_topic(&topic),
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

    /// Starts the actors of the partitions of `topic` this node holds a replica of.
    fn host_topic(&self, topic: &TopicState) {
        let mut handles = Vec::new();
        for partition in 0..topic.partitions {
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
                node: self.config.node_id,
                voters,
                store: self.store.clone(),
                log,
                committer: self.committer.clone(),
                clock: self.clock,
                replica_config: self.config.replica.replica_config(),
                tick_ms: self.config.replica.tick_ms,
                mailbox_max: self.config.limits.partition_mailbox_max as usize,
                retention: RetentionPolicy {
                    max_age_ms: topic
                        .config
                        .retention_ms
                        .or(self.config.retention.retention_ms),
                    max_bytes: topic
                        .config
                        .retention_bytes
                        .or(self.config.retention.retention_bytes),
                },
                retention_check_ms: self.config.retention.retention_check_ms,
                peers: Arc::clone(&self.peers),
            };
            let arbiter = &self.arbiters[place(&log_name, self.arbiters.len())];
            match PartitionHandle::start(spec, arbiter) {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    tracing::error!(%log_name, %error, "cannot start a partition replica");
                }
            }
        }
        self.catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .partitions
            .insert(topic.id, handles);
    }

    async fn drop_topic(&self, topic: &TopicState) {
        let handles = self
            .catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .partitions
            .remove(&topic.id)
            .unwrap_or_default();
        for handle in handles {
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
        let meta = self.meta.shared.snapshot();
        let applied = *self.applied.borrow();
        if meta.leader.is_none()
            || (meta.role == Role::Leader && meta.high_watermark < meta.log_end)
            || applied < meta.high_watermark
        {
            return;
        }
        let catalog = self.catalog();
        // A single-voter partition leads itself once its lease wait is over; wait for that
        // so the first requests after "ready" are served rather than refused.
        let all_led = catalog.partitions.values().flatten().all(|handle| {
            let snapshot = handle.shared.snapshot();
            snapshot.leader.is_some() || snapshot.storage_failure.is_some()
        });
        if all_led {
            drop(catalog);
            self.ready.send_replace(true);
        }
    }

    /// The partition handle for a request, or the typed reason there is none.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<PartitionHandle<S>, ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let state = catalog
            .state
            .topic(topic)
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: topic.to_string(),
            })?;
        if partition >= state.partitions {
            return Err(ApiError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: state.partitions,
            });
        }
        if let Some(handle) = hosted_partition(&catalog, state, partition) {
            if handle.shared.snapshot().role != Role::Leader {
                self.check_quorum_alive(&state.replicas[partition as usize])?;
            }
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
    /// are alive (this node counts as alive). Only a better reason for a refusal that is
    /// coming anyway (this replica does not lead, and without a majority no one can); never
    /// consulted to accept anything.
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

    fn cluster_view(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, NodeInfo>> {
        self.cluster
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Folds one membership change into the view, and routes peers to their new address. A
    /// node that left and led a partition hosted here is reported to that replica as
    /// suspected: a hint that may start a candidacy sooner, never more (DESIGN 5.8).
    pub fn apply_cluster_change(&self, change: ClusterChange) {
        match change {
            ClusterChange::Joined(info) | ClusterChange::Updated(info) => {
                if info.node_id == self.config.node_id {
                    return;
                }
                self.peers
                    .set_address(info.node_id, info.peer_addr.to_string());
                self.cluster
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(info.node_id, info);
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
                for handle in self.hosted() {
                    if handle.shared.snapshot().leader == Some(node_id) {
                        handle.suspect_leader();
                    }
                }
            }
        }
    }

    /// The partitions this node leads now, for gossip. Oversized hints are the caller's to
    /// refuse (membership bounds them).
    pub fn leadership_hints(&self) -> LeadershipHints {
        let mut hints = LeadershipHints::new();
        let meta = self.meta.shared.snapshot();
        if meta.role == Role::Leader {
            let _ = hints.insert(meta::META_TOPIC, PartitionId(0), meta.epoch);
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

    /// The leader gossip names for a partition not hosted here: the node claiming the highest
    /// epoch. A hint for clients' routing only; the leader itself checks its epoch.
    fn hinted_leader(&self, topic: &str, partition: u32) -> Option<(NodeId, Epoch)> {
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
                let (leader, leader_epoch) = match snapshot {
                    Some(snapshot) => (snapshot.leader, snapshot.epoch),
                    None => match self.hinted_leader(&topic.name, partition) {
                        Some((leader, epoch)) => (Some(leader), epoch),
                        None => (None, Epoch::ZERO),
                    },
                };
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
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: name.to_string(),
            })?;
        Ok(TopicMetadata {
            name: topic.name.clone(),
            internal: false,
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
    pub fn meta_description(&self) -> PartitionDescription {
        let snapshot = self.meta.shared.snapshot();
        PartitionDescription {
            partition: 0,
            leader: snapshot.leader,
            leader_epoch: snapshot.epoch,
            replicas: self.config.cluster.initial_voters.clone(),
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
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: name.to_string(),
            })?;
        let partitions = (0..topic.partitions)
            .map(|partition| {
                let snapshot = hosted_partition(&catalog, topic, partition)
                    .map(|handle| handle.shared.snapshot());
                // Not hosted here: the leader as gossip names it; the log positions of a
                // replica on another node are not known here (zero).
                let (leader, leader_epoch) = match &snapshot {
                    Some(snapshot) => (snapshot.leader, snapshot.epoch),
                    None => match self.hinted_leader(&topic.name, partition) {
                        Some((leader, epoch)) => (Some(leader), epoch),
                        None => (None, Epoch::ZERO),
                    },
                };
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
    fn live_nodes(&self) -> Vec<NodeId> {
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

    /// Validates, appends `CreateTopic` to `__meta`, waits until it is applied, and reports
    /// the outcome decided at apply time.
    pub async fn create_topic(
        &self,
        request: CreateTopicRequest,
    ) -> Result<TopicMetadata, ApiError> {
        self.check_ready()?;
        validate_topic_name(&request.name).map_err(|error| ApiError::InvalidTopicName {
            name: request.name.clone(),
            reason: error.to_string(),
        })?;
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
            return Err(ApiError::UnknownTopic {
                topic: name.to_string(),
            });
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

    /// Appends one record to `__meta` with acks=all; returns its offset once applied here.
    async fn append_meta(&self, record: &MetaRecord) -> Result<Offset, ApiError> {
        let batch = record.to_batch(wall_clock_ms());
        let reply = self.meta.produce(batch, Acks::All)?;
        let timeout = Duration::from_millis(META_CHANGE_TIMEOUT_MS);
        let response = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(self.meta.shared.not_leader()),
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

    /// Waits (bounded) until every local partition of a new topic serves: it has a leader,
    /// and where this node leads, the leader's epoch marker is committed. Then a producer or
    /// a consumer right after "created" is served, and the high watermark it sees is the one
    /// new records will start at. Past the bound the topic is reported as is.
    async fn wait_for_leaders(&self, topic_id: TopicId) {
        let bound_ms = self.config.replica.election_timeout_ms + 2 * self.config.replica.lease_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(bound_ms);
        while tokio::time::Instant::now() < deadline {
            let serving = self
                .catalog()
                .partitions
                .get(&topic_id)
                .is_none_or(|handles| {
                    handles.iter().all(|handle| {
                        let snapshot = handle.shared.snapshot();
                        snapshot.leader.is_some()
                            && (snapshot.role != Role::Leader
                                || snapshot.high_watermark >= snapshot.log_end)
                    })
                });
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

    /// Every hosted partition handle (for shutdown and tests).
    pub fn hosted(&self) -> Vec<PartitionHandle<S>> {
        let catalog = self.catalog();
        std::iter::once(self.meta.clone())
            .chain(catalog.partitions.values().flatten().cloned())
            .collect()
    }
}

impl<S: LogStore> PeerInbox for Broker<S> {
    /// A message for a replica not hosted here (yet, or any more) is dropped: the sender
    /// repeats what matters (heartbeats, lease requests) and epochs fence what is stale.
    fn deliver(&self, from: NodeId, log: &str, message: PeerMessage) {
        match self.hosted_log(log) {
            Some(handle) => handle.deliver_peer(from, message),
            None => tracing::trace!(%from, %log, "peer message for a replica not hosted here"),
        }
    }
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
    let log_name = meta::partition_log_name(topic.id, partition);
    catalog
        .partitions
        .get(&topic.id)?
        .iter()
        .find(|handle| handle.log_name == log_name)
}
