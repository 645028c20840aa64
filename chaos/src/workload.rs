//! The workload: producers (idempotent and not, `acks=all`, keyed unique values), consumers
//! in one group committing what they read, manual readers of every partition from the start,
//! a watcher of the group's committed offsets and of its coordinator's assignment, and the
//! final drain reader. Every operation goes to the [`Recorder`] as one [`Op`].
//!
//! Clients are numbered: crashing client `c` (a nemesis fault) drops its current incarnation
//! without closing it and starts a new one with a new process number, so every process of
//! the history is one incarnation.

use crate::history::{MemberView, Op, Read, ReaderKind, Status};
use cairn_client::{
    Acks, Admin, AutoOffsetReset, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer,
    ProducerConfig, Record,
};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The campaign's topic and group.
pub const TOPIC: &str = "chaos";
pub const GROUP: &str = "chaos-group";

/// Operations waiting to be written; producers wait when it is full.
const RECORDER_QUEUE_MAX: usize = 65_536;
/// Records one producer has sent and not yet seen the outcome of.
const IN_FLIGHT_PER_PRODUCER_MAX: usize = 256;

/// Sends operations to the writer task, timestamped against the campaign's start.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Op>,
    start: Instant,
    next_process: Arc<AtomicU32>,
}

impl Recorder {
    /// A recorder writing to `path`; await the returned handle after every sender dropped.
    pub fn start(
        path: &std::path::Path,
        start: Instant,
    ) -> std::io::Result<(Recorder, tokio::task::JoinHandle<std::io::Result<u64>>)> {
        use std::io::Write;
        let file = std::fs::File::create(path)?;
        let (tx, mut rx) = mpsc::channel::<Op>(RECORDER_QUEUE_MAX);
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut written = 0;
            while let Some(op) = rx.blocking_recv() {
                let line = serde_json::to_string(&op).expect("an Op always serialises");
                writeln!(out, "{line}")?;
                written += 1;
            }
            out.flush()?;
            Ok(written)
        });
        Ok((
            Recorder {
                tx,
                start,
                next_process: Arc::new(AtomicU32::new(1)),
            },
            writer,
        ))
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub async fn record(&self, op: Op) {
        let _ = self.tx.send(op).await;
    }

    /// A process number never used before.
    pub fn new_process(&self) -> u32 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }
}

/// Shared control of the workload.
#[derive(Clone)]
pub struct Control {
    /// Producers stop sending new records once this turns true.
    pub stop_producing: watch::Receiver<bool>,
    /// Every client stops once this turns true.
    pub stop_all: watch::Receiver<bool>,
    /// Crash counters per client: a change tells client `c` to crash its incarnation.
    pub crashes: watch::Receiver<Vec<u32>>,
}

/// What each client does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub bootstrap: String,
    /// Producers; even-numbered ones are idempotent, odd ones not.
    pub producers: u32,
    pub group_consumers: u32,
    pub manual_readers: u32,
    /// Records per second per producer.
    pub rate_per_producer: u32,
    /// Bytes of each value: the unique id, padded ([`crate::checker::padded_value`]).
    pub value_bytes: u32,
    /// Records per producer at most over the whole run.
    pub records_per_producer_max: u64,
}

impl WorkloadConfig {
    /// Client numbers: producers first, then group consumers, then manual readers.
    pub fn clients(&self) -> u32 {
        self.producers + self.group_consumers + self.manual_readers
    }
}

fn client_config(bootstrap: &str, name: String) -> Result<ClientConfig, ClientError> {
    Ok(ClientConfig::new(bootstrap)?
        .client_id(name)
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .metadata_max_age(Duration::from_secs(5)))
}

/// Whether a failed send definitely wrote nothing: only refusals before the record was sent.
pub(crate) fn delivery_status(error: &ClientError) -> Status {
    match error {
        ClientError::InvalidArgument { .. }
        | ClientError::RecordTooLarge { .. }
        | ClientError::RequestTooLarge { .. } => Status::Fail,
        _ => Status::Info,
    }
}

