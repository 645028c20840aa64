//! The schema registry's engine (issue 18, part 2): Confluent Schema Registry semantics over
//! the records of the internal topic `_schemas`. Pure: no I/O, no clock.
//!
//! - [`kind`]: schema types (Avro, JSON Schema, Protobuf), parsing, the canonical form that decides identity,
//!   and reader/writer compatibility under the Confluent levels.
//! - [`protobuf`] and [`json`]: those two types' parsing and Confluent's compatibility rules.
//! - [`records`]: the `_schemas` records, in Confluent's key/value JSON shapes, so that the
//!   log compacts correctly once compaction exists (issue 18, part 1).
//! - [`state`]: [`state::Registry`], the state every node rebuilds by applying committed
//!   `_schemas` records in offset order, with the queries the REST API answers and the
//!   planners that turn a write request into the records to append.
//!
//! Writers race (any node may append); the state machine settles every race at apply time,
//! deterministically: a record that would give an id a second schema, a schema a second id,
//! or a subject a version it already has with another id is ignored by every node alike.

pub mod json;
pub mod kind;
mod proto_text;
pub mod protobuf;
pub mod records;
pub mod state;

pub use kind::{
    Level, MessageName, ParsedSchema, RecordNames, Reference, SchemaRequest, SchemaType,
};
pub use records::SchemaRecord;
pub use state::{Registry, RegistryError, VersionSpec, VersionView};

/// Name of the internal topic that holds the registry (Confluent's and Redpanda's name).
pub const SCHEMAS_TOPIC: &str = "_schemas";
