//! First-boot provisioning from cloud-config, on every start of the agent.
//!
//! 1. Read every source, in the documented order: the image's default
//!    (`/usr/lib/basalt/cloud-config.yaml`), `user-data` on the boot FAT
//!    partition, a NoCloud `CIDATA` volume (`user-data`, `meta-data`), the
//!    kernel command line (`basalt.cloud-config=`), and the document at the
//!    URL the command line names (`basalt.cloud-config-url=`), fetched with
//!    retries for up to a minute while the network comes up.
//! 2. If every source parses and validates, merge them; otherwise keep the
//!    last good set, and report the error (source, line, field) in the
//!    journal and in `basalt-agent status`. A bad config never stops a boot.
//! 3. Apply: `bootcmd`, host name, time zone and NTP, and files marked
//!    `reapply` on every boot; users, keys, the other files and `runcmd` once
//!    per instance. The instance's marker is written only when all of it
//!    succeeded, so a failed first boot is retried on the next.
//!
//! Everything the device is asked to do goes through [`host::Host`], so the
//! order and the run-once rules are tested against a fake.

pub mod host;
pub mod sources;

use basalt_formats::cloud_config::{
    self, CloudConfig, CloudConfigError, InstanceId, Merged, SourceKind,
};
use host::Host;
use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use sources::SourceText;
use std::path::{Path, PathBuf};

/// Where provisioning keeps its state: markers, the last good sources, status.
pub const STATE_DIR: &str = "/data/basalt/provision";

/// What provisioning did on this boot, for `basalt-agent status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProvisionStatus {
    /// Sources read on this boot: kind, name, and the error if it was rejected.
    pub sources: Vec<SourceStatus>,
    /// The instance whose configuration is in force.
    pub instance_id: Option<String>,
    /// True when this boot's sources were all valid; false when the last good set was used.
    pub config_current: bool,
    /// True when the once-per-instance part has completed for `instance_id`.
    pub once_done: bool,
    /// Every error of this boot, one line each, naming source and field.
    pub errors: Vec<String>,
    /// Which source set each top-level key.
    pub provenance: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub kind: String,
    pub name: String,
    pub error: Option<String>,
}

/// One source read and checked.
struct Parsed {
    text: SourceText,
    config: Result<CloudConfig, CloudConfigError>,
}

fn parse_all(texts: Vec<SourceText>) -> Vec<Parsed> {
    texts
        .into_iter()
        .map(|text| {
            let config = match text.kind {
                sources::Kind::MetaData => {
                    cloud_config::NoCloudMetaData::parse(&text.name, &text.text)
                        .map(|m| m.to_cloud_config())
                }
                _ => CloudConfig::parse(&text.name, &text.text),
            };
            Parsed { text, config }
        })
        .collect()
}

fn merge_parsed(parsed: &[Parsed]) -> (Merged, Option<cloud_config::NoCloudMetaData>) {
    let mut meta = None;
    let mut list = Vec::new();
    for p in parsed {
        if let Ok(c) = &p.config {
            list.push((p.text.kind.source_kind(), p.text.name.clone(), c.clone()));
        }
        if p.text.kind == sources::Kind::MetaData {
            meta = cloud_config::NoCloudMetaData::parse(&p.text.name, &p.text.text).ok();
        }
    }
    (cloud_config::merge(list), meta)
}

