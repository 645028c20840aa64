//! One campaign end to end: start the nodes, create the topic, run the workload while the
//! nemesis applies the seed's schedule, heal, drain, stop the nodes, read every replica's
//! log, check, report.
//!
//! Files in the output directory: `config.json`, `schedule.json` (the plan), `faults.jsonl`
//! (each fault window as it happened), `history.jsonl`, `replicas.json` (every replica's log
//! and the final high watermarks), `report.json`, `summary.md`, `timeline.svg`,
//! `node-<i>.log`, each node's data directory under `nodes/`, and `cairn`, a link to (or copy
//! of) the node binary the campaign ran.

use crate::checker::{self, ReplicaLog, Replicas};
use crate::history::read_history;
use crate::net::{self, NetworkMode};
use crate::nodes::{node_ip, Cluster, ClusterSpec};
use crate::power::Disks;
use crate::report::{self, FaultWindow, Report};
use crate::schedule::{self, Fault, FaultKind, PlanConfig, Planned, Rng, Shape, Targets};
use crate::workload::{self, Control, Recorder, WorkloadConfig, TOPIC};
use cairn_client::{Admin, ClientConfig, TopicConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a campaign is run with (written to `config.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignConfig {
    pub seed: u64,
    pub nodes: u32,
    pub duration_s: u64,
    pub faults: Vec<FaultKind>,
    pub out: PathBuf,
    pub binary: PathBuf,
    pub partitions: u32,
    pub replication_factor: u32,
    pub producers: u32,
    pub group_consumers: u32,
    pub manual_readers: u32,
    pub rate_per_producer: u32,
    pub port: u16,
    /// Largest clock rate deviation from 1 for clock faults.
    pub clock_rate_max_deviation: f64,
    /// Extra `cairn node` arguments.
    pub node_args: Vec<String>,
    /// The nodes' `storage.durability`, when the campaign sets it (it is in `node_args`).
    #[serde(default)]
    pub durability: Option<String>,
    /// Lost acknowledged writes are the measured outcome (a `power` campaign in a mode that
    /// does not fsync), not a failure; the summary states how many.
    #[serde(default)]
    pub expect_loss: bool,
    /// The `cairn-powerfs` binary for `power` faults; default: beside this program.
    #[serde(default)]
    pub powerfs: Option<PathBuf>,
    /// How long the drain reader may go without reading anything new before it gives up on
    /// the high watermarks it has not reached; it stops in any case after four times this.
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: u64,
    /// Bytes of each produced value, padded (0: the unique id alone, a few bytes).
    #[serde(default)]
    pub value_bytes: u32,
}

fn default_drain_timeout_s() -> u64 {
    90
}

/// The summary figures a caller needs.
pub struct Outcome {
    pub report: Report,
}

/// Replica logs and final high watermarks as saved for `cairn-chaos check`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedReplicas {
    pub replication_factor: usize,
    pub high_watermarks: BTreeMap<u32, u64>,
    pub logs: Vec<ReplicaLog>,
}

impl SavedReplicas {
    pub fn to_replicas(&self) -> Replicas {
        Replicas {
            logs: self.logs.clone(),
            replication_factor: self.replication_factor,
            high_watermarks: self.high_watermarks.clone(),
        }
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|error| error.to_string())?;
    std::fs::write(path, text).map_err(|error| format!("write {}: {error}", path.display()))
}

/// The clock rate deviation that keeps any two nodes' rates within the nodes' configured
/// drift bound (`clock_drift_max_ppm`): rates in `[1 - h, 1 + h]` differ by a factor of at most
/// `(1 + h) / (1 - h)`, which must stay below `1 / (1 - drift)`, so `h < drift / (2 - drift)`;
/// 80% of that leaves a margin.
pub fn safe_clock_deviation(clock_drift_max_ppm: u64) -> f64 {
    let drift = clock_drift_max_ppm as f64 / 1e6;
    0.8 * drift / (2.0 - drift)
}

/// Runs a campaign in `mode`; returns its report (also written to the output directory).
pub fn run(config: &CampaignConfig, mode: NetworkMode) -> Result<Outcome, String> {
    let out = &config.out;
    // A previous campaign's node data would make this one restart that cluster.
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "{} is not empty: remove it or choose another --out",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(|error| format!("create {}: {error}", out.display()))?;
    write_json(&out.join("config.json"), config)?;
    let mut notes = Vec::new();
    let mut kinds = config.faults.clone();
    if mode == NetworkMode::Host && kinds.contains(&FaultKind::Partition) {
        kinds.retain(|kind| *kind != FaultKind::Partition);
        notes
            .push("no network namespace could be made: partition faults were left out".to_string());
    }
    if kinds.contains(&FaultKind::Clock) && crate::nodes::faketime_library().is_none() {
        kinds.retain(|kind| *kind != FaultKind::Clock);
        notes.push("libfaketime is not installed: clock faults were left out".to_string());
    }
    // Power faults need every node's data directory on its own cairn-powerfs mount from the
    // start. Where that cannot be done the campaign fails rather than run without them: a
    // power campaign that cut nothing would pass for proof of durability.
    let mut disks = None;
    if kinds.contains(&FaultKind::Power) {
        let data_dirs: Vec<PathBuf> = (1..=config.nodes)
            .map(|node| crate::nodes::data_dir_in(out, node))
            .collect();
        let mounted = config
            .powerfs
            .clone()
            .or_else(crate::power::powerfs_binary)
            .ok_or_else(|| "no cairn-powerfs binary beside cairn-chaos".to_string())
            .and_then(|binary| Disks::mount_all(binary, out, &data_dirs));
        match mounted {
            Ok(mounted) => disks = Some(mounted),
            Err(error) => {
                return Err(format!(
                    "power faults need a cairn-powerfs mount per node (root, /dev/fuse): {error}"
                ))
            }
        }
    }
    let workload_config = WorkloadConfig {
        bootstrap: String::new(),
        producers: config.producers,
        group_consumers: config.group_consumers,
        manual_readers: config.manual_readers,
        rate_per_producer: config.rate_per_producer,
        value_bytes: config.value_bytes,
        records_per_producer_max: u64::from(config.rate_per_producer) * config.duration_s * 2,
    };
    let duration_ms = config.duration_s * 1_000;
    // The last quarter (at most 30 s, at least 5 s) is quiet: faults healed, writes settle.
    let quiet_tail_ms = (duration_ms / 4).clamp(5_000, 30_000);
    let plan = schedule::plan(&PlanConfig {
        seed: config.seed,
        nodes: config.nodes,
        kinds: kinds.clone(),
        warmup_ms: 5_000,
        faults_until_ms: duration_ms.saturating_sub(quiet_tail_ms),
        clock_rate_max_deviation: config.clock_rate_max_deviation,
        clients: workload_config.clients(),
    });
    write_json(&out.join("schedule.json"), &plan)?;

    // The nodes run a link to the binary as it is now, so a rebuild during the campaign (the
    // broken-build script swaps target/debug/cairn) cannot change what a restart runs.
    let binary = out.join("cairn");
    if std::fs::hard_link(&config.binary, &binary).is_err() {
        std::fs::copy(&config.binary, &binary)
            .map_err(|error| format!("copy {}: {error}", config.binary.display()))?;
    }
    let spec = ClusterSpec {
        binary,
        nodes: config.nodes,
        port: config.port,
        dir: out.clone(),
        extra_args: config.node_args.clone(),
    };
    let workload_config = WorkloadConfig {
        bootstrap: spec.bootstrap(),
        ..workload_config
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("tokio runtime: {error}"))?;
    // Ctrl-C or SIGTERM: kill the nodes and exit. In the namespace the campaign is process 1,
    // which ignores signals it has no handler for, and `unshare` leaves them to it.
    runtime.spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("cairn-chaos: interrupted; killing the nodes");
        crate::nodes::kill_all_running();
        std::process::exit(130);
    });
    let mut cluster = Cluster::new(spec.clone());
    for node in 1..=config.nodes {
        cluster.start(node, None)?;
    }
    let late = cluster.wait_ready(Duration::from_secs(60));
    if !late.is_empty() {
        return Err(format!(
            "nodes {late:?} were not ready within 60 s (see node-*.log in {})",
            out.display()
        ));
    }
    let admin = runtime.block_on(async {
        let client = ClientConfig::new(&workload_config.bootstrap)?
            .request_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1));
        Admin::new(client)
    });
    let admin = admin.map_err(|error| format!("admin client: {error}"))?;
    create_topic(&runtime, &admin, config)?;
    let retention_on = kinds.contains(&FaultKind::Retention);
    if retention_on {
        let replication = config.replication_factor.min(config.nodes) as u16;
        runtime.block_on(crate::retention::create(&admin, replication))?;
    }
    // After the retention topic, whose topic id `retained_logs` expects second-lowest.
    let compaction_on = kinds.contains(&FaultKind::Compaction);
    if compaction_on {
        let replication = config.replication_factor.min(config.nodes) as u16;
        runtime.block_on(crate::compaction::create(&admin, replication))?;
    }

    // The workload.
    let start = Instant::now();
    let started_at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    let (recorder, writer) = {
        let _guard = runtime.enter();
        Recorder::start(&out.join("history.jsonl"), start)
            .map_err(|error| format!("history.jsonl: {error}"))?
    };
    let (stop_producing_tx, stop_producing) = tokio::sync::watch::channel(false);
    let (stop_all_tx, stop_all) = tokio::sync::watch::channel(false);
    let (crash_tx, crashes) =
        tokio::sync::watch::channel(vec![0u32; workload_config.clients() as usize]);
    let control = Control {
        stop_producing,
        stop_all,
        crashes,
    };
    let mut producers = Vec::new();
    let mut others = Vec::new();
    for client in 0..workload_config.clients() {
        let (config, recorder, control) =
            (workload_config.clone(), recorder.clone(), control.clone());
        if client < workload_config.producers {
            producers.push(runtime.spawn(workload::run_producer(
                client,
                client % 2 == 0,
                config,
                recorder,
                control,
            )));
        } else if client < workload_config.producers + workload_config.group_consumers {
            others.push(runtime.spawn(workload::run_group_consumer(
                client, config, recorder, control,
            )));
        } else {
            others.push(runtime.spawn(workload::run_manual_reader(
                client, config, recorder, control,
            )));
        }
    }
    let retained_writer = retention_on.then(|| {
        runtime.spawn(crate::retention::run_writer(
            workload_config.bootstrap.clone(),
            control.stop_producing.clone(),
        ))
    });
    let compacted_writer = compaction_on.then(|| {
        runtime.spawn(crate::compaction::run_writer(
            workload_config.bootstrap.clone(),
            recorder.clone(),
            control.stop_producing.clone(),
            Duration::from_millis(duration_ms / 2),
        ))
    });
    others.push(runtime.spawn(workload::run_group_watcher(
        workload_config.clone(),
        recorder.clone(),
        control.clone(),
    )));

    // The nemesis, on this thread.
    let mut faults_file = std::fs::File::create(out.join("faults.jsonl"))
        .map_err(|error| format!("faults.jsonl: {error}"))?;
    let mut windows = Vec::new();
    let mut nemesis = Nemesis {
        cluster: &mut cluster,
        runtime: &runtime,
        admin: &admin,
        mode,
        seed: config.seed,
        crash_tx: &crash_tx,
        hostile: None,
        disks: disks.as_mut(),
    };
    for (index, planned) in plan.iter().enumerate() {
        sleep_until(start, planned.start_ms);
        let start_ms = start.elapsed().as_millis() as u64;
        let applied = nemesis.apply(index, planned);
        sleep_until(start, planned.end_ms);
        nemesis.heal(planned, &applied);
        let window = FaultWindow {
            kind: planned.fault.kind(),
            start_ms,
            end_ms: start.elapsed().as_millis() as u64,
            targets: applied.targets.clone(),
            description: applied.description.clone(),
        };
        eprintln!(
            "cairn-chaos: {:>6.1}s-{:>6.1}s {}",
            window.start_ms as f64 / 1e3,
            window.end_ms as f64 / 1e3,
            window.description
        );
        let line = serde_json::to_string(&window).expect("a window serialises");
        let _ = writeln!(faults_file, "{line}");
        windows.push(window);
    }
    nemesis.heal_everything();
    let faults_until_ms = start.elapsed().as_millis() as u64;
    sleep_until(start, duration_ms);

    // Stop writing, wait for outstanding sends, drain, stop everything.
    let _ = stop_producing_tx.send(true);
    runtime.block_on(async {
        for producer in producers {
            let _ = tokio::time::timeout(Duration::from_secs(30), producer).await;
        }
    });
    // The compacted topic's drain starts as soon as its writer stopped, beside the main
    // drain: the tombstones of the last `delete.retention.ms` must still be there. A task
    // that overruns is aborted, so no clone of the recorder outlives it.
    let compacted_drain = compacted_writer.map(|writer| {
        runtime.block_on(async {
            let abort = writer.abort_handle();
            if tokio::time::timeout(Duration::from_secs(15), writer)
                .await
                .is_err()
            {
                abort.abort();
            }
        });
        runtime.spawn(crate::compaction::drain(
            workload_config.bootstrap.clone(),
            recorder.clone(),
            Duration::from_secs(config.drain_timeout_s),
        ))
    });
    let drained = runtime.block_on(workload::drain(
        &workload_config,
        &recorder,
        config.partitions,
        Duration::from_secs(config.drain_timeout_s),
        Duration::from_secs(4 * config.drain_timeout_s),
    ));
    if !drained.behind.is_empty() {
        let behind: Vec<String> = drained
            .behind
            .iter()
            .map(|(partition, (at, hw))| format!("{partition} at {at} of {hw}"))
            .collect();
        notes.push(format!(
            "the final drain stopped before the high watermarks of partitions [{}] (it read \
             nothing new for {} s, or ran {} s): what it did not read is counted as forgotten",
            behind.join(", "),
            config.drain_timeout_s,
            4 * config.drain_timeout_s
        ));
    }
    let high_watermarks = drained.high_watermarks;
    let retained = retained_writer.map(|writer| {
        runtime.block_on(async {
            let outcome = tokio::time::timeout(Duration::from_secs(30), writer)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            (outcome, crate::retention::high_watermark(&admin).await)
        })
    });
    if let Some(drain) = compacted_drain {
        runtime.block_on(async {
            let abort = drain.abort_handle();
            let limit = Duration::from_secs(config.drain_timeout_s + 10);
            if tokio::time::timeout(limit, drain).await.is_err() {
                abort.abort();
            }
        });
    }
    let _ = stop_all_tx.send(true);
    runtime.block_on(async {
        for task in others {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    });
    drop(recorder);
    drop(control);
    let written = runtime
        .block_on(writer)
        .map_err(|error| format!("history writer: {error}"))?
        .map_err(|error| format!("history.jsonl: {error}"))?;
    let run_ms = start.elapsed().as_millis() as u64;
    for node in 1..=config.nodes {
        if !cluster.terminate(node) {
            notes.push(format!("node {node} did not exit within 15 s of SIGTERM"));
        }
    }
    drop(cluster);
    runtime.shutdown_timeout(Duration::from_secs(2));

    // Every replica's log of the campaign's topic.
    let mut saved = SavedReplicas {
        replication_factor: config.replication_factor.min(config.nodes) as usize,
        high_watermarks,
        logs: Vec::new(),
    };
    let mut stored = Vec::new();
    for node in 1..=config.nodes {
        let logs = crate::replicas::read_node_batches(node, &spec.data_dir(node).join("store"));
        match logs {
            Ok(logs) => stored.push(logs),
            // A power cut may leave a store the node itself refuses to open: that node then
            // holds nothing, which the checker counts against the majority rule.
            Err(error) if disks.is_some() => {
                notes.push(format!(
                    "node {node}'s store cannot be read after the power cuts: {error}"
                ));
                stored.push(Vec::new());
            }
            Err(error) => return Err(error),
        }
    }
    // Replicas compacted to different points compare after the largest decision.
    crate::replicas::settle_compaction(&mut stored)?;
    let per_node = stored
        .into_iter()
        .map(|logs| {
            logs.into_iter()
                .map(crate::replicas::replica_log)
                .collect::<Result<Vec<_>, String>>()
        })
        .collect::<Result<Vec<_>, String>>()?;
    // The campaign's topic was created before anything else (the consumer groups' internal
    // topic comes with the first group request), so it has the lowest topic id.
    let topic_id = per_node.iter().flatten().map(|(topic, _)| *topic).min();
    let retained_logs = crate::retention::retained_logs(&per_node);
    let compacted_logs = crate::compaction::compacted_logs(&per_node, retention_on);
    for logs in per_node {
        for (topic, log) in logs {
            if Some(topic) == topic_id {
                saved.logs.push(log);
            }
        }
    }
    write_json(&out.join("replicas.json"), &saved)?;
    let power_on = disks.is_some();
    let capped = disks.as_ref().map(Disks::capped).unwrap_or_default();
    if let Some(mut disks) = disks {
        disks.unmount_all();
    }

    let ops = read_history(&out.join("history.jsonl")).map_err(|error| error.to_string())?;
    let mut check = checker::check(&ops, Some(&saved.to_replicas()));
    if power_on {
        checker::check_durable_at_end(&ops, &mut check);
    }
    if let Some((writer, high_watermark)) = &retained {
        crate::retention::check(
            writer,
            &retained_logs,
            saved.replication_factor,
            *high_watermark,
            &mut check,
        );
    }
    if compaction_on {
        crate::compaction::check_replicas(
            &ops,
            &compacted_logs,
            saved.replication_factor,
            &mut check,
        );
        let stats = crate::compaction::compactor_stats(out, config.nodes, &mut check);
        eprintln!(
            "cairn-chaos: compactors: {} jobs ({} failed), {} batches rewritten, {} bytes \
             removed",
            stats.jobs, stats.jobs_failed, stats.batches_rewritten, stats.bytes_removed
        );
    }
    let timeline = report::timeline(&ops, run_ms);
    let (availability_sends, availability_seconds) =
        report::availability(&ops, &timeline, 5_000, faults_until_ms);
    let report = Report {
        seed: config.seed,
        started_at_unix_ms,
        nodes: config.nodes,
        duration_s: config.duration_s,
        faults_requested: config.faults.clone(),
        network: match mode {
            NetworkMode::Namespace => "private namespace (partitions possible)".to_string(),
            NetworkMode::Host => "host loopback (process faults only)".to_string(),
        },
        operations: written,
        faults: windows,
        check,
        availability_sends,
        availability_seconds,
        timeline,
        notes,
        expect_loss: config.expect_loss,
    };
    write_outputs(out, &report)?;
    if !capped.is_empty() {
        return Err(format!(
            "cairn-powerfs of nodes {capped:?} held {} MiB of unsynced writes and refused more \
             (ENOSPC): not a valid power-loss run (see powerfs-*.log; report in {})",
            crate::power::PENDING_BYTES_MAX >> 20,
            out.display()
        ));
    }
    Ok(Outcome { report })
}

/// Writes `report.json`, `summary.md` and `timeline.svg`.
pub fn write_outputs(out: &Path, report: &Report) -> Result<(), String> {
    write_json(&out.join("report.json"), report)?;
    std::fs::write(out.join("summary.md"), report::summary(report))
        .map_err(|error| format!("summary.md: {error}"))?;
    std::fs::write(out.join("timeline.svg"), report::timeline_svg(report))
        .map_err(|error| format!("timeline.svg: {error}"))
}

fn sleep_until(start: Instant, at_ms: u64) {
    let at = start + Duration::from_millis(at_ms);
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn create_topic(
    runtime: &tokio::runtime::Runtime,
    admin: &Admin,
    config: &CampaignConfig,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = runtime.block_on(admin.create_topic(
            TOPIC,
            config.partitions,
            Some(config.replication_factor.min(config.nodes) as u16),
            TopicConfig::default(),
        ));
        match created {
            Ok(_) => break,
            Err(error)
                if matches!(
                    error.api_error(),
                    Some(cairn_client::ApiError::TopicAlreadyExists { .. })
                ) =>
            {
                break
            }
            Err(error) if Instant::now() > deadline => {
                return Err(format!("cannot create topic {TOPIC}: {error}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    // Wait until every partition has a leader, so the workload starts on a formed cluster.
    while Instant::now() < deadline {
        if let Ok(Ok(described)) = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(3), admin.describe_topic(TOPIC)).await
        }) {
            if described
                .partitions
                .iter()
                .all(|partition| partition.leader.is_some())
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "topic {TOPIC} has partitions without a leader after 60 s"
    ))
}

/// What applying a fault did.
struct Applied {
    targets: Vec<u32>,
    description: String,
}

struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    runtime: &'a tokio::runtime::Runtime,
    admin: &'a Admin,
    mode: NetworkMode,
    seed: u64,
    crash_tx: &'a tokio::sync::watch::Sender<Vec<u32>>,
    /// The forging client of the current `hostile` fault, if one runs.
    hostile: Option<crate::hostile::Hostile>,
    /// The nodes' cairn-powerfs disks, when power faults are on.
    disks: Option<&'a mut Disks>,
}

impl Nemesis<'_> {
    /// The nodes leading the most partitions of the topic, at most a minority; a node from
    /// the seed when the leaders cannot be learned.
    fn leaders(&self, index: usize) -> Vec<u32> {
        let nodes = self.cluster.spec.nodes;
        let minority = ((nodes - 1) / 2).max(1) as usize;
        let described = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), self.admin.describe_topic(TOPIC)).await
        });
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        if let Ok(Ok(described)) = described {
            for partition in &described.partitions {
                if let Some(leader) = partition.leader {
                    *counts.entry(leader.0).or_default() += 1;
                }
            }
        }
        let mut ranked: Vec<(usize, u32)> = counts
            .into_iter()
            .map(|(node, count)| (count, node))
            .collect();
        ranked.sort_by(|a, b| b.cmp(a));
        let mut leaders: Vec<u32> = ranked
            .into_iter()
            .take(minority)
            .map(|(_, node)| node)
            .filter(|node| (1..=nodes).contains(node))
            .collect();
        if leaders.is_empty() {
            let mut rng = Rng::new(self.seed ^ index as u64);
            leaders.push(rng.range(1, u64::from(nodes)) as u32);
        }
        leaders.sort();
        leaders
    }

    /// The node leading `partition` of the compacted topic, if it can be learned.
    fn compacted_leader(&self, partition: u32) -> Option<u32> {
        let described = self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                self.admin
                    .describe_topic(crate::compaction::COMPACTED_TOPIC),
            )
            .await
        });
        let described = described.ok()?.ok()?;
        let leader = described
            .partitions
            .iter()
            .find(|described| described.partition == partition)?
            .leader?;
        (1..=self.cluster.spec.nodes)
            .contains(&leader.0)
            .then_some(leader.0)
    }

    fn resolve(&self, index: usize, targets: &Targets) -> Vec<u32> {
        match targets {
            Targets::Nodes(nodes) => nodes.clone(),
            Targets::Leaders => self.leaders(index),
        }
    }

    fn apply(&mut self, index: usize, planned: &Planned) -> Applied {
        match &planned.fault {
            Fault::Kill { targets } => {
                let nodes = self.resolve(index, targets);
                for node in &nodes {
                    self.cluster.kill(*node);
                }
                Applied {
                    description: format!("kill nodes {nodes:?}, restart at the end"),
                    targets: nodes,
                }
            }
            Fault::Pause { targets } => {
                let nodes = self.resolve(index, targets);
                for node in &nodes {
                    self.cluster.pause(*node);
                }
                let what = if matches!(targets, Targets::Leaders) {
                    "leaders "
                } else {
                    ""
                };
                Applied {
                    description: format!("pause (SIGSTOP) {what}nodes {nodes:?}"),
                    targets: nodes,
                }
            }
            Fault::Partition { shape } => {
                let leaders = match shape {
                    Shape::Isolate(Targets::Leaders) => self.leaders(index),
                    _ => Vec::new(),
                };
                let pairs = schedule::drops(shape, self.cluster.spec.nodes, &leaders);
                let mut targets: Vec<u32> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
                targets.sort();
                targets.dedup();
                let ips: Vec<_> = pairs
                    .iter()
                    .map(|(from, to)| (node_ip(*from), node_ip(*to)))
                    .collect();
                let result = if self.mode == NetworkMode::Namespace {
                    net::set_partition(&ips)
                } else {
                    Err("no namespace".to_string())
                };
                let shape_text = match shape {
                    Shape::Isolate(Targets::Leaders) => format!("isolate leaders {leaders:?}"),
                    other => format!("{other:?}"),
                };
                Applied {
                    description: match result {
                        Ok(()) => format!("partition {shape_text}: {} links cut", pairs.len()),
                        Err(error) => format!("partition {shape_text} NOT applied: {error}"),
                    },
                    targets,
                }
            }
            Fault::Clock { node, skew } => {
                self.cluster.kill(*node);
                let started = self.cluster.start(*node, Some(skew.clone()));
                Applied {
                    description: match started {
                        Ok(()) => format!("restart node {node} with clocks skewed {skew:?}"),
                        Err(error) => format!("clock skew {skew:?} on node {node} failed: {error}"),
                    },
                    targets: vec![*node],
                }
            }
            Fault::Retention { fallback } => {
                let nodes = self.cluster.spec.nodes;
                let node = self
                    .runtime
                    .block_on(crate::retention::follower(self.admin, nodes, *fallback));
                self.cluster.pause(node);
                Applied {
                    description: format!(
                        "pause (SIGSTOP) node {node}, a follower of {} (retention {} ms)",
                        crate::retention::RETAINED_TOPIC,
                        crate::retention::RETAINED_RETENTION_MS
                    ),
                    targets: vec![node],
                }
            }
            Fault::Compaction {
                partition,
                fallback,
            } => {
                let leader = self.compacted_leader(*partition);
                let node = leader.unwrap_or(*fallback);
                self.cluster.kill(node);
                Applied {
                    description: format!(
                        "kill node {node}, {} of {}/{partition}, restart at the end",
                        if leader.is_some() {
                            "the leader"
                        } else {
                            "drawn for want of a known leader"
                        },
                        crate::compaction::COMPACTED_TOPIC
                    ),
                    targets: vec![node],
                }
            }
            Fault::ClientCrash { client } => {
                self.crash_tx.send_modify(|counts| {
                    if let Some(count) = counts.get_mut(*client as usize) {
                        *count += 1;
                    }
                });
                Applied {
                    description: format!("crash client {client} (dropped without closing)"),
                    targets: vec![*client],
                }
            }
            Fault::Power { nodes } => {
                self.cluster.kill_together(nodes);
                let cut = match self.disks.as_mut() {
                    Some(disks) => disks.cut(nodes),
                    None => Err("no cairn-powerfs disks".to_string()),
                };
                Applied {
                    description: match cut {
                        Ok(()) => format!(
                            "power cut of nodes {nodes:?} (SIGKILL, unsynced writes lost), \
                             restart at the end"
                        ),
                        Err(error) => format!(
                            "power cut of nodes {nodes:?}: killed, but the cut failed: {error}"
                        ),
                    },
                    targets: nodes.clone(),
                }
            }
            Fault::Hostile { nodes } => {
                let targets = nodes
                    .iter()
                    .map(|node| (*node, self.cluster.spec.address(*node)))
                    .collect();
                let peers = (1..=self.cluster.spec.nodes).collect();
                self.hostile = Some(crate::hostile::Hostile::start(
                    targets,
                    peers,
                    self.seed ^ (index as u64).rotate_left(32),
                ));
                Applied {
                    description: format!(
                        "hostile client forges peer traffic (no cluster secret) to nodes \
                         {nodes:?}"
                    ),
                    targets: nodes.clone(),
                }
            }
        }
    }

    /// Ends the forging client, if one runs, and says what it did.
    fn stop_hostile(&mut self) {
        if let Some(hostile) = self.hostile.take() {
            let counts = hostile.stop();
            eprintln!(
                "cairn-chaos: hostile client: {} forged connections, {} answered with a \
                 challenge, {} closed by the node",
                counts.connections, counts.challenged, counts.closed_by_node
            );
        }
    }

    fn heal(&mut self, planned: &Planned, applied: &Applied) {
        match &planned.fault {
            Fault::Kill { .. } | Fault::Power { .. } | Fault::Compaction { .. } => {
                for node in &applied.targets {
                    if let Err(error) = self.cluster.start(*node, None) {
                        eprintln!("cairn-chaos: restarting node {node}: {error}");
                    }
                }
            }
            Fault::Pause { .. } | Fault::Retention { .. } => {
                for node in &applied.targets {
                    self.cluster.resume(*node);
                }
            }
            Fault::Partition { .. } => {
                if self.mode == NetworkMode::Namespace {
                    if let Err(error) = net::heal() {
                        eprintln!("cairn-chaos: healing the partition: {error}");
                    }
                }
            }
            Fault::Clock { node, .. } => {
                self.cluster.kill(*node);
                if let Err(error) = self.cluster.start(*node, None) {
                    eprintln!("cairn-chaos: restarting node {node}: {error}");
                }
            }
            Fault::ClientCrash { .. } => {}
            Fault::Hostile { .. } => self.stop_hostile(),
        }
    }

    /// Every node running, unpaused, with true clocks, on a whole network.
    fn heal_everything(&mut self) {
        self.stop_hostile();
        if self.mode == NetworkMode::Namespace {
            let _ = net::heal();
        }
        for node in 1..=self.cluster.spec.nodes {
            self.cluster.resume(node);
            let skewed = self.cluster.nodes[node as usize - 1].skew.is_some();
            if skewed {
                self.cluster.kill(node);
            }
            if !self.cluster.nodes[node as usize - 1].is_running() {
                let _ = self.cluster.start(node, None);
            }
        }
    }
}
