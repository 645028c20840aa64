//! `Produce`: one batch for one partition, validated whole before anything is appended.
//!
//! Split in two so that ordering holds: [`enqueue`] runs in the connection's reader, in the
//! order requests were read, and puts the batch in the partition actor's mailbox; [`complete`]
//! then waits for the replica's answer concurrently with later requests.

use crate::broker::Broker;
use crate::partition::ProduceReply;
use bytes::Bytes;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::messages::{ProduceRequest, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use std::time::Duration;
use tokio::sync::oneshot;

/// Used when a producer sends `timeout_ms = 0`.
const PRODUCE_TIMEOUT_DEFAULT_MS: u32 = 30_000;

/// A batch in the partition's mailbox, waiting for its answer.
pub struct Enqueued {
    reply: oneshot::Receiver<ProduceReply>,
    timeout_ms: u32,
}

/// Checks everything a batch can be refused for, in the order a client would fix them.
pub fn validate(
    batch_bytes_max: u32,
    record_bytes_max: u32,
    bytes: Bytes,
) -> Result<RecordBatch, ApiError> {
    if bytes.len() > batch_bytes_max as usize {
        return Err(ApiError::BatchTooLarge {
            size: bytes.len() as u64,
            max: u64::from(batch_bytes_max),
        });
    }
    let batch = RecordBatch::validate(bytes).map_err(|error| ApiError::CorruptBatch {
        reason: error.to_string(),
    })?;
    if batch.header().is_control() {
        return Err(ApiError::InvalidRequest {
            reason: "control batches are written by partition leaders only".to_string(),
        });
    }
    let header = batch.header();
    if header.producer_id >= 0 && (header.base_sequence < 0 || header.producer_epoch < 0) {
        return Err(ApiError::InvalidRequest {
            reason: format!(
                "a batch of producer {} needs a sequence and an epoch of 0 or more \
                 (got sequence {}, epoch {})",
                header.producer_id, header.base_sequence, header.producer_epoch
            ),
        });
    }
    // A record is never larger than its batch, so small batches skip the per-record walk.
    if batch.size_bytes() > record_bytes_max as usize {
        for record in batch.records() {
            let record = record.map_err(|error| ApiError::CorruptBatch {
                reason: error.to_string(),
            })?;
            let size = record.key.as_ref().map_or(0, Bytes::len)
                + record.value.len()
                + record
                    .headers
                    .iter()
                    .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len))
                    .sum::<usize>();
            if size > record_bytes_max as usize {
                return Err(ApiError::RecordTooLarge {
                    size: size as u64,
                    max: u64::from(record_bytes_max),
                });
            }
        }
    }
    Ok(batch)
}

pub fn enqueue<S: LogStore>(
    broker: &Broker<S>,
    request: ProduceRequest,
) -> Result<Enqueued, ApiError> {
    if crate::broker::is_internal(&request.topic) {
        // Only the node writes its internal topics: a client's record in `__offsets` would be
        // replayed as group state.
        return Err(ApiError::InvalidTopicName {
            name: request.topic,
            reason: "internal topics are written by the cluster only".to_string(),
        });
    }
    let handle = broker.partition(&request.topic, request.partition)?;
    let limits = &broker.config.limits;
    let batch = validate(
        limits.batch_bytes_max,
        limits.record_bytes_max,
        request.batch,
    )?;
    let reply = handle.produce(batch, request.acks)?;
    Ok(Enqueued {
        reply,
        timeout_ms: if request.timeout_ms == 0 {
            PRODUCE_TIMEOUT_DEFAULT_MS
        } else {
            request.timeout_ms
        },
    })
}

pub async fn complete(enqueued: Enqueued) -> Result<Response, ApiError> {
    let timeout = Duration::from_millis(u64::from(enqueued.timeout_ms));
    match tokio::time::timeout(timeout, enqueued.reply).await {
        Ok(Ok(result)) => result.map(Response::Produce),
        // The actor stopped without answering (deleted topic, node stopping).
        Ok(Err(_)) => Err(ApiError::NotLeader {
            leader_hint: None,
            epoch: cairn_protocol::Epoch::ZERO,
        }),
        Err(_) => Err(ApiError::Timeout {
            waited_ms: u64::from(enqueued.timeout_ms),
        }),
    }
}
