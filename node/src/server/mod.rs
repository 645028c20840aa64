//! The network server: accept loop, connections, and one module per request kind.
//!
//! [`serve`] runs the accept loop until the shutdown signal; tests bind port 0. Each connection
//! cuts its byte stream into frames ([`FrameCodec`], `frame_bytes_max`), decodes requests,
//! and runs up to `requests_in_flight_max` of them concurrently; at the limit it stops reading
//! the socket, so TCP pushes back on the client. One writer task per connection writes the
//! replies as they complete (many frames, one flush).
//!
//! Produce requests are put in their partition's mailbox by the reader itself, in the order
//! they were read, before the reader reads on: pipelined batches of one partition are appended
//! in the order they were sent.
//!
//! What one client can make the node hold is bounded (DESIGN 10): a connection's unsent
//! replies by `connection_outbound_bytes_max` (past it the reader stops), fetch replies of the
//! whole node by `fetch_reply_bytes_max` (fetches shrink, then wait; see [`budget`]) and of
//! one source address by `fetch_reply_bytes_per_address_max`, the
//! entries of one request by `request_entries_max` (counted before decoding), the connections
//! of one source address by `connections_per_address_max`, a connection's silence by
//! `first_request_timeout_ms` and `connection_idle_timeout_ms`, and a client that reads no
//! reply by `reply_write_timeout_ms` (closing it gives back the budget its replies hold).

mod alter_topic;
pub(crate) mod budget;
mod cluster_status;
mod create_topic;
mod delete_topic;
mod describe_topic;
pub(crate) mod fetch;
pub(crate) mod group_requests;
mod handshake;
mod init_producer_id;
mod list_offsets;
mod list_topics;
mod metadata;
pub mod produce;

use crate::broker::Broker;
use crate::frame_writer::FrameWriter;
use crate::metrics::NodeMetrics;
use budget::{ByteBudget, FetchBudgets, Reservation};
use bytes::Bytes;
use cairn_protocol::frame::{
    decode_request_within, encode_response, FrameCodec, FrameError, RequestDecodeError,
    UNKNOWN_CORRELATION_ID,
};
use cairn_protocol::peer::{decode_peer_hello, PeerHello};
use cairn_protocol::{ApiError, Request, ResponseFrame};
use cairn_storage::LogStore;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A reply on its way to the writer, with the bytes it holds of the connection's (and for a
/// fetch, the node's) budget until it is written.
type OutgoingReply = (Bytes, Reservation);

/// Where the node is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting and reading; let in-flight requests finish.
    Draining,
    /// The grace period is over: in-flight requests are answered `ShuttingDown`.
    Expired,
}

/// How long the refusal of a connection over `connections_max` may take to write.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most replies the writer sends before one flush.
const WRITE_BATCH_FRAMES_MAX: usize = 64;

/// Counts open connections, in all and per source address; shutdown waits for them to close.
#[derive(Clone)]
pub struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
    /// Open connections per source address, with the address's share of the fetch budget;
    /// an address leaves the map with its last connection, so it holds at most `max` entries.
    per_address: Arc<Mutex<HashMap<IpAddr, AddressState>>>,
    per_address_max: u32,
    /// Fetch reply bytes the node may hold, shared by every connection.
    fetch_replies: ByteBudget,
    /// Of those, what the connections of one address may hold together.
    fetch_replies_per_address: u32,
}

/// What the connections of one source address share.
struct AddressState {
    open: u32,
    fetch_replies: ByteBudget,
}

/// One connection's place in [`Connections`], given back when dropped.
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    address: IpAddr,
    per_address: Arc<Mutex<HashMap<IpAddr, AddressState>>>,
    /// The fetch budgets its replies draw on: its address's share and the node's.
    fetch_replies: (ByteBudget, ByteBudget),
}

impl ConnectionSlot {
    /// The fetch budgets of the connection holding this slot, whose own outbound budget is
    /// `connection`: its address's share and the node's, shared by both listeners.
    pub(crate) fn fetch_budgets(&self, connection: ByteBudget) -> FetchBudgets {
        FetchBudgets {
            connection,
            address: self.fetch_replies.0.clone(),
            node: self.fetch_replies.1.clone(),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_address = self.per_address.lock().expect("connection count lock");
        if let Some(state) = per_address.get_mut(&self.address) {
            state.open -= 1;
            if state.open == 0 {
                per_address.remove(&self.address);
            }
        }
    }
}

impl Connections {
    pub fn new(limits: &crate::config::Limits) -> Connections {
        Connections {
            permits: Arc::new(Semaphore::new(limits.connections_max as usize)),
            max: limits.connections_max,
            per_address: Arc::new(Mutex::new(HashMap::new())),
            per_address_max: limits.connections_per_address_max,
            fetch_replies: ByteBudget::new(limits.fetch_reply_bytes_max),
            fetch_replies_per_address: limits.fetch_reply_bytes_per_address_max,
        }
    }

