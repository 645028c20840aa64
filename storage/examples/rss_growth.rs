//! Measures the resident memory of a process appending to a `SledStore`, to see whether
//! sled's memory use settles or grows with the data written, then while it is read back from
//! the start in 1 MiB fetches as a consumer would. Prints RSS per 128 MiB written or read.
//!
//! Usage: rss_growth CACHE_MIB TOTAL_MIB

use cairn_protocol::batch::RecordBatchBuilder;
use cairn_protocol::{Epoch, Offset, Record};
use cairn_storage::sled_store::{SledConfig, SledStore};
use cairn_storage::{LogStore, PartitionLog};

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        / 1024
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cache_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let total_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SledStore::open_with(
        dir.path(),
        SledConfig {
            cache_capacity_bytes: cache_mib << 20,
            ..SledConfig::default()
        },
    )
    .expect("open");
    let mut log = store.open_log("rss").expect("log");
    let mut builder = RecordBatchBuilder::new(0);
    for _ in 0..64 {
        builder.push(&Record::new(vec![7u8; 1000]));
    }
    let template = builder.build();
    let mut written: u64 = 0;
    let mut next_report = 128u64 << 20;
    let mut offset = Offset(0);
    while written < total_mib << 20 {
        for _ in 0..16 {
            let batch = template.stamped(offset, Epoch(1));
            offset = log.append(&batch).expect("append");
            written += batch.size_bytes() as u64;
        }
        store.flush().expect("flush");
        if written >= next_report {
            println!("written_mib={} rss_mib={}", written >> 20, rss_mib());
            next_report += 128 << 20;
        }
    }
    let end = log.log_end();
    let passes: u32 = std::env::var("PASSES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let mut read: u64 = 0;
    let mut next_report = 128u64 << 20;
    for _ in 0..passes {
        let mut from = Offset(0);
        while from < end {
            let batches = log.read(from, end, 1 << 20).expect("read");
            let Some(last) = batches.last() else { break };
            from = last.next_offset();
            read += batches.iter().map(|b| b.size_bytes() as u64).sum::<u64>();
            if read >= next_report {
                println!("read_mib={} rss_mib={}", read >> 20, rss_mib());
                next_report += 128 << 20;
            }
        }
    }
}
