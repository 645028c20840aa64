//! The coordinator of the groups of one `__offsets` partition: requests and the clock in,
//! replies and [`GroupRecord`]s out.
//!
//! Every change is made by building a record and applying it with [`Coordinator::apply`], the
//! same function a new coordinator replays the log with, so live state and replayed state
//! cannot drift apart. The caller appends the returned records to `__offsets` (as one batch)
//! and answers the request once they are committed; if the append fails, it must drop this
//! coordinator and rebuild it from the log, since the state already reflects them.
//!
//! Reconciliation follows KIP-848. Each member has a *target* (what the assignor wants it to
//! own), an *assigned* set (what it may own now, sent in every heartbeat reply) and a
//! *revoking* set (taken out of `assigned`, still owned until the member confirms it let go).
//! A member first loses what is not in its target; only once it has confirmed every
//! revocation does it receive the partitions of its target that no other member still holds.
//! So a partition is never held by two members at once (GRP-1). Member epochs come from one
//! counter per group and bump whenever a member's assigned set changes, so a number is never
//! issued twice in a group and a zombie's epoch never matches a live member's.
//!
//! Deadlines (session, revocation) are local and not recorded: a coordinator that replays a
//! group gives every member a fresh session, as Kafka does on load.

use super::assign::{assign, Assignment, Assignor, TopicPartition, TopicPartitionCounts};
use super::classic::{ClassicError, ClassicGroups, ClassicLimits, JoinReply, JoinRequest, Step};
use super::records::GroupRecord;
use cairn_protocol::group::{
    validate_group_id, CommittedOffset, CommittedPartitionOffset, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, DescribeGroupResponse, GroupListing, GroupPartitionDescription,
    GroupState, MemberDescription, MemberEpoch, OffsetCommitPartitionResult, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, OffsetResetTarget,
    ResetGroupOffsetsRequest, ResetGroupOffsetsResponse, TopicPartitions, ASSIGNOR_NAMES,
    COMMIT_METADATA_BYTES_MAX, MEMBER_ID_BYTES_MAX,
};
use cairn_protocol::ids::TOPIC_NAME_BYTES_MAX;
use cairn_protocol::{ApiError, Offset};
use std::collections::{BTreeMap, BTreeSet};

/// The heartbeat interval of a member waiting for partitions others still release (see
/// [`Coordinator::heartbeat_interval_for`]).
pub const AWAITING_HEARTBEAT_INTERVAL_MS: u32 = 100;

/// Limits and timings of the coordinator; every limit is reached by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Told to members in every heartbeat reply.
    pub heartbeat_interval_ms: u32,
    pub session_timeout_ms_min: u32,
    pub session_timeout_ms_max: u32,
    pub rebalance_timeout_ms_max: u32,
    pub members_max: u32,
    /// Groups one coordinator (one `__offsets` partition) holds, empty ones included.
    pub groups_max: u32,
    pub subscribed_topics_max: u32,
    /// Partitions one commit, fetch or reset may name.
    pub request_partitions_max: u32,
    /// Kafka JoinGroup and SyncGroup requests one coordinator holds waiting for a
    /// rebalance; past it, a request is answered REBALANCE_IN_PROGRESS (the client rejoins).
    pub parked_requests_max: u32,
    /// Kafka's `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty
    /// classic group waits for more members (each new one extends it by as much again, up to
    /// the rebalance timeout), so consumers started together are assigned once, together.
    pub initial_rebalance_delay_ms: u32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            // Short enough that a rebalance (which each member learns of at its next
            // heartbeat) settles well within a second; a steady member's heartbeat appends
            // nothing, so it costs a round trip and a lookup.
            heartbeat_interval_ms: 500,
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 300_000,
            rebalance_timeout_ms_max: 300_000,
            members_max: 1_000,
            groups_max: 10_000,
            subscribed_topics_max: 1_000,
            request_partitions_max: 10_000,
            parked_requests_max: 10_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

impl GroupConfig {
    /// Checks the cross-field rules, each named by why it exists.
    pub fn validate(&self) -> Result<(), String> {
        if self.session_timeout_ms_min > self.session_timeout_ms_max {
            return Err("session_timeout_ms_min must not exceed session_timeout_ms_max".into());
        }
        // heartbeat_below_session_third: a member must get at least three heartbeats into
        // the shortest session, so that one lost or late heartbeat does not expire it.
        if u64::from(self.heartbeat_interval_ms) * 3 > u64::from(self.session_timeout_ms_min) {
            return Err(format!(
                "heartbeat_interval_ms ({}) must be at most a third of session_timeout_ms_min ({})",
                self.heartbeat_interval_ms, self.session_timeout_ms_min
            ));
        }
        let limits = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("rebalance_timeout_ms_max", self.rebalance_timeout_ms_max),
            ("members_max", self.members_max),
            ("groups_max", self.groups_max),
            ("subscribed_topics_max", self.subscribed_topics_max),
            ("request_partitions_max", self.request_partitions_max),
            ("parked_requests_max", self.parked_requests_max),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be above 0"));
        }
        Ok(())
    }
}

/// The log bounds of a partition, for lag and offset resets: (log start, high watermark).
pub type PartitionBounds = (Offset, Offset);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub subscribed: BTreeSet<String>,
    pub rebalance_timeout_ms: u32,
    pub session_timeout_ms: u32,
    pub static_left: bool,
    pub member_epoch: MemberEpoch,
    pub previous_epoch: MemberEpoch,
    pub target: Assignment,
    pub assigned: Assignment,
    pub revoking: Assignment,
}

impl Member {
    fn owns(&self, partition: &TopicPartition) -> bool {
        self.assigned.contains(partition) || self.revoking.contains(partition)
    }

