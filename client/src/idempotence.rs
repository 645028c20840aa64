//! The idempotent producer's bookkeeping: one producer id from the cluster, and per partition
//! an epoch and the next sequence number. Pure state, so its rules are tested without I/O.
//!
//! A batch is stamped (producer id, epoch, first sequence) when it is first sent, and keeps
//! its stamp for every retry, so the leader recognises a retry of a batch it already wrote
//! and answers it with the first write's offsets instead of writing it again (see
//! `cairn_replica::producers`). The leader refuses a batch whose sequence does not continue
//! the partition's (`OutOfOrderSequence`, retriable: the missing batch is being retried and
//! the later one goes after it), so order within a partition holds with several batches in
//! flight.
//!
//! A stamped batch that fails for good (delivery timeout, a refusal) may leave a gap in the
//! sequence that no retry will fill. As Kafka's idempotent producer does, the partition then
//! raises its epoch and restarts its sequence at 0, which the leader accepts as a new
//! incarnation; it does so only once no batch stamped with the old epoch is unresolved, since
//! the new epoch fences the old one. Until the first batch of an epoch is acknowledged, only
//! one batch of the partition is in flight: a leader that has never seen the producer accepts
//! only sequence 0 (`UnknownProducerId` otherwise, not retriable: the batch fails and the
//! epoch is raised as above, as Kafka's producer does after KIP-360), so a later batch must
//! not overtake the first.
//!
//! A producer id the cluster answers `ProducerIdNotAllocated` for (it does not know the id:
//! the cluster was recreated from empty data while the producer lived, say) is forgotten:
//! once no batch stamped with it is unresolved, a new id is fetched and every partition
//! starts again at sequence 0. The refused batches were not written (the refusal comes before
//! any append), so they go back to be stamped with the new id, in their order.

use cairn_protocol::batch::sequence_after;
use std::collections::HashMap;
use std::sync::Arc;

