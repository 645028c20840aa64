//! The partition log on sled: one database per node, three trees per log.
//!
//! Tree names are `data/<log>` (base offset, big-endian u64 -> whole batch bytes, one value
//! per batch so a range read is a sequential scan), `meta/<log>` (log start, promised epoch,
//! epoch history, size counter, caller values) and `time/<log>` (running maximum timestamp ->
//! base offset). The rules live in the private `core` module; this file only maps them onto trees.
//!
//! Durability ([`Durability`]): sled 0.34's `flush` writes its log and waits for `sync_file_range`,
//! which survives a process kill but not a power cut (sled issue 1452): neither the file's block
//! map nor the disk's write cache is flushed, and blob files (pages over a quarter segment: 512 KiB
//! with the store's 2 MiB segments, 128 KiB with sled's own) and new directory entries are never
//! synced at all. With [`Durability::Flush`] the store opens sled with the Cairn patch
//! `flush_to_kernel` (vendor/sled/PATCHES.md, "A flush hands its writes to the kernel"): the flush
//! returns once the log write is in the kernel (its writeback is started in batches of 1 MiB or 50
//! ms, by sled's `sled-writeback` thread, and not waited for: "Writeback hints off the writing
//! thread"), which promises the same (a process kill loses nothing the kernel holds) without
//! waiting for the device, nor for the kernel's writeback throttling. With
//! [`Durability::Fsync`] the store opens sled with the Cairn patch `power_loss_durable`
//! (vendor/sled/PATCHES.md, "Power-loss durability"): each log write `fdatasync`s the blob
//! files written since the previous one and `fsync`s their directory, then writes and
//! `fdatasync`s the log, so a flush that returned covers every byte of every append
//! before it; the watermark file and its directory are `fsync`ed too, on a thread of their own
//! while sled syncs (see [`crate::watermark`]). It stays grouped: the
//! [`GroupCommitter`](crate::GroupCommitter) runs one flush for every append that arrived during
//! the previous one, so one round of syncs covers them all. What each mode costs in the 3-node
//! benchmark is in benches/results/durability-2026-12-04.md. sled's own periodic flusher is
//! switched off (`flush_every_ms = None`): durability is only ever claimed after our explicit
//! flush, the group committer flushes continuously under load, and a second flusher would only
//! contend with it. Unflushed writes still leave memory when sled's write buffers fill, so nothing
//! grows without bound.
//!
//! The store opens sled with the Cairn patch `drop_written_pages` (vendor/sled/PATCHES.md,
//! "Written pages leave the page cache"): the log's and the blob files' pages leave the
//! kernel's page cache once they are on disk, since sled caches what it reads itself. The
//! node's files then take no more of the page cache than is in flight, and a write reuses
//! pages just freed instead of taking new ones from free memory, which on a virtual machine
//! whose host takes free memory back costs a host page fault per page. It also opens sled
//! with `background_segment_cleaning` ("Segment cleaning off the append path"): pages still
//! live in a log segment being cleaned are rewritten by sled's `sled-cleaner` thread, paced,
//! instead of inside the append that happens to come next, unless 2 GiB of segments wait
//! for it.
//!
//! sled keeps the database locked while any `Db` or `Tree` clone is alive: drop the store and
//! every [`SledLog`] before opening the same directory again.
//!
//! A failed write (a full disk) is final for a sled database: its flusher stores the error
//! and every later write and flush returns it, while reads go on. So after a failed flush the
//! next [`LogStore::flush`] first reopens the database (every log lets go of its trees and
//! reloads them, and its state, on its next call), and fails again until sled can open and
//! flush the files. What was flushed before the failure survives; the writes that failed
//! were never reported durable. `tests/full_disk.rs` runs this on a full tmpfs.

use crate::core::{time_from_key, time_key, u64_from_bytes, Backend, LogState};
use crate::watermark::{PendingWrite, Watermark, WatermarkFile, WatermarkTable, WatermarkWriter};
use crate::{EpochStart, LogStore, PartitionLog, RetentionPolicy, StorageError};
use bytes::Bytes;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::{Epoch, Offset};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

const DATA_PREFIX: &str = "data/";
const META_PREFIX: &str = "meta/";
const TIME_PREFIX: &str = "time/";

/// What an acknowledged flush promises (`storage.durability` in the node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled's flush: the log is written to the kernel (its writeback started in batches, not
    /// waited for), blob files are left to the kernel. Survives a process kill; a crash of the
    /// operating system or a power cut can lose flushed writes.
    #[default]
    Flush,
    /// Every byte a flush covers is on the disk: blob files, the log and the watermark file
    /// `fdatasync`ed, the directories of new and renamed files `fsync`ed. Survives power loss.
    Fsync,
}

impl Durability {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Flush => "flush",
            Durability::Fsync => "fsync",
        }
    }
}

