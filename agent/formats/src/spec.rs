//! The image spec: what a user writes to describe an appliance image.
//!
//! ```yaml
//! spec_version: 1
//! name: basalt-appliance
//! version: 0.1.0
//! board: x86_64-uefi
//! debian: { suite: bookworm, mirror: "http://deb.debian.org/debian" }
//! packages: [systemd, systemd-sysv, udev]
//! overlays: [base, ./site]
//! rootfs: { type: squashfs }
//! sizes: { esp: 128MiB, slot: 1GiB, data: 256MiB }
//! models:
//!   - { name: classifier, path: models/classifier.onnx, batch_max: 8 }
//!   - name: magika
//!     url: https://static.crates.io/crates/magika/magika-1.1.0.crate
//!     sha256: 0b5ac4…       # of the download
//!     member: magika-1.1.0/src/model.onnx   # the file inside a .crate/.tar.gz/.whl/.zip
//! ```

use crate::board::BoardId;
use crate::size::{ByteSize, MIB};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The spec file as written: parsed, not yet checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpecFile {
    pub spec_version: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub board: Option<BoardId>,
    pub debian: DebianFile,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub overlays: Vec<String>,
    #[serde(default)]
    pub rootfs: RootfsFile,
    #[serde(default)]
    pub sizes: SizesFile,
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    #[serde(default)]
    pub models: Vec<ModelFile>,
}

/// One entry of `models:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    /// A file next to the spec (relative paths are relative to the spec's directory).
    #[serde(default)]
    pub path: Option<String>,
    /// Or a download, checked against `sha256`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// The model file inside an archive (`.tar.gz`, `.crate`, `.zip`, `.whl`).
    #[serde(default)]
    pub member: Option<String>,
    #[serde(default)]
    pub batch_max: Option<u32>,
}

/// Where a baked-in model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    Path(String),
    Url { url: String, sha256: [u8; 32] },
}

/// A model to bake into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSpec {
    pub name: crate::mesh::ModelName,
    pub version: String,
    pub source: ModelSource,
    pub member: Option<String>,
    pub batch_max: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianFile {
    pub suite: String,
    pub mirror: String,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".to_string()]
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsFile {
    #[serde(default, rename = "type")]
    pub fs_type: RootfsType,
    /// zstd level for squashfs (1-22), lz4hc level for erofs (1-12).
    #[serde(default)]
    pub compression_level: Option<u8>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SizesFile {
    pub esp: Option<ByteSize>,
    pub slot: Option<ByteSize>,
    pub data: Option<ByteSize>,
}

/// File system of the read-only root slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsType {
    #[default]
    Squashfs,
    Erofs,
}

impl RootfsType {
    /// The name the kernel's `mount` knows it by.
    pub fn kernel_name(self) -> &'static str {
        match self {
            RootfsType::Squashfs => "squashfs",
            RootfsType::Erofs => "erofs",
        }
    }
}

impl fmt::Display for RootfsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}

/// Where an overlay comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum OverlayRef {
    /// A bare name: an overlay shipped with basalt (`overlays/<name>` in its source tree).
    Builtin(String),
    /// A path, relative to the spec file unless absolute.
    Path(String),
}

/// Partition sizes, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub esp: ByteSize,
    pub slot: ByteSize,
    pub data: ByteSize,
}

impl Sizes {
    pub const DEFAULT: Sizes = Sizes {
        esp: ByteSize::mib(128),
        slot: ByteSize::mib(1024),
        data: ByteSize::mib(128),
    };
}

/// A checked image spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    pub name: String,
    pub version: semver::Version,
    pub board: Option<BoardId>,
    pub suite: String,
    pub mirror: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub overlays: Vec<OverlayRef>,
    pub rootfs_type: RootfsType,
    /// Compression level of the root file system image.
    pub rootfs_compression_level: u8,
    pub sizes: Sizes,
    pub kernel_cmdline: Vec<String>,
    /// Models baked into the image, served from `/usr/lib/basalt/models`.
    pub models: Vec<ModelSpec>,
}

/// Default compression level of the root image: zstd 9 for squashfs is
/// within 7% of level 15's size at a tenth of its time; lz4hc 9 for erofs.
pub const DEFAULT_COMPRESSION_LEVEL: u8 = 9;

/// A spec that parsed but breaks a rule. Each variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),
    #[error(
        "{source_name}: spec_version {found} is not supported; this basalt reads spec_version 1"
    )]
    UnsupportedSpecVersion { source_name: String, found: u32 },
    #[error("{source_name}: {field}: {reason}")]
    Invalid {
        source_name: String,
        field: String,
        reason: String,
    },
}

/// Minimum sizes a bootable image needs.
pub const MIN_ESP: u64 = 64 * MIB;
pub const MIN_SLOT: u64 = 128 * MIB;
pub const MIN_DATA: u64 = 32 * MIB;

