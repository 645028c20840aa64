//! `cairn dev`: a local cluster of N nodes in the foreground, with one command.
//!
//! It starts N child processes of this same binary (`cairn node`), node `i` listening on
//! `127.0.0.1:(base_port + i - 1)` (so node 1 is on the CLI's default bootstrap address) with
//! its own data directory `DIR/node-i` and its logs in `DIR/node-i.log`. With more than one
//! node every child gets the cluster flags: every node's address as gossip seeds (gossip uses
//! UDP on the listen port) and every node as an initial metadata voter. `--nodes 1` is a lone
//! node with no cluster flags. The cluster's peers authenticate like any other cluster's: on
//! first use a random secret is written to `DIR/cluster-secret` (readable by its owner only)
//! and every node is given `--cluster-secret-file` naming it.
//!
//! Node `i` serves HTTP (`/metrics`, `/health`, `/ready`) on `127.0.0.1:(http_base_port + i -
//! 1)`, 9644 up by default, the admin port Redpanda users know; `--http-base-port 0` lets
//! each node pick a free port. The banner shows each node's HTTP address as the node bound it.
//!
//! It waits until every child printed its ready line and, for a cluster, until every node
//! hears all the others (`ClusterStatus`), so a topic with replication factor N can be created
//! at once; then prints how to use the cluster. SIGINT/SIGTERM are forwarded to the children
//! as SIGTERM (a second signal kills them); it exits 0 once they have all stopped. A child
//! that dies meanwhile is reported with the path of its log, and the others keep running, so a
//! node can be killed on purpose to watch a failover.
//!
//! From another terminal, `cairn dev stop N` (`--kill` for SIGKILL), `cairn dev start N` and
//! `cairn dev restart N` act on one node of the running cluster; [`control`] says how.

pub mod control;

use cairn_client::{Admin, ClientConfig};
use cairn_launch::ReadyLine;
use cairn_protocol::messages::Liveness;
use clap::Args;
use rustix::process::{kill_process, Pid, Signal};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where `cairn dev` keeps its nodes' data and logs unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "cairn-dev";

/// Most nodes `cairn dev` starts: every node is a metadata voter, and voters are bounded.
pub const DEV_NODES_MAX: u16 = cairn_replica::VOTERS_MAX as u16;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    /// Act on one node of a running dev cluster instead of starting one.
    #[command(subcommand)]
    pub action: Option<control::DevAction>,
    /// Number of nodes (1 runs a lone node).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Directory holding each node's data (`node-N/`) and log (`node-N.log`); kept across
    /// runs, so a second `cairn dev` on it recovers the same cluster.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Node 1 listens on 127.0.0.1:BASE_PORT, node N on BASE_PORT + N - 1 (TCP for clients
    /// and peers, UDP for gossip).
    #[arg(long, default_value_t = 7171)]
    pub base_port: u16,
    /// Node 1 serves HTTP (/metrics, /health, /ready) on 127.0.0.1:HTTP_BASE_PORT, node N on
    /// HTTP_BASE_PORT + N - 1; 0 lets every node pick a free port.
    #[arg(long, default_value_t = 9644)]
    pub http_base_port: u16,
    /// Node 1's Kafka listener is on 127.0.0.1:KAFKA_BASE_PORT, node N's on KAFKA_BASE_PORT +
    /// N - 1; 0 lets each node pick a free port (shown in its log's ready line).
    #[arg(long, default_value_t = 9092)]
    pub kafka_base_port: u16,
    /// An extra flag for every node, e.g. `--node-arg=--preset=test` (repeatable).
    #[arg(long = "node-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// How long the nodes may take to start and find each other.
    #[arg(long, default_value_t = 60_000)]
    pub ready_timeout_ms: u64,
}

/// How long stopping nodes may take after SIGTERM before they are killed: above the node's
/// default `shutdown_grace_ms` (5 s) plus its final flush.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often children are checked for an unexpected exit.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a dead node's log shown when it fails during start-up.
const LOG_TAIL_LINES: usize = 15;