/// Syncs the store's sled database made since it was opened in this process
/// ([`Durability::Fsync`] only; all zero with [`Durability::Flush`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Blob files `fdatasync`ed.
    pub blob_syncs: u64,
    /// Directories `fsync`ed (`blobs/` after new blobs, the database's after a snapshot).
    pub directory_syncs: u64,
    /// Log writes `fdatasync`ed.
    pub log_syncs: u64,
    /// Blob files written and not yet synced: those written since the last log write, by
    /// appends or by sled's cleaner thread, which may write one at any time.
    pub unsynced_blobs: u64,
    /// Blob files written so far, numbered in order: the newest one's number.
    pub blobs_written: u64,
    /// Every blob file up to this number is synced. A flush requested when `blobs_written`
    /// was N returns with this at least N.
    pub blobs_synced_through: u64,
}

/// How many bytes of log segments may wait for sled's `sled-cleaner` thread before appends
/// clean them again themselves (vendor/sled/PATCHES.md, "Segment cleaning off the append
/// path"). A safety net for a starved thread, not a throttle: a 1 GiB compaction fill leaves
/// hundreds of segments to clean, and at sled's default (64) appends cleaned fill leaves
/// again, which is what made the publish p99 after a fill 240 ms.
const CLEANING_BACKLOG_BYTES: usize = 2 << 30;

/// [`CLEANING_BACKLOG_BYTES`] in segments of `segment_bytes`.
fn cleaning_backlog_segments(segment_bytes: usize) -> usize {
    (CLEANING_BACKLOG_BYTES / segment_bytes.max(1)).max(64)
}

/// How the node's sled database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledConfig {
    /// sled's page cache. 64 MiB keeps the recent tail of every log hot for consumers that
    /// are nearly caught up without taking much of a small machine: on the 3-node benchmark
    /// 16 MiB halved rf3-1kb-max's records/s (benches/results/cache-2026-12-05.md).
    pub cache_capacity_bytes: u64,
    /// What a flush promises (see the module comment). [`Durability::Flush`] by default.
    pub durability: Durability,
    /// When sled cannot open the database because its files are damaged (it reports
    /// corruption, or panics: random bytes in its log make it do either), move the directory
    /// aside to `<path>.damaged-<unix ms>` and start an empty database instead, keeping the
    /// watermarks, so that every replica opens shorter than its watermark and repairs
    /// from its peers (see [`SledStore::rebuilt_from`]). Off: the open fails.
    pub rebuild_when_damaged: bool,
    /// The size of sled's log segments and write buffers, for a new database (a power of two,
    /// 256 bytes to 16 MiB, or the open fails); an existing one keeps the size it was made
    /// with (vendor/sled/PATCHES.md, "An existing database keeps its segment size"). A page
    /// larger than a quarter of it goes to a blob file of its own, a file created, written
    /// and later released. [`SEGMENT_BYTES_DEFAULT`] by default.
    pub segment_bytes: usize,
}

/// 2 MiB segments: a leaf up to 512 KiB, several of a partition's recent batches, stays in
/// the log instead of a blob file. With sled's 512 KiB a node at 65,000 records/s made about
/// 270 blob files a second (its blob-release thread alone took 4% of the machine's CPU), and
/// the publish p99 there was 8.5-15.3 ms against 4.4-9.5 ms with 2 MiB in 9 alternating
/// rounds (benches/results/segments-2026-12-06.md).
pub const SEGMENT_BYTES_DEFAULT: usize = 2 * 1024 * 1024;

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            cache_capacity_bytes: 64 * 1024 * 1024,
            durability: Durability::default(),
            rebuild_when_damaged: false,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

fn io(error: impl std::fmt::Display) -> StorageError {
    StorageError::Io(error.to_string())
}

fn to_bytes(value: sled::IVec) -> Bytes {
    Bytes::from_owner(value)
}

fn offset_entry(
    entry: Option<(sled::IVec, sled::IVec)>,
) -> Result<Option<(Offset, Bytes)>, StorageError> {
    match entry {
        None => Ok(None),
        Some((key, value)) => {
            let offset = u64_from_bytes(&key)
                .ok_or_else(|| StorageError::Io("data key is not 8 bytes".to_owned()))?;
            Ok(Some((Offset(offset), to_bytes(value))))
        }
    }
}

fn time_entry(
    entry: Option<(sled::IVec, sled::IVec)>,
) -> Result<Option<(i64, Offset)>, StorageError> {
    match entry {
        None => Ok(None),
        Some((key, value)) => {
            let (Some(timestamp_ms), Some(offset)) = (time_from_key(&key), u64_from_bytes(&value))
            else {
                return Err(StorageError::Io("time index entry is malformed".to_owned()));
            };
            Ok(Some((timestamp_ms, Offset(offset))))
        }
    }
}

/// The log's trees. Cloning shares them (a sled tree is a handle).
#[derive(Clone)]
struct SledBackend {
    data: sled::Tree,
    meta: sled::Tree,
    time: sled::Tree,
}

impl Backend for SledBackend {
    fn data_first(&self) -> Result<Option<(Offset, Bytes)>, StorageError> {
        offset_entry(self.data.first().map_err(io)?)
    }

    fn data_last(&self) -> Result<Option<(Offset, Bytes)>, StorageError> {
        offset_entry(self.data.last().map_err(io)?)
    }

