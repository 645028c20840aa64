//! The schema registry on this node (issue 18, part 2): Confluent's REST API ([`rest`]) over a
//! [`Registry`] rebuilt from the internal topic `_schemas` (one partition).
//!
//! Reads replay what this node's replica of `_schemas` has committed (a follower serves its
//! committed prefix, DESIGN 5.7), up to the leader's high watermark when the leader answers,
//! then answer from the state: a read on any node sees every write any node has answered.
//!
//! Writes are made by the leader of `_schemas` only: a write reaching another node is
//! forwarded to the leader's HTTP listener ([`forward`]), and no client may produce to
//! `_schemas`. The leader plans a write's records from its replayed state under one lock,
//! appends them through its own replica with acks=all, waits until it has replayed past
//! them, and answers from the state they built. The engine still settles at apply time any
//! race a leadership change could cause (an old leader's last write committed after the new
//! leader planned), and a registration that lost plans again, a bounded number of times.
//!
//! A node without a replica of `_schemas` (a cluster larger than its replication factor)
//! replays the leader's log instead, fetched as a client.
//!
//! `_schemas` is created by the first write (the `__meta` leader creates it, as it creates
//! `__offsets`); reads on a cluster without it see an empty registry.

pub mod cli;
pub mod forward;
pub mod rest;
pub mod validation;

use crate::broker::Broker;
use cairn_control::schema::state::Registration;
use cairn_control::schema::{Registry, RegistryError, SchemaRecord, SCHEMAS_TOPIC};
use cairn_protocol::batch::{split_batches, RecordBatch, RecordBatchBuilder};
use cairn_protocol::messages::{
    FetchPartition, FetchRequest, ListOffsetsRequest, OffsetSpec, Request, Response,
};
use cairn_protocol::{Acks, ApiError, NodeId, Offset, Record};
use cairn_storage::LogStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a request may wait for `_schemas` to exist, be led, and replay a write.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a read may spend catching up before it answers 50002.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a write asks again for the leader of `_schemas` while it fails over.
const WRITE_SYNC_RETRY: Duration = Duration::from_millis(100);
/// Pause between attempts while waiting for a leader or for replication.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a read waits for the leader's high watermark before serving the local replica.
const LEADER_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from the log per step of replay.
const READ_BYTES_MAX: usize = 1024 * 1024;
/// Times a registration that lost a race plans again.
const REGISTER_ATTEMPTS_MAX: u32 = 5;

/// Failures of the registry's runtime (not of the request): Confluent's 5xx codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("the schema registry's log is not available yet: {reason}")]
    Unavailable { reason: String },
    #[error("timed out after {waited_ms} ms waiting for the schema registry's log")]
    Timeout { waited_ms: u64 },
}

impl RuntimeError {
    pub fn error_code(&self) -> u32 {
        match self {
            RuntimeError::Unavailable { .. } => 50003,
            RuntimeError::Timeout { .. } => 50002,
        }
    }
}

/// A request's failure: the request's fault (4xx) or the runtime's (5xx).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Request(#[from] RegistryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Which node writes the registry now ([`SchemaRegistry::writer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// This node leads `_schemas`.
    Here,
    /// Another node does; its HTTP address when it gossips one.
    Node {
        node: NodeId,
        http_address: Option<String>,
    },
}

struct Replayed {
    registry: Registry,
    /// The next `_schemas` offset to apply.
    next: Offset,
    /// When the last catch-up to the `_schemas` leader's high watermark started.
    synced_from: Option<Instant>,
}

pub struct SchemaRegistry<S: LogStore> {
    broker: Arc<Broker<S>>,
    /// Held by a request from its catch-up to its answer, so a write plans from a state no
    /// other write on this node is changing, and a read sees a whole write or none of it.
    replayed: Mutex<Replayed>,
}

