//! The mesh's shared formats: the network token, the keys derived from it,
//! node identities and descriptors, and the address plan.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`token`] | [`NetworkToken`], its text and binary forms |
//! | [`net`] | [`MeshPrefix`], [`Ipv4Range`], [`BootstrapAddr`] |
//! | [`keys`] | HKDF-SHA256 derivation of the gossip, beacon and network-id keys |
//! | [`node`] | [`NodeId`] (Ed25519) and [`WgPublicKey`] |
//! | [`descriptor`] | [`NodeDescriptor`], [`SignedDescriptor`], [`VerifiedDescriptor`] |
//! | [`address`] | mesh IPv6 and IPv4 addresses from node ids |

pub mod address;
pub mod descriptor;
pub mod keys;
pub mod net;
pub mod node;
pub mod token;

pub use address::{assign_ipv4, mesh_ipv6};
pub use descriptor::{
    BundleAd, Capabilities, DescriptorError, Load, ModelName, NodeDescriptor, SignedDescriptor,
    VerifiedDescriptor,
};
pub use keys::{derive_keys, BeaconKey, GossipKey, MeshKeys, NetworkId};
pub use net::{BootstrapAddr, BootstrapHost, Ipv4Range, MeshPrefix};
pub use node::{NodeId, WgPublicKey};
pub use token::{NetworkName, NetworkSecret, NetworkToken, TokenError};
