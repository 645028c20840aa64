//! Reads the partition logs a stopped node holds, straight from its sled files, so the checker
//! compares what each replica really stored (not what a leader serves).

use crate::checker::{ReplicaEntry, ReplicaLog};
use cairn_protocol::compaction::{compact_log, CompactionDecision};
use cairn_protocol::RecordBatch;
use cairn_storage::sled_store::SledStore;
use cairn_storage::{LogStore, PartitionLog};
use std::collections::BTreeMap;
use std::path::Path;

/// Bytes read from a log per call.
const READ_BYTES_MAX: usize = 1 << 20;

/// A log name of a topic partition: `t<topic id>-<partition>`.
pub fn parse_log_name(name: &str) -> Option<(u64, u32)> {
    let (topic, partition) = name.strip_prefix('t')?.split_once('-')?;
    Some((topic.parse().ok()?, partition.parse().ok()?))
}

/// One replica's stored log, as batches.
pub struct StoredLog {
    pub topic: u64,
    pub partition: u32,
    pub node: u32,
    pub log_start: u64,
    pub batches: Vec<RecordBatch>,
}

/// Every topic partition log of the stopped node whose store is at `store_dir`, as
/// (topic id, log). `node` labels the logs. Each log is compacted by the largest decision it
/// holds (see [`settle_compaction`] for the comparison across replicas).
pub fn read_node_logs(node: u32, store_dir: &Path) -> Result<Vec<(u64, ReplicaLog)>, String> {
    let mut stored = vec![read_node_batches(node, store_dir)?];
    settle_compaction(&mut stored)?;
    stored.remove(0).into_iter().map(replica_log).collect()
}

/// Every topic partition log of a stopped node, batch by batch.
pub fn read_node_batches(node: u32, store_dir: &Path) -> Result<Vec<StoredLog>, String> {
    let store = SledStore::open(store_dir)
        .map_err(|error| format!("open {}: {error}", store_dir.display()))?;
    let mut logs = Vec::new();
    let names = store
        .log_names()
        .map_err(|error| format!("list the logs of {}: {error}", store_dir.display()))?;
    for name in names {
        let Some((topic, partition)) = parse_log_name(&name) else {
            continue;
        };
        let log = store
            .open_log(&name)
            .map_err(|error| format!("open log {name}: {error}"))?;
        let end = log.log_end();
        let mut next = log.log_start();
        let mut batches = Vec::new();
        while next < end {
            let read = log
                .read(next, end, READ_BYTES_MAX)
                .map_err(|error| format!("read {name} at {next}: {error}"))?;
            let Some(last) = read.last() else {
                return Err(format!(
                    "{name}: no batch at {next} below the log end {end}"
                ));
            };
            next = last.next_offset();
            batches.extend(read);
        }
        logs.push(StoredLog {
            topic,
            partition,
            node,
            log_start: log.log_start().0,
            batches,
        });
    }
    Ok(logs)
}

