//! Consumer groups through the Kafka listener, against real nodes: kcat (Debian's, on
//! librdkafka) consumers in one group split a topic's partitions, commit, and a later run of
//! the group resumes from the commits, which `cairn group describe` shows; raw-wire tests of
//! FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! ListGroups and DescribeGroups, bad input included. kcat must be installed (Debian:
//! `apt-get install kcat`), or named by `KCAT=`.

mod support;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::kafka::KafkaWire;
use support::{cairn_binary, TestNode};

/// How long one kcat run that ends by itself may take.
const KCAT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a condition polled below may take to hold before the test fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

// Kafka error codes the tests expect.
const NONE: i16 = 0;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_REQUEST: i16 = 42;
const MEMBER_ID_REQUIRED: i16 = 79;
const NOT_COORDINATOR: i16 = 16;

fn kcat_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KCAT") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kcat"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("kcat is not installed (Debian: apt-get install kcat), or set KCAT=/path/to/kcat")
    })
}

/// Polls `check` until it returns true, failing the test after [`SETTLE_TIMEOUT`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "{what}: not within {SETTLE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `child` to exit, killing it (and failing) after `timeout`.
fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for kcat") {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kcat group consumer (`-C -G group topic`, unbuffered) writing `partition value` lines
/// to `stdout_path` and its log to `stderr_path`.
fn group_consumer(
    broker: &str,
    group: &str,
    topic: &str,
    dir: &Path,
    name: &str,
    to_end: bool,
) -> Child {
    let stdout = std::fs::File::create(dir.join(format!("{name}.out"))).expect("stdout file");
    let stderr = std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file");
    let mut command = support::foreign_client(kcat_binary());
    command.args(["-b", broker, "-C", "-G", group, "-u", "-f", "%p %s\n"]);
    command.args([
        "-X",
        "auto.offset.reset=earliest",
        "-X",
        "session.timeout.ms=6000",
    ]);
    command.args(["-X", "heartbeat.interval.ms=500"]);
    if to_end {
        command.arg("-e");
    }
    command
        .arg(topic)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("kcat starts")
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The partitions of the last assignment kcat logged, if any.
fn last_assignment(stderr: &Path) -> Option<Vec<String>> {
    let log = std::fs::read_to_string(stderr).unwrap_or_default();
    let line = log.lines().rev().find(|line| line.contains("rebalanced"))?;
    let (_, assigned) = line.split_once("assigned: ")?;
    Some(assigned.split(", ").map(str::to_string).collect())
}

fn produce(broker: &str, topic: &str, values: &[String]) {
    let mut child = support::foreign_client(kcat_binary())
        .args(["-b", broker, "-P", "-t", topic, "-K", ":"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat starts");
    let input: String = values.iter().map(|v| format!("{v}:{v}\n")).collect();
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("write kcat's input");
    wait_bounded(&mut child, KCAT_TIMEOUT, "kcat -P");
}

fn cairn(node: &TestNode, args: &[&str]) -> String {
    let output = Command::new(cairn_binary())
        .args(args)
        .args(["--bootstrap", &node.address().to_string()])
        .output()
        .expect("the cairn CLI runs");
    assert!(
        output.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The committed offsets `cairn group describe` shows, by partition.
fn described_commits(node: &TestNode, group: &str) -> Vec<(u32, Option<u64>, u64)> {
    let json = cairn(node, &["group", "describe", group, "--output", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("describe prints JSON");
    value["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().expect("partition") as u32,
                p["committed"].as_u64(),
                p["log_end"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn kcat_group_consumers_split_partitions_commit_and_a_later_run_resumes() {
    let node = TestNode::start();
    cairn(&node, &["topic", "create", "orders", "--partitions", "4"]);
    let broker = node.kafka_address().to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");

    // Two consumers join one group; each ends up with two of the four partitions.
    let mut first = group_consumer(&broker, "billing", "orders", dir.path(), "first", false);
    let mut second = group_consumer(&broker, "billing", "orders", dir.path(), "second", false);
    eventually("both consumers hold two partitions each", || {
        let a = last_assignment(&dir.path().join("first.err")).unwrap_or_default();
        let b = last_assignment(&dir.path().join("second.err")).unwrap_or_default();
        let all: BTreeSet<&String> = a.iter().chain(&b).collect();
        a.len() == 2 && b.len() == 2 && all.len() == 4
    });
    // `cairn group describe` shows the classic group: its generation, protocol, members and
    // who owns which partition (decoded from the consumer protocol's assignment bytes).
    eventually("cairn group describe shows two classic members", || {
        let json = cairn(&node, &["group", "describe", "billing", "--output", "json"]);
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let owners: BTreeSet<&str> = value["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter_map(|p| p["owner"].as_str())
            .collect();
        value["members"].as_array().map(Vec::len) == Some(2)
            && value["assignor"]
                .as_str()
                .is_some_and(|a| a.starts_with("classic:consumer/"))
            && value["group_epoch"].as_i64() >= Some(1)
            && owners.len() == 2
    });
    let written = values("v", 40);
    produce(&broker, "orders", &written);
    let read = || {
        let mut lines = read_lines(&dir.path().join("first.out"));
        lines.extend(read_lines(&dir.path().join("second.out")));
        lines
    };
    eventually("the two consumers read all 40 records", || {
        read().len() >= 40
    });
    // SIGTERM: kcat closes its consumer, which commits and leaves the group.
    for child in [&mut first, &mut second] {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        wait_bounded(child, KCAT_TIMEOUT, "kcat -G after SIGTERM");
    }
    let first_lines = read_lines(&dir.path().join("first.out"));
    let second_lines = read_lines(&dir.path().join("second.out"));
    assert!(!first_lines.is_empty() && !second_lines.is_empty());
    let mut seen: Vec<String> = read()
        .iter()
        .map(|line| line.split_once(' ').expect("partition value").1.to_string())
        .collect();
    seen.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(seen, expected, "each record read once across the two");
    // No partition was read by both.
    let partitions = |lines: &[String]| -> BTreeSet<String> {
        lines
            .iter()
            .map(|line| line.split_once(' ').unwrap().0.to_string())
            .collect()
    };
    assert!(partitions(&first_lines).is_disjoint(&partitions(&second_lines)));

    // The commits are Cairn's: `cairn group describe` shows every partition read to its end.
    eventually("describe shows the Kafka commits at the log end", || {
        let described = described_commits(&node, "billing");
        described.len() == 4
            && described
                .iter()
                .all(|(_, committed, end)| *committed == Some(*end))
    });

    // A third run resumes from the commits: it reads only what came after.
    let later = values("w", 10);
    produce(&broker, "orders", &later);
    let mut third = group_consumer(&broker, "billing", "orders", dir.path(), "third", true);
    wait_bounded(&mut third, KCAT_TIMEOUT, "kcat -G -e");
    let mut resumed: Vec<String> = read_lines(&dir.path().join("third.out"))
        .iter()
        .map(|line| line.split_once(' ').unwrap().1.to_string())
        .collect();
    resumed.sort();
    assert_eq!(resumed, later);

    // And the other way round: offsets Cairn's CLI commits are where Kafka consumers start.
    eventually("the group is empty again", || {
        cairn(&node, &["group", "list"])
            .lines()
            .any(|line| line.starts_with("billing") && line.contains("empty"))
    });
    cairn(
        &node,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to-earliest",
            "--execute",
        ],
    );
    let mut again = group_consumer(&broker, "billing", "orders", dir.path(), "again", true);
    wait_bounded(&mut again, KCAT_TIMEOUT, "kcat -G -e after a reset");
    assert_eq!(read_lines(&dir.path().join("again.out")).len(), 50);
}

// ---------------------------------------------------------------- raw wire

fn group(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn find_coordinator(wire: &mut KafkaWire, group_id: &str) -> FindCoordinatorResponse {
    let started = Instant::now();
    loop {
        let response: FindCoordinatorResponse = wire.call(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(text(group_id)),
        );
        if response.error_code == NONE {
            return response;
        }
        // COORDINATOR_NOT_AVAILABLE while `__offsets` is created and its leaders elected.
        assert_eq!(response.error_code, 15, "{response:?}");
        assert!(started.elapsed() < SETTLE_TIMEOUT, "no coordinator");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn join_request(group_id: &str, member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(group(group_id))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(5_000)
        .with_member_id(text(member_id))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(text("range"))
            .with_metadata(Bytes::from_static(b"subscription bytes"))])
}

/// Joins `group_id` as a new member through KIP-394's two steps; retries while the
/// coordinator loads. Returns the join answer.
fn join_new(wire: &mut KafkaWire, group_id: &str) -> JoinGroupResponse {
    let started = Instant::now();
    let first: JoinGroupResponse = loop {
        let response: JoinGroupResponse =
            wire.call(ApiKey::JoinGroup, 5, &join_request(group_id, ""));
        // COORDINATOR_LOAD_IN_PROGRESS (14) until the new leader's marker is committed.
        if response.error_code != 14 {
            break response;
        }
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "the coordinator never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED, "{first:?}");
    let member_id = first.member_id.to_string();
    // Kafka's `clientId-...`: the assignors order members by id, so by client id first.
    assert!(member_id.starts_with("cairn-test-"), "{member_id}");
    let joined: JoinGroupResponse =
        wire.call(ApiKey::JoinGroup, 5, &join_request(group_id, &member_id));
    assert_eq!(joined.error_code, NONE, "{joined:?}");
    assert_eq!(joined.member_id.to_string(), member_id);
    joined
}

fn commit_request(
    group_id: &str,
    generation: i32,
    member_id: &str,
    offset: i64,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(group(group_id))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(text(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(text("orders")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(offset)
                .with_committed_metadata(Some(text("note")))])])
}

fn committed(wire: &mut KafkaWire, group_id: &str) -> (i64, String) {
    let response: OffsetFetchResponse = wire.call(
        ApiKey::OffsetFetch,
        7,
        &OffsetFetchRequest::default()
            .with_group_id(group(group_id))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(text("orders")))
                .with_partition_indexes(vec![1])])),
    );
    assert_eq!(response.error_code, NONE);
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, NONE);
    (
        partition.committed_offset,
        partition
            .metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

/// Commits pipelined on one connection are applied in the order they were sent, so the last
/// one is what the group keeps (librdkafka sends async commits without waiting for answers;
/// its suite's 0030_offset_commit found a committed offset one behind the last commit).
#[test]
fn pipelined_commits_on_one_connection_apply_in_order() {
    let node = TestNode::start();
    cairn(&node, &["topic", "create", "orders", "--partitions", "2"]);
    let mut wire = KafkaWire::connect(node.kafka_address());
    find_coordinator(&mut wire, "pipelined");
    // A simple commit (no generation, no member) into a group nobody joined, first alone
    // while the coordinator loads.
    let started = Instant::now();
    loop {
        let response: OffsetCommitResponse = wire.call(
            ApiKey::OffsetCommit,
            8,
            &commit_request("pipelined", -1, "", 0),
        );
        let error = response.topics[0].partitions[0].error_code;
        if error == NONE {
            break;
        }
        // COORDINATOR_LOAD_IN_PROGRESS until the coordinator's marker is committed.
        assert_eq!(error, 14, "{response:?}");
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "the coordinator never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fewer than the test preset's requests in flight per connection (32).
    for round in 0..5 {
        let offsets: Vec<i64> = (1..=30).map(|i| round * 100 + i).collect();
        for offset in &offsets {
            wire.send(
                ApiKey::OffsetCommit,
                8,
                &commit_request("pipelined", -1, "", *offset),
            );
        }
        for _ in &offsets {
            let (_, response): (i32, OffsetCommitResponse) = wire.receive(ApiKey::OffsetCommit, 8);
            assert_eq!(response.topics[0].partitions[0].error_code, NONE);
        }
        assert_eq!(committed(&mut wire, "pipelined").0, round * 100 + 30);
    }
}

#[test]
fn the_classic_protocol_over_the_wire_fences_bad_members_and_keeps_offsets() {
    let node = TestNode::start();
    cairn(&node, &["topic", "create", "orders", "--partitions", "2"]);
    let address = node.kafka_address();
    let mut wire = KafkaWire::connect(address);

    // FindCoordinator: the lone node, at its Kafka address; v4 batches keys; transactions
    // are refused with a typed error.
    let found = find_coordinator(&mut wire, "payments");
    assert_eq!(
        (found.node_id.0, found.port),
        (1, i32::from(address.port()))
    );
    assert_eq!(found.host.to_string(), address.ip().to_string());
    let batched: FindCoordinatorResponse = wire.call(
        ApiKey::FindCoordinator,
        4,
        &FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![text("payments"), text("other")]),
    );
    assert_eq!(batched.coordinators.len(), 2);
    assert!(batched
        .coordinators
        .iter()
        .all(|c| c.error_code == NONE && c.node_id.0 == 1));
    let transaction: FindCoordinatorResponse = wire.call(
        ApiKey::FindCoordinator,
        4,
        &FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![text("txn")]),
    );
    assert_eq!(transaction.coordinators[0].error_code, INVALID_REQUEST);

    // A lone member joins (KIP-394), leads generation 1 and assigns itself.
    let joined = join_new(&mut wire, "payments");
    let member = joined.member_id.to_string();
    assert_eq!(
        (joined.generation_id, joined.leader.to_string()),
        (1, member.clone())
    );
    assert_eq!(joined.members.len(), 1);
    assert_eq!(
        joined.members[0].metadata,
        Bytes::from_static(b"subscription bytes")
    );
    let synced: SyncGroupResponse = wire.call(
        ApiKey::SyncGroup,
        5,
        &SyncGroupRequest::default()
            .with_group_id(group("payments"))
            .with_generation_id(1)
            .with_member_id(text(&member))
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")))
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(text(&member))
                .with_assignment(Bytes::from_static(b"my partitions"))]),
    );
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment, Bytes::from_static(b"my partitions"));
    assert_eq!(
        synced.protocol_name.map(|p| p.to_string()),
        Some("range".into())
    );

    // Heartbeats: fine for the member; typed refusals for a stranger or a stale generation.
    let beat = |wire: &mut KafkaWire, member: &str, generation: i32| -> i16 {
        let response: HeartbeatResponse = wire.call(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(group("payments"))
                .with_generation_id(generation)
                .with_member_id(text(member)),
        );
        response.error_code
    };
    assert_eq!(beat(&mut wire, &member, 1), NONE);
    assert_eq!(beat(&mut wire, "stranger", 1), UNKNOWN_MEMBER_ID);
    assert_eq!(beat(&mut wire, &member, 0), ILLEGAL_GENERATION);

    // Commits: the member's is kept (with its metadata); a stranger's, a stale generation's
    // and a simple commit into a group with members change nothing.
    let commit = |wire: &mut KafkaWire, request: &OffsetCommitRequest| -> i16 {
        let response: OffsetCommitResponse = wire.call(ApiKey::OffsetCommit, 8, request);
        response.topics[0].partitions[0].error_code
    };
    assert_eq!(
        commit(&mut wire, &commit_request("payments", 1, &member, 7)),
        NONE
    );
    assert_eq!(committed(&mut wire, "payments"), (7, "note".to_string()));
    assert_eq!(
        commit(&mut wire, &commit_request("payments", 1, "stranger", 99)),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        commit(&mut wire, &commit_request("payments", 0, &member, 99)),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        commit(&mut wire, &commit_request("payments", -1, "", 99)),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(committed(&mut wire, "payments").0, 7);

    // A JoinGroup naming a member id the coordinator never gave: refused, nothing changes.
    let stranger: JoinGroupResponse =
        wire.call(ApiKey::JoinGroup, 5, &join_request("payments", "stranger"));
    assert_eq!(stranger.error_code, UNKNOWN_MEMBER_ID);
    assert_eq!(
        beat(&mut wire, &member, 1),
        NONE,
        "still stable in generation 1"
    );

    // ListGroups and DescribeGroups show the classic group, its member and assignment.
    let listed: ListGroupsResponse =
        wire.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default());
    let payments = listed
        .groups
        .iter()
        .find(|g| g.group_id.0.to_string() == "payments")
        .expect("listed");
    assert_eq!(payments.group_state.to_string(), "Stable");
    let described: DescribeGroupsResponse = wire.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("payments"), group("nobody")]),
    );
    let payments = &described.groups[0];
    assert_eq!(payments.group_state.to_string(), "Stable");
    assert_eq!(payments.protocol_data.to_string(), "range");
    assert_eq!(payments.members.len(), 1);
    // The client id and address the member joined from, as Kafka shows them.
    assert_eq!(payments.members[0].client_id.to_string(), "cairn-test");
    assert_eq!(payments.members[0].client_host.to_string(), "/127.0.0.1");
    assert_eq!(
        payments.members[0].member_assignment,
        Bytes::from_static(b"my partitions")
    );
    assert_eq!(described.groups[1].group_state.to_string(), "Dead");

    // LeaveGroup v3+ batches members: the stranger is refused, the member leaves.
    let left: LeaveGroupResponse = wire.call(
        ApiKey::LeaveGroup,
        5,
        &LeaveGroupRequest::default()
            .with_group_id(group("payments"))
            .with_members(vec![
                MemberIdentity::default().with_member_id(text("stranger")),
                MemberIdentity::default().with_member_id(text(&member)),
            ]),
    );
    assert_eq!(left.error_code, NONE);
    assert_eq!(left.members[0].error_code, UNKNOWN_MEMBER_ID);
    assert_eq!(left.members[1].error_code, NONE);
    assert_eq!(beat(&mut wire, &member, 1), UNKNOWN_MEMBER_ID);

    // Empty now: a simple commit (assign() mode: generation -1, no member) is accepted, and
    // OffsetFetch v8 (batched groups) reads it; the offsets stay Cairn's.
    assert_eq!(
        commit(&mut wire, &commit_request("payments", -1, "", 11)),
        NONE
    );
    let fetched: OffsetFetchResponse = wire.call(
        ApiKey::OffsetFetch,
        8,
        &OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(group("payments"))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(TopicName(text("orders")))
                    .with_partition_indexes(vec![0, 1])])),
            OffsetFetchRequestGroup::default()
                .with_group_id(group("payments"))
                .with_topics(None),
        ]),
    );
    let asked = &fetched.groups[0].topics[0].partitions;
    assert_eq!(
        asked.iter().map(|p| p.committed_offset).collect::<Vec<_>>(),
        [-1, 11]
    );
    assert_eq!(
        fetched.groups[1].topics[0].partitions.len(),
        1,
        "every committed partition"
    );
    let described = described_commits(&node, "payments");
    assert!(
        described.iter().any(|p| p.0 == 1 && p.1 == Some(11)),
        "cairn group describe shows the Kafka commit: {described:?}"
    );
}

