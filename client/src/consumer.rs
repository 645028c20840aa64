//! [`Consumer`]: reads records from assigned partitions.
//!
//! Manual assignment: the application names the partitions ([`Consumer::assign`]) and where
//! to start ([`Consumer::seek`]). Group membership ([`Consumer::subscribe`], see
//! [`crate::group`]) fills the same assignment from the coordinator's heartbeat replies,
//! reconciled at the start of each `poll`; everything below the assignment (positions,
//! fetching, buffering) is shared. Paused partitions ([`Consumer::pause`]) stay assigned but
//! are not fetched.
//!
//! `poll` sends one long-poll `Fetch` per leader covering all of that leader's assigned
//! partitions, concurrently; decodes the batches (skipping control batches and records below
//! the position, since a fetch may start at an earlier batch boundary); and hands out at most
//! `max_poll_records` records, keeping the rest buffered. At most one fetch is out at a time:
//! it starts when the buffer holds fewer than `max_poll_records` records (so it travels while
//! the application works), and memory stays bounded by that buffer plus one fetch response.

use crate::cluster::{unexpected, Cluster};
use crate::config::{millis_u32, AutoOffsetReset, ClientConfig, ConsumerConfig};
use crate::error::{ClientError, Result};
use crate::group::{self, MemberState, RebalanceListener, Subscription};
use bytes::Bytes;
use cairn_protocol::batch::split_batches;
use cairn_protocol::group::{validate_group_id, OffsetFetchRequest};
use cairn_protocol::messages::{FetchPartition, FetchRequest, FetchedRecords, OffsetSpec};
use cairn_protocol::{ApiError, Header, NodeId, Offset, Request, Response};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A consumer's group membership (see [`crate::group`]).
struct GroupMember {
    subscription: Subscription,
    state: Arc<Mutex<MemberState>>,
    /// Asks the heartbeat task for a heartbeat now.
    wake: Arc<Notify>,
    /// Told by the heartbeat task when the target assignment changed.
    changed: Arc<Notify>,
    heartbeat: JoinHandle<()>,
    /// In a mutex only so that `Consumer` stays `Sync` (a `&Consumer` held across an await
    /// in a spawned task); the listener is only ever called from `&mut self`.
    listener: Mutex<Box<dyn RebalanceListener>>,
    last_auto_commit: Instant,
}

/// Bytes of record batches a fetch may ask for so that the reply fits in a frame of
/// `frame_bytes_max`: room is left for the envelope and each partition's entry.
fn fetch_bytes_limit(frame_bytes_max: u32, partitions: usize) -> u32 {
    const ENVELOPE_BYTES: u32 = 1024;
    const PARTITION_ENTRY_BYTES: u32 = 512;
    let overhead =
        ENVELOPE_BYTES.saturating_add(PARTITION_ENTRY_BYTES.saturating_mul(partitions as u32));
    frame_bytes_max.saturating_sub(overhead).max(1)
}

/// Records fetched and not yet returned by `poll`, in order, with a count per partition, so
/// that asking whether a partition has anything buffered (every `poll` asks it of every
/// assigned partition) is a lookup, not a scan: with small records one fetch buffers over a
/// hundred thousand of them, and the scan per `poll` made consuming quadratic in that.
#[derive(Debug, Default)]
struct RecordBuffer {
    records: VecDeque<ConsumerRecord>,
    per_partition: HashMap<TopicPartition, usize>,
}

impl RecordBuffer {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn holds(&self, partition: &TopicPartition) -> bool {
        self.per_partition.contains_key(partition)
    }

    fn push_back(&mut self, record: ConsumerRecord) {
        self.count(&record);
        self.records.push_back(record);
    }

    fn count(&mut self, record: &ConsumerRecord) {
        *self
            .per_partition
            .entry(TopicPartition::of(record))
            .or_default() += 1;
    }

    /// Removes and returns the first `count` records (fewer if fewer are buffered).
    fn take_front(&mut self, count: usize) -> Vec<ConsumerRecord> {
        let count = count.min(self.records.len());
        let taken: Vec<ConsumerRecord> = self.records.drain(..count).collect();
        for record in &taken {
            let key = TopicPartition::of(record);
            if let Some(left) = self.per_partition.get_mut(&key) {
                *left -= 1;
                if *left == 0 {
                    self.per_partition.remove(&key);
                }
            }
        }
        taken
    }

    /// Keeps the records `keep` accepts (seeks, pauses and revocations: rare, so the counts
    /// are simply rebuilt).
    fn retain(&mut self, keep: impl FnMut(&ConsumerRecord) -> bool) {
        self.records.retain(keep);
        self.per_partition.clear();
        let records = std::mem::take(&mut self.records);
        for record in &records {
            self.count(record);
        }
        self.records = records;
    }

    fn clear(&mut self) {
        self.records.clear();
        self.per_partition.clear();
    }
}

/// One record as the consumer returns it (non-exhaustive: fields may be added).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerRecord {
    /// The topic it was read from.
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: Offset,
    /// The producer's timestamp (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// The key, if the producer gave one.
    pub key: Option<Bytes>,
    /// The value; `None` for a tombstone (a null value: on a compacted topic, the key's
    /// deletion).
    pub value: Option<Bytes>,
    /// Headers, in the order the producer set them.
    pub headers: Vec<Header>,
}

