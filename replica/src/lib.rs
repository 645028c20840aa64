//! The per-partition replication and lease state machine (DESIGN section 5). Pure: no I/O,
//! no clock, no randomness. The runtime (a partition actor in `node`, or the simulator) calls
//! [`Replica::step`] with the current monotonic time and one [`Input`], and executes the
//! returned [`Effect`]s in order, feeding completions back as inputs.
//!
//! Map of the modules:
//!
//! - this file: the contract ([`Input`], [`Effect`], [`PeerMessage`], [`Config`]).
//! - `engine`: [`Replica`] itself: roles, elections by lease, the commit rule, truncation.
//! - `invariants`: REP-1..REP-5 with stable ids, asserted after every step.
//!
//! A partition with a single voter is the same protocol with a majority of one: the replica
//! promises itself the next epoch, becomes leader, commits its epoch marker, then serves.

use cairn_protocol::batch::RecordBatch;
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};
use serde::{Deserialize, Serialize};

mod engine;
pub mod invariants;

pub use engine::Replica;

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
    /// The leader renews its lease (heartbeat or append) this often.
    pub heartbeat_ms: u64,
    /// A follower that has heard nothing from a valid leader for this long starts a candidacy
    /// (plus `election_jitter_ms` drawn by the runtime). Must exceed `lease_ms`.
    pub election_timeout_ms: u64,
    /// Upper bound of the rate difference between two nodes' monotonic clocks, in parts per
    /// million; the leader shortens its own view of the lease by this much.
    pub clock_drift_max_ppm: u64,
    /// Produce requests appended but not yet answered, per partition. Past it, produce is
    /// refused with `Backpressure` (the producer's retry absorbs it).
    pub pending_requests_max: usize,
    /// Bytes of batches one `Append` peer message carries at most.
    pub append_message_bytes_max: usize,
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
        }
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
    /// (epoch, first offset of that epoch), oldest first.
    pub epoch_history: Vec<(Epoch, Offset)>,
    pub log_start: Offset,
    /// Everything below this is on disk (a reopened store holds only flushed data).
    pub log_end: Offset,
}

/// Everything that can happen to a replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed. The runtime ticks every few tens of milliseconds.
    Tick,
    /// A client's batch (validated, not yet stamped) for this partition.
    Produce {
        request: RequestId,
        batch: RecordBatch,
        acks: Acks,
    },
    /// A flush that covers every append up to `log_end` returned.
    Durable { log_end: Offset },
    /// The promise of `epoch` was written and flushed.
    PromisePersisted { epoch: Epoch },
    /// A message from another replica of this partition.
    Peer { from: NodeId, message: PeerMessage },
    /// Gossip says the node that leads is gone. A hint only (DESIGN 5.8).
    LeaderSuspected,
    /// Storage failed; the replica stops acknowledging and steps down.
    StorageFailed { reason: String },
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
    Append {
        epoch: Epoch,
        /// Offset right before the first batch, and the epoch of the batch holding it.
        prev_offset: Offset,
        prev_epoch: Epoch,
        batches: Vec<RecordBatch>,
        /// The leader's high watermark.
        commit: Offset,
        /// Leader's send time, echoed in the response (leader-local clock only).
        sent_at: Millis,
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
    /// The follower's log does not match at `prev_offset`: it answers with its last epoch
    /// before that offset and where that epoch ends, so the leader can find the divergence.
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
    /// `Input::Durable { log_end }`.
    Append { batches: Vec<RecordBatch> },
    /// Remove the log suffix from `from` (an uncommitted suffix).
    Truncate { from: Offset },
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
