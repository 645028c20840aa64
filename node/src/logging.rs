//! Logging that never blocks the node: every log line goes into a bounded queue that one
//! thread drains to stderr.
//!
//! A node's stderr is a pipe more often than a terminal, and a pipe whose reader stopped
//! reading fills up (64 KiB on Linux); a blocking write then stops whichever thread logged,
//! an arbiter running partition actors included, and new partitions never got a leader.
//! Here a thread that logs only formats the line and offers it to the queue: when the queue
//! is full (`LOG_LINES_QUEUED_MAX`), the line is dropped and counted, and the writer thread
//! reports the count once it can write again. A closed stderr (EPIPE: Rust ignores SIGPIPE,
//! so it is an error and not a signal) only makes the writer discard lines.
//!
//! [`LogFlusher::flush_within`] waits a bounded time for the queue to drain, for the last
//! lines before an exit or an abort; it never waits for a stderr that does not take them.
//!
//! [`install_panic_hook`] is the node's panic policy: log, then abort the process.
//!
//! Warnings a remote sender can trigger at will, one per packet, are rate limited
//! ([`WarningRateLimit`], one line per [`REPEATED_WARNING_INTERVAL`] and callsite, the rest
//! counted): refused peer handshakes ([`crate::peer_auth::RefusalLog`]), and everything
//! chitchat warns about ([`RepeatedWarnings`]), which logs a WARN for every gossip datagram it
//! cannot decode: 210,900 garbage datagrams wrote 10.9 MB of log before.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Log lines waiting for the writer thread at most; more are dropped (and counted).
pub const LOG_LINES_QUEUED_MAX: usize = 8_192;

/// How often a flush offers itself again to a full queue.
const FLUSH_RETRY_WAIT: Duration = Duration::from_millis(5);

