//! The mesh's datagrams: sealed with ChaCha20-Poly1305, checked for replay,
//! and the messages inside them.
//!
//! # Datagram
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | kind: `1` gossip (sealed with the gossip key), `2` LAN beacon (sealed with the beacon key) |
//! | 16 | network id ([`NetworkId`]), in the clear so other networks' packets are dropped unopened |
//! | 8 | sender's clock, UNIX milliseconds, big-endian |
//! | 12 | random nonce |
//! | n + 16 | ciphertext and Poly1305 tag |
//!
//! The 37 header bytes are the associated data, so the network id, kind and
//! timestamp cannot be changed without the tag failing. A datagram whose
//! timestamp is more than [`REPLAY_WINDOW`] from the receiver's clock is
//! dropped as stale; one whose nonce was seen within the window is dropped
//! as a replay. The plaintext is a postcard-encoded [`Packet`].

use super::gossip::MeshIdentity;
use basalt_formats::mesh::{MeshKeys, NetworkId};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 16 + 8 + 12;
/// The Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Longest datagram accepted; longer ones are dropped unread. Descriptors
/// may be up to 8 KiB, so this is above one Ethernet frame.
pub const MAX_DATAGRAM: usize = 12 * 1024;
/// How far a datagram's timestamp may be from the receiver's clock.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// Which key a datagram is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Membership traffic between members, gossip key.
    Gossip = 1,
    /// LAN beacons, beacon key.
    Beacon = 2,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("oversized datagram")]
    Oversized,
    /// Too short to hold a header and tag, or of an unknown kind.
    #[error("garbage datagram")]
    Garbage,
    /// Another network's id.
    #[error("datagram of another network")]
    WrongNetwork,
    /// Right network id, but the tag does not verify: forged or damaged.
    #[error("datagram failed authentication")]
    Forged,
    /// Its timestamp is outside the replay window.
    #[error("stale datagram (outside the replay window)")]
    Stale,
    /// Its nonce was seen already within the window.
    #[error("replayed datagram")]
    Replayed,
    /// Authentic, but the message inside does not decode or makes no sense.
    #[error("malformed message")]
    Malformed,
}

/// Datagrams dropped, by reason: what `basalt-agent mesh status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropCounters {
    /// [`Drop::Oversized`].
    pub oversized: u64,
    /// [`Drop::Garbage`].
    pub garbage: u64,
    /// [`Drop::WrongNetwork`].
    pub wrong_network: u64,
    /// [`Drop::Forged`].
    pub forged: u64,
    /// [`Drop::Stale`].
    pub stale: u64,
    /// [`Drop::Replayed`].
    pub replayed: u64,
    /// [`Drop::Malformed`].
    pub malformed: u64,
    /// Descriptors that did not verify against the token.
    pub bad_descriptors: u64,
}

impl DropCounters {
    /// Count one drop.
    pub fn count(&mut self, why: Drop) {
        let c = match why {
            Drop::Oversized => &mut self.oversized,
            Drop::Garbage => &mut self.garbage,
            Drop::WrongNetwork => &mut self.wrong_network,
            Drop::Forged => &mut self.forged,
            Drop::Stale => &mut self.stale,
            Drop::Replayed => &mut self.replayed,
            Drop::Malformed => &mut self.malformed,
        };
        *c += 1;
    }

    /// Every drop.
    pub fn total(&self) -> u64 {
        self.oversized
            + self.garbage
            + self.wrong_network
            + self.forged
            + self.stale
            + self.replayed
            + self.malformed
            + self.bad_descriptors
    }
}

/// Seals and opens datagrams with the keys of one network.
#[derive(Clone)]
pub struct Sealer {
    gossip: ChaCha20Poly1305,
    beacon: ChaCha20Poly1305,
    network_id: NetworkId,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("network_id", &self.network_id)
            .finish_non_exhaustive()
    }
}

/// An opened datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Its kind.
    pub kind: Kind,
    /// The sender's clock, UNIX ms.
    pub timestamp_ms: u64,
    /// Its nonce.
    pub nonce: [u8; 12],
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

