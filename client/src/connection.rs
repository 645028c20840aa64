//! One TCP connection to one node, shared by every request to that node.
//!
//! A connection starts with a [`Request::Handshake`] (so the client learns the node's
//! [`ServerLimits`]), then pipelines requests: callers encode their frame and hand it to one
//! writer task, which writes as many queued frames as are ready and flushes once; one reader
//! task matches replies to callers by correlation id. A semaphore bounds the requests waiting
//! for replies: when it is exhausted the next caller waits (backpressure), it never queues
//! without bound. A reply that does not come within the request timeout, or a broken socket,
//! closes the connection and fails every pending request with a retriable error; the owner
//! (the internal `cluster` module) opens a new connection on next use.
//!
//! A reply goes either to a [`PendingReply`] the caller awaits, or to a callback the reader
//! task runs ([`Connection::submit_with_callback`], the producer's way: no task and no timer
//! per request). Callbacks' deadlines are kept by one watchdog task per connection.

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use bytes::Bytes;
use cairn_protocol::frame::{
    decode_response, encode_request, FrameCodec, RequestFrame, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN, UNKNOWN_CORRELATION_ID,
};
use cairn_protocol::messages::{HandshakeRequest, ServerLimits};
use cairn_protocol::{NodeId, Request, Response};
use futures::{SinkExt, StreamExt};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

/// Frames the writer task writes before it flushes, so one slow flush does not starve replies.
const WRITE_FRAMES_PER_FLUSH_MAX: usize = 256;

type ReplySender = oneshot::Sender<Result<Response>>;

/// Takes a request's outcome: its reply, or the error that ended it.
pub type ReplyCallback = Box<dyn FnOnce(Result<Response>) + Send>;

/// Where one request's reply goes.
enum Waiter {
    /// A [`PendingReply`], which keeps its own deadline and in-flight slot.
    Channel(ReplySender),
    /// Run by whoever ends the request: the reader with the reply, the watchdog at the
    /// deadline, or [`Shared::close`]. The slot is given back after it ran.
    Callback {
        call: ReplyCallback,
        deadline: Instant,
        timeout: Duration,
        _permit: InFlightPermit,
    },
}

impl Waiter {
    /// Hands over the outcome.
    fn finish(self, outcome: Result<Response>) {
        match self {
            Waiter::Channel(reply) => {
                let _ = reply.send(outcome);
            }
            Waiter::Callback { call, .. } => call(outcome),
        }
    }
}

/// A handle to one connection; clones share it. When the last handle is dropped the
/// connection's tasks stop and the socket closes.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.shared.address)
            .field("node_id", &self.shared.node_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

struct Shared {
    address: String,
    node_id: NodeId,
    limits: ServerLimits,
    outgoing: mpsc::Sender<Bytes>,
    state: Mutex<State>,
    next_correlation_id: AtomicU64,
    in_flight: Semaphore,
    request_timeout: Duration,
    /// Wakes the watchdog when a callback's deadline comes before the one it sleeps towards.
    deadline_added: Notify,
}

struct State {
    /// Why the connection closed; once set, nothing new is accepted.
    closed: Option<String>,
    waiting: HashMap<u64, Waiter>,
    /// The deadlines of the callbacks in `waiting`, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// When the watchdog wakes next (`None`: only when woken). A request whose deadline is
    /// later needs no wake-up: the watchdog looks again then. With one timeout per producer
    /// that is almost every request, so a busy connection wakes its watchdog about once per
    /// timeout, not once per request.
    watchdog_wakes_at: Option<Instant>,
    tasks: Vec<AbortHandle>,
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close("connection handle dropped");
    }
}

impl Shared {
    /// Marks the connection closed, stops its tasks and fails everything still pending.
    fn close(&self, reason: &str) {
        let (waiting, tasks) = {
            let mut state = self.state.lock().expect("connection state lock");
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.to_owned());
            state.deadlines.clear();
            (
                std::mem::take(&mut state.waiting),
                std::mem::take(&mut state.tasks),
            )
        };
        self.in_flight.close();
        for task in tasks {
            task.abort();
        }
        // Outside the lock: a callback may use the connection's owner, which may look at it.
        for (_, waiter) in waiting {
            waiter.finish(Err(self.lost(reason)));
        }
    }

    /// Removes the waiter of `correlation_id`, if it still waits.
    fn take_waiter(&self, correlation_id: u64) -> Option<Waiter> {
        let mut state = self.state.lock().expect("connection state lock");
        let waiter = state.waiting.remove(&correlation_id)?;
        if let Waiter::Callback { deadline, .. } = &waiter {
            state.deadlines.remove(&(*deadline, correlation_id));
        }
        Some(waiter)
    }

    fn lost(&self, reason: &str) -> ClientError {
        ClientError::ConnectionLost {
            address: self.address.clone(),
            reason: reason.to_owned(),
        }
    }

    fn closed_error(&self) -> ClientError {
        let state = self.state.lock().expect("connection state lock");
        self.lost(state.closed.as_deref().unwrap_or("closed"))
    }
}

