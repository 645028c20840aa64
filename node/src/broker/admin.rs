//! Topic administration through `__meta` (create, alter, delete, the internal topics) and
//! producer ids.

use super::*;

impl<S: LogStore> Broker<S> {
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
            config: schemas_topic_config(),
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
            config: schemas_topic_config(),
        })
        .await
    }

    /// [`Broker::create_topic`] without the name rules, for internal topics.
    pub(super) async fn create_topic_unchecked(
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
        // `_schemas` is compacted; how soon (the compaction lag, the tombstone retention, the
        // segment size) an operator may tune, as on Confluent's `_schemas`, but never its
        // policy or partitions: the registry needs every newest record of one partition.
        let tunes_schemas = request.name == SCHEMAS_TOPIC
            && request.partitions.is_none()
            && request
                .configs
                .iter()
                .all(|change| SCHEMAS_TUNABLE_CONFIGS.contains(&change.key.as_str()));
        if is_internal(&request.name) && !tunes_schemas {
            return Err(ApiError::InvalidTopicConfig {
                reason: format!(
                    "internal topic '{}' cannot be altered (of {SCHEMAS_TOPIC}, only \
                     min.compaction.lag.ms, delete.retention.ms and segment.bytes can be)",
                    request.name
                ),
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
}

/// Configs of `_schemas` an operator may change (Kafka's and Cairn's spellings).
const SCHEMAS_TUNABLE_CONFIGS: &[&str] = &[
    "min.compaction.lag.ms",
    "min_compaction_lag_ms",
    "delete.retention.ms",
    "delete_retention_ms",
    "segment.bytes",
    "segment_bytes",
];

/// `_schemas` is compacted, as Confluent creates it: the registry's state is the newest record
/// per key, a permanent delete writes tombstones, and the id high-water record keeps the next
/// id from going back when old records are cleaned away (see `cairn_control::schema::records`).
fn schemas_topic_config() -> TopicConfig {
    TopicConfig {
        cleanup_policy: Some(cairn_protocol::messages::CleanupPolicy::Compact),
        ..TopicConfig::default()
    }
}