    fn data_floor(&self, offset: Offset) -> Result<Option<(Offset, Bytes)>, StorageError> {
        let entry = self
            .data
            .range(..=offset.0.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(io)?;
        offset_entry(entry)
    }

    fn data_visit(
        &self,
        from: Offset,
        visit: &mut dyn FnMut(Offset, Bytes) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        for entry in self.data.range(from.0.to_be_bytes()..) {
            let (offset, bytes) = offset_entry(Some(entry.map_err(io)?))?.expect("an entry");
            if !visit(offset, bytes)? {
                break;
            }
        }
        Ok(())
    }

    fn data_put(&mut self, offset: Offset, bytes: &Bytes) -> Result<(), StorageError> {
        self.data
            .insert(offset.0.to_be_bytes(), &bytes[..])
            .map_err(io)?;
        Ok(())
    }

    fn data_remove(&mut self, offset: Offset) -> Result<(), StorageError> {
        self.data.remove(offset.0.to_be_bytes()).map_err(io)?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self.meta.get(key).map_err(io)?.map(to_bytes))
    }

    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.meta.insert(key, value).map_err(io)?;
        Ok(())
    }

    fn time_first(&self) -> Result<Option<(i64, Offset)>, StorageError> {
        time_entry(self.time.first().map_err(io)?)
    }

    fn time_last(&self) -> Result<Option<(i64, Offset)>, StorageError> {
        time_entry(self.time.last().map_err(io)?)
    }

    fn time_ceiling(&self, timestamp_ms: i64) -> Result<Option<(i64, Offset)>, StorageError> {
        let entry = self
            .time
            .range(time_key(timestamp_ms)..)
            .next()
            .transpose()
            .map_err(io)?;
        time_entry(entry)
    }

    fn time_put(&mut self, timestamp_ms: i64, offset: Offset) -> Result<(), StorageError> {
        self.time
            .insert(time_key(timestamp_ms), &offset.0.to_be_bytes())
            .map_err(io)?;
        Ok(())
    }

    fn time_remove(&mut self, timestamp_ms: i64) -> Result<(), StorageError> {
        self.time.remove(time_key(timestamp_ms)).map_err(io)?;
        Ok(())
    }
}

struct SledLogInner {
    name: String,
    state: LogState,
    /// `None` while the store reopens its database (see [`SledStore::reopen`]).
    backend: Option<SledBackend>,
    /// The store's database generation the backend and state were read from.
    generation: u64,
    store: Arc<SledStoreInner>,
    /// The store's table, shared by every log: this log's entry lives there.
    watermarks: Arc<Mutex<WatermarkTable>>,
    /// Set by `remove_log`: the trees are gone, every later call is refused.
    removed: bool,
}

struct SledStoreInner {
    /// `None` only while [`SledStore::reopen`] replaces it.
    db: RwLock<Option<sled::Db>>,
    /// Bumped by every reopen: logs read before it reload their trees and state.
    generation: AtomicU64,
    /// A flush failed: sled keeps its first write error for good (its flusher records it and
    /// every later write and flush returns it), so the next flush reopens the database first.
    failed: AtomicBool,
    sled_config: sled::Config,
    /// Logs currently open, so that two handles of one log share one cached state.
    open_logs: Mutex<HashMap<String, Weak<Mutex<SledLogInner>>>>,
    /// Every log's watermark, and the file that keeps them (rewritten by `flush`).
    watermarks: Arc<Mutex<WatermarkTable>>,
    watermark_path: PathBuf,
    /// Writes the file beside each flush's database syncs.
    watermark_writer: WatermarkWriter,
    /// Where the damaged database was moved when this store had to start empty.
    rebuilt_from: Option<PathBuf>,
}

impl SledStoreInner {
    /// A handle on the current database (sled handles are cheap clones).
    fn db(&self) -> Result<sled::Db, StorageError> {
        self.db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| StorageError::Io("the database is being reopened".to_owned()))
    }

    fn open_backend(&self, name: &str) -> Result<SledBackend, StorageError> {
        let db = self.db()?;
        Ok(SledBackend {
            meta: db.open_tree(format!("{META_PREFIX}{name}")).map_err(io)?,
            time: db.open_tree(format!("{TIME_PREFIX}{name}")).map_err(io)?,
            // The data tree last: its presence is what lists a log in `log_names`.
            data: db.open_tree(data_tree_name(name)).map_err(io)?,
        })
    }
}

fn lock_table(table: &Mutex<WatermarkTable>) -> MutexGuard<'_, WatermarkTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a failed open means damaged files (worth a rebuild) rather than an environment
/// problem (permissions, a lock held by another process), which a rebuild would not fix.
/// sled calls a database whose config file it cannot parse "unsupported" (made by an older
/// sled); a store that has a watermark file was written by this version, so for it that can
/// only mean damage.
fn damaged_files(error: &sled::Error, written_by_us: bool) -> bool {
    match error {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
        sled::Error::Unsupported(_) => written_by_us,
        _ => false,
    }
}

/// Opens sled, turning a panic inside its recovery into an error: damaged files make sled
/// 0.34 panic as often as they make it report corruption.
fn open_sled(config: &sled::Config, written_by_us: bool) -> Result<sled::Db, (String, bool)> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(error)) => Err((error.to_string(), damaged_files(&error, written_by_us))),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err((format!("sled panicked while recovering: {message}"), true))
        }
    }
}