impl<S: LogStore> SchemaRegistry<S> {
    /// The node's registry, attached to its broker so that produce can catch it up for
    /// broker-side validation ([`validation`]).
    pub fn start(broker: Arc<Broker<S>>) -> Arc<SchemaRegistry<S>> {
        let registry = Arc::new(SchemaRegistry {
            broker: Arc::clone(&broker),
            replayed: Mutex::new(Replayed {
                registry: Registry::default(),
                next: Offset::ZERO,
                synced_from: None,
            }),
        });
        broker.schemas.attach(&registry);
        registry
    }

    /// Catches up to the `_schemas` leader's high watermark unless a catch-up that started at
    /// or after `since` already did, within `timeout`. An error when the leader's high
    /// watermark could not be reached: a refusal then could rest on a lagging state.
    pub async fn catch_up_for_validation(
        &self,
        since: Instant,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || RuntimeError::Timeout {
            waited_ms: timeout.as_millis() as u64,
        };
        let mut replayed = tokio::time::timeout(timeout, self.replayed.lock())
            .await
            .map_err(|_| timed_out())?;
        if replayed.synced_from.is_some_and(|from| from >= since)
            || !self.broker.schemas_topic_exists()
        {
            return Ok(());
        }
        if self.sync(&mut replayed, deadline).await? {
            Ok(())
        } else {
            Err(RuntimeError::Unavailable {
                reason: format!("the {SCHEMAS_TOPIC} leader could not be asked"),
            })
        }
    }

    /// Runs `query` on the state caught up to what the local replica has committed.
    pub async fn read<T>(&self, query: impl FnOnce(&Registry) -> T) -> Result<T, Failure> {
        let mut replayed = self.replayed.lock().await;
        if self.broker.schemas_topic_exists() {
            self.sync(&mut replayed, Instant::now() + READ_TIMEOUT)
                .await?;
        }
        Ok(query(&replayed.registry))
    }

    /// Catches up to the leader's high watermark: a follower's trails the leader's by a
    /// replication round trip, and a read here must see every write any node has answered.
    /// When the leader cannot be asked (it is failing over), the local committed prefix is
    /// served: available, possibly a little behind. Whether the leader's high watermark was
    /// reached.
    async fn sync(&self, replayed: &mut Replayed, deadline: Instant) -> Result<bool, RuntimeError> {
        let started = Instant::now();
        let (until, authoritative) = match self.leader_high_watermark().await {
            Ok(Some(high_watermark)) if high_watermark > Offset::ZERO => {
                (Some(Offset(high_watermark.0 - 1)), true)
            }
            Ok(_) => (None, true),
            Err(error) => {
                tracing::debug!(%error, "_schemas leader not asked; reading the local replica");
                (None, false)
            }
        };
        self.catch_up(replayed, until, deadline).await?;
        if authoritative {
            replayed.synced_from = Some(started);
        }
        Ok(authoritative)
    }

    /// Plans with `plan` on the caught-up state, appends its records (if any) and answers once
    /// they are replayed here.
    pub async fn write<T>(
        &self,
        plan: impl Fn(&Registry) -> Result<(T, Vec<SchemaRecord>), RegistryError>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut replayed = self.replayed.lock().await;
        self.ensure_topic(deadline).await?;
        // A write plans only on the leader's committed state: planned on a local replica
        // that trails it, a permanent delete right after a soft one answered on another node
        // finds no soft-deleted subject, and a registration misses a version. A read may be
        // served from the local replica while the leader fails over; a write waits for it.
        while !self.sync(&mut replayed, deadline).await? {
            if Instant::now() + WRITE_SYNC_RETRY >= deadline {
                return Err(RuntimeError::Unavailable {
                    reason: "the leader of _schemas did not answer; a write waits for it"
                        .to_string(),
                }
                .into());
            }
            tokio::time::sleep(WRITE_SYNC_RETRY).await;
        }
        let (answer, records) = plan(&replayed.registry)?;
        if records.is_empty() {
            return Ok(answer);
        }
        let last = self.append(&records, deadline).await?;
        self.catch_up(&mut replayed, Some(last), deadline).await?;
        self.repair_high_water(&mut replayed, deadline).await?;
        Ok(answer)
    }

