//! `CreateTopics` (2-7): each topic through the same `__meta` path as a Cairn create.
//! Partition count and replication factor -1 take the defaults (the node's
//! `kafka.default_partitions` and `default_replication_factor`); the configs Cairn keeps
//! (retention and compaction, see [`super::configs`]) are set, a read-only config set to the
//! value it has is accepted, any other config is refused (INVALID_CONFIG), and so are
//! explicit replica assignments (placement is Cairn's).
//! `validate_only` checks without creating. A node that does not lead `__meta` carries the
//! create to it ([`super::forward`]). As Kafka's controller assigns leaders before it answers,
//! a create answers once this node sees a leader for every partition (Cairn's are
//! lease-elected just after the create), waiting at most the request's `timeout_ms` (capped at
//! [`LEADERS_WAIT_MAX`]): clients that read the metadata at once and do not retry on leader -1
//! (kafka-python's admin `list_partition_offsets`) then find the leaders.

use super::configs::topic_config;
use super::errors::admin_code;
use super::ids::topic_uuid;
use super::Call;
use crate::broker::{apply_config_changes, Broker};
use cairn_protocol::ids::validate_topic_name;
use cairn_protocol::messages::{CreateTopicRequest, TopicConfig};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, ResponseKind};
use std::time::Duration;

/// The longest a create waits for its partitions' first leaders.
pub const LEADERS_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often it looks.
const LEADERS_POLL: Duration = Duration::from_millis(20);

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: CreateTopicsRequest,
) -> ResponseKind {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.clone();
        let mut result = CreatableTopicResult::default().with_name(name.clone());
        match create(broker, topic, request.validate_only).await {
            Ok((partitions, replication_factor)) => {
                if !request.validate_only {
                    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
                    wait_for_leaders(broker, &name, timeout).await;
                }
                if call.version >= 5 {
                    result.num_partitions = partitions;
                    result.replication_factor = replication_factor;
                }
                if call.version >= 7 {
                    let id = broker
                        .topic_states()
                        .ok()
                        .and_then(|states| states.into_iter().find(|state| *state.name == *name.0))
                        .map(|state| topic_uuid(state.id, &state.name));
                    result.topic_id = id.unwrap_or_default();
                }
            }
            Err(error) => {
                result.error_code = admin_code(&error);
                if call.version >= 1 {
                    result.error_message = Some(error.to_string().into());
                }
            }
        }
        results.push(result);
    }
    ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(results))
}

/// Returns once this node sees a leader for every partition of `name`, or after `timeout`
/// (at most [`LEADERS_WAIT_MAX`]); the create stands either way.
async fn wait_for_leaders<S: LogStore>(broker: &Broker<S>, name: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout.min(LEADERS_WAIT_MAX);
    loop {
        let led = broker.topic_metadata(name).is_ok_and(|topic| {
            topic
                .partitions
                .iter()
                .all(|partition| partition.leader.is_some())
        });
        if led || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(LEADERS_POLL).await;
    }
}

/// Creates (or only checks) one topic; its partition count and replication factor.
async fn create<S: LogStore>(
    broker: &Broker<S>,
    topic: CreatableTopic,
    validate_only: bool,
) -> Result<(i32, i16), ApiError> {
    let name = topic.name.0.to_string();
    if !topic.assignments.is_empty() {
        return Err(ApiError::InvalidRequest {
            reason: "replica assignments are chosen by Cairn; leave them out".to_string(),
        });
    }
    let partitions = match topic.num_partitions {
        -1 => broker.config.kafka.default_partitions,
        count => u32::try_from(count).map_err(|_| ApiError::InvalidPartitionCount {
            requested: 0,
            max: broker.config.limits.partitions_per_topic_max,
        })?,
    };
    let replication_factor = match topic.replication_factor {
        -1 => None,
        factor => Some(
            u16::try_from(factor).map_err(|_| ApiError::InvalidReplicationFactor {
                requested: 0,
                available: 0,
            })?,
        ),
    };
    let configs: Vec<(String, Option<String>)> = topic
        .configs
        .iter()
        .map(|entry| {
            (
                entry.name.to_string(),
                entry.value.as_ref().map(|value| value.to_string()),
            )
        })
        .collect();
    let config = apply_config_changes(&TopicConfig::default(), &topic_config(broker, &configs)?)?;
    if validate_only {
        broker.check_ready()?;
        validate_topic_name(&name).map_err(|error| ApiError::InvalidTopicName {
            name: name.clone(),
            reason: error.to_string(),
        })?;
        let max = broker.config.limits.partitions_per_topic_max;
        if partitions == 0 || partitions > max {
            return Err(ApiError::InvalidPartitionCount {
                requested: partitions,
                max,
            });
        }
        if broker.topic_metadata(&name).is_ok() {
            return Err(ApiError::TopicAlreadyExists { topic: name });
        }
        let factor = replication_factor.unwrap_or(broker.config.default_replication_factor);
        return Ok((partitions as i32, factor as i16));
    }
    let created = super::forward::create_topic(
        broker,
        CreateTopicRequest {
            name,
            partitions,
            replication_factor,
            config,
        },
    )
    .await?;
    let factor = created
        .partitions
        .first()
        .map_or(0, |partition| partition.replicas.len());
    Ok((
        created.partitions.len() as i32,
        i16::try_from(factor).unwrap_or(i16::MAX),
    ))
}
