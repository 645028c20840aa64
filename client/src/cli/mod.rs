//! The client subcommands of the `cairn` binary (`topic`, `produce`, `consume`), a kcat for
//! Cairn. The `node` crate's `main` flattens [`ClientCommand`] next to its own `node` command.
//!
//! - `topic create|list|describe|alter|delete`: administration, through [`crate::Admin`].
//! - `produce`: stdin lines to records, streamed through a [`crate::Producer`] (see
//!   [`produce`]).
//! - `consume`: records to stdout in a kcat-style [`format::OutputFormat`] (see [`consume`]).
//! - `group list|describe|reset-offsets|delete`: consumer groups (see [`group`]).
//! - `cluster status`: one node's view of nodes, liveness, leaders and under-replicated
//!   partitions (see [`cluster`]).
//!
//! Every command returns a process exit code: 0 on success, 1 with a message on stderr when
//! the cluster refused or could not be reached, 2 for bad arguments.

pub mod cluster;
pub mod consume;
pub mod format;
pub mod group;
pub mod produce;

use crate::{Admin, ClientConfig, ClientError, ConfigChange, TopicConfig};
use cairn_protocol::ApiError;
use clap::{Args, Subcommand};
use std::time::Duration;

/// The topic a command reads or writes: after the options (`cairn consume orders`) or, as kcat
/// and the Kafka tools spell it, `-t orders` / `--topic orders`. Exactly one of the two.
#[derive(Debug, Clone, Args)]
#[group(id = "topic_given", required = true, multiple = false)]
pub struct TopicArg {
    /// The topic.
    #[arg(value_name = "TOPIC")]
    positional: Option<String>,
    /// The topic, in kcat's spelling (instead of the TOPIC argument).
    #[arg(short = 't', long = "topic", value_name = "TOPIC")]
    flag: Option<String>,
}

impl TopicArg {
    pub fn name(&self) -> &str {
        self.positional
            .as_deref()
            .or(self.flag.as_deref())
            .expect("clap requires one of the two")
    }
}

/// Default broker address when neither `--bootstrap` nor `CAIRN_BOOTSTRAP` is given.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7171";

