//! `cairn-bench rebalance`: how long a consumer group takes to rebalance when a member joins
//! and when one leaves.
//!
//! It starts a local cluster, creates a topic (100 partitions by default, replicated on up to
//! 3 nodes) and runs a group of `--members - 1` consumers in this process, each polling in its
//! own task. Each round, one more member joins, then leaves again with `close`:
//!
//! - **join time**: from the joining consumer's `subscribe` (which sends its join heartbeat at
//!   once) until every partition of the topic is held by exactly one member and the members
//!   hold equal shares (within one), as each consumer sees its own assignment after `poll`
//!   reconciled it. A partition is in that assignment only once its old owner released it and
//!   from then on every fetch of the consumer includes it, so this is the time until every
//!   partition is fetched by its target owner again.
//! - **leave time**: from the start of the leaving member's `close` (commit, then the leave
//!   heartbeat) until the remaining members hold every partition, equally, in the same sense.
//!
//! No records flow: the figure is the protocol's (heartbeats, revocations, reassignment), not
//! fetch throughput. Times go into an hdrhistogram (p50, p99, max).

use crate::node_process::LocalCluster;
use crate::report::{latency_histogram, Latency};
use cairn_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, TopicConfig, TopicPartition,
};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RebalanceArgs {
    /// Join and leave rounds to measure.
    #[arg(long, default_value_t = 30)]
    pub rounds: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 100)]
    pub partitions: u32,
    /// Members once the joining one is in (the group runs with one fewer between rounds).
    #[arg(long, default_value_t = 4)]
    pub members: u32,
    /// Nodes of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The `cairn` binary (default: next to this executable).
    #[arg(long)]
    pub cairn_bin: Option<PathBuf>,
    /// An extra flag for every node, e.g. `--node-arg=--set=groups.heartbeat_interval_ms=500`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Pause between a settled rebalance and the next change.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How long one rebalance may take before the run is declared failed.
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the settled condition is checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(2);
/// The longest single `poll`: a consumer reconciles at the start of each, so this bounds how
/// late it takes a partition it was given.
const POLL_WAIT: Duration = Duration::from_millis(10);

#[derive(Debug, Serialize)]
struct RebalanceReport {
    nodes: u16,
    partitions: u32,
    members: u32,
    rounds: u32,
    node_args: Vec<String>,
    join: Latency,
    leave: Latency,
    join_ms: Vec<f64>,
    leave_ms: Vec<f64>,
}

/// What a member task shares with the measuring loop.
#[derive(Default)]
struct MemberSlot {
    /// The partitions the consumer holds after its last `poll`.
    owned: Mutex<BTreeSet<u32>>,
    stop: AtomicBool,
    /// When `close` started, for a member told to stop.
    closing_at: Mutex<Option<Instant>>,
}

pub async fn run(args: RebalanceArgs) -> Result<(), String> {
    if args.members < 2 {
        return Err("rebalance needs --members 2 or more".into());
    }
    let cluster =
        LocalCluster::start_formed(args.cairn_bin.clone(), args.nodes, args.node_args.clone())
            .await?;
    let result = measure(&args, &cluster).await;
    cluster.shut_down().await?;
    let report = result?;
    print_report(&report);
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
    }
    Ok(())
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig::default()
        .auto_offset_reset(AutoOffsetReset::Latest)
        .fetch_max_wait(Duration::from_millis(100))
}

/// One member: subscribes, polls until told to stop, then closes (leaving the group).
async fn run_member(
    client: ClientConfig,
    topic: String,
    group: String,
    slot: Arc<MemberSlot>,
) -> Result<(), String> {
    let mut consumer = Consumer::new(client, consumer_config()).map_err(|e| e.to_string())?;
    consumer
        .subscribe(&[&topic], &group)
        .await
        .map_err(|error| format!("subscribe: {error}"))?;
    while !slot.stop.load(Ordering::SeqCst) {
        consumer
            .poll(POLL_WAIT)
            .await
            .map_err(|error| format!("poll: {error}"))?;
        let owned: BTreeSet<u32> = consumer
            .assignment()
            .iter()
            .map(|TopicPartition { partition, .. }| *partition)
            .collect();
        *slot.owned.lock().expect("slot lock") = owned;
    }
    *slot.closing_at.lock().expect("slot lock") = Some(Instant::now());
    slot.owned.lock().expect("slot lock").clear();
    consumer
        .close()
        .await
        .map_err(|error| format!("close: {error}"))
}

/// Every partition held by exactly one of `slots`, in shares within one of each other.
fn settled(slots: &[Arc<MemberSlot>], partitions: u32) -> bool {
    let owned: Vec<BTreeSet<u32>> = slots
        .iter()
        .map(|slot| slot.owned.lock().expect("slot lock").clone())
        .collect();
    let total: usize = owned.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = owned.iter().flatten().copied().collect();
    let min = owned.iter().map(BTreeSet::len).min().unwrap_or(0);
    let max = owned.iter().map(BTreeSet::len).max().unwrap_or(0);
    total == partitions as usize && union.len() == partitions as usize && max - min <= 1
}

