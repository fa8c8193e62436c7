//! What the initrd found and did, handed to the running system in
//! `/run/basalt/boot.json`.

use crate::slot::Slot;
use serde::{Deserialize, Serialize};

pub const BOOT_INFO_PATH: &str = "/run/basalt/boot.json";

/// Where a live system (booted from the installer ISO) finds its boot
/// medium, mounted read-only: `basalt/root.img`, the image to install and
/// its build record.
pub const LIVE_MEDIUM_DIR: &str = "/run/basalt/live";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInfo {
    pub slot: Slot,
    /// Whole-disk device holding the slots, such as `/dev/vda`.
    pub disk: String,
    pub esp_device: String,
    pub root_device: String,
    pub data_device: String,
    /// Set on the boot that grew the data partition to fill the disk.
    pub data_grown: Option<DataGrowth>,
    /// Milliseconds from kernel start to the switch into the root file system.
    pub initrd_done_ms: u64,
    /// A live system from the installer ISO: the root is the medium's
    /// `root.img`, the data partition a tmpfs, `disk` the medium.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataGrowth {
    pub from_bytes: u64,
    pub to_bytes: u64,
}
