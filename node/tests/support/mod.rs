//! Shared test harness: real `cairn node` processes and a raw wire-level client.
//!
//! [`TestNode`] starts the built binary with a temporary data directory, `--listen
//! 127.0.0.1:0 --preset test`, and waits for its ready line (`cairn node ready node_id=N
//! listen=IP:PORT ...`) through `cairn_launch`, the start-up contract `cairn dev`, the benches
//! and the chaos campaign share. It can SIGKILL, SIGTERM and restart the node on the same data directory
//! and address. A node still running when its `TestNode` drops is killed, so no test leaves a
//! process behind. The node's stderr (its logs) goes to `node.log` next to the data directory
//! and is printed when a start fails.
//!
//! [`cluster::TestCluster`] runs several such nodes as one cluster on fixed loopback ports.
//!
//! [`Wire`] speaks the protocol over a blocking `TcpStream` with a read timeout, so a test
//! can send exact bytes, pipeline requests and read replies one by one.

#![allow(dead_code)]

pub mod cluster;
pub mod kafka;
pub mod registry;

use cairn_launch::{Launch, LaunchError, Launched, ReadyLine};
use cairn_protocol::batch::{split_batches, Record, RecordBatch, RecordBatchBuilder, RecordView};
use cairn_protocol::frame::{decode_response, encode_request};
use cairn_protocol::messages::*;
use cairn_protocol::{ApiError, Offset, Request, RequestFrame, Response, ResponseFrame};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a wire read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The `cairn` binary cargo built for these tests. Worktrees sharing one target directory
/// each hard-link their own build to this path, so run the tests right after a build of this
/// checkout (cargo holds the target directory's lock while it runs them).
///
/// `CAIRN_TEST_BINARY` replaces it (to measure a probe against another build).
pub fn cairn_binary() -> PathBuf {
    match std::env::var_os("CAIRN_TEST_BINARY") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_cairn")),
    }
}

/// One `cairn node` process (or its data directory, between a stop and a restart).
pub struct TestNode {
    pub node_id: u32,
    /// Holds the data directory and the log; removed when the node drops.
    temp: tempfile::TempDir,
    child: Option<Launched>,
    address: Option<SocketAddr>,
    /// The bound HTTP address from the ready line (`None`: not started, or `http=none`).
    http_address: Option<SocketAddr>,
    /// The bound Kafka listener address, from the ready line (`kafka=IP:PORT`).
    kafka_address: Option<SocketAddr>,
    extra_args: Vec<String>,
    /// Environment variables set for the node process (e.g. libfaketime's).
    envs: Vec<(String, String)>,
}

impl TestNode {
    /// A node with id 1, the test preset and a fresh data directory, ready to serve.
    pub fn start() -> TestNode {
        TestNode::start_with(&[])
    }

    /// Like [`TestNode::start`], with more flags (e.g. `--set limits.connections_max=2`).
    pub fn start_with(extra_args: &[&str]) -> TestNode {
        let mut node = TestNode::unstarted(1, None, extra_args);
        node.spawn("127.0.0.1:0");
        node
    }

    /// A node that is not started yet: `listen` fixes its address up front (a cluster's
    /// seeds must be known before any node starts), `None` lets it pick a free port.
    pub fn unstarted(node_id: u32, listen: Option<SocketAddr>, extra_args: &[&str]) -> TestNode {
        TestNode {
            node_id,
            temp: tempfile::Builder::new()
                .prefix("cairn-test-")
                .tempdir()
                .expect("a temporary directory"),
            child: None,
            address: listen,
            http_address: None,
            kafka_address: None,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            envs: Vec::new(),
        }
    }

    /// Like [`TestNode::start_with`], with environment variables for the node process.
    #[allow(dead_code)]
    pub fn start_with_env(extra_args: &[&str], envs: &[(&str, &str)]) -> TestNode {
        let mut node = TestNode::unstarted(1, None, extra_args);
        node.envs = envs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        node.spawn("127.0.0.1:0");
        node
    }

    pub fn data_dir(&self) -> PathBuf {
        self.temp.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.temp.path().join("node.log")
    }

