//! Replication traffic between nodes: the peer transport.
//!
//! Shape (DESIGN section 3): one outgoing TCP connection per peer, opened to the peer's
//! ordinary listener (the address clients use; no second port to configure). Its first frame
//! is a `PeerHello`; the server sees a hello instead of a request frame, runs the handshake
//! of [`crate::peer_auth`] (both sides prove they hold the cluster secret), and only then
//! hands the connection to [`serve_inbound`]. Connections are one-way: a node *sends* on its own
//! connection to a peer and *receives* on the peer's connection to it, so neither side ever
//! waits for the other on one socket.
//!
//! Sending is best effort, as the replica contract allows: [`PeerTransport::send`] never
//! blocks a partition actor. Each peer has a bounded queue (`queue_messages_max`); a message
//! that does not fit is dropped and counted (the leader's next heartbeat repairs). A link task
//! per peer drains the queue, packs up to `frame_messages_max` messages of any partitions
//! into one [`PeerFrame`], writes many frames and flushes once, and reconnects with a
//! doubling backoff when the connection breaks. Messages queued while a peer is unreachable
//! are discarded at each failed attempt rather than delivered late in a burst.
//!
//! Receiving: every message is converted back to the replica engine's type, which validates
//! every record batch (length, checksum, framing); a frame that does not decode or a batch
//! that does not validate closes the connection (the sender reconnects). Valid messages are
//! handed to a [`PeerInbox`] (the broker), which routes them to partition actors by log name.
//!
//! Partition actors send through the [`PeerSend`] trait. [`PeerTransport`] is its TCP
//! implementation; [`memory::MemoryNetwork`] is its in-memory twin, which runs the replicas of
//! a whole cluster in one process (on paused time, in the fast tests).

use crate::frame_writer::FrameWriter;
use bytes::Bytes;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::frame::{FrameCodec, FrameError};
use cairn_protocol::peer::{
    decode_peer_frame, encode_peer_frame, PartitionPeerMessage, PeerAppendResult, PeerFrame,
    PeerLogStart, PeerWireMessage, ReplicaKey,
};
use cairn_protocol::{NodeId, Offset};
use cairn_replica::{AppendResult, LogStart, Millis, PeerMessage};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, FramedRead};

/// Limits and timings of the peer transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTransportConfig {
    /// Messages waiting for one peer; past it new messages to that peer are dropped.
    pub queue_messages_max: usize,
    /// Messages packed into one frame at most.
    pub frame_messages_max: usize,
    /// Largest frame sent (the receiver refuses larger ones), payload bytes.
    pub frame_bytes_max: usize,
    pub connect_timeout_ms: u64,
    /// First wait after a failed connection; doubles up to `reconnect_backoff_max_ms`.
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// Source address of outgoing peer connections: the node's own listen IP, so that
    /// address-based firewall rules (the chaos harness's partitions) can tell nodes apart on
    /// one host. `None` (or an unspecified IP) lets the kernel choose.
    pub source_ip: Option<std::net::IpAddr>,
    /// What this node proves itself with, and checks each peer's proof against
    /// ([`crate::peer_auth`]); `None` only works between loopback addresses.
    pub secret: Option<crate::peer_auth::ClusterSecret>,
}

impl PeerTransportConfig {
    pub fn with_frame_bytes_max(frame_bytes_max: usize) -> PeerTransportConfig {
        PeerTransportConfig {
            queue_messages_max: 4096,
            frame_messages_max: 256,
            frame_bytes_max,
            connect_timeout_ms: 1_000,
            reconnect_backoff_min_ms: 20,
            reconnect_backoff_max_ms: 1_000,
            source_ip: None,
            secret: None,
        }
    }
}

/// Estimated encoding overhead of one message besides its batches (names, ids, offsets).
const MESSAGE_OVERHEAD_BYTES: usize = 160;

pub mod memory;

/// Where a partition replica's outgoing messages go: best effort, never blocking (the
/// replica contract), and dropped rather than queued without bound.
pub trait PeerSend: Send + Sync + 'static {
    /// Queues `message` for the replica `replica` on node `to`.
    fn send(&self, to: NodeId, replica: ReplicaKey, message: &PeerMessage);

    /// Where `peer` listens, as membership last reported it. A transport that routes by node
    /// id alone (the in-memory twin) has no use for it.
    fn set_address(&self, peer: NodeId, address: String);
}

