//! A full disk (ENOSPC) under a real sled store: reads keep working, and writes work again
//! once space returns, without reopening the store by hand.
//!
//! sled records its first failed write as a global error and refuses every later write and
//! flush for good, so the store must reopen its database once a flush fails. The test needs
//! a small filesystem: it runs itself again inside a private mount namespace (`unshare -m`,
//! so nothing reaches the machine's mount table) with a 24 MiB tmpfs as the data directory.
//! Creating the namespace needs root, as CI runs the tests.

use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
use cairn_protocol::{Epoch, Offset};
use cairn_storage::{LogStore, PartitionLog, SledStore};
use std::io::Write;
use std::path::Path;
use std::process::Command;

const CHILD_VAR: &str = "CAIRN_FULL_DISK_CHILD";
const TEST_NAME: &str = "writes_fail_while_the_disk_is_full_reads_go_on_and_writes_resume";
/// Batches written before giving up on filling the disk (a bound, never reached in practice).
const FILL_BATCHES_MAX: u64 = 100_000;

fn batch(log: &impl PartitionLog, index: u64) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    builder.push(&Record::new(vec![b'0' + (index % 10) as u8; 4_000]));
    builder.build().stamped(log.log_end(), Epoch(1))
}

/// Writes zeros into `path` until the filesystem refuses.
fn fill(path: &Path) {
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

fn child() {
    let mount = tempfile::tempdir().unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(mount.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    let store = SledStore::open(mount.path().join("store")).unwrap();
    let mut log = store.open_log("p").unwrap();
    for index in 0..100 {
        log.append(&batch(&log, index)).unwrap();
    }
    store.flush().unwrap();
    let durable_end = log.log_end();
    let ballast = mount.path().join("ballast");
    fill(&ballast);
    // Append and flush until sled hits the full disk.
    let mut failed = false;
    for index in 0..FILL_BATCHES_MAX {
        let appended = log.append(&batch(&log, index));
        if appended.is_err() || store.flush().is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "writes never failed on a full disk");
    // Reads of what was flushed keep working while the disk is full.
    let read = log.read(Offset::ZERO, durable_end, usize::MAX).unwrap();
    assert_eq!(read.len() as u64, durable_end.0);
    // Still full: flushing keeps failing, nothing panics.
    assert!(store.flush().is_err() || log.append(&batch(&log, 0)).is_err());
    std::fs::remove_file(&ballast).unwrap();
    // Space is back: the next flush reopens the database, and writes go on at the log end
    // the reopened store holds (at least everything flushed before the disk filled).
    store.flush().unwrap();
    let resumed_at = log.log_end();
    assert!(resumed_at >= durable_end, "{resumed_at} < {durable_end}");
    for index in 0..10 {
        log.append(&batch(&log, index)).unwrap();
    }
    store.flush().unwrap();
    let end = log.log_end();
    assert_eq!(end, resumed_at.plus(10));
    drop((log, store));
    let store = SledStore::open(mount.path().join("store")).unwrap();
    let log = store.open_log("p").unwrap();
    assert_eq!(log.log_end(), end);
    assert_eq!(
        log.read(Offset::ZERO, end, usize::MAX).unwrap().len() as u64,
        end.0
    );
    drop((log, store));
    let _ = Command::new("umount").arg(mount.path()).status();
}

#[test]
fn writes_fail_while_the_disk_is_full_reads_go_on_and_writes_resume() {
    if std::env::var_os(CHILD_VAR).is_some() {
        child();
        return;
    }
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
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
