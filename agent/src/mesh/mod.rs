//! The mesh on the device: from verified members to the WireGuard peers
//! this node wants, and the diff that brings the device there.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`mod@diff`] | [`fn@diff`]: wanted peers against the device's peers, as a [`PeerDiff`] |
//! | [`wire`] | sealed datagrams (ChaCha20-Poly1305), replay window, messages |
//! | [`gossip`] | [`Membership`]: SWIM (foca), descriptors, push-pull, beacons; no I/O |
//! | [`device`] | the WireGuard device and the interface's addresses, behind traits with fakes |
//! | [`runtime`] | [`Mesh`]: the tokio service that drives all of the above |
//! | [`status`] | the status file `basalt-agent mesh status` reads |
//!
//! Addresses follow [`basalt_formats::mesh::address`]: every member's IPv4
//! address comes from [`assign_ipv4`] over the same member set, so each node
//! routes a peer's /32 to the address that peer gives itself.

pub mod device;
pub mod diff;
pub mod gossip;
pub mod runtime;
pub mod status;
pub mod wire;

pub use diff::{diff, ActualPeer, Change, PeerDiff, PeerUpdate, WantedPeer};
pub use gossip::{Membership, MembershipConfig};
pub use runtime::{Mesh, MeshConfig, MeshError};

use basalt_formats::mesh::{assign_ipv4, NetworkToken, NodeId, VerifiedDescriptor, WgPublicKey};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What membership knows of a member's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Answering.
    Alive,
    /// Missed some probes; still a peer, so a slow link does not churn the device.
    Suspect,
    /// Declared dead: not a peer until it comes back.
    Dead,
}

/// A member whose descriptor verified, as the membership layer holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedMember {
    /// Its latest verified descriptor.
    pub descriptor: VerifiedDescriptor,
    /// Its health.
    pub liveness: Liveness,
    /// Where its packets were last seen coming from, if that is known
    /// (it may sit behind NAT and not know its public address).
    pub observed_endpoint: Option<SocketAddr>,
}

impl VerifiedMember {
    /// The endpoint to try: the observed one, else the first it advertises
    /// at an address that is not one of this node's own (`own`). Devices
    /// behind NAT often share a private address, a VM's user-mode network
    /// always: sending there reaches this node itself, never the peer.
    pub fn preferred_endpoint(&self, own: &[IpAddr]) -> Option<SocketAddr> {
        self.observed_endpoint.or_else(|| {
            let advertised = &self.descriptor.descriptor().endpoints;
            advertised
                .iter()
                .find(|e| !own.contains(&e.ip()))
                .or(advertised.first())
                .copied()
        })
    }
}

/// The latest descriptor of each member, by node id: with several for one
/// node, the highest `seq` wins (ties go to the lower signed bytes, so every
/// node picks the same one).
fn latest(members: &[VerifiedMember]) -> BTreeMap<NodeId, &VerifiedMember> {
    let mut out: BTreeMap<NodeId, &VerifiedMember> = BTreeMap::new();
    for m in members {
        let id = m.descriptor.node_id();
        let rank = |m: &VerifiedMember| {
            (
                m.descriptor.descriptor().seq,
                std::cmp::Reverse(m.descriptor.signed().descriptor.clone()),
            )
        };
        match out.get(&id) {
            Some(old) if rank(old) >= rank(m) => {}
            _ => {
                out.insert(id, m);
            }
        }
    }
    out
}

/// The ids that IPv4 addresses are assigned over: every member, dead or
/// alive, and this node. Counting dead members keeps everyone else's
/// address still while a member is down; it frees its address only when
/// membership forgets it.
pub fn address_members(self_id: &NodeId, members: &[VerifiedMember]) -> BTreeSet<NodeId> {
    let mut ids: BTreeSet<NodeId> = members.iter().map(|m| m.descriptor.node_id()).collect();
    ids.insert(*self_id);
    ids
}

/// This node's mesh IPv4 address, from the same assignment its peers make.
pub fn own_ipv4(
    self_id: &NodeId,
    members: &[VerifiedMember],
    network: &NetworkToken,
) -> Option<Ipv4Addr> {
    assign_ipv4(network.ipv4_range(), &address_members(self_id, members))
        .get(self_id)
        .copied()
}

