//! The running membership: chitchat plus a view task that turns its state into typed changes.
//!
//! [`Membership::start`] binds the gossip socket, starts chitchat with this node's values and
//! spawns the view task. The view task wakes when chitchat's live set changes, when the owner
//! publishes something, and at least once per gossip interval; each time it reads every node
//! incarnation chitchat knows (decoding only those whose version moved), folds them into the
//! [`View`] behind [`Membership::snapshot`], and hands them to the change stream, which reports
//! them as [`ClusterChange`]s at the pace its reader takes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_protocol::NodeId;
use chitchat::transport::{Socket, Transport};
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion, Version,
};
use tokio::sync::{mpsc, Mutex as TokioMutex, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::{Generation, MembershipConfig};
use crate::gossip_keys;
use crate::hints::{HintsError, LeadershipHints};
use crate::node::{ClusterChange, NodeInfo};
use crate::view::View;

/// Why membership could not start. Both are environment problems (the caller usually exits).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the gossip socket on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot start gossip: {reason}")]
    Gossip { reason: String },
}

/// The receiving end of the typed change stream. Bounded by `change_queue_max`: while it is
/// full the view task waits, so changes are delayed, never dropped; [`Membership::snapshot`]
/// stays current meanwhile. Drain it, or drop it if only snapshots are wanted.
///
/// The first change is this node's own `Joined`.
#[derive(Debug)]
pub struct ClusterChanges {
    receiver: mpsc::Receiver<ClusterChange>,
}

