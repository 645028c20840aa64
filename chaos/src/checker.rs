//! The checker: finds the anomalies of DESIGN section 8 in a recorded history, and compares
//! the replicas' logs read from their files after the nodes stopped.
//!
//! Kinds (each with examples in the report):
//! - `lost`: acknowledged, never read, although a later offset of its partition was read.
//! - `unseen`: acknowledged, never read by anyone (nothing later was read either).
//! - `duplicate`: one value at two offsets, from an idempotent producer (an anomaly); from a
//!   producer without idempotence it is expected on retries and only counted
//!   (`duplicates_without_idempotence` in the statistics).
//! - `inconsistent_offsets`: two values read at one offset, or a value read somewhere else
//!   than at the offset its acknowledgement gave.
//! - `aborted_read`: a definitely failed write was read.
//! - `unexpected_value`: a value no producer ever sent was read.
//! - `non_monotonic_poll` / `skipped_poll`: within one consumer session and partition, a poll
//!   went backwards (or repeated an offset), or jumped over an offset some reader saw a value at.
//! - `double_assignment`: one partition owned by two members in one coordinator snapshot of
//!   the group (one group epoch).
//! - `commit_backwards`: an acknowledged commit, or a read of the committed offsets, below a
//!   commit of the same partition acknowledged before it began.
//! - `replica_divergence`: two replicas hold different records at one offset below the
//!   committed bound (the highest of the final high watermark and every acknowledged or read
//!   offset).
//! - `replica_missing`: an offset below that bound held by fewer than a majority of replicas,
//!   or an acknowledged value that the majority does not hold at its offset.
//! - `retained_offset_reused`, `retained_replica_behind`: the retention topic's checks (see
//!   [`crate::retention`]).
//! - `compacted_latest_missing`, `compaction_idle`: the compacted topic's checks (see
//!   [`crate::compaction`]; its reads are also held to `unexpected_value`, `aborted_read`,
//!   `inconsistent_offsets`, `duplicate` and `non_monotonic_poll`).

use crate::history::{Op, ReaderKind, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Examples kept per anomaly kind.
pub const EXAMPLES_PER_KIND_MAX: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    Lost,
    Unseen,
    Duplicate,
    InconsistentOffsets,
    AbortedRead,
    UnexpectedValue,
    NonMonotonicPoll,
    SkippedPoll,
    DoubleAssignment,
    CommitBackwards,
    ReplicaDivergence,
    ReplicaMissing,
    RetainedOffsetReused,
    RetainedReplicaBehind,
    /// Acknowledged and read while the run went on, but not read by the final drain: the
    /// cluster forgot it (checked in power campaigns, see [`check_durable_at_end`]).
    Forgotten,
    /// The newest acknowledged write of a key of the compacted topic, superseded by nothing
    /// (and not an expired tombstone), is not in the drain (see [`crate::compaction`]).
    CompactedLatestMissing,
    /// The nodes never removed anything from the compacted topic: the campaign proved nothing
    /// about compaction.
    CompactionIdle,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 17] = [
        AnomalyKind::Lost,
        AnomalyKind::Unseen,
        AnomalyKind::Duplicate,
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::AbortedRead,
        AnomalyKind::UnexpectedValue,
        AnomalyKind::NonMonotonicPoll,
        AnomalyKind::SkippedPoll,
        AnomalyKind::DoubleAssignment,
        AnomalyKind::CommitBackwards,
        AnomalyKind::ReplicaDivergence,
        AnomalyKind::ReplicaMissing,
        AnomalyKind::RetainedOffsetReused,
        AnomalyKind::RetainedReplicaBehind,
        AnomalyKind::Forgotten,
        AnomalyKind::CompactedLatestMissing,
        AnomalyKind::CompactionIdle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Unseen => "unseen",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::InconsistentOffsets => "inconsistent_offsets",
            AnomalyKind::AbortedRead => "aborted_read",
            AnomalyKind::UnexpectedValue => "unexpected_value",
            AnomalyKind::NonMonotonicPoll => "non_monotonic_poll",
            AnomalyKind::SkippedPoll => "skipped_poll",
            AnomalyKind::DoubleAssignment => "double_assignment",
            AnomalyKind::CommitBackwards => "commit_backwards",
            AnomalyKind::ReplicaDivergence => "replica_divergence",
            AnomalyKind::ReplicaMissing => "replica_missing",
            AnomalyKind::RetainedOffsetReused => "retained_offset_reused",
            AnomalyKind::RetainedReplicaBehind => "retained_replica_behind",
            AnomalyKind::Forgotten => "forgotten",
            AnomalyKind::CompactedLatestMissing => "compacted_latest_missing",
            AnomalyKind::CompactionIdle => "compaction_idle",
        }
    }
}

