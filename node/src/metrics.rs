//! The node's metrics, served as Prometheus (OpenMetrics) text on `/metrics` by [`crate::http`].
//!
//! Two kinds, by cost:
//!
//! - Events counted where they happen ([`NodeMetrics`], one per node): produce and fetch
//!   requests, their bytes and latencies, flush latency, leader
//!   changes, group rebalances, accepted and refused connections, rejected requests by error.
//!   Each is an atomic counter or a histogram updated once per request, batch or flush, never
//!   per record; the label sets of rejected requests are `&'static` error names, so counting
//!   one allocates nothing.
//! - State read at scrape time ([`BrokerCollector`]): per-partition offsets, leadership and
//!   follower lag, readiness, open connections, group-commit counts and the log-warning
//!   counters. The partition actors already publish what they hold in their shared state, so
//!   a scrape reads that and costs the actors nothing.
//!
//! The event metrics belong to a node, not to the process: `node::run` makes one
//! `Arc<NodeMetrics>`, the [`Broker`] holds it ([`Broker::metrics`]) and hands it on to what
//! it starts (partition actors, group coordinators, the compactor), the listeners reach it
//! through the broker, and the store's flush observer holds a clone. So two nodes in one
//! process (tests, an in-memory cluster) never mix their counts. (The log-warning counters
//! of [`crate::logging`] stay process-wide, as the log itself is.)
//!
//! Every metric, its type, labels and meaning: docs/operations.md.

use crate::broker::Broker;
use crate::server::Connections;
use cairn_storage::LogStore;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// The label set of a rejected request: the error's name (`ApiError::kind`).
type ErrorLabel = [(&'static str, &'static str); 1];

/// Counters and histograms of events, updated where the events happen.
#[derive(Debug)]
pub struct NodeMetrics {
    pub produce_requests: Counter,
    pub produce_bytes: Counter,
    pub produce_latency: Histogram,
    pub fetch_requests: Counter,
    pub fetch_bytes: Counter,
    pub fetch_latency: Histogram,
    pub flush_latency: Histogram,
    pub leader_changes: Counter,
    pub leader_resignations: Counter,
    pub group_rebalances: Counter,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub peer_handshakes_refused: Counter,
    /// Bytes of log the compactor read (index and rewrite, every pass), counted per batch as
    /// it goes, so a long job shows its progress.
    pub compaction_bytes_read: Counter,
    /// Bytes compaction removed from logs (a batch's size before its rewrite less after).
    pub compaction_bytes_removed: Counter,
    pub compaction_batches_rewritten: Counter,
    /// Compaction jobs (one partition, one decision) finished, and those that stopped early.
    pub compaction_jobs: Counter,
    pub compaction_jobs_failed: Counter,
    /// Passes compaction jobs began, one per range of keys whose index fits the budget.
    pub compaction_passes: Counter,
    pub compaction_pace: Gauge,
    pub compaction_duration: Histogram,
    rejected_requests: Family<ErrorLabel, Counter>,
}

