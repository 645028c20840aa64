//! The FUSE filesystem: a passthrough to a backing directory whose file writes stay in memory
//! ([`Overlay`]) until the file is `fsync`ed or `fdatasync`ed, and whose namespace operations
//! are undone at the next start unless their parent directories were `fsync`ed ([`Journal`]).
//!
//! Both are modelled strictly, like LazyFS's strict mode:
//! - File contents and lengths: every byte not covered by a sync of its file is lost with the
//!   process's memory.
//! - Create, mkdir, unlink, rmdir, rename (also `RENAME_NOREPLACE` and `RENAME_EXCHANGE`): each
//!   is applied to the backing directory at once (every reader of the mount sees it) but is
//!   durable only once every directory it changed (both parents of a rename) is `fsync`ed
//!   after it. An `fsync` of a new file does *not* make its name durable (POSIX does not
//!   promise it; ext4 happens to). A removed entry waits in the stash until its removal is
//!   durable; a power cut brings it back with its durable contents, reverts renames and
//!   removes created entries with their data, synced or not.
//! - chmod and chown go to the backing file at once and count as durable; times are not
//!   modelled.

use crate::journal::{self, Journal, Op};
use crate::overlay::{Backing, Overlay};
use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, FUSE_ROOT_ID,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache attributes and names. The mount is made anew after every
/// cut, so no cache outlives the state it describes.
const TTL: Duration = Duration::from_secs(1);

/// One file or directory the kernel knows by inode number.
struct Inode {
    path: PathBuf,
    /// The backing inode number (the journal knows directories by it).
    backing_inode: u64,
    /// The backing file, open while handles are open or writes are pending.
    file: Option<File>,
    /// Unsynced writes; `None` when the file is clean.
    overlay: Option<Overlay>,
    handles: u32,
    /// Unlinked while open: forgotten at its last release.
    unlinked: bool,
}

/// Counters the daemon reports when it exits normally.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub writes: u64,
    pub syncs: u64,
    /// Writes refused with ENOSPC because the pending bytes would pass the cap.
    pub refused_writes: u64,
    /// Namespace operations recorded in the journal (not durable when made).
    pub namespace_ops: u64,
    /// Namespace operations refused with ENOSPC: the journal or the pending bytes were full.
    pub refused_namespace_ops: u64,
    /// Operations a previous daemon left not durable, undone at this one's start.
    pub undone_at_start: u64,
}

pub struct PowerFs {
    inodes: HashMap<u64, Inode>,
    /// Backing inode number to ours (the kernel's root is always 1).
    by_backing: HashMap<u64, u64>,
    next_inode: u64,
    handles: HashMap<u64, u64>,
    next_handle: u64,
    /// Unsynced bytes: overlays, and victims in the stash.
    pending_bytes: u64,
    pending_bytes_max: u64,
    journal: Journal,
    pub counters: Counters,
}

fn errno(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

fn system_time(seconds: i64, nanoseconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanoseconds as u32)
    } else {
        UNIX_EPOCH
    }
}

impl PowerFs {
    /// The filesystem over `root`, after undoing what a previous daemon left not durable
    /// (each undone operation is logged on stderr).
    pub fn new(
        root: PathBuf,
        pending_bytes_max: u64,
        namespace_ops_max: usize,
    ) -> io::Result<PowerFs> {
        let metadata = std::fs::metadata(&root)?;
        let (journal, undone) = Journal::open(&root, namespace_ops_max, &mut |line| {
            eprintln!("cairn-powerfs: power cut: {line}")
        })?;
        let mut fs = PowerFs {
            inodes: HashMap::new(),
            by_backing: HashMap::new(),
            next_inode: FUSE_ROOT_ID + 1,
            handles: HashMap::new(),
            next_handle: 1,
            pending_bytes: 0,
            pending_bytes_max,
            journal,
            counters: Counters {
                undone_at_start: undone,
                ..Counters::default()
            },
        };
        fs.by_backing.insert(metadata.ino(), FUSE_ROOT_ID);
        fs.inodes
            .insert(FUSE_ROOT_ID, Inode::at(root, metadata.ino()));
        Ok(fs)
    }

