//! Consumer groups over Kafka: `FindCoordinator` (0-4), the classic group protocol
//! (`JoinGroup` 0-9, `SyncGroup` 0-5, `Heartbeat` 0-4, `LeaveGroup` 0-5), `OffsetCommit`
//! (2-9), `OffsetFetch` (1-9), `ListGroups` (0-5) and `DescribeGroups` (0-5), on the same
//! coordinators and `__offsets` as Cairn's own groups (`crate::server::group_requests`).
//!
//! Classic membership is kept by the coordinator in memory (`crate::group::classic`);
//! offsets are `__offsets` records, durable and shared with Cairn-protocol groups. A
//! JoinGroup or SyncGroup that must wait for other members is parked here, not in the
//! coordinator: it takes a place among `parked_requests_max`, waits for the classic groups
//! to change (or a short poll period) without holding the coordinator, and asks again, up to
//! its member's rebalance timeout.

use super::errors;
use super::ids::{broker_id, host_port};
use super::{Call, Client};
use crate::broker::Broker;
use crate::group::classic::{ClassicError, JoinReply, JoinRequest, Step, SyncRequest};
use crate::group::state::Coordinator;
use crate::groups::NodeCoordinator;
use crate::server::group_requests::{coordinated, coordinator_for, offsets_partitions};
use bytes::{BufMut, Bytes, BytesMut};
use cairn_protocol::group::MemberEpoch;
use cairn_protocol::group::{
    coordinator_partition, CommittedPartitionOffset, GroupState, OffsetCommitPartition,
    OffsetCommitRequest as CairnCommit, OffsetFetchRequest as CairnFetch, TopicPartitions,
    COMMIT_METADATA_BYTES_MAX, OFFSETS_TOPIC,
};
use cairn_protocol::{ApiError, Offset};
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as KafkaCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ResponseKind, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// FindCoordinator's key type for a consumer group; 1 (transactions) is not served.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// A parked request looks again at least this often, even if nothing told it to.
const PARK_POLL_MS: u64 = 1_000;
/// Beyond its member's rebalance timeout, how long a parked request waits: the rebalance
/// completes at its deadline (when the timer runs), so the answer comes just after it.
const PARK_SLACK_MS: u64 = 2_000;

/// The Kafka error for a Cairn error met by a group request: the codes group clients retry
/// on (they find the coordinator again on NOT_COORDINATOR and COORDINATOR_NOT_AVAILABLE).
pub fn group_error(error: &ApiError) -> ResponseError {
    match error {
        ApiError::NotLeader { .. }
        | ApiError::StaleEpoch { .. }
        | ApiError::ShuttingDown
        | ApiError::NotCoordinator { .. } => ResponseError::NotCoordinator,
        ApiError::NotReady { .. }
        | ApiError::NotEnoughReplicas { .. }
        | ApiError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        ApiError::UnknownMemberId { .. } => ResponseError::UnknownMemberId,
        ApiError::TooManyGroups { .. } => ResponseError::GroupMaxSizeReached,
        ApiError::UnsupportedAssignor { .. } => ResponseError::UnsupportedAssignor,
        ApiError::FencedInstanceId { .. } => ResponseError::FencedInstanceId,
        other => errors::kafka_error(other),
    }
}

/// The Kafka error for a classic group's refusal.
pub fn classic_error(error: &ClassicError) -> ResponseError {
    match error {
        ClassicError::UnknownMemberId => ResponseError::UnknownMemberId,
        ClassicError::IllegalGeneration => ResponseError::IllegalGeneration,
        ClassicError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        ClassicError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        ClassicError::MemberIdRequired { .. } => ResponseError::MemberIdRequired,
        ClassicError::FencedInstanceId => ResponseError::FencedInstanceId,
        ClassicError::GroupMaxSizeReached { .. } => ResponseError::GroupMaxSizeReached,
        ClassicError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        ClassicError::InvalidRequest(_) => ResponseError::InvalidRequest,
        ClassicError::Refused(error) => group_error(error),
    }
}

/// The error code of an answer: 0 for none.
fn code_of(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |error| error.code())
}

