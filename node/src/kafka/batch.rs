//! Kafka's v2 record batch and Cairn's (`cairn_protocol::batch`) differ in one header field:
//! Kafka's partition leader epoch is 4 bytes (i32), Cairn's leader epoch 8 (u64), so every
//! later header field sits 4 bytes further on in Cairn's layout. Everything from the
//! attributes on (the bytes the CRC32C covers: attributes, offsets, timestamps, producer
//! fields, records) is the same byte for byte, so converting a batch rewrites its first 21
//! bytes and copies the rest: the checksum stays valid and no record is re-encoded.
//!
//! ```text
//!            Kafka                      Cairn
//!   0  8  base_offset           0  8  base_offset
//!   8  4  batch_length          8  4  batch_length (+4)
//!  12  4  partition_leader_ep  12  8  leader_epoch
//!  16  1  magic (2)            20  1  magic (2)
//!  17  4  crc                  21  4  crc
//!  21  …  attributes ...       25  …  attributes ...
//! ```

use super::ids::leader_epoch;
use bytes::{BufMut, Bytes, BytesMut};
use cairn_protocol::{ApiError, Epoch};

/// Base offset and batch length: the bytes before what `batch_length` counts.
const LOG_OVERHEAD_BYTES: usize = 12;
/// Kafka: where the magic byte is, and the smallest batch (a header without records).
const KAFKA_MAGIC_AT: usize = 16;
const KAFKA_HEADER_BYTES: usize = 61;
/// Cairn: where the magic byte is (after the 8-byte epoch).
const CAIRN_MAGIC_AT: usize = 20;
/// How many more bytes a batch takes in Cairn's layout.
const EPOCH_WIDENING_BYTES: usize = CAIRN_MAGIC_AT - KAFKA_MAGIC_AT;
const MAGIC_V2: u8 = 2;

fn corrupt(reason: String) -> ApiError {
    ApiError::CorruptBatch { reason }
}

/// The one Kafka v2 batch a produce request carries for a partition, in Cairn's layout
/// (validated afterwards by `RecordBatch::validate`, like any Cairn batch).
pub fn from_kafka(records: &[u8]) -> Result<Bytes, ApiError> {
    if records.len() < KAFKA_HEADER_BYTES {
        return Err(corrupt(format!(
            "a record batch has at least {KAFKA_HEADER_BYTES} bytes, got {}",
            records.len()
        )));
    }
    let magic = records[KAFKA_MAGIC_AT];
    if magic != MAGIC_V2 {
        return Err(corrupt(format!(
            "record batch magic {magic}: only v2 batches (magic 2) are accepted"
        )));
    }
    let batch_length = u32::from_be_bytes(records[8..12].try_into().expect("4 bytes")) as usize;
    if batch_length != records.len() - LOG_OVERHEAD_BYTES {
        return Err(ApiError::InvalidRecords {
            reason: format!(
                "a produce carries exactly one record batch per partition: the batch says {} \
                 bytes, the partition's records are {}",
                batch_length + LOG_OVERHEAD_BYTES,
                records.len()
            ),
        });
    }
    let mut out = BytesMut::with_capacity(records.len() + EPOCH_WIDENING_BYTES);
    out.put_slice(&records[..8]);
    out.put_u32((batch_length + EPOCH_WIDENING_BYTES) as u32);
    // The leader stamps its own epoch when it appends.
    out.put_u64(0);
    out.put_slice(&records[KAFKA_MAGIC_AT..]);
    Ok(out.freeze())
}

/// Batches read from a Cairn log (whole, back to back), in Kafka's layout.
pub fn to_kafka(batches: &[u8]) -> Result<Bytes, ApiError> {
    let mut out = BytesMut::with_capacity(batches.len());
    let mut rest = batches;
    while !rest.is_empty() {
        if rest.len() < CAIRN_MAGIC_AT + 1 {
            return Err(corrupt(format!(
                "{} bytes after the last whole batch",
                rest.len()
            )));
        }
        let batch_length = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let size = LOG_OVERHEAD_BYTES + batch_length;
        if batch_length < CAIRN_MAGIC_AT || size > rest.len() {
            return Err(corrupt(format!(
                "a stored batch of {size} bytes with {} left",
                rest.len()
            )));
        }
        let epoch = u64::from_be_bytes(rest[12..20].try_into().expect("8 bytes"));
        out.put_slice(&rest[..8]);
        out.put_u32((batch_length - EPOCH_WIDENING_BYTES) as u32);
        out.put_i32(leader_epoch(Epoch(epoch)));
        out.put_slice(&rest[CAIRN_MAGIC_AT..size]);
        rest = &rest[size..];
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};

    fn cairn_batch(values: &[&str]) -> Bytes {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        for value in values {
            builder.push(&Record::new(value.to_string()).with_key("k"));
        }
        builder.build().into_bytes()
    }

    #[test]
    fn a_batch_converts_both_ways_and_stays_valid() {
        let cairn = cairn_batch(&["a", "b"]);
        let kafka = to_kafka(&cairn).unwrap();
        assert_eq!(kafka.len(), cairn.len() - 4);
        assert_eq!(kafka[KAFKA_MAGIC_AT], 2);
        let back = from_kafka(&kafka).unwrap();
        assert_eq!(back, cairn);
        let batch = RecordBatch::validate(back).unwrap();
        assert_eq!(batch.records().count(), 2);
    }

    #[test]
    fn several_stored_batches_convert_in_order() {
        let mut both = BytesMut::new();
        both.put_slice(&cairn_batch(&["a"]));
        both.put_slice(&cairn_batch(&["b", "c"]));
        let kafka = to_kafka(&both).unwrap();
        assert_eq!(kafka.len(), both.len() - 8);
        assert!(to_kafka(&both[..both.len() - 1]).is_err());
    }

    #[test]
    fn bad_kafka_batches_are_refused_by_name() {
        let kafka = to_kafka(&cairn_batch(&["a"])).unwrap();
        assert!(matches!(
            from_kafka(&kafka[..40]),
            Err(ApiError::CorruptBatch { .. })
        ));
        let mut old_magic = kafka.to_vec();
        old_magic[KAFKA_MAGIC_AT] = 1;
        assert!(matches!(
            from_kafka(&old_magic),
            Err(ApiError::CorruptBatch { .. })
        ));
        let mut two = kafka.to_vec();
        two.extend_from_slice(&kafka);
        assert!(matches!(
            from_kafka(&two),
            Err(ApiError::InvalidRecords { .. })
        ));
        // A flipped record byte passes the framing and is caught by the checksum.
        let mut flipped = kafka.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(RecordBatch::validate(from_kafka(&flipped).unwrap()).is_err());
    }
}
