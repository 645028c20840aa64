//! Hostile clients against a real node process (issue 15, items 1 to 3): each probe asserts
//! that the node's memory stays under a stated bound (its `VmHWM` from `/proc`), that the
//! attacker gets a typed refusal or is cut off, and that a normal client's produce and consume
//! round trip still works during and after the attack.
//!
//! Everything runs on 127.0.0.0/8; a second source address (127.0.0.2) stands for "another
//! client" where the node counts connections per address.

mod support;

use cairn_protocol::frame::encode_request;
use cairn_protocol::messages::*;
use cairn_protocol::{ApiError, Offset, Request, RequestFrame, Response};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::{eventually, metric, TestNode, Wire};

const MIB: u64 = 1024 * 1024;

/// Settings this work added, which a build from before it does not know.
const NEW_KEYS: &[&str] = &[
    "limits.connections_per_address_max",
    "limits.first_request_timeout_ms",
    "limits.connection_idle_timeout_ms",
    "limits.reply_write_timeout_ms",
    "limits.connection_outbound_bytes_max",
    "limits.fetch_reply_bytes_max",
    "limits.request_entries_max",
];

/// Starts a node with `args`. With `CAIRN_TEST_BINARY` set (a build from before these
/// limits, to measure the probes against it), the settings it does not know are left out;
/// the probes are then expected to fail, and print what they measured.
fn start(args: &[&str]) -> TestNode {
    let before = std::env::var_os("CAIRN_TEST_BINARY").is_some();
    let mut kept: Vec<&str> = Vec::new();
    for pair in args.chunks(2) {
        let new_key = NEW_KEYS.iter().any(|key| pair[1].starts_with(key));
        if !(before && new_key) {
            kept.extend_from_slice(pair);
        }
    }
    TestNode::start_with(&kept)
}

/// Produces one unique value to `topic` on a fresh connection and reads it back.
fn round_trip(wire: &mut Wire, topic: &str, value: &str) {
    let produced = wire
        .produce(topic, 0, &[value.as_bytes()])
        .unwrap_or_else(|error| panic!("produce {value}: {error:?}"));
    let records = wire.read_all(topic, 0, produced.base_offset);
    assert!(
        records
            .iter()
            .any(|record| record.value.as_deref() == Some(value.as_bytes())),
        "{value} was not read back"
    );
}

fn round_trip_on(node: &TestNode, topic: &str, value: &str) {
    round_trip(&mut node.wire(), topic, value);
}

/// A new connection that the node admitted and answered, or `None` if it was refused.
fn admitted(node: &TestNode) -> Option<Wire> {
    let mut wire = node.wire();
    let correlation_id = wire.send(Request::ListTopics(ListTopicsRequest {
        include_internal: false,
    }));
    let reply = wire.try_recv()?;
    (reply.correlation_id == correlation_id && matches!(reply.result, Ok(Response::ListTopics(_))))
        .then_some(wire)
}

/// The node's peak resident memory so far, in MiB.
fn peak_mib(node: &TestNode) -> u64 {
    node.memory_kib().1 / 1024
}

/// A Metadata request naming `names` empty topics, encoded by hand: one byte per name, so a
/// 4 MiB frame names about 4.19 million topics.
fn metadata_naming_empty_topics(correlation_id: u64, names: u32) -> Vec<u8> {
    let mut payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id,
        request: Request::Metadata(MetadataRequest {
            topics: Some(Vec::new()),
        }),
    })
    .to_vec();
    assert_eq!(payload.pop(), Some(0x90), "an empty list ends the frame");
    payload.push(0xdd);
    payload.extend_from_slice(&names.to_be_bytes());
    payload.resize(payload.len() + names as usize, 0xa0);
    payload
}

fn send_frame(stream: &mut TcpStream, payload: &[u8]) {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame).expect("write a frame");
}

