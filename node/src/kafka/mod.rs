//! The Kafka listener: Kafka's wire protocol over the same broker (DESIGN 11).
//!
//! [`serve`] runs the accept loop until the shutdown signal, exactly as the Cairn listener's
//! (`crate::server`) and under the same hostile-client limits, taken from the same code: the
//! node-wide connection count and per-address count ([`crate::server::Connections`], shared
//! by both listeners), the frame size (`limits.frame_bytes_max`, the same length-prefixed
//! framing), the first-request deadline and idle timeout, the connection's outbound byte
//! budget, its address's and the node's fetch budgets (`crate::server::budget`), and a
//! bound on requests in flight (`limits.requests_in_flight_max`). The entries of one request (topics and
//! partitions) are bounded by `limits.request_entries_max`; the codec refuses an array count
//! larger than the bytes that follow it before it allocates (vendor/kafka-protocol/PATCHES.md).
//!
//! Kafka requires the replies of one connection in the order of its requests. The reader
//! starts each request's work as a task (pipelining up to the in-flight bound) and queues
//! the task's reply slot; the writer takes the slots in order and writes each reply when it
//! is ready. Produce batches go into their partitions' mailboxes from the reader itself, in
//! the order they were read, as on the Cairn listener.
//!
//! A request the listener cannot answer (a malformed frame or header, an API it does not
//! advertise, a version outside the advertised range) closes the connection, as a Kafka
//! broker does; ApiVersions is the exception (KIP-511): any version gets an answer.
//!
//! One file per API: [`api_versions`], [`metadata`], [`produce`], [`fetch`],
//! [`list_offsets`], [`offset_for_leader_epoch`], [`create_topics`], [`delete_topics`],
//! [`create_partitions`], [`describe_configs`], [`alter_configs`],
//! [`incremental_alter_configs`], [`describe_cluster`], [`init_producer_id`], and [`groups`]
//! for the group APIs (FindCoordinator, the classic group protocol, offsets, ListGroups,
//! DescribeGroups) and [`consumer_group_heartbeat`] for KIP-848 groups; [`configs`] shows
//! Cairn's topic and node configs under Kafka's names, [`forward`] carries metadata changes
//! to the `__meta` leader, [`errors`] maps Cairn's typed errors to Kafka's error codes,
//! [`ids`] maps node ids and topics, and [`batch`] converts record batches between Kafka's
//! header and Cairn's (one field wider).

mod alter_configs;
mod api_versions;
mod batch;
mod configs;
mod consumer_group_heartbeat;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod errors;
mod fetch;
pub(crate) mod forward;
mod groups;
mod ids;
mod incremental_alter_configs;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;

use crate::broker::Broker;
use crate::server::budget::{self, ByteBudget, Reservation};
use crate::server::{unless_expired, ConnectionSlot, Connections, Phase};
use bytes::{Bytes, BytesMut};
use cairn_protocol::frame::{FrameCodec, FrameError};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use futures::{SinkExt, StreamExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A reply on its way to the writer, with the bytes it holds of the budgets until written;
/// `None`: no reply (a produce with acks 0) or the connection must close.
type ReplySlot = oneshot::Receiver<Option<(Bytes, Reservation)>>;

/// Most replies the writer sends before one flush.
const WRITE_BATCH_FRAMES_MAX: usize = 64;

/// Accepts Kafka connections until `phase` leaves `Running`.
pub async fn serve<S: LogStore>(
    listener: TcpListener,
    broker: Arc<Broker<S>>,
    connections: Connections,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|phase| *phase != Phase::Running) => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "kafka accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match connections.admit(peer.ip()) {
            Ok(slot) => {
                let broker = Arc::clone(&broker);
                let phase = phase.clone();
                tokio::spawn(async move {
                    tracing::debug!(%peer, "kafka connection opened");
                    run_connection(socket, broker, phase, slot).await;
                    tracing::debug!(%peer, "kafka connection closed");
                });
            }
            // Kafka has no message a broker sends unasked: a refused connection is closed.
            Err(refusal) => tracing::debug!(%peer, %refusal, "kafka connection refused"),
        }
    }
}

