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
//! know alone). A *table* is encoded as the magic `CAIRNWM1`, a u32 entry count, per entry a
//! u16 name length, the name, the committed end (u64) and the promised epoch (u64), all
//! big-endian, then a CRC32C of everything before it. The file holds two *slots* of equal,
//! page-aligned size; each slot is the magic `CAIRNWS2`, a u64 sequence number, a u32 length,
//! that many bytes of table, and a CRC32C of the slot's bytes before it. A rewrite overwrites
//! the older slot in place (see [`WatermarkFile::store`]), so the newer one is intact whatever
//! a crash does to the write; an open takes the valid slot with the higher sequence. A file
//! with no valid slot is a typed error at open, never read as "no watermarks". A file holding
//! one bare table (the format before slots) is read as that table and replaced by the slot
//! format on its next rewrite.

use crate::StorageError;
use cairn_protocol::{Epoch, Offset};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const MAGIC: &[u8; 8] = b"CAIRNWM1";

/// The magic at the start of each slot.
const SLOT_MAGIC: &[u8; 8] = b"CAIRNWS2";

/// A slot's bytes around its table: magic, sequence, length, and the slot's checksum.
const SLOT_OVERHEAD: usize = 8 + 8 + 4 + 4;

/// The smallest slot: one page, so that writing one slot never rewrites a page (or a sector)
/// of the other. A table of about 80 logs fits; larger ones double it as needed.
const SLOT_BYTES_MIN: usize = 4096;

/// Slots larger than this are refused (a damaged file's size must not make the reader guess).
const SLOT_BYTES_MAX: usize = 1 << 30;

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

/// A slot's bytes (without padding) holding `table`, an [`encode`]d table.
fn encode_slot(sequence: u64, table: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOT_OVERHEAD + table.len());
    out.extend_from_slice(SLOT_MAGIC);
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&(table.len() as u32).to_be_bytes());
    out.extend_from_slice(table);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The sequence and the table of a slot (`slot` is the whole slot, padding included).
fn decode_slot(slot: &[u8]) -> Result<(u64, BTreeMap<String, Watermark>), StorageError> {
    let mut cursor = Cursor(slot);
    if cursor.take(8)? != SLOT_MAGIC {
        return Err(damaged("a slot has no magic"));
    }
    let sequence = cursor.u64()?;
    let table_len = cursor.u32()? as usize;
    let table = cursor.take(table_len)?;
    let crc = cursor.u32()?;
    let covered = &slot[..SLOT_OVERHEAD - 4 + table_len];
    if crc32c::crc32c(covered) != crc {
        return Err(damaged("a slot's checksum mismatch"));
    }
    Ok((sequence, decode(table)?))
}

/// The slot size for a slot's bytes: a power of two of at least a page.
fn slot_bytes_for(slot_len: usize) -> usize {
    slot_len.next_power_of_two().max(SLOT_BYTES_MIN)
}

/// What a file's bytes hold: its newest table, and the slot layout if it has one.
fn decode_file(bytes: &[u8]) -> Result<(BTreeMap<String, Watermark>, Option<Slots>), StorageError> {
    if bytes.starts_with(MAGIC) {
        return Ok((decode(bytes)?, None));
    }
    let slot_bytes = bytes.len() / 2;
    if !bytes.len().is_multiple_of(2)
        || !slot_bytes.is_power_of_two()
        || !(SLOT_BYTES_MIN..=SLOT_BYTES_MAX).contains(&slot_bytes)
    {
        return Err(damaged("its size is not two slots"));
    }
    let (first, second) = bytes.split_at(slot_bytes);
    let skipped = |slot: &[u8], error: StorageError| {
        // A slot never written since the file was made is zeros; any other is a rewrite a
        // crash cut short, or damage.
        if slot.iter().any(|byte| *byte != 0) {
            tracing::warn!(%error, "a watermark slot is damaged (a rewrite cut short by a crash, or a damaged disk): the other one, a rewrite older, is used");
        }
    };
    let (index, (sequence, table)) = match (decode_slot(first), decode_slot(second)) {
        (Ok(a), Ok(b)) if b.0 >= a.0 => (1, b),
        (Ok(a), Ok(_)) => (0, a),
        (Ok(a), Err(error)) => {
            skipped(second, error);
            (0, a)
        }
        (Err(error), Ok(b)) => {
            skipped(first, error);
            (1, b)
        }
        (Err(error), Err(_)) => return Err(error),
    };
    Ok((
        table,
        Some(Slots {
            slot_bytes,
            sequence,
            newest: index,
        }),
    ))
}

