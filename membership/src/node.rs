//! What the rest of the code sees of a node: [`NodeInfo`], and the typed [`ClusterChange`]s.

use std::net::SocketAddr;

use cairn_protocol::NodeId;

use crate::config::Generation;
use crate::hints::LeadershipHints;

/// One node as this node currently sees it through gossip.
///
/// Everything here is a hint. `alive` is this node's local opinion from its failure detector:
/// another node may disagree, and a node that looks alive may already have lost its partitions
/// to a new leader. Never decide leadership or fencing from it; epochs and quorums decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// The process incarnation; a higher one replaces a lower one of the same node id.
    pub generation: Generation,
    pub gossip_addr: SocketAddr,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where peers send replication RPCs.
    pub peer_addr: SocketAddr,
    /// Where Kafka clients connect (HOST:PORT as the node advertises it), if the node runs a
    /// Kafka listener.
    pub kafka_addr: Option<String>,
    /// Where the node serves HTTP (HOST:PORT as it advertises it): metrics, health and the
    /// schema registry's REST API, if it runs an HTTP listener.
    pub http_addr: Option<String>,
    /// The node says it is ready to serve (set by its owner with `set_ready`).
    pub ready: bool,
    /// This node's failure detector currently believes the node is up.
    pub alive: bool,
    /// Partitions the node says it leads. Empty when the node published none, or published
    /// hints this node could not decode.
    pub hints: LeadershipHints,
}

/// A change of the cluster as seen locally, keyed by node id.
///
/// For one node id the stream reads `Joined`, then any number of `Updated`, then `Left`, and
/// possibly `Joined` again later (a restart or a healed partition). A restart with a new
/// generation while the old one still looked alive shows as `Updated` with the new generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    /// The node became alive in this node's view (first seen, or back after `Left`).
    Joined(NodeInfo),
    /// An alive node changed something: a value, or its generation (it restarted).
    Updated(NodeInfo),
    /// This node's failure detector no longer hears the node.
    Left(NodeId),
}

impl ClusterChange {
    pub fn node_id(&self) -> NodeId {
        match self {
            ClusterChange::Joined(info) | ClusterChange::Updated(info) => info.node_id,
            ClusterChange::Left(node_id) => *node_id,
        }
    }
}