/// A member id no coordinator has handed out: the client's id first, as Kafka's
/// `clientId-UUID`, then this node's id, the wall clock at start and a counter for
/// uniqueness. The prefix matters: the range and round-robin assignors order members by id,
/// so consumers named `c0`, `c1` get the partitions in that order, as on Kafka (librdkafka's
/// 0132 checks it).
fn fresh_member_id<S: LogStore>(broker: &Broker<S>, client_id: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(crate::partition::wall_clock_ms);
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = match truncated(client_id) {
        "" => "member",
        prefix => prefix,
    };
    format!("{prefix}-{}-{start:x}-{sequence}", broker.node_id().0)
}

/// Bytes of a client id kept for a member (and put before its member id): member ids are at
/// most `MEMBER_ID_BYTES_MAX` (255) bytes, and the rest of the id takes up to ~45.
const CLIENT_ID_KEPT_BYTES: usize = 200;

/// `client_id` cut to at most `CLIENT_ID_KEPT_BYTES`, on a character boundary.
fn truncated(client_id: &str) -> &str {
    let mut end = client_id.len().min(CLIENT_ID_KEPT_BYTES);
    while !client_id.is_char_boundary(end) {
        end -= 1;
    }
    &client_id[..end]
}

// ---------------------------------------------------------------- FindCoordinator

pub async fn find_coordinator<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: FindCoordinatorRequest,
) -> ResponseKind {
    let keys: Vec<StrBytes> = if call.version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    // `__offsets` is looked up (and created, waiting a bounded time) once per request, not
    // once per key: a batch of keys on a cluster without it costs one wait, not thousands.
    let mut partitions = None;
    for key in keys {
        let answer = locate(broker, request.key_type, &key, &mut partitions).await;
        let mut coordinator = KafkaCoordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::from_static_str(""))
            .with_port(-1);
        match answer {
            Ok((node, host, port)) => {
                coordinator.node_id = node;
                coordinator.host = StrBytes::from_string(host);
                coordinator.port = port;
            }
            Err((error, message)) => {
                coordinator.error_code = error.code();
                coordinator.error_message = Some(StrBytes::from_string(message));
            }
        }
        coordinators.push(coordinator);
    }
    let mut response = FindCoordinatorResponse::default();
    if call.version >= 4 {
        response.coordinators = coordinators;
    } else if let Some(first) = coordinators.into_iter().next() {
        response.error_code = first.error_code;
        response.node_id = first.node_id;
        response.host = first.host;
        response.port = first.port;
        if call.version >= 1 {
            response.error_message = first.error_message;
        }
    }
    ResponseKind::FindCoordinator(response)
}

/// The Kafka address of the leader of the group's `__offsets` partition.
async fn locate<S: LogStore>(
    broker: &Broker<S>,
    key_type: i8,
    group_id: &str,
    offsets_partitions_found: &mut Option<Result<u32, ApiError>>,
) -> Result<(BrokerId, String, i32), (ResponseError, String)> {
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return Err((
                ResponseError::InvalidRequest,
                "transactions are not supported".to_string(),
            ))
        }
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("coordinator key type {other} is not served"),
            ))
        }
    }
    let refused = |error: ApiError| (group_error(&error), error.to_string());
    broker.check_ready().map_err(refused)?;
    cairn_protocol::group::validate_group_id(group_id)
        .map_err(|error| (ResponseError::InvalidGroupId, error.to_string()))?;
    if offsets_partitions_found.is_none() {
        *offsets_partitions_found = Some(offsets_partitions(broker, group_id).await);
    }
    let partitions = offsets_partitions_found
        .clone()
        .expect("looked up just above")
        .map_err(refused)?;
    let partition = coordinator_partition(group_id, partitions);
    let not_available = || {
        (
            ResponseError::CoordinatorNotAvailable,
            format!("{OFFSETS_TOPIC} partition {partition} has no leader with a Kafka address yet"),
        )
    };
    let leader = broker
        .partition_leader(OFFSETS_TOPIC, partition)
        .ok_or_else(not_available)?;
    let address = broker
        .kafka_brokers()
        .into_iter()
        .find(|(node, _)| *node == leader)
        .map(|(_, address)| address)
        .ok_or_else(not_available)?;
    let (host, port) = host_port(&address).ok_or_else(not_available)?;
    Ok((broker_id(leader), host, port))
}

