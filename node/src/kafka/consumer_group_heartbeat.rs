//! `ConsumerGroupHeartbeat` (0-1, KIP-848): Kafka's server-side-assignment groups, which are
//! Cairn's own groups (`crate::group::state`, already KIP-848 shaped): the request becomes a
//! Cairn heartbeat on the same coordinator, and the answer goes back with topic ids.
//!
//! What differs from Cairn's wire: Kafka names topics by id (mapped through the catalog; an
//! id the catalog does not know is left out of the owned partitions), leaves out what did not
//! change (rebalance timeout -1, subscription or owned partitions null: the member's current
//! values are used) and has no session timeout in the request (the broker's default,
//! [`SESSION_TIMEOUT_MS`], within the node's `groups.session_timeout_ms_min`/`_max`).

use super::groups::group_error;
use super::ids::topic_uuid;
use super::Call;
use crate::broker::Broker;
use crate::server::group_requests::coordinated;
use cairn_protocol::group::MemberEpoch;
use cairn_protocol::group::{ConsumerGroupHeartbeatRequest as CairnHeartbeat, TopicPartitions};
use cairn_storage::LogStore;
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment, TopicPartitions as KafkaTopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Kafka's `group.consumer.session.timeout.ms` default.
const SESSION_TIMEOUT_MS: u32 = 45_000;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: ConsumerGroupHeartbeatRequest,
) -> ResponseKind {
    let mut response = ConsumerGroupHeartbeatResponse::default();
    let states = match broker.topic_states() {
        Ok(states) => states,
        Err(error) => {
            response.error_code = group_error(&error).code();
            return ResponseKind::ConsumerGroupHeartbeat(response);
        }
    };
    let by_id: BTreeMap<Uuid, String> = states
        .iter()
        .map(|state| (topic_uuid(state.id, &state.name), state.name.clone()))
        .collect();
    let by_name: BTreeMap<&str, Uuid> = states
        .iter()
        .map(|state| (state.name.as_str(), topic_uuid(state.id, &state.name)))
        .collect();
    let group_config = broker.config.groups.group_config();
    let session_timeout_ms = SESSION_TIMEOUT_MS.clamp(
        group_config.session_timeout_ms_min,
        group_config.session_timeout_ms_max,
    );
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let mut heartbeat = CairnHeartbeat {
        group_id: group_id.clone(),
        member_id: member_id.clone(),
        member_epoch: MemberEpoch(request.member_epoch),
        instance_id: request.instance_id.map(|id| id.to_string()),
        rebalance_timeout_ms: 0,
        session_timeout_ms,
        subscribed_topics: request
            .subscribed_topic_names
            .map(|topics| topics.into_iter().map(|t| t.0.to_string()).collect()),
        assignor: request.server_assignor.map(|a| a.to_string()),
        owned: request.topic_partitions.map(|owned| {
            owned
                .into_iter()
                .filter_map(|topic| {
                    let name = by_id.get(&topic.topic_id)?;
                    Some(TopicPartitions {
                        topic: name.clone(),
                        partitions: topic
                            .partitions
                            .into_iter()
                            .filter_map(|p| u32::try_from(p).ok())
                            .collect(),
                    })
                })
                .collect()
        }),
    };
    let requested_rebalance_ms = u32::try_from(request.rebalance_timeout_ms).ok();
    let topics = broker.group_topic_counts();
    let answer = coordinated(broker, &group_id, |c, now_ms| {
        // -1: unchanged since the member's last heartbeat (or the longest, for a join).
        heartbeat.rebalance_timeout_ms = requested_rebalance_ms.unwrap_or_else(|| {
            c.group(&group_id)
                .and_then(|g| g.members.get(&member_id))
                .map_or(group_config.rebalance_timeout_ms_max, |m| {
                    m.rebalance_timeout_ms
                })
        });
        c.heartbeat(&heartbeat, &topics, now_ms)
    })
    .await;
    match answer {
        Ok(reply) => {
            response.member_id = Some(StrBytes::from_string(reply.member_id));
            response.member_epoch = reply.member_epoch.0;
            response.heartbeat_interval_ms =
                i32::try_from(reply.heartbeat_interval_ms).unwrap_or(i32::MAX);
            if reply.member_epoch.0 >= 0 {
                response.assignment = Some(
                    Assignment::default().with_topic_partitions(
                        reply
                            .assignment
                            .into_iter()
                            .filter_map(|topic| {
                                let id = by_name.get(topic.topic.as_str())?;
                                Some(
                                    KafkaTopicPartitions::default()
                                        .with_topic_id(*id)
                                        .with_partitions(
                                            topic
                                                .partitions
                                                .into_iter()
                                                .map(|p| i32::try_from(p).unwrap_or(i32::MAX))
                                                .collect(),
                                        ),
                                )
                            })
                            .collect(),
                    ),
                );
            }
        }
        Err(error) => {
            response.error_code = group_error(&error).code();
            response.error_message = Some(StrBytes::from_string(error.to_string()));
            response.member_epoch = -1;
        }
    }
    ResponseKind::ConsumerGroupHeartbeat(response)
}
