//! Cluster membership for Cairn: who is in the cluster, where to reach them, and what they say
//! they lead, learned through chitchat gossip (scuttlebutt anti-entropy plus a phi-accrual
//! failure detector).
//!
//! Map of the modules, in the order data flows through them:
//!
//! - [`config`]: [`MembershipSettings`] (file/flags, unknown fields refused) validated into a
//!   [`MembershipConfig`], with each cross-field rule named in [`ConfigError`]; [`Generation`].
//! - [`hints`]: [`LeadershipHints`], the compact encoding of "I lead these partitions at these
//!   epochs".
//! - `gossip_keys` (private): the only place that knows gossip key names and value formats;
//!   decodes peers' untrusted values into [`NodeInfo`].
//! - `view` (private): a pure state machine folding observations into the local view and
//!   emitting [`ClusterChange`]s (`Joined`, `Updated`, `Left`), keyed by node id, ignoring lower
//!   generations of a node id.
//! - [`membership`]: [`Membership::start`] runs chitchat and the view task; the handle
//!   publishes readiness and hints and answers [`Membership::snapshot`]; [`ClusterChanges`] is
//!   the bounded stream of changes.
//!
//! Gossip is a hint. Whether a node is alive is this node's local opinion, which may be wrong
//! and may differ between nodes; hints may be stale. Nothing may decide leadership or fencing
//! from membership: authority comes only from epochs and quorums.
//!
//! This crate depends on no other Cairn crate but `cairn-protocol`.

pub mod config;
mod gossip_keys;
pub mod hints;
pub mod membership;
mod node;
mod view;

pub use config::{ConfigError, Generation, MembershipConfig, MembershipSettings};
pub use hints::{HintsError, LeadershipHints};
pub use membership::{ClusterChanges, Membership, StartError};
pub use node::{ClusterChange, NodeInfo};

/// The chitchat transports, re-exported so that callers need not depend on chitchat:
/// `UdpTransport` for real nodes, `ChannelTransport` (in-process, with `add_link` /
/// `remove_link` partitions) and `TransportExt` (drops, delays) for tests.
pub mod transport {
    pub use chitchat::transport::{ChannelTransport, Transport, TransportExt, UdpTransport};
}
