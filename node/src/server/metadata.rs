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
    // The reply is measured as it is built, so that one that would not fit in a frame is
    // refused after holding at most a frame's worth of topics, not built in full first.
    let brokers = broker.brokers();
    let reply_bytes_max = broker.config.limits.frame_bytes_max as u64;
    let mut reply_bytes = encoded_size(&brokers) + REPLY_OVERHEAD_BYTES;
    let mut topics = Vec::new();
    for name in names {
        let result = if name == META_TOPIC {
            Ok(meta_metadata(broker))
        } else {
            broker.topic_metadata(&name)
        };
        let topic = TopicMetadataResult { name, result };
        reply_bytes += encoded_size(&topic);
        if reply_bytes <= reply_bytes_max {
            topics.push(topic);
        } else if !topics.is_empty() {
            // Over the limit: keep measuring (the refusal tells the full size), holding
            // nothing more.
            topics = Vec::new();
        }
    }
    if reply_bytes > reply_bytes_max {
        return Err(ApiError::LimitExceeded {
            limit: "limits.frame_bytes_max".to_string(),
            requested: reply_bytes,
            max: reply_bytes_max,
        });
    }
    Ok(Response::Metadata(MetadataResponse { brokers, topics }))
}

/// Bytes of a reply's envelope and of the fields around its lists.
const REPLY_OVERHEAD_BYTES: u64 = 128;

/// How many bytes `value` takes on the wire, without writing them anywhere.
fn encoded_size<T: serde::Serialize>(value: &T) -> u64 {
    cairn_protocol::frame::encoded_size(value).expect("replies always serialize") as u64
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
