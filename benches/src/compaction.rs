//! `cairn-bench compaction`: the publish latency of a workload (rf3-1kb-half by default) while
//! the nodes' compactors clean a large compacted topic on the same cluster (issue 18: "it must
//! not stall produce latency").
//!
//! One invocation, one cluster of release-built nodes:
//!
//! 1. the workload's reference maximum, when its rate is `rate_of_max` (as `cairn-bench run`
//!    measures it), unless `--rate` is given;
//! 2. **baseline**: the workload on its own topic, no compaction anywhere;
//! 3. **fill**: `--fill-bytes` of `--fill-record-bytes` values over `--fill-keys` keys into a
//!    `cleanup.policy=compact` topic, so all but one value per key is superseded. The topic is
//!    created with `min.compaction.lag.ms` of a week, so nothing is eligible yet and no leader
//!    decides;
//! 4. **held** (with `--held`): the workload on a new topic right after the fill, the topic
//!    still held back: the control for what the fill alone leaves the store to digest;
//! 5. **compacting**: the workload on a new topic; as its warm-up starts, the compacted topic's
//!    `min.compaction.lag.ms` is set to 0 and its `segment.bytes` to 1 MiB (less than the
//!    fill; the leaders decided once when their partitions were new, below their first
//!    record, and decide again after `segment.bytes` more), which makes the whole fill
//!    eligible: each leader decides at its next retention check
//!    (`retention.retention_check_ms`, 1 s here), the decision commits and every node's
//!    compactor cleans its replicas (two passes, reading at most
//!    `retention.compaction_bytes_per_second`). Each node's `/metrics` is sampled every
//!    second; the run fails unless every node's compactor read bytes during the measured
//!    window, so the figure is one of a cluster that really compacted meanwhile;
//! 6. **after** (unless `--no-after`): once every compaction job finished, the workload again,
//!    the control for a cluster that is only slower because it holds the extra gigabyte.
//!
//! The p99 ratios compacting / baseline, / held and / after are the answer.

use cairn_benches::cairn_driver::{self, durability, run_on_topic};
use cairn_benches::harness::{self, Outcome, Plan};
use cairn_benches::node_process::{self, LocalCluster};
use cairn_benches::workload::Workload;
use cairn_client::{Admin, ClientConfig, ConfigChange, Producer, ProducerConfig, TopicConfig};
use cairn_protocol::messages::CleanupPolicy;
use cairn_protocol::{Acks, Record};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `min.compaction.lag.ms` while the topic fills: a week, so no leader decides.
const HOLD_LAG_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// `segment.bytes` once the fill is eligible: less than any partition's share of it.
const ELIGIBLE_SEGMENT_BYTES: u64 = 1 << 20;
/// Records of the fill a producer may have unacknowledged.
const FILL_IN_FLIGHT_MAX: usize = 4096;
/// How long the fill may take, and how long the compactors may take to finish after the
/// compacting run.
const FILL_TIMEOUT: Duration = Duration::from_secs(1_200);
const FINISH_TIMEOUT: Duration = Duration::from_secs(900);
/// Bounds that keep a typo from filling the disk.
const FILL_BYTES_MAX: u64 = 16 << 30;
const FILL_KEYS_MAX: u64 = 1 << 20;
/// A metrics scrape's time bound and response size bound.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const SCRAPE_BYTES_MAX: usize = 4 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct CompactionArgs {
    /// The measured workload (its own topics are not compacted).
    #[arg(long, default_value = "benches/workloads/rf3-1kb-half.toml")]
    workload: PathBuf,
    /// Records/s of the measured runs. Default: the workload's `rate`, or its `rate_of_max`
    /// fraction of the referenced workload, measured first on the same cluster.
    #[arg(long)]
    rate: Option<u64>,
    /// Bytes of record values written to the compacted topic before the compacting run.
    #[arg(long, default_value_t = 1 << 30)]
    fill_bytes: u64,
    /// Distinct keys the fill cycles through: all but the newest value of each is superseded.
    #[arg(long, default_value_t = 65_536)]
    fill_keys: u64,
    #[arg(long, default_value_t = 1024)]
    fill_record_bytes: usize,
    #[arg(long, default_value_t = 6)]
    fill_partitions: u32,
    /// The fill producer's batch size. Over a quarter of the store's segment (512 KiB with
    /// the default `storage.segment_bytes`) a batch is a sled blob file of its own,
    /// and each one compaction rewrites or drops is a file to create, sync or delete.
    #[arg(long, default_value_t = 64 * 1024)]
    fill_batch_bytes: usize,
    /// Skip the control run after the compactors finished.
    #[arg(long)]
    no_after: bool,
    /// Also run the workload right after the fill with the topic still held back (nothing to
    /// compact): the control for what the fill alone leaves the store to digest. The
    /// compacting run follows it.
    #[arg(long)]
    held: bool,
    /// The `cairn` binary used to start the nodes (default: next to this executable).
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Extra arguments for every node, after the bench's own
    /// `--set=retention.retention_check_ms=1000`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Also write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The compactor counters of one node's `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct CompactorCounters {
    bytes_read: f64,
    bytes_removed: f64,
    batches_rewritten: f64,
    jobs: f64,
    jobs_failed: f64,
    duration_seconds: f64,
    /// The compactor's current read rate (a gauge, not a counter).
    pace_bytes_per_second: f64,
}

