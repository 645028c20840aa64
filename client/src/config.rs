//! Configuration of the client, the producer and the consumer. Each has defaults close to
//! Kafka's, chainable setters (the structs are `#[non_exhaustive]`, so code outside this crate
//! starts from `new`/`default` and sets what it needs), and a `validate` that names the rule a
//! bad value breaks. Every time span is a [`Duration`].
//!
//! ```
//! use cairn_client::{Acks, AutoOffsetReset, ClientConfig, ConsumerConfig, ProducerConfig};
//! use std::time::Duration;
//!
//! let client = ClientConfig::new("127.0.0.1:7171,127.0.0.1:7172")?
//!     .client_id("billing")
//!     .request_timeout(Duration::from_secs(10));
//! let producer = ProducerConfig::new()
//!     .acks(Acks::All)
//!     .linger(Duration::from_millis(5));
//! let consumer = ConsumerConfig::new()
//!     .auto_offset_reset(AutoOffsetReset::Earliest)
//!     .session_timeout(Duration::from_secs(30));
//! client.validate()?;
//! producer.validate()?;
//! consumer.validate()?;
//! # Ok::<(), cairn_client::ClientError>(())
//! ```

use crate::error::{ClientError, Result};
use cairn_protocol::{Acks, Compression};
use std::time::Duration;

/// Chainable setters, one per field, each documented as the field it sets.
macro_rules! setters {
    ($($field:ident: $type:ty;)*) => {
        $(
            #[doc = concat!("Sets `", stringify!($field), "` (see the field's documentation).")]
            #[must_use]
            pub fn $field(mut self, $field: $type) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

/// Milliseconds of `duration` for a wire field of 32 bits, saturating (`validate` refuses
/// spans that do not fit, so this only saturates for configs that skipped it).
pub(crate) fn millis_u32(duration: Duration) -> u32 {
    duration.as_millis().min(u128::from(u32::MAX)) as u32
}

/// Refuses a span below 1 ms: the wire carries milliseconds, and a 0 ms timeout fails
/// everything.
fn at_least_a_millisecond(name: &str, duration: Duration) -> Result<()> {
    if duration < Duration::from_millis(1) {
        return Err(ClientError::invalid(format!(
            "{name} must be at least 1 ms"
        )));
    }
    Ok(())
}

/// Refuses a span that a 32-bit millisecond wire field cannot carry.
fn fits_wire_millis(name: &str, duration: Duration) -> Result<()> {
    if duration.as_millis() > u128::from(u32::MAX) {
        return Err(ClientError::invalid(format!(
            "{name} must be below {} ms (it is sent as 32-bit milliseconds)",
            u32::MAX
        )));
    }
    Ok(())
}

/// Exponential backoff before retry number `attempt` (0-based), from `first`, capped at `max`.
fn backoff(first: Duration, max: Duration, attempt: u32) -> Duration {
    first.saturating_mul(1u32 << attempt.min(16)).min(max)
}

/// How to reach a cluster and how patient to be with it. Shared by [`crate::Admin`],
/// [`crate::Producer`] and [`crate::Consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Brokers to learn the cluster from, `host:port`. Any one reachable broker is enough.
    pub bootstrap: Vec<String>,
    /// Sent in the handshake; shows up in the node's logs.
    pub client_id: String,
    /// How long one request may wait for its reply before the connection is presumed dead.
    pub request_timeout: Duration,
    /// How long establishing a connection (TCP plus handshake) may take. Until a first
    /// broker was reached, also how long unreachable brokers are retried before a request
    /// fails with the connect error (a wrong bootstrap address fails fast).
    pub connect_timeout: Duration,
    /// Requests waiting for replies on one connection; further requests wait for a slot
    /// (backpressure). The server's own limit (learned in the handshake) caps this.
    pub requests_in_flight_max: u32,
    /// Cached metadata older than this is refreshed on its next use, even without errors.
    pub metadata_max_age: Duration,
    /// First wait before retrying a retriable failure; doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest wait between retries. 250 ms: a leader change takes one to two seconds, and a
    /// longer cap (Kafka's is 1 s) mostly adds its own length to the outage a client sees,
    /// for a saving of a few small metadata requests per second while there is no leader.
    pub retry_backoff_max: Duration,
    /// Largest response frame this client accepts (fetch responses are the big ones).
    pub frame_bytes_max: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: vec!["127.0.0.1:7171".to_owned()],
            client_id: "cairn-client".to_owned(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            requests_in_flight_max: 64,
            metadata_max_age: Duration::from_secs(300),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(250),
            frame_bytes_max: 64 * 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// A config for the brokers in `bootstrap`, `host:port[,host:port...]`, with every other
    /// setting at its default.
    pub fn new(bootstrap: &str) -> Result<ClientConfig> {
        Ok(ClientConfig {
            bootstrap: parse_bootstrap(bootstrap)?,
            ..ClientConfig::default()
        })
    }

    /// Sets the bootstrap brokers from a list of `host:port` addresses (checked by
    /// [`ClientConfig::validate`]).
    #[must_use]
    pub fn bootstrap<I, S>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.bootstrap = addresses.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `client_id` (see the field's documentation).
    #[must_use]
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    setters! {
        request_timeout: Duration;
        connect_timeout: Duration;
        requests_in_flight_max: u32;
        metadata_max_age: Duration;
        retry_backoff: Duration;
        retry_backoff_max: Duration;
        frame_bytes_max: u32;
    }

    /// Refuses settings that cannot work (`InvalidArgument`, naming the setting).
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap.is_empty() {
            return Err(ClientError::invalid("the bootstrap list is empty"));
        }
        if self.requests_in_flight_max == 0 {
            return Err(ClientError::invalid(
                "requests_in_flight_max must be at least 1, or nothing could ever be sent",
            ));
        }
        at_least_a_millisecond("request_timeout", self.request_timeout)?;
        at_least_a_millisecond("connect_timeout", self.connect_timeout)?;
        if self.retry_backoff > self.retry_backoff_max {
            return Err(ClientError::invalid(
                "retry_backoff must not exceed retry_backoff_max",
            ));
        }
        if self.frame_bytes_max < 1024 {
            return Err(ClientError::invalid(
                "frame_bytes_max below 1 KiB cannot carry a metadata reply",
            ));
        }
        Ok(())
    }

    /// Backoff before retry number `attempt` (0-based): exponential, capped.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_backoff, self.retry_backoff_max, attempt)
    }
}

/// Parses `host:port[,host:port...]`; blanks around entries are ignored.
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>> {
    let addresses: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect();
    if addresses.is_empty() {
        return Err(ClientError::invalid(format!(
            "bootstrap list {list:?} names no broker"
        )));
    }
    for address in &addresses {
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(ClientError::invalid(format!(
                    "bootstrap entry {address:?} is not host:port"
                )))
            }
        }
    }
    Ok(addresses)
}

