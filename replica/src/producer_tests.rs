//! Idempotent producers through the engine: one input, the exact effects (STYLE habit 1).

use crate::producers::{ProducerBatch, Producers};
use crate::*;
use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

/// An unstamped batch of producer 7, epoch 0, starting at `sequence`, of `records` records.
fn idempotent(sequence: i32, records: u32) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(1_000).producer(7, 0, sequence);
    for _ in 0..records {
        builder.push(&Record::new("v"));
    }
    builder.build()
}

fn marker(offset: u64, epoch: u64) -> RecordBatch {
    RecordBatchBuilder::control_marker(0).stamped(Offset(offset), Epoch(epoch))
}

fn reply(request: u64, base: u64, epoch: u64, duplicate: bool) -> Effect {
    Effect::Reply {
        request: RequestId(request),
        result: Ok(ProduceResponse {
            base_offset: Offset(base),
            leader_epoch: Epoch(epoch),
            duplicate,
        }),
    }
}

fn produce(request: u64, batch: RecordBatch) -> Input {
    Input::Produce {
        request: RequestId(request),
        batch,
        acks: Acks::All,
    }
}

/// A single voter recovered from `recovered`, led in the next epoch with its marker durable
/// and committed. Returns it and the time reached.
fn single_leader(recovered: Recovered, headers: &[RecordBatch]) -> (Replica, Millis) {
    let config = Config::for_tests();
    let log_end = recovered.log_end;
    let epoch = recovered.promised_epoch.next();
    let (mut replica, _) = Replica::new(config.clone(), A, vec![A], recovered, Millis(0)).unwrap();
    replica.recover_producers(headers.iter().map(|batch| batch.header()));
    let now = Millis(config.election_timeout_ms);
    replica.step(now, Input::Tick);
    replica.step(now, Input::PromisePersisted { epoch });
    replica.step(
        now,
        Input::Durable {
            log_end: log_end.plus(1),
        },
    );
    assert_eq!(replica.status().role, Role::Leader);
    assert_eq!(replica.status().high_watermark, log_end.plus(1));
    (replica, now)
}

fn empty() -> Recovered {
    Recovered {
        promised_epoch: Epoch::ZERO,
        epoch_history: Vec::new(),
        log_start: Offset::ZERO,
        log_end: Offset::ZERO,
    }
}

#[test]
fn a_retried_batch_is_answered_with_its_first_offsets_and_not_appended() {
    let (mut leader, now) = single_leader(empty(), &[]);
    let first = idempotent(0, 2);
    let stamped = first.stamped(Offset(1), Epoch(1));
    assert_eq!(
        leader.step(now, produce(1, first.clone())),
        vec![Effect::Append {
            batches: vec![stamped]
        }]
    );
    assert_eq!(
        leader.step(now, Input::Durable { log_end: Offset(3) }),
        vec![
            Effect::HighWatermark { offset: Offset(3) },
            reply(1, 1, 1, false)
        ]
    );
    let before = leader.status();
    // The response was lost; the producer sends the same batch again.
    assert_eq!(
        leader.step(now, produce(2, first)),
        vec![reply(2, 1, 1, true)]
    );
    assert_eq!(leader.status(), before, "nothing appended");
    // The next sequence is appended as usual.
    let next = idempotent(2, 1);
    assert_eq!(
        leader.step(now, produce(3, next.clone())),
        vec![Effect::Append {
            batches: vec![next.stamped(Offset(3), Epoch(1))]
        }]
    );
}

#[test]
fn a_duplicate_of_an_uncommitted_batch_is_answered_when_the_original_commits() {
    let (mut leader, now) = single_leader(empty(), &[]);
    let first = idempotent(0, 1);
    leader.step(now, produce(1, first.clone()));
    // The retry arrives before the first attempt is durable: it waits for the same commit.
    assert_eq!(leader.step(now, produce(2, first)), vec![]);
    assert_eq!(leader.status().log_end, Offset(2));
    assert_eq!(
        leader.step(now, Input::Durable { log_end: Offset(2) }),
        vec![
            Effect::HighWatermark { offset: Offset(2) },
            reply(1, 1, 1, false),
            reply(2, 1, 1, true),
        ]
    );
}

