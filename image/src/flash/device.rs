//! The target of a flash: a block device (with the checks that keep the
//! running system and mounted file systems safe) or a regular file.
//!
//! What the host says is read from `/proc/self/mountinfo`, `/proc/swaps` and
//! `/sys` into plain values ([`Host`], [`Family`]); the decision
//! ([`refusals`]) is a pure function of them.

use nix::sys::stat::{major, makedev, minor, SFlag};
use std::path::{Path, PathBuf};

/// What DEVICE turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A block device, by device number.
    Block { rdev: u64 },
    /// A regular file (written like a disk, extended to the image's size).
    File,
    /// Nothing yet: a regular file is made.
    New,
}

/// Reads what `path` is. A missing path under `/dev` is an error (a typo
/// there would otherwise make a file in the device directory), and so is
/// anything that is neither a block device nor a regular file.
pub fn classify(path: &Path) -> Result<TargetKind, String> {
    match nix::sys::stat::stat(path) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFBLK {
                Ok(TargetKind::Block { rdev: st.st_rdev })
            } else if kind == SFlag::S_IFREG {
                Ok(TargetKind::File)
            } else if kind == SFlag::S_IFDIR {
                Err("is a directory, not a block device or file".into())
            } else {
                Err("is neither a block device nor a regular file".into())
            }
        }
        Err(nix::errno::Errno::ENOENT) => {
            if path.starts_with("/dev") {
                Err(
                    "does not exist (is the card or stick plugged in? `lsblk` lists block devices)"
                        .into(),
                )
            } else {
                Ok(TargetKind::New)
            }
        }
        Err(e) => Err(e.desc().to_string()),
    }
}

/// A block device and every device that shares its blocks: its partitions
/// (for a whole disk) and what is stacked on any of them (device mapper,
/// RAID), from `/sys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Kernel name of the device itself (`sdb`, `loop3`, `mmcblk0`).
    pub name: String,
    /// For a partition: the kernel name of its disk.
    pub disk_of_partition: Option<String>,
    /// The device first, then its partitions and holders: (kernel name, device number).
    pub members: Vec<(String, u64)>,
}

fn parse_dev(text: &str) -> Option<u64> {
    let (a, b) = text.trim().split_once(':')?;
    Some(makedev(a.parse().ok()?, b.parse().ok()?))
}

impl Family {
    /// Reads the family of device `rdev` from the sysfs mounted at `sys`.
    pub fn read(sys: &Path, rdev: u64) -> std::io::Result<Family> {
        let dir =
            std::fs::canonicalize(sys.join(format!("dev/block/{}:{}", major(rdev), minor(rdev))))?;
        let name_of = |p: &Path| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        let name = name_of(&dir);
        let is_partition = dir.join("partition").exists();
        let mut members = vec![(name.clone(), rdev)];
        if !is_partition {
            let mut parts: Vec<(String, u64)> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("partition").exists())
                .filter_map(|p| {
                    let dev = parse_dev(&std::fs::read_to_string(p.join("dev")).ok()?)?;
                    Some((name_of(&p), dev))
                })
                .collect();
            parts.sort();
            members.extend(parts);
        }
        // Holders (dm-crypt, LVM, RAID) of any member, and theirs.
        let mut i = 0;
        while i < members.len() {
            let holders = sys.join("class/block").join(&members[i].0).join("holders");
            if let Ok(entries) = std::fs::read_dir(&holders) {
                for e in entries.filter_map(|e| e.ok()) {
                    let h = e.file_name().to_string_lossy().into_owned();
                    if members.iter().any(|(n, _)| *n == h) {
                        continue;
                    }
                    let dev = std::fs::read_to_string(sys.join("class/block").join(&h).join("dev"))
                        .ok()
                        .and_then(|t| parse_dev(&t));
                    if let Some(dev) = dev {
                        members.push((h, dev));
                    }
                }
            }
            i += 1;
        }
        Ok(Family {
            name,
            disk_of_partition: is_partition.then(|| dir.parent().map(name_of)).flatten(),
            members,
        })
    }

    fn member(&self, dev: u64) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, d)| *d == dev)
            .map(|(n, _)| n.as_str())
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mounted file system's device number (field 3).
    pub dev: u64,
    pub mount_point: String,
    /// The mount source (`/dev/sdb1`, `tmpfs`, …).
    pub source: String,
    /// The source's device number, when the source is a block device.
    pub source_dev: Option<u64>,
}

/// One active swap area from `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub path: String,
    /// The device number of a swap partition, or of the file system holding a swap file.
    pub dev: Option<u64>,
}

