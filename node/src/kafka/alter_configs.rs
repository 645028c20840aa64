//! `AlterConfigs` (0-2): a topic's whole config, through Cairn's AlterTopic (one `__meta`
//! record, so a refused config changes nothing): configs not named go back to their defaults,
//! as in Kafka. Broker configs are read-only (INVALID_CONFIG). `validate_only` checks without
//! changing. [`alter_topic_configs`] is shared with IncrementalAlterConfigs.

use super::configs::{topic_config, RESOURCE_BROKER, RESOURCE_TOPIC};
use super::errors::admin_code;
use super::Call;
use crate::broker::{apply_config_changes, is_internal, Broker};
use cairn_protocol::messages::{AlterTopicRequest, ConfigChange};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: AlterConfigsRequest,
) -> ResponseKind {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let configs: Vec<(String, Option<String>)> = resource
            .configs
            .iter()
            .map(|config| {
                (
                    config.name.to_string(),
                    config.value.as_ref().map(|value| value.to_string()),
                )
            })
            .collect();
        let name = resource.resource_name.to_string();
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => match topic_config(broker, &configs) {
                Ok(changes) => {
                    alter_topic_configs(broker, &name, changes, request.validate_only).await
                }
                Err(error) => Err(error),
            },
            other => Err(unalterable(other)),
        };
        let mut response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err(error) = outcome {
            response.error_code = resource_error_code(resource.resource_type, &error);
            response.error_message = Some(StrBytes::from_string(error.to_string()));
        }
        responses.push(response);
    }
    ResponseKind::AlterConfigs(AlterConfigsResponse::default().with_responses(responses))
}

/// Why a resource other than a topic cannot be altered.
pub fn unalterable(resource_type: i8) -> ApiError {
    match resource_type {
        RESOURCE_BROKER => ApiError::InvalidTopicConfig {
            reason: "broker configs are read-only in Cairn (set them in the node's config \
                     file)"
                .to_string(),
        },
        other => ApiError::InvalidRequest {
            reason: format!("resource type {other} cannot be altered (topics: 2)"),
        },
    }
}

/// The error code of a refused resource: `InvalidRequest` for an unknown resource type is
/// INVALID_REQUEST, the rest as in [`admin_code`].
pub fn resource_error_code(_resource_type: i8, error: &ApiError) -> i16 {
    match error {
        ApiError::InvalidRequest { .. } => ResponseError::InvalidRequest.code(),
        error => admin_code(error),
    }
}

/// Applies `changes` to a topic's config as one AlterTopic (or, with `validate_only`, only
/// checks that it would be accepted).
pub async fn alter_topic_configs<S: LogStore>(
    broker: &Broker<S>,
    name: &str,
    changes: Vec<ConfigChange>,
    validate_only: bool,
) -> Result<(), ApiError> {
    if is_internal(name) {
        return Err(ApiError::UnknownTopic {
            topic: name.to_string(),
        });
    }
    if validate_only {
        let state = broker
            .topic_states()?
            .into_iter()
            .find(|state| state.name == name)
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: name.to_string(),
            })?;
        apply_config_changes(&state.config, &changes)?;
        return Ok(());
    }
    super::forward::alter_topic(
        broker,
        AlterTopicRequest {
            name: name.to_string(),
            partitions: None,
            configs: changes,
        },
    )
    .await?;
    Ok(())
}
