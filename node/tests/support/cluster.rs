//! [`TestCluster`]: several real `cairn node` processes forming one cluster on 127.0.0.1.
//!
//! Ports are chosen before any node starts (each node's gossip address is its listen
//! address, and every node lists all of them as seeds) by `cairn_launch::ports`, outside the
//! kernel's ephemeral range so no other socket takes one before its node binds it. Every node is an initial voter of `__meta`. Nodes start together and the
//! cluster is returned once each printed its ready line; dropping it kills every process.
//! Every node gets the same freshly generated cluster secret (`--cluster-secret-file`), so
//! peer traffic is authenticated in tests as in production.
//!
//! [`replica_log`] reads a stopped node's sled files directly, so a test can compare what
//! each replica really holds.

use super::TestNode;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::Offset;
use cairn_storage::sled_store::SledStore;
use cairn_storage::{LogStore, PartitionLog};
use std::net::SocketAddr;

pub struct TestCluster {
    /// Declared first, so the processes are killed before the secret's directory goes.
    pub nodes: Vec<TestNode>,
    /// The file holding the cluster secret every node was started with.
    pub secret_file: std::path::PathBuf,
    _secret_dir: tempfile::TempDir,
}

/// A new directory holding a random cluster secret, and the secret file's path.
pub fn secret_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cairn-secret-")
        .tempdir()
        .expect("a temporary directory");
    let path = dir.path().join("cluster-secret");
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::write(&path, secret).expect("write the cluster secret");
    (dir, path)
}

impl TestCluster {
    /// `size` nodes with ids 1..=size, the test preset and `extra_args`, all ready.
    pub fn start(size: u32, extra_args: &[&str]) -> TestCluster {
        let ports = cairn_launch::ports::reserve_each(size as usize).expect("free loopback ports");
        let addresses: Vec<SocketAddr> = ports
            .iter()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
            .collect();
        let seeds = addresses
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let voters = (1..=size)
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let (secret_dir, secret_file) = secret_file();
        let secret_arg = secret_file.to_string_lossy().into_owned();
        let mut args = vec![
            "--seeds",
            &seeds,
            "--initial-voters",
            &voters,
            "--cluster-secret-file",
            &secret_arg,
        ];
        args.extend_from_slice(extra_args);
        let nodes = (1..=size)
            .zip(&addresses)
            .map(|(id, address)| TestNode::unstarted(id, Some(*address), &args))
            .collect();
        let mut cluster = TestCluster {
            nodes,
            secret_file,
            _secret_dir: secret_dir,
        };
        cluster.launch_all();
        cluster
    }

    /// Starts one more node that joins with only `--seeds` (every node so far): it is no
    /// metadata voter and learns `__meta` from the voters. Returns its node id, once ready.
    pub fn add_joiner(&mut self, extra_args: &[&str]) -> u32 {
        let port = cairn_launch::ports::reserve(1).expect("a free loopback port");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let seeds = self.bootstrap();
        let secret_arg = self.secret_file.to_string_lossy().into_owned();
        let mut args = vec!["--seeds", &seeds, "--cluster-secret-file", &secret_arg];
        args.extend_from_slice(extra_args);
        let node_id = self.nodes.len() as u32 + 1;
        let mut node = TestNode::unstarted(node_id, Some(address), &args);
        node.launch();
        node.wait_ready();
        self.nodes.push(node);
        node_id
    }

    /// Starts every stopped node at once and waits for all of them to be ready.
    pub fn launch_all(&mut self) {
        for node in &mut self.nodes {
            if !node.is_running() {
                node.launch();
            }
        }
        for node in &mut self.nodes {
            node.wait_ready();
        }
    }

    /// `host:port,...` of every node, for `--bootstrap` and client configs.
    /// Every node's Kafka listener, `host:port,...`: a Kafka client's bootstrap servers.
    pub fn kafka_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.kafka_address().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `id=pid,...` of every node, for client scripts that kill a partition's leader.
    pub fn node_pids(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("{}={}", node.node_id, node.pid()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.address().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, node_id: u32) -> &TestNode {
        &self.nodes[node_id as usize - 1]
    }

    pub fn node_mut(&mut self, node_id: u32) -> &mut TestNode {
        &mut self.nodes[node_id as usize - 1]
    }

    /// Every node's logs, labelled, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("===== node {} =====\n{}", node.node_id, node.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Every batch of `log` in a stopped node's store, in offset order (epoch markers included).
pub fn replica_log(node: &TestNode, log: &str) -> Vec<RecordBatch> {
    let store = SledStore::open(node.data_dir().join("store")).expect("open a stopped store");
    let partition = store.open_log(log).expect("open the partition log");
    let end = partition.log_end();
    let mut next = partition.log_start();
    let mut batches = Vec::new();
    while next < end {
        let read = partition
            .read(next, end, 1 << 20)
            .expect("a stored log reads back");
        let last = read
            .last()
            .expect("a read below the log end returns a batch");
        next = last.next_offset();
        batches.extend(read);
    }
    batches
}

/// The names of a stopped node's topic partition logs (`t<topic id>-<partition>`).
pub fn partition_logs(node: &TestNode) -> Vec<String> {
    let store = SledStore::open(node.data_dir().join("store")).expect("open a stopped store");
    let mut names: Vec<String> = store
        .log_names()
        .expect("list logs")
        .into_iter()
        .filter(|name| name.starts_with('t'))
        .collect();
    names.sort();
    names
}

/// (offset, value) of every data record in `batches`.
pub fn values_of(batches: &[RecordBatch]) -> Vec<(Offset, Vec<u8>)> {
    let mut values = Vec::new();
    for batch in batches {
        if batch.header().is_control() {
            continue;
        }
        for record in batch.records() {
            let record = record.expect("a stored record decodes");
            values.push((
                record.offset,
                record.value.as_deref().unwrap_or_default().to_vec(),
            ));
        }
    }
    values
}

/// A cluster that prints the tail of every node's log when a test fails (the nodes are killed
/// when the inner [`TestCluster`] drops).
pub struct Guarded(pub TestCluster);

impl Drop for Guarded {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.0.nodes {
                let logs = node.logs();
                let lines: Vec<&str> = logs.lines().collect();
                eprintln!("===== node {} (last lines) =====", node.node_id);
                for line in &lines[lines.len().saturating_sub(80)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl std::ops::Deref for Guarded {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut TestCluster {
        &mut self.0
    }
}
