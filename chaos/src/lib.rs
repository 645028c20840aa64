//! Chaos campaigns against real `cairn node` processes (DESIGN section 8), and the checker of
//! what they record.
//!
//! Map of the modules, in the order a campaign uses them:
//! - [`net`]: the private network namespace the campaign re-executes itself in, and
//!   partitions as nftables rules there.
//! - [`schedule`]: the nemesis schedule drawn from a seed (fault kinds, windows, targets).
//! - [`nodes`]: the `cairn node` processes (start under libfaketime, kill, pause, restart).
//! - [`power`]: the `power` fault's disks, `cairn-powerfs` mounts that lose unsynced writes.
//! - [`hostile`]: the `hostile` fault, a client without the cluster secret forging peer
//!   traffic.
//! - [`workload`]: producers, group consumers, manual readers, the group watcher and the
//!   drain reader, recording every operation.
//! - [`history`]: the recorded operations (`history.jsonl`), one JSON object per line.
//! - [`replicas`]: reads a stopped node's partition logs from its sled files.
//! - [`retention`]: the `retention` fault's own topic, writer and checks.
//! - [`compaction`]: the `compaction` fault's compacted topic, writer, drain and checks.
//! - [`checker`]: finds every anomaly kind in a history and compares the replicas' logs.
//! - [`report`]: `report.json`, `summary.md` and the `timeline.svg` picture.
//! - [`campaign`]: one campaign end to end.

pub mod campaign;
pub mod checker;
pub mod compaction;
pub mod history;
pub mod hostile;
pub mod net;
pub mod nodes;
pub mod power;
pub mod replicas;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod workload;

#[cfg(test)]
mod checker_tests;
