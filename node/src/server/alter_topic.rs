//! `AlterTopic`: partitions added and config changed, validated here, decided when the
//! `__meta` records are applied (see [`Broker::alter_topic`]).

use crate::broker::Broker;
use cairn_protocol::messages::{AlterTopicRequest, AlterTopicResponse, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: AlterTopicRequest,
) -> Result<Response, ApiError> {
    let topic = broker.alter_topic(request).await?;
    Ok(Response::AlterTopic(AlterTopicResponse { topic }))
}