    /// Connections open now (clients and peers).
    pub fn open(&self) -> usize {
        (self.max as usize).saturating_sub(self.permits.available_permits())
    }

    /// Resolves once every connection has closed.
    pub async fn all_closed(&self) {
        let _ = self.permits.acquire_many(self.max).await;
    }

    /// A slot for a connection from `address`, or the refusal to send it.
    pub(crate) fn admit(&self, address: IpAddr) -> Result<ConnectionSlot, ApiError> {
        let mut per_address = self.per_address.lock().expect("connection count lock");
        let open = per_address.get(&address).map_or(0, |state| state.open);
        if open >= self.per_address_max && self.per_address_max < self.max {
            return Err(ApiError::TooManyConnectionsFromAddress {
                max: self.per_address_max,
            });
        }
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyConnections { max: self.max })?;
        let state = per_address.entry(address).or_insert_with(|| AddressState {
            open: 0,
            fetch_replies: ByteBudget::new(self.fetch_replies_per_address),
        });
        state.open += 1;
        Ok(ConnectionSlot {
            _permit: permit,
            address,
            per_address: Arc::clone(&self.per_address),
            fetch_replies: (state.fetch_replies.clone(), self.fetch_replies.clone()),
        })
    }
}

/// Accepts connections until `phase` leaves `Running`.
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
                // Running out of file descriptors is transient; pause instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match connections.admit(peer.ip()) {
            Ok(slot) => {
                broker.metrics().connections_accepted.inc();
                let broker = Arc::clone(&broker);
                let phase = phase.clone();
                tokio::spawn(async move {
                    tracing::debug!(%peer, "connection opened");
                    run_connection(socket, broker, phase, slot).await;
                    tracing::debug!(%peer, "connection closed");
                });
            }
            Err(refusal) => {
                tracing::debug!(%peer, %refusal, "connection refused");
                broker.metrics().connections_refused.inc();
                broker.metrics().rejected(&refusal);
                let frame_bytes_max = broker.config.limits.frame_bytes_max as usize;
                tokio::spawn(refuse_connection(socket, refusal, frame_bytes_max));
            }
        }
    }
}

/// One `TooManyConnections` (or `TooManyConnectionsFromAddress`) frame, then close.
async fn refuse_connection(socket: TcpStream, refusal: ApiError, frame_bytes_max: usize) {
    let mut writer = FramedWrite::new(socket, FrameCodec::new(frame_bytes_max));
    let reply = encode_response(&ResponseFrame {
        correlation_id: UNKNOWN_CORRELATION_ID,
        result: Err(refusal),
    });
    // A client that does not read must not keep this task alive.
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, writer.send(reply)).await;
}

