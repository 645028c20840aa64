//! The replica engine: one partition replica's roles, elections by lease, the commit rule and
//! truncation (DESIGN section 5). Each [`Replica::step`] validates its input first, then
//! mutates, then returns the exact effects in the order the runtime must run them; the
//! invariants of [`crate::invariants`] are checked after every step, in release builds too.

use crate::invariants;
use crate::producers::{Admission, Producers};
use crate::{
    AppendResult, Config, ConfigError, Effect, Input, LogStart, Millis, PeerMessage, Recovered,
    ReplicaStatus, RequestId, Role, VOTERS_MAX,
};
use cairn_protocol::batch::{BatchHeader, RecordBatch, RecordBatchBuilder};
use cairn_protocol::messages::{Acks, ProduceResponse};
use cairn_protocol::{ApiError, Epoch, NodeId, Offset};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The wall-clock timestamp written into epoch markers. The engine sees only monotonic time,
/// and a marker carries no user data, so it gets the epoch of the Unix clock: it never
/// matches a timestamp lookup for a real record.
const MARKER_TIMESTAMP_MS: i64 = 0;

/// How far above the highest epoch a replica knows of (promised, logged, or heard of in a
/// message it accepted) a peer message's epoch may be; a message above is refused and changes
/// nothing. Peers are authenticated, so this guards against a buggy or compromised one: a
/// single message of epoch 2^64-1 used to be promised, persisted, and leave the partition
/// without a leader for good (no epoch above it exists).
///
/// Why it cannot wedge a legitimate election: a candidate asks for one above the highest epoch
/// it knows of, and a candidacy (which is what raises epochs) starts only after a majority
/// granted the pre-vote (`LeaseProbe`), which raises no one's epoch. Legitimate epochs
/// therefore climb one at a time, each step needing a majority's pre-vote; a replica falls
/// this far behind only if the others ran 65,536 elections without it, at least one election
/// timeout apart (over five hours of back-to-back failed elections at the test preset's
/// 300 ms). Even then the refusing replica alone is left out: the majority that ran those
/// elections keeps electing and committing without it, and an answer carrying a refused
/// epoch (a `StaleEpoch`) is ignored rather than deposing a working leader.
pub const EPOCH_JUMP_MAX: u64 = 1 << 16;

/// Why a peer message's epochs were refused ([`Replica::check_peer_epochs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochRefusal {
    /// An epoch more than [`EPOCH_JUMP_MAX`] above the highest this replica knows of.
    TooFarAhead { epoch: Epoch, ceiling: Epoch },
    /// A candidate's last logged epoch above the epoch it asks for: no honest log has that.
    LogAheadOfCandidacy { epoch: Epoch, last_log_epoch: Epoch },
}

/// A produce request appended but not yet answered.
#[derive(Debug, Clone)]
struct PendingReply {
    request: RequestId,
    base_offset: Offset,
    /// The offset right after the batch: the reply is due once this is covered.
    end: Offset,
    received_at: Millis,
    /// An idempotent producer's retry of a batch already in the log: answered with its
    /// original offsets once they are durable or committed, as its first attempt would be.
    duplicate: bool,
}

/// What the leader knows about one follower.
#[derive(Debug, Clone)]
struct Progress {
    /// Where the next batches sent to this follower start (optimistic: includes sends not
    /// yet acknowledged).
    next: Offset,
    /// The follower's log is known to equal ours below this.
    matched: Offset,
    /// Of `matched`, what the follower reported flushed. Only this counts for commit.
    durable: Offset,
    /// Newest send time of ours that this follower answered in this epoch: it renews the
    /// lease.
    acked_sent_at: Option<Millis>,
    /// A `ReadForPeer` from this offset is outstanding.
    read_from: Option<Offset>,
    /// Where and when we last rewound `next` on a `Diverged` answer. Appends sent before
    /// then that answer `Diverged` at the same place are covered by the resend and ignored;
    /// without this, each of many pipelined appends behind one lost message would resend
    /// the whole gap again.
    rewound: Option<(Offset, Millis)>,
}

#[derive(Debug)]
struct Candidacy {
    epoch: Epoch,
    /// Voters (other than us) that granted.
    grants: BTreeSet<NodeId>,
    /// Our own promise of `epoch` is durable: our vote counts.
    self_granted: bool,
    /// When the lease requests left: the lease is measured from here (DESIGN 5.3).
    requested_at: Millis,
}

#[derive(Debug)]
struct Leadership {
    /// Offset of this epoch's marker batch. Nothing commits before it does (DESIGN 5.4).
    marker_offset: Offset,
    /// The lease holds strictly before this instant on our clock.
    lease_until: Millis,
    heartbeat_due: Millis,
    peers: BTreeMap<NodeId, Progress>,
    /// acks=leader requests, in offset order: due when durable locally.
    awaiting_durable: VecDeque<PendingReply>,
    /// acks=all requests, in offset order: due when committed.
    awaiting_commit: VecDeque<PendingReply>,
    /// The newest batches of our log that some follower may still need, oldest first,
    /// contiguous and ending at the log end, at most `Config::tail_bytes_max` bytes. A
    /// follower that fell behind (a lost message, a slow flush) is sent them from memory; only
    /// one further behind is served by `ReadForPeer` from the log. Without it, a follower
    /// that fell behind once under a steady load stayed on log reads for good: each read
    /// covers what arrived during the previous round trip and never reaches the live end.
    tail: VecDeque<RecordBatch>,
    tail_bytes: usize,
}

/// Why a leader or candidate stops.
#[derive(Debug, Clone)]
enum StepDown {
    LeaseLapsed,
    /// [`Input::Resign`]: a lapsed lease, by choice.
    Resigned,
    HigherEpoch,
    Storage(String),
}

/// An `Append` effect whose `Durable` has not come back yet.
#[derive(Debug, Clone, Copy)]
struct Unflushed {
    /// What its flush will prove durable: the log end after that append, lowered by every
    /// truncation since (a flush that started before a truncation says nothing about what
    /// was appended after it, only about the prefix that survived).
    log_end: Offset,
}

/// One partition replica's protocol state.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    node: NodeId,
    /// Sorted, distinct, holding `node`.
    voters: Vec<NodeId>,
    role: Role,
    epoch: Epoch,
    leader: Option<NodeId>,
    /// The highest durable promise (DESIGN 5.1).
    promised: Epoch,
    /// The highest promise written or being written: never below `promised`. We refuse as
    /// if it were durable already, and answer as if it were only once it is.
    promise_floor: Epoch,
    /// The highest epoch heard of, so a new candidacy beats it.
    epoch_seen_max: Epoch,
    /// (epoch, first offset), oldest first.
    epoch_history: Vec<(Epoch, Offset)>,
    log_start: Offset,
    log_end: Offset,
    durable_end: Offset,
    high_watermark: Offset,
    unflushed: VecDeque<Unflushed>,
    /// We promised not to grant a lease to anyone (ourselves included) before this instant
    /// (DESIGN 5.2b). Set to `now + lease_ms` at start, since a restarted replica may have
    /// forgotten a grant (DESIGN 5.3).
    granted_until: Millis,
    /// A grant decided but waiting for its promise to be durable before it is sent.
    pending_grant: Option<(NodeId, Epoch)>,
    election_deadline: Millis,
    /// After [`Input::Resign`]: no candidacy of ours before this instant, whatever a hint
    /// says, so that the replica we resigned for can win. Liveness only.
    resigned_until: Millis,
    elections_started: u64,
    /// Mixed into the election jitter (see [`Replica::set_jitter_salt`]).
    jitter_salt: u64,
    /// Pre-vote in progress: the epoch probed and who would grant it.
    probe: Option<(Epoch, BTreeSet<NodeId>)>,
    candidacy: Option<Candidacy>,
    leadership: Option<Leadership>,
    /// An append of a newer epoch held until our promise of that epoch is durable.
    deferred_append: Option<(NodeId, PeerMessage)>,
    /// Follower: our log equals the current leader's below this.
    leader_matched_end: Offset,
    /// Follower: the newest leader send time seen, echoed in unsolicited responses.
    leader_sent_at: Millis,
    /// Follower: the durable end last reported to the leader.
    durable_reported: Offset,
    storage_failure: Option<String>,
    /// Set by [`Replica::require_repair`]: this replica lost committed data (its store
    /// recovered an older state), so its log must not count as up to date until its durable
    /// end reaches this offset again, caught up from the leader.
    repair_until: Option<Offset>,
    /// Appends refused because they would have truncated below our high watermark. Always
    /// 0 unless some replica is wrong; the simulation and tests assert it.
    committed_truncations_refused: u64,
    /// The latest `now` seen; time never runs backwards inside the engine.
    clock: Millis,
    /// Idempotent producers' last batches in this log (see [`crate::producers`]).
    producers: Producers,
    /// How lagging followers were caught up, for operators (see [`CatchUpCounts`]).
    catch_up: CatchUpCounts,
}

/// How a leader has caught up lagging followers since this replica started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpCounts {
    /// Append messages sent from the in-memory tail.
    pub tail_sends: u64,
    /// `ReadForPeer` effects issued (reads of the log for a follower).
    pub log_reads: u64,
}

/// A rule for the replica set, checked like a config rule.
fn voters_error(rule: &'static str, why: &'static str) -> ConfigError {
    ConfigError { rule, why }
}

