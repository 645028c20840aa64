//! The Cairn broker: one node process.
//!
//! Map of the modules, in the order a request flows through them:
//!
//! - [`cli`]: `cairn node` flags; builds the config and runs the node.
//! - [`dev`]: `cairn dev`, a local cluster of N node processes in the foreground.
//! - [`config`]: file -> builder -> validated [`config::NodeConfig`], presets, named rules.
//! - [`node`]: start-up (data dir, store, arbiters, listener, ready line) and graceful shutdown.
//! - [`server`]: accept loop and connections (frames, pipelining, in-flight limit), then one
//!   module per request kind.
//! - [`kafka`]: the Kafka listener: Kafka's wire protocol over the same broker, under the
//!   same connection limits and budgets, one module per Kafka API.
//! - [`broker`]: what the node hosts: the `__meta` partition, the applier that turns committed
//!   metadata into topics and partition actors, and the lookups requests need.
//! - [`group`]: the consumer-group coordinator: the pure state machine (from `cairn-control`,
//!   re-exported) and the runtime that runs it over an `__offsets` partition.
//! - [`groups`]: the coordinators this node runs on the `__offsets` partitions it leads.
//! - [`meta`]: `__meta` records and the deterministic [`meta::MetadataState`] they build
//!   (pure, from `cairn-control`).
//! - [`placement`]: which nodes hold a new topic's replicas (pure, from `cairn-control`).
//! - [`partition`]: the partition actor (one per hosted replica): replica inputs in, effects
//!   executed (append, group-commit flush, reply, high-watermark watch), reads for fetch.
//! - [`peer`]: replication traffic between nodes: one outgoing connection per peer on the
//!   peer's ordinary listener, bounded queues that drop, frames batching many partitions; and
//!   its in-memory twin ([`peer::memory`]), on which the replicas of a cluster run in one
//!   process, on virtual time, in the fast tests.
//! - [`peer_auth`]: the cluster secret and the handshake by which peers prove they hold it.
//! - [`schemas`]: the schema registry (Confluent's REST API) over the internal topic `_schemas`.
//! - [`http`]: the HTTP listener (`/metrics`, `/health`, `/ready`), bounded and apart from
//!   the client listener.
//! - [`metrics`]: the Prometheus metrics: event counters and histograms, and a collector that
//!   reads partition state at scrape time.
//! - [`logging`]: log lines go through a bounded queue to one stderr writer thread, so a full
//!   or closed stderr never blocks the node; and the panic hook.
//!
//! # Panic policy
//!
//! A panic is a bug (a failed assertion or invariant), never an operational error: those are
//! typed errors. A `cairn node` process aborts on any panic, on any thread, in every build:
//! release builds compile with `panic = "abort"`, and the hook [`logging::install_panic_hook`]
//! (installed by [`cli::run_node`]) logs the panic with a backtrace, waits a bounded time for
//! the line to reach stderr, and aborts itself, so debug builds behave the same. A node that
//! lost one partition actor, connection task or arbiter to a panic would otherwise go on
//! advertising the leadership that actor held; an aborted node is seen to leave, its leases
//! expire and other replicas take over, and it recovers from its log when restarted.
//! (Tests and benchmarks are built with unwinding, as Cargo requires; only the binary's hook
//! aborts.) A partition actor that stops for any other reason (its topic deleted, shutdown)
//! clears its published role, so it is never advertised as leader either.

pub mod broker;
pub mod cli;
pub mod compactor;
pub mod config;
pub mod dev;
pub mod expiry_clock;
pub mod frame_writer;
pub mod group;
pub mod groups;
pub mod http;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod peer;
pub mod peer_auth;
pub mod schemas;
pub mod server;

pub use cairn_control::{meta, placement};
