//! Leadership hints: which partitions a node believes it leads, and at which epoch.
//!
//! A hint lets a client or peer guess where to send a request; it is never an authority. The
//! node that receives the request checks its own epoch and answers `NotLeader` when the hint was
//! stale. Hints travel in gossip as one compact text value:
//!
//! ```text
//! orders:0@3,1@3,7@5;__meta:0@12
//! ```
//!
//! Topics are separated by `;`, a topic's name from its partitions by `:`, partitions by `,`,
//! a partition index from its epoch by `@`. Topic names may only hold ASCII letters, digits,
//! `.`, `_` and `-` (Kafka's characters), so the separators are unambiguous.

use std::collections::BTreeMap;

use cairn_protocol::ids::TOPIC_NAME_BYTES_MAX;
use cairn_protocol::{Epoch, PartitionId};

use crate::config::HINT_BYTES_CEILING;

/// The partitions a node leads, by topic, with the epoch of each leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadershipHints {
    topics: BTreeMap<String, BTreeMap<PartitionId, Epoch>>,
}

/// Why hints were refused, either when set locally or when decoded from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintsError {
    /// The encoding exceeds the configured `hint_bytes_max` (or, decoding, the hard ceiling).
    #[error("leadership hints encode to {bytes} bytes; at most {max} are allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("topic name {topic:?} cannot appear in hints (empty, too long or bad characters)")]
    BadTopic { topic: String },
    #[error("malformed hints: {reason}")]
    Malformed { reason: &'static str },
}

impl LeadershipHints {
    pub fn new() -> LeadershipHints {
        LeadershipHints::default()
    }

    /// Records that this node leads `topic`/`partition` at `epoch`, replacing any earlier epoch.
    pub fn insert(
        &mut self,
        topic: &str,
        partition: PartitionId,
        epoch: Epoch,
    ) -> Result<(), HintsError> {
        check_topic(topic)?;
        self.topics
            .entry(topic.to_string())
            .or_default()
            .insert(partition, epoch);
        Ok(())
    }

    /// Forgets a leadership, returning its epoch if it was there.
    pub fn remove(&mut self, topic: &str, partition: PartitionId) -> Option<Epoch> {
        let partitions = self.topics.get_mut(topic)?;
        let epoch = partitions.remove(&partition);
        if partitions.is_empty() {
            self.topics.remove(topic);
        }
        epoch
    }

    pub fn get(&self, topic: &str, partition: PartitionId) -> Option<Epoch> {
        self.topics.get(topic)?.get(&partition).copied()
    }

    /// Every (topic, partition, epoch), in topic then partition order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, PartitionId, Epoch)> {
        self.topics.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(partition, epoch)| (topic.as_str(), *partition, *epoch))
        })
    }

    pub fn len(&self) -> usize {
        self.topics.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The compact gossip encoding (see the module documentation).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (topic_index, (topic, partitions)) in self.topics.iter().enumerate() {
            if topic_index > 0 {
                out.push(';');
            }
            out.push_str(topic);
            out.push(':');
            for (partition_index, (partition, epoch)) in partitions.iter().enumerate() {
                if partition_index > 0 {
                    out.push(',');
                }
                out.push_str(&partition.0.to_string());
                out.push('@');
                out.push_str(&epoch.0.to_string());
            }
        }
        out
    }

    /// Decodes hints published by a peer. The input is untrusted: anything malformed is a typed
    /// error, never a panic, and inputs above [`HINT_BYTES_CEILING`] are refused unread.
    pub fn decode(text: &str) -> Result<LeadershipHints, HintsError> {
        if text.len() > HINT_BYTES_CEILING {
            return Err(HintsError::TooLarge {
                bytes: text.len(),
                max: HINT_BYTES_CEILING,
            });
        }
        let mut hints = LeadershipHints::new();
        if text.is_empty() {
            return Ok(hints);
        }
        for topic_part in text.split(';') {
            let (topic, partitions) = topic_part.split_once(':').ok_or(HintsError::Malformed {
                reason: "a topic entry has no ':'",
            })?;
            check_topic(topic)?;
            if hints.topics.contains_key(topic) {
                return Err(HintsError::Malformed {
                    reason: "a topic appears twice",
                });
            }
            let mut led = BTreeMap::new();
            for entry in partitions.split(',') {
                let (partition, epoch) = entry.split_once('@').ok_or(HintsError::Malformed {
                    reason: "a partition entry has no '@'",
                })?;
                let partition = parse_decimal::<u32>(partition)?;
                let epoch = parse_decimal::<u64>(epoch)?;
                if led.insert(PartitionId(partition), Epoch(epoch)).is_some() {
                    return Err(HintsError::Malformed {
                        reason: "a partition appears twice",
                    });
                }
            }
            hints.topics.insert(topic.to_string(), led);
        }
        Ok(hints)
    }
}

