//! Durable watermarks: what each replica knows it once held, kept apart from its log.
//!
//! sled recovers a database by replaying its log up to the first segment that fails its
//! checksum and silently drops everything after it; a damaged or truncated file therefore
//! opens as an *older* database, whose logs are shorter and whose promises are lower than the
//! ones this node acknowledged (a reviewer lost 3,754 of 5,001 acknowledged records that way,
//! and the node then reused their offsets). Nothing inside the database can reveal that: the
//! metadata written after the damaged segment is gone with the data. So each store keeps, per
//! log, the highest offset the replica recorded as committed and durable and the highest epoch
//! it promised, in a small file of its own next to the database, rewritten after each flush
//! that follows a change (see [`WatermarkFile::store`]). A log that opens shorter than its
//! watermark lost committed data on this replica; see `PartitionLog`.
//!
//! The file is `cairn.watermarks` inside the database directory (sled leaves files it does not
//! know alone). Its bytes: the magic `CAIRNWM1`, a u32 entry count,
//! per entry a u16 name length, the name, the committed end (u64) and the promised epoch
//! (u64), all big-endian, then a CRC32C of everything before it. A file that fails its
//! checksum is a typed error at open, never read as "no watermarks".

use crate::StorageError;
use cairn_protocol::{Epoch, Offset};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const MAGIC: &[u8; 8] = b"CAIRNWM1";

/// The file's name inside the database directory.
pub const WATERMARK_FILE_NAME: &str = "cairn.watermarks";

/// Logs one watermark file may describe; a node hosts far fewer partitions than this. Bounds
/// what a damaged count field could make the decoder allocate.
pub const WATERMARK_ENTRIES_MAX: usize = 1 << 20;

/// What one replica is known to have held durably.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    /// Every offset below this was committed and durable in this replica's log.
    pub committed_end: Offset,
    /// The highest epoch this replica promised (DESIGN 5.1).
    pub promised_epoch: Epoch,
}

impl Watermark {
    /// The larger of each field: watermarks only grow.
    pub fn max(self, other: Watermark) -> Watermark {
        Watermark {
            committed_end: self.committed_end.max(other.committed_end),
            promised_epoch: self.promised_epoch.max(other.promised_epoch),
        }
    }
}

