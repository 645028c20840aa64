//! [`ClientError`]: everything a client call can fail with, kept in three families so that the
//! retry policy can match on them: refusals from a node ([`ClientError::Api`]), transport
//! trouble (connect, connection lost, request timeout), and bugs or mismatches in what came
//! back (protocol errors).

use cairn_protocol::ApiError;
use std::time::Duration;

/// A failed client call. Cheap to clone: one batch's failure is handed to each of its records.
///
/// Non-exhaustive: new failure classes may be added in a minor release, so a `match` needs a
/// wildcard arm; [`ClientError::is_retriable`] is the stable way to decide on a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node refused the request with a typed reason.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No TCP connection (or no handshake) could be made to `address`.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The broker address tried.
        address: String,
        /// What the operating system or the handshake said.
        reason: String,
    },
    /// The connection broke while the request was pending; it may or may not have been
    /// executed (for a produce: the batch may have been written).
    #[error("connection to {address} lost: {reason}")]
    ConnectionLost {
        /// The broker the connection went to.
        address: String,
        /// Why it broke.
        reason: String,
    },
    /// No reply within the request timeout; the request may or may not have been executed.
    #[error("request to {address} timed out after {} ms", waited.as_millis())]
    RequestTimeout {
        /// The broker the request went to.
        address: String,
        /// How long the request waited.
        waited: Duration,
    },
    /// Retries went on until the delivery timeout; `last` is the last failure seen.
    #[error("gave up after {} ms: {last}", waited.as_millis())]
    DeliveryTimeout {
        /// How long the retries went on.
        waited: Duration,
        /// The last failure, the reason the request did not succeed.
        last: Box<ClientError>,
    },
    /// The cluster knows the partition but reports no leader for it right now.
    #[error("partition {topic}/{partition} has no leader right now")]
    LeaderNotAvailable {
        /// The topic.
        topic: String,
        /// The partition without a leader.
        partition: u32,
    },
    /// The leader named by metadata is not among the brokers metadata listed.
    #[error("node {node_id} is not in the cluster metadata")]
    UnknownBroker {
        /// The node id metadata named.
        node_id: u32,
    },
    /// The request would not fit in one frame of the server's maximum size.
    #[error("request of {size} bytes exceeds the server's frame maximum of {max}")]
    RequestTooLarge {
        /// The encoded request's size in bytes.
        size: u64,
        /// The server's frame limit in bytes.
        max: u64,
    },
    /// A record larger than the whole producer buffer can never be admitted.
    #[error("record of {size} bytes exceeds the producer buffer of {max} bytes")]
    RecordTooLarge {
        /// The record's encoded size in bytes.
        size: u64,
        /// The producer's buffer in bytes (`ProducerConfig::buffer_bytes_max`).
        max: u64,
    },
    /// The server sent something this client cannot make sense of.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong with it.
        reason: String,
    },
    /// Invalid argument or configuration, refused before anything was sent.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which argument, and what is allowed.
        reason: String,
    },
    /// The producer or consumer was closed while the call waited.
    #[error("client closed")]
    Closed,
}

impl ClientError {
    /// Whether trying the same call again may succeed: transient refusals (see
    /// [`ApiError::is_retriable`]) and transport failures.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Api(error) => error.is_retriable(),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::RequestTimeout { .. }
            | ClientError::LeaderNotAvailable { .. }
            | ClientError::UnknownBroker { .. } => true,
            ClientError::DeliveryTimeout { .. }
            | ClientError::RequestTooLarge { .. }
            | ClientError::RecordTooLarge { .. }
            | ClientError::Protocol { .. }
            | ClientError::InvalidArgument { .. }
            | ClientError::Closed => false,
        }
    }

    /// Whether the client's view of leaders and brokers should be refreshed before a retry.
    pub fn needs_metadata_refresh(&self) -> bool {
        match self {
            ClientError::Api(error) => error.needs_metadata_refresh(),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::RequestTimeout { .. }
            | ClientError::LeaderNotAvailable { .. }
            | ClientError::UnknownBroker { .. } => true,
            _ => false,
        }
    }

    /// The refusal from the node, if this is one (looking through a delivery timeout).
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(error) => Some(error),
            ClientError::DeliveryTimeout { last, .. } => last.api_error(),
            _ => None,
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> ClientError {
        ClientError::InvalidArgument {
            reason: reason.into(),
        }
    }
}

/// The result of every client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::{Epoch, NodeId};

    #[test]
    fn retriable_classification_follows_the_failure_class() {
        let not_leader = ClientError::Api(ApiError::NotLeader {
            leader_hint: Some(NodeId(2)),
            epoch: Epoch(3),
        });
        assert!(not_leader.is_retriable());
        assert!(not_leader.needs_metadata_refresh());
        let unknown = ClientError::Api(ApiError::UnknownTopic { topic: "x".into() });
        assert!(!unknown.is_retriable());
        assert_eq!(unknown.to_string(), "unknown topic 'x'");
        let lost = ClientError::ConnectionLost {
            address: "a".into(),
            reason: "eof".into(),
        };
        assert!(lost.is_retriable());
        let gave_up = ClientError::DeliveryTimeout {
            waited: Duration::from_millis(10),
            last: Box::new(not_leader.clone()),
        };
        assert!(gave_up.to_string().starts_with("gave up after 10 ms: "));
        assert!(!gave_up.is_retriable());
        assert!(matches!(
            gave_up.api_error(),
            Some(ApiError::NotLeader { .. })
        ));
        assert!(!ClientError::protocol("bad").is_retriable());
    }
}
