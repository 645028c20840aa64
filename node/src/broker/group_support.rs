//! What the consumer-group coordinators and the group request handlers need from the broker.

use super::*;

/// Consumer groups: what the coordinators and the group request handlers need.
impl<S: LogStore> Broker<S> {
    pub fn groups(&self) -> &Arc<crate::groups::Coordinators<S>> {
        &self.groups
    }

    /// Milliseconds on this node's monotonic clock (group session deadlines).
    pub fn now_ms(&self) -> u64 {
        self.clock.now().0
    }

    /// The partition count of `__offsets` and its partitions hosted here; `None` while the
    /// topic does not exist.
    #[allow(clippy::type_complexity)]
    pub fn offsets_handles(&self) -> Option<(u32, Vec<(u32, PartitionHandle<S>)>)> {
        let catalog = self.catalog();
        let topic = catalog.state.topic(OFFSETS_TOPIC)?;
        let handles = (0..topic.partitions)
            .filter_map(|partition| {
                hosted_partition(&catalog, topic, partition).map(|h| (partition, h.clone()))
            })
            .collect();
        Some((topic.partitions, handles))
    }

    /// Partition counts of the topics groups may subscribe to (every non-internal topic).
    pub fn group_topic_counts(&self) -> TopicPartitionCounts {
        self.catalog()
            .state
            .topics()
            .filter(|topic| !is_internal(&topic.name))
            .map(|topic| (topic.name.clone(), topic.partitions))
            .collect()
    }

    /// (log start, high watermark) of a partition hosted here, for lag and offset resets.
    /// A follower's high watermark may trail the leader's a little: lag reads high, not low.
    pub fn partition_bounds(&self, topic: &str, partition: u32) -> Option<PartitionBounds> {
        let catalog = self.catalog();
        let state = catalog.state.topic(topic)?;
        let snapshot = hosted_partition(&catalog, state, partition)?
            .shared
            .snapshot();
        Some((snapshot.log_start, snapshot.high_watermark))
    }

    /// The leader of a partition: the local replica's opinion where hosted, else gossip's.
    pub fn partition_leader(&self, topic: &str, partition: u32) -> Option<NodeId> {
        let local = {
            let catalog = self.catalog();
            let state = catalog.state.topic(topic)?;
            hosted_partition(&catalog, state, partition).map(|h| h.shared.snapshot().leader)
        };
        match local {
            Some(leader) => leader,
            None => self
                .hinted_leader(topic, partition)
                .map(|(leader, _)| leader),
        }
    }

    /// The client address of a node (this one, or one gossip says is alive).
    pub fn broker_address(&self, node: NodeId) -> Option<String> {
        self.brokers()
            .into_iter()
            .find(|broker| broker.node_id == node)
            .map(|broker| broker.address)
    }

    /// Creates `__offsets` if it does not exist: here when this node leads `__meta`, else by
    /// asking the `__meta` leader (a `FindCoordinator` makes it do the same).
    pub async fn ensure_offsets_topic(&self, group_id: &str) -> Result<(), ApiError> {
        self.check_ready()?;
        if self.catalog().state.topic(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        let meta_leader = match &self.meta {
            Some(meta) => meta.shared.snapshot().leader,
            None => self
                .hinted_leader(meta::META_TOPIC, 0)
                .map(|(leader, _)| leader),
        };
        let Some(meta_leader) = meta_leader else {
            return Err(ApiError::CoordinatorNotAvailable);
        };
        if meta_leader == self.config.node_id {
            let live = self.live_nodes().len() as u16;
            // As Kafka does for its offsets topic: wait (the client retries) until as many
            // nodes are alive as the replication factor wants, rather than create it with
            // fewer replicas because a group was used before every node had joined; a
            // replication factor is never raised later.
            let known = self.known_nodes().len() as u16;
            let replication_factor = known.min(OFFSETS_REPLICATION_FACTOR_MAX);
            if live < replication_factor {
                tracing::info!(
                    live,
                    replication_factor,
                    "waiting for nodes before creating __offsets"
                );
                return Err(ApiError::CoordinatorNotAvailable);
            }
            let request = CreateTopicRequest {
                name: OFFSETS_TOPIC.to_string(),
                partitions: self.config.groups.offsets_partitions,
                replication_factor: Some(replication_factor),
                config: TopicConfig::default(),
            };
            tracing::info!(partitions = request.partitions, replication_factor = ?request.replication_factor, "creating __offsets");
            return match self.create_topic_unchecked(request).await {
                Ok(_) | Err(ApiError::TopicAlreadyExists { .. }) => Ok(()),
                Err(error) => Err(error),
            };
        }
        let address = self
            .broker_address(meta_leader)
            .ok_or(ApiError::CoordinatorNotAvailable)?;
        let client = cairn_client::ClientConfig::default()
            .client_id(format!("cairn-node-{}-groups", self.config.node_id))
            .request_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1));
        let connection = cairn_client::Connection::connect(&address, &client)
            .await
            .map_err(|error| ApiError::Internal {
                reason: error.to_string(),
            })?;
        let request = cairn_protocol::Request::FindCoordinator(FindCoordinatorRequest {
            group_id: group_id.to_string(),
        });
        // Its answer does not matter: the creation, if it happened, reaches this node
        // through `__meta`.
        let _ = connection.call(request).await;
        Ok(())
    }
}
