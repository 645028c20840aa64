//! Gossip's view of the other nodes and the leadership hints built from it (hints only:
//! epochs decide).

use super::*;

impl<S: LogStore> Broker<S> {
    /// Folds one membership change into the view, and routes peers to their new address. A
    /// node that left and led a partition hosted here is reported to that replica as
    /// suspected: a hint that may start a candidacy sooner, never more (DESIGN 5.8). So is a
    /// node whose leadership hints stop claiming a partition whose preferred replica is
    /// hosted here, when that replica still follows it: the leader resigned for it
    /// (preferred-leader rebalancing), and the hint lets it stand as soon as its own grant
    /// expires, ahead of the other replicas' election timeouts.
    pub fn apply_cluster_change(&self, change: ClusterChange) {
        match change {
            ClusterChange::Joined(info) | ClusterChange::Updated(info) => {
                if info.node_id == self.config.node_id {
                    return;
                }
                let node_id = info.node_id;
                self.peers
                    .set_address(info.node_id, info.peer_addr.to_string());
                // Hints change only with leaderships, so the copy is rare.
                let hints_before = self
                    .cluster_view()
                    .get(&node_id)
                    .filter(|before| before.hints != info.hints)
                    .map(|before| before.hints.clone());
                let resigned = hints_before
                    .map(|before| {
                        self.preferred_replicas_resigned_by(node_id, &before, &info.hints)
                    })
                    .unwrap_or_default();
                self.cluster
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(info.node_id, info);
                if !resigned.is_empty() {
                    tracing::info!(leader = %node_id, partitions = resigned.len(), "a leader gave up partitions whose preferred replica is here: they stand once their grants expire");
                    self.suspect_until_led(resigned, node_id);
                }
            }
            ClusterChange::Left(node_id) => {
                if let Some(info) = self
                    .cluster
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get_mut(&node_id)
                {
                    info.alive = false;
                }
                let suspects: Vec<PartitionHandle<S>> = self
                    .hosted()
                    .into_iter()
                    .filter(|handle| handle.shared.snapshot().leader == Some(node_id))
                    .collect();
                if suspects.is_empty() {
                    return;
                }
                self.suspect_until_led(suspects, node_id);
            }
        }
    }

    /// The hosted replicas that are their partition's preferred replica and still follow
    /// `node_id`, whose leadership hints claimed the partition `before` and no longer do
    /// `after`: a leader that resigned for them, or lost its lease.
    fn preferred_replicas_resigned_by(
        &self,
        node_id: NodeId,
        before: &LeadershipHints,
        after: &LeadershipHints,
    ) -> Vec<PartitionHandle<S>> {
        let catalog = self.catalog();
        let mut resigned = Vec::new();
        for (topic_name, partition, _) in before.iter() {
            if after.get(topic_name, partition).is_some() {
                continue;
            }
            let Some(topic) = catalog.state.topic(topic_name) else {
                continue;
            };
            let Some(handle) = hosted_partition(&catalog, topic, partition.0) else {
                continue;
            };
            let snapshot = handle.shared.snapshot();
            if handle.shared.preferred()
                && snapshot.role == Role::Follower
                && snapshot.leader == Some(node_id)
            {
                resigned.push(handle.clone());
            }
        }
        resigned
    }

    /// Tells each replica of `suspects` that its leader `node_id` is gone, now and then
    /// again every heartbeat while it has no other leader: a first pre-vote may be refused by
    /// a follower whose own grant lapses a few milliseconds later, and the next try should
    /// not be a whole election timeout away. Bounded, and only ever a hint: the lease rules
    /// still decide (DESIGN 5.8).
    fn suspect_until_led(&self, suspects: Vec<PartitionHandle<S>>, node_id: NodeId) {
        for handle in &suspects {
            handle.suspect_leader();
        }
        let period = Duration::from_millis(self.config.replica.heartbeat_ms);
        let rounds =
            (2 * self.config.replica.election_timeout_ms) / self.config.replica.heartbeat_ms.max(1);
        tokio::spawn(async move {
            for _ in 0..rounds {
                tokio::time::sleep(period).await;
                let mut leaderless = false;
                for handle in &suspects {
                    let snapshot = handle.shared.snapshot();
                    if snapshot.role != Role::Leader
                        && (snapshot.leader.is_none() || snapshot.leader == Some(node_id))
                    {
                        handle.suspect_leader();
                        leaderless = true;
                    }
                }
                if !leaderless {
                    return;
                }
            }
        });
    }

    /// The partitions this node leads now, for gossip. Oversized hints are the caller's to
    /// refuse (membership bounds them).
    /// Changes when what [`Broker::leadership_hints`] returns may have: read it before
    /// building the hints, and build them again only once it moved.
    pub fn leadership_version(&self) -> u64 {
        self.leadership_changes.count()
    }

