//! One input, exact effects: the engine's unit tests (STYLE habit 1).

use crate::*;
use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};

pub(crate) fn batch(values: &[&str]) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(1_000);
    for value in values {
        builder.push(&Record::new(value.as_bytes().to_vec()));
    }
    builder.build()
}

fn empty_recovered() -> Recovered {
    Recovered {
        promised_epoch: Epoch::ZERO,
        epoch_history: Vec::new(),
        log_start: Offset::ZERO,
        log_end: Offset::ZERO,
    }
}

fn marker(offset: u64, epoch: u64) -> RecordBatch {
    RecordBatchBuilder::control_marker(0).stamped(Offset(offset), Epoch(epoch))
}

/// A single-voter replica brought to leader of epoch 1 with its marker durable and
/// committed (high watermark 1). Returns it and the time reached.
fn single_leader() -> (Replica, Millis) {
    let config = Config::for_tests();
    let (mut replica, _) = Replica::new(
        config.clone(),
        NodeId(1),
        vec![NodeId(1)],
        empty_recovered(),
        Millis(0),
    )
    .unwrap();
    let now = Millis(config.election_timeout_ms);
    replica.step(now, Input::Tick);
    replica.step(now, Input::PromisePersisted { epoch: Epoch(1) });
    replica.step(now, Input::Durable { log_end: Offset(1) });
    assert_eq!(replica.status().role, Role::Leader);
    assert_eq!(replica.status().high_watermark, Offset(1));
    (replica, now)
}

fn ok(request: u64, base: u64, epoch: u64) -> Effect {
    Effect::Reply {
        request: RequestId(request),
        result: Ok(ProduceResponse {
            base_offset: Offset(base),
            leader_epoch: Epoch(epoch),
            duplicate: false,
        }),
    }
}

#[test]
fn config_rules_are_named_and_checked() {
    assert_eq!(Config::default().validate(), Ok(()));
    assert_eq!(Config::for_tests().validate(), Ok(()));
    let cases: Vec<(Config, &str)> = vec![
        (
            Config {
                lease_ms: 0,
                ..Config::default()
            },
            "lease_ms > 0",
        ),
        (
            Config {
                heartbeat_ms: 0,
                ..Config::default()
            },
            "heartbeat_ms > 0",
        ),
        (
            Config {
                heartbeat_ms: 700,
                ..Config::default()
            },
            "heartbeat_ms * 3 <= lease_ms",
        ),
        (
            Config {
                election_timeout_ms: 2_000,
                ..Config::default()
            },
            "election_timeout_ms > lease_ms",
        ),
        (
            Config {
                clock_drift_max_ppm: 1_000_000,
                ..Config::default()
            },
            "clock_drift_max_ppm < 1_000_000",
        ),
        (
            Config {
                clock_drift_max_ppm: 900_000,
                ..Config::default()
            },
            "lease_trusted_ms > heartbeat_ms",
        ),
        (
            Config {
                pending_requests_max: 0,
                ..Config::default()
            },
            "pending_requests_max > 0",
        ),
        (
            Config {
                append_message_bytes_max: 0,
                ..Config::default()
            },
            "append_message_bytes_max > 0",
        ),
    ];
    for (config, rule) in cases {
        let error = config.validate().unwrap_err();
        assert_eq!(error.rule, rule);
        assert!(!error.why.is_empty());
        let refused = Replica::new(
            config,
            NodeId(1),
            vec![NodeId(1)],
            empty_recovered(),
            Millis(0),
        );
        assert_eq!(refused.unwrap_err().rule, rule);
    }
}

