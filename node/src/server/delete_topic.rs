//! `DeleteTopic`: appended to `__meta`; applying it stops the partitions and removes their logs.

use crate::broker::Broker;
use cairn_protocol::messages::{DeleteTopicRequest, DeleteTopicResponse, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: DeleteTopicRequest,
) -> Result<Response, ApiError> {
    if crate::broker::is_internal(&request.name) {
        return Err(ApiError::InvalidTopicName {
            name: request.name,
            reason: "internal topics cannot be deleted".to_string(),
        });
    }
    broker.delete_topic(&request.name).await?;
    Ok(Response::DeleteTopic(DeleteTopicResponse {
        name: request.name,
    }))
}
