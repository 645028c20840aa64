//! Node configuration: file -> builder -> validated type.
//!
//! Layers, later ones win: the preset's defaults (`default` or `test`), the TOML file
//! (`--config FILE`), `CAIRN_*` environment variables, then command-line flags. Every layer is
//! merged into one TOML table of dotted keys (`limits.frame_bytes_max`), which is deserialized
//! with unknown fields refused, then checked by named cross-field rules. The result,
//! [`NodeConfig`], is the only configuration the rest of the node sees.

use cairn_protocol::NodeId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a configuration was refused. Each message is meant for an operator reading stderr.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{origin} sets {key} = {value:?}, which is not a valid value: {message}")]
    BadOverride {
        origin: String,
        key: String,
        value: String,
        message: String,
    },
    #[error("configuration is not valid: {0}")]
    Invalid(String),
    #[error(
        "missing required setting {key} (flag --{flag}, env {env}, or `{key}` in the config file)"
    )]
    Missing {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("config rule `{rule}` broken: {why}")]
    Rule { rule: &'static str, why: String },
    #[error("unknown preset {0:?}: expected \"default\" or \"test\"")]
    UnknownPreset(String),
    #[error(transparent)]
    Secret(#[from] crate::peer_auth::SecretError),
}

/// Starting values. `test` has short timeouts and small limits so tests reach them quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    #[default]
    Default,
    Test,
}

impl Preset {
    pub fn parse(name: &str) -> Result<Preset, ConfigError> {
        match name {
            "default" => Ok(Preset::Default),
            "test" => Ok(Preset::Test),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }
}

/// Request and resource limits of one node. Every queue and buffer is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest frame accepted or sent, payload bytes.
    pub frame_bytes_max: u32,
    /// Largest record batch a produce request may carry.
    pub batch_bytes_max: u32,
    /// Largest single record (key + value + headers) in a batch.
    pub record_bytes_max: u32,
    /// Largest size a compressed batch's records may decompress to (the produce path
    /// decompresses them to validate them). A batch past it is refused with `LimitExceeded`
    /// once decompression passes it, before more is allocated: a decompression bomb costs
    /// the node this many bytes at most. Between `batch_bytes_max` and 256 MiB (the bound
    /// every reader, followers included, decompresses under).
    pub batch_decompressed_bytes_max: u32,
    /// Client connections open at once; one more is refused with `TooManyConnections`.
    pub connections_max: u32,
    /// Requests one connection may have in flight; at the limit the node stops reading it.
    pub requests_in_flight_max: u32,
    /// Messages queued for one partition actor; past it produce gets `Backpressure`.
    pub partition_mailbox_max: u32,
    /// Longest a fetch long poll may wait, whatever the client asks.
    pub fetch_wait_max_ms: u64,
    /// Most partitions one topic may have.
    pub partitions_per_topic_max: u32,
    /// Connections one source IP address may hold at once, so that one address cannot take
    /// every one of `connections_max` (one more is refused with
    /// `TooManyConnectionsFromAddress`). Loopback counts like any address: test clusters and
    /// their clients all connect from 127.0.0.1, so the default leaves that address a quarter
    /// of the slots (256 of 1,024), well above what a cluster and its clients open. Above
    /// `connections_max` it changes nothing (a lowered `connections_max` needs no change here).
    pub connections_per_address_max: u32,
    /// How long a new connection may take to deliver its first whole request (or peer
    /// hello); a connection that sends nothing is closed after it.
    pub first_request_timeout_ms: u64,
    /// A connection with no request in flight that sends no request for this long is closed.
    pub connection_idle_timeout_ms: u64,
    /// A connection whose client reads none of a waiting reply for this long is closed,
    /// which gives back the reply budget it holds (clients read their sockets all the time;
    /// one that does not is gone or hostile).
    pub reply_write_timeout_ms: u64,
    /// Reply bytes one connection may have waiting to be written (its client reads them).
    /// Past it the node reads no more requests from the connection, and fetches on it get a
    /// smaller byte budget, or wait.
    pub connection_outbound_bytes_max: u32,
    /// Fetch reply bytes the whole node may hold at once, over all connections. When it is
    /// used up a fetch's byte budget shrinks to what is left, or it waits.
    pub fetch_reply_bytes_max: u32,
    /// Fetch reply bytes the connections of one source address may hold at once, out of
    /// `fetch_reply_bytes_max`: one address, whatever its connections do, leaves the rest of
    /// the node's fetch budget to the others.
    pub fetch_reply_bytes_per_address_max: u32,
    /// Entries (list items and map fields, e.g. topic names, fetch partitions, commits) one
    /// request may hold; counted before the request is decoded. More: `LimitExceeded`.
    pub request_entries_max: u32,
}

/// The Kafka listener's keys as the file and presets give them (`[kafka]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaFileSettings {
    listen: String,
    advertised_address: Option<String>,
    auto_create_topics: bool,
    default_partitions: u32,
}

/// The Kafka listener (node/src/kafka/): a second front end over the same broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Address the Kafka listener binds; port 0 picks a free port; `None` (`off`): no
    /// Kafka listener.
    pub listen: Option<SocketAddr>,
    /// Address Kafka clients are told to use (Metadata's brokers); defaults to the bound
    /// Kafka listen address.
    pub advertised_address: Option<String>,
    /// A Metadata request naming an unknown topic creates it (default partitions and
    /// replication factor) when the client allows it, as Kafka's
    /// `auto.create.topics.enable`. Off by default: a typo should not create a topic.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count: auto-created, or by CreateTopics with
    /// -1 (Kafka's `num.partitions`, 1 by default).
    pub default_partitions: u32,
}

/// Timings of every partition replica hosted here (DESIGN 5.3), plus the tick.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaTimings {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub clock_drift_max_ppm: u64,
    /// The time grid of replicas: each wakes when it next needs to (a heartbeat it leads, the
    /// end of its lease, an election deadline), rounded up to a multiple of this, so replicas
    /// due at about the same time wake together and share peer frames. Also how often the
    /// node's own waiting loops look again (applying metadata, readiness).
    pub tick_ms: u64,
    pub pending_requests_max: u32,
    /// Bytes of batches one replication message carries at most.
    pub append_message_bytes_max: u32,
    /// Bytes of its newest batches a leader keeps in memory, per partition, for followers
    /// that have not acknowledged them (0: catch-up always reads the log).
    pub tail_bytes_max: u32,
    /// A follower that has not caught up with its leader's log for this long is out of sync
    /// and its partition under-replicated (Kafka's `replica.lag.time.max.ms`). Shown only:
    /// commits wait for a majority whatever this says.
    pub lag_time_max_ms: u64,
    /// Preferred-leader rebalancing, as Kafka's `auto.leader.rebalance`: a leader that is
    /// not its partition's preferred replica (the first of its replica list) and has led this
    /// long resigns once the preferred replica is caught up and in sync, so leadership goes
    /// back to it after failures heal. 0: off (leaders stay where elections put them).
    pub leader_rebalance_ms: u64,
}

impl ReplicaTimings {
    pub fn replica_config(&self) -> cairn_replica::Config {
        cairn_replica::Config {
            lease_ms: self.lease_ms,
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            clock_drift_max_ppm: self.clock_drift_max_ppm,
            pending_requests_max: self.pending_requests_max as usize,
            append_message_bytes_max: self.append_message_bytes_max as usize,
            tail_bytes_max: self.tail_bytes_max as usize,
        }
    }
}

/// The HTTP listener as the file gives it (see [`HttpConfig`] for the validated form).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSettings {
    listen: String,
    advertised_address: Option<String>,
    connections_max: u32,
}

/// The HTTP listener (`/metrics`, `/health`, `/ready`; see [`crate::http`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address it binds (port 0 picks a free port); `None` (`http.listen = "none"`): no
    /// HTTP listener.
    pub listen: Option<SocketAddr>,
    /// Address other nodes are told to use (HOST:PORT): a schema registry write that reaches
    /// a node not leading `_schemas` is forwarded there. Defaults to the bound address.
    pub advertised_address: Option<String>,
    /// Connections open at once at most; more are closed as soon as they are accepted.
    pub connections_max: u32,
}

