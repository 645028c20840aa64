//! Identifier newtypes. Each names what it counts so that an offset is never passed where an
//! epoch is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }
    };
}

id_newtype!(
    /// Position of a record in a partition log: 0, 1, 2, ... Never reused.
    Offset(u64)
);
id_newtype!(
    /// Leader epoch of a partition: grows by one with every election, never decreases.
    Epoch(u64)
);
id_newtype!(
    /// A node of the cluster, chosen by the operator (`--node-id`).
    NodeId(u32)
);
id_newtype!(
    /// Index of a partition within its topic.
    PartitionId(u32)
);

impl Offset {
    pub const ZERO: Offset = Offset(0);
    /// The largest offset a log may reach. Kafka's offsets are signed 64-bit, so no client can
    /// name one above this; every offset read from the wire (a batch's, a peer message's) is
    /// checked against it, which keeps the arithmetic below far from wrapping.
    pub const MAX: Offset = Offset(i64::MAX as u64);

    /// `self + count`, or `None` past `u64::MAX`.
    pub fn checked_plus(self, count: u64) -> Option<Offset> {
        self.0.checked_add(count).map(Offset)
    }

    /// `self + count`. Offsets come from logs bounded by [`Offset::MAX`] and counts from
    /// batches of at most 2^32 records, so an overflow can only be a bug: it stops loudly
    /// (also in release builds) instead of wrapping to offset 0.
    pub fn plus(self, count: u64) -> Offset {
        self.checked_plus(count)
            .expect("offset arithmetic stays below 2^64: offsets are checked against Offset::MAX")
    }
}

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);

    /// The next epoch, or `None` at `u64::MAX`.
    pub fn checked_next(self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }

    /// The next epoch. The replica engine refuses epochs more than `EPOCH_JUMP_MAX` above
    /// what it knows, so epochs grow by small steps and `u64::MAX` is out of reach: an
    /// overflow can only be a bug, and stops loudly (also in release builds) instead of
    /// wrapping to epoch 0, which would wedge the partition for good.
    pub fn next(self) -> Epoch {
        self.checked_next()
            .expect("epochs stay far below u64::MAX: replicas refuse epoch jumps")
    }
}

/// Longest topic name accepted, as in Kafka.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Topics whose names start with this are internal (`__meta`, `__offsets`).
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {length} bytes; at most {TOPIC_NAME_BYTES_MAX} are allowed")]
    TooLong { length: usize },
    #[error(
        "topic name may only contain ASCII letters, digits, '.', '_' and '-'; found {found:?}"
    )]
    BadCharacter { found: char },
    #[error("topic names '.' and '..' are reserved")]
    Reserved,
    #[error("topic names starting with '__' are reserved for internal topics")]
    Internal,
}

/// Checks a user-supplied topic name with Kafka's rules, and refuses internal names.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(TopicNameError::TooLong { length: name.len() });
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Reserved);
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicNameError::BadCharacter { found });
    }
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(TopicNameError::Internal);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert_eq!(validate_topic_name("orders.v1_eu-west"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        assert_eq!(
            validate_topic_name(&"a".repeat(250)),
            Err(TopicNameError::TooLong { length: 250 })
        );
        assert_eq!(validate_topic_name(&"a".repeat(249)), Ok(()));
        assert_eq!(
            validate_topic_name("bad topic"),
            Err(TopicNameError::BadCharacter { found: ' ' })
        );
        assert_eq!(
            validate_topic_name("a/b"),
            Err(TopicNameError::BadCharacter { found: '/' })
        );
        assert_eq!(validate_topic_name(".."), Err(TopicNameError::Reserved));
        assert_eq!(validate_topic_name("__meta"), Err(TopicNameError::Internal));
    }

    #[test]
    fn epoch_and_offset_arithmetic_is_checked_not_wrapping() {
        assert_eq!(Epoch(u64::MAX).checked_next(), None);
        assert_eq!(Epoch(6).checked_next(), Some(Epoch(7)));
        assert_eq!(Offset(u64::MAX).checked_plus(1), None);
        assert_eq!(Offset(5).checked_plus(3), Some(Offset(8)));
        assert!(std::panic::catch_unwind(|| Epoch(u64::MAX).next()).is_err());
        assert!(std::panic::catch_unwind(|| Offset(u64::MAX).plus(1)).is_err());
    }
}
