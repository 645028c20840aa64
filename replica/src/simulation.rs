//! A deterministic simulation of one partition with three or five replicas (TigerBeetle style): a
//! message queue the test controls (delays, reorders, drops, isolation), per-node clocks that
//! drift within the configured bound, flushes that complete in random order across nodes,
//! and crashes that rebuild a replica from a memory log which loses unflushed writes.
//! Checked after every action: the engine's own invariants (inside `step`), REP-3, lease
//! exclusivity; at checkpoints and at the end: REP-4 and REP-5; after healing: liveness.

use crate::invariants::check_leaders;
use crate::*;
use cairn_protocol::batch::{Record, RecordBatchBuilder};
use cairn_protocol::messages::Acks;
use cairn_protocol::{Epoch, NodeId, Offset};
use std::collections::{BTreeMap, VecDeque};

/// xorshift64*: tiny, seeded, good enough to pick actions.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The in-memory twin of a partition log with a crash model: `disk` is what the last flush
/// saw; a crash brings the log back to it.
#[derive(Default, Clone)]
struct MemoryLog {
    batches: Vec<RecordBatch>,
    promised: Epoch,
    disk_batches: Vec<RecordBatch>,
    disk_promised: Epoch,
}

impl MemoryLog {
    fn log_end(batches: &[RecordBatch]) -> Offset {
        batches
            .last()
            .map(|batch| batch.next_offset())
            .unwrap_or(Offset::ZERO)
    }

    fn append(&mut self, batch: RecordBatch) {
        assert_eq!(batch.base_offset(), MemoryLog::log_end(&self.batches));
        assert!(self
            .batches
            .last()
            .is_none_or(|last| last.leader_epoch() <= batch.leader_epoch()));
        self.batches.push(batch);
    }

    fn truncate(&mut self, from: Offset) {
        assert!(
            self.batches.iter().any(|batch| batch.base_offset() == from)
                || from == MemoryLog::log_end(&self.batches),
            "truncation at a batch boundary"
        );
        self.batches.retain(|batch| batch.base_offset() < from);
    }

    fn read(&self, from: Offset, until: Offset, bytes_max: usize) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for batch in &self.batches {
            if batch.next_offset() <= from || batch.base_offset() >= until {
                continue;
            }
            if !out.is_empty() && bytes + batch.size_bytes() > bytes_max {
                break;
            }
            bytes += batch.size_bytes();
            out.push(batch.clone());
        }
        out
    }

    fn crash(&mut self) {
        self.batches = self.disk_batches.clone();
        self.promised = self.disk_promised;
    }

    fn recovered(&self) -> Recovered {
        let mut history: Vec<(Epoch, Offset)> = Vec::new();
        for batch in &self.batches {
            if history.last().map(|&(epoch, _)| epoch) != Some(batch.leader_epoch()) {
                history.push((batch.leader_epoch(), batch.base_offset()));
            }
        }
        Recovered {
            promised_epoch: self.promised,
            epoch_history: history,
            log_start: Offset::ZERO,
            log_end: MemoryLog::log_end(&self.batches),
        }
    }
}

struct Node {
    id: NodeId,
    replica: Option<Replica>,
    log: MemoryLog,
    /// Completions owed to the replica, one per Append/PersistPromise, fed in order when a
    /// flush fires, each with what the log held when its flush was requested: a flush covers
    /// only the writes issued before it started, never later ones.
    flushes: VecDeque<(Input, Vec<RecordBatch>, Epoch)>,
    /// This node's monotonic clock: `origin + global * (1 + skew)`.
    origin_ms: u64,
    skew_ppm: i64,
    next_tick: u64,
}

impl Node {
    fn local(&self, global_ms: u64) -> Millis {
        let scaled = (i128::from(global_ms) * (1_000_000 + i128::from(self.skew_ppm))) / 1_000_000;
        Millis(self.origin_ms + scaled as u64)
    }
}

struct Message {
    deliver_at: u64,
    from: NodeId,
    to: NodeId,
    message: PeerMessage,
}

