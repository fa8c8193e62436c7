//! The command line of `basalt-agent`.

use crate::identity::{NodeIdentity, DEVICE_IDENTITY_DIR};
use crate::mesh::runtime::{Mesh, MeshConfig};
use anyhow::Context;
use basalt_formats::mesh::NetworkToken;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where the mesh keeps its state on a device.
pub const DEVICE_MESH_DIR: &str = "/data/basalt/mesh";

#[derive(Debug, Parser)]
#[command(name = "basalt-agent", version, about = "The basalt device agent", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run as the system service (started by systemd as basalt-agent.service).
    Run,
    /// Show the image, slot and boot state of this device.
    ///
    /// Example: basalt-agent status --json
    Status {
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The WireGuard mesh: run it, show its state and peers.
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Run the mesh in the foreground until SIGTERM or Ctrl-C.
    ///
    /// Example: basalt-agent mesh run --token-file /etc/basalt/mesh.token --interface basalt0
    Run(Box<MeshRunArgs>),
    /// Show this node's mesh: addresses, members, dropped datagrams.
    ///
    /// Example: basalt-agent mesh status --json
    Status {
        /// The running mesh's state directory.
        #[arg(long, default_value = DEVICE_MESH_DIR)]
        state_dir: PathBuf,
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the other members: node, state, addresses, endpoint, handshake, traffic.
    ///
    /// Example: basalt-agent mesh peers --json
    Peers {
        /// The running mesh's state directory.
        #[arg(long, default_value = DEVICE_MESH_DIR)]
        state_dir: PathBuf,
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct MeshRunArgs {
    /// The network token (`basalt-mesh-v1:…`); prefer --token-file, since
    /// command lines are visible to every user.
    #[arg(
        long,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    token: Option<NetworkToken>,
    /// A file holding the network token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Where the WireGuard key and the status file live.
    #[arg(long, value_name = "DIR", default_value = DEVICE_MESH_DIR)]
    state_dir: PathBuf,
    /// Where the node's identity key lives (made on first use).
    #[arg(long, value_name = "DIR", default_value = DEVICE_IDENTITY_DIR)]
    identity_dir: PathBuf,
    /// The WireGuard interface; unique per host with userspace WireGuard.
    #[arg(long, value_name = "NAME", default_value = "basalt0")]
    interface: String,
    /// The gossip socket [default: 0.0.0.0 on the token's port].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// WireGuard's listen port [default: the gossip port + 1].
    #[arg(long, value_name = "PORT")]
    wg_port: Option<u16>,
    /// A WireGuard endpoint to advertise (repeatable) [default: this host's addresses].
    #[arg(long = "endpoint", value_name = "ADDR")]
    endpoints: Vec<SocketAddr>,
    /// Send no LAN beacons.
    #[arg(long)]
    no_beacons: bool,
    /// Seconds between push-pull exchanges with a random member.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    sync_interval: u64,
}

fn mesh_run(args: MeshRunArgs) -> anyhow::Result<()> {
    let token = match (args.token, &args.token_file) {
        (Some(t), _) => t,
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?
            .parse()
            .with_context(|| format!("token file {}", f.display()))?,
        (None, None) => anyhow::bail!("give --token or --token-file"),
    };
    let identity = NodeIdentity::load_or_create(&args.identity_dir)?;
    let mut config = MeshConfig::new(token, args.state_dir, args.interface);
    if let Some(l) = args.listen {
        config.listen = l;
        config.wg_port = crate::mesh::runtime::default_wg_port(l.port());
    }
    if let Some(p) = args.wg_port {
        config.wg_port = p;
    }
    if !args.endpoints.is_empty() {
        config.endpoints = Some(args.endpoints);
    }
    config.beacons = !args.no_beacons;
    config.membership.sync_interval = Duration::from_secs(args.sync_interval.max(1));
    let mesh = Mesh::open(config, identity.signing_key().clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        mesh.run(shutdown).await.map_err(anyhow::Error::from)
    })
}

fn mesh_show(state_dir: &Path, json: bool, peers: bool) -> anyhow::Result<()> {
    let st = crate::mesh::status::read(state_dir)?;
    match (json, peers) {
        (true, false) => println!("{}", serde_json::to_string_pretty(&st)?),
        (true, true) => println!("{}", serde_json::to_string_pretty(&st.peers)?),
        (false, false) => print!("{}", st.human()),
        (false, true) => print!("{}", st.peers_human()),
    }
    Ok(())
}

/// Exit codes: 0 success, 1 failure, 2 bad usage (clap).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::service::init_logging();
    let result = match cli.command {
        Command::Run => crate::service::run(),
        Command::Status { json } => {
            let st = crate::status::collect(Path::new("/"));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st).expect("status serialises")
                );
            } else {
                print!("{}", st.human());
            }
            Ok(())
        }
        Command::Mesh { command } => match command {
            MeshCommand::Run(args) => mesh_run(*args),
            MeshCommand::Status { state_dir, json } => mesh_show(&state_dir, json, false),
            MeshCommand::Peers { state_dir, json } => mesh_show(&state_dir, json, true),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
