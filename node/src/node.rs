//! Start-up and shutdown of one node process.
//!
//! Order: check the data directory, open the store and its group committer, start the
//! arbiters, bind the listeners (client, then HTTP: a taken port fails fast), start the broker
//! (which recovers `__meta` and every topic), serve, print the ready line once metadata is
//! recovered, then wait for SIGTERM/SIGINT and shut down within `shutdown_grace_ms`.
//!
//! The ready line, on stdout, is what scripts and tests wait for:
//! `cairn node ready node_id=N listen=IP:PORT http=IP:PORT kafka=IP:PORT` (`http=none` without
//! an HTTP listener, `kafka=off` without a Kafka listener), with the addresses as bound (port 0
//! resolved). Its format is `cairn_launch::ReadyLine`'s, which also parses it.

use crate::broker::Broker;
use crate::compactor::FlushTimes;
use crate::config::NodeConfig;
use crate::metrics::NodeMetrics;
use crate::peer::{PeerTransport, PeerTransportConfig};
use crate::server::{self, Connections, Phase};
use cairn_storage::group_commit::GroupCommitter;
use cairn_storage::sled_store::SledStore;
use cairn_storage::LogStore;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// An environment the node cannot work with: reported on stderr, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("data directory {path} is not usable: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot open the store in {path}: {reason}")]
    Store { path: String, reason: String },
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: String, reason: String },
    #[error("cannot start: {0}")]
    Start(String),
    #[error("cannot start gossip: {0}")]
    Gossip(String),
}

/// Creates the data directory if needed and proves it writable.
fn check_data_dir(config: &NodeConfig) -> Result<(), FatalError> {
    let fail = |reason: String| FatalError::DataDir {
        path: config.data_dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|error| fail(error.to_string()))?;
    let probe = config.data_dir.join(".cairn-write-probe");
    std::fs::write(&probe, b"probe").map_err(|error| fail(format!("not writable: {error}")))?;
    std::fs::remove_file(&probe).map_err(|error| fail(format!("not writable: {error}")))?;
    Ok(())
}

