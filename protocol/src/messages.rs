//! Typed requests and responses. One request, one response variant of the same name.
//!
//! Produce carries one partition's batch per request: requests pipeline on a connection, so
//! many partitions in flight cost nothing extra, and each reply maps to exactly one batch.
//! Fetch names many partitions at once so that one long poll serves a whole assignment.
//! Consumer-group messages live in [`crate::group`].

use crate::error::ApiError;
use crate::group::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, DeleteGroupRequest,
    DeleteGroupResponse, DescribeGroupRequest, DescribeGroupResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ResetGroupOffsetsRequest,
    ResetGroupOffsetsResponse,
};
use crate::ids::{Epoch, NodeId, Offset};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Handshake(HandshakeRequest),
    Metadata(MetadataRequest),
    CreateTopic(CreateTopicRequest),
    DeleteTopic(DeleteTopicRequest),
    ListTopics(ListTopicsRequest),
    DescribeTopic(DescribeTopicRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    ClusterStatus(ClusterStatusRequest),
    InitProducerId(InitProducerIdRequest),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroup(DescribeGroupRequest),
    DeleteGroup(DeleteGroupRequest),
    ResetGroupOffsets(ResetGroupOffsetsRequest),
    FindCoordinator(FindCoordinatorRequest),
    AlterTopic(AlterTopicRequest),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Handshake(HandshakeResponse),
    Metadata(MetadataResponse),
    CreateTopic(CreateTopicResponse),
    DeleteTopic(DeleteTopicResponse),
    ListTopics(ListTopicsResponse),
    DescribeTopic(DescribeTopicResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    ClusterStatus(ClusterStatusResponse),
    InitProducerId(InitProducerIdResponse),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ListGroups(ListGroupsResponse),
    DescribeGroup(DescribeGroupResponse),
    DeleteGroup(DeleteGroupResponse),
    ResetGroupOffsets(ResetGroupOffsetsResponse),
    FindCoordinator(FindCoordinatorResponse),
    AlterTopic(AlterTopicResponse),
}

impl Request {
    /// The variant's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Handshake(_) => "Handshake",
            Request::Metadata(_) => "Metadata",
            Request::CreateTopic(_) => "CreateTopic",
            Request::DeleteTopic(_) => "DeleteTopic",
            Request::ListTopics(_) => "ListTopics",
            Request::DescribeTopic(_) => "DescribeTopic",
            Request::Produce(_) => "Produce",
            Request::Fetch(_) => "Fetch",
            Request::ListOffsets(_) => "ListOffsets",
            Request::ClusterStatus(_) => "ClusterStatus",
            Request::InitProducerId(_) => "InitProducerId",
            Request::ConsumerGroupHeartbeat(_) => "ConsumerGroupHeartbeat",
            Request::OffsetCommit(_) => "OffsetCommit",
            Request::OffsetFetch(_) => "OffsetFetch",
            Request::ListGroups(_) => "ListGroups",
            Request::DescribeGroup(_) => "DescribeGroup",
            Request::DeleteGroup(_) => "DeleteGroup",
            Request::ResetGroupOffsets(_) => "ResetGroupOffsets",
            Request::FindCoordinator(_) => "FindCoordinator",
            Request::AlterTopic(_) => "AlterTopic",
        }
    }
}

impl Response {
    /// The variant's name, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Handshake(_) => "Handshake",
            Response::Metadata(_) => "Metadata",
            Response::CreateTopic(_) => "CreateTopic",
            Response::DeleteTopic(_) => "DeleteTopic",
            Response::ListTopics(_) => "ListTopics",
            Response::DescribeTopic(_) => "DescribeTopic",
            Response::Produce(_) => "Produce",
            Response::Fetch(_) => "Fetch",
            Response::ListOffsets(_) => "ListOffsets",
            Response::ClusterStatus(_) => "ClusterStatus",
            Response::InitProducerId(_) => "InitProducerId",
            Response::ConsumerGroupHeartbeat(_) => "ConsumerGroupHeartbeat",
            Response::OffsetCommit(_) => "OffsetCommit",
            Response::OffsetFetch(_) => "OffsetFetch",
            Response::ListGroups(_) => "ListGroups",
            Response::DescribeGroup(_) => "DescribeGroup",
            Response::DeleteGroup(_) => "DeleteGroup",
            Response::ResetGroupOffsets(_) => "ResetGroupOffsets",
            Response::FindCoordinator(_) => "FindCoordinator",
            Response::AlterTopic(_) => "AlterTopic",
        }
    }
}

