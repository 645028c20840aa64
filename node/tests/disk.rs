//! Damaged disks under real `cairn node` processes (issue 14): random bytes and a cut in a
//! stopped node's sled files. sled recovers up to its first damaged segment and drops the rest
//! (or cannot open at all), so the node must notice that it lost acknowledged records:
//!
//! - the only replica reports itself corrupted (typed error, `cluster status`), never serves a
//!   shorter log whose offsets would be handed out again;
//! - one replica of three is repaired from its peers: every acknowledged record still reads
//!   back, new records get offsets above the old log end, and the damaged replica catches up;
//!   then another whose database sled cannot open at all is rebuilt from its peers, and the
//!   two repaired replicas serve every record once the untouched one is gone.

mod support;

use cairn_protocol::messages::{ClusterStatusResponse, PartitionDescription};
use cairn_protocol::{ApiError, NodeId, Offset};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;
use support::cluster::TestCluster;
use support::{eventually, TestNode, Wire};

/// A small deterministic generator (xorshift64*), so a failing case replays from its seed.
struct Noise(u64);

impl Noise {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
}

/// Writes 64 random bytes at each fraction of the file's length, then cuts the file to
/// `keep_fraction` of its length.
fn damage(file: &Path, fractions: &[f64], keep_fraction: f64, seed: u64) {
    let length = std::fs::metadata(file).expect("the sled log file").len();
    let mut noise = Noise(seed);
    let mut handle = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    for fraction in fractions {
        handle
            .seek(SeekFrom::Start((length as f64 * fraction) as u64))
            .unwrap();
        let bytes: Vec<u8> = (0..64).map(|_| noise.byte()).collect();
        handle.write_all(&bytes).unwrap();
    }
    handle
        .set_len((length as f64 * keep_fraction) as u64)
        .unwrap();
}

fn sled_log_file(node: &TestNode) -> std::path::PathBuf {
    node.data_dir().join("store").join("db")
}

fn cluster_status(wire: &mut Wire) -> ClusterStatusResponse {
    wire.cluster_status(true)
}

fn describe(wire: &mut Wire, topic: &str) -> Result<Vec<PartitionDescription>, ApiError> {
    wire.describe_topic(topic)
}

/// Produces `count` one-record batches `prefix-i` with acks=all; returns (value, offset).
fn produce_acked(
    wire: &mut Wire,
    topic: &str,
    prefix: &str,
    count: usize,
) -> Vec<(String, Offset)> {
    (0..count)
        .map(|index| {
            let value = format!("{prefix}-{index:06}");
            let response = wire
                .produce(topic, 0, &[value.as_bytes()])
                .unwrap_or_else(|error| panic!("produce {value}: {error:?}"));
            (value, response.base_offset)
        })
        .collect()
}

#[test]
fn the_only_replica_that_lost_acknowledged_records_reports_corruption_and_reuses_no_offset() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let acked = produce_acked(&mut wire, "t", "v", 3_000);
    let log_end = acked.last().unwrap().1.plus(1);
    drop(wire);
    assert!(node.terminate().success(), "{}", node.logs());
    // A cut keeps the start of sled's log (the topic's creation) and drops acknowledged
    // records at its end, as a damaged segment does.
    damage(&sled_log_file(&node), &[], 0.6, 1);
    node.restart();
    let mut wire = node.wire();
    let produced = wire.produce("t", 0, &[b"after"]);
    assert!(
        matches!(produced, Err(ApiError::StorageCorrupted { .. })),
        "a produce after the loss must be refused, not given a reused offset below {log_end}: \
         {produced:?}"
    );
    let fetched = wire.fetch("t", 0, Offset::ZERO, 0);
    assert!(
        matches!(fetched, Err(ApiError::StorageCorrupted { .. })),
        "{fetched:?}"
    );
    let status = cluster_status(&mut wire);
    let partition = status
        .partitions
        .iter()
        .find(|partition| partition.topic == "t")
        .expect("t in the status");
    assert_eq!(partition.corrupted_replicas, vec![NodeId(1)], "{status:?}");
    assert!(
        node.logs().contains("the only replica lost committed data"),
        "the loss is logged at ERROR"
    );
}

