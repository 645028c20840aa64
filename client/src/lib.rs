//! The Rust client for Cairn: admin, producer, consumer.
//!
//! Map of the modules, in the order a request flows through them:
//!
//! - [`config`]: [`ClientConfig`] (bootstrap brokers, timeouts, in-flight bound),
//!   [`ProducerConfig`], [`ConsumerConfig`]: defaults plus chainable setters, every time span
//!   a [`std::time::Duration`].
//! - [`error`]: [`ClientError`], wrapping the node's typed [`ApiError`] refusals, transport
//!   failures and protocol errors, with [`ClientError::is_retriable`].
//! - [`connection`]: one pipelined TCP connection per node (handshake, correlation ids, one
//!   writer and one reader task, a bounded number of requests in flight, request timeouts).
//! - `cluster` (internal): the metadata cache (brokers, partition leaders), routing to leaders,
//!   reconnects, and the retry-with-backoff loop bounded by a deadline.
//! - [`admin`]: [`Admin`] creates, deletes, lists and describes topics.
//! - [`partitioner`]: Kafka's murmur2 key partitioner.
//! - `idempotence` (internal): the idempotent producer's id, epochs and sequences per
//!   partition, so the leader writes a retried batch once.
//! - `accumulator` (internal) and [`producer`]: [`Producer`] batches records per partition
//!   with a bounded buffer (backpressure) and resolves a [`DeliveryFuture`] per record.
//! - [`consumer`]: [`Consumer`] reads assigned partitions with multi-partition long polls,
//!   or joins a consumer group with [`Consumer::subscribe`].
//! - [`group`]: group membership (the heartbeat task, reconciliation, commits, the
//!   [`RebalanceListener`]); the coordinator is found with `FindCoordinator` and cached by
//!   `cluster`.
//! - `cli` (feature `cli`): the `cairn topic|produce|consume|group` subcommands.
//!
//! Everything is async on tokio; create clients inside a runtime.
//!
//! The configs, [`ClientError`], [`AutoOffsetReset`], [`SeekTo`], [`ConsumerRecord`] and
//! [`RecordMetadata`] are `#[non_exhaustive]`: build configs with `new`/`default` and setters,
//! and match errors with a wildcard arm, so that adding a setting or a failure class is not a
//! breaking change.
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_client::ClientError> {
//! use cairn_client::*;
//! use std::time::Duration;
//!
//! let config = ClientConfig::new("127.0.0.1:7171")?;
//! Admin::new(config.clone())?
//!     .create_topic("events", 3, None, TopicConfig::default())
//!     .await?;
//! let producer = Producer::new(
//!     config.clone(),
//!     ProducerConfig::new().acks(Acks::All).linger(Duration::from_millis(5)),
//! )
//! .await?;
//! producer.send("events", Record::new("hello").with_key("k")).await?;
//! producer.flush().await?;
//! let mut consumer = Consumer::new(
//!     config,
//!     ConsumerConfig::new().auto_offset_reset(AutoOffsetReset::Earliest),
//! )?;
//! consumer.assign_topic("events").await?;
//! let records = consumer.poll(Duration::from_secs(1)).await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod accumulator;
pub mod admin;
mod cluster;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
mod idempotence;
pub mod partitioner;
pub mod producer;

/// The client subcommands of the `cairn` binary; not an API for applications.
#[cfg(feature = "cli")]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod cli;

pub use admin::Admin;
// Every type the public API takes or returns, so no caller needs `cairn-protocol` itself.
pub use cairn_protocol::group::{
    CommittedOffset, CommittedPartitionOffset, DescribeGroupResponse, GroupListing, GroupState,
    MemberDescription, MemberEpoch, OffsetResetTarget, TopicPartitions,
};
pub use cairn_protocol::messages::{
    BrokerInfo, ClusterStatusResponse, ConfigChange, DescribeTopicResponse, Liveness, NodeStatus,
    OffsetSpec, PartitionDescription, PartitionMetadata, PartitionStatus, TopicConfig,
    TopicMetadata, TopicSummary,
};
pub use cairn_protocol::{Acks, ApiError, Compression, Epoch, Header, NodeId, Offset, Record};
pub use config::{AutoOffsetReset, ClientConfig, ConsumerConfig, ProducerConfig};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerRecord, SeekTo, TopicPartition};
pub use error::ClientError;
pub use group::{CommitPositionsOnRevoke, RebalanceListener};
pub use producer::{DeliveryFuture, Producer, RecordMetadata};

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;
