//! Multi-voter unit tests: one peer input, the exact effects, and the state left unchanged
//! by every refusal.

use crate::tests::batch;
use crate::*;
use cairn_protocol::batch::RecordBatchBuilder;
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn empty() -> Recovered {
    Recovered {
        promised_epoch: Epoch::ZERO,
        epoch_history: Vec::new(),
        log_start: Offset::ZERO,
        log_end: Offset::ZERO,
    }
}

/// A log of epoch 1 holding offsets [0, 3): batches [0, 2) and [2, 3).
fn epoch_one_log() -> (Recovered, Vec<RecordBatch>) {
    let batches = vec![
        batch(&["a", "b"]).stamped(Offset(0), Epoch(1)),
        batch(&["c"]).stamped(Offset(2), Epoch(1)),
    ];
    let recovered = Recovered {
        promised_epoch: Epoch(1),
        epoch_history: vec![(Epoch(1), Offset(0))],
        log_start: Offset::ZERO,
        log_end: Offset(3),
    };
    (recovered, batches)
}

fn replica(node: NodeId, recovered: Recovered) -> Replica {
    replica_with(Config::for_tests(), node, recovered)
}

fn replica_with(config: Config, node: NodeId, recovered: Recovered) -> Replica {
    Replica::new(config, node, vec![A, B, C], recovered, Millis(0))
        .unwrap()
        .0
}

fn marker(offset: u64, epoch: u64) -> RecordBatch {
    RecordBatchBuilder::control_marker(0).stamped(Offset(offset), Epoch(epoch))
}

/// Fails unless `effects` send a lease probe (to anyone).
fn assert_sends_a_probe(effects: &[Effect]) {
    assert!(
        effects.iter().any(|effect| matches!(
            effect,
            Effect::Send {
                message: PeerMessage::LeaseProbe { .. },
                ..
            }
        )),
        "{effects:?}"
    );
}

fn send(to: NodeId, message: PeerMessage) -> Effect {
    Effect::Send { to, message }
}

fn peer(from: NodeId, message: PeerMessage) -> Input {
    Input::Peer { from, message }
}

fn append(
    epoch: u64,
    prev_offset: u64,
    prev_epoch: u64,
    batches: Vec<RecordBatch>,
    commit: u64,
    sent_at: u64,
) -> PeerMessage {
    PeerMessage::Append {
        epoch: Epoch(epoch),
        prev_offset: Offset(prev_offset),
        prev_epoch: Epoch(prev_epoch),
        batches,
        commit: Offset(commit),
        sent_at: Millis(sent_at),
        log_start: None,
    }
}

fn ok_response(epoch: u64, sent_at: u64, log_end: u64, durable_end: u64) -> PeerMessage {
    PeerMessage::AppendResponse {
        epoch: Epoch(epoch),
        sent_at: Millis(sent_at),
        result: AppendResult::Ok {
            log_end: Offset(log_end),
            durable_end: Offset(durable_end),
        },
    }
}

fn role(role: Role, epoch: u64, leader: Option<NodeId>) -> Effect {
    Effect::RoleChanged {
        role,
        epoch: Epoch(epoch),
        leader,
    }
}

fn produced(request: u64, base: u64, epoch: u64) -> Effect {
    Effect::Reply {
        request: RequestId(request),
        result: Ok(ProduceResponse {
            base_offset: Offset(base),
            leader_epoch: Epoch(epoch),
            duplicate: false,
        }),
    }
}

/// Node A wins the epoch after its recovered one, with B's pre-vote and grant, at t=1000.
/// Returns the leader and the effects of winning.
fn elect(recovered: Recovered) -> (Replica, Vec<Effect>) {
    elect_with(Config::for_tests(), recovered)
}

fn elect_with(config: Config, recovered: Recovered) -> (Replica, Vec<Effect>) {
    let log_end = recovered.log_end;
    let last_log_epoch = recovered
        .epoch_history
        .last()
        .map_or(Epoch(0), |entry| entry.0);
    let epoch = recovered.promised_epoch.next();
    let mut leader = replica_with(config, A, recovered);
    let now = Millis(1_000);
    let probe = PeerMessage::LeaseProbe {
        epoch,
        last_log_epoch,
        log_end,
    };
    assert_eq!(
        leader.step(now, Input::Tick),
        vec![send(B, probe.clone()), send(C, probe)]
    );
    let request = PeerMessage::LeaseRequest {
        epoch,
        last_log_epoch,
        log_end,
    };
    assert_eq!(
        leader.step(
            now,
            peer(
                B,
                PeerMessage::LeaseProbeResponse {
                    epoch,
                    granted: true,
                    promised_epoch: Epoch(0)
                }
            )
        ),
        vec![
            role(Role::Candidate, epoch.0, None),
            Effect::PersistPromise { epoch },
            send(B, request.clone()),
            send(C, request),
        ]
    );
    // The grant alone is not a majority: our own vote counts once our promise is durable.
    assert_eq!(
        leader.step(
            now,
            peer(
                B,
                PeerMessage::LeaseResponse {
                    epoch,
                    granted: true,
                    promised_epoch: epoch
                }
            )
        ),
        vec![]
    );
    let effects = leader.step(now, Input::PromisePersisted { epoch });
    assert_eq!(leader.status().role, Role::Leader);
    (leader, effects)
}

/// A leads epoch 1 with an empty log; its marker [0, 1) was sent to B and C at t=1000.
fn leader3() -> Replica {
    let (leader, effects) = elect(empty());
    let sent = append(1, 0, 0, vec![marker(0, 1)], 0, 1_000);
    assert_eq!(
        effects,
        vec![
            role(Role::Leader, 1, Some(A)),
            Effect::Append {
                batches: vec![marker(0, 1)]
            },
            send(B, sent.clone()),
            send(C, sent),
        ]
    );
    leader
}

/// B follows A in epoch 1 and holds A's marker, not yet durable.
fn follower3() -> Replica {
    let mut follower = replica(B, empty());
    let now = Millis(1_000);
    let message = append(1, 0, 0, vec![marker(0, 1)], 0, 7);
    // First the promise of epoch 1 must be durable (DESIGN 5.1).
    assert_eq!(
        follower.step(now, peer(A, message)),
        vec![Effect::PersistPromise { epoch: Epoch(1) }]
    );
    assert_eq!(
        follower.step(now, Input::PromisePersisted { epoch: Epoch(1) }),
        vec![
            role(Role::Follower, 1, Some(A)),
            Effect::Append {
                batches: vec![marker(0, 1)]
            },
            send(A, ok_response(1, 7, 1, 0)),
        ]
    );
    follower
}

#[test]
fn a_probe_is_answered_by_the_grant_rules_and_changes_nothing() {
    let (recovered, _) = epoch_one_log();
    let mut voter = replica(B, recovered);
    let probe = |epoch: u64, last_log_epoch: u64, log_end: u64| PeerMessage::LeaseProbe {
        epoch: Epoch(epoch),
        last_log_epoch: Epoch(last_log_epoch),
        log_end: Offset(log_end),
    };
    let answer = |epoch: u64, granted: bool| {
        send(
            A,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(epoch),
                granted,
                promised_epoch: Epoch(1),
            },
        )
    };
    let before = voter.status();
    // (b): within lease_ms of a restart nothing is granted.
    assert_eq!(
        voter.step(Millis(199), peer(A, probe(2, 1, 3))),
        vec![answer(2, false)]
    );
    // (a): the epoch must be above the promise.
    assert_eq!(
        voter.step(Millis(200), peer(A, probe(1, 1, 3))),
        vec![answer(1, false)]
    );
    // (c): the candidate's log must be at least as up to date: last epoch, then log end.
    assert_eq!(
        voter.step(Millis(200), peer(A, probe(2, 1, 2))),
        vec![answer(2, false)]
    );
    assert_eq!(
        voter.step(Millis(200), peer(A, probe(2, 0, 9))),
        vec![answer(2, false)]
    );
    assert_eq!(
        voter.step(Millis(200), peer(A, probe(2, 1, 3))),
        vec![answer(2, true)]
    );
    assert_eq!(
        voter.step(Millis(200), peer(A, probe(2, 2, 0))),
        vec![answer(2, true)]
    );
    assert_eq!(voter.status(), before);
    // A real request is then granted, proving the probe bound nothing.
    let request = PeerMessage::LeaseRequest {
        epoch: Epoch(2),
        last_log_epoch: Epoch(1),
        log_end: Offset(3),
    };
    assert_eq!(
        voter.step(Millis(200), peer(A, request)),
        vec![Effect::PersistPromise { epoch: Epoch(2) }]
    );
}

