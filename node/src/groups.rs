//! Consumer-group coordinators running on this node's `__offsets` leaderships.
//!
//! - [`OffsetsPartition`] is the node's [`OffsetsLog`]: appends go through the partition actor
//!   with acks=all, reads return committed records (leader only).
//! - [`Coordinators`] is the registry: one [`PartitionCoordinator`] per `__offsets` partition
//!   this node leads, keyed by partition and epoch. A maintenance task ([`Coordinators::run`]),
//!   woken by the node's leadership events, adds one once the leader's epoch marker is
//!   committed, drops it when the node stops leading (or leads again in a later epoch), and
//!   calls `expire` on each one on a timer.
//!
//! Why wait for the marker: a new leader's high watermark may still be below records an older
//! leader wrote. Loading then would replay a stale prefix, and the coordinator would write on
//! top of it; requests get `CoordinatorLoadInProgress` (retriable) until the high watermark
//! reaches the log end, which covers the leader's own marker.
//!
//! `__offsets` is created at first use: the first group request on a cluster without it makes
//! the `__meta` leader create it (directly when this node leads `__meta`, else by forwarding a
//! `FindCoordinator` to it), and the request is answered `CoordinatorNotAvailable` (retriable).

use crate::broker::Broker;
use crate::group::runtime::{OffsetsLog, PartitionCoordinator};
use crate::group::state::GroupConfig;
use crate::partition::{PartitionHandle, PartitionShared};
use bytes::Bytes;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::messages::Acks;
use cairn_protocol::{ApiError, Epoch, Offset};
use cairn_replica::Role;
use cairn_storage::LogStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long a coordinator's append waits for its commit before `Timeout`.
const APPEND_TIMEOUT_MS: u64 = 5_000;
/// How soon the maintenance task looks again at leadership it saw before the node was ready.
const NOT_READY_RETRY: Duration = Duration::from_millis(50);
/// Bytes read from `__offsets` per step while a coordinator loads.
const READ_BYTES_MAX: usize = 1 << 20;

/// One `__offsets` partition replica, led by this node, as the coordinator's log.
pub struct OffsetsPartition<S: LogStore> {
    handle: PartitionHandle<S>,
}

impl<S: LogStore> OffsetsLog for OffsetsPartition<S> {
    async fn append(&self, batch: RecordBatch) -> Result<Offset, ApiError> {
        let reply = self.handle.produce(batch, Acks::All)?;
        let timeout = Duration::from_millis(APPEND_TIMEOUT_MS);
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result.map(|response| response.base_offset),
            Ok(Err(_)) => Err(self.handle.shared.not_leader()),
            Err(_) => Err(ApiError::Timeout {
                waited_ms: APPEND_TIMEOUT_MS,
            }),
        }
    }

    async fn read(
        &self,
        from: Offset,
        records_max: usize,
    ) -> Result<(Vec<Bytes>, Offset), ApiError> {
        let mut next = from;
        let mut values = Vec::new();
        // Control batches (epoch markers) carry no group records: keep reading past them, since
        // an empty answer means "the high watermark is reached" to the loader. Bounded: every
        // round either advances `next` or stops.
        loop {
            let read = self.handle.read(next, READ_BYTES_MAX, false).await?;
            if read.batches.is_empty() {
                return Ok((values, next));
            }
            for batch in &read.batches {
                if batch.next_offset() <= next {
                    continue;
                }
                if !batch.header().is_control() {
                    for record in batch.records() {
                        let record = record.map_err(|error| ApiError::Internal {
                            reason: format!("a committed __offsets batch is malformed: {error}"),
                        })?;
                        if record.offset >= next {
                            // No tombstone is ever written here; one would decode as a malformed value.
                            values.push(record.value.unwrap_or_default());
                        }
                    }
                }
                next = batch.next_offset();
                if values.len() >= records_max {
                    return Ok((values, next));
                }
            }
            if !values.is_empty() {
                return Ok((values, next));
            }
        }
    }
}

pub type NodeCoordinator<S> = PartitionCoordinator<OffsetsPartition<S>>;

/// A coordinator in the registry, with the leadership it was created for.
struct Running<S: LogStore> {
    epoch: Epoch,
    partition: Arc<PartitionShared>,
    coordinator: Arc<NodeCoordinator<S>>,
}

impl<S: LogStore> Running<S> {
    /// Still leading in the epoch the coordinator loaded for. Checked on every request, so a
    /// deposed leader stops answering (reads included) before the next reconcile drops it.
    fn current(&self) -> bool {
        let snapshot = self.partition.snapshot();
        snapshot.role == Role::Leader && snapshot.epoch == self.epoch
    }
}