struct Simulation {
    config: Config,
    rng: Prng,
    now_ms: u64,
    nodes: Vec<Node>,
    network: Vec<Message>,
    isolated: Option<NodeId>,
    drop_percent: u64,
    /// Percent of "crash" rolls that really crash: seeds range from calm to brutal.
    crash_percent: u64,
    requests: BTreeMap<RequestId, (Acks, Vec<u8>)>,
    next_request: u64,
    /// Acknowledged acks=all batches: base offset and the value written.
    acked: Vec<(Offset, Vec<u8>)>,
    leaders_by_epoch: BTreeMap<Epoch, NodeId>,
    /// Every batch some replica ever reported below its high watermark, by base offset:
    /// committed history, which must never change (REP-5 over time).
    committed: BTreeMap<Offset, RecordBatch>,
}

fn value_of(batch: &RecordBatch) -> Vec<u8> {
    batch
        .records()
        .next()
        .and_then(|record| record.ok())
        .map(|record| record.value.to_vec())
        .unwrap_or_default()
}

impl Simulation {
    fn new(seed: u64, voter_count: u32) -> Simulation {
        // Small append messages, so that catch-up reads are split and trimmed.
        let config = Config {
            append_message_bytes_max: 256,
            ..Config::for_tests()
        };
        let mut rng = Prng::new(seed);
        let voters: Vec<NodeId> = (1..=voter_count).map(NodeId).collect();
        let mut nodes = Vec::new();
        for &id in &voters {
            // Clocks differ by at most 2 * 20_000 ppm, inside the 50_000 ppm configured.
            let skew_ppm = rng.below(40_001) as i64 - 20_000;
            let origin_ms = rng.below(1_000_000);
            let mut node = Node {
                id,
                replica: None,
                log: MemoryLog::default(),
                flushes: VecDeque::new(),
                origin_ms,
                skew_ppm,
                next_tick: rng.below(50),
            };
            let (replica, effects) = Replica::new(
                config.clone(),
                id,
                voters.clone(),
                node.log.recovered(),
                node.local(0),
            )
            .unwrap();
            assert!(effects.is_empty());
            node.replica = Some(replica);
            nodes.push(node);
        }
        Simulation {
            config,
            rng,
            now_ms: 0,
            nodes,
            network: Vec::new(),
            isolated: None,
            drop_percent: 5,
            crash_percent: [5, 20, 100][(seed % 3) as usize],
            requests: BTreeMap::new(),
            next_request: 0,
            acked: Vec::new(),
            leaders_by_epoch: BTreeMap::new(),
            committed: BTreeMap::new(),
        }
    }

    fn index(&self, id: NodeId) -> usize {
        (id.0 - 1) as usize
    }

