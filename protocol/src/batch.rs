//! The record batch: the unit in which records are produced, replicated, stored and fetched.
//!
//! The layout follows Kafka's v2 record batch closely, big-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset         stamped by the leader
//!      8     4  batch_length        bytes after this field
//!     12     8  leader_epoch        stamped by the leader
//!     20     1  magic               FORMAT_MAGIC
//!     21     4  crc                 CRC32C of bytes 25..end
//!     25     2  attributes          ATTRIBUTE_CONTROL marks a leader's epoch marker; no
//!                                   other bit is supported (see ATTRIBUTES_SUPPORTED)
//!     27     4  last_offset_delta   record_count - 1
//!     31     8  first_timestamp     ms since the Unix epoch
//!     39     8  max_timestamp
//!     47     8  producer_id         -1 without idempotence
//!     55     2  producer_epoch
//!     57     4  base_sequence       -1 without idempotence
//!     61     4  record_count
//!     65     …  records
//! ```
//!
//! Each record is Kafka's: `length, attributes u8, timestamp_delta, offset_delta, key_length
//! (-1 = no key), key, value_length, value, header_count, headers (key_length, key,
//! value_length (-1 = none), value)`, every number a zigzag varint as in Kafka (a count or
//! length read as negative is malformed).
//!
//! [`RecordBatch::validate`] holds every batch to the format's own rules before anything
//! stores, replicates or serves it: record `i` has offset delta `i` (so a record's offset is its
//! position, as consumers and group commits assume), `last_offset_delta = record_count - 1`, no
//! record timestamp overflows and `max_timestamp` is the largest of them, and the attributes
//! carry no bit Cairn does not implement. Kafka's transactional flag (bit 4) and compression
//! codecs it does not define (5-7 in bits 0-2) are refused by name. Control batches are valid
//! here (a new leader writes one); only a client may not send one, which the broker's produce
//! path checks.
//!
//! A compressed batch (codec 1-4 in bits 0-2, see [`crate::compression`]) has the same header;
//! the bytes after it are its records compressed as one block. It is stored and served as the
//! producer sent it, and the checksum covers the compressed bytes. Validating it decompresses
//! the records (bounded: a batch whose records decompress past the bound is refused) and holds
//! them to the same rules; reading its records decompresses them again.
//!
//! The checksum leaves out base offset and leader epoch, so the leader stamps a batch in place
//! without hashing it again, and the same checksum is verified by the leader on produce, by
//! storage on write and on read, by followers and by consumers.

use crate::compression::{Compression, DecompressError, DECOMPRESSED_BYTES_CEILING};
use crate::ids::{Epoch, Offset};
use crate::varint;
use bytes::{Bytes, BytesMut};

pub const FORMAT_MAGIC: u8 = 2;
pub const HEADER_BYTES: usize = 65;
/// Bytes before `batch_length`'s span begins: base offset and the length itself.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// A control batch carries no user records; a new leader's epoch marker is one.
pub const ATTRIBUTE_CONTROL: u16 = 0x20;
/// Kafka's compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd; 5-7 are undefined).
pub const ATTRIBUTE_COMPRESSION_MASK: u16 = 0x07;
/// Kafka's transactional flag. Cairn has no transactions.
pub const ATTRIBUTE_TRANSACTIONAL: u16 = 0x10;
/// The attribute bits a valid batch may carry: anything else is refused, not ignored.
pub const ATTRIBUTES_SUPPORTED: u16 = ATTRIBUTE_CONTROL | ATTRIBUTE_COMPRESSION_MASK;
/// The smallest encoded record: length, attributes, timestamp delta, offset delta, key length,
/// value length and header count, one byte each. A batch cannot hold more records than its
/// bytes divided by this.
pub const RECORD_BYTES_MIN: usize = 7;
/// The smallest encoded header: key length and value length, one byte each. A record cannot
/// hold more headers than its remaining bytes divided by this.
pub const HEADER_BYTES_MIN: usize = 2;
/// Headers a record's vector is sized for before any is read. A header count is a claim of
/// the sender: sizing the vector by it would let a 1 MiB record that holds no header make the
/// reader allocate 28 MiB (a `Header` is 56 bytes) before the first header fails to parse.
const HEADERS_PREALLOCATED_MAX: usize = 16;
/// The key of a control record: version 0 (i16), type 2 (i16, Kafka's LEADER_CHANGE).
pub const CONTROL_KEY_LEADER_CHANGE: [u8; 4] = [0, 0, 0, 2];
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_SEQUENCE: i32 = -1;

const CRC_OFFSET: usize = 21;
const CRC_COVERS_FROM: usize = 25;

/// Why bytes are not a valid batch. Every path that reads untrusted bytes returns this instead
/// of panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error(
        "batch is {available} bytes, shorter than its {needed}-byte header or declared length"
    )]
    Truncated { needed: usize, available: usize },
    #[error("batch declares {declared} bytes but {actual} were given")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("unknown batch format magic {0}")]
    BadMagic(u8),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: u32, reason: &'static str },
    #[error("batch declares {declared} records but holds {actual}")]
    /// `actual` is wider than a count: a header's `last_offset_delta + 1` reaches 2^32.
    CountMismatch { declared: u32, actual: u64 },
    #[error("batch holds no records")]
    Empty,
    #[error("batch ends at offset {end}, above the largest offset {max}", max = Offset::MAX.0)]
    OffsetOutOfRange { end: u128 },
    #[error(
        "batch declares {declared} records, more than its {bytes} record bytes can hold \
         ({RECORD_BYTES_MIN} bytes at least per record)"
    )]
    CountExceedsBytes { declared: u32, bytes: usize },
    #[error("record {index} has offset delta {found}: record i must have offset delta i")]
    OffsetDeltaMismatch { index: u32, found: u64 },
    #[error("record {index}'s timestamp delta {delta} overflows the first timestamp {first_ms}")]
    TimestampOverflow {
        index: u32,
        first_ms: i64,
        delta: i64,
    },
    #[error("batch declares max timestamp {declared_ms}, its records' largest is {actual_ms}")]
    MaxTimestampMismatch { declared_ms: i64, actual_ms: i64 },
    /// Attribute bits 0-2 hold a value Kafka defines no codec for (5-7).
    #[error("batch is compressed with codec {codec}, which is not one of Kafka's (1-4)")]
    Compressed { codec: u8 },
    /// The records of a compressed batch could not be decompressed, or decompress past the
    /// bound the reader set.
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error("batch is transactional; Cairn does not support transactions")]
    Transactional,
    #[error("batch has attribute bits {bits:#06x} that Cairn does not know")]
    UnknownAttributes { bits: u16 },
}

/// A record as a producer hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    /// `None` is a tombstone: on a compacted topic it deletes the key (Kafka encodes it as
    /// value length -1).
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; the producer fills in "now" when absent.
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

impl Record {
    pub fn new(value: impl Into<Bytes>) -> Self {
        Record {
            value: Some(value.into()),
            ..Record::default()
        }
    }

