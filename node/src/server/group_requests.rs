//! Consumer-group requests (`ConsumerGroupHeartbeat`, `OffsetCommit`, ...): the wire contract
//! is in `cairn_protocol::group` and the coordinator's state machine in `crate::group`; until
//! a node runs coordinators on `__offsets`, it refuses these requests with a typed error rather
//! than leaving a client waiting.

use cairn_protocol::{ApiError, Request, Response};

pub fn handle(request: Request) -> Result<Response, ApiError> {
    Err(ApiError::InvalidRequest {
        reason: format!(
            "{} is not served yet: this node runs no group coordinator",
            request.kind()
        ),
    })
}
