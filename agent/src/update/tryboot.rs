//! The Raspberry Pi boot backend: the firmware's tryboot A/B.
//!
//! Where the device stands comes from the firmware
//! (`/proc/device-tree/chosen/bootloader/{tryboot,partition}`) and from
//! `autoboot.txt` on partition 1, mounted at [`AUTOBOOT_MOUNT`]. A trial of
//! the other slot is armed by the reboot itself (`reboot "0 tryboot"`); a
//! good trial is committed by replacing `autoboot.txt` (a new file written
//! and synced, then renamed over the old one). The decisions are the pure
//! functions of [`basalt_formats::tryboot`]; this module only reads and
//! writes.

use basalt_formats::tryboot::{
    self, Autoboot, AutobootError, CommitAction, FirmwareBoot, TrybootState, AUTOBOOT_TXT,
    TRYBOOT_REBOOT_ARG,
};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the firmware reports the boot.
pub const FIRMWARE_DT: &str = "/proc/device-tree/chosen/bootloader";
/// Where the agent mounts the `autoboot.txt` partition.
pub const AUTOBOOT_MOUNT: &str = "/run/basalt/autoboot";

#[derive(Debug, Clone)]
pub struct Tryboot {
    /// The `autoboot.txt` partition's block device.
    pub device: PathBuf,
    pub mount: PathBuf,
    pub firmware_dir: PathBuf,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// `autoboot.txt` now commits this slot.
    Now(basalt_formats::Slot),
    /// The running slot already was the committed one.
    Already,
}

impl Tryboot {
    pub fn new(device: PathBuf) -> Tryboot {
        Tryboot {
            device,
            mount: PathBuf::from(AUTOBOOT_MOUNT),
            firmware_dir: PathBuf::from(FIRMWARE_DT),
        }
    }

    /// What the firmware reported for this boot.
    pub fn firmware(&self) -> io::Result<FirmwareBoot> {
        read_firmware(&self.firmware_dir)
    }

    /// Mounts the `autoboot.txt` partition unless it is mounted already.
    pub fn ensure_mounted(&self) -> io::Result<()> {
        if self.mount.join(AUTOBOOT_TXT).exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.mount)?;
        nix::mount::mount(
            Some(self.device.as_path()),
            self.mount.as_path(),
            Some("vfat"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("flush"),
        )
        .map_err(|e| {
            io::Error::other(format!(
                "mounting {} (the autoboot.txt partition) on {}: {e}",
                self.device.display(),
                self.mount.display()
            ))
        })
    }

    /// `autoboot.txt` as it is on the partition, parsed.
    pub fn autoboot(&self) -> io::Result<Result<Autoboot, AutobootError>> {
        self.ensure_mounted()?;
        let p = self.mount.join(AUTOBOOT_TXT);
        let bytes = std::fs::read(&p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        Ok(Autoboot::parse(&String::from_utf8_lossy(&bytes)))
    }

    pub fn state(&self) -> io::Result<TrybootState> {
        Ok(tryboot::state(self.firmware()?, &self.autoboot()?))
    }

    /// Commits the running slot after a good boot (see [`tryboot::commit`]).
    pub fn commit(&self) -> io::Result<Committed> {
        let state = self.state()?;
        match tryboot::commit(&state) {
            CommitAction::Nothing => Ok(Committed::Already),
            CommitAction::Refuse(why) => Err(io::Error::other(why)),
            CommitAction::Write(text) => {
                replace_file(&self.mount, AUTOBOOT_TXT, text.as_bytes())?;
                match state {
                    TrybootState::Trial { slot } => Ok(Committed::Now(slot)),
                    _ => unreachable!("only a trial is committed by a write"),
                }
            }
        }
    }
}

/// What the firmware reported for this boot in `dir` ([`FIRMWARE_DT`]).
pub fn read_firmware(dir: &Path) -> io::Result<FirmwareBoot> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let (t, p) = (read("tryboot")?, read("partition")?);
    FirmwareBoot::from_cells(&t, &p).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: tryboot and partition are not 32-bit cells",
                dir.display()
            ),
        )
    })
}

/// Where the firmware stands, as the loader entries [`super::on_boot`]
/// reads on UEFI boards: the committed slot is a blessed entry; a slot on
/// trial is an entry still counting; the other slot has none, so a slot
/// armed for a trial that is not running now did not come up healthy (its
/// trial failed, crashed, or its reboot was cut before the firmware started
/// it: the device is back on the committed slot in each case).
pub fn as_entries(state: &TrybootState) -> Vec<basalt_formats::entry::EntryName> {
    use basalt_formats::entry::{Counter, EntryName};
    match *state {
        TrybootState::Committed { slot } => vec![EntryName {
            slot,
            counter: None,
        }],
        // On trial; or running while autoboot.txt already commits the
        // other slot, so on its way out: neither good nor failed yet.
        TrybootState::Trial { slot } | TrybootState::Mismatch { running: slot, .. } => vec![
            EntryName {
                slot,
                counter: Some(Counter { left: 1, done: 1 }),
            },
            EntryName {
                slot: slot.other(),
                counter: None,
            },
        ],
        TrybootState::Corrupt { .. } => Vec::new(),
    }
}