/// First request on a connection: agree on a protocol version and learn the server's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    pub client_id: String,
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    pub version: u16,
    pub node_id: NodeId,
    pub limits: ServerLimits,
}

/// Limits a client should respect to avoid refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    pub frame_bytes_max: u32,
    pub batch_bytes_max: u32,
    pub record_bytes_max: u32,
    pub requests_in_flight_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRequest {
    /// `None` asks for every topic.
    pub topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataResponse {
    pub brokers: Vec<BrokerInfo>,
    /// One entry per requested topic, in request order; an unknown topic gets its error.
    pub topics: Vec<TopicMetadataResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadataResult {
    pub name: String,
    pub result: Result<TopicMetadata, ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: NodeId,
    /// Address clients connect to, `host:port`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    pub internal: bool,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub partition: u32,
    pub leader: Option<NodeId>,
    pub leader_epoch: Epoch,
    pub replicas: Vec<NodeId>,
}

/// Per-topic settings, all optional: absent means the node's default.
///
/// Fields added after the first release carry `#[serde(default)]`: `__meta` records written
/// before them decode with the field absent (see the test `an_old_topic_config_decodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Batches whose newest record is older than this are removed from the log start.
    pub retention_ms: Option<u64>,
    /// Oldest batches are removed while a partition holds more than this.
    pub retention_bytes: Option<u64>,
    /// Kafka's `cleanup.policy`: delete old batches (retention), keep the newest record per
    /// key (compaction), or both. Absent: `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_policy: Option<CleanupPolicy>,
    /// Kafka's `min.compaction.lag.ms`: a record younger than this (by its batch's newest
    /// timestamp, on the deciding leader's clock) is not compacted yet. Absent: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_compaction_lag_ms: Option<u64>,
    /// Kafka's `delete.retention.ms`: how long compaction keeps a tombstone (null value) so
    /// that a consumer reading from behind still sees the key's deletion. Absent: one day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_retention_ms: Option<u64>,
    /// Kafka's `segment.bytes`, the granularity of compaction: a leader decides a new
    /// compaction once at least this many bytes of the log below its high watermark have not
    /// been compacted yet (Kafka never cleans the active segment). Absent: 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// Broker-side schema validation, as Confluent Server's `confluent.value.schema.validation`
    /// and Redpanda's `redpanda.value.schema.id.validation` (both names set it): the partition
    /// leader refuses a record whose value does not start with magic byte 0 and a 4-byte
    /// schema id registered under the subject `<topic>-value`. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_schema_validation: Option<bool>,
    /// The same for record keys, as Confluent Server's `confluent.key.schema.validation` and
    /// Redpanda's `redpanda.key.schema.id.validation`: a key must carry a schema id
    /// registered under `<topic>-key` (a null key passes). Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_schema_validation: Option<bool>,
    /// Which subject a validated value's schema id must be registered under, as Confluent
    /// Server's `confluent.value.subject.name.strategy` and Redpanda's
    /// `redpanda.value.subject.name.strategy`. Absent: `TopicNameStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_subject_name_strategy: Option<SubjectNameStrategy>,
    /// The same for keys (`confluent.key.subject.name.strategy`,
    /// `redpanda.key.subject.name.strategy`). Absent: `TopicNameStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_subject_name_strategy: Option<SubjectNameStrategy>,
}

/// How a serializer names the subject of a record's schema (Confluent's
/// `subject.name.strategy`), and so which subject broker-side validation checks an id
/// against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SubjectNameStrategy {
    /// `<topic>-key` / `<topic>-value`: one schema (and its versions) per topic part.
    #[default]
    TopicNameStrategy,
    /// The fully qualified name of the record's schema (an Avro named type, a Protobuf
    /// message, a JSON schema's `title`): one subject per record type, shared by topics.
    RecordNameStrategy,
    /// `<topic>-<record name>`: several record types per topic, each with its own versions.
    TopicRecordNameStrategy,
}

