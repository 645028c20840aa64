//! Consumer-group coordination, as a pure state machine (no actix, no I/O, time as input).
//! The node crate's `group::runtime` runs one [`state::Coordinator`] over its `__offsets`
//! partition.
//!
//! Map of the modules, in the order a heartbeat flows through them:
//!
//! - [`state`]: the [`state::Coordinator`] of the groups of one `__offsets` partition:
//!   heartbeats (join, leave, static membership, session and rebalance timeouts),
//!   incremental KIP-848 reconciliation, member-epoch fencing, commits, admin requests.
//! - [`assign`]: the server-side assignors (range, round-robin, sticky) computing targets.
//! - [`classic`]: Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup), whose membership lives in the coordinator's memory.
//! - [`records`]: the [`records::GroupRecord`]s a coordinator appends to `__offsets`; replaying
//!   them rebuilds the coordinator after a failover.
//!
//! Invariants, asserted after every applied record: GRP-1 no partition is held (assigned or
//! being revoked) by two members of a group; GRP-2 a member never both owns and revokes a
//! partition; GRP-3 no member epoch is above the group's epoch counter.

pub mod assign;
pub mod classic;
pub mod records;
pub mod state;

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
