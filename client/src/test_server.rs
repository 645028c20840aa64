//! A tiny in-process broker speaking the real protocol over real TCP, for unit tests of the
//! connection, producer and consumer before (and independently of) the real node. One node,
//! logs in memory, with fault hooks: pause (stop answering), inject refusals, drop
//! connections.

use bytes::Bytes;
use cairn_protocol::frame::{decode_request, encode_response, FrameCodec, ResponseFrame};
use cairn_protocol::messages::*;
use cairn_protocol::{ApiError, Epoch, NodeId, Offset, RecordBatch, Request, Response};
use futures::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::codec::Framed;

pub(crate) struct Log {
    pub batches: Vec<RecordBatch>,
    pub log_end: Offset,
}

#[derive(Default)]
pub(crate) struct State {
    pub topics: HashMap<String, Vec<Log>>,
    /// Refusals handed out, in order, to the next produce requests.
    pub produce_failures: VecDeque<ApiError>,
    pub produce_requests: u64,
    /// Metadata reports no leader for any partition (an election in progress).
    pub leaderless: bool,
    /// Partitions whose metadata names another node as leader, at this address (a node
    /// that may be dead: a closed port), as after a failover this server has not seen.
    pub moved: HashMap<(String, u32), (NodeId, String)>,
    /// The next this many metadata requests answer every topic `NotReady`, as a restarted
    /// node still catching up on cluster metadata does.
    pub metadata_catching_up: u32,
    pub metadata_requests: u64,
    /// Errors handed out, in order, to the next produce requests *after* their batch was
    /// appended: an acknowledgement lost on its way back.
    pub replies_lost: VecDeque<ApiError>,
    /// Producer ids handed out so far (`InitProducerId`); the next id is this count.
    pub producer_ids_issued: i64,
    /// Batches of producer ids below this are refused `ProducerIdNotAllocated`, as by a
    /// cluster recreated from empty data while a producer lived.
    pub producer_ids_unknown_below: i64,
    /// Idempotent producers per (topic, partition, producer id): epoch, and the sequence
    /// ranges written with their base offsets, as a leader's replica keeps them.
    pub producers: HashMap<(String, u32, i64), ProducerWritten>,
    /// The scripted group coordinator (one group, one member at a time is enough here).
    pub coordinator: FakeCoordinator,
}

/// A minimal group coordinator: it hands out whatever assignment the test scripts, bumps
/// the member epoch when that changes, and records every heartbeat and commit in arrival
/// order, so tests can check what the client did and when.
#[derive(Default)]
pub(crate) struct FakeCoordinator {
    /// The assignment handed to the member in every heartbeat reply.
    pub assignment: Vec<cairn_protocol::group::TopicPartitions>,
    handed_out: Option<Vec<cairn_protocol::group::TopicPartitions>>,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    /// Everything the client sent, in arrival order.
    pub events: Vec<GroupEvent>,
    /// Refusals handed to the next heartbeats / commits, in order.
    pub heartbeat_failures: VecDeque<ApiError>,
    pub commit_failures: VecDeque<ApiError>,
    pub committed: HashMap<(String, u32), Offset>,
    pub find_coordinator_requests: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupEvent {
    Heartbeat {
        epoch: i32,
        owned: Vec<(String, u32)>,
    },
    Commit {
        epoch: i32,
        offsets: Vec<(String, u32, u64)>,
    },
}

/// An idempotent producer's epoch and its batches (first sequence, last sequence, base offset).
pub(crate) type ProducerWritten = (i16, Vec<(i32, i32, Offset)>);

pub(crate) struct TestServer {
    pub address: String,
    pub state: Arc<Mutex<State>>,
    pub limits: ServerLimits,
    paused: watch::Sender<bool>,
    /// Bumping this closes every open connection.
    kill: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with_limits(ServerLimits {
            frame_bytes_max: 8 * 1024 * 1024,
            batch_bytes_max: 1024 * 1024,
            record_bytes_max: 512 * 1024,
            requests_in_flight_max: 64,
        })
        .await
    }

