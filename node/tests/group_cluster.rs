//! Consumer groups on a 3-node cluster of real `cairn node` processes, with the Rust client's
//! `Consumer::subscribe` and real `cairn consume --group` processes as members. One test per
//! claim of issue 4's "what it must show":
//!
//! - six partitions split over three members, then a fourth joins: only moved partitions pause,
//!   each is revoked before its new owner gets it, and a fenced epoch's commit is refused;
//! - a SIGKILLed member process loses its partitions after its session timeout; a static one
//!   restarted within the timeout keeps them and nothing moves;
//! - two groups on one topic each receive every record;
//! - `commit_sync`, crash, restart: the consumer resumes at the commit, nothing skipped;
//! - the coordinator's node is killed: the group keeps consuming and committing, and no
//!   committed offset goes backwards;
//! - `cairn group describe` shows the right lag while a producer runs;
//! - `cairn consume --group` run twice, then two at once: no record printed twice, none skipped.
//!
//! The tests take a process-wide lock and run one at a time: each starts three nodes, and the
//! timings they assert mean little on a machine running several clusters at once.

mod support;

use cairn_client::{
    Admin, AutoOffsetReset, ClientConfig, Connection, Consumer, ConsumerConfig, ConsumerRecord,
    Offset, Producer, ProducerConfig, RebalanceListener, Record, TopicConfig, TopicPartition,
};
use cairn_protocol::group::{
    FindCoordinatorRequest, MemberEpoch, OffsetCommitPartition, OffsetCommitRequest,
};
use cairn_protocol::messages::OffsetSpec;
use cairn_protocol::{ApiError, NodeId, Request, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;

const TOPIC: &str = "orders";

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster test at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn client_config(cluster: &TestCluster) -> ClientConfig {
    ClientConfig::new(&cluster.bootstrap())
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
}

fn consumer_config(session_timeout_ms: u32, instance_id: Option<&str>) -> ConsumerConfig {
    let config = ConsumerConfig::default()
        .auto_offset_reset(AutoOffsetReset::Earliest)
        .fetch_max_wait(Duration::from_millis(100))
        .session_timeout(Duration::from_millis(u64::from(session_timeout_ms)))
        .rebalance_timeout(Duration::from_secs(10));
    match instance_id {
        Some(instance_id) => config.group_instance_id(instance_id),
        None => config,
    }
}

/// A 3-node cluster with topic `TOPIC` of `partitions` partitions, 3 replicas each.
async fn cluster_with_topic(partitions: u32) -> TestCluster {
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start(3, &[]))
        .await
        .unwrap();
    let admin = Admin::new(client_config(&cluster)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every node is ready, but gossip may not have told the `__meta` leader yet that all
    // three are alive: three replicas cannot be placed until it has.
    loop {
        match admin
            .create_topic(TOPIC, partitions, Some(3), TopicConfig::default())
            .await
        {
            Ok(_) => return cluster,
            Err(error)
                if matches!(
                    error.api_error(),
                    Some(ApiError::InvalidReplicationFactor { .. })
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("creating {TOPIC}: {error}"),
        }
    }
}

/// Runs `body` with a time limit, so a hung test fails instead of hanging.
fn bounded<F: std::future::Future<Output = ()>>(limit: Duration, body: F) {
    let _serial = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(limit, body)
                .await
                .expect("the test finishes in time")
        });
}

/// What a rebalance listener saw, across every member of a test, in the order it happened.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    member: usize,
    kind: EventKind,
    /// Partition, and for a revocation the position committed for it.
    partitions: Vec<(u32, Option<Offset>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Assigned,
    Revoked,
    Lost,
}

type Events = Arc<Mutex<Vec<Event>>>;

/// Records every callback, and commits the positions of revoked partitions (what `poll`
/// returned counts as processed in these tests).
struct Recorder {
    member: usize,
    events: Events,
}

impl Recorder {
    fn push(&self, kind: EventKind, partitions: Vec<(u32, Option<Offset>)>) {
        self.events.lock().unwrap().push(Event {
            at: Instant::now(),
            member: self.member,
            kind,
            partitions,
        });
    }
}

impl RebalanceListener for Recorder {
    fn on_revoked(
        &mut self,
        revoked: &[(TopicPartition, Option<Offset>)],
    ) -> Vec<(TopicPartition, Offset)> {
        self.push(
            EventKind::Revoked,
            revoked.iter().map(|(tp, at)| (tp.partition, *at)).collect(),
        );
        revoked
            .iter()
            .filter_map(|(tp, at)| at.map(|offset| (tp.clone(), offset)))
            .collect()
    }

    fn on_assigned(&mut self, assigned: &[TopicPartition]) {
        self.push(
            EventKind::Assigned,
            assigned.iter().map(|tp| (tp.partition, None)).collect(),
        );
    }

    fn on_lost(&mut self, lost: &[TopicPartition]) {
        self.push(
            EventKind::Lost,
            lost.iter().map(|tp| (tp.partition, None)).collect(),
        );
    }
}

/// A member in this process and what it received: (partition, offset, value, when).
struct Member {
    consumer: Consumer,
    received: Vec<(u32, u64, String, Instant)>,
}

impl Member {
    async fn join(
        cluster: &TestCluster,
        group: &str,
        index: usize,
        events: &Events,
        config: ConsumerConfig,
    ) -> Member {
        let mut consumer = Consumer::new(client_config(cluster), config).unwrap();
        consumer
            .subscribe_with_listener(
                &[TOPIC],
                group,
                Box::new(Recorder {
                    member: index,
                    events: Arc::clone(events),
                }),
            )
            .await
            .unwrap();
        Member {
            consumer,
            received: Vec::new(),
        }
    }

