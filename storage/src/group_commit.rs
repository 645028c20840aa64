//! Group commit: one flusher thread per store, one flush for many waiting appends.
//!
//! A caller appends (buffered), then asks for a flush. Requests queue up while a flush runs;
//! when it returns, the flusher takes the whole queue and runs one more flush for all of them.
//! A request is therefore always answered by a flush that *started after* it was queued, so
//! every append issued before the request is covered, whichever log it went to.
//!
//! The queue is bounded by [`GroupCommitConfig::flush_requests_max`]. Callers choose how to
//! meet a full queue: [`GroupCommitter::try_request`] refuses at once with
//! [`StorageError::FlushQueueFull`]; [`GroupCommitter::request`] returns a future that waits
//! for room (async backpressure) and then for the flush; [`GroupCommitter::request_blocking`]
//! does the same on a plain thread.
//!
//! Where the flush runs is [`GroupCommitConfig::site`]. [`FlushSite::Thread`]: on an OS thread
//! of its own, for flushes that wait for the device (an `fsync` takes milliseconds, which an
//! actix arbiter must not block for). [`FlushSite::Caller`]: in a task on the async runtime of
//! whoever asked, queued behind the tasks already ready there, for flushes that only hand their
//! bytes to the kernel (tens of microseconds): two thread wake-ups per flush cost more than
//! that. The queue, the grouping and the promise are the same either way. Dropping the last
//! clone of the [`GroupCommitter`] stops the thread after it has answered every request
//! already queued.

use crate::{LogStore, StorageError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, Notify};

type FlushResult = Result<(), StorageError>;

/// A flush taking this long is logged.
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);

/// Where the group committer runs its flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushSite {
    /// On the committer's own thread. For flushes that wait for the device.
    #[default]
    Thread,
    /// On the thread that asked, in a task spawned on its tokio runtime, which runs after the
    /// tasks already ready there: requests made meanwhile (by any partition on that thread)
    /// share the flush. For flushes that only hand their bytes to the kernel. A flush after a
    /// failed one (the store may reopen, which takes long) runs on the runtime's blocking pool
    /// instead. A request made outside any tokio runtime is flushed at once by its caller.
    Caller,
}

/// Limits of the group committer, and where it flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Requests that may wait for the next flush. One flush answers all of them, so this only
    /// bounds memory; it is large enough that a busy node rarely meets it.
    pub flush_requests_max: usize,
    pub site: FlushSite,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            flush_requests_max: 16 * 1024,
            site: FlushSite::Thread,
        }
    }
}

/// Counters that show grouping at work: `requests_served / flushes` requests per flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Flushes run (successful or not).
    pub flushes: u64,
    /// Flushes that returned an error (their requests got the error).
    pub flushes_failed: u64,
    /// Requests answered.
    pub requests_served: u64,
}

struct Queue {
    waiting: Vec<oneshot::Sender<FlushResult>>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the flusher when a request arrives or on shutdown.
    work: Condvar,
    /// Wakes blocked requesters when the flusher empties the queue.
    room: Condvar,
    /// The same for async requesters.
    room_async: Notify,
    config: GroupCommitConfig,
    flushes: AtomicU64,
    flushes_failed: AtomicU64,
    requests_served: AtomicU64,
    observer: Option<FlushObserver>,
    /// The store's flush, with [`FlushSite::Caller`] (the thread owns the store otherwise).
    caller_flush: Option<Box<dyn Fn() -> FlushResult + Send + Sync>>,
    /// With [`FlushSite::Caller`]: a flush task is spawned and has not taken the queue yet.
    caller_flush_due: AtomicBool,
    /// The last flush failed, so the next one may reopen the store (read with
    /// [`FlushSite::Caller`], which then flushes off the caller's thread).
    last_flush_failed: AtomicBool,
    /// With [`FlushSite::Caller`], held while a flush runs: flushes asked for on several
    /// threads run one at a time, as they do on the committer's one thread.
    flushing: Mutex<()>,
}

