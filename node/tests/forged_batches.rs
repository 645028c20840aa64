//! Issue 15, item 4: a plain client's forged batches are refused with typed errors and nothing
//! is stored.
//!
//! Each forged batch below carries a valid checksum (a client computes it), so only the rule
//! under test can refuse it. Before this was checked, every one of them was stored: the batch
//! whose record 4 claims offset delta 1004 made consumers print offset 1004 for the record at
//! offset 4, and a group commit of 1005 made the next member skip records 5-9; a compressed
//! batch was stored as if its records were plain; a made-up producer id was accepted as an
//! idempotent producer.
//!
//! Compressed batches (issue 16) are accepted: honest ones in each of Kafka's codecs are
//! stored exactly as sent and read back; the same lies told inside the compressed records
//! (a record count they do not hold, shifted offset deltas), records that do not decompress
//! and a decompression bomb are refused.
//!
//! One real `cairn node` process. Afterwards the node still serves, and its sled files (read
//! once it is stopped) hold exactly the honest records.

mod support;

use bytes::Bytes;
use cairn_protocol::batch::{
    RecordBatch, ATTRIBUTE_TRANSACTIONAL, FORMAT_MAGIC, HEADER_BYTES, NO_PRODUCER_ID, NO_SEQUENCE,
};
use cairn_protocol::messages::InitProducerIdRequest;
use cairn_protocol::{ApiError, Compression, Offset, Request, Response};
use support::cluster::{partition_logs, replica_log, values_of};
use support::{batch_of, TestNode, Wire};

