//! The real filesystem: mount `cairn-powerfs`, write through it, cut the power (kill the
//! daemon), mount again, and see only what was synced. Needs root and `/dev/fuse`; says so and
//! passes vacuously where they are missing (CI runs as root).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A mounted daemon; killed and unmounted when dropped, so a failing test leaves no mount.
struct Mounted {
    child: Child,
    mount_point: PathBuf,
}

impl Mounted {
    fn start(backing: &Path, mount_point: &Path) -> Mounted {
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-powerfs"))
            .arg("--backing")
            .arg(backing)
            .arg("--mount")
            .arg(mount_point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start cairn-powerfs");
        let mounted = Mounted {
            child,
            mount_point: mount_point.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let wanted = mount_point.to_string_lossy().to_string();
        loop {
            let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            if table
                .lines()
                .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
            {
                return mounted;
            }
            assert!(Instant::now() < deadline, "not mounted within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The power cut: the daemon dies with every unsynced write.
    fn cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && Path::new("/dev/fuse").exists()
}

/// A fresh backing directory and mount point; the daemon is started by the test.
struct Disk {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mount_point: PathBuf,
}

impl Disk {
    fn new() -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mount_point).unwrap();
        let mount_point = mount_point.canonicalize().unwrap();
        Disk {
            _dir: dir,
            backing,
            mount_point,
        }
    }

    fn mount(&self) -> Mounted {
        Mounted::start(&self.backing, &self.mount_point)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount_point.join(name)
    }

    /// `fsync` of a directory under the mount ("" for its root).
    fn sync_dir(&self, name: &str) {
        std::fs::File::open(self.path(name))
            .unwrap()
            .sync_all()
            .unwrap();
    }

    /// Writes `data` into a new (or truncated) file and `fsync`s the file, not its directory.
    fn write_synced(&self, name: &str, data: &[u8]) {
        let mut file = std::fs::File::create(self.path(name)).unwrap();
        file.write_all(data).unwrap();
        file.sync_all().unwrap();
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        match std::fs::read(self.path(name)) {
            Ok(data) => Some(data),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => panic!("read {name}: {error}"),
        }
    }

    /// The names in a directory under the mount, sorted.
    fn list(&self, name: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(name))
            .unwrap()
            .map(|item| item.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn only_synced_writes_survive_a_power_cut() {
    if !privileged() {
        eprintln!("SKIPPED: mounting cairn-powerfs needs root and /dev/fuse");
        return;
    }
    let disk = Disk::new();
    let mounted = disk.mount();
    let mut synced = std::fs::File::create(disk.path("synced")).unwrap();
    std::fs::write(disk.path("never-synced"), b"gone").unwrap();
    // Both names durable; their contents are another matter.
    disk.sync_dir("");
    synced.write_all(b"durable").unwrap();
    synced.sync_data().unwrap();
    synced.write_all(b" and then not").unwrap();
    // Overwrites inside the synced part are not durable either.
    synced.write_all_at(b"D", 0).unwrap();
    drop(synced);
    std::fs::write(disk.path("never-synced"), b"gone").unwrap();
    // Every reader of the mount sees the unsynced state.
    assert_eq!(disk.read("synced").unwrap(), b"Durable and then not");
    assert_eq!(disk.read("never-synced").unwrap(), b"gone");
    mounted.cut();

    let _mounted = disk.mount();
    assert_eq!(disk.read("synced").unwrap(), b"durable");
    assert_eq!(disk.read("never-synced").unwrap(), b"");
}

#[test]
fn a_new_file_needs_an_fsync_of_its_directory_not_only_its_own() {
    if !privileged() {
        eprintln!("SKIPPED: mounting cairn-powerfs needs root and /dev/fuse");
        return;
    }
    let disk = Disk::new();
    let mounted = disk.mount();
    disk.write_synced("kept", b"synced data and name");
    disk.sync_dir("");
    disk.write_synced("lost", b"synced data, unsynced name");
    assert_eq!(disk.list(""), ["kept", "lost"]);
    mounted.cut();

    let _mounted = disk.mount();
    assert_eq!(disk.read("lost"), None);
    assert_eq!(disk.read("kept").unwrap(), b"synced data and name");
    // The journal's directory in the backing root is not shown.
    assert_eq!(disk.list(""), ["kept"]);
    assert!(std::fs::symlink_metadata(disk.path(".cairn-powerfs")).is_err());
}

#[test]
fn a_rename_over_a_file_is_undone_without_a_directory_fsync() {
    if !privileged() {
        eprintln!("SKIPPED: mounting cairn-powerfs needs root and /dev/fuse");
        return;
    }
    let disk = Disk::new();
    let mounted = disk.mount();
    disk.write_synced("current", b"old");
    disk.sync_dir("");
    // The usual replace: write a temporary, fsync it, rename it over the name.
    disk.write_synced("current.tmp", b"new");
    std::fs::rename(disk.path("current.tmp"), disk.path("current")).unwrap();
    assert_eq!(disk.read("current").unwrap(), b"new");
    mounted.cut();

    let mounted = disk.mount();
    assert_eq!(disk.read("current").unwrap(), b"old");
    assert_eq!(disk.list(""), ["current"]);

    // With the directory synced after the rename, the new file stays.
    disk.write_synced("current.tmp", b"new");
    std::fs::rename(disk.path("current.tmp"), disk.path("current")).unwrap();
    disk.sync_dir("");
    mounted.cut();

    let _mounted = disk.mount();
    assert_eq!(disk.read("current").unwrap(), b"new");
    assert_eq!(disk.list(""), ["current"]);
}

#[test]
fn an_unlink_is_undone_without_a_directory_fsync() {
    if !privileged() {
        eprintln!("SKIPPED: mounting cairn-powerfs needs root and /dev/fuse");
        return;
    }
    let disk = Disk::new();
    let mounted = disk.mount();
    disk.write_synced("victim", b"durable");
    disk.write_synced("removed", b"durable too");
    disk.sync_dir("");
    // An unlinked file's unsynced bytes go with it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(disk.path("victim"))
        .unwrap()
        .write_all(b" and not")
        .unwrap();
    std::fs::remove_file(disk.path("victim")).unwrap();
    std::fs::remove_file(disk.path("removed")).unwrap();
    disk.sync_dir("");
    disk.write_synced("victim", b"durable");
    std::fs::remove_file(disk.path("victim")).unwrap();
    assert_eq!(disk.list(""), Vec::<String>::new());
    mounted.cut();

    let mounted = disk.mount();
    // The second creation and its unlink are undone; the synced unlinks are not.
    assert_eq!(disk.list(""), Vec::<String>::new());

    disk.write_synced("victim", b"durable");
    disk.sync_dir("");
    std::fs::remove_file(disk.path("victim")).unwrap();
    assert_eq!(disk.read("victim"), None);
    mounted.cut();

    let _mounted = disk.mount();
    assert_eq!(disk.read("victim").unwrap(), b"durable");
}

#[test]
fn a_new_directory_is_lost_with_its_synced_contents_unless_its_parent_is_synced() {
    if !privileged() {
        eprintln!("SKIPPED: mounting cairn-powerfs needs root and /dev/fuse");
        return;
    }
    let disk = Disk::new();
    let mounted = disk.mount();
    std::fs::create_dir(disk.path("kept")).unwrap();
    std::fs::create_dir(disk.path("kept/child")).unwrap();
    disk.sync_dir("");
    // The file and the directory holding it synced, the directory's parent not.
    disk.write_synced("kept/child/file", b"data");
    disk.sync_dir("kept/child");
    mounted.cut();

    let mounted = disk.mount();
    assert_eq!(disk.list("kept"), Vec::<String>::new());
    std::fs::create_dir(disk.path("kept/child")).unwrap();
    disk.write_synced("kept/child/file", b"data");
    disk.sync_dir("kept/child");
    disk.sync_dir("kept");
    // An rmdir is undone the same way.
    std::fs::create_dir(disk.path("gone")).unwrap();
    disk.sync_dir("");
    std::fs::remove_dir(disk.path("gone")).unwrap();
    mounted.cut();

    let _mounted = disk.mount();
    assert_eq!(disk.read("kept/child/file").unwrap(), b"data");
    assert_eq!(disk.list(""), ["gone", "kept"]);
}

#[test]
fn an_exchange_is_undone_without_a_directory_fsync() {
    if !privileged() {
        eprintln!("SKIPPED: mounting cairn-powerfs needs root and /dev/fuse");
        return;
    }
    let disk = Disk::new();
    let mounted = disk.mount();
    disk.write_synced("a", b"a");
    disk.write_synced("b", b"b");
    disk.sync_dir("");
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        disk.path("a"),
        rustix::fs::CWD,
        disk.path("b"),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(disk.read("a").unwrap(), b"b");
    mounted.cut();

    let _mounted = disk.mount();
    assert_eq!(disk.read("a").unwrap(), b"a");
    assert_eq!(disk.read("b").unwrap(), b"b");
}
