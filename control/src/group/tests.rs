//! Coordinator tests: each fires requests at given times and asserts the exact replies,
//! assignments, epochs and states.

use super::assign::{TopicPartition, TopicPartitionCounts};
use super::records::GroupRecord;
use super::state::{Coordinator, GroupConfig, AWAITING_HEARTBEAT_INTERVAL_MS};
use cairn_protocol::group::*;
use cairn_protocol::{ApiError, Offset};

const SESSION_MS: u32 = 10_000;
const REBALANCE_MS: u32 = 5_000;

/// A coordinator that keeps every record it emitted, so replay can be checked anywhere.
struct Harness {
    coordinator: Coordinator,
    records: Vec<GroupRecord>,
    topics: TopicPartitionCounts,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            coordinator: Coordinator::new(GroupConfig::default()),
            records: Vec::new(),
            topics: [("t".to_string(), 6)].into_iter().collect(),
        }
    }

    fn heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
        now_ms: u64,
    ) -> Result<ConsumerGroupHeartbeatResponse, ApiError> {
        let (reply, records) = self.coordinator.heartbeat(&request, &self.topics, now_ms)?;
        self.records.extend(records);
        Ok(reply)
    }

    fn join(
        &mut self,
        member: &str,
        instance: Option<&str>,
        now_ms: u64,
    ) -> (MemberEpoch, Vec<u32>) {
        let reply = self
            .heartbeat(join_request(member, instance), now_ms)
            .unwrap();
        assert_eq!(reply.member_id, member);
        (reply.member_epoch, partitions_of(&reply.assignment))
    }

    /// A heartbeat with the member's current epoch, reporting `owned` when given.
    fn beat(
        &mut self,
        member: &str,
        owned: Option<&[u32]>,
        now_ms: u64,
    ) -> (MemberEpoch, Vec<u32>) {
        let epoch = self.epoch(member);
        let reply = self
            .heartbeat(beat_request(member, epoch, owned), now_ms)
            .unwrap();
        (reply.member_epoch, partitions_of(&reply.assignment))
    }

    /// Heartbeats that report owning exactly what the previous reply assigned, like a
    /// client that released its revoked partitions.
    fn settle(&mut self, member: &str, now_ms: u64) -> (MemberEpoch, Vec<u32>) {
        let owned = self.assigned(member);
        self.beat(member, Some(&owned), now_ms)
    }

    fn epoch(&self, member: &str) -> MemberEpoch {
        self.coordinator.group("g").unwrap().members[member].member_epoch
    }

    fn assigned(&self, member: &str) -> Vec<u32> {
        self.coordinator.group("g").unwrap().members[member]
            .assigned
            .iter()
            .map(|p| p.partition)
            .collect()
    }

    fn revoking(&self, member: &str) -> Vec<u32> {
        self.coordinator.group("g").unwrap().members[member]
            .revoking
            .iter()
            .map(|p| p.partition)
            .collect()
    }

    fn target(&self, member: &str) -> Vec<u32> {
        self.coordinator.group("g").unwrap().members[member]
            .target
            .iter()
            .map(|p| p.partition)
            .collect()
    }

    fn state(&self) -> GroupState {
        self.coordinator.group("g").unwrap().state()
    }

    fn commit(
        &mut self,
        member: &str,
        epoch: MemberEpoch,
        partition: u32,
        offset: u64,
    ) -> Result<Result<(), ApiError>, ApiError> {
        let request = OffsetCommitRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            offsets: vec![OffsetCommitPartition {
                topic: "t".into(),
                partition,
                offset: Offset(offset),
                metadata: None,
            }],
        };
        let (reply, records) = self.coordinator.commit(&request, &self.topics)?;
        self.records.extend(records);
        Ok(reply.partitions[0].result.clone())
    }

    fn committed(&self, partition: u32) -> Option<Offset> {
        self.coordinator
            .group("g")?
            .offsets
            .get(&TopicPartition::new("t", partition))
            .map(|c| c.offset)
    }

    /// Three members, 6 partitions, reconciled to a stable state at time 0..=10.
    fn stable_three() -> Harness {
        let mut h = Harness::new();
        h.join("a", None, 0);
        h.join("b", None, 1);
        h.join("c", None, 2);
        h.beat("a", None, 3);
        h.settle("a", 4);
        h.beat("b", None, 5);
        h.beat("c", None, 6);
        assert_eq!(h.state(), GroupState::Stable);
        h
    }
}

