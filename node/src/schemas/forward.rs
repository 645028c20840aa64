//! Writes go through the leader of `_schemas`: a registry write that reaches another node is
//! forwarded to the leader's HTTP listener, as Confluent's registry followers forward to the
//! primary.
//!
//! Only the leader's registry appends to `_schemas`, and no client may produce to it (an
//! internal topic is written by the cluster only), so every record in it was planned by a
//! registry that validated the request: a forged soft delete or compatibility change sent by
//! a plain Kafka or Cairn client is refused as any internal-topic write is. The leader's
//! registry also plans every write under one lock, so writes no longer race each other.
//!
//! The forwarding node adds nothing the leader trusts: the request goes on as the client sent
//! it (method, path, query, content type and a bounded body), with [`FORWARDED_HEADER`] so
//! the receiver never forwards it again. A receiver that no longer leads answers 503 with
//! [`NOT_LEADER_HEADER`], and the forwarder asks the new leader instead. A connection that
//! could not be opened is retried until the deadline; once a request was sent, its outcome
//! is the client's to see (a write is never sent twice by the forwarder).

use super::{RuntimeError, SchemaRegistry, Writer, WRITE_TIMEOUT};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_protocol::NodeId;
use cairn_storage::LogStore;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set on a forwarded request (the forwarding node's id): its receiver answers it itself.
pub const FORWARDED_HEADER: &str = "x-cairn-forwarded-by";

/// Set on the 503 of a node asked to write that does not lead `_schemas`.
pub const NOT_LEADER_HEADER: &str = "x-cairn-not-schemas-leader";

/// Confluent's code for "unknown leader": no node leads `_schemas` here and now.
pub const UNKNOWN_LEADER_CODE: u32 = 50004;

/// Confluent's code for "error while forwarding the request to the primary".
pub const FORWARD_FAILED_CODE: u32 = 50003;

/// How long a forwarded write may take in all: the leader's own write budget and a margin
/// for finding the leader and reaching it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(WRITE_TIMEOUT.as_secs() + 5);

/// Time to open a connection to the leader's HTTP listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause before asking again for the leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Bytes of a leader's answer read at most (head and body each); the registry's answers are
/// small JSON documents.
const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// Whether a request writes the registry: every PUT and DELETE, and a registration
/// (`POST /subjects/{s}/versions`). A lookup (`POST /subjects/{s}`) and a compatibility check
/// (`POST /compatibility/...`) only read.
pub fn is_write(method: &Method, path: &str) -> bool {
    match *method {
        Method::PUT | Method::DELETE => true,
        Method::POST => {
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            matches!(segments.as_slice(), ["subjects", subject, "versions"] if !subject.is_empty())
        }
        _ => false,
    }
}

fn refuse(status: StatusCode, error_code: u32, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, super::rest::CONTENT_TYPE)],
        serde_json::json!({ "error_code": error_code, "message": message }).to_string(),
    )
        .into_response()
}

/// The middleware on the registry's routes: a write is served here when this node leads
/// `_schemas`, else forwarded to the node that does.
pub async fn route_writes<S: LogStore>(
    State(registry): State<Arc<SchemaRegistry<S>>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_write(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, super::rest::BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(error) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                413,
                format!(
                    "the request body could not be read within {} bytes: {error}",
                    super::rest::BODY_BYTES_MAX
                ),
            )
        }
    };
    let mut last;
    loop {
        let writer = match registry.writer(deadline).await {
            Ok(writer) => writer,
            Err(error) => return super::Failure::from(error).into_response(),
        };
        match writer {
            Writer::Here => return next.run(Request::from_parts(parts, Body::from(body))).await,
            Writer::Node { node, .. } if forwarded => {
                let mut response = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    UNKNOWN_LEADER_CODE,
                    format!("this node does not lead _schemas (node {node} does); retry there"),
                );
                response
                    .headers_mut()
                    .insert(NOT_LEADER_HEADER, HeaderValue::from(node.0));
                return response;
            }
            Writer::Node {
                node,
                http_address: None,
            } => last = format!("node {node} leads _schemas but gossips no HTTP address"),
            Writer::Node {
                node,
                http_address: Some(address),
            } => {
                let me = registry.node_id();
                match forward(&address, &parts, body.clone(), me, deadline).await {
                    Ok(response) if !response.headers().contains_key(NOT_LEADER_HEADER) => {
                        return response
                    }
                    Ok(_) => last = format!("node {node} no longer leads _schemas"),
                    Err(Forward::NotSent(reason)) => {
                        last = format!("node {node} ({address}) not reached: {reason}")
                    }
                    Err(Forward::Failed(reason)) => {
                        return refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            FORWARD_FAILED_CODE,
                            format!(
                                "the write was sent to the _schemas leader, node {node} \
                                 ({address}), but its answer was lost: {reason}; it may or \
                                 may not have been applied"
                            ),
                        )
                    }
                }
            }
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                FORWARD_FAILED_CODE,
                format!("the write could not be forwarded to the leader of _schemas: {last}"),
            );
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

