//! The EFI System Partition: systemd-boot, and per slot a kernel, an initrd
//! and a loader entry with a boot counter. Written with a FAT implementation
//! in user space (no mounts); every timestamp is the FAT epoch, so the same
//! files give the same bytes.

use basalt_formats::{Arch, Slot};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// Tries a freshly written slot gets before systemd-boot gives up on it.
pub const BOOT_TRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ESP ({size} bytes) is too small for its {needed} bytes of files; raise sizes.esp in the spec")]
    TooSmall { size: u64, needed: u64 },
}

/// One slot's boot files.
#[derive(Debug, Clone)]
pub struct SlotBoot {
    pub slot: Slot,
    /// The `version` line of the entry: sorts newest first in systemd-boot's menu.
    pub version: String,
    pub title: String,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub cmdline: String,
}

/// The loader entry file name of a slot with `tries` boot attempts left.
pub fn entry_file_name(slot: Slot, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("basalt-{slot}+{n}.conf"),
        None => format!("basalt-{slot}.conf"),
    }
}

/// The text of a slot's loader entry (Boot Loader Specification type #1).
pub fn entry_text(s: &SlotBoot) -> String {
    format!(
        "title {}\nsort-key basalt\nversion {}\nlinux /basalt/{slot}/vmlinuz\ninitrd /basalt/{slot}/initrd\noptions {}\n",
        s.title,
        s.version,
        s.cmdline,
        slot = s.slot
    )
}

/// `loader.conf`: no menu wait, no editing of the kernel command line.
pub const LOADER_CONF: &str = "timeout 0\neditor no\nconsole-mode keep\n";

/// Every timestamp in the ESP: the build's `SOURCE_DATE_EPOCH`, as a FAT date.
///
/// It must be a real date: the UEFI FAT driver refuses to rename a file
/// (systemd-boot's boot counting does that) whose times are not.
#[derive(Debug)]
pub(crate) struct FixedTime(pub(crate) fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// Converts UNIX time to a FAT date and time (UTC), clamped to FAT's 1980–2107.
pub fn fat_time(epoch: u64) -> fatfs::DateTime {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    let (year, month, day, secs) = match year {
        y if y < 1980 => (1980, 1, 1, 0),
        y if y > 2107 => (2107, 12, 31, 86399),
        y => (y, month, day, secs),
    };
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Writes the ESP image of `size` bytes to `out`, every file dated `epoch`.
#[allow(clippy::too_many_arguments)]
pub fn write(
    out: &Path,
    size: u64,
    arch: Arch,
    systemd_boot: &[u8],
    slots: &[SlotBoot],
    volume_id: u32,
    epoch: u64,
) -> Result<(), EspError> {
    let io = |source| EspError::Io {
        path: out.to_path_buf(),
        source,
    };
    let needed: u64 = systemd_boot.len() as u64 * 2
        + slots
            .iter()
            .map(|s| (s.kernel.len() + s.initrd.len()) as u64)
            .sum::<u64>();
    // FAT tables and directories need room too.
    if needed + size / 16 > size {
        return Err(EspError::TooSmall { size, needed });
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io)?;
    f.set_len(size).map_err(io)?;
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )
    .map_err(io)?;
    f.rewind().map_err(io)?;
    {
        let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new().time_provider(time))
            .map_err(io)?;
        let root = fs.root_dir();
        let boot_name = format!("BOOT{}.EFI", arch.efi_suffix().to_uppercase());
        let sd_name = format!("systemd-boot{}.efi", arch.efi_suffix());
        for d in [
            "EFI",
            "EFI/BOOT",
            "EFI/systemd",
            "loader",
            "loader/entries",
            "basalt",
        ] {
            root.create_dir(d).map_err(io)?;
        }
        let put = |path: &str, bytes: &[u8]| -> std::io::Result<()> {
            let mut file = root.create_file(path)?;
            file.truncate()?;
            file.write_all(bytes)?;
            file.flush()
        };
        put(&format!("EFI/BOOT/{boot_name}"), systemd_boot).map_err(io)?;
        put(&format!("EFI/systemd/{sd_name}"), systemd_boot).map_err(io)?;
        put("loader/loader.conf", LOADER_CONF.as_bytes()).map_err(io)?;
        for s in slots {
            root.create_dir(&format!("basalt/{}", s.slot)).map_err(io)?;
            put(&format!("basalt/{}/vmlinuz", s.slot), &s.kernel).map_err(io)?;
            put(&format!("basalt/{}/initrd", s.slot), &s.initrd).map_err(io)?;
            put(
                &format!(
                    "loader/entries/{}",
                    entry_file_name(s.slot, Some(BOOT_TRIES))
                ),
                entry_text(s).as_bytes(),
            )
            .map_err(io)?;
        }
        drop(root);
        fs.unmount().map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(s: Slot, version: &str) -> SlotBoot {
        SlotBoot {
            slot: s,
            version: version.into(),
            title: "basalt-appliance 1.0.0".into(),
            kernel: vec![1; 1000],
            initrd: vec![2; 500],
            cmdline: format!("basalt.slot={s} console=ttyS0,115200"),
        }
    }

    #[test]
    fn entry_golden() {
        assert_eq!(entry_file_name(Slot::A, Some(3)), "basalt-a+3.conf");
        assert_eq!(entry_file_name(Slot::B, None), "basalt-b.conf");
        assert_eq!(
            entry_text(&slot(Slot::A, "1.0.0")),
            "title basalt-appliance 1.0.0\nsort-key basalt\nversion 1.0.0\nlinux /basalt/a/vmlinuz\ninitrd /basalt/a/initrd\noptions basalt.slot=a console=ttyS0,115200\n"
        );
    }

    #[test]
    fn esp_holds_the_files_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let slots = [slot(Slot::A, "1.0.0"), slot(Slot::B, "1.0.0~spare")];
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        write(
            &a,
            64 << 20,
            Arch::Amd64,
            b"MZ-efi",
            &slots,
            7,
            1_700_000_000,
        )
        .unwrap();
        write(
            &b,
            64 << 20,
            Arch::Amd64,
            b"MZ-efi",
            &slots,
            7,
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut f = std::fs::File::open(&a).unwrap();
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
        let mut names: Vec<String> = fs
            .root_dir()
            .open_dir("loader/entries")
            .unwrap()
            .iter()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        assert_eq!(names, vec!["basalt-a+3.conf", "basalt-b+3.conf"]);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "MZ-efi");
    }

    #[test]
    fn fat_dates_are_real_dates() {
        let t = fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = fat_time(951_782_400); // 2000-02-29
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        let t = fat_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day), (1980, 1, 1));
    }

    #[test]
    fn too_small_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = slot(Slot::A, "1");
        s.kernel = vec![0; 70 << 20];
        let e = write(
            &dir.path().join("x"),
            64 << 20,
            Arch::Amd64,
            b"x",
            &[s],
            1,
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("raise sizes.esp"), "{e}");
    }
}