fn join_request(member: &str, instance: Option<&str>) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        group_id: "g".into(),
        member_id: member.into(),
        member_epoch: MemberEpoch::JOIN,
        instance_id: instance.map(str::to_string),
        rebalance_timeout_ms: REBALANCE_MS,
        session_timeout_ms: SESSION_MS,
        subscribed_topics: Some(vec!["t".into()]),
        assignor: None,
        owned: Some(vec![]),
    }
}

fn beat_request(
    member: &str,
    epoch: MemberEpoch,
    owned: Option<&[u32]>,
) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        member_epoch: epoch,
        subscribed_topics: None,
        owned: owned.map(|partitions| {
            vec![TopicPartitions {
                topic: "t".into(),
                partitions: partitions.to_vec(),
            }]
        }),
        ..join_request(member, None)
    }
}

fn partitions_of(assignment: &[TopicPartitions]) -> Vec<u32> {
    assignment
        .iter()
        .flat_map(|topic| topic.partitions.clone())
        .collect()
}

#[test]
fn six_partitions_three_members_reconcile_to_a_balanced_stable_group() {
    let mut h = Harness::new();
    assert_eq!(
        h.join("a", None, 0),
        (MemberEpoch(1), vec![0, 1, 2, 3, 4, 5])
    );
    // b's target is half, but a still holds everything: b waits with nothing, under an
    // epoch of its own.
    assert_eq!(h.join("b", None, 1), (MemberEpoch(2), vec![]));
    assert_eq!(h.join("c", None, 2), (MemberEpoch(3), vec![]));
    assert_eq!(h.target("a"), [0, 1]);
    assert_eq!(h.target("b"), [3, 4]);
    assert_eq!(h.target("c"), [2, 5]);
    assert_eq!(h.state(), GroupState::Reconciling);
    // a's next heartbeat revokes what is no longer its own.
    assert_eq!(h.beat("a", None, 3), (MemberEpoch(4), vec![0, 1]));
    assert_eq!(h.revoking("a"), [2, 3, 4, 5]);
    // b cannot get t3/t4 while a has not confirmed it let go.
    assert_eq!(h.beat("b", None, 4), (MemberEpoch(2), vec![]));
    // a confirms; the epoch does not change since its assignment does not.
    assert_eq!(h.settle("a", 5), (MemberEpoch(4), vec![0, 1]));
    assert!(h.revoking("a").is_empty());
    assert_eq!(h.beat("b", None, 6), (MemberEpoch(5), vec![3, 4]));
    assert_eq!(h.beat("c", None, 7), (MemberEpoch(6), vec![2, 5]));
    assert_eq!(h.state(), GroupState::Stable);
    let group = h.coordinator.group("g").unwrap();
    assert_eq!(group.group_epoch, 3);
}

#[test]
fn a_fourth_member_only_pauses_the_partition_that_moves() {
    let mut h = Harness::stable_three();
    let before: Vec<MemberEpoch> = ["a", "b", "c"].iter().map(|m| h.epoch(m)).collect();
    assert_eq!(h.join("d", None, 10), (MemberEpoch(7), vec![]));
    assert_eq!(h.target("a"), [0]);
    assert_eq!(h.target("d"), [1]);
    assert_eq!(h.target("b"), [3, 4]);
    assert_eq!(h.target("c"), [2, 5]);
    // b and c keep their partitions and their epochs: nothing of theirs pauses.
    assert_eq!(h.beat("b", None, 11), (before[1], vec![3, 4]));
    assert_eq!(h.beat("c", None, 12), (before[2], vec![2, 5]));
    // Only t1 is revoked from a.
    assert_eq!(h.beat("a", None, 13), (MemberEpoch(8), vec![0]));
    assert_eq!(h.revoking("a"), [1]);
    assert_eq!(h.beat("d", None, 14), (MemberEpoch(7), vec![]));
    h.settle("a", 15);
    assert_eq!(h.beat("d", None, 16), (MemberEpoch(9), vec![1]));
    assert_eq!(h.state(), GroupState::Stable);
}