    fn is_reconciled(&self) -> bool {
        self.revoking.is_empty() && self.assigned == self.target
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub group_id: String,
    pub group_epoch: i32,
    /// The highest member epoch ever issued in this group.
    pub member_epoch_high: MemberEpoch,
    pub assignor: Assignor,
    /// Partition counts of the subscribed topics when the target was last computed; a
    /// change (partitions added, topic created or deleted) triggers a new target.
    pub partition_counts: TopicPartitionCounts,
    pub members: BTreeMap<String, Member>,
    pub offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

impl Group {
    fn new(group_id: &str) -> Group {
        Group {
            group_id: group_id.to_string(),
            group_epoch: 0,
            member_epoch_high: MemberEpoch(0),
            assignor: Assignor::default(),
            partition_counts: TopicPartitionCounts::new(),
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.values().all(Member::is_reconciled) {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    fn member_with_instance(&self, instance_id: &str) -> Option<&Member> {
        self.members
            .values()
            .find(|member| member.instance_id.as_deref() == Some(instance_id))
    }

    fn owner_of(&self, partition: &TopicPartition) -> Option<&Member> {
        self.members.values().find(|member| member.owns(partition))
    }

    fn subscribed_counts(&self, topics: &TopicPartitionCounts) -> TopicPartitionCounts {
        let subscribed: BTreeSet<&String> =
            self.members.values().flat_map(|m| &m.subscribed).collect();
        topics
            .iter()
            .filter(|(topic, _)| subscribed.contains(topic))
            .map(|(topic, count)| (topic.clone(), *count))
            .collect()
    }

    /// GRP-1: no partition is held (assigned or revoking) by two members.
    fn check_invariants(&self) {
        let mut held = BTreeSet::new();
        for member in self.members.values() {
            assert!(
                member.assigned.is_disjoint(&member.revoking),
                "GRP-2: {} both owns and revokes a partition",
                member.member_id
            );
            for partition in member.assigned.iter().chain(&member.revoking) {
                assert!(
                    held.insert(partition),
                    "GRP-1: {partition:?} held by two members of {}",
                    self.group_id
                );
            }
            assert!(
                member.member_epoch <= self.member_epoch_high,
                "GRP-3: member epoch above the group's counter"
            );
        }
    }
}

/// Local deadlines of one member (not recorded; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timers {
    session_deadline_ms: u64,
    revocation_deadline_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Coordinator {
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
    timers: BTreeMap<(String, String), Timers>,
    /// Kafka classic groups: membership in memory only (see `super::classic`); their
    /// offsets are in `groups`.
    classic: ClassicGroups,
}

fn to_wire(assignment: &Assignment) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for partition in assignment {
        by_topic
            .entry(&partition.topic)
            .or_default()
            .push(partition.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_wire(partitions: &[TopicPartitions]) -> Assignment {
    partitions
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| TopicPartition::new(&topic.topic, *partition))
        })
        .collect()
}

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        reason: reason.into(),
    }
}

/// The typed refusal for a partition that does not exist.
fn check_partition(
    topics: &TopicPartitionCounts,
    topic: &str,
    partition: u32,
) -> Result<(), ApiError> {
    match topics.get(topic) {
        None => Err(ApiError::UnknownTopic {
            topic: topic.to_string(),
        }),
        Some(&partitions) if partition >= partitions => Err(ApiError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            partitions,
        }),
        Some(_) => Ok(()),
    }
}

impl Coordinator {
    pub fn new(config: GroupConfig) -> Coordinator {
        Coordinator {
            config,
            groups: BTreeMap::new(),
            timers: BTreeMap::new(),
            classic: ClassicGroups::default(),
        }
    }

    /// Rebuilds a coordinator from its partition's records, in log order, at time `now_ms`.
    pub fn replay(
        config: GroupConfig,
        records: impl IntoIterator<Item = GroupRecord>,
        now_ms: u64,
    ) -> Coordinator {
        let mut coordinator = Coordinator::new(config);
        for record in records {
            coordinator.apply(&record);
        }
        let mut timers = BTreeMap::new();
        for group in coordinator.groups.values() {
            for member in group.members.values() {
                timers.insert(
                    (group.group_id.clone(), member.member_id.clone()),
                    Timers {
                        session_deadline_ms: now_ms + u64::from(member.session_timeout_ms),
                        revocation_deadline_ms: (!member.revoking.is_empty())
                            .then(|| now_ms + u64::from(member.rebalance_timeout_ms)),
                    },
                );
            }
        }
        coordinator.timers = timers;
        coordinator
    }

    /// Takes the deadlines `previous` held for the members both know. A coordinator reloaded
    /// on the same leadership after a failed append must not hand every member a fresh
    /// session: a dead member's expiry is itself an append, and if each failed attempt reset
    /// its deadline, it would never expire while appends are slow.
    pub fn keep_deadlines_of(&mut self, previous: &Coordinator) {
        // Classic membership is not in the log: the reloaded coordinator keeps it too.
        self.classic = previous.classic.clone();
        for (key, timers) in &previous.timers {
            if let Some(mine) = self.timers.get_mut(key) {
                *mine = *timers;
            }
        }
    }

    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    pub fn group(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    /// Applies one record: the only way group state changes. Records about an unknown group
    /// or member (possible only in a damaged log) change nothing.
    pub fn apply(&mut self, record: &GroupRecord) {
        let group_id = record.group_id().to_string();
        if let GroupRecord::GroupDeleted { .. } = record {
            self.groups.remove(&group_id);
            self.timers.retain(|(group, _), _| *group != group_id);
            return;
        }
        let group = self
            .groups
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(&group_id));
        match record {
            GroupRecord::GroupMetadata {
                group_epoch,
                assignor,
                partition_counts,
                ..
            } => {
                group.group_epoch = *group_epoch;
                group.assignor = *assignor;
                group.partition_counts = partition_counts.iter().cloned().collect();
            }
            GroupRecord::Member {
                member_id,
                instance_id,
                subscribed_topics,
                rebalance_timeout_ms,
                session_timeout_ms,
                static_left,
                ..
            } => {
                let member = group
                    .members
                    .entry(member_id.clone())
                    .or_insert_with(|| Member {
                        member_id: member_id.clone(),
                        instance_id: None,
                        subscribed: BTreeSet::new(),
                        rebalance_timeout_ms: 0,
                        session_timeout_ms: 0,
                        static_left: false,
                        member_epoch: MemberEpoch::JOIN,
                        previous_epoch: MemberEpoch::JOIN,
                        target: Assignment::new(),
                        assigned: Assignment::new(),
                        revoking: Assignment::new(),
                    });
                member.instance_id = instance_id.clone();
                member.subscribed = subscribed_topics.iter().cloned().collect();
                member.rebalance_timeout_ms = *rebalance_timeout_ms;
                member.session_timeout_ms = *session_timeout_ms;
                member.static_left = *static_left;
            }
            GroupRecord::StaticMemberReplaced {
                old_member_id,
                new_member_id,
                ..
            } => {
                if let Some(mut member) = group.members.remove(old_member_id) {
                    // The new incarnation starts owning nothing it was releasing: the old
                    // process is gone, and with it whatever it still read.
                    member.member_id = new_member_id.clone();
                    member.revoking.clear();
                    member.static_left = false;
                    group.members.insert(new_member_id.clone(), member);
                }
                if let Some(timers) = self
                    .timers
                    .remove(&(group_id.clone(), old_member_id.clone()))
                {
                    self.timers
                        .insert((group_id.clone(), new_member_id.clone()), timers);
                }
            }
            GroupRecord::TargetAssignment {
                member_id,
                partitions,
                ..
            } => {
                if let Some(member) = group.members.get_mut(member_id) {
                    member.target = partitions.iter().cloned().collect();
                }
            }
            GroupRecord::CurrentAssignment {
                member_id,
                member_epoch,
                previous_epoch,
                assigned,
                revoking,
                ..
            } => {
                if let Some(member) = group.members.get_mut(member_id) {
                    member.member_epoch = *member_epoch;
                    member.previous_epoch = *previous_epoch;
                    member.assigned = assigned.iter().cloned().collect();
                    member.revoking = revoking.iter().cloned().collect();
                    group.member_epoch_high = group.member_epoch_high.max(*member_epoch);
                }
            }
            GroupRecord::MemberRemoved { member_id, .. } => {
                group.members.remove(member_id);
                self.timers.remove(&(group_id.clone(), member_id.clone()));
            }
            GroupRecord::OffsetCommit {
                topic,
                partition,
                offset,
                metadata,
                ..
            } => {
                group.offsets.insert(
                    TopicPartition::new(topic, *partition),
                    CommittedOffset {
                        offset: *offset,
                        metadata: metadata.clone(),
                    },
                );
            }
            GroupRecord::GroupDeleted { .. } => unreachable!("handled above"),
        }
        group.check_invariants();
    }

