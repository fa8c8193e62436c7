//! The image side of a flash: reading a raw, zstd or xz image, finding the
//! ranges of a sparse file that hold data, and reading its partition table.

use basalt_formats::board::{Board, PartitionTable};
use basalt_formats::layout::{
    root_type, MBR_TYPE_EXTENDED_LBA, MBR_TYPE_FAT_LBA, SECTOR, TYPE_ESP,
};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use uuid::Uuid;

/// How the image file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Xz,
}

impl Compression {
    /// By the file's first bytes, whatever its name.
    pub fn detect(path: &Path) -> io::Result<Compression> {
        let mut magic = [0u8; 6];
        let f = File::open(path)?;
        let n = f.read_at(&mut magic, 0)?;
        Ok(match &magic[..n] {
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Compression::Xz,
            _ => Compression::None,
        })
    }
}

/// `xz -dc FILE`, killed if dropped before the end.
#[derive(Debug)]
struct XzChild {
    child: Child,
    out: std::process::ChildStdout,
}

impl Read for XzChild {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(io::Error::other(format!("xz -dc failed ({status})")));
            }
        }
        Ok(n)
    }
}

impl Drop for XzChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads an image at increasing offsets: a raw file at any offset, a
/// compressed one by decompressing from its start (skipped bytes are
/// decompressed and dropped).
pub enum ImageReader {
    Raw(File),
    Stream { reader: Box<dyn Read>, pos: u64 },
}

impl std::fmt::Debug for ImageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageReader::Raw(file) => f.debug_tuple("Raw").field(file).finish(),
            ImageReader::Stream { pos, .. } => f.debug_struct("Stream").field("pos", pos).finish(),
        }
    }
}

impl ImageReader {
    pub fn open(path: &Path, compression: Compression) -> Result<ImageReader, OpenError> {
        let file = File::open(path).map_err(OpenError::Io)?;
        Ok(match compression {
            Compression::None => ImageReader::Raw(file),
            Compression::Zstd => ImageReader::Stream {
                reader: Box::new(zstd::stream::read::Decoder::new(file).map_err(OpenError::Io)?),
                pos: 0,
            },
            Compression::Xz => {
                let mut child = Command::new("xz")
                    .arg("-dc")
                    .stdin(Stdio::from(file))
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(OpenError::NoXz)?;
                let out = child.stdout.take().expect("piped stdout");
                ImageReader::Stream {
                    reader: Box::new(XzChild { child, out }),
                    pos: 0,
                }
            }
        })
    }

    /// Fills `buf` from image offset `offset`. A stream only goes forward.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            ImageReader::Raw(f) => f.read_exact_at(buf, offset),
            ImageReader::Stream { reader, pos } => {
                if offset < *pos {
                    return Err(io::Error::other(format!(
                        "cannot go back to byte {offset} in a compressed image (at {pos})"
                    )));
                }
                let skip = offset - *pos;
                let skipped = io::copy(&mut reader.by_ref().take(skip), &mut io::sink())?;
                *pos += skipped;
                if skipped < skip {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                reader.read_exact(buf)?;
                *pos += buf.len() as u64;
                Ok(())
            }
        }
    }
}

/// Why an image could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    /// The `xz` command could not be started.
    NoXz(io::Error),
}

/// The ranges of `file` (of `size` bytes) that hold data, by
/// `SEEK_DATA`/`SEEK_HOLE`: a file system without holes reports one range.
pub fn data_ranges(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match lseek(fd, data as i64, Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(Errno::ENXIO) => size,
            Err(e) => return Err(e.into()),
        };
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

/// A partition as the image's table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    /// GPT type (nil on MBR disks).
    pub type_guid: Uuid,
    /// MBR type byte (0 on GPT disks).
    pub mbr_type: u8,
    pub offset: u64,
    pub size: u64,
}

/// The image's partition table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: PartitionTable,
    /// GPT partitions, or the four primary MBR entries that are used.
    pub partitions: Vec<Partition>,
}

/// How much of the image's start [`read_table`] needs: the MBR, the GPT
/// header and its 128 entries.
pub const HEAD_BYTES: usize = 34 * SECTOR as usize;

