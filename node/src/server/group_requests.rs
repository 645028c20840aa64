//! Consumer-group requests (`ConsumerGroupHeartbeat`, `OffsetCommit`, ...): the wire contract
//! is in `cairn_protocol::group`, the coordinator's state machine in `crate::group`, and the
//! coordinators this node runs in `crate::groups`.
//!
//! Routing: group `g` lives on `__offsets` partition `coordinator_partition(g, N)`.
//! `FindCoordinator` answers from any node with that partition's leader. Every other request
//! is served only by the node whose coordinator for that partition is loaded; elsewhere it is
//! refused with `NotCoordinator { coordinator_hint }`, or `CoordinatorLoadInProgress` on the
//! leader while its epoch marker is not committed yet. `ListGroups` lists the groups of the
//! coordinators of the answering node (clients ask every node and merge).
//!
//! The first group request on a cluster without `__offsets` creates it (see `crate::groups`)
//! and is answered `CoordinatorNotAvailable` if it is not there yet, which clients retry.

use crate::broker::Broker;
use crate::group::assign::TopicPartition;
use crate::group::runtime::Step;
use crate::group::state::{Coordinator, PartitionBounds};
use crate::groups::NodeCoordinator;
use cairn_protocol::group::{
    coordinator_partition, validate_group_id, DeleteGroupResponse, FindCoordinatorResponse,
    ListGroupsResponse, OFFSETS_TOPIC,
};
use cairn_protocol::{ApiError, Request, Response};
use cairn_storage::LogStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a request waits for `__offsets` to be created before `CoordinatorNotAvailable`.
const OFFSETS_CREATE_WAIT_MS: u64 = 5_000;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: Request,
) -> Result<Response, ApiError> {
    broker.check_ready()?;
    match request {
        Request::FindCoordinator(request) => {
            validate_group_id(&request.group_id)?;
            let partitions = offsets_partitions(broker, &request.group_id).await?;
            let partition = coordinator_partition(&request.group_id, partitions);
            let coordinator = broker.partition_leader(OFFSETS_TOPIC, partition);
            Ok(Response::FindCoordinator(FindCoordinatorResponse {
                partition,
                coordinator,
                address: coordinator.and_then(|node| broker.broker_address(node)),
            }))
        }
        Request::ConsumerGroupHeartbeat(request) => {
            let topics = broker.group_topic_counts();
            let reply = coordinated(broker, &request.group_id, |coordinator, now_ms| {
                coordinator.heartbeat(&request, &topics, now_ms)
            })
            .await?;
            Ok(Response::ConsumerGroupHeartbeat(reply))
        }
        Request::OffsetCommit(request) => {
            let topics = broker.group_topic_counts();
            let reply = coordinated(broker, &request.group_id, |coordinator, _| {
                coordinator.commit(&request, &topics)
            })
            .await?;
            Ok(Response::OffsetCommit(reply))
        }
        Request::OffsetFetch(request) => {
            let reply = coordinated(broker, &request.group_id, |coordinator, _| {
                Ok((coordinator.fetch_offsets(&request)?, Vec::new()))
            })
            .await?;
            Ok(Response::OffsetFetch(reply))
        }
        Request::DescribeGroup(request) => {
            let topics = broker.group_topic_counts();
            let bounds = all_bounds(broker, &topics);
            let reply = coordinated(broker, &request.group_id, |coordinator, _| {
                let described = coordinator.describe(&request.group_id, &topics, |partition| {
                    bounds.get(partition).copied()
                })?;
                Ok((described, Vec::new()))
            })
            .await?;
            Ok(Response::DescribeGroup(reply))
        }
        Request::ResetGroupOffsets(request) => {
            let topics = broker.group_topic_counts();
            let bounds = all_bounds(broker, &topics);
            let reply = coordinated(broker, &request.group_id, |coordinator, _| {
                coordinator.reset_offsets(&request, &topics, |partition| {
                    bounds.get(partition).copied()
                })
            })
            .await?;
            Ok(Response::ResetGroupOffsets(reply))
        }
        Request::DeleteGroup(request) => {
            coordinated(broker, &request.group_id, |coordinator, _| {
                Ok(((), coordinator.delete_group(&request.group_id)?))
            })
            .await?;
            Ok(Response::DeleteGroup(DeleteGroupResponse {
                group_id: request.group_id,
            }))
        }
        Request::ListGroups(_) => {
            let mut groups = Vec::new();
            let now_ms = broker.now_ms();
            for coordinator in broker.groups().all() {
                match coordinator
                    .run(now_ms, |c| Ok((c.list_groups(), Vec::new())))
                    .await
                {
                    Ok(listed) => groups.extend(listed),
                    // A coordinator that just lost its partition lists nothing: its groups
                    // are listed by the new leader.
                    Err(error) => tracing::debug!(%error, "a coordinator could not list groups"),
                }
            }
            groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
            Ok(Response::ListGroups(ListGroupsResponse { groups }))
        }
        other => Err(ApiError::Internal {
            reason: format!("{} is not a group request", other.kind()),
        }),
    }
}

