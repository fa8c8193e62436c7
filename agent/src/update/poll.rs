//! The update channel, polled: `basalt-agent update poll`, and the service's
//! automatic mode when cloud-config sets `basalt.update`.
//!
//! One poll fetches `<channel>/<board>.json` ([`basalt_formats::channel`]),
//! decides with [`decide`] (pure) whether there is something new that this
//! device may take, and if so checks the bundle's signatures (reading only
//! its head), stages it from the URL, arms the boot loader and reboots. A
//! version the channel recalls is taken out of the boot menu when it is
//! staged or armed here, and reported loudly when it is the running one.
//! Each poll's outcome is kept in `poll.json` beside the update state and
//! shown by `basalt-agent update status`.

use super::share::{check_and_stage, peer_fetcher, Sharing, Wanted, MAX_PEER_TRIES};
use super::state::{SlotRecord, UpdateState};
use super::{apply, io_err, Device, Disposition, UpdateError};
use crate::fetch::{FetchError, Fetcher};
use basalt_formats::channel::rollout::{Bucket, Percent};
use basalt_formats::channel::{self, Channel, ChannelError, MAX_CHANNEL_BYTES};
use basalt_formats::cloud_config::HttpUrl;
use basalt_formats::mesh::NodeId;
use basalt_formats::release::Release;
use basalt_formats::Slot;
use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The reason a slot's record gives when a poll took a recalled version out of it.
pub const RECALLED_REASON: &str = "recalled by the channel";

/// What one poll should do about the channel's version.
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

/// A version staged or armed in the slot that has not booted, which the
/// channel recalls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disarm {
    pub slot: Slot,
    pub version: String,
    /// It was armed (a counting boot entry), not only staged.
    pub armed: bool,
}

/// Everything one poll should do, decided from the channel and the device's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PollPlan {
    /// Take this recalled version out of the boot menu, and mark its slot
    /// bad, before anything else.
    pub disarm: Option<Disarm>,
    /// The running version, when the channel recalls it. Reported, never
    /// acted on: the channel is not signed, so it must not be able to make
    /// a device go back to an older version.
    pub running_recalled: Option<String>,
    /// What to do about the channel's version, once `disarm` is done.
    pub decision: PollDecision,
}

