//! Idempotent producing against a real node process: producer ids from the cluster, retried
//! batches written once (also after SIGKILL and restart), gaps and fenced epochs refused.

mod support;

use cairn_protocol::batch::RecordBatch;
use cairn_protocol::messages::{InitProducerIdRequest, ProduceResponse};
use cairn_protocol::{ApiError, Offset, Request, Response};
use support::{batch_of, TestNode, Wire};

fn init_producer_id(wire: &mut Wire) -> i64 {
    match wire.call(Request::InitProducerId(InitProducerIdRequest {})) {
        Ok(Response::InitProducerId(response)) => {
            assert_eq!(response.producer_epoch, 0);
            assert!(response.producer_id >= 0);
            response.producer_id
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

fn idempotent(values: &[&[u8]], producer_id: i64, epoch: i16, sequence: i32) -> RecordBatch {
    batch_of(values).with_producer(producer_id, epoch, sequence)
}

fn produce(wire: &mut Wire, batch: &RecordBatch) -> Result<ProduceResponse, ApiError> {
    wire.produce_batch("t", 0, batch.bytes().clone())
}

fn values(wire: &mut Wire) -> Vec<(Offset, String)> {
    wire.read_all("t", 0, Offset(0))
        .into_iter()
        .map(|record| {
            (
                record.offset,
                String::from_utf8(record.value.to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn producer_ids_are_unique_across_calls_and_restarts() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    let first = init_producer_id(&mut wire);
    let second = init_producer_id(&mut wire);
    assert!(second > first);
    node.kill();
    node.restart();
    let mut wire = node.wire();
    let third = init_producer_id(&mut wire);
    assert!(
        third > second,
        "{third} after {second}: ids are never reused"
    );
}

#[test]
fn a_resent_batch_is_written_once_and_answered_with_its_first_offset() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    wire.produce("t", 0, &[b"plain"]).unwrap();
    let first = idempotent(&[b"a", b"b"], producer_id, 0, 0);
    let written = produce(&mut wire, &first).unwrap();
    assert!(!written.duplicate);
    // The acknowledgement was lost: the producer sends the very same bytes again.
    let again = produce(&mut wire, &first).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.base_offset, written.base_offset);
    // A gap is refused with what the leader expected, and nothing is written.
    let gap = idempotent(&[b"d"], producer_id, 0, 3);
    assert_eq!(
        produce(&mut wire, &gap),
        Err(ApiError::OutOfOrderSequence {
            producer_id,
            expected: 2,
            received: 3,
        })
    );
    let next = idempotent(&[b"c"], producer_id, 0, 2);
    let continued = produce(&mut wire, &next).unwrap();
    assert_eq!(continued.base_offset, written.base_offset.plus(2));
    assert_eq!(
        values(&mut wire)
            .into_iter()
            .map(|(_, value)| value)
            .collect::<Vec<_>>(),
        vec!["plain", "a", "b", "c"]
    );
    // An idempotent batch with a negative sequence is malformed, not a plain batch.
    let bad = idempotent(&[b"x"], producer_id, 0, -1);
    assert!(matches!(
        produce(&mut wire, &bad),
        Err(ApiError::InvalidRequest { .. })
    ));
}

#[test]
fn pipelined_retries_after_sigkill_and_restart_are_not_written_twice() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    let batches: Vec<RecordBatch> = (0..20)
        .map(|index| {
            let value = format!("v{index}");
            idempotent(&[value.as_bytes()], producer_id, 0, index)
        })
        .collect();
    let mut acknowledged = Vec::new();
    for batch in &batches {
        acknowledged.push(produce(&mut wire, batch).unwrap().base_offset);
    }
    // The node dies; the producer did not hear about the last five and sends them again.
    node.kill();
    node.restart();
    let mut wire = node.wire();
    for (index, batch) in batches.iter().enumerate().skip(15) {
        let reply = produce(&mut wire, batch).unwrap();
        assert!(
            reply.duplicate,
            "batch {index} was recognised after restart"
        );
        assert_eq!(reply.base_offset, acknowledged[index]);
    }
    let next = idempotent(&[b"v20"], producer_id, 0, 20);
    assert!(!produce(&mut wire, &next).unwrap().duplicate);
    let read = values(&mut wire);
    let expected: Vec<String> = (0..21).map(|index| format!("v{index}")).collect();
    assert_eq!(
        read.iter()
            .map(|(_, value)| value.clone())
            .collect::<Vec<_>>(),
        expected,
        "every value exactly once, in order"
    );
    for (index, offset) in acknowledged.iter().enumerate() {
        assert_eq!(read[index].0, *offset);
    }
}

#[test]
fn an_older_producer_epoch_is_fenced_and_a_newer_one_restarts_at_zero() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    produce(&mut wire, &idempotent(&[b"a"], producer_id, 1, 0)).unwrap();
    assert_eq!(
        produce(&mut wire, &idempotent(&[b"b"], producer_id, 0, 1)),
        Err(ApiError::InvalidProducerEpoch {
            producer_id,
            current: 1,
            received: 0,
        })
    );
    assert_eq!(
        produce(&mut wire, &idempotent(&[b"b"], producer_id, 2, 1)),
        Err(ApiError::OutOfOrderSequence {
            producer_id,
            expected: 0,
            received: 1,
        })
    );
    produce(&mut wire, &idempotent(&[b"b"], producer_id, 2, 0)).unwrap();
    assert_eq!(
        values(&mut wire)
            .into_iter()
            .map(|(_, value)| value)
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}
