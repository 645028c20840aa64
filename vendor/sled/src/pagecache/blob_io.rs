use crate::pagecache::*;
use crate::*;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Cairn patch (PATCHES.md, "Recycled blob files"): a removed blob file is emptied and moved to
// `blobs-free/` instead of being unlinked, and the next blob written takes it over by a
// rename. Creating a file allocates an inode, and on ext4 without a journal (this project's
// test machines) every allocation skips inodes deleted in the last seconds to minutes one by
// one (`recently_deleted`): with sled creating and deleting a blob file every few writes,
// that scan took a fifth of a loaded node's CPU. A rename allocates nothing.

/// Empty files kept for reuse per database; more are unlinked as before.
const FREE_BLOBS_MAX: usize = 1024;
/// How long a released blob file rests before reuse, so that a reader that looked its
/// pointer up just before the release still finds the old content rather than a new blob's.
const FREE_BLOB_REST: Duration = Duration::from_secs(1);

static FREE_BLOB_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Empty files the background thread creates ahead, per database, for new blobs to take when
/// no released file has rested long enough (a fresh database, a log that only grows): the
/// inode allocation then happens on that thread instead of inside the flush that writes the
/// blob. Restocked when fewer than `SPARE_BLOBS_LOW` are left.
const SPARE_BLOBS: usize = 32;
const SPARE_BLOBS_LOW: usize = SPARE_BLOBS / 2;

/// Spare blob files (paths in `blobs-free/`) per database directory, and the databases whose
/// restock is queued.
#[derive(Default)]
struct Spares {
    files: HashMap<PathBuf, Vec<PathBuf>>,
    restocking: std::collections::HashSet<PathBuf>,
}

fn spares() -> &'static std::sync::Mutex<Spares> {
    static SPARES: OnceLock<std::sync::Mutex<Spares>> = OnceLock::new();
    SPARES.get_or_init(Default::default)
}

/// Takes a spare file of the database in `db`, and queues a restock when few are left.
fn take_spare(db: &std::path::Path) -> Option<PathBuf> {
    let mut stock = spares().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let taken = stock.files.get_mut(db).and_then(Vec::pop);
    let left = stock.files.get(db).map_or(0, Vec::len);
    if left < SPARE_BLOBS_LOW && stock.restocking.insert(db.to_path_buf()) {
        drop(stock);
        if !queue_job(db, Job::Restock) {
            spares()
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .restocking
                .remove(db);
        }
    }
    taken
}

/// Whether a restock of the spare files of the database in `db` is queued or running, for
/// tests.
#[doc(hidden)]
pub fn spare_blobs_restocking(db: &std::path::Path) -> bool {
    spares().lock().unwrap_or_else(|poisoned| poisoned.into_inner()).restocking.contains(db)
}

/// Runs the restocks queued (`take_spare`) ahead of the jobs before them: a release may be
/// paced and wait behind many others, while a writer whose database is out of spares
/// allocates its blobs' inodes itself. The `Restock` job stays queued, for the pending count.
fn restock_first() {
    let wanted: Vec<PathBuf> = {
        let stock = spares().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if stock.restocking.is_empty() {
            return;
        }
        stock.restocking.iter().cloned().collect()
    };
    for db in wanted {
        restock_spares(&db);
    }
}

/// Creates spare files for the database in `db` up to `SPARE_BLOBS` (on the background
/// thread). Stops at the first error: a blob then creates its own file, as before.
fn restock_spares(db: &std::path::Path) {
    let dir = free_blob_dir(db);
    loop {
        let count = spares()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .files
            .get(db)
            .map_or(0, Vec::len);
        if count >= SPARE_BLOBS || !dir.is_dir() {
            break;
        }
        let sequence = FREE_BLOB_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(sequence.to_string());
        if let Err(e) =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path)
        {
            debug!("creating a spare blob file {:?} failed: {}", path, e);
            break;
        }
        spares()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .files
            .entry(db.to_path_buf())
            .or_default()
            .push(path);
    }
    spares()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .restocking
        .remove(db);
}

/// Released blob files (path, when released) per database directory, oldest first.
fn free_blobs() -> &'static std::sync::Mutex<HashMap<PathBuf, VecDeque<(PathBuf, Instant)>>> {
    static FREE: OnceLock<std::sync::Mutex<HashMap<PathBuf, VecDeque<(PathBuf, Instant)>>>> =
        OnceLock::new();
    FREE.get_or_init(Default::default)
}

