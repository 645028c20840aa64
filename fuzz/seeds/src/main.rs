//! Writes the seed corpus: valid encodings of every request type, of record batches (keys,
//! headers, control markers, producer ids) and of every peer frame, so the fuzzer starts from
//! inputs that reach deep into each decoder instead of guessing MessagePack field names.
//!
//! `cargo run -p cairn-fuzz-seeds` (from `fuzz/`) writes `fuzz/corpus/<target>/seed-<name>`, replacing
//! earlier seeds of the same name and leaving every other file (found inputs, regressions)
//! alone. The encodings come from the protocol crate's own encoders, so the seeds follow the
//! wire format when it changes.

use bytes::Bytes;
use cairn_protocol::batch::{Header, RecordBatch, RecordBatchBuilder};
use cairn_protocol::frame::{encode_request, RequestFrame, LENGTH_PREFIX_BYTES};
use cairn_protocol::group::{
    ConsumerGroupHeartbeatRequest, DeleteGroupRequest, DescribeGroupRequest,
    FindCoordinatorRequest, ListGroupsRequest, MemberEpoch, OffsetCommitPartition,
    OffsetCommitRequest, OffsetFetchRequest, OffsetResetTarget, ResetGroupOffsetsRequest,
    TopicPartitions,
};
use cairn_protocol::messages::*;
use cairn_protocol::peer::*;
use cairn_protocol::{Compression, Epoch, NodeId, Offset, Record};
use std::path::{Path, PathBuf};

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let requests = requests();
    let batches = batches();

    let mut envelope = Seeds::new(&corpus, "request_envelope");
    for frame in &requests {
        envelope.write(frame.request.kind(), &encode_request(frame));
    }

    let mut codec = Seeds::new(&corpus, "frame_codec");
    let every_request: Vec<Bytes> = requests.iter().map(encode_request).collect();
    // Byte by byte, then in pieces of 7 and 200 bytes.
    codec.write("every-request-bytewise", &stream(&[1], &every_request));
    codec.write("every-request-7-200", &stream(&[7, 200], &every_request));
    let first = [encode_peer_hello(&hello()), every_request[0].clone()];
    codec.write("peer-hello-first", &stream(&[3], &first));
    codec.write("empty-frame", &stream(&[256], &[Bytes::new()]));
    let mut oversized = stream(&[2], &[]);
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());
    codec.write("oversized-length", &oversized);

    // A mode byte first: 0 has the target repair length and checksum, 1 keeps them.
    let mut batch_seeds = Seeds::new(&corpus, "record_batch");
    for (name, batch) in &batches {
        batch_seeds.write(name, &[&[0], &batch.bytes()[..]].concat());
    }
    let mut fetched = vec![1u8];
    for (_, batch) in &batches {
        fetched.extend_from_slice(batch.bytes());
    }
    batch_seeds.write("fetched-batches", &fetched);

    let mut peer = Seeds::new(&corpus, "peer_message");
    peer.write("hello", &encode_peer_hello(&hello()));
    peer.write(
        "challenge",
        &encode_peer_challenge(&PeerChallenge {
            peer_challenge: PeerChallengeBody {
                nonce: Bytes::from_static(&[0x5a; PEER_NONCE_BYTES]),
                mac: Bytes::from_static(&[0xa5; PEER_MAC_BYTES]),
            },
        }),
    );
    peer.write(
        "proof",
        &encode_peer_proof(&PeerProof {
            peer_proof: PeerProofBody {
                mac: Bytes::from_static(&[0x3c; PEER_MAC_BYTES]),
            },
        }),
    );
    for (name, message) in peer_messages(&batches) {
        let frame = PeerFrame {
            messages: vec![PartitionPeerMessage {
                replica: ReplicaKey::Partition {
                    topic: 4,
                    partition: 0,
                },
                message,
            }],
        };
        peer.write(name, &encode_peer_frame(&frame));
    }
}

/// One target's seed folder.
struct Seeds {
    folder: PathBuf,
}

impl Seeds {
    fn new(corpus: &Path, target: &str) -> Seeds {
        let folder = corpus.join(target);
        std::fs::create_dir_all(&folder).expect("the corpus folder can be created");
        Seeds { folder }
    }

    fn write(&mut self, name: &str, bytes: &[u8]) {
        let path = self.folder.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).expect("a seed can be written");
    }
}

/// A `frame_codec` input: the chunk sizes (each 1 to 256), then the frames with their prefix.
fn stream(chunks: &[usize], frames: &[Bytes]) -> Vec<u8> {
    assert!((1..=8).contains(&chunks.len()));
    let mut input = vec![(chunks.len() - 1) as u8];
    input.extend(chunks.iter().map(|&size| (size - 1) as u8));
    for frame in frames {
        let mut prefixed = Vec::with_capacity(LENGTH_PREFIX_BYTES + frame.len());
        prefixed.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        prefixed.extend_from_slice(frame);
        input.extend_from_slice(&prefixed);
    }
    input
}

