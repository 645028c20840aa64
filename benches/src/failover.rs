//! `cairn-bench failover`: how long a partition cannot take writes when its leader dies.
//!
//! It starts a local cluster, creates a one-partition topic replicated on every node (at most
//! 3), and produces to it one record at a time with `acks=all`. Between two records it SIGKILLs
//! the partition's leader, then keeps producing: the time from the kill to the first
//! acknowledged record is the failover time. Because nothing is in flight at the kill, that
//! acknowledgement can only come from the successor (the old leader is dead before the record
//! is sent). The killed node is restarted on its data and the cluster left to settle before
//! the next kill. Failover times go into an hdrhistogram (p50, p99, max).
//!
//! The figure includes everything a client sees: followers noticing the silence (election
//! timeout), the lease wait, the election, the new leader's epoch marker committing, and the
//! client's own retry back-off and metadata refresh.

use crate::node_process::{self, LocalCluster};
use crate::report::{latency_histogram, Latency};
use bytes::Bytes;
use cairn_client::{Admin, ClientConfig, Producer, ProducerConfig, TopicConfig};
use cairn_protocol::{Acks, NodeId, Record};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// Nodes of the local cluster (at least 3, so a majority survives a kill).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The `cairn` binary (default: next to this executable).
    #[arg(long)]
    pub cairn_bin: Option<PathBuf>,
    /// An extra flag for every node, e.g. `--node-arg=--set=replica.lease_ms=400`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Producing time after a restarted node is back, before the next kill: long enough for
    /// it to catch up and for its post-restart lease wait (`lease_ms`) to be over.
    #[arg(long, default_value_t = 3_000)]
    pub settle_ms: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// The producer's longest retry back-off (client setting; default: the client's).
    #[arg(long)]
    pub retry_backoff_max_ms: Option<u64>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How long one record may take, retries included, before the run is declared failed: far
/// above any failover worth measuring.
const DELIVERY_TIMEOUT_MS: u64 = 60_000;
/// How long the cluster may take to agree on a leader before a kill.
const LEADER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
struct Kill {
    killed: u32,
    successor: Option<u32>,
    failover_ms: f64,
}

#[derive(Debug, Serialize)]
struct FailoverReport {
    nodes: u16,
    kills: Vec<Kill>,
    failover: Latency,
    node_args: Vec<String>,
    retry_backoff_max_ms: u64,
    records_acknowledged: u64,
}

pub async fn run(args: FailoverArgs) -> Result<(), String> {
    if args.nodes < 3 {
        return Err("failover needs --nodes 3 or more: a majority must survive a kill".into());
    }
    let mut cluster =
        LocalCluster::start_formed(args.cairn_bin.clone(), args.nodes, args.node_args.clone())
            .await?;
    let result = measure(&args, &mut cluster).await;
    cluster.shut_down().await?;
    let report = result?;
    print_report(&report);
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
    }
    Ok(())
}

