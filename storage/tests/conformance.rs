//! The one test suite every [`LogStore`] must pass, written once as generic functions and run
//! against [`SledStore`] (real files in a temporary directory) and [`MemoryStore`].

use bytes::Bytes;
use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
use cairn_protocol::{Epoch, Offset};
use cairn_storage::{
    EpochStart, LogStore, MemoryStore, PartitionLog, RetentionPolicy, SledStore, StorageError,
    Watermark,
};

/// A store under test, and how to restart it.
trait Fixture {
    type Store: LogStore;
    fn new() -> Self;
    fn store(&self) -> Self::Store;
    /// Restarts the store after a flush, as a process restart would: the caller has dropped
    /// every log handle. Returns the store to use from now on.
    fn restart(&mut self) -> Self::Store;
}

struct SledFixture {
    directory: tempfile::TempDir,
    store: Option<SledStore>,
}

impl Fixture for SledFixture {
    type Store = SledStore;

    fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let store = SledStore::open(directory.path()).unwrap();
        SledFixture {
            directory,
            store: Some(store),
        }
    }

    fn store(&self) -> SledStore {
        self.store.clone().unwrap()
    }

    fn restart(&mut self) -> SledStore {
        let store = self.store.take().unwrap();
        store.flush().unwrap();
        drop(store);
        let store = SledStore::open(self.directory.path()).unwrap();
        self.store = Some(store.clone());
        store
    }
}

struct MemoryFixture {
    store: MemoryStore,
}

impl Fixture for MemoryFixture {
    type Store = MemoryStore;

    fn new() -> Self {
        MemoryFixture {
            store: MemoryStore::new(),
        }
    }

    fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    fn restart(&mut self) -> MemoryStore {
        self.store.flush().unwrap();
        self.store.crash();
        self.store.clone()
    }
}

const T0_MS: i64 = 1_700_000_000_000;

/// A batch of `count` records with timestamps `timestamp_ms, +1, ...`, values naming them.
fn batch(count: u32, timestamp_ms: i64) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    for index in 0..count {
        builder.push(
            &Record::new(format!("value-{timestamp_ms}-{index}"))
                .with_timestamp_ms(timestamp_ms + i64::from(index)),
        );
    }
    builder.build()
}

/// Appends a batch of `count` records at the log end with `epoch`.
fn append<L: PartitionLog>(log: &mut L, count: u32, epoch: u64, timestamp_ms: i64) -> RecordBatch {
    let stamped = batch(count, timestamp_ms).stamped(log.log_end(), Epoch(epoch));
    let end = log.append(&stamped).unwrap();
    assert_eq!(end, stamped.next_offset());
    stamped
}

fn base_offsets(batches: &[RecordBatch]) -> Vec<u64> {
    batches.iter().map(|batch| batch.base_offset().0).collect()
}

/// A snapshot of everything a refused call must leave unchanged.
fn snapshot<L: PartitionLog>(log: &L) -> (Offset, Offset, u64, Vec<EpochStart>, Vec<RecordBatch>) {
    (
        log.log_start(),
        log.log_end(),
        log.size_bytes(),
        log.epoch_history(),
        detached_equals_read(log, Offset::ZERO, Offset(u64::MAX), usize::MAX),
    )
}

/// `read`, checking that `read_detached` answers the same.
fn detached_equals_read<L: PartitionLog>(
    log: &L,
    from: Offset,
    until: Offset,
    max_bytes: usize,
) -> Vec<RecordBatch> {
    let read = log.read(from, until, max_bytes).unwrap();
    let detached = log.read_detached(from, until, max_bytes).unwrap();
    assert_eq!(
        detached, read,
        "read_detached({from}, {until}, {max_bytes})"
    );
    read
}

fn epoch_start(epoch: u64, start_offset: u64) -> EpochStart {
    EpochStart {
        epoch: Epoch(epoch),
        start_offset: Offset(start_offset),
    }
}

