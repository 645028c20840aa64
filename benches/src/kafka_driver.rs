//! The Kafka driver: a [`Workload`] through any Kafka bootstrap address with librdkafka (the
//! `rdkafka` crate), measured by the same [`harness`](crate::harness) as the native driver,
//! so the report shows both side by side. [`run`] starts local Cairn nodes with their Kafka
//! listeners on; [`run_on`] needs only a bootstrap address and the broker processes' ids (for
//! their CPU and memory), so it drives Apache Kafka as well.
//!
//! Producers: one librdkafka producer each (`acks=all`, idempotent, as Cairn's producer is by
//! default), the settings of the workload's `[kafka]` table, at most `kafka.in_flight_max`
//! records unacknowledged; each record's acknowledgement is librdkafka's delivery report,
//! handed from its polling thread to the harness through a oneshot channel. Consumers: plain
//! assignment of their share of the partitions from the earliest offset (no group), each
//! polling on a thread of its own.

use crate::harness::{self, Measured, Outcome, Plan, Shared};
use crate::node_process::LocalCluster;
use crate::report::latency_histogram;
use crate::workload::{AcksSetting, Workload};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Cairn driven through its Kafka listener.
pub const SYSTEM: &str = "cairn-kafka";

/// How long every partition may take to get a leader after the topic is created.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a send may wait for room in librdkafka's queue (it should never be full: the
/// harness bounds the records in flight far below `queue.buffering.max.messages`).
const QUEUE_FULL_WAIT_MAX: Duration = Duration::from_secs(30);
/// Errors a consumer tolerates (a broker busy past a fetch timeout) before it declares the
/// run failed.
const CONSUMER_ERRORS_MAX: u32 = 100;

/// The brokers a run drives and how they are reported.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The name the report gives the system (e.g. `cairn-kafka`, `apache-kafka`).
    pub system: &'a str,
    /// What an acknowledgement promises about the disk, in words.
    pub durability: &'a str,
    /// `host:port,...` of the brokers' Kafka listeners.
    pub bootstrap: &'a str,
    /// The broker processes, for CPU and memory from /proc (may be empty).
    pub pids: &'a [u32],
}

/// Starts `workload.nodes` local Cairn nodes with their Kafka listeners on and runs the
/// workload through them.
pub async fn run(
    workload: &Workload,
    target_rate: u64,
    cairn_binary: &Path,
    node_args: &[String],
) -> Result<Outcome, String> {
    let cluster = LocalCluster::start_formed_with(
        Some(cairn_binary.to_path_buf()),
        workload.nodes,
        node_args.to_vec(),
        true,
    )
    .await?;
    let (bootstrap, pids) = (cluster.kafka_bootstrap(), cluster.pids());
    let target = Target {
        system: SYSTEM,
        durability: crate::cairn_driver::durability(node_args),
        bootstrap: &bootstrap,
        pids: &pids,
    };
    let outcome = run_on(workload, target_rate, target).await;
    cluster.shut_down().await?;
    outcome
}

/// Delivers each record's outcome to the oneshot channel its send left as its opaque.
struct Acknowledger;

impl ClientContext for Acknowledger {}

impl ProducerContext for Acknowledger {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), String>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, acknowledgement: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(format!("not acknowledged: {error}")),
        };
        // The harness may have stopped waiting (a failed run): nobody to tell.
        let _ = acknowledgement.send(outcome);
    }
}

/// The producer settings of a workload: acks and idempotence as Cairn's producer, batching
/// from its `[kafka]` table.
pub fn producer_config(workload: &Workload, bootstrap: &str) -> ClientConfig {
    let kafka = &workload.kafka;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set(
            "acks",
            match workload.acks {
                AcksSetting::All => "all",
                AcksSetting::Leader => "1",
                AcksSetting::None => "0",
            },
        )
        // Cairn's producer is idempotent with acks=all (as Kafka's clients are by default).
        .set(
            "enable.idempotence",
            (workload.acks == AcksSetting::All).to_string(),
        )
        .set("linger.ms", kafka.linger_ms.to_string())
        .set("batch.size", kafka.batch_bytes.to_string())
        .set(
            "max.in.flight.requests.per.connection",
            kafka.in_flight_per_connection.to_string(),
        )
        .set(
            "sticky.partitioning.linger.ms",
            kafka.sticky_linger_ms.to_string(),
        )
        .set("compression.type", "none")
        // Cairn's client sets TCP_NODELAY; librdkafka leaves Nagle on by default.
        .set("socket.nagle.disable", "true")
        // Room for far more than the harness lets be in flight.
        .set(
            "queue.buffering.max.messages",
            (kafka.in_flight_max * 2).max(1_000).to_string(),
        )
        .set("message.timeout.ms", "60000");
    config
}

fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // Partitions are assigned, not subscribed: librdkafka still wants a group id, which
        // it uses for nothing here (no commits).
        .set("group.id", format!("cairn-bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // As the native consumer's fetch_max_wait_ms.
        .set("fetch.wait.max.ms", "100")
        .set("socket.nagle.disable", "true");
    config
}

/// Creates `topic` through the Kafka admin API and waits until every partition has a leader.
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    replication_factor: u16,
) -> Result<(), String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|error| format!("admin client: {error}"))?;
    let new_topic = NewTopic::new(
        topic,
        i32::try_from(partitions).map_err(|_| "too many partitions".to_string())?,
        TopicReplication::Fixed(i32::from(replication_factor)),
    );
    let results = admin
        .create_topics(
            &[new_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .map_err(|error| format!("creating topic {topic}: {error}"))?;
    for result in results {
        result.map_err(|(name, code)| format!("creating topic {name}: {code}"))?;
    }
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || wait_for_leaders(&bootstrap, &topic, partitions))
        .await
        .map_err(|error| error.to_string())?
}

