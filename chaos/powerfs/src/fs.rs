//! The FUSE filesystem: a passthrough to a backing directory whose file writes stay in memory
//! ([`Overlay`]) until the file is `fsync`ed or `fdatasync`ed.
//!
//! Namespace operations (create, mkdir, rename, unlink, rmdir, chmod, chown) go to the backing
//! directory at once: they are modelled as durable immediately, which is kinder than a real
//! filesystem (there they are durable only after an `fsync` of the parent directory). File
//! contents and lengths are modelled strictly: every byte not covered by a sync of its file is
//! lost with the process's memory.

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
}

pub struct PowerFs {
    inodes: HashMap<u64, Inode>,
    /// Backing inode number to ours (the kernel's root is always 1).
    by_backing: HashMap<u64, u64>,
    next_inode: u64,
    handles: HashMap<u64, u64>,
    next_handle: u64,
    pending_bytes: u64,
    pending_bytes_max: u64,
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
    pub fn new(root: PathBuf, pending_bytes_max: u64) -> io::Result<PowerFs> {
        let metadata = std::fs::metadata(&root)?;
        let mut fs = PowerFs {
            inodes: HashMap::new(),
            by_backing: HashMap::new(),
            next_inode: FUSE_ROOT_ID + 1,
            handles: HashMap::new(),
            next_handle: 1,
            pending_bytes: 0,
            pending_bytes_max,
            counters: Counters::default(),
        };
        fs.by_backing.insert(metadata.ino(), FUSE_ROOT_ID);
        fs.inodes.insert(FUSE_ROOT_ID, Inode::at(root));
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
        self.inodes.insert(inode, Inode::at(path));
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

    /// unlink and rmdir: `remove` on the backing path, then the entry leaves the namespace.
    fn remove_entry(
        &mut self,
        parent: u64,
        name: &OsStr,
        remove: fn(&Path) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match remove(&path) {
            Ok(()) => {
                self.forget_path(&path);
                reply.ok();
            }
            Err(error) => reply.error(errno(&error)),
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
            if self.counters.refused_writes == 1 {
                eprintln!(
                    "cairn-powerfs: PENDING CAP REACHED: {} unsynced bytes, cap {}; writes fail \
                     with ENOSPC until a sync",
                    self.pending_bytes, self.pending_bytes_max
                );
            }
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
    fn at(path: PathBuf) -> Inode {
        Inode {
            path,
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
             unsynced at unmount (lost)",
            self.counters.writes,
            self.counters.syncs,
            self.counters.refused_writes,
            self.pending_bytes
        );
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
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
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        let result = std::fs::create_dir(&path)
            .and_then(|()| {
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(mode & !umask & 0o7777),
                )
            })
            .and_then(|()| std::fs::symlink_metadata(&path));
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
        self.remove_entry(parent, name, |path| std::fs::remove_file(path), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove_entry(parent, name, |path| std::fs::remove_dir(path), reply);
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
        // RENAME_NOREPLACE and RENAME_EXCHANGE are not modelled.
        if flags != 0 {
            return reply.error(libc::EINVAL);
        }
        let (Some(from), Some(to)) = (self.child(parent, name), self.child(newparent, newname))
        else {
            return reply.error(libc::ENOENT);
        };
        if let Err(error) = std::fs::rename(&from, &to) {
            return reply.error(errno(&error));
        }
        if from != to {
            self.forget_path(&to);
            for entry in self.inodes.values_mut() {
                if entry.unlinked {
                    continue;
                }
                if let Ok(rest) = entry.path.strip_prefix(&from) {
                    entry.path = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                }
            }
        }
        reply.ok();
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
        let Some(path) = self.child(parent, name) else {
            return reply.error(libc::ENOENT);
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
            Err(error) => return reply.error(errno(&error)),
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
        // Namespace changes were applied at once; sync the backing directory all the same.
        let result = self
            .path(ino)
            .map(|path| File::open(path).and_then(|dir| dir.sync_all()));
        match result {
            Some(Ok(())) => {
                self.counters.syncs += 1;
                reply.ok()
            }
            Some(Err(error)) => reply.error(errno(&error)),
            None => reply.error(libc::ENOENT),
        }
    }
}