fn appends_and_reads_ranges<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("orders-0").unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(0), Offset(0)));
    assert!(log
        .read(Offset(0), Offset(100), 1 << 20)
        .unwrap()
        .is_empty());
    let first = append(&mut log, 3, 1, T0_MS);
    let second = append(&mut log, 2, 1, T0_MS + 10);
    let third = append(&mut log, 4, 1, T0_MS + 20);
    assert_eq!(log.log_end(), Offset(9));
    assert_eq!(
        log.size_bytes(),
        (first.size_bytes() + second.size_bytes() + third.size_bytes()) as u64
    );
    let all = log.read(Offset(0), Offset(9), usize::MAX).unwrap();
    assert_eq!(all, vec![first.clone(), second.clone(), third.clone()]);
    // From the middle of a batch: that batch first.
    assert_eq!(
        base_offsets(&log.read(Offset(4), Offset(9), usize::MAX).unwrap()),
        vec![3, 5]
    );
    // `until` is exclusive and counts offsets, not batches.
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(5), usize::MAX).unwrap()),
        vec![0, 3]
    );
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(4), usize::MAX).unwrap()),
        vec![0, 3]
    );
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(3), usize::MAX).unwrap()),
        vec![0]
    );
    // Byte limit: whole batches only, but always at least one.
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(9), 1).unwrap()),
        vec![0]
    );
    let two = first.size_bytes() + second.size_bytes();
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(9), two).unwrap()),
        vec![0, 3]
    );
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(9), two + 1).unwrap()),
        vec![0, 3]
    );
    // At and past the end, nothing.
    assert!(log
        .read(Offset(9), Offset(100), usize::MAX)
        .unwrap()
        .is_empty());
    assert!(log
        .read(Offset(5), Offset(5), usize::MAX)
        .unwrap()
        .is_empty());
    // Reads come back with their records intact.
    let records: Vec<_> = all[1].records().map(Result::unwrap).collect();
    assert_eq!(records[1].offset, Offset(4));
    assert_eq!(
        records[1].value,
        Some(Bytes::from(format!("value-{}-1", T0_MS + 10)))
    );
}

fn refuses_non_contiguous_appends_without_change<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    append(&mut log, 3, 1, T0_MS);
    let before = snapshot(&log);
    for base in [0u64, 2, 4, 100] {
        let result = log.append(&batch(1, T0_MS).stamped(Offset(base), Epoch(1)));
        assert_eq!(
            result,
            Err(StorageError::NotContiguous {
                base_offset: Offset(base),
                log_end: Offset(3)
            })
        );
    }
    assert_eq!(snapshot(&log), before);
}

fn refuses_corrupt_batches_without_change<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    append(&mut log, 2, 1, T0_MS);
    let before = snapshot(&log);
    let good = batch(3, T0_MS).stamped(Offset(2), Epoch(1));
    for position in [30usize, 45, good.size_bytes() - 1] {
        let mut bytes = good.bytes().to_vec();
        bytes[position] ^= 0x40;
        let bad = RecordBatch::from_trusted(Bytes::from(bytes)).unwrap();
        let result = log.append(&bad);
        assert!(
            matches!(
                result,
                Err(StorageError::Corrupt {
                    offset: Offset(2),
                    ..
                })
            ),
            "flip at {position}: {result:?}"
        );
        assert_eq!(snapshot(&log), before);
    }
    assert_eq!(log.append(&good), Ok(Offset(5)));
}