impl Sealer {
    /// A sealer for the network whose keys these are.
    pub fn new(keys: &MeshKeys) -> Self {
        Sealer {
            gossip: ChaCha20Poly1305::new(Key::from_slice(keys.gossip.as_bytes())),
            beacon: ChaCha20Poly1305::new(Key::from_slice(keys.beacon.as_bytes())),
            network_id: keys.network_id,
        }
    }

    fn cipher(&self, kind: Kind) -> &ChaCha20Poly1305 {
        match kind {
            Kind::Gossip => &self.gossip,
            Kind::Beacon => &self.beacon,
        }
    }

    /// Seal `plaintext`; `nonce` must be fresh random bytes.
    pub fn seal(&self, kind: Kind, plaintext: &[u8], now_ms: u64, nonce: [u8; 12]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(kind as u8);
        out.extend_from_slice(self.network_id.as_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        let ct = self
            .cipher(kind)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &out[..HEADER_LEN],
                },
            )
            .expect("ChaCha20-Poly1305 seals any message shorter than 256 GiB");
        out.extend_from_slice(&ct);
        out
    }

    /// Open a datagram: size, kind, network and tag are checked, not freshness.
    pub fn open(&self, datagram: &[u8]) -> Result<Opened, Drop> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Drop::Oversized);
        }
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return Err(Drop::Garbage);
        }
        let kind = match datagram[0] {
            1 => Kind::Gossip,
            2 => Kind::Beacon,
            _ => return Err(Drop::Garbage),
        };
        if &datagram[1..17] != self.network_id.as_bytes() {
            return Err(Drop::WrongNetwork);
        }
        let timestamp_ms = u64::from_be_bytes(datagram[17..25].try_into().expect("8 bytes"));
        let nonce: [u8; 12] = datagram[25..HEADER_LEN].try_into().expect("12 bytes");
        let plaintext = self
            .cipher(kind)
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &datagram[HEADER_LEN..],
                    aad: &datagram[..HEADER_LEN],
                },
            )
            .map_err(|_| Drop::Forged)?;
        Ok(Opened {
            kind,
            timestamp_ms,
            nonce,
            plaintext,
        })
    }
}

/// Remembers the nonces of authentic datagrams for twice the window, which
/// covers every datagram still fresh enough to be accepted.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashSet<[u8; 12]>,
    order: VecDeque<(u64, [u8; 12])>,
}

impl ReplayGuard {
    /// Accept a datagram (and remember it) or say why not.
    pub fn check(&mut self, timestamp_ms: u64, nonce: [u8; 12], now_ms: u64) -> Result<(), Drop> {
        let window = REPLAY_WINDOW.as_millis() as u64;
        while let Some(&(at, n)) = self.order.front() {
            if at + 2 * window >= now_ms {
                break;
            }
            self.seen.remove(&n);
            self.order.pop_front();
        }
        if timestamp_ms.abs_diff(now_ms) > window {
            return Err(Drop::Stale);
        }
        if !self.seen.insert(nonce) {
            return Err(Drop::Replayed);
        }
        self.order.push_back((now_ms, nonce));
        Ok(())
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A signed descriptor as it travels: the signer's id, the descriptor's
/// JSON bytes and the Ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDescriptor {
    /// The signer's node id.
    pub signer: [u8; 32],
    /// The descriptor as signed.
    pub descriptor: Vec<u8>,
    /// 64 signature bytes.
    pub signature: Vec<u8>,
}

/// One member in a push-pull exchange: its SWIM state, and the `seq` of its
/// descriptor the sender holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEntry {
    /// Identity, incarnation and state as the sender sees them.
    pub member: foca::Member<MeshIdentity>,
    /// The sender's latest descriptor of it, if any.
    pub seq: Option<u64>,
}

/// What a gossip or beacon datagram carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A foca (SWIM) message.
    Foca(Vec<u8>),
    /// Part of the sender's view, for push-pull: its members in the digest
    /// buckets of `scope`. The receiver of a request (`reply == false`) with
    /// `first` set answers with its own members in the same buckets.
    Sync {
        /// Whether this answers a request.
        reply: bool,
        /// Whether this is the first part.
        first: bool,
        /// Bit `b` set: bucket `b` is covered (all bits: the whole view).
        scope: u64,
        /// The members.
        entries: Vec<SyncEntry>,
    },
    /// "Send me the descriptors of these nodes."
    Want(Vec<[u8; 32]>),
    /// A signed descriptor.
    Descriptor(WireDescriptor),
    /// "I am here": a LAN beacon.
    Beacon,
    /// A push-pull request: a hash of the sender's view per digest bucket.
    /// The receiver starts a [`Body::Sync`] of the buckets that differ.
    Digest(Vec<[u8; 8]>),
}

