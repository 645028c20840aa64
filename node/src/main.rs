//! `cairn`: one binary for the broker (`cairn node`) and the client tools (`cairn topic`,
//! `cairn produce`, `cairn consume`, ...).

use cairn_client::cli::{ClientCommand, Connection};
use clap::{CommandFactory, Parser, Subcommand};

/// jemalloc rather than glibc's malloc: with glibc the 3-node benchmark's nodes did about a
/// fifth fewer records a second for the same CPU (Cargo.toml gives the figures). Its settings
/// can be changed at start-up with `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF`;
/// docs/configuration.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a replicated commit-log broker"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker node in the foreground.
    Node(cairn_node::cli::NodeArgs),
    /// Run a local cluster of N nodes in the foreground (node 1 on 127.0.0.1:7171).
    Dev(cairn_node::dev::DevArgs),
    /// Print a completion script for a shell, e.g. `source <(cairn completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Register, list, get, check and delete schemas in the schema registry.
    Schema(cairn_node::schemas::cli::SchemaArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Node(args) => cairn_node::cli::run_node(args),
        Command::Dev(args) => cairn_node::dev::run_dev(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
            0
        }
        Command::Schema(args) => cairn_node::schemas::cli::run(args, cli.connection.output),
        Command::Client(command) => {
            cairn_node::cli::init_client_logging();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the client commands");
            runtime.block_on(cairn_client::cli::run(cli.connection, command))
        }
    };
    std::process::exit(code);
}
