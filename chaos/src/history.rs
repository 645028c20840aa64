//! The recorded history: one JSON object per line (`history.jsonl`), one line per operation,
//! written when the operation completes (or when its client crashed with it outstanding).
//!
//! Every operation carries the client process that ran it, its invoke and completion times
//! (milliseconds since the campaign started) and its [`Status`]: `ok`, `fail` (definitely did
//! not happen) or `info` (indeterminate: it may or may not have taken effect). Operations of
//! one process are sequential per session, and a process writes them in completion order, so
//! file order is each consumer session's poll order.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Definitely did not take effect (refused before anything was written).
    Fail,
    /// Indeterminate: a timeout, a lost connection, a crash of the client.
    Info,
}

/// Which kind of reader ran a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderKind {
    /// A member of the consumer group.
    Group,
    /// A consumer with a manual assignment of every partition, from the earliest offset.
    Manual,
    /// The final reader of the drain phase, after every fault healed.
    Drain,
}

/// One record a poll returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub partition: u32,
    pub offset: u64,
    pub value: String,
}

/// One record of the compacted topic (the `compaction` fault kind) as its drain reader read
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRead {
    pub partition: u32,
    pub offset: u64,
    /// The record's key (every record of the compacted topic has one).
    pub key: String,
    /// The value; `None` for a tombstone.
    pub value: Option<String>,
    /// The record's `id` header: which write it is (a tombstone has no value to tell).
    pub id: Option<String>,
}

/// A member's view of its assignment, or one member in a coordinator's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub member: String,
    pub member_epoch: i32,
    pub partitions: Vec<u32>,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A producer's `send` of one record with a unique value (acks=all).
    Send {
        process: u32,
        idempotent: bool,
        key: String,
        value: String,
        invoke_ms: u64,
        complete_ms: u64,
        status: Status,
        /// The partition the record was sent to (known at send time).
        partition: Option<u32>,
        /// The acknowledged offset (ok only).
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// One `poll` of a consumer. `session` changes whenever continuity of positions is not
    /// promised (a new member epoch, a seek, an error), so polls of one
    /// (process, session, partition) must read consecutive offsets.
    Poll {
        process: u32,
        reader: ReaderKind,
        session: u64,
        invoke_ms: u64,
        complete_ms: u64,
        status: Status,
        /// Group members: who polled, at which member epoch, owning what (read after the
        /// poll, and only recorded when the epoch did not change during the poll).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<MemberView>,
        records: Vec<Read>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A group member's `commit_sync` of its positions.
    Commit {
        process: u32,
        member: Option<String>,
        invoke_ms: u64,
        complete_ms: u64,
        status: Status,
        /// (partition, next offset to read).
        offsets: Vec<(u32, u64)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The group's committed offsets, read through the admin API.
    CommittedRead {
        process: u32,
        invoke_ms: u64,
        complete_ms: u64,
        status: Status,
        offsets: Vec<(u32, u64)>,
    },
    /// The coordinator's description of the group (who owns what now).
    GroupSnapshot {
        invoke_ms: u64,
        complete_ms: u64,
        group_epoch: i32,
        members: Vec<MemberView>,
    },
    /// A write of the compacted topic (the `compaction` fault kind, see
    /// [`crate::compaction`]): a key from a small key space and a unique `id`, sent as the
    /// value and as an `id` header, or as the header only when the write is a tombstone.
    KeyedSend {
        process: u32,
        key: String,
        id: String,
        tombstone: bool,
        invoke_ms: u64,
        complete_ms: u64,
        status: Status,
        partition: u32,
        /// The acknowledged offset (ok only).
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// One poll of the compacted topic's drain reader (one session, from the earliest
    /// offset).
    KeyedPoll {
        process: u32,
        invoke_ms: u64,
        complete_ms: u64,
        status: Status,
        records: Vec<KeyedRead>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A client process was crashed on purpose (its outstanding operations are `info`).
    Crash { process: u32, at_ms: u64 },
}

impl Op {
    /// When the operation completed (a crash: when it happened).
    pub fn complete_ms(&self) -> u64 {
        match self {
            Op::Send { complete_ms, .. }
            | Op::Poll { complete_ms, .. }
            | Op::Commit { complete_ms, .. }
            | Op::CommittedRead { complete_ms, .. }
            | Op::GroupSnapshot { complete_ms, .. }
            | Op::KeyedSend { complete_ms, .. }
            | Op::KeyedPoll { complete_ms, .. } => *complete_ms,
            Op::Crash { at_ms, .. } => *at_ms,
        }
    }
}

/// Errors reading or writing a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

/// Reads every operation of a `history.jsonl`, in file order. Blank lines are skipped.
pub fn read_history(path: &Path) -> Result<Vec<Op>, HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut ops = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: path.display().to_string(),
            line: index + 1,
            source,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Writes `ops` as JSON lines.
pub fn write_history(path: &Path, ops: &[Op]) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for op in ops {
        let line = serde_json::to_string(op).expect("an Op always serialises");
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_round_trips_through_json_lines() {
        let ops = vec![
            Op::Send {
                process: 1,
                idempotent: true,
                key: "k1".into(),
                value: "v1-1".into(),
                invoke_ms: 5,
                complete_ms: 9,
                status: Status::Ok,
                partition: Some(2),
                offset: Some(7),
                error: None,
            },
            Op::Crash {
                process: 1,
                at_ms: 10,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        write_history(&path, &ops).unwrap();
        assert_eq!(read_history(&path).unwrap(), ops);
        std::fs::write(&path, "{\"op\":\"send\"}\n").unwrap();
        assert!(matches!(
            read_history(&path),
            Err(HistoryError::Parse { line: 1, .. })
        ));
    }
}
