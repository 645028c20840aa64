//! Idempotent producers survive a restart whatever the log's length (issue 14, item 3): the
//! producer state is kept as a snapshot with the log. Before, it was rebuilt from the headers
//! of the log's last 65,536 offsets only, so a producer whose last batch was older was
//! forgotten, and a retry of that batch after a restart was written a second time.

mod support;

use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
use cairn_protocol::messages::{InitProducerIdRequest, ProduceResponse};
use cairn_protocol::{ApiError, Request, Response};
use support::{batch_of, TestNode, Wire};

/// More offsets than the old rebuild window (`PRODUCER_RECOVERY_OFFSETS_MAX`, 65,536).
const FILLER_OFFSETS: u32 = 70_000;
/// Empty records per filler batch: about 40 KB, under the test preset's 64 KiB batch limit.
const FILLER_RECORDS_PER_BATCH: u32 = 5_000;

fn init_producer_id(wire: &mut Wire) -> i64 {
    match wire.call(Request::InitProducerId(InitProducerIdRequest {})) {
        Ok(Response::InitProducerId(response)) => response.producer_id,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn produce(wire: &mut Wire, batch: &RecordBatch) -> Result<ProduceResponse, ApiError> {
    wire.produce_batch("t", 0, batch.bytes().clone())
}

/// Sends `batch` until the restarted node gives an answer that is not a retriable refusal
/// (bounded: 500 tries, 20 ms apart), as the producer's retry would.
fn retry_after_restart(wire: &mut Wire, batch: &RecordBatch) -> ProduceResponse {
    for _ in 0..500 {
        match produce(wire, batch) {
            Err(error) if error.is_retriable() => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            answer => return answer.expect("the retry is answered"),
        }
    }
    panic!("the restarted node never answered the retry");
}

fn filler_batch() -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    for _ in 0..FILLER_RECORDS_PER_BATCH {
        builder.push(&Record::new(bytes::Bytes::new()));
    }
    builder.build()
}

#[test]
fn a_retry_after_a_restart_is_a_duplicate_however_many_offsets_were_written_since() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    let first = batch_of(&[b"once"]).with_producer(producer_id, 0, 0);
    let written = produce(&mut wire, &first).unwrap();
    assert!(!written.duplicate);
    let filler = filler_batch();
    for _ in 0..FILLER_OFFSETS / FILLER_RECORDS_PER_BATCH {
        produce(&mut wire, &filler).unwrap();
    }
    let end_before = wire
        .fetch("t", 0, written.base_offset, 0)
        .unwrap()
        .high_watermark;
    assert!(end_before.0 > written.base_offset.0 + 65_536);

    node.kill();
    node.restart();
    let mut wire = node.wire();
    // The producer never heard its first acknowledgement and sends the batch again.
    let retried = retry_after_restart(&mut wire, &first);
    assert!(retried.duplicate, "written twice: {retried:?}");
    assert_eq!(retried.base_offset, written.base_offset);
    let end_after = wire
        .fetch("t", 0, written.base_offset, 0)
        .unwrap()
        .high_watermark;
    // Only the new leader's epoch marker was added.
    assert!(
        end_after.0 <= end_before.0 + 1,
        "{end_after} after {end_before}"
    );
    // The producer goes on where it was; a gap is refused.
    let gap = batch_of(&[b"gap"]).with_producer(producer_id, 0, 5);
    assert_eq!(
        produce(&mut wire, &gap),
        Err(ApiError::OutOfOrderSequence {
            producer_id,
            expected: 1,
            received: 5,
        })
    );
    let next = batch_of(&[b"next"]).with_producer(producer_id, 0, 1);
    assert!(!produce(&mut wire, &next).unwrap().duplicate);
}

#[test]
fn a_producer_the_leader_does_not_know_must_start_at_sequence_zero() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    let late = batch_of(&[b"late"]).with_producer(producer_id, 0, 7);
    assert_eq!(
        produce(&mut wire, &late),
        Err(ApiError::UnknownProducerId {
            producer_id,
            received: 7,
        })
    );
    let records = wire.read_all("t", 0, cairn_protocol::Offset(0));
    assert!(records.is_empty(), "nothing appended: {records:?}");
    let first = batch_of(&[b"first"]).with_producer(producer_id, 0, 0);
    assert!(!produce(&mut wire, &first).unwrap().duplicate);
}

fn earliest(wire: &mut Wire, topic: &str) -> cairn_protocol::Offset {
    match wire.call(Request::ListOffsets(
        cairn_protocol::messages::ListOffsetsRequest {
            topic: topic.into(),
            partition: 0,
            spec: cairn_protocol::messages::OffsetSpec::Earliest,
        },
    )) {
        Ok(Response::ListOffsets(offsets)) => offsets.offset,
        other => panic!("{other:?}"),
    }
}

/// Recovery replays the batch headers written after the producer snapshot; retention must not
/// remove them first. Here a snapshot is taken, the producer writes again, and retention then
/// removes that batch: without a fresh snapshot before retention, the restarted leader knew
/// the producer only as of the old snapshot and wrote the retry of its newer batch twice.
#[test]
fn a_retry_after_retention_removed_the_batch_and_a_restart_is_still_a_duplicate() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    let created = wire.call(Request::CreateTopic(
        cairn_protocol::messages::CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            replication_factor: None,
            config: cairn_protocol::messages::TopicConfig {
                retention_ms: None,
                retention_bytes: Some(4096),
                ..cairn_protocol::messages::TopicConfig::default()
            },
        },
    ));
    assert!(created.is_ok(), "{created:?}");
    let producer_id = init_producer_id(&mut wire);
    let first = batch_of(&[b"first"]).with_producer(producer_id, 0, 0);
    produce(&mut wire, &first).unwrap();
    // Past PRODUCER_SNAPSHOT_OFFSETS (16,384): a snapshot holding `first` is written.
    let filler = filler_batch();
    for _ in 0..4 {
        produce(&mut wire, &filler).unwrap();
    }
    let second = batch_of(&[b"second"]).with_producer(producer_id, 0, 1);
    let written = produce(&mut wire, &second).unwrap();
    produce(&mut wire, &filler).unwrap();
    // Retention (every 200 ms in the test preset, at most 4 KiB kept) removes `second`.
    assert!(
        support::eventually(std::time::Duration::from_secs(20), || {
            earliest(&mut wire, "t") > written.base_offset
        }),
        "retention never passed the second batch"
    );
    // Retention's removals become durable with the next flush: an acknowledged write.
    wire.produce("t", 0, &[b"flushed"]).unwrap();
    node.kill();
    node.restart();
    let mut wire = node.wire();
    let retried = retry_after_restart(&mut wire, &second);
    assert!(retried.duplicate, "written twice: {retried:?}");
    assert_eq!(retried.base_offset, written.base_offset);
}
