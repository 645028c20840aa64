//! The HTTP listener of real node processes (issue 17): `/metrics` moves with what the CLI
//! produces and consumes, `/health` and `/ready` answer, a follower killed in a 3-node cluster
//! shows as lag and under-replication, and malformed or unknown requests get a 4xx without
//! hurting the node. Requests go over plain sockets, byte for byte.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::{run_node_expecting_exit, TestNode};

/// How long an HTTP read may block before the test fails.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// [`support::http_raw`] with this file's read bound.
fn http_raw(address: SocketAddr, request: &[u8]) -> (u16, String) {
    support::http_raw(address, request, HTTP_READ_TIMEOUT)
}

fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n");
    http_raw(address, request.as_bytes())
}

/// `/metrics` as a map from `name{labels}` to value; checks the exposition ends with `# EOF`.
fn scrape(node: &TestNode) -> HashMap<String, f64> {
    let (status, body) = http(node.http_address(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("a sample line");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    *metrics
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {metrics:?}"))
}

/// Runs the CLI against `bootstrap`, `stdin` fed in; returns (exit code, stdout, stderr).
fn cli(bootstrap: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(support::cairn_binary())
        .args(args)
        .env("CAIRN_BOOTSTRAP", bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => {
            let output = output.expect("cairn runs");
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("cairn {args:?} did not finish within 60 s");
        }
    }
}

fn partition_labels(topic: &str, partition: u32) -> String {
    format!("{{topic=\"{topic}\",partition=\"{partition}\"}}")
}

#[test]
fn metrics_follow_what_the_cli_produces_and_consumes() {
    let node = TestNode::start();
    let bootstrap = node.address().to_string();
    assert_eq!(
        http(node.http_address(), "GET", "/health"),
        (200, "ok\n".to_string())
    );
    // The ready line comes after metadata recovery, and nothing is damaged.
    assert_eq!(
        http(node.http_address(), "GET", "/ready"),
        (200, "ready\n".to_string())
    );
    let before = scrape(&node);
    assert_eq!(value(&before, "cairn_node_ready"), 1.0);

    let (code, _, stderr) = cli(
        &bootstrap,
        &["topic", "create", "metered", "--partitions", "1"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let input: String = (0..250).map(|i| format!("key-{i}:value-{i}\n")).collect();
    let (code, _, stderr) = cli(
        &bootstrap,
        &["produce", "metered", "--key-separator", ":"],
        &input,
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = cli(
        &bootstrap,
        &[
            "consume",
            "metered",
            "--from-beginning",
            "--max-messages",
            "250",
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 250);

    // A request the node refuses, counted by the error's name.
    let mut wire = node.wire();
    let refused = wire
        .create_topic("metered", 1)
        .expect_err("the topic exists already");
    let rejected = format!(
        "cairn_rejected_requests_total{{error=\"{}\"}}",
        refused.kind()
    );
    // A fetch past the log end is refused for that partition: counted one per partition.
    let past_end = wire
        .fetch("metered", 0, cairn_protocol::Offset(10_000), 0)
        .expect_err("offset 10000 is past the log end");
    let past_end = format!(
        "cairn_rejected_requests_total{{error=\"{}\"}}",
        past_end.kind()
    );

    let after = scrape(&node);
    let labels = partition_labels("metered", 0);
    // The leader's epoch marker sits at offset 0: 250 records end the log at 251, all
    // committed (acks=all was acknowledged).
    assert_eq!(
        value(&after, &format!("cairn_partition_log_end_offset{labels}")),
        251.0
    );
    assert_eq!(
        value(&after, &format!("cairn_partition_high_watermark{labels}")),
        251.0
    );
    assert_eq!(
        value(&after, &format!("cairn_partition_log_start_offset{labels}")),
        0.0
    );
    assert_eq!(
        value(&after, &format!("cairn_partition_leader{labels}")),
        1.0
    );
    assert_eq!(
        value(&after, &format!("cairn_partition_under_replicated{labels}")),
        0.0
    );
    assert_eq!(
        value(&after, &format!("cairn_partition_damaged{labels}")),
        0.0
    );
    let grew = |name: &str| value(&after, name) > before.get(name).copied().unwrap_or(0.0);
    for name in [
        "cairn_produce_requests_total",
        "cairn_produce_bytes_total",
        "cairn_produce_latency_seconds_count",
        "cairn_fetch_requests_total",
        "cairn_fetch_bytes_total",
        "cairn_fetch_latency_seconds_count",
        "cairn_flush_latency_seconds_count",
        "cairn_flushes_total",
        "cairn_connections_accepted_total",
        "cairn_leader_changes_total",
    ] {
        assert!(grew(name), "{name} did not grow: {after:?}");
    }
    assert!(value(&after, "cairn_produce_bytes_total") > 250.0 * 10.0);
    assert_eq!(value(&after, &rejected), 1.0, "{after:?}");
    assert_eq!(value(&after, &past_end), 1.0, "{after:?}");
    // This scrape's own connection is not a client connection; the wire client's is.
    assert!(value(&after, "cairn_connections_open") >= 1.0);
    assert_eq!(value(&after, "cairn_metadata_lag_offsets"), 0.0);
    for name in [
        "cairn_log_warnings_floodable_total",
        "cairn_log_warnings_suppressed_total",
        "cairn_log_lines_dropped_total",
        "cairn_log_peer_refusals_suppressed_total",
    ] {
        assert!(after.contains_key(name), "no {name}");
    }
    // The storage engine's housekeeping is there; the test preset flushes, so nothing was
    // synced.
    for name in [
        "cairn_storage_cleaning_backlog_segments",
        "cairn_storage_pages_cleaned_by_writes_total",
        "cairn_storage_pages_cleaned_in_background_total",
    ] {
        assert!(after.contains_key(name), "no {name}");
    }
    for name in [
        "cairn_storage_log_syncs_total",
        "cairn_storage_blob_syncs_total",
        "cairn_storage_directory_syncs_total",
    ] {
        assert_eq!(value(&after, name), 0.0, "{name} in flush mode");
    }
    // HEAD answers like GET, without a body.
    let (status, body) = http(node.http_address(), "HEAD", "/metrics");
    assert_eq!((status, body.as_str()), (200, ""));
}

/// In `fsync` mode the syncs behind each acknowledgement show on `/metrics`.
#[test]
fn a_node_in_fsync_mode_counts_its_syncs() {
    let node = TestNode::start_with(&["--set", "storage.durability=fsync"]);
    let bootstrap = node.address().to_string();
    let before = value(&scrape(&node), "cairn_storage_log_syncs_total");
    let (code, _, stderr) = cli(
        &bootstrap,
        &["topic", "create", "synced", "--partitions", "1"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let input: String = (0..20).map(|i| format!("record-{i}\n")).collect();
    let (code, _, stderr) = cli(&bootstrap, &["produce", "synced"], &input);
    assert_eq!(code, 0, "{stderr}");
    let after = value(&scrape(&node), "cairn_storage_log_syncs_total");
    assert!(after > before, "log syncs {before} -> {after}");
}

#[test]
fn malformed_and_unknown_http_requests_get_a_4xx_and_the_node_serves_on() {
    let node = TestNode::start();
    let http_address = node.http_address();
    assert_eq!(http(http_address, "GET", "/nope").0, 404);
    assert_eq!(http(http_address, "GET", "/metrics/extra").0, 404);
    assert_eq!(http(http_address, "POST", "/metrics").0, 405);
    assert_eq!(http(http_address, "DELETE", "/ready").0, 405);
    assert_eq!(http_raw(http_address, b"NONSENSE\r\n\r\n").0, 400);
    assert_eq!(http_raw(http_address, b"\x00\x01\x02\x03\r\n\r\n").0, 400);
    // Headers past the 16 KiB limit.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: cairn\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(http_raw(http_address, huge.as_bytes()).0, 431);
    // A body on a GET is never read; the answer comes all the same.
    let with_body = "GET /health HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\
                     Content-Length: 5\r\n\r\nhello";
    assert_eq!(http_raw(http_address, with_body.as_bytes()).0, 200);

    // The test preset allows 8 HTTP connections: 8 silent ones take every slot, and the
    // ninth is closed unanswered.
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(http_address).expect("connect"))
        .collect();
    // Each is admitted once the accept loop has taken it: one byte each proves it.
    for mut stream in &silent {
        stream.write_all(b"G").unwrap();
    }
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused.is_none() && Instant::now() < deadline {
        // Until the loop has admitted all eight, a ninth may still get a slot and an answer.
        let (status, _) = http(http_address, "GET", "/health");
        if status == 0 {
            refused = Some(status);
        }
    }
    assert_eq!(refused, Some(0), "a ninth connection was always answered");
    drop(silent);
    // The slots come back as the server sees the connections close.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(http_address, "GET", "/health");
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HTTP slots never came back: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The broker never noticed.
    let mut wire = node.wire();
    wire.create_topic("still-serving", 1)
        .expect("the client listener serves");
    let metrics = scrape(&node);
    assert_eq!(value(&metrics, "cairn_node_ready"), 1.0);
}

#[test]
fn http_listen_is_validated_can_be_turned_off_and_a_taken_port_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = [
        "--node-id",
        "1",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
    ];

    let mut args = base.to_vec();
    args.extend(["--http-listen", "localhost:9644"]);
    let (status, stderr) = run_node_expecting_exit(&args);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("http.listen is IP:PORT or none"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut args = base.to_vec();
    args.extend(["--http-listen", &address]);
    let (status, stderr) = run_node_expecting_exit(&args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");

    // `none`: no HTTP listener, and the ready line says so.
    let node = TestNode::start_with(&["--http-listen", "none"]);
    let mut wire = node.wire();
    wire.create_topic("no-http", 1).expect("the node serves");
}

#[test]
fn a_killed_follower_shows_as_lag_and_under_replication_on_the_leader() {
    let mut cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let (code, _, stderr) = cli(
        &bootstrap,
        &[
            "topic",
            "create",
            "watched",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let labels = partition_labels("watched", 0);
    let leader_metric = format!("cairn_partition_leader{labels}");
    // The leader is elected a moment after the topic is created: wait (bounded) for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let leader = (1..=3).find(|&id| {
            scrape(cluster.node(id))
                .get(&leader_metric)
                .is_some_and(|led| *led == 1.0)
        });
        if let Some(leader) = leader {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader for watched/0");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (code, _, stderr) = cli(&bootstrap, &["produce", "watched"], "one\ntwo\n");
    assert_eq!(code, 0, "{stderr}");

    let victim = (1..=3).find(|&id| id != leader).unwrap();
    cluster.node_mut(victim).kill();
    let alive: Vec<String> = (1..=3)
        .filter(|&id| id != victim)
        .map(|id| cluster.node(id).address().to_string())
        .collect();
    let input: String = (0..100).map(|i| format!("after-{i}\n")).collect();
    let (code, _, stderr) = cli(&alive.join(","), &["produce", "watched"], &input);
    assert_eq!(code, 0, "a majority still commits: {stderr}");

    // The leader's view: the dead follower's log stopped growing, and once gossip no longer
    // hears it, the partition is under-replicated (bounded wait: gossip takes a moment).
    let lag_metric = format!(
        "cairn_partition_follower_lag_offsets{{topic=\"watched\",partition=\"0\",follower=\"{victim}\"}}"
    );
    let under_metric = format!("cairn_partition_under_replicated{labels}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = scrape(cluster.node(leader));
        if metrics.get(&under_metric) == Some(&1.0) {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "never under-replicated: {metrics:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(value(&metrics, &lag_metric) >= 100.0, "{metrics:?}");
    let survivor = (1..=3).find(|&id| id != victim && id != leader).unwrap();
    let survivor_lag = format!(
        "cairn_partition_follower_lag_offsets{{topic=\"watched\",partition=\"0\",follower=\"{survivor}\"}}"
    );
    assert!(value(&metrics, &survivor_lag) < 100.0, "{metrics:?}");
    // Only the leader reports lag and under-replication.
    let follower_metrics = scrape(cluster.node(survivor));
    assert_eq!(value(&follower_metrics, &leader_metric), 0.0);
    assert!(!follower_metrics.contains_key(&under_metric));
    assert!(!follower_metrics.contains_key(&lag_metric));
}

#[test]
fn a_silent_http_connection_is_closed_and_gives_its_slot_back() {
    let node = TestNode::start();
    let mut silent = TcpStream::connect(node.http_address()).expect("connect");
    silent.set_read_timeout(Some(HTTP_READ_TIMEOUT)).unwrap();
    // Half a request head, then nothing: the header read timeout (10 s) closes it, unanswered
    // or with a 408; the read ends either way, long before the test's own read timeout.
    silent.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let mut response = Vec::new();
    let read = silent.read_to_end(&mut response);
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset),
        "the server did not close the connection: {read:?}"
    );
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
    assert_eq!(http(node.http_address(), "GET", "/health").0, 200);
}
