//! The NATS JetStream driver: starts `nodes` `nats-server` processes on loopback (a cluster
//! when more than one, each with JetStream file storage in a temporary folder), creates one
//! stream per partition (each stream is its own replicated log with its own leader, as a
//! Cairn partition is), and runs the workload through cairn-benches' harness: producers
//! publish with acknowledgement, at most `nats.in_flight_max` unacknowledged each, round-robin
//! over the streams; consumers read through pull consumers without acknowledgements (Cairn's
//! consumers do not commit either).

use crate::processes::Processes;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use cairn_benches::harness::{self, Measured, Outcome, Plan, Shared};
use cairn_benches::report::latency_histogram;
use cairn_benches::workload::{AcksSetting, Workload};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SYSTEM: &str = "nats-jetstream";
pub const DURABILITY: &str =
    "JetStream file storage: a message is acknowledged once a majority of the stream's \
     replicas stored it, in the page cache; the 2.9 file store syncs to disk periodically \
     (not per message), so a power loss on a majority can lose acknowledged messages";

/// How long the servers may take to elect a JetStream meta leader and accept a stream.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Errors a consumer tolerates (missed heartbeats while the servers are busy) before it
/// declares the run failed.
const CONSUMER_ERRORS_MAX: u32 = 100;

/// Local nats-server processes, SIGKILLed if dropped without `stop`.
pub struct NatsCluster {
    // Before the folder: fields drop in order, so the processes end before their files go.
    processes: Processes,
    _temp: tempfile::TempDir,
    client_ports: Vec<u16>,
}

impl NatsCluster {
    pub fn start(binary: &Path, nodes: u16) -> Result<NatsCluster, String> {
        let temp = tempfile::Builder::new()
            .prefix("cairn-bench-nats-")
            .tempdir()
            .map_err(|error| format!("cannot create a data directory: {error}"))?;
        let ports = crate::processes::free_ports(2 * usize::from(nodes))?;
        let (client_ports, cluster_ports) = ports.split_at(usize::from(nodes));
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();
        let mut cluster = NatsCluster {
            _temp: temp,
            processes: Processes::default(),
            client_ports: client_ports.to_vec(),
        };
        for index in 0..usize::from(nodes) {
            let folder = cluster._temp.path();
            let store = folder.join(format!("n{}", index + 1));
            let mut config = format!(
                "server_name: \"n{}\"\nlisten: \"127.0.0.1:{}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                index + 1,
                client_ports[index],
                store.display()
            );
            if nodes > 1 {
                config.push_str(&format!(
                    "cluster {{\n  name: \"bench\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    cluster_ports[index],
                    routes.join(", ")
                ));
            }
            let config_path = folder.join(format!("n{}.conf", index + 1));
            std::fs::write(&config_path, config)
                .map_err(|error| format!("writing {}: {error}", config_path.display()))?;
            let log_path = folder.join(format!("n{}.log", index + 1));
            let log = std::fs::File::create(&log_path)
                .map_err(|error| format!("creating {}: {error}", log_path.display()))?;
            let child = Command::new(binary)
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
            cluster.processes.push(child);
        }
        Ok(cluster)
    }

    pub fn url(&self, index: usize) -> String {
        format!(
            "nats://127.0.0.1:{}",
            self.client_ports[index % self.client_ports.len()]
        )
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.pids()
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(self) {
        self.processes.stop(Duration::from_secs(20));
    }
}

async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|error| format!("connecting to {url}: {error}"))
}

pub async fn run(
    workload: &Workload,
    target_rate: u64,
    nats_server: &Path,
) -> Result<Outcome, String> {
    if workload.acks != AcksSetting::All {
        return Err(
            "the JetStream driver publishes with acknowledgement only (acks = \"all\")".into(),
        );
    }
    let cluster = NatsCluster::start(nats_server, workload.nodes)?;
    let outcome = run_on(workload, target_rate, &cluster).await;
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .map_err(|error| error.to_string())?;
    outcome
}

fn stream_name(workload: &Workload, partition: u32) -> String {
    format!("{}-p{partition}", workload.name)
}

fn subject(workload: &Workload, partition: u32) -> String {
    format!("{}.{partition}", workload.name)
}

