//! Bad input at the wire level: each case gets a typed error, changes nothing, and the node
//! keeps serving (the same connection where the protocol allows, else another client).

mod support;

use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::messages::*;
use cairn_protocol::{ApiError, Offset, Request, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use support::{batch_of, TestNode, Wire};

/// The node answers a plain request on a fresh connection.
fn still_serves(node: &TestNode) {
    let mut wire = node.wire();
    let reply = wire.call(Request::ListTopics(ListTopicsRequest {
        include_internal: false,
    }));
    assert!(matches!(reply, Ok(Response::ListTopics(_))), "{reply:?}");
}

fn high_watermark(wire: &mut Wire, topic: &str, partition: u32) -> Offset {
    wire.fetch(topic, partition, Offset(0), 0)
        .unwrap()
        .high_watermark
}

#[test]
fn malformed_frame_gets_malformed_frame_then_close() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.send_payload(b"\xc1\xc1 definitely not msgpack");
    let reply = wire.recv();
    assert_eq!(reply.correlation_id, 0);
    assert!(
        matches!(reply.result, Err(ApiError::MalformedFrame { .. })),
        "{reply:?}"
    );
    assert!(wire.is_closed());
    still_serves(&node);
}

#[test]
fn frame_over_the_maximum_gets_frame_too_large_then_close() {
    let node = TestNode::start();
    let mut wire = node.wire();
    // The test preset's frame_bytes_max is 256 KiB; announce one byte more.
    let length: u32 = 256 * 1024 + 1;
    use std::io::Write;
    wire.stream.write_all(&length.to_be_bytes()).unwrap();
    wire.stream.write_all(&[0u8; 1024]).unwrap();
    let reply = wire.recv();
    assert_eq!(reply.correlation_id, 0);
    assert_eq!(
        reply.result,
        Err(ApiError::FrameTooLarge {
            size: u64::from(length),
            max: 256 * 1024
        })
    );
    assert!(wire.is_closed());
    still_serves(&node);
}

#[derive(Serialize)]
struct Envelope {
    version: u16,
    correlation_id: u64,
    request: BTreeMap<String, BTreeMap<String, u8>>,
}

#[test]
fn unknown_request_type_and_version_are_refused_and_the_connection_stays() {
    let node = TestNode::start();
    let mut wire = node.wire();
    let mut request = BTreeMap::new();
    request.insert("Teleport".to_string(), BTreeMap::new());
    let payload = rmp_serde::to_vec_named(&Envelope {
        version: 1,
        correlation_id: 77,
        request,
    })
    .unwrap();
    wire.send_payload(&payload);
    let reply = wire.recv();
    assert_eq!(reply.correlation_id, 77);
    assert!(
        matches!(reply.result, Err(ApiError::UnknownRequestType { .. })),
        "{reply:?}"
    );

    let payload = cairn_protocol::frame::encode_request(&cairn_protocol::RequestFrame {
        version: 42,
        correlation_id: 78,
        request: Request::ListTopics(ListTopicsRequest {
            include_internal: false,
        }),
    });
    wire.send_payload(&payload);
    let reply = wire.recv();
    assert_eq!(reply.correlation_id, 78);
    assert!(
        matches!(
            reply.result,
            Err(ApiError::UnsupportedVersion { requested: 42, .. })
        ),
        "{reply:?}"
    );
    // Same connection, still usable.
    let reply = wire.call(Request::ListTopics(ListTopicsRequest {
        include_internal: false,
    }));
    assert!(matches!(reply, Ok(Response::ListTopics(_))), "{reply:?}");
}

