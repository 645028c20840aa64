//! kcat (Debian's `kcat`, on librdkafka) against real nodes, unchanged: `-L` lists brokers,
//! topics and leaders; `-P` writes keyed records with headers; `-C` reads them back from the
//! beginning, from the end, and from a timestamp (`-o s@MS`). On one node and on a 3-node
//! cluster. Compressed batches (`-z gzip|snappy|lz4|zstd`) are stored as sent and read back by
//! kcat and `cairn consume`. kcat must be installed (`apt-get install kcat`; CI's .ci/run installs it): without
//! it these tests fail and say so.

mod support;

use cairn_protocol::batch::split_batches;
use cairn_protocol::{Compression, Offset};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::kafka::KafkaWire;
use support::{cairn_binary, TestNode};

/// How long one kcat run may take before the test fails (librdkafka retries by itself while
/// a new topic's leaders are elected).
const KCAT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a condition polled below may take to hold before the test fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

fn kcat_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KCAT") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kcat"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "kcat is not installed: these tests drive the real kcat binary \
             (Debian: apt-get install kcat; CI's .ci/run installs it), or set KCAT=/path/to/kcat"
        )
    })
}

/// Runs kcat with `args` (and `input` on stdin), bounded by [`KCAT_TIMEOUT`].
fn kcat(args: &[&str], input: &str) -> Output {
    let mut child = support::foreign_client(kcat_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A kcat that exits before reading its input (it failed) closes the pipe: its exit status
    // and stderr, asserted below, say why; the write's own error would hide that.
    if let Err(error) = stdin.write_all(input.as_bytes()) {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write kcat's input: {error}"
        );
    }
    drop(stdin);
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if finished.recv_timeout(KCAT_TIMEOUT).is_err() {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("kcat {args:?} did not finish within {KCAT_TIMEOUT:?}");
    }
    let output = waiter.join().expect("the waiter").expect("kcat ran");
    assert!(
        output.status.success(),
        "kcat {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_lines(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn create_topic(node: &TestNode, topic: &str, partitions: u32) {
    let status = Command::new(cairn_binary())
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--bootstrap", &node.address().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("the cairn CLI runs");
    assert!(status.success(), "topic create {topic}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Polls `check` until it returns true, failing the test after [`SETTLE_TIMEOUT`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "{what}: not within {SETTLE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `lines` (`key:value`) with two headers, then reads the whole topic back.
fn round_trip(produce_to: SocketAddr, consume_from: SocketAddr, topic: &str, lines: &[String]) {
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let broker = produce_to.to_string();
    kcat(
        &[
            "-b",
            &broker,
            "-P",
            "-t",
            topic,
            "-K:",
            "-H",
            "source=kcat",
            "-H",
            "n=1",
        ],
        &input,
    );
    let broker = consume_from.to_string();
    let read = kcat(
        &[
            "-b",
            &broker,
            "-C",
            "-t",
            topic,
            "-e",
            "-o",
            "beginning",
            "-f",
            "%k %s %h\n",
        ],
        "",
    );
    let mut expected: Vec<String> = lines
        .iter()
        .map(|line| {
            let (key, value) = line.split_once(':').unwrap();
            format!("{key} {value} source=kcat,n=1")
        })
        .collect();
    expected.sort();
    assert_eq!(stdout_lines(&read), expected);
}

#[test]
fn kcat_lists_writes_and_reads_a_lone_node() {
    let node = TestNode::start();
    let broker = node.kafka_address().to_string();
    create_topic(&node, "orders", 3);

    let listed = String::from_utf8_lossy(&kcat(&["-b", &broker, "-L"], "").stdout).into_owned();
    assert!(listed.contains(" 1 brokers:"), "{listed}");
    assert!(
        listed.contains(&format!("broker 1 at {broker}")),
        "{listed}"
    );
    assert!(
        listed.contains("topic \"orders\" with 3 partitions:"),
        "{listed}"
    );
    for partition in 0..3 {
        assert!(
            listed.contains(&format!(
                "partition {partition}, leader 1, replicas: 1, isrs: 1"
            )),
            "{listed}"
        );
    }

    let first: Vec<String> = (0..20)
        .map(|n| format!("customer-{}:order-{n}", n % 7))
        .collect();
    round_trip(node.kafka_address(), node.kafka_address(), "orders", &first);

    // From the end: nothing until something new is written.
    let from_end = kcat(
        &["-b", &broker, "-C", "-t", "orders", "-e", "-o", "end"],
        "",
    );
    assert!(stdout_lines(&from_end).is_empty());

    // From a timestamp: only what was written at or after it.
    let since = now_ms() + 1;
    while now_ms() <= since {
        std::thread::sleep(Duration::from_millis(1));
    }
    kcat(
        &["-b", &broker, "-P", "-t", "orders", "-K:"],
        "late-1:after\nlate-2:after\n",
    );
    let after = kcat(
        &[
            "-b",
            &broker,
            "-C",
            "-t",
            "orders",
            "-e",
            "-o",
            &format!("s@{since}"),
            "-f",
            "%k %s\n",
        ],
        "",
    );
    assert_eq!(stdout_lines(&after), ["late-1 after", "late-2 after"]);
    // And the Cairn CLI reads what kcat wrote: one log, two protocols.
    let cairn = Command::new(cairn_binary())
        .args([
            "consume",
            "orders",
            "--from-beginning",
            "--max-messages",
            "22",
        ])
        .args([
            "--format",
            "%k %v",
            "--bootstrap",
            &node.address().to_string(),
        ])
        .output()
        .expect("the cairn CLI runs");
    assert!(cairn.status.success());
    assert_eq!(String::from_utf8_lossy(&cairn.stdout).lines().count(), 22);
}

/// kcat writes keyed records and a tombstone (`-Z`: an empty value is null) to a compacted
/// topic; once compacted, kcat reads it from the beginning across the gaps compaction left
/// (the newest record per key, the tombstone as NULL, offsets as written), and so does
/// `cairn consume`.
#[test]
fn kcat_reads_a_compacted_topic_across_its_gaps() {
    let node = TestNode::start();
    let broker = node.kafka_address().to_string();
    let bootstrap = node.address().to_string();
    let created = Command::new(cairn_binary())
        .args([
            "topic",
            "create",
            "table",
            "-p",
            "1",
            "--bootstrap",
            &bootstrap,
        ])
        .args(["--config", "cleanup.policy=compact"])
        .args(["--config", "min.compaction.lag.ms=0"])
        .args(["--config", "segment.bytes=1"])
        .output()
        .expect("the cairn CLI runs");
    assert!(created.status.success(), "{created:?}");
    let produced = kcat(
        &["-b", &broker, "-P", "-t", "table", "-K:", "-Z"],
        "a:1\nb:1\na:2\nb:\nc:1\na:3\n",
    );
    assert!(produced.status.success(), "{produced:?}");
    // Offset 0 is the leader's epoch marker; `stdout_lines` sorts kcat's lines.
    let expected = ["a=3@6", "b=NULL@4", "c=1@5"];
    let mut last = Vec::new();
    let compacted = support::eventually(SETTLE_TIMEOUT, || {
        let read = kcat(
            &[
                "-b",
                &broker,
                "-C",
                "-t",
                "table",
                "-e",
                "-o",
                "beginning",
                "-Z",
                "-f",
                "%k=%s@%o\n",
            ],
            "",
        );
        last = stdout_lines(&read);
        last == expected
    });
    assert!(compacted, "kcat read {last:?}");
    let cairn = Command::new(cairn_binary())
        .args([
            "consume",
            "table",
            "--from-beginning",
            "--max-messages",
            "3",
        ])
        .args(["--format", "%k=%s@%o", "--bootstrap", &bootstrap])
        .output()
        .expect("the cairn CLI runs");
    assert!(cairn.status.success(), "{cairn:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&cairn.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines, ["b=NULL@4", "c=1@5", "a=3@6"]);
}

fn topic_id(address: SocketAddr, topic: &str) -> uuid::Uuid {
    let mut wire = KafkaWire::connect(address);
    let request =
        MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
    let response: MetadataResponse = wire.call(ApiKey::Metadata, 12, &request);
    assert_eq!(response.topics[0].error_code, 0);
    response.topics[0].topic_id
}

#[test]
fn kcat_sees_every_broker_of_a_cluster_and_reads_through_any_of_them() {
    let cluster = TestCluster::start(3, &[]);
    let kafka: Vec<SocketAddr> = cluster.nodes.iter().map(TestNode::kafka_address).collect();
    create_topic(&cluster.nodes[0], "payments", 3);
    let broker = kafka[1].to_string();
    // Gossip brings every node's Kafka address, and elections a leader for every partition.
    eventually("3 brokers and 3 led partitions in kcat -L", || {
        let listed =
            String::from_utf8_lossy(&kcat(&["-b", &broker, "-L", "-t", "payments"], "").stdout)
                .into_owned();
        kafka
            .iter()
            .enumerate()
            .all(|(index, address)| listed.contains(&format!("broker {} at {address}", index + 1)))
            && listed.contains("topic \"payments\" with 3 partitions:")
            && !listed.contains("leader -1")
    });
    // One topic id, whichever node is asked.
    let ids: Vec<uuid::Uuid> = kafka
        .iter()
        .map(|address| topic_id(*address, "payments"))
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0] && !id.is_nil()),
        "{ids:?}"
    );

    let lines: Vec<String> = (0..30)
        .map(|n| format!("account-{}:payment-{n}", n % 5))
        .collect();
    round_trip(kafka[0], kafka[2], "payments", &lines);
}

/// The codecs of the batches stored in `topic`'s partition `partition`, read over Cairn's own
/// protocol (so a test knows the records really were compressed, not sent plain).
fn stored_codecs(node: &TestNode, topic: &str, partition: u32) -> Vec<Compression> {
    let mut wire = node.wire();
    let fetched = wire.fetch(topic, partition, Offset(0), 0).unwrap();
    split_batches(&fetched.batches)
        .map(|batch| batch.expect("a stored batch validates"))
        .filter(|batch| !batch.header().is_control())
        .map(|batch| batch.compression().expect("a known codec"))
        .collect()
}

/// Everything in `topic`, read by `cairn consume` to the end (`-e`), as `key value` lines.
fn cairn_consume(node: &TestNode, topic: &str) -> Vec<String> {
    let output = Command::new(cairn_binary())
        .args(["consume", topic, "--from-beginning", "-e"])
        .args([
            "--format",
            "%k %v",
            "--bootstrap",
            &node.address().to_string(),
        ])
        .output()
        .expect("the cairn CLI runs");
    assert!(
        output.status.success(),
        "cairn consume {topic}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout_lines(&output)
}

/// librdkafka's version, from `kcat -V` ("... librdkafka 2.0.2 builtin.features=...").
fn librdkafka_version() -> (u32, u32) {
    let output = support::foreign_client(kcat_binary())
        .arg("-V")
        .output()
        .expect("kcat -V runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let version = text
        .split("librdkafka ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no librdkafka version in kcat -V: {text}"));
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Writes `input` (`key:value` lines) to a new one-partition topic with `produce`, checks the
/// codecs its batches were stored with (`stored_as` says which are right), and reads it back
/// with kcat and `cairn consume`.
fn compressed_round_trip(
    node: &TestNode,
    topic: &str,
    produce: impl FnOnce(&str),
    stored_as: impl Fn(Compression) -> bool,
    expected: &[String],
) {
    create_topic(node, topic, 1);
    produce(topic);
    let codecs = stored_codecs(node, topic, 0);
    assert!(!codecs.is_empty(), "{topic}: nothing stored");
    assert!(
        codecs.iter().all(|codec| stored_as(*codec)),
        "{topic}: stored as {codecs:?}"
    );
    let broker = node.kafka_address().to_string();
    let read = kcat(
        &[
            "-b",
            &broker,
            "-C",
            "-t",
            topic,
            "-e",
            "-o",
            "beginning",
            "-f",
            "%k %s\n",
        ],
        "",
    );
    assert_eq!(stdout_lines(&read), expected, "kcat reads {topic}");
    assert_eq!(
        cairn_consume(node, topic),
        expected,
        "cairn consume reads {topic}"
    );
}

/// Issue 16, compression: batches of each codec are stored as sent and read back by kcat
/// (librdkafka's decoders) and `cairn consume`, whether kcat (librdkafka's encoders: raw
/// snappy, LZ4 frames) or `cairn produce --compression` (xerial-framed snappy) wrote them.
///
/// librdkafka up to 2.11 sends gzip, snappy and lz4 batches uncompressed to a broker whose
/// Produce versions start at 3 (as Cairn's and Kafka 4's do: it asks for Produce v0 before it
/// compresses with those codecs; librdkafka issue 4956), and every version so far sends lz4
/// uncompressed there (its LZ4 feature needs Fetch versions Cairn does not serve). So kcat's
/// zstd must arrive compressed, its gzip and snappy only from librdkafka 2.12 on, and its lz4
/// either way; `cairn produce` covers every codec.
#[test]
fn kcat_and_cairn_round_trip_compressed_batches() {
    let node = TestNode::start();
    let broker = node.kafka_address().to_string();
    let (major, minor) = librdkafka_version();
    let fixed_librdkafka = (major, minor) >= (2, 12);
    // Repetitive values, as real data is: every codec makes them smaller.
    let lines: Vec<String> = (0..60)
        .map(|n| {
            format!(
                "sensor-{}:reading {n} of the compressed round trip, unit celsius",
                n % 4
            )
        })
        .collect();
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let mut expected: Vec<String> = lines
        .iter()
        .map(|line| line.replacen(':', " ", 1))
        .collect();
    expected.sort();
    for (codec, compression) in [
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let kcat_compresses = match compression {
            Compression::Zstd => Some(true),
            Compression::Gzip | Compression::Snappy => Some(fixed_librdkafka),
            _ => None,
        };
        compressed_round_trip(
            &node,
            &format!("kcat-{codec}"),
            |topic| {
                kcat(
                    &[
                        "-b",
                        &broker,
                        "-P",
                        "-t",
                        topic,
                        "-K:",
                        "-z",
                        codec,
                        "-X",
                        "linger.ms=50",
                    ],
                    &input,
                );
            },
            |stored| match kcat_compresses {
                Some(true) => stored == compression,
                Some(false) => stored == Compression::None,
                None => stored == compression || stored == Compression::None,
            },
            &expected,
        );
        compressed_round_trip(
            &node,
            &format!("cairn-{codec}"),
            |topic| {
                let mut produce = Command::new(cairn_binary())
                    .args(["produce", topic, "--compression", codec, "-K", ":"])
                    .args(["--bootstrap", &node.address().to_string()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("the cairn CLI runs");
                produce
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(input.as_bytes())
                    .expect("write cairn produce's input");
                // Bounded like a kcat run: polled, killed past KCAT_TIMEOUT.
                let started = Instant::now();
                let status = loop {
                    if let Some(status) = produce.try_wait().expect("cairn produce runs") {
                        break status;
                    }
                    if started.elapsed() > KCAT_TIMEOUT {
                        let _ = produce.kill();
                        panic!("cairn produce {topic} did not finish within {KCAT_TIMEOUT:?}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                assert!(status.success(), "cairn produce {topic}: {status}");
            },
            |stored| stored == compression,
            &expected,
        );
    }
}
