//! [`Producer`]: batches records per partition and sends them to partition leaders.
//!
//! Data flow: `send` reserves the record's size in a bounded buffer (waiting while it is full:
//! that is the backpressure), picks the partition (key hash, explicit, or sticky) and appends
//! to the accumulator (module `accumulator`). One background sender task drains closed batches in order
//! and writes them as `Produce` requests on the leader's connection (pipelined, in order per
//! partition). The connection's reader task runs each batch's reply callback, which resolves
//! the records' futures and gives the buffer space back, or puts the batch back for a retry:
//! no task and no timer per batch (`Connection::submit_with_callback`).
//!
//! Retries: a retriable failure (leader moved, timeout, connection lost) refreshes metadata
//! when needed and resends the batch after a backoff, until the delivery timeout.
//!
//! Idempotence (on by default with `acks = All`, module `idempotence`): before its first send
//! a batch is stamped with the producer id (fetched from the cluster on first use), the
//! partition's epoch and its first sequence number; retries resend the same bytes. The leader
//! writes a batch it already holds only once (answering with the first write's offsets) and
//! refuses one that would skip a sequence, so neither a lost reply nor a failed batch that is
//! retried behind later ones duplicates or reorders records. Without idempotence (or with
//! weaker acks) a retried batch may be written twice, and with more than one batch in flight
//! per partition a retried batch may land after a later one.

use crate::accumulator::{
    Accumulator, AccumulatorConfig, AppendError, PartitionChoice, ReadyBatch,
};
use crate::cluster::{unexpected, Cluster};
use crate::config::{millis_u32, ClientConfig, ProducerConfig};
use crate::error::{ClientError, Result};
use crate::idempotence::{Idempotence, Stamp};
use crate::partitioner::{murmur2, to_positive};
use cairn_protocol::batch::{record_encoded_bytes, RecordBatch};
use cairn_protocol::messages::{InitProducerIdRequest, ProduceRequest};
use cairn_protocol::{Acks, ApiError, Record, Request, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, Semaphore};

pub use crate::accumulator::{DeliveryFuture, RecordMetadata};

/// Extra time the client waits for a produce reply beyond the time the leader may take.
const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// Sends records to a cluster. Cheap to clone; clones share one buffer and one sender task.
/// Dropping the last clone sends what is buffered in the background; call
/// [`Producer::close`] to wait for it.
///
/// ```no_run
/// # async fn example() -> Result<(), cairn_client::ClientError> {
/// use cairn_client::{ClientConfig, Producer, ProducerConfig, Record};
///
/// let producer = Producer::new(
///     ClientConfig::new("127.0.0.1:7171")?,
///     ProducerConfig::default(),
/// )
/// .await?;
/// // `send` waits only when the buffer is full; the returned future resolves on the ack.
/// let delivery = producer.send("orders", Record::new("hello").with_key("customer-7")).await?;
/// let metadata = delivery.await?;
/// println!("written at {:?} in partition {}", metadata.offset, metadata.partition);
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

struct Inner {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    accumulator: Mutex<Accumulator>,
    /// Bytes of records accepted and not yet completed; permits are bytes.
    buffer: Semaphore,
    /// Wakes the sender: a batch opened or closed, a reply arrived, the producer closes.
    wake: Notify,
    closed: AtomicBool,
    /// Signalled by the sender task when it has sent everything after close.
    stopped: Notify,
    sender_done: AtomicBool,
    /// Producer id, epochs and sequences; `None` when the producer is not idempotent.
    idempotence: Option<Mutex<Idempotence>>,
}

struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

impl Producer {
    /// Connects to the cluster (to learn the server's batch limit) and starts the sender
    /// task. Must run inside a tokio runtime.
    pub async fn new(client: ClientConfig, config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let cluster = Cluster::new(client)?;
        let connection = cluster.any_connection().await?;
        let mut config = config;
        let server_batch_max = connection.limits().batch_bytes_max as usize;
        if server_batch_max > 0 && server_batch_max < config.batch_bytes_max {
            // Batches the server would refuse are never built.
            config.batch_bytes_max = server_batch_max;
        }
        Ok(Self::start(cluster, config))
    }

