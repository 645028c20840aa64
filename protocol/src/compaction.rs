//! Log compaction as a pure function: which records of a log prefix a compacted topic keeps.
//!
//! A partition leader *decides* a compaction and replicates the decision as a control batch
//! (a [`CompactionDecision`] marker, which consumers skip like the epoch marker). Every
//! replica applies a decision once the marker is committed, with this module's functions, in
//! one or more *passes*, each over the whole prefix below the decision's offset and each for
//! one range of the key space (keys compared as bytes):
//!
//! 1. [`KeyIndex::observe`] over the batches below the decision's offset: the newest offset
//!    of every key of the pass's range there. The index holds at most its byte budget
//!    (key bytes plus [`INDEX_ENTRY_OVERHEAD_BYTES`] per key): when a new key would pass it,
//!    the index drops its largest keys and the pass's range ends below them.
//! 2. [`compact_batch`] over the same batches: each batch keeps the records that are the
//!    newest of their key below the offset, minus tombstones older than the decision's
//!    cutoff, minus records without a key (which a compacted topic does not accept; they
//!    were written before the topic became compacted). Records of keys outside the pass's
//!    range, records at or above the offset and control batches are never touched.
//! 3. [`KeyIndex::next_pass`]: the next pass starts where this one's range ended; there is
//!    none once a pass's range reached past the largest key.
//!
//! Every key belongs to exactly one pass, and a pass removes only records of its own keys,
//! which it would remove in a single pass too (a key's newest record below the offset is the
//! same whatever other keys' records earlier passes removed). So the log after every pass is
//! the log one pass with an unbounded index gives, whatever the budget: replicas with
//! different budgets, or restarted in the middle of any pass, reach the same bytes. Each
//! pass covers at least one key, so a job ends after at most as many passes as there are
//! distinct keys, and no key space, however large or crafted, stops it.
//!
//! The result depends only on the batches and the decision, so replicas reach the same bytes.
//! It is idempotent (compacting a compacted log changes nothing) and monotone: compacting at
//! (X1, C1) and then at (X2, C2) with X1 <= X2 and C1 <= C2 gives the log that compacting at
//! (X2, C2) alone gives. So replicas that applied different decisions converge on the next
//! one, and a compaction cut short by a crash is repaired by running it again. Decisions
//! combine with [`CompactionDecision::merge`] (the larger offset and the later cutoff), which
//! keeps them monotone whatever order they arrive in.
//!
//! Offsets never move: a rewritten batch keeps its base offset, last offset, epoch and
//! producer stamp (see [`RecordBatch::retain`]), so a consumer sees gaps, never renumbering.

use crate::batch::{BatchError, Record, RecordBatch, RecordBatchBuilder, ATTRIBUTE_CONTROL};
use crate::ids::Offset;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

/// The control record key of a decision: Kafka's control key version 0, type 2
/// (LEADER_CHANGE), as the epoch marker has, so Kafka clients skip it the same way.
const DECISION_KEY: [u8; 4] = crate::batch::CONTROL_KEY_LEADER_CHANGE;
/// What tells a decision's value from an epoch marker's.
const DECISION_MAGIC: &[u8; 8] = b"compact1";
const DECISION_VALUE_BYTES: usize = 8 + 8 + 8;

/// What one key costs a [`KeyIndex`] beyond its own bytes, an estimate on the high side: the
/// map's entry (a 16-byte boxed key and an 8-byte offset) in B-tree nodes of 11 entries that
/// are between half and completely full (up to about 60 bytes an entry, node headers and
/// child pointers included), and the allocator's header and rounding of the key's own
/// allocation (up to about 32 bytes).
pub const INDEX_ENTRY_OVERHEAD_BYTES: usize = 96;

/// "Compact every record below `below`; drop tombstones older than `tombstone_cutoff_ms`."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompactionDecision {
    /// Records at or above this offset are not touched. A leader never decides above its
    /// high watermark, so nothing uncommitted is ever compacted.
    pub below: Offset,
    /// A tombstone (null value) whose timestamp is below this (ms since the Unix epoch) is
    /// removed once it is its key's newest record: the leader's clock at decision time minus
    /// `delete.retention.ms`.
    pub tombstone_cutoff_ms: i64,
}

impl CompactionDecision {
    /// The decision that covers both: the larger offset and the later cutoff.
    pub fn merge(self, other: CompactionDecision) -> CompactionDecision {
        CompactionDecision {
            below: self.below.max(other.below),
            tombstone_cutoff_ms: self.tombstone_cutoff_ms.max(other.tombstone_cutoff_ms),
        }
    }