/// One sled database holding every partition log of a node. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<SledStoreInner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Sets, for every store of the process, how many bytes of disk blocks a second the
    /// background release of replaced blob files frees at most (0: unpaced; sled's default
    /// is 32 MiB/s). A node gives it its compaction budget: compaction's rewrites replace
    /// blobs, and freeing their blocks costs the device a discard on file systems mounted with
    /// `discard` (vendor/sled/PATCHES.md, "Blob releases in the background").
    pub fn set_blob_release_bytes_per_second(bytes_per_second: u64) {
        sled::set_blob_release_bytes_per_second(bytes_per_second);
    }

    /// Opens (or creates) the database in `path` with [`SledConfig::default`].
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StorageError> {
        SledStore::open_with(path, SledConfig::default())
    }

    pub fn open_with(
        path: impl AsRef<Path>,
        config: SledConfig,
    ) -> Result<SledStore, StorageError> {
        let path = path.as_ref();
        let fsync = config.durability == Durability::Fsync;
        let mut watermark_file = WatermarkFile::inside(path, fsync);
        let mut watermarks = watermark_file.load()?;
        let sled_config = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity_bytes)
            .segment_size(config.segment_bytes)
            .power_loss_durable(fsync)
            .flush_to_kernel(!fsync)
            .drop_written_pages(true)
            .background_segment_cleaning(true)
            .segment_cleaning_backlog(cleaning_backlog_segments(config.segment_bytes))
            .flush_every_ms(None);
        let mut rebuilt_from = None;
        let written_by_us = watermark_file.path().exists();
        let db = match open_sled(&sled_config, written_by_us) {
            Ok(db) => db,
            Err((reason, damaged)) if damaged && config.rebuild_when_damaged => {
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_millis())
                    .unwrap_or(0);
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".damaged-{unix_ms}"));
                let aside = PathBuf::from(aside);
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    %reason,
                    "the database is damaged and cannot be opened: it is moved aside and every \
                     replica starts empty, to be repaired from its peers"
                );
                std::fs::rename(path, &aside).map_err(io)?;
                rebuilt_from = Some(aside);
                let db = open_sled(&sled_config, false)
                    .map_err(|(reason, _)| StorageError::Io(reason))?;
                // The watermarks moved aside with the database; the new one keeps them, in a
                // file of its own (the open one went aside too).
                watermark_file = WatermarkFile::inside(path, fsync);
                watermarks.dirty = true;
                watermark_file.store(&mut watermarks)?;
                db
            }
            Err((reason, _)) => return Err(StorageError::Io(reason)),
        };
        Ok(SledStore {
            inner: Arc::new(SledStoreInner {
                db: RwLock::new(Some(db)),
                generation: AtomicU64::new(0),
                failed: AtomicBool::new(false),
                sled_config,
                open_logs: Mutex::new(HashMap::new()),
                watermarks: Arc::new(Mutex::new(watermarks)),
                watermark_path: watermark_file.path().to_owned(),
                watermark_writer: WatermarkWriter::start(watermark_file)?,
                rebuilt_from,
            }),
        })
    }

    /// Where the damaged database went, when [`SledConfig::rebuild_when_damaged`] had to
    /// start this store empty; `None` after a normal open.
    pub fn rebuilt_from(&self) -> Option<&Path> {
        self.inner.rebuilt_from.as_deref()
    }

    /// The syncs made so far (see [`SyncCounters`]).
    pub fn sync_counters(&self) -> SyncCounters {
        let counters = sled::durability_counters(&self.inner.sled_config.get_path());
        SyncCounters {
            blob_syncs: counters.blob_syncs,
            directory_syncs: counters.directory_syncs,
            log_syncs: counters.log_syncs,
            unsynced_blobs: counters.unsynced_blobs,
            blobs_written: counters.blobs_written,
            blobs_synced_through: counters.blobs_synced_through,
        }
    }

    /// The watermark file (see [`crate::watermark`]).
    pub fn watermark_path(&self) -> &Path {
        &self.inner.watermark_path
    }

    fn open_logs(&self) -> MutexGuard<'_, HashMap<String, Weak<Mutex<SledLogInner>>>> {
        self.inner
            .open_logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn db(&self) -> sled::Db {
        self.inner.db().unwrap()
    }

    /// Replaces the database after a failed write (a full disk): sled cannot recover from one
    /// within a process, so every handle is let go, the files are opened again (sled recovers
    /// what was flushed; unflushed writes, never reported durable, are gone) and each log
    /// reloads its trees and state on its next call. Fails, leaving the store to be reopened
    /// by a later flush, while sled cannot open the files (the disk may still be full).
    fn reopen(&self) -> Result<(), StorageError> {
        let old = self
            .inner
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        // Every tree handle keeps the old database open (and its files locked).
        for log in self.open_logs().values().filter_map(Weak::upgrade) {
            log.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .backend = None;
        }
        drop(old);
        let db = open_sled(&self.inner.sled_config, true)
            .map_err(|(reason, _)| StorageError::Io(format!("cannot reopen: {reason}")))?;
        *self
            .inner
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(db);
        self.inner.failed.store(false, Ordering::Release);
        tracing::warn!("the database was reopened after a failed write");
        Ok(())
    }
}

