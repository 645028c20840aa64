//! A suite: several workload files, each run on each system, written as `report.json`,
//! `report.md` (tables, the Cairn/peer ratios, each side's durability) and `report.svg`
//! (throughput and publish p99 side by side). The report is rewritten after every run, so a
//! run that fails or is stopped keeps what was measured before it.

use crate::harness::{self, Outcome};
use crate::report::Latency;
use crate::workload::Workload;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub system: String,
    pub workload: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub workload: String,
    /// `system` over `peer`.
    pub system: String,
    pub peer: String,
    pub records_per_second: f64,
    /// Below 1: `system` has the lower (better) latency.
    pub publish_p99: f64,
    pub end_to_end_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub machine: String,
    pub load_average_at_start: [f64; 3],
    pub outcomes: Vec<Outcome>,
    pub ratios: Vec<Ratio>,
    pub failures: Vec<Failure>,
}

/// Loads the workload files, adding any workload a `rate_of_max` names from the same folder,
/// ordered so a referenced workload runs before the ones that refer to it.
pub fn load_workloads(paths: &[PathBuf]) -> Result<Vec<Workload>, String> {
    let mut workloads = Vec::new();
    let mut folders = Vec::new();
    for path in paths {
        workloads.push(Workload::load(path).map_err(|error| error.to_string())?);
        folders.push(path.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    let mut index = 0;
    while index < workloads.len() {
        if let Some(reference) = workloads[index].rate_of_max.clone() {
            if !workloads.iter().any(|w| w.name == reference.workload) {
                let path = folders[index].join(format!("{}.toml", reference.workload));
                let referenced = Workload::load(&path).map_err(|error| {
                    format!(
                        "{} refers to {}: {error}",
                        workloads[index].name, reference.workload
                    )
                })?;
                workloads.push(referenced);
                folders.push(folders[index].clone());
            }
        }
        index += 1;
    }
    for workload in &workloads {
        if let Some(reference) = &workload.rate_of_max {
            let referenced = workloads
                .iter()
                .find(|w| w.name == reference.workload)
                .expect("added above");
            if referenced.rate_of_max.is_some() || referenced.rate != 0 {
                return Err(format!(
                    "{} paces at a fraction of {}, which is not a maximum-rate workload",
                    workload.name, referenced.name
                ));
            }
        }
    }
    // Maximum-rate workloads first (stable), so every reference has been measured in time.
    workloads.sort_by_key(|workload| workload.rate_of_max.is_some());
    let mut names: Vec<&str> = workloads.iter().map(|w| w.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err("two workloads have the same name".into());
    }
    Ok(workloads)
}

/// Runs every workload on every system with `run_one(system, workload, target_rate)`,
/// writing the report into `out_dir` after each run. A failed run is reported, not fatal.
pub async fn run<F, Fut>(
    workloads: &[Workload],
    systems: &[&str],
    out_dir: &Path,
    run_one: F,
) -> Result<SuiteReport, String>
where
    F: FnMut(String, Workload, u64) -> Fut,
    Fut: Future<Output = Result<Outcome, String>>,
{
    run_rounds(workloads, systems, 1, out_dir, run_one).await
}

/// [`run`], `rounds` times over: round after round, each workload on each system in turn, so
/// the systems alternate and a machine that gets busier weighs on them alike. The ratios
/// pair the runs of one round.
pub async fn run_rounds<F, Fut>(
    workloads: &[Workload],
    systems: &[&str],
    rounds: u32,
    out_dir: &Path,
    mut run_one: F,
) -> Result<SuiteReport, String>
where
    F: FnMut(String, Workload, u64) -> Fut,
    Fut: Future<Output = Result<Outcome, String>>,
{
    std::fs::create_dir_all(out_dir)
        .map_err(|error| format!("creating {}: {error}", out_dir.display()))?;
    let mut report = SuiteReport {
        machine: harness::machine_description(),
        load_average_at_start: harness::load_average(),
        outcomes: Vec::new(),
        ratios: Vec::new(),
        failures: Vec::new(),
    };
    let mut first_run = true;
    for (_, workload) in
        (0..rounds.max(1)).flat_map(|round| workloads.iter().map(move |w| (round, w)))
    {
        for system in systems {
            if !std::mem::take(&mut first_run) {
                settle().await;
            }
            let reference = workload.rate_of_max.as_ref().and_then(|rate_of_max| {
                report
                    .outcomes
                    .iter()
                    .rev()
                    .find(|o| o.system == *system && o.workload.name == rate_of_max.workload)
                    .map(|o| o.publish.records_per_second)
            });
            let result = match workload.target_rate(reference) {
                Ok(rate) => run_one(system.to_string(), workload.clone(), rate).await,
                Err(error) => Err(error.to_string()),
            };
            match result {
                Ok(outcome) => {
                    eprintln!("{}", row(&outcome));
                    report.outcomes.push(outcome);
                }
                Err(error) => {
                    eprintln!("{} on {system} failed: {error}", workload.name);
                    report.failures.push(Failure {
                        system: system.to_string(),
                        workload: workload.name.clone(),
                        error,
                    });
                }
            }
            report.ratios = ratios(&report.outcomes, systems);
            write(&report, out_dir)?;
        }
    }
    Ok(report)
}

/// Rest between two runs, after a `sync`, at least.
const REST_BETWEEN_RUNS: std::time::Duration = std::time::Duration::from_secs(10);
/// The disk counts as quiet once a second passes with no discard and less than this written...
const QUIET_WRITTEN_BYTES: u64 = 1 << 20;
/// ...this many seconds in a row.
const QUIET_SECONDS: u32 = 3;
/// Waiting for a quiet disk gives up after this long (another process may be writing).
const QUIET_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(90);

/// Lets the previous run's writes and file deletions reach the disk before the next run: a
/// run deletes gigabytes of data when it ends, and on a disk mounted with `discard` the
/// discards that follow (measured: 7 GB over more than 5 s, at 600-1,000 MB/s) stalled the
/// flushes of the next run's first seconds. So: `sync`, then wait until the disks have been
/// quiet for a few seconds (from /proc/diskstats), and at least `REST_BETWEEN_RUNS`.
async fn settle() {
    let started = std::time::Instant::now();
    let synced = tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await;
    if !matches!(synced, Ok(Ok(status)) if status.success()) {
        eprintln!("sync failed before the next run; resting anyway");
    }
    let mut quiet_seconds = 0;
    let mut last = disk_activity();
    while quiet_seconds < QUIET_SECONDS && started.elapsed() < QUIET_WAIT_MAX {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = disk_activity();
        quiet_seconds = match (last, now) {
            (Some(before), Some(after)) if after.is_quiet_after(before) => quiet_seconds + 1,
            (Some(_), Some(_)) => 0,
            // No /proc/diskstats: only the fixed rest.
            _ => QUIET_SECONDS,
        };
        last = now;
    }
    if quiet_seconds < QUIET_SECONDS {
        eprintln!("the disk was still busy after {QUIET_WAIT_MAX:?}; running anyway");
    }
    if let Some(left) = REST_BETWEEN_RUNS.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
}

/// Bytes written and discarded so far, summed over the block devices of /proc/diskstats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskActivity {
    written_bytes: u64,
    discarded_bytes: u64,
}

impl DiskActivity {
    fn is_quiet_after(self, before: DiskActivity) -> bool {
        self.discarded_bytes == before.discarded_bytes
            && self.written_bytes.saturating_sub(before.written_bytes) < QUIET_WRITTEN_BYTES
    }
}

fn disk_activity() -> Option<DiskActivity> {
    parse_diskstats(&std::fs::read_to_string("/proc/diskstats").ok()?)
}

/// Sums sectors written (field 10 of a line) and discarded (field 17, Linux 4.18+) of every
/// device; sectors are 512 bytes in this file whatever the device's block size.
fn parse_diskstats(text: &str) -> Option<DiskActivity> {
    let mut activity = DiskActivity {
        written_bytes: 0,
        discarded_bytes: 0,
    };
    let mut devices = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let sectors = |index: usize| {
            fields
                .get(index)
                .and_then(|value| value.parse::<u64>().ok())
        };
        let Some(written) = sectors(9) else {
            continue;
        };
        activity.written_bytes += written * 512;
        activity.discarded_bytes += sectors(16).unwrap_or(0) * 512;
        devices += 1;
    }
    (devices > 0).then_some(activity)
}

