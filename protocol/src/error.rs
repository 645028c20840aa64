//! [`ApiError`]: every refusal a Cairn node can answer with. Variants carry the facts a client
//! needs to act (a leader hint, the limit that was exceeded), never just a string.

use crate::ids::{Epoch, NodeId, Offset};
use serde::{Deserialize, Serialize};

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
    #[error("topic '{topic}' has {partitions} partitions; partition {partition} does not exist")]
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
    #[error("invalid replication factor {requested}: {available} nodes are available")]
    InvalidReplicationFactor { requested: u16, available: u16 },
    #[error("invalid topic config: {reason}")]
    InvalidTopicConfig { reason: String },
    #[error("record of {size} bytes exceeds the maximum of {max}")]
    RecordTooLarge { size: u64, max: u64 },
    #[error("batch of {size} bytes exceeds the maximum of {max}")]
    BatchTooLarge { size: u64, max: u64 },
    #[error("corrupt batch: {reason}")]
    CorruptBatch { reason: String },
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
    #[error("node is not ready yet: {reason}")]
    NotReady { reason: String },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("storage failure: {reason}")]
    Storage { reason: String },
    /// An idempotent producer's batch does not continue its sequence on this partition: an
    /// earlier batch is missing (lost or still being retried). Retriable: once the earlier
    /// batch is written, this one continues it. Nothing was appended.
    #[error("producer {producer_id}: sequence {received} received, {expected} expected next")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    /// An idempotent producer's batch carries an epoch below the one the partition already
    /// saw for that producer id: it was fenced by a newer incarnation. Nothing was appended.
    #[error("producer {producer_id}: epoch {received} is fenced by epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        received: i16,
    },
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl ApiError {
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
                | ApiError::NotReady { .. }
                | ApiError::ShuttingDown
                | ApiError::StaleEpoch { .. }
                | ApiError::OutOfOrderSequence { .. }
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
        )
    }
}
