//! Invariants with stable ids, asserted after every step and reused by the chaos checker.
//!
//! Ids REP-1..REP-5 are those of DESIGN section 5; REP-6 onwards are local to one replica.
//! [`check_status`] and [`check_transition`] look at one replica; [`check_leaders`] at a set
//! of replicas of one partition (the chaos checker and the simulation call it).

use crate::{ReplicaStatus, Role};
use std::collections::BTreeMap;
use std::fmt;

/// REP-1: the high watermark never passes the log end.
pub const REP_1_HIGH_WATERMARK_WITHIN_LOG: &str = "REP-1";
/// REP-2: a replica's promised epoch never decreases.
pub const REP_2_PROMISE_MONOTONIC: &str = "REP-2";
/// REP-3: at most one leader per (partition, epoch).
pub const REP_3_ONE_LEADER_PER_EPOCH: &str = "REP-3";
/// REP-4: an acknowledged (acks=all) offset is durable on a majority. Checked by the
/// simulation and the chaos checker, which see every replica's log.
pub const REP_4_ACKED_ON_MAJORITY: &str = "REP-4";
/// REP-5: two replicas never hold different batches at one committed offset. Checked by
/// the simulation and the chaos checker.
pub const REP_5_COMMITTED_AGREE: &str = "REP-5";
/// REP-6: what is durable is in the log.
pub const REP_6_DURABLE_WITHIN_LOG: &str = "REP-6";
/// REP-7: a leader's high watermark never passes its own durable end (the leader is part
/// of every majority it counts).
pub const REP_7_LEADER_COMMITS_ITS_DURABLE: &str = "REP-7";
/// REP-8: the high watermark never decreases (within one life of the replica).
pub const REP_8_HIGH_WATERMARK_MONOTONIC: &str = "REP-8";
/// REP-9: a leader leads exactly the epoch it durably promised.
pub const REP_9_LEADER_EPOCH_PROMISED: &str = "REP-9";
/// REP-10: the log start never passes the high watermark (retention keeps uncommitted data).
pub const REP_10_LOG_START_COMMITTED: &str = "REP-10";
/// REP-11: the log never shrinks below the high watermark (committed data is never
/// truncated).
pub const REP_11_NO_COMMITTED_TRUNCATION: &str = "REP-11";
/// REP-12: the log start never moves back (retention and a follower's reset only move it
/// forward, so offsets are never reused).
pub const REP_12_LOG_START_MONOTONIC: &str = "REP-12";

/// A broken invariant: its id and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub id: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id, self.detail)
    }
}

impl std::error::Error for Violation {}

fn require(
    holds: bool,
    id: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if holds {
        Ok(())
    } else {
        Err(Violation {
            id,
            detail: detail(),
        })
    }
}

/// The invariants of one replica's snapshot.
pub fn check_status(status: &ReplicaStatus) -> Result<(), Violation> {
    require(
        status.high_watermark <= status.log_end,
        REP_1_HIGH_WATERMARK_WITHIN_LOG,
        || format!("{status:?}"),
    )?;
    require(
        status.durable_end <= status.log_end,
        REP_6_DURABLE_WITHIN_LOG,
        || format!("{status:?}"),
    )?;
    require(
        status.role != Role::Leader || status.high_watermark <= status.durable_end,
        REP_7_LEADER_COMMITS_ITS_DURABLE,
        || format!("{status:?}"),
    )?;
    require(
        status.role != Role::Leader || status.epoch == status.promised_epoch,
        REP_9_LEADER_EPOCH_PROMISED,
        || format!("{status:?}"),
    )?;
    require(
        status.log_start <= status.high_watermark,
        REP_10_LOG_START_COMMITTED,
        || format!("{status:?}"),
    )
}

/// The invariants between two consecutive snapshots of one replica.
pub fn check_transition(before: &ReplicaStatus, after: &ReplicaStatus) -> Result<(), Violation> {
    check_status(after)?;
    require(
        after.promised_epoch >= before.promised_epoch,
        REP_2_PROMISE_MONOTONIC,
        || format!("{} -> {}", before.promised_epoch, after.promised_epoch),
    )?;
    require(
        after.high_watermark >= before.high_watermark,
        REP_8_HIGH_WATERMARK_MONOTONIC,
        || format!("{} -> {}", before.high_watermark, after.high_watermark),
    )?;
    require(
        after.log_end >= before.high_watermark,
        REP_11_NO_COMMITTED_TRUNCATION,
        || {
            format!(
                "log end {} below high watermark {}",
                after.log_end, before.high_watermark
            )
        },
    )?;
    require(
        after.log_start >= before.log_start,
        REP_12_LOG_START_MONOTONIC,
        || format!("{} -> {}", before.log_start, after.log_start),
    )
}