/// Consumer groups (DESIGN 3, issue 4): the `__offsets` topic and the coordinators on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// Partitions of `__offsets` when it is created (group `g` lives on partition
    /// `hash(g) % offsets_partitions`). Fixed once the topic exists: the topic's own count wins.
    pub offsets_partitions: u32,
    /// Told to members in every heartbeat reply (a shorter one while a member waits for
    /// partitions others are releasing: `group::state::AWAITING_HEARTBEAT_INTERVAL_MS`).
    pub heartbeat_interval_ms: u32,
    /// Shortest session timeout a member may ask for.
    pub session_timeout_ms_min: u32,
    /// Longest session timeout a member may ask for.
    pub session_timeout_ms_max: u32,
    /// How often each coordinator removes members whose session or revocation timed out.
    pub expiry_check_ms: u64,
    /// Kafka's `group.initial.rebalance.delay.ms`: how long a classic (Kafka-protocol) group
    /// that has no members waits for more before its first rebalance completes.
    pub initial_rebalance_delay_ms: u32,
}

impl GroupSettings {
    /// The coordinator's configuration: these timings, the state machine's default limits.
    pub fn group_config(&self) -> crate::group::state::GroupConfig {
        crate::group::state::GroupConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            session_timeout_ms_min: self.session_timeout_ms_min,
            session_timeout_ms_max: self.session_timeout_ms_max,
            initial_rebalance_delay_ms: self.initial_rebalance_delay_ms,
            ..crate::group::state::GroupConfig::default()
        }
    }
}

/// Retention applied to topics that do not set their own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDefaults {
    /// `None` keeps batches forever (by age).
    pub retention_ms: Option<u64>,
    /// `None` keeps batches forever (by size).
    pub retention_bytes: Option<u64>,
    /// How often each partition applies retention.
    pub retention_check_ms: u64,
    /// Bytes of partition logs the node's compactor reads per second at most (index and
    /// rewrite, every pass, count); 0: unthrottled.
    pub compaction_bytes_per_second: u64,
    /// Bytes one compaction pass's key index may hold (key bytes plus an estimate of 96 a
    /// key): a partition whose keys need more is compacted in more passes, each over the
    /// whole log below the decision, each for a range of keys that fits (docs/compaction.md).
    pub compaction_index_bytes_max: u64,
}

impl RetentionDefaults {
    /// The index budget as the compactor takes it (a budget above the address space is no
    /// budget).
    pub fn compaction_index_bytes_max(&self) -> usize {
        usize::try_from(self.compaction_index_bytes_max).unwrap_or(usize::MAX)
    }
}

/// The smallest `retention.compaction_index_bytes_max`: about 40 short keys a pass.
pub const COMPACTION_INDEX_BYTES_MIN: u64 = 4096;

/// The store as the file gives it (`[storage]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSettings {
    durability: String,
    cache_bytes: u64,
    segment_bytes: u64,
}

/// The node's store (storage/src/sled_store.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageConfig {
    /// What an acknowledgement means on this node's disk. `flush`: the batch is written to the
    /// kernel (its writeback started in batches), which survives a crash of the process but not of the
    /// operating system, nor a power cut.
    /// `fsync`: every byte of it (log, blob files, the directories of new files) is synced
    /// to the disk before the node counts it durable, which survives power loss. Syncs are
    /// grouped: one covers every append that arrived while the previous one ran.
    pub durability: cairn_storage::Durability,
    /// sled's page cache: the recent tail of the logs that consumers and followers read, and
    /// the index nodes above them. A loaded node's resident memory grows to about 1.3-1.5
    /// times this plus 25 MiB.
    pub cache_bytes: u64,
    /// The size of the store's log segments and write buffers for a new store (an existing
    /// store keeps the size it was made with). A page of the log larger than a quarter of it
    /// (a leaf of a partition's recent batches) is written to a blob file of its own instead
    /// of the log, and a file made per page costs more than the write.
    pub segment_bytes: u64,
}

/// The smallest `storage.segment_bytes` (256 KiB): below it a leaf of a few small batches
/// already goes to a blob file.
pub const STORAGE_SEGMENT_BYTES_MIN: u64 = 256 * 1024;

/// The largest `storage.segment_bytes` (16 MiB), sled's own limit.
pub const STORAGE_SEGMENT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// The smallest `storage.cache_bytes`: below it sled evicts the leaves it is appending to.
pub const STORAGE_CACHE_BYTES_MIN: u64 = 4 * 1024 * 1024;

/// The largest `storage.cache_bytes` (1 TiB): a typo's extra digits are refused, not allocated.
pub const STORAGE_CACHE_BYTES_MAX: u64 = 1 << 40;

/// The validated configuration of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Address the client listener binds; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address other nodes and clients are told to use; defaults to the bound listen address.
    pub advertised_address: Option<String>,
    pub limits: Limits,
    pub replica: ReplicaTimings,
    pub retention: RetentionDefaults,
    pub storage: StorageConfig,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Threads of the network runtime, and arbiters (threads) running partition actors: this
    /// many of each, except that 1 runs both on one thread. The file's 0 means one of each per
    /// core, resolved here.
    pub threads: usize,
    /// Replication factor of topics created without one (capped to the cluster size).
    pub default_replication_factor: u16,
    pub groups: GroupSettings,
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    /// Cluster settings; [`ClusterConfig::is_clustered`] is false for a lone node.
    pub cluster: ClusterConfig,
    /// What peers prove they hold (DESIGN 10), read from `cluster_secret_file` or the
    /// `CAIRN_CLUSTER_SECRET` environment variable; never a flag carrying the value, which
    /// any user could read in the process list. `None`: peers only over loopback.
    pub cluster_secret: Option<crate::peer_auth::ClusterSecret>,
}

/// Where this node finds the rest of its cluster (DESIGN section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Other nodes' gossip addresses (HOST:PORT) contacted to join; may list this node.
    pub seeds: Vec<String>,
    /// Voters of `__meta` when the cluster is first bootstrapped, as given (empty: not
    /// given). Used on the first start only; afterwards the voters stored with `__meta` win.
    /// A node outside them (or given only seeds) joins as a learner of `__meta`.
    pub initial_voters: Vec<NodeId>,
    /// UDP address gossip binds; `None`: the IP and port the client listener bound.
    pub gossip: Option<SocketAddr>,
    /// How often gossip runs. A stopped node is seen to leave after about 8 rounds, and a
    /// follower that sees its leader leave stands for election as soon as its own lease
    /// grant lapses, instead of waiting for its election timeout.
    pub gossip_interval_ms: u64,
}

impl ClusterConfig {
    /// A node with no seeds, no other voter and no gossip address runs alone, exactly as
    /// before clustering existed: no gossip socket, no peers.
    pub fn is_clustered(&self) -> bool {
        !self.seeds.is_empty() || self.initial_voters.len() > 1 || self.gossip.is_some()
    }
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[allow(dead_code)]
    preset: Option<String>,
    node_id: Option<u32>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertised_address: Option<String>,
    shutdown_grace_ms: u64,
    threads: u32,
    default_replication_factor: u16,
    seeds: Option<String>,
    initial_voters: Option<String>,
    gossip: Option<String>,
    gossip_interval_ms: u64,
    cluster_secret_file: Option<PathBuf>,
    limits: Limits,
    replica: ReplicaTimings,
    retention: RetentionDefaults,
    storage: StorageSettings,
    groups: GroupSettings,
    http: HttpSettings,
    kafka: KafkaFileSettings,
}

