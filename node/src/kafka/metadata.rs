//! `Metadata` (0-12): every node's Kafka address, and per topic its id, partitions, leaders
//! and replicas. Unknown topics are created only when `kafka.auto_create_topics` is on and
//! the client allows it (Kafka's `auto.create.topics.enable`, off here by default).
//! A topic created or grown moments ago whose new leaders this node does not know yet (gossip
//! carries them from the leaders) is answered once it does, within a short bound
//! ([`Broker::new_partitions_deadline`]), not with leader -1 that some clients do not retry.

use super::errors::code;
use super::forward;
use super::ids::{broker_id, host_port, leader_epoch, topic_uuid};
use super::Call;
use crate::broker::{is_internal, Broker};
use crate::meta::{TopicState, META_TOPIC};
use cairn_protocol::messages::{CreateTopicRequest, TopicConfig};
use cairn_protocol::{ApiError, NodeId};
use cairn_replica::Role;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::time::Duration;

/// What every node reports as its Kafka cluster id (one fixed id until clusters are named,
/// as the gossip cluster id).
pub const CLUSTER_ID: &str = "cairn";

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: MetadataRequest,
) -> ResponseKind {
    let brokers = broker.kafka_brokers();
    let mut response = MetadataResponse::default().with_brokers(
        brokers
            .iter()
            .filter_map(|(node, address)| {
                let (host, port) = host_port(address)?;
                Some(
                    MetadataResponseBroker::default()
                        .with_node_id(broker_id(*node))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port),
                )
            })
            .collect(),
    );
    if call.version >= 2 {
        response.cluster_id = Some(StrBytes::from_static_str(CLUSTER_ID));
    }
    if call.version >= 1 {
        response.controller_id = controller_id(broker, &brokers);
    }
    let states = match broker.topic_states() {
        Ok(states) => states,
        Err(error) => {
            // Not ready: every topic asked for gets the retriable error.
            let topics = request.topics.unwrap_or_default();
            response.topics = topics
                .into_iter()
                .map(|topic| {
                    MetadataResponseTopic::default()
                        .with_error_code(code(&error))
                        .with_name(topic.name)
                        .with_topic_id(if call.version >= 10 {
                            topic.topic_id
                        } else {
                            uuid::Uuid::nil()
                        })
                })
                .collect();
            return ResponseKind::Metadata(response);
        }
    };
    let by_name: BTreeMap<&str, &TopicState> = states
        .iter()
        .map(|state| (state.name.as_str(), state))
        .collect();
    // Version 0 names no topic to mean all of them; later versions send null for all.
    let all = match &request.topics {
        None => true,
        Some(topics) => call.version == 0 && topics.is_empty(),
    };
    let wanted: Vec<Wanted> = if all {
        states
            .iter()
            .map(|state| Wanted::Name(state.name.clone()))
            .collect()
    } else {
        request
            .topics
            .unwrap_or_default()
            .into_iter()
            // A topic with an id is looked up by id, whatever its name: the Java client sends
            // the empty name beside the id (as Kafka's broker, an id wins over a name).
            .map(|topic| match topic.name {
                Some(name) if topic.topic_id.is_nil() => Wanted::Name(name.0.to_string()),
                _ => Wanted::Id(topic.topic_id),
            })
            .collect()
    };
    let known: Vec<&str> = wanted
        .iter()
        .filter_map(|wanted| match wanted {
            Wanted::Name(name) => by_name.get(name.as_str()).map(|state| state.name.as_str()),
            Wanted::Id(id) => states
                .iter()
                .find(|state| topic_uuid(state.id, &state.name) == *id)
                .map(|state| state.name.as_str()),
        })
        .collect();
    wait_for_new_leaders(broker, &known).await;
    let auto_create = broker.config.kafka.auto_create_topics
        && (call.version < 4 || request.allow_auto_topic_creation);
    for wanted in wanted {
        let state = match &wanted {
            Wanted::Name(name) => by_name.get(name.as_str()).copied(),
            Wanted::Id(id) => states
                .iter()
                .find(|state| topic_uuid(state.id, &state.name) == *id),
        };
        let topic = match (state, wanted) {
            (Some(state), _) => describe(broker, call, state, &brokers),
            (None, Wanted::Id(id)) => MetadataResponseTopic::default()
                .with_error_code(ResponseError::UnknownTopicId.code())
                .with_topic_id(id),
            (None, Wanted::Name(name)) if name == META_TOPIC => {
                unknown(name, ResponseError::UnknownTopicOrPartition.code())
            }
            (None, Wanted::Name(name)) if auto_create => {
                // Decided by `__meta`'s leader, which may be another node (as Kafka's
                // brokers forward auto-creation to the controller).
                let created = forward::create_topic(
                    broker,
                    CreateTopicRequest {
                        name: name.clone(),
                        partitions: broker.config.kafka.default_partitions,
                        replication_factor: None,
                        config: TopicConfig::default(),
                    },
                )
                .await;
                let error = match created {
                    // Kafka answers a topic it just created as not yet led: clients ask again.
                    // So it does while the `__meta` leader cannot be reached: NOT_LEADER is a
                    // partition error, which clients do not retry at the topic level.
                    Ok(_)
                    | Err(ApiError::TopicAlreadyExists { .. })
                    | Err(ApiError::NotLeader { .. }) => ResponseError::LeaderNotAvailable.code(),
                    Err(error) => code(&error),
                };
                unknown(name, error)
            }
            (None, Wanted::Name(name)) => {
                unknown(name, ResponseError::UnknownTopicOrPartition.code())
            }
        };
        response.topics.push(topic);
    }
    ResponseKind::Metadata(response)
}

