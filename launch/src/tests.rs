use super::*;

fn ready(http: Option<&str>, kafka: Option<&str>) -> ReadyLine {
    ReadyLine {
        node_id: 7,
        listen: "127.0.0.1:9092".parse().unwrap(),
        http: http.map(|http| http.parse().unwrap()),
        kafka: kafka.map(|kafka| kafka.parse().unwrap()),
    }
}

#[test]
fn the_line_is_printed_as_scripts_expect() {
    assert_eq!(
        ready(Some("127.0.0.1:9644"), Some("127.0.0.1:19092")).to_string(),
        "cairn node ready node_id=7 listen=127.0.0.1:9092 http=127.0.0.1:9644 kafka=127.0.0.1:19092"
    );
    assert_eq!(
        ready(None, None).to_string(),
        "cairn node ready node_id=7 listen=127.0.0.1:9092 http=none kafka=off"
    );
}

#[test]
fn format_and_parse_round_trip() {
    let lines = [
        ready(None, None),
        ready(Some("127.0.0.1:9644"), None),
        ready(None, Some("127.0.0.2:19092")),
        ready(Some("[::1]:9644"), Some("[::1]:19092")),
        ReadyLine {
            node_id: u32::MAX,
            listen: "[::1]:1".parse().unwrap(),
            http: None,
            kafka: None,
        },
    ];
    for line in lines {
        assert_eq!(ReadyLine::parse(&line.to_string()), Ok(line), "{line}");
        assert_eq!(ReadyLine::parse(&format!("{line}\n")), Ok(line), "{line}");
        assert!(ReadyLine::is_ready_line(&line.to_string()));
    }
}

#[test]
fn fields_may_come_in_any_order() {
    assert_eq!(
        ReadyLine::parse("cairn node ready kafka=off http=none listen=127.0.0.1:9092 node_id=7"),
        Ok(ready(None, None))
    );
}

