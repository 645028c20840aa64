//! `DeleteTopics` (1-6): by name, or by topic id (version 6), through the same `__meta` path
//! as a Cairn delete. Internal topics cannot be deleted.

use super::errors::admin_code;
use super::ids::topic_uuid;
use super::Call;
use crate::broker::{is_internal, Broker};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: DeleteTopicsRequest,
) -> ResponseKind {
    // Versions 1-5 name topics in `topic_names`, version 6 in `topics` (name or id).
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|name| (Some(name.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(request.topics.iter().map(|topic| {
        (
            topic.name.as_ref().map(|name| name.0.to_string()),
            topic.topic_id,
        )
    }));
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let name = name.or_else(|| {
            broker.topic_states().ok().and_then(|states| {
                states
                    .into_iter()
                    .find(|state| topic_uuid(state.id, &state.name) == id)
                    .map(|state| state.name)
            })
        });
        let mut result = DeletableTopicResult::default();
        if call.version >= 6 {
            result.topic_id = id;
        }
        match name {
            None => result.error_code = ResponseError::UnknownTopicId.code(),
            Some(name) => {
                result.name = Some(TopicName(StrBytes::from_string(name.clone())));
                let deleted = if is_internal(&name) {
                    Err(ApiError::InvalidTopicName {
                        name: name.clone(),
                        reason: "internal topics cannot be deleted".to_string(),
                    })
                } else {
                    super::forward::delete_topic(broker, &name).await
                };
                if let Err(error) = deleted {
                    result.error_code = admin_code(&error);
                    if call.version >= 5 {
                        result.error_message = Some(error.to_string().into());
                    }
                }
            }
        }
        responses.push(result);
    }
    ResponseKind::DeleteTopics(DeleteTopicsResponse::default().with_responses(responses))
}
