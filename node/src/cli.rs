//! `cairn node`: flags, then start the broker.
//!
//! Every configuration key can come from the config file, a `CAIRN_*` environment variable or
//! a flag (flags win); the common ones have their own flags and any key can be set with
//! `--set key=value`. See [`crate::config`].

use crate::config::{ConfigBuilder, Preset};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster [env: CAIRN_NODE_ID].
    #[arg(long)]
    pub node_id: Option<u32>,
    /// Directory holding this node's data; created if absent [env: CAIRN_DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for clients, IP:PORT; port 0 picks a free port
    /// [env: CAIRN_LISTEN; default 127.0.0.1:7171].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address clients are told to connect to, HOST:PORT [env: CAIRN_ADVERTISED_ADDRESS;
    /// default: the bound listen address].
    #[arg(long)]
    pub advertised_address: Option<String>,
    /// Address of the HTTP listener (/metrics, /health, /ready), IP:PORT, or `none` for none;
    /// port 0 picks a free port [env: CAIRN_HTTP_LISTEN; default 127.0.0.1:9644].
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Address other nodes are told to reach the HTTP listener at, HOST:PORT (schema registry
    /// writes are forwarded there) [env: CAIRN_HTTP_ADVERTISED_ADDRESS; default: the bound
    /// HTTP listen address].
    #[arg(long)]
    pub http_advertised_address: Option<String>,
    /// Address of the Kafka listener, IP:PORT, or `off` [env: CAIRN_KAFKA_LISTEN; default
    /// 127.0.0.1:9092].
    #[arg(long)]
    pub kafka_listen: Option<String>,
    /// Address Kafka clients are told to connect to, HOST:PORT [env:
    /// CAIRN_KAFKA_ADVERTISED_ADDRESS; default: the bound Kafka listen address].
    #[arg(long)]
    pub kafka_advertised_address: Option<String>,
    /// Create unknown topics named in a Kafka Metadata request that allows it [env:
    /// CAIRN_KAFKA_AUTO_CREATE_TOPICS; default false].
    #[arg(long)]
    pub kafka_auto_create_topics: Option<bool>,
    /// TOML config file; unknown keys are refused.
    #[arg(long, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Starting values: `default`, or `test` (short timeouts, small limits).
    #[arg(long, env = "CAIRN_PRESET")]
    pub preset: Option<String>,
    /// How long in-flight requests may take after SIGTERM [env: CAIRN_SHUTDOWN_GRACE_MS].
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// Replication factor of topics created without one [env:
    /// CAIRN_DEFAULT_REPLICATION_FACTOR].
    #[arg(long)]
    pub default_replication_factor: Option<u16>,
    /// Other nodes' gossip addresses to join through, HOST:PORT,... (a node may list itself)
    /// [env: CAIRN_SEEDS]. A node with seeds (or other initial voters) runs as a cluster member.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Node ids voting on cluster metadata when the cluster is first started, e.g. 1,2,3;
    /// give every first node the same list [env: CAIRN_INITIAL_VOTERS; default: this node].
    #[arg(long)]
    pub initial_voters: Option<String>,
    /// UDP address for gossip, IP:PORT [env: CAIRN_GOSSIP; default: the IP and port the
    /// client listener bound].
    #[arg(long)]
    pub gossip: Option<String>,
    /// File holding the cluster secret that peers prove they share (at least 16 bytes)
    /// [env: CAIRN_CLUSTER_SECRET_FILE; or the value itself in CAIRN_CLUSTER_SECRET]. Without
    /// one, peer traffic is accepted only over loopback. There is no flag for the value: the
    /// process list would show it.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Any config key, e.g. `--set limits.connections_max=64` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

fn builder(args: &NodeArgs) -> Result<ConfigBuilder, crate::config::ConfigError> {
    let mut builder = ConfigBuilder::new();
    if let Some(path) = &args.config {
        builder = builder.file(path)?;
    }
    if let Some(preset) = &args.preset {
        builder = builder.preset(Preset::parse(preset)?);
    }
    builder = builder.env(|name| std::env::var(name).ok());
    let flags: [(&str, &str, Option<String>); 15] = [
        (
            "--node-id",
            "node_id",
            args.node_id.map(|id| id.to_string()),
        ),
        (
            "--data-dir",
            "data_dir",
            args.data_dir
                .as_ref()
                .map(|path| path.to_string_lossy().into_owned()),
        ),
        ("--listen", "listen", args.listen.clone()),
        (
            "--advertised-address",
            "advertised_address",
            args.advertised_address.clone(),
        ),
        (
            "--shutdown-grace-ms",
            "shutdown_grace_ms",
            args.shutdown_grace_ms.map(|ms| ms.to_string()),
        ),
        (
            "--default-replication-factor",
            "default_replication_factor",
            args.default_replication_factor.map(|rf| rf.to_string()),
        ),
        ("--seeds", "seeds", args.seeds.clone()),
        (
            "--initial-voters",
            "initial_voters",
            args.initial_voters.clone(),
        ),
        ("--gossip", "gossip", args.gossip.clone()),
        ("--http-listen", "http.listen", args.http_listen.clone()),
        (
            "--http-advertised-address",
            "http.advertised_address",
            args.http_advertised_address.clone(),
        ),
        ("--kafka-listen", "kafka.listen", args.kafka_listen.clone()),
        (
            "--kafka-advertised-address",
            "kafka.advertised_address",
            args.kafka_advertised_address.clone(),
        ),
        (
            "--kafka-auto-create-topics",
            "kafka.auto_create_topics",
            args.kafka_auto_create_topics.map(|on| on.to_string()),
        ),
        (
            "--cluster-secret-file",
            "cluster_secret_file",
            args.cluster_secret_file
                .as_ref()
                .map(|path| path.to_string_lossy().into_owned()),
        ),
    ];
    for (flag, key, value) in flags {
        if let Some(value) = value {
            builder = builder.set(&format!("flag {flag}"), key, &value);
        }
    }
    for assignment in &args.set {
        let (key, value) = assignment.split_once('=').unwrap_or((assignment, ""));
        builder = builder.set(
            &format!("flag --set {assignment}"),
            key.trim(),
            value.trim(),
        );
    }
    Ok(builder)
}

/// Client commands log only when `CAIRN_LOG` asks (their stderr is for errors otherwise).
pub fn init_client_logging() {
    if std::env::var_os("CAIRN_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = std::env::var("CAIRN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    tracing_subscriber::EnvFilter::new(filter)
}

/// The node logs through a bounded queue that one thread writes to stderr, so a stderr that
/// is full or closed never blocks or stops the node (see [`crate::logging`]).
fn init_node_logging() {
    match crate::logging::start(std::io::stderr(), crate::logging::LOG_LINES_QUEUED_MAX) {
        Ok((writer, flusher, dropped)) => {
            crate::logging::set_dropped_lines(dropped);
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            crate::logging::set_flusher(flusher);
            // Chitchat warns once per garbage gossip datagram: those warnings are rate
            // limited and counted (see `logging::RepeatedWarnings`).
            let repeated = crate::logging::RepeatedWarnings::new(
                crate::logging::REPEATED_WARNING_INTERVAL,
                Some(writer.clone()),
            );
            crate::logging::set_floodable_warnings(repeated.counts());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(log_filter())
                .with_writer(writer)
                .with_ansi(false)
                .finish()
                .with(repeated)
                .try_init();
        }
        // No thread for the writer: run without logs rather than with logs that can block.
        Err(error) => report(format_args!("cairn node: logging is off: {error}")),
    }
}

/// One line on stderr for the operator; a closed stderr is no reason to panic (as
/// `eprintln!` would).
fn report(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// How long an exiting node waits for its last log lines to reach stderr.
const EXIT_LOG_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a node until SIGTERM/SIGINT; returns the process exit code: 0 after a clean
/// shutdown, 2 for a configuration error, 1 for an environment the node cannot work with.
pub fn run_node(args: NodeArgs) -> i32 {
    init_node_logging();
    crate::logging::install_panic_hook();
    let code = run_node_logged(args);
    crate::logging::flush_within(EXIT_LOG_FLUSH_WAIT);
    code
}

fn run_node_logged(args: NodeArgs) -> i32 {
    let config = match builder(&args).and_then(|builder| builder.build()) {
        Ok(config) => config,
        Err(error) => {
            report(format_args!("cairn node: {error}"));
            return 2;
        }
    };
    let threads = config.threads;
    // One thread: the network tasks run on the thread that also runs the partition actors
    // (see `node::run`), so a produce crosses no thread between its socket and its partition.
    let runtime = move || {
        if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .thread_name("cairn-net")
                .build()
                .expect("a tokio runtime (the OS refused threads)")
        }
    };
    let system = actix::System::with_tokio_rt(runtime);
    match system.block_on(crate::node::run(config)) {
        Ok(()) => 0,
        Err(error) => {
            report(format_args!("cairn node: {error}"));
            1
        }
    }
}
