//! The `retention` fault kind (issue 14): retention racing a lagging follower.
//!
//! The workload's topic keeps every record (the checker must read each acknowledged value
//! to call it not lost), so retention gets a topic of its own: [`RETAINED_TOPIC`], one
//! partition on three replicas with [`RETAINED_RETENTION_MS`], written by one producer for the
//! whole campaign ([`run_writer`]). A `retention` fault pauses (SIGSTOP) one follower of that
//! partition for 3-10 s, so the leader's retention moves the log start past the follower's
//! log end; at the end of the window the follower wakes and must start its log at the
//! leader's log start and catch up. Other faults (a kill of every node) also restart the
//! partition with a fully expired log.
//!
//! What is checked, with zero anomalies expected (records removed by retention are never
//! expected to be read: nothing of this topic is read by the workload, so nothing here is
//! "lost" or "unseen"):
//! - `retained_offset_reused`: an acknowledgement at an offset at or below an earlier one
//!   (offsets are never reused, through retention, resets and restarts);
//! - `retained_replica_behind`: a replica whose log (read from the stopped node's files)
//!   ends below the high watermark the leader reported after the drain: a follower that
//!   never caught up, or a partition that never got a leader again.

use crate::checker::{AnomalyKind, CheckReport, ReplicaLog};
use cairn_client::{Acks, Admin, ClientConfig, Producer, ProducerConfig, Record, TopicConfig};
use std::time::Duration;
use tokio::sync::watch;

/// The topic retention races on.
pub const RETAINED_TOPIC: &str = "chaos-retained";

/// Shorter than the shortest fault window (3 s), so a follower paused for one falls behind
/// the leader's log start (retention runs every `retention_check_ms`: the chaos preset's).
pub const RETAINED_RETENTION_MS: u64 = 1_500;

/// The writer's pace: enough batches that every retention pass removes some.
const WRITE_INTERVAL_MS: u64 = 20;

/// Bytes of each record's padding: at one record per [`WRITE_INTERVAL_MS`] about 400 KB/s,
/// so a follower paused for 3 s falls off the leader's in-memory tail (`tail_bytes_max` is
/// 256 KiB in the test preset the campaign's nodes run; records may not exceed its 16 KiB
/// `record_bytes_max`) and must be caught up from the log, where retention passed it. With
/// small records the tail alone caught paused followers up, and the fault never made a
/// follower start its log at the leader's log start.
const RECORD_PADDING_BYTES: usize = 8 * 1024;

/// Creates the retained topic (before the workload starts, so its topic id is the one after
/// the workload's topic: see [`retained_logs`]).
pub async fn create(admin: &Admin, replication_factor: u16) -> Result<(), String> {
    match admin
        .create_topic(
            RETAINED_TOPIC,
            1,
            Some(replication_factor),
            TopicConfig {
                retention_ms: Some(RETAINED_RETENTION_MS),
                retention_bytes: None,
                ..TopicConfig::default()
            },
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
        Err(error) => Err(format!("cannot create topic {RETAINED_TOPIC}: {error}")),
    }
}

/// What the writer saw: acknowledgements, and those at an offset not above an earlier one.
#[derive(Debug, Default)]
pub struct WriterOutcome {
    pub acks: u64,
    pub reused: Vec<String>,
}

/// Writes one record every [`WRITE_INTERVAL_MS`] (acks=all, one at a time) until `stop`.
pub async fn run_writer(bootstrap: String, mut stop: watch::Receiver<bool>) -> WriterOutcome {
    let mut outcome = WriterOutcome::default();
    let mut last_offset: Option<u64> = None;
    let mut index = 0u64;
    while !*stop.borrow() {
        let Ok(client) = ClientConfig::new(&bootstrap) else {
            return outcome;
        };
        let producer_config = ProducerConfig::default()
            .acks(Acks::All)
            .linger(Duration::ZERO)
            .delivery_timeout(Duration::from_secs(10))
            .request_timeout(Duration::from_secs(2));
        let producer = tokio::select! {
            made = Producer::new(client, producer_config) => made,
            _ = stop.changed() => return outcome,
        };
        let Ok(producer) = producer else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        while !*stop.borrow() {
            index += 1;
            let value = format!("retained-{index}");
            let mut bytes = value.clone().into_bytes();
            bytes.resize(bytes.len() + RECORD_PADDING_BYTES, b'.');
            let delivered = async {
                producer
                    .send_to(RETAINED_TOPIC, 0, Record::new(bytes))
                    .await?
                    .await
            };
            let delivered = tokio::select! {
                delivered = delivered => delivered,
                _ = stop.changed() => return outcome,
            };
            if let Ok(Some(offset)) = delivered.map(|metadata| metadata.offset) {
                outcome.acks += 1;
                if last_offset.is_some_and(|last| offset.0 <= last) {
                    outcome.reused.push(format!(
                        "{value:?} acknowledged at {}, not above an earlier {}",
                        offset.0,
                        last_offset.unwrap_or_default()
                    ));
                }
                last_offset = Some(last_offset.map_or(offset.0, |last| last.max(offset.0)));
            }
            tokio::time::sleep(Duration::from_millis(WRITE_INTERVAL_MS)).await;
        }
    }
    outcome
}