    fn start(cluster: Arc<Cluster>, config: ProducerConfig) -> Producer {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let accumulator = Accumulator::new(
            AccumulatorConfig {
                batch_bytes_max: config.batch_bytes_max,
                linger: config.linger,
                in_flight_per_partition_max: config.requests_in_flight_per_partition_max,
                delivery_timeout: config.delivery_timeout,
                compression: config.compression,
            },
            seed,
        );
        let idempotence = config
            .idempotent()
            .then(|| Mutex::new(Idempotence::default()));
        let inner = Arc::new(Inner {
            cluster,
            buffer: Semaphore::new(config.buffer_bytes_max),
            config,
            accumulator: Mutex::new(accumulator),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            stopped: Notify::new(),
            sender_done: AtomicBool::new(false),
            idempotence,
        });
        tokio::spawn(sender_loop(Arc::clone(&inner)));
        Producer {
            _guard: Arc::new(CloseOnDrop(Arc::clone(&inner))),
            inner,
        }
    }

    /// The configuration in force (`batch_bytes_max` may be lowered to the server's limit).
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Queues `record` for `topic`; the partition comes from the key (Kafka's murmur2), or,
    /// without a key, is sticky per batch. Waits while the buffer is full. The returned future
    /// resolves when the record is acknowledged or has finally failed.
    pub async fn send(&self, topic: &str, record: Record) -> Result<DeliveryFuture> {
        let choice = match &record.key {
            Some(key) => PartitionChoice::KeyHash(to_positive(murmur2(key))),
            None => PartitionChoice::Sticky,
        };
        self.append(topic, choice, record).await
    }

    /// Like [`Producer::send`] to an explicit partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        record: Record,
    ) -> Result<DeliveryFuture> {
        self.append(topic, PartitionChoice::Explicit(partition), record)
            .await
    }

    /// Sends one record and waits for its acknowledgement. Slow for many records (each waits
    /// for its batch's linger and round trip); prefer [`Producer::send`] and await later.
    pub async fn send_and_wait(&self, topic: &str, record: Record) -> Result<RecordMetadata> {
        let delivery = self.send(topic, record).await?;
        self.inner.wake.notify_one();
        delivery.await
    }