impl ClusterChanges {
    /// The next change; `None` once the membership has stopped.
    pub async fn recv(&mut self) -> Option<ClusterChange> {
        self.receiver.recv().await
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Option<ClusterChange> {
        self.receiver.try_recv().ok()
    }
}

/// A running membership. Dropping it stops gossip; peers then see this node leave once their
/// failure detectors give up on it.
///
/// Liveness here is this node's local opinion and may be wrong in either direction; it is a
/// hint for routing and for choosing whom to contact, never an authority for leadership.
pub struct Membership {
    node_id: NodeId,
    generation: Generation,
    gossip_addr: SocketAddr,
    hint_bytes_max: usize,
    chitchat: Arc<TokioMutex<Chitchat>>,
    chitchat_handle: Option<ChitchatHandle>,
    view: Arc<StdMutex<View>>,
    wake_view: Arc<Notify>,
    view_task: JoinHandle<()>,
}

impl Membership {
    /// Starts gossiping over `transport` (chitchat's `UdpTransport` in production, its
    /// `ChannelTransport` in tests). Must be called inside a tokio runtime that keeps running.
    pub async fn start(
        config: MembershipConfig,
        transport: &dyn Transport,
    ) -> Result<(Membership, ClusterChanges), StartError> {
        let listen_addr = config.gossip_listen_addr();
        let socket = transport
            .open(listen_addr)
            .await
            .map_err(|error| StartError::Bind {
                addr: listen_addr,
                reason: format!("{error:#}"),
            })?;
        let bound_addr = socket.local_addr().map_err(|error| StartError::Bind {
            addr: listen_addr,
            reason: format!("{error:#}"),
        })?;
        let gossip_addr = config.gossip_advertise_addr().unwrap_or(bound_addr);
        let chitchat_id = ChitchatId::new(
            gossip_keys::chitchat_node_name(config.node_id()),
            config.generation().0,
            gossip_addr,
        );
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id().to_string(),
            gossip_interval: config.gossip_interval(),
            listen_addr: bound_addr,
            seed_nodes: config.seeds().to_vec(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold(),
                sampling_window_size: config.heartbeat_samples_max(),
                max_interval: config.heartbeat_interval_max(),
                initial_interval: config.initial_heartbeat_interval(),
                dead_node_grace_period: config.dead_node_grace_period(),
            },
            // Cairn never deletes its keys (it overwrites them), so tombstones are rare; keep
            // them as long as dead nodes.
            marked_for_deletion_grace_period: config.dead_node_grace_period(),
            catchup_callback: None,
            extra_liveness_predicate: None,
            // V0 is decodable by every chitchat 0.13 node and skips compressing the digest,
            // which is cheaper for the small clusters Cairn targets. Moving to V1 needs every
            // node upgraded first.
            protocol_version: ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(
            chitchat_config,
            gossip_keys::initial_key_values(&config),
            &OpenedSocket::new(socket),
        )
        .await
        .map_err(|error| StartError::Gossip {
            reason: format!("{error:#}"),
        })?;
        let chitchat = handle.chitchat();
        let (sender, receiver) = mpsc::channel(config.change_queue_max());
        let view = Arc::new(StdMutex::new(View::default()));
        let wake_view = Arc::new(Notify::new());
        let view_task = tokio::spawn(run_view(
            chitchat.clone(),
            view.clone(),
            wake_view.clone(),
            sender,
            config.gossip_interval(),
        ));
        let membership = Membership {
            node_id: config.node_id(),
            generation: config.generation(),
            gossip_addr,
            hint_bytes_max: config.hint_bytes_max(),
            chitchat,
            chitchat_handle: Some(handle),
            view,
            wake_view,
            view_task,
        };
        Ok((membership, ClusterChanges { receiver }))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The gossip address peers use for this node (useful as a seed when it bound port 0).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Publishes whether this node is ready to serve. Publishing the current value sends
    /// nothing.
    pub async fn set_ready(&self, ready: bool) {
        let mut chitchat = self.chitchat.lock().await;
        gossip_keys::publish_ready(chitchat.self_node_state(), ready);
        drop(chitchat);
        self.wake_view.notify_one();
    }

    /// Publishes the partitions this node leads. Refused with [`HintsError::TooLarge`] past
    /// `hint_bytes_max`, leaving the published hints as they were: a large value would slow
    /// every gossip round, and one past a datagram would block this node's gossip entirely.
    pub async fn set_hints(&self, hints: &LeadershipHints) -> Result<(), HintsError> {
        let encoded = hints.encode();
        if encoded.len() > self.hint_bytes_max {
            return Err(HintsError::TooLarge {
                bytes: encoded.len(),
                max: self.hint_bytes_max,
            });
        }
        let mut chitchat = self.chitchat.lock().await;
        gossip_keys::publish_hints(chitchat.self_node_state(), &encoded);
        drop(chitchat);
        self.wake_view.notify_one();
        Ok(())
    }

    /// Every node in the local view, this one included, ordered by node id. Nodes that left
    /// stay (with `alive` false) until chitchat forgets them after the dead-node grace period.
    pub fn snapshot(&self) -> Vec<NodeInfo> {
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .snapshot()
    }

    /// Stops gossip and waits until the gossip socket is closed, so that the same address can
    /// be bound again right away (a restart in place). Dropping does the same without waiting.
    pub async fn shutdown(mut self) {
        self.view_task.abort();
        if let Some(handle) = self.chitchat_handle.take() {
            if let Err(error) = handle.shutdown().await {
                warn!(%error, "gossip stopped with an error");
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Dropping the chitchat handle closes its command channel, which ends the gossip loop.
        self.view_task.abort();
    }
}

/// Hands chitchat a socket that [`Membership::start`] already bound, so that the advertised
/// address can use the real port when the listen port was 0.
struct OpenedSocket {
    socket: StdMutex<Option<Box<dyn Socket>>>,
}

impl OpenedSocket {
    fn new(socket: Box<dyn Socket>) -> OpenedSocket {
        OpenedSocket {
            socket: StdMutex::new(Some(socket)),
        }
    }
}

#[async_trait]
impl Transport for OpenedSocket {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gossip socket was already handed out"))
    }
}

/// Decoded node incarnations, reused while chitchat's version of the node does not move, so a
/// bad value from a peer is logged once per change rather than once per round.
type DecodeCache = HashMap<ChitchatId, (Version, Option<NodeInfo>)>;

async fn run_view(
    chitchat: Arc<TokioMutex<Chitchat>>,
    view: Arc<StdMutex<View>>,
    wake_view: Arc<Notify>,
    changes: mpsc::Sender<ClusterChange>,
    gossip_interval: Duration,
) {
    let mut live_nodes = chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = DecodeCache::new();
    let mut stream = ChangeStream::new(changes);
    loop {
        let observed = observe(&*chitchat.lock().await, &mut cache);
        // The snapshot follows every round, whether or not the stream's reader keeps up.
        let _ = view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .apply(&observed);
        stream.offer(&observed);
        tokio::select! {
            changed = live_nodes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = wake_view.notified() => {}
            _ = tick.tick() => {}
            permit = stream.sender.clone().reserve_owned(), if stream.is_waiting() => {
                stream.deliver(permit);
            }
        }
    }
}

/// The typed change stream's side of the view task. It keeps its own [`View`], the cluster as
/// last reported to the reader, and folds a new observation into it only once every change
/// from the previous fold has been sent. So a reader that falls behind delays changes (several
/// rounds are reported as one, as between any two rounds) but never loses one, the memory held
/// is bounded by the node count, and the task never waits on the reader.
struct ChangeStream {
    sender: mpsc::Sender<ClusterChange>,
    reported: View,
    pending: std::collections::VecDeque<ClusterChange>,
    /// The owner may drop the stream and use only snapshots.
    receiver_gone: bool,
}

impl ChangeStream {
    fn new(sender: mpsc::Sender<ClusterChange>) -> ChangeStream {
        ChangeStream {
            sender,
            reported: View::default(),
            pending: std::collections::VecDeque::new(),
            receiver_gone: false,
        }
    }

    /// True while changes wait for room in the queue.
    fn is_waiting(&self) -> bool {
        !self.receiver_gone && !self.pending.is_empty()
    }

    /// Sends what fits; if everything went out, folds `observed` in and sends what fits of that.
    fn offer(&mut self, observed: &[NodeInfo]) {
        self.send_pending();
        if self.receiver_gone || !self.pending.is_empty() {
            return;
        }
        self.pending.extend(self.reported.apply(observed));
        self.send_pending();
    }

    /// Room appeared in the queue (or the reader went away).
    fn deliver(
        &mut self,
        permit: Result<mpsc::OwnedPermit<ClusterChange>, mpsc::error::SendError<()>>,
    ) {
        match permit {
            Ok(permit) => {
                if let Some(change) = self.pending.pop_front() {
                    debug!(?change, "cluster change");
                    permit.send(change);
                }
                self.send_pending();
            }
            Err(_) => self.gone(),
        }
    }

    fn send_pending(&mut self) {
        while let Some(change) = self.pending.pop_front() {
            debug!(?change, "cluster change");
            match self.sender.try_send(change) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(change)) => {
                    self.pending.push_front(change);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return self.gone(),
            }
        }
    }

    fn gone(&mut self) {
        self.receiver_gone = true;
        self.pending.clear();
    }
}

/// Reads every node incarnation chitchat knows, with liveness from its failure detector.
fn observe(chitchat: &Chitchat, cache: &mut DecodeCache) -> Vec<NodeInfo> {
    let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let states = chitchat.node_states();
    cache.retain(|chitchat_id, _| states.contains_key(chitchat_id));
    let mut observed = Vec::with_capacity(states.len());
    for (chitchat_id, state) in states {
        let version = state.max_version();
        let fresh = cache
            .get(chitchat_id)
            .is_some_and(|(cached_version, _)| *cached_version == version);
        if !fresh {
            let decoded = match gossip_keys::decode_node(chitchat_id, state) {
                Ok((info, hints_error)) => {
                    if let Some(error) = hints_error {
                        warn!(node = ?chitchat_id, %error, "ignoring a node's leadership hints");
                    }
                    Some(info)
                }
                Err(error) => {
                    // A peer that has not sent all its values yet looks the same as a broken
                    // one; it is skipped until a later version decodes.
                    debug!(node = ?chitchat_id, %error, "skipping a node's gossip");
                    None
                }
            };
            cache.insert(chitchat_id.clone(), (version, decoded));
        }
        if let Some((_, Some(info))) = cache.get(chitchat_id) {
            let mut info = info.clone();
            info.alive = live.contains(chitchat_id);
            observed.push(info);
        }
    }
    observed
}
