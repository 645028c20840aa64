//! Classic consumer groups (Kafka's JoinGroup/SyncGroup protocol, client-side assignment):
//! requests and the clock in, replies out; no I/O, no waiting.
//!
//! A classic group lives only in its coordinator's memory (Kafka keeps it in its offsets
//! topic; members here rejoin after a coordinator failover, which Kafka clients do on
//! `NOT_COORDINATOR` and `UNKNOWN_MEMBER_ID`). Its committed offsets are ordinary
//! `__offsets` records of the [`super::state::Coordinator`], so they are durable and shared
//! with Cairn-protocol groups.
//!
//! A rebalance: the group enters `PreparingRebalance` when a member joins, changes its
//! protocols, leaves or expires. Every member must send JoinGroup again; the rebalance
//! completes once all have (or at its deadline, the longest rebalance timeout of the members,
//! when the ones that did not are removed). Completing bumps the generation, chooses the
//! protocol every member supports that most members prefer, keeps or picks a leader, and
//! leaves each member a join answer to collect (the leader's lists every member's metadata).
//! In `CompletingRebalance` the leader's SyncGroup hands out the assignments (opaque bytes)
//! and the group is `Stable`.
//!
//! Waiting is the caller's: a join or sync that cannot be answered yet returns `Wait`, and the
//! caller asks again ([`ClassicGroups::poll_join`], [`ClassicGroups::poll_sync`]) whenever
//! [`ClassicGroups::version`] changes, without holding the coordinator meanwhile.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

/// Protocols (assignors) one member may offer in a JoinGroup.
pub const PROTOCOLS_MAX: usize = 64;
/// Longest protocol type or protocol name, and longest client id kept.
pub const PROTOCOL_NAME_BYTES_MAX: usize = 255;
/// Protocol metadata one member may have the coordinator hold (all its protocols together):
/// a subscription of thousands of topics fits, and members times this bounds a group.
pub const MEMBER_METADATA_BYTES_MAX: usize = 256 * 1024;

/// Limits a classic group obeys; taken from the coordinator's `GroupConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassicLimits {
    pub members_max: u32,
    pub session_timeout_ms_min: u32,
    pub session_timeout_ms_max: u32,
    pub rebalance_timeout_ms_max: u32,
    /// See `GroupConfig::initial_rebalance_delay_ms`.
    pub initial_rebalance_delay_ms: u32,
}