/// How the producer batches, bounds memory and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Replicas that must hold a batch before its records resolve. `Acks::None` resolves
    /// without a real offset (see [`crate::RecordMetadata::offset`]).
    pub acks: Acks,
    /// How long a batch that is not full waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once adding the next record would pass this size. Stored batches stay
    /// at or below it, except for a single record larger than it, which goes alone.
    pub batch_bytes_max: usize,
    /// Bytes of records accepted but not yet acknowledged. `send` waits while full.
    pub buffer_bytes_max: usize,
    /// Batches of one partition sent but not yet answered.
    pub requests_in_flight_per_partition_max: usize,
    /// How long a record may take from `send` to its outcome, retries included.
    pub delivery_timeout: Duration,
    /// Sent to the leader as the time it may wait for the acks (in milliseconds, so at most
    /// `u32::MAX` ms); the client waits a little longer for the reply.
    pub request_timeout: Duration,
    /// First wait before a batch is retried; doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest wait between retries of a batch (see [`ClientConfig::retry_backoff_max`]).
    pub retry_backoff_max: Duration,
    /// Idempotent producing (on by default, as in Kafka 3+): the producer gets an id from the
    /// cluster and numbers its batches per partition, so a retried batch is written once and
    /// order per partition holds across retries. It applies with `acks = All` only (with
    /// weaker acks an acknowledged batch may be lost, and the sequence with it), and needs
    /// `requests_in_flight_per_partition_max <= 5`, the batches a leader remembers per producer.
    pub enable_idempotence: bool,
    /// The codec batches are compressed with (Kafka's `compression.type`): `None` (the
    /// default), `Gzip`, `Snappy`, `Lz4` or `Zstd`. A batch whose records would not get
    /// smaller is sent uncompressed. Batches are sized by their uncompressed bytes
    /// (`batch_bytes_max`), so compression saves bytes on the wire and on disk, not requests.
    pub compression: Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes_max: 64 * 1024,
            buffer_bytes_max: 32 * 1024 * 1024,
            requests_in_flight_per_partition_max: 5,
            delivery_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(250),
            enable_idempotence: true,
            compression: Compression::None,
        }
    }
}

