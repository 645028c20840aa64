//! Issue 15, item 5: garbage on the gossip port cannot flood a node's log.
//!
//! Chitchat logs a WARN line for every gossip datagram it cannot decode; 210,900 garbage
//! datagrams wrote 10.9 MB of log per node. Here one real `cairn node` (a one-node cluster,
//! so it gossips on the UDP port of its listen address) receives `DATAGRAMS` garbage
//! datagrams from a plain UDP socket; its log must grow by a bounded number of lines, its
//! memory stay within a bound, and a client's produce and read-back work during and after.

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::{eventually, TestNode};

/// A normal client's produce and read-back on a fresh connection.
fn round_trip(node: &TestNode, value: &str) {
    let mut wire = node.wire();
    let produced = wire.produce("events", 0, &[value.as_bytes()]).unwrap();
    let records = wire.read_all("events", 0, produced.base_offset);
    assert!(
        records
            .iter()
            .any(|record| record.value.as_deref() == Some(value.as_bytes())),
        "{value} was not read back"
    );
}

/// Garbage datagrams sent: enough that one log line each is unmistakable.
const DATAGRAMS: u32 = 20_000;
/// Datagrams sent between two short pauses, so the kernel's receive buffer (not the node's
/// logging) is not what drops them.
const DATAGRAMS_PER_BURST: u32 = 200;
/// What chitchat logs for each undecodable datagram.
const GARBAGE_WARNING: &str = "invalid-chitchat-payload";
/// The node logs at most one such line per 5 s (plus a note counting the others); the flood
/// takes a few seconds, so a handful of lines at most, and a few unrelated ones.
const LOG_LINES_GROWTH_MAX: usize = 30;

fn line_count(text: &str) -> usize {
    text.lines().count()
}

#[test]
fn garbage_gossip_datagrams_grow_the_log_by_a_bounded_number_of_lines() {
    let cluster = TestCluster::start(1, &[]);
    let node = &cluster.nodes[0];
    let gossip = node.address();
    node.wire().create_topic("events", 1).unwrap();
    round_trip(node, "before");
    // Let the start-up lines settle before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let before = node.logs();
    let baseline_mib = node.memory_kib().0 / 1024;

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let started = Instant::now();
    let mut sent = 0u32;
    while sent < DATAGRAMS {
        for _ in 0..DATAGRAMS_PER_BURST {
            // Bytes no chitchat envelope starts with, of varying length.
            let garbage = vec![0xffu8; 1 + (sent % 64) as usize];
            socket.send_to(&garbage, gossip).expect("send a datagram");
            sent += 1;
        }
        if sent == DATAGRAMS / 2 {
            round_trip(node, "during");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let flood = started.elapsed();

    // The node saw the garbage: its first warning is logged (the others are counted).
    assert!(
        eventually(Duration::from_secs(10), || {
            node.logs()[before.len()..].contains(GARBAGE_WARNING)
        }),
        "no garbage warning at all; logs:\n{}",
        node.logs()
    );
    // Give the log writer time to catch up with whatever the flood queued.
    std::thread::sleep(Duration::from_secs(1));
    let after = node.logs();
    let grown = &after[before.len()..];
    let garbage_lines = grown
        .lines()
        .filter(|line| line.contains(GARBAGE_WARNING))
        .count();
    // One line per started 5 s interval of flooding.
    let intervals = flood.as_secs() as usize / 5 + 1;
    assert!(
        garbage_lines <= intervals,
        "{garbage_lines} garbage warnings for {DATAGRAMS} datagrams in {flood:?}"
    );
    assert!(
        line_count(grown) <= LOG_LINES_GROWTH_MAX,
        "the log grew by {} lines ({} bytes) for {DATAGRAMS} datagrams:\n{}",
        line_count(grown),
        grown.len(),
        grown.lines().take(20).collect::<Vec<_>>().join("\n")
    );

    round_trip(node, "after");
    let peak_mib = node.memory_kib().1 / 1024;
    assert!(
        peak_mib <= baseline_mib + 64,
        "peak RSS {peak_mib} MiB, baseline {baseline_mib} MiB: bound is baseline + 64 MiB"
    );
}
