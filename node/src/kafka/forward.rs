//! Cluster metadata changes asked of a node that does not lead `__meta`, carried to the leader.
//!
//! Kafka clients send some requests that only `__meta`'s leader can decide to any broker:
//! librdkafka asks the broker it chose for a producer id and keeps asking it, and the Java
//! admin client sends config changes to the least loaded broker. Kafka brokers forward such
//! requests to the controller; a Cairn node does the same: when its own attempt is refused
//! with `NotLeader` naming another node, it asks that node as a Cairn client on its Cairn
//! listener, once (the leader answers from its own `__meta` and never forwards again), within
//! [`FORWARD_TIMEOUT_MS`]. The local attempt appends nothing before it is refused, so the
//! request is decided once. When the leader cannot be asked, the client gets the retriable
//! error and asks again.

use crate::broker::Broker;
use cairn_client::config::ClientConfig;
use cairn_client::connection::Connection;
use cairn_client::error::ClientError;
use cairn_protocol::messages::{
    AlterTopicRequest, CreateTopicRequest, DeleteTopicRequest, InitProducerIdRequest, Request,
    Response, TopicMetadata,
};
use cairn_protocol::ApiError;
use cairn_storage::LogStore;
use std::time::Duration;

/// How long asking the `__meta` leader may take, connecting included.
const FORWARD_TIMEOUT_MS: u64 = 10_000;

pub async fn allocate_producer_id<S: LogStore>(broker: &Broker<S>) -> Result<i64, ApiError> {
    match broker.allocate_producer_id().await {
        Err(refusal) => match forward(
            broker,
            refusal,
            Request::InitProducerId(InitProducerIdRequest {}),
        )
        .await?
        {
            Response::InitProducerId(answer) => Ok(answer.producer_id),
            other => Err(unexpected(&other)),
        },
        allocated => allocated,
    }
}

pub async fn create_topic<S: LogStore>(
    broker: &Broker<S>,
    request: CreateTopicRequest,
) -> Result<TopicMetadata, ApiError> {
    match broker.create_topic(request.clone()).await {
        Err(refusal) => match forward(broker, refusal, Request::CreateTopic(request)).await? {
            Response::CreateTopic(answer) => Ok(answer.topic),
            other => Err(unexpected(&other)),
        },
        created => created,
    }
}

pub async fn delete_topic<S: LogStore>(broker: &Broker<S>, name: &str) -> Result<(), ApiError> {
    match broker.delete_topic(name).await {
        Err(refusal) => {
            let request = Request::DeleteTopic(DeleteTopicRequest {
                name: name.to_string(),
            });
            match forward(broker, refusal, request).await? {
                Response::DeleteTopic(_) => Ok(()),
                other => Err(unexpected(&other)),
            }
        }
        deleted => deleted,
    }
}

pub async fn alter_topic<S: LogStore>(
    broker: &Broker<S>,
    request: AlterTopicRequest,
) -> Result<TopicMetadata, ApiError> {
    match broker.alter_topic(request.clone()).await {
        Err(refusal) => match forward(broker, refusal, Request::AlterTopic(request)).await? {
            Response::AlterTopic(answer) => Ok(answer.topic),
            other => Err(unexpected(&other)),
        },
        altered => altered,
    }
}

fn unexpected(response: &Response) -> ApiError {
    ApiError::Internal {
        reason: format!("the __meta leader answered with {}", response.kind()),
    }
}

/// Asks the leader `refusal` names for `request`, or gives `refusal` back when it names no
/// other node, or one gossip does not know alive.
async fn forward<S: LogStore>(
    broker: &Broker<S>,
    refusal: ApiError,
    request: Request,
) -> Result<Response, ApiError> {
    let ApiError::NotLeader {
        leader_hint: Some(leader),
        ..
    } = &refusal
    else {
        return Err(refusal);
    };
    let leader = *leader;
    if leader == broker.config.node_id {
        return Err(refusal);
    }
    let Some(address) = broker.client_address(leader) else {
        return Err(refusal);
    };
    let address = address.to_string();
    let forward_timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
    let config = ClientConfig::default()
        .bootstrap([address.clone()])
        .client_id(format!(
            "cairn-node-{}-kafka-forward",
            broker.config.node_id.0
        ))
        .request_timeout(forward_timeout)
        .connect_timeout(forward_timeout)
        .requests_in_flight_max(1)
        .frame_bytes_max(broker.config.limits.frame_bytes_max);
    let asked = async {
        let connection = Connection::connect(&address, &config).await?;
        let answer = connection.call(request).await;
        connection.close("answered");
        answer
    };
    match tokio::time::timeout(forward_timeout, asked).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(ClientError::Api(error))) => Err(error),
        Ok(Err(error)) => {
            tracing::debug!(%address, %error, "the __meta leader could not be asked");
            Err(refusal)
        }
        Err(_) => Err(ApiError::Timeout {
            waited_ms: FORWARD_TIMEOUT_MS,
        }),
    }
}
