//! `cairn-powerfs`: a FUSE passthrough filesystem for power-cut tests, in the spirit of
//! Jepsen's LazyFS. Run as root (it mounts `/dev/fuse` with mount(2) itself, no fusermount):
//!
//! ```sh
//! cairn-powerfs --backing /var/tmp/node-1.disk --mount /var/tmp/node-1 &
//! ```
//!
//! Everything written under the mount point is visible at once to every reader of the mount,
//! but reaches the backing directory only when its file is `fsync`ed or `fdatasync`ed
//! ([`overlay`]). **The power cut is the death of this process** (SIGKILL, or any signal that
//! ends it): the unsynced writes lived only in its memory. Then `umount -l` the mount point
//! and start `cairn-powerfs` again on the same directories: the mount shows only what was
//! synced. Namespace operations (create, mkdir, unlink, rmdir, rename) are applied to the
//! backing directory at once but journalled; the new daemon undoes, before it mounts, every
//! one whose parent directories were not `fsync`ed after it, and logs each (see [`journal`]).
//!
//! Modules: [`overlay`] (one file's unsynced state, unit-tested), [`journal`] (the namespace
//! operations not yet durable, and their undoing; unit-tested), [`fs`] (the FUSE operations).
//! It prints `cairn-powerfs: mounted <dir>` once mounted and, at a normal unmount, what it did.

mod fs;
mod journal;
mod overlay;

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn-powerfs",
    about = "A FUSE passthrough that loses every write not yet fsynced when it dies"
)]
struct Cli {
    /// The directory that holds what is durable.
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount the filesystem (an existing directory).
    #[arg(long)]
    mount: PathBuf,
    /// Unsynced bytes held in memory at most; a write that would pass it fails with ENOSPC
    /// (never made durable early), and the first one is reported on stderr.
    #[arg(long, default_value_t = 1 << 30)]
    pending_bytes_max: u64,
    /// Namespace operations not yet durable (no `fsync` of their directory yet) at most; one
    /// more fails with ENOSPC, reported like the pending cap.
    #[arg(long, default_value_t = 1 << 18)]
    namespace_ops_max: usize,
}

fn main() {
    let cli = Cli::parse();
    let filesystem = match fs::PowerFs::new(
        cli.backing.clone(),
        cli.pending_bytes_max,
        cli.namespace_ops_max,
    ) {
        Ok(filesystem) => filesystem,
        Err(error) => {
            eprintln!(
                "cairn-powerfs: backing directory {}: {error}",
                cli.backing.display()
            );
            std::process::exit(2);
        }
    };
    let options = [
        fuser::MountOption::FSName("cairn-powerfs".to_string()),
        fuser::MountOption::DefaultPermissions,
    ];
    let mut session = match fuser::Session::new(filesystem, &cli.mount, &options) {
        Ok(session) => session,
        Err(error) => {
            eprintln!(
                "cairn-powerfs: cannot mount {} (root and /dev/fuse needed): {error}",
                cli.mount.display()
            );
            std::process::exit(2);
        }
    };
    println!("cairn-powerfs: mounted {}", cli.mount.display());
    if let Err(error) = session.run() {
        eprintln!("cairn-powerfs: {error}");
        std::process::exit(1);
    }
    eprintln!("cairn-powerfs: unmounted {}", cli.mount.display());
}
