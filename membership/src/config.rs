//! Membership configuration: [`MembershipSettings`] as read from a file or flags, checked once by
//! [`MembershipSettings::validate`] into a [`MembershipConfig`] that the rest of the crate trusts.
//!
//! Every cross-field rule has a name (a [`ConfigError`] variant) and a sentence saying why it
//! exists.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_protocol::NodeId;
use serde::{Deserialize, Serialize};

/// Longest cluster id accepted. The id travels in every gossip round (each SYN carries it), so
/// it is kept short.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// Most seeds accepted. A node gossips with a seed at most once a round; more seeds than this
/// only lengthen the configuration.
pub const SEEDS_MAX: usize = 64;

/// Hard ceiling for [`MembershipSettings::hint_bytes_max`]. Chitchat sends a node's values in UDP
/// datagrams of at most 65,507 bytes, and a single value that does not fit one datagram blocks
/// every later update of that node; 16 KiB leaves room for the other keys, the digest and
/// several nodes per datagram.
pub const HINT_BYTES_CEILING: usize = 16 * 1024;

/// Smallest useful [`MembershipSettings::hint_bytes_max`]: enough for a few partitions of a
/// long topic name.
pub const HINT_BYTES_FLOOR: usize = 256;

/// Bounds on the gossip interval. Below 10 ms gossip costs more CPU than it is worth on a small
/// machine; above 60 s failures would go unnoticed for many minutes.
pub const GOSSIP_INTERVAL_MS_MIN: u64 = 10;
pub const GOSSIP_INTERVAL_MS_MAX: u64 = 60_000;

/// Bounds on the phi threshold (chitchat's phi is "time since the last heartbeat divided by the
/// mean heartbeat interval").
pub const PHI_THRESHOLD_MIN: f64 = 3.0;
pub const PHI_THRESHOLD_MAX: f64 = 100.0;

/// Most heartbeat intervals the failure detector remembers per peer.
pub const HEARTBEAT_SAMPLES_CEILING: usize = 10_000;

/// Largest accepted bound of the change queue.
pub const CHANGE_QUEUE_CEILING: usize = 65_536;