pub(crate) fn free_blob_dir(db: &std::path::Path) -> PathBuf {
    db.join("blobs-free")
}

// Cairn patch (PATCHES.md, "Written pages leave the page cache"): with
// `Config::drop_written_pages`, the pages of the log and of blob files are dropped from the
// kernel's page cache once they are on disk. sled keeps what it reads in its own cache, so a
// second copy in the kernel's serves nothing but a reader of a page sled has evicted; and
// every page the kernel takes from free memory for a write instead of reusing one just
// dropped costs, on a virtual machine whose host reclaims the guest's free memory (free page
// reporting), a host page fault: there a write into new page cache ran at 200 MB/s against
// 5 GB/s into reused pages.

/// The kernel's page size (4 KiB where it cannot be read).
#[cfg(target_os = "linux")]
pub(crate) fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|size| size.is_power_of_two()).unwrap_or(4096)
    })
}

/// Drops the clean pages of `file` in `[offset, offset + len)` (`len` 0: to the end of the
/// file) from the page cache. The kernel drops only whole pages inside the range, so the
/// range starts at the page holding `offset`: a write that began inside a page completed
/// it. A partly written last page stays, for the next write to fill. Dirty pages and pages
/// under writeback stay too (the kernel starts the writeback of dirty ones). Best effort:
/// an error only leaves the pages cached.
pub(crate) fn drop_cached_pages(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let page = page_size();
        let start = offset & !(page - 1);
        let len = if len == 0 { 0 } else { len + (offset - start) };
        let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
            return;
        };
        let _ = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), start, len, libc::POSIX_FADV_DONTNEED)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Forgets and removes the released files of a database being opened: they belong to an
/// earlier process (or an earlier open in this one) and hold nothing.
pub(crate) fn reset_free_blobs(config: &Config) -> Result<()> {
    wait_for_releases(&config.get_path());
    let dir = free_blob_dir(&config.get_path());
    free_blobs()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(&config.get_path());
    spares()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .files
        .remove(&config.get_path());
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)? {
            std::fs::remove_file(entry?.path())?;
        }
    } else {
        std::fs::create_dir_all(&dir)?;
    }
    Ok(())
}