/// The first system over each other system, per workload both ran; with several rounds, the
/// n-th run of the first system over the n-th run of each peer.
pub fn ratios(outcomes: &[Outcome], systems: &[&str]) -> Vec<Ratio> {
    let Some((first, peers)) = systems.split_first() else {
        return Vec::new();
    };
    let runs_of = |system: &str, workload: &str| -> Vec<&Outcome> {
        outcomes
            .iter()
            .filter(|o| o.system == system && o.workload.name == workload)
            .collect()
    };
    let mut ratios = Vec::new();
    let mut seen = Vec::new();
    for ours in outcomes.iter().filter(|o| o.system == *first) {
        let round = seen
            .iter()
            .filter(|name| **name == ours.workload.name.as_str())
            .count();
        seen.push(ours.workload.name.as_str());
        for peer in peers {
            let Some(theirs) = runs_of(peer, &ours.workload.name).get(round).copied() else {
                continue;
            };
            let divide = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            ratios.push(Ratio {
                workload: ours.workload.name.clone(),
                system: first.to_string(),
                peer: peer.to_string(),
                records_per_second: divide(
                    ours.publish.records_per_second,
                    theirs.publish.records_per_second,
                ),
                publish_p99: divide(ours.publish_latency.p99_ms, theirs.publish_latency.p99_ms),
                end_to_end_p99: divide(
                    ours.end_to_end_latency.p99_ms,
                    theirs.end_to_end_latency.p99_ms,
                ),
            });
        }
    }
    ratios
}

