//! `cairn-chaos`: run a chaos campaign, or check a recorded one.
//!
//! Exit status: 0 when the checker found no anomaly, 1 when it found some, 2 when the campaign
//! could not run (bad arguments, nodes that never became ready).

use cairn_chaos::campaign::{self, CampaignConfig, SavedReplicas};
use cairn_chaos::checker::{self, AnomalyKind};
use cairn_chaos::history::read_history;
use cairn_chaos::net::{self, Entered};
use cairn_chaos::schedule::FaultKind;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn-chaos",
    about = "Chaos campaigns against real Cairn nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per run: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Start a cluster, run the workload under the seed's faults, check, report.
    Run(RunArgs),
    /// Check a recorded campaign directory again (history.jsonl, replicas.json).
    Check {
        /// The campaign's output directory.
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes in the cluster (each an initial metadata voter).
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    /// How long the campaign runs: `300s`, `5m` or seconds; the last quarter (5-30 s) is
    /// quiet, then the drain follows.
    #[arg(long, default_value = "300s")]
    duration: String,
    /// Fault kinds to mix: kill, pause, partition, clock, client, hostile, retention,
    /// compaction, power.
    /// `power` (not in the default mix) puts every node's data directory on a cairn-powerfs
    /// mount and cuts the power of a majority or all nodes at once: every write not yet
    /// fsynced is lost.
    #[arg(
        long,
        default_value = "kill,pause,partition,clock,client,hostile,retention,compaction"
    )]
    faults: String,
    /// Seed of the fault schedule (replays it); default: from the clock, printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory; default chaos-out/seed-<seed>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `cairn` binary; default: `cairn` beside this program.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Partitions of the campaign's topic; default twice the nodes.
    #[arg(long)]
    partitions: Option<u32>,
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Producer clients (even-numbered ones idempotent).
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 2)]
    group_consumers: u32,
    #[arg(long, default_value_t = 1)]
    manual_readers: u32,
    /// Records per second per producer.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// The port every node listens on (each on its own IP, 127.0.0.11 and up).
    #[arg(long, default_value_t = 7171)]
    port: u16,
    /// Run on the host's loopback without a namespace (process faults only).
    #[arg(long)]
    no_namespace: bool,
    /// Largest clock rate deviation for clock faults; default: within the test preset's
    /// drift bound (above it the run is outside the safety model).
    #[arg(long)]
    clock_rate_max: Option<f64>,
    /// Extra `cairn node` argument (repeatable), after the built-in `--preset test` ones.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// The nodes' durability mode, passed as `--set storage.durability=<MODE>` (`fsync` or
    /// `flush`); without it nothing is passed and the nodes run their default.
    #[arg(long)]
    durability: Option<String>,
    /// Lost acknowledged writes are the measurement (a power campaign in a mode that does not
    /// fsync): the summary states how many, and anomalies do not fail the run.
    #[arg(long)]
    expect_loss: bool,
    /// The cairn-powerfs binary for power faults; default: `cairn-powerfs` beside this
    /// program.
    #[arg(long)]
    powerfs: Option<PathBuf>,
    /// Seconds the drain reader may go without reading anything new after the run before it
    /// gives up on the high watermarks it has not reached; it stops in any case after four
    /// times this.
    #[arg(long, default_value_t = 90)]
    drain_timeout_s: u64,
    /// Bytes of each produced value: the unique id padded with `~` (0: the id alone). At
    /// 160 KiB (163840) every record is its own batch above sled's blob threshold, which a
    /// value workload sets to 128 KiB (512 KiB segments), so power faults exercise blob
    /// files. At most 262144; the nodes' record, batch, frame and replication-message limits
    /// are raised to fit (the test preset's records are at most 16 KiB).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=262_144))]
    value_bytes: u32,
}

/// The node limits a `--value-bytes` workload needs above the test preset's (16 KiB records,
/// 64 KiB batches): a record of the value, batches of a few of them, replication messages of a
/// few batches, so that sled's pages pass its blob threshold, and frames of 8 MiB, so that a
/// fetch carries dozens of records (frames of two batches made the final drain read a few
/// records per round trip and overrun its deadline). The store's segments are sled's own 512
/// KiB, not the nodes' 2 MiB, so that the blob threshold (a quarter segment) is 128 KiB and
/// every large batch is a blob file. Nothing for 0.
fn value_limits(value_bytes: u32) -> Vec<String> {
    if value_bytes == 0 {
        return Vec::new();
    }
    let record = (u64::from(value_bytes) + 4096).max(16 * 1024);
    let batch = (2 * record).max(64 * 1024);
    let append = 2 * batch;
    let frame = (append + 1024).max(8 << 20);
    [
        format!("limits.record_bytes_max={record}"),
        format!("limits.batch_bytes_max={batch}"),
        format!(
            "limits.batch_decompressed_bytes_max={}",
            (2 * batch).max(1 << 20)
        ),
        format!("limits.frame_bytes_max={frame}"),
        format!("limits.connection_outbound_bytes_max={}", 4 * frame),
        format!("limits.fetch_reply_bytes_max={}", 4 * frame),
        format!("limits.fetch_reply_bytes_per_address_max={}", 4 * frame),
        format!("replica.append_message_bytes_max={append}"),
        "storage.segment_bytes=524288".to_string(),
    ]
    .into_iter()
    .flat_map(|setting| ["--set".to_string(), setting])
    .collect()
}

fn parse_duration_s(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, factor) = if let Some(minutes) = text.strip_suffix('m') {
        (minutes, 60)
    } else if let Some(seconds) = text.strip_suffix('s') {
        (seconds, 1)
    } else {
        (text, 1)
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is not like 300s or 5m"))?;
    if value == 0 {
        return Err("the duration must be above 0".to_string());
    }
    Ok(value * factor)
}

