//! Tests of the connection, producer, consumer and admin against [`TestServer`], a tiny broker
//! speaking the real protocol over real sockets.

use crate::partitioner::partition_for_key;
use crate::test_server::TestServer;
use crate::*;
use cairn_protocol::messages::{ListTopicsRequest, ServerLimits};
use cairn_protocol::{Epoch, NodeId, Request, Response};
use std::time::{Duration, Instant};

pub(crate) fn client(server: &TestServer) -> ClientConfig {
    ClientConfig {
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(50),
        request_timeout: Duration::from_millis(2_000),
        ..ClientConfig::new(&server.address).unwrap()
    }
}

fn list_topics() -> Request {
    Request::ListTopics(ListTopicsRequest {
        include_internal: false,
    })
}

#[tokio::test]
async fn a_connection_learns_limits_and_answers_requests() {
    let server = TestServer::start().await;
    server.create_topic("t", 2);
    let connection = Connection::connect(&server.address, &client(&server))
        .await
        .unwrap();
    assert_eq!(connection.node_id(), NodeId(1));
    assert_eq!(connection.limits(), server.limits);
    // Pipelined: many requests submitted before any reply is read.
    let mut pending = Vec::new();
    for _ in 0..20 {
        pending.push(connection.submit(list_topics()).await.unwrap());
    }
    for reply in pending {
        match reply.wait().await.unwrap() {
            Response::ListTopics(reply) => assert_eq!(reply.topics.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_request_timeout_closes_the_connection_with_a_retriable_error() {
    let server = TestServer::start().await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(100),
        ..client(&server)
    };
    let connection = Connection::connect(&server.address, &config).await.unwrap();
    server.pause(true);
    let error = connection.call(list_topics()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::RequestTimeout { waited, .. } if waited == Duration::from_millis(100)),
        "{error:?}"
    );
    assert!(error.is_retriable());
    assert!(connection.is_closed());
    server.pause(false);
    // The next use opens a fresh connection.
    let reconnected = Connection::connect(&server.address, &config).await.unwrap();
    reconnected.call(list_topics()).await.unwrap();
}

#[tokio::test]
async fn a_lost_connection_fails_every_pending_request() {
    let server = TestServer::start().await;
    let connection = Connection::connect(&server.address, &client(&server))
        .await
        .unwrap();
    server.pause(true);
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(connection.submit(list_topics()).await.unwrap());
    }
    server.drop_connections();
    for reply in pending {
        let error = reply.wait().await.unwrap_err();
        assert_connection_lost(&error);
        assert!(error.is_retriable());
    }
    assert!(connection.submit(list_topics()).await.is_err());
}

fn assert_connection_lost(error: &ClientError) {
    assert!(
        matches!(error, ClientError::ConnectionLost { .. }),
        "{error:?}"
    );
}

/// A connection with two in-flight slots to a server that reads no requests for now.
async fn two_slots_to_a_paused_server() -> (TestServer, Connection) {
    let server = TestServer::start().await;
    let config = ClientConfig {
        requests_in_flight_max: 2,
        ..client(&server)
    };
    let connection = Connection::connect(&server.address, &config).await.unwrap();
    server.pause(true);
    (server, connection)
}

#[tokio::test]
async fn requests_in_flight_are_bounded_per_connection() {
    let (server, connection) = two_slots_to_a_paused_server().await;
    let first = connection.submit(list_topics()).await.unwrap();
    let second = connection.submit(list_topics()).await.unwrap();
    let third =
        tokio::time::timeout(Duration::from_millis(150), connection.submit(list_topics())).await;
    assert!(third.is_err(), "a third request must wait for a free slot");
    server.pause(false);
    first.wait().await.unwrap();
    let third = connection.submit(list_topics()).await.unwrap();
    second.wait().await.unwrap();
    third.wait().await.unwrap();
}

#[tokio::test]
async fn the_server_limit_caps_requests_in_flight() {
    let server = TestServer::start_with_limits(ServerLimits {
        frame_bytes_max: 1024 * 1024,
        batch_bytes_max: 64 * 1024,
        record_bytes_max: 32 * 1024,
        requests_in_flight_max: 1,
    })
    .await;
    let connection = Connection::connect(&server.address, &client(&server))
        .await
        .unwrap();
    server.pause(true);
    let _first = connection.submit(list_topics()).await.unwrap();
    let second =
        tokio::time::timeout(Duration::from_millis(100), connection.submit(list_topics())).await;
    assert!(second.is_err());
}

/// A callback that sends its outcome to the returned receiver, counting how often it runs.
fn reply_to_channel() -> (
    crate::connection::ReplyCallback,
    tokio::sync::mpsc::UnboundedReceiver<crate::error::Result<Response>>,
) {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    (
        Box::new(move |outcome| {
            sender.send(outcome).expect("receiver alive");
        }),
        receiver,
    )
}

async fn outcome_of(
    receiver: &mut tokio::sync::mpsc::UnboundedReceiver<crate::error::Result<Response>>,
) -> crate::error::Result<Response> {
    let outcome = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
        .await
        .expect("the callback ran")
        .expect("the callback ran once");
    // It ran once and was dropped: the channel's only sender is gone.
    assert!(receiver.recv().await.is_none(), "the callback ran twice");
    outcome
}

/// Submits `count` requests with callbacks, each queued at once; returns their outcomes' ends.
async fn submit_with_callbacks(
    connection: &Connection,
    count: usize,
) -> Vec<tokio::sync::mpsc::UnboundedReceiver<crate::error::Result<Response>>> {
    let mut receivers = Vec::new();
    for _ in 0..count {
        let (callback, receiver) = reply_to_channel();
        let timeout = Duration::from_secs(5);
        assert!(
            connection
                .submit_with_callback(list_topics(), timeout, callback)
                .await
        );
        receivers.push(receiver);
    }
    receivers
}

#[tokio::test]
async fn callbacks_take_pipelined_replies_each_once() {
    let server = TestServer::start().await;
    server.create_topic("t", 2);
    let connection = Connection::connect(&server.address, &client(&server))
        .await
        .unwrap();
    for mut receiver in submit_with_callbacks(&connection, 20).await {
        match outcome_of(&mut receiver).await.unwrap() {
            Response::ListTopics(reply) => assert_eq!(reply.topics.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!connection.is_closed());
}

#[tokio::test]
async fn a_callback_past_its_deadline_gets_a_timeout_and_closes_the_connection() {
    let server = TestServer::start().await;
    let connection = Connection::connect(&server.address, &client(&server))
        .await
        .unwrap();
    server.pause(true);
    // A later deadline first: the watchdog must still wake for the earlier one.
    let (late, mut late_outcome) = reply_to_channel();
    assert!(
        connection
            .submit_with_callback(list_topics(), Duration::from_secs(60), late)
            .await
    );
    // The watchdog runs meanwhile and goes to sleep until the late deadline.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (early, mut early_outcome) = reply_to_channel();
    let started = Instant::now();
    assert!(
        connection
            .submit_with_callback(list_topics(), Duration::from_millis(100), early)
            .await
    );
    let error = outcome_of(&mut early_outcome).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(
        matches!(error, ClientError::RequestTimeout { waited, .. } if waited == Duration::from_millis(100)),
        "{error:?}"
    );
    assert!(error.is_retriable());
    assert!(connection.is_closed());
    // The other request ends with the connection, long before its own deadline.
    let error = outcome_of(&mut late_outcome).await.unwrap_err();
    assert_connection_lost(&error);
}

#[tokio::test]
async fn callbacks_fail_when_the_connection_is_lost_or_already_closed() {
    let (server, connection) = two_slots_to_a_paused_server().await;
    let receivers = submit_with_callbacks(&connection, 2).await;
    // Both slots are held until the callbacks ran: a third request waits.
    let (callback, _third) = reply_to_channel();
    let third = tokio::time::timeout(
        Duration::from_millis(150),
        connection.submit_with_callback(list_topics(), Duration::from_secs(5), callback),
    )
    .await;
    assert!(third.is_err(), "a third request must wait for a free slot");
    server.drop_connections();
    for mut receiver in receivers {
        let error = outcome_of(&mut receiver).await.unwrap_err();
        assert_connection_lost(&error);
    }
    // Closed: refused at once, and the callback has the reason before the call returns.
    let (callback, mut refused) = reply_to_channel();
    assert!(
        !connection
            .submit_with_callback(list_topics(), Duration::from_secs(5), callback)
            .await
    );
    let error = refused
        .try_recv()
        .expect("ran before returning")
        .unwrap_err();
    assert_connection_lost(&error);
}

async fn producer(server: &TestServer, config: ProducerConfig) -> Producer {
    Producer::new(client(server), config).await.unwrap()
}

#[tokio::test]
async fn keyed_records_land_on_the_murmur2_partition_in_order() {
    let server = TestServer::start().await;
    server.create_topic("t", 3);
    let producer = producer(&server, ProducerConfig::default()).await;
    let mut deliveries = Vec::new();
    for i in 0..1000u32 {
        let key = format!("key-{}", i % 10);
        let record = Record::new(i.to_string()).with_key(key.clone());
        deliveries.push((key, producer.send("t", record).await.unwrap()));
    }
    producer.flush().await.unwrap();
    for (key, delivery) in deliveries {
        let expected = partition_for_key(key.as_bytes(), 3);
        assert_eq!(delivery.partition(), expected);
        let metadata = delivery.await.unwrap();
        assert_eq!(metadata.partition, expected);
        assert!(metadata.offset.is_some());
    }
    let mut total = 0;
    for partition in 0..3 {
        let records = server.records("t", partition);
        total += records.len();
        let mut last_per_key = std::collections::HashMap::new();
        for (offset, key, value, timestamp_ms) in records {
            let key = key.expect("keyed");
            assert_eq!(partition_for_key(&key, 3), partition);
            let value: u32 = std::str::from_utf8(value.as_deref().unwrap_or_default())
                .unwrap()
                .parse()
                .unwrap();
            if let Some(previous) = last_per_key.insert(key, value) {
                assert!(previous < value, "order kept per key at offset {offset}");
            }
            assert!(
                timestamp_ms > 1_600_000_000_000,
                "timestamp filled with now"
            );
        }
    }
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn delivery_offsets_match_the_stored_offsets() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let producer = producer(&server, ProducerConfig::default()).await;
    let mut deliveries = Vec::new();
    for i in 0..300 {
        deliveries.push(
            producer
                .send("t", Record::new(format!("v{i}")))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    let stored = server.records("t", 0);
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.unwrap();
        let offset = metadata.offset.unwrap().0;
        assert_eq!(offset, i as u64);
        assert_eq!(stored[i].2.as_deref(), Some(format!("v{i}").as_bytes()));
    }
}

#[tokio::test]
async fn keyless_records_spread_over_all_partitions_and_batches_stay_bounded() {
    let server = TestServer::start().await;
    server.create_topic("t", 3);
    let config = ProducerConfig {
        batch_bytes_max: 16 * 1024,
        ..ProducerConfig::default()
    };
    let producer = producer(&server, config).await;
    for _ in 0..300 {
        drop(
            producer
                .send("t", Record::new(vec![b'x'; 1024]))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    let mut total = 0;
    for partition in 0..3 {
        let sizes = server.batch_sizes("t", partition);
        assert!(!sizes.is_empty(), "partition {partition} got nothing");
        for size in &sizes {
            assert!(*size <= 16 * 1024, "batch of {size} bytes");
        }
        // Records are batched, not sent one by one.
        let records = server.records("t", partition).len();
        assert!(
            records > sizes.len(),
            "{records} records in {} batches",
            sizes.len()
        );
        total += records;
    }
    assert_eq!(total, 300);
}

#[tokio::test]
async fn send_waits_when_the_buffer_is_full_and_resumes_when_acks_return() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let buffer_bytes_max = 64 * 1024;
    let config = ProducerConfig {
        batch_bytes_max: 16 * 1024,
        buffer_bytes_max,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let producer = producer(&server, config).await;
    // Learn the topic's metadata while the server still answers.
    producer
        .send_and_wait("t", Record::new("first"))
        .await
        .unwrap();
    server.pause(true);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let task = {
        let producer = producer.clone();
        let sent = std::sync::Arc::clone(&sent);
        tokio::spawn(async move {
            for _ in 0..500 {
                drop(
                    producer
                        .send("t", Record::new(vec![b'x'; 1024]))
                        .await
                        .unwrap(),
                );
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck_at = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(stuck_at < 500, "send must wait while the buffer is full");
    assert!(stuck_at > 10, "the buffer holds some records");
    assert!(producer.buffered_bytes() <= buffer_bytes_max);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), stuck_at);
    server.pause(false);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("sends resume")
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(producer.buffered_bytes(), 0);
    assert_eq!(server.records("t", 0).len(), 501);
}

#[tokio::test]
async fn a_retriable_refusal_is_retried() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    server
        .state
        .lock()
        .unwrap()
        .produce_failures
        .push_back(ApiError::NotLeader {
            leader_hint: Some(NodeId(1)),
            epoch: Epoch(1),
        });
    let producer = producer(&server, ProducerConfig::default()).await;
    let metadata = producer.send_and_wait("t", Record::new("v")).await.unwrap();
    assert_eq!(metadata.offset, Some(Offset(0)));
    assert_eq!(server.state.lock().unwrap().produce_requests, 2);
}

/// A node catching up on cluster metadata after a restart answers a topic `NotReady`: the
/// producer asks again (within its delivery timeout) instead of failing the record with
/// `UnknownTopic`.
#[tokio::test]
async fn metadata_from_a_node_catching_up_is_asked_again() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    server.state.lock().unwrap().metadata_catching_up = 3;
    let producer = producer(&server, ProducerConfig::default()).await;
    let metadata = producer.send_and_wait("t", Record::new("v")).await.unwrap();
    assert_eq!(metadata.offset, Some(Offset(0)));
    assert_eq!(server.state.lock().unwrap().metadata_requests, 4);
}

/// `UnknownTopic` from a node whose metadata is up to date is final at once: no retries.
#[tokio::test]
async fn an_unknown_topic_fails_at_once() {
    let server = TestServer::start().await;
    let producer = producer(&server, ProducerConfig::default()).await;
    let error = producer.send("nope", Record::new("v")).await.unwrap_err();
    assert!(
        matches!(error, ClientError::Api(ApiError::UnknownTopic { ref topic }) if topic == "nope"),
        "{error:?}"
    );
    assert_eq!(server.state.lock().unwrap().metadata_requests, 1);
}

#[tokio::test]
async fn refusals_that_cannot_succeed_surface_per_record() {
    let server = TestServer::start_with_limits(ServerLimits {
        frame_bytes_max: 1024 * 1024,
        batch_bytes_max: 64 * 1024,
        record_bytes_max: 1000,
        requests_in_flight_max: 8,
    })
    .await;
    server.create_topic("t", 1);
    let producer = producer(&server, ProducerConfig::default()).await;
    let big = producer
        .send_to("t", 0, Record::new(vec![0u8; 2000]))
        .await
        .unwrap();
    producer.flush().await.unwrap_err();
    let small = producer.send_to("t", 0, Record::new("ok")).await.unwrap();
    let error = big.await.unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Api(ApiError::RecordTooLarge {
                size: 2000,
                max: 1000
            })
        ),
        "{error:?}"
    );
    assert!(small.await.is_ok());
    // Refused before anything is sent.
    let unknown = producer.send("nope", Record::new("v")).await.unwrap_err();
    assert_eq!(unknown.to_string(), "unknown topic 'nope'");
    let partition = producer
        .send_to("t", 5, Record::new("v"))
        .await
        .unwrap_err();
    assert!(matches!(
        partition,
        ClientError::Api(ApiError::UnknownPartition {
            partition: 5,
            partitions: 1,
            ..
        })
    ));
}

#[tokio::test]
async fn a_paused_leader_fails_records_after_the_delivery_timeout() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let config = ProducerConfig {
        delivery_timeout: Duration::from_millis(400),
        request_timeout: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(
        ClientConfig {
            connect_timeout: Duration::from_millis(100),
            ..client(&server)
        },
        config,
    )
    .await
    .unwrap();
    // Learn the topic's metadata while the server still answers.
    producer
        .send_and_wait("t", Record::new("first"))
        .await
        .unwrap();
    server.pause(true);
    let started = Instant::now();
    let delivery = producer.send("t", Record::new("v")).await.unwrap();
    let error = delivery.await.unwrap_err();
    assert!(
        matches!(error, ClientError::DeliveryTimeout { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        producer.buffered_bytes(),
        0,
        "failed records free the buffer"
    );
}

#[tokio::test]
async fn acks_none_resolves_without_an_offset() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let config = ProducerConfig {
        acks: Acks::None,
        ..ProducerConfig::default()
    };
    let producer = producer(&server, config).await;
    let metadata = producer.send_and_wait("t", Record::new("v")).await.unwrap();
    assert_eq!(metadata.offset, None);
    assert_eq!(metadata.partition, 0);
}

pub(crate) async fn fill(
    server: &TestServer,
    topic: &str,
    partition: u32,
    count: u32,
    first_ms: i64,
) {
    let producer = producer(server, ProducerConfig::default()).await;
    for i in 0..count {
        let record =
            Record::new(format!("{partition}-{i}")).with_timestamp_ms(first_ms + i64::from(i));
        drop(producer.send_to(topic, partition, record).await.unwrap());
    }
    producer.close().await.unwrap();
}

pub(crate) fn consumer(server: &TestServer, config: ConsumerConfig) -> Consumer {
    Consumer::new(client(server), config).unwrap()
}

async fn poll_until(consumer: &mut Consumer, count: usize) -> Vec<ConsumerRecord> {
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < count && Instant::now() < deadline {
        records.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    records
}

#[tokio::test]
async fn a_small_fetch_budget_is_shared_by_rotating_the_partitions() {
    let server = TestServer::start().await;
    server.create_topic("t", 4);
    // Five one-record batches per partition.
    for round in 0..5 {
        for partition in 0..4 {
            fill(&server, "t", partition, 1, round * 10).await;
        }
    }
    let mut consumer = consumer(
        &server,
        ConsumerConfig {
            fetch_max_bytes: 1,
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign_topic("t").await.unwrap();
    // One batch per fetch. The partition that returned it goes to the back of the next
    // request, so the first four batches come from four partitions (asked in the same
    // order every time, partition 0 would return all five of its batches first).
    let mut partitions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while partitions.len() < 4 && Instant::now() < deadline {
        for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            partitions.push(record.partition);
        }
    }
    partitions.truncate(4);
    partitions.sort_unstable();
    assert_eq!(partitions, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn a_consumer_reads_assigned_partitions_in_order() {
    let server = TestServer::start().await;
    server.create_topic("t", 2);
    fill(&server, "t", 0, 100, 1_000).await;
    fill(&server, "t", 1, 50, 1_000).await;
    let mut consumer = consumer(
        &server,
        ConsumerConfig {
            max_poll_records: 30,
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    );
    assert_eq!(consumer.assign_topic("t").await.unwrap(), vec![0, 1]);
    let first = consumer.poll(Duration::from_secs(2)).await.unwrap();
    assert!(!first.is_empty() && first.len() <= 30, "{}", first.len());
    let mut records = first;
    records.extend(poll_until(&mut consumer, 150 - records.len()).await);
    assert_eq!(records.len(), 150);
    for partition in 0..2u32 {
        let offsets: Vec<u64> = records
            .iter()
            .filter(|record| record.partition == partition)
            .map(|record| record.offset.0)
            .collect();
        let expected = if partition == 0 { 100 } else { 50 };
        assert_eq!(offsets, (0..expected).collect::<Vec<_>>());
    }
    let sample = records
        .iter()
        .find(|r| r.partition == 1 && r.offset == Offset(7))
        .unwrap();
    assert_eq!(sample.value.as_deref(), Some(&b"1-7"[..]));
    assert_eq!(sample.timestamp_ms, 1_007);
    assert_eq!(&*sample.topic, "t");
    assert_eq!(consumer.position("t", 0), Some(Offset(100)));
    assert_eq!(consumer.position("t", 1), Some(Offset(50)));
    // Nothing new: an empty poll after the timeout.
    let started = Instant::now();
    assert!(consumer
        .poll(Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_partition_whose_leader_died_is_fetched_from_the_new_one_while_others_return_data() {
    let server = TestServer::start().await;
    server.create_topic("t", 2);
    // Partition 0 always has records left to return, in small batches, so every fetch
    // brings data and no fetch takes all of it.
    let small_batches = ProducerConfig {
        batch_bytes_max: 512,
        ..ProducerConfig::default()
    };
    let writer = producer(&server, small_batches).await;
    for i in 0..3_000 {
        drop(
            writer
                .send_to("t", 0, Record::new(format!("0-{i}")))
                .await
                .unwrap(),
        );
    }
    writer.close().await.unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    server
        .state
        .lock()
        .unwrap()
        .moved
        .insert(("t".to_owned(), 1), (NodeId(2), dead));
    let mut consumer = consumer(
        &server,
        ConsumerConfig {
            max_poll_records: 1,
            fetch_partition_max_bytes: 1_024,
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    );
    consumer
        .assign(&[("t", 0), ("t", 1)])
        .await
        .expect("assign");
    // Positions known (committed ones, say), so no offset lookup needs partition 1's leader.
    for partition in 0..2 {
        consumer
            .seek("t", partition, SeekTo::Offset(Offset(0)))
            .await
            .unwrap();
    }
    // Partition 1's leader (node 2) refuses connections while partition 0 returns data.
    let mut records = Vec::new();
    for _ in 0..5 {
        records.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    assert!(!records.is_empty(), "partition 0 is read meanwhile");
    // The partition fails over to node 1, which gets records.
    server.state.lock().unwrap().moved.clear();
    fill(&server, "t", 1, 5, 1_000).await;
    let mut from_partition_1 = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let polled = consumer.poll(Duration::from_millis(200)).await.unwrap();
        from_partition_1.extend(
            polled
                .into_iter()
                .filter(|record| record.partition == 1)
                .map(|record| record.offset.0),
        );
        if from_partition_1.len() == 5 {
            break;
        }
    }
    assert_eq!(
        from_partition_1,
        (0..5).collect::<Vec<_>>(),
        "the moved partition's records, read from its new leader"
    );
    assert!(
        consumer.position("t", 0).unwrap() < Offset(3_000),
        "partition 1 was read only once partition 0 ran dry (position {:?}): the failed \
         leader went unnoticed while another leader returned data",
        consumer.position("t", 0)
    );
}

#[tokio::test]
async fn seek_moves_to_earliest_latest_offset_and_timestamp() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    fill(&server, "t", 0, 100, 10_000).await;
    let mut consumer = consumer(&server, ConsumerConfig::default());
    consumer.assign(&[("t", 0)]).await.unwrap();

    assert_eq!(
        consumer
            .seek("t", 0, SeekTo::Offset(Offset(42)))
            .await
            .unwrap(),
        Offset(42)
    );
    let records = poll_until(&mut consumer, 1).await;
    assert_eq!(
        records[0].offset,
        Offset(42),
        "records below the position are skipped"
    );

    assert_eq!(
        consumer
            .seek("t", 0, SeekTo::Timestamp(10_060))
            .await
            .unwrap(),
        Offset(60)
    );
    let records = poll_until(&mut consumer, 1).await;
    assert_eq!(records[0].offset, Offset(60));

    assert_eq!(
        consumer.seek("t", 0, SeekTo::Earliest).await.unwrap(),
        Offset(0)
    );
    assert_eq!(poll_until(&mut consumer, 1).await[0].offset, Offset(0));

    assert_eq!(
        consumer.seek("t", 0, SeekTo::Latest).await.unwrap(),
        Offset(100)
    );
    assert!(consumer
        .poll(Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());
    fill(&server, "t", 0, 1, 20_000).await;
    let records = poll_until(&mut consumer, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, Offset(100));
    assert_eq!(consumer.position("t", 0), Some(Offset(101)));

    let refused = consumer.seek("t", 1, SeekTo::Earliest).await.unwrap_err();
    assert!(matches!(refused, ClientError::InvalidArgument { .. }));
    let unknown = consumer.assign(&[("t", 9)]).await.unwrap_err();
    assert!(matches!(
        unknown,
        ClientError::Api(ApiError::UnknownPartition { .. })
    ));
    assert_eq!(
        consumer.assignment(),
        vec![TopicPartition::new("t", 0)],
        "unchanged"
    );
}

#[tokio::test]
async fn an_out_of_range_position_resets_per_auto_offset_reset() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    fill(&server, "t", 0, 10, 0).await;
    let mut consumer = consumer(
        &server,
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign(&[("t", 0)]).await.unwrap();
    consumer
        .seek("t", 0, SeekTo::Offset(Offset(1_000)))
        .await
        .unwrap();
    let records = poll_until(&mut consumer, 10).await;
    assert_eq!(records.len(), 10);
    assert_eq!(records[0].offset, Offset(0));
}

#[tokio::test]
async fn admin_lists_topics_and_reports_refusals() {
    let server = TestServer::start().await;
    server.create_topic("a", 1);
    let admin = Admin::new(client(&server)).unwrap();
    let topics = admin.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].name, "a");
    assert_eq!(admin.topic_metadata("a").await.unwrap().partitions.len(), 1);
    let error = admin.topic_metadata("b").await.unwrap_err();
    assert_eq!(error.to_string(), "unknown topic 'b'");
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_typed_error() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(20),
        ..ClientConfig::new(&format!("127.0.0.1:{port}")).unwrap()
    };
    let admin = Admin::new(config).unwrap();
    let error = admin.list_topics().await.unwrap_err();
    match error {
        ClientError::DeliveryTimeout { last, .. } => {
            assert!(matches!(*last, ClientError::Connect { .. }), "{last:?}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn batches_wait_out_a_leaderless_partition_and_keep_their_order() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let config = ProducerConfig {
        batch_bytes_max: 1024,
        linger: Duration::from_millis(0),
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    let producer = producer(&server, config).await;
    producer
        .send_and_wait("t", Record::new("first"))
        .await
        .unwrap();
    server.state.lock().unwrap().leaderless = true;
    // A failure marks metadata stale; the producer sees the leaderless view from now on.
    producer.inner_cluster_invalidate();
    let mut deliveries = Vec::new();
    for i in 0..60 {
        let record = Record::new(format!("{i:0300}"));
        deliveries.push(producer.send_to("t", 0, record).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(deliveries[0].try_result().is_none(), "no leader, no ack");
    server.state.lock().unwrap().leaderless = false;
    producer.flush().await.unwrap();
    let values: Vec<String> = server
        .records("t", 0)
        .into_iter()
        .skip(1)
        .map(|(_, _, value, _)| String::from_utf8(value.unwrap_or_default().to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..60).map(|i| format!("{i:0300}")).collect();
    assert_eq!(values, expected, "every record once, in send order");
}

/// Stored values of one partition, in offset order.
fn stored_values(server: &TestServer, topic: &str, partition: u32) -> Vec<String> {
    server
        .records(topic, partition)
        .into_iter()
        .map(|(_, _, value, _)| String::from_utf8(value.unwrap_or_default().to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_batch_whose_acknowledgement_was_lost_is_written_once() {
    for enable_idempotence in [true, false] {
        let server = TestServer::start().await;
        server.create_topic("t", 1);
        // The first produce is appended, but its reply never arrives.
        server
            .state
            .lock()
            .unwrap()
            .replies_lost
            .push_back(ApiError::Timeout { waited_ms: 1 });
        let config = ProducerConfig {
            enable_idempotence,
            ..ProducerConfig::default()
        };
        let producer = producer(&server, config).await;
        let first = producer.send("t", Record::new("a")).await.unwrap();
        let second = producer.send("t", Record::new("b")).await.unwrap();
        producer.flush().await.unwrap();
        let first = first.await.unwrap().offset;
        let second = second.await.unwrap().offset;
        let stored = stored_values(&server, "t", 0);
        if enable_idempotence {
            assert_eq!(stored, vec!["a", "b"], "the retry was recognised");
            assert_eq!((first, second), (Some(Offset(0)), Some(Offset(1))));
            assert_eq!(server.state.lock().unwrap().producer_ids_issued, 1);
        } else {
            // The control: without idempotence the same fault stores the batch twice.
            assert_eq!(stored, vec!["a", "b", "a", "b"]);
            assert_eq!((first, second), (Some(Offset(2)), Some(Offset(3))));
            assert_eq!(server.state.lock().unwrap().producer_ids_issued, 0);
        }
    }
}

#[tokio::test]
async fn a_refused_batch_is_not_overtaken_by_later_ones_in_flight() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let config = ProducerConfig {
        batch_bytes_max: 1024,
        linger: Duration::from_millis(0),
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    let producer = producer(&server, config).await;
    producer
        .send_and_wait("t", Record::new("first"))
        .await
        .unwrap();
    // The next produce is refused; those pipelined behind it would skip its sequence.
    server
        .state
        .lock()
        .unwrap()
        .produce_failures
        .push_back(ApiError::NotLeader {
            leader_hint: Some(NodeId(1)),
            epoch: Epoch(1),
        });
    let mut deliveries = Vec::new();
    for i in 0..40 {
        let record = Record::new(format!("{i:0300}"));
        deliveries.push(producer.send_to("t", 0, record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let mut expected = vec!["first".to_owned()];
    expected.extend((0..40).map(|i| format!("{i:0300}")));
    assert_eq!(
        stored_values(&server, "t", 0),
        expected,
        "every record once, in send order"
    );
    assert!(
        server.state.lock().unwrap().produce_requests > 15,
        "several batches were in flight and some were retried"
    );
}

#[tokio::test]
async fn a_batch_that_fails_for_good_restarts_the_partition_sequence_in_a_new_epoch() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let producer = producer(&server, ProducerConfig::default()).await;
    producer.send_and_wait("t", Record::new("a")).await.unwrap();
    // A refusal no retry can fix: the batch's sequence is never written.
    server
        .state
        .lock()
        .unwrap()
        .produce_failures
        .push_back(ApiError::CorruptBatch {
            reason: "injected".into(),
        });
    let failed = producer.send_and_wait("t", Record::new("b")).await;
    assert!(matches!(
        failed,
        Err(ClientError::Api(ApiError::CorruptBatch { .. }))
    ));
    // Without a new epoch the next batch would skip the lost sequence and be refused forever.
    let next = producer.send_and_wait("t", Record::new("c")).await.unwrap();
    assert_eq!(next.offset, Some(Offset(1)));
    assert_eq!(stored_values(&server, "t", 0), vec!["a", "c"]);
    let state = server.state.lock().unwrap();
    let (epoch, written) = &state.producers[&("t".to_owned(), 0, 0)];
    assert_eq!(*epoch, 1);
    assert_eq!(written[0].0, 0, "the new epoch starts at sequence 0");
}

/// A leader that lost the producer's state (KIP-360's case) refuses its next sequence with
/// `UnknownProducerId`, which no retry fixes: the batch fails at once with that typed error
/// (no retry loop until the delivery timeout), and the partition goes on in a new epoch from
/// sequence 0, which the leader accepts.
#[tokio::test]
async fn an_unknown_producer_id_fails_the_batch_and_the_next_starts_a_new_epoch() {
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    let producer = producer(&server, ProducerConfig::default()).await;
    producer.send_and_wait("t", Record::new("a")).await.unwrap();
    server.state.lock().unwrap().producers.clear();
    let requests_before = server.state.lock().unwrap().produce_requests;
    let failed = producer.send_and_wait("t", Record::new("b")).await;
    assert!(
        matches!(
            failed,
            Err(ClientError::Api(ApiError::UnknownProducerId {
                received: 1,
                ..
            }))
        ),
        "{failed:?}"
    );
    assert_eq!(
        server.state.lock().unwrap().produce_requests,
        requests_before + 1,
        "not retried"
    );
    let next = producer.send_and_wait("t", Record::new("c")).await.unwrap();
    assert_eq!(next.offset, Some(Offset(1)));
    assert_eq!(stored_values(&server, "t", 0), vec!["a", "c"]);
}

/// A cluster that answers `ProducerIdNotAllocated` (it does not know the producer's id: it
/// was recreated from empty data while the producer lived) refuses every batch stamped with
/// that id, before writing it. The producer fetches a new id and sends the refused batches
/// again under it, from sequence 0 on every partition, in their order, instead of failing
/// every record from then on.
#[tokio::test]
async fn a_producer_id_the_cluster_does_not_know_is_replaced_and_nothing_fails() {
    let server = TestServer::start().await;
    server.create_topic("t", 2);
    let config = ProducerConfig::new()
        .batch_bytes_max(1024)
        .linger(Duration::ZERO)
        .retry_backoff(Duration::from_millis(5))
        .retry_backoff_max(Duration::from_millis(20));
    let producer = producer(&server, config).await;
    for partition in 0..2 {
        producer
            .send_to("t", partition, Record::new("before"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    {
        let mut state = server.state.lock().unwrap();
        assert_eq!(state.producer_ids_issued, 1);
        state.producer_ids_unknown_below = state.producer_ids_issued;
    }
    let mut deliveries = Vec::new();
    for i in 0..40 {
        let record = Record::new(format!("{i:0300}"));
        deliveries.push(producer.send_to("t", i % 2, record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    for partition in 0..2 {
        let mut expected = vec!["before".to_owned()];
        expected.extend(
            (0..40)
                .filter(|i| i % 2 == partition)
                .map(|i| format!("{i:0300}")),
        );
        assert_eq!(
            stored_values(&server, "t", partition),
            expected,
            "every record once, in send order"
        );
    }
    let state = server.state.lock().unwrap();
    assert_eq!(state.producer_ids_issued, 2, "one new producer id");
    for partition in 0..2 {
        let (_, written) = &state.producers[&("t".to_owned(), partition, 1)];
        assert_eq!(written[0].0, 0, "the new id starts at sequence 0");
    }
}

/// A client whose bootstrap brokers cannot be reached fails with the connect error once
/// `connect_timeout` passed, not at the end of the (much longer) request timeout it
/// would wait for a broker that once answered.
#[tokio::test]
async fn an_unreachable_bootstrap_fails_within_the_connect_timeout() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let client = ClientConfig {
        request_timeout: Duration::from_millis(60_000),
        connect_timeout: Duration::from_millis(300),
        ..ClientConfig::new(&closed).unwrap()
    };
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Producer::new(client.clone(), ProducerConfig::default()),
    )
    .await
    .expect("bounded by the connect timeout, not the request timeout");
    assert!(
        matches!(started, Err(ClientError::Connect { ref address, .. }) if *address == closed),
        "{:?}",
        started.err()
    );
    let admin = Admin::new(client).unwrap();
    let listed = tokio::time::timeout(std::time::Duration::from_secs(30), admin.list_topics())
        .await
        .expect("bounded by the connect timeout");
    assert!(
        matches!(listed, Err(ClientError::Connect { .. })),
        "{listed:?}"
    );
}

/// `Consumer::stream` yields every record once, in order; dropping it mid-batch gives the
/// records polled but not yielded back to the consumer, so nothing is skipped.
#[tokio::test]
async fn a_stream_yields_records_in_order_and_gives_back_what_it_did_not_yield() {
    use futures::StreamExt;
    let server = TestServer::start().await;
    server.create_topic("t", 1);
    fill(&server, "t", 0, 10, 1_000).await;
    let mut consumer = consumer(
        &server,
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign_topic("t").await.unwrap();
    let first: Vec<ConsumerRecord> = tokio::time::timeout(
        Duration::from_secs(10),
        consumer
            .stream()
            .take(3)
            .map(|record| record.unwrap())
            .collect(),
    )
    .await
    .expect("records arrive");
    let offsets: Vec<u64> = first.iter().map(|record| record.offset.0).collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    // The stream polled all ten at once (one small batch each): seven went back.
    assert_eq!(consumer.position("t", 0), Some(Offset(3)));
    let rest = poll_until(&mut consumer, 7).await;
    let offsets: Vec<u64> = rest.iter().map(|record| record.offset.0).collect();
    assert_eq!(offsets, (3..10).collect::<Vec<_>>());
}

/// Issue 16: the producer compresses with each of Kafka's codecs (the server stores the
/// batches compressed), and the consumer decompresses them as it iterates records.
#[tokio::test]
async fn compressed_batches_are_produced_and_consumed_with_every_codec() {
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let server = TestServer::start().await;
        server.create_topic("t", 1);
        let config = ProducerConfig {
            compression,
            batch_bytes_max: 4 * 1024,
            ..ProducerConfig::default()
        };
        let producer = producer(&server, config).await;
        for i in 0..200 {
            let record = Record::new(format!("value {i} of a compressible stream"))
                .with_key(format!("key-{}", i % 5))
                .with_header("codec", compression.name());
            drop(producer.send_to("t", 0, record).await.unwrap());
        }
        producer.close().await.unwrap();
        let codecs = server.batch_codecs("t", 0);
        assert!(codecs.len() > 1, "{compression}: {codecs:?}");
        assert!(
            codecs.iter().all(|codec| *codec == compression),
            "{compression}: {codecs:?}"
        );
        let mut consumer = consumer(
            &server,
            ConsumerConfig {
                auto_offset_reset: AutoOffsetReset::Earliest,
                ..ConsumerConfig::default()
            },
        );
        consumer.assign_topic("t").await.unwrap();
        let records = poll_until(&mut consumer, 200).await;
        assert_eq!(records.len(), 200, "{compression}");
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.offset, Offset(i as u64));
            assert_eq!(
                record.value.as_deref(),
                Some(format!("value {i} of a compressible stream").as_bytes())
            );
            assert_eq!(record.headers[0].key, "codec");
        }
    }
}
