//! The release file: what image a root file system belongs to. The builder
//! writes it to `/usr/lib/basalt/release.json`; the agent reads it.

use crate::board::{Arch, BoardId};
use crate::spec::RootfsType;
use serde::{Deserialize, Serialize};

pub const RELEASE_PATH: &str = "/usr/lib/basalt/release.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub name: String,
    pub version: semver::Version,
    pub board: BoardId,
    pub arch: Arch,
    pub rootfs_type: RootfsType,
    /// `SOURCE_DATE_EPOCH` of the build.
    pub build_time: u64,
}
