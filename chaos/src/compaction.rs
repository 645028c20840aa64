//! The `compaction` fault kind: a compacted topic written all campaign long under every other
//! fault, read once at the end, and checked against a model of "the newest value per key".
//!
//! [`COMPACTED_TOPIC`] has [`COMPACTED_PARTITIONS`] partitions on `min(3, nodes)` replicas,
//! `cleanup.policy=compact`, `min.compaction.lag.ms=0`, a small `segment.bytes` (so its
//! leaders decide a compaction about every second of writing) and a short
//! `delete.retention.ms` ([`DELETE_RETENTION_MS`]). One writer ([`run_writer`]) sends one record
//! at a time (acks=all, idempotent) over [`KEYS`] keys (key `c<i>` always to partition
//! `i % COMPACTED_PARTITIONS`), every [`TOMBSTONE_EVERY`]th a tombstone; every write has a
//! unique id, sent as its value (none for a tombstone) and as an `id` header; half-way
//! through, the last [`RETIRED_KEYS`] keys get a last tombstone each and no more writes. The
//! fault kills the leader of one of the topic's partitions for its window. As soon as the
//! writer stops (after the faults healed), one reader ([`drain`]) reads every partition from
//! the earliest offset to its high watermark. The nodes compact with the chaos preset's
//! `retention.retention_check_ms`;
//! [`compactor_stats`] counts, from the node logs, the jobs that ran and what they removed.
//!
//! The rule ([`check`]), per acknowledged write W of key k at offset o of partition p:
//! - W read by the drain at o: fine.
//! - Otherwise W is *superseded*, and may be gone, when a later record of k in p exists: one
//!   the drain read at an offset above o, an acknowledged write of k above o, or an
//!   indeterminate tombstone of k invoked after W was acknowledged (the writer is sequential,
//!   so it landed above o if it landed at all, and it may have expired in turn).
//! - Otherwise W is k's newest record, and may be gone only if it is a tombstone invoked at
//!   least `delete.retention.ms` before the drain's last poll completed (a leader drops a
//!   tombstone only once it is older than its clock less `delete.retention.ms`, and the
//!   tombstone's timestamp is taken after its invocation); [`CLOCK_MARGIN_MS`] covers the
//!   difference between the campaign's clock and the nodes' wall clocks.
//! - Otherwise: `compacted_latest_missing` (for this topic it takes the place of `lost` and
//!   `unseen`, which exempt nothing on the other topics).
//!
//! Every record the drain read must be a write of its key and partition, with its value and
//! id (`unexpected_value` otherwise), not a definitely failed one (`aborted_read`), at the
//! offset its acknowledgement gave (`inconsistent_offsets`), once (`duplicate`: the writer is
//! idempotent), and the drain's offsets rise strictly in each partition (`non_monotonic_poll`;
//! gaps are what compaction leaves). The replicas are compared too ([`check_replicas`]). A
//! campaign whose nodes never rewrote a batch of the topic proves nothing: `compaction_idle`.
//!
//! Not checked: that the drain sees no value of a key whose newest tombstone it did not see
//! (the tombstone and the values it deleted go in one compaction job, which a reader can
//! race without any fault).

use crate::checker::{AnomalyKind, CheckReport, ReplicaEntry, ReplicaLog};
use crate::history::{KeyedRead, Op, Status};
use crate::workload::Recorder;
use cairn_client::{
    Acks, Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    Record, TopicConfig,
};
use cairn_protocol::messages::CleanupPolicy;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The compacted topic.
pub const COMPACTED_TOPIC: &str = "chaos-compacted";
pub const COMPACTED_PARTITIONS: u32 = 2;
/// Distinct keys written: few, so every key is overwritten many times.
pub const KEYS: u64 = 32;
/// Every this many writes, one is a tombstone.
pub const TOMBSTONE_EVERY: u64 = 8;
/// The last this many keys are retired half-way through the writing: each gets one last
/// write, a tombstone, so the drain meets newest tombstones long expired (every other key is
/// rewritten far more often than `delete.retention.ms`).
pub const RETIRED_KEYS: u64 = 4;
/// The topic's `delete.retention.ms`: tombstones expire during the campaign, and the drain
/// (right after the writer stops) still reads the tombstones of the last seconds.
pub const DELETE_RETENTION_MS: u64 = 5_000;
/// The topic's `segment.bytes`: about a second of the writer's records.
pub const SEGMENT_BYTES: u64 = 4_096;
/// How far the nodes' wall clocks (true between faults) and the campaign's may differ.
pub const CLOCK_MARGIN_MS: u64 = 1_000;
/// The writer's pause between two writes.
const WRITE_INTERVAL_MS: u64 = 10;
/// Records a drain poll returns at most.
const DRAIN_POLL_RECORDS_MAX: usize = 500;