/// Batches a partition leader remembers per idempotent producer (Kafka's 5): more in flight
/// and a retry could miss its first attempt and be written twice.
pub const IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX: usize = 5;

impl ProducerConfig {
    /// The defaults; the same as [`ProducerConfig::default`], to start a chain of setters.
    pub fn new() -> ProducerConfig {
        ProducerConfig::default()
    }

    setters! {
        acks: Acks;
        linger: Duration;
        batch_bytes_max: usize;
        buffer_bytes_max: usize;
        requests_in_flight_per_partition_max: usize;
        delivery_timeout: Duration;
        request_timeout: Duration;
        retry_backoff: Duration;
        retry_backoff_max: Duration;
        enable_idempotence: bool;
        compression: Compression;
    }

    /// Whether batches are stamped with a producer id and sequences.
    pub fn idempotent(&self) -> bool {
        self.enable_idempotence && self.acks == Acks::All
    }

    /// Refuses settings that cannot work (`InvalidArgument`, naming the setting).
    pub fn validate(&self) -> Result<()> {
        if self.batch_bytes_max < cairn_protocol::batch::HEADER_BYTES + 16 {
            return Err(ClientError::invalid(
                "batch_bytes_max must leave room for the batch header and a record",
            ));
        }
        if self.buffer_bytes_max < self.batch_bytes_max {
            return Err(ClientError::invalid(
                "buffer_bytes_max must hold at least one full batch",
            ));
        }
        if self.buffer_bytes_max > u32::MAX as usize {
            return Err(ClientError::invalid(
                "buffer_bytes_max must stay below 4 GiB",
            ));
        }
        if self.requests_in_flight_per_partition_max == 0 {
            return Err(ClientError::invalid(
                "requests_in_flight_per_partition_max must be at least 1",
            ));
        }
        at_least_a_millisecond("delivery_timeout", self.delivery_timeout)?;
        at_least_a_millisecond("request_timeout", self.request_timeout)?;
        fits_wire_millis("request_timeout", self.request_timeout)?;
        if self.retry_backoff > self.retry_backoff_max {
            return Err(ClientError::invalid(
                "retry_backoff must not exceed retry_backoff_max",
            ));
        }
        if self.idempotent()
            && self.requests_in_flight_per_partition_max > IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX
        {
            return Err(ClientError::invalid(format!(
                "with enable_idempotence, requests_in_flight_per_partition_max must be at most \
                 {IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX}: a leader remembers that many batches \
                 per producer to recognise retries"
            )));
        }
        Ok(())
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_backoff, self.retry_backoff_max, attempt)
    }
}

/// Where a consumer starts when it has no position (or its position fell out of the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AutoOffsetReset {
    /// The first offset still in the log.
    Earliest,
    /// The high watermark: only records produced from now on.
    #[default]
    Latest,
}

