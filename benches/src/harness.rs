//! What every broker driver shares, so Cairn and its peers are measured the same way.
//!
//! - The time plan of a run: warm-up, then the measured window, then a bounded drain.
//! - [`produce`]: one producer's loop. It stamps each record's value with its *intended* send
//!   time (paced: the schedule; unpaced: the moment `send` is called), keeps at most
//!   `in_flight_max` records unacknowledged, and records publish latency from that stamp to
//!   the acknowledgement. A broker that stalls is charged for the records the stall kept the
//!   producer from sending (coordinated omission), because the schedule does not move.
//! - [`Shared::consumed`]: end-to-end latency, from the stamp in the value to the consumer
//!   receiving it.
//! - [`observe`]: a progress line each second, and each node's CPU and memory over the
//!   measured window, from /proc.
//! - [`Outcome`]: the figures of one run, serialized into the report.

use crate::node_process::{self, ResourceUse};
use crate::report::{latency_histogram, Latency, Throughput};
use crate::workload::{Workload, STAMP_BYTES};
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long consumers may take, after the last acknowledgement, to read what was produced.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after the plan is made the load starts, so every client is connected by then.
const START_DELAY: Duration = Duration::from_millis(500);

/// Microseconds since this process's first call: one monotonic clock for the stamps the
/// producers write and the consumers read (they run in the same process).
pub fn clock_micros() -> u64 {
    micros_of(Instant::now())
}

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn micros_of(instant: Instant) -> u64 {
    instant
        .saturating_duration_since(clock_origin())
        .as_micros() as u64
}

/// The time plan and payload of one run, common to its producers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub start: Instant,
    pub warm_end: Instant,
    pub end: Instant,
    /// Between two records of one producer when paced.
    pub interval: Option<Duration>,
    pub producers: u32,
    pub in_flight_max: usize,
    pub payload: Bytes,
    pub record_bytes: usize,
}

impl Plan {
    /// `rate` is records/s over all producers, 0 for as fast as possible.
    pub fn new(workload: &Workload, rate: u64, in_flight_max: usize) -> Plan {
        clock_origin();
        let start = Instant::now() + START_DELAY;
        let warm_end = start + Duration::from_secs(workload.warmup_s);
        let interval = (rate > 0)
            .then(|| Duration::from_secs_f64(f64::from(workload.producers) / rate as f64));
        Plan {
            start,
            warm_end,
            end: warm_end + Duration::from_secs(workload.duration_s),
            interval,
            producers: workload.producers,
            in_flight_max,
            payload: Bytes::from(
                (0..workload.record_bytes)
                    .map(|index| (index * 31 % 251) as u8)
                    .collect::<Vec<u8>>(),
            ),
            record_bytes: workload.record_bytes,
        }
    }

    fn measured(&self, stamp_micros: u64) -> bool {
        (micros_of(self.warm_end)..micros_of(self.end)).contains(&stamp_micros)
    }

    pub fn measured_seconds(&self) -> f64 {
        (self.end - self.warm_end).as_secs_f64()
    }
}

/// Counters every producer and consumer task of a run updates; the progress line reads them.
#[derive(Debug)]
pub struct Shared {
    pub plan: Plan,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Acknowledgements received in the measured window.
    pub acked_measured: AtomicU64,
    pub consumed: AtomicU64,
    /// Records received by consumers in the measured window.
    pub consumed_measured: AtomicU64,
    producers_done: AtomicBool,
    /// Paced runs: how late after its intended time each record measured was handed to the
    /// client (µs), merged from every producer: the timer's lateness, and the wait for a free
    /// in-flight slot.
    send_lag: std::sync::Mutex<Histogram<u64>>,
    /// `clock_micros` by which consumers stop even if they have not read everything.
    drain_deadline_micros: AtomicU64,
}

impl Shared {
    pub fn new(plan: Plan) -> Shared {
        Shared {
            plan,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_measured: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            consumed_measured: AtomicU64::new(0),
            producers_done: AtomicBool::new(false),
            send_lag: std::sync::Mutex::new(latency_histogram()),
            drain_deadline_micros: AtomicU64::new(u64::MAX),
        }
    }