#[test]
fn a_grant_is_sent_only_once_its_promise_is_durable_and_binds_for_lease_ms() {
    let mut voter = replica(B, empty());
    let now = Millis(300);
    let request = |epoch: u64| PeerMessage::LeaseRequest {
        epoch: Epoch(epoch),
        last_log_epoch: Epoch(0),
        log_end: Offset(0),
    };
    assert_eq!(
        voter.step(now, peer(A, request(1))),
        vec![Effect::PersistPromise { epoch: Epoch(1) }]
    );
    assert_eq!(voter.status().promised_epoch, Epoch(0));
    // Another candidate is refused while the first grant is on its way, and it learns the
    // epoch being promised. The refusal changes nothing.
    let before = voter.status();
    assert_eq!(
        voter.step(now, peer(C, request(2))),
        vec![send(
            C,
            PeerMessage::LeaseResponse {
                epoch: Epoch(2),
                granted: false,
                promised_epoch: Epoch(1)
            }
        )]
    );
    assert_eq!(voter.status(), before);
    let granted_at = Millis(310);
    assert_eq!(
        voter.step(granted_at, Input::PromisePersisted { epoch: Epoch(1) }),
        vec![
            send(
                A,
                PeerMessage::LeaseResponse {
                    epoch: Epoch(1),
                    granted: true,
                    promised_epoch: Epoch(1)
                }
            ),
            role(Role::Follower, 1, None),
        ]
    );
    assert_eq!(voter.status().promised_epoch, Epoch(1));
    // Rule (b): no other grant until lease_ms after the grant was sent.
    let refuse = send(
        C,
        PeerMessage::LeaseResponse {
            epoch: Epoch(2),
            granted: false,
            promised_epoch: Epoch(1),
        },
    );
    assert_eq!(
        voter.step(granted_at.plus(199), peer(C, request(2))),
        vec![refuse]
    );
    assert_eq!(
        voter.step(granted_at.plus(200), peer(C, request(2))),
        vec![Effect::PersistPromise { epoch: Epoch(2) }]
    );
}

#[test]
fn a_rejected_candidacy_retries_above_the_promises_it_heard_of() {
    let mut candidate = replica(A, empty());
    let now = Millis(1_000);
    candidate.step(now, Input::Tick);
    candidate.step(
        now,
        peer(
            B,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(1),
                granted: true,
                promised_epoch: Epoch(0),
            },
        ),
    );
    candidate.step(now, Input::PromisePersisted { epoch: Epoch(1) });
    let before = candidate.status();
    assert_eq!(
        candidate.step(
            now,
            peer(
                B,
                PeerMessage::LeaseResponse {
                    epoch: Epoch(1),
                    granted: false,
                    promised_epoch: Epoch(5)
                }
            )
        ),
        vec![]
    );
    assert_eq!(candidate.status(), before);
    // The next attempt (after the timeout with its jitter) probes epoch 6.
    let later = Millis(2_000);
    let probe = PeerMessage::LeaseProbe {
        epoch: Epoch(6),
        last_log_epoch: Epoch(0),
        log_end: Offset(0),
    };
    assert_eq!(
        candidate.step(later, Input::Tick),
        vec![send(B, probe.clone()), send(C, probe)]
    );
}

#[test]
fn acks_all_waits_for_a_majority_of_durable_copies() {
    let mut leader = leader3();
    let now = Millis(1_010);
    let stamped = batch(&["x"]).stamped(Offset(1), Epoch(1));
    let sent = append(1, 1, 1, vec![stamped.clone()], 0, 1_010);
    assert_eq!(
        leader.step(
            now,
            Input::Produce {
                request: RequestId(7),
                batch: batch(&["x"]),
                acks: Acks::All
            }
        ),
        vec![
            Effect::Append {
                batches: vec![stamped]
            },
            send(B, sent.clone()),
            send(C, sent)
        ]
    );
    // The leader's own flushes are not a majority.
    assert_eq!(
        leader.step(now, Input::Durable { log_end: Offset(1) }),
        vec![]
    );
    assert_eq!(
        leader.step(now, Input::Durable { log_end: Offset(2) }),
        vec![]
    );
    // B holds both batches but flushed only the marker: the marker commits.
    assert_eq!(
        leader.step(now, peer(B, ok_response(1, 1_010, 2, 1))),
        vec![Effect::HighWatermark { offset: Offset(1) }]
    );
    // A response that does not flush more moves nothing.
    let before = leader.status();
    assert_eq!(
        leader.step(now, peer(C, ok_response(1, 1_000, 1, 0))),
        vec![]
    );
    assert_eq!(leader.status(), before);
    assert_eq!(
        leader.step(now, peer(B, ok_response(1, 1_010, 2, 2))),
        vec![
            Effect::HighWatermark { offset: Offset(2) },
            produced(7, 1, 1)
        ]
    );
}

#[test]
fn nothing_of_an_older_epoch_commits_before_the_new_marker() {
    let (recovered, _) = epoch_one_log();
    let (mut leader, effects) = elect(recovered);
    let sent = append(2, 3, 1, vec![marker(3, 2)], 0, 1_000);
    assert_eq!(
        effects,
        vec![
            role(Role::Leader, 2, Some(A)),
            Effect::Append {
                batches: vec![marker(3, 2)]
            },
            send(B, sent.clone()),
            send(C, sent),
        ]
    );
    let now = Millis(1_005);
    // A majority (A and B) holds [0, 3) of epoch 1 durably: by count alone it would be
    // committed, but the marker of epoch 2 is not yet durable on a majority.
    assert_eq!(
        leader.step(now, peer(B, ok_response(2, 1_000, 3, 3))),
        vec![]
    );
    assert_eq!(leader.status().high_watermark, Offset(0));
    assert_eq!(
        leader.step(now, Input::Durable { log_end: Offset(4) }),
        vec![]
    );
    assert_eq!(
        leader.step(now, peer(B, ok_response(2, 1_000, 4, 4))),
        vec![Effect::HighWatermark { offset: Offset(4) }]
    );
}

#[test]
fn a_leader_whose_lease_lapses_steps_down_and_fails_pending_requests() {
    let mut leader = leader3();
    leader.step(
        Millis(1_000),
        Input::Produce {
            request: RequestId(1),
            batch: batch(&["x"]),
            acks: Acks::All,
        },
    );
    // Heartbeat due at 1050: an empty append at each follower's next offset.
    assert_eq!(leader.step(Millis(1_049), Input::Tick), vec![]);
    let heartbeat = append(1, 2, 1, vec![], 0, 1_050);
    assert_eq!(
        leader.step(Millis(1_050), Input::Tick),
        vec![send(B, heartbeat.clone()), send(C, heartbeat)]
    );
    // B answers the heartbeat sent at 1050: the lease now holds until 1050 + 190.
    leader.step(Millis(1_060), peer(B, ok_response(1, 1_050, 2, 0)));
    assert!(leader.lease_valid(Millis(1_239)));
    assert!(!leader.lease_valid(Millis(1_240)));
    // Ticks before then only heartbeat.
    let heartbeat = append(1, 2, 1, vec![], 0, 1_100);
    assert_eq!(
        leader.step(Millis(1_100), Input::Tick),
        vec![send(B, heartbeat.clone()), send(C, heartbeat)]
    );
    assert_eq!(
        leader.step(Millis(1_240), Input::Tick),
        vec![
            role(Role::Follower, 1, None),
            Effect::Reply {
                request: RequestId(1),
                result: Err(ApiError::Timeout { waited_ms: 240 })
            },
        ]
    );
    // A deposed leader refuses produce.
    assert_eq!(
        leader.step(
            Millis(1_240),
            Input::Produce {
                request: RequestId(2),
                batch: batch(&["y"]),
                acks: Acks::All
            }
        ),
        vec![Effect::Reply {
            request: RequestId(2),
            result: Err(ApiError::NotLeader {
                leader_hint: None,
                epoch: Epoch(1)
            }),
        }]
    );
}