/// Every key a layer may set, dotted; environment variables are `CAIRN_` + the key in upper
/// case with dots as underscores (`CAIRN_LIMITS_FRAME_BYTES_MAX`).
pub const KEYS: &[&str] = &[
    "node_id",
    "data_dir",
    "listen",
    "advertised_address",
    "shutdown_grace_ms",
    "threads",
    "default_replication_factor",
    "seeds",
    "initial_voters",
    "gossip",
    "gossip_interval_ms",
    "cluster_secret_file",
    "limits.frame_bytes_max",
    "limits.batch_bytes_max",
    "limits.record_bytes_max",
    "limits.batch_decompressed_bytes_max",
    "limits.connections_max",
    "limits.requests_in_flight_max",
    "limits.partition_mailbox_max",
    "limits.fetch_wait_max_ms",
    "limits.partitions_per_topic_max",
    "limits.connections_per_address_max",
    "limits.first_request_timeout_ms",
    "limits.connection_idle_timeout_ms",
    "limits.reply_write_timeout_ms",
    "limits.connection_outbound_bytes_max",
    "limits.fetch_reply_bytes_max",
    "limits.fetch_reply_bytes_per_address_max",
    "limits.request_entries_max",
    "replica.lease_ms",
    "replica.heartbeat_ms",
    "replica.election_timeout_ms",
    "replica.clock_drift_max_ppm",
    "replica.tick_ms",
    "replica.pending_requests_max",
    "replica.append_message_bytes_max",
    "replica.tail_bytes_max",
    "replica.lag_time_max_ms",
    "replica.leader_rebalance_ms",
    "retention.retention_ms",
    "retention.retention_bytes",
    "retention.retention_check_ms",
    "retention.compaction_bytes_per_second",
    "retention.compaction_index_bytes_max",
    "storage.durability",
    "storage.cache_bytes",
    "storage.segment_bytes",
    "groups.offsets_partitions",
    "groups.heartbeat_interval_ms",
    "groups.session_timeout_ms_min",
    "groups.session_timeout_ms_max",
    "groups.expiry_check_ms",
    "groups.initial_rebalance_delay_ms",
    "http.listen",
    "http.advertised_address",
    "http.connections_max",
    "kafka.listen",
    "kafka.advertised_address",
    "kafka.auto_create_topics",
    "kafka.default_partitions",
];

/// Keys whose values are strings (a TOML override of them is taken verbatim).
const STRING_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "advertised_address",
    "seeds",
    "initial_voters",
    "gossip",
    "cluster_secret_file",
    "storage.durability",
    "http.listen",
    "http.advertised_address",
    "kafka.listen",
    "kafka.advertised_address",
];

/// The one environment variable that carries the secret itself (not a key: no file or flag
/// may carry the value).
pub const CLUSTER_SECRET_ENV: &str = "CAIRN_CLUSTER_SECRET";

pub fn env_name(key: &str) -> String {
    format!("CAIRN_{}", key.replace('.', "_").to_ascii_uppercase())
}

fn preset_table(preset: Preset) -> toml::Table {
    let text = match preset {
        Preset::Default => {
            r#"
            shutdown_grace_ms = 5000
            threads = 0
            default_replication_factor = 3
            gossip_interval_ms = 200
            [limits]
            frame_bytes_max = 4194304
            batch_bytes_max = 1048576
            record_bytes_max = 524288
            batch_decompressed_bytes_max = 33554432
            connections_max = 1024
            requests_in_flight_max = 256
            partition_mailbox_max = 4096
            fetch_wait_max_ms = 30000
            partitions_per_topic_max = 1024
            connections_per_address_max = 256
            first_request_timeout_ms = 10000
            connection_idle_timeout_ms = 540000
            reply_write_timeout_ms = 30000
            connection_outbound_bytes_max = 16777216
            fetch_reply_bytes_max = 268435456
            fetch_reply_bytes_per_address_max = 67108864
            request_entries_max = 65536
            [replica]
            lease_ms = 1200
            heartbeat_ms = 300
            election_timeout_ms = 1600
            clock_drift_max_ppm = 50000
            tick_ms = 50
            pending_requests_max = 4096
            append_message_bytes_max = 1048576
            tail_bytes_max = 2097152
            lag_time_max_ms = 10000
            leader_rebalance_ms = 30000
            [retention]
            retention_check_ms = 60000
            # 16 MiB/s: at 64 MiB/s rf3-1kb-half's publish p99 was 2.3x and 34x its baseline
            # while 1 GiB was compacted, at 16 MiB/s 1.7x (benches/results/compaction-p99-2026-12-04.md).
            compaction_bytes_per_second = 16777216
            # 64 MiB: about 500 000 keys of 32 bytes in one pass; a partition with more takes a
            # pass per 64 MiB of keys, each reading its log below the decision again.
            compaction_index_bytes_max = 67108864
            [storage]
            # Syncs every acknowledged batch to disk: measured on rf3-1kb-max against flush, 0-9%
            # fewer records/s (benches/results/durability-2026-12-04.md), under issue 19's 25%.
            durability = "fsync"
            # sled's page cache, 64 MiB: 16 MiB halved rf3-1kb-max's records/s, 48 MiB saved no
            # memory at its peaks (benches/results/cache-2026-12-05.md).
            cache_bytes = 67108864
            # 2 MiB: a leaf of a partition's recent batches stays in the log up to 512 KiB
            # instead of going to a blob file; against sled's 512 KiB, the publish p99 at a
            # fixed 65,000 records/s fell from 8.5-15.3 to 4.4-9.5 ms in 9 alternating rounds
            # (benches/results/segments-2026-12-06.md).
            segment_bytes = 2097152
            [groups]
            offsets_partitions = 16
            heartbeat_interval_ms = 500
            session_timeout_ms_min = 6000
            session_timeout_ms_max = 300000
            expiry_check_ms = 500
            initial_rebalance_delay_ms = 3000
            [http]
            listen = "127.0.0.1:9644"
            connections_max = 64
            [kafka]
            listen = "127.0.0.1:9092"
            auto_create_topics = false
            default_partitions = 1
            "#
        }
        Preset::Test => {
            r#"
            shutdown_grace_ms = 1000
            threads = 0
            default_replication_factor = 3
            gossip_interval_ms = 50
            [limits]
            frame_bytes_max = 262144
            batch_bytes_max = 65536
            record_bytes_max = 16384
            batch_decompressed_bytes_max = 1048576
            connections_max = 16
            requests_in_flight_max = 32
            partition_mailbox_max = 64
            fetch_wait_max_ms = 2000
            partitions_per_topic_max = 16
            connections_per_address_max = 256
            first_request_timeout_ms = 10000
            connection_idle_timeout_ms = 120000
            reply_write_timeout_ms = 10000
            connection_outbound_bytes_max = 1048576
            fetch_reply_bytes_max = 8388608
            fetch_reply_bytes_per_address_max = 8388608
            request_entries_max = 8192
            [replica]
            lease_ms = 200
            heartbeat_ms = 50
            election_timeout_ms = 300
            clock_drift_max_ppm = 50000
            tick_ms = 10
            pending_requests_max = 64
            append_message_bytes_max = 65536
            tail_bytes_max = 262144
            lag_time_max_ms = 1000
            # Off: tests' leaders stay where elections put them unless a test turns it on.
            leader_rebalance_ms = 0
            [retention]
            retention_check_ms = 200
            compaction_bytes_per_second = 67108864
            # Small, like the other test limits: a few hundred keys a pass.
            compaction_index_bytes_max = 65536
            [storage]
            # Tests that need power-loss durability set fsync themselves (the power campaign,
            # the restart-everything test); the rest run faster on flush.
            durability = "flush"
            cache_bytes = 16777216
            segment_bytes = 2097152
            [groups]
            offsets_partitions = 4
            heartbeat_interval_ms = 200
            session_timeout_ms_min = 600
            session_timeout_ms_max = 60000
            expiry_check_ms = 50
            # Tests form their groups at once (Kafka's test setups set it to 0 as well).
            initial_rebalance_delay_ms = 0
            [http]
            # Many test nodes share one machine: each picks a free port.
            listen = "127.0.0.1:0"
            connections_max = 8
            [kafka]
            listen = "127.0.0.1:0"
            auto_create_topics = false
            default_partitions = 1
            "#
        }
    };
    text.parse().expect("preset tables are valid TOML")
}

