//! The producer's record accumulator: per partition, an open batch that records are appended
//! to, and a queue of closed batches waiting to be sent, in order. Pure state (time is passed
//! in), so batching by size and linger and the sticky partitioner are tested without I/O.
//!
//! A batch closes when the next record would push it past `batch_bytes_max` (a record that is
//! larger on its own gets a batch to itself), or when it has lingered `linger` since its first
//! record, or on flush. [`Accumulator::drain`] hands out closed batches while the partition
//! has fewer than `in_flight_per_partition_max` batches in flight, always from the front, so a
//! partition's batches are sent in the order they were filled.
//!
//! Each record gets a [`DeliveryFuture`] pointing at its batch's shared outcome: one
//! allocation per batch, not per record.

use crate::error::ClientError;
use bytes::Bytes;
use cairn_protocol::batch::RecordBatchBuilder;
use cairn_protocol::Compression;
use cairn_protocol::{Offset, Record};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Where the record was sent and what the leader made of it (non-exhaustive: fields may be
/// added).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordMetadata {
    /// The topic it was sent to.
    pub topic: Arc<str>,
    /// The partition it went to (chosen by key, stickily, or named by `send_to`).
    pub partition: u32,
    /// The record's offset. `None` with `Acks::None`: the leader answers before writing, so
    /// no offset is known (the record may even be lost).
    pub offset: Option<Offset>,
    /// The record's timestamp (the one given, or the time of `send`).
    pub timestamp_ms: i64,
}

