//! Names of systemd-boot loader entries with boot counting, as the Boot
//! Loader Specification defines them: `basalt-b+3.conf` is slot B with three
//! tries left; systemd-boot renames it to `basalt-b+2-1.conf` when it starts
//! it, and `systemd-bless-boot` to `basalt-b.conf` once the boot is good.
//! `+0-3` means every try failed: the entry is bad and sorts last.

use crate::slot::Slot;
use std::fmt;

/// One basalt loader entry file name, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    /// `None` for an entry without a counter: blessed, or never counted.
    pub counter: Option<Counter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// Where an entry stands in boot assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assessment {
    /// No counter: a good (blessed) entry.
    Good,
    /// Counting, never started yet.
    Fresh,
    /// Counting, started at least once and not yet blessed.
    Trying,
    /// No tries left: systemd-boot only starts it when nothing else is there.
    Bad,
}

impl EntryName {
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_suffix(".conf")?;
        let rest = stem.strip_prefix("basalt-")?;
        let (slot_text, counter_text) = match rest.split_once('+') {
            Some((s, c)) => (s, Some(c)),
            None => (rest, None),
        };
        let slot: Slot = slot_text.parse().ok()?;
        let counter = match counter_text {
            None => None,
            Some(c) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                    None => (c.parse().ok()?, 0),
                };
                Some(Counter { left, done })
            }
        };
        Some(EntryName { slot, counter })
    }

    pub fn assessment(&self) -> Assessment {
        match self.counter {
            None => Assessment::Good,
            Some(Counter { left: 0, .. }) => Assessment::Bad,
            Some(Counter { done: 0, .. }) => Assessment::Fresh,
            Some(_) => Assessment::Trying,
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.counter {
            None => write!(f, "basalt-{}.conf", self.slot),
            Some(Counter { left, done: 0 }) => write!(f, "basalt-{}+{left}.conf", self.slot),
            Some(Counter { left, done }) => write!(f, "basalt-{}+{left}-{done}.conf", self.slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (name, slot, assessment) in [
            ("basalt-a.conf", Slot::A, Assessment::Good),
            ("basalt-b+3.conf", Slot::B, Assessment::Fresh),
            ("basalt-b+2-1.conf", Slot::B, Assessment::Trying),
            ("basalt-a+0-3.conf", Slot::A, Assessment::Bad),
        ] {
            let e = EntryName::parse(name).unwrap();
            assert_eq!(e.slot, slot, "{name}");
            assert_eq!(e.assessment(), assessment, "{name}");
            assert_eq!(e.to_string(), name);
        }
    }

    #[test]
    fn others_are_not_ours() {
        for name in [
            "debian.conf",
            "basalt-c.conf",
            "basalt-a+x.conf",
            "basalt-a+1-y.conf",
            "basalt-a",
            "basalt-a.conf.tmp",
        ] {
            assert_eq!(EntryName::parse(name), None, "{name}");
        }
    }
}