    fn voters(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    fn random_node(&mut self) -> usize {
        self.rng.below(self.nodes.len() as u64) as usize
    }

    /// Feeds an input to a node and runs the effects like the node runtime does.
    fn feed(&mut self, index: usize, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let node = &mut self.nodes[index];
            let local = node.local(self.now_ms);
            let Some(replica) = node.replica.as_mut() else {
                return;
            };
            let effects = replica.step(local, input);
            for effect in effects {
                let node = &mut self.nodes[index];
                match effect {
                    Effect::PersistPromise { epoch } => {
                        node.log.promised = node.log.promised.max(epoch);
                        let snapshot = (node.log.batches.clone(), node.log.promised);
                        node.flushes.push_back((
                            Input::PromisePersisted { epoch },
                            snapshot.0,
                            snapshot.1,
                        ));
                    }
                    Effect::Append { batches } => {
                        assert!(!batches.is_empty());
                        for batch in batches {
                            node.log.append(batch);
                        }
                        let log_end = MemoryLog::log_end(&node.log.batches);
                        let snapshot = (node.log.batches.clone(), node.log.promised);
                        node.flushes.push_back((
                            Input::Durable { log_end },
                            snapshot.0,
                            snapshot.1,
                        ));
                    }
                    Effect::Truncate { from } => node.log.truncate(from),
                    Effect::Send { to, message } => {
                        // Mostly short delays, sometimes a very late message (a stalled
                        // connection): it must then be refused by epoch, not by luck.
                        let delay = if self.rng.chance(3) {
                            self.rng.below(1_000)
                        } else {
                            self.rng.below(30)
                        };
                        let from = node.id;
                        self.network.push(Message {
                            deliver_at: self.now_ms + delay,
                            from,
                            to,
                            message,
                        });
                    }
                    Effect::Reply { request, result } => {
                        let Some((acks, value)) = self.requests.remove(&request) else {
                            continue;
                        };
                        let Ok(response) = result else {
                            continue;
                        };
                        let on_disk = |node: &Node| {
                            node.log.disk_batches.iter().any(|batch| {
                                batch.base_offset() == response.base_offset
                                    && value_of(batch) == value
                            })
                        };
                        match acks {
                            Acks::All => {
                                // REP-4 at the moment of the acknowledgement.
                                let holders = self.nodes.iter().filter(|n| on_disk(n)).count();
                                assert!(
                                    holders >= self.majority(),
                                    "REP-4: acked at {} durable on {holders} nodes",
                                    response.base_offset
                                );
                                self.acked.push((response.base_offset, value));
                            }
                            Acks::Leader => assert!(
                                on_disk(&self.nodes[index]),
                                "acks=leader answered before the leader's flush"
                            ),
                            Acks::None => {}
                        }
                    }
                    Effect::HighWatermark { .. } => {}
                    Effect::RoleChanged { role, epoch, .. } => {
                        if role == Role::Leader {
                            let id = node.id;
                            if let Some(other) = self.leaders_by_epoch.insert(epoch, id) {
                                panic!("REP-3: epoch {epoch} led by {other} and {id}");
                            }
                        }
                    }
                    Effect::ReadForPeer {
                        to,
                        from,
                        until,
                        bytes_max,
                    } => {
                        let batches = node.log.read(from, until, bytes_max);
                        inputs.push_back(Input::PeerRead { to, from, batches });
                    }
                }
            }
        }
    }

    fn up(&self, index: usize) -> bool {
        self.nodes[index].replica.is_some()
    }

    fn cut(&self, from: NodeId, to: NodeId) -> bool {
        self.isolated == Some(from) || self.isolated == Some(to)
    }

    fn deliver_one(&mut self, faults: bool) {
        let ready: Vec<usize> = (0..self.network.len())
            .filter(|&i| self.network[i].deliver_at <= self.now_ms)
            .collect();
        if ready.is_empty() {
            return;
        }
        let pick = ready[self.rng.below(ready.len() as u64) as usize];
        let message = self.network.swap_remove(pick);
        let dropped = faults && self.rng.chance(self.drop_percent);
        if dropped || self.cut(message.from, message.to) {
            return;
        }
        let to = self.index(message.to);
        // A duplicate now and then: the protocol must shrug it off.
        if faults && self.rng.chance(2) {
            let copy = message.message.clone();
            self.feed(
                to,
                Input::Peer {
                    from: message.from,
                    message: copy,
                },
            );
        }
        self.feed(
            to,
            Input::Peer {
                from: message.from,
                message: message.message,
            },
        );
    }