    /// Called once every producer has every acknowledgement: consumers now read what is left,
    /// for at most [`DRAIN_TIMEOUT`].
    pub fn producers_finished(&self) {
        self.drain_deadline_micros.store(
            clock_micros() + DRAIN_TIMEOUT.as_micros() as u64,
            Ordering::SeqCst,
        );
        self.producers_done.store(true, Ordering::SeqCst);
    }

    fn record_send_lag(&self, part: &Histogram<u64>) {
        let mut merged = self
            .send_lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = merged.add(part) {
            tracing::warn!(%error, "a producer's send lag was not merged");
        }
    }

    /// The merged send lag of a paced run (`None` unpaced, where a record's time is its send).
    pub fn send_lag(&self) -> Option<Latency> {
        self.plan.interval?;
        let merged = self
            .send_lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(Latency::from_micros(&merged))
    }

    /// Whether consumers can stop: every acknowledged record was read, or the drain timed out.
    pub fn consumers_may_stop(&self) -> bool {
        self.producers_done.load(Ordering::SeqCst)
            && (self.consumed.load(Ordering::SeqCst) >= self.acked.load(Ordering::SeqCst)
                || clock_micros() > self.drain_deadline_micros.load(Ordering::SeqCst))
    }

    /// A consumer received a record with this value: counts it and records its end-to-end
    /// latency if it was meant to be sent in the measured window.
    pub fn consumed(&self, value: &[u8], histogram: &mut Histogram<u64>) {
        let Some(stamp) = value
            .get(..STAMP_BYTES)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
        else {
            return;
        };
        self.consumed.fetch_add(1, Ordering::Relaxed);
        let now = clock_micros();
        if self.plan.measured(now) {
            self.consumed_measured.fetch_add(1, Ordering::Relaxed);
        }
        if self.plan.measured(stamp) {
            histogram.saturating_record(now.saturating_sub(stamp).max(1));
        }
    }
}

/// One producer's loop: sends until the plan ends, keeping at most `in_flight_max` records
/// unacknowledged, and returns the publish latency (µs) of the records meant to be sent in
/// the measured window.
///
/// `send` hands one value to the broker's client and returns the future of its
/// acknowledgement, so a client that pipelines is used that way.
pub async fn produce<S, SendFuture, AckFuture>(
    shared: &Shared,
    producer_index: u32,
    mut send: S,
) -> Result<Histogram<u64>, String>
where
    S: FnMut(Bytes) -> SendFuture,
    SendFuture: Future<Output = Result<AckFuture, String>>,
    AckFuture: Future<Output = Result<(), String>>,
{
    let plan = &shared.plan;
    let mut histogram = latency_histogram();
    let mut pending = FuturesUnordered::new();
    // Paced producers start a fraction of an interval apart, so they do not send in lockstep.
    let offset = plan.interval.map_or(Duration::ZERO, |interval| {
        interval.mul_f64(f64::from(producer_index) / f64::from(plan.producers.max(1)))
    });
    let mut account = |(stamp, outcome): (u64, Result<(), String>)| {
        outcome?;
        shared.acked.fetch_add(1, Ordering::Relaxed);
        let now = clock_micros();
        // Throughput counts acknowledgements that arrive in the window (a paced run that
        // falls behind shows it); latency counts records meant to be sent in it.
        if plan.measured(now) {
            shared.acked_measured.fetch_add(1, Ordering::Relaxed);
        }
        if plan.measured(stamp) {
            histogram.saturating_record(now.saturating_sub(stamp).max(1));
        }
        Ok::<(), String>(())
    };
    let mut send_lag = latency_histogram();
    tokio::time::sleep_until(plan.start.into()).await;
    let mut index = 0u64;
    loop {
        let intended = match plan.interval {
            Some(interval) => {
                let intended = plan.start + offset + interval.mul_f64(index as f64);
                if intended >= plan.end {
                    break;
                }
                // Acknowledgements are taken as they come while waiting, so their latency
                // is not stretched to the next send.
                let wait = tokio::time::sleep_until(intended.into());
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut wait => break,
                        Some(done) = pending.next(), if !pending.is_empty() => account(done)?,
                    }
                }
                intended
            }
            None => Instant::now(),
        };
        if intended >= plan.end {
            break;
        }
        while pending.len() >= plan.in_flight_max {
            let done = pending.next().await.expect("pending is not empty");
            account(done)?;
        }
        let stamp = micros_of(intended);
        if plan.measured(stamp) {
            send_lag.saturating_record(clock_micros().saturating_sub(stamp));
        }
        let mut value = BytesMut::from(&plan.payload[..]);
        value[..STAMP_BYTES].copy_from_slice(&stamp.to_le_bytes());
        let acknowledgement = send(value.freeze()).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        pending.push(acknowledgement.map(move |outcome| (stamp, outcome)));
        while let Some(Some(done)) = pending.next().now_or_never() {
            account(done)?;
        }
        index += 1;
        if index.is_multiple_of(256) {
            // Unpaced, a client whose futures are always ready would never yield; the
            // progress line and the consumers share these threads.
            tokio::task::yield_now().await;
        }
    }
    while let Some(done) = pending.next().await {
        account(done)?;
    }
    shared.record_send_lag(&send_lag);
    Ok(histogram)
}

