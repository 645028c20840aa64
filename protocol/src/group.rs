//! Consumer groups on the wire: the requests of Kafka 4's server-side protocol (KIP-848).
//!
//! A member joins by sending [`ConsumerGroupHeartbeatRequest`] with member epoch
//! [`MemberEpoch::JOIN`], keeps heartbeating with the epoch the last reply gave it, and leaves
//! with [`MemberEpoch::LEAVE`] (or [`MemberEpoch::STATIC_LEAVE`] for a static member that will
//! come back and wants to keep its partitions). The coordinator computes the assignment; each
//! reply carries the partitions the member may own *now*. A partition moving from member A to
//! member B is first taken out of A's assignment, and appears in B's only after A reported
//! (in its `owned` field) that it let go, or A was fenced: one partition is never read by two
//! members of a group at once.
//!
//! Group `g` is coordinated by the leader of partition [`coordinator_partition`]`(g, N)` of the
//! internal topic [`OFFSETS_TOPIC`]; any other node answers `NotCoordinator` with a hint.
//! [`FindCoordinatorRequest`] asks any node where a group lives.

use crate::error::ApiError;
use crate::ids::{NodeId, Offset};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The internal topic holding group records and committed offsets.
pub const OFFSETS_TOPIC: &str = "__offsets";

/// Longest group id accepted.
pub const GROUP_ID_BYTES_MAX: usize = 255;

/// Longest member id or static instance id accepted.
pub const MEMBER_ID_BYTES_MAX: usize = 255;

/// Longest metadata string a commit may carry with an offset, as Kafka's default
/// `offset.metadata.max.bytes`.
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;

/// Where a member stands in its group: grows by one each time the coordinator gives the
/// member a new assignment. Three values below 1 are requests, as in Kafka.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MemberEpoch(pub i32);

impl MemberEpoch {
    /// Sent by a member that is not (or no longer) in the group: "let me in".
    pub const JOIN: MemberEpoch = MemberEpoch(0);
    /// Sent by a member leaving for good: its partitions go to the others at once.
    pub const LEAVE: MemberEpoch = MemberEpoch(-1);
    /// Sent by a static member shutting down to restart: its partitions stay reserved for its
    /// instance id until the session timeout.
    pub const STATIC_LEAVE: MemberEpoch = MemberEpoch(-2);

    pub fn next(self) -> MemberEpoch {
        MemberEpoch(self.0 + 1)
    }
}

impl fmt::Display for MemberEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The partition of [`OFFSETS_TOPIC`] whose leader coordinates `group_id`: Kafka's
/// `abs(groupId.hashCode()) % partitions`, with Java's `String.hashCode` over UTF-16, so a
/// group lands where a Kafka user expects. `partitions` must be at least 1.
pub fn coordinator_partition(group_id: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "__offsets has at least one partition");
    let hash = group_id.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(unit as i32)
    });
    // Kafka's Utils.abs maps i32::MIN to 0 rather than overflowing.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive as u32 % partitions
}