#[test]
fn a_member_waiting_for_released_partitions_is_asked_back_sooner() {
    let mut h = Harness::stable_three();
    let interval = GroupConfig::default().heartbeat_interval_ms;
    let d_epoch = {
        let reply = h.heartbeat(join_request("d", None), 10).unwrap();
        // d's target is t1, which a still holds: d is asked to come back soon.
        assert!(reply.assignment.is_empty());
        assert_eq!(reply.heartbeat_interval_ms, AWAITING_HEARTBEAT_INTERVAL_MS);
        reply.member_epoch
    };
    // a is told to release t1 at the normal interval (it heartbeats as soon as it has).
    let owned = h.assigned("a");
    let reply = h
        .heartbeat(beat_request("a", h.epoch("a"), Some(&owned)), 11)
        .unwrap();
    assert_eq!(reply.heartbeat_interval_ms, interval);
    h.settle("a", 12);
    // d gets t1 and, reconciled, goes back to the normal interval.
    let reply = h
        .heartbeat(beat_request("d", d_epoch, Some(&[])), 13)
        .unwrap();
    assert_eq!(partitions_of(&reply.assignment), [1]);
    assert_eq!(reply.heartbeat_interval_ms, interval);
}

#[test]
fn commits_are_accepted_only_from_the_owner_in_its_current_epoch() {
    let mut h = Harness::stable_three();
    h.join("d", None, 10);
    let a_old = h.epoch("a");
    h.beat("a", None, 11); // t1 revoked from a, not yet released.
    let a_now = h.epoch("a");
    // A commit from the previous epoch is stale (retriable after the heartbeat).
    assert_eq!(
        h.commit("a", a_old, 0, 5),
        Err(ApiError::StaleMemberEpoch {
            member_id: "a".into(),
            current: a_now,
            received: a_old
        })
    );
    // While releasing, a may still commit what it read of t1.
    assert_eq!(h.commit("a", a_now, 1, 7), Ok(Ok(())));
    h.settle("a", 12);
    h.beat("d", None, 13);
    // Once t1 is d's, a's commit for it is refused and changes nothing.
    assert_eq!(
        h.commit("a", a_now, 1, 99),
        Ok(Err(ApiError::PartitionNotOwned {
            member_id: "a".into(),
            topic: "t".into(),
            partition: 1
        }))
    );
    assert_eq!(h.committed(1), Some(Offset(7)));
    assert_eq!(h.commit("d", h.epoch("d"), 1, 8), Ok(Ok(())));
    assert_eq!(h.committed(1), Some(Offset(8)));
    // A partition that does not exist gets its own refusal; the others still commit.
    assert_eq!(
        h.commit("d", h.epoch("d"), 9, 1),
        Ok(Err(ApiError::UnknownPartition {
            topic: "t".into(),
            partition: 9,
            partitions: 6
        }))
    );
    // An epoch from the future is a fenced zombie.
    assert!(matches!(
        h.commit("b", MemberEpoch(99), 3, 1),
        Err(ApiError::FencedMemberEpoch { .. })
    ));
    // A member removed after its session timeout is unknown: its commit is rejected.
    let records = h
        .coordinator
        .expire(&h.topics.clone(), 10 + u64::from(SESSION_MS) + 100);
    assert!(!records.is_empty());
    let groups_before = h.coordinator.groups().clone();
    assert_eq!(
        h.commit("c", MemberEpoch(6), 2, 50),
        Err(ApiError::UnknownMemberId {
            group_id: "g".into(),
            member_id: "c".into()
        })
    );
    assert_eq!(h.coordinator.groups(), &groups_before);
}

