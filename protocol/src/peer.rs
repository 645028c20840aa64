//! Node-to-node replication traffic: the wire form of the replica engine's peer messages.
//!
//! A node opens one TCP connection to each peer, on the peer's ordinary listener, and sends
//! frames one way only (answers travel on the answering node's own connection back). The
//! first frame on such a connection is a [`PeerHello`]; a client's first frame is a
//! [`crate::RequestFrame`], and the two cannot be mistaken for each other because a hello has
//! no `version`/`correlation_id` header (and a request frame no `peer_hello`).
//!
//! A hello is a claim, not an identity (DESIGN 10). Before anything is read as a peer frame
//! the two nodes prove to each other that they hold the cluster secret: the hello carries the
//! connecting node's nonce, the acceptor answers once with a [`PeerChallenge`] (its own nonce
//! and its proof), and the connector sends a [`PeerProof`]. These are the only frames the
//! acceptor ever writes on the connection. The proofs themselves (HMAC over both nonces and
//! both node ids) are computed in the node crate; this crate only carries bytes.
//!
//! Every later frame is a [`PeerFrame`]: a batch of messages for many partitions, so one
//! write carries the heartbeats and appends of every partition the two nodes share.
//!
//! Frames use the same length prefix as client frames ([`crate::frame::FrameCodec`]) and are
//! encoded with rmp-serde as maps, so a field added later is skipped by an older peer.
//! Record batches travel as binary (never as arrays of integers); the receiver validates each
//! one (length, checksum, records) before it reaches the replica.
//!
//! These are wire types only. The replica engine's own `PeerMessage` stays the type the
//! state machine speaks; converting between the two lives in the node crate.

use crate::ids::{Epoch, NodeId, Offset};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The version of the peer protocol this build speaks; a hello with another is refused.
/// Version 2 added the authenticating handshake (nonces, challenge, proof); version 3 names
/// replicas by [`ReplicaKey`] instead of their log names.
pub const PEER_PROTOCOL_VERSION: u16 = 3;

/// Bytes of each handshake nonce; a nonce of another length is refused.
pub const PEER_NONCE_BYTES: usize = 32;

/// Bytes of each handshake proof (an HMAC-SHA-256 tag).
pub const PEER_MAC_BYTES: usize = 32;

/// The first frame of a peer connection: who is sending, to whom, and its challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub peer_hello: PeerHelloBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHelloBody {
    pub version: u16,
    pub from: NodeId,
    /// The node the connector means to reach; the acceptor refuses a hello meant for another.
    /// Defaulted so that a version 1 hello (which lacks it) still decodes as a hello and is
    /// refused for its version rather than misread as a client request.
    #[serde(default)]
    pub to: NodeId,
    /// The connector's fresh random challenge, [`PEER_NONCE_BYTES`] long.
    #[serde(default)]
    pub nonce: Bytes,
}

/// The acceptor's one answer to a hello: its own nonce, and its proof over both nonces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerChallenge {
    pub peer_challenge: PeerChallengeBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerChallengeBody {
    pub nonce: Bytes,
    /// Empty when the acceptor has no cluster secret (a loopback development cluster).
    pub mac: Bytes,
}

/// The connector's proof, after it checked the acceptor's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProof {
    pub peer_proof: PeerProofBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProofBody {
    /// Empty when the connector has no cluster secret (a loopback development cluster).
    pub mac: Bytes,
}

/// One write's worth of replication messages from one node, for many partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerFrame {
    pub messages: Vec<PartitionPeerMessage>,
}

/// A message for one partition replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionPeerMessage {
    pub replica: ReplicaKey,
    pub message: PeerWireMessage,
}

/// Which partition replica a peer message is for: typed, so a receiver routes a message by
/// two integers instead of parsing a log name per message, and a sender copies it instead of
/// allocating one. On the wire it is an array: `[]` for `__meta`, `[topic id, partition]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplicaKey {
    /// The metadata partition, `__meta`.
    Meta,
    /// Partition `partition` of the topic whose id is `topic` (the `__meta` offset of its
    /// `CreateTopic` record, so a re-created topic never shares a key with the deleted one).
    Partition { topic: u64, partition: u32 },
}

