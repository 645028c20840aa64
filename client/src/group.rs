//! Group membership for [`crate::Consumer::subscribe`] (Kafka 4's KIP-848, client side).
//!
//! A background task heartbeats the coordinator at the interval it asks for. Each reply
//! carries the partitions the member may own *now* (the target); the task only records it.
//! The consumer reconciles in `poll`, on the application's task, so that listener callbacks
//! and commits run where the application can act: partitions no longer in the target are
//! released first ([`RebalanceListener::on_revoked`], then a synchronous commit of what it
//! returns, then they stop being fetched), and only then are new ones taken
//! ([`RebalanceListener::on_assigned`], starting at the committed offset). The next heartbeat
//! reports what the member owns, which is how the coordinator learns a revocation is done.
//!
//! A fenced or removed member (`FencedMemberEpoch`, `UnknownMemberId`) loses everything at
//! once ([`RebalanceListener::on_lost`], nothing is committed: its epoch no longer may) and
//! joins again at epoch 0.

use crate::cluster::{unexpected, Cluster};
use crate::consumer::TopicPartition;
use crate::error::{ClientError, Result};
use cairn_protocol::group::{
    ConsumerGroupHeartbeatRequest, MemberEpoch, OffsetCommitPartition, OffsetCommitRequest,
    TopicPartitions,
};
use cairn_protocol::{ApiError, Offset, Request, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Told when a group rebalance changes the consumer's partitions. Called from `poll` (and
/// `close`), on the application's task.
pub trait RebalanceListener: Send {
    /// `revoked` (with the positions `poll` reached in them) are about to be released.
    /// Returns the offsets to commit for them before they are released; the consumer
    /// commits them synchronously. The default commits nothing.
    fn on_revoked(
        &mut self,
        revoked: &[(TopicPartition, Option<Offset>)],
    ) -> Vec<(TopicPartition, Offset)> {
        let _ = revoked;
        Vec::new()
    }

    /// `assigned` were added; their positions are the committed offsets (else
    /// `auto_offset_reset`).
    fn on_assigned(&mut self, assigned: &[TopicPartition]) {
        let _ = assigned;
    }

    /// `lost` were taken away without a chance to commit (the member was fenced or timed
    /// out); another member may already read them.
    fn on_lost(&mut self, lost: &[TopicPartition]) {
        let _ = lost;
    }
}

/// A listener that commits, on revocation, every position `poll` has reached: right for an
/// application that processes each batch before its next `poll` (the CLI does).
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitPositionsOnRevoke;

impl RebalanceListener for CommitPositionsOnRevoke {
    fn on_revoked(
        &mut self,
        revoked: &[(TopicPartition, Option<Offset>)],
    ) -> Vec<(TopicPartition, Offset)> {
        revoked
            .iter()
            .filter_map(|(partition, position)| position.map(|offset| (partition.clone(), offset)))
            .collect()
    }
}

/// What the heartbeat task and the consumer share.
#[derive(Debug, Default)]
pub(crate) struct MemberState {
    pub member_id: String,
    pub member_epoch: MemberEpoch,
    /// The partitions the coordinator last said the member may own.
    pub target: BTreeSet<TopicPartition>,
    /// The partitions the consumer has taken (reported in heartbeats).
    pub owned: BTreeSet<TopicPartition>,
    /// The member was fenced or removed: the consumer must drop what it owns.
    pub lost: bool,
    /// A refusal that ends membership (a fenced instance id, an unknown assignor).
    pub fatal: Option<ClientError>,
    /// Whether a heartbeat reply arrived since the last join: a commit before that has no
    /// epoch to carry.
    pub joined: bool,
}

/// Fixed facts of one subscription.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub group_id: String,
    pub topics: Vec<String>,
    pub instance_id: Option<String>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub assignor: Option<String>,
}

pub(crate) fn to_wire(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for partition in partitions {
        by_topic
            .entry(&partition.topic)
            .or_default()
            .push(partition.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            TopicPartitions {
                topic: topic.to_owned(),
                partitions,
            }
        })
        .collect()
}

fn from_wire(assignment: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    assignment
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| TopicPartition::new(&topic.topic, *partition))
        })
        .collect()
}

/// The heartbeat request for the member's current state.
fn heartbeat_request(subscription: &Subscription, state: &MemberState) -> Request {
    let joining = state.member_epoch == MemberEpoch::JOIN;
    // A lost member rejoins owning nothing: the consumer drops those partitions before it
    // takes any new ones.
    let owned = if state.lost {
        Vec::new()
    } else {
        to_wire(&state.owned)
    };
    Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
        group_id: subscription.group_id.clone(),
        member_id: state.member_id.clone(),
        member_epoch: state.member_epoch,
        instance_id: subscription.instance_id.clone(),
        rebalance_timeout_ms: subscription.rebalance_timeout_ms,
        session_timeout_ms: subscription.session_timeout_ms,
        // Sent every time: the coordinator treats it as "unchanged", and a coordinator that
        // just took over from another node learns it again at once.
        subscribed_topics: Some(subscription.topics.clone()),
        assignor: if joining {
            subscription.assignor.clone()
        } else {
            None
        },
        owned: Some(owned),
    })
}

