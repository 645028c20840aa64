//! Membership end to end: real chitchat gossip between several nodes in one process, over
//! chitchat's in-process `ChannelTransport` (with link removal for partitions) and once over
//! real UDP on 127.0.0.1.
//!
//! Every wait polls with a generous deadline instead of sleeping a fixed time, so the tests stay
//! fast on an idle machine and do not flake on a loaded one. Failure-detection times are printed
//! (`--nocapture` shows them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_membership::transport::{ChannelTransport, Transport, UdpTransport};
use cairn_membership::{
    ClusterChange, ClusterChanges, Generation, HintsError, LeadershipHints, Membership,
    MembershipSettings, NodeInfo, StartError,
};
use cairn_protocol::{Epoch, NodeId, PartitionId};

/// Long enough for a loaded 2-core machine; convergence normally takes well under a second.
const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

fn gossip_addr(id: u32) -> SocketAddr {
    format!("127.0.0.1:{}", 17_000 + id).parse().unwrap()
}

fn settings(id: u32, listen: SocketAddr, seeds: &[SocketAddr]) -> MembershipSettings {
    MembershipSettings::new(
        "membership-test",
        NodeId(id),
        listen,
        format!("127.0.0.1:{}", 19_000 + id).parse().unwrap(),
        format!("127.0.0.1:{}", 19_500 + id).parse().unwrap(),
    )
    .with_test_timing()
    .with_seeds(seeds.iter().copied())
}

async fn start(
    transport: &dyn Transport,
    settings: MembershipSettings,
    generation: u64,
) -> (Membership, ClusterChanges) {
    let config = settings.validate(Generation(generation)).unwrap();
    Membership::start(config, transport).await.unwrap()
}

/// Three nodes on one in-process network, every node seeded with node 1 (which lists itself).
async fn three_nodes(transport: &ChannelTransport) -> Vec<(Membership, ClusterChanges)> {
    let seed = gossip_addr(1);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(transport, settings(id, gossip_addr(id), &[seed]), 1).await);
    }
    nodes
}

/// Polls `condition` until it holds, failing the test with `what` past the deadline.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
    started.elapsed()
}

/// Receives changes until one matches, failing the test past the deadline. Returns it and every
/// change seen before it.
async fn wait_for_change(
    what: &str,
    changes: &mut ClusterChanges,
    mut matches: impl FnMut(&ClusterChange) -> bool,
) -> (ClusterChange, Vec<ClusterChange>) {
    let started = Instant::now();
    let mut before = Vec::new();
    loop {
        let left = DEADLINE
            .checked_sub(started.elapsed())
            .unwrap_or_else(|| panic!("timed out waiting for {what}; saw {before:?}"));
        match tokio::time::timeout(left, changes.recv()).await {
            Ok(Some(change)) if matches(&change) => return (change, before),
            Ok(Some(change)) => before.push(change),
            Ok(None) => panic!("change stream ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; saw {before:?}"),
        }
    }
}

/// Receives changes until `is(change, id)` held for every one of `ids`, in any order.
async fn wait_for_each(
    what: &str,
    changes: &mut ClusterChanges,
    ids: &[u32],
    is: fn(&ClusterChange, u32) -> bool,
) {
    let mut missing: Vec<u32> = ids.to_vec();
    while !missing.is_empty() {
        let (change, _) = wait_for_change(what, changes, |change| {
            missing.iter().any(|&id| is(change, id))
        })
        .await;
        missing.retain(|&id| !is(&change, id));
    }
}

fn node_in(snapshot: &[NodeInfo], id: u32) -> Option<&NodeInfo> {
    snapshot.iter().find(|info| info.node_id == NodeId(id))
}

fn sees_alive(membership: &Membership, ids: &[u32]) -> bool {
    let snapshot = membership.snapshot();
    ids.iter()
        .all(|id| node_in(&snapshot, *id).is_some_and(|info| info.alive))
}

fn hints(entries: &[(&str, u32, u64)]) -> LeadershipHints {
    let mut hints = LeadershipHints::new();
    for (topic, partition, epoch) in entries {
        hints
            .insert(topic, PartitionId(*partition), Epoch(*epoch))
            .unwrap();
    }
    hints
}

fn is_joined(change: &ClusterChange, id: u32) -> bool {
    matches!(change, ClusterChange::Joined(info) if info.node_id == NodeId(id))
}

