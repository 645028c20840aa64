//! Flow over the wire: pipelined ordering, long-poll fetch, and backpressure at the limits.

mod support;

use cairn_protocol::messages::*;
use cairn_protocol::{ApiError, Offset, Request, Response};
use std::time::{Duration, Instant};
use support::{batch_of, produce_request, TestNode};

#[test]
fn pipelined_batches_of_one_partition_keep_their_order() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("ordered", 1).unwrap();
    // Stay under requests_in_flight_max (32 in the test preset) per round so the connection
    // keeps reading; several rounds interleave sends and replies.
    let mut acknowledged = Vec::new();
    for round in 0..10 {
        let mut ids = Vec::new();
        for index in 0..30 {
            let value = format!("{:05}", round * 30 + index);
            let mut builder = cairn_protocol::RecordBatchBuilder::new(1);
            builder.push(
                &cairn_protocol::Record::new(bytes::Bytes::from(value.clone()))
                    .with_key(bytes::Bytes::from_static(b"one-key")),
            );
            ids.push((
                wire.send(produce_request("ordered", 0, builder.build().into_bytes())),
                value,
            ));
        }
        for _ in 0..ids.len() {
            let reply = wire.recv();
            let value = ids
                .iter()
                .find(|(id, _)| *id == reply.correlation_id)
                .map(|(_, value)| value.clone())
                .expect("a reply to a request sent");
            match reply.result {
                Ok(Response::Produce(produced)) => acknowledged.push((produced.base_offset, value)),
                other => panic!("{other:?}"),
            }
        }
    }
    acknowledged.sort();
    let values: Vec<_> = acknowledged
        .iter()
        .map(|(_, value)| value.clone())
        .collect();
    let mut sorted = values.clone();
    sorted.sort();
    assert_eq!(values, sorted, "offsets follow send order");
    let read: Vec<_> = wire
        .read_all("ordered", 0, Offset(0))
        .into_iter()
        .map(|record| {
            String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap()
        })
        .collect();
    assert_eq!(read, sorted);
}

#[test]
fn long_poll_fetch_returns_when_data_arrives() {
    let node = TestNode::start();
    let mut setup = node.wire();
    setup.create_topic("poll", 1).unwrap();
    let end = setup.fetch("poll", 0, Offset(0), 0).unwrap().high_watermark;

    let address = node.address();
    let waiter = std::thread::spawn(move || {
        let mut wire = support::Wire::connect(address);
        let started = Instant::now();
        let fetched = wire.fetch("poll", 0, end, 1_900).unwrap();
        (started.elapsed(), fetched)
    });
    std::thread::sleep(Duration::from_millis(400));
    setup.produce("poll", 0, &[b"wake up"]).unwrap();
    let (waited, fetched) = waiter.join().unwrap();
    let records = support::records_of(&fetched.batches);
    assert_eq!(records.len(), 1, "{fetched:?}");
    assert_eq!(records[0].value, Some(bytes::Bytes::from("wake up")));
    assert!(
        waited >= Duration::from_millis(300),
        "returned before the data: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1_800),
        "waited for the deadline: {waited:?}"
    );

    // Nothing arrives: the poll ends at min(max_wait_ms, fetch_wait_max_ms = 2000).
    let mut wire = node.wire();
    let started = Instant::now();
    let fetched = wire.fetch("poll", 0, end.plus(1), 60_000).unwrap();
    let waited = started.elapsed();
    assert!(fetched.batches.is_empty());
    assert!(
        waited >= Duration::from_millis(1_800) && waited < Duration::from_millis(5_000),
        "{waited:?}"
    );
}

#[test]
fn fetch_respects_max_bytes_but_always_returns_one_batch() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("sized", 1).unwrap();
    let value = vec![5u8; 4000];
    for _ in 0..10 {
        wire.produce("sized", 0, &[&value]).unwrap();
    }
    let fetch = |wire: &mut support::Wire, max_bytes: u32| {
        let partition = FetchPartition {
            topic: "sized".into(),
            partition: 0,
            offset: Offset(1),
            max_bytes: 1 << 20,
        };
        wire.fetch_now(max_bytes, vec![partition])
            .remove(0)
            .result
            .unwrap()
    };
    let small = fetch(&mut wire, 10);
    assert_eq!(
        support::records_of(&small.batches).len(),
        1,
        "one batch despite max_bytes"
    );
    let some = fetch(&mut wire, 9_000);
    assert!(some.batches.len() <= 9_000);
    assert_eq!(support::records_of(&some.batches).len(), 2);
    let all = fetch(&mut wire, 1 << 20);
    assert_eq!(support::records_of(&all.batches).len(), 10);
}

