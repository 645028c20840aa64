//! Micro-benchmarks (criterion) of the hot paths under the load generator's figures: the
//! record batch codec, storage append and read (sled, as the node runs it), and one step of
//! the replica state machine. `cargo bench -p cairn-benches --bench micro`.

use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
use cairn_protocol::messages::Acks;
use cairn_protocol::{Epoch, NodeId, Offset};
use cairn_replica::{Config, Effect, Input, Millis, Recovered, Replica, RequestId};
use cairn_storage::sled_store::SledStore;
use cairn_storage::{LogStore, PartitionLog};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

/// 64 records of 1 KiB: the size of a producer's batch under load (64 KiB).
const RECORDS: usize = 64;
const RECORD_BYTES: usize = 1024;

fn batch() -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    for index in 0..RECORDS {
        builder.push(&Record::new(vec![index as u8; RECORD_BYTES]));
    }
    builder.build()
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("encode 64 x 1 KiB", |b| b.iter(|| black_box(batch())));
    let encoded = batch().into_bytes();
    group.bench_function("validate and decode 64 x 1 KiB", |b| {
        b.iter(|| {
            let batch = RecordBatch::validate(encoded.clone()).expect("a valid batch");
            black_box(batch.records().filter(Result::is_ok).count())
        })
    });
    group.finish();
}

fn storage(c: &mut Criterion) {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let store = SledStore::open(folder.path()).expect("a sled store");
    let mut log = store.open_log("bench").expect("a log");
    let template = batch();
    let mut group = c.benchmark_group("storage");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("append 64 x 1 KiB", |b| {
        b.iter(|| {
            let stamped = template.stamped(log.log_end(), Epoch(1));
            black_box(log.append(&stamped).expect("append"))
        })
    });
    group.bench_function("append 64 x 1 KiB and flush", |b| {
        b.iter(|| {
            let stamped = template.stamped(log.log_end(), Epoch(1));
            log.append(&stamped).expect("append");
            store.flush().expect("flush")
        })
    });
    store.flush().expect("flush");
    let end = log.log_end().0;
    let mut from = 0u64;
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("read 1 MiB", |b| {
        b.iter(|| {
            from = (from + 16 * RECORDS as u64) % end.saturating_sub(1 << 10).max(1);
            black_box(log.read(Offset(from), Offset(end), 1 << 20).expect("read"))
        })
    });
    group.finish();
}

/// A single-voter replica led to leadership, then fed one produce and its durability per
/// iteration: the state machine's own cost per batch, without I/O.
fn replica_step(c: &mut Criterion) {
    let config = Config::default();
    let recovered = Recovered {
        promised_epoch: Epoch::ZERO,
        epoch_history: Vec::new(),
        log_start: Offset::ZERO,
        log_end: Offset::ZERO,
    };
    let (mut replica, _) = Replica::new(
        config.clone(),
        NodeId(1),
        vec![NodeId(1)],
        recovered,
        Millis(0),
    )
    .expect("a valid replica");
    let now = Millis(config.election_timeout_ms * 2);
    replica.step(now, Input::Tick);
    replica.step(now, Input::PromisePersisted { epoch: Epoch(1) });
    replica.step(now, Input::Durable { log_end: Offset(1) });
    let template = batch();
    let mut request = 0u64;
    let mut group = c.benchmark_group("replica");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("produce and durable, 64 records", |b| {
        b.iter(|| {
            request += 1;
            let effects = replica.step(
                now,
                Input::Produce {
                    request: RequestId(request),
                    batch: template.clone(),
                    acks: Acks::All,
                },
            );
            let log_end = effects
                .iter()
                .find_map(|effect| match effect {
                    Effect::Append { batches } => batches.last().map(RecordBatch::next_offset),
                    _ => None,
                })
                .expect("a leader appends what it is given");
            black_box(replica.step(now, Input::Durable { log_end }))
        })
    });
    group.finish();
}

criterion_group!(benches, codec, storage, replica_step);
criterion_main!(benches);
