//! Idempotent producers (DESIGN section 6): what one partition replica remembers of each
//! producer id, so that its leader writes a retried batch once.
//!
//! The state is derived from the log: every batch header carries the producer id, epoch and
//! first sequence (inside the checksum), and every replica records each batch it appends,
//! leader or follower. So the state travels with the log, survives a leader change without
//! any message of its own, and is cut back with the log on truncation. A replica also keeps a
//! snapshot of it with the log ([`Producers::encode_snapshot`], Kafka's producer snapshot
//! files): after a restart the state is the snapshot plus the headers of the batches written
//! after it ([`crate::Replica::recover_producers`]), whatever the log's length, so a producer
//! is not forgotten because many other batches were written since its last one.
//!
//! Per producer id it keeps the epoch and the last [`PRODUCER_BATCHES_KEPT`] batches (their
//! sequence ranges and offsets), as Kafka does: a producer keeps at most that many batches in
//! flight per partition, so a retry always finds its first attempt here if it was written.
//!
//! The rules, Kafka's (`ProducerStateManager`), for a batch of producer `p`, epoch `e`:
//!
//! - `p` unknown here: accepted from sequence 0 (a new producer, or a new incarnation), and
//!   refused with `UnknownProducerId` at any other sequence (Kafka before KIP-360 answers the
//!   same; after it, `OutOfOrderSequence` with an epoch bump by the client). Accepting it, as
//!   this did, let a retry of a batch written long ago be written twice. The refusal is not
//!   retriable, so a client fails the batch instead of retrying it forever. A producer is
//!   unknown only if it never wrote here, or was evicted past [`PRODUCERS_MAX`].
//! - `e` below the known epoch: fenced, `InvalidProducerEpoch`.
//! - `e` above the known epoch: a new incarnation; accepted only from sequence 0.
//! - same epoch, same sequence range as a kept batch: a duplicate, answered with that
//!   batch's offsets and not appended.
//! - same epoch, first sequence right after the newest batch's last: appended.
//! - anything else: `OutOfOrderSequence` (an earlier batch is missing), nothing appended.

use cairn_protocol::batch::{sequence_after, BatchHeader};
use cairn_protocol::{ApiError, Offset};
use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer: Kafka's window, and the most batches an idempotent
/// producer keeps in flight per partition.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Producer ids remembered per partition. Past it, the producer whose newest batch is oldest
/// in the log is forgotten (it is then treated as unknown: accepted whatever its sequence).
pub const PRODUCERS_MAX: usize = 10_000;

/// Version byte of [`Producers::encode_snapshot`].
const SNAPSHOT_VERSION: u8 = 1;

/// Why stored snapshot bytes could not be read back. The caller then rebuilds the state from
/// the log's tail instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("producer snapshot version {0} is not supported")]
    Version(u8),
    #[error("producer snapshot ends early")]
    Truncated,
    #[error("producer snapshot is malformed: {0}")]
    Malformed(&'static str),
}

/// Big-endian fields off the front of a byte slice, each length checked.
struct SnapshotReader<'a> {
    bytes: &'a [u8],
}

impl SnapshotReader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(SnapshotError::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, SnapshotError> {
        Ok(i16::from_be_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, SnapshotError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
}

/// One batch of a producer, as the log holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: Offset,
    /// The offset right after the batch.
    pub next_offset: Offset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first; at most [`PRODUCER_BATCHES_KEPT`]. Empty only after a truncation cut
    /// every kept batch: the producer is still known, and resumes at `next_sequence`.
    batches: VecDeque<ProducerBatch>,
    /// The first sequence of the producer's next batch in this epoch.
    next_sequence: i32,
    /// The end of the producer's newest batch in the log (which producer is stalest).
    last_offset: Offset,
}

/// What the leader should do with a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New: stamp and append it.
    Append,
    /// Written before, at these offsets: answer with them, append nothing.
    Duplicate(ProducerBatch),
}

/// The producer state of one partition replica. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producers {
    entries: HashMap<i64, ProducerEntry>,
}

