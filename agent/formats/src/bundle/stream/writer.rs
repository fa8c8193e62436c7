//! Writing a bundle: the builder's side.

use super::{
    member_header, padding, read_full, write_err, BundleError, Form, PayloadError, PayloadProblem,
    BLOCK,
};
use crate::bundle::digest::Sha256Digest;
use crate::bundle::manifest::{Manifest, PayloadName};
use crate::bundle::trust::Signatures;
use crate::bundle::{MANIFEST_MEMBER, MAX_MANIFEST_BYTES, MAX_SIGNATURES_BYTES, SIGNATURES_MEMBER};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// Writes a bundle: the manifest and signatures, then each payload's
/// compressed bytes in manifest order, each checked against the manifest.
#[derive(Debug)]
pub struct BundleWriter<W: Write> {
    out: W,
    manifest: Manifest,
    next: usize,
}

impl<W: Write> BundleWriter<W> {
    /// Writes the first two members. The manifest bytes are validated and
    /// written exactly as given; every member's mtime is its `created`.
    pub fn new(
        mut out: W,
        manifest_bytes: &[u8],
        signatures: &Signatures,
    ) -> Result<BundleWriter<W>, BundleError> {
        let manifest = Manifest::parse(manifest_bytes)?;
        let sig_bytes = signatures.to_bytes();
        for (member, bytes, limit) in [
            (MANIFEST_MEMBER, manifest_bytes, MAX_MANIFEST_BYTES),
            (SIGNATURES_MEMBER, &sig_bytes[..], MAX_SIGNATURES_BYTES),
        ] {
            let size = bytes.len() as u64;
            if size > limit {
                return Err(BundleError::TooLarge {
                    member: member.into(),
                    size,
                    limit,
                });
            }
            out.write_all(&member_header(member, size, manifest.created))
                .and_then(|()| out.write_all(bytes))
                .and_then(|()| out.write_all(&[0u8; BLOCK as usize][..padding(size) as usize]))
                .map_err(write_err)?;
        }
        Ok(BundleWriter {
            out,
            manifest,
            next: 0,
        })
    }

    /// Copies the next payload's compressed bytes from `compressed`, which
    /// must hold exactly `compressed_size` bytes with `compressed_sha256`.
    pub fn payload(
        &mut self,
        name: PayloadName,
        mut compressed: impl Read,
    ) -> Result<(), BundleError> {
        let Some(payload) = self.manifest.payloads.get(self.next) else {
            return Err(BundleError::PayloadOrder {
                expected: "no more payloads".into(),
                found: name,
            });
        };
        if payload.name != name {
            return Err(BundleError::PayloadOrder {
                expected: payload.name.to_string(),
                found: name,
            });
        }
        let expected = payload.compressed_size;
        let failed = |problem| BundleError::Payload(PayloadError { name, problem });
        self.out
            .write_all(&member_header(
                &name.member_name(),
                expected,
                self.manifest.created,
            ))
            .map_err(write_err)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        while copied < expected {
            let want = buf.len().min((expected - copied) as usize);
            let n =
                read_full(&mut compressed, &mut buf[..want]).map_err(|source| BundleError::Io {
                    what: "reading a payload",
                    source,
                })?;
            if n == 0 {
                return Err(failed(PayloadProblem::Size {
                    form: Form::Compressed,
                    actual: copied,
                    expected,
                }));
            }
            hash.update(&buf[..n]);
            self.out.write_all(&buf[..n]).map_err(write_err)?;
            copied += n as u64;
        }
        let extra =
            read_full(&mut compressed, &mut buf[..1]).map_err(|source| BundleError::Io {
                what: "reading a payload",
                source,
            })?;
        if extra > 0 {
            return Err(failed(PayloadProblem::Size {
                form: Form::Compressed,
                actual: expected + 1,
                expected,
            }));
        }
        let actual = Sha256Digest::from_hasher(hash);
        if actual != payload.compressed_sha256 {
            return Err(failed(PayloadProblem::Digest {
                form: Form::Compressed,
                actual,
                expected: payload.compressed_sha256,
            }));
        }
        self.out
            .write_all(&[0u8; BLOCK as usize][..padding(expected) as usize])
            .map_err(write_err)?;
        self.next += 1;
        Ok(())
    }

    /// Writes the end-of-archive marker once every payload is in. Returns
    /// the writer, flushed.
    pub fn finish(mut self) -> Result<W, BundleError> {
        if let Some(p) = self.manifest.payloads.get(self.next) {
            return Err(BundleError::MissingPayload(p.name));
        }
        self.out
            .write_all(&[0u8; 2 * BLOCK as usize])
            .and_then(|()| self.out.flush())
            .map_err(write_err)?;
        Ok(self.out)
    }
}
