//! Consumer groups served by real node processes, over raw wire requests: assignment by
//! heartbeats, commits and fetches, zombie fencing, session expiry, lag, and coordinator
//! failover in a 3-node cluster (committed offsets survive and never go backwards).

mod support;

use cairn_protocol::group::{
    CommittedPartitionOffset, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    DescribeGroupRequest, DescribeGroupResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    ListGroupsRequest, MemberEpoch, OffsetCommitPartition, OffsetCommitRequest, OffsetFetchRequest,
    TopicPartitions,
};
use cairn_protocol::{ApiError, NodeId, Offset, Request, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::{TestNode, Wire};

const GROUP: &str = "g";
const TOPIC: &str = "t";
/// Long enough that no member in these tests expires by accident on a slow machine.
const SESSION_MS: u32 = 20_000;
const DEADLINE: Duration = Duration::from_secs(30);

/// A group client over raw frames: finds the coordinator among `nodes`, follows
/// `NotCoordinator`, and retries the retriable refusals until a deadline.
struct Groups {
    nodes: Vec<SocketAddr>,
}

fn is_retriable(error: &ApiError) -> bool {
    matches!(
        error,
        ApiError::NotCoordinator { .. }
            | ApiError::CoordinatorLoadInProgress
            | ApiError::CoordinatorNotAvailable
            | ApiError::NotReady { .. }
            | ApiError::NotLeader { .. }
            | ApiError::Timeout { .. }
    )
}

fn connect(address: SocketAddr) -> Option<Wire> {
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    Some(Wire::connect(address))
}

impl Groups {
    fn find_coordinator(&self) -> (NodeId, SocketAddr) {
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < DEADLINE, "no coordinator found");
            for node in &self.nodes {
                let Some(mut wire) = connect(*node) else {
                    continue;
                };
                let reply = wire.call(Request::FindCoordinator(FindCoordinatorRequest {
                    group_id: GROUP.into(),
                }));
                if let Ok(Response::FindCoordinator(FindCoordinatorResponse {
                    coordinator: Some(coordinator),
                    address: Some(address),
                    ..
                })) = reply
                {
                    return (coordinator, address.parse().expect("an address"));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `request` to the coordinator; retries retriable refusals.
    fn call(&self, request: Request) -> Result<Response, ApiError> {
        let started = Instant::now();
        loop {
            let (_, address) = self.find_coordinator();
            if let Some(mut wire) = connect(address) {
                match wire.call(request.clone()) {
                    Err(error) if is_retriable(&error) => {
                        assert!(started.elapsed() < DEADLINE, "still refused: {error:?}");
                    }
                    other => return other,
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn heartbeat(&self, member: &Member) -> Result<ConsumerGroupHeartbeatResponse, ApiError> {
        let owned = member
            .assigned
            .iter()
            .map(|(topic, partitions)| TopicPartitions {
                topic: topic.clone(),
                partitions: partitions.iter().copied().collect(),
            })
            .collect();
        match self.call(Request::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest {
                group_id: GROUP.into(),
                member_id: member.id.clone(),
                member_epoch: member.epoch,
                instance_id: None,
                rebalance_timeout_ms: 5_000,
                session_timeout_ms: member.session_ms,
                subscribed_topics: Some(vec![TOPIC.into()]),
                assignor: None,
                owned: Some(owned),
            },
        ))? {
            Response::ConsumerGroupHeartbeat(reply) => Ok(reply),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn commit(
        &self,
        member: &Member,
        epoch: MemberEpoch,
        offsets: &[(u32, u64)],
    ) -> Result<(), ApiError> {
        let reply = self.call(Request::OffsetCommit(OffsetCommitRequest {
            group_id: GROUP.into(),
            member_id: member.id.clone(),
            member_epoch: epoch,
            offsets: offsets
                .iter()
                .map(|(partition, offset)| OffsetCommitPartition {
                    topic: TOPIC.into(),
                    partition: *partition,
                    offset: Offset(*offset),
                    metadata: None,
                })
                .collect(),
        }))?;
        match reply {
            Response::OffsetCommit(reply) => {
                for partition in reply.partitions {
                    partition.result?;
                }
                Ok(())
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn committed(&self) -> BTreeMap<u32, u64> {
        match self.call(Request::OffsetFetch(OffsetFetchRequest {
            group_id: GROUP.into(),
            member: None,
            partitions: None,
        })) {
            Ok(Response::OffsetFetch(reply)) => reply
                .partitions
                .into_iter()
                .filter(|p| p.topic == TOPIC)
                .filter_map(
                    |CommittedPartitionOffset {
                         partition,
                         committed,
                         ..
                     }| { committed.map(|c| (partition, c.offset.0)) },
                )
                .collect(),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn describe(&self) -> DescribeGroupResponse {
        match self.call(Request::DescribeGroup(DescribeGroupRequest {
            group_id: GROUP.into(),
        })) {
            Ok(Response::DescribeGroup(reply)) => reply,
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

struct Member {
    id: String,
    epoch: MemberEpoch,
    session_ms: u32,
    assigned: BTreeMap<String, BTreeSet<u32>>,
}

impl Member {
    fn new(id: &str) -> Member {
        Member {
            id: id.into(),
            epoch: MemberEpoch::JOIN,
            session_ms: SESSION_MS,
            assigned: BTreeMap::new(),
        }
    }

    /// One heartbeat; takes what the reply assigns (this client releases revoked partitions
    /// at once).
    fn beat(&mut self, groups: &Groups) {
        let reply = groups.heartbeat(self).expect("heartbeat accepted");
        self.epoch = reply.member_epoch;
        self.assigned = reply
            .assignment
            .into_iter()
            .map(|tp| (tp.topic, tp.partitions.into_iter().collect()))
            .collect();
    }

    fn partitions(&self) -> BTreeSet<u32> {
        self.assigned.get(TOPIC).cloned().unwrap_or_default()
    }
}

/// Heartbeats every member until each owns `per_member` partitions and together they own
/// `0..total` exactly once.
fn settle(groups: &Groups, members: &mut [Member], total: u32, per_member: usize) {
    let started = Instant::now();
    loop {
        for member in members.iter_mut() {
            member.beat(groups);
        }
        let mut union = BTreeSet::new();
        let mut disjoint = true;
        for member in members.iter() {
            for partition in member.partitions() {
                disjoint &= union.insert(partition);
            }
        }
        assert!(disjoint, "a partition owned twice: {:?}", owners(members));
        let balanced = members.iter().all(|m| m.partitions().len() == per_member);
        if balanced && union == (0..total).collect() {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no balanced assignment: {:?}",
            owners(members)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn owners(members: &[Member]) -> Vec<(String, BTreeSet<u32>)> {
    members
        .iter()
        .map(|m| (m.id.clone(), m.partitions()))
        .collect()
}

fn single_node_with_topic(partitions: u32) -> (TestNode, Groups) {
    let node = TestNode::start();
    node.wire()
        .create_topic(TOPIC, partitions)
        .expect("topic created");
    let groups = Groups {
        nodes: vec![node.address()],
    };
    (node, groups)
}

#[test]
fn three_members_split_six_partitions_evenly_and_disjointly() {
    let (node, groups) = single_node_with_topic(6);
    let mut members = vec![Member::new("a"), Member::new("b"), Member::new("c")];
    settle(&groups, &mut members, 6, 2);
    // Stable: more heartbeats change nothing.
    let before = owners(&members);
    for member in &mut members {
        member.beat(&groups);
    }
    assert_eq!(owners(&members), before, "{}", node.logs());
    // The group lives in the internal topic, which clients cannot write.
    let mut wire = node.wire();
    let refused = wire.produce("__offsets", 0, &[b"junk"]);
    assert!(
        matches!(refused, Err(ApiError::InvalidTopicName { .. })),
        "{refused:?}"
    );
    match groups.call(Request::ListGroups(ListGroupsRequest {})) {
        Ok(Response::ListGroups(listed)) => {
            assert_eq!(listed.groups.len(), 1);
            assert_eq!(listed.groups[0].group_id, GROUP);
            assert_eq!(listed.groups[0].members, 3);
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn commits_round_trip_and_zombies_are_refused() {
    let (_node, groups) = single_node_with_topic(6);
    let mut a = Member::new("a");
    settle(&groups, std::slice::from_mut(&mut a), 6, 6);
    groups
        .commit(&a, a.epoch, &[(0, 5), (3, 11)])
        .expect("owner commits");
    assert_eq!(groups.committed(), BTreeMap::from([(0, 5), (3, 11)]));

    // b joins; a's epoch moves on as partitions move to b. a's old epoch is a zombie's.
    let old_epoch = a.epoch;
    let mut b = Member::new("b");
    let mut members = [a, b];
    settle(&groups, &mut members, 6, 3);
    [a, b] = members;
    assert!(a.epoch > old_epoch);
    let owned_by_a = *a.partitions().first().unwrap();
    let zombie = groups.commit(&a, old_epoch, &[(owned_by_a, 99)]);
    assert!(
        matches!(zombie, Err(ApiError::StaleMemberEpoch { .. })),
        "{zombie:?}"
    );
    // A commit for a partition a does not own is refused too.
    let not_owned = *b.partitions().first().unwrap();
    let refused = groups.commit(&a, a.epoch, &[(not_owned, 99)]);
    assert!(
        matches!(refused, Err(ApiError::PartitionNotOwned { .. })),
        "{refused:?}"
    );
    let committed = groups.committed();
    assert!(
        !committed.values().any(|offset| *offset == 99),
        "{committed:?}"
    );

    // A member that stops heartbeating is expired after its session timeout; its commits are
    // then refused, and its partitions go to the member left.
    let mut c = Member::new("c");
    c.session_ms = 1_000;
    c.beat(&groups);
    let c_epoch = c.epoch;
    let started = Instant::now();
    loop {
        b.beat(&groups);
        a.beat(&groups);
        let expired = matches!(
            groups.commit(&c, c_epoch, &[]),
            Err(ApiError::UnknownMemberId { .. })
        );
        if expired {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "c never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut members = [a, b];
    settle(&groups, &mut members, 6, 3);
}

#[test]
fn describe_shows_committed_offsets_and_lag() {
    let (node, groups) = single_node_with_topic(2);
    let mut wire = node.wire();
    // The log end is after the last record produced (the leader's epoch marker comes first).
    let mut log_end = 0;
    for _ in 0..10 {
        let produced = wire.produce(TOPIC, 0, &[b"v"]).expect("produced");
        log_end = produced.base_offset.0 + 1;
    }
    let mut a = Member::new("a");
    settle(&groups, std::slice::from_mut(&mut a), 2, 2);
    groups.commit(&a, a.epoch, &[(0, 4)]).expect("committed");
    let described = groups.describe();
    assert_eq!(described.members.len(), 1);
    let p0 = described
        .partitions
        .iter()
        .find(|p| p.topic == TOPIC && p.partition == 0)
        .expect("partition 0 described");
    assert_eq!(p0.committed, Some(Offset(4)));
    assert_eq!(p0.log_end, Some(Offset(log_end)));
    assert_eq!(p0.lag, Some(log_end - 4));
    assert_eq!(p0.owner.as_deref(), Some("a"));
}

#[test]
fn a_new_coordinator_serves_the_group_after_its_node_is_killed() {
    let mut cluster = TestCluster::start(3, &[]);
    // Only the `__meta` leader creates topics; the others answer `NotLeader` with a hint.
    let started = Instant::now();
    'created: loop {
        for node in &cluster.nodes {
            match node.wire().create_topic(TOPIC, 6) {
                Ok(_) => break 'created,
                Err(ApiError::NotLeader { .. } | ApiError::NotReady { .. }) => {}
                Err(other) => panic!("creating the topic failed: {other:?}"),
            }
        }
        assert!(started.elapsed() < DEADLINE, "topic never created");
        std::thread::sleep(Duration::from_millis(100));
    }
    let groups = Groups {
        nodes: cluster.nodes.iter().map(|n| n.address()).collect(),
    };
    let mut a = Member::new("a");
    settle(&groups, std::slice::from_mut(&mut a), 6, 6);
    let commits: Vec<(u32, u64)> = (0..6).map(|p| (p, 10 + u64::from(p))).collect();
    groups.commit(&a, a.epoch, &commits).expect("committed");
    let before = groups.committed();
    assert_eq!(before.len(), 6);

    let (old_coordinator, _) = groups.find_coordinator();
    // Every other node refuses group requests and names the coordinator (all three host
    // every `__offsets` partition, so each knows its leader).
    for node in cluster
        .nodes
        .iter()
        .filter(|n| n.node_id != old_coordinator.0)
    {
        let refused = node.wire().call(Request::OffsetFetch(OffsetFetchRequest {
            group_id: GROUP.into(),
            member: None,
            partitions: None,
        }));
        assert_eq!(
            refused,
            Err(ApiError::NotCoordinator {
                coordinator_hint: Some(old_coordinator)
            })
        );
    }
    cluster.node_mut(old_coordinator.0).kill();
    let survivors = Groups {
        nodes: cluster
            .nodes
            .iter()
            .filter(|n| n.node_id != old_coordinator.0)
            .map(|n| n.address())
            .collect(),
    };
    // The member keeps heartbeating at its epoch: the new coordinator rebuilt it from the log.
    let started = Instant::now();
    let new_coordinator = loop {
        let (coordinator, _) = survivors.find_coordinator();
        if coordinator != old_coordinator {
            break coordinator;
        }
        assert!(started.elapsed() < DEADLINE, "no new coordinator");
        std::thread::sleep(Duration::from_millis(100));
    };
    let after = survivors.committed();
    assert_eq!(after, before, "{}", cluster.logs());
    a.beat(&survivors);
    assert_eq!(a.partitions(), (0..6).collect(), "{}", cluster.logs());
    let later: Vec<(u32, u64)> = commits.iter().map(|(p, o)| (*p, o + 5)).collect();
    survivors
        .commit(&a, a.epoch, &later)
        .expect("the new coordinator takes commits");
    let last = survivors.committed();
    for (partition, offset) in &last {
        assert!(
            *offset >= before[partition],
            "partition {partition} went backwards"
        );
    }
    assert_eq!(last, later.into_iter().collect(), "{new_coordinator}");
}