impl ImageSpec {
    pub fn parse(source_name: &str, text: &str) -> Result<ImageSpec, SpecError> {
        let file: ImageSpecFile = crate::yaml::from_str(source_name, text)?;
        ImageSpec::check(source_name, file)
    }

    pub fn check(source_name: &str, file: ImageSpecFile) -> Result<ImageSpec, SpecError> {
        let invalid = |field: &str, reason: String| SpecError::Invalid {
            source_name: source_name.to_string(),
            field: field.to_string(),
            reason,
        };
        if file.spec_version != 1 {
            return Err(SpecError::UnsupportedSpecVersion {
                source_name: source_name.to_string(),
                found: file.spec_version,
            });
        }
        if !is_image_name(&file.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'",
                    file.name
                ),
            ));
        }
        let version = semver::Version::parse(&file.version).map_err(|e| {
            invalid(
                "version",
                format!(
                    "{:?} is not a semantic version (such as 1.4.0): {e}",
                    file.version
                ),
            )
        })?;
        if file.debian.suite.is_empty()
            || !file
                .debian
                .suite
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                "debian.suite",
                format!("{:?} is not a Debian suite name", file.debian.suite),
            ));
        }
        if !(file.debian.mirror.starts_with("http://")
            || file.debian.mirror.starts_with("https://")
            || file.debian.mirror.starts_with("file:/"))
        {
            return Err(invalid(
                "debian.mirror",
                format!(
                    "{:?} must be an http://, https:// or file:/ URL",
                    file.debian.mirror
                ),
            ));
        }
        for c in &file.debian.components {
            if c.is_empty() || !c.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                return Err(invalid(
                    "debian.components",
                    format!("{c:?} is not a component name"),
                ));
            }
        }
        for (i, p) in file.packages.iter().enumerate() {
            if !is_debian_package_name(p) {
                return Err(invalid(
                    &format!("packages[{i}]"),
                    format!("{p:?} is not a Debian package name"),
                ));
            }
        }
        let mut overlays = Vec::new();
        for (i, o) in file.overlays.iter().enumerate() {
            if o.is_empty() {
                return Err(invalid(
                    &format!("overlays[{i}]"),
                    "empty overlay".to_string(),
                ));
            }
            overlays.push(if o.contains('/') || o.starts_with('.') {
                OverlayRef::Path(o.clone())
            } else {
                OverlayRef::Builtin(o.clone())
            });
        }
        let sizes = Sizes {
            esp: file.sizes.esp.unwrap_or(Sizes::DEFAULT.esp),
            slot: file.sizes.slot.unwrap_or(Sizes::DEFAULT.slot),
            data: file.sizes.data.unwrap_or(Sizes::DEFAULT.data),
        };
        for (field, size, min) in [
            ("sizes.esp", sizes.esp, MIN_ESP),
            ("sizes.slot", sizes.slot, MIN_SLOT),
            ("sizes.data", sizes.data, MIN_DATA),
        ] {
            if size.bytes() < min {
                return Err(invalid(
                    field,
                    format!("{size} is below the minimum of {}", ByteSize(min)),
                ));
            }
            if size.bytes() % MIB != 0 {
                return Err(invalid(
                    field,
                    format!("{size} is not a whole number of MiB"),
                ));
            }
        }
        for (i, p) in file.kernel_cmdline.iter().enumerate() {
            if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    &format!("kernel_cmdline[{i}]"),
                    format!("{p:?} must be one word"),
                ));
            }
        }
        let max_level = match file.rootfs.fs_type {
            RootfsType::Squashfs => 22,
            RootfsType::Erofs => 12,
        };
        let level = file
            .rootfs
            .compression_level
            .unwrap_or(DEFAULT_COMPRESSION_LEVEL);
        if !(1..=max_level).contains(&level) {
            return Err(invalid(
                "rootfs.compression_level",
                format!(
                    "{level} is outside 1..={max_level} for {}",
                    file.rootfs.fs_type
                ),
            ));
        }
        Ok(ImageSpec {
            name: file.name,
            version,
            board: file.board,
            suite: file.debian.suite,
            mirror: file.debian.mirror.trim_end_matches('/').to_string(),
            components: file.debian.components,
            packages: file.packages,
            overlays,
            rootfs_type: file.rootfs.fs_type,
            rootfs_compression_level: level,
            sizes,
            kernel_cmdline: file.kernel_cmdline,
            models: check_models(&file.models).map_err(|(f, r)| invalid(&f, r))?,
        })
    }
}

