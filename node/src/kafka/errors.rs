//! Cairn's typed errors as Kafka error codes: the code a Kafka client acts on (retries after
//! a metadata refresh, retries as is, or gives up), chosen so that a client does what a Cairn
//! client does for the same error.

use cairn_protocol::ApiError;
use kafka_protocol::ResponseError;

/// The Kafka error for a Cairn error.
pub fn kafka_error(error: &ApiError) -> ResponseError {
    use ApiError::*;
    match error {
        MalformedFrame { .. }
        | FrameTooLarge { .. }
        | UnsupportedVersion { .. }
        | UnknownRequestType { .. }
        | InvalidRequest { .. } => ResponseError::InvalidRequest,
        UnknownTopic { .. } | UnknownPartition { .. } => ResponseError::UnknownTopicOrPartition,
        TopicAlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        InvalidPartitionCount { .. } => ResponseError::InvalidPartitions,
        InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
        InvalidTopicConfig { .. } => ResponseError::InvalidConfig,
        // Kafka answers MESSAGE_TOO_LARGE for a batch above max.message.bytes too.
        RecordTooLarge { .. } | BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        CorruptBatch { .. } => ResponseError::CorruptMessage,
        InvalidRecords { .. } | SchemaValidation { .. } | UnsupportedTransactions => {
            ResponseError::InvalidRecord
        }
        UnsupportedCompression { .. } => ResponseError::UnsupportedCompressionType,
        // Retried after a metadata refresh, which finds the new leader.
        NotLeader { .. } | StaleEpoch { .. } | ShuttingDown => ResponseError::NotLeaderOrFollower,
        OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        // Retried as is: the node is busy, or the quorum was slow.
        Backpressure { .. } | Timeout { .. } | TooManyRequests { .. } => {
            ResponseError::RequestTimedOut
        }
        NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        // Metadata is still catching up after a start: retried after a refresh.
        NotReady { .. } => ResponseError::LeaderNotAvailable,
        Storage { .. } | StorageCorrupted { .. } => ResponseError::KafkaStorageError,
        OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        UnknownProducerId { .. } | ProducerIdNotAllocated { .. } => {
            ResponseError::UnknownProducerId
        }
        InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        NotCoordinator { .. } => ResponseError::NotCoordinator,
        CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
        CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        InvalidGroupId { .. } => ResponseError::InvalidGroupId,
        GroupIdNotFound { .. } => ResponseError::GroupIdNotFound,
        GroupNotEmpty { .. } => ResponseError::NonEmptyGroup,
        GroupMaxSizeReached { .. } => ResponseError::GroupMaxSizeReached,
        InconsistentGroupProtocol { .. } => ResponseError::InconsistentGroupProtocol,
        UnknownMemberId { .. } => ResponseError::UnknownMemberId,
        FencedMemberEpoch { .. } => ResponseError::FencedMemberEpoch,
        StaleMemberEpoch { .. } => ResponseError::StaleMemberEpoch,
        LimitExceeded { .. } | TooManyGroups { .. } => ResponseError::PolicyViolation,
        TooManyConnections { .. }
        | TooManyConnectionsFromAddress { .. }
        | PartitionNotOwned { .. }
        | FencedInstanceId { .. }
        | UnsupportedAssignor { .. }
        | Internal { .. } => ResponseError::UnknownServerError,
    }
}

/// The error code for a Cairn error.
pub fn code(error: &ApiError) -> i16 {
    kafka_error(error).code()
}

/// The error code for a Cairn error answering an admin request that writes `__meta`
/// (CreateTopics, DeleteTopics, CreatePartitions, AlterConfigs): such requests are carried
/// to the `__meta` leader (`super::forward`), and when it cannot be reached or is not known
/// the answer is NOT_CONTROLLER, which admin clients retry after finding the controller in a
/// Metadata answer (the `__meta` leader).
pub fn admin_code(error: &ApiError) -> i16 {
    match error {
        ApiError::NotLeader { .. } => ResponseError::NotController.code(),
        error => code(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::Epoch;

    /// The errors clients must retry on keep the codes Kafka clients retry on.
    #[test]
    fn retriable_errors_keep_retriable_codes() {
        let not_leader = ApiError::NotLeader {
            leader_hint: None,
            epoch: Epoch::ZERO,
        };
        assert_eq!(code(&not_leader), 6);
        assert_eq!(
            code(&ApiError::NotEnoughReplicas {
                needed: 2,
                alive: 1
            }),
            19
        );
        assert_eq!(
            code(&ApiError::UnknownTopic {
                topic: "t".to_string()
            }),
            3
        );
        assert_eq!(code(&ApiError::CoordinatorNotAvailable), 15);
        for error in [
            not_leader,
            ApiError::Timeout { waited_ms: 1 },
            ApiError::Backpressure { retry_after_ms: 1 },
            ApiError::NotReady {
                reason: "starting".to_string(),
            },
            ApiError::ShuttingDown,
        ] {
            assert!(kafka_error(&error).is_retriable(), "{error}");
        }
        assert!(!kafka_error(&ApiError::UnsupportedCompression { codec: 1 }).is_retriable());
    }
}