/// What a request's header says, enough to answer it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

/// Why a request gets no answer and its connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("API key {0} is not served here")]
    UnknownApi(i16),
    #[error("{api} version {version} is not served here (supported: {min} to {max})")]
    UnsupportedVersion {
        api: &'static str,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("{entries} topics and partitions in one request, more than limits.request_entries_max ({max})")]
    TooManyEntries { entries: usize, max: u32 },
    #[error("a produce with acks 0 failed ({0}); closing tells the producer")]
    UnacknowledgedProduceFailed(String),
}

/// Reads the fixed start of a request header: API key, version, correlation id.
fn peek_call(frame: &[u8]) -> Result<(i16, i16, i32), Refusal> {
    if frame.len() < 8 {
        return Err(Refusal::Malformed(format!(
            "a request header needs 8 bytes, the frame has {}",
            frame.len()
        )));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Ok((api_key, version, correlation_id))
}

/// A decoded request, or the ApiVersions fallback answer (KIP-511) for a version too new.
enum Decoded {
    /// Boxed: requests are large, and most of a connection's life is spent between them.
    /// The request, and the client id its header gives (JoinGroup keeps it, as Kafka does).
    Request(
        Call,
        Box<RequestKind>,
        Option<kafka_protocol::protocol::StrBytes>,
    ),
    ApiVersionsFallback(Call),
}

fn decode(frame: BytesMut, entries_max: u32) -> Result<Decoded, Refusal> {
    let (key, version, correlation_id) = peek_call(&frame)?;
    let api_key = ApiKey::try_from(key).map_err(|_| Refusal::UnknownApi(key))?;
    let Some((min, max)) = api_versions::supported(api_key) else {
        return Err(Refusal::UnknownApi(key));
    };
    let call = Call {
        api_key,
        version,
        correlation_id,
    };
    if version < min || version > max {
        if api_key == ApiKey::ApiVersions && version > max {
            // KIP-511: a client newer than the broker learns the supported versions from a
            // version 0 answer and retries with one of them.
            return Ok(Decoded::ApiVersionsFallback(call));
        }
        return Err(Refusal::UnsupportedVersion {
            api: api_versions::name(api_key),
            version,
            min,
            max,
        });
    }
    let mut bytes = frame.freeze();
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut bytes, header_version)
        .map_err(|error| Refusal::Malformed(format!("request header: {error}")))?;
    debug_assert_eq!(header.correlation_id, correlation_id);
    let request = RequestKind::decode(api_key, &mut bytes, version).map_err(|error| {
        Refusal::Malformed(format!(
            "{} v{version}: {error}",
            api_versions::name(api_key)
        ))
    })?;
    let entries = count_entries(&request);
    if entries > entries_max as usize {
        return Err(Refusal::TooManyEntries {
            entries,
            max: entries_max,
        });
    }
    Ok(Decoded::Request(call, Box::new(request), header.client_id))
}