/// Coordinators follow leadership as it happens: with the expiry timer set to ten minutes, a
/// new `__offsets` leader still starts coordinating as soon as it serves (a coordinator that
/// only started on the timer would answer COORDINATOR_LOAD_IN_PROGRESS for ten minutes).
#[test]
fn a_coordinator_starts_when_its_leader_serves_not_on_a_timer() {
    let node = TestNode::start_with(&["--set", "groups.expiry_check_ms=600000"]);
    cairn(&node, &["topic", "create", "orders", "--partitions", "2"]);
    let mut wire = KafkaWire::connect(node.kafka_address());
    find_coordinator(&mut wire, "prompt");
    let joined = join_new(&mut wire, "prompt");
    assert_eq!(joined.leader, joined.member_id, "{joined:?}");
}

#[test]
fn a_cairn_protocol_group_refuses_classic_members() {
    let node = TestNode::start();
    cairn(&node, &["topic", "create", "orders", "--partitions", "2"]);
    let mut wire = KafkaWire::connect(node.kafka_address());
    find_coordinator(&mut wire, "mixed");
    // A classic member holds the group: a Cairn-protocol consumer's join is refused.
    let joined = join_new(&mut wire, "mixed");
    assert_eq!(joined.error_code, NONE);
    let mut cairn_wire = node.wire();
    let refused = cairn_wire.call(cairn_protocol::Request::ConsumerGroupHeartbeat(
        cairn_protocol::group::ConsumerGroupHeartbeatRequest {
            group_id: "mixed".into(),
            member_id: String::new(),
            member_epoch: cairn_protocol::group::MemberEpoch::JOIN,
            instance_id: None,
            rebalance_timeout_ms: 5_000,
            session_timeout_ms: 10_000,
            subscribed_topics: Some(vec!["orders".into()]),
            assignor: None,
            owned: Some(vec![]),
        },
    ));
    assert!(
        matches!(
            refused,
            Err(cairn_protocol::ApiError::InconsistentGroupProtocol { .. })
        ),
        "{refused:?}"
    );
    // And a Cairn-protocol group refuses a classic JoinGroup.
    let cairn_joined = cairn_wire.call(cairn_protocol::Request::ConsumerGroupHeartbeat(
        cairn_protocol::group::ConsumerGroupHeartbeatRequest {
            group_id: "native".into(),
            member_id: String::new(),
            member_epoch: cairn_protocol::group::MemberEpoch::JOIN,
            instance_id: None,
            rebalance_timeout_ms: 5_000,
            session_timeout_ms: 10_000,
            subscribed_topics: Some(vec!["orders".into()]),
            assignor: None,
            owned: Some(vec![]),
        },
    ));
    assert!(cairn_joined.is_ok(), "{cairn_joined:?}");
    let classic: JoinGroupResponse = wire.call(ApiKey::JoinGroup, 5, &join_request("native", ""));
    assert_eq!(classic.error_code, INCONSISTENT_GROUP_PROTOCOL);
}

