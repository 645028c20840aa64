//! The `__meta` applier and learner: committed metadata records become the catalog and
//! the partition actors hosted here; readiness follows from them.

use super::*;

impl<S: LogStore> Broker<S> {
    /// The applier: applies committed `__meta` records in order, forever.
    pub(super) async fn apply_meta(self: Arc<Self>) {
        let meta = self
            .meta
            .clone()
            .expect("voters apply their own __meta replica");
        let mut high_watermark = meta.shared.subscribe_high_watermark();
        loop {
            let target = *high_watermark.borrow_and_update();
            let applied = *self.applied.borrow();
            if applied < target {
                match meta.read(applied, META_READ_BYTES_MAX, true).await {
                    Ok(read) => {
                        for batch in read.batches {
                            self.apply_meta_batch(&batch).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reading __meta failed; retrying");
                        tokio::time::sleep(Duration::from_millis(self.config.replica.tick_ms))
                            .await;
                    }
                }
                continue;
            }
            self.update_readiness();
            // Wake on a new high watermark, or on a tick to re-check readiness (partition
            // leaders are elected after the metadata is applied).
            let tick = Duration::from_millis(self.config.replica.tick_ms);
            if let Ok(Err(_)) = tokio::time::timeout(tick, high_watermark.changed()).await {
                return;
            }
        }
    }

    /// The learner's applier: fetches committed `__meta` records from the voter that leads
    /// it (as gossip names it; any live node otherwise, which answers with a leader hint) and
    /// applies them in order, forever. A learner keeps no copy: after a restart it fetches
    /// from the start again (metadata is small).
    pub(super) async fn learn_meta(self: Arc<Self>) {
        let client = cairn_client::ClientConfig::default()
            .client_id(format!("cairn-node-{}-learner", self.config.node_id))
            .request_timeout(Duration::from_millis(
                u64::from(LEARNER_FETCH_WAIT_MS) + 5_000,
            ))
            .connect_timeout(Duration::from_secs(1));
        let mut connection: Option<cairn_client::Connection> = None;
        let mut hint: Option<NodeId> = None;
        let mut attempt = 0usize;
        loop {
            self.update_readiness();
            if connection.as_ref().is_none_or(|open| open.is_closed()) {
                connection = None;
                let source = self.meta_source(hint.take(), attempt);
                attempt += 1;
                match source {
                    Some(address) => {
                        match cairn_client::Connection::connect(&address, &client).await {
                            Ok(open) => connection = Some(open),
                            Err(error) => tracing::debug!(%address, %error, "cannot reach a voter"),
                        }
                    }
                    None => tracing::debug!("no node known yet to learn __meta from"),
                }
                if connection.is_none() {
                    tokio::time::sleep(Duration::from_millis(LEARNER_RETRY_MS)).await;
                    continue;
                }
            }
            let open = connection.as_ref().expect("connected above");
            let from = *self.applied.borrow();
            let request = cairn_protocol::Request::Fetch(FetchRequest {
                max_wait_ms: LEARNER_FETCH_WAIT_MS,
                min_bytes: 1,
                max_bytes: META_READ_BYTES_MAX as u32,
                partitions: vec![FetchPartition {
                    topic: meta::META_TOPIC.to_string(),
                    partition: 0,
                    offset: from,
                    max_bytes: META_READ_BYTES_MAX as u32,
                }],
            });
            let fetched = match open.call(request).await {
                Ok(cairn_protocol::Response::Fetch(mut response))
                    if response.partitions.len() == 1 =>
                {
                    response.partitions.remove(0).result
                }
                Ok(other) => Err(ApiError::Internal {
                    reason: format!("unexpected reply to a __meta fetch: {other:?}"),
                }),
                Err(error) => Err(ApiError::Internal {
                    reason: error.to_string(),
                }),
            };
            match fetched {
                Ok(fetched) => {
                    self.learner_commit_heard
                        .fetch_max(fetched.high_watermark.0, Ordering::AcqRel);
                    if let Err(reason) = self.apply_fetched_meta(from, &fetched.batches).await {
                        tracing::warn!(%reason, "bad __meta from a voter; asking another");
                        connection = None;
                        continue;
                    }
                    if *self.applied.borrow() >= fetched.high_watermark {
                        self.learner_caught_up.store(true, Ordering::Release);
                    }
                }
                Err(error) => {
                    if let ApiError::NotLeader { leader_hint, .. } = &error {
                        hint = *leader_hint;
                    }
                    tracing::debug!(%error, "learning __meta failed; retrying");
                    connection = None;
                    tokio::time::sleep(Duration::from_millis(LEARNER_RETRY_MS)).await;
                }
            }
        }
    }

    /// Checks fetched `__meta` batches (framing, checksums, contiguity from `from`) before
    /// applying any of them.
    async fn apply_fetched_meta(&self, from: Offset, bytes: &bytes::Bytes) -> Result<(), String> {
        let mut batches = Vec::new();
        let mut next = from;
        for batch in cairn_protocol::batch::split_batches(bytes) {
            let batch = batch.map_err(|error| error.to_string())?;
            batch.verify_checksum().map_err(|error| error.to_string())?;
            if batch.next_offset() <= next {
                continue;
            }
            if batch.base_offset() > next {
                return Err(format!(
                    "a gap: expected offset {next}, got {}",
                    batch.base_offset()
                ));
            }
            next = batch.next_offset();
            batches.push(batch);
        }
        for batch in &batches {
            self.apply_meta_batch(batch).await;
        }
        Ok(())
    }

    /// Where a learner fetches `__meta`: the hinted node, else the voter gossip says leads
    /// it, else any live node in turn (it answers with a leader hint).
    fn meta_source(&self, hint: Option<NodeId>, attempt: usize) -> Option<String> {
        let view = self.cluster_view();
        let address = |node: NodeId| {
            view.get(&node)
                .filter(|info| info.alive)
                .map(|info| info.client_addr.to_string())
        };
        if let Some(address) = hint.and_then(address) {
            return Some(address);
        }
        if let Some(address) = self
            .hinted_leader(meta::META_TOPIC, 0)
            .and_then(|(leader, _)| address(leader))
        {
            return Some(address);
        }
        let mut alive: Vec<&NodeInfo> = view
            .values()
            .filter(|info| info.alive && info.node_id != self.config.node_id)
            .collect();
        alive.sort_by_key(|info| info.node_id);
        alive
            .get(attempt % alive.len().max(1))
            .map(|info| info.client_addr.to_string())
    }

    async fn apply_meta_batch(&self, batch: &RecordBatch) {
        let next = batch.next_offset();
        if next <= *self.applied.borrow() {
            return;
        }
        if batch.header().is_control() {
            self.catalog
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .state
                .skip_to(next);
        } else {
            for record in batch.records() {
                let record = match record {
                    Ok(record) => record,
                    Err(error) => {
                        // Checksums were verified on read: this is a bug, not bad input.
                        panic!(
                            "committed __meta batch at {} is malformed: {error}",
                            batch.base_offset()
                        );
                    }
                };
                let applied = {
                    let mut catalog = self
                        .catalog
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    catalog
                        .state
                        .apply(record.offset, record.value.as_deref().unwrap_or_default())
                };
                match applied {
                    Some(Applied::Created(topic)) => {
                        self.note_new_partitions(topic.id);
                        self.host_partitions(&topic, 0)
                    }
                    Some(Applied::PartitionsAdded { topic, first }) => {
                        self.note_new_partitions(topic.id);
                        self.host_partitions(&topic, first)
                    }
                    Some(Applied::ConfigChanged(topic)) => self.reconfigure(&topic).await,
                    Some(Applied::Deleted(topic)) => self.drop_topic(&topic).await,
                    Some(Applied::Rejected { reason }) => {
                        tracing::info!(offset = %record.offset, %reason, "metadata change refused at apply time");
                    }
                    Some(Applied::ProducerIdAllocated { .. }) | None => {}
                }
            }
            self.catalog
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .state
                .skip_to(next);
        }
        self.applied.send_replace(next);
    }

    /// What retention `topic`'s partitions run: its own config, else the node's defaults;
    /// none for internal topics (`__offsets` holds state that must replay from the start).
    /// A topic whose cleanup policy is `compact` alone keeps every key's newest record
    /// however old: retention does not apply to it (Kafka's rule).
    fn retention_of(&self, topic: &TopicState) -> RetentionPolicy {
        if is_internal(&topic.name) || !topic.config.deletes() {
            return RetentionPolicy::default();
        }
        RetentionPolicy {
            max_age_ms: topic
                .config
                .retention_ms
                .or(self.config.retention.retention_ms),
            max_bytes: topic
                .config
                .retention_bytes
                .or(self.config.retention.retention_bytes),
        }
    }

    /// Gives the partitions of `topic` hosted here its (new) retention.
    async fn reconfigure(&self, topic: &TopicState) {
        let retention = self.retention_of(topic);
        let compaction = CompactionSettings::of(&topic.config);
        let handles: Vec<PartitionHandle<S>> = self
            .catalog()
            .partitions
            .get(&topic.id)
            .map(|handles| handles.values().cloned().collect())
            .unwrap_or_default();
        for handle in handles {
            handle.set_retention(retention, compaction).await;
        }
    }

    /// Starts the actors of the partitions of `topic` from `first` on that this node holds a
    /// replica of (all of them for a new topic, the added ones after `AddPartitions`).
    fn host_partitions(&self, topic: &TopicState, first: u32) {
        let mut handles = BTreeMap::new();
        for partition in first..topic.partitions {
            let voters = topic.replicas[partition as usize].clone();
            if !voters.contains(&self.config.node_id) {
                continue;
            }
            let log_name = meta::partition_log_name(topic.id, partition);
            let log = match self.store.open_log(&log_name) {
                Ok(log) => log,
                Err(error) => {
                    tracing::error!(%log_name, %error, "cannot open a partition log; it stays unavailable");
                    continue;
                }
            };
            let spec = PartitionSpec {
                log_name: log_name.clone(),
                key: ReplicaKey::Partition {
                    topic: topic.id.0,
                    partition,
                },
                node: self.config.node_id,
                voters,
                store: self.store.clone(),
                log,
                committer: self.committer.clone(),
                clock: self.clock,
                replica_config: self.config.replica.replica_config(),
                tick_ms: self.config.replica.tick_ms,
                lag_time_max_ms: self.config.replica.lag_time_max_ms,
                leader_rebalance_ms: self.config.replica.leader_rebalance_ms,
                mailbox_max: self.config.limits.partition_mailbox_max as usize,
                retention: self.retention_of(topic),
                retention_check_ms: self.config.retention.retention_check_ms,
                compaction: CompactionSettings::of(&topic.config),
                compactor: self.compactor.clone(),
                peers: self.peers.clone(),
                leadership_changes: Arc::clone(&self.leadership_changes),
                metrics: Arc::clone(&self.metrics),
            };
            let arbiter = &self.arbiters[place(&log_name, self.arbiters.len())];
            match PartitionHandle::start(spec, arbiter) {
                Ok(handle) => {
                    handles.insert(partition, handle);
                }
                Err(error) => {
                    tracing::error!(%log_name, %error, "cannot start a partition replica");
                }
            }
        }
        self.catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .partitions
            .entry(topic.id)
            .or_default()
            .extend(handles);
        self.leadership_changes.bump();
    }

    async fn drop_topic(&self, topic: &TopicState) {
        let handles = self
            .catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .partitions
            .remove(&topic.id)
            .unwrap_or_default();
        self.leadership_changes.bump();
        for handle in handles.into_values() {
            handle
                .stop(
                    ApiError::UnknownTopic {
                        topic: topic.name.clone(),
                    },
                    true,
                )
                .await;
        }
    }

    fn update_readiness(&self) {
        if *self.ready.borrow() {
            return;
        }
        // Recovered means: `__meta` is led, the leader's epoch marker is committed (so every
        // record before it is committed too), and everything committed is applied. Until the
        // marker commits, the high watermark may still be below records written before a
        // restart, and an empty catalog would look recovered.
        // On a follower of `__meta` (a cluster), recovered means: a leader is known and what
        // it told us is committed is applied. For a lone node this is the same rule, since it
        // is the only voter and so the leader.
        // A restarted follower's own high watermark starts at its log start and moves up only
        // once the leader found where their logs match (a new leader's first append to it
        // diverges): "applied up to my high watermark" then held with nothing applied, and
        // the node answered from an empty catalog. So a follower also waits for a commit
        // point a leader told it since it started, so that a ready node has applied every
        // `__meta` record committed before it started (see also `Broker::metadata_lag`).
        match &self.meta {
            Some(handle) => {
                let meta = handle.shared.snapshot();
                let applied = *self.applied.borrow();
                if meta.leader.is_none()
                    || (meta.role == Role::Leader && meta.high_watermark < meta.log_end)
                    || applied < meta.high_watermark
                {
                    return;
                }
                if meta.role != Role::Leader
                    && handle
                        .shared
                        .commit_heard()
                        .is_none_or(|commit| applied < commit)
                {
                    return;
                }
            }
            // A learner: it has applied what a voter had committed when it last asked.
            None => {
                if !self.learner_caught_up.load(Ordering::Acquire) {
                    return;
                }
            }
        }
        let catalog = self.catalog();
        // A single-voter partition leads itself once its lease wait is over; wait for that
        // so the first requests after "ready" are served rather than refused.
        let all_led = catalog
            .partitions
            .values()
            .flat_map(BTreeMap::values)
            .all(|handle| {
                let snapshot = handle.shared.snapshot();
                snapshot.leader.is_some() || snapshot.storage_failure.is_some()
            });
        if all_led {
            drop(catalog);
            self.ready.send_replace(true);
        }
    }
}