/// Topics and partitions named by a request (the lists a handler walks).
fn count_entries(request: &RequestKind) -> usize {
    match request {
        RequestKind::Produce(request) => request
            .topic_data
            .iter()
            .map(|topic| 1 + topic.partition_data.len())
            .sum(),
        RequestKind::Fetch(request) => {
            request
                .topics
                .iter()
                .map(|topic| 1 + topic.partitions.len())
                .sum::<usize>()
                + request
                    .forgotten_topics_data
                    .iter()
                    .map(|topic| 1 + topic.partitions.len())
                    .sum::<usize>()
        }
        RequestKind::ListOffsets(request) => request
            .topics
            .iter()
            .map(|topic| 1 + topic.partitions.len())
            .sum(),
        RequestKind::Metadata(request) => request.topics.as_ref().map_or(0, Vec::len),
        RequestKind::CreateTopics(request) => request
            .topics
            .iter()
            .map(|topic| 1 + topic.assignments.len() + topic.configs.len())
            .sum(),
        RequestKind::DeleteTopics(request) => request.topics.len() + request.topic_names.len(),
        RequestKind::FindCoordinator(request) => request.coordinator_keys.len(),
        RequestKind::JoinGroup(request) => request.protocols.len(),
        RequestKind::SyncGroup(request) => request.assignments.len(),
        RequestKind::LeaveGroup(request) => request.members.len(),
        RequestKind::OffsetForLeaderEpoch(request) => request
            .topics
            .iter()
            .map(|topic| 1 + topic.partitions.len())
            .sum(),
        RequestKind::OffsetCommit(request) => request
            .topics
            .iter()
            .map(|topic| 1 + topic.partitions.len())
            .sum(),
        RequestKind::CreatePartitions(request) => request
            .topics
            .iter()
            .map(|topic| 1 + topic.assignments.as_ref().map_or(0, Vec::len))
            .sum(),
        RequestKind::DescribeConfigs(request) => request
            .resources
            .iter()
            .map(|resource| 1 + resource.configuration_keys.as_ref().map_or(0, Vec::len))
            .sum(),
        RequestKind::AlterConfigs(request) => request
            .resources
            .iter()
            .map(|resource| 1 + resource.configs.len())
            .sum(),
        RequestKind::IncrementalAlterConfigs(request) => request
            .resources
            .iter()
            .map(|resource| 1 + resource.configs.len())
            .sum(),
        RequestKind::OffsetFetch(request) => {
            let topics = |topics: Option<usize>| topics.unwrap_or(0);
            topics(request.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|topic| 1 + topic.partition_indexes.len())
                    .sum()
            })) + request
                .groups
                .iter()
                .map(|group| {
                    1 + topics(group.topics.as_ref().map(|topics| {
                        topics
                            .iter()
                            .map(|topic| 1 + topic.partition_indexes.len())
                            .sum()
                    }))
                })
                .sum::<usize>()
        }
        RequestKind::DescribeGroups(request) => request.groups.len(),
        RequestKind::DeleteGroups(request) => request.groups_names.len(),
        RequestKind::ConsumerGroupHeartbeat(request) => {
            request.subscribed_topic_names.as_ref().map_or(0, Vec::len)
                + request.topic_partitions.as_ref().map_or(0, |owned| {
                    owned.iter().map(|topic| 1 + topic.partitions.len()).sum()
                })
        }
        RequestKind::ListGroups(request) => {
            request.states_filter.len() + request.types_filter.len()
        }
        _ => 0,
    }
}

/// Encodes a response with its header for `call`, or `None` (logged) if it cannot be.
pub(crate) fn encode_response(call: Call, response: &ResponseKind) -> Option<Bytes> {
    let header_version = call.api_key.response_header_version(call.version);
    let header = ResponseHeader::default().with_correlation_id(call.correlation_id);
    let mut bytes = BytesMut::new();
    let encoded = header
        .encode(&mut bytes, header_version)
        .and_then(|()| response.encode(&mut bytes, call.version));
    match encoded {
        Ok(()) => Some(bytes.freeze()),
        Err(error) => {
            // A field set that the version lacks: a bug here, not the client's fault.
            tracing::error!(api = api_versions::name(call.api_key), version = call.version, %error, "kafka response does not encode");
            None
        }
    }
}

/// Why the reader stopped waiting for the next frame.
enum NextFrame {
    Frame(Option<Result<BytesMut, FrameError>>),
    Stop,
}