/// Reads and checks the partition table in `head` (the image's first
/// [`HEAD_BYTES`] or more) of an image of `image_size` bytes. `backup` is
/// the image's last sector when it can be read (a raw image), to check the
/// backup GPT header too. The error says what is wrong.
pub fn read_table(head: &[u8], image_size: u64, backup: Option<&[u8]>) -> Result<Table, String> {
    if head.len() < HEAD_BYTES || image_size < HEAD_BYTES as u64 {
        return Err(format!(
            "at {image_size} bytes it is too small to hold a partition table"
        ));
    }
    if head[510..512] != [0x55, 0xaa] {
        return Err(
            "sector 0 has no MBR boot signature (0x55AA): not a disk image, or its start is damaged"
                .into(),
        );
    }
    let entry = |i: usize| {
        let e = &head[446 + 16 * i..446 + 16 * (i + 1)];
        (
            e[4],
            u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")) as u64,
            u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")) as u64,
        )
    };
    if !(0..4).any(|i| entry(i).0 == 0xee) {
        let partitions = (0..4)
            .map(|i| (i, entry(i)))
            .filter(|(_, (ty, _, sectors))| *ty != 0 && *sectors != 0)
            .map(|(i, (ty, first, sectors))| Partition {
                number: i as u32 + 1,
                type_guid: Uuid::nil(),
                mbr_type: ty,
                offset: first * SECTOR,
                size: sectors * SECTOR,
            })
            .collect::<Vec<_>>();
        if let Some(p) = partitions.iter().find(|p| p.offset + p.size > image_size) {
            return Err(format!(
                "MBR partition {} ends at byte {}, past the image's end ({image_size} bytes): truncated?",
                p.number,
                p.offset + p.size
            ));
        }
        return Ok(Table {
            kind: PartitionTable::Mbr,
            partitions,
        });
    }

    let mut cur = io::Cursor::new(head);
    cur.set_position(SECTOR);
    let header =
        gptman::GPTHeader::read_from(&mut cur).map_err(|e| gpt_problem("primary GPT header", e))?;
    let sectors = image_size / SECTOR;
    if header.backup_lba != sectors - 1 {
        return Err(format!(
            "its GPT puts the backup header at sector {} but the image has {sectors} sectors: truncated or padded",
            header.backup_lba
        ));
    }
    // On the raw bytes: gptman checks the entries it decoded and encoded
    // again, which loses bytes after the end of a partition's name.
    let entries_start = header.partition_entry_lba * SECTOR;
    let entries_len =
        header.number_of_partition_entries as u64 * header.size_of_partition_entry as u64;
    let entries = head
        .get(entries_start as usize..(entries_start + entries_len) as usize)
        .ok_or_else(|| {
            format!(
                "its GPT puts {} partition entries of {} bytes at sector {}, past the first {} sectors",
                header.number_of_partition_entries,
                header.size_of_partition_entry,
                header.partition_entry_lba,
                HEAD_BYTES as u64 / SECTOR
            )
        })?;
    let crc = crc32fast::hash(entries);
    if crc != header.partition_entry_array_crc32 {
        return Err(format!(
            "the GPT partition entries have a bad CRC32 (stored {:08x}, computed {crc:08x})",
            header.partition_entry_array_crc32
        ));
    }
    let gpt = gptman::GPT::read_from(&mut io::Cursor::new(head), SECTOR)
        .map_err(|e| gpt_problem("GPT partition entries", e))?;
    if let Some(backup) = backup {
        let mut b = io::Cursor::new(backup);
        gptman::GPTHeader::read_from(&mut b).map_err(|e| gpt_problem("backup GPT header", e))?;
    }
    let partitions = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| Partition {
            number: n,
            type_guid: Uuid::from_bytes_le(p.partition_type_guid),
            mbr_type: 0,
            offset: p.starting_lba * SECTOR,
            size: (p.ending_lba + 1 - p.starting_lba) * SECTOR,
        })
        .collect::<Vec<_>>();
    if let Some(p) = partitions.iter().find(|p| p.offset + p.size > image_size) {
        return Err(format!(
            "GPT partition {} ends at byte {}, past the image's end ({image_size} bytes)",
            p.number,
            p.offset + p.size
        ));
    }
    Ok(Table {
        kind: PartitionTable::Gpt,
        partitions,
    })
}

fn gpt_problem(what: &str, e: gptman::Error) -> String {
    match e {
        gptman::Error::InvalidSignature => format!("the {what} has no \"EFI PART\" signature"),
        gptman::Error::InvalidChecksum(stored, computed) => {
            format!("the {what} has a bad CRC32 (stored {stored:08x}, computed {computed:08x})")
        }
        gptman::Error::InvalidPartitionEntryArrayChecksum(stored, computed) => {
            format!("the {what} have a bad CRC32 (stored {stored:08x}, computed {computed:08x})")
        }
        other => format!("the {what} cannot be read: {other}"),
    }
}

