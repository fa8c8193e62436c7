//! Signed A/B updates on the device: `basalt-agent update check | stage |
//! apply | status | mark-good | revert`, and the boot's health decision.
//!
//! - `check` is a pure decision over the bundle's verified manifest and the
//!   running release.
//! - `stage` verifies the manifest's signatures before writing a byte, takes
//!   the inactive slot out of the boot menu, streams the root file system
//!   through zstd and SHA-256 straight into the slot's partition, reads it
//!   back, and puts the new kernel and initrd beside the old ones on the ESP.
//!   Any failure marks the inactive slot bad; the running slot and its boot
//!   entry are never touched.
//! - `apply` arms the boot loader: a loader entry with a boot counter (`+3`).
//! - After the reboot, `basalt-health.service` (ordered before
//!   `boot-complete.target`) runs [`health`]; `systemd-bless-boot` makes the
//!   entry permanent only if it passed. A failing trial reboots; after three
//!   tries systemd-boot starts the old slot, and [`on_boot`] records which
//!   version failed.
//! - [`poll`] reads the update channel and does all of the above on its own
//!   when cloud-config sets `basalt.update`.
//!
//! On a Raspberry Pi the boot loader is the Pi firmware ([`tryboot`]):
//! `apply --reboot` reboots with `0 tryboot` into a trial of the other slot,
//! the health check commits a good trial by replacing `autoboot.txt`, and a
//! trial that fails or crashes returns to the committed slot on its next
//! reboot. Staging a bundle into a Pi's boot slots is not implemented yet.
//!
//! A bundle source is a file, standard input, or an `http(s)://` URL read
//! through [`crate::fetch`], which resumes dropped downloads; the stream
//! reader verifies and hashes the same way whatever the source.

pub mod esp;
pub mod health;
pub mod poll;
pub mod share;
pub mod state;
pub mod tryboot;

use basalt_formats::boot::{BootInfo, BOOT_INFO_PATH};
use basalt_formats::bundle::stream::{Base, BundleError, BundleReader};
use basalt_formats::bundle::{
    check, Decision, Manifest, PayloadName, PublicKey, Reason, Sha256Digest, TrustPolicy,
};
use basalt_formats::entry::{Assessment, EntryName};
use basalt_formats::mesh::NodeId;
use basalt_formats::release::{Release, RELEASE_PATH};
use basalt_formats::Slot;
use esp::Esp;
use log::{error, info, warn};
use serde::Serialize;
use state::{SlotRecord, UpdateState};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Boot attempts a freshly applied slot gets.
pub const TRIES: u32 = 3;

/// What to do about a failed update step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// A passing fault (a dropped download): the same bundle may succeed later.
    Retry,
    /// This bundle will never install here: refused, badly signed or damaged.
    GiveUp,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("bundle refused: {0}")]
    Refused(Reason),
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("no trusted update keys: set basalt.update.trusted_keys in cloud-config")]
    NoTrust,
    #[error("trusted keys: {0}")]
    Policy(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("slot {slot} holds nothing staged; run `basalt-agent update stage BUNDLE` first")]
    NotStaged { slot: Slot },
    #[error(
        "the {payload} payload ({size} bytes) does not fit slot {slot}'s partition ({room} bytes)"
    )]
    TooBig {
        slot: Slot,
        payload: PayloadName,
        size: u64,
        room: u64,
    },
    #[error("slot {slot}'s {payload} read back with SHA-256 {found}, but the manifest says {expected}: the write did not stick")]
    ReadBack {
        slot: Slot,
        payload: PayloadName,
        expected: String,
        found: String,
    },
    #[error("no partition for slot {0} on the boot disk")]
    NoSlotDevice(Slot),
    #[error("the bundle is a delta from {base_version}: its {payload} payload is made against {expected_size} bytes with SHA-256 {expected}, but {what} holds {found}; install the full bundle")]
    WrongBase {
        base_version: String,
        payload: PayloadName,
        what: String,
        expected_size: u64,
        expected: Sha256Digest,
        found: String,
    },
    #[error("the bundle is version {found}, not {expected}")]
    WrongVersion { expected: String, found: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("tryboot: {0}")]
    Tryboot(String),
}

