//! Topic and broker configs under Kafka's names, shared by DescribeConfigs, AlterConfigs and
//! IncrementalAlterConfigs (and CreateTopics' configs).
//!
//! A topic keeps these configs of its own in Cairn: `retention.ms`, `retention.bytes` (with
//! the node's default or Kafka's "forever", -1), and compaction's `cleanup.policy`,
//! `min.compaction.lag.ms`, `delete.retention.ms`, `segment.bytes` (with Kafka's defaults),
//! and broker-side schema validation under both its vendors' names,
//! `confluent.value.schema.validation` and `redpanda.value.schema.id.validation` (one setting,
//! default false): those are described with their source and can be changed. The others clients commonly
//! ask for describe what Cairn always does and are read-only: timestamps are the producer's
//! (`CreateTime`), `max.message.bytes` is the node's batch limit. Setting a read-only config
//! to the value it has is accepted and changes nothing; any other value, and any other
//! config name, is INVALID_CONFIG.

use crate::broker::{apply_config_changes, Broker};
use crate::meta::TopicState;
use cairn_protocol::messages::{
    ConfigChange, TopicConfig, KEY_SCHEMA_VALIDATION_CONFLUENT, KEY_SCHEMA_VALIDATION_REDPANDA,
    KEY_SUBJECT_NAME_STRATEGY_CONFLUENT, KEY_SUBJECT_NAME_STRATEGY_REDPANDA, TOPIC_CONFIG_KEYS,
    VALUE_SCHEMA_VALIDATION_CONFLUENT, VALUE_SCHEMA_VALIDATION_REDPANDA,
    VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT, VALUE_SUBJECT_NAME_STRATEGY_REDPANDA,
};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

/// Kafka's resource types (DescribeConfigs, AlterConfigs).
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources (DescribeConfigs version 1 and later).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types (DescribeConfigs version 3 and later).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_SHORT: i8 = 4;
const TYPE_LONG: i8 = 5;

/// Kafka's "no limit" for `retention.ms` and `retention.bytes`.
const FOREVER: &str = "-1";

/// One config as DescribeConfigs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    pub value: String,
    pub read_only: bool,
    pub source: i8,
    pub config_type: i8,
}

/// The topic configs Cairn keeps, by Kafka name: the ones `topic alter` takes.
const EDITABLE: &[&str] = TOPIC_CONFIG_KEYS;

/// The configs with Kafka's (or the vendor's) defaults rather than the node's: compaction's
/// and schema validation's, every editable one after the two retention limits.
const COMPACTION: &[&str] = TOPIC_CONFIG_KEYS.split_at(2).1;

/// Settings with one name per vendor: naming either sets the one setting.
const VENDOR_ALIASES: &[[&str; 2]] = &[
    [
        VALUE_SCHEMA_VALIDATION_CONFLUENT,
        VALUE_SCHEMA_VALIDATION_REDPANDA,
    ],
    [
        KEY_SCHEMA_VALIDATION_CONFLUENT,
        KEY_SCHEMA_VALIDATION_REDPANDA,
    ],
    [
        VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT,
        VALUE_SUBJECT_NAME_STRATEGY_REDPANDA,
    ],
    [
        KEY_SUBJECT_NAME_STRATEGY_CONFLUENT,
        KEY_SUBJECT_NAME_STRATEGY_REDPANDA,
    ],
];

