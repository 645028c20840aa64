//! Ad-hoc throughput check of append + group commit on sled (not a benchmark harness; those
//! live in `benches/`). Each writer thread owns one partition log, appends one 64 KiB batch of
//! 64 records of 1 KiB, and waits for a group-committed flush before the next (acks=all style).
//!
//! `cargo run --release -p cairn-storage --example append_throughput -- [writers] [seconds] [fsync|flush]`

use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::Epoch;
use cairn_storage::{Durability, GroupCommitter, LogStore, PartitionLog, SledConfig, SledStore};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let durability = match args.next().as_deref() {
        Some("flush") => Durability::Flush,
        _ => Durability::Fsync,
    };
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open_with(
        directory.path(),
        SledConfig {
            durability,
            ..SledConfig::default()
        },
    )
    .expect("open store");
    let committer = GroupCommitter::start(store.clone());
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    for index in 0..64u32 {
        builder.push(&Record::new(vec![(index % 251) as u8; 1000]).with_key(index.to_string()));
    }
    let template = builder.build();
    let duration = Duration::from_secs(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            let committer = committer.clone();
            let template = template.clone();
            std::thread::spawn(move || {
                let mut log = store
                    .open_log(&format!("bench-{writer}"))
                    .expect("open log");
                let mut records = 0u64;
                while started.elapsed() < duration {
                    let batch = template.stamped(log.log_end(), Epoch(1));
                    log.append(&batch).expect("append");
                    committer.request_blocking().expect("flush");
                    records += u64::from(batch.record_count());
                }
                records
            })
        })
        .collect();
    let records: u64 = threads.into_iter().map(|t| t.join().expect("writer")).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = committer.stats();
    println!(
        "writers={writers} durability={} batch_bytes={} records/s={:.0} MiB/s={:.1} flushes/s={:.0} requests_per_flush={:.2}",
        durability.name(),
        template.size_bytes(),
        records as f64 / elapsed,
        records as f64 * template.size_bytes() as f64 / 64.0 / elapsed / (1024.0 * 1024.0),
        stats.flushes as f64 / elapsed,
        stats.requests_served as f64 / stats.flushes.max(1) as f64,
    );
}