#[test]
fn a_replica_with_damaged_files_is_repaired_from_its_peers_and_no_offset_is_reused() {
    let mut cluster = TestCluster::start(3, &[]);
    let mut wire = cluster.node(1).wire();
    wire.create_topic("r", 1).unwrap();
    // Find the leader (describe answers with the leader the answering node knows).
    let mut leader = None;
    assert!(eventually(Duration::from_secs(20), || {
        leader = describe(&mut wire, "r")
            .ok()
            .and_then(|partitions| partitions[0].leader);
        leader.is_some()
    }));
    let leader = leader.unwrap().0;
    let mut leader_wire = cluster.node(leader).wire();
    let acked = produce_acked(&mut leader_wire, "r", "v", 2_000);
    let old_end = acked.last().unwrap().1.plus(1);
    // Let the followers catch up and record what they hold, then stop one and damage it:
    // random bytes at several places and a cut.
    let damaged = if leader == 3 { 2 } else { 3 };
    assert!(eventually(Duration::from_secs(20), || {
        describe(&mut cluster.node(damaged).wire(), "r")
            .is_ok_and(|partitions| partitions[0].log_end >= old_end)
    }));
    std::thread::sleep(Duration::from_millis(500));
    assert!(cluster.node_mut(damaged).terminate().success());
    damage(
        &sled_log_file(cluster.node(damaged)),
        &[0.15, 0.45, 0.7],
        0.85,
        7,
    );
    cluster.node_mut(damaged).restart();
    let logs = cluster.node(damaged).logs();
    assert!(
        logs.contains("lost committed data"),
        "the damaged node noticed: {logs}"
    );
    // The partition keeps serving from the replicas that hold the data; new records land above
    // the old log end.
    let more = produce_acked(&mut leader_wire, "r", "w", 50);
    assert!(
        more[0].1 >= old_end,
        "offset {} reused below {old_end}",
        more[0].1
    );
    let read = leader_wire.read_all("r", 0, Offset::ZERO);
    for (value, offset) in acked.iter().chain(&more) {
        let record = read
            .iter()
            .find(|record| record.offset == *offset)
            .unwrap_or_else(|| panic!("acknowledged {value} at {offset} is gone"));
        assert_eq!(
            record.value.as_deref(),
            Some(value.as_bytes()),
            "at {offset}"
        );
    }
    // The damaged replica catches up with the leader and is healthy again.
    let new_end = more.last().unwrap().1.plus(1);
    let repaired = eventually(Duration::from_secs(30), || {
        let mut wire = cluster.node(damaged).wire();
        let caught_up =
            describe(&mut wire, "r").is_ok_and(|partitions| partitions[0].log_end >= new_end);
        let status = cluster_status(&mut wire);
        caught_up
            && status
                .partitions
                .iter()
                .all(|partition| partition.repairing_replicas.is_empty())
    });
    assert!(repaired, "not repaired:\n{}", cluster.logs());
    // Now the other follower, with random bytes in sled's log and in its config file: sled
    // cannot open that database at all (it reports corruption; other damage makes it panic
    // while recovering), so the node moves it aside, starts empty and is rebuilt from its
    // peers, `__meta` included.
    let rebuilt = (1..=3).find(|id| *id != damaged && *id != leader).unwrap();
    assert!(cluster.node_mut(rebuilt).terminate().success());
    damage(
        &sled_log_file(cluster.node(rebuilt)),
        &[0.03, 0.4, 0.7],
        1.0,
        11,
    );
    let sled_config_file = cluster.node(rebuilt).data_dir().join("store").join("conf");
    damage(&sled_config_file, &[0.2], 1.0, 13);
    cluster.node_mut(rebuilt).restart();
    let logs = cluster.node(rebuilt).logs();
    assert!(
        logs.contains("database is damaged") && logs.contains("lost committed data"),
        "the damaged node noticed: {logs}"
    );
    let rebuilt_in_sync = eventually(Duration::from_secs(30), || {
        let mut wire = cluster.node(rebuilt).wire();
        describe(&mut wire, "r").is_ok_and(|partitions| partitions[0].log_end >= new_end)
            && cluster_status(&mut wire)
                .partitions
                .iter()
                .all(|partition| partition.repairing_replicas.is_empty())
    });
    assert!(rebuilt_in_sync, "not rebuilt:\n{}", cluster.logs());
    // The two repaired replicas hold the records themselves: stop the leader, read again.
    let (survivor, damaged) = (rebuilt, damaged);
    cluster.node_mut(leader).kill();
    let mut wires = [cluster.node(survivor).wire(), cluster.node(damaged).wire()];
    let mut read = Vec::new();
    let served = eventually(Duration::from_secs(30), || {
        wires.iter_mut().any(|wire| {
            read = wire.try_read_all("r", 0, Offset::ZERO).unwrap_or_default();
            read.len() >= acked.len() + more.len()
        })
    });
    assert!(served, "no new leader served r:\n{}", cluster.logs());
    for (value, offset) in acked.iter().chain(&more) {
        assert!(
            read.iter().any(|record| record.offset == *offset
                && record.value.as_deref() == Some(value.as_bytes())),
            "{value} at {offset} lost after the failover"
        );
    }
}