enum Forward {
    /// Nothing reached the leader: asking again is safe.
    NotSent(String),
    /// The request may have been applied; its answer is not known.
    Failed(String),
}

/// Sends the request to `address` on a fresh connection and reads the answer, within the
/// deadline.
async fn forward(
    address: &str,
    parts: &Parts,
    body: Bytes,
    from: NodeId,
    deadline: Instant,
) -> Result<Response, Forward> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| Forward::NotSent("the connection timed out".to_string()))?
        .map_err(|error| Forward::NotSent(error.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(ANSWER_BYTES_MAX)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|error| Forward::NotSent(error.to_string()))?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Driven until the answer is read (then the sender drops and it ends), at most until the
    // deadline.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(remaining, connection).await;
    });
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_string();
    let mut request = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .header(header::HOST, address)
        .header(header::CONNECTION, "close")
        .header(FORWARDED_HEADER, from.0);
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, content_type.clone());
    }
    let request = request
        .body(Body::from(body))
        .map_err(|error| Forward::NotSent(error.to_string()))?;
    let answer = tokio::time::timeout(remaining, sender.send_request(request))
        .await
        .map_err(|_| Forward::Failed("no answer before the deadline".to_string()))?
        .map_err(|error| Forward::Failed(error.to_string()))?;
    let (head, answer_body) = answer.into_parts();
    let remaining = deadline.saturating_duration_since(Instant::now());
    let bytes = tokio::time::timeout(
        remaining,
        axum::body::to_bytes(Body::new(answer_body), ANSWER_BYTES_MAX),
    )
    .await
    .map_err(|_| Forward::Failed("the answer did not arrive before the deadline".to_string()))?
    .map_err(|error| Forward::Failed(error.to_string()))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = head.status;
    for name in [
        header::CONTENT_TYPE,
        header::HeaderName::from_static(NOT_LEADER_HEADER),
    ] {
        if let Some(value) = head.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(response)
}

impl<S: LogStore> SchemaRegistry<S> {
    /// Which node writes now: this one when it leads `_schemas`, else the leader and its
    /// HTTP address. Creates `_schemas` first when it does not exist, and waits (until
    /// `deadline`) while no node leads it.
    pub async fn writer(&self, deadline: Instant) -> Result<Writer, RuntimeError> {
        self.ensure_topic(deadline).await?;
        loop {
            match self.broker.partition_leader(super::SCHEMAS_TOPIC, 0) {
                Some(leader) if leader == self.broker.config.node_id => return Ok(Writer::Here),
                Some(node) => {
                    return Ok(Writer::Node {
                        node,
                        http_address: self.broker.http_address(node),
                    })
                }
                None if Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                None => {
                    return Err(RuntimeError::Unavailable {
                        reason: "no node leads _schemas yet".to_string(),
                    })
                }
            }
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.broker.config.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_puts_and_deletes_are_writes_and_nothing_else_is() {
        for (method, path) in [
            (Method::POST, "/subjects/orders-value/versions"),
            (Method::PUT, "/config"),
            (Method::PUT, "/config/orders-value"),
            (Method::DELETE, "/config/orders-value"),
            (Method::DELETE, "/subjects/orders-value"),
            (Method::DELETE, "/subjects/orders-value/versions/3"),
        ] {
            assert!(is_write(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/subjects/orders-value"),
            (
                Method::POST,
                "/compatibility/subjects/orders-value/versions/latest",
            ),
            (Method::POST, "/subjects//versions"),
            (Method::POST, "/subjects/a/versions/1"),
            (Method::GET, "/subjects/orders-value/versions"),
            (Method::GET, "/config"),
        ] {
            assert!(!is_write(&method, path), "{method} {path}");
        }
    }
}