async fn run_connection<S: LogStore>(
    socket: TcpStream,
    broker: Arc<Broker<S>>,
    mut phase: watch::Receiver<Phase>,
    connection: ConnectionSlot,
) {
    let opened = Instant::now();
    let limits = broker.config.limits.clone();
    let frame_bytes_max = limits.frame_bytes_max as usize;
    let idle_timeout = Duration::from_millis(limits.connection_idle_timeout_ms);
    let reply_write_timeout = Duration::from_millis(limits.reply_write_timeout_ms);
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let Ok(remote) = socket.peer_addr() else {
        return;
    };
    let (read_half, write_half) = socket.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new(frame_bytes_max));
    let in_flight_max = limits.requests_in_flight_max as usize;
    // Reply slots in request order: at most one per request in flight, plus the one the
    // reader may be queueing when the writer stops.
    let (slots, queued) = mpsc::channel::<ReplySlot>(in_flight_max + 1);
    let outbound = ByteBudget::new(limits.connection_outbound_bytes_max);
    let mut writer = tokio::spawn(write_replies(
        FramedWrite::new(write_half, FrameCodec::new(frame_bytes_max)),
        queued,
        reply_write_timeout,
    ));
    let fetch_budgets = connection.fetch_budgets(outbound.clone());
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let mut first_frame = true;
    let mut read_deadline = opened + Duration::from_millis(limits.first_request_timeout_ms);
    // Offset commits are applied in the order they were read, as a Kafka broker does: the
    // next one waits until this one is done (librdkafka pipelines async commits, and the
    // last one must win). Other requests still run concurrently.
    let mut commit_done: Option<oneshot::Receiver<()>> = None;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&in_flight).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = phase.wait_for(|phase| *phase != Phase::Running) => break,
        };
        tokio::select! {
            _ = outbound.until_not_exhausted() => {}
            _ = phase.wait_for(|phase| *phase != Phase::Running) => break,
            _ = slots.closed() => break,
        }
        let next = loop {
            tokio::select! {
                frame = reader.next() => break NextFrame::Frame(frame),
                _ = phase.wait_for(|phase| *phase != Phase::Running) => break NextFrame::Stop,
                _ = slots.closed() => break NextFrame::Stop,
                _ = tokio::time::sleep_until(read_deadline) => {
                    let idle = in_flight.available_permits() + 1 >= in_flight_max;
                    if first_frame || idle {
                        tracing::debug!(%remote, first_frame, "closing a silent kafka connection");
                        break NextFrame::Stop;
                    }
                    read_deadline = Instant::now() + idle_timeout;
                }
            }
        };
        let frame = match next {
            NextFrame::Frame(Some(Ok(frame))) => frame,
            NextFrame::Frame(Some(Err(error))) => {
                tracing::debug!(%remote, %error, "kafka connection read failed");
                break;
            }
            NextFrame::Frame(None) | NextFrame::Stop => break,
        };
        first_frame = false;
        read_deadline = Instant::now() + idle_timeout;
        let (call, request, client_id) = match decode(frame, limits.request_entries_max) {
            Ok(Decoded::Request(call, request, client_id)) => (call, request, client_id),
            Ok(Decoded::ApiVersionsFallback(call)) => {
                let (sender, slot) = oneshot::channel();
                let reply = api_versions::fallback(call);
                let reply = encode_response(call.with_version(0), &reply);
                let _ = sender.send(reply.map(|bytes| (bytes, Reservation::default())));
                if slots.send(slot).await.is_err() {
                    break;
                }
                continue;
            }
            Err(refusal) => {
                tracing::debug!(%remote, %refusal, "kafka request refused; closing");
                break;
            }
        };
        let (sender, slot) = oneshot::channel();
        let broker = Arc::clone(&broker);
        let phase_watch = phase.clone();
        let outbound = outbound.clone();
        match *request {
            RequestKind::Produce(request) => {
                // Into the mailboxes now, in read order; the answer is awaited concurrently.
                let started = std::time::Instant::now();
                let enqueued = produce::enqueue(&broker, request).await;
                let batch_bytes = enqueued.batch_bytes;
                if enqueued.acks_none() {
                    drop(permit);
                    match enqueued.failure() {
                        // In their mailboxes: nobody waits for the answers.
                        None => continue,
                        Some(reason) => {
                            let refusal = Refusal::UnacknowledgedProduceFailed(reason);
                            tracing::debug!(%remote, %refusal, "closing");
                            break;
                        }
                    }
                }
                tokio::spawn(async move {
                    let response = unless_expired(phase_watch, async {
                        Ok(enqueued.complete(&broker, call.version).await)
                    })
                    .await;
                    broker.metrics().produced(batch_bytes, started);
                    let reply =
                        reply_bytes(call, response, Reservation::default(), &outbound).await;
                    let _ = sender.send(reply);
                    drop(permit);
                });
            }
            RequestKind::Fetch(request) => {
                let started = std::time::Instant::now();
                let budgets = fetch_budgets.clone();
                tokio::spawn(async move {
                    let work = fetch::handle(&broker, call, request, &budgets);
                    let (response, reservation) =
                        match unless_expired(phase_watch, async { Ok(work.await) }).await {
                            Ok((response, reservation)) => (Ok(response), reservation),
                            Err(error) => (Err(error), Reservation::default()),
                        };
                    broker.metrics().fetched(started);
                    let reply = reply_bytes(call, response, reservation, &outbound).await;
                    let _ = sender.send(reply);
                    drop(permit);
                });
            }
            request => {
                let (commit_after, done) = if matches!(request, RequestKind::OffsetCommit(_)) {
                    let (done, next) = oneshot::channel::<()>();
                    (commit_done.replace(next), Some(done))
                } else {
                    (None, None)
                };
                tokio::spawn(async move {
                    let response = unless_expired(phase_watch, async {
                        if let Some(previous) = commit_after {
                            // Done or dropped (expired, or its task ended): either way over.
                            let _ = previous.await;
                        }
                        let client = Client {
                            id: client_id.as_deref().unwrap_or_default(),
                            address: remote,
                        };
                        Ok(dispatch(&broker, call, request, &client).await)
                    })
                    .await;
                    drop(done);
                    let reply =
                        reply_bytes(call, response, Reservation::default(), &outbound).await;
                    let _ = sender.send(reply);
                    drop(permit);
                });
            }
        }
        if slots.send(slot).await.is_err() {
            break;
        }
    }
    // Replies already started are still written, in order; then the writer ends.
    drop(slots);
    let _ = tokio::time::timeout(reply_write_timeout, &mut writer).await;
    writer.abort();
}