impl CompactorCounters {
    fn parse(metrics: &str) -> Result<CompactorCounters, String> {
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .ok_or_else(|| format!("/metrics has no {name}"))
        };
        Ok(CompactorCounters {
            bytes_read: value("cairn_compaction_bytes_read_total")?,
            bytes_removed: value("cairn_compaction_bytes_removed_total")?,
            batches_rewritten: value("cairn_compaction_batches_rewritten_total")?,
            jobs: value("cairn_compaction_jobs_total")?,
            jobs_failed: value("cairn_compaction_jobs_failed_total")?,
            duration_seconds: value("cairn_compaction_duration_seconds_sum")?,
            pace_bytes_per_second: value("cairn_compaction_pace_bytes_per_second")?,
        })
    }
}

/// A node's group-commit flushes (`cairn_flush_latency_seconds`) in a measured window:
/// every acks=all append waits for one on a majority, so a slower disk shows here first.
#[derive(Debug, Clone, Serialize)]
struct FlushWindow {
    node: u32,
    flushes: f64,
    mean_ms: f64,
    /// The upper bound of the histogram bucket that holds the 99th percentile.
    p99_at_most_ms: f64,
}

/// `cairn_flush_latency_seconds` as scraped: cumulative (upper bound, count) buckets, sum.
#[derive(Debug, Clone, Default)]
struct FlushHistogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl FlushHistogram {
    fn parse(metrics: &str) -> FlushHistogram {
        let mut histogram = FlushHistogram::default();
        for line in metrics.lines() {
            if let Some(rest) = line.strip_prefix("cairn_flush_latency_seconds_bucket{le=\"") {
                let Some((bound, count)) = rest.split_once("\"} ") else {
                    continue;
                };
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().unwrap_or(f64::NAN)
                };
                if let Ok(count) = count.trim().parse() {
                    histogram.buckets.push((bound, count));
                }
            } else if let Some(sum) = line.strip_prefix("cairn_flush_latency_seconds_sum ") {
                histogram.sum = sum.trim().parse().unwrap_or(0.0);
            } else if let Some(count) = line.strip_prefix("cairn_flush_latency_seconds_count ") {
                histogram.count = count.trim().parse().unwrap_or(0.0);
            }
        }
        histogram
    }

    /// What happened between `self` (earlier) and `later`.
    fn window(&self, later: &FlushHistogram, node: u32) -> FlushWindow {
        let flushes = later.count - self.count;
        let target = flushes * 0.99;
        let p99 = later
            .buckets
            .iter()
            .map(|(bound, count)| {
                let before = self
                    .buckets
                    .iter()
                    .find(|(earlier, _)| earlier == bound)
                    .map_or(0.0, |(_, count)| *count);
                (*bound, count - before)
            })
            .find(|(_, count)| *count >= target)
            .map_or(f64::NAN, |(bound, _)| bound);
        FlushWindow {
            node,
            flushes,
            mean_ms: if flushes > 0.0 {
                (later.sum - self.sum) / flushes * 1e3
            } else {
                0.0
            },
            p99_at_most_ms: p99 * 1e3,
        }
    }
}