/// Probe 1: one 4 MiB Metadata request naming 4.19 million empty topics made the node build a
/// 171 MB reply (552 MB peak RSS); 16 pipelined, 1.1 GB. Now the entries are counted before
/// the request is decoded and it is refused with `LimitExceeded`; a request within the entry
/// limit whose reply would not fit in a frame is refused by the reply's size.
#[test]
fn metadata_naming_millions_of_topics_is_refused_before_anything_is_built() {
    let node = start(&[
        "--set",
        "limits.frame_bytes_max=4194304",
        "--set",
        "limits.connection_outbound_bytes_max=4194304",
        "--set",
        "limits.fetch_reply_bytes_max=4194304",
    ]);
    let topic = "events";
    node.wire().create_topic(topic, 1).unwrap();
    round_trip_on(&node, topic, "before");
    let baseline = node.memory_kib().0 / 1024;

    let names: u32 = 4 * 1024 * 1024 - 100;
    let payload = metadata_naming_empty_topics(1, names);
    assert!(payload.len() <= 4 * MIB as usize);
    let mut attacker = node.wire();
    let pipelined = 16u64;
    for correlation_id in 1..=pipelined {
        let payload = metadata_naming_empty_topics(correlation_id, names);
        send_frame(&mut attacker.stream, &payload);
        // During the attack, another client is served.
        if correlation_id == pipelined / 2 {
            round_trip_on(&node, topic, "during");
        }
    }
    let replies: Vec<_> = (0..pipelined).map(|_| attacker.recv()).collect();
    eprintln!(
        "metadata probe: baseline {baseline} MiB, peak after {pipelined} requests {} MiB",
        peak_mib(&node)
    );
    for (reply, correlation_id) in replies.into_iter().zip(1..) {
        assert_eq!(reply.correlation_id, correlation_id);
        assert_eq!(
            reply.result,
            Err(ApiError::LimitExceeded {
                limit: "limits.request_entries_max".into(),
                requested: u64::from(names) + 5,
                max: 8192,
            })
        );
    }

    // Within the entry limit, but the reply (each unknown name answered with an error that
    // repeats it) is larger than a frame.
    let long_names: Vec<String> = (0..8000).map(|index| format!("{index:0>400}")).collect();
    let reply = attacker.call(Request::Metadata(MetadataRequest {
        topics: Some(long_names),
    }));
    match reply {
        Err(ApiError::LimitExceeded {
            limit,
            requested,
            max,
        }) => {
            assert_eq!(limit, "limits.frame_bytes_max");
            assert_eq!(max, 4 * MIB);
            assert!(requested > max, "{requested}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    // The attacker's connection still works for a reasonable request.
    let reply = attacker.call(Request::Metadata(MetadataRequest {
        topics: Some(vec![topic.into()]),
    }));
    assert!(matches!(reply, Ok(Response::Metadata(_))), "{reply:?}");
    round_trip_on(&node, topic, "after");

    // The frames themselves are read one at a time (4 MiB each); nothing is built from them.
    let peak = peak_mib(&node);
    eprintln!("metadata probe: baseline {baseline} MiB, peak {peak} MiB");
    assert!(
        peak <= baseline + 64,
        "peak RSS {peak} MiB, baseline {baseline} MiB: bound is baseline + 64 MiB"
    );
}

/// Probe 1b: replies that list the cluster's state may each be as large as a frame, so a
/// pipeline of them, never read, held one frame per request in flight. Now each reserves a
/// frame of the connection's budget before it is built: the rest wait holding their requests.
#[test]
fn pipelined_frame_sized_replies_wait_for_the_connection_budget() {
    let node = start(&[
        "--set",
        "limits.frame_bytes_max=4194304",
        "--set",
        "limits.connection_outbound_bytes_max=4194304",
        "--set",
        "limits.fetch_reply_bytes_max=4194304",
        "--set",
        "limits.request_entries_max=65536",
        "--set",
        "limits.requests_in_flight_max=256",
    ]);
    let topic = "events";
    node.wire().create_topic(topic, 1).unwrap();
    let baseline = node.memory_kib().0 / 1024;
    // Each unknown name is answered with an error repeating it: a 1.2 MB request asks for a
    // reply just under the 4 MiB frame.
    let names: Vec<String> = (0..38_000).map(|index| format!("{index:0>30}")).collect();
    let payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id: 1,
        request: Request::Metadata(MetadataRequest {
            topics: Some(names),
        }),
    });
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let attacker = std::thread::spawn(move || {
        let mut sent = 0;
        for _ in 0..64 {
            if send_frame_or_stop(&mut stream, &payload) {
                sent += 1;
            } else {
                break;
            }
        }
        (stream, sent)
    });
    let (stream, sent) = attacker.join().unwrap();
    // Give the node time to answer whatever it read (nothing is asserted about speed).
    std::thread::sleep(Duration::from_secs(2));
    round_trip_on(&node, topic, "during");
    let peak = peak_mib(&node);
    eprintln!("frame-sized replies probe: baseline {baseline} MiB, peak {peak} MiB, sent {sent}");
    drop(stream);
    round_trip_on(&node, topic, "after");
    assert!(
        peak <= baseline + 96,
        "peak RSS {peak} MiB, baseline {baseline} MiB: bound is baseline + 96 MiB"
    );
}

/// Writes one frame; false once the peer stops taking bytes (the write timed out).
fn send_frame_or_stop(stream: &mut TcpStream, payload: &[u8]) -> bool {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame).is_ok()
}

