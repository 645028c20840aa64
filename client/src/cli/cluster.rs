//! `cairn cluster status`: nodes and their liveness, replicas and leaders per node, and every
//! partition's leader, with under-replicated and leaderless partitions called out.
//!
//! One node answers (the first of `--bootstrap` that does); liveness is its gossip opinion,
//! which the output says, since another node may see the cluster differently for a moment.

use super::{print_json, Output};
use crate::{Admin, ClientConfig, ClientError, ClusterStatusResponse};
use cairn_protocol::messages::{Liveness, PartitionStatus};
use cairn_protocol::NodeId;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes and liveness, partitions and leaders per node, under-replicated partitions.
    ///
    /// What the answering node sees; liveness is its gossip's opinion. A partition's STATE:
    /// `ok`: a leader, every replica's node up and every follower in sync.
    /// `UNDER-REPLICATED`: a leader, but a replica's node is down (OFFLINE lists them) or a
    /// follower has not caught up with the leader's log for `replica.lag_time_max_ms`, as
    /// Kafka's ISR counts it (LAGGING lists them, as the leader reports). `NO LEADER`: no replica holds a live lease:
    /// an election is in progress, or fewer than a majority of the replicas are up (writes
    /// then fail with NotEnoughReplicas). `REPAIRING on N`: node N's replica lost committed
    /// data to a damaged disk and is being caught up from the leader. `CORRUPTED on N`: the
    /// only replica lost committed data and refuses every request.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also show internal partitions (`__meta`, and `__offsets` once a group used it).
    #[arg(long)]
    pub internal: bool,
    /// List only partitions that are under-replicated or have no leader.
    #[arg(long)]
    pub problems_only: bool,
}

pub async fn run(
    config: ClientConfig,
    command: ClusterCommand,
    output: Output,
) -> Result<(), ClientError> {
    let admin = Admin::new(config)?;
    match command {
        ClusterCommand::Status(args) => {
            let mut status = admin.cluster_status(args.internal).await?;
            match output {
                Output::Json => {
                    if args.problems_only {
                        status.partitions.retain(|partition| {
                            partition.leader.is_none() || under_replicated(partition)
                        });
                    }
                    print_json(&status)
                }
                Output::Text => print!("{}", status_report(&status, args.problems_only)),
            }
        }
    }
    Ok(())
}

/// Under-replicated: a replica sits on a node the answering node does not hear, is out of
/// sync with its leader, or lost committed data (corrupted, or being repaired from the leader).
fn under_replicated(partition: &PartitionStatus) -> bool {
    !partition.offline_replicas.is_empty()
        || !partition.lagging_replicas.is_empty()
        || !partition.repairing_replicas.is_empty()
        || !partition.corrupted_replicas.is_empty()
}

fn liveness_name(liveness: Liveness) -> &'static str {
    match liveness {
        Liveness::Local => "up (answering)",
        Liveness::Alive => "up",
        Liveness::Down => "DOWN",
    }
}

fn node_list(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".to_owned();
    }
    nodes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The whole `cluster status` output.