const TOPIC: &str = "ledger";
/// Where a normal client produces and reads during and after the forgeries.
const BYSTANDER_TOPIC: &str = "bystander";
const FIRST_TIMESTAMP_MS: i64 = 1_700_000_000_000;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_zigzag(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// One record as a client encodes it (every number a zigzag varint, as in Kafka): no key, no
/// headers.
fn record(timestamp_delta: i64, offset_delta: u64, value: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    put_zigzag(&mut body, timestamp_delta);
    put_zigzag(&mut body, offset_delta as i64);
    put_zigzag(&mut body, -1);
    put_zigzag(&mut body, value.len() as i64);
    body.extend_from_slice(value);
    put_zigzag(&mut body, 0);
    let mut framed = Vec::new();
    put_zigzag(&mut framed, body.len() as i64);
    framed.extend_from_slice(&body);
    framed
}

/// A batch a client could send: whatever header and records it likes, with a valid checksum.
struct Forged {
    attributes: u16,
    /// The records are compressed with it and its codec is set in the attributes.
    compression: Compression,
    /// The record count the header claims, if not the records' own.
    claimed_count: Option<u32>,
    /// Zero bytes after each record's value (a bomb's records are mostly these).
    padding_bytes: usize,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    /// (timestamp delta, offset delta) of each record.
    records: Vec<(i64, u64)>,
}

impl Forged {
    /// `count` records as an honest client numbers them.
    fn honest(count: u64) -> Forged {
        Forged {
            attributes: 0,
            compression: Compression::None,
            claimed_count: None,
            padding_bytes: 0,
            first_timestamp_ms: FIRST_TIMESTAMP_MS,
            max_timestamp_ms: FIRST_TIMESTAMP_MS + count as i64 - 1,
            records: (0..count).map(|index| (index as i64, index)).collect(),
        }
    }

    fn encode(&self) -> Bytes {
        let mut bytes = vec![0u8; HEADER_BYTES];
        let mut records = Vec::new();
        for (index, (timestamp_delta, offset_delta)) in self.records.iter().enumerate() {
            let mut value = format!("{}-{index}", self.compression).into_bytes();
            value.resize(value.len() + self.padding_bytes, 0);
            records.extend(record(*timestamp_delta, *offset_delta, &value));
        }
        bytes.extend(self.compression.compress(&records));
        let attributes = self.attributes | u16::from(self.compression.codec());
        let count = self.claimed_count.unwrap_or(self.records.len() as u32);
        let batch_length = (bytes.len() - 12) as u32;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        bytes[20] = FORMAT_MAGIC;
        bytes[25..27].copy_from_slice(&attributes.to_be_bytes());
        bytes[27..31].copy_from_slice(&(count - 1).to_be_bytes());
        bytes[31..39].copy_from_slice(&self.first_timestamp_ms.to_be_bytes());
        bytes[39..47].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        bytes[61..65].copy_from_slice(&count.to_be_bytes());
        // Stamping the producer fields computes the checksum, as a client's library does.
        RecordBatch::from_trusted(Bytes::from(bytes))
            .expect("a forged header parses")
            .with_producer(NO_PRODUCER_ID, 0, NO_SEQUENCE)
            .into_bytes()
    }
}

/// Another client's produce and read-back on its own topic and connection.
fn bystander_round_trip(node: &TestNode, value: &str) {
    let mut wire = node.wire();
    let produced = wire
        .produce(BYSTANDER_TOPIC, 0, &[value.as_bytes()])
        .unwrap();
    let records = wire.read_all(BYSTANDER_TOPIC, 0, produced.base_offset);
    assert!(
        records
            .iter()
            .any(|record| record.value.as_deref() == Some(value.as_bytes())),
        "{value} was not read back"
    );
}

fn high_watermark(wire: &mut Wire) -> Offset {
    wire.fetch(TOPIC, 0, Offset(0), 0).unwrap().high_watermark
}

fn init_producer_id(wire: &mut Wire) -> i64 {
    match wire.call(Request::InitProducerId(InitProducerIdRequest {})) {
        Ok(Response::InitProducerId(response)) => response.producer_id,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn forged_batches_get_typed_errors_and_nothing_is_stored() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic(TOPIC, 1).unwrap();
    wire.create_topic(BYSTANDER_TOPIC, 1).unwrap();
    wire.produce(TOPIC, 0, &[b"honest-0", b"honest-1"]).unwrap();
    let before = high_watermark(&mut wire);
    let baseline_mib = node.memory_kib().0 / 1024;
    // The forge itself is sound: its honest form validates, so each rule below is what
    // refuses.
    let honest = Forged::honest(3).encode();
    assert!(RecordBatch::validate(honest).is_ok());

    // The probe: ten records, the one at position 4 claims offset delta 1004.
    let mut offset_1004 = Forged::honest(10);
    offset_1004.records[4].1 = 1004;
    let refused = wire.produce_batch(TOPIC, 0, offset_1004.encode());
    assert!(
        matches!(&refused, Err(ApiError::InvalidRecords { reason }) if reason.contains("1004")),
        "{refused:?}"
    );
    // Deltas that start at 1 (every offset one too far).
    let mut shifted = Forged::honest(3);
    for (index, record) in shifted.records.iter_mut().enumerate() {
        record.1 = index as u64 + 1;
    }
    let refused = wire.produce_batch(TOPIC, 0, shifted.encode());
    assert!(
        matches!(refused, Err(ApiError::InvalidRecords { .. })),
        "{refused:?}"
    );

    // A timestamp delta that overflows the first timestamp.
    let mut overflow = Forged::honest(2);
    overflow.first_timestamp_ms = i64::MAX - 1;
    overflow.max_timestamp_ms = i64::MAX;
    overflow.records[1].0 = 5;
    let refused = wire.produce_batch(TOPIC, 0, overflow.encode());
    assert!(
        matches!(refused, Err(ApiError::InvalidRecords { .. })),
        "{refused:?}"
    );
    // A max timestamp no record has.
    let mut max_timestamp = Forged::honest(2);
    max_timestamp.max_timestamp_ms += 86_400_000;
    let refused = wire.produce_batch(TOPIC, 0, max_timestamp.encode());
    assert!(
        matches!(refused, Err(ApiError::InvalidRecords { .. })),
        "{refused:?}"
    );

    // Codecs Kafka does not define, and transactional batches: refused by name. A codec bit
    // on records that were never compressed: they do not decompress.
    for codec in [5u8, 7] {
        let mut undefined = Forged::honest(2);
        undefined.attributes = u16::from(codec);
        assert_eq!(
            wire.produce_batch(TOPIC, 0, undefined.encode()),
            Err(ApiError::UnsupportedCompression { codec })
        );
    }
    for codec in [1u16, 3, 4] {
        let mut plain_marked = Forged::honest(2);
        plain_marked.attributes = codec;
        let refused = wire.produce_batch(TOPIC, 0, plain_marked.encode());
        assert!(
            matches!(refused, Err(ApiError::CorruptBatch { .. })),
            "codec {codec}: {refused:?}"
        );
    }
    // The lies of above, told inside compressed records, which only decompressing finds.
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        // The header claims 3 records, the compressed records hold 2.
        let mut fewer = Forged::honest(2);
        fewer.compression = compression;
        fewer.claimed_count = Some(3);
        let refused = wire.produce_batch(TOPIC, 0, fewer.encode());
        assert!(
            matches!(&refused, Err(ApiError::CorruptBatch { reason }) if reason.contains("declares 3 records but holds 2")),
            "{compression}: {refused:?}"
        );
        let mut shifted = Forged::honest(3);
        shifted.compression = compression;
        for (index, record) in shifted.records.iter_mut().enumerate() {
            record.1 = index as u64 + 1;
        }
        let refused = wire.produce_batch(TOPIC, 0, shifted.encode());
        assert!(
            matches!(&refused, Err(ApiError::InvalidRecords { reason }) if reason.contains("offset delta 1")),
            "{compression}: {refused:?}"
        );
        // A bomb: 1,100 records of 1,000 zero bytes, 1.1 MB decompressed (past the test
        // preset's 1 MiB batch_decompressed_bytes_max), compressed within its 64 KiB
        // batch_bytes_max (snappy, which compresses least, to about 55 KB).
        let mut bomb = Forged::honest(1_100);
        bomb.compression = compression;
        bomb.padding_bytes = 1_000;
        let bomb = bomb.encode();
        assert!(bomb.len() < 64 * 1024, "{compression}: {}", bomb.len());
        let refused = wire.produce_batch(TOPIC, 0, bomb);
        assert!(
            matches!(&refused, Err(ApiError::LimitExceeded { limit, max: 1_048_576, .. }) if limit == "limits.batch_decompressed_bytes_max"),
            "{compression}: {refused:?}"
        );
    }
    bystander_round_trip(&node, "during");
    let mut transactional = Forged::honest(2);
    transactional.attributes = ATTRIBUTE_TRANSACTIONAL;
    assert_eq!(
        wire.produce_batch(TOPIC, 0, transactional.encode()),
        Err(ApiError::UnsupportedTransactions)
    );

    // Producer ids: only what InitProducerId handed out. `__meta` offset 0 is its first
    // leader's epoch marker, never an allocation; a negative id other than -1 is never one.
    let allocated = init_producer_id(&mut wire);
    for never in [0, -5] {
        let forged = batch_of(&[b"forged-producer"]).with_producer(never, 0, 0);
        assert_eq!(
            wire.produce_batch(TOPIC, 0, forged.into_bytes()),
            Err(ApiError::ProducerIdNotAllocated { producer_id: never })
        );
    }
    // An id above the metadata this node applied may be allocated later: refused retriably.
    let far = batch_of(&[b"forged-producer"]).with_producer(allocated + 1_000_000, 0, 0);
    let refused = wire.produce_batch(TOPIC, 0, far.into_bytes());
    assert!(
        matches!(&refused, Err(error @ ApiError::NotReady { .. }) if error.is_retriable()),
        "{refused:?}"
    );

    assert_eq!(high_watermark(&mut wire), before, "nothing was appended");
    // The allocated id and the same connection still produce.
    let idempotent = batch_of(&[b"idempotent"]).with_producer(allocated, 0, 0);
    wire.produce_batch(TOPIC, 0, idempotent.into_bytes())
        .unwrap();
    // Honest compressed batches, one per codec: stored exactly as sent.
    let mut sent = Vec::new();
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut honest = Forged::honest(2);
        honest.compression = compression;
        honest.padding_bytes = 200;
        let bytes = honest.encode();
        wire.produce_batch(TOPIC, 0, bytes.clone()).unwrap();
        sent.push(bytes);
    }
    let fetched = wire.fetch(TOPIC, 0, Offset(0), 0).unwrap();
    for bytes in &sent {
        // Everything from the attributes on (base offset and epoch are stamped by the leader).
        assert!(
            fetched
                .batches
                .windows(bytes.len() - 25)
                .any(|window| window == &bytes[25..]),
            "a compressed batch is served as it was sent"
        );
    }
    let read: Vec<(Offset, Vec<u8>)> = wire
        .read_all(TOPIC, 0, Offset(0))
        .into_iter()
        .map(|record| {
            (
                record.offset,
                record.value.as_deref().unwrap_or_default().to_vec(),
            )
        })
        .collect();

    bystander_round_trip(&node, "after");
    let peak_mib = node.memory_kib().1 / 1024;
    assert!(
        peak_mib <= baseline_mib + 64,
        "peak RSS {peak_mib} MiB, baseline {baseline_mib} MiB: bound is baseline + 64 MiB"
    );

    // What the node stored, read from its files: the honest records only.
    node.kill();
    // The ledger was created first: its log is the first of the two.
    let logs = partition_logs(&node);
    assert_eq!(logs.len(), 2, "{logs:?}");
    let stored = values_of(&replica_log(&node, &logs[0]));
    assert_eq!(stored, read);
    let values: Vec<String> = stored
        .iter()
        .map(|(_, value)| {
            String::from_utf8_lossy(value)
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    assert_eq!(
        values,
        vec![
            "honest-0",
            "honest-1",
            "idempotent",
            "gzip-0",
            "gzip-1",
            "snappy-0",
            "snappy-1",
            "lz4-0",
            "lz4-1",
            "zstd-0",
            "zstd-1"
        ]
    );
    // Offsets are positions: consecutive from the first record.
    let first = stored[0].0;
    for (index, (offset, _)) in stored.iter().enumerate() {
        assert_eq!(offset.0, first.0 + index as u64);
    }
}
