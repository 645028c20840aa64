//! Kill -9 test on real sled files.
//!
//! The test binary runs in two modes. As the parent (the normal `cargo test` run) it starts
//! itself again as a child writer, reads the child's "flushed" reports from its stdout, and
//! SIGKILLs it at a varying moment (`Child::kill` is SIGKILL on Unix). It then reopens the
//! store and checks that everything the child reported as flushed is present and intact, that
//! the log is a gap-free prefix of what the child wrote, and that appending continues at the
//! log end. Several rounds run on one directory, each child continuing the previous log with a
//! higher epoch. The child (selected by an environment variable) appends batches whose contents
//! follow from their offsets, on two logs from two threads sharing one group committer.

use bytes::Bytes;
use cairn_protocol::batch::{Record, RecordBatch, RecordBatchBuilder};
use cairn_protocol::{Epoch, Offset};
use cairn_storage::{GroupCommitter, LogStore, PartitionLog, SledStore};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHILD_DIR_VAR: &str = "CAIRN_STORAGE_CRASH_CHILD_DIR";
const CHILD_EPOCH_VAR: &str = "CAIRN_STORAGE_CRASH_CHILD_EPOCH";
const LOG_NAMES: [&str; 2] = ["crash-a", "crash-b"];
const ROUNDS: u64 = 8;
/// A child that outlives this (its parent died) stops by itself.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(30);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Records in the batch starting at `base`: varies so that batch boundaries are irregular.
fn record_count(base: u64) -> u32 {
    1 + (base.wrapping_mul(7) % 13) as u32
}

fn record_value(log: &str, offset: u64) -> Bytes {
    let mut value = format!("{log}:{offset}:").into_bytes();
    value.resize(700, b'0' + (offset % 10) as u8);
    Bytes::from(value)
}

/// The batch the child writes at `base`, before stamping.
fn expected_batch(log: &str, base: u64) -> RecordBatch {
    let mut builder = RecordBatchBuilder::new(0);
    for index in 0..u64::from(record_count(base)) {
        let offset = base + index;
        builder.push(
            &Record::new(record_value(log, offset))
                .with_key(offset.to_string())
                .with_timestamp_ms(1_700_000_000_000 + offset as i64),
        );
    }
    builder.build()
}