impl UpdateError {
    /// Whether this is a delta bundle for another base, which the full
    /// bundle of the same version may replace.
    pub fn full_bundle_may_do(&self) -> bool {
        match self {
            UpdateError::Refused(r) => r.full_bundle_may_do(),
            UpdateError::WrongBase { .. } => true,
            _ => false,
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            UpdateError::Bundle(e) if e.is_retryable() => Disposition::Retry,
            UpdateError::Io { .. } => Disposition::Retry,
            _ => Disposition::GiveUp,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// The device as an update sees it.
#[derive(Debug, Clone)]
pub struct Device {
    pub esp: Esp,
    /// The Pi firmware's tryboot, on Raspberry Pi boards (then `esp` is unused).
    pub tryboot: Option<tryboot::Tryboot>,
    pub state_dir: PathBuf,
    pub release: Release,
    pub boot: BootInfo,
    /// Block device of each slot's root partition.
    pub slot_devices: Vec<(Slot, PathBuf)>,
    /// Raspberry Pi: block device of each slot's FAT boot partition.
    pub boot_devices: Vec<(Slot, PathBuf)>,
    pub policy: Option<TrustPolicy>,
    /// The node's id, which places it in a staged rollout; why not, when
    /// the identity cannot be read.
    pub node_id: Result<NodeId, String>,
}

impl Device {
    /// Reads the running device's release, boot info, partitions and trusted keys.
    pub fn open() -> Result<Device, UpdateError> {
        let release: Release = read_json(Path::new(RELEASE_PATH))?;
        let boot: BootInfo = read_json(Path::new(BOOT_INFO_PATH))?;
        let disks = crate::disk::scan_disks(&crate::disk::SysRoots::default());
        let disk = disks
            .iter()
            .find(|d| d.dev_path.display().to_string() == boot.disk);
        let (mut slot_devices, mut boot_devices) = (Vec::new(), Vec::new());
        let node = |label: &str| {
            disk.and_then(|d| d.part(label))
                .and_then(|p| p.dev_path.clone())
        };
        for slot in Slot::ALL {
            if let Some(p) = node(&slot.root_label()) {
                slot_devices.push((slot, p));
            }
            if release.board.is_rpi() {
                if let Some(p) = node(&format!("boot-{slot}")) {
                    boot_devices.push((slot, p));
                }
            }
        }
        let policy = trust_policy_from_config()?;
        let tryboot = release
            .board
            .is_rpi()
            .then(|| tryboot::Tryboot::new(PathBuf::from(&boot.esp_device)));
        Ok(Device {
            esp: Esp::default(),
            tryboot,
            state_dir: PathBuf::from(state::STATE_DIR),
            release,
            boot,
            slot_devices,
            boot_devices,
            policy,
            node_id: crate::identity::NodeIdentity::load(Path::new(
                crate::identity::DEVICE_IDENTITY_DIR,
            ))
            .map(|id| id.node_id())
            .map_err(|e| e.to_string()),
        })
    }

    fn slot_device(&self, slot: Slot) -> Result<&Path, UpdateError> {
        self.slot_devices
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, p)| p.as_path())
            .ok_or(UpdateError::NoSlotDevice(slot))
    }

    /// Block device of a slot's partition payload: its root, or its Pi boot slot.
    fn partition(&self, name: PayloadName, slot: Slot) -> Result<&Path, UpdateError> {
        match name {
            PayloadName::Rootfs => self.slot_device(slot),
            PayloadName::Boot => self
                .boot_devices
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, p)| p.as_path())
                .ok_or_else(|| {
                    UpdateError::Unsupported(format!(
                        "payload boot is a Raspberry Pi boot slot; this device has no boot-{slot} partition"
                    ))
                }),
            other => Err(UpdateError::Unsupported(format!(
                "payload {other} is not written to a partition"
            ))),
        }
    }

    pub fn target(&self) -> Slot {
        self.boot.slot.other()
    }
}