/// One child node.
struct Member {
    node_id: u32,
    address: String,
    /// The HTTP address from the node's ready line (`None`: not ready yet, or none).
    http: Option<String>,
    log_path: PathBuf,
    child: Child,
    pid: u32,
    ready: bool,
    /// Set once the child has exited (and was reported).
    exited: Option<std::process::ExitStatus>,
    /// Stopped by `cairn dev stop N`: not a death to report, and it may be started again.
    stopped: bool,
}

/// Runs `cairn dev`; returns the process exit code.
pub fn run_dev(mut args: DevArgs) -> i32 {
    if let Some(action) = args.action.take() {
        return control::run_action(action);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for cairn dev");
    runtime.block_on(dev(args))
}

/// Node `node_id`'s client address (also its gossip address, over UDP).
fn node_address(base_port: u16, node_id: u32) -> String {
    format!("127.0.0.1:{}", u32::from(base_port) + node_id - 1)
}

/// The `cairn node` arguments of node `node_id` of an `nodes`-node dev cluster.
pub fn node_arguments(args: &DevArgs, node_id: u32) -> Vec<String> {
    let mut arguments = vec![
        "node".to_owned(),
        "--node-id".to_owned(),
        node_id.to_string(),
        "--data-dir".to_owned(),
        args.data_dir
            .join(format!("node-{node_id}"))
            .to_string_lossy()
            .into_owned(),
        "--listen".to_owned(),
        node_address(args.base_port, node_id),
        "--kafka-listen".to_owned(),
        if args.kafka_base_port == 0 {
            "127.0.0.1:0".to_owned()
        } else {
            node_address(args.kafka_base_port, node_id)
        },
    ];
    // A user's own `--node-arg=--http-listen=...` wins (the flag may be given only once).
    let http_given = args
        .node_args
        .iter()
        .any(|arg| arg.starts_with("--http-listen"));
    if !http_given {
        let http = match args.http_base_port {
            0 => "127.0.0.1:0".to_owned(),
            base => node_address(base, node_id),
        };
        arguments.extend(["--http-listen".to_owned(), http]);
    }
    if args.nodes > 1 {
        let ids: Vec<u32> = (1..=u32::from(args.nodes)).collect();
        let seeds: Vec<String> = ids
            .iter()
            .map(|id| node_address(args.base_port, *id))
            .collect();
        let voters: Vec<String> = ids.iter().map(ToString::to_string).collect();
        arguments.extend([
            "--seeds".to_owned(),
            seeds.join(","),
            "--initial-voters".to_owned(),
            voters.join(","),
            "--cluster-secret-file".to_owned(),
            secret_path(args).to_string_lossy().into_owned(),
        ]);
    }
    // The nodes share this machine's cores (a user's `--node-arg=--set=threads=N` comes later
    // and wins).
    if let Some(threads) = cairn_launch::colocated_threads(usize::from(args.nodes)) {
        arguments.extend(["--set".to_owned(), format!("threads={threads}")]);
    }
    arguments.extend(args.node_args.iter().cloned());
    arguments
}

/// Name of the dev cluster's secret file in its data directory.
const SECRET_FILE: &str = "cluster-secret";

fn secret_path(args: &DevArgs) -> PathBuf {
    args.data_dir.join(SECRET_FILE)
}

/// Writes a random cluster secret on first use (owner-only permissions); an existing one is
/// kept, so restarting the dev cluster on its data directory keeps its peers talking.
fn ensure_secret(args: &DevArgs) -> Result<(), String> {
    let path = secret_path(args);
    cairn_protocol::peer::ensure_cluster_secret_file(&path).map_err(|error| {
        format!(
            "cannot write the cluster secret {}: {error}",
            path.display()
        )
    })
}

/// Checks the flags; the reason is printed and the exit code is 2.
fn validate(args: &DevArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > DEV_NODES_MAX {
        return Err(format!(
            "--nodes must be between 1 and {DEV_NODES_MAX}, got {}",
            args.nodes
        ));
    }
    if args.base_port == 0 || u32::from(args.base_port) + u32::from(args.nodes) - 1 > 65_535 {
        return Err(format!(
            "--base-port {} leaves no room for {} consecutive ports",
            args.base_port, args.nodes
        ));
    }
    if args.http_base_port != 0 {
        let http =
            u32::from(args.http_base_port)..u32::from(args.http_base_port) + u32::from(args.nodes);
        let client = u32::from(args.base_port)..u32::from(args.base_port) + u32::from(args.nodes);
        if http.end - 1 > 65_535 {
            return Err(format!(
                "--http-base-port {} leaves no room for {} consecutive ports",
                args.http_base_port, args.nodes
            ));
        }
        if http.start < client.end && client.start < http.end {
            return Err(format!(
                "--http-base-port {} overlaps the client ports {}..={}",
                args.http_base_port,
                client.start,
                client.end - 1
            ));
        }
    }
    Ok(())
}

async fn dev(args: DevArgs) -> i32 {
    if let Err(reason) = validate(&args) {
        eprintln!("cairn dev: {reason}");
        return 2;
    }
    if let Err(error) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!(
            "cairn dev: cannot create {}: {error}",
            args.data_dir.display()
        );
        return 1;
    }
    if let Err(reason) = check_layout(&args) {
        eprintln!("cairn dev: {reason}");
        return 2;
    }
    if args.nodes > 1 {
        if let Err(reason) = ensure_secret(&args) {
            eprintln!("cairn dev: {reason}");
            return 1;
        }
    }
    // Before any node starts: a second `cairn dev` on this directory is refused here.
    let control = match control::Control::bind(&args.data_dir) {
        Ok(control) => Some(control),
        Err(control::Outcome::Refused(reason)) => {
            eprintln!("cairn dev: {reason}");
            return 2;
        }
        Err(control::Outcome::Failed(reason) | control::Outcome::Done(reason)) => {
            eprintln!(
                "cairn dev: {reason}; `cairn dev stop|start|restart` will not reach this cluster"
            );
            None
        }
    };
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("cairn dev: cannot handle signals: {error}");
            return 1;
        }
    };
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("cairn dev: cannot find its own executable: {error}");
            return 1;
        }
    };
    let (ready_sender, mut ready_receiver) =
        mpsc::channel::<(u32, Option<String>)>(usize::from(args.nodes));
    let mut members = Vec::new();
    for node_id in 1..=u32::from(args.nodes) {
        match spawn_member(&binary, &args, node_id, ready_sender.clone()) {
            Ok(member) => members.push(member),
            Err(reason) => {
                eprintln!("cairn dev: {reason}");
                stop_all(&mut members, &mut signals).await;
                return 1;
            }
        }
    }
    // Kept for nodes started again by `cairn dev start|restart N`.

    // Start-up: every ready line, then (for a cluster) every node hearing every other.
    let deadline = Instant::now() + Duration::from_millis(args.ready_timeout_ms);
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    while members.iter().any(|member| !member.ready) {
        tokio::select! {
            Some((node_id, http)) = ready_receiver.recv() => {
                if let Some(member) = members.iter_mut().find(|m| m.node_id == node_id) {
                    member.ready = true;
                    member.http = http;
                }
            }
            _ = signals.next() => {
                eprintln!("cairn dev: interrupted during start-up; stopping the nodes");
                stop_all(&mut members, &mut signals).await;
                return 0;
            }
            _ = watch.tick() => {
                if let Some(dead) = reap_exited(&mut members) {
                    report_startup_death(&members[dead]);
                    stop_all(&mut members, &mut signals).await;
                    return 1;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "cairn dev: not every node was ready within {} ms; logs in {}",
                        args.ready_timeout_ms,
                        args.data_dir.display()
                    );
                    stop_all(&mut members, &mut signals).await;
                    return 1;
                }
            }
        }
    }
    if args.nodes > 1 {
        let addresses = members
            .iter()
            .map(|member| (member.node_id, member.address.clone()))
            .collect();
        let formed = wait_formed(addresses, deadline);
        tokio::pin!(formed);
        loop {
            tokio::select! {
                formed = &mut formed => {
                    if let Err(reason) = formed {
                        eprintln!("cairn dev: the cluster did not form: {reason}; logs in {}", args.data_dir.display());
                        stop_all(&mut members, &mut signals).await;
                        return 1;
                    }
                    break;
                }
                _ = signals.next() => {
                    eprintln!("cairn dev: interrupted during start-up; stopping the nodes");
                    stop_all(&mut members, &mut signals).await;
                    return 0;
                }
                _ = watch.tick() => {
                    if let Some(dead) = reap_exited(&mut members) {
                        report_startup_death(&members[dead]);
                        stop_all(&mut members, &mut signals).await;
                        return 1;
                    }
                }
            }
        }
    }
    print_banner(&args, &binary, &members);

    // Running: report deaths and carry out orders until a signal, or until every node died.
    let mut supervisor = Supervisor {
        args: &args,
        binary: &binary,
        ready_sender,
        ready_receiver,
    };
    loop {
        tokio::select! {
            Some(stream) = accept_order(control.as_ref()) => {
                let Some((mut stream, order)) = control::read_order(stream).await else {
                    continue;
                };
                let (outcome, interrupted) = supervisor.execute(order, &mut members, &mut signals).await;
                control::answer(&mut stream, &outcome).await;
                match &outcome {
                    control::Outcome::Done(text) => println!("cairn dev: {text}"),
                    control::Outcome::Refused(text) | control::Outcome::Failed(text) => {
                        eprintln!("cairn dev: {} refused or failed: {text}", order.line().trim());
                    }
                }
                let _ = std::io::stdout().flush();
                if interrupted {
                    println!("cairn dev: stopping the nodes");
                    let clean = stop_all(&mut members, &mut signals).await;
                    println!("cairn dev: all nodes stopped");
                    return if clean { 0 } else { 1 };
                }
            }
            _ = signals.next() => {
                println!("cairn dev: stopping the nodes ({} running)", members.iter().filter(|m| m.exited.is_none()).count());
                let _ = std::io::stdout().flush();
                let clean = stop_all(&mut members, &mut signals).await;
                println!("cairn dev: all nodes stopped");
                return if clean { 0 } else { 1 };
            }
            _ = watch.tick() => {
                while let Some(dead) = reap_exited(&mut members) {
                    let member = &members[dead];
                    eprintln!(
                        "cairn dev: node {} (pid {}) exited: {}; its log: {}",
                        member.node_id,
                        member.pid,
                        describe_status(member.exited),
                        member.log_path.display()
                    );
                }
                // Nodes stopped on purpose may be started again: only deaths end `cairn dev`.
                if members.iter().all(|member| member.exited.is_some() && !member.stopped) {
                    eprintln!("cairn dev: every node has exited");
                    return 1;
                }
            }
        }
    }
}

