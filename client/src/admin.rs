//! [`Admin`]: create, delete, list and describe topics; the cluster's status.

use crate::cluster::{unexpected, Cluster};
use crate::config::ClientConfig;
use crate::error::Result;
use cairn_protocol::messages::{
    ClusterStatusRequest, ClusterStatusResponse, CreateTopicRequest, DeleteTopicRequest,
    DescribeTopicRequest, DescribeTopicResponse, ListTopicsRequest, TopicConfig, TopicMetadata,
    TopicSummary,
};
use cairn_protocol::{Request, Response};
use std::sync::Arc;

/// Topic administration. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn example() -> Result<(), cairn_client::ClientError> {
/// use cairn_client::{Admin, ClientConfig, TopicConfig};
///
/// let admin = Admin::new(ClientConfig::new("127.0.0.1:7171")?)?;
/// admin.create_topic("orders", 3, None, TopicConfig::default()).await?;
/// for topic in admin.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partitions);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Admin {
    cluster: Arc<Cluster>,
}

impl Admin {
    /// An admin client for the cluster `config` names. Connects lazily, on the first call.
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Cluster::new(config)?,
        })
    }

    /// Creates `name` with `partitions` partitions. `replication_factor` `None` takes the
    /// cluster default. Returns the new topic's metadata.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        config: TopicConfig,
    ) -> Result<TopicMetadata> {
        let reply = self
            .cluster
            .call_any(Request::CreateTopic(CreateTopicRequest {
                name: name.to_owned(),
                partitions,
                replication_factor,
                config,
            }))
            .await?;
        self.cluster.invalidate();
        match reply {
            Response::CreateTopic(reply) => Ok(reply.topic),
            other => Err(unexpected("CreateTopic", &other)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let reply = self
            .cluster
            .call_any(Request::DeleteTopic(DeleteTopicRequest {
                name: name.to_owned(),
            }))
            .await?;
        self.cluster.invalidate();
        match reply {
            Response::DeleteTopic(_) => Ok(()),
            other => Err(unexpected("DeleteTopic", &other)),
        }
    }

    /// User topics (internal ones such as `__meta` are left out).
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        self.list_topics_with(false).await
    }

    /// Topics, internal ones included when `include_internal`.
    pub async fn list_topics_with(&self, include_internal: bool) -> Result<Vec<TopicSummary>> {
        let reply = self
            .cluster
            .call_any(Request::ListTopics(ListTopicsRequest { include_internal }))
            .await?;
        match reply {
            Response::ListTopics(reply) => Ok(reply.topics),
            other => Err(unexpected("ListTopics", &other)),
        }
    }

    /// Per partition: leader, replicas, epoch, log start, high watermark and log end.
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse> {
        let reply = self
            .cluster
            .call_any(Request::DescribeTopic(DescribeTopicRequest {
                name: name.to_owned(),
            }))
            .await?;
        match reply {
            Response::DescribeTopic(reply) => Ok(reply),
            other => Err(unexpected("DescribeTopic", &other)),
        }
    }

    /// One node's view of the cluster: nodes and their liveness (that node's gossip
    /// opinion), every partition's replicas and leader, and replicas on nodes it does not
    /// hear. Internal partitions (`__meta`) are included when `include_internal`.
    pub async fn cluster_status(&self, include_internal: bool) -> Result<ClusterStatusResponse> {
        let reply = self
            .cluster
            .call_any(Request::ClusterStatus(ClusterStatusRequest {
                include_internal,
            }))
            .await?;
        match reply {
            Response::ClusterStatus(reply) => Ok(reply),
            other => Err(unexpected("ClusterStatus", &other)),
        }
    }

    /// Topic metadata as producers and consumers see it (leaders per partition).
    pub async fn topic_metadata(&self, name: &str) -> Result<Arc<TopicMetadata>> {
        self.cluster.invalidate();
        self.cluster.topic(name).await
    }
}
