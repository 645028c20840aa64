//! Python Kafka clients against real nodes, unchanged: confluent-kafka (librdkafka 2.x) and
//! kafka-python (3.x). Each test starts real `cairn node` processes and runs one script of
//! `node/tests/kafka_python/`, which asserts and exits nonzero on the first failure; the
//! test passes only if the script exits 0 within [`SCRIPT_TIMEOUT`].
//!
//! - `admin.py`: the AdminClient (create, list, describe topics and configs, alter configs,
//!   add partitions, describe the cluster, delete) and its refusals of bad input.
//! - `idempotent_failover.py`: an idempotent producer (acks=all) while the leader of a
//!   partition is killed with SIGKILL: every delivered record is read exactly once.
//! - `kafka_python_round_trip.py`: kafka-python detects a modern broker, produces keyed
//!   records with headers idempotently and reads them back with an assign-mode consumer.
//!
//! Prerequisites: `python3` with `confluent-kafka` and `kafka-python` (CI's .ci/run installs
//! the pinned wheels; `pip install confluent-kafka==2.16.1 kafka-python==3.0.12`). Without
//! them these tests fail and say so. `PYTHON` names another interpreter.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::cluster::TestCluster;
use support::{cairn_binary, TestNode};

/// How long one script may run before the test fails (each bounds its own waits below this).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka_python")
        .join(name)
}

/// Fails with an install hint unless `module` imports.
fn require(module: &str, package: &str) {
    let imported = Command::new(python())
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        imported.is_ok_and(|status| status.success()),
        "{} cannot import {module}: these tests drive the real Python client \
         (pip install {package}; CI's .ci/run installs it), or set PYTHON=/path/to/python3",
        python()
    );
}

/// Runs `name` with `args`, bounded by [`SCRIPT_TIMEOUT`]; fails with its output and the
/// nodes' logs unless it exits 0.
fn run_script(name: &str, args: &[&str], logs: impl FnOnce() -> String) -> Output {
    let child = Command::new(python())
        .arg("-u")
        .arg(script(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    let timed_out = finished.recv_timeout(SCRIPT_TIMEOUT).is_err();
    if timed_out {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    let output = waiter.join().expect("the waiter").expect("python ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !timed_out && output.status.success(),
        "{name} {} ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- nodes\n{}",
        if timed_out {
            format!("did not finish within {SCRIPT_TIMEOUT:?}")
        } else {
            "failed".to_string()
        },
        output.status,
        logs()
    );
    println!("{stdout}");
    output
}

fn create_topic(bootstrap: &str, topic: &str, partitions: u32, replication_factor: u32) {
    let status = Command::new(cairn_binary())
        .args(["topic", "create", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--replication-factor", &replication_factor.to_string()])
        .args(["--bootstrap", bootstrap])
        .stdout(Stdio::null())
        .status()
        .expect("the cairn CLI runs");
    assert!(status.success(), "topic create {topic}");
}

fn kafka_bootstrap(cluster: &TestCluster) -> String {
    cluster
        .nodes
        .iter()
        .map(|node| node.kafka_address().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn confluent_kafka_admin_client_creates_describes_alters_and_deletes() {
    require("confluent_kafka", "confluent-kafka==2.16.1");
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = kafka_bootstrap(&cluster);
    run_script("admin.py", &[&bootstrap, "3"], || cluster.logs());
}

#[test]
fn confluent_kafka_idempotent_producer_survives_a_killed_leader_exactly_once() {
    require("confluent_kafka", "confluent-kafka==2.16.1");
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = kafka_bootstrap(&cluster);
    create_topic(&cluster.bootstrap(), "py-failover", 3, 3);
    let pids = cluster
        .nodes
        .iter()
        .map(|node| format!("{}={}", node.node_id, node.pid()))
        .collect::<Vec<_>>()
        .join(",");
    run_script(
        "idempotent_failover.py",
        &[&bootstrap, "py-failover", &pids],
        || cluster.logs(),
    );
}

#[test]
fn kafka_python_detects_a_modern_broker_and_round_trips_keys_and_headers() {
    require("kafka", "kafka-python==3.0.12");
    let node = TestNode::start();
    let bootstrap = node.kafka_address().to_string();
    create_topic(&node.address().to_string(), "py-round-trip", 3, 1);
    run_script(
        "kafka_python_round_trip.py",
        &[&bootstrap, "py-round-trip", "3"],
        || node.logs(),
    );
}