fn keeps_epoch_history_across_appends_and_truncation<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    assert_eq!(log.last_epoch(), Epoch(0));
    append(&mut log, 2, 1, T0_MS); // 0..2
    append(&mut log, 2, 1, T0_MS); // 2..4
    append(&mut log, 1, 3, T0_MS); // 4..5
    append(&mut log, 3, 3, T0_MS); // 5..8
    append(&mut log, 2, 5, T0_MS); // 8..10
    assert_eq!(
        log.epoch_history(),
        vec![epoch_start(1, 0), epoch_start(3, 4), epoch_start(5, 8)]
    );
    assert_eq!(log.last_epoch(), Epoch(5));
    let before = snapshot(&log);
    let regression = log.append(&batch(1, T0_MS).stamped(Offset(10), Epoch(4)));
    assert_eq!(
        regression,
        Err(StorageError::EpochRegression {
            epoch: Epoch(4),
            last_epoch: Epoch(5)
        })
    );
    assert_eq!(snapshot(&log), before);
    // Truncation inside a batch and beyond the end is refused, changing nothing.
    assert!(matches!(
        log.truncate_suffix(Offset(6)),
        Err(StorageError::BadTruncation {
            offset: Offset(6),
            ..
        })
    ));
    assert!(matches!(
        log.truncate_suffix(Offset(11)),
        Err(StorageError::BadTruncation { .. })
    ));
    assert_eq!(snapshot(&log), before);
    // Truncation at the end changes nothing.
    log.truncate_suffix(Offset(10)).unwrap();
    assert_eq!(snapshot(&log), before);
    log.truncate_suffix(Offset(5)).unwrap();
    assert_eq!(log.log_end(), Offset(5));
    assert_eq!(
        log.epoch_history(),
        vec![epoch_start(1, 0), epoch_start(3, 4)]
    );
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(100), usize::MAX).unwrap()),
        vec![0, 2, 4]
    );
    log.truncate_suffix(Offset(4)).unwrap();
    assert_eq!(log.epoch_history(), vec![epoch_start(1, 0)]);
    assert_eq!(log.last_epoch(), Epoch(1));
    // After truncation an older epoch than the removed ones may append again.
    append(&mut log, 2, 2, T0_MS);
    assert_eq!(
        log.epoch_history(),
        vec![epoch_start(1, 0), epoch_start(2, 4)]
    );
    let expected_size: u64 = log
        .read(Offset(0), Offset(100), usize::MAX)
        .unwrap()
        .iter()
        .map(|batch| batch.size_bytes() as u64)
        .sum();
    assert_eq!(log.size_bytes(), expected_size);
    // Truncating everything: the log is empty and the next offset is the start again.
    log.truncate_suffix(Offset(0)).unwrap();
    assert_eq!(
        (log.log_start(), log.log_end(), log.size_bytes()),
        (Offset(0), Offset(0), 0)
    );
    assert!(log.epoch_history().is_empty());
}

fn applies_retention_by_bytes_and_time<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    let mut sizes = Vec::new();
    for index in 0..6 {
        // Batch `index` holds offsets 2*index..2*index+2, newest record at T0 + 1000*index + 1.
        sizes.push(
            append(&mut log, 2, 1 + index / 3, T0_MS + 1000 * index as i64).size_bytes() as u64,
        );
    }
    let total: u64 = sizes.iter().sum();
    assert_eq!(log.size_bytes(), total);
    // Nothing qualifies: nothing moves.
    let unchanged = log
        .apply_retention(
            RetentionPolicy {
                max_age_ms: Some(1_000_000),
                max_bytes: Some(total),
            },
            T0_MS + 10_000,
            Offset(12),
        )
        .unwrap();
    assert_eq!(unchanged, Offset(0));
    // By bytes: keep at most four batches' worth, but keep_from protects offset 3 onwards, so
    // only the first batch (offsets 0..2) may go.
    let start = log
        .apply_retention(
            RetentionPolicy {
                max_age_ms: None,
                max_bytes: Some(sizes[2..].iter().sum()),
            },
            T0_MS,
            Offset(3),
        )
        .unwrap();
    assert_eq!(start, Offset(2));
    assert_eq!(log.log_start(), Offset(2));
    assert_eq!(log.size_bytes(), total - sizes[0]);
    // Without the keep_from limit the second batch goes too.
    let start = log
        .apply_retention(
            RetentionPolicy {
                max_age_ms: None,
                max_bytes: Some(sizes[2..].iter().sum()),
            },
            T0_MS,
            Offset(12),
        )
        .unwrap();
    assert_eq!(start, Offset(4));
    // By time: batches whose newest record is older than now - max_age (batches 2 and 3 of
    // timestamps T0+2000.. and T0+3000..), stopping at the first that is young enough.
    let start = log
        .apply_retention(
            RetentionPolicy {
                max_age_ms: Some(1_000),
                max_bytes: None,
            },
            T0_MS + 5_000,
            Offset(12),
        )
        .unwrap();
    assert_eq!(start, Offset(8));
    assert_eq!(log.size_bytes(), sizes[4] + sizes[5]);
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(100), usize::MAX).unwrap()),
        vec![8, 10]
    );
    // The epoch that covers the new start moved there (Kafka's truncate-from-start).
    assert_eq!(log.epoch_history(), vec![epoch_start(2, 8)]);
    // Truncation below the start is refused.
    assert!(matches!(
        log.truncate_suffix(Offset(6)),
        Err(StorageError::BadTruncation {
            offset: Offset(6),
            ..
        })
    ));
    // Everything goes: the log is empty, but offsets are never reused.
    let start = log
        .apply_retention(
            RetentionPolicy {
                max_age_ms: Some(0),
                max_bytes: None,
            },
            T0_MS + 1_000_000,
            Offset(12),
        )
        .unwrap();
    assert_eq!(start, Offset(12));
    assert_eq!(
        (log.log_start(), log.log_end(), log.size_bytes()),
        (Offset(12), Offset(12), 0)
    );
    assert_eq!(log.last_epoch(), Epoch(2));
    assert!(log
        .read(Offset(0), Offset(100), usize::MAX)
        .unwrap()
        .is_empty());
    assert!(matches!(
        log.append(&batch(1, T0_MS).stamped(Offset(0), Epoch(2))),
        Err(StorageError::NotContiguous { .. })
    ));
    append(&mut log, 1, 2, T0_MS);
    assert_eq!(log.log_end(), Offset(13));
}