/// Samples every node's flush histogram at the start and the end of `plan`'s measured window.
fn sample_flushes(
    plan: &Plan,
    http: Vec<(u32, SocketAddr)>,
) -> tokio::task::JoinHandle<Result<Vec<FlushWindow>, String>> {
    let (warm_end, end) = (
        tokio::time::Instant::from_std(plan.warm_end),
        tokio::time::Instant::from_std(plan.end),
    );
    tokio::spawn(async move {
        tokio::time::sleep_until(warm_end).await;
        let before = scrape_flushes(&http).await?;
        tokio::time::sleep_until(end).await;
        let after = scrape_flushes(&http).await?;
        Ok(http
            .iter()
            .zip(before.iter().zip(&after))
            .map(|((node, _), (before, after))| before.window(after, *node))
            .collect())
    })
}

async fn scrape_flushes(http: &[(u32, SocketAddr)]) -> Result<Vec<FlushHistogram>, String> {
    let mut histograms = Vec::new();
    for (node, address) in http {
        let metrics = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(*address))
            .await
            .map_err(|_| format!("node {node}'s /metrics did not answer in {SCRAPE_TIMEOUT:?}"))?
            .map_err(|error| format!("node {node}'s /metrics: {error}"))?;
        histograms.push(FlushHistogram::parse(&metrics));
    }
    Ok(histograms)
}

/// A measured run and its nodes' flushes in the window.
#[derive(Debug, Serialize)]
struct Run {
    outcome: Outcome,
    flushes: Vec<FlushWindow>,
}

/// Runs `workload` on a new `topic` and samples the flushes of its window; `on_plan` as for
/// [`run_on_topic`].
async fn measured_run(
    workload: &Workload,
    rate: u64,
    cluster: &LocalCluster,
    durability: &'static str,
    topic: &str,
    on_plan: impl FnOnce(&Plan),
) -> Result<Run, String> {
    let http = cluster.http_addresses();
    let mut sampler = None;
    let outcome = run_on_topic(workload, rate, cluster, durability, topic, |plan| {
        sampler = Some(sample_flushes(plan, http));
        on_plan(plan);
    })
    .await?;
    let flushes = match sampler {
        Some(sampler) => sampler
            .await
            .map_err(|error| format!("the flush sampler: {error}"))??,
        None => Vec::new(),
    };
    Ok(Run { outcome, flushes })
}