impl Call {
    fn with_version(self, version: i16) -> Call {
        Call { version, ..self }
    }
}

/// Encodes a reply and settles its bytes against the connection's budget; `None` when the
/// node is shutting down past its grace period or the reply cannot be sent (the connection
/// closes: a Kafka client retries on a new one).
async fn reply_bytes(
    call: Call,
    response: Result<ResponseKind, ApiError>,
    reservation: Reservation,
    outbound: &ByteBudget,
) -> Option<(Bytes, Reservation)> {
    let response = response.ok()?;
    let bytes = encode_response(call, &response)?;
    let reservation = budget::settle(reservation, outbound, bytes.len()).await;
    Some((bytes, reservation))
}

/// Who sent a request: what JoinGroup records of a member (DescribeGroups shows it) and
/// what its new member ids start with.
pub(crate) struct Client<'a> {
    /// The header's client id (`client.id`), empty when none was given.
    pub id: &'a str,
    pub address: std::net::SocketAddr,
}

async fn dispatch<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: RequestKind,
    client: &Client<'_>,
) -> ResponseKind {
    match request {
        RequestKind::ApiVersions(request) => api_versions::handle(call, request),
        RequestKind::Metadata(request) => metadata::handle(broker, call, request).await,
        RequestKind::ListOffsets(request) => list_offsets::handle(broker, call, request).await,
        RequestKind::CreateTopics(request) => create_topics::handle(broker, call, request).await,
        RequestKind::DeleteTopics(request) => delete_topics::handle(broker, call, request).await,
        RequestKind::InitProducerId(request) => {
            init_producer_id::handle(broker, call, request).await
        }
        RequestKind::OffsetForLeaderEpoch(request) => {
            offset_for_leader_epoch::handle(broker, call, request).await
        }
        RequestKind::CreatePartitions(request) => {
            create_partitions::handle(broker, call, request).await
        }
        RequestKind::DescribeConfigs(request) => {
            describe_configs::handle(broker, call, request).await
        }
        RequestKind::AlterConfigs(request) => alter_configs::handle(broker, call, request).await,
        RequestKind::IncrementalAlterConfigs(request) => {
            incremental_alter_configs::handle(broker, call, request).await
        }
        RequestKind::DescribeCluster(request) => describe_cluster::handle(broker, call, request),
        RequestKind::FindCoordinator(request) => {
            groups::find_coordinator(broker, call, request).await
        }
        RequestKind::JoinGroup(request) => groups::join_group(broker, call, request, client).await,
        RequestKind::SyncGroup(request) => groups::sync_group(broker, call, request).await,
        RequestKind::Heartbeat(request) => groups::heartbeat(broker, call, request).await,
        RequestKind::LeaveGroup(request) => groups::leave_group(broker, call, request).await,
        RequestKind::OffsetCommit(request) => groups::offset_commit(broker, call, request).await,
        RequestKind::OffsetFetch(request) => groups::offset_fetch(broker, call, request).await,
        RequestKind::ListGroups(request) => groups::list_groups(broker, call, request).await,
        RequestKind::DescribeGroups(request) => {
            groups::describe_groups(broker, call, request).await
        }
        RequestKind::DeleteGroups(request) => groups::delete_groups(broker, request).await,
        RequestKind::ConsumerGroupHeartbeat(request) => {
            consumer_group_heartbeat::handle(broker, call, request).await
        }
        other => unreachable!(
            "decode admits only advertised APIs, and produce and fetch are answered in \
             run_connection (got {:?})",
            api_key_of(&other)
        ),
    }
}