/// Told how long each flush took, on the flusher thread right after it returns (the node's
/// flush-latency metric). It must be quick: every waiting append waits for it too.
pub type FlushObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

fn stopped() -> StorageError {
    StorageError::Io("the group committer has stopped".to_owned())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a request if there is room; the caller holds the lock. With
    /// [`FlushSite::Caller`] the caller then calls [`Shared::schedule`] once it let go of it.
    fn enqueue(&self, queue: &mut Queue) -> Result<FlushTicket, StorageError> {
        if queue.stopping {
            return Err(stopped());
        }
        if queue.waiting.len() >= self.config.flush_requests_max {
            return Err(StorageError::FlushQueueFull {
                flush_requests_max: self.config.flush_requests_max,
            });
        }
        let (sender, receiver) = oneshot::channel();
        queue.waiting.push(sender);
        if self.caller_flush.is_none() && queue.waiting.len() == 1 {
            self.work.notify_one();
        }
        Ok(FlushTicket { receiver })
    }

    /// [`FlushSite::Caller`]: makes sure a flush will take the queue, spawning its task on the
    /// current runtime if none is due, or flushing right here outside any runtime.
    fn schedule(self: &Arc<Self>) {
        if self.caller_flush.is_none() || self.caller_flush_due.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flush_caller_queue();
            return;
        };
        let mut due = DueFlush {
            shared: Arc::clone(self),
            ran: false,
        };
        runtime.spawn(async move {
            // Behind the tasks that are ready now, and the input the runtime polls next.
            tokio::task::yield_now().await;
            due.ran = true;
            let shared = Arc::clone(&due.shared);
            if shared.last_flush_failed.load(Ordering::Acquire) {
                let blocking = tokio::task::spawn_blocking(move || shared.flush_caller_queue());
                // A panicked flush dropped its requests' senders: they are told it stopped.
                drop(blocking.await);
            } else {
                shared.flush_caller_queue();
            }
        });
    }

    /// [`FlushSite::Caller`]: takes the queue and flushes for it on this thread.
    fn flush_caller_queue(&self) {
        let Some(flush) = &self.caller_flush else {
            return;
        };
        let _one_at_a_time = self
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let batch = {
            let mut queue = self.lock();
            self.caller_flush_due.store(false, Ordering::Release);
            std::mem::take(&mut queue.waiting)
        };
        if batch.is_empty() {
            return;
        }
        // Its requests were told; the next flush tries again.
        drop(self.flush_for(batch, flush));
    }

    /// Runs one flush for `batch`, taken from the queue before it starts, and answers it.
    fn flush_for(
        &self,
        batch: Vec<oneshot::Sender<FlushResult>>,
        flush: impl FnOnce() -> FlushResult,
    ) -> FlushResult {
        self.room.notify_all();
        self.room_async.notify_waiters();
        let started = std::time::Instant::now();
        let result = flush();
        let took = started.elapsed();
        if let Some(observer) = &self.observer {
            observer(took);
        }
        if took >= SLOW_FLUSH {
            // Every acknowledgement waits for a flush: a slow one is a latency spike.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                requests = batch.len(),
                "slow flush"
            );
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.flushes_failed.fetch_add(1, Ordering::Relaxed);
        }
        // Before the answers: a requester told of this flush asks again after seeing them.
        self.last_flush_failed
            .store(result.is_err(), Ordering::Release);
        self.requests_served
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for sender in batch {
            // A requester that gave up dropped its receiver; nothing to tell it.
            let _ = sender.send(result.clone());
        }
        result
    }

    async fn enqueue_when_room(self: &Arc<Self>) -> Result<FlushTicket, StorageError> {
        loop {
            let notified = self.room_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a wake-up between the look and the wait is kept.
            notified.as_mut().enable();
            let attempt = self.enqueue(&mut self.lock());
            if attempt.is_ok() {
                self.schedule();
            }
            match attempt {
                Err(StorageError::FlushQueueFull { .. }) => notified.await,
                other => return other,
            }
        }
    }

    fn run<S: LogStore>(&self, store: S) {
        loop {
            let batch = {
                let mut queue = self.lock();
                while queue.waiting.is_empty() && !queue.stopping {
                    queue = self
                        .work
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if queue.waiting.is_empty() {
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            // Its requests were told; the next flush tries again.
            drop(self.flush_for(batch, || store.flush()));
        }
    }
}

/// A spawned caller-site flush that has not run yet. If its runtime drops it unrun (the
/// runtime is shutting down), the next request spawns another, and the requests it would
/// have answered are told the committer stopped rather than left waiting.
struct DueFlush {
    shared: Arc<Shared>,
    ran: bool,
}

impl Drop for DueFlush {
    fn drop(&mut self) {
        if self.ran {
            return;
        }
        let orphans = {
            let mut queue = self.shared.lock();
            self.shared.caller_flush_due.store(false, Ordering::Release);
            std::mem::take(&mut queue.waiting)
        };
        drop(orphans);
    }
}

/// Stops and joins the flusher when the last [`GroupCommitter`] clone goes.
struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.work.notify_all();
        self.shared.room.notify_all();
        self.shared.room_async.notify_waiters();
        if let Some(thread) = self.thread.take() {
            // A panicking flush already failed its requests (their senders dropped).
            let _ = thread.join();
        }
    }
}

