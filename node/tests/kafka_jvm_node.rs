//! The Java client (`org.apache.kafka:kafka-clients` 4.x) and kafkajs (2.x) against real
//! nodes, unchanged. Each test starts a real 3-node cluster and runs one scenario in one
//! process, which asserts and exits nonzero on the first failure; the test passes only if it
//! exits 0 within [`SCENARIO_TIMEOUT`]. The scenarios run one at a time (the machine has two
//! cores; a JVM and three nodes are enough for them).
//!
//! Java (`node/tests/kafka_java/`, single-file sources run with `java -cp LIB/* File.java`):
//! - `AdminScenario.java`: Admin's createTopics, listTopics, describeTopics (by name and id),
//!   describeConfigs (topic and broker), incrementalAlterConfigs, createPartitions,
//!   describeCluster, deleteTopics, and the exceptions for bad input.
//! - `IdempotentFailover.java`: an idempotent producer (acks=all) while the leader of a
//!   partition is killed with SIGKILL: every acknowledged record is read exactly once, by a
//!   consumer reading all along and by one reading afterwards.
//! - `GroupScenario.java`: two consumers of a group split a topic, commitSync, a third resumes
//!   from the committed offsets.
//!
//! kafkajs (`node/tests/kafka_node/`):
//! - `admin.js`: createTopics, fetchTopicMetadata, describeCluster, describeConfigs,
//!   alterConfigs, createPartitions, fetchTopicOffsets, deleteTopics, refusals.
//! - `producer_group.js`: an idempotent producer (acks -1); two consumers of a group split a
//!   topic and commit; a third resumes from the committed offsets.
//!
//! Prerequisites: `java` (17 or later) with the jars in `<target>/kafka-clients/java/lib`, and
//! `node` with `npm ci` run in `node/tests/kafka_node/`. `scripts/kafka-clients.sh` fetches
//! both (from Maven Central and npm; CI's .ci/run runs it). Without them these tests fail and
//! say what to run. `KAFKA_JAVA_LIB` names another jar directory; `KAFKA_LOG=debug` turns the
//! Java client's log (slf4j-simple, default `warn`) up, `KAFKAJS_LOG=1` kafkajs' log.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use support::cluster::TestCluster;
use support::create_topic_cli;

/// How long one scenario may run before the test fails (each bounds its own waits below this).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// One scenario at a time: each starts a JVM or node and three Cairn nodes on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The jars of `node/tests/kafka_java/pom.xml`, beside the build: `<target>/kafka-clients/java/lib`
/// (the target directory is the one holding this build's `cairn` binary).
fn java_lib() -> PathBuf {
    if let Some(lib) = std::env::var_os("KAFKA_JAVA_LIB") {
        return PathBuf::from(lib);
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_cairn"));
    let target = binary
        .parent()
        .and_then(Path::parent)
        .expect("the cairn binary lies in <target>/<profile>/");
    target.join("kafka-clients/java/lib")
}

const INSTALL_HINT: &str = "run scripts/kafka-clients.sh (it fetches kafka-clients from Maven \
     Central with mvn into <target>/kafka-clients/java/lib and runs npm ci in \
     node/tests/kafka_node; CI's .ci/run runs it)";

/// Fails with an install hint unless `java` runs and the kafka-clients jar is there.
fn require_java() -> PathBuf {
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        java.is_ok_and(|status| status.success()),
        "`java` does not run: these tests drive the real Java client (install a JDK 17, e.g. \
         apt-get install openjdk-17-jdk-headless), then {INSTALL_HINT}"
    );
    let lib = java_lib();
    let has_clients = std::fs::read_dir(&lib).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kafka-clients-") && name.ends_with(".jar")
        })
    });
    assert!(
        has_clients,
        "no kafka-clients jar in {}: {INSTALL_HINT}",
        lib.display()
    );
    lib
}

/// Fails with an install hint unless `node` runs and kafkajs is installed beside the scripts.
fn require_kafkajs() {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        node.is_ok_and(|status| status.success()),
        "`node` does not run: these tests drive kafkajs (install Node.js 18 or later, e.g. \
         apt-get install nodejs npm), then {INSTALL_HINT}"
    );
    let kafkajs = tests_dir().join("kafka_node/node_modules/kafkajs/package.json");
    assert!(kafkajs.exists(), "kafkajs is not installed: {INSTALL_HINT}");
}

/// Runs `command` bounded by [`SCENARIO_TIMEOUT`]; fails with its output and the nodes' logs
/// unless it exits 0.
fn run_scenario(name: &str, command: Command, logs: impl FnOnce() -> String) {
    support::run_client_scenario(name, command, SCENARIO_TIMEOUT, logs);
}

/// `java` running the single-file source `name` of `node/tests/kafka_java/` with `args`.
fn java(lib: &Path, name: &str, args: &[&str]) -> Command {
    let level = std::env::var("KAFKA_LOG").unwrap_or_else(|_| "warn".to_string());
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg(format!("-Dorg.slf4j.simpleLogger.defaultLogLevel={level}"))
        .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
        // One scenario's client in a small heap; the nodes run beside it.
        .arg("-Xmx256m")
        .arg("-XX:+UseSerialGC")
        .arg(tests_dir().join("kafka_java").join(name))
        .args(args);
    command
}

/// `node` running `name` of `node/tests/kafka_node/` with `args`.
fn node(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new("node");
    command
        .current_dir(tests_dir().join("kafka_node"))
        .arg(name)
        .args(args);
    command
}

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn java_admin_creates_describes_alters_grows_and_deletes_with_kafkas_exceptions() {
    let lib = require_java();
    let _turn = one_at_a_time();
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    run_scenario(
        "AdminScenario.java",
        java(&lib, "AdminScenario.java", &[&bootstrap, "3"]),
        || cluster.logs(),
    );
}

#[test]
fn java_idempotent_producer_survives_a_killed_leader_exactly_once() {
    let lib = require_java();
    let _turn = one_at_a_time();
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    create_topic_cli(&cluster.bootstrap(), "java-failover", 3, 3);
    let pids = cluster.node_pids();
    run_scenario(
        "IdempotentFailover.java",
        java(
            &lib,
            "IdempotentFailover.java",
            &[&bootstrap, "java-failover", &pids],
        ),
        || cluster.logs(),
    );
}

#[test]
fn kafkajs_admin_creates_describes_alters_grows_and_deletes() {
    require_kafkajs();
    let _turn = one_at_a_time();
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    run_scenario("admin.js", node("admin.js", &[&bootstrap, "3"]), || {
        cluster.logs()
    });
}

#[test]
fn java_consumer_group_splits_partitions_commits_and_resumes() {
    let lib = require_java();
    let _turn = one_at_a_time();
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    run_scenario(
        "GroupScenario.java",
        java(&lib, "GroupScenario.java", &[&bootstrap, "java-group"]),
        || cluster.logs(),
    );
}

#[test]
fn kafkajs_idempotent_producer_and_consumer_group_split_commit_and_resume() {
    require_kafkajs();
    let _turn = one_at_a_time();
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.kafka_bootstrap();
    run_scenario(
        "producer_group.js",
        node("producer_group.js", &[&bootstrap, "js-group"]),
        || cluster.logs(),
    );
}
