//! `basalt-agent` as PID 1 of the initrd.
//!
//! 1. mount `/proc`, `/sys`, `/dev`, `/run`;
//! 2. load the kernel modules the builder listed, in order;
//! 3. find the boot disk and this slot's root partition;
//! 4. mount the root read-only at `/sysroot`;
//!    (with `basalt.live`, the live system of the installer ISO instead:
//!    find the ISO, mount its `basalt/root.img` through a loop device as the
//!    root and a tmpfs as the data partition, skipping 5);
//! 5. grow the data partition to fill the disk (first boot on a bigger disk),
//!    mount it at `/sysroot/data`, grow its ext4 online;
//! 6. lay a persistent overlay over `/etc`, bind `/var` and `/home` from data;
//! 7. `switch_root` into systemd.
//!
//! A failure that leaves no root to switch to is reported on the console and
//! the machine reboots after a pause, so that the boot loader's counter can
//! fall back to the other slot.

use crate::disk::{self, SysRoots};
use crate::{kerr, kinfo, knotice, kwarn};
use basalt_formats::boot::{BootInfo, BOOT_INFO_PATH, LIVE_MEDIUM_DIR};
use basalt_formats::cmdline::KernelCmdline;
use basalt_formats::initrd::{InitrdConfig, INITRD_CONFIG_PATH};
use basalt_formats::Slot;
use nix::mount::{mount, MsFlags};
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SYSROOT: &str = "/sysroot";
const DATA: &str = "/sysroot/data";
/// How long to wait for the boot disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(60);

/// True when this process is PID 1 started as `/init` by the kernel.
pub fn is_initrd_pid1() -> bool {
    std::process::id() == 1
        && std::env::args()
            .next()
            .is_some_and(|a| a == "/init" || a.ends_with("/init"))
}

