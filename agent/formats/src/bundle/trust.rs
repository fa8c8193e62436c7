//! Signatures over a manifest, and the policy a device trusts them by.
//!
//! A device trusts a set of public keys and needs `threshold` of them to
//! have signed a manifest. Rotating a key is shipping bundles signed by the
//! old and the new key while devices trust both with a threshold of 1, then
//! dropping the old key from the next image.

use super::keys::{KeyId, PublicKey, SecretKey, Signature};
use super::manifest::{Manifest, ManifestError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// The most signatures a bundle may carry.
pub const MAX_SIGNATURES: usize = 64;

/// One signature: which key made it, and the signature of the manifest's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// Id of the key that signed.
    pub key_id: KeyId,
    /// Ed25519 signature of the manifest's exact bytes.
    pub signature: Signature,
}

impl SignatureEntry {
    /// `key`'s signature of a manifest's exact bytes.
    pub fn sign(key: &SecretKey, manifest_bytes: &[u8]) -> SignatureEntry {
        SignatureEntry {
            key_id: key.public_key().key_id(),
            signature: key.sign(manifest_bytes),
        }
    }
}

/// The `signatures.json` member: a JSON list of [`SignatureEntry`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Signatures(pub Vec<SignatureEntry>);

/// A `signatures.json` that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum SignaturesError {
    #[error("signatures.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("signatures.json: {0} signatures, more than the {MAX_SIGNATURES} allowed")]
    TooMany(usize),
}

impl Signatures {
    /// Parses `signatures.json`.
    pub fn parse(bytes: &[u8]) -> Result<Signatures, SignaturesError> {
        let s: Signatures = serde_json::from_slice(bytes)?;
        if s.0.len() > MAX_SIGNATURES {
            return Err(SignaturesError::TooMany(s.0.len()));
        }
        Ok(s)
    }

    /// The bytes the builder writes: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("signatures serialise");
        out.push(b'\n');
        out
    }
}

/// The keys a device trusts and how many of them must have signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    threshold: usize,
}

/// A trust policy that cannot be met or lists a key twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("trust policy: no trusted keys")]
    NoKeys,
    #[error("trust policy: threshold {threshold} must be between 1 and the {keys} trusted keys")]
    Threshold { threshold: usize, keys: usize },
    #[error("trust policy: key {0} is listed twice")]
    DuplicateKey(KeyId),
}

impl TrustPolicy {
    /// A policy requiring `threshold` distinct signatures from `keys`.
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<TrustPolicy, PolicyError> {
        if keys.is_empty() {
            return Err(PolicyError::NoKeys);
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(PolicyError::Threshold {
                threshold,
                keys: keys.len(),
            });
        }
        let mut ids = HashSet::new();
        for k in &keys {
            // Distinct keys with the same id would make reports ambiguous;
            // with 64-bit ids that is a forged key, not an accident.
            if !ids.insert(k.key_id()) {
                return Err(PolicyError::DuplicateKey(k.key_id()));
            }
        }
        Ok(TrustPolicy { keys, threshold })
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// How many distinct trusted keys must have signed.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    fn key(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.key_id() == id)
    }
}

/// What became of one entry of `signatures.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureStatus {
    /// A trusted key's valid signature, counted towards the threshold.
    Valid,
    /// A trusted key's valid signature, already counted for an earlier entry.
    Repeated,
    /// Made by a trusted key's id, but not a valid signature of these bytes.
    Invalid,
    /// Made by a key the policy does not list.
    NotTrusted,
}

impl fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureStatus::Valid => "valid",
            SignatureStatus::Repeated => "valid, repeated",
            SignatureStatus::Invalid => "signature invalid",
            SignatureStatus::NotTrusted => "not trusted",
        })
    }
}

/// Every signature's status under a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureReport {
    /// One per entry of `signatures.json`, in its order.
    pub entries: Vec<(KeyId, SignatureStatus)>,
    /// Distinct trusted keys with a valid signature.
    pub valid: usize,
    /// How many the policy requires.
    pub required: usize,
}

impl SignatureReport {
    /// Whether the policy is met.
    pub fn met(&self) -> bool {
        self.valid >= self.required
    }
}

