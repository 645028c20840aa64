//! `ListTopics`: every topic with its partition count and replication factor.

use crate::broker::{is_internal, Broker};
use crate::meta::META_TOPIC;
use cairn_protocol::messages::{ListTopicsRequest, ListTopicsResponse, Response, TopicSummary};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: ListTopicsRequest,
) -> Result<Response, ApiError> {
    let mut topics: Vec<TopicSummary> = broker
        .topic_states()?
        .into_iter()
        .filter(|topic| request.include_internal || !is_internal(&topic.name))
        .map(|topic| TopicSummary {
            internal: is_internal(&topic.name),
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
        })
        .collect();
    if request.include_internal {
        topics.insert(
            0,
            TopicSummary {
                name: META_TOPIC.to_string(),
                partitions: 1,
                replication_factor: broker.meta_description().replicas.len() as u16,
                internal: true,
            },
        );
    }
    Ok(Response::ListTopics(ListTopicsResponse { topics }))
}
