//! The measuring half of `cairn-bench`, a library so that the peer-broker comparison
//! (`benches/compare`, a separate crate kept out of the workspace for its build cost) measures
//! its peers with exactly the same code.
//!
//! Map of the modules:
//!
//! - [`workload`]: workload files (TOML): topic shape, record size, clients, rate, durations.
//! - [`harness`]: what every driver shares: the time plan, the paced producer loop with
//!   publish latency from the intended send time, end-to-end latency from a stamp in each
//!   record, the progress line, CPU and memory per node from /proc, the [`harness::Outcome`].
//! - [`cairn_driver`]: a workload on local `cairn node` processes, and `cairn-bench run`.
//! - [`kafka_driver`]: a workload through any Kafka bootstrap address with librdkafka (Cairn's
//!   Kafka listener, `cairn-bench run --driver kafka`; later Apache Kafka as a peer).
//! - [`suite`]: several workloads on several systems, written as report.json / .md / .svg
//!   with the ratios between systems.
//! - [`node_process`]: starting local Cairn nodes; CPU time and peak memory from /proc.
//! - [`report`]: hdrhistogram percentiles and throughput arithmetic.

pub mod cairn_driver;
pub mod harness;
pub mod kafka_driver;
pub mod node_process;
pub mod report;
pub mod suite;
pub mod workload;
