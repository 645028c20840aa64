//! Workload files: what one benchmark run does, in TOML, in the spirit of the OpenMessaging
//! Benchmark's workload files. The same file drives Cairn and a peer broker, so every figure
//! has a peer figure measured under the same load.
//!
//! ```toml
//! name = "rf3-1kb-max"
//! nodes = 3                 # local nodes the bench starts
//! replication_factor = 3
//! partitions = 6            # JetStream: one stream per partition
//! record_bytes = 1024
//! producers = 2             # clients, each with its own connections
//! consumers = 1             # clients reading while the producers write (end-to-end latency)
//! rate = 0                  # records/s over all producers; 0 = as fast as acks allow
//! # rate_of_max = { workload = "rf3-1kb-max", fraction = 0.5 }  # instead of rate
//! acks = "all"
//! idle_s = 0                # measure the idle nodes this long before the load
//! warmup_s = 5              # load not counted
//! duration_s = 20           # load measured
//! [cairn]                   # per-system client settings (optional)
//! in_flight_max = 2048
//! [nats]
//! in_flight_max = 256
//! [kafka]                   # the Kafka driver (librdkafka), on Cairn's Kafka listener or a peer
//! in_flight_max = 2048
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Bytes at the start of each record's value holding the producer's intended send time, for
/// end-to-end latency.
pub const STAMP_BYTES: usize = 8;
/// Bounds that keep a typo from starting a run that cannot finish on one machine.
pub const PARTITIONS_MAX: u32 = 10_000;
pub const CLIENTS_MAX: u32 = 64;
pub const NODES_MAX: u16 = 9;
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
pub const SECONDS_MAX: u64 = 3_600;
pub const IN_FLIGHT_MAX: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default = "one_node")]
    pub nodes: u16,
    pub replication_factor: u16,
    pub partitions: u32,
    pub record_bytes: usize,
    pub producers: u32,
    pub consumers: u32,
    /// Records/s over all producers; 0 sends as fast as acknowledgements allow.
    #[serde(default)]
    pub rate: u64,
    /// A rate relative to another workload's measured maximum (same system, same run).
    #[serde(default)]
    pub rate_of_max: Option<RateOfMax>,
    #[serde(default)]
    pub acks: AcksSetting,
    #[serde(default)]
    pub idle_s: u64,
    pub warmup_s: u64,
    pub duration_s: u64,
    #[serde(default)]
    pub cairn: CairnSettings,
    #[serde(default)]
    pub nats: NatsSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
}

fn one_node() -> u16 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOfMax {
    /// The `name` of the workload whose measured records/s this one is a fraction of.
    pub workload: String,
    pub fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksSetting {
    #[default]
    All,
    Leader,
    None,
}

/// Cairn client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CairnSettings {
    /// Records a producer has sent and not yet seen acknowledged; `send` waits past it.
    pub in_flight_max: usize,
    pub linger_ms: u64,
    pub batch_bytes: usize,
    pub in_flight_per_partition: usize,
}

impl Default for CairnSettings {
    fn default() -> Self {
        CairnSettings {
            in_flight_max: 2048,
            linger_ms: 5,
            batch_bytes: 64 * 1024,
            in_flight_per_partition: 5,
        }
    }
}

/// NATS JetStream client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Publishes a producer has sent and not yet seen acknowledged.
    pub in_flight_max: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings { in_flight_max: 256 }
    }
}

