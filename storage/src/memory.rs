//! The in-memory twin of [`crate::sled_store`], for tests and the deterministic simulator.
//!
//! It runs the very same rules (the private `core` module) over `BTreeMap`s. Every write is also kept in
//! a journal; [`LogStore::flush`] applies the journal to a "durable" copy, and
//! [`MemoryStore::crash`] throws away whatever was not flushed (data and metadata alike: log
//! start, promised epoch, epoch history, values, created and removed logs) and reopens every
//! log from the durable copy, exactly as a restarted process would. [`MemoryStore::crash_torn`]
//! keeps a prefix of the unflushed writes instead, as sled may after a kill, so simulations also
//! exercise the repair done on open. Watermarks (see [`crate::watermark`]) survive a crash as
//! of the last flush, like the file sled keeps beside its database; and
//! [`MemoryStore::lose_flushed_suffix`] forgets flushed data, as a sled database with a damaged
//! segment does.

use crate::core::{Backend, LogState};
use crate::watermark::{Watermark, WatermarkTable};
use crate::{EpochStart, LogStore, PartitionLog, RetentionPolicy, StorageError};
use bytes::Bytes;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::{Epoch, Offset};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Default)]
struct MemoryData {
    data: BTreeMap<Offset, Bytes>,
    meta: BTreeMap<String, Bytes>,
    time: BTreeMap<i64, Offset>,
}

/// One primitive write, as the journal records it.
#[derive(Debug, Clone)]
enum MemoryWrite {
    Create,
    Remove,
    Data(Offset, Option<Bytes>),
    Meta(String, Option<Bytes>),
    Time(i64, Option<Offset>),
}

fn apply(logs: &mut BTreeMap<String, MemoryData>, name: &str, write: MemoryWrite) {
    match write {
        MemoryWrite::Create => {
            logs.entry(name.to_owned()).or_default();
        }
        MemoryWrite::Remove => {
            logs.remove(name);
        }
        write => apply_to_log(logs.entry(name.to_owned()).or_default(), write),
    }
}

fn apply_to_log(log: &mut MemoryData, write: MemoryWrite) {
    match write {
        MemoryWrite::Data(offset, Some(bytes)) => {
            log.data.insert(offset, bytes);
        }
        MemoryWrite::Data(offset, None) => {
            log.data.remove(&offset);
        }
        MemoryWrite::Meta(key, Some(bytes)) => {
            log.meta.insert(key, bytes);
        }
        MemoryWrite::Meta(key, None) => {
            log.meta.remove(&key);
        }
        MemoryWrite::Time(timestamp_ms, Some(offset)) => {
            log.time.insert(timestamp_ms, offset);
        }
        MemoryWrite::Time(timestamp_ms, None) => {
            log.time.remove(&timestamp_ms);
        }
        // Creating and removing whole logs is the store's business, see `apply`.
        MemoryWrite::Create | MemoryWrite::Remove => {}
    }
}

/// A log's maps seen through the journal: reads go to the current maps, writes go to both.
struct MemoryBackend<'a> {
    name: &'a str,
    data: &'a mut MemoryData,
    journal: &'a mut Vec<(String, MemoryWrite)>,
}

impl MemoryBackend<'_> {
    fn write(&mut self, write: MemoryWrite) {
        apply_to_log(self.data, write.clone());
        self.journal.push((self.name.to_owned(), write));
    }
}

fn entry((offset, bytes): (&Offset, &Bytes)) -> (Offset, Bytes) {
    (*offset, bytes.clone())
}