#[test]
fn out_of_order_and_fenced_batches_are_refused_and_change_nothing() {
    let (mut leader, now) = single_leader(empty(), &[]);
    leader.step(now, produce(1, idempotent(0, 2)));
    leader.step(now, Input::Durable { log_end: Offset(3) });
    let before = leader.status();
    let producers_before = leader.producers().clone();
    assert_eq!(
        leader.step(now, produce(2, idempotent(5, 1))),
        vec![Effect::Reply {
            request: RequestId(2),
            result: Err(ApiError::OutOfOrderSequence {
                producer_id: 7,
                expected: 2,
                received: 5,
            }),
        }]
    );
    let mut fenced = RecordBatchBuilder::new(1_000).producer(7, -1, 2);
    fenced.push(&Record::new("v"));
    assert_eq!(
        leader.step(now, produce(3, fenced.build())),
        vec![Effect::Reply {
            request: RequestId(3),
            result: Err(ApiError::InvalidProducerEpoch {
                producer_id: 7,
                current: 0,
                received: -1,
            }),
        }]
    );
    assert_eq!(leader.status(), before);
    assert_eq!(leader.producers(), &producers_before);
}

#[test]
fn after_a_restart_the_state_is_rebuilt_from_the_log_and_still_drops_retries() {
    // The log holds epoch 1's marker and producer 7's batch [1, 3), written before a crash.
    let written = idempotent(0, 2).stamped(Offset(1), Epoch(1));
    let recovered = Recovered {
        promised_epoch: Epoch(1),
        epoch_history: vec![(Epoch(1), Offset(0))],
        log_start: Offset::ZERO,
        log_end: Offset(3),
    };
    let (mut leader, now) = single_leader(recovered, &[marker(0, 1), written]);
    assert_eq!(leader.status().epoch, Epoch(2));
    assert_eq!(
        leader.step(now, produce(1, idempotent(0, 2))),
        vec![reply(1, 1, 2, true)]
    );
    assert_eq!(leader.status().log_end, Offset(4), "only the new marker");
}

#[test]
fn a_follower_learns_producers_from_appends_and_forgets_a_truncated_suffix() {
    let (mut follower, _) =
        Replica::new(Config::for_tests(), B, vec![A, B, C], empty(), Millis(0)).unwrap();
    let now = Millis(1_000);
    let written = idempotent(0, 2).stamped(Offset(1), Epoch(1));
    let message = PeerMessage::Append {
        epoch: Epoch(1),
        prev_offset: Offset(0),
        prev_epoch: Epoch(0),
        batches: vec![marker(0, 1), written],
        commit: Offset(0),
        sent_at: Millis(7),
        log_start: None,
    };
    follower.step(now, Input::Peer { from: A, message });
    follower.step(now, Input::PromisePersisted { epoch: Epoch(1) });
    assert_eq!(follower.status().log_end, Offset(3));
    assert_eq!(
        follower.producers().batches_of(7),
        Some((
            0,
            vec![ProducerBatch {
                first_sequence: 0,
                last_sequence: 1,
                base_offset: Offset(1),
                next_offset: Offset(3),
            }]
        ))
    );
    // Leader C of epoch 2 holds something else at [1, 2): our [1, 3) is cut, and producer 7
    // with it, so its retry will be appended again rather than answered from a lost batch.
    let message = PeerMessage::Append {
        epoch: Epoch(2),
        prev_offset: Offset(1),
        prev_epoch: Epoch(1),
        batches: vec![marker(1, 2)],
        commit: Offset(0),
        sent_at: Millis(20),
        log_start: None,
    };
    follower.step(now, Input::Peer { from: C, message });
    follower.step(now, Input::PromisePersisted { epoch: Epoch(2) });
    assert_eq!(follower.status().log_end, Offset(2));
    assert_eq!(follower.producers().batches_of(7), None);
}