/// The Java package of Confluent's strategy classes, as Confluent Server's configs spell them.
const CONFLUENT_STRATEGY_PACKAGE: &str = "io.confluent.kafka.serializers.subject.";

impl SubjectNameStrategy {
    const ALL: [SubjectNameStrategy; 3] = [
        SubjectNameStrategy::TopicNameStrategy,
        SubjectNameStrategy::RecordNameStrategy,
        SubjectNameStrategy::TopicRecordNameStrategy,
    ];

    /// Redpanda's spelling, the class's simple name.
    pub fn name(self) -> &'static str {
        match self {
            SubjectNameStrategy::TopicNameStrategy => "TopicNameStrategy",
            SubjectNameStrategy::RecordNameStrategy => "RecordNameStrategy",
            SubjectNameStrategy::TopicRecordNameStrategy => "TopicRecordNameStrategy",
        }
    }

    /// Confluent's spelling, the fully qualified class name.
    pub fn class_name(self) -> String {
        format!("{CONFLUENT_STRATEGY_PACKAGE}{}", self.name())
    }

    /// Either spelling, exactly.
    pub fn parse(key: &str, value: &str) -> Result<SubjectNameStrategy, ApiError> {
        let simple = value
            .strip_prefix(CONFLUENT_STRATEGY_PACKAGE)
            .unwrap_or(value);
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.name() == simple)
            .ok_or_else(|| ApiError::InvalidTopicConfig {
                reason: format!(
                    "{key} must be TopicNameStrategy, RecordNameStrategy or \
                     TopicRecordNameStrategy (optionally prefixed with \
                     {CONFLUENT_STRATEGY_PACKAGE}), not '{value}'"
                ),
            })
    }
}

/// `delete.retention.ms` when a topic sets none: Kafka's default, one day.
pub const DELETE_RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;
/// `segment.bytes` when a topic sets none: Kafka's default, 1 GiB.
pub const SEGMENT_BYTES_DEFAULT: u64 = 1 << 30;

/// Topic config keys `topic alter` accepts, in Kafka's spelling (Cairn's own is accepted too).
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
    "min.compaction.lag.ms",
    "delete.retention.ms",
    "segment.bytes",
    VALUE_SCHEMA_VALIDATION_CONFLUENT,
    VALUE_SCHEMA_VALIDATION_REDPANDA,
    KEY_SCHEMA_VALIDATION_CONFLUENT,
    KEY_SCHEMA_VALIDATION_REDPANDA,
    VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT,
    VALUE_SUBJECT_NAME_STRATEGY_REDPANDA,
    KEY_SUBJECT_NAME_STRATEGY_CONFLUENT,
    KEY_SUBJECT_NAME_STRATEGY_REDPANDA,
];