impl Backend for MemoryBackend<'_> {
    fn data_first(&self) -> Result<Option<(Offset, Bytes)>, StorageError> {
        Ok(self.data.data.first_key_value().map(entry))
    }

    fn data_last(&self) -> Result<Option<(Offset, Bytes)>, StorageError> {
        Ok(self.data.data.last_key_value().map(entry))
    }

    fn data_floor(&self, offset: Offset) -> Result<Option<(Offset, Bytes)>, StorageError> {
        Ok(self.data.data.range(..=offset).next_back().map(entry))
    }

    fn data_visit(
        &self,
        from: Offset,
        visit: &mut dyn FnMut(Offset, Bytes) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        for (offset, bytes) in self.data.data.range(from..) {
            if !visit(*offset, bytes.clone())? {
                break;
            }
        }
        Ok(())
    }

    fn data_put(&mut self, offset: Offset, bytes: &Bytes) -> Result<(), StorageError> {
        self.write(MemoryWrite::Data(offset, Some(bytes.clone())));
        Ok(())
    }

    fn data_remove(&mut self, offset: Offset) -> Result<(), StorageError> {
        self.write(MemoryWrite::Data(offset, None));
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(self.data.meta.get(key).cloned())
    }

    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.write(MemoryWrite::Meta(
            key.to_owned(),
            Some(Bytes::copy_from_slice(value)),
        ));
        Ok(())
    }

    fn time_first(&self) -> Result<Option<(i64, Offset)>, StorageError> {
        Ok(self.data.time.first_key_value().map(|(k, v)| (*k, *v)))
    }

    fn time_last(&self) -> Result<Option<(i64, Offset)>, StorageError> {
        Ok(self.data.time.last_key_value().map(|(k, v)| (*k, *v)))
    }

    fn time_ceiling(&self, timestamp_ms: i64) -> Result<Option<(i64, Offset)>, StorageError> {
        Ok(self
            .data
            .time
            .range((Bound::Included(timestamp_ms), Bound::Unbounded))
            .next()
            .map(|(k, v)| (*k, *v)))
    }

    fn time_put(&mut self, timestamp_ms: i64, offset: Offset) -> Result<(), StorageError> {
        self.write(MemoryWrite::Time(timestamp_ms, Some(offset)));
        Ok(())
    }

    fn time_remove(&mut self, timestamp_ms: i64) -> Result<(), StorageError> {
        self.write(MemoryWrite::Time(timestamp_ms, None));
        Ok(())
    }
}

struct MemoryLogSlot {
    state: LogState,
    data: MemoryData,
}

#[derive(Default)]
struct MemoryInner {
    logs: BTreeMap<String, MemoryLogSlot>,
    /// What a crash leaves: the state as of the last flush.
    durable: BTreeMap<String, MemoryData>,
    /// Writes since the last flush, in order.
    journal: Vec<(String, MemoryWrite)>,
    flushes: u64,
    /// Watermarks as recorded, and as of the last flush (what a crash leaves).
    watermarks: WatermarkTable,
    durable_watermarks: BTreeMap<String, Watermark>,
    /// Set by [`MemoryStore::fail_flushes`]: every flush fails with this, keeping its journal.
    flush_failure: Option<String>,
}

/// The in-memory store. Clones share one state, as clones of a sled database do.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fault hook: loses every write since the last flush, on every log, and reopens every log
    /// from what was flushed. Existing [`MemoryLog`] handles see the recovered state, as the
    /// handles of a restarted process would.
    pub fn crash(&self) {
        self.crash_torn(0);
    }

    /// Fault hook: like [`MemoryStore::crash`], but the first `writes_kept` unflushed primitive
    /// writes survive (a torn tail, as sled may leave after a kill). Open repairs the rest.
    pub fn crash_torn(&self, writes_kept: usize) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let journal = std::mem::take(&mut inner.journal);
        for (name, write) in journal.into_iter().take(writes_kept) {
            apply(&mut inner.durable, &name, write);
        }
        inner.watermarks = WatermarkTable {
            entries: inner.durable_watermarks.clone(),
            dirty: false,
        };
        inner.logs.clear();
        for (name, data) in &inner.durable {
            let mut data = data.clone();
            let mut backend = MemoryBackend {
                name,
                data: &mut data,
                journal: &mut inner.journal,
            };
            // Only a bug in `core` (a write order it cannot repair) could make this fail.
            let mut state = LogState::open(&mut backend)
                .unwrap_or_else(|error| panic!("memory log {name} failed to reopen: {error}"));
            state.promised_epoch = state
                .promised_epoch
                .max(inner.watermarks.get(name).promised_epoch);
            inner
                .logs
                .insert(name.clone(), MemoryLogSlot { state, data });
        }
    }

    /// Fault hook: a crash after which the store recovers an older state of `name`, as sled
    /// does when a segment of its log is damaged: flushed batches at or above `from` are gone,
    /// and so is the log's flushed metadata (its promise, values, epoch history past `from`).
    /// Watermarks survive, as the file beside a sled database does. Every log is reopened.
    pub fn lose_flushed_suffix(&self, name: &str, from: Offset) {
        {
            let mut inner = self.lock();
            inner.journal.clear();
            if let Some(log) = inner.durable.get_mut(name) {
                log.data.retain(|offset, _| *offset < from);
                log.time.retain(|_, offset| *offset < from);
                log.meta.clear();
            }
        }
        self.crash();
    }

    /// Fault hook: while `Some`, every flush fails with [`StorageError::Io`] carrying this
    /// reason (a full disk, say) and makes nothing durable; reads and buffered writes go on.
    /// `None` lets flushes succeed again, each covering everything written meanwhile.
    pub fn fail_flushes(&self, reason: Option<&str>) {
        self.lock().flush_failure = reason.map(str::to_owned);
    }

    /// Writes not yet covered by a flush (what a crash would lose).
    pub fn unflushed_writes(&self) -> usize {
        self.lock().journal.len()
    }

    /// Flushes completed so far.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }
}

