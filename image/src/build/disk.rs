//! The disk image: a GPT written in user space, and the partition images
//! copied to their offsets, leaving holes where they are empty.

use basalt_formats::layout::{DiskLayout, SECTOR};
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
