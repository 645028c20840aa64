//! How Cairn's identities look to Kafka clients: broker ids, topic ids, epochs, addresses.

use crate::meta::TopicId;
use cairn_protocol::{Epoch, NodeId};
use kafka_protocol::messages::BrokerId;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A node's Kafka broker id is its node id; `config` refuses node ids above `i32::MAX` when
/// the Kafka listener is on, so this conversion only saturates for nodes gossip told of.
pub fn broker_id(node: NodeId) -> BrokerId {
    BrokerId(i32::try_from(node.0).unwrap_or(-1))
}

/// A topic's Kafka id: derived from the `__meta` offset that created this incarnation of the
/// topic and its name, so it is the same on every node and across restarts, and a topic
/// deleted and created again under the same name gets a new one (as in Kafka).
pub fn topic_uuid(id: TopicId, name: &str) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"cairn topic id\0");
    hasher.update(id.0.to_be_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Kafka reserves the nil id and 0...01 (the metadata topic); a version 4 style id
    // (random bits from the hash) is neither.
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Kafka's leader epochs are 32-bit: Cairn's grow by one per election, so this saturates
/// only after 2^31 elections of one partition.
pub fn leader_epoch(epoch: Epoch) -> i32 {
    i32::try_from(epoch.0).unwrap_or(i32::MAX)
}

/// Host and port of an advertised `HOST:PORT` (validated by `config` and by gossip
/// decoding); `None` for anything else.
pub fn host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    // `[::1]:9092` advertises the IPv6 host without its brackets.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && port > 0).then(|| (host.to_string(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_are_stable_and_distinct() {
        let first = topic_uuid(TopicId(7), "orders");
        assert_eq!(first, topic_uuid(TopicId(7), "orders"));
        assert_ne!(first, topic_uuid(TopicId(8), "orders"));
        assert_ne!(first, topic_uuid(TopicId(7), "payments"));
        assert!(!first.is_nil());
        assert_ne!(first, Uuid::from_u128(1));
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            host_port("127.0.0.1:9092"),
            Some(("127.0.0.1".to_string(), 9092))
        );
        assert_eq!(host_port("[::1]:9092"), Some(("::1".to_string(), 9092)));
        assert_eq!(host_port("broker:0"), None);
        assert_eq!(host_port("broker"), None);
    }

    #[test]
    fn ids_convert_both_ways_within_range() {
        assert_eq!(broker_id(NodeId(3)), BrokerId(3));
        assert_eq!(broker_id(NodeId(u32::MAX)), BrokerId(-1));
        assert_eq!(leader_epoch(Epoch(u64::MAX)), i32::MAX);
    }
}