    /// A record with a null value: on a compacted topic it deletes `key`.
    pub fn tombstone(key: impl Into<Bytes>) -> Self {
        Record {
            key: Some(key.into()),
            ..Record::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Encoded size of one record's body (everything after its length varint).
fn record_body_bytes(record: &Record, timestamp_delta: i64, offset_delta: u32) -> usize {
    let key_bytes = match &record.key {
        Some(key) => varint::len_i64(key.len() as i64) + key.len(),
        None => varint::len_i64(-1),
    };
    let header_bytes: usize = record
        .headers
        .iter()
        .map(|header| {
            varint::len_i64(header.key.len() as i64)
                + header.key.len()
                + match &header.value {
                    Some(value) => varint::len_i64(value.len() as i64) + value.len(),
                    None => varint::len_i64(-1),
                }
        })
        .sum();
    1 + varint::len_i64(timestamp_delta)
        + varint::len_i64(i64::from(offset_delta))
        + key_bytes
        + match &record.value {
            Some(value) => varint::len_i64(value.len() as i64) + value.len(),
            None => varint::len_i64(-1),
        }
        + varint::len_i64(record.headers.len() as i64)
        + header_bytes
}

/// Upper bound of the bytes one record adds to a batch, for producers sizing batches and
/// brokers checking `record_bytes_max` before any state changes.
pub fn record_encoded_bytes(record: &Record) -> usize {
    // Worst-case varints for the deltas keep this a bound whatever batch the record joins.
    let body = record_body_bytes(record, i64::MAX, u32::MAX);
    varint::len_i64(body as i64) + body
}

/// Builds one batch from records. Base offset and epoch are left 0 for the leader to stamp.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    buf: Vec<u8>,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    attributes: u16,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl RecordBatchBuilder {
    /// A builder whose records without a timestamp get `default_timestamp_ms`.
    pub fn new(default_timestamp_ms: i64) -> Self {
        let mut buf = Vec::with_capacity(16 * 1024);
        buf.resize(HEADER_BYTES, 0);
        RecordBatchBuilder {
            buf,
            record_count: 0,
            first_timestamp_ms: default_timestamp_ms,
            max_timestamp_ms: default_timestamp_ms,
            attributes: 0,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: 0,
            base_sequence: NO_SEQUENCE,
        }
    }

    /// Marks the batch as written by an idempotent producer.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Makes the batch a control batch (consumers skip it): for the node's own markers.
    pub fn control(mut self) -> Self {
        self.attributes |= ATTRIBUTE_CONTROL;
        self
    }

    /// A control batch holding one marker record (written by a new leader for its epoch).
    /// Its key is a Kafka control record key (version 0, type 2: Kafka's LEADER_CHANGE),
    /// which Kafka clients read to decide whether to skip the record (librdkafka refuses a
    /// control record without one as a bad message).
    pub fn control_marker(timestamp_ms: i64) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(timestamp_ms);
        builder.attributes = ATTRIBUTE_CONTROL;
        builder.push(
            &Record::new(Bytes::from_static(b"epoch-marker"))
                .with_key(Bytes::from_static(&CONTROL_KEY_LEADER_CHANGE)),
        );
        builder.build()
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the batch would have if built now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record. Records pushed in order get consecutive offsets.
    pub fn push(&mut self, record: &Record) {
        let timestamp_ms = record.timestamp_ms.unwrap_or(self.first_timestamp_ms);
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
            self.max_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let offset_delta = self.record_count;
        let body = record_body_bytes(record, timestamp_delta, offset_delta);
        let buf = &mut self.buf;
        buf.reserve(body + 10);
        varint::put_i64(buf, body as i64);
        buf.push(0);
        varint::put_i64(buf, timestamp_delta);
        varint::put_i64(buf, i64::from(offset_delta));
        match &record.key {
            Some(key) => {
                varint::put_i64(buf, key.len() as i64);
                buf.extend_from_slice(key);
            }
            None => varint::put_i64(buf, -1),
        }
        match &record.value {
            Some(value) => {
                varint::put_i64(buf, value.len() as i64);
                buf.extend_from_slice(value);
            }
            None => varint::put_i64(buf, -1),
        }
        varint::put_i64(buf, record.headers.len() as i64);
        for header in &record.headers {
            varint::put_i64(buf, header.key.len() as i64);
            buf.extend_from_slice(header.key.as_bytes());
            match &header.value {
                Some(value) => {
                    varint::put_i64(buf, value.len() as i64);
                    buf.extend_from_slice(value);
                }
                None => varint::put_i64(buf, -1),
            }
        }
        self.record_count += 1;
    }

    /// Writes the header and checksum, with the records compressed by `compression`. Records
    /// that would not get smaller are sent uncompressed (the batch stays readable by everyone
    /// and never grows past the size the producer sized it by). Panics on an empty builder.
    pub fn build_compressed(mut self, compression: Compression) -> RecordBatch {
        if compression != Compression::None && self.record_count > 0 {
            let compressed = compression.compress(&self.buf[HEADER_BYTES..]);
            if compressed.len() < self.buf.len() - HEADER_BYTES {
                self.buf.truncate(HEADER_BYTES);
                self.buf.extend_from_slice(&compressed);
                self.attributes |= u16::from(compression.codec());
            }
        }
        self.build()
    }

    /// Writes the header and checksum. Panics on an empty builder: that is a caller bug.
    pub fn build(mut self) -> RecordBatch {
        assert!(
            self.record_count > 0,
            "a record batch needs at least one record"
        );
        let batch_length = (self.buf.len() - LOG_OVERHEAD_BYTES) as u32;
        let buf = &mut self.buf;
        buf[0..8].copy_from_slice(&0u64.to_be_bytes());
        buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
        buf[12..20].copy_from_slice(&0u64.to_be_bytes());
        buf[20] = FORMAT_MAGIC;
        buf[25..27].copy_from_slice(&self.attributes.to_be_bytes());
        buf[27..31].copy_from_slice(&(self.record_count - 1).to_be_bytes());
        buf[31..39].copy_from_slice(&self.first_timestamp_ms.to_be_bytes());
        buf[39..47].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        buf[47..55].copy_from_slice(&self.producer_id.to_be_bytes());
        buf[55..57].copy_from_slice(&self.producer_epoch.to_be_bytes());
        buf[57..61].copy_from_slice(&self.base_sequence.to_be_bytes());
        buf[61..65].copy_from_slice(&self.record_count.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_COVERS_FROM..]);
        buf[CRC_OFFSET..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
        let header = BatchHeader::parse(buf).expect("a freshly built batch parses");
        RecordBatch {
            header,
            bytes: Bytes::from(self.buf),
            checksum_verified: true,
        }
    }
}

/// The fixed-size front of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub batch_length: u32,
    pub leader_epoch: Epoch,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Reads the header of the batch at the front of `bytes` (which may hold more batches).
    /// Checks only that the header is present; see [`RecordBatch::validate`].
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        }
        let header = BatchHeader {
            base_offset: Offset(be_u64(bytes, 0)),
            batch_length: be_u32(bytes, 8),
            leader_epoch: Epoch(be_u64(bytes, 12)),
            magic: bytes[20],
            crc: be_u32(bytes, 21),
            attributes: u16::from_be_bytes([bytes[25], bytes[26]]),
            last_offset_delta: be_u32(bytes, 27),
            first_timestamp_ms: be_u64(bytes, 31) as i64,
            max_timestamp_ms: be_u64(bytes, 39) as i64,
            producer_id: be_u64(bytes, 47) as i64,
            producer_epoch: i16::from_be_bytes([bytes[55], bytes[56]]),
            base_sequence: be_u32(bytes, 57) as i32,
            record_count: be_u32(bytes, 61),
        };
        if header.magic != FORMAT_MAGIC {
            return Err(BatchError::BadMagic(header.magic));
        }
        if (header.batch_length as usize) < HEADER_BYTES - LOG_OVERHEAD_BYTES {
            return Err(BatchError::LengthMismatch {
                declared: header.size_bytes(),
                actual: bytes.len(),
            });
        }
        Ok(header)
    }

    /// Total bytes of this batch, header included.
    pub fn size_bytes(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }

    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.last_offset_delta))
    }

    /// The offset right after this batch: the log end once it is appended.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// The codec of the batch's records; an undefined one (5-7) is refused by name.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        let codec = (self.attributes & ATTRIBUTE_COMPRESSION_MASK) as u8;
        Compression::from_codec(codec).ok_or(BatchError::Compressed { codec })
    }

    /// Written by an idempotent producer: a producer id and a sequence are stamped.
    pub fn has_producer(&self) -> bool {
        self.producer_id >= 0 && self.base_sequence >= 0
    }

    /// Sequence of the batch's last record. Sequences wrap from `i32::MAX` to 0, as Kafka's.
    pub fn last_sequence(&self) -> i32 {
        sequence_after(self.base_sequence, self.last_offset_delta)
    }
}

