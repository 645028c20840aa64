//! The partition actor: one per partition replica hosted on this node.
//!
//! It owns a [`cairn_replica::Replica`] and that partition's log, translates messages into
//! replica inputs and executes the returned effects in order, feeding completions (flushes)
//! back as inputs. It holds no protocol logic of its own: every decision (whether to accept a
//! produce, when a batch is committed, when to answer) is the replica's.
//!
//! Flushes go through the node's [`GroupCommitter`], which runs on its own thread, so an
//! arbiter thread never blocks on the disk. Reads (fetch) are served from the log up to the
//! high watermark, by the leader only.
//!
//! Before the replica starts, its log is checked against what it once held (see
//! [`inspect_log`]): every stored batch's checksum, and the log end against the committed end
//! recorded beside the store (`cairn_storage::watermark`). A replica that lost committed data
//! rejoins as a follower that the leader repairs ([`LogHealth::Repairing`]); the only replica
//! of a partition that lost committed data serves nothing ([`LogHealth::Corrupted`]), never a
//! shorter log whose offsets would be reused.
//!
//! Around the actor, [`PartitionHandle`] is what the rest of the node holds: the address, a
//! bounded count of queued produce messages (`partition_mailbox_max`), a watch of the high
//! watermark (long polls wait on it) and a status snapshot (describe, metadata).

use crate::compactor::{CompactionJob, Compactor};
use crate::peer::PeerSend;
use actix::prelude::*;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::compaction::CompactionDecision;
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::peer::ReplicaKey;
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};
use cairn_replica::producers::Producers;
use cairn_replica::{
    Effect, Input, Millis, PeerMessage, Recovered, Replica, ReplicaStatus, RequestId, Role,
};
use cairn_storage::group_commit::GroupCommitter;
use cairn_storage::{LogStore, PartitionLog, RetentionPolicy, StorageError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Monotonic clock of this process, the origin of every [`Millis`] fed to replicas. It reads
/// tokio's clock, which is the system's monotonic clock except in tests that pause time (see
/// [`crate::peer::memory`]): there the replicas' leases and timers run on the paused clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        Millis(self.origin.elapsed().as_millis() as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// What describe, metadata and tests see of a partition replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub node: NodeId,
    pub role: Role,
    pub epoch: Epoch,
    pub leader: Option<NodeId>,
    pub log_start: Offset,
    pub log_end: Offset,
    pub high_watermark: Offset,
    /// Set once storage failed: the replica no longer acknowledges anything.
    pub storage_failure: Option<String>,
    /// Whether this replica holds everything it once committed.
    pub health: LogHealth,
    /// Set once storage failed: committed offsets below it are served while no leader is
    /// known (see the actor's `Read`).
    pub committed_while_failed: Option<Offset>,
}

/// Whether a replica's log still holds everything it once made durable and committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogHealth {
    Healthy,
    /// It lost committed data (its store recovered an older state, or a stored batch failed
    /// its checksum and the suffix from there was cut) and follows the leader, voting for no
    /// one, until its durable log reaches `until` again.
    Repairing {
        until: Offset,
    },
    /// The only replica lost committed data from `offset` on: nobody can repair it, so it
    /// serves nothing (`ApiError::StorageCorrupted`) rather than a shorter log.
    Corrupted {
        offset: Offset,
    },
}

/// Bytes read per step when [`inspect_log`] verifies a log.
const INSPECT_READ_BYTES_MAX: usize = 4 << 20;

/// What [`inspect_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub health: LogHealth,
    /// Where a damaged suffix was cut (replicated logs only), and why.
    pub truncated: Option<(Offset, String)>,
}

/// Checks a log before its replica starts: every stored batch is read back and verified
/// (checksum, framing, stamp against key and epoch history), and the log end is compared
/// with the committed end recorded in its watermark. sled recovers up to its first damaged
/// segment and drops the rest silently, so a log can come back shorter, with every batch
/// intact: only the watermark reveals that.
///
/// A replicated log (`replicated`) that fails a check is cut at the first damaged batch (the
/// suffix from there is suspect: the leader sends it again) and, if it is now shorter than its
/// committed end, is marked [`LogHealth::Repairing`]. A single replica is never cut: if it
/// lost committed data it is [`LogHealth::Corrupted`] and its files are left as they are for
/// an operator; if the damage lies only above its committed end (unacknowledged under
/// acks=all), the damaged suffix is cut and it serves.
pub fn inspect_log<L: PartitionLog>(log: &mut L, replicated: bool) -> Inspection {
    let committed_end = log.watermark().committed_end;
    let mut damaged_at = None;
    let mut from = log.log_start();
    let log_end = log.log_end();
    while from < log_end {
        match log.read(from, log_end, INSPECT_READ_BYTES_MAX) {
            Ok(batches) => match batches.last() {
                Some(last) if last.next_offset() > from => from = last.next_offset(),
                _ => {
                    damaged_at = Some((from, "no stored batch where one should be".to_owned()));
                    break;
                }
            },
            Err(error) => {
                let offset = match &error {
                    StorageError::Corrupt { offset, .. }
                    | StorageError::Inconsistent { offset, .. } => (*offset).max(from),
                    _ => from,
                };
                damaged_at = Some((offset, error.to_string()));
                break;
            }
        }
    }
    let first_missing = damaged_at
        .as_ref()
        .map_or(log_end, |(offset, _)| *offset)
        .min(log_end);
    let lost_committed = first_missing < committed_end;
    if !replicated && lost_committed {
        return Inspection {
            health: LogHealth::Corrupted {
                offset: first_missing,
            },
            truncated: None,
        };
    }
    let mut truncated = None;
    if let Some((offset, reason)) = damaged_at {
        // `offset` is the key of the damaged batch, a batch boundary; cutting there keeps the
        // intact prefix. If even that fails, cut everything above the log start.
        let cut = log.truncate_suffix(offset).map(|()| offset).or_else(|_| {
            log.truncate_suffix(log.log_start())
                .map(|()| log.log_start())
        });
        match cut {
            Ok(at) => truncated = Some((at, reason)),
            Err(error) => {
                return Inspection {
                    health: LogHealth::Corrupted { offset },
                    truncated: Some((offset, format!("{reason}; cannot cut it: {error}"))),
                }
            }
        }
    }
    let health = if log.log_end() < committed_end {
        LogHealth::Repairing {
            until: committed_end,
        }
    } else {
        LogHealth::Healthy
    };
    Inspection { health, truncated }
}

/// Leadership events of this node's replicas: a count that grows with each (a replica's role
/// or epoch changed, a leader started serving, the set of hosted replicas changed), readable
/// at any time and awaitable, so that gossip hints and group coordinators follow leadership
/// as it moves instead of polling for it.
#[derive(Debug)]
pub struct LeadershipEvents {
    count: watch::Sender<u64>,
}

impl LeadershipEvents {
    pub fn new() -> LeadershipEvents {
        LeadershipEvents {
            count: watch::channel(0).0,
        }
    }

    /// Records one event and wakes every waiter.
    pub fn bump(&self) {
        self.count
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Events so far.
    pub fn count(&self) -> u64 {
        *self.count.borrow()
    }

    /// Resolves `changed()` after each later event.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }
}

impl Default for LeadershipEvents {
    fn default() -> Self {
        LeadershipEvents::new()
    }
}

/// State shared between the actor and the rest of the node.
#[derive(Debug)]
pub struct PartitionShared {
    high_watermark: watch::Sender<Offset>,
    snapshot: Mutex<PartitionSnapshot>,
    /// Produce messages sent but not yet handled; bounded by `partition_mailbox_max`.
    queued: AtomicUsize,
    /// One more than the highest leader high watermark (`commit`) any `Append` carried since
    /// this actor started; 0 before the first. Every such value is committed (a leader only
    /// advertises committed offsets), so it is a commit point this replica has to reach
    /// before what it applied is up to date, whatever its own log or high watermark say yet.
    commit_heard: AtomicU64,
    /// The log's name, for refusals that name the partition.
    log_name: String,
    /// This node is the partition's preferred replica (the first of its replica list) and
    /// the partition has other replicas.
    preferred: bool,
    /// The other voters and what this replica, while it leads, knows of each. Atomics
    /// stored after every step, read by metrics scrapes and status requests, so neither side
    /// takes a lock.
    followers: Vec<FollowerShared>,
}

/// One other voter as its partition's leader sees it.
#[derive(Debug)]
struct FollowerShared {
    node: NodeId,
    /// One more than the offset below which its log equals ours (0: not known, or not
    /// leading).
    matched: AtomicU64,
    /// Out of sync, in Kafka's ISR sense: it has not caught up with this leader's log end
    /// for `replica.lag_time_max_ms` (false when not leading).
    lagging: AtomicBool,
}

impl PartitionShared {
    pub fn snapshot(&self) -> PartitionSnapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// While this replica leads: each other voter and the offset below which its log is
    /// known to equal ours; empty otherwise.
    pub fn follower_matched(&self) -> Vec<(NodeId, Offset)> {
        self.followers
            .iter()
            .filter_map(|follower| match follower.matched.load(Ordering::Relaxed) {
                0 => None,
                matched => Some((follower.node, Offset(matched - 1))),
            })
            .collect()
    }

    /// While this replica leads: the other voters out of sync (see
    /// [`PartitionActor::publish_followers`]); empty otherwise.
    pub fn lagging_followers(&self) -> Vec<NodeId> {
        self.followers
            .iter()
            .filter(|follower| follower.lagging.load(Ordering::Relaxed))
            .map(|follower| follower.node)
            .collect()
    }

    /// Whether this node is the partition's preferred replica (the first of its replica
    /// list, which placement balances across nodes) and the partition has other replicas.
    pub fn preferred(&self) -> bool {
        self.preferred
    }

    /// The other voters of this partition.
    pub fn followers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.followers.iter().map(|follower| follower.node)
    }

    pub fn subscribe_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// The highest commit point a leader's `Append` told this replica since it started, if
    /// one has arrived yet (see [`PartitionShared::commit_heard`]'s field).
    pub fn commit_heard(&self) -> Option<Offset> {
        match self.commit_heard.load(Ordering::Acquire) {
            0 => None,
            heard => Some(Offset(heard - 1)),
        }
    }

    /// The refusal for a request that needs the leader, when this replica is not it; for a
    /// replica that lost committed data nobody can restore, that it is corrupted.
    pub fn not_leader(&self) -> ApiError {
        let snapshot = self.snapshot();
        if let LogHealth::Corrupted { offset } = snapshot.health {
            return ApiError::StorageCorrupted {
                partition: self.log_name.clone(),
                offset,
            };
        }
        ApiError::NotLeader {
            leader_hint: snapshot.leader,
            epoch: snapshot.epoch,
        }
    }
}