/// Creates the compacted topic (after the retention topic: `retained_logs` finds that one by
/// its topic id).
pub async fn create(admin: &Admin, replication_factor: u16) -> Result<(), String> {
    let config = TopicConfig {
        cleanup_policy: Some(CleanupPolicy::Compact),
        min_compaction_lag_ms: Some(0),
        delete_retention_ms: Some(DELETE_RETENTION_MS),
        segment_bytes: Some(SEGMENT_BYTES),
        ..TopicConfig::default()
    };
    match admin
        .create_topic(
            COMPACTED_TOPIC,
            COMPACTED_PARTITIONS,
            Some(replication_factor),
            config,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(
                error.api_error(),
                Some(cairn_client::ApiError::TopicAlreadyExists { .. })
            ) =>
        {
            Ok(())
        }
        Err(error) => Err(format!("cannot create topic {COMPACTED_TOPIC}: {error}")),
    }
}

/// The key and partition of the writer's `index`th write, and whether it is a tombstone.
fn write_of(index: u64) -> (String, u32, bool) {
    let key = index % KEYS;
    (
        format!("c{key}"),
        (key % u64::from(COMPACTED_PARTITIONS)) as u32,
        index % TOMBSTONE_EVERY == TOMBSTONE_EVERY - 1,
    )
}

/// Writes one record at a time until `stop` (checked between writes), recording each write;
/// from `retire_after` on, the retired keys get a last tombstone each and no more writes.
pub async fn run_writer(
    bootstrap: String,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
    retire_after: Duration,
) {
    let started = Instant::now();
    let mut index = 0u64;
    // The retired keys whose last tombstone was acknowledged.
    let mut retired = std::collections::BTreeSet::new();
    while !*stop.borrow() {
        let process = recorder.new_process();
        let Ok(client) = ClientConfig::new(&bootstrap) else {
            return;
        };
        let client = client
            .client_id(format!("compacted-writer-{process}"))
            .connect_timeout(Duration::from_secs(1));
        let producer_config = ProducerConfig::default()
            .acks(Acks::All)
            .linger(Duration::ZERO)
            .delivery_timeout(Duration::from_secs(10))
            .request_timeout(Duration::from_secs(2))
            .enable_idempotence(true);
        let Ok(producer) = Producer::new(client, producer_config).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        while !*stop.borrow() {
            index += 1;
            let (key, partition, mut tombstone) = write_of(index);
            let retiring = index % KEYS >= KEYS - RETIRED_KEYS && started.elapsed() >= retire_after;
            if retiring {
                if retired.contains(&key) {
                    continue;
                }
                tombstone = true;
            }
            let id = format!("compacted-{index}");
            let record = if tombstone {
                Record::tombstone(key.clone())
            } else {
                Record::new(id.clone()).with_key(key.clone())
            }
            .with_header("id", id.clone());
            let invoke_ms = recorder.now_ms();
            let delivered = async {
                producer
                    .send_to(COMPACTED_TOPIC, partition, record)
                    .await?
                    .await
            }
            .await;
            if retiring && delivered.is_ok() {
                retired.insert(key.clone());
            }
            let (status, offset, error) = match delivered {
                Ok(metadata) => (Status::Ok, metadata.offset.map(|offset| offset.0), None),
                Err(error) => (
                    crate::workload::delivery_status(&error),
                    None,
                    Some(error.to_string()),
                ),
            };
            recorder
                .record(Op::KeyedSend {
                    process,
                    key,
                    id,
                    tombstone,
                    invoke_ms,
                    complete_ms: recorder.now_ms(),
                    status,
                    partition,
                    offset,
                    error,
                })
                .await;
            tokio::time::sleep(Duration::from_millis(WRITE_INTERVAL_MS)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), producer.close()).await;
    }
}

