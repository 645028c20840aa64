//! `cairn-bench`: a load generator for Cairn in the OpenMessaging Benchmark spirit.
//!
//! Map of the modules:
//!
//! - this file: the workload flags and the two phases: produce (throughput and publish
//!   latency per record, from `send` to acknowledgement), then consume the backlog from the
//!   earliest offset (throughput).
//! - [`node_process`]: starts a node, or a local cluster of `--nodes N` (the layout of
//!   `cairn dev`), when no `--bootstrap` is given, and reads CPU time and peak memory from
//!   /proc.
//! - [`failover`]: `cairn-bench failover`, the time from SIGKILL of a partition leader to the
//!   first acknowledged write on its successor, over repeated kills and restarts.
//! - [`rebalance`]: `cairn-bench rebalance`, the time a consumer group takes to rebalance
//!   when a member joins and when one leaves.
//! - [`compaction`]: `cairn-bench compaction`, publish latency while the compactors clean a
//!   large compacted topic, against a baseline run in the same invocation.
//! - [`disk`]: `cairn-bench disk`, sled flush latency alone (the disk's share of publish
//!   latency).
//! - [`report`]: hdrhistogram percentiles and throughput arithmetic.
//!
//! With `--rate`, latency is measured from each record's *intended* send time, so a stalled
//! broker is charged for the records it kept the producer from sending (coordinated omission).

mod compaction;
mod disk;
mod failover;
mod rebalance;
// The measuring modules live in the library, which the peer comparison (benches/compare)
// shares; `crate::node_process` and `crate::report` keep working through these imports.
use cairn_benches::{node_process, report};

