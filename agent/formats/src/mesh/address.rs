//! Mesh addresses, derived from node ids so that no one hands them out.
//!
//! Both come from `h = SHA-256(node id)`:
//!
//! - IPv6: the network's /48, 16 zero bits, then `h[0..8]` as the interface id.
//!   A node's IPv6 address depends on nothing but its id and the prefix.
//! - IPv4: the candidate is `h[8..16]` (big-endian) modulo the range's usable
//!   hosts ([`Ipv4Range::host`]). When candidates collide, the lowest node id
//!   keeps its candidate and the others, in node id order, probe
//!   `candidate + k²` for k = 1, 2, … (wrapping) and then, should quadratic
//!   probing find nothing, every slot in turn. See [`assign_ipv4`].

use super::net::{Ipv4Range, MeshPrefix};
use super::node::NodeId;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

fn id_hash(id: &NodeId) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// A node's mesh IPv6 address: prefix, 16 zero bits, 64 bits of SHA-256(node id).
pub fn mesh_ipv6(prefix: &MeshPrefix, id: &NodeId) -> Ipv6Addr {
    let h = id_hash(id);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(prefix.as_bytes());
    b[8..].copy_from_slice(&h[..8]);
    Ipv6Addr::from(b)
}

/// The index (into the range's usable hosts) a node asks for before collisions.
pub fn ipv4_candidate(range: &Ipv4Range, id: &NodeId) -> u32 {
    let h = id_hash(id);
    let n = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
    (n % u64::from(range.usable_hosts())) as u32
}

/// Every member's IPv4 address, as each node computes it from the same member set.
///
/// Members whose candidate is unique get it. Among members sharing a
/// candidate the lowest node id gets it; the rest, taken in node id order
/// over the whole set, probe `candidate + k²` (k = 1, 2, …, modulo the
/// number of usable hosts) for the first free slot, and fall back to
/// `candidate + 1, + 2, …` when quadratic probing (which does not reach
/// every slot unless the count is prime) finds none. A member left over when
/// the range is full gets no address.
///
/// The result depends only on the set, never on the order members were
/// learnt in. An address moves only when another member's candidate or
/// probe lands on it, which happens rarely in a range much larger than the
/// fleet.
pub fn assign_ipv4(range: Ipv4Range, members: &BTreeSet<NodeId>) -> BTreeMap<NodeId, Ipv4Addr> {
    let n = range.usable_hosts();
    let mut by_candidate: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
    for id in members {
        by_candidate
            .entry(ipv4_candidate(&range, id))
            .or_default()
            .push(*id);
    }
    let mut taken: HashSet<u32> = HashSet::with_capacity(members.len());
    let mut slots: BTreeMap<NodeId, u32> = BTreeMap::new();
    let mut losers: Vec<(NodeId, u32)> = Vec::new();
    for (candidate, ids) in by_candidate {
        // `members` iterates in order, so each group is sorted already.
        taken.insert(candidate);
        slots.insert(ids[0], candidate);
        losers.extend(ids[1..].iter().map(|id| (*id, candidate)));
    }
    losers.sort();
    for (id, candidate) in losers {
        if taken.len() as u64 >= u64::from(n) {
            break;
        }
        if let Some(slot) = probe(candidate, n, &taken) {
            taken.insert(slot);
            slots.insert(id, slot);
        }
    }
    slots
        .into_iter()
        .map(|(id, slot)| (id, range.host(slot).expect("slots are below usable_hosts")))
        .collect()
}