// ---------------------------------------------------------------- waiting

/// Asks `poll` again whenever the classic groups change (or every [`PARK_POLL_MS`]) until
/// it answers or `wait` passes (`Ok(None)`), without holding the coordinator in between.
async fn park<S: LogStore, T>(
    broker: &Broker<S>,
    group_id: &str,
    coordinator: &Arc<NodeCoordinator<S>>,
    wait: Duration,
    mut poll: impl FnMut(&mut Coordinator, u64) -> Result<Step<T>, ClassicError>,
) -> Result<Option<T>, ClassicError> {
    let Some(_place) = coordinator.park() else {
        // Too many requests wait already: this member rejoins later.
        return Err(ClassicError::RebalanceInProgress);
    };
    let deadline = Instant::now() + wait;
    let mut changes = coordinator.classic_changes();
    loop {
        changes.borrow_and_update();
        // Still this node's coordinator for the group? (It may have been deposed.)
        let (_, current) = coordinator_for(broker, group_id)
            .await
            .map_err(ClassicError::Refused)?;
        if !Arc::ptr_eq(&current, coordinator) {
            return Err(ClassicError::Refused(ApiError::NotCoordinator {
                coordinator_hint: None,
            }));
        }
        let now_ms = broker.now_ms();
        let step = coordinator
            .run(now_ms, |c| Ok((poll(c, now_ms), Vec::new())))
            .await
            .map_err(ClassicError::Refused)??;
        if let Step::Done(answer) = step {
            return Ok(Some(answer));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let nap = (deadline - now).min(Duration::from_millis(PARK_POLL_MS));
        let _ = tokio::time::timeout(nap, changes.changed()).await;
    }
}

// ---------------------------------------------------------------- JoinGroup

pub async fn join_group<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: JoinGroupRequest,
    client: &Client<'_>,
) -> ResponseKind {
    let answer = join(broker, call, request, client).await;
    let mut response = JoinGroupResponse::default()
        .with_generation_id(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_leader(StrBytes::from_static_str(""));
    match answer {
        Ok(reply) => {
            response.generation_id = reply.generation;
            response.member_id = StrBytes::from_string(reply.member_id);
            response.leader = StrBytes::from_string(reply.leader);
            response.protocol_name = Some(StrBytes::from_string(reply.protocol));
            if call.version >= 7 {
                response.protocol_type = Some(StrBytes::from_string(reply.protocol_type));
            }
            response.members = reply
                .members
                .into_iter()
                .map(|member| {
                    let mut joined = JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(member.member_id))
                        .with_metadata(member.metadata);
                    if call.version >= 5 {
                        joined.group_instance_id = member.instance_id.map(StrBytes::from_string);
                    }
                    joined
                })
                .collect();
        }
        Err(error) => {
            response.error_code = classic_error(&error).code();
            if let ClassicError::MemberIdRequired { member_id } = error {
                response.member_id = StrBytes::from_string(member_id);
            }
            if call.version < 7 {
                // Versions before 7 have a non-null protocol name.
                response.protocol_name = Some(StrBytes::from_static_str(""));
            }
        }
    }
    ResponseKind::JoinGroup(response)
}

async fn join<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: JoinGroupRequest,
    client: &Client<'_>,
) -> Result<JoinReply, ClassicError> {
    let group_id = request.group_id.0.to_string();
    let join = JoinRequest {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|id| id.to_string()),
        client_id: truncated(client.id).to_owned(),
        // As Kafka shows it (`InetAddress.toString()` of an address without a host name).
        client_host: format!("/{}", client.address.ip()),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if call.version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata))
            .collect(),
        require_known_member_id: call.version >= 4,
    };
    let (_, coordinator) = coordinator_for(broker, &group_id)
        .await
        .map_err(ClassicError::Refused)?;
    let fresh = fresh_member_id(broker, client.id);
    let now_ms = broker.now_ms();
    let step = coordinator
        .run(now_ms, |c| {
            Ok((c.classic_join(&join, &fresh, now_ms), Vec::new()))
        })
        .await
        .map_err(ClassicError::Refused)??;
    let member_id = if join.member_id.is_empty() {
        fresh
    } else {
        join.member_id.clone()
    };
    match step {
        Step::Done(reply) => Ok(reply),
        Step::Wait => {
            let wait_ms = u64::try_from(join.rebalance_timeout_ms.max(join.session_timeout_ms))
                .unwrap_or(0)
                .min(u64::from(
                    broker.config.groups.group_config().rebalance_timeout_ms_max,
                ))
                + PARK_SLACK_MS;
            let parked = park(
                broker,
                &group_id,
                &coordinator,
                Duration::from_millis(wait_ms),
                |c, now_ms| c.classic_mut().poll_join(&group_id, &member_id, now_ms),
            )
            .await?;
            parked.ok_or(ClassicError::RebalanceInProgress)
        }
    }
}

