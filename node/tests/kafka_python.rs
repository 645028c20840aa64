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
use std::process::{Output, Stdio};
use std::time::Duration;
use support::cluster::TestCluster;
use support::{create_topic_cli, TestNode};

/// How long one script may run before the test fails (each bounds its own waits below this).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka_python")
        .join(name)
}

/// Fails with an install hint unless `module` imports.
fn require(module: &str, package: &str) {
    support::require_python_module(
        module,
        &format!(
            "these tests drive the real Python client (pip install {package}; CI's .ci/run \
             installs it)"
        ),
    );
}

/// Runs `name` with `args`, bounded by [`SCRIPT_TIMEOUT`]; fails with its output and the
/// nodes' logs unless it exits 0.
fn run_script(name: &str, args: &[&str], logs: impl FnOnce() -> String) -> Output {
    let mut command = support::foreign_client(support::python());
    command.arg("-u").arg(script(name)).args(args);
    support::run_client_scenario(name, command, SCRIPT_TIMEOUT, logs)
}

#[test]
fn confluent_kafka_admin_client_creates_describes_alters_and_deletes() {
    require("confluent_kafka", "confluent-kafka==2.16.1");
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    run_script("admin.py", &[&bootstrap, "3"], || cluster.logs());
}

#[test]
fn confluent_kafka_idempotent_producer_survives_a_killed_leader_exactly_once() {
    require("confluent_kafka", "confluent-kafka==2.16.1");
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    create_topic_cli(&cluster.bootstrap(), "py-failover", 3, 3);
    let pids = cluster.node_pids();
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
    create_topic_cli(&node.address().to_string(), "py-round-trip", 3, 1);
    run_script(
        "kafka_python_round_trip.py",
        &[&bootstrap, "py-round-trip", "3"],
        || node.logs(),
    );
}

/// One `group_member.py` process.
struct GroupMember {
    name: &'static str,
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    out: PathBuf,
    stop: PathBuf,
}

impl GroupMember {
    fn start(
        dir: &std::path::Path,
        name: &'static str,
        bootstrap: &str,
        topic: &str,
        group: &str,
        protocol: &str,
    ) -> GroupMember {
        let out = dir.join(format!("{name}.out"));
        let stop = dir.join(format!("{name}.stop"));
        let mut child = support::foreign_client(support::python())
            .arg("-u")
            .arg(script("group_member.py"))
            .args([bootstrap, topic, group, protocol])
            .arg(&out)
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        GroupMember {
            name,
            child,
            lines,
            out,
            stop,
        }
    }

    /// Waits (bounded) until the member reports an assignment with at least one partition.
    fn wait_assigned(&self, logs: &dyn Fn() -> String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("assigned ") && line.len() > "assigned ".len() => {
                    return
                }
                Ok(_) => {}
                Err(_) => panic!("{} got no partitions within 60 s\n{}", self.name, logs()),
            }
        }
    }

    /// Asks the member to leave (`now`: at once; else once idle) and waits for a clean exit.
    fn leave(&mut self, how: &str, logs: &dyn Fn() -> String) {
        std::fs::write(&self.stop, how).expect("the stop file");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                assert!(
                    status.success(),
                    "{} exited with {status}\n{}",
                    self.name,
                    logs()
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not leave within 60 s\n{}",
                self.name,
                logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the member processed at least one record.
    fn wait_processing(&self, logs: &dyn Fn() -> String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.values().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} processed nothing within 60 s\n{}",
                self.name,
                logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The values it processed.
    fn values(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(' ').nth(2).map(str::to_owned))
            .collect()
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seeds' scenario: a Python producer and three Python consumers of one group on a 3-node
/// cluster, members joining while records flow and one leaving half-way; every delivered
/// record is processed, at most a few twice (a commit a rebalance refused).
fn three_members_join_and_leave(protocol: &str) {
    require("confluent_kafka", "confluent-kafka==2.16.1");
    let cluster = TestCluster::start(3, &[]);
    let logs = || cluster.logs();
    let bootstrap = cluster.kafka_bootstrap();
    let topic = format!("py-group-{protocol}");
    let group = format!("billing-{protocol}");
    create_topic_cli(&cluster.bootstrap(), &topic, 6, 3);
    let dir = tempfile::tempdir().expect("a temporary directory");
    const RECORDS: usize = 3000;

    let mut first =
        GroupMember::start(dir.path(), "member-1", &bootstrap, &topic, &group, protocol);
    first.wait_assigned(&logs);
    let producer = support::foreign_client(support::python())
        .arg("-u")
        .arg(script("group_producer.py"))
        .args([bootstrap.as_str(), topic.as_str(), &RECORDS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut second =
        GroupMember::start(dir.path(), "member-2", &bootstrap, &topic, &group, protocol);
    let mut third =
        GroupMember::start(dir.path(), "member-3", &bootstrap, &topic, &group, protocol);
    second.wait_assigned(&logs);
    third.wait_assigned(&logs);
    second.wait_processing(&logs);
    // One leaves while the producer still writes: the others take its partitions over from
    // its commits.
    second.leave("now", &logs);
    let produced = producer.wait_with_output().expect("the producer ran");
    assert!(
        produced.status.success(),
        "producer: {}\n{}\n{}",
        String::from_utf8_lossy(&produced.stdout),
        String::from_utf8_lossy(&produced.stderr),
        logs()
    );
    first.leave("idle", &logs);
    third.leave("idle", &logs);

    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for member in [&first, &second, &third] {
        for value in member.values() {
            *seen.entry(value).or_default() += 1;
        }
    }
    let missing: Vec<String> = (0..RECORDS)
        .map(|n| format!("record-{n}"))
        .filter(|value| !seen.contains_key(value))
        .collect();
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        missing.is_empty(),
        "{} records never processed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // Kafka's groups are at-least-once across rebalances: a record processed just before its
    // partition moved, whose commit the rebalance refused, is processed again by the new
    // owner. Only a handful at most: each member commits every record.
    assert!(
        twice.len() <= 30,
        "{} records processed twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    eprintln!("{} records processed twice across rebalances", twice.len());
    assert_eq!(seen.len(), RECORDS);
    for member in [&first, &second, &third] {
        assert!(
            !member.values().is_empty(),
            "{} processed nothing",
            member.name
        );
    }
}

#[test]
fn confluent_kafka_classic_group_members_join_and_leave_and_process_every_record_once() {
    three_members_join_and_leave("classic");
}

#[test]
fn confluent_kafka_kip848_group_members_join_and_leave_and_process_every_record_once() {
    three_members_join_and_leave("consumer");
}