#[test]
fn an_expired_member_loses_its_partitions_to_the_others() {
    let mut h = Harness::stable_three();
    // a and b keep heartbeating; c goes silent after time 6.
    h.beat("a", None, 8_000);
    h.beat("b", None, 8_000);
    assert!(h.coordinator.expire(&h.topics.clone(), 10_005).is_empty());
    let records = h.coordinator.expire(&h.topics.clone(), 10_006);
    assert!(records.contains(&GroupRecord::MemberRemoved {
        group_id: "g".into(),
        member_id: "c".into()
    }));
    h.records.extend(records);
    assert_eq!(h.target("a"), [0, 1, 2]);
    assert_eq!(h.target("b"), [3, 4, 5]);
    // c's partitions were freed by its removal: a and b take them at once.
    assert_eq!(h.beat("a", None, 10_010).1, [0, 1, 2]);
    assert_eq!(h.beat("b", None, 10_010).1, [3, 4, 5]);
    assert_eq!(h.state(), GroupState::Stable);
}

#[test]
fn a_member_that_does_not_release_within_the_rebalance_timeout_is_fenced() {
    let mut h = Harness::stable_three();
    h.join("d", None, 100);
    h.beat("a", None, 101); // t1 revoked.
    h.beat("d", None, 102);
    // a keeps heartbeating without releasing t1.
    h.beat("a", None, 3_000);
    assert!(h.coordinator.expire(&h.topics.clone(), 5_100).is_empty());
    let records = h.coordinator.expire(&h.topics.clone(), 5_101);
    assert!(records.contains(&GroupRecord::MemberRemoved {
        group_id: "g".into(),
        member_id: "a".into()
    }));
    h.records.extend(records);
    assert_eq!(h.beat("d", None, 5_102).1, h.target("d"));
    assert!(h.target("d").contains(&1));
    // The fenced member's next heartbeat is refused: it must rejoin.
    let epoch = MemberEpoch(9);
    assert_eq!(
        h.heartbeat(beat_request("a", epoch, None), 5_103),
        Err(ApiError::UnknownMemberId {
            group_id: "g".into(),
            member_id: "a".into()
        })
    );
}

#[test]
fn a_static_member_restarting_within_the_session_timeout_keeps_its_partitions() {
    let mut h = Harness::new();
    h.join("a", Some("ia"), 0);
    h.join("b", Some("ib"), 1);
    h.beat("a", None, 2);
    h.settle("a", 3);
    h.beat("b", None, 4);
    assert_eq!(h.state(), GroupState::Stable);
    let group_epoch = h.coordinator.group("g").unwrap().group_epoch;
    let a_partitions = h.assigned("a");
    let b_epoch = h.epoch("b");

    let leave = ConsumerGroupHeartbeatRequest {
        member_epoch: MemberEpoch::STATIC_LEAVE,
        ..beat_request("a", h.epoch("a"), None)
    };
    assert_eq!(
        h.heartbeat(leave, 1_000).unwrap().member_epoch,
        MemberEpoch::STATIC_LEAVE
    );
    // Within the session timeout a new process with the same instance id joins.
    let (epoch, partitions) = {
        let reply = h.heartbeat(join_request("a2", Some("ia")), 5_000).unwrap();
        (reply.member_epoch, partitions_of(&reply.assignment))
    };
    assert_eq!(partitions, a_partitions);
    assert!(epoch > b_epoch);
    // No rebalance: the group epoch and b's assignment and epoch are untouched.
    assert_eq!(h.coordinator.group("g").unwrap().group_epoch, group_epoch);
    assert_eq!(h.beat("b", None, 5_001), (b_epoch, vec![3, 4, 5]));
    assert_eq!(h.state(), GroupState::Stable);
    // The old incarnation is fenced by instance id.
    assert_eq!(
        h.heartbeat(
            with_instance(beat_request("a", MemberEpoch(3), None), "ia"),
            5_002
        ),
        Err(ApiError::FencedInstanceId {
            instance_id: "ia".into(),
            member_id: "a".into()
        })
    );
}

