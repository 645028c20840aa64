//! A small wire-level throughput check for one running node: producers pipeline acks=all
//! batches for a while, then one consumer reads everything back.
//!
//! `cargo run --release -p cairn-node --example throughput -- ADDRESS [SECONDS] [PARTITIONS]
//! [CONNECTIONS] [IN_FLIGHT] [RECORDS_PER_BATCH] [RECORD_BYTES]`
//!
//! The benches crate holds the real load generator; this one exists so the node's own hot path
//! can be measured without the client crate in between.

use cairn_protocol::batch::{split_batches, Record, RecordBatchBuilder};
use cairn_protocol::frame::{decode_response, encode_request};
use cairn_protocol::messages::*;
use cairn_protocol::{Offset, Request, RequestFrame, Response};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], index: usize, default: T) -> T {
    args.get(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn write_request(stream: &mut TcpStream, correlation_id: u64, request: Request) {
    let payload = encode_request(&RequestFrame {
        version: 1,
        correlation_id,
        request,
    });
    let mut frame = Vec::with_capacity(payload.len() + 4);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).expect("write");
}

fn read_response(stream: &mut TcpStream) -> cairn_protocol::ResponseFrame {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("read length");
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut payload).expect("read payload");
    decode_response(&payload).expect("decode")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let address = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7171".into());
    let seconds: u64 = arg(&args, 2, 10);
    let partitions: u32 = arg(&args, 3, 4);
    let connections: u32 = arg(&args, 4, 4);
    let in_flight: usize = arg(&args, 5, 16);
    let records_per_batch: usize = arg(&args, 6, 32);
    let record_bytes: usize = arg(&args, 7, 1024);
    let topic = format!("throughput-{}", std::process::id());

    let mut admin = TcpStream::connect(&address).expect("connect");
    write_request(
        &mut admin,
        1,
        Request::CreateTopic(CreateTopicRequest {
            name: topic.clone(),
            partitions,
            replication_factor: None,
            config: TopicConfig::default(),
        }),
    );
    let created = read_response(&mut admin);
    assert!(created.result.is_ok(), "{created:?}");

    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    for index in 0..records_per_batch {
        let mut value = vec![b'x'; record_bytes];
        value[..8].copy_from_slice(&(index as u64).to_be_bytes());
        builder.push(&Record::new(value));
    }
    let batch = builder.build().into_bytes();

    let produced = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::new();
    for connection in 0..connections {
        let stream = TcpStream::connect(&address).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let mut writer = stream;
        let (tokens, token) = mpsc::sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            tokens.send(()).unwrap();
        }
        // Per connection: the reader stops once its own writer is done and answered.
        let stop = Arc::new(AtomicBool::new(false));
        let (produced_by_reader, stop_reader) = (Arc::clone(&produced), Arc::clone(&stop));
        let sent = Arc::new(AtomicU64::new(0));
        let sent_by_writer = Arc::clone(&sent);
        threads.push(std::thread::spawn(move || {
            let mut answered = 0u64;
            loop {
                if stop_reader.load(Ordering::Acquire) && answered == sent.load(Ordering::Acquire) {
                    return;
                }
                let reply = read_response(&mut reader);
                answered += 1;
                match reply.result {
                    Ok(Response::Produce(_)) => {
                        produced_by_reader.fetch_add(records_per_batch as u64, Ordering::Relaxed);
                    }
                    other => eprintln!("produce failed: {other:?}"),
                }
                let _ = tokens.send(());
            }
        }));
        let (topic, batch, stop_writer) = (topic.clone(), batch.clone(), stop);
        threads.push(std::thread::spawn(move || {
            let mut correlation_id = 0u64;
            while started.elapsed() < Duration::from_secs(seconds) {
                if token.recv_timeout(Duration::from_millis(100)).is_err() {
                    continue;
                }
                correlation_id += 1;
                let partition = (correlation_id as u32 + connection) % partitions;
                sent_by_writer.fetch_add(1, Ordering::Release);
                write_request(
                    &mut writer,
                    correlation_id,
                    Request::Produce(ProduceRequest {
                        topic: topic.clone(),
                        partition,
                        acks: Acks::All,
                        timeout_ms: 30_000,
                        batch: batch.clone(),
                    }),
                );
            }
            stop_writer.store(true, Ordering::Release);
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = produced.load(Ordering::Relaxed);
    println!(
        "produced {count} records of {record_bytes} B in {elapsed:.2} s: {:.0} records/s, {:.1} MiB/s",
        count as f64 / elapsed,
        count as f64 * record_bytes as f64 / elapsed / (1 << 20) as f64
    );

    // Consume everything back, one connection, all partitions per fetch.
    let mut consumer = TcpStream::connect(&address).expect("connect");
    consumer.set_nodelay(true).unwrap();
    let mut offsets = vec![Offset(0); partitions as usize];
    let mut ends = vec![Offset(u64::MAX); partitions as usize];
    let mut consumed = 0u64;
    let started = Instant::now();
    let mut correlation_id = 0;
    while offsets.iter().zip(&ends).any(|(offset, end)| offset < end) {
        correlation_id += 1;
        write_request(
            &mut consumer,
            correlation_id,
            Request::Fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 3 << 20,
                partitions: (0..partitions)
                    .map(|partition| FetchPartition {
                        topic: topic.clone(),
                        partition,
                        offset: offsets[partition as usize],
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            }),
        );
        let Ok(Response::Fetch(fetched)) = read_response(&mut consumer).result else {
            panic!("fetch failed")
        };
        for (index, partition) in fetched.partitions.into_iter().enumerate() {
            let records = partition.result.expect("partition fetch");
            ends[index] = records.high_watermark;
            for batch in split_batches(&records.batches) {
                let batch = batch.expect("batch");
                if !batch.header().is_control() {
                    for record in batch.records() {
                        let record = record.expect("record");
                        if record.offset >= offsets[index] {
                            consumed += 1;
                        }
                    }
                }
                offsets[index] = offsets[index].max(batch.next_offset());
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "consumed {consumed} records in {elapsed:.2} s: {:.0} records/s",
        consumed as f64 / elapsed
    );
}