fn never_reuses_offsets_after_retention_and_truncation<F: Fixture>() {
    let mut fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    for _ in 0..4 {
        append(&mut log, 5, 1, T0_MS);
    }
    log.apply_retention(
        RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(0),
        },
        T0_MS,
        Offset(20),
    )
    .unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(20), Offset(20)));
    // Truncating an empty log at its end is allowed and changes nothing.
    log.truncate_suffix(Offset(20)).unwrap();
    drop(log);
    let store = fixture.restart();
    let mut log = store.open_log("p").unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(20), Offset(20)));
    assert_eq!(log.last_epoch(), Epoch(1));
    append(&mut log, 3, 1, T0_MS);
    append(&mut log, 3, 2, T0_MS);
    log.truncate_suffix(Offset(23)).unwrap();
    log.truncate_suffix(Offset(20)).unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(20), Offset(20)));
    append(&mut log, 1, 2, T0_MS);
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(100), usize::MAX).unwrap()),
        vec![20]
    );
}

/// A follower behind its leader's log start empties its log and starts it there; the reset
/// survives a restart, never moves the start back, and the next append continues at it.
fn resets_the_log_to_a_later_start<F: Fixture>() {
    let mut fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    append(&mut log, 3, 1, T0_MS);
    append(&mut log, 3, 2, T0_MS);
    // A reset below the log start is refused and changes nothing.
    log.apply_retention(
        RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(1),
        },
        T0_MS,
        Offset(3),
    )
    .unwrap();
    let before = snapshot(&log);
    assert!(matches!(
        log.reset_start(Offset(2), Epoch(2)),
        Err(StorageError::BadTruncation { .. })
    ));
    assert_eq!(snapshot(&log), before);
    // Above the log end (and so not at any of our batch boundaries).
    log.reset_start(Offset(10), Epoch(3)).unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(10), Offset(10)));
    assert_eq!(log.epoch_history(), vec![epoch_start(3, 10)]);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(
        log.read(Offset(0), Offset(100), usize::MAX).unwrap(),
        Vec::new()
    );
    drop(log);
    let store = fixture.restart();
    let mut log = store.open_log("p").unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(10), Offset(10)));
    assert_eq!(log.epoch_history(), vec![epoch_start(3, 10)]);
    append(&mut log, 2, 3, T0_MS);
    append(&mut log, 2, 4, T0_MS);
    assert_eq!(
        log.epoch_history(),
        vec![epoch_start(3, 10), epoch_start(4, 12)]
    );
    // Below the log end: the suffix goes too.
    log.reset_start(Offset(11), Epoch(3)).unwrap();
    assert_eq!((log.log_start(), log.log_end()), (Offset(11), Offset(11)));
    append(&mut log, 1, 5, T0_MS);
    assert_eq!(
        base_offsets(&log.read(Offset(0), Offset(100), usize::MAX).unwrap()),
        vec![11]
    );
}

