//! `basalt build`: from an image spec to a bootable A/B disk image.
//!
//! 1. root file system: mmdebstrap (cached), unpacked, overlays laid on in
//!    order, the agent and its unit installed, machine-id emptied;
//! 2. the kernel taken out of `/boot`, the basalt initrd made for it;
//! 3. the root slot image (squashfs or erofs) and the data partition (ext4,
//!    holding `/var` as the image shipped it);
//! 4. the ESP with systemd-boot and both slots' boot files (UEFI boards), or
//!    the `autoboot.txt` partition and two FAT boot slots (Raspberry Pi);
//! 5. GPT (or MBR) disk image, then `.img.zst`, `.qcow2` (UEFI) or `.img.xz`
//!    and `.bmap` (Raspberry Pi), and the JSON build record.

pub mod disk;
pub mod esp;
pub mod fsimage;
pub mod initrd;
pub mod models;
pub mod rootfs;
pub mod rpi;

use crate::assets;
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use basalt_formats::board::BootLoader;
use basalt_formats::initrd::InitrdConfig;
use basalt_formats::layout::DiskLayout;
use basalt_formats::record::{Artifact, BuildRecord};
use basalt_formats::release::{Release, RELEASE_PATH};
use basalt_formats::spec::OverlayRef;
use basalt_formats::{Arch, BoardId, ImageSpec, Slot};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;

/// Where a spec came from, for resolving overlay paths and naming errors.
#[derive(Debug, Clone)]
pub enum SpecSource {
    Builtin,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub spec: SpecSource,
    pub board: Option<BoardId>,
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Re-run mmdebstrap even when a cached root file system matches.
    pub no_cache: bool,
    /// The agent binary for the board's architecture; found next to `basalt` when unset.
    pub agent: Option<PathBuf>,
    pub source_date_epoch: u64,
    /// Also write the compressed images and the block map (`.img.zst`,
    /// `.img.xz` and `.bmap` on a Raspberry Pi, `.img.zst` and `.qcow2` on
    /// UEFI boards). Without them only the raw `.img` is written: for tests
    /// that boot it, as xz alone takes minutes.
    pub compressed: bool,
}

/// Namespace for the GUIDs of an image's disk and partitions.
const GUID_NAMESPACE: Uuid = uuid::uuid!("6f0c3a9e-5b1d-4c8e-9a55-0b3a5a17b001");

/// The default cache directory: `$BASALT_CACHE_DIR`, else `$XDG_CACHE_HOME/basalt`, else `~/.cache/basalt`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BASALT_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("basalt");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/basalt"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/basalt"))
}

/// `SOURCE_DATE_EPOCH` from the environment, else the time the default spec's
/// package snapshot is pinned to: a fixed value so two builds agree.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")),
        Err(_) => Ok(1_700_000_000),
    }
}

pub fn load_spec(source: &SpecSource) -> Result<ImageSpec> {
    match source {
        SpecSource::Builtin => Ok(ImageSpec::parse(
            assets::DEFAULT_SPEC_NAME,
            assets::DEFAULT_SPEC,
        )?),
        SpecSource::File(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading image spec {}", p.display()))?;
            Ok(ImageSpec::parse(&p.display().to_string(), &text)?)
        }
    }
}

/// Finds the agent for `arch`: `cargo build --release -p basalt-agent --target T`
/// puts it at `<target dir>/<T>/release/basalt-agent`, and `basalt` itself
/// lives in `<target dir>/<profile>/`.
pub fn find_agent(arch: Arch, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("agent binary {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let var = format!("BASALT_AGENT_{}", arch.debian().to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{var}={} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the basalt binary")?;
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join(arch.rust_target()).join("release/basalt-agent"));
    }
    if Arch::host() == Some(arch) {
        if let Some(d) = exe.parent() {
            candidates.push(d.join("basalt-agent"));
        }
    }
    candidates.push(
        PathBuf::from("/usr/lib/basalt")
            .join(arch.rust_target())
            .join("basalt-agent"),
    );
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "no basalt-agent for {} found; build it with `cargo build --release -p basalt-agent --target {}`, or pass --agent PATH (or set {var})",
            arch.debian(),
            arch.rust_target()
        )
    })
}

