//! The update state of the two slots: loaded once, changed in memory, written
//! in one step (`/data/basalt/update/state.json`).

use basalt_formats::Slot;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_DIR: &str = "/data/basalt/update";

/// What basalt knows a slot holds, beyond what the boot loader says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum SlotRecord {
    /// Holds what the image or a committed update put there.
    Installed { version: String },
    /// Being written: must never be booted. `resume` is the last frame
    /// boundary synced to the slot, where staging the same bundle again
    /// goes on (after a dropped download or a reboot).
    Writing {
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumePoint>,
    },
    /// Written and verified, not yet armed in the boot loader.
    Staged { version: String },
    /// Armed: the boot loader will try it (with a boot counter).
    Trying { version: String },
    /// Writing or verification failed; the slot holds nothing bootable.
    Bad { version: String, reason: String },
}

impl SlotRecord {
    pub fn version(&self) -> &str {
        match self {
            SlotRecord::Installed { version }
            | SlotRecord::Writing { version, .. }
            | SlotRecord::Staged { version }
            | SlotRecord::Trying { version }
            | SlotRecord::Bad { version, .. } => version,
        }
    }
}

/// How far staging a bundle got: the slot holds the first `uncompressed`
/// bytes of payload `payload`, synced, which are the first `compressed`
/// bytes of its member. Only for the bundle whose manifest has this digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    pub manifest_sha256: String,
    pub payload: usize,
    pub compressed: u64,
    pub uncompressed: u64,
}

/// An update that did not come up healthy and was rolled back by the boot loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedUpdate {
    pub version: String,
    pub slot: Slot,
    /// UNIX seconds when the rollback was noticed.
    pub noticed_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    pub a: Option<SlotRecord>,
    pub b: Option<SlotRecord>,
    /// Most recent first, at most 16.
    #[serde(default)]
    pub failed: Vec<FailedUpdate>,
}

impl UpdateState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(dir: &Path) -> std::io::Result<UpdateState> {
        match std::fs::read(Self::path(dir)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", Self::path(dir).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateState::default()),
            Err(e) => Err(e),
        }
    }

    /// The one write: whole file through a temporary file and rename.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        crate::provision::atomic_write(
            &Self::path(dir),
            &serde_json::to_vec_pretty(self).expect("serialises"),
            0o644,
        )
    }

    pub fn get(&self, slot: Slot) -> Option<&SlotRecord> {
        match slot {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }

    pub fn set(&mut self, slot: Slot, record: SlotRecord) {
        match slot {
            Slot::A => self.a = Some(record),
            Slot::B => self.b = Some(record),
        }
    }

    pub fn record_failure(&mut self, version: String, slot: Slot, now: u64) {
        self.failed.insert(
            0,
            FailedUpdate {
                version,
                slot,
                noticed_at: now,
            },
        );
        self.failed.truncate(16);
    }
}