/// The next control client, or never when `cairn dev` has no control socket.
async fn accept_order(control: Option<&control::Control>) -> Option<tokio::net::UnixStream> {
    match control {
        Some(control) => control.accept().await,
        None => std::future::pending().await,
    }
}

/// What carrying out `cairn dev stop|start|restart N` takes besides the nodes themselves.
struct Supervisor<'a> {
    args: &'a DevArgs,
    binary: &'a Path,
    /// Cloned into every node started again, whose ready line comes back on the receiver.
    ready_sender: mpsc::Sender<(u32, Option<String>)>,
    ready_receiver: mpsc::Receiver<(u32, Option<String>)>,
}

impl Supervisor<'_> {
    /// Carries out `order`; also says whether a signal asked `cairn dev` to stop meanwhile.
    async fn execute(
        &mut self,
        order: control::Order,
        members: &mut [Member],
        signals: &mut Signals,
    ) -> (control::Outcome, bool) {
        use control::{Order, Outcome};
        let node_id = order.node_id();
        let Some(index) = members.iter().position(|member| member.node_id == node_id) else {
            return (
                Outcome::Refused(format!(
                    "this dev cluster has nodes 1 to {}; there is no node {node_id}",
                    members.len()
                )),
                false,
            );
        };
        let running = members[index].exited.is_none();
        match order {
            Order::Stop { kill, .. } => {
                if !running {
                    return (
                        Outcome::Refused(format!("node {node_id} is not running")),
                        false,
                    );
                }
                (stop_member(&mut members[index], kill).await, false)
            }
            Order::Start { .. } => {
                if running {
                    return (
                        Outcome::Refused(format!(
                            "node {node_id} is already running (pid {}); `cairn dev restart {node_id}` restarts it",
                            members[index].pid
                        )),
                        false,
                    );
                }
                self.start(&mut members[index], signals).await
            }
            Order::Restart { .. } => {
                if running {
                    if let failed @ Outcome::Failed(_) =
                        stop_member(&mut members[index], false).await
                    {
                        return (failed, false);
                    }
                }
                self.start(&mut members[index], signals).await
            }
        }
    }

    /// Starts a stopped node again on its data directory and waits for its ready line.
    async fn start(
        &mut self,
        member: &mut Member,
        signals: &mut Signals,
    ) -> (control::Outcome, bool) {
        use control::Outcome;
        let node_id = member.node_id;
        match spawn_member(self.binary, self.args, node_id, self.ready_sender.clone()) {
            Ok(started) => *member = started,
            Err(reason) => return (Outcome::Failed(reason), false),
        }
        let deadline = Instant::now() + Duration::from_millis(self.args.ready_timeout_ms);
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                Some((ready_id, http)) = self.ready_receiver.recv() => {
                    if ready_id == node_id {
                        member.ready = true;
                        member.http = http;
                        return (
                            Outcome::Done(format!(
                                "node {node_id} started: pid {}, listen {}, http {}, log {}",
                                member.pid,
                                member.address,
                                member.http.as_deref().unwrap_or("none"),
                                member.log_path.display()
                            )),
                            false,
                        );
                    }
                }
                _ = signals.next() => {
                    return (Outcome::Failed(format!("cairn dev is stopping; node {node_id} did not finish starting")), true);
                }
                _ = watch.tick() => {
                    if let Ok(Some(status)) = member.child.try_wait() {
                        member.exited = Some(status);
                        // The order failed; the node may be started again.
                        member.stopped = true;
                        return (
                            Outcome::Failed(format!(
                                "node {node_id} exited during start-up ({}); its log: {}",
                                describe_status(Some(status)),
                                member.log_path.display()
                            )),
                            false,
                        );
                    }
                    if Instant::now() > deadline {
                        return (
                            Outcome::Failed(format!(
                                "node {node_id} (pid {}) was not ready within {} ms; it keeps starting, its log: {}",
                                member.pid,
                                self.args.ready_timeout_ms,
                                member.log_path.display()
                            )),
                            false,
                        );
                    }
                }
            }
        }
    }
}