/// How often [`wait_for_new_leaders`] looks again.
const NEW_LEADERS_POLL: Duration = Duration::from_millis(10);

/// Waits until every topic of `names` whose partitions are new on this node (see
/// [`Broker::new_partitions_deadline`]) has a leader a Kafka client can reach for each
/// partition, or until the last of their deadlines. A topic past its window, or led, costs
/// nothing: a partition without a leader then is answered as one at once.
async fn wait_for_new_leaders<S: LogStore>(broker: &Broker<S>, names: &[&str]) {
    loop {
        let brokers = broker.kafka_brokers();
        let led = |name: &str| {
            broker.topic_metadata(name).is_ok_and(|topic| {
                topic.partitions.iter().all(|partition| {
                    partition
                        .leader
                        .is_some_and(|leader| brokers.iter().any(|(node, _)| *node == leader))
                })
            })
        };
        let deadline = names
            .iter()
            .filter_map(|name| broker.new_partitions_deadline(name).map(|at| (name, at)))
            .filter(|(name, _)| !led(name))
            .map(|(_, at)| at)
            .max();
        match deadline {
            Some(deadline) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(NEW_LEADERS_POLL).await
            }
            _ => return,
        }
    }
}

/// Kafka clients send CreateTopics, DeleteTopics and CreatePartitions to the controller:
/// `__meta`'s leader, which decides them; -1 while it is not known or has no Kafka address.
pub fn controller_id<S: LogStore>(broker: &Broker<S>, brokers: &[(NodeId, String)]) -> BrokerId {
    broker
        .meta_description()
        .leader
        .filter(|leader| brokers.iter().any(|(node, _)| node == leader))
        .map_or(BrokerId(-1), broker_id)
}

enum Wanted {
    Name(String),
    Id(uuid::Uuid),
}

fn unknown(name: String, error_code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error_code)
        .with_name(Some(TopicName(StrBytes::from_string(name))))
}

fn describe<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    state: &TopicState,
    brokers: &[(NodeId, String)],
) -> MetadataResponseTopic {
    let mut topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(state.name.clone()))));
    if call.version >= 10 {
        topic.topic_id = topic_uuid(state.id, &state.name);
    }
    if call.version >= 1 {
        topic.is_internal = is_internal(&state.name);
    }
    let metadata = match broker.topic_metadata(&state.name) {
        Ok(metadata) => metadata,
        Err(error) => return topic.with_error_code(code(&error)),
    };
    let reachable = |node: &NodeId| brokers.iter().any(|(known, _)| known == node);
    topic.partitions = metadata
        .partitions
        .iter()
        .map(|partition| {
            let replicas: Vec<BrokerId> = partition
                .replicas
                .iter()
                .map(|node| broker_id(*node))
                .collect();
            // A leader without a known Kafka address cannot be reached by a Kafka client.
            let leader = partition.leader.filter(reachable);
            // In sync, in Kafka's sense: alive, and (as far as this node can tell: only the
            // leader tracks its followers) not lagging. Offline: not alive.
            let lagging = broker
                .partition(&state.name, partition.partition)
                .ok()
                .filter(|handle| handle.shared.snapshot().role == Role::Leader)
                .map(|handle| handle.shared.lagging_followers())
                .unwrap_or_default();
            let isr: Vec<BrokerId> = partition
                .replicas
                .iter()
                .filter(|node| reachable(node) && !lagging.contains(node))
                .map(|node| broker_id(*node))
                .collect();
            let offline: Vec<BrokerId> = partition
                .replicas
                .iter()
                .filter(|node| !reachable(node))
                .map(|node| broker_id(*node))
                .collect();
            let mut answer = MetadataResponsePartition::default()
                .with_partition_index(partition.partition as i32)
                .with_leader_id(leader.map_or(BrokerId(-1), broker_id))
                .with_replica_nodes(replicas)
                .with_isr_nodes(isr);
            if call.version >= 5 {
                answer.offline_replicas = offline;
            }
            if leader.is_none() {
                answer.error_code = ResponseError::LeaderNotAvailable.code();
            }
            if call.version >= 7 {
                answer.leader_epoch = leader_epoch(partition.leader_epoch);
            }
            answer
        })
        .collect();
    topic
}
