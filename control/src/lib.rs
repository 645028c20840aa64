//! Cairn's control-plane state machines, as `replica` is its data plane's: pure (no actix, no
//! I/O, no clock; time is an input), deterministic, tested here without a node.
//!
//! - [`group`]: the consumer-group coordinator of one `__offsets` partition (KIP-848 groups,
//!   Kafka's classic protocol, assignors, the records it appends and replays).
//! - [`meta`]: `__meta` records and the deterministic [`meta::MetadataState`] they build.
//! - [`placement`]: which nodes hold a new topic's replicas (balanced, preferred leader first).
//! - [`schema`]: the schema registry: Avro schemas, compatibility, and the state rebuilt from
//!   `_schemas`.
//!
//! The node crate drives them: it feeds requests and committed records in, appends what they
//! return, and owns every socket, file and timer.

pub mod group;
pub mod meta;
pub mod placement;
pub mod schema;