/// Collects the layers, then [`ConfigBuilder::build`] validates them.
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    preset: Option<Preset>,
    file: Option<(PathBuf, toml::Table)>,
    overrides: Vec<(String, String, String)>,
    /// The value of [`CLUSTER_SECRET_ENV`], if set; never printed.
    cluster_secret_value: Option<String>,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        ConfigBuilder::default()
    }

    /// Reads and parses the TOML file (unknown keys are refused later, at build).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        self = self.file_text(path, &text)?;
        Ok(self)
    }

    pub fn file_text(mut self, path: PathBuf, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|error: toml::de::Error| ConfigError::ParseFile {
                    path: path.clone(),
                    message: error.to_string(),
                })?;
        self.file = Some((path, table));
        Ok(self)
    }

    /// Forces a preset (a flag or env var); otherwise the file's `preset` key, else default.
    pub fn preset(mut self, preset: Preset) -> Self {
        self.preset = Some(preset);
        self
    }

    /// Sets one dotted key; `origin` names the layer for error messages.
    pub fn set(mut self, origin: &str, key: &str, value: &str) -> Self {
        self.overrides
            .push((origin.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// Takes every `CAIRN_*` variable named after a known key from `lookup` (the process
    /// environment in production, a map in tests).
    pub fn env(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        for key in KEYS {
            let name = env_name(key);
            if let Some(value) = lookup(&name) {
                self = self.set(&format!("environment variable {name}"), key, &value);
            }
        }
        self.cluster_secret_value = lookup(CLUSTER_SECRET_ENV);
        self
    }

    pub fn build(self) -> Result<NodeConfig, ConfigError> {
        let preset = match (self.preset, &self.file) {
            (Some(preset), _) => preset,
            (None, Some((_, table))) => match table.get("preset") {
                Some(toml::Value::String(name)) => Preset::parse(name)?,
                Some(other) => return Err(ConfigError::UnknownPreset(format!("{other:?}"))),
                None => Preset::Default,
            },
            (None, None) => Preset::Default,
        };
        let mut merged = preset_table(preset);
        if let Some((path, table)) = &self.file {
            merge(&mut merged, table.clone());
            // Check the file alone first, so an unknown key is blamed on the file.
            let checked: Result<FileConfig, _> = merged.clone().try_into();
            if let Err(error) = checked {
                return Err(ConfigError::ParseFile {
                    path: path.clone(),
                    message: error.to_string(),
                });
            }
        }
        for (origin, key, value) in &self.overrides {
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::BadOverride {
                    origin: origin.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    message: format!("unknown key; known keys are: {}", KEYS.join(", ")),
                });
            }
            let parsed = if STRING_KEYS.contains(&key.as_str()) {
                toml::Value::String(value.clone())
            } else {
                parse_value(value).map_err(|message| ConfigError::BadOverride {
                    origin: origin.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    message,
                })?
            };
            set_dotted(&mut merged, key, parsed);
        }
        let file: FileConfig = merged
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.to_string()))?;
        let cluster_secret = cluster_secret(&file, self.cluster_secret_value.as_deref())?;
        let mut config = validate(file)?;
        config.cluster_secret = cluster_secret;
        Ok(config)
    }
}

/// Reads the secret from its file, or takes it from the environment; refuses both at once
/// (which one was meant is unclear) and a secret too short to be one.
fn cluster_secret(
    file: &FileConfig,
    value: Option<&str>,
) -> Result<Option<crate::peer_auth::ClusterSecret>, ConfigError> {
    use crate::peer_auth::ClusterSecret;
    match (&file.cluster_secret_file, value) {
        (Some(_), Some(_)) => Err(ConfigError::Rule {
            rule: "at most one of cluster_secret_file and CAIRN_CLUSTER_SECRET",
            why: "two sources for one secret leave it unclear which the cluster shares".to_string(),
        }),
        (Some(path), None) => Ok(Some(ClusterSecret::from_file(path)?)),
        (None, Some(value)) => Ok(Some(ClusterSecret::from_value(
            &format!("environment variable {CLUSTER_SECRET_ENV}"),
            value.as_bytes(),
        )?)),
        (None, None) => Ok(None),
    }
}

fn parse_value(text: &str) -> Result<toml::Value, String> {
    let table: toml::Table = format!("v = {text}")
        .parse()
        .map_err(|error: toml::de::Error| error.message().to_string())?;
    Ok(table.get("v").cloned().expect("the key just parsed"))
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_dotted(inner, rest, value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

/// Deep-merges `overlay` into `base`: tables merge key by key, other values replace.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(overlay_inner)) => {
                merge(inner, overlay_inner)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Bytes a produce request adds around its batch (envelope, topic name, field names).
pub const PRODUCE_FRAME_OVERHEAD_BYTES: u32 = 1024;

/// What a peer frame holding one `Append` adds to its batches, which
/// `replica.append_message_bytes_max` already counts with their per-batch framing
/// (`cairn_replica::APPEND_BATCH_FRAMING_BYTES`): the frame and message envelope, the replica
/// key and the offsets, a few dozen bytes in MessagePack, with room to spare.
pub const PEER_APPEND_FRAME_OVERHEAD_BYTES: u32 = 1024;
/// Bytes a batch adds around its records (header, per-record framing of one record).
pub const BATCH_OVERHEAD_BYTES: u32 = 128;

fn rule(rule: &'static str, holds: bool, why: &str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError::Rule {
            rule,
            why: why.to_string(),
        })
    }
}