// ---------------------------------------------------------------- SyncGroup

pub async fn sync_group<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: SyncGroupRequest,
) -> ResponseKind {
    let answer = sync(broker, call, request).await;
    let mut response = SyncGroupResponse::default();
    match answer {
        Ok((assignment, protocol_type, protocol)) => {
            response.assignment = assignment;
            if call.version >= 5 {
                response.protocol_type = protocol_type.map(StrBytes::from_string);
                response.protocol_name = protocol.map(StrBytes::from_string);
            }
        }
        Err(error) => response.error_code = classic_error(&error).code(),
    }
    ResponseKind::SyncGroup(response)
}

type Synced = (Bytes, Option<String>, Option<String>);

async fn sync<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: SyncGroupRequest,
) -> Result<Synced, ClassicError> {
    let group_id = request.group_id.0.to_string();
    let sync = SyncRequest {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|id| id.to_string()),
        generation: request.generation_id,
        protocol_type: (call.version >= 5)
            .then(|| request.protocol_type.map(|t| t.to_string()))
            .flatten(),
        protocol: (call.version >= 5)
            .then(|| request.protocol_name.map(|p| p.to_string()))
            .flatten(),
        assignments: request
            .assignments
            .into_iter()
            .map(|assignment| (assignment.member_id.to_string(), assignment.assignment))
            .collect(),
    };
    let (_, coordinator) = coordinator_for(broker, &group_id)
        .await
        .map_err(ClassicError::Refused)?;
    let now_ms = broker.now_ms();
    let protocols = |c: &Coordinator| {
        c.classic()
            .group(&group_id)
            .map(|g| (Some(g.protocol_type.clone()), g.protocol.clone()))
            .unwrap_or_default()
    };
    let (step, wait_ms, (protocol_type, protocol)) = coordinator
        .run(now_ms, |c| {
            let step = c.classic_mut().sync(&sync, now_ms);
            let wait_ms = c
                .classic()
                .group(&group_id)
                .and_then(|g| g.members.get(&sync.member_id))
                .map_or(0, |m| u64::from(m.rebalance_timeout_ms));
            Ok(((step, wait_ms, protocols(c)), Vec::new()))
        })
        .await
        .map_err(ClassicError::Refused)?;
    let assignment = match step? {
        Step::Done(assignment) => assignment,
        Step::Wait => park(
            broker,
            &group_id,
            &coordinator,
            Duration::from_millis(wait_ms + PARK_SLACK_MS),
            |c, _| {
                c.classic()
                    .poll_sync(&group_id, &sync.member_id, sync.generation)
            },
        )
        .await?
        .ok_or(ClassicError::RebalanceInProgress)?,
    };
    Ok((assignment, protocol_type, protocol))
}

// ---------------------------------------------------------------- Heartbeat, LeaveGroup

pub async fn heartbeat<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: HeartbeatRequest,
) -> ResponseKind {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.map(|id| id.to_string());
    let answer = coordinated(broker, &group_id, |c, now_ms| {
        let beat = c.classic_mut().heartbeat(
            &group_id,
            &member_id,
            instance_id.as_deref(),
            request.generation_id,
            now_ms,
        );
        Ok((beat, Vec::new()))
    })
    .await;
    let error = match answer {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(classic_error(&error)),
        Err(error) => Some(group_error(&error)),
    };
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code_of(error)))
}

