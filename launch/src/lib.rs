//! The node-start contract, written once: "start `cairn node`, wait for its ready line".
//!
//! A node prints one line on stdout once it serves (metadata recovered, listeners bound):
//!
//! ```text
//! cairn node ready node_id=1 listen=127.0.0.1:9092 http=127.0.0.1:9644 kafka=127.0.0.1:19092
//! ```
//!
//! `http=none` when the node has no HTTP listener, `kafka=off` when its Kafka listener is off;
//! the addresses are the bound ones (port 0 resolved). [`ReadyLine`] prints it (the node uses
//! its `Display`) and parses it ([`ReadyLine::parse`]), so the two cannot drift apart.
//!
//! [`Launch`] starts `cairn node ARGS` with stdout piped and its stderr (the logs) appended to
//! a log file; a thread drains stdout for the life of the process (a node never blocks on a
//! full pipe) and hands over its ready line. [`Launched::wait_ready`] waits for that line, the
//! child's exit, or a deadline, whichever comes first, and says which ([`LaunchError`]),
//! naming the log. Used by `cairn dev` (the format only: it reads stdout asynchronously), the
//! benches, the chaos campaign and the node's integration tests.
//!
//! [`ports`] picks the loopback ports a cluster's nodes are started on, before they start.
//!
//! Standard library only: no async runtime, so any of those can use it.

use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod ports;

/// The `threads` setting (`--set threads=N`) for each of `nodes` nodes that share this
/// machine: its cores split evenly, at least one each. A node's default is a network worker
/// and a partition arbiter per core; three such nodes on two cores run twelve busy threads,
/// and their context switches cost more than the work (benches/results/threads-2026-12-05.md).
/// `None` when one node has the machine to itself (its default is right).
pub fn colocated_threads(nodes: usize) -> Option<usize> {
    if nodes <= 1 {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    Some((cores / nodes).max(1))
}

/// What every ready line starts with.
pub const READY_PREFIX: &str = "cairn node ready ";

/// The longest stdout line read at once; a longer one is read in pieces (none of which is
/// taken for a ready line unless it starts with [`READY_PREFIX`] and parses).
const LINE_BYTES_MAX: u64 = 4096;

/// How often [`Launched::wait_ready`] checks whether the child has exited.
const POLL: Duration = Duration::from_millis(50);

/// What a node's ready line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLine {
    pub node_id: u32,
    /// The bound client (Cairn protocol) address.
    pub listen: SocketAddr,
    /// The bound HTTP address (`/metrics`, `/health`, `/ready`); `None` without one.
    pub http: Option<SocketAddr>,
    /// The bound Kafka listener address; `None` when it is off.
    pub kafka: Option<SocketAddr>,
}

/// Why a line is not a well-formed ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyLineError {
    /// The line does not start with [`READY_PREFIX`].
    NotReadyLine,
    /// A field the line must carry is absent.
    Missing(&'static str),
    /// A field appears twice.
    Duplicate(&'static str),
    /// A field's value does not parse.
    Invalid { field: &'static str, value: String },
    /// A `key=value` field this version does not know, or a word without `=`.
    Unknown(String),
}

impl fmt::Display for ReadyLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyLineError::NotReadyLine => write!(f, "not a ready line (no {READY_PREFIX:?})"),
            ReadyLineError::Missing(field) => write!(f, "the ready line has no {field}= field"),
            ReadyLineError::Duplicate(field) => {
                write!(f, "the ready line has the {field}= field twice")
            }
            ReadyLineError::Invalid { field, value } => {
                write!(f, "the ready line's {field}= field is not valid: {value:?}")
            }
            ReadyLineError::Unknown(word) => {
                write!(f, "the ready line has an unknown field {word:?}")
            }
        }
    }
}

impl std::error::Error for ReadyLineError {}

/// The ready line's spelling of "no HTTP listener".
const HTTP_NONE: &str = "none";
/// The ready line's spelling of "Kafka listener off".
const KAFKA_OFF: &str = "off";

impl fmt::Display for ReadyLine {
    /// The ready line as the node prints it, without the line break.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{READY_PREFIX}node_id={} listen={} http=",
            self.node_id, self.listen
        )?;
        match self.http {
            Some(http) => write!(f, "{http}")?,
            None => f.write_str(HTTP_NONE)?,
        }
        f.write_str(" kafka=")?;
        match self.kafka {
            Some(kafka) => write!(f, "{kafka}"),
            None => f.write_str(KAFKA_OFF),
        }
    }
}

impl ReadyLine {
    /// Whether `line` claims to be a ready line (starts with [`READY_PREFIX`]); it may still
    /// fail to [parse](ReadyLine::parse).
    pub fn is_ready_line(line: &str) -> bool {
        line.starts_with(READY_PREFIX)
    }

