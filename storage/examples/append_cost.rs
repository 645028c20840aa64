//! Measures what appending costs a `SledStore`: wall time, CPU time (user and system) and the
//! files sled's blob directory ends with, for batches of 64 x 1 KiB records spread over
//! several partition logs and flushed in groups, as a node's group committer does.
//!
//! Usage: append_cost TOTAL_MIB PARTITIONS BATCHES_PER_FLUSH

#[path = "../tests/support/append_load.rs"]
mod append_load;

use cairn_storage::sled_store::SledStore;
use std::time::Instant;

/// (user, system) CPU seconds of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> f64 {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11), ticks(12))
}

/// Bytes this process handed to write calls so far (`wchar` of /proc/self/io).
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let partitions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let per_flush: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SledStore::open(dir.path()).expect("open");
    let started = Instant::now();
    let (user_before, system_before) = cpu_seconds();
    let wchar_before = bytes_written();
    let appended = append_load::append_batches(&store, partitions, total_mib << 20, per_flush);
    let (written, batches) = (appended.bytes, appended.batches);
    let seconds = started.elapsed().as_secs_f64();
    let (user_after, system_after) = cpu_seconds();
    let amplification = (bytes_written() - wchar_before) as f64 / written as f64;
    let blob_files = std::fs::read_dir(dir.path().join("blobs"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    println!(
        "written_mib={} batches={batches} records={} wall_s={seconds:.2} mib_per_s={:.0} user_s={:.2} \
         system_s={:.2} write_amplification={amplification:.2} blob_files_left={blob_files}",
        written >> 20,
        appended.log_ends.iter().map(|end| end.0).sum::<u64>(),
        (written >> 20) as f64 / seconds,
        user_after - user_before,
        system_after - system_before,
    );
}
