//! A compacting leader whose wall clock runs two hours ahead must not expire a fresh
//! tombstone. The node runs under libfaketime (`FAKETIME=+7200`, the monotonic clock
//! untouched), as the chaos harness's clock fault restarts nodes; the test's producer keeps
//! the true time. Decisions merge by the later tombstone cutoff, so a cutoff taken from the
//! jumped clock would remove every tombstone younger than the jump, and go on doing so after
//! the clock is fixed (found by the chaos `compaction` workload). The leader decides with
//! `expiry_clock` instead, bounded by the records' own timestamps.
//!
//! Needs libfaketime (Debian package `faketime`, installed by `.ci/run`).

mod support;

use cairn_client::{Admin, ClientConfig, Producer, ProducerConfig, Record, TopicConfig};
use cairn_protocol::messages::CleanupPolicy;
use cairn_protocol::Offset;
use std::path::PathBuf;
use std::time::Duration;
use support::TestNode;

const TOPIC: &str = "clocked";
/// Ten minutes: far shorter than the two-hour jump, far longer than the test.
const DELETE_RETENTION_MS: u64 = 600_000;
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// libfaketime's multi-threaded library, where Debian puts it.
fn faketime_library() -> PathBuf {
    let candidates = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")]);
    candidates
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("this test needs libfaketime: apt-get install -y faketime"))
}

fn client_config(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap)
        .unwrap()
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
}

#[test]
fn a_leader_whose_wall_clock_runs_ahead_keeps_fresh_tombstones() {
    let library = faketime_library();
    let node = TestNode::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", library.to_str().expect("a UTF-8 path")),
            ("FAKETIME", "+7200"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let bootstrap = node.address().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let records = runtime.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let config = TopicConfig {
                cleanup_policy: Some(CleanupPolicy::Compact),
                min_compaction_lag_ms: Some(0),
                delete_retention_ms: Some(DELETE_RETENTION_MS),
                segment_bytes: Some(1),
                ..TopicConfig::default()
            };
            Admin::new(client_config(&bootstrap))
                .unwrap()
                .create_topic(TOPIC, 1, Some(1), config)
                .await
                .unwrap();
            let producer = Producer::new(
                client_config(&bootstrap),
                ProducerConfig::default().linger(Duration::from_millis(0)),
            )
            .await
            .unwrap();
            let records = [
                Record::new("v1").with_key("deleted"),
                Record::tombstone("deleted"),
                Record::new("v1").with_key("kept"),
                Record::new("v2").with_key("kept"),
            ];
            let mut last = Offset::ZERO;
            for record in records {
                last = producer
                    .send_to(TOPIC, 0, record)
                    .await
                    .expect("sent")
                    .await
                    .expect("acknowledged")
                    .offset
                    .expect("acks=all gives the offset");
            }
            // The superseded values go (so a decision was made and applied) ...
            assert!(
                support::eventually(Duration::from_secs(60), || {
                    support::metric(node.http_address(), "cairn_compaction_bytes_removed_total")
                        > 0.0
                }),
                "the compactor removed nothing"
            );
            support::read_from_start(client_config(&bootstrap), TOPIC, Offset(last.0 + 1)).await
        })
        .await
        .expect("the test finishes in time")
    });
    let seen: Vec<(String, Option<String>)> = records
        .iter()
        .map(|record| {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            (
                record.key.as_deref().map(text).unwrap_or_default(),
                record.value.as_deref().map(text),
            )
        })
        .collect();
    // ... and the tombstone, ten minutes from expiring by the records' time, stays.
    assert_eq!(
        seen,
        vec![
            ("deleted".to_string(), None),
            ("kept".to_string(), Some("v2".to_string())),
        ],
        "{records:?}"
    );
}