/// Runs the initrd. Never returns: it either executes the real init or reboots.
pub fn main() -> ! {
    let err = match run() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    kerr!("boot failed: {err:#}");
    kerr!("rebooting in 10 s; the boot loader will count this as a failed try");
    std::thread::sleep(Duration::from_secs(10));
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

enum Never {}

fn run() -> anyhow::Result<Never> {
    use anyhow::Context;
    mount_api_filesystems()?;
    let cmdline = KernelCmdline::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for w in &cmdline.warnings {
        kwarn!("kernel command line: {w}");
    }
    let config: InitrdConfig = serde_json::from_str(
        &fs::read_to_string(INITRD_CONFIG_PATH)
            .with_context(|| format!("reading {INITRD_CONFIG_PATH}"))?,
    )
    .with_context(|| format!("parsing {INITRD_CONFIG_PATH}"))?;
    knotice!(
        "{} on {} (kernel {}){}",
        config.version,
        config.board,
        config.kernel_version,
        if cmdline.live { ", live system" } else { "" }
    );

    load_modules(&config.modules);

    let efivars = Path::new("/sys/firmware/efi/efivars");
    if efivars.is_dir() {
        if let Err(e) = mount(
            Some("efivarfs"),
            efivars,
            Some("efivarfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            kwarn!("mounting efivarfs: {e}");
        }
    }
    mkdir(SYSROOT)?;
    let mut info = if cmdline.live {
        mount_live(&config)?
    } else {
        let slot = match cmdline.slot {
            Some(slot) => slot,
            None => firmware_slot().context(
                "the kernel command line has no basalt.slot=a|b and no boot firmware named the partition it started; the boot loader entry is broken",
            )?,
        };
        mount_slot(&config, slot, efivars)?
    };

    // Persistent /etc: the image's /etc below, the device's changes above.
    for d in ["overlay/etc/upper", "overlay/etc/work", "home", "basalt"] {
        mkdir(&format!("{DATA}/{d}"))?;
    }
    // /var starts as the image shipped it.
    let var = Path::new(DATA).join("var");
    if !var.exists() {
        let partial = Path::new(DATA).join("var.partial");
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        let started = Instant::now();
        copy_tree(Path::new("/sysroot/var"), &partial)
            .with_context(|| format!("copying /var to {}", partial.display()))?;
        nix::unistd::sync();
        fs::rename(&partial, &var)
            .with_context(|| format!("renaming {} to {}", partial.display(), var.display()))?;
        knotice!(
            "data partition: /var populated from the image in {} ms",
            started.elapsed().as_millis()
        );
    }
    mount(
        Some("overlay"),
        "/sysroot/etc",
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some("lowerdir=/sysroot/etc,upperdir=/sysroot/data/overlay/etc/upper,workdir=/sysroot/data/overlay/etc/work"),
    )
    .context("mounting the /etc overlay")?;
    for d in ["var", "home"] {
        let src = format!("{DATA}/{d}");
        let dst = format!("{SYSROOT}/{d}");
        mount(
            Some(src.as_str()),
            dst.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("binding {src} on {dst}"))?;
    }

    info.initrd_done_ms = uptime_ms();
    mkdir("/run/basalt")?;
    fs::write(BOOT_INFO_PATH, serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing {BOOT_INFO_PATH}"))?;

    let init = cmdline.init.as_deref().unwrap_or("/sbin/init");
    knotice!(
        "switching root to {SYSROOT} after {} ms, starting {init}",
        info.initrd_done_ms
    );
    switch_root(SYSROOT, init)
}

/// The slot of the boot partition the Raspberry Pi firmware started, from
/// `/proc/device-tree/chosen/bootloader` (a Pi's `cmdline.txt` is the same
/// in both slots).
fn firmware_slot() -> anyhow::Result<Slot> {
    use anyhow::Context;
    let dir = Path::new(crate::update::tryboot::FIRMWARE_DT);
    let fw = crate::update::tryboot::read_firmware(dir)?;
    let slot = fw.slot().with_context(|| {
        format!(
            "the firmware started partition {}, which is not a basalt boot slot",
            fw.partition
        )
    })?;
    knotice!(
        "the firmware started partition {}{}: slot {slot}",
        fw.partition,
        if fw.tryboot {
            " on trial (tryboot)"
        } else {
            ""
        }
    );
    Ok(slot)
}

/// Finds this slot's partitions on the boot disk, mounts the root read-only
/// on [`SYSROOT`] and the data partition (grown first when the disk is
/// larger than the image) on [`DATA`].
fn mount_slot(config: &InitrdConfig, slot: Slot, efivars: &Path) -> anyhow::Result<BootInfo> {
    use anyhow::Context;
    knotice!("booting slot {slot} ({})", config.rootfs_type);
    let loader_esp = disk::loader_device_part_uuid(efivars);
    if let Some(g) = loader_esp {
        kinfo!("boot loader ESP: {g}");
    }

    let roots = SysRoots::default();
    let started = Instant::now();
    let boot = loop {
        let disks = disk::scan_disks(&roots);
        match disk::choose_boot_disk(&disks, slot, loader_esp) {
            Ok(b) if b.root.dev_path.is_some() && b.data.dev_path.is_some() => break b,
            Ok(_) | Err(_) if started.elapsed() < DISK_WAIT => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(b) => anyhow::bail!(disk::DiskError::NoNode {
                label: b.root.label,
                disk: b.disk.name
            }),
            Err(e) => return Err(e.into()),
        }
    };
    let root_dev = boot.root.dev_path.clone().expect("checked above");
    let data_dev = boot.data.dev_path.clone().expect("checked above");
    kinfo!(
        "disk {}: root {} ({}), data {}",
        boot.disk.dev_path.display(),
        root_dev.display(),
        boot.root.label,
        data_dev.display()
    );

    mount(
        Some(&root_dev),
        SYSROOT,
        Some(config.rootfs_type.kernel_name()),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mounting {} ({}) read-only on {SYSROOT}",
            root_dev.display(),
            config.rootfs_type
        )
    })?;

    let grown = match disk::grow_data_partition(&boot.disk, &boot.data) {
        Ok(g) => g,
        Err(e) => {
            // Not fatal: the device runs, with the data partition at its old size.
            kwarn!("could not grow the data partition: {e}");
            None
        }
    };
    if let Some(g) = &grown {
        knotice!(
            "data partition grown from {} to {} bytes",
            g.from_bytes,
            g.to_bytes
        );
    }
    mount(
        Some(&data_dev),
        DATA,
        Some("ext4"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mounting the data partition {} on {DATA}",
            data_dev.display()
        )
    })?;
    let part_bytes = match &grown {
        Some(g) => g.to_bytes,
        None => (boot.data.last_lba + 1 - boot.data.first_lba) * 512,
    };
    match disk::grow_ext4(&data_dev, Path::new(DATA), part_bytes) {
        Ok(Some(blocks)) => knotice!("data file system grown to {blocks} blocks"),
        Ok(None) => {}
        Err(e) => kwarn!("could not grow the data file system: {e}"),
    }

    Ok(BootInfo {
        slot,
        disk: boot.disk.dev_path.display().to_string(),
        esp_device: boot
            .esp
            .dev_path
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        root_device: root_dev.display().to_string(),
        data_device: data_dev.display().to_string(),
        data_grown: grown,
        initrd_done_ms: 0,
        live: false,
    })
}

