//! `cairn group list|describe|reset-offsets|delete`: consumer groups, through
//! [`crate::Admin`].
//!
//! `describe` shows the group's state, its members with their assignments, and per
//! partition the owner, committed offset, log end and lag, as the coordinator reports them.

use super::{print_json, Output};
use crate::{Admin, ClientConfig, ClientError, Offset};
use cairn_protocol::group::{DescribeGroupResponse, OffsetResetTarget, TopicPartitions};
use cairn_protocol::messages::OffsetSpec;
use cairn_protocol::ApiError;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List groups: id, state, members.
    List,
    /// A group's state, members, assignment, and per partition committed offset, log end, lag.
    Describe { group: String },
    /// Move an empty group's committed offsets of one topic: prints the plan (a dry run)
    /// unless given --execute.
    ResetOffsets(ResetArgs),
    /// Delete an empty group and its committed offsets.
    Delete { group: String },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(
    ["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"]
)))]
pub struct ResetArgs {
    pub group: String,
    #[arg(long)]
    pub topic: String,
    /// Only these partitions (comma-separated); default: every partition of the topic.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Option<Vec<u32>>,
    /// To each partition's log start.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's high watermark (skip everything written so far).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (clamped to each partition's log).
    #[arg(long)]
    pub to_offset: Option<u64>,
    /// To the first record written at or after TIME: RFC 3339 (2026-12-03T07:00:00Z) or a
    /// duration before now (15m, 2h).
    #[arg(long, value_name = "TIME", value_parser = super::format::parse_time)]
    pub to_datetime: Option<i64>,
    /// Move each committed offset by N (negative: back, to read again), clamped to the log.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Only print the new offsets (the default, as Kafka's tool does).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Commit the new offsets.
    #[arg(long)]
    pub execute: bool,
}

/// Where one partition's committed offset moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetPlanRow {
    pub partition: u32,
    pub current: Option<Offset>,
    pub new: Offset,
}

/// The new offset of one partition, given its log (`first`, `end`) and current commit.
fn planned(
    args: &ResetArgs,
    first: Offset,
    end: Offset,
    current: Option<Offset>,
    at_time: Option<Offset>,
) -> Offset {
    let clamp = |offset: u64| Offset(offset.clamp(first.0, end.0));
    if args.to_earliest {
        first
    } else if args.to_latest {
        end
    } else if let Some(offset) = args.to_offset {
        clamp(offset)
    } else if let Some(shift) = args.shift_by {
        // A partition never committed shifts from its log start, as Kafka's tool does.
        let from = current.unwrap_or(first).0;
        clamp(from.saturating_add_signed(shift))
    } else {
        at_time.map_or(end, |offset| clamp(offset.0))
    }
}

/// The plan: every partition's current and new offset, read from the cluster.
async fn reset_plan(admin: &Admin, args: &ResetArgs) -> Result<Vec<ResetPlanRow>, ClientError> {
    // An unknown group is refused (`GroupIdNotFound`), not planned for.
    admin.describe_group(&args.group).await?;
    let metadata = admin.topic_metadata(&args.topic).await?;
    let count = metadata.partitions.len() as u32;
    let partitions: Vec<u32> = match &args.partitions {
        Some(named) => {
            if let Some(&missing) = named.iter().find(|&&partition| partition >= count) {
                return Err(ClientError::Api(ApiError::UnknownPartition {
                    topic: args.topic.clone(),
                    partition: missing,
                    partitions: count,
                }));
            }
            named.clone()
        }
        None => (0..count).collect(),
    };
    let committed = admin.group_offsets(&args.group).await?;
    let mut plan = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let current = committed
            .iter()
            .find(|entry| entry.topic == args.topic && entry.partition == partition)
            .and_then(|entry| entry.committed.as_ref().map(|committed| committed.offset));
        let first = admin
            .list_offset(&args.topic, partition, OffsetSpec::Earliest)
            .await?;
        let end = admin
            .list_offset(&args.topic, partition, OffsetSpec::Latest)
            .await?;
        let at_time = match args.to_datetime {
            Some(ms) => Some(
                admin
                    .list_offset(&args.topic, partition, OffsetSpec::Timestamp(ms))
                    .await?,
            ),
            None => None,
        };
        let new = planned(args, first, end, current, at_time);
        plan.push(ResetPlanRow {
            partition,
            current,
            new,
        });
    }
    Ok(plan)
}