async fn wait_settled(
    slots: &[Arc<MemberSlot>],
    partitions: u32,
    what: &str,
) -> Result<Instant, String> {
    let started = Instant::now();
    loop {
        if settled(slots, partitions) {
            return Ok(Instant::now());
        }
        if started.elapsed() > REBALANCE_TIMEOUT {
            return Err(format!("{what}: not settled in {REBALANCE_TIMEOUT:?}"));
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

async fn measure(args: &RebalanceArgs, cluster: &LocalCluster) -> Result<RebalanceReport, String> {
    let client = ClientConfig::new(&cluster.bootstrap()).map_err(|error| error.to_string())?;
    let topic = format!("rebalance-{}", std::process::id());
    let group = format!("bench-{}", std::process::id());
    Admin::new(client.clone())
        .map_err(|error| error.to_string())?
        .create_topic(
            &topic,
            args.partitions,
            Some(args.nodes.min(3)),
            TopicConfig::default(),
        )
        .await
        .map_err(|error| format!("creating {topic}: {error}"))?;
    let start_member = |slot: &Arc<MemberSlot>| {
        tokio::spawn(run_member(
            client.clone(),
            topic.clone(),
            group.clone(),
            Arc::clone(slot),
        ))
    };
    let mut slots: Vec<Arc<MemberSlot>> = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..args.members - 1 {
        let slot = Arc::new(MemberSlot::default());
        tasks.push(start_member(&slot));
        slots.push(slot);
    }
    wait_settled(&slots, args.partitions, "the initial group").await?;
    let (mut joins, mut leaves) = (latency_histogram(), latency_histogram());
    let (mut join_ms, mut leave_ms) = (Vec::new(), Vec::new());
    let settle = Duration::from_millis(args.settle_ms);
    for round in 0..args.rounds {
        tokio::time::sleep(settle).await;
        let joiner = Arc::new(MemberSlot::default());
        let joined_at = Instant::now();
        let task = start_member(&joiner);
        slots.push(Arc::clone(&joiner));
        let settled_at = wait_settled(&slots, args.partitions, "join").await?;
        let join = settled_at - joined_at;
        tokio::time::sleep(settle).await;
        joiner.stop.store(true, Ordering::SeqCst);
        slots.pop();
        let closing_at = loop {
            if let Some(at) = *joiner.closing_at.lock().expect("slot lock") {
                break at;
            }
            if task.is_finished() {
                return Err("the leaving member stopped before closing".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let settled_at = wait_settled(&slots, args.partitions, "leave").await?;
        let leave = settled_at.saturating_duration_since(closing_at);
        task.await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("the leaving member: {error}"))?;
        eprintln!(
            "round {round}: join {:.1} ms, leave {:.1} ms",
            join.as_secs_f64() * 1e3,
            leave.as_secs_f64() * 1e3
        );
        for (histogram, samples, time) in [
            (&mut joins, &mut join_ms, join),
            (&mut leaves, &mut leave_ms, leave),
        ] {
            histogram
                .record(time.as_micros().max(1) as u64)
                .map_err(|error| error.to_string())?;
            samples.push(time.as_secs_f64() * 1e3);
        }
    }
    for slot in &slots {
        slot.stop.store(true, Ordering::SeqCst);
    }
    for task in tasks {
        task.await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("a member: {error}"))?;
    }
    Ok(RebalanceReport {
        nodes: args.nodes,
        partitions: args.partitions,
        members: args.members,
        rounds: args.rounds,
        node_args: args.node_args.clone(),
        join: Latency::from_micros(&joins),
        leave: Latency::from_micros(&leaves),
        join_ms,
        leave_ms,
    })
}

fn print_report(report: &RebalanceReport) {
    println!(
        "rebalance: {} nodes, {} partitions, {} members, {} rounds, node args {:?}",
        report.nodes, report.partitions, report.members, report.rounds, report.node_args
    );
    for (name, latency) in [("join", &report.join), ("leave", &report.leave)] {
        println!(
            "  {name:<5} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
            latency.p50_ms, latency.p99_ms, latency.max_ms, latency.samples
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn slot(partitions: &[u32]) -> Arc<MemberSlot> {
        let slot = MemberSlot::default();
        *slot.owned.lock().unwrap() = partitions.iter().copied().collect();
        Arc::new(slot)
    }

    #[test]
    fn settled_means_every_partition_once_in_equal_shares() {
        assert!(settled(&[slot(&[0, 1]), slot(&[2])], 3));
        // A partition missing, held twice, or shares two apart: not settled.
        assert!(!settled(&[slot(&[0, 1]), slot(&[])], 3));
        assert!(!settled(&[slot(&[0, 1]), slot(&[1, 2])], 3));
        assert!(!settled(&[slot(&[0, 1, 2, 3]), slot(&[4, 5])], 6));
    }

    #[test]
    fn the_subcommand_parses() {
        let cli = crate::Cli::try_parse_from([
            "cairn-bench",
            "rebalance",
            "--rounds",
            "3",
            "--node-arg=--preset=test",
        ])
        .unwrap();
        match cli.command {
            Some(crate::BenchCommand::Rebalance(args)) => {
                assert_eq!((args.rounds, args.partitions, args.members), (3, 100, 4));
                assert_eq!(args.node_args, ["--preset=test"]);
            }
            _ => panic!("rebalance was not parsed"),
        }
    }
}