/// Latency buckets, in seconds: 100 us to about 26 s, doubling (19 buckets). A produce with
/// acks=all takes a flush on a majority (milliseconds); a fetch may wait up to its long poll.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl NodeMetrics {
    /// One fetch request answered (on either listener), started at `started`.
    pub fn fetched(&self, started: std::time::Instant) {
        self.fetch_requests.inc();
        self.fetch_latency.observe(seconds(started.elapsed()));
    }

    /// One produce request answered (on either listener), started at `started`.
    pub fn produced(&self, batch_bytes: u64, started: std::time::Instant) {
        self.produce_requests.inc();
        self.produce_bytes.inc_by(batch_bytes);
        self.produce_latency.observe(seconds(started.elapsed()));
    }

    /// Every counter at zero, shared with nothing: one per node.
    pub fn new() -> NodeMetrics {
        NodeMetrics {
            produce_requests: Counter::default(),
            produce_bytes: Counter::default(),
            produce_latency: latency_histogram(),
            fetch_requests: Counter::default(),
            fetch_bytes: Counter::default(),
            fetch_latency: latency_histogram(),
            flush_latency: latency_histogram(),
            leader_changes: Counter::default(),
            leader_resignations: Counter::default(),
            group_rebalances: Counter::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            peer_handshakes_refused: Counter::default(),
            compaction_bytes_read: Counter::default(),
            compaction_bytes_removed: Counter::default(),
            compaction_batches_rewritten: Counter::default(),
            compaction_jobs: Counter::default(),
            compaction_jobs_failed: Counter::default(),
            compaction_passes: Counter::default(),
            compaction_pace: Gauge::default(),
            compaction_duration: latency_histogram(),
            rejected_requests: Family::default(),
        }
    }

    /// Counts a request answered with `error`, by the error's name.
    pub fn rejected(&self, error: &cairn_protocol::ApiError) {
        self.rejected_requests
            .get_or_create(&[("error", error.kind())])
            .inc();
    }

    /// Registers every event metric (clones share their values) in `registry`, which ends
    /// each help text with a period itself.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_produce_requests",
            "Produce requests answered on either listener, Cairn or Kafka (successful or not; a Kafka request may carry several partitions' batches)",
            self.produce_requests.clone(),
        );
        registry.register(
            "cairn_produce_bytes",
            "Bytes of record batches in produce requests answered",
            self.produce_bytes.clone(),
        );
        registry.register(
            "cairn_produce_latency_seconds",
            "Time from reading a produce request to its answer (with acks=all, until committed)",
            self.produce_latency.clone(),
        );
        registry.register(
            "cairn_fetch_requests",
            "Fetch requests answered on either listener (successful or not), from consumers and learners",
            self.fetch_requests.clone(),
        );
        registry.register(
            "cairn_fetch_bytes",
            "Bytes of record batches in fetch replies",
            self.fetch_bytes.clone(),
        );
        registry.register(
            "cairn_fetch_latency_seconds",
            "Time from reading a fetch request to its answer, long-poll wait included",
            self.fetch_latency.clone(),
        );
        registry.register(
            "cairn_flush_latency_seconds",
            "Duration of the store's group-commit flushes; every durable append waits for one",
            self.flush_latency.clone(),
        );
        registry.register(
            "cairn_leader_changes",
            "Times a replica hosted here saw its partition's leader change (or become unknown)",
            self.leader_changes.clone(),
        );
        registry.register(
            "cairn_leader_resignations",
            "Leaders on this node that resigned for their partition's preferred replica",
            self.leader_resignations.clone(),
        );
        registry.register(
            "cairn_group_rebalances",
            "Consumer-group assignment changes made by the coordinators on this node",
            self.group_rebalances.clone(),
        );
        registry.register(
            "cairn_connections_accepted",
            "Client and peer connections admitted on the client listener",
            self.connections_accepted.clone(),
        );
        registry.register(
            "cairn_connections_refused",
            "Connections refused over limits.connections_max or connections_per_address_max",
            self.connections_refused.clone(),
        );
        registry.register(
            "cairn_peer_handshakes_refused",
            "Connections claiming to be a peer that failed the cluster-secret handshake",
            self.peer_handshakes_refused.clone(),
        );
        registry.register(
            "cairn_compaction_bytes_read",
            "Bytes of partition logs the compactor read, index and rewrite of every pass, counted as it reads",
            self.compaction_bytes_read.clone(),
        );
        registry.register(
            "cairn_compaction_bytes_removed",
            "Bytes compaction removed from partition logs (batch sizes before their rewrite less after)",
            self.compaction_bytes_removed.clone(),
        );
        registry.register(
            "cairn_compaction_batches_rewritten",
            "Batches the compactor replaced with their compacted versions",
            self.compaction_batches_rewritten.clone(),
        );
        registry.register(
            "cairn_compaction_jobs",
            "Compaction jobs (one partition, one committed decision) the compactor finished",
            self.compaction_jobs.clone(),
        );
        registry.register(
            "cairn_compaction_jobs_failed",
            "Compaction jobs that stopped on an error (the next decision tries again)",
            self.compaction_jobs_failed.clone(),
        );
        registry.register(
            "cairn_compaction_passes",
            "Passes compaction jobs began over their logs (one per range of keys whose index fits retention.compaction_index_bytes_max)",
            self.compaction_passes.clone(),
        );
        registry.register(
            "cairn_compaction_pace_bytes_per_second",
            "The compactor's read rate when it last changed: retention.compaction_bytes_per_second, down to a sixteenth of it while its rewrites slow the group commit's flushes",
            self.compaction_pace.clone(),
        );
        registry.register(
            "cairn_compaction_duration_seconds",
            "Duration of each compaction job, finished or stopped, throttling included",
            self.compaction_duration.clone(),
        );
        registry.register(
            "cairn_rejected_requests",
            "Requests answered with an error, by the error's name (fetches: per partition refused)",
            self.rejected_requests.clone(),
        );
    }
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics::new()
    }
}

