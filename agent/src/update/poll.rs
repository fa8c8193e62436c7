//! The update channel, polled: `basalt-agent update poll`, and the service's
//! automatic mode when cloud-config sets `basalt.update`.
//!
//! One poll fetches `<channel>/<board>.json` ([`basalt_formats::channel`]),
//! decides with [`decide`] (pure) whether there is something new that this
//! device may take, and if so checks the bundle's signatures (reading only
//! its head), stages it from the URL, arms the boot loader and reboots. Each
//! poll's outcome is kept in `poll.json` beside the update state and shown by
//! `basalt-agent update status`.

use super::state::{SlotRecord, UpdateState};
use super::{apply, check_bundle, io_err, stage, Device, Disposition, UpdateError};
use crate::fetch::{FetchError, Fetcher};
use basalt_formats::channel::{self, Channel, ChannelError, MAX_CHANNEL_BYTES};
use basalt_formats::cloud_config::HttpUrl;
use basalt_formats::release::Release;
use basalt_formats::Slot;
use log::{error, info};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one poll should do, decided from the channel and the device's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum PollDecision {
    /// The channel offers the running version, or an older one (never taken automatically).
    UpToDate { running: String, latest: String },
    /// Download, stage, apply.
    Install { version: String, bundle: String },
    /// The version is staged already: only apply it.
    ApplyStaged { version: String },
    /// The version is armed already and boots at the next reboot.
    Armed { version: String },
    /// Something newer exists, but this device must not take it now.
    Hold { version: String, reason: String },
}

/// Whether the channel has something new this device may take. Pure.
///
/// - The document must be for this board (otherwise an error: the channel is miswired).
/// - Nothing happens while the running slot is on trial (its boot entry
///   still counts tries): the health checks decide first.
/// - Only a version above the running one counts; downgrades are never automatic.
/// - A version that was rolled back on this device is not tried again
///   automatically; an operator can still stage it by hand.
pub fn decide(
    channel: &Channel,
    release: &Release,
    state: &UpdateState,
    target: Slot,
    on_trial: bool,
) -> Result<PollDecision, String> {
    if channel.board != release.board {
        return Err(format!(
            "the channel document is for board {}, this device is {}",
            channel.board, release.board
        ));
    }
    let version = channel.version.to_string();
    if channel.version.cmp_precedence(&release.version) != std::cmp::Ordering::Greater {
        return Ok(PollDecision::UpToDate {
            running: release.version.to_string(),
            latest: version,
        });
    }
    if on_trial {
        return Ok(PollDecision::Hold {
            version,
            reason: "the running slot is on trial; updates wait until it is marked good".into(),
        });
    }
    if state.failed.iter().any(|f| f.version == version) {
        return Ok(PollDecision::Hold {
            version,
            reason: "this version was rolled back on this device before".into(),
        });
    }
    Ok(match state.get(target) {
        Some(SlotRecord::Trying { version: v }) if *v == version => PollDecision::Armed { version },
        Some(SlotRecord::Staged { version: v }) if *v == version => {
            PollDecision::ApplyStaged { version }
        }
        _ => PollDecision::Install {
            version,
            bundle: channel.bundle.as_str().to_string(),
        },
    })
}

/// The wait before the next poll: `interval` moved by up to ±10 %, so a
/// fleet does not poll in step. `unit` is a random number in `[0, 1)`.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    interval.mul_f64(0.9 + 0.2 * unit)
}

/// The first poll after the service starts: soon, but not in step with the boot.
pub fn first_delay(interval: Duration, unit: f64) -> Duration {
    jittered(interval.min(Duration::from_secs(300)), unit)
}

/// What a poll ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    UpToDate,
    Held,
    Staged,
    Applied,
    Failed,
}

/// The last poll, kept in `poll.json` for `update status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollRecord {
    pub channel: String,
    /// UNIX seconds.
    pub at: u64,
    pub outcome: Outcome,
    /// One line: what was decided or done.
    pub detail: String,
    /// The latest version on the channel, when the document was read.
    pub latest: Option<String>,
    pub error: Option<String>,
    pub disposition: Option<Disposition>,
}

impl PollRecord {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("poll.json")
    }

    pub fn load(state_dir: &Path) -> Option<PollRecord> {
        serde_json::from_slice(&std::fs::read(Self::path(state_dir)).ok()?).ok()
    }

    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        crate::provision::atomic_write(
            &Self::path(state_dir),
            &serde_json::to_vec_pretty(self).expect("serialises"),
            0o644,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("update channel: {0}")]
    Fetch(#[from] FetchError),
    #[error("update channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("update channel {url}: {reason}")]
    Mismatch { url: String, reason: String },
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error("rebooting: {0}")]
    Reboot(String),
}