impl Connection {
    /// Connects to `address`, performs the handshake and starts the reader and writer tasks.
    /// Must run inside a tokio runtime.
    pub async fn connect(address: &str, config: &ClientConfig) -> Result<Connection> {
        let connect_timeout = config.connect_timeout;
        let connect_error = |reason: String| ClientError::Connect {
            address: address.to_owned(),
            reason,
        };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| connect_error(format!("no connection within {connect_timeout:?}")))?
            .map_err(|error| connect_error(error.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|error| connect_error(error.to_string()))?;

        // The handshake runs before the pipelining tasks exist: nothing else may be sent
        // until the version is agreed.
        let mut framed = Framed::new(stream, FrameCodec::new(config.frame_bytes_max as usize));
        let handshake = RequestFrame {
            version: PROTOCOL_VERSION_MAX,
            correlation_id: 1,
            request: Request::Handshake(HandshakeRequest {
                client_id: config.client_id.clone(),
                min_version: PROTOCOL_VERSION_MIN,
                max_version: PROTOCOL_VERSION_MAX,
            }),
        };
        let exchange = async {
            framed
                .send(encode_request(&handshake))
                .await
                .map_err(|error| connect_error(error.to_string()))?;
            match framed.next().await {
                Some(Ok(frame)) => decode_response(&frame).map_err(ClientError::protocol),
                Some(Err(error)) => Err(connect_error(error.to_string())),
                None => Err(connect_error("closed during the handshake".to_owned())),
            }
        };
        let reply = tokio::time::timeout(connect_timeout, exchange)
            .await
            .map_err(|_| {
                connect_error(format!("no handshake reply within {connect_timeout:?}"))
            })??;
        let handshake = match reply.result? {
            Response::Handshake(handshake) => handshake,
            other => {
                return Err(ClientError::protocol(format!(
                    "expected a handshake reply, got {other:?}"
                )))
            }
        };
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&handshake.version) {
            return Err(ClientError::protocol(format!(
                "server chose protocol version {} outside {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}",
                handshake.version
            )));
        }
        let parts = framed.into_parts();
        if !parts.read_buf.is_empty() {
            return Err(ClientError::protocol(
                "server sent data after the handshake reply unasked",
            ));
        }
        let limits = handshake.limits;
        let in_flight_max = config
            .requests_in_flight_max
            .min(limits.requests_in_flight_max)
            .max(1) as usize;
        let (read_half, write_half) = parts.io.into_split();
        let (outgoing, outgoing_rx) = mpsc::channel(in_flight_max);
        let shared = Arc::new(Shared {
            address: address.to_owned(),
            node_id: handshake.node_id,
            limits,
            outgoing,
            state: Mutex::new(State {
                closed: None,
                waiting: HashMap::new(),
                deadlines: BTreeSet::new(),
                watchdog_wakes_at: None,
                tasks: Vec::new(),
            }),
            next_correlation_id: AtomicU64::new(2),
            in_flight: Semaphore::new(in_flight_max),
            request_timeout: config.request_timeout,
            deadline_added: Notify::new(),
        });
        let write_codec = FrameCodec::new(limits.frame_bytes_max as usize);
        let writer = tokio::spawn(write_loop(
            Arc::clone(&shared),
            FramedWrite::new(write_half, write_codec),
            outgoing_rx,
        ));
        let reader = tokio::spawn(read_loop(
            Arc::clone(&shared),
            FramedRead::new(read_half, FrameCodec::new(config.frame_bytes_max as usize)),
        ));
        let watchdog = tokio::spawn(watch_deadlines(Arc::clone(&shared)));
        shared
            .state
            .lock()
            .expect("connection state lock")
            .tasks
            .extend([
                writer.abort_handle(),
                reader.abort_handle(),
                watchdog.abort_handle(),
            ]);
        Ok(Connection {
            guard: Arc::new(CloseOnDrop(Arc::clone(&shared))),
            shared,
        })
    }

    /// The broker address this connection goes to.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The node that answered the handshake.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The node's limits, learned in the handshake.
    pub fn limits(&self) -> ServerLimits {
        self.shared.limits
    }

    /// Whether the connection broke (or was closed); a new one must be made.
    pub fn is_closed(&self) -> bool {
        self.shared
            .state
            .lock()
            .expect("connection state lock")
            .closed
            .is_some()
    }

    /// Closes the connection, failing every pending request with a retriable error.
    pub fn close(&self, reason: &str) {
        self.shared.close(reason);
    }

    /// Sends `request` and waits for its reply (within the request timeout).
    pub async fn call(&self, request: Request) -> Result<Response> {
        self.submit(request).await?.wait().await
    }

    /// Queues `request` for writing and returns a handle to await its reply. Waits while the
    /// connection has `requests_in_flight_max` requests outstanding. Requests submitted one
    /// after the other are written in that order.
    pub async fn submit(&self, request: Request) -> Result<PendingReply> {
        self.submit_with_timeout(request, self.shared.request_timeout)
            .await
    }

    /// Like [`Connection::submit`] with its own reply timeout (a long-poll fetch waits longer).
    pub async fn submit_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<PendingReply> {
        let permit = self.acquire().await?;
        let (reply, reply_rx) = oneshot::channel();
        self.write(request, Waiter::Channel(reply))
            .map_err(|(error, _unrun)| error)?;
        Ok(PendingReply {
            connection: self.clone(),
            reply: reply_rx,
            _permit: permit,
            deadline: Instant::now() + timeout,
            timeout,
        })
    }

    /// Like [`Connection::submit_with_timeout`], but the outcome goes to `on_reply`, which runs
    /// exactly once: on the connection's reader task with the reply (so keep it short and
    /// non-blocking); with [`ClientError::RequestTimeout`] if no reply comes within `timeout`
    /// (the connection then closes); with the error that broke the connection; or, before this
    /// returns `false`, with the reason the request could not be queued at all. Returns
    /// whether the request was queued for writing.
    pub async fn submit_with_callback(
        &self,
        request: Request,
        timeout: Duration,
        on_reply: ReplyCallback,
    ) -> bool {
        let permit = match self.acquire().await {
            Ok(permit) => permit,
            Err(error) => {
                on_reply(Err(error));
                return false;
            }
        };
        let waiter = Waiter::Callback {
            call: on_reply,
            deadline: Instant::now() + timeout,
            timeout,
            _permit: permit,
        };
        match self.write(request, waiter) {
            Ok(()) => true,
            Err((error, unrun)) => {
                unrun.finish(Err(error));
                false
            }
        }
    }

    /// Takes an in-flight slot, waiting while all are taken.
    async fn acquire(&self) -> Result<InFlightPermit> {
        match Arc::clone(&self.guard).acquire(&self.shared).await {
            Some(permit) => Ok(permit),
            None => Err(self.shared.closed_error()),
        }
    }

    /// Registers `waiter` under a new correlation id and queues the request's frame. On success
    /// the waiter will be finished exactly once; on an error it comes back unfinished.
    fn write(
        &self,
        request: Request,
        waiter: Waiter,
    ) -> std::result::Result<(), (ClientError, Waiter)> {
        let shared = &self.shared;
        let correlation_id = shared.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        debug_assert_ne!(correlation_id, UNKNOWN_CORRELATION_ID);
        let payload = encode_request(&RequestFrame {
            version: PROTOCOL_VERSION_MAX,
            correlation_id,
            request,
        });
        let frame_bytes_max = u64::from(shared.limits.frame_bytes_max);
        if payload.len() as u64 > frame_bytes_max {
            let error = ClientError::RequestTooLarge {
                size: payload.len() as u64,
                max: frame_bytes_max,
            };
            return Err((error, waiter));
        }
        {
            let mut state = shared.state.lock().expect("connection state lock");
            if let Some(reason) = &state.closed {
                return Err((shared.lost(reason), waiter));
            }
            if let Waiter::Callback { deadline, .. } = &waiter {
                state.deadlines.insert((*deadline, correlation_id));
                if state
                    .watchdog_wakes_at
                    .is_none_or(|wakes_at| *deadline < wakes_at)
                {
                    state.watchdog_wakes_at = Some(*deadline);
                    shared.deadline_added.notify_one();
                }
            }
            state.waiting.insert(correlation_id, waiter);
        }
        // The channel holds at most as many frames as there are in-flight permits, so this
        // never finds it full; a failure means the writer is gone.
        if shared.outgoing.try_send(payload).is_err() {
            let unrun = shared.take_waiter(correlation_id);
            shared.close("writer stopped");
            if let Some(waiter) = unrun {
                return Err((shared.closed_error(), waiter));
            }
            // Closed meanwhile by another caller: `close` already handed the waiter the
            // error, so this request counts as submitted.
        }
        Ok(())
    }
}

