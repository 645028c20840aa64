//! The behaviour of one partition log, written once over a small key-value [`Backend`].
//!
//! Both implementations ([`crate::sled_store`] and [`crate::memory`]) keep their bytes in three
//! ordered maps per log: `data` (base offset -> batch bytes), `meta` (named small values) and
//! `time` (running maximum timestamp -> base offset). Every rule of the contract (validation,
//! epoch history, retention, the time index, recovery after a crash) lives here, so the twins
//! cannot drift apart.
//!
//! Crash safety rests on one property of both backends: after a crash, the surviving writes are
//! a prefix of the writes issued (sled recovers a gap-free prefix of its log; the memory twin
//! replays a prefix of its journal). Writes are therefore ordered so that every prefix can be
//! repaired by [`LogState::open`]:
//!
//! - append: time-index entry, then data, then epoch history, then the size counter. The open
//!   path drops time entries at or past the log end, re-derives missing epoch-history entries
//!   from the tail of the data, and recounts bytes past the counter's end.
//! - truncation: epoch history, then data removed from the end backwards (so any prefix of the
//!   removals leaves a gap-free log), then time entries, then the size counter.
//! - retention: the new log start, then data removed from the front, then epoch history, time
//!   entries and the size counter. The open path finishes removing data below the log start.
//! - reset (a follower starting its log at the leader's log start): an empty epoch history,
//!   data removed from the end backwards, the new log start, the new history, time entries,
//!   the size counter. Each prefix is a shorter log whose history open re-derives.

use crate::{EpochStart, RetentionPolicy, StorageError};
use bytes::Bytes;
use cairn_protocol::batch::{BatchError, BatchHeader, RecordBatch};
use cairn_protocol::{Epoch, Offset};

/// Meta keys used by storage itself. Caller values live under [`VALUE_PREFIX`].
const META_LOG_START: &str = "sys/log_start";
const META_PROMISED_EPOCH: &str = "sys/promised_epoch";
const META_EPOCH_HISTORY: &str = "sys/epoch_history";
const META_SIZE: &str = "sys/size";
const VALUE_PREFIX: &str = "val/";

