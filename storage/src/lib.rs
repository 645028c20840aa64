//! The partition log: batches in offset order, durable only after a flush.
//!
//! Map of the modules:
//!
//! - this file: the [`LogStore`] / [`PartitionLog`] contract every implementation honours.
//! - `sled_store`: the real one. One sled database per node; per log a data tree keyed by base
//!   offset (big-endian u64), so a range scan is a sequential read, a metadata tree (promised
//!   epoch, epoch history, log start offset, size counter, caller values) and a time-index tree.
//! - `memory`: the in-memory twin, with fault hooks ([`memory::MemoryStore::crash`] loses every
//!   unflushed write, [`memory::MemoryStore::crash_torn`] keeps a prefix of them), for
//!   simulations.
//! - `group_commit`: one flusher thread; a flush covers every append that arrived while the
//!   previous flush ran, across partitions; a bounded request queue gives backpressure.
//! - `watermark`: per log, the committed end and promise a replica recorded, kept outside the
//!   log's data so that a store that recovers an older state (sled drops everything after a
//!   damaged segment) is caught instead of serving a shorter log and reusing its offsets.
//! - `core` (private): the contract's rules written once over three ordered maps (data, meta,
//!   time index), including crash repair on open; both implementations are thin backends.
//! - `tests/conformance.rs`: the one test suite both implementations must pass;
//!   `tests/crash.rs` kills a real writer process with SIGKILL and checks what survives;
//!   `tests/torn_recovery.rs` recovers from every torn prefix of unflushed writes.
//!
//! Data flow: a partition actor validates and stamps a batch, `append`s it (buffered, not yet
//! durable), asks the [`group_commit::GroupCommitter`] for a flush ticket, and when the ticket
//! resolves reports "durable up to log end" to its replica state machine.

pub mod group_commit;
pub mod memory;
pub mod sled_store;
pub mod watermark;

mod core;

pub use group_commit::{
    FlushSite, FlushTicket, GroupCommitConfig, GroupCommitStats, GroupCommitter,
};
pub use memory::{MemoryLog, MemoryStore};
pub use sled_store::{Durability, SledConfig, SledLog, SledStore, SyncCounters};
pub use watermark::Watermark;

use bytes::Bytes;
use cairn_protocol::batch::{BatchError, RecordBatch};
use cairn_protocol::{Epoch, Offset};

/// What can go wrong in storage. Each variant is a typed, operational failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A batch failed its checksum or framing, on write or on read.
    #[error("corrupt batch at offset {offset}: {source}")]
    Corrupt { offset: Offset, source: BatchError },
    /// `append` got a batch whose base offset is not the log end.
    #[error("batch base offset {base_offset} does not continue the log end {log_end}")]
    NotContiguous {
        base_offset: Offset,
        log_end: Offset,
    },
    /// `append` got a batch whose epoch is below the log's last epoch.
    #[error("batch epoch {epoch} is below the log's last epoch {last_epoch}")]
    EpochRegression { epoch: Epoch, last_epoch: Epoch },
    /// `truncate_suffix` was asked to cut inside a batch or below the log start.
    #[error("cannot truncate at offset {offset}: {reason}")]
    BadTruncation {
        offset: Offset,
        reason: &'static str,
    },
    /// A stored batch passed its checksum but disagrees with where it is stored: its stamp
    /// (base offset, epoch, outside the checksum) contradicts its key or the epoch history, or
    /// the stored batches leave a gap. Treated like corruption: nothing is served from it.
    #[error("stored log is inconsistent at offset {offset}: {reason}")]
    Inconsistent {
        offset: Offset,
        reason: &'static str,
    },
    /// `replace_batch` got a batch that is not a compacted version of the stored batch at
    /// its base offset (none stored there, other offsets, epoch or producer stamp, or more
    /// records than the stored one).
    #[error("cannot replace the batch at offset {offset}: {reason}")]
    BadReplacement {
        offset: Offset,
        reason: &'static str,
    },
    /// The group committer's request queue holds `flush_requests_max` requests already.
    #[error("flush request queue is full ({flush_requests_max} waiting)")]
    FlushQueueFull { flush_requests_max: usize },
    /// `raise_committed_watermark` named an offset beyond the log end: the caller's bug, and
    /// recording it would make the next open report a loss that did not happen.
    #[error("committed watermark {committed_end} is beyond the log end {log_end}")]
    WatermarkBeyondLogEnd {
        committed_end: Offset,
        log_end: Offset,
    },
    /// The watermark file (see [`watermark`]) failed its checksum or framing. Not read as
    /// "no watermarks": that would hide exactly the data loss it exists to reveal.
    #[error("the watermark file is damaged: {reason}")]
    WatermarksDamaged { reason: String },
    /// The underlying store failed (I/O, sled), or the log was removed. After this error the
    /// log handle should be dropped and the log reopened: its cached state may be stale.
    #[error("storage I/O failed: {0}")]
    Io(String),
}

