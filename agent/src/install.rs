//! `basalt-agent install`: on the live system of the installer ISO, write
//! the image the ISO carries onto a disk, check it, and (optionally) reboot
//! into it.
//!
//! The ISO holds `basalt/<name>.img.zst` and its build record
//! `basalt/<name>.json`; the record's `.img` artifact gives the size and
//! SHA-256 the written disk must have. The image is streamed through zstd;
//! all-zero blocks of the (sparse) image are zeroed with `BLKZEROOUT` where
//! the device offers it rather than written, then the device is flushed, its
//! cached pages are dropped and every byte of the image's extent is read
//! back and hashed. Finally the kernel re-reads the partition table.

use basalt_formats::boot::{BootInfo, BOOT_INFO_PATH, LIVE_MEDIUM_DIR};
use basalt_formats::cloud_config::InstallTarget;
use basalt_formats::record::BuildRecord;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes handled at a time.
const CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("this is not a live system booted from the installer ISO ({BOOT_INFO_PATH} says so); `basalt-agent install` only runs there")]
    NotLive,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{dir} holds no image to install (a build record `*.json` beside its `*.img.zst`)")]
    NoPayload { dir: PathBuf },
    #[error("{path}: not a build record: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("refusing to write to {device}: it is the live medium this system runs from")]
    LiveMedium { device: PathBuf },
    #[error("refusing to write to {device}: it is not a whole-disk block device")]
    NotADisk { device: PathBuf },
    #[error("refusing to write to {device}: it holds {size} bytes, the image needs {needed}")]
    TooSmall {
        device: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("refusing to write to {device}: it is in use ({what}); unmount it first")]
    InUse { device: PathBuf, what: String },
    #[error("refusing to write to {device}: it is read-only")]
    ReadOnly { device: PathBuf },
    #[error("no disk to install onto: {reason}")]
    NoTarget { reason: String },
    #[error("several disks could take the image ({candidates}); name one instead of `auto`")]
    Ambiguous { candidates: String },
    #[error("{path}: the image ends after {got} bytes, the build record says {expected}")]
    ShortImage {
        path: PathBuf,
        got: u64,
        expected: u64,
    },
    #[error("{device} already holds this image (GPT disk GUID {guid}): not installing it again unattended; remove the installer medium, or run `basalt-agent install {device}` to write it anyway")]
    AlreadyInstalled { device: PathBuf, guid: String },
    #[error("{device} reads back with SHA-256 {found}, but the build record says {expected}: the write did not stick or the ISO is damaged")]
    Mismatch {
        device: PathBuf,
        expected: String,
        found: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The image on the live medium.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The `.img.zst` file.
    pub image: PathBuf,
    pub record: BuildRecord,
    /// Size of the raw image.
    pub size: u64,
    /// SHA-256 of the raw image, hex.
    pub sha256: String,
}

/// Finds the image and its build record in `dir` (the ISO's `basalt/`).
pub fn find_payload(dir: &Path) -> Result<Payload, InstallError> {
    let mut records: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    records.sort();
    for path in records {
        let text = fs::read(&path).map_err(io_err(&path))?;
        let record: BuildRecord =
            serde_json::from_slice(&text).map_err(|e| InstallError::BadRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let Some(raw) = record.artifacts.iter().find(|a| a.file.ends_with(".img")) else {
            return Err(InstallError::BadRecord {
                path,
                reason: "no .img artifact".into(),
            });
        };
        let image = dir.join(format!("{}.zst", raw.file));
        if image.is_file() {
            return Ok(Payload {
                size: raw.size,
                sha256: raw.sha256.clone(),
                image,
                record,
            });
        }
    }
    Err(InstallError::NoPayload {
        dir: dir.to_path_buf(),
    })
}

/// A whole disk as `/sys/class/block` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    pub name: String,
    pub size: u64,
    pub removable: bool,
    pub read_only: bool,
    /// `major:minor` of the disk and of each of its partitions.
    pub devs: Vec<String>,
}