fn validate(file: FileConfig) -> Result<NodeConfig, ConfigError> {
    let node_id = file.node_id.ok_or(ConfigError::Missing {
        key: "node_id",
        flag: "node-id",
        env: "CAIRN_NODE_ID",
    })?;
    let cluster = validate_cluster(&file, NodeId(node_id))?;
    let data_dir = file.data_dir.ok_or(ConfigError::Missing {
        key: "data_dir",
        flag: "data-dir",
        env: "CAIRN_DATA_DIR",
    })?;
    let listen_text = file.listen.unwrap_or_else(|| "127.0.0.1:7171".to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|error| ConfigError::Rule {
        rule: "listen is IP:PORT",
        why: format!("{listen_text:?} is not a socket address ({error}); use e.g. 127.0.0.1:7171"),
    })?;
    let http = validate_http(&file.http, listen)?;
    let limits = file.limits;
    let replica = file.replica;
    let retention = file.retention;
    rule(
        "every limits.*_max > 0",
        limits.frame_bytes_max > 0
            && limits.batch_bytes_max > 0
            && limits.record_bytes_max > 0
            && limits.connections_max > 0
            && limits.requests_in_flight_max > 0
            && limits.partition_mailbox_max > 0
            && limits.partitions_per_topic_max > 0
            && limits.connections_per_address_max > 0
            && limits.request_entries_max > 0,
        "a limit of zero would refuse every request of its kind",
    )?;
    rule(
        "limits.first_request_timeout_ms > 0 && limits.connection_idle_timeout_ms > 0",
        limits.first_request_timeout_ms > 0 && limits.connection_idle_timeout_ms > 0,
        "a timeout of zero would close every connection before its first request",
    )?;
    rule(
        "limits.reply_write_timeout_ms > 0",
        limits.reply_write_timeout_ms > 0,
        "a timeout of zero would close every connection with a reply to write",
    )?;
    rule(
        "limits.connection_outbound_bytes_max >= limits.frame_bytes_max",
        limits.connection_outbound_bytes_max >= limits.frame_bytes_max,
        "a reply of the largest frame must fit in the connection's budget, or it would \
         never be sent",
    )?;
    rule(
        "limits.fetch_reply_bytes_max >= limits.frame_bytes_max",
        limits.fetch_reply_bytes_max >= limits.frame_bytes_max,
        "one fetch reply of the largest frame must fit in the node's fetch budget",
    )?;
    rule(
        "limits.fetch_reply_bytes_per_address_max >= limits.frame_bytes_max",
        limits.fetch_reply_bytes_per_address_max >= limits.frame_bytes_max,
        "one fetch reply of the largest frame must fit in an address's share of the fetch budget",
    )?;
    rule(
        "limits.frame_bytes_max >= limits.batch_bytes_max + 1024",
        u64::from(limits.frame_bytes_max)
            >= u64::from(limits.batch_bytes_max) + u64::from(PRODUCE_FRAME_OVERHEAD_BYTES),
        "a produce request carrying a batch of the maximum size must fit in one frame, and so \
         must a fetch response carrying one such batch",
    )?;
    rule(
        "limits.batch_bytes_max >= limits.record_bytes_max + 128",
        u64::from(limits.batch_bytes_max)
            >= u64::from(limits.record_bytes_max) + u64::from(BATCH_OVERHEAD_BYTES),
        "a record of the maximum size must fit in a batch with its header",
    )?;
    rule(
        "limits.batch_bytes_max <= limits.batch_decompressed_bytes_max <= 268435456",
        limits.batch_decompressed_bytes_max >= limits.batch_bytes_max
            && limits.batch_decompressed_bytes_max as usize
                <= cairn_protocol::compression::DECOMPRESSED_BYTES_CEILING,
        "a compressed batch must be allowed to hold what an uncompressed one may, and followers \
         and consumers read every batch under 256 MiB: a leader must not accept more",
    )?;
    rule(
        "limits.frame_bytes_max >= replica.append_message_bytes_max + 1024",
        u64::from(limits.frame_bytes_max)
            >= u64::from(replica.append_message_bytes_max)
                + u64::from(PEER_APPEND_FRAME_OVERHEAD_BYTES),
        "an append of the largest size must fit in one peer frame with its envelope: a larger \
         one is dropped at every retry, and a follower that needs it never catches up",
    )?;
    rule(
        "replica.append_message_bytes_max >= limits.batch_bytes_max",
        replica.append_message_bytes_max >= limits.batch_bytes_max,
        "a follower must be able to receive the largest batch a producer may write",
    )?;
    rule(
        "replica.tick_ms > 0 && replica.tick_ms <= replica.heartbeat_ms",
        replica.tick_ms > 0 && replica.tick_ms <= replica.heartbeat_ms,
        "replicas only act on ticks: a tick slower than the heartbeat would let leases lapse",
    )?;
    rule(
        "replica.lag_time_max_ms >= 2 * replica.heartbeat_ms",
        replica.lag_time_max_ms >= 2 * replica.heartbeat_ms,
        "an idle follower catches up on heartbeats: a shorter bound would call healthy \
         followers out of sync between two of them",
    )?;
    rule(
        "replica.leader_rebalance_ms == 0 || replica.leader_rebalance_ms >= replica.election_timeout_ms",
        replica.leader_rebalance_ms == 0
            || replica.leader_rebalance_ms >= replica.election_timeout_ms,
        "each resignation leaves a partition without a leader for about an election; \
         leaders that resigned sooner could hand leadership around without serving",
    )?;
    replica
        .replica_config()
        .validate()
        .map_err(|error| ConfigError::Rule {
            rule: error.rule,
            why: error.why.to_string(),
        })?;
    rule(
        "retention.retention_check_ms > 0",
        retention.retention_check_ms > 0,
        "retention runs on a timer; a period of zero would spin",
    )?;
    rule(
        "retention.compaction_index_bytes_max >= 4096",
        retention.compaction_index_bytes_max >= COMPACTION_INDEX_BYTES_MIN,
        "each compaction pass reads the partition's log again; a budget of a handful of \
         keys would read it once per handful",
    )?;
    let groups = file.groups;
    rule(
        "groups.offsets_partitions in 1..=limits.partitions_per_topic_max",
        groups.offsets_partitions >= 1
            && groups.offsets_partitions <= limits.partitions_per_topic_max,
        "__offsets is a topic like any other and needs at least one partition",
    )?;
    rule(
        "groups.expiry_check_ms > 0",
        groups.expiry_check_ms > 0,
        "expiry runs on a timer; a period of zero would spin",
    )?;
    groups
        .group_config()
        .validate()
        .map_err(|why| ConfigError::Rule {
            rule: "groups (coordinator rules)",
            why,
        })?;
    rule(
        "default_replication_factor >= 1",
        file.default_replication_factor >= 1,
        "a topic needs at least one replica to hold its data",
    )?;
    rule(
        "shutdown_grace_ms <= 600000",
        file.shutdown_grace_ms <= 600_000,
        "a supervisor waiting for the node to stop should not wait more than ten minutes",
    )?;
    rule(
        "threads <= 256",
        file.threads <= 256,
        "each thread is a network worker and a partition arbiter; more than the cores only adds \
         context switches",
    )?;
    if let Some(address) = &file.advertised_address {
        rule(
            "advertised_address is HOST:PORT",
            is_host_port(address),
            "clients connect to the advertised address, so it needs a host and a non-zero port",
        )?;
    }
    rule(
        "1 <= kafka.default_partitions <= limits.partitions_per_topic_max",
        (1..=limits.partitions_per_topic_max).contains(&file.kafka.default_partitions),
        "the default partition count must be one a topic may have",
    )?;
    let kafka = validate_kafka(file.kafka, NodeId(node_id))?;
    let storage = validate_storage(&file.storage)?;
    Ok(NodeConfig {
        node_id: NodeId(node_id),
        data_dir,
        listen,
        advertised_address: file.advertised_address,
        limits,
        replica,
        retention,
        storage,
        shutdown_grace_ms: file.shutdown_grace_ms,
        threads: match file.threads {
            0 => std::thread::available_parallelism().map_or(2, |cores| cores.get()),
            threads => threads as usize,
        },
        default_replication_factor: file.default_replication_factor,
        groups,
        http,
        kafka,
        cluster,
        cluster_secret: None,
    })
}

/// `http.listen` is IP:PORT, or `none` for no HTTP listener. An empty value is refused rather
/// than read as `none`: an empty environment variable is more often a mistake than a wish to
/// turn monitoring off.
fn validate_http(http: &HttpSettings, listen: SocketAddr) -> Result<HttpConfig, ConfigError> {
    let text = http.listen.trim();
    // `off` too, as `kafka.listen` spells it.
    let address = if text == "none" || text == "off" {
        None
    } else {
        let address: SocketAddr = text.parse().map_err(|error| ConfigError::Rule {
            rule: "http.listen is IP:PORT or none",
            why: format!(
                "\"{text}\" is not a socket address ({error}); use e.g. 127.0.0.1:9644, or none \
                 for no HTTP listener"
            ),
        })?;
        Some(address)
    };
    if let Some(address) = address {
        rule(
            "http.listen != listen",
            address.port() == 0 || address != listen,
            "the HTTP listener and the client listener cannot share one address",
        )?;
    }
    if let Some(advertised) = &http.advertised_address {
        rule(
            "http.advertised_address is HOST:PORT",
            is_host_port(advertised),
            "other nodes forward schema registry writes to the advertised address, so it needs \
             a host and a non-zero port",
        )?;
    }
    rule(
        "http.connections_max > 0",
        http.connections_max > 0,
        "a limit of zero would refuse every scrape and health check",
    )?;
    Ok(HttpConfig {
        listen: address,
        advertised_address: http.advertised_address.clone(),
        connections_max: http.connections_max,
    })
}

/// `storage.durability` is `fsync` or `flush`, spelled exactly: a durability promise is not
/// something to guess from a near miss.
fn validate_storage(storage: &StorageSettings) -> Result<StorageConfig, ConfigError> {
    let durability = match storage.durability.as_str() {
        "fsync" => cairn_storage::Durability::Fsync,
        "flush" => cairn_storage::Durability::Flush,
        other => {
            return Err(ConfigError::Rule {
                rule: "storage.durability is fsync or flush",
                why: format!(
                    "{other:?} is not a durability mode; fsync makes an acknowledgement survive \
                     power loss, flush only a crash of the process"
                ),
            })
        }
    };
    if !(STORAGE_CACHE_BYTES_MIN..=STORAGE_CACHE_BYTES_MAX).contains(&storage.cache_bytes) {
        return Err(ConfigError::Rule {
            rule: "storage.cache_bytes is between 4 MiB and 1 TiB",
            why: format!(
                "{} bytes; below 4 MiB sled would evict the leaves it appends to",
                storage.cache_bytes
            ),
        });
    }
    let segment = storage.segment_bytes;
    if !(STORAGE_SEGMENT_BYTES_MIN..=STORAGE_SEGMENT_BYTES_MAX).contains(&segment)
        || !segment.is_power_of_two()
    {
        return Err(ConfigError::Rule {
            rule: "storage.segment_bytes is a power of two from 256 KiB to 16 MiB",
            why: format!("{segment} bytes; the store's segments are powers of two"),
        });
    }
    Ok(StorageConfig {
        durability,
        cache_bytes: storage.cache_bytes,
        segment_bytes: segment,
    })
}

/// HOST:PORT as peers read it from gossip (membership's `gossip_keys`): a non-empty host of
/// printable ASCII without spaces, a non-zero port, at most 261 bytes. Anything a peer would
/// refuse is refused here, at start, instead of making this node unreadable to its peers.
fn is_host_port(address: &str) -> bool {
    address.len() <= 261
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host.bytes().all(|byte| byte.is_ascii_graphic())
                && port.parse::<u16>().is_ok_and(|port| port > 0)
        })
}