/// Creates the streams, retrying while the cluster elects its JetStream meta leader.
async fn create_streams(workload: &Workload, cluster: &NatsCluster) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let context = loop {
        match connect(&cluster.url(0)).await {
            Ok(client) => break jetstream::new(client),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    for partition in 0..workload.partitions {
        let config = stream::Config {
            name: stream_name(workload, partition),
            subjects: vec![subject(workload, partition)],
            storage: stream::StorageType::File,
            num_replicas: usize::from(workload.replication_factor),
            ..Default::default()
        };
        loop {
            match context.create_stream(config.clone()).await {
                Ok(_) => break,
                Err(error) if Instant::now() > deadline => {
                    return Err(format!("creating stream {}: {error}", config.name))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    Ok(())
}

async fn run_on(
    workload: &Workload,
    target_rate: u64,
    cluster: &NatsCluster,
) -> Result<Outcome, String> {
    create_streams(workload, cluster).await?;
    let pids = cluster.pids();
    let idle = if workload.idle_s > 0 {
        eprintln!(
            "{}: measuring idle servers for {} s",
            workload.name, workload.idle_s
        );
        harness::measure_idle(&pids, workload.idle_s).await
    } else {
        Vec::new()
    };
    let load_average_before = harness::load_average();

    // Consumers first, each on its own connection, one pull consumer per stream it reads.
    let mut consumer_streams = Vec::new();
    for consumer_index in 0..workload.consumers.min(workload.partitions) {
        let context = jetstream::new(connect(&cluster.url(consumer_index as usize)).await?);
        for partition in
            (0..workload.partitions).filter(|p| p % workload.consumers == consumer_index)
        {
            let stream = context
                .get_stream(stream_name(workload, partition))
                .await
                .map_err(|error| format!("stream {partition}: {error}"))?;
            let pull = stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|error| format!("consumer on stream {partition}: {error}"))?;
            let messages = pull
                .stream()
                .max_messages_per_batch(1_000)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|error| format!("consuming stream {partition}: {error}"))?;
            consumer_streams.push(messages);
        }
    }
    let mut producers = Vec::new();
    for producer_index in 0..workload.producers {
        producers.push(jetstream::new(
            connect(&cluster.url(producer_index as usize)).await?,
        ));
    }
    let subjects: Arc<Vec<String>> = Arc::new(
        (0..workload.partitions)
            .map(|partition| subject(workload, partition))
            .collect(),
    );

    let shared = Arc::new(Shared::new(Plan::new(
        workload,
        target_rate,
        workload.nats.in_flight_max,
    )));
    let consumer_tasks: Vec<_> = consumer_streams
        .into_iter()
        .map(|mut messages| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut histogram = latency_histogram();
                let mut errors = 0;
                while !shared.consumers_may_stop() {
                    match tokio::time::timeout(Duration::from_millis(100), messages.next()).await {
                        Ok(Some(Ok(message))) => {
                            shared.consumed(&message.message.payload, &mut histogram)
                        }
                        Ok(Some(Err(error))) => {
                            errors += 1;
                            if errors > CONSUMER_ERRORS_MAX {
                                return Err(format!("consumer: {error}"));
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
                Ok::<_, String>(histogram)
            })
        })
        .collect();
    let producer_tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(index, context)| {
            let (shared, subjects) = (shared.clone(), subjects.clone());
            tokio::spawn(async move {
                let (context, subjects) = (&context, &subjects);
                let mut next = index;
                harness::produce(&shared, index as u32, move |value: Bytes| {
                    let subject = subjects[next % subjects.len()].clone();
                    next += 1;
                    async move {
                        let acknowledgement = context
                            .publish(subject, value)
                            .await
                            .map_err(|error| format!("publish: {error}"))?;
                        Ok::<_, String>(async move {
                            acknowledgement
                                .await
                                .map(|_| ())
                                .map_err(|error| format!("not acknowledged: {error}"))
                        })
                    }
                })
                .await
            })
        })
        .collect();

    let label = format!("{} on {SYSTEM}", workload.name);
    let (nodes, client_cpu_cores) = harness::observe(&shared, &pids, &label).await;
    let mut publish_latency = latency_histogram();
    let mut failure = None;
    for task in producer_tasks {
        match task
            .await
            .map_err(|error| error.to_string())
            .and_then(|r| r)
        {
            Ok(part) => publish_latency
                .add(&part)
                .map_err(|error| error.to_string())?,
            Err(error) => failure = Some(error),
        }
    }
    shared.producers_finished();
    let mut end_to_end_latency = latency_histogram();
    for task in consumer_tasks {
        match task
            .await
            .map_err(|error| error.to_string())
            .and_then(|r| r)
        {
            Ok(part) => end_to_end_latency
                .add(&part)
                .map_err(|error| error.to_string())?,
            Err(error) => failure = Some(error),
        }
    }
    if let Some(error) = failure {
        return Err(format!("{}: {error}", workload.name));
    }
    Ok(Measured {
        system: SYSTEM,
        durability: DURABILITY,
        workload,
        target_rate,
        shared: &shared,
        publish_latency: &publish_latency,
        end_to_end_latency: &end_to_end_latency,
        nodes,
        idle,
        client_cpu_cores,
        load_average_before,
    }
    .outcome())
}

/// Debian's nats-server, unless `--nats-server` says otherwise.
pub fn default_binary() -> PathBuf {
    PathBuf::from("/usr/sbin/nats-server")
}
