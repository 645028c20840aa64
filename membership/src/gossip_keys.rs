//! The only place that knows gossip key names and value formats.
//!
//! A node publishes four string values under its chitchat identity (node id as decimal,
//! generation, gossip address): its client address, its peer address, its readiness and its
//! leadership hints; and, when it runs them, the addresses of its Kafka and HTTP listeners.
//! Peers' values are untrusted input: decoding returns typed errors.

use cairn_protocol::NodeId;
use chitchat::{ChitchatId, NodeState};

use crate::config::{Generation, MembershipConfig};
use crate::hints::{HintsError, LeadershipHints};
use crate::node::NodeInfo;

/// Keys are short because every delta carries them.
const KEY_CLIENT_ADDR: &str = "client";
const KEY_PEER_ADDR: &str = "peer";
const KEY_READY: &str = "ready";
const KEY_HINTS: &str = "hints";
/// HOST:PORT of the node's Kafka listener; absent when it runs none.
const KEY_KAFKA_ADDR: &str = "kafka";
/// HOST:PORT of the node's HTTP listener; absent when it runs none.
const KEY_HTTP_ADDR: &str = "http";
/// Longest HOST:PORT read from a peer (a DNS name is at most 253 bytes, plus the port).
const HOST_PORT_BYTES_MAX: usize = 261;

const READY_YES: &str = "1";
const READY_NO: &str = "0";

/// Why a peer's gossip could not be read as a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NodeDecodeError {
    #[error("chitchat node id {0:?} is not a Cairn node id")]
    BadNodeId(String),
    #[error("key {0:?} is missing")]
    MissingKey(&'static str),
    #[error("key {0:?} does not hold a socket address")]
    BadAddress(&'static str),
    #[error("key {KEY_KAFKA_ADDR:?} does not hold HOST:PORT")]
    BadKafkaAddress,
    #[error("key {KEY_HTTP_ADDR:?} does not hold HOST:PORT")]
    BadHttpAddress,
    #[error("key {KEY_READY:?} is neither {READY_YES:?} nor {READY_NO:?}")]
    BadReady,
}

/// The chitchat node id for a Cairn node id.
pub(crate) fn chitchat_node_name(node_id: NodeId) -> String {
    node_id.0.to_string()
}

/// The values a node starts gossiping with: not ready, no hints.
pub(crate) fn initial_key_values(config: &MembershipConfig) -> Vec<(String, String)> {
    vec![
        (KEY_CLIENT_ADDR.into(), config.client_addr().to_string()),
        (KEY_PEER_ADDR.into(), config.peer_addr().to_string()),
        (KEY_READY.into(), READY_NO.into()),
        (KEY_HINTS.into(), String::new()),
    ]
    .into_iter()
    .chain(
        config
            .kafka_addr()
            .map(|address| (KEY_KAFKA_ADDR.into(), address.to_string())),
    )
    .chain(
        config
            .http_addr()
            .map(|address| (KEY_HTTP_ADDR.into(), address.to_string())),
    )
    .collect()
}

/// HOST:PORT with a non-empty host of printable ASCII and a non-zero port.
fn is_host_port(address: &str) -> bool {
    address.len() <= HOST_PORT_BYTES_MAX
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host.bytes().all(|byte| byte.is_ascii_graphic())
                && port.parse::<u16>().is_ok_and(|port| port > 0)
        })
}

/// Setting an unchanged value is a no-op in chitchat, so this does not cause gossip traffic.
pub(crate) fn publish_ready(state: &mut NodeState, ready: bool) {
    state.set(KEY_READY, if ready { READY_YES } else { READY_NO });
}

/// `encoded` was produced by [`LeadershipHints::encode`] and checked against the size limit.
pub(crate) fn publish_hints(state: &mut NodeState, encoded: &str) {
    state.set(KEY_HINTS, encoded);
}