pub fn status_report(status: &ClusterStatusResponse, problems_only: bool) -> String {
    let mut replicas_per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leaders_per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for partition in &status.partitions {
        for replica in &partition.replicas {
            *replicas_per_node.entry(*replica).or_default() += 1;
        }
        if let Some(leader) = partition.leader {
            *leaders_per_node.entry(leader).or_default() += 1;
        }
    }
    let nodes_up = status
        .nodes
        .iter()
        .filter(|node| node.liveness != Liveness::Down)
        .count();
    let leaderless = status
        .partitions
        .iter()
        .filter(|partition| partition.leader.is_none())
        .count();
    let under = status
        .partitions
        .iter()
        .filter(|partition| under_replicated(partition))
        .count();

    let mut out = format!(
        "cluster as seen by node {} (liveness is that node's gossip opinion)\n\
         nodes: {} ({} up)  partitions: {}  leaderless: {}  under-replicated: {}\n\n",
        status.node_id,
        status.nodes.len(),
        nodes_up,
        status.partitions.len(),
        leaderless,
        under,
    );
    let mut node_rows = vec![[
        "NODE".to_owned(),
        "ADDRESS".to_owned(),
        "STATUS".to_owned(),
        "META-VOTER".to_owned(),
        "REPLICAS".to_owned(),
        "LEADERS".to_owned(),
    ]];
    for node in &status.nodes {
        node_rows.push([
            node.node_id.to_string(),
            node.address.clone().unwrap_or_else(|| "-".to_owned()),
            liveness_name(node.liveness).to_owned(),
            if node.metadata_voter { "yes" } else { "no" }.to_owned(),
            replicas_per_node
                .get(&node.node_id)
                .copied()
                .unwrap_or(0)
                .to_string(),
            leaders_per_node
                .get(&node.node_id)
                .copied()
                .unwrap_or(0)
                .to_string(),
        ]);
    }
    push_table(&mut out, &node_rows);

    let shown: Vec<&PartitionStatus> = status
        .partitions
        .iter()
        .filter(|partition| {
            !problems_only || partition.leader.is_none() || under_replicated(partition)
        })
        .collect();
    out.push('\n');
    if shown.is_empty() {
        out.push_str(if problems_only {
            "no partition is under-replicated or leaderless\n"
        } else {
            "no partitions\n"
        });
        return out;
    }
    let mut partition_rows = vec![[
        "TOPIC".to_owned(),
        "PARTITION".to_owned(),
        "LEADER".to_owned(),
        "EPOCH".to_owned(),
        "REPLICAS".to_owned(),
        "OFFLINE".to_owned(),
        "LAGGING".to_owned(),
        "STATE".to_owned(),
    ]];
    for partition in shown {
        let state = if !partition.corrupted_replicas.is_empty() {
            format!("CORRUPTED on {}", node_list(&partition.corrupted_replicas))
        } else if !partition.repairing_replicas.is_empty() {
            format!("REPAIRING on {}", node_list(&partition.repairing_replicas))
        } else {
            match (partition.leader, under_replicated(partition)) {
                (None, _) => "NO LEADER",
                (Some(_), true) => "UNDER-REPLICATED",
                (Some(_), false) => "ok",
            }
            .to_owned()
        };
        partition_rows.push([
            partition.topic.clone(),
            partition.partition.to_string(),
            partition
                .leader
                .map_or("none".to_owned(), |leader| leader.to_string()),
            partition.leader_epoch.to_string(),
            node_list(&partition.replicas),
            node_list(&partition.offline_replicas),
            node_list(&partition.lagging_replicas),
            state,
        ]);
    }
    push_table(&mut out, &partition_rows);
    out
}