#[test]
fn a_static_member_that_does_not_come_back_is_removed_after_its_session_timeout() {
    let mut h = Harness::new();
    h.join("a", Some("ia"), 0);
    h.join("b", None, 1);
    h.beat("a", None, 2);
    h.settle("a", 3);
    h.beat("b", None, 4);
    let leave = ConsumerGroupHeartbeatRequest {
        member_epoch: MemberEpoch::STATIC_LEAVE,
        ..beat_request("a", h.epoch("a"), None)
    };
    h.heartbeat(leave, 1_000).unwrap();
    // Its partitions stay reserved: b does not get them while a's session runs.
    h.beat("b", None, 9_000);
    assert_eq!(h.assigned("b"), [3, 4, 5]);
    let records = h.coordinator.expire(&h.topics.clone(), 11_000);
    h.records.extend(records);
    assert_eq!(h.beat("b", None, 11_001).1, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn leaving_frees_partitions_at_once() {
    let mut h = Harness::stable_three();
    let leave = ConsumerGroupHeartbeatRequest {
        member_epoch: MemberEpoch::LEAVE,
        ..beat_request("c", h.epoch("c"), None)
    };
    let reply = h.heartbeat(leave, 20).unwrap();
    assert_eq!(reply.member_epoch, MemberEpoch::LEAVE);
    assert!(reply.assignment.is_empty());
    assert!(!h.coordinator.group("g").unwrap().members.contains_key("c"));
    assert_eq!(h.beat("a", None, 21).1, [0, 1, 2]);
    assert_eq!(h.beat("b", None, 22).1, [3, 4, 5]);
}

#[test]
fn a_lost_reply_is_tolerated_but_a_wrong_epoch_is_fenced() {
    let mut h = Harness::stable_three();
    h.join("d", None, 10);
    let old = h.epoch("a");
    h.beat("a", None, 11); // The reply (epoch bump, t1 revoked) is lost.
    let new = h.epoch("a");
    // a retries with its old epoch, still reporting what it owned then.
    let reply = h
        .heartbeat(beat_request("a", old, Some(&[0, 1])), 12)
        .unwrap();
    assert_eq!(
        (reply.member_epoch, partitions_of(&reply.assignment)),
        (new, vec![0])
    );
    let before = h.coordinator.groups().clone();
    assert_eq!(
        h.heartbeat(beat_request("a", MemberEpoch(2), None), 13),
        Err(ApiError::FencedMemberEpoch {
            member_id: "a".into(),
            current: new,
            received: MemberEpoch(2)
        })
    );
    assert_eq!(h.coordinator.groups(), &before);
}

#[test]
fn bad_heartbeats_are_refused_and_change_nothing() {
    let mut h = Harness::stable_three();
    let before = h.coordinator.groups().clone();
    let cases = [
        ConsumerGroupHeartbeatRequest {
            group_id: String::new(),
            ..join_request("x", None)
        },
        ConsumerGroupHeartbeatRequest {
            assignor: Some("cooperative".into()),
            ..join_request("x", None)
        },
        ConsumerGroupHeartbeatRequest {
            session_timeout_ms: 1,
            ..join_request("x", None)
        },
        ConsumerGroupHeartbeatRequest {
            rebalance_timeout_ms: 0,
            ..join_request("x", None)
        },
        ConsumerGroupHeartbeatRequest {
            subscribed_topics: None,
            ..join_request("x", None)
        },
        ConsumerGroupHeartbeatRequest {
            member_epoch: MemberEpoch(-3),
            ..join_request("x", None)
        },
        ConsumerGroupHeartbeatRequest {
            member_id: "m".repeat(MEMBER_ID_BYTES_MAX + 1),
            ..join_request("x", None)
        },
        beat_request("nobody", MemberEpoch(4), None),
    ];
    for request in cases {
        let error = h.heartbeat(request.clone(), 50).unwrap_err();
        assert!(!error.is_retriable(), "{request:?}: {error:?}");
    }
    assert_eq!(h.coordinator.groups(), &before);
    assert!(matches!(
        h.heartbeat(
            ConsumerGroupHeartbeatRequest {
                assignor: Some("cooperative".into()),
                ..join_request("x", None)
            },
            50
        ),
        Err(ApiError::UnsupportedAssignor { .. })
    ));
}

#[test]
fn the_member_limit_is_enforced() {
    let mut h = Harness::new();
    h.coordinator = Coordinator::new(GroupConfig {
        members_max: 2,
        ..GroupConfig::default()
    });
    h.join("a", None, 0);
    h.join("b", None, 0);
    let before = h.coordinator.groups().clone();
    assert_eq!(
        h.heartbeat(join_request("c", None), 0),
        Err(ApiError::GroupMaxSizeReached { max: 2 })
    );
    assert_eq!(h.coordinator.groups(), &before);
    // A member id chosen by the coordinator when the client sends none.
    let mut h = Harness::new();
    let reply = h.heartbeat(join_request("", None), 0).unwrap();
    assert_eq!(reply.member_id, "member-1-0");
}

#[test]
fn admin_requests_need_an_empty_group() {
    let mut h = Harness::stable_three();
    let epoch = h.epoch("b");
    h.commit("b", epoch, 3, 40).unwrap().unwrap();
    let bounds = |p: &TopicPartition| Some((Offset(10), Offset(100 + u64::from(p.partition))));
    let described = h.coordinator.describe("g", &h.topics, bounds).unwrap();
    assert_eq!(described.state, GroupState::Stable);
    assert_eq!(described.members.len(), 3);
    let t3 = &described.partitions[3];
    assert_eq!(
        (t3.owner.as_deref(), t3.committed, t3.log_end, t3.lag),
        (Some("b"), Some(Offset(40)), Some(Offset(103)), Some(63))
    );
    // Without a commit, lag counts from the log start.
    assert_eq!(described.partitions[0].lag, Some(90));

    let reset = ResetGroupOffsetsRequest {
        group_id: "g".into(),
        topic: "t".into(),
        partitions: None,
        to: OffsetResetTarget::Earliest,
    };
    assert_eq!(
        h.coordinator
            .reset_offsets(&reset, &h.topics, bounds)
            .unwrap_err(),
        ApiError::GroupNotEmpty {
            group_id: "g".into(),
            members: 3
        }
    );
    assert!(matches!(
        h.coordinator.delete_group("g"),
        Err(ApiError::GroupNotEmpty { members: 3, .. })
    ));
    let topics = h.topics.clone();
    for member in ["a", "b", "c"] {
        let leave = ConsumerGroupHeartbeatRequest {
            member_epoch: MemberEpoch::LEAVE,
            ..beat_request(member, h.epoch(member), None)
        };
        h.heartbeat(leave, 30).unwrap();
    }
    assert_eq!(h.state(), GroupState::Empty);
    let to_offset = ResetGroupOffsetsRequest {
        partitions: Some(vec![1, 3]),
        to: OffsetResetTarget::Offset(Offset(500)),
        ..reset.clone()
    };
    let (reply, records) = h
        .coordinator
        .reset_offsets(&to_offset, &topics, bounds)
        .unwrap();
    h.records.extend(records);
    let offsets: Vec<Option<Offset>> = reply
        .partitions
        .iter()
        .map(|p| p.committed.as_ref().map(|c| c.offset))
        .collect();
    // Clamped to each partition's high watermark.
    assert_eq!(offsets, [Some(Offset(101)), Some(Offset(103))]);
    assert_eq!(h.committed(3), Some(Offset(103)));
    let (_, records) = h
        .coordinator
        .reset_offsets(&reset, &topics, bounds)
        .unwrap();
    h.records.extend(records);
    assert_eq!(h.committed(5), Some(Offset(10)));
    let listed = h.coordinator.list_groups();
    assert_eq!(
        listed,
        [GroupListing {
            group_id: "g".into(),
            state: GroupState::Empty,
            members: 0
        }]
    );
    let records = h.coordinator.delete_group("g").unwrap();
    h.records.extend(records);
    assert_eq!(
        h.coordinator.describe("g", &topics, bounds),
        Err(ApiError::GroupIdNotFound {
            group_id: "g".into()
        })
    );
    assert!(h.coordinator.list_groups().is_empty());
    // Resetting a group that does not exist is refused, and creates nothing.
    assert_eq!(
        h.coordinator
            .reset_offsets(&reset, &topics, bounds)
            .unwrap_err(),
        ApiError::GroupIdNotFound {
            group_id: "g".into()
        }
    );
    assert!(h.coordinator.list_groups().is_empty());
}

#[test]
fn replaying_the_records_rebuilds_identical_state() {
    let mut h = Harness::stable_three();
    h.join("d", Some("id"), 20);
    h.beat("a", None, 21);
    h.commit("a", h.epoch("a"), 1, 7).unwrap().unwrap();
    h.settle("a", 22);
    h.beat("d", None, 23);
    let leave = ConsumerGroupHeartbeatRequest {
        member_epoch: MemberEpoch::STATIC_LEAVE,
        ..with_instance(beat_request("d", h.epoch("d"), None), "id")
    };
    h.heartbeat(leave, 24).unwrap();
    h.heartbeat(join_request("d2", Some("id")), 25).unwrap();
    h.commit("d2", h.epoch("d2"), 1, 9).unwrap().unwrap();
    let records = h.coordinator.expire(&h.topics.clone(), 9_000);
    h.records.extend(records);
    // A mid-reconciliation state, so revoking sets are replayed too.
    h.join("e", None, 9_001);
    h.beat("b", None, 9_002);
    assert!(!h.revoking("b").is_empty());

    // Through the wire form, as a new coordinator reads them from `__offsets`.
    let batch = GroupRecord::to_batch(&h.records, 0);
    let decoded: Vec<GroupRecord> = batch
        .records()
        .map(|record| {
            GroupRecord::decode(record.unwrap().value.as_deref().unwrap_or_default()).unwrap()
        })
        .collect();
    let replayed = Coordinator::replay(GroupConfig::default(), decoded, 50_000);
    assert_eq!(replayed.groups(), h.coordinator.groups());

    // The replayed coordinator carries on: the next member epoch is still fresh, and its
    // members get a fresh session from the replay time.
    let mut next = Harness {
        coordinator: replayed,
        records: Vec::new(),
        topics: h.topics.clone(),
    };
    assert!(next
        .coordinator
        .expire(&next.topics.clone(), 50_000 + 4_999)
        .is_empty());
    let high = next.coordinator.group("g").unwrap().member_epoch_high;
    assert_eq!(next.join("f", None, 50_001).0, high.next());
}

fn with_instance(
    request: ConsumerGroupHeartbeatRequest,
    instance: &str,
) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        instance_id: Some(instance.into()),
        ..request
    }
}

