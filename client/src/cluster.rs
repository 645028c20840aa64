//! The client's view of the cluster: one connection per broker address (opened on first use,
//! reopened after a failure), a metadata cache (brokers, and per partition its leader), routing
//! of a request to a partition's leader, and the retry loop every component shares.
//!
//! Metadata is refreshed when it is older than `metadata_max_age`, or when a failure says
//! the client's view is out of date ([`ClientError::needs_metadata_refresh`]). Concurrent
//! refreshes coalesce: callers that wanted one while another ran use its result.

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use cairn_protocol::group::FindCoordinatorRequest;
use cairn_protocol::messages::{
    ListOffsetsRequest, MetadataRequest, OffsetSpec, PartitionMetadata, TopicMetadata,
};
use cairn_protocol::{ApiError, NodeId, Offset, Request, Response};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One cached view of the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub brokers: HashMap<NodeId, String>,
    pub topics: HashMap<String, Arc<TopicMetadata>>,
    /// Why the last refresh got no metadata for a topic it asked for: `UnknownTopic` from a
    /// node with up-to-date metadata, or a retriable refusal (`NotReady` from a node still
    /// catching up on cluster metadata, which another node may answer).
    pub topic_errors: HashMap<String, ApiError>,
    pub fetched_at: Instant,
}

type ConnectionSlot = Arc<tokio::sync::Mutex<Option<Connection>>>;

pub(crate) struct Cluster {
    config: ClientConfig,
    connections: Mutex<HashMap<String, ConnectionSlot>>,
    metadata: RwLock<Arc<Metadata>>,
    /// Set by failures that show the cache is out of date; the next lookup refreshes.
    stale: AtomicBool,
    /// Bumped by every completed refresh, so a waiter can tell that one ran meanwhile.
    refreshes: AtomicU64,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Rotates the broker tried first for requests any broker can answer.
    next_any: AtomicUsize,
    /// Group id to the address of its coordinator, as `FindCoordinator` last said. An entry
    /// is dropped on `NotCoordinator` or a transport failure, so the next call asks again.
    coordinators: Mutex<HashMap<String, String>>,
    /// A connection to some broker was made once. Until then, brokers that cannot be
    /// reached are retried only for `connect_timeout`, not the whole request timeout:
    /// a wrong bootstrap address fails fast instead of after 30 s.
    reached: AtomicBool,
}