    /// Refuses to start a new group once `groups_max` are held.
    fn check_room_for(&self, group_id: &str) -> Result<(), ApiError> {
        let classic_only = self
            .classic
            .groups()
            .filter(|group| !self.groups.contains_key(&group.group_id))
            .count();
        if !self.groups.contains_key(group_id)
            && self.classic.group(group_id).is_none()
            && self.groups.len() + classic_only >= self.config.groups_max as usize
        {
            return Err(ApiError::TooManyGroups {
                max: self.config.groups_max,
            });
        }
        Ok(())
    }

    fn emit(&mut self, records: &mut Vec<GroupRecord>, record: GroupRecord) {
        self.apply(&record);
        records.push(record);
    }

    fn member(&self, group_id: &str, member_id: &str) -> Option<&Member> {
        self.groups.get(group_id)?.members.get(member_id)
    }

    /// Handles one heartbeat (join, heartbeat, or leave) at time `now_ms`. `topics` holds
    /// the partition count of every existing topic.
    pub fn heartbeat(
        &mut self,
        request: &ConsumerGroupHeartbeatRequest,
        topics: &TopicPartitionCounts,
        now_ms: u64,
    ) -> Result<(ConsumerGroupHeartbeatResponse, Vec<GroupRecord>), ApiError> {
        self.validate_heartbeat(request)?;
        let group_id = request.group_id.as_str();
        let mut records = Vec::new();
        let epoch = request.member_epoch;
        if epoch == MemberEpoch::LEAVE || epoch == MemberEpoch::STATIC_LEAVE {
            let member = self
                .member(group_id, &request.member_id)
                .ok_or_else(|| self.unknown_member(request))?
                .clone();
            if epoch == MemberEpoch::STATIC_LEAVE && member.instance_id.is_some() {
                // Its partitions stay reserved for the instance id until the session
                // timeout (already running) expires.
                self.emit(&mut records, member_record(group_id, &member, true));
            } else {
                self.remove_member(group_id, &request.member_id, topics, &mut records);
            }
            return Ok((
                ConsumerGroupHeartbeatResponse {
                    member_id: member.member_id,
                    member_epoch: epoch,
                    heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                    assignment: Vec::new(),
                },
                records,
            ));
        }

        let mut force_new_epoch = false;
        let member_id = if epoch == MemberEpoch::JOIN {
            let group = self.groups.get(group_id);
            let replaced = request
                .instance_id
                .as_deref()
                .and_then(|instance| group?.member_with_instance(instance))
                .map(|member| member.member_id.clone());
            let existing = group.is_some_and(|g| g.members.contains_key(&request.member_id));
            if let Some(old_member_id) = replaced {
                // A static member restarting: it takes over its previous incarnation's
                // partitions, and the old member id is fenced.
                let new_member_id = if request.member_id.is_empty() {
                    self.fresh_member_id(group_id)
                } else {
                    request.member_id.clone()
                };
                if new_member_id != old_member_id && existing {
                    return Err(invalid(format!(
                        "member id '{new_member_id}' is already in the group"
                    )));
                }
                self.emit(
                    &mut records,
                    GroupRecord::StaticMemberReplaced {
                        group_id: group_id.to_string(),
                        old_member_id,
                        new_member_id: new_member_id.clone(),
                    },
                );
                let member = self
                    .member(group_id, &new_member_id)
                    .expect("replaced")
                    .clone();
                self.emit(
                    &mut records,
                    GroupRecord::CurrentAssignment {
                        group_id: group_id.to_string(),
                        member_id: new_member_id.clone(),
                        member_epoch: member.member_epoch,
                        previous_epoch: member.previous_epoch,
                        assigned: Vec::new(),
                        revoking: Vec::new(),
                    },
                );
                // The restarted process owns nothing yet; it gets its partitions back at
                // once (nobody else holds them), under a new epoch that fences the old one.
                force_new_epoch = true;
                new_member_id
            } else if existing {
                // The same member id joining again lost its state: it owns nothing now.
                let member = self
                    .member(group_id, &request.member_id)
                    .expect("exists")
                    .clone();
                self.emit(
                    &mut records,
                    GroupRecord::CurrentAssignment {
                        group_id: group_id.to_string(),
                        member_id: member.member_id.clone(),
                        member_epoch: member.member_epoch,
                        previous_epoch: member.previous_epoch,
                        assigned: Vec::new(),
                        revoking: Vec::new(),
                    },
                );
                force_new_epoch = true;
                member.member_id
            } else {
                self.check_room_for(group_id)?;
                let members = group.map_or(0, |g| g.members.len());
                if members >= self.config.members_max as usize {
                    return Err(ApiError::GroupMaxSizeReached {
                        max: self.config.members_max,
                    });
                }
                // A new member gets an epoch at once, even with nothing to own yet, so that
                // its next heartbeat is not taken for another join.
                force_new_epoch = true;
                if request.member_id.is_empty() {
                    self.fresh_member_id(group_id)
                } else {
                    request.member_id.clone()
                }
            }
        } else {
            let member = self
                .member(group_id, &request.member_id)
                .ok_or_else(|| self.unknown_member(request))?;
            let lost_reply = epoch == member.previous_epoch
                && request.owned.as_ref().is_none_or(|owned| {
                    from_wire(owned)
                        .iter()
                        .all(|partition| member.owns(partition))
                });
            if epoch != member.member_epoch && !lost_reply {
                return Err(ApiError::FencedMemberEpoch {
                    member_id: request.member_id.clone(),
                    current: member.member_epoch,
                    received: epoch,
                });
            }
            request.member_id.clone()
        };

        // Membership and subscription.
        let before = self.member(group_id, &member_id).cloned();
        let subscribed: BTreeSet<String> = match &request.subscribed_topics {
            Some(topics) => topics.iter().cloned().collect(),
            None => before
                .as_ref()
                .map(|m| m.subscribed.clone())
                .unwrap_or_default(),
        };
        let wanted = Member {
            member_id: member_id.clone(),
            // A heartbeat may leave the instance id out once joined ("unchanged").
            instance_id: request
                .instance_id
                .clone()
                .or_else(|| before.as_ref().and_then(|m| m.instance_id.clone())),
            subscribed: subscribed.clone(),
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            session_timeout_ms: request.session_timeout_ms,
            static_left: false,
            ..before.clone().unwrap_or_else(|| Member {
                member_id: member_id.clone(),
                instance_id: None,
                subscribed: BTreeSet::new(),
                rebalance_timeout_ms: 0,
                session_timeout_ms: 0,
                static_left: false,
                member_epoch: MemberEpoch::JOIN,
                previous_epoch: MemberEpoch::JOIN,
                target: Assignment::new(),
                assigned: Assignment::new(),
                revoking: Assignment::new(),
            })
        };
        let changed = before.as_ref().is_none_or(|b| {
            b.instance_id != wanted.instance_id
                || b.subscribed != wanted.subscribed
                || b.rebalance_timeout_ms != wanted.rebalance_timeout_ms
                || b.session_timeout_ms != wanted.session_timeout_ms
                || b.static_left
        });
        if changed {
            self.emit(&mut records, member_record(group_id, &wanted, false));
        }
        let mut recompute = before.as_ref().is_none_or(|b| b.subscribed != subscribed);
        if let Some(name) = &request.assignor {
            let assignor = Assignor::from_name(name).expect("validated");
            recompute |= self.groups[group_id].assignor != assignor;
        }

        // Revocations the member confirms by reporting it no longer owns them.
        if let Some(owned) = &request.owned {
            let owned = from_wire(owned);
            let member = self.member(group_id, &member_id).expect("present").clone();
            let revoking: Assignment = member.revoking.intersection(&owned).cloned().collect();
            if revoking != member.revoking {
                self.emit(
                    &mut records,
                    GroupRecord::CurrentAssignment {
                        group_id: group_id.to_string(),
                        member_id: member_id.clone(),
                        member_epoch: member.member_epoch,
                        previous_epoch: member.previous_epoch,
                        assigned: member.assigned.iter().cloned().collect(),
                        revoking: revoking.into_iter().collect(),
                    },
                );
            }
        }

        let group = &self.groups[group_id];
        recompute |= group.subscribed_counts(topics) != group.partition_counts;
        if recompute {
            let assignor = request
                .assignor
                .as_deref()
                .and_then(Assignor::from_name)
                .unwrap_or(group.assignor);
            self.compute_target(group_id, assignor, topics, &mut records);
        }
        self.reconcile(group_id, &member_id, force_new_epoch, now_ms, &mut records);

        let session_timeout_ms = self.groups[group_id].members[&member_id].session_timeout_ms;
        let timers = self
            .timers
            .entry((group_id.to_string(), member_id.clone()))
            .or_insert(Timers {
                session_deadline_ms: 0,
                revocation_deadline_ms: None,
            });
        timers.session_deadline_ms = now_ms + u64::from(session_timeout_ms);
        let member = &self.groups[group_id].members[&member_id];
        let response = ConsumerGroupHeartbeatResponse {
            member_id: member_id.clone(),
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: self.heartbeat_interval_for(member),
            assignment: to_wire(&member.assigned),
        };
        Ok((response, records))
    }

