//! `InitProducerId`: a producer id for an idempotent producer, reserved in `__meta`.

use crate::broker::Broker;
use cairn_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _request: InitProducerIdRequest,
) -> Result<Response, ApiError> {
    let producer_id = broker.allocate_producer_id().await?;
    Ok(Response::InitProducerId(InitProducerIdResponse {
        producer_id,
        producer_epoch: 0,
    }))
}