/// Where [`Consumer::seek`] moves a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeekTo {
    /// The first offset still in the log.
    Earliest,
    /// The high watermark: the next record to be committed.
    Latest,
    /// This offset (a later fetch outside the log resets it by `auto_offset_reset`).
    Offset(Offset),
    /// The first record whose timestamp is at or after this many ms since the Unix epoch
    /// (the high watermark when there is none).
    Timestamp(i64),
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic's name.
    pub topic: Arc<str>,
    /// The partition number, from 0.
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from(topic),
            partition,
        }
    }

    /// The partition a record came from (shares the record's topic name).
    fn of(record: &ConsumerRecord) -> TopicPartition {
        TopicPartition {
            topic: Arc::clone(&record.topic),
            partition: record.partition,
        }
    }
}

#[derive(Debug, Clone)]
struct PartitionState {
    /// Next offset to fetch; `None` until resolved by seek or `auto_offset_reset`.
    fetch_offset: Option<Offset>,
    /// Next offset `poll` returns to the application.
    position: Option<Offset>,
    high_watermark: Option<Offset>,
}

/// Reads records from assigned partitions. Not `Clone`: one consumer, one position per
/// partition.
///
/// ```no_run
/// # async fn example() -> Result<(), cairn_client::ClientError> {
/// use cairn_client::{ClientConfig, Consumer, ConsumerConfig, SeekTo};
/// use std::time::Duration;
///
/// let mut consumer = Consumer::new(ClientConfig::new("127.0.0.1:7171")?, ConsumerConfig::default())?;
/// consumer.assign(&[("orders", 0), ("orders", 1)]).await?;
/// consumer.seek("orders", 0, SeekTo::Earliest).await?;
/// for record in consumer.poll(Duration::from_secs(1)).await? {
///     println!("{}/{}@{}: {:?}", record.topic, record.partition, record.offset, record.value);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    assignment: BTreeMap<TopicPartition, PartitionState>,
    /// Where the next fetch request starts in the assignment (see `absorb`).
    fetch_rotation: usize,
    buffer: RecordBuffer,
    /// The fetch in flight, if any (started by a previous poll or this one).
    fetch: Option<JoinHandle<Result<Vec<LeaderFetch>>>>,
    /// Assigned partitions that are not fetched until resumed.
    paused: BTreeSet<TopicPartition>,
    group: Option<GroupMember>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(fetch) = self.fetch.take() {
            fetch.abort();
        }
        // Without `close` the member does not leave: the coordinator removes it after the
        // session timeout.
        if let Some(group) = self.group.take() {
            group.heartbeat.abort();
        }
    }
}

/// How long one `poll` under [`Consumer::stream`] waits before it polls again (the stream
/// itself waits for as long as it takes).
const STREAM_POLL_WAIT: Duration = Duration::from_secs(1);

/// [`Consumer::stream`]'s state: the consumer and the records polled but not yet yielded.
struct StreamState<'a> {
    consumer: &'a mut Consumer,
    pending: VecDeque<ConsumerRecord>,
}

impl Drop for StreamState<'_> {
    /// Records polled but never yielded go back: each partition's position returns to the
    /// first of them.
    fn drop(&mut self) {
        let mut first: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
        for record in &self.pending {
            first
                .entry(TopicPartition {
                    topic: Arc::clone(&record.topic),
                    partition: record.partition,
                })
                .or_insert(record.offset);
        }
        for (partition, offset) in first {
            self.consumer.set_position(&partition, offset);
        }
    }
}

impl Consumer {
    /// A consumer for the cluster `config` names. Connects lazily.
    pub fn new(client: ClientConfig, config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        Ok(Consumer {
            cluster: Cluster::new(client)?,
            config,
            assignment: BTreeMap::new(),
            fetch_rotation: 0,
            buffer: RecordBuffer::default(),
            fetch: None,
            paused: BTreeSet::new(),
            group: None,
        })
    }

    /// Joins group `group_id` reading `topics`: the coordinator assigns partitions, which
    /// `poll` takes (at the group's committed offsets, else `auto_offset_reset`) and gives
    /// back when they move to another member. Nothing is committed on revocation; see
    /// [`Consumer::subscribe_with_listener`] and [`crate::group::CommitPositionsOnRevoke`].
    pub async fn subscribe(&mut self, topics: &[&str], group_id: &str) -> Result<()> {
        self.subscribe_with_listener(topics, group_id, Box::new(NoListener))
            .await
    }