/// What one node's compactor did around the compacting run.
#[derive(Debug, Clone, Serialize)]
struct NodeCompaction {
    node: u32,
    /// Bytes read in the measured window, and that over the window's length.
    window_bytes_read: f64,
    window_mib_per_second: f64,
    window_bytes_removed: f64,
    /// Seconds of the measured window in which the compactor read anything (1 s samples).
    window_busy_seconds: u32,
    /// The compactor's pace (`cairn_compaction_pace_bytes_per_second`) sampled each second of
    /// the window, MiB/s: least, mean, most.
    window_pace_mib_per_second: (f64, f64, f64),
    /// Seconds from the start of the warm-up to the first byte read.
    started_after_s: Option<f64>,
    /// The counters once every job finished, less those before the run.
    total: CompactorCounters,
    /// Seconds from the start of the warm-up until the last job finished (from the samples).
    finished_after_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct FillReport {
    topic: String,
    records: u64,
    keys: u64,
    record_bytes: usize,
    partitions: u32,
    batch_bytes: usize,
    seconds: f64,
    megabytes_per_second: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    rate: u64,
    reference: Option<Outcome>,
    baseline: Run,
    fill: FillReport,
    held: Option<Run>,
    compacting: Run,
    after: Option<Run>,
    compactors: Vec<NodeCompaction>,
    p99_compacting_over_baseline: f64,
    p99_compacting_over_after: Option<f64>,
    p99_compacting_over_held: Option<f64>,
}

pub async fn run(args: CompactionArgs) -> Result<(), String> {
    if args.fill_bytes == 0 || args.fill_bytes > FILL_BYTES_MAX {
        return Err(format!("--fill-bytes must be 1..={FILL_BYTES_MAX}"));
    }
    if args.fill_keys == 0 || args.fill_keys > FILL_KEYS_MAX {
        return Err(format!("--fill-keys must be 1..={FILL_KEYS_MAX}"));
    }
    if args.fill_batch_bytes < args.fill_record_bytes || args.fill_batch_bytes > 16 << 20 {
        return Err("--fill-batch-bytes must be from --fill-record-bytes to 16 MiB".into());
    }
    if args.fill_record_bytes == 0
        || args.fill_record_bytes > cairn_benches::workload::RECORD_BYTES_MAX
    {
        return Err("--fill-record-bytes must be 1..=1 MiB".into());
    }
    let workloads = cairn_benches::suite::load_workloads(std::slice::from_ref(&args.workload))?;
    let measured = Workload::load(&args.workload).map_err(|error| error.to_string())?;
    let reference = measured.rate_of_max.as_ref().and_then(|rate_of_max| {
        workloads
            .iter()
            .find(|workload| workload.name == rate_of_max.workload)
            .cloned()
    });
    let binary = args
        .cairn_bin
        .clone()
        .unwrap_or_else(node_process::default_cairn_binary);
    let mut node_args = vec!["--set=retention.retention_check_ms=1000".to_owned()];
    node_args.extend(args.node_args.iter().cloned());
    let durability = durability(&node_args);
    let cluster = LocalCluster::start_formed(Some(binary), measured.nodes, node_args).await?;
    let outcome = run_on(&args, &measured, reference, &cluster, durability).await;
    cluster.shut_down().await?;
    let report = outcome?;
    print!("{}", markdown(&report));
    if let Some(path) = &args.json {
        cairn_benches::report::write_json(path, &report)?;
    }
    Ok(())
}

fn note_load(stage: &str) -> [f64; 3] {
    let load = harness::load_average();
    eprintln!(
        "cairn-bench compaction: {stage}: load average {:.2} {:.2} {:.2}",
        load[0], load[1], load[2]
    );
    load
}

async fn run_on(
    args: &CompactionArgs,
    measured: &Workload,
    reference: Option<Workload>,
    cluster: &LocalCluster,
    durability: &'static str,
) -> Result<Report, String> {
    let pid = std::process::id();
    let http = cluster.http_addresses();
    if http.len() != usize::from(measured.nodes) {
        return Err("a node started without an HTTP listener: its /metrics are needed".into());
    }
    let (rate, reference_outcome) = match (args.rate, &measured.rate_of_max, reference) {
        (Some(rate), _, _) => (rate, None),
        (None, Some(rate_of_max), Some(reference)) => {
            note_load(&format!("{} (reference maximum)", reference.name));
            let topic = format!("{}-{pid}", reference.name);
            let outcome = run_on_topic(&reference, 0, cluster, durability, &topic, |_| {}).await?;
            let rate = (outcome.publish.records_per_second * rate_of_max.fraction).round() as u64;
            (rate.max(1), Some(outcome))
        }
        (None, _, _) => (measured.rate, None),
    };

    note_load("baseline");
    let topic = format!("{}-baseline-{pid}", measured.name);
    let baseline = measured_run(measured, rate, cluster, durability, &topic, |_| {}).await?;

    let compacted = format!("compacted-{pid}");
    let fill = fill(args, cluster, &compacted).await?;
    let held = if args.held {
        note_load("held (after the fill, nothing to compact)");
        let topic = format!("{}-held-{pid}", measured.name);
        Some(measured_run(measured, rate, cluster, durability, &topic, |_| {}).await?)
    } else {
        None
    };
    let before = scrape_all(&http).await?;

    note_load("compacting");
    let topic = format!("{}-compacting-{pid}", measured.name);
    let mut sampler = None;
    let compacting = measured_run(measured, rate, cluster, durability, &topic, |plan| {
        sampler = Some(tokio::spawn(sample_during(
            plan.clone(),
            cluster.bootstrap(),
            compacted.clone(),
            http.clone(),
        )));
    })
    .await?;
    let sampler = sampler.ok_or("the run never started its load")?;
    let (plan_times, samples) = sampler
        .await
        .map_err(|error| format!("the metrics sampler: {error}"))??;
    let idle: Vec<&u32> = http
        .iter()
        .map(|(node, _)| node)
        .filter(|node| {
            samples
                .get(node)
                .and_then(|series| series.last())
                .is_none_or(|(_, last)| last.bytes_read <= before[node].bytes_read)
        })
        .collect();
    if !idle.is_empty() {
        return Err(format!(
            "the compactors of nodes {idle:?} read nothing during the run: no decision?"
        ));
    }
    let finished = wait_finished(&http, &before, args.fill_partitions, plan_times.start).await?;
    let compactors = summarize(&http, &before, &plan_times, &samples, &finished)?;

    let after = if args.no_after {
        None
    } else {
        note_load("after");
        let topic = format!("{}-after-{pid}", measured.name);
        Some(measured_run(measured, rate, cluster, durability, &topic, |_| {}).await?)
    };
    let p99 = |run: &Run| run.outcome.publish_latency.p99_ms;
    Ok(Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rate,
        p99_compacting_over_baseline: p99(&compacting) / p99(&baseline),
        p99_compacting_over_after: after.as_ref().map(|after| p99(&compacting) / p99(after)),
        p99_compacting_over_held: held.as_ref().map(|held| p99(&compacting) / p99(held)),
        reference: reference_outcome,
        baseline,
        fill,
        held,
        compacting,
        after,
        compactors,
    })
}