#[test]
fn produce_refusals_are_typed_and_append_nothing() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 2).unwrap();
    let before = high_watermark(&mut wire, "t", 0);

    assert_eq!(
        wire.produce("nope", 0, &[b"x"]),
        Err(ApiError::UnknownTopic {
            topic: "nope".into()
        })
    );
    assert_eq!(
        wire.produce("t", 2, &[b"x"]),
        Err(ApiError::UnknownPartition {
            topic: "t".into(),
            partition: 2,
            partitions: 2
        })
    );

    // One record above record_bytes_max (16 KiB in the test preset), in a legal-size batch.
    let big = vec![7u8; 16 * 1024 + 1];
    let refused = wire.produce("t", 0, &[b"small", &big]);
    assert!(
        matches!(refused, Err(ApiError::RecordTooLarge { max: 16384, .. })),
        "{refused:?}"
    );

    // A batch above batch_bytes_max (64 KiB) made of legal records.
    let record = vec![1u8; 10 * 1024];
    let records: Vec<&[u8]> = (0..7).map(|_| record.as_slice()).collect();
    let refused = wire.produce("t", 0, &records);
    assert!(
        matches!(refused, Err(ApiError::BatchTooLarge { max: 65536, .. })),
        "{refused:?}"
    );

    // A flipped byte inside the records: the checksum catches it.
    let mut corrupt = batch_of(&[b"hello", b"world"]).into_bytes().to_vec();
    let last = corrupt.len() - 2;
    corrupt[last] ^= 0xff;
    let refused = wire.produce_batch("t", 0, corrupt.into());
    assert!(
        matches!(refused, Err(ApiError::CorruptBatch { .. })),
        "{refused:?}"
    );
    // Truncated, and plain garbage.
    let truncated = batch_of(&[b"hello"]).into_bytes().slice(0..40);
    assert!(matches!(
        wire.produce_batch("t", 0, truncated),
        Err(ApiError::CorruptBatch { .. })
    ));
    assert!(matches!(
        wire.produce_batch("t", 0, bytes::Bytes::from_static(b"garbage")),
        Err(ApiError::CorruptBatch { .. })
    ));
    // A control batch is for leaders only.
    let control = RecordBatchBuilder::control_marker(1).into_bytes();
    assert!(matches!(
        wire.produce_batch("t", 0, control),
        Err(ApiError::InvalidRequest { .. })
    ));

    assert_eq!(
        high_watermark(&mut wire, "t", 0),
        before,
        "nothing was appended"
    );
    // The same connection still produces.
    let mut builder = RecordBatchBuilder::new(1);
    builder.push(&Record::new(bytes::Bytes::from_static(b"fine")));
    assert!(wire
        .produce_batch("t", 0, builder.build().into_bytes())
        .is_ok());
    still_serves(&node);
}

fn create(
    wire: &mut Wire,
    name: &str,
    partitions: u32,
    replication_factor: Option<u16>,
) -> Result<Response, ApiError> {
    wire.call(Request::CreateTopic(CreateTopicRequest {
        name: name.to_string(),
        partitions,
        replication_factor,
        config: TopicConfig::default(),
    }))
}

#[test]
fn create_topic_refusals_are_typed_and_create_nothing() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("taken", 1).unwrap();
    assert_eq!(
        wire.create_topic("taken", 1),
        Err(ApiError::TopicAlreadyExists {
            topic: "taken".into()
        })
    );
    let too_long = "x".repeat(250);
    for name in ["", too_long.as_str(), "bad topic", "a/b", "__meta", ".."] {
        let refused = create(&mut wire, name, 1, None);
        assert!(
            matches!(refused, Err(ApiError::InvalidTopicName { .. })),
            "{name:?}: {refused:?}"
        );
    }
    for partitions in [0, 17] {
        assert_eq!(
            create(&mut wire, "p", partitions, None),
            Err(ApiError::InvalidPartitionCount {
                requested: partitions,
                max: 16
            })
        );
    }
    for replication_factor in [0, 2] {
        assert_eq!(
            create(&mut wire, "r", 1, Some(replication_factor)),
            Err(ApiError::InvalidReplicationFactor {
                requested: replication_factor,
                available: 1
            })
        );
    }
    let refused = wire.call(Request::CreateTopic(CreateTopicRequest {
        name: "c".into(),
        partitions: 1,
        replication_factor: None,
        config: TopicConfig {
            retention_ms: Some(0),
            retention_bytes: None,
            ..TopicConfig::default()
        },
    }));
    assert!(
        matches!(refused, Err(ApiError::InvalidTopicConfig { .. })),
        "{refused:?}"
    );

    let Response::ListTopics(list) = wire
        .call(Request::ListTopics(ListTopicsRequest {
            include_internal: false,
        }))
        .unwrap()
    else {
        panic!()
    };
    let names: Vec<_> = list.topics.into_iter().map(|topic| topic.name).collect();
    assert_eq!(
        names,
        vec!["taken".to_string()],
        "only the valid topic exists"
    );
    // The default replication factor (3) is capped to the one node.
    let Response::CreateTopic(created) = create(&mut wire, "capped", 2, None).unwrap() else {
        panic!()
    };
    assert!(created
        .topic
        .partitions
        .iter()
        .all(|p| p.replicas.len() == 1));
}