/// Confluent Server's name of [`TopicConfig::value_schema_validation`].
pub const VALUE_SCHEMA_VALIDATION_CONFLUENT: &str = "confluent.value.schema.validation";
/// Redpanda's name of [`TopicConfig::value_schema_validation`].
pub const VALUE_SCHEMA_VALIDATION_REDPANDA: &str = "redpanda.value.schema.id.validation";
/// Confluent Server's name of [`TopicConfig::key_schema_validation`].
pub const KEY_SCHEMA_VALIDATION_CONFLUENT: &str = "confluent.key.schema.validation";
/// Redpanda's name of [`TopicConfig::key_schema_validation`].
pub const KEY_SCHEMA_VALIDATION_REDPANDA: &str = "redpanda.key.schema.id.validation";
/// Confluent Server's name of [`TopicConfig::value_subject_name_strategy`].
pub const VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT: &str = "confluent.value.subject.name.strategy";
/// Redpanda's name of [`TopicConfig::value_subject_name_strategy`].
pub const VALUE_SUBJECT_NAME_STRATEGY_REDPANDA: &str = "redpanda.value.subject.name.strategy";
/// Confluent Server's name of [`TopicConfig::key_subject_name_strategy`].
pub const KEY_SUBJECT_NAME_STRATEGY_CONFLUENT: &str = "confluent.key.subject.name.strategy";
/// Redpanda's name of [`TopicConfig::key_subject_name_strategy`].
pub const KEY_SUBJECT_NAME_STRATEGY_REDPANDA: &str = "redpanda.key.subject.name.strategy";

impl TopicConfig {
    /// `config` with `changes` applied: a value sets a key, none returns it to the node's default.
    /// Unknown keys, unknown cleanup policies, and values that are not whole numbers (above 0
    /// for retention and segment size, 0 or more for the compaction lags) are refused, naming
    /// the key; nothing is changed then.
    pub fn with_changes(&self, changes: &[ConfigChange]) -> Result<TopicConfig, ApiError> {
        let mut config = self.clone();
        for change in changes {
            // Zero is a meaningful lag (compact at once, drop tombstones at once), but not a
            // retention or a segment size.
            let (slot, zero_allowed) = match change.key.as_str() {
                "retention.ms" | "retention_ms" => (&mut config.retention_ms, false),
                "retention.bytes" | "retention_bytes" => (&mut config.retention_bytes, false),
                "min.compaction.lag.ms" | "min_compaction_lag_ms" => {
                    (&mut config.min_compaction_lag_ms, true)
                }
                "delete.retention.ms" | "delete_retention_ms" => {
                    (&mut config.delete_retention_ms, true)
                }
                "segment.bytes" | "segment_bytes" => (&mut config.segment_bytes, false),
                "cleanup.policy" | "cleanup_policy" => {
                    config.cleanup_policy = match &change.value {
                        None => None,
                        Some(value) => Some(CleanupPolicy::parse(value).map_err(|error| {
                            ApiError::InvalidTopicConfig {
                                reason: error.to_string(),
                            }
                        })?),
                    };
                    continue;
                }
                VALUE_SCHEMA_VALIDATION_CONFLUENT
                | VALUE_SCHEMA_VALIDATION_REDPANDA
                | "value_schema_validation" => {
                    config.value_schema_validation = match change.value.as_deref() {
                        None => None,
                        Some(value) => Some(parse_bool(&change.key, value)?),
                    };
                    continue;
                }
                KEY_SCHEMA_VALIDATION_CONFLUENT
                | KEY_SCHEMA_VALIDATION_REDPANDA
                | "key_schema_validation" => {
                    config.key_schema_validation = match change.value.as_deref() {
                        None => None,
                        Some(value) => Some(parse_bool(&change.key, value)?),
                    };
                    continue;
                }
                VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT
                | VALUE_SUBJECT_NAME_STRATEGY_REDPANDA
                | "value_subject_name_strategy" => {
                    config.value_subject_name_strategy = match change.value.as_deref() {
                        None => None,
                        Some(value) => Some(SubjectNameStrategy::parse(&change.key, value)?),
                    };
                    continue;
                }
                KEY_SUBJECT_NAME_STRATEGY_CONFLUENT
                | KEY_SUBJECT_NAME_STRATEGY_REDPANDA
                | "key_subject_name_strategy" => {
                    config.key_subject_name_strategy = match change.value.as_deref() {
                        None => None,
                        Some(value) => Some(SubjectNameStrategy::parse(&change.key, value)?),
                    };
                    continue;
                }
                other => {
                    return Err(ApiError::InvalidTopicConfig {
                        reason: format!(
                            "unknown config '{other}' (known: {})",
                            TOPIC_CONFIG_KEYS.join(", ")
                        ),
                    })
                }
            };
            *slot = match &change.value {
                None => None,
                Some(value) => match value.parse::<u64>() {
                    Ok(number) if number > 0 || zero_allowed => Some(number),
                    _ if zero_allowed => {
                        return Err(ApiError::InvalidTopicConfig {
                            reason: format!(
                                "{} must be a whole number of 0 or more, not '{value}'",
                                change.key
                            ),
                        })
                    }
                    _ => {
                        return Err(ApiError::InvalidTopicConfig {
                            reason: format!(
                                "{} must be a whole number above 0, not '{value}' (remove the \
                                 setting to keep records forever)",
                                change.key
                            ),
                        })
                    }
                },
            };
        }
        Ok(config)
    }

