//! `cairn dev` as a user runs it: a real `cairn dev` process starting real node processes,
//! then the CLI against it, then SIGTERM. Every process is bounded in time and killed if a
//! test fails half-way.

use rustix::process::{kill_process, Pid, Signal};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn cairn_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// How long `cairn dev` may take to print its ready banner.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `cairn dev` may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// `count` consecutive ports free for TCP and UDP on 127.0.0.1, starting in a range that
/// depends on the process id (so parallel test binaries rarely collide) and moving on with
/// every call (so tests of one binary do not pick the same ports).
fn free_base_port(count: u16) -> u16 {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = 20_000 + (std::process::id() % 1_500) as u16 * 20 + call * 5;
    for base in (start..60_000).step_by(usize::from(count) + 1) {
        let all_free = (base..base + count).all(|port| {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}

/// A running `cairn dev`; killed (with its nodes) if still running when dropped.
struct Dev {
    child: Option<Child>,
    _temp: tempfile::TempDir,
    data_dir: PathBuf,
    bootstrap: String,
    node_pids: Vec<u32>,
    /// Each node's HTTP address, from the banner.
    node_http: Vec<String>,
    /// Lines of stdout after the banner.
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl Dev {
    fn start(nodes: u16) -> Dev {
        let temp = tempfile::Builder::new()
            .prefix("cairn-dev-test-")
            .tempdir()
            .expect("a temporary directory");
        let data_dir = temp.path().join("cluster");
        let stderr_path = temp.path().join("dev.stderr");
        let base_port = free_base_port(nodes);
        let mut child = Command::new(cairn_binary())
            .args(["dev", "--nodes", &nodes.to_string(), "--base-port"])
            .arg(base_port.to_string())
            .args(["--kafka-base-port", "0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--node-arg=--preset=test")
            // Free HTTP ports: tests run side by side, and 9644 may be taken.
            .args(["--http-base-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("a stderr file"))
            .spawn()
            .expect("cairn dev starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut dev = Dev {
            child: Some(child),
            _temp: temp,
            data_dir,
            bootstrap: String::new(),
            node_pids: Vec::new(),
            node_http: Vec::new(),
            lines,
            stderr_path,
        };
        dev.wait_banner(nodes);
        dev
    }

    /// Reads the banner: the ready line, then one line per node with its pid.
    fn wait_banner(&mut self, nodes: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.node_pids.len() < usize::from(nodes) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "cairn dev printed no full banner within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                ),
            };
            if let Some(rest) = line.strip_prefix("cairn dev ready ") {
                assert_eq!(
                    rest.split(' ').next(),
                    Some(format!("nodes={nodes}").as_str()),
                    "{line}"
                );
                self.bootstrap = rest
                    .split(' ')
                    .find_map(|field| field.strip_prefix("bootstrap="))
                    .expect("the ready line names the bootstrap list")
                    .to_owned();
            } else if let Some(rest) = line.trim_start().strip_prefix("node ") {
                let pid = rest
                    .split_whitespace()
                    .skip_while(|word| *word != "pid")
                    .nth(1)
                    .and_then(|pid| pid.parse().ok())
                    .unwrap_or_else(|| panic!("no pid in {line:?}"));
                self.node_pids.push(pid);
                let http = rest
                    .split_whitespace()
                    .skip_while(|word| *word != "http")
                    .nth(1)
                    .unwrap_or_else(|| panic!("no http address in {line:?}"));
                self.node_http.push(http.to_owned());
            }
        }
        assert_eq!(
            self.bootstrap.split(',').count(),
            usize::from(nodes),
            "{}",
            self.bootstrap
        );
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Runs the CLI against the cluster with `stdin`; returns (status, stdout, stderr).
    fn cli(&self, args: &[&str], stdin: &str) -> (ExitStatus, String, String) {
        let mut child = Command::new(cairn_binary())
            .args(args)
            .env("CAIRN_BOOTSTRAP", &self.bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI starts");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(stdin.as_bytes())
            .expect("stdin is written");
        let status = wait_bounded(&mut child, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("cairn {args:?} did not finish within 60 s"));
        let mut stdout = String::new();
        let mut stderr = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stdout, stderr)
    }

    fn cli_ok(&self, args: &[&str], stdin: &str) -> String {
        let (status, stdout, stderr) = self.cli(args, stdin);
        assert!(
            status.success(),
            "cairn {args:?} failed ({status}): {stderr}\nnode logs:\n{}",
            self.node_logs()
        );
        stdout
    }

    fn node_logs(&self) -> String {
        let mut logs = String::new();
        for index in 1..=self.node_pids.len() {
            let path = self.data_dir.join(format!("node-{index}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            logs.push_str(&format!("--- node {index}\n"));
            for line in tail.into_iter().rev() {
                logs.push_str(line);
                logs.push('\n');
            }
        }
        logs
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("cairn dev runs").id();
        kill_process(Pid::from_raw(pid as i32).unwrap(), signal).expect("signal delivered");
    }

    /// Waits (bounded) for `cairn dev` to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("cairn dev runs");
        match wait_bounded(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cairn dev did not exit within {STOP_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // A failed test must not leave nodes behind: kill them, then cairn dev.
        for pid in &self.node_pids {
            if let Some(pid) = Pid::from_raw(*pid as i32) {
                if process_exists(pid.as_raw_nonzero().get() as u32) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this id runs (a zombie counts as gone: it runs nothing).
fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().next());
            state != Some("Z")
        }
    }
}

fn wait_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| process_exists(*pid))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates a topic with replication factor `nodes`, produces and consumes through the CLI,
/// checks `cluster status`; with more than one node, SIGKILLs the last node and checks that
/// `cluster status` shows it down and its partitions under-replicated while producing goes on.
/// Then SIGTERM: exit 0 and no node left.
/// `GET /health` on `address`; the status line and body.
fn health(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("the HTTP port accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

fn tour(nodes: u16) {
    let mut dev = Dev::start(nodes);
    // Every node serves HTTP on its own port, as the banner says.
    let distinct: std::collections::BTreeSet<&String> = dev.node_http.iter().collect();
    assert_eq!(distinct.len(), usize::from(nodes), "{:?}", dev.node_http);
    for address in &dev.node_http {
        let response = health(address);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    }
    let rf = nodes.to_string();
    dev.cli_ok(
        &[
            "topic",
            "create",
            "tour",
            "--partitions",
            "3",
            "--replication-factor",
            &rf,
        ],
        "",
    );
    let input: String = (1..=300)
        .map(|index| format!("k{index}:v{index}\n"))
        .collect();
    let (status, _, produced) = dev.cli(&["produce", "tour", "--key-separator", ":"], &input);
    assert!(
        status.success() && produced.contains("produced 300 records"),
        "{produced:?}\n{}",
        dev.node_logs()
    );
    let consumed = dev.cli_ok(
        &[
            "consume",
            "tour",
            "--from-beginning",
            "--max-messages",
            "300",
            "--format",
            "%k:%v",
        ],
        "",
    );
    let mut got: Vec<&str> = consumed.lines().collect();
    got.sort_unstable();
    let mut want: Vec<&str> = input.lines().collect();
    want.sort_unstable();
    assert_eq!(got, want);

    let status = dev.cli_ok(&["cluster", "status"], "");
    assert!(
        status.contains(&format!(
            "nodes: {nodes} ({nodes} up)  partitions: 3  leaderless: 0  under-replicated: 0"
        )),
        "{status}"
    );
    for node in 1..=nodes {
        let row = status
            .lines()
            .find(|line| line.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no row for node {node}:\n{status}"));
        // Every node holds a replica of each of the 3 partitions (replication factor = nodes).
        assert!(row.contains(" up"), "{row}");
        assert_eq!(row.split_whitespace().rev().nth(1), Some("3"), "{row}");
    }

    if nodes > 1 {
        let victim = *dev.node_pids.last().expect("a node");
        kill_process(Pid::from_raw(victim as i32).unwrap(), Signal::KILL).expect("killed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let status = dev.cli_ok(&["cluster", "status", "--problems-only"], "");
            // The down node keeps the address it had, so an operator knows which one it is.
            let down = status.lines().any(|line| {
                line.starts_with(&format!("{nodes} "))
                    && line.contains("127.0.0.1:")
                    && line.contains("DOWN")
            });
            if status.contains("under-replicated: 3") && down {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "node {nodes} never shown down:\n{status}"
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(status.contains("DOWN"), "{status}");
        let (produced, _, stderr) = dev.cli(&["produce", "tour"], "after-kill\n");
        assert!(produced.success(), "{stderr}\n{}", dev.node_logs());
        let reported = format!("cairn dev: node {nodes} (pid {victim}) exited: killed (SIGKILL)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dev.stderr().contains(&reported) {
            assert!(
                Instant::now() < deadline,
                "death not reported:\n{}",
                dev.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    dev.signal(Signal::TERM);
    let exit = dev.wait_exit();
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", dev.stderr());
    let left = wait_gone(&dev.node_pids);
    assert!(left.is_empty(), "nodes still running: {left:?}");
    // The reader thread may still be forwarding the last lines: drain until it ends (stdout
    // closed with the process) or a bound passes, rather than taking only what has arrived.
    let mut rest: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match dev.lines.recv_timeout(left) {
            Ok(line) => rest.push(line),
            Err(_) => break,
        }
    }
    assert!(
        rest.iter()
            .any(|line| line == "cairn dev: all nodes stopped"),
        "{rest:?}"
    );
}

#[test]
fn dev_with_one_node_serves_the_tour_and_stops_on_sigterm() {
    tour(1);
}

#[test]
fn dev_with_three_nodes_serves_the_tour_with_replication_factor_3() {
    tour(3);
}

/// Issue 17: every argument the server refuses exits 2, as clap's own refusals do; a runtime
/// failure exits 1; messages count in the singular and the plural.
#[test]
fn the_cli_refuses_arguments_with_exit_2_and_reads_like_kcat() {
    let dev = Dev::start(1);
    let refused = |args: &[&str], stdin: &str, code: i32, says: &str| {
        let (status, _, stderr) = dev.cli(args, stdin);
        assert_eq!(status.code(), Some(code), "cairn {args:?}: {stderr}");
        assert!(stderr.contains(says), "cairn {args:?}: {stderr}");
    };
    refused(
        &["topic", "create", "a", "--partitions", "0"],
        "",
        2,
        "invalid partition count 0",
    );
    refused(
        &["topic", "create", "bad name", "--partitions", "1"],
        "",
        2,
        "invalid topic name",
    );
    refused(
        &[
            "topic",
            "create",
            "b",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        "",
        2,
        "1 node available",
    );
    let (status, stdout, stderr) = dev.cli(&["topic", "create", "one", "--partitions", "1"], "");
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("with 1 partition\n"), "{stdout}");
    refused(
        &["produce", "one", "--partition", "7"],
        "x\n",
        2,
        "has 1 partition; partition 7 does not exist",
    );
    // A missing topic fails even when there is nothing to send.
    refused(&["produce", "missing"], "", 1, "unknown topic 'missing'");
    refused(
        &[
            "group",
            "reset-offsets",
            "nobody",
            "--topic",
            "one",
            "--to-earliest",
            "--execute",
        ],
        "",
        1,
        "nobody",
    );
    let (status, _, stderr) = dev.cli(&["produce", "one"], "x\n");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("produced 1 record to 'one'"), "{stderr}");
    // kcat's short flags: -b bootstrap, -p partition, -o offset, -c count, -f format.
    let (status, printed, stderr) = dev.cli(
        &[
            "consume",
            "one",
            "-b",
            &dev.bootstrap,
            "-p",
            "0",
            "-o",
            "0",
            "-c",
            "1",
            "-f",
            "%p:%o:%v",
        ],
        "",
    );
    assert!(status.success(), "{stderr}");
    // Offset 0 holds the first leader's epoch marker, which consumers skip.
    assert_eq!(printed, "0:1:x\n");
    // Headers in (-H, repeatable) and out (%h).
    let (status, _, stderr) = dev.cli(
        &["produce", "one", "-H", "trace=t1", "-H", "source=cli"],
        "with-headers\n",
    );
    assert!(status.success(), "{stderr}");
    let (status, printed, stderr) =
        dev.cli(&["consume", "one", "-o", "2", "-c", "1", "-f", "%h %v"], "");
    assert!(status.success(), "{stderr}");
    assert_eq!(printed, "trace=t1,source=cli with-headers\n");
    refused(
        &["produce", "one", "-H", "novalue"],
        "",
        2,
        "expected KEY=VALUE",
    );
    // -e: exit at the end of what was there, also when that is only the leader's marker.
    let (status, printed, stderr) = dev.cli(&["consume", "one", "--from-beginning", "-e"], "");
    assert!(status.success(), "{stderr}");
    assert_eq!(printed, "x\nwith-headers\n");
    let (status, _, stderr) = dev.cli(&["topic", "create", "empty", "-p", "2"], "");
    assert!(status.success(), "{stderr}");
    let (status, printed, stderr) = dev.cli(&["consume", "empty", "--from-beginning", "-e"], "");
    assert!(status.success(), "{stderr}");
    assert_eq!(printed, "");
    // Internal topics only with --internal.
    let (_, listed, _) = dev.cli(&["topic", "list"], "");
    assert_eq!(listed, "empty\none\n");
    let (_, listed, _) = dev.cli(&["topic", "list", "--internal"], "");
    assert!(listed.lines().any(|name| name == "__meta"), "{listed}");
}

/// `cairn completions bash` prints a script bash accepts, covering every subcommand's flags.
#[test]
fn bash_completions_load_and_know_the_flags() {
    let script = Command::new(cairn_binary())
        .args(["completions", "bash"])
        .output()
        .expect("cairn runs");
    assert!(script.status.success());
    let script = String::from_utf8(script.stdout).expect("text");
    for word in [
        "produce",
        "consume",
        "--exit-at-end",
        "--bootstrap",
        "reset-offsets",
    ] {
        assert!(script.contains(word), "{word} missing from the completions");
    }
    let loaded = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p cairn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut bash| {
            bash.stdin
                .take()
                .expect("piped")
                .write_all(script.as_bytes())?;
            bash.wait_with_output()
        })
        .expect("bash runs");
    assert!(loaded.status.success());
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("_cairn"));
}

#[test]
fn dev_says_so_when_a_node_dies() {
    let mut dev = Dev::start(1);
    let node = dev.node_pids[0];
    kill_process(Pid::from_raw(node as i32).unwrap(), Signal::KILL).expect("the node is killed");
    // With its only node gone, cairn dev has nothing left to run and exits 1.
    let exit = dev.wait_exit();
    assert_eq!(exit.code(), Some(1));
    let stderr = dev.stderr();
    assert!(
        stderr.contains(&format!(
            "cairn dev: node 1 (pid {node}) exited: killed (SIGKILL); its log: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("every node has exited"), "{stderr}");
    assert!(Path::new(&dev.data_dir.join("node-1.log")).exists());
}

/// `cairn dev stop|start|restart N` from another terminal: one node stops (gracefully or as a
/// crash) while the others keep serving, starts again on its data, restarts; orders that do
/// not fit (no such node, already running, not running) exit 2 and change nothing; a second
/// `cairn dev` on the same directory is refused before it starts anything.
#[test]
fn one_node_stops_starts_and_restarts_from_another_terminal() {
    let mut dev = Dev::start(3);
    let dir = dev.data_dir.to_string_lossy().into_owned();
    let order = |dev: &Dev, args: &[&str]| {
        let mut full = vec!["dev"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--data-dir", &dir]);
        dev.cli(&full, "")
    };
    let new_pid = |stdout: &str| -> u32 {
        stdout
            .split("pid ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
    };

    // A second supervisor on the same directory would start a second set of nodes on it.
    let second = Command::new(cairn_binary())
        .args(["dev", "--nodes", "3", "--base-port"])
        .arg(free_base_port(3).to_string())
        .args([
            "--kafka-base-port",
            "0",
            "--http-base-port",
            "0",
            "--data-dir",
            &dir,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("cairn dev runs");
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another cairn dev is running on"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Orders that do not fit: exit 2, nothing changes.
    let (status, _, stderr) = order(&dev, &["stop", "9"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("there is no node 9"), "{stderr}");
    let (status, _, stderr) = order(&dev, &["start", "2"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("node 2 is already running"), "{stderr}");
    assert!(dev.node_pids.iter().all(|pid| process_exists(*pid)));

    dev.cli_ok(
        &[
            "topic",
            "create",
            "ops",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
        "",
    );
    dev.cli_ok(&["produce", "ops"], "one\ntwo\n");

    // A crash of node 3: the supervisor does it, and does not report it as a death.
    let victim = dev.node_pids[2];
    let (status, stdout, stderr) = order(&dev, &["stop", "3", "--kill"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("node 3 (pid {victim}) stopped: killed (SIGKILL)")),
        "{stdout}"
    );
    assert!(wait_gone(&[victim]).is_empty(), "node 3 still runs");
    let (status, _, stderr) = order(&dev, &["stop", "3"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("node 3 is not running"), "{stderr}");
    dev.cli_ok(&["produce", "ops"], "three\n");

    // Back on its data: it catches up and the cluster serves every record.
    let (status, stdout, stderr) = order(&dev, &["start", "3"]);
    assert!(status.success(), "{stderr}\n{}", dev.node_logs());
    assert!(stdout.contains("node 3 started: pid "), "{stdout}");
    let started = new_pid(&stdout);
    dev.node_pids.push(started);
    assert!(process_exists(started));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = dev.cli_ok(&["cluster", "status"], "");
        if status.contains("under-replicated: 0") && !status.contains("DOWN") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never came back:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A graceful restart of node 1.
    let before = dev.node_pids[0];
    let (status, stdout, stderr) = order(&dev, &["restart", "1"]);
    assert!(status.success(), "{stderr}\n{}", dev.node_logs());
    let restarted = new_pid(&stdout);
    assert_ne!(restarted, before, "{stdout}");
    dev.node_pids.push(restarted);
    assert!(!process_exists(before), "the old node 1 is gone");
    let consumed = dev.cli_ok(&["consume", "ops", "-o", "beginning", "-e"], "");
    let mut values: Vec<&str> = consumed.lines().collect();
    values.sort_unstable();
    assert_eq!(values, ["one", "three", "two"], "{consumed}");

    // Ordered stops are not deaths.
    assert!(!dev.stderr().contains("exited:"), "{}", dev.stderr());
    dev.signal(Signal::TERM);
    let exit = dev.wait_exit();
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", dev.stderr());
    let left = wait_gone(&dev.node_pids);
    assert!(left.is_empty(), "nodes still running: {left:?}");
    assert!(
        !dev.data_dir.join("cairn-dev.sock").exists(),
        "the control socket is removed on exit"
    );
}

#[test]
fn dev_refuses_a_data_directory_made_for_another_node_count() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(temp.path().join("cairn-dev-nodes"), "3\n").unwrap();
    let output = Command::new(cairn_binary())
        .args(["dev", "--nodes", "1", "--base-port"])
        .arg(free_base_port(1).to_string())
        .args(["--kafka-base-port", "0"])
        .arg("--data-dir")
        .arg(temp.path())
        .stdin(Stdio::null())
        .output()
        .expect("cairn dev runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds a 3-node cluster; run `cairn dev --nodes 3` on it"),
        "{stderr}"
    );
    // Nothing was started: no node directory was created.
    assert!(!temp.path().join("node-1").exists());
}

/// `consume` starts where kcat would (`-o beginning|end|N|-N|s@MS`, `--from-time`), says when
/// an offset is outside the log instead of printing nothing, and prints JSON lines (`-J`) and
/// kcat's format tokens.
#[test]
fn consume_starts_where_kcat_would_and_prints_json_lines() {
    let dev = Dev::start(1);
    let ok = |args: &[&str], stdin: &str| dev.cli_ok(args, stdin);
    ok(&["topic", "create", "t", "-p", "1"], "");
    // Offset 0 is the first leader's epoch marker: a..e are offsets 1 to 5.
    ok(&["produce", "t", "-K", ":"], "k1:a\nb\nc\nd\ne\n");
    assert_eq!(ok(&["consume", "t", "-o", "-2", "-e"], ""), "d\ne\n");
    assert_eq!(
        ok(&["consume", "t", "-o", "-99", "-e", "-c", "1"], ""),
        "a\n"
    );
    assert_eq!(ok(&["consume", "t", "-o", "end", "-e"], ""), "");
    assert_eq!(
        ok(
            &[
                "consume",
                "t",
                "-o",
                "beginning",
                "-c",
                "2",
                "-f",
                "%t %p %o %s %K %S %k"
            ],
            ""
        ),
        "t 0 1 a 2 1 k1\nt 0 2 b -1 1 \n"
    );
    // An offset outside the log: refused with the range, not a silent reset.
    let (status, printed, stderr) = dev.cli(&["consume", "t", "-o", "99", "-e"], "");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(printed, "");
    assert!(
        stderr.contains("offset 99 is out of range for t/0: it holds offsets 0 to 5"),
        "{stderr}"
    );
    let (status, _, stderr) = dev.cli(&["consume", "t", "-o", "later"], "");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not an offset"), "{stderr}");

    // JSON lines: one object per record, readable and ms timestamps.
    let json = ok(&["consume", "t", "-o", "1", "-c", "1", "-J"], "");
    let record: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(record["topic"], "t");
    assert_eq!(record["offset"], 1);
    assert_eq!(record["key"], "k1");
    assert_eq!(record["value"], "a");
    let timestamp = record["timestamp"].as_str().unwrap();
    assert!(
        timestamp.ends_with('Z') && timestamp.contains('T'),
        "{timestamp}"
    );

    // By time: a record written later is found by its own timestamp (s@MS, and RFC 3339).
    std::thread::sleep(Duration::from_millis(20));
    ok(&["produce", "t"], "later\n");
    let stamped = ok(&["consume", "t", "-o", "6", "-c", "1", "-f", "%T %d"], "");
    let (ms, readable) = stamped.trim_end().split_once(' ').unwrap();
    assert_eq!(
        ok(&["consume", "t", "-o", &format!("s@{ms}"), "-e"], ""),
        "later\n"
    );
    assert_eq!(
        ok(&["consume", "t", "--from-time", readable, "-e"], ""),
        "later\n"
    );
    assert_eq!(
        ok(&["consume", "t", "--from-time", "1h", "-e"], "")
            .lines()
            .count(),
        6
    );
    assert_eq!(
        ok(
            &["consume", "t", "--from-time", "2999-01-01T00:00:00Z", "-e"],
            ""
        ),
        ""
    );
}

/// `produce` reads records from a file (`-l`), cut at a delimiter (`-D`) so values may hold
/// newlines, and stamps them with a given timestamp (`--timestamp`).
#[test]
fn produce_reads_files_cut_at_a_delimiter_with_given_timestamps() {
    let dev = Dev::start(1);
    let ok = |args: &[&str], stdin: &str| -> (String, String) {
        let (status, stdout, stderr) = dev.cli(args, stdin);
        assert!(status.success(), "cairn {args:?}: {stderr}");
        (stdout, stderr)
    };
    ok(&["topic", "create", "docs", "-p", "1"], "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records");
    std::fs::write(&file, "k1:first\nline\0k2:second\0third").unwrap();
    let path = file.to_str().unwrap();
    let (_, said) = ok(
        &[
            "produce",
            "docs",
            "-l",
            path,
            "-D",
            "\\0",
            "-K",
            ":",
            "--timestamp",
            "2023-11-14T22:13:20.123Z",
        ],
        "",
    );
    assert!(said.contains("produced 3 records"), "{said}");
    let (printed, _) = ok(&["consume", "docs", "-o", "beginning", "-e", "-J"], "");
    let records: Vec<serde_json::Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let values: Vec<&str> = records
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, vec!["first\nline", "second", "third"]);
    assert_eq!(records[0]["key"], "k1");
    assert_eq!(records[2]["key"], serde_json::Value::Null);
    assert!(records
        .iter()
        .all(|r| r["timestamp_ms"] == 1_700_000_000_123i64));
    // A missing file is an argument error; nothing is sent.
    let (status, _, stderr) = dev.cli(&["produce", "docs", "-l", "/nonexistent/input"], "");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/input"), "{stderr}");
}

/// `group reset-offsets` as Kafka's tool: a dry run unless `--execute`, and targets by time
/// (`--to-datetime`) and relative to the committed offsets (`--shift-by`).
#[test]
fn reset_offsets_plans_by_default_and_moves_by_time_or_shift() {
    let dev = Dev::start(1);
    let ok = |args: &[&str], stdin: &str| dev.cli_ok(args, stdin);
    let committed = || -> String {
        let described = ok(&["group", "describe", "g"], "");
        let row = described
            .lines()
            .find(|line| line.starts_with("t "))
            .unwrap_or_else(|| panic!("no partition row:\n{described}"))
            .to_owned();
        row.split_whitespace().nth(3).unwrap().to_owned()
    };
    ok(&["topic", "create", "t", "-p", "1"], "");
    ok(&["produce", "t"], "a\nb\nc\nd\n");
    // Offsets 1 to 4 (0 is the epoch marker); a member reads all four and commits 5.
    let read = ok(
        &["consume", "t", "-G", "g", "--from-beginning", "-c", "4"],
        "",
    );
    assert_eq!(read, "a\nb\nc\nd\n");
    assert_eq!(committed(), "5");

    let planned = ok(
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--shift-by",
            "-2",
        ],
        "",
    );
    assert!(
        planned.contains("g      t      0          5        3"),
        "{planned}"
    );
    assert!(
        planned.contains("dry run: nothing was committed"),
        "{planned}"
    );
    assert_eq!(committed(), "5", "a dry run commits nothing");
    ok(
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--shift-by",
            "-2",
            "--execute",
        ],
        "",
    );
    assert_eq!(committed(), "3");
    assert_eq!(ok(&["consume", "t", "-G", "g", "-c", "2"], ""), "c\nd\n");

    // By time: a record written later is where a reset to its timestamp lands.
    std::thread::sleep(Duration::from_millis(20));
    ok(&["produce", "t"], "later\n");
    let stamped = ok(&["consume", "t", "-o", "5", "-c", "1", "-f", "%d"], "");
    ok(
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            stamped.trim_end(),
            "--execute",
        ],
        "",
    );
    assert_eq!(committed(), "5");
    assert_eq!(ok(&["consume", "t", "-G", "g", "-c", "1"], ""), "later\n");

    // --output json: every command's result as one JSON document, for scripts.
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let printed = ok(&all, "");
        serde_json::from_str(&printed)
            .unwrap_or_else(|error| panic!("{args:?}: {error}\n{printed}"))
    };
    let group = json(&["group", "describe", "g"]);
    assert_eq!(group["partitions"][0]["committed"], 6);
    let plan = json(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--to-earliest",
    ]);
    assert_eq!(plan["committed"], false);
    assert_eq!(plan["partitions"][0]["new"], 0);
    assert_eq!(
        json(&["topic", "describe", "t"])["partitions"][0]["high_watermark"],
        6
    );
    assert_eq!(json(&["topic", "list"])[0]["name"], "t");
    assert_eq!(json(&["cluster", "status"])["nodes"][0]["node_id"], 1);
    assert_eq!(json(&["group", "list"])[0]["group_id"], "g");
    let produced = ok(&["produce", "t", "--output", "json"], "x\ny\n");
    let produced: serde_json::Value = serde_json::from_str(&produced).unwrap();
    assert_eq!(produced["acknowledged"], 2);
}

/// `topic alter` adds partitions and sets or removes configs; `topic describe --configs`
/// shows them with their source; refusals exit 2 and change nothing.
#[test]
fn topic_alter_adds_partitions_and_changes_configs() {
    let dev = Dev::start(1);
    let ok = |args: &[&str]| dev.cli_ok(args, "");
    let refused = |args: &[&str], says: &str| {
        let (status, _, stderr) = dev.cli(args, "");
        assert_eq!(status.code(), Some(2), "cairn {args:?}: {stderr}");
        assert!(stderr.contains(says), "cairn {args:?}: {stderr}");
    };
    ok(&["topic", "create", "t", "-p", "1"]);
    assert_eq!(
        ok(&[
            "topic",
            "alter",
            "t",
            "-p",
            "3",
            "--config",
            "retention.ms=60000"
        ]),
        "altered topic 't': 3 partitions\n"
    );
    let configs = ok(&["topic", "describe", "t", "--configs"]);
    assert!(configs.contains("retention.ms          60000"), "{configs}");
    assert!(configs.contains("retention.bytes       -"), "{configs}");
    assert!(
        configs.contains("cleanup.policy        delete               default"),
        "{configs}"
    );
    // The new partition takes records.
    let (status, _, stderr) = dev.cli(&["produce", "t", "-p", "2"], "new\n");
    assert!(status.success(), "{stderr}");
    assert_eq!(
        ok(&["consume", "t", "-p", "2", "-o", "beginning", "-e"]),
        "new\n"
    );

    refused(&["topic", "alter", "t", "-p", "2"], "never removed");
    refused(
        &[
            "topic",
            "alter",
            "t",
            "--config",
            "cleanup.policy=compacted",
        ],
        "cleanup.policy must be delete, compact or compact,delete",
    );
    refused(
        &[
            "topic",
            "alter",
            "t",
            "--config",
            "min.compaction.lag.ms=-1",
        ],
        "min.compaction.lag.ms must be a whole number of 0 or more",
    );
    refused(
        &[
            "topic",
            "create",
            "c",
            "-p",
            "1",
            "--config",
            "cleanup.policy=tidy",
        ],
        "cleanup.policy must be delete, compact or compact,delete",
    );
    ok(&[
        "topic",
        "create",
        "c",
        "-p",
        "1",
        "--config",
        "cleanup.policy=compact",
        "--config",
        "min.compaction.lag.ms=0",
    ]);
    let compacted = ok(&["topic", "describe", "c", "--configs"]);
    assert!(
        compacted.contains("cleanup.policy        compact              topic"),
        "{compacted}"
    );
    assert!(
        compacted.contains("min.compaction.lag.ms 0                    topic"),
        "{compacted}"
    );
    refused(
        &["topic", "alter", "t", "--config", "retention.ms=soon"],
        "whole number above 0",
    );
    refused(&["topic", "alter", "t"], "nothing to alter");
    let described = ok(&["topic", "describe", "t"]);
    assert!(described.contains("partitions=3"), "{described}");

    ok(&["topic", "alter", "t", "--delete-config", "retention.ms"]);
    let configs = ok(&["topic", "describe", "t", "--configs"]);
    assert!(configs.contains("retention.ms          -"), "{configs}");
}
