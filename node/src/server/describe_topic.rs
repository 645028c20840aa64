//! `DescribeTopic`: per partition its leader, replicas, epoch, log start, high watermark and
//! log end, as this node sees them.

use crate::broker::Broker;
use crate::meta::META_TOPIC;
use cairn_protocol::messages::{
    DescribeTopicRequest, DescribeTopicResponse, Response, TopicConfig,
};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: DescribeTopicRequest,
) -> Result<Response, ApiError> {
    if request.name == META_TOPIC {
        broker.check_ready()?;
        return Ok(Response::DescribeTopic(DescribeTopicResponse {
            name: request.name,
            internal: true,
            config: TopicConfig::default(),
            partitions: vec![broker.meta_description()],
        }));
    }
    let (config, partitions) = broker.describe(&request.name)?;
    Ok(Response::DescribeTopic(DescribeTopicResponse {
        internal: crate::broker::is_internal(&request.name),
        name: request.name,
        config,
        partitions,
    }))
}
