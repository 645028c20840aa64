//! `cairn-bench disk`: the storage's share of the publish latency floor on this machine.
//!
//! A record is acknowledged (`acks=all`) only after sled's flush returned on the leader and on
//! a follower. In flush mode, the store's default here, a flush writes sled's buffers to the
//! kernel and starts their writeback without waiting for it (see `storage/src/sled_store.rs`).
//! Whatever else Cairn does, its publish latency cannot beat the flush latency, so this
//! measures that alone: `--nodes` sled
//! stores (one per node, as a local cluster has, all on the disk of `--dir`), each with a
//! writer thread that every `--interval-us` appends what `--rate` records/s of `--record-bytes`
//! bring in that interval (spread over `--partitions` logs) and flushes, the shape of a node's
//! group commit at a steady produce rate with replication factor = nodes. A flush that takes
//! longer than the interval makes the next one carry more, as in the node.
//!
//! It reports each flush's duration (p50, p99, p99.9, max) and the bytes written per second.
//! No network, no actors, no client: compare with `cairn-bench run` publish latency at the
//! same rate to see what is the disk and what is Cairn.

use crate::report::{latency_histogram, write_json, Latency};
use cairn_protocol::batch::RecordBatchBuilder;
use cairn_protocol::{Epoch, Offset, Record};
use cairn_storage::sled_store::SledStore;
use cairn_storage::{LogStore, PartitionLog};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct DiskArgs {
    /// Stores flushing at once (one per node of a local cluster).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Records per second each store receives (with replication factor 3, every node stores
    /// every record: the cluster's produce rate).
    #[arg(long, default_value_t = 30_000)]
    pub rate: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1_024)]
    pub record_bytes: usize,
    /// Partition logs per store.
    #[arg(long, default_value_t = 6)]
    pub partitions: usize,
    /// Time between the starts of two flushes of one store when the disk keeps up (the
    /// producers' linger).
    #[arg(long, default_value_t = 1_000)]
    pub interval_us: u64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 30)]
    pub duration_s: u64,
    /// Where the stores go (default: the system's temp dir, the disk node data uses by
    /// default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct DiskReport {
    nodes: u32,
    rate_per_node: u64,
    record_bytes: usize,
    interval_us: u64,
    duration_s: u64,
    flushes: u64,
    mib_per_s_per_node: f64,
    flush_latency_ms: Latency,
}

pub fn run(args: DiskArgs) -> Result<(), String> {
    if args.nodes == 0 || args.partitions == 0 || args.record_bytes == 0 || args.rate == 0 {
        return Err("--nodes, --partitions, --record-bytes and --rate must be above 0".into());
    }
    let root = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .map_err(|error| format!("cannot make a directory for the stores: {error}"))?;
    let deadline = Duration::from_secs(args.duration_s);
    let writers: Vec<_> = (0..args.nodes)
        .map(|node| {
            let store = SledStore::open(root.path().join(format!("node-{node}")))
                .map_err(|error| format!("cannot open a store: {error}"))?;
            let args = args.clone();
            Ok(std::thread::spawn(move || {
                write_and_flush(&store, &args, deadline)
            }))
        })
        .collect::<Result<_, String>>()?;
    let mut histogram = latency_histogram();
    let mut bytes = 0u64;
    for writer in writers {
        let (durations, written) = writer
            .join()
            .map_err(|_| "a writer thread panicked".to_string())??;
        for micros in durations {
            histogram
                .record(micros.max(1))
                .map_err(|error| format!("flush time out of range: {error}"))?;
        }
        bytes += written;
    }
    let report = DiskReport {
        nodes: args.nodes,
        rate_per_node: args.rate,
        record_bytes: args.record_bytes,
        interval_us: args.interval_us,
        duration_s: args.duration_s,
        flushes: histogram.len(),
        mib_per_s_per_node: bytes as f64
            / f64::from(args.nodes)
            / (1 << 20) as f64
            / deadline.as_secs_f64(),
        flush_latency_ms: Latency::from_micros(&histogram),
    };
    let latency = &report.flush_latency_ms;
    println!(
        "{} stores, {} records/s of {} B each, flush every {} us when the disk keeps up: \
         {} flushes, {:.1} MiB/s per store; flush p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, \
         max {:.2} ms",
        report.nodes,
        report.rate_per_node,
        report.record_bytes,
        report.interval_us,
        report.flushes,
        report.mib_per_s_per_node,
        latency.p50_ms,
        latency.p99_ms,
        latency.p999_ms,
        latency.max_ms,
    );
    match &args.json {
        Some(path) => write_json(path, &report),
        None => Ok(()),
    }
}

/// One store's writer: returns every flush's duration in microseconds and the bytes appended.
fn write_and_flush(
    store: &SledStore,
    args: &DiskArgs,
    deadline: Duration,
) -> Result<(Vec<u64>, u64), String> {
    let mut logs = (0..args.partitions)
        .map(|p| store.open_log(&format!("p{p}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("cannot open a log: {error}"))?;
    let mut ends = vec![Offset(0); args.partitions];
    let value = vec![7u8; args.record_bytes];
    let interval = Duration::from_micros(args.interval_us.max(1));
    let started = Instant::now();
    let mut owed = 0.0f64;
    let mut last = started;
    let mut next_log = 0;
    let mut durations = Vec::new();
    let mut bytes = 0u64;
    while started.elapsed() < deadline {
        let now = Instant::now();
        owed += now.duration_since(last).as_secs_f64() * args.rate as f64;
        last = now;
        // The records that arrived since the last flush, one batch per partition in turn.
        let records = owed as usize;
        owed -= records as f64;
        let per_batch = records.div_ceil(args.partitions).max(1);
        let mut left = records;
        while left > 0 {
            let count = per_batch.min(left);
            let mut builder = RecordBatchBuilder::new(0);
            for _ in 0..count {
                builder.push(&Record::new(value.clone()));
            }
            let batch = builder.build().stamped(ends[next_log], Epoch(1));
            ends[next_log] = logs[next_log]
                .append(&batch)
                .map_err(|error| format!("append failed: {error}"))?;
            bytes += batch.size_bytes() as u64;
            next_log = (next_log + 1) % logs.len();
            left -= count;
        }
        let flush_started = Instant::now();
        store
            .flush()
            .map_err(|error| format!("flush failed: {error}"))?;
        durations.push(flush_started.elapsed().as_micros() as u64);
        let next = flush_started + interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Logs close before the store.
    logs.clear();
    Ok((durations, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_subcommand_parses_and_refuses_zero_sizes() {
        let cli = crate::Cli::try_parse_from([
            "cairn-bench",
            "disk",
            "--nodes",
            "0",
            "--duration-s",
            "1",
        ])
        .unwrap();
        let Some(crate::BenchCommand::Disk(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!((args.nodes, args.rate, args.duration_s), (0, 30_000, 1));
        let error = run(args).unwrap_err();
        assert!(error.contains("--nodes"), "{error}");
    }

    #[test]
    fn one_store_flushes_at_the_asked_rate() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let args = DiskArgs {
            nodes: 1,
            rate: 10_000,
            record_bytes: 100,
            partitions: 2,
            interval_us: 1_000,
            duration_s: 1,
            dir: None,
            json: None,
        };
        let (durations, bytes) =
            write_and_flush(&store, &args, Duration::from_millis(300)).unwrap();
        assert!(!durations.is_empty());
        // 0.3 s at 10,000 records/s of 100 bytes is about 300 KB of values (plus headers);
        // the pacing may run a little short but never ahead.
        assert!(bytes > 100_000 && bytes < 600_000, "{bytes}");
    }
}