impl LogStore for MemoryStore {
    type Log = MemoryLog;

    fn open_log(&self, name: &str) -> Result<MemoryLog, StorageError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !inner.logs.contains_key(name) {
            inner.journal.push((name.to_owned(), MemoryWrite::Create));
            let mut data = MemoryData::default();
            let mut backend = MemoryBackend {
                name,
                data: &mut data,
                journal: &mut inner.journal,
            };
            let mut state = LogState::open(&mut backend)?;
            state.promised_epoch = state
                .promised_epoch
                .max(inner.watermarks.get(name).promised_epoch);
            inner
                .logs
                .insert(name.to_owned(), MemoryLogSlot { state, data });
        }
        Ok(MemoryLog {
            store: self.clone(),
            name: name.to_owned(),
        })
    }

    fn remove_log(&self, name: &str) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.logs.remove(name).is_some() {
            inner.journal.push((name.to_owned(), MemoryWrite::Remove));
        }
        inner.watermarks.remove(name);
        Ok(())
    }

    fn log_names(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.lock().logs.keys().cloned().collect())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(reason) = &inner.flush_failure {
            return Err(StorageError::Io(reason.clone()));
        }
        for (name, write) in inner.journal.drain(..) {
            apply(&mut inner.durable, &name, write);
        }
        inner.durable_watermarks = inner.watermarks.entries.clone();
        inner.watermarks.dirty = false;
        inner.flushes += 1;
        Ok(())
    }
}

/// One partition log in a [`MemoryStore`]. Every call goes through the store's lock, so
/// handles of one log always agree.
#[derive(Clone)]
pub struct MemoryLog {
    store: MemoryStore,
    name: String,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MemoryLog {
    fn with<T>(
        &self,
        operation: impl FnOnce(&mut LogState, &mut MemoryBackend<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut inner = self.store.lock();
        let inner = &mut *inner;
        let Some(slot) = inner.logs.get_mut(&self.name) else {
            return Err(StorageError::Io(format!("log {} was removed", self.name)));
        };
        let mut backend = MemoryBackend {
            name: &self.name,
            data: &mut slot.data,
            journal: &mut inner.journal,
        };
        operation(&mut slot.state, &mut backend)
    }

    /// Reads cached state; a removed log reads as empty (callers see errors on any I/O call).
    fn state<T: Default>(&self, read: impl FnOnce(&LogState) -> T) -> T {
        let inner = self.store.lock();
        inner
            .logs
            .get(&self.name)
            .map(|slot| read(&slot.state))
            .unwrap_or_default()
    }
}

impl PartitionLog for MemoryLog {
    fn log_start(&self) -> Offset {
        self.state(|state| state.log_start)
    }

    fn log_end(&self) -> Offset {
        self.state(|state| state.log_end)
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
        self.state(|state| state.size_bytes)
    }

    fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        until: Offset,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        self.with(|state, backend| state.offset_for_timestamp(backend, timestamp_ms, until))
    }

    fn epoch_history(&self) -> Vec<EpochStart> {
        self.state(|state| state.epoch_history.clone())
    }

    fn promised_epoch(&self) -> Epoch {
        self.state(|state| state.promised_epoch)
    }

    fn set_promised_epoch(&mut self, epoch: Epoch) -> Result<(), StorageError> {
        self.with(|state, backend| state.set_promised_epoch(backend, epoch))?;
        self.store.lock().watermarks.raise(
            &self.name,
            Watermark {
                committed_end: Offset::ZERO,
                promised_epoch: epoch,
            },
        );
        Ok(())
    }

    fn watermark(&self) -> Watermark {
        self.store.lock().watermarks.get(&self.name)
    }

    fn raise_committed_watermark(&mut self, committed_end: Offset) -> Result<(), StorageError> {
        let mut inner = self.store.lock();
        let Some(slot) = inner.logs.get(&self.name) else {
            return Err(StorageError::Io(format!("log {} was removed", self.name)));
        };
        if committed_end > slot.state.log_end {
            return Err(StorageError::WatermarkBeyondLogEnd {
                committed_end,
                log_end: slot.state.log_end,
            });
        }
        inner.watermarks.raise(
            &self.name,
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
