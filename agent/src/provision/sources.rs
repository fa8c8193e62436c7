//! Reading the cloud-config sources on the device, in their documented order.

use basalt_formats::cloud_config::{parse_include, NoCloudMetaData};
use log::info;
use nix::mount::{mount, umount, MsFlags};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a document came from. The order of the variants is the order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    ImageDefault,
    BootPartition,
    MetaData,
    NoCloudUserData,
    KernelCmdline,
    /// Fetched from the URL the kernel command line names (`basalt.cloud-config-url=`).
    Url,
}

/// One document as read, before parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceText {
    pub kind: Kind,
    /// Names the source in errors: `CIDATA:user-data`, `/efi/user-data`, …
    pub name: String,
    pub text: String,
}

/// Where the sources live on a device; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct Paths {
    pub image_default: PathBuf,
    /// Directory of the boot FAT partition (`/efi` on UEFI boards).
    pub boot_partition: PathBuf,
    /// Candidate NoCloud volumes, first present wins.
    pub cidata_devices: Vec<PathBuf>,
    /// Where a NoCloud volume is mounted read-only while it is read.
    pub cidata_mount: PathBuf,
    pub cmdline: PathBuf,
    /// Timeouts and retries of a cloud-config URL.
    pub fetch: crate::fetch::FetchOptions,
    /// How long a cloud-config URL is tried while the network comes up.
    pub url_patience: Duration,
}

/// The largest cloud-config fetched from a URL.
pub const MAX_URL_DOCUMENT_BYTES: u64 = 32 << 20;

impl Default for Paths {
    fn default() -> Self {
        Paths {
            image_default: PathBuf::from("/usr/lib/basalt/cloud-config.yaml"),
            boot_partition: PathBuf::from("/efi"),
            cidata_devices: vec![
                PathBuf::from("/dev/disk/by-label/CIDATA"),
                PathBuf::from("/dev/disk/by-label/cidata"),
            ],
            cidata_mount: PathBuf::from("/run/basalt/cidata"),
            cmdline: PathBuf::from("/proc/cmdline"),
            fetch: crate::fetch::FetchOptions {
                connect_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(20),
                attempts: 1,
                backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(10),
            },
            url_patience: Duration::from_secs(60),
        }
    }
}

