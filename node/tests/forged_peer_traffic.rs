//! Issue 14, item 1: a plain TCP client that claims to be a peer changes nothing.
//!
//! Three real `cairn node` processes share a cluster secret. A topic gets acknowledged
//! (`acks=all`) records. Then a client that does not hold the secret connects to every node and
//! replays each forged replication message the issue reproduced, after every form of hello it
//! could try (the version 1 hello the nodes used to trust, a version 2 hello without a proof,
//! with an empty proof, with a wrong proof):
//!
//! - an `Append` to `__meta` carrying a `DeleteTopic` record (delete the topic cluster-wide);
//! - an `Append` injecting a record into the user partition at its current epoch;
//! - an `Append` of a newer epoch whose batch at offset 0 differs (followers would truncate
//!   every acknowledged record);
//! - an `Append` of epoch 2^64-1 to both logs (the epoch bomb that left a partition leaderless).
//!
//! Afterwards the topic still exists, every acknowledged record reads back exactly, nothing
//! else appears, and the partition still has a leader that accepts and commits produces. Each
//! node's sled files are then compared with what was acknowledged.

mod support;

use bytes::Bytes;
use cairn_node::meta::MetaRecord;
use cairn_protocol::messages::{DescribeTopicRequest, PartitionDescription};
use cairn_protocol::peer::{
    decode_peer_challenge, encode_peer_frame, encode_peer_hello, encode_peer_proof,
    PartitionPeerMessage, PeerFrame, PeerHello, PeerHelloBody, PeerLogStart, PeerProof,
    PeerProofBody, PeerWireMessage, ReplicaKey, PEER_NONCE_BYTES, PEER_PROTOCOL_VERSION,
};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset, Request, Response};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::cluster::{partition_logs, replica_log, values_of, Guarded, TestCluster};
use support::{batch_of, eventually, Wire};

const TOPIC: &str = "ledger";