#[test]
fn oversize_group_requests_close_the_connection_and_change_nothing() {
    let node = TestNode::start_with(&["--set", "limits.request_entries_max=16"]);
    cairn(&node, &["topic", "create", "orders", "--partitions", "2"]);
    let mut wire = KafkaWire::connect(node.kafka_address());
    find_coordinator(&mut wire, "big");
    let joined = join_new(&mut wire, "big");
    let member = joined.member_id.to_string();
    // 17 members in one LeaveGroup: more entries than the limit; the connection closes.
    let members: Vec<MemberIdentity> =
        std::iter::repeat_with(|| MemberIdentity::default().with_member_id(text(&member)))
            .take(17)
            .collect();
    wire.send(
        ApiKey::LeaveGroup,
        5,
        &LeaveGroupRequest::default()
            .with_group_id(group("big"))
            .with_members(members),
    );
    assert!(wire.is_closed_by_node());
    // The member is still in the group.
    let mut wire = KafkaWire::connect(node.kafka_address());
    let response: HeartbeatResponse = wire.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default()
            .with_group_id(group("big"))
            .with_generation_id(joined.generation_id)
            .with_member_id(text(&member)),
    );
    assert_eq!(response.error_code, NONE);
}

#[test]
fn in_a_cluster_every_node_names_the_coordinator_and_kcat_groups_reach_it() {
    let cluster = TestCluster::start(3, &[]);
    cairn(
        &cluster.nodes[0],
        &["topic", "create", "ledger", "--partitions", "3"],
    );
    let kafka: Vec<std::net::SocketAddr> =
        cluster.nodes.iter().map(TestNode::kafka_address).collect();
    // Every node names the same coordinator, at that node's Kafka address.
    let mut coordinator = None;
    eventually(
        "every node names one coordinator with its Kafka address",
        || {
            let named: Vec<(i32, String)> = kafka
                .iter()
                .map(|address| {
                    let found =
                        find_coordinator(&mut KafkaWire::connect(*address), "ledger-readers");
                    (found.node_id.0, format!("{}:{}", found.host, found.port))
                })
                .collect();
            let agreed = named.iter().all(|n| *n == named[0]);
            let (node, address) = named[0].clone();
            let right_address = kafka
                .get((node - 1) as usize)
                .is_some_and(|kafka| kafka.to_string() == address);
            coordinator = Some(node);
            agreed && right_address
        },
    );
    let coordinator = coordinator.expect("found") as usize;
    // A JoinGroup sent elsewhere is refused with NOT_COORDINATOR (clients look again).
    let elsewhere = kafka[coordinator % 3];
    let refused: JoinGroupResponse = KafkaWire::connect(elsewhere).call(
        ApiKey::JoinGroup,
        5,
        &join_request("ledger-readers", ""),
    );
    assert_eq!(refused.error_code, NOT_COORDINATOR);

    // kcat bootstrapped at another node finds the coordinator and reads every record once.
    let broker = elsewhere.to_string();
    let written = values("entry", 30);
    produce(&broker, "ledger", &written);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut reader = group_consumer(
        &broker,
        "ledger-readers",
        "ledger",
        dir.path(),
        "reader",
        true,
    );
    wait_bounded(&mut reader, KCAT_TIMEOUT, "kcat -G -e on a cluster");
    let mut read: Vec<String> = read_lines(&dir.path().join("reader.out"))
        .iter()
        .map(|line| line.split_once(' ').unwrap().1.to_string())
        .collect();
    read.sort();
    let mut expected = written;
    expected.sort();
    assert_eq!(read, expected);
    eventually("the commits show in cairn group describe", || {
        let described = described_commits(&cluster.nodes[2], "ledger-readers");
        described.len() == 3 && described.iter().all(|(_, c, end)| *c == Some(*end))
    });
}