/// A node with 4 MiB frames, 8 MiB connection and 40 MiB node fetch budgets (plus `settings`,
/// `key=value`), holding topic "big": 4.5 MiB in batches of one 500 KiB record each.
fn node_with_big_records(settings: &[&str]) -> (TestNode, &'static str) {
    let mut args = vec![
        "--set",
        "limits.frame_bytes_max=4194304",
        "--set",
        "limits.batch_bytes_max=1048576",
        "--set",
        "limits.record_bytes_max=524288",
        "--set",
        "replica.append_message_bytes_max=1048576",
        "--set",
        "limits.requests_in_flight_max=256",
        "--set",
        "limits.connection_outbound_bytes_max=8388608",
        "--set",
        "limits.fetch_reply_bytes_max=41943040",
    ];
    for setting in settings {
        args.extend(["--set", setting]);
    }
    let node = start(&args);
    let topic = "big";
    let mut writer = node.wire();
    writer.create_topic(topic, 1).unwrap();
    let value = vec![b'x'; 500 * 1024];
    for _ in 0..9 {
        writer.produce(topic, 0, &[&value]).unwrap();
    }
    (node, topic)
}

/// `connections` connections from `source` that each pipeline up to `fetches_each` fetches of
/// 4 MiB from `topic` and never read a reply; each has a small receive buffer, so the node's
/// writes stall once its own send buffer is full. A connection stops sending when the socket
/// takes no more within a second (the node stopped reading it). Returns the streams (dropping
/// them ends the attack) and how many fetches each sent.
fn unread_fetches(
    node: &TestNode,
    topic: &str,
    source: &str,
    connections: usize,
    fetches_each: usize,
) -> Vec<(TcpStream, u32)> {
    let fetch_payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id: 1,
        request: Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 4 * MIB as u32,
            partitions: vec![FetchPartition {
                topic: topic.into(),
                partition: 0,
                offset: Offset(0),
                max_bytes: 4 * MIB as u32,
            }],
        }),
    });
    let attackers: Vec<_> = (0..connections)
        .map(|_| {
            let mut stream = connect_from_with_buffer(source, node.address(), Some(4096));
            stream
                .set_write_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let payload = fetch_payload.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                for _ in 0..fetches_each {
                    if !send_frame_or_stop(&mut stream, &payload) {
                        break;
                    }
                    sent += 1;
                }
                (stream, sent)
            })
        })
        .collect();
    attackers
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect()
}

/// Probe 2: 256 pipelined 4 MB fetches whose replies are never read held ~1 GB per
/// connection (4 connections: 2.9 GB). Now a connection's unsent replies hold at most
/// `connection_outbound_bytes_max` (the node stops reading it), fetch replies of the whole
/// node at most `fetch_reply_bytes_max` (fetches shrink, then wait), and a connection that
/// reads no reply for `reply_write_timeout_ms` is closed, giving its budget back.
#[test]
fn unread_fetch_replies_are_bounded_per_connection_and_node_wide() {
    let (node, topic) = node_with_big_records(&["limits.reply_write_timeout_ms=3000"]);
    round_trip_on(&node, topic, "before");
    let baseline = node.memory_kib().0 / 1024;

    let attackers = unread_fetches(&node, topic, "127.0.0.1", 4, 64);
    let sent: Vec<u32> = attackers.iter().map(|(_, sent)| *sent).collect();
    // Give the node time to answer whatever it read (nothing is asserted about speed).
    std::thread::sleep(Duration::from_secs(2));
    let during = peak_mib(&node);
    eprintln!("fetch probe: baseline {baseline} MiB, peak during the attack {during} MiB");
    // A normal client is served during the attack: the node-wide budget (40 MiB) leaves
    // room beyond what the four attackers may hold (4 x 8 MiB). When it does not, fetches
    // shrink and then wait until clients that read nothing are cut (reply_write_timeout_ms;
    // the kernel's socket buffers, up to tens of MiB on loopback, fill first).
    round_trip_on(&node, topic, "during");
    drop(attackers);
    round_trip_on(&node, topic, "after");
    let peak = peak_mib(&node);
    eprintln!(
        "fetch probe: baseline {baseline} MiB, peak during {during} MiB, peak {peak} MiB, \
         fetches sent {sent:?}"
    );
    // At most 4 x 8 MiB of fetch replies, each built with a copy or two on its way, plus the
    // request frames read.
    assert!(
        peak <= baseline + 128,
        "peak RSS {peak} MiB, baseline {baseline} MiB: bound is baseline + 128 MiB"
    );
}