    /// Everything the node logged so far (all its runs).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The bound HTTP address (`/metrics`, `/health`, `/ready`), from the ready line.
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
            .expect("the node has started with an HTTP listener")
    }

    /// The bound client address, from the ready line.
    pub fn address(&self) -> SocketAddr {
        self.address.expect("the node has started")
    }

    /// The bound Kafka listener address, from the ready line.
    pub fn kafka_address(&self) -> SocketAddr {
        self.kafka_address
            .expect("the node has started with its Kafka listener on")
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.child().try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").pid()
    }

    fn spawn(&mut self, listen: &str) {
        self.launch_at(listen);
        self.wait_ready();
    }

    /// Starts the process without waiting for its ready line (a cluster node is ready only
    /// once a majority of the metadata voters runs, so its peers must start meanwhile).
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "the node is already running");
        let listen = self
            .address
            .map(|address| address.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        self.launch_at(&listen);
    }

    fn launch_at(&mut self, listen: &str) {
        let mut launch = Launch::node(cairn_binary(), self.log_path());
        for (name, value) in &self.envs {
            launch = launch.env(name, value);
        }
        let launched = launch
            .arg("--node-id")
            .arg(self.node_id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(listen)
            .arg("--preset")
            .arg("test")
            .args(&self.extra_args)
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .unwrap_or_else(|error| panic!("the cairn binary starts: {error}"));
        self.child = Some(launched);
    }

    /// Waits (bounded by [`READY_TIMEOUT`]) for the ready line of the launched process.
    pub fn wait_ready(&mut self) {
        let launched = self.child.as_mut().expect("the node was launched");
        match launched.wait_ready(READY_TIMEOUT) {
            Ok(ready) => {
                assert_eq!(ready.node_id, self.node_id, "{ready}");
                self.address = Some(ready.listen);
                self.http_address = ready.http;
                self.kafka_address = ready.kafka;
            }
            Err(LaunchError::Exited { status, .. }) => panic!(
                "node exited before ready ({status}); logs:\n{}",
                self.logs()
            ),
            Err(LaunchError::Timeout { .. }) => {
                self.kill();
                panic!(
                    "node not ready within {READY_TIMEOUT:?}; logs:\n{}",
                    self.logs()
                );
            }
            Err(error) => {
                self.kill();
                panic!("node not ready: {error}; logs:\n{}", self.logs());
            }
        }
    }

    /// SIGKILL: no shutdown, nothing flushed that was not flushed already.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut launched = self.child.take().expect("the node is running");
        let child = launched.child();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node did not exit within 20 s of SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same data directory and the same address.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        self.launch();
        self.wait_ready();
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the running process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// A connected wire client.
    pub fn wire(&self) -> Wire {
        Wire::connect(self.address())
    }

    /// The process's resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the node's /proc status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) process dies of SIGKILL all the same.
        self.kill();
    }
}

/// A command for a foreign Kafka client (kcat, Python's librdkafka), without the
/// `LD_LIBRARY_PATH` cargo sets for tests: in a workspace run it names the directory where the
/// benches' rdkafka-sys built its own librdkafka (no zlib), which the client would then load
/// instead of its own (kcat refused `-z gzip` that way).
pub fn foreign_client(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_remove("LD_LIBRARY_PATH");
    command
}

/// The Python the foreign-client tests run (`PYTHON`, default `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails with `hint` (what to install) unless [`python`] imports `module`.
pub fn require_python_module(module: &str, hint: &str) {
    let imported = foreign_client(python())
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        imported.is_ok_and(|status| status.success()),
        "{} cannot import {module}: {hint}, or set PYTHON=/path/to/python3",
        python()
    );
}