    /// The interval told to `member`: the configured one, shorter while the member waits for
    /// partitions that others are still releasing. A release reaches the coordinator at once
    /// (the releasing client heartbeats as soon as it lets go), but the new owner would only
    /// learn of it at its next heartbeat; asking it back sooner makes a join's rebalance take
    /// about one interval (the time the current owners need to hear of it) instead of two.
    fn heartbeat_interval_for(&self, member: &Member) -> u32 {
        if member.target.is_subset(&member.assigned) {
            self.config.heartbeat_interval_ms
        } else {
            self.config
                .heartbeat_interval_ms
                .min(AWAITING_HEARTBEAT_INTERVAL_MS)
        }
    }

    fn validate_heartbeat(&self, request: &ConsumerGroupHeartbeatRequest) -> Result<(), ApiError> {
        validate_group_id(&request.group_id)?;
        if self.classic.is_active(&request.group_id) {
            return Err(ApiError::InconsistentGroupProtocol {
                group_id: request.group_id.clone(),
            });
        }
        if request.member_id.len() > MEMBER_ID_BYTES_MAX {
            return Err(invalid(format!(
                "member id is longer than {MEMBER_ID_BYTES_MAX} bytes"
            )));
        }
        if let Some(instance_id) = &request.instance_id {
            if instance_id.is_empty() || instance_id.len() > MEMBER_ID_BYTES_MAX {
                return Err(invalid(format!(
                    "instance id must be 1 to {MEMBER_ID_BYTES_MAX} bytes"
                )));
            }
        }
        if request.member_epoch < MemberEpoch::STATIC_LEAVE {
            return Err(invalid(format!(
                "member epoch {} is not valid",
                request.member_epoch
            )));
        }
        let leaving = request.member_epoch < MemberEpoch::JOIN;
        if leaving {
            return Ok(());
        }
        if request.member_epoch > MemberEpoch::JOIN && request.member_id.is_empty() {
            return Err(invalid("a heartbeat needs the member id the join returned"));
        }
        let config = &self.config;
        if !(config.session_timeout_ms_min..=config.session_timeout_ms_max)
            .contains(&request.session_timeout_ms)
        {
            return Err(invalid(format!(
                "session timeout {} ms is outside {}..={} ms",
                request.session_timeout_ms,
                config.session_timeout_ms_min,
                config.session_timeout_ms_max
            )));
        }
        if request.rebalance_timeout_ms == 0
            || request.rebalance_timeout_ms > config.rebalance_timeout_ms_max
        {
            return Err(invalid(format!(
                "rebalance timeout {} ms is outside 1..={} ms",
                request.rebalance_timeout_ms, config.rebalance_timeout_ms_max
            )));
        }
        match &request.subscribed_topics {
            None if request.member_epoch == MemberEpoch::JOIN => {
                return Err(invalid("a join must name its subscribed topics"));
            }
            Some(topics) => {
                if topics.len() > config.subscribed_topics_max as usize {
                    return Err(invalid(format!(
                        "{} subscribed topics; at most {} are allowed",
                        topics.len(),
                        config.subscribed_topics_max
                    )));
                }
                if let Some(bad) = topics
                    .iter()
                    .find(|topic| topic.is_empty() || topic.len() > TOPIC_NAME_BYTES_MAX)
                {
                    return Err(invalid(format!(
                        "subscribed topic {bad:?} is not a topic name"
                    )));
                }
            }
            None => {}
        }
        if let Some(name) = &request.assignor {
            if Assignor::from_name(name).is_none() {
                return Err(ApiError::UnsupportedAssignor {
                    name: name.clone(),
                    supported: ASSIGNOR_NAMES.iter().map(|n| n.to_string()).collect(),
                });
            }
        }
        if let Some(owned) = &request.owned {
            let count: usize = owned.iter().map(|topic| topic.partitions.len()).sum();
            if count > config.request_partitions_max as usize {
                return Err(invalid(format!(
                    "{count} owned partitions; at most {} are allowed",
                    config.request_partitions_max
                )));
            }
        }
        Ok(())
    }