/// Checks a client-supplied group id: 1 to [`GROUP_ID_BYTES_MAX`] bytes, no control
/// characters (they would corrupt the CLI's tables and logs).
pub fn validate_group_id(group_id: &str) -> Result<(), ApiError> {
    let reason = if group_id.is_empty() {
        Some("group id is empty".to_string())
    } else if group_id.len() > GROUP_ID_BYTES_MAX {
        Some(format!(
            "group id is {} bytes; at most {GROUP_ID_BYTES_MAX} are allowed",
            group_id.len()
        ))
    } else if group_id.chars().any(char::is_control) {
        Some("group id contains a control character".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ApiError::InvalidGroupId {
            group_id: group_id.chars().take(GROUP_ID_BYTES_MAX).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Some partitions of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartitions {
    pub topic: String,
    /// Sorted, without duplicates.
    pub partitions: Vec<u32>,
}

/// Names of the server-side assignors. Kafka 4's `uniform` is its sticky, balanced assignor,
/// so Cairn accepts it as an alias of `sticky`.
pub const ASSIGNOR_RANGE: &str = "range";
pub const ASSIGNOR_ROUND_ROBIN: &str = "round-robin";
pub const ASSIGNOR_STICKY: &str = "sticky";
/// Every assignor name a coordinator accepts.
pub const ASSIGNOR_NAMES: [&str; 4] = [
    ASSIGNOR_RANGE,
    ASSIGNOR_ROUND_ROBIN,
    ASSIGNOR_STICKY,
    "uniform",
];

/// Join, stay, or leave; the one request a group member sends regularly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupHeartbeatRequest {
    pub group_id: String,
    /// Chosen by the member when it first joins (unique, e.g. random); the coordinator picks
    /// one when it is empty, and the reply says which.
    pub member_id: String,
    pub member_epoch: MemberEpoch,
    /// Set for a static member: a restart with the same instance id within the session
    /// timeout takes over the previous incarnation's partitions without a rebalance. Once
    /// joined, `None` means "unchanged".
    pub instance_id: Option<String>,
    /// How long the member may take to release revoked partitions before it is fenced.
    pub rebalance_timeout_ms: u32,
    /// How long the coordinator waits for a heartbeat before it removes the member.
    pub session_timeout_ms: u32,
    /// Topics the member wants to read; `None` means "unchanged since my last heartbeat"
    /// (it must be set when joining).
    pub subscribed_topics: Option<Vec<String>>,
    /// One of [`ASSIGNOR_NAMES`]; `None` keeps the group's current assignor (sticky for a new
    /// group). All members of a group share one assignor: the last one named wins.
    pub assignor: Option<String>,
    /// The partitions the member owns right now; `None` means "unchanged since my last
    /// heartbeat". Reporting fewer than before is how a member confirms a revocation.
    pub owned: Option<Vec<TopicPartitions>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupHeartbeatResponse {
    pub member_id: String,
    /// The epoch the member sends from now on (and with its commits).
    pub member_epoch: MemberEpoch,
    /// When to send the next heartbeat.
    pub heartbeat_interval_ms: u32,
    /// The partitions the member may own now, sorted by topic. Partitions it owns and that
    /// are missing here are revoked: it must stop reading them, commit, and report them no
    /// longer owned. After a leave this is empty.
    pub assignment: Vec<TopicPartitions>,
}

/// One partition's offset to commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitPartition {
    pub topic: String,
    pub partition: u32,
    /// The next offset to read (Kafka's convention: last processed + 1).
    pub offset: Offset,
    /// Free text kept with the offset, at most [`COMMIT_METADATA_BYTES_MAX`] bytes.
    pub metadata: Option<String>,
}

/// Stores committed offsets. A member's commit is accepted only for partitions it owns in
/// its current member epoch; an empty member id with [`MemberEpoch::LEAVE`] commits for a
/// consumer outside any group membership (manual assignment), only while the group has no
/// members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: MemberEpoch,
    pub offsets: Vec<OffsetCommitPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitResponse {
    /// One entry per requested partition, in request order. The partitions with `Ok` were
    /// committed (replicated by a quorum of `__offsets`) before this reply was sent.
    pub partitions: Vec<OffsetCommitPartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitPartitionResult {
    pub topic: String,
    pub partition: u32,
    pub result: Result<(), ApiError>,
}

/// Reads committed offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    /// With a member id and epoch, the request is refused from a fenced member (so a zombie
    /// cannot resume from offsets it no longer owns). `None` for admin tools.
    pub member: Option<(String, MemberEpoch)>,
    /// `None` asks for every partition the group has committed.
    pub partitions: Option<Vec<TopicPartitions>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetFetchResponse {
    /// In request order, or sorted by topic and partition when every partition was asked.
    pub partitions: Vec<CommittedPartitionOffset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedPartitionOffset {
    pub topic: String,
    pub partition: u32,
    /// `None` when the group never committed this partition.
    pub committed: Option<CommittedOffset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: Offset,
    pub metadata: Option<String>,
}

/// Where a group is in its life (KIP-848's states, minus `Assigning`: Cairn's coordinator
/// computes an assignment within the heartbeat that caused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupState {
    /// No members; committed offsets may remain.
    Empty,
    /// Every member owns exactly its target assignment.
    Stable,
    /// Some member has still to release or receive partitions.
    Reconciling,
    /// Deleted, or the coordinator is unloading it.
    Dead,
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupState::Empty => "empty",
            GroupState::Stable => "stable",
            GroupState::Reconciling => "reconciling",
            GroupState::Dead => "dead",
        })
    }
}

/// Lists the groups the answering node coordinates; a client asks every node and merges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroupsRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroupsResponse {
    /// Sorted by group id.
    pub groups: Vec<GroupListing>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListing {
    pub group_id: String,
    pub state: GroupState,
    pub members: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeGroupRequest {
    pub group_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeGroupResponse {
    pub group_id: String,
    pub state: GroupState,
    /// Grows with every change of membership or subscription.
    pub group_epoch: i32,
    pub assignor: String,
    /// Sorted by member id.
    pub members: Vec<MemberDescription>,
    /// Every partition of every subscribed topic, and every partition with a committed
    /// offset; sorted by topic then partition.
    pub partitions: Vec<GroupPartitionDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: MemberEpoch,
    pub subscribed_topics: Vec<String>,
    /// What the member may own now.
    pub assignment: Vec<TopicPartitions>,
    /// What the coordinator wants it to own once reconciliation is done.
    pub target_assignment: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPartitionDescription {
    pub topic: String,
    pub partition: u32,
    /// The member that may read it now, if any.
    pub owner: Option<String>,
    pub committed: Option<Offset>,
    /// The partition's high watermark (the end of what consumers can read), when the
    /// coordinator could learn it.
    pub log_end: Option<Offset>,
    /// `log_end - committed` (or `log_end - log_start` with no commit), when both are known.
    pub lag: Option<u64>,
}

/// Deletes a group and its committed offsets; only an empty group (no members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroupRequest {
    pub group_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroupResponse {
    pub group_id: String,
}

/// Where [`ResetGroupOffsetsRequest`] moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetResetTarget {
    /// Each partition's log start.
    Earliest,
    /// Each partition's high watermark: the group skips everything written so far.
    Latest,
    /// This offset in every named partition, clamped to `[log start, high watermark]`.
    Offset(Offset),
}

/// Rewrites committed offsets of one topic; only for an empty group (a member reading would
/// race the reset), else `GroupNotEmpty`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetGroupOffsetsRequest {
    pub group_id: String,
    pub topic: String,
    /// `None` resets every partition of the topic.
    pub partitions: Option<Vec<u32>>,
    pub to: OffsetResetTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetGroupOffsetsResponse {
    /// The offsets now committed, sorted by partition.
    pub partitions: Vec<CommittedPartitionOffset>,
}

/// Asks any node which node coordinates a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindCoordinatorRequest {
    pub group_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindCoordinatorResponse {
    /// The partition of [`OFFSETS_TOPIC`] holding the group.
    pub partition: u32,
    /// Its leader as the answering node knows it; `None` while none is known (retry).
    pub coordinator: Option<NodeId>,
    /// Where clients reach the coordinator, `host:port`, when known.
    pub address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_request, decode_response, encode_request, encode_response};
    use crate::messages::{Request, Response};
    use crate::{RequestFrame, ResponseFrame};

    /// Expected values are Java's `abs(String.hashCode()) % 50` (hash values noted beside),
    /// so a group lands on the partition a Kafka cluster would pick.
    #[test]
    fn coordinator_partition_matches_kafka() {
        // "hello".hashCode() == 99162322.
        assert_eq!(coordinator_partition("hello", 50), 22);
        // "Aa" and "BB" collide in Java (2112): they must collide here too.
        assert_eq!(coordinator_partition("Aa", 50), 12);
        assert_eq!(coordinator_partition("BB", 50), 12);
        // "my-group".hashCode() == -1906497762: negative hashes are made positive first.
        assert_eq!(coordinator_partition("my-group", 50), 12);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE, which Kafka maps to 0.
        assert_eq!(coordinator_partition("polygenelubricants", 50), 0);
        // A character outside the BMP counts as two UTF-16 units (hash 1772899).
        assert_eq!(coordinator_partition("\u{1F600}", 50), 49);
        assert_eq!(coordinator_partition("", 7), 0);
        assert_eq!(coordinator_partition("hello", 1), 0);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn request_frame(correlation_id: u64, request: Request) -> RequestFrame {
        RequestFrame {
            version: 1,
            correlation_id,
            request,
        }
    }

    /// Encodes, checks the bytes against the golden hex, and checks they decode back.
    fn assert_request_golden(frame: RequestFrame, golden: &str) {
        let bytes = encode_request(&frame);
        assert_eq!(hex(&bytes), golden, "{frame:?}");
        assert_eq!(decode_request(&bytes).unwrap(), frame);
    }

    fn assert_response_golden(frame: ResponseFrame, golden: &str) {
        let bytes = encode_response(&frame);
        assert_eq!(hex(&bytes), golden, "{frame:?}");
        assert_eq!(decode_response(&bytes).unwrap(), frame);
    }

    fn partitions(topic: &str, partitions: &[u32]) -> TopicPartitions {
        TopicPartitions {
            topic: topic.into(),
            partitions: partitions.to_vec(),
        }
    }

    /// Golden bytes: these pin the wire encoding. If one changes, old clients break: bump the
    /// protocol version instead of editing the expectation.
    #[test]
    fn golden_consumer_group_heartbeat() {
        assert_request_golden(
            request_frame(
                2,
                Request::ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest {
                    group_id: "g".into(),
                    member_id: "m".into(),
                    member_epoch: MemberEpoch::JOIN,
                    instance_id: Some("i".into()),
                    rebalance_timeout_ms: 60_000,
                    session_timeout_ms: 45_000,
                    subscribed_topics: Some(vec!["t".into()]),
                    assignor: None,
                    owned: Some(vec![]),
                }),
            ),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f696402a77265717565737481b6436f6e73756d657247726f757048656172746265617489a867726f75705f6964a167a96d656d6265725f6964a16dac6d656d6265725f65706f636800ab696e7374616e63655f6964a169b4726562616c616e63655f74696d656f75745f6d73cdea60b273657373696f6e5f74696d656f75745f6d73cdafc8b1737562736372696265645f746f7069637391a174a861737369676e6f72c0a56f776e656490",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 2,
                result: Ok(Response::ConsumerGroupHeartbeat(
                    ConsumerGroupHeartbeatResponse {
                        member_id: "m".into(),
                        member_epoch: MemberEpoch(3),
                        heartbeat_interval_ms: 3000,
                        assignment: vec![partitions("t", &[0, 2])],
                    },
                )),
            },
            "82ae636f7272656c6174696f6e5f696402a6726573756c7481a24f6b81b6436f6e73756d657247726f757048656172746265617484a96d656d6265725f6964a16dac6d656d6265725f65706f636803b56865617274626561745f696e74657276616c5f6d73cd0bb8aa61737369676e6d656e749182a5746f706963a174aa706172746974696f6e73920002",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 3,
                result: Err(ApiError::FencedMemberEpoch {
                    member_id: "m".into(),
                    current: MemberEpoch(4),
                    received: MemberEpoch(2),
                }),
            },
            "82ae636f7272656c6174696f6e5f696403a6726573756c7481a345727281b146656e6365644d656d62657245706f636883a96d656d6265725f6964a16da763757272656e7404a8726563656976656402",
        );
    }

    #[test]
    fn golden_offset_commit_and_fetch() {
        assert_request_golden(
            request_frame(
                4,
                Request::OffsetCommit(OffsetCommitRequest {
                    group_id: "g".into(),
                    member_id: "m".into(),
                    member_epoch: MemberEpoch(3),
                    offsets: vec![OffsetCommitPartition {
                        topic: "t".into(),
                        partition: 1,
                        offset: Offset(42),
                        metadata: None,
                    }],
                }),
            ),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f696404a77265717565737481ac4f6666736574436f6d6d697484a867726f75705f6964a167a96d656d6265725f6964a16dac6d656d6265725f65706f636803a76f6666736574739184a5746f706963a174a9706172746974696f6e01a66f66667365742aa86d65746164617461c0",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 4,
                result: Ok(Response::OffsetCommit(OffsetCommitResponse {
                    partitions: vec![
                        OffsetCommitPartitionResult {
                            topic: "t".into(),
                            partition: 1,
                            result: Ok(()),
                        },
                        OffsetCommitPartitionResult {
                            topic: "t".into(),
                            partition: 2,
                            result: Err(ApiError::PartitionNotOwned {
                                member_id: "m".into(),
                                topic: "t".into(),
                                partition: 2,
                            }),
                        },
                    ],
                })),
            },
            "82ae636f7272656c6174696f6e5f696404a6726573756c7481a24f6b81ac4f6666736574436f6d6d697481aa706172746974696f6e739283a5746f706963a174a9706172746974696f6e01a6726573756c7481a24f6bc083a5746f706963a174a9706172746974696f6e02a6726573756c7481a345727281b1506172746974696f6e4e6f744f776e656483a96d656d6265725f6964a16da5746f706963a174a9706172746974696f6e02",
        );
        assert_request_golden(
            request_frame(
                5,
                Request::OffsetFetch(OffsetFetchRequest {
                    group_id: "g".into(),
                    member: Some(("m".into(), MemberEpoch(3))),
                    partitions: None,
                }),
            ),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f696405a77265717565737481ab4f6666736574466574636883a867726f75705f6964a167a66d656d62657292a16d03aa706172746974696f6e73c0",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 5,
                result: Ok(Response::OffsetFetch(OffsetFetchResponse {
                    partitions: vec![CommittedPartitionOffset {
                        topic: "t".into(),
                        partition: 1,
                        committed: Some(CommittedOffset {
                            offset: Offset(42),
                            metadata: Some("x".into()),
                        }),
                    }],
                })),
            },
            "82ae636f7272656c6174696f6e5f696405a6726573756c7481a24f6b81ab4f6666736574466574636881aa706172746974696f6e739183a5746f706963a174a9706172746974696f6e01a9636f6d6d697474656482a66f66667365742aa86d65746164617461a178",
        );
    }

    #[test]
    fn golden_group_admin() {
        assert_request_golden(
            request_frame(6, Request::ListGroups(ListGroupsRequest {})),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f696406a77265717565737481aa4c69737447726f75707380",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 6,
                result: Ok(Response::ListGroups(ListGroupsResponse {
                    groups: vec![GroupListing {
                        group_id: "g".into(),
                        state: GroupState::Reconciling,
                        members: 2,
                    }],
                })),
            },
            "82ae636f7272656c6174696f6e5f696406a6726573756c7481a24f6b81aa4c69737447726f75707381a667726f7570739183a867726f75705f6964a167a57374617465ab5265636f6e63696c696e67a76d656d6265727302",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 7,
                result: Ok(Response::DescribeGroup(DescribeGroupResponse {
                    group_id: "g".into(),
                    state: GroupState::Stable,
                    group_epoch: 2,
                    assignor: "sticky".into(),
                    members: vec![MemberDescription {
                        member_id: "m".into(),
                        instance_id: None,
                        member_epoch: MemberEpoch(2),
                        subscribed_topics: vec!["t".into()],
                        assignment: vec![partitions("t", &[0])],
                        target_assignment: vec![partitions("t", &[0])],
                    }],
                    partitions: vec![GroupPartitionDescription {
                        topic: "t".into(),
                        partition: 0,
                        owner: Some("m".into()),
                        committed: Some(Offset(5)),
                        log_end: Some(Offset(9)),
                        lag: Some(4),
                    }],
                })),
            },
            "82ae636f7272656c6174696f6e5f696407a6726573756c7481a24f6b81ad446573637269626547726f757086a867726f75705f6964a167a57374617465a6537461626c65ab67726f75705f65706f636802a861737369676e6f72a6737469636b79a76d656d626572739186a96d656d6265725f6964a16dab696e7374616e63655f6964c0ac6d656d6265725f65706f636802b1737562736372696265645f746f7069637391a174aa61737369676e6d656e749182a5746f706963a174aa706172746974696f6e739100b17461726765745f61737369676e6d656e749182a5746f706963a174aa706172746974696f6e739100aa706172746974696f6e739186a5746f706963a174a9706172746974696f6e00a56f776e6572a16da9636f6d6d697474656405a76c6f675f656e6409a36c616704",
        );
        assert_request_golden(
            request_frame(
                8,
                Request::ResetGroupOffsets(ResetGroupOffsetsRequest {
                    group_id: "g".into(),
                    topic: "t".into(),
                    partitions: Some(vec![0]),
                    to: OffsetResetTarget::Offset(Offset(7)),
                }),
            ),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f696408a77265717565737481b1526573657447726f75704f66667365747384a867726f75705f6964a167a5746f706963a174aa706172746974696f6e739100a2746f81a64f666673657407",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 8,
                result: Err(ApiError::GroupNotEmpty {
                    group_id: "g".into(),
                    members: 1,
                }),
            },
            "82ae636f7272656c6174696f6e5f696408a6726573756c7481a345727281ad47726f75704e6f74456d70747982a867726f75705f6964a167a76d656d6265727301",
        );
        assert_request_golden(
            request_frame(
                9,
                Request::DeleteGroup(DeleteGroupRequest {
                    group_id: "g".into(),
                }),
            ),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f696409a77265717565737481ab44656c65746547726f757081a867726f75705f6964a167",
        );
        assert_request_golden(
            request_frame(
                10,
                Request::FindCoordinator(FindCoordinatorRequest {
                    group_id: "g".into(),
                }),
            ),
            "83a776657273696f6e01ae636f7272656c6174696f6e5f69640aa77265717565737481af46696e64436f6f7264696e61746f7281a867726f75705f6964a167",
        );
        assert_response_golden(
            ResponseFrame {
                correlation_id: 10,
                result: Err(ApiError::NotCoordinator {
                    coordinator_hint: Some(NodeId(2)),
                }),
            },
            "82ae636f7272656c6174696f6e5f69640aa6726573756c7481a345727281ae4e6f74436f6f7264696e61746f7281b0636f6f7264696e61746f725f68696e7402",
        );
    }

    #[test]
    fn group_refusals_are_classified_for_retry() {
        let retriable = [
            ApiError::NotCoordinator {
                coordinator_hint: None,
            },
            ApiError::CoordinatorLoadInProgress,
            ApiError::CoordinatorNotAvailable,
            ApiError::StaleMemberEpoch {
                member_id: "m".into(),
                current: MemberEpoch(3),
                received: MemberEpoch(2),
            },
        ];
        for error in &retriable {
            assert!(error.is_retriable(), "{error:?}");
        }
        let final_refusals = [
            ApiError::FencedMemberEpoch {
                member_id: "m".into(),
                current: MemberEpoch(3),
                received: MemberEpoch(5),
            },
            ApiError::UnknownMemberId {
                group_id: "g".into(),
                member_id: "m".into(),
            },
            ApiError::GroupNotEmpty {
                group_id: "g".into(),
                members: 1,
            },
            ApiError::PartitionNotOwned {
                member_id: "m".into(),
                topic: "t".into(),
                partition: 0,
            },
        ];
        for error in &final_refusals {
            assert!(!error.is_retriable(), "{error:?}");
        }
        assert!(ApiError::NotCoordinator {
            coordinator_hint: None
        }
        .needs_metadata_refresh());
    }

    #[test]
    fn group_ids_are_checked() {
        assert_eq!(validate_group_id("orders-eu.1"), Ok(()));
        assert!(matches!(
            validate_group_id(""),
            Err(ApiError::InvalidGroupId { .. })
        ));
        assert!(matches!(
            validate_group_id(&"g".repeat(256)),
            Err(ApiError::InvalidGroupId { .. })
        ));
        assert_eq!(validate_group_id(&"g".repeat(255)), Ok(()));
        assert!(matches!(
            validate_group_id("a\nb"),
            Err(ApiError::InvalidGroupId { .. })
        ));
    }
}
