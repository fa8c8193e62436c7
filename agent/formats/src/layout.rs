//! The A/B disk layouts, as pure plans: which partitions, where, with which
//! type GUIDs (GPT, UEFI boards) or type bytes (MBR, Raspberry Pi boards).
//! The builder writes them; the agent reads and grows them.

use crate::board::{Arch, PartitionTable};
use crate::spec::Sizes;
use serde::Serialize;
use uuid::{uuid, Uuid};

pub const SECTOR: u64 = 512;
/// Partitions start and end on 1 MiB boundaries.
pub const ALIGN_SECTORS: u64 = 2048;
/// Sectors a GPT needs at each end beyond LBA 0: header plus 128 entries of 128 bytes.
pub const GPT_SECTORS: u64 = 1 + 32;

pub const LABEL_ESP: &str = "esp";
pub const LABEL_DATA: &str = "data";
/// Raspberry Pi: the small FAT partition holding only `autoboot.txt`.
pub const LABEL_AUTOBOOT: &str = "autoboot";

/// MBR partition numbers of the Raspberry Pi layout. The firmware names boot
/// partitions by number in `autoboot.txt`, and the initrd finds the root and
/// data partitions by number (an MBR has no partition names).
pub const RPI_AUTOBOOT_PARTITION: u32 = 1;
pub const RPI_EXTENDED_PARTITION: u32 = 4;
pub const RPI_DATA_PARTITION: u32 = 7;
/// Size of the `autoboot.txt` partition.
pub const RPI_AUTOBOOT_BYTES: u64 = 32 << 20;

/// MBR type: FAT32 with LBA addressing (the Pi firmware reads FAT16 and FAT32 in it).
pub const MBR_TYPE_FAT_LBA: u8 = 0x0c;
/// MBR type: extended partition with LBA addressing.
pub const MBR_TYPE_EXTENDED_LBA: u8 = 0x0f;
/// MBR type: Linux.
pub const MBR_TYPE_LINUX: u8 = 0x83;

/// The MBR partition number of a slot's FAT boot partition (2 or 3).
pub fn rpi_boot_partition(slot: crate::Slot) -> u32 {
    match slot {
        crate::Slot::A => 2,
        crate::Slot::B => 3,
    }
}

/// The MBR partition number of a slot's root partition (5 or 6).
pub fn rpi_root_partition(slot: crate::Slot) -> u32 {
    match slot {
        crate::Slot::A => 5,
        crate::Slot::B => 6,
    }
}

/// The slot whose boot partition is `number`, if it is one.
pub fn rpi_slot_of_boot_partition(number: u32) -> Option<crate::Slot> {
    crate::Slot::ALL
        .into_iter()
        .find(|s| rpi_boot_partition(*s) == number)
}

/// The label basalt gives an MBR partition of the Raspberry Pi layout.
pub fn rpi_label(number: u32) -> Option<String> {
    Some(match number {
        RPI_AUTOBOOT_PARTITION => LABEL_AUTOBOOT.to_string(),
        2 => "boot-a".to_string(),
        3 => "boot-b".to_string(),
        5 => "root-a".to_string(),
        6 => "root-b".to_string(),
        RPI_DATA_PARTITION => LABEL_DATA.to_string(),
        _ => return None,
    })
}

/// EFI System Partition.
pub const TYPE_ESP: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// Root partition (x86-64), UAPI Discoverable Partitions Specification.
pub const TYPE_ROOT_X86_64: Uuid = uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
/// Root partition (64-bit ARM), UAPI Discoverable Partitions Specification.
pub const TYPE_ROOT_ARM64: Uuid = uuid!("b921b045-1df0-41c3-af44-4c6f280d3fae");
/// Generic Linux data. The data partition is mounted by the initrd, not by
/// systemd-gpt-auto-generator, so it must not carry the `/var` or `/home` type.
pub const TYPE_LINUX_DATA: Uuid = uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

