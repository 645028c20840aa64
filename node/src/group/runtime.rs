//! Runs one [`Coordinator`] over its `__offsets` partition: loads it by replaying the log,
//! serialises requests, appends each request's records as one batch and answers only once
//! that batch is committed.
//!
//! The partition is reached through [`OffsetsLog`], so the runtime is tested here against an
//! in-memory twin with a fault hook, and the node plugs in its partition actor.
//!
//! Requests of one partition run one at a time (the lock is held across the append): the
//! records of request n+1 are computed from a state that includes request n, and the log
//! order is the order they were applied in, which replay depends on. If an append fails the
//! coordinator is dropped (its state already holds records the log may not), and the next
//! request reloads it from what the log committed.

use super::records::GroupRecord;
use super::state::{Coordinator, GroupConfig};
use crate::metrics::NodeMetrics;
use bytes::Bytes;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::{ApiError, Offset};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

/// The committed records of an `__offsets` partition, as the leader sees them.
pub trait OffsetsLog: Send + Sync {
    /// Appends one batch with acks=all; resolves once it is committed.
    fn append(&self, batch: RecordBatch) -> impl Future<Output = Result<Offset, ApiError>> + Send;

    /// Committed record values from `from` on, at most `records_max`, with the offset to read
    /// next; an empty answer means `from` is the high watermark.
    fn read(
        &self,
        from: Offset,
        records_max: usize,
    ) -> impl Future<Output = Result<(Vec<Bytes>, Offset), ApiError>> + Send;
}

/// Records read per step while loading; bounds the loader's memory per step.
const LOAD_RECORDS_MAX: usize = 1_024;

pub struct PartitionCoordinator<L: OffsetsLog> {
    log: L,
    config: GroupConfig,
    coordinator: Mutex<Slot>,
    /// The classic groups' version after the last step: a parked Kafka JoinGroup or
    /// SyncGroup looks again when it changes (see `super::classic`).
    classic_changed: watch::Sender<u64>,
    /// Requests parked now, at most `config.parked_requests_max`.
    parked: AtomicU32,
    /// The node's event metrics, where rebalances are counted.
    metrics: Arc<NodeMetrics>,
}

/// A parked request's place, given back when dropped.
pub struct Parked<'a> {
    parked: &'a AtomicU32,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Drops the loaded coordinator (keeping it for its deadlines) unless told its append
/// committed.
struct ReloadUnlessCommitted<'a> {
    slot: &'a mut Slot,
    committed: bool,
}

impl Drop for ReloadUnlessCommitted<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.slot.dropped = self.slot.loaded.take();
        }
    }
}

/// The loaded coordinator, and after a failed append the one dropped, whose member deadlines
/// the reload keeps (see [`Coordinator::keep_deadlines_of`]).
#[derive(Default)]
struct Slot {
    loaded: Option<Coordinator>,
    dropped: Option<Coordinator>,
}

/// What a request does to the coordinator: its reply and the records to append.
pub type Step<R> = Result<(R, Vec<GroupRecord>), ApiError>;

impl<L: OffsetsLog> PartitionCoordinator<L> {
    /// A coordinator over `log`, not loaded until its first request, counting into the
    /// node's `metrics`.
    pub fn new(log: L, config: GroupConfig, metrics: Arc<NodeMetrics>) -> PartitionCoordinator<L> {
        PartitionCoordinator {
            log,
            config,
            coordinator: Mutex::new(Slot::default()),
            classic_changed: watch::Sender::new(0),
            parked: AtomicU32::new(0),
            metrics,
        }
    }

    /// Tells of every change to the classic groups.
    pub fn classic_changes(&self) -> watch::Receiver<u64> {
        self.classic_changed.subscribe()
    }

