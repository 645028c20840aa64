//! One record batch, as a producer or a peer sends it, through `RecordBatch::validate` and its
//! records; the same bytes through `split_batches`, as a consumer reads a fetch reply.
//!
//! Oracles: a valid batch yields exactly `record_count` records, record `i` at offset
//! `base + i` (as a log holds it, compaction may leave gaps: `split_batches` accepts rising
//! offsets within the batch, `validate` only dense batches); rebuilt from its records with `RecordBatchBuilder` (and stamped with the same
//! base offset and epoch), it is valid again, holds the same records and header fields, and
//! rebuilding that gives the very same bytes (the builder's encoding is a fixed point).
//! Control batches are only checked for their records: the builder writes no control batch
//! but the epoch marker. A compressed batch (gzip, snappy, lz4, zstd) is rebuilt with the same
//! codec; its records are decompressed under [`DECOMPRESSED_BYTES_MAX`], and a bomb past it
//! must be refused without any allocation past the fuzz allocator's bound.
//!
//! Input: one mode byte, then the batch. A mutated batch almost never keeps a valid checksum,
//! so for an even mode byte the target first writes the batch's true length and checksum
//! into its header, letting the fuzzer reach the records; odd mode bytes keep the batch as
//! given, so length and checksum checks are fuzzed too.

#![no_main]

use bytes::Bytes;
use cairn_protocol::batch::{
    split_batches_bounded, RecordBatch, RecordBatchBuilder, ATTRIBUTE_COMPRESSION_MASK,
    HEADER_BYTES, LOG_OVERHEAD_BYTES,
};
use cairn_protocol::{Record, RecordView};
use libfuzzer_sys::fuzz_target;

/// The bound on a batch's decompressed records here: the test preset's
/// `limits.batch_decompressed_bytes_max`, within the fuzz allocator's bound.
const DECOMPRESSED_BYTES_MAX: usize = 1024 * 1024;

/// The records of a validated batch: exactly `record_count` of them; record `i` at offset
/// `base + i` in a dense batch (every produced one is), else (a log's batch, which compaction
/// may have thinned) offsets rising within the batch's span.
fn records_of(batch: &RecordBatch) -> Vec<RecordView> {
    let records: Vec<RecordView> = batch
        .records_bounded(DECOMPRESSED_BYTES_MAX)
        .map(|record| record.expect("a validated batch's records decode"))
        .collect();
    assert_eq!(records.len(), batch.record_count() as usize);
    let base = batch.base_offset().0;
    if batch.is_dense() {
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset.0, base + index as u64);
        }
    } else {
        let last = base + u64::from(batch.header().last_offset_delta);
        for pair in records.windows(2) {
            assert!(pair[0].offset < pair[1].offset, "offsets rise");
        }
        for record in &records {
            assert!(record.offset.0 >= base && record.offset.0 <= last);
        }
    }
    records
}

fn rebuild(batch: &RecordBatch, records: &[RecordView]) -> RecordBatch {
    let header = batch.header();
    let mut builder = RecordBatchBuilder::new(header.first_timestamp_ms).producer(
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    );
    for record in records {
        builder.push(&Record {
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record.headers.clone(),
            timestamp_ms: Some(record.timestamp_ms),
        });
    }
    let compression = batch.compression().expect("a validated batch has a known codec");
    builder
        .build_compressed(compression)
        .stamped(batch.base_offset(), batch.leader_epoch())
}

/// Where the header keeps the checksum, and where the bytes it covers begin.
const CRC_AT: usize = 21;
const CRC_COVERS_FROM: usize = 25;

/// Writes the true `batch_length` and checksum into `batch`'s header, when it has one.
fn repair(batch: &mut [u8]) {
    if batch.len() < HEADER_BYTES {
        return;
    }
    let Ok(length) = u32::try_from(batch.len() - LOG_OVERHEAD_BYTES) else {
        return;
    };
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERS_FROM..]);
    batch[CRC_AT..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, batch)) = data.split_first() else {
        return;
    };
    let mut batch = batch.to_vec();
    if mode % 2 == 0 {
        repair(&mut batch);
    }
    let bytes = Bytes::from(batch);
    // A refused batch ends the walk, as it ends a consumer's reading of the fetch.
    for batch in split_batches_bounded(&bytes, DECOMPRESSED_BYTES_MAX).flatten() {
        records_of(&batch);
    }

    let Ok(batch) = RecordBatch::validate_bounded(bytes, DECOMPRESSED_BYTES_MAX) else {
        return;
    };
    let records = records_of(&batch);
    if batch.header().is_control() {
        return;
    }
    // The builder stores each timestamp as a delta from the first record's, so it cannot
    // encode records more than `i64::MAX` ms apart, which a batch based elsewhere can hold.
    // No client has such clocks; the rebuild is checked for every other batch.
    let first_ms = records[0].timestamp_ms;
    if records
        .iter()
        .any(|record| record.timestamp_ms.checked_sub(first_ms).is_none())
    {
        return;
    }
    let rebuilt = RecordBatch::validate_bounded(
        rebuild(&batch, &records).into_bytes(),
        DECOMPRESSED_BYTES_MAX,
    )
        .expect("a batch rebuilt from valid records is valid");
    assert_eq!(records_of(&rebuilt), records);
    let (header, original) = (rebuilt.header(), batch.header());
    assert_eq!(
        (
            header.max_timestamp_ms,
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            // The builder sends records that would not shrink uncompressed.
            header.attributes & !ATTRIBUTE_COMPRESSION_MASK,
            header.last_offset_delta,
        ),
        (
            original.max_timestamp_ms,
            original.producer_id,
            original.producer_epoch,
            original.base_sequence,
            original.attributes & !ATTRIBUTE_COMPRESSION_MASK,
            original.last_offset_delta,
        )
    );
    let again = rebuild(&rebuilt, &records_of(&rebuilt));
    assert_eq!(
        again.bytes(),
        rebuilt.bytes(),
        "the builder's encoding is not a fixed point"
    );
});
