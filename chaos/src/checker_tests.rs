//! Hand-made histories, one or more per anomaly kind: each kind is shown to fire on the
//! history that has it, and a clean history (the same workload without the fault) is shown
//! to pass, so no check is vacuous.

use crate::checker::*;
use crate::history::*;

fn send(process: u32, value: &str, status: Status, at: Option<(u32, u64)>) -> Op {
    Op::Send {
        process,
        idempotent: true,
        key: "k".into(),
        value: value.into(),
        invoke_ms: 1,
        complete_ms: 2,
        status,
        partition: at.map(|(partition, _)| partition),
        offset: if status == Status::Ok {
            at.map(|(_, offset)| offset)
        } else {
            None
        },
        error: None,
    }
}

fn plain_send(process: u32, value: &str, at: (u32, u64)) -> Op {
    match send(process, value, Status::Ok, Some(at)) {
        Op::Send {
            process,
            key,
            value,
            invoke_ms,
            complete_ms,
            status,
            partition,
            offset,
            error,
            ..
        } => Op::Send {
            process,
            idempotent: false,
            key,
            value,
            invoke_ms,
            complete_ms,
            status,
            partition,
            offset,
            error,
        },
        _ => unreachable!(),
    }
}

fn poll(process: u32, session: u64, records: &[(u32, u64, &str)]) -> Op {
    Op::Poll {
        process,
        reader: ReaderKind::Manual,
        session,
        invoke_ms: 3,
        complete_ms: 4,
        status: Status::Ok,
        member: None,
        records: records
            .iter()
            .map(|(partition, offset, value)| Read {
                partition: *partition,
                offset: *offset,
                value: value.to_string(),
            })
            .collect(),
        error: None,
    }
}

fn group_poll(process: u32, member: &str, epoch: i32, partitions: &[u32]) -> Op {
    Op::Poll {
        process,
        reader: ReaderKind::Group,
        session: epoch as u64,
        invoke_ms: 3,
        complete_ms: 4,
        status: Status::Ok,
        member: Some(MemberView {
            member: member.into(),
            member_epoch: epoch,
            partitions: partitions.to_vec(),
        }),
        records: vec![],
        error: None,
    }
}

fn commit(process: u32, invoke_ms: u64, complete_ms: u64, offsets: &[(u32, u64)]) -> Op {
    Op::Commit {
        process,
        member: Some(format!("m{process}")),
        invoke_ms,
        complete_ms,
        status: Status::Ok,
        offsets: offsets.to_vec(),
        error: None,
    }
}

/// Three acknowledged writes on partition 0, all read back in order.
fn clean() -> Vec<Op> {
    vec![
        send(1, "a", Status::Ok, Some((0, 0))),
        send(1, "b", Status::Ok, Some((0, 1))),
        send(1, "c", Status::Ok, Some((0, 2))),
        poll(9, 1, &[(0, 0, "a"), (0, 1, "b")]),
        poll(9, 1, &[(0, 2, "c")]),
    ]
}

fn kinds(report: &CheckReport) -> Vec<AnomalyKind> {
    report.anomalies.keys().copied().collect()
}

#[test]
fn a_clean_history_has_no_anomaly() {
    let report = check(&clean(), None);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.stats["sends_ok"], 3);
    assert_eq!(report.stats["records_read"], 3);
}

#[test]
fn an_acknowledged_value_missing_below_later_reads_is_lost() {
    let mut ops = clean();
    ops[3] = poll(9, 1, &[(0, 0, "a")]);
    ops[4] = poll(9, 2, &[(0, 2, "c")]);
    let report = check(&ops, None);
    assert_eq!(kinds(&report), vec![AnomalyKind::Lost], "{report:?}");
    assert!(report.anomalies[&AnomalyKind::Lost].examples[0].contains("\"b\""));
}