pub type ProduceReply = Result<ProduceResponse, ApiError>;

/// A compacted topic's settings, as its partitions use them (see `TopicConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionSettings {
    /// `min.compaction.lag.ms`: records younger than this are not compacted yet.
    pub min_lag_ms: u64,
    /// `delete.retention.ms`: how long a tombstone stays once it could go.
    pub delete_retention_ms: u64,
    /// `segment.bytes`: how much new log a leader waits for before it decides again.
    pub segment_bytes: u64,
}

impl CompactionSettings {
    pub fn of(config: &cairn_protocol::messages::TopicConfig) -> Option<CompactionSettings> {
        config.is_compacted().then(|| CompactionSettings {
            min_lag_ms: config.min_compaction_lag_ms(),
            delete_retention_ms: config.delete_retention_ms(),
            segment_bytes: config.segment_bytes(),
        })
    }
}

/// Decision markers appended but not yet committed, per replica. Past this, the two newest
/// are merged (a merged decision waits for the later marker to commit).
const DECISIONS_PENDING_MAX: usize = 16;

/// Everything a partition actor needs to start.
pub struct PartitionSpec<S: LogStore> {
    pub log_name: String,
    /// How peers address this replica (the typed twin of `log_name`).
    pub key: ReplicaKey,
    pub node: NodeId,
    pub voters: Vec<NodeId>,
    pub store: S,
    pub log: S::Log,
    pub committer: GroupCommitter,
    pub clock: Clock,
    pub replica_config: cairn_replica::Config,
    /// The tick grid: replicas are woken at multiples of this on the node's clock.
    pub tick_ms: u64,
    /// `replica.lag_time_max_ms`: a follower that has not caught up for this long is out of
    /// sync (under-replicated), as Kafka's `replica.lag.time.max.ms`.
    pub lag_time_max_ms: u64,
    /// `replica.leader_rebalance_ms`: a leader that is not the preferred replica resigns
    /// after leading this long, once the preferred replica is caught up (0: never). See
    /// [`PartitionActor::resignation_due`].
    pub leader_rebalance_ms: u64,
    pub mailbox_max: usize,
    pub retention: RetentionPolicy,
    pub retention_check_ms: u64,
    /// The topic's compaction settings (`None`: not a compacted topic).
    pub compaction: Option<CompactionSettings>,
    /// The node's compactor, which applies committed decisions off this actor's thread.
    pub compactor: Compactor<S>,
    /// Where `Effect::Send` goes (best effort, never blocks).
    pub peers: Arc<dyn PeerSend>,
    /// Bumped (after the snapshot shows it) whenever this replica's role or epoch changes,
    /// or it starts serving as leader, so that the node republishes its leadership hints and
    /// starts or stops group coordinators only when one did.
    pub leadership_changes: Arc<LeadershipEvents>,
    /// The node's event metrics: this replica counts leader changes and resignations there.
    pub metrics: Arc<crate::metrics::NodeMetrics>,
}

/// The rest of the node's handle on one partition actor. Cheap to clone.
pub struct PartitionHandle<S: LogStore> {
    pub log_name: String,
    pub addr: Addr<PartitionActor<S>>,
    pub shared: Arc<PartitionShared>,
    mailbox_max: usize,
}

impl<S: LogStore> Clone for PartitionHandle<S> {
    fn clone(&self) -> Self {
        PartitionHandle {
            log_name: self.log_name.clone(),
            addr: self.addr.clone(),
            shared: Arc::clone(&self.shared),
            mailbox_max: self.mailbox_max,
        }
    }
}

/// Offsets at the end of a log whose batch headers rebuild idempotent producers' state after
/// a restart when the log has no producer snapshot (a log written before snapshots, or one
/// whose snapshot could not be read back). A producer whose last batch is older is forgotten.
pub const PRODUCER_RECOVERY_OFFSETS_MAX: u64 = 1 << 16;

/// Bytes read per step of that scan.
const PRODUCER_RECOVERY_READ_BYTES_MAX: usize = 1 << 20;

/// Key of the producer snapshot in the log's own values (storage's per-log metadata).
pub const PRODUCER_SNAPSHOT_KEY: &str = "producers";

/// A partition writes a producer snapshot once its log grew this many offsets past the last
/// one (and when it stops), so a restart replays at most about this many offsets of headers
/// on top of it. A quarter of the old rebuild window: cheap next to the appends it follows
/// (one small write per 16,384 records, made durable by their flushes).
pub const PRODUCER_SNAPSHOT_OFFSETS: u64 = 1 << 14;

/// Restores idempotent producers' state after a restart (DESIGN section 6): the snapshot kept
/// with the log, then the headers of every batch written after it; without a readable
/// snapshot, the headers of the log's last [`PRODUCER_RECOVERY_OFFSETS_MAX`] offsets. Returns
/// where the replay started (the snapshot's offset, or the tail's start without one): the
/// next snapshot is due [`PRODUCER_SNAPSHOT_OFFSETS`] after it, so a log recovered without a
/// recent snapshot writes one at its first step.
fn recover_producers<L: PartitionLog>(
    log_name: &str,
    replica: &mut Replica,
    log: &L,
) -> Result<Offset, StorageError> {
    let log_end = log.log_end();
    let snapshot = match log.get_value(PRODUCER_SNAPSHOT_KEY)? {
        Some(bytes) => match Producers::decode_snapshot(&bytes) {
            Ok(snapshot) => Some(snapshot),
            Err(error) => {
                tracing::warn!(partition = %log_name, %error, "producer snapshot unreadable; rebuilding from the log's tail");
                None
            }
        },
        None => None,
    };
    let mut from = match snapshot {
        // A snapshot from before the log start was taken before a reset to a leader's log
        // start (retention snapshots first, so it never leaves one behind): its producers'
        // later batches are gone, so they are unknown, as they were after the reset.
        Some((through, _)) if through < log.log_start() => log.log_start(),
        Some((through, producers)) => {
            replica.restore_producers(producers, through);
            through.min(log_end)
        }
        None => Offset(log_end.0.saturating_sub(PRODUCER_RECOVERY_OFFSETS_MAX)),
    };
    from = from.max(log.log_start());
    let snapshot_at = from;
    while from < log_end {
        let batches = log.read(from, log_end, PRODUCER_RECOVERY_READ_BYTES_MAX)?;
        let Some(last) = batches.last() else {
            break;
        };
        let next = last.next_offset();
        replica.recover_producers(batches.iter().map(|batch| batch.header()));
        if next <= from {
            break;
        }
        from = next;
    }
    Ok(snapshot_at)
}

/// A per-partition salt for the replica's election jitter, stable across restarts.
fn jitter_salt(log_name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    log_name.hash(&mut hasher);
    hasher.finish()
}

/// A log that never had a leader: nothing written and no epoch promised.
fn recovered_fresh<L: PartitionLog>(log: &L) -> bool {
    log.log_end() == Offset::ZERO && log.promised_epoch() == Epoch::ZERO
}

/// Suggested wait before retrying a produce refused for a full mailbox.
const BACKPRESSURE_RETRY_MS: u32 = 10;

impl<S: LogStore> PartitionHandle<S> {
    /// Starts the actor on `arbiter`, recovering the replica from the log.
    pub fn start(
        mut spec: PartitionSpec<S>,
        arbiter: &actix::ArbiterHandle,
    ) -> Result<PartitionHandle<S>, String> {
        let inspection = inspect_log(&mut spec.log, spec.voters.len() > 1);
        match (&inspection.health, &inspection.truncated) {
            (LogHealth::Healthy, None) => {}
            (LogHealth::Healthy, Some((offset, reason))) => tracing::warn!(
                partition = %spec.log_name, %offset, %reason,
                "a damaged suffix above the committed end was cut"
            ),
            (LogHealth::Repairing { until }, truncated) => tracing::error!(
                partition = %spec.log_name, log_end = %spec.log.log_end(), committed_end = %until,
                cut = ?truncated,
                "this replica lost committed data: it votes for no one until the leader has repaired it"
            ),
            (LogHealth::Corrupted { offset }, truncated) => tracing::error!(
                partition = %spec.log_name, %offset, committed_end = %spec.log.watermark().committed_end,
                damage = ?truncated,
                "the only replica lost committed data: the partition is not served from this node"
            ),
        }
        let recovered = Recovered {
            promised_epoch: spec.log.promised_epoch(),
            epoch_history: spec
                .log
                .epoch_history()
                .into_iter()
                .map(|entry| (entry.epoch, entry.start_offset))
                .collect(),
            log_start: spec.log.log_start(),
            log_end: spec.log.log_end(),
        };
        let (mut replica, first_effects) = Replica::new(
            spec.replica_config.clone(),
            spec.node,
            spec.voters.clone(),
            recovered,
            spec.clock.now(),
        )
        .map_err(|error| error.to_string())?;
        let corrupted = match inspection.health {
            LogHealth::Corrupted { offset } => Some(offset),
            LogHealth::Repairing { until } => {
                replica.require_repair(until);
                None
            }
            LogHealth::Healthy => None,
        };
        // A decision whose marker was committed before a restart but that the compactor had
        // not applied in full is handed to it again once the actor runs.
        let unapplied_decision = match corrupted {
            None => crate::compactor::unapplied_decision(&spec.log),
            Some(_) => None,
        };
        let producers_snapshot_at = match corrupted {
            None => recover_producers(&spec.log_name, &mut replica, &spec.log)
                .map_err(|error| format!("cannot read back producer state: {error}"))?,
            Some(_) => Offset::ZERO,
        };
        // Partitions of one node draw different election waits, so that contested elections
        // spread their winners instead of all going to the node with the shortest wait.
        replica.set_jitter_salt(jitter_salt(&spec.log_name));
        // The first replica of a set is its preferred leader (placement balances them).
        let replicated = spec.voters.len() > 1;
        let preferred = replicated && spec.voters.first() == Some(&spec.node);
        if replicated && !preferred && recovered_fresh(&spec.log) {
            // A new partition: the others hold their first election long enough for the
            // preferred leader's second try. Its first may reach peers still inside their
            // post-start lease wait (they start when they apply the topic, a little later)
            // and be refused; without the hold, whichever other node timed out first won,
            // and a new 1,000-partition topic had 93 / 333 / 574 leaders per node.
            let config = &spec.replica_config;
            let hold_ms = config.lease_ms + 2 * config.election_timeout_ms;
            replica.hold_election_until(spec.clock.now().plus(hold_ms));
        }
        let status = replica.status();
        let shared = Arc::new(PartitionShared {
            high_watermark: watch::channel(status.high_watermark).0,
            snapshot: Mutex::new(PartitionSnapshot {
                node: spec.node,
                role: status.role,
                epoch: status.epoch,
                leader: status.leader,
                log_start: spec.log.log_start(),
                log_end: status.log_end,
                high_watermark: status.high_watermark,
                storage_failure: corrupted
                    .map(|offset| format!("committed data lost from offset {offset}")),
                health: inspection.health,
                committed_while_failed: None,
            }),
            queued: AtomicUsize::new(0),
            commit_heard: AtomicU64::new(0),
            log_name: spec.log_name.clone(),
            preferred,
            followers: spec
                .voters
                .iter()
                .filter(|voter| **voter != spec.node)
                .map(|voter| FollowerShared {
                    node: *voter,
                    matched: AtomicU64::new(0),
                    lagging: AtomicBool::new(false),
                })
                .collect(),
        });
        let mailbox_max = spec.mailbox_max;
        let log_name = spec.log_name.clone();
        // The preferred leader starts its first candidacy as soon as its own post-start lease
        // wait allows, ahead of the others' election timeouts, so leaders spread as placement
        // intended. Only a hint: the lease rules still decide, and a replica that hears a
        // leader stays a follower.
        let actor_shared = Arc::clone(&shared);
        let voters_other = shared.followers.len();
        let addr = PartitionActor::start_in_arbiter(arbiter, move |ctx| {
            // Produce messages are bounded by our own counter; the actix mailbox gets room for
            // them plus the other message kinds (DEPENDENCIES: the default 16 throttles).
            ctx.set_mailbox_capacity(mailbox_max.saturating_mul(2).max(16));
            let mut actor = PartitionActor {
                log_name: spec.log_name,
                key: spec.key,
                store: Box::new(spec.store),
                log: Some(Box::new(spec.log)),
                replica,
                committer: spec.committer,
                clock: spec.clock,
                pending: HashMap::new(),
                next_request: 0,
                shared: actor_shared,
                retention: spec.retention,
                tick_ms: spec.tick_ms.max(1),
                tick_timer: None,
                retention_check_ms: spec.retention_check_ms,
                compaction: spec.compaction,
                compactor: spec.compactor,
                decisions_pending: Vec::new(),
                decision_ready: unapplied_decision,
                last_decision: None,
                bytes_since_decision: 0,
                expiry_clock: Default::default(),
                stopped_with: None,
                follow_ups: VecDeque::new(),
                replies_due: Vec::new(),
                flushes_requested: 0,
                flushes_fed: 0,
                flushes_completed: BTreeMap::new(),
                peers: spec.peers,
                leadership_changes: spec.leadership_changes,
                metrics: spec.metrics,
                published: None,
                producers_snapshot_at,
                corrupted,
                watermark_recorded: Offset::ZERO,
                node: spec.node,
                voters: spec.voters,
                replica_config: spec.replica_config,
                generation: 0,
                storage_failed: false,
                committed_while_failed: None,
                follower_sync: vec![None; voters_other],
                lag_time_max_ms: spec.lag_time_max_ms,
                leader_rebalance_ms: spec.leader_rebalance_ms,
                leading_since: None,
            };
            if corrupted.is_some() {
                // Nothing runs: no tick, no vote, no reply but the refusal.
                return actor;
            }
            actor.execute(ctx, first_effects);
            if preferred {
                actor.run(ctx, Input::LeaderSuspected);
            }
            actor
        });
        Ok(PartitionHandle {
            log_name,
            addr,
            shared,
            mailbox_max,
        })
    }