/// One KIP-848 heartbeat: (error, member id, epoch, assigned partitions of the topic).
fn consumer_heartbeat(
    wire: &mut KafkaWire,
    member_id: &str,
    epoch: i32,
    topic_id: uuid::Uuid,
    owned: &[i32],
) -> (i16, String, i32, Vec<i32>) {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    let request = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(group("kip848"))
        .with_member_id(text(member_id))
        .with_member_epoch(epoch)
        .with_rebalance_timeout_ms(if epoch == 0 { 30_000 } else { -1 })
        .with_subscribed_topic_names((epoch == 0).then(|| vec![TopicName(text("orders"))]))
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic_id(topic_id)
            .with_partitions(owned.to_vec())]));
    let response: ConsumerGroupHeartbeatResponse =
        wire.call(ApiKey::ConsumerGroupHeartbeat, 0, &request);
    let mut assigned: Vec<i32> = response
        .assignment
        .iter()
        .flat_map(|a| &a.topic_partitions)
        .filter(|t| t.topic_id == topic_id)
        .flat_map(|t| t.partitions.clone())
        .collect();
    assigned.sort_unstable();
    (
        response.error_code,
        response
            .member_id
            .map(|m| m.to_string())
            .unwrap_or_default(),
        response.member_epoch,
        assigned,
    )
}