/// Reads a peer's gossip as a [`NodeInfo`] with `alive` false (the caller knows liveness).
/// Hints that fail to decode leave `hints` empty and are reported beside the node, so that a
/// node with bad hints is still visible.
pub(crate) fn decode_node(
    chitchat_id: &ChitchatId,
    state: &NodeState,
) -> Result<(NodeInfo, Option<HintsError>), NodeDecodeError> {
    let node_id = parse_node_id(&chitchat_id.node_id)?;
    let address = |key: &'static str| {
        state
            .get(key)
            .ok_or(NodeDecodeError::MissingKey(key))?
            .parse()
            .map_err(|_| NodeDecodeError::BadAddress(key))
    };
    let client_addr = address(KEY_CLIENT_ADDR)?;
    let peer_addr = address(KEY_PEER_ADDR)?;
    let ready = match state.get(KEY_READY) {
        Some(READY_YES) => true,
        Some(READY_NO) => false,
        Some(_) => return Err(NodeDecodeError::BadReady),
        None => return Err(NodeDecodeError::MissingKey(KEY_READY)),
    };
    let kafka_addr = match state.get(KEY_KAFKA_ADDR) {
        None => None,
        Some(address) if is_host_port(address) => Some(address.to_string()),
        Some(_) => return Err(NodeDecodeError::BadKafkaAddress),
    };
    let http_addr = match state.get(KEY_HTTP_ADDR) {
        None => None,
        Some(address) if is_host_port(address) => Some(address.to_string()),
        Some(_) => return Err(NodeDecodeError::BadHttpAddress),
    };
    let (hints, hints_error) = match LeadershipHints::decode(state.get(KEY_HINTS).unwrap_or("")) {
        Ok(hints) => (hints, None),
        Err(error) => (LeadershipHints::new(), Some(error)),
    };
    let info = NodeInfo {
        node_id,
        generation: Generation(chitchat_id.generation_id),
        gossip_addr: chitchat_id.gossip_advertise_addr,
        client_addr,
        peer_addr,
        kafka_addr,
        http_addr,
        ready,
        alive: false,
        hints,
    };
    Ok((info, hints_error))
}

