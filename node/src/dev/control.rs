//! `cairn dev stop|start|restart N`: one node of a running dev cluster, from another terminal.
//!
//! The running `cairn dev` owns its nodes (their processes, logs and ready lines), so it does
//! the work itself. It listens on a Unix socket in its data directory (`DIR/cairn-dev.sock`,
//! readable and writable by its owner only); `cairn dev stop 2` connects to it, sends one
//! line (`stop 2`), and prints the one-line answer: `ok ...`, `refused ...` (a node the cluster
//! does not have, or one already in the asked state: exit 2) or `failed ...` (exit 1).
//!
//! The socket also marks the directory as in use: a second `cairn dev` on the same directory
//! would start a second set of nodes on the same data and is refused while the first answers.

use clap::{Args, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Name of the control socket in a dev cluster's data directory.
pub const SOCKET_FILE: &str = "cairn-dev.sock";
/// Longest order line accepted (`restart 4294967295` and a newline fit many times over).
const ORDER_BYTES_MAX: u64 = 64;
/// How long the supervisor waits for a connected client's order line.
const ORDER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `cairn dev stop|start|restart` waits for the answer: above a stop (20 s) plus a
/// start (60 s by default) of one node.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

/// One node of a running `cairn dev` cluster, by its id.
#[derive(Debug, Args)]
pub struct NodeOrderArgs {
    /// The node's id (1 to the cluster's node count).
    pub node: u32,
    /// The running cluster's data directory (its `--data-dir`).
    #[arg(long, default_value = super::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// What `cairn dev` can do to one node of a cluster it runs.
#[derive(Debug, Subcommand)]
pub enum DevAction {
    /// Stop node N of the running dev cluster (SIGTERM: a graceful shutdown); the other nodes
    /// keep running, and `cairn dev start N` brings it back on the same data.
    Stop {
        #[command(flatten)]
        target: NodeOrderArgs,
        /// SIGKILL instead, as a crash would stop it.
        #[arg(long)]
        kill: bool,
    },
    /// Start node N of the running dev cluster again after `cairn dev stop N` (or a crash);
    /// answers once the node is ready.
    Start(NodeOrderArgs),
    /// Stop node N gracefully, then start it again; answers once it is ready.
    Restart(NodeOrderArgs),
}

/// An order for the supervisor, as it travels on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Stop { node_id: u32, kill: bool },
    Start { node_id: u32 },
    Restart { node_id: u32 },
}

impl Order {
    pub fn node_id(self) -> u32 {
        match self {
            Order::Stop { node_id, .. } | Order::Start { node_id } | Order::Restart { node_id } => {
                node_id
            }
        }
    }

    pub fn line(self) -> String {
        match self {
            Order::Stop {
                node_id,
                kill: false,
            } => format!("stop {node_id}\n"),
            Order::Stop {
                node_id,
                kill: true,
            } => format!("kill {node_id}\n"),
            Order::Start { node_id } => format!("start {node_id}\n"),
            Order::Restart { node_id } => format!("restart {node_id}\n"),
        }
    }

    fn parse(line: &str) -> Result<Order, String> {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(node), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("expected `VERB NODE`, got {line:?}"));
        };
        let node_id: u32 = node
            .parse()
            .map_err(|_| format!("{node:?} is not a node id"))?;
        match verb {
            "stop" => Ok(Order::Stop {
                node_id,
                kill: false,
            }),
            "kill" => Ok(Order::Stop {
                node_id,
                kill: true,
            }),
            "start" => Ok(Order::Start { node_id }),
            "restart" => Ok(Order::Restart { node_id }),
            other => Err(format!("unknown order {other:?}")),
        }
    }
}

/// How an order ended, as the supervisor answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; what was done.
    Done(String),
    /// Not done, and nothing changed: the order does not fit the cluster (exit 2).
    Refused(String),
    /// Tried and failed (exit 1).
    Failed(String),
}

