//! Consumer-group coordination. The pure state machine (coordinator, classic protocol,
//! assignors, records) lives in the `cairn-control` crate and is re-exported here; this node
//! adds [`runtime`]: [`runtime::PartitionCoordinator`], one coordinator over its `__offsets`
//! partition (through the [`runtime::OffsetsLog`] trait): load by replay, one request at a
//! time, reply only once the request's records are committed.

pub use cairn_control::group::{assign, classic, records, state};

pub mod runtime;
