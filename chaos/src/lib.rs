//! Chaos campaigns against real `cairn node` processes (DESIGN section 8), and the checker of
//! what they record.
//!
//! Map of the modules:
//! - [`history`]: the recorded operations (`history.jsonl`), one JSON object per line.
//! - [`checker`]: finds every anomaly kind in a history and compares the replicas' logs.
//! - [`replicas`]: reads a stopped node's partition logs from its sled files.

pub mod checker;
pub mod history;

#[cfg(test)]
mod checker_tests;