/// On a Raspberry Pi, the boot FAT partition a card's `user-data` is put on
/// (partition 1, which holds `autoboot.txt`), mounted; `None` on other
/// boards, whose ESP systemd mounts on `/efi`.
pub fn pi_boot_partition() -> Option<Result<PathBuf, String>> {
    let release: Release = read_json(Path::new(RELEASE_PATH)).ok()?;
    if !release.board.is_rpi() {
        return None;
    }
    Some((|| {
        let boot: BootInfo = read_json(Path::new(BOOT_INFO_PATH)).map_err(|e| e.to_string())?;
        let t = tryboot::Tryboot::new(PathBuf::from(&boot.esp_device));
        t.ensure_mounted().map_err(|e| e.to_string())?;
        Ok(t.mount)
    })())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, UpdateError> {
    let bytes = std::fs::read(path).map_err(io_err(path.display().to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| UpdateError::Io {
        what: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The trust policy from the cloud-config in force (`basalt.update`).
pub fn trust_policy_from_config() -> Result<Option<TrustPolicy>, UpdateError> {
    let Some(config) = crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
    else {
        return Ok(None);
    };
    let Some(update) = config.basalt.and_then(|b| b.update) else {
        return Ok(None);
    };
    let keys = update
        .trusted_keys
        .iter()
        .map(|k| PublicKey::from_bytes(&k.0).map_err(|e| UpdateError::Policy(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    TrustPolicy::new(keys, update.threshold as usize)
        .map(Some)
        .map_err(|e| UpdateError::Policy(e.to_string()))
}

/// What `check` and `stage` report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub bundle_version: String,
    pub running_version: String,
    pub decision: String,
    pub install: bool,
    pub target_slot: Slot,
    /// A delta bundle's base version (checked against the running slot's bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_from: Option<String>,
}

fn decide(manifest: &Manifest, device: &Device) -> Result<CheckReport, UpdateError> {
    match check(manifest, &device.release) {
        Decision::Update { from, to } => Ok(CheckReport {
            bundle_version: to.to_string(),
            running_version: from.to_string(),
            decision: format!(
                "update {from} -> {to} into slot {}{}",
                device.target(),
                match &manifest.base_version {
                    Some(base) => format!(" (delta from {base}, its bases match this device)"),
                    None => String::new(),
                }
            ),
            install: true,
            target_slot: device.target(),
            delta_from: manifest.base_version.as_ref().map(|v| v.to_string()),
        }),
        Decision::Refuse(r) => Err(UpdateError::Refused(r)),
    }
}

/// `update check`: verifies the bundle's signatures and decides, writing
/// nothing. A delta bundle's bases are checked against the running slot.
pub fn check_bundle(source: impl Read, device: &Device) -> Result<CheckReport, UpdateError> {
    let policy = device.policy.as_ref().ok_or(UpdateError::NoTrust)?;
    let payloads = BundleReader::new(source)?.verify(policy)?;
    let report = decide(payloads.manifest(), device)?;
    delta_bases(payloads.manifest(), device)?;
    Ok(report)
}

/// The bases of a delta bundle's payloads on this device, each checked
/// against the manifest's size and SHA-256: the running root slot (mapped,
/// not copied), the running slot's kernel and initrd on the ESP. Empty for
/// a full bundle.
pub fn delta_bases(
    manifest: &Manifest,
    device: &Device,
) -> Result<Vec<(PayloadName, Base)>, UpdateError> {
    let Some(base_version) = &manifest.base_version else {
        return Ok(Vec::new());
    };
    let running = device.boot.slot;
    let mut bases = Vec::new();
    for p in &manifest.payloads {
        let Some(want) = p.base else { continue };
        let wrong = |what: String, found: String| UpdateError::WrongBase {
            base_version: base_version.to_string(),
            payload: p.name,
            what,
            expected_size: want.size,
            expected: want.sha256,
            found,
        };
        let (what, base): (String, Base) = match p.name {
            PayloadName::Rootfs | PayloadName::Boot => {
                let dev = device.partition(p.name, running)?;
                let what = format!("running slot {running}'s {} ({})", p.name, dev.display());
                let file = std::fs::File::open(dev).map_err(io_err(dev.display().to_string()))?;
                let len = (&file)
                    .seek(SeekFrom::End(0))
                    .map_err(io_err(dev.display().to_string()))?;
                if want.size > len || want.size == 0 {
                    return Err(wrong(what, format!("{len} bytes")));
                }
                // SAFETY: the running slot is the mounted read-only root,
                // and a Pi's running boot slot is never mounted; nothing on
                // the device writes to either partition, so the mapped
                // bytes do not change under the decoder.
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .len(want.size as usize)
                        .map(&file)
                }
                .map_err(io_err(format!("mapping {}", dev.display())))?;
                (what, std::sync::Arc::new(map))
            }
            PayloadName::Kernel | PayloadName::Initrd => {
                let path = device.esp.slot_file(running, esp_file(p.name));
                let bytes = std::fs::read(&path).map_err(io_err(path.display().to_string()))?;
                (path.display().to_string(), std::sync::Arc::new(bytes))
            }
        };
        let bytes = (*base).as_ref();
        if bytes.len() as u64 != want.size {
            return Err(wrong(what, format!("{} bytes", bytes.len())));
        }
        let found = Sha256Digest::of(bytes);
        if found != want.sha256 {
            return Err(wrong(what, format!("SHA-256 {found}")));
        }
        bases.push((p.name, base));
    }
    info!("delta bundle from {base_version}: every base matches the running slot {running}");
    Ok(bases)
}

/// The ESP file of a boot payload.
fn esp_file(name: PayloadName) -> &'static str {
    match name {
        PayloadName::Kernel => "vmlinuz",
        _ => "initrd",
    }
}

/// Where a bundle can be read again from any byte: a file, or a URL (a
/// `Range` request). Staging from one can go on after an interruption.
pub trait Reopen {
    /// The bundle from byte `offset` on.
    fn open_at(&self, offset: u64) -> Result<Box<dyn Read + '_>, UpdateError>;
}

/// A bundle in a file.
#[derive(Debug, Clone)]
pub struct FileSource(pub PathBuf);

impl Reopen for FileSource {
    fn open_at(&self, offset: u64) -> Result<Box<dyn Read + '_>, UpdateError> {
        let mut f = std::fs::File::open(&self.0).map_err(io_err(self.0.display().to_string()))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_err(self.0.display().to_string()))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }
}

/// A bundle at an `http(s)://` URL.
#[derive(Debug, Clone)]
pub struct UrlSource<'a> {
    pub fetcher: &'a crate::fetch::Fetcher,
    pub url: String,
}

impl UrlSource<'_> {
    /// The download from byte `offset` on, its failure as an update error
    /// naming the URL.
    pub fn download_at(&self, offset: u64) -> Result<crate::fetch::Download, UpdateError> {
        self.fetcher
            .open_at(&self.url, offset)
            .map_err(|e| UpdateError::Io {
                what: self.url.clone(),
                source: std::io::Error::other(e),
            })
    }
}

impl Reopen for UrlSource<'_> {
    fn open_at(&self, offset: u64) -> Result<Box<dyn Read + '_>, UpdateError> {
        let d = self.download_at(offset)?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, d)))
    }
}

