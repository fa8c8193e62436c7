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
    #[serde(rename = "rpi4")]
    Rpi4,
    #[serde(rename = "rpi5")]
    Rpi5,
}

impl BoardId {
    pub const ALL: [BoardId; 4] = [
        BoardId::X86_64Uefi,
        BoardId::Arm64Uefi,
        BoardId::Rpi4,
        BoardId::Rpi5,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BoardId::X86_64Uefi => "x86_64-uefi",
            BoardId::Arm64Uefi => "arm64-uefi",
            BoardId::Rpi4 => "rpi4",
            BoardId::Rpi5 => "rpi5",
        }
    }

    /// A Raspberry Pi, booted by the Pi firmware with tryboot A/B.
    pub fn is_rpi(self) -> bool {
        matches!(self, BoardId::Rpi4 | BoardId::Rpi5)
    }
}

impl fmt::Display for BoardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown board {0:?}: known boards are x86_64-uefi, arm64-uefi, rpi4 and rpi5")]
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
    /// MS-DOS partition table, which the Raspberry Pi firmware reads.
    Mbr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootLoader {
    SystemdBoot,
    /// The Raspberry Pi firmware itself, with `autoboot.txt` and tryboot A/B.
    RpiTryboot,
}

/// How the tests and `basalt run` start this board under QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuSettings {
    pub system: String,
    pub machine: String,
    pub cpu: String,
    pub memory: ByteSize,
    /// UEFI firmware (UEFI boards). Raspberry Pi boards have none: the
    /// launcher does the Pi firmware's work and starts the kernel directly.
    #[serde(default)]
    pub firmware_code: Option<String>,
    #[serde(default)]
    pub firmware_vars: Option<String>,
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
    /// The suite the kernel package comes from when not the spec's own, such
    /// as `bookworm-backports` (added to the archive sources for it alone).
    #[serde(default)]
    pub kernel_suite: Option<String>,
    /// Packages this board needs in every image, on top of the spec's.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Kernel parameters for every boot of this board.
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    /// Kernel modules the initrd loads (with their dependencies) to reach the root file system.
    pub initrd_modules: Vec<String>,
    /// What the Raspberry Pi firmware needs on each boot slot (Pi boards only).
    #[serde(default)]
    pub rpi: Option<RpiSettings>,
    pub qemu: QemuSettings,
    /// Why no image of this board can boot with the kernels Debian has:
    /// `basalt build` refuses the board with this text before it starts.
    #[serde(default)]
    pub unsupported: Option<String>,
}

/// The boot slot contents of a Raspberry Pi board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpiSettings {
    /// Archive components the board's packages come from, on top of the spec's
    /// (`non-free-firmware` for raspi-firmware).
    #[serde(default)]
    pub components: Vec<String>,
    /// The Debian package holding the firmware files, installed in the root.
    pub firmware_package: Option<String>,
    /// Directory of the firmware files inside the root file system.
    #[serde(default)]
    pub firmware_dir: Option<String>,
    /// Firmware files copied to each boot slot (`start4.elf`, `fixup4.dat`).
    #[serde(default)]
    pub firmware_files: Vec<String>,
    /// Device trees of the kernel package copied to each boot slot; the first
    /// is the one the QEMU launcher uses.
    pub dtbs: Vec<String>,
    /// Lines of `config.txt` (under `[all]`), before the kernel and initrd lines.
    #[serde(default)]
    pub config: Vec<String>,
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
    #[error("{source_name}: {message}")]
    Rule {
        source_name: String,
        message: String,
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
        match (board.boot_loader, &board.rpi, board.partition_table) {
            (BootLoader::RpiTryboot, Some(rpi), PartitionTable::Mbr) => {
                if rpi.dtbs.is_empty() {
                    return Err(BoardError::Rule {
                        source_name: source_name.to_string(),
                        message: "rpi.dtbs is empty; the firmware needs the board's device tree"
                            .into(),
                    });
                }
                if !rpi.firmware_files.is_empty() && rpi.firmware_package.is_none() {
                    return Err(BoardError::Rule {
                        source_name: source_name.to_string(),
                        message: "rpi.firmware_files needs rpi.firmware_package".into(),
                    });
                }
            }
            (BootLoader::RpiTryboot, _, _) => {
                return Err(BoardError::Rule {
                    source_name: source_name.to_string(),
                    message: "boot_loader rpi-tryboot needs partition_table mbr and an rpi section"
                        .into(),
                })
            }
            (BootLoader::SystemdBoot, rpi, table) => {
                if rpi.is_some() || table != PartitionTable::Gpt {
                    return Err(BoardError::Rule {
                        source_name: source_name.to_string(),
                        message:
                            "boot_loader systemd-boot needs partition_table gpt and no rpi section"
                                .into(),
                    });
                }
                if board.qemu.firmware_code.is_none() || board.qemu.firmware_vars.is_none() {
                    return Err(BoardError::Rule {
                        source_name: source_name.to_string(),
                        message:
                            "qemu.firmware_code and qemu.firmware_vars are required for UEFI boards"
                                .into(),
                    });
                }
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