fn data_tree_name(name: &str) -> String {
    format!("{DATA_PREFIX}{name}")
}

impl LogStore for SledStore {
    type Log = SledLog;

    fn open_log(&self, name: &str) -> Result<SledLog, StorageError> {
        let mut open_logs = self.open_logs();
        if let Some(shared) = open_logs.get(name).and_then(Weak::upgrade) {
            return Ok(SledLog { shared });
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let mut backend = self.inner.open_backend(name)?;
        let mut state = LogState::open(&mut backend)?;
        let watermark = lock_table(&self.inner.watermarks).get(name);
        state.promised_epoch = state.promised_epoch.max(watermark.promised_epoch);
        let shared = Arc::new(Mutex::new(SledLogInner {
            name: name.to_owned(),
            state,
            backend: Some(backend),
            generation,
            store: Arc::clone(&self.inner),
            watermarks: Arc::clone(&self.inner.watermarks),
            removed: false,
        }));
        open_logs.retain(|_, log| log.strong_count() > 0);
        open_logs.insert(name.to_owned(), Arc::downgrade(&shared));
        Ok(SledLog { shared })
    }

    fn remove_log(&self, name: &str) -> Result<(), StorageError> {
        let mut open_logs = self.open_logs();
        if let Some(shared) = open_logs.remove(name).and_then(|log| log.upgrade()) {
            shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .removed = true;
        }
        lock_table(&self.inner.watermarks).remove(name);
        let db = self.inner.db()?;
        // The data tree first, so that a crash part-way leaves the log unlisted.
        db.drop_tree(data_tree_name(name)).map_err(io)?;
        db.drop_tree(format!("{META_PREFIX}{name}")).map_err(io)?;
        db.drop_tree(format!("{TIME_PREFIX}{name}")).map_err(io)?;
        Ok(())
    }

    fn log_names(&self) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = self
            .inner
            .db()?
            .tree_names()
            .iter()
            .filter_map(|tree| std::str::from_utf8(tree).ok())
            .filter_map(|tree| tree.strip_prefix(DATA_PREFIX))
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }

    fn flush(&self) -> Result<(), StorageError> {
        if self.inner.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let db = self.inner.db()?;
        // The table as it stands names only what earlier flushes made durable, so its file is
        // written beside this flush rather than after it (see `WatermarkWriter`).
        let watermarks = self
            .inner
            .watermark_writer
            .begin(&mut lock_table(&self.inner.watermarks));
        // With `Durability::Fsync`, sled's patched flush has synced blobs, their directory
        // and the log when it returns.
        let flushed = db.flush();
        let written = watermarks.map_or(Ok(()), PendingWrite::wait);
        if written.is_err() {
            lock_table(&self.inner.watermarks).dirty = true;
        }
        if let Err(error) = flushed {
            self.inner.failed.store(true, Ordering::Release);
            return Err(io(error));
        }
        written
    }

    fn engine_stats(&self) -> crate::EngineStats {
        let mut stats = crate::EngineStats {
            syncs: self.sync_counters(),
            ..crate::EngineStats::default()
        };
        // While the database is being reopened there is nothing to count but the syncs.
        if let Ok(db) = self.inner.db() {
            let pagecache = &db.context.pagecache;
            let (by_writes, in_background) = pagecache.segment_cleaning_counters();
            stats.cleaning_backlog_segments = pagecache.segment_cleaning_backlog() as u64;
            stats.pages_cleaned_by_writes = by_writes;
            stats.pages_cleaned_in_background = in_background;
        }
        stats
    }
}

/// One partition log in a [`SledStore`]. Handles of one log share their state.
pub struct SledLog {
    shared: Arc<Mutex<SledLogInner>>,
}

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog").finish_non_exhaustive()
    }
}

impl SledLog {
    /// Locks the log, first reloading its trees and state if the store reopened its
    /// database since they were read (the cached state may count writes that were lost).
    fn lock(&self) -> MutexGuard<'_, SledLogInner> {
        let mut guard = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = &mut *guard;
        let generation = inner.store.generation.load(Ordering::Acquire);
        if !inner.removed && inner.generation != generation {
            inner.backend = None;
            let reloaded = inner
                .store
                .open_backend(&inner.name)
                .and_then(|mut backend| {
                    let state = LogState::open(&mut backend)?;
                    Ok((backend, state))
                });
            if let Ok((backend, mut state)) = reloaded {
                let watermark = lock_table(&inner.watermarks).get(&inner.name);
                state.promised_epoch = state.promised_epoch.max(watermark.promised_epoch);
                inner.state = state;
                inner.backend = Some(backend);
                inner.generation = generation;
            }
        }
        guard
    }

    /// Runs `operation` unless the log was removed or its store is being reopened.
    fn with<T>(
        &self,
        operation: impl FnOnce(&mut LogState, &mut SledBackend) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.removed {
            return Err(StorageError::Io(format!("log {} was removed", inner.name)));
        }
        let Some(backend) = inner.backend.as_mut() else {
            return Err(StorageError::Io(format!(
                "log {}: the database is being reopened",
                inner.name
            )));
        };
        operation(&mut inner.state, backend)
    }
}

