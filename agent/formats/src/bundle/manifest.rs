//! The bundle manifest: what a bundle holds and which devices may take it.
//!
//! ```json
//! {
//!   "format": 1,
//!   "name": "basalt-appliance",
//!   "version": "1.2.0",
//!   "boards": ["x86_64-uefi"],
//!   "min_version": "1.0.0",
//!   "created": 1700000000,
//!   "rootfs_type": "squashfs",
//!   "payloads": [
//!     { "name": "rootfs", "compression": "zstd", "size": 402653184, "sha256": "…",
//!       "compressed_size": 150994944, "compressed_sha256": "…" }
//!   ]
//! }
//! ```
//!
//! A delta bundle (`basalt bundle --delta-from OLD`) adds `"base_version"`,
//! the release it was made from, and to each payload a `"base": {"size",
//! "sha256"}` naming the bytes of that release its frames reach back into.
//! `size` and `sha256` stay those of the full payload, so the device checks
//! what it rebuilt exactly as it checks a full download.

use super::digest::Sha256Digest;
use crate::board::BoardId;
use crate::size::GIB;
use crate::spec::RootfsType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The manifest format this crate reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;
/// The largest payload, compressed or not.
pub const MAX_PAYLOAD_SIZE: u64 = 64 * GIB;
/// The largest `frame_size` a reader accepts (bounds its memory).
pub const MAX_FRAME_SIZE: u64 = 64 << 20;

/// What a payload is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadName {
    /// The root file system image (squashfs or erofs) for the inactive slot.
    Rootfs,
    /// The slot's kernel (an EFI-stub image on UEFI boards).
    Kernel,
    /// The slot's basalt initrd.
    Initrd,
    /// A Raspberry Pi boot slot: the whole FAT partition the firmware
    /// starts (firmware files, `config.txt`, `cmdline.txt`, kernel, initrd,
    /// device trees), the same bytes for both slots. Pi bundles carry it in
    /// place of `kernel` and `initrd`.
    Boot,
}

impl PayloadName {
    /// The payloads of a bundle for a UEFI board, in the order the builder writes them.
    pub const UEFI: [PayloadName; 3] = [
        PayloadName::Rootfs,
        PayloadName::Kernel,
        PayloadName::Initrd,
    ];

    /// The payloads of a bundle for a Raspberry Pi, in the order the builder writes them.
    pub const RPI: [PayloadName; 2] = [PayloadName::Rootfs, PayloadName::Boot];

    /// Whether the payload is written to a partition as it is (root file
    /// system, Pi boot slot), rather than as a file.
    pub fn is_partition(self) -> bool {
        matches!(self, PayloadName::Rootfs | PayloadName::Boot)
    }

    /// The name as written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadName::Rootfs => "rootfs",
            PayloadName::Kernel => "kernel",
            PayloadName::Initrd => "initrd",
            PayloadName::Boot => "boot",
        }
    }

    /// The name of the payload's member in the bundle (`rootfs.zst`).
    pub fn member_name(self) -> String {
        format!("{}.zst", self.as_str())
    }
}

impl fmt::Display for PayloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a payload is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard, one or more frames.
    Zstd,
}

/// One payload: its sizes and digests before and after compression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// What the payload is for; its member is `<name>.zst`.
    pub name: PayloadName,
    /// Always zstd.
    pub compression: Compression,
    /// Uncompressed bytes.
    pub size: u64,
    /// SHA-256 of the uncompressed bytes.
    pub sha256: Sha256Digest,
    /// Bytes of the payload's member in the bundle.
    pub compressed_size: u64,
    /// SHA-256 of the member's bytes.
    pub compressed_sha256: Sha256Digest,
    /// Set when the member is independent zstd frames of at most this many
    /// bytes each, every one stating its size: a device decodes it one
    /// frame at a time and can resume it at a frame boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_size: Option<u64>,
    /// Set on a delta payload: the bytes its frames reach back into, which
    /// the device must already hold (see [`super::stream::delta`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PayloadBase>,
}

/// The base of a delta payload: the same payload of the release the delta
/// was made from (the first `size` bytes of the running root slot, the
/// running kernel or initrd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadBase {
    /// Bytes of the base.
    pub size: u64,
    /// SHA-256 of those bytes.
    pub sha256: Sha256Digest,
}