/// Whether the channel has something new this device may take. Pure.
///
/// - The document must be for this board (otherwise an error: the channel is miswired).
/// - A recalled version staged or armed in the target slot is taken out
///   ([`PollPlan::disarm`]); a recalled running version is only reported.
///   A recalled version is never installed.
/// - Nothing happens while the running slot is on trial (its boot entry
///   still counts tries): the health checks decide first.
/// - Only a version above the running one counts; downgrades are never automatic.
/// - A version that was rolled back on this device before is not tried
///   again automatically; an operator can still stage it by hand.
/// - With a staged rollout (`rollout.percent` below 100) the version is
///   installed or applied only when this node's bucket for it
///   ([`Bucket::of`]) is below the percent; a node whose identity cannot be
///   read (`node` is then the reason) waits for 100 %.
pub fn decide(
    channel: &Channel,
    release: &Release,
    state: &UpdateState,
    target: Slot,
    on_trial: bool,
    node: Result<&NodeId, &str>,
) -> Result<PollPlan, String> {
    if channel.board != release.board {
        return Err(format!(
            "the channel document is for board {}, this device is {}",
            channel.board, release.board
        ));
    }
    // `Channel::parse` refuses this; a channel built another way must not slip through.
    if channel.recalls(&channel.version) {
        return Err(format!(
            "the channel offers {} and recalls it",
            channel.version
        ));
    }
    let recalled = |v: &str| v.parse().is_ok_and(|v| channel.recalls(&v));
    let running_recalled = channel
        .recalls(&release.version)
        .then(|| release.version.to_string());
    let disarm = match state.get(target) {
        Some(SlotRecord::Staged { version }) if recalled(version) => Some(Disarm {
            slot: target,
            version: version.clone(),
            armed: false,
        }),
        Some(SlotRecord::Trying { version }) if recalled(version) => Some(Disarm {
            slot: target,
            version: version.clone(),
            armed: true,
        }),
        _ => None,
    };
    let plan = |decision| PollPlan {
        disarm: disarm.clone(),
        running_recalled: running_recalled.clone(),
        decision,
    };
    let version = channel.version.to_string();
    if channel.version.cmp_precedence(&release.version) != std::cmp::Ordering::Greater {
        return Ok(plan(PollDecision::UpToDate {
            running: release.version.to_string(),
            latest: version,
        }));
    }
    if on_trial {
        return Ok(plan(PollDecision::Hold {
            version,
            reason: "the running slot is on trial; updates wait until it is marked good".into(),
        }));
    }
    if state.failed.iter().any(|f| f.version == version) {
        return Ok(plan(PollDecision::Hold {
            version,
            reason: "this version was rolled back on this device before".into(),
        }));
    }
    // What the target slot holds once a recalled version is taken out of it.
    let held = if disarm.is_some() {
        None
    } else {
        state.get(target)
    };
    let decision = match held {
        // Armed already: it boots at the next reboot whatever the rollout says.
        Some(SlotRecord::Trying { version: v }) if *v == version => {
            return Ok(plan(PollDecision::Armed { version }))
        }
        Some(SlotRecord::Staged { version: v }) if *v == version => {
            PollDecision::ApplyStaged { version }
        }
        _ => PollDecision::Install {
            version,
            bundle: channel.bundle.as_str().to_string(),
        },
    };
    if channel.rollout == Percent::ALL {
        return Ok(plan(decision));
    }
    let version = channel.version.to_string();
    Ok(plan(match node {
        Ok(id) => {
            let bucket = Bucket::of(id, &channel.version);
            if channel.rollout.admits(bucket) {
                decision
            } else {
                PollDecision::Hold {
                    version,
                    reason: format!(
                        "rollout at {} %: this node's bucket is {bucket}",
                        channel.rollout
                    ),
                }
            }
        }
        Err(why) => PollDecision::Hold {
            version,
            reason: format!(
                "rollout at {} %, and this node cannot place itself in it without its identity ({why}); it waits for 100 %",
                channel.rollout
            ),
        },
    }))
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
    /// A recalled version staged or armed here was taken out of the boot
    /// menu, and nothing else was done.
    Disarmed,
    /// The device runs a version the channel recalls, and the poll put
    /// nothing newer in its place.
    Recalled,
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
    /// The running version, when the channel recalls it.
    #[serde(default)]
    pub running_recalled: Option<String>,
    /// The recalled version this poll took out of the boot menu.
    #[serde(default)]
    pub disarmed: Option<Disarm>,
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

/// What a poll learnt and did before it ended, for its record even when it failed.
#[derive(Debug, Default)]
struct Progress {
    latest: Option<String>,
    running_recalled: Option<String>,
    disarmed: Option<Disarm>,
}

/// One poll: see the module docs. Writes the outcome to `poll.json`, and
/// logs it. Nothing is shared with mesh peers ([`poll_shared`]).
pub fn poll(
    device: &Device,
    channel_url: &HttpUrl,
    fetcher: &Fetcher,
    mode: Mode,
    reboot: &mut dyn FnMut() -> Result<(), String>,
) -> Result<PollRecord, PollError> {
    poll_shared(device, channel_url, fetcher, mode, reboot, &Sharing::off())
}

/// [`poll`], asking mesh peers that advertise the version for its full
/// bundle before the channel, and keeping the bundle staged for peers
/// ([`super::share`]).
pub fn poll_shared(
    device: &Device,
    channel_url: &HttpUrl,
    fetcher: &Fetcher,
    mode: Mode,
    reboot: &mut dyn FnMut() -> Result<(), String>,
    sharing: &Sharing,
) -> Result<PollRecord, PollError> {
    let mut progress = Progress::default();
    let result = poll_inner(
        device,
        channel_url,
        fetcher,
        mode,
        reboot,
        sharing,
        &mut progress,
    );
    let at = super::now();
    let record = match &result {
        Ok((outcome, detail)) => PollRecord {
            channel: channel_url.to_string(),
            at,
            outcome: *outcome,
            detail: detail.clone(),
            latest: progress.latest,
            error: None,
            disposition: None,
            running_recalled: progress.running_recalled,
            disarmed: progress.disarmed,
        },
        Err(e) => PollRecord {
            channel: channel_url.to_string(),
            at,
            outcome: Outcome::Failed,
            detail: "poll failed".into(),
            latest: progress.latest,
            error: Some(e.to_string()),
            disposition: Some(e.disposition()),
            running_recalled: progress.running_recalled,
            disarmed: progress.disarmed,
        },
    };
    match &result {
        Ok((Outcome::Recalled, detail)) => error!("update poll: {detail}"),
        Ok((_, detail)) => info!("update poll: {detail}"),
        Err(e) => error!("update poll failed: {e}"),
    }
    if let Err(e) = record.write(&device.state_dir) {
        error!("{}: {e}", PollRecord::path(&device.state_dir).display());
    }
    result.map(|_| record)
}

/// Stages the `wanted` bundle: from up to [`MAX_PEER_TRIES`] mesh peers
/// that advertise it, least loaded first, then from `origin` (the
/// channel's URL). Whatever a peer sends is verified as the channel's
/// bundle would be, and any failure falls back to the next peer and then
/// the channel. Returns the report and where it came from, for the journal.
fn stage_shared(
    fetcher: &Fetcher,
    device: &Device,
    sharing: &Sharing,
    wanted: Wanted<'_>,
    origin: &str,
) -> Result<(super::CheckReport, String), PollError> {
    let cache = sharing.cache.as_ref();
    let what = match wanted.base {
        Some(base) => format!("the delta from {base} to {}", wanted.version),
        None => wanted.version.to_string(),
    };
    let peers = sharing.peers.offering(wanted);
    let peer_fetcher = (!peers.is_empty()).then(|| peer_fetcher(fetcher));
    let mut tried = Vec::new();
    for p in peers.iter().take(MAX_PEER_TRIES) {
        let fetcher = peer_fetcher.as_ref().unwrap_or(fetcher);
        info!(
            "update poll: peer {} offers {what}; fetching {}",
            p.node, p.url
        );
        match check_and_stage(fetcher, &p.url, device, cache, Some(wanted.version)) {
            Ok(report) => return Ok((report, format!(" from mesh peer {}", p.node))),
            Err(e) => {
                warn!(
                    "update poll: peer {} did not give {what} ({e}); {}",
                    p.node,
                    if tried.len() + 1 < peers.len().min(MAX_PEER_TRIES) {
                        "trying the next peer"
                    } else {
                        "taking the channel's bundle"
                    }
                );
                tried.push(format!("{}: {e}", p.node));
            }
        }
    }
    let report = check_and_stage(fetcher, origin, device, cache, None)?;
    let from = if tried.is_empty() {
        String::new()
    } else {
        format!(
            " from the channel (mesh peers failed: {})",
            tried.join("; ")
        )
    };
    Ok((report, from))
}

/// Takes a recalled version out of the slot that has not booted: its boot
/// entry goes (as `update revert` does for an armed one), and its record
/// becomes bad, so neither `apply` nor a reboot can start it.
fn disarm(device: &Device, d: &Disarm) -> Result<(), UpdateError> {
    let mut st = UpdateState::load(&device.state_dir).map_err(io_err("update state"))?;
    // On a Raspberry Pi a trial is armed by the reboot itself: there is no entry.
    if device.tryboot.is_none() {
        device
            .esp
            .remove_entries(d.slot)
            .map_err(io_err(format!("removing slot {}'s loader entry", d.slot)))?;
    }
    st.set(
        d.slot,
        SlotRecord::Bad {
            version: d.version.clone(),
            reason: RECALLED_REASON.into(),
        },
    );
    st.write(&device.state_dir).map_err(io_err("update state"))
}

/// The sentence about a recalled running version, for the journal, the record and `update status`.
pub fn running_recalled_line(version: &str) -> String {
    format!(
        "the channel recalls {version}, the version this device runs; it never goes back to an older version on its own (the channel is not signed): publish a newer version to move it off"
    )
}

fn poll_inner(
    device: &Device,
    channel_url: &HttpUrl,
    fetcher: &Fetcher,
    mode: Mode,
    reboot: &mut dyn FnMut() -> Result<(), String>,
    sharing: &Sharing,
    progress: &mut Progress,
) -> Result<(Outcome, String), PollError> {
    let url = channel::document_url(channel_url, device.release.board);
    let bytes = fetcher.get_bytes(&url, MAX_CHANNEL_BYTES)?;
    let doc = Channel::parse(&url, &bytes)?;
    progress.latest = Some(doc.version.to_string());
    let st = UpdateState::load(&device.state_dir).map_err(io_err("update state"))?;
    let on_trial = device
        .esp
        .entry(device.boot.slot)
        .map_err(io_err("reading loader entries"))?
        .is_some_and(|e| e.counter.is_some());
    let plan = decide(
        &doc,
        &device.release,
        &st,
        device.target(),
        on_trial,
        device.node_id.as_ref().map_err(String::as_str),
    )
    .map_err(|reason| PollError::Mismatch {
        url: url.clone(),
        reason,
    })?;
    let target = device.target();
    // Said first, in the journal and the record, whatever happens next.
    let mut notes = Vec::new();
    if let Some(v) = &plan.running_recalled {
        let line = running_recalled_line(v);
        error!("update poll: {url}: {line}");
        progress.running_recalled = Some(v.clone());
        notes.push(line);
    }
    if let Some(d) = &plan.disarm {
        disarm(device, d)?;
        let line = format!(
            "{} was {} in slot {}; the channel recalls it: taken out of the boot menu, slot marked bad",
            d.version,
            if d.armed { "armed" } else { "staged" },
            d.slot
        );
        warn!("update poll: {line}");
        progress.disarmed = Some(d.clone());
        notes.push(line);
    }
    let with_notes = |outcome: Outcome, detail: String| {
        let outcome = match outcome {
            Outcome::UpToDate | Outcome::Held if plan.running_recalled.is_some() => {
                Outcome::Recalled
            }
            Outcome::UpToDate | Outcome::Held if plan.disarm.is_some() => Outcome::Disarmed,
            o => o,
        };
        let mut all = notes.clone();
        all.push(detail);
        (outcome, all.join("; "))
    };
    let version = match plan.decision {
        PollDecision::UpToDate { running, latest } => {
            return Ok(with_notes(
                Outcome::UpToDate,
                format!("up to date: running {running}, the channel offers {latest}"),
            ))
        }
        PollDecision::Hold { version, reason } => {
            return Ok(with_notes(
                Outcome::Held,
                format!("not taking {version}: {reason}"),
            ))
        }
        PollDecision::Armed { version } => {
            return Ok(with_notes(
                Outcome::Applied,
                format!("{version} is armed in slot {target} and boots at the next reboot"),
            ))
        }
        PollDecision::ApplyStaged { version } => version,
        PollDecision::Install { version, bundle } => {
            let rollout = if doc.rollout == Percent::ALL {
                String::new()
            } else {
                device
                    .node_id
                    .as_ref()
                    .map(|id| {
                        format!(
                            "; rollout at {} %, this node's bucket is {}",
                            doc.rollout,
                            Bucket::of(id, &doc.version)
                        )
                    })
                    .unwrap_or_default()
            };
            info!(
                "update poll: {version} is on the channel ({}{rollout}); checking {bundle}",
                doc.size
                    .map(|s| format!("{s} bytes"))
                    .unwrap_or_else(|| "size not given".into())
            );
            let mut how = String::new();
            let board = device.release.board;
            let delta = doc.delta_for(&device.release.version).and_then(|d| {
                info!(
                    "update poll: the channel has a delta from {} ({}); checking {}",
                    d.from,
                    d.size
                        .map(|s| format!("{s} bytes"))
                        .unwrap_or_else(|| "size not given".into()),
                    d.bundle
                );
                let wanted = Wanted {
                    version: &doc.version,
                    board,
                    base: Some(&d.from),
                };
                match stage_shared(fetcher, device, sharing, wanted, d.bundle.as_str()) {
                    Ok((report, from)) => {
                        how = format!(" from the delta from {}{from}", d.from);
                        Some(report)
                    }
                    Err(e) => {
                        // The full bundle is the answer to any delta that
                        // does not fit: another base, a damaged or missing
                        // file. Its own errors are the poll's.
                        warn!(
                            "update poll: the delta from {} did not stage ({e}); taking the full bundle",
                            d.from
                        );
                        how = format!(
                            " from the full bundle (the delta from {} did not stage: {e})",
                            d.from
                        );
                        None
                    }
                }
            });
            let report = match delta {
                Some(report) => report,
                None => {
                    let wanted = Wanted {
                        version: &doc.version,
                        board,
                        base: None,
                    };
                    let (report, from) = stage_shared(fetcher, device, sharing, wanted, &bundle)?;
                    how += &from;
                    report
                }
            };
            info!(
                "update poll: staged {} in slot {}{how}",
                report.bundle_version, report.target_slot
            );
            if mode == Mode::StageOnly {
                return Ok(with_notes(
                    Outcome::Staged,
                    format!("staged {version} in slot {target}{how}; not applied (--no-apply)"),
                ));
            }
            version
        }
    };
    if mode == Mode::StageOnly {
        return Ok(with_notes(
            Outcome::Staged,
            format!("{version} is staged in slot {target}; not applied (--no-apply)"),
        ));
    }
    apply(device)?;
    info!("update poll: {version} armed in slot {target}; rebooting");
    reboot().map_err(PollError::Reboot)?;
    Ok(with_notes(
        Outcome::Applied,
        format!("{version} armed in slot {target}; rebooting into it"),
    ))
}

#[cfg(test)]
mod tests;
