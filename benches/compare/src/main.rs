//! `cairn-bench-compare`: runs workload files on Cairn, NATS JetStream and Apache Kafka, one
//! after the other on the same machine, and writes report.json, report.md (with the ratios of
//! the first system over the others and each side's durability) and report.svg.
//!
//! Modules: this file (flags, the suite), [`nats`] (the JetStream cluster and driver),
//! [`apache_kafka`] (KRaft brokers from Maven Central's jars, driven by librdkafka). The
//! measuring itself is cairn-benches' harness, shared with `cairn-bench run`.

mod apache_kafka;
mod nats;
mod processes;

use cairn_benches::{cairn_driver, kafka_driver, node_process, suite};
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench-compare",
    about = "Cairn, NATS JetStream and Apache Kafka, same workloads, same run"
)]
struct Args {
    /// Workload files (TOML), e.g. benches/workloads/*.toml.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Systems to run, the first is the one the ratios are about: cairn (Cairn's own client),
    /// cairn-kafka (librdkafka through Cairn's Kafka listener), nats-jetstream, apache-kafka
    /// (librdkafka, the same settings as cairn-kafka).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cairn,nats-jetstream,apache-kafka"
    )]
    systems: Vec<String>,
    /// Where report.json, report.md and report.svg are written.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// The `cairn` binary (default: next to this executable).
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Extra arguments for every Cairn node, e.g. `--node-arg=--preset=test`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// The nats-server binary.
    #[arg(long, default_value_os_t = nats::default_binary())]
    nats_server: PathBuf,
    /// The folder of Apache Kafka's jars (scripts/apache-kafka.sh fills it).
    #[arg(long, default_value_os_t = apache_kafka::default_lib())]
    kafka_lib: PathBuf,
    /// Apache Kafka fsyncs after each append (`log.flush.interval.messages=1`): the peer of
    /// Cairn's `storage.durability = "fsync"`. Default: Kafka's own (no fsync).
    #[arg(long)]
    kafka_fsync: bool,
    /// Runs everything this many times, alternating systems, so a busy machine weighs on all
    /// of them alike.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(error) = runtime.block_on(run(args)) {
        eprintln!("cairn-bench-compare: {error}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let known = [
        cairn_driver::SYSTEM,
        kafka_driver::SYSTEM,
        nats::SYSTEM,
        apache_kafka::SYSTEM,
    ];
    for system in &args.systems {
        if !known.contains(&system.as_str()) {
            return Err(format!(
                "unknown system {system}: use one of {}",
                known.join(", ")
            ));
        }
    }
    let workloads = suite::load_workloads(&args.files)?;
    let cairn_binary = args
        .cairn_bin
        .clone()
        .unwrap_or_else(node_process::default_cairn_binary);
    let systems: Vec<&str> = args.systems.iter().map(String::as_str).collect();
    let report = suite::run_rounds(
        &workloads,
        &systems,
        args.rounds,
        &args.out,
        |system, workload, rate| {
            let (cairn_binary, node_args, nats_server, kafka_lib, kafka_fsync) = (
                cairn_binary.clone(),
                args.node_args.clone(),
                args.nats_server.clone(),
                args.kafka_lib.clone(),
                args.kafka_fsync,
            );
            async move {
                match system.as_str() {
                    nats::SYSTEM => nats::run(&workload, rate, &nats_server).await,
                    apache_kafka::SYSTEM => {
                        apache_kafka::run(&workload, rate, &kafka_lib, kafka_fsync).await
                    }
                    kafka_driver::SYSTEM => {
                        kafka_driver::run(&workload, rate, &cairn_binary, &node_args).await
                    }
                    _ => cairn_driver::run(&workload, rate, &cairn_binary, &node_args).await,
                }
            }
        },
    )
    .await?;
    print!("{}", suite::markdown(&report));
    eprintln!("report written to {}", args.out.display());
    if report.outcomes.is_empty() {
        return Err("no workload completed".into());
    }
    Ok(())
}