    /// Hands a message from another replica of this partition to the actor. Best effort, as
    /// every peer message is: dropped when the mailbox is full or the actor is gone.
    pub fn deliver_peer(&self, from: NodeId, message: PeerMessage) {
        let _ = self.addr.try_send(PeerInput { from, message });
    }

    /// Gossip says the leader is gone: a hint that may start a candidacy sooner (DESIGN 5.8).
    pub fn suspect_leader(&self) {
        let _ = self.addr.try_send(LeaderSuspected);
    }

    /// Queues a validated batch for the replica. The batch is in the mailbox when this
    /// returns, so calls made in order are appended in that order; the reply comes later.
    pub fn produce(
        &self,
        batch: RecordBatch,
        acks: Acks,
    ) -> Result<oneshot::Receiver<ProduceReply>, ApiError> {
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= self.mailbox_max {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Backpressure {
                retry_after_ms: BACKPRESSURE_RETRY_MS,
            });
        }
        let (reply, receiver) = oneshot::channel();
        match self.addr.try_send(Produce { batch, acks, reply }) {
            Ok(()) => Ok(receiver),
            Err(error) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                Err(match error {
                    SendError::Full(_) => ApiError::Backpressure {
                        retry_after_ms: BACKPRESSURE_RETRY_MS,
                    },
                    SendError::Closed(_) => self.shared.not_leader(),
                })
            }
        }
    }

    /// Reads committed batches from `from` (the leader only, unless `any_role`).
    pub async fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        any_role: bool,
    ) -> Result<ReadResult, ApiError> {
        self.addr
            .send(Read {
                from,
                max_bytes,
                any_role,
            })
            .await
            .map_err(|_| self.shared.not_leader())?
    }

    pub async fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ApiError> {
        self.addr
            .send(OffsetForTimestamp { timestamp_ms })
            .await
            .map_err(|_| self.shared.not_leader())?
    }

    /// The leader's epoch history, current epoch and log end, read together (the leader only):
    /// what Kafka's OffsetForLeaderEpoch answers from.
    pub async fn epoch_history(&self) -> Result<EpochHistory, ApiError> {
        self.addr
            .send(ReadEpochHistory)
            .await
            .map_err(|_| self.shared.not_leader())?
    }

    /// Replaces the retention policy (the topic's config changed); the next retention check
    /// applies it.
    pub async fn set_retention(
        &self,
        retention: RetentionPolicy,
        compaction: Option<CompactionSettings>,
    ) {
        let _ = self.addr.send(SetRetention(retention, compaction)).await;
    }

    /// Stops the actor, answering its waiting requests with `reason`; with `remove_log`,
    /// removes the log from storage once the actor let go of it.
    pub async fn stop(&self, reason: ApiError, remove_log: bool) {
        let _ = self.addr.send(Stop { reason, remove_log }).await;
    }
}

/// One partition replica's actor. See the module docs.
pub struct PartitionActor<S: LogStore> {
    log_name: String,
    key: ReplicaKey,
    // Boxed so the actor is `Unpin` (actix requires it) whatever the store type is.
    store: Box<S>,
    /// `None` only after [`Stop`]: the log is closed (and maybe removed).
    log: Option<Box<S::Log>>,
    replica: Replica,
    committer: GroupCommitter,
    clock: Clock,
    pending: HashMap<RequestId, oneshot::Sender<ProduceReply>>,
    next_request: u64,
    shared: Arc<PartitionShared>,
    retention: RetentionPolicy,
    /// The one timer that feeds the replica `Input::Tick`: the instant it fires and its
    /// handle. Armed at the replica's `next_tick_at` after every step (see
    /// [`PartitionActor::arm_tick`]).
    tick_timer: Option<(Millis, SpawnHandle)>,
    /// The grid tick instants are rounded up to (see [`PartitionActor::arm_tick`]).
    tick_ms: u64,
    retention_check_ms: u64,
    compaction: Option<CompactionSettings>,
    compactor: Compactor<S>,
    /// Decision markers in this replica's log above its high watermark: (marker offset,
    /// decision). Applied once committed; dropped when truncated away.
    decisions_pending: Vec<(Offset, CompactionDecision)>,
    /// A committed decision the compactor's queue had no room for yet.
    decision_ready: Option<CompactionDecision>,
    /// While leading: the last decision this replica made, when (wall clock ms), and whether
    /// records had arrived before it (then a tombstone it kept may expire: one more decision
    /// is due `delete.retention.ms` later, and no more after that until records arrive, so
    /// an idle topic does not get a marker every period).
    last_decision: Option<(CompactionDecision, i64, bool)>,
    /// Bytes of records appended since this replica last decided (the `segment.bytes`
    /// granularity).
    bytes_since_decision: u64,
    /// The time compaction decisions are made with, bounded by the records' own timestamps
    /// (a leader whose wall clock jumps ahead must not expire tombstones early: see
    /// [`crate::expiry_clock`]). Fed by every record batch appended to a compacted topic.
    expiry_clock: crate::expiry_clock::ExpiryClock,
    stopped_with: Option<ApiError>,
    /// Inputs that effects of the current step produced (read results, storage failures).
    follow_ups: VecDeque<Input>,
    /// Replies of the step being executed, sent once its status is published.
    replies_due: Vec<(RequestId, ProduceReply)>,
    /// Flush completions by request sequence, fed strictly in sequence order.
    flushes_requested: u64,
    flushes_fed: u64,
    flushes_completed: BTreeMap<u64, Input>,
    peers: Arc<dyn PeerSend>,
    leadership_changes: Arc<LeadershipEvents>,
    metrics: Arc<crate::metrics::NodeMetrics>,
    /// The replica status the snapshot was last updated from: most steps (a heartbeat and
    /// its answer) change none of it, and then the snapshot is left alone.
    published: Option<ReplicaStatus>,
    /// The log end the last producer snapshot was written at (or the state recovered as of).
    producers_snapshot_at: Offset,
    /// Set when this is the only replica and it lost committed data from this offset: the
    /// replica never runs and every request is refused (see [`inspect_log`]).
    corrupted: Option<Offset>,
    /// The committed end last recorded in the log's watermark.
    watermark_recorded: Offset,
    /// What the replica is rebuilt from after a storage failure.
    node: NodeId,
    voters: Vec<NodeId>,
    replica_config: cairn_replica::Config,
    /// Counts replica rebuilds: a flush asked for by an earlier replica feeds nothing to a
    /// later one.
    generation: u64,
    /// Storage failed and the replica is inert; a timer retries (see
    /// [`PartitionActor::retry_storage`]). Committed reads are still served meanwhile.
    storage_failed: bool,
    /// The high watermark when storage first failed: served to readers while no leader is
    /// known, since a rebuilt replica learns the high watermark only once it commits again.
    committed_while_failed: Option<Offset>,
    /// Per other voter (in `shared.followers`' order), while leading: the log end it has to
    /// reach to be caught up, and when it last was (see [`PartitionActor::publish_followers`]).
    follower_sync: Vec<Option<(Offset, Millis)>>,
    /// `replica.lag_time_max_ms`: out of sync after this long without catching up.
    lag_time_max_ms: u64,
    /// `replica.leader_rebalance_ms` (0: off); see [`PartitionActor::resignation_due`].
    leader_rebalance_ms: u64,
    /// While this replica leads: the epoch it leads and when it was first seen leading it.
    leading_since: Option<(Epoch, Millis)>,
}