/// Finds the installer ISO (a CD, or a USB stick it was written to), mounts
/// it read-only on [`LIVE_MEDIUM_DIR`] (moved with `/run` into the new root,
/// where `basalt-agent install` finds the image), attaches its
/// `basalt/root.img` to a loop device and mounts that read-only on
/// [`SYSROOT`], with a tmpfs as the data partition.
fn mount_live(config: &InitrdConfig) -> anyhow::Result<BootInfo> {
    use anyhow::Context;
    mkdir(LIVE_MEDIUM_DIR)?;
    let started = Instant::now();
    let medium = loop {
        if let Some(m) = find_live_medium() {
            break m;
        }
        if started.elapsed() >= DISK_WAIT {
            anyhow::bail!(
                "no ISO 9660 medium with {LIVE_ROOT_IMAGE} appeared in {} s (is the installer ISO attached?)",
                DISK_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    kinfo!("live medium {} on {LIVE_MEDIUM_DIR}", medium.display());
    let image = Path::new(LIVE_MEDIUM_DIR).join(LIVE_ROOT_IMAGE);
    let loop_dev = attach_loop(&image)?;
    mount(
        Some(&loop_dev),
        SYSROOT,
        Some(config.rootfs_type.kernel_name()),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mounting {} ({}, {}) read-only on {SYSROOT}",
            loop_dev.display(),
            image.display(),
            config.rootfs_type
        )
    })?;
    mount(
        Some("tmpfs"),
        DATA,
        Some("tmpfs"),
        MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .with_context(|| format!("mounting a tmpfs on {DATA}"))?;
    knotice!(
        "live system: root {} from {}, data in memory",
        loop_dev.display(),
        medium.display()
    );
    Ok(BootInfo {
        slot: Slot::A,
        disk: medium.display().to_string(),
        esp_device: String::new(),
        root_device: loop_dev.display().to_string(),
        data_device: "tmpfs".into(),
        data_grown: None,
        initrd_done_ms: 0,
        live: true,
    })
}

/// The root file system image on the installer ISO, relative to its top.
const LIVE_ROOT_IMAGE: &str = "basalt/root.img";

/// True when `sector` (2048 bytes read at byte 32768) is an ISO 9660
/// volume descriptor.
pub fn is_iso9660_descriptor(sector: &[u8]) -> bool {
    sector.len() >= 6 && &sector[1..6] == b"CD001"
}

/// Tries every block device holding an ISO 9660 volume: mounts it on
/// [`LIVE_MEDIUM_DIR`] and keeps it when it holds [`LIVE_ROOT_IMAGE`].
fn find_live_medium() -> Option<PathBuf> {
    use std::os::unix::fs::FileExt;
    let mut names: Vec<String> = fs::read_dir("/sys/class/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "dm-"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    // CDs first, then whole disks before their partitions.
    names.sort_by_key(|n| (!n.starts_with("sr"), n.len(), n.clone()));
    for name in names {
        let dev = PathBuf::from("/dev").join(&name);
        let Ok(f) = fs::File::open(&dev) else {
            continue;
        };
        let mut sector = [0u8; 2048];
        if f.read_exact_at(&mut sector, 32768).is_err() || !is_iso9660_descriptor(&sector) {
            continue;
        }
        drop(f);
        if let Err(e) = mount(
            Some(&dev),
            LIVE_MEDIUM_DIR,
            Some("iso9660"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        ) {
            kwarn!("{}: mounting as ISO 9660: {e}", dev.display());
            continue;
        }
        if Path::new(LIVE_MEDIUM_DIR).join(LIVE_ROOT_IMAGE).is_file() {
            return Some(dev);
        }
        kinfo!(
            "{}: an ISO 9660 volume without {LIVE_ROOT_IMAGE}",
            dev.display()
        );
        let _ = nix::mount::umount(LIVE_MEDIUM_DIR);
    }
    None
}

/// Attaches `image` read-only to a free loop device and returns the device.
fn attach_loop(image: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    // linux/loop.h
    const LOOP_SET_FD: libc::c_ulong = 0x4C00;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    let ctl = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("opening /dev/loop-control (is the loop module loaded?)")?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("finding a free loop device");
    }
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let started = Instant::now();
    let loop_file = loop {
        match fs::OpenOptions::new().read(true).open(&dev) {
            Ok(f) => break f,
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", dev.display())),
        }
    };
    // Opened read-only, so the loop device is read-only too.
    let backing = fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor, which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            loop_file.as_raw_fd(),
            LOOP_SET_FD as _,
            backing.as_raw_fd() as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("attaching {} to {}", image.display(), dev.display()));
    }
    Ok(dev)
}

fn mkdir(path: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    fs::create_dir_all(path).with_context(|| format!("creating {path}"))
}

fn mount_api_filesystems() -> anyhow::Result<()> {
    use anyhow::Context;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (src, dst, fstype, flags, data) in [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ] {
        mkdir(dst)?;
        match mount(Some(src), dst, Some(fstype), flags, data) {
            Ok(()) => {}
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            Err(nix::Error::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mounting {fstype} on {dst}")),
        }
    }
    Ok(())
}

/// `MODULE_INIT_COMPRESSED_FILE` (Linux 6.4): the kernel decompresses the
/// module itself, with the algorithm it was built for
/// (`CONFIG_MODULE_DECOMPRESS`; Debian's 6.12 kernels ship `.ko.xz`).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// The `finit_module` flags for a module file: compressed ones are handed
/// to the kernel as they are.
fn module_flags(path: &str) -> nix::kmod::ModuleInitFlags {
    if [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|e| path.ends_with(e))
    {
        nix::kmod::ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        nix::kmod::ModuleInitFlags::empty()
    }
}

fn load_modules(modules: &[String]) {
    let started = Instant::now();
    let mut loaded = 0;
    for m in modules {
        let file = match fs::File::open(m) {
            Ok(f) => f,
            Err(e) => {
                kwarn!("module {m}: {e}");
                continue;
            }
        };
        match nix::kmod::finit_module(&file, &CString::default(), module_flags(m)) {
            Ok(()) => loaded += 1,
            Err(nix::Error::EEXIST) => {}
            // No such hardware: normal for drivers of buses this machine lacks.
            Err(nix::Error::ENODEV) => {}
            Err(e) => kwarn!("module {m}: {e}"),
        }
    }
    kinfo!(
        "loaded {loaded} of {} modules in {} ms",
        modules.len(),
        started.elapsed().as_millis()
    );
}

fn uptime_ms() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

/// Moves the API file systems into `new_root`, frees the initramfs, makes
/// `new_root` the root and executes `init` there as PID 1.
fn switch_root(new_root: &str, init: &str) -> anyhow::Result<Never> {
    use anyhow::Context;
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{new_root}{m}");
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("moving {m} to {target}"))?;
    }
    std::env::set_current_dir(new_root).with_context(|| format!("entering {new_root}"))?;
    // The initramfs is RAM: empty it before leaving, staying on its own file system.
    if let Ok(meta) = fs::metadata("/") {
        delete_tree_on_device(Path::new("/"), meta.dev());
    }
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    let init_c = CString::new(init).context("init path")?;
    let err = nix::unistd::execv(&init_c, &[&init_c]).unwrap_err();
    anyhow::bail!("executing {init}: {err}")
}