/// The outcome of one batch, shared by the futures of its records.
pub(crate) struct BatchShared {
    pub topic: Arc<str>,
    pub partition: u32,
    /// Base offset of the batch (`None` for `Acks::None`), or why it failed.
    outcome: OnceLock<Result<Option<Offset>, ClientError>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchShared {
    fn new(topic: Arc<str>, partition: u32) -> BatchShared {
        BatchShared {
            topic,
            partition,
            outcome: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// Records the outcome once and wakes every waiting record future.
    pub fn complete(&self, outcome: Result<Option<Offset>, ClientError>) {
        if self.outcome.set(outcome).is_ok() {
            let wakers = std::mem::take(&mut *self.wakers.lock().expect("wakers lock"));
            for waker in wakers {
                waker.wake();
            }
        }
    }

    pub fn outcome(&self) -> Option<&Result<Option<Offset>, ClientError>> {
        self.outcome.get()
    }

    fn poll_outcome(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<usize>,
    ) -> Poll<&Result<Option<Offset>, ClientError>> {
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        let mut wakers = self.wakers.lock().expect("wakers lock");
        // `complete` sets the outcome before it takes the lock, so checking again under the
        // lock means either we see the outcome or `complete` sees our waker.
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        match *slot {
            Some(index) if index < wakers.len() => {
                if !wakers[index].will_wake(cx.waker()) {
                    wakers[index] = cx.waker().clone();
                }
            }
            _ => {
                wakers.push(cx.waker().clone());
                *slot = Some(wakers.len() - 1);
            }
        }
        Poll::Pending
    }
}

/// Resolves when the record's batch is acknowledged (or has finally failed).
#[must_use = "a DeliveryFuture tells whether the record was written; await it or flush"]
pub struct DeliveryFuture {
    batch: Arc<BatchShared>,
    index: u32,
    timestamp_ms: i64,
    slot: Option<usize>,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture")
            .field("topic", &self.batch.topic)
            .field("partition", &self.batch.partition)
            .field("index", &self.index)
            .finish()
    }
}

impl DeliveryFuture {
    /// The partition the record was assigned to (known at `send` time).
    pub fn partition(&self) -> u32 {
        self.batch.partition
    }

    /// The outcome if it is already known, without waiting.
    pub fn try_result(&self) -> Option<Result<RecordMetadata, ClientError>> {
        self.batch.outcome().map(|outcome| self.resolve(outcome))
    }

    fn resolve(
        &self,
        outcome: &Result<Option<Offset>, ClientError>,
    ) -> Result<RecordMetadata, ClientError> {
        match outcome {
            Ok(base_offset) => Ok(RecordMetadata {
                topic: Arc::clone(&self.batch.topic),
                partition: self.batch.partition,
                offset: base_offset.map(|base| base.plus(u64::from(self.index))),
                timestamp_ms: self.timestamp_ms,
            }),
            Err(error) => Err(error.clone()),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let batch = Arc::clone(&this.batch);
        match batch.poll_outcome(cx, &mut this.slot) {
            Poll::Ready(outcome) => Poll::Ready(this.resolve(outcome)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Resolves when a batch has its outcome, whatever it is (for `flush`).
pub(crate) struct BatchDone {
    batch: Arc<BatchShared>,
    slot: Option<usize>,
}

impl Future for BatchDone {
    type Output = Result<(), ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let batch = Arc::clone(&this.batch);
        match batch.poll_outcome(cx, &mut this.slot) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error.clone())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How a record's partition is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartitionChoice {
    /// The caller named it.
    Explicit(u32),
    /// `toPositive(murmur2(key))`; the partition is this modulo the partition count.
    KeyHash(u32),
    /// No key: the topic's sticky partition.
    Sticky,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppendError {
    UnknownTopic,
    UnknownPartition { partitions: u32 },
}

pub(crate) struct Appended {
    pub future: DeliveryFuture,
    /// A batch was opened or closed: the sender has a new deadline or work.
    pub wake_sender: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct AccumulatorConfig {
    pub batch_bytes_max: usize,
    pub linger: Duration,
    pub in_flight_per_partition_max: usize,
    pub delivery_timeout: Duration,
    /// The codec closed batches are compressed with.
    pub compression: Compression,
}

struct OpenBatch {
    id: u64,
    builder: RecordBatchBuilder,
    shared: Arc<BatchShared>,
    created: Instant,
    buffered_bytes: usize,
}

/// A closed batch on its way to the leader (or back in the queue for a retry).
pub(crate) struct ReadyBatch {
    /// Grows with every batch; within a partition it is the send order.
    pub id: u64,
    pub topic: Arc<str>,
    pub partition: u32,
    pub bytes: Bytes,
    pub record_count: u32,
    pub shared: Arc<BatchShared>,
    pub created: Instant,
    /// Buffer bytes reserved for the batch's records, given back when it completes.
    pub buffered_bytes: usize,
    pub attempts: u32,
    pub not_before: Option<Instant>,
    pub last_error: Option<ClientError>,
    /// Set when an idempotent producer stamped the batch (on its first send); retries keep
    /// the stamp, so the leader can tell a retry from a new batch.
    pub stamped: bool,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    ready: VecDeque<ReadyBatch>,
    in_flight: usize,
}

struct TopicQueues {
    name: Arc<str>,
    compression: Compression,
    partitions: Vec<PartitionQueue>,
    sticky: Option<u32>,
    last_sticky: u32,
}

impl TopicQueues {
    fn next_sticky(&mut self) -> u32 {
        let partitions = self.partitions.len() as u32;
        let next = (self.last_sticky.wrapping_add(1)) % partitions;
        self.last_sticky = next;
        self.sticky = Some(next);
        next
    }

    fn would_overflow(&self, partition: u32, record_bytes: usize, batch_bytes_max: usize) -> bool {
        match &self.partitions[partition as usize].open {
            Some(open) => {
                !open.builder.is_empty()
                    && open.builder.size_bytes() + record_bytes > batch_bytes_max
            }
            None => false,
        }
    }

    /// Moves the open batch of `partition` (if any) to its ready queue.
    fn close(&mut self, partition: u32) -> bool {
        let queue = &mut self.partitions[partition as usize];
        let Some(open) = queue.open.take() else {
            return false;
        };
        let record_count = open.builder.record_count();
        // Compressed once, when closed: retries resend these bytes.
        let batch = open.builder.build_compressed(self.compression);
        queue.ready.push_back(ReadyBatch {
            id: open.id,
            topic: Arc::clone(&self.name),
            partition,
            bytes: batch.into_bytes(),
            record_count,
            shared: open.shared,
            created: open.created,
            buffered_bytes: open.buffered_bytes,
            attempts: 0,
            not_before: None,
            last_error: None,
            stamped: false,
        });
        // Keyless records move on once the sticky partition's batch is on its way.
        if self.sticky == Some(partition) {
            self.sticky = None;
        }
        true
    }
}

/// What [`Accumulator::drain`] found to do.
#[derive(Default)]
pub(crate) struct Drained {
    /// To send now, in order per partition.
    pub batches: Vec<ReadyBatch>,
    /// Waited past the delivery timeout before they could be sent.
    pub expired: Vec<ReadyBatch>,
    /// When something will next be due (a linger ends or a retry backoff passes).
    pub next_wake: Option<Instant>,
}

pub(crate) struct Accumulator {
    config: AccumulatorConfig,
    topics: HashMap<Arc<str>, TopicQueues>,
    /// Every batch opened and not yet completed, so `flush` can wait for exactly those.
    outstanding: HashMap<u64, Arc<BatchShared>>,
    next_batch_id: u64,
    sticky_seed: u32,
}

impl Accumulator {
    pub fn new(config: AccumulatorConfig, sticky_seed: u32) -> Accumulator {
        Accumulator {
            config,
            topics: HashMap::new(),
            outstanding: HashMap::new(),
            next_batch_id: 0,
            sticky_seed,
        }
    }

    /// Starts accumulating for `topic` with `partitions` partitions (or grows a known topic).
    pub fn add_topic(&mut self, topic: &str, partitions: u32) {
        assert!(partitions > 0, "a topic has at least one partition");
        let seed = self.sticky_seed;
        let compression = self.config.compression;
        let queues = self
            .topics
            .entry(Arc::from(topic))
            .or_insert_with(|| TopicQueues {
                name: Arc::from(topic),
                compression,
                partitions: Vec::new(),
                sticky: None,
                last_sticky: seed,
            });
        while queues.partitions.len() < partitions as usize {
            queues.partitions.push(PartitionQueue::default());
        }
    }

    /// Appends one record. `record_bytes` is its size bound
    /// ([`cairn_protocol::batch::record_encoded_bytes`]), already reserved in the buffer.
    /// The record must carry its timestamp.
    pub fn append(
        &mut self,
        topic: &str,
        choice: PartitionChoice,
        record: &Record,
        record_bytes: usize,
        now: Instant,
    ) -> Result<Appended, AppendError> {
        let batch_bytes_max = self.config.batch_bytes_max;
        let queues = self
            .topics
            .get_mut(topic)
            .ok_or(AppendError::UnknownTopic)?;
        let partitions = queues.partitions.len() as u32;
        let mut wake_sender = false;
        let mut partition = match choice {
            PartitionChoice::Explicit(partition) if partition < partitions => partition,
            PartitionChoice::Explicit(_) => {
                return Err(AppendError::UnknownPartition { partitions })
            }
            PartitionChoice::KeyHash(hash) => hash % partitions,
            PartitionChoice::Sticky => match queues.sticky {
                Some(partition) => partition,
                None => queues.next_sticky(),
            },
        };
        if choice == PartitionChoice::Sticky
            && queues.would_overflow(partition, record_bytes, batch_bytes_max)
        {
            wake_sender |= queues.close(partition);
            partition = queues.next_sticky();
        }
        if queues.would_overflow(partition, record_bytes, batch_bytes_max) {
            wake_sender |= queues.close(partition);
        }
        let queue = &mut queues.partitions[partition as usize];
        let open = match &mut queue.open {
            Some(open) => open,
            None => {
                let id = self.next_batch_id;
                self.next_batch_id += 1;
                let shared = Arc::new(BatchShared::new(Arc::clone(&queues.name), partition));
                self.outstanding.insert(id, Arc::clone(&shared));
                wake_sender = true;
                let timestamp_ms = record.timestamp_ms.unwrap_or_default();
                queue.open.insert(OpenBatch {
                    id,
                    builder: RecordBatchBuilder::new(timestamp_ms),
                    shared,
                    created: now,
                    buffered_bytes: 0,
                })
            }
        };
        let index = open.builder.record_count();
        open.builder.push(record);
        open.buffered_bytes += record_bytes;
        let future = DeliveryFuture {
            batch: Arc::clone(&open.shared),
            index,
            timestamp_ms: record.timestamp_ms.unwrap_or_default(),
            slot: None,
        };
        if open.builder.size_bytes() >= batch_bytes_max {
            queues.close(partition);
            wake_sender = true;
        }
        Ok(Appended {
            future,
            wake_sender,
        })
    }

    /// Closes every open batch, so the next drain sends them whatever their linger.
    pub fn close_all(&mut self) {
        for queues in self.topics.values_mut() {
            for partition in 0..queues.partitions.len() as u32 {
                queues.close(partition);
            }
        }
    }

    /// Futures for every batch not yet completed.
    pub fn outstanding(&self) -> Vec<BatchDone> {
        self.outstanding
            .values()
            .map(|batch| BatchDone {
                batch: Arc::clone(batch),
                slot: None,
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Closes batches whose linger has passed and hands out the batches that may be sent.
    pub fn drain(&mut self, now: Instant) -> Drained {
        let config = self.config;
        let mut drained = Drained::default();
        let wake_at = |at: Instant, drained: &mut Drained| {
            drained.next_wake = Some(drained.next_wake.map_or(at, |next| next.min(at)));
        };
        for queues in self.topics.values_mut() {
            for partition in 0..queues.partitions.len() as u32 {
                let linger_end = queues.partitions[partition as usize]
                    .open
                    .as_ref()
                    .map(|open| open.created + config.linger);
                match linger_end {
                    Some(end) if end <= now => {
                        queues.close(partition);
                    }
                    Some(end) => wake_at(end, &mut drained),
                    None => {}
                }
                let queue = &mut queues.partitions[partition as usize];
                let mut index = 0;
                while index < queue.ready.len() {
                    if queue.ready[index].created + config.delivery_timeout <= now {
                        let expired = queue.ready.remove(index).expect("index is in range");
                        drained.expired.push(expired);
                    } else {
                        index += 1;
                    }
                }
                while queue.in_flight < config.in_flight_per_partition_max {
                    let Some(front) = queue.ready.front() else {
                        break;
                    };
                    if let Some(not_before) = front.not_before {
                        if not_before > now {
                            wake_at(not_before, &mut drained);
                            break;
                        }
                    }
                    let batch = queue.ready.pop_front().expect("front exists");
                    queue.in_flight += 1;
                    drained.batches.push(batch);
                }
                if let Some(front) = queue.ready.front() {
                    // Expiry of a waiting batch is a deadline too.
                    wake_at(front.created + config.delivery_timeout, &mut drained);
                }
            }
        }
        for batch in &drained.expired {
            self.outstanding.remove(&batch.id);
        }
        drained
    }

    /// Puts a sent batch back for a retry, ahead of later batches of its partition.
    pub fn requeue(&mut self, batch: ReadyBatch) {
        let Some(queue) = self.queue_mut(&batch.topic, batch.partition) else {
            return;
        };
        queue.in_flight = queue.in_flight.saturating_sub(1);
        let position = queue.ready.partition_point(|queued| queued.id < batch.id);
        queue.ready.insert(position, batch);
    }

    /// Forgets a sent batch that has its outcome.
    pub fn finish(&mut self, batch: &ReadyBatch) {
        self.outstanding.remove(&batch.id);
        if let Some(queue) = self.queue_mut(&batch.topic, batch.partition) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
    }

    fn queue_mut(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionQueue> {
        self.topics
            .get_mut(topic)
            .and_then(|queues| queues.partitions.get_mut(partition as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::record_encoded_bytes;
    use cairn_protocol::RecordBatch;

    fn config(batch_bytes_max: usize) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_bytes_max,
            linger: Duration::from_millis(5),
            in_flight_per_partition_max: 2,
            delivery_timeout: Duration::from_secs(30),
            compression: Compression::None,
        }
    }

    fn record(value_bytes: usize) -> Record {
        Record::new(vec![b'v'; value_bytes]).with_timestamp_ms(1_000)
    }

    fn append(
        accumulator: &mut Accumulator,
        choice: PartitionChoice,
        record: &Record,
        now: Instant,
    ) -> Appended {
        accumulator
            .append("t", choice, record, record_encoded_bytes(record), now)
            .unwrap()
    }

    #[test]
    fn batches_close_by_size_and_stay_within_the_maximum() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(4200), 0);
        accumulator.add_topic("t", 1);
        let one = record(1000);
        for _ in 0..10 {
            append(&mut accumulator, PartitionChoice::Explicit(0), &one, now);
        }
        // Nothing lingered yet: only the full batches may go.
        let drained = accumulator.drain(now);
        assert_eq!(drained.batches.len(), 2, "in-flight cap of 2 per partition");
        for batch in &drained.batches {
            assert!(batch.bytes.len() <= 4200, "batch of {}", batch.bytes.len());
            let parsed = RecordBatch::validate(batch.bytes.clone()).unwrap();
            assert_eq!(
                parsed.record_count(),
                4,
                "4 records of ~1 KiB fit in 4200 bytes"
            );
        }
        assert!(drained.next_wake.is_some());
        // The third full batch waits for an in-flight slot.
        assert!(accumulator.drain(now).batches.is_empty());
        let first = drained.batches.into_iter().next().unwrap();
        accumulator.finish(&first);
        // A slot is free, but the partial third batch (2 records) waits for its linger.
        assert!(accumulator.drain(now).batches.is_empty());
        let next = accumulator.drain(now + Duration::from_millis(5));
        assert_eq!(next.batches.len(), 1);
        assert_eq!(next.batches[0].record_count, 2);
        assert_eq!(next.batches[0].id, 2);
    }

    #[test]
    fn a_partial_batch_waits_for_its_linger() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(64 * 1024), 0);
        accumulator.add_topic("t", 1);
        let appended = append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(10),
            now,
        );
        assert!(
            appended.wake_sender,
            "a new batch gives the sender a deadline"
        );
        let second = append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(10),
            now,
        );
        assert!(!second.wake_sender);
        let drained = accumulator.drain(now + Duration::from_millis(4));
        assert!(drained.batches.is_empty());
        assert_eq!(drained.next_wake, Some(now + Duration::from_millis(5)));
        let drained = accumulator.drain(now + Duration::from_millis(5));
        assert_eq!(drained.batches.len(), 1);
        assert_eq!(drained.batches[0].record_count, 2);
    }

    #[test]
    fn an_oversize_record_goes_alone() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(4096), 0);
        accumulator.add_topic("t", 1);
        append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(10),
            now,
        );
        append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(10_000),
            now,
        );
        append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(10),
            now,
        );
        let drained = accumulator.drain(now + Duration::from_millis(5));
        let counts: Vec<u32> = drained.batches.iter().map(|b| b.record_count).collect();
        assert_eq!(
            counts,
            vec![1, 1],
            "in-flight cap 2: the small one, then the big one"
        );
        assert!(drained.batches[1].bytes.len() > 10_000);
        accumulator.finish(&drained.batches[0]);
        let rest = accumulator.drain(now + Duration::from_millis(5));
        assert_eq!(rest.batches.len(), 1);
        assert_eq!(rest.batches[0].record_count, 1);
    }

    #[test]
    fn keyless_records_stick_to_one_partition_until_its_batch_closes() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(4200), 0);
        accumulator.add_topic("t", 3);
        let mut partitions = Vec::new();
        for _ in 0..12 {
            let appended = append(
                &mut accumulator,
                PartitionChoice::Sticky,
                &record(1000),
                now,
            );
            partitions.push(appended.future.partition());
        }
        // 4 records fill a batch; then the next partition takes over.
        assert_eq!(partitions, vec![1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0]);
        // A linger-closed batch also moves the sticky partition on.
        let mut accumulator = Accumulator::new(config(64 * 1024), 0);
        accumulator.add_topic("t", 3);
        let first = append(&mut accumulator, PartitionChoice::Sticky, &record(10), now);
        let drained = accumulator.drain(now + Duration::from_millis(5));
        assert_eq!(drained.batches.len(), 1);
        let second = append(&mut accumulator, PartitionChoice::Sticky, &record(10), now);
        assert_ne!(first.future.partition(), second.future.partition());
    }