fn validate_kafka(file: KafkaFileSettings, node_id: NodeId) -> Result<KafkaConfig, ConfigError> {
    // `none` too, as `http.listen` spells it.
    let listen = if file.listen == "off" || file.listen == "none" {
        None
    } else {
        Some(
            file.listen
                .parse::<SocketAddr>()
                .map_err(|error| ConfigError::Rule {
                    rule: "kafka.listen is IP:PORT or off",
                    why: format!(
                        "{:?} is not a socket address ({error}); use e.g. 127.0.0.1:9092",
                        file.listen
                    ),
                })?,
        )
    };
    if let Some(address) = &file.advertised_address {
        rule(
            "kafka.advertised_address is HOST:PORT",
            is_host_port(address),
            "Kafka clients connect to the advertised address, so it needs a host and a \
             non-zero port",
        )?;
    }
    rule(
        "node_id <= 2147483647 when the Kafka listener is on",
        listen.is_none() || i32::try_from(node_id.0).is_ok(),
        "Kafka names brokers by a signed 32-bit id, and a node's Kafka broker id is its node id",
    )?;
    Ok(KafkaConfig {
        listen,
        advertised_address: file.advertised_address,
        auto_create_topics: file.auto_create_topics,
        default_partitions: file.default_partitions,
    })
}

/// Splits a comma-separated list, dropping empty items and surrounding spaces.
fn list(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

fn validate_cluster(file: &FileConfig, node_id: NodeId) -> Result<ClusterConfig, ConfigError> {
    let seeds: Vec<String> = list(file.seeds.as_deref().unwrap_or(""))
        .into_iter()
        .map(str::to_string)
        .collect();
    for seed in &seeds {
        rule(
            "every seed is HOST:PORT",
            seed.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0)
            }),
            &format!("seed {seed:?} must name another node's gossip address, e.g. 127.0.0.1:7171"),
        )?;
    }
    let mut initial_voters = Vec::new();
    for item in list(file.initial_voters.as_deref().unwrap_or("")) {
        let voter = item.parse::<u32>().map_err(|error| ConfigError::Rule {
            rule: "initial_voters is a list of node ids",
            why: format!("{item:?} is not a node id ({error}); use e.g. 1,2,3"),
        })?;
        initial_voters.push(NodeId(voter));
    }
    let mut sorted = initial_voters.clone();
    sorted.sort_unstable();
    sorted.dedup();
    rule(
        "initial_voters has no duplicates",
        sorted.len() == initial_voters.len(),
        "a voter listed twice would count twice towards a majority",
    )?;
    rule(
        "a node outside initial_voters has seeds",
        initial_voters.is_empty() || initial_voters.contains(&node_id) || !seeds.is_empty(),
        "a node that is not a metadata voter learns the cluster metadata from other nodes, \
         which it finds through its seeds",
    )?;
    rule(
        "initial_voters has at most 15 nodes",
        initial_voters.len() <= cairn_replica::VOTERS_MAX,
        "majorities are computed over the voters on every step, so their number is bounded",
    )?;
    let gossip = match &file.gossip {
        None => None,
        Some(text) => Some(
            text.parse::<SocketAddr>()
                .map_err(|error| ConfigError::Rule {
                    rule: "gossip is IP:PORT",
                    why: format!(
                        "{text:?} is not a socket address ({error}); use e.g. 127.0.0.1:7172"
                    ),
                })?,
        ),
    };
    rule(
        "gossip_interval_ms >= 10",
        file.gossip_interval_ms >= cairn_membership::config::GOSSIP_INTERVAL_MS_MIN,
        "below 10 ms gossip costs more CPU than it is worth",
    )?;
    Ok(ClusterConfig {
        seeds,
        initial_voters,
        gossip,
        gossip_interval_ms: file.gossip_interval_ms,
    })
}

impl NodeConfig {
    /// A test-preset configuration (for unit tests of the node's parts).
    pub fn for_tests(node_id: u32, data_dir: PathBuf) -> NodeConfig {
        ConfigBuilder::new()
            .preset(Preset::Test)
            .set("test", "node_id", &node_id.to_string())
            .set("test", "data_dir", &data_dir.to_string_lossy())
            .set("test", "listen", "127.0.0.1:0")
            .build()
            .expect("the test preset is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule a node built with `key = value` on top of [`base`] breaks; panics on any
    /// other outcome.
    fn broken_rule(key: &str, value: &str) -> &'static str {
        match base().set("flag", key, value).build() {
            Err(ConfigError::Rule { rule, .. }) => rule,
            other => panic!("{key}={value}: {other:?}"),
        }
    }

    /// `key` set by a flag to each of `good` builds with that value (read back by `get`); each
    /// of `bad` is refused by `rule`.
    fn accepts_and_refuses(
        key: &str,
        get: impl Fn(&NodeConfig) -> u64,
        good: &[u64],
        bad: &[u64],
        rule: &str,
    ) {
        for value in good {
            let built = base().set("flag", key, &value.to_string()).build();
            assert_eq!(get(&built.unwrap()), *value, "{key}={value}");
        }
        for value in bad {
            assert_eq!(broken_rule(key, &value.to_string()), rule, "{key}={value}");
        }
    }

    fn base() -> ConfigBuilder {
        ConfigBuilder::new()
            .set("flag", "node_id", "1")
            .set("flag", "data_dir", "/tmp/x")
    }

    #[test]
    fn defaults_are_valid_and_test_preset_is_small() {
        let config = base().build().unwrap();
        assert_eq!(config.replica.lease_ms, 1200);
        let test = base().preset(Preset::Test).build().unwrap();
        assert_eq!(test.replica.lease_ms, 200);
        assert!(test.limits.batch_bytes_max < config.limits.batch_bytes_max);
        // The fuzz targets decode with the protocol crate's copy of these two defaults.
        assert_eq!(
            config.limits.frame_bytes_max,
            cairn_protocol::frame::FRAME_BYTES_MAX_DEFAULT
        );
        assert_eq!(
            config.limits.request_entries_max,
            cairn_protocol::frame::REQUEST_ENTRIES_MAX_DEFAULT
        );
    }

    /// `threads = 0` (the default) is one network worker and one partition arbiter per core;
    /// a number is taken as given; more than 256 is refused by its rule.
    #[test]
    fn threads_default_to_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        assert_eq!(base().build().unwrap().threads, cores);
        assert_eq!(
            base().set("flag", "threads", "1").build().unwrap().threads,
            1
        );
        let refused = base().set("flag", "threads", "257").build();
        assert!(
            matches!(&refused, Err(ConfigError::Rule { rule, .. }) if *rule == "threads <= 256"),
            "{refused:?}"
        );
    }

    #[test]
    fn layers_apply_file_then_env_then_flags() {
        let builder = ConfigBuilder::new()
            .file_text(
                "f.toml".into(),
                "node_id = 3\ndata_dir = \"/d\"\n[limits]\nconnections_max = 7\nrequests_in_flight_max = 9\n",
            )
            .unwrap()
            .env(|name| match name {
                "CAIRN_LIMITS_CONNECTIONS_MAX" => Some("8".into()),
                "CAIRN_NODE_ID" => Some("4".into()),
                _ => None,
            })
            .set("flag --node-id", "node_id", "5");
        let config = builder.build().unwrap();
        assert_eq!(config.node_id, NodeId(5));
        assert_eq!(config.limits.connections_max, 8);
        assert_eq!(config.limits.requests_in_flight_max, 9);
        assert_eq!(config.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn file_preset_key_selects_the_test_preset() {
        let config = ConfigBuilder::new()
            .file_text(
                "f.toml".into(),
                "preset = \"test\"\nnode_id = 1\ndata_dir = \"/d\"\n",
            )
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.replica.lease_ms, 200);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let error = ConfigBuilder::new()
            .file_text("f.toml".into(), "node_id = 1\n[limits]\nframe_bytes = 3\n")
            .unwrap()
            .build()
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("f.toml"), "{message}");
        assert!(message.contains("frame_bytes"), "{message}");
    }

    #[test]
    fn bad_toml_is_refused() {
        assert!(matches!(
            ConfigBuilder::new().file_text("f.toml".into(), "node_id = = 1"),
            Err(ConfigError::ParseFile { .. })
        ));
    }

    #[test]
    fn broken_rules_are_named() {
        let error = base()
            .set("flag", "limits.batch_bytes_max", "10000000")
            .build()
            .unwrap_err();
        assert!(
            matches!(error, ConfigError::Rule { rule, .. } if rule.starts_with("limits.frame_bytes_max")),
            "{error}"
        );
        let error = base()
            .set("flag", "replica.heartbeat_ms", "1000")
            .build()
            .unwrap_err();
        assert!(matches!(error, ConfigError::Rule { .. }), "{error}");
    }

