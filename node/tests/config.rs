//! A configuration the node cannot run with stops it at once: a clear message on stderr and a
//! non-zero exit, never a panic.

mod support;

use support::{run_node_expecting_exit, write_file};

fn assert_refused(args: &[&str], expected: &[&str]) {
    let (status, stderr) = run_node_expecting_exit(args);
    assert!(!status.success(), "{args:?} started: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for needle in expected {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr:?}"
        );
    }
}

#[test]
fn invalid_configurations_exit_non_zero_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    let unknown = write_file(dir.path(), "unknown.toml", "[limits]\nframe_bytes = 10\n");
    assert_refused(
        &[
            "--node-id",
            "1",
            "--data-dir",
            data,
            "--config",
            unknown.to_str().unwrap(),
        ],
        &["unknown.toml", "frame_bytes"],
    );

    let broken = write_file(dir.path(), "broken.toml", "node_id = = 1\n");
    assert_refused(
        &["--data-dir", data, "--config", broken.to_str().unwrap()],
        &["broken.toml"],
    );

    let rule = write_file(
        dir.path(),
        "rule.toml",
        "preset = \"test\"\n[replica]\nheartbeat_ms = 150\n",
    );
    assert_refused(
        &[
            "--node-id",
            "1",
            "--data-dir",
            data,
            "--config",
            rule.to_str().unwrap(),
        ],
        &["heartbeat_ms * 3 <= lease_ms"],
    );

    assert_refused(&["--data-dir", data], &["node_id"]);
    assert_refused(
        &[
            "--node-id",
            "1",
            "--data-dir",
            data,
            "--set",
            "limits.connections_max=many",
        ],
        &["limits.connections_max"],
    );
    assert_refused(
        &["--node-id", "1", "--data-dir", data, "--preset", "fast"],
        &["fast"],
    );
    assert_refused(
        &[
            "--node-id",
            "1",
            "--data-dir",
            data,
            "--set",
            "storage.durability=sync",
        ],
        &["storage.durability is fsync or flush", "\"sync\""],
    );
    assert_refused(
        &[
            "--node-id",
            "1",
            "--data-dir",
            data,
            "--listen",
            "localhost",
        ],
        &["listen"],
    );

    // A data directory that cannot be created: its parent is a file.
    let file = write_file(dir.path(), "a-file", "x");
    let below_file = file.join("data");
    assert_refused(
        &[
            "--node-id",
            "1",
            "--data-dir",
            below_file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &["data directory"],
    );

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    assert_refused(
        &["--node-id", "1", "--data-dir", data, "--listen", &address],
        &["cannot listen", &address],
    );
}