/// CPU and memory of one node over a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NodeUse {
    /// 1-based, in the order the driver started the nodes.
    pub node: u32,
    /// CPU seconds in the measured window divided by its length: 1.0 is one full core.
    pub cpu_cores: f64,
    /// The process's peak resident memory (VmHWM) at the end of the window.
    pub peak_rss_mib: f64,
    /// Measured before the load when the workload has `idle_s`.
    pub idle_cpu_cores: Option<f64>,
    pub idle_rss_mib: Option<f64>,
}

/// Idle CPU share and resident memory per process, over `seconds`.
pub async fn measure_idle(pids: &[u32], seconds: u64) -> Vec<(f64, f64)> {
    let before = sample(pids);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = sample(pids);
    let elapsed = started.elapsed().as_secs_f64();
    before
        .iter()
        .zip(&after)
        .zip(pids)
        .map(|((before, after), pid)| {
            let cpu =
                after.unwrap_or_default().cpu_seconds - before.unwrap_or_default().cpu_seconds;
            (cpu / elapsed, current_rss_bytes(*pid) as f64 / MIB)
        })
        .collect()
}

const MIB: f64 = 1024.0 * 1024.0;

fn sample(pids: &[u32]) -> Vec<Option<ResourceUse>> {
    pids.iter()
        .map(|pid| node_process::resource_use(*pid))
        .collect()
}

/// VmRSS of a process, 0 when it cannot be read.
pub fn current_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// The 1, 5 and 15 minute load averages, to say how busy the machine was.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|field| field.parse::<f64>().unwrap_or(0.0));
    [(); 3].map(|_| fields.next().unwrap_or(0.0))
}

/// Prints a progress line each second until the plan ends, and returns each node's CPU share
/// over the measured window and peak memory at its end, and this process's CPU share.
/// A producer's or consumer's task: its latency histogram, or why it failed.
pub type LatencyTask = tokio::task::JoinHandle<Result<Histogram<u64>, String>>;

/// Waits for every producer, tells the consumers the producers are done (so they stop once
/// they read everything), waits for the consumers, and merges each side's histograms:
/// (publish latency, end-to-end latency). A failed task fails the run after all are joined.
pub async fn join_latencies(
    shared: &Shared,
    producers: Vec<LatencyTask>,
    consumers: Vec<LatencyTask>,
) -> Result<(Histogram<u64>, Histogram<u64>), String> {
    async fn merge(
        tasks: Vec<LatencyTask>,
        failure: &mut Option<String>,
    ) -> Result<Histogram<u64>, String> {
        let mut merged = latency_histogram();
        for task in tasks {
            match task
                .await
                .map_err(|error| error.to_string())
                .and_then(|r| r)
            {
                Ok(part) => merged.add(&part).map_err(|error| error.to_string())?,
                Err(error) => *failure = Some(error),
            }
        }
        Ok(merged)
    }
    let mut failure = None;
    let publish = merge(producers, &mut failure).await?;
    shared.producers_finished();
    let end_to_end = merge(consumers, &mut failure).await?;
    match failure {
        Some(error) => Err(error),
        None => Ok((publish, end_to_end)),
    }
}

