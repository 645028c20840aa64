//! A seeded simulation of clients against one [`Coordinator`]: joins, heartbeats whose
//! replies get lost, lazy releases, crashes (the crashed process lives on as a zombie that
//! still commits), static restarts, leaves and the clock jumping past session and rebalance
//! timeouts. After every step it checks, from the clients' side, what a user would see:
//!
//! - SIM-1 the partitions the members believe they own never overlap (one reader per
//!   partition at a time); a crashed process counts until its session expires;
//! - SIM-2 a commit is accepted only from a member (a zombie's is refused);
//! - SIM-3 after a calm period the group is stable, every partition owned by exactly one
//!   member, loads within one of each other;
//! - SIM-4 replaying every record emitted rebuilds the coordinator's groups exactly.

use super::assign::{Assignment, TopicPartition, TopicPartitionCounts};
use super::records::GroupRecord;
use super::state::{Coordinator, GroupConfig};
use cairn_protocol::group::*;
use cairn_protocol::{ApiError, Offset};
use std::collections::BTreeMap;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One consumer process as it sees itself.
struct Client {
    member_id: String,
    instance_id: Option<String>,
    epoch: MemberEpoch,
    /// What it reads now: granted by a reply and not yet released.
    owned: Assignment,
    /// Revoked by a reply, released lazily (still read until then).
    pending_release: Assignment,
    crashed: bool,
}

struct Simulation {
    rng: Rng,
    coordinator: Coordinator,
    records: Vec<GroupRecord>,
    topics: TopicPartitionCounts,
    clients: Vec<Client>,
    now_ms: u64,
    next_client: u32,
}

const SESSION_MS: u32 = 6_000;
const REBALANCE_MS: u32 = 4_000;
const CLIENTS_MAX: usize = 8;

fn to_wire(assignment: &Assignment) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for partition in assignment {
        by_topic
            .entry(&partition.topic)
            .or_default()
            .push(partition.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_wire(assignment: &[TopicPartitions]) -> Assignment {
    assignment
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(&t.topic, *p))
        })
        .collect()
}

impl Simulation {
    fn new(seed: u64) -> Simulation {
        Simulation {
            rng: Rng::new(seed),
            coordinator: Coordinator::new(GroupConfig {
                heartbeat_interval_ms: 300,
                session_timeout_ms_min: 1_000,
                ..GroupConfig::default()
            }),
            records: Vec::new(),
            topics: [("t".to_string(), 6), ("u".to_string(), 3)]
                .into_iter()
                .collect(),
            clients: Vec::new(),
            now_ms: 0,
            next_client: 0,
        }
    }

    /// Processes the coordinator counts as members: the running ones, and crashed ones whose
    /// session has not expired yet (they may still be reading, as zombies do).
    fn members(&self) -> Vec<usize> {
        let group = self.coordinator.group("g");
        (0..self.clients.len())
            .filter(|&index| {
                group.is_some_and(|g| g.members.contains_key(&self.clients[index].member_id))
            })
            .collect()
    }

    /// Members whose process runs and heartbeats.
    fn live_members(&self) -> Vec<usize> {
        self.members()
            .into_iter()
            .filter(|&index| !self.clients[index].crashed)
            .collect()
    }