/// How often an inert replica checks whether its storage works again (a full disk freed).
const STORAGE_RETRY_MS: u64 = 1_000;

impl<S: LogStore> Actor for PartitionActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arm_tick(ctx);
        if self.decision_ready.is_some() {
            // No marker is pending yet: this submits only the recovered decision.
            self.apply_committed_decisions(Offset::ZERO);
        }
        ctx.run_interval(
            Duration::from_millis(self.retention_check_ms),
            |actor, ctx| {
                actor.apply_retention(ctx);
                actor.decide_compaction(ctx);
            },
        );
    }

    /// A stopped replica leads nothing: metadata and gossip hints read the snapshot, and
    /// must not name this node as leader after the actor is gone.
    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let mut snapshot = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let was_leader = snapshot.role == Role::Leader;
        snapshot.role = Role::Follower;
        snapshot.leader = None;
        drop(snapshot);
        if was_leader {
            self.leadership_changes.bump();
        }
    }
}

/// Shortest wait of the tick timer (see [`PartitionActor::arm_tick`]).
const TICK_WAIT_MS_MIN: u64 = 1;

/// Most inputs one message may cause, follow-ups included (peer reads, storage failures).
const FOLLOW_UP_INPUTS_MAX: usize = 256;

impl<S: LogStore> PartitionActor<S> {
    fn run(&mut self, ctx: &mut Context<Self>, input: Input) {
        if self.log.is_none() || self.corrupted.is_some() {
            return;
        }
        self.follow_ups.push_back(input);
        let mut steps = 0;
        while let Some(input) = self.follow_ups.pop_front() {
            steps += 1;
            assert!(
                steps <= FOLLOW_UP_INPUTS_MAX,
                "partition {}: effects keep producing inputs",
                self.log_name
            );
            if matches!(input, Input::StorageFailed { .. }) && !self.storage_failed {
                self.storage_failed = true;
                let committed = self.replica.status().high_watermark;
                let fallback = self
                    .committed_while_failed
                    .unwrap_or(committed)
                    .max(committed);
                self.committed_while_failed = Some(fallback);
                self.shared
                    .snapshot
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .committed_while_failed = Some(fallback);
                ctx.run_later(Duration::from_millis(STORAGE_RETRY_MS), |actor, ctx| {
                    actor.retry_storage(ctx)
                });
            }
            let effects = self.replica.step(self.clock.now(), input);
            if let Some(failure) = self.execute(ctx, effects) {
                self.follow_ups.push_back(failure);
            }
            if self.follow_ups.is_empty() {
                if let Some(hold_ms) = self.resignation_due() {
                    tracing::info!(partition = %self.log_name, preferred = ?self.voters.first(), "leadership handed back to the preferred replica");
                    self.metrics.leader_resignations.inc();
                    self.follow_ups.push_back(Input::Resign { hold_ms });
                }
            }
        }
        self.arm_tick(ctx);
    }

    /// Preferred-leader rebalancing (Kafka's `auto.leader.rebalance`): whether this leader,
    /// which is not its partition's preferred replica, should resign now, and for how long it
    /// then holds its own candidacy. It resigns once it has led for `leader_rebalance_ms` and
    /// the preferred replica is caught up: its log is known to equal ours up to our log end,
    /// which is also our high watermark (nothing is pending, so its log is as long as any and
    /// its candidacy is granted by rule 5.2(c)), it is in sync, and it answered one of our
    /// messages within the last `lease_ms` (its node is up now, not merely within
    /// `lag_time_max_ms`). The hold (`lease_ms + 2 * election_timeout_ms`) leaves the
    /// election to the preferred replica, which gossip's leadership hints bring forward to
    /// the end of its grant (see `Broker::apply_cluster_change`).
    ///
    /// Safe whenever it fires: resigning is the step-down of a lapsed lease, and the
    /// followers' grants bind them until they expire as always. Checked after every step
    /// (a leader steps at least once per heartbeat, when the answers come back).
    fn resignation_due(&self) -> Option<u64> {
        // `leading_since` first: it is `None` on every follower, the common case.
        let (epoch, since) = self.leading_since?;
        if self.leader_rebalance_ms == 0 || self.storage_failed || self.voters.len() < 2 {
            return None;
        }
        let preferred = *self.voters.first()?;
        if preferred == self.node {
            return None;
        }
        let status = self.replica.status();
        if status.role != Role::Leader || status.log_end != status.high_watermark {
            return None;
        }
        let now = self.clock.now();
        if epoch != status.epoch || now.since(since) < self.leader_rebalance_ms {
            return None;
        }
        let (_, matched, answered) = self
            .replica
            .follower_progress()
            .find(|(peer, _, _)| *peer == preferred)?;
        let recently =
            answered.is_some_and(|sent_at| now.since(sent_at) <= self.replica_config.lease_ms);
        let in_sync = self.shared.followers.iter().any(|follower| {
            follower.node == preferred && !follower.lagging.load(Ordering::Relaxed)
        });
        if matched != status.log_end || !recently || !in_sync {
            return None;
        }
        let config = &self.replica_config;
        Some(config.lease_ms + 2 * config.election_timeout_ms)
    }

    /// Retries a failed store: a flush that succeeds makes everything the log holds durable
    /// (with sled, the store must have reopened first), and then the replica is rebuilt from
    /// the log as after a restart: it waits out any lease it granted, is elected again, and
    /// writes resume without a restart. Until then, committed reads go on. Requests waiting
    /// on the old replica are answered `Storage` (indeterminate: their batch may commit).
    fn retry_storage(&mut self, ctx: &mut Context<Self>) {
        if self.log.is_none() || !self.storage_failed {
            return;
        }
        let flushed = self.committer.request();
        ctx.spawn(actix::fut::wrap_future::<_, Self>(flushed).map(
            |result, actor, ctx| match result {
                Ok(()) => actor.rebuild_replica(ctx),
                Err(error) => {
                    tracing::debug!(partition = %actor.log_name, %error, "storage still failing");
                    ctx.run_later(Duration::from_millis(STORAGE_RETRY_MS), |actor, ctx| {
                        actor.retry_storage(ctx)
                    });
                }
            },
        ));
    }

