//! Ed25519 keys and signatures in basalt's text forms.
//!
//! - public key: `basalt-ed25519:<base64 of 32 bytes>` (bare 64 hex digits are read too);
//! - secret key: `basalt-ed25519-secret:<base64 of the 32-byte seed>`;
//! - key id: the first 8 bytes of SHA-256 of the public key, in hex;
//! - signature: 64 bytes in hex.

use super::digest::parse_hex;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Prefix of a public key's text form.
pub const PUBLIC_PREFIX: &str = "basalt-ed25519:";
/// Prefix of a secret key's text form.
pub const SECRET_PREFIX: &str = "basalt-ed25519-secret:";

/// A key that does not parse. The text of a secret key is never repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{found:?} is not a basalt public key: expected {PUBLIC_PREFIX}<base64 of 32 bytes> or 64 hex digits")]
    NotAPublicKey { found: String },
    #[error("not a basalt secret key: expected {SECRET_PREFIX}<base64 of a 32-byte seed>")]
    NotASecretKey,
    #[error("{what}: invalid base64")]
    Base64 { what: &'static str },
    #[error("{what}: {len} bytes, expected 32")]
    Length { what: &'static str, len: usize },
    #[error("public key {key}: not a valid Ed25519 point")]
    InvalidPoint { key: String },
    #[error("public key {key}: a weak (small-order) Ed25519 key")]
    WeakKey { key: String },
    #[error("{found:?} is not a key id: expected 16 hex digits")]
    NotAKeyId { found: String },
    #[error("{found:?} is not a signature: expected 128 hex digits")]
    NotASignature { found: String },
}

/// Short name of a public key: the first 8 bytes of SHA-256 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(KeyId).map_err(|_| KeyError::NotAKeyId {
            found: s.chars().take(40).collect(),
        })
    }
}

/// An Ed25519 public key that is a valid, not weak, curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Checks 32 bytes as a public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let text = || format!("{PUBLIC_PREFIX}{}", STANDARD.encode(bytes));
        let key =
            VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPoint { key: text() })?;
        if key.is_weak() {
            return Err(KeyError::WeakKey { key: text() });
        }
        Ok(PublicKey(key))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        KeyId(digest[..8].try_into().expect("8 bytes"))
    }

    /// Whether `signature` is this key's signature of `message` (strict
    /// verification: non-canonical signatures are refused).
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self}, id {})", self.key_id())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bytes: [u8; 32] = if let Some(b64) = t.strip_prefix(PUBLIC_PREFIX) {
            let raw = STANDARD
                .decode(b64)
                .map_err(|_| KeyError::Base64 { what: "public key" })?;
            raw.as_slice().try_into().map_err(|_| KeyError::Length {
                what: "public key",
                len: raw.len(),
            })?
        } else if t.len() == 64 {
            parse_hex(t).map_err(|_| KeyError::NotAPublicKey {
                found: t.to_string(),
            })?
        } else {
            return Err(KeyError::NotAPublicKey {
                found: t.chars().take(80).collect(),
            });
        };
        PublicKey::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 secret key. `Display` writes the secret text form (for the
/// key file); `Debug` shows only the key id.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// The key made from a 32-byte seed. The caller supplies the randomness.
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The signature of `message` (deterministic, as Ed25519 is).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", STANDARD.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(id {})", self.public_key().key_id())
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::NotASecretKey)?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| KeyError::Base64 { what: "secret key" })?;
        let seed: [u8; 32] = raw.as_slice().try_into().map_err(|_| KeyError::Length {
            what: "secret key",
            len: raw.len(),
        })?;
        Ok(SecretKey::from_seed(&seed))
    }
}

/// A 64-byte Ed25519 signature, written as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s)
            .map(Signature)
            .map_err(|_| KeyError::NotASignature {
                found: s.chars().take(140).collect(),
            })
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(KeyId);
serde_via_str!(Signature);

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32])
    }

    #[test]
    fn text_forms_round_trip() {
        let sk = key(1);
        let pk = sk.public_key();
        let text = pk.to_string();
        assert!(text.starts_with("basalt-ed25519:"), "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(
            format!(" {text}\n").parse::<PublicKey>().unwrap(),
            pk,
            "surrounding white space (a key file's newline) is fine"
        );
        assert_eq!(
            hex::encode(pk.to_bytes()).parse::<PublicKey>().unwrap(),
            pk,
            "bare hex"
        );
        let secret = sk.to_string();
        assert!(secret.starts_with("basalt-ed25519-secret:"));
        let back: SecretKey = secret.parse().unwrap();
        assert_eq!(back.public_key(), pk);
        assert!(
            !format!("{sk:?}").contains(&secret[22..]),
            "Debug hides the seed"
        );
        assert_eq!(pk.key_id().to_string().len(), 16);
        assert_eq!(
            pk.key_id().to_string().parse::<KeyId>().unwrap(),
            pk.key_id()
        );
    }

    #[test]
    fn rejected_keys() {
        for bad in [
            "",
            "ssh-ed25519 AAAA",
            "basalt-ed25519:!!!",
            "basalt-ed25519:AAAA",
            &"zz".repeat(32),
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?}");
        }
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let e = PublicKey::from_bytes(&identity).unwrap_err();
        assert!(e.to_string().contains("weak"), "{e}");
        let e = "basalt-ed25519:AAAA".parse::<PublicKey>().unwrap_err();
        assert_eq!(e.to_string(), "public key: 3 bytes, expected 32");
        let e = key(1)
            .public_key()
            .to_string()
            .parse::<SecretKey>()
            .unwrap_err();
        assert_eq!(e, KeyError::NotASecretKey);
        assert!(!e.to_string().contains("basalt-ed25519:"));
    }

    #[test]
    fn sign_and_verify() {
        let sk = key(2);
        let sig = sk.sign(b"manifest");
        assert!(sk.public_key().verifies(b"manifest", &sig));
        assert!(!sk.public_key().verifies(b"manifesT", &sig));
        assert!(!key(3).public_key().verifies(b"manifest", &sig));
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
        assert!("00".parse::<Signature>().is_err());
    }
}