#[test]
fn a_stale_epoch_answer_deposes_the_leader() {
    let mut leader = leader3();
    leader.step(
        Millis(1_000),
        Input::Produce {
            request: RequestId(1),
            batch: batch(&["x"]),
            acks: Acks::Leader,
        },
    );
    let stale = PeerMessage::AppendResponse {
        epoch: Epoch(1),
        sent_at: Millis(1_000),
        result: AppendResult::StaleEpoch {
            promised_epoch: Epoch(3),
        },
    };
    assert_eq!(
        leader.step(Millis(1_020), peer(B, stale)),
        vec![
            role(Role::Follower, 1, None),
            Effect::Reply {
                request: RequestId(1),
                result: Err(ApiError::Timeout { waited_ms: 20 })
            },
        ]
    );
}

#[test]
fn a_follower_refuses_a_lower_epoch_and_changes_nothing() {
    let mut follower = follower3();
    let before = follower.status();
    assert_eq!(
        follower.step(Millis(1_010), peer(C, append(0, 0, 0, vec![], 0, 5))),
        vec![send(
            C,
            PeerMessage::AppendResponse {
                epoch: Epoch(0),
                sent_at: Millis(5),
                result: AppendResult::StaleEpoch {
                    promised_epoch: Epoch(1)
                },
            }
        )]
    );
    assert_eq!(follower.status(), before);
}

/// The epoch bomb of issue 14: an `Append` of epoch 2^64-1 used to be promised and persisted,
/// after which no epoch was left to elect a leader with.
#[test]
fn an_epoch_far_above_any_known_is_refused_and_changes_nothing() {
    let mut follower = follower3();
    let before = format!("{follower:?}");
    let bomb = append(u64::MAX, 1, 1, vec![], 0, 5);
    assert_eq!(
        follower.check_peer_epochs(&bomb),
        Err(EpochRefusal::TooFarAhead {
            epoch: Epoch(u64::MAX),
            ceiling: Epoch(1 + EPOCH_JUMP_MAX),
        })
    );
    assert_eq!(follower.step(Millis(1_000), peer(C, bomb)), vec![]);
    let just_above = append(2 + EPOCH_JUMP_MAX, 1, 1, vec![], 0, 5);
    assert_eq!(follower.step(Millis(1_000), peer(C, just_above)), vec![]);
    let request = PeerMessage::LeaseRequest {
        epoch: Epoch(u64::MAX),
        last_log_epoch: Epoch(1),
        log_end: Offset(1),
    };
    assert_eq!(follower.step(Millis(1_000), peer(C, request)), vec![]);
    let probe = PeerMessage::LeaseProbe {
        epoch: Epoch(u64::MAX),
        last_log_epoch: Epoch(1),
        log_end: Offset(1),
    };
    assert_eq!(follower.step(Millis(1_000), peer(C, probe)), vec![]);
    let answer = PeerMessage::LeaseProbeResponse {
        epoch: Epoch(2),
        granted: false,
        promised_epoch: Epoch(u64::MAX),
    };
    assert_eq!(follower.step(Millis(1_000), peer(C, answer)), vec![]);
    assert_eq!(format!("{follower:?}"), before);
}

#[test]
fn an_epoch_at_the_edge_of_the_window_is_followed() {
    let mut follower = follower3();
    let epoch = 1 + EPOCH_JUMP_MAX;
    let message = append(epoch, 1, 1, vec![], 0, 5);
    assert_eq!(follower.check_peer_epochs(&message), Ok(()));
    assert_eq!(
        follower.step(Millis(1_000), peer(C, message)),
        vec![Effect::PersistPromise {
            epoch: Epoch(epoch)
        }]
    );
}

#[test]
fn a_candidate_whose_log_is_ahead_of_its_epoch_is_refused() {
    let mut follower = follower3();
    let before = format!("{follower:?}");
    let forged = PeerMessage::LeaseRequest {
        epoch: Epoch(2),
        last_log_epoch: Epoch(9),
        log_end: Offset(1_000),
    };
    assert!(matches!(
        follower.check_peer_epochs(&forged),
        Err(EpochRefusal::LogAheadOfCandidacy { .. })
    ));
    assert_eq!(follower.step(Millis(1_000), peer(C, forged)), vec![]);
    assert_eq!(format!("{follower:?}"), before);
}

/// A `StaleEpoch` naming an epoch no election could have reached does not depose a working
/// leader (it would otherwise step down, and every candidacy after it ask for that epoch).
#[test]
fn a_stale_epoch_answer_far_ahead_is_ignored_by_the_leader() {
    let mut leader = leader3();
    let before = format!("{leader:?}");
    let bomb = PeerMessage::AppendResponse {
        epoch: Epoch(1),
        sent_at: Millis(1_000),
        result: AppendResult::StaleEpoch {
            promised_epoch: Epoch(u64::MAX),
        },
    };
    assert_eq!(leader.step(Millis(1_000), peer(B, bomb)), vec![]);
    assert_eq!(format!("{leader:?}"), before);
    assert_eq!(leader.status().role, Role::Leader);
}

#[test]
fn a_follower_reports_flushes_and_learns_commit_from_the_leader() {
    let mut follower = follower3();
    // The flush is reported at once, so commit does not wait for the next heartbeat.
    assert_eq!(
        follower.step(Millis(1_010), Input::Durable { log_end: Offset(1) }),
        vec![send(A, ok_response(1, 7, 1, 1))]
    );
    assert_eq!(
        follower.step(Millis(1_020), peer(A, append(1, 1, 1, vec![], 1, 50))),
        vec![
            Effect::HighWatermark { offset: Offset(1) },
            send(A, ok_response(1, 50, 1, 1))
        ]
    );
    assert_eq!(follower.status().high_watermark, Offset(1));
}

#[test]
fn a_follower_that_does_not_match_answers_where_it_diverges() {
    let mut follower = follower3();
    let before = follower.status();
    // The leader thinks we hold [0, 5); we hold [0, 1) of epoch 1.
    assert_eq!(
        follower.step(Millis(1_010), peer(A, append(1, 5, 1, vec![], 0, 9))),
        vec![send(
            A,
            PeerMessage::AppendResponse {
                epoch: Epoch(1),
                sent_at: Millis(9),
                result: AppendResult::Diverged {
                    epoch: Epoch(1),
                    end_offset: Offset(1)
                },
            }
        )]
    );
    assert_eq!(follower.status(), before);
}

#[test]
fn a_follower_truncates_an_uncommitted_suffix_and_ignores_flushes_from_before() {
    let mut follower = follower3();
    // An epoch-1 batch [1, 3) arrives but is not yet flushed.
    let old = batch(&["o", "p"]).stamped(Offset(1), Epoch(1));
    follower.step(Millis(1_010), peer(A, append(1, 1, 1, vec![old], 0, 10)));
    assert_eq!(follower.status().log_end, Offset(3));
    // Leader C of epoch 2 has a different [1, 2).
    let new = batch(&["n"]).stamped(Offset(1), Epoch(2));
    let message = append(2, 1, 1, vec![new.clone()], 0, 20);
    assert_eq!(
        follower.step(Millis(1_020), peer(C, message)),
        vec![Effect::PersistPromise { epoch: Epoch(2) }]
    );
    assert_eq!(
        follower.step(Millis(1_020), Input::PromisePersisted { epoch: Epoch(2) }),
        vec![
            role(Role::Follower, 2, Some(C)),
            Effect::Truncate { from: Offset(1) },
            Effect::Append { batches: vec![new] },
            send(C, ok_response(2, 20, 2, 0)),
        ]
    );
    assert_eq!(
        follower.epoch_history(),
        &[(Epoch(1), Offset(0)), (Epoch(2), Offset(1))]
    );
    // Flushes answer the appends in order: the marker's, then the truncated batch's (which
    // proves nothing about the new [1, 2)), then the new batch's.
    assert_eq!(
        follower.step(Millis(1_030), Input::Durable { log_end: Offset(1) }),
        vec![send(C, ok_response(2, 20, 2, 1))]
    );
    assert_eq!(
        follower.step(Millis(1_030), Input::Durable { log_end: Offset(3) }),
        vec![]
    );
    assert_eq!(follower.status().durable_end, Offset(1));
    assert_eq!(
        follower.step(Millis(1_030), Input::Durable { log_end: Offset(2) }),
        vec![send(C, ok_response(2, 20, 2, 2))]
    );
}