    /// Parses a line as [`ReadyLine`]'s `Display` writes it (a trailing line break is
    /// ignored). Every field must appear exactly once, in any order; nothing else may.
    pub fn parse(line: &str) -> Result<ReadyLine, ReadyLineError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let rest = line
            .strip_prefix(READY_PREFIX)
            .ok_or(ReadyLineError::NotReadyLine)?;
        let mut node_id = None;
        let mut listen = None;
        let mut http = None;
        let mut kafka = None;
        for word in rest.split(' ').filter(|word| !word.is_empty()) {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| ReadyLineError::Unknown(word.to_owned()))?;
            match key {
                "node_id" => set(&mut node_id, "node_id", value.parse().ok(), value)?,
                "listen" => set(&mut listen, "listen", value.parse().ok(), value)?,
                "http" => {
                    let parsed = if value == HTTP_NONE {
                        Some(None)
                    } else {
                        value.parse().ok().map(Some)
                    };
                    set(&mut http, "http", parsed, value)?
                }
                "kafka" => {
                    let parsed = if value == KAFKA_OFF {
                        Some(None)
                    } else {
                        value.parse().ok().map(Some)
                    };
                    set(&mut kafka, "kafka", parsed, value)?
                }
                _ => return Err(ReadyLineError::Unknown(word.to_owned())),
            }
        }
        Ok(ReadyLine {
            node_id: node_id.ok_or(ReadyLineError::Missing("node_id"))?,
            listen: listen.ok_or(ReadyLineError::Missing("listen"))?,
            http: http.ok_or(ReadyLineError::Missing("http"))?,
            kafka: kafka.ok_or(ReadyLineError::Missing("kafka"))?,
        })
    }
}

/// Stores a field's parsed value, refusing a second one and one that did not parse.
fn set<T>(
    slot: &mut Option<T>,
    field: &'static str,
    parsed: Option<T>,
    value: &str,
) -> Result<(), ReadyLineError> {
    if slot.is_some() {
        return Err(ReadyLineError::Duplicate(field));
    }
    let parsed = parsed.ok_or_else(|| ReadyLineError::Invalid {
        field,
        value: value.to_owned(),
    })?;
    *slot = Some(parsed);
    Ok(())
}

/// Why a node did not become ready.
#[derive(Debug)]
pub enum LaunchError {
    /// The log file could not be opened.
    Log { log: PathBuf, error: std::io::Error },
    /// The binary could not be started.
    Spawn {
        binary: PathBuf,
        error: std::io::Error,
    },
    /// The process exited before it printed its ready line.
    Exited { status: ExitStatus, log: PathBuf },
    /// No ready line within the deadline; the process still runs (the caller decides whether
    /// to kill it).
    Timeout { waited: Duration, log: PathBuf },
    /// The process printed a ready line this version cannot read (another build's binary?).
    BadReadyLine {
        line: String,
        error: ReadyLineError,
        log: PathBuf,
    },
    /// Whether the process runs could not be checked.
    Wait { error: std::io::Error, log: PathBuf },
}

impl LaunchError {
    /// The log file the error names, if any.
    pub fn log(&self) -> Option<&Path> {
        match self {
            LaunchError::Log { log, .. }
            | LaunchError::Exited { log, .. }
            | LaunchError::Timeout { log, .. }
            | LaunchError::BadReadyLine { log, .. }
            | LaunchError::Wait { log, .. } => Some(log),
            LaunchError::Spawn { .. } => None,
        }
    }
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Log { log, error } => write!(f, "cannot open {}: {error}", log.display()),
            LaunchError::Spawn { binary, error } => {
                write!(f, "cannot start {}: {error}", binary.display())
            }
            LaunchError::Exited { status, log } => write!(
                f,
                "the node exited before it was ready ({status}); its log: {}",
                log.display()
            ),
            LaunchError::Timeout { waited, log } => write!(
                f,
                "the node was not ready within {waited:?}; its log: {}",
                log.display()
            ),
            LaunchError::BadReadyLine { line, error, log } => write!(
                f,
                "the node printed a ready line that does not parse ({error}): {line:?}; its log: {}",
                log.display()
            ),
            LaunchError::Wait { error, log } => write!(
                f,
                "cannot check whether the node runs: {error}; its log: {}",
                log.display()
            ),
        }
    }
}

impl std::error::Error for LaunchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LaunchError::Log { error, .. }
            | LaunchError::Spawn { error, .. }
            | LaunchError::Wait { error, .. } => Some(error),
            LaunchError::BadReadyLine { error, .. } => Some(error),
            LaunchError::Exited { .. } | LaunchError::Timeout { .. } => None,
        }
    }
}

/// How to start one `cairn node` process: `BINARY node ARGS`, stdin closed, stdout piped and
/// drained, stderr appended to the log file (or inherited).
#[derive(Debug)]
pub struct Launch {
    command: Command,
    binary: PathBuf,
    log: PathBuf,
    inherit_stderr: bool,
}