pub fn root_type(arch: Arch) -> Uuid {
    match arch {
        Arch::Amd64 => TYPE_ROOT_X86_64,
        Arch::Arm64 => TYPE_ROOT_ARM64,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    /// 1-based partition number.
    pub number: u32,
    pub label: String,
    /// GPT partition type (nil on MBR disks).
    pub type_guid: Uuid,
    /// MBR partition type byte (0 on GPT disks).
    pub mbr_type: u8,
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
}

impl PartitionPlan {
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskLayout {
    pub table: PartitionTable,
    pub total_sectors: u64,
    pub partitions: Vec<PartitionPlan>,
}

impl DiskLayout {
    /// ESP, root-a, root-b, data, each aligned to 1 MiB, with 1 MiB left at
    /// the end for the backup GPT.
    pub fn uefi(arch: Arch, sizes: &Sizes) -> DiskLayout {
        let parts = [
            (LABEL_ESP.to_string(), TYPE_ESP, sizes.esp.bytes()),
            ("root-a".to_string(), root_type(arch), sizes.slot.bytes()),
            ("root-b".to_string(), root_type(arch), sizes.slot.bytes()),
            (LABEL_DATA.to_string(), TYPE_LINUX_DATA, sizes.data.bytes()),
        ];
        let mut lba = ALIGN_SECTORS;
        let mut partitions = Vec::new();
        for (i, (label, type_guid, bytes)) in parts.into_iter().enumerate() {
            let sectors = bytes.div_ceil(SECTOR).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
            partitions.push(PartitionPlan {
                number: i as u32 + 1,
                label,
                type_guid,
                mbr_type: 0,
                first_lba: lba,
                last_lba: lba + sectors - 1,
            });
            lba += sectors;
        }
        DiskLayout {
            table: PartitionTable::Gpt,
            total_sectors: lba + ALIGN_SECTORS,
            partitions,
        }
    }

    /// The Raspberry Pi layout (MBR): `autoboot` (1), `boot-a` (2) and
    /// `boot-b` (3) of `sizes.esp` each, then an extended partition (4)
    /// holding `root-a` (5), `root-b` (6) and `data` (7). Every logical
    /// partition is preceded by 1 MiB holding its extended boot record.
    pub fn rpi(sizes: &Sizes) -> DiskLayout {
        let aligned = |bytes: u64| bytes.div_ceil(SECTOR).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
        let mut partitions = Vec::new();
        let mut lba = ALIGN_SECTORS;
        let mut push = |number: u32, mbr_type: u8, first: u64, sectors: u64| {
            partitions.push(PartitionPlan {
                number,
                label: rpi_label(number).unwrap_or_else(|| "extended".to_string()),
                type_guid: Uuid::nil(),
                mbr_type,
                first_lba: first,
                last_lba: first + sectors - 1,
            });
        };
        for (number, bytes) in [
            (RPI_AUTOBOOT_PARTITION, RPI_AUTOBOOT_BYTES),
            (2, sizes.esp.bytes()),
            (3, sizes.esp.bytes()),
        ] {
            let sectors = aligned(bytes);
            push(number, MBR_TYPE_FAT_LBA, lba, sectors);
            lba += sectors;
        }
        let extended_start = lba;
        let logical = [
            (5, MBR_TYPE_LINUX, sizes.slot.bytes()),
            (6, MBR_TYPE_LINUX, sizes.slot.bytes()),
            (RPI_DATA_PARTITION, MBR_TYPE_LINUX, sizes.data.bytes()),
        ];
        let extended_sectors: u64 = logical
            .iter()
            .map(|(_, _, b)| ALIGN_SECTORS + aligned(*b))
            .sum();
        push(
            RPI_EXTENDED_PARTITION,
            MBR_TYPE_EXTENDED_LBA,
            extended_start,
            extended_sectors,
        );
        for (number, ty, bytes) in logical {
            let sectors = aligned(bytes);
            push(number, ty, lba + ALIGN_SECTORS, sectors);
            lba += ALIGN_SECTORS + sectors;
        }
        DiskLayout {
            table: PartitionTable::Mbr,
            total_sectors: lba,
            partitions,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_sectors * SECTOR
    }

    pub fn by_label(&self, label: &str) -> Option<&PartitionPlan> {
        self.partitions.iter().find(|p| p.label == label)
    }
}

/// One partition read back from an MBR (primary or logical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    pub number: u32,
    pub mbr_type: u8,
    pub first_lba: u64,
    pub sectors: u64,
}

/// An MBR disk read back: its 32-bit disk identifier and partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrTable {
    pub disk_id: u32,
    pub partitions: Vec<MbrPartition>,
}

impl MbrTable {
    pub fn partition(&self, number: u32) -> Option<&MbrPartition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// True when the table has basalt's Raspberry Pi layout: FAT partitions
    /// 1-3, an extended partition 4 and Linux partitions 5-7.
    pub fn is_rpi_layout(&self) -> bool {
        let ty = |n| self.partition(n).map(|p| p.mbr_type);
        (1..=3).all(|n| ty(n) == Some(MBR_TYPE_FAT_LBA))
            && matches!(
                ty(RPI_EXTENDED_PARTITION),
                Some(0x05 | MBR_TYPE_EXTENDED_LBA)
            )
            && (5..=RPI_DATA_PARTITION).all(|n| ty(n) == Some(MBR_TYPE_LINUX))
    }
}

/// [`parse_mbr`] of a disk or disk image, 512-byte sectors read from `disk`.
pub fn read_mbr(disk: &mut (impl std::io::Read + std::io::Seek)) -> Option<MbrTable> {
    parse_mbr(|lba| {
        let mut s = [0u8; 512];
        disk.seek(std::io::SeekFrom::Start(lba * 512)).ok()?;
        disk.read_exact(&mut s).ok()?;
        Some(s)
    })
}

/// Reads an MBR and its chain of extended boot records through
/// `read_sector` (LBA to 512 bytes). `None` when sector 0 carries no MBR
/// signature or is a GPT's protective MBR. A broken EBR chain ends the list
/// of logical partitions; a chain longer than 64 is cut there.
pub fn parse_mbr(mut read_sector: impl FnMut(u64) -> Option<[u8; 512]>) -> Option<MbrTable> {
    let entry = |s: &[u8; 512], i: usize| -> (u8, u64, u64) {
        let e = &s[446 + 16 * i..446 + 16 * (i + 1)];
        (
            e[4],
            u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")) as u64,
            u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")) as u64,
        )
    };
    let mbr = read_sector(0)?;
    if mbr[510..512] != [0x55, 0xaa] || (0..4).any(|i| entry(&mbr, i).0 == 0xee) {
        return None;
    }
    let mut partitions = Vec::new();
    let mut extended = None;
    for i in 0..4 {
        let (ty, first, sectors) = entry(&mbr, i);
        if ty == 0 || sectors == 0 {
            continue;
        }
        partitions.push(MbrPartition {
            number: i as u32 + 1,
            mbr_type: ty,
            first_lba: first,
            sectors,
        });
        if matches!(ty, 0x05 | MBR_TYPE_EXTENDED_LBA) {
            extended = Some(first);
        }
    }
    if let Some(ext_start) = extended {
        let mut ebr_lba = ext_start;
        for number in 5..5 + 64 {
            let Some(ebr) = read_sector(ebr_lba) else {
                break;
            };
            if ebr[510..512] != [0x55, 0xaa] {
                break;
            }
            let (ty, rel, sectors) = entry(&ebr, 0);
            if ty == 0 || sectors == 0 {
                break;
            }
            partitions.push(MbrPartition {
                number,
                mbr_type: ty,
                first_lba: ebr_lba + rel,
                sectors,
            });
            let (next_ty, next_rel, _) = entry(&ebr, 1);
            if next_ty == 0 || next_rel == 0 {
                break;
            }
            ebr_lba = ext_start + next_rel;
        }
    }
    Some(MbrTable {
        disk_id: u32::from_le_bytes(mbr[440..444].try_into().expect("4 bytes")),
        partitions,
    })
}

/// Where the data partition should end on a disk of `disk_sectors` sectors:
/// the last aligned sector before the backup GPT. `None` when it already
/// reaches there (or the disk is smaller than the layout, which is not ours
/// to fix).
pub fn grown_last_lba(disk_sectors: u64, first_lba: u64, current_last_lba: u64) -> Option<u64> {
    let last_usable = disk_sectors.checked_sub(GPT_SECTORS + 1)?;
    let end_exclusive = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS;
    let target = end_exclusive.checked_sub(1)?;
    // Growing by less than 1 MiB is not worth a table rewrite.
    (target > current_last_lba && target >= first_lba && target - current_last_lba >= ALIGN_SECTORS)
        .then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::ByteSize;

    #[test]
    fn uefi_layout_golden() {
        let sizes = Sizes {
            esp: ByteSize::mib(128),
            slot: ByteSize::mib(512),
            data: ByteSize::mib(64),
        };
        let l = DiskLayout::uefi(Arch::Amd64, &sizes);
        let got: Vec<_> = l
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {}..={}",
                    p.number, p.label, p.type_guid, p.first_lba, p.last_lba
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "1 esp c12a7328-f81f-11d2-ba4b-00a0c93ec93b 2048..=264191",
                "2 root-a 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 264192..=1312767",
                "3 root-b 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 1312768..=2361343",
                "4 data 0fc63daf-8483-4772-8e79-3d69d8477de4 2361344..=2492415",
            ]
        );
        assert_eq!(l.total_sectors, 2494464);
        assert_eq!(l.total_bytes(), (1 + 128 + 512 * 2 + 64 + 1) * 1024 * 1024);
        let arm = DiskLayout::uefi(Arch::Arm64, &sizes);
        assert_eq!(arm.by_label("root-b").unwrap().type_guid, TYPE_ROOT_ARM64);
    }

    #[test]
    fn rpi_layout_golden() {
        let sizes = Sizes {
            esp: ByteSize::mib(128),
            slot: ByteSize::mib(512),
            data: ByteSize::mib(64),
        };
        let l = DiskLayout::rpi(&sizes);
        let got: Vec<_> = l
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "{} {} {:#04x} {}..={}",
                    p.number, p.label, p.mbr_type, p.first_lba, p.last_lba
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "1 autoboot 0x0c 2048..=67583",
                "2 boot-a 0x0c 67584..=329727",
                "3 boot-b 0x0c 329728..=591871",
                "4 extended 0x0f 591872..=2826239",
                "5 root-a 0x83 593920..=1642495",
                "6 root-b 0x83 1644544..=2693119",
                "7 data 0x83 2695168..=2826239",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        );
        // The extended partition holds every logical one.
        let ext = &l.partitions[3];
        for p in &l.partitions[4..] {
            assert!(
                p.first_lba > ext.first_lba && p.last_lba <= ext.last_lba,
                "{p:?}"
            );
        }
        assert_eq!(l.total_sectors, l.partitions[6].last_lba + 1);
        assert_eq!(rpi_boot_partition(crate::Slot::B), 3);
        assert_eq!(rpi_slot_of_boot_partition(2), Some(crate::Slot::A));
        assert_eq!(rpi_slot_of_boot_partition(5), None);
    }

    #[test]
    fn grow_target() {
        // Same disk: nothing to do.
        assert_eq!(grown_last_lba(2494464, 2361344, 2492415), None);
        // Disk grown to 4 GiB: data ends on the last aligned sector before the backup GPT.
        let sectors = 4 * 1024 * 1024 * 2;
        let t = grown_last_lba(sectors, 2361344, 2492415).unwrap();
        assert_eq!((t + 1) % ALIGN_SECTORS, 0);
        assert!(t < sectors - GPT_SECTORS);
        assert!(sectors - GPT_SECTORS - 1 - t < ALIGN_SECTORS);
        // A disk smaller than the image.
        assert_eq!(grown_last_lba(1000, 2361344, 2492415), None);
    }
}