/// What the writer thread receives: a formatted line, or a request to confirm that every line
/// queued before it was written.
enum Queued {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The sending side, shared by every thread that logs.
#[derive(Clone)]
pub struct NonBlockingStderr {
    queue: SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
}

/// Lines dropped since the start because the queue was full.
#[derive(Clone)]
pub struct DroppedLines(Arc<AtomicU64>);

impl DroppedLines {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Waits (bounded) for queued lines to reach stderr.
#[derive(Clone)]
pub struct LogFlusher {
    queue: SyncSender<Queued>,
}

impl LogFlusher {
    /// Returns true once every line queued before this call was written (or discarded by a
    /// closed stderr), false if that takes longer than `wait`.
    pub fn flush_within(&self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        let (done, written) = sync_channel(1);
        let mut request = Queued::Flush(done);
        // A full queue may drain: offer the request again until the deadline (std's bounded
        // channel has no send with a timeout).
        loop {
            match self.queue.try_send(request) {
                Ok(()) => break,
                Err(TrySendError::Full(returned)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    request = returned;
                    std::thread::sleep(FLUSH_RETRY_WAIT);
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        written
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

/// Starts the writer thread over `output` (stderr for the node; any writer in tests).
pub fn start<W: Write + Send + 'static>(
    output: W,
    queued_max: usize,
) -> std::io::Result<(NonBlockingStderr, LogFlusher, DroppedLines)> {
    let (queue, lines) = sync_channel(queued_max);
    let dropped = Arc::new(AtomicU64::new(0));
    let writer_dropped = Arc::clone(&dropped);
    std::thread::Builder::new()
        .name("cairn-log".to_string())
        .spawn(move || write_lines(output, lines, &writer_dropped))?;
    Ok((
        NonBlockingStderr {
            queue: queue.clone(),
            dropped: Arc::clone(&dropped),
        },
        LogFlusher { queue },
        DroppedLines(dropped),
    ))
}

/// The writer thread: writes lines in order until every sender is gone. After a drop it
/// first says how many lines were lost, so a reader can tell a gap from silence.
fn write_lines<W: Write>(mut output: W, lines: Receiver<Queued>, dropped: &AtomicU64) {
    let mut reported = 0u64;
    for queued in lines {
        match queued {
            Queued::Line(line) => {
                let now = dropped.load(Ordering::Relaxed);
                if now > reported {
                    let note = format!(
                        "cairn: {} log lines dropped (stderr did not keep up)\n",
                        now - reported
                    );
                    reported = now;
                    let _ = output.write_all(note.as_bytes());
                }
                // A closed or failing stderr: the line is lost, the node goes on.
                let _ = output.write_all(&line);
            }
            Queued::Flush(done) => {
                let _ = output.flush();
                let _ = done.try_send(());
            }
        }
    }
    let _ = output.flush();
}

impl NonBlockingStderr {
    /// Offers one formatted line to the queue; drops and counts it when the queue is full.
    fn offer(&self, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        match self.queue.try_send(Queued::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer thread is gone (it never exits while we hold a sender): nothing to do.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One event's text, offered to the queue when tracing is done writing it.
pub struct LogLine {
    target: NonBlockingStderr,
    buffer: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        self.target.offer(std::mem::take(&mut self.buffer));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlockingStderr {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            target: self.clone(),
            buffer: Vec::with_capacity(256),
        }
    }
}

/// Shortest time between two warnings from one rate-limited source; those in between are
/// only counted.
pub const REPEATED_WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// Lets one warning through per interval and counts the others, so a flood of the same
/// complaint costs a log line every few seconds instead of one per packet.
#[derive(Debug)]
pub struct WarningRateLimit {
    interval_ms: u64,
    started: Instant,
    /// Milliseconds since `started` of the last admitted warning, plus one (0: none yet).
    last_warn_ms: AtomicU64,
    /// Warnings not admitted since the last admitted one.
    suppressed: AtomicU64,
    suppressed_total: AtomicU64,
}

impl WarningRateLimit {
    pub fn new(interval: Duration) -> WarningRateLimit {
        WarningRateLimit {
            interval_ms: interval.as_millis() as u64,
            started: Instant::now(),
            last_warn_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// `Some(count not logged since the last one)` when this warning is to be logged, `None`
    /// when it is only counted.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64 + 1;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms >= last.saturating_add(self.interval_ms);
        // Of threads racing past the interval, one wins the exchange and logs.
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        self.suppressed_total.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Warnings not logged since the start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

/// Targets (module path prefixes) whose warnings a remote sender controls: chitchat warns
/// for every undecodable gossip datagram (`invalid-chitchat-payload`), every SYN naming
/// another cluster, every failed send, all of them one line per packet.
pub const FLOODABLE_TARGETS: &[&str] = &["chitchat"];

/// Counts of the warnings from [`FLOODABLE_TARGETS`], for a metrics endpoint.
#[derive(Debug, Default)]
pub struct FloodableWarnings {
    seen: AtomicU64,
    suppressed: AtomicU64,
}

impl FloodableWarnings {
    /// Warnings (WARN and ERROR) raised by those targets since the start, logged or not.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Of those, the ones not logged because one from the same callsite was logged less than
    /// [`REPEATED_WARNING_INTERVAL`] before.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// A tracing layer that rate limits the warnings of [`FLOODABLE_TARGETS`] per callsite (one
/// limiter per `warn!` in their code, so a flood of one kind does not hide another kind) and
/// counts them. Chitchat logs from inside its gossip loop, so this is the one place they can
/// be bounded without forking it. When a warning is logged after others were suppressed, a
/// note with their count goes first.
///
/// A flood that stops leaves its last count in [`FloodableWarnings`] only, until the next
/// warning of that callsite: the line that would report it is the one being limited.
pub struct RepeatedWarnings {
    interval: Duration,
    /// Where the notes go; `None` drops them (the counts remain).
    notes: Option<NonBlockingStderr>,
    /// One limiter per callsite: bounded by the number of `warn!`/`error!` statements in the
    /// floodable crates, not by anything a sender does.
    limits: Mutex<HashMap<Identifier, WarningRateLimit>>,
    counts: Arc<FloodableWarnings>,
}

impl RepeatedWarnings {
    pub fn new(interval: Duration, notes: Option<NonBlockingStderr>) -> RepeatedWarnings {
        RepeatedWarnings {
            interval,
            notes,
            limits: Mutex::new(HashMap::new()),
            counts: Arc::new(FloodableWarnings::default()),
        }
    }

    pub fn counts(&self) -> Arc<FloodableWarnings> {
        Arc::clone(&self.counts)
    }
}

fn is_floodable(target: &str) -> bool {
    FLOODABLE_TARGETS.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

impl<S: Subscriber> Layer<S> for RepeatedWarnings {
    fn event_enabled(&self, event: &Event<'_>, _context: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        // INFO, DEBUG and TRACE are "more" than WARN in tracing's order; they pass untouched.
        if *metadata.level() > Level::WARN || !is_floodable(metadata.target()) {
            return true;
        }
        self.counts.seen.fetch_add(1, Ordering::Relaxed);
        let admitted = self
            .limits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(metadata.callsite())
            .or_insert_with(|| WarningRateLimit::new(self.interval))
            .admit(Instant::now());
        match admitted {
            None => {
                self.counts.suppressed.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(0) => true,
            Some(suppressed) => {
                if let Some(notes) = &self.notes {
                    notes.offer(
                        format!(
                            "cairn: {suppressed} more warnings like the next line were not \
                             logged (target {}, at most one per {:?})\n",
                            metadata.target(),
                            self.interval
                        )
                        .into_bytes(),
                    );
                }
                true
            }
        }
    }
}

/// The counts of the node's [`RepeatedWarnings`] layer, once [`crate::cli`] installed it.
static FLOODABLE_WARNINGS: Mutex<Option<Arc<FloodableWarnings>>> = Mutex::new(None);

/// Remembers the node's counts for [`floodable_warnings`].
pub fn set_floodable_warnings(counts: Arc<FloodableWarnings>) {
    *FLOODABLE_WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(counts);
}

/// The node's counts of rate-limited warnings (gossip garbage, ...); `None` before logging
/// started.
pub fn floodable_warnings() -> Option<Arc<FloodableWarnings>> {
    FLOODABLE_WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// The count of the node's dropped log lines, once [`crate::cli`] started logging.
static DROPPED_LINES: Mutex<Option<DroppedLines>> = Mutex::new(None);

/// Remembers the node's dropped-line count for [`dropped_lines`].
pub fn set_dropped_lines(dropped: DroppedLines) {
    *DROPPED_LINES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(dropped);
}

/// Log lines the node dropped since the start because stderr did not take them (0 before
/// logging started).
pub fn dropped_lines() -> u64 {
    DROPPED_LINES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        .map_or(0, DroppedLines::count)
}

/// The node's logger, once [`crate::cli`] started it: the panic hook flushes through it.
static FLUSHER: Mutex<Option<LogFlusher>> = Mutex::new(None);

/// Remembers the flusher for [`flush_within`].
pub fn set_flusher(flusher: LogFlusher) {
    *FLUSHER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(flusher);
}

/// Flushes the node's logger, if started, waiting at most `wait`.
pub fn flush_within(wait: Duration) -> bool {
    let flusher = FLUSHER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    flusher.is_some_and(|flusher| flusher.flush_within(wait))
}

/// How long the panic hook waits for the log lines before it aborts the process.
const PANIC_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The node's panic policy (see the crate docs): a panic is a bug, and the process aborts.
/// This hook logs the panic (thread, location, message, backtrace) through tracing, waits a
/// bounded time for it to reach stderr, writes it to stderr directly if logging could not,
/// and aborts. It aborts itself, so debug builds (which unwind, for tests) follow the same
/// policy as release builds (`panic = "abort"` in the release profile): no partition actor,
/// connection task or arbiter dies alone while the node goes on advertising what it led.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed").to_string();
        let location = info
            .location()
            .map(|location| location.to_string())
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(%thread, %location, %message, "panic: a bug; the node aborts\n{backtrace}");
        if !flush_within(PANIC_FLUSH_WAIT) {
            // Logging is off, or stderr does not keep up: try stderr directly, from another
            // thread, so a stderr that blocks cannot keep the node from aborting.
            let text = format!(
                "cairn node: panic in thread '{thread}' at {location}: {message}; aborting\n"
            );
            let (done, written) = sync_channel(1);
            let _ = std::thread::Builder::new().spawn(move || {
                let _ = std::io::stderr().write_all(text.as_bytes());
                let _ = done.send(());
            });
            let _ = written.recv_timeout(PANIC_FLUSH_WAIT);
        }
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// A writer that blocks until the test lets it go, like a pipe nobody reads.
    struct Stuck {
        release: Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.release.recv();
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(make: &NonBlockingStderr, text: &str) {
        let mut writer = make.make_writer();
        writer.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_stuck_output_drops_lines_past_the_limit_and_reports_them_later() {
        let (release, released) = sync_channel(0);
        let written = Arc::new(Mutex::new(Vec::new()));
        let output = Stuck {
            release: released,
            written: Arc::clone(&written),
        };
        let (make, flusher, dropped) = start(output, 4).unwrap();
        // The writer takes the first line and blocks on it; four more fill the queue; the
        // rest are dropped without blocking this thread.
        for index in 0..20 {
            line(&make, &format!("line {index}\n"));
        }
        assert!(dropped.count() >= 15, "dropped {}", dropped.count());
        assert!(!flusher.flush_within(Duration::from_millis(50)));
        drop(release);
        assert!(flusher.flush_within(Duration::from_secs(10)));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.contains("line 0\n"), "{text}");
        assert!(text.contains("log lines dropped"), "{text}");
    }

    /// A writer whose reader went away (EPIPE).
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _bytes: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    /// An actor on an arbiter thread that fails an assertion when told to.
    struct Doomed;

    impl actix::Actor for Doomed {
        type Context = actix::Context<Self>;
    }

    struct Explode;

    impl actix::Message for Explode {
        type Result = ();
    }

    impl actix::Handler<Explode> for Doomed {
        type Result = ();

        fn handle(&mut self, _message: Explode, _ctx: &mut actix::Context<Self>) {
            let broken = true;
            assert!(!broken, "invariant TEST-1 broken inside an actor");
        }
    }

    const CHILD_ENV: &str = "CAIRN_PANIC_POLICY_CHILD";

    /// The panic policy, in a child process (this test binary run again): an assertion that
    /// fails inside one actor takes the whole process down with SIGABRT, after the panic was
    /// logged. Without the hook the actor alone died and the process ran on (exit 0 here).
    #[test]
    fn a_panicking_actor_aborts_the_process_after_logging_it() {
        if std::env::var_os(CHILD_ENV).is_some() {
            let (writer, flusher, _dropped) = start(std::io::stderr(), 64).unwrap();
            set_flusher(flusher);
            let _ = tracing_subscriber::fmt()
                .with_writer(writer)
                .with_ansi(false)
                .try_init();
            install_panic_hook();
            actix::System::new().block_on(async move {
                let arbiter = actix::Arbiter::new();
                let doomed = actix::Actor::start_in_arbiter(&arbiter.handle(), |_| Doomed);
                doomed.do_send(Explode);
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
            std::process::exit(0);
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "logging::tests::a_panicking_actor_aborts_the_process_after_logging_it",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(6),
            "the child was not aborted: {:?}\n{stderr}",
            output.status
        );
        assert!(stderr.contains("panic: a bug"), "{stderr}");
        assert!(stderr.contains("invariant TEST-1 broken"), "{stderr}");
    }

    /// A writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A flood of one chitchat warning (what chitchat logs per garbage gossip datagram) is
    /// one line per interval plus a note counting the rest; another chitchat warning and
    /// Cairn's own warnings are not held back by it.
    #[test]
    fn repeated_chitchat_warnings_are_rate_limited_per_callsite_and_counted() {
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Captured::default();
        let (writer, flusher, _dropped) = start(captured.clone(), 1_024).unwrap();
        let interval = Duration::from_millis(300);
        let layer = RepeatedWarnings::new(interval, Some(writer.clone()));
        let counts = layer.counts();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish()
            .with(layer);
        let flood = |count: usize| {
            for _ in 0..count {
                tracing::warn!(target: "chitchat::transport::udp", from = "127.0.0.1:9", "invalid-chitchat-payload");
            }
        };
        tracing::subscriber::with_default(subscriber, || {
            flood(1_000);
            tracing::warn!(target: "chitchat", "received SYN message addressed to a different cluster");
            for _ in 0..3 {
                tracing::warn!(target: "cairn_node::test", "our own warning");
            }
            tracing::info!(target: "chitchat", "an info line");
            std::thread::sleep(interval + Duration::from_millis(50));
            flood(10);
        });
        assert!(flusher.flush_within(Duration::from_secs(10)));
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines = |needle: &str| text.lines().filter(|line| line.contains(needle)).count();
        assert_eq!(lines("invalid-chitchat-payload"), 2, "{text}");
        assert_eq!(lines("999 more warnings like the next line"), 1, "{text}");
        assert_eq!(lines("different cluster"), 1, "{text}");
        assert_eq!(lines("our own warning"), 3, "{text}");
        assert_eq!(lines("an info line"), 1, "{text}");
        assert_eq!(counts.seen(), 1_011);
        assert_eq!(counts.suppressed(), 1_011 - 3);
        assert!(is_floodable("chitchat") && is_floodable("chitchat::server"));
        assert!(!is_floodable("chitchatter") && !is_floodable("cairn_node::chitchat"));
    }

    #[test]
    fn a_closed_output_discards_lines_and_keeps_going() {
        let (make, flusher, _dropped) = start(Closed, 4).unwrap();
        for index in 0..100 {
            line(&make, &format!("line {index}\n"));
            assert!(flusher.flush_within(Duration::from_secs(10)));
        }
    }
}
