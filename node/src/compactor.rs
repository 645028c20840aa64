//! The node's compactor: one background thread that applies committed compaction decisions
//! to the partition logs this node hosts, one partition at a time, under a bytes-per-second
//! budget.
//!
//! A partition actor never rewrites a batch itself: when a decision marker (see
//! `cairn_protocol::compaction`) becomes committed, it hands a [`CompactionJob`] (a second
//! handle on its log, which shares the log's state, and the decision) to the bounded queue
//! here and goes on serving produces. The worker applies a decision in passes, each over one
//! range of the key space whose index fits `retention.compaction_index_bytes_max` (one pass
//! unless the keys below the decision's offset need more). Each pass reads the log below the
//! decision's offset twice (the key index, then the rewrite) and swaps each changed batch in
//! with `PartitionLog::replace_batch`, one short storage call per batch, so appends (all at
//! the log end, above the decision) and reads (which get either version of a batch whole) go
//! on meanwhile. A rewrite is durable with the next flush any partition asks for; a crash
//! before it, or between passes, leaves old batches, which the next run of the decision (or
//! a later one, a superset) compacts again to the same bytes.

use cairn_protocol::compaction::{compact_batch, CompactionDecision, CompactionError, KeyIndex};
use cairn_protocol::Offset;
use cairn_protocol::RecordBatch;
use cairn_storage::{LogStore, PartitionLog, StorageError};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Jobs waiting for the worker; a partition whose job does not fit retries at its next
/// high watermark change.
pub const COMPACTION_JOBS_MAX: usize = 64;
/// Bytes read from a log per step.
const READ_BYTES_MAX: usize = 1 << 20;
/// Key of the last decision a replica applied in full, in the log's own values.
pub const APPLIED_DECISION_KEY: &str = "compaction";

/// One partition's committed decision, to apply to its log.
pub struct CompactionJob<L> {
    pub log_name: String,
    pub log: L,
    pub decision: CompactionDecision,
}

/// What one job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionOutcome {
    /// Passes over the log, one per range of keys whose index fit the budget.
    pub passes: u32,
    /// Batches below the decision's offset.
    pub batches_read: u64,
    /// Rewrites, over every pass (a batch may be rewritten by several).
    pub batches_rewritten: u64,
    /// Bytes below the decision's offset before the first pass and after the last.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Why a job stopped. The log holds every batch whole either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactionFailure {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Compaction(#[from] CompactionError),
}

/// The handle partitions submit jobs through. Cheap to clone.
pub struct Compactor<S: LogStore> {
    jobs: mpsc::SyncSender<CompactionJob<S::Log>>,
}

impl<S: LogStore> Clone for Compactor<S> {
    fn clone(&self) -> Self {
        Compactor {
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: LogStore> Compactor<S> {
    /// Starts the worker thread, reading at most `bytes_per_second` (0: unthrottled), each
    /// pass's key index within `index_bytes_max`. The thread ends when every handle is
    /// dropped.
    pub fn start(bytes_per_second: u64, index_bytes_max: usize) -> Compactor<S> {
        let (jobs, queue) = mpsc::sync_channel::<CompactionJob<S::Log>>(COMPACTION_JOBS_MAX);
        std::thread::Builder::new()
            .name("cairn-compactor".into())
            .spawn(move || {
                while let Ok(mut job) = queue.recv() {
                    let started = Instant::now();
                    let result = compact(
                        &mut job.log,
                        &job.decision,
                        bytes_per_second,
                        index_bytes_max,
                    );
                    let metrics = crate::metrics::node();
                    metrics
                        .compaction_duration
                        .observe(crate::metrics::seconds(started.elapsed()));
                    match result {
                        Ok(outcome) => {
                            metrics.compaction_jobs.inc();
                            tracing::info!(
                            partition = %job.log_name, below = %job.decision.below,
                            passes = outcome.passes,
                            rewritten = outcome.batches_rewritten, read = outcome.batches_read,
                            bytes_before = outcome.bytes_before, bytes_after = outcome.bytes_after,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "compacted"
                            )
                        }
                        Err(error) => {
                            metrics.compaction_jobs_failed.inc();
                            tracing::warn!(
                                partition = %job.log_name, below = %job.decision.below, %error,
                                "compaction stopped; the next decision tries again"
                            )
                        }
                    }
                }
            })
            .expect("the compactor thread starts");
        Compactor { jobs }
    }

    /// Queues `job`; gives it back when the queue is full (or the worker is gone).
    pub fn submit(&self, job: CompactionJob<S::Log>) -> Result<(), CompactionJob<S::Log>> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job,
        })
    }
}