impl PartitionLog for SledLog {
    fn log_start(&self) -> Offset {
        self.lock().state.log_start
    }

    fn log_end(&self) -> Offset {
        self.lock().state.log_end
    }

    fn append(&mut self, batch: &RecordBatch) -> Result<Offset, StorageError> {
        self.with(|state, backend| state.append(backend, batch))
    }

    fn replace_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        self.with(|state, backend| state.replace_batch(backend, batch))
    }

    fn read(
        &self,
        from: Offset,
        until: Offset,
        max_bytes: usize,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        self.with(|state, backend| state.read(backend, from, until, max_bytes))
    }

    fn read_detached(
        &self,
        from: Offset,
        until: Offset,
        max_bytes: usize,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        // The state and tree handles as of now, then the scan without the lock.
        let (state, backend, generation) = {
            let guard = self.lock();
            match (&guard.backend, guard.removed) {
                (Some(backend), false) => (guard.state.clone(), backend.clone(), guard.generation),
                _ => return self.read(from, until, max_bytes),
            }
        };
        let read = state.read(&backend, from, until, max_bytes);
        // A writer that moved the log meanwhile can show as a gap or a stamp the copied
        // epoch history does not know; a reopened store may hold less than the copied trees.
        // Either way, read again under the lock, which sees the log as it is.
        let moved = {
            let guard = self.lock();
            guard.generation != generation
                || guard.state.log_start != state.log_start
                || guard.state.log_end < state.log_end
                || guard.state.epoch_history != state.epoch_history
        };
        match read {
            Ok(batches) if !moved => Ok(batches),
            _ => self.read(from, until, max_bytes),
        }
    }

    fn truncate_suffix(&mut self, from: Offset) -> Result<(), StorageError> {
        self.with(|state, backend| state.truncate_suffix(backend, from))
    }

    fn reset_start(&mut self, start: Offset, epoch: Epoch) -> Result<(), StorageError> {
        self.with(|state, backend| state.reset_start(backend, start, epoch))
    }

    fn apply_retention(
        &mut self,
        policy: RetentionPolicy,
        now_ms: i64,
        keep_from: Offset,
    ) -> Result<Offset, StorageError> {
        self.with(|state, backend| state.apply_retention(backend, policy, now_ms, keep_from))
    }

    fn size_bytes(&self) -> u64 {
        self.lock().state.size_bytes
    }

    fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        until: Offset,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        self.with(|state, backend| state.offset_for_timestamp(backend, timestamp_ms, until))
    }

    fn epoch_history(&self) -> Vec<EpochStart> {
        self.lock().state.epoch_history.clone()
    }

    fn promised_epoch(&self) -> Epoch {
        self.lock().state.promised_epoch
    }

    fn set_promised_epoch(&mut self, epoch: Epoch) -> Result<(), StorageError> {
        self.with(|state, backend| state.set_promised_epoch(backend, epoch))?;
        let inner = self.lock();
        lock_table(&inner.watermarks).raise(
            &inner.name,
            Watermark {
                committed_end: Offset::ZERO,
                promised_epoch: epoch,
            },
        );
        Ok(())
    }

    fn watermark(&self) -> Watermark {
        let inner = self.lock();
        let watermark = lock_table(&inner.watermarks).get(&inner.name);
        watermark
    }

    fn raise_committed_watermark(&mut self, committed_end: Offset) -> Result<(), StorageError> {
        self.with(|state, _| {
            if committed_end > state.log_end {
                return Err(StorageError::WatermarkBeyondLogEnd {
                    committed_end,
                    log_end: state.log_end,
                });
            }
            Ok(())
        })?;
        let inner = self.lock();
        lock_table(&inner.watermarks).raise(
            &inner.name,
            Watermark {
                committed_end,
                promised_epoch: Epoch::ZERO,
            },
        );
        Ok(())
    }

    fn get_value(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.with(|_, backend| LogState::get_value(backend, key))
    }

    fn put_value(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.with(|_, backend| LogState::put_value(backend, key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::WATERMARK_FILE_NAME;
    use cairn_protocol::batch::{Record, RecordBatchBuilder};

    fn batch(count: u32) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        for index in 0..count {
            builder.push(&Record::new(format!("record-{index}")));
        }
        builder.build()
    }

    /// Writes three batches, then lets `damage` edit the stored value of the middle one
    /// directly in its sled tree, reopens the store and returns what reading it gives.
    fn read_after_damage(
        damage: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<RecordBatch>, StorageError> {
        let directory = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(directory.path()).unwrap();
            let mut log = store.open_log("p").unwrap();
            for epoch in [1, 2, 2] {
                let stamped = batch(2).stamped(log.log_end(), Epoch(epoch));
                log.append(&stamped).unwrap();
            }
            let tree = store.db().open_tree(data_tree_name("p")).unwrap();
            let mut value = tree.get(2u64.to_be_bytes()).unwrap().unwrap().to_vec();
            damage(&mut value);
            tree.insert(2u64.to_be_bytes(), value).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(directory.path()).unwrap();
        let log = store.open_log("p").unwrap();
        assert_eq!(
            log.log_end(),
            Offset(6),
            "the damage is not in the last batch"
        );
        // The batches before the damage are still served.
        assert_eq!(log.read(Offset(0), Offset(2), usize::MAX).unwrap().len(), 1);
        log.read(Offset(0), Offset(6), usize::MAX)
    }

    #[test]
    fn a_flipped_record_byte_reads_as_corrupt() {
        let result = read_after_damage(|value| {
            let last = value.len() - 2;
            value[last] ^= 0x01;
        });
        assert!(
            matches!(
                result,
                Err(StorageError::Corrupt {
                    offset: Offset(2),
                    source: cairn_protocol::batch::BatchError::ChecksumMismatch { .. }
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_cut_value_reads_as_corrupt() {
        let result = read_after_damage(|value| value.truncate(value.len() - 3));
        assert!(
            matches!(
                result,
                Err(StorageError::Corrupt {
                    offset: Offset(2),
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_damaged_stamp_outside_the_checksum_reads_as_inconsistent() {
        // The epoch (bytes 12..20) is outside the checksum; the epoch history catches it.
        let result = read_after_damage(|value| value[19] ^= 0x04);
        assert!(
            matches!(
                result,
                Err(StorageError::Inconsistent {
                    offset: Offset(2),
                    ..
                })
            ),
            "{result:?}"
        );
        // So does the base offset (bytes 0..8), checked against the key.
        let result = read_after_damage(|value| value[7] ^= 0x01);
        assert!(
            matches!(
                result,
                Err(StorageError::Inconsistent {
                    offset: Offset(2),
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_missing_batch_reads_as_a_gap_not_as_fewer_records() {
        let directory = tempfile::tempdir().unwrap();
        let store = SledStore::open(directory.path()).unwrap();
        let mut log = store.open_log("p").unwrap();
        for _ in 0..3 {
            let stamped = batch(2).stamped(log.log_end(), Epoch(1));
            log.append(&stamped).unwrap();
        }
        let tree = store.db().open_tree(data_tree_name("p")).unwrap();
        tree.remove(2u64.to_be_bytes()).unwrap();
        let result = log.read(Offset(0), Offset(6), usize::MAX);
        assert!(
            matches!(
                result,
                Err(StorageError::Inconsistent {
                    offset: Offset(4),
                    ..
                })
            ),
            "{result:?}"
        );
        let result = log.read(Offset(3), Offset(6), usize::MAX);
        assert!(
            matches!(result, Err(StorageError::Inconsistent { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn the_fsync_mode_keeps_flushed_writes() {
        let directory = tempfile::tempdir().unwrap();
        let config = SledConfig {
            durability: Durability::Fsync,
            ..SledConfig::default()
        };
        {
            let store = SledStore::open_with(directory.path(), config).unwrap();
            let mut log = store.open_log("p").unwrap();
            log.append(&batch(3).stamped(Offset(0), Epoch(1))).unwrap();
            log.set_promised_epoch(Epoch(2)).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open_with(directory.path(), config).unwrap();
        let log = store.open_log("p").unwrap();
        assert_eq!((log.log_end(), log.promised_epoch()), (Offset(3), Epoch(2)));
    }

    /// The watermark file is written beside the database's flush, on its own thread: a flush
    /// returns only once the file holds the table, a write that fails fails the flush, and
    /// the next flush writes the table again although nothing changed since.
    #[test]
    fn a_flush_returns_after_its_watermark_write_and_a_failed_write_is_retried() {
        let directory = tempfile::tempdir().unwrap();
        let config = SledConfig {
            durability: Durability::Fsync,
            ..SledConfig::default()
        };
        let store = SledStore::open_with(directory.path(), config).unwrap();
        let mut log = store.open_log("p").unwrap();
        log.append(&batch(3).stamped(Offset(0), Epoch(1))).unwrap();
        store.flush().unwrap();
        log.raise_committed_watermark(Offset(3)).unwrap();
        store.flush().unwrap();
        let on_disk = |store: &SledStore| {
            let mut file = WatermarkFile::inside(directory.path(), false);
            assert_eq!(file.path(), store.watermark_path());
            file.load().unwrap().get("p")
        };
        assert_eq!(on_disk(&store).committed_end, Offset(3));

        // Rewrites go in place until the table outgrows its slot; then the file is replaced
        // through a temporary file, and a directory in that file's place makes the write fail.
        log.append(&batch(2).stamped(Offset(3), Epoch(1))).unwrap();
        store.flush().unwrap();
        log.raise_committed_watermark(Offset(5)).unwrap();
        let mut others = Vec::new();
        for index in 0..100 {
            let mut other = store
                .open_log(&format!("a-topic-with-a-rather-long-name/{index}"))
                .unwrap();
            other.set_promised_epoch(Epoch(2)).unwrap();
            others.push(other);
        }
        let blocker = directory.path().join(format!("{WATERMARK_FILE_NAME}.tmp"));
        std::fs::create_dir(&blocker).unwrap();
        let failed = store.flush();
        assert!(
            matches!(&failed, Err(StorageError::Io(reason)) if reason.contains("cannot write")),
            "{failed:?}"
        );
        assert_eq!(on_disk(&store).committed_end, Offset(3));

        std::fs::remove_dir(&blocker).unwrap();
        store.flush().unwrap();
        assert_eq!(on_disk(&store).committed_end, Offset(5));
    }

    /// A batch of 60 records of 1 KiB, about what a producer's 64 KiB batch holds: with 512
    /// KiB segments a leaf of three such batches is over sled's blob threshold (a quarter
    /// segment, 128 KiB) and goes to a blob file.
    fn large_batch() -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        for index in 0..60u32 {
            let mut value = vec![b'x'; 1024];
            value[..4].copy_from_slice(&index.to_be_bytes());
            builder.push(&Record::new(value));
        }
        builder.build()
    }

    /// Appends large batches to three logs through the group committer, as the node does,
    /// and returns the counters just before and just after each flush, and the blob files
    /// left at the end.
    fn sync_counters_after_flushes(
        durability: Durability,
    ) -> (Vec<(SyncCounters, SyncCounters)>, usize) {
        let directory = tempfile::tempdir().unwrap();
        let config = SledConfig {
            durability,
            segment_bytes: 512 * 1024,
            ..SledConfig::default()
        };
        let store = SledStore::open_with(directory.path(), config).unwrap();
        let committer = crate::GroupCommitter::start(store.clone());
        let mut logs: Vec<SledLog> = ["a", "b", "c"]
            .iter()
            .map(|name| store.open_log(name).unwrap())
            .collect();
        let mut counters = Vec::new();
        // Past sled's consolidation threshold (16 fragments per page), so leaves are
        // rewritten whole, as blobs.
        for _ in 0..40 {
            for log in &mut logs {
                let end = log.log_end();
                log.append(&large_batch().stamped(end, Epoch(1))).unwrap();
            }
            let before = store.sync_counters();
            committer.request_blocking().unwrap();
            counters.push((before, store.sync_counters()));
        }
        let blob_files = std::fs::read_dir(directory.path().join("blobs"))
            .unwrap()
            .count();
        (counters, blob_files)
    }

    #[test]
    fn in_fsync_mode_a_returned_flush_left_no_blob_file_unsynced() {
        let (counters, blob_files) = sync_counters_after_flushes(Durability::Fsync);
        assert!(blob_files > 0, "no batch reached a blob file");
        for (before, after) in &counters {
            // Every blob written before the flush was requested was synced, and so was the
            // log. (sled's cleaner thread may write blobs at any time; those written after
            // the flush's log write wait for the next one, which is why this compares
            // sequence numbers and not the count left unsynced.)
            assert!(
                after.blobs_synced_through >= before.blobs_written,
                "{before:?} then {after:?}"
            );
            assert!(after.log_syncs > before.log_syncs, "{after:?}");
        }
        let last = counters.last().unwrap().1;
        assert!(last.blobs_written >= blob_files as u64, "{last:?}");
        assert!(last.blob_syncs >= blob_files as u64, "{last:?}");
        assert!(last.directory_syncs > 0, "{last:?}");
    }

    /// Retention frees whole segments of small batches; the background cleaner moves what
    /// is still live out of them, and the store's engine stats count it.
    #[test]
    fn engine_stats_count_the_segments_cleaned() {
        let directory = tempfile::tempdir().unwrap();
        let config = SledConfig {
            segment_bytes: 64 * 1024,
            ..SledConfig::default()
        };
        let store = SledStore::open_with(directory.path(), config).unwrap();
        assert_eq!(store.engine_stats(), crate::EngineStats::default());
        let mut logs: Vec<SledLog> = ["a", "b"]
            .iter()
            .map(|name| store.open_log(name).unwrap())
            .collect();
        let keep_last = RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(64 * 1024),
        };
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
        for index in 0..8u32 {
            builder.push(&Record::new(format!("{index:0>512}")));
        }
        let medium = builder.build();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let cleaned = loop {
            for _ in 0..20 {
                for log in &mut logs {
                    let end = log.log_end();
                    log.append(&medium.stamped(end, Epoch(1))).unwrap();
                    let end = log.log_end();
                    log.apply_retention(keep_last, 0, end).unwrap();
                }
            }
            store.flush().unwrap();
            let stats = store.engine_stats();
            if stats.pages_cleaned_in_background + stats.pages_cleaned_by_writes > 0 {
                break stats;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no page cleaned in 60 s: {stats:?}"
            );
        };
        // Flush mode syncs nothing; the backlog is far from its bound, so the writes did
        // not clean.
        assert_eq!(cleaned.syncs, SyncCounters::default(), "{cleaned:?}");
        assert_eq!(cleaned.pages_cleaned_by_writes, 0, "{cleaned:?}");
    }

    #[test]
    fn in_flush_mode_nothing_is_synced() {
        let (counters, blob_files) = sync_counters_after_flushes(Durability::Flush);
        assert!(blob_files > 0, "no batch reached a blob file");
        for (before, after) in &counters {
            assert_eq!(*before, SyncCounters::default());
            assert_eq!(*after, SyncCounters::default());
        }
    }
}