/// Heartbeats until aborted or a fatal refusal. `changed` wakes the consumer's `poll` when
/// the target changed; `wake` lets the consumer ask for a heartbeat at once (after it
/// released partitions, so the coordinator can hand them on).
pub(crate) async fn heartbeat_loop(
    cluster: Arc<Cluster>,
    subscription: Subscription,
    state: Arc<Mutex<MemberState>>,
    wake: Arc<Notify>,
    changed: Arc<Notify>,
) {
    let mut attempt = 0u32;
    loop {
        let request = heartbeat_request(&subscription, &state.lock().expect("member lock"));
        let result = cluster
            .call_coordinator_once(&subscription.group_id, request)
            .await;
        let pause = match result {
            Ok(Response::ConsumerGroupHeartbeat(reply)) => {
                attempt = 0;
                let target = from_wire(&reply.assignment);
                let mut member = state.lock().expect("member lock");
                member.member_id = reply.member_id;
                member.member_epoch = reply.member_epoch;
                member.joined = true;
                if member.target != target {
                    member.target = target;
                    changed.notify_one();
                }
                Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(1)))
            }
            Ok(other) => {
                state.lock().expect("member lock").fatal =
                    Some(unexpected("ConsumerGroupHeartbeat", &other));
                changed.notify_one();
                return;
            }
            Err(error) => match error.api_error() {
                Some(ApiError::FencedMemberEpoch { .. } | ApiError::UnknownMemberId { .. }) => {
                    tracing::info!(group = %subscription.group_id, %error, "member lost its partitions; rejoining");
                    let mut member = state.lock().expect("member lock");
                    member.lost = true;
                    member.joined = false;
                    member.member_epoch = MemberEpoch::JOIN;
                    member.target.clear();
                    changed.notify_one();
                    Duration::ZERO
                }
                _ if error.is_retriable() => {
                    let backoff = cluster.config().backoff(attempt);
                    attempt += 1;
                    tracing::debug!(group = %subscription.group_id, %error, "heartbeat failed; retrying in {backoff:?}");
                    backoff
                }
                _ => {
                    tracing::warn!(group = %subscription.group_id, %error, "group membership ended");
                    state.lock().expect("member lock").fatal = Some(error);
                    changed.notify_one();
                    return;
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Sends the leave heartbeat (epoch -1, or -2 for a static member, which keeps its
/// partitions reserved until the session timeout). Best effort: a member that cannot reach
/// the coordinator is removed after its session timeout anyway.
pub(crate) async fn leave(
    cluster: &Cluster,
    subscription: &Subscription,
    state: &Mutex<MemberState>,
) -> Result<()> {
    let request = {
        let member = state.lock().expect("member lock");
        if member.member_id.is_empty() {
            return Ok(());
        }
        Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
            group_id: subscription.group_id.clone(),
            member_id: member.member_id.clone(),
            member_epoch: if subscription.instance_id.is_some() {
                MemberEpoch::STATIC_LEAVE
            } else {
                MemberEpoch::LEAVE
            },
            instance_id: subscription.instance_id.clone(),
            rebalance_timeout_ms: subscription.rebalance_timeout_ms,
            session_timeout_ms: subscription.session_timeout_ms,
            subscribed_topics: None,
            assignor: None,
            owned: Some(Vec::new()),
        })
    };
    let deadline = Instant::now() + cluster.config().request_timeout;
    match cluster
        .call_coordinator(&subscription.group_id, deadline, || request.clone())
        .await
    {
        Ok(Response::ConsumerGroupHeartbeat(_)) => Ok(()),
        Ok(other) => Err(unexpected("ConsumerGroupHeartbeat", &other)),
        Err(error) => Err(error),
    }
}

/// Commits `offsets` for the member, waiting for the coordinator's reply (which comes after
/// the offsets record is replicated). Retries on a moved coordinator and on a stale epoch
/// (each attempt carries the epoch the latest heartbeat gave); a partition refused for
/// good fails the call with its error.
pub(crate) async fn commit(
    cluster: &Cluster,
    group_id: &str,
    member: Option<&Mutex<MemberState>>,
    offsets: &[(TopicPartition, Offset)],
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let wire: Vec<OffsetCommitPartition> = offsets
        .iter()
        .map(|(partition, offset)| OffsetCommitPartition {
            topic: partition.topic.to_string(),
            partition: partition.partition,
            offset: *offset,
            metadata: None,
        })
        .collect();
    let deadline = Instant::now() + cluster.config().request_timeout;
    cluster
        .with_retries(deadline, |_| {
            let (member_id, member_epoch) = match member {
                Some(member) => {
                    let member = member.lock().expect("member lock");
                    (member.member_id.clone(), member.member_epoch)
                }
                None => (String::new(), MemberEpoch::LEAVE),
            };
            let request = Request::OffsetCommit(OffsetCommitRequest {
                group_id: group_id.to_owned(),
                member_id,
                member_epoch,
                offsets: wire.clone(),
            });
            async move {
                let reply = cluster.call_coordinator_once(group_id, request).await?;
                let Response::OffsetCommit(reply) = reply else {
                    return Err(unexpected("OffsetCommit", &reply));
                };
                // A partition refused for good fails the commit; else a retriable refusal retries
                // the whole commit (committing the same offsets twice is harmless).
                let mut refused = reply
                    .partitions
                    .into_iter()
                    .filter_map(|partition| partition.result.err())
                    .collect::<Vec<_>>();
                refused.sort_by_key(ApiError::is_retriable);
                match refused.into_iter().next() {
                    None => Ok(()),
                    Some(error) => Err(ClientError::Api(error)),
                }
            }
        })
        .await
}