/// Whole disks under `sys_block` (`/sys/block`), other than loop, RAM and
/// device-mapper devices.
pub fn list_disks(sys_block: &Path) -> Vec<DiskEntry> {
    let read = |p: PathBuf| fs::read_to_string(p).map(|s| s.trim().to_string());
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(sys_block) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "dm-", "md"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let dir = sys_block.join(&name);
        let mut devs: Vec<String> = read(dir.join("dev")).into_iter().collect();
        if let Ok(parts) = fs::read_dir(&dir) {
            for p in parts.flatten() {
                if p.path().join("partition").exists() {
                    devs.extend(read(p.path().join("dev")));
                }
            }
        }
        devs.sort();
        out.push(DiskEntry {
            size: read(dir.join("size"))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                * 512,
            removable: read(dir.join("removable")).is_ok_and(|s| s == "1"),
            read_only: read(dir.join("ro")).is_ok_and(|s| s == "1"),
            devs,
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Mount sources by `major:minor`, from `/proc/self/mountinfo`.
pub fn mounted_devs(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let dev = w.nth(2)?.to_string();
            let point = w.nth(1)?.to_string();
            Some((dev, point))
        })
        .collect()
}

/// Why `disk` may not take an image of `needed` bytes, if it may not.
pub fn refusal(
    disk: &DiskEntry,
    live_medium: &str,
    needed: u64,
    mounts: &[(String, String)],
) -> Option<InstallError> {
    let device = PathBuf::from("/dev").join(&disk.name);
    let live_name = live_medium.strip_prefix("/dev/").unwrap_or(live_medium);
    // The medium may be a partition of this disk (a USB stick's).
    if live_name == disk.name
        || (live_name.starts_with(&disk.name)
            && live_name[disk.name.len()..]
                .trim_start_matches('p')
                .chars()
                .all(|c| c.is_ascii_digit()))
    {
        return Some(InstallError::LiveMedium { device });
    }
    if let Some((_, point)) = mounts.iter().find(|(d, _)| disk.devs.contains(d)) {
        return Some(InstallError::InUse {
            device,
            what: format!("mounted on {point}"),
        });
    }
    if disk.read_only {
        return Some(InstallError::ReadOnly { device });
    }
    if disk.size < needed {
        return Some(InstallError::TooSmall {
            device,
            size: disk.size,
            needed,
        });
    }
    None
}

/// Resolves `target` to the disk to write, with every refusal checked.
pub fn choose_target(
    target: &InstallTarget,
    disks: &[DiskEntry],
    live_medium: &str,
    needed: u64,
    mounts: &[(String, String)],
) -> Result<PathBuf, InstallError> {
    match target {
        InstallTarget::Device(d) => {
            let path = PathBuf::from(d);
            // Follow /dev/disk/by-id links and the like.
            let real = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let name = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(disk) = disks.iter().find(|x| x.name == name) else {
                return Err(InstallError::NotADisk { device: path });
            };
            match refusal(disk, live_medium, needed, mounts) {
                Some(e) => Err(e),
                None => Ok(PathBuf::from("/dev").join(&disk.name)),
            }
        }
        InstallTarget::Auto => {
            let mut fit = Vec::new();
            let mut why = Vec::new();
            for d in disks {
                if d.removable {
                    why.push(format!("{} is removable", d.name));
                    continue;
                }
                if d.name.starts_with("sr") {
                    continue;
                }
                match refusal(d, live_medium, needed, mounts) {
                    Some(e) => why.push(e.to_string()),
                    None => fit.push(d),
                }
            }
            match fit.as_slice() {
                [one] => Ok(PathBuf::from("/dev").join(&one.name)),
                [] => Err(InstallError::NoTarget {
                    reason: if why.is_empty() {
                        "this machine has no disk besides the live medium".into()
                    } else {
                        why.join("; ")
                    },
                }),
                many => Err(InstallError::Ambiguous {
                    candidates: many
                        .iter()
                        .map(|d| format!("/dev/{} ({} bytes)", d.name, d.size))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

/// What an installation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    pub device: PathBuf,
    pub image: String,
    pub version: String,
    pub bytes: u64,
    /// Bytes written as data; the rest were zero blocks.
    pub bytes_written: u64,
    pub sha256: String,
    pub verified: bool,
    pub duration_s: f64,
}

/// Progress: bytes done of the total, and the phase.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Writes the payload onto `device` (a block device or, in tests, a file)
/// and reads it back.
pub fn write_and_verify(
    payload: &Payload,
    device: &Path,
    progress: Progress<'_>,
) -> Result<Installed, InstallError> {
    let started = Instant::now();
    let src = File::open(&payload.image).map_err(io_err(&payload.image))?;
    let mut dec = zstd::Decoder::new(src).map_err(io_err(&payload.image))?;
    let dev = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .custom_flags_excl(device)
        .open(device)
        .map_err(io_err(device))?;
    let is_block = dev
        .metadata()
        .map_err(io_err(device))?
        .file_type()
        .is_block_device();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut written = 0u64;
    let zeros = vec![0u8; CHUNK];
    while pos < payload.size {
        let want = (payload.size - pos).min(CHUNK as u64) as usize;
        let got = basalt_formats::bundle::stream::read_full(&mut dec, &mut buf[..want])
            .map_err(io_err(&payload.image))?;
        if got < want {
            return Err(InstallError::ShortImage {
                path: payload.image.clone(),
                got: pos + got as u64,
                expected: payload.size,
            });
        }
        let chunk = &buf[..want];
        if chunk.iter().all(|&b| b == 0) {
            if !(is_block && zero_out(&dev, pos, want as u64).is_ok()) {
                dev.write_all_at(&zeros[..want], pos)
                    .map_err(io_err(device))?;
            }
        } else {
            dev.write_all_at(chunk, pos).map_err(io_err(device))?;
            written += want as u64;
        }
        pos += want as u64;
        progress("write", pos, payload.size);
    }
    dev.sync_all().map_err(io_err(device))?;
    // Read back what the device holds, not the page cache.
    // SAFETY: plain advice on an open descriptor.
    unsafe {
        libc::posix_fadvise(dev.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    while pos < payload.size {
        let want = (payload.size - pos).min(CHUNK as u64) as usize;
        dev.read_exact_at(&mut buf[..want], pos)
            .map_err(io_err(device))?;
        hasher.update(&buf[..want]);
        pos += want as u64;
        progress("verify", pos, payload.size);
    }
    let found = hex::encode(hasher.finalize());
    if found != payload.sha256 {
        return Err(InstallError::Mismatch {
            device: device.to_path_buf(),
            expected: payload.sha256.clone(),
            found,
        });
    }
    if is_block {
        // linux/fs.h BLKRRPART: let the kernel see the new partitions.
        const BLKRRPART: libc::c_ulong = 0x125F;
        // SAFETY: BLKRRPART takes no argument.
        if unsafe { libc::ioctl(dev.as_raw_fd(), BLKRRPART as _) } < 0 {
            log::warn!(
                "{}: re-reading the partition table: {}",
                device.display(),
                io::Error::last_os_error()
            );
        }
    }
    Ok(Installed {
        device: device.to_path_buf(),
        image: payload
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        version: payload.record.version.clone(),
        bytes: payload.size,
        bytes_written: written,
        sha256: found,
        verified: true,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

trait OpenExcl {
    fn custom_flags_excl(&mut self, device: &Path) -> &mut Self;
}

impl OpenExcl for fs::OpenOptions {
    /// `O_EXCL` on a block device: the kernel refuses it while the device is
    /// mounted or otherwise held.
    fn custom_flags_excl(&mut self, device: &Path) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        if fs::metadata(device).is_ok_and(|m| m.file_type().is_block_device()) {
            self.custom_flags(libc::O_EXCL);
        }
        self
    }
}

/// `BLKZEROOUT`: the device zeroes the range itself (write-zeroes or discard).
fn zero_out(dev: &File, start: u64, len: u64) -> io::Result<()> {
    const BLKZEROOUT: libc::c_ulong = 0x127F;
    let range = [start, len];
    // SAFETY: BLKZEROOUT reads two u64s from the pointer, which lives across the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The GPT disk GUID in the first 1024 bytes of a disk (MBR, then the GPT
/// header), if there is a GPT.
pub fn gpt_disk_guid(head: &[u8]) -> Option<[u8; 16]> {
    let h = head.get(512..1024)?;
    (&h[..8] == b"EFI PART").then(|| h[56..72].try_into().expect("16 bytes"))
}

/// Whether `device` already holds the payload's partition table (the same
/// GPT disk GUID, which basalt derives from the image spec): a machine that
/// booted the installer again after an unattended installation.
pub fn already_installed(payload: &Payload, device: &Path) -> Result<Option<String>, InstallError> {
    let mut image_head = [0u8; 1024];
    let src = File::open(&payload.image).map_err(io_err(&payload.image))?;
    let mut dec = zstd::Decoder::new(src).map_err(io_err(&payload.image))?;
    basalt_formats::bundle::stream::read_full(&mut dec, &mut image_head)
        .map_err(io_err(&payload.image))?;
    let mut disk_head = [0u8; 1024];
    let dev = File::open(device).map_err(io_err(device))?;
    if dev.read_exact_at(&mut disk_head, 0).is_err() {
        return Ok(None);
    }
    Ok(
        match (gpt_disk_guid(&image_head), gpt_disk_guid(&disk_head)) {
            (Some(a), Some(b)) if a == b => Some(hex::encode(a)),
            _ => None,
        },
    )
}

/// The live boot's record, or [`InstallError::NotLive`].
pub fn live_boot() -> Result<BootInfo, InstallError> {
    fs::read(BOOT_INFO_PATH)
        .ok()
        .and_then(|b| serde_json::from_slice::<BootInfo>(&b).ok())
        .filter(|b| b.live)
        .ok_or(InstallError::NotLive)
}

/// Everything `basalt-agent install` and the service do: checks, write,
/// read-back. `progress` sees the phase and bytes done. `unattended`
/// refuses a disk that already holds this image, so that a machine which
/// boots the installer again does not install again, and again.
pub fn install(
    target: &InstallTarget,
    unattended: bool,
    progress: Progress<'_>,
) -> Result<Installed, InstallError> {
    let boot = live_boot()?;
    let payload = find_payload(&Path::new(LIVE_MEDIUM_DIR).join("basalt"))?;
    let disks = list_disks(Path::new("/sys/block"));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    let device = choose_target(
        target,
        &disks,
        &boot.disk,
        payload.size,
        &mounted_devs(&mountinfo),
    )?;
    if unattended {
        if let Some(guid) = already_installed(&payload, &device)? {
            return Err(InstallError::AlreadyInstalled { device, guid });
        }
    }
    log::info!(
        "installing {} ({} bytes) onto {}",
        payload.image.display(),
        payload.size,
        device.display()
    );
    write_and_verify(&payload, &device, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_disk_guid_is_read_from_the_header() {
        let mut head = vec![0u8; 1024];
        assert_eq!(gpt_disk_guid(&head), None);
        head[512..520].copy_from_slice(b"EFI PART");
        head[568..584].copy_from_slice(&[7; 16]);
        assert_eq!(gpt_disk_guid(&head), Some([7; 16]));
        assert_eq!(gpt_disk_guid(&head[..600]), None);
    }

    #[test]
    fn a_disk_with_the_same_gpt_is_already_installed() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 8192];
        raw[512..520].copy_from_slice(b"EFI PART");
        raw[568..584].copy_from_slice(&[9; 16]);
        let image = dir.path().join("x.img.zst");
        fs::write(&image, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
        let payload = Payload {
            image,
            record: serde_json::from_value(serde_json::json!({
                "name": "x", "version": "1", "board": "x86_64-uefi", "arch": "amd64",
                "suite": "bookworm", "rootfs_type": "squashfs", "kernel_version": "6.1",
                "source_date_epoch": 0, "esp_size": 0, "slot_size": 0, "data_size": 0,
                "rootfs_size": 0, "disk_size": 8192, "packages": [], "artifacts": [],
            }))
            .unwrap(),
            size: 8192,
            sha256: String::new(),
        };
        let disk = dir.path().join("disk");
        fs::write(&disk, &raw).unwrap();
        assert_eq!(
            already_installed(&payload, &disk).unwrap().as_deref(),
            Some("09090909090909090909090909090909")
        );
        raw[570] = 1;
        fs::write(&disk, &raw).unwrap();
        assert_eq!(already_installed(&payload, &disk).unwrap(), None);
    }

    fn disk(name: &str, gib: u64, removable: bool, dev: &str) -> DiskEntry {
        DiskEntry {
            name: name.into(),
            size: gib << 30,
            removable,
            read_only: false,
            devs: vec![dev.into()],
        }
    }

    #[test]
    fn auto_takes_the_one_internal_disk_that_fits() {
        let disks = [
            disk("sr0", 1, true, "11:0"),
            disk("vda", 4, false, "254:0"),
            disk("vdb", 0, false, "254:16"),
        ];
        let t = choose_target(&InstallTarget::Auto, &disks, "/dev/sr0", 2 << 30, &[]).unwrap();
        assert_eq!(t, Path::new("/dev/vda"));
        let two = [
            disk("vda", 4, false, "254:0"),
            disk("nvme0n1", 8, false, "259:0"),
        ];
        let e = choose_target(&InstallTarget::Auto, &two, "/dev/sr0", 2 << 30, &[]).unwrap_err();
        assert!(matches!(e, InstallError::Ambiguous { .. }), "{e}");
        assert!(e.to_string().contains("/dev/nvme0n1"), "{e}");
        let none = [disk("sda", 16, true, "8:0")];
        let e = choose_target(&InstallTarget::Auto, &none, "/dev/sda", 2 << 30, &[]).unwrap_err();
        assert!(e.to_string().contains("no disk to install onto"), "{e}");
    }

    #[test]
    fn refusals_name_the_device_and_value() {
        let mounts = mounted_devs(
            "36 35 8:1 / /media/stick rw - vfat /dev/sdb1 rw\n22 1 0:21 / /run rw - tmpfs tmpfs rw\n",
        );
        let mut sdb = disk("sdb", 16, true, "8:16");
        sdb.devs.push("8:1".into());
        let e = refusal(&sdb, "/dev/sr0", 1 << 30, &mounts).unwrap();
        assert!(
            e.to_string()
                .contains("/dev/sdb: it is in use (mounted on /media/stick)"),
            "{e}"
        );
        let e = refusal(&disk("sdb", 16, true, "8:16"), "/dev/sdb", 1, &[]).unwrap();
        assert!(e.to_string().contains("live medium"), "{e}");
        let e = refusal(&disk("sdb", 16, true, "8:16"), "/dev/sdb2", 1, &[]).unwrap();
        assert!(matches!(e, InstallError::LiveMedium { .. }), "{e}");
        let e = refusal(&disk("vda", 1, false, "254:0"), "/dev/sr0", 2 << 30, &[]).unwrap();
        assert_eq!(
            e.to_string(),
            "refusing to write to /dev/vda: it holds 1073741824 bytes, the image needs 2147483648"
        );
        assert!(refusal(&disk("vda", 4, false, "254:0"), "/dev/sr0", 2 << 30, &[]).is_none());
        let e = choose_target(
            &InstallTarget::Device("/dev/vdz".into()),
            &[disk("vda", 4, false, "254:0")],
            "/dev/sr0",
            1,
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/dev/vdz: it is not a whole-disk"),
            "{e}"
        );
    }

    #[test]
    fn disks_are_read_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let vda = dir.path().join("vda");
        fs::create_dir_all(vda.join("vda1")).unwrap();
        fs::write(vda.join("size"), "8388608\n").unwrap();
        fs::write(vda.join("removable"), "0\n").unwrap();
        fs::write(vda.join("ro"), "0\n").unwrap();
        fs::write(vda.join("dev"), "254:0\n").unwrap();
        fs::write(vda.join("vda1/partition"), "1\n").unwrap();
        fs::write(vda.join("vda1/dev"), "254:1\n").unwrap();
        fs::create_dir_all(dir.path().join("loop0")).unwrap();
        let d = list_disks(dir.path());
        assert_eq!(
            d,
            vec![DiskEntry {
                name: "vda".into(),
                size: 4 << 30,
                removable: false,
                read_only: false,
                devs: vec!["254:0".into(), "254:1".into()],
            }]
        );
    }

    #[test]
    fn writes_verifies_and_catches_a_bad_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 3 * CHUNK + 1000];
        raw[10] = 1;
        raw[2 * CHUNK + 5] = 7;
        let sha = hex::encode(Sha256::digest(&raw));
        let zst = dir.path().join("x.img.zst");
        fs::write(&zst, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
        let record: BuildRecord = serde_json::from_value(serde_json::json!({
            "name": "x", "version": "1.0.0", "board": "x86_64-uefi", "arch": "amd64",
            "suite": "bookworm", "rootfs_type": "squashfs", "kernel_version": "6.1",
            "source_date_epoch": 0, "esp_size": 0, "slot_size": 0, "data_size": 0,
            "rootfs_size": 0, "disk_size": raw.len(), "packages": [],
            "artifacts": [{"file": "x.img", "size": raw.len(), "sha256": sha}],
        }))
        .unwrap();
        fs::write(
            dir.path().join("x.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let payload = find_payload(dir.path()).unwrap();
        assert_eq!(payload.size, raw.len() as u64);
        let target = dir.path().join("disk");
        // Old contents where the image has zeros must not survive.
        fs::write(&target, vec![0xee; 4 * CHUNK]).unwrap();
        let mut seen = Vec::new();
        let done = write_and_verify(&payload, &target, &mut |phase, n, _| {
            seen.push((phase.to_string(), n))
        })
        .unwrap();
        assert!(done.verified);
        assert_eq!(done.bytes_written, 2 * CHUNK as u64);
        assert_eq!(&fs::read(&target).unwrap()[..raw.len()], &raw[..]);
        assert_eq!(
            seen.last().unwrap(),
            &("verify".to_string(), raw.len() as u64)
        );

        assert_eq!(
            already_installed(&payload, &target).unwrap(),
            None,
            "no GPT"
        );

        let mut bad = payload.clone();
        bad.sha256 = "00".repeat(32);
        let e = write_and_verify(&bad, &target, &mut |_, _, _| {}).unwrap_err();
        assert!(matches!(e, InstallError::Mismatch { .. }), "{e}");
        let mut short = payload;
        short.size += 1;
        let e = write_and_verify(&short, &target, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("the image ends after"), "{e}");
    }
}
