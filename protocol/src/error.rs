//! [`ApiError`]: every refusal a Cairn node can answer with. Variants carry the facts a client
//! needs to act (a leader hint, the limit that was exceeded), never just a string.

use crate::group::MemberEpoch;
use crate::ids::{Epoch, NodeId, Offset};
use serde::{Deserialize, Serialize};

/// `count` and `noun`, the noun in the plural unless the count is one: "1 partition",
/// "3 partitions". For user-facing messages, here and in the CLI.
pub fn plural(count: impl Into<u64>, noun: &str) -> String {
    match count.into() {
        1 => format!("1 {noun}"),
        count => format!("{count} {noun}s"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// The frame could not be decoded at all; the server closes the connection after this.
    #[error("malformed frame: {reason}")]
    MalformedFrame { reason: String },
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge { size: u64, max: u64 },
    #[error("protocol version {requested} is not supported (supported: {min}..={max})")]
    UnsupportedVersion { requested: u16, min: u16, max: u16 },
    #[error("unknown request type: {detail}")]
    UnknownRequestType { detail: String },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("unknown topic '{topic}'")]
    UnknownTopic { topic: String },
    #[error("topic '{topic}' has {}; partition {partition} does not exist", plural(*.partitions, "partition"))]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("topic '{topic}' already exists")]
    TopicAlreadyExists { topic: String },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("invalid partition count {requested}: it must be between 1 and {max}")]
    InvalidPartitionCount { requested: u32, max: u32 },
    #[error("invalid replication factor {requested}: {} available", plural(*.available, "node"))]
    InvalidReplicationFactor { requested: u16, available: u16 },
    #[error("invalid topic config: {reason}")]
    InvalidTopicConfig { reason: String },
    #[error("record of {size} bytes exceeds the maximum of {max}")]
    RecordTooLarge { size: u64, max: u64 },
    #[error("batch of {size} bytes exceeds the maximum of {max}")]
    BatchTooLarge { size: u64, max: u64 },
    /// The batch's framing or checksum is broken (bytes damaged or cut). Nothing was appended.
    #[error("corrupt batch: {reason}")]
    CorruptBatch { reason: String },
    /// The batch is intact (its checksum holds) but its records break the format's rules: a
    /// record's offset delta is not its position, a timestamp overflows, the header's max
    /// timestamp or record count disagrees with the records, or an attribute bit is unknown
    /// (Kafka's `INVALID_RECORD`). Not retriable. Nothing was appended.
    #[error("invalid records: {reason}")]
    InvalidRecords { reason: String },
    /// The topic validates record values against the schema registry
    /// (`confluent.value.schema.validation`) and records of the batch do not start with magic
    /// byte 0 and a 4-byte schema id registered under `subject` (`<topic>-value`), each named
    /// by its index in the batch (at most [`RECORD_ERRORS_MAX`]; `refused` counts them all).
    /// Kafka's `INVALID_RECORD`. Not retriable: the same records would be refused again.
    /// Nothing of the batch was appended.
    #[error("schema validation refused {} of the batch for subject '{subject}': {}", plural(*.refused, "record"), describe_record_errors(records, *refused))]
    SchemaValidation {
        subject: String,
        refused: u32,
        records: Vec<RecordError>,
    },
    /// The batch's attributes name compression codec `codec`, which is none of Kafka's
    /// (gzip 1, snappy 2, lz4 3, zstd 4 are accepted) (Kafka's `UNSUPPORTED_COMPRESSION_TYPE`).
    /// Not retriable; nothing was appended.
    #[error("compression codec {codec} is not supported (gzip 1, snappy 2, lz4 3, zstd 4 are)")]
    UnsupportedCompression { codec: u8 },
    /// The batch is marked transactional; Cairn has no transactions. Nothing was appended.
    #[error("transactional batches are not supported")]
    UnsupportedTransactions,
    #[error("this node is not the leader (leader hint: {leader_hint:?}, epoch {epoch})")]
    NotLeader {
        leader_hint: Option<NodeId>,
        epoch: Epoch,
    },
    #[error("stale epoch: the replica has promised epoch {current}")]
    StaleEpoch { current: Epoch },
    #[error("offset {requested} is out of range (log start {log_start}, high watermark {high_watermark})")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        high_watermark: Offset,
    },
    #[error("node is overloaded; retry after {retry_after_ms} ms")]
    Backpressure { retry_after_ms: u32 },
    #[error("request timed out after {waited_ms} ms")]
    Timeout { waited_ms: u64 },
    #[error("not enough replicas: {needed} needed, {alive} reachable")]
    NotEnoughReplicas { needed: u16, alive: u16 },
    #[error("too many requests in flight on this connection (maximum {max})")]
    TooManyRequests { max: u32 },
    #[error("too many connections to this node (maximum {max})")]
    TooManyConnections { max: u32 },
    /// The connecting address already holds its share of the node's connections
    /// (`limits.connections_per_address_max`), so that one address cannot take every slot.
    /// Retriable once one of that address's connections closes. Sent once, then the
    /// connection is closed (a client built before this variant closes it too, on a reply it
    /// cannot decode).
    #[error("too many connections from this address (maximum {max})")]
    TooManyConnectionsFromAddress { max: u32 },
    /// A request, or the reply it asks for, would exceed the node limit `limit` (its config
    /// key, e.g. `limits.request_entries_max`): `requested` against `max`, in the limit's
    /// unit. Checked before the node builds anything large, so the refusal costs nothing.
    /// Not retriable: ask for less (fewer topics, fewer partitions). A client built before
    /// this variant cannot decode it and closes its connection; it only ever meets it for a
    /// request far beyond anything it sends within the limits.
    #[error("{limit} exceeded: {requested} requested, at most {max}")]
    LimitExceeded {
        limit: String,
        requested: u64,
        max: u64,
    },
    #[error("node is not ready yet: {reason}")]
    NotReady { reason: String },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("storage failure: {reason}")]
    Storage { reason: String },
    /// This node's replica of `partition` lost committed data (its stored log is damaged or
    /// recovered shorter than what it had made durable, first missing or damaged offset
    /// `offset`) and no peer can repair it: the partition is not served from it rather than
    /// served as a shorter log. Not retriable: an operator must restore the data.
    #[error("the replica of {partition} on this node is corrupted at offset {offset}")]
    StorageCorrupted { partition: String, offset: Offset },
    /// An idempotent producer's batch does not continue its sequence on this partition: an
    /// earlier batch is missing (lost or still being retried). Retriable: once the earlier
    /// batch is written, this one continues it. Nothing was appended.
    #[error("producer {producer_id}: sequence {received} received, {expected} expected next")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    /// An idempotent producer's batch continues a sequence (`received` is not 0) that this
    /// partition has no record of: its earlier batches were never written here, or their
    /// state was evicted. Not retriable: the same batch would be refused again; the producer
    /// fails it (Kafka's `UnknownProducerIdException`). Nothing was appended.
    #[error("producer {producer_id}: unknown to this partition, sequence {received} received")]
    UnknownProducerId { producer_id: i64, received: i32 },
    /// An idempotent producer's batch carries an epoch below the one the partition already
    /// saw for that producer id: it was fenced by a newer incarnation. Nothing was appended.
    /// The batch names producer id `producer_id`, which this cluster never allocated (ids come
    /// from `InitProducerId` only). Not retriable: the producer must ask for an id. Nothing was
    /// appended.
    #[error("producer id {producer_id} was never allocated by this cluster")]
    ProducerIdNotAllocated { producer_id: i64 },
    #[error("producer {producer_id}: epoch {received} is fenced by epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        received: i16,
    },
    /// This node does not coordinate the group (it does not lead the group's `__offsets`
    /// partition). Retriable after finding the coordinator again.
    #[error("this node does not coordinate the group (coordinator hint: {coordinator_hint:?})")]
    NotCoordinator { coordinator_hint: Option<NodeId> },
    /// The coordinator is still rebuilding its groups from `__offsets` after becoming leader.
    #[error("the group coordinator is still loading its groups")]
    CoordinatorLoadInProgress,
    /// No leader is known for the group's `__offsets` partition yet.
    #[error("no group coordinator is available yet")]
    CoordinatorNotAvailable,
    #[error("invalid group id {group_id:?}: {reason}")]
    InvalidGroupId { group_id: String, reason: String },
    #[error("group '{group_id}' does not exist")]
    GroupIdNotFound { group_id: String },
    /// Deleting a group or resetting its offsets needs it to have no members.
    #[error("group '{group_id}' still has {}", plural(*.members, "member"))]
    GroupNotEmpty { group_id: String, members: u32 },
    #[error("group has reached its maximum of {max} members")]
    GroupMaxSizeReached { max: u32 },
    /// The group runs the other group protocol (a Kafka classic group joined through a
    /// Cairn heartbeat, or the other way round); Kafka's `INCONSISTENT_GROUP_PROTOCOL`.
    #[error("group '{group_id}' runs the other group protocol")]
    InconsistentGroupProtocol { group_id: String },
    /// The coordinator already holds its maximum number of groups; a new group cannot start
    /// there until one is deleted.
    #[error("the coordinator holds its maximum of {max} groups")]
    TooManyGroups { max: u32 },
    /// The member is not in the group (it left, or was removed after its session timeout):
    /// it must join again with member epoch 0.
    #[error("member '{member_id}' is not in group '{group_id}'")]
    UnknownMemberId { group_id: String, member_id: String },
    /// The member's epoch does not match the coordinator's: it lost its assignment and must
    /// rejoin with member epoch 0 (a zombie hears this).
    #[error(
        "member '{member_id}' is fenced: epoch {received} sent, the group has it at {current}"
    )]
    FencedMemberEpoch {
        member_id: String,
        current: MemberEpoch,
        received: MemberEpoch,
    },
    /// A commit carried an older epoch than the member's current one; retriable once the
    /// next heartbeat reply has given the member its current epoch.
    #[error("member '{member_id}': stale epoch {received}, the current one is {current}")]
    StaleMemberEpoch {
        member_id: String,
        current: MemberEpoch,
        received: MemberEpoch,
    },
    /// A commit for a partition the member does not own in its current epoch.
    #[error("member '{member_id}' does not own {topic}/{partition}")]
    PartitionNotOwned {
        member_id: String,
        topic: String,
        partition: u32,
    },
    /// Another process joined with this static instance id and took over its partitions;
    /// this one must stop (two processes share an instance id).
    #[error("static instance id '{instance_id}' now belongs to another member")]
    FencedInstanceId {
        instance_id: String,
        member_id: String,
    },
    #[error("assignor '{name}' is not supported (supported: {supported:?})")]
    UnsupportedAssignor {
        name: String,
        supported: Vec<String>,
    },
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