impl CloseOnDrop {
    /// Takes one in-flight slot. Returns `None` once the connection is closed.
    async fn acquire(self: Arc<Self>, shared: &Shared) -> Option<InFlightPermit> {
        let permit = shared.in_flight.acquire().await.ok()?;
        permit.forget();
        Some(InFlightPermit(self))
    }
}

/// One in-flight slot, given back when the reply (or failure) has been received.
struct InFlightPermit(Arc<CloseOnDrop>);

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.0 .0.in_flight.add_permits(1);
    }
}

/// A request written (or queued for writing) whose reply has not been read yet.
pub struct PendingReply {
    connection: Connection,
    reply: oneshot::Receiver<Result<Response>>,
    _permit: InFlightPermit,
    deadline: Instant,
    timeout: Duration,
}

impl PendingReply {
    /// Waits for the reply. A timeout closes the connection: a node that does not answer
    /// one request is presumed stuck for all of them.
    pub async fn wait(self) -> Result<Response> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        match tokio::time::timeout_at(deadline, self.reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.connection.shared.closed_error()),
            Err(_) => {
                let shared = &self.connection.shared;
                shared.close("request timed out");
                Err(ClientError::RequestTimeout {
                    address: shared.address.clone(),
                    waited: self.timeout,
                })
            }
        }
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    mut framed: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    mut outgoing: mpsc::Receiver<Bytes>,
) {
    while let Some(payload) = outgoing.recv().await {
        let mut result = framed.feed(payload).await;
        let mut written = 1;
        while result.is_ok() && written < WRITE_FRAMES_PER_FLUSH_MAX {
            match outgoing.try_recv() {
                Ok(payload) => {
                    result = framed.feed(payload).await;
                    written += 1;
                }
                Err(_) => break,
            }
        }
        if let Err(error) = result {
            shared.close(&format!("write failed: {error}"));
            return;
        }
        if let Err(error) = framed.flush().await {
            shared.close(&format!("write failed: {error}"));
            return;
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut framed: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
) {
    loop {
        let frame = match framed.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                shared.close(&format!("read failed: {error}"));
                return;
            }
            None => {
                shared.close("closed by the server");
                return;
            }
        };
        let reply = match decode_response(&frame) {
            Ok(reply) => reply,
            Err(reason) => {
                shared.close(&format!("undecodable reply: {reason}"));
                return;
            }
        };
        if reply.correlation_id == UNKNOWN_CORRELATION_ID {
            // The server could not read one of our frames and is closing the connection.
            let reason = match reply.result {
                Err(error) => format!("server refused a frame: {error}"),
                Ok(_) => "server replied to correlation id 0".to_owned(),
            };
            shared.close(&reason);
            return;
        }
        // A reply nobody waits for belonged to a caller that gave up; drop it.
        if let Some(waiter) = shared.take_waiter(reply.correlation_id) {
            waiter.finish(reply.result.map_err(ClientError::Api));
        }
    }
}