/// Read-only topic configs with the value Cairn always has.
fn fixed_topic_configs<S: LogStore>(broker: &Broker<S>) -> [(&'static str, String, i8); 2] {
    [
        (
            "max.message.bytes",
            broker.config.limits.batch_bytes_max.to_string(),
            TYPE_INT,
        ),
        (
            "message.timestamp.type",
            "CreateTime".to_string(),
            TYPE_STRING,
        ),
    ]
}

/// A topic's configs, editable ones first.
pub fn topic_entries<S: LogStore>(broker: &Broker<S>, topic: &TopicState) -> Vec<Entry> {
    let defaults = &broker.config.retention;
    let editable = [
        (
            "retention.ms",
            topic.config.retention_ms,
            defaults.retention_ms,
        ),
        (
            "retention.bytes",
            topic.config.retention_bytes,
            defaults.retention_bytes,
        ),
    ];
    let mut entries: Vec<Entry> = editable
        .into_iter()
        .map(|(name, own, default)| {
            let (value, source) = match (own, default) {
                (Some(value), _) => (value.to_string(), SOURCE_TOPIC),
                (None, Some(value)) => (value.to_string(), SOURCE_STATIC_BROKER),
                (None, None) => (FOREVER.to_string(), SOURCE_DEFAULT),
            };
            Entry {
                name,
                value,
                read_only: false,
                source,
                config_type: TYPE_LONG,
            }
        })
        .collect();
    let config = &topic.config;
    let compaction = [
        (
            "cleanup.policy",
            config.cleanup_policy.is_some(),
            config.cleanup_policy().to_string(),
            TYPE_STRING,
        ),
        (
            "min.compaction.lag.ms",
            config.min_compaction_lag_ms.is_some(),
            config.min_compaction_lag_ms().to_string(),
            TYPE_LONG,
        ),
        (
            "delete.retention.ms",
            config.delete_retention_ms.is_some(),
            config.delete_retention_ms().to_string(),
            TYPE_LONG,
        ),
        (
            "segment.bytes",
            config.segment_bytes.is_some(),
            config.segment_bytes().to_string(),
            TYPE_INT,
        ),
        (
            VALUE_SCHEMA_VALIDATION_CONFLUENT,
            config.value_schema_validation.is_some(),
            config.validates_value_schema().to_string(),
            TYPE_BOOLEAN,
        ),
        (
            VALUE_SCHEMA_VALIDATION_REDPANDA,
            config.value_schema_validation.is_some(),
            config.validates_value_schema().to_string(),
            TYPE_BOOLEAN,
        ),
        (
            KEY_SCHEMA_VALIDATION_CONFLUENT,
            config.key_schema_validation.is_some(),
            config.validates_key_schema().to_string(),
            TYPE_BOOLEAN,
        ),
        (
            KEY_SCHEMA_VALIDATION_REDPANDA,
            config.key_schema_validation.is_some(),
            config.validates_key_schema().to_string(),
            TYPE_BOOLEAN,
        ),
        (
            VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT,
            config.value_subject_name_strategy.is_some(),
            config.value_subject_strategy().class_name(),
            TYPE_STRING,
        ),
        (
            VALUE_SUBJECT_NAME_STRATEGY_REDPANDA,
            config.value_subject_name_strategy.is_some(),
            config.value_subject_strategy().name().to_string(),
            TYPE_STRING,
        ),
        (
            KEY_SUBJECT_NAME_STRATEGY_CONFLUENT,
            config.key_subject_name_strategy.is_some(),
            config.key_subject_strategy().class_name(),
            TYPE_STRING,
        ),
        (
            KEY_SUBJECT_NAME_STRATEGY_REDPANDA,
            config.key_subject_name_strategy.is_some(),
            config.key_subject_strategy().name().to_string(),
            TYPE_STRING,
        ),
    ];
    entries.extend(
        compaction
            .into_iter()
            .map(|(name, own, value, config_type)| Entry {
                name,
                value,
                read_only: false,
                source: if own { SOURCE_TOPIC } else { SOURCE_DEFAULT },
                config_type,
            }),
    );
    entries.extend(
        fixed_topic_configs(broker)
            .into_iter()
            .map(|(name, value, config_type)| Entry {
                name,
                value,
                read_only: true,
                source: SOURCE_DEFAULT,
                config_type,
            }),
    );
    entries
}

/// This node's configs under Kafka's broker config names: a small set, all read-only.
pub fn broker_entries<S: LogStore>(broker: &Broker<S>) -> Vec<Entry> {
    let config = &broker.config;
    let forever = |value: Option<u64>| value.map_or(FOREVER.to_string(), |value| value.to_string());
    let entry = |name, value: String, config_type| Entry {
        name,
        value,
        read_only: true,
        source: SOURCE_STATIC_BROKER,
        config_type,
    };
    let mut entries = vec![
        entry("broker.id", config.node_id.0.to_string(), TYPE_INT),
        entry("node.id", config.node_id.0.to_string(), TYPE_INT),
        entry(
            "auto.create.topics.enable",
            config.kafka.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        entry(
            "default.replication.factor",
            config.default_replication_factor.to_string(),
            TYPE_SHORT,
        ),
        entry(
            "num.partitions",
            config.kafka.default_partitions.to_string(),
            TYPE_INT,
        ),
        entry(
            "message.max.bytes",
            config.limits.batch_bytes_max.to_string(),
            TYPE_INT,
        ),
        entry(
            "log.retention.ms",
            forever(config.retention.retention_ms),
            TYPE_LONG,
        ),
        entry(
            "log.retention.bytes",
            forever(config.retention.retention_bytes),
            TYPE_LONG,
        ),
        entry("log.cleanup.policy", "delete".to_string(), TYPE_STRING),
    ];
    // Kafka's listener names: tools (kafka-python's admin, Kafka UIs) read the address a
    // broker is reached at from these. Cairn has one plaintext Kafka listener per node.
    if let Some(listen) = config.kafka.listen {
        entries.push(entry(
            "listeners",
            format!("PLAINTEXT://{listen}"),
            TYPE_STRING,
        ));
    }
    if let Some(address) = broker.kafka_advertised_address() {
        // Configured (`--kafka-advertised-address`), or derived from the bound address as
        // Kafka derives it from `listeners` when it is not set.
        let source = if config.kafka.advertised_address.is_some() {
            SOURCE_STATIC_BROKER
        } else {
            SOURCE_DEFAULT
        };
        entries.push(Entry {
            source,
            ..entry(
                "advertised.listeners",
                format!("PLAINTEXT://{address}"),
                TYPE_STRING,
            )
        });
    }
    entries
}

/// A Kafka topic config set to `value` (`None`: back to the default), as a change to Cairn's
/// topic config: `None` for a read-only config set to the value it has. Anything else Cairn
/// does not keep is INVALID_CONFIG, naming the config.
pub fn topic_change<S: LogStore>(
    broker: &Broker<S>,
    name: &str,
    value: Option<&str>,
) -> Result<Option<ConfigChange>, ApiError> {
    if let Some((_, fixed, _)) = fixed_topic_configs(broker)
        .into_iter()
        .find(|(fixed_name, _, _)| *fixed_name == name)
    {
        return match value {
            None => Ok(None),
            Some(value) if value == fixed => Ok(None),
            Some(value) => Err(ApiError::InvalidTopicConfig {
                reason: format!("{name} is always {fixed} in Cairn; it cannot be {value}"),
            }),
        };
    }
    if COMPACTION.contains(&name) {
        let change = ConfigChange {
            key: name.to_string(),
            value: value.map(str::to_string),
        };
        // Refused values (an unknown policy, a negative lag) are refused before any change.
        apply_config_changes(&TopicConfig::default(), std::slice::from_ref(&change))?;
        return Ok(Some(change));
    }
    let default = match name {
        "retention.ms" => broker.config.retention.retention_ms,
        "retention.bytes" => broker.config.retention.retention_bytes,
        _ => {
            return Err(ApiError::InvalidTopicConfig {
                reason: format!(
                    "config {name} is not supported (changeable: {}; read-only: {})",
                    EDITABLE.join(", "),
                    fixed_topic_configs(broker)
                        .map(|(name, _, _)| name)
                        .join(", ")
                ),
            })
        }
    };
    let value = match value {
        // Kafka's "forever" is the default when the node keeps records forever too; a
        // topic cannot keep records longer than its node's default retention yet.
        Some(FOREVER) if default.is_none() => None,
        Some(FOREVER) => {
            return Err(ApiError::InvalidTopicConfig {
                reason: format!(
                    "{name} -1 (forever) is not supported while the node's default retention \
                     is set"
                ),
            })
        }
        value => value.map(str::to_string),
    };
    let change = ConfigChange {
        key: name.to_string(),
        value,
    };
    // The values Cairn refuses (not a whole number above 0) are refused here, before any
    // change is made.
    apply_config_changes(&TopicConfig::default(), std::slice::from_ref(&change))?;
    Ok(Some(change))
}

/// A whole topic config as Kafka's AlterConfigs and CreateTopics give it: every editable
/// config not named goes back to its default.
pub fn topic_config<S: LogStore>(
    broker: &Broker<S>,
    configs: &[(String, Option<String>)],
) -> Result<Vec<ConfigChange>, ApiError> {
    let mut changes: Vec<ConfigChange> = Vec::with_capacity(EDITABLE.len());
    for (name, value) in configs {
        if let Some(change) = topic_change(broker, name, value.as_deref())? {
            changes.retain(|earlier| !same_setting(&earlier.key, &change.key));
            changes.push(change);
        }
    }
    for name in EDITABLE {
        if !changes.iter().any(|change| same_setting(&change.key, name)) {
            changes.push(ConfigChange {
                key: name.to_string(),
                value: None,
            });
        }
    }
    Ok(changes)
}

/// Whether two Kafka config names set the same Cairn setting: schema validation has a name
/// per vendor, and naming either one keeps the other from resetting it.
fn same_setting(first: &str, second: &str) -> bool {
    first == second
        || VENDOR_ALIASES
            .iter()
            .any(|names| names.contains(&first) && names.contains(&second))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `COMPACTION` is every editable config but the two whose defaults are the node's.
    #[test]
    fn only_the_retention_limits_take_the_nodes_defaults() {
        assert_eq!(&EDITABLE[..2], ["retention.ms", "retention.bytes"]);
        assert_eq!(COMPACTION.len(), EDITABLE.len() - 2);
        assert!(!COMPACTION.contains(&"retention.ms") && !COMPACTION.contains(&"retention.bytes"));
        for names in VENDOR_ALIASES {
            assert!(
                names.iter().all(|name| COMPACTION.contains(name)),
                "{names:?}"
            );
        }
    }
}