fn check_models(models: &[ModelFile]) -> Result<Vec<ModelSpec>, (String, String)> {
    let mut out: Vec<ModelSpec> = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let field = |f: &str| format!("models[{i}].{f}");
        let name: crate::mesh::ModelName = m
            .name
            .parse()
            .map_err(|e| (field("name"), format!("{e}")))?;
        if out.iter().any(|o| o.name == name) {
            return Err((field("name"), format!("{name} is listed twice")));
        }
        let version = m
            .version
            .clone()
            .unwrap_or_else(|| crate::model::DEFAULT_VERSION.to_string());
        let source = match (&m.path, &m.url, &m.sha256) {
            (Some(p), None, None) if !p.is_empty() => ModelSource::Path(p.clone()),
            (None, Some(u), Some(h)) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err((
                        field("url"),
                        format!("{u:?} must be an http:// or https:// URL"),
                    ));
                }
                let sha256: [u8; 32] = hex::decode(h)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| (field("sha256"), format!("{h:?} is not 64 hex digits")))?;
                ModelSource::Url {
                    url: u.clone(),
                    sha256,
                }
            }
            (None, Some(_), None) => {
                return Err((
                    field("sha256"),
                    "a download needs the SHA-256 it must have".into(),
                ))
            }
            (Some(_), _, Some(_)) => {
                return Err((
                    field("sha256"),
                    "only for downloads (url); a path is read as it is".into(),
                ))
            }
            _ => {
                return Err((
                    field("path"),
                    "give either path or url (with sha256)".into(),
                ))
            }
        };
        if let Some(member) = &m.member {
            if member.is_empty() || member.starts_with('/') || member.split('/').any(|c| c == "..")
            {
                return Err((
                    field("member"),
                    format!("{member:?} must be a relative path inside the archive"),
                ));
            }
        }
        let batch_max = m.batch_max.unwrap_or(1);
        if !(1..=crate::model::MAX_BATCH).contains(&batch_max) {
            return Err((
                field("batch_max"),
                format!("{batch_max} is outside 1..={}", crate::model::MAX_BATCH),
            ));
        }
        let manifest = crate::model::ModelManifest {
            name: name.clone(),
            version: version.clone(),
            file: "model.onnx".into(),
            sha256: "0".repeat(64),
            batch_max,
            source: None,
        };
        manifest
            .check()
            .map_err(|e| (field("version"), e.to_string()))?;
        out.push(ModelSpec {
            name,
            version,
            source,
            member: m.member.clone(),
            batch_max,
        });
    }
    Ok(out)
}

/// An image name: 1-63 characters of `a-z`, `0-9` and `-`, not starting with `-`.
pub fn is_image_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

/// Debian policy 5.6.1: lower case letters, digits, `+`, `-`, `.`; at least two
/// characters; starting with an alphanumeric.
pub fn is_debian_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
spec_version: 1
name: demo
version: 1.2.3
debian:
  suite: bookworm
  mirror: http://deb.debian.org/debian/
packages: [systemd, libc6]
overlays: [base, ./site, /abs/other]
rootfs:
  type: erofs
sizes:
  slot: 512MiB
"#;

    #[test]
    fn good_spec_is_checked() {
        let s = ImageSpec::parse("good.yaml", GOOD).unwrap();
        assert_eq!(s.version, semver::Version::new(1, 2, 3));
        assert_eq!(s.mirror, "http://deb.debian.org/debian");
        assert_eq!(s.rootfs_type, RootfsType::Erofs);
        assert_eq!(s.sizes.slot, ByteSize::mib(512));
        assert_eq!(s.sizes.data, Sizes::DEFAULT.data);
        assert_eq!(
            s.overlays,
            vec![
                OverlayRef::Builtin("base".into()),
                OverlayRef::Path("./site".into()),
                OverlayRef::Path("/abs/other".into())
            ]
        );
    }

    fn err(text: &str) -> String {
        ImageSpec::parse("bad.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_has_position() {
        let text = GOOD.replace("packages:", "pakages:");
        let e = err(&text);
        assert!(
            e.starts_with("bad.yaml:8:1: unknown field `pakages`"),
            "{e}"
        );
    }

    #[test]
    fn rules_name_the_field() {
        assert!(err(&GOOD.replace("1.2.3", "one")).contains("bad.yaml: version: \"one\""));
        assert!(err(&GOOD.replace("name: demo", "name: Demo")).contains("name:"));
        assert!(err(&GOOD.replace("libc6", "Libc6")).contains("packages[1]"));
        assert!(
            err(&GOOD.replace("slot: 512MiB", "slot: 1MiB")).contains("sizes.slot: 1MiB is below")
        );
        assert!(err(&GOOD.replace("http://deb", "ftp://deb")).contains("debian.mirror"));
        assert!(err(&GOOD.replace("spec_version: 1", "spec_version: 7")).contains("spec_version 7"));
        assert!(
            err(&GOOD.replace("type: erofs", "type: btrfs")).contains("unknown variant `btrfs`")
        );
    }
}