    /// A place for a request that waits for a rebalance, unless `parked_requests_max` are
    /// taken.
    pub fn park(&self) -> Option<Parked<'_>> {
        let max = self.config.parked_requests_max;
        self.parked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |parked| {
                (parked < max).then_some(parked + 1)
            })
            .ok()
            .map(|_| Parked {
                parked: &self.parked,
            })
    }

    /// Runs `step` on the loaded coordinator at time `now_ms` and makes its records durable
    /// before returning its reply. A step that refuses changes nothing and appends nothing.
    pub async fn run<R>(
        &self,
        now_ms: u64,
        step: impl FnOnce(&mut Coordinator) -> Step<R>,
    ) -> Result<R, ApiError> {
        let mut slot = self.coordinator.lock().await;
        if slot.loaded.is_none() {
            let mut loaded = self.load(now_ms).await?;
            if let Some(dropped) = slot.dropped.take() {
                loaded.keep_deadlines_of(&dropped);
            }
            slot.loaded = Some(loaded);
        }
        let coordinator = slot.loaded.as_mut().expect("loaded just above");
        let classic_before = coordinator.classic().version();
        let stepped = step(coordinator);
        let classic_after = coordinator.classic().version();
        if classic_after != classic_before {
            self.classic_changed.send_replace(classic_after);
        }
        let (reply, records) = stepped?;
        if records.is_empty() {
            return Ok(reply);
        }
        let batch = GroupRecord::to_batch(&records, crate::partition::wall_clock_ms());
        // The state already holds the records: unless the append is known to have committed,
        // the next request reloads from the log. That covers a failed append and also this
        // future being dropped while the append is out (a caller's timeout), after which
        // nobody learns whether the records made it.
        let mut reload = ReloadUnlessCommitted {
            slot: &mut slot,
            committed: false,
        };
        let appended = self.log.append(batch).await;
        reload.committed = appended.is_ok();
        if appended.is_ok() {
            // Each new group epoch is one rebalance: a new target assignment for the members.
            let rebalances = records
                .iter()
                .filter(|record| matches!(record, GroupRecord::GroupMetadata { .. }))
                .count();
            self.metrics.group_rebalances.inc_by(rebalances as u64);
        }
        appended.map(|_| reply)
    }

    /// Removes expired members; meant to run on a timer.
    pub async fn expire(
        &self,
        topics: &super::assign::TopicPartitionCounts,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        self.run(now_ms, |coordinator| {
            let records = coordinator.expire(topics, now_ms);
            for record in &records {
                if let GroupRecord::MemberRemoved {
                    group_id,
                    member_id,
                } = record
                {
                    tracing::info!(group = %group_id, member = %member_id, "member expired");
                }
            }
            Ok(((), records))
        })
        .await
    }

    /// Forgets the state, e.g. when this node stops leading the partition.
    pub async fn unload(&self) {
        *self.coordinator.lock().await = Slot::default();
    }

    async fn load(&self, now_ms: u64) -> Result<Coordinator, ApiError> {
        let mut records = Vec::new();
        let mut next = Offset::ZERO;
        loop {
            let (values, after) = self.log.read(next, LOAD_RECORDS_MAX).await?;
            if values.is_empty() {
                break;
            }
            for value in values {
                match GroupRecord::decode(&value) {
                    Ok(record) => records.push(record),
                    // A record this build cannot read (written by a newer node, or damaged)
                    // is skipped rather than blocking every group of the partition.
                    Err(reason) => tracing::warn!(%reason, "skipping an unreadable group record"),
                }
            }
            assert!(after > next, "a read that returned records advances");
            next = after;
        }
        Ok(Coordinator::replay(self.config.clone(), records, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::assign::TopicPartitionCounts;
    use cairn_protocol::group::{
        ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, MemberEpoch,
        OffsetCommitPartition, OffsetCommitRequest,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex as StdMutex;

    /// The in-memory twin of an `__offsets` partition, with a hook that fails the next append.
    #[derive(Default)]
    struct MemoryLog {
        values: StdMutex<Vec<Bytes>>,
        fail_next_append: AtomicBool,
        /// The next append never completes (its caller gives up and drops it).
        hang_next_append: AtomicBool,
    }

    impl OffsetsLog for &MemoryLog {
        async fn append(&self, batch: RecordBatch) -> Result<Offset, ApiError> {
            if self.fail_next_append.swap(false, Ordering::SeqCst) {
                return Err(ApiError::Timeout { waited_ms: 10 });
            }
            if self.hang_next_append.swap(false, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let mut values = self.values.lock().unwrap();
            let base = Offset(values.len() as u64);
            for record in batch.records() {
                values.push(record.expect("our own batch").value.unwrap_or_default());
            }
            Ok(base)
        }

        async fn read(
            &self,
            from: Offset,
            records_max: usize,
        ) -> Result<(Vec<Bytes>, Offset), ApiError> {
            let values = self.values.lock().unwrap();
            let start = (from.0 as usize).min(values.len());
            let end = (start + records_max).min(values.len());
            Ok((values[start..end].to_vec(), Offset(end as u64)))
        }
    }

    fn topics() -> TopicPartitionCounts {
        [("t".to_string(), 4)].into_iter().collect()
    }

    fn join(member: &str) -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: MemberEpoch::JOIN,
            instance_id: None,
            rebalance_timeout_ms: 5_000,
            session_timeout_ms: 10_000,
            subscribed_topics: Some(vec!["t".into()]),
            assignor: None,
            owned: Some(vec![]),
        }
    }

    fn commit(member: &str, epoch: MemberEpoch, offset: u64) -> OffsetCommitRequest {
        OffsetCommitRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            offsets: vec![OffsetCommitPartition {
                topic: "t".into(),
                partition: 0,
                offset: Offset(offset),
                metadata: None,
            }],
        }
    }

    async fn committed(runtime: &PartitionCoordinator<&MemoryLog>) -> Option<Offset> {
        runtime
            .run(0, |c| {
                let offset = c
                    .group("g")
                    .and_then(|g| {
                        g.offsets
                            .get(&crate::group::assign::TopicPartition::new("t", 0))
                    })
                    .map(|c| c.offset);
                Ok((offset, vec![]))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_coordinator_loads_what_the_last_one_committed() {
        let log = MemoryLog::default();
        let first = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        let reply = first
            .run(0, |c| c.heartbeat(&join("a"), &topics(), 0))
            .await
            .unwrap();
        first
            .run(1, |c| {
                c.commit(&commit("a", reply.member_epoch, 7), &topics())
            })
            .await
            .unwrap();
        assert!(!log.values.lock().unwrap().is_empty());

        // Failover: another coordinator replays the partition.
        let second = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        assert_eq!(committed(&second).await, Some(Offset(7)));
        let (first_groups, second_groups) = (
            first
                .run(2, |c| Ok((c.groups().clone(), vec![])))
                .await
                .unwrap(),
            second
                .run(2, |c| Ok((c.groups().clone(), vec![])))
                .await
                .unwrap(),
        );
        assert_eq!(first_groups, second_groups);
        // A read-only step appended nothing.
        let appended = log.values.lock().unwrap().len();
        committed(&second).await;
        assert_eq!(log.values.lock().unwrap().len(), appended);
    }

    /// Member "a" joins at time 0 and commits offset 5 at time 1; returns its join reply.
    async fn join_and_commit_5(
        runtime: &PartitionCoordinator<&MemoryLog>,
    ) -> ConsumerGroupHeartbeatResponse {
        let reply = runtime
            .run(0, |c| c.heartbeat(&join("a"), &topics(), 0))
            .await
            .unwrap();
        runtime
            .run(1, |c| {
                c.commit(&commit("a", reply.member_epoch, 5), &topics())
            })
            .await
            .unwrap();
        reply
    }

    #[tokio::test]
    async fn a_failed_append_is_not_acknowledged_and_is_forgotten() {
        let log = MemoryLog::default();
        let runtime = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        let reply = join_and_commit_5(&runtime).await;
        log.fail_next_append.store(true, Ordering::SeqCst);
        let failed = runtime
            .run(2, |c| {
                c.commit(&commit("a", reply.member_epoch, 9), &topics())
            })
            .await;
        assert_eq!(failed.unwrap_err(), ApiError::Timeout { waited_ms: 10 });
        // The state was rebuilt from the log: the unacknowledged commit is gone.
        assert_eq!(committed(&runtime).await, Some(Offset(5)));
        // A refused request appends nothing.
        let appended = log.values.lock().unwrap().len();
        let refused = runtime
            .run(3, |c| {
                c.commit(&commit("zombie", MemberEpoch(1), 1), &topics())
            })
            .await;
        assert!(matches!(refused, Err(ApiError::UnknownMemberId { .. })));
        assert_eq!(log.values.lock().unwrap().len(), appended);
    }

    #[tokio::test]
    async fn an_append_given_up_on_is_forgotten_like_a_failed_one() {
        let log = MemoryLog::default();
        let runtime = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        let reply = join_and_commit_5(&runtime).await;
        log.hang_next_append.store(true, Ordering::SeqCst);
        let given_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            runtime.run(2, |c| {
                c.commit(&commit("a", reply.member_epoch, 9), &topics())
            }),
        )
        .await;
        assert!(given_up.is_err(), "the append hangs");
        // Nobody knows whether the commit of 9 made it (here it did not): the state comes
        // from the log again.
        assert_eq!(committed(&runtime).await, Some(Offset(5)));
    }

    #[tokio::test]
    async fn a_reload_after_a_failed_append_keeps_the_session_deadlines() {
        let log = MemoryLog::default();
        let runtime = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        let session_ms = 10_000;
        let mut request = join("a");
        request.session_timeout_ms = session_ms;
        let reply = runtime
            .run(0, |c| c.heartbeat(&request, &topics(), 0))
            .await
            .unwrap();
        // An append fails just before a's session ends; the next request reloads.
        log.fail_next_append.store(true, Ordering::SeqCst);
        let failed = runtime
            .run(9_000, |c| {
                c.commit(&commit("a", reply.member_epoch, 5), &topics())
            })
            .await;
        assert!(failed.is_err());
        // a sent nothing since 0: it expires at 10 000, not a whole session after the reload.
        runtime.expire(&topics(), 10_001).await.unwrap();
        let members = runtime
            .run(10_002, |c| {
                Ok((c.group("g").map(|g| g.members.len()), vec![]))
            })
            .await
            .unwrap();
        assert_eq!(members, Some(0));
    }

    #[tokio::test]
    async fn parked_requests_are_bounded() {
        let log = MemoryLog::default();
        let config = GroupConfig {
            parked_requests_max: 2,
            ..GroupConfig::default()
        };
        let runtime = PartitionCoordinator::new(&log, config, Arc::default());
        let first = runtime.park().expect("a place");
        let second = runtime.park().expect("a place");
        assert!(runtime.park().is_none(), "parked_requests_max reached");
        drop(first);
        let third = runtime.park().expect("a place given back");
        drop((second, third));
    }

    #[tokio::test]
    async fn unreadable_records_are_skipped_when_loading() {
        let log = MemoryLog::default();
        log.values.lock().unwrap().push(Bytes::from_static(b"\xc1"));
        let runtime = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        runtime
            .run(0, |c| c.heartbeat(&join("a"), &topics(), 0))
            .await
            .unwrap();
        let reloaded = PartitionCoordinator::new(&log, GroupConfig::default(), Arc::default());
        let members = reloaded
            .run(1, |c| Ok((c.group("g").map(|g| g.members.len()), vec![])))
            .await
            .unwrap();
        assert_eq!(members, Some(1));
    }
}