    async fn append(
        &self,
        topic: &str,
        choice: PartitionChoice,
        mut record: Record,
    ) -> Result<DeliveryFuture> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let record_bytes = record_encoded_bytes(&record);
        if record_bytes > inner.config.buffer_bytes_max {
            return Err(ClientError::RecordTooLarge {
                size: record_bytes as u64,
                max: inner.config.buffer_bytes_max as u64,
            });
        }
        if record.timestamp_ms.is_none() {
            record.timestamp_ms = Some(now_ms());
        }
        // Backpressure: wait for buffer room. The permits are given back when the record's
        // batch completes (see `Inner::complete`).
        inner
            .buffer
            .acquire_many(record_bytes as u32)
            .await
            .map_err(|_| ClientError::Closed)?
            .forget();
        let mut attempts = 0;
        loop {
            let appended = {
                let mut accumulator = inner.accumulator.lock().expect("accumulator lock");
                accumulator.append(topic, choice, &record, record_bytes, Instant::now())
            };
            match appended {
                Ok(appended) => {
                    if appended.wake_sender {
                        inner.wake.notify_one();
                    }
                    return Ok(appended.future);
                }
                Err(AppendError::UnknownTopic) if attempts == 0 => {
                    attempts += 1;
                    // Metadata waits count against the delivery timeout, as Kafka's
                    // producer bounds them by `max.block.ms`.
                    let deadline = Instant::now() + inner.config.delivery_timeout;
                    match inner.cluster.topic_within(topic, deadline).await {
                        Ok(metadata) if !metadata.partitions.is_empty() => {
                            inner
                                .accumulator
                                .lock()
                                .expect("accumulator lock")
                                .add_topic(topic, metadata.partitions.len() as u32);
                        }
                        Ok(_) => {
                            inner.buffer.add_permits(record_bytes);
                            return Err(ClientError::protocol(format!(
                                "metadata lists topic '{topic}' without partitions"
                            )));
                        }
                        Err(error) => {
                            inner.buffer.add_permits(record_bytes);
                            return Err(error);
                        }
                    }
                }
                Err(error) => {
                    inner.buffer.add_permits(record_bytes);
                    return Err(match error {
                        AppendError::UnknownTopic => ClientError::Api(ApiError::UnknownTopic {
                            topic: topic.to_owned(),
                        }),
                        AppendError::UnknownPartition { partitions } => {
                            ClientError::Api(ApiError::UnknownPartition {
                                topic: topic.to_owned(),
                                partition: match choice {
                                    PartitionChoice::Explicit(partition) => partition,
                                    _ => 0,
                                },
                                partitions,
                            })
                        }
                    });
                }
            }
        }
    }

    /// Sends every buffered record now (ignoring linger) and waits until each batch that
    /// existed when flush was called has its outcome. Returns the first failure among them;
    /// each record's own future has its own outcome either way.
    pub async fn flush(&self) -> Result<()> {
        let waits = {
            let mut accumulator = self.inner.accumulator.lock().expect("accumulator lock");
            accumulator.close_all();
            accumulator.outstanding()
        };
        self.inner.wake.notify_one();
        let mut first_error = None;
        for wait in waits {
            if let Err(error) = wait.await {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    pub(crate) fn inner_cluster_invalidate(&self) {
        self.inner.cluster.invalidate();
    }

    /// Bytes of records accepted but not yet completed (at most `buffer_bytes_max`).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.config.buffer_bytes_max - self.inner.buffer.available_permits()
    }

    /// Flushes, then stops the sender task. Other clones can no longer send.
    pub async fn close(self) -> Result<()> {
        let flushed = self.flush().await;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        while !self.inner.sender_done.load(Ordering::Acquire) {
            let stopped = self.inner.stopped.notified();
            if self.inner.sender_done.load(Ordering::Acquire) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), stopped).await;
        }
        flushed
    }
}

async fn sender_loop(inner: Arc<Inner>) {
    loop {
        let closing = inner.closed.load(Ordering::Acquire);
        let drained = {
            let mut accumulator = inner.accumulator.lock().expect("accumulator lock");
            if closing {
                accumulator.close_all();
            }
            accumulator.drain(Instant::now())
        };
        for mut batch in drained.expired {
            let last = batch
                .last_error
                .take()
                .unwrap_or(ClientError::Api(ApiError::Timeout {
                    waited_ms: inner.config.delivery_timeout.as_millis() as u64,
                }));
            let waited = batch.created.elapsed();
            inner.complete_unsent(
                batch,
                ClientError::DeliveryTimeout {
                    waited,
                    last: Box::new(last),
                },
            );
        }
        // A partition whose batch could not even be written this round sends none of its
        // later batches either: they go back behind it, so order holds.
        let mut held_back: Vec<(Arc<str>, u32)> = Vec::new();
        for batch in drained.batches {
            let partition = (Arc::clone(&batch.topic), batch.partition);
            if held_back.contains(&partition) {
                inner
                    .accumulator
                    .lock()
                    .expect("accumulator lock")
                    .requeue(batch);
                continue;
            }
            if !dispatch(&inner, batch).await {
                held_back.push(partition);
            }
        }
        if closing
            && inner
                .accumulator
                .lock()
                .expect("accumulator lock")
                .is_empty()
        {
            inner.sender_done.store(true, Ordering::Release);
            inner.stopped.notify_waiters();
            return;
        }
        let woken = inner.wake.notified();
        match drained.next_wake {
            Some(at) => {
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                }
            }
            None => woken.await,
        }
    }
}

