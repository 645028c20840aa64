//! `Metadata`: brokers, and per topic its partitions, leaders and replicas.

use crate::broker::Broker;
use crate::meta::META_TOPIC;
use cairn_protocol::messages::{
    MetadataRequest, MetadataResponse, PartitionMetadata, Response, TopicMetadata,
    TopicMetadataResult,
};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: MetadataRequest,
) -> Result<Response, ApiError> {
    broker.check_ready()?;
    let names = match request.topics {
        Some(names) => names,
        None => broker.topic_names()?,
    };
    let topics = names
        .into_iter()
        .map(|name| {
            let result = if name == META_TOPIC {
                Ok(meta_metadata(broker))
            } else {
                broker.topic_metadata(&name)
            };
            TopicMetadataResult { name, result }
        })
        .collect();
    Ok(Response::Metadata(MetadataResponse {
        brokers: broker.brokers(),
        topics,
    }))
}

fn meta_metadata<S: LogStore>(broker: &Broker<S>) -> TopicMetadata {
    let description = broker.meta_description();
    TopicMetadata {
        name: META_TOPIC.to_string(),
        internal: true,
        partitions: vec![PartitionMetadata {
            partition: 0,
            leader: description.leader,
            leader_epoch: description.leader_epoch,
            replicas: description.replicas,
        }],
    }
}