    /// Our inode number for the backing file at `path`, registering it.
    fn register(&mut self, path: PathBuf, backing_inode: u64) -> u64 {
        if let Some(inode) = self.by_backing.get(&backing_inode) {
            if let Some(entry) = self.inodes.get_mut(inode) {
                if !entry.unlinked {
                    entry.path = path;
                    return *inode;
                }
            }
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.by_backing.insert(backing_inode, inode);
        self.inodes.insert(inode, Inode::at(path, backing_inode));
        inode
    }

    fn attr(&self, inode: u64) -> io::Result<FileAttr> {
        let entry = self
            .inodes
            .get(&inode)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let metadata = match &entry.file {
            Some(file) => file.metadata()?,
            None => std::fs::symlink_metadata(&entry.path)?,
        };
        let kind = if metadata.is_dir() {
            FileType::Directory
        } else if metadata.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = entry.overlay.as_ref().map_or(metadata.size(), Overlay::len);
        Ok(FileAttr {
            ino: inode,
            size,
            blocks: size.div_ceil(512),
            atime: system_time(metadata.atime(), metadata.atime_nsec()),
            mtime: system_time(metadata.mtime(), metadata.mtime_nsec()),
            ctime: system_time(metadata.ctime(), metadata.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (metadata.mode() & 0o7777) as u16,
            nlink: metadata.nlink() as u32,
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: metadata.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn path(&self, inode: u64) -> Option<&Path> {
        self.inodes.get(&inode).map(|entry| entry.path.as_path())
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.path(parent).map(|path| path.join(name))
    }

    /// The parent's path and backing inode number, and the child's path.
    fn child_of(&self, parent: u64, name: &OsStr) -> Option<(u64, PathBuf)> {
        let entry = self.inodes.get(&parent)?;
        Some((entry.backing_inode, entry.path.join(name)))
    }

    /// The journal's own directory in the backing root, which the mount does not show.
    fn is_hidden(parent: u64, name: &OsStr) -> bool {
        parent == FUSE_ROOT_ID && name == journal::HIDDEN
    }

    /// Logs the first refusal at the pending cap (the campaign looks for the line).
    fn cap_reached(&mut self, what: &str) {
        if self.counters.refused_writes + self.counters.refused_namespace_ops == 1 {
            eprintln!(
                "cairn-powerfs: PENDING CAP REACHED: {what}: {} unsynced bytes (cap {}), {} \
                 namespace operations not durable; such calls fail with ENOSPC until a sync",
                self.pending_bytes,
                self.pending_bytes_max,
                self.journal.pending()
            );
        }
    }

    /// Records a namespace operation before it is applied; ENOSPC (errno) past the caps.
    fn begin(&mut self, op: Op, stash_bytes: u64, removed_dir: Option<u64>) -> Result<u64, i32> {
        let begun = if self.pending_bytes + stash_bytes > self.pending_bytes_max {
            Err(libc::ENOSPC)
        } else {
            // ENOSPC from the journal: its entry cap.
            self.journal
                .begin(op, stash_bytes, removed_dir)
                .map_err(|error| errno(&error))
        };
        match begun {
            Ok(id) => {
                self.pending_bytes += stash_bytes;
                self.counters.namespace_ops += 1;
                Ok(id)
            }
            Err(libc::ENOSPC) => {
                self.counters.refused_namespace_ops += 1;
                self.cap_reached("a namespace operation");
                Err(libc::ENOSPC)
            }
            Err(code) => Err(code),
        }
    }

    /// Drops the record of an operation that failed.
    fn abandon(&mut self, id: u64) {
        match self.journal.abandon(id) {
            Ok(bytes) => self.pending_bytes -= bytes,
            Err(error) => eprintln!("cairn-powerfs: journal: {error}"),
        }
    }

    /// Moves the entry at `path` (in the directory with backing inode `parent`) to the stash
    /// and records it; returns the record's id.
    fn stash(
        &mut self,
        parent: u64,
        name: &OsStr,
        other_parent: Option<u64>,
        path: &Path,
        metadata: &std::fs::Metadata,
    ) -> Result<u64, i32> {
        let op = Op::Stash {
            parent,
            name: name.to_os_string(),
            other_parent: other_parent.filter(|other| *other != parent),
        };
        let (bytes, removed_dir) = if metadata.is_dir() {
            (0, Some(metadata.ino()))
        } else {
            (metadata.len(), None)
        };
        let id = self.begin(op, bytes, removed_dir)?;
        if let Err(error) = std::fs::rename(path, self.journal.stash_path(id)) {
            self.abandon(id);
            return Err(errno(&error));
        }
        Ok(id)
    }

    /// Puts a stashed victim back after the operation that stashed it failed.
    fn unstash(&mut self, id: u64, path: &Path) {
        if let Err(error) = std::fs::rename(self.journal.stash_path(id), path) {
            eprintln!(
                "cairn-powerfs: cannot put {} back from the stash: {error}",
                path.display()
            );
        }
        self.abandon(id);
    }

    /// The inode's backing file, opened read-write on first use.
    fn open_file(&mut self, inode: u64) -> io::Result<&mut Inode> {
        let entry = self
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if entry.file.is_none() {
            entry.file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&entry.path)?,
            );
        }
        Ok(entry)
    }

    /// Lets go of the backing file and the inode itself when nothing needs them any more.
    fn settle(&mut self, inode: u64) {
        let Some(entry) = self.inodes.get_mut(&inode) else {
            return;
        };
        if entry.handles > 0 || inode == FUSE_ROOT_ID {
            return;
        }
        if entry.unlinked {
            let released = entry.overlay.as_ref().map_or(0, Overlay::pending_bytes);
            self.pending_bytes -= released;
            self.inodes.remove(&inode);
            self.by_backing.retain(|_, ours| *ours != inode);
        } else if entry.overlay.is_none() {
            entry.file = None;
        }
    }

    /// An entry removed from the namespace (unlink, or replaced by a rename): its unsynced
    /// writes go with it once no handle is open.
    fn forget_path(&mut self, path: &Path) {
        let found: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, entry)| entry.path == path && !entry.unlinked)
            .map(|(inode, _)| *inode)
            .collect();
        for inode in found {
            if let Some(entry) = self.inodes.get_mut(&inode) {
                entry.unlinked = true;
            }
            self.settle(inode);
        }
    }

    /// unlink and rmdir: the entry goes to the stash (until its parent is synced), then
    /// leaves the namespace.
    fn remove_entry(&mut self, parent: u64, name: &OsStr, directory: bool) -> Result<(), i32> {
        if Self::is_hidden(parent, name) {
            return Err(libc::ENOENT);
        }
        let (parent_backing, path) = self.child_of(parent, name).ok_or(libc::ENOENT)?;
        let metadata = std::fs::symlink_metadata(&path).map_err(|error| errno(&error))?;
        match (directory, metadata.is_dir()) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) => {
                let mut listed = std::fs::read_dir(&path).map_err(|error| errno(&error))?;
                if listed.next().is_some() {
                    return Err(libc::ENOTEMPTY);
                }
            }
            (false, false) => {}
        }
        self.stash(parent_backing, name, None, &path, &metadata)?;
        self.forget_path(&path);
        Ok(())
    }

    /// rename(2), with the flags `renameat2` allows (`RENAME_WHITEOUT` is not modelled).
    fn rename_entry(
        &mut self,
        (parent, name): (u64, &OsStr),
        (newparent, newname): (u64, &OsStr),
        flags: u32,
    ) -> Result<(), i32> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(libc::EINVAL);
        }
        if Self::is_hidden(parent, name) || Self::is_hidden(newparent, newname) {
            return Err(libc::EACCES);
        }
        let (Some((from_parent, from)), Some((to_parent, to))) = (
            self.child_of(parent, name),
            self.child_of(newparent, newname),
        ) else {
            return Err(libc::ENOENT);
        };
        let from_metadata = std::fs::symlink_metadata(&from).map_err(|error| errno(&error))?;
        if from == to {
            return Ok(());
        }
        let to_metadata = match std::fs::symlink_metadata(&to) {
            Ok(metadata) => Some(metadata),
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => None,
            Err(error) => return Err(errno(&error)),
        };
        if exchange {
            if to_metadata.is_none() {
                return Err(libc::ENOENT);
            }
            let op = Op::Exchange {
                a_parent: from_parent,
                a_name: name.to_os_string(),
                b_parent: to_parent,
                b_name: newname.to_os_string(),
            };
            let id = self.begin(op, 0, None)?;
            if let Err(error) = journal::exchange(&from, &to) {
                self.abandon(id);
                return Err(errno(&error));
            }
            self.move_paths(&[(&from, &to), (&to, &from)]);
            return Ok(());
        }
        let victim = match to_metadata {
            None => None,
            Some(_) if noreplace => return Err(libc::EEXIST),
            Some(to_metadata) => {
                match (from_metadata.is_dir(), to_metadata.is_dir()) {
                    (false, true) => return Err(libc::EISDIR),
                    (true, false) => return Err(libc::ENOTDIR),
                    (true, true) => {
                        let mut listed = std::fs::read_dir(&to).map_err(|error| errno(&error))?;
                        if listed.next().is_some() {
                            return Err(libc::ENOTEMPTY);
                        }
                    }
                    (false, false) => {}
                }
                // Its removal waits for the same syncs as the rename.
                Some(self.stash(to_parent, newname, Some(from_parent), &to, &to_metadata)?)
            }
        };
        let op = Op::Rename {
            from_parent,
            from_name: name.to_os_string(),
            to_parent,
            to_name: newname.to_os_string(),
        };
        let renamed = self.begin(op, 0, None).and_then(|id| {
            std::fs::rename(&from, &to).map_err(|error| {
                self.abandon(id);
                errno(&error)
            })
        });
        if let Err(code) = renamed {
            if let Some(victim) = victim {
                self.unstash(victim, &to);
            }
            return Err(code);
        }
        if victim.is_some() {
            self.forget_path(&to);
        }
        self.move_paths(&[(&from, &to)]);
        Ok(())
    }

    /// Renames the paths of known inodes at or under each `from` to the same place under its
    /// `to` (all moves at once, for an exchange).
    fn move_paths(&mut self, moves: &[(&Path, &Path)]) {
        for entry in self.inodes.values_mut() {
            if entry.unlinked {
                continue;
            }
            for (from, to) in moves {
                if let Ok(rest) = entry.path.strip_prefix(from) {
                    entry.path = if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    };
                    break;
                }
            }
        }
    }

    /// `fsync`/`fdatasync` of one file: its overlay into the backing file, then a real sync.
    fn sync_inode(&mut self, inode: u64, data_only: bool) -> io::Result<()> {
        let entry = self.open_file(inode)?;
        let released = entry.overlay.as_ref().map_or(0, Overlay::pending_bytes);
        let file = entry.file.as_mut().expect("opened above");
        match entry.overlay.as_mut() {
            Some(overlay) if !overlay.is_clean() => overlay.sync(file, data_only)?,
            _ => file.sync(data_only)?,
        }
        entry.overlay = None;
        self.pending_bytes -= released;
        self.counters.syncs += 1;
        self.settle(inode);
        Ok(())
    }

    fn overlay(&mut self, inode: u64) -> io::Result<&mut Overlay> {
        let entry = self.open_file(inode)?;
        if entry.overlay.is_none() {
            let len = entry.file.as_ref().expect("opened above").metadata()?.len();
            entry.overlay = Some(Overlay::new(len));
        }
        Ok(entry.overlay.as_mut().expect("set above"))
    }

    fn write_at(&mut self, inode: u64, offset: u64, data: &[u8]) -> Result<(), i32> {
        // Counting the whole write (an overwrite may hold fewer bytes) keeps the check simple
        // and errs towards refusing, never towards making anything durable.
        if self.pending_bytes + data.len() as u64 > self.pending_bytes_max {
            self.counters.refused_writes += 1;
            self.cap_reached("a write");
            return Err(libc::ENOSPC);
        }
        let overlay = self.overlay(inode).map_err(|error| errno(&error))?;
        let before = overlay.pending_bytes();
        overlay.write(offset, data);
        let after = overlay.pending_bytes();
        self.pending_bytes = self.pending_bytes + after - before;
        self.counters.writes += 1;
        Ok(())
    }

    fn truncate(&mut self, inode: u64, len: u64) -> io::Result<()> {
        let overlay = self.overlay(inode)?;
        let before = overlay.pending_bytes();
        overlay.truncate(len);
        let after = overlay.pending_bytes();
        self.pending_bytes = self.pending_bytes + after - before;
        Ok(())
    }

    fn new_handle(&mut self, inode: u64) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, inode);
        if let Some(entry) = self.inodes.get_mut(&inode) {
            entry.handles += 1;
        }
        handle
    }
}

