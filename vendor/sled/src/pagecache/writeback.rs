// Cairn patch (PATCHES.md, "Writeback hints off the writing thread"): starting the kernel's
// writeback of a range (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and dropping written pages
// (`posix_fadvise(DONTNEED)`) are hints: no promise of a flush depends on them. But the
// kernel may block the caller in them for tens of milliseconds: the block layer's writeback
// throttling (`wbt_wait`) holds back a thread submitting writeback while the device is slow,
// and ext4 allocates delayed blocks at writeback time, reading a block bitmap from the disk
// when it is not cached. The thread that called them was the one writing the log, which in
// Cairn's `flush` mode is the node's only runtime thread: every partition and connection of
// the node stopped with it. Now the writing thread queues the hint, and one thread per
// process, `sled-writeback`, carries the hints out in order.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use crate::Arc;

/// Hints waiting for the thread; past this a hint is dropped (and counted): the kernel's own
/// writeback and page reclaim then do what it asked, later. 4,096 log ranges of 1 MiB are
/// gigabytes of writeback, so only a device that stopped fills it.
const HINTS_PENDING_MAX: usize = 4096;

/// What the writeback thread is asked to do.
pub(crate) enum Hint {
    /// Start the writeback of `len` bytes at `offset` of the log; an error is kept in `error`
    /// and returned by the next log write, as it was when the writer started it itself.
    LogWriteback {
        file: Arc<File>,
        offset: u64,
        len: u64,
        error: Arc<Mutex<Option<crate::Error>>>,
    },
    /// Drop the cached pages of `len` bytes at `offset` of the log.
    LogDrop { file: Arc<File>, offset: u64, len: u64 },
    /// Start the writeback of a blob file, by path (a blob released meanwhile is skipped).
    BlobWriteback(PathBuf),
    /// Drop a blob file's cached pages, by path.
    BlobDrop(PathBuf),
}

struct Queue {
    hints: Mutex<VecDeque<Hint>>,
    ready: Condvar,
}

/// How many hints were queued, carried out and dropped since the process started (for
/// tests).
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WritebackHintCounters {
    pub queued: u64,
    pub done: u64,
    pub dropped: u64,
}

static QUEUED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The hints counted so far in this process.
#[doc(hidden)]
pub fn writeback_hint_counters() -> WritebackHintCounters {
    WritebackHintCounters {
        queued: QUEUED.load(Ordering::SeqCst),
        done: DONE.load(Ordering::SeqCst),
        dropped: DROPPED.load(Ordering::SeqCst),
    }
}

/// Waits until every hint queued so far has been carried out, for at most `timeout`;
/// whether they were (for tests: the thread takes hints in order, so once it has done as many
/// as were queued when this was called, those are done).
#[doc(hidden)]
pub fn wait_for_writeback_hints(timeout: std::time::Duration) -> bool {
    let queued = QUEUED.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + timeout;
    while DONE.load(Ordering::SeqCst) < queued {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

fn queue() -> Option<&'static Queue> {
    static QUEUE: OnceLock<Option<&'static Queue>> = OnceLock::new();
    *QUEUE.get_or_init(|| {
        let queue: &'static Queue = Box::leak(Box::new(Queue {
            hints: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }));
        match std::thread::Builder::new()
            .name("sled-writeback".into())
            .spawn(move || run(queue))
        {
            Ok(_) => Some(queue),
            Err(e) => {
                log::warn!("no writeback thread ({}); hints run on the writing thread", e);
                None
            }
        }
    })
}

/// Queues `hint` for the writeback thread; carries it out here if there is no thread.
pub(crate) fn submit(hint: Hint) {
    let Some(queue) = queue() else {
        carry_out(hint);
        return;
    };
    let mut hints =
        queue.hints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if hints.len() >= HINTS_PENDING_MAX {
        DROPPED.fetch_add(1, Ordering::SeqCst);
        return;
    }
    hints.push_back(hint);
    QUEUED.fetch_add(1, Ordering::SeqCst);
    if hints.len() == 1 {
        queue.ready.notify_one();
    }
}

fn run(queue: &'static Queue) {
    loop {
        let batch: Vec<Hint> = {
            let mut hints =
                queue.hints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            while hints.is_empty() {
                hints = queue
                    .ready
                    .wait(hints)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            hints.drain(..).collect()
        };
        for hint in batch {
            carry_out(hint);
            DONE.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn carry_out(hint: Hint) {
    match hint {
        Hint::LogWriteback { file, offset, len, error } => {
            if let Err(e) = start_log_writeback(&file, offset, len) {
                let mut slot =
                    error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if slot.is_none() {
                    *slot = Some(e);
                }
            }
        }
        Hint::LogDrop { file, offset, len } => {
            super::blob_io::drop_cached_pages(&file, offset, len)
        }
        Hint::BlobWriteback(path) => super::blob_io::start_writeback(&path),
        Hint::BlobDrop(path) => {
            if let Ok(file) = File::open(&path) {
                super::blob_io::drop_cached_pages(&file, 0, 0);
            }
        }
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the range's whole pages: starts their
/// writeback without waiting for the device (iobuf's `sync_range`, which makes it a full sync
/// where the call does not exist).
///
/// A page the range ends inside is left to the next range, which starts inside it (ranges
/// are contiguous in a log) and so covers it once it is whole. Writing it back now would lock
/// it while the log's writer appends the next bytes into it: the writer, on another thread
/// now, then waited for the page lock (`perf sched`: 284 waits in `ext4_da_write_begin` in a
/// minute at 78,000 records/s; none in the minute recorded once the partial page was left
/// alone).
#[cfg(all(not(feature = "io_uring"), target_os = "linux"))]
fn start_log_writeback(file: &File, offset: u64, len: u64) -> crate::Result<()> {
    let end = (offset + len) & !(super::blob_io::page_size() - 1);
    if end <= offset {
        return Ok(());
    }
    super::iobuf::sync_range(file, offset, end - offset, libc::SYNC_FILE_RANGE_WRITE)
}

/// Only the Linux build without `io_uring` queues log writebacks.
#[cfg(not(all(not(feature = "io_uring"), target_os = "linux")))]
fn start_log_writeback(file: &File, _offset: u64, _len: u64) -> crate::Result<()> {
    file.sync_all()?;
    Ok(())
}