/// A client that reads none of its replies is cut after `reply_write_timeout_ms`, which
/// gives back the budget its replies hold; before, it held them for as long as it stayed
/// connected.
#[test]
fn a_client_that_reads_no_reply_is_cut() {
    let node = start(&["--set", "limits.reply_write_timeout_ms=1000"]);
    let topic = "events";
    let mut writer = node.wire();
    writer.create_topic(topic, 1).unwrap();
    let value = vec![b'x'; 15 * 1024];
    for _ in 0..16 {
        writer.produce(topic, 0, &[&value]).unwrap();
    }
    drop(writer);
    // A small receive buffer (no autotuning), so the node's writes stall once its own send
    // buffer (up to 4 MiB) is full: 256 replies of 60 to 240 KiB are more than that.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(node.address()).await.unwrap()
    });
    let mut attacker = Wire::over({
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    });
    for _ in 0..256 {
        attacker.send(Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 256 * 1024,
            partitions: vec![FetchPartition {
                topic: topic.into(),
                partition: 0,
                offset: Offset(0),
                max_bytes: 256 * 1024,
            }],
        }));
    }
    round_trip_on(&node, topic, "during");
    // Bounded: once cut, reading ends with the end of the stream or a reset (what was in
    // flight, at most the node's send buffer, comes first); a read that times out means the
    // connection is still open.
    std::thread::sleep(Duration::from_secs(3));
    attacker
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = vec![0u8; 64 * 1024];
    let mut read_total = 0usize;
    let mut ending = None;
    for _ in 0..10_000 {
        match std::io::Read::read(&mut attacker.stream, &mut sink) {
            Ok(0) => {
                ending = Some("end of stream".to_string());
                break;
            }
            Ok(read) => read_total += read,
            Err(error) => {
                ending = Some(error.kind().to_string());
                break;
            }
        }
    }
    let ending = ending.expect("the read loop ended");
    assert!(
        ending == "end of stream" || ending == "connection reset",
        "the connection was not cut ({ending} after {read_total} bytes)"
    );
    assert!(read_total < 256 * 60 * 1024, "{read_total} bytes were sent");
    round_trip_on(&node, topic, "after");
}

/// Probe 3a: idle TCP connections filling `connections_max` locked every other client out
/// forever. Now a connection that sends no request within `first_request_timeout_ms` is closed,
/// and one that goes quiet is closed after `connection_idle_timeout_ms`.
#[test]
fn silent_connections_are_closed_so_others_get_in() {
    let node = start(&[
        "--set",
        "limits.first_request_timeout_ms=1000",
        "--set",
        "limits.connection_idle_timeout_ms=2000",
    ]);
    let topic = "events";
    node.wire().create_topic(topic, 1).unwrap();
    // The node frees that connection's slot only once it sees the close. When that happened
    // while the sixteen below were being opened, the last of them was refused and a slot
    // freed just after: the 17th, expected refused, was admitted in a CI run (then closed,
    // silent), or the 18th got in at once and idled past its timeout while the silent ones
    // waited out theirs.
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(node.http_address(), "cairn_connections_open") == 0.0
        }),
        "the topic's connection was never released"
    );
    let baseline = node.memory_kib().0 / 1024;
    // The test preset's connections_max is 16: take them all, say nothing.
    let silent: Vec<Wire> = (0..16).map(|_| node.wire()).collect();
    let mut refused = node.wire();
    assert_eq!(
        refused.recv().result,
        Err(ApiError::TooManyConnections { max: 16 })
    );
    // Bounded: the silent connections are closed after a second, then a client gets in.
    let mut client = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            client = admitted(&node);
            client.is_some()
        }),
        "no connection was admitted while silent connections held every slot"
    );
    for mut wire in silent {
        // Closed without a word: each was admitted (a refused one would read a frame here).
        assert!(wire.is_closed(), "a silent connection was left open");
    }
    let mut client = client.unwrap();
    round_trip(&mut client, topic, "during");
    // A slowloris trickling its first frame a byte at a time is cut at the same deadline
    // (bounded: 100 bytes at 100 ms; the first-request deadline is 1 s).
    let mut slow = node.wire();
    let payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id: 1,
        request: Request::ListTopics(ListTopicsRequest {
            include_internal: false,
        }),
    });
    let mut frame = (100u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame.resize(104, 0xc0);
    let cut = frame.iter().any(|byte| {
        std::thread::sleep(Duration::from_millis(100));
        slow.stream.write_all(&[*byte]).is_err()
    });
    assert!(cut || slow.is_closed(), "a slowloris was left open");
    // The admitted client goes quiet for longer than the idle timeout: it is closed too.
    assert!(
        eventually(Duration::from_secs(20), || client.is_closed()),
        "an idle connection was left open"
    );
    round_trip_on(&node, topic, "after");
    let peak = peak_mib(&node);
    eprintln!("silent-connections probe: baseline {baseline} MiB, peak {peak} MiB");
    assert!(peak <= baseline + 64, "peak RSS {peak} MiB");
}