const FULL_DISK_CHILD_VAR: &str = "CAIRN_DISK_TEST_FULL_CHILD";
const FULL_DISK_TEST: &str = "a_full_disk_keeps_reads_working_and_writes_resume_when_space_returns";

/// Writes zeros into `path` until the filesystem refuses.
fn fill_disk(path: &Path) {
    let mut ballast = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 16];
    for _ in 0..100_000 {
        if ballast
            .write_all(&chunk)
            .and_then(|()| ballast.sync_all())
            .is_err()
        {
            return;
        }
    }
    panic!("the filesystem never filled");
}

/// The node's data directory is a 64 MiB tmpfs, mounted inside the private mount namespace
/// this process runs in (see the test below).
fn full_disk_child() {
    let mut node = TestNode::unstarted(1, None, &[]);
    std::fs::create_dir_all(node.data_dir()).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(node.data_dir())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    node.launch();
    node.wait_ready();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let acked = produce_acked(&mut wire, "t", "v", 50);
    let ballast = node.data_dir().join("ballast");
    fill_disk(&ballast);
    // Produce until the full disk refuses a write: a typed, retriable error.
    let big = vec![b'x'; 16_000];
    let mut refusal = None;
    for _ in 0..2_000 {
        match wire.produce("t", 0, &[&big]) {
            Ok(_) => {}
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let refusal = refusal.expect("writes never failed on a full disk");
    assert!(
        matches!(refusal, ApiError::Storage { .. }) && refusal.is_retriable(),
        "{refusal:?}"
    );
    // Reads keep working while the disk is full.
    let read = wire.read_all("t", 0, Offset::ZERO);
    for (value, offset) in &acked {
        assert!(
            read.iter().any(|record| record.offset == *offset
                && record.value.as_deref() == Some(value.as_bytes())),
            "{value} at {offset} unreadable while the disk is full"
        );
    }
    std::fs::remove_file(&ballast).unwrap();
    // Space is back: writes resume by themselves, no restart.
    let mut resumed = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            resumed = wire.produce("t", 0, &[b"after"]).ok();
            resumed.is_some()
        }),
        "writes did not resume:\n{}",
        node.logs()
    );
    let last_acked = acked.last().unwrap().1;
    assert!(resumed.unwrap().base_offset > last_acked);
    let read = wire.read_all("t", 0, Offset::ZERO);
    for (value, offset) in &acked {
        assert!(
            read.iter().any(|record| record.offset == *offset
                && record.value.as_deref() == Some(value.as_bytes())),
            "{value} at {offset} lost"
        );
    }
    node.kill();
}

#[test]
fn a_full_disk_keeps_reads_working_and_writes_resume_when_space_returns() {
    if std::env::var_os(FULL_DISK_CHILD_VAR).is_some() {
        full_disk_child();
        return;
    }
    // Run this test again inside a private mount namespace, so the tmpfs never reaches the
    // machine's mount table (creating one needs root, as CI runs the tests).
    let output = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", FULL_DISK_TEST, "--nocapture", "--test-threads=1"])
        .env(FULL_DISK_CHILD_VAR, "1")
        .output()
        .expect("unshare runs (util-linux)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
}
