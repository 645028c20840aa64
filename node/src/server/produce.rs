//! `Produce`: one batch for one partition, validated whole before anything is appended.
//!
//! Split in two so that ordering holds: [`enqueue`] runs in the connection's reader, in the
//! order requests were read, and puts the batch in the partition actor's mailbox; [`complete`]
//! then waits for the replica's answer concurrently with later requests.

use crate::broker::Broker;
use crate::config::Limits;
use crate::partition::ProduceReply;
use crate::schemas::validation::Verdict;
use bytes::Bytes;
use cairn_protocol::batch::{RecordBatch, NO_PRODUCER_ID};
use cairn_protocol::error::RECORD_ERRORS_MAX;
use cairn_protocol::messages::{ProduceRequest, Response};
use cairn_protocol::{ApiError, Compression, RecordError};
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
pub fn validate(limits: &Limits, bytes: Bytes) -> Result<RecordBatch, ApiError> {
    let batch_bytes_max = limits.batch_bytes_max;
    let record_bytes_max = limits.record_bytes_max;
    if bytes.len() > batch_bytes_max as usize {
        return Err(ApiError::BatchTooLarge {
            size: bytes.len() as u64,
            max: u64::from(batch_bytes_max),
        });
    }
    // Offset deltas, timestamps, record count and attribute bits (transactional batches and
    // undefined codecs are refused by name), a compressed batch's records decompressed under
    // `limits.batch_decompressed_bytes_max`: see `RecordBatch::validate`.
    let decompressed_bytes_max = limits.batch_decompressed_bytes_max as usize;
    let batch =
        RecordBatch::validate_bounded(bytes, decompressed_bytes_max).map_err(ApiError::from)?;
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
    // -1 is "no producer"; any other negative id was never handed out.
    if header.producer_id < NO_PRODUCER_ID {
        return Err(ApiError::ProducerIdNotAllocated {
            producer_id: header.producer_id,
        });
    }
    // A batch without a producer id is not idempotent whatever its sequence says: Kafka ignores
    // the field then, and kafkajs' default (non-idempotent) producer stamps 0 in it. The
    // producer table only tracks batches with an id (`BatchHeader::has_producer`).
    // A record is never larger than its batch, so small batches skip the per-record walk;
    // compressed records may be larger than their batch, so those are always walked (their
    // records are decompressed a second time, under the same bound).
    let compressed = batch.compression() != Ok(Compression::None);
    if compressed || batch.size_bytes() > record_bytes_max as usize {
        for record in batch.records_bounded(decompressed_bytes_max) {
            let record = record.map_err(ApiError::from)?;
            let size = record.key.as_ref().map_or(0, Bytes::len)
                + record.value.as_ref().map_or(0, Bytes::len)
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

/// Validates `request` and puts its batch in its partition's mailbox. A topic with schema
/// validation on may first catch this node's schema registry up (a batch naming an id it has
/// not replayed yet): the caller awaits this in request order, before reading the next
/// request, so batches still reach the mailbox in the order they were read.
pub async fn enqueue<S: LogStore>(
    broker: &Broker<S>,
    request: ProduceRequest,
) -> Result<Enqueued, ApiError> {
    let arrived = std::time::Instant::now();
    match try_enqueue(broker, request, false) {
        Attempt::Done(result) => result,
        Attempt::AwaitingSchemas(request) => {
            broker.schemas.catch_up(arrived).await?;
            match try_enqueue(broker, request, true) {
                Attempt::Done(result) => result,
                Attempt::AwaitingSchemas(_) => unreachable!("a caught-up check is final"),
            }
        }
    }
}

enum Attempt {
    Done(Result<Enqueued, ApiError>),
    /// The batch names schema ids this node's registry has not replayed; nothing enqueued.
    AwaitingSchemas(ProduceRequest),
}

fn try_enqueue<S: LogStore>(
    broker: &Broker<S>,
    request: ProduceRequest,
    schemas_caught_up: bool,
) -> Attempt {
    match check_and_enqueue(broker, request, schemas_caught_up) {
        Ok(Ok(enqueued)) => Attempt::Done(Ok(enqueued)),
        Ok(Err(request)) => Attempt::AwaitingSchemas(request),
        Err(error) => Attempt::Done(Err(error)),
    }
}

fn check_and_enqueue<S: LogStore>(
    broker: &Broker<S>,
    request: ProduceRequest,
    schemas_caught_up: bool,
) -> Result<Result<Enqueued, ProduceRequest>, ApiError> {
    if crate::broker::is_internal(&request.topic) {
        // Only the node writes its internal topics: a client's record in `__offsets` would be
        // replayed as group state, one in `_schemas` as a registry write (a soft delete, a
        // compatibility level) that no registry validated. The registry writes `_schemas`
        // through its own replica on the leader (see `crate::schemas::forward`).
        return Err(ApiError::InvalidTopicName {
            name: request.topic,
            reason: "internal topics are written by the cluster only".to_string(),
        });
    }
    let handle = broker.partition(&request.topic, request.partition)?;
    let batch = validate(&broker.config.limits, request.batch.clone())?;
    let decompressed_bytes_max = broker.config.limits.batch_decompressed_bytes_max as usize;
    let topic_config = broker.topic_config(&request.topic);
    if topic_config
        .as_ref()
        .is_some_and(|config| config.is_compacted())
    {
        require_keys(&batch, decompressed_bytes_max)?;
    }
    let parts = topic_config
        .as_ref()
        .map(crate::schemas::validation::Parts::of)
        .unwrap_or_default();
    if parts.any() {
        let verdict = broker.schemas.check(
            &request.topic,
            parts,
            &batch,
            decompressed_bytes_max,
            schemas_caught_up,
        )?;
        match verdict {
            Verdict::Valid => {}
            Verdict::Refused(error) => return Err(error),
            Verdict::Unseen => return Ok(Err(request)),
        }
    }
    if batch.header().producer_id >= 0 {
        broker.check_producer_id(batch.header().producer_id)?;
    }
    let reply = handle.produce(batch, request.acks)?;
    Ok(Ok(Enqueued {
        reply,
        timeout_ms: if request.timeout_ms == 0 {
            PRODUCE_TIMEOUT_DEFAULT_MS
        } else {
            request.timeout_ms
        },
    }))
}

/// A compacted topic keeps the newest record per key: a record without a key has no place
/// in it, and the batch is refused as Kafka refuses it (INVALID_RECORD), naming each keyless
/// record by its index (Kafka clients fail those records, and the others of the batch as
/// refused for their neighbours).
pub fn require_keys(batch: &RecordBatch, decompressed_bytes_max: usize) -> Result<(), ApiError> {
    let mut refused = 0u32;
    let mut records = Vec::new();
    for (index, record) in batch.records_bounded(decompressed_bytes_max).enumerate() {
        if record.map_err(ApiError::from)?.key.is_none() {
            refused += 1;
            if records.len() < RECORD_ERRORS_MAX {
                records.push(RecordError {
                    index: index as u32,
                    reason: "a record without a key".to_string(),
                });
            }
        }
    }
    if refused == 0 {
        Ok(())
    } else {
        Err(ApiError::KeylessRecords { refused, records })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::{Record, RecordBatchBuilder, NO_SEQUENCE};

    fn batch(producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Bytes {
        let mut builder = RecordBatchBuilder::new(1_700_000_000_000).producer(
            producer_id,
            producer_epoch,
            base_sequence,
        );
        builder.push(&Record::new("v"));
        builder.build().into_bytes()
    }

    /// The test preset's limits: batches up to 64 KiB, records up to 16 KiB, compressed
    /// records up to 1 MiB decompressed.
    fn limits() -> Limits {
        crate::config::NodeConfig::for_tests(1, "/nonexistent".into()).limits
    }

    fn check(bytes: Bytes) -> Result<RecordBatch, ApiError> {
        validate(&limits(), bytes)
    }

    /// A compacted topic refuses a batch with any keyless record as INVALID_RECORD (Kafka's
    /// answer), naming the record; a batch whose records all have keys passes.
    #[test]
    fn compacted_topics_need_keys_in_every_record() {
        let mut keyed = RecordBatchBuilder::new(1);
        keyed.push(&Record::new("v").with_key("k"));
        keyed.push(&Record::tombstone("k"));
        assert_eq!(require_keys(&keyed.build(), 1 << 20), Ok(()));
        let mut mixed = RecordBatchBuilder::new(1);
        mixed.push(&Record::new("v").with_key("k"));
        mixed.push(&Record::new("no key"));
        let refused = require_keys(&mixed.build(), 1 << 20).unwrap_err();
        assert_eq!(
            refused,
            ApiError::KeylessRecords {
                refused: 1,
                records: vec![RecordError {
                    index: 1,
                    reason: "a record without a key".to_string()
                }]
            }
        );
        assert_eq!(
            refused.to_string(),
            "a compacted topic takes only records with a key: 1 record of the batch has none \
             (record 1: a record without a key)"
        );
    }

    /// A compressed batch far below `batch_bytes_max` may hold a record above
    /// `record_bytes_max`, or records past `batch_decompressed_bytes_max`: both are found.
    #[test]
    fn compressed_records_are_held_to_the_record_and_decompressed_limits() {
        let limits = limits();
        let compressed = |values: &[Vec<u8>]| {
            let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
            for value in values {
                builder.push(&Record::new(value.clone()));
            }
            let batch = builder.build_compressed(Compression::Zstd);
            assert_eq!(batch.compression(), Ok(Compression::Zstd));
            assert!(batch.size_bytes() < 4096);
            batch.into_bytes()
        };
        let fits = vec![0u8; limits.record_bytes_max as usize - 100];
        assert!(check(compressed(&[fits.clone(), fits])).is_ok());
        let large = vec![0u8; limits.record_bytes_max as usize + 1];
        assert_eq!(
            check(compressed(&[large])),
            Err(ApiError::RecordTooLarge {
                size: u64::from(limits.record_bytes_max) + 1,
                max: u64::from(limits.record_bytes_max),
            })
        );
        let many = vec![vec![0u8; 8 * 1024]; 200];
        assert_eq!(
            check(compressed(&many)),
            Err(ApiError::LimitExceeded {
                limit: "limits.batch_decompressed_bytes_max".into(),
                requested: u64::from(limits.batch_decompressed_bytes_max) + 1,
                max: u64::from(limits.batch_decompressed_bytes_max),
            })
        );
    }

    /// The producer fields a client may send: none (-1, no sequence) or an id with a sequence
    /// and an epoch. Whether the id was allocated is the broker's check, after this one.
    #[test]
    fn producer_fields_are_none_or_an_id_with_sequence_and_epoch() {
        assert!(check(batch(NO_PRODUCER_ID, 0, NO_SEQUENCE)).is_ok());
        assert!(check(batch(7, 0, 0)).is_ok());
        assert_eq!(
            check(batch(-5, 0, 0)),
            Err(ApiError::ProducerIdNotAllocated { producer_id: -5 })
        );
        // Kafka ignores the sequence of a batch without a producer id (kafkajs sends 0).
        assert!(check(batch(NO_PRODUCER_ID, 0, 0)).is_ok());
        assert!(check(batch(NO_PRODUCER_ID, 0, 3)).is_ok());
        assert!(matches!(
            check(batch(7, 0, NO_SEQUENCE)),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert!(matches!(
            check(RecordBatchBuilder::control_marker(1).into_bytes()),
            Err(ApiError::InvalidRequest { .. })
        ));
    }
}