/// A follower of the retained partition to pause: a replica that does not lead it, or
/// `fallback` when the leader cannot be learned.
pub async fn follower(admin: &Admin, nodes: u32, fallback: u32) -> u32 {
    let described =
        tokio::time::timeout(Duration::from_secs(2), admin.describe_topic(RETAINED_TOPIC)).await;
    if let Ok(Ok(described)) = described {
        if let Some(partition) = described.partitions.first() {
            let leader = partition.leader.map(|leader| leader.0);
            if let Some(node) = partition
                .replicas
                .iter()
                .map(|replica| replica.0)
                .find(|node| Some(*node) != leader && (1..=nodes).contains(node))
            {
                return node;
            }
        }
    }
    fallback
}

/// The retained topic's replica logs among every node's `(topic id, log)`: the second-lowest
/// topic id (the workload's topic has the lowest; the consumer groups' internal topic comes
/// with the first group request, after both).
pub fn retained_logs(per_node: &[Vec<(u64, ReplicaLog)>]) -> Vec<ReplicaLog> {
    let mut ids: Vec<u64> = per_node.iter().flatten().map(|(topic, _)| *topic).collect();
    ids.sort();
    ids.dedup();
    let Some(&id) = ids.get(1) else {
        return Vec::new();
    };
    per_node
        .iter()
        .flatten()
        .filter(|(topic, log)| *topic == id && log.partition == 0)
        .map(|(_, log)| log.clone())
        .collect()
}

/// Where a replica's log ends: after its last entry, or at its log start when retention
/// emptied it.
fn log_end(log: &ReplicaLog) -> u64 {
    log.entries
        .last()
        .map_or(log.log_start, |entry| entry.offset + 1)
}

/// The retained partition's high watermark as its leader reports it, once one does (a few
/// tries: the drain may have just ended a leader change).
pub async fn high_watermark(admin: &Admin) -> Option<u64> {
    for _ in 0..10 {
        let described =
            tokio::time::timeout(Duration::from_secs(2), admin.describe_topic(RETAINED_TOPIC))
                .await;
        if let Ok(Ok(described)) = described {
            if let Some(partition) = described.partitions.first() {
                if partition.leader.is_some() {
                    return Some(partition.high_watermark.0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Adds the retained topic's anomalies to `report` (see the module docs). `high_watermark`
/// was read from the leader after the drain, long after the writer stopped: every replica
/// must hold the log up to it.
pub fn check(
    writer: &WriterOutcome,
    logs: &[ReplicaLog],
    replication_factor: usize,
    high_watermark: Option<u64>,
    report: &mut CheckReport,
) {
    report.bump("retained_acks", writer.acks);
    for example in &writer.reused {
        report.add(AnomalyKind::RetainedOffsetReused, || example.clone());
    }
    let Some(high_watermark) = high_watermark else {
        report.add(AnomalyKind::RetainedReplicaBehind, || {
            format!("{RETAINED_TOPIC} had no leader after the drain")
        });
        return;
    };
    if logs.len() != replication_factor {
        report.add(AnomalyKind::RetainedReplicaBehind, || {
            format!(
                "{} replicas of {RETAINED_TOPIC} found, {replication_factor} expected",
                logs.len()
            )
        });
    }
    for log in logs {
        let end = log_end(log);
        if end < high_watermark {
            report.add(AnomalyKind::RetainedReplicaBehind, || {
                format!(
                    "node {}'s replica of {RETAINED_TOPIC} ends at {end}, below the high \
                     watermark {high_watermark}",
                    log.node
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::ReplicaEntry;

    fn log(node: u32, log_start: u64, offsets: &[u64]) -> ReplicaLog {
        ReplicaLog {
            node,
            partition: 0,
            log_start,
            entries: offsets
                .iter()
                .map(|&offset| ReplicaEntry {
                    offset,
                    epoch: 1,
                    value: Some(format!("retained-{offset}")),
                })
                .collect(),
        }
    }

    fn anomalies(writer: &WriterOutcome, logs: &[ReplicaLog], high: Option<u64>) -> Vec<String> {
        let mut report = CheckReport::default();
        check(writer, logs, 3, high, &mut report);
        report
            .anomalies
            .iter()
            .map(|(kind, group)| format!("{}:{}", kind.name(), group.count))
            .collect()
    }

    #[test]
    fn expired_records_are_expected_but_a_replica_behind_or_a_reused_offset_is_not() {
        let writer = WriterOutcome {
            acks: 40,
            reused: Vec::new(),
        };
        // Each replica expired a different prefix, one emptied its log entirely: all fine.
        let fine = [
            log(1, 30, &[30, 31]),
            log(2, 32, &[]),
            log(3, 10, &[10, 31]),
        ];
        assert_eq!(anomalies(&writer, &fine, Some(32)), Vec::<String>::new());
        // A follower that never caught up.
        let behind = [
            log(1, 30, &[30, 31]),
            log(2, 5, &[5, 6]),
            log(3, 10, &[10, 31]),
        ];
        assert_eq!(
            anomalies(&writer, &behind, Some(32)),
            vec!["retained_replica_behind:1"]
        );
        // No leader after the drain, and an acknowledgement at a reused offset.
        let reused = WriterOutcome {
            acks: 40,
            reused: vec!["\"retained-9\" acknowledged at 3, not above an earlier 7".into()],
        };
        assert_eq!(
            anomalies(&reused, &fine, None),
            vec!["retained_offset_reused:1", "retained_replica_behind:1"]
        );
    }
}
