//! What the builder tells the initrd: written to `/etc/basalt/initrd.json`
//! inside the initrd, read by `basalt-agent initrd` running as PID 1.

use crate::board::BoardId;
use crate::spec::RootfsType;
use serde::{Deserialize, Serialize};

pub const INITRD_CONFIG_PATH: &str = "/etc/basalt/initrd.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitrdConfig {
    pub board: BoardId,
    /// Image version, for the log.
    pub version: String,
    pub kernel_version: String,
    pub rootfs_type: RootfsType,
    /// Module files inside the initrd, in an order that satisfies their dependencies.
    pub modules: Vec<String>,
}
