//! `basalt iso`: an installer ISO made from a built x86_64 UEFI image,
//! without building anything again.
//!
//! The ISO is hybrid: a CD's El Torito EFI boot image and, for a USB stick
//! it is written to, the same FAT image as an EFI System Partition in a GPT
//! (xorriso's appended partition). That FAT holds systemd-boot and one loader
//! entry, the image's slot A kernel and basalt initrd with `basalt.live` on
//! the command line. The ISO 9660 file system holds:
//!
//! | path | what |
//! | --- | --- |
//! | `/basalt/root.img` | slot A's root file system, which the live system mounts through a loop device |
//! | `/basalt/<name>.img.zst` | the disk image `basalt-agent install` writes |
//! | `/basalt/<name>.json` | its build record: size and SHA-256 the written disk must have |
//!
//! The image's kernel, initrd and loader entry are read from its ESP, and the
//! root file system from its `root-a` partition, in user space (GPT and FAT
//! readers, no loop devices or mounts).

use crate::build::esp::{fat_time, FixedTime, LOADER_CONF};
use crate::flash::cloud::PartitionSlice;
use crate::progress::Progress;
use basalt_formats::entry::EntryName;
use basalt_formats::record::BuildRecord;
use basalt_formats::{BoardId, Slot};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The live system's loader entry.
pub const LIVE_ENTRY: &str = "basalt-live.conf";
/// Volume label of the ISO 9660 file system.
pub const VOLUME_ID: &str = "BASALT_INSTALL";

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the build record cannot be read: {reason} (basalt iso needs the .json that `basalt build` wrote beside the image)")]
    Record { path: PathBuf, reason: String },
    #[error("{image} is for {board}; installer ISOs are made for x86_64-uefi images")]
    Board { image: PathBuf, board: BoardId },
    #[error("{image} has no GPT partition labelled {label}")]
    NoPartition { image: PathBuf, label: String },
    #[error("{image}: {what} is missing from its ESP: {source}")]
    EspFile {
        image: PathBuf,
        what: String,
        source: io::Error,
    },
    #[error("{image}: its ESP has no loader entry for slot a")]
    NoEntry { image: PathBuf },
    #[error("{image} is {found} bytes with SHA-256 {found_sha}, but its build record says {size} bytes with {sha}: the image was changed after the build")]
    Changed {
        image: PathBuf,
        found: u64,
        found_sha: String,
        size: u64,
        sha: String,
    },
    #[error("{image}: reading the GPT: {reason}")]
    Gpt { image: PathBuf, reason: String },
    #[error(transparent)]
    Tool(#[from] crate::tools::ToolError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IsoError + '_ {
    move |source| IsoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `basalt iso` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IsoSummary {
    pub iso: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub image: String,
    pub version: String,
    pub live_cmdline: String,
    pub duration_s: f64,
}

/// The ISO's default path: `<stem>.iso` beside the image.
pub fn default_out(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let stem = name.strip_suffix(".img").unwrap_or(&name);
    image.with_file_name(format!("{stem}.iso"))
}

/// The live entry's kernel command line, from slot A's: `basalt.slot=` becomes `basalt.live`.
pub fn live_cmdline(slot_options: &str) -> String {
    let mut words: Vec<&str> = slot_options
        .split_whitespace()
        .filter(|w| !w.starts_with("basalt.slot="))
        .collect();
    words.insert(0, "basalt.live");
    words.join(" ")
}

/// The live entry (Boot Loader Specification type #1).
pub fn live_entry_text(name: &str, version: &str, options: &str) -> String {
    format!(
        "title {name} {version} installer\nsort-key basalt\nversion {version}\nlinux /basalt/live/vmlinuz\ninitrd /basalt/live/initrd\noptions {options}\n"
    )
}

/// `epoch` as xorriso's `YYYYMMDDhhmmsscc` time string (UTC).
pub fn xorriso_time(epoch: u64) -> String {
    let t = fat_time(epoch);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        t.date.year, t.date.month, t.date.day, t.time.hour, t.time.min, t.time.sec
    )
}

/// What the ISO takes from the image's ESP.
struct EspFiles {
    systemd_boot: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    options: String,
}