/// Plain decimal digits only (no sign, no spaces), so that every value has one encoding.
fn parse_decimal<T: std::str::FromStr>(text: &str) -> Result<T, HintsError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HintsError::Malformed {
            reason: "a partition or epoch is not a decimal number",
        });
    }
    text.parse().map_err(|_| HintsError::Malformed {
        reason: "a partition or epoch is out of range",
    })
}

fn check_topic(topic: &str) -> Result<(), HintsError> {
    let valid = !topic.is_empty()
        && topic.len() <= TOPIC_NAME_BYTES_MAX
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(HintsError::BadTopic {
            topic: topic.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_compactly_and_round_trips() {
        let mut hints = LeadershipHints::new();
        hints.insert("orders", PartitionId(7), Epoch(5)).unwrap();
        hints.insert("orders", PartitionId(0), Epoch(3)).unwrap();
        hints.insert("__meta", PartitionId(0), Epoch(12)).unwrap();
        hints.insert("orders", PartitionId(1), Epoch(3)).unwrap();
        assert_eq!(hints.encode(), "__meta:0@12;orders:0@3,1@3,7@5");
        assert_eq!(LeadershipHints::decode(&hints.encode()), Ok(hints.clone()));
        assert_eq!(hints.len(), 4);
        assert_eq!(hints.get("orders", PartitionId(7)), Some(Epoch(5)));

        assert_eq!(hints.remove("__meta", PartitionId(0)), Some(Epoch(12)));
        assert_eq!(hints.encode(), "orders:0@3,1@3,7@5");
        assert_eq!(LeadershipHints::decode(""), Ok(LeadershipHints::new()));
        assert_eq!(LeadershipHints::new().encode(), "");
    }

    #[test]
    fn refuses_topic_names_that_would_break_the_encoding() {
        let mut hints = LeadershipHints::new();
        for topic in ["", "a;b", "a:b", "a,b", "a@b", "a b"] {
            assert!(matches!(
                hints.insert(topic, PartitionId(0), Epoch(1)),
                Err(HintsError::BadTopic { .. })
            ));
        }
        let long = "t".repeat(TOPIC_NAME_BYTES_MAX + 1);
        assert!(hints.insert(&long, PartitionId(0), Epoch(1)).is_err());
        assert!(hints.is_empty(), "refused inserts change nothing");
    }

    #[test]
    fn decode_refuses_malformed_input_without_panicking() {
        for bad in [
            "orders",
            "orders:",
            "orders:1",
            "orders:1@",
            "orders:@1",
            "orders:1@2,",
            "orders:-1@2",
            "orders:+1@2",
            "orders:1@2;",
            ";orders:1@2",
            "orders:4294967296@1",
            "orders:1@18446744073709551616",
            "orders:1@2,1@3",
            "orders:1@2;orders:2@2",
            "bad topic:1@2",
            "orders:1@2@3",
            "orders:１@2",
        ] {
            assert!(LeadershipHints::decode(bad).is_err(), "{bad:?} accepted");
        }
        let huge = format!("t:{}", "1@1,".repeat(HINT_BYTES_CEILING));
        assert!(matches!(
            LeadershipHints::decode(&huge),
            Err(HintsError::TooLarge { .. })
        ));
    }
}