pub async fn leave_group<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: LeaveGroupRequest,
) -> ResponseKind {
    let group_id = request.group_id.0.to_string();
    let leaving: Vec<(String, Option<String>)> = if call.version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|id| id.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let answer = coordinated(broker, &group_id, |c, now_ms| {
        let results: Vec<Result<String, ClassicError>> = leaving
            .iter()
            .map(|(member_id, instance_id)| {
                c.classic_mut()
                    .leave(&group_id, member_id, instance_id.as_deref(), now_ms)
            })
            .collect();
        Ok((results, Vec::new()))
    })
    .await;
    let mut response = LeaveGroupResponse::default();
    match answer {
        Err(error) => response.error_code = group_error(&error).code(),
        Ok(results) => {
            if call.version >= 3 {
                response.members = leaving
                    .into_iter()
                    .zip(results)
                    .map(|((member_id, instance_id), result)| {
                        let mut member = MemberResponse::default()
                            .with_member_id(StrBytes::from_string(member_id))
                            .with_group_instance_id(instance_id.map(StrBytes::from_string));
                        match result {
                            Ok(left) => member.member_id = StrBytes::from_string(left),
                            Err(error) => member.error_code = classic_error(&error).code(),
                        }
                        member
                    })
                    .collect();
            } else if let Some(Err(error)) = results.into_iter().next() {
                response.error_code = classic_error(&error).code();
            }
        }
    }
    ResponseKind::LeaveGroup(response)
}

// ---------------------------------------------------------------- OffsetCommit

pub async fn offset_commit<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: OffsetCommitRequest,
) -> ResponseKind {
    let group_id = request.group_id.0.to_string();
    // Partitions refused one by one before the coordinator sees the rest: (topic, index)
    // -> error.
    let mut refused: BTreeMap<(usize, usize), ResponseError> = BTreeMap::new();
    let mut offsets = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        for (p, partition) in topic.partitions.iter().enumerate() {
            let metadata = partition.committed_metadata.as_ref().map(|m| m.to_string());
            if metadata
                .as_ref()
                .is_some_and(|m| m.len() > COMMIT_METADATA_BYTES_MAX)
            {
                refused.insert((t, p), ResponseError::OffsetMetadataTooLarge);
                continue;
            }
            let (Ok(index), Ok(offset)) = (
                u32::try_from(partition.partition_index),
                u64::try_from(partition.committed_offset),
            ) else {
                refused.insert((t, p), ResponseError::UnknownTopicOrPartition);
                continue;
            };
            offsets.push(OffsetCommitPartition {
                topic: topic.name.0.to_string(),
                partition: index,
                offset: Offset(offset),
                metadata,
            });
        }
    }
    let commit = CairnCommit {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        member_epoch: MemberEpoch(request.generation_id_or_member_epoch),
        offsets,
    };
    let instance_id = if call.version >= 7 {
        request.group_instance_id.as_ref().map(|id| id.to_string())
    } else {
        None
    };
    let answer = if commit.offsets.is_empty() && !refused.is_empty() {
        Ok(Ok(Vec::new()))
    } else {
        let topics = broker.group_topic_counts();
        coordinated(broker, &group_id, |c, now_ms| {
            match c.kafka_commit(&commit, instance_id.as_deref(), &topics, now_ms) {
                Ok((reply, records)) => Ok((Ok(reply.partitions), records)),
                Err(error) => Ok((Err(error), Vec::new())),
            }
        })
        .await
    };
    // One error for every partition, or each partition's own.
    #[allow(clippy::type_complexity)]
    let (whole, results): (
        Option<ResponseError>,
        BTreeMap<(String, u32), Option<ResponseError>>,
    ) = match answer {
        Err(error) => (Some(group_error(&error)), BTreeMap::new()),
        Ok(Err(error)) => (Some(classic_error(&error)), BTreeMap::new()),
        Ok(Ok(partitions)) => (
            None,
            partitions
                .into_iter()
                .map(|result| {
                    let error = result.result.as_ref().err().map(group_error);
                    ((result.topic, result.partition), error)
                })
                .collect(),
        ),
    };
    let topics = request
        .topics
        .into_iter()
        .enumerate()
        .map(|(t, topic)| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .iter()
                .enumerate()
                .map(|(p, partition)| {
                    let error = match refused.get(&(t, p)).copied().or(whole) {
                        Some(error) => Some(error),
                        None => u32::try_from(partition.partition_index)
                            .ok()
                            .and_then(|index| results.get(&(name.clone(), index)).copied())
                            .unwrap_or(Some(ResponseError::UnknownServerError)),
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code_of(error))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
}

// ---------------------------------------------------------------- OffsetFetch

/// One group's asked partitions: `None` for all it committed.
type Asked = Option<Vec<(TopicName, Vec<i32>)>>;

pub async fn offset_fetch<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: OffsetFetchRequest,
) -> ResponseKind {
    if call.version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let asked: Asked = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            // Version 9: a KIP-848 member's fetch is fenced by its member epoch.
            let member = group
                .member_id
                .as_ref()
                .filter(|id| !id.is_empty())
                .map(|id| (id.to_string(), MemberEpoch(group.member_epoch)));
            let (error, topics) = fetch_group(broker, &group.group_id.0, asked, member).await;
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id)
                    .with_error_code(code_of(error))
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(name, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(name)
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(index, offset, metadata, error)| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(index)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(-1)
                                                    .with_metadata(metadata)
                                                    .with_error_code(code_of(error))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
            );
        }
        return ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_groups(groups));
    }
    let asked: Asked = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    let (error, topics) = fetch_group(broker, &request.group_id.0, asked, None).await;
    let mut response = OffsetFetchResponse::default();
    if call.version >= 2 {
        response.error_code = code_of(error);
    }
    response.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, offset, metadata, partition_error)| {
                            // Version 1 has no group error: each partition carries it.
                            let partition_error = if call.version < 2 && error.is_some() {
                                error
                            } else {
                                partition_error
                            };
                            let mut answer = OffsetFetchResponsePartition::default()
                                .with_partition_index(index)
                                .with_committed_offset(offset)
                                .with_metadata(metadata)
                                .with_error_code(code_of(partition_error));
                            if call.version >= 5 {
                                answer.committed_leader_epoch = -1;
                            }
                            answer
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::OffsetFetch(response)
}