#[test]
fn kip_848_members_share_partitions_and_commit_with_their_epochs() {
    let node = TestNode::start();
    cairn(&node, &["topic", "create", "orders", "--partitions", "4"]);
    let mut wire = KafkaWire::connect(node.kafka_address());
    find_coordinator(&mut wire, "kip848");
    let metadata: MetadataResponse = wire.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    let topic_id = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.to_string()) == Some("orders".into()))
        .expect("orders listed")
        .topic_id;

    // Two members join; each heartbeats with what it owns until the split settles.
    let mut members: Vec<(String, i32, Vec<i32>)> = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let (error, id, epoch, assigned) = loop {
            let answer = consumer_heartbeat(&mut wire, "", 0, topic_id, &[]);
            if answer.0 != 14 {
                break answer;
            }
            assert!(started.elapsed() < SETTLE_TIMEOUT);
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(error, NONE);
        assert!(!id.is_empty() && epoch > 0);
        members.push((id, epoch, assigned));
    }
    eventually("two members with two partitions each", || {
        for member in &mut members {
            let (error, _, epoch, assigned) =
                consumer_heartbeat(&mut wire, &member.0, member.1, topic_id, &member.2);
            assert_eq!(error, NONE);
            member.1 = epoch;
            member.2 = assigned;
        }
        let all: BTreeSet<i32> = members.iter().flat_map(|m| m.2.clone()).collect();
        members.iter().all(|m| m.2.len() == 2) && all.len() == 4
    });

    // A commit carries the member epoch (OffsetCommit 9); a wrong epoch is fenced.
    let (id, epoch, owned) = members[0].clone();
    let commit = |wire: &mut KafkaWire, epoch: i32| -> i16 {
        let request = OffsetCommitRequest::default()
            .with_group_id(group("kip848"))
            .with_generation_id_or_member_epoch(epoch)
            .with_member_id(text(&id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(text("orders")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(owned[0])
                    .with_committed_offset(3)])]);
        let response: OffsetCommitResponse = wire.call(ApiKey::OffsetCommit, 9, &request);
        response.topics[0].partitions[0].error_code
    };
    assert_eq!(commit(&mut wire, epoch), NONE);
    assert_eq!(commit(&mut wire, epoch + 5), 110, "FENCED_MEMBER_EPOCH");
    let fetched: OffsetFetchResponse = wire.call(
        ApiKey::OffsetFetch,
        9,
        &OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(group("kip848"))
            .with_member_id(Some(text(&id)))
            .with_member_epoch(epoch)
            .with_topics(None)]),
    );
    assert_eq!(fetched.groups[0].error_code, NONE);
    assert_eq!(
        fetched.groups[0].topics[0].partitions[0].committed_offset,
        3
    );

    // The group is a "consumer" group to ListGroups and DescribeGroups; a classic join is
    // refused.
    let listed: ListGroupsResponse =
        wire.call(ApiKey::ListGroups, 5, &ListGroupsRequest::default());
    let listed = listed
        .groups
        .iter()
        .find(|g| g.group_id.0.to_string() == "kip848")
        .expect("listed");
    assert_eq!(listed.group_type.to_string(), "consumer");
    let classic: JoinGroupResponse = wire.call(ApiKey::JoinGroup, 5, &join_request("kip848", ""));
    assert_eq!(classic.error_code, INCONSISTENT_GROUP_PROTOCOL);

    // Leaving (epoch -1): the other member ends up with all four.
    let (error, _, left_epoch, _) = consumer_heartbeat(&mut wire, &id, -1, topic_id, &[]);
    assert_eq!((error, left_epoch), (NONE, -1));
    let mut other = members[1].clone();
    eventually("the remaining member owns all four", || {
        let (error, _, epoch, assigned) =
            consumer_heartbeat(&mut wire, &other.0, other.1, topic_id, &other.2);
        assert_eq!(error, NONE);
        other.1 = epoch;
        other.2 = assigned;
        other.2.len() == 4
    });
    let (error, ..) = consumer_heartbeat(&mut wire, "stranger", 3, topic_id, &[]);
    assert_eq!(error, UNKNOWN_MEMBER_ID);
}

