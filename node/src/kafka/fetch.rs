//! `Fetch` (4-12): read through the Cairn fetch path (`crate::server::fetch`: the long poll
//! bounded by `limits.fetch_wait_max_ms`, `max_bytes` and each partition's
//! `partition_max_bytes`, whole batches, the first batch always delivered, the connection's
//! and the node's reply budgets), answered in Kafka's shape. The last stable offset is the
//! high watermark (no transactions). Fetch sessions (KIP-227) are not kept: a request for a
//! new session gets session id 0 (none created; the client goes on with full fetches), and a
//! request naming a session gets FETCH_SESSION_ID_NOT_FOUND. From version 9 a partition's
//! `current_leader_epoch` is fenced as Kafka does (FENCED_LEADER_EPOCH for an older epoch,
//! UNKNOWN_LEADER_EPOCH for a newer one).

use super::errors::code;
use super::offset_for_leader_epoch::check_current_epoch;
use super::Call;
use crate::broker::Broker;
use crate::meta::META_TOPIC;
use crate::metrics::NodeMetrics;
use crate::server::budget::{FetchBudgets, Reservation};
use cairn_protocol::messages::{FetchPartition, FetchRequest as CairnFetch, Response};
use cairn_protocol::{ApiError, Offset};
use cairn_replica::Role;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ResponseKind};

/// The session id and epoch of a fetch that uses no session (KIP-227).
const NO_SESSION_ID: i32 = 0;
const FINAL_EPOCH: i32 = -1;
const INITIAL_EPOCH: i32 = 0;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: FetchRequest,
    budgets: &FetchBudgets,
) -> (ResponseKind, Reservation) {
    if call.version >= 7 {
        let refusal = if request.session_id != NO_SESSION_ID {
            Some(ResponseError::FetchSessionIdNotFound)
        } else if request.session_epoch != INITIAL_EPOCH && request.session_epoch != FINAL_EPOCH {
            Some(ResponseError::InvalidFetchSessionEpoch)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let response = FetchResponse::default().with_error_code(refusal.code());
            return (ResponseKind::Fetch(response), Reservation::default());
        }
    }
    // The partitions asked for, in order; those that cannot be asked for are answered here.
    let mut partitions = Vec::new();
    let mut early: Vec<Vec<Option<i16>>> = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut answers = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let checked = match (
                u32::try_from(partition.partition),
                u64::try_from(partition.fetch_offset),
            ) {
                // `__meta` is fetched by Cairn learners on the Cairn listener; to a Kafka
                // client it is no topic (Metadata does not list it either).
                _ if *topic.topic.0 == *META_TOPIC => Err(ApiError::UnknownTopic {
                    topic: META_TOPIC.to_string(),
                }),
                (Err(_), _) => Err(ApiError::UnknownPartition {
                    topic: topic.topic.0.to_string(),
                    partition: 0,
                    partitions: 0,
                }),
                (_, Err(_)) => Err(ApiError::OffsetOutOfRange {
                    requested: Offset::ZERO,
                    log_start: Offset::ZERO,
                    high_watermark: Offset::ZERO,
                }),
                (Ok(index), Ok(offset)) => Ok(FetchPartition {
                    topic: topic.topic.0.to_string(),
                    partition: index,
                    offset: Offset(offset),
                    max_bytes: u32::try_from(partition.partition_max_bytes).unwrap_or(0),
                }),
            };
            let checked = checked.map_err(|error| code(&error)).and_then(|wanted| {
                if call.version >= 9 {
                    fence(broker, &wanted, partition.current_leader_epoch)?;
                }
                Ok(wanted)
            });
            match checked {
                Ok(wanted) => {
                    partitions.push(wanted);
                    answers.push(None);
                }
                Err(error) => answers.push(Some(error)),
            }
        }
        early.push(answers);
    }
    let cairn = CairnFetch {
        max_wait_ms: u32::try_from(request.max_wait_ms).unwrap_or(0),
        min_bytes: u32::try_from(request.min_bytes).unwrap_or(0),
        max_bytes: u32::try_from(request.max_bytes).unwrap_or(0),
        partitions,
    };
    let (mut read, reservation) = match crate::server::fetch::handle(broker, cairn, budgets).await {
        Ok((Response::Fetch(fetched), reservation)) => {
            (Ok(fetched.partitions.into_iter()), reservation)
        }
        Ok(_) => (
            Err(ApiError::Internal {
                reason: "the fetch path answered something else".to_string(),
            }),
            Reservation::default(),
        ),
        Err(error) => (Err(error), Reservation::default()),
    };
    let mut responses = Vec::with_capacity(request.topics.len());
    for (topic, answers) in request.topics.iter().zip(early) {
        let mut datas = Vec::with_capacity(answers.len());
        for (partition, answer) in topic.partitions.iter().zip(answers) {
            let result = match (answer, &mut read) {
                (Some(error), _) => Err(error),
                (None, Ok(read)) => match read.next() {
                    Some(fetched) => fetched.result.map_err(|error| code(&error)),
                    None => Err(code(&ApiError::Internal {
                        reason: "a partition went unanswered".to_string(),
                    })),
                },
                (None, Err(error)) => Err(code(error)),
            };
            datas.push(partition_data(
                call,
                partition.partition,
                result,
                broker.metrics(),
            ));
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(datas),
        );
    }
    let response = FetchResponse::default()
        .with_session_id(NO_SESSION_ID)
        .with_responses(responses);
    (ResponseKind::Fetch(response), reservation)
}

/// KIP-320: a fetch naming a leader epoch other than the leader's is refused
/// (`check_current_epoch`). A replica that does not lead is left to the fetch path, which
/// answers NOT_LEADER_OR_FOLLOWER.
fn fence<S: LogStore>(
    broker: &Broker<S>,
    wanted: &FetchPartition,
    current_leader_epoch: i32,
) -> Result<(), i16> {
    let Ok(handle) = broker.partition(&wanted.topic, wanted.partition) else {
        return Ok(());
    };
    let snapshot = handle.shared.snapshot();
    if snapshot.role != Role::Leader {
        return Ok(());
    }
    check_current_epoch(current_leader_epoch, snapshot.epoch).map_err(|error| error.code())
}

fn partition_data(
    call: Call,
    index: i32,
    result: Result<cairn_protocol::messages::FetchedRecords, i16>,
    metrics: &NodeMetrics,
) -> PartitionData {
    let mut data = PartitionData::default().with_partition_index(index);
    match result {
        Ok(fetched) => match super::batch::to_kafka(&fetched.batches) {
            Err(error) => {
                tracing::error!(%error, "a stored batch does not convert to Kafka's layout");
                return partition_data(call, index, Err(code(&error)), metrics);
            }
            Ok(records) => {
                let high_watermark = i64::try_from(fetched.high_watermark.0).unwrap_or(i64::MAX);
                data.high_watermark = high_watermark;
                data.last_stable_offset = high_watermark;
                if call.version >= 5 {
                    data.log_start_offset = i64::try_from(fetched.log_start.0).unwrap_or(-1);
                }
                data.aborted_transactions = Some(Vec::new());
                metrics.fetch_bytes.inc_by(records.len() as u64);
                data.records = Some(records);
            }
        },
        Err(error) => {
            data.error_code = error;
            data.high_watermark = -1;
            data.last_stable_offset = -1;
            if call.version >= 5 {
                data.log_start_offset = -1;
            }
            data.records = Some(bytes::Bytes::new());
        }
    }
    data
}