impl fmt::Display for SignatureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} required signatures valid",
            self.valid, self.required
        )?;
        if self.entries.is_empty() {
            return f.write_str("; the bundle has no signatures");
        }
        for (id, status) in &self.entries {
            match status {
                SignatureStatus::Valid | SignatureStatus::Repeated => {}
                SignatureStatus::Invalid | SignatureStatus::NotTrusted => {
                    write!(f, "; key {id} {status}")?
                }
            }
        }
        Ok(())
    }
}

/// Checks each signature of `manifest_bytes` against `policy`. Only distinct
/// trusted keys count; unknown keys and bad signatures are reported, not fatal.
pub fn signature_report(
    manifest_bytes: &[u8],
    signatures: &Signatures,
    policy: &TrustPolicy,
) -> SignatureReport {
    let mut counted = HashSet::new();
    let entries = signatures
        .0
        .iter()
        .map(|e| {
            let status = match policy.key(e.key_id) {
                None => SignatureStatus::NotTrusted,
                Some(k) if !k.verifies(manifest_bytes, &e.signature) => SignatureStatus::Invalid,
                Some(_) if !counted.insert(e.key_id) => SignatureStatus::Repeated,
                Some(_) => SignatureStatus::Valid,
            };
            (e.key_id, status)
        })
        .collect();
    SignatureReport {
        entries,
        valid: counted.len(),
        required: policy.threshold,
    }
}

/// Why a manifest was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Too few trusted keys signed these exact bytes.
    #[error("{0}")]
    ThresholdNotMet(SignatureReport),
    /// The signatures are good but the manifest is not one this device can read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Verifies the signatures over the manifest's exact bytes, then parses them.