/// The WireGuard peers this node wants: every member but itself and the dead,
/// each with its mesh /128 and (when the range has room) its /32.
///
/// Members that claim the same WireGuard key as another member, or as this
/// node, are left out: a key can route to one peer only, and no node can
/// tell which claim is true. The result is sorted by public key.
pub fn wanted_peers(
    self_id: &NodeId,
    members: &[VerifiedMember],
    network: &NetworkToken,
    keepalive: Option<u16>,
    own: &[IpAddr],
) -> Vec<WantedPeer> {
    let latest = latest(members);
    let ipv4 = assign_ipv4(network.ipv4_range(), &address_members(self_id, members));
    let mut claims: BTreeMap<WgPublicKey, usize> = BTreeMap::new();
    for m in latest.values() {
        *claims
            .entry(m.descriptor.descriptor().wg_public_key)
            .or_default() += 1;
    }
    let own_key = latest
        .get(self_id)
        .map(|m| m.descriptor.descriptor().wg_public_key);
    let mut out: Vec<WantedPeer> = latest
        .iter()
        .filter(|(id, m)| *id != self_id && m.liveness != Liveness::Dead)
        .filter_map(|(id, m)| {
            let d = m.descriptor.descriptor();
            if claims[&d.wg_public_key] > 1 || own_key == Some(d.wg_public_key) {
                return None;
            }
            let mut allowed_ips = vec![IpNet::V6(
                Ipv6Net::new(d.ipv6, 128).expect("128 is a valid IPv6 prefix length"),
            )];
            if let Some(v4) = ipv4.get(id) {
                allowed_ips.push(IpNet::V4(
                    Ipv4Net::new(*v4, 32).expect("32 is a valid IPv4 prefix length"),
                ));
            }
            Some(WantedPeer {
                public_key: d.wg_public_key,
                endpoint: m.preferred_endpoint(own),
                allowed_ips,
                keepalive,
            })
        })
        .collect();
    out.sort_by_key(|p| p.public_key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::mesh::{
        mesh_ipv6, Capabilities, Load, NetworkSecret, NodeDescriptor, SignedDescriptor,
    };
    use ed25519_dalek::SigningKey;

    fn network() -> NetworkToken {
        NetworkToken::new(
            "lab".parse().unwrap(),
            NetworkSecret::from_bytes([0x42; 32]),
        )
    }

    fn node(seed: u8) -> NodeId {
        NodeId::from_verifying_key(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    fn member(seed: u8, wg: u8, seq: u64, liveness: Liveness) -> VerifiedMember {
        let net = network();
        let key = SigningKey::from_bytes(&[seed; 32]);
        let node_id = node(seed);
        let d = NodeDescriptor {
            version: 1,
            network: net.name().clone(),
            node_id,
            wg_public_key: WgPublicKey::from_bytes([wg; 32]).unwrap(),
            endpoints: vec![
                format!("192.0.2.{seed}:51820").parse().unwrap(),
                format!("169.254.0.{seed}:51820").parse().unwrap(),
            ],
            ipv6: mesh_ipv6(&net.ipv6_prefix(), &node_id),
            ipv4: "10.77.0.1".parse().unwrap(),
            capabilities: Capabilities {
                models: vec![],
                load: Load::new(0).unwrap(),
                agent_version: "0.1.0".parse().unwrap(),
                bundles: vec![],
            },
            seq,
            issued_at: 1_735_689_600 + seq,
        };
        VerifiedMember {
            descriptor: SignedDescriptor::sign(&d, &key)
                .unwrap()
                .verify(&net)
                .unwrap(),
            liveness,
            observed_endpoint: None,
        }
    }

    fn wg_keys(peers: &[WantedPeer]) -> Vec<u8> {
        peers.iter().map(|p| p.public_key.as_bytes()[0]).collect()
    }

    #[test]
    fn every_live_member_but_self() {
        let net = network();
        let members = vec![
            member(3, 30, 1, Liveness::Alive),
            member(1, 10, 1, Liveness::Alive),
            member(2, 20, 1, Liveness::Suspect),
            member(4, 40, 1, Liveness::Dead),
        ];
        let peers = wanted_peers(&node(1), &members, &net, Some(25), &[]);
        assert_eq!(wg_keys(&peers), [20, 30]);
        let ipv4 = assign_ipv4(net.ipv4_range(), &(1..=4).map(node).collect());
        for (p, seed) in peers.iter().zip([2u8, 3]) {
            let id = node(seed);
            let want: Vec<IpNet> = vec![
                format!("{}/128", mesh_ipv6(&net.ipv6_prefix(), &id))
                    .parse()
                    .unwrap(),
                format!("{}/32", ipv4[&id]).parse().unwrap(),
            ];
            assert_eq!(p.allowed_ips, want);
            assert_eq!(
                p.endpoint,
                Some(format!("192.0.2.{seed}:51820").parse().unwrap())
            );
            assert_eq!(p.keepalive, Some(25));
        }
        assert_eq!(own_ipv4(&node(1), &members, &net), Some(ipv4[&node(1)]));
    }

    #[test]
    fn order_of_members_does_not_matter() {
        let net = network();
        let mut members: Vec<VerifiedMember> = (1..=8)
            .map(|s| member(s, s * 10, 1, Liveness::Alive))
            .collect();
        let a = wanted_peers(&node(1), &members, &net, None, &[]);
        members.reverse();
        assert_eq!(wanted_peers(&node(1), &members, &net, None, &[]), a);
        assert_eq!(a.len(), 7);
    }

    #[test]
    fn latest_descriptor_wins() {
        let net = network();
        let members = vec![
            member(2, 20, 5, Liveness::Alive),
            member(2, 21, 7, Liveness::Alive),
            member(2, 22, 6, Liveness::Alive),
        ];
        assert_eq!(
            wg_keys(&wanted_peers(&node(1), &members, &net, None, &[])),
            [21]
        );
    }

    #[test]
    fn contested_wireguard_keys_are_left_out() {
        let net = network();
        let members = vec![
            member(1, 10, 1, Liveness::Alive),
            member(2, 50, 1, Liveness::Alive),
            member(3, 50, 1, Liveness::Alive),
            member(4, 10, 1, Liveness::Alive),
            member(5, 60, 1, Liveness::Alive),
        ];
        assert_eq!(
            wg_keys(&wanted_peers(&node(1), &members, &net, None, &[])),
            [60]
        );
    }

    #[test]
    fn an_advertised_endpoint_at_one_of_our_own_addresses_is_skipped() {
        let net = network();
        let m = member(2, 20, 1, Liveness::Alive);
        let advertised = m.descriptor.descriptor().endpoints.clone();
        assert!(advertised.len() >= 2, "{advertised:?}");
        let first = wanted_peers(&node(1), std::slice::from_ref(&m), &net, None, &[]);
        assert_eq!(first[0].endpoint, Some(advertised[0]));
        let own = [advertised[0].ip()];
        let peers = wanted_peers(&node(1), &[m], &net, None, &own);
        assert_eq!(peers[0].endpoint, Some(advertised[1]));
    }

    #[test]
    fn observed_endpoint_is_preferred() {
        let net = network();
        let mut m = member(2, 20, 1, Liveness::Alive);
        m.observed_endpoint = Some("198.51.100.7:40000".parse().unwrap());
        let peers = wanted_peers(&node(1), &[m], &net, None, &[]);
        assert_eq!(
            peers[0].endpoint,
            Some("198.51.100.7:40000".parse().unwrap())
        );
    }

    #[test]
    fn dead_members_are_not_peers_but_count_for_addresses() {
        let net = network();
        let alive = vec![member(2, 20, 1, Liveness::Alive)];
        let with_dead = vec![
            member(2, 20, 1, Liveness::Alive),
            member(3, 30, 1, Liveness::Dead),
        ];
        let ids = address_members(&node(1), &with_dead);
        assert_eq!(ids.len(), 3);
        assert_eq!(
            wanted_peers(&node(1), &with_dead, &net, None, &[]),
            wanted_peers(&node(1), &alive, &net, None, &[])
        );
    }
}
