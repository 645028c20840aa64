//! Log compaction against real `cairn node` processes, three nodes on 127.0.0.1 with the test
//! preset (leaders check every 200 ms whether a compaction is due):
//!
//! - a `cleanup.policy=compact` topic, read from the beginning with the native consumer
//!   (which steps over the gaps compaction leaves), holds exactly the newest value per key
//!   (a model: a map of the latest value per key), and tombstones disappear after
//!   `delete.retention.ms`;
//! - the same after the leader is killed and more records arrive, and after the killed node
//!   restarts and catches up;
//! - every replica's stored log, read from its files once the nodes stopped, holds the same
//!   batches (after applying the largest decision any of them holds, for a replica stopped
//!   before its compactor finished), and the same records as the model;
//! - a record without a key is refused with INVALID_RECORDS, changing nothing;
//! - with the compaction index budget at its floor (`retention.compaction_index_bytes_max`),
//!   a topic whose keys need many budgets is compacted in passes on every replica: each
//!   replica's stored log is, by itself, compacted by the decision it applied, and holds the
//!   newest value per key.
//!
//! The test is bounded in time; dropping a cluster kills its processes.

mod support;

use cairn_client::{
    Admin, ApiError, ClientConfig, ClientError, ConsumerRecord, Producer, ProducerConfig, Record,
    TopicConfig,
};
use cairn_protocol::compaction::{compact_log, CompactionDecision};
use cairn_protocol::messages::{CleanupPolicy, DescribeTopicRequest, PartitionDescription};
use cairn_protocol::{Offset, Request, Response};
use cairn_storage::LogStore;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::{partition_logs, replica_log, Guarded, TestCluster};
use support::eventually;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// Tombstones are kept this long once they could go.
const DELETE_RETENTION_MS: u64 = 1_500;
const TOPIC: &str = "compacted";

fn client_config(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap)
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
}

fn producer_config() -> ProducerConfig {
    ProducerConfig::default()
        .linger(Duration::from_millis(0))
        .requests_in_flight_per_partition_max(1)
        .delivery_timeout(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(2))
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
}

/// The latest value per key; a tombstone removes the key.
type Model = BTreeMap<String, String>;

/// Sends `records` (key, value or `None` for a tombstone) one by one with acks=all, and
/// applies each to the model once acknowledged.
async fn produce(bootstrap: &str, model: &mut Model, records: &[(String, Option<String>)]) {
    let producer = Producer::new(client_config(bootstrap), producer_config())
        .await
        .unwrap();
    for (key, value) in records {
        let record = match value {
            Some(value) => Record::new(value.clone()).with_key(key.clone()),
            None => Record::tombstone(key.clone()),
        };
        producer
            .send_to(TOPIC, 0, record)
            .await
            .unwrap_or_else(|error| panic!("{key} not sent: {error:?}"))
            .await
            .unwrap_or_else(|error| panic!("{key} not acknowledged: {error:?}"));
        match value {
            Some(value) => model.insert(key.clone(), value.clone()),
            None => model.remove(key),
        };
    }
}

/// Rounds of values for `keys` keys, with tombstones for the keys `tombstoned` in the last.
fn rounds(
    prefix: &str,
    keys: u32,
    rounds: u32,
    tombstoned: &[u32],
) -> Vec<(String, Option<String>)> {
    let mut records = Vec::new();
    for round in 0..rounds {
        for key in 0..keys {
            let tombstone = round + 1 == rounds && tombstoned.contains(&key);
            records.push((
                format!("key-{key}"),
                (!tombstone).then(|| format!("{prefix}-{key}-{round}")),
            ));
        }
    }
    records
}

/// Every record of partition 0 from the log start, read with a fresh consumer until the
/// high watermark it saw first.
async fn read_all(bootstrap: &str, until: Offset) -> Vec<ConsumerRecord> {
    support::read_from_start(client_config(bootstrap), TOPIC, until).await
}

/// The committed end of partition 0 as its leader reports it.
fn high_watermark(cluster: &TestCluster) -> Option<Offset> {
    (1..=3).find_map(|id| {
        let replica = local_replica(cluster, id)?;
        (replica.leader == Some(cairn_protocol::NodeId(id))).then_some(replica.high_watermark)
    })
}

/// What one node's own replica reports; `None` when the node does not answer.
fn local_replica(cluster: &TestCluster, node_id: u32) -> Option<PartitionDescription> {
    let stream = std::net::TcpStream::connect(cluster.node(node_id).address()).ok()?;
    let mut wire = support::Wire::over(stream);
    match wire.call(Request::DescribeTopic(DescribeTopicRequest {
        name: TOPIC.to_string(),
    })) {
        Ok(Response::DescribeTopic(mut response)) => Some(response.partitions.remove(0)),
        _ => None,
    }
}