/// Opens `path` for a new blob, reusing a released file that has rested long enough, or else
/// a spare one.
fn create_blob_file(config: &Config, path: &std::path::Path) -> Result<std::fs::File> {
    let db = config.get_path();
    let reusable = {
        let mut free = free_blobs()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let queue = free.entry(db.clone()).or_default();
        match queue.front() {
            Some((_, released)) if released.elapsed() >= FREE_BLOB_REST => {
                queue.pop_front().map(|(free_path, _)| free_path)
            }
            _ => None,
        }
    };
    let reusable = if reusable.is_some() || config.temporary {
        reusable
    } else {
        take_spare(&db)
    };
    if let Some(free_path) = reusable {
        if std::fs::rename(&free_path, path).is_ok() {
            if config.power_loss_durable && !config.temporary {
                // Set before the blob's path is noted as written, so the sync that takes
                // the path sees it (see `sync_written_blobs`).
                durability(config)
                    .free_dir_changed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            return Ok(std::fs::OpenOptions::new().write(true).open(path)?);
        }
    }
    Ok(std::fs::OpenOptions::new().write(true).create_new(true).open(path)?)
}

/// Moves a blob file no longer referenced into `blobs-free/`, empties it and keeps it for
/// reuse (or unlinks it once emptied, when the pool is full or anything fails). `paced`: see
/// [`empty_in_steps`].
fn release_blob_file(db: &std::path::Path, path: &std::path::Path, paced: bool) {
    let sequence = FREE_BLOB_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let free_path = free_blob_dir(db).join(sequence.to_string());
    if std::fs::rename(path, &free_path).is_err() {
        if let Err(e) = std::fs::remove_file(path) {
            debug!("removing blob at {:?} failed: {}", path, e);
        }
        return;
    }
    // Its blocks go back to the file system now, as an unlink would give them back.
    if let Err(e) = empty_in_steps(&free_path, paced) {
        debug!("emptying released blob {:?} failed: {}", free_path, e);
        let _ = std::fs::remove_file(&free_path);
        return;
    }
    let mut free =
        free_blobs().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let queue = free.entry(db.to_path_buf()).or_default();
    if queue.len() >= FREE_BLOBS_MAX {
        drop(free);
        let _ = std::fs::remove_file(&free_path);
        return;
    }
    queue.push_back((free_path, Instant::now()));
    trace!("released blob at {:?} for reuse", path);
}

// Cairn patch (PATCHES.md, "Blob releases in the background"): a blob file is released by a
// background thread, never by the writer that replaced its page. sled defers the removal of a
// blob until the log segment holding its replacement is deactivated and then removes every
// deferred blob at once, on the thread that rolled the segment and while it holds the segment
// accountant's lock, which every page write takes. Freeing a file's disk blocks on a file
// system mounted with `discard` (this project's machines) waits for the device's discard, and
// a log compaction frees hundreds of megabytes of blobs whose removal waited for the next
// segment: every append stalled behind that burst for up to seconds.

/// Releases queued and not yet done, over all databases; beyond this a release is done at
/// once by the thread asking for it, as before (backpressure, not memory growth). Each
/// queued release holds two paths (about 200 bytes): a few MiB at most.
const RELEASES_QUEUED_MAX: usize = 16384;
/// A released file is emptied from its end in steps of this size, so that one step frees a
/// bounded number of blocks (one short discard).
const EMPTY_STEP_BYTES: u64 = 1 << 20;
/// The background releaser frees at most this many bytes of disk blocks a second (files
/// never written back hold none and cost nothing): a compaction's garbage is discarded as a
/// steady trickle the device serves between flushes, not as a burst. The default; the
/// process may set another with [`set_blob_release_bytes_per_second`].
const RELEASE_BYTES_PER_SECOND_DEFAULT: u64 = 32 << 20;

/// The pace in force (process-wide: one releaser serves every database); 0 is unpaced.
static RELEASE_BYTES_PER_SECOND: AtomicU64 =
    AtomicU64::new(RELEASE_BYTES_PER_SECOND_DEFAULT);

/// Sets how many bytes of disk blocks a second the background releaser frees at most, for
/// every database of the process (0: as fast as the file system frees them). An application
/// that throttles its own rewrites (log compaction) can give the release of their garbage
/// the same budget, so the device sees one bounded stream of both.
#[doc(hidden)]
pub fn set_blob_release_bytes_per_second(bytes_per_second: u64) {
    RELEASE_BYTES_PER_SECOND
        .store(bytes_per_second, std::sync::atomic::Ordering::Relaxed);
}
/// With more releases than this queued, the releaser stops pacing until it has caught up.
const RELEASES_QUEUED_UNPACED: usize = RELEASES_QUEUED_MAX / 2;
/// How long a database being closed or opened waits for its queued releases.
const RELEASE_DRAIN_WAIT: Duration = Duration::from_secs(60);

/// Empties `path` from its end, `EMPTY_STEP_BYTES` at a time. `paced`: after each step that
/// freed disk blocks, waits as long as freeing them at the pace in force takes
/// (less the step's own time), unless the releaser has fallen behind.
fn empty_in_steps(path: &std::path::Path, paced: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let metadata = file.metadata()?;
    let mut len = metadata.len();
    // Blocks actually allocated (512-byte units), as opposed to the file's length.
    let mut allocated = metadata.blocks() * 512;
    while len > 0 {
        let next = len.saturating_sub(EMPTY_STEP_BYTES);
        let started = Instant::now();
        file.set_len(next)?;
        let freed = allocated.min(len - next);
        allocated -= freed;
        len = next;
        let pace = RELEASE_BYTES_PER_SECOND.load(std::sync::atomic::Ordering::Relaxed);
        if paced && pace > 0 && freed > 0 && !releaser_behind() {
            let budget = Duration::from_secs_f64(freed as f64 / pace as f64);
            if let Some(rest) = budget.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    Ok(())
}

/// Pacing stops while the queue is long or a database waits for its releases (it closes).
fn releaser_behind() -> bool {
    let releaser = releaser();
    releaser.queued.load(std::sync::atomic::Ordering::Relaxed) > RELEASES_QUEUED_UNPACED as u64
        || releaser.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// Work for the background thread, for one database.
enum Job {
    /// Release this blob file.
    Release(PathBuf),
    /// Create spare files (`restock_spares`).
    Restock,
}

struct Releaser {
    /// (database directory, job); `None` if the thread could not be started.
    queue: Option<std::sync::mpsc::SyncSender<(PathBuf, Job)>>,
    /// Releases queued and not yet done, per database directory.
    pending: std::sync::Mutex<HashMap<PathBuf, usize>>,
    done: std::sync::Condvar,
    /// Releases queued and not yet done, over all databases.
    queued: AtomicU64,
    /// Databases waiting in [`wait_for_releases`].
    waiting: AtomicU64,
    released_in_background: AtomicU64,
    released_at_once: AtomicU64,
}

fn releaser() -> &'static Releaser {
    static RELEASER: OnceLock<Releaser> = OnceLock::new();
    RELEASER.get_or_init(|| {
        let (sender, receiver) =
            std::sync::mpsc::sync_channel::<(PathBuf, Job)>(RELEASES_QUEUED_MAX);
        let started = std::thread::Builder::new()
            .name("sled-blob-release".into())
            .spawn(move || {
                for (db, job) in receiver {
                    let releaser = releaser();
                    restock_first();
                    match job {
                        Job::Release(path) => {
                            release_blob_file(&db, &path, true);
                            releaser
                                .released_in_background
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Job::Restock => restock_spares(&db),
                    }
                    releaser.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    let mut pending = releaser
                        .pending
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    if let Some(count) = pending.get_mut(&db) {
                        *count -= 1;
                        if *count == 0 {
                            pending.remove(&db);
                        }
                    }
                    releaser.done.notify_all();
                }
            });
        Releaser {
            queue: started.ok().map(|_| sender),
            pending: Default::default(),
            done: Default::default(),
            queued: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            released_in_background: AtomicU64::new(0),
            released_at_once: AtomicU64::new(0),
        }
    })
}

/// Hands the release of `path` to the background releaser; `false` if its queue is full.
fn queue_release(db: &std::path::Path, path: PathBuf) -> bool {
    queue_job(db, Job::Release(path))
}

/// Hands `job` to the background thread; `false` if its queue is full. Counted as pending
/// for the database until done, so that [`wait_for_releases`] waits for it too.
fn queue_job(db: &std::path::Path, job: Job) -> bool {
    let releaser = releaser();
    let Some(queue) = &releaser.queue else { return false };
    let mut pending =
        releaser.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Counted before it is sent (under the lock), so that the releaser cannot count it done
    // before it is counted.
    releaser.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match queue.try_send((db.to_path_buf(), job)) {
        Ok(()) => {
            *pending.entry(db.to_path_buf()).or_insert(0) += 1;
            true
        }
        Err(_) => {
            releaser.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}

/// Waits (at most `RELEASE_DRAIN_WAIT`) until every release queued for the database in `db`
/// is done: when it closes, so that no file it no longer references outlives it, and when it
/// opens, before its free pool is reset.
pub(crate) fn wait_for_releases(db: &std::path::Path) {
    use std::sync::atomic::Ordering::Relaxed;
    let releaser = releaser();
    let deadline = Instant::now() + RELEASE_DRAIN_WAIT;
    let mut pending =
        releaser.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    releaser.waiting.fetch_add(1, Relaxed);
    while pending.contains_key(db) {
        let now = Instant::now();
        if now >= deadline {
            warn!("blob releases of {:?} still queued after {:?}", db, RELEASE_DRAIN_WAIT);
            break;
        }
        pending = releaser
            .done
            .wait_timeout(pending, deadline - now)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
    releaser.waiting.fetch_sub(1, Relaxed);
}

/// How blob files were released (process-wide), for tests.
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlobReleaseCounters {
    /// By the background releaser.
    pub in_background: u64,
    /// At once by the thread that removed the blob (the queue was full).
    pub at_once: u64,
    /// Queued for the database in `path` and not yet done.
    pub pending: u64,
}

/// The release counters, with the pending releases of the database in `path`.
#[doc(hidden)]
pub fn blob_release_counters(path: &std::path::Path) -> BlobReleaseCounters {
    use std::sync::atomic::Ordering::Relaxed;
    let releaser = releaser();
    let pending = releaser
        .pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(path)
        .copied()
        .unwrap_or(0) as u64;
    BlobReleaseCounters {
        in_background: releaser.released_in_background.load(Relaxed),
        at_once: releaser.released_at_once.load(Relaxed),
        pending,
    }
}

pub(crate) fn read_blob(
    blob_ptr: Lsn,
    config: &Config,
) -> Result<(MessageKind, Vec<u8>)> {
    let path = config.blob_path(blob_ptr);
    let f_res = std::fs::OpenOptions::new().read(true).open(&path);

    if let Err(e) = &f_res {
        debug!("failed to open file for blob read at {}: {:?}", blob_ptr, e);
    }

    let mut f = f_res?;

    let mut crc_expected_bytes = [0_u8; std::mem::size_of::<u32>()];

    if let Err(e) = f.read_exact(&mut crc_expected_bytes) {
        debug!(
            "failed to read the initial CRC bytes in the blob at {}: {:?}",
            blob_ptr, e,
        );
        return Err(e.into());
    }

    let crc_expected = arr_to_u32(&crc_expected_bytes);

    let mut kind_byte = [0_u8];

    if let Err(e) = f.read_exact(&mut kind_byte) {
        debug!(
            "failed to read the initial CRC bytes in the blob at {}: {:?}",
            blob_ptr, e,
        );
        return Err(e.into());
    }

    let mut buf = vec![];

    if let Err(e) = f.read_to_end(&mut buf) {
        debug!(
            "failed to read data after the CRC bytes in blob at {}: {:?}",
            blob_ptr, e,
        );
        return Err(e.into());
    }

    if config.drop_written_pages {
        drop_cached_pages(&f, 0, 0);
    }

    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&kind_byte);
    hasher.update(&buf);
    let crc_actual = hasher.finalize();

    if crc_expected == crc_actual {
        let buf =
            if config.use_compression { maybe_decompress(buf)? } else { buf };
        Ok((MessageKind::from(kind_byte[0]), buf))
    } else {
        warn!("blob {} failed crc check!", blob_ptr);

        Err(Error::corruption(Some(DiskPtr::Blob(0, blob_ptr))))
    }
}

pub(crate) fn write_blob<T: Serialize>(
    config: &Config,
    kind: MessageKind,
    id: Lsn,
    item: &T,
) -> Result<()> {
    let path = config.blob_path(id);
    let mut f = create_blob_file(config, &path)?;

    let kind_buf = &[kind.into()];

    let mut hasher = crc32fast::Hasher::new();
    hasher.update(kind_buf);

    let data = {
        let _ = Measure::new(&M.serialize);
        item.serialize()
    };

    hasher.update(&data);
    let crc = u32_to_arr(hasher.finalize());

    io_fail!(config, "write_blob write crc");
    f.write_all(&crc)?;
    io_fail!(config, "write_blob write kind_byte");
    f.write_all(kind_buf)?;
    io_fail!(config, "write_blob write buf");
    f.write_all(&data)?;
    trace!("successfully wrote blob at {:?}", path);
    drop(f);
    if config.power_loss_durable && !config.temporary {
        // Synced before the log write that carries its pointer (see `sync_written_blobs`),
        // so there is no writeback to start early.
        durability(config).note_written(path);
    } else if !config.temporary {
        schedule_writeback(path, config.drop_written_pages);
    }
    Ok(())
}

// Cairn patch (PATCHES.md, "Power-loss durability"): with `Config::power_loss_durable`, a
// flush returning means what it covers survives a power cut, not only a process kill.
// Upstream writes its log with `sync_file_range` (data pages only: neither the file's size
// and block map nor the disk's write cache) and never syncs a blob file or a directory, so
// a power cut could lose acknowledged pages whose newest version was a blob. Now every log
// write first `fdatasync`s the blob files written since the previous one (by path, as the
// writeback queue keeps them: a released blob is no longer at its path and needs nothing)
// and `fsync`s `blobs/`, then writes the log buffer and `fdatasync`s the log file. Blobs
// before the log keeps recovery's view whole: a blob is always written before the log
// buffer that holds its pointer is sealed, so a log record on disk never points to a blob
// that a power cut could still lose (recovery skips a missing blob as "dangling", which
// would silently put back an older version of its page). One sync covers everything
// written since the previous one: under load a flush (one log write) follows another,
// each covering the appends that arrived meanwhile.

/// Blob files synced in one batch: each is open from its writeback start until its sync.
const BLOB_SYNC_BATCH_MAX: usize = 64;

/// What a database in `power_loss_durable` mode has written and not yet synced.
#[derive(Default)]
pub(crate) struct Durability {
    /// Blob files written since the last sync, by path.
    unsynced: std::sync::Mutex<Vec<PathBuf>>,
    /// Held while syncing: a log buffer written by another thread meanwhile must wait until
    /// the blobs taken by this sync (which it may point to) are durable.
    syncing: std::sync::Mutex<()>,
    /// A blob file was renamed out of `blobs-free/` since the last sync: a rename is durable
    /// only once both directories are synced, so `blobs-free/` is synced too.
    free_dir_changed: std::sync::atomic::AtomicBool,
    /// Blob files noted as written so far: the sequence number of the newest one.
    noted: AtomicU64,
    /// Every blob up to this sequence number is synced (or was released unsynced).
    synced_through: AtomicU64,
    blob_syncs: AtomicU64,
    directory_syncs: AtomicU64,
    log_syncs: AtomicU64,
}

/// How many syncs a database in `power_loss_durable` mode made since it was opened in this
/// process, for tests: a flush that returned must have left nothing unsynced.
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityCounters {
    /// Blob files `fdatasync`ed.
    pub blob_syncs: u64,
    /// Directories (`blobs/`, the database's and its parent) `fsync`ed.
    pub directory_syncs: u64,
    /// Log writes followed by an `fdatasync` of the log file.
    pub log_syncs: u64,
    /// Blob files written and not yet synced.
    pub unsynced_blobs: u64,
    /// Blob files written so far, in order: the sequence number of the newest.
    pub blobs_written: u64,
    /// Every blob file up to this sequence number is durable. A flush requested when
    /// `blobs_written` was N has, when it returns, made this at least N; blobs another
    /// thread (sled's cleaner) writes meanwhile belong to a later log write.
    pub blobs_synced_through: u64,
}

impl Durability {
    fn note_written(&self, path: PathBuf) {
        let mut unsynced = self
            .unsynced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        unsynced.push(path);
        // Under the list's lock, so the list a sync takes holds exactly the blobs up to
        // the sequence number it reads.
        self.noted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn counted_log_sync(&self) {
        self.log_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn durabilities(
) -> &'static std::sync::Mutex<HashMap<PathBuf, std::sync::Arc<Durability>>> {
    static STATES: OnceLock<
        std::sync::Mutex<HashMap<PathBuf, std::sync::Arc<Durability>>>,
    > = OnceLock::new();
    STATES.get_or_init(Default::default)
}

pub(crate) fn durability(config: &Config) -> std::sync::Arc<Durability> {
    durabilities()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(config.get_path())
        .or_default()
        .clone()
}

/// The counters of the database in `path` (zero if it never ran `power_loss_durable`).
#[doc(hidden)]
pub fn durability_counters(path: &std::path::Path) -> DurabilityCounters {
    use std::sync::atomic::Ordering::Relaxed;
    let states =
        durabilities().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match states.get(path) {
        None => DurabilityCounters::default(),
        Some(state) => DurabilityCounters {
            blob_syncs: state.blob_syncs.load(Relaxed),
            directory_syncs: state.directory_syncs.load(Relaxed),
            log_syncs: state.log_syncs.load(Relaxed),
            unsynced_blobs: state
                .unsynced
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .len() as u64,
            blobs_written: state.noted.load(Relaxed),
            blobs_synced_through: state.synced_through.load(Relaxed),
        },
    }
}

fn sync_directory(state: &Durability, path: &std::path::Path) -> Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    state.directory_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// At open: the files and directories the open may have created (the database directory
/// in its parent, `db`, `conf` and `blobs/` in it) reach the disk before anything that
/// depends on them. Forgets what an earlier open of the same path left unsynced.
pub(crate) fn sync_new_database(
    config: &Config,
    db_file: &std::fs::File,
) -> Result<()> {
    let state = durability(config);
    {
        let mut unsynced = state
            .unsynced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        unsynced.clear();
        state.synced_through.fetch_max(
            state.noted.load(std::sync::atomic::Ordering::SeqCst),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
    db_file.sync_all()?;
    let conf = config.get_path().join("conf");
    if conf.exists() {
        std::fs::File::open(&conf)?.sync_all()?;
    }
    sync_directory(&state, &config.get_path().join("blobs"))?;
    sync_directory(&state, &config.get_path())?;
    if let Some(parent) = config.get_path().parent() {
        if !parent.as_os_str().is_empty() {
            sync_directory(&state, parent)?;
        }
    }
    Ok(())
}

/// After a snapshot file was renamed into place.
pub(crate) fn sync_database_directory(config: &Config) -> Result<()> {
    sync_directory(&durability(config), &config.get_path())
}

/// Makes every blob written so far durable, with its directory entry; called before each
/// log write in `power_loss_durable` mode. The writeback of a batch of blobs is started
/// before the first is waited for, so the disk gets them together.
pub(crate) fn sync_written_blobs(config: &Config) -> Result<()> {
    let state = durability(config);
    let _syncing =
        state.syncing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (paths, through) = {
        let mut unsynced = state
            .unsynced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (
            std::mem::take(&mut *unsynced),
            state.noted.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let mut synced = 0_u64;
    for batch in paths.chunks(BLOB_SYNC_BATCH_MAX) {
        let mut files = Vec::with_capacity(batch.len());
        for path in batch {
            match std::fs::File::open(path) {
                Ok(file) => {
                    #[cfg(target_os = "linux")]
                    {
                        use std::os::unix::io::AsRawFd;
                        let _ = unsafe {
                            libc::sync_file_range(
                                file.as_raw_fd(),
                                0,
                                0,
                                libc::SYNC_FILE_RANGE_WRITE,
                            )
                        };
                    }
                    files.push(file);
                }
                // Released since it was written: the page it held was replaced by a write
                // already in the (synced) log, and nothing points to it any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        for file in files {
            file.sync_data()?;
            if config.drop_written_pages {
                drop_cached_pages(&file, 0, 0);
            }
            synced += 1;
        }
    }
    // After taking the paths: a recycled blob among them set the flag before it was noted.
    if state.free_dir_changed.swap(false, std::sync::atomic::Ordering::SeqCst) {
        if let Err(e) = sync_directory(&state, &free_blob_dir(&config.get_path())) {
            state.free_dir_changed.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
    }
    if synced > 0 {
        state
            .blob_syncs
            .fetch_add(synced, std::sync::atomic::Ordering::Relaxed);
        sync_directory(&state, &config.get_path().join("blobs"))?;
    }
    state
        .synced_through
        .fetch_max(through, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

// Cairn patch (PATCHES.md, "Blob writeback"): sled's flush writes its log back with
// `sync_file_range`, but left blob files to the kernel's background writeback, which starts
// only when a tenth of the machine's memory is dirty. Under a sustained load that is
// gigabytes, written in one burst that every log flush (so every acknowledgement) then waits
// behind: a 60 s run at 30,000 records/s had publish p99 783 ms against 19 ms for 20 s. Now
// a blob's writeback starts (without waiting for it) once the blob is
// `BLOB_WRITEBACK_DELAY` old, so dirty blob pages stay a few seconds' worth. Not at once:
// most blobs (the rightmost leaf of a log, rewritten every few appends) are replaced within
// a second, and their pages are dropped unwritten; starting writeback at once doubled the
// bytes written.

/// How old a blob is when its writeback starts.
const BLOB_WRITEBACK_DELAY: Duration = Duration::from_secs(2);
/// Blobs waiting for their writeback; past it the oldest starts early. Paths, not open files
/// (as at first): a queued file handle outlived its blob, and once the file was recycled
/// for a newer blob it started *that* blob's writeback a moment after it was written, so
/// its blocks were allocated and its release (usually within a second) freed them, which on
/// a disk mounted with `discard` is a synchronous discard that stalled every flush on the
/// disk for up to 600 ms (see "Blob writeback" in PATCHES.md). A path names one blob only.
/// The bound covers blobs waiting to have their pages dropped too.
const BLOB_WRITEBACK_PENDING_MAX: usize = 8192;

/// What a queued blob waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WritebackStage {
    /// Written; its writeback starts when it is due. The flag: its pages are to be dropped
    /// once written back (`Config::drop_written_pages`).
    Written { drop_pages: bool },
    /// Its writeback started; its pages are dropped when it is due (PATCHES.md, "Written
    /// pages leave the page cache"). By then the writeback has long finished; a page still
    /// under writeback would merely stay cached.
    WritingBack,
}

type PendingWriteback = VecDeque<((PathBuf, WritebackStage), Instant)>;

/// Queues `item` at `now` and takes off the front of `queue` (oldest first) every item
/// queued at least `delay` before `now`, and the oldest while more than `max` wait: the
/// delayed queues of "Blob writeback" and of "Written pages leave the page cache".
pub(crate) fn push_and_take_due<T>(
    queue: &mut VecDeque<(T, Instant)>,
    item: T,
    now: Instant,
    delay: Duration,
    max: usize,
) -> Vec<T> {
    queue.push_back((item, now));
    let mut due = Vec::new();
    while let Some((_, since)) = queue.front() {
        if queue.len() <= max && now.duration_since(*since) < delay {
            break;
        }
        due.extend(queue.pop_front().map(|(item, _)| item));
    }
    due
}

fn pending_writeback() -> &'static std::sync::Mutex<PendingWriteback> {
    static PENDING: OnceLock<std::sync::Mutex<PendingWriteback>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// Queues a just written blob, starts the writeback of those old enough and drops the pages
/// of those written back long enough. A blob released meanwhile is no longer at its path
/// (it was moved away and emptied, or unlinked), so it is skipped: its pages are dropped
/// unwritten and its release frees no disk blocks.
fn schedule_writeback(path: PathBuf, drop_pages: bool) {
    let now = Instant::now();
    let due: Vec<(PathBuf, WritebackStage)> = {
        let mut pending = pending_writeback()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = push_and_take_due(
            &mut pending,
            (path, WritebackStage::Written { drop_pages }),
            now,
            BLOB_WRITEBACK_DELAY,
            BLOB_WRITEBACK_PENDING_MAX,
        );
        for (path, stage) in &due {
            if *stage == (WritebackStage::Written { drop_pages: true }) {
                pending.push_back(((path.clone(), WritebackStage::WritingBack), now));
            }
        }
        due
    };
    // Cairn patch (PATCHES.md, "Writeback hints off the writing thread"): the writing
    // thread only queues them.
    for (path, stage) in due {
        super::writeback::submit(match stage {
            WritebackStage::Written { .. } => super::writeback::Hint::BlobWriteback(path),
            WritebackStage::WritingBack => super::writeback::Hint::BlobDrop(path),
        });
    }
}

/// Asks the kernel to start writing the blob's dirty pages back, without waiting. Best
/// effort: a blob released meanwhile cannot be opened and is skipped; on another error the
/// pages are left to the kernel's writeback, as before.
pub(crate) fn start_writeback(path: &std::path::Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        if let Ok(file) = std::fs::File::open(path) {
            let _ = unsafe {
                libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

pub(crate) fn gc_blobs(config: &Config, stable_lsn: Lsn) -> Result<()> {
    let mut base_dir = config.get_path();
    base_dir.push("blobs");
    let blob_dir = base_dir;
    let blobs = std::fs::read_dir(blob_dir)?;

    debug!("gc_blobs removing any blob with an lsn above {}", stable_lsn);

    let mut to_remove = vec![];
    for blob in blobs {
        let path = blob?.path();
        let lsn_str = path.file_name().unwrap().to_str().unwrap();
        let lsn_res: std::result::Result<Lsn, _> = lsn_str.parse();

        if let Err(e) = lsn_res {
            warn!(
                "blobs directory contains \
                 unparsable path ({:?}): {}",
                path, e
            );
            continue;
        }

        let lsn = lsn_res.unwrap();

        if lsn >= stable_lsn {
            to_remove.push(path);
        }
    }

    if !to_remove.is_empty() {
        warn!(
            "removing {} blobs that have \
             a higher lsn than our stable log: {:?}",
            to_remove.len(),
            stable_lsn
        );
    }

    for path in to_remove {
        std::fs::remove_file(&path)?;
    }

    Ok(())
}

pub(crate) fn remove_blob(id: Lsn, config: &Config) -> Result<()> {
    let path = config.blob_path(id);
    let db = config.get_path();
    if !queue_release(&db, path.clone()) {
        releaser()
            .released_at_once
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        release_blob_file(&db, &path, false);
    }
    Ok(())
}