    /// The control batch that replicates this decision (stamped by the leader like any batch).
    pub fn marker(&self, timestamp_ms: i64) -> RecordBatch {
        let mut value = BytesMut::with_capacity(DECISION_VALUE_BYTES);
        value.put_slice(DECISION_MAGIC);
        value.put_u64(self.below.0);
        value.put_i64(self.tombstone_cutoff_ms);
        let mut builder = RecordBatchBuilder::new(timestamp_ms).control();
        builder.push(
            &Record::new(value.freeze())
                .with_key(Bytes::from_static(&DECISION_KEY))
                .with_timestamp_ms(timestamp_ms),
        );
        builder.build()
    }

    /// The decision a control batch carries, if it is a decision marker.
    pub fn from_batch(batch: &RecordBatch) -> Option<CompactionDecision> {
        if batch.header().attributes & ATTRIBUTE_CONTROL == 0 || batch.record_count() != 1 {
            return None;
        }
        let record = batch.records().next()?.ok()?;
        if record.key.as_deref() != Some(&DECISION_KEY[..]) {
            return None;
        }
        let value = record.value?;
        if value.len() != DECISION_VALUE_BYTES || !value.starts_with(DECISION_MAGIC) {
            return None;
        }
        let mut rest = &value[DECISION_MAGIC.len()..];
        Some(CompactionDecision {
            below: Offset(rest.get_u64()),
            tombstone_cutoff_ms: rest.get_i64(),
        })
    }
}

/// Why a compaction could not be computed. Nothing is rewritten then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactionError {
    #[error("batch at offset {offset}: {source}")]
    Batch { offset: Offset, source: BatchError },
}

/// What `key` costs an index.
fn entry_bytes(key: &[u8]) -> usize {
    key.len().saturating_add(INDEX_ENTRY_OVERHEAD_BYTES)
}

/// One pass's key index: the newest offset below a decision's offset of every key in the
/// pass's range, within a byte budget (see the module comment).
///
/// Each key is copied out of its batch: a key sliced from a batch (or from its decompressed
/// records) would keep the whole batch in memory as long as the index holds it.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    below: Offset,
    /// The pass's keys start at this one (inclusive; the empty key is the smallest).
    from: Box<[u8]>,
    /// ... and end below this one; `None`: no end. Lowered when the index overflows, never
    /// raised, so every key below it that the pass met is in `newest`.
    until: Option<Box<[u8]>>,
    newest: BTreeMap<Box<[u8]>, Offset>,
    /// What `newest` costs, by [`entry_bytes`].
    bytes: usize,
    bytes_max: usize,
    /// 1 for the first pass of a job.
    pass: u32,
}

impl KeyIndex {
    /// The first pass's empty index for `decision`, holding at most `bytes_max` bytes of
    /// keys (see [`INDEX_ENTRY_OVERHEAD_BYTES`]), or one key, if a single key is larger.
    pub fn new(decision: &CompactionDecision, bytes_max: usize) -> KeyIndex {
        KeyIndex {
            below: decision.below,
            from: Box::default(),
            until: None,
            newest: BTreeMap::new(),
            bytes: 0,
            bytes_max,
            pass: 1,
        }
    }

    /// Notes the keys of `batch`'s records below the decision's offset that are in this
    /// pass's range. Batches must come in offset order (a later record of a key replaces an
    /// earlier one).
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<(), CompactionError> {
        if batch.header().is_control() || batch.base_offset() >= self.below {
            return Ok(());
        }
        let failed = |source| CompactionError::Batch {
            offset: batch.base_offset(),
            source,
        };
        batch.verify_checksum().map_err(failed)?;
        if batch.record_count() == 0 {
            return Ok(());
        }
        for record in batch.records() {
            let record = record.map_err(failed)?;
            if record.offset >= self.below {
                break;
            }
            let Some(key) = record.key else {
                continue;
            };
            if !self.covers(&key) {
                continue;
            }
            if let Some(newest) = self.newest.get_mut(&key[..]) {
                *newest = record.offset;
                continue;
            }
            self.newest.insert(Box::from(&key[..]), record.offset);
            self.bytes += entry_bytes(&key);
            // Over budget: the largest keys leave, and the pass's range ends below them (a
            // later pass takes them). The smallest key always stays, so every pass covers
            // at least one key and the passes end.
            while self.bytes > self.bytes_max && self.newest.len() > 1 {
                let (largest, _) = self.newest.pop_last().expect("more than one key");
                self.bytes -= entry_bytes(&largest);
                self.until = Some(largest);
            }
            assert!(
                self.bytes <= self.bytes_max || self.newest.len() == 1,
                "the key index outgrew its budget"
            );
        }
        Ok(())
    }