impl std::fmt::Display for ReplicaKey {
    /// The replica's log name, as storage and logs call it (`__meta`, `t<topic id>-<n>`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaKey::Meta => f.write_str("__meta"),
            ReplicaKey::Partition { topic, partition } => write!(f, "t{topic}-{partition}"),
        }
    }
}

impl Serialize for ReplicaKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            ReplicaKey::Meta => serializer.serialize_seq(Some(0))?.end(),
            ReplicaKey::Partition { topic, partition } => {
                let mut seq = serializer.serialize_seq(Some(2))?;
                seq.serialize_element(topic)?;
                seq.serialize_element(partition)?;
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ReplicaKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = ReplicaKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[] for __meta or [topic id, partition]")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ReplicaKey, A::Error> {
                use serde::de::Error;
                let Some(topic) = seq.next_element::<u64>()? else {
                    return Ok(ReplicaKey::Meta);
                };
                let partition = seq
                    .next_element::<u32>()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(ReplicaKey::Partition { topic, partition })
            }
        }
        deserializer.deserialize_seq(KeyVisitor)
    }
}

/// The wire twin of the replica engine's `PeerMessage`; see it for what each field means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerWireMessage {
    LeaseRequest {
        epoch: Epoch,
        last_log_epoch: Epoch,
        log_end: Offset,
    },
    LeaseResponse {
        epoch: Epoch,
        granted: bool,
        promised_epoch: Epoch,
    },
    LeaseProbe {
        epoch: Epoch,
        last_log_epoch: Epoch,
        log_end: Offset,
    },
    LeaseProbeResponse {
        epoch: Epoch,
        granted: bool,
        promised_epoch: Epoch,
    },
    Append {
        epoch: Epoch,
        prev_offset: Offset,
        prev_epoch: Epoch,
        /// Whole stamped batches, each exactly as stored.
        batches: Vec<Bytes>,
        commit: Offset,
        /// The leader's monotonic send time, echoed back; meaningless to anyone else.
        sent_at_ms: u64,
        /// Only on an append at a log start that retention moved (issue 14). Left out of the
        /// encoding when absent, so every other append keeps its bytes, and an older peer
        /// skips it (it then answers `Diverged`, as it did before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log_start: Option<PeerLogStart>,
    },
    AppendResponse {
        epoch: Epoch,
        sent_at_ms: u64,
        result: PeerAppendResult,
    },
}

/// The leader's log start and the epoch its history gives there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLogStart {
    pub offset: Offset,
    pub epoch: Epoch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAppendResult {
    Ok {
        log_end: Offset,
        durable_end: Offset,
    },
    Diverged {
        epoch: Epoch,
        end_offset: Offset,
    },
    StaleEpoch {
        promised_epoch: Epoch,
    },
}

pub fn encode_peer_hello(hello: &PeerHello) -> Bytes {
    crate::frame::encode_named(hello).expect("peer hellos always serialize")
}

/// Reads a hello; `None` if the frame is not one (for example a client's request frame).
pub fn decode_peer_hello(bytes: &[u8]) -> Option<PeerHello> {
    rmp_serde::from_slice(bytes).ok()
}

pub fn encode_peer_challenge(challenge: &PeerChallenge) -> Bytes {
    crate::frame::encode_named(challenge).expect("peer challenges always serialize")
}

/// Reads the acceptor's challenge; `None` if the frame is not one.
pub fn decode_peer_challenge(bytes: &[u8]) -> Option<PeerChallenge> {
    rmp_serde::from_slice(bytes).ok()
}

pub fn encode_peer_proof(proof: &PeerProof) -> Bytes {
    crate::frame::encode_named(proof).expect("peer proofs always serialize")
}

/// Reads the connector's proof; `None` if the frame is not one.
pub fn decode_peer_proof(bytes: &[u8]) -> Option<PeerProof> {
    rmp_serde::from_slice(bytes).ok()
}

pub fn encode_peer_frame(frame: &PeerFrame) -> Bytes {
    crate::frame::encode_named(frame).expect("peer frames always serialize")
}

pub fn decode_peer_frame(bytes: &[u8]) -> Result<PeerFrame, String> {
    rmp_serde::from_slice(bytes).map_err(|error| error.to_string())
}