fn read_esp(image: &Path, file: &File, start: u64, len: u64) -> Result<EspFiles, IsoError> {
    let fs = fatfs::FileSystem::new(
        PartitionSlice::new(file, start, len),
        fatfs::FsOptions::new(),
    )
    .map_err(|source| IsoError::EspFile {
        image: image.to_path_buf(),
        what: "a FAT file system".into(),
        source,
    })?;
    let root = fs.root_dir();
    let read = |path: &str| -> Result<Vec<u8>, IsoError> {
        let mut out = Vec::new();
        root.open_file(path)
            .and_then(|mut f| f.read_to_end(&mut out))
            .map_err(|source| IsoError::EspFile {
                image: image.to_path_buf(),
                what: path.to_string(),
                source,
            })?;
        Ok(out)
    };
    let entries = root
        .open_dir("loader/entries")
        .map_err(|source| IsoError::EspFile {
            image: image.to_path_buf(),
            what: "loader/entries".into(),
            source,
        })?;
    let mut entry = None;
    for e in entries.iter().flatten() {
        let name = e.file_name();
        if EntryName::parse(&name).is_some_and(|n| n.slot == Slot::A) {
            entry = Some(name);
        }
    }
    let entry = entry.ok_or_else(|| IsoError::NoEntry {
        image: image.to_path_buf(),
    })?;
    let text = String::from_utf8_lossy(&read(&format!("loader/entries/{entry}"))?).into_owned();
    let options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(EspFiles {
        systemd_boot: read("EFI/BOOT/BOOTX64.EFI")?,
        kernel: read("basalt/a/vmlinuz")?,
        initrd: read("basalt/a/initrd")?,
        options,
    })
}

/// Writes the EFI boot FAT image: systemd-boot and the live entry.
fn write_efiboot(out: &Path, files: &EspFiles, entry: &str, epoch: u64) -> Result<(), IsoError> {
    let io = io_err(out);
    let payload = (files.systemd_boot.len() + files.kernel.len() + files.initrd.len()) as u64;
    // Room for FAT tables and directories; whole MiB.
    let size = (payload + payload / 8 + (4 << 20)).div_ceil(1 << 20) << 20;
    let result = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)?;
        f.set_len(size)?;
        fatfs::format_volume(
            &mut f,
            fatfs::FormatVolumeOptions::new()
                .volume_id(0x1a5e_0001)
                .volume_label(*b"BASALT-EFI "),
        )?;
        f.rewind()?;
        let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new().time_provider(time))?;
        let root = fs.root_dir();
        for d in [
            "EFI",
            "EFI/BOOT",
            "loader",
            "loader/entries",
            "basalt",
            "basalt/live",
        ] {
            root.create_dir(d)?;
        }
        let put = |path: &str, bytes: &[u8]| -> io::Result<()> {
            let mut file = root.create_file(path)?;
            file.truncate()?;
            file.write_all(bytes)?;
            file.flush()
        };
        put("EFI/BOOT/BOOTX64.EFI", &files.systemd_boot)?;
        put("loader/loader.conf", LOADER_CONF.as_bytes())?;
        put(&format!("loader/entries/{LIVE_ENTRY}"), entry.as_bytes())?;
        put("basalt/live/vmlinuz", &files.kernel)?;
        put("basalt/live/initrd", &files.initrd)?;
        drop(root);
        fs.unmount()?;
        f.sync_all()
    })();
    result.map_err(io)
}

/// Copies `len` bytes at `offset` of `src` to a new file `dst`, counting them on `step`.
fn copy_range(
    src: &File,
    offset: u64,
    len: u64,
    dst: &Path,
    step: &crate::progress::Step,
) -> io::Result<()> {
    let mut out = File::create(dst)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + done)?;
        out.write_all(&buf[..n])?;
        done += n as u64;
        step.inc(n as u64);
    }
    out.sync_all()
}

fn sha256_file(path: &Path, step: &crate::progress::Step) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        step.inc(n as u64);
    }
    Ok((total, hex::encode(h.finalize())))
}