/// Root file system bytes written between two records of how far staging
/// got (each syncs the slot).
pub const RESUME_EVERY: u64 = 32 << 20;

/// `update stage`: writes the inactive slot from the bundle. See the module docs.
pub fn stage(source: impl Read, device: &Device) -> Result<CheckReport, UpdateError> {
    stage_with(Box::new(source), None, device, None)
}

/// [`stage`] from a source that can be read again from any byte: a stage of
/// the same bundle that was interrupted (a dropped download, a power cut, a
/// reboot) goes on from the last frame boundary it recorded, after checking
/// the bundle's signatures again.
pub fn stage_resumable(source: &dyn Reopen, device: &Device) -> Result<CheckReport, UpdateError> {
    stage_with(source.open_at(0)?, Some(source), device, None)
}

/// [`stage_resumable`] of a bundle that must be of `version`, checked with
/// the signatures, before anything is written: for a bundle from a source
/// that is trusted to say nothing about which version to install (a mesh
/// peer), so that it cannot make the device take another signed version
/// than the channel's.
pub fn stage_resumable_expecting(
    source: &dyn Reopen,
    device: &Device,
    version: &semver::Version,
) -> Result<CheckReport, UpdateError> {
    stage_with(source.open_at(0)?, Some(source), device, Some(version))
}