fn recovers_everything_flushed_on_reopen<F: Fixture>() {
    let mut fixture = F::new();
    let store = fixture.store();
    let mut log = store.open_log("p").unwrap();
    let mut other = store.open_log("q").unwrap();
    for epoch in [1, 1, 2, 4] {
        append(&mut log, 3, epoch, T0_MS);
    }
    append(&mut other, 1, 7, T0_MS);
    log.apply_retention(
        RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(1),
        },
        T0_MS,
        Offset(3),
    )
    .unwrap();
    log.set_promised_epoch(Epoch(9)).unwrap();
    log.put_value("producer-state", b"\x01\x02").unwrap();
    let before = snapshot(&log);
    assert_eq!(before.0, Offset(3));
    drop((log, other, store));
    let store = fixture.restart();
    let log = store.open_log("p").unwrap();
    assert_eq!(snapshot(&log), before);
    assert_eq!(
        log.epoch_history(),
        vec![epoch_start(1, 3), epoch_start(2, 6), epoch_start(4, 9)]
    );
    assert_eq!(log.promised_epoch(), Epoch(9));
    assert_eq!(
        log.get_value("producer-state").unwrap(),
        Some(Bytes::from_static(b"\x01\x02"))
    );
    assert_eq!(log.get_value("absent").unwrap(), None);
    // The time index came back too (every record of this log has timestamp T0 .. T0 + 2).
    assert_eq!(
        log.offset_for_timestamp(T0_MS + 2, Offset(100)).unwrap(),
        Some((Offset(5), T0_MS + 2))
    );
    let other = store.open_log("q").unwrap();
    assert_eq!(other.log_end(), Offset(1));
    assert_eq!(
        store.log_names().unwrap(),
        vec!["p".to_owned(), "q".to_owned()]
    );
}

fn finds_offsets_by_timestamp<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    append(&mut log, 3, 1, T0_MS); // 0..3: T0, T0+1, T0+2
    append(&mut log, 3, 1, T0_MS + 100); // 3..6: T0+100..T0+102
    append(&mut log, 2, 1, T0_MS + 50); // 6..8: a clock that stepped back
    append(&mut log, 2, 1, T0_MS + 200); // 8..10
    fn find<L: PartitionLog>(log: &L, timestamp_ms: i64, until: u64) -> Option<(Offset, i64)> {
        log.offset_for_timestamp(timestamp_ms, Offset(until))
            .unwrap()
    }
    assert_eq!(find(&log, T0_MS - 5, 100), Some((Offset(0), T0_MS)));
    assert_eq!(find(&log, T0_MS + 1, 100), Some((Offset(1), T0_MS + 1)));
    assert_eq!(find(&log, T0_MS + 3, 100), Some((Offset(3), T0_MS + 100)));
    assert_eq!(find(&log, T0_MS + 101, 100), Some((Offset(4), T0_MS + 101)));
    assert_eq!(find(&log, T0_MS + 150, 100), Some((Offset(8), T0_MS + 200)));
    assert_eq!(find(&log, T0_MS + 202, 100), None);
    // `until` bounds the answer.
    assert_eq!(find(&log, T0_MS + 101, 4), None);
    assert_eq!(find(&log, T0_MS + 101, 5), Some((Offset(4), T0_MS + 101)));
    // After retention removed the batch holding the newest early timestamp, lookups still land
    // on the first batch that is left and qualifies.
    log.apply_retention(
        RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(1),
        },
        T0_MS,
        Offset(6),
    )
    .unwrap();
    assert_eq!(log.log_start(), Offset(6));
    assert_eq!(find(&log, T0_MS, 100), Some((Offset(6), T0_MS + 50)));
    assert_eq!(find(&log, T0_MS + 51, 100), Some((Offset(7), T0_MS + 51)));
    assert_eq!(find(&log, T0_MS + 52, 100), Some((Offset(8), T0_MS + 200)));
    // Truncation forgets the removed timestamps.
    log.truncate_suffix(Offset(8)).unwrap();
    assert_eq!(find(&log, T0_MS + 150, 100), None);
    append(&mut log, 1, 1, T0_MS + 60);
    assert_eq!(find(&log, T0_MS + 52, 100), Some((Offset(8), T0_MS + 60)));
}