/// Why the reader stopped waiting for the next frame.
enum NextFrame {
    Frame(Option<Result<bytes::BytesMut, FrameError>>),
    /// The node is draining, the writer is gone, or the client stayed silent too long.
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
    // Both ends decide whether an unauthenticated peer hello may be admitted (loopback only).
    let (Ok(local), Ok(remote)) = (socket.local_addr(), socket.peer_addr()) else {
        return;
    };
    let (read_half, write_half) = socket.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new(frame_bytes_max));
    let in_flight_max = limits.requests_in_flight_max as usize;
    let (replies, outgoing) = mpsc::channel::<OutgoingReply>(in_flight_max + 1);
    let writer = tokio::spawn(write_replies(
        FrameWriter::new(write_half, frame_bytes_max),
        outgoing,
        reply_write_timeout,
    ));
    let outbound = ByteBudget::new(limits.connection_outbound_bytes_max);
    let replies = Replies {
        sender: replies,
        frame_bytes_max,
        outbound: outbound.clone(),
        metrics: Arc::clone(broker.metrics()),
    };
    let fetch_budgets = connection.fetch_budgets(outbound.clone());
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let mut first_frame = true;
    let mut read_deadline = opened + Duration::from_millis(limits.first_request_timeout_ms);
    loop {
        // At the in-flight limit, or while the client leaves more than its budget of replies
        // unread, stop reading: the client's writes back up in TCP.
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
            _ = replies.sender.closed() => break,
        }
        let next = loop {
            tokio::select! {
                frame = reader.next() => break NextFrame::Frame(frame),
                _ = phase.wait_for(|phase| *phase != Phase::Running) => break NextFrame::Stop,
                _ = replies.sender.closed() => break NextFrame::Stop,
                _ = tokio::time::sleep_until(read_deadline) => {
                    // Requests still in flight (a long poll, a produce waiting for its
                    // quorum) keep a quiet connection open; their replies are its activity.
                    let idle = in_flight.available_permits() + 1 >= in_flight_max;
                    if first_frame || idle {
                        tracing::debug!(%remote, first_frame, "closing a silent connection");
                        break NextFrame::Stop;
                    }
                    read_deadline = Instant::now() + idle_timeout;
                }
            }
        };
        let frame = match next {
            NextFrame::Frame(frame) => frame,
            NextFrame::Stop => break,
        };
        read_deadline = Instant::now() + idle_timeout;
        let bytes = match frame {
            None => break,
            Some(Ok(bytes)) => bytes,
            Some(Err(FrameError::TooLarge { size, max })) => {
                let error = ApiError::FrameTooLarge {
                    size: size as u64,
                    max: max as u64,
                };
                replies
                    .send(UNKNOWN_CORRELATION_ID, Err(error), Reservation::default())
                    .await;
                break;
            }
            Some(Err(FrameError::Io(error))) => {
                tracing::debug!(%error, "connection read failed");
                break;
            }
        };
        let is_first_frame = std::mem::replace(&mut first_frame, false);
        let request = match decode_request_within(&bytes, u64::from(limits.request_entries_max)) {
            Ok(request) => request,
            Err(RequestDecodeError::Malformed { .. })
                if is_first_frame && decode_peer_hello(&bytes).is_some() =>
            {
                // Another node's replication connection (see `crate::peer`), once it proves
                // it is one (`crate::peer_auth`). The writer is idle (nothing was read
                // before), so taking it back loses no reply.
                let hello = decode_peer_hello(&bytes).expect("decoded just above");
                drop(replies);
                let Ok(Some(writer)) = writer.await else {
                    return;
                };
                let addresses = (local, remote);
                serve_peer(reader, writer, &broker, &hello, addresses, phase).await;
                return;
            }
            Err(RequestDecodeError::Malformed { reason }) => {
                let error = ApiError::MalformedFrame { reason };
                replies
                    .send(UNKNOWN_CORRELATION_ID, Err(error), Reservation::default())
                    .await;
                break;
            }
            Err(RequestDecodeError::Refused {
                correlation_id,
                error,
                ..
            }) => {
                let reservation = Reservation::default();
                replies.send(correlation_id, Err(error), reservation).await;
                continue;
            }
        };
        drop(bytes);
        let correlation_id = request.correlation_id;
        let replies = replies.clone();
        let broker = Arc::clone(&broker);
        let phase = phase.clone();
        match request.request {
            Request::Produce(produce) => {
                let started = std::time::Instant::now();
                let batch_bytes = produce.batch.len() as u64;
                // Into the mailbox now, in read order; the answer is awaited concurrently.
                let enqueued = produce::enqueue(&broker, produce).await;
                tokio::spawn(async move {
                    let work = async move {
                        match enqueued {
                            Ok(enqueued) => produce::complete(enqueued).await,
                            Err(error) => Err(error),
                        }
                    };
                    let result = unless_expired(phase, work).await;
                    broker.metrics().produced(batch_bytes, started);
                    let reservation = Reservation::default();
                    replies.send(correlation_id, result, reservation).await;
                    drop(permit);
                });
            }
            Request::Fetch(fetch) => {
                let started = std::time::Instant::now();
                let budgets = fetch_budgets.clone();
                tokio::spawn(async move {
                    let work = fetch::handle(&broker, fetch, &budgets);
                    let answered = tokio::select! {
                        answered = unless_expired(phase, work) => answered,
                        // The connection broke (or was cut for not reading): a fetch waiting
                        // for budget gives up its place instead of reading for nobody.
                        _ = replies.sender.closed() => return,
                    };
                    broker.metrics().fetched(started);
                    let (result, reservation) = match answered {
                        Ok((response, reservation)) => {
                            count_fetched(&response, broker.metrics());
                            (Ok(response), reservation)
                        }
                        Err(error) => (Err(error), Reservation::default()),
                    };
                    replies.send(correlation_id, result, reservation).await;
                    drop(permit);
                });
            }
            other => {
                tokio::spawn(async move {
                    // A reply that lists the cluster's state may be as large as a frame:
                    // its bytes are reserved before it is built, so a pipeline of them
                    // waits here holding only its requests.
                    let reservation = if lists_cluster_state(&other) {
                        tokio::select! {
                            reservation = replies.outbound.reserve(frame_bytes_max) => reservation,
                            _ = replies.sender.closed() => return,
                        }
                    } else {
                        Reservation::default()
                    };
                    let result = unless_expired(phase, dispatch(&broker, other)).await;
                    replies.send(correlation_id, result, reservation).await;
                    drop(permit);
                });
            }
        }
    }
    // The reader is done; the writer ends once every in-flight request has replied.
    drop(reader);
    drop(replies);
    let _ = writer.await;
}

