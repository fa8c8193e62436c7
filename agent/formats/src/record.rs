//! The build record: what `basalt build` made, written as JSON beside the artifacts.

use crate::board::{Arch, BoardId};
use crate::spec::RootfsType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name inside the output directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRecord {
    pub name: String,
    pub version: String,
    pub board: BoardId,
    pub arch: Arch,
    pub suite: String,
    pub rootfs_type: RootfsType,
    pub kernel_version: String,
    pub source_date_epoch: u64,
    /// Partition sizes in bytes.
    pub esp_size: u64,
    pub slot_size: u64,
    pub data_size: u64,
    /// Bytes the root file system image takes inside its slot.
    pub rootfs_size: u64,
    pub disk_size: u64,
    /// `package=version` of every package in the root file system.
    pub packages: Vec<String>,
    pub artifacts: Vec<Artifact>,
}
