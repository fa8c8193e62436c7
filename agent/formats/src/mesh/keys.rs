//! Keys derived from a network's secret with HKDF-SHA256.
//!
//! One extract step binds the secret to the network name, then each use gets
//! its own label, so no two uses ever share key material:
//!
//! | output | HKDF info | length |
//! | --- | --- | --- |
//! | [`GossipKey`] | `basalt-mesh-v1 gossip-encryption` | 32 (ChaCha20-Poly1305) |
//! | [`NetworkId`] | `basalt-mesh-v1 network-id` | 16 |
//! | [`BeaconKey`] | `basalt-mesh-v1 beacon` | 32 |
//! | default [`MeshPrefix`] | `basalt-mesh-v1 ipv6-prefix` | 5 (after `fd`) |
//!
//! The salt is `basalt-mesh-v1 network ` followed by the network name.

use super::net::MeshPrefix;
use super::token::{NetworkName, NetworkSecret};
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;

/// HKDF info of the gossip encryption key.
pub const LABEL_GOSSIP: &[u8] = b"basalt-mesh-v1 gossip-encryption";
/// HKDF info of the network id.
pub const LABEL_NETWORK_ID: &[u8] = b"basalt-mesh-v1 network-id";
/// HKDF info of the LAN beacon key.
pub const LABEL_BEACON: &[u8] = b"basalt-mesh-v1 beacon";
/// HKDF info of the default IPv6 prefix.
pub const LABEL_IPV6_PREFIX: &[u8] = b"basalt-mesh-v1 ipv6-prefix";
/// Start of the HKDF salt; the network name follows.
pub const SALT_PREFIX: &[u8] = b"basalt-mesh-v1 network ";

fn hkdf(name: &NetworkName, secret: &NetworkSecret) -> Hkdf<Sha256> {
    let mut salt = SALT_PREFIX.to_vec();
    salt.extend_from_slice(name.as_str().as_bytes());
    Hkdf::<Sha256>::new(Some(&salt), secret.as_bytes())
}

fn expand<const N: usize>(h: &Hkdf<Sha256>, label: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    h.expand(label, &mut out)
        .expect("HKDF-SHA256 gives up to 8160 bytes");
    out
}

/// The ChaCha20-Poly1305 key that seals gossip between members.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; 32]);

/// The key that authenticates LAN beacons.
#[derive(Clone, PartialEq, Eq)]
pub struct BeaconKey([u8; 32]);

macro_rules! secret_key {
    ($t:ident) => {
        impl $t {
            /// The key's bytes, to hand to the cipher.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    };
}
secret_key!(GossipKey);
secret_key!(BeaconKey);

/// A public name for the network: sent in the clear at the head of gossip
/// and beacons so a node can drop another network's packets before trying
/// to decrypt them. It reveals nothing about the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId([u8; 16]);

impl NetworkId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkId({self})")
    }
}

/// Everything a member derives from the network token's secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshKeys {
    /// Seals gossip.
    pub gossip: GossipKey,
    /// Names the network in the clear.
    pub network_id: NetworkId,
    /// Authenticates LAN beacons.
    pub beacon: BeaconKey,
}

/// Derive the network's keys from its name and secret.
pub fn derive_keys(name: &NetworkName, secret: &NetworkSecret) -> MeshKeys {
    let h = hkdf(name, secret);
    MeshKeys {
        gossip: GossipKey(expand(&h, LABEL_GOSSIP)),
        network_id: NetworkId(expand(&h, LABEL_NETWORK_ID)),
        beacon: BeaconKey(expand(&h, LABEL_BEACON)),
    }
}

/// The IPv6 prefix a network gets unless its token names one: `fd` and 40 derived bits.
pub fn derive_ipv6_prefix(name: &NetworkName, secret: &NetworkSecret) -> MeshPrefix {
    let bits: [u8; 5] = expand(&hkdf(name, secret), LABEL_IPV6_PREFIX);
    let mut p = [0xfd; 6];
    p[1..].copy_from_slice(&bits);
    MeshPrefix::from_bytes(p).expect("starts with fd")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    // Pinned once: a change here changes every deployed network's keys.
    #[test]
    fn fixed_vectors() {
        let name: NetworkName = "lab".parse().unwrap();
        let secret = NetworkSecret::from_bytes([0x42; 32]);
        let k = derive_keys(&name, &secret);
        assert_eq!(
            hex(k.gossip.as_bytes()),
            "9642e8acda0d9a428a8326df57271bbfe0108ae0b6b34eee2ee1f97838ddfdb7"
        );
        assert_eq!(k.network_id.to_string(), "0221fec9650cf1695536c6c7cc2e2b3e");
        assert_eq!(
            hex(k.beacon.as_bytes()),
            "a733f96be7904ee1d3565cfe20620fd10ff9f11e06e667e62d58bed8846a06a6"
        );
        assert_eq!(
            derive_ipv6_prefix(&name, &secret).to_string(),
            "fda9:d760:b5e5::/48"
        );
    }

    #[test]
    fn name_and_secret_both_matter() {
        let a = derive_keys(&"lab".parse().unwrap(), &NetworkSecret::from_bytes([1; 32]));
        let b = derive_keys(
            &"lab2".parse().unwrap(),
            &NetworkSecret::from_bytes([1; 32]),
        );
        let c = derive_keys(&"lab".parse().unwrap(), &NetworkSecret::from_bytes([2; 32]));
        assert_ne!(a.network_id, b.network_id);
        assert_ne!(a.network_id, c.network_id);
        assert_ne!(a.gossip, b.gossip);
        assert_ne!(a.gossip.as_bytes(), a.beacon.as_bytes());
    }

    #[test]
    fn debug_hides_keys() {
        let k = derive_keys(
            &"lab".parse().unwrap(),
            &NetworkSecret::from_bytes([0x42; 32]),
        );
        let shown = format!("{k:?}");
        assert!(shown.contains("GossipKey(<redacted>)"), "{shown}");
        assert!(!shown.contains(&hex(k.gossip.as_bytes())), "{shown}");
        assert!(!shown.contains(&hex(k.beacon.as_bytes())), "{shown}");
    }
}