/// Reads every source that is present. Missing sources are not errors;
/// unreadable ones are, each naming the source.
pub fn read_all(paths: &Paths) -> (Vec<SourceText>, Vec<String>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let file = |kind: Kind, path: &Path, found: &mut Vec<SourceText>, errors: &mut Vec<String>| {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => found.push(SourceText {
                    kind,
                    name: path.display().to_string(),
                    text,
                }),
                Err(_) => errors.push(format!("{}: not UTF-8 text", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    };
    file(
        Kind::ImageDefault,
        &paths.image_default,
        &mut found,
        &mut errors,
    );
    file(
        Kind::BootPartition,
        &paths.boot_partition.join("user-data"),
        &mut found,
        &mut errors,
    );

    if let Some(dev) = paths.cidata_devices.iter().find(|d| d.exists()) {
        match mount_cidata(dev, &paths.cidata_mount) {
            Ok(()) => {
                // meta-data first: user-data's `hostname` wins over meta-data's `local-hostname`.
                for (kind, name) in [
                    (Kind::MetaData, "meta-data"),
                    (Kind::NoCloudUserData, "user-data"),
                ] {
                    let p = paths.cidata_mount.join(name);
                    match std::fs::read_to_string(&p) {
                        Ok(text) => found.push(SourceText {
                            kind,
                            name: format!("CIDATA:{name}"),
                            text,
                        }),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => errors.push(format!("CIDATA:{name}: {e}")),
                    }
                }
                let _ = umount(&paths.cidata_mount);
                // NoCloud's `seedfrom`: the user-data lives at a URL.
                let seed = found
                    .iter()
                    .rev()
                    .find(|s| s.kind == Kind::MetaData)
                    .and_then(|s| NoCloudMetaData::parse(&s.name, &s.text).ok())
                    .and_then(|m| m.seedfrom);
                if let Some(seed) = seed {
                    let url = format!("{}user-data", seed.as_str());
                    match fetch_url(&url, paths) {
                        Ok(text) => found.push(SourceText {
                            kind: Kind::NoCloudUserData,
                            name: format!("{url} (seedfrom in CIDATA:meta-data)"),
                            text,
                        }),
                        Err(e) => errors.push(format!("CIDATA:meta-data seedfrom: {e}")),
                    }
                }
            }
            Err(e) => errors.push(format!("CIDATA volume {}: {e}", dev.display())),
        }
    }

    match std::fs::read_to_string(&paths.cmdline) {
        Ok(cmdline) => match basalt_formats::cloud_config::parse_kernel_cmdline(&cmdline) {
            Ok(k) => {
                if let Some(doc) = k.document {
                    found.push(SourceText {
                        kind: Kind::KernelCmdline,
                        name: "kernel command line (basalt.cloud-config)".to_string(),
                        text: doc,
                    });
                }
                if let Some(url) = k.url {
                    match fetch_url(url.as_str(), paths) {
                        Ok(text) => found.push(SourceText {
                            kind: Kind::Url,
                            name: url.to_string(),
                            text,
                        }),
                        Err(e) => errors.push(format!(
                            "cloud-config URL (basalt.cloud-config-url on the kernel command line): {e}"
                        )),
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        },
        Err(e) => errors.push(format!("{}: {e}", paths.cmdline.display())),
    }
    // An empty document says nothing (cloud-init reads it so too): NoCloud
    // seeds often carry an empty user-data beside `seedfrom`.
    found.retain(|s| !s.text.trim().is_empty());
    let found = expand_includes(found, &mut errors, |url| fetch_url(url, paths));
    info!(
        "cloud-config sources: {}",
        if found.is_empty() {
            "none".to_string()
        } else {
            found
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    (found, errors)
}

/// Replaces each `#include` document by the documents at its URLs, in
/// order and with its precedence. A URL that cannot be fetched is an error
/// naming the including source; the others still count. An `#include` in an
/// included document is not followed (so includes cannot loop).
pub fn expand_includes(
    found: Vec<SourceText>,
    errors: &mut Vec<String>,
    fetch: impl Fn(&str) -> Result<String, String>,
) -> Vec<SourceText> {
    let mut out = Vec::new();
    for src in found {
        let urls = match parse_include(&src.name, &src.text) {
            None => {
                out.push(src);
                continue;
            }
            Some(Err(e)) => {
                errors.push(e.to_string());
                continue;
            }
            Some(Ok(urls)) => urls,
        };
        for url in urls {
            let name = format!("{} (#include in {})", url.as_str(), src.name);
            match fetch(url.as_str()) {
                Ok(text) if parse_include(&name, &text).is_some() => errors.push(format!(
                    "{name}: is itself an #include document; includes are followed one level deep"
                )),
                Ok(text) => out.push(SourceText {
                    kind: src.kind,
                    name,
                    text,
                }),
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
    }
    out
}

/// Fetches a cloud-config document, asking again for up to
/// [`Paths::url_patience`] while the network is not up.
fn fetch_url(url: &str, paths: &Paths) -> Result<String, String> {
    let fetcher = crate::fetch::Fetcher::new(paths.fetch.clone()).map_err(|e| e.to_string())?;
    let bytes = fetcher
        .get_bytes_patiently(url, MAX_URL_DOCUMENT_BYTES, paths.url_patience)
        .map_err(|e| e.to_string())?;
    info!("cloud-config: fetched {} bytes from {url}", bytes.len());
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{url}: not UTF-8 text (at byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn mount_cidata(dev: &Path, at: &Path) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| format!("creating {}: {e}", at.display()))?;
    let mut last = String::new();
    for fstype in ["vfat", "iso9660"] {
        match mount(
            Some(dev),
            at,
            Some(fstype),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("mounting as {fstype}: {e}"),
        }
    }
    Err(last)
}