    /// The topic's cleanup policy, `delete` when unset.
    pub fn cleanup_policy(&self) -> CleanupPolicy {
        self.cleanup_policy.unwrap_or(CleanupPolicy::Delete)
    }

    /// Whether the topic is compacted (`compact` or `compact,delete`).
    pub fn is_compacted(&self) -> bool {
        self.cleanup_policy().compacts()
    }

    /// Whether retention removes old batches (`delete` or `compact,delete`).
    pub fn deletes(&self) -> bool {
        self.cleanup_policy().deletes()
    }

    pub fn min_compaction_lag_ms(&self) -> u64 {
        self.min_compaction_lag_ms.unwrap_or(0)
    }

    pub fn delete_retention_ms(&self) -> u64 {
        self.delete_retention_ms
            .unwrap_or(DELETE_RETENTION_MS_DEFAULT)
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.unwrap_or(SEGMENT_BYTES_DEFAULT)
    }

    /// Whether the leader validates record values against the schema registry.
    pub fn validates_value_schema(&self) -> bool {
        self.value_schema_validation.unwrap_or(false)
    }

    /// Whether the leader validates record keys against the schema registry.
    pub fn validates_key_schema(&self) -> bool {
        self.key_schema_validation.unwrap_or(false)
    }

    /// The subject name strategy validated values are checked with.
    pub fn value_subject_strategy(&self) -> SubjectNameStrategy {
        self.value_subject_name_strategy.unwrap_or_default()
    }

    /// The subject name strategy validated keys are checked with.
    pub fn key_subject_strategy(&self) -> SubjectNameStrategy {
        self.key_subject_name_strategy.unwrap_or_default()
    }
}

/// A boolean config value as Kafka spells it (`true`/`false`, any case).
fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::InvalidTopicConfig {
            reason: format!("{key} must be true or false, not '{value}'"),
        }),
    }
}

/// Kafka's `cleanup.policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Retention removes old batches from the log start (`delete`, the default).
    Delete,
    /// Compaction keeps the newest record per key; nothing is removed by age or size.
    Compact,
    /// Both (`compact,delete`).
    CompactDelete,
}

/// A `cleanup.policy` value that is not one of Kafka's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cleanup.policy must be delete, compact or compact,delete, not '{value}'")]
pub struct UnknownCleanupPolicy {
    pub value: String,
}

impl CleanupPolicy {
    /// Parses Kafka's spelling: a comma-separated list of `delete` and `compact` (either
    /// order, spaces around the comma allowed, each at most once).
    pub fn parse(value: &str) -> Result<CleanupPolicy, UnknownCleanupPolicy> {
        let unknown = || UnknownCleanupPolicy {
            value: value.to_owned(),
        };
        let (mut delete, mut compact) = (false, false);
        for part in value.split(',') {
            let slot = match part.trim() {
                "delete" => &mut delete,
                "compact" => &mut compact,
                _ => return Err(unknown()),
            };
            if *slot {
                return Err(unknown());
            }
            *slot = true;
        }
        match (compact, delete) {
            (false, true) => Ok(CleanupPolicy::Delete),
            (true, false) => Ok(CleanupPolicy::Compact),
            (true, true) => Ok(CleanupPolicy::CompactDelete),
            (false, false) => Err(unknown()),
        }
    }

