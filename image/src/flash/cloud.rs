//! Putting a cloud-config on a written card: `user-data` and `meta-data`
//! at the top of its boot FAT partition, written with the FAT code the
//! build uses, through a window onto the device.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Bytes `start..start + len` of a file or device as a stream of its own
/// (one partition of a disk).
#[derive(Debug)]
pub struct PartitionSlice<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> PartitionSlice<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> PartitionSlice<'a> {
        PartitionSlice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for PartitionSlice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(room) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartitionSlice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(room) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let put = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionSlice<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

/// Writes (or replaces) `files` at the top of the FAT file system in
/// `start..start + len` of `device`, then reads each back.
pub fn write_files(device: &File, start: u64, len: u64, files: &[(&str, &str)]) -> io::Result<()> {
    {
        let fs = fatfs::FileSystem::new(
            PartitionSlice::new(device, start, len),
            fatfs::FsOptions::new(),
        )?;
        for (name, text) in files {
            let mut f = fs.root_dir().create_file(name)?;
            f.truncate()?;
            f.write_all(text.as_bytes())?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    device.sync_all()?;
    for (name, text) in files {
        if read_file(device, start, len, name)? != text.as_bytes() {
            return Err(io::Error::other(format!(
                "{name} reads back different from what was written"
            )));
        }
    }
    Ok(())
}

/// Reads file `name` from the top of the FAT file system in `start..start + len` of `device`.
pub fn read_file(device: &File, start: u64, len: u64, name: &str) -> io::Result<Vec<u8>> {
    let fs = fatfs::FileSystem::new(
        PartitionSlice::new(device, start, len),
        fatfs::FsOptions::new(),
    )?;
    let mut out = Vec::new();
    fs.root_dir().open_file(name)?.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_in_the_partition_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let (start, len) = (1u64 << 20, 8u64 << 20);
        f.set_len(start + len + (1 << 20)).unwrap();
        f.write_all_at(&[0xaa; 512], 0).unwrap();
        f.write_all_at(&[0xbb; 512], start + len).unwrap();
        fatfs::format_volume(
            PartitionSlice::new(&f, start, len),
            fatfs::FormatVolumeOptions::new(),
        )
        .unwrap();
        write_files(
            &f,
            start,
            len,
            &[
                ("user-data", "#cloud-config\n"),
                ("meta-data", "instance-id: x\n"),
            ],
        )
        .unwrap();
        write_files(
            &f,
            start,
            len,
            &[("user-data", "#cloud-config\nhostname: b\n")],
        )
        .unwrap();
        assert_eq!(
            read_file(&f, start, len, "user-data").unwrap(),
            b"#cloud-config\nhostname: b\n"
        );
        assert_eq!(
            read_file(&f, start, len, "meta-data").unwrap(),
            b"instance-id: x\n"
        );
        let mut around = [0u8; 512];
        f.read_exact_at(&mut around, 0).unwrap();
        assert_eq!(around, [0xaa; 512]);
        f.read_exact_at(&mut around, start + len).unwrap();
        assert_eq!(around, [0xbb; 512]);
    }
}