/// A deterministic mix of the node id and the election count, so replicas of one partition
/// time out at different instants without randomness inside the engine (STYLE habit 2).
fn mix64(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

impl Replica {
    /// A replica of a partition whose voters are `voters` (which include `node`), recovering
    /// from storage. Returns the replica and its first effects (none today: a restarted
    /// replica first waits out any lease it may have granted).
    pub fn new(
        config: Config,
        node: NodeId,
        voters: Vec<NodeId>,
        recovered: Recovered,
        now: Millis,
    ) -> Result<(Replica, Vec<Effect>), ConfigError> {
        config.validate()?;
        let mut sorted = voters.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != voters.len() {
            return Err(voters_error(
                "voters are distinct",
                "a voter listed twice would count twice towards a majority",
            ));
        }
        if sorted.is_empty() || sorted.len() > VOTERS_MAX {
            return Err(voters_error(
                "1 <= voters <= VOTERS_MAX",
                "a partition needs a voter, and majorities are computed per step",
            ));
        }
        if !sorted.contains(&node) {
            return Err(voters_error(
                "voters contain this node",
                "a replica that is not a voter cannot take part in leases or commits",
            ));
        }
        let history_ordered = recovered
            .epoch_history
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1);
        // An empty log that retention emptied keeps one entry at its start: the epoch it
        // ended with. Without it a fully expired partition could not restart.
        let history_in_log = recovered.epoch_history.last().is_none_or(|&(_, start)| {
            start < recovered.log_end
                || (start == recovered.log_start && recovered.log_start == recovered.log_end)
        });
        if !history_ordered || !history_in_log || recovered.log_start > recovered.log_end {
            return Err(voters_error(
                "recovered state is consistent",
                "epochs and their start offsets must grow, and lie inside the log, or the \
                 divergence search would give wrong answers",
            ));
        }
        let last_epoch = recovered
            .epoch_history
            .last()
            .map(|&(epoch, _)| epoch)
            .unwrap_or(Epoch::ZERO);
        let mut replica = Replica {
            node,
            voters: sorted,
            role: Role::Follower,
            epoch: recovered.promised_epoch.max(last_epoch),
            leader: None,
            promised: recovered.promised_epoch,
            promise_floor: recovered.promised_epoch,
            epoch_seen_max: recovered.promised_epoch.max(last_epoch),
            epoch_history: recovered.epoch_history,
            log_start: recovered.log_start,
            log_end: recovered.log_end,
            durable_end: recovered.log_end,
            // Everything below the log start was committed (retention keeps the uncommitted
            // suffix), and we know nothing above it yet.
            high_watermark: recovered.log_start,
            unflushed: VecDeque::new(),
            granted_until: now.plus(config.lease_ms),
            pending_grant: None,
            election_deadline: now,
            resigned_until: Millis(0),
            elections_started: 0,
            jitter_salt: 0,
            probe: None,
            candidacy: None,
            leadership: None,
            deferred_append: None,
            leader_matched_end: Offset::ZERO,
            leader_sent_at: Millis(0),
            durable_reported: Offset::ZERO,
            storage_failure: None,
            repair_until: None,
            committed_truncations_refused: 0,
            clock: now,
            config,
            producers: Producers::default(),
            catch_up: CatchUpCounts::default(),
        };
        replica.election_deadline = now.plus(replica.election_wait_ms());
        replica.check_invariants();
        Ok((replica, Vec::new()))
    }

    /// Feeds one input; returns what the runtime must do, in order.
    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        let now = now.max(self.clock);
        self.clock = now;
        let before = self.status();
        let mut effects = Vec::new();
        self.check_lease(now, &mut effects);
        match input {
            Input::Tick => self.on_tick(now, &mut effects),
            Input::Produce {
                request,
                batch,
                acks,
            } => self.on_produce(now, request, batch, acks, &mut effects),
            Input::Durable { log_end } => self.on_durable(log_end, &mut effects),
            Input::PromisePersisted { epoch } => {
                self.on_promise_persisted(now, epoch, &mut effects)
            }
            Input::Peer { from, message } => {
                if from != self.node && self.voters.contains(&from) {
                    self.on_peer(now, from, message, &mut effects);
                }
            }
            Input::LeaderSuspected => self.on_leader_suspected(now),
            Input::Resign { hold_ms } => self.on_resign(now, hold_ms, &mut effects),
            Input::StorageFailed { reason } => self.on_storage_failed(now, reason, &mut effects),
            Input::PeerRead { to, from, batches } => {
                self.on_peer_read(now, to, from, batches, &mut effects)
            }
            Input::LogStartMoved { log_start } => self.on_log_start_moved(log_start),
        }
        let after = self.status();
        if let Err(violation) = invariants::check_transition(&before, &after) {
            panic!("replica invariant broken: {violation}");
        }
        self.check_invariants();
        effects
    }

    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            node: self.node,
            role: self.role,
            epoch: self.epoch,
            promised_epoch: self.promised,
            leader: self.leader,
            log_start: self.log_start,
            log_end: self.log_end,
            durable_end: self.durable_end,
            high_watermark: self.high_watermark,
        }
    }

    /// Leader only: each follower's matched offset (its log equals ours below it), for the
    /// node's lag metrics; nothing on a follower or candidate.
    pub fn follower_matched(&self) -> impl Iterator<Item = (NodeId, Offset)> + '_ {
        self.leadership
            .iter()
            .flat_map(|leadership| leadership.peers.iter())
            .map(|(&node, progress)| (node, progress.matched))
    }

    /// Leader only: each follower's matched offset and the newest send time of ours it
    /// answered in this epoch (`None`: no answer yet), for the node's in-sync report; nothing
    /// on a follower or candidate. Read-only: it decides nothing.
    pub fn follower_progress(&self) -> impl Iterator<Item = (NodeId, Offset, Option<Millis>)> + '_ {
        self.leadership
            .iter()
            .flat_map(|leadership| leadership.peers.iter())
            .map(|(&node, progress)| (node, progress.matched, progress.acked_sent_at))
    }

    /// Appends refused because they would have cut committed data: nonzero means a bug
    /// somewhere in the replica set (checked by the simulation).
    pub fn catch_up_counts(&self) -> CatchUpCounts {
        self.catch_up
    }

    pub fn committed_truncations_refused(&self) -> u64 {
        self.committed_truncations_refused
    }

    /// Rebuilds the idempotent producers' state from the headers of batches already in the
    /// log, read back in offset order after a restart: those after the producer snapshot
    /// ([`Replica::restore_producers`]), or without one a suffix of the log (a producer whose
    /// batches are not among them is then unknown). Call it after [`Replica::new`], before
    /// the first step. Headers at or past the recovered log end are ignored.
    pub fn recover_producers<'a>(&mut self, headers: impl IntoIterator<Item = &'a BatchHeader>) {
        for header in headers {
            if header.next_offset() <= self.log_end && header.base_offset >= self.log_start {
                self.producers.record(header);
            }
        }
    }

    /// Starts from a producer snapshot read back with the log (see
    /// [`Producers::decode_snapshot`]) taken when the log ended at `through`. A snapshot
    /// ahead of the recovered log end (its last batches were cut, or not flushed) is cut back
    /// to it. Then feed [`Replica::recover_producers`] the headers from `through` (or the log
    /// start, if later) to the log end. Call it after [`Replica::new`], before the first step.
    pub fn restore_producers(&mut self, mut producers: Producers, through: Offset) {
        if through > self.log_end {
            producers.truncate(self.log_end);
        }
        self.producers = producers;
    }

    /// The idempotent producers' state, as the log built it.
    pub fn producers(&self) -> &Producers {
        &self.producers
    }

    /// The epoch history as this replica holds it, oldest first.
    pub fn epoch_history(&self) -> &[(Epoch, Offset)] {
        &self.epoch_history
    }

    /// Whether this replica is the leader with a lease that holds at `now`: only then may it
    /// serve reads that must not be stale.
    pub fn lease_valid(&self, now: Millis) -> bool {
        self.leadership
            .as_ref()
            .is_some_and(|leadership| now < leadership.lease_until)
    }

    /// When this replica next needs an [`Input::Tick`]: the earliest instant at which a tick
    /// could do anything. A leader: its next heartbeat, or the end of its lease if that comes
    /// first (it steps down then). A follower or candidate: its election deadline, once its
    /// own last grant has expired too (DESIGN 5.2b). `None` while no tick can do anything: its
    /// storage failed, or a grant waits for its promise to be durable (the `PromisePersisted`
    /// step that sends it changes the answer).
    ///
    /// Any step may move this instant (an append from the leader pushes a follower's deadline
    /// out; a leadership hint pulls it in), so the runtime asks again after every step and
    /// keeps one timer at the answer. A tick before this instant only does bookkeeping, so
    /// extra ticks are harmless; a late tick delays the heartbeat or candidacy by as much.
    /// Right after a `Tick` step at `now`, the answer is `None` or later than `now`, so a
    /// runtime that follows it never spins.
    pub fn next_tick_at(&self) -> Option<Millis> {
        if self.storage_failure.is_some() {
            return None;
        }
        if let Some(leadership) = &self.leadership {
            return Some(leadership.heartbeat_due.min(leadership.lease_until));
        }
        if self.pending_grant.is_some() {
            return None;
        }
        Some(
            self.election_deadline
                .max(self.granted_until)
                .max(self.resigned_until),
        )
    }

    /// Varies this replica's election jitter with `salt` (a runtime passes one per
    /// partition). Without it the jitter depends only on the node and the count of elections,
    /// so every partition of one node waits the same time, and whichever node draws the
    /// shortest wins every contested election: after a failure, or when the preferred leaders
    /// of a new topic lose their first try, one node ended up leading most partitions. Takes
    /// effect at once (the current deadline moves by the change of jitter); liveness only, no
    /// safety rule depends on it.
    pub fn set_jitter_salt(&mut self, salt: u64) {
        let before = self.election_wait_ms();
        self.jitter_salt = salt;
        let after = self.election_wait_ms();
        self.election_deadline = Millis(self.election_deadline.0.saturating_sub(before) + after);
    }

    /// Marks this replica as having lost committed data: its store opened shorter than the
    /// committed end it had recorded (`until`), e.g. because sled dropped everything after a
    /// damaged segment. Until its durable log reaches `until` again (appends from a leader
    /// repair it) it grants no lease and no probe and stands for no election: its short log
    /// would otherwise look up to date to rule 5.2(c) only because it forgot, and a leader
    /// elected with its help could lose acknowledged records and reuse their offsets. It still
    /// follows, so the leader repairs it. Call it after [`Replica::new`], before the first
    /// step. A partition whose majority needs repair stays without a leader: serving it would
    /// serve a shorter log. Safety needs nothing from this but refusals.
    pub fn require_repair(&mut self, until: Offset) {
        if until > self.durable_end {
            self.repair_until = Some(until);
        }
    }

    /// The offset this replica must reach before it votes again (see
    /// [`Replica::require_repair`]); `None` once repaired.
    pub fn repairing_until(&self) -> Option<Offset> {
        self.repair_until
    }

    /// Keeps a follower that knows no leader from starting an election before `until`, for a
    /// runtime that wants another replica to go first (the preferred leader of a new
    /// partition, whose first probe may reach peers still inside their post-start lease wait
    /// and be refused). Only ever delays: a deadline already later stays, a leader or
    /// candidate is unaffected, and the lease rules are checked as always. Liveness only.
    pub fn hold_election_until(&mut self, until: Millis) {
        if self.role == Role::Follower && self.leader.is_none() {
            self.election_deadline = self.election_deadline.max(until);
        }
    }

    fn check_invariants(&self) {
        if let Err(violation) = invariants::check_status(&self.status()) {
            panic!("replica invariant broken: {violation}");
        }
        assert!(self.promised <= self.promise_floor, "REP-2: promise floor");
        let last_epoch = self.last_epoch();
        assert!(
            self.role != Role::Leader || last_epoch == self.epoch,
            "a leader's last log epoch is its own (its marker)"
        );
        if let Some(leadership) = &self.leadership {
            assert!(self.role == Role::Leader);
            assert!(leadership.marker_offset < self.log_end);
            let pending = leadership.awaiting_durable.len() + leadership.awaiting_commit.len();
            assert!(pending <= self.config.pending_requests_max);
        }
        assert!(self.unflushed.len() <= self.config.pending_requests_max + 1);
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        let node = self.node;
        self.voters
            .iter()
            .copied()
            .filter(move |&voter| voter != node)
    }

    /// Election timeout plus a deterministic jitter of up to half of it (none for a single
    /// voter, which has no one to collide with).
    fn election_wait_ms(&self) -> u64 {
        let jitter_ms = if self.voters.len() == 1 {
            0
        } else {
            let seed = u64::from(self.node.0) ^ (self.elections_started << 32) ^ self.jitter_salt;
            mix64(seed) % (self.config.election_timeout_ms / 2 + 1)
        };
        self.config.election_timeout_ms + jitter_ms
    }

    fn last_epoch(&self) -> Epoch {
        self.epoch_history
            .last()
            .map(|&(epoch, _)| epoch)
            .unwrap_or(Epoch::ZERO)
    }

    /// The epoch of the batch holding `offset`, from the epoch history (0 when none does).
    fn epoch_at(&self, offset: Offset) -> Epoch {
        self.epoch_history
            .iter()
            .rev()
            .find(|&&(_, start)| start <= offset)
            .map(|&(epoch, _)| epoch)
            .unwrap_or(Epoch::ZERO)
    }

    /// The epoch of the batch right before `offset` (0 at the log's very beginning).
    fn epoch_before(&self, offset: Offset) -> Epoch {
        if offset == Offset::ZERO {
            Epoch::ZERO
        } else {
            self.epoch_at(Offset(offset.0 - 1))
        }
    }

    /// Our log start as a follower needs it to match our appends there (see `start_at`).
    fn log_start_message(&self) -> LogStart {
        LogStart {
            offset: self.log_start,
            epoch: self.epoch_at(self.log_start),
        }
    }

    /// Moves the log start forward after retention, and trims the epoch history as storage
    /// does (Kafka's truncate-from-start: the entry covering the new start moves to it), so
    /// a restart recovers the same history. A leader catches up a follower behind the new
    /// start by having it start there (see `catch_up`), never by a read below it.
    fn on_log_start_moved(&mut self, log_start: Offset) {
        // The `broken-ignore-log-start` test build never learns the new log start, so that
        // scripts/sim-broken.sh shows the simulation catches reads of removed offsets.
        if cfg!(feature = "broken-ignore-log-start")
            || log_start <= self.log_start
            || log_start > self.high_watermark
        {
            return;
        }
        let covering = self.epoch_at(log_start);
        self.log_start = log_start;
        self.epoch_history.retain(|&(_, start)| start >= log_start);
        let covered = self
            .epoch_history
            .first()
            .is_some_and(|&(_, start)| start == log_start);
        if !covered && covering != Epoch::ZERO {
            self.epoch_history.insert(0, (covering, log_start));
        }
        if let Some(leadership) = &mut self.leadership {
            for progress in leadership.peers.values_mut() {
                if progress.read_from.is_some_and(|from| from < log_start) {
                    // Its answer would start above what was asked; it is ignored.
                    progress.read_from = None;
                }
            }
        }
    }

    /// Where the history entry at `index` ends: the next entry's start, or the log end.
    fn entry_end(&self, index: usize) -> Offset {
        self.epoch_history
            .get(index + 1)
            .map(|&(_, start)| start)
            .unwrap_or(self.log_end)
    }

    /// The next multiple of `heartbeat_ms` after `now`: at most `heartbeat_ms` away, so a
    /// lease is renewed at least as often as heartbeats every `heartbeat_ms` would, and the
    /// same instant for every replica that shares this clock. A node's leaders then heartbeat
    /// together, and their messages to one peer (and the answers) share frames and wake-ups
    /// instead of spreading over the whole period.
    fn next_heartbeat_after(&self, now: Millis) -> Millis {
        let period_ms = self.config.heartbeat_ms;
        Millis(
            (now.0 / period_ms)
                .saturating_add(1)
                .saturating_mul(period_ms),
        )
    }

    fn role_changed(&self, effects: &mut Vec<Effect>) {
        effects.push(Effect::RoleChanged {
            role: self.role,
            epoch: self.epoch,
            leader: self.leader,
        });
    }

    /// Records batches appended to the local log: history, log end, and the flush owed.
    fn append_local(&mut self, batches: Vec<RecordBatch>, effects: &mut Vec<Effect>) {
        for batch in &batches {
            assert_eq!(batch.base_offset(), self.log_end, "appends are contiguous");
            if batch.leader_epoch() != self.last_epoch() {
                assert!(batch.leader_epoch() > self.last_epoch(), "epochs only grow");
                self.epoch_history
                    .push((batch.leader_epoch(), batch.base_offset()));
            }
            self.log_end = batch.next_offset();
            self.producers.record(batch.header());
        }
        self.unflushed.push_back(Unflushed {
            log_end: self.log_end,
        });
        effects.push(Effect::Append { batches });
    }

    // ----- time -----

    /// A leader renews its lease from the majority's acknowledgements and steps down the
    /// moment it lapses (DESIGN 5.3): it then stops acknowledging and serving.
    fn check_lease(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        let majority = self.majority();
        let trusted_ms = self.config.lease_trusted_ms();
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        // Our own acknowledgement is "now"; the majority-th newest send time that a
        // majority answered bounds how long all of them still refuse other candidates. (On
        // the stack: this runs at every step of a leader.)
        let mut acked = [Millis(0); VOTERS_MAX];
        acked[0] = now;
        let mut count = 1;
        for sent_at in leadership
            .peers
            .values()
            .filter_map(|progress| progress.acked_sent_at)
        {
            acked[count] = sent_at;
            count += 1;
        }
        let acked = &mut acked[..count];
        acked.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&sent_at) = acked.get(majority - 1) {
            leadership.lease_until = leadership.lease_until.max(sent_at.plus(trusted_ms));
        }
        if now >= leadership.lease_until {
            self.step_down(now, StepDown::LeaseLapsed, None, effects);
            return;
        }
        // While we lead we also refuse to grant anyone a lease (5.2b): our lease would
        // otherwise overlap the next leader's.
        self.granted_until = self.granted_until.max(now.plus(self.config.lease_ms));
    }

    fn on_tick(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        if self.role == Role::Leader {
            let due = self
                .leadership
                .as_ref()
                .is_some_and(|leadership| now >= leadership.heartbeat_due);
            if due {
                self.send_heartbeats(now, effects);
            }
            return;
        }
        if self.storage_failure.is_none()
            && self.repair_until.is_none()
            && now >= self.election_deadline
            && now >= self.granted_until
            && now >= self.resigned_until
            && self.pending_grant.is_none()
        {
            self.start_probe(now, effects);
        }
    }

    /// The epoch a new candidacy would ask for: above everything we promised, logged or
    /// heard of.
    fn next_candidate_epoch(&self) -> Epoch {
        self.promise_floor
            .max(self.last_epoch())
            .max(self.epoch_seen_max)
            .next()
    }

    fn start_probe(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        if self.majority() == 1 {
            // Nobody to ask: our own rules were checked by the caller.
            self.start_candidacy(now, effects);
            return;
        }
        let epoch = self.next_candidate_epoch();
        self.elections_started += 1;
        self.election_deadline = now.plus(self.election_wait_ms());
        self.probe = Some((epoch, BTreeSet::new()));
        let last_log_epoch = self.last_epoch();
        let log_end = self.log_end;
        for to in self.others().collect::<Vec<_>>() {
            effects.push(Effect::Send {
                to,
                message: PeerMessage::LeaseProbe {
                    epoch,
                    last_log_epoch,
                    log_end,
                },
            });
        }
    }

    /// Rules (a), (b), (c) of DESIGN 5.2, plus "no other grant on its way" and "storage
    /// works" (a grant must be made durable).
    fn would_grant(
        &self,
        now: Millis,
        epoch: Epoch,
        last_log_epoch: Epoch,
        log_end: Offset,
    ) -> bool {
        // The `broken-grant-without-log-check` test build skips rule 5.2(c), so that
        // scripts/sim-broken.sh can show the simulation catches a stale leader.
        let up_to_date = cfg!(feature = "broken-grant-without-log-check")
            || (last_log_epoch, log_end) >= (self.last_epoch(), self.log_end);
        // The `broken-grant-during-lease` test build skips rule 5.2(b) (grant only once our
        // last grant expired), so that the simulation's lease exclusivity check is shown to bite.
        let lease_expired =
            cfg!(feature = "broken-grant-during-lease") || now >= self.granted_until;
        // A leader never grants: its own lease would overlap the next leader's. (Its grant
        // window is also kept ahead of its lease; this says it outright.)
        self.role != Role::Leader
            && self.storage_failure.is_none()
            && self.repair_until.is_none()
            && epoch > self.promise_floor
            && lease_expired
            && self.pending_grant.is_none()
            && up_to_date
    }

    fn on_lease_probe_response(
        &mut self,
        now: Millis,
        from: NodeId,
        epoch: Epoch,
        granted: bool,
        promised_epoch: Epoch,
        effects: &mut Vec<Effect>,
    ) {
        self.epoch_seen_max = self.epoch_seen_max.max(promised_epoch);
        let majority = self.majority();
        let Some((probed, yes)) = &mut self.probe else {
            return;
        };
        if !granted || *probed != epoch {
            return;
        }
        yes.insert(from);
        if yes.len() + 1 >= majority
            && now >= self.granted_until
            && self.pending_grant.is_none()
            && self.storage_failure.is_none()
            && self.repair_until.is_none()
        {
            self.start_candidacy(now, effects);
        }
    }

    fn on_leader_suspected(&mut self, now: Millis) {
        // A hint may only bring the candidacy forward to when our own grant expires: it
        // never bypasses 5.2(b), which `on_tick` checks anyway.
        if self.role != Role::Leader {
            let earliest = self.granted_until.max(now).max(self.resigned_until);
            self.election_deadline = self.election_deadline.min(earliest);
        }
    }

    /// Steps down as if the lease had lapsed, then holds our own candidacy until
    /// `now + hold_ms` (see [`Input::Resign`]). Nothing of the lease rules changes: we keep
    /// refusing grants until `granted_until` (kept `lease_ms` ahead while we led), and every
    /// follower keeps the grant it gave us until it expires on its own clock, so the next
    /// leader is elected only after that, as after any step-down.
    fn on_resign(&mut self, now: Millis, hold_ms: u64, effects: &mut Vec<Effect>) {
        if self.role != Role::Leader {
            return;
        }
        self.step_down(now, StepDown::Resigned, None, effects);
        self.resigned_until = now.plus(hold_ms);
        self.election_deadline = self.election_deadline.max(self.resigned_until);
    }

    // ----- elections -----

    fn start_candidacy(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        let epoch = self.next_candidate_epoch();
        self.probe = None;
        self.role = Role::Candidate;
        self.epoch = epoch;
        self.epoch_seen_max = epoch;
        self.leader = None;
        self.promise_floor = epoch;
        // Our vote for ourselves binds us like any grant.
        self.granted_until = now.plus(self.config.lease_ms);
        self.elections_started += 1;
        self.election_deadline = now.plus(self.election_wait_ms());
        self.deferred_append = None;
        self.candidacy = Some(Candidacy {
            epoch,
            grants: BTreeSet::new(),
            self_granted: false,
            requested_at: now,
        });
        self.role_changed(effects);
        effects.push(Effect::PersistPromise { epoch });
        let last_log_epoch = self.last_epoch();
        let log_end = self.log_end;
        for to in self.others().collect::<Vec<_>>() {
            effects.push(Effect::Send {
                to,
                message: PeerMessage::LeaseRequest {
                    epoch,
                    last_log_epoch,
                    log_end,
                },
            });
        }
    }

    fn on_promise_persisted(&mut self, now: Millis, epoch: Epoch, effects: &mut Vec<Effect>) {
        // Only a promise we asked for can become durable; anything else is a stale or
        // duplicate completion and changes nothing.
        if epoch <= self.promised || epoch > self.promise_floor {
            return;
        }
        self.promised = epoch;
        if let Some((to, granted_epoch)) = self.pending_grant {
            if granted_epoch <= epoch {
                self.pending_grant = None;
                // The grant binds us from when it is sent, which is now (DESIGN 5.3).
                self.granted_until = self.granted_until.max(now.plus(self.config.lease_ms));
                effects.push(Effect::Send {
                    to,
                    message: PeerMessage::LeaseResponse {
                        epoch: granted_epoch,
                        granted: granted_epoch == epoch,
                        promised_epoch: epoch,
                    },
                });
            }
        }
        if let Some(candidacy) = &mut self.candidacy {
            if candidacy.epoch == epoch {
                candidacy.self_granted = true;
                self.try_win(now, effects);
            }
        }
        if let Some((from, message)) = self.deferred_append.take() {
            if let PeerMessage::Append { epoch: wanted, .. } = &message {
                if *wanted <= self.promised {
                    self.on_peer(now, from, message, effects);
                } else {
                    self.deferred_append = Some((from, message));
                }
            }
        }
        // A promise without a leader yet (a grant): our epoch is now the promised one.
        if self.epoch < epoch && self.role == Role::Follower {
            self.epoch = epoch;
            self.role_changed(effects);
        }
    }

    fn on_lease_request(
        &mut self,
        now: Millis,
        from: NodeId,
        epoch: Epoch,
        last_log_epoch: Epoch,
        log_end: Offset,
        effects: &mut Vec<Effect>,
    ) {
        self.epoch_seen_max = self.epoch_seen_max.max(epoch);
        if !self.would_grant(now, epoch, last_log_epoch, log_end) {
            effects.push(Effect::Send {
                to: from,
                message: PeerMessage::LeaseResponse {
                    epoch,
                    granted: false,
                    promised_epoch: self.promise_floor,
                },
            });
            return;
        }
        // We may not lead (a leader's own grant window never expires while it leads), so
        // at most a candidacy is abandoned here.
        let was = (self.role, self.epoch, self.leader);
        self.probe = None;
        self.candidacy = None;
        self.deferred_append = None;
        self.role = Role::Follower;
        self.leader = None;
        self.promise_floor = epoch;
        self.pending_grant = Some((from, epoch));
        // Nobody else may get a grant while this one is on its way.
        self.granted_until = now.plus(self.config.lease_ms);
        self.election_deadline = now.plus(self.election_wait_ms());
        if was != (self.role, self.epoch, self.leader) {
            self.role_changed(effects);
        }
        effects.push(Effect::PersistPromise { epoch });
    }

    fn on_lease_response(
        &mut self,
        now: Millis,
        from: NodeId,
        epoch: Epoch,
        granted: bool,
        promised_epoch: Epoch,
        effects: &mut Vec<Effect>,
    ) {
        self.epoch_seen_max = self.epoch_seen_max.max(promised_epoch);
        let Some(candidacy) = &mut self.candidacy else {
            return;
        };
        if granted && candidacy.epoch == epoch && promised_epoch == epoch {
            candidacy.grants.insert(from);
            self.try_win(now, effects);
        }
    }

    fn try_win(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        let Some(candidacy) = &self.candidacy else {
            return;
        };
        if !candidacy.self_granted || candidacy.grants.len() + 1 < self.majority() {
            return;
        }
        let epoch = candidacy.epoch;
        let requested_at = candidacy.requested_at;
        self.candidacy = None;
        self.become_leader(now, epoch, requested_at, effects);
    }

    fn become_leader(
        &mut self,
        now: Millis,
        epoch: Epoch,
        requested_at: Millis,
        effects: &mut Vec<Effect>,
    ) {
        assert!(
            epoch == self.promised,
            "a leader leads the epoch it promised"
        );
        assert!(
            epoch > self.last_epoch(),
            "a new epoch is above every logged one"
        );
        self.role = Role::Leader;
        self.epoch = epoch;
        self.leader = Some(self.node);
        let marker_offset = self.log_end;
        let peers = self
            .others()
            .map(|peer| {
                (
                    peer,
                    Progress {
                        next: marker_offset,
                        matched: Offset::ZERO,
                        durable: Offset::ZERO,
                        acked_sent_at: None,
                        read_from: None,
                        rewound: None,
                    },
                )
            })
            .collect();
        self.leadership = Some(Leadership {
            marker_offset,
            lease_until: requested_at.plus(self.config.lease_trusted_ms()),
            heartbeat_due: self.next_heartbeat_after(now),
            peers,
            awaiting_durable: VecDeque::new(),
            awaiting_commit: VecDeque::new(),
            tail: VecDeque::new(),
            tail_bytes: 0,
        });
        self.role_changed(effects);
        let marker =
            RecordBatchBuilder::control_marker(MARKER_TIMESTAMP_MS).stamped(marker_offset, epoch);
        self.append_local(vec![marker.clone()], effects);
        self.replicate_new(now, marker, effects);
        // A single voter commits by its own flush; with followers the marker travels above.
        self.advance_commit(effects);
    }

    /// Leaves leadership or candidacy. Pending produce requests get an indeterminate error
    /// (their batches are in the log and may still commit under the next leader), except
    /// after a storage failure, which is reported as such.
    fn step_down(
        &mut self,
        now: Millis,
        reason: StepDown,
        leader: Option<NodeId>,
        effects: &mut Vec<Effect>,
    ) {
        let was = (self.role, self.epoch, self.leader);
        self.role = Role::Follower;
        self.leader = leader;
        self.probe = None;
        self.candidacy = None;
        self.election_deadline = now.plus(self.election_wait_ms());
        if was != (self.role, self.epoch, self.leader) {
            self.role_changed(effects);
        }
        if let Some(leadership) = self.leadership.take() {
            let mut pending: Vec<PendingReply> = leadership
                .awaiting_durable
                .into_iter()
                .chain(leadership.awaiting_commit)
                .collect();
            pending.sort_by_key(|reply| reply.base_offset);
            for reply in pending {
                let error = match &reason {
                    StepDown::Storage(reason) => ApiError::Storage {
                        reason: reason.clone(),
                    },
                    StepDown::LeaseLapsed | StepDown::Resigned | StepDown::HigherEpoch => {
                        ApiError::Timeout {
                            waited_ms: now.since(reply.received_at),
                        }
                    }
                };
                effects.push(Effect::Reply {
                    request: reply.request,
                    result: Err(error),
                });
            }
        }
    }

    // ----- produce and commit -----

    fn on_produce(
        &mut self,
        now: Millis,
        request: RequestId,
        batch: RecordBatch,
        acks: Acks,
        effects: &mut Vec<Effect>,
    ) {
        let refusal = if let Some(reason) = &self.storage_failure {
            Some(ApiError::Storage {
                reason: reason.clone(),
            })
        } else if let Some(leadership) = &self.leadership {
            let pending = leadership.awaiting_durable.len() + leadership.awaiting_commit.len();
            let pending_full = acks != Acks::None && pending >= self.config.pending_requests_max;
            let flushes_full = self.unflushed.len() >= self.config.pending_requests_max;
            (pending_full || flushes_full).then(|| ApiError::Backpressure {
                retry_after_ms: u32::try_from(self.config.heartbeat_ms).unwrap_or(u32::MAX),
            })
        } else {
            Some(ApiError::NotLeader {
                leader_hint: self.leader,
                epoch: self.epoch,
            })
        };
        if let Some(error) = refusal {
            effects.push(Effect::Reply {
                request,
                result: Err(error),
            });
            return;
        }
        match self.producers.check(batch.header()) {
            Ok(Admission::Append) => {}
            Ok(Admission::Duplicate(written)) => {
                self.answer_duplicate(
                    now,
                    request,
                    acks,
                    written.base_offset,
                    written.next_offset,
                    effects,
                );
                return;
            }
            Err(error) => {
                effects.push(Effect::Reply {
                    request,
                    result: Err(error),
                });
                return;
            }
        }
        let base_offset = self.log_end;
        let stamped = batch.into_stamped(base_offset, self.epoch);
        let end = stamped.next_offset();
        let response = ProduceResponse {
            base_offset,
            leader_epoch: self.epoch,
            duplicate: false,
        };
        if acks == Acks::None {
            effects.push(Effect::Reply {
                request,
                result: Ok(response),
            });
        }
        self.append_local(vec![stamped.clone()], effects);
        let pending = PendingReply {
            request,
            base_offset,
            end,
            received_at: now,
            duplicate: false,
        };
        if let Some(leadership) = &mut self.leadership {
            match acks {
                Acks::All => leadership.awaiting_commit.push_back(pending),
                Acks::Leader => leadership.awaiting_durable.push_back(pending),
                Acks::None => {}
            }
        }
        self.replicate_new(now, stamped, effects);
    }

    /// A retried batch of an idempotent producer that is in our log already: it is answered
    /// like its first attempt, with the same offsets, once it is as safe as `acks` asks (at
    /// once if it already is). The original may be from an older epoch and not committed
    /// yet; it commits with our epoch's marker, like everything before it.
    fn answer_duplicate(
        &mut self,
        now: Millis,
        request: RequestId,
        acks: Acks,
        base_offset: Offset,
        end: Offset,
        effects: &mut Vec<Effect>,
    ) {
        let safe_end = match acks {
            Acks::None => end,
            Acks::Leader => self.durable_end,
            Acks::All => self.high_watermark,
        };
        if end <= safe_end {
            effects.push(Effect::Reply {
                request,
                result: Ok(ProduceResponse {
                    base_offset,
                    leader_epoch: self.epoch,
                    duplicate: true,
                }),
            });
            return;
        }
        let pending = PendingReply {
            request,
            base_offset,
            end,
            received_at: now,
            duplicate: true,
        };
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        // The queues are answered from the front while `end` is covered, so keep them in
        // `end` order.
        let queue = match acks {
            Acks::Leader => &mut leadership.awaiting_durable,
            _ => &mut leadership.awaiting_commit,
        };
        let position = queue.partition_point(|queued| queued.end <= end);
        queue.insert(position, pending);
    }

    /// Sends a batch just appended to every follower that is caught up to it; lagging ones
    /// are served by `ReadForPeer` instead.
    fn replicate_new(&mut self, now: Millis, batch: RecordBatch, effects: &mut Vec<Effect>) {
        let prev_offset = batch.base_offset();
        let prev_epoch = self.epoch_before(prev_offset);
        let epoch = self.epoch;
        let commit = self.high_watermark;
        let tail_bytes_max = self.config.tail_bytes_max;
        let start = self.log_start_message();
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        leadership.tail_bytes += batch.size_bytes();
        leadership.tail.push_back(batch.clone());
        while leadership.tail_bytes > tail_bytes_max {
            let Some(oldest) = leadership.tail.pop_front() else {
                break;
            };
            leadership.tail_bytes -= oldest.size_bytes();
        }
        for (&to, progress) in leadership.peers.iter_mut() {
            if progress.next != prev_offset || progress.read_from.is_some() {
                continue;
            }
            progress.next = batch.next_offset();
            effects.push(Effect::Send {
                to,
                message: PeerMessage::Append {
                    epoch,
                    prev_offset,
                    prev_epoch,
                    batches: vec![batch.clone()],
                    commit,
                    sent_at: now,
                    log_start: start_at(start, prev_offset),
                },
            });
        }
    }

    fn on_durable(&mut self, log_end: Offset, effects: &mut Vec<Effect>) {
        // Exactly one `Durable` answers each `Append`, in order (see the crate docs).
        let Some(flushed) = self.unflushed.pop_front() else {
            return;
        };
        let covered = flushed.log_end.min(log_end).min(self.log_end);
        self.durable_end = self.durable_end.max(covered);
        if self
            .repair_until
            .is_some_and(|until| self.durable_end >= until)
        {
            self.repair_until = None;
        }
        if self.role == Role::Leader {
            self.answer_durable(effects);
            self.advance_commit(effects);
        } else {
            self.report_durable(effects);
        }
    }

    /// acks=leader requests whose batches are now flushed here.
    fn answer_durable(&mut self, effects: &mut Vec<Effect>) {
        let durable_end = self.durable_end;
        let epoch = self.epoch;
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        answer_up_to(
            &mut leadership.awaiting_durable,
            durable_end,
            epoch,
            effects,
        );
    }

    /// The commit rule (DESIGN 5.4): the newest offset durable on a majority, the leader
    /// included, and only once this epoch's marker is among it.
    fn advance_commit(&mut self, effects: &mut Vec<Effect>) {
        // The `broken-ack-before-majority` test build counts a commit one voter short of a
        // majority, so that scripts/sim-broken.sh can show the simulation catches it.
        let majority = if cfg!(feature = "broken-ack-before-majority") {
            (self.majority() - 1).max(1)
        } else {
            self.majority()
        };
        let durable_end = self.durable_end;
        let epoch = self.epoch;
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        let mut durable: Vec<Offset> = leadership
            .peers
            .values()
            .map(|progress| progress.durable)
            .collect();
        durable.push(durable_end);
        durable.sort_by(|a, b| b.cmp(a));
        let quorum = durable[majority - 1].min(durable_end);
        // The `broken-commit-without-marker` test build commits older epochs' batches by
        // replica count alone (the Raft "figure 8" bug) for scripts/sim-broken.sh.
        let marker_pending =
            !cfg!(feature = "broken-commit-without-marker") && quorum <= leadership.marker_offset;
        if marker_pending || quorum <= self.high_watermark {
            return;
        }
        self.high_watermark = quorum;
        effects.push(Effect::HighWatermark { offset: quorum });
        answer_up_to(&mut leadership.awaiting_commit, quorum, epoch, effects);
    }

    fn on_storage_failed(&mut self, now: Millis, reason: String, effects: &mut Vec<Effect>) {
        // From here on the replica neither grants, nor appends, nor leads: its promises and
        // its log can no longer be made durable. The runtime rebuilds it once storage is back.
        self.storage_failure = Some(reason.clone());
        self.pending_grant = None;
        self.deferred_append = None;
        self.probe = None;
        if self.role != Role::Follower {
            self.step_down(now, StepDown::Storage(reason), None, effects);
        }
    }

    // ----- replication -----

    /// The highest epoch this replica knows of: promised, logged, led or heard of.
    fn epoch_known_max(&self) -> Epoch {
        self.promise_floor
            .max(self.promised)
            .max(self.last_epoch())
            .max(self.epoch_seen_max)
            .max(self.epoch)
    }

    /// Checks every epoch a peer message carries against [`EPOCH_JUMP_MAX`] above what this
    /// replica knows of, before the message may change anything.
    pub fn check_peer_epochs(&self, message: &PeerMessage) -> Result<(), EpochRefusal> {
        let ceiling = Epoch(self.epoch_known_max().0.saturating_add(EPOCH_JUMP_MAX));
        let within = |epoch: Epoch| {
            if epoch > ceiling {
                Err(EpochRefusal::TooFarAhead { epoch, ceiling })
            } else {
                Ok(())
            }
        };
        match message {
            PeerMessage::LeaseRequest {
                epoch,
                last_log_epoch,
                ..
            }
            | PeerMessage::LeaseProbe {
                epoch,
                last_log_epoch,
                ..
            } => {
                within(*epoch)?;
                if last_log_epoch > epoch {
                    return Err(EpochRefusal::LogAheadOfCandidacy {
                        epoch: *epoch,
                        last_log_epoch: *last_log_epoch,
                    });
                }
                Ok(())
            }
            PeerMessage::LeaseResponse {
                epoch,
                promised_epoch,
                ..
            }
            | PeerMessage::LeaseProbeResponse {
                epoch,
                promised_epoch,
                ..
            } => {
                within(*epoch)?;
                within(*promised_epoch)
            }
            // The batches' own epochs are bounded by the message's (`append_well_formed`).
            PeerMessage::Append { epoch, .. } => within(*epoch),
            PeerMessage::AppendResponse { epoch, result, .. } => {
                within(*epoch)?;
                match result {
                    AppendResult::Ok { .. } => Ok(()),
                    AppendResult::Diverged { epoch, .. } => within(*epoch),
                    AppendResult::StaleEpoch { promised_epoch } => within(*promised_epoch),
                }
            }
        }
    }

    fn on_peer(
        &mut self,
        now: Millis,
        from: NodeId,
        message: PeerMessage,
        effects: &mut Vec<Effect>,
    ) {
        // Validate, then mutate: a refused message is dropped whole, with no answer (an answer
        // would have to name an epoch, and any we could name would be wrong for its sender).
        if self.check_peer_epochs(&message).is_err() {
            return;
        }
        match message {
            PeerMessage::LeaseRequest {
                epoch,
                last_log_epoch,
                log_end,
            } => self.on_lease_request(now, from, epoch, last_log_epoch, log_end, effects),
            PeerMessage::LeaseResponse {
                epoch,
                granted,
                promised_epoch,
            } => self.on_lease_response(now, from, epoch, granted, promised_epoch, effects),
            PeerMessage::LeaseProbe {
                epoch,
                last_log_epoch,
                log_end,
            } => {
                // Pure: a probe changes nothing here, not even what we heard of.
                let granted = self.would_grant(now, epoch, last_log_epoch, log_end);
                effects.push(Effect::Send {
                    to: from,
                    message: PeerMessage::LeaseProbeResponse {
                        epoch,
                        granted,
                        promised_epoch: self.promise_floor,
                    },
                });
            }
            PeerMessage::LeaseProbeResponse {
                epoch,
                granted,
                promised_epoch,
            } => self.on_lease_probe_response(now, from, epoch, granted, promised_epoch, effects),
            PeerMessage::Append { .. } => self.on_append(now, from, message, effects),
            PeerMessage::AppendResponse {
                epoch,
                sent_at,
                result,
            } => self.on_append_response(now, from, epoch, sent_at, result, effects),
        }
    }

    fn send_heartbeats(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        let heartbeat_due = self.next_heartbeat_after(now);
        let epoch = self.epoch;
        let commit = self.high_watermark;
        let log_end = self.log_end;
        let start = self.log_start_message();
        let prev_epochs: BTreeMap<NodeId, Epoch> = match &self.leadership {
            Some(leadership) => leadership
                .peers
                .iter()
                .map(|(&peer, progress)| (peer, self.epoch_before(progress.next)))
                .collect(),
            None => return,
        };
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        leadership.heartbeat_due = heartbeat_due;
        for (&to, progress) in leadership.peers.iter() {
            effects.push(Effect::Send {
                to,
                message: PeerMessage::Append {
                    epoch,
                    prev_offset: progress.next,
                    prev_epoch: prev_epochs[&to],
                    batches: Vec::new(),
                    commit,
                    sent_at: now,
                    log_start: start_at(start, progress.next),
                },
            });
        }
        let lagging: Vec<NodeId> = leadership
            .peers
            .iter()
            .filter(|(_, progress)| progress.next < log_end && progress.read_from.is_none())
            .map(|(&peer, _)| peer)
            .collect();
        for to in lagging {
            self.catch_up(now, to, effects);
        }
    }

    fn on_append(
        &mut self,
        now: Millis,
        from: NodeId,
        message: PeerMessage,
        effects: &mut Vec<Effect>,
    ) {
        let PeerMessage::Append {
            epoch,
            prev_offset,
            prev_epoch,
            batches,
            commit,
            sent_at,
            log_start,
        } = message
        else {
            return;
        };
        // The `broken-skip-epoch-check` test build follows deposed leaders (rule 5.1 broken)
        // for scripts/sim-broken.sh.
        if epoch < self.promise_floor && !cfg!(feature = "broken-skip-epoch-check") {
            effects.push(Effect::Send {
                to: from,
                message: PeerMessage::AppendResponse {
                    epoch,
                    sent_at,
                    result: AppendResult::StaleEpoch {
                        promised_epoch: self.promise_floor,
                    },
                },
            });
            return;
        }
        if self.storage_failure.is_some()
            || !append_well_formed(epoch, prev_offset, prev_epoch, &batches)
        {
            return;
        }
        if self.role == Role::Leader && epoch == self.epoch {
            // Two leaders of one epoch cannot exist (each needs a majority of promises);
            // a message claiming so is dropped rather than trusted.
            return;
        }
        if epoch > self.promised {
            // We answer a leader only once we durably promised its epoch (DESIGN 5.1), so
            // the message waits for the promise; a newer one replaces it.
            if self.role != Role::Follower {
                self.step_down(now, StepDown::HigherEpoch, None, effects);
            }
            if epoch > self.promise_floor {
                self.promise_floor = epoch;
                effects.push(Effect::PersistPromise { epoch });
            }
            self.epoch_seen_max = self.epoch_seen_max.max(epoch);
            self.deferred_append = Some((
                from,
                PeerMessage::Append {
                    epoch,
                    prev_offset,
                    prev_epoch,
                    batches,
                    commit,
                    sent_at,
                    log_start,
                },
            ));
            return;
        }
        // Here epoch == promised: `from` leads our epoch. At the leader's log start its
        // `prev_epoch` may be unknown to it (retention removed the batch before): the match
        // is proven otherwise, or we start our log there.
        let mut start_proven = false;
        if let Some(start) = log_start.filter(|start| start.offset == prev_offset) {
            start_proven = self.log_agrees_at(start);
            if !start_proven {
                self.start_log_at(now, from, epoch, sent_at, start, effects);
            }
        }
        let matches = prev_offset <= self.log_end
            && (prev_offset <= self.log_start
                || start_proven
                || self.epoch_before(prev_offset) == prev_epoch);
        if !matches {
            self.follow(now, from, epoch, sent_at, effects);
            let (diverged_epoch, end_offset) = self.divergence(prev_offset, prev_epoch);
            effects.push(Effect::Send {
                to: from,
                message: PeerMessage::AppendResponse {
                    epoch,
                    sent_at,
                    result: AppendResult::Diverged {
                        epoch: diverged_epoch,
                        end_offset,
                    },
                },
            });
            return;
        }
        // With too many flushes outstanding we take no batches now, but still answer as to a
        // heartbeat, so the leader keeps its lease and resends from where we are.
        let batches =
            if !batches.is_empty() && self.unflushed.len() >= self.config.pending_requests_max {
                Vec::new()
            } else {
                batches
            };
        // Skip batches we already hold (same epoch at the same offset means the same batch);
        // the first one that differs marks an uncommitted suffix to drop (DESIGN 5.6).
        let mut skip = 0;
        let mut truncate_from = None;
        for batch in &batches {
            if batch.base_offset() >= self.log_end {
                break;
            }
            // Below our log start everything is committed (and so equal to the leader's);
            // the history no longer says which epochs it held.
            if batch.base_offset() < self.log_start
                || self.epoch_at(batch.base_offset()) == batch.leader_epoch()
            {
                skip += 1;
            } else {
                truncate_from = Some(batch.base_offset());
                break;
            }
        }
        let matched_end = batches
            .last()
            .map(|batch| batch.next_offset())
            .unwrap_or(prev_offset);
        let rest = &batches[skip..];
        let append_from = truncate_from.unwrap_or(self.log_end);
        if rest
            .first()
            .is_some_and(|batch| batch.base_offset() != append_from)
        {
            // Only reachable if our own history is inconsistent; refuse rather than guess.
            return;
        }
        if truncate_from.is_some_and(|from| from < self.high_watermark) {
            // A committed offset never differs between replicas; a leader that says so is
            // wrong, and we keep our committed prefix (and count the refusal).
            self.committed_truncations_refused += 1;
            return;
        }
        self.follow(now, from, epoch, sent_at, effects);
        if let Some(from_offset) = truncate_from {
            effects.push(Effect::Truncate { from: from_offset });
            for flush in self.unflushed.iter_mut() {
                flush.log_end = flush.log_end.min(from_offset);
            }
            self.log_end = from_offset;
            self.durable_end = self.durable_end.min(from_offset);
            self.durable_reported = self.durable_reported.min(from_offset);
            self.epoch_history.retain(|&(_, start)| start < from_offset);
            self.producers.truncate(from_offset);
            self.leader_matched_end = self.leader_matched_end.min(from_offset);
        }
        if !rest.is_empty() {
            self.append_local(rest.to_vec(), effects);
        }
        self.leader_matched_end = self.leader_matched_end.max(matched_end);
        let commit_known = commit.min(self.leader_matched_end).min(self.log_end);
        if commit_known > self.high_watermark {
            self.high_watermark = commit_known;
            effects.push(Effect::HighWatermark {
                offset: commit_known,
            });
        }
        // The `broken-ack-unflushed` test build reports appended batches as durable before
        // their flush (non-durable acknowledgements) for scripts/sim-broken.sh.
        let durable_end = if cfg!(feature = "broken-ack-unflushed") {
            self.log_end.min(self.leader_matched_end)
        } else {
            self.durable_end.min(self.leader_matched_end)
        };
        self.durable_reported = self.durable_reported.max(durable_end);
        effects.push(Effect::Send {
            to: from,
            message: PeerMessage::AppendResponse {
                epoch,
                sent_at,
                result: AppendResult::Ok {
                    log_end: self.leader_matched_end,
                    durable_end,
                },
            },
        });
    }

    /// Makes `leader` our leader for `epoch` (which we promised), renews the lease we grant
    /// it, and pushes our own candidacy back.
    fn follow(
        &mut self,
        now: Millis,
        leader: NodeId,
        epoch: Epoch,
        sent_at: Millis,
        effects: &mut Vec<Effect>,
    ) {
        if self.leadership.is_some() {
            // Unreachable while the invariants hold (a leader leads its promised epoch and
            // drops appends of it); kept so that a surprise degrades into a step-down.
            self.step_down(now, StepDown::HigherEpoch, Some(leader), effects);
        }
        let was = (self.role, self.epoch, self.leader);
        self.probe = None;
        self.candidacy = None;
        self.role = Role::Follower;
        if was.1 != epoch || was.2 != Some(leader) {
            self.leader_matched_end = Offset::ZERO;
            self.durable_reported = Offset::ZERO;
            self.leader_sent_at = Millis(0);
        }
        self.epoch = epoch;
        self.leader = Some(leader);
        self.leader_sent_at = self.leader_sent_at.max(sent_at);
        self.granted_until = self.granted_until.max(now.plus(self.config.lease_ms));
        self.election_deadline = now.plus(self.election_wait_ms());
        if was != (self.role, self.epoch, self.leader) {
            self.role_changed(effects);
        }
    }

    /// Whether our log provably equals the leader's below its log start `start`: it lies at
    /// or below our own log start; or at or below our high watermark (committed prefixes
    /// agree); or one of our batches at `start - 1` or `start` has `start.epoch` (the epoch
    /// of the leader's batch at its start, or of its last batch when its log is empty): one
    /// epoch's leader writes one batch per offset, and a follower takes a batch only after
    /// the batch before it matched, so one equal batch proves the prefix below it equal.
    fn log_agrees_at(&self, start: LogStart) -> bool {
        let at = start.offset;
        // The `broken-reset-below-high-watermark` test build trusts nothing but its own log
        // start, and so empties logs whose committed suffix the leader still holds, so that
        // scripts/sim-broken.sh shows the simulation catches it.
        if cfg!(feature = "broken-reset-below-high-watermark") {
            return at <= self.log_start;
        }
        if at > self.log_end {
            return false;
        }
        if at <= self.log_start || at <= self.high_watermark {
            return true;
        }
        // Here our log holds `at - 1` (we are past our log start).
        let epoch_known = start.epoch != Epoch::ZERO;
        epoch_known
            && ((at < self.log_end && self.epoch_at(at) == start.epoch)
                || self.epoch_before(at) == start.epoch)
    }

    /// The leader of our promised epoch starts its log at `start`, no longer holds what we
    /// lack, and our log does not provably equal its own below `start`: we empty our log and
    /// start it there. What we drop is either below `start` (committed, expired at the
    /// leader) or a suffix from `start` whose first batch differs from the leader's (so
    /// uncommitted: above our high watermark, which is below `start`).
    fn start_log_at(
        &mut self,
        now: Millis,
        leader: NodeId,
        epoch: Epoch,
        sent_at: Millis,
        start: LogStart,
        effects: &mut Vec<Effect>,
    ) {
        if start.offset < self.log_start {
            // Offsets are never reused: a start behind ours is proven by our own start.
            return;
        }
        self.follow(now, leader, epoch, sent_at, effects);
        effects.push(Effect::ResetLog {
            log_start: start.offset,
            epoch: start.epoch,
        });
        for flush in self.unflushed.iter_mut() {
            flush.log_end = flush.log_end.min(start.offset);
        }
        self.log_start = start.offset;
        self.log_end = start.offset;
        // Nothing below the start is ours to flush any more; all of it is committed.
        self.durable_end = start.offset;
        self.durable_reported = self.durable_reported.min(start.offset);
        self.epoch_history.clear();
        if start.epoch != Epoch::ZERO {
            self.epoch_history.push((start.epoch, start.offset));
        }
        // Our producers' batches are gone, and what the leader holds below its log start we
        // cannot learn: they become unknown (a non-zero sequence is answered
        // UnknownProducerId and the producer starts a new epoch) rather than known with a
        // last sequence that may be wrong (which would refuse or wrongly deduplicate their
        // next batch). A restart agrees: a producer snapshot older than the log start is
        // ignored.
        if cfg!(feature = "broken-reset-keeps-producers") {
            self.producers.truncate(Offset::ZERO);
        } else {
            self.producers.clear();
        }
        self.leader_matched_end = start.offset;
        if start.offset > self.high_watermark {
            self.high_watermark = start.offset;
            effects.push(Effect::HighWatermark {
                offset: start.offset,
            });
        }
    }

    /// Our newest epoch not above `prev_epoch` with offsets below `prev_offset`, and where
    /// it ends (capped at `prev_offset` and our log end).
    fn divergence(&self, prev_offset: Offset, prev_epoch: Epoch) -> (Epoch, Offset) {
        let limit = prev_offset.min(self.log_end);
        let found = self
            .epoch_history
            .iter()
            .enumerate()
            .rev()
            .find(|(_, &(epoch, start))| epoch <= prev_epoch && start < limit);
        match found {
            Some((index, &(epoch, _))) => (epoch, self.entry_end(index).min(limit)),
            None => (Epoch::ZERO, Offset::ZERO),
        }
    }

    /// Follower: tells the leader about a flush, so commit does not wait for the next
    /// append or heartbeat.
    fn report_durable(&mut self, effects: &mut Vec<Effect>) {
        let Some(leader) = self.leader else {
            return;
        };
        let durable_end = self.durable_end.min(self.leader_matched_end);
        if durable_end <= self.durable_reported {
            return;
        }
        self.durable_reported = durable_end;
        effects.push(Effect::Send {
            to: leader,
            message: PeerMessage::AppendResponse {
                epoch: self.epoch,
                sent_at: self.leader_sent_at,
                result: AppendResult::Ok {
                    log_end: self.leader_matched_end,
                    durable_end,
                },
            },
        });
    }

    fn on_append_response(
        &mut self,
        now: Millis,
        from: NodeId,
        epoch: Epoch,
        sent_at: Millis,
        result: AppendResult,
        effects: &mut Vec<Effect>,
    ) {
        if let AppendResult::StaleEpoch { promised_epoch } = result {
            self.epoch_seen_max = self.epoch_seen_max.max(promised_epoch);
            if self.role == Role::Leader && promised_epoch > self.epoch && epoch == self.epoch {
                self.step_down(now, StepDown::HigherEpoch, None, effects);
            }
            return;
        }
        if self.role != Role::Leader || epoch != self.epoch || sent_at > now {
            return;
        }
        let log_end = self.log_end;
        let log_start = self.log_start;
        // The leader's end of its newest epoch not above the follower's answer.
        let diverged_at = match &result {
            AppendResult::Diverged {
                epoch: their_epoch,
                end_offset,
            } => {
                let ours = self
                    .epoch_history
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, &(epoch, _))| epoch <= *their_epoch)
                    .map(|(index, _)| self.entry_end(index))
                    .unwrap_or(Offset::ZERO);
                Some((*end_offset).min(ours).min(log_end))
            }
            _ => None,
        };
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        let Some(progress) = leadership.peers.get_mut(&from) else {
            return;
        };
        progress.acked_sent_at = Some(progress.acked_sent_at.map_or(sent_at, |t| t.max(sent_at)));
        let mut rewound_now = false;
        match result {
            AppendResult::Ok {
                log_end: their_end,
                durable_end,
            } => {
                let matched = their_end.min(log_end);
                progress.matched = progress.matched.max(matched);
                progress.durable = progress.durable.max(durable_end.min(matched));
                progress.next = progress.next.max(progress.matched);
            }
            AppendResult::Diverged { .. } => {
                // Below our log start we no longer hold what the follower lacks: we resume at
                // the log start, where our append tells the follower to start its log there
                // unless it proves its log matches (see `PeerMessage::Append::log_start`).
                let next = diverged_at.expect("computed for Diverged").max(log_start);
                // Several pipelined appends behind one lost message all answer Diverged: the
                // read already under way for that position, or the resend made on the first
                // answer, serves them all.
                let covered_by_resend = progress
                    .rewound
                    .is_some_and(|(at, when)| at == next && sent_at <= when);
                if progress.read_from != Some(next) && !covered_by_resend {
                    progress.next = next;
                    progress.matched = progress.matched.min(next);
                    // A read for another position is useless now; its answer is ignored.
                    progress.read_from = None;
                    progress.rewound = Some((next, now));
                    rewound_now = true;
                }
            }
            AppendResult::StaleEpoch { .. } => unreachable!("handled above"),
        }
        // Catch up a lagging follower once what was sent is answered: from the tail at once,
        // or one log read at a time.
        let settled = rewound_now || progress.next == progress.matched;
        let lagging = progress.next < log_end && progress.read_from.is_none() && settled;
        let fully_matched = leadership
            .peers
            .values()
            .map(|progress| progress.matched)
            .min()
            .unwrap_or(log_end);
        // What every follower has is never sent again from the tail.
        while let Some(oldest) = leadership.tail.front() {
            if oldest.next_offset() > fully_matched {
                break;
            }
            leadership.tail_bytes -= oldest.size_bytes();
            leadership.tail.pop_front();
        }
        if lagging {
            self.catch_up(now, from, effects);
        }
        self.check_lease(now, effects);
        self.advance_commit(effects);
    }

    /// Sends a follower that is behind (`next` below our log end, no read outstanding) what
    /// it lacks: from the in-memory tail when it still holds `next`, in as many messages as
    /// it takes, else one `ReadForPeer` of the log.
    fn catch_up(&mut self, now: Millis, to: NodeId, effects: &mut Vec<Effect>) {
        let epoch = self.epoch;
        let commit = self.high_watermark;
        let log_end = self.log_end;
        let bytes_max = self.config.append_message_bytes_max;
        let Some(leadership) = &self.leadership else {
            return;
        };
        let Some(progress) = leadership.peers.get(&to) else {
            return;
        };
        let mut from = progress.next;
        if from >= log_end || progress.read_from.is_some() {
            return;
        }
        let start = self.log_start_message();
        let holds = |from: Offset| {
            leadership
                .tail
                .front()
                .is_some_and(|oldest| oldest.base_offset() <= from)
        };
        if from < start.offset && !holds(from) {
            // Retention removed what this follower lacks: it continues at our log start (and
            // starts its own log there). A read from `from` would only return batches from
            // the log start, be refused as not what was asked, and be asked again at every
            // heartbeat.
            from = start.offset;
            let prev_epoch = self.epoch_before(from);
            if let Some(progress) = self
                .leadership
                .as_mut()
                .and_then(|leadership| leadership.peers.get_mut(&to))
            {
                progress.next = from;
            }
            if from >= log_end {
                effects.push(Effect::Send {
                    to,
                    message: PeerMessage::Append {
                        epoch,
                        prev_offset: from,
                        prev_epoch,
                        batches: Vec::new(),
                        commit,
                        sent_at: now,
                        log_start: start_at(start, from),
                    },
                });
                return;
            }
        }
        let Some(leadership) = &self.leadership else {
            return;
        };
        let tail = &leadership.tail;
        let tail_holds = tail
            .front()
            .is_some_and(|oldest| oldest.base_offset() <= from);
        if !tail_holds {
            self.catch_up.log_reads += 1;
            if let Some(progress) = self
                .leadership
                .as_mut()
                .and_then(|leadership| leadership.peers.get_mut(&to))
            {
                progress.read_from = Some(from);
            }
            effects.push(Effect::ReadForPeer {
                to,
                from,
                until: log_end,
                bytes_max,
            });
            return;
        }
        // The batch holding `from` (the tail is contiguous, so the search is exact), then
        // everything after it, cut into messages of at most `bytes_max`.
        let first = tail.partition_point(|batch| batch.next_offset() <= from);
        let mut messages: Vec<Vec<RecordBatch>> = Vec::new();
        let mut bytes = 0usize;
        for batch in tail.iter().skip(first) {
            let size = crate::append_wire_bytes(batch);
            match messages.last_mut() {
                Some(message) if bytes + size <= bytes_max => {
                    bytes += size;
                    message.push(batch.clone());
                }
                _ => {
                    bytes = size;
                    messages.push(vec![batch.clone()]);
                }
            }
        }
        for batches in messages {
            let prev_offset = batches[0].base_offset();
            let prev_epoch = self.epoch_before(prev_offset);
            self.catch_up.tail_sends += 1;
            effects.push(Effect::Send {
                to,
                message: PeerMessage::Append {
                    epoch,
                    prev_offset,
                    prev_epoch,
                    batches,
                    commit,
                    sent_at: now,
                    log_start: start_at(start, prev_offset),
                },
            });
        }
        if let Some(progress) = self
            .leadership
            .as_mut()
            .and_then(|leadership| leadership.peers.get_mut(&to))
        {
            progress.next = log_end;
        }
    }

    fn on_peer_read(
        &mut self,
        now: Millis,
        to: NodeId,
        from: Offset,
        batches: Vec<RecordBatch>,
        effects: &mut Vec<Effect>,
    ) {
        let epoch = self.epoch;
        let commit = self.high_watermark;
        let log_end = self.log_end;
        let bytes_max = self.config.append_message_bytes_max;
        // Validate first: the answer must be for the read we asked, contiguous, inside our
        // log and agree with our epoch history.
        let wanted = self
            .leadership
            .as_ref()
            .and_then(|leadership| leadership.peers.get(&to))
            .is_some_and(|progress| progress.read_from == Some(from));
        if !wanted {
            return;
        }
        let mut kept = Vec::new();
        let mut bytes = 0usize;
        for batch in batches {
            let size = crate::append_wire_bytes(&batch);
            if !kept.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            kept.push(batch);
        }
        let consistent = kept
            .first()
            .is_some_and(|first| first.base_offset() <= from && from < first.next_offset())
            && kept
                .windows(2)
                .all(|pair| pair[0].next_offset() == pair[1].base_offset())
            && kept
                .last()
                .is_some_and(|last| last.next_offset() <= log_end)
            && kept
                .iter()
                .all(|batch| self.epoch_at(batch.base_offset()) == batch.leader_epoch());
        let prev_offset = kept
            .first()
            .map(|batch| batch.base_offset())
            .unwrap_or(from);
        let prev_epoch = self.epoch_before(prev_offset);
        let start = self.log_start_message();
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        let Some(progress) = leadership.peers.get_mut(&to) else {
            return;
        };
        progress.read_from = None;
        if !consistent {
            // An empty or odd read is retried from the heartbeat.
            return;
        }
        progress.next = kept
            .last()
            .expect("consistent reads are non-empty")
            .next_offset();
        effects.push(Effect::Send {
            to,
            message: PeerMessage::Append {
                epoch,
                prev_offset,
                prev_epoch,
                batches: kept,
                commit,
                sent_at: now,
                log_start: start_at(start, prev_offset),
            },
        });
        // What was appended while the read ran is usually still in the tail: send it now, so
        // the follower is back on live appends instead of needing another read.
        let next = progress.next;
        let tail_holds = leadership
            .tail
            .front()
            .is_some_and(|oldest| oldest.base_offset() <= next);
        if tail_holds {
            self.catch_up(now, to, effects);
        }
    }
}