/// Copies a directory tree with modes, owners, times and symbolic links
/// (`cp -a` without extended attributes).
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::{symlink, PermissionsExt};
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        fs::create_dir(dst)?;
        let mut names: Vec<_> = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            copy_tree(&src.join(&n), &dst.join(&n))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode()))?;
    } else if ft.is_file() {
        fs::copy(src, dst)?;
    } else {
        // Sockets, FIFOs and device nodes have no place in a shipped /var.
        return Ok(());
    }
    let to_io = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
    nix::unistd::fchownat(
        None,
        dst,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(to_io)?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode()))?;
    }
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    utimensat(None, dst, &atime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(to_io)?;
    Ok(())
}

fn delete_tree_on_device(dir: &Path, dev: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path: PathBuf = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_tree_on_device(&path, dev);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso9660_descriptor() {
        let mut pvd = [0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        assert!(is_iso9660_descriptor(&pvd));
        assert!(!is_iso9660_descriptor(&[0u8; 2048]));
        assert!(!is_iso9660_descriptor(b"\x01CD0"));
    }

    #[test]
    fn compressed_modules_are_decompressed_by_the_kernel() {
        let flags = |p| module_flags(p).bits();
        assert_eq!(
            flags("/lib/modules/6.1.0-40-arm64/kernel/fs/ext4/ext4.ko"),
            0
        );
        assert_eq!(
            flags("/lib/modules/6.12.57+deb13-arm64/kernel/fs/ext4/ext4.ko.xz"),
            MODULE_INIT_COMPRESSED_FILE
        );
        assert_eq!(flags("/x/y.ko.zst"), MODULE_INIT_COMPRESSED_FILE);
    }
}