fn describe(wire: &mut Wire) -> Result<PartitionDescription, ApiError> {
    match wire.call(Request::DescribeTopic(DescribeTopicRequest {
        name: TOPIC.to_string(),
    }))? {
        Response::DescribeTopic(mut response) => Ok(response.partitions.remove(0)),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// The node that leads the partition (by its own replica's word), waiting for one.
fn leader(cluster: &TestCluster) -> Option<(u32, PartitionDescription)> {
    let mut found = None;
    eventually(Duration::from_secs(20), || {
        for node in &cluster.nodes {
            let mut wire = node.wire();
            if let Ok(description) = describe(&mut wire) {
                if description.leader == Some(NodeId(node.node_id)) {
                    found = Some((node.node_id, description));
                    return true;
                }
            }
        }
        false
    });
    found
}

/// Produces `values` (one batch) to the leader with `acks=all`, retrying a few times while
/// leadership settles; the values are acknowledged once this returns.
fn produce_acked(cluster: &TestCluster, values: &[&[u8]]) {
    let mut last = None;
    for _ in 0..50 {
        let Some((leader, _)) = leader(cluster) else {
            continue;
        };
        match cluster.node(leader).wire().produce(TOPIC, 0, values) {
            Ok(_) => return,
            Err(error) => last = Some(error),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("produce never acknowledged: {last:?}");
}

fn values_read(wire: &mut Wire) -> Vec<Vec<u8>> {
    wire.read_all(TOPIC, 0, Offset(0))
        .into_iter()
        .map(|record| record.value.as_deref().unwrap_or_default().to_vec())
        .collect()
}

/// One frame on a raw socket (4-byte big-endian length, then the payload).
fn send_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

/// Reads one frame, or `None` once the node closed the connection (or after the timeout).
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

/// The hello forms a client without the secret can try.
#[derive(Debug, Clone, Copy)]
enum Hello {
    /// `{peer_hello: {version: 1, from}}`, which nodes trusted before the handshake existed.
    Version1,
    /// A version 2 hello, then peer frames at once, without waiting for the challenge.
    NoProof,
    /// A version 2 hello, the challenge read, then an empty proof.
    EmptyProof,
    /// A version 2 hello, the challenge read, then 32 bytes that are not the proof.
    WrongProof,
}

/// Connects to `address` claiming to be node `from`, tries `hello`, then sends `frames`.
/// Returns whether the node closed the connection (it must).
fn forge(address: SocketAddr, to: u32, from: u32, hello: Hello, frames: &[Bytes]) -> bool {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let hello_bytes = match hello {
        Hello::Version1 => {
            // Written by hand: the version 1 struct no longer exists.
            let mut bytes = vec![0x81, 0xaa];
            bytes.extend_from_slice(b"peer_hello");
            bytes.extend_from_slice(&[0x82, 0xa7]);
            bytes.extend_from_slice(b"version");
            bytes.extend_from_slice(&[0x01, 0xa4]);
            bytes.extend_from_slice(b"from");
            bytes.push(from as u8);
            Bytes::from(bytes)
        }
        _ => encode_peer_hello(&PeerHello {
            peer_hello: PeerHelloBody {
                version: PEER_PROTOCOL_VERSION,
                from: NodeId(from),
                to: NodeId(to),
                nonce: Bytes::from(vec![0x5a; PEER_NONCE_BYTES]),
            },
        }),
    };
    // A write may fail once the node has closed; that is the expected outcome, not an error.
    let _ = send_frame(&mut stream, &hello_bytes);
    match hello {
        Hello::Version1 | Hello::NoProof => {}
        Hello::EmptyProof | Hello::WrongProof => {
            let challenge = read_frame(&mut stream).expect("a version 2 hello gets a challenge");
            assert!(decode_peer_challenge(&challenge).is_some());
            let mac = match hello {
                Hello::WrongProof => Bytes::from(vec![0x42; 32]),
                _ => Bytes::new(),
            };
            let proof = encode_peer_proof(&PeerProof {
                peer_proof: PeerProofBody { mac },
            });
            let _ = send_frame(&mut stream, &proof);
        }
    }
    for frame in frames {
        let _ = send_frame(&mut stream, frame);
    }
    // Whatever came back (a challenge at most), the node must end the connection.
    for _ in 0..4 {
        if read_frame(&mut stream).is_none() {
            return true;
        }
    }
    false
}

fn frame(replica: ReplicaKey, message: PeerWireMessage) -> Bytes {
    encode_peer_frame(&PeerFrame {
        messages: vec![PartitionPeerMessage { replica, message }],
    })
}

/// The forged messages, for every key the user partition could have (the attacker does not
/// know the topic id, the `__meta` offset of its creation, so it tries them all).
fn forged_frames(epoch: Epoch, log_end: Offset) -> Vec<Bytes> {
    let user_logs: Vec<ReplicaKey> = (0..64)
        .map(|topic| ReplicaKey::Partition {
            topic,
            partition: 0,
        })
        .collect();
    let mut frames = Vec::new();
    // Delete the topic cluster-wide through `__meta`, at a newer epoch, from offset 0.
    let delete = MetaRecord::DeleteTopic {
        name: TOPIC.to_string(),
    }
    .to_batch(1_700_000_000_000)
    .stamped(Offset(0), Epoch(1_000));
    frames.push(frame(
        ReplicaKey::Meta,
        PeerWireMessage::Append {
            epoch: Epoch(1_000),
            prev_offset: Offset(0),
            prev_epoch: Epoch(0),
            batches: vec![delete.into_bytes()],
            commit: Offset(1),
            sent_at_ms: 0,
            log_start: None,
        },
    ));
    for &log in &user_logs {
        // Inject a record at the end of the log, at the leader's own epoch.
        let injected = batch_of(&[b"forged-inject"]).stamped(log_end, epoch);
        frames.push(frame(
            log,
            PeerWireMessage::Append {
                epoch,
                prev_offset: log_end,
                prev_epoch: epoch,
                batches: vec![injected.into_bytes()],
                commit: log_end.plus(1),
                sent_at_ms: 0,
                log_start: None,
            },
        ));
        // Make followers truncate every acknowledged record: a newer epoch whose batch at
        // offset 0 differs from theirs.
        let newer = Epoch(epoch.0 + 1);
        let replacement = batch_of(&[b"forged-truncate"]).stamped(Offset(0), newer);
        frames.push(frame(
            log,
            PeerWireMessage::Append {
                epoch: newer,
                prev_offset: Offset(0),
                prev_epoch: Epoch(0),
                batches: vec![replacement.into_bytes()],
                commit: Offset(1),
                sent_at_ms: 0,
                log_start: None,
            },
        ));
        // Make followers drop their whole log: a log start far above the high watermark.
        let far = Offset(1_000_000);
        let reset = batch_of(&[b"forged-reset"]).stamped(far, newer);
        frames.push(frame(
            log,
            PeerWireMessage::Append {
                epoch: newer,
                prev_offset: far,
                prev_epoch: newer,
                batches: vec![reset.into_bytes()],
                commit: far.plus(1),
                sent_at_ms: 0,
                log_start: Some(PeerLogStart {
                    offset: far,
                    epoch: newer,
                }),
            },
        ));
    }
    // The epoch bomb, to both logs.
    for log in user_logs.iter().copied().chain([ReplicaKey::Meta]) {
        frames.push(frame(
            log,
            PeerWireMessage::Append {
                epoch: Epoch(u64::MAX),
                prev_offset: Offset(0),
                prev_epoch: Epoch(0),
                batches: Vec::new(),
                commit: Offset(0),
                sent_at_ms: 0,
                log_start: None,
            },
        ));
    }
    frames
}

#[test]
fn forged_peer_traffic_from_a_plain_client_changes_nothing() {
    let mut guarded = Guarded(TestCluster::start(3, &[]));
    let cluster = &guarded.0;
    cluster
        .node(1)
        .wire()
        .create_topic(TOPIC, 1)
        .expect("create the topic");
    let mut acked: Vec<Vec<u8>> = Vec::new();
    for round in 0..7u32 {
        let value = format!("acked-{round}").into_bytes();
        produce_acked(cluster, &[&value]);
        acked.push(value);
    }
    let (leader_id, description) = leader(cluster).expect("a leader");
    assert_eq!(values_read(&mut cluster.node(leader_id).wire()), acked);

    let frames = forged_frames(description.leader_epoch, description.log_end);
    for node in &cluster.nodes {
        for hello in [
            Hello::Version1,
            Hello::NoProof,
            Hello::EmptyProof,
            Hello::WrongProof,
        ] {
            // Claim to be each of the other nodes (the leader included).
            for from in (1..=3).filter(|from| *from != node.node_id) {
                let closed = forge(node.address(), node.node_id, from, hello, &frames);
                assert!(
                    closed,
                    "node {} kept a forged {hello:?} connection open",
                    node.node_id
                );
            }
        }
    }

    // Nothing changed: the topic exists on every node, with exactly the acknowledged records.
    for node in &cluster.nodes {
        assert!(
            describe(&mut node.wire()).is_ok(),
            "node {} lost the topic",
            node.node_id
        );
    }
    let (leader_id, after) = leader(cluster).expect("the partition still has a leader");
    assert!(after.leader_epoch < Epoch(1_000), "{after:?}");
    assert_eq!(values_read(&mut cluster.node(leader_id).wire()), acked);
    // And it still takes writes, which commit on a majority.
    for round in 7..10u32 {
        let value = format!("acked-{round}").into_bytes();
        produce_acked(cluster, &[&value]);
        acked.push(value);
    }
    let (leader_id, _) = leader(cluster).expect("a leader");
    assert_eq!(values_read(&mut cluster.node(leader_id).wire()), acked);
    // Wait (bounded) until every replica holds everything, so the files can be compared.
    let caught_up = eventually(Duration::from_secs(20), || {
        cluster.nodes.iter().all(|node| {
            describe(&mut node.wire()).is_ok_and(|own| own.log_end >= after.high_watermark)
        })
    });
    assert!(caught_up, "a replica did not catch up");

    // The secret never reaches a log.
    let secret = std::fs::read_to_string(&cluster.secret_file).expect("the secret file");
    for node in &cluster.nodes {
        assert!(
            !node.logs().contains(secret.trim()),
            "node {} logged the secret",
            node.node_id
        );
    }

    // Every replica's sled files hold the acknowledged values and nothing forged.
    for node in &mut guarded.0.nodes {
        node.terminate();
    }
    for node in &guarded.0.nodes {
        let mut holders = 0;
        for log in partition_logs(node) {
            let values: Vec<Vec<u8>> = values_of(&replica_log(node, &log))
                .into_iter()
                .map(|(_, value)| value)
                .collect();
            // The topic's log holds exactly what was acknowledged; any other (`__offsets`)
            // holds nothing written here.
            if values.iter().any(|value| value.starts_with(b"acked-")) {
                assert_eq!(values, acked, "node {} log {log}", node.node_id);
                holders += 1;
            }
            assert!(
                !values.iter().any(|value| value.starts_with(b"forged")),
                "node {} log {log} holds a forged record",
                node.node_id
            );
        }
        assert_eq!(holders, 1, "node {}", node.node_id);
    }
}

/// A clustered node without a secret says at start-up what that means.
#[test]
fn a_clustered_node_without_a_secret_warns_at_start_up() {
    // Its only seed is an address nobody listens on: the node is clustered (it need not
    // become ready; the warning comes before that).
    let mut node = support::TestNode::unstarted(1, None, &["--seeds", "127.0.0.1:9"]);
    node.launch();
    let warned = eventually(Duration::from_secs(20), || {
        node.logs().contains(
            "no cluster secret configured: peer traffic accepted only from loopback, \
             unauthenticated; set --cluster-secret-file",
        )
    });
    assert!(warned, "{}", node.logs());
}