/// Sends `request` as is on a new connection and reads until the server closes, each read
/// bounded by `read_timeout`; (status, body), status 0 when the server closed without
/// answering.
pub fn http_raw(address: SocketAddr, request: &[u8], read_timeout: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    // The server may answer and close before reading all of a large request.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The client address of a ready line (`cairn_launch::ReadyLine`), which must name `node_id`.
pub fn parse_ready_line(line: &str, node_id: u32) -> SocketAddr {
    let ready = ReadyLine::parse(line).unwrap_or_else(|error| panic!("{error}: {line:?}"));
    assert_eq!(ready.node_id, node_id, "{line}");
    ready.listen
}

/// Runs `cairn node` with `args` expecting it to exit by itself (a refused configuration);
/// returns its status and stderr. Bounded: a node that keeps running fails the test.
pub fn run_node_expecting_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(cairn_binary())
        .arg("node")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cairn binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn node {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("stderr is text");
    (status, stderr)
}

/// A raw protocol connection: exact frames in, decoded frames out.
pub struct Wire {
    pub stream: TcpStream,
    next_correlation_id: u64,
}

impl Wire {
    pub fn connect(address: SocketAddr) -> Wire {
        Wire::over(TcpStream::connect(address).expect("connect to the node"))
    }

    /// A wire over a stream connected some other way (from another loopback source address).
    pub fn over(stream: TcpStream) -> Wire {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Wire {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Writes one frame holding exactly `payload`.
    pub fn send_payload(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).expect("write a frame");
    }

    /// Sends a request; returns its correlation id.
    pub fn send(&mut self, request: Request) -> u64 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let payload = encode_request(&RequestFrame {
            version: 1,
            correlation_id,
            request,
        });
        self.send_payload(&payload);
        correlation_id
    }

    /// Reads one response frame; `None` when the server closed the connection.
    pub fn try_recv(&mut self) -> Option<ResponseFrame> {
        let mut length = [0u8; 4];
        match self.stream.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(error) => panic!("reading a response failed: {error}"),
        }
        let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut payload).expect("a whole frame");
        Some(decode_response(&payload).expect("a decodable response"))
    }

    pub fn recv(&mut self) -> ResponseFrame {
        self.try_recv().expect("the server closed the connection")
    }

    /// True once the server has closed the connection (reads hit end of stream).
    pub fn is_closed(&mut self) -> bool {
        self.try_recv().is_none()
    }

    /// One request, one reply.
    pub fn call(&mut self, request: Request) -> Result<Response, ApiError> {
        let correlation_id = self.send(request);
        let reply = self.recv();
        assert_eq!(reply.correlation_id, correlation_id);
        reply.result
    }

    /// A topic's partitions as this node describes them.
    pub fn describe_topic(&mut self, topic: &str) -> Result<Vec<PartitionDescription>, ApiError> {
        match self.call(Request::DescribeTopic(DescribeTopicRequest {
            name: topic.to_string(),
        }))? {
            Response::DescribeTopic(response) => Ok(response.partitions),
            other => panic!("unexpected reply to DescribeTopic: {other:?}"),
        }
    }

    /// `cairn cluster status`'s request: the node's view of nodes and partitions.
    pub fn cluster_status(&mut self, include_internal: bool) -> ClusterStatusResponse {
        match self.call(Request::ClusterStatus(ClusterStatusRequest {
            include_internal,
        })) {
            Ok(Response::ClusterStatus(status)) => status,
            other => panic!("unexpected reply to ClusterStatus: {other:?}"),
        }
    }

    pub fn create_topic(&mut self, name: &str, partitions: u32) -> Result<TopicMetadata, ApiError> {
        match self.call(Request::CreateTopic(CreateTopicRequest {
            name: name.to_string(),
            partitions,
            replication_factor: None,
            config: TopicConfig::default(),
        }))? {
            Response::CreateTopic(response) => Ok(response.topic),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn produce_batch(
        &mut self,
        topic: &str,
        partition: u32,
        batch: bytes::Bytes,
    ) -> Result<ProduceResponse, ApiError> {
        match self.call(produce_request(topic, partition, batch))? {
            Response::Produce(response) => Ok(response),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        values: &[&[u8]],
    ) -> Result<ProduceResponse, ApiError> {
        self.produce_batch(topic, partition, batch_of(values).into_bytes())
    }

    /// One fetch that does not wait, of `partitions` in the order given, within `max_bytes`.
    pub fn fetch_now(
        &mut self,
        max_bytes: u32,
        partitions: Vec<FetchPartition>,
    ) -> Vec<FetchPartitionResponse> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes,
            partitions,
        });
        match self.call(request) {
            Ok(Response::Fetch(response)) => response.partitions,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: Offset,
        max_wait_ms: u32,
    ) -> Result<FetchedRecords, ApiError> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes: 1 << 20,
            }],
        });
        match self.call(request)? {
            Response::Fetch(mut response) => {
                assert_eq!(response.partitions.len(), 1);
                response.partitions.remove(0).result
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Every committed record of a partition from `from`, fetching until the high watermark.
    pub fn read_all(&mut self, topic: &str, partition: u32, from: Offset) -> Vec<RecordView> {
        self.try_read_all(topic, partition, from)
            .unwrap_or_else(|error| panic!("fetch {topic}/{partition} from {from}: {error:?}"))
    }

    /// [`Wire::read_all`] that returns the node's refusal (for example `NotLeader` after a
    /// leadership change) instead of panicking.
    pub fn try_read_all(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
    ) -> Result<Vec<RecordView>, ApiError> {
        let mut records = Vec::new();
        let mut next = from;
        for _ in 0..100_000 {
            let fetched = self.fetch(topic, partition, next, 0)?;
            if next >= fetched.high_watermark {
                return Ok(records);
            }
            for batch in split_batches(&fetched.batches) {
                let batch = batch.expect("fetched batches are well formed");
                batch
                    .verify_checksum()
                    .expect("fetched batches pass their checksum");
                if !batch.header().is_control() {
                    for record in batch.records() {
                        let record = record.expect("fetched records decode");
                        if record.offset >= next {
                            records.push(record);
                        }
                    }
                }
                // Control batches (epoch markers) hold offsets too: step over them.
                next = next.max(batch.next_offset());
            }
        }
        panic!("read_all did not reach the high watermark");
    }
}

pub fn produce_request(topic: &str, partition: u32, batch: bytes::Bytes) -> Request {
    Request::Produce(ProduceRequest {
        topic: topic.to_string(),
        partition,
        acks: Acks::All,
        timeout_ms: 10_000,
        batch,
    })
}

pub fn batch_of(values: &[&[u8]]) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    for value in values {
        builder.push(&Record::new(bytes::Bytes::copy_from_slice(value)));
    }
    builder.build()
}