/// Writes the fill: keyed records, acks=all, as fast as acknowledgements allow.
async fn fill(
    args: &CompactionArgs,
    cluster: &LocalCluster,
    topic: &str,
) -> Result<FillReport, String> {
    let client = ClientConfig::new(&cluster.bootstrap()).map_err(|error| error.to_string())?;
    let admin = Admin::new(client.clone()).map_err(|error| error.to_string())?;
    let config = TopicConfig {
        cleanup_policy: Some(CleanupPolicy::Compact),
        min_compaction_lag_ms: Some(HOLD_LAG_MS),
        ..TopicConfig::default()
    };
    let replication = cluster.http_addresses().len().min(3) as u16;
    admin
        .create_topic(topic, args.fill_partitions, Some(replication), config)
        .await
        .map_err(|error| format!("creating {topic}: {error}"))?;
    cairn_driver::wait_for_leaders(&admin, topic, args.fill_partitions).await?;
    let producer = Producer::new(
        client,
        ProducerConfig::default()
            .acks(Acks::All)
            .linger(Duration::from_millis(5))
            .batch_bytes_max(args.fill_batch_bytes)
            .buffer_bytes_max(FILL_IN_FLIGHT_MAX * (args.fill_record_bytes + 64) * 2),
    )
    .await
    .map_err(|error| format!("starting the fill's producer: {error}"))?;
    let records = args.fill_bytes.div_ceil(args.fill_record_bytes as u64);
    let value = bytes::Bytes::from(vec![b'v'; args.fill_record_bytes]);
    eprintln!(
        "cairn-bench compaction: filling {topic} with {records} records of {} B over {} keys",
        args.fill_record_bytes, args.fill_keys
    );
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut last_report = Instant::now();
    for index in 0..records {
        if started.elapsed() > FILL_TIMEOUT {
            return Err(format!("the fill took longer than {FILL_TIMEOUT:?}"));
        }
        while in_flight.len() >= FILL_IN_FLIGHT_MAX {
            acknowledged(in_flight.next().await)?;
        }
        let key = format!("key-{:08}", index % args.fill_keys);
        let delivery = producer
            .send(topic, Record::new(value.clone()).with_key(key))
            .await
            .map_err(|error| format!("fill send: {error}"))?;
        in_flight.push(delivery);
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "cairn-bench compaction: filled {index} of {records} in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    while !in_flight.is_empty() {
        acknowledged(in_flight.next().await)?;
    }
    let _ = producer.close().await;
    let seconds = started.elapsed().as_secs_f64();
    Ok(FillReport {
        topic: topic.to_owned(),
        records,
        keys: args.fill_keys,
        record_bytes: args.fill_record_bytes,
        partitions: args.fill_partitions,
        batch_bytes: args.fill_batch_bytes,
        seconds,
        megabytes_per_second: (records * args.fill_record_bytes as u64) as f64 / seconds / 1e6,
    })
}

fn acknowledged<T, E: std::fmt::Display>(next: Option<Result<T, E>>) -> Result<(), String> {
    match next {
        Some(Ok(_)) | None => Ok(()),
        Some(Err(error)) => Err(format!("a fill record was not acknowledged: {error}")),
    }
}

/// The run's time plan, as offsets from its warm-up start.
#[derive(Debug, Clone, Copy)]
struct PlanTimes {
    start: Instant,
    warm_end_s: f64,
    end_s: f64,
}

/// Per node, the counters sampled each second: (seconds since the warm-up start, counters).
type Samples = BTreeMap<u32, Vec<(f64, CompactorCounters)>>;