/// A duration in the seconds Prometheus expects.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The registry a scrape encodes: the broker's event metrics and its state.
pub fn registry<S: LogStore>(broker: Arc<Broker<S>>, connections: Connections) -> Registry {
    let mut registry = Registry::default();
    broker.metrics().register(&mut registry);
    registry.register_collector(Box::new(BrokerCollector {
        broker,
        connections,
    }));
    registry
}

/// The registry as OpenMetrics text (`# EOF` last).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; an error here would be a bug in a collector.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(%error, "metrics encoding failed");
    }
    text
}

/// One hosted replica as a scrape sees it (see `Broker::partition_metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetrics {
    pub topic: String,
    pub partition: u32,
    pub log_start: u64,
    pub log_end: u64,
    pub high_watermark: u64,
    pub leader_here: bool,
    /// Leader only: each follower and how many offsets its log is behind ours.
    pub follower_lag: Vec<(cairn_protocol::NodeId, u64)>,
    /// Leader only: a replica sits on a node gossip does not hear (as `cairn cluster status`
    /// counts it), or this replica lost committed data.
    pub under_replicated: bool,
    /// Lost committed data: being repaired from the leader, or corrupted beyond repair.
    pub damaged: bool,
}

/// Reads the broker's state at scrape time.
struct BrokerCollector<S: LogStore> {
    broker: Arc<Broker<S>>,
    connections: Connections,
}

impl<S: LogStore> std::fmt::Debug for BrokerCollector<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BrokerCollector")
    }
}

/// Writes one gauge or counter family: `samples` as (labels, value).
fn encode_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let mut sample = family.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, f64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

/// Writes one metric without labels.
fn encode_single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    match metric_type {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, f64>(&value, None),
        _ => metric.encode_gauge(&value),
    }
}