pub fn write(report: &SuiteReport, out_dir: &Path) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    for (name, text) in [
        ("report.json", json),
        ("report.md", markdown(report)),
        ("report.svg", svg(report)),
    ] {
        let path = out_dir.join(name);
        std::fs::write(&path, text)
            .map_err(|error| format!("writing {}: {error}", path.display()))?;
    }
    Ok(())
}

fn rate_text(outcome: &Outcome) -> String {
    if outcome.target_rate == 0 {
        "max".into()
    } else {
        format!("{}/s", outcome.target_rate)
    }
}

/// One line for the terminal as each run ends.
fn row(outcome: &Outcome) -> String {
    format!(
        "{} on {}: {:.0} records/s ({:.1} MB/s), publish p50 {:.2} ms p99 {:.2} ms, \
         end-to-end p99 {:.2} ms, load average {:.1}",
        outcome.workload.name,
        outcome.system,
        outcome.publish.records_per_second,
        outcome.publish.megabytes_per_second,
        outcome.publish_latency.p50_ms,
        outcome.publish_latency.p99_ms,
        outcome.end_to_end_latency.p99_ms,
        outcome.load_average_after[0],
    )
}

pub fn markdown(report: &SuiteReport) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Benchmark report\n\nMachine: {}; load average at the start {:.2} {:.2} {:.2}. \
         Latencies in ms; publish latency from the intended send time to the acknowledgement, \
         end-to-end from the intended send time to the consumer receiving the record.\n",
        report.machine,
        report.load_average_at_start[0],
        report.load_average_at_start[1],
        report.load_average_at_start[2]
    );
    let _ = writeln!(
        text,
        "| workload | system | rate | records/s | MB/s | publish p50 | p99 | p99.9 | max | \
         e2e p50 | p99 | p99.9 | max | consumed/s | node CPU (cores) | node peak RSS (MiB) | load avg |"
    );
    let _ = writeln!(text, "|{}", "---|".repeat(17));
    for outcome in &report.outcomes {
        let (publish, e2e) = (&outcome.publish_latency, &outcome.end_to_end_latency);
        let cpu: Vec<String> = outcome
            .nodes
            .iter()
            .map(|node| format!("{:.2}", node.cpu_cores))
            .collect();
        let rss: Vec<String> = outcome
            .nodes
            .iter()
            .map(|node| format!("{:.0}", node.peak_rss_mib))
            .collect();
        let _ = writeln!(
            text,
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {:.1} |",
            outcome.workload.name,
            outcome.system,
            rate_text(outcome),
            outcome.publish.records_per_second,
            outcome.publish.megabytes_per_second,
            publish.p50_ms,
            publish.p99_ms,
            publish.p999_ms,
            publish.max_ms,
            e2e.p50_ms,
            e2e.p99_ms,
            e2e.p999_ms,
            e2e.max_ms,
            outcome.consume.records_per_second,
            cpu.join(" / "),
            rss.join(" / "),
            outcome.load_average_after[0],
        );
    }
    if !report.ratios.is_empty() {
        let _ = writeln!(
            text,
            "\n| workload | ratio | records/s | publish p99 | e2e p99 |\n|---|---|---|---|---|"
        );
        for ratio in &report.ratios {
            let _ = writeln!(
                text,
                "| {} | {} / {} | {:.2}x | {:.2}x | {:.2}x |",
                ratio.workload,
                ratio.system,
                ratio.peer,
                ratio.records_per_second,
                ratio.publish_p99,
                ratio.end_to_end_p99
            );
        }
        // Each (workload, peer) once, in the order first run: rounds interleave them.
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for ratio in &report.ratios {
            let pair = (ratio.workload.as_str(), ratio.peer.as_str());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        for (workload, peer) in pairs {
            let of_pair = || {
                report
                    .ratios
                    .iter()
                    .filter(|ratio| ratio.workload == workload && ratio.peer == peer)
            };
            let records: Vec<f64> = of_pair().map(|ratio| ratio.records_per_second).collect();
            if records.len() > 1 {
                let p99: Vec<f64> = of_pair().map(|ratio| ratio.publish_p99).collect();
                let _ = writeln!(
                    text,
                    "\n{workload}, over {peer}, {} rounds: records/s {}; publish p99 {}",
                    records.len(),
                    median_of(records),
                    median_of(p99),
                );
            }
        }
        let _ = writeln!(
            text,
            "\nRecords/s above 1x: the first system is faster; latency below 1x: it is quicker."
        );
    }
    let idle: Vec<&Outcome> = report
        .outcomes
        .iter()
        .filter(|o| o.nodes.iter().any(|node| node.idle_cpu_cores.is_some()))
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(
            text,
            "\n| workload | system | partitions | idle CPU per node (% of a core) | idle RSS per node (MiB) |\n|---|---|---|---|---|"
        );
        for outcome in idle {
            let cpu: Vec<String> = outcome
                .nodes
                .iter()
                .map(|node| format!("{:.1}", node.idle_cpu_cores.unwrap_or(0.0) * 100.0))
                .collect();
            let rss: Vec<String> = outcome
                .nodes
                .iter()
                .map(|node| format!("{:.0}", node.idle_rss_mib.unwrap_or(0.0)))
                .collect();
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} |",
                outcome.workload.name,
                outcome.system,
                outcome.workload.partitions,
                cpu.join(" / "),
                rss.join(" / ")
            );
        }
    }
    let paced: Vec<(&Outcome, &Latency)> = report
        .outcomes
        .iter()
        .filter_map(|outcome| Some((outcome, outcome.send_lag.as_ref()?)))
        .collect();
    if !paced.is_empty() {
        let _ = writeln!(
            text,
            "\nSend lag of the paced runs (ms): how late records left the load generator after \
             their intended time, part of the publish latency above. It includes waiting for a \
             free in-flight slot (the broker's share) and tokio's 1 ms timer (the generator's).\n\n\
             | workload | system | p50 | p99 | p99.9 | max |\n|---|---|---|---|---|---|"
        );
        for (outcome, lag) in paced {
            let _ = writeln!(
                text,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                outcome.workload.name,
                outcome.system,
                lag.p50_ms,
                lag.p99_ms,
                lag.p999_ms,
                lag.max_ms
            );
        }
    }
    let mut durability = BTreeMap::new();
    for outcome in &report.outcomes {
        durability.insert(outcome.system.as_str(), outcome.durability.as_str());
    }
    if !durability.is_empty() {
        let _ = writeln!(text, "\nDurability:\n");
        for (system, words) in durability {
            let _ = writeln!(text, "- {system}: {words}");
        }
    }
    if !report.failures.is_empty() {
        let _ = writeln!(text, "\nFailed runs:\n");
        for failure in &report.failures {
            let _ = writeln!(
                text,
                "- {} on {}: {}",
                failure.workload, failure.system, failure.error
            );
        }
    }
    text
}