    #[test]
    fn keys_and_explicit_partitions_are_respected() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(4096), 0);
        accumulator.add_topic("t", 3);
        let appended = append(
            &mut accumulator,
            PartitionChoice::KeyHash(7),
            &record(1),
            now,
        );
        assert_eq!(appended.future.partition(), 1);
        let appended = append(
            &mut accumulator,
            PartitionChoice::Explicit(2),
            &record(1),
            now,
        );
        assert_eq!(appended.future.partition(), 2);
        let refused = accumulator.append("t", PartitionChoice::Explicit(3), &record(1), 10, now);
        assert_eq!(
            refused.err(),
            Some(AppendError::UnknownPartition { partitions: 3 })
        );
        let unknown = accumulator.append("u", PartitionChoice::Sticky, &record(1), 10, now);
        assert_eq!(unknown.err(), Some(AppendError::UnknownTopic));
    }

    #[test]
    fn requeued_batches_keep_their_order_and_wait_for_their_backoff() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(64 * 1024), 0);
        accumulator.add_topic("t", 1);
        for _ in 0..3 {
            append(
                &mut accumulator,
                PartitionChoice::Explicit(0),
                &record(10),
                now,
            );
            accumulator.close_all();
        }
        let sent = accumulator.drain(now).batches;
        assert_eq!(sent.iter().map(|b| b.id).collect::<Vec<_>>(), vec![0, 1]);
        let retry_at = now + Duration::from_millis(100);
        // Both fail; they come back in id order even though requeued in reverse.
        for mut batch in sent.into_iter().rev() {
            batch.not_before = Some(retry_at);
            accumulator.requeue(batch);
        }
        let drained = accumulator.drain(now);
        assert!(drained.batches.is_empty());
        assert_eq!(drained.next_wake, Some(retry_at));
        let resent = accumulator.drain(retry_at).batches;
        assert_eq!(resent.iter().map(|b| b.id).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn delivery_futures_resolve_with_offsets_from_the_batch_base() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(64 * 1024), 0);
        accumulator.add_topic("t", 1);
        let first = append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(1),
            now,
        );
        let second = append(
            &mut accumulator,
            PartitionChoice::Explicit(0),
            &record(1),
            now,
        );
        accumulator.close_all();
        let batch = accumulator.drain(now).batches.pop().unwrap();
        assert!(second.future.try_result().is_none());
        batch.shared.complete(Ok(Some(Offset(40))));
        accumulator.finish(&batch);
        assert!(accumulator.is_empty());
        let metadata = second.future.try_result().unwrap().unwrap();
        assert_eq!(metadata.offset, Some(Offset(41)));
        assert_eq!(metadata.timestamp_ms, 1_000);
        let metadata = first.future.try_result().unwrap().unwrap();
        assert_eq!(metadata.offset, Some(Offset(40)));
    }
}