type FetchedPartition = (i32, i64, Option<StrBytes>, Option<ResponseError>);

/// A group's committed offsets, Kafka-shaped: (group error, topics with their partitions).
async fn fetch_group<S: LogStore>(
    broker: &Broker<S>,
    group_id: &str,
    asked: Asked,
    member: Option<(String, MemberEpoch)>,
) -> (
    Option<ResponseError>,
    Vec<(TopicName, Vec<FetchedPartition>)>,
) {
    let partitions = asked.as_ref().map(|asked| {
        asked
            .iter()
            .map(|(name, indexes)| TopicPartitions {
                topic: name.0.to_string(),
                partitions: indexes
                    .iter()
                    .filter_map(|index| u32::try_from(*index).ok())
                    .collect(),
            })
            .collect()
    });
    let mut fetch = CairnFetch {
        group_id: group_id.to_string(),
        member,
        partitions,
    };
    let fetched = coordinated(broker, group_id, |c, _| {
        // A classic member names itself too; its generation is checked on commit only.
        if c.classic().is_active(group_id) {
            fetch.member = None;
        }
        Ok((c.fetch_offsets(&fetch)?, Vec::new()))
    })
    .await;
    let committed: BTreeMap<(String, u32), CommittedPartitionOffset> = match fetched {
        Ok(reply) => reply
            .partitions
            .into_iter()
            .map(|p| ((p.topic.clone(), p.partition), p))
            .collect(),
        Err(error) => {
            let error = Some(group_error(&error));
            let topics = asked
                .unwrap_or_default()
                .into_iter()
                .map(|(name, indexes)| {
                    let partitions = indexes
                        .into_iter()
                        .map(|index| (index, -1, Some(StrBytes::default()), None))
                        .collect();
                    (name, partitions)
                })
                .collect();
            return (error, topics);
        }
    };
    let answer = |committed: Option<&CommittedPartitionOffset>| match committed
        .and_then(|c| c.committed.as_ref())
    {
        Some(offset) => (
            i64::try_from(offset.offset.0).unwrap_or(i64::MAX),
            Some(StrBytes::from_string(
                offset.metadata.clone().unwrap_or_default(),
            )),
        ),
        None => (-1, Some(StrBytes::default())),
    };
    let topics = match asked {
        Some(asked) => asked
            .into_iter()
            .map(|(name, indexes)| {
                let partitions = indexes
                    .into_iter()
                    .map(|index| match u32::try_from(index) {
                        Ok(partition) => {
                            let (offset, metadata) =
                                answer(committed.get(&(name.0.to_string(), partition)));
                            (index, offset, metadata, None)
                        }
                        Err(_) => (
                            index,
                            -1,
                            Some(StrBytes::default()),
                            Some(ResponseError::UnknownTopicOrPartition),
                        ),
                    })
                    .collect();
                (name, partitions)
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<FetchedPartition>> = BTreeMap::new();
            for ((topic, partition), found) in &committed {
                let (offset, metadata) = answer(Some(found));
                by_topic.entry(topic.clone()).or_default().push((
                    i32::try_from(*partition).unwrap_or(i32::MAX),
                    offset,
                    metadata,
                    None,
                ));
            }
            by_topic
                .into_iter()
                .map(|(topic, partitions)| (TopicName(StrBytes::from_string(topic)), partitions))
                .collect()
        }
    };
    (None, topics)
}

// ---------------------------------------------------------------- ListGroups, DescribeGroups

pub async fn list_groups<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: ListGroupsRequest,
) -> ResponseKind {
    let mut listed: BTreeMap<String, ListedGroup> = BTreeMap::new();
    let now_ms = broker.now_ms();
    let error = broker
        .check_ready()
        .err()
        .map(|refusal| group_error(&refusal));
    for coordinator in broker.groups().all() {
        let groups = coordinator
            .run(now_ms, |c| {
                let mut groups: Vec<(String, String, &'static str)> = Vec::new();
                for group in c.groups().values() {
                    if c.classic().group(&group.group_id).is_none() {
                        groups.push((
                            group.group_id.clone(),
                            cairn_state_name(group.state()).to_string(),
                            "consumer",
                        ));
                    }
                }
                for group in c.classic().groups() {
                    groups.push((
                        group.group_id.clone(),
                        group.phase.kafka_name().to_string(),
                        "classic",
                    ));
                }
                Ok((groups, Vec::new()))
            })
            .await;
        let Ok(groups) = groups else {
            continue;
        };
        for (group_id, state, kind) in groups {
            let wanted_state = request.states_filter.is_empty()
                || request
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&state));
            let wanted_type = call.version < 5
                || request.types_filter.is_empty()
                || request
                    .types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(kind));
            if !(wanted_state && wanted_type) {
                continue;
            }
            let mut group = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
                .with_protocol_type(StrBytes::from_static_str("consumer"));
            if call.version >= 4 {
                group.group_state = StrBytes::from_string(state);
            }
            if call.version >= 5 {
                group.group_type = StrBytes::from_static_str(kind);
            }
            listed.insert(group_id, group);
        }
    }
    ResponseKind::ListGroups(
        ListGroupsResponse::default()
            .with_error_code(code_of(error))
            .with_groups(listed.into_values().collect()),
    )
}

