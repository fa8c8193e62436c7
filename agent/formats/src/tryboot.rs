//! Raspberry Pi A/B boot with the firmware's tryboot mechanism.
//!
//! Partition 1 holds only `autoboot.txt`:
//!
//! ```text
//! [all]
//! tryboot_a_b=1
//! boot_partition=2
//! [tryboot]
//! boot_partition=3
//! ```
//!
//! A normal boot starts the committed slot's partition (`[all]`); a boot
//! after `reboot "0 tryboot"` starts the `[tryboot]` one, and the firmware
//! clears the flag before it boots, so any later reboot returns to the
//! committed slot. Committing a good trial is writing the file again with
//! the slots swapped. The firmware reports what it did in
//! `/proc/device-tree/chosen/bootloader/{tryboot,partition}`.
//!
//! Everything here is pure: rendering, parsing, and the decisions.

use crate::layout::{rpi_boot_partition, rpi_slot_of_boot_partition};
use crate::slot::Slot;

pub const AUTOBOOT_TXT: &str = "autoboot.txt";
/// The reboot argument that arms a trial boot of the `[tryboot]` partition.
pub const TRYBOOT_REBOOT_ARG: &str = "0 tryboot";

/// What `autoboot.txt` says: the committed slot boots normally, the other on tryboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoboot {
    pub committed: Slot,
}

impl Autoboot {
    /// The slot a tryboot starts.
    pub fn trial(self) -> Slot {
        self.committed.other()
    }

    pub fn render(self) -> String {
        format!(
            "[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            rpi_boot_partition(self.committed),
            rpi_boot_partition(self.trial())
        )
    }

    /// Parses `autoboot.txt` strictly: the two sections basalt writes, with
    /// `tryboot_a_b=1` and one slot partition each, the slots different.
    /// Comments and blank lines are allowed; anything else is an error that
    /// says what is wrong, for the operator.
    pub fn parse(text: &str) -> Result<Autoboot, AutobootError> {
        let mut section: Option<&str> = None;
        let mut a_b = None;
        let mut all = None;
        let mut tryboot = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                match name {
                    "all" | "tryboot" => {
                        section = Some(if name == "all" { "all" } else { "tryboot" })
                    }
                    _ => {
                        return Err(AutobootError::Line {
                            line: line_no,
                            message: format!("unknown section [{name}]"),
                        })
                    }
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(AutobootError::Line {
                    line: line_no,
                    message: format!("{line:?} is not key=value"),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |message: String| AutobootError::Line {
                line: line_no,
                message,
            };
            let partition = || -> Result<Slot, AutobootError> {
                value
                    .parse::<u32>()
                    .ok()
                    .and_then(rpi_slot_of_boot_partition)
                    .ok_or_else(|| {
                        bad(format!(
                            "boot_partition={value}: expected 2 (slot a) or 3 (slot b)"
                        ))
                    })
            };
            let seen = |s: &Option<Slot>| {
                s.is_some()
                    .then(|| bad("boot_partition is set twice in one section".into()))
            };
            match (section, key) {
                (Some("all"), "tryboot_a_b") => {
                    if value != "1" {
                        return Err(bad(format!("tryboot_a_b={value}: expected 1")));
                    }
                    a_b = Some(());
                }
                (Some("all"), "boot_partition") => {
                    if let Some(e) = seen(&all) {
                        return Err(e);
                    }
                    all = Some(partition()?);
                }
                (Some("tryboot"), "boot_partition") => {
                    if let Some(e) = seen(&tryboot) {
                        return Err(e);
                    }
                    tryboot = Some(partition()?);
                }
                (None, _) => return Err(bad(format!("{key} before any [section]"))),
                (Some(s), k) => return Err(bad(format!("unexpected {k} in [{s}]"))),
            }
        }
        if a_b.is_none() {
            return Err(AutobootError::Missing("tryboot_a_b=1 in [all]"));
        }
        let committed = all.ok_or(AutobootError::Missing("boot_partition in [all]"))?;
        let trial = tryboot.ok_or(AutobootError::Missing("boot_partition in [tryboot]"))?;
        if trial == committed {
            return Err(AutobootError::SameSlot(committed));
        }
        Ok(Autoboot { committed })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutobootError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("[all] and [tryboot] both boot slot {0}: a trial would have nothing to return to")]
    SameSlot(Slot),
}

/// What the firmware told the kernel in `/chosen/bootloader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareBoot {
    /// This boot is a tryboot.
    pub tryboot: bool,
    /// The partition the firmware booted from.
    pub partition: u32,
}

impl FirmwareBoot {
    /// Decodes the two properties, each a big-endian 32-bit cell.
    pub fn from_cells(tryboot: &[u8], partition: &[u8]) -> Option<FirmwareBoot> {
        let cell =
            |b: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?)) };
        Some(FirmwareBoot {
            tryboot: cell(tryboot)? != 0,
            partition: cell(partition)?,
        })
    }

    /// The slot whose boot partition the firmware started.
    pub fn slot(self) -> Option<Slot> {
        rpi_slot_of_boot_partition(self.partition)
    }
}

/// Where a Pi stands, from the firmware's report and `autoboot.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrybootState {
    /// A normal boot of the committed slot.
    Committed { slot: Slot },
    /// A trial of `slot`; the committed slot is the other one.
    Trial { slot: Slot },
    /// A normal boot of a slot `autoboot.txt` does not name as committed:
    /// the file changed after this boot started (a commit of this slot is
    /// pending a reboot, or the other slot was committed).
    Mismatch { running: Slot, committed: Slot },
    /// `autoboot.txt` cannot be read as basalt writes it: reported, never rewritten.
    Corrupt {
        running: Option<Slot>,
        error: String,
    },
}