    /// `FencedInstanceId` when another member now holds the request's instance id, else
    /// `UnknownMemberId`.
    fn unknown_member(&self, request: &ConsumerGroupHeartbeatRequest) -> ApiError {
        let holder = request.instance_id.as_deref().and_then(|instance| {
            self.groups
                .get(&request.group_id)?
                .member_with_instance(instance)
        });
        match (holder, &request.instance_id) {
            (Some(_), Some(instance_id)) => ApiError::FencedInstanceId {
                instance_id: instance_id.clone(),
                member_id: request.member_id.clone(),
            },
            _ => ApiError::UnknownMemberId {
                group_id: request.group_id.clone(),
                member_id: request.member_id.clone(),
            },
        }
    }

    /// A member id no member of the group has, derived from the group's epoch counter so
    /// that it is the same on every coordinator replaying the same log.
    fn fresh_member_id(&self, group_id: &str) -> String {
        let group = self.groups.get(group_id);
        let base = group.map_or(0, |g| g.member_epoch_high.0) + 1;
        let taken = |id: &String| group.is_some_and(|g| g.members.contains_key(id));
        (0..)
            .map(|suffix| format!("member-{base}-{suffix}"))
            .find(|id| !taken(id))
            .expect("an unbounded range has a free id")
    }

    fn remove_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        topics: &TopicPartitionCounts,
        records: &mut Vec<GroupRecord>,
    ) {
        self.emit(
            records,
            GroupRecord::MemberRemoved {
                group_id: group_id.to_string(),
                member_id: member_id.to_string(),
            },
        );
        let assignor = self.groups[group_id].assignor;
        self.compute_target(group_id, assignor, topics, records);
    }

    /// Bumps the group epoch and records every member's new target.
    fn compute_target(
        &mut self,
        group_id: &str,
        assignor: Assignor,
        topics: &TopicPartitionCounts,
        records: &mut Vec<GroupRecord>,
    ) {
        let group = &self.groups[group_id];
        let subscriptions: BTreeMap<String, BTreeSet<String>> = group
            .members
            .iter()
            .map(|(id, member)| (id.clone(), member.subscribed.clone()))
            .collect();
        let previous: BTreeMap<String, Assignment> = group
            .members
            .iter()
            .map(|(id, member)| (id.clone(), member.target.clone()))
            .collect();
        let counts = group.subscribed_counts(topics);
        let targets = assign(assignor, &subscriptions, &counts, &previous);
        let metadata = GroupRecord::GroupMetadata {
            group_id: group_id.to_string(),
            group_epoch: group.group_epoch + 1,
            assignor,
            partition_counts: counts.into_iter().collect(),
        };
        self.emit(records, metadata);
        for (member_id, target) in targets {
            if previous.get(&member_id) != Some(&target) {
                self.emit(
                    records,
                    GroupRecord::TargetAssignment {
                        group_id: group_id.to_string(),
                        member_id,
                        partitions: target.into_iter().collect(),
                    },
                );
            }
        }
    }

    /// Moves one member one step towards its target: first it loses what is not in its
    /// target; once it confirmed every revocation, it gains what is free.
    fn reconcile(
        &mut self,
        group_id: &str,
        member_id: &str,
        force_new_epoch: bool,
        now_ms: u64,
        records: &mut Vec<GroupRecord>,
    ) {
        let group = &self.groups[group_id];
        let member = &group.members[member_id];
        let mut assigned = member.assigned.clone();
        let mut revoking = member.revoking.clone();
        let to_revoke: Assignment = assigned.difference(&member.target).cloned().collect();
        let mut changed = false;
        if !to_revoke.is_empty() {
            for partition in to_revoke {
                assigned.remove(&partition);
                revoking.insert(partition);
            }
            changed = true;
        } else if revoking.is_empty() {
            let free: Vec<TopicPartition> = member
                .target
                .difference(&assigned)
                .filter(|partition| {
                    group
                        .owner_of(partition)
                        .is_none_or(|owner| owner.member_id == member_id)
                })
                .cloned()
                .collect();
            changed = !free.is_empty();
            assigned.extend(free);
        }
        if changed || force_new_epoch {
            let record = GroupRecord::CurrentAssignment {
                group_id: group_id.to_string(),
                member_id: member_id.to_string(),
                member_epoch: group.member_epoch_high.next(),
                previous_epoch: member.member_epoch,
                assigned: assigned.into_iter().collect(),
                revoking: revoking.iter().cloned().collect(),
            };
            self.emit(records, record);
        }
        let rebalance_timeout_ms = self.groups[group_id].members[member_id].rebalance_timeout_ms;
        let timers = self
            .timers
            .entry((group_id.to_string(), member_id.to_string()))
            .or_insert(Timers {
                session_deadline_ms: now_ms,
                revocation_deadline_ms: None,
            });
        if revoking.is_empty() {
            timers.revocation_deadline_ms = None;
        } else if timers.revocation_deadline_ms.is_none() {
            timers.revocation_deadline_ms = Some(now_ms + u64::from(rebalance_timeout_ms));
        }
    }

