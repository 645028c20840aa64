//! A restarted node answers metadata only from a `__meta` state at least as new as the commit
//! point its peers tell it (issue 14, item 3): the recipe of the report, with real processes.
//!
//! Three nodes, topic `pay` with three replicas; then, a few rounds: SIGKILL one node, restart
//! it, wait until it answers `ListTopics`, and produce through `cairn produce` with
//! `CAIRN_BOOTSTRAP` naming all three nodes (the restarted one first). Before the fix the
//! restarted node called itself ready with an empty catalog in about half the rounds (it had
//! heard of a leader, but its high watermark was still 0) and the produce failed with
//! `unknown topic 'pay'`.

mod support;

use cairn_protocol::messages::{
    CreateTopicRequest, ListTopicsRequest, MetadataRequest, TopicConfig,
};
use cairn_protocol::{ApiError, Request, Response};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::eventually;

/// Kill-and-restart rounds; each takes a few seconds.
const ROUNDS: u32 = 4;

/// What a node's `ListTopics` says: the topic names, or its refusal.
fn list_topics(node: &support::TestNode) -> Result<Vec<String>, ApiError> {
    list_topics_at(node.address())
}

fn list_topics_at(address: std::net::SocketAddr) -> Result<Vec<String>, ApiError> {
    let mut wire = support::Wire::connect(address);
    match wire.call(Request::ListTopics(ListTopicsRequest {
        include_internal: false,
    }))? {
        Response::ListTopics(list) => Ok(list.topics.into_iter().map(|t| t.name).collect()),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Runs `cairn produce pay` with one record, bounded in time; returns (exit code, stderr).
fn cli_produce(bootstrap: &str, value: &str) -> (i32, String) {
    let mut child = Command::new(support::cairn_binary())
        .args(["produce", "pay"])
        .env("CAIRN_BOOTSTRAP", bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{value}").expect("write a record");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child
                .stderr
                .take()
                .expect("piped stderr")
                .read_to_string(&mut stderr);
            return (status.code().unwrap_or(-1), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn produce did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `__meta` leader as `node` reports it (its own replica's view), if it knows one.
fn meta_leader_seen_by(node: &support::TestNode) -> Option<u32> {
    let mut wire = node.wire();
    match wire.call(Request::Metadata(MetadataRequest {
        topics: Some(vec!["__meta".to_string()]),
    })) {
        Ok(Response::Metadata(mut reply)) => reply
            .topics
            .pop()
            .and_then(|topic| topic.result.ok())
            .and_then(|topic| topic.partitions.first().and_then(|p| p.leader))
            .map(|leader| leader.0),
        _ => None,
    }
}

/// The `__meta` leader as the first node that knows one names it (bounded wait).
fn meta_leader(cluster: &TestCluster) -> u32 {
    let mut leader = None;
    let found = eventually(Duration::from_secs(20), || {
        leader = cluster.nodes.iter().find_map(meta_leader_seen_by);
        leader.is_some()
    });
    assert!(found, "no __meta leader known");
    leader.expect("found")
}

#[test]
fn a_restarted_node_never_answers_from_metadata_older_than_the_cluster_commit() {
    let mut cluster = TestCluster::start(3, &[]);
    let mut wire = cluster.node(1).wire();
    let created = wire.call(Request::CreateTopic(CreateTopicRequest {
        name: "pay".to_string(),
        partitions: 1,
        replication_factor: Some(3),
        config: TopicConfig::default(),
    }));
    assert!(
        matches!(created, Ok(Response::CreateTopic(_))),
        "{created:?}"
    );
    for node in &cluster.nodes {
        assert!(
            eventually(Duration::from_secs(20), || list_topics(node)
                .is_ok_and(|topics| topics.contains(&"pay".to_string()))),
            "node {} never listed 'pay'",
            node.node_id
        );
    }
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        // The `__meta` leader is the interesting victim: when it comes back, a new leader of
        // a newer epoch first finds where their logs diverge, and in between the restarted
        // node knows a leader but no commit point yet.
        let victim = meta_leader(&cluster);
        cluster.node_mut(victim).kill();
        let survivor = cluster
            .nodes
            .iter()
            .find(|node| node.node_id != victim)
            .expect("three nodes");
        assert!(
            eventually(Duration::from_secs(20), || {
                meta_leader_seen_by(survivor).is_some_and(|leader| leader != victim)
            }),
            "no new __meta leader after node {victim} was killed"
        );
        cluster.node_mut(victim).launch();
        // Ask the restarted node as soon as it listens, and keep asking until it answers: the
        // first list it answers must hold 'pay'.
        let address = cluster.node(victim).address();
        let deadline = Instant::now() + Duration::from_secs(30);
        let listed = loop {
            assert!(
                Instant::now() < deadline,
                "node {victim} never listed topics"
            );
            let Ok(stream) = std::net::TcpStream::connect(address) else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            drop(stream);
            match list_topics_at(address) {
                Ok(topics) => break topics,
                Err(error) if error.is_retriable() => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(error) => panic!("node {victim} refused ListTopics: {error:?}"),
            }
        };
        if !listed.contains(&"pay".to_string()) {
            failures.push(format!(
                "round {round}: restarted node {victim} listed {listed:?}"
            ));
        }
        cluster.node_mut(victim).wait_ready();
        let mut bootstrap = vec![cluster.node(victim).address().to_string()];
        bootstrap.extend(
            cluster
                .nodes
                .iter()
                .filter(|node| node.node_id != victim)
                .map(|node| node.address().to_string()),
        );
        let (code, stderr) = cli_produce(&bootstrap.join(","), &format!("round-{round}"));
        if code != 0 {
            failures.push(format!("round {round}: produce exited {code}: {stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nlogs:\n{}",
        cluster.logs()
    );
}