/// A stream to `node` from the loopback source address `source` (any port).
fn connect_from(source: &str, node: SocketAddr) -> TcpStream {
    connect_from_with_buffer(source, node, None)
}

/// [`connect_from`], with a fixed receive buffer of `recv_buffer` bytes (no autotuning).
fn connect_from_with_buffer(source: &str, node: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(node).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Probe 3b: one address took every connection slot. Now it gets at most
/// `connections_per_address_max` of them (refused with `TooManyConnectionsFromAddress`), and
/// a client from another address still connects.
#[test]
fn one_address_cannot_take_every_connection() {
    let node = start(&["--set", "limits.connections_per_address_max=4"]);
    let topic = "events";
    node.wire().create_topic(topic, 1).unwrap();
    let baseline = node.memory_kib().0 / 1024;
    // Connections from 127.0.0.1 that stay active (each sends a request), trying for all 16.
    let mut held = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..16 {
        let mut wire = node.wire();
        let correlation_id = wire.send(Request::ListTopics(ListTopicsRequest {
            include_internal: false,
        }));
        let reply = wire.recv();
        if reply.correlation_id == correlation_id {
            held.push(wire);
        } else {
            refusals.push(reply.result);
        }
    }
    assert_eq!(held.len(), 4);
    assert!(
        refusals
            .iter()
            .all(|refusal| refusal == &Err(ApiError::TooManyConnectionsFromAddress { max: 4 })),
        "{refusals:?}"
    );
    // Another address still gets in and is served, during the attack and after.
    let mut other = Wire::over(connect_from("127.0.0.2", node.address()));
    round_trip(&mut other, topic, "during");
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || admitted(&node).is_some()),
        "the address was not admitted again after its connections closed"
    );
    round_trip_on(&node, topic, "after");
    let peak = peak_mib(&node);
    eprintln!("per-address probe: baseline {baseline} MiB, peak {peak} MiB");
    assert!(peak <= baseline + 64, "peak RSS {peak} MiB");
}

/// A ListTopics request whose body is replaced by `depth` nested one-element arrays: MessagePack
/// a recursive decoder would follow `depth` levels down.
fn list_topics_nested(correlation_id: u64, depth: usize) -> Vec<u8> {
    let mut payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id,
        request: Request::ListTopics(ListTopicsRequest {
            include_internal: false,
        }),
    })
    .to_vec();
    // The request ends with its one boolean field: nest arrays where the boolean was.
    assert_eq!(payload.pop(), Some(0xc2), "the request ends with `false`");
    payload.resize(payload.len() + depth, 0x91);
    payload.push(0xc2);
    payload
}