/// Key of the merge of every decision marker this replica appended, with the offset of the
/// last one: what a restart hands the compactor again if it was committed but not applied.
pub const SEEN_DECISION_KEY: &str = "compaction.seen";

fn encode_decision(decision: &CompactionDecision) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&decision.below.0.to_be_bytes());
    bytes[8..].copy_from_slice(&decision.tombstone_cutoff_ms.to_be_bytes());
    bytes
}

fn decode_decision(bytes: &[u8]) -> Option<CompactionDecision> {
    if bytes.len() != 16 {
        return None;
    }
    Some(CompactionDecision {
        below: Offset(u64::from_be_bytes(bytes[..8].try_into().ok()?)),
        tombstone_cutoff_ms: i64::from_be_bytes(bytes[8..].try_into().ok()?),
    })
}

/// Notes a decision marker appended at `offset` (merged with those before it). A marker that
/// is later truncated away leaves this note pointing past the log, so it is never trusted:
/// see [`unapplied_decision`].
pub fn record_seen_decision<L: PartitionLog + ?Sized>(
    log: &mut L,
    offset: Offset,
    decision: CompactionDecision,
) -> Result<(), StorageError> {
    let merged = match log.get_value(SEEN_DECISION_KEY)? {
        Some(bytes) if bytes.len() == 24 => match decode_decision(&bytes[8..]) {
            Some(seen) => seen.merge(decision),
            None => decision,
        },
        _ => decision,
    };
    let mut value = Vec::with_capacity(24);
    value.extend_from_slice(&offset.0.to_be_bytes());
    value.extend_from_slice(&encode_decision(&merged));
    log.put_value(SEEN_DECISION_KEY, &value)
}

/// Forgets the note of [`record_seen_decision`] when its last marker is at or above `from`
/// (truncated away): the merge it holds may include a decision that never committed, and
/// offsets appended later could pass it. Forgetting only delays compaction to the next
/// decision.
pub fn forget_seen_decisions_from<L: PartitionLog + ?Sized>(
    log: &mut L,
    from: Offset,
) -> Result<(), StorageError> {
    let Some(bytes) = log.get_value(SEEN_DECISION_KEY)? else {
        return Ok(());
    };
    let offset = bytes
        .get(..8)
        .and_then(|head| head.try_into().ok())
        .map(u64::from_be_bytes);
    if offset.is_none_or(|offset| offset >= from.0) {
        log.put_value(SEEN_DECISION_KEY, &[])?;
    }
    Ok(())
}

/// The decision to hand the compactor at start: the merge of the markers this replica
/// appended, when the last of them is below its recorded committed end (so every merged
/// marker was committed: they precede it) and the compactor has not applied it in full.
/// A marker truncated away before it committed never reaches the committed end.
pub fn unapplied_decision<L: PartitionLog>(log: &L) -> Option<CompactionDecision> {
    let bytes = log.get_value(SEEN_DECISION_KEY).ok()??;
    if bytes.len() != 24 {
        return None;
    }
    let offset = Offset(u64::from_be_bytes(bytes[..8].try_into().ok()?));
    let seen = decode_decision(&bytes[8..])?;
    if offset >= log.watermark().committed_end || offset >= log.log_end() {
        return None;
    }
    match applied_decision(log) {
        Some(applied) if applied.merge(seen) == applied => None,
        _ => Some(seen),
    }
}

/// The decision a replica applied in full last, from the log's own values.
pub fn applied_decision<L: PartitionLog>(log: &L) -> Option<CompactionDecision> {
    decode_decision(&log.get_value(APPLIED_DECISION_KEY).ok()??)
}