/// Whether `records`, read from the start, are exactly the model: one record per live key,
/// holding its latest value, and no tombstone left. Offsets must rise (gaps allowed).
fn compacted_as_model(records: &[ConsumerRecord], model: &Model) -> bool {
    let mut seen = Model::new();
    let mut previous: Option<Offset> = None;
    for record in records {
        assert!(
            previous.is_none_or(|previous| record.offset > previous),
            "offsets went backwards at {}",
            record.offset
        );
        previous = Some(record.offset);
        let key = String::from_utf8(record.key.clone().expect("keyed").to_vec()).unwrap();
        let Some(value) = &record.value else {
            return false;
        };
        if seen
            .insert(key, String::from_utf8(value.to_vec()).unwrap())
            .is_some()
        {
            return false;
        }
    }
    &seen == model
}

/// Waits until a read from the start is exactly the model.
async fn wait_compacted(cluster: &TestCluster, bootstrap: &str, model: &Model) {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some(until) = high_watermark(cluster) {
            last = read_all(bootstrap, until).await;
            if compacted_as_model(&last, model) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let shown: Vec<_> = last
        .iter()
        .map(|record| (record.offset, record.key.clone(), record.value.clone()))
        .collect();
    panic!("never compacted to the model {model:?}; last read {shown:?}");
}

/// The node that leads the topic's partition, as its own replica says.
fn current_leader(cluster: &TestCluster) -> u32 {
    (1..=3)
        .find(|id| {
            local_replica(cluster, *id)
                .is_some_and(|replica| replica.leader == Some(cairn_protocol::NodeId(*id)))
        })
        .expect("a leader")
}

/// The value of the unlabelled metric `name` on node `node_id`'s `/metrics`.
fn compactor_metric(cluster: &TestCluster, node_id: u32, name: &str) -> f64 {
    support::metric(cluster.node(node_id).http_address(), name)
}

#[test]
fn a_compacted_topic_equals_the_latest_value_per_key_across_failover_and_restart() {
    run_within_timeout(scenario());
}

/// Runs `scenario` on a two-thread runtime, failing the test after [`TEST_TIMEOUT`].
fn run_within_timeout(scenario: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, scenario)
            .await
            .expect("the test finishes in time")
    });
}

/// Three nodes started with `node_args`, and the one-partition compacted topic [`TOPIC`] on
/// all of them (compacted at once, tombstones kept [`DELETE_RETENTION_MS`]), led.
async fn start_with_compacted_topic(node_args: &[&str]) -> Guarded {
    let cluster = Guarded(TestCluster::start(3, node_args));
    let config = TopicConfig {
        cleanup_policy: Some(CleanupPolicy::Compact),
        min_compaction_lag_ms: Some(0),
        delete_retention_ms: Some(DELETE_RETENTION_MS),
        segment_bytes: Some(1),
        ..TopicConfig::default()
    };
    Admin::new(client_config(&cluster.0.bootstrap()))
        .unwrap()
        .create_topic(TOPIC, 1, Some(3), config)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || high_watermark(
        &cluster.0
    )
    .is_some()));
    cluster
}

