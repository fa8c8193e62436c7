//! Raspberry Pi boot partitions: the `autoboot.txt` partition and one FAT
//! boot slot per root slot, each with the firmware files, `config.txt`,
//! `cmdline.txt`, the kernel, the basalt initrd and the board's device trees.
//! Written with the same user-space FAT writer as the ESP.

use super::esp::{fat_time, FixedTime};
use basalt_formats::board::{Board, RpiSettings};
use basalt_formats::tryboot::{Autoboot, AUTOBOOT_TXT};
use basalt_formats::Slot;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// Kernel and initrd names inside a boot slot.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";

#[derive(Debug, thiserror::Error)]
pub enum RpiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("firmware file {file} is missing from {dir} in the root file system; it comes from the Debian package {package} (listed in the board's packages?)")]
    MissingFirmware {
        file: String,
        dir: String,
        package: String,
    },
    #[error("device tree {file} is missing from {dir} in the root file system; it comes from the Debian package {package} (kernel {kernel})")]
    MissingDtb {
        file: String,
        dir: String,
        package: String,
        kernel: String,
    },
    #[error("boot slot {slot} needs {needed} bytes but sizes.esp is {size} bytes; raise sizes.esp in the spec")]
    TooSmall { slot: Slot, size: u64, needed: u64 },
}

/// One file of a FAT partition.
#[derive(Debug, Clone)]
pub struct FatFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// `config.txt` of a boot slot. The firmware reads it from the partition it
/// boots (the committed one, or the `[tryboot]` one with `tryboot_a_b=1`).
pub fn config_txt(rpi: &RpiSettings, slot: Slot) -> String {
    let mut s = format!("# basalt boot slot {slot}\n[all]\n");
    for line in &rpi.config {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "kernel={KERNEL_FILE}\ninitramfs {INITRD_FILE} followkernel\n"
    ));
    s
}

/// `cmdline.txt`: one line.
pub fn cmdline_txt(cmdline: &str) -> String {
    format!("{}\n", cmdline.trim())
}

/// The firmware files and device trees of `board`, read from the unpacked root.
pub fn board_files(
    root: &Path,
    board: &Board,
    kernel_version: &str,
) -> Result<Vec<FatFile>, RpiError> {
    let rpi = board.rpi.as_ref().expect("a Pi board has an rpi section");
    let mut out = Vec::new();
    let fw_dir = rpi
        .firmware_dir
        .as_deref()
        .unwrap_or("/usr/lib/raspi-firmware");
    for f in &rpi.firmware_files {
        let p = root.join(fw_dir.trim_start_matches('/')).join(f);
        let bytes = std::fs::read(&p).map_err(|_| RpiError::MissingFirmware {
            file: f.clone(),
            dir: fw_dir.to_string(),
            package: rpi.firmware_package.clone().unwrap_or_default(),
        })?;
        out.push(FatFile {
            name: f.clone(),
            bytes,
        });
    }
    let dtb_dir = format!("/usr/lib/linux-image-{kernel_version}/broadcom");
    for f in &rpi.dtbs {
        let p = root.join(dtb_dir.trim_start_matches('/')).join(f);
        let bytes = std::fs::read(&p).map_err(|_| RpiError::MissingDtb {
            file: f.clone(),
            dir: dtb_dir.clone(),
            package: board.kernel_package.clone(),
            kernel: kernel_version.to_string(),
        })?;
        out.push(FatFile {
            name: f.clone(),
            bytes,
        });
    }
    Ok(out)
}

/// The files of one boot slot.
pub fn slot_files(
    board_files: &[FatFile],
    rpi: &RpiSettings,
    slot: Slot,
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
) -> Vec<FatFile> {
    let mut files = board_files.to_vec();
    files.push(FatFile {
        name: "config.txt".into(),
        bytes: config_txt(rpi, slot).into_bytes(),
    });
    files.push(FatFile {
        name: "cmdline.txt".into(),
        bytes: cmdline_txt(cmdline).into_bytes(),
    });
    files.push(FatFile {
        name: KERNEL_FILE.into(),
        bytes: kernel.to_vec(),
    });
    files.push(FatFile {
        name: INITRD_FILE.into(),
        bytes: initrd.to_vec(),
    });
    files
}

/// The files of partition 1: only `autoboot.txt`, slot A committed.
pub fn autoboot_files() -> Vec<FatFile> {
    vec![FatFile {
        name: AUTOBOOT_TXT.into(),
        bytes: Autoboot { committed: Slot::A }.render().into_bytes(),
    }]
}

/// Writes a FAT image of `size` bytes holding `files` at its top level,
/// every timestamp `epoch`.
pub fn write_fat(
    out: &Path,
    size: u64,
    label: &[u8; 11],
    files: &[FatFile],
    volume_id: u32,
    epoch: u64,
    fat16: bool,
) -> Result<(), std::io::Error> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)?;
    f.set_len(size)?;
    let mut opts = fatfs::FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(*label);
    if fat16 {
        opts = opts.fat_type(fatfs::FatType::Fat16);
    }
    fatfs::format_volume(&mut f, opts)?;
    f.rewind()?;
    {
        let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new().time_provider(time))?;
        let root = fs.root_dir();
        for file in files {
            let mut w = root.create_file(&file.name)?;
            w.truncate()?;
            w.write_all(&file.bytes)?;
            w.flush()?;
        }
        drop(root);
        fs.unmount()?;
    }
    f.sync_all()
}

/// Checks that a slot's files fit `size` bytes, leaving room for the FAT itself.
pub fn check_fits(slot: Slot, files: &[FatFile], size: u64) -> Result<(), RpiError> {
    let needed: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
    if needed + size / 16 > size {
        return Err(RpiError::TooSmall { slot, size, needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        crate::assets::board(basalt_formats::BoardId::Rpi4).unwrap()
    }

    #[test]
    fn config_txt_golden() {
        let b = board();
        assert_eq!(
            config_txt(b.rpi.as_ref().unwrap(), Slot::B),
            "# basalt boot slot b\n[all]\narm_64bit=1\nenable_uart=1\nupstream_kernel=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
        );
    }

    #[test]
    fn missing_files_name_the_file_and_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let b = board();
        let e = board_files(dir.path(), &b, "6.1.0-50-arm64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("start4.elf") && e.contains("raspi-firmware"),
            "{e}"
        );
        let fw = dir.path().join("usr/lib/raspi-firmware");
        std::fs::create_dir_all(&fw).unwrap();
        for f in ["start4.elf", "fixup4.dat"] {
            std::fs::write(fw.join(f), b"fw").unwrap();
        }
        let e = board_files(dir.path(), &b, "6.1.0-50-arm64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bcm2711-rpi-4-b.dtb") && e.contains("linux-image-arm64"),
            "{e}"
        );
    }

    #[test]
    fn fat_holds_the_files_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let files = autoboot_files();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        write_fat(&a, 32 << 20, b"AUTOBOOT   ", &files, 1, 1_700_000_000, true).unwrap();
        write_fat(&b, 32 << 20, b"AUTOBOOT   ", &files, 1, 1_700_000_000, true).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let f = std::fs::File::open(&a).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat16);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut fs.root_dir().open_file("autoboot.txt").unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(
            text,
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
    }
}