/// The group committer of one store. Cheap to clone; the thread stops when all clones drop.
#[derive(Clone)]
pub struct GroupCommitter {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("stats", &self.stats())
            .finish()
    }
}

impl GroupCommitter {
    /// Starts the flusher thread with [`GroupCommitConfig::default`].
    pub fn start<S: LogStore>(store: S) -> GroupCommitter {
        GroupCommitter::start_with(store, GroupCommitConfig::default())
    }

    pub fn start_with<S: LogStore>(store: S, config: GroupCommitConfig) -> GroupCommitter {
        GroupCommitter::start_observed(store, config, None)
    }

    /// [`GroupCommitter::start_with`], telling `observer` the duration of every flush.
    pub fn start_observed<S: LogStore>(
        store: S,
        config: GroupCommitConfig,
        observer: Option<FlushObserver>,
    ) -> GroupCommitter {
        assert!(
            config.flush_requests_max > 0,
            "flush_requests_max must be at least 1"
        );
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                stopping: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            room_async: Notify::new(),
            config,
            flushes: AtomicU64::new(0),
            flushes_failed: AtomicU64::new(0),
            requests_served: AtomicU64::new(0),
            observer,
            caller_flush: match config.site {
                FlushSite::Thread => None,
                FlushSite::Caller => {
                    let store = store.clone();
                    Some(Box::new(move || store.flush()))
                }
            },
            caller_flush_due: AtomicBool::new(false),
            last_flush_failed: AtomicBool::new(false),
            flushing: Mutex::new(()),
        });
        let thread = (config.site == FlushSite::Thread).then(|| {
            let flusher = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("cairn-group-commit".to_owned())
                .spawn(move || flusher.run(store))
                // No thread means no durability at all: an environment we cannot work with.
                .expect("cannot spawn the group-commit thread")
        });
        GroupCommitter {
            handle: Arc::new(Handle { shared, thread }),
        }
    }

    /// Queues a flush request now, or refuses with [`StorageError::FlushQueueFull`].
    pub fn try_request(&self) -> Result<FlushTicket, StorageError> {
        let shared = &self.handle.shared;
        let ticket = shared.enqueue(&mut shared.lock())?;
        shared.schedule();
        Ok(ticket)
    }

    /// Queues a flush request, waiting for room when the queue is full (backpressure), and
    /// resolves once a flush that started after the request completes. The request is queued
    /// at once when there is room, so appends made before this call are covered even if the
    /// future is polled later.
    pub fn request(&self) -> impl Future<Output = FlushResult> + Send + 'static {
        let eager = self.try_request();
        let committer = self.clone();
        async move {
            let ticket = match eager {
                Err(StorageError::FlushQueueFull { .. }) => {
                    committer.handle.shared.enqueue_when_room().await?
                }
                other => other?,
            };
            ticket.await
        }
    }

    /// [`GroupCommitter::request`] for plain threads: blocks for room, then for the flush.
    /// Must not be called from async code (it blocks the thread).
    pub fn request_blocking(&self) -> FlushResult {
        let shared = &self.handle.shared;
        let ticket = {
            let mut queue = shared.lock();
            loop {
                match shared.enqueue(&mut queue) {
                    Err(StorageError::FlushQueueFull { .. }) => {
                        queue = shared
                            .room
                            .wait(queue)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    other => break other?,
                }
            }
        };
        // With `FlushSite::Caller` a plain thread flushes for itself.
        shared.flush_caller_queue();
        ticket.wait_blocking()
    }

    pub fn stats(&self) -> GroupCommitStats {
        let shared = &self.handle.shared;
        GroupCommitStats {
            flushes: shared.flushes.load(Ordering::Relaxed),
            flushes_failed: shared.flushes_failed.load(Ordering::Relaxed),
            requests_served: shared.requests_served.load(Ordering::Relaxed),
        }
    }

    /// Requests waiting for the next flush.
    pub fn queued(&self) -> usize {
        self.handle.shared.lock().waiting.len()
    }
}

