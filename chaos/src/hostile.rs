//! The `hostile` fault: a client that does not hold the cluster secret poses as a peer.
//!
//! During the fault window one thread connects to the target nodes again and again and sends
//! forged replication traffic, in every form issue 14 reproduced and a few more: the version 1
//! hello nodes used to trust; a version 2 hello followed by frames with no proof, a random
//! proof, or the node's own proof reflected back (a replayed-looking answer); a hello claiming
//! the node's own id; raw garbage. After the hello come frames that would delete data through
//! `__meta`, inject and truncate records in the campaign topic's partitions, and raise epochs
//! to 2^64-1. The campaign's checker must still find zero anomalies: none of it may change a
//! replica.
//!
//! Bounded in count ([`HOSTILE_CONNECTIONS_MAX`] per window) and time (every socket operation
//! has a timeout, and the thread stops when the window ends). It only ever connects to the
//! campaign's own node addresses, which are loopback addresses inside the campaign's network
//! namespace (or on the host's loopback in host mode).

use crate::schedule::Rng;
use bytes::Bytes;
use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::peer::{
    decode_peer_challenge, encode_peer_frame, encode_peer_hello, encode_peer_proof,
    PartitionPeerMessage, PeerFrame, PeerHello, PeerHelloBody, PeerLogStart, PeerProof,
    PeerProofBody, PeerWireMessage, ReplicaKey, PEER_MAC_BYTES, PEER_NONCE_BYTES,
    PEER_PROTOCOL_VERSION,
};
use cairn_protocol::{Epoch, NodeId, Offset};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Forged connections one fault window opens at most.
pub const HOSTILE_CONNECTIONS_MAX: u32 = 300;

/// Pause between two forged connections, so the fault is a steady drizzle, not a flood that
/// would measure the machine instead of the protocol.
const PAUSE_BETWEEN_CONNECTIONS: Duration = Duration::from_millis(25);

/// Connect, read and write timeout of each forged connection.
const SOCKET_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Largest frame read back from a node (a challenge is a few dozen bytes).
const REPLY_BYTES_MAX: usize = 64 * 1024;

/// Topic ids (the `__meta` offset of a topic's creation) the forged frames try.
const TOPIC_IDS_TRIED: u64 = 24;

/// Partitions per topic the forged frames try.
const PARTITIONS_TRIED: u32 = 8;

/// What a hostile window did, for the campaign's log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostileCounts {
    pub connections: u32,
    /// Connections the node ended (as it must, every one of them).
    pub closed_by_node: u32,
    /// Connections on which the node answered a challenge (version 2 hellos only).
    pub challenged: u32,
}

/// A running hostile client; [`Hostile::stop`] ends it and returns its counts.
pub struct Hostile {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<HostileCounts>,
}