/// Writes a new random cluster secret to `path` (32 random bytes as 64 hex digits, readable by
/// its owner only), unless a file is already there, which is kept: restarting a local cluster
/// on its data directory keeps its peers talking. What `cairn dev`, the chaos harness and the
/// benchmark's local clusters give their nodes (`--cluster-secret-file`).
pub fn ensure_cluster_secret_file(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_request, encode_request, RequestDecodeError, RequestFrame};
    use crate::messages::{MetadataRequest, Request};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn hello() -> PeerHello {
        PeerHello {
            peer_hello: PeerHelloBody {
                version: PEER_PROTOCOL_VERSION,
                from: NodeId(3),
                to: NodeId(1),
                nonce: Bytes::from_static(&[0xaa; 4]),
            },
        }
    }

    /// Golden bytes: these pin the peer wire encoding. If one changes, nodes of the old build
    /// cannot replicate with the new: bump `PEER_PROTOCOL_VERSION` instead of editing them.
    #[test]
    fn golden_peer_hello() {
        let bytes = encode_peer_hello(&hello());
        assert_eq!(
            hex(&bytes),
            concat!(
                "81aa706565725f68656c6c6f84a776657273696f6e03a466726f6d03a2746f01",
                "a56e6f6e6365c404aaaaaaaa"
            )
        );
        assert_eq!(decode_peer_hello(&bytes), Some(hello()));
    }

    /// A version 1 hello (no nonce) still reads as a hello, so the acceptor refuses it for its
    /// version instead of answering it as a malformed client request.
    #[test]
    fn a_version_1_hello_still_decodes_as_a_hello() {
        let bytes = [
            0x81, 0xaa, b'p', b'e', b'e', b'r', b'_', b'h', b'e', b'l', b'l', b'o', 0x82, 0xa7,
            b'v', b'e', b'r', b's', b'i', b'o', b'n', 0x01, 0xa4, b'f', b'r', b'o', b'm', 0x03,
        ];
        let hello = decode_peer_hello(&bytes).unwrap();
        assert_eq!(hello.peer_hello.version, 1);
        assert!(hello.peer_hello.nonce.is_empty());
    }

    #[test]
    fn golden_challenge_and_proof() {
        let challenge = PeerChallenge {
            peer_challenge: PeerChallengeBody {
                nonce: Bytes::from_static(&[1, 2]),
                mac: Bytes::from_static(&[3]),
            },
        };
        let bytes = encode_peer_challenge(&challenge);
        assert_eq!(
            hex(&bytes),
            "81ae706565725f6368616c6c656e676582a56e6f6e6365c4020102a36d6163c40103"
        );
        assert_eq!(decode_peer_challenge(&bytes), Some(challenge));
        let proof = PeerProof {
            peer_proof: PeerProofBody {
                mac: Bytes::from_static(&[9]),
            },
        };
        let bytes = encode_peer_proof(&proof);
        assert_eq!(hex(&bytes), "81aa706565725f70726f6f6681a36d6163c40109");
        assert_eq!(decode_peer_proof(&bytes), Some(proof));
        // Neither is mistaken for a hello or a frame of peer messages.
        assert_eq!(decode_peer_hello(&bytes), None);
        assert!(decode_peer_frame(&bytes).is_err());
    }

    #[test]
    fn golden_peer_frame_batches_messages_of_many_partitions() {
        let frame = PeerFrame {
            messages: vec![
                PartitionPeerMessage {
                    replica: ReplicaKey::Partition {
                        topic: 4,
                        partition: 0,
                    },
                    message: PeerWireMessage::Append {
                        epoch: Epoch(2),
                        prev_offset: Offset(10),
                        prev_epoch: Epoch(1),
                        batches: vec![Bytes::from_static(&[0xbe, 0xef])],
                        commit: Offset(9),
                        sent_at_ms: 300,
                        log_start: None,
                    },
                },
                PartitionPeerMessage {
                    replica: ReplicaKey::Meta,
                    message: PeerWireMessage::AppendResponse {
                        epoch: Epoch(1),
                        sent_at_ms: 5,
                        result: PeerAppendResult::Ok {
                            log_end: Offset(3),
                            durable_end: Offset(2),
                        },
                    },
                },
            ],
        };
        let bytes = encode_peer_frame(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "81a86d6573736167657392",
                "82a77265706c696361920400a76d65737361676581a6417070656e6486a565706f636802",
                "ab707265765f6f66667365740aaa707265765f65706f636801a762617463686573",
                "91c402beefa6636f6d6d697409aa73656e745f61745f6d73cd012c",
                "82a77265706c69636190a76d65737361676581ae417070656e64526573706f6e7365",
                "83a565706f636801aa73656e745f61745f6d7305a6726573756c7481a24f6b82a76c6f",
                "675f656e6403ab64757261626c655f656e6402"
            )
        );
        assert_eq!(decode_peer_frame(&bytes).unwrap(), frame);
    }

    /// An append at a moved log start carries it as one more map entry; one without it is
    /// encoded as before (the frame above), so this needs no new protocol version.
    #[test]
    fn golden_append_at_the_log_start() {
        let frame = PeerFrame {
            messages: vec![PartitionPeerMessage {
                replica: ReplicaKey::Partition {
                    topic: 4,
                    partition: 0,
                },
                message: PeerWireMessage::Append {
                    epoch: Epoch(2),
                    prev_offset: Offset(10),
                    prev_epoch: Epoch(0),
                    batches: vec![],
                    commit: Offset(10),
                    sent_at_ms: 300,
                    log_start: Some(PeerLogStart {
                        offset: Offset(10),
                        epoch: Epoch(1),
                    }),
                },
            }],
        };
        let bytes = encode_peer_frame(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "81a86d6573736167657391",
                "82a77265706c696361920400a76d65737361676581a6417070656e6487a565706f636802",
                "ab707265765f6f66667365740aaa707265765f65706f636800a76261746368657390",
                "a6636f6d6d69740aaa73656e745f61745f6d73cd012c",
                "a96c6f675f737461727482a66f66667365740aa565706f636801"
            )
        );
        assert_eq!(decode_peer_frame(&bytes).unwrap(), frame);
    }

    /// A replica key is `[]` or `[topic id, partition]`; any other shape is a bad frame.
    #[test]
    fn replica_keys_decode_only_in_their_two_shapes() {
        for key in [
            ReplicaKey::Meta,
            ReplicaKey::Partition {
                topic: u64::MAX,
                partition: u32::MAX,
            },
        ] {
            let bytes = rmp_serde::to_vec_named(&key).unwrap();
            assert_eq!(rmp_serde::from_slice::<ReplicaKey>(&bytes).unwrap(), key);
        }
        assert_eq!(ReplicaKey::Meta.to_string(), "__meta");
        let key = ReplicaKey::Partition {
            topic: 4,
            partition: 0,
        };
        assert_eq!(key.to_string(), "t4-0");
        // [1], [1, 2, 3], a partition above u32, a string, a map: refused.
        for bad in [
            &[0x91, 0x01][..],
            &[0x93, 0x01, 0x02, 0x03],
            &[0x92, 0x01, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
            &[0xa4, b't', b'4', b'-', b'0'],
            &[0x80],
        ] {
            assert!(
                rmp_serde::from_slice::<ReplicaKey>(bad).is_err(),
                "{bad:02x?} decoded"
            );
        }
    }

    #[test]
    fn golden_lease_request() {
        let frame = PeerFrame {
            messages: vec![PartitionPeerMessage {
                replica: ReplicaKey::Partition {
                    topic: 1,
                    partition: 2,
                },
                message: PeerWireMessage::LeaseRequest {
                    epoch: Epoch(7),
                    last_log_epoch: Epoch(6),
                    log_end: Offset(100),
                },
            }],
        };
        let bytes = encode_peer_frame(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "81a86d6573736167657391",
                "82a77265706c696361920102a76d65737361676581ac4c65617365526571756573748",
                "3a565706f636807ae6c6173745f6c6f675f65706f636806a76c6f675f656e6464"
            )
        );
        assert_eq!(decode_peer_frame(&bytes).unwrap(), frame);
    }

    #[test]
    fn a_hello_and_a_client_request_are_never_mistaken_for_each_other() {
        let request = encode_request(&RequestFrame {
            version: 1,
            correlation_id: 7,
            request: Request::Metadata(MetadataRequest { topics: None }),
        });
        assert_eq!(decode_peer_hello(&request), None);
        let hello = encode_peer_hello(&hello());
        assert!(matches!(
            decode_request(&hello),
            Err(RequestDecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_is_a_typed_error_not_a_panic() {
        assert!(decode_peer_frame(b"\xc1\x00garbage").is_err());
        assert!(decode_peer_frame(&[]).is_err());
        assert_eq!(decode_peer_hello(b"\x81\xa1x"), None);
    }
}