/// Refused peer handshakes of this process, logged at a bounded rate.
static PEER_REFUSALS: std::sync::LazyLock<crate::peer_auth::RefusalLog> =
    std::sync::LazyLock::new(crate::peer_auth::RefusalLog::default);

/// Refused peer handshakes not logged at WARN since the start (for the metrics).
pub fn peer_refusals_suppressed() -> u64 {
    PEER_REFUSALS.suppressed_total()
}

/// Counts a fetch reply into `metrics`: its bytes of record batches, and each partition it
/// refused, by error (a fetch answers per partition; the request itself succeeded).
fn count_fetched(response: &cairn_protocol::Response, metrics: &NodeMetrics) {
    let cairn_protocol::Response::Fetch(fetch) = response else {
        return;
    };
    let mut bytes = 0u64;
    for partition in &fetch.partitions {
        match &partition.result {
            Ok(records) => bytes += records.batches.len() as u64,
            Err(error) => metrics.rejected(error),
        }
    }
    metrics.fetch_bytes.inc_by(bytes);
}

/// Runs the handshake (bounded by `HANDSHAKE_TIMEOUT`), then reads the peer connection until
/// it ends or the node stops running. Nothing is read as a peer frame before the other side
/// proved it holds the cluster secret; a failed handshake just closes the connection.
async fn serve_peer<S: LogStore>(
    mut reader: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    mut writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    broker: &Arc<Broker<S>>,
    hello: &PeerHello,
    (local, remote): (std::net::SocketAddr, std::net::SocketAddr),
    mut phase: watch::Receiver<Phase>,
) {
    let handshake = crate::peer_auth::accept(
        &mut reader,
        &mut writer,
        hello,
        broker.config.node_id,
        broker.config.cluster_secret.as_ref(),
        local,
        remote,
    );
    let accepted = match tokio::time::timeout(crate::peer_auth::HANDSHAKE_TIMEOUT, handshake).await
    {
        Ok(accepted) => accepted,
        Err(_) => Err(crate::peer_auth::HandshakeError::Timeout),
    };
    let from = match accepted {
        Ok(from) => from,
        Err(error) => {
            broker.metrics().peer_handshakes_refused.inc();
            PEER_REFUSALS.refused(remote, &error);
            return;
        }
    };
    tracing::debug!(%from, "peer connection opened");
    let stop = async move {
        let _ = phase.wait_for(|phase| *phase != Phase::Running).await;
    };
    if let Err(reason) = crate::peer::serve_inbound(reader, from, &**broker, stop).await {
        tracing::warn!(%from, %reason, "peer connection closed");
    }
}

/// Whether the reply to `request` grows with the cluster (its topics, partitions, groups or
/// members) rather than with the request.
fn lists_cluster_state(request: &Request) -> bool {
    match request {
        Request::Metadata(_)
        | Request::ListTopics(_)
        | Request::DescribeTopic(_)
        | Request::ClusterStatus(_)
        | Request::ListGroups(_)
        | Request::DescribeGroup(_)
        | Request::OffsetFetch(_)
        | Request::ResetGroupOffsets(_) => true,
        Request::Handshake(_)
        | Request::CreateTopic(_)
        | Request::AlterTopic(_)
        | Request::DeleteTopic(_)
        | Request::Produce(_)
        | Request::Fetch(_)
        | Request::ListOffsets(_)
        | Request::InitProducerId(_)
        | Request::ConsumerGroupHeartbeat(_)
        | Request::OffsetCommit(_)
        | Request::DeleteGroup(_)
        | Request::FindCoordinator(_) => false,
    }
}

/// Runs `work`, unless the shutdown grace period ends first.
pub(crate) async fn unless_expired<T, F>(
    mut phase: watch::Receiver<Phase>,
    work: F,
) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    tokio::select! {
        result = work => result,
        _ = phase.wait_for(|phase| *phase == Phase::Expired) => Err(ApiError::ShuttingDown),
    }
}