async fn scenario() {
    let mut cluster = start_with_compacted_topic(&[]).await;
    let bootstrap = cluster.0.bootstrap();

    let mut model = Model::new();
    produce(&bootstrap, &mut model, &rounds("first", 8, 6, &[1, 5])).await;
    // A record without a key has no place in a compacted topic: refused, nothing written.
    let before = high_watermark(&cluster.0).unwrap();
    let producer = Producer::new(client_config(&bootstrap), producer_config())
        .await
        .unwrap();
    let refused = producer
        .send_to(TOPIC, 0, Record::new("no key"))
        .await
        .unwrap()
        .await;
    assert!(
        matches!(
            &refused,
            Err(ClientError::Api(ApiError::KeylessRecords { refused: 1, records }))
                if records.len() == 1 && records[0].index == 0
        ),
        "{refused:?}"
    );
    drop(producer);
    wait_compacted(&cluster.0, &bootstrap, &model).await;
    assert!(high_watermark(&cluster.0).unwrap() >= before);
    // The leader's compactor shows its work on /metrics (a consumer read its compacted log).
    let leader = current_leader(&cluster.0);
    let metrics = |name: &str| compactor_metric(&cluster.0, leader, name);
    assert!(metrics("cairn_compaction_jobs_total") >= 1.0);
    assert!(metrics("cairn_compaction_bytes_read_total") > 0.0);
    assert!(metrics("cairn_compaction_bytes_removed_total") > 0.0);
    assert!(metrics("cairn_compaction_batches_rewritten_total") >= 1.0);
    assert_eq!(metrics("cairn_compaction_jobs_failed_total"), 0.0);

    // Failover: the leader dies, more values (and a tombstone) arrive at the new leader.
    let leader = current_leader(&cluster.0);
    cluster.0.node_mut(leader).kill();
    produce(&bootstrap, &mut model, &rounds("second", 10, 3, &[2])).await;
    wait_compacted(&cluster.0, &bootstrap, &model).await;

    // The killed node comes back and catches up from a compacted leader.
    cluster.0.node_mut(leader).restart();
    let caught_up = eventually(Duration::from_secs(30), || {
        let ends: Vec<Option<(Offset, Offset)>> = (1..=3)
            .map(|id| {
                local_replica(&cluster.0, id)
                    .map(|replica| (replica.log_end, replica.high_watermark))
            })
            .collect();
        ends.iter().all(|end| end.is_some() && *end == ends[0])
    });
    assert!(caught_up, "the restarted replica did not catch up");
    produce(&bootstrap, &mut model, &rounds("third", 4, 2, &[])).await;
    wait_compacted(&cluster.0, &bootstrap, &model).await;
    // Let every replica's compactor see the last decision before the files are read.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Replicas agree on what is committed; a decision the leader makes after this (a
    // tombstone's expiry falls due every `delete.retention.ms`) may reach some replicas' files
    // and not others' before the nodes stop, so the logs are compared below this end.
    let mut agreed = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            let ends: Vec<Option<(Offset, Offset)>> = (1..=3)
                .map(|id| {
                    local_replica(&cluster.0, id)
                        .map(|replica| (replica.log_end, replica.high_watermark))
                })
                .collect();
            let same = ends.iter().all(|end| end.is_some() && *end == ends[0]);
            agreed = ends[0]
                .filter(|_| same)
                .map(|(_, high_watermark)| high_watermark);
            same
        }),
        "the replicas did not agree on their log end"
    );
    let agreed = agreed.expect("agreed above");

    for node in &mut cluster.0.nodes {
        assert!(node.terminate().success());
    }
    let log_name = partition_logs(&cluster.0.nodes[0])
        .into_iter()
        .next()
        .expect("the partition's log");
    let logs: Vec<_> = cluster
        .0
        .nodes
        .iter()
        .map(|node| replica_log(node, &log_name))
        .collect();
    // A replica stopped before its compactor applied the last decision is compared after
    // applying it: compaction is idempotent and monotone, so that is the leader's log.
    let decision = logs
        .iter()
        .flatten()
        .filter_map(CompactionDecision::from_batch)
        .reduce(CompactionDecision::merge)
        .expect("the leaders decided");
    let settled: Vec<_> = logs
        .iter()
        .map(|log| {
            let mut settled = compact_log(log, &decision, 1 << 20).unwrap();
            settled.retain(|batch| batch.base_offset() < agreed);
            settled
        })
        .collect();
    assert!(
        settled[0]
            .last()
            .is_some_and(|batch| batch.next_offset() == agreed),
        "replica 1 holds everything committed"
    );
    assert_eq!(settled[0], settled[1], "replicas 1 and 2 differ");
    assert_eq!(settled[0], settled[2], "replicas 1 and 3 differ");
    assert_eq!(latest_per_key(&settled[0]), model);
}

/// What a log says each key's latest value is (a tombstone removes the key).
fn latest_per_key(log: &[cairn_protocol::batch::RecordBatch]) -> Model {
    let mut stored = Model::new();
    for batch in log.iter().filter(|batch| !batch.header().is_control()) {
        for record in batch.records() {
            let record = record.unwrap();
            let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
            match record.value {
                Some(value) => stored.insert(key, String::from_utf8(value.to_vec()).unwrap()),
                None => stored.remove(&key),
            };
        }
    }
    stored
}

/// The index budget the passes test gives every node: the floor the configuration allows.
const INDEX_BYTES_MAX: usize = 4096;
/// Distinct keys of the passes test, each `PASS_KEY_BYTES` long.
const PASS_KEYS: u32 = 200;
const PASS_KEY_BYTES: usize = 48;

#[test]
fn a_key_space_past_the_index_budget_is_compacted_in_passes_on_every_replica() {
    run_within_timeout(passes_scenario());
}