/// The partition count of `__offsets`, creating the topic first if it does not exist yet.
pub(crate) async fn offsets_partitions<S: LogStore>(
    broker: &Broker<S>,
    group_id: &str,
) -> Result<u32, ApiError> {
    if let Some((partitions, _)) = broker.offsets_handles() {
        return Ok(partitions);
    }
    let wait = Duration::from_millis(OFFSETS_CREATE_WAIT_MS);
    match tokio::time::timeout(wait, broker.ensure_offsets_topic(group_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::info!(%error, "creating __offsets failed; the client will retry");
        }
        Err(_) => tracing::info!("creating __offsets timed out; the client will retry"),
    }
    broker
        .offsets_handles()
        .map(|(partitions, _)| partitions)
        .ok_or(ApiError::CoordinatorNotAvailable)
}

/// Runs `step` on the coordinator of `group_id`'s partition, if this node runs it.
pub(crate) async fn coordinated<S: LogStore, R>(
    broker: &Broker<S>,
    group_id: &str,
    step: impl FnOnce(&mut Coordinator, u64) -> Step<R>,
) -> Result<R, ApiError> {
    let (partition, coordinator) = coordinator_for(broker, group_id).await?;
    let now_ms = broker.now_ms();
    match coordinator.run(now_ms, |c| step(c, now_ms)).await {
        // Deposed between the lookup and the append (or the load): someone else leads now.
        Err(ApiError::NotLeader { .. }) => Err(not_coordinator(broker, partition)),
        other => other,
    }
}

/// The `__offsets` partition of `group_id` and its coordinator, if this node runs it; else
/// the typed refusal (`NotCoordinator`, `CoordinatorLoadInProgress`, ...).
pub(crate) async fn coordinator_for<S: LogStore>(
    broker: &Broker<S>,
    group_id: &str,
) -> Result<(u32, Arc<NodeCoordinator<S>>), ApiError> {
    validate_group_id(group_id)?;
    let partitions = offsets_partitions(broker, group_id).await?;
    let partition = coordinator_partition(group_id, partitions);
    let Some(coordinator) = broker.groups().get(partition) else {
        if broker.groups().loading(broker, partition) {
            return Err(ApiError::CoordinatorLoadInProgress);
        }
        return Err(not_coordinator(broker, partition));
    };
    Ok((partition, coordinator))
}

/// Refusal of a request for `partition`'s groups on a node that does not coordinate them.
pub(crate) fn not_coordinator<S: LogStore>(broker: &Broker<S>, partition: u32) -> ApiError {
    let leader = broker.partition_leader(OFFSETS_TOPIC, partition);
    ApiError::NotCoordinator {
        coordinator_hint: leader.filter(|node| *node != broker.node_id()),
    }
}

/// (log start, high watermark) of every partition of `topics` hosted here.
fn all_bounds<S: LogStore>(
    broker: &Broker<S>,
    topics: &crate::group::assign::TopicPartitionCounts,
) -> BTreeMap<TopicPartition, PartitionBounds> {
    let mut bounds = BTreeMap::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            if let Some(found) = broker.partition_bounds(topic, partition) {
                bounds.insert(TopicPartition::new(topic, partition), found);
            }
        }
    }
    bounds
}