fn guid(spec: &ImageSpec, board: BoardId, what: &str) -> Uuid {
    Uuid::new_v5(
        &GUID_NAMESPACE,
        format!("{}/{}/{board}/{what}", spec.name, spec.version).as_bytes(),
    )
}

/// File name stem of the artifacts: `<name>-<version>-<board>`.
pub fn artifact_stem(spec: &ImageSpec, board: BoardId) -> String {
    format!("{}-{}-{board}", spec.name, spec.version)
}

/// The build record beside an image: `X.img`, `X.img.zst` and `X.qcow2` all
/// belong to `X.json`.
pub fn record_path(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let stem = name
        .strip_suffix(".img.zst")
        .or_else(|| name.strip_suffix(".img.xz"))
        .or_else(|| name.strip_suffix(".img"))
        .or_else(|| name.strip_suffix(".qcow2"))
        .unwrap_or(&name);
    image.with_file_name(format!("{stem}.json"))
}

/// What a build made and how.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// Also written as `<stem>.json` beside the artifacts.
    pub record: BuildRecord,
    /// The root file system came from the cache (mmdebstrap did not run).
    pub rootfs_from_cache: bool,
    pub seconds: f64,
}

/// Builds the image.
pub fn build(opts: &BuildOptions) -> Result<BuildOutcome> {
    let spec = load_spec(&opts.spec)?;
    let board_id = opts.board.or(spec.board).unwrap_or(BoardId::X86_64Uefi);
    let board = assets::board(board_id)?;
    if let Some(why) = &board.unsupported {
        bail!(
            "board {board_id} cannot be built: {} (hardware/{board_id}.yaml)",
            why.trim()
        );
    }
    let arch = board.arch;
    let agent = find_agent(arch, opts.agent.as_deref())?;
    initrd::check_agent(&agent, arch)?;
    let epoch = opts.source_date_epoch;
    let stem = artifact_stem(&spec, board_id);
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let work = opts.out_dir.join(format!(".work-{stem}"));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;

    let mut progress =
        Progress::new(7 + usize::from(opts.compressed) + usize::from(!spec.models.is_empty()));

    // 1. Root file system.
    let mut packages: Vec<String> = spec
        .packages
        .iter()
        .chain(&board.packages)
        .cloned()
        .collect();
    packages.push(match &board.kernel_suite {
        Some(suite) => format!("{}/{suite}", board.kernel_package),
        None => board.kernel_package.clone(),
    });
    packages.sort();
    packages.dedup();
    let mut components = spec.components.clone();
    for c in board.rpi.iter().flat_map(|r| &r.components) {
        if !components.contains(c) {
            components.push(c.clone());
        }
    }
    let req = rootfs::RootfsRequest {
        suite: spec.suite.clone(),
        mirror: spec.mirror.clone(),
        components,
        extra_suites: board.kernel_suite.iter().cloned().collect(),
        arch,
        packages,
        source_date_epoch: epoch,
    };
    let step = progress.step(&format!(
        "root file system ({} {}, {} packages)",
        spec.suite,
        arch.debian(),
        req.packages.len()
    ));
    let (tar, cached) = rootfs::obtain(&req, &opts.cache_dir, opts.no_cache)?;
    step.done(if cached { "cached" } else { "mmdebstrap" });

    let step = progress.step("unpacking and customising the root file system");
    let root = work.join("rootfs");
    rootfs::unpack(&tar, &root)?;
    let installed = rootfs::installed_packages(&root)?;
    let (kernel_path, kver) = rootfs::find_kernel(&root, &board.kernel_package)?;
    let pi = board.boot_loader == BootLoader::RpiTryboot;
    // The Pi firmware starts Debian's gzip-compressed arm64 kernel as it is
    // (as Debian's raspi-firmware does); UEFI needs the EFI-stub image.
    let kernel = if pi {
        std::fs::read(&kernel_path).with_context(|| format!("reading {}", kernel_path.display()))?
    } else {
        read_kernel(&kernel_path)?
    };
    let pi_files = if pi {
        Some(rpi::board_files(&root, &board, &kver)?)
    } else {
        None
    };
    let systemd_boot = if pi {
        Vec::new()
    } else {
        let systemd_boot_path = root.join(format!(
            "usr/lib/systemd/boot/efi/systemd-boot{}.efi",
            arch.efi_suffix()
        ));
        std::fs::read(&systemd_boot_path).with_context(|| {
            format!(
                "reading {} (is systemd-boot-efi in the board's packages?)",
                systemd_boot_path.display()
            )
        })?
    };
    let release = Release {
        name: spec.name.clone(),
        version: spec.version.clone(),
        board: board_id,
        arch,
        rootfs_type: spec.rootfs_type,
        build_time: epoch,
    };
    customise(&root, &spec, &opts.spec, &agent, &release)?;
    if pi {
        // No boot counting pulls boot-complete.target in on a Pi: the health
        // check runs on every boot, and commits a good tryboot trial.
        let dir = root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&dir)?;
        let link = dir.join("basalt-health.service");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/usr/lib/systemd/system/basalt-health.service", &link)?;
    }
    step.done(&format!("kernel {kver}"));
    if !spec.models.is_empty() {
        let step = progress.step(&format!("models ({})", spec.models.len()));
        let spec_dir = match &opts.spec {
            SpecSource::File(f) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
            SpecSource::Builtin => std::env::current_dir()?,
        };
        let lines = models::install(&spec.models, &spec_dir, &opts.cache_dir, &root, Some(&step))?;
        step.done(&lines.join("; "));
    }

    // 2. initrd.
    let step = progress.step("initrd");
    let (initrd_bytes, initrd_config) = initrd::build(initrd::InitrdInputs {
        root: &root,
        arch,
        agent: &agent,
        modules: &board.initrd_modules,
        config: InitrdConfig {
            board: board_id,
            version: format!("{} {}", spec.name, spec.version),
            kernel_version: kver.clone(),
            rootfs_type: spec.rootfs_type,
            modules: Vec::new(),
        },
        mtime: epoch,
    })?;
    step.done(&format!(
        "{} modules, {} KiB",
        initrd_config.modules.len(),
        initrd_bytes.len() / 1024
    ));

    // 3. Data partition: an empty ext4. The initrd makes its directories and
    // copies /var from the root on first boot, so no file of this build's
    // host (whose inode change times cannot be set) ends up in the image.
    let step = progress.step("data partition (ext4)");
    let data_img = work.join("data.img");
    fsimage::ext4_image(
        &data_img,
        spec.sizes.data.bytes(),
        "data",
        epoch,
        guid(&spec, board_id, "data-fs"),
    )?;
    step.done(&format!("{}", spec.sizes.data));

    // 4. Root slot image.
    let step = progress.step(&format!("root slot image ({})", spec.rootfs_type));
    clamp_mtimes(&root, epoch)?;
    let root_img = work.join("root.img");
    fsimage::root_image(
        spec.rootfs_type,
        spec.rootfs_compression_level,
        &root,
        &root_img,
        epoch,
        guid(&spec, board_id, "root-fs"),
    )?;
    let rootfs_size = std::fs::metadata(&root_img)?.len();
    if rootfs_size > spec.sizes.slot.bytes() {
        bail!(
            "the root file system image is {} MiB but sizes.slot is {}; raise sizes.slot in the spec or remove packages",
            rootfs_size.div_ceil(1 << 20),
            spec.sizes.slot
        );
    }
    step.done(&format!(
        "{} MiB of {}",
        rootfs_size.div_ceil(1 << 20),
        spec.sizes.slot
    ));

    let mut cmdline: Vec<String> = board.kernel_cmdline.clone();
    cmdline.extend(spec.kernel_cmdline.iter().cloned());
    let img = opts.out_dir.join(format!("{stem}.img"));
    let (layout, outputs) = if let Some(pi_files) = &pi_files {
        let layout = pi_disk(
            &spec,
            board_id,
            &board,
            &work,
            &img,
            pi_files,
            &kernel,
            &initrd_bytes,
            &cmdline,
            &root_img,
            &data_img,
            &mut progress,
            epoch,
        )?;
        let outputs = if opts.compressed {
            pi_outputs(
                &opts.out_dir,
                &stem,
                &img,
                layout.total_bytes(),
                &mut progress,
            )?
        } else {
            vec![img.clone()]
        };
        (layout, outputs)
    } else {
        // 5. ESP.
        let step = progress.step("EFI system partition");
        let slots: Vec<esp::SlotBoot> = Slot::ALL
            .into_iter()
            .map(|slot| esp::SlotBoot {
                slot,
                // The factory copy in slot B sorts after slot A until an update replaces it.
                version: match slot {
                    Slot::A => spec.version.to_string(),
                    Slot::B => format!("{}~factory", spec.version),
                },
                title: format!("{} {} (slot {slot})", spec.name, spec.version),
                kernel: kernel.clone(),
                initrd: initrd_bytes.clone(),
                cmdline: format!("basalt.slot={slot} {}", cmdline.join(" ")),
            })
            .collect();
        let esp_img = work.join("esp.img");
        let vol_id = u32::from_le_bytes(
            guid(&spec, board_id, "esp-fs").as_bytes()[..4]
                .try_into()
                .expect("4 bytes"),
        );
        esp::write(
            &esp_img,
            spec.sizes.esp.bytes(),
            arch,
            &systemd_boot,
            &slots,
            vol_id,
            epoch,
        )?;
        step.done("systemd-boot, 2 slots");

        // 6. Disk.
        let step = progress.step("disk image");
        let layout = DiskLayout::uefi(arch, &spec.sizes);
        let part_guids: Vec<Uuid> = layout
            .partitions
            .iter()
            .map(|p| guid(&spec, board_id, &format!("part-{}", p.label)))
            .collect();
        let mut f = disk::create(&img, &layout, guid(&spec, board_id, "disk"), &part_guids)?;
        disk::write_partition(&mut f, &img, &layout, "esp", "sizes.esp", &esp_img)?;
        disk::write_partition(&mut f, &img, &layout, "root-a", "sizes.slot", &root_img)?;
        disk::write_partition(&mut f, &img, &layout, "root-b", "sizes.slot", &root_img)?;
        disk::write_partition(&mut f, &img, &layout, "data", "sizes.data", &data_img)?;
        f.sync_all()?;
        drop(f);
        step.done(&format!("{} MiB", layout.total_bytes() >> 20));

        // 7. Outputs.
        let outputs = if opts.compressed {
            uefi_outputs(
                &opts.out_dir,
                &stem,
                &img,
                layout.total_bytes(),
                &mut progress,
            )?
        } else {
            vec![img.clone()]
        };
        (layout, outputs)
    };

    let mut artifacts = Vec::new();
    for p in &outputs {
        artifacts.push(Artifact {
            file: p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned(),
            size: std::fs::metadata(p)?.len(),
            sha256: sha256_file(p)?,
        });
    }
    let record = BuildRecord {
        name: spec.name.clone(),
        version: spec.version.to_string(),
        board: board_id,
        arch,
        suite: spec.suite.clone(),
        rootfs_type: spec.rootfs_type,
        kernel_version: kver,
        source_date_epoch: epoch,
        esp_size: spec.sizes.esp.bytes(),
        slot_size: spec.sizes.slot.bytes(),
        data_size: spec.sizes.data.bytes(),
        rootfs_size,
        disk_size: layout.total_bytes(),
        packages: installed,
        artifacts,
    };
    let record_path = opts.out_dir.join(format!("{stem}.json"));
    let mut json = serde_json::to_vec_pretty(&record)?;
    json.push(b'\n');
    std::fs::write(&record_path, json)
        .with_context(|| format!("writing {}", record_path.display()))?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    let seconds = progress.elapsed().as_secs_f64();
    eprintln!("built {} in {seconds:.0} s", img.display());
    Ok(BuildOutcome {
        record,
        rootfs_from_cache: cached,
        seconds,
    })
}

