//! `DescribeCluster` (0-1): the cluster id, the controller and every broker with its Kafka
//! address, the same as a Metadata answer gives. Cairn has no Kafka controller; the node
//! named is the `__meta` leader, which decides topic creation, deletion and growth, as in
//! Metadata ([`super::metadata::controller_id`]). Only broker endpoints are described
//! (endpoint type 1); Cairn has no separate controller endpoints (UNSUPPORTED_ENDPOINT_TYPE).
//! No authorized operations are reported (Cairn has no ACLs).

use super::ids::{broker_id, host_port};
use super::metadata::{controller_id, CLUSTER_ID};
use super::Call;
use crate::broker::Broker;
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;

const ENDPOINT_BROKERS: i8 = 1;

pub fn handle<S: LogStore>(
    broker: &Broker<S>,
    call: Call,
    request: DescribeClusterRequest,
) -> ResponseKind {
    let mut response =
        DescribeClusterResponse::default().with_cluster_id(StrBytes::from_static_str(CLUSTER_ID));
    if call.version >= 1 {
        response.endpoint_type = ENDPOINT_BROKERS;
        if request.endpoint_type != ENDPOINT_BROKERS {
            response.error_code = ResponseError::UnsupportedEndpointType.code();
            response.error_message = Some(StrBytes::from_static_str(
                "Cairn describes broker endpoints only (endpoint type 1)",
            ));
            return ResponseKind::DescribeCluster(response);
        }
    }
    let brokers = broker.kafka_brokers();
    response.controller_id = controller_id(broker, &brokers);
    response.brokers = brokers
        .iter()
        .filter_map(|(node, address)| {
            let (host, port) = host_port(address)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(broker_id(*node))
                    .with_host(StrBytes::from_string(host))
                    .with_port(port),
            )
        })
        .collect();
    ResponseKind::DescribeCluster(response)
}
