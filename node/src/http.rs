//! The node's HTTP listener (`http.listen`, default 127.0.0.1:9644): `/metrics`, `/health` and
//! `/ready` for Prometheus, load balancers and orchestrators, and the schema registry's REST
//! API (Confluent's, see `docs/schema-registry.md`).
//!
//! It is untrusted network input, kept apart from the broker: its own accept loop with its
//! own connection limit (`http.connections_max`; a connection over it is closed at once), a
//! bound on request headers ([`HTTP_HEADER_BYTES_MAX`], answered 431) and on the time to send
//! them ([`HTTP_HEADER_READ_TIMEOUT`]; hyper runs it from the moment it waits for a request,
//! so a silent connection, new or kept alive, is closed after it), and a bound on a
//! connection's life ([`HTTP_CONNECTION_LIFETIME`]) so a client that does not read its
//! response cannot hold a slot for good either. Any other path is 404, a method a path does
//! not serve 405. The operator endpoints are GET (and HEAD) only and read no body; a scrape
//! reads what the partition actors already publish (see [`crate::metrics`]) and never waits on
//! an actor. The schema registry's API ([`crate::schemas::rest`]) is served here too, and
//! bounds the bodies it reads.

use crate::broker::Broker;
use crate::partition::LogHealth;
use crate::server::Phase;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cairn_storage::LogStore;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Bytes of request line and headers a request may carry; more is answered 431. hyper's
/// smallest read buffer is 8 KiB; this is its default header limit.
pub const HTTP_HEADER_BYTES_MAX: usize = 16 * 1024;

/// Time a client has to send a whole request head, counted from when the server waits for
/// one (after the connection opened, or after the previous response); then it is closed.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is asked to close (after the request in progress) this long after it opened,
/// and is dropped [`HTTP_CLOSE_GRACE`] later if that request is still not done (a client not
/// reading its response); a scraper simply reconnects.
pub const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How long a connection asked to close may take to finish its request.
const HTTP_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Damaged replicas named in a `/ready` refusal at most; the rest are counted.
const READY_REASONS_MAX: usize = 5;

/// What the handlers share.
struct HttpState<S: LogStore> {
    broker: Arc<Broker<S>>,
    registry: Registry,
    phase: watch::Receiver<Phase>,
}

/// The routes: every one GET (HEAD answered alike, without a body).
pub fn router<S: LogStore>(
    broker: Arc<Broker<S>>,
    registry: Registry,
    schemas: Arc<crate::schemas::SchemaRegistry<S>>,
    phase: watch::Receiver<Phase>,
) -> Router {
    let state = Arc::new(HttpState {
        broker,
        registry,
        phase,
    });
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/health", get(health))
        .route("/ready", get(ready::<S>))
        .fallback(not_found)
        .with_state(state)
        .merge(crate::schemas::rest::router(schemas))
}

async fn metrics<S: LogStore>(State(state): State<Arc<HttpState<S>>>) -> impl IntoResponse {
    let text = crate::metrics::encode(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Live: the process answers.
async fn health() -> &'static str {
    "ok\n"
}

async fn ready<S: LogStore>(State(state): State<Arc<HttpState<S>>>) -> (StatusCode, String) {
    match readiness(&state.broker, *state.phase.borrow()) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Ready: serving (not shutting down), cluster metadata caught up, and no hosted replica
/// missing committed data. Otherwise why not, in a line for an operator.
fn readiness<S: LogStore>(broker: &Broker<S>, phase: Phase) -> Result<(), String> {
    if phase != Phase::Running {
        return Err("shutting down".to_string());
    }
    broker.check_ready().map_err(|error| error.to_string())?;
    let damaged = broker.damaged_replicas();
    if damaged.is_empty() {
        return Ok(());
    }
    let mut named: Vec<String> = damaged
        .iter()
        .take(READY_REASONS_MAX)
        .map(|((topic, partition), health)| match health {
            LogHealth::Repairing { until } => {
                format!("{topic}/{partition} is repairing from its leader (until offset {until})")
            }
            LogHealth::Corrupted { offset } => {
                format!("{topic}/{partition} lost committed data from offset {offset}")
            }
            LogHealth::Healthy => format!("{topic}/{partition} is healthy"),
        })
        .collect();
    if damaged.len() > READY_REASONS_MAX {
        named.push(format!("{} more", damaged.len() - READY_REASONS_MAX));
    }
    Err(format!("damaged replicas: {}", named.join("; ")))
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this node serves /metrics, /health, /ready and the schema registry \
         (/subjects, /schemas, /config, /compatibility)\n",
    )
}

/// Accepts HTTP connections until the process ends (it answers `/ready` with 503 while the
/// node drains, which is what a load balancer needs to see).
pub async fn serve(listener: TcpListener, router: Router, connections_max: usize) {
    let permits = Arc::new(Semaphore::new(connections_max));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors is transient; pause instead of spinning.
                tracing::warn!(%error, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "http connection refused: http.connections_max reached");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_READ_TIMEOUT)
                .max_buf_size(HTTP_HEADER_BYTES_MAX);
            let connection = builder.serve_connection(TokioIo::new(socket), service);
            let mut connection = std::pin::pin!(connection);
            let finished = tokio::select! {
                finished = connection.as_mut() => Some(finished),
                _ = tokio::time::sleep(HTTP_CONNECTION_LIFETIME) => None,
            };
            let finished = match finished {
                Some(finished) => finished,
                None => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(HTTP_CLOSE_GRACE, connection).await {
                        Ok(finished) => finished,
                        Err(_) => return,
                    }
                }
            };
            if let Err(error) = finished {
                tracing::debug!(%peer, %error, "http connection ended");
            }
        });
    }
}