#[test]
fn a_follower_commits_only_what_matches_the_leader() {
    // B holds [0, 3) of epoch 1; the new leader of epoch 2 matches only [0, 2).
    let (recovered, _) = epoch_one_log();
    let mut follower = replica(B, recovered);
    let heartbeat = append(2, 2, 1, vec![], 9, 30);
    assert_eq!(
        follower.step(Millis(1_000), peer(A, heartbeat)),
        vec![Effect::PersistPromise { epoch: Epoch(2) }]
    );
    assert_eq!(
        follower.step(Millis(1_000), Input::PromisePersisted { epoch: Epoch(2) }),
        vec![
            role(Role::Follower, 2, Some(A)),
            Effect::HighWatermark { offset: Offset(2) },
            send(A, ok_response(2, 30, 2, 2)),
        ]
    );
}

#[test]
fn a_leader_backs_up_on_divergence_and_catches_up_from_its_log() {
    let (recovered, batches) = epoch_one_log();
    let (mut leader, _) = elect(recovered);
    let now = Millis(1_010);
    let diverged = PeerMessage::AppendResponse {
        epoch: Epoch(2),
        sent_at: Millis(1_000),
        result: AppendResult::Diverged {
            epoch: Epoch(0),
            end_offset: Offset(0),
        },
    };
    let bytes_max = Config::for_tests().append_message_bytes_max;
    assert_eq!(
        leader.step(now, peer(C, diverged)),
        vec![Effect::ReadForPeer {
            to: C,
            from: Offset(0),
            until: Offset(4),
            bytes_max
        }]
    );
    // An answer to a read never asked for changes nothing.
    let before = leader.status();
    assert_eq!(
        leader.step(
            now,
            Input::PeerRead {
                to: B,
                from: Offset(0),
                batches: batches.clone()
            }
        ),
        vec![]
    );
    assert_eq!(leader.status(), before);
    let mut all = batches;
    all.push(marker(3, 2));
    assert_eq!(
        leader.step(
            now,
            Input::PeerRead {
                to: C,
                from: Offset(0),
                batches: all.clone()
            }
        ),
        vec![send(C, append(2, 0, 0, all, 0, 1_010))]
    );
}

#[test]
fn an_append_with_a_gap_or_foreign_epoch_is_dropped() {
    let mut follower = follower3();
    let before = follower.status();
    // Batches not contiguous from prev_offset.
    let gap = batch(&["g"]).stamped(Offset(4), Epoch(1));
    assert_eq!(
        follower.step(Millis(1_010), peer(A, append(1, 1, 1, vec![gap], 0, 9))),
        vec![]
    );
    // A batch of an epoch above the message's.
    let future = batch(&["f"]).stamped(Offset(1), Epoch(3));
    assert_eq!(
        follower.step(Millis(1_010), peer(A, append(1, 1, 1, vec![future], 0, 9))),
        vec![]
    );
    // A sender outside the voters.
    assert_eq!(
        follower.step(
            Millis(1_010),
            peer(NodeId(9), append(1, 1, 1, vec![], 0, 9))
        ),
        vec![]
    );
    assert_eq!(follower.status(), before);
}

#[test]
fn a_follower_with_too_many_flushes_outstanding_answers_without_taking_batches() {
    let mut follower = follower3();
    let max = Config::for_tests().pending_requests_max as u64;
    // The marker's flush is outstanding; add appends until `max` flushes are owed.
    for offset in 1..max {
        let one = batch(&["v"]).stamped(Offset(offset), Epoch(1));
        let effects = follower.step(
            Millis(1_010),
            peer(A, append(1, offset, 1, vec![one], 0, 10)),
        );
        assert_eq!(effects.len(), 2, "append and answer");
    }
    let before = follower.status();
    assert_eq!(before.log_end, Offset(max));
    let one_more = batch(&["w"]).stamped(Offset(max), Epoch(1));
    assert_eq!(
        follower.step(
            Millis(1_020),
            peer(A, append(1, max, 1, vec![one_more], 0, 20))
        ),
        vec![send(A, ok_response(1, 20, max, 0))]
    );
    assert_eq!(follower.status(), before);
}

#[test]
fn repeated_divergence_at_one_position_reads_once() {
    let (recovered, _) = epoch_one_log();
    let (mut leader, _) = elect(recovered);
    let diverged = PeerMessage::AppendResponse {
        epoch: Epoch(2),
        sent_at: Millis(1_000),
        result: AppendResult::Diverged {
            epoch: Epoch(1),
            end_offset: Offset(2),
        },
    };
    let bytes_max = Config::for_tests().append_message_bytes_max;
    assert_eq!(
        leader.step(Millis(1_010), peer(C, diverged.clone())),
        vec![Effect::ReadForPeer {
            to: C,
            from: Offset(2),
            until: Offset(4),
            bytes_max
        }]
    );
    assert_eq!(leader.step(Millis(1_011), peer(C, diverged)), vec![]);
}

#[test]
fn a_leader_with_a_live_lease_grants_nothing() {
    let mut leader = leader3();
    // B keeps the lease alive; well past lease_ms after the election a candidate asks.
    leader.step(Millis(1_100), peer(B, ok_response(1, 1_090, 1, 1)));
    leader.step(Millis(1_250), peer(B, ok_response(1, 1_240, 1, 1)));
    let now = Millis(1_400);
    assert!(leader.lease_valid(now));
    let before = leader.status();
    let probe = PeerMessage::LeaseProbe {
        epoch: Epoch(2),
        last_log_epoch: Epoch(1),
        log_end: Offset(9),
    };
    let request = PeerMessage::LeaseRequest {
        epoch: Epoch(2),
        last_log_epoch: Epoch(1),
        log_end: Offset(9),
    };
    assert_eq!(
        leader.step(now, peer(C, probe)),
        vec![send(
            C,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(2),
                granted: false,
                promised_epoch: Epoch(1)
            }
        )]
    );
    assert_eq!(
        leader.step(now, peer(C, request)),
        vec![send(
            C,
            PeerMessage::LeaseResponse {
                epoch: Epoch(2),
                granted: false,
                promised_epoch: Epoch(1)
            }
        )]
    );
    assert_eq!(leader.status(), before);
}

#[test]
fn a_catch_up_read_is_trimmed_to_the_message_limit() {
    let (recovered, batches) = epoch_one_log();
    // Room for the first batch only.
    let bytes_max = batches[0].size_bytes() + 1;
    let config = Config {
        append_message_bytes_max: bytes_max,
        ..Config::for_tests()
    };
    let (mut leader, _) = elect_with(config, recovered);
    let diverged = PeerMessage::AppendResponse {
        epoch: Epoch(2),
        sent_at: Millis(1_000),
        result: AppendResult::Diverged {
            epoch: Epoch(0),
            end_offset: Offset(0),
        },
    };
    assert_eq!(
        leader.step(Millis(1_010), peer(C, diverged)),
        vec![Effect::ReadForPeer {
            to: C,
            from: Offset(0),
            until: Offset(4),
            bytes_max
        }]
    );
    // Storage returned more than the limit (a read may overshoot): whole batches within it
    // are sent, and always at least one.
    let mut all = batches.clone();
    all.push(marker(3, 2));
    assert_eq!(
        leader.step(
            Millis(1_010),
            Input::PeerRead {
                to: C,
                from: Offset(0),
                batches: all
            }
        ),
        vec![send(C, append(2, 0, 0, vec![batches[0].clone()], 0, 1_010))]
    );
    // Once C answers, the next read starts where that message ended.
    assert_eq!(
        leader.step(Millis(1_020), peer(C, ok_response(2, 1_010, 2, 2))),
        vec![Effect::ReadForPeer {
            to: C,
            from: Offset(2),
            until: Offset(4),
            bytes_max
        }]
    );
}