    fn rebuild_replica(&mut self, ctx: &mut Context<Self>) {
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let recovered = Recovered {
            promised_epoch: log.promised_epoch(),
            epoch_history: log
                .epoch_history()
                .into_iter()
                .map(|entry| (entry.epoch, entry.start_offset))
                .collect(),
            log_start: log.log_start(),
            log_end: log.log_end(),
        };
        let rebuilt = Replica::new(
            self.replica_config.clone(),
            self.node,
            self.voters.clone(),
            recovered,
            self.clock.now(),
        );
        let (mut replica, effects) = match rebuilt {
            Ok(rebuilt) => rebuilt,
            Err(error) => {
                tracing::error!(partition = %self.log_name, %error, "cannot rebuild the replica");
                return;
            }
        };
        match recover_producers(&self.log_name, &mut replica, &**log) {
            Ok(snapshot_at) => self.producers_snapshot_at = snapshot_at,
            // Its producers are unknown then: a retry at a non-zero sequence is refused
            // (UnknownProducerId) and the producer starts a new epoch, never a duplicate.
            Err(error) => {
                tracing::warn!(partition = %self.log_name, %error, "cannot read back producer state")
            }
        }
        replica.set_jitter_salt(jitter_salt(&self.log_name));
        let reason = "storage failed; the batch may or may not be written".to_string();
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ApiError::Storage {
                reason: reason.clone(),
            }));
        }
        self.replica = replica;
        self.generation += 1;
        self.flushes_requested = 0;
        self.flushes_fed = 0;
        self.flushes_completed.clear();
        self.storage_failed = false;
        if let Some((_, handle)) = self.tick_timer.take() {
            ctx.cancel_future(handle);
        }
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .storage_failure = None;
        self.published = None;
        tracing::info!(partition = %self.log_name, "storage works again: the replica is rebuilt");
        self.execute(ctx, effects);
        self.run(ctx, Input::LeaderSuspected);
    }

    /// Arms the tick timer for when the replica next needs a tick. An idle partition then
    /// costs a wake-up per heartbeat it leads and one per election timeout it follows (each
    /// heartbeat pushes that deadline out), instead of a tick every few tens of milliseconds:
    /// with a thousand partitions per node, fixed ticks alone kept a fifth of a core busy.
    ///
    /// The instant is rounded up to a multiple of `tick_ms` on the node's clock (which every
    /// partition shares), so the partitions due within one `tick_ms` wake together: the
    /// heartbeats of the partitions a node leads then leave in bursts that share frames, and
    /// their answers come back the same way, instead of one frame, one write and one wake-up
    /// per heartbeat. A tick is then at most `tick_ms` late, as it was with a fixed tick
    /// every `tick_ms` (which config rules keep below `heartbeat_ms`).
    ///
    /// A timer already armed for an earlier instant is kept: firing early only costs a tick
    /// that does nothing but re-arm, while moving the timer on every step (a follower's
    /// deadline moves with each append) would cost a cancel and a new timer per message.
    fn arm_tick(&mut self, ctx: &mut Context<Self>) {
        if self.log.is_none() || self.corrupted.is_some() {
            return;
        }
        let Some(asked) = self.replica.next_tick_at() else {
            return;
        };
        let due = Millis(asked.0.div_ceil(self.tick_ms).saturating_mul(self.tick_ms));
        if let Some((armed, handle)) = self.tick_timer {
            if armed <= due {
                return;
            }
            ctx.cancel_future(handle);
        }
        // `Millis` are whole milliseconds since the clock's origin, rounded down, so waiting
        // `due - now` lands at or after `due` on the replica's clock. At least a millisecond,
        // so that a replica that kept asking for a past instant could not spin the arbiter.
        let wait_ms = due.since(self.clock.now()).max(TICK_WAIT_MS_MIN);
        let handle = ctx.run_later(Duration::from_millis(wait_ms), |actor, ctx| {
            actor.tick_timer = None;
            actor.run(ctx, Input::Tick);
        });
        self.tick_timer = Some((due, handle));
    }

    /// Executes effects in order. A storage failure stops the list and is returned as the
    /// input to feed back.
    ///
    /// Replies go out last, once the status is published: a producer that has its
    /// acknowledgement then finds the high watermark covering it in every view of this
    /// partition (Describe and ListOffsets read the snapshot), not only in the fetch watch.
    fn execute(&mut self, ctx: &mut Context<Self>, effects: Vec<Effect>) -> Option<Input> {
        let mut failure = None;
        for effect in effects {
            if let Err(error) = self.execute_one(ctx, effect) {
                tracing::error!(partition = %self.log_name, %error, "storage failed");
                self.shared
                    .snapshot
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .storage_failure = Some(error.to_string());
                failure = Some(Input::StorageFailed {
                    reason: error.to_string(),
                });
                break;
            }
        }
        if failure.is_none() {
            failure = self.snapshot_producers(false).err().map(|error| {
                tracing::error!(partition = %self.log_name, %error, "storage failed");
                Input::StorageFailed {
                    reason: error.to_string(),
                }
            });
        }
        self.publish_status(false);
        for (request, result) in self.replies_due.drain(..) {
            if let Some(reply) = self.pending.remove(&request) {
                // The requester may have timed out and gone; nothing to do then.
                let _ = reply.send(result);
            }
        }
        failure
    }

    /// Writes the producer snapshot into the log's metadata once the log grew
    /// [`PRODUCER_SNAPSHOT_OFFSETS`] past the last one (always, with `force`, if it grew at
    /// all). Only between steps, when the replica's state covers exactly the log's batches;
    /// buffered like the appends before it, so a flush makes both durable, and a snapshot
    /// that outlives a lost log suffix is cut back to the log on recovery.
    fn snapshot_producers(&mut self, force: bool) -> Result<(), StorageError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let log_end = log.log_end();
        let grown = log_end.0.saturating_sub(self.producers_snapshot_at.0);
        // A truncation below the last snapshot makes the stored one ahead of the log: replace
        // it with one that is not, at once.
        let due = if force {
            log_end != self.producers_snapshot_at
        } else {
            grown >= PRODUCER_SNAPSHOT_OFFSETS || log_end < self.producers_snapshot_at
        };
        if !due || log_end != self.replica.status().log_end {
            return Ok(());
        }
        let bytes = self.replica.producers().encode_snapshot(log_end);
        log.put_value(PRODUCER_SNAPSHOT_KEY, &bytes)?;
        self.producers_snapshot_at = log_end;
        Ok(())
    }

    fn execute_one(&mut self, ctx: &mut Context<Self>, effect: Effect) -> Result<(), StorageError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        match effect {
            Effect::PersistPromise { epoch } => {
                log.set_promised_epoch(epoch)?;
                self.after_flush(ctx, Input::PromisePersisted { epoch });
            }
            Effect::Append { batches } => {
                for batch in &batches {
                    log.append(batch)?;
                    if !batch.header().is_control() {
                        // Only records count: a marker must not make the next decision due.
                        self.bytes_since_decision += batch.size_bytes() as u64;
                        if self.compaction.is_some() {
                            self.expiry_clock.observe(
                                batch.header().max_timestamp_ms,
                                wall_clock_ms(),
                                Instant::now(),
                            );
                        }
                    } else if let Some(decision) = CompactionDecision::from_batch(batch) {
                        crate::compactor::record_seen_decision(
                            log.as_mut(),
                            batch.base_offset(),
                            decision,
                        )?;
                        self.decisions_pending.push((batch.base_offset(), decision));
                        if self.decisions_pending.len() > DECISIONS_PENDING_MAX {
                            let (offset, newest) =
                                self.decisions_pending.pop().expect("more than one");
                            let last = self.decisions_pending.last_mut().expect("one");
                            *last = (offset, last.1.merge(newest));
                        }
                    }
                }
                let log_end = log.log_end();
                self.after_flush(ctx, Input::Durable { log_end });
            }
            Effect::Truncate { from } => {
                log.truncate_suffix(from)?;
                // A truncated decision was never committed: it is never acted on.
                self.decisions_pending.retain(|(offset, _)| *offset < from);
                crate::compactor::forget_seen_decisions_from(log.as_mut(), from)?;
            }
            Effect::ResetLog { log_start, epoch } => {
                self.decisions_pending.clear();
                crate::compactor::forget_seen_decisions_from(log.as_mut(), Offset::ZERO)?;
                tracing::info!(partition = %self.log_name, %log_start, %epoch, "log starts at the leader's log start");
                log.reset_start(log_start, epoch)?;
            }
            Effect::Send { to, message } => self.peers.send(to, self.key, &message),
            Effect::Reply { request, result } => self.replies_due.push((request, result)),
            Effect::HighWatermark { offset } => {
                self.shared.high_watermark.send_replace(offset);
                self.apply_committed_decisions(offset);
            }
            Effect::RoleChanged {
                role,
                epoch,
                leader,
            } => {
                tracing::info!(partition = %self.log_name, ?role, %epoch, ?leader, "role changed");
            }
            Effect::ReadForPeer {
                to,
                from,
                until,
                bytes_max,
            } => {
                tracing::debug!(partition = %self.log_name, %to, %from, %until, "follower caught up from the log");
                let batches = log.read(from, until, bytes_max)?;
                self.follow_ups
                    .push_back(Input::PeerRead { to, from, batches });
            }
        }
        Ok(())
    }

    /// Asks the group committer for a flush and feeds `then` when it covers our writes.
    /// Completions are fed in the order the flushes were asked for (the replica counts one
    /// `Durable` per `Append`, in order), whatever order actix polls the waiting futures in.
    fn after_flush(&mut self, ctx: &mut Context<Self>, then: Input) {
        let sequence = self.flushes_requested;
        self.flushes_requested += 1;
        let flushed = self.committer.request();
        let generation = self.generation;
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(flushed).map(move |result, actor, ctx| {
                if actor.generation != generation {
                    // Asked for by a replica since rebuilt: its appends are not this one's.
                    return;
                }
                let input = match result {
                    Ok(()) => then,
                    Err(error) => Input::StorageFailed {
                        reason: error.to_string(),
                    },
                };
                actor.flushes_completed.insert(sequence, input);
                while let Some(input) = actor.flushes_completed.remove(&actor.flushes_fed) {
                    actor.flushes_fed += 1;
                    actor.run(ctx, input);
                }
            }),
        );
    }

    /// Updates the snapshot from the replica, unless the replica's status did not change
    /// since the last update and `log_start_moved` is false (only retention moves the log
    /// start: truncation removes a suffix).
    fn publish_status(&mut self, log_start_moved: bool) {
        let status = self.replica.status();
        self.publish_followers(&status);
        if !log_start_moved && self.published.as_ref() == Some(&status) {
            return;
        }
        let log_start = self
            .log
            .as_ref()
            .map(|log| log.log_start())
            .unwrap_or(status.log_start);
        let mut snapshot = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A leader serves (its coordinators may load) once its high watermark reaches its log
        // end, which covers its own epoch marker.
        let serving = |role: Role, high_watermark: Offset, log_end: Offset| {
            role == Role::Leader && high_watermark >= log_end
        };
        let leadership_changed = snapshot.role != status.role
            || snapshot.epoch != status.epoch
            || serving(snapshot.role, snapshot.high_watermark, snapshot.log_end)
                != serving(status.role, status.high_watermark, status.log_end);
        if snapshot.leader != status.leader {
            self.metrics.leader_changes.inc();
        }
        snapshot.role = status.role;
        snapshot.epoch = status.epoch;
        snapshot.leader = status.leader;
        snapshot.log_start = log_start;
        snapshot.log_end = status.log_end;
        snapshot.high_watermark = status.high_watermark;
        if let (LogHealth::Repairing { .. }, None) =
            (snapshot.health, self.replica.repairing_until())
        {
            tracing::info!(partition = %self.log_name, log_end = %status.log_end, "repaired from the leader");
            snapshot.health = LogHealth::Healthy;
        }
        drop(snapshot);
        if leadership_changed {
            self.leadership_changes.bump();
        }
        self.record_watermark(&status);
        self.published = Some(status);
    }

    /// Stores each follower's matched offset for the lag metrics (0 for "not known": not
    /// leading, or a follower the leader has not heard from), and whether it is out of sync.
    /// A few atomic stores per step.
    ///
    /// Out of sync is Kafka's ISR rule (`replica.lag.time.max.ms`): a follower is in sync
    /// while it keeps reaching the log end this leader had when it last caught up. Each time
    /// it answers a message of ours with its matched offset at that target, it was caught up
    /// when we sent that message, and the target moves to the current log end; so a follower
    /// that keeps up under steady load, always a round trip behind, stays in sync (as does an
    /// idle one answering heartbeats), and one that falls further behind or stops answering
    /// (a slow disk, a lost link, a dead node) is out of sync `lag_time_max_ms` after it last
    /// caught up. A new leader starts every follower as caught up.
    fn publish_followers(&mut self, status: &ReplicaStatus) {
        let leading = status.role == Role::Leader;
        let log_end = status.log_end;
        let now = self.clock.now();
        self.leading_since = match self.leading_since {
            Some((epoch, since)) if leading && epoch == status.epoch => Some((epoch, since)),
            _ if leading => Some((status.epoch, now)),
            _ => None,
        };
        for (index, follower) in self.shared.followers.iter().enumerate() {
            let progress = self
                .replica
                .follower_progress()
                .find(|(peer, _, _)| *peer == follower.node);
            let matched = progress.map(|(_, matched, _)| matched);
            follower
                .matched
                .store(matched.map_or(0, |offset| offset.0 + 1), Ordering::Relaxed);
            let sync = &mut self.follower_sync[index];
            if !leading {
                *sync = None;
                follower.lagging.store(false, Ordering::Relaxed);
                continue;
            }
            let (target, caught_up_at) = sync.get_or_insert((log_end, now));
            if let Some((_, matched, Some(answered_sent_at))) = progress {
                if matched >= *target {
                    *target = log_end;
                    *caught_up_at = (*caught_up_at).max(answered_sent_at);
                }
            }
            let lagging = now.since(*caught_up_at) > self.lag_time_max_ms;
            follower.lagging.store(lagging, Ordering::Relaxed);
        }
    }

    /// Raises the log's committed watermark to what is now committed and durable here, so a
    /// later open can tell a log that came back shorter (see [`inspect_log`]). The watermark
    /// file is rewritten by the flush after a change; when no flush of ours is outstanding to
    /// carry it (an idle partition after its last commit), one is asked for.
    fn record_watermark(&mut self, status: &ReplicaStatus) {
        let committed_end = status.high_watermark.min(status.durable_end);
        if committed_end <= self.watermark_recorded || self.corrupted.is_some() {
            return;
        }
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if let Err(error) = log.raise_committed_watermark(committed_end) {
            tracing::warn!(partition = %self.log_name, %error, "cannot record the committed watermark");
            return;
        }
        self.watermark_recorded = committed_end;
        if self.flushes_requested == self.flushes_fed {
            // Fire and forget: a full queue means flushes are on their way anyway, and a failed
            // flush is reported by the next one that carries an append or a promise.
            drop(self.committer.try_request());
        }
    }

    /// Runs retention below the high watermark, then tells the replica its new log start
    /// (lib.rs contract), so that it never asks storage for offsets that are gone: before,
    /// a leader kept reading below the start for a follower behind it, hundreds of refused
    /// reads a second.
    fn apply_retention(&mut self, ctx: &mut Context<Self>) {
        if self.retention.max_age_ms.is_none() && self.retention.max_bytes.is_none() {
            return;
        }
        // Recovery replays the headers written after the producer snapshot: retention must
        // not remove them first, so the snapshot is brought up to the log end before.
        if let Err(error) = self.snapshot_producers(true) {
            tracing::warn!(partition = %self.log_name, %error, "producer snapshot not written; retention waits");
            return;
        }
        let keep_from = self.replica.status().high_watermark;
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let before = log.log_start();
        match log.apply_retention(self.retention, wall_clock_ms(), keep_from) {
            Ok(log_start) => {
                tracing::trace!(partition = %self.log_name, %log_start, "retention applied");
                if log_start > before {
                    self.run(ctx, Input::LogStartMoved { log_start });
                }
            }
            Err(error) => {
                tracing::warn!(partition = %self.log_name, %error, "retention failed");
            }
        }
        self.publish_status(true);
    }

    /// Hands the decisions whose markers are now committed (below `high_watermark`) to the
    /// compactor, merged into one. Every replica does this for the markers in its own log,
    /// so each applies what its leader decided, and only once it is committed.
    fn apply_committed_decisions(&mut self, high_watermark: Offset) {
        let mut ready = self.decision_ready.take();
        self.decisions_pending.retain(|(offset, decision)| {
            if *offset < high_watermark {
                ready = Some(ready.map_or(*decision, |ready| ready.merge(*decision)));
                false
            } else {
                true
            }
        });
        let Some(decision) = ready else {
            return;
        };
        let log = match self.store.open_log(&self.log_name) {
            Ok(log) => log,
            Err(error) => {
                tracing::warn!(partition = %self.log_name, %error, "compaction not started");
                self.decision_ready = Some(decision);
                return;
            }
        };
        let job = CompactionJob {
            log_name: self.log_name.clone(),
            log,
            decision,
        };
        if self.compactor.submit(job).is_err() {
            // The compactor is busy with other partitions: try again at the next commit.
            self.decision_ready = Some(decision);
        }
    }

    /// While leading a compacted topic: decides a new compaction when `segment.bytes` of
    /// records arrived since the last decision, or a tombstone it kept may have expired since
    /// (see `last_decision`), and
    /// replicates it as a marker batch. The decision covers the committed log, less what is
    /// younger than `min.compaction.lag.ms`; its tombstone cutoff is now less
    /// `delete.retention.ms`, never below the previous decision's.
    fn decide_compaction(&mut self, ctx: &mut Context<Self>) {
        let Some(settings) = self.compaction else {
            return;
        };
        let status = self.replica.status();
        if status.role != Role::Leader || self.log.is_none() {
            self.last_decision = None;
            return;
        }
        if !self.expiry_clock.is_anchored() {
            // Started (or restarted) since the last record: anchor at the newest one held.
            if let Some(timestamp_ms) = self
                .log
                .as_ref()
                .and_then(|log| newest_record_timestamp(log.as_ref(), status.high_watermark))
            {
                self.expiry_clock
                    .observe(timestamp_ms, wall_clock_ms(), Instant::now());
            }
        }
        let now_ms = self.expiry_clock.now_ms(wall_clock_ms(), Instant::now());
        let due = match self.last_decision {
            None => self.bytes_since_decision > 0 || status.high_watermark > status.log_start,
            Some((_, decided_ms, expiry_pending)) => {
                self.bytes_since_decision >= settings.segment_bytes
                    || (expiry_pending
                        && now_ms.saturating_sub(decided_ms) >= settings.delete_retention_ms as i64)
            }
        };
        if !due {
            return;
        }
        let high_watermark = status.high_watermark;
        let lag_start_ms = now_ms.saturating_sub(settings.min_lag_ms as i64);
        let log = self.log.as_ref().expect("checked above");
        let below = match log.offset_for_timestamp(lag_start_ms, high_watermark) {
            Ok(Some((offset, _))) => offset,
            Ok(None) => high_watermark,
            Err(error) => {
                tracing::warn!(partition = %self.log_name, %error, "no compaction decided");
                return;
            }
        };
        let mut decision = CompactionDecision {
            below: below.min(high_watermark),
            tombstone_cutoff_ms: now_ms.saturating_sub(settings.delete_retention_ms as i64),
        };
        if let Some((previous, _, _)) = self.last_decision {
            decision = decision.merge(previous);
        }
        if decision.below == Offset::ZERO {
            return;
        }
        self.last_decision = Some((decision, now_ms, self.bytes_since_decision > 0));
        self.bytes_since_decision = 0;
        let (reply, _ignored) = oneshot::channel();
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.pending.insert(request, reply);
        tracing::debug!(partition = %self.log_name, below = %decision.below, "compaction decided");
        self.run(
            ctx,
            Input::Produce {
                request,
                batch: decision.marker(now_ms),
                acks: Acks::All,
            },
        );
    }

    fn gone(&self) -> ApiError {
        self.stopped_with
            .clone()
            .unwrap_or_else(|| self.shared.not_leader())
    }
}