/// The drift bound of the test preset the nodes run with (node/src/config.rs).
const TEST_PRESET_CLOCK_DRIFT_MAX_PPM: u64 = 50_000;

fn run(args: RunArgs) -> i32 {
    let duration_s = match parse_duration_s(&args.duration) {
        Ok(seconds) => seconds,
        Err(error) => {
            eprintln!("cairn-chaos: {error}");
            return 2;
        }
    };
    let faults = match FaultKind::parse_list(&args.faults) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("cairn-chaos: {error}");
            return 2;
        }
    };
    if args.nodes == 0 || args.nodes > 200 {
        eprintln!("cairn-chaos: --nodes must be 1..=200");
        return 2;
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    let binary = match args.binary.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("cairn")))
    }) {
        Some(binary) if binary.exists() => binary,
        other => {
            eprintln!("cairn-chaos: no cairn binary at {other:?}; build it or pass --binary");
            return 2;
        }
    };
    // Only the outer process picks the mode; the re-executed one inside the namespace has
    // the same arguments.
    let mode = match net::enter_namespace(!args.no_namespace) {
        Entered::Exited(code) => return code,
        Entered::Run(mode) => mode,
    };
    let mut node_args: Vec<String> = [
        "--preset",
        "test",
        "--set",
        "limits.connections_max=512",
        "--set",
        "replica.pending_requests_max=1024",
        "--set",
        "limits.partition_mailbox_max=1024",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    if let Some(mode) = &args.durability {
        node_args.push("--set".to_string());
        node_args.push(format!("storage.durability={mode}"));
    }
    node_args.extend(value_limits(args.value_bytes));
    node_args.extend(args.node_args.iter().cloned());
    let config = CampaignConfig {
        seed,
        nodes: args.nodes,
        duration_s,
        faults,
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("chaos-out/seed-{seed}"))),
        binary,
        partitions: args.partitions.unwrap_or(args.nodes * 2),
        replication_factor: args.replication_factor,
        producers: args.producers,
        group_consumers: args.group_consumers,
        manual_readers: args.manual_readers,
        rate_per_producer: args.rate,
        port: args.port,
        clock_rate_max_deviation: args
            .clock_rate_max
            .unwrap_or_else(|| campaign::safe_clock_deviation(TEST_PRESET_CLOCK_DRIFT_MAX_PPM)),
        node_args,
        durability: args.durability.clone(),
        expect_loss: args.expect_loss,
        powerfs: args.powerfs.clone(),
        drain_timeout_s: args.drain_timeout_s,
        value_bytes: args.value_bytes,
    };
    eprintln!(
        "cairn-chaos: seed {seed}, {} nodes, {duration_s} s, faults {:?}, network {mode:?}, out {}",
        config.nodes,
        config.faults,
        config.out.display()
    );
    match campaign::run(&config, mode) {
        Ok(outcome) => {
            let report = &outcome.report;
            print!("{}", cairn_chaos::report::summary(report));
            println!("\n(written to {})", config.out.display());
            let acknowledged = report.check.stats.get("sends_ok").copied().unwrap_or(0);
            if report.expect_loss {
                println!(
                    "MEASURED (--expect-loss): {} acknowledged writes lost of {acknowledged} \
                     acknowledged, {} anomalies in all",
                    report.lost_acknowledged(),
                    report.check.anomaly_count()
                );
            }
            if acknowledged == 0 {
                // A campaign that acknowledged nothing checked nothing (for example values the
                // nodes refuse as too large): neither a pass nor a measurement.
                eprintln!("cairn-chaos: no write was acknowledged; the campaign tested nothing");
                1
            } else if report.expect_loss || report.check.is_clean() {
                0
            } else {
                1
            }
        }
        Err(error) => {
            eprintln!("cairn-chaos: the campaign failed: {error}");
            2
        }
    }
}

fn check(dir: PathBuf) -> i32 {
    let ops = match read_history(&dir.join("history.jsonl")) {
        Ok(ops) => ops,
        Err(error) => {
            eprintln!("cairn-chaos: {error}");
            return 2;
        }
    };
    let replicas_path = dir.join("replicas.json");
    let saved: Option<SavedReplicas> = match std::fs::read_to_string(&replicas_path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(saved) => Some(saved),
            Err(error) => {
                eprintln!("cairn-chaos: {}: {error}", replicas_path.display());
                return 2;
            }
        },
        Err(_) => None,
    };
    let report = checker::check(
        &ops,
        saved.as_ref().map(|saved| saved.to_replicas()).as_ref(),
    );
    println!("{} operations checked", ops.len());
    if saved.is_none() {
        println!("(no replicas.json: replica logs not compared)");
    }
    for (stat, value) in &report.stats {
        println!("  {stat}: {value}");
    }
    println!("anomalies: {}", report.anomaly_count());
    for kind in AnomalyKind::ALL {
        if let Some(group) = report.anomalies.get(&kind) {
            println!("  {} ({}):", kind.name(), group.count);
            for example in &group.examples {
                println!("    {example}");
            }
        }
    }
    if report.is_clean() {
        0
    } else {
        1
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { dir } => check(dir),
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_seconds_and_minutes() {
        assert_eq!(parse_duration_s("300s"), Ok(300));
        assert_eq!(parse_duration_s("5m"), Ok(300));
        assert_eq!(parse_duration_s("42"), Ok(42));
        assert!(parse_duration_s("0s").is_err());
        assert!(parse_duration_s("soon").is_err());
    }
}