/// Makes the installer ISO for `image` (a `.img` with its build record beside it) at `out`.
pub fn make(image: &Path, out: &Path) -> Result<IsoSummary, IsoError> {
    let started = Instant::now();
    let record_path = crate::build::record_path(image);
    let record: BuildRecord = std::fs::read_to_string(&record_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|reason| IsoError::Record {
            path: record_path.clone(),
            reason,
        })?;
    if record.board != BoardId::X86_64Uefi {
        return Err(IsoError::Board {
            image: image.to_path_buf(),
            board: record.board,
        });
    }
    let image_name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let artifact = record
        .artifacts
        .iter()
        .find(|a| a.file == image_name)
        .ok_or_else(|| IsoError::Record {
            path: record_path.clone(),
            reason: format!("it lists no artifact {image_name}"),
        })?
        .clone();
    let mut progress = Progress::new(5);

    // 1. The image must be the one the record describes: the installer checks the disk against it.
    let step = progress.step(&format!("checking {image_name} against its build record"));
    step.bytes(artifact.size);
    let (size, sha) = sha256_file(image, &step).map_err(io_err(image))?;
    if size != artifact.size || sha != artifact.sha256 {
        return Err(IsoError::Changed {
            image: image.to_path_buf(),
            found: size,
            found_sha: sha,
            size: artifact.size,
            sha: artifact.sha256,
        });
    }
    step.done(&format!("SHA-256 {}", &sha[..16]));

    let file = File::open(image).map_err(io_err(image))?;
    let gpt = gptman::GPT::find_from(&mut &file).map_err(|e| IsoError::Gpt {
        image: image.to_path_buf(),
        reason: e.to_string(),
    })?;
    let part = |label: &str| -> Result<(u64, u64), IsoError> {
        gpt.iter()
            .find(|(_, p)| p.is_used() && p.partition_name.as_str() == label)
            .map(|(_, p)| {
                (
                    p.starting_lba * gpt.sector_size,
                    (p.ending_lba + 1 - p.starting_lba) * gpt.sector_size,
                )
            })
            .ok_or_else(|| IsoError::NoPartition {
                image: image.to_path_buf(),
                label: label.to_string(),
            })
    };
    let (esp_start, esp_len) = part("esp")?;
    let (root_start, root_len) = part("root-a")?;

    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".basalt-iso-")
        .tempdir_in(parent)
        .map_err(io_err(parent))?;

    // 2. The EFI boot image.
    let step = progress.step("EFI boot image (systemd-boot, the live entry)");
    let files = read_esp(image, &file, esp_start, esp_len)?;
    let options = live_cmdline(&files.options);
    let efiboot = staging.path().join("efiboot.img");
    write_efiboot(
        &efiboot,
        &files,
        &live_entry_text(&record.name, &record.version, &options),
        record.source_date_epoch,
    )?;
    step.done(&options);

    // 3. Slot A's root file system.
    let step = progress.step("the live root file system (root-a)");
    let rootfs_len = record.rootfs_size.div_ceil(4096) * 4096;
    let rootfs_len = if rootfs_len == 0 || rootfs_len > root_len {
        root_len
    } else {
        rootfs_len
    };
    step.bytes(rootfs_len);
    let root_img = staging.path().join("root.img");
    copy_range(&file, root_start, rootfs_len, &root_img, &step).map_err(io_err(&root_img))?;
    step.done(&format!("{rootfs_len} bytes"));

    // 4. The compressed image: the build's own .img.zst when it is there and intact.
    let stem = image_name.strip_suffix(".img").unwrap_or(&image_name);
    let zst_name = format!("{image_name}.zst");
    let beside = image.with_file_name(&zst_name);
    let step = progress.step(&format!("the image to install ({zst_name})"));
    let zst = match record.artifacts.iter().find(|a| a.file == zst_name) {
        Some(a) if beside.is_file() => {
            step.bytes(a.size);
            let (n, s) = sha256_file(&beside, &step).map_err(io_err(&beside))?;
            (n == a.size && s == a.sha256).then_some(beside)
        }
        _ => None,
    };
    let zst = match zst {
        Some(p) => {
            step.done("the build's, checked");
            p
        }
        None => {
            let p = staging.path().join(&zst_name);
            step.bytes(artifact.size);
            let mut enc = zstd::Encoder::new(File::create(&p).map_err(io_err(&p))?, 10)
                .map_err(io_err(&p))?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            let _ = enc.multithread(threads);
            let mut buf = vec![0u8; 4 << 20];
            let mut pos = 0;
            while pos < artifact.size {
                let n = (artifact.size - pos).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], pos)
                    .map_err(io_err(image))?;
                enc.write_all(&buf[..n]).map_err(io_err(&p))?;
                pos += n as u64;
                step.inc(n as u64);
            }
            enc.finish()
                .and_then(|f| f.sync_all())
                .map_err(io_err(&p))?;
            step.done("compressed");
            p
        }
    };

    // 5. The ISO.
    let step = progress.step(&format!("xorriso: {}", out.display()));
    let partial = staging.path().join("out.iso");
    let graft = |inside: &str, host: &Path| format!("{inside}={}", host.display());
    let mut cmd = Command::new("xorriso");
    // Every date in the ISO is the build's, so the same image gives the same ISO.
    cmd.env("SOURCE_DATE_EPOCH", record.source_date_epoch.to_string())
        .env("TZ", "UTC")
        .args(["-as", "mkisofs", "-o"])
        .arg(&partial)
        .args([
            "-V",
            VOLUME_ID,
            "-iso-level",
            "3",
            "-r",
            "-J",
            "-joliet-long",
            "--set_all_file_dates",
            &xorriso_time(record.source_date_epoch),
            "-append_partition",
            "2",
            "0xef",
        ])
        .arg(&efiboot)
        .args([
            "-appended_part_as_gpt",
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
            "-graft-points",
        ])
        .arg(graft("/basalt/root.img", &root_img))
        .arg(graft(&format!("/basalt/{zst_name}"), &zst))
        .arg(graft(&format!("/basalt/{stem}.json"), &record_path));
    crate::tools::run(&mut cmd)?;
    std::fs::rename(&partial, out).map_err(io_err(out))?;
    let size = std::fs::metadata(out).map_err(io_err(out))?.len();
    step.done(&format!("{size} bytes"));

    let mut h = Sha256::new();
    io::copy(&mut File::open(out).map_err(io_err(out))?, &mut h).map_err(io_err(out))?;
    Ok(IsoSummary {
        iso: out.to_path_buf(),
        size,
        sha256: hex::encode(h.finalize()),
        image: image_name,
        version: record.version,
        live_cmdline: options,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_cmdline_replaces_the_slot() {
        assert_eq!(
            live_cmdline("basalt.slot=a console=tty0 console=ttyS0,115200"),
            "basalt.live console=tty0 console=ttyS0,115200"
        );
    }

    #[test]
    fn live_entry_golden() {
        assert_eq!(
            live_entry_text("basalt-appliance", "0.1.0", "basalt.live console=ttyS0,115200"),
            "title basalt-appliance 0.1.0 installer\nsort-key basalt\nversion 0.1.0\nlinux /basalt/live/vmlinuz\ninitrd /basalt/live/initrd\noptions basalt.live console=ttyS0,115200\n"
        );
    }

    #[test]
    fn xorriso_dates() {
        assert_eq!(xorriso_time(1_700_000_000), "2023111422132000");
    }

    #[test]
    fn out_defaults_beside_the_image() {
        assert_eq!(
            default_out(Path::new("out/basalt-appliance-0.1.0-x86_64-uefi.img")),
            Path::new("out/basalt-appliance-0.1.0-x86_64-uefi.iso")
        );
    }

    #[test]
    fn efiboot_holds_the_live_entry() {
        let dir = tempfile::tempdir().unwrap();
        let files = EspFiles {
            systemd_boot: b"MZ-boot".to_vec(),
            kernel: vec![1; 3000],
            initrd: vec![2; 2000],
            options: String::new(),
        };
        let p = dir.path().join("efiboot.img");
        write_efiboot(&p, &files, "title x\n", 1_700_000_000).unwrap();
        let a = std::fs::read(&p).unwrap();
        write_efiboot(&p, &files, "title x\n", 1_700_000_000).unwrap();
        assert_eq!(a, std::fs::read(&p).unwrap(), "reproducible");
        let f = File::open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        let fs = fatfs::FileSystem::new(PartitionSlice::new(&f, 0, len), fatfs::FsOptions::new())
            .unwrap();
        let mut text = String::new();
        fs.root_dir()
            .open_file(&format!("loader/entries/{LIVE_ENTRY}"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "title x\n");
        let mut k = Vec::new();
        fs.root_dir()
            .open_file("basalt/live/vmlinuz")
            .unwrap()
            .read_to_end(&mut k)
            .unwrap();
        assert_eq!(k, vec![1; 3000]);
    }
}