/// A process incarnation of a node. Peers key a node's gossip by (node id, generation) and
/// ignore a node id's lower generations, so every process start needs a higher one than the
/// last: a restart that reused its generation would have its new values ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    /// The wall-clock start time in nanoseconds since the Unix epoch. Wall time (not a
    /// monotonic clock) because it must grow across process restarts; a clock stepped back
    /// across a restart gives a lower generation, which peers ignore until they forget the old
    /// one (after the dead-node grace period).
    pub fn from_start_time() -> Generation {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        Generation(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Membership settings as an operator writes them (file, flags). Unknown fields are rejected.
/// Turn them into a [`MembershipConfig`] with [`MembershipSettings::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipSettings {
    /// Nodes only gossip with nodes of the same cluster id.
    pub cluster_id: String,
    pub node_id: NodeId,
    /// UDP address the gossip socket binds. Port 0 picks a free port (tests).
    pub gossip_listen_addr: SocketAddr,
    /// Gossip address peers should use; defaults to the bound listen address.
    #[serde(default)]
    pub gossip_advertise_addr: Option<SocketAddr>,
    /// Gossip addresses (`ip:port` or `host:port`) contacted to join. A node may list itself,
    /// so every node can share one list.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Address clients should connect to, published to peers.
    pub client_addr: SocketAddr,
    /// Address peers should send replication RPCs to, published to peers.
    pub peer_addr: SocketAddr,
    /// Address Kafka clients should connect to (HOST:PORT), published to peers; `None`: no
    /// Kafka listener.
    #[serde(default)]
    pub kafka_addr: Option<String>,
    /// Address of the node's HTTP listener (HOST:PORT), published to peers so that a schema
    /// registry write reaching a node that does not lead `_schemas` can be forwarded to the
    /// one that does; `None`: no HTTP listener.
    #[serde(default)]
    pub http_addr: Option<String>,
    pub gossip_interval_ms: u64,
    /// A peer is considered dead once the time since its last heartbeat exceeds this many
    /// mean heartbeat intervals.
    pub phi_threshold: f64,
    /// Heartbeat intervals remembered per peer for the mean.
    pub heartbeat_samples_max: usize,
    /// Heartbeat gaps longer than this are left out of the mean (a long pause is an outage, not
    /// the normal rhythm).
    pub heartbeat_interval_max_ms: u64,
    /// Prior mean heartbeat interval used before a peer has many samples.
    pub initial_heartbeat_interval_ms: u64,
    /// How long a dead peer's state is kept before it is forgotten.
    pub dead_node_grace_period_ms: u64,
    /// Largest encoded leadership hints this node publishes.
    pub hint_bytes_max: usize,
    /// Bound of the queue of typed changes handed to the owner.
    pub change_queue_max: usize,
}

impl MembershipSettings {
    /// Settings with production timing: gossip every 500 ms; a stopped peer was seen to leave
    /// after about 2.5 s (measured in `tests/cluster.rs`; the bound is phi x 500 ms = 4 s).
    pub fn new(
        cluster_id: impl Into<String>,
        node_id: NodeId,
        gossip_listen_addr: SocketAddr,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> MembershipSettings {
        MembershipSettings {
            cluster_id: cluster_id.into(),
            node_id,
            gossip_listen_addr,
            gossip_advertise_addr: None,
            seeds: Vec::new(),
            client_addr,
            peer_addr,
            kafka_addr: None,
            http_addr: None,
            gossip_interval_ms: 500,
            phi_threshold: 8.0,
            heartbeat_samples_max: 1_000,
            heartbeat_interval_max_ms: 10_000,
            initial_heartbeat_interval_ms: 500,
            dead_node_grace_period_ms: 60 * 60 * 1_000,
            hint_bytes_max: 4 * 1024,
            change_queue_max: 1_024,
        }
    }

    /// The tiny preset for tests: gossip every 50 ms, a stopped peer seen to leave after 0.25 to
    /// 0.45 s (measured, also on a loaded machine), dead nodes forgotten after 30 s.
    pub fn with_test_timing(mut self) -> MembershipSettings {
        self.gossip_interval_ms = 50;
        self.initial_heartbeat_interval_ms = 50;
        self.heartbeat_interval_max_ms = 2_000;
        self.phi_threshold = 8.0;
        self.dead_node_grace_period_ms = 30_000;
        self
    }

    pub fn with_seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> MembershipSettings {
        self.seeds = seeds.into_iter().map(|seed| seed.to_string()).collect();
        self
    }

    /// Checks every rule and returns the validated configuration for this process start.
    pub fn validate(&self, generation: Generation) -> Result<MembershipConfig, ConfigError> {
        if self.cluster_id.is_empty() || self.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(ConfigError::ClusterIdLength {
                bytes: self.cluster_id.len(),
            });
        }
        if self.seeds.len() > SEEDS_MAX {
            return Err(ConfigError::TooManySeeds {
                count: self.seeds.len(),
            });
        }
        for seed in &self.seeds {
            if !is_host_port(seed) {
                return Err(ConfigError::BadSeed { seed: seed.clone() });
            }
        }
        for (name, addr) in [
            ("client_addr", self.client_addr),
            ("peer_addr", self.peer_addr),
        ] {
            if !is_routable(addr) {
                return Err(ConfigError::AddressNotRoutable { name, addr });
            }
        }
        match self.gossip_advertise_addr {
            Some(addr) if !is_routable(addr) => {
                return Err(ConfigError::AddressNotRoutable {
                    name: "gossip_advertise_addr",
                    addr,
                });
            }
            Some(_) if self.gossip_listen_addr.port() == 0 => {
                return Err(ConfigError::AdvertiseWithEphemeralPort);
            }
            None if self.gossip_listen_addr.ip().is_unspecified() => {
                return Err(ConfigError::AdvertiseAddrRequired {
                    listen: self.gossip_listen_addr,
                });
            }
            _ => {}
        }
        if !(GOSSIP_INTERVAL_MS_MIN..=GOSSIP_INTERVAL_MS_MAX).contains(&self.gossip_interval_ms) {
            return Err(ConfigError::GossipIntervalOutOfRange {
                gossip_interval_ms: self.gossip_interval_ms,
            });
        }
        // NaN fails both comparisons, so it is refused too.
        if !(self.phi_threshold >= PHI_THRESHOLD_MIN && self.phi_threshold <= PHI_THRESHOLD_MAX) {
            return Err(ConfigError::PhiThresholdOutOfRange {
                phi_threshold: self.phi_threshold,
            });
        }
        if self.heartbeat_samples_max < 2 || self.heartbeat_samples_max > HEARTBEAT_SAMPLES_CEILING
        {
            return Err(ConfigError::HeartbeatSamplesOutOfRange {
                heartbeat_samples_max: self.heartbeat_samples_max,
            });
        }
        let gossip_ms = self.gossip_interval_ms;
        if self.initial_heartbeat_interval_ms < gossip_ms / 2
            || self.initial_heartbeat_interval_ms > gossip_ms * 4
        {
            return Err(ConfigError::InitialIntervalFarFromGossip {
                initial_heartbeat_interval_ms: self.initial_heartbeat_interval_ms,
                gossip_interval_ms: gossip_ms,
            });
        }
        if self.heartbeat_interval_max_ms < gossip_ms * 2 {
            return Err(ConfigError::HeartbeatIntervalMaxTooShort {
                heartbeat_interval_max_ms: self.heartbeat_interval_max_ms,
                gossip_interval_ms: gossip_ms,
            });
        }
        let detection_ms = detection_estimate_ms(self.phi_threshold, gossip_ms);
        if (self.dead_node_grace_period_ms as f64) < 4.0 * detection_ms {
            return Err(ConfigError::GracePeriodTooShort {
                dead_node_grace_period_ms: self.dead_node_grace_period_ms,
                detection_estimate_ms: detection_ms as u64,
            });
        }
        if !(HINT_BYTES_FLOOR..=HINT_BYTES_CEILING).contains(&self.hint_bytes_max) {
            return Err(ConfigError::HintBytesOutOfRange {
                hint_bytes_max: self.hint_bytes_max,
            });
        }
        if self.change_queue_max == 0 || self.change_queue_max > CHANGE_QUEUE_CEILING {
            return Err(ConfigError::ChangeQueueOutOfRange {
                change_queue_max: self.change_queue_max,
            });
        }
        Ok(MembershipConfig {
            settings: self.clone(),
            generation,
        })
    }
}

/// Rough time for a silent peer to be declared dead: phi threshold times the mean heartbeat
/// interval, taken as the gossip interval.
fn detection_estimate_ms(phi_threshold: f64, gossip_interval_ms: u64) -> f64 {
    phi_threshold * gossip_interval_ms as f64
}

/// An advertised address must be one a peer can dial: a concrete IP and a real port.
fn is_routable(addr: SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0
}

/// `ip:port`, `[v6]:port` or `host:port` with a non-zero port; chitchat resolves host names
/// itself and re-resolves them every minute.
fn is_host_port(seed: &str) -> bool {
    if let Ok(addr) = seed.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    match seed.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && port.parse::<u16>().is_ok_and(|port| port != 0)
        }
        None => false,
    }
}

