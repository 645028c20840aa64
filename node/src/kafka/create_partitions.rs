//! `CreatePartitions` (0-3): a topic's partition count raised through Cairn's AlterTopic (the
//! `__meta` AddPartitions record; new partitions placed by Cairn on live nodes, with the
//! topic's replication factor). As in Kafka: a count not above the current one is
//! INVALID_PARTITIONS, explicit assignments are refused (INVALID_REPLICA_ASSIGNMENT: placement
//! is Cairn's), a topic named twice in one request is INVALID_REQUEST for each mention, and
//! `validate_only` checks without adding.

use super::errors::admin_code;
use super::Call;
use crate::broker::{is_internal, Broker};
use cairn_protocol::messages::AlterTopicRequest;
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: CreatePartitionsRequest,
) -> ResponseKind {
    let mut mentions: BTreeMap<&str, usize> = BTreeMap::new();
    for topic in &request.topics {
        *mentions.entry(&topic.name.0).or_default() += 1;
    }
    let duplicated: Vec<String> = mentions
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(name, _)| name.to_string())
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let outcome = if duplicated.iter().any(|name| *name == *topic.name.0) {
            Err((
                ResponseError::InvalidRequest.code(),
                format!("topic {} is named more than once", &*topic.name.0),
            ))
        } else {
            grow(broker, &topic, request.validate_only).await
        };
        if let Err((error, message)) = outcome {
            result.error_code = error;
            result.error_message = Some(StrBytes::from_string(message));
        }
        results.push(result);
    }
    ResponseKind::CreatePartitions(CreatePartitionsResponse::default().with_results(results))
}

/// Raises one topic's partition count (or only checks that it could be), or the Kafka error
/// code and message why not.
async fn grow<S: LogStore>(
    broker: &Broker<S>,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let name = topic.name.0.to_string();
    let refuse = |error: ApiError| (admin_code(&error), error.to_string());
    if topic
        .assignments
        .as_ref()
        .is_some_and(|assignments| !assignments.is_empty())
    {
        return Err((
            ResponseError::InvalidReplicaAssignment.code(),
            "replica assignments are chosen by Cairn; leave them out".to_string(),
        ));
    }
    let unknown = || ApiError::UnknownTopic {
        topic: name.clone(),
    };
    if is_internal(&name) {
        return Err(refuse(unknown()));
    }
    let state = broker
        .topic_states()
        .map_err(refuse)?
        .into_iter()
        .find(|state| state.name == name)
        .ok_or_else(|| refuse(unknown()))?;
    let partitions_max = broker.config.limits.partitions_per_topic_max;
    let count = match u32::try_from(topic.count) {
        Ok(count) if count > state.partitions => count,
        _ => {
            return Err((
                ResponseError::InvalidPartitions.code(),
                format!(
                    "topic {name} has {} partitions; the new count must be larger, not {}",
                    state.partitions, topic.count
                ),
            ))
        }
    };
    if count > partitions_max {
        return Err(refuse(ApiError::InvalidPartitionCount {
            requested: count,
            max: partitions_max,
        }));
    }
    if validate_only {
        broker.check_ready().map_err(refuse)?;
        let live = broker.live_nodes().len();
        if usize::from(state.replication_factor) > live {
            return Err(refuse(ApiError::InvalidReplicationFactor {
                requested: state.replication_factor,
                available: u16::try_from(live).unwrap_or(u16::MAX),
            }));
        }
        return Ok(());
    }
    super::forward::alter_topic(
        broker,
        AlterTopicRequest {
            name,
            partitions: Some(count),
            configs: Vec::new(),
        },
    )
    .await
    .map_err(refuse)?;
    Ok(())
}