/// Probe 7a: deeply nested MessagePack (which already behaved). The envelope's reader meets
/// the decoder's depth limit (1,024) long before the stack could overflow: the node answers
/// `MalformedFrame` naming the depth limit and closes that connection, as for any envelope it
/// cannot read. That holds below the entry limit (60,000 levels) and for a whole 4 MiB frame of
/// nesting ahead of the header. Nothing is stored, memory stays bounded, other clients are served.
#[test]
fn deeply_nested_msgpack_is_refused_with_a_typed_error() {
    let node = start(&[
        "--set",
        "limits.frame_bytes_max=4194304",
        "--set",
        "limits.connection_outbound_bytes_max=8388608",
        "--set",
        "limits.request_entries_max=65536",
    ]);
    let topic = "events";
    node.wire().create_topic(topic, 1).unwrap();
    let baseline = node.memory_kib().0 / 1024;
    let mut bystander = node.wire();
    round_trip(&mut bystander, topic, "before");

    let nested_body = list_topics_nested(7, 60_000);
    // A one-entry map whose value is a whole frame of nesting, before any header field.
    let mut only_nesting = vec![0x81, 0xa7];
    only_nesting.extend_from_slice(b"request");
    only_nesting.resize(4_000_000, 0x91);
    for (probe, payload) in [("nested body", nested_body), ("only nesting", only_nesting)] {
        let mut attacker = node.wire();
        send_frame(&mut attacker.stream, &payload);
        let reply = attacker.recv();
        match &reply.result {
            Err(ApiError::MalformedFrame { reason }) => {
                assert!(reason.contains("depth"), "{probe}: {reason}")
            }
            other => panic!("{probe}: {other:?}"),
        }
        assert!(
            attacker.is_closed(),
            "{probe}: the connection was left open"
        );
        round_trip(&mut bystander, topic, probe);
    }

    round_trip_on(&node, topic, "after");
    let peak = peak_mib(&node);
    eprintln!("nesting probe: baseline {baseline} MiB, peak {peak} MiB");
    assert!(peak <= baseline + 64, "peak RSS {peak} MiB");
}

/// Probe 7b: a slowloris after its first request. The idle timeout runs from the last whole
/// request, so trickling a frame a byte at a time does not keep a connection open; before the
/// idle timeout existed it did, for as long as the trickle lasted.
#[test]
fn a_slowloris_after_its_first_request_is_cut_at_the_idle_timeout() {
    let node = start(&[
        "--set",
        "limits.first_request_timeout_ms=1000",
        "--set",
        "limits.connection_idle_timeout_ms=2000",
    ]);
    let topic = "events";
    node.wire().create_topic(topic, 1).unwrap();
    let mut slow = node.wire();
    round_trip(&mut slow, topic, "first request");
    // The next frame arrives one byte every 200 ms: 60 bytes take 12 s, the idle timeout is 2 s.
    let payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id: 99,
        request: Request::ListTopics(ListTopicsRequest {
            include_internal: false,
        }),
    });
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame.resize(64, 0xc0);
    let mut sent = 0;
    let cut = frame.iter().any(|byte| {
        std::thread::sleep(Duration::from_millis(200));
        sent += 1;
        slow.stream.write_all(&[*byte]).is_err()
    });
    assert!(
        cut || slow.is_closed(),
        "a connection trickling {sent} bytes over {} ms was left open",
        sent * 200
    );
    round_trip_on(&node, topic, "after");
}

/// Probe 2b: one address's connections that read no reply could hold the node's whole fetch
/// budget (each up to `connection_outbound_bytes_max`), so every other client's fetch waited
/// until they were cut (`reply_write_timeout_ms`, two minutes here). Now an address holds at
/// most `fetch_reply_bytes_per_address_max`, and a client from another address is answered
/// in full meanwhile (a fetch that waited would end in the test's 20 s read timeout).
#[test]
fn one_address_cannot_take_the_whole_fetch_budget() {
    let (node, topic) = node_with_big_records(&[
        "limits.fetch_reply_bytes_per_address_max=16777216",
        "limits.reply_write_timeout_ms=120000",
    ]);
    let baseline = node.memory_kib().0 / 1024;
    // Eight connections of 8 MiB each could hold 64 MiB: more than the node's 40.
    let attackers = unread_fetches(&node, topic, "127.0.0.1", 8, 64);
    std::thread::sleep(Duration::from_secs(2));
    let mut other = Wire::over(connect_from("127.0.0.2", node.address()));
    let fetched = other.fetch_now(
        4 * MIB as u32,
        vec![FetchPartition {
            topic: topic.into(),
            partition: 0,
            offset: Offset(0),
            max_bytes: 4 * MIB as u32,
        }],
    );
    let bytes = match &fetched[0].result {
        Ok(records) => records.batches.len(),
        Err(error) => panic!("the other address's fetch failed: {error:?}"),
    };
    // Not shrunk to a sliver of what is left: at least 7 of the 9 half-MiB batches.
    assert!(
        bytes >= 7 * 500 * 1024,
        "the other address got {bytes} bytes"
    );
    let peak = peak_mib(&node);
    let sent: Vec<u32> = attackers.iter().map(|(_, sent)| *sent).collect();
    eprintln!("per-address fetch probe: baseline {baseline} MiB, peak {peak} MiB, sent {sent:?}");
    drop(attackers);
    round_trip_on(&node, topic, "after");
    assert!(peak <= baseline + 96, "peak RSS {peak} MiB");
}