/// Plain decimal only, so that one node id has exactly one chitchat name.
fn parse_node_id(name: &str) -> Result<NodeId, NodeDecodeError> {
    let bad = || NodeDecodeError::BadNodeId(name.to_string());
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) || name.len() > 10 {
        return Err(bad());
    }
    if name.len() > 1 && name.starts_with('0') {
        return Err(bad());
    }
    name.parse::<u32>().map(NodeId).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MembershipSettings;

    fn config() -> MembershipConfig {
        MembershipSettings::new(
            "c",
            NodeId(42),
            "127.0.0.1:7000".parse().unwrap(),
            "127.0.0.1:9092".parse().unwrap(),
            "127.0.0.1:9093".parse().unwrap(),
        )
        .validate(Generation(5))
        .unwrap()
    }

    fn state_with(values: &[(&str, &str)]) -> NodeState {
        let mut state = NodeState::for_test();
        for (key, value) in values {
            state.set(*key, *value);
        }
        state
    }

    fn id(name: &str) -> ChitchatId {
        ChitchatId::new(name, 5, "127.0.0.1:7000".parse().unwrap())
    }

    #[test]
    fn published_values_decode_back() {
        let mut state = NodeState::for_test();
        for (key, value) in initial_key_values(&config()) {
            state.set(key, value);
        }
        let chitchat_id = id(&chitchat_node_name(NodeId(42)));
        let (info, hints_error) = decode_node(&chitchat_id, &state).unwrap();
        assert_eq!(info.node_id, NodeId(42));
        assert_eq!(info.generation, Generation(5));
        assert_eq!(info.client_addr, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(info.peer_addr, "127.0.0.1:9093".parse().unwrap());
        assert!(!info.ready);
        assert!(info.hints.is_empty());
        assert_eq!(hints_error, None);

        publish_ready(&mut state, true);
        let mut hints = LeadershipHints::new();
        hints
            .insert(
                "t",
                cairn_protocol::PartitionId(2),
                cairn_protocol::Epoch(9),
            )
            .unwrap();
        publish_hints(&mut state, &hints.encode());
        let (info, _) = decode_node(&chitchat_id, &state).unwrap();
        assert!(info.ready);
        assert_eq!(info.hints, hints);
    }

    #[test]
    fn untrusted_values_give_typed_errors() {
        let good = [
            (KEY_CLIENT_ADDR, "127.0.0.1:1"),
            (KEY_PEER_ADDR, "127.0.0.1:2"),
            (KEY_READY, "1"),
        ];
        for name in ["", "x", "-1", "+1", "01", "4294967296", "99999999999"] {
            assert!(matches!(
                decode_node(&id(name), &state_with(&good)),
                Err(NodeDecodeError::BadNodeId(_))
            ));
        }
        assert!(decode_node(&id("0"), &state_with(&good)).is_ok());
        assert_eq!(
            decode_node(&id("1"), &state_with(&good[1..])),
            Err(NodeDecodeError::MissingKey(KEY_CLIENT_ADDR))
        );
        assert_eq!(
            decode_node(
                &id("1"),
                &state_with(&[(KEY_CLIENT_ADDR, "nope"), good[1], good[2]])
            ),
            Err(NodeDecodeError::BadAddress(KEY_CLIENT_ADDR))
        );
        assert_eq!(
            decode_node(
                &id("1"),
                &state_with(&[good[0], good[1], (KEY_READY, "yes")])
            ),
            Err(NodeDecodeError::BadReady)
        );
        let (info, hints_error) = decode_node(
            &id("1"),
            &state_with(&[good[0], good[1], good[2], (KEY_HINTS, "garbage")]),
        )
        .unwrap();
        assert!(info.hints.is_empty());
        assert!(hints_error.is_some());
        for bad in ["", "nope", "host:0", "host:99999", ":9092", "a b:9092"] {
            assert_eq!(
                decode_node(
                    &id("1"),
                    &state_with(&[good[0], good[1], good[2], (KEY_KAFKA_ADDR, bad)])
                ),
                Err(NodeDecodeError::BadKafkaAddress),
                "{bad:?}"
            );
            assert_eq!(
                decode_node(
                    &id("1"),
                    &state_with(&[good[0], good[1], good[2], (KEY_HTTP_ADDR, bad)])
                ),
                Err(NodeDecodeError::BadHttpAddress),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_kafka_and_http_addresses_are_published_only_when_there_are_some() {
        let mut config = MembershipSettings::new(
            "c",
            NodeId(42),
            "127.0.0.1:7000".parse().unwrap(),
            "127.0.0.1:9092".parse().unwrap(),
            "127.0.0.1:9093".parse().unwrap(),
        );
        config.kafka_addr = Some("broker-1.example:9092".to_string());
        config.http_addr = Some("broker-1.example:9644".to_string());
        let config = config.validate(Generation(5)).unwrap();
        let mut state = NodeState::for_test();
        for (key, value) in initial_key_values(&config) {
            state.set(key, value);
        }
        let (info, _) = decode_node(&id("42"), &state).unwrap();
        assert_eq!(info.kafka_addr.as_deref(), Some("broker-1.example:9092"));
        assert_eq!(info.http_addr.as_deref(), Some("broker-1.example:9644"));
        let (info, _) = decode_node(
            &id("42"),
            &state_with(&[
                (KEY_CLIENT_ADDR, "127.0.0.1:1"),
                (KEY_PEER_ADDR, "127.0.0.1:2"),
                (KEY_READY, "1"),
            ]),
        )
        .unwrap();
        assert_eq!(info.kafka_addr, None);
        assert_eq!(info.http_addr, None);
    }
}