/// Nothing of the manifest is read before the policy is met.
pub fn verify(
    manifest_bytes: &[u8],
    signatures: &Signatures,
    policy: &TrustPolicy,
) -> Result<Manifest, VerifyError> {
    let report = signature_report(manifest_bytes, signatures, policy);
    if !report.met() {
        return Err(VerifyError::ThresholdNotMet(report));
    }
    Ok(Manifest::parse(manifest_bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::BoardId;
    use crate::bundle::keys::SecretKey;
    use crate::bundle::manifest::tests::manifest;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32])
    }

    fn bytes() -> Vec<u8> {
        manifest("1.2.0", "1.0.0", &[BoardId::X86_64Uefi]).to_bytes()
    }

    fn sign(bytes: &[u8], keys: &[&SecretKey]) -> Signatures {
        Signatures(
            keys.iter()
                .map(|k| SignatureEntry {
                    key_id: k.public_key().key_id(),
                    signature: k.sign(bytes),
                })
                .collect(),
        )
    }

    fn policy(keys: &[&SecretKey], threshold: usize) -> TrustPolicy {
        TrustPolicy::new(keys.iter().map(|k| k.public_key()).collect(), threshold).unwrap()
    }

    #[test]
    fn one_of_one() {
        let (k1, m) = (key(1), bytes());
        let got = verify(&m, &sign(&m, &[&k1]), &policy(&[&k1], 1)).unwrap();
        assert_eq!(got.version.to_string(), "1.2.0");
    }

    #[test]
    fn two_of_three() {
        let (k1, k2, k3, m) = (key(1), key(2), key(3), bytes());
        let p = policy(&[&k1, &k2, &k3], 2);
        verify(&m, &sign(&m, &[&k1, &k3]), &p).unwrap();
        verify(&m, &sign(&m, &[&k3, &k2, &k1]), &p).unwrap();
        let e = verify(&m, &sign(&m, &[&k2]), &p).unwrap_err();
        assert_eq!(e.to_string(), "1 of 2 required signatures valid");
        let e = verify(&m, &Signatures::default(), &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "0 of 2 required signatures valid; the bundle has no signatures"
        );
    }

    #[test]
    fn the_same_key_twice_counts_once() {
        let (k1, k2, m) = (key(1), key(2), bytes());
        let sigs = sign(&m, &[&k1, &k1]);
        let p = policy(&[&k1, &k2], 2);
        let report = signature_report(&m, &sigs, &p);
        assert_eq!(report.valid, 1);
        assert_eq!(report.entries[1].1, SignatureStatus::Repeated);
        let e = verify(&m, &sigs, &p).unwrap_err();
        assert_eq!(e.to_string(), "1 of 2 required signatures valid");
    }

    #[test]
    fn a_tampered_manifest_byte_fails() {
        let (k1, k2, m) = (key(1), key(2), bytes());
        let sigs = sign(&m, &[&k1, &k2]);
        let p = policy(&[&k1, &k2], 1);
        for i in [0, m.len() / 2, m.len() - 1] {
            let mut t = m.clone();
            t[i] ^= 0x01;
            let e = verify(&t, &sigs, &p).unwrap_err();
            let (i1, i2) = (k1.public_key().key_id(), k2.public_key().key_id());
            assert_eq!(
                e.to_string(),
                format!("0 of 1 required signatures valid; key {i1} signature invalid; key {i2} signature invalid")
            );
        }
        // Re-serialised bytes (same manifest, different white space) are not what was signed.
        let compact = serde_json::to_vec(&Manifest::parse(&m).unwrap()).unwrap();
        assert!(verify(&compact, &sigs, &p).is_err());
    }

    #[test]
    fn unknown_keys_are_named_and_ignored() {
        let (k1, k2, stranger, m) = (key(1), key(2), key(9), bytes());
        let p = policy(&[&k1, &k2], 2);
        let e = verify(&m, &sign(&m, &[&stranger, &k1]), &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "1 of 2 required signatures valid; key {} not trusted",
                stranger.public_key().key_id()
            )
        );
        // Met despite a stranger and a bad signature.
        let mut sigs = sign(&m, &[&stranger, &k1, &k2]);
        sigs.0.push(SignatureEntry {
            key_id: k2.public_key().key_id(),
            signature: k1.sign(&m),
        });
        verify(&m, &sigs, &p).unwrap();
        let r = signature_report(&m, &sigs, &p);
        let statuses: Vec<_> = r.entries.iter().map(|e| e.1).collect();
        assert_eq!(
            statuses,
            [
                SignatureStatus::NotTrusted,
                SignatureStatus::Valid,
                SignatureStatus::Valid,
                SignatureStatus::Invalid
            ]
        );
    }

    #[test]
    fn signed_but_invalid_manifest_is_a_manifest_error() {
        let k1 = key(1);
        let m = br#"{"format": 1}"#;
        let e = verify(m, &sign(m, &[&k1]), &policy(&[&k1], 1)).unwrap_err();
        assert!(matches!(e, VerifyError::Manifest(_)), "{e}");
    }

    #[test]
    fn policy_rules() {
        let (k1, k2) = (key(1), key(2));
        let pk = |k: &SecretKey| k.public_key();
        assert_eq!(TrustPolicy::new(vec![], 1), Err(PolicyError::NoKeys));
        assert_eq!(
            TrustPolicy::new(vec![pk(&k1)], 0),
            Err(PolicyError::Threshold {
                threshold: 0,
                keys: 1
            })
        );
        assert_eq!(
            TrustPolicy::new(vec![pk(&k1), pk(&k2)], 3),
            Err(PolicyError::Threshold {
                threshold: 3,
                keys: 2
            })
        );
        assert_eq!(
            TrustPolicy::new(vec![pk(&k1), pk(&k2), pk(&k1)], 1),
            Err(PolicyError::DuplicateKey(pk(&k1).key_id()))
        );
        TrustPolicy::new(vec![pk(&k1), pk(&k2)], 2).unwrap();
    }

    #[test]
    fn signatures_file() {
        let (k1, m) = (key(1), bytes());
        let sigs = sign(&m, &[&k1]);
        let text = String::from_utf8(sigs.to_bytes()).unwrap();
        assert!(text.contains("\"key_id\""), "{text}");
        assert_eq!(Signatures::parse(text.as_bytes()).unwrap(), sigs);
        for (bad, expect) in [
            (r#"[{"key_id": "00", "signature": "00"}]"#, "key id"),
            (
                r#"[{"key_id": "0011223344556677", "signature": "00"}]"#,
                "signature",
            ),
            (
                r#"[{"key_id": "0011223344556677", "sig": "00"}]"#,
                "unknown field",
            ),
            ("{}", "expected a sequence"),
        ] {
            let e = Signatures::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with("signatures.json: ") && e.contains(expect),
                "{e}"
            );
        }
        let many = Signatures(vec![sigs.0[0].clone(); MAX_SIGNATURES + 1]);
        let e = Signatures::parse(&many.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("65 signatures"), "{e}");
    }
}