#[test]
fn a_fetch_of_many_partitions_fills_its_budget_in_request_order() {
    // Partitions are read several at a time; the answer must still be what reading them one
    // by one gives: the budget spent on the first partitions asked for, nothing past it.
    let node = TestNode::start();
    let mut wire = node.wire();
    let partitions = 16u32; // the test preset's most per topic
    wire.create_topic("many", partitions).unwrap();
    let value = vec![7u8; 4000];
    for partition in 0..partitions {
        for _ in 0..3 {
            wire.produce("many", partition, &[&value]).unwrap();
        }
    }
    let fetch = |wire: &mut support::Wire, max_bytes: u32| {
        // Asked in reverse order: the answer follows the request, not partition numbers.
        let asked = (0..partitions)
            .rev()
            .map(|partition| FetchPartition {
                topic: "many".into(),
                partition,
                offset: Offset(1),
                max_bytes: 1 << 20,
            })
            .collect();
        wire.fetch_now(max_bytes, asked)
            .into_iter()
            .map(|p| {
                (
                    p.partition,
                    support::records_of(&p.result.unwrap().batches).len(),
                )
            })
            .collect::<Vec<_>>()
    };
    // About 4 KiB per batch: 50,000 bytes hold 12 batches, all from the first 4 partitions.
    let counts = fetch(&mut wire, 50_000);
    let expected: Vec<(u32, usize)> = (0..partitions)
        .rev()
        .enumerate()
        .map(|(index, partition)| (partition, if index < 4 { 3 } else { 0 }))
        .collect();
    assert_eq!(counts, expected);
    let all = fetch(&mut wire, 1 << 20);
    assert!(all.iter().all(|&(_, records)| records == 3), "{all:?}");
}

#[test]
fn limits_answer_backpressure_not_memory_growth() {
    // Tiny replica and mailbox limits, many pipelining connections on one partition.
    let node = TestNode::start_with(&[
        "--set",
        "replica.pending_requests_max=4",
        "--set",
        "limits.partition_mailbox_max=4",
    ]);
    let mut setup = node.wire();
    setup.create_topic("hot", 1).unwrap();
    let address = node.address();
    let producers: Vec<_> = (0..6)
        .map(|producer| {
            std::thread::spawn(move || {
                let mut wire = support::Wire::connect(address);
                let mut outcomes = (0usize, 0usize);
                for round in 0..5 {
                    for index in 0..30 {
                        let value = format!("{producer}-{round}-{index}");
                        wire.send(produce_request(
                            "hot",
                            0,
                            batch_of(&[value.as_bytes()]).into_bytes(),
                        ));
                    }
                    for _ in 0..30 {
                        match wire.recv().result {
                            Ok(Response::Produce(_)) => outcomes.0 += 1,
                            Err(ApiError::Backpressure { .. }) => outcomes.1 += 1,
                            other => panic!("neither ok nor backpressure: {other:?}"),
                        }
                    }
                }
                outcomes
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for producer in producers {
        let (accepted, pushed_back) = producer.join().unwrap();
        ok += accepted;
        refused += pushed_back;
    }
    assert_eq!(ok + refused, 6 * 5 * 30);
    assert!(refused > 0, "no limit was reached ({ok} accepted)");
    assert!(ok > 0, "nothing was accepted");
    // Exactly the accepted batches are in the log.
    let records = setup.read_all("hot", 0, Offset(0));
    assert_eq!(records.len(), ok);
}

#[test]
fn a_client_that_does_not_read_is_throttled_by_tcp_and_others_are_served() {
    let node = TestNode::start();
    let mut setup = node.wire();
    setup.create_topic("flood", 1).unwrap();
    let mut flood = node.wire();
    // Far more than requests_in_flight_max (32), without reading a reply.
    let total = 2_000;
    flood
        .stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for index in 0..total {
        flood.send(Request::Metadata(MetadataRequest {
            topics: Some(vec![format!("flood-{index}")]),
        }));
    }
    // Another client is served meanwhile.
    assert!(setup.produce("flood", 0, &[b"still here"]).is_ok());
    // Every request is answered, in the end.
    let mut answered = 0;
    while answered < total {
        flood.recv();
        answered += 1;
    }
}

#[test]
fn a_connection_at_its_in_flight_limit_is_not_read_further() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("idle", 1).unwrap();
    let end = wire.fetch("idle", 0, Offset(0), 0).unwrap().high_watermark;
    // requests_in_flight_max is 32 in the test preset: 32 long polls fill the connection.
    let started = Instant::now();
    for _ in 0..32 {
        wire.send(Request::Fetch(FetchRequest {
            max_wait_ms: 1_500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: "idle".into(),
                partition: 0,
                offset: end,
                max_bytes: 1 << 20,
            }],
        }));
    }
    let list = wire.send(Request::ListTopics(ListTopicsRequest {
        include_internal: false,
    }));
    // The 33rd request is read only once a poll finishes, so it is answered after one.
    let mut replies = Vec::new();
    let mut list_answered_after = None;
    for _ in 0..33 {
        let reply = wire.recv();
        if reply.correlation_id == list {
            list_answered_after = Some(started.elapsed());
        }
        replies.push(reply.correlation_id);
    }
    let position = replies.iter().position(|id| *id == list).unwrap();
    assert!(position > 0, "answered before any poll ended: {replies:?}");
    let waited = list_answered_after.unwrap();
    assert!(waited >= Duration::from_millis(1_400), "{waited:?}");
}