    fn request(&self, index: usize, epoch: MemberEpoch) -> ConsumerGroupHeartbeatRequest {
        let client = &self.clients[index];
        let mut owned = client.owned.clone();
        owned.extend(client.pending_release.iter().cloned());
        ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: client.member_id.clone(),
            member_epoch: epoch,
            instance_id: client.instance_id.clone(),
            rebalance_timeout_ms: REBALANCE_MS,
            session_timeout_ms: SESSION_MS,
            subscribed_topics: Some(vec!["t".into(), "u".into()]),
            assignor: None,
            owned: Some(to_wire(&owned)),
        }
    }

    fn join(&mut self, instance_id: Option<String>) {
        self.next_client += 1;
        self.clients.push(Client {
            member_id: format!("c{}", self.next_client),
            instance_id,
            epoch: MemberEpoch::JOIN,
            owned: Assignment::new(),
            pending_release: Assignment::new(),
            crashed: false,
        });
        let index = self.clients.len() - 1;
        self.heartbeat(index, false, true);
    }

    /// One heartbeat; `lose_reply` drops the answer on the way back.
    fn heartbeat(&mut self, index: usize, lose_reply: bool, release_now: bool) {
        let epoch = self.clients[index].epoch;
        let request = self.request(index, epoch);
        let outcome = self
            .coordinator
            .heartbeat(&request, &self.topics, self.now_ms);
        let client = &mut self.clients[index];
        match outcome {
            Ok((reply, records)) => {
                self.records.extend(records);
                if lose_reply {
                    return;
                }
                client.epoch = reply.member_epoch;
                let assignment = from_wire(&reply.assignment);
                let revoked: Vec<TopicPartition> =
                    client.owned.difference(&assignment).cloned().collect();
                for partition in revoked {
                    client.owned.remove(&partition);
                    client.pending_release.insert(partition);
                }
                client.owned.extend(assignment);
                if release_now {
                    client.pending_release.clear();
                }
            }
            Err(
                ApiError::UnknownMemberId { .. }
                | ApiError::FencedMemberEpoch { .. }
                | ApiError::FencedInstanceId { .. },
            ) => {
                // Fenced: stop reading everything, rejoin as a new member from scratch.
                client.owned.clear();
                client.pending_release.clear();
                client.epoch = MemberEpoch::JOIN;
                if client.instance_id.is_none() {
                    client.member_id = format!("{}r", client.member_id);
                }
            }
            Err(error) => panic!("unexpected refusal {error:?}"),
        }
    }

    fn commit(&mut self, index: usize) {
        let client = &self.clients[index];
        let mut readable: Vec<&TopicPartition> =
            client.owned.iter().chain(&client.pending_release).collect();
        if readable.is_empty() {
            return;
        }
        let partition = readable
            .remove(self.rng.below(readable.len() as u64) as usize)
            .clone();
        let request = OffsetCommitRequest {
            group_id: "g".into(),
            member_id: client.member_id.clone(),
            member_epoch: client.epoch,
            offsets: vec![OffsetCommitPartition {
                topic: partition.topic.clone(),
                partition: partition.partition,
                offset: Offset(self.now_ms),
                metadata: None,
            }],
        };
        let member = self.members().contains(&index);
        // A refusal of the whole request (stale or fenced epoch, unknown member) is fine.
        if let Ok((reply, records)) = self.coordinator.commit(&request, &self.topics) {
            let accepted = reply.partitions[0].result.is_ok();
            assert!(
                !accepted || member,
                "SIM-2: a commit from {} (not a member) was accepted",
                request.member_id
            );
            self.records.extend(records);
        }
    }

    fn check_disjoint(&self) {
        let mut readers: BTreeMap<&TopicPartition, &str> = BTreeMap::new();
        for index in self.members() {
            let client = &self.clients[index];
            for partition in client.owned.iter().chain(&client.pending_release) {
                if let Some(other) = readers.insert(partition, &client.member_id) {
                    panic!(
                        "SIM-1: {partition:?} read by {other} and {} at {} ms",
                        client.member_id, self.now_ms
                    );
                }
            }
        }
    }

    fn step(&mut self) {
        let live = self.live_members();
        match self.rng.below(100) {
            0..=9 if self.clients.iter().filter(|c| !c.crashed).count() < CLIENTS_MAX => {
                let instance = self
                    .rng
                    .chance(30)
                    .then(|| format!("i{}", self.next_client + 1));
                self.join(instance);
            }
            10..=54 if !live.is_empty() => {
                let index = live[self.rng.below(live.len() as u64) as usize];
                let lose = self.rng.chance(10);
                let release = self.rng.chance(60);
                self.heartbeat(index, lose, release);
            }
            55..=69 => {
                // Any process, zombies included, commits something it reads.
                if !self.clients.is_empty() {
                    let index = self.rng.below(self.clients.len() as u64) as usize;
                    self.commit(index);
                }
            }
            70..=74 if !live.is_empty() => {
                // A crash: the process stops heartbeating but lives on as a zombie. A
                // static one restarts at once under a new member id.
                let index = live[self.rng.below(live.len() as u64) as usize];
                self.clients[index].crashed = true;
                if let Some(instance) = self.clients[index].instance_id.clone() {
                    self.join(Some(instance));
                }
            }
            75..=77 if !live.is_empty() => {
                let index = live[self.rng.below(live.len() as u64) as usize];
                let mut request = self.request(index, MemberEpoch::LEAVE);
                if self.clients[index].instance_id.is_some() && self.rng.chance(50) {
                    request.member_epoch = MemberEpoch::STATIC_LEAVE;
                }
                if let Ok((_, records)) =
                    self.coordinator
                        .heartbeat(&request, &self.topics, self.now_ms)
                {
                    self.records.extend(records);
                }
                self.clients[index].crashed = true;
                self.clients[index].owned.clear();
                self.clients[index].pending_release.clear();
            }
            _ => {
                self.now_ms += self.rng.below(1_500);
                let records = self.coordinator.expire(&self.topics, self.now_ms);
                self.records.extend(records);
            }
        }
        self.check_disjoint();
    }

    /// Every live client heartbeats promptly and releases at once, for a while.
    fn calm(&mut self) {
        for _ in 0..10 {
            self.now_ms += 100;
            let records = self.coordinator.expire(&self.topics, self.now_ms);
            self.records.extend(records);
            for index in self.live_members() {
                self.heartbeat(index, false, true);
                self.check_disjoint();
            }
        }
    }
}

fn run(seed: u64, steps: usize) {
    let mut sim = Simulation::new(seed);
    sim.join(None);
    for _ in 0..steps {
        sim.step();
    }
    // Crashed members must time out before the group can settle.
    sim.now_ms += u64::from(SESSION_MS) + 1;
    sim.calm();
    let group = sim.coordinator.group("g").expect("the group exists");
    let live = sim.live_members();
    if !live.is_empty() {
        assert_eq!(group.state(), GroupState::Stable, "SIM-3 seed {seed}");
        let loads: Vec<usize> = live
            .iter()
            .map(|&index| sim.clients[index].owned.len())
            .collect();
        let total: usize = loads.iter().sum();
        assert_eq!(total, 9, "SIM-3 seed {seed}: every partition owned");
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 1, "SIM-3 seed {seed}: loads {loads:?}");
    }
    let replayed = Coordinator::replay(GroupConfig::default(), sim.records.clone(), 0);
    assert_eq!(
        replayed.groups(),
        sim.coordinator.groups(),
        "SIM-4 seed {seed}"
    );
}

#[test]
fn seeded_group_simulation_keeps_one_reader_per_partition() {
    for seed in 0..200 {
        run(seed, 400);
    }
}
