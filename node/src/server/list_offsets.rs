//! `ListOffsets`: earliest (log start), latest (high watermark), or the first offset at or
//! after a timestamp, never beyond the high watermark.

use crate::broker::Broker;
use cairn_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, OffsetSpec, Response};
use cairn_protocol::ApiError;
use cairn_replica::Role;
use cairn_storage::LogStore;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    request: ListOffsetsRequest,
) -> Result<Response, ApiError> {
    let handle = broker.partition(&request.topic, request.partition)?;
    let snapshot = handle.shared.snapshot();
    if snapshot.role != Role::Leader {
        return Err(handle.shared.not_leader());
    }
    let (offset, timestamp_ms) = match request.spec {
        OffsetSpec::Earliest => (snapshot.log_start, None),
        OffsetSpec::Latest => (snapshot.high_watermark, None),
        OffsetSpec::Timestamp(timestamp_ms) => {
            match handle.offset_for_timestamp(timestamp_ms).await? {
                Some((offset, found_ms)) => (offset, Some(found_ms)),
                None => (handle.shared.high_watermark(), None),
            }
        }
    };
    Ok(Response::ListOffsets(ListOffsetsResponse {
        offset,
        timestamp_ms,
    }))
}
