//! The campaign's report: `report.json`, a readable `summary.md`, and `timeline.svg`
//! (throughput and latency of acknowledged writes per second, fault windows shaded).
//!
//! The picture is hand-written SVG: a plotting crate would add a dependency tree to a 2-core
//! CI build for two line charts and some rectangles.

use crate::checker::{AnomalyKind, CheckReport};
use crate::history::{Op, Status};
use crate::schedule::FaultKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One fault as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub kind: FaultKind,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Nodes (or, for a client crash, the client) it hit.
    pub targets: Vec<u32>,
    /// The planned fault and how it was resolved, in words.
    pub description: String,
}

/// Per-second figures of acknowledged writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub acked: u64,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    /// Wall-clock time of the history's 0 ms, to line it up with the nodes' logs.
    pub started_at_unix_ms: u64,
    pub nodes: u32,
    pub duration_s: u64,
    pub faults_requested: Vec<FaultKind>,
    pub network: String,
    pub operations: u64,
    pub faults: Vec<FaultWindow>,
    pub check: CheckReport,
    /// Acknowledged sends over all send attempts.
    pub availability_sends: f64,
    /// Seconds with at least one acknowledged send, over seconds of the faulty phase.
    pub availability_seconds: f64,
    pub timeline: Vec<Second>,
    pub notes: Vec<String>,
    /// Lost acknowledged writes were the measured outcome (`--expect-loss`), not a failure.
    #[serde(default)]
    pub expect_loss: bool,
}