use bytes::Bytes;
use cairn_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    TopicConfig,
};
use cairn_protocol::{Acks, Record};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use report::{latency_histogram, Latency, Throughput};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench",
    about = "Load generator for Cairn",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    workload: Workload,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Time from SIGKILL of a partition leader to the first acknowledged write on its
    /// successor, over repeated kills (a local cluster is started).
    Failover(failover::FailoverArgs),
    /// Time for a consumer group to rebalance when a member joins and when one leaves.
    Rebalance(rebalance::RebalanceArgs),
    /// The disk's share of the publish latency: sled flush times of one store per node,
    /// appending and flushing at a steady rate, with no network and no broker.
    Disk(disk::DiskArgs),
    /// Runs workload files (benches/workloads/*.toml) on local Cairn nodes and writes
    /// report.json, report.md and report.svg.
    Run(cairn_benches::cairn_driver::RunArgs),
    /// Publish latency of a workload (rf3-1kb-half) while the nodes compact a large
    /// compacted topic, next to a baseline without compaction, in one invocation.
    Compaction(compaction::CompactionArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct Workload {
    /// Brokers of a running cluster. Without it, nodes are started for the run.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Nodes to start when no `--bootstrap` is given: 1, or a local cluster (3 for the
    /// replicated figures).
    #[arg(long, default_value_t = 1)]
    nodes: u16,
    /// Replicas per partition of the topic (default: the cluster's, 3 or fewer nodes).
    #[arg(long)]
    replication_factor: Option<u16>,
    /// The `cairn` binary used to start a node (default: next to this executable).
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Extra arguments for every started node, e.g. `--node-arg=--preset=test`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Topic to use; created if absent. Default: a fresh name per run.
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records to produce in all.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Producer clients, each with its own connections.
    #[arg(long, default_value_t = 2)]
    producers: u32,
    /// Consumer clients for the consume phase; partitions are split among them.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value_t = 64 * 1024)]
    batch_bytes: usize,
    #[arg(long, default_value_t = 5)]
    in_flight_per_partition: usize,
    /// Target records/s over all producers; 0 sends as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Records sent and not counted before measuring, to warm up connections and caches.
    #[arg(long, default_value_t = 20_000)]
    warmup_records: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
enum AcksArg {
    All,
    Leader,
    None,
}

impl From<AcksArg> for Acks {
    fn from(acks: AcksArg) -> Acks {
        match acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    topic: String,
    partitions: u32,
    nodes: u16,
    replication_factor: Option<u16>,
    record_bytes: usize,
    producers: u32,
    consumers: u32,
    acks: AcksArg,
    target_rate: u64,
    produce: Throughput,
    publish_latency: Latency,
    consume: Throughput,
    node: Option<node_process::ResourceUse>,
    /// This load generator's own CPU, to tell a saturated client from a saturated cluster.
    client: Option<node_process::ResourceUse>,
    machine: String,
}

type BenchResult<T> = Result<T, String>;

fn main() {
    let cli = Cli::parse();
    // The client's own events (e.g. `CAIRN_LOG=cairn_client=debug`: each fetch's partitions,
    // bytes and time), on stderr; nothing without the variable.
    if let Ok(filter) = std::env::var("CAIRN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = match cli.command {
        Some(BenchCommand::Failover(args)) => runtime.block_on(failover::run(args)),
        Some(BenchCommand::Rebalance(args)) => runtime.block_on(rebalance::run(args)),
        Some(BenchCommand::Disk(args)) => disk::run(args),
        Some(BenchCommand::Run(args)) => {
            runtime.block_on(cairn_benches::cairn_driver::run_command(args))
        }
        Some(BenchCommand::Compaction(args)) => runtime.block_on(compaction::run(args)),
        None => runtime.block_on(run(cli.workload)),
    };
    match outcome {
        Ok(()) => {}
        Err(error) => {
            eprintln!("cairn-bench: {error}");
            std::process::exit(1);
        }
    }
}

async fn run(workload: Workload) -> BenchResult<()> {
    let cluster = match &workload.bootstrap {
        Some(_) => None,
        None => {
            let cluster = node_process::LocalCluster::start_formed(
                workload.cairn_bin.clone(),
                workload.nodes,
                workload.node_args.clone(),
            )
            .await?;
            Some(cluster)
        }
    };
    let bootstrap = match (&workload.bootstrap, &cluster) {
        (Some(bootstrap), _) => bootstrap.clone(),
        (None, Some(cluster)) => cluster.bootstrap(),
        (None, None) => unreachable!("nodes are started when no bootstrap is given"),
    };
    let client = ClientConfig::new(&bootstrap).map_err(|error| error.to_string())?;
    let topic = workload
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench-{}", std::process::id()));
    let admin = Admin::new(client.clone()).map_err(|error| error.to_string())?;
    if let Err(error) = admin
        .create_topic(
            &topic,
            workload.partitions,
            workload.replication_factor,
            TopicConfig::default(),
        )
        .await
    {
        if !matches!(
            error.api_error(),
            Some(cairn_protocol::ApiError::TopicAlreadyExists { .. })
        ) {
            return Err(format!("creating topic {topic}: {error}"));
        }
    }
    eprintln!(
        "cairn-bench: {} records of {} B to '{topic}' ({} partitions, replication factor {}) on {}, {} producers, acks={:?}",
        workload.records,
        workload.record_bytes,
        workload.partitions,
        workload
            .replication_factor
            .map_or("default".to_owned(), |rf| rf.to_string()),
        match &cluster {
            Some(_) => format!("{} local nodes", workload.nodes),
            None => bootstrap.clone(),
        },
        workload.producers,
        workload.acks
    );

    let (produce, publish_latency) = produce_phase(&workload, &client, &topic).await?;
    let consume = consume_phase(&workload, &client, &topic).await?;
    let report = Report {
        topic,
        partitions: workload.partitions,
        nodes: workload.nodes,
        replication_factor: workload.replication_factor,
        record_bytes: workload.record_bytes,
        producers: workload.producers,
        consumers: workload.consumers,
        acks: workload.acks,
        target_rate: workload.rate,
        produce,
        publish_latency,
        consume,
        node: cluster
            .as_ref()
            .and_then(|cluster| node_process::cluster_resource_use(&cluster.pids())),
        client: node_process::resource_use(std::process::id()),
        machine: cairn_benches::harness::machine_description(),
    };
    if let Some(cluster) = cluster {
        cluster.shut_down().await?;
    }
    print_markdown(&report);
    if let Some(path) = &workload.json {
        cairn_benches::report::write_json(path, &report)?;
    }
    Ok(())
}

/// Sends `records` (plus warm-up) from `producers` clients; returns throughput over the
/// measured records and their publish latency (µs histogram) as percentiles.
async fn produce_phase(
    workload: &Workload,
    client: &ClientConfig,
    topic: &str,
) -> BenchResult<(Throughput, Latency)> {
    let payload = Bytes::from(
        (0..workload.record_bytes)
            .map(|index| (index * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let producer_config = ProducerConfig::default()
        .acks(workload.acks.into())
        .linger(Duration::from_millis(workload.linger_ms))
        .batch_bytes_max(workload.batch_bytes)
        .requests_in_flight_per_partition_max(workload.in_flight_per_partition);
    let per_producer = workload.records / u64::from(workload.producers);
    let warmup_per_producer = workload.warmup_records / u64::from(workload.producers);
    let interval = (workload.rate > 0)
        .then(|| Duration::from_secs_f64(f64::from(workload.producers) / workload.rate as f64));
    let mut tasks = Vec::new();
    let start_gate = Arc::new(tokio::sync::Barrier::new(workload.producers as usize));
    for _ in 0..workload.producers {
        let producer = Producer::new(client.clone(), producer_config.clone())
            .await
            .map_err(|error| format!("starting a producer: {error}"))?;
        let (topic, payload, gate) = (topic.to_owned(), payload.clone(), start_gate.clone());
        tasks.push(tokio::spawn(async move {
            send_records(&producer, &topic, &payload, warmup_per_producer, None, None).await?;
            gate.wait().await;
            let mut histogram = latency_histogram();
            let started = Instant::now();
            send_records(
                &producer,
                &topic,
                &payload,
                per_producer,
                interval,
                Some(&mut histogram),
            )
            .await?;
            producer
                .close()
                .await
                .map_err(|error| format!("closing a producer: {error}"))?;
            Ok::<_, String>((started, Instant::now(), histogram))
        }));
    }
    let mut histogram = latency_histogram();
    let (mut first_start, mut last_end) = (None::<Instant>, None::<Instant>);
    for task in tasks {
        let (started, ended, part) = task.await.map_err(|error| error.to_string())??;
        histogram.add(&part).map_err(|error| error.to_string())?;
        first_start = Some(first_start.map_or(started, |first| first.min(started)));
        last_end = Some(last_end.map_or(ended, |last| last.max(ended)));
    }
    let elapsed = last_end.expect("one producer") - first_start.expect("one producer");
    let measured = per_producer * u64::from(workload.producers);
    Ok((
        Throughput::new(measured, workload.record_bytes, elapsed),
        Latency::from_micros(&histogram),
    ))
}

/// Sends `count` keyless records and awaits every acknowledgement, recording each record's
/// latency when a histogram is given. With an interval, records are paced and latency runs
/// from the intended send time.
async fn send_records(
    producer: &Producer,
    topic: &str,
    payload: &Bytes,
    count: u64,
    interval: Option<Duration>,
    mut histogram: Option<&mut hdrhistogram::Histogram<u64>>,
) -> BenchResult<()> {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut record_latency = |result: (Instant, Result<_, cairn_client::ClientError>)| {
        let (sent, outcome) = result;
        outcome.map_err(|error| format!("a record was not acknowledged: {error}"))?;
        if let Some(histogram) = histogram.as_deref_mut() {
            let micros = sent.elapsed().as_micros().max(1) as u64;
            histogram.saturating_record(micros);
        }
        Ok::<(), String>(())
    };
    for index in 0..count {
        let sent = match interval {
            Some(interval) => {
                let intended = started + interval.mul_f64(index as f64);
                tokio::time::sleep_until(intended.into()).await;
                intended
            }
            None => Instant::now(),
        };
        let delivery = producer
            .send(topic, Record::new(payload.clone()))
            .await
            .map_err(|error| format!("send failed: {error}"))?;
        pending.push(async move { (sent, delivery.await) });
        // Reap what has completed so the set stays small; the producer's bounded buffer is
        // what limits how many records are outstanding.
        while let Some(Some(result)) = futures::FutureExt::now_or_never(pending.next()) {
            record_latency(result)?;
        }
    }
    while let Some(result) = pending.next().await {
        record_latency(result)?;
    }
    Ok(())
}

/// Reads the topic from the earliest offset with `consumers` clients until each has read its
/// partitions up to the high watermark seen at the start.
async fn consume_phase(
    workload: &Workload,
    client: &ClientConfig,
    topic: &str,
) -> BenchResult<Throughput> {
    let partitions: Vec<u32> = (0..workload.partitions).collect();
    let consumers = workload.consumers.clamp(1, workload.partitions);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for consumer_index in 0..consumers {
        let mine: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|partition| partition % consumers == consumer_index)
            .collect();
        let (client, topic) = (client.clone(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(
                client,
                ConsumerConfig::default().auto_offset_reset(AutoOffsetReset::Earliest),
            )
            .map_err(|error| error.to_string())?;
            let assignment: Vec<(&str, u32)> = mine
                .iter()
                .map(|partition| (topic.as_str(), *partition))
                .collect();
            consumer
                .assign(&assignment)
                .await
                .map_err(|error| error.to_string())?;
            let mut targets = Vec::new();
            for partition in &mine {
                consumer
                    .seek(&topic, *partition, cairn_client::SeekTo::Earliest)
                    .await
                    .map_err(|error| error.to_string())?;
                let end = consumer
                    .seek(&topic, *partition, cairn_client::SeekTo::Latest)
                    .await
                    .map_err(|error| error.to_string())?;
                consumer
                    .seek(&topic, *partition, cairn_client::SeekTo::Earliest)
                    .await
                    .map_err(|error| error.to_string())?;
                targets.push((*partition, end));
            }
            let mut read = 0u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let done = targets.iter().all(|(partition, end)| {
                    consumer
                        .position(&topic, *partition)
                        .is_some_and(|position| position >= *end)
                });
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    return Err("the consumer did not catch up within 600 s".to_string());
                }
                read += consumer
                    .poll(Duration::from_millis(500))
                    .await
                    .map_err(|error| error.to_string())?
                    .len() as u64;
            }
            Ok::<u64, String>(read)
        }));
    }
    let mut records = 0;
    for task in tasks {
        records += task.await.map_err(|error| error.to_string())??;
    }
    Ok(Throughput::new(
        records,
        workload.record_bytes,
        started.elapsed(),
    ))
}

fn print_markdown(report: &Report) {
    println!("\n| workload | value |\n|---|---|");
    println!(
        "| topic | {} ({} partitions, replication factor {}) |\n| nodes | {} |\n| records | {} x {} B |\n| producers / consumers | {} / {} |\n| acks | {:?} |\n| target rate | {} |\n| machine | {} |",
        report.topic,
        report.partitions,
        report
            .replication_factor
            .map_or("cluster default".to_owned(), |rf| rf.to_string()),
        report.nodes,
        report.produce.records,
        report.record_bytes,
        report.producers,
        report.consumers,
        report.acks,
        if report.target_rate == 0 { "max".to_string() } else { format!("{} records/s", report.target_rate) },
        report.machine,
    );
    println!("\n| result | records/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|");
    let latency = &report.publish_latency;
    println!(
        "| produce | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
        report.produce.records_per_second,
        report.produce.megabytes_per_second,
        latency.p50_ms,
        latency.p99_ms,
        latency.p999_ms,
        latency.max_ms
    );
    println!(
        "| consume | {:.0} | {:.1} | | | | |",
        report.consume.records_per_second, report.consume.megabytes_per_second
    );
    if let Some(node) = report.node {
        println!(
            "\nnodes: {:.1} s CPU in all, largest peak RSS {:.0} MiB",
            node.cpu_seconds,
            node.peak_rss_bytes as f64 / 1048576.0
        );
    }
    if let Some(client) = report.client {
        println!("cairn-bench itself: {:.1} s CPU", client.cpu_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_flags_and_the_failover_subcommand_both_parse() {
        let cli = Cli::try_parse_from([
            "cairn-bench",
            "--nodes",
            "3",
            "--replication-factor",
            "3",
            "--records",
            "10",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            (cli.workload.nodes, cli.workload.replication_factor),
            (3, Some(3))
        );
        let cli = Cli::try_parse_from([
            "cairn-bench",
            "failover",
            "--kills",
            "5",
            "--node-arg=--set=replica.lease_ms=400",
        ])
        .unwrap();
        match cli.command {
            Some(BenchCommand::Failover(args)) => {
                assert_eq!(args.kills, 5);
                assert_eq!(args.nodes, 3);
                assert_eq!(args.node_args, ["--set=replica.lease_ms=400"]);
            }
            _ => panic!("failover was not parsed"),
        }
        // Load flags belong to the load run, not to a subcommand.
        assert!(Cli::try_parse_from(["cairn-bench", "--records", "5", "failover"]).is_err());
    }
}
