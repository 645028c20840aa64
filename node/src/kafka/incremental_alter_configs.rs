//! `IncrementalAlterConfigs` (0-1): SET and DELETE (back to the default) of a topic's
//! configs, all of one resource applied as one AlterTopic, so a refused config changes
//! nothing. APPEND and SUBTRACT apply to list configs, which Cairn's topics have none of:
//! INVALID_CONFIG. Broker configs are read-only (INVALID_CONFIG).

use super::alter_configs::{alter_topic_configs, resource_error_code, unalterable};
use super::configs::{topic_change, RESOURCE_TOPIC};
use super::Call;
use crate::broker::Broker;
use cairn_protocol::messages::ConfigChange;
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

const SET: i8 = 0;
const DELETE: i8 = 1;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: IncrementalAlterConfigsRequest,
) -> ResponseKind {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => match changes(broker, &resource) {
                Ok(changes) => {
                    alter_topic_configs(
                        broker,
                        &resource.resource_name,
                        changes,
                        request.validate_only,
                    )
                    .await
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
    ResponseKind::IncrementalAlterConfigs(
        IncrementalAlterConfigsResponse::default().with_responses(responses),
    )
}

fn changes<S: LogStore>(
    broker: &Broker<S>,
    resource: &AlterConfigsResource,
) -> Result<Vec<ConfigChange>, ApiError> {
    let mut changes = Vec::with_capacity(resource.configs.len());
    for config in &resource.configs {
        let value = match config.config_operation {
            SET => config.value.as_deref(),
            DELETE => None,
            other => {
                return Err(ApiError::InvalidTopicConfig {
                    reason: format!(
                        "config operation {other} on {} is not supported (SET and DELETE are; \
                         Cairn's topics have no list configs)",
                        &*config.name
                    ),
                })
            }
        };
        if let Some(change) = topic_change(broker, &config.name, value)? {
            changes.push(change);
        }
    }
    Ok(changes)
}