/// Exit code for failures reported by the cluster or the network.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for arguments refused before anything was sent.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Args)]
pub struct Connection {
    /// Brokers to bootstrap from, `host:port[,host:port...]`.
    #[arg(short, long, env = "CAIRN_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP, global = true)]
    pub bootstrap: String,
    /// `json` prints what a command reports as one JSON document on stdout (consume: one
    /// object per record, as `-J`), for scripts; `text` is for people.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub output: Output,
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Prints `value` as pretty JSON on stdout (`--output json`).
pub(crate) fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // The protocol's types always serialize; say so instead of printing half a document.
        Err(error) => eprintln!("error: cannot write JSON: {error}"),
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce stdin, one record per line.
    Produce(produce::ProduceArgs),
    /// Print records of a topic to stdout.
    Consume(consume::ConsumeArgs),
    /// The cluster's nodes, liveness, leaders and under-replicated partitions.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// List, describe, reset the offsets of, and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(short, long)]
        partitions: u32,
        /// Replicas per partition (default: the cluster's, 3 or fewer on a smaller cluster).
        #[arg(short, long)]
        replication_factor: Option<u16>,
        /// Remove batches older than this many milliseconds.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Remove the oldest batches while a partition holds more than this many bytes.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Set a config, `key=value` (repeatable), Kafka's names: retention.ms,
        /// retention.bytes, cleanup.policy (delete, compact, compact,delete),
        /// min.compaction.lag.ms, delete.retention.ms, segment.bytes,
        /// confluent.value.schema.validation (or redpanda.value.schema.id.validation:
        /// true makes the leader refuse values without a schema id registered under
        /// `<topic>-value`), confluent.key.schema.validation (or
        /// redpanda.key.schema.id.validation: the same for keys, under `<topic>-key`),
        /// confluent.value.subject.name.strategy and confluent.key.subject.name.strategy (or
        /// redpanda.*.subject.name.strategy: TopicNameStrategy, RecordNameStrategy or
        /// TopicRecordNameStrategy, the subject validation checks ids under).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
    },
    /// List topics, one name per line.
    List {
        /// Also list internal topics (`__meta`, `__offsets`).
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's partitions: leader, replicas, epoch, log start, high watermark, log end.
    Describe {
        name: String,
        /// Show the topic's configs instead: key, value, and whether the topic sets it or
        /// the node's default applies.
        #[arg(long)]
        configs: bool,
    },
    /// Add partitions to a topic, or change its configs (retention.ms, retention.bytes).
    Alter {
        name: String,
        /// The new number of partitions: more than now (partitions are never removed; keys
        /// then map to other partitions, as in Kafka).
        #[arg(short, long)]
        partitions: Option<u32>,
        /// Set a config, `key=value` (repeatable): retention.ms, retention.bytes,
        /// cleanup.policy, min.compaction.lag.ms, delete.retention.ms, segment.bytes,
        /// confluent.value.schema.validation (alias redpanda.value.schema.id.validation),
        /// confluent.key.schema.validation (alias redpanda.key.schema.id.validation),
        /// confluent.{value,key}.subject.name.strategy (alias
        /// redpanda.{value,key}.subject.name.strategy).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
        /// Return a config to the node's default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// The `topic describe --configs` output: one row per known key.
pub fn configs_table(config: &TopicConfig) -> String {
    let rows = [
        ("retention.ms", config.retention_ms),
        ("retention.bytes", config.retention_bytes),
    ];
    let mut out = format!("{:<21} {:<20} SOURCE\n", "CONFIG", "VALUE");
    for (key, value) in rows {
        let (value, source) = match value {
            Some(value) => (value.to_string(), "topic"),
            None => ("-".to_owned(), "node default (retention.* in its config)"),
        };
        out.push_str(&format!("{key:<21} {value:<20} {source}\n"));
    }
    let compaction = [
        (
            "cleanup.policy",
            config.cleanup_policy.map(|policy| policy.to_string()),
            config.cleanup_policy().to_string(),
        ),
        (
            "min.compaction.lag.ms",
            config.min_compaction_lag_ms.map(|ms| ms.to_string()),
            config.min_compaction_lag_ms().to_string(),
        ),
        (
            "delete.retention.ms",
            config.delete_retention_ms.map(|ms| ms.to_string()),
            config.delete_retention_ms().to_string(),
        ),
        (
            "segment.bytes",
            config.segment_bytes.map(|bytes| bytes.to_string()),
            config.segment_bytes().to_string(),
        ),
        (
            "confluent.value.schema.validation",
            config.value_schema_validation.map(|on| on.to_string()),
            config.validates_value_schema().to_string(),
        ),
        (
            "confluent.key.schema.validation",
            config.key_schema_validation.map(|on| on.to_string()),
            config.validates_key_schema().to_string(),
        ),
        (
            "confluent.value.subject.name.strategy",
            config
                .value_subject_name_strategy
                .map(|strategy| strategy.name().to_string()),
            config.value_subject_strategy().name().to_string(),
        ),
        (
            "confluent.key.subject.name.strategy",
            config
                .key_subject_name_strategy
                .map(|strategy| strategy.name().to_string()),
            config.key_subject_strategy().name().to_string(),
        ),
    ];
    for (key, own, default) in compaction {
        let (value, source) = match own {
            Some(value) => (value, "topic"),
            None => (default, "default"),
        };
        out.push_str(&format!("{key:<21} {value:<20} {source}\n"));
    }
    out
}

/// The client configuration the CLI uses for `connection`.
pub fn client_config(connection: &Connection) -> Result<ClientConfig, ClientError> {
    let mut config = ClientConfig::new(&connection.bootstrap)?;
    config.client_id = "cairn-cli".to_owned();
    // A person is waiting: give up sooner than an application would.
    config.request_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(3);
    Ok(config)
}

/// Prints `error` the way every command reports failures, and returns the exit code.
/// Prints the error and returns the exit code: 2 for an argument refused, by this program or
/// by the server (a bad name, a partition count or replication factor out of range, an
/// unknown partition or config), as clap's own refusals; 1 for every other failure.
pub(crate) fn report(error: &ClientError) -> i32 {
    eprintln!("error: {error}");
    match error {
        ClientError::InvalidArgument { .. }
        | ClientError::Api(
            ApiError::InvalidTopicName { .. }
            | ApiError::InvalidPartitionCount { .. }
            | ApiError::InvalidReplicationFactor { .. }
            | ApiError::InvalidTopicConfig { .. }
            | ApiError::UnknownPartition { .. },
        ) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

/// Runs one client subcommand; returns the process exit code.
pub async fn run(connection: Connection, command: ClientCommand) -> i32 {
    let config = match client_config(&connection) {
        Ok(config) => config,
        Err(error) => return report(&error),
    };
    let output = connection.output;
    match command {
        ClientCommand::Topic(command) => match run_topic(config, command, output).await {
            Ok(()) => 0,
            Err(error) => report(&error),
        },
        ClientCommand::Produce(args) => produce::run(config, args, output).await,
        ClientCommand::Consume(mut args) => {
            args.json |= output == Output::Json;
            consume::run(config, args).await
        }
        ClientCommand::Cluster(command) => match cluster::run(config, command, output).await {
            Ok(()) => 0,
            Err(error) => report(&error),
        },
        ClientCommand::Group(command) => match group::run(config, command, output).await {
            Ok(()) => 0,
            Err(error) => report(&error),
        },
    }
}

async fn run_topic(
    config: ClientConfig,
    command: TopicCommand,
    output: Output,
) -> Result<(), ClientError> {
    let admin = Admin::new(config)?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_ms,
            retention_bytes,
            configs,
        } => {
            // The same rules as the server's, checked before anything is sent.
            let changes: Vec<ConfigChange> = configs
                .into_iter()
                .map(|(key, value)| ConfigChange {
                    key,
                    value: Some(value),
                })
                .collect();
            let config = TopicConfig {
                retention_ms,
                retention_bytes,
                ..TopicConfig::default()
            }
            .with_changes(&changes)?;
            let topic = admin
                .create_topic(&name, partitions, replication_factor, config)
                .await?;
            match output {
                Output::Json => print_json(&topic),
                Output::Text => println!(
                    "created topic '{}' with {}",
                    topic.name,
                    cairn_protocol::error::plural(topic.partitions.len() as u64, "partition")
                ),
            }
        }
        TopicCommand::List { internal } => {
            let topics = admin.list_topics_with(internal).await?;
            match output {
                Output::Json => print_json(&topics),
                Output::Text => {
                    for topic in topics {
                        println!("{}", topic.name);
                    }
                }
            }
        }
        TopicCommand::Describe { name, configs } => {
            let topic = admin.describe_topic(&name).await?;
            match (output, configs) {
                (Output::Json, false) => print_json(&topic),
                (Output::Json, true) => print_json(&topic.config),
                (Output::Text, false) => print!("{}", describe_table(&topic)),
                (Output::Text, true) => print!("{}", configs_table(&topic.config)),
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                return Err(ClientError::invalid(
                    "nothing to alter: give --partitions, --config or --delete-config",
                ));
            }
            let changes: Vec<ConfigChange> = configs
                .into_iter()
                .map(|(key, value)| ConfigChange {
                    key,
                    value: Some(value),
                })
                .chain(
                    delete_configs
                        .into_iter()
                        .map(|key| ConfigChange { key, value: None }),
                )
                .collect();
            let topic = admin.alter_topic(&name, partitions, changes).await?;
            match output {
                Output::Json => print_json(&topic),
                Output::Text => println!(
                    "altered topic '{}': {}",
                    topic.name,
                    cairn_protocol::error::plural(topic.partitions.len() as u64, "partition")
                ),
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            match output {
                Output::Json => print_json(&serde_json::json!({ "deleted": name })),
                Output::Text => println!("deleted topic '{name}'"),
            }
        }
    }
    Ok(())
}

/// The `topic describe` output: a summary line, then one row per partition.
pub fn describe_table(topic: &crate::DescribeTopicResponse) -> String {
    let optional = |value: Option<u64>| value.map_or("default".to_owned(), |v| v.to_string());
    let mut rows = vec![[
        "PARTITION".to_owned(),
        "LEADER".to_owned(),
        "REPLICAS".to_owned(),
        "EPOCH".to_owned(),
        "LOG-START".to_owned(),
        "HIGH-WATERMARK".to_owned(),
        "LOG-END".to_owned(),
    ]];
    for partition in &topic.partitions {
        rows.push([
            partition.partition.to_string(),
            partition
                .leader
                .map_or("none".to_owned(), |leader| leader.to_string()),
            partition
                .replicas
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            partition.leader_epoch.to_string(),
            partition.log_start.to_string(),
            partition.high_watermark.to_string(),
            partition.log_end.to_string(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = format!(
        "topic {} partitions={} internal={} retention_ms={} retention_bytes={}\n",
        topic.name,
        topic.partitions.len(),
        topic.internal,
        optional(topic.config.retention_ms),
        optional(topic.config.retention_bytes),
    );
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topic after the options or as kcat's `-t`, exactly one of them, for both commands
    /// that take one.
    #[test]
    fn the_topic_is_the_argument_or_kcats_t_flag() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ClientCommand,
        }
        let topic = |args: &[&str]| {
            Cli::try_parse_from(args).map(|cli| match cli.command {
                ClientCommand::Produce(args) => args.topic.name().to_owned(),
                ClientCommand::Consume(args) => args.topic.name().to_owned(),
                other => panic!("parsed as {other:?}"),
            })
        };
        for command in ["produce", "consume"] {
            assert_eq!(topic(&["cairn", command, "orders"]).unwrap(), "orders");
            assert_eq!(
                topic(&["cairn", command, "-t", "orders"]).unwrap(),
                "orders"
            );
            assert_eq!(
                topic(&["cairn", command, "--topic=orders"]).unwrap(),
                "orders"
            );
            assert!(topic(&["cairn", command]).is_err());
            assert!(topic(&["cairn", command, "-t", "a", "b"]).is_err());
        }
    }
    use cairn_protocol::messages::PartitionDescription;
    use cairn_protocol::{Epoch, NodeId, Offset};

    #[test]
    fn describe_table_has_a_row_per_partition() {
        let topic = crate::DescribeTopicResponse {
            name: "orders".into(),
            internal: false,
            config: TopicConfig {
                retention_ms: Some(60_000),
                retention_bytes: None,
                ..TopicConfig::default()
            },
            partitions: vec![PartitionDescription {
                partition: 0,
                leader: Some(NodeId(1)),
                leader_epoch: Epoch(3),
                replicas: vec![NodeId(1), NodeId(2)],
                log_start: Offset(5),
                high_watermark: Offset(10),
                log_end: Offset(12),
            }],
        };
        let table = describe_table(&topic);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "topic orders partitions=1 internal=false retention_ms=60000 retention_bytes=default"
        );
        assert_eq!(
            lines[1],
            "PARTITION  LEADER  REPLICAS  EPOCH  LOG-START  HIGH-WATERMARK  LOG-END"
        );
        assert_eq!(
            lines[2],
            "0          1       1,2       3      5          10              12"
        );
    }
}