pub fn state(fw: FirmwareBoot, autoboot: &Result<Autoboot, AutobootError>) -> TrybootState {
    let running = fw.slot();
    match (autoboot, running) {
        (Err(e), _) => TrybootState::Corrupt {
            running,
            error: e.to_string(),
        },
        (Ok(_), None) => TrybootState::Corrupt {
            running,
            error: format!(
                "the firmware booted partition {}, which is not a basalt boot slot",
                fw.partition
            ),
        },
        (Ok(a), Some(slot)) if fw.tryboot => {
            if a.trial() == slot {
                TrybootState::Trial { slot }
            } else {
                // The trial was committed since this boot started: the file
                // names the running slot as the committed one now.
                TrybootState::Committed { slot }
            }
        }
        (Ok(a), Some(slot)) if a.committed == slot => TrybootState::Committed { slot },
        (Ok(a), Some(slot)) => TrybootState::Mismatch {
            running: slot,
            committed: a.committed,
        },
    }
}

/// What committing the running slot does to `autoboot.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitAction {
    /// Write this text (atomically) in place of the file.
    Write(String),
    /// The running slot is already the committed one.
    Nothing,
    /// Refused: the file is corrupt or the boot is not what basalt arms.
    Refuse(String),
}

/// Committing the running slot after a good boot. A corrupt `autoboot.txt`
/// is never rewritten here: the firmware's behaviour with it is unknown,
/// and a file basalt did not write may be an operator's.
pub fn commit(state: &TrybootState) -> CommitAction {
    match state {
        TrybootState::Committed { .. } => CommitAction::Nothing,
        TrybootState::Trial { slot } => CommitAction::Write(Autoboot { committed: *slot }.render()),
        TrybootState::Mismatch { running, committed } => CommitAction::Refuse(format!(
            "slot {running} is running but autoboot.txt commits slot {committed}; reboot first"
        )),
        TrybootState::Corrupt { error, .. } => {
            CommitAction::Refuse(format!("autoboot.txt is corrupt ({error}); left as it is"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

    fn fw(tryboot: bool, partition: u32) -> FirmwareBoot {
        FirmwareBoot { tryboot, partition }
    }

    #[test]
    fn render_golden_and_round_trip() {
        assert_eq!(Autoboot { committed: Slot::A }.render(), A);
        for s in Slot::ALL {
            let a = Autoboot { committed: s };
            assert_eq!(Autoboot::parse(&a.render()), Ok(a));
        }
        let with_comments = format!("# written by basalt\n\n{A}");
        assert_eq!(Autoboot::parse(&with_comments).unwrap().committed, Slot::A);
    }

    #[test]
    fn corrupt_files_are_rejected_with_a_reason() {
        let cases = [
            ("", "tryboot_a_b=1 in [all] is missing"),
            ("\u{0}\u{0}garbage", "line 1"),
            ("[all]\ntryboot_a_b=0\nboot_partition=2\n", "expected 1"),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=5\n[tryboot]\nboot_partition=3\n",
                "boot_partition=5",
            ),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=2\n",
                "boot_partition in [tryboot] is missing",
            ),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n",
                "both boot slot a",
            ),
            ("[pi4]\nboot_partition=2\n", "unknown section [pi4]"),
            ("boot_partition=2\n", "before any [section]"),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=2\nboot_partition=3\n",
                "set twice",
            ),
            // A truncated write: the [tryboot] section is cut off.
            ("[all]\ntryboot_a_b=1\nboot_partition=3\n[tryb", "line 4"),
        ];
        for (text, want) in cases {
            let e = Autoboot::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn firmware_cells() {
        let b = FirmwareBoot::from_cells(&[0, 0, 0, 1], &[0, 0, 0, 3]).unwrap();
        assert_eq!(b, fw(true, 3));
        assert_eq!(b.slot(), Some(Slot::B));
        assert_eq!(FirmwareBoot::from_cells(&[0, 0], &[0, 0, 0, 3]), None);
    }

    #[test]
    fn states_and_commit_decisions() {
        let a = Ok(Autoboot { committed: Slot::A });
        assert_eq!(
            state(fw(false, 2), &a),
            TrybootState::Committed { slot: Slot::A }
        );
        assert_eq!(commit(&state(fw(false, 2), &a)), CommitAction::Nothing);
        // A trial of B commits by swapping the slots.
        let t = state(fw(true, 3), &a);
        assert_eq!(t, TrybootState::Trial { slot: Slot::B });
        assert_eq!(
            commit(&t),
            CommitAction::Write(Autoboot { committed: Slot::B }.render())
        );
        // After the commit, until the next reboot, the firmware still reports
        // tryboot: the slot counts as committed, and committing again does nothing.
        let b = Ok(Autoboot { committed: Slot::B });
        assert_eq!(
            state(fw(true, 3), &b),
            TrybootState::Committed { slot: Slot::B }
        );
        assert_eq!(commit(&state(fw(true, 3), &b)), CommitAction::Nothing);
        // A normal boot of the uncommitted slot is not committed behind the operator's back.
        let m = state(fw(false, 3), &a);
        assert!(matches!(commit(&m), CommitAction::Refuse(_)), "{m:?}");
        // Corrupt: reported, never rewritten.
        let bad = Autoboot::parse("[all]\ntryboot_a_b=1\n");
        let c = state(fw(true, 3), &bad);
        assert!(matches!(
            c,
            TrybootState::Corrupt {
                running: Some(Slot::B),
                ..
            }
        ));
        match commit(&c) {
            CommitAction::Refuse(m) => assert!(m.contains("corrupt"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Booted from a partition that is no slot.
        assert!(matches!(
            state(fw(false, 1), &a),
            TrybootState::Corrupt { running: None, .. }
        ));
    }
}