    fn act(&mut self, faults: bool) {
        let roll = self.rng.below(100);
        match roll {
            0..=39 => {
                // Several messages per action, in random order, so that the simulated network
                // keeps up with what the replicas send (a network slower than the lease
                // starves every lease, by design) while still reordering.
                let burst = 1 + self.rng.below(2 * self.nodes.len() as u64);
                for _ in 0..burst {
                    self.deliver_one(faults);
                }
            }
            40..=59 => {
                let index = self.random_node();
                if !self.up(index) || self.nodes[index].flushes.is_empty() {
                    return;
                }
                // One flush may cover several completions (group commit); it makes durable
                // what the log held when the newest of them was requested.
                let count = 1 + self.rng.below(self.nodes[index].flushes.len() as u64);
                let completions: Vec<_> =
                    self.nodes[index].flushes.drain(..count as usize).collect();
                if let Some((_, batches, promised)) = completions.last() {
                    let log = &mut self.nodes[index].log;
                    log.disk_batches = batches.clone();
                    log.disk_promised = log.disk_promised.max(*promised);
                }
                for (input, _, _) in completions {
                    self.feed(index, input);
                }
            }
            60..=79 => {
                self.now_ms += 1 + self.rng.below(20);
                for index in 0..self.nodes.len() {
                    if self.up(index) && self.nodes[index].next_tick <= self.now_ms {
                        self.nodes[index].next_tick = self.now_ms + 50;
                        self.feed(index, Input::Tick);
                    }
                }
            }
            80..=91 => {
                let index = self.random_node();
                let acks = match self.rng.below(4) {
                    0 => Acks::Leader,
                    1 => Acks::None,
                    _ => Acks::All,
                };
                let request = RequestId(self.next_request);
                self.next_request += 1;
                let value = format!("v{}", request.0).into_bytes();
                let mut builder = RecordBatchBuilder::new(0);
                builder.push(&Record::new(value.clone()));
                self.requests.insert(request, (acks, value));
                self.feed(
                    index,
                    Input::Produce {
                        request,
                        batch: builder.build(),
                        acks,
                    },
                );
            }
            92 if faults => {
                let index = self.random_node();
                if self.up(index) && self.rng.chance(self.crash_percent) {
                    let node = &mut self.nodes[index];
                    node.replica = None;
                    node.flushes.clear();
                    node.log.crash();
                }
            }
            93..=95 if faults => {
                let index = self.random_node();
                if !self.up(index) {
                    let voters = self.voters();
                    let node = &mut self.nodes[index];
                    let (replica, effects) = Replica::new(
                        self.config.clone(),
                        node.id,
                        voters,
                        node.log.recovered(),
                        node.local(self.now_ms),
                    )
                    .unwrap();
                    assert!(effects.is_empty());
                    node.replica = Some(replica);
                }
            }
            96 if faults => {
                let index = self.random_node();
                self.feed(index, Input::LeaderSuspected);
            }
            97 if faults => {
                self.isolated = if self.isolated.is_some() {
                    None
                } else {
                    Some(NodeId(1 + self.random_node() as u32))
                };
            }
            _ => {}
        }
    }

