//! The replica engine. Implementation in progress: see the crate docs for the contract.

use crate::{Config, ConfigError, Effect, Input, Millis, Recovered, ReplicaStatus};
use cairn_protocol::NodeId;

/// One partition replica's protocol state.
#[derive(Debug)]
pub struct Replica {
    _private: (),
}

impl Replica {
    /// A replica of a partition whose voters are `voters` (which include `node`), recovering
    /// from storage. Returns the replica and its first effects.
    pub fn new(
        config: Config,
        node: NodeId,
        voters: Vec<NodeId>,
        recovered: Recovered,
        now: Millis,
    ) -> Result<(Replica, Vec<Effect>), ConfigError> {
        let _ = (config, node, voters, recovered, now);
        todo!("replica engine")
    }

    /// Feeds one input; returns what the runtime must do, in order.
    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        let _ = (now, input);
        todo!("replica engine")
    }

    pub fn status(&self) -> ReplicaStatus {
        todo!("replica engine")
    }
}
