//! `ListTopics`: every topic with its partition count and replication factor.

use crate::broker::Broker;
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
        .map(|topic| TopicSummary {
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            internal: false,
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