/// Records of one refused batch named in an error at most.
pub const RECORD_ERRORS_MAX: usize = 16;

/// Why one record of a batch was refused: its index in the batch and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    pub index: u32,
    pub reason: String,
}

fn describe_record_errors(records: &[RecordError], refused: u32) -> String {
    let mut text = records
        .iter()
        .map(|record| format!("record {}: {}", record.index, record.reason))
        .collect::<Vec<_>>()
        .join("; ");
    if refused as usize > records.len() {
        text.push_str(&format!(" (and {} more)", refused as usize - records.len()));
    }
    text
}

/// How a refused batch is answered: damage to its bytes is `CorruptBatch`; an intact batch
/// that breaks the format's rules is `InvalidRecords`, or names the unsupported feature.
impl From<crate::batch::BatchError> for ApiError {
    fn from(error: crate::batch::BatchError) -> ApiError {
        use crate::batch::BatchError;
        match error {
            BatchError::Compressed { codec } => ApiError::UnsupportedCompression { codec },
            BatchError::Decompress(crate::compression::DecompressError::TooLarge {
                max, ..
            }) => ApiError::LimitExceeded {
                limit: crate::compression::DECOMPRESSED_BYTES_LIMIT_NAME.to_string(),
                // Decompression stops one byte past the bound: all that is known is "more".
                requested: max as u64 + 1,
                max: max as u64,
            },
            BatchError::Decompress(crate::compression::DecompressError::Malformed { .. }) => {
                ApiError::CorruptBatch {
                    reason: error.to_string(),
                }
            }
            BatchError::Transactional => ApiError::UnsupportedTransactions,
            BatchError::OffsetDeltaMismatch { .. }
            | BatchError::TimestampOverflow { .. }
            | BatchError::MaxTimestampMismatch { .. }
            | BatchError::CountExceedsBytes { .. }
            | BatchError::UnknownAttributes { .. }
            | BatchError::MissingKey { .. } => ApiError::InvalidRecords {
                reason: error.to_string(),
            },
            BatchError::Truncated { .. }
            | BatchError::LengthMismatch { .. }
            | BatchError::BadMagic(_)
            | BatchError::ChecksumMismatch { .. }
            | BatchError::BadRecord { .. }
            | BatchError::CountMismatch { .. }
            | BatchError::Empty
            | BatchError::OffsetOutOfRange { .. } => ApiError::CorruptBatch {
                reason: error.to_string(),
            },
        }
    }
}