impl Payload {
    /// A zstd payload whose member holds `compressed`, made from `raw`.
    pub fn zstd(name: PayloadName, raw: &[u8], compressed: &[u8]) -> Payload {
        Payload {
            name,
            compression: Compression::Zstd,
            size: raw.len() as u64,
            sha256: Sha256Digest::of(raw),
            compressed_size: compressed.len() as u64,
            compressed_sha256: Sha256Digest::of(compressed),
            frame_size: None,
            base: None,
        }
    }
}

/// A bundle manifest. Build one with [`Manifest::parse`] (which validates)
/// or fill the fields and call [`Manifest::validate`] before writing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Name of the image (the spec's `name`).
    pub name: String,
    /// Version of the image the bundle installs.
    pub version: semver::Version,
    /// Boards the bundle may be installed on.
    pub boards: Vec<BoardId>,
    /// The oldest running version this bundle may replace.
    pub min_version: semver::Version,
    /// When the bundle was made, in UNIX seconds.
    pub created: u64,
    /// File system of the root payload.
    pub rootfs_type: RootfsType,
    /// The payloads, in the order their members follow in the bundle.
    pub payloads: Vec<Payload>,
    /// Set on a delta bundle: the version whose payloads are the bases of
    /// this one's. Only a device running that version can install it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<semver::Version>,
}

