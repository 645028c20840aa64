//! Idempotent producers (DESIGN section 6): what one partition replica remembers of each
//! producer id, so that its leader writes a retried batch once.
//!
//! The state is derived from the log alone: every batch header carries the producer id,
//! epoch and first sequence (inside the checksum), and every replica records each batch it
//! appends, leader or follower. So the state travels with the log, survives a leader change
//! without any message of its own, is cut back with the log on truncation, and is rebuilt
//! after a restart by reading batch headers back ([`crate::Replica::recover_producers`]).
//!
//! Per producer id it keeps the epoch and the last [`PRODUCER_BATCHES_KEPT`] batches (their
//! sequence ranges and offsets), as Kafka does: a producer keeps at most that many batches in
//! flight per partition, so a retry always finds its first attempt here if it was written.
//!
//! The rules, Kafka's (`ProducerStateManager`), for a batch of producer `p`, epoch `e`:
//!
//! - `p` unknown here (new, or its batches fell out of the retained log): accepted whatever
//!   its sequence. Refusing would strand a producer whose history retention removed.
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
    /// Oldest first; never empty, at most [`PRODUCER_BATCHES_KEPT`].
    batches: VecDeque<ProducerBatch>,
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
        let Some(entry) = self.entries.get(&header.producer_id) else {
            return Ok(Admission::Append);
        };
        let received = header.base_sequence;
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
        let newest = entry
            .batches
            .back()
            .expect("an entry keeps at least one batch");
        let expected = sequence_after(newest.last_sequence, 1);
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
            });
        if entry.epoch != header.producer_epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
    }

    /// The log lost every batch at or above `from`: so does the state. A producer left with
    /// no batch is forgotten (unknown again), since what came before its window is unknown.
    pub fn truncate(&mut self, from: Offset) {
        self.entries.retain(|_, entry| {
            while entry
                .batches
                .back()
                .is_some_and(|batch| batch.base_offset >= from)
            {
                entry.batches.pop_back();
            }
            !entry.batches.is_empty()
        });
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| {
                entry
                    .batches
                    .back()
                    .map(|batch| batch.next_offset)
                    .unwrap_or(Offset::ZERO)
            })
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
    fn unknown_producers_are_accepted_at_any_sequence() {
        let producers = Producers::default();
        assert_eq!(
            producers.check(produced(9, 3, 41, 1, 0).header()),
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
