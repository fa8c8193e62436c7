//! The two public keys a node has: its identity (Ed25519) and its WireGuard key (X25519).

use super::net::serde_via_str;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use std::fmt;
use std::str::FromStr;

/// A node's identity: its Ed25519 public key, made on first boot.
///
/// Written as 43 characters of unpadded base64url, so it can stand in file
/// names and URLs and is not mistaken for a WireGuard key. Ordered by its
/// bytes, which is the order every node sorts members in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {value:?}: {reason}")]
pub struct ParseNodeIdError {
    value: String,
    reason: &'static str,
}

impl NodeId {
    /// The id of a public key.
    pub fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> Self {
        NodeId(key.to_bytes())
    }

    /// An id from raw bytes, which must be a valid Ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ParseNodeIdError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| ParseNodeIdError {
            value: URL_SAFE_NO_PAD.encode(bytes),
            reason: "not an Ed25519 public key",
        })?;
        Ok(NodeId(bytes))
    }

    /// The public key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 key that signatures by this node verify against.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .expect("a NodeId is only built from a valid public key")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseNodeIdError {
            value: s.to_string(),
            reason,
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| err("not unpadded base64url"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("a node id is 32 bytes (43 base64url characters)"))?;
        NodeId::from_bytes(bytes).map_err(|e| err(e.reason))
    }
}

/// A WireGuard public key, written in padded standard base64 as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgPublicKey([u8; 32]);

/// Why a WireGuard public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WireGuard public key {value:?}: {reason}")]
pub struct ParseWgKeyError {
    value: String,
    reason: &'static str,
}

impl WgPublicKey {
    /// A key from its 32 bytes; the all-zero key (what `wg` shows for "none") is refused.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ParseWgKeyError> {
        if bytes == [0; 32] {
            return Err(ParseWgKeyError {
                value: STANDARD.encode(bytes),
                reason: "the all-zero key is not a key",
            });
        }
        Ok(WgPublicKey(bytes))
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl FromStr for WgPublicKey {
    type Err = ParseWgKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseWgKeyError {
            value: s.to_string(),
            reason,
        };
        let bytes = STANDARD
            .decode(s)
            .map_err(|_| err("not base64 (44 characters ending in '=', as `wg pubkey` prints)"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("a WireGuard key is 32 bytes (44 base64 characters)"))?;
        WgPublicKey::from_bytes(bytes).map_err(|e| err(e.reason))
    }
}

serde_via_str!(NodeId);
serde_via_str!(WgPublicKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let id = NodeId::from_verifying_key(&key);
        let text = id.to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(id.verifying_key(), key);
        for (bad, why) in [
            ("", "32 bytes"),
            ("abc", "32 bytes"),
            ("AAAA+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "base64url"),
            (&format!("{text}="), "base64url"),
        ] {
            let e = bad.parse::<NodeId>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // y = 2 is not the y-coordinate of any point on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        let e = NodeId::from_bytes(off_curve).unwrap_err().to_string();
        assert!(e.contains("not an Ed25519 public key"), "{e}");
    }

    #[test]
    fn wireguard_keys() {
        // From the wg(8) manual's example configuration.
        let text = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let key: WgPublicKey = text.parse().unwrap();
        assert_eq!(key.to_string(), text);
        for (bad, why) in [
            ("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg", "not base64"),
            ("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D==", "not base64"),
            ("AAAA", "32 bytes"),
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "all-zero"),
        ] {
            let e = bad.parse::<WgPublicKey>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