    /// Wakes after each change of [`Broker::leadership_version`].
    pub fn leadership_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.leadership_changes.subscribe()
    }

    pub fn leadership_hints(&self) -> LeadershipHints {
        let mut hints = LeadershipHints::new();
        if let Some(meta) = &self.meta {
            let meta = meta.shared.snapshot();
            if meta.role == Role::Leader {
                let _ = hints.insert(meta::META_TOPIC, PartitionId(0), meta.epoch);
            }
        }
        let catalog = self.catalog();
        for topic in catalog.state.topics() {
            for partition in 0..topic.partitions {
                if let Some(handle) = hosted_partition(&catalog, topic, partition) {
                    let snapshot = handle.shared.snapshot();
                    if snapshot.role == Role::Leader {
                        let _ = hints.insert(&topic.name, PartitionId(partition), snapshot.epoch);
                    }
                }
            }
        }
        hints
    }

    /// The leader and epoch to report for a partition: the hosted replica's own view, else
    /// the leader gossip names (see [`Broker::hinted_leader`]), else none.
    pub(super) fn reported_leader(
        &self,
        topic: &str,
        partition: u32,
        snapshot: Option<&PartitionSnapshot>,
    ) -> (Option<NodeId>, Epoch) {
        match snapshot {
            Some(snapshot) => (self.live(snapshot.leader), snapshot.epoch),
            None => match self.hinted_leader(topic, partition) {
                Some((leader, epoch)) => (Some(leader), epoch),
                None => (None, Epoch::ZERO),
            },
        }
    }

    /// `leader` if it can still hold a lease: this node, or a node gossip says is alive. A
    /// replica remembers its last leader until it hears of a newer one, which without a
    /// majority never comes; a leader gossip has declared dead cannot be renewing its lease
    /// (gossip's detection takes longer than a lease), so it is shown as no leader.
    pub(super) fn live(&self, leader: Option<NodeId>) -> Option<NodeId> {
        leader.filter(|node| {
            *node == self.config.node_id
                || self.cluster_view().get(node).is_some_and(|info| info.alive)
        })
    }

    /// The leader gossip names for a partition not hosted here: the node claiming the highest
    /// epoch. A hint for clients' routing only; the leader itself checks its epoch.
    pub(crate) fn hinted_leader(&self, topic: &str, partition: u32) -> Option<(NodeId, Epoch)> {
        self.cluster_view()
            .values()
            .filter(|info| info.alive)
            .filter_map(|info| {
                info.hints
                    .get(topic, PartitionId(partition))
                    .map(|epoch| (info.node_id, epoch))
            })
            .max_by_key(|(_, epoch)| *epoch)
    }

    /// Notes that `topic` gained partitions (created, or grown) while this node serves. Not
    /// while it replays `__meta` at start-up: those partitions are not new, and one without a
    /// leader then is answered as such at once.
    pub(super) fn note_new_partitions(&self, topic: TopicId) {
        if !*self.ready.borrow() {
            return;
        }
        let now = tokio::time::Instant::now();
        let window = self.new_partitions_window();
        let mut new_topics = self
            .new_topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while new_topics.front().is_some_and(|(_, at)| {
            now.duration_since(*at) > window || new_topics.len() >= NEW_TOPICS_MAX
        }) {
            new_topics.pop_front();
        }
        new_topics.push_back((topic, now));
    }

    /// How long after a topic gains partitions their first leaders may still be unknown here
    /// although all is well: an election (a timeout and a lease), then the leader's hint
    /// published and gossiped to this node (two rounds).
    pub fn new_partitions_window(&self) -> Duration {
        let replica = &self.config.replica;
        Duration::from_millis(
            replica.election_timeout_ms
                + 2 * replica.lease_ms
                + crate::node::HINTS_PUBLISH_MS
                + 2 * self.config.cluster.gossip_interval_ms,
        )
    }

    /// Until when a request about `name` may wait for leaders this node does not know yet:
    /// `Some` while the topic's newest partitions are within [`Self::new_partitions_window`]
    /// of being applied here. Kafka clients read a partition without a leader as an error,
    /// and some (kafka-python's admin `list_partition_offsets`) do not retry it, so a
    /// Metadata request right after a create, sent to a node gossip has not reached yet,
    /// waits a little for the truth rather than answering leader -1.
    pub fn new_partitions_deadline(&self, name: &str) -> Option<tokio::time::Instant> {
        let new_topics = self
            .new_topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Nearly always empty: then the catalog is not looked at.
        if new_topics.is_empty() {
            return None;
        }
        let id = self.catalog().state.topic(name)?.id;
        let window = self.new_partitions_window();
        new_topics
            .iter()
            .rev()
            .find(|(topic, _)| *topic == id)
            .map(|(_, at)| *at + window)
            .filter(|deadline| *deadline > tokio::time::Instant::now())
    }
}