/// A leads epoch 1 (`leader3`) and has appended "x" at [1, 2) and "y" at [2, 3), sent live to
/// B and C at t=1010 and t=1020. Returns the leader and the two stamped batches.
fn leader3_with_two_appends(config: Config) -> (Replica, RecordBatch, RecordBatch) {
    let (mut leader, _) = elect_with(config, empty());
    let x = batch(&["x"]).stamped(Offset(1), Epoch(1));
    let y = batch(&["y"]).stamped(Offset(2), Epoch(1));
    for (request, value, now) in [(1, "x", 1_010), (2, "y", 1_020)] {
        let effects = leader.step(
            Millis(now),
            Input::Produce {
                request: RequestId(request),
                batch: batch(&[value]),
                acks: Acks::All,
            },
        );
        let sends = effects
            .iter()
            .filter(|effect| matches!(effect, Effect::Send { .. }))
            .count();
        assert_eq!(sends, 2, "a caught-up follower is sent each new batch live");
    }
    (leader, x, y)
}

/// C lost the append of [1, 2) and answers the next one with where its log ends.
fn diverged_at_one(sent_at: u64) -> PeerMessage {
    PeerMessage::AppendResponse {
        epoch: Epoch(1),
        sent_at: Millis(sent_at),
        result: AppendResult::Diverged {
            epoch: Epoch(1),
            end_offset: Offset(1),
        },
    }
}

#[test]
fn a_follower_that_lost_an_append_is_caught_up_from_the_tail_once() {
    let (mut leader, x, y) = leader3_with_two_appends(Config::for_tests());
    assert_eq!(
        leader.step(Millis(1_030), peer(C, diverged_at_one(1_020))),
        vec![send(
            C,
            append(1, 1, 1, vec![x.clone(), y.clone()], 0, 1_030)
        )]
    );
    // Another answer to an append sent before that resend: the resend covers it.
    let before = leader.status();
    assert_eq!(
        leader.step(Millis(1_031), peer(C, diverged_at_one(1_010))),
        vec![]
    );
    assert_eq!(leader.status(), before);
    // A later append (here a heartbeat sent after the resend) that still finds C at 1: the
    // resend was lost too, so it goes again.
    assert_eq!(
        leader.step(Millis(1_045), peer(C, diverged_at_one(1_040))),
        vec![send(C, append(1, 1, 1, vec![x, y], 0, 1_045))]
    );
    assert_eq!(
        leader.catch_up_counts(),
        CatchUpCounts {
            tail_sends: 2,
            log_reads: 0
        }
    );
}

#[test]
fn without_a_tail_a_lagging_follower_is_served_from_the_log() {
    let config = Config {
        tail_bytes_max: 0,
        ..Config::for_tests()
    };
    let bytes_max = config.append_message_bytes_max;
    let (mut leader, _, _) = leader3_with_two_appends(config);
    assert_eq!(
        leader.step(Millis(1_030), peer(C, diverged_at_one(1_020))),
        vec![Effect::ReadForPeer {
            to: C,
            from: Offset(1),
            until: Offset(3),
            bytes_max
        }]
    );
    assert_eq!(leader.catch_up_counts().log_reads, 1);
}

#[test]
fn a_log_read_is_followed_at_once_by_what_the_tail_still_holds() {
    // Room for one one-record batch: the tail keeps only "y".
    let one_batch = batch(&["y"]).stamped(Offset(2), Epoch(1)).size_bytes();
    let config = Config {
        tail_bytes_max: one_batch,
        ..Config::for_tests()
    };
    let bytes_max = config.append_message_bytes_max;
    let (mut leader, x, y) = leader3_with_two_appends(config);
    assert_eq!(
        leader.step(Millis(1_030), peer(C, diverged_at_one(1_020))),
        vec![Effect::ReadForPeer {
            to: C,
            from: Offset(1),
            until: Offset(3),
            bytes_max
        }]
    );
    // The read returned only [1, 2); [2, 3) follows from memory without another read.
    assert_eq!(
        leader.step(
            Millis(1_035),
            Input::PeerRead {
                to: C,
                from: Offset(1),
                batches: vec![x.clone()]
            }
        ),
        vec![
            send(C, append(1, 1, 1, vec![x], 0, 1_035)),
            send(C, append(1, 2, 1, vec![y], 0, 1_035)),
        ]
    );
    assert_eq!(
        leader.catch_up_counts(),
        CatchUpCounts {
            tail_sends: 1,
            log_reads: 1
        }
    );
}

#[test]
fn a_leader_needs_a_tick_at_its_next_heartbeat_or_when_its_lease_ends() {
    let mut leader = leader3();
    // Elected at 1000: heartbeat due at 1050, lease until 1000 + 190.
    assert_eq!(leader.next_tick_at(), Some(Millis(1_050)));
    assert_eq!(leader.step(Millis(1_049), Input::Tick), vec![]);
    assert_eq!(leader.next_tick_at(), Some(Millis(1_050)));
    let heartbeat = |sent_at: u64| append(1, 1, 1, vec![], 0, sent_at);
    assert_eq!(
        leader.step(Millis(1_050), Input::Tick),
        vec![send(B, heartbeat(1_050)), send(C, heartbeat(1_050))]
    );
    assert_eq!(leader.next_tick_at(), Some(Millis(1_100)));
    leader.step(Millis(1_100), Input::Tick);
    leader.step(Millis(1_150), Input::Tick);
    // No follower answered: the lease (1190) ends before the next heartbeat (1200), and a
    // tick then is what steps the leader down, not 10 ms later.
    assert_eq!(leader.next_tick_at(), Some(Millis(1_190)));
    assert_eq!(leader.step(Millis(1_189), Input::Tick), vec![]);
    assert_eq!(
        leader.step(Millis(1_190), Input::Tick),
        vec![role(Role::Follower, 1, None)]
    );
    // A follower again: its next tick is its election deadline, past its own lease.
    let next = leader.next_tick_at().unwrap();
    assert!(
        next >= Millis(1_190 + 300) && next <= Millis(1_190 + 450),
        "{next:?}"
    );
}

#[test]
fn an_acknowledged_heartbeat_moves_the_lease_end_past_the_next_heartbeat() {
    let mut leader = leader3();
    leader.step(Millis(1_050), Input::Tick);
    leader.step(Millis(1_100), Input::Tick);
    leader.step(Millis(1_150), Input::Tick);
    // B answers the heartbeat of 1150: the lease holds until 1340, after the heartbeat due
    // at 1200.
    leader.step(Millis(1_160), peer(B, ok_response(1, 1_150, 1, 1)));
    assert!(leader.lease_valid(Millis(1_339)));
    assert_eq!(leader.next_tick_at(), Some(Millis(1_200)));
}

#[test]
fn a_follower_needs_a_tick_only_at_its_election_deadline_which_each_append_pushes_out() {
    let mut follower = follower3();
    // Heard from the leader at 1000: the deadline is 300 ms plus a jitter of at most 150.
    let deadline = follower.next_tick_at().unwrap();
    assert!(
        deadline >= Millis(1_300) && deadline <= Millis(1_450),
        "{deadline:?}"
    );
    assert_eq!(follower.step(Millis(1_100), Input::Tick), vec![]);
    // A heartbeat at 1100 pushes it out by 100 ms (the same jitter: no election started).
    follower.step(Millis(1_100), peer(A, append(1, 1, 1, vec![], 0, 8)));
    assert_eq!(follower.next_tick_at(), Some(deadline.plus(100)));
    // A tick just before does nothing; at the deadline the follower probes, and needs its
    // next tick only after that.
    let deadline = deadline.plus(100);
    assert_eq!(follower.step(Millis(deadline.0 - 1), Input::Tick), vec![]);
    let effects = follower.step(deadline, Input::Tick);
    assert_sends_a_probe(&effects);
    assert!(follower.next_tick_at().unwrap() > deadline);
}

#[test]
fn a_leadership_hint_brings_the_next_tick_forward_to_the_end_of_our_grant() {
    let mut follower = follower3();
    let deadline = follower.next_tick_at().unwrap();
    follower.step(Millis(1_050), Input::LeaderSuspected);
    // Our grant (promised while following at 1000) binds until 1000 + lease_ms: the hint may
    // not bring the candidacy before that (DESIGN 5.8).
    assert_eq!(follower.next_tick_at(), Some(Millis(1_200)));
    assert!(Millis(1_200) < deadline);
    assert_eq!(follower.step(Millis(1_199), Input::Tick), vec![]);
    assert!(!follower.step(Millis(1_200), Input::Tick).is_empty());
}

