//! Boards: one YAML file per board in `hardware/`.

use crate::size::ByteSize;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The boards basalt builds images for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum BoardId {
    #[serde(rename = "x86_64-uefi")]
    X86_64Uefi,
    #[serde(rename = "arm64-uefi")]
    Arm64Uefi,
}

impl BoardId {
    pub const ALL: [BoardId; 2] = [BoardId::X86_64Uefi, BoardId::Arm64Uefi];

    pub fn as_str(self) -> &'static str {
        match self {
            BoardId::X86_64Uefi => "x86_64-uefi",
            BoardId::Arm64Uefi => "arm64-uefi",
        }
    }
}

impl fmt::Display for BoardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown board {0:?}: known boards are x86_64-uefi and arm64-uefi")]
pub struct ParseBoardError(String);

impl FromStr for BoardId {
    type Err = ParseBoardError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BoardId::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| ParseBoardError(s.to_string()))
    }
}

/// CPU architecture, named as Debian names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the agent is compiled for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The multiarch triplet of Debian's library directories.
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// Suffix of EFI binaries (`BOOTX64.EFI`, `systemd-bootaa64.efi`).
    pub fn efi_suffix(self) -> &'static str {
        match self {
            Arch::Amd64 => "x64",
            Arch::Arm64 => "aa64",
        }
    }

    /// The `uname -m` spelling.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    Gpt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootLoader {
    SystemdBoot,
}

/// How the tests and `basalt run` start this board under QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuSettings {
    pub system: String,
    pub machine: String,
    pub cpu: String,
    pub memory: ByteSize,
    pub firmware_code: String,
    pub firmware_vars: String,
    /// Serial console device name inside the guest.
    pub console: String,
}

/// One board, as read from `hardware/<id>.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub id: BoardId,
    pub description: String,
    pub arch: Arch,
    pub partition_table: PartitionTable,
    pub boot_loader: BootLoader,
    /// The Debian kernel package (a metapackage is fine).
    pub kernel_package: String,
    /// Packages this board needs in every image, on top of the spec's.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Kernel parameters for every boot of this board.
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    /// Kernel modules the initrd loads (with their dependencies) to reach the root file system.
    pub initrd_modules: Vec<String>,
    pub qemu: QemuSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),
    #[error(
        "{source_name}: board id {found} does not match the file name, which names {expected}"
    )]
    IdMismatch {
        source_name: String,
        found: BoardId,
        expected: String,
    },
    #[error(
        "{source_name}: initrd_modules is empty; the initrd could not reach the root file system"
    )]
    NoModules { source_name: String },
}

impl Board {
    /// Parses a board file. `expected_id` is the file's stem when read from `hardware/`.
    pub fn parse(
        source_name: &str,
        text: &str,
        expected_id: Option<&str>,
    ) -> Result<Board, BoardError> {
        let board: Board = crate::yaml::from_str(source_name, text)?;
        if let Some(expected) = expected_id {
            if board.id.as_str() != expected {
                return Err(BoardError::IdMismatch {
                    source_name: source_name.to_string(),
                    found: board.id,
                    expected: expected.to_string(),
                });
            }
        }
        if board.initrd_modules.is_empty() {
            return Err(BoardError::NoModules {
                source_name: source_name.to_string(),
            });
        }
        Ok(board)
    }
}