#[test]
fn an_acknowledged_value_nobody_read_past_is_unseen() {
    let mut ops = clean();
    ops.pop();
    let report = check(&ops, None);
    assert_eq!(kinds(&report), vec![AnomalyKind::Unseen], "{report:?}");
    assert_eq!(report.anomalies[&AnomalyKind::Unseen].count, 1);
}

#[test]
fn a_value_at_two_offsets_is_a_duplicate_only_with_idempotence() {
    let mut ops = clean();
    ops.push(poll(9, 1, &[(0, 3, "c")]));
    let report = check(&ops, None);
    assert_eq!(
        report.anomalies[&AnomalyKind::Duplicate].count,
        1,
        "{report:?}"
    );

    // The same history from a producer without idempotence: counted, not an anomaly.
    let mut ops = clean();
    ops[2] = plain_send(1, "c", (0, 2));
    ops.push(poll(9, 1, &[(0, 3, "c")]));
    let report = check(&ops, None);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.stats["duplicates_without_idempotence"], 1);
}

#[test]
fn two_values_at_one_offset_are_inconsistent() {
    let mut ops = clean();
    ops.push(send(2, "d", Status::Info, Some((0, 0))));
    ops.push(poll(8, 1, &[(0, 0, "d")]));
    let report = check(&ops, None);
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::InconsistentOffsets],
        "{report:?}"
    );
}

#[test]
fn a_value_read_away_from_its_acknowledged_offset_is_inconsistent() {
    let mut ops = clean();
    ops[4] = poll(9, 1, &[(0, 2, "b"), (0, 3, "c")]);
    ops[3] = poll(9, 1, &[(0, 0, "a")]);
    let report = check(&ops, None);
    assert!(
        report
            .anomalies
            .contains_key(&AnomalyKind::InconsistentOffsets),
        "{report:?}"
    );
}

#[test]
fn a_definitely_failed_write_that_is_read_is_an_aborted_read() {
    let mut ops = clean();
    ops.push(send(2, "x", Status::Fail, Some((0, 3))));
    let report = check(&ops, None);
    assert!(report.is_clean(), "{report:?}");
    ops.push(poll(9, 1, &[(0, 3, "x")]));
    let report = check(&ops, None);
    assert_eq!(kinds(&report), vec![AnomalyKind::AbortedRead], "{report:?}");
    // An indeterminate write may be read.
    ops[5] = send(2, "x", Status::Info, Some((0, 3)));
    assert!(check(&ops, None).is_clean());
}

#[test]
fn a_value_nobody_sent_is_unexpected() {
    let mut ops = clean();
    ops.push(poll(9, 1, &[(0, 3, "ghost")]));
    let report = check(&ops, None);
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::UnexpectedValue],
        "{report:?}"
    );
}

#[test]
fn a_session_reading_backwards_is_non_monotonic_but_a_new_session_may() {
    let mut ops = clean();
    ops.push(poll(9, 1, &[(0, 1, "b")]));
    let report = check(&ops, None);
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::NonMonotonicPoll],
        "{report:?}"
    );
    let last = ops.len() - 1;
    ops[last] = poll(9, 2, &[(0, 1, "b")]);
    assert!(check(&ops, None).is_clean());
}

#[test]
fn a_session_jumping_over_a_known_value_skips_but_not_over_a_control_offset() {
    // Session 1 of process 7 jumps from 0 to 2 over "b", which process 9 read at 1.
    let mut ops = clean();
    ops.push(poll(7, 1, &[(0, 0, "a")]));
    ops.push(poll(7, 1, &[(0, 2, "c")]));
    let report = check(&ops, None);
    assert_eq!(kinds(&report), vec![AnomalyKind::SkippedPoll], "{report:?}");
    // A jump over an offset nobody saw a value at (an epoch marker) is fine.
    let ops = vec![
        send(1, "a", Status::Ok, Some((0, 0))),
        send(1, "c", Status::Ok, Some((0, 2))),
        poll(7, 1, &[(0, 0, "a")]),
        poll(7, 1, &[(0, 2, "c")]),
    ];
    assert!(check(&ops, None).is_clean());
}