impl PollError {
    pub fn disposition(&self) -> Disposition {
        match self {
            PollError::Fetch(e) if !e.is_transient() => match e {
                FetchError::Exhausted { .. } => Disposition::Retry,
                FetchError::Status { status, .. } if status.as_u16() == 404 => Disposition::Retry,
                _ => Disposition::GiveUp,
            },
            PollError::Fetch(_) | PollError::Reboot(_) => Disposition::Retry,
            PollError::Channel(_) | PollError::Mismatch { .. } => Disposition::GiveUp,
            PollError::Update(e) => e.disposition(),
        }
    }
}

/// What `update poll` does after staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stage only (`--no-apply`).
    StageOnly,
    /// Stage, arm the boot loader and reboot.
    Apply,
}

/// One poll: see the module docs. Writes the outcome to `poll.json`, and logs it.
pub fn poll(
    device: &Device,
    channel_url: &HttpUrl,
    fetcher: &Fetcher,
    mode: Mode,
    reboot: &mut dyn FnMut() -> Result<(), String>,
) -> Result<PollRecord, PollError> {
    let mut latest = None;
    let result = poll_inner(device, channel_url, fetcher, mode, reboot, &mut latest);
    let at = super::now();
    let record = match &result {
        Ok((outcome, detail)) => PollRecord {
            channel: channel_url.to_string(),
            at,
            outcome: *outcome,
            detail: detail.clone(),
            latest,
            error: None,
            disposition: None,
        },
        Err(e) => PollRecord {
            channel: channel_url.to_string(),
            at,
            outcome: Outcome::Failed,
            detail: "poll failed".into(),
            latest,
            error: Some(e.to_string()),
            disposition: Some(e.disposition()),
        },
    };
    match &result {
        Ok((_, detail)) => info!("update poll: {detail}"),
        Err(e) => error!("update poll failed: {e}"),
    }
    if let Err(e) = record.write(&device.state_dir) {
        error!("{}: {e}", PollRecord::path(&device.state_dir).display());
    }
    result.map(|_| record)
}

fn poll_inner(
    device: &Device,
    channel_url: &HttpUrl,
    fetcher: &Fetcher,
    mode: Mode,
    reboot: &mut dyn FnMut() -> Result<(), String>,
    latest: &mut Option<String>,
) -> Result<(Outcome, String), PollError> {
    let url = channel::document_url(channel_url, device.release.board);
    let bytes = fetcher.get_bytes(&url, MAX_CHANNEL_BYTES)?;
    let doc = Channel::parse(&url, &bytes)?;
    *latest = Some(doc.version.to_string());
    let st = UpdateState::load(&device.state_dir).map_err(io_err("update state"))?;
    let on_trial = device
        .esp
        .entry(device.boot.slot)
        .map_err(io_err("reading loader entries"))?
        .is_some_and(|e| e.counter.is_some());
    let decision =
        decide(&doc, &device.release, &st, device.target(), on_trial).map_err(|reason| {
            PollError::Mismatch {
                url: url.clone(),
                reason,
            }
        })?;
    let target = device.target();
    let version = match decision {
        PollDecision::UpToDate { running, latest } => {
            return Ok((
                Outcome::UpToDate,
                format!("up to date: running {running}, the channel offers {latest}"),
            ))
        }
        PollDecision::Hold { version, reason } => {
            return Ok((Outcome::Held, format!("not taking {version}: {reason}")))
        }
        PollDecision::Armed { version } => {
            return Ok((
                Outcome::Applied,
                format!("{version} is armed in slot {target} and boots at the next reboot"),
            ))
        }
        PollDecision::ApplyStaged { version } => version,
        PollDecision::Install { version, bundle } => {
            info!(
                "update poll: {version} is on the channel ({}); checking {bundle}",
                doc.size
                    .map(|s| format!("{s} bytes"))
                    .unwrap_or_else(|| "size not given".into())
            );
            check_bundle(fetcher.open(&bundle)?, device)?;
            let report = stage(fetcher.open(&bundle)?, device)?;
            info!(
                "update poll: staged {} in slot {}",
                report.bundle_version, report.target_slot
            );
            if mode == Mode::StageOnly {
                return Ok((
                    Outcome::Staged,
                    format!("staged {version} in slot {target}; not applied (--no-apply)"),
                ));
            }
            version
        }
    };
    if mode == Mode::StageOnly {
        return Ok((
            Outcome::Staged,
            format!("{version} is staged in slot {target}; not applied (--no-apply)"),
        ));
    }
    apply(device)?;
    info!("update poll: {version} armed in slot {target}; rebooting");
    reboot().map_err(PollError::Reboot)?;
    Ok((
        Outcome::Applied,
        format!("{version} armed in slot {target}; rebooting into it"),
    ))
}

#[cfg(test)]
mod tests;