fn hello() -> PeerHello {
    PeerHello {
        peer_hello: PeerHelloBody {
            version: PEER_PROTOCOL_VERSION,
            from: NodeId(2),
            to: NodeId(1),
            nonce: Bytes::from_static(&[0x11; PEER_NONCE_BYTES]),
        },
    }
}

/// Every request type once, with each optional field present and lists of two.
fn requests() -> Vec<RequestFrame> {
    let topics = || Some(vec!["orders".to_string(), "__meta".to_string()]);
    let owned = || {
        Some(vec![TopicPartitions {
            topic: "orders".into(),
            partitions: vec![0, 2],
        }])
    };
    let produce_batch = batches()[0].1.bytes().clone();
    let requests = vec![
        Request::Handshake(HandshakeRequest {
            client_id: "cairn-cli".into(),
            min_version: 1,
            max_version: 1,
        }),
        Request::Metadata(MetadataRequest { topics: topics() }),
        Request::CreateTopic(CreateTopicRequest {
            name: "orders".into(),
            partitions: 3,
            replication_factor: Some(3),
            config: TopicConfig {
                retention_ms: Some(86_400_000),
                retention_bytes: Some(1 << 30),
            },
        }),
        Request::DeleteTopic(DeleteTopicRequest {
            name: "orders".into(),
        }),
        Request::ListTopics(ListTopicsRequest {
            include_internal: true,
        }),
        Request::DescribeTopic(DescribeTopicRequest {
            name: "orders".into(),
        }),
        Request::Produce(ProduceRequest {
            topic: "orders".into(),
            partition: 1,
            acks: Acks::Leader,
            timeout_ms: 30_000,
            batch: produce_batch,
        }),
        Request::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![
                FetchPartition {
                    topic: "orders".into(),
                    partition: 0,
                    offset: Offset(17),
                    max_bytes: 65_536,
                },
                FetchPartition {
                    topic: "orders".into(),
                    partition: 2,
                    offset: Offset(0),
                    max_bytes: 65_536,
                },
            ],
        }),
        Request::ListOffsets(ListOffsetsRequest {
            topic: "orders".into(),
            partition: 0,
            spec: OffsetSpec::Timestamp(1_700_000_000_000),
        }),
        Request::ClusterStatus(ClusterStatusRequest {
            include_internal: true,
        }),
        Request::InitProducerId(InitProducerIdRequest {}),
        Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
            group_id: "billing".into(),
            member_id: "member-1".into(),
            member_epoch: MemberEpoch(3),
            instance_id: Some("instance-1".into()),
            rebalance_timeout_ms: 60_000,
            session_timeout_ms: 45_000,
            subscribed_topics: topics(),
            assignor: Some("range".into()),
            owned: owned(),
        }),
        Request::OffsetCommit(OffsetCommitRequest {
            group_id: "billing".into(),
            member_id: "member-1".into(),
            member_epoch: MemberEpoch(3),
            offsets: vec![OffsetCommitPartition {
                topic: "orders".into(),
                partition: 2,
                offset: Offset(42),
                metadata: Some("note".into()),
            }],
        }),
        Request::OffsetFetch(OffsetFetchRequest {
            group_id: "billing".into(),
            member: Some(("member-1".into(), MemberEpoch(3))),
            partitions: owned(),
        }),
        Request::ListGroups(ListGroupsRequest {}),
        Request::DescribeGroup(DescribeGroupRequest {
            group_id: "billing".into(),
        }),
        Request::DeleteGroup(DeleteGroupRequest {
            group_id: "billing".into(),
        }),
        Request::ResetGroupOffsets(ResetGroupOffsetsRequest {
            group_id: "billing".into(),
            topic: "orders".into(),
            partitions: Some(vec![0, 1]),
            to: OffsetResetTarget::Offset(Offset(5)),
        }),
        Request::FindCoordinator(FindCoordinatorRequest {
            group_id: "billing".into(),
        }),
        Request::AlterTopic(AlterTopicRequest {
            name: "orders".into(),
            partitions: Some(6),
            configs: vec![
                ConfigChange {
                    key: "retention_ms".into(),
                    value: Some("3600000".into()),
                },
                ConfigChange {
                    key: "retention_bytes".into(),
                    value: None,
                },
            ],
        }),
    ];
    for request in &requests {
        seeded(request);
    }
    requests
        .into_iter()
        .zip(1..)
        .map(|(request, correlation_id)| RequestFrame {
            version: 1,
            correlation_id,
            request,
        })
        .collect()
}