#[test]
fn malformed_lines_are_typed_errors() {
    let cases: [(&str, ReadyLineError); 12] = [
        ("", ReadyLineError::NotReadyLine),
        ("cairn dev ready nodes=3", ReadyLineError::NotReadyLine),
        ("cairn node ready", ReadyLineError::NotReadyLine),
        ("cairn node ready ", ReadyLineError::Missing("node_id")),
        (
            "cairn node ready node_id=1 http=none kafka=off",
            ReadyLineError::Missing("listen"),
        ),
        (
            "cairn node ready node_id=1 listen=127.0.0.1:1 kafka=off",
            ReadyLineError::Missing("http"),
        ),
        (
            "cairn node ready node_id=1 listen=127.0.0.1:1 http=none",
            ReadyLineError::Missing("kafka"),
        ),
        (
            "cairn node ready node_id=-1 listen=127.0.0.1:1 http=none kafka=off",
            ReadyLineError::Invalid {
                field: "node_id",
                value: "-1".into(),
            },
        ),
        (
            "cairn node ready node_id=1 listen=127.0.0.1 http=none kafka=off",
            ReadyLineError::Invalid {
                field: "listen",
                value: "127.0.0.1".into(),
            },
        ),
        (
            // `none` is HTTP's word, `off` Kafka's: each is refused for the other.
            "cairn node ready node_id=1 listen=127.0.0.1:1 http=off kafka=off",
            ReadyLineError::Invalid {
                field: "http",
                value: "off".into(),
            },
        ),
        (
            "cairn node ready node_id=1 node_id=1 listen=127.0.0.1:1 http=none kafka=off",
            ReadyLineError::Duplicate("node_id"),
        ),
        (
            "cairn node ready node_id=1 listen=127.0.0.1:1 http=none kafka=off rack=a",
            ReadyLineError::Unknown("rack=a".into()),
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(ReadyLine::parse(line), Err(expected), "{line:?}");
    }
    assert_eq!(
        ReadyLine::parse("cairn node ready node_id=1 listen=127.0.0.1:1 http=none kafka=off junk"),
        Err(ReadyLineError::Unknown("junk".into()))
    );
    // Hostile bytes: no panic, a typed error.
    let long = format!("cairn node ready node_id={}", "9".repeat(100_000));
    assert!(matches!(
        ReadyLine::parse(&long),
        Err(ReadyLineError::Invalid {
            field: "node_id",
            ..
        })
    ));
    assert!(ReadyLine::parse("cairn node ready node_id=\u{1F600} =").is_err());
}

/// A stand-in for `cairn node`: `sh -c SCRIPT`, logging to `log` in `dir`.
fn shell(dir: &tempfile::TempDir, script: &str) -> Launch {
    Launch::program("sh", dir.path().join("log")).args(["-c", script])
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn waits_for_the_ready_line_and_keeps_draining_stdout() {
    let dir = tempfile::tempdir().unwrap();
    // A line longer than a pipe buffer (64 KiB) and the reader's line limit before the ready
    // line, then more than a pipe buffer after it: a child whose stdout were not drained to
    // the end would block on its write and never exit.
    let script = "head -c 200000 /dev/zero | tr '\\0' 'x'; echo; \
                  echo 'not ready yet'; echo 'noise' >&2; \
                  echo 'cairn node ready node_id=3 listen=127.0.0.1:5 http=none kafka=127.0.0.1:6'; \
                  head -c 200000 /dev/zero; exit 0";
    let (mut launched, ready) = shell(&dir, script).start(WAIT).unwrap();
    assert_eq!(
        ready,
        ReadyLine {
            node_id: 3,
            listen: "127.0.0.1:5".parse().unwrap(),
            http: None,
            kafka: Some("127.0.0.1:6".parse().unwrap()),
        }
    );
    assert_eq!(launched.wait_ready(Duration::ZERO).unwrap(), ready);
    // It exits by itself once everything it wrote was read (bounded: 30 s, then fail).
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = launched.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the child blocked on its stdout");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert_eq!(log, "noise\n", "stderr goes to the log, stdout does not");
}

#[test]
fn an_exit_before_ready_says_so_and_names_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let error = shell(&dir, "echo 'refused' >&2; exit 3")
        .start(WAIT)
        .unwrap_err();
    match &error {
        LaunchError::Exited { status, log } => {
            assert_eq!(status.code(), Some(3));
            assert_eq!(log, &dir.path().join("log"));
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("exited before it was ready"), "{message}");
    assert!(
        message.contains(&dir.path().join("log").display().to_string()),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log")).unwrap(),
        "refused\n"
    );
}

#[test]
fn no_ready_line_by_the_deadline_is_a_timeout_and_the_process_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut launched = shell(&dir, "echo 'cairn node starting'; exec sleep 60")
        .spawn()
        .unwrap();
    let error = launched.wait_ready(Duration::from_millis(200)).unwrap_err();
    assert!(
        matches!(&error, LaunchError::Timeout { log, .. } if log == &dir.path().join("log")),
        "{error:?}"
    );
    assert!(error.to_string().contains("not ready within"), "{error}");
    assert!(launched.child().try_wait().unwrap().is_none(), "still runs");
    launched.kill();
    assert!(launched.child().try_wait().unwrap().is_some(), "reaped");
}

#[test]
fn a_malformed_ready_line_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = shell(&dir, "echo 'cairn node ready node_id=x'; exec sleep 60")
        .start(WAIT)
        .unwrap_err();
    match error {
        LaunchError::BadReadyLine { line, error, .. } => {
            assert_eq!(line, "cairn node ready node_id=x");
            assert_eq!(
                error,
                ReadyLineError::Invalid {
                    field: "node_id",
                    value: "x".into()
                }
            );
        }
        other => panic!("expected BadReadyLine, got {other:?}"),
    }
}

#[test]
fn a_missing_binary_or_log_directory_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-binary");
    assert!(matches!(
        Launch::node(&missing, dir.path().join("log")).spawn(),
        Err(LaunchError::Spawn { binary, .. }) if binary == missing
    ));
    let log = dir.path().join("no-such-dir").join("log");
    assert!(matches!(
        Launch::program("sh", &log).spawn(),
        Err(LaunchError::Log { log: named, .. }) if named == log
    ));
}

/// Nodes sharing the machine split its cores, at least one thread each; a lone node keeps
/// its default (one of each kind per core).
#[test]
fn colocated_nodes_split_the_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    assert_eq!(colocated_threads(1), None);
    assert_eq!(colocated_threads(2), Some((cores / 2).max(1)));
    assert_eq!(colocated_threads(cores * 4), Some(1));
}