async fn passes_scenario() {
    let budget = format!("retention.compaction_index_bytes_max={INDEX_BYTES_MAX}");
    let mut cluster = start_with_compacted_topic(&["--set", &budget]).await;
    let bootstrap = cluster.0.bootstrap();

    // Two values for every key, then a tombstone for every tenth: the keys' index needs
    // about PASS_KEYS * (PASS_KEY_BYTES + 96) = 28 800 bytes, seven budgets.
    let key = |n: u32| format!("key-{n:03}-{}", "x".repeat(PASS_KEY_BYTES - 8));
    assert_eq!(key(0).len(), PASS_KEY_BYTES);
    let mut records = Vec::new();
    for round in 0..2 {
        for n in 0..PASS_KEYS {
            records.push((key(n), Some(format!("{n}-{round}"))));
        }
    }
    for n in (0..PASS_KEYS).step_by(10) {
        records.push((key(n), None));
    }
    let mut model = Model::new();
    produce(&bootstrap, &mut model, &records).await;
    assert_eq!(model.len(), PASS_KEYS as usize - PASS_KEYS as usize / 10);
    let produced = high_watermark(&cluster.0).expect("a leader");
    wait_compacted(&cluster.0, &bootstrap, &model).await;

    // Every replica commits what the leader had when its log read as the model (the
    // decisions that got it there included), and its compactor applies them.
    let leader = current_leader(&cluster.0);
    let leader_end = local_replica(&cluster.0, leader)
        .expect("the leader")
        .log_end;
    let mut agreed = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            let ends: Vec<Option<(Offset, Offset)>> = (1..=3)
                .map(|id| {
                    local_replica(&cluster.0, id)
                        .map(|replica| (replica.log_end, replica.high_watermark))
                })
                .collect();
            let same = ends.iter().all(|end| end.is_some() && *end == ends[0]);
            agreed = ends[0]
                .filter(|(_, high_watermark)| same && *high_watermark >= leader_end)
                .map(|(_, high_watermark)| high_watermark);
            agreed.is_some()
        }),
        "the replicas did not commit the leader's log"
    );
    let agreed = agreed.expect("agreed above");
    // Every node's compactor went through the keys in passes (a job of one pass adds as
    // many passes as jobs), and no job failed.
    let passes_beyond_jobs = |id: u32| {
        compactor_metric(&cluster.0, id, "cairn_compaction_passes_total")
            - compactor_metric(&cluster.0, id, "cairn_compaction_jobs_total")
    };
    assert!(
        eventually(Duration::from_secs(30), || (1..=3)
            .all(|id| passes_beyond_jobs(id) >= 6.0)),
        "a node's compactor did not pass the budget: {:?}",
        (1..=3).map(passes_beyond_jobs).collect::<Vec<_>>()
    );
    for id in 1..=3 {
        assert_eq!(
            compactor_metric(&cluster.0, id, "cairn_compaction_jobs_failed_total"),
            0.0,
            "node {id}"
        );
    }
    // Let the followers' compactors finish the job their last commit handed them.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    for node in &mut cluster.0.nodes {
        assert!(node.terminate().success());
    }
    let log_name = partition_logs(&cluster.0.nodes[0])
        .into_iter()
        .next()
        .expect("the partition's log");
    let mut logs = Vec::new();
    for node in &cluster.0.nodes {
        let log = replica_log(node, &log_name);
        let store = cairn_storage::sled_store::SledStore::open(node.data_dir().join("store"))
            .expect("open a stopped store");
        let applied = cairn_node::compactor::applied_decision(
            &store.open_log(&log_name).expect("the partition's log"),
        )
        .unwrap_or_else(|| panic!("node {} applied no decision", node.node_id));
        // This replica's own compactor, in passes, did what one unbounded pass does: the
        // stored log is already compacted by the decision it applied, which covers every
        // produced record, so no key is left twice below it.
        assert!(
            applied.below >= produced,
            "node {}: applied {applied:?}, produced up to {produced}",
            node.node_id
        );
        assert_eq!(
            compact_log(&log, &applied, usize::MAX).unwrap(),
            log,
            "node {}: not compacted by the decision it applied",
            node.node_id
        );
        let mut keys = std::collections::BTreeSet::new();
        for batch in log.iter().filter(|batch| !batch.header().is_control()) {
            for record in batch.records() {
                let record = record.unwrap();
                if record.offset < applied.below {
                    assert!(
                        keys.insert(record.key.expect("keyed")),
                        "node {}: a key twice below {}",
                        node.node_id,
                        applied.below
                    );
                }
            }
        }
        logs.push(log);
    }
    // The replicas hold the same batches below what they all committed (compared after
    // the largest decision, for one stopped before applying it), and the model.
    let decision = logs
        .iter()
        .flatten()
        .filter_map(CompactionDecision::from_batch)
        .reduce(CompactionDecision::merge)
        .expect("the leaders decided");
    let settled: Vec<_> = logs
        .iter()
        .map(|log| {
            let mut settled = compact_log(log, &decision, INDEX_BYTES_MAX).unwrap();
            settled.retain(|batch| batch.base_offset() < agreed);
            settled
        })
        .collect();
    assert_eq!(settled[0], settled[1], "replicas 1 and 2 differ");
    assert_eq!(settled[0], settled[2], "replicas 1 and 3 differ");
    assert_eq!(latest_per_key(&settled[0]), model);
}
