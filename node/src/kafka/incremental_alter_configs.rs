//! `IncrementalAlterConfigs` (0-1): SET and DELETE (back to the default) of a topic's
//! configs, all of one resource applied as one AlterTopic, so a refused config changes
//! nothing. APPEND and SUBTRACT apply to list configs; Cairn's one is `cleanup.policy`
//! (APPEND `compact` to `delete` gives `compact,delete`), any other is INVALID_CONFIG, as is
//! subtracting every policy. Broker configs are read-only (INVALID_CONFIG).

use super::alter_configs::{alter_topic_configs, resource_error_code, unalterable};
use super::configs::{topic_change, RESOURCE_TOPIC};
use super::Call;
use crate::broker::Broker;
use cairn_protocol::messages::{CleanupPolicy, ConfigChange};
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
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

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
            operation @ (APPEND | SUBTRACT) if &*config.name == "cleanup.policy" => {
                let current = broker
                    .topic_states()?
                    .into_iter()
                    .find(|state| *state.name == *resource.resource_name)
                    .map(|state| state.config.cleanup_policy())
                    .ok_or_else(|| ApiError::UnknownTopic {
                        topic: resource.resource_name.to_string(),
                    })?;
                let values = config.value.as_deref().unwrap_or_default();
                Some(list_operation(current, operation == APPEND, values)?.as_str())
            }
            other => {
                return Err(ApiError::InvalidTopicConfig {
                    reason: format!(
                        "config operation {other} on {} is not supported (SET and DELETE are; \
                         APPEND and SUBTRACT only on the list config cleanup.policy)",
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

/// `current` with the policies listed in `values` (comma-separated) added or taken away.
fn list_operation(
    current: CleanupPolicy,
    append: bool,
    values: &str,
) -> Result<CleanupPolicy, ApiError> {
    let (mut compact, mut delete) = (current.compacts(), current.deletes());
    for value in values
        .split(',')
        .map(str::trim)
        .filter(|value| !value.is_empty())
    {
        let slot = match value {
            "compact" => &mut compact,
            "delete" => &mut delete,
            other => {
                return Err(ApiError::InvalidTopicConfig {
                    reason: format!("cleanup.policy has no policy '{other}' (delete, compact)"),
                })
            }
        };
        *slot = append;
    }
    match (compact, delete) {
        (true, true) => Ok(CleanupPolicy::CompactDelete),
        (true, false) => Ok(CleanupPolicy::Compact),
        (false, true) => Ok(CleanupPolicy::Delete),
        (false, false) => Err(ApiError::InvalidTopicConfig {
            reason: format!(
                "subtracting {values} from cleanup.policy {} leaves no policy",
                current.as_str()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policy_is_a_list_config() {
        use CleanupPolicy::*;
        assert_eq!(list_operation(Delete, true, "compact"), Ok(CompactDelete));
        assert_eq!(
            list_operation(Delete, true, "compact, delete"),
            Ok(CompactDelete)
        );
        assert_eq!(list_operation(Compact, true, "compact"), Ok(Compact));
        assert_eq!(list_operation(CompactDelete, false, "delete"), Ok(Compact));
        assert_eq!(list_operation(Compact, false, "delete"), Ok(Compact));
        assert!(matches!(
            list_operation(Compact, false, "compact"),
            Err(ApiError::InvalidTopicConfig { .. })
        ));
        assert!(matches!(
            list_operation(Delete, true, "shred"),
            Err(ApiError::InvalidTopicConfig { .. })
        ));
    }
}