/// Kafka client (librdkafka) settings. Batching as [`CairnSettings`] (5 ms linger, 64 KiB
/// batches, acks=all, idempotent); two defaults differ from librdkafka's own, measured on the
/// 2-core machine (rf3-1kb-max, librdkafka 2.12): with more than one request in flight per
/// connection or with sticky partitioning, librdkafka's broker threads spin (poll with no
/// timeout while a partition waits for its turn), using 0.6-0.9 of a core at 8-10,000
/// records/s; one request per connection and records spread over every partition used 0.2 of a
/// core and doubled the records/s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Records a producer has sent and not yet seen acknowledged.
    pub in_flight_max: usize,
    /// `linger.ms`.
    pub linger_ms: u64,
    /// `batch.size`: bytes of one partition's batch.
    pub batch_bytes: usize,
    /// `max.in.flight.requests.per.connection` (at most 5 with idempotence); librdkafka puts
    /// every partition the broker leads in one request.
    pub in_flight_per_connection: usize,
    /// `sticky.partitioning.linger.ms`: how long keyless records stay on one partition; 0
    /// spreads them over every partition at random, record by record.
    pub sticky_linger_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            in_flight_max: 2048,
            linger_ms: 5,
            batch_bytes: 64 * 1024,
            in_flight_per_connection: 1,
            sticky_linger_ms: 0,
        }
    }
}

/// What is wrong with a workload file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadError(pub String);

impl std::fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WorkloadError {}