    /// [`Consumer::subscribe`], telling `listener` about each change of partitions.
    pub async fn subscribe_with_listener(
        &mut self,
        topics: &[&str],
        group_id: &str,
        listener: Box<dyn RebalanceListener>,
    ) -> Result<()> {
        validate_group_id(group_id).map_err(ClientError::Api)?;
        if topics.is_empty() {
            return Err(ClientError::invalid("subscribe needs at least one topic"));
        }
        if self.group.is_some() {
            return Err(ClientError::invalid(
                "this consumer is already subscribed; close it and make a new one",
            ));
        }
        if !self.assignment.is_empty() {
            return Err(ClientError::invalid(
                "this consumer has a manual assignment; subscribe needs a fresh consumer",
            ));
        }
        let subscription = Subscription {
            group_id: group_id.to_owned(),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            instance_id: self.config.group_instance_id.clone(),
            session_timeout_ms: millis_u32(self.config.session_timeout),
            rebalance_timeout_ms: millis_u32(self.config.rebalance_timeout),
            assignor: self.config.assignor.clone(),
        };
        let state = Arc::new(Mutex::new(MemberState::default()));
        let wake = Arc::new(Notify::new());
        let changed = Arc::new(Notify::new());
        let heartbeat = tokio::spawn(group::heartbeat_loop(
            Arc::clone(&self.cluster),
            subscription.clone(),
            Arc::clone(&state),
            Arc::clone(&wake),
            Arc::clone(&changed),
        ));
        self.group = Some(GroupMember {
            subscription,
            state,
            wake,
            changed,
            heartbeat,
            listener: Mutex::new(listener),
            last_auto_commit: Instant::now(),
        });
        Ok(())
    }

    /// The member id and epoch the coordinator gave this consumer (`None` outside a group or
    /// before the first heartbeat reply).
    pub fn member(&self) -> Option<(String, cairn_protocol::group::MemberEpoch)> {
        let group = self.group.as_ref()?;
        let state = group.state.lock().expect("member lock");
        state
            .joined
            .then(|| (state.member_id.clone(), state.member_epoch))
    }