/// Batches read back from the high watermark looking for the newest one with records (compaction
/// markers sit between them); past this, the expiry clock starts from the wall clock.
const NEWEST_RECORD_READ_BACK_MAX: usize = 16;

/// The newest timestamp of the last batch with records below `high_watermark`, read back over
/// at most [`NEWEST_RECORD_READ_BACK_MAX`] batches; `None` when there is none (or a read fails).
fn newest_record_timestamp<L: PartitionLog + ?Sized>(
    log: &L,
    high_watermark: Offset,
) -> Option<i64> {
    let mut until = high_watermark;
    for _ in 0..NEWEST_RECORD_READ_BACK_MAX {
        if until <= log.log_start() || until == Offset::ZERO {
            return None;
        }
        let batches = log.read(Offset(until.0 - 1), until, 1).ok()?;
        let batch = batches.first()?;
        if !batch.header().is_control() {
            return Some(batch.header().max_timestamp_ms);
        }
        until = batch.base_offset();
    }
    None
}

/// A validated, unstamped batch for this partition.
pub struct Produce {
    pub batch: RecordBatch,
    pub acks: Acks,
    pub reply: oneshot::Sender<ProduceReply>,
}

impl Message for Produce {
    type Result = ();
}

impl<S: LogStore> Handler<Produce> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, message: Produce, ctx: &mut Context<Self>) {
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        if let Some(refusal) = self.corrupted_error() {
            let _ = message.reply.send(Err(refusal));
            return;
        }
        if self.log.is_none() {
            let _ = message.reply.send(Err(self.gone()));
            return;
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.pending.insert(request, message.reply);
        self.run(
            ctx,
            Input::Produce {
                request,
                batch: message.batch,
                acks: message.acks,
            },
        );
    }
}

/// A message from another replica of this partition.
pub struct PeerInput {
    pub from: NodeId,
    pub message: PeerMessage,
}

impl Message for PeerInput {
    type Result = ();
}

impl<S: LogStore> Handler<PeerInput> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, message: PeerInput, ctx: &mut Context<Self>) {
        if let PeerMessage::Append { commit, .. } = &message.message {
            self.shared
                .commit_heard
                .fetch_max(commit.0.saturating_add(1), Ordering::AcqRel);
        }
        self.run(
            ctx,
            Input::Peer {
                from: message.from,
                message: message.message,
            },
        );
    }
}

pub struct LeaderSuspected;

impl Message for LeaderSuspected {
    type Result = ();
}

impl<S: LogStore> Handler<LeaderSuspected> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, _message: LeaderSuspected, ctx: &mut Context<Self>) {
        self.run(ctx, Input::LeaderSuspected);
    }
}

/// The topic's retention changed (`topic alter`).
pub struct SetRetention(RetentionPolicy, Option<CompactionSettings>);

impl Message for SetRetention {
    type Result = ();
}

impl<S: LogStore> Handler<SetRetention> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, message: SetRetention, _ctx: &mut Context<Self>) {
        self.retention = message.0;
        self.compaction = message.1;
    }
}

/// Committed batches and the bounds they were read against.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub batches: Vec<RecordBatch>,
    pub log_start: Offset,
    pub high_watermark: Offset,
}

pub struct Read {
    pub from: Offset,
    pub max_bytes: usize,
    /// Serve on any role (applying `__meta` locally); otherwise only the leader serves.
    pub any_role: bool,
}

impl Message for Read {
    type Result = Result<ReadResult, ApiError>;
}

/// Whether a read may start at `from`: at or above the log start and at most the log end.
/// Above the high watermark but within the log is not out of range, only not readable yet: a
/// newly elected leader learns the high watermark only once it commits, so for a moment it
/// lags what the previous leader told consumers. Answering `OffsetOutOfRange` there sent
/// consumers back to their reset policy (found by a chaos campaign, `cairn-chaos run --seed 1`:
/// a reader re-read its partition from the start after a failover).
fn check_read_offset(
    from: Offset,
    log_start: Offset,
    high_watermark: Offset,
    log_end: Offset,
) -> Result<(), ApiError> {
    if from < log_start || from > high_watermark.max(log_end) {
        return Err(ApiError::OffsetOutOfRange {
            requested: from,
            log_start,
            high_watermark,
        });
    }
    Ok(())
}

impl<S: LogStore> PartitionActor<S> {
    /// The refusal of a replica that lost committed data nobody can restore.
    fn corrupted_error(&self) -> Option<ApiError> {
        self.corrupted.map(|offset| ApiError::StorageCorrupted {
            partition: self.log_name.clone(),
            offset,
        })
    }
}

fn storage_error(error: StorageError) -> ApiError {
    match error {
        StorageError::Corrupt { offset, source } => ApiError::CorruptBatch {
            reason: format!("stored batch at offset {offset}: {source}"),
        },
        other => ApiError::Storage {
            reason: other.to_string(),
        },
    }
}

impl<S: LogStore> Handler<Read> for PartitionActor<S> {
    type Result = Result<ReadResult, ApiError>;