/// Ends callbacks whose deadline passed: the first one closes the connection (a node that does
/// not answer one request is presumed stuck for all of them, as in [`PendingReply::wait`]).
/// Sleeps until the earliest deadline it knows of (see `State::watchdog_wakes_at`).
async fn watch_deadlines(shared: Arc<Shared>) {
    loop {
        let earliest = {
            let mut state = shared.state.lock().expect("connection state lock");
            if state.closed.is_some() {
                return;
            }
            let earliest = state.deadlines.first().copied();
            state.watchdog_wakes_at = earliest.map(|(deadline, _)| deadline);
            earliest
        };
        let Some((deadline, correlation_id)) = earliest else {
            shared.deadline_added.notified().await;
            continue;
        };
        if deadline > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                () = shared.deadline_added.notified() => {}
            }
            continue;
        }
        // The reply may have been read since the lock was released: then nothing timed out
        // (as a `PendingReply` whose reply arrived wins over its timer).
        let Some(waiter) = shared.take_waiter(correlation_id) else {
            continue;
        };
        shared.close("request timed out");
        if let Waiter::Callback { call, timeout, .. } = waiter {
            call(Err(ClientError::RequestTimeout {
                address: shared.address.clone(),
                waited: timeout,
            }));
        }
        return;
    }
}