    /// Removes every member whose session expired or that did not release revoked
    /// partitions within its rebalance timeout, at time `now_ms`.
    pub fn expire(&mut self, topics: &TopicPartitionCounts, now_ms: u64) -> Vec<GroupRecord> {
        self.classic.tick(now_ms);
        let expired: Vec<(String, String)> = self
            .timers
            .iter()
            .filter(|(_, timers)| {
                timers.session_deadline_ms <= now_ms
                    || timers.revocation_deadline_ms.is_some_and(|d| d <= now_ms)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut records = Vec::new();
        for (group_id, member_id) in expired {
            if self.member(&group_id, &member_id).is_some() {
                self.remove_member(&group_id, &member_id, topics, &mut records);
            }
        }
        records
    }

    /// Stores committed offsets. Refusals of the whole request change nothing; a refused
    /// partition changes nothing for that partition.
    pub fn commit(
        &mut self,
        request: &OffsetCommitRequest,
        topics: &TopicPartitionCounts,
    ) -> Result<(OffsetCommitResponse, Vec<GroupRecord>), ApiError> {
        validate_group_id(&request.group_id)?;
        if request.offsets.len() > self.config.request_partitions_max as usize {
            return Err(invalid(format!(
                "{} partitions in one commit; at most {} are allowed",
                request.offsets.len(),
                self.config.request_partitions_max
            )));
        }
        if let Some(long) = request.offsets.iter().find(|o| {
            o.metadata
                .as_ref()
                .is_some_and(|m| m.len() > COMMIT_METADATA_BYTES_MAX)
        }) {
            return Err(invalid(format!(
                "commit metadata for {}/{} exceeds {COMMIT_METADATA_BYTES_MAX} bytes",
                long.topic, long.partition
            )));
        }
        let group = self.groups.get(&request.group_id);
        let standalone = request.member_id.is_empty() && request.member_epoch == MemberEpoch::LEAVE;
        let member = if standalone {
            self.check_room_for(&request.group_id)?;
            let members = group.map_or(0, |g| g.members.len());
            if members > 0 {
                return Err(ApiError::GroupNotEmpty {
                    group_id: request.group_id.clone(),
                    members: members as u32,
                });
            }
            None
        } else {
            let member = group
                .and_then(|g| g.members.get(&request.member_id))
                .ok_or_else(|| ApiError::UnknownMemberId {
                    group_id: request.group_id.clone(),
                    member_id: request.member_id.clone(),
                })?;
            if request.member_epoch < member.member_epoch {
                return Err(ApiError::StaleMemberEpoch {
                    member_id: request.member_id.clone(),
                    current: member.member_epoch,
                    received: request.member_epoch,
                });
            }
            if request.member_epoch > member.member_epoch {
                return Err(ApiError::FencedMemberEpoch {
                    member_id: request.member_id.clone(),
                    current: member.member_epoch,
                    received: request.member_epoch,
                });
            }
            Some(member.clone())
        };
        let mut results = Vec::with_capacity(request.offsets.len());
        let mut records = Vec::new();
        for offset in &request.offsets {
            let partition = TopicPartition::new(&offset.topic, offset.partition);
            let result =
                check_partition(topics, &offset.topic, offset.partition).and_then(
                    |()| match &member {
                        Some(member) if !member.owns(&partition) => {
                            Err(ApiError::PartitionNotOwned {
                                member_id: member.member_id.clone(),
                                topic: offset.topic.clone(),
                                partition: offset.partition,
                            })
                        }
                        _ => Ok(()),
                    },
                );
            if result.is_ok() {
                self.emit(
                    &mut records,
                    GroupRecord::OffsetCommit {
                        group_id: request.group_id.clone(),
                        topic: offset.topic.clone(),
                        partition: offset.partition,
                        offset: offset.offset,
                        metadata: offset.metadata.clone(),
                    },
                );
            }
            results.push(OffsetCommitPartitionResult {
                topic: offset.topic.clone(),
                partition: offset.partition,
                result,
            });
        }
        Ok((
            OffsetCommitResponse {
                partitions: results,
            },
            records,
        ))
    }

    pub fn fetch_offsets(
        &self,
        request: &OffsetFetchRequest,
    ) -> Result<OffsetFetchResponse, ApiError> {
        validate_group_id(&request.group_id)?;
        let group = self.groups.get(&request.group_id);
        if let Some((member_id, epoch)) = &request.member {
            let member = group
                .and_then(|g| g.members.get(member_id))
                .ok_or_else(|| ApiError::UnknownMemberId {
                    group_id: request.group_id.clone(),
                    member_id: member_id.clone(),
                })?;
            if *epoch < member.member_epoch {
                return Err(ApiError::StaleMemberEpoch {
                    member_id: member_id.clone(),
                    current: member.member_epoch,
                    received: *epoch,
                });
            }
            if *epoch > member.member_epoch {
                return Err(ApiError::FencedMemberEpoch {
                    member_id: member_id.clone(),
                    current: member.member_epoch,
                    received: *epoch,
                });
            }
        }
        let committed = |partition: &TopicPartition| CommittedPartitionOffset {
            topic: partition.topic.clone(),
            partition: partition.partition,
            committed: group.and_then(|g| g.offsets.get(partition)).cloned(),
        };
        let partitions = match &request.partitions {
            Some(asked) => {
                let count: usize = asked.iter().map(|t| t.partitions.len()).sum();
                if count > self.config.request_partitions_max as usize {
                    return Err(invalid(format!(
                        "{count} partitions asked; at most {} are allowed",
                        self.config.request_partitions_max
                    )));
                }
                asked
                    .iter()
                    .flat_map(|topic| {
                        topic
                            .partitions
                            .iter()
                            .map(|p| TopicPartition::new(&topic.topic, *p))
                    })
                    .map(|partition| committed(&partition))
                    .collect()
            }
            None => group
                .map(|g| g.offsets.keys().map(committed).collect())
                .unwrap_or_default(),
        };
        Ok(OffsetFetchResponse { partitions })
    }

    /// Every group, Cairn-protocol and classic (a classic group shows as Stable or, while
    /// it rebalances, Reconciling).
    pub fn list_groups(&self) -> Vec<GroupListing> {
        let mut listed: BTreeMap<&str, GroupListing> = self
            .groups
            .values()
            .map(|group| {
                let listing = GroupListing {
                    group_id: group.group_id.clone(),
                    state: group.state(),
                    members: group.members.len() as u32,
                };
                (group.group_id.as_str(), listing)
            })
            .collect();
        for group in self.classic.groups() {
            let listing = GroupListing {
                group_id: group.group_id.clone(),
                state: classic_state(group),
                members: group.members.len() as u32,
            };
            listed.insert(group.group_id.as_str(), listing);
        }
        listed.into_values().collect()
    }

    pub fn classic(&self) -> &ClassicGroups {
        &self.classic
    }

    pub fn classic_mut(&mut self) -> &mut ClassicGroups {
        &mut self.classic
    }

    pub fn classic_limits(&self) -> ClassicLimits {
        ClassicLimits {
            members_max: self.config.members_max,
            session_timeout_ms_min: self.config.session_timeout_ms_min,
            session_timeout_ms_max: self.config.session_timeout_ms_max,
            rebalance_timeout_ms_max: self.config.rebalance_timeout_ms_max,
            initial_rebalance_delay_ms: self.config.initial_rebalance_delay_ms,
        }
    }

    /// A Kafka JoinGroup: refused for a group that runs the Cairn protocol (Kafka's
    /// INCONSISTENT_GROUP_PROTOCOL) and for a new group past `groups_max`.
    pub fn classic_join(
        &mut self,
        request: &JoinRequest,
        fresh_id: &str,
        now_ms: u64,
    ) -> Result<Step<JoinReply>, ClassicError> {
        validate_group_id(&request.group_id).map_err(ClassicError::Refused)?;
        if self
            .groups
            .get(&request.group_id)
            .is_some_and(|group| !group.members.is_empty())
        {
            return Err(ClassicError::InconsistentGroupProtocol);
        }
        self.check_room_for(&request.group_id)
            .map_err(ClassicError::Refused)?;
        let limits = self.classic_limits();
        self.classic.join(&limits, request, fresh_id, now_ms)
    }

    /// A Kafka OffsetCommit: a Cairn-protocol member's (generation is its member epoch), a
    /// classic member's (checked against the classic group's generation), or a simple commit
    /// (generation -1, no member) to a group without members.
    pub fn kafka_commit(
        &mut self,
        request: &OffsetCommitRequest,
        instance_id: Option<&str>,
        topics: &TopicPartitionCounts,
        now_ms: u64,
    ) -> Result<(OffsetCommitResponse, Vec<GroupRecord>), ClassicError> {
        validate_group_id(&request.group_id).map_err(ClassicError::Refused)?;
        let cairn_members = self
            .groups
            .get(&request.group_id)
            .is_some_and(|group| !group.members.is_empty());
        if cairn_members {
            return self.commit(request, topics).map_err(ClassicError::Refused);
        }
        self.classic.check_commit(
            &request.group_id,
            &request.member_id,
            instance_id,
            request.member_epoch.0,
            now_ms,
        )?;
        let standalone = OffsetCommitRequest {
            group_id: request.group_id.clone(),
            member_id: String::new(),
            member_epoch: MemberEpoch::LEAVE,
            offsets: request.offsets.clone(),
        };
        self.commit(&standalone, topics)
            .map_err(ClassicError::Refused)
    }

    /// Describes a group; `bounds` gives a partition's log start and high watermark when
    /// known, for lag.
    pub fn describe(
        &self,
        group_id: &str,
        topics: &TopicPartitionCounts,
        bounds: impl Fn(&TopicPartition) -> Option<PartitionBounds>,
    ) -> Result<DescribeGroupResponse, ApiError> {
        validate_group_id(group_id)?;
        if let Some(classic) = self.classic.group(group_id) {
            return Ok(describe_classic(
                classic,
                self.groups.get(group_id),
                &bounds,
            ));
        }
        let group = self
            .groups
            .get(group_id)
            .ok_or_else(|| ApiError::GroupIdNotFound {
                group_id: group_id.to_string(),
            })?;
        let mut partitions: BTreeSet<TopicPartition> = group.offsets.keys().cloned().collect();
        for (topic, count) in group.subscribed_counts(topics) {
            partitions.extend((0..count).map(|p| TopicPartition::new(&topic, p)));
        }
        let partitions = partitions
            .into_iter()
            .map(|partition| {
                let committed = group.offsets.get(&partition).map(|c| c.offset);
                let bounds = bounds(&partition);
                let lag = bounds
                    .map(|(log_start, end)| end.0.saturating_sub(committed.unwrap_or(log_start).0));
                GroupPartitionDescription {
                    owner: group.owner_of(&partition).map(|m| m.member_id.clone()),
                    topic: partition.topic,
                    partition: partition.partition,
                    committed,
                    log_end: bounds.map(|(_, end)| end),
                    lag,
                }
            })
            .collect();
        let members = group
            .members
            .values()
            .map(|member| MemberDescription {
                member_id: member.member_id.clone(),
                instance_id: member.instance_id.clone(),
                member_epoch: member.member_epoch,
                subscribed_topics: member.subscribed.iter().cloned().collect(),
                assignment: to_wire(&member.assigned),
                target_assignment: to_wire(&member.target),
            })
            .collect();
        Ok(DescribeGroupResponse {
            group_id: group.group_id.clone(),
            state: group.state(),
            group_epoch: group.group_epoch,
            assignor: group.assignor.name().to_string(),
            members,
            partitions,
        })
    }

    pub fn delete_group(&mut self, group_id: &str) -> Result<Vec<GroupRecord>, ApiError> {
        validate_group_id(group_id)?;
        let group = self
            .groups
            .get(group_id)
            .ok_or_else(|| ApiError::GroupIdNotFound {
                group_id: group_id.to_string(),
            })?;
        if !group.members.is_empty() {
            return Err(ApiError::GroupNotEmpty {
                group_id: group_id.to_string(),
                members: group.members.len() as u32,
            });
        }
        let mut records = Vec::new();
        self.emit(
            &mut records,
            GroupRecord::GroupDeleted {
                group_id: group_id.to_string(),
            },
        );
        Ok(records)
    }

    /// Rewrites committed offsets of an empty group (creating it when needed).
    pub fn reset_offsets(
        &mut self,
        request: &ResetGroupOffsetsRequest,
        topics: &TopicPartitionCounts,
        bounds: impl Fn(&TopicPartition) -> Option<PartitionBounds>,
    ) -> Result<(ResetGroupOffsetsResponse, Vec<GroupRecord>), ApiError> {
        validate_group_id(&request.group_id)?;
        self.check_room_for(&request.group_id)?;
        let count = *topics
            .get(&request.topic)
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: request.topic.clone(),
            })?;
        // A group that never existed is refused, not created: a mistyped group id would
        // otherwise leave a new group behind with offsets nobody asked for (issue 17).
        let group =
            self.groups
                .get(&request.group_id)
                .ok_or_else(|| ApiError::GroupIdNotFound {
                    group_id: request.group_id.clone(),
                })?;
        if !group.members.is_empty() {
            return Err(ApiError::GroupNotEmpty {
                group_id: request.group_id.clone(),
                members: group.members.len() as u32,
            });
        }
        let partitions: Vec<u32> = match &request.partitions {
            Some(partitions) => {
                if partitions.len() > self.config.request_partitions_max as usize {
                    return Err(invalid("too many partitions in one reset"));
                }
                for &partition in partitions {
                    check_partition(topics, &request.topic, partition)?;
                }
                partitions
                    .iter()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            }
            None => (0..count).collect(),
        };
        let mut targets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let topic_partition = TopicPartition::new(&request.topic, partition);
            let (log_start, end) = bounds(&topic_partition).ok_or(ApiError::NotReady {
                reason: format!("log bounds of {}/{partition} are not known", request.topic),
            })?;
            let offset = match request.to {
                OffsetResetTarget::Earliest => log_start,
                OffsetResetTarget::Latest => end,
                OffsetResetTarget::Offset(offset) => offset.clamp(log_start, end.max(log_start)),
            };
            targets.push((partition, offset));
        }
        let mut records = Vec::new();
        let mut reply = Vec::with_capacity(targets.len());
        for (partition, offset) in targets {
            self.emit(
                &mut records,
                GroupRecord::OffsetCommit {
                    group_id: request.group_id.clone(),
                    topic: request.topic.clone(),
                    partition,
                    offset,
                    metadata: None,
                },
            );
            reply.push(CommittedPartitionOffset {
                topic: request.topic.clone(),
                partition,
                committed: Some(CommittedOffset {
                    offset,
                    metadata: None,
                }),
            });
        }
        Ok((ResetGroupOffsetsResponse { partitions: reply }, records))
    }
}

