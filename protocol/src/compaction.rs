//! Log compaction as a pure function: which records of a log prefix a compacted topic keeps.
//!
//! A partition leader *decides* a compaction and replicates the decision as a control batch
//! (a [`CompactionDecision`] marker, which consumers skip like the epoch marker). Every
//! replica applies a decision once the marker is committed, with this module's functions:
//!
//! 1. [`KeyIndex::observe`] over the batches below the decision's offset (the first pass):
//!    the newest offset of every key there.
//! 2. [`compact_batch`] over the same batches (the second pass): each batch keeps the records
//!    that are the newest of their key below the offset, minus tombstones older than the
//!    decision's cutoff, minus records without a key (which a compacted topic does not
//!    accept; they were written before the topic became compacted). Records at or above the
//!    offset and control batches are never touched.
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
use std::collections::HashMap;

/// The control record key of a decision: Kafka's control key version 0, type 2
/// (LEADER_CHANGE), as the epoch marker has, so Kafka clients skip it the same way.
const DECISION_KEY: [u8; 4] = crate::batch::CONTROL_KEY_LEADER_CHANGE;
/// What tells a decision's value from an epoch marker's.
const DECISION_MAGIC: &[u8; 8] = b"compact1";
const DECISION_VALUE_BYTES: usize = 8 + 8 + 8;

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
    /// The first pass met more distinct keys than it may hold in memory.
    #[error("more than {keys_max} distinct keys below the compaction offset")]
    TooManyKeys { keys_max: usize },
}

/// The first pass: the newest offset of each key below a decision's offset.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    below: Offset,
    newest: HashMap<Bytes, Offset>,
    keys_max: usize,
}

impl KeyIndex {
    /// An empty index for `decision`, refusing to hold more than `keys_max` keys.
    pub fn new(decision: &CompactionDecision, keys_max: usize) -> KeyIndex {
        KeyIndex {
            below: decision.below,
            newest: HashMap::new(),
            keys_max,
        }
    }

    /// Notes the keys of `batch`'s records below the decision's offset. Batches must come in
    /// offset order (a later record of a key replaces an earlier one).
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
            if !self.newest.contains_key(&key) && self.newest.len() >= self.keys_max {
                return Err(CompactionError::TooManyKeys {
                    keys_max: self.keys_max,
                });
            }
            self.newest.insert(key, record.offset);
        }
        Ok(())
    }

    /// Distinct keys seen.
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

/// The second pass over one batch: `Ok(None)` when the batch stays as it is, else the batch
/// rewritten with only the records the decision keeps (see the module comment).
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
    let Some(key) = &record.key else {
        return false;
    };
    if index.newest.get(key) != Some(&record.offset) {
        return false;
    }
    record.value.is_some() || record.timestamp_ms >= decision.tombstone_cutoff_ms
}

/// Both passes over a whole log prefix held in memory (for tests and small logs): the log as
/// it is after `decision`, every batch in place (rewritten or not).
pub fn compact_log(
    batches: &[RecordBatch],
    decision: &CompactionDecision,
    keys_max: usize,
) -> Result<Vec<RecordBatch>, CompactionError> {
    let mut index = KeyIndex::new(decision, keys_max);
    for batch in batches {
        index.observe(batch)?;
    }
    batches
        .iter()
        .map(|batch| Ok(compact_batch(batch, decision, &index)?.unwrap_or_else(|| batch.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RecordView;
    use crate::compression::Compression;
    use crate::compression::DECOMPRESSED_BYTES_CEILING;
    use crate::ids::Epoch;
    use std::collections::BTreeMap;

    const KEYS_MAX: usize = 1 << 16;

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
    /// batches of every codec, stamped at consecutive offsets.
    fn random_log(rng: &mut Rng) -> Vec<RecordBatch> {
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
                    let key = format!("key-{}", rng.below(8));
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
            let compacted = compact_log(&log, &decision, KEYS_MAX).unwrap();
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
            let once = compact_log(&log, &decision, KEYS_MAX).unwrap();
            let twice = compact_log(&once, &decision, KEYS_MAX).unwrap();
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
            let direct = compact_log(&log, &second, KEYS_MAX).unwrap();
            let stepwise = compact_log(
                &compact_log(&log, &first, KEYS_MAX).unwrap(),
                &second,
                KEYS_MAX,
            )
            .unwrap();
            assert_eq!(direct, stepwise, "seed {seed}");
            // A crash after some batches of `first` were rewritten.
            let partly = compact_log(&log, &first, KEYS_MAX).unwrap();
            let cut = rng.below(log.len() as u64 + 1) as usize;
            let torn: Vec<RecordBatch> = partly[..cut].iter().chain(&log[cut..]).cloned().collect();
            assert_eq!(
                compact_log(&torn, &second, KEYS_MAX).unwrap(),
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
        let kept = compact_log(&log, &keep_tombstone, KEYS_MAX).unwrap();
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
        let expired = compact_log(&kept, &expire, KEYS_MAX).unwrap();
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
        assert_eq!(compact_log(&log, &none, KEYS_MAX).unwrap(), log);
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
        let compacted = compact_log(&[first.clone(), second.clone()], &decision, KEYS_MAX).unwrap();
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
            compact_log(&[damaged], &decision, KEYS_MAX),
            Err(CompactionError::Batch {
                source: BatchError::ChecksumMismatch { .. },
                ..
            })
        ));
        assert_eq!(
            compact_log(&[batch], &decision, 0),
            Err(CompactionError::TooManyKeys { keys_max: 0 })
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
}