#[test]
fn new_refuses_bad_voters_and_inconsistent_recovery() {
    let config = Config::for_tests();
    let new = |voters: Vec<u32>, recovered: Recovered| {
        Replica::new(
            config.clone(),
            NodeId(1),
            voters.into_iter().map(NodeId).collect(),
            recovered,
            Millis(0),
        )
        .map(|_| ())
        .map_err(|error| error.rule)
    };
    assert_eq!(
        new(vec![2, 3], empty_recovered()),
        Err("voters contain this node")
    );
    assert_eq!(
        new(vec![1, 1], empty_recovered()),
        Err("voters are distinct")
    );
    assert_eq!(
        new(vec![], empty_recovered()),
        Err("1 <= voters <= VOTERS_MAX")
    );
    let bad_history = Recovered {
        epoch_history: vec![(Epoch(2), Offset(0)), (Epoch(1), Offset(5))],
        log_end: Offset(10),
        ..empty_recovered()
    };
    assert_eq!(
        new(vec![1], bad_history),
        Err("recovered state is consistent")
    );
    let history_past_end = Recovered {
        epoch_history: vec![(Epoch(1), Offset(10))],
        log_end: Offset(10),
        ..empty_recovered()
    };
    assert_eq!(
        new(vec![1], history_past_end),
        Err("recovered state is consistent")
    );
    assert_eq!(new(vec![3, 1, 2], empty_recovered()), Ok(()));
}

#[test]
fn single_voter_lifecycle_goes_through_the_protocol() {
    let config = Config::for_tests();
    let (mut replica, effects) = Replica::new(
        config.clone(),
        NodeId(1),
        vec![NodeId(1)],
        empty_recovered(),
        Millis(0),
    )
    .unwrap();
    assert_eq!(effects, vec![]);
    let start = replica.status();
    assert_eq!(start.role, Role::Follower);
    assert_eq!(start.leader, None);

    // Nothing happens during the quiet period after a start, nor before the election timeout.
    assert_eq!(
        replica.step(Millis(config.lease_ms - 1), Input::Tick),
        vec![]
    );
    assert_eq!(replica.step(Millis(config.lease_ms), Input::Tick), vec![]);
    assert_eq!(
        replica.step(Millis(config.election_timeout_ms - 1), Input::Tick),
        vec![]
    );
    assert_eq!(replica.status(), start);

    // Candidacy: epoch 1, promise first; the own vote counts only once durable.
    let now = Millis(config.election_timeout_ms);
    assert_eq!(
        replica.step(now, Input::Tick),
        vec![
            Effect::RoleChanged {
                role: Role::Candidate,
                epoch: Epoch(1),
                leader: None
            },
            Effect::PersistPromise { epoch: Epoch(1) },
        ]
    );
    assert_eq!(replica.status().role, Role::Candidate);
    assert_eq!(replica.status().promised_epoch, Epoch(0));
    // A produce now is refused, and refusing changes nothing.
    let before = replica.status();
    assert_eq!(
        replica.step(
            now,
            Input::Produce {
                request: RequestId(9),
                batch: batch(&["x"]),
                acks: Acks::All
            }
        ),
        vec![Effect::Reply {
            request: RequestId(9),
            result: Err(ApiError::NotLeader {
                leader_hint: None,
                epoch: Epoch(1)
            }),
        }]
    );
    assert_eq!(replica.status(), before);

    // The promise is durable: a majority of one. Leader, then the marker at offset 0.
    assert_eq!(
        replica.step(now, Input::PromisePersisted { epoch: Epoch(1) }),
        vec![
            Effect::RoleChanged {
                role: Role::Leader,
                epoch: Epoch(1),
                leader: Some(NodeId(1))
            },
            Effect::Append {
                batches: vec![marker(0, 1)]
            },
        ]
    );
    let status = replica.status();
    assert_eq!(
        (status.role, status.epoch, status.promised_epoch),
        (Role::Leader, Epoch(1), Epoch(1))
    );
    assert_eq!(
        (status.log_end, status.durable_end, status.high_watermark),
        (Offset(1), Offset(0), Offset(0))
    );

    // acks=all before the marker is durable: appended, not answered.
    let effects = replica.step(
        now,
        Input::Produce {
            request: RequestId(1),
            batch: batch(&["a", "b"]),
            acks: Acks::All,
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Append {
            batches: vec![batch(&["a", "b"]).stamped(Offset(1), Epoch(1))]
        }]
    );
    // The marker's flush commits the marker only.
    assert_eq!(
        replica.step(now, Input::Durable { log_end: Offset(1) }),
        vec![Effect::HighWatermark { offset: Offset(1) }]
    );
    // The batch's flush commits it and answers.
    assert_eq!(
        replica.step(now, Input::Durable { log_end: Offset(3) }),
        vec![Effect::HighWatermark { offset: Offset(3) }, ok(1, 1, 1)]
    );

    // acks=leader: answered on the local flush.
    let effects = replica.step(
        now,
        Input::Produce {
            request: RequestId(2),
            batch: batch(&["c"]),
            acks: Acks::Leader,
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Append {
            batches: vec![batch(&["c"]).stamped(Offset(3), Epoch(1))]
        }]
    );
    assert_eq!(
        replica.step(now, Input::Durable { log_end: Offset(4) }),
        vec![ok(2, 3, 1), Effect::HighWatermark { offset: Offset(4) }]
    );

    // acks=none: answered before the append.
    let effects = replica.step(
        now,
        Input::Produce {
            request: RequestId(3),
            batch: batch(&["d"]),
            acks: Acks::None,
        },
    );
    assert_eq!(
        effects,
        vec![
            ok(3, 4, 1),
            Effect::Append {
                batches: vec![batch(&["d"]).stamped(Offset(4), Epoch(1))]
            }
        ]
    );
    assert_eq!(
        replica.step(now, Input::Durable { log_end: Offset(5) }),
        vec![Effect::HighWatermark { offset: Offset(5) }]
    );
    let status = replica.status();
    assert_eq!(
        (status.log_end, status.durable_end, status.high_watermark),
        (Offset(5), Offset(5), Offset(5))
    );

    // A single voter's lease renews itself: it is still leader much later.
    let later = now.plus(10 * config.lease_ms);
    assert_eq!(replica.step(later, Input::Tick), vec![]);
    assert!(replica.lease_valid(later));
}