/// Decodes concatenated batches as a consumer would, verifying each checksum.
pub fn records_of(batches: &bytes::Bytes) -> Vec<RecordView> {
    let mut records = Vec::new();
    for batch in split_batches(batches) {
        let batch = batch.expect("fetched batches are well formed");
        batch
            .verify_checksum()
            .expect("fetched batches pass their checksum");
        if batch.header().is_control() {
            continue;
        }
        for record in batch.records() {
            records.push(record.expect("fetched records decode"));
        }
    }
    records
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

/// Creates a topic through the `cairn` CLI against the Cairn listener at `bootstrap`.
pub fn create_topic_cli(bootstrap: &str, topic: &str, partitions: u32, replication_factor: u32) {
    let status = std::process::Command::new(cairn_binary())
        .args(["topic", "create", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--replication-factor", &replication_factor.to_string()])
        .args(["--bootstrap", bootstrap])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("the cairn CLI runs");
    assert!(status.success(), "topic create {topic}");
}

/// Runs `command` (a client scenario) bounded by `timeout`, killing it when it overruns; fails
/// with its output and `logs()` (the nodes') unless it exits 0. Returns its output.
pub fn run_client_scenario(
    name: &str,
    mut command: std::process::Command,
    timeout: Duration,
    logs: impl FnOnce() -> String,
) -> std::process::Output {
    use std::process::Stdio;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    let timed_out = finished.recv_timeout(timeout).is_err();
    if timed_out {
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    }
    let output = waiter
        .join()
        .expect("the waiter")
        .expect("the scenario ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !timed_out && output.status.success(),
        "{name} {} ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- nodes\n{}",
        if timed_out {
            format!("did not finish within {timeout:?}")
        } else {
            "failed".to_string()
        },
        output.status,
        logs()
    );
    println!("{stdout}");
    output
}

/// The value of the unlabelled metric `name` on the `/metrics` of the HTTP listener at
/// `address`; panics naming what was served when it is absent.
#[allow(dead_code)]
pub fn metric(address: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_raw(
        address,
        b"GET /metrics HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    );
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{address} serves no {name}: {body}"))
}

/// Every record of `topic`'s partition 0 from its log start, read with a fresh consumer (which
/// steps over compaction's gaps) until its position reaches `until`, for at most 10 s.
#[allow(dead_code)]
pub async fn read_from_start(
    config: cairn_client::ClientConfig,
    topic: &str,
    until: Offset,
) -> Vec<cairn_client::ConsumerRecord> {
    use cairn_client::{AutoOffsetReset, Consumer, ConsumerConfig, SeekTo};
    let mut consumer = Consumer::new(
        config,
        ConsumerConfig::default()
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(100)),
    )
    .unwrap();
    consumer.assign(&[(topic, 0)]).await.unwrap();
    consumer.seek(topic, 0, SeekTo::Earliest).await.unwrap();
    let mut records = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        records.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
        if consumer.position(topic, 0).unwrap_or(Offset::ZERO) >= until {
            break;
        }
    }
    records
}
