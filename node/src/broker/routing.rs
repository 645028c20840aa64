//! Where a request goes: hosted partitions, quorum checks, the addresses of other nodes.

use super::*;

impl<S: LogStore> Broker<S> {
    /// The partition a fetch reads: any topic partition as [`Broker::partition`], and also
    /// `__meta`, which learners fetch from its leader (produce never reaches `__meta`).
    pub fn fetch_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionHandle<S>, ApiError> {
        if topic != meta::META_TOPIC {
            return self.partition(topic, partition);
        }
        self.check_ready()?;
        if partition != 0 {
            return Err(ApiError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: 1,
            });
        }
        self.meta.clone().ok_or_else(|| {
            let (leader_hint, epoch) = self
                .hinted_leader(meta::META_TOPIC, 0)
                .map_or((None, Epoch::ZERO), |(leader, epoch)| (Some(leader), epoch));
            ApiError::NotLeader { leader_hint, epoch }
        })
    }

    /// `topic`'s config, if it exists (what produce checks: keys, schema ids).
    pub fn topic_config(&self, topic: &str) -> Option<cairn_protocol::messages::TopicConfig> {
        self.catalog()
            .state
            .topic(topic)
            .map(|state| state.config.clone())
    }

    /// The partition handle for a request, or the typed reason there is none.
    /// Whether `topic` exists and is compacted (its records need keys).
    pub fn is_compacted(&self, topic: &str) -> bool {
        self.catalog()
            .state
            .topic(topic)
            .is_some_and(|state| state.config.is_compacted())
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<PartitionHandle<S>, ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let state = catalog
            .state
            .topic(topic)
            .ok_or_else(|| self.missing_topic(topic))?;
        if partition >= state.partitions {
            return Err(ApiError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: state.partitions,
            });
        }
        if let Some(handle) = hosted_partition(&catalog, state, partition) {
            self.check_quorum_alive(&state.replicas[partition as usize])?;
            return Ok(handle.clone());
        }
        let (leader_hint, epoch) = match self.hinted_leader(topic, partition) {
            Some((leader, epoch)) => (Some(leader), epoch),
            None => (
                state.replicas[partition as usize].first().copied(),
                Epoch::ZERO,
            ),
        };
        Err(ApiError::NotLeader { leader_hint, epoch })
    }

    /// Refuses with `NotEnoughReplicas` when gossip says fewer than a majority of `replicas`
    /// are alive (this node counts as alive), as a Kafka leader refuses below
    /// `min.insync.replicas`. Without a majority no replica can commit, and a leader's lease
    /// lapses with it, so this is a better reason for a refusal that is coming anyway; it is
    /// only ever a refusal, never consulted to accept anything.
    pub(super) fn check_quorum_alive(&self, replicas: &[NodeId]) -> Result<(), ApiError> {
        if !self.config.cluster.is_clustered() {
            return Ok(());
        }
        let view = self.cluster_view();
        let alive = replicas
            .iter()
            .filter(|node| {
                **node == self.config.node_id || view.get(node).is_some_and(|info| info.alive)
            })
            .count();
        let needed = replicas.len() / 2 + 1;
        if alive < needed {
            return Err(ApiError::NotEnoughReplicas {
                needed: needed as u16,
                alive: alive as u16,
            });
        }
        Ok(())
    }

    /// The client address of every node gossip ever told of, alive or not.
    pub fn last_known_addresses(&self) -> BTreeMap<NodeId, String> {
        self.cluster_view()
            .values()
            .map(|info| (info.node_id, info.client_addr.to_string()))
            .collect()
    }

    /// This node and every node gossip says is alive, by node id.
    pub fn brokers(&self) -> Vec<BrokerInfo> {
        let mut brokers = vec![BrokerInfo {
            node_id: self.config.node_id,
            address: self.advertised_address.clone(),
        }];
        for info in self.cluster_view().values() {
            if info.alive && info.node_id != self.config.node_id {
                brokers.push(BrokerInfo {
                    node_id: info.node_id,
                    address: info.client_addr.to_string(),
                });
            }
        }
        brokers.sort_by_key(|broker| broker.node_id);
        brokers
    }

    /// The address Kafka clients are told to reach this node at, when it runs a Kafka
    /// listener.
    pub fn kafka_advertised_address(&self) -> Option<&str> {
        self.kafka_advertised_address.as_deref()
    }

    /// The Kafka address of this node and of every node gossip says is alive and runs a
    /// Kafka listener, by node id: the brokers a Kafka Metadata answer lists.
    pub fn kafka_brokers(&self) -> Vec<(NodeId, String)> {
        let mut brokers: Vec<(NodeId, String)> = self
            .kafka_advertised_address
            .iter()
            .map(|address| (self.config.node_id, address.clone()))
            .collect();
        for info in self.cluster_view().values() {
            if info.alive && info.node_id != self.config.node_id {
                if let Some(address) = &info.kafka_addr {
                    brokers.push((info.node_id, address.clone()));
                }
            }
        }
        brokers.sort();
        brokers
    }

    /// The Cairn listener address of a node gossip says is alive (not this node's own).
    pub fn client_address(&self, node: NodeId) -> Option<std::net::SocketAddr> {
        self.cluster_view()
            .get(&node)
            .filter(|info| info.alive)
            .map(|info| info.client_addr)
    }

    /// The HTTP listener address (HOST:PORT) of a node gossip says is alive and runs one (not
    /// this node's own).
    pub fn http_address(&self, node: NodeId) -> Option<String> {
        self.cluster_view()
            .get(&node)
            .filter(|info| info.alive)
            .and_then(|info| info.http_addr.clone())
    }

    pub(super) fn cluster_view(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, NodeInfo>> {
        self.cluster
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