impl Table {
    /// Why this table is not one of `board`'s images, if it is not.
    pub fn misfit(&self, board: &Board) -> Option<String> {
        let has = |ty: u8, n: u32| {
            self.partitions.iter().any(|p| {
                p.number == n
                    && (p.mbr_type == ty || (ty == MBR_TYPE_EXTENDED_LBA && p.mbr_type == 0x05))
            })
        };
        match (board.partition_table, self.kind) {
            (PartitionTable::Gpt, PartitionTable::Mbr) => {
                Some(format!("it has an MBR, and {} images have a GPT", board.id))
            }
            (PartitionTable::Mbr, PartitionTable::Gpt) => {
                Some(format!("it has a GPT, and {} images have an MBR", board.id))
            }
            (PartitionTable::Gpt, PartitionTable::Gpt) => {
                let want = root_type(board.arch);
                (!self.partitions.iter().any(|p| p.type_guid == want)).then(|| {
                    let found: Vec<String> = self
                        .partitions
                        .iter()
                        .filter(|p| p.type_guid != TYPE_ESP)
                        .map(|p| p.type_guid.to_string())
                        .collect();
                    format!(
                        "its GPT has no {} root partition (type {want}); found types {}",
                        board.arch.debian(),
                        if found.is_empty() {
                            "none".to_string()
                        } else {
                            found.join(", ")
                        }
                    )
                })
            }
            (PartitionTable::Mbr, PartitionTable::Mbr) => {
                let pi = (1..=3).all(|n| has(MBR_TYPE_FAT_LBA, n)) && has(MBR_TYPE_EXTENDED_LBA, 4);
                (!pi).then(|| {
                    "its MBR does not have the Raspberry Pi layout (FAT partitions 1-3, extended partition 4)".to_string()
                })
            }
        }
    }

    /// The FAT partition a cloud-config goes on: the ESP of a GPT disk, the
    /// first FAT partition of an MBR disk (on the Raspberry Pi layout, the
    /// `autoboot` partition).
    pub fn boot_partition(&self) -> Option<Partition> {
        match self.kind {
            PartitionTable::Gpt => self.partitions.iter().find(|p| p.type_guid == TYPE_ESP),
            PartitionTable::Mbr => self
                .partitions
                .iter()
                .find(|p| matches!(p.mbr_type, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef)),
        }
        .copied()
    }
}

/// `X.img`, `X.img.zst` and `X.img.xz` share the block map `X.bmap`
/// (bmaptool's own `X.img.bmap` is found too).
pub fn bmap_beside(image: &Path) -> Option<PathBuf> {
    let name = image.file_name()?.to_string_lossy().into_owned();
    let stem = name
        .strip_suffix(".img.zst")
        .or_else(|| name.strip_suffix(".img.xz"))
        .or_else(|| name.strip_suffix(".img"))
        .or_else(|| name.strip_suffix(".zst"))
        .or_else(|| name.strip_suffix(".xz"))
        .unwrap_or(&name);
    [format!("{stem}.bmap"), format!("{stem}.img.bmap")]
        .into_iter()
        .map(|n| image.with_file_name(n))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.img");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[1; 4096], 0).unwrap();
        f.write_all_at(&[2; 8192], 8 << 20).unwrap();
        f.sync_all().unwrap();
        let r = data_ranges(&f, 16 << 20).unwrap();
        // File systems without holes give one range; the test's tmp has them.
        if r.len() > 1 {
            assert_eq!(r, vec![(0, 4096), (8 << 20, 8192)]);
        } else {
            assert_eq!(r, vec![(0, 16 << 20)]);
        }
    }

    #[test]
    fn mbr_without_signature_is_corrupt() {
        let head = vec![0u8; HEAD_BYTES];
        let e = read_table(&head, 1 << 20, None).unwrap_err();
        assert!(e.contains("no MBR boot signature (0x55AA)"), "{e}");
    }

    #[test]
    fn bmap_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-rpi4.bmap"), "").unwrap();
        for n in ["a-rpi4.img", "a-rpi4.img.xz", "a-rpi4.img.zst"] {
            assert_eq!(
                bmap_beside(&dir.path().join(n)),
                Some(dir.path().join("a-rpi4.bmap"))
            );
        }
        assert_eq!(bmap_beside(&dir.path().join("b.img")), None);
    }
}