#[test]
fn one_partition_owned_by_two_members_in_one_snapshot_is_a_double_assignment() {
    // Members' own views are informational only.
    let mut ops = clean();
    ops.push(group_poll(3, "m3", 5, &[0, 1]));
    ops.push(group_poll(4, "m4", 5, &[1]));
    assert!(check(&ops, None).is_clean());
    // The coordinator's own snapshot giving partition 2 to two members.
    let mut ops = clean();
    ops.push(Op::GroupSnapshot {
        invoke_ms: 5,
        complete_ms: 6,
        group_epoch: 3,
        members: vec![
            MemberView {
                member: "m1".into(),
                member_epoch: 3,
                partitions: vec![0, 2],
            },
            MemberView {
                member: "m2".into(),
                member_epoch: 3,
                partitions: vec![1, 2],
            },
        ],
    });
    let report = check(&ops, None);
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::DoubleAssignment],
        "{report:?}"
    );
}

#[test]
fn a_commit_below_an_earlier_acknowledged_commit_goes_backwards() {
    let mut ops = clean();
    ops.push(commit(3, 10, 20, &[(0, 5)]));
    // Concurrent with the first: no order between them.
    ops.push(commit(4, 15, 25, &[(0, 3)]));
    ops.push(commit(4, 30, 40, &[(0, 6)]));
    assert!(check(&ops, None).is_clean());
    ops.push(commit(4, 50, 60, &[(0, 4)]));
    let report = check(&ops, None);
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::CommitBackwards],
        "{report:?}"
    );
    // A read of the committed offsets below an acknowledged commit is the same anomaly.
    let mut ops = clean();
    ops.push(commit(3, 10, 20, &[(0, 5)]));
    ops.push(Op::CommittedRead {
        process: 8,
        invoke_ms: 30,
        complete_ms: 31,
        status: Status::Ok,
        offsets: vec![(0, 2)],
    });
    let report = check(&ops, None);
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::CommitBackwards],
        "{report:?}"
    );
}

fn replica(node: u32, entries: &[(u64, u64, Option<&str>)]) -> ReplicaLog {
    ReplicaLog {
        node,
        partition: 0,
        log_start: 0,
        entries: entries
            .iter()
            .map(|(offset, epoch, value)| ReplicaEntry {
                offset: *offset,
                epoch: *epoch,
                value: value.map(str::to_string),
            })
            .collect(),
    }
}

fn three_replicas(third: ReplicaLog) -> Replicas {
    let good = [
        (0, 1, Some("a")),
        (1, 1, Some("b")),
        (2, 1, Some("c")),
        (3, 2, None),
    ];
    Replicas {
        logs: vec![replica(1, &good), replica(2, &good), third],
        replication_factor: 3,
        high_watermarks: [(0, 4)].into_iter().collect(),
    }
}

#[test]
fn replicas_that_agree_below_the_bound_pass() {
    let replicas = three_replicas(replica(
        3,
        &[(0, 1, Some("a")), (1, 1, Some("b")), (2, 1, Some("c"))],
    ));
    let report = check(&clean(), Some(&replicas));
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.stats["replica_offsets_compared"], 4);
}

#[test]
fn replicas_holding_different_records_below_the_bound_diverge() {
    let replicas = three_replicas(replica(
        3,
        &[(0, 1, Some("a")), (1, 2, Some("z")), (2, 1, Some("c"))],
    ));
    let report = check(&clean(), Some(&replicas));
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::ReplicaDivergence],
        "{report:?}"
    );
    assert!(report.anomalies[&AnomalyKind::ReplicaDivergence].examples[0].contains("0@1"));
}