impl Hostile {
    /// Starts forging traffic to `targets` (node id and address each), drawn from `seed`.
    pub fn start(targets: Vec<(u32, SocketAddr)>, peers: Vec<u32>, seed: u64) -> Hostile {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || run(&targets, &peers, seed, &flag));
        Hostile { stop, thread }
    }

    pub fn stop(self) -> HostileCounts {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The forms a forged connection takes.
#[derive(Debug, Clone, Copy)]
enum Form {
    Version1,
    NoProof,
    RandomProof,
    ReflectedProof,
    ClaimsOwnId,
    Garbage,
}

const FORMS: [Form; 6] = [
    Form::Version1,
    Form::NoProof,
    Form::RandomProof,
    Form::ReflectedProof,
    Form::ClaimsOwnId,
    Form::Garbage,
];

fn run(
    targets: &[(u32, SocketAddr)],
    peers: &[u32],
    seed: u64,
    stop: &AtomicBool,
) -> HostileCounts {
    let mut rng = Rng::new(seed);
    let mut counts = HostileCounts::default();
    if targets.is_empty() {
        return counts;
    }
    while counts.connections < HOSTILE_CONNECTIONS_MAX && !stop.load(Ordering::Relaxed) {
        let (node, address) = targets[rng.range(0, targets.len() as u64 - 1) as usize];
        let others: Vec<u32> = peers.iter().copied().filter(|id| *id != node).collect();
        let from = match others.len() {
            0 => node + 1,
            count => others[rng.range(0, count as u64 - 1) as usize],
        };
        let form = FORMS[rng.range(0, FORMS.len() as u64 - 1) as usize];
        let frames = forged_frames(&mut rng);
        counts.connections += 1;
        if let Some(outcome) = forge(address, node, from, form, &frames, &mut rng) {
            counts.closed_by_node += u32::from(outcome.closed);
            counts.challenged += u32::from(outcome.challenged);
        }
        std::thread::sleep(PAUSE_BETWEEN_CONNECTIONS);
    }
    counts
}

struct Outcome {
    closed: bool,
    challenged: bool,
}

/// One forged connection; `None` if it could not even connect (a killed or paused node).
fn forge(
    address: SocketAddr,
    to: u32,
    from: u32,
    form: Form,
    frames: &[Bytes],
    rng: &mut Rng,
) -> Option<Outcome> {
    let mut stream = TcpStream::connect_timeout(&address, SOCKET_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT)).ok()?;
    let mut challenged = false;
    // Writes may fail once the node has closed the connection: that is the expected outcome.
    match form {
        Form::Garbage => {
            let length = rng.range(1, 512) as usize;
            let garbage: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
            let _ = send_frame(&mut stream, &garbage);
        }
        Form::Version1 => {
            let _ = send_frame(&mut stream, &version_1_hello(from));
        }
        Form::NoProof | Form::ClaimsOwnId => {
            let claimed = if matches!(form, Form::ClaimsOwnId) {
                to
            } else {
                from
            };
            let _ = send_frame(&mut stream, &hello(claimed, to, rng));
        }
        Form::RandomProof | Form::ReflectedProof => {
            let _ = send_frame(&mut stream, &hello(from, to, rng));
            let challenge = read_frame(&mut stream).and_then(|bytes| decode_peer_challenge(&bytes));
            challenged = challenge.is_some();
            let mac = match (form, challenge) {
                // The node's own proof sent back as ours: the labels differ by direction, so
                // a reflection proves nothing.
                (Form::ReflectedProof, Some(challenge)) => challenge.peer_challenge.mac,
                _ => Bytes::from(
                    (0..PEER_MAC_BYTES)
                        .map(|_| rng.next_u64() as u8)
                        .collect::<Vec<u8>>(),
                ),
            };
            let _ = send_frame(
                &mut stream,
                &encode_peer_proof(&PeerProof {
                    peer_proof: PeerProofBody { mac },
                }),
            );
        }
    }
    for frame in frames {
        if send_frame(&mut stream, frame).is_err() {
            break;
        }
    }
    // The node must end the connection; a few frames (a challenge) may come first.
    let mut closed = false;
    for _ in 0..4 {
        match read_frame_or_end(&mut stream) {
            ReadEnd::Closed => {
                closed = true;
                break;
            }
            ReadEnd::Frame => {}
            ReadEnd::TimedOut => break,
        }
    }
    Some(Outcome { closed, challenged })
}

fn version_1_hello(from: u32) -> Vec<u8> {
    // `{peer_hello: {version: 1, from}}`, written by hand: the version 1 type is gone.
    let mut bytes = vec![0x81, 0xaa];
    bytes.extend_from_slice(b"peer_hello");
    bytes.extend_from_slice(&[0x82, 0xa7]);
    bytes.extend_from_slice(b"version");
    bytes.extend_from_slice(&[0x01, 0xa4]);
    bytes.extend_from_slice(b"from");
    bytes.extend_from_slice(&[0xce]);
    bytes.extend_from_slice(&from.to_be_bytes());
    bytes
}

fn hello(from: u32, to: u32, rng: &mut Rng) -> Bytes {
    encode_peer_hello(&PeerHello {
        peer_hello: PeerHelloBody {
            version: PEER_PROTOCOL_VERSION,
            from: NodeId(from),
            to: NodeId(to),
            nonce: Bytes::from(
                (0..PEER_NONCE_BYTES)
                    .map(|_| rng.next_u64() as u8)
                    .collect::<Vec<u8>>(),
            ),
        },
    })
}

fn epoch(rng: &mut Rng) -> Epoch {
    match rng.range(0, 3) {
        0 => Epoch(u64::MAX),
        1 => Epoch(rng.range(1, 64)),
        2 => Epoch(rng.range(1 << 16, 1 << 40)),
        _ => Epoch(rng.next_u64()),
    }
}

