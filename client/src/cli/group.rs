//! `cairn group list|describe|reset-offsets|delete`: consumer groups, through
//! [`crate::Admin`].
//!
//! `describe` shows the group's state, its members with their assignments, and per
//! partition the owner, committed offset, log end and lag, as the coordinator reports them.

use crate::{Admin, ClientConfig, ClientError, Offset};
use cairn_protocol::group::{DescribeGroupResponse, OffsetResetTarget, TopicPartitions};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List groups: id, state, members.
    List,
    /// A group's state, members, assignment, and per partition committed offset, log end, lag.
    Describe { group: String },
    /// Move an empty group's committed offsets of one topic.
    ResetOffsets(ResetArgs),
    /// Delete an empty group and its committed offsets.
    Delete { group: String },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset"])))]
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
    /// To this offset (clamped to the log by the coordinator).
    #[arg(long)]
    pub to_offset: Option<u64>,
}

impl ResetArgs {
    fn target(&self) -> OffsetResetTarget {
        match (self.to_earliest, self.to_latest, self.to_offset) {
            (true, _, _) => OffsetResetTarget::Earliest,
            (_, true, _) => OffsetResetTarget::Latest,
            (_, _, Some(offset)) => OffsetResetTarget::Offset(Offset(offset)),
            // clap requires one of the three.
            _ => OffsetResetTarget::Earliest,
        }
    }
}

pub async fn run(config: ClientConfig, command: GroupCommand) -> Result<(), ClientError> {
    let admin = Admin::new(config)?;
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
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
            print!("{}", describe_report(&description));
        }
        GroupCommand::ResetOffsets(args) => {
            let target = args.target();
            let offsets = admin
                .reset_group_offsets(&args.group, &args.topic, args.partitions.clone(), target)
                .await?;
            let mut rows = vec![vec![
                "TOPIC".to_owned(),
                "PARTITION".to_owned(),
                "COMMITTED".to_owned(),
            ]];
            for offset in offsets {
                rows.push(vec![
                    offset.topic,
                    offset.partition.to_string(),
                    offset
                        .committed
                        .map_or("-".to_owned(), |committed| committed.offset.to_string()),
                ]);
            }
            print!("{}", table(&rows));
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            println!("deleted group '{group}'");
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

    #[test]
    fn reset_offsets_needs_exactly_one_target() {
        let parsed = Cli::try_parse_from([
            "cairn",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-offset",
            "7",
        ])
        .unwrap();
        let GroupCommand::ResetOffsets(args) = parsed.command else {
            panic!("expected reset-offsets");
        };
        assert_eq!(args.target(), OffsetResetTarget::Offset(Offset(7)));
        assert!(Cli::try_parse_from(["cairn", "reset-offsets", "g", "--topic", "t"]).is_err());
        assert!(Cli::try_parse_from([
            "cairn",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
            "--to-latest"
        ])
        .is_err());
    }
}