/// Reads every partition of the compacted topic from the earliest offset until it reached
/// every high watermark and they stayed put for a few polls, or `timeout` passed.
pub async fn drain(bootstrap: String, recorder: Recorder, timeout: Duration) {
    let process = recorder.new_process();
    let deadline = Instant::now() + timeout;
    let Ok(client) = ClientConfig::new(&bootstrap) else {
        return;
    };
    let client = client
        .client_id(format!("compacted-drain-{process}"))
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1));
    let consumer_config = ConsumerConfig::default()
        .auto_offset_reset(AutoOffsetReset::Earliest)
        .fetch_max_wait(Duration::from_millis(200))
        .max_poll_records(DRAIN_POLL_RECORDS_MAX);
    let Ok(mut consumer) = Consumer::new(client, consumer_config) else {
        return;
    };
    let mut partitions = Vec::new();
    while partitions.is_empty() {
        if Instant::now() > deadline {
            return;
        }
        match consumer.assign_topic(COMPACTED_TOPIC).await {
            Ok(assigned) => partitions = assigned,
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    let mut stable_polls = 0;
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    while Instant::now() < deadline && stable_polls < 4 {
        let invoke_ms = recorder.now_ms();
        let polled = consumer.poll(Duration::from_millis(500)).await;
        let complete_ms = recorder.now_ms();
        let (status, records, error) = match polled {
            Ok(records) => (
                Status::Ok,
                records
                    .iter()
                    .map(|record| KeyedRead {
                        partition: record.partition,
                        offset: record.offset.0,
                        key: crate::checker::value_text(record.key.as_deref()),
                        value: record
                            .value
                            .as_deref()
                            .map(|value| String::from_utf8_lossy(value).into_owned()),
                        id: record
                            .headers
                            .iter()
                            .find(|header| header.key == "id")
                            .map(|header| crate::checker::value_text(header.value.as_deref())),
                    })
                    .collect(),
                None,
            ),
            Err(error) => (Status::Fail, Vec::new(), Some(error.to_string())),
        };
        recorder
            .record(Op::KeyedPoll {
                process,
                invoke_ms,
                complete_ms,
                status,
                records,
                error,
            })
            .await;
        let mut watermarks = BTreeMap::new();
        let mut caught_up = true;
        for partition in &partitions {
            let position = consumer.position(COMPACTED_TOPIC, *partition);
            match consumer.high_watermark(COMPACTED_TOPIC, *partition) {
                Some(hw) => {
                    watermarks.insert(*partition, hw.0);
                    caught_up &= position.is_some_and(|position| position.0 >= hw.0);
                }
                None => caught_up = false,
            }
        }
        if caught_up && watermarks == last {
            stable_polls += 1;
        } else {
            stable_polls = 0;
        }
        last = watermarks;
    }
}

/// One write of the compacted topic, as [`check`] indexes it.
struct Write<'a> {
    key: &'a str,
    tombstone: bool,
    status: Status,
    partition: u32,
    offset: Option<u64>,
    invoke_ms: u64,
    complete_ms: u64,
}