async fn dispatch<S: LogStore>(
    broker: &Broker<S>,
    request: Request,
) -> Result<cairn_protocol::Response, ApiError> {
    match request {
        Request::Handshake(request) => handshake::handle(broker, request),
        Request::Metadata(request) => metadata::handle(broker, request),
        Request::CreateTopic(request) => create_topic::handle(broker, request).await,
        Request::DeleteTopic(request) => delete_topic::handle(broker, request).await,
        Request::AlterTopic(request) => alter_topic::handle(broker, request).await,
        Request::ListTopics(request) => list_topics::handle(broker, request),
        Request::DescribeTopic(request) => describe_topic::handle(broker, request),
        Request::Fetch(_) => {
            unreachable!("fetches are answered with their budgets in run_connection")
        }
        Request::ListOffsets(request) => list_offsets::handle(broker, request).await,
        Request::ClusterStatus(request) => cluster_status::handle(broker, request),
        Request::InitProducerId(request) => init_producer_id::handle(broker, request).await,
        request @ (Request::ConsumerGroupHeartbeat(_)
        | Request::OffsetCommit(_)
        | Request::OffsetFetch(_)
        | Request::ListGroups(_)
        | Request::DescribeGroup(_)
        | Request::DeleteGroup(_)
        | Request::ResetGroupOffsets(_)
        | Request::FindCoordinator(_)) => group_requests::handle(broker, request).await,
        Request::Produce(request) => match produce::enqueue(broker, request).await {
            Ok(enqueued) => produce::complete(enqueued).await,
            Err(error) => Err(error),
        },
    }
}

/// Where a connection's replies go: its writer's queue, the frame limit and the connection's
/// outbound byte budget, which every reply settles before it is queued.
#[derive(Clone)]
struct Replies {
    sender: mpsc::Sender<OutgoingReply>,
    frame_bytes_max: usize,
    outbound: ByteBudget,
    /// The node's event metrics, where refused requests are counted.
    metrics: Arc<NodeMetrics>,
}

impl Replies {
    /// Encodes a reply and queues it for the writer, holding its bytes of the connection's
    /// budget (`reservation`, made before the reply was built, is settled to its real size;
    /// otherwise the bytes are reserved now, waiting while the client leaves replies unread).
    async fn send(
        &self,
        correlation_id: u64,
        result: Result<cairn_protocol::Response, ApiError>,
        reservation: Reservation,
    ) {
        if let Err(error) = &result {
            self.metrics.rejected(error);
        }
        let mut bytes = encode_response(&ResponseFrame {
            correlation_id,
            result,
        });
        if bytes.len() > self.frame_bytes_max {
            // Fetch budgets keep replies below the frame size; this is the safety net.
            tracing::error!(
                correlation_id,
                size = bytes.len(),
                "reply exceeds the frame maximum"
            );
            bytes = encode_response(&ResponseFrame {
                correlation_id,
                result: Err(ApiError::Internal {
                    reason: format!(
                        "reply of {} bytes exceeds the frame maximum of {}",
                        bytes.len(),
                        self.frame_bytes_max
                    ),
                }),
            });
        }
        let reservation = tokio::select! {
            reservation = budget::settle(reservation, &self.outbound, bytes.len()) => reservation,
            // The writer is gone: nothing will free the budget, and the reply has nowhere to go.
            _ = self.sender.closed() => return,
        };
        // The writer is gone only when the connection broke; the reply has nowhere to go.
        let _ = self.sender.send((bytes, reservation)).await;
    }
}

/// Writes replies until every sender is gone; hands the writer back (a peer connection's
/// handshake needs it), or `None` once the connection broke, or its client read nothing for
/// `stalled_max` while replies waited. A reply's reservation is given back once the reply
/// is in the socket.
async fn write_replies(
    mut writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut outgoing: mpsc::Receiver<OutgoingReply>,
    stalled_max: Duration,
) -> Option<FrameWriter<tokio::net::tcp::OwnedWriteHalf>> {
    let mut written = Vec::with_capacity(WRITE_BATCH_FRAMES_MAX);
    while let Some((first, reservation)) = outgoing.recv().await {
        tokio::time::timeout(stalled_max, writer.feed(first))
            .await
            .ok()?
            .ok()?;
        written.push(reservation);
        while written.len() < WRITE_BATCH_FRAMES_MAX {
            match outgoing.try_recv() {
                Ok((more, reservation)) => {
                    tokio::time::timeout(stalled_max, writer.feed(more))
                        .await
                        .ok()?
                        .ok()?;
                    written.push(reservation);
                }
                Err(_) => break,
            }
        }
        tokio::time::timeout(stalled_max, writer.flush())
            .await
            .ok()?
            .ok()?;
        written.clear();
    }
    Some(writer)
}
