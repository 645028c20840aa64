//! Runs a [`Workload`] against Cairn: starts `nodes` local `cairn node` processes, creates the
//! topic, measures the idle nodes if asked, then runs producers and consumers at once through
//! the [`harness`](crate::harness).

use crate::harness::{self, Measured, Outcome, Plan, Shared};
use crate::node_process::LocalCluster;
use crate::report::latency_histogram;
use crate::workload::{AcksSetting, Workload};
use bytes::Bytes;
use cairn_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    TopicConfig,
};
use cairn_protocol::{Acks, Record};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SYSTEM: &str = "cairn";
/// What an acknowledgement promises with `storage.durability = "flush"`.
pub const DURABILITY_FLUSH: &str =
    "acks=all, storage.durability = flush: a record is acknowledged once a majority of \
     replicas flushed it (sled's flush: written to the kernel, its writeback started in batches, which \
     survives a process crash; not an fsync, so a power loss on a majority can lose \
     acknowledged records)";
/// What an acknowledgement promises with `storage.durability = "fsync"`.
pub const DURABILITY_FSYNC: &str =
    "acks=all, storage.durability = fsync: a record is acknowledged once a majority of replicas \
     synced it to disk (log and blob files fdatasync'd, new directory entries fsync'd, in \
     grouped syncs), which survives a power loss";

/// The durability the nodes run with, from their arguments (`--set storage.durability=..`,
/// as one argument or two); the node's default otherwise.
pub fn durability(node_args: &[String]) -> &'static str {
    let chosen = node_args
        .iter()
        .rev()
        .find_map(|arg| arg.split_once("storage.durability=").map(|(_, mode)| mode));
    let test_preset = node_args
        .windows(2)
        .any(|pair| pair[0] == "--preset" && pair[1] == "test")
        || node_args.iter().any(|arg| arg == "--preset=test");
    match chosen {
        Some("flush") => DURABILITY_FLUSH,
        Some(_) => DURABILITY_FSYNC,
        // The default preset syncs; the test preset flushes.
        None if test_preset => DURABILITY_FLUSH,
        None => DURABILITY_FSYNC,
    }
}

/// How long every partition may take to get a leader after the topic is created.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(
    workload: &Workload,
    target_rate: u64,
    cairn_binary: &Path,
    node_args: &[String],
) -> Result<Outcome, String> {
    let cluster = LocalCluster::start_formed(
        Some(cairn_binary.to_path_buf()),
        workload.nodes,
        node_args.to_vec(),
    )
    .await?;
    let outcome = run_on(workload, target_rate, &cluster, durability(node_args)).await;
    cluster.shut_down().await?;
    outcome
}

async fn run_on(
    workload: &Workload,
    target_rate: u64,
    cluster: &LocalCluster,
    durability: &'static str,
) -> Result<Outcome, String> {
    let topic = format!("{}-{}", workload.name, std::process::id());
    run_on_topic(workload, target_rate, cluster, durability, &topic, |_| {}).await
}

