//! The `basalt` command line.

use crate::build::{self, BuildOptions, SpecSource};
use crate::mesh_cmd::{self, MeshCommand};
use crate::{bundle_cmd, channel_cmd, config_cmd, flash, qemu};
use anyhow::{bail, Context, Result};
use basalt_formats::record::BuildRecord;
use basalt_formats::BoardId;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "basalt",
    version,
    about = "Build immutable A/B appliance images for edge devices",
    after_help = "Examples:\n  basalt build                                   # the default appliance for x86_64-uefi, into ./out\n  basalt build my-spec.yaml --board arm64-uefi --out build/\n  basalt run out/basalt-appliance-0.1.0-x86_64-uefi.img\n  basalt iso out/basalt-appliance-0.1.0-x86_64-uefi.img\n  basalt mesh token --network lab\n  basalt config validate user-data.yaml\n  basalt keygen --out keys/release\n  basalt bundle out/basalt-appliance-0.1.0-x86_64-uefi.img --key keys/release.key\n  basalt channel out/basalt-appliance-0.1.0-x86_64-uefi.basalt --out www/stable --percent 10\n  basalt flash out/basalt-appliance-0.1.0-rpi4.img /dev/sdX --cloud-config node.yaml\n  basalt completions bash > /etc/bash_completion.d/basalt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bootable A/B disk image from an image spec.
    #[command(
        after_help = "Examples:\n  basalt build\n  basalt build spec.yaml --board arm64-uefi --out build/ --json"
    )]
    Build {
        /// Image spec (YAML). Without one, the built-in appliance spec is used.
        spec: Option<PathBuf>,
        /// Board to build for (x86_64-uefi, arm64-uefi); overrides the spec's `board`.
        #[arg(long)]
        board: Option<BoardId>,
        /// Output directory.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Re-run mmdebstrap even when a cached root file system matches.
        #[arg(long)]
        no_cache: bool,
        /// Cache of downloaded packages and root file systems.
        #[arg(long, env = "BASALT_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// The basalt-agent binary to install (default: found beside basalt in the cargo target directory).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Print the build record as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make an installer ISO (CD or USB stick, UEFI) from a built x86_64-uefi image.
    ///
    /// The ISO boots a live system from the image's slot A, whose
    /// `basalt-agent install DEVICE` (or cloud-config `basalt.install`)
    /// writes the image onto a disk. Nothing is built again: the kernel,
    /// initrd and root file system come from the image, which must match its
    /// build record.
    #[command(
        after_help = "Examples:\n  basalt iso out/basalt-appliance-0.1.0-x86_64-uefi.img\n  basalt iso out/basalt-appliance-0.1.0-x86_64-uefi.img --out installer.iso --json\n  dd if=out/basalt-appliance-0.1.0-x86_64-uefi.iso of=/dev/sdX bs=4M conv=fsync   # a USB stick"
    )]
    Iso {
        /// The raw disk image (.img) made by `basalt build`, with its .json beside it.
        image: PathBuf,
        /// Where to write the ISO (default: the image's name with .iso, beside it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Boot a built image under QEMU with its serial console on this terminal.
    ///
    /// The image is not modified: the VM writes to an overlay in the state
    /// directory. Leave the console with Ctrl-A X.
    #[command(
        after_help = "Examples:\n  basalt run out/basalt-appliance-0.1.0-x86_64-uefi.img\n  basalt run out/basalt-appliance-0.1.0-arm64-uefi.img --until-ready\n  basalt run out/basalt-appliance-0.1.0-x86_64-uefi.img --cloud-config node.yaml --forward 8080:8080\n  basalt run out/basalt-appliance-0.1.0-x86_64-uefi.iso --disk-size 4GiB   # the installer, an empty disk\n  # three nodes on one virtual LAN, each in its own terminal:\n  basalt run IMAGE --state-dir vm1 --lan lab --cloud-config mesh.yaml\n  basalt run IMAGE --state-dir vm2 --lan lab --cloud-config mesh.yaml"
    )]
    Run {
        /// The disk image (.img or .qcow2) made by `basalt build`, or an
        /// installer ISO made by `basalt iso`, booted as a CD beside an empty
        /// disk of --disk-size (default 8 GiB; --keep boots what was installed).
        image: PathBuf,
        /// Board of the image; read from the build record beside the image when omitted.
        #[arg(long)]
        board: Option<BoardId>,
        /// Size of the virtual disk, such as 4GiB (the data partition grows into it on first boot).
        #[arg(long)]
        disk_size: Option<basalt_formats::ByteSize>,
        /// Directory for the VM's overlay disk, firmware variables and console log.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Keep the overlay from an earlier run (a reboot of the same device) instead of starting fresh.
        #[arg(long)]
        keep: bool,
        /// Exit as soon as the agent reports ready (exit status 0), instead of staying on the console.
        #[arg(long)]
        until_ready: bool,
        /// With --until-ready: give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Make a guest TCP port reachable on the host's loopback, as HOST:GUEST
        /// (repeatable), such as 8080:8080 for the inference API.
        #[arg(long = "forward", value_name = "HOST:GUEST", value_parser = parse_forward)]
        forwards: Vec<(u16, u16)>,
        /// Give the device this cloud-config on a NoCloud CIDATA volume (checked
        /// first, as `basalt config validate` does). Its instance-id follows the
        /// file's content, so an edited file is applied as a new instance.
        #[arg(long, value_name = "FILE")]
        cloud_config: Option<PathBuf>,
        /// Add a second network card on the virtual LAN called NAME: every VM
        /// started with the same NAME on this host shares it (no DHCP server
        /// there: devices take link-local addresses and find each other's mesh).
        #[arg(long, value_name = "NAME")]
        lan: Option<String>,
    },
    /// Write an image to an SD card, USB stick or disk, then read it back and compare.
    ///
    /// Only the blocks that hold data are written: those of the block map
    /// beside the image (X.bmap, checked range by range), or of the sparse
    /// image file; a compressed image without a block map is written whole.
    /// Before anything is written, a device that is mounted, holds the
    /// running system or is a partition is refused (--force overrides), and
    /// so are a device smaller than the image, an image for another board
    /// and an image that does not match its build record or has a damaged
    /// partition table. DEVICE may be a regular file (a sparse copy).
    /// Ctrl-C stops cleanly and says how far the write got; --resume goes on.
    #[command(
        after_help = "Examples:\n  basalt flash out/basalt-appliance-0.1.0-rpi4.img /dev/sdX\n  basalt flash out/basalt-appliance-0.1.0-x86_64-uefi.img.zst /dev/sdX --cloud-config node.yaml\n  basalt flash out/basalt-appliance-0.1.0-rpi4.img /dev/sdX --board rpi4 --json\n  basalt flash --resume out/basalt-appliance-0.1.0-rpi4.img /dev/sdX      # after an interruption\n  basalt flash --verify-only out/basalt-appliance-0.1.0-rpi4.img /dev/sdX\n  basalt flash out/basalt-appliance-0.1.0-x86_64-uefi.img copy.img       # a sparse copy in a file"
    )]
    Flash {
        /// The image: .img, .img.zst or .img.xz made by `basalt build`.
        image: PathBuf,
        /// The whole disk to write (/dev/sdX, /dev/mmcblk0), or a regular file.
        device: PathBuf,
        /// The board the image must be for (checked against its build record and partition table).
        #[arg(long)]
        board: Option<BoardId>,
        /// After writing, put this cloud-config (checked first, as `basalt config
        /// validate` does) on the boot partition as user-data, with a meta-data
        /// whose instance-id follows the content.
        #[arg(long, value_name = "FILE", conflicts_with = "verify_only")]
        cloud_config: Option<PathBuf>,
        /// The block map [default: X.bmap beside the image, when there is one].
        #[arg(long, value_name = "FILE.bmap")]
        bmap: Option<PathBuf>,
        /// Write nothing: compare the device with the image (exit status 1 when they differ).
        #[arg(long, conflicts_with = "resume")]
        verify_only: bool,
        /// Go on after an interrupted flash: write only what differs from the image, then verify.
        #[arg(long)]
        resume: bool,
        /// Write even to a device that is mounted, holds the running system or is a partition.
        #[arg(long)]
        force: bool,
        /// Print a summary as JSON on stdout: bytes written, ranges, duration, verified.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Bundles(BundleCommand),
    /// Make and read the network tokens devices join a mesh with.
    #[command(
        after_help = "Examples:\n  basalt mesh token --network lab\n  basalt mesh token --network edge --bootstrap seed.example.com:51820 --json\n  basalt mesh inspect basalt-mesh-v1:AQAD…"
    )]
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// Work with cloud-config documents (first-boot provisioning).
    #[command(
        after_help = "Examples:\n  basalt config validate cloud-config/examples/full.yaml\n  basalt config validate user-data --json"
    )]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script for basalt on stdout.
    #[command(
        after_help = "Examples:\n  basalt completions bash > /etc/bash_completion.d/basalt\n  basalt completions zsh > \"${fpath[1]}/_basalt\"\n  basalt completions fish > ~/.config/fish/completions/basalt.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for basalt and each of its subcommands (basalt.1, basalt-flash.1, …).
    #[command(
        after_help = "Examples:\n  basalt man --out /usr/local/share/man/man1\n  basalt man --out man/ && man -l man/basalt-flash.1"
    )]
    Man {
        /// Directory for the pages (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Signed update bundles: keys, bundles, signatures, inspection, and the
/// update channel's documents.
#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Make an Ed25519 key pair for signing bundles: NAME.key (secret, mode 0600) and NAME.pub.
    ///
    /// Never overwrites an existing key. Prints the public key.
    #[command(
        after_help = "Examples:\n  basalt keygen --out keys/release\n  basalt keygen --out keys/release-2025 --json"
    )]
    Keygen {
        /// Name of the key files, without extension.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Print the key and file names as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a signed update bundle (.basalt) from a built image.
    ///
    /// Takes slot A's root file system image, kernel and initrd from the
    /// image, compresses each with zstd and signs the manifest.
    ///
    /// With --delta-from, each payload is compressed against the same
    /// payload of an older built image: a device running that version
    /// rebuilds the new slot from its running one and a download of a few
    /// MiB, checked against the full slot's SHA-256 like a full bundle.
    #[command(
        after_help = "Examples:\n  basalt bundle out/basalt-appliance-1.2.0-x86_64-uefi.img --key keys/release.key\n  basalt bundle out/basalt-appliance-1.2.0-x86_64-uefi.img --key keys/release.key --min-version 1.0.0 --out update.basalt --json\n  basalt bundle new/basalt-appliance-1.2.1-x86_64-uefi.img --key keys/release.key --delta-from old/basalt-appliance-1.2.0-x86_64-uefi.img"
    )]
    Bundle {
        /// The .img made by `basalt build` (its .json build record must be beside it).
        image: PathBuf,
        /// Secret key to sign with (made by `basalt keygen`).
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
        /// The oldest running version this bundle may replace (default: any).
        #[arg(long, value_name = "VERSION")]
        min_version: Option<semver::Version>,
        /// Bundle to write (default: <stem>.basalt beside the image, or
        /// <stem>.from-<old version>.basalt with --delta-from).
        #[arg(long, value_name = "FILE.basalt")]
        out: Option<PathBuf>,
        /// Make a delta bundle against this older image (its .json build
        /// record beside it), for devices running its version.
        #[arg(long, value_name = "OLD.img")]
        delta_from: Option<PathBuf>,
        /// Print the manifest as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Add a signature to a bundle (for a second key, or a rotated one).
    #[command(
        after_help = "Examples:\n  basalt sign update.basalt --key keys/release-2025.key\n  basalt sign update.basalt --key keys/second-signer.key --json"
    )]
    Sign {
        /// The bundle; rewritten in place.
        bundle: PathBuf,
        /// Secret key to sign with.
        #[arg(long, value_name = "K.key")]
        key: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show a bundle's manifest and signatures, and check its payloads.
    ///
    /// Exits with status 1 when a payload does not match its manifest, or
    /// when --trust is given and the signatures do not meet the policy.
    #[command(
        after_help = "Examples:\n  basalt inspect update.basalt\n  basalt inspect update.basalt --trust keys/release.pub\n  basalt inspect update.basalt --trust old.pub --trust new.pub --threshold 2 --no-payloads --json"
    )]
    Inspect {
        /// The bundle.
        bundle: PathBuf,
        /// A trusted public key: a .pub file or the key itself. Repeat for several.
        #[arg(long, value_name = "K.pub")]
        trust: Vec<String>,
        /// Trusted keys that must have signed (default 1).
        #[arg(long, requires = "trust")]
        threshold: Option<usize>,
        /// Skip streaming the payloads through zstd and SHA-256.
        #[arg(long)]
        no_payloads: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write the update channel's document for a bundle: DIR/<board>.json for each of its boards.
    ///
    /// Reads the bundle's manifest (its signatures are not checked here;
    /// devices check them) and its size. The bundle is named by its path
    /// relative to DIR unless --bundle-url is given: copy the bundle into
    /// place first, then write the documents. Each document is replaced in
    /// one step.
    #[command(
        after_help = "Examples:\n  basalt channel www/stable/appliance-0.3.0-x86_64-uefi.basalt --out www/stable --percent 10\n  basalt channel www/stable/appliance-0.3.0-x86_64-uefi.basalt --out www/stable --percent 50\n  basalt channel www/stable/appliance-0.3.0-x86_64-uefi.basalt --out www/stable            # every device\n  basalt channel www/stable/appliance-0.3.1-x86_64-uefi.basalt --out www/stable --recall 0.3.0 --json\n  basalt channel update.basalt --out www/beta --bundle-url https://cdn.example/update.basalt\n  basalt channel www/stable/appliance-0.3.1-x86_64-uefi.basalt --out www/stable --delta www/stable/appliance-0.3.1-x86_64-uefi.from-0.3.0.basalt"
    )]
    Channel {
        /// The bundle (.basalt) the channel offers.
        bundle: PathBuf,
        /// The channel's directory (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Share of devices that take the version now: 0-100, at most two decimal places [default: every device].
        #[arg(long, value_name = "P")]
        percent: Option<basalt_formats::channel::rollout::Percent>,
        /// A version no device installs, nor keeps staged or armed. Repeat for several.
        #[arg(long, value_name = "VERSION")]
        recall: Vec<semver::Version>,
        /// The bundle's URL in the documents: http(s)://, or relative to them [default: its path relative to DIR].
        #[arg(long, value_name = "URL")]
        bundle_url: Option<String>,
        /// A delta bundle of the same version (basalt bundle --delta-from), for devices running its base version; they fall back to the full bundle by themselves. Repeat for several.
        #[arg(long, value_name = "DELTA.basalt")]
        delta: Vec<PathBuf>,
        /// Print what was written as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a cloud-config against every rule the device applies.
    ///
    /// Prints one line (or, with --json, one JSON object) and exits with
    /// status 1 when the document is invalid.
    #[command(
        after_help = "Examples:\n  basalt config validate cloud-config/examples/mesh-node.yaml\n  basalt config validate user-data --json | jq .error"
    )]
    Validate {
        /// The cloud-config document (its first line must be #cloud-config).
        file: PathBuf,
        /// Print the verdict as JSON on stdout: {"valid":true,...} or {"valid":false,"error":{...}}.
        #[arg(long)]
        json: bool,
    },
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
/// `dir` (`basalt.1`, `basalt-mesh-token.1`, …); returns the files written.
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("basalt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Bundles(command) => run_bundle_command(command).map(|()| ExitCode::SUCCESS),
        Command::Build {
            spec,
            board,
            out,
            no_cache,
            cache_dir,
            agent,
            json,
        } => {
            let opts = BuildOptions {
                spec: spec.map(SpecSource::File).unwrap_or(SpecSource::Builtin),
                board,
                out_dir: out,
                cache_dir: cache_dir.unwrap_or_else(build::default_cache_dir),
                no_cache,
                agent,
                source_date_epoch: build::source_date_epoch()?,
                compressed: true,
            };
            let record = build::build(&opts)?.record;
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                for a in &record.artifacts {
                    println!("{}  {}", a.sha256, opts.out_dir.join(&a.file).display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Iso { image, out, json } => {
            let out = out.unwrap_or_else(|| crate::iso::default_out(&image));
            let summary = crate::iso::make(&image, &out)?;
            if json {
                print_json(&summary)?;
            } else {
                println!("{}  {}", summary.sha256, summary.iso.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            image,
            board,
            disk_size,
            state_dir,
            keep,
            until_ready,
            timeout,
            forwards,
            cloud_config,
            lan,
        } => {
            // An installer ISO boots as a CD beside an empty disk.
            let iso = image.extension().is_some_and(|e| e == "iso");
            let board_id = match board {
                Some(b) => b,
                None if iso => BoardId::X86_64Uefi,
                None => record_beside(&image)?.board,
            };
            let board = crate::assets::board(board_id)?;
            let state_dir = state_dir.unwrap_or_else(|| {
                let stem = image
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                image.with_file_name(format!(".run-{stem}"))
            });
            let mut extra_args = Vec::new();
            if let Some(file) = &cloud_config {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let v = config_cmd::validate_text(&file.display().to_string(), &text);
                if !v.is_valid() {
                    bail!("{}", v.human());
                }
                std::fs::create_dir_all(&state_dir)
                    .with_context(|| format!("creating {}", state_dir.display()))?;
                let seed = state_dir.join("cidata.img");
                let iid = config_cmd::instance_id(&text);
                qemu::write_cidata(&seed, &text, &format!("instance-id: {iid}\n"))?;
                extra_args.extend(qemu::readonly_disk("cidata", &seed));
            }
            let lan = lan.map(|name| {
                let _ = std::fs::create_dir_all(&state_dir);
                qemu::Lan::named(&name, &state_dir)
            });
            let (image, disk_size) = if iso {
                extra_args.extend(qemu::cdrom(&image));
                std::fs::create_dir_all(&state_dir)
                    .with_context(|| format!("creating {}", state_dir.display()))?;
                let blank = state_dir.join("blank.img");
                if !keep || !blank.exists() {
                    std::fs::File::create(&blank)
                        .and_then(|f| f.set_len(disk_size.map_or(8 << 30, |s| s.bytes())))
                        .with_context(|| format!("creating {}", blank.display()))?;
                }
                (blank, None)
            } else {
                (image, disk_size.map(|s| s.bytes()))
            };
            let cfg = qemu::VmConfig {
                board,
                image,
                state_dir,
                disk_size,
                cpus: 2,
                keep_state: keep,
                extra_args,
                forwards,
                lan,
            };
            if cfg.board.rpi.is_some() {
                if !cfg.forwards.is_empty() {
                    bail!("--forward: QEMU's raspi4b machine has no network card to forward to");
                }
                let pi = crate::pi_launch::PiMachine::prepare(&cfg)?;
                if until_ready {
                    let (mut vm, _) = pi.power_on()?;
                    let line = vm.wait_for("basalt-agent: ready", Duration::from_secs(timeout))?;
                    println!("{}", line.trim());
                    vm.kill();
                } else {
                    eprintln!("booting {} (leave with Ctrl-A X)", cfg.image.display());
                    pi.run_interactive()?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            if until_ready {
                let mut vm = qemu::Vm::start(&cfg)?;
                let line = vm.wait_for("basalt-agent: ready", Duration::from_secs(timeout))?;
                println!("{}", line.trim());
                vm.kill();
                Ok(ExitCode::SUCCESS)
            } else {
                qemu::check_host(&cfg.board)?;
                let (disk, vars) = qemu::prepare(&cfg)?;
                eprintln!("booting {} (leave with Ctrl-A X)", cfg.image.display());
                let mut qemu = qemu::command(&cfg, &disk, &vars);
                // QEMU goes when basalt goes, killed or not: otherwise a
                // `kill` of basalt leaves the VM running, holding the disk.
                // SAFETY: only prctl(2) runs between fork and exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut qemu, || {
                        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                            .map_err(std::io::Error::from)
                    });
                }
                let status = qemu.status().context("starting QEMU")?;
                if !status.success() {
                    bail!("QEMU exited with {status}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Flash {
            image,
            device,
            board,
            cloud_config,
            bmap,
            verify_only,
            resume,
            force,
            json,
        } => {
            let opts = flash::FlashOptions {
                bmap,
                board,
                cloud_config,
                mode: if verify_only {
                    flash::Mode::VerifyOnly
                } else if resume {
                    flash::Mode::Resume
                } else {
                    flash::Mode::Write
                },
                force,
                ..flash::FlashOptions::new(image, device)
            };
            match flash::flash(&opts) {
                Ok(report) => {
                    if json {
                        print_json(&report)?;
                    } else {
                        print!("{}", report.human());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) if e.is_interrupted() => {
                    eprintln!("basalt: {e}");
                    Ok(ExitCode::from(130))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Completions { shell } => {
            write_completions(command(), shell, &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            let pages = write_man_pages(command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            eprintln!("wrote {} man pages into {}", pages.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Mesh { command } => mesh_cmd::run(command).map(|()| ExitCode::SUCCESS),
        Command::Config {
            command: ConfigCommand::Validate { file, json },
        } => {
            let v = config_cmd::validate_file(&file)
                .with_context(|| format!("reading cloud-config {}", file.display()))?;
            if json {
                println!("{}", v.json());
            } else if v.is_valid() {
                println!("{}", v.human());
            } else {
                eprintln!("{}", v.human());
            }
            Ok(if v.is_valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run_bundle_command(command: BundleCommand) -> Result<()> {
    match command {
        BundleCommand::Keygen { out, json } => {
            let k = bundle_cmd::keygen(&out)?;
            if json {
                print_json(&k)?;
            } else {
                println!("{}", k.public_key);
                eprintln!(
                    "wrote {} and {} (key id {})",
                    k.secret_key_file.display(),
                    k.public_key_file.display(),
                    k.key_id
                );
            }
        }
        BundleCommand::Bundle {
            image,
            key,
            min_version,
            out,
            delta_from,
            json,
        } => {
            let b = bundle_cmd::bundle(&bundle_cmd::BundleOptions {
                image,
                key,
                min_version,
                out,
                delta_from,
                created: bundle_cmd::created_now(),
            })?;
            if json {
                print_json(&b)?;
            } else {
                let delta = b
                    .manifest
                    .base_version
                    .as_ref()
                    .map(|v| format!(" (delta from {v})"))
                    .unwrap_or_default();
                println!(
                    "{}  {} {}{delta} signed by {}",
                    b.bundle.display(),
                    b.manifest.name,
                    b.manifest.version,
                    b.key_id
                );
                if let Some(base) = &b.manifest.base_version {
                    let (packed, raw) = b
                        .manifest
                        .payloads
                        .iter()
                        .fold((0, 0), |(p, r), x| (p + x.compressed_size, r + x.size));
                    if packed * 2 > raw {
                        eprintln!(
                            "basalt: note: the delta is {:.0} % of the payloads' size: {base} and {} share little (a suite upgrade?), so devices gain little from it over the full bundle",
                            100.0 * packed as f64 / raw.max(1) as f64,
                            b.manifest.version
                        );
                    }
                }
            }
        }
        BundleCommand::Sign { bundle, key, json } => {
            let s = bundle_cmd::sign(&bundle, &key)?;
            if json {
                print_json(&s)?;
            } else {
                println!(
                    "{}  signed by {} ({} signatures)",
                    s.bundle.display(),
                    s.key_id,
                    s.signatures
                );
            }
        }
        BundleCommand::Inspect {
            bundle,
            trust,
            threshold,
            no_payloads,
            json,
        } => {
            let trust = trust
                .iter()
                .map(|t| bundle_cmd::read_public_key(t))
                .collect::<Result<Vec<_>, _>>()?;
            let report = bundle_cmd::inspect(&bundle_cmd::InspectOptions {
                bundle,
                trust,
                threshold,
                payloads: !no_payloads,
            })?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.render());
            }
            bundle_cmd::require_ok(&report)?;
        }
        BundleCommand::Channel {
            bundle,
            out,
            percent,
            recall,
            bundle_url,
            delta,
            json,
        } => {
            let done = channel_cmd::channel(&channel_cmd::ChannelOptions {
                bundle,
                out,
                percent,
                recall,
                bundle_url,
                deltas: delta,
            })?;
            if json {
                print_json(&done)?;
            } else {
                print!("{}", done.render());
            }
        }
    }
    Ok(())
}

/// The build record next to an image: `X.img`, `X.img.zst` and `X.qcow2` all belong to `X.json`.
fn record_beside(image: &Path) -> Result<BuildRecord> {
    let path = build::record_path(image);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the build record {} (or pass --board)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `--forward HOST:GUEST`.
fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:GUEST, such as 8080:8080"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a TCP port (1-65535)"))
    };
    Ok((port(h)?, port(g)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command, the root included, by its full name (`basalt mesh token`).
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
            // Its options too.
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