#[test]
fn a_snapshot_ahead_of_the_recovered_log_is_cut_back_to_it() {
    // The snapshot was taken at 5, after producer 7's batches [1, 3) and [3, 5); the crash
    // lost [3, 5), so the log ends at 3.
    let mut taken = Producers::default();
    taken.record(idempotent(0, 2).stamped(Offset(1), Epoch(1)).header());
    taken.record(idempotent(2, 2).stamped(Offset(3), Epoch(1)).header());
    let (through, snapshot) =
        Producers::decode_snapshot(&taken.encode_snapshot(Offset(5))).unwrap();
    let recovered = Recovered {
        promised_epoch: Epoch(1),
        epoch_history: vec![(Epoch(1), Offset(0))],
        log_start: Offset::ZERO,
        log_end: Offset(3),
    };
    let config = Config::for_tests();
    let (mut leader, _) = Replica::new(config.clone(), A, vec![A], recovered, Millis(0)).unwrap();
    leader.restore_producers(snapshot, through);
    let now = Millis(config.election_timeout_ms);
    leader.step(now, Input::Tick);
    leader.step(now, Input::PromisePersisted { epoch: Epoch(2) });
    leader.step(now, Input::Durable { log_end: Offset(4) });
    assert_eq!(leader.status().role, Role::Leader);
    // The kept batch is still recognised; the lost one is new again, and continues it.
    assert_eq!(
        leader.step(now, produce(1, idempotent(0, 2))),
        vec![reply(1, 1, 2, true)]
    );
    let effects = leader.step(now, produce(2, idempotent(2, 2)));
    assert!(
        matches!(effects.first(), Some(Effect::Append { batches }) if batches[0].base_offset() == Offset(4)),
        "{effects:?}"
    );
}

#[test]
fn a_follower_reset_to_the_leaders_log_start_forgets_its_producers() {
    // B holds producer 7's batch of sequences 2 and 3 at [1, 3) (its earlier batches fell to
    // retention before B's log start), nothing committed yet.
    let (mut follower, _) =
        Replica::new(Config::for_tests(), B, vec![A, B, C], empty(), Millis(0)).unwrap();
    let now = Millis(1_000);
    let message = PeerMessage::Append {
        epoch: Epoch(1),
        prev_offset: Offset(0),
        prev_epoch: Epoch(0),
        batches: vec![marker(0, 1), idempotent(2, 2).stamped(Offset(1), Epoch(1))],
        commit: Offset(0),
        sent_at: Millis(7),
        log_start: None,
    };
    follower.step(now, Input::Peer { from: A, message });
    follower.step(now, Input::PromisePersisted { epoch: Epoch(1) });
    assert!(follower.producers().batches_of(7).is_some());
    // Leader A's retention passed offset 10 (everything B holds): B starts its log there.
    // Producer 7's batches are committed history B will never hold again, so it is unknown
    // (its next batch, sequence 4, is refused UnknownProducerId and it starts a new epoch),
    // not known as expecting sequence 2, which would refuse it as out of order for good.
    let message = PeerMessage::Append {
        epoch: Epoch(1),
        prev_offset: Offset(10),
        prev_epoch: Epoch(1),
        batches: Vec::new(),
        commit: Offset(10),
        sent_at: Millis(20),
        log_start: Some(LogStart {
            offset: Offset(10),
            epoch: Epoch(1),
        }),
    };
    let effects = follower.step(now, Input::Peer { from: A, message });
    assert!(
        effects
            .iter()
            .any(|effect| matches!(effect, Effect::ResetLog { .. })),
        "{effects:?}"
    );
    assert_eq!(follower.status().log_start, Offset(10));
    assert_eq!(follower.producers().batches_of(7), None);
}
