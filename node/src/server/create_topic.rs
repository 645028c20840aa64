//! `CreateTopic`: validated here, decided when the `__meta` record is applied.

use crate::broker::Broker;
use cairn_protocol::messages::{CreateTopicRequest, CreateTopicResponse, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: CreateTopicRequest,
) -> Result<Response, ApiError> {
    let topic = broker.create_topic(request).await?;
    Ok(Response::CreateTopic(CreateTopicResponse { topic }))
}