/// At the warm-up start, makes the compacted topic eligible; then samples every node's
/// compactor counters each second until the measured window ends.
async fn sample_during(
    plan: Plan,
    bootstrap: String,
    topic: String,
    http: Vec<(u32, SocketAddr)>,
) -> Result<(PlanTimes, Samples), String> {
    let start = tokio::time::Instant::from_std(plan.start);
    tokio::time::sleep_until(start).await;
    let admin = Admin::new(ClientConfig::new(&bootstrap).map_err(|error| error.to_string())?)
        .map_err(|error| error.to_string())?;
    admin
        .alter_topic(
            &topic,
            None,
            vec![
                ConfigChange {
                    key: "min.compaction.lag.ms".into(),
                    value: Some("0".into()),
                },
                // The leaders decided once already, when their partitions were new (a
                // decision below the first records, which the lag held back); the next is
                // due after `segment.bytes` more: less than the fill now.
                ConfigChange {
                    key: "segment.bytes".into(),
                    value: Some(ELIGIBLE_SEGMENT_BYTES.to_string()),
                },
            ],
        )
        .await
        .map_err(|error| format!("making {topic} eligible for compaction: {error}"))?;
    let times = PlanTimes {
        start: plan.start,
        warm_end_s: (plan.warm_end - plan.start).as_secs_f64(),
        end_s: (plan.end - plan.start).as_secs_f64(),
    };
    let mut samples = Samples::new();
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    loop {
        tick.tick().await;
        let at = plan.start.elapsed().as_secs_f64();
        for (node, counters) in scrape_all(&http).await? {
            samples.entry(node).or_default().push((at, counters));
        }
        if at > times.end_s {
            return Ok((times, samples));
        }
    }
}

/// Per node, its counters once its compactor finished, and when (seconds after `start`).
type Finished = BTreeMap<u32, (CompactorCounters, f64)>;