/// Stops one node (SIGTERM, or SIGKILL when `kill`), waiting as long as [`stop_all`] would.
async fn stop_member(member: &mut Member, kill: bool) -> control::Outcome {
    use control::Outcome;
    let node_id = member.node_id;
    if let Some(pid) = Pid::from_raw(member.pid as i32) {
        let _ = kill_process(pid, if kill { Signal::KILL } else { Signal::TERM });
    }
    let status = match tokio::time::timeout(STOP_TIMEOUT, member.child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => {
            return Outcome::Failed(format!("cannot wait for node {node_id}: {error}"))
        }
        Err(_) => {
            let _ = member.child.start_kill();
            match member.child.wait().await {
                Ok(status) => status,
                Err(error) => {
                    return Outcome::Failed(format!("cannot wait for node {node_id}: {error}"))
                }
            }
        }
    };
    member.exited = Some(status);
    member.stopped = true;
    member.ready = false;
    Outcome::Done(format!(
        "node {node_id} (pid {}) stopped: {}; `cairn dev start {node_id}` starts it again",
        member.pid,
        describe_status(Some(status))
    ))
}

/// Name of the file recording how many nodes a data directory was created for.
const LAYOUT_FILE: &str = "cairn-dev-nodes";

/// A data directory keeps its cluster's shape: its `__meta` voters were fixed when it was
/// first started, so reusing it with another node count would start nodes that disagree.
/// Records the count on first use and refuses a different one later.
fn check_layout(args: &DevArgs) -> Result<(), String> {
    let path = args.data_dir.join(LAYOUT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u16>() {
            Ok(nodes) if nodes == args.nodes => Ok(()),
            Ok(nodes) => Err(format!(
                "{} holds a {nodes}-node cluster; run `cairn dev --nodes {nodes}` on it, or \
                 give --nodes {} a fresh --data-dir",
                args.data_dir.display(),
                args.nodes
            )),
            Err(_) => Err(format!(
                "{} is not a node count; remove it or use a fresh --data-dir",
                path.display()
            )),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{}\n", args.nodes))
                .map_err(|error| format!("cannot write {}: {error}", path.display()))
        }
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

fn spawn_member(
    binary: &Path,
    args: &DevArgs,
    node_id: u32,
    ready: mpsc::Sender<(u32, Option<String>)>,
) -> Result<Member, String> {
    let log_path = args.data_dir.join(format!("node-{node_id}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
    let mut child = Command::new(binary)
        .args(node_arguments(args, node_id))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // A safety net only: every path out of `dev` stops the children first.
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| format!("node {node_id} exited at once"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if ReadyLine::is_ready_line(&line) {
                // A line another build printed still means ready; only its HTTP address is lost.
                let http = match ReadyLine::parse(&line) {
                    Ok(parsed) => parsed.http.map(|http| http.to_string()),
                    Err(error) => {
                        tracing::warn!(node_id, %error, "cannot read the node's ready line");
                        None
                    }
                };
                let _ = ready.send((node_id, http)).await;
            }
        }
    });
    Ok(Member {
        node_id,
        address: node_address(args.base_port, node_id),
        http: None,
        log_path,
        child,
        pid,
        ready: false,
        exited: None,
        stopped: false,
    })
}

/// Marks the first child found to have exited since the last call; returns its index.
fn reap_exited(members: &mut [Member]) -> Option<usize> {
    for (index, member) in members.iter_mut().enumerate() {
        if member.exited.is_some() {
            continue;
        }
        match member.child.try_wait() {
            Ok(Some(status)) => {
                member.exited = Some(status);
                return Some(index);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(node_id = member.node_id, %error, "cannot check a node");
            }
        }
    }
    None
}

fn describe_status(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "still running".to_owned(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(9)) => "killed (SIGKILL)".to_owned(),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => status.to_string(),
        },
    }
}