/// Retention of one partition log. `None` keeps forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove batches whose newest record is older than `now - max_age_ms`.
    pub max_age_ms: Option<u64>,
    /// Remove the oldest batches while the log holds more than this many bytes.
    pub max_bytes: Option<u64>,
}

/// One entry of the epoch history: `epoch` began at `start_offset` in this log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub start_offset: Offset,
}

/// A node's set of partition logs, sharing one durability domain.
pub trait LogStore: Clone + Send + Sync + 'static {
    type Log: PartitionLog;

    /// Opens the named log, creating it empty if absent. A name is opaque to storage.
    fn open_log(&self, name: &str) -> Result<Self::Log, StorageError>;

    /// Removes the named log and its metadata. Absent logs are fine.
    fn remove_log(&self, name: &str) -> Result<(), StorageError>;

    /// Names of every log present.
    fn log_names(&self) -> Result<Vec<String>, StorageError>;

    /// Blocks until every write issued before this call, on every log, is durable. Callers
    /// on an async thread use a [`group_commit::GroupCommitter`] instead.
    fn flush(&self) -> Result<(), StorageError>;

    /// What the storage engine did so far, for operators (`/metrics`). All zero for an engine
    /// that keeps no such counts.
    fn engine_stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

/// A store engine's housekeeping counters since it was opened in this process (see
/// [`LogStore::engine_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Log segments waiting to be cleaned: their live pages rewritten elsewhere so the
    /// segment can be reused. A backlog that stays high means the background cleaner is
    /// starved, and the log file grows until writes clean again themselves.
    pub cleaning_backlog_segments: u64,
    /// Pages cleaned inside writes, on the append path (the backlog reached its bound).
    pub pages_cleaned_by_writes: u64,
    /// Pages cleaned by the background cleaner, off the append path.
    pub pages_cleaned_in_background: u64,
    /// Syncs made for durability (`storage.durability = fsync`; zero with `flush`).
    pub syncs: SyncCounters,
}

