//! `DescribeConfigs` (1-4): a topic's configs ([`super::configs::topic_entries`]) or this
//! node's ([`super::configs::broker_entries`]), all of them or the keys asked for (a key
//! Cairn does not know is left out, as Kafka does). A broker resource names this node (or is
//! empty, the cluster default); another node's configs are asked of that node.

use super::configs::{broker_entries, topic_entries, Entry, RESOURCE_BROKER, RESOURCE_TOPIC};
use super::errors::code;
use super::Call;
use crate::broker::{is_internal, Broker};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: DescribeConfigsRequest,
) -> ResponseKind {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        match entries(broker, resource.resource_type, &resource.resource_name) {
            Ok(entries) => {
                result.configs = entries
                    .into_iter()
                    .filter(|entry| {
                        resource
                            .configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|key| key.as_str() == entry.name))
                    })
                    .map(|entry| describe(call, entry))
                    .collect();
            }
            Err((error, message)) => {
                result.error_code = error;
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        results.push(result);
    }
    ResponseKind::DescribeConfigs(DescribeConfigsResponse::default().with_results(results))
}

fn entries<S: LogStore>(
    broker: &Broker<S>,
    resource_type: i8,
    name: &str,
) -> Result<Vec<Entry>, (i16, String)> {
    match resource_type {
        RESOURCE_TOPIC => {
            let unknown = || ApiError::UnknownTopic {
                topic: name.to_string(),
            };
            if is_internal(name) {
                return Err((code(&unknown()), unknown().to_string()));
            }
            let states = broker
                .topic_states()
                .map_err(|error| (code(&error), error.to_string()))?;
            let state = states
                .into_iter()
                .find(|state| state.name == name)
                .ok_or_else(|| (code(&unknown()), unknown().to_string()))?;
            Ok(topic_entries(broker, &state))
        }
        RESOURCE_BROKER => {
            let own = broker.config.node_id.0.to_string();
            if !name.is_empty() && name != own {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    format!("this is broker {own}; ask broker {name} for its configs"),
                ));
            }
            Ok(broker_entries(broker))
        }
        other => Err((
            ResponseError::InvalidRequest.code(),
            format!("resource type {other} is not served (topics: 2, brokers: 4)"),
        )),
    }
}

fn describe(call: Call, entry: Entry) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(entry.name))
        .with_value(Some(StrBytes::from_string(entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source);
    if call.version >= 3 {
        result.config_type = entry.config_type;
    }
    result
}