/// A handful of forged replication frames: appends that would delete through `__meta`,
/// inject, truncate from offset 0 or raise the epoch, and lease requests for absurd epochs.
fn forged_frames(rng: &mut Rng) -> Vec<Bytes> {
    let mut messages = Vec::new();
    let mut batch = RecordBatchBuilder::new(1_700_000_000_000);
    batch.push(&Record::new(Bytes::from_static(b"hostile-forged-record")));
    let batch = batch.build();
    let meta_epoch = epoch(rng);
    messages.push(PartitionPeerMessage {
        replica: ReplicaKey::Meta,
        message: PeerWireMessage::Append {
            epoch: meta_epoch,
            prev_offset: Offset(0),
            prev_epoch: Epoch(0),
            batches: vec![batch.stamped(Offset(0), meta_epoch).into_bytes()],
            commit: Offset(1),
            sent_at_ms: 0,
            log_start: None,
        },
    });
    for _ in 0..8 {
        let topic = rng.range(0, TOPIC_IDS_TRIED);
        let partition = rng.range(0, u64::from(PARTITIONS_TRIED) - 1);
        let replica = ReplicaKey::Partition {
            topic,
            partition: partition as u32,
        };
        let epoch = epoch(rng);
        let at = Offset(rng.range(0, 5_000));
        let message = match rng.range(0, 2) {
            0 => PeerWireMessage::Append {
                epoch,
                prev_offset: at,
                prev_epoch: epoch,
                batches: vec![batch.stamped(at, epoch).into_bytes()],
                commit: Offset(at.0 + 1),
                sent_at_ms: 0,
                log_start: None,
            },
            1 => PeerWireMessage::Append {
                epoch,
                prev_offset: Offset(0),
                prev_epoch: Epoch(0),
                batches: vec![batch.stamped(Offset(0), epoch).into_bytes()],
                commit: Offset(1),
                sent_at_ms: 0,
                // A log start far ahead would make a follower that believed it drop its log.
                log_start: Some(PeerLogStart {
                    offset: Offset(at.0 + 1_000_000),
                    epoch,
                }),
            },
            _ => PeerWireMessage::LeaseRequest {
                epoch,
                last_log_epoch: epoch,
                log_end: Offset(u64::MAX >> 1),
            },
        };
        messages.push(PartitionPeerMessage { replica, message });
    }
    vec![encode_peer_frame(&PeerFrame { messages })]
}

fn send_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let length = u32::from_be_bytes(length) as usize;
    if length > REPLY_BYTES_MAX {
        return None;
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

enum ReadEnd {
    Closed,
    Frame,
    TimedOut,
}

fn read_frame_or_end(stream: &mut TcpStream) -> ReadEnd {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return ReadEnd::TimedOut
        }
        Err(_) => return ReadEnd::Closed,
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > REPLY_BYTES_MAX {
        return ReadEnd::Frame;
    }
    let mut payload = vec![0u8; length];
    match stream.read_exact(&mut payload) {
        Ok(()) => ReadEnd::Frame,
        Err(_) => ReadEnd::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::peer::{decode_peer_frame, decode_peer_hello};

    #[test]
    fn forged_messages_are_well_formed_enough_to_be_read() {
        let mut rng = Rng::new(7);
        let frames = forged_frames(&mut rng);
        let frame = decode_peer_frame(&frames[0]).unwrap();
        assert_eq!(frame.messages.len(), 9);
        assert_eq!(frame.messages[0].replica, ReplicaKey::Meta);
        let old = decode_peer_hello(&version_1_hello(2)).unwrap();
        assert_eq!(old.peer_hello.version, 1);
        assert_eq!(old.peer_hello.from, NodeId(2));
        let new = decode_peer_hello(&hello(2, 1, &mut rng)).unwrap();
        assert_eq!(new.peer_hello.nonce.len(), PEER_NONCE_BYTES);
    }

    #[test]
    fn a_window_is_bounded_even_against_a_silent_listener() {
        // A listener that accepts and never answers: each connection ends by its timeout.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let hostile = Hostile::start(vec![(1, address)], vec![1, 2, 3], 3);
        std::thread::sleep(Duration::from_millis(200));
        let counts = hostile.stop();
        assert!(counts.connections >= 1);
        assert!(counts.connections <= HOSTILE_CONNECTIONS_MAX);
        drop(listener);
    }
}