/// A queued flush request: resolves once a flush that started after it completes.
#[derive(Debug)]
#[must_use = "a ticket does nothing unless awaited"]
pub struct FlushTicket {
    receiver: oneshot::Receiver<FlushResult>,
}

impl FlushTicket {
    /// Blocks the thread until the flush completes. Not for async code.
    pub fn wait_blocking(self) -> FlushResult {
        self.receiver
            .blocking_recv()
            .unwrap_or_else(|_| Err(stopped()))
    }
}

impl Future for FlushTicket {
    type Output = FlushResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FlushResult> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|result| result.unwrap_or_else(|_| Err(stopped())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, PartitionLog};
    use cairn_protocol::batch::{Record, RecordBatchBuilder};
    use cairn_protocol::{Epoch, Offset};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// A store whose flush is slow, can be held at a gate, and can fail on demand.
    #[derive(Clone, Default)]
    struct TestStore {
        memory: MemoryStore,
        flush_delay_ms: u64,
        gate_closed: Arc<(Mutex<bool>, Condvar)>,
        failing: Arc<AtomicBool>,
        flushes_started: Arc<AtomicU64>,
        flush_threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    impl TestStore {
        fn set_gate(&self, closed: bool) {
            *self.gate_closed.0.lock().unwrap() = closed;
            self.gate_closed.1.notify_all();
        }

        fn wait_for_flushes_started(&self, count: u64) {
            for _ in 0..5_000 {
                if self.flushes_started.load(Ordering::SeqCst) >= count {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("flush {count} never started");
        }
    }

    impl LogStore for TestStore {
        type Log = crate::MemoryLog;

        fn open_log(&self, name: &str) -> Result<Self::Log, StorageError> {
            self.memory.open_log(name)
        }

        fn remove_log(&self, name: &str) -> Result<(), StorageError> {
            self.memory.remove_log(name)
        }

        fn log_names(&self) -> Result<Vec<String>, StorageError> {
            self.memory.log_names()
        }

        fn flush(&self) -> Result<(), StorageError> {
            self.flushes_started.fetch_add(1, Ordering::SeqCst);
            self.flush_threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            let (closed, opened) = &*self.gate_closed;
            let mut guard = closed.lock().unwrap();
            while *guard {
                guard = opened.wait(guard).unwrap();
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(self.flush_delay_ms));
            if self.failing.load(Ordering::SeqCst) {
                return Err(StorageError::Io("disk on fire".to_owned()));
            }
            self.memory.flush()
        }
    }

    fn batch() -> cairn_protocol::RecordBatch {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(&Record::new("v"));
        builder.build()
    }

    #[test]
    fn many_concurrent_requests_share_few_flushes() {
        let store = TestStore {
            flush_delay_ms: 5,
            ..TestStore::default()
        };
        let committer = GroupCommitter::start(store.clone());
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let committer = committer.clone();
                std::thread::spawn(move || committer.request_blocking())
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        let stats = committer.stats();
        assert_eq!(stats.requests_served, 100);
        assert!(
            stats.flushes <= 25,
            "100 requests took {} flushes: no grouping",
            stats.flushes
        );
        assert_eq!(stats.flushes, store.memory.flushes());
    }

    #[test]
    fn a_ticket_resolves_only_after_a_flush_that_started_after_it() {
        let store = TestStore::default();
        let committer = GroupCommitter::start(store.clone());
        let mut log = store.open_log("p").unwrap();
        // Hold a flush in flight, then append and ask: the running flush must not count.
        store.set_gate(true);
        let first = committer.try_request().unwrap();
        store.wait_for_flushes_started(1);
        log.append(&batch().stamped(Offset(0), Epoch(1))).unwrap();
        let second = committer.try_request().unwrap();
        store.set_gate(false);
        first.wait_blocking().unwrap();
        second.wait_blocking().unwrap();
        assert_eq!(committer.stats().flushes, 2);
        store.memory.crash();
        assert_eq!(
            log.log_end(),
            Offset(1),
            "the append was covered by the flush"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_refuses_or_waits_for_room() {
        let store = TestStore::default();
        let committer = GroupCommitter::start_with(
            store.clone(),
            GroupCommitConfig {
                flush_requests_max: 2,
                ..GroupCommitConfig::default()
            },
        );
        store.set_gate(true);
        let in_flight = committer.try_request().unwrap();
        store.wait_for_flushes_started(1);
        let queued = [
            committer.try_request().unwrap(),
            committer.try_request().unwrap(),
        ];
        assert_eq!(committer.queued(), 2);
        assert!(matches!(
            committer.try_request(),
            Err(StorageError::FlushQueueFull {
                flush_requests_max: 2
            })
        ));
        // The async request waits for room instead of failing or growing the queue.
        let mut waiting = Box::pin(committer.request());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err(),
            "resolved while its flush could not even start"
        );
        assert_eq!(committer.queued(), 2);
        store.set_gate(false);
        in_flight.await.unwrap();
        for ticket in queued {
            ticket.await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("waited for room forever")
            .unwrap();
        assert_eq!(committer.stats().requests_served, 4);
    }

    #[test]
    fn the_observer_is_told_every_flush_before_its_requests_are_answered() {
        let store = TestStore {
            flush_delay_ms: 2,
            ..TestStore::default()
        };
        let observed = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&observed);
        let committer = GroupCommitter::start_observed(
            store,
            GroupCommitConfig::default(),
            Some(Box::new(move |took| sink.lock().unwrap().push(took))),
        );
        committer.request_blocking().unwrap();
        committer.request_blocking().unwrap();
        let observed = observed.lock().unwrap().clone();
        assert_eq!(observed.len() as u64, committer.stats().flushes);
        assert_eq!(observed.len(), 2);
        assert!(observed
            .iter()
            .all(|took| *took >= std::time::Duration::from_millis(2)));
    }

    #[test]
    fn flush_errors_reach_every_waiting_request() {
        let store = TestStore::default();
        store.failing.store(true, Ordering::SeqCst);
        let committer = GroupCommitter::start(store.clone());
        let result = committer.request_blocking();
        assert_eq!(result, Err(StorageError::Io("disk on fire".to_owned())));
        assert_eq!(committer.stats().flushes_failed, 1);
        store.failing.store(false, Ordering::SeqCst);
        committer.request_blocking().unwrap();
    }

    #[test]
    fn dropping_the_committer_answers_queued_requests_and_stops_the_thread() {
        let store = TestStore {
            flush_delay_ms: 20,
            ..TestStore::default()
        };
        let committer = GroupCommitter::start(store.clone());
        let tickets: Vec<_> = (0..3).map(|_| committer.try_request().unwrap()).collect();
        let weak = Arc::downgrade(&committer.handle.shared);
        drop(committer);
        // Drop joined the thread, so its reference to the shared state is gone.
        assert_eq!(weak.strong_count(), 0);
        for ticket in tickets {
            ticket.wait_blocking().unwrap();
        }
    }

    fn on_the_caller() -> GroupCommitConfig {
        GroupCommitConfig {
            site: FlushSite::Caller,
            ..GroupCommitConfig::default()
        }
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn on_the_caller_one_flush_on_its_thread_answers_every_request_of_a_turn() {
        let store = TestStore::default();
        let committer = GroupCommitter::start_with(store.clone(), on_the_caller());
        assert!(committer.handle.thread.is_none(), "no thread of its own");
        let mut log = store.open_log("p").unwrap();
        let runtime = current_thread_runtime();
        runtime.block_on(async {
            let mut tickets = Vec::new();
            for offset in 0..50 {
                log.append(&batch().stamped(Offset(offset), Epoch(1)))
                    .unwrap();
                tickets.push(committer.request());
            }
            assert_eq!(
                store.flushes_started.load(Ordering::SeqCst),
                0,
                "flushed before the turn ended"
            );
            for ticket in tickets {
                ticket.await.unwrap();
            }
        });
        let stats = committer.stats();
        assert_eq!((stats.flushes, stats.requests_served), (1, 50));
        assert_eq!(
            *store.flush_threads.lock().unwrap(),
            vec![std::thread::current().id()]
        );
        store.memory.crash();
        assert_eq!(log.log_end(), Offset(50), "every append was covered");
        // The next turn's request gets a flush of its own.
        runtime
            .block_on(async { committer.request().await })
            .unwrap();
        assert_eq!(committer.stats().flushes, 2);
    }

    #[test]
    fn on_the_caller_an_error_reaches_the_requests_and_the_next_flush_runs_off_the_thread() {
        let store = TestStore::default();
        store.failing.store(true, Ordering::SeqCst);
        let committer = GroupCommitter::start_with(store.clone(), on_the_caller());
        let runtime = current_thread_runtime();
        let (first, second) = runtime.block_on(async {
            let first = committer.request();
            let second = committer.request();
            (first.await, second.await)
        });
        let fire = Err(StorageError::Io("disk on fire".to_owned()));
        assert_eq!((&first, &second), (&fire, &fire));
        assert_eq!(committer.stats().flushes_failed, 1);
        // After a failure the store may reopen, which takes long: not on the caller's thread.
        store.failing.store(false, Ordering::SeqCst);
        runtime
            .block_on(async { committer.request().await })
            .unwrap();
        let threads = store.flush_threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 2);
        assert_eq!(threads[0], std::thread::current().id());
        assert_ne!(threads[1], std::thread::current().id());
        // Healthy again: back on the caller.
        runtime
            .block_on(async { committer.request().await })
            .unwrap();
        assert_eq!(
            store.flush_threads.lock().unwrap()[2],
            std::thread::current().id()
        );
    }

    #[test]
    fn on_the_caller_outside_a_runtime_the_caller_flushes_at_once() {
        let store = TestStore::default();
        let committer = GroupCommitter::start_with(store.clone(), on_the_caller());
        committer.request_blocking().unwrap();
        let ticket = committer.try_request().unwrap();
        assert_eq!(committer.stats().flushes, 2, "flushed before returning");
        ticket.wait_blocking().unwrap();
    }

    #[test]
    fn on_the_caller_a_flush_its_runtime_dropped_unrun_fails_its_requests_not_later_ones() {
        let store = TestStore::default();
        let committer = GroupCommitter::start_with(store.clone(), on_the_caller());
        let runtime = current_thread_runtime();
        let orphan = {
            let _inside = runtime.enter();
            committer.try_request().unwrap()
        };
        drop(runtime);
        assert_eq!(orphan.wait_blocking(), Err(stopped()));
        assert_eq!(store.flushes_started.load(Ordering::SeqCst), 0);
        current_thread_runtime()
            .block_on(async { committer.request().await })
            .unwrap();
        assert_eq!(committer.stats().flushes, 1);
    }
}