#[test]
fn no_tick_is_needed_while_a_grant_waits_for_its_promise_or_after_storage_failed() {
    let mut voter = replica(B, empty());
    // A restarted replica grants nothing for lease_ms and waits out its election timeout.
    let restarted = voter.next_tick_at().unwrap();
    assert!(
        restarted >= Millis(300) && restarted <= Millis(450),
        "{restarted:?}"
    );
    let request = PeerMessage::LeaseRequest {
        epoch: Epoch(1),
        last_log_epoch: Epoch(0),
        log_end: Offset(0),
    };
    voter.step(Millis(300), peer(A, request));
    assert_eq!(voter.next_tick_at(), None);
    voter.step(Millis(310), Input::PromisePersisted { epoch: Epoch(1) });
    // The grant was sent at 310 and binds until 510; the election deadline is later still.
    let next = voter.next_tick_at().unwrap();
    assert!(next >= Millis(510), "{next:?}");
    voter.step(
        Millis(320),
        Input::StorageFailed {
            reason: "disk gone".to_string(),
        },
    );
    assert_eq!(voter.next_tick_at(), None);
}

#[test]
fn heartbeats_fall_on_multiples_of_heartbeat_ms_so_a_late_tick_does_not_stretch_the_period() {
    let mut leader = leader3();
    assert_eq!(leader.next_tick_at(), Some(Millis(1_050)));
    // A tick 13 ms late still heartbeats, and the next heartbeat is due at 1100, not 1113:
    // never more than heartbeat_ms apart, and at the same instants for every partition led
    // on this clock.
    let heartbeat = append(1, 1, 1, vec![], 0, 1_063);
    assert_eq!(
        leader.step(Millis(1_063), Input::Tick),
        vec![send(B, heartbeat.clone()), send(C, heartbeat)]
    );
    assert_eq!(leader.next_tick_at(), Some(Millis(1_100)));
}

#[test]
fn a_held_election_waits_until_the_hold_and_a_hold_never_brings_it_forward() {
    let mut follower = replica(B, empty());
    let deadline = follower.next_tick_at().unwrap();
    follower.hold_election_until(deadline.plus(1_000));
    assert_eq!(follower.next_tick_at(), Some(deadline.plus(1_000)));
    // Nothing happens at the old deadline; the probe goes out at the hold.
    assert_eq!(follower.step(deadline, Input::Tick), vec![]);
    let effects = follower.step(deadline.plus(1_000), Input::Tick);
    assert_sends_a_probe(&effects);
    // An earlier hold changes nothing.
    let later = follower.next_tick_at().unwrap();
    follower.hold_election_until(Millis(0));
    assert_eq!(follower.next_tick_at(), Some(later));
}

#[test]
fn a_follower_that_heard_a_leader_is_not_held() {
    let mut follower = follower3();
    let deadline = follower.next_tick_at().unwrap();
    follower.hold_election_until(deadline.plus(10_000));
    assert_eq!(follower.next_tick_at(), Some(deadline));
}

#[test]
fn the_jitter_salt_spreads_the_election_waits_of_one_node() {
    // Without a salt every replica of one node waits the same; with one salt per partition
    // the waits differ, so no node wins every contested election.
    let waits = |salted: bool| -> std::collections::BTreeSet<Millis> {
        (0..16u64)
            .map(|partition| {
                let mut follower = replica(B, empty());
                if salted {
                    follower.set_jitter_salt(partition.wrapping_mul(0x9E37_79B9));
                }
                let deadline = follower.next_tick_at().unwrap();
                // Between the election timeout and one and a half of it, as without a salt.
                let timeout = Config::for_tests().election_timeout_ms;
                assert!(
                    deadline.0 >= timeout && deadline.0 <= timeout * 3 / 2,
                    "{deadline:?}"
                );
                deadline
            })
            .collect()
    };
    assert_eq!(waits(false).len(), 1);
    assert!(waits(true).len() > 8, "{:?}", waits(true));
}

// ----- retention and the log start (issue 14) -----

/// A replica and the log its effects built, for the exchanges below.
struct Peer {
    replica: Replica,
    log: Vec<RecordBatch>,
}

impl Peer {
    fn log_end(&self) -> Offset {
        self.log
            .last()
            .map_or(self.replica.status().log_start, |batch| batch.next_offset())
    }
}

/// Runs A and B (C is cut off) until nothing is left to deliver or `steps_max` inputs ran:
/// messages in order, every append and promise flushed at once, every log read answered
/// from the log. `inputs` are the first inputs (to A: index 0, to B: index 1). Returns how
/// many `ReadForPeer` effects asked below the reading replica's log start.
fn exchange(peers: &mut [Peer; 2], inputs: Vec<(usize, Input)>, now: Millis) -> usize {
    let mut queue: std::collections::VecDeque<(usize, Input)> = inputs.into();
    let mut reads_below_start = 0;
    let mut steps = 0;
    while let Some((index, input)) = queue.pop_front() {
        steps += 1;
        assert!(steps < 2_000, "the exchange does not settle");
        let effects = peers[index].replica.step(now, input);
        for effect in effects {
            let peer = &mut peers[index];
            match effect {
                Effect::Send { to, message } => {
                    let from = if index == 0 { A } else { B };
                    match to {
                        A => queue.push_back((0, Input::Peer { from, message })),
                        B => queue.push_back((1, Input::Peer { from, message })),
                        _ => {}
                    }
                }
                Effect::Append { batches } => {
                    peer.log.extend(batches);
                    let log_end = peer.log_end();
                    queue.push_back((index, Input::Durable { log_end }));
                }
                Effect::PersistPromise { epoch } => {
                    queue.push_back((index, Input::PromisePersisted { epoch }))
                }
                Effect::Truncate { from } => peer.log.retain(|batch| batch.base_offset() < from),
                Effect::ResetLog { .. } => peer.log.clear(),
                Effect::ReadForPeer {
                    to,
                    from,
                    until,
                    bytes_max: _,
                } => {
                    if from < peer.replica.status().log_start {
                        reads_below_start += 1;
                    }
                    let batches = peer
                        .log
                        .iter()
                        .filter(|batch| batch.next_offset() > from && batch.base_offset() < until)
                        .cloned()
                        .collect();
                    queue.push_back((index, Input::PeerRead { to, from, batches }));
                }
                Effect::Reply { .. }
                | Effect::HighWatermark { .. }
                | Effect::RoleChanged { .. } => {}
            }
        }
    }
    reads_below_start
}

/// `message` (an append) carrying the leader's log start.
fn with_log_start(mut message: PeerMessage, start: LogStart) -> PeerMessage {
    if let PeerMessage::Append { log_start, .. } = &mut message {
        *log_start = Some(start);
    }
    message
}

/// A's log after retention: [10, 12) of epoch 1 is all that is left, the epoch history moved
/// to the log start as storage leaves it.
fn expired_log() -> (Recovered, Vec<RecordBatch>) {
    let batches = vec![batch(&["k", "l"]).stamped(Offset(10), Epoch(1))];
    let recovered = Recovered {
        promised_epoch: Epoch(1),
        epoch_history: vec![(Epoch(1), Offset(10))],
        log_start: Offset(10),
        log_end: Offset(12),
    };
    (recovered, batches)
}

