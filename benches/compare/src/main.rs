//! `cairn-bench-compare`: runs workload files on Cairn and on NATS JetStream, one after the
//! other on the same machine, and writes report.json, report.md (with the Cairn/JetStream
//! ratios and each side's durability) and report.svg.
//!
//! Modules: this file (flags, the suite), [`nats`] (the JetStream cluster and driver). The
//! measuring itself is cairn-benches' harness, shared with `cairn-bench run`.

mod nats;

use cairn_benches::{cairn_driver, node_process, suite};
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench-compare",
    about = "Cairn and NATS JetStream, same workloads, same run"
)]
struct Args {
    /// Workload files (TOML), e.g. benches/workloads/*.toml.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Systems to run, the first is the one the ratios are about: cairn, nats-jetstream.
    #[arg(long, value_delimiter = ',', default_value = "cairn,nats-jetstream")]
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
    for system in &args.systems {
        if system != cairn_driver::SYSTEM && system != nats::SYSTEM {
            return Err(format!(
                "unknown system {system}: use {} or {}",
                cairn_driver::SYSTEM,
                nats::SYSTEM
            ));
        }
    }
    let workloads = suite::load_workloads(&args.files)?;
    let cairn_binary = args
        .cairn_bin
        .clone()
        .unwrap_or_else(node_process::default_cairn_binary);
    let systems: Vec<&str> = args.systems.iter().map(String::as_str).collect();
    let report = suite::run(&workloads, &systems, &args.out, |system, workload, rate| {
        let (cairn_binary, node_args, nats_server) = (
            cairn_binary.clone(),
            args.node_args.clone(),
            args.nats_server.clone(),
        );
        async move {
            if system == nats::SYSTEM {
                nats::run(&workload, rate, &nats_server).await
            } else {
                cairn_driver::run(&workload, rate, &cairn_binary, &node_args).await
            }
        }
    })
    .await?;
    print!("{}", suite::markdown(&report));
    eprintln!("report written to {}", args.out.display());
    if report.outcomes.is_empty() {
        return Err("no workload completed".into());
    }
    Ok(())
}