/// The host's mounts and swap areas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub mounts: Vec<Mount>,
    pub swaps: Vec<Swap>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`; `rdev_of` gives the device number of a
/// block device path (a mount source).
pub fn parse_mountinfo(text: &str, rdev_of: impl Fn(&str) -> Option<u64>) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let dev = parse_dev(f.get(2)?)?;
            let mount_point = unescape(f.get(4)?);
            let source = unescape(right.split(' ').nth(1)?);
            let source_dev = source.starts_with('/').then(|| rdev_of(&source)).flatten();
            Some(Mount {
                dev,
                mount_point,
                source,
                source_dev,
            })
        })
        .collect()
}

/// Parses `/proc/swaps`; `dev_of` gives the device number of a swap
/// partition, or of the file system a swap file lives on.
pub fn parse_swaps(text: &str, dev_of: impl Fn(&str) -> Option<u64>) -> Vec<Swap> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let path = unescape(line.split_whitespace().next()?);
            let dev = dev_of(&path);
            Some(Swap { path, dev })
        })
        .collect()
}

impl Host {
    /// Reads this host's mounts and swap areas.
    pub fn read() -> std::io::Result<Host> {
        let rdev_of = |p: &str| {
            let st = nix::sys::stat::stat(p).ok()?;
            (SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFBLK)
                .then_some(st.st_rdev)
        };
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?, rdev_of);
        let swaps = match std::fs::read_to_string("/proc/swaps") {
            Ok(t) => parse_swaps(&t, |p| {
                let st = nix::sys::stat::stat(p).ok()?;
                Some(
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFBLK {
                        st.st_rdev
                    } else {
                        st.st_dev
                    },
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Host { mounts, swaps })
    }
}

/// Mount points that make a disk the running system's.
const SYSTEM_MOUNTS: [&str; 6] = ["/", "/boot", "/boot/efi", "/efi", "/usr", "/var"];

/// Why writing to a device would be a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It holds the running system: its root, boot or swap.
    System(String),
    /// One of its file systems is mounted.
    Mounted(String),
    /// It is a partition, not a whole disk.
    Partition { disk: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::System(what) => write!(f, "it holds the running system ({what})"),
            Refusal::Mounted(what) => write!(f, "it is in use ({what}); unmount it first"),
            Refusal::Partition { disk } => write!(
                f,
                "it is a partition of /dev/{disk}; an image goes on the whole disk"
            ),
        }
    }
}

/// Everything that speaks against writing to the device `family` describes.
pub fn refusals(family: &Family, host: &Host) -> Vec<Refusal> {
    let mut out = Vec::new();
    if let Some(disk) = &family.disk_of_partition {
        out.push(Refusal::Partition { disk: disk.clone() });
    }
    for m in &host.mounts {
        let on = family
            .member(m.dev)
            .or_else(|| m.source_dev.and_then(|d| family.member(d)));
        let Some(name) = on else { continue };
        let what = format!("/dev/{name} is mounted on {} ({})", m.mount_point, m.source);
        if SYSTEM_MOUNTS.contains(&m.mount_point.as_str()) {
            out.push(Refusal::System(what));
        } else {
            out.push(Refusal::Mounted(what));
        }
    }
    for s in &host.swaps {
        if let Some(name) = s.dev.and_then(|d| family.member(d)) {
            out.push(Refusal::System(format!(
                "swap {} is on /dev/{name}",
                s.path
            )));
        }
    }
    out
}

/// `vendor model, size` of a block device, for messages (`/dev/sdb (Generic
/// SD card, 31.9 GB)`); empty when sysfs has nothing to say.
pub fn describe(sys: &Path, name: &str) -> String {
    let dir = sys.join("class/block").join(name);
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let model = [
        read(dir.join("device/vendor")),
        read(dir.join("device/model")),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    let bytes = read(dir.join("size")).parse::<u64>().unwrap_or(0) * 512;
    match (model.is_empty(), bytes) {
        (true, 0) => String::new(),
        (true, b) => human_bytes(b),
        (false, 0) => model,
        (false, b) => format!("{model}, {}", human_bytes(b)),
    }
}

/// Sizes in binary units with one decimal, such as `29.7 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw
28 27 8:1 / /boot/efi rw,relatime - vfat /dev/sda1 rw
40 27 8:17 / /media/me/My\\040Card rw,nosuid - vfat /dev/sdb1 rw
41 27 0:45 / /mnt/pool rw - btrfs /dev/sdc1 rw
";

    fn family(name: &str, members: &[(&str, u64)], disk: Option<&str>) -> Family {
        Family {
            name: name.to_string(),
            disk_of_partition: disk.map(str::to_string),
            members: members.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
        }
    }

    fn host() -> Host {
        Host {
            mounts: parse_mountinfo(MOUNTINFO, |p| match p {
                "/dev/sdc1" => Some(makedev(8, 33)),
                _ => None,
            }),
            swaps: parse_swaps(
                "Filename\tType\tSize\tUsed\tPriority\n/dev/sdd2  partition\t1\t0\t-2\n",
                |p| (p == "/dev/sdd2").then_some(makedev(8, 50)),
            ),
        }
    }

    #[test]
    fn mountinfo_is_read_with_escapes() {
        let m = parse_mountinfo(MOUNTINFO, |_| None);
        assert_eq!(m.len(), 5);
        assert_eq!(m[3].mount_point, "/media/me/My Card");
        assert_eq!(m[3].dev, makedev(8, 17));
        assert_eq!(m[3].source, "/dev/sdb1");
    }

    #[test]
    fn the_system_disk_is_refused() {
        let f = family(
            "sda",
            &[
                ("sda", makedev(8, 0)),
                ("sda1", makedev(8, 1)),
                ("sda2", makedev(8, 2)),
            ],
            None,
        );
        let r = refusals(&f, &host());
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|r| matches!(r, Refusal::System(_))), "{r:?}");
        assert!(
            r[0].to_string()
                .contains("/dev/sda2 is mounted on / (/dev/sda2)"),
            "{}",
            r[0]
        );
    }

    #[test]
    fn a_mounted_card_is_refused_and_an_idle_one_is_not() {
        let card = family(
            "sdb",
            &[("sdb", makedev(8, 16)), ("sdb1", makedev(8, 17))],
            None,
        );
        let r = refusals(&card, &host());
        assert_eq!(
            r,
            vec![Refusal::Mounted(
                "/dev/sdb1 is mounted on /media/me/My Card (/dev/sdb1)".into()
            )]
        );
        let idle = family("sde", &[("sde", makedev(8, 64))], None);
        assert!(refusals(&idle, &host()).is_empty());
    }

    #[test]
    fn mounts_are_found_by_their_source_too() {
        // btrfs reports an anonymous device number; the source names the disk.
        let f = family(
            "sdc",
            &[("sdc", makedev(8, 32)), ("sdc1", makedev(8, 33))],
            None,
        );
        assert!(matches!(&refusals(&f, &host())[..], [Refusal::Mounted(_)]));
    }

    #[test]
    fn swap_and_stacked_devices_count() {
        let f = family(
            "sdd",
            &[("sdd", makedev(8, 48)), ("sdd2", makedev(8, 50))],
            None,
        );
        assert_eq!(
            refusals(&f, &host()),
            vec![Refusal::System("swap /dev/sdd2 is on /dev/sdd2".into())]
        );
        // Root on dm-0, which is stacked on sdf3.
        let mut h = host();
        h.mounts.push(Mount {
            dev: makedev(254, 0),
            mount_point: "/".into(),
            source: "/dev/mapper/root".into(),
            source_dev: None,
        });
        let f = family(
            "sdf",
            &[
                ("sdf", makedev(8, 80)),
                ("sdf3", makedev(8, 83)),
                ("dm-0", makedev(254, 0)),
            ],
            None,
        );
        assert!(matches!(&refusals(&f, &h)[..], [Refusal::System(_)]));
    }

    #[test]
    fn a_partition_is_refused() {
        let f = family("sde1", &[("sde1", makedev(8, 65))], Some("sde"));
        assert_eq!(
            refusals(&f, &Host::default())[0].to_string(),
            "it is a partition of /dev/sde; an image goes on the whole disk"
        );
    }

    #[test]
    fn this_hosts_root_disk_is_refused() {
        // Reads only: the disk that holds `/`, found from its mount.
        let host = Host::read().unwrap();
        let root = host
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == "/")
            .unwrap();
        let Some(dev) = [Some(root.dev), root.source_dev]
            .into_iter()
            .flatten()
            .find(|d| Path::new(&format!("/sys/dev/block/{}:{}", major(*d), minor(*d))).exists())
        else {
            eprintln!(
                "/ is not on a block device here ({}): nothing to check",
                root.source
            );
            return;
        };
        let family = Family::read(Path::new("/sys"), dev).unwrap();
        let refused = refusals(&family, &host);
        assert!(
            refused
                .iter()
                .any(|r| matches!(r, Refusal::System(w) if w.contains("is mounted on / "))),
            "{refused:?}"
        );
        // And its whole disk, when / is on a partition.
        if let Some(disk) = &family.disk_of_partition {
            let dev = parse_dev(
                &std::fs::read_to_string(format!("/sys/class/block/{disk}/dev")).unwrap(),
            )
            .unwrap();
            let refused = refusals(&Family::read(Path::new("/sys"), dev).unwrap(), &host);
            assert!(
                refused.iter().any(|r| matches!(r, Refusal::System(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(31_914_983_424), "29.7 GiB");
    }
}