async fn measure(
    args: &FailoverArgs,
    cluster: &mut LocalCluster,
) -> Result<FailoverReport, String> {
    let client = ClientConfig::new(&cluster.bootstrap()).map_err(|error| error.to_string())?;
    let topic = format!("failover-{}", std::process::id());
    let replication_factor = args.nodes.min(3);
    Admin::new(client.clone())
        .map_err(|error| error.to_string())?
        .create_topic(&topic, 1, Some(replication_factor), TopicConfig::default())
        .await
        .map_err(|error| format!("creating {topic}: {error}"))?;
    let defaults = ProducerConfig::default();
    let retry_backoff_max = args
        .retry_backoff_max_ms
        .map_or(defaults.retry_backoff_max, Duration::from_millis);
    let producer_config = defaults
        .acks(Acks::All)
        .linger(Duration::ZERO)
        .requests_in_flight_per_partition_max(1)
        .delivery_timeout(Duration::from_millis(DELIVERY_TIMEOUT_MS))
        .retry_backoff_max(retry_backoff_max);
    let retry_backoff_max_ms = retry_backoff_max.as_millis() as u64;
    let producer = Producer::new(client.clone(), producer_config)
        .await
        .map_err(|error| format!("starting the producer: {error}"))?;
    let payload = Bytes::from(vec![b'x'; args.record_bytes]);
    let mut acknowledged = 0u64;
    let mut histogram = latency_histogram();
    let mut kills = Vec::new();
    for kill_index in 1..=args.kills {
        // Producing while the cluster settles (and the last restarted node catches up).
        let settle_until = Instant::now() + Duration::from_millis(args.settle_ms);
        while Instant::now() < settle_until {
            produce_one(&producer, &topic, &payload).await?;
            acknowledged += 1;
        }
        let leader = agreed_leader(cluster, &topic).await?;
        // Nothing is in flight here: the next acknowledgement comes from the successor.
        let killed_at = Instant::now();
        cluster.kill(leader.0);
        produce_one(&producer, &topic, &payload).await?;
        let failover = killed_at.elapsed();
        acknowledged += 1;
        histogram.saturating_record(failover.as_micros().max(1) as u64);
        let successor = agreed_leader(cluster, &topic).await.ok().map(|node| node.0);
        eprintln!(
            "kill {kill_index}/{}: node {} -> node {} acknowledged after {:.3} s",
            args.kills,
            leader.0,
            successor.map_or("?".to_owned(), |node| node.to_string()),
            failover.as_secs_f64()
        );
        kills.push(Kill {
            killed: leader.0,
            successor,
            failover_ms: failover.as_secs_f64() * 1000.0,
        });
        let restart = cluster.restart(leader.0);
        restart?;
        cluster.wait_formed(node_process::FORM_TIMEOUT).await?;
    }
    producer
        .close()
        .await
        .map_err(|error| format!("closing the producer: {error}"))?;
    Ok(FailoverReport {
        nodes: args.nodes,
        kills,
        failover: Latency::from_micros(&histogram),
        node_args: args.node_args.clone(),
        retry_backoff_max_ms,
        records_acknowledged: acknowledged,
    })
}

async fn produce_one(producer: &Producer, topic: &str, payload: &Bytes) -> Result<(), String> {
    let delivery = producer
        .send(topic, Record::new(payload.clone()))
        .await
        .map_err(|error| format!("send failed: {error}"))?;
    delivery
        .await
        .map(|_| ())
        .map_err(|error| format!("a record was not acknowledged: {error}"))
}

/// The leader of partition 0 of `topic`, once the leader itself and another node agree.
async fn agreed_leader(cluster: &LocalCluster, topic: &str) -> Result<NodeId, String> {
    let deadline = Instant::now() + LEADER_WAIT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match leader_seen_by(&cluster.bootstrap(), topic).await {
            Ok(Some(leader)) => match leader_seen_by(&cluster.address(leader.0), topic).await {
                Ok(Some(confirmed)) if confirmed == leader => return Ok(leader),
                other => last = format!("node {leader} says {other:?}"),
            },
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "no agreed leader for {topic} within {LEADER_WAIT:?}: {last}"
    ))
}

async fn leader_seen_by(bootstrap: &str, topic: &str) -> Result<Option<NodeId>, String> {
    let mut config = ClientConfig::new(bootstrap).map_err(|error| error.to_string())?;
    config.request_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_millis(500);
    let status = Admin::new(config)
        .map_err(|error| error.to_string())?
        .cluster_status(false)
        .await
        .map_err(|error| error.to_string())?;
    Ok(status
        .partitions
        .iter()
        .find(|partition| partition.topic == topic && partition.partition == 0)
        .and_then(|partition| partition.leader))
}

fn print_report(report: &FailoverReport) {
    println!(
        "\n| failover ({} nodes, {} kills, acks=all) | p50 s | p99 s | max s |\n|---|---|---|---|",
        report.nodes, report.failover.samples
    );
    let settings = if report.node_args.is_empty() {
        "default settings".to_owned()
    } else {
        report.node_args.join(" ")
    };
    println!(
        "| {settings}, client retry_backoff_max_ms={} | {:.2} | {:.2} | {:.2} |",
        report.retry_backoff_max_ms,
        report.failover.p50_ms / 1000.0,
        report.failover.p99_ms / 1000.0,
        report.failover.max_ms / 1000.0
    );
}
