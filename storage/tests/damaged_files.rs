//! Damaged sled files: what a store reports after random bytes or a cut in its database file.
//!
//! sled recovers by replaying its log up to the first damaged segment, so damage opens as an
//! older database (a shorter log, a lower promise) or, as often, makes sled panic while it
//! recovers. The watermarks kept beside the database must reveal the first, and
//! `rebuild_when_damaged` must turn the second into an empty store that still knows them.

use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::{Epoch, Offset};
use cairn_storage::{LogStore, PartitionLog, SledConfig, SledStore, StorageError, Watermark};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

const BATCHES: u64 = 3_000;

/// Fills a store with `BATCHES` one-record batches of about 2 KiB, flushing every ten, records
/// the whole log as committed and a promise of epoch 5, and returns the watermark. The log
/// spans several of the store's 2 MiB segments: sled reads damage in its last segment as a torn
/// tail and drops it silently, damage before a good segment makes it fail.
fn fill(directory: &Path) -> Watermark {
    let store = SledStore::open(directory).unwrap();
    let mut log = store.open_log("p").unwrap();
    for index in 0..BATCHES {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        builder.push(&Record::new(vec![b'x'; 2000 + (index % 50) as usize]));
        let batch = builder.build().stamped(log.log_end(), Epoch(3));
        log.append(&batch).unwrap();
        if index % 10 == 9 {
            store.flush().unwrap();
        }
    }
    log.set_promised_epoch(Epoch(5)).unwrap();
    store.flush().unwrap();
    log.raise_committed_watermark(log.log_end()).unwrap();
    store.flush().unwrap();
    log.watermark()
}

/// A small deterministic generator (xorshift64*), so a failing case replays.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
}

fn scribble(file: &Path, at_fraction: &[f64], seed: u64) {
    let length = std::fs::metadata(file).unwrap().len();
    let mut random = Bytes(seed);
    let mut handle = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    for fraction in at_fraction {
        handle
            .seek(SeekFrom::Start((length as f64 * fraction) as u64))
            .unwrap();
        let noise: Vec<u8> = (0..64).map(|_| random.next()).collect();
        handle.write_all(&noise).unwrap();
    }
}

#[test]
fn a_cut_database_file_opens_shorter_than_its_watermark_with_its_promise() {
    let directory = tempfile::tempdir().unwrap();
    let watermark = fill(directory.path());
    assert_eq!(watermark.committed_end, Offset(BATCHES));
    let file = directory.path().join("db");
    let length = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let store = SledStore::open(directory.path()).unwrap();
    let log = store.open_log("p").unwrap();
    assert!(
        log.log_end() < watermark.committed_end,
        "sled dropped the suffix silently: log end {}",
        log.log_end()
    );
    assert_eq!(log.watermark(), watermark);
    // The promise made before the loss is still reported, from the watermark.
    assert_eq!(log.promised_epoch(), Epoch(5));
}

#[test]
fn random_bytes_that_make_sled_fail_rebuild_an_empty_store_that_keeps_its_watermarks() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("store");
    let watermark = fill(&path);
    scribble(&path.join("db"), &[0.05, 0.4, 0.7], 7);
    let refused = SledStore::open(&path);
    assert!(
        matches!(refused, Err(StorageError::Io(_))),
        "without rebuild the open fails: {refused:?}"
    );
    let config = SledConfig {
        rebuild_when_damaged: true,
        ..SledConfig::default()
    };
    let store = SledStore::open_with(&path, config).unwrap();
    let aside = store.rebuilt_from().expect("rebuilt").to_path_buf();
    assert!(aside.join("db").exists(), "the damaged files are kept");
    let log = store.open_log("p").unwrap();
    assert_eq!(log.log_end(), Offset::ZERO);
    assert_eq!(log.watermark(), watermark);
    assert_eq!(log.promised_epoch(), Epoch(5));
    drop((log, store));
    // The rebuilt store is a normal one from now on.
    let store = SledStore::open_with(&path, config).unwrap();
    assert!(store.rebuilt_from().is_none());
    assert_eq!(store.open_log("p").unwrap().watermark(), watermark);
}

#[test]
fn a_damaged_watermark_file_is_a_typed_error_not_an_empty_table() {
    // The file keeps two slots, rewritten in turn: damage to both is an error at open.
    let directory = tempfile::tempdir().unwrap();
    fill(directory.path());
    scribble(
        &directory
            .path()
            .join(cairn_storage::watermark::WATERMARK_FILE_NAME),
        &[0.0, 0.5],
        3,
    );
    let result = SledStore::open(directory.path());
    assert!(
        matches!(result, Err(StorageError::WatermarksDamaged { .. })),
        "{result:?}"
    );
}

#[test]
fn one_damaged_watermark_slot_gives_the_other_slot_s_table() {
    // Damage to one slot (what a crash can do to a rewrite) leaves the other's table, the
    // newest or the one written before it, never an empty one.
    let mut seen = Vec::new();
    for fraction in [0.0, 0.5] {
        let directory = tempfile::tempdir().unwrap();
        let newest = fill(directory.path());
        scribble(
            &directory
                .path()
                .join(cairn_storage::watermark::WATERMARK_FILE_NAME),
            &[fraction],
            4,
        );
        let store = SledStore::open(directory.path()).unwrap();
        let log = store.open_log("p").unwrap();
        assert_eq!(log.log_end(), Offset(BATCHES));
        assert_eq!(log.promised_epoch(), Epoch(5));
        assert!(log.watermark().committed_end <= newest.committed_end);
        seen.push(log.watermark() == newest);
    }
    assert_eq!(seen.iter().filter(|newest| **newest).count(), 1, "{seen:?}");
}