/// The compacted topic's writes and drain reads, indexed for the rule of the module docs.
struct Model<'a> {
    writes: HashMap<&'a str, Write<'a>>,
    reads: Vec<&'a KeyedRead>,
    /// When the drain's last successful poll completed.
    drain_end_ms: Option<u64>,
    /// The highest offset the drain read a record of each (partition, key) at.
    newest_read: HashMap<(u32, &'a str), u64>,
    /// The highest acknowledged offset of each (partition, key).
    newest_acked: HashMap<(u32, &'a str), u64>,
    /// Invocation times of the indeterminate tombstones of each (partition, key).
    open_tombstones: HashMap<(u32, &'a str), Vec<u64>>,
}

impl<'a> Model<'a> {
    fn new(ops: &'a [Op]) -> Model<'a> {
        let mut model = Model {
            writes: HashMap::new(),
            reads: Vec::new(),
            drain_end_ms: None,
            newest_read: HashMap::new(),
            newest_acked: HashMap::new(),
            open_tombstones: HashMap::new(),
        };
        for op in ops {
            match op {
                Op::KeyedSend {
                    key,
                    id,
                    tombstone,
                    invoke_ms,
                    complete_ms,
                    status,
                    partition,
                    offset,
                    ..
                } => {
                    let offset = offset.filter(|_| *status == Status::Ok);
                    let slot = (*partition, key.as_str());
                    if let Some(offset) = offset {
                        let newest = model.newest_acked.entry(slot).or_default();
                        *newest = (*newest).max(offset);
                    } else if *tombstone && *status == Status::Info {
                        model
                            .open_tombstones
                            .entry(slot)
                            .or_default()
                            .push(*invoke_ms);
                    }
                    model.writes.insert(
                        id,
                        Write {
                            key,
                            tombstone: *tombstone,
                            status: *status,
                            partition: *partition,
                            offset,
                            invoke_ms: *invoke_ms,
                            complete_ms: *complete_ms,
                        },
                    );
                }
                Op::KeyedPoll {
                    status: Status::Ok,
                    records,
                    complete_ms,
                    ..
                } => {
                    for read in records {
                        let newest = model
                            .newest_read
                            .entry((read.partition, read.key.as_str()))
                            .or_default();
                        *newest = (*newest).max(read.offset);
                    }
                    model.reads.extend(records);
                    model.drain_end_ms = Some(model.drain_end_ms.unwrap_or(0).max(*complete_ms));
                }
                _ => {}
            }
        }
        model
    }

    /// Whether a later record of `write`'s key (acknowledged at `offset`) may have replaced
    /// it: one the drain read above `offset`, one acknowledged above it, or an indeterminate
    /// tombstone invoked after `write` was acknowledged.
    fn superseded(&self, write: &Write, offset: u64) -> bool {
        let slot = (write.partition, write.key);
        self.newest_read
            .get(&slot)
            .is_some_and(|newest| *newest > offset)
            || self
                .newest_acked
                .get(&slot)
                .is_some_and(|newest| *newest > offset)
            || self.open_tombstones.get(&slot).is_some_and(|invoked| {
                invoked
                    .iter()
                    .any(|invoke_ms| *invoke_ms >= write.complete_ms)
            })
    }

    /// The acknowledged writes as (id, write, offset), by partition and offset.
    fn acked(&self) -> Vec<(&'a str, &Write<'a>, u64)> {
        let mut acked: Vec<_> = self
            .writes
            .iter()
            .filter_map(|(id, write)| write.offset.map(|offset| (*id, write, offset)))
            .collect();
        acked.sort_by_key(|(_, write, offset)| (write.partition, *offset));
        acked
    }
}

/// Adds the compacted topic's anomalies and statistics to `report` (see the module docs).
/// Nothing when the history has no write or read of it.
pub fn check(ops: &[Op], report: &mut CheckReport) {
    let model = Model::new(ops);
    if model.writes.is_empty() && model.reads.is_empty() {
        return;
    }
    for write in model.writes.values() {
        report.bump(
            match write.status {
                Status::Ok => "compacted_sends_ok",
                Status::Fail => "compacted_sends_fail",
                Status::Info => "compacted_sends_info",
            },
            1,
        );
        if write.tombstone && write.status == Status::Ok {
            report.bump("compacted_tombstones_ok", 1);
        }
    }
    report.bump("compacted_records_read", model.reads.len() as u64);

    // Offsets rise strictly per partition; every read is one write, once, at its offset.
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut places: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
    let mut read_ids: HashMap<(u32, u64), &str> = HashMap::new();
    for read in &model.reads {
        let at = (read.partition, read.offset);
        if let Some(previous) = last.insert(read.partition, read.offset) {
            if read.offset <= previous {
                report.add(AnomalyKind::NonMonotonicPoll, || {
                    format!(
                        "{COMPACTED_TOPIC} drain: partition {} read {} after {previous}",
                        read.partition, read.offset
                    )
                });
            }
        }
        let Some(id) = read.id.as_deref() else {
            report.add(AnomalyKind::UnexpectedValue, || {
                format!(
                    "{COMPACTED_TOPIC} {}@{}: key {:?} value {:?} without an id header",
                    read.partition, read.offset, read.key, read.value
                )
            });
            continue;
        };
        let Some(write) = model.writes.get(id) else {
            report.add(AnomalyKind::UnexpectedValue, || {
                format!(
                    "{COMPACTED_TOPIC} {}@{}: {id:?} was never written",
                    read.partition, read.offset
                )
            });
            continue;
        };
        let value_matches = match &read.value {
            None => write.tombstone,
            Some(value) => !write.tombstone && value == id,
        };
        if write.key != read.key || write.partition != read.partition || !value_matches {
            report.add(AnomalyKind::UnexpectedValue, || {
                format!(
                    "{COMPACTED_TOPIC} {}@{}: read key {:?} value {:?} id {id:?}; written as \
                     key {:?} to partition {}{}",
                    read.partition,
                    read.offset,
                    read.key,
                    read.value,
                    write.key,
                    write.partition,
                    if write.tombstone { ", a tombstone" } else { "" }
                )
            });
        }
        if write.status == Status::Fail {
            report.add(AnomalyKind::AbortedRead, || {
                format!("{COMPACTED_TOPIC} {id:?} (definitely failed) read at {at:?}")
            });
        }
        if let Some(offset) = write.offset {
            if (write.partition, offset) != at {
                report.add(AnomalyKind::InconsistentOffsets, || {
                    format!(
                        "{COMPACTED_TOPIC} {id:?} acknowledged at {}@{offset}, read at {}@{}",
                        write.partition, at.0, at.1
                    )
                });
            }
        }
        places.entry(id).or_default().push(at);
        if let Some(other) = read_ids.insert(at, id) {
            if other != id {
                report.add(AnomalyKind::InconsistentOffsets, || {
                    format!(
                        "{COMPACTED_TOPIC} {}@{} read as {other:?} and {id:?}",
                        at.0, at.1
                    )
                });
            }
        }
    }
    for (id, at) in &places {
        if at.len() > 1 {
            report.add(AnomalyKind::Duplicate, || {
                format!("{COMPACTED_TOPIC} {id:?} (idempotent writer) read at {at:?}")
            });
        }
    }

    // Every acknowledged write: read, superseded, an expired tombstone, or missing.
    for (id, write, offset) in model.acked() {
        if read_ids.get(&(write.partition, offset)) == Some(&id) {
            report.bump("compacted_acked_read", 1);
            continue;
        }
        if model.superseded(write, offset) {
            report.bump("compacted_acked_superseded_gone", 1);
            continue;
        }
        let expired = write.tombstone
            && model
                .drain_end_ms
                .is_some_and(|end| write.invoke_ms + DELETE_RETENTION_MS <= end + CLOCK_MARGIN_MS);
        if expired {
            report.bump("compacted_tombstones_expired", 1);
            continue;
        }
        report.add(AnomalyKind::CompactedLatestMissing, || {
            format!(
                "{COMPACTED_TOPIC} key {:?}: its newest write {id:?}{} acknowledged at {}@{offset} \
                 ({} ms) is not in the drain{}",
                write.key,
                if write.tombstone { " (a tombstone)" } else { "" },
                write.partition,
                write.complete_ms,
                match model.drain_end_ms {
                    Some(end) => format!(", which ended at {end} ms"),
                    None => ", which read nothing".to_string(),
                }
            )
        });
    }
}

/// The compacted topic's replicas, read from the stopped nodes' files and settled to the
/// largest compaction decision any of them holds (`crate::replicas::settle_compaction`):
/// below the committed bound (past every acknowledged or read offset) they agree at every
/// offset (`replica_divergence`), a majority holds each offset (`replica_missing`), and every
/// acknowledged write sits at its offset on a majority (`replica_missing`), unless compaction
/// may have removed it there (superseded as in [`check`], or a tombstone: the nodes went on
/// deciding after the drain).
pub fn check_replicas(
    ops: &[Op],
    logs: &[ReplicaLog],
    replication_factor: usize,
    report: &mut CheckReport,
) {
    let model = Model::new(ops);
    let mut bound: BTreeMap<u32, u64> = BTreeMap::new();
    let mut expected: HashMap<(u32, u64), (&str, bool)> = HashMap::new();
    for (id, write, offset) in model.acked() {
        let may_be_gone = write.tombstone || model.superseded(write, offset);
        let text = if write.tombstone {
            crate::checker::TOMBSTONE_TEXT
        } else {
            id
        };
        expected.insert((write.partition, offset), (text, may_be_gone));
        let entry = bound.entry(write.partition).or_default();
        *entry = (*entry).max(offset + 1);
    }
    for read in &model.reads {
        let entry = bound.entry(read.partition).or_default();
        *entry = (*entry).max(read.offset + 1);
    }
    let majority = replication_factor / 2 + 1;
    for partition in 0..COMPACTED_PARTITIONS {
        let replicas: Vec<&ReplicaLog> = logs
            .iter()
            .filter(|log| log.partition == partition)
            .collect();
        report.bump("compacted_replica_logs", replicas.len() as u64);
        let limit = bound.get(&partition).copied().unwrap_or(0);
        let mut holders: BTreeMap<u64, Vec<(u32, &ReplicaEntry)>> = BTreeMap::new();
        for log in &replicas {
            for entry in log.entries.iter().filter(|entry| entry.offset < limit) {
                holders
                    .entry(entry.offset)
                    .or_default()
                    .push((log.node, entry));
            }
        }
        let log_start = replicas.iter().map(|log| log.log_start).max().unwrap_or(0);
        for offset in log_start..limit {
            report.bump("compacted_replica_offsets_compared", 1);
            let held = holders.get(&offset).map(Vec::as_slice).unwrap_or(&[]);
            if let Some((first_node, first)) = held.first() {
                if let Some((node, entry)) = held
                    .iter()
                    .find(|(_, entry)| entry.epoch != first.epoch || entry.value != first.value)
                {
                    report.add(AnomalyKind::ReplicaDivergence, || {
                        format!(
                            "{COMPACTED_TOPIC} {partition}@{offset}: node {first_node} holds \
                             {:?} (epoch {}), node {node} holds {:?} (epoch {})",
                            first.value, first.epoch, entry.value, entry.epoch
                        )
                    });
                }
            }
            if held.len() < majority {
                report.add(AnomalyKind::ReplicaMissing, || {
                    format!(
                        "{COMPACTED_TOPIC} {partition}@{offset} (below the committed bound \
                         {limit}) is held by {} replicas, fewer than a majority of {majority}",
                        held.len()
                    )
                });
                continue;
            }
            if let Some((text, may_be_gone)) = expected.get(&(partition, offset)) {
                let holding = held
                    .iter()
                    .filter(|(_, entry)| {
                        let value = entry.value.as_deref();
                        value == Some(*text)
                            || (*may_be_gone && value == Some(crate::checker::COMPACTED_TEXT))
                    })
                    .count();
                if holding < majority {
                    report.add(AnomalyKind::ReplicaMissing, || {
                        format!(
                            "{COMPACTED_TOPIC} {text:?} acknowledged at {partition}@{offset} is \
                             held there by {holding} replicas, fewer than a majority of \
                             {majority}"
                        )
                    });
                }
            }
        }
    }
}

/// The compacted topic's replica logs among every node's `(topic id, log)`: the topic created
/// after the workload's topic and, when `retention_on`, the retention topic (the consumer
/// groups' internal topic comes with the first group request, after all of them).
pub fn compacted_logs(per_node: &[Vec<(u64, ReplicaLog)>], retention_on: bool) -> Vec<ReplicaLog> {
    let mut ids: Vec<u64> = per_node.iter().flatten().map(|(topic, _)| *topic).collect();
    ids.sort();
    ids.dedup();
    let Some(&id) = ids.get(1 + usize::from(retention_on)) else {
        return Vec::new();
    };
    per_node
        .iter()
        .flatten()
        .filter(|(topic, _)| *topic == id)
        .map(|(_, log)| log.clone())
        .collect()
}

/// What the nodes' compactors did, from their logs (one `compacted` line per finished job,
/// one `compaction stopped` line per failed one; a log outlives its node's restarts, which
/// reset the `/metrics` counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactorStats {
    pub jobs: u64,
    pub jobs_failed: u64,
    pub batches_rewritten: u64,
    pub bytes_removed: u64,
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Adds the counts of one node log's text to `stats`.
pub fn count_log(text: &str, stats: &mut CompactorStats) {
    for line in text.lines() {
        if line.contains("compaction stopped") {
            stats.jobs_failed += 1;
            continue;
        }
        if !line.contains(" compacted ") {
            continue;
        }
        let (Some(rewritten), Some(before), Some(after)) = (
            field(line, "rewritten"),
            field(line, "bytes_before"),
            field(line, "bytes_after"),
        ) else {
            continue;
        };
        stats.jobs += 1;
        stats.batches_rewritten += rewritten;
        stats.bytes_removed += before.saturating_sub(after);
    }
}

/// Reads `node-<i>.log` of every node in `out` and adds what their compactors did to
/// `report`: statistics, and `compaction_idle` when no job rewrote a batch.
pub fn compactor_stats(out: &Path, nodes: u32, report: &mut CheckReport) -> CompactorStats {
    let mut stats = CompactorStats::default();
    for node in 1..=nodes {
        if let Ok(text) = std::fs::read_to_string(out.join(format!("node-{node}.log"))) {
            count_log(&text, &mut stats);
        }
    }
    report.bump("compaction_jobs", stats.jobs);
    report.bump("compaction_jobs_failed", stats.jobs_failed);
    report.bump("compaction_batches_rewritten", stats.batches_rewritten);
    report.bump("compaction_bytes_removed", stats.bytes_removed);
    if stats.batches_rewritten == 0 || stats.bytes_removed == 0 {
        report.add(AnomalyKind::CompactionIdle, || {
            format!(
                "the nodes' logs show {} compaction jobs rewriting {} batches and removing {} \
                 bytes: compaction never removed anything",
                stats.jobs, stats.batches_rewritten, stats.bytes_removed
            )
        });
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_both_partitions_and_one_write_in_eight_is_a_tombstone() {
        let writes: Vec<_> = (1..=64).map(write_of).collect();
        assert_eq!(writes[0], ("c1".to_string(), 1, false));
        assert_eq!(writes[1], ("c2".to_string(), 0, false));
        assert_eq!(
            writes.iter().filter(|(_, _, tombstone)| *tombstone).count(),
            8
        );
        // A key always goes to one partition.
        assert!(writes
            .iter()
            .all(|(key, partition, _)| key[1..].parse::<u32>().unwrap() % 2 == *partition));
    }

    #[test]
    fn the_compactor_counts_come_from_its_log_lines() {
        let log = "\
2026-12-04T13:00:00Z  INFO cairn_node::compactor: compacted partition=t/0 below=40 rewritten=3 read=9 bytes_before=1000 bytes_after=600 elapsed_ms=2
2026-12-04T13:00:01Z  INFO cairn_node::compactor: compacted partition=t/1 below=12 rewritten=0 read=2 bytes_before=300 bytes_after=300 elapsed_ms=0
2026-12-04T13:00:02Z  WARN cairn_node::compactor: compaction stopped; the next decision tries again partition=t/0 below=50 error=gone
2026-12-04T13:00:03Z  INFO cairn_node::node: ready
";
        let mut stats = CompactorStats::default();
        count_log(log, &mut stats);
        assert_eq!(
            stats,
            CompactorStats {
                jobs: 2,
                jobs_failed: 1,
                batches_rewritten: 3,
                bytes_removed: 400,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-1.log"), log).unwrap();
        let mut report = CheckReport::default();
        compactor_stats(dir.path(), 2, &mut report);
        assert!(report.is_clean());
        assert_eq!(report.stats["compaction_bytes_removed"], 400);
        // Logs without a rewriting job: compaction never ran.
        std::fs::write(
            dir.path().join("node-1.log"),
            &log[log.find("\n").unwrap()..],
        )
        .unwrap();
        let mut report = CheckReport::default();
        compactor_stats(dir.path(), 2, &mut report);
        assert_eq!(report.anomalies[&AnomalyKind::CompactionIdle].count, 1);
    }
}