/// Writes one batch to its leader and leaves a task waiting for the reply. Returns false when
/// the batch could not be written (it was put back for a retry, or failed).
async fn dispatch(inner: &Arc<Inner>, batch: ReadyBatch) -> bool {
    let batch = if batch.stamped {
        batch
    } else {
        match stamp(inner, batch).await {
            Some(batch) => batch,
            None => return false,
        }
    };
    let connection = match inner
        .cluster
        .leader_connection(&batch.topic, batch.partition)
        .await
    {
        Ok(connection) => connection,
        Err(error) => {
            inner.failed(batch, error);
            return false;
        }
    };
    let request = Request::Produce(ProduceRequest {
        topic: batch.topic.to_string(),
        partition: batch.partition,
        acks: inner.config.acks,
        timeout_ms: millis_u32(inner.config.request_timeout),
        batch: batch.bytes.clone(),
    });
    tracing::trace!(topic = %batch.topic, partition = batch.partition, records = batch.record_count, "sending batch");
    let reply_timeout = inner.config.request_timeout + REPLY_MARGIN;
    let owner = Arc::clone(inner);
    // Runs on the connection's reader task (no task and no timer per batch), or here with the
    // error when the request cannot be queued.
    let on_reply = move |reply: Result<Response>| match reply {
        Ok(Response::Produce(reply)) => {
            let offset = match owner.config.acks {
                Acks::None => None,
                Acks::All | Acks::Leader => Some(reply.base_offset),
            };
            owner.complete(batch, Ok(offset));
        }
        Ok(other) => owner.complete(batch, Err(unexpected("Produce", &other))),
        Err(error) => owner.failed(batch, error),
    };
    connection
        .submit_with_callback(request, reply_timeout, Box::new(on_reply))
        .await
}

/// Stamps an idempotent producer's batch before its first send (see the module docs).
/// Returns the batch to send, or `None` when it is not sent now: it was put back to wait for
/// an earlier batch of its partition, or it failed.
async fn stamp(inner: &Arc<Inner>, mut batch: ReadyBatch) -> Option<ReadyBatch> {
    let Some(idempotence) = &inner.idempotence else {
        return Some(batch);
    };
    // At most two rounds: the second follows fetching a producer id.
    for _ in 0..2 {
        let decision = idempotence.lock().expect("idempotence lock").stamp(
            &batch.topic,
            batch.partition,
            batch.record_count,
        );
        match decision {
            Stamp::Off => return Some(batch),
            Stamp::Now {
                producer_id,
                producer_epoch,
                base_sequence,
            } => {
                batch.stamped = true;
                match RecordBatch::from_trusted(batch.bytes.clone()) {
                    Ok(built) => {
                        batch.bytes = built
                            .with_producer(producer_id, producer_epoch, base_sequence)
                            .into_bytes();
                        return Some(batch);
                    }
                    Err(error) => {
                        // Built by the accumulator a moment ago: a bug, reported per record
                        // (and, the batch being stamped, its sequence is given up).
                        let error = ClientError::protocol(format!("unreadable own batch: {error}"));
                        inner.complete(batch, Err(error));
                        return None;
                    }
                }
            }
            Stamp::Wait => {
                inner.requeue_waiting(batch);
                return None;
            }
            Stamp::EpochsExhausted => {
                let error = ClientError::invalid(
                    "this partition's producer epochs are exhausted; create a new producer",
                );
                inner.complete(batch, Err(error));
                return None;
            }
            Stamp::NeedProducerId => {
                if let Err(error) = inner.init_producer_id().await {
                    inner.failed(batch, error);
                    return None;
                }
            }
        }
    }
    inner.failed(
        batch,
        ClientError::protocol("no producer id after InitProducerId"),
    );
    None
}