/// Names every request type, so that adding one fails to compile here until it has a seed in
/// [`requests`].
fn seeded(request: &Request) {
    match request {
        Request::Handshake(_)
        | Request::Metadata(_)
        | Request::CreateTopic(_)
        | Request::DeleteTopic(_)
        | Request::ListTopics(_)
        | Request::DescribeTopic(_)
        | Request::Produce(_)
        | Request::Fetch(_)
        | Request::ListOffsets(_)
        | Request::ClusterStatus(_)
        | Request::InitProducerId(_)
        | Request::ConsumerGroupHeartbeat(_)
        | Request::OffsetCommit(_)
        | Request::OffsetFetch(_)
        | Request::ListGroups(_)
        | Request::DescribeGroup(_)
        | Request::DeleteGroup(_)
        | Request::ResetGroupOffsets(_)
        | Request::FindCoordinator(_)
        | Request::AlterTopic(_) => {}
    }
}

/// Batches of each kind the node stores: a producer's, an idempotent producer's and a new
/// leader's epoch marker, stamped as a leader stamps them.
fn batches() -> Vec<(&'static str, RecordBatch)> {
    let mut plain = RecordBatchBuilder::new(1_700_000_000_000);
    plain.push(
        &Record::new("value-0")
            .with_key("key-0")
            .with_header("trace", "abc")
            .with_timestamp_ms(1_700_000_000_005),
    );
    plain.push(&Record {
        key: None,
        value: Some(Bytes::from_static(b"value-1")),
        headers: vec![Header {
            key: "absent".into(),
            value: None,
        }],
        timestamp_ms: Some(1_699_999_999_990),
    });
    plain.push(&Record::new(Bytes::new()).with_key(""));
    let mut idempotent = RecordBatchBuilder::new(1_700_000_000_000).producer(300, 2, 41);
    idempotent.push(&Record::new("v").with_key("k"));
    idempotent.push(&Record::new("w").with_key("k"));
    // One compressed batch per codec: 40 similar records, so that every codec shrinks them
    // (a batch that would not shrink is built uncompressed).
    let compressed = |compression: Compression| {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        for index in 0..40 {
            builder.push(
                &Record::new(format!("compressed value {index}"))
                    .with_key(format!("key-{}", index % 3))
                    .with_header("codec", compression.name()),
            );
        }
        let batch = builder.build_compressed(compression);
        assert_eq!(batch.compression(), Ok(compression));
        batch.stamped(Offset(50), Epoch(4))
    };
    vec![
        ("keys-headers", plain.build().stamped(Offset(40), Epoch(3))),
        (
            "producer-id",
            idempotent.build().stamped(Offset(43), Epoch(3)),
        ),
        (
            "control-marker",
            RecordBatchBuilder::control_marker(1_700_000_000_100).stamped(Offset(45), Epoch(4)),
        ),
        ("gzip", compressed(Compression::Gzip)),
        ("snappy", compressed(Compression::Snappy)),
        ("lz4", compressed(Compression::Lz4)),
        ("zstd", compressed(Compression::Zstd)),
    ]
}

/// Every peer message kind once; the append carries real batches and a log start.
fn peer_messages(batches: &[(&'static str, RecordBatch)]) -> Vec<(&'static str, PeerWireMessage)> {
    vec![
        (
            "lease-request",
            PeerWireMessage::LeaseRequest {
                epoch: Epoch(7),
                last_log_epoch: Epoch(6),
                log_end: Offset(100),
            },
        ),
        (
            "lease-response",
            PeerWireMessage::LeaseResponse {
                epoch: Epoch(7),
                granted: true,
                promised_epoch: Epoch(7),
            },
        ),
        (
            "lease-probe",
            PeerWireMessage::LeaseProbe {
                epoch: Epoch(7),
                last_log_epoch: Epoch(6),
                log_end: Offset(100),
            },
        ),
        (
            "lease-probe-response",
            PeerWireMessage::LeaseProbeResponse {
                epoch: Epoch(7),
                granted: false,
                promised_epoch: Epoch(8),
            },
        ),
        (
            "append",
            PeerWireMessage::Append {
                epoch: Epoch(4),
                prev_offset: Offset(40),
                prev_epoch: Epoch(3),
                batches: batches
                    .iter()
                    .map(|(_, batch)| batch.bytes().clone())
                    .collect(),
                commit: Offset(40),
                sent_at_ms: 12_345,
                log_start: Some(PeerLogStart {
                    offset: Offset(40),
                    epoch: Epoch(3),
                }),
            },
        ),
        (
            "append-response-ok",
            PeerWireMessage::AppendResponse {
                epoch: Epoch(4),
                sent_at_ms: 12_345,
                result: PeerAppendResult::Ok {
                    log_end: Offset(46),
                    durable_end: Offset(44),
                },
            },
        ),
        (
            "append-response-diverged",
            PeerWireMessage::AppendResponse {
                epoch: Epoch(4),
                sent_at_ms: 12_345,
                result: PeerAppendResult::Diverged {
                    epoch: Epoch(2),
                    end_offset: Offset(30),
                },
            },
        ),
        (
            "append-response-stale",
            PeerWireMessage::AppendResponse {
                epoch: Epoch(4),
                sent_at_ms: 12_345,
                result: PeerAppendResult::StaleEpoch {
                    promised_epoch: Epoch(5),
                },
            },
        ),
    ]
}
