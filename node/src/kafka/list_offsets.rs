//! `ListOffsets` (1-7): -2 the earliest offset (log start), -1 the latest (the high
//! watermark, also the last stable offset: no transactions), or a timestamp: the first offset
//! at or after it, below the high watermark, found through the storage's time index (one
//! entry per batch max timestamp) and a walk of the batch it names. -3 (the record with the
//! largest timestamp, version 7) is not served: UNSUPPORTED_VERSION for that partition. From
//! version 4 a partition's `current_leader_epoch` is fenced (`check_current_epoch`).

use super::errors::code;
use super::ids::leader_epoch;
use super::offset_for_leader_epoch::check_current_epoch;
use super::Call;
use crate::broker::Broker;
use cairn_protocol::ApiError;
use cairn_replica::Role;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, ResponseKind};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: ListOffsetsRequest,
) -> ResponseKind {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let mut answer = ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            match lookup(
                broker,
                &topic.name.0,
                partition.partition_index,
                partition.timestamp,
                if call.version >= 4 {
                    partition.current_leader_epoch
                } else {
                    -1
                },
            )
            .await
            {
                Ok((offset, timestamp, epoch)) => {
                    answer.offset = offset;
                    answer.timestamp = timestamp;
                    if call.version >= 4 {
                        answer.leader_epoch = epoch;
                    }
                }
                Err(error) => answer.error_code = error,
            }
            partitions.push(answer);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(topics))
}

/// Offset, timestamp and leader epoch for one partition, or a Kafka error code.
async fn lookup<S: LogStore>(
    broker: &Broker<S>,
    topic: &str,
    partition: i32,
    timestamp: i64,
    current_leader_epoch: i32,
) -> Result<(i64, i64, i32), i16> {
    let index =
        u32::try_from(partition).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let handle = broker
        .partition(topic, index)
        .map_err(|error| code(&error))?;
    let snapshot = handle.shared.snapshot();
    if snapshot.role != Role::Leader {
        return Err(code(&handle.shared.not_leader()));
    }
    check_current_epoch(current_leader_epoch, snapshot.epoch).map_err(|error| error.code())?;
    let epoch = leader_epoch(snapshot.epoch);
    let offset = |offset: cairn_protocol::Offset| i64::try_from(offset.0).unwrap_or(i64::MAX);
    match timestamp {
        EARLIEST => Ok((offset(snapshot.log_start), -1, epoch)),
        LATEST => Ok((offset(snapshot.high_watermark), -1, epoch)),
        MAX_TIMESTAMP => Err(ResponseError::UnsupportedVersion.code()),
        timestamp if timestamp < 0 => Err(code(&ApiError::InvalidRequest {
            reason: format!("no offset spec {timestamp}"),
        })),
        timestamp => match handle.offset_for_timestamp(timestamp).await {
            Ok(Some((found, found_ms))) => Ok((offset(found), found_ms, epoch)),
            // No record at or after the timestamp: Kafka answers offset -1.
            Ok(None) => Ok((-1, -1, epoch)),
            Err(error) => Err(code(&error)),
        },
    }
}