/// Every occurrence count and a few examples of one anomaly kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyGroup {
    pub count: u64,
    pub examples: Vec<String>,
}

/// How the checker writes a record's value: the workload's values are UTF-8 text (anything
/// else is shown lossily); a tombstone (null value), which the workload never sends, gets a
/// text no workload value has, so it still counts as a value nobody sent.
pub fn value_text(value: Option<&[u8]>) -> String {
    match value {
        Some(value) => {
            let text = String::from_utf8_lossy(value);
            // A padded value reads as its id; padding that is not all `~` is kept, so a
            // damaged value shows as an unexpected one.
            match text.split_once(PADDING) {
                Some((id, padding)) if padding.bytes().all(|byte| byte == PADDING as u8) => {
                    id.to_owned()
                }
                _ => text.into_owned(),
            }
        }
        None => TOMBSTONE_TEXT.to_owned(),
    }
}

/// What pads a workload value to `--value-bytes`; never part of an id.
const PADDING: char = '~';

/// `id` padded with `~` to `bytes` bytes (as it is when already that long or longer).
pub fn padded_value(id: &str, bytes: usize) -> Vec<u8> {
    let mut value = id.as_bytes().to_vec();
    if value.len() < bytes {
        value.push(PADDING as u8);
        value.resize(bytes.max(value.len()), PADDING as u8);
    }
    value
}

/// [`value_text`] of a tombstone.
pub const TOMBSTONE_TEXT: &str = "<tombstone>";

/// What a replica holds at an offset compaction removed (a gap inside a batch).
pub const COMPACTED_TEXT: &str = "<compacted>";

/// One record as a replica stores it, read from its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub offset: u64,
    pub epoch: u64,
    /// `None` for a control record (an epoch marker).
    pub value: Option<String>,
}

/// One replica's log of one partition of the campaign's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLog {
    pub node: u32,
    pub partition: u32,
    pub log_start: u64,
    pub entries: Vec<ReplicaEntry>,
}

/// What the checker looks at besides the history.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    pub logs: Vec<ReplicaLog>,
    /// Replicas per partition (the replication factor).
    pub replication_factor: usize,
    /// The high watermark of each partition read from its leader after the drain.
    pub high_watermarks: BTreeMap<u32, u64>,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Counts of what was checked (sends by status, reads, polls, commits...).
    pub stats: BTreeMap<String, u64>,
    pub anomalies: BTreeMap<AnomalyKind, AnomalyGroup>,
}

impl CheckReport {
    pub fn anomaly_count(&self) -> u64 {
        self.anomalies.values().map(|group| group.count).sum()
    }

    pub fn is_clean(&self) -> bool {
        self.anomaly_count() == 0
    }

    pub(crate) fn add(&mut self, kind: AnomalyKind, example: impl FnOnce() -> String) {
        let group = self.anomalies.entry(kind).or_default();
        group.count += 1;
        if group.examples.len() < EXAMPLES_PER_KIND_MAX {
            group.examples.push(example());
        }
    }

    pub(crate) fn bump(&mut self, stat: &str, by: u64) {
        *self.stats.entry(stat.to_string()).or_default() += by;
    }
}

struct SendInfo {
    status: Status,
    idempotent: bool,
    partition: Option<u32>,
    offset: Option<u64>,
    process: u32,
}