    pub async fn start_with_limits(limits: ServerLimits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (paused, paused_rx) = watch::channel(false);
        let (kill, kill_rx) = watch::channel(0u64);
        let task = {
            let state = Arc::clone(&state);
            let address = address.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    stream.set_nodelay(true).unwrap();
                    tokio::spawn(serve(
                        Framed::new(stream, FrameCodec::new(limits.frame_bytes_max as usize)),
                        Arc::clone(&state),
                        address.clone(),
                        limits,
                        paused_rx.clone(),
                        kill_rx.clone(),
                    ));
                }
            })
        };
        TestServer {
            address,
            state,
            limits,
            paused,
            kill,
            task,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let logs = (0..partitions)
            .map(|_| Log {
                batches: Vec::new(),
                log_end: Offset(0),
            })
            .collect();
        self.state
            .lock()
            .unwrap()
            .topics
            .insert(name.to_owned(), logs);
    }

    /// While paused, requests are read but not answered (like a SIGSTOPped node).
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Scripts the assignment the fake coordinator hands out from its next heartbeat reply.
    pub fn set_assignment(&self, topic: &str, partitions: &[u32]) {
        self.state.lock().unwrap().coordinator.assignment = if partitions.is_empty() {
            Vec::new()
        } else {
            vec![cairn_protocol::group::TopicPartitions {
                topic: topic.to_owned(),
                partitions: partitions.to_vec(),
            }]
        };
    }

    pub fn group_events(&self) -> Vec<GroupEvent> {
        self.state.lock().unwrap().coordinator.events.clone()
    }

    pub fn drop_connections(&self) {
        self.kill.send_modify(|generation| *generation += 1);
    }

    /// Every stored record of a partition: (offset, key, value, timestamp).
    pub fn records(
        &self,
        topic: &str,
        partition: u32,
    ) -> Vec<(u64, Option<Bytes>, Option<Bytes>, i64)> {
        let state = self.state.lock().unwrap();
        state.topics[topic][partition as usize]
            .batches
            .iter()
            .flat_map(|batch| {
                batch
                    .records()
                    .map(|record| {
                        let record = record.unwrap();
                        (
                            record.offset.0,
                            record.key,
                            record.value,
                            record.timestamp_ms,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn batch_codecs(&self, topic: &str, partition: u32) -> Vec<cairn_protocol::Compression> {
        let state = self.state.lock().unwrap();
        state.topics[topic][partition as usize]
            .batches
            .iter()
            .map(|batch| batch.compression().unwrap())
            .collect()
    }

    pub fn batch_sizes(&self, topic: &str, partition: u32) -> Vec<usize> {
        let state = self.state.lock().unwrap();
        state.topics[topic][partition as usize]
            .batches
            .iter()
            .map(RecordBatch::size_bytes)
            .collect()
    }
}

async fn serve(
    mut framed: Framed<tokio::net::TcpStream, FrameCodec>,
    state: Arc<Mutex<State>>,
    address: String,
    limits: ServerLimits,
    mut paused: watch::Receiver<bool>,
    mut kill: watch::Receiver<u64>,
) {
    kill.mark_unchanged();
    loop {
        let frame = tokio::select! {
            frame = framed.next() => frame,
            _ = kill.changed() => return,
        };
        let Some(Ok(frame)) = frame else {
            return;
        };
        let request = decode_request(&frame).unwrap();
        // A paused server holds the reply; a kill still closes the connection.
        tokio::select! {
            _ = paused.wait_for(|paused| !*paused) => {}
            _ = kill.changed() => return,
        }
        let result = handle(&state, &address, limits, request.request).await;
        let reply = encode_response(&ResponseFrame {
            correlation_id: request.correlation_id,
            result,
        });
        if framed.send(reply).await.is_err() {
            return;
        }
    }
}

fn unknown_topic(topic: &str) -> ApiError {
    ApiError::UnknownTopic {
        topic: topic.to_owned(),
    }
}

async fn handle(
    state: &Arc<Mutex<State>>,
    address: &str,
    limits: ServerLimits,
    request: Request,
) -> Result<Response, ApiError> {
    match request {
        Request::Handshake(_) => Ok(Response::Handshake(HandshakeResponse {
            version: 1,
            node_id: NodeId(1),
            limits,
        })),
        Request::Metadata(request) => {
            let mut state = state.lock().unwrap();
            state.metadata_requests += 1;
            let catching_up = state.metadata_catching_up > 0;
            state.metadata_catching_up = state.metadata_catching_up.saturating_sub(1);
            let names: Vec<String> = match request.topics {
                Some(names) => names,
                None => state.topics.keys().cloned().collect(),
            };
            let topics = names
                .into_iter()
                .map(|name| TopicMetadataResult {
                    result: match state.topics.get(&name) {
                        _ if catching_up => Err(ApiError::NotReady {
                            reason: "cluster metadata is catching up".to_string(),
                        }),
                        Some(logs) => Ok(TopicMetadata {
                            name: name.clone(),
                            internal: false,
                            partitions: (0..logs.len() as u32)
                                .map(|partition| {
                                    let leader = match state.moved.get(&(name.clone(), partition)) {
                                        Some((node, _)) => *node,
                                        None => NodeId(1),
                                    };
                                    PartitionMetadata {
                                        partition,
                                        leader: (!state.leaderless).then_some(leader),
                                        leader_epoch: Epoch(1),
                                        replicas: vec![leader],
                                    }
                                })
                                .collect(),
                        }),
                        None => Err(unknown_topic(&name)),
                    },
                    name,
                })
                .collect();
            let mut brokers = vec![BrokerInfo {
                node_id: NodeId(1),
                address: address.to_owned(),
            }];
            for (node_id, address) in state.moved.values() {
                if brokers.iter().all(|broker| broker.node_id != *node_id) {
                    brokers.push(BrokerInfo {
                        node_id: *node_id,
                        address: address.clone(),
                    });
                }
            }
            Ok(Response::Metadata(MetadataResponse { brokers, topics }))
        }
        Request::ListTopics(_) => {
            let state = state.lock().unwrap();
            Ok(Response::ListTopics(ListTopicsResponse {
                topics: state
                    .topics
                    .iter()
                    .map(|(name, logs)| TopicSummary {
                        name: name.clone(),
                        partitions: logs.len() as u32,
                        replication_factor: 1,
                        internal: false,
                    })
                    .collect(),
            }))
        }
        Request::Produce(request) => {
            let mut state = state.lock().unwrap();
            state.produce_requests += 1;
            if let Some(error) = state.produce_failures.pop_front() {
                return Err(error);
            }
            if request.batch.len() > limits.batch_bytes_max as usize {
                return Err(ApiError::BatchTooLarge {
                    size: request.batch.len() as u64,
                    max: u64::from(limits.batch_bytes_max),
                });
            }
            let batch = RecordBatch::validate(request.batch).map_err(ApiError::from)?;
            for record in batch.records() {
                let record = record.unwrap();
                let size = record.value.as_ref().map_or(0, |value| value.len())
                    + record.key.map_or(0, |key| key.len());
                if size > limits.record_bytes_max as usize {
                    return Err(ApiError::RecordTooLarge {
                        size: size as u64,
                        max: u64::from(limits.record_bytes_max),
                    });
                }
            }
            let logs = state
                .topics
                .get_mut(&request.topic)
                .ok_or_else(|| unknown_topic(&request.topic))?;
            let partitions = logs.len() as u32;
            if request.partition >= partitions {
                return Err(ApiError::UnknownPartition {
                    topic: request.topic.clone(),
                    partition: request.partition,
                    partitions,
                });
            }
            let header = *batch.header();
            let key = (request.topic.clone(), request.partition, header.producer_id);
            if header.has_producer() && header.producer_id < state.producer_ids_unknown_below {
                return Err(ApiError::ProducerIdNotAllocated {
                    producer_id: header.producer_id,
                });
            }
            if header.has_producer() {
                // The leader's rules for idempotent producers (cairn_replica::producers), for
                // a known producer of the same epoch: a repeat is answered with its first
                // offset, a gap is refused.
                // An unknown producer starts at sequence 0 (UnknownProducerId otherwise).
                if header.base_sequence != 0 && !state.producers.contains_key(&key) {
                    return Err(ApiError::UnknownProducerId {
                        producer_id: header.producer_id,
                        received: header.base_sequence,
                    });
                }
                if let Some((epoch, written)) = state.producers.get(&key) {
                    if *epoch == header.producer_epoch {
                        let last_sequence = header.last_sequence();
                        if let Some(&(_, _, base_offset)) =
                            written.iter().find(|&&(first, last, _)| {
                                first == header.base_sequence && last == last_sequence
                            })
                        {
                            return Ok(Response::Produce(ProduceResponse {
                                base_offset,
                                leader_epoch: Epoch(1),
                                duplicate: true,
                            }));
                        }
                        let expected = written.last().map_or(0, |&(_, last, _)| last + 1);
                        if header.base_sequence != expected {
                            return Err(ApiError::OutOfOrderSequence {
                                producer_id: header.producer_id,
                                expected,
                                received: header.base_sequence,
                            });
                        }
                    }
                }
            }
            let logs = state.topics.get_mut(&request.topic).expect("checked above");
            let log = &mut logs[request.partition as usize];
            let base_offset = log.log_end;
            let stamped = batch.stamped(base_offset, Epoch(1));
            log.log_end = stamped.next_offset();
            log.batches.push(stamped);
            if header.has_producer() {
                let entry = state
                    .producers
                    .entry(key)
                    .or_insert((header.producer_epoch, Vec::new()));
                if entry.0 != header.producer_epoch {
                    *entry = (header.producer_epoch, Vec::new());
                }
                entry
                    .1
                    .push((header.base_sequence, header.last_sequence(), base_offset));
            }
            if let Some(error) = state.replies_lost.pop_front() {
                return Err(error);
            }
            Ok(Response::Produce(ProduceResponse {
                base_offset,
                leader_epoch: Epoch(1),
                duplicate: false,
            }))
        }
        Request::Fetch(request) => {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
            loop {
                let response = {
                    let state = state.lock().unwrap();
                    fetch(&state, &request)
                };
                let bytes: usize = response
                    .partitions
                    .iter()
                    .map(|partition| match &partition.result {
                        Ok(records) => records.batches.len(),
                        Err(_) => 1,
                    })
                    .sum();
                if bytes >= request.min_bytes.max(1) as usize
                    || tokio::time::Instant::now() >= deadline
                {
                    return Ok(Response::Fetch(response));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Request::ListOffsets(request) => {
            let state = state.lock().unwrap();
            let logs = state
                .topics
                .get(&request.topic)
                .ok_or_else(|| unknown_topic(&request.topic))?;
            let log = &logs[request.partition as usize];
            let (offset, timestamp_ms) = match request.spec {
                OffsetSpec::Earliest => (Offset(0), None),
                OffsetSpec::Latest => (log.log_end, None),
                OffsetSpec::Timestamp(at) => log
                    .batches
                    .iter()
                    .flat_map(|batch| batch.records().map(Result::unwrap).collect::<Vec<_>>())
                    .find(|record| record.timestamp_ms >= at)
                    .map_or((log.log_end, None), |record| {
                        (record.offset, Some(record.timestamp_ms))
                    }),
            };
            Ok(Response::ListOffsets(ListOffsetsResponse {
                offset,
                timestamp_ms,
            }))
        }
        Request::InitProducerId(_) => {
            let mut state = state.lock().unwrap();
            let producer_id = state.producer_ids_issued;
            state.producer_ids_issued += 1;
            Ok(Response::InitProducerId(InitProducerIdResponse {
                producer_id,
                producer_epoch: 0,
            }))
        }
        Request::FindCoordinator(_) => {
            state.lock().unwrap().coordinator.find_coordinator_requests += 1;
            Ok(Response::FindCoordinator(
                cairn_protocol::group::FindCoordinatorResponse {
                    partition: 0,
                    coordinator: Some(NodeId(1)),
                    address: Some(address.to_owned()),
                },
            ))
        }
        Request::ConsumerGroupHeartbeat(request) => {
            let mut state = state.lock().unwrap();
            let coordinator = &mut state.coordinator;
            let owned = request
                .owned
                .iter()
                .flatten()
                .flat_map(|topic| {
                    topic
                        .partitions
                        .iter()
                        .map(|partition| (topic.topic.clone(), *partition))
                })
                .collect();
            coordinator.events.push(GroupEvent::Heartbeat {
                epoch: request.member_epoch.0,
                owned,
            });
            if let Some(error) = coordinator.heartbeat_failures.pop_front() {
                return Err(error);
            }
            let leaving = request.member_epoch.0 < 0;
            if request.member_epoch.0 == 0
                || coordinator.handed_out.as_ref() != Some(&coordinator.assignment)
            {
                coordinator.member_epoch += 1;
                coordinator.handed_out = Some(coordinator.assignment.clone());
            }
            Ok(Response::ConsumerGroupHeartbeat(
                cairn_protocol::group::ConsumerGroupHeartbeatResponse {
                    member_id: "member-1".to_owned(),
                    member_epoch: cairn_protocol::group::MemberEpoch(if leaving {
                        request.member_epoch.0
                    } else {
                        coordinator.member_epoch
                    }),
                    heartbeat_interval_ms: coordinator.heartbeat_interval_ms.max(1),
                    assignment: if leaving {
                        Vec::new()
                    } else {
                        coordinator.assignment.clone()
                    },
                },
            ))
        }
        Request::OffsetCommit(request) => {
            let mut state = state.lock().unwrap();
            let coordinator = &mut state.coordinator;
            coordinator.events.push(GroupEvent::Commit {
                epoch: request.member_epoch.0,
                offsets: request
                    .offsets
                    .iter()
                    .map(|offset| (offset.topic.clone(), offset.partition, offset.offset.0))
                    .collect(),
            });
            if let Some(error) = coordinator.commit_failures.pop_front() {
                return Err(error);
            }
            let mut partitions = Vec::new();
            for offset in &request.offsets {
                coordinator
                    .committed
                    .insert((offset.topic.clone(), offset.partition), offset.offset);
                partitions.push(cairn_protocol::group::OffsetCommitPartitionResult {
                    topic: offset.topic.clone(),
                    partition: offset.partition,
                    result: Ok(()),
                });
            }
            Ok(Response::OffsetCommit(
                cairn_protocol::group::OffsetCommitResponse { partitions },
            ))
        }
        Request::OffsetFetch(request) => {
            let state = state.lock().unwrap();
            let committed = &state.coordinator.committed;
            let partitions = request
                .partitions
                .unwrap_or_default()
                .into_iter()
                .flat_map(|topic| {
                    topic
                        .partitions
                        .into_iter()
                        .map(move |partition| (topic.topic.clone(), partition))
                })
                .map(
                    |(topic, partition)| cairn_protocol::group::CommittedPartitionOffset {
                        committed: committed.get(&(topic.clone(), partition)).map(|offset| {
                            cairn_protocol::group::CommittedOffset {
                                offset: *offset,
                                metadata: None,
                            }
                        }),
                        topic,
                        partition,
                    },
                )
                .collect();
            Ok(Response::OffsetFetch(
                cairn_protocol::group::OffsetFetchResponse { partitions },
            ))
        }
        other => Err(ApiError::InvalidRequest {
            reason: format!("test server does not do {}", other.kind()),
        }),
    }
}

fn fetch(state: &State, request: &FetchRequest) -> FetchResponse {
    let mut budget = request.max_bytes as usize;
    let mut answered_any = false;
    let partitions = request
        .partitions
        .iter()
        .map(|wanted| {
            let result = match state
                .topics
                .get(&wanted.topic)
                .and_then(|logs| logs.get(wanted.partition as usize))
            {
                None => Err(unknown_topic(&wanted.topic)),
                Some(log) if wanted.offset > log.log_end => Err(ApiError::OffsetOutOfRange {
                    requested: wanted.offset,
                    log_start: Offset(0),
                    high_watermark: log.log_end,
                }),
                Some(log) => {
                    let mut bytes = Vec::new();
                    for batch in &log.batches {
                        if batch.next_offset() <= wanted.offset {
                            continue;
                        }
                        let fits = bytes.len() + batch.size_bytes() <= wanted.max_bytes as usize
                            && batch.size_bytes() <= budget;
                        // Like Kafka (and a Cairn node), the first batch of the response is
                        // returned even when it is too big; past the budget, nothing more.
                        if !fits && (!bytes.is_empty() || answered_any) {
                            break;
                        }
                        answered_any = true;
                        budget = budget.saturating_sub(batch.size_bytes());
                        bytes.extend_from_slice(batch.bytes());
                    }
                    Ok(FetchedRecords {
                        log_start: Offset(0),
                        high_watermark: log.log_end,
                        batches: Bytes::from(bytes),
                    })
                }
            };
            FetchPartitionResponse {
                topic: wanted.topic.clone(),
                partition: wanted.partition,
                result,
            }
        })
        .collect();
    FetchResponse { partitions }
}