#[test]
fn the_group_limit_is_enforced() {
    let mut h = Harness::new();
    h.coordinator = Coordinator::new(GroupConfig {
        groups_max: 1,
        ..GroupConfig::default()
    });
    h.join("a", None, 0);
    let other = ConsumerGroupHeartbeatRequest {
        group_id: "other".into(),
        ..join_request("x", None)
    };
    let before = h.coordinator.groups().clone();
    assert_eq!(
        h.heartbeat(other, 1),
        Err(ApiError::TooManyGroups { max: 1 })
    );
    let commit = OffsetCommitRequest {
        group_id: "other".into(),
        member_id: String::new(),
        member_epoch: MemberEpoch::LEAVE,
        offsets: vec![],
    };
    assert_eq!(
        h.coordinator.commit(&commit, &h.topics).unwrap_err(),
        ApiError::TooManyGroups { max: 1 }
    );
    assert_eq!(h.coordinator.groups(), &before);
    // The existing group still takes members.
    h.join("b", None, 2);
}

#[test]
fn a_consumer_outside_group_membership_commits_only_while_the_group_is_empty() {
    let mut h = Harness::new();
    let commit = OffsetCommitRequest {
        group_id: "g".into(),
        member_id: String::new(),
        member_epoch: MemberEpoch::LEAVE,
        offsets: vec![OffsetCommitPartition {
            topic: "t".into(),
            partition: 2,
            offset: Offset(12),
            metadata: Some("manual".into()),
        }],
    };
    let (reply, _) = h.coordinator.commit(&commit, &h.topics).unwrap();
    assert_eq!(reply.partitions[0].result, Ok(()));
    assert_eq!(h.committed(2), Some(Offset(12)));
    assert_eq!(h.state(), GroupState::Empty);
    h.join("a", None, 0);
    assert_eq!(
        h.coordinator.commit(&commit, &h.topics).unwrap_err(),
        ApiError::GroupNotEmpty {
            group_id: "g".into(),
            members: 1
        }
    );
    let fetched = h
        .coordinator
        .fetch_offsets(&OffsetFetchRequest {
            group_id: "g".into(),
            member: Some(("a".into(), h.epoch("a"))),
            partitions: None,
        })
        .unwrap();
    assert_eq!(
        fetched.partitions,
        [CommittedPartitionOffset {
            topic: "t".into(),
            partition: 2,
            committed: Some(CommittedOffset {
                offset: Offset(12),
                metadata: Some("manual".into())
            })
        }]
    );
    // A fetch from a fenced member epoch is refused.
    assert!(matches!(
        h.coordinator.fetch_offsets(&OffsetFetchRequest {
            group_id: "g".into(),
            member: Some(("a".into(), MemberEpoch(40))),
            partitions: None,
        }),
        Err(ApiError::FencedMemberEpoch { .. })
    ));
}

