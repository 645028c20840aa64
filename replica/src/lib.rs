//! The per-partition replication and lease state machine (DESIGN section 5). Pure: no I/O,
//! no clock, no randomness. The runtime (a partition actor in `node`, or the simulator) calls
//! [`Replica::step`] with the current monotonic time and one [`Input`], and executes the
//! returned [`Effect`]s in order, feeding completions back as inputs.
//!
//! Map of the modules:
//!
//! - this file: the contract ([`Input`], [`Effect`], [`PeerMessage`], [`Config`]).
//! - `engine`: [`Replica`] itself: pre-vote, elections by lease, the commit rule with the
//!   epoch marker, follower log matching and truncation by epoch history, catch-up reads.
//! - [`producers`]: idempotent producers: per producer id its epoch and last batches, built
//!   from batch headers as they are appended, so a leader drops a retried batch.
//! - [`invariants`]: REP-1..REP-12 with stable ids, asserted after every step (release
//!   builds too) and reusable by the chaos checker.
//! - tests only: `tests` (single voter), `peer_tests` (one peer input, exact effects) and
//!   `simulation` (three and five replicas, 10,000 seeds: network, crash, disk and clock
//!   faults, idempotent retries, invariant checks; `broken-*` features each break one safety
//!   rule so that scripts/sim-broken.sh can show the simulation catching it).
//!
//! A partition with a single voter is the same protocol with a majority of one: the replica
//! promises itself the next epoch, becomes leader, commits its epoch marker, then serves.
//!
//! # What the runtime must honour
//!
//! - **Order.** Run effects in the order returned, one step's effects before the next
//!   step's input. Time passed to `step` never goes backwards (the engine clamps it).
//! - **`Append` / `Durable`.** Append the batches (already stamped, base offset = log end),
//!   then request a flush; when a flush covering it returns, feed exactly one
//!   `Input::Durable { log_end }` per `Append` effect, in emission order (a group commit that
//!   covers several appends feeds several `Durable`s, oldest first). Never report an append
//!   durable before a flush that *started after it* returned.
//! - **`Truncate { from }`.** `PartitionLog::truncate_suffix(from)` before the next effect;
//!   `from` is a batch boundary above the high watermark. No flush of its own is needed.
//! - **`PersistPromise { epoch }`.** Write the promise, flush, then feed
//!   `Input::PromisePersisted { epoch }`. Promises and appends may share flushes.
//! - **`ReadForPeer`.** Read as `PartitionLog::read(from, until, bytes_max)` and feed
//!   `Input::PeerRead` with what came back (possibly nothing); a read error is
//!   `Input::StorageFailed`. Every `ReadForPeer` must be answered one way or the other:
//!   until then no further catch-up read is issued for that follower.
//! - **`Send`.** Best effort: messages may be lost, duplicated, delayed or reordered without
//!   harming safety, but keep one FIFO connection per peer for liveness (a reordered stream
//!   costs resends). Batch sends to one peer across partitions freely; never block the
//!   replica on a send (drop when the peer's queue is full: the leader's heartbeat repairs).
//! - **`Reply`.** Route by [`RequestId`]. A reply that says `Timeout` or `Storage` after the
//!   batch was appended is *indeterminate*: the batch may still commit. `NotLeader` and
//!   `Backpressure` mean nothing was appended.
//! - **`HighWatermark`.** Serve consumers only below it, leader or not (DESIGN 5.7).
//! - **`Tick`** at [`Replica::next_tick_at`] (ask again after every step: any step may move
//!   it). Ticking earlier or more often is harmless; a late tick delays the heartbeat, the
//!   step-down at the end of a lease or the candidacy by as much.
//! - **`ResetLog { log_start, epoch }`.** `PartitionLog::reset_start(log_start, epoch)`
//!   before the next effect: the log is emptied and starts at `log_start`. No flush of its
//!   own is needed (every offset below `log_start` is committed already).
//! - **Retention.** Remove only below the high watermark, and after every pass that moved
//!   the log start feed `Input::LogStartMoved` before any other input, so that no
//!   `ReadForPeer` asks for offsets that are gone.
//! - **Restart.** Rebuild with [`Replica::new`] from what storage holds after a restart
//!   (flushed data only); the replica then grants nothing for `lease_ms`. A log that
//!   retention emptied is a valid recovered state: its epoch history keeps one entry at the
//!   log start (storage moves the covering entry there), so the replica still knows its last
//!   epoch, and its next batch starts at the log start (offsets are never reused).
//! - **`StorageFailed`** leaves the replica inert (no grants, no appends, no candidacy):
//!   rebuild it once storage is usable again.

use cairn_protocol::batch::RecordBatch;
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};
use serde::{Deserialize, Serialize};