/// Steps 5 and 6 for a Raspberry Pi: the `autoboot.txt` partition, a FAT
/// boot slot per root slot, and the MBR disk.
#[allow(clippy::too_many_arguments)]
fn pi_disk(
    spec: &ImageSpec,
    board_id: BoardId,
    board: &basalt_formats::Board,
    work: &Path,
    img: &Path,
    pi_files: &[rpi::FatFile],
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &[String],
    root_img: &Path,
    data_img: &Path,
    progress: &mut Progress,
    epoch: u64,
) -> Result<DiskLayout> {
    let rpi_settings = board.rpi.as_ref().expect("a Pi board has an rpi section");
    let step = progress.step("boot partitions (autoboot.txt, 2 FAT boot slots)");
    let vol_id = |what: &str| {
        u32::from_le_bytes(
            guid(spec, board_id, what).as_bytes()[..4]
                .try_into()
                .expect("4 bytes"),
        )
    };
    let autoboot_img = work.join("autoboot.img");
    rpi::write_fat(
        &autoboot_img,
        basalt_formats::layout::RPI_AUTOBOOT_BYTES,
        b"AUTOBOOT   ",
        &rpi::autoboot_files(),
        vol_id("autoboot-fs"),
        epoch,
        Some(fatfs::FatType::Fat16),
    )
    .with_context(|| format!("writing {}", autoboot_img.display()))?;
    // One boot slot image, written to both boot partitions: the same bytes
    // in each, so that a bundle's `boot` payload is this image and the
    // running slot's partition is a delta's base. The initrd learns its
    // slot from the partition the firmware started
    // (`/chosen/bootloader/partition`), not from `cmdline.txt`.
    let files = rpi::slot_files(pi_files, rpi_settings, kernel, initrd, &cmdline.join(" "));
    rpi::check_fits(&files, spec.sizes.esp.bytes())?;
    let boot_img = work.join("boot.img");
    rpi::write_fat(
        &boot_img,
        spec.sizes.esp.bytes(),
        b"BOOT       ",
        &files,
        vol_id("boot-fs"),
        epoch,
        None,
    )
    .with_context(|| format!("writing {}", boot_img.display()))?;
    step.done(&format!(
        "{} firmware files and device trees",
        pi_files.len()
    ));

    let step = progress.step("disk image (MBR)");
    let layout = DiskLayout::rpi(&spec.sizes);
    let mut f = disk::create(img, &layout, guid(spec, board_id, "disk"), &[])?;
    disk::write_partition(&mut f, img, &layout, "autoboot", "sizes.esp", &autoboot_img)?;
    disk::write_partition(&mut f, img, &layout, "boot-a", "sizes.esp", &boot_img)?;
    disk::write_partition(&mut f, img, &layout, "boot-b", "sizes.esp", &boot_img)?;
    disk::write_partition(&mut f, img, &layout, "root-a", "sizes.slot", root_img)?;
    disk::write_partition(&mut f, img, &layout, "root-b", "sizes.slot", root_img)?;
    disk::write_partition(&mut f, img, &layout, "data", "sizes.data", data_img)?;
    f.sync_all()?;
    drop(f);
    step.done(&format!("{} MiB", layout.total_bytes() >> 20));
    Ok(layout)
}