/// A datagram's plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// Who sent it.
    pub from: MeshIdentity,
    /// What it says.
    pub body: Body,
}

impl Packet {
    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a packet encodes")
    }

    /// Decode a plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, Drop> {
        postcard::from_bytes(bytes).map_err(|_| Drop::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::mesh::{NetworkSecret, NetworkToken};

    fn keys(secret: u8) -> MeshKeys {
        NetworkToken::new(
            "lab".parse().unwrap(),
            NetworkSecret::from_bytes([secret; 32]),
        )
        .keys()
    }

    const NOW: u64 = 1_750_000_000_000;

    #[test]
    fn seals_and_opens() {
        let s = Sealer::new(&keys(1));
        for kind in [Kind::Gossip, Kind::Beacon] {
            let d = s.seal(kind, b"hello", NOW, [3; 12]);
            assert_eq!(d.len(), HEADER_LEN + 5 + TAG_LEN);
            let o = s.open(&d).unwrap();
            assert_eq!(o.kind, kind);
            assert_eq!(o.plaintext, b"hello");
            assert_eq!(o.timestamp_ms, NOW);
            assert_eq!(o.nonce, [3; 12]);
        }
    }

    #[test]
    fn drops_what_it_should() {
        let s = Sealer::new(&keys(1));
        let good = s.seal(Kind::Gossip, b"hello", NOW, [3; 12]);
        // Another network's packets are told apart by the clear id.
        assert_eq!(Sealer::new(&keys(2)).open(&good), Err(Drop::WrongNetwork));
        // Every single-bit change anywhere after the kind is caught.
        for i in 1..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let want = if (1..17).contains(&i) {
                Drop::WrongNetwork
            } else {
                Drop::Forged
            };
            assert_eq!(s.open(&bad), Err(want), "byte {i}");
        }
        // The beacon key does not open gossip.
        let mut relabelled = good.clone();
        relabelled[0] = Kind::Beacon as u8;
        assert_eq!(s.open(&relabelled), Err(Drop::Forged));
        let mut unknown = good.clone();
        unknown[0] = 9;
        assert_eq!(s.open(&unknown), Err(Drop::Garbage));
        assert_eq!(s.open(&good[..HEADER_LEN + 3]), Err(Drop::Garbage));
        assert_eq!(s.open(&[]), Err(Drop::Garbage));
        assert_eq!(s.open(&vec![1u8; MAX_DATAGRAM + 1]), Err(Drop::Oversized));
    }

    #[test]
    fn replays_and_stale_datagrams_are_refused() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(NOW, [1; 12], NOW), Ok(()));
        assert_eq!(g.check(NOW, [1; 12], NOW + 5), Err(Drop::Replayed));
        assert_eq!(g.check(NOW, [2; 12], NOW + 29_000), Ok(()));
        assert_eq!(g.check(NOW, [3; 12], NOW + 31_000), Err(Drop::Stale));
        assert_eq!(g.check(NOW + 31_000, [3; 12], NOW), Err(Drop::Stale));
        // A replay stays refused until it is stale, then nonces are forgotten.
        assert_eq!(g.check(NOW, [1; 12], NOW + 30_000), Err(Drop::Replayed));
        assert_eq!(g.check(NOW + 200_000, [9; 12], NOW + 200_000), Ok(()));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn counters_add_up() {
        let mut c = DropCounters::default();
        for d in [Drop::Forged, Drop::Forged, Drop::Replayed, Drop::Oversized] {
            c.count(d);
        }
        c.bad_descriptors += 1;
        assert_eq!((c.forged, c.replayed, c.oversized), (2, 1, 1));
        assert_eq!(c.total(), 5);
    }

    #[test]
    fn garbage_plaintext_is_malformed() {
        assert_eq!(Packet::decode(&[0xff; 7]), Err(Drop::Malformed));
        assert_eq!(Packet::decode(&[]), Err(Drop::Malformed));
    }
}