fn member_record(group_id: &str, member: &Member, static_left: bool) -> GroupRecord {
    GroupRecord::Member {
        group_id: group_id.to_string(),
        member_id: member.member_id.clone(),
        instance_id: member.instance_id.clone(),
        subscribed_topics: member.subscribed.iter().cloned().collect(),
        rebalance_timeout_ms: member.rebalance_timeout_ms,
        session_timeout_ms: member.session_timeout_ms,
        static_left,
    }
}

/// A classic group's state in Cairn's terms: a rebalance in progress is `Reconciling`.
fn classic_state(group: &super::classic::ClassicGroup) -> GroupState {
    use super::classic::Phase;
    match group.phase {
        Phase::Empty => GroupState::Empty,
        Phase::Stable => GroupState::Stable,
        Phase::PreparingRebalance { .. } | Phase::CompletingRebalance => GroupState::Reconciling,
    }
}

/// Describes a classic group for `cairn group describe`: the generation as the group epoch,
/// `classic:<protocol type>/<protocol>` as the assignor, and, for protocol type "consumer",
/// each member's subscription and assignment decoded from its opaque bytes.
fn describe_classic(
    classic: &super::classic::ClassicGroup,
    offsets: Option<&Group>,
    bounds: &impl Fn(&TopicPartition) -> Option<PartitionBounds>,
) -> DescribeGroupResponse {
    let consumer = classic.protocol_type == "consumer";
    let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
    let mut members = Vec::with_capacity(classic.members.len());
    for member in classic.members.values() {
        let assignment = if consumer {
            super::classic::consumer_assignment(&member.assignment)
        } else {
            Assignment::new()
        };
        for partition in &assignment {
            owners.insert(partition.clone(), member.member_id.clone());
        }
        let subscribed = match (&classic.protocol, consumer) {
            (Some(protocol), true) => super::classic::consumer_subscription(
                &member
                    .protocols
                    .iter()
                    .find(|(name, _)| name == protocol)
                    .map(|(_, metadata)| metadata.clone())
                    .unwrap_or_default(),
            ),
            _ => Vec::new(),
        };
        members.push(MemberDescription {
            member_id: member.member_id.clone(),
            instance_id: member.instance_id.clone(),
            member_epoch: MemberEpoch(classic.generation),
            subscribed_topics: subscribed,
            assignment: to_wire(&assignment),
            target_assignment: to_wire(&assignment),
        });
    }
    let mut partitions: BTreeSet<TopicPartition> = owners.keys().cloned().collect();
    if let Some(group) = offsets {
        partitions.extend(group.offsets.keys().cloned());
    }
    let partitions = partitions
        .into_iter()
        .map(|partition| {
            let committed = offsets
                .and_then(|group| group.offsets.get(&partition))
                .map(|c| c.offset);
            let bounds = bounds(&partition);
            let lag = bounds
                .map(|(log_start, end)| end.0.saturating_sub(committed.unwrap_or(log_start).0));
            GroupPartitionDescription {
                owner: owners.get(&partition).cloned(),
                topic: partition.topic,
                partition: partition.partition,
                committed,
                log_end: bounds.map(|(_, end)| end),
                lag,
            }
        })
        .collect();
    DescribeGroupResponse {
        group_id: classic.group_id.clone(),
        state: classic_state(classic),
        group_epoch: classic.generation,
        assignor: format!(
            "classic:{}/{}",
            classic.protocol_type,
            classic.protocol.as_deref().unwrap_or("-")
        ),
        members,
        partitions,
    }
}