/// The storage primitives a log needs: three ordered maps and nothing more.
pub(crate) trait Backend {
    fn data_first(&self) -> Result<Option<(Offset, Bytes)>, StorageError>;
    fn data_last(&self) -> Result<Option<(Offset, Bytes)>, StorageError>;
    /// The stored batch with the greatest base offset at or below `offset`.
    fn data_floor(&self, offset: Offset) -> Result<Option<(Offset, Bytes)>, StorageError>;
    /// Visits batches with base offset at or above `from` in order, while `visit` says true.
    fn data_visit(
        &self,
        from: Offset,
        visit: &mut dyn FnMut(Offset, Bytes) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError>;
    fn data_put(&mut self, offset: Offset, bytes: &Bytes) -> Result<(), StorageError>;
    fn data_remove(&mut self, offset: Offset) -> Result<(), StorageError>;
    fn meta_get(&self, key: &str) -> Result<Option<Bytes>, StorageError>;
    fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    fn time_first(&self) -> Result<Option<(i64, Offset)>, StorageError>;
    fn time_last(&self) -> Result<Option<(i64, Offset)>, StorageError>;
    /// The time entry with the smallest timestamp at or above `timestamp_ms`.
    fn time_ceiling(&self, timestamp_ms: i64) -> Result<Option<(i64, Offset)>, StorageError>;
    fn time_put(&mut self, timestamp_ms: i64, offset: Offset) -> Result<(), StorageError>;
    fn time_remove(&mut self, timestamp_ms: i64) -> Result<(), StorageError>;
}

/// Order-preserving byte key for a signed timestamp (flip the sign bit, big-endian).
pub(crate) fn time_key(timestamp_ms: i64) -> [u8; 8] {
    ((timestamp_ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn time_from_key(key: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = key.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

pub(crate) fn u64_from_bytes(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn io_corrupt_meta(what: &str) -> StorageError {
    StorageError::Io(format!("unreadable metadata value {what}"))
}

/// Checks what `append` and `read` both need before trusting a batch: framing, checksum, and a
/// record count that fits in the offsets the batch spans (a compacted batch may hold fewer
/// records than offsets, or none; offset arithmetic uses only the last offset delta).
fn check_batch(batch: &RecordBatch) -> Result<(), BatchError> {
    // Once per batch in this process: a read's batch comes from the store's bytes and is
    // verified here; an appended one was verified when it arrived (or computed when built).
    batch.verify_checksum_once()?;
    let header = batch.header();
    let span = u64::from(header.last_offset_delta) + 1;
    if u64::from(header.record_count) > span {
        return Err(BatchError::CountMismatch {
            declared: header.record_count,
            actual: span,
        });
    }
    if u128::from(header.base_offset.0) + u128::from(span) > u128::from(Offset::MAX.0) {
        return Err(BatchError::OffsetOutOfRange {
            end: u128::from(header.base_offset.0) + u128::from(span),
        });
    }
    Ok(())
}

/// Parses only the header of a stored value, for paths that need sizes and timestamps.
fn stored_header(key: Offset, bytes: &[u8]) -> Result<BatchHeader, StorageError> {
    let header = BatchHeader::parse(bytes).map_err(|source| StorageError::Corrupt {
        offset: key,
        source,
    })?;
    if header.base_offset != key {
        return Err(StorageError::Inconsistent {
            offset: key,
            reason: "stored batch's base offset differs from its key",
        });
    }
    if header.size_bytes() != bytes.len() {
        return Err(StorageError::Corrupt {
            offset: key,
            source: BatchError::LengthMismatch {
                declared: header.size_bytes(),
                actual: bytes.len(),
            },
        });
    }
    Ok(header)
}

/// The epoch history entry that covers `offset`, if any.
fn epoch_at(history: &[EpochStart], offset: Offset) -> Option<Epoch> {
    let index = history.partition_point(|entry| entry.start_offset <= offset);
    index.checked_sub(1).map(|index| history[index].epoch)
}

fn encode_history(history: &[EpochStart]) -> Vec<u8> {
    let mut out = Vec::with_capacity(history.len() * 16);
    for entry in history {
        out.extend_from_slice(&entry.epoch.0.to_be_bytes());
        out.extend_from_slice(&entry.start_offset.0.to_be_bytes());
    }
    out
}

fn decode_history(bytes: &[u8]) -> Result<Vec<EpochStart>, StorageError> {
    let chunks = bytes.chunks_exact(16);
    if !chunks.remainder().is_empty() {
        return Err(io_corrupt_meta(META_EPOCH_HISTORY));
    }
    Ok(chunks
        .map(|chunk| EpochStart {
            epoch: Epoch(u64::from_be_bytes(chunk[..8].try_into().expect("8 bytes"))),
            start_offset: Offset(u64::from_be_bytes(chunk[8..].try_into().expect("8 bytes"))),
        })
        .collect())
}

/// The size counter is stored with the log start and end it was computed for, so that open
/// can tell whether it still describes the data (see the module comment).
fn encode_size(log_start: Offset, log_end: Offset, size_bytes: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&log_start.0.to_be_bytes());
    out[8..16].copy_from_slice(&log_end.0.to_be_bytes());
    out[16..].copy_from_slice(&size_bytes.to_be_bytes());
    out
}

fn decode_size(bytes: &[u8]) -> Option<(Offset, Offset, u64)> {
    if bytes.len() != 24 {
        return None;
    }
    Some((
        Offset(u64_from_bytes(&bytes[..8])?),
        Offset(u64_from_bytes(&bytes[8..16])?),
        u64_from_bytes(&bytes[16..])?,
    ))
}

/// What a log keeps in memory: everything `log_start`, `log_end`, `size_bytes` and the epoch
/// queries need without touching the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogState {
    pub(crate) log_start: Offset,
    pub(crate) log_end: Offset,
    pub(crate) epoch_history: Vec<EpochStart>,
    pub(crate) size_bytes: u64,
    pub(crate) promised_epoch: Epoch,
    /// The newest timestamp in the time index: a batch gets an index entry only when it raises
    /// this (Kafka's time index), so the index stays small and sorted both ways.
    max_timestamp_ms: Option<i64>,
}

impl LogState {
    /// Rebuilds the cached state. Cheap in the common case (first and last batch, a few meta
    /// keys); it reads more only to repair what a crash cut short (see the module comment).
    pub(crate) fn open<B: Backend>(backend: &mut B) -> Result<LogState, StorageError> {
        let log_start = match backend.meta_get(META_LOG_START)? {
            Some(bytes) => {
                Offset(u64_from_bytes(&bytes).ok_or_else(|| io_corrupt_meta(META_LOG_START))?)
            }
            None => Offset::ZERO,
        };
        // Finish a retention pass that persisted its new start but not all its removals.
        while let Some((offset, _)) = backend.data_first()? {
            if offset >= log_start {
                break;
            }
            backend.data_remove(offset)?;
        }
        let log_end = match backend.data_last()? {
            Some((offset, bytes)) => stored_header(offset, &bytes)?.next_offset(),
            None => log_start,
        };
        if log_end < log_start {
            return Err(StorageError::Inconsistent {
                offset: log_end,
                reason: "log end below the persisted log start",
            });
        }
        let promised_epoch = match backend.meta_get(META_PROMISED_EPOCH)? {
            Some(bytes) => {
                Epoch(u64_from_bytes(&bytes).ok_or_else(|| io_corrupt_meta(META_PROMISED_EPOCH))?)
            }
            None => Epoch::ZERO,
        };
        let mut epoch_history = match backend.meta_get(META_EPOCH_HISTORY)? {
            Some(bytes) => decode_history(&bytes)?,
            None => Vec::new(),
        };
        let history_len_read = epoch_history.len();
        epoch_history.retain(|entry| entry.start_offset <= log_end);
        let mut history_changed = epoch_history.len() != history_len_read;
        // Re-derive epoch starts whose history write did not survive: walk back from the end
        // over batches of epochs newer than the last recorded one (only the unflushed tail).
        let known_last_epoch = epoch_history.last().map(|entry| entry.epoch);
        let mut tail: Vec<(Offset, Epoch)> = Vec::new();
        let mut cursor = backend.data_last()?;
        while let Some((offset, bytes)) = cursor {
            let header = stored_header(offset, &bytes)?;
            if known_last_epoch.is_some_and(|known| header.leader_epoch <= known) {
                break;
            }
            tail.push((offset, header.leader_epoch));
            cursor = match offset.0.checked_sub(1) {
                Some(below) if offset > log_start => backend.data_floor(Offset(below))?,
                _ => None,
            };
        }
        for (offset, epoch) in tail.into_iter().rev() {
            let last = epoch_history.last().map(|entry| entry.epoch);
            if last.is_none_or(|last| epoch > last) {
                epoch_history.push(EpochStart {
                    epoch,
                    start_offset: offset,
                });
                history_changed = true;
            }
        }
        if history_changed {
            backend.meta_put(META_EPOCH_HISTORY, &encode_history(&epoch_history))?;
        }
        // Time entries written ahead of an append that did not survive point past the end.
        while let Some((timestamp_ms, offset)) = backend.time_last()? {
            if offset < log_end {
                break;
            }
            backend.time_remove(timestamp_ms)?;
        }
        let max_timestamp_ms = backend.time_last()?.map(|(timestamp_ms, _)| timestamp_ms);
        let counter = backend
            .meta_get(META_SIZE)?
            .and_then(|bytes| decode_size(&bytes));
        let size_bytes = match counter {
            Some((start, end, size)) if start == log_start && end == log_end => size,
            Some((start, end, size)) if start == log_start && end < log_end && end >= start => {
                size + Self::count_bytes(backend, end)?
            }
            _ => Self::count_bytes(backend, log_start)?,
        };
        if counter != Some((log_start, log_end, size_bytes)) {
            backend.meta_put(META_SIZE, &encode_size(log_start, log_end, size_bytes))?;
        }
        Ok(LogState {
            log_start,
            log_end,
            epoch_history,
            size_bytes,
            promised_epoch,
            max_timestamp_ms,
        })
    }

    fn count_bytes<B: Backend>(backend: &B, from: Offset) -> Result<u64, StorageError> {
        let mut total = 0u64;
        backend.data_visit(from, &mut |_, bytes| {
            total += bytes.len() as u64;
            Ok(true)
        })?;
        Ok(total)
    }

    fn last_epoch(&self) -> Option<Epoch> {
        self.epoch_history.last().map(|entry| entry.epoch)
    }

    fn put_size<B: Backend>(&self, backend: &mut B) -> Result<(), StorageError> {
        backend.meta_put(
            META_SIZE,
            &encode_size(self.log_start, self.log_end, self.size_bytes),
        )
    }

    pub(crate) fn append<B: Backend>(
        &mut self,
        backend: &mut B,
        batch: &RecordBatch,
    ) -> Result<Offset, StorageError> {
        check_batch(batch).map_err(|source| StorageError::Corrupt {
            offset: batch.base_offset(),
            source,
        })?;
        if batch.base_offset() != self.log_end {
            return Err(StorageError::NotContiguous {
                base_offset: batch.base_offset(),
                log_end: self.log_end,
            });
        }
        let epoch = batch.leader_epoch();
        let last_epoch = self.last_epoch();
        if let Some(last_epoch) = last_epoch {
            if epoch < last_epoch {
                return Err(StorageError::EpochRegression { epoch, last_epoch });
            }
        }
        let base_offset = batch.base_offset();
        let batch_max_timestamp_ms = batch.header().max_timestamp_ms;
        let raises_max = self
            .max_timestamp_ms
            .is_none_or(|max| batch_max_timestamp_ms > max);
        if raises_max {
            backend.time_put(batch_max_timestamp_ms, base_offset)?;
            self.max_timestamp_ms = Some(batch_max_timestamp_ms);
        }
        backend.data_put(base_offset, batch.bytes())?;
        self.log_end = batch.next_offset();
        self.size_bytes += batch.size_bytes() as u64;
        if last_epoch.is_none_or(|last| epoch > last) {
            self.epoch_history.push(EpochStart {
                epoch,
                start_offset: base_offset,
            });
            backend.meta_put(META_EPOCH_HISTORY, &encode_history(&self.epoch_history))?;
        }
        self.put_size(backend)?;
        Ok(self.log_end)
    }

    pub(crate) fn replace_batch<B: Backend>(
        &mut self,
        backend: &mut B,
        batch: &RecordBatch,
    ) -> Result<(), StorageError> {
        let offset = batch.base_offset();
        check_batch(batch).map_err(|source| StorageError::Corrupt { offset, source })?;
        let refuse = |reason| Err(StorageError::BadReplacement { offset, reason });
        if offset < self.log_start || offset >= self.log_end {
            return refuse("outside the log");
        }
        let Some((stored_offset, stored_bytes)) = backend.data_floor(offset)? else {
            return refuse("no stored batch there");
        };
        if stored_offset != offset {
            return refuse("no stored batch starts there");
        }
        let stored = self.decode(offset, stored_bytes)?;
        let (old, new) = (stored.header(), batch.header());
        if old.last_offset_delta != new.last_offset_delta {
            return refuse("its last offset differs");
        }
        if old.leader_epoch != new.leader_epoch {
            return refuse("its epoch differs");
        }
        if (old.producer_id, old.producer_epoch, old.base_sequence)
            != (new.producer_id, new.producer_epoch, new.base_sequence)
        {
            return refuse("its producer stamp differs");
        }
        if old.max_timestamp_ms != new.max_timestamp_ms || old.is_control() != new.is_control() {
            return refuse("its timestamp or kind differs");
        }
        if new.record_count > old.record_count {
            return refuse("it holds more records than the stored batch");
        }
        backend.data_put(offset, batch.bytes())?;
        self.size_bytes = self.size_bytes - stored.size_bytes() as u64 + batch.size_bytes() as u64;
        self.put_size(backend)?;
        Ok(())
    }

    /// Decodes a stored value and checks everything that can be checked: framing, checksum,
    /// and the stamp (outside the checksum) against its key and the epoch history.
    fn decode(&self, offset: Offset, bytes: Bytes) -> Result<RecordBatch, StorageError> {
        stored_header(offset, &bytes)?;
        let batch = RecordBatch::from_trusted(bytes)
            .map_err(|source| StorageError::Corrupt { offset, source })?;
        check_batch(&batch).map_err(|source| StorageError::Corrupt { offset, source })?;
        if epoch_at(&self.epoch_history, offset) != Some(batch.leader_epoch()) {
            return Err(StorageError::Inconsistent {
                offset,
                reason: "stored batch's epoch disagrees with the epoch history",
            });
        }
        Ok(batch)
    }

    pub(crate) fn read<B: Backend>(
        &self,
        backend: &B,
        from: Offset,
        until: Offset,
        max_bytes: usize,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        let from = from.max(self.log_start);
        let until = until.min(self.log_end);
        if from >= until {
            return Ok(Vec::new());
        }
        let start = match backend.data_floor(from)? {
            Some((offset, _)) => offset,
            None => self.log_start,
        };
        let mut out = Vec::new();
        let mut total_bytes = 0usize;
        let mut expected: Option<Offset> = None;
        let mut failure = None;
        backend.data_visit(start, &mut |offset, bytes| {
            if offset >= until {
                return Ok(false);
            }
            let batch = match self.decode(offset, bytes) {
                Ok(batch) => batch,
                Err(error) => {
                    failure = Some(error);
                    return Ok(false);
                }
            };
            if batch.next_offset() <= from {
                // The floor batch ends before `from`: the next one must start right there.
                expected = Some(batch.next_offset());
                return Ok(true);
            }
            let gap = match expected {
                Some(expected) => offset != expected,
                None => offset > from,
            };
            if gap {
                failure = Some(StorageError::Inconsistent {
                    offset,
                    reason: "gap before this stored batch",
                });
                return Ok(false);
            }
            if !out.is_empty() && total_bytes + batch.size_bytes() > max_bytes {
                return Ok(false);
            }
            total_bytes += batch.size_bytes();
            expected = Some(batch.next_offset());
            out.push(batch);
            Ok(total_bytes < max_bytes)
        })?;
        if let Some(error) = failure {
            return Err(error);
        }
        if out.is_empty() {
            return Err(StorageError::Inconsistent {
                offset: from,
                reason: "no stored batch holds an offset below the log end",
            });
        }
        Ok(out)
    }

    pub(crate) fn truncate_suffix<B: Backend>(
        &mut self,
        backend: &mut B,
        from: Offset,
    ) -> Result<(), StorageError> {
        if from < self.log_start {
            return Err(StorageError::BadTruncation {
                offset: from,
                reason: "below the log start",
            });
        }
        if from > self.log_end {
            return Err(StorageError::BadTruncation {
                offset: from,
                reason: "beyond the log end",
            });
        }
        if from == self.log_end {
            return Ok(());
        }
        match backend.data_floor(from)? {
            Some((offset, _)) if offset == from => {}
            _ => {
                return Err(StorageError::BadTruncation {
                    offset: from,
                    reason: "not a batch boundary",
                })
            }
        }
        let mut removed: Vec<(Offset, u64)> = Vec::new();
        backend.data_visit(from, &mut |offset, bytes| {
            removed.push((offset, bytes.len() as u64));
            Ok(true)
        })?;
        let history_len = self.epoch_history.len();
        self.epoch_history.retain(|entry| entry.start_offset < from);
        if self.epoch_history.len() != history_len {
            backend.meta_put(META_EPOCH_HISTORY, &encode_history(&self.epoch_history))?;
        }
        for &(offset, size_bytes) in removed.iter().rev() {
            backend.data_remove(offset)?;
            self.size_bytes = self.size_bytes.saturating_sub(size_bytes);
        }
        self.log_end = from;
        while let Some((timestamp_ms, offset)) = backend.time_last()? {
            if offset < from {
                break;
            }
            backend.time_remove(timestamp_ms)?;
        }
        self.max_timestamp_ms = backend.time_last()?.map(|(timestamp_ms, _)| timestamp_ms);
        self.put_size(backend)
    }

    /// Empties the log and starts it at `start` with the epoch history `[(epoch, start)]`
    /// (see [`crate::PartitionLog::reset_start`]). Write order, so that every prefix opens
    /// as a consistent log: an empty epoch history (open re-derives it from the data), the
    /// data removed from the end backwards (a gap-free log at every step), the new log start,
    /// the new history, then the time entries and the size counter.
    pub(crate) fn reset_start<B: Backend>(
        &mut self,
        backend: &mut B,
        start: Offset,
        epoch: Epoch,
    ) -> Result<(), StorageError> {
        if start < self.log_start {
            return Err(StorageError::BadTruncation {
                offset: start,
                reason: "a reset may not move the log start back",
            });
        }
        let mut removed: Vec<Offset> = Vec::new();
        backend.data_visit(self.log_start, &mut |offset, _| {
            removed.push(offset);
            Ok(true)
        })?;
        backend.meta_put(META_EPOCH_HISTORY, &encode_history(&[]))?;
        for &offset in removed.iter().rev() {
            backend.data_remove(offset)?;
        }
        backend.meta_put(META_LOG_START, &start.0.to_be_bytes())?;
        let history: Vec<EpochStart> = if epoch == Epoch::ZERO {
            Vec::new()
        } else {
            vec![EpochStart {
                epoch,
                start_offset: start,
            }]
        };
        backend.meta_put(META_EPOCH_HISTORY, &encode_history(&history))?;
        while let Some((timestamp_ms, _)) = backend.time_last()? {
            backend.time_remove(timestamp_ms)?;
        }
        self.log_start = start;
        self.log_end = start;
        self.epoch_history = history;
        self.size_bytes = 0;
        self.max_timestamp_ms = None;
        self.put_size(backend)
    }

    pub(crate) fn apply_retention<B: Backend>(
        &mut self,
        backend: &mut B,
        policy: RetentionPolicy,
        now_ms: i64,
        keep_from: Offset,
    ) -> Result<Offset, StorageError> {
        let expired_below_ms = policy
            .max_age_ms
            .map(|max_age_ms| now_ms.saturating_sub(i64::try_from(max_age_ms).unwrap_or(i64::MAX)));
        let mut remaining_bytes = self.size_bytes;
        let mut removed: Vec<(Offset, u64)> = Vec::new();
        let mut new_start = self.log_start;
        backend.data_visit(self.log_start, &mut |offset, bytes| {
            let header = stored_header(offset, &bytes)?;
            if header.next_offset() > keep_from {
                return Ok(false);
            }
            let expired = expired_below_ms.is_some_and(|below| header.max_timestamp_ms < below);
            let oversize = policy
                .max_bytes
                .is_some_and(|max_bytes| remaining_bytes > max_bytes);
            if !(expired || oversize) {
                return Ok(false);
            }
            remaining_bytes = remaining_bytes.saturating_sub(bytes.len() as u64);
            removed.push((offset, bytes.len() as u64));
            new_start = header.next_offset();
            Ok(true)
        })?;
        if removed.is_empty() {
            return Ok(self.log_start);
        }
        backend.meta_put(META_LOG_START, &new_start.0.to_be_bytes())?;
        for &(offset, size_bytes) in &removed {
            backend.data_remove(offset)?;
            self.size_bytes = self.size_bytes.saturating_sub(size_bytes);
        }
        self.log_start = new_start;
        // Kafka's truncate-from-start: entries that began before the new start go, but the
        // last of them still covers the new start, so it moves there.
        let covering = epoch_at(&self.epoch_history, new_start);
        let mut history: Vec<EpochStart> = self
            .epoch_history
            .iter()
            .copied()
            .filter(|entry| entry.start_offset >= new_start)
            .collect();
        if let Some(epoch) = covering {
            if history
                .first()
                .is_none_or(|first| first.start_offset > new_start)
            {
                history.insert(
                    0,
                    EpochStart {
                        epoch,
                        start_offset: new_start,
                    },
                );
            }
        }
        if history != self.epoch_history {
            self.epoch_history = history;
            backend.meta_put(META_EPOCH_HISTORY, &encode_history(&self.epoch_history))?;
        }
        // Time entries below the start go; the newest of them moves to the start so that a
        // lookup for an old timestamp still lands on the first batch that is left.
        let mut moved: Option<i64> = None;
        while let Some((timestamp_ms, offset)) = backend.time_first()? {
            if offset >= new_start {
                break;
            }
            backend.time_remove(timestamp_ms)?;
            moved = Some(timestamp_ms);
        }
        if let Some(timestamp_ms) = moved {
            backend.time_put(timestamp_ms, new_start)?;
        }
        self.put_size(backend)?;
        Ok(self.log_start)
    }

    pub(crate) fn offset_for_timestamp<B: Backend>(
        &self,
        backend: &B,
        timestamp_ms: i64,
        until: Offset,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        let until = until.min(self.log_end);
        let Some((_, indexed_offset)) = backend.time_ceiling(timestamp_ms)? else {
            return Ok(None);
        };
        // The entry names the first batch whose newest record reaches the timestamp. After
        // retention it may point below the start; then the first qualifying batch is found by
        // a walk from the start, which a clock that never steps back never needs.
        let start = indexed_offset.max(self.log_start);
        if start >= until {
            return Ok(None);
        }
        let mut found = None;
        let mut failure = None;
        backend.data_visit(start, &mut |offset, bytes| {
            if offset >= until {
                return Ok(false);
            }
            let batch = match self.decode(offset, bytes) {
                Ok(batch) => batch,
                Err(error) => {
                    failure = Some(error);
                    return Ok(false);
                }
            };
            // A leader's epoch marker holds no record a consumer sees (its timestamp is its
            // leader's clock, or 0): a lookup answers the first record a consumer reads.
            if batch.header().max_timestamp_ms < timestamp_ms || batch.header().is_control() {
                return Ok(true);
            }
            for record in batch.records() {
                let record = match record {
                    Ok(record) => record,
                    Err(source) => {
                        failure = Some(StorageError::Corrupt { offset, source });
                        return Ok(false);
                    }
                };
                if record.timestamp_ms >= timestamp_ms {
                    if record.offset < until {
                        found = Some((record.offset, record.timestamp_ms));
                    }
                    return Ok(false);
                }
            }
            Ok(false)
        })?;
        match failure {
            Some(error) => Err(error),
            None => Ok(found),
        }
    }

    pub(crate) fn set_promised_epoch<B: Backend>(
        &mut self,
        backend: &mut B,
        epoch: Epoch,
    ) -> Result<(), StorageError> {
        backend.meta_put(META_PROMISED_EPOCH, &epoch.0.to_be_bytes())?;
        self.promised_epoch = epoch;
        Ok(())
    }

    pub(crate) fn get_value<B: Backend>(
        backend: &B,
        key: &str,
    ) -> Result<Option<Bytes>, StorageError> {
        backend.meta_get(&format!("{VALUE_PREFIX}{key}"))
    }

    pub(crate) fn put_value<B: Backend>(
        backend: &mut B,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        backend.meta_put(&format!("{VALUE_PREFIX}{key}"), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::{Record, RecordBatchBuilder};

    /// The twin of an overflow the `record_batch` fuzz target found in the protocol crate's
    /// validation: `last_offset_delta + 1` overflowed for a delta of `u32::MAX`. A compacted
    /// batch may span more offsets than it holds records, so such a span is refused only
    /// where it would run past the largest offset, and more records than offsets never pass.
    #[test]
    fn a_last_offset_delta_of_u32_max_is_checked_without_overflow() {
        let forge = |base_offset: u64, last_offset_delta: u32, record_count: u32| {
            let mut builder = RecordBatchBuilder::new(0);
            builder.push(&Record::new("v"));
            let mut bytes = builder.build().into_bytes().to_vec();
            bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
            bytes[27..31].copy_from_slice(&last_offset_delta.to_be_bytes());
            bytes[61..65].copy_from_slice(&record_count.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[25..]);
            bytes[21..25].copy_from_slice(&crc.to_be_bytes());
            RecordBatch::from_trusted(bytes::Bytes::from(bytes)).unwrap()
        };
        assert_eq!(check_batch(&forge(0, u32::MAX, 1)), Ok(()));
        assert_eq!(
            check_batch(&forge(Offset::MAX.0, u32::MAX, 1)),
            Err(BatchError::OffsetOutOfRange {
                end: u128::from(Offset::MAX.0) + (1 << 32),
            })
        );
        assert_eq!(
            check_batch(&forge(0, 0, 2)),
            Err(BatchError::CountMismatch {
                declared: 2,
                actual: 1,
            })
        );
    }

    /// A batch this process did not check (read back, or wrapped as trusted) has its checksum
    /// verified before it is appended; one it built or validated is not verified twice.
    #[test]
    fn an_unchecked_batch_is_verified_and_a_checked_one_not_again() {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(&Record::new("value"));
        let built = builder.build();
        let mut bytes = built.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let damaged = RecordBatch::from_trusted(bytes::Bytes::from(bytes)).unwrap();
        assert!(matches!(
            check_batch(&damaged),
            Err(BatchError::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            check_batch(&damaged.stamped(Offset(5), cairn_protocol::Epoch(2))),
            Err(BatchError::ChecksumMismatch { .. })
        ));
        let validated = RecordBatch::validate(built.bytes().clone()).unwrap();
        assert_eq!(check_batch(&validated), Ok(()));
        assert_eq!(
            check_batch(&built.stamped(Offset(5), cairn_protocol::Epoch(2))),
            Ok(())
        );
        // And the store refuses the damaged one, whatever wraps it.
        let store = crate::MemoryStore::new();
        let mut log = crate::LogStore::open_log(&store, "p").unwrap();
        let stamped = damaged.stamped(Offset(0), cairn_protocol::Epoch(1));
        assert!(matches!(
            crate::PartitionLog::append(&mut log, &stamped),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
