//! `AlterTopic` against real `cairn node` processes: three nodes on 127.0.0.1 with the test
//! preset (retention runs every 200 ms).
//!
//! - Partitions added to a replicated topic get replicas, leaders and records on every node,
//!   and survive a node's restart (it replays `AddPartitions` from `__meta`).
//! - Partitions never shrink, unknown configs and bad values are refused with typed errors,
//!   and nothing changes.
//! - A retention set on a live topic takes effect on its running replicas; removing it
//!   returns the topic to the node's default (keep forever here).

mod support;

use cairn_client::{Admin, ApiError, ClientConfig, ClientError, ConfigChange, TopicConfig};
use cairn_protocol::messages::{DescribeTopicRequest, PartitionDescription};
use cairn_protocol::{Offset, Request, Response};
use std::time::Duration;
use support::cluster::TestCluster;
use support::eventually;

fn client_config(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap)
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
}

/// What one node reports for every partition of `topic` (its own replicas' positions).
fn described(cluster: &TestCluster, node_id: u32, topic: &str) -> Vec<PartitionDescription> {
    match cluster
        .node(node_id)
        .wire()
        .call(Request::DescribeTopic(DescribeTopicRequest {
            name: topic.to_string(),
        })) {
        Ok(Response::DescribeTopic(response)) => response.partitions,
        other => panic!("describe {topic} on node {node_id}: {other:?}"),
    }
}

fn change(key: &str, value: Option<&str>) -> ConfigChange {
    ConfigChange {
        key: key.into(),
        value: value.map(Into::into),
    }
}

#[test]
fn partitions_are_added_and_configs_changed_on_a_live_replicated_topic() {
    let mut cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = Admin::new(client_config(&bootstrap)).unwrap();
    let topic = "orders";
    runtime
        .block_on(admin.create_topic(topic, 1, Some(3), TopicConfig::default()))
        .unwrap();
    // The node answering may not lead the partition: any leader's answer will do.
    let produce_to = |partition: u32, value: &str| {
        assert!(
            eventually(Duration::from_secs(20), || {
                let leader = described(&cluster, 1, topic)[partition as usize].leader;
                let Some(leader) = leader else { return false };
                cluster
                    .node(leader.0)
                    .wire()
                    .produce(topic, partition, &[value.as_bytes()])
                    .is_ok()
            }),
            "{value} was not produced to partition {partition}"
        );
    };
    produce_to(0, "before");

    // 1 -> 3 partitions: every node learns them, each gets a leader and takes records.
    let grown = runtime
        .block_on(admin.alter_topic(topic, Some(3), Vec::new()))
        .unwrap();
    assert_eq!(grown.partitions.len(), 3);
    for node in 1..=3 {
        assert!(
            eventually(Duration::from_secs(20), || {
                let partitions = described(&cluster, node, topic);
                partitions.len() == 3 && partitions.iter().all(|p| p.leader.is_some())
            }),
            "node {node} does not see 3 led partitions: {:?}",
            described(&cluster, node, topic)
        );
    }
    produce_to(2, "in the new partition");
    // Replicated: every node's own replica of partition 2 reaches the record (rf 3 on 3).
    for node in 1..=3 {
        assert!(
            eventually(Duration::from_secs(20), || {
                described(&cluster, node, topic)[2].high_watermark >= Offset(2)
            }),
            "node {node}'s replica of partition 2 did not catch up"
        );
    }

    // Refusals change nothing.
    let refused = runtime.block_on(admin.alter_topic(topic, Some(2), Vec::new()));
    assert!(
        matches!(&refused, Err(ClientError::Api(ApiError::InvalidTopicConfig { reason })) if reason.contains("never removed")),
        "{refused:?}"
    );
    for bad in [
        change("cleanup.policy", Some("compacted")),
        change("min.compaction.lag.ms", Some("-5")),
        change("retention.ms", Some("soon")),
        change("retention.ms", Some("0")),
    ] {
        let refused = runtime.block_on(admin.alter_topic(topic, None, vec![bad.clone()]));
        assert!(
            matches!(
                refused,
                Err(ClientError::Api(ApiError::InvalidTopicConfig { .. }))
            ),
            "{bad:?}: {refused:?}"
        );
    }
    let unknown = runtime.block_on(admin.alter_topic("nope", Some(2), Vec::new()));
    assert!(
        matches!(
            unknown,
            Err(ClientError::Api(ApiError::UnknownTopic { .. }))
        ),
        "{unknown:?}"
    );
    for node in 1..=3 {
        assert_eq!(described(&cluster, node, topic).len(), 3);
    }

    // A restarted node replays the added partitions and serves its replica of them.
    cluster.node_mut(3).kill();
    cluster.node_mut(3).restart();
    assert!(
        eventually(Duration::from_secs(30), || {
            let partitions = described(&cluster, 3, topic);
            partitions.len() == 3 && partitions[2].high_watermark >= Offset(2)
        }),
        "the restarted node lost the added partition: {:?}",
        described(&cluster, 3, topic)
    );

    // Retention set on the live topic: its running replicas drop expired records.
    runtime
        .block_on(admin.alter_topic(topic, None, vec![change("retention.ms", Some("300"))]))
        .unwrap();
    // Every node learns the change from `__meta` (the one answering may lag a moment).
    let config_is = |want: Option<u64>| {
        eventually(Duration::from_secs(10), || {
            runtime
                .block_on(admin.describe_topic(topic))
                .is_ok_and(|described| described.config.retention_ms == want)
        })
    };
    assert!(config_is(Some(300)), "retention.ms=300 was not applied");
    assert!(
        eventually(Duration::from_secs(30), || {
            (1..=3).all(|node| described(&cluster, node, topic)[2].log_start >= Offset(2))
        }),
        "retention did not remove the expired records: {:?}",
        (1..=3)
            .map(|node| described(&cluster, node, topic))
            .collect::<Vec<_>>()
    );
    runtime
        .block_on(admin.alter_topic(topic, None, vec![change("retention.ms", None)]))
        .unwrap();
    assert!(
        config_is(None),
        "retention.ms was not returned to the default"
    );
}
