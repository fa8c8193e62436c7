//! The boot loader's side of an update on UEFI boards: loader entries and
//! per-slot kernels on the ESP (mounted at `/efi` by systemd), written so
//! that a power cut at any moment leaves a bootable set of entries: every
//! file is synced, and every rename is followed by a sync of the renamed
//! file and then of its directory ([`rename_synced`]).

use basalt_formats::entry::{Counter, EntryName};
use basalt_formats::Slot;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Esp {
    pub root: PathBuf,
}

impl Default for Esp {
    fn default() -> Self {
        Esp {
            root: PathBuf::from("/efi"),
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Renames a file on the ESP so that the new name survives a power cut.
///
/// Linux's vfat makes the new directory entry with no first cluster and a
/// size of 0, and fills both in only when the file's inode is written
/// back; syncing the directory does not write it. A power cut after a
/// rename and a directory sync alone left `basalt-b+3.conf` empty on disk,
/// which systemd-boot skips (and a promoted `vmlinuz` would have been
/// empty, or pointing at the old kernel's freed clusters). So the file is
/// synced under its new name first, then the directory, which drops the
/// old entry.
fn rename_synced(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("renaming {} to {}: {e}", from.display(), to.display()),
        )
    })?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", to.display())))?;
    let dir = to.parent().unwrap_or(Path::new("/"));
    sync_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", dir.display())))
}

