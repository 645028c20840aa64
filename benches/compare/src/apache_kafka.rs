//! Apache Kafka as a peer: starts `nodes` KRaft brokers on loopback (each broker also a
//! controller, the static quorum of all of them), from the jars scripts/apache-kafka.sh copies
//! out of Maven Central, with `java -cp`; formats each log directory with Kafka's own
//! `StorageTool` first. The workload then runs through cairn-benches' Kafka driver
//! (librdkafka, the same settings as for Cairn's Kafka listener), so both brokers are driven
//! by the same client and measured by the same harness.

use crate::processes::Processes;
use cairn_benches::harness::Outcome;
use cairn_benches::kafka_driver::{self, Target};
use cairn_benches::workload::Workload;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const SYSTEM: &str = "apache-kafka";
pub const DURABILITY: &str =
    "Kafka's default: acks=all with min.insync.replicas=2, a record is acknowledged once every \
     in-sync replica has it in its page cache; no fsync (log.flush.interval.messages unset), so \
     a power loss on a majority can lose acknowledged records";
pub const DURABILITY_FSYNC: &str =
    "flush.messages=1: acks=all with min.insync.replicas=2, and every broker fsyncs its log \
     after each append before it counts as written";

/// How long a broker may take to open its Kafka port.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// An unmeasured run before the measured one: the brokers' JIT compiles their hot paths
/// under load (measured here: 1.9k records/s in the first 5 s of a cold run, rising to 14.7k
/// after 20 s), where Cairn, compiled ahead of time, needs nothing of the kind.
const JIT_WARMUP_S: u64 = 30;
/// Each broker's Java heap: Kafka's own start script gives 1 GiB.
const HEAP: &str = "-Xmx1g";

/// Where the jars are, by default: what scripts/apache-kafka.sh fills.
pub fn default_lib() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("apache-kafka").join("lib")
}

/// Local Kafka brokers, SIGKILLed if dropped without `stop`.
pub struct KafkaCluster {
    // Before the folder: fields drop in order, so the processes end before their files go.
    processes: Processes,
    _temp: tempfile::TempDir,
    client_ports: Vec<u16>,
}

impl KafkaCluster {
    /// Formats and starts `nodes` brokers; `fsync_each_append` sets `flush.messages=1`.
    pub fn start(lib: &Path, nodes: u16, fsync_each_append: bool) -> Result<KafkaCluster, String> {
        if !lib.join("kafka_2.13-4.4.0.jar").is_file() {
            return Err(format!(
                "no Kafka jars in {} (run scripts/apache-kafka.sh)",
                lib.display()
            ));
        }
        let classpath = format!("{}/*", lib.display());
        let temp = tempfile::Builder::new()
            .prefix("cairn-bench-kafka-")
            .tempdir()
            .map_err(|error| format!("cannot create a data directory: {error}"))?;
        let nodes = usize::from(nodes);
        let ports = crate::processes::free_ports(2 * nodes)?;
        let (client_ports, controller_ports) = ports.split_at(nodes);
        let voters: Vec<String> = controller_ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}@127.0.0.1:{port}", index + 1))
            .collect();
        let cluster_id = java_output(&classpath, &["kafka.tools.StorageTool", "random-uuid"])?;
        let replicas = nodes.min(3);
        let mut cluster = KafkaCluster {
            _temp: temp,
            processes: Processes::default(),
            client_ports: client_ports.to_vec(),
        };
        for index in 0..nodes {
            let folder = cluster._temp.path();
            let id = index + 1;
            let mut properties = format!(
                "process.roles=broker,controller\n\
                 node.id={id}\n\
                 controller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{client}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 log.dirs={logs}\n\
                 offsets.topic.replication.factor={replicas}\n\
                 transaction.state.log.replication.factor={replicas}\n\
                 transaction.state.log.min.isr={min_isr}\n\
                 min.insync.replicas={min_isr}\n\
                 group.initial.rebalance.delay.ms=0\n",
                voters = voters.join(","),
                client = client_ports[index],
                controller = controller_ports[index],
                logs = folder.join(format!("data{id}")).display(),
                min_isr = replicas.div_ceil(2).max(1),
            );
            if fsync_each_append {
                properties.push_str("log.flush.interval.messages=1\n");
            }
            let properties_path = folder.join(format!("broker{id}.properties"));
            std::fs::write(&properties_path, properties)
                .map_err(|error| format!("writing {}: {error}", properties_path.display()))?;
            let properties_arg = properties_path.display().to_string();
            java_output(
                &classpath,
                &[
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    &cluster_id,
                    "-c",
                    &properties_arg,
                ],
            )?;
            let log_path = folder.join(format!("broker{id}.log"));
            let log = std::fs::File::create(&log_path)
                .map_err(|error| format!("creating {}: {error}", log_path.display()))?;
            let child = Command::new("java")
                .args([
                    HEAP,
                    "-Xms1g",
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                ])
                .arg("-cp")
                .arg(&classpath)
                .arg("kafka.Kafka")
                .arg(&properties_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(|error| format!("cannot start java: {error}"))?;
            cluster.processes.push(child);
        }
        cluster.wait_for_ports()?;
        Ok(cluster)
    }

    fn wait_for_ports(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for port in self.client_ports.clone() {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self.processes.exited() {
                    return Err(format!("a Kafka broker exited before it served: {status}"));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "Kafka broker on port {port} not serving after {START_TIMEOUT:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    pub fn bootstrap(&self) -> String {
        self.client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.pids()
    }

    /// SIGTERM (a controlled shutdown), a bounded wait, then SIGKILL.
    pub fn stop(self) {
        self.processes.stop(Duration::from_secs(30));
    }
}

/// Runs one of Kafka's tools and returns the last line it printed (its answer; the lines
/// before are its logging).
fn java_output(classpath: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("java")
        .args([
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            classpath,
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run java: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "java {}: {}: {}{}",
            args.join(" "),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    stdout
        .lines()
        .last()
        .map(|line| line.trim().to_owned())
        .ok_or_else(|| format!("java {}: printed nothing", args.join(" ")))
}

/// Starts the brokers, runs `workload` through them with librdkafka, stops them.
pub async fn run(
    workload: &Workload,
    target_rate: u64,
    lib: &Path,
    fsync_each_append: bool,
) -> Result<Outcome, String> {
    let (lib, nodes) = (lib.to_path_buf(), workload.nodes);
    let cluster =
        tokio::task::spawn_blocking(move || KafkaCluster::start(&lib, nodes, fsync_each_append))
            .await
            .map_err(|error| error.to_string())??;
    let (bootstrap, pids) = (cluster.bootstrap(), cluster.pids());
    let target = Target {
        system: SYSTEM,
        durability: if fsync_each_append {
            DURABILITY_FSYNC
        } else {
            DURABILITY
        },
        bootstrap: &bootstrap,
        pids: &pids,
    };
    let mut warm_up = workload.clone();
    warm_up.name = format!("{}-jvm-warm-up", workload.name);
    (warm_up.idle_s, warm_up.warmup_s, warm_up.duration_s) = (0, 0, JIT_WARMUP_S);
    let outcome = match kafka_driver::run_on(&warm_up, target_rate, target).await {
        Ok(_) => kafka_driver::run_on(workload, target_rate, target).await,
        Err(error) => Err(format!("warming the brokers up: {error}")),
    };
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .map_err(|error| error.to_string())?;
    outcome
}
