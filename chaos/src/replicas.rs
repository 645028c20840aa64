//! Reads the partition logs a stopped node holds, straight from its sled files, so the checker
//! compares what each replica really stored (not what a leader serves).

use crate::checker::{ReplicaEntry, ReplicaLog};
use cairn_storage::sled_store::SledStore;
use cairn_storage::{LogStore, PartitionLog};
use std::path::Path;

/// Bytes read from a log per call.
const READ_BYTES_MAX: usize = 1 << 20;

/// A log name of a topic partition: `t<topic id>-<partition>`.
pub fn parse_log_name(name: &str) -> Option<(u64, u32)> {
    let (topic, partition) = name.strip_prefix('t')?.split_once('-')?;
    Some((topic.parse().ok()?, partition.parse().ok()?))
}

/// Every topic partition log of the stopped node whose store is at `store_dir`, as
/// (topic id, log). `node` labels the logs.
pub fn read_node_logs(node: u32, store_dir: &Path) -> Result<Vec<(u64, ReplicaLog)>, String> {
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
        let mut entries = Vec::new();
        while next < end {
            let batches = log
                .read(next, end, READ_BYTES_MAX)
                .map_err(|error| format!("read {name} at {next}: {error}"))?;
            let Some(last) = batches.last() else {
                return Err(format!(
                    "{name}: no batch at {next} below the log end {end}"
                ));
            };
            next = last.next_offset();
            for batch in &batches {
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
                for record in batch.records() {
                    let record = record.map_err(|error| format!("{name}: {error}"))?;
                    entries.push(ReplicaEntry {
                        offset: record.offset.0,
                        epoch,
                        value: Some(crate::checker::value_text(record.value.as_deref())),
                    });
                }
            }
        }
        logs.push((
            topic,
            ReplicaLog {
                node,
                partition,
                log_start: log.log_start().0,
                entries,
            },
        ));
    }
    Ok(logs)
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
}