pub async fn observe(shared: &Shared, pids: &[u32], label: &str) -> (Vec<NodeUse>, f64) {
    let plan = &shared.plan;
    let mut watched: Vec<u32> = pids.to_vec();
    watched.push(std::process::id());
    let terminal = std::io::stderr().is_terminal();
    let mut at_warm_end: Option<Vec<Option<ResourceUse>>> = None;
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut tick = 0u64;
    let at_end = loop {
        let now = Instant::now();
        if at_warm_end.is_none() && now >= plan.warm_end {
            at_warm_end = Some(sample(&watched));
        }
        if now >= plan.end {
            break sample(&watched);
        }
        let (acked, consumed) = (
            shared.acked.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
        );
        let seconds = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let phase = if now < plan.warm_end {
            "warm-up"
        } else {
            "measuring"
        };
        let line = format!(
            "{label}: {phase} {:>4.0}/{:.0} s, acked {:>8.0}/s, consumed {:>8.0}/s",
            now.saturating_duration_since(plan.start).as_secs_f64(),
            (plan.end - plan.start).as_secs_f64(),
            (acked - last.1) as f64 / seconds,
            (consumed - last.2) as f64 / seconds,
        );
        if terminal {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if tick.is_multiple_of(5) {
            eprintln!("{line}");
        }
        tick += 1;
        last = (now, acked, consumed);
        let mut next = now + Duration::from_secs(1);
        if at_warm_end.is_none() {
            next = next.min(plan.warm_end);
        }
        tokio::time::sleep_until(next.min(plan.end).into()).await;
    };
    if terminal {
        eprintln!();
    }
    let before = at_warm_end.unwrap_or_else(|| vec![None; watched.len()]);
    let seconds = plan.measured_seconds();
    let cpu_share = |index: usize| {
        let (before, after): (ResourceUse, ResourceUse) = (
            before[index].unwrap_or_default(),
            at_end[index].unwrap_or_default(),
        );
        (after.cpu_seconds - before.cpu_seconds) / seconds
    };
    let nodes = (0..pids.len())
        .map(|index| NodeUse {
            node: index as u32 + 1,
            cpu_cores: cpu_share(index),
            peak_rss_mib: at_end[index].unwrap_or_default().peak_rss_bytes as f64 / MIB,
            idle_cpu_cores: None,
            idle_rss_mib: None,
        })
        .collect();
    (nodes, cpu_share(pids.len()))
}

/// The figures of one workload on one system.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub system: String,
    /// What an acknowledgement promises about the disk, in words.
    pub durability: String,
    pub workload: Workload,
    /// Records/s the producers were paced at; 0 for as fast as possible.
    pub target_rate: u64,
    /// Acknowledgements received in the measured window, over its length.
    pub publish: Throughput,
    pub publish_latency: Latency,
    /// Paced runs: how late records left the load generator after their intended send time, a
    /// part of `publish_latency`. Its timer's share is the generator's; waiting for a free
    /// in-flight slot is the broker's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<Latency>,
    /// Records consumers received in the measured window, over its length.
    pub consume: Throughput,
    pub end_to_end_latency: Latency,
    pub records_sent: u64,
    pub records_acknowledged: u64,
    pub records_consumed: u64,
    pub nodes: Vec<NodeUse>,
    /// This load generator's CPU share: near 1 per producer thread means the client, not the
    /// broker, may be the limit.
    pub client_cpu_cores: f64,
    pub load_average_before: [f64; 3],
    pub load_average_after: [f64; 3],
    pub machine: String,
}

/// What a driver measured, turned into an [`Outcome`].
pub struct Measured<'a> {
    pub system: &'a str,
    pub durability: &'a str,
    pub workload: &'a Workload,
    pub target_rate: u64,
    pub shared: &'a Shared,
    pub publish_latency: &'a Histogram<u64>,
    pub end_to_end_latency: &'a Histogram<u64>,
    pub nodes: Vec<NodeUse>,
    pub idle: Vec<(f64, f64)>,
    pub client_cpu_cores: f64,
    pub load_average_before: [f64; 3],
}

impl Measured<'_> {
    pub fn outcome(self) -> Outcome {
        let seconds = Duration::from_secs_f64(self.shared.plan.measured_seconds());
        let mut nodes = self.nodes;
        for (node, (cpu, rss)) in nodes.iter_mut().zip(&self.idle) {
            node.idle_cpu_cores = Some(*cpu);
            node.idle_rss_mib = Some(*rss);
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        Outcome {
            system: self.system.to_owned(),
            durability: self.durability.to_owned(),
            workload: self.workload.clone(),
            target_rate: self.target_rate,
            publish: Throughput::new(
                load(&self.shared.acked_measured),
                self.workload.record_bytes,
                seconds,
            ),
            publish_latency: Latency::from_micros(self.publish_latency),
            send_lag: self.shared.send_lag(),
            consume: Throughput::new(
                load(&self.shared.consumed_measured),
                self.workload.record_bytes,
                seconds,
            ),
            end_to_end_latency: Latency::from_micros(self.end_to_end_latency),
            records_sent: load(&self.shared.sent),
            records_acknowledged: load(&self.shared.acked),
            records_consumed: load(&self.shared.consumed),
            nodes,
            client_cpu_cores: self.client_cpu_cores,
            load_average_before: self.load_average_before,
            load_average_after: load_average(),
            machine: machine_description(),
        }
    }
}

pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores, {memory_gib:.0} GiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    fn workload(rate: u64) -> Workload {
        Workload::parse(&format!(
            "name = \"t\"\nreplication_factor = 1\npartitions = 1\nrecord_bytes = 64\n\
             producers = 1\nconsumers = 1\nwarmup_s = 1\nduration_s = 1\nrate = {rate}\n"
        ))
        .unwrap()
    }

    /// A broker that acknowledges after a fixed delay, through the real loop, with an end-to-end
    /// consumer fed by the acknowledgements.
    #[tokio::test(flavor = "current_thread")]
    async fn a_paced_run_counts_the_measured_window_and_charges_a_stall_to_the_schedule() {
        let shared = Shared::new(Plan::new(&workload(2_000), 2_000, 64));
        let stalled = AtomicBool::new(false);
        let stall_at = shared.plan.warm_end + Duration::from_millis(300);
        let mut e2e = latency_histogram();
        let e2e_cell = std::sync::Mutex::new(&mut e2e);
        let histogram = produce(&shared, 0, |value: Bytes| {
            let (shared, stalled, e2e_cell) = (&shared, &stalled, &e2e_cell);
            async move {
                // One 200 ms stall in the measured window: the records scheduled during it
                // wait for it, and their latency must show it.
                if Instant::now() >= stall_at && !stalled.swap(true, Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    shared.consumed(&value, &mut e2e_cell.lock().unwrap());
                    Ok(())
                })
            }
        })
        .await
        .unwrap();
        shared.producers_finished();
        assert!(shared.consumers_may_stop());
        // 2,000 records/s for a 1 s window. Acknowledgements are counted when they arrive, so
        // a busy machine can shift some across the window's edges: a wide margin.
        let measured = shared.acked_measured.load(Ordering::SeqCst);
        assert!((1_600..=2_400).contains(&measured), "{measured}");
        // Latency covers the records scheduled in the window: 2,000 of them.
        assert!(
            (1_995..=2_001).contains(&histogram.len()),
            "{}",
            histogram.len()
        );
        let consumed = shared.consumed_measured.load(Ordering::SeqCst);
        assert!(consumed.abs_diff(measured) <= 50, "{consumed} {measured}");
        let latency = Latency::from_micros(&histogram);
        // At least the broker's 1 ms; no upper bound on the median, which a loaded machine
        // (parallel builds) stretches.
        assert!(latency.p50_ms >= 1.0, "{latency:?}");
        // The stall delayed the send of ~400 scheduled records by up to 200 ms: without the
        // correction only one record would show it.
        assert!(latency.max_ms >= 190.0, "{latency:?}");
        assert!(
            histogram.count_between(50_000, 1_000_000) > 100,
            "{latency:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unpaced_run_never_exceeds_its_in_flight_bound() {
        let shared = Shared::new(Plan::new(&workload(0), 0, 8));
        let outstanding = std::sync::Arc::new(AtomicU64::new(0));
        let most = std::sync::Arc::new(AtomicU64::new(0));
        let histogram = produce(&shared, 0, |_value: Bytes| {
            let (outstanding, most) = (outstanding.clone(), most.clone());
            async move {
                let now = outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                Ok(async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 8);
        assert!(!histogram.is_empty());
        assert_eq!(
            shared.sent.load(Ordering::SeqCst),
            shared.acked.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn a_value_without_a_stamp_is_not_counted() {
        let shared = Shared::new(Plan::new(&workload(0), 0, 8));
        let mut histogram = latency_histogram();
        shared.consumed(&[1, 2, 3], &mut histogram);
        assert_eq!(shared.consumed.load(Ordering::SeqCst), 0);
        assert!(histogram.is_empty());
    }
}