#[test]
fn a_follower_behind_the_leaders_log_start_starts_its_log_there_and_catches_up() {
    // B holds [0, 3) of epoch 1 and never learnt a commit; A kept only [10, 12).
    let (leader_log, leader_batches) = expired_log();
    let (leader, won) = elect(leader_log);
    let (follower_log, follower_batches) = epoch_one_log();
    let mut peers = [
        Peer {
            replica: leader,
            log: leader_batches,
        },
        Peer {
            replica: replica(B, follower_log),
            log: follower_batches,
        },
    ];
    // A's marker of epoch 2 at [12, 13) goes out with its election.
    let mut inputs = Vec::new();
    for effect in won {
        match effect {
            Effect::Append { batches } => {
                peers[0].log.extend(batches);
                inputs.push((
                    0,
                    Input::Durable {
                        log_end: Offset(13),
                    },
                ));
            }
            Effect::Send { to: B, message } => inputs.push((1, peer(A, message))),
            _ => {}
        }
    }
    let now = Millis(1_000);
    exchange(&mut peers, inputs, now);
    // Heartbeats until B is caught up (each round: A's heartbeat and what follows it).
    for round in 1..=10 {
        let tick = Millis(now.0 + 50 * round);
        exchange(&mut peers, vec![(0, Input::Tick)], tick);
    }
    let follower = peers[1].replica.status();
    assert_eq!(follower.log_start, Offset(10), "B starts its log at A's");
    assert_eq!(follower.log_end, Offset(13));
    assert_eq!(peers[1].log, peers[0].log, "B holds what A holds");
    assert_eq!(
        peers[1].replica.epoch_history(),
        &[(Epoch(1), Offset(10)), (Epoch(2), Offset(12))]
    );
    // With B, A's epoch marker is on a majority: the partition is whole again.
    assert_eq!(peers[0].replica.status().high_watermark, Offset(13));
    assert_eq!(follower.high_watermark, Offset(13));
}

#[test]
fn a_follower_that_proves_its_log_at_the_leaders_log_start_keeps_it() {
    // B holds [0, 3) of epoch 1 and A's log start is 3 with A's epoch there 1: B's batch
    // before it has that epoch, so B's log equals A's below 3 and nothing is reset.
    let mut follower = replica(B, epoch_one_log().0);
    let start = LogStart {
        offset: Offset(3),
        epoch: Epoch(1),
    };
    let message = with_log_start(
        append(
            1,
            3,
            0,
            vec![batch(&["d"]).stamped(Offset(3), Epoch(1))],
            0,
            40,
        ),
        start,
    );
    let effects = follower.step(Millis(1_000), peer(A, message));
    assert!(
        !effects
            .iter()
            .any(|effect| matches!(effect, Effect::ResetLog { .. })),
        "{effects:?}"
    );
    assert_eq!(follower.status().log_start, Offset(0));
    assert_eq!(follower.status().log_end, Offset(4));
}

#[test]
fn a_reset_never_drops_a_committed_prefix_the_follower_knows() {
    // B knows [0, 3) is committed; an append at a log start within it proves the match.
    let (recovered, batches) = epoch_one_log();
    let mut follower = replica(B, recovered);
    follower.step(Millis(1_000), peer(A, append(1, 3, 1, Vec::new(), 3, 10)));
    assert_eq!(follower.status().high_watermark, Offset(3));
    let before = follower.status();
    let start = LogStart {
        offset: Offset(2),
        epoch: Epoch(7),
    };
    let message = with_log_start(append(1, 2, 0, vec![batches[1].clone()], 3, 20), start);
    let effects = follower.step(Millis(1_000), peer(A, message));
    assert!(
        !effects
            .iter()
            .any(|effect| matches!(effect, Effect::ResetLog { .. })),
        "{effects:?}"
    );
    assert_eq!(follower.status(), before);
}

#[test]
fn retention_past_a_lagging_follower_sends_it_the_log_start_instead_of_reading_below_it() {
    // A leads epoch 1 with [0, 1) (marker) and [1, 3); no tail, so catch-up reads the log.
    let config = Config {
        tail_bytes_max: 0,
        ..Config::for_tests()
    };
    let (mut leader, _) = elect_with(config, empty());
    let now = Millis(1_000);
    leader.step(
        now,
        Input::Produce {
            request: RequestId(1),
            batch: batch(&["a", "b"]),
            acks: Acks::All,
        },
    );
    leader.step(now, Input::Durable { log_end: Offset(1) });
    leader.step(now, Input::Durable { log_end: Offset(3) });
    // C holds everything, so it commits; B holds nothing.
    leader.step(now, peer(C, ok_response(1, 1_000, 3, 3)));
    assert_eq!(leader.status().high_watermark, Offset(3));
    // Retention removes [0, 1) everywhere but the replica learns of it.
    assert_eq!(
        leader.step(
            now,
            Input::LogStartMoved {
                log_start: Offset(1)
            }
        ),
        vec![]
    );
    assert_eq!(leader.status().log_start, Offset(1));
    assert_eq!(leader.epoch_history(), &[(Epoch(1), Offset(1))]);
    // B says it lacks everything: A resumes at its log start, reads from there, and the
    // append carries the log start.
    let effects = leader.step(
        now,
        peer(
            B,
            PeerMessage::AppendResponse {
                epoch: Epoch(1),
                sent_at: Millis(1_000),
                result: AppendResult::Diverged {
                    epoch: Epoch(0),
                    end_offset: Offset(0),
                },
            },
        ),
    );
    assert_eq!(
        effects,
        vec![Effect::ReadForPeer {
            to: B,
            from: Offset(1),
            until: Offset(3),
            bytes_max: Config::for_tests().append_message_bytes_max,
        }]
    );
    let read = batch(&["a", "b"]).stamped(Offset(1), Epoch(1));
    let effects = leader.step(
        now,
        Input::PeerRead {
            to: B,
            from: Offset(1),
            batches: vec![read.clone()],
        },
    );
    assert_eq!(
        effects,
        vec![send(
            B,
            with_log_start(
                append(1, 1, 0, vec![read], 3, 1_000),
                LogStart {
                    offset: Offset(1),
                    epoch: Epoch(1),
                }
            )
        )]
    );
    // A start that is not forward, or past the high watermark, changes nothing.
    let before = leader.status();
    assert_eq!(
        leader.step(
            now,
            Input::LogStartMoved {
                log_start: Offset(1)
            }
        ),
        vec![]
    );
    assert_eq!(
        leader.step(
            now,
            Input::LogStartMoved {
                log_start: Offset(9)
            }
        ),
        vec![]
    );
    assert_eq!(leader.status(), before);
}

#[test]
fn a_fully_expired_log_restarts_and_its_next_batch_continues_its_offsets() {
    // Retention removed every batch (epoch markers carry timestamp 0): storage keeps the
    // epoch history's last entry at the log start.
    let recovered = Recovered {
        promised_epoch: Epoch(4),
        epoch_history: vec![(Epoch(4), Offset(57))],
        log_start: Offset(57),
        log_end: Offset(57),
    };
    let follower = replica(B, recovered.clone());
    assert_eq!(follower.status().log_end, Offset(57));
    assert_eq!(follower.epoch_history(), &[(Epoch(4), Offset(57))]);
    // It can lead again: its marker is the next offset, of a newer epoch.
    let (_, effects) = elect(recovered);
    assert!(
        effects.contains(&Effect::Append {
            batches: vec![marker(57, 5)]
        }),
        "{effects:?}"
    );
}

#[test]
fn a_replica_that_lost_committed_data_votes_for_no_one_until_the_leader_repaired_it() {
    // B had committed [0, 3) and promised epoch 1; its store recovered an empty log.
    let mut voter = replica(
        B,
        Recovered {
            promised_epoch: Epoch(1),
            ..empty()
        },
    );
    voter.require_repair(Offset(3));
    assert_eq!(voter.repairing_until(), Some(Offset(3)));
    // Long past every election deadline: it stands for nothing.
    assert_eq!(voter.step(Millis(5_000), Input::Tick), vec![]);
    // C lost the same records and asks with an empty log: up to date by 5.2(c) against B's
    // short log, but B refuses, probe and request alike.
    let short = |epoch: u64| PeerMessage::LeaseProbe {
        epoch: Epoch(epoch),
        last_log_epoch: Epoch(0),
        log_end: Offset(0),
    };
    let refused = |epoch: u64| {
        send(
            C,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(epoch),
                granted: false,
                promised_epoch: Epoch(1),
            },
        )
    };
    assert_eq!(
        voter.step(Millis(5_000), peer(C, short(2))),
        vec![refused(2)]
    );
    let request = PeerMessage::LeaseRequest {
        epoch: Epoch(2),
        last_log_epoch: Epoch(0),
        log_end: Offset(0),
    };
    assert_eq!(
        voter.step(Millis(5_000), peer(C, request)),
        vec![send(
            C,
            PeerMessage::LeaseResponse {
                epoch: Epoch(2),
                granted: false,
                promised_epoch: Epoch(1),
            }
        )]
    );
    // A leads epoch 2 with the whole log and repairs B.
    let (_, batches) = epoch_one_log();
    let mut all = batches.clone();
    all.push(marker(3, 2));
    let effects = voter.step(Millis(5_000), peer(A, append(2, 0, 0, all.clone(), 4, 9)));
    assert_eq!(effects, vec![Effect::PersistPromise { epoch: Epoch(2) }]);
    let effects = voter.step(Millis(5_000), Input::PromisePersisted { epoch: Epoch(2) });
    assert!(
        effects.contains(&Effect::Append { batches: all }),
        "{effects:?}"
    );
    assert_eq!(voter.repairing_until(), Some(Offset(3)), "not durable yet");
    voter.step(Millis(5_000), Input::Durable { log_end: Offset(4) });
    assert_eq!(voter.repairing_until(), None);
    // Repaired, it votes by the usual rules again (once A's lease lapsed).
    let probe = PeerMessage::LeaseProbe {
        epoch: Epoch(3),
        last_log_epoch: Epoch(2),
        log_end: Offset(4),
    };
    assert_eq!(
        voter.step(Millis(9_000), peer(C, probe)),
        vec![send(
            C,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(3),
                granted: true,
                promised_epoch: Epoch(2),
            }
        )]
    );
}