fn stage_with(
    source: Box<dyn Read + '_>,
    reopen: Option<&dyn Reopen>,
    device: &Device,
    expect: Option<&semver::Version>,
) -> Result<CheckReport, UpdateError> {
    let policy = device.policy.as_ref().ok_or(UpdateError::NoTrust)?;
    let head = BundleReader::new(source)?;
    let manifest_sha256 = Sha256Digest::of(head.manifest_bytes()).to_string();
    let payloads = head.verify(policy)?;
    if let Some(want) = expect {
        let found = &payloads.manifest().version;
        if found != want {
            return Err(UpdateError::WrongVersion {
                expected: want.to_string(),
                found: found.to_string(),
            });
        }
    }
    let report = decide(payloads.manifest(), device)?;
    let mut bases = delta_bases(payloads.manifest(), device)?;
    let manifest = payloads.manifest().clone();
    let target = device.target();
    let version = manifest.version.to_string();
    let mut st = UpdateState::load(&device.state_dir).map_err(io_err("update state"))?;
    let resume = match (reopen, st.get(target)) {
        (
            Some(_),
            Some(SlotRecord::Writing {
                version: v,
                resume: Some(r),
            }),
        ) if *v == version && r.manifest_sha256 == manifest_sha256 => Some(r.clone()),
        _ => None,
    };

    // From here on the target slot is not bootable until apply. (A Pi's
    // firmware starts the other slot only on a trial, which `apply` arms.)
    if device.tryboot.is_none() {
        device
            .esp
            .remove_entries(target)
            .map_err(io_err(format!("removing slot {target}'s loader entry")))?;
    }
    st.set(
        target,
        SlotRecord::Writing {
            version: version.clone(),
            resume: resume.clone(),
        },
    );
    st.write(&device.state_dir)
        .map_err(io_err("update state"))?;

    let mut last_point = resume.clone();
    let result = (|| -> Result<(), UpdateError> {
        let mut take_base = |name: PayloadName| {
            let i = bases.iter().position(|(n, _)| *n == name)?;
            Some(bases.swap_remove(i).1)
        };
        let mut payloads = match (&resume, reopen) {
            (Some(r), Some(reopen)) => {
                let name = manifest
                    .payloads
                    .get(r.payload)
                    .map(|p| p.name)
                    .ok_or_else(|| UpdateError::Unsupported(format!("no payload {}", r.payload)))?;
                info!(
                    "resuming slot {target} at byte {} of {name} ({} bytes into the bundle's member)",
                    r.uncompressed, r.compressed
                );
                let inner =
                    reopen.open_at(payloads.member_data_offset(r.payload) + r.compressed)?;
                // Payloads before it were written before the interruption.
                payloads.resume(
                    inner,
                    r.payload,
                    r.compressed,
                    r.uncompressed,
                    take_base(name),
                )?
            }
            _ => payloads,
        };
        loop {
            let base = payloads.peek().and_then(|next| take_base(next.name));
            let Some(mut p) = payloads.next_payload_from(base)? else {
                break;
            };
            let payload = p.payload().clone();
            let index = manifest
                .payloads
                .iter()
                .position(|q| q.name == payload.name)
                .expect("the payload is the manifest's");
            match payload.name {
                PayloadName::Rootfs | PayloadName::Boot => {
                    let dev_path = device.partition(payload.name, target)?.to_path_buf();
                    let mut dev = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&dev_path)
                        .map_err(io_err(dev_path.display().to_string()))?;
                    let room = dev
                        .seek(SeekFrom::End(0))
                        .map_err(io_err(dev_path.display().to_string()))?;
                    if payload.size > room {
                        return Err(UpdateError::TooBig {
                            slot: target,
                            payload: payload.name,
                            size: payload.size,
                            room,
                        });
                    }
                    let start = p.boundary().map_or(0, |(_, u)| u);
                    dev.seek(SeekFrom::Start(start))
                        .map_err(io_err(dev_path.display().to_string()))?;
                    info!(
                        "writing {} bytes of {} to {}{}",
                        payload.size - start,
                        match payload.name {
                            PayloadName::Boot => "boot slot",
                            _ => "root file system",
                        },
                        dev_path.display(),
                        if start > 0 {
                            format!(" from byte {start}")
                        } else {
                            String::new()
                        }
                    );
                    // A failed read is the bundle's (truncated, corrupt);
                    // a failed write is the slot device's.
                    let write_err =
                        || io_err(format!("writing slot {target} ({})", dev_path.display()));
                    let mut buf = vec![0u8; 1 << 20];
                    let mut recorded = start;
                    loop {
                        let n = match p.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(BundleError::from_io(e).into()),
                        };
                        dev.write_all(&buf[..n]).map_err(write_err())?;
                        // Record how far it got, once the bytes are on the slot.
                        match p.boundary() {
                            Some((c, u)) if reopen.is_some() && u >= recorded + RESUME_EVERY => {
                                dev.sync_data().map_err(write_err())?;
                                let point = state::ResumePoint {
                                    manifest_sha256: manifest_sha256.clone(),
                                    payload: index,
                                    compressed: c,
                                    uncompressed: u,
                                };
                                st.set(
                                    target,
                                    SlotRecord::Writing {
                                        version: version.clone(),
                                        resume: Some(point.clone()),
                                    },
                                );
                                st.write(&device.state_dir)
                                    .map_err(io_err("update state"))?;
                                last_point = Some(point);
                                recorded = u;
                            }
                            _ => {}
                        }
                    }
                    p.finish()?;
                    dev.sync_all()
                        .map_err(io_err(dev_path.display().to_string()))?;
                    drop(dev);
                    let found = hash_prefix(&dev_path, payload.size)
                        .map_err(io_err(format!("reading back {}", dev_path.display())))?;
                    if found != payload.sha256.to_string() {
                        return Err(UpdateError::ReadBack {
                            slot: target,
                            payload: payload.name,
                            expected: payload.sha256.to_string(),
                            found,
                        });
                    }
                }
                PayloadName::Kernel | PayloadName::Initrd if device.tryboot.is_some() => {
                    return Err(UpdateError::Unsupported(format!(
                        "payload {} is a UEFI boot file; a Raspberry Pi boots its slot's boot partition (payload boot)",
                        payload.name
                    )));
                }
                PayloadName::Kernel | PayloadName::Initrd => {
                    let file = esp_file(payload.name);
                    device.esp.write_new(target, file, &mut p).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            BundleError::from_io(e).into()
                        } else {
                            UpdateError::Io {
                                what: format!("ESP basalt/{target}/{file}.new"),
                                source: e,
                            }
                        }
                    })?;
                    p.finish()?;
                }
            }
        }
        payloads.finish()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            st.set(
                target,
                SlotRecord::Staged {
                    version: version.clone(),
                },
            );
            st.write(&device.state_dir)
                .map_err(io_err("update state"))?;
            info!("staged {version} in slot {target}");
            Ok(report)
        }
        Err(e) if e.disposition() == Disposition::Retry && last_point.is_some() => {
            let at = last_point.as_ref().map_or(0, |p| p.uncompressed);
            error!(
                "staging {version} into slot {target} stopped: {e}; staging the same bundle again goes on from byte {at}"
            );
            Err(e)
        }
        Err(e) => {
            error!("staging {version} into slot {target} failed: {e}");
            st.set(
                target,
                SlotRecord::Bad {
                    version,
                    reason: e.to_string(),
                },
            );
            st.write(&device.state_dir)
                .map_err(io_err("update state"))?;
            Err(e)
        }
    }
}