#[test]
fn added_partitions_and_created_topics_are_assigned_on_the_next_heartbeat() {
    let mut h = Harness::new();
    let request = ConsumerGroupHeartbeatRequest {
        subscribed_topics: Some(vec!["t".into(), "later".into()]),
        ..join_request("a", None)
    };
    h.heartbeat(request, 0).unwrap();
    assert_eq!(h.assigned("a"), [0, 1, 2, 3, 4, 5]);
    let group_epoch = h.coordinator.group("g").unwrap().group_epoch;
    h.topics.insert("t".into(), 8);
    h.topics.insert("later".into(), 1);
    let reply = h
        .heartbeat(beat_request("a", h.epoch("a"), None), 1)
        .unwrap();
    assert_eq!(
        reply.assignment,
        [
            TopicPartitions {
                topic: "later".into(),
                partitions: vec![0]
            },
            TopicPartitions {
                topic: "t".into(),
                partitions: (0..8).collect()
            }
        ]
    );
    assert_eq!(
        h.coordinator.group("g").unwrap().group_epoch,
        group_epoch + 1
    );
}

#[test]
fn config_rules_are_named_and_checked() {
    assert_eq!(GroupConfig::default().validate(), Ok(()));
    let too_slow = GroupConfig {
        heartbeat_interval_ms: 3_000,
        session_timeout_ms_min: 6_000,
        ..GroupConfig::default()
    };
    assert!(too_slow.validate().unwrap_err().contains("a third"));
    let inverted = GroupConfig {
        session_timeout_ms_min: 400_000,
        ..GroupConfig::default()
    };
    assert!(inverted.validate().is_err());
    let zero = GroupConfig {
        groups_max: 0,
        ..GroupConfig::default()
    };
    assert_eq!(zero.validate(), Err("groups_max must be above 0".into()));
}
