//! The two root file system slots of an A/B image.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The lower-case letter used in labels, loader entries and the kernel command line.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// GPT partition name of this slot's root file system.
    pub fn root_label(self) -> String {
        format!("root-{}", self.letter())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slot {0:?}: expected \"a\" or \"b\"")]
pub struct ParseSlotError(String);

impl FromStr for Slot {
    type Err = ParseSlotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err(ParseSlotError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_flips() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other().other(), Slot::B);
        assert_eq!(Slot::B.root_label(), "root-b");
        assert_eq!("a".parse::<Slot>().unwrap(), Slot::A);
        assert!("c".parse::<Slot>().is_err());
    }
}