    async fn poll(&mut self, wait: Duration) -> Vec<ConsumerRecord> {
        let records = self.consumer.poll(wait).await.unwrap();
        let now = Instant::now();
        for record in &records {
            self.received.push((
                record.partition,
                record.offset.0,
                String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap(),
                now,
            ));
        }
        records
    }

    fn partitions(&self) -> BTreeSet<u32> {
        self.consumer
            .assignment()
            .iter()
            .map(|tp| tp.partition)
            .collect()
    }

    fn values(&self) -> Vec<String> {
        self.received.iter().map(|r| r.2.clone()).collect()
    }
}

/// Produces one record to each of `partitions` every `interval` until `stop`; returns the
/// values acknowledged. Values are `p{partition}-{round}`.
fn spawn_producer(
    config: ClientConfig,
    partitions: u32,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeSet<String>> {
    tokio::spawn(async move {
        let producer = Producer::new(
            config,
            ProducerConfig::default().linger(Duration::from_millis(1)),
        )
        .await
        .unwrap();
        let mut acked = BTreeSet::new();
        let mut round = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let mut deliveries = Vec::new();
            for partition in 0..partitions {
                let value = format!("p{partition}-{round}");
                if let Ok(delivery) = producer
                    .send_to(TOPIC, partition, Record::new(value.clone()))
                    .await
                {
                    deliveries.push((value, delivery));
                }
            }
            for (value, delivery) in deliveries {
                if delivery.await.is_ok() {
                    acked.insert(value);
                }
            }
            round += 1;
            tokio::time::sleep(interval).await;
        }
        let _ = producer.close().await;
        acked
    })
}

/// Polls every member in turn until `done` holds, asserting after every poll that no
/// partition is assigned to two members at once.
async fn poll_until(
    members: &mut [Member],
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&[Member]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        for index in 0..members.len() {
            members[index].poll(Duration::from_millis(30)).await;
            assert_disjoint(members);
        }
        if done(members) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {limit:?}; assignments {:?}",
            assignments(members)
        );
    }
}

fn assignments(members: &[Member]) -> Vec<BTreeSet<u32>> {
    members.iter().map(Member::partitions).collect()
}

fn assert_disjoint(members: &[Member]) {
    let mut seen = BTreeSet::new();
    for partitions in assignments(members) {
        for partition in partitions {
            assert!(
                seen.insert(partition),
                "partition {partition} assigned twice: {:?}",
                assignments(members)
            );
        }
    }
}

/// Every partition of `0..total` owned by exactly one member, with sizes as balanced as
/// they can be (no member more than one above another).
fn balanced(members: &[Member], total: u32) -> bool {
    let owned = assignments(members);
    let union: BTreeSet<u32> = owned.iter().flatten().copied().collect();
    let sizes: Vec<usize> = owned.iter().map(BTreeSet::len).collect();
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    union == (0..total).collect() && sizes.iter().sum::<usize>() == total as usize && max - min <= 1
}