impl ApiError {
    /// The variant's name, a stable label for logs and metrics (`rejected requests by
    /// error`); never the message, which carries request details.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::MalformedFrame { .. } => "MalformedFrame",
            ApiError::FrameTooLarge { .. } => "FrameTooLarge",
            ApiError::UnsupportedVersion { .. } => "UnsupportedVersion",
            ApiError::UnknownRequestType { .. } => "UnknownRequestType",
            ApiError::InvalidRequest { .. } => "InvalidRequest",
            ApiError::UnknownTopic { .. } => "UnknownTopic",
            ApiError::UnknownPartition { .. } => "UnknownPartition",
            ApiError::TopicAlreadyExists { .. } => "TopicAlreadyExists",
            ApiError::InvalidTopicName { .. } => "InvalidTopicName",
            ApiError::InvalidPartitionCount { .. } => "InvalidPartitionCount",
            ApiError::InvalidReplicationFactor { .. } => "InvalidReplicationFactor",
            ApiError::InvalidTopicConfig { .. } => "InvalidTopicConfig",
            ApiError::RecordTooLarge { .. } => "RecordTooLarge",
            ApiError::BatchTooLarge { .. } => "BatchTooLarge",
            ApiError::CorruptBatch { .. } => "CorruptBatch",
            ApiError::InvalidRecords { .. } => "InvalidRecords",
            ApiError::SchemaValidation { .. } => "SchemaValidation",
            ApiError::UnsupportedCompression { .. } => "UnsupportedCompression",
            ApiError::UnsupportedTransactions => "UnsupportedTransactions",
            ApiError::NotLeader { .. } => "NotLeader",
            ApiError::StaleEpoch { .. } => "StaleEpoch",
            ApiError::OffsetOutOfRange { .. } => "OffsetOutOfRange",
            ApiError::Backpressure { .. } => "Backpressure",
            ApiError::Timeout { .. } => "Timeout",
            ApiError::NotEnoughReplicas { .. } => "NotEnoughReplicas",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::TooManyConnections { .. } => "TooManyConnections",
            ApiError::TooManyConnectionsFromAddress { .. } => "TooManyConnectionsFromAddress",
            ApiError::LimitExceeded { .. } => "LimitExceeded",
            ApiError::NotReady { .. } => "NotReady",
            ApiError::ShuttingDown => "ShuttingDown",
            ApiError::Storage { .. } => "Storage",
            ApiError::StorageCorrupted { .. } => "StorageCorrupted",
            ApiError::OutOfOrderSequence { .. } => "OutOfOrderSequence",
            ApiError::UnknownProducerId { .. } => "UnknownProducerId",
            ApiError::ProducerIdNotAllocated { .. } => "ProducerIdNotAllocated",
            ApiError::InvalidProducerEpoch { .. } => "InvalidProducerEpoch",
            ApiError::NotCoordinator { .. } => "NotCoordinator",
            ApiError::CoordinatorLoadInProgress => "CoordinatorLoadInProgress",
            ApiError::CoordinatorNotAvailable => "CoordinatorNotAvailable",
            ApiError::InvalidGroupId { .. } => "InvalidGroupId",
            ApiError::GroupIdNotFound { .. } => "GroupIdNotFound",
            ApiError::GroupNotEmpty { .. } => "GroupNotEmpty",
            ApiError::GroupMaxSizeReached { .. } => "GroupMaxSizeReached",
            ApiError::InconsistentGroupProtocol { .. } => "InconsistentGroupProtocol",
            ApiError::TooManyGroups { .. } => "TooManyGroups",
            ApiError::UnknownMemberId { .. } => "UnknownMemberId",
            ApiError::FencedMemberEpoch { .. } => "FencedMemberEpoch",
            ApiError::StaleMemberEpoch { .. } => "StaleMemberEpoch",
            ApiError::PartitionNotOwned { .. } => "PartitionNotOwned",
            ApiError::FencedInstanceId { .. } => "FencedInstanceId",
            ApiError::UnsupportedAssignor { .. } => "UnsupportedAssignor",
            ApiError::Internal { .. } => "Internal",
        }
    }

    /// Whether a client may retry the same request (after refreshing metadata for
    /// `NotLeader`). Retrying anything else repeats the same refusal.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ApiError::NotLeader { .. }
                | ApiError::Backpressure { .. }
                | ApiError::Timeout { .. }
                | ApiError::NotEnoughReplicas { .. }
                | ApiError::TooManyRequests { .. }
                | ApiError::TooManyConnections { .. }
                | ApiError::TooManyConnectionsFromAddress { .. }
                | ApiError::NotReady { .. }
                | ApiError::ShuttingDown
                | ApiError::StaleEpoch { .. }
                | ApiError::OutOfOrderSequence { .. }
                | ApiError::NotCoordinator { .. }
                | ApiError::CoordinatorLoadInProgress
                | ApiError::CoordinatorNotAvailable
                | ApiError::StaleMemberEpoch { .. }
                // The node's storage failed (a full disk, say); its replicas retry by
                // themselves and writes resume once the store works again.
                | ApiError::Storage { .. }
        )
    }

    /// Whether the client's view of who leads what is out of date.
    pub fn needs_metadata_refresh(&self) -> bool {
        matches!(
            self,
            ApiError::NotLeader { .. }
                | ApiError::ShuttingDown
                | ApiError::NotReady { .. }
                | ApiError::UnknownTopic { .. }
                | ApiError::UnknownPartition { .. }
                | ApiError::NotCoordinator { .. }
                | ApiError::CoordinatorNotAvailable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_count_in_the_singular_and_the_plural() {
        assert_eq!(plural(1u32, "partition"), "1 partition");
        assert_eq!(plural(0u32, "partition"), "0 partitions");
        let unknown = |partitions| ApiError::UnknownPartition {
            topic: "t".into(),
            partition: 7,
            partitions,
        };
        assert_eq!(
            unknown(1).to_string(),
            "topic 't' has 1 partition; partition 7 does not exist"
        );
        assert_eq!(
            unknown(3).to_string(),
            "topic 't' has 3 partitions; partition 7 does not exist"
        );
        let factor = ApiError::InvalidReplicationFactor {
            requested: 3,
            available: 1,
        };
        assert_eq!(
            factor.to_string(),
            "invalid replication factor 3: 1 node available"
        );
        let busy = ApiError::GroupNotEmpty {
            group_id: "g".into(),
            members: 1,
        };
        assert_eq!(busy.to_string(), "group 'g' still has 1 member");
    }
}
