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
//!
//! The worker counts what it does into its node's [`NodeMetrics`] and paces itself by its
//! node's [`FlushTimes`], both handed to [`Compactor::start`] by the broker.

use crate::metrics::NodeMetrics;
use cairn_protocol::compaction::{compact_batch, CompactionDecision, CompactionError, KeyIndex};
use cairn_protocol::Offset;
use cairn_protocol::RecordBatch;
use cairn_storage::{LogStore, PartitionLog, StorageError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
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
    /// pass's key index within `index_bytes_max`, counting into `metrics` and pacing itself
    /// by `flushes` (the node's, fed by its store's flush observer). The thread ends when
    /// every handle is dropped.
    pub fn start(
        bytes_per_second: u64,
        index_bytes_max: usize,
        metrics: Arc<NodeMetrics>,
        flushes: Arc<FlushTimes>,
    ) -> Compactor<S> {
        let (jobs, queue) = mpsc::sync_channel::<CompactionJob<S::Log>>(COMPACTION_JOBS_MAX);
        std::thread::Builder::new()
            .name("cairn-compactor".into())
            .spawn(move || {
                // One flush sample per window while idle, the last REFERENCE_WINDOWS of them:
                // how long flushes take when the compactor writes nothing, under the load of
                // the moment. A job that follows another at once keeps the reference it had.
                let mut idle: VecDeque<FlushSample> = VecDeque::new();
                let mut reference = None;
                // The pace the last job ended at, and when: a job that follows at once starts
                // there instead of at the full rate it would have to back off from again.
                let mut last_pace: Option<(u64, Instant)> = None;
                loop {
                    let mut job = match queue.recv_timeout(PACE_WINDOW) {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if idle.len() > REFERENCE_WINDOWS {
                                idle.pop_front();
                            }
                            let now = flushes.sample();
                            idle.push_back(now);
                            // The slow threshold follows the idle mean, so that the reference
                            // counts its slow tail the way the job's windows will.
                            if let Some(window) = idle
                                .front()
                                .and_then(|oldest| now.since(oldest, REFERENCE_FLUSHES_MIN))
                            {
                                flushes.set_slow_above(slow_threshold_micros(window.mean_micros));
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    if let Some(window) = idle
                        .front()
                        .and_then(|oldest| flushes.sample().since(oldest, REFERENCE_FLUSHES_MIN))
                    {
                        reference = Some(window);
                    }
                    let started = Instant::now();
                    let carried = last_pace
                        .filter(|(_, ended)| ended.elapsed() <= PACE_CARRY)
                        .map(|(pace, _)| pace);
                    let mut throttle =
                        Throttle::paced(bytes_per_second, &flushes, &metrics, reference, carried);
                    let result = compact(
                        &mut job.log,
                        &job.decision,
                        &mut throttle,
                        index_bytes_max,
                        &metrics,
                    );
                    last_pace = throttle.pace().map(|pace| (pace, Instant::now()));
                    idle.clear();
                    idle.push_back(flushes.sample());
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

/// Applies `decision` to `log`, pass after pass (see the module comment), reading within
/// `throttle`'s budget over the whole job, each pass's key index within `index_bytes_max`,
/// and counting passes, bytes and rewrites into `metrics`.
pub fn compact<L: PartitionLog>(
    log: &mut L,
    decision: &CompactionDecision,
    throttle: &mut Throttle,
    index_bytes_max: usize,
    metrics: &NodeMetrics,
) -> Result<CompactionOutcome, CompactionFailure> {
    // Decisions combine (larger offset, later cutoff), so one applied before stays applied.
    let decision = match applied_decision(log) {
        Some(applied) => applied.merge(*decision),
        None => *decision,
    };
    let below = decision.below.min(log.log_end());
    let mut outcome = CompactionOutcome::default();
    let mut index = KeyIndex::new(&decision, index_bytes_max);
    // Bounded: each pass covers at least one key that no pass before it did.
    loop {
        outcome.passes = index.pass();
        metrics.compaction_passes.inc();
        for_each_batch(log, below, throttle, metrics, |_, batch| {
            Ok(index.observe(batch)?)
        })?;
        let mut bytes_after = 0;
        let first = outcome.passes == 1;
        for_each_batch(log, below, throttle, metrics, |log, batch| {
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
/// each batch in offset order (and the log, to rewrite it), spending its bytes and counting
/// them into `metrics`.
fn for_each_batch<L: PartitionLog>(
    log: &mut L,
    below: Offset,
    throttle: &mut Throttle,
    metrics: &NodeMetrics,
    mut visit: impl FnMut(&mut L, &RecordBatch) -> Result<(), CompactionFailure>,
) -> Result<(), CompactionFailure> {
    let mut from = log.log_start();
    while from < below {
        // Detached: a cold read of blob files does not hold the partition's lock, which its
        // actor (on an arbiter shared with other partitions) takes for every tick.
        let batches = log.read_detached(from, below, READ_BYTES_MAX)?;
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

/// Group-commit flushes of one node's store, counted by the node's flush observer, so that the
/// compactor can tell when its rewrites slow the flushes every acknowledgement waits for: how
/// many ran, their total time, and how many took longer than a threshold the compactor sets
/// from what flushes take while it is idle (a compaction shows in the slow tail of flushes
/// well before it shows in their mean).
#[derive(Debug)]
pub struct FlushTimes {
    count: AtomicU64,
    micros: AtomicU64,
    slow: AtomicU64,
    slow_above_micros: AtomicU64,
}

impl FlushTimes {
    /// No flush yet, and no threshold: nothing counts as slow until the compactor sets one.
    /// One per node, shared by its flush observer and its compactor.
    pub fn new() -> FlushTimes {
        FlushTimes {
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            slow_above_micros: AtomicU64::new(u64::MAX),
        }
    }

    /// Counts one flush that took `took`.
    pub fn observe(&self, took: Duration) {
        let micros = took.as_micros() as u64;
        self.micros.fetch_add(micros, Ordering::Relaxed);
        if micros > self.slow_above_micros.load(Ordering::Relaxed) {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn sample(&self) -> FlushSample {
        FlushSample {
            count: self.count.load(Ordering::Relaxed),
            micros: self.micros.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    fn set_slow_above(&self, micros: u64) {
        self.slow_above_micros.store(micros, Ordering::Relaxed);
    }
}

impl Default for FlushTimes {
    fn default() -> FlushTimes {
        FlushTimes::new()
    }
}

/// Running totals of [`FlushTimes`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlushSample {
    count: u64,
    micros: u64,
    slow: u64,
}

impl FlushSample {
    /// The flushes since `earlier`, if at least `flushes_min` (and one) ran.
    fn since(&self, earlier: &FlushSample, flushes_min: u64) -> Option<FlushWindow> {
        let count = self.count.saturating_sub(earlier.count);
        (count >= flushes_min.max(1)).then(|| FlushWindow {
            mean_micros: self.micros.saturating_sub(earlier.micros) as f64 / count as f64,
            slow_fraction: self.slow.saturating_sub(earlier.slow) as f64 / count as f64,
        })
    }
}

/// The flushes of a stretch of time: their mean, and the fraction slower than the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FlushWindow {
    mean_micros: f64,
    slow_fraction: f64,
}

/// A flush is slow above three times the idle mean plus a millisecond.
fn slow_threshold_micros(idle_mean_micros: f64) -> u64 {
    (3.0 * idle_mean_micros + 1_000.0) as u64
}

/// Windows of idle flushes the reference spans at most (2 s).
const REFERENCE_WINDOWS: usize = 8;
/// Flushes the idle windows must hold to serve as the reference.
const REFERENCE_FLUSHES_MIN: u64 = 20;
/// How often a paced compactor compares flush times with the reference.
const PACE_WINDOW: Duration = Duration::from_millis(250);
/// A job starting this soon after the last one ended starts at the pace that one ended at.
const PACE_CARRY: Duration = Duration::from_secs(2);
/// Flushes a window needs for a comparison: fewer means few acknowledgements wait on them.
const WINDOW_FLUSHES_MIN: u64 = 5;

/// The compactor's read rate, between the configured one and a sixteenth of it: halved while
/// flushes are clearly slower than the reference (what they took while the compactor was
/// idle), in their mean or in their slow tail, and raised by a sixteenth while both are near
/// it. A compactor's rewrites share every flush with the produces that wait for it (one
/// store, one log); at a fixed 16 MiB/s they left the mean flush near its idle value but
/// doubled its 99th percentile and tripled the publish p99 (docs/compaction.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pace {
    max: u64,
    current: u64,
}

impl Pace {
    fn new(max: u64) -> Pace {
        Pace { max, current: max }
    }

    fn floor(&self) -> u64 {
        (self.max / 16).max(1)
    }

    /// Adjusts the rate to one window's flushes against the reference; says whether it
    /// changed.
    fn adjust(&mut self, reference: &FlushWindow, window: &FlushWindow) -> bool {
        let before = self.current;
        let slower = window.mean_micros > reference.mean_micros * 1.25 + 250.0
            || window.slow_fraction > 2.0 * reference.slow_fraction + 0.01;
        let near = window.mean_micros < reference.mean_micros * 1.1 + 250.0
            && window.slow_fraction <= reference.slow_fraction + 0.005;
        if slower {
            self.current = (self.current / 2).max(self.floor());
        } else if near {
            self.raise();
        }
        self.current != before
    }

    /// Raises the rate by a sixteenth (a window near the reference, or a quiet one); says
    /// whether it changed.
    fn raise(&mut self) -> bool {
        let before = self.current;
        self.current = (self.current + self.floor()).min(self.max);
        self.current != before
    }
}

/// Sleeps so that the bytes spent stay within the current rate, which a paced throttle
/// adapts to the flush times each window (see [`Pace`]).
pub struct Throttle {
    pace: Option<Pace>,
    started: Instant,
    spent: u64,
    flushes: Option<(Arc<FlushTimes>, FlushWindow)>,
    window: (Instant, FlushSample),
    /// Where a paced throttle shows its rate (`compaction_pace`); `None` when unlimited.
    metrics: Option<Arc<NodeMetrics>>,
}

impl Throttle {
    /// No budget: reads as fast as the log gives.
    pub fn unlimited() -> Throttle {
        Throttle {
            pace: None,
            started: Instant::now(),
            spent: 0,
            flushes: None,
            window: (Instant::now(), FlushSample::default()),
            metrics: None,
        }
    }

    /// At most `bytes_per_second` (0: unlimited), slowed while `flushes` run clearly slower
    /// than `reference`, the idle flushes (no reference: the fixed rate; see [`Pace`]).
    /// `carried`: the pace a job just before ended at, where this one starts (within the
    /// configured range). The rate is shown in `metrics`.
    fn paced(
        bytes_per_second: u64,
        flushes: &Arc<FlushTimes>,
        metrics: &Arc<NodeMetrics>,
        reference: Option<FlushWindow>,
        carried: Option<u64>,
    ) -> Throttle {
        let mut throttle = Throttle::unlimited();
        if bytes_per_second > 0 {
            let mut pace = Pace::new(bytes_per_second);
            // Only a paced job can climb back from a carried rate; without a reference the
            // rate is the fixed one.
            if let (Some(carried), Some(_)) = (carried, reference) {
                pace.current = carried.clamp(pace.floor(), pace.max);
            }
            throttle.pace = Some(pace);
            metrics.compaction_pace.set(pace.current as i64);
            throttle.metrics = Some(Arc::clone(metrics));
            throttle.flushes = reference.map(|reference| (Arc::clone(flushes), reference));
            throttle.window = (Instant::now(), flushes.sample());
        }
        throttle
    }

    /// The current read rate; `None` when unlimited.
    fn pace(&self) -> Option<u64> {
        self.pace.map(|pace| pace.current)
    }

    fn spend(&mut self, bytes: u64) {
        let Some(pace) = self.pace.as_mut() else {
            return;
        };
        if let Some((flushes, reference)) = &self.flushes {
            if self.window.0.elapsed() >= PACE_WINDOW {
                let now = flushes.sample();
                let changed = match now.since(&self.window.1, WINDOW_FLUSHES_MIN) {
                    Some(window) => pace.adjust(reference, &window),
                    // Few flushes, and quick ones: few acknowledgements wait on the store
                    // (the produce load stopped), so there is nothing to yield to.
                    None if now.micros.saturating_sub(self.window.1.micros)
                        < PACE_WINDOW.as_micros() as u64 / 2 =>
                    {
                        pace.raise()
                    }
                    None => false,
                };
                if changed {
                    // A new rate counts from now.
                    self.started = Instant::now();
                    self.spent = 0;
                    if let Some(metrics) = &self.metrics {
                        metrics.compaction_pace.set(pace.current as i64);
                    }
                }
                self.window = (Instant::now(), now);
            }
        }
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / pace.current as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(mean_micros: f64, slow_fraction: f64) -> FlushWindow {
        FlushWindow {
            mean_micros,
            slow_fraction,
        }
    }

    /// Flushes clearly slower than the reference, in their mean or in their slow tail, halve
    /// the rate down to a sixteenth; flushes near it in both raise it a sixteenth at a time
    /// back to the configured rate; in between it holds.
    #[test]
    fn the_pace_halves_while_flushes_slow_and_climbs_back_when_they_recover() {
        // Idle: 0.9 ms on average, 1% of flushes slow (above 3 x 0.9 + 1 = 3.7 ms).
        let reference = window(900.0, 0.01);
        let mut pace = Pace::new(16 << 20);
        // The mean at 1.25 x 0.9 + 0.25 = 1.375 ms and the tail at 2 x 1% + 1% are not above.
        assert!(!pace.adjust(&reference, &window(1_375.0, 0.03)));
        assert_eq!(pace.current, 16 << 20);
        let mut rates = Vec::new();
        // The tail alone (a mean barely up, as in the 16 MiB/s bench run), then the mean.
        for slower in [window(1_300.0, 0.05), window(2_000.0, 0.0)]
            .into_iter()
            .cycle()
            .take(6)
        {
            pace.adjust(&reference, &slower);
            rates.push(pace.current >> 20);
        }
        assert_eq!(rates, [8, 4, 2, 1, 1, 1]);
        // Near in the mean but not in the tail (2% > 1% + 0.5%): held.
        assert!(!pace.adjust(&reference, &window(950.0, 0.02)));
        let mut rates = Vec::new();
        for _ in 0..17 {
            pace.adjust(&reference, &window(950.0, 0.012));
            rates.push(pace.current >> 20);
        }
        assert_eq!(
            rates,
            [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 16, 16]
        );
    }

    /// A job right after another starts at the pace it ended at; a paced one only, since
    /// without a reference nothing would raise the rate again.
    #[test]
    fn a_job_right_after_another_starts_at_its_pace_within_the_configured_range() {
        let flushes = Arc::new(FlushTimes::new());
        let metrics = Arc::new(NodeMetrics::new());
        let reference = Some(window(1_000.0, 0.01));
        let pace = |carried| Throttle::paced(1600, &flushes, &metrics, reference, carried).pace();
        assert_eq!(pace(None), Some(1600));
        assert_eq!(pace(Some(800)), Some(800));
        assert_eq!(pace(Some(7)), Some(100), "not below a sixteenth");
        assert_eq!(
            pace(Some(10_000)),
            Some(1600),
            "not above the configured rate"
        );
        assert_eq!(
            Throttle::paced(1600, &flushes, &metrics, None, Some(800)).pace(),
            Some(1600),
            "without a reference: the fixed rate"
        );
        assert_eq!(
            Throttle::paced(0, &flushes, &metrics, reference, Some(800)).pace(),
            None
        );
    }

    /// The observer counts a flush as slow only above the threshold the compactor set, and a
    /// window needs enough flushes for a figure.
    #[test]
    fn flush_windows_count_the_slow_tail_above_the_threshold_and_need_enough_flushes() {
        let times = FlushTimes::new();
        times.observe(Duration::from_millis(50));
        let start = times.sample();
        assert_eq!(start.slow, 0, "no threshold, no slow flush");
        times.set_slow_above(slow_threshold_micros(1_000.0));
        for millis in [1, 1, 2, 4, 5] {
            times.observe(Duration::from_millis(millis));
        }
        let now = times.sample();
        assert_eq!(now.since(&start, 6), None);
        assert_eq!(now.since(&start, 5), Some(window(2_600.0, 0.2)));
        assert_eq!(now.since(&now, 0), None);
    }
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
        let metrics = NodeMetrics::new();
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
        compact(
            &mut log,
            &decision,
            &mut Throttle::unlimited(),
            BUDGET,
            &metrics,
        )
        .unwrap();
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
        let metrics = NodeMetrics::new();
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
        let outcome = compact(
            &mut log,
            &decision,
            &mut Throttle::unlimited(),
            BUDGET,
            &metrics,
        )
        .unwrap();
        assert_eq!(outcome.batches_rewritten, 1);
        let expected = compact_log(&batches, &decision, usize::MAX).unwrap();
        assert_eq!(
            log.read(Offset(0), Offset(6), usize::MAX).unwrap(),
            expected
        );
        assert_eq!(applied_decision(&log), Some(decision));
        let again = compact(
            &mut log,
            &decision,
            &mut Throttle::unlimited(),
            BUDGET,
            &metrics,
        )
        .unwrap();
        assert_eq!(again.batches_rewritten, 0);
        // A smaller decision later is merged with the applied one: nothing comes back.
        let smaller = CompactionDecision {
            below: Offset(2),
            tombstone_cutoff_ms: -1,
        };
        compact(
            &mut log,
            &smaller,
            &mut Throttle::unlimited(),
            BUDGET,
            &metrics,
        )
        .unwrap();
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
        let metrics = NodeMetrics::new();
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
        let outcome = compact(
            &mut log,
            &decision,
            &mut Throttle::unlimited(),
            budget,
            &metrics,
        )
        .unwrap();
        assert_eq!(outcome.passes, 15, "300 keys, 20 a pass");
        assert_eq!(
            metrics.compaction_passes.get(),
            15,
            "counted in this job's own metrics"
        );
        assert_eq!(
            metrics.compaction_batches_rewritten.get(),
            outcome.batches_rewritten
        );
        assert_eq!(outcome.batches_read, batches.len() as u64);
        assert!(outcome.bytes_after < outcome.bytes_before);
        let expected = compact_log(&batches, &decision, usize::MAX).unwrap();
        assert_eq!(
            log.read(Offset(0), Offset(next), usize::MAX).unwrap(),
            expected
        );
        assert_eq!(applied_decision(&log), Some(decision));
        let again = compact(
            &mut log,
            &decision,
            &mut Throttle::unlimited(),
            budget,
            &metrics,
        )
        .unwrap();
        assert_eq!((again.passes, again.batches_rewritten), (15, 0));
    }
}