/// What to do with a batch that is about to be sent for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Stamp it with these and send it.
    Now {
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    },
    /// Not yet: an earlier batch of the partition must resolve first. Try again when one does.
    Wait,
    /// Ask the cluster for a producer id first (`InitProducerId`).
    NeedProducerId,
    /// Idempotence is off (the cluster does not offer it): send the batch unstamped.
    Off,
    /// The partition has raised its epoch `i16::MAX` times; a new producer is needed.
    EpochsExhausted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionSequence {
    epoch: i16,
    next_sequence: i32,
    /// Stamped batches sent and not yet finally resolved.
    unresolved: usize,
    /// A stamped batch failed for good: raise the epoch once `unresolved` is 0.
    bump_needed: bool,
    /// A batch of the current epoch was acknowledged: the leader knows where we are.
    acknowledged: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Idempotence {
    producer_id: Option<i64>,
    /// The epoch the cluster gave with the producer id; partitions start from it.
    initial_epoch: i16,
    off: bool,
    /// The cluster refused the producer id as never allocated: replace it once no batch
    /// stamped with it is unresolved.
    forgotten: bool,
    partitions: HashMap<(Arc<str>, u32), PartitionSequence>,
}

impl Idempotence {
    pub fn set_producer_id(&mut self, producer_id: i64, producer_epoch: i16) {
        self.producer_id = Some(producer_id);
        self.initial_epoch = producer_epoch;
    }

    /// The cluster does not offer producer ids: every batch goes unstamped from now on.
    pub fn turn_off(&mut self) {
        self.off = true;
    }

    /// Decides for a batch of `record_count` records of `topic`/`partition` that is about
    /// to be sent for the first time; `Now` reserves its sequence range.
    pub fn stamp(&mut self, topic: &Arc<str>, partition: u32, record_count: u32) -> Stamp {
        if self.off {
            return Stamp::Off;
        }
        if self.forgotten {
            // A new id fences nothing, but a batch of the old id still in flight will come
            // back refused and must be stamped before the later batches of its partition.
            if self.partitions.values().any(|state| state.unresolved > 0) {
                return Stamp::Wait;
            }
            self.producer_id = None;
            self.partitions.clear();
            self.forgotten = false;
        }
        let Some(producer_id) = self.producer_id else {
            return Stamp::NeedProducerId;
        };
        let initial_epoch = self.initial_epoch;
        let state = self
            .partitions
            .entry((Arc::clone(topic), partition))
            .or_insert(PartitionSequence {
                epoch: initial_epoch,
                next_sequence: 0,
                unresolved: 0,
                bump_needed: false,
                acknowledged: false,
            });
        if state.bump_needed {
            if state.unresolved > 0 {
                return Stamp::Wait;
            }
            if state.epoch == i16::MAX {
                return Stamp::EpochsExhausted;
            }
            state.epoch += 1;
            state.next_sequence = 0;
            state.bump_needed = false;
            state.acknowledged = false;
        }
        if !state.acknowledged && state.unresolved > 0 {
            return Stamp::Wait;
        }
        let base_sequence = state.next_sequence;
        state.next_sequence = sequence_after(base_sequence, record_count);
        state.unresolved += 1;
        Stamp::Now {
            producer_id,
            producer_epoch: state.epoch,
            base_sequence,
        }
    }

    /// A batch stamped with `producer_id` was refused with `ProducerIdNotAllocated`: it was
    /// not written, is no longer in flight, and goes back to be stamped again. The id is
    /// replaced before the next stamp (see the module docs).
    pub fn producer_id_refused(&mut self, topic: &Arc<str>, partition: u32, producer_id: i64) {
        if self.producer_id != Some(producer_id) {
            // Stamped with an id replaced already: its partition state went with that id.
            return;
        }
        self.forgotten = true;
        if let Some(state) = self.partitions.get_mut(&(Arc::clone(topic), partition)) {
            state.unresolved = state.unresolved.saturating_sub(1);
        }
    }

    /// A stamped batch has its final outcome: acknowledged (`ok`) or failed for good.
    pub fn resolved(&mut self, topic: &Arc<str>, partition: u32, ok: bool) {
        let Some(state) = self.partitions.get_mut(&(Arc::clone(topic), partition)) else {
            return;
        };
        state.unresolved = state.unresolved.saturating_sub(1);
        if ok {
            state.acknowledged = true;
        } else {
            state.bump_needed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(epoch: i16, base_sequence: i32) -> Stamp {
        Stamp::Now {
            producer_id: 42,
            producer_epoch: epoch,
            base_sequence,
        }
    }

    #[test]
    fn sequences_follow_record_counts_per_partition_after_the_first_ack() {
        let topic: Arc<str> = Arc::from("t");
        let mut state = Idempotence::default();
        assert_eq!(state.stamp(&topic, 0, 3), Stamp::NeedProducerId);
        state.set_producer_id(42, 0);
        assert_eq!(state.stamp(&topic, 0, 3), now(0, 0));
        // One batch at a time until the leader acknowledged the first.
        assert_eq!(state.stamp(&topic, 0, 2), Stamp::Wait);
        assert_eq!(state.stamp(&topic, 1, 1), now(0, 0), "partitions are apart");
        state.resolved(&topic, 0, true);
        assert_eq!(state.stamp(&topic, 0, 2), now(0, 3));
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 5), "then pipelined");
    }

    #[test]
    fn a_failed_batch_raises_the_epoch_once_the_rest_resolved() {
        let topic: Arc<str> = Arc::from("t");
        let mut state = Idempotence::default();
        state.set_producer_id(42, 0);
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 0));
        state.resolved(&topic, 0, true);
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 1));
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 2));
        state.resolved(&topic, 0, false);
        // Sequence 2 is still unresolved: a new epoch would fence it.
        assert_eq!(state.stamp(&topic, 0, 1), Stamp::Wait);
        state.resolved(&topic, 0, true);
        assert_eq!(state.stamp(&topic, 0, 4), now(1, 0));
        assert_eq!(state.stamp(&topic, 0, 1), Stamp::Wait);
        state.resolved(&topic, 0, true);
        assert_eq!(state.stamp(&topic, 0, 1), now(1, 4));
    }

    #[test]
    fn a_producer_id_the_cluster_does_not_know_is_replaced_once_its_batches_came_back() {
        let topic: Arc<str> = Arc::from("t");
        let mut state = Idempotence::default();
        state.set_producer_id(42, 0);
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 0));
        state.resolved(&topic, 0, true);
        assert_eq!(state.stamp(&topic, 0, 2), now(0, 1));
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 3));
        assert_eq!(state.stamp(&topic, 1, 1), now(0, 0));
        state.producer_id_refused(&topic, 0, 42);
        // Two batches of the old id are still out: nothing new is stamped before they return.
        assert_eq!(state.stamp(&topic, 2, 1), Stamp::Wait);
        state.producer_id_refused(&topic, 0, 42);
        assert_eq!(state.stamp(&topic, 0, 2), Stamp::Wait);
        state.producer_id_refused(&topic, 1, 42);
        assert_eq!(state.stamp(&topic, 0, 2), Stamp::NeedProducerId);
        state.set_producer_id(43, 0);
        assert_eq!(
            state.stamp(&topic, 0, 2),
            Stamp::Now {
                producer_id: 43,
                producer_epoch: 0,
                base_sequence: 0,
            },
            "every partition starts again at sequence 0 with the new id"
        );
        // A late refusal naming the replaced id changes nothing.
        state.producer_id_refused(&topic, 0, 42);
        assert_eq!(
            state.stamp(&topic, 0, 1),
            Stamp::Wait,
            "first batch still unacknowledged"
        );
        state.resolved(&topic, 0, true);
        assert_eq!(
            state.stamp(&topic, 0, 1),
            Stamp::Now {
                producer_id: 43,
                producer_epoch: 0,
                base_sequence: 2,
            }
        );
    }

    #[test]
    fn sequences_wrap_and_epochs_run_out() {
        let topic: Arc<str> = Arc::from("t");
        let mut state = Idempotence::default();
        state.set_producer_id(42, i16::MAX - 1);
        assert_eq!(state.stamp(&topic, 0, 1), now(i16::MAX - 1, 0));
        state.resolved(&topic, 0, false);
        assert_eq!(state.stamp(&topic, 0, 1), now(i16::MAX, 0));
        state.resolved(&topic, 0, false);
        assert_eq!(state.stamp(&topic, 0, 1), Stamp::EpochsExhausted);
        let mut state = Idempotence::default();
        state.set_producer_id(42, 0);
        state.partitions.insert(
            (Arc::clone(&topic), 0),
            PartitionSequence {
                epoch: 0,
                next_sequence: i32::MAX,
                unresolved: 0,
                bump_needed: false,
                acknowledged: true,
            },
        );
        assert_eq!(state.stamp(&topic, 0, 2), now(0, i32::MAX));
        assert_eq!(state.stamp(&topic, 0, 1), now(0, 1));
        state.turn_off();
        assert_eq!(state.stamp(&topic, 0, 1), Stamp::Off);
    }
}