pub(crate) fn encode(entries: &BTreeMap<String, Watermark>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (name, watermark) in entries {
        let name = name.as_bytes();
        let name_len = u16::try_from(name.len()).expect("log names are short");
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&watermark.committed_end.0.to_be_bytes());
        out.extend_from_slice(&watermark.promised_epoch.0.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn damaged(reason: &str) -> StorageError {
    StorageError::WatermarksDamaged {
        reason: reason.to_owned(),
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Watermark>, StorageError> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err(damaged("shorter than its checksum"));
    };
    if crc32c::crc32c(body) != u32::from_be_bytes(*crc) {
        return Err(damaged("checksum mismatch"));
    }
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(damaged("unknown format"));
    };
    let mut cursor = Cursor(rest);
    let count = cursor.u32()? as usize;
    if count > WATERMARK_ENTRIES_MAX {
        return Err(damaged("too many entries"));
    }
    let mut entries = BTreeMap::new();
    for _ in 0..count {
        let name_len = usize::from(cursor.u16()?);
        let name = std::str::from_utf8(cursor.take(name_len)?)
            .map_err(|_| damaged("a log name is not UTF-8"))?
            .to_owned();
        let watermark = Watermark {
            committed_end: Offset(cursor.u64()?),
            promised_epoch: Epoch(cursor.u64()?),
        };
        entries.insert(name, watermark);
    }
    if !cursor.0.is_empty() {
        return Err(damaged("bytes after the last entry"));
    }
    Ok(entries)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], StorageError> {
        if self.0.len() < len {
            return Err(damaged("cut short"));
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, StorageError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The per-store table: what is recorded now, and whether the file lags it.
#[derive(Debug, Default)]
pub(crate) struct WatermarkTable {
    pub(crate) entries: BTreeMap<String, Watermark>,
    pub(crate) dirty: bool,
}

impl WatermarkTable {
    pub(crate) fn get(&self, name: &str) -> Watermark {
        self.entries.get(name).copied().unwrap_or_default()
    }

    /// Raises `name`'s watermark to at least `watermark`; marks the table dirty if it moved.
    pub(crate) fn raise(&mut self, name: &str, watermark: Watermark) {
        let current = self.get(name);
        let raised = current.max(watermark);
        if raised != current {
            self.entries.insert(name.to_owned(), raised);
            self.dirty = true;
        }
    }

    pub(crate) fn remove(&mut self, name: &str) {
        if self.entries.remove(name).is_some() {
            self.dirty = true;
        }
    }
}

/// The file inside a sled database's directory.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkFile {
    path: PathBuf,
    /// `fsync` the file and its directory after each rewrite (with `Durability::Fsync`).
    sync: bool,
}

impl WatermarkFile {
    pub(crate) fn inside(store_path: &Path, sync: bool) -> WatermarkFile {
        WatermarkFile {
            path: store_path.join(WATERMARK_FILE_NAME),
            sync,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is an empty table (a new store, or one from before
    /// watermarks existed).
    pub(crate) fn load(&self) -> Result<WatermarkTable, StorageError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(WatermarkTable {
                entries: decode(&bytes).map_err(|error| match error {
                    StorageError::WatermarksDamaged { reason } => StorageError::WatermarksDamaged {
                        reason: format!("{}: {reason}", self.path.display()),
                    },
                    other => other,
                })?,
                dirty: false,
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(WatermarkTable::default())
            }
            Err(error) => Err(StorageError::Io(format!(
                "cannot read {}: {error}",
                self.path.display()
            ))),
        }
    }

    /// Rewrites the file if the table changed since the last write. The new table is
    /// written whole into `cairn.watermarks.tmp`, then the two names are swapped in one step
    /// (`renameat2` with `RENAME_EXCHANGE`), so a crash leaves the old file or the new one
    /// under the name, never a mix, and the old file becomes the next rewrite's temporary.
    ///
    /// The swap is what keeps this cheap: a rewrite follows every flush that moved a
    /// watermark, a hundred or more times a second per store under load, and a plain rename
    /// over the name deletes an inode each time and makes the next file creation allocate one.
    /// On ext4, allocating an inode first skips, one by one, every inode deleted in the last
    /// seconds to minutes (`find_inode_bit` -> `recently_deleted`): with create-and-rename
    /// that scan was a quarter of the nodes' CPU in the rf3-1kb-max benchmark (perf). File
    /// systems without the exchange (it is Linux's, since 3.15) get the plain rename.
    /// Writes the table if it changed since it was last written.
    pub(crate) fn store(&self, table: &mut WatermarkTable) -> Result<(), StorageError> {
        if !table.dirty {
            return Ok(());
        }
        self.write(&encode(&table.entries))?;
        table.dirty = false;
        Ok(())
    }

    /// Replaces the file's contents with `bytes` (an [`encode`]d table): written to a
    /// temporary file, exchanged with the current one, and, when syncing, the file and then
    /// its directory synced, so that the name holds either the old table or the new one.
    fn write(&self, bytes: &[u8]) -> Result<(), StorageError> {
        let io = |error: std::io::Error| {
            StorageError::Io(format!("cannot write {}: {error}", self.path.display()))
        };
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&temporary)
            .map_err(io)?;
        file.write_all_at(bytes, 0).map_err(io)?;
        file.set_len(bytes.len() as u64).map_err(io)?;
        if self.sync {
            file.sync_data().map_err(io)?;
        }
        drop(file);
        let exchanged = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &temporary,
            rustix::fs::CWD,
            &self.path,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        match exchanged {
            Ok(()) => {}
            Err(
                rustix::io::Errno::NOENT
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::NOTSUP,
            ) => {
                std::fs::rename(&temporary, &self.path).map_err(io)?;
            }
            Err(error) => return Err(io(error.into())),
        }
        if self.sync {
            if let Some(directory) = self.path.parent() {
                std::fs::File::open(directory)
                    .and_then(|directory| directory.sync_all())
                    .map_err(io)?;
            }
        }
        Ok(())
    }
}

/// Writes a store's watermark file on a thread of its own, so that a flush runs the file's
/// syncs beside the database's instead of after them (in `fsync` mode they were two of every
/// flush's serial syncs, about 40% of its time).
///
/// That is safe because a table never names more than was durable *before* the flush that
/// writes it began: a log raises its committed end only to what an earlier flush made durable
/// (`PartitionLog::raise_committed_watermark`), and a promised epoch it names ahead of the
/// database only makes the log refuse more after a restart (an open takes the higher of the
/// two). Jobs run one at a time in the order they were begun, so the file never goes back to
/// an older table.
pub(crate) struct WatermarkWriter {
    jobs: Option<mpsc::SyncSender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WriteJob {
    bytes: Vec<u8>,
    done: mpsc::SyncSender<Result<(), StorageError>>,
}

/// A write begun by [`WatermarkWriter::begin`]; [`PendingWrite::wait`] returns its outcome.
#[must_use = "a flush is not complete until its watermark write is"]
pub(crate) struct PendingWrite(mpsc::Receiver<Result<(), StorageError>>);

impl PendingWrite {
    pub(crate) fn wait(self) -> Result<(), StorageError> {
        self.0.recv().unwrap_or_else(|_| {
            Err(StorageError::Io(
                "the watermark writer stopped before writing".to_owned(),
            ))
        })
    }
}

impl WatermarkWriter {
    pub(crate) fn start(file: &WatermarkFile) -> Result<WatermarkWriter, StorageError> {
        // One job runs and one waits at most: a flush waits for its own job, so flushes that
        // overlap (a shutdown's beside the group commit's) are the only ones that queue.
        let (jobs, queue) = mpsc::sync_channel::<WriteJob>(1);
        let file = file.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-watermark".to_owned())
            .spawn(move || {
                for job in queue {
                    // A flush that stopped waiting has nothing to be told.
                    drop(job.done.send(file.write(&job.bytes)));
                }
            })
            .map_err(|error| {
                StorageError::Io(format!("cannot start the watermark writer: {error}"))
            })?;
        Ok(WatermarkWriter {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Begins writing the table if it changed since its last write, and marks it written; the
    /// caller holds the table's lock, which orders the jobs. If the write fails, the caller
    /// marks the table dirty again, so that the next flush retries it.
    pub(crate) fn begin(&self, table: &mut WatermarkTable) -> Option<PendingWrite> {
        if !table.dirty {
            return None;
        }
        table.dirty = false;
        let (done, outcome) = mpsc::sync_channel(1);
        let job = WriteJob {
            bytes: encode(&table.entries),
            done,
        };
        if let Some(jobs) = &self.jobs {
            // A send fails only once the thread is gone; `wait` then reports the error.
            drop(jobs.send(job));
        }
        Some(PendingWrite(outcome))
    }
}

impl Drop for WatermarkWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the jobs already queued.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BTreeMap<String, Watermark> {
        BTreeMap::from([
            (
                "a".to_owned(),
                Watermark {
                    committed_end: Offset(7),
                    promised_epoch: Epoch(3),
                },
            ),
            ("topic-1/0".to_owned(), Watermark::default()),
        ])
    }

    #[test]
    fn a_table_round_trips() {
        assert_eq!(decode(&encode(&table())).unwrap(), table());
        assert_eq!(decode(&encode(&BTreeMap::new())).unwrap(), BTreeMap::new());
    }

    #[test]
    fn any_flipped_byte_or_cut_is_a_typed_error() {
        let bytes = encode(&table());
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(
                matches!(
                    decode(&damaged),
                    Err(StorageError::WatermarksDamaged { .. })
                ),
                "byte {index}"
            );
            assert!(
                matches!(
                    decode(&bytes[..index]),
                    Err(StorageError::WatermarksDamaged { .. })
                ),
                "cut at {index}"
            );
        }
    }

    #[test]
    fn rewrites_swap_two_files_and_the_name_always_holds_the_latest_table() {
        use std::os::unix::fs::MetadataExt;
        let directory = tempfile::tempdir().unwrap();
        let file = WatermarkFile::inside(directory.path(), false);
        let mut table = WatermarkTable::default();
        let mut inodes = std::collections::BTreeSet::new();
        for end in 1..=6u64 {
            table.raise(
                "topic/0",
                Watermark {
                    committed_end: Offset(end * 1_000),
                    promised_epoch: Epoch(end),
                },
            );
            // A longer name on the odd rounds: a shorter table must not keep a longer one's tail.
            if end % 2 == 1 {
                table.raise(&format!("a-longer-log-name-{end}"), Watermark::default());
            } else {
                table.remove(&format!("a-longer-log-name-{}", end - 1));
            }
            file.store(&mut table).unwrap();
            assert!(!table.dirty);
            assert_eq!(file.load().unwrap().entries, table.entries, "round {end}");
            inodes.insert(std::fs::metadata(file.path()).unwrap().ino());
        }
        assert_eq!(
            inodes.len(),
            2,
            "every rewrite after the first reuses one of two files"
        );
    }

    #[test]
    fn watermarks_only_grow_and_only_changes_dirty_the_table() {
        let mut table = WatermarkTable::default();
        let high = Watermark {
            committed_end: Offset(10),
            promised_epoch: Epoch(2),
        };
        table.raise("p", high);
        assert!(table.dirty);
        table.dirty = false;
        table.raise(
            "p",
            Watermark {
                committed_end: Offset(4),
                promised_epoch: Epoch(1),
            },
        );
        assert_eq!((table.get("p"), table.dirty), (high, false));
    }
}
