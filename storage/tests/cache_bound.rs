//! Writing a log and reading it back must not keep it in memory: sled's page cache has to stay
//! near its `cache_capacity` while producers append and consumers scan old data
//! (vendor/sled/PATCHES.md). Unpatched sled 0.34.7 kept every page it read and hundreds of MiB
//! of what it wrote, so this process grew by about the whole log.
//!
//! This file holds one test so that the process's resident memory is this test's alone.

use cairn_protocol::batch::RecordBatchBuilder;
use cairn_protocol::{Epoch, Offset, Record};
use cairn_storage::sled_store::{SledConfig, SledStore};
use cairn_storage::{LogStore, PartitionLog};

/// Resident memory of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

#[test]
fn appending_and_scanning_a_log_keep_memory_near_the_cache_capacity() {
    const LOG_BYTES: u64 = 384 << 20;
    const CACHE_BYTES: u64 = 8 << 20;
    let baseline = rss_bytes();
    let mut peak = baseline;
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SledStore::open_with(
        dir.path(),
        SledConfig {
            cache_capacity_bytes: CACHE_BYTES,
            ..SledConfig::default()
        },
    )
    .expect("open");
    let mut log = store.open_log("scan").expect("log");
    // 64 KiB batches, the client's default batch size: sled pages of 16 of them are large.
    let mut builder = RecordBatchBuilder::new(0);
    for _ in 0..64 {
        builder.push(&Record::new(vec![7u8; 1000]));
    }
    let template = builder.build();
    let mut written = 0u64;
    let mut offset = Offset(0);
    while written < LOG_BYTES {
        for _ in 0..16 {
            let batch = template.stamped(offset, Epoch(1));
            offset = log.append(&batch).expect("append");
            written += batch.size_bytes() as u64;
        }
        store.flush().expect("flush");
        peak = peak.max(rss_bytes());
    }

    let end = log.log_end();
    let mut from = Offset(0);
    let mut read = 0u64;
    while from < end {
        let batches = log.read(from, end, 1 << 20).expect("read");
        let last = batches
            .last()
            .expect("a read below the log end returns a batch");
        from = last.next_offset();
        read += batches
            .iter()
            .map(|batch| batch.size_bytes() as u64)
            .sum::<u64>();
        peak = peak.max(rss_bytes());
    }
    let growth = peak.saturating_sub(baseline);

    assert_eq!(read, written, "the scan read the whole log back");
    // Unpatched sled grew by about LOG_BYTES here. The bound leaves room for the cache, one
    // page per LRU shard, sled's write buffers and allocator slack (about 67 MiB measured in a
    // debug build), and is a third of the log's size.
    assert!(
        growth < 128 << 20,
        "writing and reading back {} MiB grew the process by {} MiB at its peak (cache {} MiB)",
        read >> 20,
        growth >> 20,
        CACHE_BYTES >> 20
    );
}
