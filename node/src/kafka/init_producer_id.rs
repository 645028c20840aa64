//! `InitProducerId` (0-4), for idempotent producers only: a producer id reserved in `__meta`
//! as for a Cairn producer, epoch 0. A transactional id is refused: transactions are not
//! served.
//!
//! Kafka clients send InitProducerId to any broker (librdkafka picks one and keeps asking it),
//! while only the `__meta` leader can reserve an id. A node that does not lead `__meta`
//! therefore asks the leader itself, as a Cairn client on the leader's Cairn listener (one
//! hop: the leader answers from its own `__meta`, never forwards), bounded by
//! [`FORWARD_TIMEOUT_MS`]; when that fails the producer gets the retriable error.

use super::errors::code;
use super::Call;
use crate::broker::Broker;
use cairn_client::config::ClientConfig;
use cairn_client::connection::Connection;
use cairn_client::error::ClientError;
use cairn_protocol::messages::{InitProducerIdRequest as CairnInit, Request, Response};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ResponseKind};
use std::time::Duration;

/// How long asking the `__meta` leader for an id may take, connecting included.
const FORWARD_TIMEOUT_MS: u64 = 10_000;

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
    let allocated = match broker.allocate_producer_id().await {
        Err(ApiError::NotLeader {
            leader_hint: Some(leader),
            epoch,
        }) if leader != broker.config.node_id => match broker.client_address(leader) {
            Some(address) => ask_leader(&address.to_string()).await,
            None => Err(ApiError::NotLeader {
                leader_hint: Some(leader),
                epoch,
            }),
        },
        allocated => allocated,
    };
    match allocated {
        Ok(producer_id) => {
            response.producer_id = producer_id.into();
            response.producer_epoch = 0;
        }
        Err(error) => response.error_code = code(&error),
    }
    ResponseKind::InitProducerId(response)
}

/// A producer id from the `__meta` leader at `address` (its Cairn listener).
async fn ask_leader(address: &str) -> Result<i64, ApiError> {
    let config = ClientConfig {
        bootstrap: vec![address.to_string()],
        client_id: "cairn-kafka-init-producer-id".to_string(),
        request_timeout_ms: FORWARD_TIMEOUT_MS,
        connect_timeout_ms: FORWARD_TIMEOUT_MS,
        requests_in_flight_max: 1,
        ..ClientConfig::default()
    };
    let asked = async {
        let connection = Connection::connect(address, &config).await?;
        let answer = connection.call(Request::InitProducerId(CairnInit {})).await;
        connection.close("answered");
        answer
    };
    let answer = tokio::time::timeout(Duration::from_millis(FORWARD_TIMEOUT_MS), asked).await;
    match answer {
        Ok(Ok(Response::InitProducerId(answer))) => Ok(answer.producer_id),
        Ok(Ok(other)) => Err(ApiError::Internal {
            reason: format!(
                "the __meta leader answered InitProducerId with {}",
                other.kind()
            ),
        }),
        Ok(Err(ClientError::Api(error))) => Err(error),
        Ok(Err(error)) => Err(ApiError::NotReady {
            reason: format!("the __meta leader at {address} could not be asked: {error}"),
        }),
        Err(_) => Err(ApiError::Timeout {
            waited_ms: FORWARD_TIMEOUT_MS,
        }),
    }
}