#[test]
fn restart_waits_out_the_lease_and_uses_a_higher_epoch() {
    let config = Config::for_tests();
    let recovered = Recovered {
        promised_epoch: Epoch(4),
        epoch_history: vec![(Epoch(1), Offset(0)), (Epoch(3), Offset(7))],
        log_start: Offset(0),
        log_end: Offset(9),
    };
    let (mut replica, effects) = Replica::new(
        config.clone(),
        NodeId(1),
        vec![NodeId(1)],
        recovered,
        Millis(1_000),
    )
    .unwrap();
    assert_eq!(effects, vec![]);
    let status = replica.status();
    assert_eq!(
        (status.log_end, status.durable_end, status.high_watermark),
        (Offset(9), Offset(9), Offset(0))
    );
    assert_eq!(
        replica.step(Millis(1_000 + config.election_timeout_ms - 1), Input::Tick),
        vec![]
    );
    let now = Millis(1_000 + config.election_timeout_ms);
    assert_eq!(
        replica.step(now, Input::Tick),
        vec![
            Effect::RoleChanged {
                role: Role::Candidate,
                epoch: Epoch(5),
                leader: None
            },
            Effect::PersistPromise { epoch: Epoch(5) },
        ]
    );
    // A completion for a promise never asked for changes nothing.
    let before = replica.status();
    assert_eq!(
        replica.step(now, Input::PromisePersisted { epoch: Epoch(6) }),
        vec![]
    );
    assert_eq!(replica.status(), before);
    assert_eq!(
        replica.step(now, Input::PromisePersisted { epoch: Epoch(5) }),
        vec![
            Effect::RoleChanged {
                role: Role::Leader,
                epoch: Epoch(5),
                leader: Some(NodeId(1))
            },
            Effect::Append {
                batches: vec![marker(9, 5)]
            },
        ]
    );
    // The old suffix commits together with the marker, never before it.
    assert_eq!(
        replica.step(
            now,
            Input::Durable {
                log_end: Offset(10)
            }
        ),
        vec![Effect::HighWatermark { offset: Offset(10) }]
    );
    assert_eq!(
        replica.epoch_history(),
        &[
            (Epoch(1), Offset(0)),
            (Epoch(3), Offset(7)),
            (Epoch(5), Offset(9))
        ]
    );
}