    /// Rewrites the id high water when a staler one was committed after a higher one (see
    /// `Registry::high_water_repair`), a bounded number of times.
    async fn repair_high_water(
        &self,
        replayed: &mut Replayed,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            let Some(record) = replayed.registry.high_water_repair() else {
                return Ok(());
            };
            tracing::info!("rewriting the _schemas id high water a racing delete lowered");
            let last = self.append(&[record], deadline).await?;
            self.catch_up(replayed, Some(last), deadline).await?;
        }
        Ok(())
    }

    /// `POST /subjects/{s}/versions`: the id, registering when needed.
    pub async fn register(
        &self,
        subject: &str,
        request: &cairn_control::schema::SchemaRequest,
    ) -> Result<u32, Failure> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut replayed = self.replayed.lock().await;
        self.ensure_topic(deadline).await?;
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            self.sync(&mut replayed, deadline).await?;
            // Parsed on the caught-up state: its references resolve against it.
            let schema = replayed.registry.parse(request)?;
            let record = match replayed.registry.plan_register(subject, &schema)? {
                Registration::Existing { id } => return Ok(id),
                Registration::Append { record, .. } => record,
            };
            let last = self.append(&[record], deadline).await?;
            self.catch_up(&mut replayed, Some(last), deadline).await?;
            // The record may have lost a race for its id or version to another node's write:
            // then the next plan sees the winner and tries again.
            if let Ok(found) = replayed.registry.lookup(subject, &schema, false) {
                return Ok(found.id);
            }
        }
        Err(RuntimeError::Unavailable {
            reason: format!(
                "the registration lost {REGISTER_ATTEMPTS_MAX} races with other writers; retry"
            ),
        }
        .into())
    }

    async fn ensure_topic(&self, deadline: Instant) -> Result<(), RuntimeError> {
        let mut last = String::new();
        // Bounded by the deadline: each round waits RETRY_PAUSE at least.
        while Instant::now() < deadline {
            if self.broker.schemas_topic_exists() {
                return Ok(());
            }
            if let Err(error) = self.broker.ensure_schemas_topic().await {
                last = error.to_string();
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(RuntimeError::Unavailable {
            reason: format!("{SCHEMAS_TOPIC} could not be created: {last}"),
        })
    }

    /// Applies committed records from the local replica until its high watermark, and (with
    /// `until`) until `until` is applied; then publishes the ids per subject for validation.
    async fn catch_up(
        &self,
        replayed: &mut Replayed,
        until: Option<Offset>,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        let before = replayed.next;
        let result = self.catch_up_log(replayed, until, deadline).await;
        if replayed.next != before {
            self.broker.schemas.publish(validation::SchemaIndex {
                subjects: replayed.registry.subject_ids(),
                names: replayed.registry.record_names(),
            });
        }
        result
    }

    async fn catch_up_log(
        &self,
        replayed: &mut Replayed,
        until: Option<Offset>,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        let started = Instant::now();
        loop {
            match self.read_from(replayed.next).await {
                Ok((batches, _)) if !batches.is_empty() => {
                    for batch in &batches {
                        apply_batch(&mut replayed.registry, replayed.next, batch);
                        replayed.next = replayed.next.max(batch.next_offset());
                    }
                    continue;
                }
                Ok((_, log_start)) => {
                    if log_start > replayed.next {
                        // Nothing trims `_schemas` (internal topics keep everything), so this
                        // is a replica rebuilt from scratch: replay it from its start.
                        replayed.registry = Registry::default();
                        replayed.next = log_start;
                        continue;
                    }
                    if until.is_none_or(|until| replayed.next > until) {
                        return Ok(());
                    }
                }
                Err(ApiError::NotLeader { .. }) | Err(ApiError::UnknownTopic { .. })
                    if Instant::now() < deadline => {}
                Err(error) => {
                    return Err(RuntimeError::Unavailable {
                        reason: error.to_string(),
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Timeout {
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Committed batches of `_schemas` from `from` on, and its log start: from the local
    /// replica, or from the leader's when this node holds none (a cluster larger than the
    /// replication factor).
    async fn read_from(&self, from: Offset) -> Result<(Vec<RecordBatch>, Offset), ApiError> {
        match self.broker.partition(SCHEMAS_TOPIC, 0) {
            Ok(handle) => handle
                .read(from, READ_BYTES_MAX, true)
                .await
                .map(|read| (read.batches, read.log_start)),
            Err(ApiError::NotLeader { leader_hint, .. }) => {
                let leader = leader_hint.ok_or(ApiError::NotLeader {
                    leader_hint: None,
                    epoch: cairn_protocol::Epoch::ZERO,
                })?;
                self.remote_read(leader, from).await
            }
            Err(error) => Err(error),
        }
    }

    async fn remote_read(
        &self,
        leader: NodeId,
        from: Offset,
    ) -> Result<(Vec<RecordBatch>, Offset), ApiError> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: READ_BYTES_MAX as u32,
            partitions: vec![FetchPartition {
                topic: SCHEMAS_TOPIC.to_string(),
                partition: 0,
                offset: from,
                max_bytes: READ_BYTES_MAX as u32,
            }],
        });
        let Response::Fetch(answer) = self.ask(leader, request).await? else {
            return Err(ApiError::Internal {
                reason: "a fetch was answered with something else".to_string(),
            });
        };
        let Some(partition) = answer.partitions.into_iter().next() else {
            return Err(ApiError::Internal {
                reason: "a fetch was answered without its partition".to_string(),
            });
        };
        let fetched = partition.result?;
        let batches = split_batches(&fetched.batches)
            .collect::<Result<Vec<RecordBatch>, _>>()
            .map_err(|error| ApiError::Internal {
                reason: format!("the _schemas leader sent a malformed batch: {error}"),
            })?;
        Ok((batches, fetched.log_start))
    }

    /// Appends `records` as one batch (so a multi-version delete is all or nothing) through
    /// the leader; the offset of the last record once committed.
    async fn append(
        &self,
        records: &[SchemaRecord],
        deadline: Instant,
    ) -> Result<Offset, RuntimeError> {
        let mut builder = RecordBatchBuilder::new(crate::partition::wall_clock_ms());
        for record in records {
            let built = match &record.value {
                Some(value) => Record::new(value.clone()).with_key(record.key.clone()),
                None => Record::tombstone(record.key.clone()),
            };
            builder.push(&built);
        }
        let batch = builder.build();
        let count = records.len() as u64;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.append_once(&batch).await {
                Ok(base) => return Ok(Offset(base.0 + count - 1)),
                Err(ApiError::NotLeader {
                    leader_hint: Some(leader),
                    ..
                }) => {
                    // Planned here while this node led; the next leader plans it again on
                    // its own state when the client retries.
                    return Err(RuntimeError::Unavailable {
                        reason: format!(
                            "the leadership of {SCHEMAS_TOPIC} moved to node {leader} during \
                             the write; retry"
                        ),
                    });
                }
                Err(error) if error.is_retriable() => last = error.to_string(),
                Err(error) => {
                    return Err(RuntimeError::Unavailable {
                        reason: error.to_string(),
                    })
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(RuntimeError::Unavailable {
            reason: format!("no {SCHEMAS_TOPIC} leader took the write in time: {last}"),
        })
    }

    /// Appends through this node's own replica, which must lead `_schemas`: only the leader's
    /// registry writes (a write reaching another node is forwarded, see [`forward`]).
    async fn append_once(&self, batch: &RecordBatch) -> Result<Offset, ApiError> {
        let leader = self.broker.partition_leader(SCHEMAS_TOPIC, 0);
        if leader != Some(self.broker.config.node_id) {
            return Err(ApiError::NotLeader {
                leader_hint: leader,
                epoch: cairn_protocol::Epoch::ZERO,
            });
        }
        let handle = self.broker.partition(SCHEMAS_TOPIC, 0)?;
        let reply = handle.produce(batch.clone(), Acks::All)?;
        match tokio::time::timeout(WRITE_TIMEOUT, reply).await {
            Ok(Ok(result)) => result.map(|response| response.base_offset),
            Ok(Err(_)) => Err(handle.shared.not_leader()),
            Err(_) => Err(ApiError::Timeout {
                waited_ms: WRITE_TIMEOUT.as_millis() as u64,
            }),
        }
    }

    /// The `_schemas` leader's high watermark; `None` when this node leads (its own is the
    /// authority).
    async fn leader_high_watermark(&self) -> Result<Option<Offset>, ApiError> {
        let Some(leader) = self.broker.partition_leader(SCHEMAS_TOPIC, 0) else {
            return Err(ApiError::NotLeader {
                leader_hint: None,
                epoch: cairn_protocol::Epoch::ZERO,
            });
        };
        if leader == self.broker.config.node_id {
            return Ok(None);
        }
        let request = Request::ListOffsets(ListOffsetsRequest {
            topic: SCHEMAS_TOPIC.to_string(),
            partition: 0,
            spec: OffsetSpec::Latest,
        });
        match tokio::time::timeout(LEADER_ASK_TIMEOUT, self.ask(leader, request)).await {
            Ok(Ok(Response::ListOffsets(answer))) => Ok(Some(answer.offset)),
            Ok(Ok(other)) => Err(ApiError::Internal {
                reason: format!("a list offsets was answered with {}", other.kind()),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ApiError::Timeout {
                waited_ms: LEADER_ASK_TIMEOUT.as_millis() as u64,
            }),
        }
    }

    /// Sends `request` to `node`'s Cairn listener, as a client, within [`WRITE_TIMEOUT`].
    /// A node that cannot be reached reads as `NotLeader` (retriable): it may be gone.
    async fn ask(&self, node: NodeId, request: Request) -> Result<Response, ApiError> {
        let unreachable = ApiError::NotLeader {
            leader_hint: None,
            epoch: cairn_protocol::Epoch::ZERO,
        };
        let Some(address) = self.broker.client_address(node) else {
            return Err(unreachable);
        };
        let address = address.to_string();
        let config = cairn_client::ClientConfig::default()
            .bootstrap([address.clone()])
            .client_id(format!(
                "cairn-node-{}-schemas",
                self.broker.config.node_id.0
            ))
            .request_timeout(WRITE_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .requests_in_flight_max(1)
            .frame_bytes_max(self.broker.config.limits.frame_bytes_max);
        let asked = async {
            let connection = cairn_client::Connection::connect(&address, &config).await?;
            let answer = connection.call(request).await;
            connection.close("answered");
            answer
        };
        match tokio::time::timeout(WRITE_TIMEOUT, asked).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(cairn_client::ClientError::Api(error))) => Err(error),
            Ok(Err(error)) => {
                tracing::debug!(%address, %error, "_schemas leader not reached");
                Err(unreachable)
            }
            Err(_) => Err(ApiError::Timeout {
                waited_ms: WRITE_TIMEOUT.as_millis() as u64,
            }),
        }
    }
}

/// Applies the records of one committed batch from offset `from` on; control batches (epoch
/// markers) carry none. A record the engine refuses is logged and skipped on every node alike.
fn apply_batch(registry: &mut Registry, from: Offset, batch: &RecordBatch) {
    if batch.header().is_control() {
        return;
    }
    for record in batch.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, "a committed _schemas batch is malformed; skipped");
                return;
            }
        };
        if record.offset < from {
            continue;
        }
        if let Err(reason) = registry.apply(record.key.as_deref(), record.value.as_deref()) {
            tracing::info!(offset = %record.offset, %reason, "_schemas record ignored");
        }
    }
}