/// A chart's title, the figure it shows and its unit.
type Panel = (&'static str, fn(&Outcome) -> f64, &'static str);

/// "median M (sorted values)" of ratios.
fn median_of(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let texts: Vec<String> = values.iter().map(|value| format!("{value:.2}x")).collect();
    format!("median {:.2}x ({})", median(&values), texts.join(", "))
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Two bar charts: records/s and publish p99 per workload, one bar per system; with several
/// rounds, each bar is the median of that system's rounds.
pub fn svg(report: &SuiteReport) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    let mut systems: Vec<&str> = Vec::new();
    for outcome in &report.outcomes {
        if !workloads.contains(&outcome.workload.name.as_str()) {
            workloads.push(&outcome.workload.name);
        }
        if !systems.contains(&outcome.system.as_str()) {
            systems.push(&outcome.system);
        }
    }
    let colours = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];
    let (label_width, panel_width, bar_height) = (170.0, 330.0, 14.0);
    let group_height = bar_height * systems.len().max(1) as f64 + 10.0;
    let height = 60.0 + group_height * workloads.len() as f64 + 30.0;
    let width = label_width + 2.0 * (panel_width + 40.0);
    let mut text = String::new();
    let _ = writeln!(
        text,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let rounds = report
        .outcomes
        .iter()
        .filter(|o| Some(&o.system.as_str()) == systems.first())
        .filter(|o| Some(&o.workload.name.as_str()) == workloads.first())
        .count();
    let _ = writeln!(
        text,
        r#"<rect width="100%" height="100%" fill="white"/><text x="4" y="14" font-size="12">{} (load average {:.1} at start){}</text>"#,
        report.machine,
        report.load_average_at_start[0],
        if rounds > 1 {
            format!("; each bar the median of {rounds} rounds")
        } else {
            String::new()
        }
    );
    // The median of a system's rounds of a workload, if it ran it.
    let plotted = |system: &str, workload: &str, value: fn(&Outcome) -> f64| {
        let mut values: Vec<f64> = report
            .outcomes
            .iter()
            .filter(|o| o.system == system && o.workload.name == workload)
            .map(value)
            .collect();
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then(|| median(&values))
    };
    let panels: [Panel; 2] = [
        (
            "records/s (higher is better)",
            |o| o.publish.records_per_second,
            "",
        ),
        (
            "publish p99, ms (lower is better)",
            |o| o.publish_latency.p99_ms,
            " ms",
        ),
    ];
    for (panel_index, (title, value, unit)) in panels.iter().enumerate() {
        let left = label_width + panel_index as f64 * (panel_width + 40.0);
        let max = systems
            .iter()
            .flat_map(|system| {
                workloads
                    .iter()
                    .filter_map(move |workload| plotted(system, workload, *value))
            })
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let _ = writeln!(text, r#"<text x="{left}" y="36">{title}</text>"#);
        for (workload_index, workload) in workloads.iter().enumerate() {
            let top = 46.0 + workload_index as f64 * group_height;
            if panel_index == 0 {
                let _ = writeln!(
                    text,
                    r#"<text x="4" y="{}">{workload}</text>"#,
                    top + group_height / 2.0
                );
            }
            for (system_index, system) in systems.iter().enumerate() {
                let Some(shown) = plotted(system, workload, *value) else {
                    continue;
                };
                let y = top + system_index as f64 * bar_height;
                let length = shown / max * (panel_width - 70.0);
                let colour = colours[system_index % colours.len()];
                let _ = writeln!(
                    text,
                    r#"<rect x="{left}" y="{y}" width="{length:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{:.1}">{:.0}{unit}</text>"#,
                    bar_height - 2.0,
                    left + length + 3.0,
                    y + bar_height - 4.0,
                    shown
                );
            }
        }
    }
    let legend_y = height - 12.0;
    for (system_index, system) in systems.iter().enumerate() {
        let x = label_width + system_index as f64 * 150.0;
        let _ = writeln!(
            text,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{legend_y}">{system}</text>"#,
            legend_y - 9.0,
            colours[system_index % colours.len()],
            x + 14.0
        );
    }
    text.push_str("</svg>\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::NodeUse;
    use crate::report::{Latency, Throughput};
    use std::time::Duration;

    #[test]
    fn disk_activity_sums_written_and_discarded_sectors_of_every_device() {
        let before = parse_diskstats(
            "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
             254       0 vda 1154850 16677 37545202 4002152 6773105 2221326 1000 3830732 0 \
             1097648 8307851 604616 159 4000 431229 3761 43737\n",
        )
        .unwrap();
        assert_eq!(before.written_bytes, 1000 * 512);
        assert_eq!(before.discarded_bytes, 4000 * 512);
        let written = |sectors: u64, discarded: u64| DiskActivity {
            written_bytes: before.written_bytes + sectors * 512,
            discarded_bytes: before.discarded_bytes + discarded * 512,
        };
        assert!(written(100, 0).is_quiet_after(before));
        assert!(!written(4096, 0).is_quiet_after(before));
        assert!(!written(0, 8).is_quiet_after(before));
        // An older kernel's lines without discard fields count no discards.
        let old = parse_diskstats("254 0 vda 1 2 3 4 5 6 77 8 9 10 11\n").unwrap();
        assert_eq!((old.written_bytes, old.discarded_bytes), (77 * 512, 0));
        assert_eq!(parse_diskstats(""), None);
    }

    fn outcome(system: &str, workload: &str, records_per_second: f64, p99_ms: f64) -> Outcome {
        let workload = Workload::parse(&format!(
            "name = \"{workload}\"\nreplication_factor = 1\npartitions = 1\nrecord_bytes = 1000\n\
             producers = 1\nconsumers = 1\nwarmup_s = 0\nduration_s = 1\n"
        ))
        .unwrap();
        let latency = Latency {
            p50_ms: p99_ms / 2.0,
            p99_ms,
            p999_ms: p99_ms,
            max_ms: p99_ms,
            samples: 1,
        };
        Outcome {
            system: system.into(),
            durability: format!("{system} durability"),
            workload,
            target_rate: 0,
            publish: Throughput::new(records_per_second as u64, 1000, Duration::from_secs(1)),
            publish_latency: latency,
            send_lag: None,
            consume: Throughput::new(0, 1000, Duration::from_secs(1)),
            end_to_end_latency: latency,
            records_sent: 0,
            records_acknowledged: 0,
            records_consumed: 0,
            nodes: vec![NodeUse::default()],
            client_cpu_cores: 0.0,
            load_average_before: [0.0; 3],
            load_average_after: [0.0; 3],
            machine: String::new(),
        }
    }

    #[test]
    fn rounds_pair_each_run_with_the_peer_run_of_its_round_and_report_the_median() {
        // Two workloads per round, as bench-compare runs them.
        let outcomes = vec![
            outcome("cairn", "a", 100.0, 1.0),
            outcome("cairn-kafka", "a", 50.0, 2.0),
            outcome("cairn", "b", 10.0, 1.0),
            outcome("cairn-kafka", "b", 10.0, 1.0),
            outcome("cairn", "a", 90.0, 1.0),
            outcome("cairn-kafka", "a", 90.0, 4.0),
            outcome("cairn", "b", 10.0, 1.0),
            outcome("cairn-kafka", "b", 10.0, 1.0),
            outcome("cairn", "a", 80.0, 1.0),
            outcome("cairn-kafka", "a", 100.0, 1.0),
        ];
        let ratios = ratios(&outcomes, &["cairn", "cairn-kafka"]);
        let values: Vec<f64> = ratios
            .iter()
            .filter(|r| r.workload == "a")
            .map(|r| r.records_per_second)
            .collect();
        assert_eq!(values, vec![2.0, 1.0, 0.8]);
        let report = SuiteReport {
            machine: "m".into(),
            load_average_at_start: [1.0, 2.0, 3.0],
            outcomes,
            ratios,
            failures: Vec::new(),
        };
        let text = markdown(&report);
        let line = "a, over cairn-kafka, 3 rounds: records/s median 1.00x (0.80x, 1.00x, 2.00x); \
                    publish p99 median 0.50x (0.25x, 0.50x, 1.00x)";
        assert_eq!(text.matches(line).count(), 1, "{text}");
        assert_eq!(
            text.matches("b, over cairn-kafka, 2 rounds").count(),
            1,
            "{text}"
        );
        // The chart shows each system's median round, not its first.
        let picture = svg(&report);
        assert!(
            picture.contains("each bar the median of 3 rounds"),
            "{picture}"
        );
        assert!(picture.contains(">90</text>"), "{picture}");
        assert!(!picture.contains(">50</text>"), "{picture}");
    }

    #[test]
    fn ratios_divide_the_first_system_by_each_peer_per_workload() {
        let outcomes = vec![
            outcome("cairn", "a", 60_000.0, 10.0),
            outcome("nats", "a", 20_000.0, 40.0),
            outcome("cairn", "b", 1_000.0, 1.0),
        ];
        let ratios = ratios(&outcomes, &["cairn", "nats"]);
        assert_eq!(ratios.len(), 1, "b has no peer figure: {ratios:?}");
        assert_eq!(ratios[0].records_per_second, 3.0);
        assert_eq!(ratios[0].publish_p99, 0.25);
        let report = SuiteReport {
            machine: "m".into(),
            load_average_at_start: [1.0, 2.0, 3.0],
            outcomes,
            ratios,
            failures: vec![Failure {
                system: "nats".into(),
                workload: "b".into(),
                error: "boom".into(),
            }],
        };
        let text = markdown(&report);
        assert!(
            text.contains("| a | cairn / nats | 3.00x | 0.25x |"),
            "{text}"
        );
        assert!(text.contains("- nats: nats durability"), "{text}");
        assert!(text.contains("b on nats: boom"), "{text}");
        assert!(!text.contains("Send lag"), "no run was paced: {text}");
        let picture = svg(&report);
        assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
        assert_eq!(picture.matches("<rect x=").count(), 3 * 2 + 2, "{picture}");
    }

    #[test]
    fn paced_runs_report_their_send_lag() {
        let mut paced = outcome("cairn", "half", 500.0, 4.0);
        paced.send_lag = Some(Latency {
            p50_ms: 0.8,
            p99_ms: 2.1,
            p999_ms: 3.7,
            max_ms: 10.4,
            samples: 500,
        });
        let report = SuiteReport {
            machine: "m".into(),
            load_average_at_start: [1.0, 2.0, 3.0],
            outcomes: vec![outcome("cairn", "max", 1_000.0, 9.0), paced],
            ratios: Vec::new(),
            failures: Vec::new(),
        };
        let text = markdown(&report);
        assert!(
            text.contains("| half | cairn | 0.80 | 2.10 | 3.70 | 10.40 |"),
            "{text}"
        );
        assert_eq!(text.matches("| max | cairn |").count(), 1, "{text}");
    }

    #[test]
    fn a_referenced_workload_is_loaded_from_the_folder_and_runs_first() {
        let folder = tempfile::tempdir().unwrap();
        let common = "replication_factor = 1\npartitions = 1\nrecord_bytes = 100\n\
                      producers = 1\nconsumers = 1\nwarmup_s = 0\nduration_s = 1\n";
        std::fs::write(
            folder.path().join("max.toml"),
            format!("name = \"max\"\n{common}"),
        )
        .unwrap();
        let half = folder.path().join("half.toml");
        std::fs::write(
            &half,
            format!(
                "name = \"half\"\n{common}rate_of_max = {{ workload = \"max\", fraction = 0.5 }}\n"
            ),
        )
        .unwrap();
        let names: Vec<String> = load_workloads(std::slice::from_ref(&half))
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["max", "half"]);
        std::fs::write(
            folder.path().join("max.toml"),
            format!("name = \"max\"\n{common}rate = 10\n"),
        )
        .unwrap();
        assert!(load_workloads(&[half])
            .unwrap_err()
            .contains("not a maximum-rate"));
    }
}