fn report_startup_death(member: &Member) {
    eprintln!(
        "cairn dev: node {} exited during start-up ({}); last lines of {}:",
        member.node_id,
        describe_status(member.exited),
        member.log_path.display()
    );
    let log = std::fs::read_to_string(&member.log_path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
        eprintln!("  {line}");
    }
}

/// Waits until every node reports every node up, or the deadline passes.
async fn wait_formed(addresses: Vec<(u32, String)>, deadline: Instant) -> Result<(), String> {
    let expected = addresses.len();
    for (node_id, address) in &addresses {
        loop {
            let last = match heard_nodes(address).await {
                Ok(heard) if heard >= expected => break,
                Ok(heard) => format!("node {node_id} hears {heard} of {expected} nodes"),
                Err(error) => format!("node {node_id}: {error}"),
            };
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// How many nodes (itself included) the node at `address` hears.
async fn heard_nodes(address: &str) -> Result<usize, String> {
    let config = ClientConfig::new(address)
        .map_err(|error| error.to_string())?
        .client_id("cairn-dev")
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1));
    let admin = Admin::new(config).map_err(|error| error.to_string())?;
    let status = admin
        .cluster_status(false)
        .await
        .map_err(|error| error.to_string())?;
    Ok(status
        .nodes
        .iter()
        .filter(|node| node.liveness != Liveness::Down)
        .count())
}

/// SIGTERM to every running child, then waits for all; a second signal or the stop timeout
/// turns it into SIGKILL. Returns whether every node stopped cleanly (exit code 0).
async fn stop_all(members: &mut [Member], signals: &mut Signals) -> bool {
    for member in members.iter().filter(|member| member.exited.is_none()) {
        if let Some(pid) = Pid::from_raw(member.pid as i32) {
            // The child may have exited since the last check; then there is nothing to stop.
            let _ = kill_process(pid, Signal::TERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut clean = true;
    let mut forced = false;
    for member in members.iter_mut() {
        if member.exited.is_some() {
            continue;
        }
        let status = tokio::select! {
            status = member.child.wait() => status.ok(),
            _ = tokio::time::sleep_until(deadline), if !forced => None,
            _ = signals.next(), if !forced => None,
        };
        let status = match status {
            Some(status) => status,
            None => {
                forced = true;
                eprintln!("cairn dev: killing the nodes that have not stopped");
                for other in members.iter_mut().filter(|m| m.exited.is_none()) {
                    let _ = other.child.start_kill();
                }
                break;
            }
        };
        if !status.success() {
            clean = false;
            eprintln!(
                "cairn dev: node {} stopped with {}; its log: {}",
                member.node_id,
                describe_status(Some(status)),
                member.log_path.display()
            );
        }
        member.exited = Some(status);
    }
    if forced {
        clean = false;
        for member in members.iter_mut().filter(|m| m.exited.is_none()) {
            member.exited = member.child.wait().await.ok();
        }
    }
    clean
}

fn print_banner(args: &DevArgs, binary: &Path, members: &[Member]) {
    let bootstrap: Vec<&str> = members
        .iter()
        .map(|member| member.address.as_str())
        .collect();
    let bootstrap = bootstrap.join(",");
    let mut out = String::new();
    out.push_str(&format!(
        "cairn dev ready nodes={} bootstrap={bootstrap}\n\n",
        members.len()
    ));
    for member in members {
        out.push_str(&format!(
            "  node {}  {}  http {}  pid {}  log {}\n",
            member.node_id,
            member.address,
            member.http.as_deref().unwrap_or("none"),
            member.pid,
            member.log_path.display()
        ));
    }
    let default_bootstrap = cairn_client::cli::DEFAULT_BOOTSTRAP;
    let rf = members.len().min(3);
    out.push_str(&format!(
        "\nData in {}. In another terminal (cairn is {}):\n\n",
        args.data_dir.display(),
        binary.display()
    ));
    if members[0].address != default_bootstrap {
        out.push_str(&format!("  export CAIRN_BOOTSTRAP={bootstrap}\n"));
    } else if members.len() > 1 {
        out.push_str(&format!(
            "  export CAIRN_BOOTSTRAP={bootstrap}   # optional: {default_bootstrap} is the default\n"
        ));
    }
    out.push_str(&format!(
        "  cairn cluster status\n\
         \x20 cairn topic create orders --partitions 3 --replication-factor {rf}\n\
         \x20 seq 1 1000 | cairn produce orders\n\
         \x20 cairn consume orders --from-beginning --max-messages 1000\n"
    ));
    if let Some(http) = &members[0].http {
        out.push_str(&format!(
            "  curl -s {http}/metrics | grep cairn_partition_log_end   # also /health, /ready\n"
        ));
    }
    if members.len() > 1 {
        let last = members[members.len() - 1].node_id;
        let dir = if args.data_dir == Path::new(DEFAULT_DATA_DIR) {
            String::new()
        } else {
            format!(" --data-dir {}", args.data_dir.display())
        };
        out.push_str(&format!(
            "  cairn dev stop {last} --kill{dir}   # crash node {last}, then: cairn cluster status\n\
             \x20 cairn dev start {last}{dir}          # and bring it back (also: restart {last})\n"
        ));
    }
    out.push_str("\nCtrl-C stops every node.\n");
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// SIGTERM and SIGINT as one stream.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: u16) -> DevArgs {
        DevArgs {
            action: None,
            nodes,
            data_dir: PathBuf::from("/tmp/d"),
            base_port: 7171,
            http_base_port: 9644,
            kafka_base_port: 9092,
            node_args: vec!["--preset=test".to_owned()],
            ready_timeout_ms: 1000,
        }
    }

    #[test]
    fn three_nodes_get_consecutive_ports_and_the_cluster_flags() {
        let threads = cairn_launch::colocated_threads(3).expect("three nodes share the cores");
        let threads = format!("threads={threads}");
        assert_eq!(
            node_arguments(&args(3), 2),
            [
                "node",
                "--node-id",
                "2",
                "--data-dir",
                "/tmp/d/node-2",
                "--listen",
                "127.0.0.1:7172",
                "--kafka-listen",
                "127.0.0.1:9093",
                "--http-listen",
                "127.0.0.1:9645",
                "--seeds",
                "127.0.0.1:7171,127.0.0.1:7172,127.0.0.1:7173",
                "--initial-voters",
                "1,2,3",
                "--cluster-secret-file",
                "/tmp/d/cluster-secret",
                "--set",
                &threads,
                "--preset=test",
            ]
        );
    }

    #[test]
    fn a_lone_node_gets_no_cluster_flags() {
        assert_eq!(
            node_arguments(&args(1), 1),
            [
                "node",
                "--node-id",
                "1",
                "--data-dir",
                "/tmp/d/node-1",
                "--listen",
                "127.0.0.1:7171",
                "--kafka-listen",
                "127.0.0.1:9092",
                "--http-listen",
                "127.0.0.1:9644",
                "--preset=test",
            ]
        );
    }

    #[test]
    fn the_secret_is_written_once_for_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut args = args(3);
        args.data_dir = dir.path().to_path_buf();
        ensure_secret(&args).unwrap();
        let first = std::fs::read(secret_path(&args)).unwrap();
        assert!(crate::peer_auth::ClusterSecret::from_value("dev", &first).is_ok());
        let mode = std::fs::metadata(secret_path(&args))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure_secret(&args).unwrap();
        assert_eq!(std::fs::read(secret_path(&args)).unwrap(), first);
    }

    #[test]
    fn node_counts_and_ports_are_checked() {
        assert!(validate(&args(1)).is_ok());
        assert!(validate(&args(0)).is_err());
        assert!(validate(&args(DEV_NODES_MAX + 1)).is_err());
        let mut high = args(3);
        high.base_port = 65_534;
        assert!(validate(&high).is_err());
        high.base_port = 65_533;
        assert!(validate(&high).is_ok());
        let mut http = args(3);
        http.http_base_port = 7173;
        assert!(validate(&http).is_err(), "overlaps node 3's client port");
        http.http_base_port = 7168;
        assert!(validate(&http).is_ok());
        http.http_base_port = 65_534;
        assert!(validate(&http).is_err());
        http.http_base_port = 0;
        assert!(validate(&http).is_ok());
    }

    #[test]
    fn http_ports_can_be_left_to_the_nodes_or_set_by_the_user() {
        let mut free = args(1);
        free.http_base_port = 0;
        let arguments = node_arguments(&free, 1);
        assert!(arguments
            .windows(2)
            .any(|pair| pair == ["--http-listen", "127.0.0.1:0"]));
        let mut own = args(1);
        own.node_args = vec!["--http-listen=none".to_owned()];
        let arguments = node_arguments(&own, 1);
        assert_eq!(
            arguments
                .iter()
                .filter(|arg| arg.starts_with("--http-listen"))
                .count(),
            1
        );
    }
}