/// How the consumer fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Bytes one fetch response may carry, across partitions.
    pub fetch_max_bytes: u32,
    /// Bytes one partition may contribute to a fetch response.
    pub fetch_partition_max_bytes: u32,
    /// How long the leader may hold a fetch waiting for `fetch_min_bytes` (sent in
    /// milliseconds, so at most `u32::MAX` ms).
    pub fetch_max_wait: Duration,
    /// Bytes a fetch waits for (up to `fetch_max_wait`) before the leader answers.
    pub fetch_min_bytes: u32,
    /// Records one `poll` returns at most; the rest stay buffered for the next poll.
    pub max_poll_records: usize,
    /// Where a partition without a committed offset (or whose position left the log) starts.
    pub auto_offset_reset: AutoOffsetReset,
    /// Group members only ([`crate::Consumer::subscribe`]): a static instance id. A restart
    /// with the same id within the session timeout gets its partitions back without a
    /// rebalance; two live processes must never share one.
    pub group_instance_id: Option<String>,
    /// Group members only: how long the coordinator waits for a heartbeat before it removes
    /// the member and gives its partitions to the others (sent in milliseconds).
    pub session_timeout: Duration,
    /// Group members only: how long the member may take to release revoked partitions
    /// (the application must call `poll` within it) before it is fenced (sent in
    /// milliseconds).
    pub rebalance_timeout: Duration,
    /// Group members only: the server-side assignor (`range`, `round-robin`, `sticky`);
    /// `None` keeps the group's (sticky for a new group).
    pub assignor: Option<String>,
    /// Group members only: commit the positions `poll` has reached, every
    /// `auto_commit_interval` (checked in `poll`), on revocation and on `close`.
    ///
    /// Off by default, unlike Kafka: an auto-commit counts a record as processed once `poll`
    /// returned it, so a crash after the commit and before the processing loses it for the
    /// group, and a crash before the commit repeats what came after the last commit
    /// (at-least-once only if the application processes each batch before its next `poll`).
    /// Cairn prefers explicit `commit_sync` / `commit_async` after processing.
    pub enable_auto_commit: bool,
    /// With `enable_auto_commit`: how often positions are committed.
    pub auto_commit_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_bytes: 16 * 1024 * 1024,
            fetch_partition_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            max_poll_records: 500,
            auto_offset_reset: AutoOffsetReset::Latest,
            group_instance_id: None,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(60),
            assignor: None,
            enable_auto_commit: false,
            auto_commit_interval: Duration::from_secs(5),
        }
    }
}

impl ConsumerConfig {
    /// The defaults; the same as [`ConsumerConfig::default`], to start a chain of setters.
    pub fn new() -> ConsumerConfig {
        ConsumerConfig::default()
    }

    setters! {
        fetch_max_bytes: u32;
        fetch_partition_max_bytes: u32;
        fetch_max_wait: Duration;
        fetch_min_bytes: u32;
        max_poll_records: usize;
        auto_offset_reset: AutoOffsetReset;
        session_timeout: Duration;
        rebalance_timeout: Duration;
        enable_auto_commit: bool;
        auto_commit_interval: Duration;
    }