fn api_key_of(request: &RequestKind) -> &'static str {
    match request {
        RequestKind::Produce(_) => "Produce",
        RequestKind::Fetch(_) => "Fetch",
        _ => "another API",
    }
}

/// Writes reply slots in order until the reader is gone and every slot is written. A slot
/// that resolves to no reply ends the connection: a later reply must not take its place.
async fn write_replies(
    mut writer: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    mut slots: mpsc::Receiver<ReplySlot>,
    stalled_max: Duration,
) {
    let mut written = Vec::with_capacity(WRITE_BATCH_FRAMES_MAX);
    while let Some(slot) = slots.recv().await {
        let Ok(Some((bytes, reservation))) = slot.await else {
            return;
        };
        if !within(stalled_max, writer.feed(bytes)).await {
            return;
        }
        written.push(reservation);
        // More replies already done go out with the same flush.
        while written.len() < WRITE_BATCH_FRAMES_MAX {
            let Ok(mut slot) = slots.try_recv() else {
                break;
            };
            match slot.try_recv() {
                Ok(Some((bytes, reservation))) => {
                    if !within(stalled_max, writer.feed(bytes)).await {
                        return;
                    }
                    written.push(reservation);
                }
                Ok(None) | Err(oneshot::error::TryRecvError::Closed) => return,
                Err(oneshot::error::TryRecvError::Empty) => {
                    // Not done yet: flush what is written, then wait for it in order.
                    if !within(stalled_max, writer.flush()).await {
                        return;
                    }
                    written.clear();
                    let Ok(Some((bytes, reservation))) = slot.await else {
                        return;
                    };
                    if !within(stalled_max, writer.feed(bytes)).await {
                        return;
                    }
                    written.push(reservation);
                }
            }
        }
        if !within(stalled_max, writer.flush()).await {
            return;
        }
        written.clear();
    }
}

/// Whether a write (`feed` or `flush`) to the client finished within `stalled_max`: a client
/// that reads nothing for that long, or a broken socket, ends the connection.
async fn within<E>(
    stalled_max: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    matches!(tokio::time::timeout(stalled_max, write).await, Ok(Ok(())))
}
