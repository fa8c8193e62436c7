//! Raspberry Pi boot partitions: the `autoboot.txt` partition and one FAT
//! boot slot per root slot, each with the firmware files, `config.txt`,
//! `cmdline.txt`, the kernel, the basalt initrd and the board's device trees.
//! Both slots hold the same bytes (the initrd takes its slot from the
//! partition the firmware booted), so an update writes the new image's boot
//! slot as it is. Written with the same user-space FAT writer as the ESP.

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
    #[error("a boot slot needs {needed} bytes but sizes.esp is {size} bytes; raise sizes.esp in the spec")]
    TooSmall { size: u64, needed: u64 },
}

/// One file of a FAT partition.
#[derive(Debug, Clone)]
pub struct FatFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// `config.txt` of a boot slot. The firmware reads it from the partition it
/// boots (the committed one, or the `[tryboot]` one with `tryboot_a_b=1`).
pub fn config_txt(rpi: &RpiSettings) -> String {
    let mut s = "# basalt boot slot (the same in both slots)\n[all]\n".to_string();
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

/// The files of a boot slot.
pub fn slot_files(
    board_files: &[FatFile],
    rpi: &RpiSettings,
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
) -> Vec<FatFile> {
    let mut files = board_files.to_vec();
    files.push(FatFile {
        name: "config.txt".into(),
        bytes: config_txt(rpi).into_bytes(),
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
/// every timestamp `epoch`; of `fat_type`, or of the type fatfs chooses for
/// the size.
pub fn write_fat(
    out: &Path,
    size: u64,
    label: &[u8; 11],
    files: &[FatFile],
    volume_id: u32,
    epoch: u64,
    fat_type: Option<fatfs::FatType>,
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
    if let Some(t) = fat_type {
        opts = opts.fat_type(t);
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

/// Checks that a boot slot's files fit `size` bytes, leaving room for the FAT itself.
pub fn check_fits(files: &[FatFile], size: u64) -> Result<(), RpiError> {
    let needed: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
    if needed + size / 16 > size {
        return Err(RpiError::TooSmall { size, needed });
    }
    Ok(())
}

/// Bytes of a FAT file system up to the end of its last cluster
/// in use: the boot sector, the FATs, the root directory and every file's
/// data lie before it; after it is free space the file system never reads.
/// A bundle's `boot` payload is this prefix of the boot partition, so an
/// update writes (and reads back) what the slot holds, not its free space.
pub fn fat_used_len(fs: &mut (impl std::io::Read + Seek)) -> std::io::Result<u64> {
    use std::io::{Error, ErrorKind, SeekFrom};
    let bad = |what: String| {
        Error::new(
            ErrorKind::InvalidData,
            format!("not a FAT file system: {what}"),
        )
    };
    let mut bs = [0u8; 512];
    fs.seek(SeekFrom::Start(0))?;
    fs.read_exact(&mut bs)?;
    let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]) as u64;
    if bs[510..512] != [0x55, 0xaa] {
        return Err(bad("no boot sector signature".into()));
    }
    let bytes_per_sector = u16_at(11);
    let per_cluster = bs[13] as u64;
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) || !per_cluster.is_power_of_two() {
        return Err(bad(format!(
            "{bytes_per_sector} bytes per sector, {per_cluster} sectors per cluster"
        )));
    }
    let reserved = u16_at(14);
    let fats = bs[16] as u64;
    let root_sectors = (u16_at(17) * 32).div_ceil(bytes_per_sector);
    let total = match u16_at(19) {
        0 => u32_at(32),
        n => n,
    };
    let fat_sectors = match u16_at(22) {
        0 => u32_at(36),
        n => n,
    };
    let data_start = reserved + fats * fat_sectors + root_sectors;
    if fats == 0 || fat_sectors == 0 || data_start >= total {
        return Err(bad(format!(
            "{fats} FATs of {fat_sectors} sectors, data from sector {data_start} of {total}"
        )));
    }
    let clusters = (total - data_start) / per_cluster;
    // Bits per FAT entry: FAT12, FAT16 or FAT32 by the count of clusters.
    let bits = match clusters {
        0..4085 => 12,
        4085..65525 => 16,
        _ => 32,
    };
    let mut fat = vec![0u8; ((clusters + 2) * bits).div_ceil(8) as usize + 1];
    fs.seek(SeekFrom::Start(reserved * bytes_per_sector))?;
    let fat_len = fat.len() - 1;
    fs.read_exact(&mut fat[..fat_len])?;
    let last_used = (2..clusters + 2).rev().find(|&c| {
        let at = (c * bits / 8) as usize;
        let v = match bits {
            12 => {
                let w = u16::from_le_bytes([fat[at], fat[at + 1]]);
                if c % 2 == 0 { w & 0x0fff } else { w >> 4 }.into()
            }
            16 => u16::from_le_bytes([fat[at], fat[at + 1]]).into(),
            _ => u32::from_le_bytes([fat[at], fat[at + 1], fat[at + 2], fat[at + 3]]) & 0x0fff_ffff,
        };
        v != 0
    });
    let end_sector = match last_used {
        Some(c) => data_start + (c - 1) * per_cluster,
        None => data_start,
    };
    Ok(end_sector * bytes_per_sector)
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
            config_txt(b.rpi.as_ref().unwrap()),
            "# basalt boot slot (the same in both slots)\n[all]\narm_64bit=1\nenable_uart=1\nupstream_kernel=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
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
        for img in [&a, &b] {
            let fat16 = Some(fatfs::FatType::Fat16);
            write_fat(
                img,
                32 << 20,
                b"AUTOBOOT   ",
                &files,
                1,
                1_700_000_000,
                fat16,
            )
            .unwrap();
        }
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

    #[test]
    fn the_used_prefix_ends_with_the_last_file() {
        let dir = tempfile::tempdir().unwrap();
        // Each FAT type, as the boot sector then says.
        let mut kinds = Vec::new();
        for (fat_type, size) in [
            (fatfs::FatType::Fat12, 4u64 << 20),
            (fatfs::FatType::Fat16, 64 << 20),
            (fatfs::FatType::Fat32, 64 << 20),
        ] {
            let img = dir.path().join("fat.img");
            let files = [
                FatFile {
                    name: "config.txt".into(),
                    bytes: b"arm_64bit=1\n".to_vec(),
                },
                FatFile {
                    name: "vmlinuz".into(),
                    bytes: vec![0xaa; 3 << 20],
                },
            ];
            write_fat(&img, size, b"BOOT       ", &files, 1, 0, Some(fat_type)).unwrap();
            let bytes = std::fs::read(&img).unwrap();
            kinds.push(
                [&bytes[54..59], &bytes[82..87]]
                    .into_iter()
                    .find(|k| k.starts_with(b"FAT"))
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
            );
            let used = fat_used_len(&mut std::fs::File::open(&img).unwrap()).unwrap();
            let last_nonzero = bytes.iter().rposition(|b| *b != 0).unwrap() as u64;
            assert!(
                used > last_nonzero && used - last_nonzero <= 64 << 10,
                "{fat_type:?}: used {used}, last non-zero byte {last_nonzero}"
            );
            // The prefix alone is the same file system: the files read back.
            let mut prefix = bytes[..used as usize].to_vec();
            prefix.resize(size as usize, 0x5c);
            let fs = fatfs::FileSystem::new(std::io::Cursor::new(prefix), fatfs::FsOptions::new())
                .unwrap();
            let mut k = Vec::new();
            std::io::Read::read_to_end(&mut fs.root_dir().open_file("vmlinuz").unwrap(), &mut k)
                .unwrap();
            assert_eq!(k, vec![0xaa; 3 << 20]);
        }
        assert_eq!(
            kinds,
            [Some("FAT12"), Some("FAT16"), Some("FAT32")].map(|k| k.map(String::from))
        );
        let e = fat_used_len(&mut std::io::Cursor::new(vec![0u8; 4096])).unwrap_err();
        assert!(e.to_string().contains("not a FAT file system"), "{e}");
    }
}
