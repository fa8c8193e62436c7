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
#[command(
    name = "basalt-agent",
    version,
    about = "The basalt device agent",
    long_about = None,
    after_help = "Examples:\n  basalt-agent status\n  basalt-agent info --json\n  basalt-agent update stage https://updates.example/stable/appliance-0.2.0.basalt\n  basalt-agent mesh peers\n  basalt-agent completions bash > /etc/bash_completion.d/basalt-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run as the system service (started by systemd as basalt-agent.service).
    ///
    /// Example: basalt-agent run   # as basalt-agent.service does (ExecStart=)
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
    #[command(
        after_help = "Examples:\n  basalt-agent mesh status\n  basalt-agent mesh peers --json\n  basalt-agent mesh run --token-file /etc/basalt/mesh.token --interface basalt0"
    )]
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// This node at a glance: id, alias, version, board, slot, uptime, addresses, mesh, models.
    ///
    /// Example: basalt-agent info --json
    Info {
        #[arg(long)]
        json: bool,
    },
    /// CPU, memory, disk and temperature, sampled every minute (the last day is kept).
    ///
    /// Example: basalt-agent history --last 60 --json
    History {
        /// How many samples, newest last.
        #[arg(long, default_value_t = 60)]
        last: usize,
        #[arg(long)]
        json: bool,
    },
    /// Name this node in the mesh and in `info`.
    ///
    /// Example: basalt-agent alias line-3-camera
    Alias { name: String },
    /// Allow a client key to send this node work (a name for it is optional).
    ///
    /// Example: basalt-agent allow basalt-ed25519:AbC… laptop
    Allow {
        key: String,
        alias: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a client by key or alias.
    ///
    /// Example: basalt-agent deny laptop
    Deny {
        key_or_alias: String,
        #[arg(long)]
        json: bool,
    },
    /// Bearer tokens for clients that cannot sign requests (the node keeps only their hashes).
    #[command(
        subcommand,
        after_help = "Examples:\n  basalt-agent token create dashboard\n  basalt-agent token list --json\n  basalt-agent token revoke dashboard"
    )]
    Token(TokenCommand),
    /// Signed A/B updates, one visible step at a time.
    #[command(
        subcommand,
        after_help = "Examples:\n  basalt-agent update check /mnt/usb/appliance-0.2.0.basalt\n  basalt-agent update stage /mnt/usb/appliance-0.2.0.basalt\n  basalt-agent update apply --reboot\n  basalt-agent update status --json"
    )]
    Update(UpdateCommand),
    /// Send an inference request (KServe v2 JSON) to this node's server.
    ///
    /// Example: basalt-agent infer magika --input request.json
    Infer {
        /// The model's name.
        model: String,
        /// The request body: `{"inputs": [{"name", "shape", "datatype", "data"}]}`; `-` reads standard input.
        #[arg(long)]
        input: PathBuf,
        /// The server to ask.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A bearer token for a server elsewhere (`basalt-agent token create` made it there).
        #[arg(long, env = "BASALT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the response JSON as it came.
        #[arg(long)]
        json: bool,
    },
    /// The signed record of every inference request this node answered.
    #[command(
        subcommand,
        after_help = "Examples:\n  basalt-agent metering export --since 24h > usage.jsonl\n  basalt-agent metering verify usage.jsonl"
    )]
    Metering(MeteringCommand),
    /// Decide whether this boot is good (run by basalt-health.service before boot-complete.target).
    ///
    /// Exits 0 when every check passes. When a check fails on a trial boot,
    /// reboots so the boot loader counts the failure and, after the last try,
    /// falls back to the other slot.
    ///
    /// Example: basalt-agent health --no-reboot --json
    Health {
        #[arg(long)]
        json: bool,
        /// Report only; never reboot.
        #[arg(long)]
        no_reboot: bool,
    },
    /// On the live system of the installer ISO: write the image it carries onto a disk.
    ///
    /// DEVICE is a whole disk, or `auto` for the only non-removable disk
    /// (other than the live medium) the image fits on. Refuses the live
    /// medium, a disk smaller than the image, a mounted or read-only disk.
    /// Every byte is read back and checked against the image's SHA-256.
    ///
    /// Example: basalt-agent install /dev/vda --yes --reboot
    Install {
        /// The disk to write, such as /dev/vda or /dev/nvme0n1, or `auto`.
        device: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Reboot into the installed system when done.
        #[arg(long)]
        reboot: bool,
        /// Print a JSON summary for machines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script for basalt-agent on stdout.
    ///
    /// Example: basalt-agent completions bash > /etc/bash_completion.d/basalt-agent
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for basalt-agent and each of its subcommands (basalt-agent.1, basalt-agent-update-stage.1, …).
    ///
    /// Example: basalt-agent man --out /usr/local/share/man/man1
    Man {
        /// Directory for the pages (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token and print it: the only time it is shown.
    ///
    /// Example: basalt-agent token create dashboard
    Create {
        /// A name for it, as in `alias` (lower case, digits, `-`).
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The tokens this node accepts: names, hashes, where they came from.
    ///
    /// Example: basalt-agent token list --json
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting a token, at once.
    ///
    /// Example: basalt-agent token revoke dashboard
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MeteringCommand {
    /// Write records as JSON lines, oldest first, signatures intact.
    ///
    /// Example: basalt-agent metering export --since 24h > usage.jsonl
    Export {
        /// Only records from this time on: RFC 3339 (2026-12-01T00:00:00Z) or an age (90m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check every signature and the chain of records in an export.
    ///
    /// Example: basalt-agent metering verify usage.jsonl
    Verify {
        file: PathBuf,
        #[arg(long)]
        json: bool,
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
    /// Seconds between push-pull exchanges with a random member once the view is stable.
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

#[derive(Debug, Subcommand)]
enum UpdateCommand {
    /// Verify a bundle's signatures and say whether it would install here. Writes nothing.
    ///
    /// Reads only the head of the bundle (manifest and signatures).
    ///
    /// Example: basalt-agent update check https://updates.example/stable/appliance-0.2.0.basalt
    Check {
        /// Bundle: a file or block device, an http:// or https:// URL, or - for standard input.
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the inactive slot from a bundle, verifying it while it streams.
    ///
    /// A download from a URL that drops is resumed where it stopped.
    ///
    /// Example: basalt-agent update stage https://updates.example/stable/appliance-0.2.0.basalt
    Stage {
        /// Bundle: a file or block device, an http:// or https:// URL, or - for standard input.
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// Read the update channel now; take a newer version: stage, apply and reboot.
    ///
    /// The channel is basalt.update.channel from cloud-config unless given.
    /// A staged rollout is honoured (this node's bucket must be below the
    /// percent); a recalled version staged or armed here is taken out of the
    /// boot menu, and a recalled running version is reported, never downgraded.
    ///
    /// Example: basalt-agent update poll --no-apply --json
    Poll {
        /// Stage the new version, but do not arm the boot loader or reboot.
        #[arg(long)]
        no_apply: bool,
        /// The channel's base URL [default: basalt.update.channel].
        #[arg(long, value_name = "URL")]
        channel: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Arm the boot loader to try the staged slot on the next boot (3 tries).
    ///
    /// Example: basalt-agent update apply --reboot
    Apply {
        /// Reboot into the new slot right away.
        #[arg(long)]
        reboot: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show both slots, the boot loader's entries and failed updates.
    ///
    /// Example: basalt-agent update status --json
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make the running slot permanent now, without waiting for the health checks.
    ///
    /// Example: basalt-agent update mark-good
    MarkGood,
    /// Cancel an armed update, or give up on the running trial (the other slot boots next).
    ///
    /// Example: basalt-agent update revert
    Revert,
}

/// The command tree, for completions, man pages and tests.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Writes the completion script of `cmd` for `shell`.
pub fn write_completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes a man page for `cmd` and one for each of its subcommands into
/// `dir`; returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, out)?;
        }
        out.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, dir, &mut out)?;
    out.sort();
    Ok(out)
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
        Command::Update(u) => run_update(u),
        Command::Completions { shell } => {
            write_completions(command(), shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => write_man_pages(command(), &out)
            .map(|pages| eprintln!("wrote {} man pages into {}", pages.len(), out.display()))
            .with_context(|| format!("writing man pages into {}", out.display())),
        Command::Infer {
            model,
            input,
            url,
            token,
            json,
        } => run_infer(&model, &input, &url, token.as_deref(), json),
        Command::Token(t) => run_token(t),
        Command::Metering(MeteringCommand::Export { since, output }) => {
            (|| -> anyhow::Result<()> {
                let since_ms = match since {
                    Some(s) => parse_since(&s, std::time::SystemTime::now())?,
                    None => 0,
                };
                let dir = Path::new(crate::metering::DEVICE_METERING_DIR);
                let n = match output {
                    Some(p) => {
                        let mut f = std::io::BufWriter::new(
                            std::fs::File::create(&p)
                                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                        );
                        let n = crate::metering::export(dir, since_ms, &mut f)?;
                        std::io::Write::flush(&mut f)?;
                        n
                    }
                    None => crate::metering::export(dir, since_ms, &mut std::io::stdout().lock())?,
                };
                eprintln!("{n} record(s)");
                Ok(())
            })()
        }
        Command::Metering(MeteringCommand::Verify { file, json }) => {
            return run_metering_verify(&file, json);
        }
        Command::Info { json } => {
            let i = crate::node::info(Path::new(crate::node::NODE_DIR));
            let mut human = format!(
                "node:     {}\nalias:    {}\nhostname: {}\nimage:    {} on {} (slot {})\nuptime:   {} s\n",
                i.node_id.as_deref().unwrap_or("-"),
                i.alias.as_deref().unwrap_or("-"),
                i.hostname,
                i.version.as_deref().unwrap_or("-"),
                i.board.as_deref().unwrap_or("-"),
                i.slot.as_deref().unwrap_or("-"),
                i.uptime_s
            );
            for (iface, addr) in &i.addresses {
                human += &format!("address:  {addr} ({iface})\n");
            }
            human += &match &i.mesh {
                Some(m) => format!(
                    "mesh:     {} as {} / {}\n",
                    m.network,
                    m.ipv6,
                    m.ipv4.map(|a| a.to_string()).unwrap_or_default()
                ),
                None => "mesh:     not joined\n".to_string(),
            };
            for m in &i.models {
                human += &format!("model:    {} {}: {}\n", m.name, m.version, m.state);
            }
            if i.models.is_empty() {
                human += "models:   none\n";
            }
            human += &format!("clients:  {} allowed", i.allowed_clients);
            print(json, &i, human);
            Ok(())
        }
        Command::History { last, json } => (|| {
            let h = crate::node::history(Path::new(crate::node::NODE_DIR), last)?;
            let human: Vec<String> = h
                .iter()
                .map(|s| {
                    format!(
                        "{}  cpu {:5.1}%  mem {:>5} MiB/{} MiB  disk {:>6} MiB/{} MiB{}",
                        s.t,
                        s.cpu_percent,
                        s.mem_used_bytes >> 20,
                        s.mem_total_bytes >> 20,
                        s.disk_used_bytes >> 20,
                        s.disk_total_bytes >> 20,
                        s.temp_celsius
                            .map(|c| format!("  {c:.1} °C"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            print(json, &h, human.join("\n"));
            Ok(())
        })(),
        Command::Alias { name } => crate::node::set_alias(Path::new(crate::node::NODE_DIR), &name)
            .map(|()| println!("alias set to {name}"))
            .map_err(Into::into),
        Command::Allow { key, alias, json } => {
            crate::node::allow(Path::new(crate::node::NODE_DIR), &key, alias.as_deref())
                .map(|changed| {
                    print(
                        json,
                        &serde_json::json!({ "changed": changed }),
                        if changed {
                            "allowed".into()
                        } else {
                            "already allowed".into()
                        },
                    )
                })
                .map_err(Into::into)
        }
        Command::Deny { key_or_alias, json } => {
            crate::node::deny(Path::new(crate::node::NODE_DIR), &key_or_alias)
                .map(|changed| {
                    print(
                        json,
                        &serde_json::json!({ "changed": changed }),
                        if changed {
                            "denied".into()
                        } else {
                            "was not allowed".into()
                        },
                    )
                })
                .map_err(Into::into)
        }
        Command::Health { json, no_reboot } => return run_health(json, no_reboot),
        Command::Install {
            device,
            yes,
            reboot,
            json,
        } => run_install(&device, yes, reboot, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_install(device: &str, yes: bool, reboot: bool, json: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let target: basalt_formats::cloud_config::InstallTarget =
        device.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    crate::install::live_boot()?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "standard input is not a terminal: add --yes to write {device} without asking"
            );
        }
        eprint!("Everything on {device} will be replaced by the image. Type yes to go on: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("nothing written");
        }
    }
    let mut last = (String::new(), u64::MAX);
    let done = crate::install::install(&target, false, &mut |phase, n, total| {
        let pct = n * 100 / total.max(1);
        if last.0 != phase || last.1 != pct {
            last = (phase.to_string(), pct);
            if !json {
                eprint!("\r{phase}: {pct:3} % of {total} bytes");
                if n == total {
                    eprintln!();
                }
            }
        }
    })?;
    print(
        json,
        &done,
        format!(
            "installed {} {} onto {} ({} bytes, {} written as data, SHA-256 {} verified) in {:.1} s",
            done.image,
            done.version,
            done.device.display(),
            done.bytes,
            done.bytes_written,
            done.sha256,
            done.duration_s
        ),
    );
    if reboot {
        std::process::Command::new("systemctl")
            .args(["reboot", "--no-block"])
            .status()?;
    }
    Ok(())
}

/// `--since`: an RFC 3339 time or an age before `now`; milliseconds since the epoch.
fn parse_since(s: &str, now: std::time::SystemTime) -> anyhow::Result<u64> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).map_err(|_| {
                anyhow::anyhow!(
                    "--since {s:?}: expected an RFC 3339 time (2026-12-01T00:00:00Z) or an age (90m, 24h, 7d)"
                )
            })?;
            now.checked_sub(age)
                .ok_or_else(|| anyhow::anyhow!("--since {s:?}: before the epoch"))?
        }
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

fn run_metering_verify(file: &Path, json: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("basalt-agent: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let r = basalt_formats::metering::verify_log(&text);
    let mut human = format!(
        "{}: {} record(s) verified from {} node(s)",
        file.display(),
        r.valid,
        r.nodes.len()
    );
    for p in &r.problems {
        human += &format!("\n{}: {p}", file.display());
    }
    print(json, &r, human);
    if r.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_token(t: TokenCommand) -> anyhow::Result<()> {
    use crate::serve::tokens;
    let dir = Path::new(crate::node::NODE_DIR);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match t {
        TokenCommand::Create { name, json } => {
            let token = tokens::create(dir, &name, now)?;
            print(
                json,
                &serde_json::json!({ "name": name, "token": token, "sha256": tokens::hash(&token) }),
                format!(
                    "{token}\n\nThe token for {name}, shown this once: send it as `Authorization: Bearer <token>`."
                ),
            );
        }
        TokenCommand::List { json } => {
            let all = tokens::list(dir)?;
            let human = if all.is_empty() {
                "no tokens".to_string()
            } else {
                all.iter()
                    .map(|t| {
                        format!(
                            "{:<24} sha256 {}…  from {}",
                            t.name,
                            &t.sha256[..t.sha256.len().min(16)],
                            t.source
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            print(json, &all, human);
        }
        TokenCommand::Revoke { name, json } => {
            let changed = tokens::revoke(dir, &name)?;
            print(
                json,
                &serde_json::json!({ "changed": changed }),
                if changed {
                    format!("{name} revoked")
                } else {
                    format!("no token named {name}")
                },
            );
        }
    }
    Ok(())
}

fn run_infer(
    model: &str,
    input: &Path,
    url: &str,
    token: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut open_source(&input.to_string_lossy())?, &mut body)
        .with_context(|| input.display().to_string())?;
    let endpoint = format!("{}/v2/models/{model}/infer", url.trim_end_matches('/'));
    let started = std::time::Instant::now();
    let mut request = reqwest::blocking::Client::new()
        .post(&endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let resp = request.send().with_context(|| format!("POST {endpoint}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .with_context(|| format!("POST {endpoint}: reading the answer"))?;
    let took = started.elapsed();
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("{model}: {status}: {msg}");
    }
    if json {
        println!("{text}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{endpoint}: answer is not JSON"))?;
    println!(
        "{} {} answered in {} ms by node {}",
        v["model_name"].as_str().unwrap_or(model),
        v["model_version"].as_str().unwrap_or(""),
        took.as_millis(),
        v["parameters"]["served_by"].as_str().unwrap_or("?")
    );
    for o in v["outputs"].as_array().into_iter().flatten() {
        let data = o["data"].as_array().map(|d| d.as_slice()).unwrap_or(&[]);
        let shown: Vec<String> = data.iter().take(8).map(|x| x.to_string()).collect();
        let argmax = data
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_f64().map(|x| (i, x)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, x)| format!(", max {x} at {i}"))
            .unwrap_or_default();
        println!(
            "  {} {} {}: [{}{}]{argmax}",
            o["name"].as_str().unwrap_or("?"),
            o["datatype"].as_str().unwrap_or("?"),
            o["shape"],
            shown.join(", "),
            if data.len() > 8 { ", …" } else { "" }
        );
    }
    Ok(())
}

fn print(json: bool, value: &impl serde::Serialize, human: String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serialises")
        );
    } else {
        println!("{human}");
    }
}

/// A bundle source as `update check` and `stage` read it: `-` (standard
/// input), an `http(s)://` URL, or a file, through a 1 MiB buffer.
pub fn open_source(source: &str) -> anyhow::Result<Box<dyn std::io::Read>> {
    use anyhow::Context;
    if source == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let fetcher = crate::fetch::Fetcher::new(crate::fetch::FetchOptions::default())?;
        let download = fetcher.open(source)?;
        return Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            download,
        )));
    }
    let f = std::fs::File::open(source).with_context(|| format!("opening bundle {source}"))?;
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
}

fn run_update(cmd: UpdateCommand) -> anyhow::Result<()> {
    use crate::update;
    let device = update::Device::open()?;
    let fail = |e: update::UpdateError| {
        anyhow::anyhow!(
            "{e} [{}]",
            serde_json::to_string(&e.disposition())
                .unwrap_or_default()
                .trim_matches('"')
        )
    };
    match cmd {
        UpdateCommand::Check { source, json } => {
            let r = update::check_bundle(open_source(&source)?, &device).map_err(fail)?;
            print(json, &r, r.decision.clone());
        }
        UpdateCommand::Stage { source, json } => {
            let r = if source == "-" {
                update::stage(open_source(&source)?, &device)
            } else if source.starts_with("http://") || source.starts_with("https://") {
                let fetcher = crate::fetch::Fetcher::new(crate::fetch::FetchOptions::default())?;
                update::stage_resumable(
                    &update::UrlSource {
                        fetcher: &fetcher,
                        url: source.clone(),
                    },
                    &device,
                )
            } else {
                update::stage_resumable(&update::FileSource(source.clone().into()), &device)
            }
            .map_err(fail)?;
            print(
                json,
                &r,
                format!(
                    "staged {} in slot {}; run `basalt-agent update apply` to boot it",
                    r.bundle_version, r.target_slot
                ),
            );
        }
        UpdateCommand::Apply { reboot, json } if device.tryboot.is_some() => {
            if !reboot {
                anyhow::bail!(
                    "on a Raspberry Pi the reboot itself arms the trial of slot {}: run `basalt-agent update apply --reboot`",
                    device.target()
                );
            }
            let slot = update::apply(&device).map_err(fail)?;
            print(
                json,
                &serde_json::json!({ "armed_slot": slot, "tryboot": true }),
                format!("rebooting into a trial of slot {slot} (tryboot)"),
            );
            update::tryboot::reboot_into_trial().map_err(anyhow::Error::msg)?;
        }
        UpdateCommand::Apply { reboot, json } => {
            let slot = update::apply(&device).map_err(fail)?;
            print(
                json,
                &serde_json::json!({ "armed_slot": slot, "tries": update::TRIES }),
                format!("slot {slot} armed with {} tries", update::TRIES),
            );
            if reboot {
                update::reboot().map_err(anyhow::Error::msg)?;
            }
        }
        UpdateCommand::Poll {
            no_apply,
            channel,
            json,
        } => {
            use crate::update::poll;
            let channel: basalt_formats::cloud_config::HttpUrl = match channel {
                Some(c) => c.parse().map_err(|e: basalt_formats::cloud_config::ValueError| {
                    anyhow::anyhow!("--channel: {}", e.0)
                })?,
                None => crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
                    .and_then(|c| c.basalt)
                    .and_then(|b| b.update)
                    .map(|u| u.channel)
                    .context("no update channel: set basalt.update.channel in cloud-config, or give --channel")?,
            };
            let fetcher = crate::fetch::Fetcher::new(crate::fetch::FetchOptions::default())?;
            let mode = if no_apply {
                poll::Mode::StageOnly
            } else {
                poll::Mode::Apply
            };
            let sharing = update::share::Sharing::on_device(update::share::configured());
            let record = poll::poll_shared(
                &device,
                &channel,
                &fetcher,
                mode,
                &mut || update::reboot_into_armed(&device),
                &sharing,
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e} [{}]",
                    serde_json::to_string(&e.disposition())
                        .unwrap_or_default()
                        .trim_matches('"')
                )
            })?;
            print(json, &record, record.detail.clone());
        }
        UpdateCommand::Status { json } => {
            let r = update::status(&device).map_err(fail)?;
            print(json, &r, r.human());
        }
        UpdateCommand::MarkGood => {
            let changed = update::mark_good(&device).map_err(fail)?;
            println!(
                "{}",
                if changed {
                    "running slot marked good"
                } else {
                    "running slot was already good"
                }
            );
        }
        UpdateCommand::Revert => println!("{}", update::revert(&device).map_err(fail)?),
    }
    Ok(())
}

/// The Raspberry Pi's part of the health decision: a good trial is
/// committed in `autoboot.txt`; a failed one reboots, and the firmware
/// (whose tryboot flag is spent) starts the committed slot.
fn pi_health(device: &crate::update::Device, ok: bool, no_reboot: bool) -> ExitCode {
    use basalt_formats::tryboot::TrybootState;
    let t = device.tryboot.as_ref().expect("a Raspberry Pi");
    let state = match t.state() {
        Ok(s) => s,
        Err(e) => {
            log::error!("tryboot: {e}");
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    if let TrybootState::Corrupt { error, .. } = &state {
        log::error!("autoboot.txt is corrupt, left as it is: {error}");
    }
    match (ok, &state) {
        (true, TrybootState::Trial { slot }) => match crate::update::mark_good(device) {
            Ok(_) => {
                log::info!(
                    "trial of slot {slot} passed its health checks: committed in autoboot.txt"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                log::error!("committing slot {slot}: {e}");
                ExitCode::FAILURE
            }
        },
        (true, _) => ExitCode::SUCCESS,
        (false, TrybootState::Trial { slot }) => {
            if !no_reboot {
                log::error!("the trial of slot {slot} failed its health checks: rebooting into the committed slot {}", slot.other());
                let _ = std::process::Command::new("systemctl")
                    .args(["reboot", "--no-block"])
                    .status();
            }
            ExitCode::FAILURE
        }
        (false, _) => ExitCode::FAILURE,
    }
}

fn run_health(json: bool, no_reboot: bool) -> ExitCode {
    use crate::update::health;
    let checks = crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
        .and_then(|c| c.basalt)
        .and_then(|b| b.health)
        .map(|h| h.checks)
        .unwrap_or_default();
    let outcomes = health::run_checks(
        Path::new(health::READY_PATH),
        Path::new(crate::serve::MODELS_STATUS_PATH),
        &checks,
    );
    let ok = outcomes.iter().all(|o| o.ok);
    let _ = std::fs::write(
        "/run/basalt/health.json",
        serde_json::to_vec_pretty(&outcomes).unwrap_or_default(),
    );
    let human: Vec<String> = outcomes
        .iter()
        .map(|o| {
            format!(
                "{} {}: {}",
                if o.ok { "ok  " } else { "FAIL" },
                o.name,
                o.detail
            )
        })
        .collect();
    print(json, &outcomes, human.join("\n"));
    if crate::install::live_boot().is_ok() {
        // A live system has no slot to bless or fall back from.
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let device = crate::update::Device::open().ok();
    if let Some(d) = device.as_ref().filter(|d| d.tryboot.is_some()) {
        return pi_health(d, ok, no_reboot);
    }
    if ok {
        return ExitCode::SUCCESS;
    }
    // On a trial boot, a failed check must cost a try: reboot and let the boot loader count it.
    let trial = device
        .and_then(|d| d.esp.entry(d.boot.slot).ok().flatten())
        .is_some_and(|e| e.counter.is_some());
    if trial && !no_reboot {
        log::error!("this boot failed its health checks: rebooting so the boot loader counts the failed try");
        let _ = std::process::Command::new("systemctl")
            .args(["reboot", "--no-block"])
            .status();
    }
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command, the root included, by its full name (`basalt-agent update stage`).
    fn all_commands() -> Vec<(String, clap::Command)> {
        fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
            let name = if prefix.is_empty() {
                cmd.get_name().to_string()
            } else {
                format!("{prefix} {}", cmd.get_name())
            };
            out.push((name.clone(), cmd.clone()));
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(&name, sub, out);
            }
        }
        let mut cmd = command();
        cmd.build();
        let mut out = Vec::new();
        walk("", &cmd, &mut out);
        out
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        let missing: Vec<String> = all_commands()
            .into_iter()
            .filter_map(|(name, mut cmd)| {
                let help = cmd.render_long_help().to_string();
                (!help.contains("Example")).then_some(name)
            })
            .collect();
        assert!(missing.is_empty(), "no example in the help of: {missing:?}");
    }

    #[test]
    fn bash_completion_names_every_subcommand() {
        let mut script = Vec::new();
        write_completions(command(), clap_complete::Shell::Bash, &mut script);
        let script = String::from_utf8(script).unwrap();
        for (name, cmd) in all_commands().into_iter().skip(1) {
            assert!(
                script.contains(&format!("{} ", cmd.get_name()))
                    || script.contains(&format!("{})", cmd.get_name())),
                "{name} is not in the bash completion"
            );
            for opt in cmd.get_opts().filter_map(|a| a.get_long()) {
                assert!(
                    script.contains(&format!("--{opt}")),
                    "{name} --{opt} is not in the bash completion"
                );
            }
        }
    }

    #[test]
    fn a_man_page_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(command(), dir.path()).unwrap();
        for (name, _) in all_commands() {
            let file = dir.path().join(format!("{}.1", name.replace(' ', "-")));
            assert!(pages.contains(&file), "{} is missing", file.display());
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.contains(&name.replace(['-', ' '], "\\-")),
                "{}",
                file.display()
            );
        }
    }
}