#[test]
fn a_committed_offset_on_fewer_than_a_majority_is_missing() {
    // Offset 3 (the marker, below the high watermark 4) is on node 1 only.
    let mut replicas = three_replicas(replica(3, &[(0, 1, Some("a"))]));
    replicas.logs[1].entries.pop();
    let report = check(&clean(), Some(&replicas));
    assert_eq!(
        kinds(&report),
        vec![AnomalyKind::ReplicaMissing],
        "{report:?}"
    );
    // An acknowledged value the majority holds something else instead of.
    let ops = vec![
        send(1, "a", Status::Ok, Some((0, 0))),
        send(1, "q", Status::Ok, Some((0, 1))),
    ];
    let good = [(0, 1, Some("a")), (1, 2, Some("r"))];
    let replicas = Replicas {
        logs: vec![replica(1, &good), replica(2, &good), replica(3, &good)],
        replication_factor: 3,
        high_watermarks: Default::default(),
    };
    let report = check(&ops, Some(&replicas));
    assert!(
        report.anomalies[&AnomalyKind::ReplicaMissing].examples[0].contains("\"q\""),
        "{report:?}"
    );
}

fn drain_poll(process: u32, records: &[(u32, u64, &str)]) -> Op {
    match poll(process, 1, records) {
        Op::Poll {
            process,
            session,
            invoke_ms,
            complete_ms,
            status,
            member,
            records,
            error,
            ..
        } => Op::Poll {
            process,
            reader: ReaderKind::Drain,
            session,
            invoke_ms,
            complete_ms,
            status,
            member,
            records,
            error,
        },
        _ => unreachable!(),
    }
}

#[test]
fn a_write_read_during_the_run_but_not_by_the_drain_is_forgotten() {
    let ops = vec![
        send(1, "a", Status::Ok, Some((0, 0))),
        send(1, "b", Status::Ok, Some((0, 1))),
        poll(2, 1, &[(0, 0, "a"), (0, 1, "b")]),
        // After the power cut only "a" was still there.
        drain_poll(3, &[(0, 0, "a")]),
    ];
    let mut report = check(&ops, None);
    assert!(report.is_clean(), "{report:?}");
    check_durable_at_end(&ops, &mut report);
    let forgotten = &report.anomalies[&AnomalyKind::Forgotten];
    assert_eq!(forgotten.count, 1);
    assert!(forgotten.examples[0].contains("\"b\""), "{forgotten:?}");

    let mut both_there = check(&ops[..3], None);
    let mut with_drain = ops[..3].to_vec();
    with_drain.push(drain_poll(3, &[(0, 0, "a"), (0, 1, "b")]));
    check_durable_at_end(&with_drain, &mut both_there);
    assert!(both_there.is_clean(), "{both_there:?}");
}

// The compacted topic (crate::compaction): key "a" on partition 0, key "b" on partition 1.

/// A write of the compacted topic invoked at `invoke_ms`, completed 10 ms later.
fn keyed_send(
    key: &str,
    id: &str,
    tombstone: bool,
    status: Status,
    at: (u32, Option<u64>),
    invoke_ms: u64,
) -> Op {
    Op::KeyedSend {
        process: 50,
        key: key.into(),
        id: id.into(),
        tombstone,
        invoke_ms,
        complete_ms: invoke_ms + 10,
        status,
        partition: at.0,
        offset: at.1,
        error: None,
    }
}

/// A write acknowledged at `partition@offset`.
fn keyed_ok(key: &str, id: &str, tombstone: bool, at: (u32, u64), invoke_ms: u64) -> Op {
    keyed_send(
        key,
        id,
        tombstone,
        Status::Ok,
        (at.0, Some(at.1)),
        invoke_ms,
    )
}

/// One record the compacted topic's drain read: (partition, offset, key, id, tombstone).
type Drained<'a> = (u32, u64, &'a str, &'a str, bool);

/// One drain poll completing at `complete_ms`.
fn keyed_drain(complete_ms: u64, records: &[Drained]) -> Op {
    Op::KeyedPoll {
        process: 51,
        invoke_ms: complete_ms - 100,
        complete_ms,
        status: Status::Ok,
        records: records
            .iter()
            .map(|&(partition, offset, key, id, tombstone)| KeyedRead {
                partition,
                offset,
                key: key.into(),
                value: (!tombstone).then(|| id.to_string()),
                id: Some(id.into()),
            })
            .collect(),
        error: None,
    }
}