impl Cluster {
    pub fn new(config: ClientConfig) -> Result<Arc<Cluster>> {
        config.validate()?;
        Ok(Arc::new(Cluster {
            config,
            connections: Mutex::new(HashMap::new()),
            metadata: RwLock::new(Arc::new(Metadata {
                brokers: HashMap::new(),
                topics: HashMap::new(),
                topic_errors: HashMap::new(),
                fetched_at: Instant::now(),
            })),
            stale: AtomicBool::new(true),
            refreshes: AtomicU64::new(0),
            refresh_lock: tokio::sync::Mutex::new(()),
            next_any: AtomicUsize::new(0),
            coordinators: Mutex::new(HashMap::new()),
            reached: AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn snapshot(&self) -> Arc<Metadata> {
        Arc::clone(&self.metadata.read().expect("metadata lock"))
    }

    /// Marks the metadata out of date: the next lookup fetches it again.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    fn needs_refresh(&self, metadata: &Metadata) -> bool {
        self.stale.load(Ordering::Relaxed)
            || metadata.fetched_at.elapsed() > self.config.metadata_max_age
    }

    /// The connection to `address`, opening it if there is none or the last one failed.
    pub async fn connection(&self, address: &str) -> Result<Connection> {
        let slot = {
            let mut connections = self.connections.lock().expect("connections lock");
            Arc::clone(connections.entry(address.to_owned()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref() {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }
        *slot = None;
        let connection = Connection::connect(address, &self.config).await?;
        self.reached.store(true, Ordering::Relaxed);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// The connection to node `node_id`, by the address metadata gives it.
    pub async fn broker_connection(&self, node_id: NodeId) -> Result<Connection> {
        let address = self.snapshot().brokers.get(&node_id).cloned();
        match address {
            Some(address) => self.connection(&address).await,
            None => {
                self.invalidate();
                Err(ClientError::UnknownBroker { node_id: node_id.0 })
            }
        }
    }

    /// A connection to any reachable broker: known brokers first, then the bootstrap list,
    /// starting at a rotating position so load spreads.
    pub async fn any_connection(&self) -> Result<Connection> {
        let mut candidates: Vec<String> = self.snapshot().brokers.values().cloned().collect();
        candidates.sort();
        for address in &self.config.bootstrap {
            if !candidates.contains(address) {
                candidates.push(address.clone());
            }
        }
        let start = self.next_any.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for index in 0..candidates.len() {
            let address = &candidates[(start + index) % candidates.len()];
            match self.connection(address).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::invalid("no broker address known")))
    }

    /// Fetches metadata for every cached topic plus `wanted`, unless a refresh that began
    /// after this call was made already ran.
    pub async fn refresh(&self, wanted: &[&str]) -> Result<Arc<Metadata>> {
        let seen = self.refreshes.load(Ordering::Acquire);
        let _guard = self.refresh_lock.lock().await;
        if self.refreshes.load(Ordering::Acquire) != seen {
            let snapshot = self.snapshot();
            if wanted
                .iter()
                .all(|topic| snapshot.topics.contains_key(*topic))
            {
                return Ok(snapshot);
            }
        }
        let current = self.snapshot();
        let mut topics: Vec<String> = current.topics.keys().cloned().collect();
        for topic in wanted {
            if !current.topics.contains_key(*topic) {
                topics.push((*topic).to_owned());
            }
        }
        let connection = self.any_connection().await?;
        let reply = connection
            .call(Request::Metadata(MetadataRequest {
                topics: Some(topics),
            }))
            .await?;
        let Response::Metadata(reply) = reply else {
            return Err(ClientError::protocol(format!(
                "expected a metadata reply, got {}",
                response_kind(&reply)
            )));
        };
        let mut next = Metadata {
            brokers: reply
                .brokers
                .into_iter()
                .map(|broker| (broker.node_id, broker.address))
                .collect(),
            topics: HashMap::new(),
            topic_errors: HashMap::new(),
            fetched_at: Instant::now(),
        };
        for topic in reply.topics {
            // An unknown topic (deleted, or never created) drops out of the cache; why it
            // did is kept for `Cluster::topic_within` to decide whether to ask again.
            match topic.result {
                Ok(metadata) => {
                    next.topics.insert(topic.name, Arc::new(metadata));
                }
                Err(error) => {
                    next.topic_errors.insert(topic.name, error);
                }
            }
        }
        let next = Arc::new(next);
        *self.metadata.write().expect("metadata lock") = Arc::clone(&next);
        self.stale.store(false, Ordering::Relaxed);
        self.refreshes.fetch_add(1, Ordering::Release);
        Ok(next)
    }

    /// The metadata of `topic`, refreshing when it is unknown or the cache is out of date;
    /// retriable failures are retried within the request timeout (see
    /// [`Cluster::topic_within`]).
    pub async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>> {
        self.topic_within(topic, Instant::now() + self.config.request_timeout)
            .await
    }

    /// [`Cluster::topic`] retrying until `deadline`: a node that cannot answer (unreachable,
    /// `NotReady` while it catches up on cluster metadata after a restart) is retried, and
    /// since each refresh starts at the next known broker, another node answers next. Only an
    /// `UnknownTopic` from a node whose metadata is up to date is final, at once, as Kafka's
    /// producer waits for metadata within `max.block.ms` but fails a missing topic.
    pub async fn topic_within(&self, topic: &str, deadline: Instant) -> Result<Arc<TopicMetadata>> {
        let snapshot = self.snapshot();
        if !self.needs_refresh(&snapshot) {
            if let Some(metadata) = snapshot.topics.get(topic) {
                return Ok(Arc::clone(metadata));
            }
        }
        self.with_retries(deadline, |_| async move {
            let snapshot = self.refresh(&[topic]).await?;
            if let Some(metadata) = snapshot.topics.get(topic) {
                return Ok(Arc::clone(metadata));
            }
            Err(ClientError::Api(
                snapshot
                    .topic_errors
                    .get(topic)
                    .cloned()
                    .unwrap_or_else(|| ApiError::UnknownTopic {
                        topic: topic.to_owned(),
                    }),
            ))
        })
        .await
    }

    /// Metadata of one partition; an index past the topic's partitions is a typed error.
    pub async fn partition(&self, topic: &str, partition: u32) -> Result<PartitionMetadata> {
        let metadata = self.topic(topic).await?;
        metadata
            .partitions
            .iter()
            .find(|candidate| candidate.partition == partition)
            .cloned()
            .ok_or_else(|| {
                ClientError::Api(ApiError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition,
                    partitions: metadata.partitions.len() as u32,
                })
            })
    }

    /// The leader of `topic`/`partition` according to metadata.
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<NodeId> {
        let metadata = self.partition(topic, partition).await?;
        metadata.leader.ok_or_else(|| {
            self.invalidate();
            ClientError::LeaderNotAvailable {
                topic: topic.to_owned(),
                partition,
            }
        })
    }

    /// The connection to the leader of `topic`/`partition`.
    pub async fn leader_connection(&self, topic: &str, partition: u32) -> Result<Connection> {
        let leader = self.leader(topic, partition).await?;
        self.broker_connection(leader).await
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not retriable, or the
    /// next backoff would pass `deadline` (then [`ClientError::DeliveryTimeout`] carries the
    /// last failure). Failures that show stale metadata mark it for refresh.
    pub async fn with_retries<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let error = match attempt(attempts).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !error.is_retriable() {
                if error.needs_metadata_refresh() {
                    self.invalidate();
                }
                return Err(error);
            }
            if error.needs_metadata_refresh() {
                self.invalidate();
            }
            let never_reached = matches!(error, ClientError::Connect { .. })
                && !self.reached.load(Ordering::Relaxed);
            if never_reached && started.elapsed() >= self.config.connect_timeout {
                return Err(error);
            }
            let backoff = self.config.backoff(attempts);
            if Instant::now() + backoff >= deadline {
                return Err(ClientError::DeliveryTimeout {
                    waited: started.elapsed(),
                    last: Box::new(error),
                });
            }
            tracing::debug!(%error, attempt = attempts, "retrying after {backoff:?}");
            tokio::time::sleep(backoff).await;
            attempts += 1;
        }
    }

    /// Sends a request any broker can answer (metadata, admin), retrying retriable failures
    /// within the request timeout. A `NotLeader` refusal with a hint sends the next attempt to
    /// the hinted node (admin requests that only the metadata leader serves).
    pub async fn call_any(&self, request: Request) -> Result<Response> {
        let deadline = Instant::now() + self.config.request_timeout;
        let hint: Mutex<Option<NodeId>> = Mutex::new(None);
        self.with_retries(deadline, |_| {
            let request = request.clone();
            let hint = &hint;
            async move {
                let target = *hint.lock().expect("hint lock");
                let connection = match target {
                    Some(node_id) => match self.broker_connection(node_id).await {
                        Ok(connection) => connection,
                        Err(_) => {
                            // A client that never fetched metadata does not know where the
                            // hinted node listens yet: learn it once, then go there.
                            let _ = self.refresh(&[]).await;
                            match self.broker_connection(node_id).await {
                                Ok(connection) => connection,
                                Err(_) => self.any_connection().await?,
                            }
                        }
                    },
                    None => self.any_connection().await?,
                };
                let result = connection.call(request).await;
                if let Err(ClientError::Api(ApiError::NotLeader {
                    leader_hint: Some(leader),
                    ..
                })) = &result
                {
                    *hint.lock().expect("hint lock") = Some(*leader);
                }
                result
            }
        })
        .await
    }

    /// An offset of a partition from its leader (`ListOffsets`), within the request timeout.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Offset> {
        let deadline = Instant::now() + self.config.request_timeout;
        let request = Request::ListOffsets(ListOffsetsRequest {
            topic: topic.to_owned(),
            partition,
            spec,
        });
        match self
            .call_leader(topic, partition, request, deadline)
            .await?
        {
            Response::ListOffsets(reply) => Ok(reply.offset),
            other => Err(unexpected("ListOffsets", &other)),
        }
    }

    /// Sends a request to the leader of `topic`/`partition`, retrying retriable failures until
    /// `deadline`.
    pub async fn call_leader(
        &self,
        topic: &str,
        partition: u32,
        request: Request,
        deadline: Instant,
    ) -> Result<Response> {
        self.with_retries(deadline, |_| {
            let request = request.clone();
            async move {
                let connection = self.leader_connection(topic, partition).await?;
                connection.call(request).await
            }
        })
        .await
    }
}

impl Cluster {
    /// The connection to the coordinator of `group_id`, asking any broker with
    /// `FindCoordinator` when it is not cached.
    pub async fn coordinator_connection(&self, group_id: &str) -> Result<Connection> {
        let cached = self
            .coordinators
            .lock()
            .expect("coordinators lock")
            .get(group_id)
            .cloned();
        if let Some(address) = cached {
            return self.connection(&address).await;
        }
        let reply = self
            .any_connection()
            .await?
            .call(Request::FindCoordinator(FindCoordinatorRequest {
                group_id: group_id.to_owned(),
            }))
            .await?;
        let Response::FindCoordinator(reply) = reply else {
            return Err(unexpected("FindCoordinator", &reply));
        };
        let address = match (reply.address, reply.coordinator) {
            (Some(address), _) => address,
            (None, Some(node_id)) => {
                let known = self.snapshot().brokers.get(&node_id).cloned();
                match known {
                    Some(address) => address,
                    None => self
                        .refresh(&[])
                        .await?
                        .brokers
                        .get(&node_id)
                        .cloned()
                        .ok_or(ClientError::UnknownBroker { node_id: node_id.0 })?,
                }
            }
            (None, None) => return Err(ClientError::Api(ApiError::CoordinatorNotAvailable)),
        };
        self.coordinators
            .lock()
            .expect("coordinators lock")
            .insert(group_id.to_owned(), address.clone());
        self.connection(&address).await
    }

    /// Forgets where `group_id` is coordinated: the next call asks again.
    pub fn forget_coordinator(&self, group_id: &str) {
        self.coordinators
            .lock()
            .expect("coordinators lock")
            .remove(group_id);
    }

    /// One attempt of a request to the coordinator of `group_id`. A refusal or failure that
    /// says the coordinator moved (or may have) drops the cached coordinator.
    pub async fn call_coordinator_once(
        &self,
        group_id: &str,
        request: Request,
    ) -> Result<Response> {
        let result = match self.coordinator_connection(group_id).await {
            Ok(connection) => connection.call(request).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            // A hint naming a broker this client knows saves a FindCoordinator round trip;
            // a wrong hint costs one more NotCoordinator, after which the cache is dropped.
            let hinted = match error {
                ClientError::Api(ApiError::NotCoordinator {
                    coordinator_hint: Some(node_id),
                }) => self.snapshot().brokers.get(node_id).cloned(),
                _ => None,
            };
            match hinted {
                Some(address) => {
                    self.coordinators
                        .lock()
                        .expect("coordinators lock")
                        .insert(group_id.to_owned(), address);
                }
                None if coordinator_moved(error) => self.forget_coordinator(group_id),
                None => {}
            }
        }
        result
    }

    /// Sends a request to the coordinator of `group_id`, retrying retriable failures (a moved
    /// coordinator, a lost connection) until `deadline`. `build` makes each attempt's request,
    /// so an attempt after a heartbeat carries the member's current epoch.
    pub async fn call_coordinator<F>(
        &self,
        group_id: &str,
        deadline: Instant,
        build: F,
    ) -> Result<Response>
    where
        F: Fn() -> Request,
    {
        self.with_retries(deadline, |_| {
            let request = build();
            async move { self.call_coordinator_once(group_id, request).await }
        })
        .await
    }
}

/// Whether a failed coordinator call means the cached coordinator may be wrong.
fn coordinator_moved(error: &ClientError) -> bool {
    match error {
        ClientError::Api(error) => matches!(
            error,
            ApiError::NotCoordinator { .. }
                | ApiError::CoordinatorNotAvailable
                | ApiError::ShuttingDown
                | ApiError::NotReady { .. }
        ),
        ClientError::Connect { .. }
        | ClientError::ConnectionLost { .. }
        | ClientError::RequestTimeout { .. }
        | ClientError::UnknownBroker { .. } => true,
        _ => false,
    }
}

/// The variant name of a response, for error messages.
pub(crate) fn response_kind(response: &Response) -> &'static str {
    response.kind()
}

/// Builds the error for a reply of the wrong kind.
pub(crate) fn unexpected(expected: &str, got: &Response) -> ClientError {
    ClientError::protocol(format!(
        "expected a {expected} reply, got {}",
        response_kind(got)
    ))
}
