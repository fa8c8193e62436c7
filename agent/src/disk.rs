//! Finding basalt's partitions among the machine's block devices, and growing
//! the data partition to fill its disk.
//!
//! Discovery reads the GPT of every disk (not udev, which the initrd does not
//! run) and picks the disk the boot loader booted from: the one whose ESP's
//! unique GUID systemd-boot published as `LoaderDevicePartUUID`.
//!
//! Raspberry Pi images have an MBR, which names no partition: a disk whose
//! MBR has basalt's Pi layout (FAT 1-3, extended 4, Linux 5-7) gets the
//! layout's labels by partition number (`autoboot`, `boot-a`, `boot-b`,
//! `root-a`, `root-b`, `data`), and each partition the identifier
//! `<disk id>-<number>` in place of a GUID.

use basalt_formats::board::PartitionTable;
use basalt_formats::boot::DataGrowth;
use basalt_formats::layout::{self, LABEL_AUTOBOOT, LABEL_DATA, LABEL_ESP};
use basalt_formats::Slot;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use uuid_bytes::Guid;

/// One partition of a GPT disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub label: String,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    /// `/dev/...` node of the partition, when the kernel has one.
    pub dev_path: Option<PathBuf>,
}

/// One whole disk with a GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, such as `vda` or `nvme0n1`.
    pub name: String,
    pub dev_path: PathBuf,
    pub size_sectors: u64,
    pub table: PartitionTable,
    pub partitions: Vec<PartInfo>,
}

impl DiskInfo {
    pub fn part(&self, label: &str) -> Option<&PartInfo> {
        self.partitions.iter().find(|p| p.label == label)
    }
}

