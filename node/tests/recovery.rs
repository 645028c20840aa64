//! Crash and restart: acknowledged records survive SIGKILL exactly once, offsets continue
//! without gaps or reuse, topics come back, and SIGTERM stops the node cleanly.

mod support;

use cairn_protocol::{ApiError, Offset};
use std::collections::BTreeMap;
use support::{batch_of, produce_request, TestNode};

#[test]
fn sigterm_exits_zero() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    wire.produce("t", 0, &[b"x"]).unwrap();
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status}; logs:\n{}",
        node.logs()
    );
}

#[test]
fn acknowledged_records_survive_sigkill_once_and_offsets_continue() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("events", 2).unwrap();
    // Pipeline many acks=all batches, then kill the node while more are in flight.
    let mut acknowledged: BTreeMap<String, Offset> = BTreeMap::new();
    let mut sent = BTreeMap::new();
    for round in 0..20 {
        for index in 0..10 {
            let value = format!("v-{round}-{index}");
            let id = wire.send(produce_request(
                "events",
                index % 2,
                batch_of(&[value.as_bytes()]).into_bytes(),
            ));
            sent.insert(id, value);
        }
        for _ in 0..10 {
            let reply = wire.recv();
            let value = sent
                .remove(&reply.correlation_id)
                .expect("a reply per request");
            match reply.result {
                Ok(cairn_protocol::Response::Produce(produced)) => {
                    acknowledged.insert(value, produced.base_offset);
                }
                other => panic!("produce failed: {other:?}"),
            }
        }
    }
    // Unacknowledged writes in flight at the kill may or may not survive; acknowledged must.
    for index in 0..10 {
        wire.send(produce_request(
            "events",
            index % 2,
            batch_of(&[format!("unacked-{index}").as_bytes()]).into_bytes(),
        ));
    }
    node.kill();
    node.restart();
    let mut wire = node.wire();
    let mut seen: BTreeMap<String, (u32, Offset)> = BTreeMap::new();
    let mut ends = Vec::new();
    for partition in 0..2 {
        let records = wire.read_all("events", partition, Offset(0));
        let mut previous: Option<Offset> = None;
        for record in &records {
            if let Some(previous) = previous {
                assert!(record.offset > previous, "offsets go forward");
            }
            previous = Some(record.offset);
            let value = String::from_utf8(record.value.to_vec()).unwrap();
            let earlier = seen.insert(value.clone(), (partition, record.offset));
            assert!(earlier.is_none(), "{value} read twice");
        }
        ends.push(
            wire.fetch("events", partition, Offset(0), 0)
                .unwrap()
                .high_watermark,
        );
    }
    for (value, offset) in &acknowledged {
        let (_, found) = seen
            .get(value)
            .unwrap_or_else(|| panic!("acknowledged {value} lost"));
        assert_eq!(found, offset, "{value} moved");
    }
    // New writes continue after everything there, never reusing an offset.
    for (partition, end) in ends.iter().enumerate() {
        let produced = wire
            .produce("events", partition as u32, &[b"after"])
            .unwrap();
        assert!(
            produced.base_offset >= *end,
            "offset reused: {produced:?} < {end}"
        );
        let records = wire.read_all("events", partition as u32, Offset(0));
        assert_eq!(records.last().unwrap().value, bytes::Bytes::from("after"));
    }
}

#[test]
fn restart_recovers_topics_and_their_data() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("a", 1).unwrap();
    wire.create_topic("b", 3).unwrap();
    wire.create_topic("gone", 1).unwrap();
    wire.produce("b", 2, &[b"kept"]).unwrap();
    wire.call(cairn_protocol::Request::DeleteTopic(
        cairn_protocol::messages::DeleteTopicRequest {
            name: "gone".into(),
        },
    ))
    .unwrap();
    let status = node.terminate();
    assert!(status.success());
    node.restart();
    let mut wire = node.wire();
    assert_eq!(
        wire.create_topic("a", 1),
        Err(ApiError::TopicAlreadyExists { topic: "a".into() })
    );
    let records = wire.read_all("b", 2, Offset(0));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, bytes::Bytes::from("kept"));
    assert!(matches!(
        wire.fetch("gone", 0, Offset(0), 0),
        Err(ApiError::UnknownTopic { .. })
    ));
    // The deleted topic's name is free again.
    wire.create_topic("gone", 1).unwrap();
}