fn child(directory: &str, epoch: u64) {
    let started = Instant::now();
    let store = SledStore::open(directory).expect("child opens the store");
    let committer = GroupCommitter::start(store.clone());
    let writers: Vec<_> = LOG_NAMES
        .iter()
        .map(|&name| {
            let store = store.clone();
            let committer = committer.clone();
            std::thread::spawn(move || {
                let mut log = store.open_log(name).expect("child opens the log");
                let mut round = 0u64;
                while started.elapsed() < CHILD_LIFETIME_MAX {
                    for _ in 0..1 + round % 3 {
                        let base = log.log_end().0;
                        let batch = expected_batch(name, base).stamped(Offset(base), Epoch(epoch));
                        log.append(&batch).expect("child appends");
                    }
                    round += 1;
                    let end = log.log_end();
                    committer.request_blocking().expect("child flushes");
                    let mut stdout = std::io::stdout().lock();
                    // A parent that went away closes the pipe: stop then.
                    if writeln!(stdout, "flushed {name} {end}").is_err() || stdout.flush().is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
}

/// Checks one log after a kill and returns its end. `flushed` is the highest end the child
/// reported for it.
fn verify_log(store: &SledStore, name: &str, flushed: u64) -> u64 {
    let log = store.open_log(name).expect("reopen the log");
    assert_eq!(log.log_start(), Offset(0));
    let end = log.log_end().0;
    assert!(
        end >= flushed,
        "{name}: log end {end} is below the reported flushed end {flushed}: flushed data lost"
    );
    let mut next = 0u64;
    let mut size_bytes = 0u64;
    while next < end {
        let batches = log
            .read(Offset(next), Offset(end), 1 << 20)
            .unwrap_or_else(|error| panic!("{name}: read at {next} failed: {error}"));
        assert!(
            !batches.is_empty(),
            "{name}: nothing read at {next} below {end}"
        );
        for batch in batches {
            assert_eq!(batch.base_offset().0, next, "{name}: gap or overlap");
            let expected = expected_batch(name, next);
            assert_eq!(
                batch.bytes()[20..],
                expected.bytes()[20..],
                "{name}: batch at {next} differs from what was written"
            );
            RecordBatch::validate(batch.bytes().clone()).expect("a stored batch validates");
            size_bytes += batch.size_bytes() as u64;
            next = batch.next_offset().0;
        }
    }
    assert_eq!(next, end, "{name}: last batch does not end at the log end");
    assert_eq!(log.size_bytes(), size_bytes, "{name}: size counter");
    // Epochs never go down along the log, and the history agrees (read checks each batch).
    let history = log.epoch_history();
    assert!(history
        .windows(2)
        .all(|pair| pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset));
    end
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(7)
}

fn parent() {
    let started = Instant::now();
    let directory = tempfile::tempdir().expect("temporary directory");
    let executable = std::env::current_exe().expect("own executable");
    let mut seed = seed();
    println!("crash test seed {seed}");
    let mut flushed: HashMap<String, u64> = HashMap::new();
    for round in 1..=ROUNDS {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let reports_before_kill = 5 + (seed >> 33) % 60;
        let mut child = Command::new(&executable)
            .env(CHILD_DIR_VAR, directory.path())
            .env(CHILD_EPOCH_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child writer");
        let stdout = child.stdout.take().expect("child stdout");
        let (sender, receiver) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut record = |line: &str| {
            let mut words = line.split_whitespace();
            let (Some("flushed"), Some(name), Some(end)) =
                (words.next(), words.next(), words.next())
            else {
                panic!("unexpected child output {line:?}");
            };
            let end: u64 = end.parse().expect("an offset");
            let entry = flushed.entry(name.to_owned()).or_default();
            *entry = (*entry).max(end);
        };
        for _ in 0..reports_before_kill {
            match receiver.recv_timeout(REPORT_TIMEOUT) {
                Ok(line) => record(&line),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("round {round}: no report from the child: {error}");
                }
            }
        }
        // Kill at a varying moment: mid-append, mid-flush or between.
        std::thread::sleep(Duration::from_micros((seed >> 40) % 3_000));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(!status.success(), "the child was killed, not finished");
        reader.join().expect("reader thread");
        // Lines the child wrote before dying are claims too.
        for line in receiver.try_iter() {
            record(&line);
        }
        let store = SledStore::open(directory.path()).expect("reopen after the kill");
        let mut ends = Vec::new();
        for name in LOG_NAMES {
            let reported = flushed.get(name).copied().unwrap_or(0);
            let end = verify_log(&store, name, reported);
            ends.push((name, reported, end));
            // Appending continues exactly at the recovered end.
            let mut log = store.open_log(name).expect("open for append");
            let batch = expected_batch(name, end).stamped(Offset(end), Epoch(round));
            assert_eq!(
                log.append(&batch).map(|offset| offset.0),
                Ok(batch.next_offset().0)
            );
            *flushed.entry(name.to_owned()).or_default() = batch.next_offset().0;
        }
        store.flush().expect("flush the continuation");
        println!("round {round}: killed after {reports_before_kill} reports; (log, reported, recovered) = {ends:?}");
    }
    let elapsed = started.elapsed();
    println!("crash test passed: {ROUNDS} rounds in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(60),
        "crash test took {elapsed:?}"
    );
}

fn main() {
    match std::env::var(CHILD_DIR_VAR) {
        Ok(directory) => {
            let epoch = std::env::var(CHILD_EPOCH_VAR)
                .ok()
                .and_then(|epoch| epoch.parse().ok())
                .expect("child epoch");
            child(&directory, epoch);
        }
        Err(_) => parent(),
    }
}