/// The coordinators this node runs, one per `__offsets` partition it leads.
pub struct Coordinators<S: LogStore> {
    config: GroupConfig,
    running: Mutex<HashMap<u32, Running<S>>>,
}

impl<S: LogStore> Coordinators<S> {
    pub fn new(config: GroupConfig) -> Coordinators<S> {
        Coordinators {
            config,
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, partition: u32) -> Option<Arc<NodeCoordinator<S>>> {
        self.lock()
            .get(&partition)
            .filter(|running| running.current())
            .map(|running| Arc::clone(&running.coordinator))
    }

    pub fn all(&self) -> Vec<Arc<NodeCoordinator<S>>> {
        let running = self.lock();
        let mut partitions: Vec<&u32> = running.keys().collect();
        partitions.sort_unstable();
        partitions
            .into_iter()
            .filter(|partition| running[partition].current())
            .map(|partition| Arc::clone(&running[partition].coordinator))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Running<S>>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Brings the registry in line with what this node leads (see the module docs).
    fn reconcile(&self, broker: &Broker<S>) {
        let Some((_, handles)) = broker.offsets_handles() else {
            self.lock().clear();
            return;
        };
        let mut running = self.lock();
        let mut serving = std::collections::HashSet::new();
        for (partition, handle) in handles {
            let snapshot = handle.shared.snapshot();
            let ready = snapshot.role == Role::Leader
                && snapshot.storage_failure.is_none()
                && snapshot.high_watermark >= snapshot.log_end;
            if snapshot.role != Role::Leader {
                continue;
            }
            // Leading but the marker is not committed yet: keep a coordinator of this very
            // epoch (it loaded a committed prefix that already covered the marker), else none.
            if running
                .get(&partition)
                .is_some_and(|running| running.epoch == snapshot.epoch)
            {
                serving.insert(partition);
                continue;
            }
            if ready {
                let shared = Arc::clone(&handle.shared);
                let coordinator = PartitionCoordinator::new(
                    OffsetsPartition { handle },
                    self.config.clone(),
                    Arc::clone(broker.metrics()),
                );
                tracing::info!(partition, epoch = %snapshot.epoch, "coordinating __offsets partition");
                running.insert(
                    partition,
                    Running {
                        epoch: snapshot.epoch,
                        partition: shared,
                        coordinator: Arc::new(coordinator),
                    },
                );
                serving.insert(partition);
            }
        }
        running.retain(|partition, _| {
            let keep = serving.contains(partition);
            if !keep {
                tracing::info!(partition, "no longer coordinating __offsets partition");
            }
            keep
        });
    }

    /// Is `partition` led here but its coordinator not yet allowed to load?
    pub fn loading(&self, broker: &Broker<S>, partition: u32) -> bool {
        broker.offsets_handles().is_some_and(|(_, handles)| {
            handles
                .iter()
                .any(|(p, handle)| *p == partition && handle.shared.snapshot().role == Role::Leader)
        })
    }

    /// The maintenance task, until the broker is dropped: reconcile as soon as a leadership
    /// of this node changes (a coordinator starts the moment its `__offsets` leader serves, and
    /// stops the moment it is deposed), and at least every `expiry_check_ms`, when members
    /// whose session ended are expired too.
    pub async fn run(
        self: Arc<Self>,
        broker: Weak<Broker<S>>,
        mut leadership: tokio::sync::watch::Receiver<u64>,
        period_ms: u64,
    ) {
        let period = Duration::from_millis(period_ms);
        let mut next_expiry = tokio::time::Instant::now() + period;
        // A change seen while the node was not ready yet is looked at again shortly.
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let wake = retry_at.map_or(next_expiry, |retry| retry.min(next_expiry));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if broker.check_ready().is_err() {
                retry_at = Some(tokio::time::Instant::now() + NOT_READY_RETRY);
                continue;
            }
            retry_at = None;
            self.reconcile(&broker);
            if tokio::time::Instant::now() < next_expiry {
                continue;
            }
            next_expiry = tokio::time::Instant::now() + period;
            let topics = broker.group_topic_counts();
            for coordinator in self.all() {
                let now_ms = broker.now_ms();
                let expired = tokio::time::timeout(
                    Duration::from_millis(APPEND_TIMEOUT_MS),
                    coordinator.expire(&topics, now_ms),
                )
                .await;
                if let Ok(Err(error)) = expired {
                    tracing::info!(%error, "expiring group members failed; retrying next round");
                }
            }
        }
    }
}