/// A Pi image's other outputs: `.img.zst`, `.img.xz` (what Raspberry Pi
/// Imager takes) and the block map.
fn pi_outputs(
    out_dir: &Path,
    stem: &str,
    img: &Path,
    total_bytes: u64,
    progress: &mut Progress,
) -> Result<Vec<PathBuf>> {
    let step = progress.step("compressed images and block map");
    let zst = out_dir.join(format!("{stem}.img.zst"));
    step.bytes(total_bytes * 2);
    compress_zstd(img, &zst, |n| step.inc(n))?;
    let xz = out_dir.join(format!("{stem}.img.xz"));
    compress_xz(img, &xz, |n| step.inc(n))?;
    let bmap = out_dir.join(format!("{stem}.bmap"));
    let _ = std::fs::remove_file(&bmap);
    crate::tools::run(
        Command::new("bmaptool")
            .args(["create", "-o"])
            .arg(&bmap)
            .arg(img),
    )?;
    step.done("");
    Ok(vec![img.to_path_buf(), xz, zst, bmap])
}

/// A UEFI image's other outputs: `.img.zst` and `.qcow2`.
fn uefi_outputs(
    out_dir: &Path,
    stem: &str,
    img: &Path,
    total_bytes: u64,
    progress: &mut Progress,
) -> Result<Vec<PathBuf>> {
    let step = progress.step("compressed and qcow2 images");
    let zst = out_dir.join(format!("{stem}.img.zst"));
    step.bytes(total_bytes);
    compress_zstd(img, &zst, |n| step.inc(n))?;
    let qcow2 = out_dir.join(format!("{stem}.qcow2"));
    let _ = std::fs::remove_file(&qcow2);
    crate::tools::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(img)
            .arg(&qcow2),
    )?;
    step.done("");
    Ok(vec![img.to_path_buf(), zst, qcow2])
}