    /// Brings the assignment in line with the coordinator's target: releases revoked
    /// partitions (listener, commit, stop fetching) before taking new ones.
    async fn reconcile(&mut self) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let (lost, target, fatal) = {
            let mut state = group.state.lock().expect("member lock");
            let lost = std::mem::take(&mut state.lost);
            if lost {
                state.owned.clear();
            }
            (lost, state.target.clone(), state.fatal.clone())
        };
        if let Some(error) = fatal {
            return Err(error);
        }
        if lost {
            let dropped: Vec<TopicPartition> = self.assignment.keys().cloned().collect();
            if !dropped.is_empty() {
                group
                    .listener
                    .get_mut()
                    .expect("listener lock")
                    .on_lost(&dropped);
            }
            self.assignment.clear();
            self.buffer.clear();
            self.paused.clear();
            group.wake.notify_one();
        }
        let revoked: Vec<(TopicPartition, Option<Offset>)> = self
            .assignment
            .iter()
            .filter(|(partition, _)| !target.contains(*partition))
            .map(|(partition, state)| (partition.clone(), state.position))
            .collect();
        if !revoked.is_empty() {
            let mut offsets = group
                .listener
                .get_mut()
                .expect("listener lock")
                .on_revoked(&revoked);
            if self.config.enable_auto_commit {
                for (partition, position) in &revoked {
                    if let Some(position) = position {
                        if !offsets.iter().any(|(chosen, _)| chosen == partition) {
                            offsets.push((partition.clone(), *position));
                        }
                    }
                }
            }
            // The partitions are released even when the commit fails: holding them would
            // stall the group, and the coordinator fences a member that does not let go.
            if let Err(error) = group::commit(
                &self.cluster,
                &group.subscription.group_id,
                Some(&group.state),
                &offsets,
            )
            .await
            {
                tracing::warn!(%error, "commit on revocation failed");
            }
            let mut state = group.state.lock().expect("member lock");
            for (partition, _) in &revoked {
                self.assignment.remove(partition);
                self.paused.remove(partition);
                state.owned.remove(partition);
            }
            drop(state);
            let assignment = &self.assignment;
            self.buffer
                .retain(|record| assignment.contains_key(&TopicPartition::of(record)));
            group.wake.notify_one();
        }
        let added: Vec<TopicPartition> = target
            .iter()
            .filter(|partition| !self.assignment.contains_key(*partition))
            .cloned()
            .collect();
        if !added.is_empty() {
            let committed = self.fetch_committed(&added).await?;
            let Some(group) = self.group.as_mut() else {
                return Ok(());
            };
            for partition in &added {
                let start = committed.get(partition).copied();
                self.assignment.insert(
                    partition.clone(),
                    PartitionState {
                        fetch_offset: start,
                        position: start,
                        high_watermark: None,
                    },
                );
            }
            group
                .state
                .lock()
                .expect("member lock")
                .owned
                .extend(added.iter().cloned());
            group
                .listener
                .get_mut()
                .expect("listener lock")
                .on_assigned(&added);
            group.wake.notify_one();
        }
        Ok(())
    }

    /// The group's committed offsets for `partitions` (as a member, so a fenced member is
    /// refused), leaving out partitions never committed.
    async fn fetch_committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Offset>> {
        let Some(group) = self.group.as_ref() else {
            return Ok(HashMap::new());
        };
        let member = {
            let state = group.state.lock().expect("member lock");
            Some((state.member_id.clone(), state.member_epoch))
        };
        let wanted: BTreeSet<TopicPartition> = partitions.iter().cloned().collect();
        let request = Request::OffsetFetch(OffsetFetchRequest {
            group_id: group.subscription.group_id.clone(),
            member,
            partitions: Some(group::to_wire(&wanted)),
        });
        let deadline = Instant::now() + self.cluster.config().request_timeout;
        let reply = self
            .cluster
            .call_coordinator(&group.subscription.group_id, deadline, || request.clone())
            .await?;
        let Response::OffsetFetch(reply) = reply else {
            return Err(unexpected("OffsetFetch", &reply));
        };
        Ok(reply
            .partitions
            .into_iter()
            .filter_map(|partition| {
                partition.committed.map(|committed| {
                    (
                        TopicPartition::new(&partition.topic, partition.partition),
                        committed.offset,
                    )
                })
            })
            .collect())
    }

    /// The positions `poll` has reached in every assigned partition that has one.
    pub fn positions(&self) -> Vec<(TopicPartition, Offset)> {
        self.assignment
            .iter()
            .filter_map(|(partition, state)| {
                state.position.map(|offset| (partition.clone(), offset))
            })
            .collect()
    }

    fn group_id(&self) -> Result<&GroupMember> {
        self.group
            .as_ref()
            .ok_or_else(|| ClientError::invalid("commits need a group: call subscribe first"))
    }

    /// Commits the positions `poll` has reached (everything it returned counts as processed)
    /// and waits for the coordinator's acknowledgement.
    pub async fn commit_sync(&mut self) -> Result<()> {
        let offsets = self.positions();
        self.commit_offsets_sync(&offsets).await
    }

    /// Commits `offsets` (each the next offset to read: last processed + 1) and waits for
    /// the coordinator's acknowledgement, which comes after the offsets record is replicated.
    /// Only partitions this member owns in its current epoch are accepted.
    pub async fn commit_offsets_sync(
        &mut self,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<()> {
        let group = self.group_id()?;
        group::commit(
            &self.cluster,
            &group.subscription.group_id,
            Some(&group.state),
            offsets,
        )
        .await
    }

    /// Commits the positions `poll` has reached in the background; `callback` gets the
    /// result. A failed async commit is not retried after its deadline: a later commit
    /// covers it.
    pub fn commit_async<F>(&mut self, callback: F) -> Result<()>
    where
        F: FnOnce(Result<()>) + Send + 'static,
    {
        let offsets = self.positions();
        let group = self.group_id()?;
        let cluster = Arc::clone(&self.cluster);
        let group_id = group.subscription.group_id.clone();
        let state = Arc::clone(&group.state);
        tokio::spawn(async move {
            let result = group::commit(&cluster, &group_id, Some(&state), &offsets).await;
            callback(result);
        });
        Ok(())
    }

    /// Stops fetching these assigned partitions (consumer-side backpressure) until
    /// [`Consumer::resume`]; their buffered records are dropped and fetched again later.
    /// They stay assigned, so the group does not rebalance.
    pub fn pause(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            if let Some(state) = self.assignment.get_mut(partition) {
                state.fetch_offset = state.position;
                self.paused.insert(partition.clone());
            }
        }
        let paused = &self.paused;
        self.buffer
            .retain(|record| !paused.contains(&TopicPartition::of(record)));
    }

    /// Fetches paused partitions again, from their positions.
    pub fn resume(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            self.paused.remove(partition);
        }
    }

    /// The paused partitions.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.paused.iter().cloned().collect()
    }

    /// Leaves the group (after an auto-commit of the positions, when enabled): epoch -1, or
    /// -2 for a static member, whose partitions stay reserved for its instance id until the
    /// session timeout. The partitions are reported revoked to the listener first, so it can
    /// commit. A consumer without a group just stops.
    pub async fn close(mut self) -> Result<()> {
        if let Some(fetch) = self.fetch.take() {
            fetch.abort();
        }
        let Some(mut group) = self.group.take() else {
            return Ok(());
        };
        // The heartbeat task keeps running until the commit is done: a heartbeat the
        // coordinator answered with a new member epoch may still be on its way, and only the
        // task would take that epoch, which the commit needs (it retries on
        // `StaleMemberEpoch` with the epoch the task last took).
        let fatal = group.state.lock().expect("member lock").fatal.clone();
        let mut result = Ok(());
        if fatal.is_none() {
            let revoked: Vec<(TopicPartition, Option<Offset>)> = self
                .assignment
                .iter()
                .map(|(partition, state)| (partition.clone(), state.position))
                .collect();
            let mut offsets = group
                .listener
                .get_mut()
                .expect("listener lock")
                .on_revoked(&revoked);
            if self.config.enable_auto_commit {
                for (partition, position) in &revoked {
                    if let Some(position) = position {
                        if !offsets.iter().any(|(chosen, _)| chosen == partition) {
                            offsets.push((partition.clone(), *position));
                        }
                    }
                }
            }
            result = group::commit(
                &self.cluster,
                &group.subscription.group_id,
                Some(&group.state),
                &offsets,
            )
            .await;
        }
        group.heartbeat.abort();
        let left = group::leave(&self.cluster, &group.subscription, &group.state).await;
        self.assignment.clear();
        result.and(left)
    }

    /// Replaces the assignment with these partitions. Positions of partitions that stay
    /// assigned are kept; new ones start per `auto_offset_reset` unless sought. Unknown topics
    /// and partitions are refused and leave the assignment unchanged.
    pub async fn assign(&mut self, partitions: &[(&str, u32)]) -> Result<()> {
        for (topic, partition) in partitions {
            self.cluster.partition(topic, *partition).await?;
        }
        let mut next = BTreeMap::new();
        for (topic, partition) in partitions {
            let key = TopicPartition::new(topic, *partition);
            let state = self.assignment.remove(&key).unwrap_or(PartitionState {
                fetch_offset: None,
                position: None,
                high_watermark: None,
            });
            next.insert(key, state);
        }
        self.assignment = next;
        let assignment = &self.assignment;
        self.buffer
            .retain(|record| assignment.contains_key(&TopicPartition::of(record)));
        Ok(())
    }

    /// Assigns every partition of `topic`.
    pub async fn assign_topic(&mut self, topic: &str) -> Result<Vec<u32>> {
        let metadata = self.cluster.topic(topic).await?;
        let partitions: Vec<u32> = metadata.partitions.iter().map(|p| p.partition).collect();
        let pairs: Vec<(&str, u32)> = partitions.iter().map(|p| (topic, *p)).collect();
        self.assign(&pairs).await?;
        Ok(partitions)
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.keys().cloned().collect()
    }

    /// Moves the position of an assigned partition. Buffered records of that partition are
    /// dropped.
    pub async fn seek(&mut self, topic: &str, partition: u32, to: SeekTo) -> Result<Offset> {
        let key = TopicPartition::new(topic, partition);
        if !self.assignment.contains_key(&key) {
            return Err(ClientError::invalid(format!(
                "{topic}/{partition} is not assigned to this consumer"
            )));
        }
        let offset = match to {
            SeekTo::Offset(offset) => offset,
            SeekTo::Earliest => {
                self.list_offset(topic, partition, OffsetSpec::Earliest)
                    .await?
            }
            SeekTo::Latest => {
                self.list_offset(topic, partition, OffsetSpec::Latest)
                    .await?
            }
            SeekTo::Timestamp(ms) => {
                self.list_offset(topic, partition, OffsetSpec::Timestamp(ms))
                    .await?
            }
        };
        self.set_position(&key, offset);
        Ok(offset)
    }

    fn set_position(&mut self, key: &TopicPartition, offset: Offset) {
        if let Some(state) = self.assignment.get_mut(key) {
            state.fetch_offset = Some(offset);
            state.position = Some(offset);
        }
        self.buffer
            .retain(|record| !(record.partition == key.partition && record.topic == key.topic));
    }

    /// The next offset `poll` will return for the partition (`None` before it is known).
    pub fn position(&self, topic: &str, partition: u32) -> Option<Offset> {
        self.assignment
            .get(&TopicPartition::new(topic, partition))
            .and_then(|state| state.position)
    }

    /// The high watermark the last fetch reported for the partition.
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Option<Offset> {
        self.assignment
            .get(&TopicPartition::new(topic, partition))
            .and_then(|state| state.high_watermark)
    }

    /// Asks the partition's leader for an offset (earliest, latest, or by timestamp).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Offset> {
        self.cluster.list_offset(topic, partition, spec).await
    }

    /// The records as a [`futures::Stream`], one item per record in `poll` order, as
    /// rdkafka's `StreamConsumer` gives them: `while let Some(record) = stream.next().await`.
    /// It never ends by itself; an error is an item too (the next item polls again). Dropping
    /// the stream with records polled but not yet yielded moves their partitions back to the
    /// first of them, so nothing is skipped (and `commit_sync` afterwards commits only what
    /// was yielded).
    ///
    /// ```no_run
    /// use cairn_client::{ClientConfig, Consumer, ConsumerConfig};
    /// use futures::StreamExt;
    ///
    /// # async fn run() -> cairn_client::error::Result<()> {
    /// let mut consumer = Consumer::new(ClientConfig::new("127.0.0.1:7171")?, ConsumerConfig::default())?;
    /// consumer.subscribe(&["orders"], "billing").await?;
    /// let mut records = consumer.stream();
    /// while let Some(record) = records.next().await {
    ///     let record = record?;
    ///     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream(&mut self) -> futures::stream::BoxStream<'_, Result<ConsumerRecord>> {
        let state = StreamState {
            consumer: self,
            pending: VecDeque::new(),
        };
        // Boxed (pinned), so `next()` works on it without pinning it first.
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(record) = state.pending.pop_front() {
                    return Some((Ok(record), state));
                }
                match state.consumer.poll(STREAM_POLL_WAIT).await {
                    Ok(records) => state.pending.extend(records),
                    Err(error) => return Some((Err(error), state)),
                }
            }
        }))
    }

    /// Returns the next records, waiting up to `timeout` for some to arrive. An empty vector
    /// means none arrived in time. At most `max_poll_records` are returned.
    ///
    /// When the buffer runs low, the next fetch is started before returning, so it travels
    /// while the application works on the records just returned.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0u32;
        self.auto_commit_if_due();
        loop {
            self.reconcile().await?;
            if !self.buffer.is_empty() {
                let records = self.take_buffered();
                if self.buffer.len() < self.config.max_poll_records && self.fetch.is_none() {
                    self.start_fetch(self.config.fetch_max_wait);
                }
                return Ok(records);
            }
            if self.assignment.is_empty() || self.fetchable() == 0 {
                let deadline = tokio::time::Instant::from_std(deadline);
                match self.group.as_ref() {
                    // A member waits for the coordinator to give it partitions.
                    Some(group) => {
                        let changed = Arc::clone(&group.changed);
                        if tokio::time::timeout_at(deadline, changed.notified())
                            .await
                            .is_err()
                        {
                            return Ok(Vec::new());
                        }
                        continue;
                    }
                    None => {
                        tokio::time::sleep_until(deadline).await;
                        return Ok(Vec::new());
                    }
                }
            }
            let result = self.fetch_until(deadline).await;
            match result {
                Ok(true) => attempt = 0,
                // The fetch is still out; it is picked up by the next poll.
                Ok(false) => return Ok(Vec::new()),
                Err(error) if error.is_retriable() => {
                    if error.needs_metadata_refresh() {
                        self.cluster.invalidate();
                    }
                    tracing::debug!(%error, "fetch failed; retrying");
                    let backoff = self.cluster.config().backoff(attempt);
                    attempt += 1;
                    if Instant::now() + backoff >= deadline {
                        return Ok(Vec::new());
                    }
                    tokio::time::sleep(backoff).await;
                }
                Err(error) => return Err(error),
            }
            if self.buffer.is_empty() && Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Assigned partitions that are not paused.
    fn fetchable(&self) -> usize {
        self.assignment
            .keys()
            .filter(|partition| !self.paused.contains(*partition))
            .count()
    }

    /// Starts an async commit of the positions when auto-commit is on and its interval has
    /// passed since the last one.
    fn auto_commit_if_due(&mut self) {
        if !self.config.enable_auto_commit {
            return;
        }
        let interval = self.config.auto_commit_interval;
        let Some(group) = self.group.as_mut() else {
            return;
        };
        if group.last_auto_commit.elapsed() < interval {
            return;
        }
        group.last_auto_commit = Instant::now();
        let _ = self.commit_async(|result| {
            if let Err(error) = result {
                tracing::warn!(%error, "auto-commit failed");
            }
        });
    }

    fn take_buffered(&mut self) -> Vec<ConsumerRecord> {
        let records = self.buffer.take_front(self.config.max_poll_records);
        for record in &records {
            let key = TopicPartition::of(record);
            if let Some(state) = self.assignment.get_mut(&key) {
                state.position = Some(record.offset.plus(1));
            }
        }
        self.advance_past_skipped();
        records
    }

    /// A partition with nothing left in the buffer has returned everything below its fetch
    /// offset, so its position moves there: past control batches (a new leader's marker),
    /// which hold no records but offsets. Without this a committed position would stop
    /// before a trailing marker and the group's lag would never reach 0.
    fn advance_past_skipped(&mut self) {
        for (key, state) in self.assignment.iter_mut() {
            if self.buffer.holds(key) {
                continue;
            }
            if let (Some(position), Some(fetched)) = (state.position, state.fetch_offset) {
                if fetched > position {
                    state.position = Some(fetched);
                }
            }
        }
    }

    /// Makes sure a fetch is out (resolving missing positions first) and waits for it until
    /// `deadline`. Returns whether it completed (and its records were buffered).
    async fn fetch_until(&mut self, deadline: Instant) -> Result<bool> {
        if self.fetch.is_none() {
            let unresolved: Vec<TopicPartition> = self
                .assignment
                .iter()
                .filter(|(_, state)| state.fetch_offset.is_none())
                .map(|(key, _)| key.clone())
                .collect();
            for key in unresolved {
                self.reset_offset(&key).await?;
            }
            self.start_fetch(deadline.saturating_duration_since(Instant::now()));
        }
        let Some(fetch) = self.fetch.as_mut() else {
            return Ok(true);
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let outcome = match tokio::time::timeout_at(deadline, fetch).await {
            Ok(outcome) => outcome,
            Err(_) => return Ok(false),
        };
        self.fetch = None;
        let outcome = outcome
            .map_err(|error| ClientError::protocol(format!("fetch task failed: {error}")))?;
        self.absorb(outcome?).await?;
        self.advance_past_skipped();
        Ok(true)
    }

    /// Starts one fetch per leader for every partition with a known fetch offset, in a
    /// background task.
    fn start_fetch(&mut self, wait: Duration) {
        let mut wanted: Vec<(TopicPartition, Offset)> = self
            .assignment
            .iter()
            .filter(|(key, _)| !self.paused.contains(*key))
            .filter_map(|(key, state)| state.fetch_offset.map(|offset| (key.clone(), offset)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let first = self.fetch_rotation % wanted.len();
        wanted.rotate_left(first);
        let cluster = Arc::clone(&self.cluster);
        let config = self.config.clone();
        let max_wait_ms = millis_u32(wait).min(millis_u32(config.fetch_max_wait));
        self.fetch = Some(tokio::spawn(fetch_all(
            cluster,
            config,
            wanted,
            max_wait_ms,
        )));
    }

    /// Buffers the records of a completed fetch. A partition sought or unassigned while the
    /// fetch was out is skipped (its data starts at the wrong offset).
    async fn absorb(&mut self, replies: Vec<LeaderFetch>) -> Result<()> {
        let mut first_error = None;
        let mut partitions_with_data = 0usize;
        for LeaderFetch { offsets, reply } in replies {
            let requested_offsets: HashMap<&TopicPartition, Offset> =
                offsets.iter().map(|(key, offset)| (key, *offset)).collect();
            let reply = match reply {
                Ok(Response::Fetch(reply)) => reply,
                Ok(other) => return Err(unexpected("Fetch", &other)),
                Err(error) => {
                    // Marked at once: when other leaders' records fill the buffer, this
                    // error is not returned, and a partition whose leader moved (a node
                    // killed) would be fetched from the old one until metadata expired.
                    if error.needs_metadata_refresh() {
                        self.cluster.invalidate();
                    }
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            for partition in reply.partitions {
                let key = TopicPartition::new(&partition.topic, partition.partition);
                let requested = requested_offsets.get(&key).copied();
                let current = self
                    .assignment
                    .get(&key)
                    .and_then(|state| state.fetch_offset);
                if requested.is_none() || requested != current || self.paused.contains(&key) {
                    continue;
                }
                match partition.result {
                    Ok(fetched) => {
                        if !fetched.batches.is_empty() {
                            partitions_with_data += 1;
                        }
                        self.buffer_fetched(&key, fetched)?
                    }
                    Err(error) => self.partition_error(&key, error, &mut first_error).await?,
                }
            }
        }
        tracing::debug!(
            partitions_with_data,
            buffered = self.buffer.len(),
            "fetch absorbed"
        );
        // The partitions that just returned data go to the back of the next request, so that
        // one fetch's byte budget is not always spent on the first partitions (Kafka's fetch
        // sessions rotate the same way).
        self.fetch_rotation = self
            .fetch_rotation
            .wrapping_add(partitions_with_data.max(1));
        match first_error {
            // Records that did arrive are served first; the failure is retried next poll.
            Some(error) if self.buffer.is_empty() => Err(error),
            _ => Ok(()),
        }
    }

    async fn partition_error(
        &mut self,
        key: &TopicPartition,
        error: ApiError,
        first_error: &mut Option<ClientError>,
    ) -> Result<()> {
        match error {
            ApiError::OffsetOutOfRange { .. } => {
                tracing::info!(topic = %key.topic, partition = key.partition, %error, "resetting position");
                self.reset_offset(key).await
            }
            error if error.is_retriable() || error.needs_metadata_refresh() => {
                self.cluster.invalidate();
                if error.is_retriable() {
                    first_error.get_or_insert(ClientError::Api(error));
                    Ok(())
                } else {
                    Err(ClientError::Api(error))
                }
            }
            error => Err(ClientError::Api(error)),
        }
    }

    /// Moves a partition to the offset `auto_offset_reset` names.
    async fn reset_offset(&mut self, key: &TopicPartition) -> Result<()> {
        let spec = match self.config.auto_offset_reset {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
        };
        let offset = self.list_offset(&key.topic, key.partition, spec).await?;
        self.set_position(key, offset);
        Ok(())
    }

    /// Decodes one partition's fetched batches into the buffer, from its fetch offset on.
    fn buffer_fetched(&mut self, key: &TopicPartition, fetched: FetchedRecords) -> Result<()> {
        let Some(state) = self.assignment.get_mut(key) else {
            // Unassigned while the fetch was out: drop its records.
            return Ok(());
        };
        let Some(mut next) = state.fetch_offset else {
            return Ok(());
        };
        state.high_watermark = Some(fetched.high_watermark);
        for batch in split_batches(&fetched.batches) {
            let batch = batch.map_err(|error| {
                ClientError::Api(ApiError::CorruptBatch {
                    reason: format!("{}/{}: {error}", key.topic, key.partition),
                })
            })?;
            if batch.next_offset() <= next {
                continue;
            }
            if batch.header().is_control() {
                next = batch.next_offset();
                continue;
            }
            for record in batch.records() {
                let record = record.map_err(|error| {
                    ClientError::Api(ApiError::CorruptBatch {
                        reason: format!("{}/{}: {error}", key.topic, key.partition),
                    })
                })?;
                if record.offset < next {
                    continue;
                }
                self.buffer.push_back(ConsumerRecord {
                    topic: Arc::clone(&key.topic),
                    partition: key.partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                });
            }
            next = batch.next_offset();
        }
        state.fetch_offset = Some(next);
        if state.position.is_none() {
            state.position = Some(next);
        }
        Ok(())
    }
}

/// One leader's fetch: the offsets asked for and the reply.
struct LeaderFetch {
    offsets: Vec<(TopicPartition, Offset)>,
    reply: Result<Response>,
}

/// Sends one fetch per leader, concurrently, and collects the replies.
async fn fetch_all(
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    wanted: Vec<(TopicPartition, Offset)>,
    max_wait_ms: u32,
) -> Result<Vec<LeaderFetch>> {
    let mut by_leader: HashMap<NodeId, Vec<(TopicPartition, Offset)>> = HashMap::new();
    for (key, offset) in wanted {
        let leader = cluster.leader(&key.topic, key.partition).await?;
        by_leader.entry(leader).or_default().push((key, offset));
    }
    let fetches = by_leader.into_iter().map(|(leader, offsets)| {
        let cluster = Arc::clone(&cluster);
        let config = config.clone();
        async move {
            let started = Instant::now();
            let reply = fetch_from(&cluster, &config, leader, &offsets, max_wait_ms).await;
            if tracing::enabled!(tracing::Level::DEBUG) {
                if let Ok(Response::Fetch(reply)) = &reply {
                    let with_data = reply
                        .partitions
                        .iter()
                        .filter_map(|partition| partition.result.as_ref().ok())
                        .filter(|fetched| !fetched.batches.is_empty());
                    let (partitions, bytes) = with_data.fold((0, 0), |(count, bytes), fetched| {
                        (count + 1, bytes + fetched.batches.len())
                    });
                    tracing::debug!(
                        leader = leader.0,
                        asked = offsets.len(),
                        partitions,
                        bytes,
                        took_ms = started.elapsed().as_millis() as u64,
                        "fetch answered"
                    );
                }
            }
            LeaderFetch { offsets, reply }
        }
    });
    Ok(futures::future::join_all(fetches).await)
}

async fn fetch_from(
    cluster: &Cluster,
    config: &ConsumerConfig,
    leader: NodeId,
    offsets: &[(TopicPartition, Offset)],
    max_wait_ms: u32,
) -> Result<Response> {
    let connection = cluster.broker_connection(leader).await?;
    // The reply must fit in one frame of the server's maximum size.
    let max_bytes = config.fetch_max_bytes.min(fetch_bytes_limit(
        connection.limits().frame_bytes_max,
        offsets.len(),
    ));
    let partitions = offsets
        .iter()
        .map(|(key, offset)| FetchPartition {
            topic: key.topic.to_string(),
            partition: key.partition,
            offset: *offset,
            max_bytes: config.fetch_partition_max_bytes.min(max_bytes),
        })
        .collect();
    let request = Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes: config.fetch_min_bytes,
        max_bytes,
        partitions,
    });
    let timeout = cluster.config().request_timeout + Duration::from_millis(u64::from(max_wait_ms));
    connection
        .submit_with_timeout(request, timeout)
        .await?
        .wait()
        .await
}

/// The listener of a plain `subscribe`: nothing to do.
struct NoListener;

impl RebalanceListener for NoListener {}

#[cfg(test)]
mod record_buffer_tests {
    use super::*;

    fn record(topic: &Arc<str>, partition: u32, offset: u64) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::clone(topic),
            partition,
            offset: Offset(offset),
            timestamp_ms: 0,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
        }
    }

    fn key(topic: &Arc<str>, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: Arc::clone(topic),
            partition,
        }
    }

    #[test]
    fn a_partition_is_held_until_its_last_record_is_taken_or_dropped() {
        let topic: Arc<str> = Arc::from("t");
        let mut buffer = RecordBuffer::default();
        for offset in 0..3 {
            buffer.push_back(record(&topic, 0, offset));
        }
        buffer.push_back(record(&topic, 1, 0));
        buffer.push_back(record(&topic, 2, 0));

        let taken = buffer.take_front(2);
        assert_eq!(
            taken.iter().map(|r| r.offset.0).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(
            buffer.holds(&key(&topic, 0)),
            "offset 2 of partition 0 is left"
        );
        let taken = buffer.take_front(2);
        assert_eq!(
            taken
                .iter()
                .map(|r| (r.partition, r.offset.0))
                .collect::<Vec<_>>(),
            vec![(0, 2), (1, 0)]
        );
        assert!(!buffer.holds(&key(&topic, 0)));
        assert!(!buffer.holds(&key(&topic, 1)));
        assert!(buffer.holds(&key(&topic, 2)));

        buffer.push_back(record(&topic, 3, 0));
        buffer.retain(|r| r.partition != 2);
        assert!(!buffer.holds(&key(&topic, 2)), "dropped by retain");
        assert!(buffer.holds(&key(&topic, 3)));
        assert_eq!(buffer.len(), 1);
        assert_eq!(
            buffer.take_front(10).len(),
            1,
            "take_front stops at the end"
        );
        assert!(buffer.is_empty() && !buffer.holds(&key(&topic, 3)));

        buffer.push_back(record(&topic, 4, 0));
        buffer.clear();
        assert!(buffer.is_empty() && !buffer.holds(&key(&topic, 4)));
    }
}
