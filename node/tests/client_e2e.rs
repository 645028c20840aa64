//! End-to-end tests of the Rust client and the `cairn` CLI against a real `cairn node`
//! process: produce and consume at volume, partitioning, seeks, durability of acknowledged
//! records across SIGKILL, producer backpressure against a stopped node, and the CLI tour.

mod support;

use cairn_client::partitioner::partition_for_key;
use cairn_client::{
    Acks, Admin, ApiError, AutoOffsetReset, ClientConfig, ClientError, Consumer, ConsumerConfig,
    ConsumerRecord, Offset, Producer, ProducerConfig, Record, SeekTo, TopicConfig,
};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TestNode;

/// Every test is bounded: a test that hangs fails instead.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn client_config(node: &TestNode) -> ClientConfig {
    ClientConfig::new(&node.address().to_string())
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(200))
}

async fn create_topic(node: &TestNode, topic: &str, partitions: u32) {
    Admin::new(client_config(node))
        .unwrap()
        .create_topic(topic, partitions, None, TopicConfig::default())
        .await
        .unwrap();
}

fn earliest_consumer(node: &TestNode) -> Consumer {
    Consumer::new(
        client_config(node),
        ConsumerConfig::default()
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(100)),
    )
    .unwrap()
}

/// Polls until `count` records arrived or nothing new came for a few seconds.
async fn consume(consumer: &mut Consumer, count: usize) -> Vec<ConsumerRecord> {
    let mut records = Vec::with_capacity(count);
    let mut last_progress = Instant::now();
    while records.len() < count && last_progress.elapsed() < Duration::from_secs(10) {
        let batch = consumer.poll(Duration::from_millis(500)).await.unwrap();
        if !batch.is_empty() {
            last_progress = Instant::now();
        }
        records.extend(batch);
    }
    records
}

