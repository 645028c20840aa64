//! The append load that `examples/append_cost.rs` measures and `tests/write_amplification.rs`
//! bounds: 64 KiB batches of 1 KiB records, round-robin over several partition logs of one
//! store, flushed in groups as a node's group committer does. One file, included by both
//! with `#[path]`, so the test bounds exactly what the example measures.

use cairn_protocol::batch::RecordBatchBuilder;
use cairn_protocol::{Epoch, Offset, Record};
use cairn_storage::sled_store::SledStore;
use cairn_storage::{LogStore, PartitionLog};

/// What an [`append_batches`] run appended.
pub struct Appended {
    pub bytes: u64,
    pub batches: u64,
    /// Each log's end after the run.
    pub log_ends: Vec<Offset>,
}

/// Appends batches of 63 x 1,000-byte records (just under 64 KiB) to logs `p0..pN` of
/// `store` until `total_bytes` are appended, flushing after every `batches_per_flush`.
pub fn append_batches(
    store: &SledStore,
    partitions: usize,
    total_bytes: u64,
    batches_per_flush: usize,
) -> Appended {
    let mut logs: Vec<_> = (0..partitions)
        .map(|p| store.open_log(&format!("p{p}")).expect("log"))
        .collect();
    let mut builder = RecordBatchBuilder::new(0);
    for _ in 0..63 {
        builder.push(&Record::new(vec![7u8; 1000]));
    }
    let template = builder.build();
    let mut log_ends = vec![Offset(0); partitions];
    let mut bytes = 0;
    let mut batches = 0;
    while bytes < total_bytes {
        for _ in 0..batches_per_flush {
            let p = (batches as usize) % partitions;
            let batch = template.stamped(log_ends[p], Epoch(1));
            log_ends[p] = logs[p].append(&batch).expect("append");
            bytes += batch.size_bytes() as u64;
            batches += 1;
        }
        store.flush().expect("flush");
    }
    Appended {
        bytes,
        batches,
        log_ends,
    }
}