impl Outcome {
    fn line(&self) -> String {
        let (word, text) = match self {
            Outcome::Done(text) => ("ok", text),
            Outcome::Refused(text) => ("refused", text),
            Outcome::Failed(text) => ("failed", text),
        };
        // One line on the wire, whatever the text holds.
        format!("{word} {}\n", text.replace('\n', " "))
    }

    fn parse(line: &str) -> Outcome {
        let line = line.trim_end();
        match line.split_once(' ') {
            Some(("ok", text)) => Outcome::Done(text.to_owned()),
            Some(("refused", text)) => Outcome::Refused(text.to_owned()),
            Some(("failed", text)) => Outcome::Failed(text.to_owned()),
            _ => Outcome::Failed(format!("unexpected answer {line:?}")),
        }
    }
}

/// The control socket of a supervisor; the socket file is removed when it is dropped.
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Listens on `DIR/cairn-dev.sock`. `Err(Refused)`: another `cairn dev` answers there.
    /// `Err(Failed)`: the socket cannot be made (the caller goes on without one).
    pub fn bind(data_dir: &Path) -> Result<Control, Outcome> {
        use std::os::unix::fs::PermissionsExt;
        let path = data_dir.join(SOCKET_FILE);
        if path.exists() {
            if StdUnixStream::connect(&path).is_ok() {
                return Err(Outcome::Refused(format!(
                    "another cairn dev is running on {} (it answers on {}); stop it first",
                    data_dir.display(),
                    path.display()
                )));
            }
            // Left by a `cairn dev` that was killed: nobody answers on it.
            std::fs::remove_file(&path).map_err(|error| {
                Outcome::Failed(format!("cannot remove {}: {error}", path.display()))
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|error| {
            Outcome::Failed(format!("cannot listen on {}: {error}", path.display()))
        })?;
        let control = Control { listener, path };
        std::fs::set_permissions(&control.path, std::fs::Permissions::from_mode(0o600)).map_err(
            |error| {
                Outcome::Failed(format!(
                    "cannot restrict {} to its owner: {error}",
                    control.path.display()
                ))
            },
        )?;
        Ok(control)
    }

    /// The next client (cancel-safe: nothing is lost when another event wins a `select!`).
    pub async fn accept(&self) -> Option<UnixStream> {
        match self.listener.accept().await {
            Ok((stream, _)) => Some(stream),
            Err(error) => {
                tracing::warn!(%error, "cairn dev: control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        }
    }
}

/// The client's order, read within [`ORDER_READ_TIMEOUT`]; a client that sends no valid
/// order is answered why (if it still listens) and dropped, and `None` is returned.
pub async fn read_order(stream: UnixStream) -> Option<(UnixStream, Order)> {
    {
        let mut reader = tokio::io::BufReader::new(stream).take(ORDER_BYTES_MAX);
        let mut line = String::new();
        let read = tokio::time::timeout(ORDER_READ_TIMEOUT, reader.read_line(&mut line)).await;
        let mut stream = reader.into_inner().into_inner();
        let parsed = match read {
            Ok(Ok(_)) if line.ends_with('\n') => Order::parse(&line),
            Ok(Ok(_)) => Err(format!(
                "an order is one line of at most {ORDER_BYTES_MAX} bytes"
            )),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no order within 2 s".to_owned()),
        };
        match parsed {
            Ok(order) => Some((stream, order)),
            Err(reason) => {
                answer(&mut stream, &Outcome::Refused(reason)).await;
                None
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes the answer; a client that went away meanwhile misses it, nothing else.
pub async fn answer(stream: &mut UnixStream, outcome: &Outcome) {
    let _ = stream.write_all(outcome.line().as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `cairn dev stop|start|restart N`: sends the order, prints the answer; the exit code.
pub fn run_action(action: DevAction) -> i32 {
    let (order, data_dir) = match action {
        DevAction::Stop { target, kill } => (
            Order::Stop {
                node_id: target.node,
                kill,
            },
            target.data_dir,
        ),
        DevAction::Start(target) => (
            Order::Start {
                node_id: target.node,
            },
            target.data_dir,
        ),
        DevAction::Restart(target) => (
            Order::Restart {
                node_id: target.node,
            },
            target.data_dir,
        ),
    };
    match send(&data_dir, order) {
        Outcome::Done(text) => {
            println!("cairn dev: {text}");
            0
        }
        Outcome::Refused(text) => {
            eprintln!("cairn dev: {text}");
            2
        }
        Outcome::Failed(text) => {
            eprintln!("cairn dev: {text}");
            1
        }
    }
}

fn send(data_dir: &Path, order: Order) -> Outcome {
    let path = data_dir.join(SOCKET_FILE);
    let mut stream = match StdUnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error) => {
            return Outcome::Failed(format!(
            "no cairn dev is running on {} ({}: {error}); start one with `cairn dev --data-dir {}`",
            data_dir.display(),
            path.display(),
            data_dir.display()
        ))
        }
    };
    let mut exchange = || -> std::io::Result<String> {
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.write_all(order.line().as_bytes())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line)
    };
    match exchange() {
        Ok(line) if line.is_empty() => {
            Outcome::Failed("cairn dev closed the connection without an answer".to_owned())
        }
        Ok(line) => Outcome::parse(&line),
        Err(error) => Outcome::Failed(format!("no answer from cairn dev: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_travel_as_one_line_and_come_back_equal() {
        for order in [
            Order::Stop {
                node_id: 2,
                kill: false,
            },
            Order::Stop {
                node_id: 3,
                kill: true,
            },
            Order::Start { node_id: 1 },
            Order::Restart { node_id: 7 },
        ] {
            let line = order.line();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(Order::parse(&line), Ok(order));
        }
    }

    #[test]
    fn malformed_orders_are_refused_with_a_reason() {
        for line in ["", "stop", "stop 2 3", "stop two", "stop -1", "reboot 2\n"] {
            assert!(Order::parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn outcomes_keep_their_kind_and_stay_on_one_line() {
        for outcome in [
            Outcome::Done("node 2 stopped".to_owned()),
            Outcome::Refused("no node 9".to_owned()),
            Outcome::Failed("first\nsecond".to_owned()),
        ] {
            let line = outcome.line();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            let back = Outcome::parse(&line);
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&outcome)
            );
        }
        assert!(matches!(Outcome::parse("garbage"), Outcome::Failed(_)));
    }

    #[tokio::test]
    async fn a_second_supervisor_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Control::bind(dir.path()).unwrap();
        assert!(matches!(
            Control::bind(dir.path()),
            Err(Outcome::Refused(_))
        ));
        drop(first);
        assert!(!dir.path().join(SOCKET_FILE).exists(), "removed on drop");
        // A socket file left by a killed supervisor answers nobody: it is replaced.
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET_FILE)).unwrap();
        drop(stale);
        assert!(Control::bind(dir.path()).is_ok());
    }

    #[tokio::test]
    async fn a_client_gets_the_supervisors_answer() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::bind(dir.path()).unwrap();
        let data_dir = dir.path().to_path_buf();
        let client = std::thread::spawn(move || send(&data_dir, Order::Restart { node_id: 2 }));
        let (mut stream, order) = loop {
            if let Some(stream) = control.accept().await {
                if let Some(next) = read_order(stream).await {
                    break next;
                }
            }
        };
        assert_eq!(order, Order::Restart { node_id: 2 });
        answer(&mut stream, &Outcome::Done("node 2 restarted".to_owned())).await;
        assert_eq!(
            client.join().unwrap(),
            Outcome::Done("node 2 restarted".to_owned())
        );
    }

    #[test]
    fn no_supervisor_is_a_failure_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        match send(dir.path(), Order::Start { node_id: 1 }) {
            Outcome::Failed(text) => assert!(text.contains("no cairn dev is running"), "{text}"),
            other => panic!("{other:?}"),
        }
    }
}