impl Producers {
    /// Producer ids remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The epoch and kept batches of `producer_id`, oldest first (for tests and describe).
    pub fn batches_of(&self, producer_id: i64) -> Option<(i16, Vec<ProducerBatch>)> {
        self.entries
            .get(&producer_id)
            .map(|entry| (entry.epoch, entry.batches.iter().copied().collect()))
    }

    /// Decides, without changing anything, whether a leader appends the (unstamped) batch.
    pub fn check(&self, header: &BatchHeader) -> Result<Admission, ApiError> {
        if !header.has_producer() {
            return Ok(Admission::Append);
        }
        let received = header.base_sequence;
        let Some(entry) = self.entries.get(&header.producer_id) else {
            return if received == 0 {
                Ok(Admission::Append)
            } else {
                Err(ApiError::UnknownProducerId {
                    producer_id: header.producer_id,
                    received,
                })
            };
        };
        if header.producer_epoch < entry.epoch {
            return Err(ApiError::InvalidProducerEpoch {
                producer_id: header.producer_id,
                current: entry.epoch,
                received: header.producer_epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if received == 0 {
                Ok(Admission::Append)
            } else {
                Err(ApiError::OutOfOrderSequence {
                    producer_id: header.producer_id,
                    expected: 0,
                    received,
                })
            };
        }
        let last_sequence = header.last_sequence();
        if let Some(written) = entry
            .batches
            .iter()
            .find(|batch| batch.first_sequence == received && batch.last_sequence == last_sequence)
        {
            return Ok(Admission::Duplicate(*written));
        }
        let expected = entry.next_sequence;
        if received == expected {
            Ok(Admission::Append)
        } else {
            Err(ApiError::OutOfOrderSequence {
                producer_id: header.producer_id,
                expected,
                received,
            })
        }
    }

    /// Records a stamped batch now in the log (appended by a leader or a follower, or read
    /// back on recovery), in offset order. The log is the authority: whatever it holds is
    /// recorded, checked or not.
    pub fn record(&mut self, header: &BatchHeader) {
        if !header.has_producer() {
            return;
        }
        let batch = ProducerBatch {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
        };
        if !self.entries.contains_key(&header.producer_id) && self.entries.len() >= PRODUCERS_MAX {
            self.evict_oldest();
        }
        let entry = self
            .entries
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_KEPT),
                next_sequence: 0,
                last_offset: Offset::ZERO,
            });
        if entry.epoch != header.producer_epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.next_sequence = sequence_after(batch.last_sequence, 1);
        entry.last_offset = batch.next_offset;
        entry.batches.push_back(batch);
        while entry.batches.len() > PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
    }

    /// The log lost every batch at or above `from`: so does the state. A producer whose
    /// batches were all cut stays known, expecting the first cut sequence again (the retry
    /// of the cut batch); one that first wrote in the cut part is forgotten.
    pub fn truncate(&mut self, from: Offset) {
        self.entries.retain(|_, entry| {
            if entry.last_offset <= from {
                return true;
            }
            while let Some(batch) = entry.batches.back().copied() {
                if batch.base_offset < from {
                    break;
                }
                entry.batches.pop_back();
                entry.next_sequence = batch.first_sequence;
                entry.last_offset = batch.base_offset;
            }
            // Every kept batch was cut and the first of them began the epoch's sequence: the
            // producer's first batch here was cut too.
            !(entry.batches.is_empty() && entry.next_sequence == 0)
        });
    }

    /// Forgets every producer: the log was reset to a later start (a leader's log start), so
    /// the batches that told their state are gone, and not because they were uncommitted.
    /// [`Producers::truncate`] would keep a producer expecting its cut batch's sequence, as a
    /// truncated suffix is written again; a reset's batches never come back.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The state as bytes, for the log's metadata: written when the log ends at `through`
    /// (every batch below it recorded, none above). Big-endian, versioned:
    /// `version u8, through u64, count u32`, then per producer `id i64, epoch i16,
    /// next_sequence i32, last_offset u64, batches u8` and per batch `first_sequence i32,
    /// last_sequence i32, base_offset u64, next_offset u64`. Producers in id order, so equal
    /// states give equal bytes.
    pub fn encode_snapshot(&self, through: Offset) -> Vec<u8> {
        let mut ids: Vec<&i64> = self.entries.keys().collect();
        ids.sort_unstable();
        let mut bytes = Vec::with_capacity(13 + ids.len() * (27 + 2 * 24));
        bytes.push(SNAPSHOT_VERSION);
        bytes.extend_from_slice(&through.0.to_be_bytes());
        bytes.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let entry = &self.entries[id];
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend_from_slice(&entry.epoch.to_be_bytes());
            bytes.extend_from_slice(&entry.next_sequence.to_be_bytes());
            bytes.extend_from_slice(&entry.last_offset.0.to_be_bytes());
            bytes.push(entry.batches.len() as u8);
            for batch in &entry.batches {
                bytes.extend_from_slice(&batch.first_sequence.to_be_bytes());
                bytes.extend_from_slice(&batch.last_sequence.to_be_bytes());
                bytes.extend_from_slice(&batch.base_offset.0.to_be_bytes());
                bytes.extend_from_slice(&batch.next_offset.0.to_be_bytes());
            }
        }
        bytes
    }

    /// Reads back [`Producers::encode_snapshot`]: the state and the log end it was taken at.
    /// Checks counts and offsets before it builds anything; bad bytes are a typed error.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<(Offset, Producers), SnapshotError> {
        let mut reader = SnapshotReader { bytes };
        let version = reader.u8()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let through = Offset(reader.u64()?);
        let count = reader.u32()? as usize;
        if count > PRODUCERS_MAX {
            return Err(SnapshotError::Malformed(
                "more producers than PRODUCERS_MAX",
            ));
        }
        let mut entries = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = reader.i64()?;
            let epoch = reader.i16()?;
            let next_sequence = reader.i32()?;
            let last_offset = Offset(reader.u64()?);
            let kept = reader.u8()? as usize;
            if kept > PRODUCER_BATCHES_KEPT {
                return Err(SnapshotError::Malformed(
                    "more batches than PRODUCER_BATCHES_KEPT",
                ));
            }
            let mut batches = VecDeque::with_capacity(kept);
            for _ in 0..kept {
                let batch = ProducerBatch {
                    first_sequence: reader.i32()?,
                    last_sequence: reader.i32()?,
                    base_offset: Offset(reader.u64()?),
                    next_offset: Offset(reader.u64()?),
                };
                let after_previous = batches.back().is_none_or(|previous: &ProducerBatch| {
                    previous.next_offset <= batch.base_offset
                });
                if batch.next_offset <= batch.base_offset || !after_previous {
                    return Err(SnapshotError::Malformed("batches out of offset order"));
                }
                batches.push_back(batch);
            }
            if batches
                .back()
                .is_some_and(|batch| batch.next_offset != last_offset)
                || last_offset > through
            {
                return Err(SnapshotError::Malformed(
                    "a producer's last offset is inconsistent",
                ));
            }
            let entry = ProducerEntry {
                epoch,
                batches,
                next_sequence,
                last_offset,
            };
            if entries.insert(id, entry).is_some() {
                return Err(SnapshotError::Malformed("a producer id twice"));
            }
        }
        if !reader.bytes.is_empty() {
            return Err(SnapshotError::Malformed("bytes after the last producer"));
        }
        Ok((through, Producers { entries }))
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_offset)
            .map(|(&producer_id, _)| producer_id);
        if let Some(producer_id) = oldest {
            self.entries.remove(&producer_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
    use cairn_protocol::Epoch;

    /// A batch of `records` records from producer `id`, epoch `epoch`, first sequence `seq`,
    /// stamped at `base`.
    fn produced(id: i64, epoch: i16, seq: i32, records: u32, base: u64) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1).producer(id, epoch, seq);
        for _ in 0..records {
            builder.push(&Record::new("v"));
        }
        builder.build().stamped(Offset(base), Epoch(1))
    }

    fn out_of_order(id: i64, expected: i32, received: i32) -> Result<Admission, ApiError> {
        Err(ApiError::OutOfOrderSequence {
            producer_id: id,
            expected,
            received,
        })
    }

    #[test]
    fn in_sequence_batches_append_and_a_repeat_is_a_duplicate_with_its_offsets() {
        let mut producers = Producers::default();
        let first = produced(7, 0, 0, 3, 10);
        assert_eq!(producers.check(first.header()), Ok(Admission::Append));
        producers.record(first.header());
        let second = produced(7, 0, 3, 2, 13);
        assert_eq!(producers.check(second.header()), Ok(Admission::Append));
        producers.record(second.header());
        assert_eq!(
            producers.check(produced(7, 0, 0, 3, 0).header()),
            Ok(Admission::Duplicate(ProducerBatch {
                first_sequence: 0,
                last_sequence: 2,
                base_offset: Offset(10),
                next_offset: Offset(13),
            }))
        );
        assert_eq!(
            producers.check(produced(7, 0, 3, 2, 0).header()),
            Ok(Admission::Duplicate(ProducerBatch {
                first_sequence: 3,
                last_sequence: 4,
                base_offset: Offset(13),
                next_offset: Offset(15),
            }))
        );
        // A gap, a repeat with another length, and an old sequence are all out of order.
        let before = producers.clone();
        assert_eq!(
            producers.check(produced(7, 0, 6, 1, 0).header()),
            out_of_order(7, 5, 6)
        );
        assert_eq!(
            producers.check(produced(7, 0, 3, 1, 0).header()),
            out_of_order(7, 5, 3)
        );
        assert_eq!(producers, before, "check changes nothing");
        // Batches without a producer id are not this module's business.
        let plain = {
            let mut builder = RecordBatchBuilder::new(1);
            builder.push(&Record::new("v"));
            builder.build()
        };
        assert_eq!(producers.check(plain.header()), Ok(Admission::Append));
        producers.record(plain.header());
        assert_eq!(producers.len(), 1);
    }

    #[test]
    fn an_unknown_producer_starts_at_sequence_zero_and_is_refused_elsewhere() {
        let producers = Producers::default();
        assert_eq!(
            producers.check(produced(9, 3, 41, 1, 0).header()),
            Err(ApiError::UnknownProducerId {
                producer_id: 9,
                received: 41,
            })
        );
        assert_eq!(
            producers.check(produced(9, 3, 0, 1, 0).header()),
            Ok(Admission::Append)
        );
    }

    #[test]
    fn a_snapshot_reads_back_as_the_same_state_and_bad_bytes_are_refused() {
        let mut producers = Producers::default();
        for index in 0..7u64 {
            producers.record(produced(7, 0, index as i32, 1, index).header());
        }
        producers.record(produced(8, 2, 0, 3, 7).header());
        producers.record(produced(9, 0, 0, 1, 10).header());
        producers.truncate(Offset(10));
        let bytes = producers.encode_snapshot(Offset(10));
        let (through, read) = Producers::decode_snapshot(&bytes).unwrap();
        assert_eq!(through, Offset(10));
        assert_eq!(read, producers);
        assert_eq!(read.encode_snapshot(Offset(10)), bytes);
        // Every prefix is refused, and so are trailing bytes and another version.
        for end in 0..bytes.len() {
            assert!(
                Producers::decode_snapshot(&bytes[..end]).is_err(),
                "prefix {end}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Producers::decode_snapshot(&longer).is_err());
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(
            Producers::decode_snapshot(&other),
            Err(SnapshotError::Version(2))
        );
        // A count past the limit is refused before anything is allocated for it.
        let mut huge = bytes.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Producers::decode_snapshot(&huge),
            Err(SnapshotError::Malformed(_))
        ));
    }

    #[test]
    fn a_producer_whose_kept_batches_were_all_cut_resumes_at_the_first_cut_sequence() {
        let mut producers = Producers::default();
        for index in 0..8u64 {
            producers.record(produced(7, 0, index as i32, 1, index).header());
        }
        producers.truncate(Offset(3));
        assert_eq!(producers.batches_of(7), Some((0, vec![])));
        assert_eq!(
            producers.check(produced(7, 0, 4, 1, 0).header()),
            out_of_order(7, 3, 4)
        );
        assert_eq!(
            producers.check(produced(7, 0, 3, 1, 0).header()),
            Ok(Admission::Append)
        );
    }

    #[test]
    fn epochs_fence_older_incarnations_and_a_newer_one_starts_at_zero() {
        let mut producers = Producers::default();
        producers.record(produced(7, 2, 0, 1, 0).header());
        assert_eq!(
            producers.check(produced(7, 1, 1, 1, 0).header()),
            Err(ApiError::InvalidProducerEpoch {
                producer_id: 7,
                current: 2,
                received: 1,
            })
        );
        assert_eq!(
            producers.check(produced(7, 3, 5, 1, 0).header()),
            out_of_order(7, 0, 5)
        );
        let bumped = produced(7, 3, 0, 1, 1);
        assert_eq!(producers.check(bumped.header()), Ok(Admission::Append));
        producers.record(bumped.header());
        assert_eq!(
            producers.batches_of(7),
            Some((
                3,
                vec![ProducerBatch {
                    first_sequence: 0,
                    last_sequence: 0,
                    base_offset: Offset(1),
                    next_offset: Offset(2),
                }]
            ))
        );
    }

    #[test]
    fn only_the_last_five_batches_are_kept() {
        let mut producers = Producers::default();
        for index in 0..7u64 {
            producers.record(produced(7, 0, index as i32, 1, index).header());
        }
        let (_, kept) = producers.batches_of(7).unwrap();
        assert_eq!(kept.len(), PRODUCER_BATCHES_KEPT);
        assert_eq!(kept[0].first_sequence, 2);
        // Sequence 1 fell out of the window: no longer recognised as a duplicate.
        assert_eq!(
            producers.check(produced(7, 0, 1, 1, 0).header()),
            out_of_order(7, 7, 1)
        );
        assert!(matches!(
            producers.check(produced(7, 0, 2, 1, 0).header()),
            Ok(Admission::Duplicate(_))
        ));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let mut producers = Producers::default();
        producers.record(produced(7, 0, i32::MAX - 1, 2, 0).header());
        assert_eq!(
            producers.check(produced(7, 0, 0, 1, 0).header()),
            Ok(Admission::Append)
        );
    }

    #[test]
    fn truncation_forgets_the_cut_batches_and_emptied_producers() {
        let mut producers = Producers::default();
        producers.record(produced(7, 0, 0, 2, 0).header());
        producers.record(produced(8, 0, 0, 1, 2).header());
        producers.record(produced(7, 0, 2, 1, 3).header());
        producers.truncate(Offset(2));
        assert_eq!(producers.batches_of(8), None);
        let (_, kept) = producers.batches_of(7).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].next_offset, Offset(2));
        // The retry of the cut batch is new again, and continues the sequence.
        assert_eq!(
            producers.check(produced(7, 0, 2, 1, 0).header()),
            Ok(Admission::Append)
        );
    }

    #[test]
    fn past_producers_max_the_stalest_producer_is_forgotten() {
        let mut producers = Producers::default();
        for id in 0..PRODUCERS_MAX as i64 {
            producers.record(produced(id, 0, 0, 1, 100 + id as u64).header());
        }
        // Producer 0 writes again, so producer 1 is now the stalest.
        producers.record(produced(0, 0, 1, 1, 200_000).header());
        producers.record(produced(1_000_000, 0, 0, 1, 200_001).header());
        assert_eq!(producers.len(), PRODUCERS_MAX);
        assert!(producers.batches_of(0).is_some());
        assert!(producers.batches_of(1).is_none());
        assert!(producers.batches_of(2).is_some());
    }
}