/// The sequence `count` records after `sequence`, wrapping from `i32::MAX` to 0.
pub fn sequence_after(sequence: i32, count: u32) -> i32 {
    ((i64::from(sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Refuses attribute bits Cairn does not implement, naming the two a Kafka client sets.
fn check_attributes(attributes: u16) -> Result<(), BatchError> {
    let codec = (attributes & ATTRIBUTE_COMPRESSION_MASK) as u8;
    if Compression::from_codec(codec).is_none() {
        return Err(BatchError::Compressed { codec });
    }
    if attributes & ATTRIBUTE_TRANSACTIONAL != 0 {
        return Err(BatchError::Transactional);
    }
    let unknown = attributes & !ATTRIBUTES_SUPPORTED;
    if unknown != 0 {
        return Err(BatchError::UnknownAttributes { bits: unknown });
    }
    Ok(())
}

/// Whether a batch must hold a record at every offset it spans (as produced) or may have gaps
/// (as compaction leaves it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Density {
    Dense,
    Gaps,
}

/// An encoded batch: its bytes and its parsed header. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    header: BatchHeader,
    bytes: Bytes,
    /// This process computed or verified the checksum over these very bytes (they are
    /// immutable): [`RecordBatch::validate`] and the builder set it, a stamped copy keeps it,
    /// [`RecordBatch::from_trusted`] does not. A store may then skip verifying it again on
    /// append: a produced batch's checksum was computed twice on its way to the disk, 1% of
    /// a node's CPU at 65,000 records/s.
    checksum_verified: bool,
}

/// Batches are equal when their bytes are (the header is parsed from them); how they were
/// checked does not matter.
impl PartialEq for RecordBatch {
    fn eq(&self, other: &RecordBatch) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for RecordBatch {}

impl RecordBatch {
    /// Takes ownership of exactly one batch's bytes, verifying length, checksum and every
    /// record's framing. Nothing that fails here may be stored or served. A compressed
    /// batch's records are decompressed under [`DECOMPRESSED_BYTES_CEILING`], the bound every
    /// reader uses (followers, consumers); a leader validates a produce under its own, lower,
    /// bound with [`RecordBatch::validate_bounded`].
    pub fn validate(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        RecordBatch::validate_bounded(bytes, DECOMPRESSED_BYTES_CEILING)
    }

    /// [`RecordBatch::validate`], refusing a compressed batch whose records decompress to
    /// more than `decompressed_bytes_max` bytes (without allocating more than that).
    pub fn validate_bounded(
        bytes: Bytes,
        decompressed_bytes_max: usize,
    ) -> Result<RecordBatch, BatchError> {
        RecordBatch::validate_checked(bytes, decompressed_bytes_max, Density::Dense)
    }

    /// A batch as a log holds it, which compaction may have thinned: like
    /// [`RecordBatch::validate`], except that records may leave gaps (each offset above the
    /// one before, none past the header's last offset) and a batch may hold no record at all
    /// (compaction keeps an emptied batch's header so offsets and producer state stay). This
    /// is what followers, consumers and readers of a stored log check; a produced batch must
    /// pass the dense [`RecordBatch::validate`].
    pub fn validate_from_log(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        RecordBatch::validate_from_log_bounded(bytes, DECOMPRESSED_BYTES_CEILING)
    }

    /// [`RecordBatch::validate_from_log`] under a caller's bound on decompressed records.
    pub fn validate_from_log_bounded(
        bytes: Bytes,
        decompressed_bytes_max: usize,
    ) -> Result<RecordBatch, BatchError> {
        RecordBatch::validate_checked(bytes, decompressed_bytes_max, Density::Gaps)
    }

    /// True when the batch holds a record at every offset from its base to its last offset,
    /// as every produced batch does and a compacted one may not.
    pub fn is_dense(&self) -> bool {
        self.header.record_count != 0
            && self.header.last_offset_delta == self.header.record_count - 1
    }

    fn validate_checked(
        bytes: Bytes,
        decompressed_bytes_max: usize,
        density: Density,
    ) -> Result<RecordBatch, BatchError> {
        let header = BatchHeader::parse(&bytes)?;
        if header.size_bytes() != bytes.len() {
            return Err(BatchError::LengthMismatch {
                declared: header.size_bytes(),
                actual: bytes.len(),
            });
        }
        let mut batch = RecordBatch {
            header,
            bytes,
            checksum_verified: false,
        };
        batch.verify_checksum()?;
        batch.checksum_verified = true;
        check_attributes(header.attributes)?;
        let span = u64::from(header.last_offset_delta) + 1;
        match density {
            Density::Dense => {
                if header.record_count == 0 {
                    return Err(BatchError::Empty);
                }
                if header.last_offset_delta != header.record_count - 1 {
                    return Err(BatchError::CountMismatch {
                        declared: header.record_count,
                        actual: span,
                    });
                }
            }
            Density::Gaps => {
                if u64::from(header.record_count) > span {
                    return Err(BatchError::CountMismatch {
                        declared: header.record_count,
                        actual: span,
                    });
                }
            }
        }
        // An uncompressed batch's count is held to its stored bytes here, before any record
        // is walked; a compressed one's to its decompressed records below.
        let stored_record_bytes = batch.bytes.len() - HEADER_BYTES;
        let compression = header.compression()?;
        if compression == Compression::None
            && header.record_count as usize > stored_record_bytes / RECORD_BYTES_MIN
        {
            return Err(BatchError::CountExceedsBytes {
                declared: header.record_count,
                bytes: stored_record_bytes,
            });
        }
        // Offsets past `Offset::MAX` (a forged or corrupt base offset) would make the log's
        // arithmetic overflow; such a batch is refused before anything computes with it.
        let end = u128::from(header.base_offset.0) + u128::from(span);
        if end > u128::from(Offset::MAX.0) {
            return Err(BatchError::OffsetOutOfRange { end });
        }
        if header.record_count == 0 {
            // An emptied batch: nothing to decompress, and no byte may hide behind its header.
            if stored_record_bytes != 0 {
                return Err(BatchError::CountMismatch {
                    declared: 0,
                    actual: stored_record_bytes as u64,
                });
            }
            return Ok(batch);
        }
        let records = batch.record_bytes(decompressed_bytes_max)?;
        if header.record_count as usize > records.len() / RECORD_BYTES_MIN {
            return Err(BatchError::CountExceedsBytes {
                declared: header.record_count,
                bytes: records.len(),
            });
        }
        // Consumers and group commits take a record's offset from its delta: in a dense batch
        // record `i` must be at `base + i`, or a consumer reads offset 1004 for the record at 4
        // and commits past records it never read; in a compacted one each delta must rise and
        // stay within the batch.
        let mut actual = 0u32;
        let mut previous: Option<u64> = None;
        let mut max_timestamp_ms = i64::MIN;
        for record in RecordIter::new(header, Ok(records)) {
            let record = record?;
            let found = record.offset.0 - header.base_offset.0;
            let in_place = match density {
                Density::Dense => found == u64::from(actual),
                Density::Gaps => {
                    previous.is_none_or(|previous| found > previous)
                        && found <= u64::from(header.last_offset_delta)
                }
            };
            if !in_place {
                return Err(BatchError::OffsetDeltaMismatch {
                    index: actual,
                    found,
                });
            }
            previous = Some(found);
            max_timestamp_ms = max_timestamp_ms.max(record.timestamp_ms);
            actual += 1;
        }
        if actual != header.record_count {
            return Err(BatchError::CountMismatch {
                declared: header.record_count,
                actual: u64::from(actual),
            });
        }
        // Compaction keeps the header's max timestamp (the time index and retention were
        // computed from it), so a thinned batch's records may all be older than it.
        let timestamp_agrees = if batch.is_dense() {
            max_timestamp_ms == header.max_timestamp_ms
        } else {
            max_timestamp_ms <= header.max_timestamp_ms
        };
        if !timestamp_agrees {
            return Err(BatchError::MaxTimestampMismatch {
                declared_ms: header.max_timestamp_ms,
                actual_ms: max_timestamp_ms,
            });
        }
        Ok(batch)
    }

    /// Wraps bytes already validated by this process (e.g. just built). Checks only the header.
    pub fn from_trusted(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        let header = BatchHeader::parse(&bytes)?;
        if header.size_bytes() != bytes.len() {
            return Err(BatchError::LengthMismatch {
                declared: header.size_bytes(),
                actual: bytes.len(),
            });
        }
        Ok(RecordBatch {
            header,
            bytes,
            checksum_verified: false,
        })
    }

    /// Recomputes the checksum and compares it with the stored one.
    pub fn verify_checksum(&self) -> Result<(), BatchError> {
        let computed = crc32c::crc32c(&self.bytes[CRC_COVERS_FROM..]);
        if computed != self.header.crc {
            return Err(BatchError::ChecksumMismatch {
                stored: self.header.crc,
                computed,
            });
        }
        Ok(())
    }

    /// [`RecordBatch::verify_checksum`], unless this process already computed or verified
    /// the checksum over these bytes.
    pub fn verify_checksum_once(&self) -> Result<(), BatchError> {
        if self.checksum_verified {
            return Ok(());
        }
        self.verify_checksum()
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub fn base_offset(&self) -> Offset {
        self.header.base_offset
    }

    pub fn next_offset(&self) -> Offset {
        self.header.next_offset()
    }

    pub fn leader_epoch(&self) -> Epoch {
        self.header.leader_epoch
    }

    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// A copy with base offset and leader epoch set. The checksum stays valid.
    pub fn stamped(&self, base_offset: Offset, leader_epoch: Epoch) -> RecordBatch {
        // The clone shares the bytes, so `into_stamped` copies them.
        self.clone().into_stamped(base_offset, leader_epoch)
    }

    /// [`RecordBatch::stamped`], in place when this is the only handle on its bytes (as for a
    /// batch just decoded from a produce request), else on a copy. Base offset and leader
    /// epoch are outside the checksum, so whether it was verified carries over.
    pub fn into_stamped(self, base_offset: Offset, leader_epoch: Epoch) -> RecordBatch {
        let mut bytes = self
            .bytes
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        bytes[0..8].copy_from_slice(&base_offset.0.to_be_bytes());
        bytes[12..20].copy_from_slice(&leader_epoch.0.to_be_bytes());
        let mut header = self.header;
        header.base_offset = base_offset;
        header.leader_epoch = leader_epoch;
        RecordBatch {
            header,
            bytes: bytes.freeze(),
            checksum_verified: self.checksum_verified,
        }
    }

    /// A copy stamped with an idempotent producer's id, epoch and first sequence. These fields
    /// are inside the checksum (a replica relies on them to drop duplicates), so the checksum
    /// is computed again: a client stamps a batch once, when it is first sent.
    pub fn with_producer(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> RecordBatch {
        let mut bytes = BytesMut::from(&self.bytes[..]);
        bytes[47..55].copy_from_slice(&producer_id.to_be_bytes());
        bytes[55..57].copy_from_slice(&producer_epoch.to_be_bytes());
        bytes[57..61].copy_from_slice(&base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
        bytes[CRC_OFFSET..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
        let mut header = self.header;
        header.producer_id = producer_id;
        header.producer_epoch = producer_epoch;
        header.base_sequence = base_sequence;
        header.crc = crc;
        RecordBatch {
            header,
            bytes: bytes.freeze(),
            checksum_verified: true,
        }
    }

    /// The codec the batch's records are compressed with.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        self.header.compression()
    }

    /// The records' encoded bytes: a slice of the batch, or for a compressed batch its
    /// records decompressed (refused past `decompressed_bytes_max`).
    fn record_bytes(&self, decompressed_bytes_max: usize) -> Result<Bytes, BatchError> {
        let stored = self.bytes.slice(HEADER_BYTES..);
        if self.header.record_count == 0 {
            // An emptied batch (validation holds it to no stored byte) has nothing to
            // decompress, whatever codec its attributes still name.
            return Ok(stored);
        }
        match self.header.compression()? {
            Compression::None => Ok(stored),
            compression => Ok(Bytes::from(
                compression.decompress(&stored, decompressed_bytes_max)?,
            )),
        }
    }

    /// The batch with only the records `keep` accepts, as compaction rewrites it: base offset,
    /// last offset, epoch, timestamps and producer stamp stay, so offsets and producer state
    /// are unchanged and a consumer sees gaps; each kept record keeps its bytes (its deltas
    /// are relative to the unchanged base offset and first timestamp). A batch that keeps no
    /// record stays as its header alone. The old checksum is verified first and the new one
    /// computed. `Ok(None)` when every record is kept (nothing to rewrite). A compressed
    /// batch that keeps records is compressed again with its codec, even when that is not
    /// smaller: then the bytes depend only on the batch first written and the records kept,
    /// not on how many rewrites led there, so replicas that compacted in different steps
    /// (another decision first, a crash midway, other passes) hold the same bytes.
    pub fn retain(
        &self,
        mut keep: impl FnMut(&RecordView) -> bool,
    ) -> Result<Option<RecordBatch>, BatchError> {
        self.verify_checksum()?;
        let records = if self.header.record_count == 0 {
            Bytes::new()
        } else {
            self.record_bytes(DECOMPRESSED_BYTES_CEILING)?
        };
        let mut iter = RecordIter::new(self.header, Ok(records.clone()));
        let mut kept = Vec::with_capacity(records.len());
        let mut kept_count = 0u32;
        let mut dropped = false;
        loop {
            let start = iter.position;
            let Some(record) = iter.next() else {
                break;
            };
            let record = record?;
            if keep(&record) {
                kept.extend_from_slice(&records[start..iter.position]);
                kept_count += 1;
            } else {
                dropped = true;
            }
        }
        if !dropped {
            return Ok(None);
        }
        let mut attributes = self.header.attributes & !ATTRIBUTE_COMPRESSION_MASK;
        let compression = self.header.compression()?;
        if compression != Compression::None && !kept.is_empty() {
            kept = compression.compress(&kept);
            attributes |= u16::from(compression.codec());
        }
        let mut bytes = BytesMut::with_capacity(HEADER_BYTES + kept.len());
        bytes.extend_from_slice(&self.bytes[..HEADER_BYTES]);
        bytes.extend_from_slice(&kept);
        let batch_length = (bytes.len() - LOG_OVERHEAD_BYTES) as u32;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        bytes[25..27].copy_from_slice(&attributes.to_be_bytes());
        bytes[61..65].copy_from_slice(&kept_count.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
        bytes[CRC_OFFSET..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
        let bytes = bytes.freeze();
        let header = BatchHeader::parse(&bytes)?;
        Ok(Some(RecordBatch {
            header,
            bytes,
            // Computed just above, over these bytes.
            checksum_verified: true,
        }))
    }

    /// Decodes the records, each sharing the batch's bytes (or, for a compressed batch, its
    /// decompressed records, bounded by [`DECOMPRESSED_BYTES_CEILING`]: a batch that does not
    /// decompress yields one error).
    pub fn records(&self) -> RecordIter {
        self.records_bounded(DECOMPRESSED_BYTES_CEILING)
    }

    /// [`RecordBatch::records`] with a caller's bound on the decompressed records.
    pub fn records_bounded(&self, decompressed_bytes_max: usize) -> RecordIter {
        RecordIter::new(self.header, self.record_bytes(decompressed_bytes_max))
    }
}

/// One decoded record, its offset and timestamp resolved against its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub offset: Offset,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    /// `None` is a tombstone (Kafka's value length -1).
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// The records of one batch, decoded one by one from its (decompressed) record bytes.
pub struct RecordIter {
    header: BatchHeader,
    data: Bytes,
    position: usize,
    index: u32,
    /// Why the records could not be had at all (decompression failed): yielded once.
    error: Option<BatchError>,
}

impl RecordIter {
    fn new(header: BatchHeader, records: Result<Bytes, BatchError>) -> RecordIter {
        match records {
            Ok(data) => RecordIter {
                header,
                data,
                position: 0,
                index: 0,
                error: None,
            },
            Err(error) => RecordIter {
                header,
                data: Bytes::new(),
                position: 0,
                index: u32::MAX,
                error: Some(error),
            },
        }
    }

    fn bad(&mut self, reason: &'static str) -> Option<Result<RecordView, BatchError>> {
        let index = self.index;
        self.refuse(BatchError::BadRecord { index, reason })
    }

    fn refuse(&mut self, error: BatchError) -> Option<Result<RecordView, BatchError>> {
        // Stop iterating: nothing after a malformed record can be trusted.
        self.position = self.data.len();
        self.index = u32::MAX;
        Some(Err(error))
    }
}

fn take<'a>(input: &mut &'a [u8], length: usize) -> Option<&'a [u8]> {
    if input.len() < length {
        return None;
    }
    let (head, tail) = input.split_at(length);
    *input = tail;
    Some(head)
}

fn take_optional<'a>(input: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    match varint::get_i64(input)? {
        -1 => Some(None),
        length if length >= 0 => take(input, length as usize).map(Some),
        _ => None,
    }
}

impl Iterator for RecordIter {
    type Item = Result<RecordView, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.error.take() {
            return Some(Err(error));
        }
        if self.position >= self.data.len() || self.index == u32::MAX {
            return None;
        }
        let data = self.data.clone();
        let slice = |input: &[u8]| data.slice_ref(input);
        let mut input = &data[self.position..];
        let Some(length) = varint::get_length(&mut input) else {
            return self.bad("record length");
        };
        let Some(mut body) = take(&mut input, length as usize) else {
            return self.bad("record shorter than its length");
        };
        self.position = data.len() - input.len();
        let Some(_attributes) = take(&mut body, 1) else {
            return self.bad("attributes");
        };
        let Some(timestamp_delta) = varint::get_i64(&mut body) else {
            return self.bad("timestamp delta");
        };
        let Some(offset_delta) = varint::get_length(&mut body) else {
            return self.bad("offset delta");
        };
        let Some(key) = take_optional(&mut body) else {
            return self.bad("key");
        };
        let Some(value) = take_optional(&mut body) else {
            return self.bad("value");
        };
        let Some(header_count) = varint::get_length(&mut body) else {
            return self.bad("header count");
        };
        if header_count > (body.len() / HEADER_BYTES_MIN) as u64 {
            return self.bad("header count exceeds record");
        }
        let mut headers = Vec::with_capacity((header_count as usize).min(HEADERS_PREALLOCATED_MAX));
        for _ in 0..header_count {
            let Some(key_length) = varint::get_length(&mut body) else {
                return self.bad("header key length");
            };
            let Some(key) = take(&mut body, key_length as usize) else {
                return self.bad("header key");
            };
            let Ok(key) = std::str::from_utf8(key) else {
                return self.bad("header key is not UTF-8");
            };
            let Some(value) = take_optional(&mut body) else {
                return self.bad("header value");
            };
            headers.push(Header {
                key: key.to_owned(),
                value: value.map(slice),
            });
        }
        if !body.is_empty() {
            return self.bad("trailing bytes in record");
        }
        let header = &self.header;
        // Both come from the wire: a forged delta must not overflow (which would panic in
        // `Offset::plus` or wrap a timestamp) on any path that reads records.
        let Some(offset) = header.base_offset.checked_plus(offset_delta) else {
            return self.refuse(BatchError::OffsetDeltaMismatch {
                index: self.index,
                found: offset_delta,
            });
        };
        let Some(timestamp_ms) = header.first_timestamp_ms.checked_add(timestamp_delta) else {
            return self.refuse(BatchError::TimestampOverflow {
                index: self.index,
                first_ms: header.first_timestamp_ms,
                delta: timestamp_delta,
            });
        };
        let view = RecordView {
            offset,
            timestamp_ms,
            key: key.map(slice),
            value: value.map(slice),
            headers,
        };
        self.index += 1;
        Some(Ok(view))
    }
}

/// Splits concatenated batches (a fetch response's payload) and validates each one as a log
/// holds it ([`RecordBatch::validate_from_log`]: a compacted batch may leave gaps), a
/// compressed one's records under [`DECOMPRESSED_BYTES_CEILING`].
pub fn split_batches(bytes: &Bytes) -> impl Iterator<Item = Result<RecordBatch, BatchError>> + '_ {
    split_batches_bounded(bytes, DECOMPRESSED_BYTES_CEILING)
}

/// [`split_batches`] with a caller's bound on each batch's decompressed records.
pub fn split_batches_bounded(
    bytes: &Bytes,
    decompressed_bytes_max: usize,
) -> impl Iterator<Item = Result<RecordBatch, BatchError>> + '_ {
    let mut position = 0usize;
    std::iter::from_fn(move || {
        if position >= bytes.len() {
            return None;
        }
        let rest = &bytes[position..];
        let result = BatchHeader::parse(rest).and_then(|header| {
            if header.size_bytes() > rest.len() {
                return Err(BatchError::Truncated {
                    needed: header.size_bytes(),
                    available: rest.len(),
                });
            }
            RecordBatch::validate_from_log_bounded(
                bytes.slice(position..position + header.size_bytes()),
                decompressed_bytes_max,
            )
        });
        match &result {
            Ok(batch) => position += batch.size_bytes(),
            Err(_) => position = bytes.len(),
        }
        Some(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_ending_past_the_largest_offset_is_refused() {
        let last_allowed = sample().stamped(Offset(Offset::MAX.0 - 2), Epoch(1));
        let count = u64::from(last_allowed.record_count());
        let fits = sample().stamped(Offset(Offset::MAX.0 - count), Epoch(1));
        assert!(RecordBatch::validate(fits.into_bytes()).is_ok());
        for base in [Offset::MAX.0 - count + 1, u64::MAX - 1, u64::MAX] {
            let forged = sample().stamped(Offset(base), Epoch(1));
            assert!(
                matches!(
                    RecordBatch::validate(forged.into_bytes()),
                    Err(BatchError::OffsetOutOfRange { .. })
                ),
                "base {base}"
            );
        }
    }

    fn sample() -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        builder.push(
            &Record::new("v0")
                .with_key("k0")
                .with_header("trace", "abc")
                .with_timestamp_ms(1_700_000_000_005),
        );
        builder.push(&Record::new("v1"));
        builder.push(&Record::new(Bytes::new()).with_key(""));
        builder.build()
    }

    #[test]
    fn round_trips_records_with_offsets_and_timestamps() {
        let batch = sample().stamped(Offset(40), Epoch(3));
        let batch = RecordBatch::validate(batch.bytes().clone()).unwrap();
        assert_eq!(batch.base_offset(), Offset(40));
        assert_eq!(batch.next_offset(), Offset(43));
        assert_eq!(batch.leader_epoch(), Epoch(3));
        let records: Vec<_> = batch.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset, Offset(40));
        assert_eq!(records[0].key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(records[0].value.as_deref(), Some(&b"v0"[..]));
        assert_eq!(records[0].timestamp_ms, 1_700_000_000_005);
        assert_eq!(records[0].headers[0].key, "trace");
        assert_eq!(records[1].key, None);
        assert_eq!(
            records[1].timestamp_ms, 1_700_000_000_005,
            "default is the first"
        );
        assert_eq!(records[2].offset, Offset(42));
        assert_eq!(records[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(batch.header().max_timestamp_ms, 1_700_000_000_005);
    }

    #[test]
    fn stamping_keeps_the_checksum_valid() {
        let batch = sample();
        let stamped = batch.stamped(Offset(1 << 40), Epoch(9));
        assert_eq!(stamped.header().crc, batch.header().crc);
        stamped.verify_checksum().unwrap();
    }

    /// In place when the batch's bytes are its own; on a copy, leaving the other handle's
    /// bytes as they were, when they are shared.
    #[test]
    fn stamping_in_place_takes_unique_bytes_and_copies_shared_ones() {
        let unique = RecordBatch::validate(Bytes::from(sample().bytes().to_vec())).unwrap();
        let address = unique.bytes().as_ptr();
        let stamped = unique.into_stamped(Offset(7), Epoch(3));
        assert_eq!(stamped.bytes().as_ptr(), address, "not stamped in place");
        assert_eq!(stamped, sample().stamped(Offset(7), Epoch(3)));
        assert_eq!(
            (stamped.base_offset(), stamped.leader_epoch()),
            (Offset(7), Epoch(3))
        );
        stamped.verify_checksum().unwrap();

        let shared = sample();
        let other = shared.bytes().clone();
        let stamped = shared.into_stamped(Offset(8), Epoch(4));
        assert_ne!(stamped.bytes().as_ptr(), other.as_ptr());
        assert_eq!(other, sample().bytes());
        assert_eq!(stamped, sample().stamped(Offset(8), Epoch(4)));
    }

    #[test]
    fn every_flipped_byte_after_the_stamp_is_caught() {
        let batch = sample();
        for position in 20..batch.size_bytes() {
            let mut bytes = batch.bytes().to_vec();
            bytes[position] ^= 0x01;
            assert!(
                RecordBatch::validate(Bytes::from(bytes)).is_err(),
                "flip at byte {position} went unnoticed"
            );
        }
    }

    #[test]
    fn truncated_and_padded_batches_are_refused() {
        let bytes = sample().into_bytes();
        for cut in 0..bytes.len() {
            assert!(
                RecordBatch::validate(bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut padded = bytes.to_vec();
        padded.push(0);
        assert!(matches!(
            RecordBatch::validate(Bytes::from(padded)),
            Err(BatchError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn record_size_bound_covers_the_encoding() {
        let record = Record::new(vec![7u8; 1000])
            .with_key("key")
            .with_header("h", "v");
        let mut builder = RecordBatchBuilder::new(0);
        let before = builder.size_bytes();
        builder.push(&record);
        assert!(builder.size_bytes() - before <= record_encoded_bytes(&record));
    }

    #[test]
    fn producer_fields_are_checksummed_and_restamped_with_a_new_checksum() {
        let plain = sample();
        assert!(!plain.header().has_producer());
        let stamped = plain.with_producer(7, 2, i32::MAX - 1);
        let stamped = RecordBatch::validate(stamped.bytes().clone()).unwrap();
        let header = stamped.header();
        assert!(header.has_producer());
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (7, 2, i32::MAX - 1)
        );
        assert_ne!(header.crc, plain.header().crc);
        // Three records from MAX - 1: MAX - 1, MAX, 0.
        assert_eq!(header.last_sequence(), 0);
        assert_eq!(sequence_after(5, 3), 8);
        // Changing a producer field without the checksum is caught.
        let mut bytes = stamped.bytes().to_vec();
        bytes[60] ^= 1;
        assert!(matches!(
            RecordBatch::validate(Bytes::from(bytes)),
            Err(BatchError::ChecksumMismatch { .. })
        ));
        let built = {
            let mut builder = RecordBatchBuilder::new(1_700_000_000_000).producer(7, 2, 4);
            builder.push(&Record::new("v0"));
            builder.build()
        };
        let restamped = {
            let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
            builder.push(&Record::new("v0"));
            builder.build().with_producer(7, 2, 4)
        };
        assert_eq!(built.bytes(), restamped.bytes(), "same bytes either way");
    }

    /// One record's bytes with the given deltas (a value and no key or headers).
    fn raw_record(timestamp_delta: i64, offset_delta: u64, value: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8];
        varint::put_i64(&mut body, timestamp_delta);
        varint::put_i64(&mut body, offset_delta as i64);
        varint::put_i64(&mut body, -1);
        varint::put_i64(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        varint::put_i64(&mut body, 0);
        let mut record = Vec::new();
        varint::put_i64(&mut record, body.len() as i64);
        record.extend_from_slice(&body);
        record
    }

    /// The header fields a forger controls; `forge` writes them with a valid checksum, so
    /// only the rule under test can refuse the batch.
    struct Forged {
        attributes: u16,
        /// The records are compressed with it, and its codec set in the attributes.
        compression: Compression,
        last_offset_delta: u32,
        first_timestamp_ms: i64,
        max_timestamp_ms: i64,
        record_count: u32,
        records: Vec<Vec<u8>>,
    }

    /// `count` records numbered as a client must (deltas 0.., timestamps first + i).
    fn honest(count: u32) -> Forged {
        Forged {
            attributes: 0,
            compression: Compression::None,
            last_offset_delta: count - 1,
            first_timestamp_ms: 1_700_000_000_000,
            max_timestamp_ms: 1_700_000_000_000 + i64::from(count) - 1,
            record_count: count,
            records: (0..count)
                .map(|index| raw_record(i64::from(index), u64::from(index), b"v"))
                .collect(),
        }
    }

    fn forge(forged: &Forged, base_offset: u64) -> Bytes {
        let mut bytes = vec![0u8; HEADER_BYTES];
        let records: Vec<u8> = forged.records.concat();
        bytes.extend_from_slice(&forged.compression.compress(&records));
        let attributes = forged.attributes | u16::from(forged.compression.codec());
        let batch_length = (bytes.len() - LOG_OVERHEAD_BYTES) as u32;
        bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        bytes[20] = FORMAT_MAGIC;
        bytes[25..27].copy_from_slice(&attributes.to_be_bytes());
        bytes[27..31].copy_from_slice(&forged.last_offset_delta.to_be_bytes());
        bytes[31..39].copy_from_slice(&forged.first_timestamp_ms.to_be_bytes());
        bytes[39..47].copy_from_slice(&forged.max_timestamp_ms.to_be_bytes());
        bytes[47..55].copy_from_slice(&NO_PRODUCER_ID.to_be_bytes());
        bytes[57..61].copy_from_slice(&NO_SEQUENCE.to_be_bytes());
        bytes[61..65].copy_from_slice(&forged.record_count.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
        bytes[CRC_OFFSET..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(bytes)
    }

    #[test]
    fn an_honest_forged_batch_is_valid_so_each_rule_below_is_what_refuses() {
        let batch = RecordBatch::validate(forge(&honest(10), 0)).unwrap();
        let offsets: Vec<u64> = batch
            .records()
            .map(|record| record.unwrap().offset.0)
            .collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    }

    /// The issue's probe: the record at position 4 claimed offset delta 1004.
    #[test]
    fn a_record_whose_offset_delta_is_not_its_position_is_refused() {
        let mut forged = honest(10);
        forged.records[4] = raw_record(4, 1004, b"v");
        assert_eq!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::OffsetDeltaMismatch {
                index: 4,
                found: 1004
            })
        );
        // Deltas that start at 1, and a repeated delta, are refused as well.
        let mut shifted = honest(3);
        shifted.records = (0..3)
            .map(|index| raw_record(index, index as u64 + 1, b"v"))
            .collect();
        assert!(matches!(
            RecordBatch::validate(forge(&shifted, 0)),
            Err(BatchError::OffsetDeltaMismatch { index: 0, found: 1 })
        ));
        let mut repeated = honest(3);
        repeated.records[2] = raw_record(2, 1, b"v");
        assert!(matches!(
            RecordBatch::validate(forge(&repeated, 0)),
            Err(BatchError::OffsetDeltaMismatch { index: 2, found: 1 })
        ));
    }

    /// Before: `Offset::plus` panicked on base 1 + delta 2^64-1 while the batch was being
    /// validated, which aborted the node.
    #[test]
    fn an_offset_delta_that_overflows_the_base_is_refused_without_a_panic() {
        let mut forged = honest(1);
        // Deltas are zigzag varints (as in Kafka): the largest is i64::MAX, and one that reads
        // as negative is a malformed record.
        forged.records[0] = raw_record(0, u64::MAX, b"v");
        assert!(RecordBatch::validate(forge(&forged, 1)).is_err());
        forged.records[0] = raw_record(0, i64::MAX as u64, b"v");
        for base in [0, 1, Offset::MAX.0 - 1] {
            assert!(
                matches!(
                    RecordBatch::validate(forge(&forged, base)),
                    Err(BatchError::OffsetDeltaMismatch { index: 0, .. })
                ),
                "base {base}"
            );
        }
    }

    #[test]
    fn a_last_offset_delta_other_than_count_minus_one_is_refused() {
        let mut forged = honest(3);
        forged.last_offset_delta = 1003;
        assert!(matches!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::CountMismatch { declared: 3, .. })
        ));
    }

    /// A record claiming more headers than its bytes can hold is refused before any header is
    /// read; one claiming as many as they could hold is read header by header (and fails at
    /// the first that is not there) rather than sized for them all up front.
    #[test]
    fn a_header_count_the_record_cannot_hold_is_refused() {
        // Every record number is a zigzag varint, as Kafka writes them.
        let record = |header_count: i64, rest: &[u8]| {
            let mut body = vec![0u8];
            varint::put_i64(&mut body, 0);
            varint::put_i64(&mut body, 0);
            varint::put_i64(&mut body, -1);
            varint::put_i64(&mut body, 1);
            body.push(b'v');
            varint::put_i64(&mut body, header_count);
            body.extend_from_slice(rest);
            let mut record = Vec::new();
            varint::put_i64(&mut record, body.len() as i64);
            record.extend_from_slice(&body);
            record
        };
        let mut forged = honest(1);
        // Two empty headers (no key, no value) in 4 bytes: valid.
        forged.records[0] = record(2, &[0, 1, 0, 1]);
        let batch = RecordBatch::validate(forge(&forged, 0)).unwrap();
        let records: Vec<_> = batch.records().map(Result::unwrap).collect();
        assert_eq!(records[0].headers.len(), 2);
        // Three headers cannot fit in 4 bytes.
        forged.records[0] = record(3, &[0, 1, 0, 1]);
        assert_eq!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::BadRecord {
                index: 0,
                reason: "header count exceeds record"
            })
        );
        // As many as 64 KiB could hold, but the first claims a 512 KiB key (zigzag 2^20).
        let mut rest = vec![0x80, 0x80, 0x40];
        rest.resize(64 * 1024, 0);
        forged.records[0] = record(32 * 1024, &rest);
        assert_eq!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::BadRecord {
                index: 0,
                reason: "header key"
            })
        );
    }

    /// A record with a null value (a tombstone) is well formed and stored: its value decodes
    /// as `None`, and it encodes back to value length -1, byte for byte as Kafka writes it.
    #[test]
    fn a_null_value_round_trips_as_a_tombstone() {
        let mut body = vec![0u8];
        varint::put_i64(&mut body, 0);
        varint::put_i64(&mut body, 0);
        varint::put_i64(&mut body, 1);
        body.push(b'k');
        varint::put_i64(&mut body, -1);
        varint::put_i64(&mut body, 0);
        let mut record = Vec::new();
        varint::put_i64(&mut record, body.len() as i64);
        record.extend_from_slice(&body);
        let mut forged = honest(1);
        forged.records[0] = record;
        let batch = RecordBatch::validate(forge(&forged, 0)).unwrap();
        let records: Vec<RecordView> = batch.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[0].value, None);

        let mut builder = RecordBatchBuilder::new(0);
        builder.push(&Record::tombstone("k").with_timestamp_ms(0));
        builder.push(&Record::new("v").with_key("k").with_timestamp_ms(0));
        let built = RecordBatch::validate(builder.build().into_bytes()).unwrap();
        let values: Vec<Option<Bytes>> = built.records().map(|r| r.unwrap().value).collect();
        assert_eq!(values, vec![None, Some(Bytes::from_static(b"v"))]);
        let one = Record::tombstone("k");
        let mut sized = RecordBatchBuilder::new(0);
        sized.push(&one);
        assert!(record_encoded_bytes(&one) >= sized.size_bytes() - HEADER_BYTES);
    }

    /// Found by the `record_batch` fuzz target: a last offset delta of `u32::MAX` overflowed
    /// `last_offset_delta + 1` while the refusal was being written, a panic in any build with
    /// overflow checks and a refusal claiming 0 records in the release build.
    #[test]
    fn a_last_offset_delta_of_u32_max_is_refused_without_overflow() {
        let mut forged = honest(3);
        forged.last_offset_delta = u32::MAX;
        assert_eq!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::CountMismatch {
                declared: 3,
                actual: 1 << 32,
            })
        );
    }

    #[test]
    fn a_record_count_the_bytes_cannot_hold_is_refused_before_the_records_are_walked() {
        let mut forged = honest(1);
        forged.record_count = 1_000_000;
        forged.last_offset_delta = 999_999;
        assert!(matches!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::CountExceedsBytes {
                declared: 1_000_000,
                ..
            })
        ));
        // Fewer records than declared, within what the bytes could hold.
        let mut short = honest(3);
        short.records = (0..2)
            .map(|index| raw_record(index, index as u64, b"a longer value"))
            .collect();
        assert!(matches!(
            RecordBatch::validate(forge(&short, 0)),
            Err(BatchError::CountMismatch {
                declared: 3,
                actual: 2
            })
        ));
    }

    #[test]
    fn a_timestamp_that_overflows_first_plus_delta_is_refused() {
        let mut forged = honest(2);
        forged.first_timestamp_ms = i64::MAX - 1;
        forged.max_timestamp_ms = i64::MAX;
        forged.records[1] = raw_record(5, 1, b"v");
        assert_eq!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::TimestampOverflow {
                index: 1,
                first_ms: i64::MAX - 1,
                delta: 5
            })
        );
        let mut below = honest(2);
        below.first_timestamp_ms = i64::MIN + 1;
        below.records[1] = raw_record(-5, 1, b"v");
        assert!(matches!(
            RecordBatch::validate(forge(&below, 0)),
            Err(BatchError::TimestampOverflow { index: 1, .. })
        ));
    }

    #[test]
    fn a_max_timestamp_other_than_the_records_largest_is_refused() {
        let mut forged = honest(3);
        forged.max_timestamp_ms += 1_000;
        assert!(matches!(
            RecordBatch::validate(forge(&forged, 0)),
            Err(BatchError::MaxTimestampMismatch { .. })
        ));
        let mut low = honest(3);
        low.max_timestamp_ms = low.first_timestamp_ms;
        assert!(matches!(
            RecordBatch::validate(forge(&low, 0)),
            Err(BatchError::MaxTimestampMismatch { .. })
        ));
    }

    #[test]
    fn undefined_codecs_transactional_and_unknown_attributes_are_refused_by_name() {
        for codec in 5..=7u16 {
            let mut forged = honest(2);
            forged.attributes = codec;
            assert_eq!(
                RecordBatch::validate(forge(&forged, 0)),
                Err(BatchError::Compressed { codec: codec as u8 })
            );
        }
        // A codec bit on records that were never compressed: they do not decompress, or
        // what comes out is not the records the header declares.
        for codec in 1..=4u16 {
            let mut forged = honest(2);
            forged.attributes = codec;
            assert!(RecordBatch::validate(forge(&forged, 0)).is_err(), "{codec}");
        }
        let mut transactional = honest(2);
        transactional.attributes = ATTRIBUTE_TRANSACTIONAL;
        assert_eq!(
            RecordBatch::validate(forge(&transactional, 0)),
            Err(BatchError::Transactional)
        );
        for bits in [0x08u16, 0x40, 0x80, 0x8000] {
            let mut unknown = honest(2);
            unknown.attributes = bits;
            assert_eq!(
                RecordBatch::validate(forge(&unknown, 0)),
                Err(BatchError::UnknownAttributes { bits })
            );
        }
    }

    /// What replicas write themselves stays valid on the peer path, which runs the same
    /// validation: a new leader's control marker and an idempotent producer's batch.
    #[test]
    fn leader_stamped_batches_stay_valid() {
        let marker = RecordBatchBuilder::control_marker(1_700_000_000_000)
            .stamped(Offset(Offset::MAX.0 - 1), Epoch(u64::MAX));
        let first = marker.records().next().unwrap().unwrap();
        assert_eq!(first.key.as_deref(), Some(&CONTROL_KEY_LEADER_CHANGE[..]));
        assert!(RecordBatch::validate(marker.into_bytes()).is_ok());
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000).producer(7, 0, 0);
        for index in 0..100i64 {
            // Timestamps out of order: max is the largest, not the last.
            builder.push(
                &Record::new("v").with_timestamp_ms(1_700_000_000_000 + (index * 37) % 11 - 5),
            );
        }
        let batch = builder.build().stamped(Offset(1_000), Epoch(3));
        assert!(RecordBatch::validate(batch.into_bytes()).is_ok());
    }

    const CODECS: [Compression; 4] = [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Found by the record_batch fuzz target: a header-only batch (as compaction leaves an
    /// emptied one) whose attributes still name a codec passed `validate_from_log`, and then
    /// its records failed to decompress. It holds no record, whatever the codec.
    #[test]
    fn an_emptied_batch_naming_a_codec_reads_as_no_records() {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        builder.push(&Record::new("v").with_key("k"));
        let kept_one = builder.build().stamped(Offset(10), Epoch(1));
        let emptied = kept_one.retain(|_| false).unwrap().unwrap();
        let mut bytes = emptied.into_bytes().to_vec();
        bytes[25..27].copy_from_slice(&(Compression::Gzip.codec() as u16).to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
        bytes[CRC_OFFSET..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
        let forged = RecordBatch::validate_from_log(Bytes::from(bytes)).unwrap();
        assert_eq!(forged.record_count(), 0);
        assert_eq!(forged.records().count(), 0);
    }

    #[test]
    fn compressed_batches_validate_and_read_back_their_records() {
        for compression in CODECS {
            let mut forged = honest(50);
            forged.compression = compression;
            let bytes = forge(&forged, 7);
            let batch = RecordBatch::validate(bytes.clone()).unwrap();
            assert_eq!(batch.bytes(), &bytes, "stored as sent");
            assert_eq!(batch.compression(), Ok(compression));
            let offsets: Vec<u64> = batch
                .records()
                .map(|record| record.unwrap().offset.0)
                .collect();
            assert_eq!(offsets, (7..57).collect::<Vec<_>>(), "{compression}");
        }
    }

    #[test]
    fn the_builder_compresses_and_falls_back_when_records_do_not_shrink() {
        for compression in CODECS {
            let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
            for index in 0..100 {
                builder.push(
                    &Record::new(format!("value number {index} of a compressible batch"))
                        .with_key("key")
                        .with_header("h", "v"),
                );
            }
            let plain_bytes = builder.size_bytes();
            let batch = builder.build_compressed(compression).with_producer(3, 0, 5);
            assert!(batch.size_bytes() < plain_bytes, "{compression}");
            let batch = RecordBatch::validate(batch.into_bytes()).unwrap();
            assert_eq!(batch.compression(), Ok(compression));
            let values: Vec<Option<Bytes>> = batch.records().map(|r| r.unwrap().value).collect();
            assert_eq!(values.len(), 100);
            assert_eq!(
                values[99].as_deref(),
                Some(&b"value number 99 of a compressible batch"[..])
            );
            // One short record does not shrink: it goes uncompressed.
            let mut tiny = RecordBatchBuilder::new(0);
            tiny.push(&Record::new("x"));
            let tiny = tiny.build_compressed(compression);
            assert_eq!(tiny.compression(), Ok(Compression::None), "{compression}");
        }
    }

    /// The lies a producer can tell inside the compressed records, which only decompressing
    /// finds: a record count the records do not have, offset deltas that are not positions,
    /// a max timestamp that is not theirs.
    #[test]
    fn lies_inside_compressed_records_are_refused() {
        for compression in CODECS {
            let mut fewer = honest(3);
            fewer.compression = compression;
            fewer.records = (0..2)
                .map(|index| raw_record(index, index as u64, b"a longer value"))
                .collect();
            fewer.max_timestamp_ms -= 1;
            assert_eq!(
                RecordBatch::validate(forge(&fewer, 0)),
                Err(BatchError::CountMismatch {
                    declared: 3,
                    actual: 2
                }),
                "{compression}"
            );
            let mut shifted = honest(3);
            shifted.compression = compression;
            shifted.records = (0..3)
                .map(|index| raw_record(index, index as u64 + 1, b"v"))
                .collect();
            assert_eq!(
                RecordBatch::validate(forge(&shifted, 0)),
                Err(BatchError::OffsetDeltaMismatch { index: 0, found: 1 }),
                "{compression}"
            );
            let mut late = honest(3);
            late.compression = compression;
            late.max_timestamp_ms += 1;
            assert!(matches!(
                RecordBatch::validate(forge(&late, 0)),
                Err(BatchError::MaxTimestampMismatch { .. })
            ));
            // A count the decompressed records could not hold, refused before they are walked.
            let mut many = honest(3);
            many.compression = compression;
            many.record_count = 1_000;
            many.last_offset_delta = 999;
            assert!(matches!(
                RecordBatch::validate(forge(&many, 0)),
                Err(BatchError::CountExceedsBytes {
                    declared: 1_000,
                    ..
                })
            ));
        }
    }

    #[test]
    fn a_compressed_batch_past_the_bound_is_refused_and_the_checksum_covers_compressed_bytes() {
        for compression in CODECS {
            // 2,000 records of 1 KiB of zeros: about 2 MiB that compress to a few KiB.
            let mut bomb = honest(2_000);
            bomb.compression = compression;
            bomb.records = (0..2_000)
                .map(|index: u32| raw_record(i64::from(index), u64::from(index), &[0; 1024]))
                .collect();
            let bytes = forge(&bomb, 0);
            assert!(bytes.len() < 256 * 1024, "{compression}: {}", bytes.len());
            assert_eq!(
                RecordBatch::validate_bounded(bytes.clone(), 1024 * 1024),
                Err(BatchError::Decompress(DecompressError::TooLarge {
                    codec: compression.name(),
                    max: 1024 * 1024
                }))
            );
            assert!(RecordBatch::validate_bounded(bytes.clone(), 4 * 1024 * 1024).is_ok());
            // A reader bounded below the records gets one error, not records.
            let batch = RecordBatch::validate(bytes.clone()).unwrap();
            let read: Vec<_> = batch.records_bounded(1024).collect();
            assert!(matches!(
                read[..],
                [Err(BatchError::Decompress(
                    DecompressError::TooLarge { .. }
                ))]
            ));
            // Any flipped byte of the compressed records fails the checksum.
            let mut flipped = bytes.to_vec();
            let middle = HEADER_BYTES + (flipped.len() - HEADER_BYTES) / 2;
            flipped[middle] ^= 0x10;
            assert!(matches!(
                RecordBatch::validate(Bytes::from(flipped)),
                Err(BatchError::ChecksumMismatch { .. })
            ));
        }
    }

    #[test]
    fn garbage_or_truncated_compressed_records_with_a_valid_checksum_are_refused() {
        for compression in CODECS {
            let mut forged = honest(20);
            forged.compression = compression;
            let honest_bytes = forge(&forged, 0);
            // Cut the compressed records short and write a checksum over what is left.
            for keep in [1, 9, (honest_bytes.len() - HEADER_BYTES) / 2] {
                let mut cut = honest_bytes[..HEADER_BYTES + keep].to_vec();
                let batch_length = (cut.len() - LOG_OVERHEAD_BYTES) as u32;
                cut[8..12].copy_from_slice(&batch_length.to_be_bytes());
                let crc = crc32c::crc32c(&cut[CRC_COVERS_FROM..]);
                cut[CRC_OFFSET..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
                assert!(
                    RecordBatch::validate(Bytes::from(cut)).is_err(),
                    "{compression} kept {keep}"
                );
            }
        }
    }

    #[test]
    fn split_batches_walks_concatenated_batches() {
        let first = sample().stamped(Offset(0), Epoch(1));
        let second = RecordBatchBuilder::control_marker(5).stamped(Offset(3), Epoch(2));
        let mut joined = first.bytes().to_vec();
        joined.extend_from_slice(second.bytes());
        let joined = Bytes::from(joined);
        let batches: Vec<_> = split_batches(&joined).map(Result::unwrap).collect();
        assert_eq!(batches.len(), 2);
        assert!(batches[1].header().is_control());
        assert_eq!(batches[1].base_offset(), Offset(3));
        let cut = joined.slice(..joined.len() - 1);
        let results: Vec<_> = split_batches(&cut).collect();
        assert!(results[0].is_ok());
        assert!(results[1].is_err());
    }
}