/// Key a written at 0 and 2 (values), key b at 0 (value) and 1 (a tombstone invoked at
/// `tombstone_ms`); the drain ends at 20 s.
fn compacted_writes(tombstone_ms: u64) -> Vec<Op> {
    vec![
        keyed_ok("a", "a1", false, (0, 0), 1_000),
        keyed_ok("b", "b1", false, (1, 0), 1_100),
        keyed_ok("a", "a2", false, (0, 2), 1_200),
        keyed_ok("b", "b2", true, (1, 1), tombstone_ms),
    ]
}

fn with_drain(mut ops: Vec<Op>, records: &[Drained]) -> Vec<Op> {
    ops.push(keyed_drain(20_000, records));
    ops
}

#[test]
fn a_compacted_drain_may_miss_superseded_writes_but_not_a_keys_newest() {
    // Everything there, or every superseded write gone: clean.
    let everything = with_drain(
        compacted_writes(19_000),
        &[
            (0, 0, "a", "a1", false),
            (0, 2, "a", "a2", false),
            (1, 0, "b", "b1", false),
            (1, 1, "b", "b2", true),
        ],
    );
    assert!(check(&everything, None).is_clean());
    let compacted = with_drain(
        compacted_writes(19_000),
        &[(0, 2, "a", "a2", false), (1, 1, "b", "b2", true)],
    );
    let report = check(&compacted, None);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.stats["compacted_acked_superseded_gone"], 2);
    assert_eq!(report.stats["compacted_acked_read"], 2);

    // Key a's newest value missing: with or without the value it replaced.
    for records in [
        &[(0, 0, "a", "a1", false), (1, 1, "b", "b2", true)][..],
        &[(1, 1, "b", "b2", true)][..],
    ] {
        let report = check(&with_drain(compacted_writes(19_000), records), None);
        assert_eq!(
            kinds(&report),
            vec![AnomalyKind::CompactedLatestMissing],
            "{report:?}"
        );
        assert!(
            report.anomalies[&AnomalyKind::CompactedLatestMissing].examples[0].contains("\"a2\"")
        );
    }
    // The general checks exempt nothing of the main topic beside a compacted history: a
    // main-topic value missing below later reads is still lost.
    let mut mixed = compacted;
    mixed.extend([
        send(1, "x", Status::Ok, Some((0, 0))),
        send(1, "y", Status::Ok, Some((0, 1))),
        drain_poll(3, &[(0, 1, "y")]),
    ]);
    assert_eq!(kinds(&check(&mixed, None)), vec![AnomalyKind::Lost]);
}

#[test]
fn a_newest_tombstone_may_go_only_after_delete_retention() {
    let drained = [(0, 2, "a", "a2", false)];
    // Invoked at 19 s, the drain ended at 20 s: younger than delete.retention.ms, it must be
    // there.
    let young = check(&with_drain(compacted_writes(19_000), &drained), None);
    assert_eq!(kinds(&young), vec![AnomalyKind::CompactedLatestMissing]);
    assert!(
        young.anomalies[&AnomalyKind::CompactedLatestMissing].examples[0]
            .contains("\"b2\" (a tombstone)")
    );
    // Invoked delete.retention.ms (less the clock margin) before the drain ended: may be gone
    // (and the value it deleted with it).
    let boundary =
        20_000 + crate::compaction::CLOCK_MARGIN_MS - crate::compaction::DELETE_RETENTION_MS;
    let expired = check(&with_drain(compacted_writes(boundary), &drained), None);
    assert!(expired.is_clean(), "{expired:?}");
    assert_eq!(expired.stats["compacted_tombstones_expired"], 1);
    let just_young = check(&with_drain(compacted_writes(boundary + 1), &drained), None);
    assert_eq!(
        kinds(&just_young),
        vec![AnomalyKind::CompactedLatestMissing]
    );
    // A newest value is never allowed to expire, however old.
    let old_value = with_drain(vec![keyed_ok("a", "a1", false, (0, 0), 1)], &[]);
    assert_eq!(
        kinds(&check(&old_value, None)),
        vec![AnomalyKind::CompactedLatestMissing]
    );
}

