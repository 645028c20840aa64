//! Recovery from a torn tail: after a crash, sled keeps some prefix of the unflushed writes.
//! [`MemoryStore::crash_torn`] reproduces every such prefix deterministically, and the open path
//! must turn each one into a consistent log (the same repair code runs for sled).

use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::{Epoch, Offset};
use cairn_storage::{LogStore, MemoryStore, PartitionLog, RetentionPolicy, StorageError};

const T0_MS: i64 = 1_700_000_000_000;

fn append(log: &mut impl PartitionLog, count: u32, epoch: u64, timestamp_ms: i64) {
    let mut builder = RecordBatchBuilder::new(timestamp_ms);
    for index in 0..count {
        builder.push(
            &Record::new(format!("v{index}")).with_timestamp_ms(timestamp_ms + i64::from(index)),
        );
    }
    let batch = builder.build().stamped(log.log_end(), Epoch(epoch));
    log.append(&batch).unwrap();
}

/// A flushed history, then unflushed appends across epochs, a truncation, retention, a
/// promise and a value. Returns the store and how many unflushed writes it holds.
fn scenario() -> (MemoryStore, usize) {
    let store = MemoryStore::new();
    let mut log = store.open_log("p").unwrap();
    for index in 0..4 {
        append(&mut log, 3, 1, T0_MS + 100 * index);
    }
    store.flush().unwrap();
    append(&mut log, 2, 2, T0_MS + 500);
    append(&mut log, 2, 3, T0_MS + 450);
    append(&mut log, 2, 3, T0_MS + 700);
    log.truncate_suffix(Offset(14)).unwrap();
    append(&mut log, 4, 4, T0_MS + 800);
    log.set_promised_epoch(Epoch(5)).unwrap();
    log.apply_retention(
        RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(1),
        },
        T0_MS,
        Offset(6),
    )
    .unwrap();
    append(&mut log, 1, 5, T0_MS + 900);
    log.put_value("k", b"v").unwrap();
    let unflushed = store.unflushed_writes();
    (store, unflushed)
}

type Snapshot = (
    Offset,
    Offset,
    u64,
    Vec<cairn_storage::EpochStart>,
    Epoch,
    Vec<Vec<u8>>,
);

fn snapshot(log: &impl PartitionLog) -> Snapshot {
    let batches = log
        .read(Offset::ZERO, Offset(u64::MAX), usize::MAX)
        .unwrap_or_else(|error| panic!("recovered log does not read back: {error}"));
    (
        log.log_start(),
        log.log_end(),
        log.size_bytes(),
        log.epoch_history(),
        log.promised_epoch(),
        batches.iter().map(|batch| batch.bytes().to_vec()).collect(),
    )
}

fn check_consistent(log: &mut impl PartitionLog, kept: usize) -> Snapshot {
    let state = snapshot(log);
    let (start, end, size_bytes, history, _, batches) = &state;
    let mut next = *start;
    let mut total = 0u64;
    for bytes in batches {
        let batch = cairn_protocol::RecordBatch::validate(bytes.clone().into()).unwrap();
        assert_eq!(batch.base_offset(), next, "kept {kept}: gap");
        next = batch.next_offset();
        total += bytes.len() as u64;
    }
    assert_eq!(next, *end, "kept {kept}: log end");
    assert_eq!(total, *size_bytes, "kept {kept}: size counter");
    assert!(
        history.windows(2).all(
            |pair| pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset
        ),
        "kept {kept}: history {history:?}"
    );
    if !batches.is_empty() {
        assert!(
            history.first().unwrap().start_offset <= *start,
            "kept {kept}"
        );
    }
    // Every lookup by time answers without error.
    for timestamp_ms in (T0_MS - 10..T0_MS + 1000).step_by(37) {
        log.offset_for_timestamp(timestamp_ms, Offset(u64::MAX))
            .unwrap_or_else(|error| panic!("kept {kept}: time lookup failed: {error}"));
    }
    // A lower epoch is refused and the current one continues at the end.
    let last_epoch = log.last_epoch();
    if last_epoch > Epoch(0) {
        let mut builder = RecordBatchBuilder::new(T0_MS);
        builder.push(&Record::new("lower"));
        let lower = builder.build().stamped(*end, Epoch(last_epoch.0 - 1));
        assert!(matches!(
            log.append(&lower),
            Err(StorageError::EpochRegression { .. })
        ));
    }
    state
}

#[test]
fn every_torn_prefix_recovers_to_a_consistent_log() {
    let (_, unflushed) = scenario();
    assert!(
        unflushed > 20,
        "the scenario should leave many writes: {unflushed}"
    );
    for kept in 0..=unflushed {
        let (store, _) = scenario();
        store.crash_torn(kept);
        let mut log = store.open_log("p").unwrap();
        let recovered = check_consistent(&mut log, kept);
        // The flushed prefix (offsets 0..12, epoch 1) is never lost, except below a log start
        // that retention moved.
        assert!(
            recovered.1 >= Offset(12) || recovered.0 > Offset(0),
            "kept {kept}: {recovered:?}"
        );
        // Repair is stable: flushing and crashing again changes nothing.
        store.flush().unwrap();
        store.crash();
        let again = snapshot(&store.open_log("p").unwrap());
        assert_eq!(again, recovered, "kept {kept}: repair was not stable");
        let epoch = log.last_epoch().0.max(5);
        append(&mut log, 1, epoch, T0_MS + 2000);
        assert_eq!(log.log_end(), recovered.1.plus(1));
    }
    // Keeping nothing gives the flushed state; keeping everything, the state before the crash.
    let (store, _) = scenario();
    store.crash();
    let log = store.open_log("p").unwrap();
    assert_eq!(
        (log.log_start(), log.log_end(), log.last_epoch()),
        (Offset(0), Offset(12), Epoch(1))
    );
    assert_eq!(log.get_value("k").unwrap(), None);
    let (store, unflushed) = scenario();
    let before = snapshot(&store.open_log("p").unwrap());
    store.crash_torn(unflushed);
    let log = store.open_log("p").unwrap();
    assert_eq!(snapshot(&log), before);
    assert_eq!(log.promised_epoch(), Epoch(5));
    assert_eq!(log.get_value("k").unwrap().as_deref(), Some(&b"v"[..]));
}
