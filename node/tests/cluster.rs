//! Three real `cairn node` processes on 127.0.0.1 forming one cluster (gossip, `__meta` on
//! three voters, replicas placed on every node), driven by the `cairn-client` producer and
//! consumer, with faults injected by signals:
//!
//! - SIGKILL of a partition leader while a producer runs (failover, then catch-up and
//!   truncation of the restarted old leader; every replica's sled files compared);
//! - SIGSTOP of the leader past its lease, then SIGCONT (a deposed leader acknowledges nothing);
//! - SIGKILL of two of three nodes (no quorum: typed refusals, nothing acknowledged), then one
//!   restart (writes resume);
//! - SIGKILL of every node at once, then a restart of all (every acknowledged record survives);
//! - SIGKILL of a preferred leader, then a restart: leadership returns to each partition's
//!   preferred replica (`replica.leader_rebalance_ms`) while an idempotent producer loses and
//!   duplicates nothing.
//!
//! The tests run one at a time (each starts three nodes on a small machine) and each is
//! bounded in time; dropping a cluster kills its processes.

mod support;

use cairn_client::{
    Admin, ApiError, AutoOffsetReset, ClientConfig, ClientError, Consumer, ConsumerConfig, Offset,
    Producer, ProducerConfig, Record, TopicConfig,
};
use cairn_protocol::messages::{InitProducerIdRequest, MetadataRequest, PartitionDescription};
use cairn_protocol::{NodeId, Request, Response};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::cluster::{partition_logs, replica_log, values_of, Guarded, TestCluster};
use support::{eventually, Wire};

/// Every test is bounded: a test that hangs fails instead.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// One three-node test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_cluster() -> Guarded {
    Guarded(TestCluster::start(3, &[]))
}

fn client_config(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap)
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
        // A stopped (SIGSTOP) node accepts TCP connections but never answers: give up on it
        // quickly and try another.
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
}

fn producer_config(delivery_timeout_ms: u64) -> ProducerConfig {
    ProducerConfig::default()
        .linger(Duration::ZERO)
        // Strict order across retries (see the producer's docs).
        .requests_in_flight_per_partition_max(1)
        .delivery_timeout(Duration::from_millis(delivery_timeout_ms))
        .request_timeout(Duration::from_secs(2))
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
}

async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("the test finishes in time")
}

/// Process control blocks (waiting for ready lines, exits). The test body runs on the test's
/// own thread (`Runtime::block_on`) while the producer's tasks run on the runtime's workers,
/// so blocking here stalls nothing else; this marks where it happens.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    work()
}

/// Runs one test body: alone (see [`SERIAL`]), on a fresh runtime, bounded in time.
fn run(test: impl std::future::Future<Output = ()>) {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bounded(test));
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: u32) {
    Admin::new(client_config(bootstrap))
        .unwrap()
        .create_topic(topic, partitions, Some(3), TopicConfig::default())
        .await
        .unwrap();
}