/// Applies `decision` to `log`, pass after pass (see the module comment), reading at most
/// `bytes_per_second` over the whole job, each pass's key index within `index_bytes_max`.
pub fn compact<L: PartitionLog>(
    log: &mut L,
    decision: &CompactionDecision,
    bytes_per_second: u64,
    index_bytes_max: usize,
) -> Result<CompactionOutcome, CompactionFailure> {
    // Decisions combine (larger offset, later cutoff), so one applied before stays applied.
    let decision = match applied_decision(log) {
        Some(applied) => applied.merge(*decision),
        None => *decision,
    };
    let below = decision.below.min(log.log_end());
    let mut throttle = Throttle::new(bytes_per_second);
    let metrics = crate::metrics::node();
    let mut outcome = CompactionOutcome::default();
    let mut index = KeyIndex::new(&decision, index_bytes_max);
    // Bounded: each pass covers at least one key that no pass before it did.
    loop {
        outcome.passes = index.pass();
        metrics.compaction_passes.inc();
        for_each_batch(log, below, &mut throttle, |_, batch| {
            Ok(index.observe(batch)?)
        })?;
        let mut bytes_after = 0;
        let first = outcome.passes == 1;
        for_each_batch(log, below, &mut throttle, |log, batch| {
            if first {
                outcome.batches_read += 1;
                outcome.bytes_before += batch.size_bytes() as u64;
            }
            let Some(compacted) = compact_batch(batch, &decision, &index)? else {
                bytes_after += batch.size_bytes() as u64;
                return Ok(());
            };
            match log.replace_batch(&compacted) {
                Ok(()) => {
                    outcome.batches_rewritten += 1;
                    bytes_after += compacted.size_bytes() as u64;
                    metrics.compaction_batches_rewritten.inc();
                    metrics.compaction_bytes_removed.inc_by(
                        (batch.size_bytes() as u64).saturating_sub(compacted.size_bytes() as u64),
                    );
                }
                // Retention or a reset removed the batch meanwhile: nothing to rewrite.
                Err(StorageError::BadReplacement { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            Ok(())
        })?;
        outcome.bytes_after = bytes_after;
        match index.next_pass() {
            Some(next) => index = next,
            None => break,
        }
    }
    log.put_value(APPLIED_DECISION_KEY, &encode_decision(&decision))?;
    Ok(outcome)
}

/// Reads `log` from its start to `below`, at most `READ_BYTES_MAX` a step, handing `visit`
/// each batch in offset order (and the log, to rewrite it) and spending its bytes.
fn for_each_batch<L: PartitionLog>(
    log: &mut L,
    below: Offset,
    throttle: &mut Throttle,
    mut visit: impl FnMut(&mut L, &RecordBatch) -> Result<(), CompactionFailure>,
) -> Result<(), CompactionFailure> {
    let metrics = crate::metrics::node();
    let mut from = log.log_start();
    while from < below {
        let batches = log.read(from, below, READ_BYTES_MAX)?;
        let Some(last) = batches.last() else {
            break;
        };
        from = last.next_offset();
        for batch in &batches {
            metrics
                .compaction_bytes_read
                .inc_by(batch.size_bytes() as u64);
            throttle.spend(batch.size_bytes() as u64);
            visit(log, batch)?;
        }
    }
    Ok(())
}

/// Sleeps so that the bytes spent stay within the budget since the job started.
struct Throttle {
    bytes_per_second: u64,
    started: Instant,
    spent: u64,
}

impl Throttle {
    fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second,
            started: Instant::now(),
            spent: 0,
        }
    }

    fn spend(&mut self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / self.bytes_per_second as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::{Record, RecordBatchBuilder};
    use cairn_protocol::compaction::compact_log;
    use cairn_protocol::Epoch;
    use cairn_storage::MemoryStore;

    /// Enough for every key of these tests in one pass.
    const BUDGET: usize = 1 << 20;

    fn keyed(keys: &[&str], base: u64) -> cairn_protocol::RecordBatch {
        let mut builder = RecordBatchBuilder::new(1_000);
        for key in keys {
            builder.push(&Record::new(format!("{key} at {base}")).with_key(key.to_string()));
        }
        builder.build().stamped(Offset(base), Epoch(1))
    }

    /// A decision seen and committed but not applied (a crash in between) is handed back at
    /// start; one already applied, one not yet committed, and one truncated away are not.
    #[test]
    fn an_unapplied_committed_decision_is_recovered_and_a_truncated_one_forgotten() {
        let store = MemoryStore::new();
        let mut log = store.open_log("t1-0").unwrap();
        log.append(&keyed(&["a", "a"], 0)).unwrap();
        let decision = CompactionDecision {
            below: Offset(2),
            tombstone_cutoff_ms: 5,
        };
        let marker = decision.marker(9).stamped(Offset(2), Epoch(1));
        log.append(&marker).unwrap();
        record_seen_decision(&mut log, Offset(2), decision).unwrap();
        assert_eq!(unapplied_decision(&log), None, "not committed yet");
        log.append(&keyed(&["b"], 3)).unwrap();
        log.raise_committed_watermark(Offset(4)).unwrap();
        assert_eq!(unapplied_decision(&log), Some(decision));
        compact(&mut log, &decision, 0, BUDGET).unwrap();
        assert_eq!(unapplied_decision(&log), None, "applied");

        let later = CompactionDecision {
            below: Offset(4),
            tombstone_cutoff_ms: 6,
        };
        log.append(&later.marker(10).stamped(Offset(4), Epoch(1)))
            .unwrap();
        record_seen_decision(&mut log, Offset(4), later).unwrap();
        forget_seen_decisions_from(&mut log, Offset(5)).unwrap();
        log.append(&keyed(&["c"], 5)).unwrap();
        log.raise_committed_watermark(Offset(6)).unwrap();
        assert_eq!(unapplied_decision(&log), Some(later), "below the cut: kept");
        forget_seen_decisions_from(&mut log, Offset(4)).unwrap();
        assert_eq!(unapplied_decision(&log), None, "truncated away: forgotten");
    }

    /// The worker's streaming passes over a stored log give the bytes the in-memory pure
    /// function gives, record the decision, and a second run changes nothing.
    #[test]
    fn compacting_a_stored_log_matches_the_pure_function() {
        let store = MemoryStore::new();
        let mut log = store.open_log("t1-0").unwrap();
        let batches = vec![
            keyed(&["a", "b", "a"], 0),
            keyed(&["c", "b"], 3),
            keyed(&["a"], 5),
        ];
        for batch in &batches {
            log.append(batch).unwrap();
        }
        let decision = CompactionDecision {
            below: Offset(5),
            tombstone_cutoff_ms: 0,
        };
        let outcome = compact(&mut log, &decision, 0, BUDGET).unwrap();
        assert_eq!(outcome.batches_rewritten, 1);
        let expected = compact_log(&batches, &decision, usize::MAX).unwrap();
        assert_eq!(
            log.read(Offset(0), Offset(6), usize::MAX).unwrap(),
            expected
        );
        assert_eq!(applied_decision(&log), Some(decision));
        let again = compact(&mut log, &decision, 0, BUDGET).unwrap();
        assert_eq!(again.batches_rewritten, 0);
        // A smaller decision later is merged with the applied one: nothing comes back.
        let smaller = CompactionDecision {
            below: Offset(2),
            tombstone_cutoff_ms: -1,
        };
        compact(&mut log, &smaller, 0, BUDGET).unwrap();
        assert_eq!(
            log.read(Offset(0), Offset(6), usize::MAX).unwrap(),
            expected
        );
        assert_eq!(applied_decision(&log), Some(decision));
    }

    /// A log whose keys need many index budgets is compacted in as many passes, to the bytes
    /// the single-pass function gives, and the job is recorded as applied once.
    #[test]
    fn a_stored_log_whose_keys_pass_the_budget_is_compacted_in_passes_to_the_single_pass_log() {
        let store = MemoryStore::new();
        let mut log = store.open_log("t1-0").unwrap();
        let keys: Vec<String> = (0..300)
            .map(|n| format!("key-{:04}", n * 7 % 300))
            .collect();
        let mut batches = Vec::new();
        let mut next = 0;
        for round in 0..3 {
            for chunk in keys.chunks(13 + round) {
                let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let batch = keyed(&names, next);
                next = batch.next_offset().0;
                log.append(&batch).unwrap();
                batches.push(batch);
            }
        }
        let decision = CompactionDecision {
            below: Offset(next),
            tombstone_cutoff_ms: 0,
        };
        // 20 keys of 8 bytes a pass.
        let budget = 20 * (8 + cairn_protocol::compaction::INDEX_ENTRY_OVERHEAD_BYTES);
        let passes_before = crate::metrics::node().compaction_passes.get();
        let outcome = compact(&mut log, &decision, 0, budget).unwrap();
        assert_eq!(outcome.passes, 15, "300 keys, 20 a pass");
        assert!(crate::metrics::node().compaction_passes.get() >= passes_before + 15);
        assert_eq!(outcome.batches_read, batches.len() as u64);
        assert!(outcome.bytes_after < outcome.bytes_before);
        let expected = compact_log(&batches, &decision, usize::MAX).unwrap();
        assert_eq!(
            log.read(Offset(0), Offset(next), usize::MAX).unwrap(),
            expected
        );
        assert_eq!(applied_decision(&log), Some(decision));
        let again = compact(&mut log, &decision, 0, budget).unwrap();
        assert_eq!((again.passes, again.batches_rewritten), (15, 0));
    }
}