/// Why a classic request is refused; each maps to the Kafka error code of the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassicError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("the generation is not the group's")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("protocol type or protocols do not match the group's")]
    InconsistentGroupProtocol,
    /// KIP-394: join again with this member id.
    #[error("join again with member id {member_id}")]
    MemberIdRequired { member_id: String },
    #[error("another member holds this group instance id")]
    FencedInstanceId,
    #[error("the group has its maximum of {max} members")]
    GroupMaxSizeReached { max: u32 },
    #[error("session timeout outside the allowed range")]
    InvalidSessionTimeout,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A refusal the Cairn coordinator gives (too many groups, a bad group id, a commit's).
    #[error(transparent)]
    Refused(cairn_protocol::ApiError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    /// Completes when every member rejoined, not before `hold_until_ms` (the initial delay
    /// of an empty group's first rebalance; `0` for others), and at the latest at `deadline_ms`.
    PreparingRebalance {
        deadline_ms: u64,
        hold_until_ms: u64,
    },
    CompletingRebalance,
    Stable,
}

impl Phase {
    /// The state as Kafka names it (DescribeGroups, ListGroups).
    pub fn kafka_name(&self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance { .. } => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
    /// Sent JoinGroup for the rebalance in progress.
    rejoined: bool,
    /// The answer to its JoinGroup, left here when the rebalance completed.
    join_reply: Option<JoinReply>,
    session_deadline_ms: u64,
}

impl ClassicMember {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicGroup {
    pub group_id: String,
    pub generation: i32,
    pub phase: Phase,
    pub protocol_type: String,
    /// Chosen when the last rebalance completed.
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    /// KIP-394: member ids handed out with MEMBER_ID_REQUIRED, each until its deadline.
    pending: BTreeMap<String, u64>,
}

impl ClassicGroup {
    fn new(group_id: &str, protocol_type: &str) -> ClassicGroup {
        ClassicGroup {
            group_id: group_id.to_string(),
            generation: 0,
            phase: Phase::Empty,
            protocol_type: protocol_type.to_string(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Members and member ids promised to joiners: what the group's size limit counts.
    pub fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.size() == 0
    }

    /// Protocol names every member supports.
    fn common_protocols(&self) -> Option<BTreeSet<&str>> {
        let mut members = self.members.values();
        let first = members.next()?;
        let mut common: BTreeSet<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for member in members {
            let names: BTreeSet<&str> = member.protocols.iter().map(|(n, _)| n.as_str()).collect();
            common.retain(|name| names.contains(name));
        }
        Some(common)
    }

    /// Kafka's choice: of the protocols every member supports, the one most members name
    /// first among them (ties go to the name that sorts first).
    fn select_protocol(&self) -> Option<String> {
        let common = self.common_protocols()?;
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| common.contains(name.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        votes
            .into_iter()
            .find(|(_, count)| *count == most)
            .map(|(name, _)| name.to_string())
    }

    fn member_by_instance(&self, instance_id: &str) -> Option<&ClassicMember> {
        self.members
            .values()
            .find(|member| member.instance_id.as_deref() == Some(instance_id))
    }

    fn start_rebalance(&mut self, now_ms: u64) {
        self.start_rebalance_held(now_ms, 0);
    }

    /// Starts a rebalance that does not complete before `hold_ms` from now.
    fn start_rebalance_held(&mut self, now_ms: u64, hold_ms: u32) {
        if matches!(self.phase, Phase::PreparingRebalance { .. }) {
            return;
        }
        for member in self.members.values_mut() {
            member.rejoined = false;
            member.join_reply = None;
        }
        let longest = self
            .members
            .values()
            .map(|member| member.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        let deadline_ms = now_ms + u64::from(longest);
        self.phase = Phase::PreparingRebalance {
            deadline_ms,
            hold_until_ms: (now_ms + u64::from(hold_ms)).min(deadline_ms),
        };
    }

    /// A new member joined during the initial delay: the delay runs again from now, within
    /// the rebalance's deadline (Kafka's `InitialDelayedJoin`).
    fn extend_hold(&mut self, now_ms: u64, hold_ms: u32) {
        if let Phase::PreparingRebalance {
            deadline_ms,
            hold_until_ms,
        } = &mut self.phase
        {
            if *hold_until_ms > now_ms {
                *hold_until_ms = (now_ms + u64::from(hold_ms)).min(*deadline_ms);
            }
        }
    }

    /// Completes the rebalance once every member rejoined, or at its deadline.
    fn try_complete(&mut self, now_ms: u64) -> bool {
        let Phase::PreparingRebalance {
            deadline_ms,
            hold_until_ms,
        } = self.phase
        else {
            return false;
        };
        let all_rejoined = self.members.values().all(|member| member.rejoined);
        if (!all_rejoined || now_ms < hold_until_ms) && now_ms < deadline_ms {
            return false;
        }
        self.members.retain(|_, member| member.rejoined);
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.protocol = None;
            self.leader = None;
            return true;
        }
        let protocol = self
            .select_protocol()
            .expect("every member shares a protocol: joins are checked against the group");
        if !self
            .leader
            .as_ref()
            .is_some_and(|leader| self.members.contains_key(leader))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().expect("a member leads");
        let all: Vec<JoinedMember> = self
            .members
            .values()
            .map(|member| JoinedMember {
                member_id: member.member_id.clone(),
                instance_id: member.instance_id.clone(),
                metadata: member.metadata_for(&protocol),
            })
            .collect();
        for member in self.members.values_mut() {
            member.rejoined = false;
            member.assignment = Bytes::new();
            member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
            member.join_reply = Some(JoinReply {
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: protocol.clone(),
                leader: leader.clone(),
                member_id: member.member_id.clone(),
                members: if member.member_id == leader {
                    all.clone()
                } else {
                    Vec::new()
                },
            });
        }
        self.protocol = Some(protocol);
        self.phase = Phase::CompletingRebalance;
        true
    }

    fn remove_member(&mut self, member_id: &str, now_ms: u64) {
        if self.members.remove(member_id).is_none() {
            return;
        }
        if self.members.is_empty() {
            self.generation = self.generation.wrapping_add(1).max(1);
            self.phase = Phase::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.start_rebalance(now_ms);
        self.try_complete(now_ms);
    }

    fn member_checked(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<&ClassicMember, ClassicError> {
        if let Some(instance) = instance_id {
            if let Some(holder) = self.member_by_instance(instance) {
                if holder.member_id != member_id {
                    return Err(ClassicError::FencedInstanceId);
                }
            }
        }
        self.members
            .get(member_id)
            .ok_or(ClassicError::UnknownMemberId)
    }
}

/// A JoinGroup, decoded from any version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// Version 0 has none: the session timeout is used.
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// Version 4 and later: a new dynamic member gets MEMBER_ID_REQUIRED first (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinReply {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol; the leader's answer only.
    pub members: Vec<JoinedMember>,
}

/// A join or sync answered now, or one to wait for (ask again once the version changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    Done(T),
    Wait,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    /// Version 5: checked against the group's when present.
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    /// The leader's assignment, by member id.
    pub assignments: Vec<(String, Bytes)>,
}

/// The classic groups of one coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassicGroups {
    groups: BTreeMap<String, ClassicGroup>,
    /// Grows with every change; parked requests look again when it does.
    version: u64,
}

fn check_length(what: &str, value: &str, max: usize) -> Result<(), ClassicError> {
    if value.len() > max {
        return Err(ClassicError::InvalidRequest(format!(
            "{what} is {} bytes; at most {max} are allowed",
            value.len()
        )));
    }
    Ok(())
}

impl ClassicGroups {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn group(&self, group_id: &str) -> Option<&ClassicGroup> {
        self.groups.get(group_id)
    }

    pub fn groups(&self) -> impl Iterator<Item = &ClassicGroup> {
        self.groups.values()
    }

    /// Is `group_id` a classic group with members (or members about to join)?
    pub fn is_active(&self, group_id: &str) -> bool {
        self.groups.get(group_id).is_some_and(|g| !g.is_empty())
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    /// Handles a JoinGroup. `fresh_id` is a member id no one has (the caller draws it at
    /// random). Refusals change nothing.
    pub fn join(
        &mut self,
        limits: &ClassicLimits,
        request: &JoinRequest,
        fresh_id: &str,
        now_ms: u64,
    ) -> Result<Step<JoinReply>, ClassicError> {
        validate_join(limits, request)?;
        let session_ms = request.session_timeout_ms as u32;
        let rebalance_ms = if request.rebalance_timeout_ms > 0 {
            (request.rebalance_timeout_ms as u32).min(limits.rebalance_timeout_ms_max)
        } else {
            session_ms.min(limits.rebalance_timeout_ms_max)
        };
        if let Some(group) = self.groups.get(&request.group_id) {
            if !group.is_empty() {
                let compatible = group.protocol_type == request.protocol_type
                    && group.common_protocols().is_none_or(|common| {
                        request
                            .protocols
                            .iter()
                            .any(|(name, _)| common.contains(name.as_str()))
                    });
                if !compatible {
                    return Err(ClassicError::InconsistentGroupProtocol);
                }
            }
        }
        let group = self.groups.get(&request.group_id);
        let size = group.map_or(0, ClassicGroup::size);
        let full = size >= limits.members_max as usize;
        // Which member this is: (member id, the member it replaces or is, a new member).
        let (member_id, existing): (String, Option<String>) = match &request.instance_id {
            Some(instance) => {
                let holder = group
                    .and_then(|g| g.member_by_instance(instance))
                    .map(|m| m.member_id.clone());
                match (request.member_id.is_empty(), holder) {
                    // A static member (re)starting: it takes its instance's place.
                    (true, holder) => (fresh_id.to_string(), holder),
                    (false, Some(holder)) if holder == request.member_id => {
                        (holder.clone(), Some(holder))
                    }
                    (false, Some(_)) => return Err(ClassicError::FencedInstanceId),
                    (false, None) => return Err(ClassicError::UnknownMemberId),
                }
            }
            None if request.member_id.is_empty() => {
                if full {
                    return Err(ClassicError::GroupMaxSizeReached {
                        max: limits.members_max,
                    });
                }
                if request.require_known_member_id {
                    let group = self.entry(&request.group_id, &request.protocol_type);
                    group.pending.insert(
                        fresh_id.to_string(),
                        now_ms + u64::from(session_ms.max(rebalance_ms)),
                    );
                    self.changed();
                    return Err(ClassicError::MemberIdRequired {
                        member_id: fresh_id.to_string(),
                    });
                }
                (fresh_id.to_string(), None)
            }
            None => {
                let known = group.is_some_and(|g| g.members.contains_key(&request.member_id));
                let promised = group.is_some_and(|g| g.pending.contains_key(&request.member_id));
                if known {
                    (request.member_id.clone(), Some(request.member_id.clone()))
                } else if promised {
                    (request.member_id.clone(), None)
                } else {
                    return Err(ClassicError::UnknownMemberId);
                }
            }
        };
        if existing.is_none() && full && !group.is_some_and(|g| g.pending.contains_key(&member_id))
        {
            return Err(ClassicError::GroupMaxSizeReached {
                max: limits.members_max,
            });
        }

        // Validated: from here on the join changes the group.
        let group = self.entry(&request.group_id, &request.protocol_type);
        // The first rebalance of an empty group waits for more members (Kafka's initial delay).
        let first_of_empty = group.phase == Phase::Empty;
        let joins_anew = existing.is_none();
        group.pending.remove(&member_id);
        let mut rebalance = true;
        match existing {
            Some(previous) => {
                let mut member = group.members.remove(&previous).expect("looked up above");
                let same_protocols = member.protocols == request.protocols;
                let leader = group.leader.as_deref() == Some(previous.as_str());
                if previous != member_id && group.leader.as_deref() == Some(previous.as_str()) {
                    group.leader = Some(member_id.clone());
                }
                member.member_id = member_id.clone();
                member.protocols = request.protocols.clone();
                member.session_timeout_ms = session_ms;
                member.rebalance_timeout_ms = rebalance_ms;
                member.client_id = request.client_id.clone();
                member.client_host = request.client_host.clone();
                member.session_deadline_ms = now_ms + u64::from(session_ms);
                // A follower asking again with nothing changed, in a settled group, gets the
                // current generation's answer rather than a rebalance (as Kafka does).
                if same_protocols
                    && !leader
                    && previous == member_id
                    && matches!(group.phase, Phase::Stable | Phase::CompletingRebalance)
                {
                    rebalance = false;
                    let protocol = group.protocol.clone().expect("a settled group has one");
                    member.join_reply = Some(JoinReply {
                        generation: group.generation,
                        protocol_type: group.protocol_type.clone(),
                        protocol,
                        leader: group.leader.clone().unwrap_or_default(),
                        member_id: member_id.clone(),
                        members: Vec::new(),
                    });
                } else {
                    member.rejoined = true;
                }
                group.members.insert(member_id.clone(), member);
            }
            None => {
                group.members.insert(
                    member_id.clone(),
                    ClassicMember {
                        member_id: member_id.clone(),
                        instance_id: request.instance_id.clone(),
                        client_id: request.client_id.clone(),
                        client_host: request.client_host.clone(),
                        session_timeout_ms: session_ms,
                        rebalance_timeout_ms: rebalance_ms,
                        protocols: request.protocols.clone(),
                        assignment: Bytes::new(),
                        rejoined: true,
                        join_reply: None,
                        session_deadline_ms: now_ms + u64::from(session_ms),
                    },
                );
            }
        }
        if rebalance {
            if first_of_empty {
                group.start_rebalance_held(now_ms, limits.initial_rebalance_delay_ms);
            } else {
                if joins_anew {
                    group.extend_hold(now_ms, limits.initial_rebalance_delay_ms);
                }
                group.start_rebalance(now_ms);
            }
            // Starting a rebalance clears every member's flag, the joiner's included.
            if let Some(member) = group.members.get_mut(&member_id) {
                member.rejoined = true;
            }
            group.try_complete(now_ms);
        }
        self.changed();
        self.poll_join(&request.group_id, &member_id, now_ms)
    }

    /// The answer to a parked JoinGroup of `member_id`, if its rebalance completed.
    pub fn poll_join(
        &mut self,
        group_id: &str,
        member_id: &str,
        now_ms: u64,
    ) -> Result<Step<JoinReply>, ClassicError> {
        self.tick(now_ms);
        let member = self
            .groups
            .get_mut(group_id)
            .and_then(|g| g.members.get_mut(member_id))
            .ok_or(ClassicError::UnknownMemberId)?;
        match member.join_reply.take() {
            Some(reply) => {
                self.version += 1;
                Ok(Step::Done(reply))
            }
            None => Ok(Step::Wait),
        }
    }

    /// Handles a SyncGroup. Refusals change nothing.
    pub fn sync(
        &mut self,
        request: &SyncRequest,
        now_ms: u64,
    ) -> Result<Step<Bytes>, ClassicError> {
        self.tick(now_ms);
        let group = self
            .groups
            .get(&request.group_id)
            .ok_or(ClassicError::UnknownMemberId)?;
        group.member_checked(&request.member_id, request.instance_id.as_deref())?;
        if request.generation != group.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        let type_differs = request
            .protocol_type
            .as_ref()
            .is_some_and(|t| *t != group.protocol_type);
        let protocol_differs = request
            .protocol
            .as_ref()
            .is_some_and(|p| Some(p) != group.protocol.as_ref());
        if type_differs || protocol_differs {
            return Err(ClassicError::InconsistentGroupProtocol);
        }
        if request.assignments.len() > group.members.len().max(1) * 2 {
            return Err(ClassicError::InvalidRequest(format!(
                "{} assignments for a group of {} members",
                request.assignments.len(),
                group.members.len()
            )));
        }
        let phase = group.phase;
        let is_leader = group.leader.as_deref() == Some(request.member_id.as_str());
        let group = self.groups.get_mut(&request.group_id).expect("found above");
        let member = group.members.get_mut(&request.member_id).expect("checked");
        member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
        match phase {
            Phase::Empty | Phase::PreparingRebalance { .. } => {
                Err(ClassicError::RebalanceInProgress)
            }
            Phase::CompletingRebalance if is_leader => {
                let assigned: BTreeMap<&str, &Bytes> = request
                    .assignments
                    .iter()
                    .map(|(member, bytes)| (member.as_str(), bytes))
                    .collect();
                for member in group.members.values_mut() {
                    member.assignment = assigned
                        .get(member.member_id.as_str())
                        .map(|bytes| (*bytes).clone())
                        .unwrap_or_default();
                }
                group.phase = Phase::Stable;
                self.changed();
                self.poll_sync(&request.group_id, &request.member_id, request.generation)
            }
            Phase::CompletingRebalance => Ok(Step::Wait),
            Phase::Stable => Ok(Step::Done(member.assignment.clone())),
        }
    }

    /// The answer to a parked SyncGroup of `member_id` for `generation`.
    pub fn poll_sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<Step<Bytes>, ClassicError> {
        let group = self
            .groups
            .get(group_id)
            .ok_or(ClassicError::UnknownMemberId)?;
        let member = group
            .members
            .get(member_id)
            .ok_or(ClassicError::UnknownMemberId)?;
        if group.generation != generation {
            return Err(ClassicError::RebalanceInProgress);
        }
        match group.phase {
            Phase::Stable => Ok(Step::Done(member.assignment.clone())),
            Phase::CompletingRebalance => Ok(Step::Wait),
            Phase::Empty | Phase::PreparingRebalance { .. } => {
                Err(ClassicError::RebalanceInProgress)
            }
        }
    }

    /// Handles a Heartbeat: keeps the member's session alive and tells it of a rebalance.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: u64,
    ) -> Result<(), ClassicError> {
        self.tick(now_ms);
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClassicError::UnknownMemberId)?;
        group.member_checked(member_id, instance_id)?;
        let phase = group.phase;
        let preparing = matches!(phase, Phase::PreparingRebalance { .. });
        if !preparing && generation != group.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        let member = group.members.get_mut(member_id).expect("checked");
        member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
        if preparing {
            return Err(ClassicError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Checks a commit from a member of a classic group (None: the group has no members,
    /// a simple commit is fine). Keeps the member's session alive.
    pub fn check_commit(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: u64,
    ) -> Result<(), ClassicError> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return if generation < 0 && member_id.is_empty() {
                Ok(())
            } else {
                Err(ClassicError::IllegalGeneration)
            };
        };
        if group.members.is_empty() {
            return if generation < 0 {
                Ok(())
            } else {
                Err(ClassicError::IllegalGeneration)
            };
        }
        group.member_checked(member_id, instance_id)?;
        if generation != group.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        // While the group prepares a rebalance, members commit what they consumed before
        // they rejoin (the eager protocol's revocation); once the new generation is formed
        // and the leader has not assigned yet, nobody owns anything to commit.
        if group.phase == Phase::CompletingRebalance {
            return Err(ClassicError::RebalanceInProgress);
        }
        let member = group.members.get_mut(member_id).expect("checked");
        member.session_deadline_ms = now_ms + u64::from(member.session_timeout_ms);
        Ok(())
    }

    /// Handles one member of a LeaveGroup (an empty member id with an instance id names the
    /// instance's member). Refusals change nothing.
    pub fn leave(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: u64,
    ) -> Result<String, ClassicError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClassicError::UnknownMemberId)?;
        let member_id = match (member_id.is_empty(), instance_id) {
            (true, Some(instance)) => group
                .member_by_instance(instance)
                .map(|m| m.member_id.clone())
                .ok_or(ClassicError::UnknownMemberId)?,
            _ => {
                group.member_checked(member_id, instance_id)?;
                member_id.to_string()
            }
        };
        group.remove_member(&member_id, now_ms);
        self.forget_if_unused(group_id);
        self.changed();
        Ok(member_id)
    }

    /// Removes members whose session ended and promised ids never used, completes
    /// rebalances past their deadline, and forgets groups left without members.
    pub fn tick(&mut self, now_ms: u64) {
        let mut changed = false;
        for group in self.groups.values_mut() {
            let before = group.pending.len();
            group.pending.retain(|_, deadline| *deadline > now_ms);
            changed |= group.pending.len() != before;
            // A member waiting in JoinGroup is bounded by the rebalance deadline instead.
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| !m.rejoined && m.session_deadline_ms <= now_ms)
                .map(|m| m.member_id.clone())
                .collect();
            for member_id in expired {
                group.remove_member(&member_id, now_ms);
                changed = true;
            }
            changed |= group.try_complete(now_ms);
        }
        let before = self.groups.len();
        self.groups.retain(|_, group| !group.is_empty());
        changed |= self.groups.len() != before;
        if changed {
            self.changed();
        }
    }

    fn forget_if_unused(&mut self, group_id: &str) {
        if self
            .groups
            .get(group_id)
            .is_some_and(ClassicGroup::is_empty)
        {
            self.groups.remove(group_id);
        }
    }

    fn entry(&mut self, group_id: &str, protocol_type: &str) -> &mut ClassicGroup {
        let group = self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| ClassicGroup::new(group_id, protocol_type));
        if group.is_empty() {
            group.protocol_type = protocol_type.to_string();
        }
        group
    }
}

fn validate_join(limits: &ClassicLimits, request: &JoinRequest) -> Result<(), ClassicError> {
    let session = request.session_timeout_ms;
    if session < 0
        || (session as u32) < limits.session_timeout_ms_min
        || (session as u32) > limits.session_timeout_ms_max
    {
        return Err(ClassicError::InvalidSessionTimeout);
    }
    if request.protocol_type.is_empty() || request.protocols.is_empty() {
        return Err(ClassicError::InconsistentGroupProtocol);
    }
    if request.protocols.len() > PROTOCOLS_MAX {
        return Err(ClassicError::InvalidRequest(format!(
            "{} protocols; at most {PROTOCOLS_MAX} are allowed",
            request.protocols.len()
        )));
    }
    let id_max = cairn_protocol::group::MEMBER_ID_BYTES_MAX;
    check_length("member id", &request.member_id, id_max)?;
    if let Some(instance) = &request.instance_id {
        check_length("group instance id", instance, id_max)?;
        if instance.is_empty() {
            return Err(ClassicError::InvalidRequest(
                "group instance id is empty".into(),
            ));
        }
    }
    check_length(
        "protocol type",
        &request.protocol_type,
        PROTOCOL_NAME_BYTES_MAX,
    )?;
    for (name, _) in &request.protocols {
        check_length("protocol name", name, PROTOCOL_NAME_BYTES_MAX)?;
    }
    let metadata_bytes: usize = request.protocols.iter().map(|(_, m)| m.len()).sum();
    if metadata_bytes > MEMBER_METADATA_BYTES_MAX {
        return Err(ClassicError::InvalidRequest(format!(
            "{metadata_bytes} bytes of protocol metadata; at most {MEMBER_METADATA_BYTES_MAX} are allowed"
        )));
    }
    Ok(())
}

/// The partitions of a "consumer" protocol assignment (Kafka's ConsumerProtocolAssignment);
/// empty when the bytes do not decode (they are the clients' business).
pub fn consumer_assignment(bytes: &Bytes) -> super::assign::Assignment {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    let mut buffer = bytes.clone();
    let Some(version) = read_version(&mut buffer) else {
        return Default::default();
    };
    let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut buffer, version) else {
        return Default::default();
    };
    assignment
        .assigned_partitions
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().filter_map(|partition| {
                let partition = u32::try_from(*partition).ok()?;
                Some(super::assign::TopicPartition::new(&topic.topic, partition))
            })
        })
        .collect()
}

