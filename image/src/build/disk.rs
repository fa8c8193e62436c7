//! The disk image: a GPT or an MBR written in user space, and the partition
//! images copied to their offsets, leaving holes where they are empty.

use basalt_formats::board::PartitionTable;
use basalt_formats::layout::{DiskLayout, PartitionPlan, MBR_TYPE_EXTENDED_LBA, SECTOR};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: writing the partition table: {source}")]
    Gpt {
        path: PathBuf,
        source: gptman::Error,
    },
    #[error("{what} ({size} bytes) does not fit partition {label} ({room} bytes); raise {field} in the spec")]
    TooBig {
        what: String,
        size: u64,
        label: String,
        room: u64,
        field: String,
    },
}

/// Creates `out` with the partition table of `layout`. Partition `i` gets
/// unique GUID `part_guids[i]`.
pub fn create(
    out: &Path,
    layout: &DiskLayout,
    disk_guid: Uuid,
    part_guids: &[Uuid],
) -> Result<File, DiskError> {
    let io = |source| DiskError::Io {
        path: out.to_path_buf(),
        source,
    };
    let gpt_err = |source| DiskError::Gpt {
        path: out.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io)?;
    f.set_len(layout.total_bytes()).map_err(io)?;
    if layout.table == PartitionTable::Mbr {
        let disk_id = u32::from_le_bytes(disk_guid.as_bytes()[..4].try_into().expect("4 bytes"));
        for (offset, sector) in mbr_sectors(layout, disk_id) {
            f.seek(SeekFrom::Start(offset * SECTOR)).map_err(io)?;
            f.write_all(&sector).map_err(io)?;
        }
        return Ok(f);
    }
    let mut gpt =
        gptman::GPT::new_from(&mut f, SECTOR, disk_guid.to_bytes_le()).map_err(gpt_err)?;
    for (p, guid) in layout.partitions.iter().zip(part_guids) {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: p.type_guid.to_bytes_le(),
            unique_partition_guid: guid.to_bytes_le(),
            starting_lba: p.first_lba,
            ending_lba: p.last_lba,
            attribute_bits: 0,
            partition_name: p.label.as_str().into(),
        };
    }
    gpt.write_into(&mut f).map_err(gpt_err)?;
    gptman::GPT::write_protective_mbr_into(&mut f, SECTOR).map_err(gpt_err)?;
    Ok(f)
}