async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("the test finishes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keyed_records_round_trip_by_key_and_in_order() {
    let node = TestNode::start();
    bounded(async {
        create_topic(&node, "keyed", 3).await;
        let producer = Producer::new(client_config(&node), ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..10_000u32 {
            let key = format!("key-{}", i % 100);
            let record = Record::new(i.to_string()).with_key(key);
            deliveries.push(producer.send("keyed", record).await.unwrap());
        }
        producer.flush().await.unwrap();
        let mut acknowledged = HashMap::new();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let metadata = delivery.await.unwrap();
            acknowledged.insert(i as u32, (metadata.partition, metadata.offset.unwrap()));
        }

        let mut consumer = earliest_consumer(&node);
        consumer.assign_topic("keyed").await.unwrap();
        let records = consume(&mut consumer, 10_000).await;
        assert_eq!(records.len(), 10_000);
        let mut seen = HashSet::new();
        let mut last_per_key: HashMap<Vec<u8>, (u32, Offset, u32)> = HashMap::new();
        for record in &records {
            let value: u32 = std::str::from_utf8(record.value.as_deref().unwrap_or_default())
                .unwrap()
                .parse()
                .unwrap();
            assert!(seen.insert(value), "value {value} read twice");
            assert_eq!(
                acknowledged[&value],
                (record.partition, record.offset),
                "read where the ack said"
            );
            let key = record.key.as_ref().expect("keyed").to_vec();
            assert_eq!(partition_for_key(&key, 3), record.partition);
            if let Some((partition, offset, previous)) =
                last_per_key.insert(key, (record.partition, record.offset, value))
            {
                assert_eq!(partition, record.partition, "one key, one partition");
                assert!(
                    offset < record.offset && previous < value,
                    "in order per key"
                );
            }
        }
        producer.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_spread_over_all_partitions() {
    let node = TestNode::start();
    bounded(async {
        create_topic(&node, "spread", 3).await;
        let config = ProducerConfig::default().batch_bytes_max(8 * 1024);
        let producer = Producer::new(client_config(&node), config).await.unwrap();
        let mut per_partition = [0usize; 3];
        let mut deliveries = Vec::new();
        for _ in 0..600 {
            deliveries.push(
                producer
                    .send("spread", Record::new(vec![b'x'; 1024]))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        for delivery in deliveries {
            per_partition[delivery.await.unwrap().partition as usize] += 1;
        }
        for (partition, count) in per_partition.iter().enumerate() {
            assert!(*count >= 50, "partition {partition} got {count} of 600");
        }
        let described = Admin::new(client_config(&node))
            .unwrap()
            .describe_topic("spread")
            .await
            .unwrap();
        for partition in described.partitions {
            assert!(partition.high_watermark > Offset(0));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_to_earliest_latest_offset_and_timestamp() {
    let node = TestNode::start();
    bounded(async {
        create_topic(&node, "seek", 1).await;
        let producer = Producer::new(client_config(&node), ProducerConfig::default())
            .await
            .unwrap();
        let base_ms = 1_700_000_000_000i64;
        let mut offsets = Vec::new();
        for i in 0..100 {
            let record = Record::new(format!("v{i}")).with_timestamp_ms(base_ms + i * 10);
            offsets.push(producer.send("seek", record).await.unwrap());
        }
        producer.flush().await.unwrap();
        let mut by_index = Vec::new();
        for delivery in offsets {
            by_index.push(delivery.await.unwrap().offset.unwrap());
        }

        let mut consumer = earliest_consumer(&node);
        consumer.assign(&[("seek", 0)]).await.unwrap();
        let first = consumer.seek("seek", 0, SeekTo::Earliest).await.unwrap();
        assert!(first <= by_index[0]);
        let records = consume(&mut consumer, 1).await;
        assert_eq!(records[0].value.as_deref(), Some(&b"v0"[..]));

        consumer
            .seek("seek", 0, SeekTo::Offset(by_index[42]))
            .await
            .unwrap();
        let records = consume(&mut consumer, 1).await;
        assert_eq!(records[0].offset, by_index[42]);
        assert_eq!(records[0].value.as_deref(), Some(&b"v42"[..]));
        assert_eq!(records[0].timestamp_ms, base_ms + 420);

        let found = consumer
            .seek("seek", 0, SeekTo::Timestamp(base_ms + 605))
            .await
            .unwrap();
        assert_eq!(
            found, by_index[61],
            "first record at or after the timestamp"
        );
        assert_eq!(
            consume(&mut consumer, 1).await[0].value.as_deref(),
            Some(&b"v61"[..])
        );

        let latest = consumer.seek("seek", 0, SeekTo::Latest).await.unwrap();
        assert_eq!(latest, by_index[99].plus(1));
        assert!(consumer
            .poll(Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty());
        producer
            .send_and_wait("seek", Record::new("after"))
            .await
            .unwrap();
        let records = consume(&mut consumer, 1).await;
        assert_eq!(records[0].value.as_deref(), Some(&b"after"[..]));
        assert_eq!(
            consumer.position("seek", 0),
            Some(records[0].offset.plus(1))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_exactly_once() {
    let mut node = TestNode::start();
    let topic = "durable";
    let acknowledged_before = bounded(async {
        create_topic(&node, topic, 2).await;
        let producer = Producer::new(client_config(&node), ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..3_000u32 {
            let record = Record::new(format!("before-{i}")).with_key(i.to_string());
            deliveries.push(producer.send(topic, record).await.unwrap());
        }
        producer.flush().await.unwrap();
        let mut acknowledged = Vec::new();
        for delivery in deliveries {
            let metadata = delivery.await.unwrap();
            acknowledged.push((metadata.partition, metadata.offset.unwrap()));
        }
        acknowledged
    })
    .await;

    node.kill();
    node.restart();

    bounded(async {
        // Offsets continue after the restart: new records come after every old one.
        let producer = Producer::new(client_config(&node), ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..1_000u32 {
            let record = Record::new(format!("after-{i}")).with_key(i.to_string());
            deliveries.push(producer.send(topic, record).await.unwrap());
        }
        producer.flush().await.unwrap();
        let mut last_before = [Offset(0); 2];
        for (partition, offset) in &acknowledged_before {
            let slot = &mut last_before[*partition as usize];
            *slot = (*slot).max(*offset);
        }
        for delivery in deliveries {
            let metadata = delivery.await.unwrap();
            assert!(metadata.offset.unwrap() > last_before[metadata.partition as usize]);
        }

        let mut consumer = earliest_consumer(&node);
        consumer.assign_topic(topic).await.unwrap();
        let records = consume(&mut consumer, 4_000).await;
        assert_eq!(records.len(), 4_000, "every acknowledged record, once");
        let mut values = HashSet::new();
        let mut positions = HashMap::new();
        for record in &records {
            let value =
                String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap();
            assert!(values.insert(value.clone()), "{value} read twice");
            positions.insert((record.partition, record.offset), value);
        }
        for (i, (partition, offset)) in acknowledged_before.iter().enumerate() {
            assert_eq!(
                positions.get(&(*partition, *offset)).map(String::as_str),
                Some(format!("before-{i}").as_str()),
                "acknowledged record {i} at {partition}/{offset}"
            );
        }
        // Offsets are gap-free apart from the leaders' epoch markers (control batches the
        // consumer skips): at most one per leader epoch.
        let described = Admin::new(client_config(&node))
            .unwrap()
            .describe_topic(topic)
            .await
            .unwrap();
        for partition in described.partitions {
            let read = records
                .iter()
                .filter(|record| record.partition == partition.partition)
                .count() as u64;
            let span = partition.high_watermark.0 - partition.log_start.0;
            assert!(
                span - read <= partition.leader_epoch.0,
                "partition {}: {span} offsets hold {read} records at epoch {}",
                partition.partition,
                partition.leader_epoch
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_rides_out_a_node_restart_and_loses_nothing_acknowledged() {
    let mut node = TestNode::start();
    bounded(async {
        create_topic(&node, "restart", 2).await;
        let producer = Producer::new(client_config(&node), ProducerConfig::default())
            .await
            .unwrap();
        let total = 6_000u32;
        let mut deliveries = Vec::new();
        for i in 0..total {
            if i == total / 3 {
                // Kill with batches in flight; the producer must reconnect and retry them,
                // and (idempotent by default) a retried batch that was written before the
                // kill is recognised by the restarted node and not written twice.
                tokio::task::block_in_place(|| {
                    node.kill();
                    node.restart();
                });
            }
            let record = Record::new(format!("r-{i}")).with_key(i.to_string());
            deliveries.push(producer.send("restart", record).await.unwrap());
        }
        producer.flush().await.unwrap();
        let mut acknowledged = Vec::new();
        for delivery in deliveries {
            let metadata = delivery.await.expect("retried until acknowledged");
            acknowledged.push((metadata.partition, metadata.offset.unwrap()));
        }
        let mut consumer = earliest_consumer(&node);
        consumer.assign_topic("restart").await.unwrap();
        // Read until every acknowledged position was seen (or no progress for a while), then
        // check nothing else was stored: no duplicate, no reordering within a partition.
        let mut by_position: HashMap<(u32, Offset), String> = HashMap::new();
        let mut reads: Vec<(u32, String)> = Vec::new();
        let mut last_progress = Instant::now();
        while !acknowledged
            .iter()
            .all(|position| by_position.contains_key(position))
            && last_progress.elapsed() < Duration::from_secs(10)
        {
            let batch = consumer.poll(Duration::from_millis(500)).await.unwrap();
            if !batch.is_empty() {
                last_progress = Instant::now();
            }
            for record in batch {
                let value = String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec())
                    .unwrap();
                by_position.insert((record.partition, record.offset), value.clone());
                reads.push((record.partition, value));
            }
        }
        // Anything stored after the last acknowledged record would show up in this poll.
        for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            reads.push((
                record.partition,
                String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap(),
            ));
        }
        assert_eq!(
            reads.len(),
            total as usize,
            "every record stored exactly once"
        );
        let mut last_per_partition: HashMap<u32, u32> = HashMap::new();
        for (partition, value) in &reads {
            let index: u32 = value.trim_start_matches("r-").parse().unwrap();
            if let Some(previous) = last_per_partition.insert(*partition, index) {
                assert!(
                    previous < index,
                    "partition {partition}: r-{index} stored after r-{previous}"
                );
            }
        }
        for (i, position) in acknowledged.iter().enumerate() {
            assert_eq!(
                by_position.get(position).map(String::as_str),
                Some(format!("r-{i}").as_str()),
                "acknowledged record {i} at {position:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_refusals_surface_per_record_and_out_of_range_positions_reset() {
    let node = TestNode::start();
    bounded(async {
        create_topic(&node, "limits", 1).await;
        let producer = Producer::new(client_config(&node), ProducerConfig::default())
            .await
            .unwrap();
        // The test preset allows records of at most 16 KiB.
        let too_big = producer
            .send("limits", Record::new(vec![b'x'; 64 * 1024]))
            .await
            .unwrap();
        let error = too_big.await.unwrap_err();
        assert!(!error.is_retriable(), "{error:?}");
        assert!(
            matches!(
                error.api_error(),
                Some(ApiError::RecordTooLarge { .. } | ApiError::BatchTooLarge { .. })
            ),
            "{error:?}"
        );
        let fine = producer
            .send_and_wait("limits", Record::new("fine"))
            .await
            .unwrap();
        let unknown = producer
            .send("missing", Record::new("v"))
            .await
            .unwrap_err();
        assert!(
            matches!(unknown, ClientError::Api(ApiError::UnknownTopic { .. })),
            "{unknown:?}"
        );

        let mut consumer = earliest_consumer(&node);
        consumer.assign(&[("limits", 0)]).await.unwrap();
        consumer
            .seek("limits", 0, SeekTo::Offset(Offset(1_000_000)))
            .await
            .unwrap();
        let records = consume(&mut consumer, 1).await;
        assert_eq!(records.len(), 1, "reset to earliest after OffsetOutOfRange");
        assert_eq!(records[0].value.as_deref(), Some(&b"fine"[..]));
        assert_eq!(Some(records[0].offset), fine.offset);
    })
    .await;
}

/// Sends SIGCONT when dropped, so a failing assertion never leaves a stopped node behind.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_waits_while_the_node_is_stopped_and_completes_after() {
    let node = TestNode::start();
    bounded(async {
        create_topic(&node, "paused", 1).await;
        let buffer_bytes_max = 256 * 1024;
        let config = ProducerConfig::default()
            .buffer_bytes_max(buffer_bytes_max)
            .batch_bytes_max(32 * 1024);
        let producer = Producer::new(client_config(&node), config).await.unwrap();
        producer
            .send_and_wait("paused", Record::new("warm-up"))
            .await
            .unwrap();

        signal(node.pid(), "STOP");
        let resume = Resume(node.pid());
        let sent = Arc::new(AtomicUsize::new(0));
        let total = 2_000;
        let sender = {
            let producer = producer.clone();
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let mut deliveries = Vec::new();
                for i in 0..total {
                    let record = Record::new(format!("{i:01024}"));
                    deliveries.push(producer.send("paused", record).await?);
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                let mut offsets = Vec::new();
                for delivery in deliveries {
                    offsets.push(delivery.await?.offset.unwrap());
                }
                Ok::<_, ClientError>(offsets)
            })
        };
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let stuck_at = sent.load(Ordering::SeqCst);
        assert!(stuck_at < total, "send must wait while the node is stopped");
        assert!(producer.buffered_bytes() <= buffer_bytes_max);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sent.load(Ordering::SeqCst), stuck_at, "still waiting");
        assert!(producer.buffered_bytes() <= buffer_bytes_max);

        drop(resume);
        let offsets = tokio::time::timeout(Duration::from_secs(60), sender)
            .await
            .expect("sends complete after SIGCONT")
            .unwrap()
            .unwrap();
        assert_eq!(offsets.len(), total);
        assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "in order");
        producer.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leader_and_none_also_deliver() {
    let node = TestNode::start();
    bounded(async {
        create_topic(&node, "acks", 1).await;
        for acks in [Acks::Leader, Acks::None] {
            let config = ProducerConfig::default().acks(acks);
            let producer = Producer::new(client_config(&node), config).await.unwrap();
            let metadata = producer
                .send_and_wait("acks", Record::new(format!("{acks:?}")))
                .await
                .unwrap();
            assert_eq!(metadata.offset.is_some(), acks == Acks::Leader);
            producer.close().await.unwrap();
        }
        let mut consumer = earliest_consumer(&node);
        consumer.assign_topic("acks").await.unwrap();
        let records = consume(&mut consumer, 2).await;
        let values: Vec<&[u8]> = records
            .iter()
            .map(|record| record.value.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(values, vec![&b"Leader"[..], &b"None"[..]]);
    })
    .await;
}

fn cairn(node: &TestNode) -> Command {
    let mut command = Command::new(support::cairn_binary());
    command.env("CAIRN_BOOTSTRAP", node.address().to_string());
    command
}

/// Runs the CLI with a time bound; returns (exit code, stdout, stderr).
fn run_cli(mut command: Command, stdin: Option<std::fs::File>) -> (i32, String, String) {
    command
        .stdin(stdin.map_or(Stdio::null(), Stdio::from))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("cairn starts");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => {
            let output = output.expect("cairn runs");
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("cairn {command:?} did not finish within 60 s");
        }
    }
}

#[test]
fn cli_tour_create_produce_consume_describe() {
    let node = TestNode::start();
    let mut create = cairn(&node);
    create.args(["topic", "create", "tour", "--partitions", "3"]);
    let (code, stdout, stderr) = run_cli(create, None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("created topic 'tour'"), "{stdout}");

    let mut list = cairn(&node);
    list.args(["topic", "list"]);
    let (code, stdout, _) = run_cli(list, None);
    assert_eq!(code, 0);
    assert!(stdout.lines().any(|line| line == "tour"), "{stdout}");

    let directory = tempfile::tempdir().unwrap();
    let input_path = directory.path().join("input.txt");
    let mut input = std::fs::File::create(&input_path).unwrap();
    let mut expected = Vec::new();
    for i in 0..10_000 {
        let line = format!("key-{}:value-{i}", i % 50);
        writeln!(input, "{line}").unwrap();
        expected.push(line);
    }
    drop(input);
    let mut produce = cairn(&node);
    produce.args(["produce", "tour", "--key-separator", ":"]);
    let (code, _, stderr) = run_cli(produce, Some(std::fs::File::open(&input_path).unwrap()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("produced 10000 records"), "{stderr}");

    let mut consume = cairn(&node);
    consume.args([
        "consume",
        "tour",
        "--from-beginning",
        "--max-messages",
        "10000",
        "--format",
        "%k:%v",
    ]);
    let (code, stdout, stderr) = run_cli(consume, None);
    assert_eq!(code, 0, "{stderr}");
    let mut got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), 10_000);
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected);

    let mut one_partition = cairn(&node);
    one_partition.args([
        "consume",
        "tour",
        "--partition",
        "1",
        "--from-beginning",
        "--idle-timeout-ms",
        "1000",
        "--format",
        "%p %o %k",
    ]);
    let (code, stdout, stderr) = run_cli(one_partition, None);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.is_empty());
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "1");
        assert_eq!(partition_for_key(fields[2].as_bytes(), 3), 1, "{line}");
    }

    let mut describe = cairn(&node);
    describe.args(["topic", "describe", "tour"]);
    let (code, stdout, stderr) = run_cli(describe, None);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 5, "{stdout}");
    assert!(rows[1].starts_with("PARTITION"), "{stdout}");

    // Piped into `head`: the consumer sees a closed stdout and ends quietly.
    let mut piped = Command::new("bash");
    piped.arg("-c").arg(format!(
        "set -o pipefail; '{}' consume tour --from-beginning --idle-timeout-ms 3000 2>'{}' | head -n 3",
        support::cairn_binary().display(),
        directory.path().join("stderr.txt").display()
    ));
    piped.env("CAIRN_BOOTSTRAP", node.address().to_string());
    let (code, stdout, _) = run_cli(piped, None);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 3);
    let stderr = std::fs::read_to_string(directory.path().join("stderr.txt")).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Any other stdout failure is an error.
    let mut full = Command::new("bash");
    full.arg("-c").arg(format!(
        "'{}' consume tour --from-beginning --max-messages 10 >/dev/full",
        support::cairn_binary().display()
    ));
    full.env("CAIRN_BOOTSTRAP", node.address().to_string());
    let (code, _, stderr) = run_cli(full, None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("writing to stdout"), "{stderr}");

    let mut unknown = cairn(&node);
    unknown.args(["consume", "nope", "--max-messages", "1"]);
    let (code, _, stderr) = run_cli(unknown, None);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown topic 'nope'"), "{stderr}");
    let mut unknown = cairn(&node);
    unknown.args(["produce", "nope"]);
    let (code, _, stderr) = run_cli(unknown, Some(std::fs::File::open(&input_path).unwrap()));
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown topic 'nope'"), "{stderr}");

    let mut delete = cairn(&node);
    delete.args(["topic", "delete", "tour"]);
    let (code, _, stderr) = run_cli(delete, None);
    assert_eq!(code, 0, "{stderr}");
}