/// `GroupNotEmpty`, with the members that hold the group: a static member that left keeps
/// its place until its session times out, which is the usual surprise.
async fn explain_not_empty(admin: &Admin, group: &str, error: ClientError) -> ClientError {
    if !matches!(error, ClientError::Api(ApiError::GroupNotEmpty { .. })) {
        return error;
    }
    let Ok(description) = admin.describe_group(group).await else {
        return error;
    };
    let members: Vec<String> = description
        .members
        .iter()
        .map(|member| match &member.instance_id {
            Some(instance) => format!(
                "static member '{instance}' (kept until its session times out, even if it left)"
            ),
            None => format!("member '{}'", member.member_id),
        })
        .collect();
    if members.is_empty() {
        return error;
    }
    ClientError::invalid(format!("{error}; stop {} first", members.join(", ")))
}

pub async fn run(
    config: ClientConfig,
    command: GroupCommand,
    output: Output,
) -> Result<(), ClientError> {
    let admin = Admin::new(config)?;
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if output == Output::Json {
                print_json(&groups);
                return Ok(());
            }
            let mut rows = vec![vec![
                "GROUP".to_owned(),
                "STATE".to_owned(),
                "MEMBERS".to_owned(),
            ]];
            for group in groups {
                rows.push(vec![
                    group.group_id,
                    group.state.to_string(),
                    group.members.to_string(),
                ]);
            }
            print!("{}", table(&rows));
        }
        GroupCommand::Describe { group } => {
            let description = admin.describe_group(&group).await?;
            match output {
                Output::Json => print_json(&description),
                Output::Text => print!("{}", describe_report(&description)),
            }
        }
        GroupCommand::ResetOffsets(args) => {
            let plan = reset_plan(&admin, &args).await?;
            let mut rows = vec![vec![
                "GROUP".to_owned(),
                "TOPIC".to_owned(),
                "PARTITION".to_owned(),
                "CURRENT".to_owned(),
                "NEW".to_owned(),
            ]];
            for row in &plan {
                rows.push(vec![
                    args.group.clone(),
                    args.topic.clone(),
                    row.partition.to_string(),
                    row.current
                        .map_or("-".to_owned(), |offset| offset.to_string()),
                    row.new.to_string(),
                ]);
            }
            let as_json = |committed: bool| {
                let partitions: Vec<serde_json::Value> = plan
                    .iter()
                    .map(|row| {
                        serde_json::json!({
                            "partition": row.partition,
                            "current": row.current.map(|offset| offset.0),
                            "new": row.new.0,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "group": args.group, "topic": args.topic,
                    "committed": committed, "partitions": partitions,
                })
            };
            if !args.execute {
                match output {
                    Output::Json => print_json(&as_json(false)),
                    Output::Text => {
                        print!("{}", table(&rows));
                        println!(
                            "dry run: nothing was committed; add --execute to commit these offsets"
                        );
                    }
                }
                return Ok(());
            }
            for row in &plan {
                let reset = admin
                    .reset_group_offsets(
                        &args.group,
                        &args.topic,
                        Some(vec![row.partition]),
                        OffsetResetTarget::Offset(row.new),
                    )
                    .await;
                if let Err(error) = reset {
                    return Err(explain_not_empty(&admin, &args.group, error).await);
                }
            }
            print!("{}", table(&rows));
            println!(
                "committed {}",
                cairn_protocol::error::plural(plan.len() as u64, "offset")
            );
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            match output {
                Output::Json => print_json(&serde_json::json!({ "deleted": group })),
                Output::Text => println!("deleted group '{group}'"),
            }
        }
    }
    Ok(())
}

