//! `DeleteTopic`: appended to `__meta`; applying it stops the partitions and removes their logs.

use crate::broker::Broker;
use cairn_protocol::messages::{DeleteTopicRequest, DeleteTopicResponse, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: DeleteTopicRequest,
) -> Result<Response, ApiError> {
    broker.delete_topic(&request.name).await?;
    Ok(Response::DeleteTopic(DeleteTopicResponse {
        name: request.name,
    }))
}