    /// Kafka's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    pub fn compacts(self) -> bool {
        self != CleanupPolicy::Delete
    }

    pub fn deletes(self) -> bool {
        self != CleanupPolicy::Compact
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: u32,
    /// `None` takes the cluster default (3, or fewer on a smaller cluster).
    pub replication_factor: Option<u16>,
    pub config: TopicConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicResponse {
    pub topic: TopicMetadata,
}

/// Adds partitions to a topic and/or changes its config (Kafka's CreatePartitions and
/// IncrementalAlterConfigs in one request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterTopicRequest {
    pub name: String,
    /// The new partition count: at least the current one (partitions are never removed).
    pub partitions: Option<u32>,
    pub configs: Vec<ConfigChange>,
}

/// One config key set to a value, or (`value: None`) returned to the node's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterTopicResponse {
    pub topic: TopicMetadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicResponse {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTopicsRequest {
    pub include_internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTopicsResponse {
    pub topics: Vec<TopicSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopicRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopicResponse {
    pub name: String,
    pub internal: bool,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDescription {
    pub partition: u32,
    pub leader: Option<NodeId>,
    pub leader_epoch: Epoch,
    pub replicas: Vec<NodeId>,
    pub log_start: Offset,
    pub high_watermark: Offset,
    pub log_end: Offset,
}

/// How many replicas must hold a batch before the producer hears "ok".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Acks {
    /// After a majority of replicas flushed it (committed). Never lost while a majority lives.
    #[default]
    All,
    /// After the leader flushed it. Lost if the leader dies before followers copy it.
    Leader,
    /// At once, before anything is written. May be lost in any failure.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub topic: String,
    pub partition: u32,
    pub acks: Acks,
    /// How long the leader may wait for the acks before answering `Timeout`.
    pub timeout_ms: u32,
    /// Exactly one record batch (see [`crate::batch`]).
    pub batch: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceResponse {
    /// Offset of the batch's first record. For `Acks::None` the batch was not yet written and
    /// this is the log end the leader expected.
    pub base_offset: Offset,
    pub leader_epoch: Epoch,
    /// The batch repeated a sequence already written (idempotent retry); nothing was added.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Long poll: wait up to this long for `min_bytes` to be available.
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    /// Across all partitions of the response.
    pub max_bytes: u32,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    pub offset: Offset,
    pub max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// One entry per requested partition, in request order.
    pub partitions: Vec<FetchPartitionResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub result: Result<FetchedRecords, ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedRecords {
    pub log_start: Offset,
    pub high_watermark: Offset,
    /// Whole batches, concatenated; the first may start before the requested offset, and the
    /// consumer skips records below it. Only offsets below the high watermark are included.
    pub batches: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The first offset whose record timestamp is at or after this (ms since the Unix epoch);
    /// the latest offset when none is.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    pub topic: String,
    pub partition: u32,
    pub spec: OffsetSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsResponse {
    pub offset: Offset,
    /// Timestamp of the record found by a timestamp query.
    pub timestamp_ms: Option<i64>,
}

/// Asks one node for its view of the cluster: nodes, their liveness, and every partition's
/// replicas and leader. Liveness is that node's own opinion (gossip is a hint), so two nodes
/// may answer differently for a moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusRequest {
    /// Also list internal partitions (`__meta`, ...).
    pub include_internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusResponse {
    /// The node that answered; the liveness below is its opinion.
    pub node_id: NodeId,
    /// Every node the answering node knows of: itself, the nodes gossip hears, and the nodes
    /// named as replicas or metadata voters. Sorted by node id.
    pub nodes: Vec<NodeStatus>,
    /// One entry per partition, sorted by topic then partition.
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// The node that answered.
    Local,
    /// Gossip hears it.
    Alive,
    /// Gossip does not hear it: it stopped answering, or has not been heard since the
    /// answering node started.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    /// Where clients connect, `host:port`, when known.
    pub address: Option<String>,
    pub liveness: Liveness,
    /// One of the voters of the cluster metadata partition `__meta`.
    pub metadata_voter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    pub internal: bool,
    pub replicas: Vec<NodeId>,
    /// The leader as the answering node knows it: its own replica's view when it hosts one,
    /// else the leadership gossip reports; `None` when no leader is known.
    pub leader: Option<NodeId>,
    pub leader_epoch: Epoch,
    /// Replicas on nodes the answering node does not hear. A partition with any is
    /// under-replicated.
    pub offline_replicas: Vec<NodeId>,
    /// The answering node's own replica, when it lost committed data and is being caught up
    /// from the leader before it may vote again. Sent only when not empty, so older nodes and
    /// clients exchange the same bytes as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairing_replicas: Vec<NodeId>,
    /// The answering node's own replica, when it lost committed data that no peer can
    /// restore: it serves nothing (`ApiError::StorageCorrupted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupted_replicas: Vec<NodeId>,
    /// Replicas out of sync, in Kafka's ISR sense: not caught up with the leader's log for
    /// `replica.lag_time_max_ms`. Only the partition's leader knows; a node answers it for
    /// the partitions it leads (the client merges every node's answer). Sent only when not
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lagging_replicas: Vec<NodeId>,
}

/// Asks the cluster for a producer id, unique across the cluster and its restarts, for an
/// idempotent producer (Kafka's `InitProducerId` without transactions). Served by the leader
/// of the metadata partition; other nodes answer `NotLeader` with its hint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerIdRequest {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerIdResponse {
    /// Stamped into every batch of the producer (see [`crate::batch`]); never negative.
    pub producer_id: i64,
    /// The producer starts at this epoch and may raise it itself (restarting its sequences
    /// at 0) after a batch failed for good, as Kafka's idempotent producer does.
    pub producer_epoch: i16,
}

#[cfg(test)]
mod topic_config_tests {
    use super::*;

    /// The config as nodes wrote it into `__meta` before compaction existed.
    #[derive(Serialize)]
    struct OldTopicConfig {
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    }

    #[test]
    fn an_old_topic_config_decodes() {
        let old = rmp_serde::to_vec_named(&OldTopicConfig {
            retention_ms: Some(60_000),
            retention_bytes: None,
        })
        .unwrap();
        let decoded: TopicConfig = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(
            decoded,
            TopicConfig {
                retention_ms: Some(60_000),
                ..TopicConfig::default()
            }
        );
        assert_eq!(decoded.cleanup_policy(), CleanupPolicy::Delete);
        assert!(!decoded.is_compacted());
        let new = TopicConfig {
            cleanup_policy: Some(CleanupPolicy::CompactDelete),
            min_compaction_lag_ms: Some(0),
            delete_retention_ms: Some(5),
            segment_bytes: Some(1024),
            value_schema_validation: Some(true),
            key_schema_validation: Some(true),
            ..decoded
        };
        let encoded = rmp_serde::to_vec_named(&new).unwrap();
        assert_eq!(rmp_serde::from_slice::<TopicConfig>(&encoded).unwrap(), new);
    }

    #[test]
    fn cleanup_policies_parse_in_kafka_spelling() {
        assert_eq!(CleanupPolicy::parse("delete"), Ok(CleanupPolicy::Delete));
        assert_eq!(CleanupPolicy::parse("compact"), Ok(CleanupPolicy::Compact));
        for both in ["compact,delete", "delete,compact", "compact, delete"] {
            assert_eq!(CleanupPolicy::parse(both), Ok(CleanupPolicy::CompactDelete));
        }
        for bad in ["", "compacted", "compact,compact", "delete,", "COMPACT"] {
            assert_eq!(
                CleanupPolicy::parse(bad),
                Err(UnknownCleanupPolicy { value: bad.into() }),
                "{bad:?}"
            );
        }
        for policy in [
            CleanupPolicy::Delete,
            CleanupPolicy::Compact,
            CleanupPolicy::CompactDelete,
        ] {
            assert_eq!(CleanupPolicy::parse(policy.as_str()), Ok(policy));
        }
    }

    /// Both vendors' names set the one field; a value that is not a boolean is refused and
    /// changes nothing; no value returns it to off.
    #[test]
    fn schema_validation_is_set_by_confluents_and_redpandas_names() {
        let change = |key: &str, value: Option<&str>| ConfigChange {
            key: key.to_string(),
            value: value.map(str::to_string),
        };
        let on = TopicConfig::default()
            .with_changes(&[change(VALUE_SCHEMA_VALIDATION_CONFLUENT, Some("true"))])
            .unwrap();
        assert!(on.validates_value_schema());
        let off = on
            .with_changes(&[change(VALUE_SCHEMA_VALIDATION_REDPANDA, Some("FALSE"))])
            .unwrap();
        assert_eq!(off.value_schema_validation, Some(false));
        let refused = on
            .with_changes(&[change(VALUE_SCHEMA_VALIDATION_REDPANDA, Some("yes"))])
            .unwrap_err();
        assert!(
            matches!(&refused, ApiError::InvalidTopicConfig { reason } if reason.contains("true or false")),
            "{refused:?}"
        );
        let reset = on
            .with_changes(&[change(VALUE_SCHEMA_VALIDATION_CONFLUENT, None)])
            .unwrap();
        assert_eq!(reset, TopicConfig::default());
        // Keys have their own setting, under both names, independent of values.
        let keys = TopicConfig::default()
            .with_changes(&[change(KEY_SCHEMA_VALIDATION_REDPANDA, Some("true"))])
            .unwrap();
        assert!(keys.validates_key_schema() && !keys.validates_value_schema());
        let keys_off = keys
            .with_changes(&[change(KEY_SCHEMA_VALIDATION_CONFLUENT, Some("false"))])
            .unwrap();
        assert!(!keys_off.validates_key_schema());
        assert!(keys
            .with_changes(&[change(KEY_SCHEMA_VALIDATION_CONFLUENT, Some("1"))])
            .is_err());
        // Subject name strategies, in Confluent's (class) and Redpanda's (simple) spelling.
        let strategies = TopicConfig::default()
            .with_changes(&[
                change(
                    VALUE_SUBJECT_NAME_STRATEGY_CONFLUENT,
                    Some("io.confluent.kafka.serializers.subject.RecordNameStrategy"),
                ),
                change(
                    KEY_SUBJECT_NAME_STRATEGY_REDPANDA,
                    Some("TopicRecordNameStrategy"),
                ),
            ])
            .unwrap();
        assert_eq!(
            strategies.value_subject_strategy(),
            SubjectNameStrategy::RecordNameStrategy
        );
        assert_eq!(
            strategies.key_subject_strategy(),
            SubjectNameStrategy::TopicRecordNameStrategy
        );
        assert_eq!(
            TopicConfig::default().value_subject_strategy(),
            SubjectNameStrategy::TopicNameStrategy
        );
        for bad in ["recordnamestrategy", "io.confluent.RecordNameStrategy", ""] {
            assert!(
                strategies
                    .with_changes(&[change(VALUE_SUBJECT_NAME_STRATEGY_REDPANDA, Some(bad))])
                    .is_err(),
                "{bad}"
            );
        }
        let encoded = rmp_serde::to_vec_named(&strategies).unwrap();
        let decoded: TopicConfig = rmp_serde::from_slice(&encoded).unwrap();
        assert_eq!(decoded, strategies);
        assert!(!reset.validates_value_schema());
    }
}