/// What an append continuing at `prev_offset` tells about our log start: only an append at
/// a log start that retention moved carries it. There our `prev_epoch` is not known (the
/// batch before is gone), so the follower proves the match another way or starts its log
/// there (see `PeerMessage::Append::log_start`); elsewhere `prev_epoch` decides, as always.
fn start_at(start: LogStart, prev_offset: Offset) -> Option<LogStart> {
    (start.offset > Offset::ZERO && prev_offset == start.offset).then_some(start)
}

/// The shape checks of an append that need no state: batches contiguous from `prev_offset`,
/// epochs not decreasing, none above the message's epoch nor below `prev_epoch`.
fn append_well_formed(
    epoch: Epoch,
    prev_offset: Offset,
    prev_epoch: Epoch,
    batches: &[RecordBatch],
) -> bool {
    if prev_epoch > epoch {
        return false;
    }
    let mut expected_base = prev_offset;
    let mut last_epoch = prev_epoch;
    for batch in batches {
        if batch.base_offset() != expected_base
            || batch.leader_epoch() < last_epoch
            || batch.leader_epoch() > epoch
            || batch.leader_epoch() == Epoch::ZERO
        {
            return false;
        }
        expected_base = batch.next_offset();
        last_epoch = batch.leader_epoch();
    }
    true
}

/// Answers, in order, the waiting produce replies whose batches end at or below `safe_end`.
fn answer_up_to(
    waiting: &mut VecDeque<PendingReply>,
    safe_end: Offset,
    epoch: Epoch,
    effects: &mut Vec<Effect>,
) {
    while waiting.front().is_some_and(|reply| reply.end <= safe_end) {
        let reply = waiting.pop_front().expect("front exists");
        effects.push(Effect::Reply {
            request: reply.request,
            result: Ok(ProduceResponse {
                base_offset: reply.base_offset,
                leader_epoch: epoch,
                duplicate: reply.duplicate,
            }),
        });
    }
}