/// The leader of `topic`/0 as the cluster reports it, once one is reported.
async fn leader_of(bootstrap: &str, topic: &str) -> u32 {
    let admin = Admin::new(client_config(bootstrap)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(metadata) = admin.topic_metadata(topic).await {
            if let Some(leader) = metadata.partitions[0].leader {
                return leader.0;
            }
        }
        assert!(Instant::now() < deadline, "no leader reported for {topic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe(wire: &mut Wire, topic: &str) -> Result<Vec<PartitionDescription>, ApiError> {
    wire.describe_topic(topic)
}

/// What one node's own replica of `topic`/0 reports (not a hint: describe answers from the
/// local replica when the node hosts one).
fn local_replica(cluster: &TestCluster, node_id: u32, topic: &str) -> Option<PartitionDescription> {
    let mut wire = cluster.node(node_id).wire();
    describe(&mut wire, topic)
        .ok()
        .map(|mut partitions| partitions.remove(0))
}

/// Waits until every node's replica of `topic`/0 has the same log end, fully committed.
fn wait_converged(cluster: &TestCluster, topic: &str) {
    let converged = eventually(Duration::from_secs(20), || {
        let replicas: Vec<_> = (1..=3)
            .map(|id| local_replica(cluster, id, topic))
            .collect();
        let Some(first) = replicas[0].clone() else {
            return false;
        };
        replicas.iter().all(|replica| {
            replica.as_ref().is_some_and(|replica| {
                replica.log_end == first.log_end
                    && replica.high_watermark == replica.log_end
                    && replica.leader.is_some()
            })
        })
    });
    assert!(converged, "the replicas of {topic} did not converge");
}

/// One acknowledged record: its value, where it was written, and when the ack came.
#[derive(Debug, Clone)]
struct Acked {
    value: Vec<u8>,
    offset: Offset,
    at: Instant,
}

#[derive(Debug, Default)]
struct History {
    acked: Vec<Acked>,
    failed: Vec<(Vec<u8>, ClientError)>,
}

/// Sends `prefix-000000`, `prefix-000001`, ... to partition 0 one at a time until `stop`,
/// recording every outcome.
async fn produce_until(
    producer: Producer,
    topic: &'static str,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> History {
    let mut history = History::default();
    let mut index = 0u32;
    while !stop.load(Ordering::Acquire) {
        let value = format!("{prefix}-{index:06}").into_bytes();
        index += 1;
        let sent = producer.send_to(topic, 0, Record::new(value.clone())).await;
        let outcome = match sent {
            Ok(delivery) => delivery.await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(metadata) => history.acked.push(Acked {
                value,
                offset: metadata.offset.expect("acks=all reports the offset"),
                at: Instant::now(),
            }),
            Err(error) => history.failed.push((value, error)),
        }
    }
    history
}

/// Stops every node (SIGTERM), then reads each replica's log of the only topic partition
/// from its sled files.
fn stop_and_read_replicas(
    cluster: &mut TestCluster,
) -> Vec<Vec<cairn_protocol::batch::RecordBatch>> {
    for node in &mut cluster.nodes {
        let status = node.terminate();
        assert!(
            status.success(),
            "node {} exited with {status}",
            node.node_id
        );
    }
    let logs = partition_logs(&cluster.nodes[0]);
    assert_eq!(logs.len(), 1, "one topic partition: {logs:?}");
    cluster
        .nodes
        .iter()
        .map(|node| replica_log(node, &logs[0]))
        .collect()
}

/// The replicas hold byte-identical logs, but for epoch markers at the end of some of them
/// (stopping the nodes one by one may elect a leader among the last ones running, which then
/// writes its marker). Returns the (offset, value) records of the common part.
fn assert_identical_replicas(
    replicas: &[Vec<cairn_protocol::batch::RecordBatch>],
) -> Vec<(Offset, Vec<u8>)> {
    let common = replicas.iter().map(Vec::len).min().unwrap_or(0);
    for (index, replica) in replicas.iter().enumerate() {
        for (mine, theirs) in replica.iter().zip(&replicas[0]).take(common) {
            assert_eq!(
                mine.bytes(),
                theirs.bytes(),
                "replica {} differs at offset {}",
                index + 1,
                mine.base_offset()
            );
        }
        for extra in &replica[common..] {
            assert!(
                extra.header().is_control(),
                "replica {} holds a data batch at {} that another replica lacks",
                index + 1,
                extra.base_offset()
            );
        }
    }
    values_of(&replicas[0][..common])
}

/// Every acknowledged record is in `log` at the offset it was acknowledged with, and
/// acknowledged records appear in the order they were sent.
fn assert_acked_present(log: &[(Offset, Vec<u8>)], acked: &[Acked]) {
    let by_offset: BTreeMap<Offset, &Vec<u8>> =
        log.iter().map(|(offset, value)| (*offset, value)).collect();
    assert_eq!(by_offset.len(), log.len(), "two records at one offset");
    for record in acked {
        assert_eq!(
            by_offset.get(&record.offset).map(|value| value.as_slice()),
            Some(record.value.as_slice()),
            "acknowledged {:?} at {} is not there",
            String::from_utf8_lossy(&record.value),
            record.offset
        );
    }
    for pair in acked.windows(2) {
        assert!(
            pair[0].offset < pair[1].offset,
            "acks out of order: {pair:?}"
        );
    }
}

#[test]
fn a_cluster_forms_places_replicas_evenly_and_refuses_too_high_a_factor() {
    run(async {
        let cluster = blocking(start_cluster);
        // Every node lists all three brokers.
        for node in &cluster.nodes {
            let listed = eventually(Duration::from_secs(10), || {
                let mut wire = node.wire();
                match wire.call(Request::Metadata(MetadataRequest { topics: None })) {
                    Ok(Response::Metadata(metadata)) => metadata.brokers.len() == 3,
                    _ => false,
                }
            });
            assert!(listed, "node {} does not list three brokers", node.node_id);
        }
        // Created through one node only: whichever leads `__meta` serves it.
        let third = cluster.node(3).address().to_string();
        let admin = Admin::new(client_config(&third)).unwrap();
        let topic = admin
            .create_topic("spread", 3, None, TopicConfig::default())
            .await
            .unwrap();
        let mut preferred = HashSet::new();
        for partition in &topic.partitions {
            let mut replicas = partition.replicas.clone();
            preferred.insert(replicas[0]);
            replicas.sort();
            assert_eq!(replicas, vec![NodeId(1), NodeId(2), NodeId(3)]);
        }
        assert_eq!(preferred.len(), 3, "preferred leaders spread: {topic:?}");
        match admin
            .create_topic("too-wide", 1, Some(4), TopicConfig::default())
            .await
        {
            Err(ClientError::Api(ApiError::InvalidReplicationFactor {
                requested: 4,
                available: 3,
            })) => {}
            other => panic!("expected InvalidReplicationFactor, got {other:?}"),
        }
        // Records written through the leaders are read back through any node.
        let producer = Producer::new(client_config(&third), producer_config(20_000))
            .await
            .unwrap();
        let mut acked_ends = BTreeMap::new();
        for partition in 0..3 {
            let acked = producer
                .send_to("spread", partition, Record::new(format!("p{partition}")))
                .await
                .unwrap()
                .await
                .unwrap();
            acked_ends.insert(partition, acked.offset.unwrap().0 + 1);
        }
        // Described through any node right after the acknowledgements, every partition shows
        // its leader's figures: the acknowledged record is below the high watermark, which
        // has reached the log end (a follower learns it only with the next heartbeat).
        for node_id in 1..=3 {
            let address = cluster.node(node_id).address().to_string();
            let described = Admin::new(client_config(&address))
                .unwrap()
                .describe_topic("spread")
                .await
                .unwrap();
            let ends: BTreeMap<u32, (u64, u64)> = described
                .partitions
                .iter()
                .map(|p| (p.partition, (p.high_watermark.0, p.log_end.0)))
                .collect();
            let expected: BTreeMap<u32, (u64, u64)> = acked_ends
                .iter()
                .map(|(&p, &end)| (p, (end, end)))
                .collect();
            assert_eq!(ends, expected, "described through node {node_id}");
        }
        let first = cluster.node(1).address().to_string();
        let mut consumer = Consumer::new(
            client_config(&first),
            ConsumerConfig::default()
                .auto_offset_reset(AutoOffsetReset::Earliest)
                .fetch_max_wait(Duration::from_millis(100)),
        )
        .unwrap();
        consumer.assign_topic("spread").await.unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 3 && Instant::now() < deadline {
            for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
                seen.push((
                    record.partition,
                    record.value.as_deref().unwrap_or_default().to_vec(),
                ));
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (0, b"p0".to_vec()),
                (1, b"p1".to_vec()),
                (2, b"p2".to_vec())
            ]
        );
        // A new topic's leaders follow placement's preferred leaders: each node leads a third.
        // (Before the preferred leader's first try was protected, the node that applied the
        // topic first often lost its partitions to the node with the shortest election wait:
        // 93 / 333 / 574 of 1,000.)
        admin
            .create_topic("balanced", 15, None, TopicConfig::default())
            .await
            .unwrap();
        let mut wire = cluster.node(1).wire();
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        let all_led = eventually(Duration::from_secs(20), || {
            let Ok(partitions) = describe(&mut wire, "balanced") else {
                return false;
            };
            led.clear();
            for partition in &partitions {
                if let Some(leader) = partition.leader {
                    *led.entry(leader).or_default() += 1;
                }
            }
            led.values().sum::<usize>() == 15
        });
        assert!(all_led, "not every partition has a leader: {led:?}");
        let (fewest, most) = (led.values().min(), led.values().max());
        assert!(
            led.len() == 3
                && most
                    .zip(fewest)
                    .is_some_and(|(most, fewest)| most - fewest <= 4),
            "leaders per node: {led:?}"
        );
        // Every replica, leader or not, reports a leader, its epoch and replicas, once the
        // leader's first append or heartbeat reached it (a follower learns its leader from
        // it, a moment after the leader knows itself).
        for node_id in 1..=3 {
            let mut wire = cluster.node(node_id).wire();
            let mut seen = Vec::new();
            let reported = eventually(Duration::from_secs(10), || {
                seen = describe(&mut wire, "spread").unwrap();
                seen.iter().all(|partition| {
                    partition.leader.is_some()
                        && partition.leader_epoch > cairn_protocol::Epoch::ZERO
                        && partition.replicas.len() == 3
                })
            });
            assert!(reported, "node {node_id}: {seen:?}");
        }
    });
}

#[test]
fn killing_the_leader_fails_over_and_every_replica_ends_identical() {
    run(async {
        let mut cluster = blocking(start_cluster);
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "failover", 1).await;
        let producer = Producer::new(client_config(&bootstrap), producer_config(30_000))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let running = tokio::spawn(produce_until(producer, "failover", "a", Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let leader = leader_of(&bootstrap, "failover").await;
        let killed_at = Instant::now();
        blocking(|| cluster.node_mut(leader).kill());
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let new_leader = leader_of(&bootstrap, "failover").await;
        assert_ne!(new_leader, leader, "another node leads after the kill");
        blocking(|| cluster.node_mut(leader).restart());
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.store(true, Ordering::Release);
        let history = running.await.unwrap();
        assert!(
            history.failed.is_empty(),
            "the producer rode through the failover: {:?}",
            history.failed
        );
        blocking(|| wait_converged(&cluster, "failover"));
        let replicas = blocking(|| stop_and_read_replicas(&mut cluster));
        let log = assert_identical_replicas(&replicas);
        assert_acked_present(&log, &history.acked);
        // Failover time: from the kill to the first ack of a record the next epoch wrote
        // (replies of the old leader may still arrive just after the kill).
        let before = history.acked.iter().filter(|a| a.at < killed_at).count();
        let last_before = history
            .acked
            .iter()
            .filter(|a| a.at < killed_at)
            .map(|a| a.offset)
            .max()
            .expect("records were acknowledged before the kill");
        let killed_epoch = replicas[0]
            .iter()
            .find(|batch| batch.next_offset() > last_before)
            .expect("the last record acknowledged before the kill is stored")
            .leader_epoch();
        let successor_start = replicas[0]
            .iter()
            .find(|batch| batch.leader_epoch() > killed_epoch)
            .expect("a later epoch after the kill")
            .base_offset();
        let successor: Vec<&Acked> = history
            .acked
            .iter()
            .filter(|a| a.offset > successor_start)
            .collect();
        assert!(before > 0, "records were acknowledged before the kill");
        assert!(
            successor.len() > 1,
            "records were acknowledged after the kill"
        );
        eprintln!(
            "failover: first ack on the successor {} ms after SIGKILL of leader {leader} \
             ({before} acks before the kill, {} on later epochs)",
            successor[0].at.duration_since(killed_at).as_millis(),
            successor.len()
        );
        // Exactly once: the producer is idempotent (the default), so a batch whose reply was
        // lost to the leader change is recognised by the new leader when it is retried.
        let mut counts: HashMap<&[u8], usize> = HashMap::new();
        for (_, value) in &log {
            *counts.entry(value.as_slice()).or_insert(0) += 1;
        }
        let twice: Vec<_> = counts
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(value, count)| (String::from_utf8_lossy(value), *count))
            .collect();
        assert!(twice.is_empty(), "records stored more than once: {twice:?}");
    });
}

#[test]
fn a_paused_leader_steps_down_and_acknowledges_nothing_after_waking() {
    run(async {
        let mut cluster = blocking(start_cluster);
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "paused", 1).await;
        let producer = Producer::new(client_config(&bootstrap), producer_config(30_000))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let running = tokio::spawn(produce_until(producer, "paused", "b", Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let leader = leader_of(&bootstrap, "paused").await;
        let old = local_replica(&cluster, leader, "paused").unwrap();
        assert_eq!(old.leader, Some(NodeId(leader)));
        cluster.node(leader).signal("STOP");
        // Far past the lease (200 ms in the test preset) and an election.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        // A produce that reaches the old leader while it sleeps: it is read the moment the
        // process wakes, before anything else can tell it that it was deposed.
        let mut late = cluster.node(leader).wire();
        late.send(support::produce_request(
            "paused",
            0,
            support::batch_of(&[b"late"]).into_bytes(),
        ));
        cluster.node(leader).signal("CONT");
        let reply = blocking(|| late.recv());
        assert!(
            reply.result.is_err(),
            "a deposed leader acknowledged a write after waking: {reply:?}"
        );
        let stepped_down = eventually(Duration::from_secs(10), || {
            local_replica(&cluster, leader, "paused").is_some_and(|replica| {
                replica.leader.is_some_and(|now| now != NodeId(leader))
                    && replica.leader_epoch > old.leader_epoch
            })
        });
        assert!(stepped_down, "the old leader follows a newer epoch");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.store(true, Ordering::Release);
        let history = running.await.unwrap();
        assert!(
            history.failed.is_empty(),
            "the producer rode through the pause: {:?}",
            history.failed
        );
        blocking(|| wait_converged(&cluster, "paused"));
        let replicas = blocking(|| stop_and_read_replicas(&mut cluster));
        let log = assert_identical_replicas(&replicas);
        assert_acked_present(&log, &history.acked);
        assert!(
            !log.iter().any(|(_, value)| value == b"late"),
            "the write the deposed leader got after waking is nowhere"
        );
    });
}

#[test]
fn without_a_quorum_writes_are_refused_and_resume_after_a_restart() {
    run(async {
        let mut cluster = blocking(start_cluster);
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "quorum", 1).await;
        let producer = Producer::new(client_config(&bootstrap), producer_config(20_000))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let first = produce_until(producer.clone(), "quorum", "c1", Arc::clone(&stop));
        let writer = tokio::spawn(first);
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Release);
        let mut history = writer.await.unwrap();
        assert!(!history.acked.is_empty());
        // Kill both followers: the leader is left alone.
        let leader = leader_of(&bootstrap, "quorum").await;
        let others: Vec<u32> = (1..=3).filter(|id| *id != leader).collect();
        for id in &others {
            blocking(|| cluster.node_mut(*id).kill());
        }
        // Through the client: nothing is acknowledged, and the failure is a typed one.
        let short = Producer::new(
            client_config(&cluster.node(leader).address().to_string()),
            producer_config(3_000),
        )
        .await
        .unwrap();
        let outcome = short
            .send_to("quorum", 0, Record::new("no-quorum"))
            .await
            .unwrap()
            .await;
        match &outcome {
            Err(ClientError::DeliveryTimeout { last, .. }) => {
                assert!(last.is_retriable(), "{last:?}");
            }
            other => panic!("a write without a quorum must not be acknowledged: {other:?}"),
        }
        // Straight to the survivor: once gossip has noticed, the refusal names the reason.
        let mut wire = cluster.node(leader).wire();
        let mut last = None;
        let named = eventually(Duration::from_secs(10), || {
            let reply = wire.produce("quorum", 0, &[b"direct"]);
            assert!(reply.is_err(), "acknowledged without a quorum: {reply:?}");
            last = Some(reply.clone());
            matches!(
                reply,
                Err(ApiError::NotEnoughReplicas {
                    needed: 2,
                    alive: 1
                })
            )
        });
        assert!(named, "expected NotEnoughReplicas, last reply {last:?}");
        // One node back: a majority again, writes resume.
        blocking(|| cluster.node_mut(others[0]).restart());
        stop.store(false, Ordering::Release);
        let writer = tokio::spawn(produce_until(producer, "quorum", "c2", Arc::clone(&stop)));
        let resumed = Instant::now();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stop.store(true, Ordering::Release);
        let later = writer.await.unwrap();
        assert!(
            !later.acked.is_empty(),
            "writes resumed after a restart: {:?}",
            later.failed
        );
        eprintln!(
            "quorum regained: first ack {} ms after the restart returned",
            later.acked[0].at.duration_since(resumed).as_millis()
        );
        history.acked.extend(later.acked);
        // Nothing acknowledged is lost: read everything back through the cluster.
        let live = format!(
            "{},{}",
            cluster.node(leader).address(),
            cluster.node(others[0]).address()
        );
        let log = read_all(&live, "quorum", last_acked(&history.acked)).await;
        assert_acked_present(&log, &history.acked);
        assert!(!log.iter().any(|(_, value)| value == b"direct"));
    });
}

