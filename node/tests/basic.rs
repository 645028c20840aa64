//! Single-node happy paths over the wire: topics, produce, fetch, offsets, describe.

mod support;

use cairn_protocol::messages::*;
use cairn_protocol::{ApiError, NodeId, Offset, Request, Response};
use support::{records_of, TestNode};

#[test]
fn handshake_reports_the_test_preset_limits() {
    let node = TestNode::start();
    let mut wire = node.wire();
    let reply = wire
        .call(Request::Handshake(HandshakeRequest {
            client_id: "test".into(),
            min_version: 1,
            max_version: 3,
        }))
        .unwrap();
    let Response::Handshake(handshake) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(handshake.version, 1);
    assert_eq!(handshake.node_id, NodeId(1));
    assert_eq!(handshake.limits.batch_bytes_max, 65536);
    assert_eq!(handshake.limits.record_bytes_max, 16384);
    let refused = wire.call(Request::Handshake(HandshakeRequest {
        client_id: "future".into(),
        min_version: 7,
        max_version: 9,
    }));
    assert!(
        matches!(refused, Err(ApiError::UnsupportedVersion { .. })),
        "{refused:?}"
    );
}

#[test]
fn create_produce_fetch_and_offsets() {
    let node = TestNode::start();
    let mut wire = node.wire();
    let topic = wire.create_topic("orders", 3).unwrap();
    assert_eq!(topic.partitions.len(), 3);
    assert!(topic.partitions.iter().all(|p| p.leader == Some(NodeId(1))));
    assert!(topic
        .partitions
        .iter()
        .all(|p| p.replicas == vec![NodeId(1)]));

    // The leader's epoch marker (a control batch) holds offset 0; user records follow it.
    let first = wire.produce("orders", 1, &[b"a", b"b", b"c"]).unwrap();
    let base = first.base_offset.0;
    assert_eq!(base, 1);
    let second = wire.produce("orders", 1, &[b"d"]).unwrap();
    assert_eq!(second.base_offset, Offset(base + 3));

    let fetched = wire.fetch("orders", 1, Offset(0), 0).unwrap();
    assert_eq!(fetched.high_watermark, Offset(base + 4));
    let values: Vec<_> = records_of(&fetched.batches)
        .into_iter()
        .map(|record| (record.offset, record.value))
        .collect();
    assert_eq!(
        values,
        vec![
            (Offset(base), Some("a".into())),
            (Offset(base + 1), Some("b".into())),
            (Offset(base + 2), Some("c".into())),
            (Offset(base + 3), Some("d".into())),
        ]
    );
    // From the middle: whole batches, the consumer skips below its offset.
    let middle = wire.fetch("orders", 1, Offset(base + 3), 0).unwrap();
    let records = records_of(&middle.batches);
    assert_eq!(records.last().unwrap().offset, Offset(base + 3));

    for (spec, expected) in [(OffsetSpec::Earliest, 0), (OffsetSpec::Latest, base + 4)] {
        let reply = wire
            .call(Request::ListOffsets(ListOffsetsRequest {
                topic: "orders".into(),
                partition: 1,
                spec,
            }))
            .unwrap();
        let Response::ListOffsets(offsets) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(offsets.offset, Offset(expected), "{spec:?}");
    }
    let reply = wire
        .call(Request::ListOffsets(ListOffsetsRequest {
            topic: "orders".into(),
            partition: 1,
            spec: OffsetSpec::Timestamp(0),
        }))
        .unwrap();
    let Response::ListOffsets(offsets) = reply else {
        panic!("{reply:?}")
    };
    // The first record at or after time 0 is the first user record (markers are skipped).
    assert!(offsets.offset <= Offset(base), "{offsets:?}");

    let reply = wire
        .call(Request::DescribeTopic(DescribeTopicRequest {
            name: "orders".into(),
        }))
        .unwrap();
    let Response::DescribeTopic(described) = reply else {
        panic!("{reply:?}")
    };
    let partition = &described.partitions[1];
    assert_eq!(partition.high_watermark, Offset(base + 4));
    assert_eq!(partition.log_end, Offset(base + 4));
    assert_eq!(partition.log_start, Offset(0));
    assert_eq!(partition.leader, Some(NodeId(1)));
    // Partition 0 holds only its epoch marker.
    assert_eq!(described.partitions[0].high_watermark, Offset(1));

    let reply = wire
        .call(Request::ListTopics(ListTopicsRequest {
            include_internal: true,
        }))
        .unwrap();
    let Response::ListTopics(list) = reply else {
        panic!("{reply:?}")
    };
    let names: Vec<_> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["__meta", "orders"]);

    let reply = wire
        .call(Request::Metadata(MetadataRequest { topics: None }))
        .unwrap();
    let Response::Metadata(metadata) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(metadata.brokers.len(), 1);
    assert_eq!(metadata.brokers[0].address, node.address().to_string());
    assert_eq!(metadata.topics.len(), 1);
}

#[test]
fn delete_topic_then_recreate_starts_empty() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    wire.produce("t", 0, &[b"old"]).unwrap();
    let reply = wire.call(Request::DeleteTopic(DeleteTopicRequest {
        name: "t".into(),
    }));
    assert!(matches!(reply, Ok(Response::DeleteTopic(_))), "{reply:?}");
    assert!(matches!(
        wire.produce("t", 0, &[b"x"]),
        Err(ApiError::UnknownTopic { .. })
    ));
    let again = wire.call(Request::DeleteTopic(DeleteTopicRequest {
        name: "t".into(),
    }));
    assert!(
        matches!(again, Err(ApiError::UnknownTopic { .. })),
        "{again:?}"
    );
    wire.create_topic("t", 1).unwrap();
    let fetched = wire.fetch("t", 0, Offset(0), 0).unwrap();
    assert!(records_of(&fetched.batches).is_empty(), "{fetched:?}");
    // Only the new incarnation's epoch marker precedes it: the old record is gone.
    assert_eq!(
        wire.produce("t", 0, &[b"new"]).unwrap().base_offset,
        Offset(1)
    );
    let values: Vec<_> = wire
        .read_all("t", 0, Offset(0))
        .into_iter()
        .map(|record| record.value)
        .collect();
    assert_eq!(values, vec![Some(bytes::Bytes::from("new"))]);
}

#[test]
fn racing_creates_of_one_name_have_one_winner() {
    let node = TestNode::start();
    let address = node.address();
    for round in 0..5 {
        let name = format!("race-{round}");
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let name = name.clone();
                std::thread::spawn(move || support::Wire::connect(address).create_topic(&name, 2))
            })
            .collect();
        let outcomes: Vec<_> = racers
            .into_iter()
            .map(|racer| racer.join().unwrap())
            .collect();
        let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(winners, 1, "{outcomes:?}");
        for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
            assert_eq!(
                outcome,
                &Err(ApiError::TopicAlreadyExists {
                    topic: name.clone()
                })
            );
        }
    }
}
