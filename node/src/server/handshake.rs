//! `Handshake`: agree on a protocol version and tell the client the server's limits.

use crate::broker::Broker;
use cairn_protocol::frame::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use cairn_protocol::messages::{HandshakeRequest, HandshakeResponse, Response, ServerLimits};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: HandshakeRequest,
) -> Result<Response, ApiError> {
    if request.min_version > request.max_version
        || request.max_version < PROTOCOL_VERSION_MIN
        || request.min_version > PROTOCOL_VERSION_MAX
    {
        return Err(ApiError::UnsupportedVersion {
            requested: request.max_version,
            min: PROTOCOL_VERSION_MIN,
            max: PROTOCOL_VERSION_MAX,
        });
    }
    let limits = &broker.config.limits;
    Ok(Response::Handshake(HandshakeResponse {
        version: request.max_version.min(PROTOCOL_VERSION_MAX),
        node_id: broker.node_id(),
        limits: ServerLimits {
            frame_bytes_max: limits.frame_bytes_max,
            batch_bytes_max: limits.batch_bytes_max,
            record_bytes_max: limits.record_bytes_max,
            requests_in_flight_max: limits.requests_in_flight_max,
        },
    }))
}
