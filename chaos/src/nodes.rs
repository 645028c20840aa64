//! The campaign's `cairn node` processes: start (optionally under libfaketime), SIGKILL,
//! SIGSTOP/SIGCONT, SIGTERM, restart on the same data directory and address.
//!
//! Node `i` (1-based) listens on 127.0.0.(10+i) at one shared port; its gossip socket uses the
//! same IP and port, and its outgoing peer connections bind the same IP, so an nftables rule
//! on addresses cuts exactly the links between two nodes. Every node is an initial voter of
//! `__meta`. A node's stderr (its logs, all runs) goes to `node-<i>.log` in the campaign
//! directory; its data directory is `nodes/<i>`. Starting a node and waiting for its ready line
//! is `cairn_launch`'s, shared with `cairn dev`, the benches and the tests.

use crate::schedule::Skew;
use cairn_launch::{Launch, Launched};
use rustix::process::{kill_process, Pid, Signal};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Process ids of every node running now, so [`kill_all_running`] can stop them from a
/// signal handler task that does not own the [`Cluster`].
static RUNNING: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn running() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u32>> {
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SIGKILLs every node process this program started and still runs (on Ctrl-C or SIGTERM:
/// in the namespace the kernel would do it anyway once the campaign exits, on the host not).
pub fn kill_all_running() {
    for pid in running().iter() {
        if let Some(pid) = Pid::from_raw(*pid as i32) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

/// How long a SIGTERMed node may take to exit before it is killed.
const TERMINATE_WAIT: Duration = Duration::from_secs(15);

/// Where libfaketime's multi-threaded library is on Debian.
pub fn faketime_library() -> Option<PathBuf> {
    let lib = Path::new("/usr/lib");
    let entries = std::fs::read_dir(lib).ok()?;
    for entry in entries.flatten() {
        let candidate = entry.path().join("faketime/libfaketimeMT.so.1");
        if candidate.exists() {
            return Some(candidate);
        }
    }
    let candidate = lib.join("faketime/libfaketimeMT.so.1");
    candidate.exists().then_some(candidate)
}

/// The IP node `node` listens on.
pub fn node_ip(node: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + node as u8)
}

/// How to start the cluster's nodes.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub binary: PathBuf,
    pub nodes: u32,
    pub port: u16,
    pub dir: PathBuf,
    /// Extra `cairn node` arguments (e.g. `--set key=value`).
    pub extra_args: Vec<String>,
}

impl ClusterSpec {
    pub fn address(&self, node: u32) -> SocketAddr {
        SocketAddr::from((node_ip(node), self.port))
    }

    pub fn bootstrap(&self) -> String {
        (1..=self.nodes)
            .map(|node| self.address(node).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, node: u32) -> PathBuf {
        data_dir_in(&self.dir, node)
    }

    /// The cluster secret every node is started with; the hostile fault never reads it.
    pub fn secret_file(&self) -> PathBuf {
        self.dir.join("cluster-secret")
    }
}

/// Node `node`'s data directory in the campaign directory `dir`.
pub fn data_dir_in(dir: &Path, node: u32) -> PathBuf {
    dir.join("nodes").join(node.to_string())
}

/// One node's process, if it runs.
pub struct NodeProcess {
    pub node: u32,
    child: Option<Launched>,
    paused: bool,
    /// The skew its current run has, if any.
    pub skew: Option<Skew>,
    /// Whether [`Cluster::wait_ready`] has yet to wait for its current run's ready line.
    awaiting_ready: bool,
}

impl NodeProcess {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|child| Pid::from_raw(child.pid() as i32))
        {
            let _ = kill_process(pid, signal);
        }
    }
}

/// Every node of the campaign.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<NodeProcess>,
    faketime: Option<PathBuf>,
}

impl Cluster {
    pub fn new(spec: ClusterSpec) -> Cluster {
        let nodes = (1..=spec.nodes)
            .map(|node| NodeProcess {
                node,
                child: None,
                paused: false,
                skew: None,
                awaiting_ready: false,
            })
            .collect();
        Cluster {
            spec,
            nodes,
            faketime: faketime_library(),
        }
    }

    pub fn has_faketime(&self) -> bool {
        self.faketime.is_some()
    }

    fn process(&mut self, node: u32) -> &mut NodeProcess {
        &mut self.nodes[node as usize - 1]
    }