/// The partitions a boot needs, on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    pub disk: DiskInfo,
    pub esp: PartInfo,
    pub root: PartInfo,
    pub data: PartInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("no disk has the partitions esp, {root} and data (disks seen: {seen})")]
    NotFound { root: String, seen: String },
    #[error("the boot loader's ESP {esp} is on disk {disk}, which lacks partition {label}")]
    Incomplete {
        esp: Guid,
        disk: String,
        label: String,
    },
    #[error("partition {label} on {disk} has no device node yet")]
    NoNode { label: String, disk: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: GPT: {source}")]
    Gpt {
        path: PathBuf,
        source: gptman::Error,
    },
    #[error("{path}: {op}: {source}")]
    Ioctl {
        path: PathBuf,
        op: &'static str,
        source: nix::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Picks the boot disk. With `loader_esp` (from the `LoaderDevicePartUUID`
/// EFI variable) the disk holding that ESP wins; without it, the first disk
/// (in kernel name order) that has every partition.
pub fn choose_boot_disk(
    disks: &[DiskInfo],
    slot: Slot,
    loader_esp: Option<Guid>,
) -> Result<BootDisk, DiskError> {
    let root_label = slot.root_label();
    let complete = |d: &DiskInfo| -> Option<BootDisk> {
        Some(BootDisk {
            disk: d.clone(),
            esp: d
                .part(LABEL_ESP)
                .or_else(|| d.part(LABEL_AUTOBOOT))?
                .clone(),
            root: d.part(&root_label)?.clone(),
            data: d.part(LABEL_DATA)?.clone(),
        })
    };
    if let Some(esp) = loader_esp {
        if let Some(d) = disks
            .iter()
            .find(|d| d.partitions.iter().any(|p| p.unique_guid == esp))
        {
            return complete(d).ok_or_else(|| DiskError::Incomplete {
                esp,
                disk: d.name.clone(),
                label: [LABEL_ESP, &root_label, LABEL_DATA]
                    .into_iter()
                    .find(|l| d.part(l).is_none())
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    let mut sorted: Vec<&DiskInfo> = disks.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
        .into_iter()
        .find_map(complete)
        .ok_or_else(|| DiskError::NotFound {
            root: root_label,
            seen: if disks.is_empty() {
                "none".to_string()
            } else {
                disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// Where the kernel's view of block devices lives; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct SysRoots {
    pub sys_block: PathBuf,
    pub dev: PathBuf,
}

impl Default for SysRoots {
    fn default() -> Self {
        SysRoots {
            sys_block: PathBuf::from("/sys/block"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Reads every disk with a readable GPT. Disks without one (CD-ROMs, blank
/// disks) are skipped.
pub fn scan_disks(roots: &SysRoots) -> Vec<DiskInfo> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&roots.sys_block) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        if ["loop", "ram", "zram", "dm-", "md", "sr"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let size_sectors = read_u64(&roots.sys_block.join(&name).join("size")).unwrap_or(0);
        if size_sectors == 0 {
            continue;
        }
        let dev_path = roots.dev.join(&name);
        if let Ok(d) = read_disk(roots, &name, &dev_path, size_sectors) {
            out.push(d);
        }
    }
    out
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_disk(
    roots: &SysRoots,
    name: &str,
    dev_path: &Path,
    size_sectors: u64,
) -> Result<DiskInfo, DiskError> {
    let mut f = File::open(dev_path).map_err(io_err(dev_path))?;
    // Partition numbers → kernel names (vda2, nvme0n1p2, mmcblk0p2).
    let mut nodes = std::collections::BTreeMap::new();
    if let Ok(children) = fs::read_dir(roots.sys_block.join(name)) {
        for c in children.flatten() {
            if let Some(n) = read_u64(&c.path().join("partition")) {
                nodes.insert(n as u32, roots.dev.join(c.file_name()));
            }
        }
    }
    if let Some(table) = layout::read_mbr(&mut f) {
        return Ok(DiskInfo {
            name: name.to_string(),
            dev_path: dev_path.to_path_buf(),
            size_sectors,
            table: PartitionTable::Mbr,
            partitions: rpi_partitions(&table, |n| nodes.get(&n).cloned()),
        });
    }
    let gpt = gptman::GPT::find_from(&mut f).map_err(|source| DiskError::Gpt {
        path: dev_path.to_path_buf(),
        source,
    })?;
    let partitions = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(number, p)| PartInfo {
            number,
            label: p.partition_name.as_str().to_string(),
            unique_guid: Guid(p.unique_partition_guid),
            first_lba: p.starting_lba,
            last_lba: p.ending_lba,
            dev_path: nodes.get(&number).cloned(),
        })
        .collect();
    Ok(DiskInfo {
        name: name.to_string(),
        dev_path: dev_path.to_path_buf(),
        size_sectors,
        table: PartitionTable::Gpt,
        partitions,
    })
}

/// The partitions of an MBR disk with basalt's Raspberry Pi layout, labelled
/// by number; an empty list for any other MBR disk.
pub fn rpi_partitions(
    table: &layout::MbrTable,
    node: impl Fn(u32) -> Option<PathBuf>,
) -> Vec<PartInfo> {
    if !table.is_rpi_layout() {
        return Vec::new();
    }
    table
        .partitions
        .iter()
        .filter_map(|p| {
            let label = layout::rpi_label(p.number)?;
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&table.disk_id.to_be_bytes());
            id[4..8].copy_from_slice(&p.number.to_be_bytes());
            Some(PartInfo {
                number: p.number,
                label,
                unique_guid: Guid(id),
                first_lba: p.first_lba,
                last_lba: p.first_lba + p.sectors - 1,
                dev_path: node(p.number),
            })
        })
        .collect()
}

/// Extends the data partition (the last one) to the end of its disk when the
/// disk is larger than the image was, moving the backup GPT to the disk's
/// end, and tells the kernel the partition's new size. The file system is
/// grown separately, once mounted ([`grow_ext4`]).
///
/// Order matters for power cuts: the table is written whole by one call, and
/// until the kernel is told, nothing else changes. A cut before the write
/// leaves the old table; after it, the next boot finds nothing left to do
/// but the file system resize, which is itself safe online.
pub fn grow_data_partition(
    disk: &DiskInfo,
    data: &PartInfo,
) -> Result<Option<DataGrowth>, DiskError> {
    if disk.table == PartitionTable::Mbr {
        // Growing a logical partition means rewriting its EBR and the
        // extended partition's entry; not done yet (see the README).
        return Ok(None);
    }
    let Some(new_last) = layout::grown_last_lba(disk.size_sectors, data.first_lba, data.last_lba)
    else {
        return Ok(None);
    };
    let path = &disk.dev_path;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let gpt_err = |source| DiskError::Gpt {
        path: path.clone(),
        source,
    };
    let mut gpt = gptman::GPT::find_from(&mut f).map_err(gpt_err)?;
    let sector = gpt.sector_size;
    gpt.header.update_from(&mut f, sector).map_err(gpt_err)?;
    let new_last = new_last.min(gpt.header.last_usable_lba);
    if new_last <= data.last_lba {
        return Ok(None);
    }
    gpt[data.number].ending_lba = new_last;
    gpt.write_into(&mut f).map_err(gpt_err)?;
    f.sync_all().map_err(io_err(path))?;
    let from_bytes = (data.last_lba + 1 - data.first_lba) * sector;
    let to_bytes = (new_last + 1 - data.first_lba) * sector;
    blkpg_resize(&f, path, data.number, data.first_lba * sector, to_bytes)?;
    Ok(Some(DataGrowth {
        from_bytes,
        to_bytes,
    }))
}

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
nix::ioctl_write_ptr_bad!(
    blkpg_ioctl,
    nix::request_code_none!(0x12, 105),
    BlkpgIoctlArg
);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

fn blkpg_resize(f: &File, path: &Path, pno: u32, start: u64, length: u64) -> Result<(), DiskError> {
    let mut part = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: pno as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: `arg` points at a live, correctly laid out blkpg_partition for the call's duration.
    unsafe { blkpg_ioctl(f.as_raw_fd(), &arg) }.map_err(|source| DiskError::Ioctl {
        path: path.to_path_buf(),
        op: "BLKPG_RESIZE_PARTITION",
        source,
    })?;
    Ok(())
}

/// Block count and block size of the ext4 file system on `device`, from its superblock.
pub fn ext4_geometry(device: &Path) -> Result<(u64, u64), DiskError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(device).map_err(io_err(device))?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).map_err(io_err(device))?;
    f.read_exact(&mut sb).map_err(io_err(device))?;
    parse_ext4_superblock(&sb).ok_or_else(|| DiskError::Io {
        path: device.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "no ext4 superblock"),
    })
}

/// (block count, block size) from a 1024-byte ext2/3/4 superblock.
pub fn parse_ext4_superblock(sb: &[u8; 1024]) -> Option<(u64, u64)> {
    let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes")) as u64;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let blocks = le32(0x4) | if incompat_64bit { le32(0x150) << 32 } else { 0 };
    let block_size = 1024u64 << le32(0x18);
    Some((blocks, block_size))
}

/// Grows the ext4 file system of `device`, mounted at `mountpoint`, online
/// to fill its partition (`part_bytes` long). Returns the new block count, or
/// `None` when it already fills it.
pub fn grow_ext4(
    device: &Path,
    mountpoint: &Path,
    part_bytes: u64,
) -> Result<Option<u64>, DiskError> {
    let (blocks, block_size) = ext4_geometry(device)?;
    let want = part_bytes / block_size;
    if want <= blocks {
        return Ok(None);
    }
    let f = File::open(mountpoint).map_err(io_err(mountpoint))?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 from the pointer.
    unsafe { ext4_resize_fs(f.as_raw_fd(), &want) }.map_err(|source| DiskError::Ioctl {
        path: mountpoint.to_path_buf(),
        op: "EXT4_IOC_RESIZE_FS",
        source,
    })?;
    Ok(Some(want))
}

/// GUIDs as GPT stores them, shown the way `blkid` and EFI variables spell them.
pub mod uuid_bytes {
    use std::fmt;

    /// A GUID in GPT's on-disk byte order (first three fields little-endian).
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Guid(pub [u8; 16]);

    impl fmt::Display for Guid {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let b = &self.0;
            write!(
                f,
                "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
            )
        }
    }

    impl fmt::Debug for Guid {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Display::fmt(self, f)
        }
    }

    impl std::str::FromStr for Guid {
        type Err = String;
        /// Parses the textual form, in either case (EFI variables use upper case).
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
            if hex.len() != 32 || s.trim().len() != 36 {
                return Err(format!("{s:?} is not a GUID"));
            }
            let mut t = [0u8; 16];
            for (i, byte) in t.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| format!("{s:?} is not a GUID"))?;
            }
            Ok(Guid([
                t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12],
                t[13], t[14], t[15],
            ]))
        }
    }
}

/// Reads systemd-boot's `LoaderDevicePartUUID` from efivarfs: the unique
/// GUID of the ESP the loader ran from.
pub fn loader_device_part_uuid(efivars: &Path) -> Option<Guid> {
    let raw =
        fs::read(efivars.join("LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")).ok()?;
    // 4 bytes of attributes, then UTF-16LE text without terminator.
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).ok()?;
    text.trim_end_matches('\0').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid(n: u8) -> Guid {
        Guid([n; 16])
    }

    fn part(number: u32, label: &str, g: u8) -> PartInfo {
        PartInfo {
            number,
            label: label.to_string(),
            unique_guid: guid(g),
            first_lba: 2048 * number as u64,
            last_lba: 2048 * number as u64 + 2047,
            dev_path: None,
        }
    }

    fn basalt_disk(name: &str, base: u8) -> DiskInfo {
        DiskInfo {
            name: name.to_string(),
            dev_path: PathBuf::from(format!("/dev/{name}")),
            size_sectors: 1 << 22,
            table: PartitionTable::Gpt,
            partitions: vec![
                part(1, "esp", base),
                part(2, "root-a", base + 1),
                part(3, "root-b", base + 2),
                part(4, "data", base + 3),
            ],
        }
    }

    #[test]
    fn rpi_mbr_partitions_are_labelled_by_number() {
        use basalt_formats::layout::{MbrPartition, MbrTable};
        let l = layout::DiskLayout::rpi(&basalt_formats::spec::Sizes {
            esp: basalt_formats::ByteSize::mib(64),
            slot: basalt_formats::ByteSize::mib(128),
            data: basalt_formats::ByteSize::mib(32),
        });
        let mut table = MbrTable {
            disk_id: 0xdeadbeef,
            partitions: l
                .partitions
                .iter()
                .map(|p| MbrPartition {
                    number: p.number,
                    mbr_type: p.mbr_type,
                    first_lba: p.first_lba,
                    sectors: p.last_lba + 1 - p.first_lba,
                })
                .collect(),
        };
        let parts = rpi_partitions(&table, |n| Some(PathBuf::from(format!("/dev/mmcblk0p{n}"))));
        let labels: Vec<_> = parts.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            ["autoboot", "boot-a", "boot-b", "root-a", "root-b", "data"]
        );
        let disk = DiskInfo {
            name: "mmcblk0".into(),
            dev_path: "/dev/mmcblk0".into(),
            size_sectors: 1 << 22,
            table: PartitionTable::Mbr,
            partitions: parts,
        };
        let b = choose_boot_disk(&[disk], Slot::B, None).unwrap();
        assert_eq!(b.root.dev_path.unwrap(), PathBuf::from("/dev/mmcblk0p6"));
        assert_eq!(b.data.number, 7);
        assert_eq!(b.esp.label, "autoboot");
        // Another MBR disk (a USB stick) is not mistaken for a basalt disk.
        table.partitions.truncate(2);
        assert!(rpi_partitions(&table, |_| None).is_empty());
    }

    #[test]
    fn loader_esp_picks_the_disk() {
        let disks = [basalt_disk("sda", 10), basalt_disk("vda", 20)];
        let b = choose_boot_disk(&disks, Slot::B, Some(guid(20))).unwrap();
        assert_eq!(b.disk.name, "vda");
        assert_eq!(b.root.label, "root-b");
        assert_eq!(b.data.number, 4);
        // Without the variable, the first complete disk by name.
        let b = choose_boot_disk(&disks, Slot::A, None).unwrap();
        assert_eq!(b.disk.name, "sda");
    }

    #[test]
    fn missing_partitions_are_named() {
        let mut d = basalt_disk("vda", 1);
        d.partitions.retain(|p| p.label != "data");
        let e = choose_boot_disk(&[d.clone()], Slot::A, Some(guid(1))).unwrap_err();
        assert!(e.to_string().contains("lacks partition data"), "{e}");
        let e = choose_boot_disk(&[d], Slot::A, None).unwrap_err();
        assert!(e.to_string().contains("(disks seen: vda)"), "{e}");
        let e = choose_boot_disk(&[], Slot::A, None).unwrap_err();
        assert!(e.to_string().contains("disks seen: none"), "{e}");
    }

    #[test]
    fn superblock_geometry() {
        let mut sb = [0u8; 1024];
        assert_eq!(parse_ext4_superblock(&sb), None);
        sb[0x38..0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x4..0x8].copy_from_slice(&32768u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse_ext4_superblock(&sb), Some((32768, 4096)));
        sb[0x60] = 0x80;
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse_ext4_superblock(&sb), Some(((1 << 32) + 32768, 4096)));
    }

    #[test]
    fn guid_text_round_trip() {
        let text = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
        let g: Guid = text.parse().unwrap();
        assert_eq!(g.to_string(), text.to_lowercase());
        // On disk, the first field is little-endian.
        assert_eq!(&g.0[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert!("not-a-guid".parse::<Guid>().is_err());
    }

    #[test]
    fn efi_variable_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![6, 0, 0, 0];
        for u in "0A1B2C3D-0000-1111-2222-333344445555"
            .encode_utf16()
            .chain([0])
        {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        fs::write(
            dir.path()
                .join("LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"),
            raw,
        )
        .unwrap();
        let g = loader_device_part_uuid(dir.path()).unwrap();
        assert_eq!(g.to_string(), "0a1b2c3d-0000-1111-2222-333344445555");
    }
}
