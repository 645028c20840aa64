//! The Kafka driver against a real `cairn node` process with its Kafka listener on: every
//! record librdkafka reports delivered is in the topic, read back with Cairn's own client
//! (not the driver's consumer), and the driver's consumer saw them all too.
//!
//! The `cairn` binary comes from this build (`target/debug/cairn`, which `cargo test
//! --workspace` builds first; with `-p cairn-benches` alone, build `-p cairn-node` before) or
//! from `CAIRN_BIN`.

use cairn_benches::kafka_driver::{self, Target};
use cairn_benches::node_process::LocalCluster;
use cairn_benches::workload::Workload;
use cairn_client::{AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn cairn_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(path);
    }
    // target/debug/deps/kafka_driver-HASH -> target/debug/cairn
    let me = std::env::current_exe().expect("the test's own path");
    let binary = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/PROFILE/deps")
        .join("cairn");
    assert!(
        binary.exists(),
        "{} is missing: build it first (cargo build -p cairn-node) or set CAIRN_BIN",
        binary.display()
    );
    binary
}

const WORKLOAD: &str = r#"
    name = "kafka-driver-test"
    nodes = 1
    replication_factor = 1
    partitions = 3
    record_bytes = 200
    producers = 2
    consumers = 1
    rate = 1000
    acks = "all"
    warmup_s = 0
    duration_s = 2
    [kafka]
    in_flight_max = 64
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_the_kafka_driver_produces_is_readable() {
    let workload = Workload::parse(WORKLOAD).unwrap();
    let cluster = LocalCluster::start_formed_with(
        Some(cairn_binary()),
        workload.nodes,
        vec!["--preset=test".to_string()],
        true,
    )
    .await
    .unwrap();
    let (bootstrap, pids) = (cluster.kafka_bootstrap(), cluster.pids());
    assert!(!bootstrap.is_empty());
    let outcome = kafka_driver::run_on(
        &workload,
        workload.rate,
        Target {
            system: "test",
            durability: "test",
            bootstrap: &bootstrap,
            pids: &pids,
        },
    )
    .await
    .unwrap();
    // 2 s at 1,000 records/s, however slowly the machine went: all sent, all acknowledged,
    // all consumed by the driver's own consumer.
    assert!(outcome.records_sent > 0, "{outcome:?}");
    assert_eq!(outcome.records_sent, outcome.records_acknowledged);
    assert!(
        outcome.records_consumed >= outcome.records_acknowledged,
        "{outcome:?}"
    );
    assert_eq!(
        outcome.publish_latency.samples,
        outcome.records_acknowledged
    );

    // Read the topic back with Cairn's own client: exactly the acknowledged records, each with
    // the driver's payload size.
    let topic = format!("{}-{}", workload.name, std::process::id());
    let client = ClientConfig::new(&cluster.bootstrap()).unwrap();
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig::new()
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(100)),
    )
    .unwrap();
    let assignment: Vec<(&str, u32)> = (0..workload.partitions)
        .map(|partition| (topic.as_str(), partition))
        .collect();
    consumer.assign(&assignment).await.unwrap();
    let mut read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < outcome.records_acknowledged && Instant::now() < deadline {
        for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            assert_eq!(
                record.value.as_ref().map_or(0, |value| value.len()),
                workload.record_bytes
            );
            read += 1;
        }
    }
    // Nothing more than was acknowledged (no duplicates from retries: idempotence).
    for _ in 0..3 {
        read += consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .len() as u64;
    }
    assert_eq!(read, outcome.records_acknowledged);
    cluster.shut_down().await.unwrap();
}

#[test]
fn the_producer_asks_for_what_cairns_producer_does() {
    let workload = Workload::parse(WORKLOAD).unwrap();
    let config = kafka_driver::producer_config(&workload, "127.0.0.1:9092");
    assert_eq!(config.get("acks"), Some("all"));
    assert_eq!(config.get("enable.idempotence"), Some("true"));
    assert_eq!(config.get("linger.ms"), Some("5"));
    assert_eq!(config.get("batch.size"), Some("65536"));
    assert_eq!(config.get("compression.type"), Some("none"));
    let leader_acks =
        Workload::parse(&WORKLOAD.replace("acks = \"all\"", "acks = \"leader\"")).unwrap();
    let config = kafka_driver::producer_config(&leader_acks, "127.0.0.1:9092");
    assert_eq!(config.get("acks"), Some("1"));
    assert_eq!(config.get("enable.idempotence"), Some("false"));
}