/// Waits until every node finished a job per compacted partition since `before` (each node
/// hosts a replica of every partition with replication factor = nodes), sampling each second.
async fn wait_finished(
    http: &[(u32, SocketAddr)],
    before: &BTreeMap<u32, CompactorCounters>,
    partitions: u32,
    start: Instant,
) -> Result<Finished, String> {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let mut finished = Finished::new();
    loop {
        let now = scrape_all(http).await?;
        for (node, counters) in &now {
            let jobs =
                counters.jobs + counters.jobs_failed - before[node].jobs - before[node].jobs_failed;
            if jobs >= f64::from(partitions) && !finished.contains_key(node) {
                finished.insert(*node, (*counters, start.elapsed().as_secs_f64()));
            }
        }
        if finished.len() == now.len() {
            return Ok(finished);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the compactors did not finish within {FINISH_TIMEOUT:?}: {now:?}"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Per node, what its compactor did in the window; an error unless every node's compactor read
/// something during the measured window.
fn summarize(
    http: &[(u32, SocketAddr)],
    before: &BTreeMap<u32, CompactorCounters>,
    times: &PlanTimes,
    samples: &Samples,
    finished: &Finished,
) -> Result<Vec<NodeCompaction>, String> {
    let mut nodes = Vec::new();
    for (node, _) in http {
        let series = samples.get(node).map(Vec::as_slice).unwrap_or_default();
        let at = |time: f64| {
            series
                .iter()
                .rev()
                .find(|(at, _)| *at <= time + 0.5)
                .map_or(before[node], |(_, counters)| *counters)
        };
        let (window_start, window_end) = (at(times.warm_end_s), at(times.end_s));
        let window_bytes_read = window_end.bytes_read - window_start.bytes_read;
        let busy = series
            .windows(2)
            .filter(|pair| {
                pair[0].0 >= times.warm_end_s - 0.5
                    && pair[1].0 <= times.end_s + 0.5
                    && pair[1].1.bytes_read > pair[0].1.bytes_read
            })
            .count() as u32;
        let started_after_s = series
            .iter()
            .find(|(_, counters)| counters.bytes_read > before[node].bytes_read)
            .map(|(at, _)| *at);
        let (end, finished_at) = finished[node];
        let finished_after_s = series
            .iter()
            .find(|(_, counters)| counters.jobs >= end.jobs)
            .map_or(Some(finished_at), |(at, _)| Some(*at));
        let total = CompactorCounters {
            bytes_read: end.bytes_read - before[node].bytes_read,
            bytes_removed: end.bytes_removed - before[node].bytes_removed,
            batches_rewritten: end.batches_rewritten - before[node].batches_rewritten,
            jobs: end.jobs - before[node].jobs,
            jobs_failed: end.jobs_failed - before[node].jobs_failed,
            duration_seconds: end.duration_seconds - before[node].duration_seconds,
            pace_bytes_per_second: end.pace_bytes_per_second,
        };
        let paces: Vec<f64> = series
            .iter()
            .filter(|(at, _)| *at >= times.warm_end_s - 0.5 && *at <= times.end_s + 0.5)
            .map(|(_, counters)| counters.pace_bytes_per_second / f64::from(1 << 20))
            .collect();
        let window_pace_mib_per_second = (
            paces.iter().copied().fold(f64::INFINITY, f64::min),
            paces.iter().sum::<f64>() / paces.len().max(1) as f64,
            paces.iter().copied().fold(0.0, f64::max),
        );
        nodes.push(NodeCompaction {
            node: *node,
            window_bytes_read,
            window_mib_per_second: window_bytes_read
                / (times.end_s - times.warm_end_s)
                / f64::from(1 << 20),
            window_bytes_removed: window_end.bytes_removed - window_start.bytes_removed,
            window_busy_seconds: busy,
            window_pace_mib_per_second,
            started_after_s,
            total,
            finished_after_s,
        });
    }
    let idle: Vec<u32> = nodes
        .iter()
        .filter(|node| node.window_bytes_read <= 0.0)
        .map(|node| node.node)
        .collect();
    if !idle.is_empty() {
        return Err(format!(
            "no compaction during the measured window on nodes {idle:?}: the figure would not \
             be one of a compacting cluster ({nodes:?})"
        ));
    }
    if let Some(failed) = nodes.iter().find(|node| node.total.jobs_failed > 0.0) {
        return Err(format!("compaction jobs failed on node {}", failed.node));
    }
    Ok(nodes)
}

async fn scrape_all(
    http: &[(u32, SocketAddr)],
) -> Result<BTreeMap<u32, CompactorCounters>, String> {
    let mut counters = BTreeMap::new();
    for (node, address) in http {
        let metrics = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(*address))
            .await
            .map_err(|_| format!("node {node}'s /metrics did not answer in {SCRAPE_TIMEOUT:?}"))?
            .map_err(|error| format!("node {node}'s /metrics: {error}"))?;
        counters.insert(*node, CompactorCounters::parse(&metrics)?);
    }
    Ok(counters)
}

async fn scrape(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    (&mut stream)
        .take(SCRAPE_BYTES_MAX as u64)
        .read_to_end(&mut body)
        .await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("`{}`", report.command));
    line(String::new());
    line(format!(
        "Measured workload: {} at {} records/s. Fill: {} records of {} B over {} keys into {} \
         ({} partitions, batches up to {} B), {:.0} s at {:.1} MB/s.",
        report.baseline.outcome.workload.name,
        report.rate,
        report.fill.records,
        report.fill.record_bytes,
        report.fill.keys,
        report.fill.topic,
        report.fill.partitions,
        report.fill.batch_bytes,
        report.fill.seconds,
        report.fill.megabytes_per_second
    ));
    line(String::new());
    line(
        "| run | load average before (1/5/15 min) | records/s | publish p50 / p99 / p99.9 / max ms | e2e p99 ms | node CPU (cores) | flushes per node: count, mean ms, p99 at most ms |"
            .into(),
    );
    line("|---|---|---|---|---|---|---|".into());
    let mut rows = Vec::new();
    if let Some(reference) = &report.reference {
        rows.push(("reference maximum", reference, None));
    }
    rows.push((
        "baseline",
        &report.baseline.outcome,
        Some(&report.baseline.flushes),
    ));
    if let Some(held) = &report.held {
        rows.push(("held after the fill", &held.outcome, Some(&held.flushes)));
    }
    rows.push((
        "while compacting",
        &report.compacting.outcome,
        Some(&report.compacting.flushes),
    ));
    if let Some(after) = &report.after {
        rows.push(("after compaction", &after.outcome, Some(&after.flushes)));
    }
    for (name, outcome, flushes) in rows {
        let flushes: Vec<String> = flushes
            .map(|flushes| {
                flushes
                    .iter()
                    .map(|flush| {
                        format!(
                            "{:.0}, {:.1}, {:.0}",
                            flush.flushes, flush.mean_ms, flush.p99_at_most_ms
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cpu: Vec<String> = outcome
            .nodes
            .iter()
            .map(|node| format!("{:.2}", node.cpu_cores))
            .collect();
        let latency = &outcome.publish_latency;
        line(format!(
            "| {name} | {:.2} / {:.2} / {:.2} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} | {} | {} |",
            outcome.load_average_before[0],
            outcome.load_average_before[1],
            outcome.load_average_before[2],
            outcome.publish.records_per_second,
            latency.p50_ms,
            latency.p99_ms,
            latency.p999_ms,
            latency.max_ms,
            outcome.end_to_end_latency.p99_ms,
            cpu.join(" / "),
            flushes.join("; ")
        ));
    }
    line(String::new());
    line(format!(
        "Publish p99 while compacting / baseline: **{:.2}x**{}{}",
        report.p99_compacting_over_baseline,
        report
            .p99_compacting_over_held
            .map(|ratio| format!("; / held after the fill: {ratio:.2}x"))
            .unwrap_or_default(),
        report
            .p99_compacting_over_after
            .map(|ratio| format!("; / after compaction: {ratio:.2}x"))
            .unwrap_or_default()
    ));
    line(String::new());
    line(
        "| node | read in the window MiB (MiB/s) | removed in the window MiB | busy s of the window | pace in the window MiB/s: least / mean / most | started / finished after warm-up start s | whole job: read / removed MiB, jobs, compactor s |"
            .into(),
    );
    line("|---|---|---|---|---|---|---|".into());
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    let seconds = |at: Option<f64>| at.map_or("-".to_owned(), |at| format!("{at:.0}"));
    let window = report.compacting.outcome.workload.duration_s;
    for node in &report.compactors {
        line(format!(
            "| {} | {:.0} ({:.1}) | {:.0} | {} of {window} | {:.1} / {:.1} / {:.1} | {} / {} | {:.0} / {:.0}, {:.0}, {:.1} |",
            node.node,
            mib(node.window_bytes_read),
            node.window_mib_per_second,
            mib(node.window_bytes_removed),
            node.window_busy_seconds,
            node.window_pace_mib_per_second.0,
            node.window_pace_mib_per_second.1,
            node.window_pace_mib_per_second.2,
            seconds(node.started_after_s),
            seconds(node.finished_after_s),
            mib(node.total.bytes_read),
            mib(node.total.bytes_removed),
            node.total.jobs,
            node.total.duration_seconds
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE cairn_flush_latency_seconds histogram\n\
        cairn_flush_latency_seconds_sum 0.5\n\
        cairn_flush_latency_seconds_count 100\n\
        cairn_flush_latency_seconds_bucket{le=\"0.001\"} 90\n\
        cairn_flush_latency_seconds_bucket{le=\"0.002\"} 99\n\
        cairn_flush_latency_seconds_bucket{le=\"+Inf\"} 100\n\
        cairn_compaction_bytes_read_total 4096\n\
        cairn_compaction_bytes_removed_total 1024\n\
        cairn_compaction_batches_rewritten_total 3\n\
        cairn_compaction_jobs_total 2\n\
        cairn_compaction_jobs_failed_total 0\n\
        cairn_compaction_duration_seconds_sum 1.5\n\
        cairn_compaction_pace_bytes_per_second 8388608\n";

    #[test]
    fn compactor_counters_are_read_from_metrics_and_a_missing_one_is_an_error() {
        let counters = CompactorCounters::parse(SCRAPE).unwrap();
        assert_eq!(counters.bytes_read, 4096.0);
        assert_eq!(counters.bytes_removed, 1024.0);
        assert_eq!(counters.jobs, 2.0);
        assert_eq!(counters.duration_seconds, 1.5);
        assert_eq!(counters.pace_bytes_per_second, 8_388_608.0);
        let without = SCRAPE.replace("cairn_compaction_jobs_total 2\n", "");
        assert!(CompactorCounters::parse(&without)
            .unwrap_err()
            .contains("cairn_compaction_jobs_total"));
    }

    #[test]
    fn the_flush_window_counts_only_the_flushes_between_two_scrapes() {
        let before = FlushHistogram::parse(SCRAPE);
        assert_eq!(before.buckets.len(), 3);
        // 100 more flushes, 50 of them slower than 2 ms.
        let later = FlushHistogram::parse(
            &SCRAPE
                .replace("_sum 0.5", "_sum 1.5")
                .replace("_count 100", "_count 200")
                .replace("\"0.001\"} 90", "\"0.001\"} 130")
                .replace("\"0.002\"} 99", "\"0.002\"} 149")
                .replace("\"+Inf\"} 100", "\"+Inf\"} 200"),
        );
        let window = before.window(&later, 7);
        assert_eq!(window.node, 7);
        assert_eq!(window.flushes, 100.0);
        assert!((window.mean_ms - 10.0).abs() < 1e-9, "{window:?}");
        assert!(window.p99_at_most_ms.is_infinite(), "{window:?}");
        let same = before.window(&before, 1);
        assert_eq!(same.flushes, 0.0);
    }
}