/// REP-3 across replicas of one partition: no two claim to lead one epoch.
pub fn check_leaders<'a>(
    statuses: impl IntoIterator<Item = &'a ReplicaStatus>,
) -> Result<(), Violation> {
    let mut leaders = BTreeMap::new();
    for status in statuses {
        if status.role != Role::Leader {
            continue;
        }
        if let Some(other) = leaders.insert(status.epoch, status.node) {
            return Err(Violation {
                id: REP_3_ONE_LEADER_PER_EPOCH,
                detail: format!(
                    "nodes {other} and {} both lead epoch {}",
                    status.node, status.epoch
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::{Epoch, NodeId, Offset};

    fn status() -> ReplicaStatus {
        ReplicaStatus {
            node: NodeId(1),
            role: Role::Leader,
            epoch: Epoch(3),
            promised_epoch: Epoch(3),
            leader: Some(NodeId(1)),
            log_start: Offset(2),
            log_end: Offset(10),
            durable_end: Offset(8),
            high_watermark: Offset(5),
        }
    }

    fn id_of(result: Result<(), Violation>) -> &'static str {
        result
            .map(|()| "none")
            .unwrap_or_else(|violation| violation.id)
    }

    #[test]
    fn every_single_replica_rule_has_its_id() {
        assert_eq!(id_of(check_status(&status())), "none");
        let broken = [
            (
                ReplicaStatus {
                    high_watermark: Offset(11),
                    log_end: Offset(10),
                    durable_end: Offset(10),
                    role: Role::Follower,
                    ..status()
                },
                "REP-1",
            ),
            (
                ReplicaStatus {
                    durable_end: Offset(11),
                    ..status()
                },
                "REP-6",
            ),
            (
                ReplicaStatus {
                    high_watermark: Offset(9),
                    ..status()
                },
                "REP-7",
            ),
            (
                ReplicaStatus {
                    promised_epoch: Epoch(4),
                    ..status()
                },
                "REP-9",
            ),
            (
                ReplicaStatus {
                    log_start: Offset(6),
                    ..status()
                },
                "REP-10",
            ),
        ];
        for (status, id) in broken {
            assert_eq!(id_of(check_status(&status)), id, "{status:?}");
        }
        // A follower may hold a high watermark above what it flushed.
        let follower = ReplicaStatus {
            role: Role::Follower,
            high_watermark: Offset(9),
            ..status()
        };
        assert_eq!(id_of(check_status(&follower)), "none");
    }

    #[test]
    fn transitions_keep_promises_and_commits() {
        let before = status();
        assert_eq!(id_of(check_transition(&before, &status())), "none");
        let lower_promise = ReplicaStatus {
            promised_epoch: Epoch(2),
            epoch: Epoch(2),
            ..status()
        };
        assert_eq!(id_of(check_transition(&before, &lower_promise)), "REP-2");
        let lower_watermark = ReplicaStatus {
            high_watermark: Offset(4),
            ..status()
        };
        assert_eq!(id_of(check_transition(&before, &lower_watermark)), "REP-8");
        let truncated = ReplicaStatus {
            role: Role::Follower,
            log_end: Offset(4),
            durable_end: Offset(4),
            high_watermark: Offset(5),
            ..status()
        };
        assert_eq!(id_of(check_transition(&before, &truncated)), "REP-1");
        let cut_below_commit = ReplicaStatus {
            role: Role::Follower,
            log_end: Offset(5),
            durable_end: Offset(5),
            high_watermark: Offset(5),
            ..status()
        };
        assert_eq!(id_of(check_transition(&before, &cut_below_commit)), "none");
        let before_commit = ReplicaStatus {
            high_watermark: Offset(6),
            ..status()
        };
        let cut = ReplicaStatus {
            role: Role::Follower,
            log_end: Offset(6),
            durable_end: Offset(6),
            high_watermark: Offset(6),
            ..status()
        };
        assert_eq!(id_of(check_transition(&before_commit, &cut)), "none");
    }

    #[test]
    fn two_leaders_of_one_epoch_are_reported() {
        let one = status();
        let other = ReplicaStatus {
            node: NodeId(2),
            ..status()
        };
        let newer = ReplicaStatus {
            node: NodeId(3),
            epoch: Epoch(4),
            promised_epoch: Epoch(4),
            ..status()
        };
        assert_eq!(id_of(check_leaders([&one, &newer])), "none");
        assert_eq!(id_of(check_leaders([&one, &newer, &other])), "REP-3");
    }
}