fn is_left(change: &ClusterChange, id: u32) -> bool {
    *change == ClusterChange::Left(NodeId(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_from_one_seed() {
    let transport = ChannelTransport::default();
    let mut nodes = three_nodes(&transport).await;
    for (membership, _) in &nodes {
        wait_until("every node sees all three alive", || {
            sees_alive(membership, &[1, 2, 3])
        })
        .await;
    }
    // Every node publishes the addresses it was configured with; peers see exactly those.
    let snapshot = nodes[0].0.snapshot();
    assert_eq!(snapshot.len(), 3);
    for (index, info) in snapshot.iter().enumerate() {
        let id = index as u32 + 1;
        assert_eq!(info.node_id, NodeId(id));
        assert_eq!(info.generation, Generation(1));
        assert_eq!(info.gossip_addr, gossip_addr(id));
        assert_eq!(
            info.client_addr,
            format!("127.0.0.1:{}", 19_000 + id).parse().unwrap()
        );
        assert_eq!(
            info.peer_addr,
            format!("127.0.0.1:{}", 19_500 + id).parse().unwrap()
        );
        assert!(!info.ready, "nodes start not ready");
        assert!(info.hints.is_empty());
    }
    // The stream of node 2 starts with its own Joined, and reports both peers joining.
    let changes = &mut nodes[1].1;
    let (first, _) = wait_for_change("node 2's first change", changes, |_| true).await;
    assert!(is_joined(&first, 2), "first change is self: {first:?}");
    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < 2 {
        let (change, _) = wait_for_change("peers joining", changes, |change| {
            is_joined(change, 1) || is_joined(change, 3)
        })
        .await;
        joined.insert(change.node_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_hint_updates_propagate() {
    let transport = ChannelTransport::default();
    let mut nodes = three_nodes(&transport).await;
    for (membership, _) in &nodes {
        wait_until("all alive", || sees_alive(membership, &[1, 2, 3])).await;
    }
    let led = hints(&[("orders", 0, 3), ("orders", 7, 5), ("__meta", 0, 12)]);
    nodes[1].0.set_hints(&led).await.unwrap();
    nodes[1].0.set_ready(true).await;
    for index in [0, 2] {
        let elapsed = wait_until("peers see node 2 ready with its hints", || {
            node_in(&nodes[index].0.snapshot(), 2)
                .is_some_and(|info| info.ready && info.hints == led)
        })
        .await;
        eprintln!("node {} saw node 2's update after {elapsed:?}", index + 1);
    }
    // Node 1's stream carries the update as a typed change with the new values.
    let (change, _) = wait_for_change("Updated(2) with hints", &mut nodes[0].1, |change| {
        matches!(change, ClusterChange::Updated(info)
            if info.node_id == NodeId(2) && info.hints == led && info.ready)
    })
    .await;
    assert_eq!(change.node_id(), NodeId(2));

    // A later, smaller leadership set replaces the earlier one entirely.
    let fewer = hints(&[("orders", 7, 6)]);
    nodes[1].0.set_hints(&fewer).await.unwrap();
    wait_until("peers see the replaced hints", || {
        node_in(&nodes[2].0.snapshot(), 2).is_some_and(|info| info.hints == fewer)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_hints_are_refused_and_change_nothing() {
    let transport = ChannelTransport::default();
    let seed = gossip_addr(1);
    let (node1, _changes1) = start(&transport, settings(1, gossip_addr(1), &[seed]), 1).await;
    let mut small = settings(2, gossip_addr(2), &[seed]);
    small.hint_bytes_max = 256;
    let (node2, _changes2) = start(&transport, small, 1).await;

    let first = hints(&[("orders", 0, 1)]);
    node2.set_hints(&first).await.unwrap();
    wait_until("node 1 sees the first hints", || {
        node_in(&node1.snapshot(), 2).is_some_and(|info| info.hints == first)
    })
    .await;

    // 40 partitions of a 20-byte topic encode to well over 256 bytes.
    let mut big = LeadershipHints::new();
    for partition in 0..40 {
        big.insert(
            "a-rather-long-topic1",
            PartitionId(partition),
            Epoch(1_000_000),
        )
        .unwrap();
    }
    let bytes = big.encode().len();
    assert!(bytes > 256);
    assert_eq!(
        node2.set_hints(&big).await,
        Err(HintsError::TooLarge { bytes, max: 256 })
    );
    // A later change from node 2 arrives with everything before it, so once node 1 sees it,
    // node 1 would also have seen the refused hints had they been published.
    node2.set_ready(true).await;
    wait_until("node 1 sees node 2 ready", || {
        node_in(&node1.snapshot(), 2).is_some_and(|info| info.ready)
    })
    .await;
    assert_eq!(node_in(&node1.snapshot(), 2).unwrap().hints, first);
    assert_eq!(node_in(&node2.snapshot(), 2).unwrap().hints, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_within_bounded_time() {
    let transport = ChannelTransport::default();
    let mut nodes = three_nodes(&transport).await;
    for (membership, _) in &nodes {
        wait_until("all alive", || sees_alive(membership, &[1, 2, 3])).await;
    }
    let (stopped, _) = nodes.pop().unwrap();
    let stopped_at = Instant::now();
    drop(stopped);
    for (index, (membership, changes)) in nodes.iter_mut().enumerate() {
        wait_for_change("Left(3)", changes, |change| is_left(change, 3)).await;
        let detection = stopped_at.elapsed();
        eprintln!(
            "node {} saw node 3 leave {detection:?} after it stopped \
             (gossip 50 ms, phi 8, initial interval 50 ms)",
            index + 1
        );
        let info = node_in(&membership.snapshot(), 3).cloned().unwrap();
        assert!(
            !info.alive,
            "a node that left stays in the snapshot, not alive"
        );
        assert!(sees_alive(membership, &[1, 2]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_with_its_new_generation_and_values() {
    let transport = ChannelTransport::default();
    let seed = gossip_addr(1);
    let (node1, mut changes1) = start(&transport, settings(1, gossip_addr(1), &[seed]), 1).await;
    let (node2, _) = start(&transport, settings(2, gossip_addr(2), &[seed]), 100).await;
    let old = hints(&[("orders", 0, 3)]);
    node2.set_hints(&old).await.unwrap();
    wait_until("node 1 sees node 2's first hints", || {
        node_in(&node1.snapshot(), 2).is_some_and(|info| info.alive && info.hints == old)
    })
    .await;

    // Restart in place: same node id and gossip address, a higher generation, new values.
    node2.shutdown().await;
    let (node2, _) = start(&transport, settings(2, gossip_addr(2), &[seed]), 200).await;
    let new = hints(&[("orders", 0, 4), ("orders", 1, 4)]);
    node2.set_hints(&new).await.unwrap();
    node2.set_ready(true).await;

    let (change, before) = wait_for_change(
        "Joined or Updated of node 2 at generation 200 with its new values",
        &mut changes1,
        |change| match change {
            ClusterChange::Joined(info) | ClusterChange::Updated(info) => {
                info.node_id == NodeId(2)
                    && info.generation == Generation(200)
                    && info.hints == new
                    && info.ready
            }
            ClusterChange::Left(_) => false,
        },
    )
    .await;
    eprintln!("restart seen as {change:?} after {before:?}");
    // Once the old incarnation's failure detector entry also expires, it must not resurface:
    // the view keeps the new generation, alive, with the new values.
    let old_expired_by = Instant::now() + Duration::from_secs(2);
    while Instant::now() < old_expired_by {
        while let Some(change) = changes1.try_recv() {
            if let ClusterChange::Joined(info) | ClusterChange::Updated(info) = &change {
                assert_ne!(
                    info.generation,
                    Generation(100),
                    "old generation won: {change:?}"
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let info = node_in(&node1.snapshot(), 2).cloned().unwrap();
    assert_eq!(info.generation, Generation(200));
    assert_eq!(info.hints, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_makes_each_side_see_the_other_leave_and_heals_back() {
    let transport = ChannelTransport::default();
    let mut nodes = three_nodes(&transport).await;
    for (membership, _) in &nodes {
        wait_until("all alive", || sees_alive(membership, &[1, 2, 3])).await;
    }
    // Cut node 3 off from nodes 1 and 2 (both directions).
    let cut_at = Instant::now();
    for id in [1, 2] {
        transport.remove_link(gossip_addr(id), gossip_addr(3)).await;
    }
    for index in [0, 1] {
        wait_for_change(
            "Left(3) on the majority side",
            &mut nodes[index].1,
            |change| is_left(change, 3),
        )
        .await;
    }
    // Node 3 loses both others, in whichever order its failure detector decides.
    wait_for_each("Left on node 3", &mut nodes[2].1, &[1, 2], is_left).await;
    eprintln!(
        "partition detected on both sides after {:?}",
        cut_at.elapsed()
    );
    assert!(sees_alive(&nodes[0].0, &[1, 2]) && !sees_alive(&nodes[0].0, &[3]));

    let healed_at = Instant::now();
    for id in [1, 2] {
        transport.add_link(gossip_addr(id), gossip_addr(3)).await;
    }
    for index in [0, 1] {
        wait_for_change("Joined(3) after healing", &mut nodes[index].1, |change| {
            is_joined(change, 3)
        })
        .await;
    }
    wait_for_each(
        "node 3 sees the others join again",
        &mut nodes[2].1,
        &[1, 2],
        is_joined,
    )
    .await;
    eprintln!(
        "partition healed on both sides after {:?}",
        healed_at.elapsed()
    );
    for (membership, _) in &nodes {
        wait_until("all alive after healing", || {
            sees_alive(membership, &[1, 2, 3])
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_a_typed_start_error() {
    let transport = ChannelTransport::default();
    let (_node1, _) = start(&transport, settings(1, gossip_addr(1), &[]), 1).await;
    let config = settings(2, gossip_addr(1), &[])
        .validate(Generation(1))
        .unwrap();
    match Membership::start(config, &transport).await {
        Err(StartError::Bind { addr, .. }) => assert_eq!(addr, gossip_addr(1)),
        other => panic!("expected a bind error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_real_udp_on_loopback() {
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (node1, _) = start(&UdpTransport, settings(1, any_port, &[]), 1).await;
    assert_ne!(
        node1.gossip_addr().port(),
        0,
        "the bound port is advertised"
    );
    let (node2, mut changes2) = start(
        &UdpTransport,
        settings(2, any_port, &[node1.gossip_addr()]),
        1,
    )
    .await;
    wait_until("both see both over UDP", || {
        sees_alive(&node1, &[1, 2]) && sees_alive(&node2, &[1, 2])
    })
    .await;
    assert_eq!(
        node_in(&node2.snapshot(), 1).unwrap().gossip_addr,
        node1.gossip_addr()
    );

    let led = hints(&[("orders", 2, 9)]);
    node1.set_hints(&led).await.unwrap();
    wait_until("node 2 sees node 1's hints over UDP", || {
        node_in(&node2.snapshot(), 1).is_some_and(|info| info.hints == led)
    })
    .await;

    let stopped_at = Instant::now();
    drop(node1);
    wait_for_change("Left(1) over UDP", &mut changes2, |change| {
        is_left(change, 1)
    })
    .await;
    eprintln!(
        "over UDP node 2 saw node 1 leave {:?} after it stopped",
        stopped_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_change_queue_delays_changes_but_snapshots_stay_current() {
    let transport = ChannelTransport::default();
    let seed = gossip_addr(1);
    let mut tiny = settings(1, gossip_addr(1), &[seed]);
    tiny.change_queue_max = 1;
    let (node1, mut changes1) = start(&transport, tiny, 1).await;
    // Nobody reads node 1's stream: its own Joined fills the queue of one, and node 2's Joined
    // has to wait. Node 3 starts only after that, so its arrival is a later gossip round, which
    // the snapshot must still follow.
    let node2 = start(&transport, settings(2, gossip_addr(2), &[seed]), 1).await;
    wait_until("node 1's snapshot sees node 2", || {
        sees_alive(&node1, &[1, 2])
    })
    .await;
    let node3 = start(&transport, settings(3, gossip_addr(3), &[seed]), 1).await;
    wait_until("node 1's snapshot sees all three", || {
        sees_alive(&node1, &[1, 2, 3])
    })
    .await;
    let _others = [node2, node3];
    // Draining then delivers every change, none dropped, self first.
    let (first, _) = wait_for_change("the queued change", &mut changes1, |_| true).await;
    assert!(is_joined(&first, 1), "{first:?}");
    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < 2 {
        let (change, _) = wait_for_change("peers joining, delayed", &mut changes1, |change| {
            is_joined(change, 2) || is_joined(change, 3)
        })
        .await;
        joined.insert(change.node_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_timing_detects_a_stop_in_seconds() {
    let transport = ChannelTransport::default();
    let seed = gossip_addr(1);
    let production = |id| {
        let mut settings = settings(id, gossip_addr(id), &[seed]);
        let defaults = MembershipSettings::new(
            "x",
            NodeId(id),
            gossip_addr(id),
            gossip_addr(id),
            gossip_addr(id),
        );
        settings.gossip_interval_ms = defaults.gossip_interval_ms;
        settings.initial_heartbeat_interval_ms = defaults.initial_heartbeat_interval_ms;
        settings.heartbeat_interval_max_ms = defaults.heartbeat_interval_max_ms;
        settings.phi_threshold = defaults.phi_threshold;
        settings.dead_node_grace_period_ms = defaults.dead_node_grace_period_ms;
        settings
    };
    let (node1, mut changes1) = start(&transport, production(1), 1).await;
    let (node2, _) = start(&transport, production(2), 1).await;
    wait_until("both alive", || sees_alive(&node1, &[1, 2])).await;
    // Let a few heartbeat intervals replace the prior, as in a cluster that has run a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped_at = Instant::now();
    drop(node2);
    wait_for_change("Left(2)", &mut changes1, |change| is_left(change, 2)).await;
    let detection = stopped_at.elapsed();
    eprintln!("with production timing (gossip 500 ms, phi 8) a stop was seen after {detection:?}");
    assert!(
        detection >= Duration::from_secs(1),
        "too quick to be the failure detector"
    );
}