/// Issue 17: with the leader and a follower killed, the survivor went on naming the dead
/// leader in `topic describe` and `cluster status` for good: its replica remembers its last
/// leader until it hears of a newer one, which without a majority never comes.
#[test]
fn a_dead_leader_is_not_named_as_leader_by_the_survivor() {
    run(async {
        let mut cluster = blocking(start_cluster);
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "truth", 1).await;
        let leader = leader_of(&bootstrap, "truth").await;
        let others: Vec<u32> = (1..=3).filter(|id| *id != leader).collect();
        let survivor = others[0];
        blocking(|| {
            cluster.node_mut(leader).kill();
            cluster.node_mut(others[1]).kill();
        });
        let mut wire = cluster.node(survivor).wire();
        let mut seen = None;
        let leaderless = eventually(Duration::from_secs(10), || {
            let described = describe(&mut wire, "truth").unwrap()[0].leader;
            let status = wire.cluster_status(false);
            let listed = status
                .partitions
                .iter()
                .find(|partition| partition.topic == "truth")
                .and_then(|partition| partition.leader);
            seen = Some((described, listed));
            described.is_none() && listed.is_none()
        });
        assert!(
            leaderless,
            "the survivor still names a leader (describe, status): {seen:?}"
        );
        // An idempotent producer's first request, a producer id from `__meta`, names the
        // reason too, once gossip noticed both deaths (it said "this node is not the leader
        // (leader hint: None)").
        let mut refused = None;
        let named = eventually(Duration::from_secs(10), || {
            let reply = wire.call(Request::InitProducerId(InitProducerIdRequest {}));
            assert!(
                reply.is_err(),
                "a producer id without a majority: {reply:?}"
            );
            refused = Some(reply.clone());
            matches!(
                reply,
                Err(ApiError::NotEnoughReplicas {
                    needed: 2,
                    alive: 1
                })
            )
        });
        assert!(named, "expected NotEnoughReplicas, last reply {refused:?}");
    });
}