#[test]
fn produce_past_pending_requests_max_is_refused_and_changes_nothing() {
    let (mut replica, now) = single_leader();
    let max = Config::for_tests().pending_requests_max;
    for request in 0..max as u64 {
        let effects = replica.step(
            now,
            Input::Produce {
                request: RequestId(request),
                batch: batch(&["v"]),
                acks: Acks::All,
            },
        );
        assert_eq!(effects.len(), 1);
    }
    let before = replica.status();
    assert_eq!(
        replica.step(
            now,
            Input::Produce {
                request: RequestId(999),
                batch: batch(&["v"]),
                acks: Acks::Leader
            }
        ),
        vec![Effect::Reply {
            request: RequestId(999),
            result: Err(ApiError::Backpressure { retry_after_ms: 50 }),
        }]
    );
    assert_eq!(replica.status(), before);
    // One flush answers all of them, in order.
    let effects = replica.step(now, Input::Durable { log_end: Offset(2) });
    assert_eq!(
        effects,
        vec![Effect::HighWatermark { offset: Offset(2) }, ok(0, 1, 1)]
    );
}

#[test]
fn storage_failure_steps_down_and_fails_pending_requests() {
    let (mut replica, now) = single_leader();
    replica.step(
        now,
        Input::Produce {
            request: RequestId(1),
            batch: batch(&["a"]),
            acks: Acks::All,
        },
    );
    replica.step(
        now,
        Input::Produce {
            request: RequestId(2),
            batch: batch(&["b"]),
            acks: Acks::Leader,
        },
    );
    let reason = "disk gone".to_string();
    let storage = ApiError::Storage {
        reason: reason.clone(),
    };
    assert_eq!(
        replica.step(now, Input::StorageFailed { reason }),
        vec![
            Effect::RoleChanged {
                role: Role::Follower,
                epoch: Epoch(1),
                leader: None
            },
            Effect::Reply {
                request: RequestId(1),
                result: Err(storage.clone())
            },
            Effect::Reply {
                request: RequestId(2),
                result: Err(storage.clone())
            },
        ]
    );
    assert_eq!(replica.status().role, Role::Follower);
    // Afterwards it refuses produce with the storage error, and never stands again.
    assert_eq!(
        replica.step(
            now,
            Input::Produce {
                request: RequestId(3),
                batch: batch(&["c"]),
                acks: Acks::All
            }
        ),
        vec![Effect::Reply {
            request: RequestId(3),
            result: Err(storage)
        }]
    );
    assert_eq!(replica.step(now.plus(10_000), Input::Tick), vec![]);
}

#[test]
fn durable_without_an_append_is_ignored() {
    let (mut replica, now) = single_leader();
    let before = replica.status();
    assert_eq!(
        replica.step(
            now,
            Input::Durable {
                log_end: Offset(50)
            }
        ),
        vec![]
    );
    assert_eq!(replica.status(), before);
}

#[test]
fn leader_suspected_never_bypasses_the_own_grant() {
    let config = Config::for_tests();
    let (mut replica, _) = Replica::new(
        config.clone(),
        NodeId(1),
        vec![NodeId(1), NodeId(2), NodeId(3)],
        empty_recovered(),
        Millis(0),
    )
    .unwrap();
    // Within the lease after start, the hint cannot start a candidacy.
    assert_eq!(replica.step(Millis(10), Input::LeaderSuspected), vec![]);
    assert_eq!(
        replica.step(Millis(config.lease_ms - 1), Input::Tick),
        vec![]
    );
    // Once the start-up lease is over, the hint brings the pre-vote forward.
    let effects = replica.step(Millis(config.lease_ms), Input::Tick);
    let probe = PeerMessage::LeaseProbe {
        epoch: Epoch(1),
        last_log_epoch: Epoch(0),
        log_end: Offset(0),
    };
    assert_eq!(
        effects,
        vec![
            Effect::Send {
                to: NodeId(2),
                message: probe.clone()
            },
            Effect::Send {
                to: NodeId(3),
                message: probe
            },
        ]
    );
}