    /// Sets `group_instance_id` (see the field's documentation): this member is static.
    #[must_use]
    pub fn group_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.group_instance_id = Some(instance_id.into());
        self
    }

    /// Sets `assignor` (see the field's documentation).
    #[must_use]
    pub fn assignor(mut self, assignor: impl Into<String>) -> Self {
        self.assignor = Some(assignor.into());
        self
    }

    /// Refuses settings that cannot work (`InvalidArgument`, naming the setting).
    pub fn validate(&self) -> Result<()> {
        if self.fetch_max_bytes == 0 || self.fetch_partition_max_bytes == 0 {
            return Err(ClientError::invalid("fetch byte limits must be above 0"));
        }
        if self.max_poll_records == 0 {
            return Err(ClientError::invalid("max_poll_records must be at least 1"));
        }
        fits_wire_millis("fetch_max_wait", self.fetch_max_wait)?;
        for (name, timeout) in [
            ("session_timeout", self.session_timeout),
            ("rebalance_timeout", self.rebalance_timeout),
        ] {
            at_least_a_millisecond(name, timeout)?;
            fits_wire_millis(name, timeout)?;
        }
        if self.enable_auto_commit {
            at_least_a_millisecond("auto_commit_interval", self.auto_commit_interval)?;
        }
        if let Some(assignor) = &self.assignor {
            if !cairn_protocol::group::ASSIGNOR_NAMES.contains(&assignor.as_str()) {
                return Err(ClientError::invalid(format!(
                    "assignor {assignor:?} is not one of {:?}",
                    cairn_protocol::group::ASSIGNOR_NAMES
                )));
            }
        }
        if let Some(instance_id) = &self.group_instance_id {
            if instance_id.is_empty()
                || instance_id.len() > cairn_protocol::group::MEMBER_ID_BYTES_MAX
            {
                return Err(ClientError::invalid(
                    "group_instance_id must be 1 to 255 bytes",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_parse_and_bad_entries_are_refused() {
        assert_eq!(
            parse_bootstrap("a:1, b:2 ,").unwrap(),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        assert!(parse_bootstrap("").is_err());
        assert!(parse_bootstrap("nohost").is_err());
        assert!(parse_bootstrap("h:notaport").is_err());
        assert!(parse_bootstrap(":7").is_err());
    }

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        ClientConfig::default().validate().unwrap();
        ProducerConfig::default().validate().unwrap();
        ConsumerConfig::default().validate().unwrap();
        assert!(ProducerConfig::new()
            .buffer_bytes_max(10)
            .validate()
            .is_err());
        assert!(ClientConfig::default()
            .requests_in_flight_max(0)
            .validate()
            .is_err());
        assert!(ClientConfig::default()
            .bootstrap(Vec::<String>::new())
            .validate()
            .is_err());
        let pipelined = ProducerConfig::new().requests_in_flight_per_partition_max(6);
        assert!(pipelined.validate().is_err());
        // Without idempotence (explicitly, or by weaker acks) the limit does not apply.
        pipelined
            .clone()
            .enable_idempotence(false)
            .validate()
            .unwrap();
        let leader_acks = pipelined.acks(Acks::Leader);
        assert!(!leader_acks.idempotent());
        leader_acks.validate().unwrap();
    }

    #[test]
    fn time_spans_below_a_millisecond_or_beyond_the_wire_are_refused() {
        let sub_millisecond = Duration::from_micros(999);
        assert!(ClientConfig::default()
            .request_timeout(sub_millisecond)
            .validate()
            .is_err());
        assert!(ClientConfig::default()
            .connect_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ProducerConfig::new()
            .delivery_timeout(sub_millisecond)
            .validate()
            .is_err());
        let beyond_32_bits = Duration::from_millis(u64::from(u32::MAX) + 1);
        assert!(ProducerConfig::new()
            .request_timeout(beyond_32_bits)
            .validate()
            .is_err());
        assert!(ConsumerConfig::new()
            .session_timeout(beyond_32_bits)
            .validate()
            .is_err());
        assert!(ConsumerConfig::new()
            .fetch_max_wait(beyond_32_bits)
            .validate()
            .is_err());
        // A zero fetch wait is a plain poll, not a mistake.
        ConsumerConfig::new()
            .fetch_max_wait(Duration::ZERO)
            .validate()
            .unwrap();
        assert!(ConsumerConfig::new()
            .enable_auto_commit(true)
            .auto_commit_interval(Duration::ZERO)
            .validate()
            .is_err());
        assert_eq!(millis_u32(Duration::from_millis(1_500)), 1_500);
        assert_eq!(millis_u32(Duration::MAX), u32::MAX);
    }

    #[test]
    fn setters_chain_and_set_what_they_name() {
        let consumer = ConsumerConfig::new()
            .group_instance_id("worker-1")
            .assignor("range")
            .rebalance_timeout(Duration::from_secs(5));
        assert_eq!(consumer.group_instance_id.as_deref(), Some("worker-1"));
        assert_eq!(consumer.assignor.as_deref(), Some("range"));
        assert_eq!(consumer.rebalance_timeout, Duration::from_secs(5));
        let client = ClientConfig::default()
            .bootstrap(["a:1", "b:2"])
            .client_id("me");
        assert_eq!(client.bootstrap, vec!["a:1".to_owned(), "b:2".to_owned()]);
        assert_eq!(client.client_id, "me");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = ClientConfig::default();
        assert_eq!(config.backoff(0), Duration::from_millis(50));
        assert_eq!(config.backoff(1), Duration::from_millis(100));
        assert_eq!(config.backoff(2), Duration::from_millis(200));
        assert_eq!(config.backoff(3), Duration::from_millis(250));
        assert_eq!(config.backoff(30), Duration::from_millis(250));
    }
}