/// Replaces `dir/name` with `bytes`: a new file written and synced beside
/// it, renamed over it, synced under its new name, and the directory synced. A power cut leaves the old
/// file or the new one; the firmware never sees a half-written file under
/// the name it reads.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.new"));
    let target = dir.join(name);
    let named = |p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(named(&tmp))?;
        f.write_all(bytes).map_err(named(&tmp))?;
        f.sync_all().map_err(named(&tmp))?;
    }
    std::fs::rename(&tmp, &target).map_err(named(&target))?;
    // vfat writes the new directory entry's first cluster and size only
    // when the file's inode is written back (see `esp::rename_synced`).
    std::fs::File::open(&target)
        .and_then(|f| f.sync_all())
        .map_err(named(&target))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(named(dir))
}

/// Reboots into a trial of the other slot: `systemctl reboot "0 tryboot"`.
pub fn reboot_into_trial() -> Result<(), String> {
    let status = std::process::Command::new("systemctl")
        .args(["reboot", TRYBOOT_REBOOT_ARG])
        .status()
        .map_err(|e| format!("systemctl reboot {TRYBOOT_REBOOT_ARG:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("systemctl reboot {TRYBOOT_REBOOT_ARG:?}: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::Slot;

    fn fixture(tryboot: u32, partition: u32, autoboot: &str) -> (tempfile::TempDir, Tryboot) {
        let dir = tempfile::tempdir().unwrap();
        let fw = dir.path().join("fw");
        let mount = dir.path().join("autoboot");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(fw.join("tryboot"), tryboot.to_be_bytes()).unwrap();
        std::fs::write(fw.join("partition"), partition.to_be_bytes()).unwrap();
        std::fs::write(mount.join(AUTOBOOT_TXT), autoboot).unwrap();
        let t = Tryboot {
            device: PathBuf::from("/dev/null"),
            mount,
            firmware_dir: fw,
        };
        (dir, t)
    }

    const A: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

    #[test]
    fn a_good_trial_is_committed_by_replacing_the_file() {
        let (_d, t) = fixture(1, 3, A);
        assert_eq!(t.state().unwrap(), TrybootState::Trial { slot: Slot::B });
        assert_eq!(t.commit().unwrap(), Committed::Now(Slot::B));
        let text = std::fs::read_to_string(t.mount.join(AUTOBOOT_TXT)).unwrap();
        assert_eq!(Autoboot::parse(&text).unwrap().committed, Slot::B);
        assert!(!t.mount.join("autoboot.txt.new").exists());
    }

    #[test]
    fn the_firmware_state_reads_as_loader_entries() {
        use crate::update::{on_boot, SlotRecord, UpdateState};
        let trying = |v: &str| SlotRecord::Trying { version: v.into() };
        let run = |state: TrybootState, running: Slot, version: &str| {
            let mut st = UpdateState::default();
            st.set(Slot::B, trying("0.2.0"));
            on_boot(st, running, version, &as_entries(&state), 5)
        };
        // On trial: B stays on trial, A is left alone.
        let (st, events) = run(TrybootState::Trial { slot: Slot::B }, Slot::B, "0.2.0");
        assert_eq!(st.get(Slot::B), Some(&trying("0.2.0")));
        assert_eq!(st.get(Slot::A), None);
        assert!(events.is_empty(), "{events:?}");
        // Committed after the trial: B is installed.
        let (st, events) = run(TrybootState::Committed { slot: Slot::B }, Slot::B, "0.2.0");
        assert_eq!(
            st.get(Slot::B),
            Some(&SlotRecord::Installed {
                version: "0.2.0".into()
            })
        );
        assert_eq!(events, ["update to 0.2.0 committed in slot b"]);
        // Back on A: the trial did not come up healthy.
        let (st, events) = run(TrybootState::Committed { slot: Slot::A }, Slot::A, "0.1.0");
        assert!(matches!(st.get(Slot::B), Some(SlotRecord::Bad { .. })));
        assert_eq!(st.failed.len(), 1);
        assert!(events[0].contains("did not come up healthy"), "{events:?}");
        assert!(as_entries(&TrybootState::Corrupt {
            running: None,
            error: "x".into()
        })
        .is_empty());
    }

    #[test]
    fn a_committed_boot_changes_nothing() {
        let (_d, t) = fixture(0, 2, A);
        assert_eq!(t.commit().unwrap(), Committed::Already);
        assert_eq!(
            std::fs::read_to_string(t.mount.join(AUTOBOOT_TXT)).unwrap(),
            A
        );
    }

    #[test]
    fn a_corrupt_file_is_reported_and_left_alone() {
        let corrupt = "[all]\ntryboot_a_b=1\nboot_par";
        let (_d, t) = fixture(1, 3, corrupt);
        assert!(matches!(t.state().unwrap(), TrybootState::Corrupt { .. }));
        let e = t.commit().unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("line 3"), "{e}");
        assert_eq!(
            std::fs::read_to_string(t.mount.join(AUTOBOOT_TXT)).unwrap(),
            corrupt
        );
    }

    #[test]
    fn missing_firmware_report_is_named() {
        let (_d, mut t) = fixture(0, 2, A);
        t.firmware_dir = t.firmware_dir.join("nowhere");
        let e = t.state().unwrap_err().to_string();
        assert!(e.contains("nowhere/tryboot"), "{e}");
    }
}