#[test]
fn later_unacknowledged_records_of_the_key_supersede_but_earlier_ones_do_not() {
    let drained = [(1, 1, "b", "b2", true)];
    // a3, indeterminate, read above a2: a2 may be gone.
    let mut read_later = compacted_writes(19_000);
    read_later.push(keyed_send("a", "a3", false, Status::Info, (0, None), 1_300));
    let mut records = drained.to_vec();
    records.insert(0, (0, 4, "a", "a3", false));
    let report = check(&with_drain(read_later.clone(), &records), None);
    assert!(report.is_clean(), "{report:?}");
    // a3 not read: a2 is key a's newest record as far as anyone knows.
    let report = check(&with_drain(read_later, &drained), None);
    assert_eq!(kinds(&report), vec![AnomalyKind::CompactedLatestMissing]);
    // An indeterminate tombstone invoked after a2 was acknowledged may have landed above it
    // and expired: a2 may be gone. One invoked before a2 completed cannot supersede it.
    let mut after = compacted_writes(19_000);
    after.push(keyed_send("a", "a3", true, Status::Info, (0, None), 1_210));
    assert!(check(&with_drain(after, &drained), None).is_clean());
    let mut before = compacted_writes(19_000);
    before.push(keyed_send("a", "a3", true, Status::Info, (0, None), 1_205));
    assert_eq!(
        kinds(&check(&with_drain(before, &drained), None)),
        vec![AnomalyKind::CompactedLatestMissing]
    );
    // Another key's later record in the same partition supersedes nothing of a.
    let mut other_key = compacted_writes(19_000);
    other_key.push(keyed_ok("c", "c1", false, (0, 3), 1_300));
    let report = check(
        &with_drain(
            other_key,
            &[(0, 3, "c", "c1", false), (1, 1, "b", "b2", true)],
        ),
        None,
    );
    assert_eq!(kinds(&report), vec![AnomalyKind::CompactedLatestMissing]);
}

#[test]
fn compacted_reads_must_be_writes_at_their_offsets_in_rising_order() {
    let all = [
        (0, 2, "a", "a2", false),
        (1, 0, "b", "b1", false),
        (1, 1, "b", "b2", true),
    ];
    assert!(check(&with_drain(compacted_writes(19_000), &all), None).is_clean());
    let mutated = |change: &dyn Fn(&mut Vec<Drained<'static>>)| {
        let mut records = all.to_vec();
        change(&mut records);
        kinds(&check(
            &with_drain(compacted_writes(19_000), &records),
            None,
        ))
    };
    // An id nobody wrote, a write read under another key, a tombstone read as a value.
    assert_eq!(
        mutated(&|records| records.push((1, 2, "b", "b7", false))),
        vec![AnomalyKind::UnexpectedValue]
    );
    assert_eq!(
        mutated(&|records| records[1].2 = "a"),
        vec![AnomalyKind::UnexpectedValue]
    );
    assert_eq!(
        mutated(&|records| records[2].4 = false),
        vec![AnomalyKind::UnexpectedValue]
    );
    // Offsets going back within a partition; a write read away from its acknowledged offset
    // (and so at two offsets).
    assert_eq!(
        mutated(&|records| records.swap(1, 2)),
        vec![AnomalyKind::NonMonotonicPoll]
    );
    assert_eq!(
        mutated(&|records| records.push((0, 5, "a", "a2", false))),
        vec![AnomalyKind::Duplicate, AnomalyKind::InconsistentOffsets]
    );
    // A definitely failed write that was read.
    let mut failed = compacted_writes(19_000);
    failed.push(keyed_send("a", "a3", false, Status::Fail, (0, None), 1_300));
    let mut records = all.to_vec();
    records.push((0, 3, "a", "a3", false));
    assert_eq!(
        kinds(&check(&with_drain(failed, &records), None)),
        vec![AnomalyKind::AbortedRead]
    );
}