#[test]
fn the_leader_reports_what_each_follower_matches_and_a_follower_reports_nothing() {
    let mut leader = leader3();
    let now = Millis(1_010);
    // Nobody answered yet: both followers are known to match nothing.
    assert_eq!(
        leader.follower_matched().collect::<Vec<_>>(),
        vec![(B, Offset(0)), (C, Offset(0))]
    );
    leader.step(now, peer(B, ok_response(1, 1_000, 1, 0)));
    assert_eq!(
        leader.follower_matched().collect::<Vec<_>>(),
        vec![(B, Offset(1)), (C, Offset(0))]
    );
    assert_eq!(follower3().follower_matched().count(), 0);
}

/// Preferred-leader rebalancing (`Input::Resign`): A leads epoch 1, its marker committed on
/// B, and one acks=all batch [1, 2) pending.
fn leader3_with_pending_batch() -> Replica {
    let mut leader = leader3();
    let now = Millis(1_000);
    leader.step(
        now,
        Input::Produce {
            request: RequestId(1),
            batch: batch(&["x"]),
            acks: Acks::All,
        },
    );
    leader.step(now, Input::Durable { log_end: Offset(1) });
    leader.step(now, Input::Durable { log_end: Offset(2) });
    assert_eq!(
        leader.step(Millis(1_005), peer(B, ok_response(1, 1_000, 1, 1))),
        vec![Effect::HighWatermark { offset: Offset(1) }]
    );
    leader
}

#[test]
fn a_resigned_leader_answers_pending_requests_indeterminate_and_acknowledges_nothing_after() {
    let mut leader = leader3_with_pending_batch();
    assert!(leader.lease_valid(Millis(1_010)));
    assert_eq!(
        leader.step(Millis(1_010), Input::Resign { hold_ms: 1_000 }),
        vec![
            role(Role::Follower, 1, None),
            Effect::Reply {
                request: RequestId(1),
                result: Err(ApiError::Timeout { waited_ms: 10 })
            },
        ]
    );
    // Its lease is no longer trusted, though the grants behind it still run.
    assert!(!leader.lease_valid(Millis(1_010)));
    // B's answer that would have committed the batch moves nothing now.
    let before = leader.status();
    assert_eq!(
        leader.step(Millis(1_020), peer(B, ok_response(1, 1_000, 2, 2))),
        vec![]
    );
    assert_eq!(leader.status(), before);
    assert_eq!(leader.status().high_watermark, Offset(1));
    // New produce is refused before anything is appended; no heartbeat goes out.
    assert_eq!(
        leader.step(
            Millis(1_020),
            Input::Produce {
                request: RequestId(2),
                batch: batch(&["y"]),
                acks: Acks::All
            }
        ),
        vec![Effect::Reply {
            request: RequestId(2),
            result: Err(ApiError::NotLeader {
                leader_hint: None,
                epoch: Epoch(1)
            }),
        }]
    );
    assert_eq!(leader.step(Millis(1_050), Input::Tick), vec![]);
}

#[test]
fn resign_is_ignored_by_followers_and_candidates() {
    let mut follower = follower3();
    let before = follower.status();
    let tick_at = follower.next_tick_at();
    assert_eq!(
        follower.step(Millis(1_010), Input::Resign { hold_ms: 5_000 }),
        vec![]
    );
    assert_eq!(follower.status(), before);
    assert_eq!(follower.next_tick_at(), tick_at);
    // A candidate (its promise not yet durable) carries on with its candidacy.
    let mut candidate = replica(A, empty());
    let probe_at = candidate.next_tick_at().unwrap();
    assert_sends_a_probe(&candidate.step(probe_at, Input::Tick));
    candidate.step(
        probe_at,
        peer(
            B,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(1),
                granted: true,
                promised_epoch: Epoch(0),
            },
        ),
    );
    assert_eq!(candidate.status().role, Role::Candidate);
    let before = candidate.status();
    assert_eq!(
        candidate.step(probe_at, Input::Resign { hold_ms: 5_000 }),
        vec![]
    );
    assert_eq!(candidate.status(), before);
    assert_eq!(
        candidate.step(probe_at, Input::PromisePersisted { epoch: Epoch(1) }),
        vec![]
    );
}

#[test]
fn a_resigned_leader_stands_for_no_election_before_its_hold_ends_whatever_a_hint_says() {
    let mut leader = leader3_with_pending_batch();
    leader.step(Millis(1_010), Input::Resign { hold_ms: 1_000 });
    assert_eq!(leader.next_tick_at(), Some(Millis(2_010)));
    // A leadership hint may not bring the candidacy before the hold either.
    leader.step(Millis(1_100), Input::LeaderSuspected);
    assert_eq!(leader.next_tick_at(), Some(Millis(2_010)));
    assert_eq!(leader.step(Millis(2_009), Input::Tick), vec![]);
    assert_sends_a_probe(&leader.step(Millis(2_010), Input::Tick));
}

#[test]
fn after_a_resignation_another_replica_is_elected_only_once_the_grants_expire() {
    let mut leader = leader3();
    let mut follower = follower3();
    // B flushes the marker and answers; A commits it, then resigns at 1010.
    let answered = follower.step(Millis(1_000), Input::Durable { log_end: Offset(1) });
    assert_eq!(answered, vec![send(A, ok_response(1, 7, 1, 1))]);
    leader.step(Millis(1_000), Input::Durable { log_end: Offset(1) });
    leader.step(Millis(1_005), peer(B, ok_response(1, 1_000, 1, 1)));
    assert_eq!(leader.status().high_watermark, Offset(1));
    leader.step(Millis(1_010), Input::Resign { hold_ms: 1_000 });
    // B hears (by gossip) that A no longer leads: a hint, which may not bring its candidacy
    // before its grant to A (renewed at 1000) expires at 1200.
    follower.step(Millis(1_020), Input::LeaderSuspected);
    assert_eq!(follower.next_tick_at(), Some(Millis(1_200)));
    assert_eq!(follower.step(Millis(1_199), Input::Tick), vec![]);
    let probe = PeerMessage::LeaseProbe {
        epoch: Epoch(2),
        last_log_epoch: Epoch(1),
        log_end: Offset(1),
    };
    assert_eq!(
        follower.step(Millis(1_200), Input::Tick),
        vec![send(A, probe.clone()), send(C, probe.clone())]
    );
    // A kept refusing grants lease_ms past its last instant as leader (1010 + 200).
    let answer = |granted: bool| {
        send(
            B,
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(2),
                granted,
                promised_epoch: Epoch(1),
            },
        )
    };
    assert_eq!(
        leader.step(Millis(1_209), peer(B, probe.clone())),
        vec![answer(false)]
    );
    assert_eq!(
        leader.step(Millis(1_210), peer(B, probe)),
        vec![answer(true)]
    );
    let request = PeerMessage::LeaseRequest {
        epoch: Epoch(2),
        last_log_epoch: Epoch(1),
        log_end: Offset(1),
    };
    assert_eq!(
        leader.step(Millis(1_210), peer(B, request)),
        vec![Effect::PersistPromise { epoch: Epoch(2) }]
    );
}
