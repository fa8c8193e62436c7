//! Node descriptors: what a node tells the mesh about itself, signed with its identity key.
//!
//! A descriptor travels as JSON bytes plus an Ed25519 signature over
//! `basalt-mesh-v1 node-descriptor\0` and those exact bytes. Receivers keep
//! the bytes as they came, so a descriptor can be passed on without
//! re-encoding it.
//!
//! ```json
//! {"version":1,"network":"lab","node_id":"…43 chars…","wg_public_key":"…44 chars…",
//!  "endpoints":["192.0.2.10:51820"],"ipv6":"fd…","ipv4":"10.77.12.34",
//!  "capabilities":{"models":["resnet50"],"load":12,"agent_version":"0.1.0"},
//!  "seq":7,"issued_at":1735689600}
//! ```

use super::address::mesh_ipv6;
use super::net::serde_via_str;
use super::node::{NodeId, WgPublicKey};
use super::token::{NetworkName, NetworkToken};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The descriptor format this code writes and reads.
pub const DESCRIPTOR_VERSION: u32 = 1;
/// Largest descriptor, in bytes, a node accepts.
pub const MAX_DESCRIPTOR_BYTES: usize = 8 * 1024;
/// Most endpoints a descriptor may list.
pub const MAX_ENDPOINTS: usize = 16;
/// Most models a descriptor may list.
pub const MAX_MODELS: usize = 64;
/// Most update bundles a descriptor may list.
pub const MAX_BUNDLES: usize = 4;
/// What a signature covers before the descriptor's bytes.
pub const SIGNING_CONTEXT: &[u8] = b"basalt-mesh-v1 node-descriptor\0";

/// The name a model is served under: 1 to 128 characters of `A-Z`, `a-z`,
/// `0-9`, `.`, `_` and `-`, starting with a letter or digit (it is a path
/// segment of `/v2/models/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

/// Why a model name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model name {0:?}: use 1-128 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
pub struct ParseModelNameError(String);

impl ModelName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ModelName {
    type Err = ParseModelNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(ModelName(s.to_string()))
        } else {
            Err(ParseModelNameError(s.to_string()))
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

serde_via_str!(ModelName);

/// How busy a node is, in percent (0 to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Load(u8);

/// Why a load figure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid load {0}: a load is a percentage from 0 to 100")]
pub struct LoadError(u64);

impl Load {
    /// A load, if `percent` is at most 100.
    pub fn new(percent: u8) -> Result<Self, LoadError> {
        if percent > 100 {
            return Err(LoadError(percent.into()));
        }
        Ok(Load(percent))
    }

    /// The percentage.
    pub fn percent(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Load {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        u8::try_from(n)
            .map_err(|_| LoadError(n))
            .and_then(Load::new)
            .map_err(serde::de::Error::custom)
    }
}

/// An update bundle a node keeps and serves to its mesh peers
/// (`GET /v1/bundles/{manifest_sha256}` on its inference port). Nothing
/// here is trusted: a peer that fetches it verifies its signatures and
/// digests as it would from the update channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleAd {
    /// The bundle's version.
    pub version: semver::Version,
    /// A board it is for.
    pub board: crate::BoardId,
    /// SHA-256 of its manifest, 64 lowercase hex digits: its name on the node.
    pub manifest_sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Set on a delta bundle: the version it is made from, which a node
    /// must run to stage it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<semver::Version>,
}

/// What a node offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Models this node serves.
    pub models: Vec<ModelName>,
    /// How busy it is.
    pub load: Load,
    /// The version of its basalt-agent.
    pub agent_version: semver::Version,
    /// Update bundles it serves to peers; absent in older descriptors, and
    /// left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<BundleAd>,
}

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDescriptor {
    /// Format version, [`DESCRIPTOR_VERSION`].
    pub version: u32,
    /// The network this descriptor is for, so it cannot be replayed into another.
    pub network: NetworkName,
    /// The node's identity key, which signs the descriptor.
    pub node_id: NodeId,
    /// The node's WireGuard public key.
    pub wg_public_key: WgPublicKey,
    /// Where its WireGuard listens, best first.
    pub endpoints: Vec<SocketAddr>,
    /// Its mesh IPv6 address, derived from `node_id`.
    pub ipv6: Ipv6Addr,
    /// Its mesh IPv4 address, as it computed it from the members it knew.
    pub ipv4: Ipv4Addr,
    /// What it offers.
    pub capabilities: Capabilities,
    /// Grows with every descriptor the node issues; the highest wins.
    pub seq: u64,
    /// When it was issued, in seconds since the UNIX epoch.
    pub issued_at: u64,
}