/// One replica of the compacted topic: (partition, offset, value) entries at epoch 1.
fn compacted_replica(node: u32, partition: u32, entries: &[(u64, Option<&str>)]) -> ReplicaLog {
    ReplicaLog {
        node,
        partition,
        log_start: 0,
        entries: entries
            .iter()
            .map(|&(offset, value)| ReplicaEntry {
                offset,
                epoch: 1,
                value: value.map(str::to_owned),
            })
            .collect(),
    }
}

/// The anomalies of three replicas holding `partition_0` (one entry list per node) and a
/// settled partition 1, against the writes of [`compacted_writes`].
fn compacted_replica_anomalies(partition_0: [&[(u64, Option<&str>)]; 3]) -> Vec<AnomalyKind> {
    let ops = with_drain(
        compacted_writes(19_000),
        &[(0, 2, "a", "a2", false), (1, 1, "b", "b2", true)],
    );
    let mut logs = Vec::new();
    for node in 1..=3 {
        logs.push(compacted_replica(node, 0, partition_0[node as usize - 1]));
        logs.push(compacted_replica(
            node,
            1,
            &[(0, Some(COMPACTED_TEXT)), (1, Some(TOMBSTONE_TEXT))],
        ));
    }
    let mut report = CheckReport::default();
    crate::compaction::check_replicas(&ops, &logs, 3, &mut report);
    kinds(&report)
}

#[test]
fn compacted_replicas_may_hold_superseded_writes_compacted_but_must_agree_and_keep_the_newest() {
    // Offset 1 of partition 0 is a decision marker (a control record); the superseded a1 at
    // 0 was compacted away, b1 too, and the tombstone b2 may go as well.
    let marker = (1, None);
    let settled: &[(u64, Option<&str>)] = &[(0, Some(COMPACTED_TEXT)), marker, (2, Some("a2"))];
    assert_eq!(compacted_replica_anomalies([settled; 3]), vec![]);
    let a1_kept: &[(u64, Option<&str>)] = &[(0, Some("a1")), marker, (2, Some("a2"))];
    assert_eq!(compacted_replica_anomalies([a1_kept; 3]), vec![]);
    // Replicas settled to the same decision that differ diverge.
    assert_eq!(
        compacted_replica_anomalies([settled, settled, a1_kept]),
        vec![AnomalyKind::ReplicaDivergence]
    );
    // Key a's newest value compacted away on every replica.
    let a2_gone: &[(u64, Option<&str>)] =
        &[(0, Some(COMPACTED_TEXT)), marker, (2, Some(COMPACTED_TEXT))];
    assert_eq!(
        compacted_replica_anomalies([a2_gone; 3]),
        vec![AnomalyKind::ReplicaMissing]
    );
    // Offsets below the bound held by one replica only.
    let short: &[(u64, Option<&str>)] = &[(0, Some(COMPACTED_TEXT))];
    assert_eq!(
        compacted_replica_anomalies([settled, short, short]),
        vec![AnomalyKind::ReplicaMissing]
    );
}

#[test]
fn padded_values_read_back_as_their_ids_and_damaged_padding_does_not() {
    let padded = crate::checker::padded_value("7-42", 163_840);
    assert_eq!(padded.len(), 163_840);
    assert_eq!(crate::checker::value_text(Some(&padded)), "7-42");
    assert_eq!(crate::checker::padded_value("7-42", 0), b"7-42".to_vec());
    assert_eq!(crate::checker::value_text(Some(b"7-42")), "7-42");
    let mut damaged = padded.clone();
    damaged[100_000] = b'x';
    assert_ne!(crate::checker::value_text(Some(&damaged)), "7-42");
    assert_eq!(
        crate::checker::value_text(None),
        crate::checker::TOMBSTONE_TEXT
    );
}
