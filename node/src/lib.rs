//! `shoal`: the node daemon and the commands that talk to it.
//!
//! `shoal node` runs the daemon ([`daemon`]); `import`, `pull`, `status` and the other
//! commands ([`cli`]) reach the running node through the admin socket in its data directory
//! ([`admin`]); `id` reads the identity file directly. This crate is the composition root: it
//! wires the store, the importer and the gateway together.
//!
//! It is a library with a one-line binary (`src/main.rs`) only so that the fuzz targets in
//! `fuzz/` can reach the import path ([`fuzzing`]), and the simulator's tests the node's
//! serving driver ([`serving_driver`]); [`main`] is the whole public API.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod admin;
mod announce;
mod budget;
mod cli;
mod config;
mod daemon;
mod exchange;
#[doc(hidden)]
pub mod fuzzing;
mod gateway_auth;
mod gateway_tls;
mod identity;
mod images;
mod import;
mod locality;
mod metrics_server;
mod network;
mod observe;
/// The node's driver of the serving policy, public only so that the simulator's tests can
/// replay one request sequence through both drivers (`simulations/tests/serving.rs`).
#[doc(hidden)]
pub mod serving_driver {
    pub use crate::exchange::seeding::SeedLedger;
    pub use libp2p::PeerId;
}
mod store;
mod upstream;
mod values;
mod zone;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{DEFAULT_DATA_DIR, NodeArgs, NodeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Peer-to-peer container image replication",
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the store, the /v2/ gateway and the admin socket.
    Node(Box<NodeArgs>),
    /// Print this node's peer id, creating its identity if needed.
    Id {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Import an OCI layout directory, an oci-archive tar or a `docker save` tar into the running node.
    Import {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// The image to import.
        path: PathBuf,
        /// Name the image REPO:TAG instead of using the names in the archive.
        #[arg(long, value_name = "REPO:TAG")]
        tag: Option<String>,
    },
    /// Fetch an image from the network into the running node.
    Pull {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// The image, such as docker.io/library/alpine:3.20 or team/app@sha256:...
        reference: String,
    },
    /// Show what the running node holds.
    Status {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print (or --write) the config that makes containerd, Docker or podman pull through this node.
    Configure(cli::mirror_config::ConfigureArgs),
    /// Keep an image (every platform) whatever --cache-max, pulling what the store lacks.
    Pin {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// The image, such as docker.io/library/alpine:3.20 or team/app@sha256:...
        reference: String,
    },
    /// Let a pinned image be evicted again.
    Unpin {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        reference: String,
    },
    /// Evict least-recently-used blobs down to the low watermark of --cache-max now.
    Gc {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Manage the gateway's users (--gateway-htpasswd); no node needs to run.
    #[command(subcommand)]
    User(cli::users::UserCommand),
    /// Re-hash every stored blob; remove and report anything corrupt.
    Verify {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
}

/// The `shoal` command line: parses the arguments, runs the command, reports an error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shoal: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node(args) => {
            let config = NodeConfig::resolve(*args)?;
            init_logging(&config.log_level);
            daemon::run(config).await
        }
        Command::Id { data } => {
            let keypair = identity::load_or_create(&store::Layout::new(&data).identity())?;
            println!("{}", keypair.public().to_peer_id());
            Ok(())
        }
        Command::Import { data, path, tag } => cli::commands::import(&data, &path, tag).await,
        Command::Pull { data, reference } => cli::commands::pull(&data, &reference).await,
        Command::Status { data, json } => cli::commands::status(&data, json).await,
        Command::Configure(args) => cli::mirror_config::run(args),
        Command::Pin { data, reference } => cli::commands::pin(&data, &reference).await,
        Command::Unpin { data, reference } => cli::commands::unpin(&data, &reference).await,
        Command::Gc { data } => cli::commands::gc(&data).await,
        Command::Verify { data } => cli::commands::verify(&data).await,
        Command::User(command) => cli::users::run(command),
    }
}

/// Logs go to stderr; `RUST_LOG` wins over the configured level.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::DEFAULT_LOG_LEVEL));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