    /// Whether `key` is in this pass's range.
    fn covers(&self, key: &[u8]) -> bool {
        key >= &self.from[..] && self.until.as_deref().is_none_or(|until| key < until)
    }

    /// The empty index of the pass after this one (once this one has observed every batch
    /// below the decision's offset): the keys from where this pass's range ended. `None`
    /// when this pass's range had no end, so every key has had its pass.
    pub fn next_pass(&self) -> Option<KeyIndex> {
        let from = self.until.clone()?;
        assert!(
            self.newest.keys().all(|key| key[..] < from[..]),
            "a pass's range ends above its keys"
        );
        Some(KeyIndex {
            below: self.below,
            from,
            until: None,
            newest: BTreeMap::new(),
            bytes: 0,
            bytes_max: self.bytes_max,
            pass: self.pass + 1,
        })
    }

    /// Which pass of its job this index serves, from 1.
    pub fn pass(&self) -> u32 {
        self.pass
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }

    /// What the keys held cost, by the estimate the budget is counted in.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One pass's rewrite of one batch: `Ok(None)` when the batch stays as it is, else the batch
/// rewritten with only the records the decision keeps (see the module comment). `index`
/// must have observed every batch below the decision's offset.
pub fn compact_batch(
    batch: &RecordBatch,
    decision: &CompactionDecision,
    index: &KeyIndex,
) -> Result<Option<RecordBatch>, CompactionError> {
    if batch.header().is_control() || batch.base_offset() >= decision.below {
        return Ok(None);
    }
    assert_eq!(
        index.below, decision.below,
        "the key index was built for another decision"
    );
    batch
        .retain(|record| keeps(record, decision, index))
        .map_err(|source| CompactionError::Batch {
            offset: batch.base_offset(),
            source,
        })
}

fn keeps(
    record: &crate::batch::RecordView,
    decision: &CompactionDecision,
    index: &KeyIndex,
) -> bool {
    if record.offset >= decision.below {
        return true;
    }
    // Every pass removes keyless records: the first does it, the rest find none.
    let Some(key) = &record.key else {
        return false;
    };
    if !index.covers(key) {
        return true;
    }
    if index.newest.get(&key[..]) != Some(&record.offset) {
        return false;
    }
    record.value.is_some() || record.timestamp_ms >= decision.tombstone_cutoff_ms
}

/// One pass over a whole log prefix held in memory: `index` (empty, for this pass) observes
/// every batch, then each batch is rewritten. The log after the pass, every batch in place.
pub fn compact_log_pass(
    batches: &[RecordBatch],
    decision: &CompactionDecision,
    index: &mut KeyIndex,
) -> Result<Vec<RecordBatch>, CompactionError> {
    for batch in batches {
        index.observe(batch)?;
    }
    batches
        .iter()
        .map(|batch| Ok(compact_batch(batch, decision, index)?.unwrap_or_else(|| batch.clone())))
        .collect()
}

/// Every pass over a whole log prefix held in memory (for tests, the chaos checker and small
/// logs), each pass's index within `index_bytes_max`: the log as it is after `decision`,
/// every batch in place (rewritten or not). The same log for every `index_bytes_max`.
pub fn compact_log(
    batches: &[RecordBatch],
    decision: &CompactionDecision,
    index_bytes_max: usize,
) -> Result<Vec<RecordBatch>, CompactionError> {
    let mut log = batches.to_vec();
    let mut index = KeyIndex::new(decision, index_bytes_max);
    // Bounded: each pass covers at least one key the ones before did not.
    loop {
        log = compact_log_pass(&log, decision, &mut index)?;
        match index.next_pass() {
            Some(next) => index = next,
            None => return Ok(log),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RecordView;
    use crate::compression::Compression;
    use crate::compression::DECOMPRESSED_BYTES_CEILING;
    use crate::ids::Epoch;
    use std::collections::BTreeMap;

    /// An index without a budget: one pass, the reference every budget must match.
    const UNBOUNDED: usize = usize::MAX;

    /// A small deterministic generator (xorshift64*): seeds make failures reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// A log of keyed records, tombstones, a few keyless records and epoch markers, in
    /// batches of every codec, stamped at consecutive offsets, over 8 keys.
    fn random_log(rng: &mut Rng) -> Vec<RecordBatch> {
        random_log_over(rng, 8)
    }

    /// Key `n` of a random log: lengths vary, byte order is not number order, and key 0 is
    /// the empty key (the smallest there is).
    fn key_of(n: u64) -> String {
        if n == 0 {
            return String::new();
        }
        format!("{}{n}", "k".repeat((n % 7) as usize))
    }

    /// [`random_log`] over `keys` keys.
    fn random_log_over(rng: &mut Rng, keys: u64) -> Vec<RecordBatch> {
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let mut batches = Vec::new();
        let mut next = Offset(0);
        let mut epoch = Epoch(1);
        let mut clock_ms = 1_000_000i64;
        for _ in 0..rng.below(30) + 1 {
            let batch = if rng.below(10) == 0 {
                epoch = Epoch(epoch.0 + 1);
                RecordBatchBuilder::control_marker(clock_ms)
            } else {
                let mut builder = RecordBatchBuilder::new(clock_ms);
                if rng.below(3) == 0 {
                    builder = builder.producer(7, 0, next.0 as i32);
                }
                for _ in 0..rng.below(6) + 1 {
                    clock_ms += rng.below(50) as i64;
                    let key = key_of(rng.below(keys));
                    let mut record = match rng.below(7) {
                        0 => Record::tombstone(key),
                        1 => Record::new(format!("keyless at {clock_ms}")),
                        _ => {
                            Record::new(format!("value {} at {clock_ms}", rng.next())).with_key(key)
                        }
                    };
                    record.timestamp_ms = Some(clock_ms);
                    builder.push(&record);
                }
                builder.build_compressed(codecs[rng.below(5) as usize])
            };
            let batch = batch.stamped(next, epoch);
            next = batch.next_offset();
            batches.push(batch);
        }
        batches
    }

    fn random_decision(rng: &mut Rng, log: &[RecordBatch]) -> CompactionDecision {
        let end = log.last().map_or(0, |batch| batch.next_offset().0);
        CompactionDecision {
            below: Offset(rng.below(end + 2)),
            tombstone_cutoff_ms: 1_000_000 + rng.below(3_000) as i64,
        }
    }

    /// (offset, key, value) of every data record, in offset order.
    type Entry = (Offset, Option<Bytes>, Option<Bytes>);

    fn entries(log: &[RecordBatch]) -> Vec<Entry> {
        records(log)
            .into_iter()
            .map(|record| (record.offset, record.key, record.value))
            .collect()
    }

    fn records(log: &[RecordBatch]) -> Vec<RecordView> {
        log.iter()
            .filter(|batch| !batch.header().is_control())
            .flat_map(|batch| batch.records().map(Result::unwrap).collect::<Vec<_>>())
            .collect()
    }

    /// The model: below the decision's offset, the latest record per key (a map), less
    /// expired tombstones and keyless records; at or above it, everything.
    fn model(log: &[RecordBatch], decision: &CompactionDecision) -> Vec<Entry> {
        let all = records(log);
        let mut latest: BTreeMap<Bytes, RecordView> = BTreeMap::new();
        for record in all.iter().filter(|record| record.offset < decision.below) {
            if let Some(key) = &record.key {
                latest.insert(key.clone(), record.clone());
            }
        }
        let mut kept: Vec<Entry> = latest
            .into_values()
            .filter(|record| {
                record.value.is_some() || record.timestamp_ms >= decision.tombstone_cutoff_ms
            })
            .map(|record| (record.offset, record.key, record.value))
            .collect();
        kept.extend(
            all.into_iter()
                .filter(|record| record.offset >= decision.below)
                .map(|record| (record.offset, record.key, record.value)),
        );
        kept.sort_by_key(|entry| entry.0);
        kept
    }

    #[test]
    fn compaction_keeps_what_the_latest_value_per_key_model_keeps() {
        for seed in 1..=400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let log = random_log(&mut rng);
            let decision = random_decision(&mut rng, &log);
            let compacted = compact_log(&log, &decision, UNBOUNDED).unwrap();
            assert_eq!(entries(&compacted), model(&log, &decision), "seed {seed}");
            assert_eq!(compacted.len(), log.len(), "seed {seed}: a batch vanished");
            for (before, after) in log.iter().zip(&compacted) {
                let (b, a) = (before.header(), after.header());
                assert_eq!(
                    (b.base_offset, b.last_offset_delta, b.leader_epoch),
                    (a.base_offset, a.last_offset_delta, a.leader_epoch),
                    "seed {seed}: offsets or epoch moved"
                );
                assert_eq!(
                    (b.producer_id, b.producer_epoch, b.base_sequence),
                    (a.producer_id, a.producer_epoch, a.base_sequence),
                    "seed {seed}: the producer stamp changed"
                );
                assert_eq!(
                    (b.first_timestamp_ms, b.max_timestamp_ms),
                    (a.first_timestamp_ms, a.max_timestamp_ms)
                );
                // What followers and consumers check accepts every rewritten batch.
                RecordBatch::validate_from_log_bounded(
                    after.bytes().clone(),
                    DECOMPRESSED_BYTES_CEILING,
                )
                .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
                if !after.is_dense() {
                    assert!(
                        RecordBatch::validate(after.bytes().clone()).is_err(),
                        "seed {seed}: a produced batch may not have gaps"
                    );
                }
            }
        }
    }

    #[test]
    fn compaction_is_idempotent() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let log = random_log(&mut rng);
            let decision = random_decision(&mut rng, &log);
            let once = compact_log(&log, &decision, UNBOUNDED).unwrap();
            let twice = compact_log(&once, &decision, UNBOUNDED).unwrap();
            assert_eq!(once, twice, "seed {seed}");
        }
    }