/// Reads the kernel. Debian's arm64 `vmlinuz` is a gzip-compressed `Image`,
/// which UEFI cannot start; it is decompressed into the EFI-stub image.
fn read_kernel(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}", path.display()))?;
        return Ok(out);
    }
    Ok(raw)
}

/// Lays overlays, the agent, its unit and the release file on the unpacked
/// root file system, and prepares it for an immutable, shared-by-all-devices root.
fn customise(
    root: &Path,
    spec: &ImageSpec,
    source: &SpecSource,
    agent: &Path,
    release: &Release,
) -> Result<()> {
    for o in &spec.overlays {
        match o {
            OverlayRef::Builtin(name) => {
                let dir = assets::OVERLAYS
                    .get_dir(name.as_str())
                    .with_context(|| format!("overlays: no built-in overlay named {name:?}"))?;
                write_embedded_dir(dir, root)?;
            }
            OverlayRef::Path(p) => {
                let base = match source {
                    SpecSource::File(f) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
                    SpecSource::Builtin => std::env::current_dir()?,
                };
                let dir = base.join(p);
                if !dir.is_dir() {
                    bail!("overlays: {} is not a directory", dir.display());
                }
                tools_copy_tree(&dir, root)?;
            }
        }
    }
    let bin = root.join("usr/bin/basalt-agent");
    std::fs::copy(agent, &bin)
        .with_context(|| format!("installing {} as {}", agent.display(), bin.display()))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let rel = root.join(RELEASE_PATH.trim_start_matches('/'));
    std::fs::create_dir_all(rel.parent().expect("has parent"))?;
    std::fs::write(&rel, serde_json::to_vec_pretty(release)?)?;
    enable_units(root)?;
    // Networking: systemd-networkd with the base overlay's DHCP for wired interfaces.
    for (unit, wanted_by) in [
        ("systemd-networkd.service", "multi-user.target"),
        ("systemd-networkd.socket", "sockets.target"),
        (
            "systemd-networkd-wait-online.service",
            "network-online.target",
        ),
    ] {
        enable_system_unit(root, unit, wanted_by)?;
    }
    // One root for every device: each makes its own machine-id on first boot
    // (systemd writes it into the persistent /etc overlay).
    std::fs::write(root.join("etc/machine-id"), b"")?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    std::fs::write(root.join("etc/hostname"), b"basalt\n")?;
    // Host keys are per device (basalt-ssh-keygen.service makes them on first boot).
    if let Ok(entries) = std::fs::read_dir(root.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    std::fs::write(
        root.join("etc/fstab"),
        b"# basalt: the initrd mounts / (read-only slot), /data, /etc, /var and /home.\n\
# The root is read-only: /tmp is a tmpfs (services with PrivateTmp= need a writable /tmp).\n\
tmpfs /tmp tmpfs mode=1777,strictatime,nosuid,nodev,size=50%,nr_inodes=1m 0 0\n",
    )?;
    // Mount points: the data partition, and /efi for systemd's automatic ESP mount.
    for d in ["data", "efi"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    // The kernel and initrd live on the ESP, not in the slot.
    for e in std::fs::read_dir(root.join("boot"))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("vmlinuz-") || n.starts_with("initrd.img-") || n.starts_with("System.map-")
        {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Enables basalt's own units (`basalt-*.service`) by their `WantedBy=` and
/// `RequiredBy=`, as `systemctl enable` would.
fn enable_units(root: &Path) -> Result<()> {
    let units = root.join("usr/lib/systemd/system");
    let mut names: Vec<String> = std::fs::read_dir(&units)
        .with_context(|| format!("reading {}", units.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("basalt-") && n.ends_with(".service"))
        .collect();
    names.sort();
    for name in names {
        let unit = units.join(&name);
        let text = std::fs::read_to_string(&unit)
            .with_context(|| format!("reading {}", unit.display()))?;
        for line in text.lines() {
            let line = line.trim();
            let (targets, suffix) = if let Some(t) = line.strip_prefix("WantedBy=") {
                (t, "wants")
            } else if let Some(t) = line.strip_prefix("RequiredBy=") {
                (t, "requires")
            } else {
                continue;
            };
            for t in targets.split_whitespace() {
                let dir = root
                    .join("etc/systemd/system")
                    .join(format!("{t}.{suffix}"));
                std::fs::create_dir_all(&dir)?;
                let link = dir.join(&name);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(format!("/usr/lib/systemd/system/{name}"), &link)?;
            }
        }
    }
    Ok(())
}

/// Enables a unit the image's packages ship, as `systemctl enable` would for `WantedBy=wanted_by`.
fn enable_system_unit(root: &Path, unit: &str, wanted_by: &str) -> Result<()> {
    let shipped = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|d| Path::new("/").join(d).join(unit))
        .find(|p| root.join(p.strip_prefix("/").expect("absolute")).is_file())
        .with_context(|| format!("enabling {unit}: the root file system has no such unit"))?;
    let dir = root
        .join("etc/systemd/system")
        .join(format!("{wanted_by}.wants"));
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(unit);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(shipped, &link)?;
    Ok(())
}

fn write_embedded_dir(dir: &include_dir::Dir<'_>, root: &Path) -> Result<()> {
    for f in dir.files() {
        // Paths inside the embedded tree start with the overlay's own name.
        let rel: PathBuf = f.path().components().skip(1).collect();
        let dst = root.join(&rel);
        std::fs::create_dir_all(dst.parent().expect("has parent"))?;
        std::fs::write(&dst, f.contents()).with_context(|| format!("writing {}", dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))?;
    }
    for d in dir.dirs() {
        write_embedded_dir(d, root)?;
    }
    Ok(())
}

/// Copies a tree with owners, modes, links and extended attributes (`cp -a`).
fn tools_copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    crate::tools::run(Command::new("cp").arg("-a").arg(from).arg(dst))?;
    Ok(())
}

/// Sets every timestamp in `dir` newer than `epoch` to `epoch`, as reproducible builds do.
fn clamp_mtimes(dir: &Path, epoch: u64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(epoch as i64, 0);
    for e in walkdir::WalkDir::new(dir).contents_first(true) {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        if filetime::FileTime::from_last_modification_time(&m) > t {
            filetime::set_symlink_file_times(e.path(), t, t)
                .with_context(|| format!("setting the time of {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn compress_zstd(src: &Path, dst: &Path, mut progress: impl FnMut(u64)) -> Result<()> {
    let mut input = std::fs::File::open(src)?;
    let out = std::fs::File::create(dst)?;
    let mut enc = zstd::stream::Encoder::new(out, 6)?;
    enc.multithread(2)?;
    enc.include_checksum(true)?;
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
        progress(n as u64);
    }
    enc.finish()?.sync_all()?;
    Ok(())
}

fn compress_xz(src: &Path, dst: &Path, mut progress: impl FnMut(u64)) -> Result<()> {
    let mut input = std::fs::File::open(src)?;
    let out = std::fs::File::create(dst)?;
    // xz's own command: multi-threaded, and what rpi-imager reads.
    let mut child = Command::new("xz")
        .args(["-2", "-T2", "--check=crc64", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running xz (package xz-utils)")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stdin.write_all(&buf[..n]).context("writing to xz")?;
            progress(n as u64);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("xz failed ({status}) compressing {}", src.display());
    }
    Ok(())
}

pub fn sha256_file(p: &Path) -> Result<String> {
    let f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let digest = basalt_formats::bundle::Sha256Digest::of_reader(f)
        .with_context(|| format!("reading {}", p.display()))?;
    Ok(digest.to_string())
}