/// Runs the node inside the actix system until a signal; returns the process exit code.
pub async fn run(config: NodeConfig) -> Result<(), FatalError> {
    check_data_dir(&config)?;
    let store_path = config.data_dir.join("store");
    // A database sled cannot open (damaged files) is moved aside and started empty: every
    // replica then opens shorter than its watermark and is repaired from its peers, or, as
    // the only replica, reports itself corrupted (see `partition::inspect_log`).
    let store_config = cairn_storage::SledConfig {
        durability: config.storage.durability,
        cache_capacity_bytes: config.storage.cache_bytes,
        rebuild_when_damaged: true,
        // Bounded by the config's rule, so it fits a usize.
        segment_bytes: usize::try_from(config.storage.segment_bytes).unwrap_or(usize::MAX),
    };
    // The blob files a compaction's rewrites replace are freed within the compaction's own
    // budget: on a `discard`-mounted file system each freed block costs a device discard,
    // which produce latency would otherwise share with a faster release.
    SledStore::set_blob_release_bytes_per_second(config.retention.compaction_bytes_per_second);
    let store =
        SledStore::open_with(&store_path, store_config).map_err(|error| FatalError::Store {
            path: store_path.display().to_string(),
            reason: error.to_string(),
        })?;
    // This node's own: everything that records into them is handed these (through the
    // broker), so another node in the same process keeps its counts apart.
    let metrics = Arc::new(NodeMetrics::new());
    let flush_times = Arc::new(FlushTimes::new());
    // In flush mode a flush hands a few buffers to the kernel (tens of microseconds), so it runs
    // on the node's own thread at the end of its turn: the committer thread's two wake-ups
    // per flush cost more. An fsync waits for the device, so it keeps a thread of its own.
    let site = match config.storage.durability {
        cairn_storage::Durability::Flush => cairn_storage::FlushSite::Caller,
        cairn_storage::Durability::Fsync => cairn_storage::FlushSite::Thread,
    };
    let committer = GroupCommitter::start_observed(
        store.clone(),
        cairn_storage::GroupCommitConfig {
            site,
            ..cairn_storage::GroupCommitConfig::default()
        },
        Some(Box::new({
            let (metrics, flush_times) = (Arc::clone(&metrics), Arc::clone(&flush_times));
            move |took| {
                metrics.flush_latency.observe(crate::metrics::seconds(took));
                flush_times.observe(took);
            }
        })),
    );
    // With one thread the partition actors share the system arbiter, the thread the network
    // runtime runs on: a produce's hops between its connection task, its partition and the
    // peer links are then queue pushes, not thread wake-ups. On a shared 2-core machine this
    // lowered the half-rate publish p99 by 15-30% (benches/results/one-thread-2026-12-05.md).
    let arbiters: Vec<actix::Arbiter> = if config.threads == 1 {
        Vec::new()
    } else {
        (0..config.threads).map(|_| actix::Arbiter::new()).collect()
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| FatalError::Listen {
            address: config.listen.to_string(),
            reason: error.to_string(),
        })?;
    let bound = listener.local_addr().map_err(|error| FatalError::Listen {
        address: config.listen.to_string(),
        reason: error.to_string(),
    })?;
    let http_listener = match config.http.listen {
        Some(address) => {
            let listen_error = |error: std::io::Error| FatalError::Listen {
                address: format!("{address} (http.listen)"),
                reason: error.to_string(),
            };
            let listener = TcpListener::bind(address).await.map_err(listen_error)?;
            let bound = listener.local_addr().map_err(listen_error)?;
            Some((listener, bound))
        }
        None => None,
    };
    let advertised = advertised_address(&config, bound);
    // The Kafka listener binds before anything starts, like the client listener.
    let kafka_listener = match config.kafka.listen {
        None => None,
        Some(address) => {
            let listen_failed = |error: std::io::Error| FatalError::Listen {
                address: format!("{address} (kafka.listen)"),
                reason: error.to_string(),
            };
            let listener = TcpListener::bind(address).await.map_err(listen_failed)?;
            let bound = listener.local_addr().map_err(listen_failed)?;
            Some((listener, bound))
        }
    };
    let kafka_advertised = kafka_listener.as_ref().map(|(_, bound)| {
        config
            .kafka
            .advertised_address
            .clone()
            .unwrap_or_else(|| bound.to_string())
    });
    if config.cluster.is_clustered() {
        if let Some(notice) =
            crate::peer_auth::startup_notice(config.cluster_secret.as_ref(), bound)
        {
            tracing::warn!("{notice}");
        }
    }
    let peers = peer_transport(&config);
    let config = Arc::new(config);
    let broker = Broker::start(
        Arc::clone(&config),
        store.clone(),
        committer.clone(),
        if arbiters.is_empty() {
            vec![actix::Arbiter::current()]
        } else {
            arbiters.iter().map(|arbiter| arbiter.handle()).collect()
        },
        advertised,
        kafka_advertised.clone(),
        metrics,
        flush_times,
        peers,
    )
    .map_err(FatalError::Start)?;

    let membership = if config.cluster.is_clustered() {
        Some(
            start_membership(
                &config,
                bound,
                &advertised_address(&config, bound),
                kafka_advertised,
                http_listener.as_ref().map(|(_, http_bound)| {
                    config
                        .http
                        .advertised_address
                        .clone()
                        .unwrap_or_else(|| http_bound.to_string())
                }),
                &broker,
            )
            .await?,
        )
    } else {
        None
    };

    let (phase, phase_watch) = watch::channel(Phase::Running);
    let connections = Connections::new(&config.limits);
    // Lives as long as the node: the HTTP listener serves it, and produce catches it up for
    // broker-side schema validation (the broker holds it weakly).
    let schemas = crate::schemas::SchemaRegistry::start(Arc::clone(&broker));
    let http_bound = match http_listener {
        Some((listener, http_bound)) => {
            let registry = crate::metrics::registry(Arc::clone(&broker), connections.clone());
            let router = crate::http::router(
                Arc::clone(&broker),
                registry,
                Arc::clone(&schemas),
                phase_watch.clone(),
            );
            let connections_max = config.http.connections_max as usize;
            tokio::spawn(crate::http::serve(listener, router, connections_max));
            tracing::info!(http = %http_bound, "http listener started");
            Some(http_bound)
        }
        None => None,
    };
    let server = tokio::spawn(server::serve(
        listener,
        Arc::clone(&broker),
        connections.clone(),
        phase_watch.clone(),
    ));
    let kafka_bound = kafka_listener.as_ref().map(|(_, bound)| *bound);
    let kafka_server = kafka_listener.map(|(listener, _)| {
        tokio::spawn(crate::kafka::serve(
            listener,
            Arc::clone(&broker),
            connections.clone(),
            phase_watch,
        ))
    });
    let kafka_shown = kafka_bound.map_or_else(|| "off".to_string(), |bound| bound.to_string());

    let mut signals = Signals::new().map_err(|error| FatalError::Start(error.to_string()))?;
    tokio::select! {
        _ = broker.wait_ready() => {
            // Not `println!`: a closed stdout is no reason to panic.
            let mut stdout = std::io::stdout();
            let ready = cairn_launch::ReadyLine {
                node_id: config.node_id.0,
                listen: bound,
                http: http_bound,
                kafka: kafka_bound,
            };
            let _ = writeln!(stdout, "{ready}");
            let _ = stdout.flush();
            if let Some(membership) = &membership {
                membership.set_ready(true).await;
            }
            tracing::info!(node_id = %config.node_id, listen = %bound, kafka = %kafka_shown, "ready");
            signals.next().await;
        }
        _ = signals.next() => {
            tracing::info!("signal before ready");
        }
    }

    tracing::info!(grace_ms = config.shutdown_grace_ms, "shutting down");
    if let Some(membership) = &membership {
        membership.set_ready(false).await;
    }
    phase.send_replace(Phase::Draining);
    let _ = server.await;
    if let Some(kafka_server) = kafka_server {
        let _ = kafka_server.await;
    }
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    if tokio::time::timeout(grace, connections.all_closed())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; failing in-flight requests with ShuttingDown");
        phase.send_replace(Phase::Expired);
        // Answering ShuttingDown takes a moment; do not wait on a stuck client forever.
        let _ = tokio::time::timeout(Duration::from_millis(500), connections.all_closed()).await;
    }
    for handle in broker.hosted() {
        handle
            .stop(cairn_protocol::ApiError::ShuttingDown, false)
            .await;
    }
    if let Err(error) = committer.request().await {
        tracing::error!(%error, "final flush failed");
    }
    if let Err(error) = store.flush() {
        tracing::error!(%error, "final flush failed");
    }
    if let Some(membership) = membership {
        // The hints task holds the membership only for a moment; if it does now, dropping
        // stops gossip just the same, without waiting for the socket to close.
        if let Ok(membership) = Arc::try_unwrap(membership) {
            membership.shutdown().await;
        }
    }
    // Stopped, not joined: the process exits next, and everything durable is flushed.
    for arbiter in &arbiters {
        arbiter.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

/// This node's outgoing replication traffic, over TCP to the peers' client listeners.
fn peer_transport(config: &NodeConfig) -> Arc<PeerTransport> {
    let mut peer_config =
        PeerTransportConfig::with_frame_bytes_max(config.limits.frame_bytes_max as usize);
    // A restarted peer should hear its leader's heartbeats within a couple of heartbeat
    // periods, not after a long reconnect back-off (it would stand for election for
    // nothing meanwhile). Connection attempts to a dead peer are cheap.
    peer_config.reconnect_backoff_max_ms =
        (config.replica.heartbeat_ms * 2).clamp(peer_config.reconnect_backoff_min_ms, 1_000);
    peer_config.source_ip = Some(config.listen.ip());
    peer_config.secret = config.cluster_secret.clone();
    PeerTransport::new(config.node_id, peer_config)
}

fn advertised_address(config: &NodeConfig, bound: std::net::SocketAddr) -> String {
    config
        .advertised_address
        .clone()
        .unwrap_or_else(|| bound.to_string())
}

/// How often this node looks for changes in the partitions it leads, and publishes them.
pub(crate) const HINTS_PUBLISH_MS: u64 = 100;

/// Rounds after which unchanged hints are published again anyway (chitchat sends nothing for
/// an unchanged value): only a safety net, so that hints could never stay stale for good.
const HINTS_REPUBLISH_ROUNDS: u32 = 100;

/// Starts gossip (UDP on the listener's IP and port unless `--gossip` says otherwise), feeds
/// membership changes to the broker, and keeps this node's leadership hints published.
async fn start_membership<S: LogStore>(
    config: &NodeConfig,
    bound: std::net::SocketAddr,
    advertised: &str,
    kafka_advertised: Option<String>,
    http_advertised: Option<String>,
    broker: &Arc<Broker<S>>,
) -> Result<Arc<cairn_membership::Membership>, FatalError> {
    use cairn_membership::{Generation, Membership, MembershipSettings};
    // Peers reach this node where clients do (see `crate::peer`).
    let client_addr = advertised.parse().unwrap_or(bound);
    let gossip = config.cluster.gossip.unwrap_or(bound);
    let mut settings =
        MembershipSettings::new(CLUSTER_ID, config.node_id, gossip, client_addr, client_addr);
    settings.seeds = config.cluster.seeds.clone();
    settings.kafka_addr = kafka_advertised;
    settings.http_addr = http_advertised;
    // The failure detector follows the gossip rhythm: its prior is one gossip round, and
    // gaps up to 40 rounds (at most 10 s) count towards the mean, so a stopped peer is seen
    // to leave after about phi x gossip_interval_ms.
    let gossip_ms = config.cluster.gossip_interval_ms;
    settings.gossip_interval_ms = gossip_ms;
    settings.initial_heartbeat_interval_ms = gossip_ms;
    settings.heartbeat_interval_max_ms = (gossip_ms * 40).clamp(gossip_ms * 2, 10_000);
    let membership_config = settings
        .validate(Generation::from_start_time())
        .map_err(|error| FatalError::Gossip(error.to_string()))?;
    let (membership, mut changes) = Membership::start(
        membership_config,
        &cairn_membership::transport::UdpTransport,
    )
    .await
    .map_err(|error| FatalError::Gossip(error.to_string()))?;
    tracing::info!(gossip = %membership.gossip_addr(), "gossip started");
    let membership = Arc::new(membership);
    let changes_broker = Arc::clone(broker);
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            match &change {
                // Hints change with every leadership change: not worth an info line each.
                cairn_membership::ClusterChange::Updated(_) => {
                    tracing::debug!(?change, "cluster change")
                }
                _ => tracing::info!(?change, "cluster change"),
            }
            changes_broker.apply_cluster_change(change);
        }
    });
    let hints_broker = Arc::clone(broker);
    let hints_membership = Arc::downgrade(&membership);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(HINTS_PUBLISH_MS));
        // Publishing encodes every hint and wakes the membership view, which decodes every
        // node's hints again: with a thousand partitions that is worth skipping while nothing
        // changed, which is nearly always.
        // Building them walks every hosted partition, so they are built only once a replica's
        // role or epoch changed (the broker counts those changes).
        let mut published: Option<u64> = None;
        let mut unchanged_rounds = 0u32;
        loop {
            tick.tick().await;
            let Some(membership) = hints_membership.upgrade() else {
                return;
            };
            // Read before building: a change made meanwhile moves it past what we record.
            let version = hints_broker.leadership_version();
            if published == Some(version) && unchanged_rounds < HINTS_REPUBLISH_ROUNDS {
                unchanged_rounds += 1;
                continue;
            }
            unchanged_rounds = 0;
            match membership.set_hints(&hints_broker.leadership_hints()).await {
                Ok(()) => published = Some(version),
                Err(error) => {
                    published = None;
                    tracing::debug!(%error, "leadership hints not published");
                }
            }
        }
    });
    Ok(membership)
}

/// Nodes gossip only with nodes of the same cluster id. One fixed id until clusters are named.
const CLUSTER_ID: &str = "cairn";

/// SIGTERM and SIGINT as one stream.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