/// Waits until `client`'s crash counter moves past `seen`, or forever.
async fn crashed(crashes: &mut watch::Receiver<Vec<u32>>, client: u32, seen: u32) {
    loop {
        if crashes.borrow().get(client as usize).copied().unwrap_or(0) != seen {
            return;
        }
        if crashes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn crash_count(crashes: &watch::Receiver<Vec<u32>>, client: u32) -> u32 {
    crashes.borrow().get(client as usize).copied().unwrap_or(0)
}

type Delivery = (
    String,
    String,
    u64,
    u32,
    Result<cairn_client::RecordMetadata, ClientError>,
);

/// Producer client `client`: sends unique values at a steady rate, records each outcome.
pub async fn run_producer(
    client: u32,
    idempotent: bool,
    config: WorkloadConfig,
    recorder: Recorder,
    mut control: Control,
) {
    let mut sent: u64 = 0;
    while !*control.stop_producing.borrow() && sent < config.records_per_producer_max {
        let process = recorder.new_process();
        let crash_seen = crash_count(&control.crashes, client);
        let Ok(client_config) = client_config(&config.bootstrap, format!("producer-{process}"))
        else {
            return;
        };
        let producer_config = ProducerConfig::default()
            .acks(Acks::All)
            .linger(Duration::from_millis(2))
            .delivery_timeout(Duration::from_secs(15))
            .request_timeout(Duration::from_secs(3))
            .enable_idempotence(idempotent);
        let producer = tokio::select! {
            made = Producer::new(client_config, producer_config) => made,
            _ = control.stop_producing.changed() => return,
        };
        let producer = match producer {
            Ok(producer) => producer,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let mut in_flight: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = Delivery> + Send>>,
        > = FuturesUnordered::new();
        let mut ticker = tokio::time::interval(Duration::from_micros(
            1_000_000 / u64::from(config.rate_per_producer.max(1)),
        ));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut crashes = control.crashes.clone();
        let mut crashed_now = false;
        // What is in flight, so a crash can record each of them as indeterminate.
        let mut outstanding: std::collections::HashMap<String, (String, u64, u32)> =
            std::collections::HashMap::new();
        loop {
            let producing =
                !*control.stop_producing.borrow() && sent < config.records_per_producer_max;
            if !producing && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                _ = crashed(&mut crashes, client, crash_seen) => {
                    crashed_now = true;
                    break;
                }
                Some((value, key, invoke_ms, partition, outcome)) = in_flight.next(),
                    if !in_flight.is_empty() =>
                {
                    let complete_ms = recorder.now_ms();
                    outstanding.remove(&value);
                    let (status, offset, error) = match outcome {
                        Ok(metadata) => (Status::Ok, metadata.offset.map(|offset| offset.0), None),
                        Err(error) => (delivery_status(&error), None, Some(error.to_string())),
                    };
                    recorder.record(Op::Send {
                        process, idempotent, key, value, invoke_ms, complete_ms, status,
                        partition: Some(partition), offset, error,
                    }).await;
                }
                _ = ticker.tick(), if producing && in_flight.len() < IN_FLIGHT_PER_PRODUCER_MAX => {
                    sent += 1;
                    let value = format!("{process}-{sent}");
                    let key = format!("k{}", sent % 64);
                    let invoke_ms = recorder.now_ms();
                    let record = Record::new(crate::checker::padded_value(
                        &value,
                        config.value_bytes as usize,
                    ))
                    .with_key(key.clone());
                    match producer.send(TOPIC, record).await {
                        Ok(delivery) => {
                            let partition = delivery.partition();
                            outstanding.insert(value.clone(), (key.clone(), invoke_ms, partition));
                            in_flight.push(Box::pin(async move {
                                (value, key, invoke_ms, partition, delivery.await)
                            }));
                        }
                        Err(error) => {
                            // Refused before it was queued: definitely not written.
                            recorder.record(Op::Send {
                                process, idempotent, key, value, invoke_ms,
                                complete_ms: recorder.now_ms(), status: Status::Fail,
                                partition: None, offset: None, error: Some(error.to_string()),
                            }).await;
                        }
                    }
                }
            }
        }
        if crashed_now {
            let at_ms = recorder.now_ms();
            // Outstanding sends of a crashed client are indeterminate.
            let mut lost: Vec<(String, (String, u64, u32))> = outstanding.drain().collect();
            lost.sort_by_key(|(_, (_, invoke_ms, _))| *invoke_ms);
            for (value, (key, invoke_ms, partition)) in lost {
                recorder
                    .record(Op::Send {
                        process,
                        idempotent,
                        key,
                        value,
                        invoke_ms,
                        complete_ms: at_ms,
                        status: Status::Info,
                        partition: Some(partition),
                        offset: None,
                        error: Some("the client crashed".to_string()),
                    })
                    .await;
            }
            recorder.record(Op::Crash { process, at_ms }).await;
            drop(in_flight);
            drop(producer);
            continue;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), producer.close()).await;
    }
}

fn reads_of(records: &[cairn_client::ConsumerRecord]) -> Vec<Read> {
    records
        .iter()
        .map(|record| Read {
            partition: record.partition,
            offset: record.offset.0,
            value: crate::checker::value_text(record.value.as_deref()),
        })
        .collect()
}

/// Group consumer client `client`: polls, records, commits about every second.
pub async fn run_group_consumer(
    client: u32,
    config: WorkloadConfig,
    recorder: Recorder,
    control: Control,
) {
    while !*control.stop_all.borrow() {
        let process = recorder.new_process();
        let crash_seen = crash_count(&control.crashes, client);
        let Ok(client_config) = client_config(&config.bootstrap, format!("member-{process}"))
        else {
            return;
        };
        let consumer_config = ConsumerConfig::default()
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(200))
            .session_timeout(Duration::from_secs(6))
            .rebalance_timeout(Duration::from_secs(10))
            .max_poll_records(200);
        let Ok(mut consumer) = Consumer::new(client_config, consumer_config) else {
            return;
        };
        if consumer.subscribe(&[TOPIC], GROUP).await.is_err() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let mut session: u64 = 0;
        let mut last_epoch = None;
        let mut last_commit = Instant::now();
        let mut crashes = control.crashes.clone();
        loop {
            if *control.stop_all.borrow() {
                let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
                return;
            }
            let before = consumer.member().map(|(_, epoch)| epoch.0);
            let invoke_ms = recorder.now_ms();
            let polled = tokio::select! {
                _ = crashed(&mut crashes, client, crash_seen) => None,
                polled = consumer.poll(Duration::from_millis(500)) => Some(polled),
            };
            let Some(polled) = polled else {
                recorder
                    .record(Op::Crash {
                        process,
                        at_ms: recorder.now_ms(),
                    })
                    .await;
                break;
            };
            let complete_ms = recorder.now_ms();
            let member = consumer.member();
            let after = member.as_ref().map(|(_, epoch)| epoch.0);
            // A new epoch (or one that moved during the poll) may have moved positions.
            if before != after || after != last_epoch {
                session += 1;
                last_epoch = after;
            }
            let view = member
                .filter(|_| before == after)
                .map(|(id, epoch)| MemberView {
                    member: id,
                    member_epoch: epoch.0,
                    partitions: consumer
                        .assignment()
                        .iter()
                        .map(|partition| partition.partition)
                        .collect(),
                });
            match polled {
                Ok(records) => {
                    recorder
                        .record(Op::Poll {
                            process,
                            reader: ReaderKind::Group,
                            session,
                            invoke_ms,
                            complete_ms,
                            status: Status::Ok,
                            member: view,
                            records: reads_of(&records),
                            error: None,
                        })
                        .await;
                }
                Err(error) => {
                    session += 1;
                    recorder
                        .record(Op::Poll {
                            process,
                            reader: ReaderKind::Group,
                            session,
                            invoke_ms,
                            complete_ms,
                            status: Status::Fail,
                            member: view,
                            records: vec![],
                            error: Some(error.to_string()),
                        })
                        .await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if last_commit.elapsed() >= Duration::from_secs(1) {
                last_commit = Instant::now();
                let positions = consumer.positions();
                let offsets: Vec<(u32, u64)> = positions
                    .iter()
                    .map(|(partition, offset)| (partition.partition, offset.0))
                    .collect();
                if offsets.is_empty() {
                    continue;
                }
                let member = consumer.member().map(|(id, _)| id);
                let invoke_ms = recorder.now_ms();
                let committed = tokio::time::timeout(
                    Duration::from_secs(10),
                    consumer.commit_offsets_sync(&positions),
                )
                .await;
                let (status, error) = match committed {
                    Ok(Ok(())) => (Status::Ok, None),
                    Ok(Err(error)) => (Status::Info, Some(error.to_string())),
                    Err(_) => (Status::Info, Some("commit timed out".to_string())),
                };
                recorder
                    .record(Op::Commit {
                        process,
                        member,
                        invoke_ms,
                        complete_ms: recorder.now_ms(),
                        status,
                        offsets,
                        error,
                    })
                    .await;
            }
        }
    }
}

/// Reads every partition from the earliest offset with a manual assignment, recording each
/// poll, until `until` says stop. Returns where it got to (partition -> next offset) and the
/// high watermarks it last saw.
async fn read_partitions(
    process: u32,
    reader: ReaderKind,
    config: &WorkloadConfig,
    recorder: &Recorder,
    mut until: impl FnMut(&BTreeMap<u32, u64>, &BTreeMap<u32, u64>) -> bool,
    mut crash: Option<(&mut watch::Receiver<Vec<u32>>, u32, u32)>,
) -> (BTreeMap<u32, u64>, BTreeMap<u32, u64>) {
    let mut positions = BTreeMap::new();
    let mut watermarks = BTreeMap::new();
    let Ok(client_config) = client_config(&config.bootstrap, format!("reader-{process}")) else {
        return (positions, watermarks);
    };
    let consumer_config = ConsumerConfig::default()
        .auto_offset_reset(AutoOffsetReset::Earliest)
        .fetch_max_wait(Duration::from_millis(200))
        .max_poll_records(500);
    let Ok(mut consumer) = Consumer::new(client_config, consumer_config) else {
        return (positions, watermarks);
    };
    let mut partitions = Vec::new();
    while partitions.is_empty() {
        match consumer.assign_topic(TOPIC).await {
            Ok(assigned) => partitions = assigned,
            Err(_) => {
                if until(&positions, &watermarks) {
                    return (positions, watermarks);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let mut session = 1;
    loop {
        if until(&positions, &watermarks) {
            return (positions, watermarks);
        }
        let invoke_ms = recorder.now_ms();
        let polled = match crash.as_mut() {
            Some((crashes, client, seen)) => tokio::select! {
                _ = crashed(crashes, *client, *seen) => None,
                polled = consumer.poll(Duration::from_millis(500)) => Some(polled),
            },
            None => Some(consumer.poll(Duration::from_millis(500)).await),
        };
        let Some(polled) = polled else {
            recorder
                .record(Op::Crash {
                    process,
                    at_ms: recorder.now_ms(),
                })
                .await;
            return (positions, watermarks);
        };
        let complete_ms = recorder.now_ms();
        for partition in &partitions {
            if let Some(position) = consumer.position(TOPIC, *partition) {
                positions.insert(*partition, position.0);
            }
            if let Some(watermark) = consumer.high_watermark(TOPIC, *partition) {
                watermarks.insert(*partition, watermark.0);
            }
        }
        match polled {
            Ok(records) => {
                recorder
                    .record(Op::Poll {
                        process,
                        reader,
                        session,
                        invoke_ms,
                        complete_ms,
                        status: Status::Ok,
                        member: None,
                        records: reads_of(&records),
                        error: None,
                    })
                    .await;
            }
            Err(error) => {
                session += 1;
                recorder
                    .record(Op::Poll {
                        process,
                        reader,
                        session,
                        invoke_ms,
                        complete_ms,
                        status: Status::Fail,
                        member: None,
                        records: vec![],
                        error: Some(error.to_string()),
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Manual reader client `client`: reads everything from the start until stopped.
pub async fn run_manual_reader(
    client: u32,
    config: WorkloadConfig,
    recorder: Recorder,
    control: Control,
) {
    while !*control.stop_all.borrow() {
        let process = recorder.new_process();
        let mut crashes = control.crashes.clone();
        let seen = crash_count(&crashes, client);
        let stop = control.stop_all.clone();
        read_partitions(
            process,
            ReaderKind::Manual,
            &config,
            &recorder,
            |_, _| *stop.borrow(),
            Some((&mut crashes, client, seen)),
        )
        .await;
    }
}

/// How the final drain ended.
#[derive(Debug, Clone, Default)]
pub struct DrainOutcome {
    /// The high watermarks it last saw, per partition.
    pub high_watermarks: BTreeMap<u32, u64>,
    /// Partitions it stopped short of (partition -> (next offset, high watermark)): empty
    /// when it caught up everywhere. Anything acknowledged above where it stopped is then
    /// counted `forgotten` by a power campaign, and the report says why.
    pub behind: BTreeMap<u32, (u64, u64)>,
}

/// After healing: one reader from the start until it reached the high watermark of every
/// partition, and the watermarks stayed put for a few polls. A drain that still makes progress
/// is not cut off: it stops early only once nothing new was read for `idle` (a cluster that
/// does not come back), and in any case after `limit`.
pub async fn drain(
    config: &WorkloadConfig,
    recorder: &Recorder,
    partitions: u32,
    idle: Duration,
    limit: Duration,
) -> DrainOutcome {
    let process = recorder.new_process();
    let started = Instant::now();
    let mut progress_at = started;
    let mut stable_polls = 0;
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut last_positions: BTreeMap<u32, u64> = BTreeMap::new();
    let (positions, watermarks) = read_partitions(
        process,
        ReaderKind::Drain,
        config,
        recorder,
        |positions, watermarks| {
            let now = Instant::now();
            if *positions != last_positions {
                progress_at = now;
                last_positions = positions.clone();
            }
            if now.duration_since(progress_at) > idle || now.duration_since(started) > limit {
                return true;
            }
            let caught_up = watermarks.len() == partitions as usize
                && watermarks
                    .iter()
                    .all(|(partition, hw)| positions.get(partition).copied().unwrap_or(0) >= *hw);
            if caught_up && *watermarks == last {
                stable_polls += 1;
            } else {
                stable_polls = 0;
            }
            last = watermarks.clone();
            stable_polls >= 4
        },
        None,
    )
    .await;
    let behind = (0..partitions)
        .filter_map(|partition| {
            let at = positions.get(&partition).copied().unwrap_or(0);
            let hw = watermarks.get(&partition).copied();
            match hw {
                Some(hw) if at >= hw => None,
                // A partition whose watermark it never learnt counts as behind from 0.
                _ => Some((partition, (at, hw.unwrap_or(0)))),
            }
        })
        .collect();
    DrainOutcome {
        high_watermarks: watermarks,
        behind,
    }
}

/// Watches the group: its committed offsets and the coordinator's assignment, every second.
pub async fn run_group_watcher(config: WorkloadConfig, recorder: Recorder, control: Control) {
    let process = recorder.new_process();
    let Ok(client_config) = client_config(&config.bootstrap, format!("watcher-{process}")) else {
        return;
    };
    let Ok(admin) = Admin::new(client_config) else {
        return;
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !*control.stop_all.borrow() {
        ticker.tick().await;
        let invoke_ms = recorder.now_ms();
        let read = tokio::time::timeout(Duration::from_secs(5), admin.group_offsets(GROUP)).await;
        if let Ok(Ok(offsets)) = read {
            let offsets = offsets
                .iter()
                .filter(|offset| offset.topic == TOPIC)
                .filter_map(|offset| {
                    offset
                        .committed
                        .as_ref()
                        .map(|committed| (offset.partition, committed.offset.0))
                })
                .collect();
            recorder
                .record(Op::CommittedRead {
                    process,
                    invoke_ms,
                    complete_ms: recorder.now_ms(),
                    status: Status::Ok,
                    offsets,
                })
                .await;
        }
        let invoke_ms = recorder.now_ms();
        let described =
            tokio::time::timeout(Duration::from_secs(5), admin.describe_group(GROUP)).await;
        if let Ok(Ok(group)) = described {
            let members = group
                .members
                .iter()
                .map(|member| MemberView {
                    member: member.member_id.clone(),
                    member_epoch: member.member_epoch.0,
                    partitions: member
                        .assignment
                        .iter()
                        .filter(|assigned| assigned.topic == TOPIC)
                        .flat_map(|assigned| assigned.partitions.iter().copied())
                        .collect(),
                })
                .collect();
            recorder
                .record(Op::GroupSnapshot {
                    invoke_ms,
                    complete_ms: recorder.now_ms(),
                    group_epoch: group.group_epoch,
                    members,
                })
                .await;
        }
    }
}