mod engine;
pub mod invariants;
pub mod producers;

pub use engine::{CatchUpCounts, EpochRefusal, Replica, EPOCH_JUMP_MAX};

/// Monotonic time in milliseconds from an arbitrary origin chosen by the runtime. Never
/// compared across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, duration_ms: u64) -> Millis {
        Millis(self.0.saturating_add(duration_ms))
    }

    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Identifies one produce request so the runtime can route the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Timing and limits of one replica. Validated by [`Config::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How long a lease grant binds the granter (DESIGN 5.3).
    pub lease_ms: u64,
    /// The leader renews its lease (heartbeat or append) this often: its heartbeats fall on
    /// the multiples of this on its clock, so a node's leaders heartbeat together.
    pub heartbeat_ms: u64,
    /// A follower that has heard nothing from a valid leader for this long starts a candidacy
    /// (plus a jitter of up to half of it, derived from the node id and the number of
    /// elections it started: deterministic, no randomness inside). Must exceed `lease_ms`.
    pub election_timeout_ms: u64,
    /// Upper bound of the rate difference between two nodes' monotonic clocks, in parts per
    /// million; the leader shortens its own view of the lease by this much.
    pub clock_drift_max_ppm: u64,
    /// Produce requests appended but not yet answered, per partition. Past it, produce is
    /// refused with `Backpressure` (the producer's retry absorbs it).
    pub pending_requests_max: usize,
    /// Bytes of batches one `Append` peer message carries at most, each batch counted with
    /// [`APPEND_BATCH_FRAMING_BYTES`] for its encoding ([`append_wire_bytes`]).
    pub append_message_bytes_max: usize,
    /// Bytes of its newest batches a leader keeps in memory for followers that have not
    /// acknowledged them yet (a lagging follower is caught up from there without reading
    /// the log). 0 turns it off. Memory: up to this much per partition led, reached only
    /// while some follower is behind or down.
    pub tail_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_ms: 2_000,
            heartbeat_ms: 300,
            election_timeout_ms: 2_500,
            clock_drift_max_ppm: 50_000,
            pending_requests_max: 4_096,
            append_message_bytes_max: 1 << 20,
            tail_bytes_max: 2 << 20,
        }
    }
}

/// What one batch adds to an `Append` peer message besides its own bytes: the length header
/// of its byte string (at most 5 bytes in MessagePack) and slack. Counted against
/// `append_message_bytes_max`, so that a message cut at that size plus its fixed envelope
/// fits the peer frame the node's config sizes for it, however many small batches it holds.
pub const APPEND_BATCH_FRAMING_BYTES: usize = 8;

/// The bytes `batch` counts for in an `Append` message (see [`APPEND_BATCH_FRAMING_BYTES`]).
pub fn append_wire_bytes(batch: &RecordBatch) -> usize {
    batch.size_bytes() + APPEND_BATCH_FRAMING_BYTES
}

/// Largest replica set one partition may have. Majorities are computed by sorting per-voter
/// progress, so the bound keeps every step cheap.
pub const VOTERS_MAX: usize = 15;

impl Config {
    /// Small timings for tests and simulations: every rule holds, and timeouts are reached in
    /// a few hundred simulated milliseconds.
    pub fn for_tests() -> Config {
        Config {
            lease_ms: 200,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            clock_drift_max_ppm: 50_000,
            pending_requests_max: 64,
            append_message_bytes_max: 64 * 1024,
            tail_bytes_max: 256 * 1024,
        }
    }

    /// The lease the leader may rely on: `lease_ms * (1 - drift)` (DESIGN 5.3).
    pub fn lease_trusted_ms(&self) -> u64 {
        let kept_ppm = 1_000_000u128.saturating_sub(u128::from(self.clock_drift_max_ppm));
        (u128::from(self.lease_ms) * kept_ppm / 1_000_000) as u64
    }

    /// Checks every named rule; the first broken one is returned with the reason it exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rules: [(&'static str, bool, &'static str); 8] = [
            (
                "lease_ms > 0",
                self.lease_ms > 0,
                "a lease of zero would let two leaders act at once",
            ),
            (
                "heartbeat_ms > 0",
                self.heartbeat_ms > 0,
                "a leader that never heartbeats loses its lease while idle",
            ),
            (
                "heartbeat_ms * 3 <= lease_ms",
                u128::from(self.heartbeat_ms) * 3 <= u128::from(self.lease_ms),
                "a leader must survive two lost heartbeats in a row without losing its lease",
            ),
            (
                "election_timeout_ms > lease_ms",
                self.election_timeout_ms > self.lease_ms,
                "a follower must not start a candidacy while the lease it granted may still \
                 bind it, or it would disturb a live leader for nothing",
            ),
            (
                "clock_drift_max_ppm < 1_000_000",
                self.clock_drift_max_ppm < 1_000_000,
                "the leader shortens its lease by the drift; at 100% nothing would be left",
            ),
            (
                "lease_trusted_ms > heartbeat_ms",
                self.lease_trusted_ms() > self.heartbeat_ms,
                "after the drift correction a lease must still outlast one heartbeat period",
            ),
            (
                "pending_requests_max > 0",
                self.pending_requests_max > 0,
                "a leader that may hold no pending request can never answer acks=all",
            ),
            (
                "append_message_bytes_max > 0",
                self.append_message_bytes_max > 0,
                "an append message must be able to carry at least one batch",
            ),
        ];
        for (rule, holds, why) in rules {
            if !holds {
                return Err(ConfigError { rule, why });
            }
        }
        Ok(())
    }
}

/// A named timing rule that a configuration broke, with the reason it exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica config rule {rule} broken: {why}")]
pub struct ConfigError {
    pub rule: &'static str,
    pub why: &'static str,
}

/// What this replica is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

/// What the replica knows about itself when it starts: read back from storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub promised_epoch: Epoch,
    /// (epoch, first offset of that epoch), oldest first. Every start lies below the log
    /// end, except that an entry may start at the log start of an empty log (retention
    /// emptied it, and the entry says which epoch the log ended with).
    pub epoch_history: Vec<(Epoch, Offset)>,
    pub log_start: Offset,
    /// Everything below this is on disk (a reopened store holds only flushed data).
    pub log_end: Offset,
}

/// Everything that can happen to a replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed. The runtime ticks when [`Replica::next_tick_at`] says.
    Tick,
    /// A client's batch (validated, not yet stamped) for this partition.
    Produce {
        request: RequestId,
        batch: RecordBatch,
        acks: Acks,
    },
    /// A flush that covers every append up to `log_end` returned. Exactly one `Durable`
    /// answers each [`Effect::Append`], in the order the appends were emitted, carrying the
    /// log end right after that append (a group commit may resolve several at once: feed one
    /// `Durable` per `Append`, oldest first). The engine relies on the one-to-one pairing to
    /// tell a flush that began before a [`Effect::Truncate`] from one that began after it.
    Durable { log_end: Offset },
    /// The promise of `epoch` was written and flushed.
    PromisePersisted { epoch: Epoch },
    /// A message from another replica of this partition.
    Peer { from: NodeId, message: PeerMessage },
    /// Gossip says the node that leads is gone. A hint only (DESIGN 5.8).
    LeaderSuspected,
    /// The runtime wants another replica to lead (preferred-leader rebalancing): a leader
    /// steps down exactly as when its lease lapses (pending produce requests are answered
    /// with the indeterminate `Timeout`; the followers keep the grants they gave until those
    /// expire), then stands for no election before `now + hold_ms`, so that the replica it
    /// resigned for can win. Ignored by a follower or candidate. Liveness only: no safety
    /// rule depends on when, or whether, a leader resigns.
    Resign { hold_ms: u64 },
    /// Storage failed; the replica stops acknowledging and steps down.
    StorageFailed { reason: String },
    /// The answer to [`Effect::ReadForPeer`]: the batches read (possibly none), in order.
    /// A read that fails is reported as `StorageFailed` instead.
    PeerRead {
        to: NodeId,
        from: Offset,
        batches: Vec<RecordBatch>,
    },
    /// Retention removed every batch below `log_start` (the runtime's
    /// `PartitionLog::apply_retention` answer). Ignored unless it moves the start forward
    /// and stays within the high watermark (retention never removes uncommitted data).
    LogStartMoved { log_start: Offset },
}

/// A leader's log start and the epoch its history gives there (the epoch of the batch at the
/// log start, or the last epoch of an empty log), sent to a follower that must start its log
/// there (see [`PeerMessage::Append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStart {
    pub offset: Offset,
    pub epoch: Epoch,
}

/// Replica-to-replica messages of one partition.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMessage {
    LeaseRequest {
        epoch: Epoch,
        last_log_epoch: Epoch,
        log_end: Offset,
    },
    LeaseResponse {
        epoch: Epoch,
        granted: bool,
        /// The responder's promise, so a rejected candidate learns the epoch to beat.
        promised_epoch: Epoch,
    },
    /// Pre-vote (Raft's PreVote, applied to leases): "would you grant me `epoch`?". Answered
    /// from the rules of DESIGN 5.2 without promising or changing anything, so that a replica
    /// cut off from the others does not raise its promise, come back and depose a healthy
    /// leader. A replica starts a real candidacy only after a majority (itself included)
    /// would grant.
    LeaseProbe {
        epoch: Epoch,
        last_log_epoch: Epoch,
        log_end: Offset,
    },
    LeaseProbeResponse {
        epoch: Epoch,
        /// Whether a `LeaseRequest` for `epoch` would be granted now.
        granted: bool,
        promised_epoch: Epoch,
    },
    /// Batches of the leader's log, or none as a heartbeat.
    Append {
        epoch: Epoch,
        /// The log end the batches continue: the follower must hold exactly the leader's
        /// offsets below `prev_offset` (its first batch starts here), and `prev_epoch` is the
        /// epoch of the batch holding `prev_offset - 1` (0 when `prev_offset` is 0).
        prev_offset: Offset,
        prev_epoch: Epoch,
        batches: Vec<RecordBatch>,
        /// The leader's high watermark.
        commit: Offset,
        /// Leader's send time, echoed in the response (leader-local clock only).
        sent_at: Millis,
        /// Set on an append at the leader's log start once retention moved it above 0
        /// (`prev_offset` is then that start, and `prev_epoch` unknown to the leader: the
        /// batch before is gone). The follower proves its log equal below it (its own log
        /// start or high watermark reaches it, or its batch at or before it has the epoch
        /// given); else it empties its log and starts it there (Kafka's
        /// truncate-fully-and-start-at), then takes the batches. Nothing it drops is needed:
        /// below the leader's log start everything is committed and expired, and a suffix
        /// whose first batch differs from the leader's is uncommitted.
        log_start: Option<LogStart>,
    },
    AppendResponse {
        epoch: Epoch,
        sent_at: Millis,
        result: AppendResult,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppendResult {
    /// The follower's log matches up to `log_end`, of which `durable_end` is flushed.
    Ok {
        log_end: Offset,
        durable_end: Offset,
    },
    /// The follower's log does not match at `prev_offset`: it answers with its newest epoch
    /// not above the leader's `prev_epoch` that has offsets below `prev_offset`, and where that
    /// epoch ends in its log (capped at `prev_offset`), so the leader can find the divergence
    /// (KIP-101/279). `epoch` 0 and `end_offset` 0 mean "start from the beginning".
    Diverged { epoch: Epoch, end_offset: Offset },
    /// The follower promised a higher epoch.
    StaleEpoch { promised_epoch: Epoch },
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write the promise of `epoch`, flush, then feed `Input::PromisePersisted`.
    PersistPromise { epoch: Epoch },
    /// Append these stamped batches in order, then obtain a flush and feed
    /// `Input::Durable { log_end }` (exactly one per `Append`, in order). Never empty.
    Append { batches: Vec<RecordBatch> },
    /// Remove the log suffix from `from` (an uncommitted suffix; `from` is a batch boundary)
    /// with `PartitionLog::truncate_suffix` before running the next effect. No flush of its
    /// own is needed: the next append's flush covers it.
    Truncate { from: Offset },
    /// Empty the log and start it at `log_start`, with the epoch history
    /// `[(epoch, log_start)]` (`PartitionLog::reset_start`), before running the next effect.
    /// A follower whose leader no longer holds what it lacks. No flush of its own.
    ResetLog { log_start: Offset, epoch: Epoch },
    /// Send to another replica of this partition.
    Send { to: NodeId, message: PeerMessage },
    /// Answer a produce request.
    Reply {
        request: RequestId,
        result: Result<ProduceResponse, ApiError>,
    },
    /// The high watermark moved: wake long polls waiting for new data.
    HighWatermark { offset: Offset },
    /// Role, epoch or known leader changed: update metadata hints.
    RoleChanged {
        role: Role,
        epoch: Epoch,
        leader: Option<NodeId>,
    },
    /// Leader only: read whole batches of the local log holding offsets in `[from, until)`,
    /// starting with the batch that contains `from`, at most `bytes_max` bytes but at least
    /// one batch (exactly `PartitionLog::read`), and feed `Input::PeerRead { to, from, .. }`.
    /// Used to catch up a follower that lags behind what the leader sends as it appends.
    ReadForPeer {
        to: NodeId,
        from: Offset,
        until: Offset,
        bytes_max: usize,
    },
}

/// A snapshot of a replica's state, for metadata, tests and `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub node: NodeId,
    pub role: Role,
    pub epoch: Epoch,
    pub promised_epoch: Epoch,
    pub leader: Option<NodeId>,
    pub log_start: Offset,
    pub log_end: Offset,
    pub durable_end: Offset,
    pub high_watermark: Offset,
}

#[cfg(test)]
mod peer_tests;
#[cfg(test)]
mod producer_tests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