fn probe(candidate: u32, n: u32, taken: &HashSet<u32>) -> Option<u32> {
    let (c, n) = (u64::from(candidate), u64::from(n));
    // k² mod n repeats with period n, so k < n sees every quadratic offset.
    let quadratic = (1..n).map(|k| (c + (k * k) % n) % n);
    let linear = (1..n).map(|k| (c + k) % n);
    quadratic
        .chain(linear)
        .map(|s| s as u32)
        .find(|s| !taken.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> NodeId {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        NodeId::from_verifying_key(&key)
    }

    #[test]
    fn ipv6_from_prefix_and_id() {
        let prefix: MeshPrefix = "fd00:1:2::/48".parse().unwrap();
        let a = mesh_ipv6(&prefix, &id(1));
        assert!(prefix.contains(&a));
        assert_eq!(a.segments()[3], 0, "16 zero bits after the /48");
        assert_ne!(a, mesh_ipv6(&prefix, &id(2)));
        // Pinned: a node's address must not change between releases.
        assert_eq!(a.to_string(), "fd00:1:2:0:3475:f98:bd59:fcfc");
    }

    #[test]
    fn ipv4_without_collisions_is_the_candidate() {
        let range = Ipv4Range::DEFAULT;
        let members: BTreeSet<NodeId> = (1..=20).map(id).collect();
        let got = assign_ipv4(range, &members);
        assert_eq!(got.len(), 20);
        for (m, addr) in &got {
            assert!(range.is_usable(addr), "{addr}");
            assert_eq!(range.host_index(addr), Some(ipv4_candidate(&range, m)));
        }
        // Pinned: the candidate of a given node.
        assert_eq!(got[&id(1)].to_string(), "10.77.241.30");
    }

    #[test]
    fn collisions_in_a_tiny_range_are_resolved_the_same_everywhere() {
        let range = Ipv4Range::tiny(Ipv4Addr::new(10, 0, 0, 0), 29); // 6 usable hosts
        let ids: Vec<NodeId> = (1..=6).map(id).collect();
        let forward: BTreeSet<NodeId> = ids.iter().copied().collect();
        let got = assign_ipv4(range, &forward);
        assert_eq!(got.len(), 6, "six members fill six slots");
        let distinct: BTreeSet<Ipv4Addr> = got.values().copied().collect();
        assert_eq!(distinct.len(), 6, "{got:?}");
        assert!(got.values().all(|a| range.is_usable(a)));
        // With six members in six slots, candidates must collide somewhere;
        // the lowest id of each group keeps its candidate.
        let mut groups: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
        for m in &ids {
            groups
                .entry(ipv4_candidate(&range, m))
                .or_default()
                .push(*m);
        }
        assert!(groups.values().any(|g| g.len() > 1), "{groups:?}");
        for (c, g) in &groups {
            let lowest = g.iter().min().unwrap();
            assert_eq!(range.host_index(&got[lowest]), Some(*c));
        }
        // Insertion order does not matter.
        let mut backward = BTreeSet::new();
        for m in ids.iter().rev() {
            backward.insert(*m);
        }
        assert_eq!(assign_ipv4(range, &backward), got);
        // A seventh member does not fit; everyone else keeps an address.
        let mut seven = forward.clone();
        seven.insert(id(7));
        let got7 = assign_ipv4(range, &seven);
        assert_eq!(got7.len(), 6);
        let distinct: BTreeSet<Ipv4Addr> = got7.values().copied().collect();
        assert_eq!(distinct.len(), 6);
    }

    #[test]
    fn forced_collision_probes_quadratically() {
        let range = Ipv4Range::tiny(Ipv4Addr::new(10, 0, 0, 0), 28); // 14 usable
                                                                     // Find three ids with the same candidate.
        let mut by: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
        let trio = (1..=255u8)
            .map(id)
            .find_map(|m| {
                let g = by.entry(ipv4_candidate(&range, &m)).or_default();
                g.push(m);
                (g.len() == 3).then(|| g.clone())
            })
            .expect("255 ids over 14 slots collide");
        let c = ipv4_candidate(&range, &trio[0]);
        let members: BTreeSet<NodeId> = trio.iter().copied().collect();
        let got = assign_ipv4(range, &members);
        let mut sorted = trio.clone();
        sorted.sort();
        assert_eq!(range.host_index(&got[&sorted[0]]), Some(c));
        assert_eq!(range.host_index(&got[&sorted[1]]), Some((c + 1) % 14));
        assert_eq!(range.host_index(&got[&sorted[2]]), Some((c + 4) % 14));
    }

    #[test]
    fn a_full_large_range_still_terminates() {
        let range = Ipv4Range::tiny(Ipv4Addr::new(10, 0, 0, 0), 26); // 62 usable
        let members: BTreeSet<NodeId> = (1..=80).map(id).collect();
        let got = assign_ipv4(range, &members);
        assert_eq!(got.len(), 62);
        let distinct: BTreeSet<Ipv4Addr> = got.values().copied().collect();
        assert_eq!(distinct.len(), 62);
    }
}
