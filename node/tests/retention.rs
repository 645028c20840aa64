//! Retention against real `cairn node` processes (issue 14), three nodes on 127.0.0.1 with the
//! test preset (retention runs every 200 ms):
//!
//! - a partition whose whole log expired (its epoch markers carry timestamp 0, so time
//!   retention always removes them) restarts after every node stops, gets a leader again and
//!   takes records at offsets above the old ones;
//! - a follower stopped while retention moves the leader's log start past its log end comes
//!   back, starts its log at the leader's log start and the partition is fully replicated
//!   again.
//!
//! The tests run one at a time and each is bounded in time; dropping a cluster kills its
//! processes.

mod support;

use cairn_client::{Admin, ClientConfig, Producer, ProducerConfig, Record, TopicConfig};
use cairn_protocol::messages::{DescribeTopicRequest, PartitionDescription};
use cairn_protocol::{Offset, Request, Response};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use support::cluster::{Guarded, TestCluster};
use support::eventually;

/// Every test is bounded: a test that hangs fails instead.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Records older than this are removed; short, so that a test sees whole logs expire.
const RETENTION_MS: u64 = 300;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
        .delivery_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(2))
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
}

fn run(test: impl std::future::Future<Output = ()>) {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, test)
            .await
            .expect("the test finishes in time")
    });
}

async fn create_short_lived_topic(bootstrap: &str, topic: &str) {
    Admin::new(client_config(bootstrap))
        .unwrap()
        .create_topic(
            topic,
            1,
            Some(3),
            TopicConfig {
                retention_ms: Some(RETENTION_MS),
                retention_bytes: None,
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
}

/// Sends `count` records to partition 0 (acks=all); returns the offset of the last.
async fn produce(bootstrap: &str, topic: &str, prefix: &str, count: u32) -> Offset {
    let producer = Producer::new(client_config(bootstrap), producer_config())
        .await
        .unwrap();
    let mut last = None;
    for index in 0..count {
        let delivery = producer
            .send_to(topic, 0, Record::new(format!("{prefix}-{index}")))
            .await
            .unwrap_or_else(|error| panic!("{prefix}-{index} not sent: {error:?}"))
            .await
            .unwrap_or_else(|error| panic!("{prefix}-{index} not acknowledged: {error:?}"));
        last = delivery.offset;
    }
    last.expect("acks=all reports the offset")
}

/// What one node's own replica of `topic`/0 reports.
fn local_replica(cluster: &TestCluster, node_id: u32, topic: &str) -> Option<PartitionDescription> {
    let mut wire = cluster.node(node_id).wire();
    match wire.call(Request::DescribeTopic(DescribeTopicRequest {
        name: topic.to_string(),
    })) {
        Ok(Response::DescribeTopic(mut response)) => Some(response.partitions.remove(0)),
        _ => None,
    }
}

/// Waits until every node's replica of `topic`/0 satisfies `condition`.
fn wait_all(
    cluster: &TestCluster,
    topic: &str,
    seconds: u64,
    condition: impl Fn(&PartitionDescription) -> bool,
) -> bool {
    eventually(Duration::from_secs(seconds), || {
        (1..=3)
            .all(|id| local_replica(cluster, id, topic).is_some_and(|replica| condition(&replica)))
    })
}

/// Every replica holds the same log end, all of it committed, under one known leader. The
/// replicas are compared with each other at each poll: a leader change under load appends an
/// epoch marker, so a log end read once may be passed before the replicas agree.
fn fully_replicated(cluster: &TestCluster, topic: &str) -> bool {
    eventually(Duration::from_secs(20), || {
        let replicas: Option<Vec<PartitionDescription>> = (1..=3)
            .map(|id| local_replica(cluster, id, topic))
            .collect();
        replicas.is_some_and(|replicas| {
            replicas.iter().all(|replica| {
                replica.leader.is_some()
                    && replica.log_end == replicas[0].log_end
                    && replica.high_watermark == replica.log_end
            })
        })
    })
}

#[test]
fn a_fully_expired_partition_restarts_and_continues_its_offsets() {
    run(async {
        let mut cluster = Guarded(TestCluster::start(3, &[]));
        let bootstrap = cluster.0.bootstrap();
        create_short_lived_topic(&bootstrap, "brief").await;
        assert!(wait_all(&cluster.0, "brief", 20, |replica| replica
            .leader
            .is_some()));
        let last = produce(&bootstrap, "brief", "early", 5).await;
        // Every record and every epoch marker expires on every replica.
        let expired = wait_all(&cluster.0, "brief", 30, |replica| {
            replica.log_start > last && replica.log_start == replica.log_end
        });
        assert!(expired, "the whole log did not expire on every replica");
        for node in &mut cluster.0.nodes {
            assert!(node.terminate().success());
        }
        cluster.0.launch_all();
        // The partition gets a leader again and continues above its old offsets.
        let again = produce(&bootstrap, "brief", "after", 1).await;
        assert!(again > last, "offset {again} reused (old last {last})");
        assert!(
            fully_replicated(&cluster.0, "brief"),
            "the restarted partition is not fully replicated"
        );
    });
}

#[test]
fn a_follower_that_retention_passed_starts_at_the_leaders_log_start_and_catches_up() {
    run(async {
        let mut cluster = Guarded(TestCluster::start(3, &[]));
        let bootstrap = cluster.0.bootstrap();
        create_short_lived_topic(&bootstrap, "passed").await;
        assert!(wait_all(&cluster.0, "passed", 20, |replica| replica
            .leader
            .is_some()));
        produce(&bootstrap, "passed", "before", 3).await;
        assert!(fully_replicated(&cluster.0, "passed"));
        let leader = local_replica(&cluster.0, 1, "passed")
            .and_then(|replica| replica.leader)
            .expect("a leader")
            .0;
        let follower = (1..=3).find(|&id| id != leader).expect("a follower");
        let follower_end = local_replica(&cluster.0, follower, "passed")
            .expect("the follower's replica")
            .log_end;
        assert!(cluster.0.node_mut(follower).terminate().success());
        // While it is down, the others take more records and retention passes its log end.
        let last = produce(&bootstrap, "passed", "while-down", 5).await;
        let passed = eventually(Duration::from_secs(30), || {
            local_replica(&cluster.0, leader, "passed")
                .is_some_and(|replica| replica.log_start > follower_end)
        });
        assert!(
            passed,
            "retention did not pass the follower's log end {follower_end}"
        );
        cluster.0.node_mut(follower).launch();
        cluster.0.node_mut(follower).wait_ready();
        // Its metadata comes back from `__meta` a moment after it is ready.
        assert!(eventually(Duration::from_secs(20), || {
            local_replica(&cluster.0, follower, "passed").is_some()
        }));
        let after = produce(&bootstrap, "passed", "after", 1).await;
        assert!(after > last);
        assert!(
            fully_replicated(&cluster.0, "passed"),
            "the restarted follower did not catch up"
        );
        let replica = local_replica(&cluster.0, follower, "passed").unwrap();
        assert!(replica.log_end > after, "{replica:?}");
        assert!(replica.log_start > follower_end, "{replica:?}");
    });
}
