//! Starts `cairn node` processes for a benchmark: one node, or a local cluster of N on
//! consecutive ports (the same layout and flags as `cairn dev`), which can SIGKILL and restart
//! a node on its data directory. Also reads a process's CPU time and peak memory from /proc.
//! Starting a node and waiting for its ready line is `cairn_launch`'s, shared with `cairn dev`,
//! the chaos campaign and the tests.

use cairn_client::{Admin, ClientConfig};
use cairn_launch::{Launch, Launched};
use cairn_protocol::messages::Liveness;
use rustix::process::{kill_process, Pid, Signal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the `cairn` binary is: `--cairn-bin`, else next to this executable.
pub fn default_cairn_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the path of the running executable");
    me.with_file_name("cairn")
}

/// One running node, SIGKILLed when dropped.
pub struct NodeProcess {
    child: Launched,
    /// The bound HTTP listener (`/metrics`), from the ready line.
    http: Option<std::net::SocketAddr>,
}

impl NodeProcess {
    /// Runs `binary node ARGS` and waits for its ready line; its logs go to `log`.
    fn start(binary: &Path, args: &[String], log: &Path) -> Result<NodeProcess, String> {
        // `args` start with the `node` subcommand.
        let (child, ready) = Launch::program(binary, log)
            .args(args)
            // CAIRN_BENCH_NODE_LOGS=1 shows the node logs; else they go to the file.
            .inherit_stderr(std::env::var_os("CAIRN_BENCH_NODE_LOGS").is_some())
            .start(READY_TIMEOUT)
            .map_err(|error| format!("{error}"))?;
        Ok(NodeProcess {
            child,
            http: ready.http,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL, and reap the process.
    fn kill(mut self) {
        self.child.kill();
    }

    /// SIGTERM and a bounded wait; SIGKILL past it.
    fn stop(mut self) {
        if let Some(pid) = Pid::from_raw(self.child.pid() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.child().try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// N nodes on `127.0.0.1:base_port ..`, node `i` on `base_port + i - 1` with data in
/// `TEMP/node-i` and its log in `TEMP/node-i.log`. More than one node: every address is a
/// gossip seed and every node an initial voter, as with `cairn dev`.
/// How long a started cluster may take to form (every node hearing every other).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LocalCluster {
    binary: PathBuf,
    temp: tempfile::TempDir,
    base_port: u16,
    node_count: u16,
    extra_args: Vec<String>,
    /// Whether each node also listens for Kafka clients, node `i` on
    /// `base_port + node_count + i - 1` (the Kafka driver's runs).
    kafka: bool,
    /// Index `i` holds node `i + 1`; `None` while it is killed.
    nodes: Vec<Option<NodeProcess>>,
}

impl LocalCluster {
    pub fn start(
        binary: &Path,
        node_count: u16,
        extra_args: &[String],
    ) -> Result<LocalCluster, String> {
        LocalCluster::start_with(binary, node_count, extra_args, false)
    }

    /// [`LocalCluster::start`], with each node's Kafka listener on when `kafka` is set.
    pub fn start_with(
        binary: &Path,
        node_count: u16,
        extra_args: &[String],
        kafka: bool,
    ) -> Result<LocalCluster, String> {
        if node_count == 0 {
            return Err("--nodes must be at least 1".into());
        }
        let temp = tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir()
            .map_err(|error| format!("cannot create a data directory: {error}"))?;
        let mut cluster = LocalCluster {
            binary: binary.to_path_buf(),
            temp,
            base_port: cairn_launch::ports::reserve(if kafka {
                2 * node_count
            } else {
                node_count
            })?,
            node_count,
            extra_args: extra_args.to_vec(),
            kafka,
            nodes: Vec::new(),
        };
        if node_count > 1 {
            write_secret(&cluster.secret_path())?;
        }
        // Nodes of a cluster wait for each other's votes, so start them all before waiting.
        let starters: Vec<_> = (1..=u32::from(node_count))
            .map(|node_id| {
                let (binary, args, log) = (
                    cluster.binary.clone(),
                    cluster.node_arguments(node_id),
                    cluster.log_path(node_id),
                );
                std::thread::spawn(move || NodeProcess::start(&binary, &args, &log))
            })
            .collect();
        for starter in starters {
            let node = starter
                .join()
                .map_err(|_| "a node starter panicked".to_string())??;
            cluster.nodes.push(Some(node));
        }
        Ok(cluster)
    }

    pub fn address(&self, node_id: u32) -> String {
        format!("127.0.0.1:{}", u32::from(self.base_port) + node_id - 1)
    }

    pub fn bootstrap(&self) -> String {
        (1..=u32::from(self.node_count))
            .map(|node_id| self.address(node_id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes' Kafka listeners, comma-separated (empty when they are off).
    pub fn kafka_bootstrap(&self) -> String {
        if !self.kafka {
            return String::new();
        }
        self.node_ids()
            .map(|node_id| self.kafka_address(node_id))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn kafka_address(&self, node_id: u32) -> String {
        format!(
            "127.0.0.1:{}",
            u32::from(self.base_port) + u32::from(self.node_count) + node_id - 1
        )
    }

    pub fn node_ids(&self) -> impl Iterator<Item = u32> {
        1..=u32::from(self.node_count)
    }

    pub fn log_path(&self, node_id: u32) -> PathBuf {
        self.temp.path().join(format!("node-{node_id}.log"))
    }

    fn secret_path(&self) -> PathBuf {
        self.temp.path().join("cluster-secret")
    }

    fn node_arguments(&self, node_id: u32) -> Vec<String> {
        let mut arguments = vec![
            "node".to_owned(),
            "--node-id".to_owned(),
            node_id.to_string(),
            "--data-dir".to_owned(),
            self.temp
                .path()
                .join(format!("node-{node_id}"))
                .to_string_lossy()
                .into_owned(),
            "--listen".to_owned(),
            self.address(node_id),
            // Many nodes share this machine: each picks a free port for its HTTP listener.
            "--http-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            // The native driver speaks Cairn's protocol: no Kafka listener unless the Kafka
            // driver runs (several nodes share one host, so each gets its own port).
            "--kafka-listen".to_owned(),
            if self.kafka {
                self.kafka_address(node_id)
            } else {
                "off".to_owned()
            },
        ];
        if self.node_count > 1 {
            let voters: Vec<String> = self.node_ids().map(|id| id.to_string()).collect();
            arguments.extend([
                "--seeds".to_owned(),
                self.bootstrap(),
                "--initial-voters".to_owned(),
                voters.join(","),
                "--cluster-secret-file".to_owned(),
                self.secret_path().to_string_lossy().into_owned(),
            ]);
        }
        // The nodes share this machine's cores, as `cairn dev`'s do (extra arguments win).
        if let Some(threads) = cairn_launch::colocated_threads(usize::from(self.node_count)) {
            arguments.extend(["--set".to_owned(), format!("threads={threads}")]);
        }
        arguments.extend(self.extra_args.iter().cloned());
        arguments
    }

    /// Each running node's HTTP listener (`/metrics`), by node id.
    pub fn http_addresses(&self) -> Vec<(u32, std::net::SocketAddr)> {
        self.node_ids()
            .filter_map(|id| {
                let node = self.nodes[id as usize - 1].as_ref()?;
                Some((id, node.http?))
            })
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(NodeProcess::pid).collect()
    }

    /// SIGKILL node `node_id` (nothing flushed that was not flushed already).
    pub fn kill(&mut self, node_id: u32) {
        if let Some(node) = self.nodes[node_id as usize - 1].take() {
            node.kill();
        }
    }

    /// Starts a killed node again on its data directory and address.
    pub fn restart(&mut self, node_id: u32) -> Result<(), String> {
        assert!(
            self.nodes[node_id as usize - 1].is_none(),
            "node {node_id} still runs"
        );
        let node = NodeProcess::start(
            &self.binary,
            &self.node_arguments(node_id),
            &self.log_path(node_id),
        )?;
        self.nodes[node_id as usize - 1] = Some(node);
        Ok(())
    }

    /// Waits until every running node hears every running node (so a topic with replication
    /// factor N can be placed), or `timeout` passes.
    pub async fn wait_formed(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let running: Vec<u32> = self
            .node_ids()
            .filter(|id| self.nodes[*id as usize - 1].is_some())
            .collect();
        for node_id in &running {
            loop {
                let heard = heard_nodes(&self.address(*node_id)).await;
                if heard.as_ref().is_ok_and(|heard| *heard >= running.len()) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "node {node_id} does not hear all {} nodes: {heard:?}",
                        running.len()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Starts `node_count` nodes of `binary` (default: next to this executable) off the async
    /// runtime (it spawns processes and waits for their ports), then waits until they have
    /// formed a cluster. On failure the nodes already started are killed when dropped.
    pub async fn start_formed(
        binary: Option<PathBuf>,
        node_count: u16,
        extra_args: Vec<String>,
    ) -> Result<LocalCluster, String> {
        LocalCluster::start_formed_with(binary, node_count, extra_args, false).await
    }

    /// [`LocalCluster::start_formed`], with the nodes' Kafka listeners on when `kafka` is set.
    pub async fn start_formed_with(
        binary: Option<PathBuf>,
        node_count: u16,
        extra_args: Vec<String>,
        kafka: bool,
    ) -> Result<LocalCluster, String> {
        let binary = binary.unwrap_or_else(default_cairn_binary);
        let cluster = tokio::task::spawn_blocking(move || {
            LocalCluster::start_with(&binary, node_count, &extra_args, kafka)
        })
        .await
        .map_err(|error| error.to_string())??;
        cluster.wait_formed(FORM_TIMEOUT).await?;
        Ok(cluster)
    }

    /// [`LocalCluster::stop`] off the async runtime.
    pub async fn shut_down(self) -> Result<(), String> {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .map_err(|error| error.to_string())
    }

    /// SIGTERM every node and wait for them.
    pub fn stop(mut self) {
        for node in self.nodes.drain(..).flatten() {
            node.stop();
        }
    }
}

/// How many nodes (itself included) the node at `address` hears.
async fn heard_nodes(address: &str) -> Result<usize, String> {
    let mut config = ClientConfig::new(address).map_err(|error| error.to_string())?;
    config.request_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(1);
    let status = Admin::new(config)
        .map_err(|error| error.to_string())?
        .cluster_status(false)
        .await
        .map_err(|error| error.to_string())?;
    Ok(status
        .nodes
        .iter()
        .filter(|node| node.liveness != Liveness::Down)
        .count())
}

/// CPU seconds (user + system) and peak resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ResourceUse {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

pub fn resource_use(pid: u32) -> Option<ResourceUse> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    let cpu_seconds = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ResourceUse {
        cpu_seconds,
        peak_rss_bytes: peak_rss_kib * 1024,
    })
}

/// CPU seconds summed over `pids`, and the largest peak memory among them.
pub fn cluster_resource_use(pids: &[u32]) -> Option<ResourceUse> {
    let uses: Vec<ResourceUse> = pids.iter().filter_map(|pid| resource_use(*pid)).collect();
    if uses.is_empty() {
        return None;
    }
    Some(ResourceUse {
        cpu_seconds: uses.iter().map(|u| u.cpu_seconds).sum(),
        peak_rss_bytes: uses.iter().map(|u| u.peak_rss_bytes).max().unwrap_or(0),
    })
}

/// Writes a random cluster secret to `path` unless one is there, so the nodes' peer traffic is
/// authenticated as in production (`--cluster-secret-file`).
fn write_secret(path: &Path) -> Result<(), String> {
    cairn_protocol::peer::ensure_cluster_secret_file(path)
        .map_err(|error| format!("write the cluster secret {}: {error}", path.display()))
}
