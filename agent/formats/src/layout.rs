//! The A/B disk layout of UEFI boards, as a pure plan: which partitions, where,
//! with which type GUIDs. The builder writes it; the agent reads and grows it.

use crate::board::Arch;
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
    pub type_guid: Uuid,
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
                first_lba: lba,
                last_lba: lba + sectors - 1,
            });
            lba += sectors;
        }
        DiskLayout {
            total_sectors: lba + ALIGN_SECTORS,
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