/// Asks the cluster which node coordinates `group`, with its client address.
async fn find_coordinator(cluster: &TestCluster, group: &str) -> (NodeId, String) {
    let config = client_config(cluster);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for address in &config.bootstrap {
            let Ok(connection) = Connection::connect(address, &config).await else {
                continue;
            };
            if let Ok(Response::FindCoordinator(reply)) = connection
                .call(Request::FindCoordinator(FindCoordinatorRequest {
                    group_id: group.into(),
                }))
                .await
            {
                if let (Some(node), Some(address)) = (reply.coordinator, reply.address) {
                    return (node, address);
                }
            }
        }
        assert!(Instant::now() < deadline, "no coordinator for {group}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The group's committed offsets of `TOPIC`, by partition.
async fn committed(admin: &Admin, group: &str) -> BTreeMap<u32, u64> {
    try_committed(admin, group).await.unwrap()
}

async fn try_committed(
    admin: &Admin,
    group: &str,
) -> Result<BTreeMap<u32, u64>, cairn_client::ClientError> {
    Ok(admin
        .group_offsets(group)
        .await?
        .into_iter()
        .filter(|p| p.topic == TOPIC)
        .filter_map(|p| p.committed.map(|c| (p.partition, c.offset.0)))
        .collect())
}

#[test]
fn six_partitions_split_over_three_members_then_a_fourth_moves_only_what_it_must() {
    bounded(Duration::from_secs(180), async {
        let cluster = cluster_with_topic(6).await;
        let stop = Arc::new(AtomicBool::new(false));
        let producer = spawn_producer(
            client_config(&cluster),
            6,
            Duration::from_millis(30),
            Arc::clone(&stop),
        );
        let events: Events = Arc::default();
        let mut members = Vec::new();
        for index in 0..3 {
            members.push(
                Member::join(&cluster, "g", index, &events, consumer_config(10_000, None)).await,
            );
        }
        // Three members: two partitions each, each fetched by its owner.
        poll_until(&mut members, Duration::from_secs(60), "3 members", |m| {
            balanced(m, 6)
                && m.iter().all(|member| {
                    member
                        .partitions()
                        .iter()
                        .all(|p| member.received.iter().any(|(partition, ..)| partition == p))
                })
        })
        .await;
        let before = assignments(&members);
        assert!(before.iter().all(|owned| owned.len() == 2), "{before:?}");
        // Steady delivery for a moment: the baseline the rebalance is compared with.
        let steady_from = Instant::now();
        let settle_until = steady_from + Duration::from_millis(1_500);
        poll_until(&mut members, Duration::from_secs(5), "steady", |_| {
            Instant::now() >= settle_until
        })
        .await;
        let epochs_before: Vec<MemberEpoch> = members
            .iter()
            .map(|m| m.consumer.member().unwrap().1)
            .collect();

        // A fourth member joins.
        let joined_at = Instant::now();
        members.push(Member::join(&cluster, "g", 3, &events, consumer_config(10_000, None)).await);
        // Every observation of the assignments while the rebalance runs.
        let mut observed: Vec<Vec<BTreeSet<u32>>> = Vec::new();
        poll_until(&mut members, Duration::from_secs(30), "4 members", |m| {
            observed.push(assignments(m));
            balanced(m, 6)
                && m[3].partitions().iter().all(|p| {
                    m[3].received
                        .iter()
                        .any(|(partition, _, _, at)| partition == p && *at > joined_at)
                })
        })
        .await;
        let settled_at = Instant::now();
        let after = assignments(&members);
        assert!(!after[3].is_empty(), "{after:?}");
        let owner = |owned: &[BTreeSet<u32>], p: u32| owned.iter().position(|o| o.contains(&p));
        let moved: BTreeSet<u32> = (0..6)
            .filter(|p| owner(&before, *p) != owner(&after, *p))
            .collect();
        let unmoved: BTreeSet<u32> = (0..6).filter(|p| !moved.contains(p)).collect();
        // Sticky: only what the new member takes moves (two partitions of six).
        assert_eq!(moved, after[3], "before {before:?} after {after:?}");
        let events = events.lock().unwrap().clone();
        let after_join: Vec<&Event> = events.iter().filter(|e| e.at >= joined_at).collect();
        for partition in &unmoved {
            // Never revoked, and delivering all along: no gap longer than a second between
            // records while the rebalance ran.
            assert!(
                !after_join.iter().any(|e| e.kind != EventKind::Assigned
                    && e.partitions.iter().any(|(p, _)| p == partition)),
                "unmoved partition {partition} was revoked: {after_join:?}"
            );
            let holder = owner(&after, *partition).unwrap();
            assert!(
                observed
                    .iter()
                    .all(|owned| owned[holder].contains(partition)),
                "unmoved partition {partition} left its owner during the rebalance"
            );
            // The longest wait between two records of the partition in `from..to`.
            let gap = |from: Instant, to: Instant| {
                let mut times: Vec<Instant> = members[holder]
                    .received
                    .iter()
                    .filter(|(p, ..)| p == partition)
                    .map(|r| r.3)
                    .filter(|at| *at >= from && *at <= to)
                    .collect();
                times.insert(0, from);
                times.push(to);
                times
                    .windows(2)
                    .map(|pair| pair[1] - pair[0])
                    .max()
                    .unwrap()
            };
            // Delivery goes on as before the join: no wait longer than a second, or than
            // three times the longest in the steady phase on a machine too busy for that.
            let baseline = gap(steady_from, joined_at);
            let during = gap(joined_at, settled_at);
            assert!(
                during < Duration::from_secs(1).max(baseline * 3),
                "partition {partition} paused {during:?} during the rebalance ({:?} long); \
                 {baseline:?} at most before it",
                settled_at - joined_at
            );
        }
        for partition in &moved {
            // Revoked from its old owner before the new one got it; the new owner starts
            // exactly where the old one stopped.
            let old = owner(&before, *partition).unwrap();
            let revoked = after_join
                .iter()
                .find(|e| {
                    e.member == old
                        && e.kind == EventKind::Revoked
                        && e.partitions.iter().any(|(p, _)| p == partition)
                })
                .unwrap_or_else(|| panic!("{partition} never revoked: {after_join:?}"));
            let assigned = after_join
                .iter()
                .find(|e| {
                    e.member == 3
                        && e.kind == EventKind::Assigned
                        && e.partitions.iter().any(|(p, _)| p == partition)
                })
                .unwrap_or_else(|| panic!("{partition} never assigned: {after_join:?}"));
            assert!(revoked.at <= assigned.at, "{revoked:?} after {assigned:?}");
            let position = revoked
                .partitions
                .iter()
                .find(|(p, _)| p == partition)
                .and_then(|(_, at)| *at)
                .expect("a position to commit");
            let first = members[3]
                .received
                .iter()
                .find(|(p, ..)| p == partition)
                .expect("the new owner read it");
            let old_last = members[old]
                .received
                .iter()
                .filter(|(p, ..)| p == partition)
                .map(|r| r.1)
                .max()
                .expect("the old owner read it");
            assert!(
                old_last < position.0,
                "partition {partition}: {old_last} {position}"
            );
            assert!(
                first.1 >= position.0,
                "partition {partition}: {first:?} {position}"
            );
        }

        // A member whose epoch moved on: its old epoch's commit is a zombie's, refused.
        let (zombie, old_epoch) = (0..3)
            .find(|i| members[*i].consumer.member().unwrap().1 > epochs_before[*i])
            .map(|i| (i, epochs_before[i]))
            .expect("a member's epoch moved on with the rebalance");
        let (member_id, _) = members[zombie].consumer.member().unwrap();
        let still_owned = *after[zombie].first().unwrap();
        // Sent to the coordinator, found again while it moves (leadership of `__offsets` may
        // change on a busy machine).
        let deadline = Instant::now() + Duration::from_secs(30);
        let refusal = loop {
            let (_, address) = find_coordinator(&cluster, "g").await;
            let Ok(connection) = Connection::connect(&address, &client_config(&cluster)).await
            else {
                continue;
            };
            let refused = connection
                .call(Request::OffsetCommit(OffsetCommitRequest {
                    group_id: "g".into(),
                    member_id: member_id.clone(),
                    member_epoch: old_epoch,
                    offsets: vec![OffsetCommitPartition {
                        topic: TOPIC.into(),
                        partition: still_owned,
                        offset: Offset(1_000_000),
                        metadata: None,
                    }],
                }))
                .await;
            let refusal = match refused {
                Ok(Response::OffsetCommit(reply)) => reply.partitions[0].result.clone().err(),
                Err(error) => error.api_error().cloned(),
                other => panic!("unexpected reply {other:?}"),
            };
            let moving = matches!(
                refusal,
                Some(
                    ApiError::NotCoordinator { .. }
                        | ApiError::CoordinatorLoadInProgress
                        | ApiError::CoordinatorNotAvailable
                )
            );
            if !moving || Instant::now() > deadline {
                break refusal;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            matches!(
                refusal,
                Some(ApiError::StaleMemberEpoch { .. } | ApiError::FencedMemberEpoch { .. })
            ),
            "{refusal:?}"
        );
        let admin = Admin::new(client_config(&cluster)).unwrap();
        assert!(
            !committed(&admin, "g")
                .await
                .values()
                .any(|offset| *offset == 1_000_000),
            "the zombie's commit landed"
        );

        // Every acknowledged record reached exactly one member, once.
        stop.store(true, Ordering::SeqCst);
        let acked = producer.await.unwrap();
        poll_until(&mut members, Duration::from_secs(30), "drain", |m| {
            let got: BTreeSet<String> = m.iter().flat_map(Member::values).collect();
            acked.is_subset(&got)
        })
        .await;
        let all: Vec<String> = members.iter().flat_map(Member::values).collect();
        let distinct: BTreeSet<&String> = all.iter().collect();
        assert_eq!(all.len(), distinct.len(), "a record was delivered twice");
        for member in members {
            member.consumer.close().await.unwrap();
        }
        drop(cluster);
    });
}

/// A `cairn consume --group` process; killed (SIGKILL) when dropped. Its stdout lines are
/// collected by a thread.
struct ConsumeProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The process's stderr (its logs), for failure messages.
    stderr: tempfile::NamedTempFile,
}

impl ConsumeProcess {
    fn start(bootstrap: &str, args: &[&str]) -> ConsumeProcess {
        let stderr = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new(support::cairn_binary())
            .arg("--bootstrap")
            .arg(bootstrap)
            .arg("consume")
            .arg(TOPIC)
            .args(args)
            .env("CAIRN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.reopen().expect("the log file reopens")))
            .spawn()
            .expect("cairn consume starts");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push(line);
            }
        });
        ConsumeProcess {
            child,
            lines,
            stderr,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit by itself; returns its lines.
    async fn finish(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "cairn consume failed: {status}\n{}",
                    self.logs()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cairn consume did not exit; printed {} lines; its log:\n{}",
                self.lines().len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the reader thread take the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = self.lines.lock().unwrap().clone();
        lines
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for ConsumeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Members of `group` as the coordinator describes them: instance id (or member id) and
/// the partitions they own.
async fn described_owners(admin: &Admin, group: &str) -> BTreeMap<String, BTreeSet<u32>> {
    let described = match admin.describe_group(group).await {
        Ok(described) => described,
        // Not created yet: the first member's join is still on its way.
        Err(error) if matches!(error.api_error(), Some(ApiError::GroupIdNotFound { .. })) => {
            return BTreeMap::new()
        }
        Err(error) => panic!("describing {group}: {error}"),
    };
    described
        .members
        .into_iter()
        .map(|member| {
            (
                member.instance_id.unwrap_or(member.member_id),
                member
                    .assignment
                    .iter()
                    .filter(|tp| tp.topic == TOPIC)
                    .flat_map(|tp| tp.partitions.clone())
                    .collect(),
            )
        })
        .collect()
}

/// Polls `member` until `done` holds on the group's description.
async fn poll_until_described(
    cluster: &TestCluster,
    member: &mut Member,
    admin: &Admin,
    group: &str,
    limit: Duration,
    mut done: impl FnMut(&BTreeMap<String, BTreeSet<u32>>, &Member) -> bool,
) -> BTreeMap<String, BTreeSet<u32>> {
    let started = Instant::now();
    let deadline = started + limit;
    // What changed when, for the failure message.
    let mut history: Vec<String> = Vec::new();
    loop {
        member.poll(Duration::from_millis(50)).await;
        let owners = described_owners(admin, group).await;
        let seen = format!("owners {owners:?} here {:?}", member.partitions());
        if history.last().is_none_or(|last| !last.ends_with(&seen)) {
            history.push(format!("{:?}: {seen}", started.elapsed()));
        }
        if done(&owners, member) {
            *HISTORY.lock().unwrap() = history;
            return owners;
        }
        assert!(
            Instant::now() < deadline,
            "{group}: not reached in {limit:?}:\n{}\n{}",
            history.join("\n"),
            group_logs(cluster)
        );
    }
}

/// The nodes' log lines about groups and failures, for failure messages.
fn group_logs(cluster: &TestCluster) -> String {
    cluster
        .logs()
        .lines()
        .filter(|line| {
            [
                "=====",
                "group",
                "member",
                "offsets",
                "coordinat",
                "panic",
                "ERROR",
                "WARN",
            ]
            .iter()
            .any(|word| line.contains(word))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The history of the last [`poll_until_described`], for failure messages.
static HISTORY: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn a_killed_member_process_loses_its_partitions_after_its_session_and_a_static_one_keeps_them() {
    bounded(Duration::from_secs(180), async {
        let cluster = cluster_with_topic(6).await;
        let admin = Admin::new(client_config(&cluster)).unwrap();
        let bootstrap = cluster.bootstrap();
        let events: Events = Arc::default();

        // Dynamic member process with a 3 s session, SIGKILLed.
        let mut here = Member::join(&cluster, "g", 0, &events, consumer_config(20_000, None)).await;
        let mut process = ConsumeProcess::start(
            &bootstrap,
            &["--group", "g", "--session-timeout-ms", "3000"],
        );
        poll_until_described(
            &cluster,
            &mut here,
            &admin,
            "g",
            Duration::from_secs(60),
            |o, m| o.len() == 2 && o.values().all(|p| p.len() == 3) && m.partitions().len() == 3,
        )
        .await;
        let killed_at = Instant::now();
        process.kill();
        poll_until_described(
            &cluster,
            &mut here,
            &admin,
            "g",
            Duration::from_secs(40),
            |o, m| o.len() == 1 && m.partitions().len() == 6,
        )
        .await;
        let moved_after = killed_at.elapsed();
        // The session timeout counts from the last heartbeat (at most one 200 ms interval
        // before the kill); nothing may move before it.
        assert!(
            moved_after >= Duration::from_millis(2_700),
            "partitions moved {moved_after:?} after the kill, before the session timed out"
        );
        // Bounded, but loosely: a coordinator that takes over (leadership of `__offsets`
        // moves on a busy machine) gives every member a whole session from its load.
        assert!(
            moved_after < Duration::from_secs(25),
            "partitions moved only {moved_after:?} after the kill:\n{}\n{}",
            HISTORY.lock().unwrap().join("\n"),
            group_logs(&cluster)
        );
        here.consumer.close().await.unwrap();

        // Static member process (instance id "b", 10 s session), SIGKILLed and restarted at
        // once: it gets its partitions back, and the other member's never change.
        let events: Events = Arc::default();
        let mut here = Member::join(&cluster, "s", 0, &events, consumer_config(20_000, None)).await;
        let static_args = [
            "--group",
            "s",
            "--instance-id",
            "b",
            "--session-timeout-ms",
            "10000",
        ];
        let mut process = ConsumeProcess::start(&bootstrap, &static_args);
        let owners = poll_until_described(
            &cluster,
            &mut here,
            &admin,
            "s",
            Duration::from_secs(60),
            |o, m| {
                o.len() == 2
                    && o.get("b").is_some_and(|p| p.len() == 3)
                    && m.partitions().len() == 3
            },
        )
        .await;
        let (here_before, static_before) = (here.partitions(), owners["b"].clone());
        let events_before = events.lock().unwrap().len();
        let killed_at = Instant::now();
        process.kill();
        let restarted = ConsumeProcess::start(&bootstrap, &static_args);
        // Watch past the old incarnation's session timeout.
        let watch_until = killed_at + Duration::from_secs(12);
        poll_until_described(
            &cluster,
            &mut here,
            &admin,
            "s",
            Duration::from_secs(30),
            |o, m| {
                assert_eq!(
                    m.partitions(),
                    here_before,
                    "the other member's partitions moved"
                );
                assert!(o.len() <= 2, "{o:?}");
                if let Some(owned) = o.get("b") {
                    assert!(owned.is_subset(&static_before), "{o:?}");
                }
                Instant::now() >= watch_until && o.get("b") == Some(&static_before)
            },
        )
        .await;
        assert_eq!(
            events.lock().unwrap().len(),
            events_before,
            "the other member saw a rebalance: {:?}",
            events.lock().unwrap()
        );
        // The restarted process reads its partitions: new records reach it.
        let producer = Producer::new(client_config(&cluster), ProducerConfig::default())
            .await
            .unwrap();
        for partition in 0..6u32 {
            producer
                .send_to(TOPIC, partition, Record::new(format!("after-{partition}")))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            here.poll(Duration::from_millis(100)).await;
            let printed: BTreeSet<String> = restarted.lines().into_iter().collect();
            let expected_there: BTreeSet<String> =
                static_before.iter().map(|p| format!("after-{p}")).collect();
            let expected_here: BTreeSet<String> =
                here_before.iter().map(|p| format!("after-{p}")).collect();
            let got_here: BTreeSet<String> = here.values().into_iter().collect();
            if expected_there.is_subset(&printed) && expected_here.is_subset(&got_here) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restarted static member printed {printed:?}, here {got_here:?}"
            );
        }
        here.consumer.close().await.unwrap();
        producer.close().await.unwrap();
        drop(restarted);
        drop(cluster);
    });
}

#[test]
fn two_groups_on_one_topic_each_receive_every_record() {
    bounded(Duration::from_secs(120), async {
        let cluster = cluster_with_topic(3).await;
        let events: Events = Arc::default();
        let mut first = vec![
            Member::join(&cluster, "g1", 0, &events, consumer_config(10_000, None)).await,
            Member::join(&cluster, "g1", 1, &events, consumer_config(10_000, None)).await,
        ];
        let mut second =
            vec![Member::join(&cluster, "g2", 2, &events, consumer_config(10_000, None)).await];
        let deadline = Duration::from_secs(60);
        poll_until(&mut first, deadline, "g1 balanced", |m| balanced(m, 3)).await;
        poll_until(&mut second, deadline, "g2", |m| {
            m[0].partitions().len() == 3
        })
        .await;
        let producer = Producer::new(client_config(&cluster), ProducerConfig::default())
            .await
            .unwrap();
        let mut sent = BTreeSet::new();
        for i in 0..90u32 {
            let value = format!("v{i}");
            drop(
                producer
                    .send_to(TOPIC, i % 3, Record::new(value.clone()))
                    .await
                    .unwrap(),
            );
            sent.insert(value);
        }
        producer.close().await.unwrap();
        let received = |members: &[Member]| -> Vec<String> {
            members.iter().flat_map(Member::values).collect::<Vec<_>>()
        };
        poll_until(&mut first, deadline, "g1", |m| received(m).len() >= 90).await;
        poll_until(&mut second, deadline, "g2", |m| received(m).len() >= 90).await;
        // A little longer: nothing arrives twice.
        poll_until(&mut first, deadline, "g1", |_| true).await;
        poll_until(&mut second, deadline, "g2", |_| true).await;
        for members in [&first, &second] {
            let got = received(members);
            assert_eq!(got.len(), 90, "a record was delivered twice in one group");
            assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), sent);
        }
        // Both members of g1 read their share.
        assert!(first.iter().all(|m| !m.received.is_empty()));
        for member in first.into_iter().chain(second) {
            member.consumer.close().await.unwrap();
        }
    });
}

#[test]
fn after_commit_sync_and_a_crash_the_consumer_resumes_at_the_commit() {
    bounded(Duration::from_secs(120), async {
        let cluster = cluster_with_topic(3).await;
        let admin = Admin::new(client_config(&cluster)).unwrap();
        let producer = Producer::new(client_config(&cluster), ProducerConfig::default())
            .await
            .unwrap();
        let sent: Vec<String> = (0..150u32).map(|i| format!("v{i}")).collect();
        for (i, value) in sent.iter().enumerate() {
            drop(
                producer
                    .send_to(TOPIC, i as u32 % 3, Record::new(value.clone()))
                    .await
                    .unwrap(),
            );
        }
        producer.close().await.unwrap();
        let events: Events = Arc::default();
        let config = consumer_config(10_000, Some("worker")).max_poll_records(10);
        // Process 40 or more, commit them, process 30 or more past the commit, crash (the
        // consumer is dropped: no commit, no leave).
        let mut first = Member::join(&cluster, "g", 0, &events, config.clone()).await;
        let mut one = vec![first];
        poll_until(&mut one, Duration::from_secs(60), "first 40", |m| {
            m[0].received.len() >= 40
        })
        .await;
        first = one.pop().unwrap();
        first.consumer.commit_sync().await.unwrap();
        let at_commit = first.received.len();
        let commits: BTreeMap<u32, u64> = first
            .consumer
            .positions()
            .into_iter()
            .map(|(tp, offset)| (tp.partition, offset.0))
            .collect();
        assert_eq!(committed(&admin, "g").await, commits);
        let mut one = vec![first];
        poll_until(&mut one, Duration::from_secs(30), "30 more", |m| {
            m[0].received.len() >= at_commit + 30
        })
        .await;
        let first = one.pop().unwrap();
        let after_commit: BTreeSet<String> = first.received[at_commit..]
            .iter()
            .map(|r| r.2.clone())
            .collect();
        let first_values = first.values();
        let before_commit: BTreeSet<String> = first_values[..at_commit].iter().cloned().collect();
        let Member {
            consumer: crashed,
            received: first_received,
        } = first;
        drop(crashed);

        // Restarted with the same instance id, within the session: resumes at the commit.
        let rest: BTreeSet<String> = sent
            .iter()
            .filter(|value| !before_commit.contains(*value))
            .cloned()
            .collect();
        let mut one = vec![Member::join(&cluster, "g", 1, &events, config).await];
        poll_until(&mut one, Duration::from_secs(60), "the rest", |m| {
            m[0].values().into_iter().collect::<BTreeSet<_>>() == rest
        })
        .await;
        // A little longer: nothing more arrives.
        let until = Instant::now() + Duration::from_millis(500);
        poll_until(&mut one, Duration::from_secs(5), "quiet", |_| {
            Instant::now() >= until
        })
        .await;
        let second = one.pop().unwrap();
        // Everything from the commit on, once: nothing skipped, and what is read twice is
        // exactly what was processed after the last commit.
        assert_eq!(second.received.len(), rest.len(), "a record was read twice");
        assert!(after_commit.is_subset(&rest));
        for (partition, offset) in &commits {
            // The first record at or after the commit (the commit may point at a leader's
            // epoch marker, which holds an offset but no record).
            let expected = first_received
                .iter()
                .chain(&second.received)
                .filter(|r| r.0 == *partition && r.1 >= *offset)
                .map(|r| r.1)
                .min();
            let first_read = second
                .received
                .iter()
                .find(|r| r.0 == *partition)
                .map(|r| r.1);
            assert_eq!(
                first_read, expected,
                "partition {partition} committed at {offset}"
            );
        }
        second.consumer.close().await.unwrap();
    });
}

#[test]
fn the_group_keeps_consuming_and_committing_when_the_coordinators_node_is_killed() {
    bounded(Duration::from_secs(240), async {
        let mut cluster = cluster_with_topic(6).await;
        let admin = Admin::new(client_config(&cluster)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = spawn_producer(
            client_config(&cluster),
            6,
            Duration::from_millis(50),
            Arc::clone(&stop),
        );
        let events: Events = Arc::default();
        let mut members = vec![
            Member::join(&cluster, "g", 0, &events, consumer_config(10_000, None)).await,
            Member::join(&cluster, "g", 1, &events, consumer_config(10_000, None)).await,
        ];
        poll_until(&mut members, Duration::from_secs(60), "2 members", |m| {
            balanced(m, 6) && m.iter().all(|member| !member.received.is_empty())
        })
        .await;
        // A sampler watches the committed offsets all along.
        let samples: Arc<Mutex<Vec<BTreeMap<u32, u64>>>> = Arc::default();
        let sampler = {
            let (samples, stop, config) = (
                Arc::clone(&samples),
                Arc::clone(&stop),
                client_config(&cluster),
            );
            tokio::spawn(async move {
                let admin = Admin::new(config).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(Ok(offsets)) =
                        tokio::time::timeout(Duration::from_secs(2), try_committed(&admin, "g"))
                            .await
                    {
                        samples.lock().unwrap().push(offsets);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let commit_all = |members: &mut Vec<Member>| {
            let members = std::mem::take(members);
            async move {
                let mut back = Vec::new();
                let mut ok = true;
                for mut member in members {
                    ok &= member.consumer.commit_sync().await.is_ok();
                    back.push(member);
                }
                (back, ok)
            }
        };
        for _ in 0..5 {
            poll_until(&mut members, Duration::from_secs(5), "poll", |_| true).await;
            let (back, ok) = commit_all(&mut members).await;
            members = back;
            assert!(ok, "commits before the kill");
        }
        let before_kill = committed(&admin, "g").await;
        let (coordinator, _) = find_coordinator(&cluster, "g").await;
        cluster.node_mut(coordinator.0).kill();
        let killed_at = Instant::now();
        let received_at_kill: usize = members.iter().map(|m| m.received.len()).sum();

        // Consuming and committing go on; a commit succeeds above the pre-kill offsets.
        let deadline = killed_at + Duration::from_secs(90);
        loop {
            poll_until(&mut members, Duration::from_secs(5), "poll", |_| true).await;
            let (back, ok) = commit_all(&mut members).await;
            members = back;
            let received: usize = members.iter().map(|m| m.received.len()).sum();
            let mut behind = Vec::new();
            if ok && received > received_at_kill + 60 {
                let now = committed(&admin, "g").await;
                let (new_coordinator, _) = find_coordinator(&cluster, "g").await;
                assert_ne!(new_coordinator, coordinator);
                behind = (0..6)
                    .filter(|p| {
                        now.get(p)
                            .is_none_or(|o| *o <= before_kill.get(p).copied().unwrap_or(0))
                    })
                    .map(|p| (p, before_kill.get(&p).copied(), now.get(&p).copied()))
                    .collect();
                if behind.is_empty() && killed_at.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            // On failure, the partitions' leaders and high watermarks tell a producer that
            // stopped writing a partition from a consumer that stopped reading it.
            let topic_state = if Instant::now() < deadline {
                String::new()
            } else {
                match admin.describe_topic(TOPIC).await {
                    Ok(described) => format!(
                        "{:?}",
                        described
                            .partitions
                            .iter()
                            .map(|p| (p.partition, p.leader, p.leader_epoch, p.high_watermark))
                            .collect::<Vec<_>>()
                    ),
                    Err(error) => format!("(describe failed: {error})"),
                }
            };
            assert!(
                Instant::now() < deadline,
                "no progress after the coordinator's node {coordinator:?} was killed: received \
                 {received} ({received_at_kill} at the kill), commits ok {ok}, partitions whose \
                 commit stayed at or below the pre-kill offset (partition, before, now): \
                 {behind:?}; partitions (index, leader, epoch, high watermark): {topic_state}; \
                 positions: {:?}\n{}",
                members
                    .iter()
                    .map(|m| m.consumer.positions())
                    .collect::<Vec<_>>(),
                cluster.logs()
            );
        }
        eprintln!(
            "consuming and committing again {:?} after the kill",
            killed_at.elapsed()
        );
        stop.store(true, Ordering::SeqCst);
        let acked = producer.await.unwrap();
        sampler.await.unwrap();
        poll_until(&mut members, Duration::from_secs(60), "drain", |m| {
            let got: BTreeSet<String> = m.iter().flat_map(Member::values).collect();
            acked.is_subset(&got)
        })
        .await;
        // Committed offsets never went backwards, across the failover.
        let samples = samples.lock().unwrap().clone();
        assert!(samples.len() >= 5, "{} samples", samples.len());
        for pair in samples.windows(2) {
            for (partition, offset) in &pair[0] {
                let later = pair[1].get(partition).copied().unwrap_or(0);
                assert!(
                    later >= *offset,
                    "partition {partition}: committed {offset} then {later}"
                );
            }
        }
        for member in members {
            let _ = member.consumer.close().await;
        }
    });
}

/// Runs a `cairn` client command to completion (bounded) and returns its stdout.
async fn cairn(bootstrap: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(support::cairn_binary());
    command
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .env("CAIRN_LOG", "warn")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command finishes")
        .expect("the command runs");
    assert!(
        output.status.success(),
        "cairn {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn group_describe_shows_the_lag_while_a_producer_runs() {
    bounded(Duration::from_secs(120), async {
        let cluster = cluster_with_topic(3).await;
        let admin = Admin::new(client_config(&cluster)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = spawn_producer(
            client_config(&cluster),
            3,
            Duration::from_millis(20),
            Arc::clone(&stop),
        );
        let events: Events = Arc::default();
        let mut one =
            vec![Member::join(&cluster, "g", 0, &events, consumer_config(10_000, None)).await];
        poll_until(&mut one, Duration::from_secs(60), "reading", |m| {
            m[0].partitions().len() == 3 && m[0].received.len() >= 30
        })
        .await;
        let mut member = one.pop().unwrap();
        member.consumer.commit_sync().await.unwrap();
        let commits: BTreeMap<u32, u64> = member
            .consumer
            .positions()
            .into_iter()
            .map(|(tp, offset)| (tp.partition, offset.0))
            .collect();
        // The member stops reading (it stays in the group); the producer goes on.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let bootstrap = cluster.bootstrap();
        for _ in 0..3 {
            let mut ends_before = BTreeMap::new();
            for partition in 0..3 {
                let end = member
                    .consumer
                    .list_offset(TOPIC, partition, OffsetSpec::Latest)
                    .await
                    .unwrap();
                ends_before.insert(partition, end.0);
            }
            let report = cairn(&bootstrap, &["group", "describe", "g"]).await;
            let mut ends_after = BTreeMap::new();
            for partition in 0..3 {
                let end = member
                    .consumer
                    .list_offset(TOPIC, partition, OffsetSpec::Latest)
                    .await
                    .unwrap();
                ends_after.insert(partition, end.0);
            }
            let mut rows = 0;
            for line in report.lines() {
                let cells: Vec<&str> = line.split_whitespace().collect();
                if cells.len() != 6 || cells[0] != TOPIC {
                    continue;
                }
                rows += 1;
                let partition: u32 = cells[1].parse().unwrap();
                let committed: u64 = cells[3].parse().unwrap();
                let log_end: u64 = cells[4].parse().unwrap();
                let lag: u64 = cells[5].parse().unwrap();
                assert_eq!(committed, commits[&partition], "{report}");
                assert!(
                    ends_before[&partition] <= log_end && log_end <= ends_after[&partition],
                    "log end {log_end} of partition {partition} outside [{}, {}]:\n{report}",
                    ends_before[&partition],
                    ends_after[&partition]
                );
                assert_eq!(lag, log_end - committed, "{report}");
                assert!(lag > 0, "{report}");
            }
            assert_eq!(rows, 3, "{report}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        stop.store(true, Ordering::SeqCst);
        producer.await.unwrap();
        assert_eq!(admin.describe_group("g").await.unwrap().members.len(), 1);
        member.consumer.close().await.unwrap();
    });
}

#[test]
fn consume_group_twice_and_twice_at_once_prints_every_record_once() {
    bounded(Duration::from_secs(150), async {
        let cluster = cluster_with_topic(3).await;
        let bootstrap = cluster.bootstrap();
        let producer = Producer::new(client_config(&cluster), ProducerConfig::default())
            .await
            .unwrap();
        let batch = |from: u32, to: u32| (from..to).map(|i| format!("v{i}")).collect::<Vec<_>>();
        for (i, value) in batch(0, 60).into_iter().enumerate() {
            drop(
                producer
                    .send_to(TOPIC, i as u32 % 3, Record::new(value))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();

        // Two runs one after the other: the second continues where the first stopped.
        let first = ConsumeProcess::start(
            &bootstrap,
            &["--group", "g", "--from-beginning", "--max-messages", "25"],
        )
        .finish(Duration::from_secs(60))
        .await;
        assert_eq!(first.len(), 25, "{first:?}");
        let second =
            ConsumeProcess::start(&bootstrap, &["--group", "g", "--idle-timeout-ms", "3000"])
                .finish(Duration::from_secs(60))
                .await;
        let mut both: Vec<String> = first.iter().chain(&second).cloned().collect();
        both.sort();
        let mut expected = batch(0, 60);
        expected.sort();
        assert_eq!(both, expected, "first {first:?} second {second:?}");

        // Two runs at once while records arrive: the second takes partitions from the first
        // (which commits what it printed as it lets go); together they print each record once.
        let one = ConsumeProcess::start(&bootstrap, &["--group", "g", "--idle-timeout-ms", "4000"]);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let mut two = None;
        for (i, value) in batch(60, 180).into_iter().enumerate() {
            if i == 40 {
                two = Some(ConsumeProcess::start(
                    &bootstrap,
                    &["--group", "g", "--idle-timeout-ms", "4000"],
                ));
            }
            producer
                .send_to(TOPIC, i as u32 % 3, Record::new(value))
                .await
                .unwrap()
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        producer.close().await.unwrap();
        let two = two.unwrap();
        let (one, two) = (
            one.finish(Duration::from_secs(60)).await,
            two.finish(Duration::from_secs(60)).await,
        );
        assert!(!two.is_empty(), "the second run got nothing: {one:?}");
        let mut both: Vec<String> = one.iter().chain(&two).cloned().collect();
        both.sort();
        let mut expected = batch(60, 180);
        expected.sort();
        assert_eq!(both, expected, "one {one:?} two {two:?}");
    });
}