/// What receives the messages that arrive from peers.
pub trait PeerInbox: Send + Sync + 'static {
    /// One valid message for the partition replica `replica`. Must not block.
    fn deliver(&self, from: NodeId, replica: ReplicaKey, message: PeerMessage);
}

/// Counters for tests and status.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub sent_messages: AtomicU64,
    pub sent_frames: AtomicU64,
    pub dropped_messages: AtomicU64,
    pub connects: AtomicU64,
}

/// Outgoing replication traffic of this node. Cheap to share (`Arc`).
pub struct PeerTransport {
    node: NodeId,
    config: PeerTransportConfig,
    /// Where each peer listens; updated from membership (or set directly by tests).
    addresses: Arc<Mutex<HashMap<NodeId, String>>>,
    links: Mutex<HashMap<NodeId, mpsc::Sender<PartitionPeerMessage>>>,
    runtime: Option<tokio::runtime::Handle>,
    pub counters: Arc<PeerCounters>,
}

impl PeerTransport {
    /// Link tasks run on the tokio runtime current at this call (if any: a node without a
    /// runtime, as in some unit tests, simply drops what it would send).
    pub fn new(node: NodeId, config: PeerTransportConfig) -> Arc<PeerTransport> {
        Arc::new(PeerTransport {
            node,
            config,
            addresses: Arc::new(Mutex::new(HashMap::new())),
            links: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            counters: Arc::new(PeerCounters::default()),
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Records (or changes) where `peer` listens; the link uses it on its next connection.
    /// The link is opened now if it is not open yet, so its handshake (a round trip that
    /// needs the peer's process to answer) is done before the first message has to wait on
    /// it: a new topic's first election would otherwise pay it on every new pair of nodes.
    pub fn set_address(&self, peer: NodeId, address: String) {
        lock(&self.addresses).insert(peer, address);
        if peer != self.node {
            let _ = self.link(peer);
        }
    }

    pub fn address(&self, peer: NodeId) -> Option<String> {
        lock(&self.addresses).get(&peer).cloned()
    }

    /// Queues `message` for `replica` on `to`. Never blocks; drops when the peer's queue is
    /// full (best effort, see the module docs).
    pub fn send(&self, to: NodeId, replica: ReplicaKey, message: &PeerMessage) {
        if to == self.node {
            return;
        }
        let wire = PartitionPeerMessage {
            replica,
            message: to_wire(message),
        };
        let Some(sender) = self.link(to) else {
            self.counters
                .dropped_messages
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if sender.try_send(wire).is_err() {
            self.counters
                .dropped_messages
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PeerSend for PeerTransport {
    fn send(&self, to: NodeId, replica: ReplicaKey, message: &PeerMessage) {
        PeerTransport::send(self, to, replica, message);
    }

    fn set_address(&self, peer: NodeId, address: String) {
        PeerTransport::set_address(self, peer, address);
    }
}

impl PeerTransport {
    /// The queue of the link to `to`, starting the link task if none runs; `None` without a
    /// runtime to run it on.
    fn link(&self, to: NodeId) -> Option<mpsc::Sender<PartitionPeerMessage>> {
        let mut links = lock(&self.links);
        match links.get(&to) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => {
                let runtime = self.runtime.as_ref()?;
                let (sender, receiver) = mpsc::channel(self.config.queue_messages_max);
                runtime.spawn(run_link(
                    self.node,
                    to,
                    Arc::clone(&self.addresses),
                    self.config.clone(),
                    receiver,
                    Arc::clone(&self.counters),
                ));
                links.insert(to, sender.clone());
                Some(sender)
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The link task of one peer: connect, send hello, then drain the queue in frames; on any
/// failure wait (doubling) and reconnect. Ends when the transport is dropped.
async fn run_link(
    node: NodeId,
    peer: NodeId,
    addresses: Arc<Mutex<HashMap<NodeId, String>>>,
    config: PeerTransportConfig,
    mut queue: mpsc::Receiver<PartitionPeerMessage>,
    counters: Arc<PeerCounters>,
) {
    let mut backoff_ms = config.reconnect_backoff_min_ms;
    loop {
        let address = lock(&addresses).get(&peer).cloned();
        let connected = match address {
            Some(address) => connect(node, peer, &address, &config).await,
            None => Err(format!("no address known for node {peer}")),
        };
        match connected {
            Ok(writer) => {
                counters.connects.fetch_add(1, Ordering::Relaxed);
                backoff_ms = config.reconnect_backoff_min_ms;
                match write_frames(writer, &mut queue, &config, &counters).await {
                    WriteEnd::QueueClosed => return,
                    WriteEnd::Broken(reason) => {
                        tracing::debug!(%peer, %reason, "peer connection broke");
                    }
                }
            }
            Err(reason) => {
                tracing::debug!(%peer, %reason, "cannot connect to peer");
            }
        }
        // What queued up meanwhile is stale by the time a connection exists again.
        loop {
            match queue.try_recv() {
                Ok(_) => {
                    counters.dropped_messages.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(config.reconnect_backoff_max_ms);
    }
}

type PeerWriter = FrameWriter<TcpStream>;

/// Opens a connection to `peer` and runs the handshake on it: both sides prove they hold the
/// cluster secret before this node sends it anything replicated.
async fn connect(
    node: NodeId,
    peer: NodeId,
    address: &str,
    config: &PeerTransportConfig,
) -> Result<PeerWriter, String> {
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let socket = match tokio::time::timeout(timeout, open_stream(address, config.source_ip)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => return Err(format!("connect timed out after {timeout:?}")),
    };
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let mut framed = Framed::new(socket, FrameCodec::new(config.frame_bytes_max));
    let handshake = crate::peer_auth::connect(&mut framed, node, peer, config.secret.as_ref());
    match tokio::time::timeout(crate::peer_auth::HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(format!("handshake with node {peer} failed: {error}")),
        Err(_) => return Err(format!("handshake with node {peer} timed out")),
    }
    // The acceptor writes nothing after its challenge, so no read-ahead is lost here.
    Ok(FrameWriter::new(
        framed.into_inner(),
        config.frame_bytes_max,
    ))
}

/// Connects to `address`, from `source_ip` when one is given (port chosen by the kernel).
async fn open_stream(
    address: &str,
    source_ip: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(source_ip) = source_ip.filter(|ip| !ip.is_unspecified()) else {
        return TcpStream::connect(address).await;
    };
    let mut last_error = None;
    for target in tokio::net::lookup_host(address).await? {
        if target.is_ipv4() != source_ip.is_ipv4() {
            continue;
        }
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source_ip, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{address} has no address of the family of {source_ip}"),
        )
    }))
}

enum WriteEnd {
    QueueClosed,
    Broken(String),
}

async fn write_frames(
    mut writer: PeerWriter,
    queue: &mut mpsc::Receiver<PartitionPeerMessage>,
    config: &PeerTransportConfig,
    counters: &PeerCounters,
) -> WriteEnd {
    let budget_bytes = config.frame_bytes_max / 2;
    let mut carried: Option<PartitionPeerMessage> = None;
    loop {
        let first = match carried.take() {
            Some(message) => message,
            None => match queue.recv().await {
                Some(message) => message,
                None => return WriteEnd::QueueClosed,
            },
        };
        // Pack what is queued now into frames; flush once after the last.
        let mut pending = Some(first);
        while let Some(first) = pending.take() {
            let mut estimated_bytes = estimate_bytes(&first);
            let mut messages = vec![first];
            while messages.len() < config.frame_messages_max {
                match queue.try_recv() {
                    Ok(next) => {
                        let next_bytes = estimate_bytes(&next);
                        if estimated_bytes + next_bytes > budget_bytes {
                            pending = Some(next);
                            break;
                        }
                        estimated_bytes += next_bytes;
                        messages.push(next);
                    }
                    Err(_) => break,
                }
            }
            let count = messages.len() as u64;
            let bytes = encode_peer_frame(&PeerFrame { messages });
            if bytes.len() > config.frame_bytes_max {
                // Only a single message far above append_message_bytes_max gets here.
                tracing::warn!(
                    size = bytes.len(),
                    max = config.frame_bytes_max,
                    "peer frame too large; dropped"
                );
                counters
                    .dropped_messages
                    .fetch_add(count, Ordering::Relaxed);
                continue;
            }
            if let Err(error) = writer.feed(bytes).await {
                return WriteEnd::Broken(error.to_string());
            }
            counters.sent_frames.fetch_add(1, Ordering::Relaxed);
            counters.sent_messages.fetch_add(count, Ordering::Relaxed);
            if pending.is_none() {
                // Another frame's worth may have arrived while feeding; keep packing.
                if let Ok(next) = queue.try_recv() {
                    pending = Some(next);
                }
            }
        }
        if let Err(error) = writer.flush().await {
            return WriteEnd::Broken(error.to_string());
        }
    }
}

fn estimate_bytes(message: &PartitionPeerMessage) -> usize {
    let batches = match &message.message {
        PeerWireMessage::Append { batches, .. } => batches.iter().map(Bytes::len).sum(),
        _ => 0,
    };
    MESSAGE_OVERHEAD_BYTES + batches
}

/// Reads peer frames from a connection whose hello said it comes from `from`, delivering
/// every message, until the connection ends, a frame is bad, or `stop` resolves.
pub async fn serve_inbound<R, I>(
    mut reader: FramedRead<R, FrameCodec>,
    from: NodeId,
    inbox: &I,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    I: PeerInbox + ?Sized,
{
    tokio::pin!(stop);
    loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            _ = &mut stop => return Ok(()),
        };
        let bytes = match frame {
            None => return Ok(()),
            Some(Ok(bytes)) => bytes,
            Some(Err(FrameError::TooLarge { size, max })) => {
                return Err(format!("peer frame of {size} bytes exceeds {max}"))
            }
            Some(Err(FrameError::Io(error))) => return Err(error.to_string()),
        };
        let frame = decode_peer_frame(&bytes)?;
        // Validate the whole frame before delivering any of it: a bad frame changes nothing.
        let mut messages = Vec::with_capacity(frame.messages.len());
        for message in frame.messages {
            messages.push((message.replica, from_wire(message.message)?));
        }
        for (replica, message) in messages {
            inbox.deliver(from, replica, message);
        }
    }
}

/// The engine's message in its wire form.
pub fn to_wire(message: &PeerMessage) -> PeerWireMessage {
    match message.clone() {
        PeerMessage::LeaseRequest {
            epoch,
            last_log_epoch,
            log_end,
        } => PeerWireMessage::LeaseRequest {
            epoch,
            last_log_epoch,
            log_end,
        },
        PeerMessage::LeaseResponse {
            epoch,
            granted,
            promised_epoch,
        } => PeerWireMessage::LeaseResponse {
            epoch,
            granted,
            promised_epoch,
        },
        PeerMessage::LeaseProbe {
            epoch,
            last_log_epoch,
            log_end,
        } => PeerWireMessage::LeaseProbe {
            epoch,
            last_log_epoch,
            log_end,
        },
        PeerMessage::LeaseProbeResponse {
            epoch,
            granted,
            promised_epoch,
        } => PeerWireMessage::LeaseProbeResponse {
            epoch,
            granted,
            promised_epoch,
        },
        PeerMessage::Append {
            epoch,
            prev_offset,
            prev_epoch,
            batches,
            commit,
            sent_at,
            log_start,
        } => PeerWireMessage::Append {
            epoch,
            prev_offset,
            prev_epoch,
            batches: batches.into_iter().map(RecordBatch::into_bytes).collect(),
            commit,
            sent_at_ms: sent_at.0,
            log_start: log_start.map(|start| PeerLogStart {
                offset: start.offset,
                epoch: start.epoch,
            }),
        },
        PeerMessage::AppendResponse {
            epoch,
            sent_at,
            result,
        } => PeerWireMessage::AppendResponse {
            epoch,
            sent_at_ms: sent_at.0,
            result: match result {
                AppendResult::Ok {
                    log_end,
                    durable_end,
                } => PeerAppendResult::Ok {
                    log_end,
                    durable_end,
                },
                AppendResult::Diverged { epoch, end_offset } => {
                    PeerAppendResult::Diverged { epoch, end_offset }
                }
                AppendResult::StaleEpoch { promised_epoch } => {
                    PeerAppendResult::StaleEpoch { promised_epoch }
                }
            },
        },
    }
}

/// An offset read from a peer, refused above [`Offset::MAX`] so that no arithmetic on it
/// can overflow.
fn bounded(offset: Offset) -> Result<Offset, String> {
    if offset > Offset::MAX {
        return Err(format!(
            "offset {offset} is above the largest offset {}",
            Offset::MAX
        ));
    }
    Ok(offset)
}

/// The wire message as the engine's type; every batch is validated (length, checksum,
/// records, offsets within [`Offset::MAX`]) and every offset bounded, so nothing corrupt
/// reaches a replica.
pub fn from_wire(message: PeerWireMessage) -> Result<PeerMessage, String> {
    Ok(match message {
        PeerWireMessage::LeaseRequest {
            epoch,
            last_log_epoch,
            log_end,
        } => PeerMessage::LeaseRequest {
            epoch,
            last_log_epoch,
            log_end: bounded(log_end)?,
        },
        PeerWireMessage::LeaseResponse {
            epoch,
            granted,
            promised_epoch,
        } => PeerMessage::LeaseResponse {
            epoch,
            granted,
            promised_epoch,
        },
        PeerWireMessage::LeaseProbe {
            epoch,
            last_log_epoch,
            log_end,
        } => PeerMessage::LeaseProbe {
            epoch,
            last_log_epoch,
            log_end: bounded(log_end)?,
        },
        PeerWireMessage::LeaseProbeResponse {
            epoch,
            granted,
            promised_epoch,
        } => PeerMessage::LeaseProbeResponse {
            epoch,
            granted,
            promised_epoch,
        },
        PeerWireMessage::Append {
            epoch,
            prev_offset,
            prev_epoch,
            batches,
            commit,
            sent_at_ms,
            log_start,
        } => PeerMessage::Append {
            epoch,
            prev_offset: bounded(prev_offset)?,
            prev_epoch,
            batches: batches
                .into_iter()
                .map(|bytes| {
                    RecordBatch::validate_from_log(bytes)
                        .map_err(|error| format!("bad batch: {error}"))
                })
                .collect::<Result<_, _>>()?,
            commit: bounded(commit)?,
            sent_at: Millis(sent_at_ms),
            log_start: match log_start {
                Some(start) => Some(LogStart {
                    offset: bounded(start.offset)?,
                    epoch: start.epoch,
                }),
                None => None,
            },
        },
        PeerWireMessage::AppendResponse {
            epoch,
            sent_at_ms,
            result,
        } => PeerMessage::AppendResponse {
            epoch,
            sent_at: Millis(sent_at_ms),
            result: match result {
                PeerAppendResult::Ok {
                    log_end,
                    durable_end,
                } => AppendResult::Ok {
                    log_end: bounded(log_end)?,
                    durable_end: bounded(durable_end)?,
                },
                PeerAppendResult::Diverged { epoch, end_offset } => AppendResult::Diverged {
                    epoch,
                    end_offset: bounded(end_offset)?,
                },
                PeerAppendResult::StaleEpoch { promised_epoch } => {
                    AppendResult::StaleEpoch { promised_epoch }
                }
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_auth::ClusterSecret;
    use cairn_protocol::batch::RecordBatchBuilder;
    use cairn_protocol::peer::decode_peer_hello;
    use cairn_protocol::{Epoch, Record};
    use tokio::net::TcpListener;
    use tokio_util::codec::FramedWrite;

    #[derive(Default)]
    struct Collected(Mutex<Vec<(NodeId, String, PeerMessage)>>);

    impl PeerInbox for Collected {
        fn deliver(&self, from: NodeId, replica: ReplicaKey, message: PeerMessage) {
            lock(&self.0).push((from, replica.to_string(), message));
        }
    }

    /// The key of the replica whose log is `name` (`__meta` or `t<topic>-<partition>`).
    fn key(name: &str) -> ReplicaKey {
        if name == "__meta" {
            return ReplicaKey::Meta;
        }
        let (topic, partition) = name[1..].split_once('-').unwrap();
        ReplicaKey::Partition {
            topic: topic.parse().unwrap(),
            partition: partition.parse().unwrap(),
        }
    }

    fn batch(value: &'static [u8]) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1);
        builder.push(&Record::new(Bytes::from_static(value)));
        builder.build()
    }

    /// An `Append` cut at `append_message_bytes_max`, its batches counted as the replica
    /// engine counts them, fits a peer frame of that size plus the overhead the config rule
    /// adds (`PEER_APPEND_FRAME_OVERHEAD_BYTES`), with one large batch or a thousand small
    /// ones and the widest numbers: a frame above the limit would be dropped at every retry.
    #[test]
    fn an_append_cut_at_the_message_limit_fits_the_frame_the_config_sizes_for_it() {
        let bytes_max = 64 * 1024;
        for value_bytes in [0usize, 100, 5_000, 60 * 1024] {
            let value = Bytes::from(vec![b'v'; value_bytes]);
            let mut batches = Vec::new();
            let mut bytes = 0;
            loop {
                let mut builder = RecordBatchBuilder::new(1);
                builder.push(&Record::new(value.clone()));
                let batch = builder
                    .build()
                    .stamped(Offset(u64::MAX / 2), Epoch(u64::MAX));
                let size = cairn_replica::append_wire_bytes(&batch);
                if !batches.is_empty() && bytes + size > bytes_max {
                    break;
                }
                bytes += size;
                batches.push(batch);
            }
            let count = batches.len();
            let message = PeerMessage::Append {
                epoch: Epoch(u64::MAX),
                prev_offset: Offset(u64::MAX),
                prev_epoch: Epoch(u64::MAX),
                batches,
                commit: Offset(u64::MAX),
                sent_at: Millis(u64::MAX),
                log_start: Some(LogStart {
                    offset: Offset(u64::MAX),
                    epoch: Epoch(u64::MAX),
                }),
            };
            let frame = encode_peer_frame(&PeerFrame {
                messages: vec![PartitionPeerMessage {
                    replica: ReplicaKey::Partition {
                        topic: u64::MAX,
                        partition: u32::MAX,
                    },
                    message: to_wire(&message),
                }],
            });
            let limit = bytes_max + crate::config::PEER_APPEND_FRAME_OVERHEAD_BYTES as usize;
            assert!(
                frame.len() <= limit,
                "{count} batches of {value_bytes}-byte values: a frame of {} bytes, above {limit}",
                frame.len()
            );
        }
    }

    fn heartbeat(commit: u64) -> PeerMessage {
        PeerMessage::Append {
            epoch: Epoch(1),
            prev_offset: Offset(0),
            prev_epoch: Epoch(0),
            batches: vec![],
            commit: Offset(commit),
            sent_at: Millis(commit),
            log_start: None,
        }
    }

    fn config() -> PeerTransportConfig {
        PeerTransportConfig {
            queue_messages_max: 64,
            frame_messages_max: 16,
            frame_bytes_max: 64 * 1024,
            connect_timeout_ms: 500,
            reconnect_backoff_min_ms: 10,
            reconnect_backoff_max_ms: 40,
            source_ip: None,
            secret: Some(secret("the-test-cluster-secret")),
        }
    }

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_value("test", text.as_bytes()).unwrap()
    }

    /// A minimal peer listener of node 2 holding `secret`: accepts connections, runs the
    /// handshake, delivers into `inbox`. Connections live in a `JoinSet`, so aborting the
    /// listener closes them too.
    async fn listen(listener: TcpListener, inbox: Arc<Collected>, secret: ClusterSecret) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((socket, remote)) = listener.accept().await else {
                return;
            };
            let local = listener.local_addr().unwrap();
            let inbox = Arc::clone(&inbox);
            let secret = secret.clone();
            connections.spawn(async move {
                let (read, write) = socket.into_split();
                let mut reader = FramedRead::new(read, FrameCodec::new(64 * 1024));
                let mut writer = FramedWrite::new(write, FrameCodec::new(64 * 1024));
                let Some(Ok(first)) = reader.next().await else {
                    return;
                };
                let hello = decode_peer_hello(&first).expect("a hello first");
                let accepted = crate::peer_auth::accept(
                    &mut reader,
                    &mut writer,
                    &hello,
                    NodeId(2),
                    Some(&secret),
                    local,
                    remote,
                )
                .await;
                let Ok(from) = accepted else {
                    return;
                };
                let _ = serve_inbound(reader, from, &*inbox, std::future::pending()).await;
            });
        }
    }

    async fn wait_for(inbox: &Collected, count: usize) {
        for _ in 0..300 {
            if lock(&inbox.0).len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of {count} messages arrived", lock(&inbox.0).len());
    }

    #[test]
    fn every_message_kind_survives_the_wire_form() {
        let messages = vec![
            PeerMessage::LeaseRequest {
                epoch: Epoch(3),
                last_log_epoch: Epoch(2),
                log_end: Offset(9),
            },
            PeerMessage::LeaseResponse {
                epoch: Epoch(3),
                granted: true,
                promised_epoch: Epoch(3),
            },
            PeerMessage::LeaseProbe {
                epoch: Epoch(4),
                last_log_epoch: Epoch(2),
                log_end: Offset(9),
            },
            PeerMessage::LeaseProbeResponse {
                epoch: Epoch(4),
                granted: false,
                promised_epoch: Epoch(5),
            },
            PeerMessage::Append {
                epoch: Epoch(3),
                prev_offset: Offset(9),
                prev_epoch: Epoch(2),
                batches: vec![batch(b"a"), batch(b"b")],
                commit: Offset(8),
                sent_at: Millis(77),
                log_start: None,
            },
            PeerMessage::Append {
                epoch: Epoch(3),
                prev_offset: Offset(20),
                prev_epoch: Epoch(0),
                batches: vec![],
                commit: Offset(20),
                sent_at: Millis(78),
                log_start: Some(LogStart {
                    offset: Offset(20),
                    epoch: Epoch(2),
                }),
            },
            PeerMessage::AppendResponse {
                epoch: Epoch(3),
                sent_at: Millis(77),
                result: AppendResult::Ok {
                    log_end: Offset(11),
                    durable_end: Offset(10),
                },
            },
            PeerMessage::AppendResponse {
                epoch: Epoch(3),
                sent_at: Millis(1),
                result: AppendResult::Diverged {
                    epoch: Epoch(1),
                    end_offset: Offset(4),
                },
            },
            PeerMessage::AppendResponse {
                epoch: Epoch(3),
                sent_at: Millis(1),
                result: AppendResult::StaleEpoch {
                    promised_epoch: Epoch(6),
                },
            },
        ];
        for message in messages {
            assert_eq!(from_wire(to_wire(&message)).unwrap(), message);
        }
    }

    #[test]
    fn offsets_beyond_the_largest_are_refused() {
        let wire =
            |prev_offset: Offset, commit: Offset, start: Option<Offset>| PeerWireMessage::Append {
                epoch: Epoch(1),
                prev_offset,
                prev_epoch: Epoch(0),
                batches: vec![],
                commit,
                sent_at_ms: 0,
                log_start: start.map(|offset| PeerLogStart {
                    offset,
                    epoch: Epoch(1),
                }),
            };
        assert!(from_wire(wire(Offset::MAX, Offset::MAX, Some(Offset::MAX))).is_ok());
        assert!(from_wire(wire(Offset(u64::MAX), Offset(0), None)).is_err());
        assert!(from_wire(wire(Offset(0), Offset(u64::MAX), None)).is_err());
        assert!(from_wire(wire(Offset(0), Offset(0), Some(Offset(u64::MAX)))).is_err());
        let forged = batch(b"x").stamped(Offset(u64::MAX), Epoch(1));
        let wire = PeerWireMessage::Append {
            epoch: Epoch(1),
            prev_offset: Offset(u64::MAX),
            prev_epoch: Epoch(0),
            batches: vec![forged.into_bytes()],
            commit: Offset(0),
            sent_at_ms: 0,
            log_start: None,
        };
        assert!(from_wire(wire).is_err());
    }

    #[test]
    fn a_corrupt_batch_is_refused() {
        let mut bytes = batch(b"value").into_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let wire = PeerWireMessage::Append {
            epoch: Epoch(1),
            prev_offset: Offset(0),
            prev_epoch: Epoch(0),
            batches: vec![Bytes::from(bytes)],
            commit: Offset(0),
            sent_at_ms: 0,
            log_start: None,
        };
        assert!(from_wire(wire).unwrap_err().contains("bad batch"));
    }

    #[tokio::test]
    async fn a_link_with_another_secret_delivers_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let inbox = Arc::new(Collected::default());
        let server = tokio::spawn(listen(
            listener,
            Arc::clone(&inbox),
            secret("another-cluster-secret"),
        ));
        let transport = PeerTransport::new(NodeId(1), config());
        transport.set_address(NodeId(2), address);
        // Each attempt fails the handshake, so the link never counts a connection; wait (with
        // a bound) until it tried a few times.
        for commit in 0..100 {
            transport.send(NodeId(2), key("t1-0"), &heartbeat(commit));
            tokio::time::sleep(Duration::from_millis(10)).await;
            if transport.counters.dropped_messages.load(Ordering::Relaxed) >= 3 {
                break;
            }
        }
        assert!(transport.counters.dropped_messages.load(Ordering::Relaxed) >= 3);
        assert_eq!(transport.counters.connects.load(Ordering::Relaxed), 0);
        assert!(lock(&inbox.0).is_empty());
        server.abort();
    }

    #[tokio::test]
    async fn messages_arrive_in_order_batched_into_few_frames() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let inbox = Arc::new(Collected::default());
        let server = tokio::spawn(listen(
            listener,
            Arc::clone(&inbox),
            config().secret.unwrap(),
        ));
        let transport = PeerTransport::new(NodeId(1), config());
        transport.set_address(NodeId(2), address);
        for commit in 0..40 {
            let log = if commit % 2 == 0 { "t1-0" } else { "t1-1" };
            transport.send(NodeId(2), key(log), &heartbeat(commit));
        }
        wait_for(&inbox, 40).await;
        let received = lock(&inbox.0).clone();
        for (index, (from, log, message)) in received.iter().enumerate() {
            assert_eq!(*from, NodeId(1));
            assert_eq!(log, if index % 2 == 0 { "t1-0" } else { "t1-1" });
            assert_eq!(*message, heartbeat(index as u64));
        }
        let frames = transport.counters.sent_frames.load(Ordering::Relaxed);
        assert!(
            frames < 40,
            "messages queued together share frames ({frames})"
        );
        // Sending to itself is a no-op, not a connection.
        transport.send(NodeId(1), key("t1-0"), &heartbeat(0));
        assert_eq!(transport.counters.connects.load(Ordering::Relaxed), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let transport = PeerTransport::new(NodeId(1), config());
        // No address: the link cannot connect, so nothing drains the queue but the discard
        // after each failed attempt.
        let sent = config().queue_messages_max as u64 * 3;
        for commit in 0..sent {
            transport.send(NodeId(9), key("t1-0"), &heartbeat(commit));
        }
        let dropped = transport.counters.dropped_messages.load(Ordering::Relaxed);
        assert!(
            dropped >= sent - config().queue_messages_max as u64,
            "dropped {dropped} of {sent}"
        );
        assert_eq!(transport.counters.sent_messages.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_link_reconnects_after_the_peer_restarts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let inbox = Arc::new(Collected::default());
        let server = tokio::spawn(listen(
            listener,
            Arc::clone(&inbox),
            config().secret.unwrap(),
        ));
        let transport = PeerTransport::new(NodeId(1), config());
        transport.set_address(NodeId(2), address.to_string());
        transport.send(NodeId(2), key("__meta"), &heartbeat(1));
        wait_for(&inbox, 1).await;
        // The peer goes away (listener and its connections) and comes back on the same port.
        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = TcpListener::bind(address).await.unwrap();
        let server = tokio::spawn(listen(
            listener,
            Arc::clone(&inbox),
            config().secret.unwrap(),
        ));
        // Sends on the broken connection may be lost; keep sending until one arrives.
        for commit in 2..200 {
            transport.send(NodeId(2), key("__meta"), &heartbeat(commit));
            tokio::time::sleep(Duration::from_millis(10)).await;
            if lock(&inbox.0).len() >= 2 {
                break;
            }
        }
        assert!(lock(&inbox.0).len() >= 2, "nothing arrived after restart");
        assert!(transport.counters.connects.load(Ordering::Relaxed) >= 2);
        server.abort();
    }
}
