//! The Rust client for Cairn: admin, producer, consumer.
//! (Implementation in progress.)

#[cfg(feature = "cli")]
pub mod cli;