fn hash_prefix(path: &Path, len: u64) -> std::io::Result<String> {
    Ok(Sha256Digest::of_reader(std::fs::File::open(path)?.take(len))?.to_string())
}

/// `update apply`: arms the boot loader to try the staged slot on the next boot.
pub fn apply(device: &Device) -> Result<Slot, UpdateError> {
    let target = device.target();
    let mut st = UpdateState::load(&device.state_dir).map_err(io_err("update state"))?;
    if let Some(t) = &device.tryboot {
        match t.state().map_err(io_err("tryboot state"))? {
            basalt_formats::tryboot::TrybootState::Committed { slot } if slot != target => {}
            other => {
                return Err(UpdateError::Tryboot(format!(
                    "cannot arm a trial now: {other:?}"
                )))
            }
        }
    }
    let version = match st.get(target) {
        Some(SlotRecord::Staged { version }) => version.clone(),
        // On a Pi, again after an apply whose reboot did not happen.
        Some(SlotRecord::Trying { version }) if device.tryboot.is_some() => version.clone(),
        _ => return Err(UpdateError::NotStaged { slot: target }),
    };
    let armed = if device.tryboot.is_some() {
        // The boot loader is armed by the reboot's argument (`0 tryboot`,
        // see [`reboot_into_armed`]); only the record changes here.
        format!(
            "armed: the reboot with {:?} tries it once",
            basalt_formats::tryboot::TRYBOOT_REBOOT_ARG
        )
    } else {
        arm_loader_entry(device, target, &version)?;
        format!("armed with {TRIES} tries; it boots next")
    };
    st.set(
        target,
        SlotRecord::Trying {
            version: version.clone(),
        },
    );
    st.write(&device.state_dir)
        .map_err(io_err("update state"))?;
    info!("slot {target} ({version}) {armed}");
    Ok(target)
}

/// UEFI: promotes the staged kernel and initrd of `target` and writes its
/// loader entry with a boot counter, from the running slot's entry.
fn arm_loader_entry(device: &Device, target: Slot, version: &str) -> Result<(), UpdateError> {
    for file in ["vmlinuz", "initrd"] {
        if device.esp.has_new(target, file) {
            device
                .esp
                .promote(target, file)
                .map_err(io_err(format!("ESP basalt/{target}/{file}")))?;
        }
    }
    let running = device
        .esp
        .entry(device.boot.slot)
        .map_err(io_err("reading loader entries"))?
        .ok_or_else(|| UpdateError::Io {
            what: "loader entries".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no entry for the running slot {}", device.boot.slot),
            ),
        })?;
    let template = device
        .esp
        .read_entry(&running)
        .map_err(io_err(format!("reading {running}")))?;
    let title = format!("{} {version} (slot {target})", device.release.name);
    device
        .esp
        .write_entry(
            target,
            TRIES,
            &esp::entry_for(&template, target, version, &title),
        )
        .map_err(io_err("writing the loader entry"))
}

