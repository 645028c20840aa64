//! The `power` fault's disks: each node's data directory is a `cairn-powerfs` mount (crate
//! `chaos/powerfs`), a FUSE passthrough that keeps every write not yet `fsync`ed in its own
//! memory. Node `i`'s durable bytes live in `disks/<i>` of the campaign directory, mounted on
//! its data directory `nodes/<i>`.
//!
//! A power cut of some nodes: SIGKILL of the nodes, all at one instant, then SIGKILL of their
//! `cairn-powerfs` daemons (the unsynced writes die with them), `umount -l`, and a new daemon
//! on the same backing directory, which shows only what was synced. The nodes restart on it
//! when the fault window ends. The campaign runs in its own mount namespace, so the mounts
//! disappear with it even when it is killed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Unsynced bytes each daemon holds at most; past it writes fail with ENOSPC and the
/// campaign fails (the measurement would not be one).
pub const PENDING_BYTES_MAX: u64 = 768 << 20;

/// The line a daemon logs when a write hit [`PENDING_BYTES_MAX`].
const CAP_REACHED: &str = "PENDING CAP REACHED";

const MOUNT_WAIT: Duration = Duration::from_secs(15);

/// The `cairn-powerfs` binary beside this program.
pub fn powerfs_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("cairn-powerfs");
    candidate.exists().then_some(candidate)
}

/// Whether `mount_point` (absolute) is a mount point now, from this process's mount table.
fn is_mounted(mount_point: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = mount_point.to_string_lossy();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

fn unmount(mount_point: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mount_point)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One `cairn-powerfs` daemon per node.
pub struct Disks {
    binary: PathBuf,
    /// Campaign directory (logs and backing directories).
    dir: PathBuf,
    /// Index `i - 1`: node `i`'s mount point, absolute.
    mount_points: Vec<PathBuf>,
    daemons: Vec<Option<Child>>,
}

impl Disks {
    /// Mounts a disk on each of `data_dirs` (node `i`'s at index `i - 1`), backed by
    /// `<dir>/disks/<i>`.
    pub fn mount_all(binary: PathBuf, dir: &Path, data_dirs: &[PathBuf]) -> Result<Disks, String> {
        let mut disks = Disks {
            binary,
            dir: dir.to_path_buf(),
            mount_points: Vec::new(),
            daemons: Vec::new(),
        };
        for data_dir in data_dirs {
            std::fs::create_dir_all(data_dir)
                .map_err(|error| format!("create {}: {error}", data_dir.display()))?;
            let absolute = data_dir
                .canonicalize()
                .map_err(|error| format!("{}: {error}", data_dir.display()))?;
            disks.mount_points.push(absolute);
            disks.daemons.push(None);
        }
        for node in 1..=data_dirs.len() as u32 {
            disks.start(node)?;
        }
        Ok(disks)
    }

    fn backing(&self, node: u32) -> PathBuf {
        self.dir.join("disks").join(node.to_string())
    }

    fn log(&self, node: u32) -> PathBuf {
        self.dir.join(format!("powerfs-{node}.log"))
    }

    /// Starts node `node`'s daemon and waits until its mount is in the mount table.
    fn start(&mut self, node: u32) -> Result<(), String> {
        let index = node as usize - 1;
        let backing = self.backing(node);
        std::fs::create_dir_all(&backing)
            .map_err(|error| format!("create {}: {error}", backing.display()))?;
        let log_path = self.log(node);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| format!("{}: {error}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|error| format!("{}: {error}", log_path.display()))?;
        let mount_point = self.mount_points[index].clone();
        let mut child = Command::new(&self.binary)
            .arg("--backing")
            .arg(&backing)
            .arg("--mount")
            .arg(&mount_point)
            .arg("--pending-bytes-max")
            .arg(PENDING_BYTES_MAX.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| format!("start {}: {error}", self.binary.display()))?;
        let deadline = Instant::now() + MOUNT_WAIT;
        loop {
            if is_mounted(&mount_point) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "cairn-powerfs for node {node} exited ({status}) before mounting {}; see {}",
                    mount_point.display(),
                    log_path.display()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "cairn-powerfs for node {node} did not mount {} within {MOUNT_WAIT:?}",
                    mount_point.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemons[index] = Some(child);
        Ok(())
    }

    /// Kills the daemon (losing what it held), unmounts.
    fn stop(&mut self, node: u32) {
        let index = node as usize - 1;
        if let Some(mut child) = self.daemons[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount(&self.mount_points[index]);
    }

    /// The power cut of `nodes`, whose processes must be dead already: every write their
    /// daemons held unsynced is dropped, and new daemons mount what was synced.
    pub fn cut(&mut self, nodes: &[u32]) -> Result<(), String> {
        for node in nodes {
            self.stop(*node);
        }
        for node in nodes {
            self.start(*node)?;
        }
        Ok(())
    }

    /// Nodes whose daemon refused writes at [`PENDING_BYTES_MAX`] (from their logs).
    pub fn capped(&self) -> Vec<u32> {
        (1..=self.mount_points.len() as u32)
            .filter(|node| {
                std::fs::read_to_string(self.log(*node))
                    .is_ok_and(|text| text.contains(CAP_REACHED))
            })
            .collect()
    }

    /// Unmounts every disk (the nodes must be stopped); each daemon then logs what it did
    /// (writes, syncs, bytes never synced) and exits, or is killed after a few seconds.
    pub fn unmount_all(&mut self) {
        for index in 0..self.mount_points.len() {
            unmount(&self.mount_points[index]);
            let Some(mut child) = self.daemons[index].take() else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        self.unmount_all();
    }
}