impl Launch {
    /// `binary node`, logging to `log` (created if missing, appended to: a restarted node's
    /// runs share one log).
    pub fn node(binary: impl AsRef<Path>, log: impl Into<PathBuf>) -> Launch {
        Launch::program(binary, log).arg("node")
    }

    /// `binary` with no subcommand: for a wrapper (a shell, a debugger) that runs the node.
    pub fn program(binary: impl AsRef<Path>, log: impl Into<PathBuf>) -> Launch {
        let binary = binary.as_ref().to_path_buf();
        Launch {
            command: Command::new(&binary),
            binary,
            log: log.into(),
            inherit_stderr: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.command.env(key, value);
        self
    }

    /// Lets the node's stderr (its logs) go to this process's stderr instead of the log file.
    pub fn inherit_stderr(mut self, inherit: bool) -> Launch {
        self.inherit_stderr = inherit;
        self
    }

    /// Starts the process without waiting for its ready line (a cluster's nodes become ready
    /// only once a majority of them runs, so they are all started before any is waited for).
    pub fn spawn(self) -> Result<Launched, LaunchError> {
        let Launch {
            mut command,
            binary,
            log,
            inherit_stderr,
        } = self;
        let stderr = if inherit_stderr {
            Stdio::inherit()
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|error| LaunchError::Log {
                    log: log.clone(),
                    error,
                })?;
            Stdio::from(file)
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|error| LaunchError::Spawn { binary, error })?;
        let (sender, ready) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || drain(stdout, sender));
        }
        Ok(Launched {
            child,
            ready,
            ready_line: None,
            log,
        })
    }

    /// [`Launch::spawn`] and [`Launched::wait_ready`]; on any error the process (if it
    /// started) is killed and reaped.
    pub fn start(self, timeout: Duration) -> Result<(Launched, ReadyLine), LaunchError> {
        let mut launched = self.spawn()?;
        match launched.wait_ready(timeout) {
            Ok(ready) => Ok((launched, ready)),
            Err(error) => {
                launched.kill();
                Err(error)
            }
        }
    }
}

/// Reads the child's stdout until it closes, sending every line that starts with
/// [`READY_PREFIX`] (parsed) to the waiter; the rest is discarded. Lines are read at most
/// [`LINE_BYTES_MAX`] bytes at a time, so no buffer grows with what the child writes.
fn drain(stdout: impl Read, sender: mpsc::Sender<(String, Result<ReadyLine, ReadyLineError>)>) {
    let mut reader = BufReader::new(stdout);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match (&mut reader)
            .take(LINE_BYTES_MAX)
            .read_until(b'\n', &mut buffer)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !buffer.starts_with(READY_PREFIX.as_bytes()) {
            continue;
        }
        let line = String::from_utf8_lossy(&buffer)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        let parsed = ReadyLine::parse(&line);
        // The waiter may be gone (it gave up, or took the line already); keep draining.
        let _ = sender.send((line, parsed));
    }
}

/// A started `cairn node` process whose stdout is being drained.
///
/// Dropping it does not stop the process: callers own its lifetime ([`Launched::kill`],
/// [`Launched::child`] for signals and waits).
#[derive(Debug)]
pub struct Launched {
    child: Child,
    ready: mpsc::Receiver<(String, Result<ReadyLine, ReadyLineError>)>,
    /// The first ready line, once [`Launched::wait_ready`] has seen it.
    ready_line: Option<ReadyLine>,
    log: PathBuf,
}

impl Launched {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process, for signals and waits.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The log file its stderr goes to (unless inherited).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// SIGKILL, and reap the process (a stopped process dies all the same).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits at most `timeout` for the process's ready line. Errors: it exited first
    /// ([`LaunchError::Exited`]), the time ran out ([`LaunchError::Timeout`]; the process
    /// keeps running), or its ready line does not parse. Once it has returned a ready line it
    /// returns the same one at once.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<ReadyLine, LaunchError> {
        if let Some(ready) = self.ready_line {
            return Ok(ready);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ready.recv_timeout(left.min(POLL)) {
                Ok(received) => return self.take(received),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Stdout closed: the process is exiting; its status follows shortly.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(left.min(POLL)),
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // A line sent just before the exit still counts: the node was ready.
                    if let Ok(received) = self.ready.try_recv() {
                        return self.take(received);
                    }
                    return Err(LaunchError::Exited {
                        status,
                        log: self.log.clone(),
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(LaunchError::Wait {
                        error,
                        log: self.log.clone(),
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::Timeout {
                    waited: timeout,
                    log: self.log.clone(),
                });
            }
        }
    }

    fn take(
        &mut self,
        (line, parsed): (String, Result<ReadyLine, ReadyLineError>),
    ) -> Result<ReadyLine, LaunchError> {
        match parsed {
            Ok(ready) => {
                self.ready_line = Some(ready);
                Ok(ready)
            }
            Err(error) => Err(LaunchError::BadReadyLine {
                line,
                error,
                log: self.log.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
