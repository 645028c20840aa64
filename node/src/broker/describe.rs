//! What the broker tells clients and operators: topic metadata, descriptions, lagging and
//! damaged replicas, per-partition metrics.

use super::*;

impl<S: LogStore> Broker<S> {
    fn partition_metadata(
        &self,
        catalog: &Catalog<S>,
        topic: &TopicState,
    ) -> Vec<PartitionMetadata> {
        (0..topic.partitions)
            .map(|partition| {
                let snapshot = hosted_partition(catalog, topic, partition)
                    .map(|handle| handle.shared.snapshot());
                let (leader, leader_epoch) =
                    self.reported_leader(&topic.name, partition, snapshot.as_ref());
                PartitionMetadata {
                    partition,
                    leader,
                    leader_epoch,
                    replicas: topic.replicas[partition as usize].clone(),
                }
            })
            .collect()
    }

    pub fn topic_metadata(&self, name: &str) -> Result<TopicMetadata, ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let topic = catalog
            .state
            .topic(name)
            .ok_or_else(|| self.missing_topic(name))?;
        Ok(TopicMetadata {
            name: topic.name.clone(),
            internal: is_internal(&topic.name),
            partitions: self.partition_metadata(&catalog, topic),
        })
    }

    pub fn topic_names(&self) -> Result<Vec<String>, ApiError> {
        self.check_ready()?;
        Ok(self
            .catalog()
            .state
            .topics()
            .map(|topic| topic.name.clone())
            .collect())
    }

    pub fn topic_states(&self) -> Result<Vec<TopicState>, ApiError> {
        self.check_ready()?;
        Ok(self.catalog().state.topics().cloned().collect())
    }

    /// The internal `__meta` partition, as a topic summary for `include_internal`.
    /// On a learner: the leader gossip names, no voters (it does not know them), and the
    /// applied offset as both high watermark and log end.
    /// This node's own replicas that lost committed data, by (topic, partition): being
    /// repaired from the leader, or corrupted beyond repair.
    pub fn damaged_replicas(&self) -> BTreeMap<(String, u32), crate::partition::LogHealth> {
        use crate::partition::LogHealth;
        let mut damaged = BTreeMap::new();
        if let Some(meta) = &self.meta {
            let health = meta.shared.snapshot().health;
            if health != LogHealth::Healthy {
                damaged.insert((meta::META_TOPIC.to_string(), 0), health);
            }
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            let Some(handles) = catalog.partitions.get(&topic.id) else {
                continue;
            };
            for (partition, handle) in handles {
                let health = handle.shared.snapshot().health;
                if health != LogHealth::Healthy {
                    damaged.insert((topic.name.clone(), *partition), health);
                }
            }
        }
        damaged
    }

    /// The partitions this node leads that have followers out of sync (Kafka's ISR sense:
    /// see `PartitionActor::publish_followers`), with those followers. Only a leader knows.
    pub fn lagging_replicas(&self) -> BTreeMap<(String, u32), Vec<NodeId>> {
        let mut lagging = BTreeMap::new();
        let mut note = |topic: &str, partition: u32, shared: &crate::partition::PartitionShared| {
            let nodes = shared.lagging_followers();
            if !nodes.is_empty() {
                lagging.insert((topic.to_string(), partition), nodes);
            }
        };
        if let Some(meta) = &self.meta {
            note(meta::META_TOPIC, 0, &meta.shared);
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            let Some(handles) = catalog.partitions.get(&topic.id) else {
                continue;
            };
            for (partition, handle) in handles {
                note(&topic.name, *partition, &handle.shared);
            }
        }
        lagging
    }

    /// Every hosted replica, `__meta` first, as a metrics scrape sees it: offsets, whether
    /// this node leads, and on the leader each follower's lag and whether a replica is on a
    /// node gossip does not hear (as `cairn cluster status` counts under-replication).
    pub fn partition_metrics(&self) -> Vec<crate::metrics::PartitionMetrics> {
        let heard: std::collections::BTreeSet<NodeId> = self
            .brokers()
            .into_iter()
            .map(|broker| broker.node_id)
            .collect();
        let describe = |topic: &str, partition: u32, handle: &PartitionHandle<S>| {
            let snapshot = handle.shared.snapshot();
            let leader_here = snapshot.role == Role::Leader;
            let damaged = snapshot.health != crate::partition::LogHealth::Healthy;
            let follower_lag = if leader_here {
                handle
                    .shared
                    .follower_matched()
                    .into_iter()
                    .map(|(node, matched)| (node, snapshot.log_end.0.saturating_sub(matched.0)))
                    .collect()
            } else {
                Vec::new()
            };
            let under_replicated = leader_here
                && (damaged
                    || handle.shared.followers().any(|node| !heard.contains(&node))
                    || !handle.shared.lagging_followers().is_empty());
            crate::metrics::PartitionMetrics {
                topic: topic.to_string(),
                partition,
                log_start: snapshot.log_start.0,
                log_end: snapshot.log_end.0,
                high_watermark: snapshot.high_watermark.0,
                leader_here,
                follower_lag,
                under_replicated,
                damaged,
            }
        };
        let mut partitions = Vec::new();
        if let Some(meta) = &self.meta {
            partitions.push(describe(meta::META_TOPIC, 0, meta));
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            let Some(handles) = catalog.partitions.get(&topic.id) else {
                continue;
            };
            for (partition, handle) in handles {
                partitions.push(describe(&topic.name, *partition, handle));
            }
        }
        partitions
    }

    pub fn meta_description(&self) -> PartitionDescription {
        let Some(meta) = &self.meta else {
            let (leader, leader_epoch) = self
                .hinted_leader(meta::META_TOPIC, 0)
                .map_or((None, Epoch::ZERO), |(leader, epoch)| (Some(leader), epoch));
            let applied = *self.applied.borrow();
            return PartitionDescription {
                partition: 0,
                leader,
                leader_epoch,
                replicas: Vec::new(),
                log_start: Offset::ZERO,
                high_watermark: applied,
                log_end: applied,
            };
        };
        let snapshot = meta.shared.snapshot();
        PartitionDescription {
            partition: 0,
            leader: self.live(snapshot.leader),
            leader_epoch: snapshot.epoch,
            replicas: self.meta_voters.clone(),
            log_start: snapshot.log_start,
            high_watermark: snapshot.high_watermark,
            log_end: snapshot.log_end,
        }
    }

    pub fn describe(
        &self,
        name: &str,
    ) -> Result<(TopicConfig, Vec<PartitionDescription>), ApiError> {
        self.check_ready()?;
        let catalog = self.catalog();
        let topic = catalog
            .state
            .topic(name)
            .ok_or_else(|| self.missing_topic(name))?;
        let partitions = (0..topic.partitions)
            .map(|partition| {
                let snapshot = hosted_partition(&catalog, topic, partition)
                    .map(|handle| handle.shared.snapshot());
                // Not hosted here: the leader as gossip names it; the log positions of a
                // replica on another node are not known here (zero).
                let (leader, leader_epoch) =
                    self.reported_leader(&topic.name, partition, snapshot.as_ref());
                PartitionDescription {
                    partition,
                    leader,
                    leader_epoch,
                    replicas: topic.replicas[partition as usize].clone(),
                    log_start: snapshot.as_ref().map(|s| s.log_start).unwrap_or_default(),
                    high_watermark: snapshot
                        .as_ref()
                        .map(|s| s.high_watermark)
                        .unwrap_or_default(),
                    log_end: snapshot.as_ref().map(|s| s.log_end).unwrap_or_default(),
                }
            })
            .collect();
        Ok((topic.config.clone(), partitions))
    }

    /// Nodes a new topic's replicas may be placed on: this node and every node gossip says is
    /// alive, by node id (one still recovering metadata starts its replicas once it applies
    /// the topic). Placement only; a wrong opinion costs balance, not safety.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        let mut live: Vec<NodeId> = self
            .cluster_view()
            .values()
            .filter(|info| info.alive && info.node_id != self.config.node_id)
            .map(|info| info.node_id)
            .collect();
        live.push(self.config.node_id);
        live.sort_unstable();
        live
    }

    /// Every node this one has heard of, alive or not: itself, the `__meta` voters, and every
    /// node gossip has reported.
    pub(super) fn known_nodes(&self) -> std::collections::BTreeSet<NodeId> {
        let mut known: std::collections::BTreeSet<NodeId> =
            self.cluster_view().keys().copied().collect();
        known.extend(self.meta_voters.iter().copied());
        known.insert(self.config.node_id);
        known
    }
}