/// Compacts every replica of a partition by the largest compaction decision any of them
/// holds (the merge of every decision marker in their logs). A replica stopped before its
/// compactor applied the newest decision, or that had not yet received it, then compares
/// equal to one that did: compaction is deterministic, idempotent and monotone, so this is
/// the log every replica converges to (docs/compaction.md). Logs without markers (the
/// campaign's own topic) are left exactly as read.
pub fn settle_compaction(per_node: &mut [Vec<StoredLog>]) -> Result<(), String> {
    let mut decisions: BTreeMap<(u64, u32), CompactionDecision> = BTreeMap::new();
    for log in per_node.iter().flatten() {
        for decision in log
            .batches
            .iter()
            .filter_map(CompactionDecision::from_batch)
        {
            decisions
                .entry((log.topic, log.partition))
                .and_modify(|merged| *merged = merged.merge(decision))
                .or_insert(decision);
        }
    }
    for log in per_node.iter_mut().flatten() {
        if let Some(decision) = decisions.get(&(log.topic, log.partition)) {
            log.batches = compact_log(&log.batches, decision, COMPACTION_INDEX_BYTES_MAX).map_err(
                |error| {
                    format!(
                        "compact t{}-{} of node {}: {error}",
                        log.topic, log.partition, log.node
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// Bytes of keys one pass of a settled comparison may index, per partition (the node's
/// default budget; any budget gives the same log).
const COMPACTION_INDEX_BYTES_MAX: usize = 64 << 20;

/// The checker's view of a stored log: one entry per record (a control batch's offsets as
/// entries without a value), at the offsets the records have (a compacted log has gaps).
pub fn replica_log(log: StoredLog) -> Result<(u64, ReplicaLog), String> {
    let mut entries = Vec::new();
    for batch in &log.batches {
        let epoch = batch.leader_epoch().0;
        if batch.header().is_control() {
            for offset in batch.base_offset().0..batch.next_offset().0 {
                entries.push(ReplicaEntry {
                    offset,
                    epoch,
                    value: None,
                });
            }
            continue;
        }
        // Offsets a compaction removed are held as such, so that replicas settled to the
        // same decision agree there and a majority still holds every offset.
        let mut next = batch.base_offset().0;
        let compacted = |offset| ReplicaEntry {
            offset,
            epoch,
            value: Some(crate::checker::COMPACTED_TEXT.to_owned()),
        };
        for record in batch.records() {
            let record = record.map_err(|error| {
                format!(
                    "t{}-{} of node {}: {error}",
                    log.topic, log.partition, log.node
                )
            })?;
            entries.extend((next..record.offset.0).map(compacted));
            next = record.offset.0 + 1;
            entries.push(ReplicaEntry {
                offset: record.offset.0,
                epoch,
                value: Some(crate::checker::value_text(record.value.as_deref())),
            });
        }
        entries.extend((next..batch.next_offset().0).map(compacted));
    }
    Ok((
        log.topic,
        ReplicaLog {
            node: log.node,
            partition: log.partition,
            log_start: log.log_start,
            entries,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::{Record, RecordBatchBuilder};
    use cairn_protocol::{Epoch, Offset};

    #[test]
    fn log_names_parse_and_others_are_skipped() {
        assert_eq!(parse_log_name("t12-3"), Some((12, 3)));
        assert_eq!(parse_log_name("__meta"), None);
        assert_eq!(parse_log_name("tx-1"), None);
    }

    #[test]
    fn a_stores_logs_read_back_with_their_epochs_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut log = store.open_log("t5-1").unwrap();
            let mut builder = RecordBatchBuilder::new(1);
            builder.push(&Record::new("a"));
            builder.push(&Record::new("b"));
            log.append(&builder.build().stamped(Offset(0), Epoch(1)))
                .unwrap();
            log.append(&RecordBatchBuilder::control_marker(2).stamped(Offset(2), Epoch(2)))
                .unwrap();
            store.open_log("__meta").unwrap();
            store.flush().unwrap();
        }
        let logs = read_node_logs(7, dir.path()).unwrap();
        assert_eq!(logs.len(), 1);
        let (topic, log) = &logs[0];
        assert_eq!(*topic, 5);
        assert_eq!((log.node, log.partition, log.log_start), (7, 1, 0));
        let entries: Vec<(u64, u64, Option<&str>)> = log
            .entries
            .iter()
            .map(|entry| (entry.offset, entry.epoch, entry.value.as_deref()))
            .collect();
        assert_eq!(
            entries,
            vec![(0, 1, Some("a")), (1, 1, Some("b")), (2, 2, None)]
        );
    }

    fn keyed(keys: &[&str], timestamp_ms: i64) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(timestamp_ms);
        for key in keys {
            builder.push(
                &Record::new(format!("{key}@{timestamp_ms}"))
                    .with_key(key.to_string())
                    .with_timestamp_ms(timestamp_ms),
            );
        }
        builder.build()
    }

    /// Two replicas of a compacted partition, one that applied the leader's decision and one
    /// stopped before it did (it holds the marker but the old batches): after settling, the
    /// checker sees the same entries on both, with the compacted offsets absent on both.
    #[test]
    fn replicas_compacted_to_different_points_compare_equal_once_settled() {
        let first = keyed(&["a", "b", "a"], 10).stamped(Offset(0), Epoch(1));
        let second = keyed(&["b"], 20).stamped(Offset(3), Epoch(1));
        let decision = CompactionDecision {
            below: Offset(4),
            tombstone_cutoff_ms: 0,
        };
        let marker = decision.marker(30).stamped(Offset(4), Epoch(1));
        let raw = vec![first.clone(), second.clone(), marker.clone()];
        let applied = compact_log(&raw, &decision, 16).unwrap();
        assert_ne!(applied, raw);
        let stored = |node, batches: Vec<RecordBatch>| StoredLog {
            topic: 1,
            partition: 0,
            node,
            log_start: 0,
            batches,
        };
        let mut per_node = vec![vec![stored(1, applied)], vec![stored(2, raw)]];
        settle_compaction(&mut per_node).unwrap();
        let views: Vec<ReplicaLog> = per_node
            .into_iter()
            .flatten()
            .map(|log| replica_log(log).unwrap().1)
            .collect();
        assert_eq!(views[0].entries, views[1].entries);
        let values: Vec<(u64, Option<&str>)> = views[0]
            .entries
            .iter()
            .map(|entry| (entry.offset, entry.value.as_deref()))
            .collect();
        assert_eq!(
            values,
            vec![
                (0, Some(crate::checker::COMPACTED_TEXT)),
                (1, Some(crate::checker::COMPACTED_TEXT)),
                (2, Some("a@10")),
                (3, Some("b@20")),
                (4, None),
            ]
        );
        // Without a decision marker nothing is touched.
        let mut plain = vec![vec![stored(1, vec![first.clone(), second.clone()])]];
        settle_compaction(&mut plain).unwrap();
        assert_eq!(plain[0][0].batches, vec![first, second]);
    }
}