fn partitions_text(assignment: &[TopicPartitions]) -> String {
    if assignment.is_empty() {
        return "-".to_owned();
    }
    assignment
        .iter()
        .map(|topic| {
            let partitions: Vec<String> =
                topic.partitions.iter().map(ToString::to_string).collect();
            format!("{}:{}", topic.topic, partitions.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `group describe` output: a summary line, the members, then one row per partition.
pub fn describe_report(group: &DescribeGroupResponse) -> String {
    let optional = |value: Option<u64>| value.map_or("-".to_owned(), |value| value.to_string());
    let mut out = format!(
        "group {} state={} epoch={} assignor={} members={}\n",
        group.group_id,
        group.state,
        group.group_epoch,
        group.assignor,
        group.members.len()
    );
    if !group.members.is_empty() {
        let mut rows = vec![vec![
            "MEMBER".to_owned(),
            "INSTANCE".to_owned(),
            "EPOCH".to_owned(),
            "ASSIGNED".to_owned(),
            "TARGET".to_owned(),
        ]];
        for member in &group.members {
            rows.push(vec![
                member.member_id.clone(),
                member.instance_id.clone().unwrap_or_else(|| "-".to_owned()),
                member.member_epoch.to_string(),
                partitions_text(&member.assignment),
                partitions_text(&member.target_assignment),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    let mut rows = vec![vec![
        "TOPIC".to_owned(),
        "PARTITION".to_owned(),
        "OWNER".to_owned(),
        "COMMITTED".to_owned(),
        "LOG-END".to_owned(),
        "LAG".to_owned(),
    ]];
    for partition in &group.partitions {
        rows.push(vec![
            partition.topic.clone(),
            partition.partition.to_string(),
            partition.owner.clone().unwrap_or_else(|| "-".to_owned()),
            optional(partition.committed.map(|offset| offset.0)),
            optional(partition.log_end.map(|offset| offset.0)),
            optional(partition.lag),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    let total: Option<u64> = group.partitions.iter().map(|partition| partition.lag).sum();
    out.push_str(&format!("total lag: {}\n", optional(total)));
    out
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
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
    use cairn_protocol::group::{
        GroupPartitionDescription, GroupState, MemberDescription, MemberEpoch,
    };

    #[test]
    fn describe_report_shows_members_and_lag_per_partition() {
        let assignment = vec![TopicPartitions {
            topic: "t".into(),
            partitions: vec![0, 1],
        }];
        let group = DescribeGroupResponse {
            group_id: "g".into(),
            state: GroupState::Stable,
            group_epoch: 4,
            assignor: "sticky".into(),
            members: vec![MemberDescription {
                member_id: "m1".into(),
                instance_id: None,
                member_epoch: MemberEpoch(4),
                subscribed_topics: vec!["t".into()],
                assignment: assignment.clone(),
                target_assignment: assignment,
            }],
            partitions: vec![
                GroupPartitionDescription {
                    topic: "t".into(),
                    partition: 0,
                    owner: Some("m1".into()),
                    committed: Some(Offset(5)),
                    log_end: Some(Offset(9)),
                    lag: Some(4),
                },
                GroupPartitionDescription {
                    topic: "t".into(),
                    partition: 1,
                    owner: Some("m1".into()),
                    committed: None,
                    log_end: Some(Offset(3)),
                    lag: Some(3),
                },
            ],
        };
        let report = describe_report(&group);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "group g state=stable epoch=4 assignor=sticky members=1"
        );
        assert_eq!(lines[2], "MEMBER  INSTANCE  EPOCH  ASSIGNED  TARGET");
        assert_eq!(lines[3], "m1      -         4      t:0,1     t:0,1");
        assert_eq!(lines[5], "TOPIC  PARTITION  OWNER  COMMITTED  LOG-END  LAG");
        assert_eq!(lines[6], "t      0          m1     5          9        4");
        assert_eq!(lines[7], "t      1          m1     -          3        3");
        assert_eq!(lines[8], "total lag: 7");
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: GroupCommand,
    }

    fn reset(args: &[&str]) -> Result<ResetArgs, clap::Error> {
        let mut all = vec!["cairn", "reset-offsets", "g", "--topic", "t"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|parsed| match parsed.command {
            GroupCommand::ResetOffsets(args) => args,
            _ => panic!("expected reset-offsets"),
        })
    }

    #[test]
    fn reset_offsets_needs_exactly_one_target() {
        assert!(reset(&["--to-offset", "7"]).is_ok());
        assert!(reset(&[]).is_err());
        assert!(reset(&["--to-earliest", "--to-latest"]).is_err());
        assert!(reset(&["--shift-by", "-3", "--to-latest"]).is_err());
        assert!(reset(&["--to-latest", "--dry-run", "--execute"]).is_err());
    }

    #[test]
    fn the_plan_clamps_to_the_log() {
        let (first, end) = (Offset(10), Offset(50));
        let plan = |args: &[&str], current: Option<u64>, at_time: Option<u64>| {
            planned(
                &reset(args).unwrap(),
                first,
                end,
                current.map(Offset),
                at_time.map(Offset),
            )
        };
        assert_eq!(plan(&["--to-earliest"], Some(30), None), Offset(10));
        assert_eq!(plan(&["--to-latest"], Some(30), None), Offset(50));
        assert_eq!(plan(&["--to-offset", "7"], None, None), Offset(10));
        assert_eq!(plan(&["--to-offset", "70"], None, None), Offset(50));
        assert_eq!(plan(&["--shift-by", "-5"], Some(30), None), Offset(25));
        assert_eq!(plan(&["--shift-by", "-500"], Some(30), None), Offset(10));
        assert_eq!(plan(&["--shift-by", "500"], Some(30), None), Offset(50));
        assert_eq!(plan(&["--shift-by", "3"], None, None), Offset(13));
        assert_eq!(
            plan(
                &["--to-datetime", "2023-11-14T22:13:20Z"],
                Some(30),
                Some(42)
            ),
            Offset(42)
        );
    }
}