/// Why a descriptor was not signed or not accepted. Each variant names the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// The signing key is not the descriptor's `node_id`.
    #[error("descriptor of node {node}: signed with the key of {signer}, not its own")]
    SignerMismatch {
        /// The node the descriptor names.
        node: NodeId,
        /// The key that signed it.
        signer: NodeId,
    },
    /// Bigger than [`MAX_DESCRIPTOR_BYTES`].
    #[error("descriptor from {signer}: {len} bytes, more than the {MAX_DESCRIPTOR_BYTES} allowed")]
    TooLarge {
        /// Who sent it.
        signer: NodeId,
        /// Its size.
        len: usize,
    },
    /// The signature does not verify.
    #[error("descriptor from {signer}: the signature does not verify")]
    BadSignature {
        /// The claimed signer.
        signer: NodeId,
    },
    /// The signed bytes are not a descriptor.
    #[error("descriptor from {signer}: {reason}")]
    Parse {
        /// The signer.
        signer: NodeId,
        /// What serde said.
        reason: String,
    },
    /// A field breaks a rule.
    #[error("descriptor of node {node}: {field}: {reason}")]
    Invalid {
        /// The node.
        node: NodeId,
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl NodeDescriptor {
    /// The rules a descriptor must keep in `network`: version, network name,
    /// derived IPv6 address, an IPv4 address that is usable in the range,
    /// and sane endpoints and models.
    pub fn check(&self, network: &NetworkToken) -> Result<(), DescriptorError> {
        let invalid = |field, reason: String| DescriptorError::Invalid {
            node: self.node_id,
            field,
            reason,
        };
        if self.version != DESCRIPTOR_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "{} is not supported; this agent reads version {DESCRIPTOR_VERSION}",
                    self.version
                ),
            ));
        }
        if &self.network != network.name() {
            return Err(invalid(
                "network",
                format!(
                    "{:?} is not this node's network {:?}",
                    self.network.as_str(),
                    network.name().as_str()
                ),
            ));
        }
        let want = mesh_ipv6(&network.ipv6_prefix(), &self.node_id);
        if self.ipv6 != want {
            return Err(invalid(
                "ipv6",
                format!(
                    "{} is not the address derived from the node id ({want})",
                    self.ipv6
                ),
            ));
        }
        if !network.ipv4_range().is_usable(&self.ipv4) {
            return Err(invalid(
                "ipv4",
                format!(
                    "{} is not a usable address in the mesh range {}",
                    self.ipv4,
                    network.ipv4_range()
                ),
            ));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(invalid(
                "endpoints",
                format!("{} listed; at most {MAX_ENDPOINTS}", self.endpoints.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for e in &self.endpoints {
            if e.port() == 0 || e.ip().is_unspecified() || e.ip().is_multicast() {
                return Err(invalid("endpoints", format!("{e} cannot be dialled")));
            }
            if !seen.insert(e) {
                return Err(invalid("endpoints", format!("{e} is listed twice")));
            }
        }
        let models = &self.capabilities.models;
        if models.len() > MAX_MODELS {
            return Err(invalid(
                "capabilities.models",
                format!("{} listed; at most {MAX_MODELS}", models.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for m in models {
            if !seen.insert(m) {
                return Err(invalid(
                    "capabilities.models",
                    format!("{m:?} is listed twice", m = m.as_str()),
                ));
            }
        }
        let bundles = &self.capabilities.bundles;
        if bundles.len() > MAX_BUNDLES {
            return Err(invalid(
                "capabilities.bundles",
                format!("{} listed; at most {MAX_BUNDLES}", bundles.len()),
            ));
        }
        for b in bundles {
            let s = &b.manifest_sha256;
            if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(invalid(
                    "capabilities.bundles",
                    format!("{s:?} is not 64 lowercase hex digits"),
                ));
            }
        }
        Ok(())
    }
}

/// A descriptor's exact bytes and its signer's signature over them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDescriptor {
    /// Who signed it; must be the descriptor's `node_id`.
    pub signer: NodeId,
    /// The descriptor as JSON, base64url in the serialised form.
    #[serde(with = "b64_bytes")]
    pub descriptor: Vec<u8>,
    /// Ed25519 over [`SIGNING_CONTEXT`] and `descriptor`.
    #[serde(with = "b64_signature")]
    pub signature: [u8; 64],
}

impl fmt::Debug for SignedDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedDescriptor")
            .field("signer", &self.signer)
            .field("descriptor", &String::from_utf8_lossy(&self.descriptor))
            .field("signature", &URL_SAFE_NO_PAD.encode(self.signature))
            .finish()
    }
}

fn signed_message(bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + bytes.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(bytes);
    m
}

impl SignedDescriptor {
    /// Encode and sign a descriptor with the node's identity key.
    pub fn sign(descriptor: &NodeDescriptor, key: &SigningKey) -> Result<Self, DescriptorError> {
        let signer = NodeId::from_verifying_key(&key.verifying_key());
        if signer != descriptor.node_id {
            return Err(DescriptorError::SignerMismatch {
                node: descriptor.node_id,
                signer,
            });
        }
        let bytes = serde_json::to_vec(descriptor).expect("a descriptor serialises");
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge {
                signer,
                len: bytes.len(),
            });
        }
        let signature = key.sign(&signed_message(&bytes)).to_bytes();
        Ok(SignedDescriptor {
            signer,
            descriptor: bytes,
            signature,
        })
    }

    /// Check the signature, that the descriptor names its signer, and the
    /// descriptor's rules in `network` ([`NodeDescriptor::check`]).
    pub fn verify(&self, network: &NetworkToken) -> Result<VerifiedDescriptor, DescriptorError> {
        let signer = self.signer;
        if self.descriptor.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge {
                signer,
                len: self.descriptor.len(),
            });
        }
        signer
            .verifying_key()
            .verify_strict(
                &signed_message(&self.descriptor),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| DescriptorError::BadSignature { signer })?;
        let descriptor: NodeDescriptor =
            serde_json::from_slice(&self.descriptor).map_err(|e| DescriptorError::Parse {
                signer,
                reason: e.to_string(),
            })?;
        if descriptor.node_id != signer {
            return Err(DescriptorError::SignerMismatch {
                node: descriptor.node_id,
                signer,
            });
        }
        descriptor.check(network)?;
        Ok(VerifiedDescriptor {
            signed: self.clone(),
            descriptor,
        })
    }
}