/// `update revert`: cancels an armed update, or gives up on the running trial.
pub fn revert(device: &Device) -> Result<String, UpdateError> {
    if let Some(t) = &device.tryboot {
        return match t.state().map_err(io_err("tryboot state"))? {
            basalt_formats::tryboot::TrybootState::Trial { slot } => Ok(format!(
                "slot {slot} is on trial and not committed: the next reboot starts slot {}",
                slot.other()
            )),
            s => Ok(format!("nothing armed ({s:?})")),
        };
    }
    let target = device.target();
    let running = device.boot.slot;
    let entry = device
        .esp
        .entry(running)
        .map_err(io_err("reading loader entries"))?;
    if entry.is_some_and(|e| e.counter.is_some()) {
        device
            .esp
            .mark_bad(running)
            .map_err(io_err("marking the running slot bad"))?;
        return Ok(format!(
            "slot {running} marked bad: the next boot starts slot {target}"
        ));
    }
    let mut st = UpdateState::load(&device.state_dir).map_err(io_err("update state"))?;
    device
        .esp
        .remove_entries(target)
        .map_err(io_err("removing the armed entry"))?;
    if let Some(r) = st.get(target).cloned() {
        st.set(
            target,
            SlotRecord::Bad {
                version: r.version().to_string(),
                reason: "reverted by the operator".into(),
            },
        );
        st.write(&device.state_dir)
            .map_err(io_err("update state"))?;
    }
    Ok(format!(
        "slot {target} taken out of the boot menu; slot {running} stays"
    ))
}

/// `update mark-good`: makes the running slot permanent now.
pub fn mark_good(device: &Device) -> Result<bool, UpdateError> {
    if let Some(t) = &device.tryboot {
        return match t.commit() {
            Ok(tryboot::Committed::Now(slot)) => {
                info!("slot {slot} committed in autoboot.txt");
                // As the next boot's reconciliation would find it.
                reconcile_on_boot(device);
                Ok(true)
            }
            Ok(tryboot::Committed::Already) => Ok(false),
            Err(e) => Err(UpdateError::Tryboot(e.to_string())),
        };
    }
    device
        .esp
        .bless(device.boot.slot)
        .map_err(io_err("blessing the running slot"))
}

/// What `update status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub running_slot: Slot,
    pub running_version: String,
    pub entries: Vec<EntryReport>,
    pub state: UpdateState,
    /// Raspberry Pi: where the firmware's tryboot stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tryboot: Option<String>,
    /// The last poll of the update channel, if any.
    pub poll: Option<poll::PollRecord>,
    /// The bundle kept for mesh peers, if any ([`share`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<basalt_formats::mesh::BundleAd>,
}

impl StatusReport {
    /// `update status` without `--json`: one line each, a recalled running
    /// version first and in capitals, as it needs someone to act.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if let Some(v) = self.poll.as_ref().and_then(|p| p.running_recalled.as_ref()) {
            out += &format!("RECALLED: {}\n", poll::running_recalled_line(v));
        }
        out += &format!(
            "running slot {} ({})\n",
            self.running_slot, self.running_version
        );
        if let Some(t) = &self.tryboot {
            out += &format!("tryboot: {t}\n");
        }
        for e in &self.entries {
            out += &format!("entry {} ({:?})\n", e.file, e.assessment);
        }
        for slot in Slot::ALL {
            if let Some(SlotRecord::Writing { version, resume }) = self.state.get(slot) {
                out += &format!(
                    "slot {slot}: {version} being written{}\n",
                    match resume {
                        Some(r) => format!(
                            "; staging the same bundle goes on from byte {}",
                            r.uncompressed
                        ),
                        None => String::new(),
                    }
                );
            }
        }
        for f in &self.state.failed {
            out += &format!(
                "failed update: {} in slot {} rolled back\n",
                f.version, f.slot
            );
        }
        for b in &self.shared {
            out += &format!(
                "kept for mesh peers: {} for {} ({} bytes, manifest {})\n",
                b.version, b.board, b.size, b.manifest_sha256
            );
        }
        if let Some(p) = &self.poll {
            out += &format!(
                "last poll of {} at {} (UNIX time): {}{}\n",
                p.channel,
                p.at,
                p.detail,
                p.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        out.trim_end().to_string()
    }
}

#[derive(Debug, Serialize)]
pub struct EntryReport {
    pub slot: Slot,
    pub file: String,
    pub assessment: Assessment,
}

pub fn status(device: &Device) -> Result<StatusReport, UpdateError> {
    let (entries, tryboot) = match &device.tryboot {
        Some(t) => (
            Vec::new(),
            Some(match t.state() {
                Ok(s) => format!("{s:?}"),
                Err(e) => format!("unknown: {e}"),
            }),
        ),
        None => (
            device
                .esp
                .entries()
                .map_err(io_err("reading loader entries"))?,
            None,
        ),
    };
    Ok(StatusReport {
        running_slot: device.boot.slot,
        running_version: device.release.version.to_string(),
        entries: entries
            .iter()
            .map(|e| EntryReport {
                slot: e.slot,
                file: e.to_string(),
                assessment: e.assessment(),
            })
            .collect(),
        state: UpdateState::load(&device.state_dir).map_err(io_err("update state"))?,
        tryboot,
        poll: poll::PollRecord::load(&device.state_dir),
        shared: share::BundleCache::in_state_dir(&device.state_dir).list(),
    })
}

