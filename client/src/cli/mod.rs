//! The client subcommands of the `cairn` binary (`topic`, `produce`, `consume`), a kcat for
//! Cairn. The `node` crate's `main` flattens [`ClientCommand`] next to its own `node` command.

use clap::{Args, Subcommand};

/// Default broker address when neither `--bootstrap` nor `CAIRN_BOOTSTRAP` is given.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7171";

#[derive(Debug, Args)]
pub struct Connection {
    /// Brokers to bootstrap from, `host:port[,host:port...]`.
    #[arg(long, env = "CAIRN_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP, global = true)]
    pub bootstrap: String,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// List topics.
    List,
}

/// Runs one client subcommand; returns the process exit code.
pub async fn run(connection: Connection, command: ClientCommand) -> i32 {
    let _ = (connection, command);
    eprintln!("not implemented yet");
    2
}