impl Esp {
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join("loader/entries")
    }

    /// basalt's entries, by slot.
    pub fn entries(&self) -> io::Result<Vec<EntryName>> {
        let dir = self.entries_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
        {
            if let Some(n) = EntryName::parse(&e?.file_name().to_string_lossy()) {
                out.push(n);
            }
        }
        out.sort_by_key(|n| (n.slot, n.to_string()));
        Ok(out)
    }

    pub fn entry(&self, slot: Slot) -> io::Result<Option<EntryName>> {
        Ok(self.entries()?.into_iter().find(|e| e.slot == slot))
    }

    /// The text of a slot's entry.
    pub fn read_entry(&self, name: &EntryName) -> io::Result<String> {
        std::fs::read_to_string(self.entries_dir().join(name.to_string()))
    }

    /// Takes a slot out of the boot menu.
    pub fn remove_entries(&self, slot: Slot) -> io::Result<()> {
        for e in self.entries()?.into_iter().filter(|e| e.slot == slot) {
            std::fs::remove_file(self.entries_dir().join(e.to_string()))?;
        }
        sync_dir(&self.entries_dir())
    }

    /// Writes `basalt-<slot>+<tries>.conf` through a temporary file.
    pub fn write_entry(&self, slot: Slot, tries: u32, text: &str) -> io::Result<()> {
        let dir = self.entries_dir();
        let tmp = dir.join(format!(".basalt-{slot}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        let name = EntryName {
            slot,
            counter: Some(Counter {
                left: tries,
                done: 0,
            }),
        };
        rename_synced(&tmp, &dir.join(name.to_string()))
    }

    /// Streams a boot file of `slot` into `basalt/<slot>/<file>.new`.
    ///
    /// The directory is synced as well as the file: on FAT a file's fsync
    /// does not write its new directory entry, and `stage` records the slot
    /// as staged right after this, so a power cut must not leave the state
    /// saying staged while `apply` finds no `.new` file and arms the old kernel.
    pub fn write_new(&self, slot: Slot, file: &str, mut from: impl Read) -> io::Result<u64> {
        let dir = self.root.join("basalt").join(slot.letter());
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{file}.new"));
        let mut f = std::fs::File::create(&path)?;
        let n = io::copy(&mut from, &mut f)?;
        f.sync_all()?;
        sync_dir(&dir)?;
        Ok(n)
    }

    /// `basalt/<slot>/<file>`: a slot's kernel (`vmlinuz`) or `initrd`.
    pub fn slot_file(&self, slot: Slot, file: &str) -> PathBuf {
        self.root.join("basalt").join(slot.letter()).join(file)
    }

    /// Whether `basalt/<slot>/<file>.new` exists.
    pub fn has_new(&self, slot: Slot, file: &str) -> bool {
        self.root
            .join("basalt")
            .join(slot.letter())
            .join(format!("{file}.new"))
            .is_file()
    }

    /// Moves `<file>.new` into place.
    pub fn promote(&self, slot: Slot, file: &str) -> io::Result<()> {
        let dir = self.root.join("basalt").join(slot.letter());
        rename_synced(&dir.join(format!("{file}.new")), &dir.join(file))
    }

    /// Renames a slot's counting entry to its permanent name (what `systemd-bless-boot good` does).
    pub fn bless(&self, slot: Slot) -> io::Result<bool> {
        match self.entry(slot)? {
            Some(e) if e.counter.is_some() => {
                let good = EntryName {
                    slot,
                    counter: None,
                };
                rename_synced(
                    &self.entries_dir().join(e.to_string()),
                    &self.entries_dir().join(good.to_string()),
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Renames a slot's entry to "no tries left", so the boot loader prefers the other slot.
    pub fn mark_bad(&self, slot: Slot) -> io::Result<bool> {
        match self.entry(slot)? {
            Some(e) => {
                let done = e.counter.map(|c| c.done + c.left).unwrap_or(1).max(1);
                let bad = EntryName {
                    slot,
                    counter: Some(Counter { left: 0, done }),
                };
                rename_synced(
                    &self.entries_dir().join(e.to_string()),
                    &self.entries_dir().join(bad.to_string()),
                )?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The entry for `slot` at `version`, with the options of `template` (the
/// running slot's entry) moved to `slot`.
pub fn entry_for(template: &str, slot: Slot, version: &str, title: &str) -> String {
    let options = template
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or("")
        .split_whitespace()
        .map(|w| {
            if w.starts_with("basalt.slot=") {
                format!("basalt.slot={slot}")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let options = if options.contains("basalt.slot=") {
        options
    } else {
        format!("basalt.slot={slot} {options}")
    };
    format!(
        "title {title}\nsort-key basalt\nversion {version}\nlinux /basalt/{slot}/vmlinuz\ninitrd /basalt/{slot}/initrd\noptions {}\n",
        options.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_moves_the_options_to_the_new_slot() {
        let template = "title x\nsort-key basalt\nversion 0.1.0\nlinux /basalt/a/vmlinuz\ninitrd /basalt/a/initrd\noptions basalt.slot=a console=ttyS0,115200 quiet\n";
        assert_eq!(
            entry_for(template, Slot::B, "0.2.0", "basalt-appliance 0.2.0 (slot b)"),
            "title basalt-appliance 0.2.0 (slot b)\nsort-key basalt\nversion 0.2.0\nlinux /basalt/b/vmlinuz\ninitrd /basalt/b/initrd\noptions basalt.slot=b console=ttyS0,115200 quiet\n"
        );
    }

    #[test]
    fn entries_are_written_blessed_and_marked_bad() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp {
            root: dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(esp.entries_dir()).unwrap();
        std::fs::write(esp.entries_dir().join("basalt-a.conf"), "a").unwrap();
        std::fs::write(esp.entries_dir().join("loader.conf"), "x").unwrap();
        esp.write_entry(Slot::B, 3, "b").unwrap();
        assert_eq!(
            esp.entry(Slot::B).unwrap().unwrap().to_string(),
            "basalt-b+3.conf"
        );
        std::fs::rename(
            esp.entries_dir().join("basalt-b+3.conf"),
            esp.entries_dir().join("basalt-b+2-1.conf"),
        )
        .unwrap();
        assert!(esp.mark_bad(Slot::B).unwrap());
        assert_eq!(
            esp.entry(Slot::B).unwrap().unwrap().to_string(),
            "basalt-b+0-3.conf"
        );
        esp.remove_entries(Slot::B).unwrap();
        esp.write_entry(Slot::B, 3, "b").unwrap();
        assert!(esp.bless(Slot::B).unwrap());
        assert_eq!(
            esp.entry(Slot::B).unwrap().unwrap().to_string(),
            "basalt-b.conf"
        );
        assert!(!esp.bless(Slot::A).unwrap());
        esp.write_new(Slot::B, "vmlinuz", &b"kernel"[..]).unwrap();
        assert!(esp.has_new(Slot::B, "vmlinuz"));
        esp.promote(Slot::B, "vmlinuz").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("basalt/b/vmlinuz")).unwrap(),
            b"kernel"
        );
    }
}