impl Report {
    /// Acknowledged writes not there at the end: `lost` (never read, later offsets were),
    /// `unseen` (never read by anyone) and `forgotten` (read during the run, not by the final
    /// drain; checked in power campaigns). The three never count one write twice.
    pub fn lost_acknowledged(&self) -> u64 {
        [
            AnomalyKind::Lost,
            AnomalyKind::Unseen,
            AnomalyKind::Forgotten,
        ]
        .iter()
        .filter_map(|kind| self.check.anomalies.get(kind))
        .map(|group| group.count)
        .sum()
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Acknowledged writes per second of completion, with their latencies.
pub fn timeline(ops: &[Op], until_ms: u64) -> Vec<Second> {
    let mut latencies: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for second in 0..until_ms.div_ceil(1_000) {
        latencies.insert(second, Vec::new());
    }
    for op in ops {
        if let Op::Send {
            status: Status::Ok,
            invoke_ms,
            complete_ms,
            ..
        } = op
        {
            latencies
                .entry(complete_ms / 1_000)
                .or_default()
                .push(complete_ms.saturating_sub(*invoke_ms));
        }
    }
    latencies
        .into_iter()
        .map(|(second, mut values)| {
            values.sort_unstable();
            Second {
                second,
                acked: values.len() as u64,
                latency_p50_ms: percentile(&values, 0.5),
                latency_p99_ms: percentile(&values, 0.99),
                latency_max_ms: values.last().copied().unwrap_or(0),
            }
        })
        .collect()
}

/// Acknowledged over attempted sends, and the share of seconds before `until_ms` with an ack.
pub fn availability(ops: &[Op], timeline: &[Second], from_ms: u64, until_ms: u64) -> (f64, f64) {
    let (mut ok, mut all) = (0u64, 0u64);
    for op in ops {
        if let Op::Send { status, .. } = op {
            all += 1;
            if *status == Status::Ok {
                ok += 1;
            }
        }
    }
    let seconds: Vec<&Second> = timeline
        .iter()
        .filter(|second| {
            second.second * 1_000 >= from_ms && (second.second + 1) * 1_000 <= until_ms
        })
        .collect();
    let live = seconds.iter().filter(|second| second.acked > 0).count();
    (
        if all == 0 {
            0.0
        } else {
            ok as f64 / all as f64
        },
        if seconds.is_empty() {
            0.0
        } else {
            live as f64 / seconds.len() as f64
        },
    )
}

/// The readable summary.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let check = &report.check;
    let stat = |name: &str| check.stats.get(name).copied().unwrap_or(0);
    let _ = writeln!(out, "# Chaos campaign, seed {}\n", report.seed);
    let _ = writeln!(
        out,
        "{} nodes, {} s, faults {:?}, network: {}; history time 0 is {} ms after the Unix \
         epoch.\n",
        report.nodes,
        report.duration_s,
        report.faults_requested,
        report.network,
        report.started_at_unix_ms
    );
    let _ = writeln!(
        out,
        "- operations: {} (sends: {} acknowledged, {} indeterminate, {} failed; {} polls, {} \
         records read; {} commits acknowledged)",
        report.operations,
        stat("sends_ok"),
        stat("sends_info"),
        stat("sends_fail"),
        stat("polls_ok"),
        stat("records_read"),
        stat("commits_ok")
    );
    let _ = writeln!(
        out,
        "- availability: {:.1}% of sends acknowledged; {:.1}% of seconds with an acknowledgement",
        report.availability_sends * 100.0,
        report.availability_seconds * 100.0
    );
    let _ = writeln!(
        out,
        "- replicas compared: {} logs, {} offsets",
        stat("replica_logs"),
        stat("replica_offsets_compared")
    );
    if check.stats.contains_key("compacted_sends_ok") {
        let _ = writeln!(
            out,
            "- compacted topic: {} writes acknowledged ({} tombstones), {} records drained; \
             gone as expected: {} superseded writes, {} expired tombstones; {} replica offsets \
             compared",
            stat("compacted_sends_ok"),
            stat("compacted_tombstones_ok"),
            stat("compacted_records_read"),
            stat("compacted_acked_superseded_gone"),
            stat("compacted_tombstones_expired"),
            stat("compacted_replica_offsets_compared")
        );
    }
    if check.stats.contains_key("compaction_jobs") {
        let _ = writeln!(
            out,
            "- compactors (node logs): {} jobs ({} failed), {} batches rewritten, {} bytes \
             removed",
            stat("compaction_jobs"),
            stat("compaction_jobs_failed"),
            stat("compaction_batches_rewritten"),
            stat("compaction_bytes_removed")
        );
    }
    let mut by_kind: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for fault in &report.faults {
        *by_kind.entry(fault.kind).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "- fault windows: {} ({})",
        report.faults.len(),
        by_kind
            .iter()
            .map(|(kind, count)| format!("{kind:?} {count}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "- lost acknowledged writes (lost + unseen + forgotten): {} of {}{}",
        report.lost_acknowledged(),
        stat("sends_ok"),
        if report.expect_loss {
            " (--expect-loss: measured, not a failure)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "\n## Anomalies: {}\n", check.anomaly_count());
    let _ = writeln!(out, "| kind | count |\n|---|---|");
    for kind in AnomalyKind::ALL {
        let count = check
            .anomalies
            .get(&kind)
            .map(|group| group.count)
            .unwrap_or(0);
        let _ = writeln!(out, "| {} | {count} |", kind.name());
    }
    for (kind, group) in &check.anomalies {
        let _ = writeln!(out, "\n### {} ({})\n", kind.name(), group.count);
        for example in &group.examples {
            let _ = writeln!(out, "- {example}");
        }
    }
    if stat("duplicates_without_idempotence") > 0 {
        let _ = writeln!(
            out,
            "\n{} values of producers without idempotence were written twice (expected on \
             retries; not an anomaly).",
            stat("duplicates_without_idempotence")
        );
    }
    if !report.notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for note in &report.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    let _ = writeln!(
        out,
        "\n## Faults\n\n| start s | end s | kind | targets | what |\n|---|---|---|---|---|"
    );
    for fault in &report.faults {
        let _ = writeln!(
            out,
            "| {:.1} | {:.1} | {:?} | {:?} | {} |",
            fault.start_ms as f64 / 1_000.0,
            fault.end_ms as f64 / 1_000.0,
            fault.kind,
            fault.targets,
            fault.description
        );
    }
    out
}

fn color(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#e41a1c",
        FaultKind::Pause => "#ff7f00",
        FaultKind::Partition => "#377eb8",
        FaultKind::Clock => "#984ea3",
        FaultKind::Client => "#4daf4a",
        FaultKind::Hostile => "#a65628",
        FaultKind::Retention => "#f781bf",
        FaultKind::Compaction => "#999999",
        FaultKind::Power => "#000000",
    }
}

/// The timeline picture: acknowledged writes per second (top) and their p50/p99 latency
/// (bottom, milliseconds), fault windows shaded by kind.
pub fn timeline_svg(report: &Report) -> String {
    let (width, height) = (1100.0, 520.0);
    let (left, right) = (70.0, 20.0);
    let plot_width = width - left - right;
    let seconds = report.timeline.len().max(1) as f64;
    let x = |second: f64| left + plot_width * second / seconds;
    let panels = [(40.0, 200.0), (290.0, 200.0)];
    let max_acked = report
        .timeline
        .iter()
        .map(|second| second.acked)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_latency = report
        .timeline
        .iter()
        .map(|second| second.latency_p99_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"20\" font-size=\"14\">Chaos campaign seed {} ({} nodes): \
         acknowledged writes per second and latency, fault windows shaded</text>",
        report.seed, report.nodes
    );
    for (top, panel_height) in panels {
        for fault in &report.faults {
            let start = x(fault.start_ms as f64 / 1_000.0);
            let end = x((fault.end_ms.max(fault.start_ms + 300)) as f64 / 1_000.0);
            let _ = writeln!(
                svg,
                "<rect x=\"{start:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{panel_height}\" \
                 fill=\"{}\" fill-opacity=\"0.18\"/>",
                end - start,
                color(fault.kind)
            );
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_width}\" height=\"{panel_height}\" \
             fill=\"none\" stroke=\"#444\"/>"
        );
    }
    let line = |values: Vec<f64>, max: f64, (top, panel_height): (f64, f64), stroke: &str| {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(index, value)| {
                format!(
                    "{:.1},{:.1}",
                    x(index as f64 + 0.5),
                    top + panel_height - panel_height * (value / max).min(1.0)
                )
            })
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        )
    };
    let acked: Vec<f64> = report.timeline.iter().map(|s| s.acked as f64).collect();
    let p50: Vec<f64> = report
        .timeline
        .iter()
        .map(|s| s.latency_p50_ms as f64)
        .collect();
    let p99: Vec<f64> = report
        .timeline
        .iter()
        .map(|s| s.latency_p99_ms as f64)
        .collect();
    let _ = writeln!(svg, "{}", line(acked, max_acked, panels[0], "#222"));
    let _ = writeln!(svg, "{}", line(p50, max_latency, panels[1], "#1b9e77"));
    let _ = writeln!(svg, "{}", line(p99, max_latency, panels[1], "#d95f02"));
    // Axes labels.
    let _ = writeln!(
        svg,
        "<text x=\"5\" y=\"{}\">{max_acked:.0}/s</text><text x=\"5\" y=\"240\">0</text>\
         <text x=\"{left}\" y=\"{}\">acknowledged writes per second</text>",
        panels[0].0 + 10.0,
        panels[0].0 - 4.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"5\" y=\"{}\">{max_latency:.0} ms</text><text x=\"5\" y=\"490\">0</text>\
         <text x=\"{left}\" y=\"{}\">latency of acknowledged writes: p50 (green), p99 \
         (orange)</text>",
        panels[1].0 + 10.0,
        panels[1].0 - 4.0
    );
    let mut tick = 0.0;
    let step = if seconds > 200.0 { 30.0 } else { 10.0 };
    while tick <= seconds {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"505\" text-anchor=\"middle\">{tick:.0}s</text>",
            x(tick)
        );
        tick += step;
    }
    let kinds = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Clock,
        FaultKind::Client,
        FaultKind::Hostile,
    ];
    for (index, kind) in kinds.iter().enumerate() {
        let legend_x = left + 420.0 + index as f64 * 110.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{legend_x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\" \
             fill-opacity=\"0.4\"/><text x=\"{}\" y=\"{}\">{}</text>",
            panels[1].0 - 15.0,
            color(*kind),
            legend_x + 16.0,
            panels[1].0 - 4.0,
            format!("{kind:?}").to_lowercase()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_send(invoke_ms: u64, complete_ms: u64) -> Op {
        Op::Send {
            process: 1,
            idempotent: true,
            key: "k".into(),
            value: format!("v{invoke_ms}"),
            invoke_ms,
            complete_ms,
            status: Status::Ok,
            partition: Some(0),
            offset: Some(invoke_ms),
            error: None,
        }
    }

    #[test]
    fn the_timeline_counts_acks_per_second_with_their_latency() {
        let ops = vec![ok_send(100, 110), ok_send(200, 300), ok_send(2_100, 2_150)];
        let timeline = timeline(&ops, 3_000);
        assert_eq!(timeline.len(), 3);
        assert_eq!(timeline[0].acked, 2);
        assert_eq!(timeline[0].latency_max_ms, 100);
        assert_eq!(timeline[1].acked, 0);
        assert_eq!(timeline[2].latency_p50_ms, 50);
        let (sends, seconds) = availability(&ops, &timeline, 0, 3_000);
        assert_eq!(sends, 1.0);
        assert!((seconds - 2.0 / 3.0).abs() < 1e-9);
        let report = Report {
            seed: 1,
            started_at_unix_ms: 0,
            nodes: 3,
            duration_s: 3,
            faults_requested: vec![FaultKind::Kill],
            network: "namespace".into(),
            operations: 3,
            faults: vec![FaultWindow {
                kind: FaultKind::Kill,
                start_ms: 1_000,
                end_ms: 2_000,
                targets: vec![2],
                description: "kill node 2".into(),
            }],
            check: CheckReport::default(),
            availability_sends: sends,
            availability_seconds: seconds,
            timeline,
            notes: vec![],
            expect_loss: false,
        };
        let svg = timeline_svg(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("fill-opacity=\"0.18\"").count(), 2);
        let summary = summary(&report);
        assert!(summary.contains("| lost | 0 |"), "{summary}");
        assert!(
            summary.contains("lost acknowledged writes (lost + unseen + forgotten): 0 of"),
            "{summary}"
        );
        assert!(summary.contains("fault windows: 1 (kill 1)"), "{summary}");
        assert!(!summary.contains("compacted topic:"), "{summary}");
        // A campaign with the compacted topic says what its compactors did.
        let mut compacted = report;
        for (stat, count) in [
            ("compacted_sends_ok", 70),
            ("compacted_tombstones_ok", 9),
            ("compaction_jobs", 12),
            ("compaction_bytes_removed", 4_096),
        ] {
            compacted.check.bump(stat, count);
        }
        let summary = super::summary(&compacted);
        assert!(
            summary.contains("compacted topic: 70 writes acknowledged (9 tombstones)"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "compactors (node logs): 12 jobs (0 failed), 0 batches rewritten, \
                 4096 bytes removed"
            ),
            "{summary}"
        );
    }
}
