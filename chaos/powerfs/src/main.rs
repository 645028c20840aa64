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
//! synced. Namespace operations are applied to the backing directory at once (see [`fs`]).
//!
//! Modules: [`overlay`] (one file's unsynced state, unit-tested), [`fs`] (the FUSE
//! operations). It prints `cairn-powerfs: mounted <dir>` once mounted and, at a normal
//! unmount, what it did.

mod fs;
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
}

fn main() {
    let cli = Cli::parse();
    let filesystem = match fs::PowerFs::new(cli.backing.clone(), cli.pending_bytes_max) {
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