impl Inner {
    /// Asks the cluster for a producer id (any node forwards the client to the metadata
    /// leader by its `NotLeader` hint). A cluster that does not know the request turns
    /// idempotence off for this producer rather than failing every record.
    async fn init_producer_id(&self) -> Result<()> {
        let Some(idempotence) = &self.idempotence else {
            return Ok(());
        };
        let reply = self
            .cluster
            .call_any(Request::InitProducerId(InitProducerIdRequest {}))
            .await;
        match reply {
            Ok(Response::InitProducerId(reply)) => {
                tracing::debug!(producer_id = reply.producer_id, "idempotent producer id");
                idempotence
                    .lock()
                    .expect("idempotence lock")
                    .set_producer_id(reply.producer_id, reply.producer_epoch);
                Ok(())
            }
            Ok(other) => Err(unexpected("InitProducerId", &other)),
            Err(ClientError::Api(ApiError::UnknownRequestType { detail })) => {
                tracing::warn!(%detail, "the cluster offers no producer ids: idempotence is off");
                idempotence.lock().expect("idempotence lock").turn_off();
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Puts back a batch that must wait for an earlier one of its partition; the sender is
    /// woken again when a batch completes.
    fn requeue_waiting(&self, batch: ReadyBatch) {
        self.accumulator
            .lock()
            .expect("accumulator lock")
            .requeue(batch);
    }

    /// A sent batch failed: retry it after a backoff if the failure is retriable and the
    /// delivery timeout allows, else fail its records.
    fn failed(&self, mut batch: ReadyBatch, error: ClientError) {
        if error.needs_metadata_refresh() {
            self.cluster.invalidate();
        }
        if let (
            ClientError::Api(ApiError::ProducerIdNotAllocated { producer_id }),
            Some(idempotence),
            true,
        ) = (&error, &self.idempotence, batch.stamped)
        {
            // The cluster does not know our producer id (it was recreated from empty data,
            // say), so no batch stamped with it can ever be written: replace the id and
            // send the batch again under the new one (see the `idempotence` module).
            idempotence
                .lock()
                .expect("idempotence lock")
                .producer_id_refused(&batch.topic, batch.partition, *producer_id);
            batch.stamped = false;
            return self.retry_later(batch, error);
        }
        if !error.is_retriable() {
            return self.complete(batch, Err(error));
        }
        self.retry_later(batch, error);
    }

    /// Puts a failed batch back to be sent again after a backoff, or fails it when the
    /// delivery timeout would pass first.
    fn retry_later(&self, mut batch: ReadyBatch, error: ClientError) {
        let backoff = self.config.backoff(batch.attempts);
        let deadline = batch.created + self.config.delivery_timeout;
        let now = Instant::now();
        if now + backoff >= deadline {
            let waited = batch.created.elapsed();
            return self.complete(
                batch,
                Err(ClientError::DeliveryTimeout {
                    waited,
                    last: Box::new(error),
                }),
            );
        }
        tracing::debug!(topic = %batch.topic, partition = batch.partition, %error, "retrying batch");
        batch.attempts += 1;
        batch.not_before = Some(now + backoff);
        batch.last_error = Some(error);
        self.accumulator
            .lock()
            .expect("accumulator lock")
            .requeue(batch);
        self.wake.notify_one();
    }

    /// A sent batch has its final outcome.
    fn complete(&self, batch: ReadyBatch, outcome: Result<Option<cairn_protocol::Offset>>) {
        self.accumulator
            .lock()
            .expect("accumulator lock")
            .finish(&batch);
        self.resolve(batch, outcome);
    }

    /// A batch that was never sent (it expired waiting) has failed.
    fn complete_unsent(&self, batch: ReadyBatch, error: ClientError) {
        // `drain` already removed it from the outstanding set; it was never in flight.
        self.resolve(batch, Err(error));
    }

    fn resolve(&self, batch: ReadyBatch, outcome: Result<Option<cairn_protocol::Offset>>) {
        if batch.stamped {
            if let Some(idempotence) = &self.idempotence {
                idempotence.lock().expect("idempotence lock").resolved(
                    &batch.topic,
                    batch.partition,
                    outcome.is_ok(),
                );
            }
        }
        batch.shared.complete(outcome);
        self.buffer.add_permits(batch.buffered_bytes);
        self.wake.notify_one();
    }
}