    /// The compaction index budget: 64 MiB by default, any value from 4096 up, and an
    /// environment variable sets it like every key.
    #[test]
    fn the_compaction_index_budget_has_a_floor() {
        let defaults = base().build().unwrap().retention;
        assert_eq!(defaults.compaction_index_bytes_max(), 64 << 20);
        let error = base()
            .set("flag", "retention.compaction_index_bytes_max", "4095")
            .build()
            .unwrap_err();
        assert!(
            matches!(&error, ConfigError::Rule { rule, .. }
                if *rule == "retention.compaction_index_bytes_max >= 4096"),
            "{error}"
        );
        let lowest = base()
            .env(|name| {
                (name == "CAIRN_RETENTION_COMPACTION_INDEX_BYTES_MAX").then(|| "4096".into())
            })
            .build()
            .unwrap();
        assert_eq!(lowest.retention.compaction_index_bytes_max(), 4096);
    }

    #[test]
    fn connection_budgets_are_checked() {
        let defaults = base().build().unwrap().limits;
        assert_eq!(defaults.connections_per_address_max, 256);
        assert!(defaults.connection_outbound_bytes_max >= defaults.frame_bytes_max);
        assert!(defaults.fetch_reply_bytes_max >= defaults.connection_outbound_bytes_max);
        assert!(defaults.fetch_reply_bytes_per_address_max < defaults.fetch_reply_bytes_max);
        assert_eq!(
            broken_rule("limits.connection_outbound_bytes_max", "1048576"),
            "limits.connection_outbound_bytes_max >= limits.frame_bytes_max"
        );
        assert_eq!(
            broken_rule("limits.fetch_reply_bytes_max", "1048576"),
            "limits.fetch_reply_bytes_max >= limits.frame_bytes_max"
        );
        assert_eq!(
            broken_rule("limits.fetch_reply_bytes_per_address_max", "1048576"),
            "limits.fetch_reply_bytes_per_address_max >= limits.frame_bytes_max"
        );
        assert_eq!(
            broken_rule("limits.connection_idle_timeout_ms", "0"),
            "limits.first_request_timeout_ms > 0 && limits.connection_idle_timeout_ms > 0"
        );
        assert_eq!(
            broken_rule("limits.connections_per_address_max", "0"),
            "every limits.*_max > 0"
        );
        assert_eq!(
            broken_rule("limits.request_entries_max", "0"),
            "every limits.*_max > 0"
        );
        assert_eq!(defaults.batch_decompressed_bytes_max, 32 * 1024 * 1024);
        let decompressed =
            "limits.batch_bytes_max <= limits.batch_decompressed_bytes_max <= 268435456";
        assert_eq!(
            broken_rule("limits.batch_decompressed_bytes_max", "65536"),
            decompressed
        );
        assert_eq!(
            broken_rule("limits.batch_decompressed_bytes_max", "268435457"),
            decompressed
        );
        // A per-address limit above connections_max is allowed: it just changes nothing.
        let lowered = base()
            .set("flag", "limits.connections_max", "8")
            .build()
            .unwrap();
        assert_eq!(lowered.limits.connections_per_address_max, 256);
    }

    #[test]
    fn group_settings_are_checked() {
        let defaults = base().build().unwrap();
        assert_eq!(defaults.groups.offsets_partitions, 16);
        assert!(defaults.groups.group_config().validate().is_ok());
        let error = base()
            .set("flag", "groups.offsets_partitions", "0")
            .build()
            .unwrap_err();
        assert!(
            matches!(error, ConfigError::Rule { rule, .. } if rule.starts_with("groups.offsets_partitions")),
            "{error}"
        );
        // More __offsets partitions than any topic may have.
        let error = base()
            .set("flag", "groups.offsets_partitions", "2000")
            .build()
            .unwrap_err();
        assert!(matches!(error, ConfigError::Rule { .. }), "{error}");
        // A heartbeat slower than a third of the shortest session breaks the coordinator's rule.
        let error = base()
            .set("flag", "groups.heartbeat_interval_ms", "5000")
            .build()
            .unwrap_err();
        assert!(
            matches!(&error, ConfigError::Rule { why, .. } if why.contains("third")),
            "{error}"
        );
    }

    #[test]
    fn a_lone_node_is_not_clustered_and_cluster_flags_are_checked() {
        let lone = base().build().unwrap();
        assert!(!lone.cluster.is_clustered());
        assert!(lone.cluster.initial_voters.is_empty());
        let member = base()
            .set("flag", "seeds", "127.0.0.1:7171, 127.0.0.1:7172,")
            .set("flag", "initial_voters", "3,1,2")
            .build()
            .unwrap();
        assert!(member.cluster.is_clustered());
        assert_eq!(
            member.cluster.seeds,
            vec!["127.0.0.1:7171".to_string(), "127.0.0.1:7172".to_string()]
        );
        assert_eq!(
            member.cluster.initial_voters,
            vec![NodeId(3), NodeId(1), NodeId(2)]
        );
        assert_eq!(member.cluster.gossip, None);
        assert_eq!(broken_rule("seeds", "nohost"), "every seed is HOST:PORT");
        assert_eq!(broken_rule("seeds", "a:0"), "every seed is HOST:PORT");
        assert_eq!(
            broken_rule("initial_voters", "1,x"),
            "initial_voters is a list of node ids"
        );
        assert_eq!(
            broken_rule("initial_voters", "1,2,2"),
            "initial_voters has no duplicates"
        );
        assert_eq!(
            broken_rule("initial_voters", "2,3"),
            "a node outside initial_voters has seeds"
        );
        let learner = base()
            .set("flag", "seeds", "127.0.0.1:7171")
            .set("flag", "initial_voters", "2,3")
            .build()
            .unwrap();
        assert!(learner.cluster.is_clustered());
        assert_eq!(broken_rule("gossip", "127.0.0.1"), "gossip is IP:PORT");
    }

