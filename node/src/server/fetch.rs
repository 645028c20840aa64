//! `Fetch`: committed batches from many partitions, with a long poll.
//!
//! Each partition is read from its leader's log up to the high watermark. When fewer than
//! `min_bytes` are available the request waits on the partitions' high-watermark watches, up
//! to `min(max_wait_ms, fetch_wait_max_ms)`. `max_bytes` bounds the whole response (and the
//! frame size bounds it again), except that the first batch found is always delivered so a
//! consumer never stalls on a batch larger than its budget. The budget shrinks further when the
//! connection's or the node's reply budget runs low (see `super::budget`).

use super::budget::{FetchBudgets, Reservation};
use crate::broker::Broker;
use crate::partition::{PartitionHandle, ReadResult};
use bytes::BytesMut;
use cairn_protocol::messages::{
    FetchPartition, FetchPartitionResponse, FetchRequest, FetchResponse, FetchedRecords, Response,
};
use cairn_protocol::ApiError;
use cairn_replica::Role;
use cairn_storage::LogStore;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Bytes reserved in a fetch response frame for its envelope.
const RESPONSE_OVERHEAD_BYTES: usize = 1024;
/// Bytes reserved per partition entry, plus its topic name.
const PARTITION_OVERHEAD_BYTES: usize = 128;

/// Answers a fetch, reading only as many bytes as `budgets` lend it: each read first
/// reserves its reply's bytes from the connection's and the node's budgets (shrinking when
/// they run low, waiting when they are empty), and the reply keeps the reservation until it
/// is written. A long poll holds nothing while it waits.
pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: FetchRequest,
    budgets: &FetchBudgets,
) -> Result<(Response, Reservation), ApiError> {
    broker.check_ready()?;
    let limits = &broker.config.limits;
    let wait_ms = u64::from(request.max_wait_ms).min(limits.fetch_wait_max_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let overhead: usize = RESPONSE_OVERHEAD_BYTES
        + request
            .partitions
            .iter()
            .map(|partition| partition.topic.len() + PARTITION_OVERHEAD_BYTES)
            .sum::<usize>();
    let budget_max = (request.max_bytes as usize)
        .min((limits.frame_bytes_max as usize).saturating_sub(overhead));
    // The first batch is delivered whatever the budget, so a shrunk reservation still
    // covers one batch of the largest size.
    let floor = overhead + (limits.batch_bytes_max as usize).min(budget_max);
    let reserve = || async {
        let reservation = budgets.reserve(overhead + budget_max, floor).await;
        let budget = reservation.bytes().saturating_sub(overhead).min(budget_max);
        (reservation, budget)
    };
    let targets: Vec<Result<PartitionHandle<S>, ApiError>> = request
        .partitions
        .iter()
        .map(|partition| broker.fetch_partition(&partition.topic, partition.partition))
        .collect();
    loop {
        // Subscribe before reading, so data committed after the read still wakes us.
        let mut watches: Vec<_> = targets
            .iter()
            .flatten()
            .map(|handle| handle.shared.subscribe_high_watermark())
            .collect();
        let (reservation, budget) = reserve().await;
        let (partitions, total_bytes, any_error) = read_once(&request, &targets, budget).await;
        let done = total_bytes >= request.min_bytes as usize
            || any_error
            || watches.is_empty()
            || tokio::time::Instant::now() >= deadline;
        if done {
            return Ok((Response::Fetch(FetchResponse { partitions }), reservation));
        }
        drop(partitions);
        drop(reservation);
        let changed =
            futures::future::select_all(watches.iter_mut().map(|watch| Box::pin(watch.changed())));
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            // Deadline: one last read answers with whatever is there.
            let (reservation, budget) = reserve().await;
            let (partitions, _, _) = read_once(&request, &targets, budget).await;
            return Ok((Response::Fetch(FetchResponse { partitions }), reservation));
        }
    }
}

/// Partition reads of one fetch that may be out at once. Each read is a message to that
/// partition's actor, which may be busy appending: one after the other, a fetch of a few
/// hundred partitions (a consumer of a 1,000-partition topic) took longer than the records
/// took to arrive. Bounded, because each read may hold up to its partition's `max_bytes`.
const READS_IN_FLIGHT_MAX: usize = 16;

/// What one partition's read found, before the response's byte budget is applied.
enum PartitionRead {
    /// Answered without reading (nothing new, or no room left when it was started).
    Answered(Result<FetchedRecords, ApiError>),
    Read(Result<ReadResult, ApiError>),
}