/// UNIX seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reboots into the slot [`apply`] armed: on a Raspberry Pi with the
/// argument `0 tryboot`, which makes the firmware start the trial slot once;
/// elsewhere a plain reboot, since the loader entry is armed.
pub fn reboot_into_armed(device: &Device) -> Result<(), String> {
    if device.tryboot.is_some() {
        tryboot::reboot_into_trial()
    } else {
        reboot()
    }
}

/// Reboots through systemd (`systemctl reboot`, which asks logind), so
/// services stop in order and file systems are synced.
pub fn reboot() -> Result<(), String> {
    let status = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .map_err(|e| format!("systemctl reboot: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("systemctl reboot: {status}"))
    }
}

/// Reconciles the recorded state with where the boot loader went: the
/// running slot holds the running version; an armed slot we did not boot
/// whose entry ran out of tries was rolled back. Pure; returns what changed.
pub fn on_boot(
    mut st: UpdateState,
    running: Slot,
    running_version: &str,
    entries: &[EntryName],
    now: u64,
) -> (UpdateState, Vec<String>) {
    let mut events = Vec::new();
    let entry = |slot: Slot| entries.iter().find(|e| e.slot == slot);
    // `apply` writes the counting entry before the state: a power cut
    // between the two boots the new slot on trial with its record still
    // `staged`. It is a trial all the same, so that a failure is noticed.
    if let (Some(SlotRecord::Staged { version }), Some(e)) = (st.get(running), entry(running)) {
        if version == running_version && e.counter.is_some() {
            events.push(format!(
                "slot {running} was armed for {version} but the state still said staged; on trial"
            ));
            st.set(
                running,
                SlotRecord::Trying {
                    version: version.clone(),
                },
            );
        }
    }
    match (
        st.get(running).cloned(),
        entry(running).map(|e| e.assessment()),
    ) {
        (Some(SlotRecord::Trying { version }), Some(Assessment::Good)) => {
            events.push(format!("update to {version} committed in slot {running}"));
            st.set(running, SlotRecord::Installed { version });
        }
        (Some(SlotRecord::Trying { .. }), _) => {}
        _ => st.set(
            running,
            SlotRecord::Installed {
                version: running_version.to_string(),
            },
        ),
    }
    let other = running.other();
    if let Some(SlotRecord::Trying { version }) = st.get(other).cloned() {
        if entry(other).is_none_or(|e| e.assessment() == Assessment::Bad) {
            events.push(format!(
                "update to {version} in slot {other} did not come up healthy; rolled back to {running_version} in slot {running}"
            ));
            st.record_failure(version.clone(), other, now);
            st.set(
                other,
                SlotRecord::Bad {
                    version,
                    reason: "failed its boot health checks; the boot loader fell back".into(),
                },
            );
        }
    }
    (st, events)
}

/// Runs [`on_boot`] against the device and writes the result. Called by the service at start.
pub fn reconcile_on_boot(device: &Device) {
    let entries = if let Some(t) = &device.tryboot {
        match t.state() {
            Ok(basalt_formats::tryboot::TrybootState::Corrupt { error, .. }) => {
                error!("autoboot.txt is corrupt, left as it is: {error}");
                return;
            }
            Ok(s) => {
                info!("tryboot: {s:?}");
                tryboot::as_entries(&s)
            }
            Err(e) => {
                warn!("tryboot: {e}");
                return;
            }
        }
    } else {
        match device.esp.entries() {
            Ok(e) => e,
            Err(e) => {
                warn!("update state: cannot read loader entries: {e}");
                return;
            }
        }
    };
    let st = match UpdateState::load(&device.state_dir) {
        Ok(s) => s,
        Err(e) => {
            warn!("update state: {e}");
            UpdateState::default()
        }
    };
    let now = now();
    let (new, events) = on_boot(
        st.clone(),
        device.boot.slot,
        &device.release.version.to_string(),
        &entries,
        now,
    );
    for e in &events {
        if e.contains("did not come up healthy") {
            error!("{e}");
        } else {
            info!("{e}");
        }
    }
    if new != st {
        if let Err(e) = new.write(&device.state_dir) {
            warn!("update state: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