fn timestamp_lookups_skip_epoch_markers<F: Fixture>() {
    let fixture = F::new();
    let mut log = fixture.store().open_log("p").unwrap();
    let mark = |log: &mut <F::Store as LogStore>::Log, epoch: u64, timestamp_ms: i64| {
        let marker =
            RecordBatchBuilder::control_marker(timestamp_ms).stamped(log.log_end(), Epoch(epoch));
        log.append(&marker).unwrap();
    };
    mark(&mut log, 1, 0); // 0: the first leader's marker, timestamp 0
    append(&mut log, 3, 1, T0_MS); // 1..4
    mark(&mut log, 2, T0_MS + 10); // 4: a later leader's marker
    append(&mut log, 2, 2, T0_MS + 20); // 5..7
    let find = |log: &<F::Store as LogStore>::Log, timestamp_ms: i64| {
        log.offset_for_timestamp(timestamp_ms, Offset(100)).unwrap()
    };
    // Kafka's clients ask for timestamp 0 to find the first record: not the marker.
    assert_eq!(find(&log, 0), Some((Offset(1), T0_MS)));
    assert_eq!(find(&log, T0_MS + 5), Some((Offset(5), T0_MS + 20)));
    assert_eq!(find(&log, T0_MS + 30), None);
}

fn removes_logs_and_lists_names<F: Fixture>() {
    let mut fixture = F::new();
    let store = fixture.store();
    assert!(store.log_names().unwrap().is_empty());
    let mut first = store.open_log("t-1").unwrap();
    append(&mut first, 2, 1, T0_MS);
    let _second = store.open_log("t-0").unwrap();
    assert_eq!(
        store.log_names().unwrap(),
        vec!["t-0".to_owned(), "t-1".to_owned()]
    );
    store.remove_log("t-1").unwrap();
    store.remove_log("never-existed").unwrap();
    assert_eq!(store.log_names().unwrap(), vec!["t-0".to_owned()]);
    assert!(matches!(
        first.append(&batch(1, T0_MS).stamped(Offset(2), Epoch(1))),
        Err(StorageError::Io(_))
    ));
    drop(first);
    // Reopening the name gives a fresh, empty log.
    let again = store.open_log("t-1").unwrap();
    assert_eq!(
        (again.log_start(), again.log_end(), again.size_bytes()),
        (Offset(0), Offset(0), 0)
    );
    store.remove_log("t-1").unwrap();
    drop((again, _second, store));
    let store = fixture.restart();
    assert_eq!(store.log_names().unwrap(), vec!["t-0".to_owned()]);
}

fn shares_state_between_handles_of_one_log<F: Fixture>() {
    let fixture = F::new();
    let store = fixture.store();
    let mut writer = store.open_log("p").unwrap();
    let reader = store.open_log("p").unwrap();
    append(&mut writer, 2, 1, T0_MS);
    assert_eq!(reader.log_end(), Offset(2));
    assert_eq!(reader.read(Offset(0), Offset(2), 1).unwrap().len(), 1);
}