/// Appends rows as left-aligned columns separated by two spaces.
fn push_table<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::messages::NodeStatus;
    use cairn_protocol::Epoch;

    fn partition(
        topic: &str,
        partition: u32,
        replicas: &[u32],
        leader: Option<u32>,
        offline: &[u32],
    ) -> PartitionStatus {
        PartitionStatus {
            topic: topic.to_owned(),
            partition,
            internal: false,
            replicas: replicas.iter().copied().map(NodeId).collect(),
            leader: leader.map(NodeId),
            leader_epoch: Epoch(2),
            offline_replicas: offline.iter().copied().map(NodeId).collect(),
            repairing_replicas: Vec::new(),
            corrupted_replicas: Vec::new(),
            lagging_replicas: Vec::new(),
        }
    }

    fn three_nodes_one_down() -> ClusterStatusResponse {
        let node = |id: u32, liveness: Liveness| NodeStatus {
            node_id: NodeId(id),
            address: (liveness != Liveness::Down).then(|| format!("127.0.0.1:717{id}")),
            liveness,
            metadata_voter: id != 2,
        };
        ClusterStatusResponse {
            node_id: NodeId(1),
            nodes: vec![
                node(1, Liveness::Local),
                node(2, Liveness::Alive),
                node(3, Liveness::Down),
            ],
            partitions: vec![
                partition("orders", 0, &[1, 2, 3], Some(1), &[3]),
                partition("orders", 1, &[2, 3, 1], Some(2), &[3]),
                partition("orders", 2, &[3], None, &[3]),
                partition("users", 0, &[1, 2], Some(1), &[]),
            ],
        }
    }

    #[test]
    fn the_report_counts_replicas_and_leaders_per_node_and_flags_problems() {
        let report = status_report(&three_nodes_one_down(), false);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "cluster as seen by node 1 (liveness is that node's gossip opinion)"
        );
        assert_eq!(
            lines[1],
            "nodes: 3 (2 up)  partitions: 4  leaderless: 1  under-replicated: 3"
        );
        assert_eq!(
            &lines[3..7],
            &[
                "NODE  ADDRESS         STATUS          META-VOTER  REPLICAS  LEADERS",
                "1     127.0.0.1:7171  up (answering)  yes         3         2",
                "2     127.0.0.1:7172  up              no          3         1",
                "3     -               DOWN            yes         3         0",
            ]
        );
        assert_eq!(
            &lines[8..],
            &[
                "TOPIC   PARTITION  LEADER  EPOCH  REPLICAS  OFFLINE  LAGGING  STATE",
                "orders  0          1       2      1,2,3     3        -        UNDER-REPLICATED",
                "orders  1          2       2      2,3,1     3        -        UNDER-REPLICATED",
                "orders  2          none    2      3         3        -        NO LEADER",
                "users   0          1       2      1,2       -        -        ok",
            ]
        );
    }

    #[test]
    fn a_corrupted_or_repairing_replica_is_a_problem_shown_by_node() {
        let mut status = three_nodes_one_down();
        status.partitions = vec![
            partition("users", 0, &[1, 2], Some(1), &[]),
            partition("users", 1, &[1, 2], Some(2), &[]),
        ];
        status.partitions[0].corrupted_replicas = vec![NodeId(1)];
        status.partitions[1].repairing_replicas = vec![NodeId(1)];
        let report = status_report(&status, true);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            &lines[lines.len() - 2..],
            &[
                "users  0          1       2      1,2       -        -        CORRUPTED on 1",
                "users  1          2       2      1,2       -        -        REPAIRING on 1",
            ],
            "{report}"
        );
    }

    #[test]
    fn a_follower_out_of_sync_makes_its_partition_under_replicated() {
        let mut status = three_nodes_one_down();
        status.partitions = vec![
            partition("users", 0, &[1, 2], Some(1), &[]),
            partition("users", 1, &[1, 2], Some(1), &[]),
        ];
        status.partitions[1].lagging_replicas = vec![NodeId(2)];
        let report = status_report(&status, true);
        let lines: Vec<&str> = report.lines().collect();
        assert!(lines[1].ends_with("under-replicated: 1"), "{report}");
        assert_eq!(
            lines[lines.len() - 1],
            "users  1          1       2      1,2       -        2        UNDER-REPLICATED",
            "{report}"
        );
        assert!(!report.contains("users  0"), "{report}");
    }

    #[test]
    fn problems_only_leaves_healthy_partitions_out() {
        let report = status_report(&three_nodes_one_down(), true);
        assert!(!report.contains("users"), "{report}");
        assert_eq!(report.matches("orders").count(), 3, "{report}");
        let mut healthy = three_nodes_one_down();
        healthy.partitions = vec![partition("users", 0, &[1, 2], Some(1), &[])];
        let report = status_report(&healthy, true);
        assert!(
            report.ends_with("\nno partition is under-replicated or leaderless\n"),
            "{report}"
        );
    }
}