    /// Starts `node` (which must not run), with `skew` applied by libfaketime.
    pub fn start(&mut self, node: u32, skew: Option<Skew>) -> Result<(), String> {
        let spec = self.spec.clone();
        let faketime = self.faketime.clone();
        let process = self.process(node);
        if process.child.is_some() {
            return Err(format!("node {node} already runs"));
        }
        let data_dir = spec.data_dir(node);
        std::fs::create_dir_all(&data_dir)
            .map_err(|error| format!("create {}: {error}", data_dir.display()))?;
        let log_path = spec.dir.join(format!("node-{node}.log"));
        write_secret(&spec.secret_file())?;
        let seeds = spec.bootstrap();
        let voters = (1..=spec.nodes)
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut launch = Launch::node(&spec.binary, log_path)
            .arg("--node-id")
            .arg(node.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(spec.address(node).to_string())
            // Many nodes share this machine: each picks a free port for its HTTP listener.
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .arg("--seeds")
            .arg(&seeds)
            .arg("--initial-voters")
            .arg(&voters)
            .arg("--cluster-secret-file")
            .arg(spec.secret_file())
            // The campaign speaks Cairn's protocol only; several nodes share one host.
            .arg("--kafka-listen")
            .arg("off")
            .args(&spec.extra_args)
            .env("CAIRN_LOG", "info");
        if let Some(skew) = &skew {
            let library = faketime
                .as_ref()
                .ok_or("clock faults need libfaketime (Debian package faketime)")?;
            launch = launch.env("LD_PRELOAD", library);
            launch = match skew {
                Skew::Rate(rate) => launch.env("FAKETIME", format!("+0 x{rate}")),
                Skew::WallJump(seconds) => launch
                    .env("FAKETIME", format!("{seconds:+}"))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            };
        }
        // Its stdout is drained for as long as it runs, so it never blocks on a full pipe.
        let child = launch.spawn().map_err(|error| error.to_string())?;
        running().insert(child.pid());
        process.child = Some(child);
        process.paused = false;
        process.skew = skew;
        process.awaiting_ready = true;
        Ok(())
    }

    /// Waits until every running node printed its ready line, or `timeout` passed. Returns
    /// the nodes not ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        let mut late = Vec::new();
        for process in &mut self.nodes {
            let Some(child) = process.child.as_mut() else {
                continue;
            };
            if std::mem::take(&mut process.awaiting_ready) {
                let left = deadline.saturating_duration_since(Instant::now());
                // Exited, not ready in time, or an unreadable ready line: late all the same.
                if child.wait_ready(left).is_err() {
                    late.push(process.node);
                }
            }
        }
        late
    }

    /// SIGKILL (a paused node dies all the same).
    pub fn kill(&mut self, node: u32) {
        let process = self.process(node);
        if let Some(mut child) = process.child.take() {
            child.kill();
            running().remove(&child.pid());
        }
        process.paused = false;
        process.awaiting_ready = false;
    }

    /// SIGKILL of several nodes at one instant, as a power cut does: every signal is sent
    /// before any process is reaped.
    pub fn kill_together(&mut self, nodes: &[u32]) {
        for node in nodes {
            self.process(*node).signal(Signal::KILL);
        }
        for node in nodes {
            self.kill(*node);
        }
    }

    pub fn pause(&mut self, node: u32) {
        let process = self.process(node);
        if process.child.is_some() && !process.paused {
            process.signal(Signal::STOP);
            process.paused = true;
        }
    }

    pub fn resume(&mut self, node: u32) {
        let process = self.process(node);
        if process.paused {
            process.signal(Signal::CONT);
            process.paused = false;
        }
    }

    /// SIGTERM and wait (bounded; then SIGKILL). Returns whether it exited by itself.
    pub fn terminate(&mut self, node: u32) -> bool {
        self.resume(node);
        let process = self.process(node);
        let Some(mut launched) = process.child.take() else {
            return true;
        };
        process.awaiting_ready = false;
        let pid = launched.pid();
        let child = launched.child();
        let _ = kill_process(Pid::from_child(child), Signal::TERM);
        let deadline = Instant::now() + TERMINATE_WAIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                running().remove(&pid);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                running().remove(&pid);
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nodes that are running and not paused.
    pub fn live(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|process| process.is_running() && !process.is_paused())
            .map(|process| process.node)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 1..=self.spec.nodes {
            self.kill(node);
        }
    }
}

/// Writes a random cluster secret to `path` unless one is there, so the nodes' peer traffic is
/// authenticated as in production (`--cluster-secret-file`).
fn write_secret(path: &Path) -> Result<(), String> {
    cairn_protocol::peer::ensure_cluster_secret_file(path)
        .map_err(|error| format!("write the cluster secret {}: {error}", path.display()))
}