/// A descriptor whose signature and rules were checked by [`SignedDescriptor::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDescriptor {
    signed: SignedDescriptor,
    descriptor: NodeDescriptor,
}

impl VerifiedDescriptor {
    /// The checked descriptor.
    pub fn descriptor(&self) -> &NodeDescriptor {
        &self.descriptor
    }

    /// The bytes and signature it came as, to pass on unchanged.
    pub fn signed(&self) -> &SignedDescriptor {
        &self.signed
    }

    /// The node it describes.
    pub fn node_id(&self) -> NodeId {
        self.descriptor.node_id
    }
}

mod b64_bytes {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("not unpadded base64url: {e}")))
    }
}

mod b64_signature {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        super::b64_bytes::serialize(b, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v = super::b64_bytes::deserialize(d)?;
        let len = v.len();
        v.try_into().map_err(|_| {
            serde::de::Error::custom(format!("a signature is 64 bytes, this one is {len}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::token::NetworkSecret;

    fn network() -> NetworkToken {
        NetworkToken::new(
            "lab".parse().unwrap(),
            NetworkSecret::from_bytes([0x42; 32]),
        )
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn descriptor(key: &SigningKey, net: &NetworkToken) -> NodeDescriptor {
        let node_id = NodeId::from_verifying_key(&key.verifying_key());
        NodeDescriptor {
            version: 1,
            network: net.name().clone(),
            node_id,
            wg_public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
                .parse()
                .unwrap(),
            endpoints: vec![
                "192.0.2.10:51820".parse().unwrap(),
                "[2001:db8::10]:51820".parse().unwrap(),
            ],
            ipv6: mesh_ipv6(&net.ipv6_prefix(), &node_id),
            ipv4: "10.77.12.34".parse().unwrap(),
            capabilities: Capabilities {
                models: vec!["resnet50".parse().unwrap()],
                load: Load::new(12).unwrap(),
                bundles: vec![],
                agent_version: "0.1.0".parse().unwrap(),
            },
            seq: 7,
            issued_at: 1_735_689_600,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let net = network();
        let k = key(1);
        let d = descriptor(&k, &net);
        let signed = SignedDescriptor::sign(&d, &k).unwrap();
        let v = signed.verify(&net).unwrap();
        assert_eq!(v.descriptor(), &d);
        assert_eq!(v.node_id(), d.node_id);
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedDescriptor = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        back.verify(&net).unwrap();
    }

    #[test]
    fn sign_refuses_another_nodes_key() {
        let net = network();
        let d = descriptor(&key(1), &net);
        let e = SignedDescriptor::sign(&d, &key(2)).unwrap_err();
        assert!(matches!(e, DescriptorError::SignerMismatch { .. }), "{e}");
    }

    /// Sign whatever JSON we like with `k`, to test what verify does with it.
    fn forge(k: &SigningKey, json: &serde_json::Value) -> SignedDescriptor {
        let bytes = serde_json::to_vec(json).unwrap();
        SignedDescriptor {
            signer: NodeId::from_verifying_key(&k.verifying_key()),
            signature: k.sign(&signed_message(&bytes)).to_bytes(),
            descriptor: bytes,
        }
    }

    #[test]
    fn rejects() {
        let net = network();
        let k = key(1);
        let good = serde_json::to_value(descriptor(&k, &net)).unwrap();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            forge(&k, &v)
        };
        let other = descriptor(&key(2), &net);
        let other_net = NetworkToken::new(
            "lab2".parse().unwrap(),
            NetworkSecret::from_bytes([0x42; 32]),
        );
        let mut tampered = SignedDescriptor::sign(&descriptor(&k, &net), &k).unwrap();
        tampered.descriptor[20] ^= 1;
        let mut wrong_signer = SignedDescriptor::sign(&descriptor(&k, &net), &k).unwrap();
        wrong_signer.signer = other.node_id;
        let mut bad_sig = SignedDescriptor::sign(&descriptor(&k, &net), &k).unwrap();
        bad_sig.signature[0] ^= 1;
        let cases: Vec<(SignedDescriptor, &str)> = vec![
            (tampered, "the signature does not verify"),
            (wrong_signer, "the signature does not verify"),
            (bad_sig, "the signature does not verify"),
            (
                edit(&|v| v["node_id"] = other.node_id.to_string().into()),
                "signed with the key of",
            ),
            (
                edit(&|v| v["version"] = 2.into()),
                "version: 2 is not supported",
            ),
            (
                edit(&|v| v["network"] = "lab2".into()),
                "network: \"lab2\" is not this node's network \"lab\"",
            ),
            (
                edit(&|v| v["ipv6"] = "fd00::1".into()),
                "ipv6: fd00::1 is not the address derived from the node id",
            ),
            (
                edit(&|v| v["ipv4"] = "10.78.0.1".into()),
                "ipv4: 10.78.0.1 is not a usable address in the mesh range 10.77.0.0/16",
            ),
            (
                edit(&|v| v["ipv4"] = "10.77.3.0".into()),
                "ipv4: 10.77.3.0 is not a usable",
            ),
            (
                edit(&|v| v["endpoints"] = serde_json::json!(["0.0.0.0:51820"])),
                "endpoints: 0.0.0.0:51820 cannot be dialled",
            ),
            (
                edit(&|v| v["endpoints"] = serde_json::json!(["192.0.2.1:1", "192.0.2.1:1"])),
                "endpoints: 192.0.2.1:1 is listed twice",
            ),
            (
                edit(&|v| v["capabilities"]["models"] = serde_json::json!(["a", "a"])),
                "capabilities.models: \"a\" is listed twice",
            ),
            (
                edit(&|v| v["capabilities"]["load"] = 101.into()),
                "invalid load 101",
            ),
            (
                edit(&|v| v["capabilities"]["models"] = serde_json::json!(["../etc"])),
                "invalid model name \"../etc\"",
            ),
            (
                edit(&|v| {
                    v["capabilities"]["bundles"] = serde_json::json!([{
                        "version": "1.0.0", "board": "x86_64-uefi",
                        "manifest_sha256": "AB", "size": 1
                    }])
                }),
                "capabilities.bundles: \"AB\" is not 64 lowercase hex digits",
            ),
            (
                edit(&|v| {
                    let b = serde_json::json!({
                        "version": "1.0.0", "board": "x86_64-uefi",
                        "manifest_sha256": "a".repeat(64), "size": 1
                    });
                    v["capabilities"]["bundles"] = serde_json::json!([b, b, b, b, b]);
                }),
                "capabilities.bundles: 5 listed; at most 4",
            ),
            (edit(&|v| v["extra"] = 1.into()), "unknown field `extra`"),
            (
                edit(&|v| v["wg_public_key"] = "nope".into()),
                "invalid WireGuard public key",
            ),
            (
                forge(&k, &serde_json::json!("x".repeat(MAX_DESCRIPTOR_BYTES))),
                "more than the 8192 allowed",
            ),
        ];
        for (signed, want) in cases {
            let e = signed.verify(&net).unwrap_err().to_string();
            assert!(e.contains(want), "got {e:?}, want {want:?}");
        }
        let e = SignedDescriptor::sign(&descriptor(&k, &net), &k)
            .unwrap()
            .verify(&other_net)
            .unwrap_err()
            .to_string();
        assert!(e.contains("network"), "{e}");
    }

    #[test]
    fn bundles_are_optional_and_round_trip() {
        let net = network();
        let k = key(1);
        let mut d = descriptor(&k, &net);
        // Without bundles the field is left out, so older agents read it.
        let bytes = serde_json::to_vec(&d).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("bundles"));
        SignedDescriptor::sign(&d, &k)
            .unwrap()
            .verify(&net)
            .unwrap();
        d.capabilities.bundles = vec![BundleAd {
            version: "0.3.1".parse().unwrap(),
            board: crate::BoardId::X86_64Uefi,
            manifest_sha256: "0f".repeat(32),
            size: 734_003_200,
            base_version: None,
        }];
        let got = SignedDescriptor::sign(&d, &k)
            .unwrap()
            .verify(&net)
            .unwrap();
        assert_eq!(
            got.descriptor().capabilities.bundles,
            d.capabilities.bundles
        );
    }

    #[test]
    fn strict_serialised_form() {
        let net = network();
        let k = key(1);
        let signed = SignedDescriptor::sign(&descriptor(&k, &net), &k).unwrap();
        let mut v = serde_json::to_value(&signed).unwrap();
        v["signature"] = "AAAA".into();
        let e = serde_json::from_value::<SignedDescriptor>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a signature is 64 bytes, this one is 3"), "{e}");
        let mut v = serde_json::to_value(&signed).unwrap();
        v["note"] = "hi".into();
        let e = serde_json::from_value::<SignedDescriptor>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `note`"), "{e}");
    }

    #[test]
    fn model_names_and_loads() {
        for ok in ["resnet50", "Llama-3.2_1B", "a", &"m".repeat(128)] {
            ok.parse::<ModelName>().unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"m".repeat(129)] {
            assert!(bad.parse::<ModelName>().is_err(), "{bad}");
        }
        assert!(Load::new(100).is_ok());
        assert!(Load::new(101).is_err());
    }
}