/// Reads, merges and applies the configuration. Never fails: every problem
/// ends up in the returned status (and the journal).
pub fn provision(
    found: Vec<SourceText>,
    read_errors: Vec<String>,
    state_dir: &Path,
    host: &mut dyn Host,
) -> ProvisionStatus {
    let mut status = ProvisionStatus::default();
    for e in &read_errors {
        error!("cloud-config source unreadable: {e}");
    }
    status.errors.extend(read_errors.iter().cloned());
    let parsed = parse_all(found);
    for p in &parsed {
        let err = p.config.as_ref().err().map(|e| e.to_string());
        if let Some(e) = &err {
            error!(cloud_config_source = p.text.name.as_str(); "cloud-config rejected: {e}");
            status.errors.push(e.clone());
        }
        status.sources.push(SourceStatus {
            kind: p.text.kind.source_kind().name().to_string(),
            name: p.text.name.clone(),
            error: err,
        });
    }

    let all_valid = read_errors.is_empty() && parsed.iter().all(|p| p.config.is_ok());
    let (merged, meta, texts_in_force) = if all_valid {
        let (m, meta) = merge_parsed(&parsed);
        (
            m,
            meta,
            parsed.iter().map(|p| p.text.clone()).collect::<Vec<_>>(),
        )
    } else {
        match load_last_good(state_dir) {
            Some(texts) => {
                warn!(
                    "keeping the last good configuration ({} sources)",
                    texts.len()
                );
                let last = parse_all(texts.clone());
                let (m, meta) = merge_parsed(&last);
                (m, meta, texts)
            }
            None => {
                warn!("no earlier good configuration: using the valid sources of this boot only");
                let (m, meta) = merge_parsed(&parsed);
                (m, meta, Vec::new())
            }
        }
    };
    status.config_current = all_valid;
    status.provenance = merged
        .provenance
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.iter()
                    .map(|s| format!("{} ({})", s.name, s.kind.name()))
                    .collect(),
            )
        })
        .collect();
    let config = merged.config;
    let instance: InstanceId = cloud_config::instance_id(meta.as_ref(), &config);
    status.instance_id = Some(instance.as_str().to_string());
    let marker = state_dir.join("done").join(marker_name(instance.as_str()));
    let once_already = marker.exists();

    let mut ok = true;
    let fail = |status: &mut ProvisionStatus, what: String| {
        error!("{what}");
        status.errors.push(what);
    };

    // Every boot, early.
    for (i, c) in config.bootcmd.iter().enumerate() {
        if let Err(e) = host.run(c) {
            fail(&mut status, format!("bootcmd[{i}]: {e}"));
        }
    }
    if let Some(h) = config.fqdn.as_ref().or(config.hostname.as_ref()) {
        if let Err(e) = host.set_hostname(h.as_str()) {
            fail(&mut status, format!("hostname {}: {e}", h.as_str()));
        }
    }
    if let Some(tz) = &config.timezone {
        if let Err(e) = host.set_timezone(tz.as_str()) {
            fail(&mut status, format!("timezone {}: {e}", tz.as_str()));
        }
    }
    if let Some(ntp) = &config.ntp {
        if let Err(e) = host.set_ntp(ntp) {
            fail(&mut status, format!("ntp: {e}"));
        }
    }
    for f in config.write_files.iter().filter(|f| f.reapply) {
        if let Err(e) = host.write_file(f) {
            fail(&mut status, format!("write_files {}: {e}", f.path.as_str()));
        }
    }

    // Once per instance.
    if once_already {
        info!("instance {} already provisioned", instance.as_str());
    } else {
        info!("provisioning instance {}", instance.as_str());
        for u in &config.users {
            if let Err(e) = host.ensure_user(u) {
                ok = false;
                fail(&mut status, format!("users {}: {e}", u.name.as_str()));
            }
        }
        if !config.ssh_authorized_keys.is_empty() {
            if let Err(e) = host.authorize_keys("root", &config.ssh_authorized_keys) {
                ok = false;
                fail(&mut status, format!("ssh_authorized_keys: {e}"));
            }
        }
        for f in config.write_files.iter().filter(|f| !f.reapply) {
            if let Err(e) = host.write_file(f) {
                ok = false;
                fail(&mut status, format!("write_files {}: {e}", f.path.as_str()));
            }
        }
        for (i, c) in config.runcmd.iter().enumerate() {
            if let Err(e) = host.run(c) {
                ok = false;
                fail(&mut status, format!("runcmd[{i}]: {e}"));
            }
        }
        if ok {
            if let Err(e) = write_marker(&marker) {
                fail(&mut status, format!("{}: {e}", marker.display()));
            }
        }
    }
    status.once_done = marker.exists();
    if all_valid {
        if let Err(e) = save_last_good(state_dir, &texts_in_force) {
            fail(
                &mut status,
                format!("saving the last good configuration: {e}"),
            );
        }
    }
    if let Err(e) = save_status(state_dir, &status) {
        error!("writing the provisioning status: {e}");
    }
    status
}

fn marker_name(instance: &str) -> String {
    instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_marker(marker: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(marker.parent().expect("marker has a parent"))?;
    atomic_write(marker, b"done\n", 0o644)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a
/// power cut leaves either the old or the new file.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("basalt-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn last_good_path(state_dir: &Path) -> PathBuf {
    state_dir.join("last-good.json")
}

fn save_last_good(state_dir: &Path, texts: &[SourceText]) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    atomic_write(
        &last_good_path(state_dir),
        &serde_json::to_vec_pretty(texts).expect("serialises"),
        0o600,
    )
}

fn load_last_good(state_dir: &Path) -> Option<Vec<SourceText>> {
    let bytes = std::fs::read(last_good_path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The configuration in force: the last good set of sources, merged.
pub fn current_config(state_dir: &Path) -> Option<CloudConfig> {
    let texts = load_last_good(state_dir)?;
    Some(merge_parsed(&parse_all(texts)).0.config)
}

pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

fn save_status(state_dir: &Path, status: &ProvisionStatus) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    atomic_write(
        &status_path(state_dir),
        &serde_json::to_vec_pretty(status).expect("serialises"),
        0o644,
    )
}

/// The status the last run wrote, for `basalt-agent status`.
pub fn load_status(state_dir: &Path) -> Option<ProvisionStatus> {
    serde_json::from_slice(&std::fs::read(status_path(state_dir)).ok()?).ok()
}

impl sources::Kind {
    fn source_kind(self) -> SourceKind {
        match self {
            sources::Kind::ImageDefault => SourceKind::ImageDefault,
            sources::Kind::BootPartition => SourceKind::BootPartition,
            sources::Kind::NoCloudUserData | sources::Kind::MetaData => SourceKind::NoCloud,
            sources::Kind::KernelCmdline => SourceKind::KernelCmdline,
            sources::Kind::Url => SourceKind::Url,
        }
    }
}

#[cfg(test)]
mod tests;