/// One partition replica's log. Methods never panic on bad data: they return
/// [`StorageError`] and change nothing. Handles of one log opened from one store share their
/// state; after [`LogStore::remove_log`] every call on an old handle fails with
/// [`StorageError::Io`].
pub trait PartitionLog: Send + 'static {
    /// First offset still in the log (retention moves it forward; it is persisted).
    fn log_start(&self) -> Offset;

    /// The offset the next appended batch must start at.
    fn log_end(&self) -> Offset;

    /// Appends one stamped batch (base offset == `log_end`, epoch >= last epoch), after
    /// verifying its checksum. Buffered: durable only once a later [`LogStore::flush`] returns.
    /// A batch of a new epoch extends the epoch history. Returns the new log end.
    fn append(&mut self, batch: &RecordBatch) -> Result<Offset, StorageError>;

    /// Replaces the stored batch at `batch`'s base offset with its compacted version (see
    /// `cairn_protocol::compaction`): same base offset, last offset, epoch and producer stamp,
    /// no more records, checksum verified. Nothing else changes (log start and end, epoch
    /// history, time index: the batch's max timestamp is kept). One key's value is swapped,
    /// so a concurrent reader gets the old batch or the new one whole. Durable after a later
    /// flush; a crash before it leaves the old batch, which compacting again rewrites.
    fn replace_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError>;

    /// Whole batches holding offsets in `[from, until)`, in order, starting with the batch that
    /// contains `from`, up to `max_bytes` in total, but always at least one batch when any
    /// qualifies (so a batch larger than `max_bytes` is still delivered). Each batch's checksum
    /// is verified on the way out, and its stamp against its key and the epoch history
    /// ([`StorageError::Inconsistent`]). `until` is clamped to the log end. Offsets below the
    /// log start are simply absent, so the first batch returned may start above `from`:
    /// callers that must tell "retained away" from "present" compare `from` with
    /// [`PartitionLog::log_start`] first, as a Kafka broker answers `OffsetOutOfRange`.
    fn read(
        &self,
        from: Offset,
        until: Offset,
        max_bytes: usize,
    ) -> Result<Vec<RecordBatch>, StorageError>;

    /// [`PartitionLog::read`] for a background reader (the compactor) that must not make the
    /// partition wait: the slow part, scanning the store and reading its blob files, runs
    /// without holding the log's lock, so the partition's appends and its actor's queries of
    /// the log's bounds never wait behind a cold read. What it returns is what `read` returns;
    /// where a writer moved the log meanwhile (retention, a truncation, a reopened store) it
    /// reads again as `read` does. By default it is `read`.
    fn read_detached(
        &self,
        from: Offset,
        until: Offset,
        max_bytes: usize,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        self.read(from, until, max_bytes)
    }

    /// Removes every batch at or above `from`, which must be a batch boundary (or the log
    /// end) and not below the log start; drops epoch-history entries that started at or after
    /// it. `from == log_end` changes nothing. Used only for an uncommitted suffix (DESIGN 5.6).
    /// Offsets stay monotonic: truncating everything leaves `log_end == log_start`.
    fn truncate_suffix(&mut self, from: Offset) -> Result<(), StorageError>;

    /// Empties the log and starts it at `start` (not below the log start), with the epoch
    /// history `[(epoch, start)]` (none when `epoch` is 0): the next append must start at
    /// `start`. For a follower whose leader no longer holds what it lacks (Kafka's
    /// truncate-fully-and-start-at). Durable after a later flush; a crash before it leaves
    /// the old log or a shorter prefix of it, each consistent.
    fn reset_start(&mut self, start: Offset, epoch: Epoch) -> Result<(), StorageError>;

    /// Removes whole batches from the start as the policy says, never at or beyond
    /// `keep_from` (the caller passes the high watermark: nothing uncommitted is removed).
    /// Returns the new log start, which is persisted. Epoch-history entries before the new
    /// start are dropped, the one covering it moves to it (Kafka's truncate-from-start), so
    /// an emptied log still knows its last epoch.
    fn apply_retention(
        &mut self,
        policy: RetentionPolicy,
        now_ms: i64,
        keep_from: Offset,
    ) -> Result<Offset, StorageError>;

    /// Total bytes of the batches held.
    fn size_bytes(&self) -> u64;

    /// The first record with timestamp at or after `timestamp_ms` (its offset and timestamp),
    /// among offsets below `until`; `None` when there is none.
    fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        until: Offset,
    ) -> Result<Option<(Offset, i64)>, StorageError>;

    /// Epoch history, oldest first (Kafka's leader-epoch checkpoint).
    fn epoch_history(&self) -> Vec<EpochStart>;

    /// The epoch of the last batch, or 0 for an empty log.
    fn last_epoch(&self) -> Epoch {
        self.epoch_history()
            .last()
            .map(|entry| entry.epoch)
            .unwrap_or(Epoch::ZERO)
    }

    /// The highest epoch this replica promised (DESIGN 5.1). 0 when never set.
    fn promised_epoch(&self) -> Epoch;

    /// Records a promise. Durable only after a later flush: callers flush before answering.
    /// Storage records what it is given; never lowering it (REP-2) is the replica's rule.
    /// The watermark's promise is raised too, so a store that recovers an older state still
    /// reports (through [`PartitionLog::promised_epoch`]) the highest promise it made.
    fn set_promised_epoch(&mut self, epoch: Epoch) -> Result<(), StorageError>;

    /// This replica's durable watermark ([`watermark`]), as it was when the log was opened
    /// plus what was recorded since. After opening, `log_end() < watermark().committed_end`
    /// means this replica lost committed data (its store recovered an older state): it must
    /// not serve or vote with that log until it has repaired it from its peers.
    fn watermark(&self) -> Watermark;

    /// Raises the recorded committed end (never lowers it). The caller passes only an offset
    /// below which this log is committed and durable. Durable after a later flush.
    fn raise_committed_watermark(&mut self, committed_end: Offset) -> Result<(), StorageError>;

    /// Small named values kept with the log (e.g. producer state), durable after a flush.
    fn get_value(&self, key: &str) -> Result<Option<Bytes>, StorageError>;
    fn put_value(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError>;
}
