//! `InitProducerId` (0-4), for idempotent producers only: a producer id reserved in `__meta`
//! as for a Cairn producer, epoch 0. A transactional id is refused: transactions are not
//! served.
//!
//! Kafka clients send InitProducerId to any broker (librdkafka picks one and keeps asking it),
//! while only the `__meta` leader can reserve an id: another node asks the leader
//! ([`super::forward`]).

use super::errors::code;
use super::Call;
use crate::broker::Broker;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ResponseKind};

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: InitProducerIdRequest,
) -> ResponseKind {
    let mut response = InitProducerIdResponse::default()
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return ResponseKind::InitProducerId(response);
    }
    let allocated = super::forward::allocate_producer_id(broker).await;
    match allocated {
        Ok(producer_id) => {
            response.producer_id = producer_id.into();
            response.producer_epoch = 0;
        }
        Err(error) => response.error_code = code(&error),
    }
    ResponseKind::InitProducerId(response)
}