/// Runs `workload` on a running `cluster`, on a new `topic`, and calls `on_plan` with the
/// run's time plan (warm-up start, measured window) just before the load starts, so that a
/// caller can act or sample alongside (`cairn-bench compaction`).
pub async fn run_on_topic(
    workload: &Workload,
    target_rate: u64,
    cluster: &LocalCluster,
    durability: &'static str,
    topic: &str,
    on_plan: impl FnOnce(&Plan),
) -> Result<Outcome, String> {
    let client = ClientConfig::new(&cluster.bootstrap()).map_err(|error| error.to_string())?;
    let topic = topic.to_owned();
    let admin = Admin::new(client.clone()).map_err(|error| error.to_string())?;
    admin
        .create_topic(
            &topic,
            workload.partitions,
            Some(workload.replication_factor),
            TopicConfig::default(),
        )
        .await
        .map_err(|error| format!("creating topic {topic}: {error}"))?;
    wait_for_leaders(&admin, &topic, workload.partitions).await?;
    let pids = cluster.pids();
    let idle = if workload.idle_s > 0 {
        eprintln!(
            "{}: measuring idle nodes for {} s",
            workload.name, workload.idle_s
        );
        harness::measure_idle(&pids, workload.idle_s).await
    } else {
        Vec::new()
    };
    let load_average_before = harness::load_average();

    let mut consumers = Vec::new();
    for consumer_index in 0..workload.consumers.min(workload.partitions) {
        let mine: Vec<u32> = (0..workload.partitions)
            .filter(|partition| partition % workload.consumers == consumer_index)
            .collect();
        let mut consumer = Consumer::new(
            client.clone(),
            ConsumerConfig::default()
                .auto_offset_reset(AutoOffsetReset::Earliest)
                .fetch_max_wait(Duration::from_millis(100)),
        )
        .map_err(|error| error.to_string())?;
        let assignment: Vec<(&str, u32)> = mine.iter().map(|p| (topic.as_str(), *p)).collect();
        consumer
            .assign(&assignment)
            .await
            .map_err(|error| format!("assigning partitions: {error}"))?;
        consumers.push(consumer);
    }
    let in_flight_max = workload.cairn.in_flight_max;
    let producer_config = ProducerConfig::default()
        .acks(match workload.acks {
            AcksSetting::All => Acks::All,
            AcksSetting::Leader => Acks::Leader,
            AcksSetting::None => Acks::None,
        })
        .linger(Duration::from_millis(workload.cairn.linger_ms))
        .batch_bytes_max(workload.cairn.batch_bytes)
        .requests_in_flight_per_partition_max(workload.cairn.in_flight_per_partition)
        // Room for every record the harness lets be in flight, so the harness's bound, not
        // the buffer, is what limits a producer.
        .buffer_bytes_max(
            (in_flight_max * (workload.record_bytes + 64))
                .max(2 * workload.cairn.batch_bytes)
                .min(1 << 30),
        );
    let mut producers = Vec::new();
    for _ in 0..workload.producers {
        producers.push(
            Producer::new(client.clone(), producer_config.clone())
                .await
                .map_err(|error| format!("starting a producer: {error}"))?,
        );
    }

    let shared = Arc::new(Shared::new(Plan::new(workload, target_rate, in_flight_max)));
    on_plan(&shared.plan);
    let consumer_tasks: Vec<_> = consumers
        .into_iter()
        .map(|mut consumer| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut histogram = latency_histogram();
                while !shared.consumers_may_stop() {
                    let records = consumer
                        .poll(Duration::from_millis(100))
                        .await
                        .map_err(|error| format!("consumer poll: {error}"))?;
                    for record in &records {
                        shared
                            .consumed(record.value.as_deref().unwrap_or_default(), &mut histogram);
                    }
                }
                Ok::<_, String>(histogram)
            })
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
                        let delivery = producer_ref
                            .send(topic_ref, Record::new(value))
                            .await
                            .map_err(|error| format!("send: {error}"))?;
                        Ok::<_, String>(async move {
                            delivery
                                .await
                                .map(|_| ())
                                .map_err(|error| format!("not acknowledged: {error}"))
                        })
                    })
                    .await;
                let _ = producer.close().await;
                histogram
            })
        })
        .collect();

    let label = format!("{} on cairn", workload.name);
    let (nodes, client_cpu_cores) = harness::observe(&shared, &pids, &label).await;
    let (publish_latency, end_to_end_latency) =
        harness::join_latencies(&shared, producer_tasks, consumer_tasks)
            .await
            .map_err(|error| format!("{}: {error}", workload.name))?;
    Ok(Measured {
        system: SYSTEM,
        durability,
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

/// Waits until every partition of `topic` reports a leader, so the warm-up is not spent on
/// elections (1,000 partitions take a while).
pub async fn wait_for_leaders(admin: &Admin, topic: &str, partitions: u32) -> Result<(), String> {
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    loop {
        let led = match admin.describe_topic(topic).await {
            Ok(description) => description
                .partitions
                .iter()
                .filter(|partition| partition.leader.is_some())
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `cairn-bench run FILE..`: the workload files on Cairn alone.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Workload files (TOML), e.g. benches/workloads/*.toml.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// Where report.json, report.md and report.svg are written.
    #[arg(long, default_value = "bench-report")]
    pub out: std::path::PathBuf,
    /// The `cairn` binary used to start the nodes (default: next to this executable).
    #[arg(long)]
    pub cairn_bin: Option<std::path::PathBuf>,
    /// Extra arguments for every node, e.g. `--node-arg=--preset=test`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// The clients that drive Cairn, each workload run once with each in turn: `native`
    /// (Cairn's own client and protocol) and `kafka` (librdkafka through the nodes' Kafka
    /// listeners). The ratios are the first over the others.
    #[arg(long, value_delimiter = ',', default_value = "native")]
    pub driver: Vec<Driver>,
    /// Runs everything this many times, alternating drivers, so a busy machine weighs on
    /// both alike.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

/// Which client drives Cairn in `cairn-bench run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    Native,
    Kafka,
}

impl Driver {
    /// The system name its outcomes carry in the report.
    pub fn system(self) -> &'static str {
        match self {
            Driver::Native => SYSTEM,
            Driver::Kafka => crate::kafka_driver::SYSTEM,
        }
    }
}

pub async fn run_command(args: RunArgs) -> Result<(), String> {
    let workloads = crate::suite::load_workloads(&args.files)?;
    let binary = args
        .cairn_bin
        .clone()
        .unwrap_or_else(crate::node_process::default_cairn_binary);
    let node_args = args.node_args.clone();
    let mut systems: Vec<&str> = args.driver.iter().map(|driver| driver.system()).collect();
    systems.dedup();
    let report = crate::suite::run_rounds(
        &workloads,
        &systems,
        args.rounds,
        &args.out,
        |system, workload, rate| {
            let (binary, node_args) = (binary.clone(), node_args.clone());
            async move {
                if system == crate::kafka_driver::SYSTEM {
                    crate::kafka_driver::run(&workload, rate, &binary, &node_args).await
                } else {
                    run(&workload, rate, &binary, &node_args).await
                }
            }
        },
    )
    .await?;
    print!("{}", crate::suite::markdown(&report));
    eprintln!("report written to {}", args.out.display());
    if report.outcomes.is_empty() {
        return Err("no workload completed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_durability_the_nodes_were_given() {
        let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
        assert_eq!(
            durability(&[]),
            DURABILITY_FSYNC,
            "the default preset syncs"
        );
        assert_eq!(durability(&args(&["--preset=test"])), DURABILITY_FLUSH);
        assert_eq!(durability(&args(&["--preset", "test"])), DURABILITY_FLUSH);
        assert_eq!(
            durability(&args(&["--preset=test", "--set=storage.durability=fsync"])),
            DURABILITY_FSYNC
        );
        assert_eq!(
            durability(&args(&["--set=storage.durability=fsync"])),
            DURABILITY_FSYNC
        );
        assert_eq!(
            durability(&args(&["--set", "storage.durability=fsync"])),
            DURABILITY_FSYNC
        );
        // The last setting wins, as it does in the node.
        assert_eq!(
            durability(&args(&[
                "--set=storage.durability=fsync",
                "--set=storage.durability=flush"
            ])),
            DURABILITY_FLUSH
        );
    }
}