/// Checks `ops` (and the replicas' logs, when given) for every anomaly kind.
pub fn check(ops: &[Op], replicas: Option<&Replicas>) -> CheckReport {
    let mut report = CheckReport::default();

    // Every send, by its unique value.
    let mut sends: HashMap<&str, SendInfo> = HashMap::new();
    for op in ops {
        if let Op::Send {
            process,
            idempotent,
            value,
            status,
            partition,
            offset,
            ..
        } = op
        {
            report.bump(
                match status {
                    Status::Ok => "sends_ok",
                    Status::Fail => "sends_fail",
                    Status::Info => "sends_info",
                },
                1,
            );
            sends.insert(
                value,
                SendInfo {
                    status: *status,
                    idempotent: *idempotent,
                    partition: *partition,
                    offset: *offset,
                    process: *process,
                },
            );
        }
    }

    // Every read value by (partition, offset), and every place each value was read.
    let mut at_offset: BTreeMap<(u32, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut places: HashMap<&str, BTreeSet<(u32, u64)>> = HashMap::new();
    let mut max_read: BTreeMap<u32, u64> = BTreeMap::new();
    for op in ops {
        let Op::Poll {
            status: Status::Ok,
            records,
            ..
        } = op
        else {
            continue;
        };
        report.bump("polls_ok", 1);
        report.bump("records_read", records.len() as u64);
        for read in records {
            at_offset
                .entry((read.partition, read.offset))
                .or_default()
                .insert(&read.value);
            places
                .entry(&read.value)
                .or_default()
                .insert((read.partition, read.offset));
            let max = max_read.entry(read.partition).or_default();
            *max = (*max).max(read.offset);
        }
    }

    // Two values at one offset.
    for ((partition, offset), values) in &at_offset {
        if values.len() > 1 {
            report.add(AnomalyKind::InconsistentOffsets, || {
                format!("{partition}@{offset} read as {values:?}")
            });
        }
    }

    // Per read value: known, not definitely failed, at its acknowledged offset, once.
    let mut values: Vec<&&str> = places.keys().collect();
    values.sort();
    for value in values {
        let read_at = &places[*value];
        let Some(send) = sends.get(*value) else {
            report.add(AnomalyKind::UnexpectedValue, || {
                format!("{value:?} read at {read_at:?} was never sent")
            });
            continue;
        };
        if send.status == Status::Fail {
            report.add(AnomalyKind::AbortedRead, || {
                format!(
                    "{value:?} (process {}, definitely failed) read at {read_at:?}",
                    send.process
                )
            });
        }
        if read_at.len() > 1 {
            if send.idempotent {
                report.add(AnomalyKind::Duplicate, || {
                    format!(
                        "{value:?} (idempotent process {}) read at {read_at:?}",
                        send.process
                    )
                });
            } else {
                report.bump("duplicates_without_idempotence", 1);
            }
        }
        if let (Status::Ok, Some(partition), Some(offset)) =
            (send.status, send.partition, send.offset)
        {
            if !read_at.contains(&(partition, offset)) {
                report.add(AnomalyKind::InconsistentOffsets, || {
                    format!(
                        "{value:?} acknowledged at {partition}@{offset} but read at {read_at:?}"
                    )
                });
            }
        }
    }

    // Acknowledged but never read.
    let mut acked: Vec<(&str, &SendInfo)> = sends
        .iter()
        .filter(|(_, send)| send.status == Status::Ok)
        .map(|(value, send)| (*value, send))
        .collect();
    acked.sort_by_key(|(value, _)| *value);
    for (value, send) in &acked {
        if places.contains_key(value) {
            continue;
        }
        let (Some(partition), Some(offset)) = (send.partition, send.offset) else {
            report.add(AnomalyKind::Unseen, || {
                format!("{value:?} acknowledged without an offset, never read")
            });
            continue;
        };
        match max_read.get(&partition) {
            Some(max) if *max > offset => report.add(AnomalyKind::Lost, || {
                format!(
                    "{value:?} acknowledged at {partition}@{offset}, never read; offsets up to \
                     {max} were read"
                )
            }),
            _ => report.add(AnomalyKind::Unseen, || {
                format!("{value:?} acknowledged at {partition}@{offset}, never read")
            }),
        }
    }

    check_sessions(ops, &at_offset, &sends, &mut report);
    check_assignments(ops, &mut report);
    check_commits(ops, &mut report);
    if let Some(replicas) = replicas {
        check_replicas(replicas, &sends, &max_read, &mut report);
    }
    crate::compaction::check(ops, &mut report);
    report
}

/// Polls of one (process, session, partition) read consecutive offsets, up to offsets no
/// reader ever saw a value at (control records and never-read offsets).
fn check_sessions(
    ops: &[Op],
    at_offset: &BTreeMap<(u32, u64), BTreeSet<&str>>,
    sends: &HashMap<&str, SendInfo>,
    report: &mut CheckReport,
) {
    // Offsets known to hold a value: read by someone, or acknowledged.
    let mut known: BTreeSet<(u32, u64)> = at_offset.keys().copied().collect();
    for send in sends.values() {
        if let (Status::Ok, Some(partition), Some(offset)) =
            (send.status, send.partition, send.offset)
        {
            known.insert((partition, offset));
        }
    }
    let mut last: HashMap<(u32, u64, u32), u64> = HashMap::new();
    for op in ops {
        let Op::Poll {
            process,
            session,
            status: Status::Ok,
            records,
            reader,
            ..
        } = op
        else {
            continue;
        };
        for read in records {
            let key = (*process, *session, read.partition);
            if let Some(previous) = last.get(&key).copied() {
                if read.offset <= previous {
                    report.add(AnomalyKind::NonMonotonicPoll, || {
                        format!(
                            "process {process} ({reader:?}) session {session}: partition {} \
                             read {} after {previous}",
                            read.partition, read.offset
                        )
                    });
                } else if let Some((_, skipped)) = known
                    .range((read.partition, previous + 1)..(read.partition, read.offset))
                    .next()
                {
                    report.add(AnomalyKind::SkippedPoll, || {
                        format!(
                            "process {process} ({reader:?}) session {session}: partition {} \
                             jumped from {previous} to {}, over {skipped}",
                            read.partition, read.offset
                        )
                    });
                }
            }
            last.insert(key, read.offset);
        }
    }
}

/// No partition owned by two members in one coordinator snapshot (one group epoch). The
/// members' own views are not compared: a member's epoch and its applied assignment are read
/// at different moments, so they can pair an old assignment with a new epoch.
fn check_assignments(ops: &[Op], report: &mut CheckReport) {
    for op in ops {
        let Op::GroupSnapshot {
            group_epoch,
            members,
            complete_ms,
            ..
        } = op
        else {
            continue;
        };
        report.bump("group_snapshots", 1);
        let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
        for member in members {
            for partition in &member.partitions {
                if let Some(other) = seen.insert(*partition, &member.member) {
                    report.add(AnomalyKind::DoubleAssignment, || {
                        format!(
                            "snapshot at {complete_ms} ms (group epoch {group_epoch}): \
                             partition {partition} owned by {other} and {}",
                            member.member
                        )
                    });
                }
            }
        }
    }
}

/// A commit (or a read of the committed offsets) never lands below a commit of the same
/// partition acknowledged before it was invoked.
fn check_commits(ops: &[Op], report: &mut CheckReport) {
    // (partition) -> acknowledged commits as (complete_ms, offset), sorted by completion.
    let mut acked: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for op in ops {
        if let Op::Commit {
            status: Status::Ok,
            offsets,
            complete_ms,
            ..
        } = op
        {
            report.bump("commits_ok", 1);
            for (partition, offset) in offsets {
                acked
                    .entry(*partition)
                    .or_default()
                    .push((*complete_ms, *offset));
            }
        }
    }
    for commits in acked.values_mut() {
        commits.sort();
    }
    // The highest offset acknowledged strictly before `at` for `partition`.
    let floor = |partition: u32, at: u64| -> Option<(u64, u64)> {
        acked.get(&partition).and_then(|commits| {
            commits
                .iter()
                .take_while(|(complete_ms, _)| *complete_ms < at)
                .max_by_key(|(_, offset)| *offset)
                .copied()
        })
    };
    for op in ops {
        let (what, process, invoke_ms, offsets) = match op {
            Op::Commit {
                status: Status::Ok,
                process,
                invoke_ms,
                offsets,
                ..
            } => ("commit", process, invoke_ms, offsets),
            Op::CommittedRead {
                status: Status::Ok,
                process,
                invoke_ms,
                offsets,
                ..
            } => ("committed-offsets read", process, invoke_ms, offsets),
            _ => continue,
        };
        for (partition, offset) in offsets {
            if let Some((earlier_ms, earlier)) = floor(*partition, *invoke_ms) {
                if *offset < earlier {
                    report.add(AnomalyKind::CommitBackwards, || {
                        format!(
                            "{what} by process {process} at {invoke_ms} ms: partition \
                             {partition} at {offset}, below {earlier} acknowledged at \
                             {earlier_ms} ms"
                        )
                    });
                }
            }
        }
    }
}

/// Replicas agree below the committed bound, a majority holds every offset below it, and
/// every acknowledged value sits at its offset on that majority.
fn check_replicas(
    replicas: &Replicas,
    sends: &HashMap<&str, SendInfo>,
    max_read: &BTreeMap<u32, u64>,
    report: &mut CheckReport,
) {
    let majority = replicas.replication_factor / 2 + 1;
    let mut by_partition: BTreeMap<u32, Vec<&ReplicaLog>> = BTreeMap::new();
    for log in &replicas.logs {
        by_partition.entry(log.partition).or_default().push(log);
    }
    // The committed bound per partition (exclusive).
    let mut bound: BTreeMap<u32, u64> = replicas.high_watermarks.clone();
    for (partition, offset) in max_read {
        let entry = bound.entry(*partition).or_default();
        *entry = (*entry).max(offset + 1);
    }
    let mut acked_at: HashMap<(u32, u64), &str> = HashMap::new();
    for (value, send) in sends {
        if let (Status::Ok, Some(partition), Some(offset)) =
            (send.status, send.partition, send.offset)
        {
            acked_at.insert((partition, offset), value);
            let entry = bound.entry(partition).or_default();
            *entry = (*entry).max(offset + 1);
        }
    }
    for (partition, logs) in &by_partition {
        report.bump("replica_logs", logs.len() as u64);
        let limit = bound.get(partition).copied().unwrap_or(0);
        let mut holders: BTreeMap<u64, Vec<(u32, &ReplicaEntry)>> = BTreeMap::new();
        for log in logs {
            for entry in &log.entries {
                if entry.offset < limit {
                    holders
                        .entry(entry.offset)
                        .or_default()
                        .push((log.node, entry));
                }
            }
        }
        let log_start = logs.iter().map(|log| log.log_start).max().unwrap_or(0);
        for offset in log_start..limit {
            let held = holders.get(&offset).map(Vec::as_slice).unwrap_or(&[]);
            report.bump("replica_offsets_compared", 1);
            if let Some((first_node, first)) = held.first() {
                for (node, entry) in &held[1..] {
                    if entry.epoch != first.epoch || entry.value != first.value {
                        report.add(AnomalyKind::ReplicaDivergence, || {
                            format!(
                                "partition {partition}@{offset}: node {first_node} holds \
                                 {:?} (epoch {}), node {node} holds {:?} (epoch {})",
                                first.value, first.epoch, entry.value, entry.epoch
                            )
                        });
                        break;
                    }
                }
            }
            if held.len() < majority {
                report.add(AnomalyKind::ReplicaMissing, || {
                    format!(
                        "partition {partition}@{offset} (below the committed bound {limit}) is \
                         held by {} replicas, fewer than a majority of {majority}",
                        held.len()
                    )
                });
                continue;
            }
            if let Some(value) = acked_at.get(&(*partition, offset)) {
                let holding = held
                    .iter()
                    .filter(|(_, entry)| entry.value.as_deref() == Some(*value))
                    .count();
                if holding < majority {
                    report.add(AnomalyKind::ReplicaMissing, || {
                        format!(
                            "{value:?} acknowledged at {partition}@{offset} is held there by \
                             {holding} replicas, fewer than a majority of {majority}"
                        )
                    });
                }
            }
        }
    }
}

/// Power campaigns: after the nodes restarted on what they had synced, every acknowledged write
/// must still be readable, so the final drain must read it. An acknowledged value that some
/// reader saw during the run but the drain did not is `forgotten` (one never read at all is
/// already `lost` or `unseen`). A drain that could not read at all (a cluster that does not
/// come back) forgets everything, which is the point.
pub fn check_durable_at_end(ops: &[Op], report: &mut CheckReport) {
    let mut read_by_drain: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut read_before: BTreeSet<&str> = BTreeSet::new();
    for op in ops {
        if let Op::Poll {
            reader, records, ..
        } = op
        {
            for read in records {
                if *reader == ReaderKind::Drain {
                    read_by_drain.insert((read.partition, read.offset));
                } else {
                    read_before.insert(read.value.as_str());
                }
            }
        }
    }
    report.bump("drain_records_read", read_by_drain.len() as u64);
    for op in ops {
        if let Op::Send {
            value,
            status: Status::Ok,
            partition: Some(partition),
            offset: Some(offset),
            ..
        } = op
        {
            if read_before.contains(value.as_str())
                && !read_by_drain.contains(&(*partition, *offset))
            {
                report.add(AnomalyKind::Forgotten, || {
                    format!(
                        "{value:?} acknowledged at {partition}@{offset} and read during the run, \
                         not read by the final drain"
                    )
                });
            }
        }
    }
}