/// A Cairn group's state in the classic names Kafka tools show.
fn cairn_state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Empty => "Empty",
        GroupState::Stable => "Stable",
        GroupState::Reconciling => "PreparingRebalance",
        GroupState::Dead => "Dead",
    }
}

pub async fn describe_groups<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: DescribeGroupsRequest,
) -> ResponseKind {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let id = group_id.0.to_string();
        let described = coordinated(broker, &id, |c, _| Ok((describe(c, &id), Vec::new()))).await;
        let group = match described {
            Ok(group) => group,
            Err(error) => DescribedGroup::default()
                .with_error_code(group_error(&error).code())
                .with_group_state(StrBytes::from_static_str("Dead")),
        };
        let mut group = group.with_group_id(group_id);
        if call.version < 4 {
            for member in &mut group.members {
                member.group_instance_id = None;
            }
        }
        if call.version >= 3 {
            group.authorized_operations = i32::MIN;
        }
        groups.push(group);
    }
    ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
}

/// DeleteGroups: each named group's committed offsets and state are removed, as
/// `cairn group delete` does, when this node coordinates it and it has no members (classic
/// members joined over Kafka count too); otherwise that group's entry carries the refusal
/// (NOT_COORDINATOR, NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND, ...) and the others still go ahead.
pub async fn delete_groups<S: LogStore>(
    broker: &Broker<S>,
    request: DeleteGroupsRequest,
) -> ResponseKind {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let id = group_id.0.to_string();
        let deleted = coordinated(broker, &id, |c, _| {
            if let Some(group) = c.classic().group(&id).filter(|group| !group.is_empty()) {
                return Err(ApiError::GroupNotEmpty {
                    group_id: id.clone(),
                    members: u32::try_from(group.size()).unwrap_or(u32::MAX),
                });
            }
            Ok(((), c.delete_group(&id)?))
        })
        .await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code_of(deleted.err().map(|error| group_error(&error)))),
        );
    }
    ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(results))
}