impl Workload {
    pub fn parse(text: &str) -> Result<Workload, WorkloadError> {
        let workload: Workload =
            toml::from_str(text).map_err(|error| WorkloadError(error.to_string()))?;
        workload.validate()?;
        Ok(workload)
    }

    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| WorkloadError(format!("reading {}: {error}", path.display())))?;
        Workload::parse(&text)
            .map_err(|error| WorkloadError(format!("{}: {error}", path.display())))
    }

    pub fn validate(&self) -> Result<(), WorkloadError> {
        let fail = |message: String| Err(WorkloadError(message));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return fail(format!(
                "name {:?} must be non-empty ASCII letters, digits, '-' or '_' (it names topics and files)",
                self.name
            ));
        }
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return fail(format!("nodes must be 1 to {NODES_MAX}"));
        }
        if !(1..=self.nodes).contains(&self.replication_factor) {
            return fail("replication_factor must be 1 to nodes".into());
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return fail(format!("partitions must be 1 to {PARTITIONS_MAX}"));
        }
        if !(STAMP_BYTES..=RECORD_BYTES_MAX).contains(&self.record_bytes) {
            return fail(format!(
                "record_bytes must be {STAMP_BYTES} (the send-time stamp) to {RECORD_BYTES_MAX}"
            ));
        }
        if !(1..=CLIENTS_MAX).contains(&self.producers) || self.consumers > CLIENTS_MAX {
            return fail(format!(
                "producers must be 1 to {CLIENTS_MAX}, consumers 0 to {CLIENTS_MAX}"
            ));
        }
        if let Some(rate_of_max) = &self.rate_of_max {
            if self.rate != 0 {
                return fail("give rate or rate_of_max, not both".into());
            }
            if !(rate_of_max.fraction > 0.0 && rate_of_max.fraction <= 1.0) {
                return fail("rate_of_max.fraction must be above 0 and at most 1".into());
            }
        }
        if self.duration_s == 0
            || self.duration_s > SECONDS_MAX
            || self.warmup_s > SECONDS_MAX
            || self.idle_s > SECONDS_MAX
        {
            return fail(format!(
                "duration_s must be 1 to {SECONDS_MAX}; warmup_s and idle_s at most {SECONDS_MAX}"
            ));
        }
        for (system, in_flight) in [
            ("cairn", self.cairn.in_flight_max),
            ("nats", self.nats.in_flight_max),
            ("kafka", self.kafka.in_flight_max),
        ] {
            if !(1..=IN_FLIGHT_MAX).contains(&in_flight) {
                return fail(format!(
                    "{system}.in_flight_max must be 1 to {IN_FLIGHT_MAX}"
                ));
            }
        }
        if self.cairn.in_flight_per_partition == 0 || self.cairn.batch_bytes < 64 {
            return fail(
                "cairn.in_flight_per_partition must be at least 1, cairn.batch_bytes at least 64"
                    .into(),
            );
        }
        if !(1..=5).contains(&self.kafka.in_flight_per_connection)
            || self.kafka.batch_bytes < 64
            || self.kafka.linger_ms > SECONDS_MAX * 1000
            || self.kafka.sticky_linger_ms > SECONDS_MAX * 1000
        {
            return fail(
                "kafka.in_flight_per_connection must be 1 to 5 (idempotence), kafka.batch_bytes \
                 at least 64, kafka.linger_ms and kafka.sticky_linger_ms at most an hour"
                    .into(),
            );
        }
        Ok(())
    }

    /// The records/s to pace at (0: as fast as possible), given the maximum measured for
    /// `rate_of_max.workload`, if this workload refers to one.
    pub fn target_rate(&self, reference_max: Option<f64>) -> Result<u64, WorkloadError> {
        match (&self.rate_of_max, reference_max) {
            (None, _) => Ok(self.rate),
            (Some(rate_of_max), Some(max)) => {
                Ok(((max * rate_of_max.fraction).round() as u64).max(1))
            }
            (Some(rate_of_max), None) => Err(WorkloadError(format!(
                "{} paces at a fraction of {}'s maximum, which has not been measured",
                self.name, rate_of_max.workload
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        replication_factor = 1
        partitions = 2
        record_bytes = 100
        producers = 1
        consumers = 1
        warmup_s = 0
        duration_s = 1
    "#;

    #[test]
    fn every_shipped_workload_file_parses_and_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut names = Vec::new();
        for directory in [root.clone(), root.join("scale")] {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .extension()
                    .is_some_and(|extension| extension == "toml")
                {
                    let workload = Workload::load(&path).unwrap();
                    names.push(workload.name);
                }
            }
        }
        names.sort();
        assert!(names.len() >= 8, "{names:?}");
        assert!(names.contains(&"rf3-1kb-max".to_string()), "{names:?}");
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "workload names must be unique");
    }

    #[test]
    fn defaults_fill_what_a_minimal_file_leaves_out() {
        let workload = Workload::parse(MINIMAL).unwrap();
        assert_eq!(workload.nodes, 1);
        assert_eq!(workload.rate, 0);
        assert_eq!(workload.acks, AcksSetting::All);
        assert_eq!(workload.nats.in_flight_max, 256);
        assert_eq!(workload.target_rate(None), Ok(0));
    }

    #[test]
    fn bad_files_get_an_error_that_names_the_problem() {
        let cases = [
            (
                "replication_factor = 1",
                "replication_factor = 2",
                "replication_factor",
            ),
            ("record_bytes = 100", "record_bytes = 4", "record_bytes"),
            ("duration_s = 1", "duration_s = 0", "duration_s"),
            ("producers = 1", "producers = 0", "producers"),
            ("name = \"t\"", "name = \"a b\"", "name"),
            (
                "partitions = 2",
                "partitions = 2\nunknown_field = 1",
                "unknown",
            ),
            (
                "partitions = 2",
                "partitions = 2\nrate = 5\nrate_of_max = { workload = \"x\", fraction = 0.5 }",
                "not both",
            ),
            (
                "partitions = 2",
                "partitions = 2\nrate_of_max = { workload = \"x\", fraction = 1.5 }",
                "fraction",
            ),
            (
                "duration_s = 1",
                "duration_s = 1\n[nats]\nin_flight_max = 0",
                "in_flight_max",
            ),
            (
                "duration_s = 1",
                "duration_s = 1\n[kafka]\nin_flight_per_connection = 6",
                "kafka.in_flight_per_connection",
            ),
            (
                "duration_s = 1",
                "duration_s = 1\n[kafka]\nin_flight_max = 0",
                "kafka.in_flight_max",
            ),
        ];
        for (from, to, expected) in cases {
            let text = MINIMAL.replace(from, to);
            assert_ne!(text, MINIMAL, "{from} not in the template");
            let error = Workload::parse(&text).unwrap_err();
            assert!(error.0.contains(expected), "{to}: {error}");
        }
    }

    #[test]
    fn a_relative_rate_needs_its_reference_and_takes_its_fraction() {
        let text = format!("{MINIMAL}\nrate_of_max = {{ workload = \"max\", fraction = 0.5 }}\n");
        let workload = Workload::parse(&text).unwrap();
        assert!(workload.target_rate(None).is_err());
        assert_eq!(workload.target_rate(Some(50_001.0)), Ok(25_001));
    }
}