/// Polls the topic's metadata until every partition reports a leader (bounded).
fn wait_for_leaders(bootstrap: &str, topic: &str, partitions: u32) -> Result<(), String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let consumer: BaseConsumer = config
        .create()
        .map_err(|error| format!("metadata client: {error}"))?;
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    loop {
        let led = match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions())
                .filter(|partition| partition.leader() >= 0 && partition.error().is_none())
                .count(),
            Err(_) => 0,
        };
        if led >= partitions as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{topic}: only {led} of {partitions} partitions have a leader after {LEADERS_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Hands one record to librdkafka; the returned channel receives its delivery report. Waits
/// (bounded) while librdkafka's queue is full.
async fn send(
    producer: &ThreadedProducer<Acknowledger>,
    topic: &str,
    value: &[u8],
) -> Result<oneshot::Receiver<Result<(), String>>, String> {
    let (acknowledgement, acknowledged) = oneshot::channel();
    let mut record =
        BaseRecord::<(), [u8], _>::with_opaque_to(topic, Box::new(acknowledgement)).payload(value);
    let deadline = Instant::now() + QUEUE_FULL_WAIT_MAX;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(acknowledged),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((error, _)) => return Err(format!("send: {error}")),
        }
    }
}

/// Reads `partitions` of `topic` from the earliest offset until the harness says the
/// consumers may stop, recording end-to-end latency. Runs on a thread of its own.
fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: &[u32],
    shared: &Shared,
) -> Result<Histogram<u64>, String> {
    let consumer: BaseConsumer = consumer_config(bootstrap)
        .create()
        .map_err(|error| format!("consumer: {error}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, *partition as i32, Offset::Beginning)
            .map_err(|error| format!("assignment: {error}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| format!("assigning partitions: {error}"))?;
    let mut histogram = latency_histogram();
    let mut errors = 0u32;
    while !shared.consumers_may_stop() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => shared.consumed(message.payload().unwrap_or(&[]), &mut histogram),
            Some(Err(error)) => {
                errors += 1;
                if errors > CONSUMER_ERRORS_MAX {
                    return Err(format!("consumer: {error} ({errors} errors)"));
                }
            }
            None => {}
        }
    }
    Ok(histogram)
}

/// Runs `workload` on the brokers of `target`.
pub async fn run_on(
    workload: &Workload,
    target_rate: u64,
    target: Target<'_>,
) -> Result<Outcome, String> {
    let topic = format!("{}-{}", workload.name, std::process::id());
    create_topic(
        target.bootstrap,
        &topic,
        workload.partitions,
        workload.replication_factor,
    )
    .await?;
    let idle = if workload.idle_s > 0 {
        eprintln!(
            "{}: measuring idle brokers for {} s",
            workload.name, workload.idle_s
        );
        harness::measure_idle(target.pids, workload.idle_s).await
    } else {
        Vec::new()
    };
    let load_average_before = harness::load_average();

    let mut producers = Vec::new();
    for _ in 0..workload.producers {
        let producer: ThreadedProducer<Acknowledger> = producer_config(workload, target.bootstrap)
            .create_with_context(Acknowledger)
            .map_err(|error| format!("starting a producer: {error}"))?;
        producers.push(producer);
    }
    let shared = Arc::new(Shared::new(Plan::new(
        workload,
        target_rate,
        workload.kafka.in_flight_max,
    )));
    let consumer_tasks: Vec<_> = (0..workload.consumers.min(workload.partitions))
        .map(|consumer_index| {
            let mine: Vec<u32> = (0..workload.partitions)
                .filter(|partition| partition % workload.consumers == consumer_index)
                .collect();
            let (shared, topic, bootstrap) =
                (shared.clone(), topic.clone(), target.bootstrap.to_owned());
            tokio::task::spawn_blocking(move || consume(&bootstrap, &topic, &mine, &shared))
        })
        .collect();
    let producer_tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(index, producer)| {
            let (shared, topic) = (shared.clone(), topic.clone());
            tokio::spawn(async move {
                let (producer_ref, topic_ref) = (&producer, topic.as_str());
                let histogram =
                    harness::produce(&shared, index as u32, move |value: Bytes| async move {
                        let acknowledged = send(producer_ref, topic_ref, &value).await?;
                        Ok::<_, String>(async move {
                            acknowledged
                                .await
                                .map_err(|_| "the producer dropped a delivery report".to_string())?
                        })
                    })
                    .await;
                // Every record was acknowledged (or the run failed): dropping the producer
                // joins its polling thread, off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
                histogram
            })
        })
        .collect();

    let label = format!("{} on {}", workload.name, target.system);
    let (nodes, client_cpu_cores) = harness::observe(&shared, target.pids, &label).await;
    let (publish_latency, end_to_end_latency) =
        harness::join_latencies(&shared, producer_tasks, consumer_tasks)
            .await
            .map_err(|error| format!("{}: {error}", workload.name))?;
    Ok(Measured {
        system: target.system,
        durability: target.durability,
        workload,
        target_rate,
        shared: &shared,
        publish_latency: &publish_latency,
        end_to_end_latency: &end_to_end_latency,
        nodes,
        idle,
        client_cpu_cores,
        load_average_before,
    }
    .outcome())
}
