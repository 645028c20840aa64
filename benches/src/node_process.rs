//! Starts a `cairn node` process for a benchmark and reads its resource use from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node the benchmark started, stopped (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    pub address: String,
    _data_dir: tempfile::TempDir,
}

/// Where the `cairn` binary is: `--cairn-bin`, else next to this executable.
pub fn default_cairn_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the path of the running executable");
    me.with_file_name("cairn")
}

impl NodeProcess {
    pub fn start(binary: &Path, extra_args: &[String]) -> Result<NodeProcess, String> {
        let data_dir = tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir()
            .map_err(|error| format!("cannot create a data directory: {error}"))?;
        let mut child = Command::new(binary)
            .args([
                "node",
                "--node-id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .args(extra_args)
            .stdout(Stdio::piped())
            // The node's logs would drown the report; CAIRN_BENCH_NODE_LOGS=1 shows them.
            .stderr(if std::env::var_os("CAIRN_BENCH_NODE_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("cairn node ready ").and_then(|rest| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix("listen="))
                }) {
                    let _ = sender.send(address.to_owned());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            if let Ok(address) = receiver.recv_timeout(Duration::from_millis(100)) {
                break address;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the node exited before it was ready: {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("the node was not ready within 30 s".into());
            }
        };
        Ok(NodeProcess {
            child,
            address,
            _data_dir: data_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