/// The topics of a "consumer" protocol subscription (Kafka's ConsumerProtocolSubscription).
pub fn consumer_subscription(bytes: &Bytes) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut buffer = bytes.clone();
    let Some(version) = read_version(&mut buffer) else {
        return Vec::new();
    };
    ConsumerProtocolSubscription::decode(&mut buffer, version)
        .map(|subscription| {
            subscription
                .topics
                .iter()
                .map(|topic| topic.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The version prefix of a consumer protocol message, clamped to what the codec reads
/// (later versions only add fields at the end, as Kafka's own readers assume).
fn read_version(buffer: &mut Bytes) -> Option<i16> {
    use bytes::Buf;
    if buffer.remaining() < 2 {
        return None;
    }
    let version = buffer.get_i16();
    (version >= 0).then_some(version.min(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ClassicLimits = ClassicLimits {
        members_max: 3,
        session_timeout_ms_min: 1_000,
        session_timeout_ms_max: 60_000,
        rebalance_timeout_ms_max: 30_000,
        initial_rebalance_delay_ms: 0,
    };

    fn join_request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: "test".into(),
            client_host: "127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|name| (name.to_string(), Bytes::from(format!("{member_id}:{name}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    /// KIP-394's two steps: MEMBER_ID_REQUIRED, then the join with that id.
    fn join_new(
        groups: &mut ClassicGroups,
        id: &str,
        protocols: &[&str],
        now_ms: u64,
    ) -> Step<JoinReply> {
        let first = groups.join(&LIMITS, &join_request("", protocols), id, now_ms);
        assert_eq!(
            first,
            Err(ClassicError::MemberIdRequired {
                member_id: id.to_string()
            })
        );
        groups
            .join(&LIMITS, &join_request(id, protocols), "unused", now_ms)
            .expect("the join with the given id is accepted")
    }

    fn done<T: std::fmt::Debug>(step: Step<T>) -> T {
        match step {
            Step::Done(answer) => answer,
            Step::Wait => panic!("expected an answer, the request waits"),
        }
    }

    fn sync_request(member_id: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncRequest {
        SyncRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            generation,
            protocol_type: None,
            protocol: None,
            assignments: assignments
                .iter()
                .map(|(member, bytes)| (member.to_string(), Bytes::from(bytes.to_string())))
                .collect(),
        }
    }

    /// One member `a` that joined and synced: generation 1, stable.
    fn stable_with_a() -> ClassicGroups {
        let mut groups = ClassicGroups::default();
        let reply = done(join_new(&mut groups, "a", &["range"], 0));
        assert_eq!(reply.generation, 1);
        assert_eq!(reply.leader, "a");
        assert_eq!(reply.members.len(), 1);
        let assignment = done(
            groups
                .sync(&sync_request("a", 1, &[("a", "all of it")]), 1)
                .unwrap(),
        );
        assert_eq!(assignment, Bytes::from("all of it"));
        assert_eq!(groups.group("g").unwrap().phase, Phase::Stable);
        groups
    }

    /// Kafka's `group.initial.rebalance.delay.ms`: an empty group's first rebalance waits for
    /// more members, each new one restarting the wait, within the rebalance timeout; then all
    /// are assigned in one generation. Later rebalances do not wait.
    #[test]
    fn an_empty_groups_first_rebalance_waits_the_initial_delay_for_more_members() {
        let limits = ClassicLimits {
            initial_rebalance_delay_ms: 3_000,
            ..LIMITS
        };
        let join = |groups: &mut ClassicGroups, id: &str, now_ms: u64| {
            let first = groups.join(&limits, &join_request("", &["range"]), id, now_ms);
            assert!(matches!(first, Err(ClassicError::MemberIdRequired { .. })));
            groups
                .join(&limits, &join_request(id, &["range"]), "unused", now_ms)
                .unwrap()
        };
        let mut groups = ClassicGroups::default();
        assert_eq!(join(&mut groups, "a", 0), Step::Wait);
        assert_eq!(groups.poll_join("g", "a", 2_999).unwrap(), Step::Wait);
        // b joins during the delay: it runs again from now (to 5,000).
        assert_eq!(join(&mut groups, "b", 2_000), Step::Wait);
        assert_eq!(groups.poll_join("g", "a", 4_999).unwrap(), Step::Wait);
        let a = done(groups.poll_join("g", "a", 5_000).unwrap());
        let b = done(groups.poll_join("g", "b", 5_000).unwrap());
        assert_eq!((a.generation, b.generation), (1, 1));
        assert_eq!(a.members.len(), 2, "one generation with both members");

        // Joiners that keep coming cannot hold it past the rebalance timeout (5 s here).
        let mut groups = ClassicGroups::default();
        assert_eq!(join(&mut groups, "a", 0), Step::Wait);
        assert_eq!(join(&mut groups, "b", 2_500), Step::Wait);
        assert_eq!(join(&mut groups, "c", 4_900), Step::Wait);
        let a = done(groups.poll_join("g", "a", 5_000).unwrap());
        assert_eq!(a.members.len(), 3);

        // Not empty any more: a later joiner rebalances without the delay.
        let mut groups = stable_with_a();
        assert_eq!(
            groups.join(&limits, &join_request("", &["range"]), "b", 10),
            Err(ClassicError::MemberIdRequired {
                member_id: "b".into()
            })
        );
        assert_eq!(
            groups
                .join(&limits, &join_request("b", &["range"]), "unused", 10)
                .unwrap(),
            Step::Wait
        );
        let a = done(
            groups
                .join(&limits, &join_request("a", &["range"]), "unused", 11)
                .unwrap(),
        );
        assert_eq!(a.members.len(), 2);
    }

    #[test]
    fn a_second_member_rebalances_the_group_and_the_leader_assigns_both() {
        let mut groups = stable_with_a();
        // b joins: the group waits for a to rejoin.
        assert_eq!(join_new(&mut groups, "b", &["range"], 10), Step::Wait);
        assert_eq!(
            groups.heartbeat("g", "a", None, 1, 11),
            Err(ClassicError::RebalanceInProgress)
        );
        // a may still commit what it read before it rejoins.
        assert_eq!(groups.check_commit("g", "a", None, 1, 11), Ok(()));
        assert_eq!(groups.poll_join("g", "b", 11), Ok(Step::Wait));
        // a rejoins: everyone is in, generation 2; a leads and sees both members' metadata.
        let a = done(
            groups
                .join(&LIMITS, &join_request("a", &["range"]), "unused", 12)
                .unwrap(),
        );
        assert_eq!((a.generation, a.leader.as_str()), (2, "a"));
        let metadata: Vec<&Bytes> = a.members.iter().map(|m| &m.metadata).collect();
        assert_eq!(metadata, [&Bytes::from("a:range"), &Bytes::from("b:range")]);
        let b = done(groups.poll_join("g", "b", 12).unwrap());
        assert_eq!((b.generation, b.members.len()), (2, 0));
        // Generation 2 is formed but not assigned yet: nobody owns anything to commit.
        assert_eq!(
            groups.check_commit("g", "b", None, 2, 12),
            Err(ClassicError::RebalanceInProgress)
        );
        // b's sync waits for the leader's; the leader's hands each member its bytes.
        assert_eq!(groups.sync(&sync_request("b", 2, &[]), 13), Ok(Step::Wait));
        let mine = done(
            groups
                .sync(&sync_request("a", 2, &[("a", "p0 p1"), ("b", "p2 p3")]), 14)
                .unwrap(),
        );
        assert_eq!(mine, Bytes::from("p0 p1"));
        assert_eq!(
            groups.poll_sync("g", "b", 2),
            Ok(Step::Done(Bytes::from("p2 p3")))
        );
        assert_eq!(groups.heartbeat("g", "b", None, 2, 15), Ok(()));
    }

    #[test]
    fn wrong_generations_and_unknown_members_are_refused_and_change_nothing() {
        let mut groups = stable_with_a();
        let before = groups.clone();
        assert_eq!(
            groups.heartbeat("g", "a", None, 7, 2),
            Err(ClassicError::IllegalGeneration)
        );
        assert_eq!(
            groups.heartbeat("g", "zombie", None, 1, 2),
            Err(ClassicError::UnknownMemberId)
        );
        assert_eq!(
            groups.sync(&sync_request("a", 0, &[("a", "x")]), 2),
            Err(ClassicError::IllegalGeneration)
        );
        assert_eq!(
            groups.sync(&sync_request("zombie", 1, &[]), 2),
            Err(ClassicError::UnknownMemberId)
        );
        assert_eq!(
            groups.join(&LIMITS, &join_request("zombie", &["range"]), "x", 2),
            Err(ClassicError::UnknownMemberId)
        );
        assert_eq!(
            groups.leave("g", "zombie", None, 2),
            Err(ClassicError::UnknownMemberId)
        );
        assert_eq!(
            groups.check_commit("g", "a", None, 0, 2),
            Err(ClassicError::IllegalGeneration)
        );
        assert_eq!(
            groups.check_commit("g", "", None, -1, 2),
            Err(ClassicError::UnknownMemberId)
        );
        assert_eq!(groups, before);
        assert_eq!(groups.check_commit("g", "a", None, 1, 2), Ok(()));
    }

    #[test]
    fn the_protocol_every_member_supports_is_chosen_and_others_are_refused() {
        let mut groups = ClassicGroups::default();
        done(join_new(&mut groups, "a", &["range", "roundrobin"], 0));
        assert_eq!(
            groups.group("g").unwrap().protocol.as_deref(),
            Some("range")
        );
        assert_eq!(join_new(&mut groups, "b", &["roundrobin"], 1), Step::Wait);
        let a = done(
            groups
                .join(
                    &LIMITS,
                    &join_request("a", &["range", "roundrobin"]),
                    "x",
                    2,
                )
                .unwrap(),
        );
        assert_eq!(a.protocol, "roundrobin");
        let before = groups.clone();
        assert_eq!(
            groups.join(&LIMITS, &join_request("", &["sticky"]), "c", 3),
            Err(ClassicError::InconsistentGroupProtocol)
        );
        let mut other_type = join_request("", &["roundrobin"]);
        other_type.protocol_type = "connect".into();
        assert_eq!(
            groups.join(&LIMITS, &other_type, "c", 3),
            Err(ClassicError::InconsistentGroupProtocol)
        );
        assert_eq!(
            groups.join(&LIMITS, &join_request("", &[]), "c", 3),
            Err(ClassicError::InconsistentGroupProtocol)
        );
        let mut heavy = join_request("", &["roundrobin"]);
        heavy.protocols[0].1 = Bytes::from(vec![0u8; MEMBER_METADATA_BYTES_MAX + 1]);
        assert!(matches!(
            groups.join(&LIMITS, &heavy, "c", 3),
            Err(ClassicError::InvalidRequest(_))
        ));
        let mut short = join_request("", &["roundrobin"]);
        short.session_timeout_ms = 10;
        assert_eq!(
            groups.join(&LIMITS, &short, "c", 3),
            Err(ClassicError::InvalidSessionTimeout)
        );
        assert_eq!(groups, before);
    }

    #[test]
    fn a_member_whose_session_ends_is_removed_and_the_group_rebalances() {
        let mut groups = ClassicGroups::default();
        done(join_new(&mut groups, "a", &["range"], 0));
        assert_eq!(join_new(&mut groups, "b", &["range"], 0), Step::Wait);
        done(
            groups
                .join(&LIMITS, &join_request("a", &["range"]), "x", 0)
                .unwrap(),
        );
        done(groups.poll_join("g", "b", 0).unwrap());
        done(
            groups
                .sync(&sync_request("a", 2, &[("a", "1"), ("b", "2")]), 0)
                .unwrap(),
        );
        // a keeps heartbeating; b goes silent past its 10 s session.
        assert_eq!(groups.heartbeat("g", "a", None, 2, 9_000), Ok(()));
        groups.tick(10_001);
        let group = groups.group("g").unwrap();
        assert!(!group.members.contains_key("b"));
        assert!(matches!(group.phase, Phase::PreparingRebalance { .. }));
        assert_eq!(
            groups.heartbeat("g", "a", None, 2, 10_002),
            Err(ClassicError::RebalanceInProgress)
        );
        let a = done(
            groups
                .join(&LIMITS, &join_request("a", &["range"]), "x", 10_003)
                .unwrap(),
        );
        assert_eq!((a.generation, a.members.len()), (3, 1));
    }

    #[test]
    fn a_rebalance_ends_at_its_deadline_without_the_members_that_did_not_rejoin() {
        let mut groups = stable_with_a();
        assert_eq!(join_new(&mut groups, "b", &["range"], 100), Step::Wait);
        // a never rejoins (it still heartbeats, so its session does not end): at the
        // rebalance deadline (a's 5 s rebalance timeout) the group goes on without it.
        groups.tick(5_099);
        assert_eq!(groups.poll_join("g", "b", 5_099), Ok(Step::Wait));
        let b = done(groups.poll_join("g", "b", 5_100).unwrap());
        assert_eq!((b.generation, b.leader.as_str()), (2, "b"));
        assert_eq!(
            groups.heartbeat("g", "a", None, 1, 5_101),
            Err(ClassicError::UnknownMemberId)
        );
    }

    #[test]
    fn leaving_rebalances_and_the_last_member_out_empties_the_group() {
        let mut groups = stable_with_a();
        assert_eq!(join_new(&mut groups, "b", &["range"], 10), Step::Wait);
        assert_eq!(groups.leave("g", "a", None, 11), Ok("a".to_string()));
        let b = done(groups.poll_join("g", "b", 11).unwrap());
        assert_eq!((b.generation, b.leader.as_str()), (2, "b"));
        assert_eq!(groups.leave("g", "b", None, 12), Ok("b".to_string()));
        assert!(
            groups.group("g").is_none(),
            "an empty classic group is forgotten"
        );
        // With no members, a simple commit (generation -1, no member id) is accepted.
        assert_eq!(groups.check_commit("g", "", None, -1, 13), Ok(()));
    }

    #[test]
    fn the_member_limit_counts_promised_ids_and_refuses_without_change() {
        let mut groups = stable_with_a();
        assert_eq!(join_new(&mut groups, "b", &["range"], 10), Step::Wait);
        // A third id is promised (the limit is 3 with it), a fourth is refused.
        assert_eq!(
            groups.join(&LIMITS, &join_request("", &["range"]), "c", 11),
            Err(ClassicError::MemberIdRequired {
                member_id: "c".into()
            })
        );
        let before = groups.clone();
        assert_eq!(
            groups.join(&LIMITS, &join_request("", &["range"]), "d", 12),
            Err(ClassicError::GroupMaxSizeReached { max: 3 })
        );
        assert_eq!(groups, before);
        // An id promised and never used lapses after its session timeout.
        groups.tick(11 + 10_001);
        assert!(!groups.group("g").unwrap().pending.contains_key("c"));
    }

    #[test]
    fn a_static_member_restarting_takes_its_place_and_fences_the_old_id() {
        let mut groups = ClassicGroups::default();
        let mut request = join_request("", &["range"]);
        request.instance_id = Some("host-1".into());
        let first = done(groups.join(&LIMITS, &request, "a1", 0).unwrap());
        assert_eq!(first.member_id, "a1");
        // The same instance restarts with no member id: it gets a new one; a1 is fenced.
        let second = done(groups.join(&LIMITS, &request, "a2", 1).unwrap());
        assert_eq!((second.member_id.as_str(), second.generation), ("a2", 2));
        assert_eq!(
            groups.heartbeat("g", "a1", Some("host-1"), 2, 2),
            Err(ClassicError::FencedInstanceId)
        );
        let mut stale = request.clone();
        stale.member_id = "a1".into();
        assert_eq!(
            groups.join(&LIMITS, &stale, "x", 3),
            Err(ClassicError::FencedInstanceId)
        );
    }

    #[test]
    fn consumer_protocol_bytes_decode_to_partitions_and_topics() {
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as Assigned;
        use kafka_protocol::messages::{
            ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
        };
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let mut bytes = bytes::BytesMut::new();
        bytes::BufMut::put_i16(&mut bytes, 1);
        ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![Assigned::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![0, 2, -1])])
            .encode(&mut bytes, 1)
            .unwrap();
        let assignment = consumer_assignment(&bytes.freeze());
        let partitions: Vec<u32> = assignment.iter().map(|p| p.partition).collect();
        assert_eq!(partitions, [0, 2]);
        let mut bytes = bytes::BytesMut::new();
        bytes::BufMut::put_i16(&mut bytes, 0);
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")])
            .encode(&mut bytes, 0)
            .unwrap();
        assert_eq!(consumer_subscription(&bytes.freeze()), ["t"]);
        assert!(consumer_assignment(&Bytes::from_static(b"\x00")).is_empty());
        assert!(consumer_subscription(&Bytes::from_static(b"\x00\x00\xff\xff\xff")).is_empty());
    }
}