    /// Lease exclusivity (the point of 5.2/5.3): at one real instant, at most one replica
    /// believes it holds a valid lease. REP-3 as well, on the current snapshot.
    fn check_now(&self) {
        let holders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|node| {
                node.replica
                    .as_ref()
                    .is_some_and(|replica| replica.lease_valid(node.local(self.now_ms)))
            })
            .map(|node| node.id)
            .collect();
        assert!(holders.len() <= 1, "two valid leases at once: {holders:?}");
        let statuses: Vec<ReplicaStatus> = self
            .nodes
            .iter()
            .filter_map(|node| node.replica.as_ref().map(|replica| replica.status()))
            .collect();
        check_leaders(&statuses).unwrap();
    }

    /// REP-4 and REP-5 over the flushed state of every node.
    fn check_logs(&mut self) {
        for node in &self.nodes {
            let Some(replica) = &node.replica else {
                continue;
            };
            assert_eq!(
                replica.committed_truncations_refused(),
                0,
                "a leader asked to truncate committed data"
            );
            let high_watermark = replica.status().high_watermark;
            for batch in node
                .log
                .batches
                .iter()
                .take_while(|b| b.next_offset() <= high_watermark)
            {
                let known = self
                    .committed
                    .entry(batch.base_offset())
                    .or_insert_with(|| batch.clone());
                assert_eq!(
                    known,
                    batch,
                    "REP-5: committed batch at {} changed on node {}",
                    batch.base_offset(),
                    node.id
                );
            }
        }
        for (base, value) in &self.acked {
            let holders = self
                .nodes
                .iter()
                .filter(|node| {
                    node.log
                        .disk_batches
                        .iter()
                        .any(|batch| batch.base_offset() == *base && value_of(batch) == *value)
                })
                .count();
            assert!(
                holders >= self.majority(),
                "REP-4: acked {:?} at {base} is durable on {holders} nodes",
                String::from_utf8_lossy(value)
            );
        }
        let committed: Vec<Offset> = self
            .nodes
            .iter()
            .map(|node| {
                node.replica
                    .as_ref()
                    .map_or(Offset::ZERO, |r| r.status().high_watermark)
            })
            .collect();
        for a in 0..self.nodes.len() {
            for b in (a + 1)..self.nodes.len() {
                let until = committed[a].min(committed[b]);
                let left: Vec<&RecordBatch> = self.nodes[a]
                    .log
                    .batches
                    .iter()
                    .filter(|batch| batch.base_offset() < until)
                    .collect();
                let right: Vec<&RecordBatch> = self.nodes[b]
                    .log
                    .batches
                    .iter()
                    .filter(|batch| batch.base_offset() < until)
                    .collect();
                assert_eq!(
                    left,
                    right,
                    "REP-5: nodes {} and {} differ below {until}",
                    a + 1,
                    b + 1
                );
            }
        }
    }

    fn run(&mut self, actions: usize) {
        for action in 0..actions {
            self.act(true);
            self.check_now();
            if action % 16 == 0 {
                self.check_logs();
            }
        }
        self.check_logs();
    }

    /// Heals everything, restarts crashed nodes, and checks that a leader emerges and
    /// commits a new acks=all write within a bounded simulated time.
    fn heal_and_check_progress(&mut self) {
        self.isolated = None;
        for index in 0..self.nodes.len() {
            while !self.up(index) {
                // Restarts are one of the random actions; force them here.
                let voters = self.voters();
                let node = &mut self.nodes[index];
                let (replica, _) = Replica::new(
                    self.config.clone(),
                    node.id,
                    voters,
                    node.log.recovered(),
                    node.local(self.now_ms),
                )
                .unwrap();
                node.replica = Some(replica);
            }
        }
        let acked_before = self.acked.len();
        let deadline_ms = self.now_ms + 20_000;
        while self.now_ms < deadline_ms && self.acked.len() == acked_before {
            self.act(false);
            self.check_now();
        }
        self.check_logs();
        assert!(
            self.acked.len() > acked_before,
            "no acks=all write committed within 20 s of healing"
        );
    }
}

/// Runs `default_seeds` seeds of `voter_count` replicas. `CAIRN_SIM_SEEDS` overrides the
/// count, `CAIRN_SIM_SEED` runs one seed, `CAIRN_SIM_VERBOSE` prints a line per seed.
fn simulate(voter_count: u32, default_seeds: u64) {
    let seeds: u64 = std::env::var("CAIRN_SIM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default_seeds);
    let only: Option<u64> = std::env::var("CAIRN_SIM_SEED")
        .ok()
        .and_then(|value| value.parse().ok());
    let mut acked_total = 0;
    let mut elections_total = 0;
    for seed in only.map_or(0..seeds, |seed| seed..seed + 1) {
        let mut simulation = Simulation::new(seed, voter_count);
        simulation.run(3_000);
        simulation.heal_and_check_progress();
        if std::env::var("CAIRN_SIM_VERBOSE").is_ok() {
            eprintln!(
                "seed {seed}: acked {} leaders {} simulated {} ms",
                simulation.acked.len(),
                simulation.leaders_by_epoch.len(),
                simulation.now_ms
            );
        }
        acked_total += simulation.acked.len();
        elections_total += simulation.leaders_by_epoch.len();
    }
    // The run must have exercised the protocol, not idled through it.
    let seeds = if only.is_some() { 1 } else { seeds };
    assert!(
        acked_total as u64 > seeds * 5,
        "only {acked_total} acks in {seeds} seeds"
    );
    assert!(
        elections_total as u64 > seeds,
        "only {elections_total} leaders in {seeds} seeds"
    );
}

#[test]
fn simulated_three_replicas_keep_acknowledged_writes_on_a_majority() {
    simulate(3, 400);
}

#[test]
fn simulated_five_replicas_keep_acknowledged_writes_on_a_majority() {
    simulate(5, 150);
}