    fn handle(&mut self, message: Read, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(refusal) = self.corrupted_error() {
            return Err(refusal);
        }
        let gone = self.gone();
        let Some(log) = self.log.as_ref() else {
            return Err(gone);
        };
        let status = self.replica.status();
        // A replica whose storage failed still serves what it knew to be committed while no
        // other leader is known, through its rebuilds too (a rebuilt replica knows no high
        // watermark until it commits again): with a full disk, consumers keep reading. DESIGN
        // 5.7 lets a deposed leader serve a committed prefix, and committed data is never cut.
        let fallback = self
            .committed_while_failed
            .filter(|_| status.role != Role::Leader && status.leader.is_none());
        if !message.any_role && status.role != Role::Leader && fallback.is_none() {
            return Err(ApiError::NotLeader {
                leader_hint: status.leader,
                epoch: status.epoch,
            });
        }
        let log_start = log.log_start();
        let high_watermark = fallback
            .map_or(status.high_watermark, |fallback| {
                fallback.max(status.high_watermark)
            })
            .min(log.log_end());
        check_read_offset(message.from, log_start, high_watermark, log.log_end())?;
        let batches = if message.from >= high_watermark {
            Vec::new()
        } else {
            log.read(message.from, high_watermark, message.max_bytes)
                .map_err(storage_error)?
        };
        Ok(ReadResult {
            batches,
            log_start,
            high_watermark,
        })
    }
}

pub struct OffsetForTimestamp {
    pub timestamp_ms: i64,
}

impl Message for OffsetForTimestamp {
    type Result = Result<Option<(Offset, i64)>, ApiError>;
}

impl<S: LogStore> Handler<OffsetForTimestamp> for PartitionActor<S> {
    type Result = Result<Option<(Offset, i64)>, ApiError>;

    fn handle(&mut self, message: OffsetForTimestamp, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(refusal) = self.corrupted_error() {
            return Err(refusal);
        }
        let gone = self.gone();
        let Some(log) = self.log.as_ref() else {
            return Err(gone);
        };
        let status = self.replica.status();
        if status.role != Role::Leader {
            return Err(ApiError::NotLeader {
                leader_hint: status.leader,
                epoch: status.epoch,
            });
        }
        log.offset_for_timestamp(message.timestamp_ms, status.high_watermark)
            .map_err(storage_error)
    }
}

/// A leader's epoch history (each epoch with the offset its first batch, the epoch marker,
/// took; oldest first, trimmed at the log start by retention), its current epoch and its
/// log end, as one step of the actor saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochHistory {
    pub epoch: Epoch,
    pub history: Vec<(Epoch, Offset)>,
    pub log_end: Offset,
}

pub struct ReadEpochHistory;

impl Message for ReadEpochHistory {
    type Result = Result<EpochHistory, ApiError>;
}

impl<S: LogStore> Handler<ReadEpochHistory> for PartitionActor<S> {
    type Result = Result<EpochHistory, ApiError>;

    fn handle(&mut self, _message: ReadEpochHistory, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(refusal) = self.corrupted_error() {
            return Err(refusal);
        }
        if self.log.is_none() {
            return Err(self.gone());
        }
        let status = self.replica.status();
        if status.role != Role::Leader {
            return Err(ApiError::NotLeader {
                leader_hint: status.leader,
                epoch: status.epoch,
            });
        }
        Ok(EpochHistory {
            epoch: status.epoch,
            history: self.replica.epoch_history().to_vec(),
            log_end: status.log_end,
        })
    }
}

pub struct Stop {
    pub reason: ApiError,
    pub remove_log: bool,
}

impl Message for Stop {
    type Result = ();
}

