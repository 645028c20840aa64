//! Cairn's wire contract: everything two Cairn processes must agree on, and no I/O.
//!
//! Map of the modules, in the order data flows through them:
//!
//! - [`ids`]: newtypes for offsets, epochs, node and partition ids, and topic-name rules.
//! - [`batch`]: the record batch, the unit in which records travel *and* are stored. Clients
//!   build batches, the partition leader stamps base offset and epoch into them (outside the
//!   checksum, so stamping does not re-hash), storage keeps them as single values, consumers
//!   decode them. The checksum (CRC32C) covers everything a stamp does not touch.
//! - [`compression`]: Kafka's codecs (gzip, snappy, lz4, zstd) for a batch's records, every
//!   decoder bounded by the size its output may reach.
//! - [`messages`]: typed requests and responses, one pair per operation.
//! - [`group`]: consumer-group requests (KIP-848 heartbeats, commits, admin) and the rule
//!   that maps a group to its coordinating `__offsets` partition.
//! - [`error`]: [`ApiError`], the typed refusals every reply may carry.
//! - [`peer`]: node-to-node replication frames (a hello, then batches of per-partition
//!   messages), sharing the frame codec with client traffic.
//! - [`frame`]: length-prefixed frames with a maximum size, a versioned envelope with a
//!   correlation id (so requests pipeline), encoded with rmp-serde as maps so that old readers
//!   skip fields added later.

pub mod batch;
pub mod compaction;
pub mod compression;
pub mod error;
pub mod frame;
pub mod group;
pub mod ids;
pub mod messages;
pub mod peer;
mod varint;

pub use batch::{Header, Record, RecordBatch, RecordBatchBuilder, RecordView};
pub use compression::Compression;
pub use error::{ApiError, RecordError};
pub use frame::{RequestFrame, ResponseFrame};
pub use ids::{Epoch, NodeId, Offset, PartitionId};
pub use messages::{Acks, OffsetSpec, Request, Response};