async fn read_once<S: LogStore>(
    request: &FetchRequest,
    targets: &[Result<PartitionHandle<S>, ApiError>],
    budget: usize,
) -> (Vec<FetchPartitionResponse>, usize, bool) {
    // Bytes kept so far; reads started later ask only for what is left. Reads already out
    // when the budget fills are cut below, in order, as if they had run one by one.
    let kept_total = AtomicUsize::new(0);
    let kept_total = &kept_total;
    // Futures do nothing until polled: `buffered` starts each when a slot is free.
    let pending: Vec<_> = request
        .partitions
        .iter()
        .zip(targets)
        .map(|(wanted, target)| read_partition(wanted, target, budget, kept_total))
        .collect();
    let mut reads = futures::stream::iter(pending).buffered(READS_IN_FLIGHT_MAX);
    let mut total = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(request.partitions.len());
    for wanted in &request.partitions {
        let Some(read) = reads.next().await else {
            break;
        };
        let result = match read {
            PartitionRead::Answered(result) => result,
            PartitionRead::Read(Err(error)) => Err(error),
            PartitionRead::Read(Ok(read)) => {
                let mut kept = Vec::with_capacity(read.batches.len());
                let mut kept_bytes = 0usize;
                for batch in read.batches {
                    let size = batch.size_bytes();
                    // Always deliver the first batch of the response.
                    if total + kept_bytes + size > budget && total + kept_bytes > 0 {
                        break;
                    }
                    kept_bytes += size;
                    kept.push(batch);
                }
                let mut bytes = BytesMut::with_capacity(kept_bytes);
                for batch in &kept {
                    bytes.extend_from_slice(batch.bytes());
                }
                total += kept_bytes;
                kept_total.store(total, Ordering::Relaxed);
                Ok(FetchedRecords {
                    log_start: read.log_start,
                    high_watermark: read.high_watermark,
                    batches: bytes.freeze(),
                })
            }
        };
        any_error |= result.is_err();
        responses.push(FetchPartitionResponse {
            topic: wanted.topic.clone(),
            partition: wanted.partition,
            result,
        });
    }
    (responses, total, any_error)
}

/// One partition's part of a fetch, asking only for what is left of the budget when it
/// starts.
async fn read_partition<S: LogStore>(
    wanted: &FetchPartition,
    target: &Result<PartitionHandle<S>, ApiError>,
    budget: usize,
    kept_total: &AtomicUsize,
) -> PartitionRead {
    let handle = match target {
        Err(error) => return PartitionRead::Answered(Err(error.clone())),
        Ok(handle) => handle,
    };
    let total = kept_total.load(Ordering::Relaxed);
    let remaining = budget.saturating_sub(total);
    let high_watermark = handle.shared.high_watermark();
    if wanted.offset == high_watermark || (remaining == 0 && total > 0) {
        // Nothing new (or no room): answer without asking the actor, but keep the range
        // check honest.
        return PartitionRead::Answered(without_reading(handle, wanted.offset, high_watermark));
    }
    let max_bytes = (wanted.max_bytes as usize).min(remaining).max(1);
    PartitionRead::Read(handle.read(wanted.offset, max_bytes, false).await)
}

/// A partition's answer from its snapshot alone: nothing new to read, or no room left.
fn without_reading<S: LogStore>(
    handle: &PartitionHandle<S>,
    offset: cairn_protocol::Offset,
    high_watermark: cairn_protocol::Offset,
) -> Result<FetchedRecords, ApiError> {
    let snapshot = handle.shared.snapshot();
    // A replica whose storage failed serves committed reads while no leader is known (see
    // the partition actor's `Read`); a corrupted one serves nothing.
    let serving_while_failed = snapshot.committed_while_failed.is_some()
        && snapshot.leader.is_none()
        && snapshot.health == crate::partition::LogHealth::Healthy;
    if snapshot.role != Role::Leader && !serving_while_failed {
        Err(handle.shared.not_leader())
    } else if offset < snapshot.log_start {
        Err(ApiError::OffsetOutOfRange {
            requested: offset,
            log_start: snapshot.log_start,
            high_watermark,
        })
    } else {
        Ok(FetchedRecords {
            log_start: snapshot.log_start,
            high_watermark,
            batches: bytes::Bytes::new(),
        })
    }
}