/// A background reader's detached reads, while another handle appends, removes by retention
/// and truncates: every answer is whole batches, contiguous, starting at or after where it
/// was asked (the log start moves up), each exactly as appended.
fn detached_reads_stay_whole_while_the_log_moves<F: Fixture>()
where
    <F::Store as LogStore>::Log: Send + 'static,
{
    let fixture = F::new();
    let store = fixture.store();
    let mut writer = store.open_log("p").unwrap();
    let reader = store.open_log("p").unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    let background = std::thread::spawn(move || {
        let mut reads = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 100 {
            let from = reader.log_start();
            let batches = reader
                .read_detached(from, Offset(u64::MAX), 4096)
                .unwrap_or_else(|error| panic!("detached read from {from}: {error}"));
            let mut expected = None;
            for batch in &batches {
                assert!(batch.next_offset() > from, "{batch:?} is below {from}");
                if let Some(expected) = expected {
                    assert_eq!(batch.base_offset(), expected, "contiguous");
                }
                expected = Some(batch.next_offset());
                // Every batch was appended with its base offset as its timestamp.
                assert_eq!(
                    batch.header().first_timestamp_ms,
                    T0_MS + batch.base_offset().0 as i64
                );
            }
            reads += 1;
        }
        reads
    });
    for round in 0..300u64 {
        let timestamp = T0_MS + writer.log_end().0 as i64;
        append(&mut writer, 3, 1 + round / 100, timestamp);
        if round % 7 == 6 {
            // An uncommitted suffix goes: the last batch.
            let last_base = Offset(writer.log_end().0 - 3);
            if last_base > writer.log_start() {
                writer.truncate_suffix(last_base).unwrap();
            }
        }
        if round % 5 == 4 {
            let keep = writer.size_bytes() / 2;
            writer
                .apply_retention(
                    RetentionPolicy {
                        max_age_ms: None,
                        max_bytes: Some(keep),
                    },
                    T0_MS,
                    writer.log_end(),
                )
                .unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = background
        .join()
        .expect("the reader saw only whole, contiguous batches");
    assert!(reads >= 100);
    let end = writer.log_end();
    detached_equals_read(&writer, writer.log_start(), end, usize::MAX);
}

fn keeps_watermarks_across_restarts_and_forgets_removed_logs<F: Fixture>() {
    let mut fixture = F::new();
    let store = fixture.store();
    let mut log = store.open_log("p").unwrap();
    assert_eq!(log.watermark(), Watermark::default());
    append(&mut log, 3, 1, T0_MS);
    append(&mut log, 2, 2, T0_MS);
    log.set_promised_epoch(Epoch(4)).unwrap();
    log.raise_committed_watermark(Offset(3)).unwrap();
    // Beyond the log end is refused and changes nothing; lower never lowers it.
    assert_eq!(
        log.raise_committed_watermark(Offset(6)),
        Err(StorageError::WatermarkBeyondLogEnd {
            committed_end: Offset(6),
            log_end: Offset(5)
        })
    );
    log.raise_committed_watermark(Offset(1)).unwrap();
    let expected = Watermark {
        committed_end: Offset(3),
        promised_epoch: Epoch(4),
    };
    assert_eq!(log.watermark(), expected);
    let mut other = store.open_log("q").unwrap();
    append(&mut other, 1, 1, T0_MS);
    other.raise_committed_watermark(Offset(1)).unwrap();
    drop((log, other, store));
    let store = fixture.restart();
    let log = store.open_log("p").unwrap();
    assert_eq!(log.watermark(), expected);
    assert_eq!(log.log_end(), Offset(5));
    store.remove_log("q").unwrap();
    drop((log, store));
    let store = fixture.restart();
    let other = store.open_log("q").unwrap();
    assert_eq!(
        other.watermark(),
        Watermark::default(),
        "a removed log's is gone"
    );
}

/// A keyed batch: record `i` has key `keys[i]` and a value naming its key and timestamp.
fn keyed_batch(keys: &[&str], timestamp_ms: i64) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    for (index, key) in keys.iter().enumerate() {
        builder.push(
            &Record::new(format!("{key}@{}", timestamp_ms + index as i64))
                .with_key(key.to_string())
                .with_timestamp_ms(timestamp_ms + index as i64),
        );
    }
    builder.build()
}

/// A compacted batch replaces the stored one in place: offsets, epoch history and log ends
/// stay, reads return the new bytes (with their gaps) before and after a restart, the size
/// shrinks; anything that is not a compacted version of the stored batch is refused and
/// changes nothing.
fn replaces_batches_with_their_compacted_versions<F: Fixture>() {
    use cairn_protocol::compaction::{compact_log, CompactionDecision};
    let mut fixture = F::new();
    let store = fixture.store();
    let mut log = store.open_log("p").unwrap();
    let first = keyed_batch(&["a", "b", "a"], T0_MS).stamped(Offset(0), Epoch(1));
    let second = keyed_batch(&["b", "c"], T0_MS + 10).stamped(Offset(3), Epoch(2));
    log.append(&first).unwrap();
    log.append(&second).unwrap();
    let before = snapshot(&log);
    let decision = CompactionDecision {
        below: Offset(5),
        tombstone_cutoff_ms: 0,
    };
    let compacted = compact_log(&[first.clone(), second.clone()], &decision, 16).unwrap();
    assert!(compacted[0].record_count() < first.record_count());

    // Refusals first: each leaves everything as it was.
    let other_epoch = compacted[0].stamped(Offset(0), Epoch(3));
    let shifted = compacted[0].stamped(Offset(1), Epoch(1));
    let beyond = compacted[1].stamped(Offset(5), Epoch(2));
    let grown = keyed_batch(&["a", "b", "a", "d"], T0_MS).stamped(Offset(0), Epoch(1));
    for refused in [&other_epoch, &shifted, &beyond, &grown] {
        assert!(
            matches!(
                log.replace_batch(refused),
                Err(StorageError::BadReplacement { .. })
            ),
            "{:?}",
            refused.header()
        );
        assert_eq!(snapshot(&log), before);
    }
    let mut damaged = compacted[0].bytes().to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let damaged = RecordBatch::from_trusted(Bytes::from(damaged)).unwrap();
    assert!(matches!(
        log.replace_batch(&damaged),
        Err(StorageError::Corrupt { .. })
    ));
    assert_eq!(snapshot(&log), before);

    for batch in &compacted {
        log.replace_batch(batch).unwrap();
    }
    let read = log.read(Offset::ZERO, Offset(5), usize::MAX).unwrap();
    assert_eq!(read, compacted);
    assert_eq!(
        (log.log_start(), log.log_end(), log.epoch_history()),
        (before.0, before.1, before.3.clone())
    );
    let shrunk: u64 = compacted
        .iter()
        .map(|batch| batch.size_bytes() as u64)
        .sum();
    assert_eq!(log.size_bytes(), shrunk);
    // Reading from inside a gap starts at the batch that holds it.
    let from_gap = log.read(Offset(1), Offset(5), usize::MAX).unwrap();
    assert_eq!(from_gap, compacted);
    // Appends continue at the same log end.
    let third = keyed_batch(&["a"], T0_MS + 20).stamped(Offset(5), Epoch(2));
    log.append(&third).unwrap();
    // Replacing again with the same bytes (compaction run twice) changes nothing.
    log.replace_batch(&compacted[0]).unwrap();

    drop(log);
    drop(store);
    let store = fixture.restart();
    let log = store.open_log("p").unwrap();
    let read = log.read(Offset::ZERO, Offset(6), usize::MAX).unwrap();
    assert_eq!(read[..2], compacted[..]);
    assert_eq!(read[2], third);
    assert_eq!(log.size_bytes(), shrunk + third.size_bytes() as u64);
    assert_eq!(log.log_end(), Offset(6));
}

macro_rules! conformance {
    ($module:ident, $fixture:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn detached_reads_stay_whole_while_the_log_moves() {
                super::detached_reads_stay_whole_while_the_log_moves::<$fixture>();
            }
            #[test]
            fn appends_and_reads_ranges() {
                super::appends_and_reads_ranges::<$fixture>();
            }
            #[test]
            fn refuses_non_contiguous_appends_without_change() {
                super::refuses_non_contiguous_appends_without_change::<$fixture>();
            }
            #[test]
            fn refuses_corrupt_batches_without_change() {
                super::refuses_corrupt_batches_without_change::<$fixture>();
            }
            #[test]
            fn keeps_epoch_history_across_appends_and_truncation() {
                super::keeps_epoch_history_across_appends_and_truncation::<$fixture>();
            }
            #[test]
            fn applies_retention_by_bytes_and_time() {
                super::applies_retention_by_bytes_and_time::<$fixture>();
            }
            #[test]
            fn never_reuses_offsets_after_retention_and_truncation() {
                super::never_reuses_offsets_after_retention_and_truncation::<$fixture>();
            }
            #[test]
            fn resets_the_log_to_a_later_start() {
                super::resets_the_log_to_a_later_start::<$fixture>();
            }
            #[test]
            fn recovers_everything_flushed_on_reopen() {
                super::recovers_everything_flushed_on_reopen::<$fixture>();
            }
            #[test]
            fn finds_offsets_by_timestamp() {
                super::finds_offsets_by_timestamp::<$fixture>();
            }
            #[test]
            fn timestamp_lookups_skip_epoch_markers() {
                super::timestamp_lookups_skip_epoch_markers::<$fixture>();
            }
            #[test]
            fn removes_logs_and_lists_names() {
                super::removes_logs_and_lists_names::<$fixture>();
            }
            #[test]
            fn keeps_watermarks_across_restarts_and_forgets_removed_logs() {
                super::keeps_watermarks_across_restarts_and_forgets_removed_logs::<$fixture>();
            }
            #[test]
            fn replaces_batches_with_their_compacted_versions() {
                super::replaces_batches_with_their_compacted_versions::<$fixture>();
            }
            #[test]
            fn shares_state_between_handles_of_one_log() {
                super::shares_state_between_handles_of_one_log::<$fixture>();
            }
        }
    };
}

conformance!(sled, SledFixture);
conformance!(memory, MemoryFixture);
