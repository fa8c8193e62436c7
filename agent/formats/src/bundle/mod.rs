//! Signed update bundles (`.basalt`).
//!
//! A bundle is a POSIX ustar stream with deterministic headers (mode 0644,
//! owner 0:0, every mtime the manifest's `created`):
//!
//! | # | member | content |
//! | --- | --- | --- |
//! | 1 | `manifest.json` | [`Manifest`]: version, boards, the oldest version it may replace, each payload's sizes and SHA-256 |
//! | 2 | `signatures.json` | [`Signatures`]: Ed25519 signatures over the manifest's exact bytes |
//! | 3… | `rootfs.zst`, `kernel.zst`, `initrd.zst` | zstd-compressed payloads, in manifest order |
//!
//! The device reads the first two members, checks the signatures against the
//! keys it trusts ([`verify`] with a [`TrustPolicy`]), decides whether to take
//! the update ([`check`]), and only then streams the payloads, each through
//! zstd and SHA-256, into its inactive slot (`stream`, behind the crate's
//! `stream` feature).
//!
//! Everything here is pure: keys are made from seeds the caller supplies and
//! nothing opens a file.

mod decision;
mod digest;
mod keys;
mod manifest;
#[cfg(feature = "stream")]
pub mod stream;
mod trust;

pub use decision::{check, Decision, Reason};
pub use digest::{HexError, Sha256Digest};
pub use keys::{KeyError, KeyId, PublicKey, SecretKey, Signature};
pub use manifest::{
    Compression, Manifest, ManifestError, Payload, PayloadBase, PayloadName, MANIFEST_FORMAT,
    MAX_PAYLOAD_SIZE,
};
pub use trust::{
    signature_report, verify, PolicyError, SignatureEntry, SignatureReport, SignatureStatus,
    Signatures, SignaturesError, TrustPolicy, VerifyError, MAX_SIGNATURES,
};

/// Name of the first member: the manifest, byte for byte as signed.
pub const MANIFEST_MEMBER: &str = "manifest.json";
/// Name of the second member: the signatures over the manifest.
pub const SIGNATURES_MEMBER: &str = "signatures.json";
/// File name extension of bundles.
pub const EXTENSION: &str = "basalt";
/// The largest manifest a reader accepts.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The largest signatures file a reader accepts.
pub const MAX_SIGNATURES_BYTES: u64 = 64 << 10;
