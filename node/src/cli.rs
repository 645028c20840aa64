//! `cairn node`: flags, then start the broker.

use clap::Args;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id, unique in the cluster.
    #[arg(long, env = "CAIRN_NODE_ID")]
    pub node_id: u32,
}

/// Runs a node until SIGTERM/SIGINT; returns the process exit code.
pub fn run_node(args: NodeArgs) -> i32 {
    let _ = args;
    eprintln!("not implemented yet");
    2
}