    /// Replicas that applied a smaller decision first (or crashed in the middle of one, which
    /// leaves a mix of rewritten and original batches) reach the same bytes as a replica that
    /// applied only the larger one.
    #[test]
    fn compaction_is_monotone_so_replicas_converge() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed ^ 0x5151_5151);
            let log = random_log(&mut rng);
            let first = random_decision(&mut rng, &log);
            let second = first.merge(random_decision(&mut rng, &log));
            let direct = compact_log(&log, &second, UNBOUNDED).unwrap();
            let stepwise = compact_log(
                &compact_log(&log, &first, UNBOUNDED).unwrap(),
                &second,
                UNBOUNDED,
            )
            .unwrap();
            assert_eq!(direct, stepwise, "seed {seed}");
            // A crash after some batches of `first` were rewritten.
            let partly = compact_log(&log, &first, UNBOUNDED).unwrap();
            let cut = rng.below(log.len() as u64 + 1) as usize;
            let torn: Vec<RecordBatch> = partly[..cut].iter().chain(&log[cut..]).cloned().collect();
            assert_eq!(
                compact_log(&torn, &second, UNBOUNDED).unwrap(),
                direct,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn tombstones_go_only_after_their_cutoff_and_take_older_values_with_them() {
        let mut builder = RecordBatchBuilder::new(100);
        builder.push(&Record::new("v1").with_key("a").with_timestamp_ms(100));
        builder.push(&Record::new("v1").with_key("b").with_timestamp_ms(101));
        builder.push(&Record::tombstone("a").with_timestamp_ms(102));
        builder.push(&Record::new("v2").with_key("b").with_timestamp_ms(103));
        let log = vec![builder.build().stamped(Offset(10), Epoch(1))];
        let keep_tombstone = CompactionDecision {
            below: Offset(14),
            tombstone_cutoff_ms: 102,
        };
        let kept = compact_log(&log, &keep_tombstone, UNBOUNDED).unwrap();
        assert_eq!(
            entries(&kept),
            vec![
                (Offset(12), Some(Bytes::from("a")), None),
                (Offset(13), Some(Bytes::from("b")), Some(Bytes::from("v2"))),
            ]
        );
        let expire = CompactionDecision {
            tombstone_cutoff_ms: 103,
            ..keep_tombstone
        };
        let expired = compact_log(&kept, &expire, UNBOUNDED).unwrap();
        assert_eq!(
            entries(&expired),
            vec![(Offset(13), Some(Bytes::from("b")), Some(Bytes::from("v2")))]
        );
        assert_eq!(expired[0].header().last_offset(), Offset(13));
        // Nothing below the decision's offset: nothing changes.
        let none = CompactionDecision {
            below: Offset(10),
            tombstone_cutoff_ms: i64::MAX,
        };
        assert_eq!(compact_log(&log, &none, UNBOUNDED).unwrap(), log);
    }

    #[test]
    fn an_emptied_batch_keeps_its_header_and_validates() {
        let mut builder = RecordBatchBuilder::new(5).producer(9, 1, 40);
        builder.push(&Record::new("old").with_key("k").with_timestamp_ms(5));
        builder.push(&Record::new("old").with_key("k").with_timestamp_ms(6));
        let first = builder
            .build_compressed(Compression::Gzip)
            .stamped(Offset(0), Epoch(2));
        let mut builder = RecordBatchBuilder::new(7);
        builder.push(&Record::new("new").with_key("k").with_timestamp_ms(7));
        let second = builder.build().stamped(Offset(2), Epoch(2));
        let decision = CompactionDecision {
            below: Offset(3),
            tombstone_cutoff_ms: 0,
        };
        let compacted =
            compact_log(&[first.clone(), second.clone()], &decision, UNBOUNDED).unwrap();
        let emptied = &compacted[0];
        assert_eq!(emptied.record_count(), 0);
        assert_eq!(emptied.next_offset(), Offset(2));
        assert_eq!(
            emptied.header().last_sequence(),
            first.header().last_sequence()
        );
        assert_eq!(emptied.compression(), Ok(Compression::None));
        assert_eq!(emptied.records().count(), 0);
        assert!(RecordBatch::validate_from_log(emptied.bytes().clone()).is_ok());
        assert_eq!(
            RecordBatch::validate(emptied.bytes().clone()),
            Err(BatchError::Empty)
        );
        assert_eq!(compacted[1], second);
    }

    #[test]
    fn a_damaged_batch_is_refused_before_anything_is_rewritten() {
        let mut builder = RecordBatchBuilder::new(5);
        builder.push(&Record::new("v").with_key("k"));
        builder.push(&Record::new("w").with_key("k"));
        let batch = builder.build();
        let mut bytes = batch.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let damaged = RecordBatch::from_trusted(Bytes::from(bytes)).unwrap();
        let decision = CompactionDecision {
            below: Offset(2),
            tombstone_cutoff_ms: 0,
        };
        assert!(matches!(
            compact_log(&[damaged], &decision, UNBOUNDED),
            Err(CompactionError::Batch {
                source: BatchError::ChecksumMismatch { .. },
                ..
            })
        ));
        // A budget too small for even one key still compacts (one key a pass).
        assert_eq!(
            entries(&compact_log(&[batch], &decision, 0).unwrap()),
            vec![(Offset(1), Some(Bytes::from("k")), Some(Bytes::from("w")))]
        );
    }

    #[test]
    fn decisions_round_trip_through_their_marker_and_merge_upwards() {
        let decision = CompactionDecision {
            below: Offset(1234),
            tombstone_cutoff_ms: -5,
        };
        let marker = decision.marker(99).stamped(Offset(2000), Epoch(3));
        assert!(marker.header().is_control());
        let marker = RecordBatch::validate(marker.into_bytes()).unwrap();
        assert_eq!(CompactionDecision::from_batch(&marker), Some(decision));
        assert_eq!(
            CompactionDecision::from_batch(&RecordBatchBuilder::control_marker(1)),
            None
        );
        let later = CompactionDecision {
            below: Offset(1000),
            tombstone_cutoff_ms: 7,
        };
        let merged = CompactionDecision {
            below: Offset(1234),
            tombstone_cutoff_ms: 7,
        };
        assert_eq!(decision.merge(later), merged);
        assert_eq!(later.merge(decision), merged);
    }

    /// What one key of `length` bytes costs an index, for budgets that hold a few keys.
    fn entry_cost(length: usize) -> usize {
        length + INDEX_ENTRY_OVERHEAD_BYTES
    }

    /// [`compact_log`] pass by pass: the log and how many passes it took, checking after
    /// each pass that the index kept within its budget (or held a single key).
    fn in_passes(
        log: &[RecordBatch],
        decision: &CompactionDecision,
        budget: usize,
    ) -> (Vec<RecordBatch>, u32) {
        let mut log = log.to_vec();
        let mut index = KeyIndex::new(decision, budget);
        for _ in 0..10_000 {
            log = compact_log_pass(&log, decision, &mut index).unwrap();
            assert!(index.bytes() <= budget || index.len() == 1);
            match index.next_pass() {
                Some(next) => index = next,
                None => return (log, index.pass()),
            }
        }
        panic!("the passes did not end");
    }

    /// Budgets from none at all (one key a pass) to a few keys a pass.
    fn small_budgets(rng: &mut Rng) -> [usize; 5] {
        [
            0,
            entry_cost(2),
            entry_cost(3) * 3,
            entry_cost(4) * 7,
            entry_cost(0) * (1 + rng.below(12) as usize),
        ]
    }

    /// The property that keeps replicas identical whatever their memory: a log compacted in
    /// passes under any budget is byte for byte the log one unbounded pass gives, which is
    /// the model's; and compacting it again, under any budget, changes nothing.
    #[test]
    fn compaction_in_passes_under_any_budget_gives_the_single_pass_log() {
        let mut passes_seen = BTreeMap::new();
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xbeef);
            let log = random_log_over(&mut rng, 40);
            let decision = random_decision(&mut rng, &log);
            let single = compact_log(&log, &decision, UNBOUNDED).unwrap();
            assert_eq!(entries(&single), model(&log, &decision), "seed {seed}");
            for budget in small_budgets(&mut rng) {
                let (passed, passes) = in_passes(&log, &decision, budget);
                assert_eq!(passed, single, "seed {seed}, budget {budget}");
                assert_eq!(
                    compact_log(&log, &decision, budget).unwrap(),
                    single,
                    "seed {seed}, budget {budget}"
                );
                *passes_seen.entry(passes.min(16)).or_insert(0u32) += 1;
                let again = small_budgets(&mut rng)[rng.below(5) as usize];
                assert_eq!(
                    compact_log(&passed, &decision, again).unwrap(),
                    passed,
                    "seed {seed}: not idempotent under budget {again}"
                );
            }
        }
        // The budgets did split the key space, into few and into many passes.
        for passes in [1, 2, 4, 8, 16] {
            assert!(
                passes_seen.contains_key(&passes),
                "no job took {passes} passes: {passes_seen:?}"
            );
        }
    }

    /// A job stopped by a crash after some passes, in the middle of the next one (some of its
    /// batches rewritten, the rest not), then run again in full under another budget, or
    /// overtaken by a larger decision, gives the log the decision alone gives.
    #[test]
    fn passes_cut_short_then_run_again_give_the_single_pass_log() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed ^ 0x0dd_ba11);
            let log = random_log_over(&mut rng, 30);
            let first = random_decision(&mut rng, &log);
            let second = first.merge(random_decision(&mut rng, &log));
            let budget = small_budgets(&mut rng)[rng.below(5) as usize];
            // Some whole passes, then part of the next one, if there is a next one.
            let mut index = Some(KeyIndex::new(&first, budget));
            let mut torn = log.clone();
            for _ in 0..rng.below(6) {
                let Some(mut pass) = index.take() else {
                    break;
                };
                torn = compact_log_pass(&torn, &first, &mut pass).unwrap();
                index = pass.next_pass();
            }
            if let Some(mut pass) = index {
                let interrupted = compact_log_pass(&torn, &first, &mut pass).unwrap();
                let cut = rng.below(log.len() as u64 + 1) as usize;
                torn = interrupted[..cut]
                    .iter()
                    .chain(&torn[cut..])
                    .cloned()
                    .collect();
            }
            let again = small_budgets(&mut rng)[rng.below(5) as usize];
            assert_eq!(
                entries(&compact_log(&torn, &first, again).unwrap()),
                entries(&compact_log(&log, &first, UNBOUNDED).unwrap()),
                "seed {seed}: the same decision again, budgets {budget} then {again}"
            );
            assert_eq!(
                compact_log(&torn, &first, again).unwrap(),
                compact_log(&log, &first, UNBOUNDED).unwrap(),
                "seed {seed}: the same decision again"
            );
            assert_eq!(
                compact_log(&torn, &second, again).unwrap(),
                compact_log(&log, &second, UNBOUNDED).unwrap(),
                "seed {seed}: a larger decision"
            );
        }
    }

    /// An index over budget keeps the smallest keys it met and drops the largest (whatever
    /// order they came in); the next pass starts at the smallest key it dropped; a key
    /// larger than the whole budget gets a pass of its own.
    #[test]
    fn an_index_over_budget_keeps_its_smallest_keys_and_the_next_pass_takes_the_rest() {
        let mut builder = RecordBatchBuilder::new(1);
        for key in ["e", "a", "d", "b", "a", "c"] {
            builder.push(&Record::new("v").with_key(key));
        }
        let big = "x".repeat(1_000);
        builder.push(&Record::new("v").with_key(big.clone()));
        let log = vec![builder.build().stamped(Offset(0), Epoch(1))];
        let decision = CompactionDecision {
            below: Offset(7),
            tombstone_cutoff_ms: 0,
        };
        let mut index = KeyIndex::new(&decision, entry_cost(1) * 2);
        index.observe(&log[0]).unwrap();
        assert_eq!(
            index.newest.iter().collect::<Vec<_>>(),
            vec![
                (&Box::<[u8]>::from(&b"a"[..]), &Offset(4)),
                (&Box::<[u8]>::from(&b"b"[..]), &Offset(3)),
            ]
        );
        assert_eq!(index.bytes(), entry_cost(1) * 2);
        let mut next = index.next_pass().unwrap();
        assert_eq!((next.pass(), &next.from[..]), (2, &b"c"[..]));
        next.observe(&log[0]).unwrap();
        assert_eq!(next.len(), 2, "c and d");
        let mut third = next.next_pass().unwrap();
        third.observe(&log[0]).unwrap();
        assert_eq!(
            third.len(),
            1,
            "e alone: the big key is over budget beside it"
        );
        let mut fourth = third.next_pass().unwrap();
        fourth.observe(&log[0]).unwrap();
        assert_eq!(fourth.len(), 1);
        assert_eq!(fourth.bytes(), entry_cost(big.len()));
        assert!(fourth.next_pass().is_none(), "the big key was the last");
        let (compacted, passes) = in_passes(&log, &decision, entry_cost(1) * 2);
        assert_eq!(passes, 4);
        assert_eq!(compacted, compact_log(&log, &decision, UNBOUNDED).unwrap());
        assert_eq!(compacted[0].record_count(), 6, "only the first a went");
    }

    /// Keys arriving largest first (every new key would evict under a small budget) still
    /// take one pass per budget's worth of keys, each pass the next keys in byte order.
    #[test]
    fn keys_in_descending_order_take_one_pass_per_budget_of_keys() {
        let keys: Vec<String> = (0..200).rev().map(|n| format!("key-{n:03}")).collect();
        let mut log = Vec::new();
        let mut next = Offset(0);
        for round in 0..2 {
            for chunk in keys.chunks(9) {
                let mut builder = RecordBatchBuilder::new(1);
                for key in chunk {
                    builder.push(&Record::new(format!("{key} {round}")).with_key(key.clone()));
                }
                let batch = builder.build().stamped(next, Epoch(1));
                next = batch.next_offset();
                log.push(batch);
            }
        }
        let decision = CompactionDecision {
            below: next,
            tombstone_cutoff_ms: 0,
        };
        let (compacted, passes) = in_passes(&log, &decision, entry_cost(7) * 3);
        assert_eq!(passes, 67, "200 keys, 3 a pass");
        let single = compact_log(&log, &decision, UNBOUNDED).unwrap();
        assert_eq!(compacted, single);
        assert_eq!(entries(&single).len(), 200);
        assert!(entries(&single)
            .iter()
            .all(|(_, _, value)| value.as_ref().is_some_and(|value| value.ends_with(b" 1"))));
    }

    /// Found by `passes_cut_short_then_run_again_give_the_single_pass_log` (seed 34): an LZ4
    /// batch rewritten in two steps was stored plain after the first (its compressed records
    /// were not smaller) and stayed plain, while one step compressed it: the same records in
    /// different bytes, so replicas that compacted along different paths differed. A
    /// rewrite now depends only on the original batch and the records kept.
    #[test]
    fn a_batch_rewritten_in_two_steps_has_the_bytes_of_one_step() {
        let codecs = [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        for seed in 1..=2_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 7);
            let mut builder = RecordBatchBuilder::new(1_000);
            let count = rng.below(8) + 2;
            for index in 0..count {
                // Random values compress badly, repeated ones well: some sets of kept
                // records shrink when compressed, some do not.
                let value = if rng.below(2) == 0 {
                    format!("{:x}", rng.next())
                } else {
                    "v".repeat(rng.below(40) as usize)
                };
                builder.push(&Record::new(value).with_key(format!("k{index}")));
            }
            let batch = builder
                .build_compressed(codecs[rng.below(4) as usize])
                .stamped(Offset(0), Epoch(1));
            let first: Vec<bool> = (0..count).map(|_| rng.below(4) != 0).collect();
            let second: Vec<bool> = first
                .iter()
                .map(|kept| *kept && rng.below(2) == 0)
                .collect();
            let keep = |mask: &[bool]| {
                let mask = mask.to_vec();
                move |record: &RecordView| mask[record.offset.0 as usize]
            };
            let once = batch
                .retain(keep(&second))
                .unwrap()
                .unwrap_or(batch.clone());
            let step = batch.retain(keep(&first)).unwrap().unwrap_or(batch.clone());
            let twice = step.retain(keep(&second)).unwrap().unwrap_or(step.clone());
            assert_eq!(twice, once, "seed {seed}");
        }
    }
}