impl<S: LogStore> prometheus_client::collector::Collector for BrokerCollector<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let broker = &self.broker;
        let partitions = broker.partition_metrics();
        let labelled: Vec<(String, String)> = partitions
            .iter()
            .map(|partition| (partition.topic.clone(), partition.partition.to_string()))
            .collect();
        let (partitions, labelled) = (&partitions, &labelled);
        let labels = move |index: usize| {
            let (topic, partition) = &labelled[index];
            [("topic", topic.as_str()), ("partition", partition.as_str())]
        };
        let per_partition = |value: fn(&PartitionMetrics) -> u64| {
            (0..partitions.len()).map(move |index| (labels(index), value(&partitions[index])))
        };
        encode_family(
            &mut encoder,
            "cairn_partition_log_start_offset",
            "First offset still in this replica's log (retention moves it).",
            Gauge,
            per_partition(|partition| partition.log_start),
        )?;
        encode_family(
            &mut encoder,
            "cairn_partition_log_end_offset",
            "Offset the next batch appended to this replica's log gets.",
            Gauge,
            per_partition(|partition| partition.log_end),
        )?;
        encode_family(
            &mut encoder,
            "cairn_partition_high_watermark",
            "First offset not yet committed, as this replica knows it; consumers read below it.",
            Gauge,
            per_partition(|partition| partition.high_watermark),
        )?;
        encode_family(
            &mut encoder,
            "cairn_partition_leader",
            "1 while this node leads the partition, else 0.",
            Gauge,
            per_partition(|partition| u64::from(partition.leader_here)),
        )?;
        encode_family(
            &mut encoder,
            "cairn_partition_under_replicated",
            "Leader only: 1 while a replica is on a node gossip does not hear, or is damaged.",
            Gauge,
            (0..partitions.len())
                .filter(|&index| partitions[index].leader_here)
                .map(|index| (labels(index), u64::from(partitions[index].under_replicated))),
        )?;
        encode_family(
            &mut encoder,
            "cairn_partition_damaged",
            "1 while this replica lost committed data (repairing from the leader, or corrupted).",
            Gauge,
            per_partition(|partition| u64::from(partition.damaged)),
        )?;
        let followers: Vec<(usize, String, u64)> = partitions
            .iter()
            .enumerate()
            .flat_map(|(index, partition)| {
                partition
                    .follower_lag
                    .iter()
                    .map(move |(follower, lag)| (index, follower.to_string(), *lag))
            })
            .collect();
        let lag = followers.iter().map(|(index, follower, value)| {
            let [topic, partition] = labels(*index);
            ([topic, partition, ("follower", follower.as_str())], *value)
        });
        encode_family(
            &mut encoder,
            "cairn_partition_follower_lag_offsets",
            "Leader only: offsets the follower's log is behind the leader's log end.",
            Gauge,
            lag,
        )?;
        encode_single(
            &mut encoder,
            "cairn_node_ready",
            "1 once the node serves: its metadata is caught up (what /ready checks first).",
            Gauge,
            u64::from(broker.check_ready().is_ok()),
        )?;
        encode_single(
            &mut encoder,
            "cairn_metadata_lag_offsets",
            "Committed __meta offsets this node has not applied yet.",
            Gauge,
            broker.metadata_lag().map_or(0, |(applied, committed)| {
                committed.0.saturating_sub(applied.0)
            }),
        )?;
        encode_single(
            &mut encoder,
            "cairn_connections_open",
            "Connections open on the client listener (clients and peers).",
            Gauge,
            self.connections.open() as u64,
        )?;
        let flushes = broker.committer().stats();
        encode_single(
            &mut encoder,
            "cairn_flushes",
            "Group-commit flushes run.",
            Counter,
            flushes.flushes,
        )?;
        encode_single(
            &mut encoder,
            "cairn_flushes_failed",
            "Group-commit flushes that failed (their appends got a storage error).",
            Counter,
            flushes.flushes_failed,
        )?;
        encode_single(
            &mut encoder,
            "cairn_flush_requests",
            "Flush requests answered; divided by cairn_flushes_total, appends per flush.",
            Counter,
            flushes.requests_served,
        )?;
        let engine = broker.store().engine_stats();
        encode_single(
            &mut encoder,
            "cairn_storage_cleaning_backlog_segments",
            "Log segments waiting for the storage engine's background cleaner. Past its bound \
             (2 GiB of segments) writes clean them themselves, on the append path.",
            Gauge,
            engine.cleaning_backlog_segments,
        )?;
        encode_single(
            &mut encoder,
            "cairn_storage_pages_cleaned_by_writes",
            "Pages the storage engine cleaned inside writes, on the append path (the backlog was \
             at its bound): a starved background cleaner shows here.",
            Counter,
            engine.pages_cleaned_by_writes,
        )?;
        encode_single(
            &mut encoder,
            "cairn_storage_pages_cleaned_in_background",
            "Pages the storage engine's background cleaner cleaned, off the append path.",
            Counter,
            engine.pages_cleaned_in_background,
        )?;
        encode_single(
            &mut encoder,
            "cairn_storage_log_syncs",
            "Log writes fdatasync'd (storage.durability = fsync; 0 with flush).",
            Counter,
            engine.syncs.log_syncs,
        )?;
        encode_single(
            &mut encoder,
            "cairn_storage_blob_syncs",
            "Blob files (large batches) fdatasync'd (storage.durability = fsync; 0 with flush).",
            Counter,
            engine.syncs.blob_syncs,
        )?;
        encode_single(
            &mut encoder,
            "cairn_storage_directory_syncs",
            "Directories fsync'd after new files (storage.durability = fsync; 0 with flush).",
            Counter,
            engine.syncs.directory_syncs,
        )?;
        let warnings = crate::logging::floodable_warnings();
        encode_single(
            &mut encoder,
            "cairn_log_warnings_floodable",
            "Warnings from sources a remote sender controls (gossip), logged or not.",
            Counter,
            warnings.as_ref().map_or(0, |counts| counts.seen()),
        )?;
        encode_single(
            &mut encoder,
            "cairn_log_warnings_suppressed",
            "Of those, warnings not logged by the rate limit (one per callsite every 5 s).",
            Counter,
            warnings.as_ref().map_or(0, |counts| counts.suppressed()),
        )?;
        encode_single(
            &mut encoder,
            "cairn_log_peer_refusals_suppressed",
            "Refused peer handshakes not logged by the rate limit.",
            Counter,
            crate::server::peer_refusals_suppressed(),
        )?;
        encode_single(
            &mut encoder,
            "cairn_log_lines_dropped",
            "Log lines dropped because stderr did not take them fast enough.",
            Counter,
            crate::logging::dropped_lines(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_requests_are_counted_by_error_name() {
        let metrics = NodeMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.rejected(&cairn_protocol::ApiError::UnknownTopic {
            topic: "a \"quoted\" name".to_string(),
        });
        metrics.rejected(&cairn_protocol::ApiError::UnknownTopic {
            topic: "other".to_string(),
        });
        metrics.rejected(&cairn_protocol::ApiError::ShuttingDown);
        let text = encode(&registry);
        assert!(
            text.contains("cairn_rejected_requests_total{error=\"UnknownTopic\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cairn_rejected_requests_total{error=\"ShuttingDown\"} 1\n"),
            "{text}"
        );
        // The topic, a client's text, never becomes a label.
        assert!(!text.contains("quoted"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Two nodes in one process count apart: what one records is neither in the other's
    /// counters nor in the other's scrape.
    #[test]
    fn two_nodes_metrics_count_apart() {
        let (first, second) = (NodeMetrics::new(), NodeMetrics::new());
        let (mut first_registry, mut second_registry) = (Registry::default(), Registry::default());
        first.register(&mut first_registry);
        second.register(&mut second_registry);
        first.produced(512, std::time::Instant::now());
        first.leader_changes.inc();
        first.rejected(&cairn_protocol::ApiError::ShuttingDown);
        second.fetched(std::time::Instant::now());

        assert_eq!(first.produce_requests.get(), 1);
        assert_eq!(second.produce_requests.get(), 0);
        assert_eq!(second.produce_bytes.get(), 0);
        assert_eq!(second.leader_changes.get(), 0);
        assert_eq!(first.fetch_requests.get(), 0);
        let first_text = encode(&first_registry);
        let second_text = encode(&second_registry);
        for counted in [
            "cairn_produce_requests_total 1\n",
            "cairn_produce_bytes_total 512\n",
            "cairn_leader_changes_total 1\n",
            "cairn_fetch_requests_total 0\n",
            "cairn_rejected_requests_total{error=\"ShuttingDown\"} 1\n",
        ] {
            assert!(first_text.contains(counted), "{counted:?} in {first_text}");
        }
        for counted in [
            "cairn_produce_requests_total 0\n",
            "cairn_produce_bytes_total 0\n",
            "cairn_leader_changes_total 0\n",
            "cairn_fetch_requests_total 1\n",
        ] {
            assert!(
                second_text.contains(counted),
                "{counted:?} in {second_text}"
            );
        }
        assert!(!second_text.contains("ShuttingDown"), "{second_text}");
    }

    #[test]
    fn latencies_land_in_their_buckets() {
        let metrics = NodeMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics
            .produce_latency
            .observe(seconds(Duration::from_micros(150)));
        metrics
            .produce_latency
            .observe(seconds(Duration::from_secs(60)));
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE cairn_produce_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("cairn_produce_latency_seconds_bucket{le=\"0.0001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("cairn_produce_latency_seconds_bucket{le=\"0.0002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cairn_produce_latency_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cairn_produce_latency_seconds_count 2\n"),
            "{text}"
        );
    }
}