#[test]
fn a_join_waits_for_the_others_without_blocking_the_group_and_silent_members_expire() {
    let node = TestNode::start();
    cairn(&node, &["topic", "create", "orders", "--partitions", "2"]);
    let address = node.kafka_address();
    let mut first = KafkaWire::connect(address);
    find_coordinator(&mut first, "waiting");
    let a = join_new(&mut first, "waiting");
    let a_id = a.member_id.to_string();
    let sync = |wire: &mut KafkaWire, member: &str, generation: i32| -> SyncGroupResponse {
        wire.call(
            ApiKey::SyncGroup,
            3,
            &SyncGroupRequest::default()
                .with_group_id(group("waiting"))
                .with_generation_id(generation)
                .with_member_id(text(member))
                .with_assignments(if member == a_id {
                    vec![SyncGroupRequestAssignment::default()
                        .with_member_id(text(member))
                        .with_assignment(Bytes::from_static(b"a"))]
                } else {
                    Vec::new()
                }),
        )
    };
    assert_eq!(sync(&mut first, &a_id, 1).error_code, NONE);

    // b joins on its own connection: its JoinGroup waits for a to rejoin.
    let mut second = KafkaWire::connect(address);
    let b_required: JoinGroupResponse =
        second.call(ApiKey::JoinGroup, 5, &join_request("waiting", ""));
    assert_eq!(b_required.error_code, MEMBER_ID_REQUIRED);
    let b_id = b_required.member_id.to_string();
    let b_join = second.send(ApiKey::JoinGroup, 5, &join_request("waiting", &b_id));
    // Meanwhile the coordinator answers a at once: a rebalance is in progress (once b's join,
    // sent on another connection, has reached it: until then a is simply in a stable group).
    eventually("a's heartbeat answered REBALANCE_IN_PROGRESS", || {
        let beat: HeartbeatResponse = first.call(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(group("waiting"))
                .with_generation_id(1)
                .with_member_id(text(&a_id)),
        );
        assert!([NONE, 27].contains(&beat.error_code), "{beat:?}");
        beat.error_code == 27
    });
    // a rejoins: both answers come, generation 2, a leads with both members' metadata.
    let a_again: JoinGroupResponse =
        first.call(ApiKey::JoinGroup, 5, &join_request("waiting", &a_id));
    assert_eq!((a_again.error_code, a_again.generation_id), (NONE, 2));
    assert_eq!(a_again.members.len(), 2);
    let (received, b_joined): (i32, JoinGroupResponse) = second.receive(ApiKey::JoinGroup, 5);
    assert_eq!(received, b_join);
    assert_eq!((b_joined.error_code, b_joined.generation_id), (NONE, 2));
    assert!(
        b_joined.members.is_empty(),
        "only the leader gets the member list"
    );
    // b's SyncGroup waits for the leader's.
    let b_sync = second.send(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(group("waiting"))
            .with_generation_id(2)
            .with_member_id(text(&b_id)),
    );
    let a_sync: SyncGroupResponse = first.call(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(group("waiting"))
            .with_generation_id(2)
            .with_member_id(text(&a_id))
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(text(&a_id))
                    .with_assignment(Bytes::from_static(b"for a")),
                SyncGroupRequestAssignment::default()
                    .with_member_id(text(&b_id))
                    .with_assignment(Bytes::from_static(b"for b")),
            ]),
    );
    assert_eq!(a_sync.assignment, Bytes::from_static(b"for a"));
    let (received, b_synced): (i32, SyncGroupResponse) = second.receive(ApiKey::SyncGroup, 3);
    assert_eq!(received, b_sync);
    assert_eq!(b_synced.assignment, Bytes::from_static(b"for b"));

    // b goes silent (no heartbeats; its session is 10 s): it is removed and the group
    // rebalances, which a hears at its next heartbeat.
    eventually("b's session ends", || {
        let beat: HeartbeatResponse = first.call(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(group("waiting"))
                .with_generation_id(2)
                .with_member_id(text(&a_id)),
        );
        beat.error_code == 27
    });
    let described: DescribeGroupsResponse = first.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("waiting")]),
    );
    let members: Vec<String> = described.groups[0]
        .members
        .iter()
        .map(|m| m.member_id.to_string())
        .collect();
    assert_eq!(members, [a_id]);
}
