//! Long logs: thousands of batches appended, truncated at the tail, retained away at the head
//! and reopened, on sled and on the in-memory store, which must agree after every step.
//!
//! The conformance suite's logs hold a few batches, so every one of them fits in a single sled
//! leaf. Here logs span hundreds of leaves, so they exercise what sled does to the tree as a
//! log grows and shrinks: leaf splits (lopsided at the rightmost leaf, vendor/sled/PATCHES.md),
//! merges of leaves emptied by truncation or retention, blob files written, released and
//! reused (vendor/sled/PATCHES.md), and recovery of all of that.

use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
use cairn_protocol::{Epoch, Offset};
use cairn_storage::{
    EpochStart, LogStore, MemoryStore, PartitionLog, RetentionPolicy, SledConfig, SledStore,
};

/// xorshift64*: a fixed sequence per seed, so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

const T0_MS: i64 = 1_700_000_000_000;

/// Everything observable of a log: bounds, size, epoch history and every batch held.
type Contents = (Offset, Offset, u64, Vec<EpochStart>, Vec<RecordBatch>);

fn contents<L: PartitionLog>(log: &L) -> Contents {
    (
        log.log_start(),
        log.log_end(),
        log.size_bytes(),
        log.epoch_history(),
        log.read(Offset::ZERO, Offset(u64::MAX), usize::MAX)
            .expect("read the whole log"),
    )
}

/// sled's own 512 KiB segments, not the store's default: a leaf over a quarter of a segment
/// goes to a blob file, and this test's leaves (up to 16 batches of 6-18 KiB) pass 128 KiB but
/// not the 512 KiB of the default 2 MiB segments.
fn config() -> SledConfig {
    SledConfig {
        segment_bytes: 512 * 1024,
        ..SledConfig::default()
    }
}

/// Opens the store again once sled's background threads of the dropped one have let go of
/// its file lock (they finish shortly after the last handle is dropped).
fn reopen(path: &std::path::Path) -> SledStore {
    let mut attempts = 0;
    loop {
        match SledStore::open_with(path, config()) {
            Ok(store) => return store,
            Err(error) if attempts < 250 && error.to_string().contains("lock") => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("reopen sled: {error}"),
        }
    }
}

/// The blob files in the store's directory now.
fn blob_files(path: &std::path::Path) -> usize {
    std::fs::read_dir(path.join("blobs"))
        .expect("sled's blob directory")
        .count()
}

fn run(seed: u64, steps: u32) {
    let mut rng = Rng(seed | 1);
    let directory = tempfile::tempdir().expect("a temp dir");
    let mut sled_store = SledStore::open_with(directory.path(), config()).expect("open sled");
    let memory_store = MemoryStore::new();
    let mut sled_log = sled_store.open_log("p").expect("sled log");
    let mut memory_log = memory_store.open_log("p").expect("memory log");
    // Batch boundaries currently held, to truncate at one.
    let mut boundaries: Vec<Offset> = Vec::new();
    let mut epoch = 1;
    let mut blobs_seen = 0;
    for step in 0..steps {
        match rng.below(100) {
            // Mostly appends, in runs, as a partition leader writes.
            0..=84 => {
                for _ in 0..=rng.below(40) {
                    let count = 1 + rng.below(3) as u32;
                    let mut builder = RecordBatchBuilder::new(T0_MS + i64::from(step));
                    for index in 0..count {
                        // Values of 6 KiB: a full leaf is larger than a quarter sled segment,
                        // so leaves are written as blob files, which are released and reused.
                        builder.push(&Record::new(format!(
                            "{seed}-{step}-{index}-{}",
                            "v".repeat(6 * 1024)
                        )));
                    }
                    let batch = builder.build().stamped(sled_log.log_end(), Epoch(epoch));
                    boundaries.push(batch.base_offset());
                    let end = sled_log.append(&batch).expect("sled append");
                    assert_eq!(memory_log.append(&batch).expect("memory append"), end);
                }
            }
            // Truncate an uncommitted-looking suffix of up to 30 batches, then a new epoch.
            85..=92 => {
                let keep = boundaries
                    .len()
                    .saturating_sub(rng.below(30) as usize)
                    .max(boundaries.len().min(1));
                if let Some(&from) = boundaries.get(keep) {
                    sled_log.truncate_suffix(from).expect("sled truncate");
                    memory_log.truncate_suffix(from).expect("memory truncate");
                    boundaries.truncate(keep);
                    epoch += 1;
                }
            }
            // Retention removes a prefix, as a byte limit would.
            93..=96 => {
                let keep_bytes = sled_log.size_bytes() * (50 + rng.below(50)) / 100;
                let policy = RetentionPolicy {
                    max_age_ms: None,
                    max_bytes: Some(keep_bytes),
                };
                let keep_from = sled_log.log_end();
                let start = sled_log
                    .apply_retention(policy, T0_MS, keep_from)
                    .expect("sled retention");
                let memory_start = memory_log
                    .apply_retention(policy, T0_MS, keep_from)
                    .expect("memory retention");
                assert_eq!(start, memory_start, "seed {seed} step {step}: retention");
                boundaries.retain(|&offset| offset >= start);
            }
            // Restart sled from its files (after a flush, as a clean shutdown does).
            _ => {
                sled_store.flush().expect("flush");
                blobs_seen = blobs_seen.max(blob_files(directory.path()));
                drop(sled_log);
                drop(sled_store);
                sled_store = reopen(directory.path());
                sled_log = sled_store.open_log("p").expect("reopen sled log");
            }
        }
        if step % 25 == 0 {
            // Compared without `assert_eq!`: a mismatch would print thousands of batches.
            assert!(
                contents(&sled_log) == contents(&memory_log),
                "seed {seed} step {step}: sled and memory logs differ"
            );
        }
    }
    assert!(
        contents(&sled_log) == contents(&memory_log),
        "seed {seed}: sled and memory logs differ at the end"
    );
    sled_store.flush().expect("flush");
    drop(sled_log);
    drop(sled_store);
    let sled_store = reopen(directory.path());
    let sled_log = sled_store.open_log("p").expect("reopen sled log");
    assert!(
        contents(&sled_log) == contents(&memory_log),
        "seed {seed}: sled and memory logs differ after reopening"
    );
    assert!(blobs_seen > 0, "seed {seed}: no leaf went to a blob file");
    // The log really spanned many sled leaves (16 batches each at most).
    assert!(
        boundaries.len() > 200,
        "seed {seed}: only {} batches",
        boundaries.len()
    );
}

#[test]
fn long_logs_on_sled_match_the_memory_store_through_splits_merges_and_restarts() {
    for seed in 1..=3 {
        run(seed, 300);
    }
}