impl<S: LogStore> Handler<Stop> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, message: Stop, ctx: &mut Context<Self>) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(message.reason.clone()));
        }
        self.stopped_with = Some(message.reason);
        if !message.remove_log {
            // A clean stop: the restart replays no headers at all.
            if let Err(error) = self.snapshot_producers(true) {
                tracing::warn!(partition = %self.log_name, %error, "producer snapshot not written");
            }
        }
        // Let go of the log before removing it: storage may refuse to drop an open tree.
        drop(self.log.take());
        if message.remove_log {
            if let Err(error) = self.store.remove_log(&self.log_name) {
                tracing::warn!(partition = %self.log_name, %error, "could not remove the log");
            }
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::RecordBatchBuilder;
    use cairn_protocol::Record;
    use cairn_storage::MemoryStore;

    fn batch(value: &'static [u8]) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1);
        builder.push(&Record::new(bytes::Bytes::from_static(value)));
        builder.build()
    }

    fn start(store: &MemoryStore, mailbox_max: usize) -> PartitionHandle<MemoryStore> {
        start_with(store, mailbox_max, None)
    }

    fn start_with(
        store: &MemoryStore,
        mailbox_max: usize,
        compaction: Option<CompactionSettings>,
    ) -> PartitionHandle<MemoryStore> {
        // The test's own, as a node's: the compactor and the actor count into one.
        let metrics = Arc::new(crate::metrics::NodeMetrics::new());
        let spec = PartitionSpec {
            log_name: "p".to_string(),
            key: ReplicaKey::Partition {
                topic: 1,
                partition: 0,
            },
            node: NodeId(1),
            voters: vec![NodeId(1)],
            store: store.clone(),
            log: store.open_log("p").unwrap(),
            committer: GroupCommitter::start(store.clone()),
            clock: Clock::new(),
            replica_config: cairn_replica::Config::for_tests(),
            tick_ms: 5,
            lag_time_max_ms: 1_000,
            leader_rebalance_ms: 0,
            mailbox_max,
            retention: RetentionPolicy::default(),
            retention_check_ms: if compaction.is_some() { 20 } else { 1000 },
            compaction,
            // The smallest index budget, so that a test with enough keys compacts in passes.
            compactor: Compactor::start(
                0,
                crate::config::COMPACTION_INDEX_BYTES_MIN as usize,
                Arc::clone(&metrics),
                Arc::new(crate::compactor::FlushTimes::new()),
            ),
            peers: crate::peer::PeerTransport::new(
                NodeId(1),
                crate::peer::PeerTransportConfig::with_frame_bytes_max(1 << 20),
            ),
            leadership_changes: Arc::new(LeadershipEvents::new()),
            metrics,
        };
        PartitionHandle::start(spec, &actix::Arbiter::current()).unwrap()
    }

    /// Producer 7's batches in a log, a snapshot of them, then a reset to a leader's log
    /// start above them: read back, producer 7 is unknown (as the running replica made it at
    /// the reset), not known with the snapshot's stale last sequence.
    #[test]
    fn a_producer_snapshot_older_than_the_log_start_is_ignored() {
        let store = MemoryStore::new();
        let mut log = store.open_log("p").unwrap();
        let idempotent = |sequence| {
            let mut builder = RecordBatchBuilder::new(1).producer(7, 0, sequence);
            builder.push(&Record::new(bytes::Bytes::from_static(b"v")));
            builder.build()
        };
        let mut producers = Producers::default();
        for sequence in 0..3 {
            let batch = idempotent(sequence).stamped(log.log_end(), Epoch(1));
            log.append(&batch).unwrap();
            producers.record(batch.header());
        }
        let snapshot_at = log.log_end();
        log.put_value(
            PRODUCER_SNAPSHOT_KEY,
            &producers.encode_snapshot(snapshot_at),
        )
        .unwrap();
        let recover = |log: &_| {
            let recovered = Recovered {
                promised_epoch: Epoch(1),
                epoch_history: vec![(Epoch(1), Offset::ZERO)],
                log_start: PartitionLog::log_start(log),
                log_end: PartitionLog::log_end(log),
            };
            let config = cairn_replica::Config::for_tests();
            let (mut replica, _) =
                Replica::new(config, NodeId(1), vec![NodeId(1)], recovered, Millis(0)).unwrap();
            recover_producers("p", &mut replica, log).unwrap();
            replica
                .producers()
                .batches_of(7)
                .map(|(_, batches)| batches.len())
        };
        assert_eq!(recover(&log), Some(3), "the snapshot is read back");
        log.reset_start(Offset(10), Epoch(1)).unwrap();
        assert_eq!(recover(&log), None);
    }

    #[test]
    fn a_read_between_a_lagging_high_watermark_and_the_log_end_is_in_range() {
        // A new leader with high watermark 5 and log end 9, log start 2.
        let check = |from| check_read_offset(Offset(from), Offset(2), Offset(5), Offset(9));
        assert!(check(2).is_ok());
        assert!(check(5).is_ok());
        assert!(check(7).is_ok(), "above the high watermark, within the log");
        assert!(check(9).is_ok());
        assert!(matches!(
            check(10),
            Err(ApiError::OffsetOutOfRange {
                requested: Offset(10),
                log_start: Offset(2),
                high_watermark: Offset(5)
            })
        ));
        assert!(matches!(check(1), Err(ApiError::OffsetOutOfRange { .. })));
    }

    async fn led(handle: &PartitionHandle<MemoryStore>) {
        for _ in 0..400 {
            let snapshot = handle.shared.snapshot();
            if snapshot.role == Role::Leader && snapshot.high_watermark == snapshot.log_end {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no leader: {:?}", handle.shared.snapshot());
    }

    /// A compacted partition's leader decides, replicates the decision as a marker, and once
    /// it is committed the compactor rewrites the log off the actor: a read from the start
    /// then holds the newest value per key (with gaps at the offsets compacted away), and
    /// produces go on meanwhile.
    #[test]
    fn a_compacted_partition_keeps_the_newest_value_per_key() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let settings = CompactionSettings {
                min_lag_ms: 0,
                delete_retention_ms: 0,
                segment_bytes: 1,
            };
            let handle = start_with(&store, 256, Some(settings));
            led(&handle).await;
            let mut model = BTreeMap::new();
            for round in 0..5u32 {
                for key in ["a", "b", "c"] {
                    let value = format!("{key}-{round}");
                    let mut builder = RecordBatchBuilder::new(1);
                    let record = if key == "c" && round == 4 {
                        model.remove(key);
                        Record::tombstone(key)
                    } else {
                        model.insert(key.to_string(), value.clone());
                        Record::new(value).with_key(key)
                    };
                    builder.push(&record);
                    let reply = handle.produce(builder.build(), Acks::All).unwrap();
                    tokio::time::timeout(Duration::from_secs(5), reply)
                        .await
                        .expect("answered")
                        .unwrap()
                        .unwrap();
                }
            }
            let produced_end = handle.shared.high_watermark();
            let mut seen = BTreeMap::new();
            for _ in 0..400 {
                let read = handle.read(Offset::ZERO, 1 << 20, false).await.unwrap();
                seen.clear();
                let mut records = 0;
                for batch in read.batches.iter().filter(|b| !b.header().is_control()) {
                    for record in batch.records() {
                        let record = record.unwrap();
                        records += 1;
                        let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
                        match record.value {
                            Some(value) => {
                                seen.insert(key, String::from_utf8(value.to_vec()).unwrap())
                            }
                            None => seen.remove(&key),
                        };
                    }
                }
                // Compacted through the last produce: one record per live key, the
                // tombstone expired (delete.retention.ms 0).
                if records == model.len() && seen == model {
                    assert!(
                        handle.shared.high_watermark() > produced_end,
                        "a marker was appended"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("not compacted: {seen:?}, model {model:?}");
        });
    }

    /// `min.compaction.lag.ms`: the leader's decision stops below the first record younger
    /// than the lag, so records produced just now are all still there after it decided.
    #[test]
    fn records_younger_than_the_compaction_lag_are_not_compacted() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let settings = CompactionSettings {
                min_lag_ms: 3_600_000,
                delete_retention_ms: 0,
                segment_bytes: 1,
            };
            let handle = start_with(&store, 256, Some(settings));
            led(&handle).await;
            let first = handle.shared.high_watermark();
            for round in 0..3u32 {
                let mut builder = RecordBatchBuilder::new(wall_clock_ms());
                builder.push(&Record::new(format!("v{round}")).with_key("k"));
                let reply = handle.produce(builder.build(), Acks::All).unwrap();
                tokio::time::timeout(Duration::from_secs(5), reply)
                    .await
                    .expect("answered")
                    .unwrap()
                    .unwrap();
            }
            let produced_end = handle.shared.high_watermark();
            for _ in 0..400 {
                let read = handle.read(Offset::ZERO, 1 << 20, false).await.unwrap();
                let decisions: Vec<CompactionDecision> = read
                    .batches
                    .iter()
                    .filter(|batch| batch.base_offset() >= produced_end)
                    .filter_map(CompactionDecision::from_batch)
                    .collect();
                if let Some(decision) = decisions.first() {
                    assert!(
                        decision.below <= first,
                        "{decision:?} reaches young records"
                    );
                    let values = read
                        .batches
                        .iter()
                        .filter(|batch| !batch.header().is_control())
                        .map(|batch| batch.records().count())
                        .sum::<usize>();
                    assert_eq!(values, 3);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the leader never decided");
        });
    }

    /// Regression: actix polls an actor's waiting futures in no particular order, so flush
    /// completions once reached the replica out of order and pipelined produces hung.
    #[test]
    fn pipelined_produces_are_answered_in_order_with_consecutive_offsets() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let handle = start(&store, 256);
            led(&handle).await;
            let first = handle.shared.high_watermark();
            // Below the replica's pending_requests_max (64 in its test config).
            let replies: Vec<_> = (0..60)
                .map(|_| handle.produce(batch(b"x"), Acks::All).unwrap())
                .collect();
            for (index, reply) in replies.into_iter().enumerate() {
                let response = tokio::time::timeout(Duration::from_secs(5), reply)
                    .await
                    .expect("answered")
                    .unwrap()
                    .unwrap();
                assert_eq!(response.base_offset, first.plus(index as u64));
            }
            assert_eq!(handle.shared.high_watermark(), first.plus(60));
            let read = handle.read(first, 1 << 20, false).await.unwrap();
            assert_eq!(read.batches.len(), 60);
            let snapshot = handle.shared.snapshot();
            assert_eq!(snapshot.log_end, first.plus(60));
            assert_eq!(snapshot.leader, Some(NodeId(1)));
        });
    }

    /// Regression (issue 14): a store that recovered an older state served the shorter log
    /// and reused its offsets. The only replica must refuse instead, with a typed error.
    #[test]
    fn the_only_replica_that_lost_acknowledged_records_refuses_instead_of_reusing_offsets() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let handle = start(&store, 256);
            led(&handle).await;
            let first = handle.shared.high_watermark();
            for _ in 0..5 {
                let reply = handle.produce(batch(b"x"), Acks::All).unwrap();
                reply.await.unwrap().unwrap();
            }
            let acknowledged_end = first.plus(5);
            handle.stop(ApiError::ShuttingDown, false).await;
            // Flushed, then the store comes back without the last three records.
            store.flush().unwrap();
            store.lose_flushed_suffix("p", first.plus(2));
            let handle = start(&store, 256);
            let snapshot = handle.shared.snapshot();
            assert_eq!(
                snapshot.health,
                LogHealth::Corrupted {
                    offset: first.plus(2)
                }
            );
            assert!(snapshot.storage_failure.is_some());
            let refused = handle
                .produce(batch(b"y"), Acks::All)
                .unwrap()
                .await
                .unwrap();
            let expected = ApiError::StorageCorrupted {
                partition: "p".to_string(),
                offset: first.plus(2),
            };
            assert_eq!(refused, Err(expected.clone()));
            assert_eq!(
                handle.read(first, 1 << 20, false).await.unwrap_err(),
                expected
            );
            // Nothing was written: the evidence stays as it was.
            let log = store.open_log("p").unwrap();
            assert_eq!(log.log_end(), first.plus(2));
            assert_eq!(log.watermark().committed_end, acknowledged_end);
        });
    }

    #[test]
    fn a_replicated_log_that_lost_committed_data_is_repaired_and_a_damaged_suffix_cut() {
        let store = MemoryStore::new();
        let mut log = store.open_log("p").unwrap();
        for _ in 0..4 {
            log.append(&batch(b"x").stamped(log.log_end(), Epoch(1)))
                .unwrap();
        }
        log.raise_committed_watermark(Offset(3)).unwrap();
        store.flush().unwrap();
        assert_eq!(
            inspect_log(&mut log, true),
            Inspection {
                health: LogHealth::Healthy,
                truncated: None
            }
        );
        store.lose_flushed_suffix("p", Offset(1));
        let mut log = store.open_log("p").unwrap();
        assert_eq!(
            inspect_log(&mut log, true).health,
            LogHealth::Repairing { until: Offset(3) }
        );
        assert_eq!(
            inspect_log(&mut log, false).health,
            LogHealth::Corrupted { offset: Offset(1) }
        );
    }

    /// Regression: the actor sent a producer its acknowledgement before publishing the status,
    /// so a client on another thread could describe the partition (or ask ListOffsets for its
    /// end) and find the high watermark below the record it had just been acknowledged.
    /// The checker spins on each reply so that it looks within a fraction of a microsecond.
    #[test]
    fn an_acknowledged_record_is_below_the_described_high_watermark_at_once() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let handle = start(&store, 256);
            led(&handle).await;
            let (replies, checker_replies) =
                std::sync::mpsc::channel::<oneshot::Receiver<ProduceReply>>();
            let (checked, mut checker_done) = tokio::sync::mpsc::unbounded_channel();
            let shared = handle.shared.clone();
            let checker = std::thread::spawn(move || {
                let mut behind = Vec::new();
                for mut reply in checker_replies {
                    let response = loop {
                        match reply.try_recv() {
                            Ok(result) => break result.expect("acknowledged"),
                            Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                            Err(error) => panic!("reply lost: {error}"),
                        }
                    };
                    let described = shared.snapshot().high_watermark;
                    if described <= response.base_offset {
                        behind.push((response.base_offset, described));
                    }
                    let _ = checked.send(());
                }
                behind
            });
            for _ in 0..2_000 {
                replies
                    .send(handle.produce(batch(b"x"), Acks::All).unwrap())
                    .unwrap();
                checker_done.recv().await.expect("checker alive");
            }
            drop(replies);
            let behind = checker.join().unwrap();
            assert!(
                behind.is_empty(),
                "{} of 2000 acknowledgements came before the described high watermark covered \
                 them (offset, described): {:?}",
                behind.len(),
                &behind[..behind.len().min(5)]
            );
        });
    }

    /// Regression (issue 14): after a failed flush (a full disk) reads failed too, and writes
    /// never resumed without a restart.
    #[test]
    fn while_flushes_fail_committed_reads_go_on_and_writes_resume_once_they_work() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let handle = start(&store, 256);
            led(&handle).await;
            let first = handle.shared.high_watermark();
            for _ in 0..3 {
                let reply = handle.produce(batch(b"x"), Acks::All).unwrap();
                reply.await.unwrap().unwrap();
            }
            store.fail_flushes(Some("No space left on device (os error 28)"));
            let refused = handle
                .produce(batch(b"full"), Acks::All)
                .unwrap()
                .await
                .unwrap();
            assert!(
                matches!(&refused, Err(error @ ApiError::Storage { .. }) if error.is_retriable()),
                "{refused:?}"
            );
            let read = handle.read(first, 1 << 20, false).await.unwrap();
            assert_eq!(read.batches.len(), 3, "committed records are still served");
            assert_eq!(read.high_watermark, first.plus(3));
            // Space returns: the replica retries by itself and is elected again.
            store.fail_flushes(None);
            let mut resumed = None;
            for _ in 0..200 {
                let reply = handle.produce(batch(b"y"), Acks::All).unwrap();
                if let Ok(Ok(response)) = reply.await {
                    resumed = Some(response.base_offset);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let resumed = resumed.expect("writes resumed without a restart");
            assert!(resumed >= first.plus(3), "offset {resumed} reused");
            assert!(handle.shared.snapshot().storage_failure.is_none());
        });
    }

    #[test]
    fn a_full_mailbox_answers_backpressure_and_a_stopped_actor_refuses() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let handle = start(&store, 2);
            led(&handle).await;
            // This task holds the arbiter thread, so the actor cannot drain its mailbox yet.
            let first = handle.produce(batch(b"a"), Acks::All).unwrap();
            let second = handle.produce(batch(b"b"), Acks::All).unwrap();
            assert!(matches!(
                handle.produce(batch(b"c"), Acks::All),
                Err(ApiError::Backpressure { .. })
            ));
            assert!(first.await.unwrap().is_ok());
            assert!(second.await.unwrap().is_ok());
            let high_watermark = handle.shared.high_watermark();
            assert!(matches!(
                handle.read(high_watermark.plus(1), 1024, false).await,
                Err(ApiError::OffsetOutOfRange { .. })
            ));
            handle.stop(ApiError::ShuttingDown, true).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(handle.produce(batch(b"d"), Acks::All).is_err());
            assert!(store.log_names().unwrap().is_empty(), "the log was removed");
        });
    }

    #[test]
    fn a_stopped_leader_no_longer_advertises_itself() {
        actix::System::new().block_on(async {
            let store = MemoryStore::new();
            let handle = start(&store, 4);
            led(&handle).await;
            assert_eq!(handle.shared.snapshot().role, Role::Leader);
            handle.stop(ApiError::ShuttingDown, false).await;
            for _ in 0..500 {
                if handle.shared.snapshot().leader.is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let snapshot = handle.shared.snapshot();
            assert_ne!(snapshot.role, Role::Leader, "{snapshot:?}");
            assert_eq!(snapshot.leader, None, "{snapshot:?}");
        });
    }
}