fn io_error<'a>(path: &'a Path, doing: &'a str) -> impl Fn(std::io::Error) -> StorageError + 'a {
    move |error| StorageError::Io(format!("cannot {doing} {}: {error}", path.display()))
}

/// Where the slot format stands in an open file: the next rewrite goes to the other slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slots {
    slot_bytes: usize,
    /// The newest slot's sequence number.
    sequence: u64,
    /// The newest slot: 0 or 1.
    newest: usize,
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

/// The file inside a sled database's directory, and, once it is in the slot format, its open
/// handle for rewrites in place.
#[derive(Debug)]
pub(crate) struct WatermarkFile {
    path: PathBuf,
    /// `fdatasync` each rewrite, and the directory after a replacement (with
    /// `Durability::Fsync`).
    sync: bool,
    /// The file open for writing, and where its slots stand.
    open: Option<(std::fs::File, Slots)>,
}

impl WatermarkFile {
    pub(crate) fn inside(store_path: &Path, sync: bool) -> WatermarkFile {
        WatermarkFile {
            path: store_path.join(WATERMARK_FILE_NAME),
            sync,
            open: None,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is an empty table (a new store, or one from before
    /// watermarks existed). A file in the slot format stays open for the rewrites.
    pub(crate) fn load(&mut self) -> Result<WatermarkTable, StorageError> {
        use std::io::Read;
        self.open = None;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path);
        let mut file = match opened {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(WatermarkTable::default())
            }
            Err(error) => return Err(io_error(&self.path, "read")(error)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_error(&self.path, "read"))?;
        let (entries, slots) = decode_file(&bytes).map_err(|error| match error {
            StorageError::WatermarksDamaged { reason } => StorageError::WatermarksDamaged {
                reason: format!("{}: {reason}", self.path.display()),
            },
            other => other,
        })?;
        self.open = slots.map(|slots| (file, slots));
        Ok(WatermarkTable {
            entries,
            dirty: false,
        })
    }

    /// Writes the table if it changed since it was last written.
    ///
    /// A rewrite overwrites the older of the two slots in place and syncs its data, one
    /// `fdatasync` of one page: a rewrite follows every flush that moved a watermark, a
    /// hundred or more times a second per store under load, and it runs beside the flush's
    /// own syncs (see [`WatermarkWriter`]). A crash during it can tear only that slot; the
    /// other still holds the previous table, which named less, and was on disk before the
    /// flush this rewrite belongs to began (so no acknowledgement rested on the torn one).
    ///
    /// A table that outgrew its slot, and the first write of a new file or of one in the old
    /// format, replace the file instead (see [`WatermarkFile::replace`]).
    pub(crate) fn store(&mut self, table: &mut WatermarkTable) -> Result<(), StorageError> {
        if !table.dirty {
            return Ok(());
        }
        self.write(&encode(&table.entries))?;
        table.dirty = false;
        Ok(())
    }

    /// Writes an [`encode`]d table into the older slot, or replaces the file.
    fn write(&mut self, table: &[u8]) -> Result<(), StorageError> {
        let Some((file, slots)) = self.open.as_mut() else {
            return self.replace(table);
        };
        if SLOT_OVERHEAD + table.len() > slots.slot_bytes {
            return self.replace(table);
        }
        let target = 1 - slots.newest;
        let sequence = slots.sequence + 1;
        let io = io_error(&self.path, "write");
        // Until both succeed the slots stand as they were: a retry writes the same slot again
        // and never the one holding the newest complete table.
        file.write_all_at(
            &encode_slot(sequence, table),
            (target * slots.slot_bytes) as u64,
        )
        .map_err(&io)?;
        if self.sync {
            file.sync_data().map_err(&io)?;
        }
        *slots = Slots {
            slot_bytes: slots.slot_bytes,
            sequence,
            newest: target,
        };
        Ok(())
    }

    /// Replaces the file with one whose first slot holds `table`, with slots large enough
    /// for it: written whole into `cairn.watermarks.tmp`, synced, renamed over the name, and
    /// the directory synced, so that the name holds either the old file or the new one.
    fn replace(&mut self, table: &[u8]) -> Result<(), StorageError> {
        let path = self.path.clone();
        let io = io_error(&path, "write");
        let sequence = self.open.as_ref().map_or(0, |(_, slots)| slots.sequence) + 1;
        let mut bytes = encode_slot(sequence, table);
        let slot_bytes = slot_bytes_for(bytes.len());
        if slot_bytes > SLOT_BYTES_MAX {
            return Err(StorageError::Io(format!(
                "cannot write {}: a table of {} bytes is larger than a slot may be",
                self.path.display(),
                table.len()
            )));
        }
        bytes.resize(2 * slot_bytes, 0);
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(&io)?;
        file.write_all_at(&bytes, 0).map_err(&io)?;
        if self.sync {
            file.sync_data().map_err(&io)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(&io)?;
        if self.sync {
            if let Some(directory) = self.path.parent() {
                std::fs::File::open(directory)
                    .and_then(|directory| directory.sync_all())
                    .map_err(&io)?;
            }
        }
        self.open = Some((
            file,
            Slots {
                slot_bytes,
                sequence,
                newest: 0,
            },
        ));
        Ok(())
    }
}

/// Writes a store's watermark file beside each flush.
///
/// With syncs (`Durability::Fsync`) the write runs on a thread of its own, so that a flush runs
/// the file's sync beside the database's instead of after them (in `fsync` mode the file's
/// syncs were about 40% of a flush's time when they ran after the database's). Without syncs a
/// rewrite is one `pwrite` of a page into the page cache, a few microseconds, and the flushing
/// thread does it itself: handing it to a thread cost two thread wake-ups per flush, more than
/// the write.
///
/// Either way it is safe, because a table never names more than was durable *before* the flush
/// that writes it began: a log raises its committed end only to what an earlier flush made
/// durable (`PartitionLog::raise_committed_watermark`), and a promised epoch it names ahead of
/// the database only makes the log refuse more after a restart (an open takes the higher of the
/// two). Writes run one at a time in the order they were begun (under the table's lock, or
/// through the thread's queue), so the file never goes back to an older table.
pub(crate) struct WatermarkWriter {
    /// The file, written by the caller of [`WatermarkWriter::begin`] (no syncs).
    inline: Option<std::sync::Mutex<WatermarkFile>>,
    jobs: Option<mpsc::SyncSender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WriteJob {
    bytes: Vec<u8>,
    done: mpsc::SyncSender<Result<(), StorageError>>,
}

/// A write begun by [`WatermarkWriter::begin`]; [`PendingWrite::wait`] returns its outcome.
#[must_use = "a flush is not complete until its watermark write is"]
pub(crate) enum PendingWrite {
    /// Written by the caller already.
    Done(Result<(), StorageError>),
    /// Queued for the writer thread.
    Queued(mpsc::Receiver<Result<(), StorageError>>),
}

impl PendingWrite {
    pub(crate) fn wait(self) -> Result<(), StorageError> {
        match self {
            PendingWrite::Done(outcome) => outcome,
            PendingWrite::Queued(outcome) => outcome.recv().unwrap_or_else(|_| {
                Err(StorageError::Io(
                    "the watermark writer stopped before writing".to_owned(),
                ))
            }),
        }
    }
}

impl WatermarkWriter {
    pub(crate) fn start(mut file: WatermarkFile) -> Result<WatermarkWriter, StorageError> {
        if !file.sync {
            return Ok(WatermarkWriter {
                inline: Some(std::sync::Mutex::new(file)),
                jobs: None,
                thread: None,
            });
        }
        // One job runs and one waits at most: a flush waits for its own job, so flushes that
        // overlap (a shutdown's beside the group commit's) are the only ones that queue.
        let (jobs, queue) = mpsc::sync_channel::<WriteJob>(1);
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
            inline: None,
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
        let bytes = encode(&table.entries);
        if let Some(file) = &self.inline {
            let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            return Some(PendingWrite::Done(file.write(&bytes)));
        }
        let (done, outcome) = mpsc::sync_channel(1);
        let job = WriteJob { bytes, done };
        if let Some(jobs) = &self.jobs {
            // A send fails only once the thread is gone; `wait` then reports the error.
            drop(jobs.send(job));
        }
        Some(PendingWrite::Queued(outcome))
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

    fn raised(table: &mut WatermarkTable, name: &str, end: u64) {
        table.raise(
            name,
            Watermark {
                committed_end: Offset(end),
                promised_epoch: Epoch(end),
            },
        );
    }

    fn reread(file: &WatermarkFile) -> Result<BTreeMap<String, Watermark>, StorageError> {
        WatermarkFile::inside(file.path().parent().unwrap(), false)
            .load()
            .map(|table| table.entries)
    }

    #[test]
    fn the_writer_writes_each_begun_table_in_order_with_or_without_syncs() {
        for sync in [false, true] {
            let directory = tempfile::tempdir().unwrap();
            let file = WatermarkFile::inside(directory.path(), sync);
            let reader = WatermarkFile::inside(directory.path(), false);
            let writer = WatermarkWriter::start(file).unwrap();
            // Without syncs the caller writes; with them, a thread of the writer's own.
            assert_eq!(writer.inline.is_some(), !sync);
            assert_eq!(writer.thread.is_some(), sync);
            let mut table = WatermarkTable::default();
            assert!(writer.begin(&mut table).is_none(), "nothing changed yet");
            for end in 1..=5u64 {
                raised(&mut table, "topic/0", end * 100);
                let pending = writer
                    .begin(&mut table)
                    .expect("a changed table is written");
                assert!(!table.dirty);
                pending.wait().unwrap();
                assert_eq!(
                    reread(&reader).unwrap(),
                    table.entries,
                    "sync {sync}, {end}"
                );
            }
            assert!(writer.begin(&mut table).is_none(), "written already");
        }
    }

    #[test]
    fn rewrites_alternate_two_slots_in_place_and_the_file_always_holds_the_latest_table() {
        use std::os::unix::fs::MetadataExt;
        let directory = tempfile::tempdir().unwrap();
        let mut file = WatermarkFile::inside(directory.path(), false);
        let mut table = WatermarkTable::default();
        let mut inodes = std::collections::BTreeSet::new();
        for end in 1..=6u64 {
            raised(&mut table, "topic/0", end * 1_000);
            // A longer name on the odd rounds: a shorter table must not keep a longer one's tail.
            if end % 2 == 1 {
                table.raise(&format!("a-longer-log-name-{end}"), Watermark::default());
            } else {
                table.remove(&format!("a-longer-log-name-{}", end - 1));
            }
            file.store(&mut table).unwrap();
            assert!(!table.dirty);
            assert_eq!(reread(&file).unwrap(), table.entries, "round {end}");
            let metadata = std::fs::metadata(file.path()).unwrap();
            assert_eq!(metadata.len(), 2 * SLOT_BYTES_MIN as u64);
            inodes.insert(metadata.ino());
        }
        assert_eq!(inodes.len(), 1, "every rewrite after the first is in place");
        // A store opened on the file goes on where the last one stopped.
        let mut reopened = WatermarkFile::inside(directory.path(), false);
        let mut table = reopened.load().unwrap();
        raised(&mut table, "topic/0", 9_000);
        reopened.store(&mut table).unwrap();
        assert_eq!(reread(&reopened).unwrap(), table.entries);
    }

    #[test]
    fn a_damaged_newest_slot_gives_the_previous_table_and_two_give_a_typed_error() {
        let directory = tempfile::tempdir().unwrap();
        let mut file = WatermarkFile::inside(directory.path(), false);
        let mut table = WatermarkTable::default();
        raised(&mut table, "p", 1);
        file.store(&mut table).unwrap();
        let previous = table.entries.clone();
        raised(&mut table, "p", 2);
        file.store(&mut table).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        let (newest, slots) = decode_file(&bytes).unwrap();
        assert_eq!((newest, slots.unwrap().newest), (table.entries.clone(), 1));

        // Whatever a torn write did to the newest slot (any byte of it flipped), the other
        // one is read.
        let newest_len = SLOT_OVERHEAD + encode(&table.entries).len();
        for index in 0..newest_len {
            let mut torn = bytes.clone();
            torn[SLOT_BYTES_MIN + index] ^= 0x04;
            assert_eq!(decode_file(&torn).unwrap().0, previous, "byte {index}");
        }
        // Both slots damaged, or a file cut short: a typed error, never an empty table.
        let mut both = bytes.clone();
        both[3] ^= 0x01;
        both[SLOT_BYTES_MIN + 3] ^= 0x01;
        for damaged in [
            &both[..],
            &bytes[..bytes.len() - 1],
            &bytes[..SLOT_BYTES_MIN],
        ] {
            assert!(matches!(
                decode_file(damaged),
                Err(StorageError::WatermarksDamaged { .. })
            ));
        }

        // After an open that found the newest slot torn, the next rewrite goes over it.
        let mut torn = bytes.clone();
        torn[SLOT_BYTES_MIN + 20] ^= 0x01;
        std::fs::write(file.path(), &torn).unwrap();
        let mut reopened = WatermarkFile::inside(directory.path(), false);
        let mut table = reopened.load().unwrap();
        assert_eq!(table.entries, previous);
        raised(&mut table, "p", 3);
        reopened.store(&mut table).unwrap();
        let bytes = std::fs::read(reopened.path()).unwrap();
        assert_eq!(decode_slot(&bytes[..SLOT_BYTES_MIN]).unwrap().1, previous);
        assert_eq!(reread(&reopened).unwrap(), table.entries);
    }

    #[test]
    fn a_table_that_outgrows_its_slot_replaces_the_file_with_larger_slots() {
        let directory = tempfile::tempdir().unwrap();
        let mut file = WatermarkFile::inside(directory.path(), false);
        let mut table = WatermarkTable::default();
        raised(&mut table, "small", 1);
        file.store(&mut table).unwrap();
        for index in 0..100u64 {
            raised(
                &mut table,
                &format!("a-topic-with-a-rather-long-name/{index}"),
                index + 1,
            );
        }
        assert!(encode(&table.entries).len() > SLOT_BYTES_MIN);
        file.store(&mut table).unwrap();
        let size = std::fs::metadata(file.path()).unwrap().len();
        assert_eq!(size, 4 * SLOT_BYTES_MIN as u64, "two slots of two pages");
        assert_eq!(reread(&file).unwrap(), table.entries);
        raised(&mut table, "small", 2);
        file.store(&mut table).unwrap();
        assert_eq!(reread(&file).unwrap(), table.entries);
        assert_eq!(std::fs::metadata(file.path()).unwrap().len(), size);
    }

    #[test]
    fn a_file_in_the_format_before_slots_is_read_and_replaced_on_the_next_rewrite() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(WATERMARK_FILE_NAME);
        std::fs::write(&path, encode(&table())).unwrap();
        let mut file = WatermarkFile::inside(directory.path(), false);
        let mut loaded = file.load().unwrap();
        assert_eq!(loaded.entries, table());
        raised(&mut loaded, "a", 8);
        file.store(&mut loaded).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * SLOT_BYTES_MIN as u64
        );
        assert_eq!(reread(&file).unwrap(), loaded.entries);
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