/// A paused follower (SIGSTOP: its node may still look alive for a while) is reported out
/// of sync by every partition's leader within `replica.lag_time_max_ms` (1 s in the test
/// preset), as Kafka's ISR would, and `cluster status` (asked of one node, merging what the
/// leaders say) shows each partition under-replicated with it listed; once resumed it
/// catches up and is in sync again.
#[test]
fn a_paused_follower_is_out_of_sync_until_it_catches_up() {
    run(async {
        let cluster = blocking(start_cluster);
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "isr", 3).await;
        let paused = 3u32;
        let live = format!(
            "{},{}",
            cluster.node(1).address(),
            cluster.node(2).address()
        );
        let admin = Admin::new(client_config(&live)).unwrap();
        let lagging_of = |status: &cairn_client::ClusterStatusResponse| -> Vec<(u32, Vec<u32>)> {
            status
                .partitions
                .iter()
                .filter(|partition| partition.topic == "isr")
                .map(|partition| {
                    (
                        partition.partition,
                        partition
                            .lagging_replicas
                            .iter()
                            .map(|node| node.0)
                            .collect(),
                    )
                })
                .collect()
        };
        // Healthy: nobody out of sync.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = admin.cluster_status(false).await.unwrap();
            let lagging = lagging_of(&status);
            if lagging.len() == 3 && lagging.iter().all(|(_, nodes)| nodes.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "never all in sync: {lagging:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        cluster.node(paused).signal("STOP");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = admin.cluster_status(false).await.unwrap();
            let lagging = lagging_of(&status);
            // Partitions node 3 led get a new leader first, which then reports it too.
            if lagging.len() == 3 && lagging.iter().all(|(_, nodes)| nodes == &[paused]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {paused} never reported out of sync everywhere: {lagging:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        cluster.node(paused).signal("CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = admin.cluster_status(false).await.unwrap();
            let lagging = lagging_of(&status);
            if lagging.len() == 3 && lagging.iter().all(|(_, nodes)| nodes.is_empty()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {paused} never back in sync: {lagging:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn restarting_every_node_at_once_keeps_every_acknowledged_record() {
    restart_every_node_at_once(&[]);
}

/// The same with `storage.durability = "fsync"` (every acknowledgement synced to the disk):
/// the mode starts, acknowledges, and recovers what it synced.
#[test]
fn restarting_every_node_at_once_in_fsync_mode_keeps_every_acknowledged_record() {
    restart_every_node_at_once(&["--set", "storage.durability=fsync"]);
}

fn restart_every_node_at_once(node_args: &'static [&'static str]) {
    run(async {
        let mut cluster = blocking(|| Guarded(TestCluster::start(3, node_args)));
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "restart", 1).await;
        let producer = Producer::new(client_config(&bootstrap), producer_config(20_000))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(produce_until(producer, "restart", "d", Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // Every node dies at once, with the producer still writing.
        blocking(|| {
            for node in &mut cluster.nodes {
                node.kill();
            }
        });
        stop.store(true, Ordering::Release);
        let history = writer.await.unwrap();
        assert!(history.acked.len() > 10, "{} acks", history.acked.len());
        blocking(|| cluster.launch_all());
        let log = read_all(&bootstrap, "restart", last_acked(&history.acked)).await;
        assert_acked_present(&log, &history.acked);
        // And the restarted cluster takes writes again.
        let producer = Producer::new(client_config(&bootstrap), producer_config(20_000))
            .await
            .unwrap();
        let again = producer
            .send_to("restart", 0, Record::new("after"))
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(again.offset.unwrap() >= log.last().unwrap().0);
    });
}

/// Committed records of `topic`/0 through the client consumer, from the start until one at
/// or past `through` arrived (plus whatever a last short poll brings).
async fn read_all(bootstrap: &str, topic: &str, through: Offset) -> Vec<(Offset, Vec<u8>)> {
    read_partition(bootstrap, topic, 0, through).await
}

/// Committed records of `topic`/`partition`, as [`read_all`] reads partition 0.
async fn read_partition(
    bootstrap: &str,
    topic: &str,
    partition: u32,
    through: Offset,
) -> Vec<(Offset, Vec<u8>)> {
    let mut consumer = Consumer::new(
        client_config(bootstrap),
        ConsumerConfig::default()
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(100)),
    )
    .unwrap();
    consumer.assign(&[(topic, partition)]).await.unwrap();
    let mut records: Vec<(Offset, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while records.last().is_none_or(|(offset, _)| *offset < through) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} stopped at {:?}, short of {through}",
            records.last().map(|(offset, _)| *offset)
        );
        for record in consumer.poll(Duration::from_millis(300)).await.unwrap() {
            records.push((
                record.offset,
                record.value.as_deref().unwrap_or_default().to_vec(),
            ));
        }
    }
    for record in consumer.poll(Duration::from_millis(300)).await.unwrap() {
        records.push((
            record.offset,
            record.value.as_deref().unwrap_or_default().to_vec(),
        ));
    }
    records
}

fn last_acked(acked: &[Acked]) -> Offset {
    acked
        .iter()
        .map(|record| record.offset)
        .max()
        .expect("some acks")
}

fn brokers_listed(node: &support::TestNode) -> usize {
    match node
        .wire()
        .call(Request::Metadata(MetadataRequest { topics: None }))
    {
        Ok(Response::Metadata(metadata)) => metadata.brokers.len(),
        _ => 0,
    }
}

#[test]
fn a_node_started_later_joins_with_seeds_learns_metadata_and_gets_replicas() {
    run(async {
        let mut cluster = blocking(start_cluster);
        let bootstrap = cluster.bootstrap();
        create_topic(&bootstrap, "before", 1).await;
        let joiner = blocking(|| cluster.add_joiner(&[]));
        let address = cluster.node(joiner).address().to_string();
        // It learned what was created before it joined, and everyone sees four nodes.
        let mut wire = cluster.node(joiner).wire();
        assert_eq!(describe(&mut wire, "before").unwrap().len(), 1);
        for node in &cluster.nodes {
            let four = eventually(Duration::from_secs(10), || brokers_listed(node) == 4);
            assert!(four, "node {} lists four brokers", node.node_id);
        }
        // Created through the joiner (it is no voter: the client follows its leader hint).
        let admin = Admin::new(client_config(&address)).unwrap();
        let topic = admin
            .create_topic("after", 4, Some(3), TopicConfig::default())
            .await
            .unwrap();
        // Counting what "before" holds too, every node holds as many replicas and is the
        // preferred leader as often as any other, give or take one.
        let earlier = admin.topic_metadata("before").await.unwrap();
        let mut replicas: HashMap<NodeId, usize> = HashMap::new();
        let mut preferred: HashMap<NodeId, usize> = HashMap::new();
        for partition in topic.partitions.iter().chain(&earlier.partitions) {
            *preferred.entry(partition.replicas[0]).or_insert(0) += 1;
            for node in &partition.replicas {
                *replicas.entry(*node).or_insert(0) += 1;
            }
        }
        for counts in [&replicas, &preferred] {
            assert_eq!(counts.len(), 4, "every node takes part: {topic:?}");
            let max = counts.values().max().unwrap();
            let min = counts.values().min().unwrap();
            assert!(max - min <= 1, "balanced: {counts:?} for {topic:?}");
        }
        for partition in &topic.partitions {
            assert!(partition.leader.is_some(), "created means led: {topic:?}");
        }
        // Records go through the joiner and come back from every partition.
        let producer = Producer::new(client_config(&address), producer_config(20_000))
            .await
            .unwrap();
        for partition in 0..4 {
            producer
                .send_to("after", partition, Record::new(format!("j{partition}")))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // A learner keeps no metadata of its own: after a restart it learns it again.
        blocking(|| {
            let node = cluster.node_mut(joiner);
            node.kill();
            node.restart();
        });
        let mut wire = cluster.node(joiner).wire();
        assert_eq!(describe(&mut wire, "after").unwrap().len(), 4);
        let mut consumer = Consumer::new(
            client_config(&address),
            ConsumerConfig::default()
                .auto_offset_reset(AutoOffsetReset::Earliest)
                .fetch_max_wait(Duration::from_millis(100)),
        )
        .unwrap();
        consumer.assign_topic("after").await.unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 4 && Instant::now() < deadline {
            for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
                seen.push(
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .into_owned(),
                );
            }
        }
        seen.sort();
        assert_eq!(seen, vec!["j0", "j1", "j2", "j3"]);
    });
}

/// Every partition of `topic` and its leader, as `node_id` reports them (its own replicas'
/// view), with each partition's preferred replica (the first of its replica list).
fn leaders_seen_by(
    cluster: &TestCluster,
    node_id: u32,
    topic: &str,
) -> Vec<(u32, Option<NodeId>, NodeId)> {
    let mut wire = cluster.node(node_id).wire();
    wire.cluster_status(false)
        .partitions
        .iter()
        .filter(|partition| partition.topic == topic)
        .map(|partition| (partition.partition, partition.leader, partition.replicas[0]))
        .collect()
}

/// Whether every running node sees each of the `partitions` partitions of `topic` led by its
/// preferred replica, and so each of the three nodes leading one.
fn led_by_preferred_replicas(cluster: &mut TestCluster, topic: &str, partitions: usize) -> bool {
    (1..=3).all(|node_id| {
        if !cluster.node_mut(node_id).is_running() {
            return true;
        }
        let seen = leaders_seen_by(cluster, node_id, topic);
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, leader, _) in &seen {
            if let Some(leader) = leader {
                *per_node.entry(*leader).or_default() += 1;
            }
        }
        seen.len() == partitions
            && seen
                .iter()
                .all(|(_, leader, preferred)| *leader == Some(*preferred))
            && per_node.len() == 3
            && per_node.values().all(|count| *count == 1)
    })
}

/// Sends `prefix-000000`, `prefix-000001`, ... round-robin over `partitions` partitions, one
/// at a time, until `stop`; returns the acknowledged (partition, offset, value) and failures.
async fn produce_over_partitions_until(
    producer: Producer,
    topic: &'static str,
    partitions: u32,
    stop: Arc<AtomicBool>,
) -> (Vec<(u32, Offset, Vec<u8>)>, Vec<(Vec<u8>, ClientError)>) {
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let mut index = 0u32;
    while !stop.load(Ordering::Acquire) {
        let partition = index % partitions;
        let value = format!("r-{index:06}").into_bytes();
        index += 1;
        let sent = producer
            .send_to(topic, partition, Record::new(value.clone()))
            .await;
        let outcome = match sent {
            Ok(delivery) => delivery.await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(metadata) => acked.push((
                partition,
                metadata.offset.expect("acks=all reports the offset"),
                value,
            )),
            Err(error) => failed.push((value, error)),
        }
    }
    (acked, failed)
}

#[test]
fn leadership_returns_to_the_preferred_replicas_once_a_failed_node_is_back() {
    run(async {
        let mut cluster = blocking(|| {
            Guarded(TestCluster::start(
                3,
                &["--set", "replica.leader_rebalance_ms=500"],
            ))
        });
        let bootstrap = cluster.bootstrap();
        let topic = "homing";
        create_topic(&bootstrap, topic, 3).await;
        // Placement gives each node one preferred leadership, and the leaders start there
        // (or go there within a rebalance).
        let balanced = eventually(Duration::from_secs(30), || {
            led_by_preferred_replicas(&mut cluster, topic, 3)
        });
        assert!(
            balanced,
            "the first leaders are not the preferred replicas: {:?}",
            leaders_seen_by(&cluster, 1, topic)
        );

        let producer = Producer::new(client_config(&bootstrap), producer_config(30_000))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let running = tokio::spawn(produce_over_partitions_until(
            producer,
            topic,
            3,
            Arc::clone(&stop),
        ));
        tokio::time::sleep(Duration::from_millis(1_000)).await;

        // Kill the preferred leader of partition 0; the others take its partition over.
        let (_, _, victim) = leaders_seen_by(&cluster, 1, topic)[0];
        let victim = victim.0;
        let survivors: Vec<u32> = (1..=3).filter(|node| *node != victim).collect();
        let survivor = survivors[0];
        let resignations_before = resignations(&cluster, &survivors);
        blocking(|| cluster.node_mut(victim).kill());
        let taken_over = eventually(Duration::from_secs(20), || {
            let seen = leaders_seen_by(&cluster, survivor, topic);
            seen.len() == 3
                && seen
                    .iter()
                    .all(|(_, leader, _)| leader.is_some_and(|leader| leader.0 != victim))
        });
        assert!(
            taken_over,
            "node {victim}'s partition was not taken over: {:?}",
            leaders_seen_by(&cluster, survivor, topic)
        );
        // Long enough that the new leader would hand back at once if it could. A loaded
        // machine may still move leadership between the survivors (a lease lapses behind a
        // slow flush, or a survivor hands back to its own preferred, live, replica), so what
        // is checked is the thing itself: no survivor resigns in favour of the dead node,
        // and the dead node is never named leader.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let handed_to_victim = format!("preferred=Some(NodeId({victim}))");
        for node in &survivors {
            let resigned_for_the_dead = cluster
                .node(*node)
                .logs()
                .lines()
                .filter(|line| line.contains("leadership handed back to the preferred replica"))
                .any(|line| line.contains(&handed_to_victim));
            assert!(
                !resigned_for_the_dead,
                "node {node} resigned a leadership for the dead preferred replica {victim}"
            );
        }
        assert!(
            leaders_seen_by(&cluster, survivor, topic)
                .iter()
                .all(|(_, leader, _)| leader.is_none_or(|leader| leader.0 != victim)),
            "the dead node {victim} is named leader: {:?}",
            leaders_seen_by(&cluster, survivor, topic)
        );

        // Back: once it has caught up, its partition is handed back to it.
        blocking(|| cluster.node_mut(victim).restart());
        let restored_at = Instant::now();
        let homed = eventually(Duration::from_secs(30), || {
            led_by_preferred_replicas(&mut cluster, topic, 3)
        });
        assert!(
            homed,
            "leadership did not return to the preferred replicas: {:?}",
            (1..=3)
                .map(|node| leaders_seen_by(&cluster, node, topic))
                .collect::<Vec<_>>()
        );
        eprintln!(
            "rebalance: every partition led by its preferred replica {} ms after the restart",
            restored_at.elapsed().as_millis()
        );
        assert!(
            resignations(&cluster, &survivors) > resignations_before,
            "the hand-back is counted in cairn_leader_resignations_total"
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.store(true, Ordering::Release);
        let (acked, failed) = running.await.unwrap();
        assert!(
            failed.is_empty(),
            "the producer rode through the failure and the hand-back: {failed:?}"
        );
        // Every acknowledged record is where it was acknowledged, and nothing is stored twice.
        let mut stored: HashMap<Vec<u8>, usize> = HashMap::new();
        for partition in 0..3 {
            let mine: Vec<&(u32, Offset, Vec<u8>)> = acked
                .iter()
                .filter(|(written_to, _, _)| *written_to == partition)
                .collect();
            assert!(!mine.is_empty(), "partition {partition} got writes");
            let through = mine.iter().map(|(_, offset, _)| *offset).max().unwrap();
            let log = read_partition(&bootstrap, topic, partition, through).await;
            let by_offset: BTreeMap<Offset, &Vec<u8>> =
                log.iter().map(|(offset, value)| (*offset, value)).collect();
            for (_, offset, value) in &mine {
                assert_eq!(
                    by_offset.get(offset).map(|stored| stored.as_slice()),
                    Some(value.as_slice()),
                    "acknowledged {:?} at {partition}/{offset} is not there",
                    String::from_utf8_lossy(value)
                );
            }
            for (_, value) in log {
                *stored.entry(value).or_default() += 1;
            }
        }
        let twice: Vec<_> = stored
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(value, count)| (String::from_utf8_lossy(value), *count))
            .collect();
        assert!(twice.is_empty(), "records stored more than once: {twice:?}");
        eprintln!(
            "rebalance: {} records acknowledged, none lost or duplicated",
            acked.len()
        );
    });
}

/// `cairn_leader_resignations_total` summed over the `nodes`' /metrics.
fn resignations(cluster: &TestCluster, nodes: &[u32]) -> u64 {
    nodes
        .iter()
        .map(|node| {
            let metrics = http_get(cluster.node(*node).http_address(), "/metrics");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix("cairn_leader_resignations_total "))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("node {node} serves no resignation count: {metrics}"))
        })
        .sum()
}

/// The whole response to a GET of `path` (headers and body), read until the server closes.
fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}