    #[test]
    fn the_cluster_secret_comes_from_a_file_or_the_environment_never_a_flag_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let from_file = base()
            .set("flag", "cluster_secret_file", &path.to_string_lossy())
            .build()
            .unwrap();
        let expected =
            crate::peer_auth::ClusterSecret::from_value("test", b"0123456789abcdef0123").unwrap();
        assert_eq!(from_file.cluster_secret, Some(expected.clone()));
        let from_env = base()
            .env(|name| (name == CLUSTER_SECRET_ENV).then(|| "0123456789abcdef0123".into()))
            .build()
            .unwrap();
        assert_eq!(from_env.cluster_secret, Some(expected));
        assert_eq!(base().build().unwrap().cluster_secret, None);
        // The value itself is not a key any layer may set.
        assert!(matches!(
            base()
                .set("flag", "cluster_secret", "0123456789abcdef0123")
                .build(),
            Err(ConfigError::BadOverride { .. })
        ));
        std::fs::write(&path, "too-short").unwrap();
        let short = base()
            .set("flag", "cluster_secret_file", &path.to_string_lossy())
            .build()
            .unwrap_err();
        assert!(
            matches!(
                short,
                ConfigError::Secret(crate::peer_auth::SecretError::TooShort { bytes: 9, .. })
            ),
            "{short}"
        );
        let missing = base()
            .set("flag", "cluster_secret_file", "/nonexistent/secret")
            .build()
            .unwrap_err();
        assert!(matches!(missing, ConfigError::Secret(_)), "{missing}");
        let both = base()
            .set("flag", "cluster_secret_file", &path.to_string_lossy())
            .env(|name| (name == CLUSTER_SECRET_ENV).then(|| "0123456789abcdef0123".into()))
            .build()
            .unwrap_err();
        assert!(matches!(both, ConfigError::Rule { .. }), "{both}");
    }

    #[test]
    fn missing_node_id_and_bad_values_are_reported() {
        assert!(matches!(
            ConfigBuilder::new().set("flag", "data_dir", "/d").build(),
            Err(ConfigError::Missing { key: "node_id", .. })
        ));
        assert!(matches!(
            base().set("env", "limits.connections_max", "lots").build(),
            Err(ConfigError::BadOverride { .. })
        ));
        assert!(matches!(
            base().set("flag", "listen", "nowhere").build(),
            Err(ConfigError::Rule { .. })
        ));
    }

    #[test]
    fn storage_cache_bytes_is_bounded_and_set_from_any_layer() {
        assert_eq!(base().build().unwrap().storage.cache_bytes, 64 << 20);
        let from_flag = base()
            .set("flag", "storage.cache_bytes", "33554432")
            .build();
        assert_eq!(from_flag.unwrap().storage.cache_bytes, 32 << 20);
        let from_env = base()
            .env(|name| (name == "CAIRN_STORAGE_CACHE_BYTES").then(|| "8388608".to_string()))
            .build();
        assert_eq!(from_env.unwrap().storage.cache_bytes, 8 << 20);
        accepts_and_refuses(
            "storage.cache_bytes",
            |config| config.storage.cache_bytes,
            &[STORAGE_CACHE_BYTES_MIN, STORAGE_CACHE_BYTES_MAX],
            &[0, STORAGE_CACHE_BYTES_MIN - 1, STORAGE_CACHE_BYTES_MAX + 1],
            "storage.cache_bytes is between 4 MiB and 1 TiB",
        );
        let negative = base().set("flag", "storage.cache_bytes", "-1").build();
        assert!(negative.is_err());
    }

    #[test]
    fn storage_segment_bytes_is_a_bounded_power_of_two_set_from_any_layer() {
        assert_eq!(base().build().unwrap().storage.segment_bytes, 2 << 20);
        let test_preset = base().preset(Preset::Test).build().unwrap();
        assert_eq!(test_preset.storage.segment_bytes, 2 << 20);
        let from_env = base()
            .env(|name| (name == "CAIRN_STORAGE_SEGMENT_BYTES").then(|| "524288".to_string()))
            .build();
        assert_eq!(from_env.unwrap().storage.segment_bytes, 512 << 10);
        let (below, above) = (STORAGE_SEGMENT_BYTES_MIN / 2, STORAGE_SEGMENT_BYTES_MAX * 2);
        accepts_and_refuses(
            "storage.segment_bytes",
            |config| config.storage.segment_bytes,
            &[STORAGE_SEGMENT_BYTES_MIN, STORAGE_SEGMENT_BYTES_MAX],
            &[0, below, above, 3 << 20, STORAGE_SEGMENT_BYTES_MIN + 1],
            "storage.segment_bytes is a power of two from 256 KiB to 16 MiB",
        );
    }

    #[test]
    fn storage_durability_is_fsync_or_flush_from_any_layer() {
        use cairn_storage::Durability;
        assert_eq!(
            base().build().unwrap().storage.durability,
            Durability::Fsync,
            "the default preset syncs"
        );
        assert_eq!(
            base()
                .preset(Preset::Test)
                .build()
                .unwrap()
                .storage
                .durability,
            Durability::Flush
        );
        let from_flag = base().set("flag", "storage.durability", "fsync").build();
        assert_eq!(from_flag.unwrap().storage.durability, Durability::Fsync);
        let from_file = ConfigBuilder::new()
            .file_text(
                "f.toml".into(),
                "node_id = 1\ndata_dir = \"/d\"\n[storage]\ndurability = \"fsync\"\n",
            )
            .unwrap()
            .build();
        assert_eq!(from_file.unwrap().storage.durability, Durability::Fsync);
        let from_env = base()
            .env(|name| (name == "CAIRN_STORAGE_DURABILITY").then(|| "flush".to_string()))
            .build();
        assert_eq!(from_env.unwrap().storage.durability, Durability::Flush);
        for bad in ["", "FSYNC", "sync", "fsync ", "none"] {
            assert_eq!(
                broken_rule("storage.durability", bad),
                "storage.durability is fsync or flush",
                "{bad:?}"
            );
        }
        let unknown = ConfigBuilder::new()
            .file_text(
                "f.toml".into(),
                "node_id = 1\ndata_dir = \"/d\"\n[storage]\nsync = true\n",
            )
            .unwrap()
            .build()
            .unwrap_err();
        assert!(
            matches!(unknown, ConfigError::ParseFile { .. }),
            "{unknown}"
        );
        let not_a_string = ConfigBuilder::new()
            .file_text(
                "f.toml".into(),
                "node_id = 1\ndata_dir = \"/d\"\n[storage]\ndurability = true\n",
            )
            .unwrap()
            .build()
            .unwrap_err();
        assert!(
            matches!(not_a_string, ConfigError::ParseFile { .. }),
            "{not_a_string}"
        );
    }

    #[test]
    fn http_listen_defaults_to_the_admin_port_on_loopback_and_can_be_turned_off() {
        let config = base().build().unwrap();
        assert_eq!(config.http.listen, Some("127.0.0.1:9644".parse().unwrap()));
        let test = base().preset(Preset::Test).build().unwrap();
        assert_eq!(test.http.listen, Some("127.0.0.1:0".parse().unwrap()));
        let off = base()
            .env(|name| (name == "CAIRN_HTTP_LISTEN").then(|| "none".to_string()))
            .build()
            .unwrap();
        assert_eq!(off.http.listen, None);
        let moved = base()
            .file_text("f.toml".into(), "[http]\nlisten = \"0.0.0.0:9000\"\n")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(moved.http.listen, Some("0.0.0.0:9000".parse().unwrap()));
    }

    #[test]
    fn bad_http_settings_are_refused_by_rule() {
        let rule_of = |builder: ConfigBuilder| match builder.build() {
            Err(ConfigError::Rule { rule, .. }) => rule,
            other => panic!("expected a rule error, got {other:?}"),
        };
        for bad in ["", "9644", "localhost:9644", "127.0.0.1:99999"] {
            assert_eq!(
                rule_of(base().set("flag", "http.listen", bad)),
                "http.listen is IP:PORT or none",
                "{bad}"
            );
        }
        assert_eq!(
            rule_of(base().set("flag", "listen", "127.0.0.1:7000").set(
                "flag",
                "http.listen",
                "127.0.0.1:7000"
            )),
            "http.listen != listen"
        );
        assert_eq!(
            rule_of(base().set("flag", "http.connections_max", "0")),
            "http.connections_max > 0"
        );
        for bad in ["", "host", "host:0", ":9644", "a b:9644"] {
            assert_eq!(
                rule_of(base().set("flag", "http.advertised_address", bad)),
                "http.advertised_address is HOST:PORT",
                "{bad}"
            );
        }
        let advertised = base()
            .set("flag", "http.advertised_address", "registry-1.example:9644")
            .build()
            .unwrap();
        assert_eq!(
            advertised.http.advertised_address.as_deref(),
            Some("registry-1.example:9644")
        );
        let unknown = base()
            .file_text("f.toml".into(), "[http]\nport = 1\n")
            .unwrap()
            .build();
        assert!(matches!(unknown, Err(ConfigError::ParseFile { .. })));
    }

    /// Topics created without a count get `kafka.default_partitions` partitions (Kafka's
    /// `num.partitions`): 1 unless set, and never 0 or more than a topic may have.
    #[test]
    fn the_default_partition_count_is_bounded() {
        assert_eq!(base().build().unwrap().kafka.default_partitions, 1);
        let four = base().set("flag", "kafka.default_partitions", "4");
        assert_eq!(four.build().unwrap().kafka.default_partitions, 4);
        for bad in ["0", "2000"] {
            match base().set("flag", "kafka.default_partitions", bad).build() {
                Err(ConfigError::Rule { rule, .. }) => assert_eq!(
                    rule,
                    "1 <= kafka.default_partitions <= limits.partitions_per_topic_max"
                ),
                other => panic!("{bad}: expected a rule error, got {other:?}"),
            }
        }
    }

    #[test]
    fn leader_rebalancing_is_off_in_tests_and_never_faster_than_an_election() {
        assert_eq!(base().build().unwrap().replica.leader_rebalance_ms, 30_000);
        let test = base().preset(Preset::Test).build().unwrap();
        assert_eq!(test.replica.leader_rebalance_ms, 0);
        let set = |value: &str| {
            base()
                .preset(Preset::Test)
                .set("flag", "replica.leader_rebalance_ms", value)
                .build()
        };
        assert_eq!(set("300").unwrap().replica.leader_rebalance_ms, 300);
        assert!(matches!(
            set("299"),
            Err(ConfigError::Rule { rule, .. }) if rule.starts_with("replica.leader_rebalance_ms")
        ));
    }
}