/// A group as DescribeGroups shows it: a classic group with its members' metadata and
/// assignment bytes; a Cairn group with its members' assignments encoded as the "consumer"
/// protocol does; an unknown group as "Dead" (Kafka's answer before version 6).
fn describe(c: &Coordinator, group_id: &str) -> DescribedGroup {
    if let Some(group) = c.classic().group(group_id) {
        let protocol = group.protocol.clone().unwrap_or_default();
        return DescribedGroup::default()
            .with_group_state(StrBytes::from_static_str(group.phase.kafka_name()))
            .with_protocol_type(StrBytes::from_string(group.protocol_type.clone()))
            .with_protocol_data(StrBytes::from_string(protocol.clone()))
            .with_members(
                group
                    .members
                    .values()
                    .map(|member| {
                        let metadata = member
                            .protocols
                            .iter()
                            .find(|(name, _)| *name == protocol)
                            .map(|(_, metadata)| metadata.clone())
                            .unwrap_or_default();
                        DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(member.member_id.clone()))
                            .with_group_instance_id(
                                member.instance_id.clone().map(StrBytes::from_string),
                            )
                            .with_client_id(StrBytes::from_string(member.client_id.clone()))
                            .with_client_host(StrBytes::from_string(member.client_host.clone()))
                            .with_member_metadata(metadata)
                            .with_member_assignment(member.assignment.clone())
                    })
                    .collect(),
            );
    }
    let Some(group) = c.group(group_id) else {
        return DescribedGroup::default().with_group_state(StrBytes::from_static_str("Dead"));
    };
    DescribedGroup::default()
        .with_group_state(StrBytes::from_static_str(cairn_state_name(group.state())))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocol_data(StrBytes::from_string(group.assignor.name().to_string()))
        .with_members(
            group
                .members
                .values()
                .map(|member| {
                    DescribedGroupMember::default()
                        .with_member_id(StrBytes::from_string(member.member_id.clone()))
                        .with_group_instance_id(
                            member.instance_id.clone().map(StrBytes::from_string),
                        )
                        .with_member_assignment(consumer_assignment_bytes(&member.assigned))
                })
                .collect(),
        )
}

/// Partitions encoded as a version 0 "consumer" protocol assignment.
fn consumer_assignment_bytes(assignment: &crate::group::assign::Assignment) -> Bytes {
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as Assigned;
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for partition in assignment {
        by_topic
            .entry(&partition.topic)
            .or_default()
            .push(i32::try_from(partition.partition).unwrap_or(i32::MAX));
    }
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                Assigned::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    let mut bytes = BytesMut::new();
    bytes.put_i16(0);
    match message.encode(&mut bytes, 0) {
        Ok(()) => bytes.freeze(),
        Err(_) => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_client_ids_fit_a_member_id_and_are_cut_on_a_character_boundary() {
        assert_eq!(truncated(""), "");
        assert_eq!(truncated("c0"), "c0");
        let long = "é".repeat(CLIENT_ID_KEPT_BYTES);
        let kept = truncated(&long);
        assert!(kept.len() <= CLIENT_ID_KEPT_BYTES && kept.len() >= CLIENT_ID_KEPT_BYTES - 1);
        assert!(kept.chars().all(|c| c == 'é'));
        // The longest id handed out still fits MEMBER_ID_BYTES_MAX with u64-sized counters.
        let longest = format!("{}-{}-{:x}-{}", kept, u32::MAX, i64::MAX, u64::MAX);
        assert!(longest.len() <= cairn_protocol::group::MEMBER_ID_BYTES_MAX);
    }
}