#[test]
fn fetch_and_offset_refusals_are_typed() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    wire.produce("t", 0, &[b"a"]).unwrap();
    let end = high_watermark(&mut wire, "t", 0);
    let beyond = wire.fetch("t", 0, end.plus(5), 0);
    assert_eq!(
        beyond,
        Err(ApiError::OffsetOutOfRange {
            requested: end.plus(5),
            log_start: Offset(0),
            high_watermark: end
        })
    );
    // A multi-partition fetch answers each partition on its own.
    let reply = wire
        .call(Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![
                FetchPartition {
                    topic: "t".into(),
                    partition: 0,
                    offset: Offset(0),
                    max_bytes: 1 << 20,
                },
                FetchPartition {
                    topic: "missing".into(),
                    partition: 0,
                    offset: Offset(0),
                    max_bytes: 1 << 20,
                },
                FetchPartition {
                    topic: "t".into(),
                    partition: 9,
                    offset: Offset(0),
                    max_bytes: 1 << 20,
                },
            ],
        }))
        .unwrap();
    let Response::Fetch(fetched) = reply else {
        panic!()
    };
    assert!(fetched.partitions[0].result.is_ok());
    assert!(matches!(
        fetched.partitions[1].result,
        Err(ApiError::UnknownTopic { .. })
    ));
    assert!(matches!(
        fetched.partitions[2].result,
        Err(ApiError::UnknownPartition { .. })
    ));
    let refused = wire.call(Request::ListOffsets(ListOffsetsRequest {
        topic: "missing".into(),
        partition: 0,
        spec: OffsetSpec::Latest,
    }));
    assert!(matches!(refused, Err(ApiError::UnknownTopic { .. })));
    let refused = wire.call(Request::DescribeTopic(DescribeTopicRequest {
        name: "missing".into(),
    }));
    assert!(matches!(refused, Err(ApiError::UnknownTopic { .. })));
    still_serves(&node);
}

#[test]
fn too_many_connections_are_refused_with_one_frame() {
    let node = TestNode::start_with(&["--set", "limits.connections_max=2"]);
    let mut first = node.wire();
    let mut second = node.wire();
    for wire in [&mut first, &mut second] {
        assert!(wire
            .call(Request::ListTopics(ListTopicsRequest {
                include_internal: false
            }))
            .is_ok());
    }
    let mut third = node.wire();
    let reply = third.recv();
    assert_eq!(reply.result, Err(ApiError::TooManyConnections { max: 2 }));
    assert!(third.is_closed());
    // Closing one makes room again.
    drop(first);
    assert!(support::eventually(
        std::time::Duration::from_secs(5),
        || {
            let mut wire = node.wire();
            let correlation_id = wire.send(Request::ListTopics(ListTopicsRequest {
                include_internal: false,
            }));
            matches!(wire.try_recv(), Some(reply) if reply.correlation_id == correlation_id && reply.result.is_ok())
        }
    ));
    assert!(second
        .call(Request::ListTopics(ListTopicsRequest {
            include_internal: false
        }))
        .is_ok());
}
