//! Logging never blocks or kills the node (issue 14): a node whose stderr is a pipe nobody
//! reads (it fills) or whose reader went away (EPIPE) still elects leaders for new partitions
//! and takes writes. Before the fix, a full stderr pipe blocked every thread that logged, the
//! partition actors' arbiters included, and new partitions never got a leader; and a closed
//! one made tracing-subscriber report the failed write with `eprintln!`, which panics on a
//! closed stderr, so every connection task that logged died (clients saw resets).

mod support;

use cairn_protocol::messages::{CreateTopicRequest, TopicConfig};
use cairn_protocol::{Request, Response};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{parse_ready_line, Wire};

/// Topics created (each logs its partitions' elections) and written to.
const TOPICS: u32 = 12;
const PARTITIONS: u32 = 4;

struct Node {
    child: Child,
    /// Held, never read: the pipe fills up. `None` once dropped (the reader went away).
    stderr: Option<ChildStderr>,
    address: std::net::SocketAddr,
    _data: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node that logs everything (`CAIRN_LOG=trace`) to a pipe, waits for its ready
/// line (bounded). With `fill`, the pipe is full before the node writes its first line: a
/// shell writes 64 KiB (a Linux pipe's capacity) of filler to it, then becomes the node.
fn start_node_logging_to_a_pipe(fill: bool) -> Node {
    let data = tempfile::tempdir().expect("a temporary directory");
    let filler = if fill {
        "head -c 65536 /dev/zero >&2; "
    } else {
        ""
    };
    let script = format!(
        "{filler}exec \"$0\" node --node-id 1 --listen 127.0.0.1:0 --preset test --data-dir \"$1\""
    );
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(support::cairn_binary())
        .arg(data.path().join("data"))
        .env("CAIRN_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready, ready_line) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = ready.send(line);
        }
    });
    let line = ready_line
        .recv_timeout(support::READY_TIMEOUT)
        .expect("the node prints its ready line although nobody reads its stderr");
    Node {
        stderr: child.stderr.take(),
        address: parse_ready_line(&line, 1),
        child,
        _data: data,
    }
}

/// Creates topics and writes one record to every partition; every step must succeed within
/// a bounded time (a wedged node answers nothing, and the wire read times out).
fn create_topics_and_produce(node: &mut Node, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut wire = Wire::connect(node.address);
    for topic in 0..TOPICS {
        let name = format!("{prefix}-{topic}");
        let created = wire.call(Request::CreateTopic(CreateTopicRequest {
            name: name.clone(),
            partitions: PARTITIONS,
            replication_factor: None,
            config: TopicConfig::default(),
        }));
        assert!(
            matches!(created, Ok(Response::CreateTopic(_))),
            "{name}: {created:?}"
        );
        for partition in 0..PARTITIONS {
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{name}/{partition} never took a write"
                );
                match wire.produce(&name, partition, &[b"logged"]) {
                    Ok(_) => break,
                    Err(error) if error.is_retriable() => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(error) => panic!("{name}/{partition}: {error:?}"),
                }
            }
        }
    }
    assert!(
        matches!(node.child.try_wait(), Ok(None)),
        "the node is still running"
    );
}

#[test]
fn a_node_whose_stderr_nobody_reads_still_elects_leaders_and_takes_writes() {
    let mut node = start_node_logging_to_a_pipe(true);
    assert!(node.stderr.is_some());
    create_topics_and_produce(&mut node, "full");
}

#[test]
fn a_node_whose_stderr_reader_went_away_still_elects_leaders_and_takes_writes() {
    let mut node = start_node_logging_to_a_pipe(false);
    drop(node.stderr.take());
    create_topics_and_produce(&mut node, "closed");
}
