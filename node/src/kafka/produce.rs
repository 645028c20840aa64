//! `Produce` (3-11): each partition's batch goes to the same partition-actor append as a
//! Cairn produce (`crate::server::produce`), after the same validation; its records and
//! checksum are stored as they came, only the header's epoch field is widened ([`super::batch`]).
//! acks map one to one: 0 (no reply at all), 1 (the leader's flush), -1 (committed).
//!
//! Split in two as on the Cairn listener: [`enqueue`] runs in the connection's reader, in
//! request order, and [`Enqueued::complete`] waits for the answers concurrently.

use super::errors::code;
use super::ids::{broker_id, leader_epoch};
use crate::broker::Broker;
use crate::server::produce as cairn_produce;
use cairn_protocol::messages::{Acks, ProduceRequest as CairnProduce, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};

/// One partition's batch, in its mailbox or refused.
struct Pending {
    index: i32,
    result: Result<cairn_produce::Enqueued, ApiError>,
}

pub struct Enqueued {
    acks: i16,
    /// Bytes of the record batches the request carried, for `cairn_produce_bytes`.
    pub batch_bytes: u64,
    topics: Vec<(TopicName, Vec<Pending>)>,
}

fn acks(acks: i16) -> Option<Acks> {
    match acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    }
}

/// Validates every partition's batch and puts it in its partition's mailbox, in order. Awaited
/// by the reader before it reads the next request; it waits only when a topic with schema
/// validation needs this node's registry caught up first (see `crate::schemas::validation`).
pub async fn enqueue<S: LogStore>(broker: &Broker<S>, request: ProduceRequest) -> Enqueued {
    let timeout_ms = u32::try_from(request.timeout_ms).unwrap_or(0);
    let wanted = acks(request.acks);
    let mut batch_bytes = 0u64;
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.clone();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for partition in topic.partition_data {
            batch_bytes += partition
                .records
                .as_ref()
                .map_or(0, |records| records.len() as u64);
            let index = partition.index;
            let result = async {
                let acks = wanted.ok_or_else(|| ApiError::InvalidRequest {
                    reason: format!("acks must be 0, 1 or -1 (got {})", request.acks),
                })?;
                let partition_id =
                    u32::try_from(partition.index).map_err(|_| ApiError::UnknownTopic {
                        topic: topic.name.0.to_string(),
                    })?;
                let records = partition.records.ok_or_else(|| ApiError::InvalidRecords {
                    reason: "a produce carries one record batch per partition (got none)"
                        .to_string(),
                })?;
                let batch = super::batch::from_kafka(&records)?;
                cairn_produce::enqueue(
                    broker,
                    CairnProduce {
                        topic: topic.name.0.to_string(),
                        partition: partition_id,
                        acks,
                        timeout_ms,
                        batch,
                    },
                )
                .await
            }
            .await;
            if let Err(error) = &result {
                tracing::debug!(topic = %topic.name.0, partition = index, %error, "kafka produce refused");
            }
            partitions.push(Pending { index, result });
        }
        topics.push((name, partitions));
    }
    Enqueued {
        acks: request.acks,
        batch_bytes,
        topics,
    }
}

impl Enqueued {
    /// A produce with acks 0 gets no reply.
    pub fn acks_none(&self) -> bool {
        self.acks == 0
    }

    /// Why a batch was refused before it reached its partition, if one was: with acks 0 the
    /// only way to tell the producer is to close its connection, as Kafka does.
    pub fn failure(&self) -> Option<String> {
        self.topics.iter().find_map(|(name, partitions)| {
            partitions.iter().find_map(|pending| match &pending.result {
                Ok(_) => None,
                Err(error) => Some(format!("{}/{}: {error}", name.0, pending.index)),
            })
        })
    }

    /// Waits for every partition's answer.
    pub async fn complete<S: LogStore>(self, broker: &Broker<S>, version: i16) -> ResponseKind {
        let mut responses = Vec::with_capacity(self.topics.len());
        for (name, partitions) in self.topics {
            let mut answers = Vec::with_capacity(partitions.len());
            for pending in partitions {
                let result = match pending.result {
                    Ok(enqueued) => cairn_produce::complete(enqueued).await,
                    Err(error) => Err(error),
                };
                let mut answer = PartitionProduceResponse::default()
                    .with_index(pending.index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                match result {
                    Ok(Response::Produce(produced)) => {
                        answer.base_offset = i64::try_from(produced.base_offset.0).unwrap_or(-1);
                    }
                    Ok(_) => {
                        answer.error_code = ResponseError::UnknownServerError.code();
                    }
                    Err(error) => {
                        answer.error_code = if acks(self.acks).is_none() {
                            ResponseError::InvalidRequiredAcks.code()
                        } else {
                            code(&error)
                        };
                        if version >= 8 {
                            answer.error_message = Some(error.to_string().into());
                            // Kafka names each refused record of the batch by its index.
                            if let ApiError::SchemaValidation { records, .. } = &error {
                                answer.record_errors = records
                                    .iter()
                                    .map(|record| {
                                        BatchIndexAndErrorMessage::default()
                                            .with_batch_index(record.index as i32)
                                            .with_batch_index_error_message(Some(
                                                record.reason.clone().into(),
                                            ))
                                    })
                                    .collect();
                            }
                        }
                        if let (
                            true,
                            ApiError::NotLeader {
                                leader_hint: Some(leader),
                                epoch,
                            },
                        ) = (version >= 10, &error)
                        {
                            // Version 10 and later: where to retry, without a metadata round.
                            if broker
                                .kafka_brokers()
                                .iter()
                                .any(|(node, _)| node == leader)
                            {
                                answer.current_leader = LeaderIdAndEpoch::default()
                                    .with_leader_id(broker_id(*leader))
                                    .with_leader_epoch(leader_epoch(*epoch));
                            }
                        }
                    }
                }
                answers.push(answer);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(answers),
            );
        }
        ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
    }
}