/// Why settings were refused. Each variant is a named rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("cluster_id must be 1..={CLUSTER_ID_BYTES_MAX} bytes, got {bytes}")]
    ClusterIdLength { bytes: usize },
    #[error("at most {SEEDS_MAX} seeds are accepted, got {count}")]
    TooManySeeds { count: usize },
    #[error("seed {seed:?} is not ip:port or host:port with a non-zero port")]
    BadSeed { seed: String },
    /// Peers dial what is advertised, so it must be a concrete address.
    #[error("{name} {addr} is not an address a peer can dial (unspecified ip or port 0)")]
    AddressNotRoutable {
        name: &'static str,
        addr: SocketAddr,
    },
    /// With an ephemeral listen port the advertised port cannot be known in advance.
    #[error("gossip_advertise_addr cannot be set when gossip_listen_addr uses port 0")]
    AdvertiseWithEphemeralPort,
    /// Peers cannot gossip back to 0.0.0.0.
    #[error("gossip_listen_addr {listen} is unspecified; set gossip_advertise_addr")]
    AdvertiseAddrRequired { listen: SocketAddr },
    #[error(
        "gossip_interval_ms must be {GOSSIP_INTERVAL_MS_MIN}..={GOSSIP_INTERVAL_MS_MAX}, got {gossip_interval_ms}"
    )]
    GossipIntervalOutOfRange { gossip_interval_ms: u64 },
    /// Below 3 one late datagram on a loaded machine marks a live peer dead.
    #[error(
        "phi_threshold must be {PHI_THRESHOLD_MIN}..={PHI_THRESHOLD_MAX}, got {phi_threshold}"
    )]
    PhiThresholdOutOfRange { phi_threshold: f64 },
    #[error(
        "heartbeat_samples_max must be 2..={HEARTBEAT_SAMPLES_CEILING}, got {heartbeat_samples_max}"
    )]
    HeartbeatSamplesOutOfRange { heartbeat_samples_max: usize },
    /// The initial interval is the failure detector's prior mean: far above the real rhythm a
    /// newly met peer that dies goes unnoticed for phi x initial; far below, new peers flap dead.
    #[error(
        "initial_heartbeat_interval_ms {initial_heartbeat_interval_ms} must be within \
         [gossip/2, gossip*4] of gossip_interval_ms {gossip_interval_ms}"
    )]
    InitialIntervalFarFromGossip {
        initial_heartbeat_interval_ms: u64,
        gossip_interval_ms: u64,
    },
    /// Gaps longer than the maximum are dropped from the mean; below two gossip rounds, normal
    /// jitter would be dropped and the mean would understate the rhythm, so live peers flap.
    #[error(
        "heartbeat_interval_max_ms {heartbeat_interval_max_ms} must be at least twice \
         gossip_interval_ms {gossip_interval_ms}"
    )]
    HeartbeatIntervalMaxTooShort {
        heartbeat_interval_max_ms: u64,
        gossip_interval_ms: u64,
    },
    /// A dead peer stays in digests for half the grace period so every node learns it is dead
    /// before it is forgotten; shorter than a few detection times, peers that have not yet
    /// noticed would gossip its state back, and it would flap between forgotten and known.
    #[error(
        "dead_node_grace_period_ms {dead_node_grace_period_ms} must be at least 4 detection \
         times (about {detection_estimate_ms} ms each)"
    )]
    GracePeriodTooShort {
        dead_node_grace_period_ms: u64,
        detection_estimate_ms: u64,
    },
    /// A value that does not fit a UDP datagram blocks every later update of the node.
    #[error(
        "hint_bytes_max must be {HINT_BYTES_FLOOR}..={HINT_BYTES_CEILING}, got {hint_bytes_max}"
    )]
    HintBytesOutOfRange { hint_bytes_max: usize },
    #[error("change_queue_max must be 1..={CHANGE_QUEUE_CEILING}, got {change_queue_max}")]
    ChangeQueueOutOfRange { change_queue_max: usize },
}

