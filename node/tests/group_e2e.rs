//! Consumer groups end to end: real `cairn node` process, the Rust client's `subscribe`.
//! Two members of one group split six partitions with no partition read by both, commit,
//! leave; a new member resumes at the commits and reads only what came after.

mod support;

use cairn_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Producer,
    ProducerConfig, Record, TopicConfig,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::TestNode;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn client_config(node: &TestNode) -> ClientConfig {
    ClientConfig::new(&node.address().to_string())
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
}

fn member(node: &TestNode) -> Consumer {
    Consumer::new(
        client_config(node),
        ConsumerConfig::default()
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(100))
            .session_timeout(Duration::from_secs(10)),
    )
    .unwrap()
}

async fn produce(node: &TestNode, first: u32, count: u32) {
    let producer = Producer::new(client_config(node), ProducerConfig::default())
        .await
        .unwrap();
    for i in first..first + count {
        drop(
            producer
                .send_to("orders", i % 6, Record::new(format!("v{i}")))
                .await
                .unwrap(),
        );
    }
    producer.close().await.unwrap();
}

fn partitions(consumer: &Consumer) -> BTreeSet<u32> {
    consumer
        .assignment()
        .iter()
        .map(|partition| partition.partition)
        .collect()
}

fn values(records: &[ConsumerRecord]) -> BTreeSet<String> {
    records
        .iter()
        .map(|record| {
            String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_six_partitions_and_a_new_member_resumes_at_the_commits() {
    let node = TestNode::start();
    tokio::time::timeout(TEST_TIMEOUT, async {
        Admin::new(client_config(&node))
            .unwrap()
            .create_topic("orders", 6, None, TopicConfig::default())
            .await
            .unwrap();
        produce(&node, 0, 60).await;

        let mut first = member(&node);
        let mut second = member(&node);
        first.subscribe(&["orders"], "g").await.unwrap();
        second.subscribe(&["orders"], "g").await.unwrap();
        let mut read_first = Vec::new();
        let mut read_second = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            read_first.extend(first.poll(Duration::from_millis(100)).await.unwrap());
            read_second.extend(second.poll(Duration::from_millis(100)).await.unwrap());
            let (a, b) = (partitions(&first), partitions(&second));
            // One partition is never owned by both members at once.
            assert!(a.is_disjoint(&b), "{a:?} and {b:?}");
            let all: BTreeSet<String> = values(&read_first)
                .union(&values(&read_second))
                .cloned()
                .collect();
            if a.len() == 3 && b.len() == 3 && all.len() == 60 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not balanced in 60 s: {a:?} {b:?}, {} values",
                all.len()
            );
        }
        first.commit_sync().await.unwrap();
        second.commit_sync().await.unwrap();
        first.close().await.unwrap();
        second.close().await.unwrap();

        // Committed: a new member starts after the 60 records.
        produce(&node, 60, 6).await;
        let mut third = member(&node);
        third.subscribe(&["orders"], "g").await.unwrap();
        let mut read_third = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_third.len() < 6 {
            read_third.extend(third.poll(Duration::from_millis(200)).await.unwrap());
            assert!(Instant::now() < deadline, "read {} of 6", read_third.len());
        }
        // A little longer: nothing older shows up.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            read_third.extend(third.poll(Duration::from_millis(100)).await.unwrap());
        }
        let expected: BTreeSet<String> = (60..66).map(|i| format!("v{i}")).collect();
        assert_eq!(values(&read_third), expected);
        assert_eq!(read_third.len(), 6);
        third.close().await.unwrap();
    })
    .await
    .expect("the test finishes in time");
}