/// A manifest that does not parse or breaks a rule. Each variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest.json: format {0} is not supported; this basalt reads format 1")]
    UnsupportedFormat(u32),
    #[error("manifest.json: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl Manifest {
    /// Parses and validates manifest bytes. Verify signatures over the same
    /// bytes first ([`super::verify`] does both).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        // Read `format` alone first, so a newer format is reported as such
        // rather than as an unknown field.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        if let Ok(Format { format }) = serde_json::from_slice::<Format>(bytes) {
            if format != MANIFEST_FORMAT {
                return Err(ManifestError::UnsupportedFormat(format));
            }
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks the rules that span fields.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field: String, reason: String| ManifestError::Invalid { field, reason };
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat(self.format));
        }
        if !crate::spec::is_image_name(&self.name) {
            return Err(invalid(
                "name".into(),
                format!(
                    "{:?} must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'",
                    self.name
                ),
            ));
        }
        if self.boards.is_empty() {
            return Err(invalid("boards".into(), "no boards listed".into()));
        }
        for (i, b) in self.boards.iter().enumerate() {
            if self.boards[..i].contains(b) {
                return Err(invalid(format!("boards[{i}]"), format!("{b} listed twice")));
            }
        }
        if self.min_version.cmp_precedence(&self.version).is_gt() {
            return Err(invalid(
                "min_version".into(),
                format!(
                    "{} is above the bundle's own version {}",
                    self.min_version, self.version
                ),
            ));
        }
        for (i, p) in self.payloads.iter().enumerate() {
            if self.payloads[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    format!("payloads[{i}].name"),
                    format!("payload {} listed twice", p.name),
                ));
            }
            for (field, size) in [("size", p.size), ("compressed_size", p.compressed_size)] {
                if size > MAX_PAYLOAD_SIZE {
                    return Err(invalid(
                        format!("payloads[{i}].{field}"),
                        format!(
                            "payload {}: {size} bytes is over the limit of 64 GiB",
                            p.name
                        ),
                    ));
                }
            }
        }
        if !self.payloads.iter().any(|p| p.name == PayloadName::Rootfs) {
            return Err(invalid("payloads".into(), "no rootfs payload".into()));
        }
        // A Pi boots its slot's FAT partition; a UEFI board its ESP files.
        let pi_payloads = self.payloads.iter().any(|p| p.name == PayloadName::Boot);
        if let Some((i, p)) = self.payloads.iter().enumerate().find(|(_, p)| {
            pi_payloads && matches!(p.name, PayloadName::Kernel | PayloadName::Initrd)
        }) {
            return Err(invalid(
                format!("payloads[{i}].name"),
                format!(
                    "payload {} with a boot payload: a bundle has one or the other",
                    p.name
                ),
            ));
        }
        if let Some((i, b)) = self
            .boards
            .iter()
            .enumerate()
            .find(|(_, b)| b.is_rpi() != pi_payloads)
        {
            return Err(invalid(
                format!("boards[{i}]"),
                if pi_payloads {
                    format!("{b} does not boot a Raspberry Pi boot slot (payload boot)")
                } else {
                    format!("{b} needs a boot payload (its boot slot's FAT partition)")
                },
            ));
        }
        for (i, p) in self.payloads.iter().enumerate() {
            match (&self.base_version, &p.base) {
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("payloads[{i}].base"),
                        format!(
                            "payload {} is a delta, but the manifest has no base_version",
                            p.name
                        ),
                    ))
                }
                _ if p.frame_size.is_some_and(|f| f == 0 || f > MAX_FRAME_SIZE) => {
                    return Err(invalid(
                        format!("payloads[{i}].frame_size"),
                        format!(
                            "payload {}: frames of {} bytes; a reader takes 1 to {MAX_FRAME_SIZE}",
                            p.name,
                            p.frame_size.unwrap_or(0)
                        ),
                    ))
                }
                (_, Some(base)) if base.size > MAX_PAYLOAD_SIZE => {
                    return Err(invalid(
                        format!("payloads[{i}].base.size"),
                        format!(
                            "payload {}: {} bytes is over the limit of 64 GiB",
                            p.name, base.size
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let Some(base) = &self.base_version {
            if !self.payloads.iter().any(|p| p.base.is_some()) {
                return Err(invalid(
                    "base_version".into(),
                    "set, but no payload is a delta".into(),
                ));
            }
            if base.cmp_precedence(&self.version).is_ge() {
                return Err(invalid(
                    "base_version".into(),
                    format!(
                        "{base} is not below the bundle's own version {}",
                        self.version
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The payload called `name`.
    pub fn payload(&self, name: PayloadName) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.name == name)
    }

    /// Whether the payloads are deltas against `base_version`'s.
    pub fn is_delta(&self) -> bool {
        self.base_version.is_some()
    }

    /// The bytes the builder writes and signs: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn payload(name: PayloadName, size: u64) -> Payload {
        Payload {
            name,
            compression: Compression::Zstd,
            size,
            sha256: Sha256Digest([1; 32]),
            compressed_size: size / 2,
            compressed_sha256: Sha256Digest([2; 32]),
            frame_size: None,
            base: None,
        }
    }

    pub(crate) fn manifest(version: &str, min_version: &str, boards: &[BoardId]) -> Manifest {
        Manifest {
            format: 1,
            name: "basalt-appliance".into(),
            version: version.parse().unwrap(),
            boards: boards.to_vec(),
            min_version: min_version.parse().unwrap(),
            created: 1_700_000_000,
            rootfs_type: RootfsType::Squashfs,
            payloads: vec![
                payload(PayloadName::Rootfs, 1 << 30),
                payload(PayloadName::Kernel, 10 << 20),
                payload(PayloadName::Initrd, 20 << 20),
            ],
            base_version: None,
        }
    }

    fn good() -> Manifest {
        manifest("1.2.0", "1.0.0", &[BoardId::X86_64Uefi])
    }

    #[test]
    fn round_trip() {
        let m = good();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"name\": \"rootfs\""), "{text}");
        assert!(text.contains("\"compression\": \"zstd\""), "{text}");
        assert!(text.contains(&"01".repeat(32)), "{text}");
    }

    /// Rejected manifests: each edit of a good one, and a word the error must contain.
    #[test]
    fn rejected() {
        type Edit = fn(&mut serde_json::Value);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "newer format",
                |v| v["format"] = 2.into(),
                "format 2 is not supported",
            ),
            (
                "unknown field",
                |v| v["colour"] = "red".into(),
                "unknown field `colour`",
            ),
            (
                "unknown payload field",
                |v| v["payloads"][0]["mode"] = 1.into(),
                "unknown field `mode`",
            ),
            ("bad name", |v| v["name"] = "Bad Name".into(), "name:"),
            ("bad version", |v| v["version"] = "1.2".into(), "version"),
            (
                "no boards",
                |v| v["boards"] = serde_json::json!([]),
                "boards: no boards",
            ),
            (
                "board twice",
                |v| v["boards"] = serde_json::json!(["x86_64-uefi", "x86_64-uefi"]),
                "boards[1]",
            ),
            (
                "unknown board",
                |v| v["boards"] = serde_json::json!(["pdp11"]),
                "pdp11",
            ),
            (
                "floor above version",
                |v| v["min_version"] = "2.0.0".into(),
                "min_version: 2.0.0 is above",
            ),
            (
                "a Pi board with UEFI payloads",
                |v| v["boards"] = serde_json::json!(["x86_64-uefi", "rpi4"]),
                "boards[1]: rpi4 needs a boot payload",
            ),
            (
                "a UEFI board with a Pi boot slot",
                |v| {
                    let p = v["payloads"].as_array_mut().unwrap();
                    p.truncate(1);
                    let mut boot = p[0].clone();
                    boot["name"] = "boot".into();
                    p.push(boot);
                },
                "boards[0]: x86_64-uefi does not boot a Raspberry Pi boot slot",
            ),
            (
                "a boot slot and a kernel",
                |v| {
                    v["boards"] = serde_json::json!(["rpi5"]);
                    v["payloads"][2]["name"] = "boot".into();
                },
                "payloads[1].name: payload kernel with a boot payload",
            ),
            (
                "duplicate payload",
                |v| v["payloads"][1]["name"] = "rootfs".into(),
                "payloads[1].name: payload rootfs listed twice",
            ),
            (
                "no rootfs",
                |v| {
                    let p = v["payloads"].as_array_mut().unwrap();
                    p.remove(0);
                },
                "no rootfs payload",
            ),
            (
                "unknown payload",
                |v| v["payloads"][2]["name"] = "firmware".into(),
                "firmware",
            ),
            (
                "other compression",
                |v| v["payloads"][0]["compression"] = "xz".into(),
                "xz",
            ),
            (
                "too big",
                |v| v["payloads"][0]["size"] = (MAX_PAYLOAD_SIZE + 1).into(),
                "payloads[0].size: payload rootfs: 68719476737 bytes is over the limit of 64 GiB",
            ),
            (
                "too big compressed",
                |v| v["payloads"][1]["compressed_size"] = u64::MAX.into(),
                "payloads[1].compressed_size",
            ),
            (
                "short hex",
                |v| v["payloads"][0]["sha256"] = "abcd".into(),
                "is not 64 hex digits",
            ),
            (
                "not hex",
                |v| v["payloads"][0]["compressed_sha256"] = "x".repeat(64).into(),
                "is not 64 hex digits",
            ),
            (
                "base without base_version",
                |v| {
                    v["payloads"][0]["base"] =
                        serde_json::json!({"size": 5, "sha256": "01".repeat(32)})
                },
                "payloads[0].base: payload rootfs is a delta, but the manifest has no base_version",
            ),
            (
                "base_version without a delta",
                |v| v["base_version"] = "1.1.0".into(),
                "base_version: set, but no payload is a delta",
            ),
            (
                "unknown base field",
                |v| {
                    v["payloads"][0]["base"] =
                        serde_json::json!({"size": 5, "sha256": "01".repeat(32), "url": "x"})
                },
                "unknown field `url`",
            ),
            (
                "negative size",
                |v| v["payloads"][0]["size"] = (-1).into(),
                "expected u64",
            ),
        ];
        for (what, edit, expect) in cases {
            let mut v = serde_json::to_value(good()).unwrap();
            edit(&mut v);
            let bytes = serde_json::to_vec(&v).unwrap();
            let e = Manifest::parse(&bytes).expect_err(what).to_string();
            assert!(e.starts_with("manifest.json: "), "{what}: {e}");
            assert!(e.contains(expect), "{what}: {e:?} lacks {expect:?}");
        }
    }

    fn delta() -> Manifest {
        let mut m = good();
        m.base_version = Some("1.1.0".parse().unwrap());
        m.payloads[0].base = Some(PayloadBase {
            size: 1 << 29,
            sha256: Sha256Digest([3; 32]),
        });
        m
    }

    #[test]
    fn delta_round_trip() {
        let m = delta();
        assert!(m.is_delta() && !good().is_delta());
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"base_version\": \"1.1.0\""), "{text}");
        // A full bundle's manifest does not mention bases at all.
        assert!(!String::from_utf8(good().to_bytes())
            .unwrap()
            .contains("base"));
    }

    #[test]
    fn delta_rules() {
        for (base, expect) in [
            (
                "1.2.0",
                "base_version: 1.2.0 is not below the bundle's own version 1.2.0",
            ),
            ("2.0.0", "base_version: 2.0.0 is not below"),
        ] {
            let mut m = delta();
            m.base_version = Some(base.parse().unwrap());
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(expect), "{e}");
        }
        let mut m = delta();
        m.payloads[0].base.as_mut().unwrap().size = MAX_PAYLOAD_SIZE + 1;
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("payloads[0].base.size"), "{e}");
    }

    #[test]
    fn max_size_is_accepted() {
        let mut m = good();
        m.payloads[0].size = MAX_PAYLOAD_SIZE;
        m.validate().unwrap();
        let mut m = good();
        m.min_version = m.version.clone();
        m.payloads.truncate(1);
        m.validate().unwrap();
    }
}