/// Copies the image file `src` into partition `label` of `disk`, skipping
/// all-zero blocks so the disk image stays sparse.
pub fn write_partition(
    disk: &mut File,
    disk_path: &Path,
    layout: &DiskLayout,
    label: &str,
    field: &str,
    src: &Path,
) -> Result<u64, DiskError> {
    let part = layout.by_label(label).expect("layout has the partition");
    let mut input = File::open(src).map_err(|source| DiskError::Io {
        path: src.to_path_buf(),
        source,
    })?;
    let size = input
        .metadata()
        .map_err(|source| DiskError::Io {
            path: src.to_path_buf(),
            source,
        })?
        .len();
    if size > part.size_bytes() {
        return Err(DiskError::TooBig {
            what: src
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            size,
            label: label.to_string(),
            room: part.size_bytes(),
            field: field.to_string(),
        });
    }
    let io = |source| DiskError::Io {
        path: disk_path.to_path_buf(),
        source,
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = part.offset_bytes();
    loop {
        let n = read_full(&mut input, &mut buf).map_err(|source| DiskError::Io {
            path: src.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            disk.seek(SeekFrom::Start(pos)).map_err(io)?;
            disk.write_all(&buf[..n]).map_err(io)?;
        }
        pos += n as u64;
    }
    Ok(size)
}

/// One 16-byte MBR partition entry (CHS fields set to the LBA-only marker).
fn mbr_entry(ty: u8, first_lba: u64, sectors: u64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = ty;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&(first_lba as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    e
}

fn sectors(p: &PartitionPlan) -> u64 {
    p.last_lba + 1 - p.first_lba
}

/// The sectors of an MBR layout: (LBA, contents) of the master boot record
/// and of each logical partition's extended boot record. Logical partitions
/// are chained the usual way: each EBR's first entry is its partition
/// (relative to the EBR), its second the next EBR (relative to the extended
/// partition's start).
pub fn mbr_sectors(layout: &DiskLayout, disk_id: u32) -> Vec<(u64, [u8; 512])> {
    let mut out = Vec::new();
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let primary: Vec<&PartitionPlan> = layout.partitions.iter().filter(|p| p.number <= 4).collect();
    let logical: Vec<&PartitionPlan> = layout.partitions.iter().filter(|p| p.number > 4).collect();
    for p in &primary {
        let i = p.number as usize - 1;
        mbr[446 + 16 * i..446 + 16 * (i + 1)].copy_from_slice(&mbr_entry(
            p.mbr_type,
            p.first_lba,
            sectors(p),
        ));
    }
    out.push((0, mbr));
    let Some(ext) = primary.iter().find(|p| p.mbr_type == MBR_TYPE_EXTENDED_LBA) else {
        return out;
    };
    // Each EBR sits 1 MiB before its partition.
    let ebr_lba = |p: &PartitionPlan| p.first_lba - basalt_formats::layout::ALIGN_SECTORS;
    for (i, p) in logical.iter().enumerate() {
        let mut ebr = [0u8; 512];
        ebr[510] = 0x55;
        ebr[511] = 0xaa;
        let here = ebr_lba(p);
        ebr[446..462].copy_from_slice(&mbr_entry(p.mbr_type, p.first_lba - here, sectors(p)));
        if let Some(next) = logical.get(i + 1) {
            let next_ebr = ebr_lba(next);
            ebr[462..478].copy_from_slice(&mbr_entry(
                MBR_TYPE_EXTENDED_LBA,
                next_ebr - ext.first_lba,
                next.last_lba + 1 - next_ebr,
            ));
        }
        out.push((here, ebr));
    }
    out
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::spec::Sizes;
    use basalt_formats::{Arch, ByteSize};

    #[test]
    fn mbr_reads_back_with_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = Sizes {
            esp: ByteSize::mib(64),
            slot: ByteSize::mib(128),
            data: ByteSize::mib(32),
        };
        let layout = DiskLayout::rpi(&sizes);
        let path = dir.path().join("disk.img");
        let f = create(&path, &layout, Uuid::from_u128(0x7856_3412 << 96), &[]).unwrap();
        drop(f);
        let out = std::process::Command::new("sfdisk")
            .args(["--dump"])
            .arg(&path)
            .output()
            .expect("sfdisk (util-linux fdisk) is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("label: dos"), "{text}");
        assert!(text.contains("label-id: 0x12345678"), "{text}");
        let parts: Vec<String> = text
            .lines()
            .filter(|l| l.contains(" : start="))
            .map(|l| {
                let (dev, rest) = l.split_once(" : ").unwrap();
                let num = dev.trim().trim_start_matches(&*path.display().to_string());
                let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
                format!("{num} {}", rest.replace("= ", "="))
            })
            .collect();
        let want: Vec<String> = layout
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "{} start={}, size={}, type={:x}",
                    p.number,
                    p.first_lba,
                    p.last_lba + 1 - p.first_lba,
                    p.mbr_type
                )
            })
            .collect();
        assert_eq!(parts, want, "{text}");

        // The agent's and the launcher's reader sees the same table.
        let mut f = File::open(&path).unwrap();
        let table = basalt_formats::layout::parse_mbr(|lba| {
            let mut s = [0u8; 512];
            f.seek(SeekFrom::Start(lba * 512)).ok()?;
            f.read_exact(&mut s).ok()?;
            Some(s)
        })
        .unwrap();
        assert_eq!(table.disk_id, 0x1234_5678);
        assert!(table.is_rpi_layout(), "{table:?}");
        let got: Vec<(u32, u64, u64)> = table
            .partitions
            .iter()
            .map(|p| (p.number, p.first_lba, p.sectors))
            .collect();
        let want: Vec<(u32, u64, u64)> = layout
            .partitions
            .iter()
            .map(|p| (p.number, p.first_lba, p.last_lba + 1 - p.first_lba))
            .collect();
        assert_eq!(got, want);
        // A GPT disk's protective MBR is not read as an MBR.
        let gpt_layout = DiskLayout::uefi(Arch::Arm64, &sizes);
        let gpt_path = dir.path().join("gpt.img");
        drop(
            create(
                &gpt_path,
                &gpt_layout,
                Uuid::from_u128(1),
                &(2..6u128).map(Uuid::from_u128).collect::<Vec<_>>(),
            )
            .unwrap(),
        );
        let mut g = File::open(&gpt_path).unwrap();
        assert!(basalt_formats::layout::parse_mbr(|lba| {
            let mut s = [0u8; 512];
            g.seek(SeekFrom::Start(lba * 512)).ok()?;
            g.read_exact(&mut s).ok()?;
            Some(s)
        })
        .is_none());
    }

    #[test]
    fn table_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = Sizes {
            esp: ByteSize::mib(64),
            slot: ByteSize::mib(128),
            data: ByteSize::mib(32),
        };
        let layout = DiskLayout::uefi(Arch::Arm64, &sizes);
        let guids: Vec<Uuid> = (1..=4u128).map(Uuid::from_u128).collect();
        let path = dir.path().join("disk.img");
        let mut f = create(&path, &layout, Uuid::from_u128(99), &guids).unwrap();
        let src = dir.path().join("root.img");
        std::fs::write(&src, vec![0xabu8; 3 << 20]).unwrap();
        write_partition(&mut f, &path, &layout, "root-b", "sizes.slot", &src).unwrap();
        drop(f);

        let mut f = File::open(&path).unwrap();
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        assert_eq!(gpt.header.disk_guid, Uuid::from_u128(99).to_bytes_le());
        let names: Vec<_> = gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(_, p)| p.partition_name.as_str().to_string())
            .collect();
        assert_eq!(names, ["esp", "root-a", "root-b", "data"]);
        assert_eq!(
            gpt[3].unique_partition_guid,
            Uuid::from_u128(3).to_bytes_le()
        );
        assert_eq!(gpt[3].starting_lba, layout.partitions[2].first_lba);
        let mut buf = [0u8; 4];
        f.seek(SeekFrom::Start(layout.partitions[2].offset_bytes()))
            .unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [0xab; 4]);

        let big = dir.path().join("big.img");
        std::fs::write(&big, vec![1u8; 33 << 20]).unwrap();
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        let e = write_partition(&mut f, &path, &layout, "data", "sizes.data", &big).unwrap_err();
        assert!(e.to_string().contains("raise sizes.data"), "{e}");
    }
}