/// Validated membership configuration for one process start. Only
/// [`MembershipSettings::validate`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    settings: MembershipSettings,
    generation: Generation,
}

impl MembershipConfig {
    pub fn settings(&self) -> &MembershipSettings {
        &self.settings
    }
    pub fn node_id(&self) -> NodeId {
        self.settings.node_id
    }
    pub fn generation(&self) -> Generation {
        self.generation
    }
    pub fn cluster_id(&self) -> &str {
        &self.settings.cluster_id
    }
    pub fn gossip_listen_addr(&self) -> SocketAddr {
        self.settings.gossip_listen_addr
    }
    pub fn gossip_advertise_addr(&self) -> Option<SocketAddr> {
        self.settings.gossip_advertise_addr
    }
    pub fn seeds(&self) -> &[String] {
        &self.settings.seeds
    }
    pub fn client_addr(&self) -> SocketAddr {
        self.settings.client_addr
    }
    pub fn peer_addr(&self) -> SocketAddr {
        self.settings.peer_addr
    }
    pub fn kafka_addr(&self) -> Option<&str> {
        self.settings.kafka_addr.as_deref()
    }
    pub fn http_addr(&self) -> Option<&str> {
        self.settings.http_addr.as_deref()
    }
    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.settings.gossip_interval_ms)
    }
    pub fn phi_threshold(&self) -> f64 {
        self.settings.phi_threshold
    }
    pub fn heartbeat_samples_max(&self) -> usize {
        self.settings.heartbeat_samples_max
    }
    pub fn heartbeat_interval_max(&self) -> Duration {
        Duration::from_millis(self.settings.heartbeat_interval_max_ms)
    }
    pub fn initial_heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.settings.initial_heartbeat_interval_ms)
    }
    pub fn dead_node_grace_period(&self) -> Duration {
        Duration::from_millis(self.settings.dead_node_grace_period_ms)
    }
    pub fn hint_bytes_max(&self) -> usize {
        self.settings.hint_bytes_max
    }
    pub fn change_queue_max(&self) -> usize {
        self.settings.change_queue_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MembershipSettings {
        MembershipSettings::new(
            "test-cluster",
            NodeId(1),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9092".parse().unwrap(),
            "127.0.0.1:9093".parse().unwrap(),
        )
    }

    fn check(settings: MembershipSettings) -> Result<MembershipConfig, ConfigError> {
        settings.validate(Generation(1))
    }

    #[test]
    fn presets_are_valid() {
        let config = check(base()).unwrap();
        assert_eq!(config.gossip_interval(), Duration::from_millis(500));
        assert_eq!(config.generation(), Generation(1));
        let test = check(base().with_test_timing()).unwrap();
        assert_eq!(test.gossip_interval(), Duration::from_millis(50));
    }

    #[test]
    fn every_named_rule_refuses() {
        let mut s = base();
        s.cluster_id = String::new();
        assert_eq!(check(s), Err(ConfigError::ClusterIdLength { bytes: 0 }));
        let mut s = base();
        s.cluster_id = "c".repeat(CLUSTER_ID_BYTES_MAX + 1);
        assert!(matches!(check(s), Err(ConfigError::ClusterIdLength { .. })));

        let mut s = base();
        s.seeds = vec!["127.0.0.1:7000".into(); SEEDS_MAX + 1];
        assert!(matches!(check(s), Err(ConfigError::TooManySeeds { .. })));
        for bad in [
            "nohost",
            ":7000",
            "host:0",
            "host:x",
            "a b:1",
            "127.0.0.1:0",
        ] {
            let mut s = base();
            s.seeds = vec![bad.into()];
            assert_eq!(
                check(s),
                Err(ConfigError::BadSeed { seed: bad.into() }),
                "{bad}"
            );
        }
        let mut s = base();
        s.seeds = vec![
            "127.0.0.1:7000".into(),
            "[::1]:7000".into(),
            "node-2.cairn:7000".into(),
        ];
        assert!(check(s).is_ok());

        let mut s = base();
        s.client_addr = "0.0.0.0:9092".parse().unwrap();
        assert!(matches!(
            check(s),
            Err(ConfigError::AddressNotRoutable {
                name: "client_addr",
                ..
            })
        ));
        let mut s = base();
        s.peer_addr = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(
            check(s),
            Err(ConfigError::AddressNotRoutable {
                name: "peer_addr",
                ..
            })
        ));
        let mut s = base();
        s.gossip_advertise_addr = Some("127.0.0.1:7000".parse().unwrap());
        assert_eq!(check(s), Err(ConfigError::AdvertiseWithEphemeralPort));
        let mut s = base();
        s.gossip_listen_addr = "0.0.0.0:7000".parse().unwrap();
        assert!(matches!(
            check(s.clone()),
            Err(ConfigError::AdvertiseAddrRequired { .. })
        ));
        s.gossip_advertise_addr = Some("10.1.2.3:7000".parse().unwrap());
        assert!(check(s).is_ok());

        let mut s = base();
        s.gossip_interval_ms = 5;
        assert!(matches!(
            check(s),
            Err(ConfigError::GossipIntervalOutOfRange { .. })
        ));
        for phi in [2.0, 101.0, f64::NAN] {
            let mut s = base();
            s.phi_threshold = phi;
            assert!(matches!(
                check(s),
                Err(ConfigError::PhiThresholdOutOfRange { .. })
            ));
        }
        let mut s = base();
        s.heartbeat_samples_max = 1;
        assert!(matches!(
            check(s),
            Err(ConfigError::HeartbeatSamplesOutOfRange { .. })
        ));
        let mut s = base();
        s.initial_heartbeat_interval_ms = 5_000;
        assert!(matches!(
            check(s),
            Err(ConfigError::InitialIntervalFarFromGossip { .. })
        ));
        let mut s = base();
        s.heartbeat_interval_max_ms = 900;
        assert!(matches!(
            check(s),
            Err(ConfigError::HeartbeatIntervalMaxTooShort { .. })
        ));
        let mut s = base();
        s.dead_node_grace_period_ms = 10_000;
        assert!(matches!(
            check(s),
            Err(ConfigError::GracePeriodTooShort { .. })
        ));
        for hint_bytes_max in [HINT_BYTES_FLOOR - 1, HINT_BYTES_CEILING + 1] {
            let mut s = base();
            s.hint_bytes_max = hint_bytes_max;
            assert!(matches!(
                check(s),
                Err(ConfigError::HintBytesOutOfRange { .. })
            ));
        }
        let mut s = base();
        s.change_queue_max = 0;
        assert!(matches!(
            check(s),
            Err(ConfigError::ChangeQueueOutOfRange { .. })
        ));
    }

    #[test]
    fn settings_file_rejects_unknown_fields() {
        let text = r#"
            cluster_id = "c"
            node_id = 3
            gossip_listen_addr = "127.0.0.1:7000"
            seeds = ["127.0.0.1:7000"]
            client_addr = "127.0.0.1:9092"
            peer_addr = "127.0.0.1:9093"
            gossip_interval_ms = 200
            phi_threshold = 8.0
            heartbeat_samples_max = 100
            heartbeat_interval_max_ms = 5000
            initial_heartbeat_interval_ms = 200
            dead_node_grace_period_ms = 600000
            hint_bytes_max = 4096
            change_queue_max = 64
        "#;
        let settings: MembershipSettings = toml::from_str(text).unwrap();
        assert_eq!(settings.node_id, NodeId(3));
        assert!(settings.validate(Generation(9)).is_ok());
        let with_typo = format!("{text}\ngossip_intervall_ms = 3\n");
        assert!(toml::from_str::<MembershipSettings>(&with_typo).is_err());
    }

    #[test]
    fn generations_from_start_time_grow() {
        let first = Generation::from_start_time();
        std::thread::sleep(Duration::from_millis(2));
        assert!(Generation::from_start_time() > first);
    }
}