impl Inode {
    fn at(path: PathBuf, backing_inode: u64) -> Inode {
        Inode {
            path,
            backing_inode,
            file: None,
            overlay: None,
            handles: 0,
            unlinked: false,
        }
    }
}

impl Filesystem for PowerFs {
    fn destroy(&mut self) {
        eprintln!(
            "cairn-powerfs: {} writes, {} syncs, {} writes refused at the cap, {} bytes still \
             unsynced at unmount (lost); {} namespace operations undone at start, {} made, {} \
             refused at the cap, {} not durable at unmount (undone at the next start)",
            self.counters.writes,
            self.counters.syncs,
            self.counters.refused_writes,
            self.pending_bytes,
            self.counters.undone_at_start,
            self.counters.namespace_ops,
            self.counters.refused_namespace_ops,
            self.journal.pending()
        );
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if Self::is_hidden(parent, name) {
            return reply.error(libc::ENOENT);
        }
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) => {
                let inode = self.register(path, metadata.ino());
                match self.attr(inode) {
                    Ok(attr) => reply.entry(&TTL, &attr, 0),
                    Err(error) => reply.error(errno(&error)),
                }
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(path) = self.path(ino).map(Path::to_path_buf) else {
            return reply.error(libc::ENOENT);
        };
        let result = (|| {
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&path, uid, gid)?;
            }
            if let Some(size) = size {
                self.truncate(ino, size)?;
            }
            // Times are not modelled (nothing in a node depends on them).
            self.attr(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if Self::is_hidden(parent, name) {
            return reply.error(libc::EACCES);
        }
        let Some((parent_backing, path)) = self.child_of(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        if std::fs::symlink_metadata(&path).is_ok() {
            return reply.error(libc::EEXIST);
        }
        let op = Op::Create {
            parent: parent_backing,
            name: name.to_os_string(),
        };
        let id = match self.begin(op, 0, None) {
            Ok(id) => id,
            Err(code) => return reply.error(code),
        };
        let result = std::fs::create_dir(&path)
            .and_then(|()| {
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(mode & !umask & 0o7777),
                )
            })
            .and_then(|()| std::fs::symlink_metadata(&path));
        if result.is_err() {
            // Never created, or created and removed by the record's undo at the next start.
            let _ = std::fs::remove_dir(&path);
            self.abandon(id);
        }
        match result {
            Ok(metadata) => {
                let inode = self.register(path, metadata.ino());
                match self.attr(inode) {
                    Ok(attr) => reply.entry(&TTL, &attr, 0),
                    Err(error) => reply.error(errno(&error)),
                }
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_entry(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(code),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_entry(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(code),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match self.rename_entry((parent, name), (newparent, newname), flags) {
            Ok(()) => reply.ok(),
            Err(code) => reply.error(code),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        // O_TRUNC reaches us as a setattr of the size (no atomic_o_trunc), so it is modelled.
        match self.open_file(ino) {
            Ok(_) => {
                let handle = self.new_handle(ino);
                reply.opened(handle, 0);
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if Self::is_hidden(parent, name) {
            return reply.error(libc::EACCES);
        }
        let Some((parent_backing, path)) = self.child_of(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        // Only a new name is recorded (the daemon runs one operation at a time).
        let created = if std::fs::symlink_metadata(&path).is_err() {
            let op = Op::Create {
                parent: parent_backing,
                name: name.to_os_string(),
            };
            match self.begin(op, 0, None) {
                Ok(id) => Some(id),
                Err(code) => return reply.error(code),
            }
        } else {
            None
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let opened = options
            .open(&path)
            .and_then(|file| file.metadata().map(|metadata| (file, metadata)));
        let (file, metadata) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                if let Some(id) = created {
                    let _ = std::fs::remove_file(&path);
                    self.abandon(id);
                }
                return reply.error(errno(&error));
            }
        };
        let inode = self.register(path, metadata.ino());
        if let Some(entry) = self.inodes.get_mut(&inode) {
            if entry.file.is_none() {
                entry.file = Some(file);
            }
        }
        // A file that existed is truncated by the kernel's setattr when O_TRUNC asks.
        let handle = self.new_handle(inode);
        match self.attr(inode) {
            Ok(attr) => reply.created(&TTL, &attr, 0, handle, 0),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = offset.max(0) as u64;
        let result = self.open_file(ino).and_then(|entry| {
            let file = entry.file.as_ref().expect("opened above");
            match &entry.overlay {
                Some(overlay) => overlay.read(file, offset, size),
                None => {
                    let mut buf = vec![0u8; size as usize];
                    let read = Backing::read_at(file, &mut buf, offset)?;
                    buf.truncate(read);
                    Ok(buf)
                }
            }
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.write_at(ino, offset.max(0) as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(code) => reply.error(code),
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(inode) = self.handles.remove(&fh) {
            if let Some(entry) = self.inodes.get_mut(&inode) {
                entry.handles = entry.handles.saturating_sub(1);
            }
            self.settle(inode);
        }
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, datasync: bool, reply: ReplyEmpty) {
        match self.sync_inode(ino, datasync) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(path) = self.path(ino).map(Path::to_path_buf) else {
            return reply.error(libc::ENOENT);
        };
        let listed = match std::fs::read_dir(&path) {
            Ok(listed) => listed,
            Err(error) => return reply.error(errno(&error)),
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for item in listed.flatten() {
            use std::os::unix::fs::DirEntryExt;
            if Self::is_hidden(ino, &item.file_name()) {
                continue;
            }
            let kind = match item.file_type() {
                Ok(kind) if kind.is_dir() => FileType::Directory,
                Ok(kind) if kind.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let inode = self.register(item.path(), item.ino());
            entries.push((inode, kind, item.file_name()));
        }
        for (index, (inode, kind, name)) in
            entries.into_iter().enumerate().skip(offset.max(0) as usize)
        {
            if reply.add(inode, index as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace operation in this directory so far now waits for one directory
        // fewer; those waiting for none are durable.
        let Some(entry) = self.inodes.get(&ino) else {
            return reply.error(libc::ENOENT);
        };
        let backing_inode = entry.backing_inode;
        let result = File::open(&entry.path)
            .and_then(|dir| dir.sync_all())
            .and_then(|()| self.journal.dir_synced(backing_inode));
        match result {
            Ok(settled) => {
                self.pending_bytes -= settled.stash_bytes;
                self.counters.syncs += 1;
                reply.ok()
            }
            Err(error) => reply.error(errno(&error)),
        }
    }
}
