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
//! The flush runs on its own OS thread because sled's flush blocks (an actix arbiter must not).
//! Dropping the last clone of the [`GroupCommitter`] stops the thread after it has answered
//! every request already queued.

use crate::{LogStore, StorageError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, Notify};

type FlushResult = Result<(), StorageError>;

/// A flush taking this long is logged.
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);

/// Limits of the group committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Requests that may wait for the next flush. One flush answers all of them, so this only
    /// bounds memory; it is large enough that a busy node rarely meets it.
    pub flush_requests_max: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            flush_requests_max: 16 * 1024,
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

    /// Queues a request if there is room; the caller holds the lock.
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
        if queue.waiting.len() == 1 {
            self.work.notify_one();
        }
        Ok(FlushTicket { receiver })
    }

    async fn enqueue_when_room(&self) -> Result<FlushTicket, StorageError> {
        loop {
            let notified = self.room_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a wake-up between the look and the wait is kept.
            notified.as_mut().enable();
            let attempt = self.enqueue(&mut self.lock());
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
            self.room.notify_all();
            self.room_async.notify_waiters();
            let started = std::time::Instant::now();
            let result = store.flush();
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
            self.requests_served
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for sender in batch {
                // A requester that gave up dropped its receiver; nothing to tell it.
                let _ = sender.send(result.clone());
            }
        }
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
        });
        let flusher = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cairn-group-commit".to_owned())
            .spawn(move || flusher.run(store))
            // No thread means no durability at all: an environment we cannot work with.
            .expect("cannot spawn the group-commit thread");
        GroupCommitter {
            handle: Arc::new(Handle {
                shared,
                thread: Some(thread),
            }),
        }
    }

    /// Queues a flush request now, or refuses with [`StorageError::FlushQueueFull`].
    pub fn try_request(&self) -> Result<FlushTicket, StorageError> {
        let shared = &self.handle.shared;
        shared.enqueue(&mut shared.lock())
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
}
