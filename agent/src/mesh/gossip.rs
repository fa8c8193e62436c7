//! Membership: SWIM (the `foca` crate) over sealed datagrams, signed
//! descriptors as foca's custom broadcasts, and a push-pull of views that
//! starts with a digest, every second while the view is changing and every
//! [`MembershipConfig::sync_interval`] once it is stable.
//!
//! [`Membership`] does no I/O: datagrams and timer ticks go in, datagrams to
//! send come out ([`Membership::take_outgoing`]), so the same code runs in
//! the agent ([`super::runtime`]) and in the in-memory simulation
//! (`mesh-sim`).
//!
//! # How a node joins and stays in
//!
//! - **Bootstrap and beacons.** Until it knows a member, a node sends a sync
//!   request with its whole view (itself) to each bootstrap address; a LAN
//!   beacon from a node it does not know as a live member gets one too. The
//!   answer is the other side's whole view, which foca applies; foca's `MemberUp` then asks each new member
//!   for its descriptor (`Want`) if it has none.
//! - **Push-pull.** When [`Membership::poll_sync`] finds one due, a node
//!   sends one random member a digest of its view: the members (itself
//!   included) fall into [`DIGEST_BUCKETS`] buckets by node id, and each
//!   bucket is summed up in 8 bytes ([`view_digest`]: identity, down or not,
//!   `seq` of the descriptor held). The receiver sends its members in the
//!   buckets that differ ([`digest_diff`]) and gets the sender's members in
//!   the same buckets back; each side then sends the descriptors the other
//!   lacks and asks for the ones it lacks. Nodes that agree exchange one
//!   512-byte datagram. SWIM alone spreads updates by piggybacking, which
//!   after a mass boot took minutes to converge (MESH-NOTES).
//! - **Schedule.** [`sync_delay`]: every [`SYNC_FAST`] in a node's first
//!   [`SYNC_FAST_AFTER_START`] and for [`SYNC_FAST_AFTER_JOIN`] after a
//!   member came up, every [`MembershipConfig::sync_interval`] otherwise,
//!   each give or take a quarter. The runtime and the simulation both
//!   follow it through [`Membership::poll_sync`].
//! - **Identity.** A foca identity is the node id, its gossip address and a
//!   stamp (UNIX ms at start). Foca treats the node id as the member's
//!   address, so a restarted node (higher stamp, maybe a new address)
//!   replaces its old identity, and a node declared down renews itself with
//!   stamp + 1 and rejoins.
//!
//! Gossip is trusted as far as the token goes: every member holds the gossip
//! key, so a member could lie about another's liveness. WireGuard keys and
//! addresses come only from descriptors signed by the node they describe.

use super::wire::{
    Body, Drop, DropCounters, Kind, Packet, ReplayGuard, Sealer, SyncEntry, WireDescriptor,
};
use super::{Liveness, VerifiedMember};
use basalt_formats::mesh::{
    mesh_ipv6, Capabilities, Load, NetworkToken, NodeDescriptor, NodeId, SignedDescriptor,
    VerifiedDescriptor, WgPublicKey,
};
use ed25519_dalek::SigningKey;
use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest foca message; sealing adds 53 bytes, so datagrams stay in one
/// Ethernet frame.
pub const FOCA_MAX_PACKET: usize = 1200;
/// Members per push-pull datagram.
const SYNC_CHUNK: usize = 12;
/// Node ids per `Want`.
const WANT_CHUNK: usize = 32;
/// A node forgotten by foca loses its descriptor after this long.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// At most one sync answer to a beacon per node in this time.
const BEACON_SYNC_EVERY: Duration = Duration::from_secs(5);
/// Push-pull period while the view is still changing.
pub const SYNC_FAST: Duration = Duration::from_secs(1);
/// Push-pull stays fast this long after start...
pub const SYNC_FAST_AFTER_START: Duration = Duration::from_secs(30);
/// ...and this long after a member was last seen to come up.
pub const SYNC_FAST_AFTER_JOIN: Duration = Duration::from_secs(10);

/// Buckets of a push-pull digest; a member falls in one by the first byte of
/// its node id.
pub const DIGEST_BUCKETS: usize = 64;
/// A [`Body::Sync`] scope covering every bucket: the whole view.
pub const WHOLE_VIEW: u64 = u64::MAX;

/// The digest bucket of a node.
pub fn digest_bucket(node: &[u8; 32]) -> usize {
    usize::from(node[0]) * DIGEST_BUCKETS / 256
}

fn in_scope(node: &[u8; 32], scope: u64) -> bool {
    scope & (1 << digest_bucket(node)) != 0
}

/// Per bucket, an order-free hash of what push-pull reconciles about each
/// member in it: its identity (node id and stamp), whether it is down, and
/// the `seq` of the descriptor held. Incarnations and suspicion are SWIM's
/// to spread. Not a security measure: datagrams are authenticated, and a
/// member could lie in the entries as well.
pub fn view_digest(entries: &[SyncEntry]) -> Vec<[u8; 8]> {
    let mut sums = vec![0u64; DIGEST_BUCKETS];
    for e in entries {
        let id = e.member.id();
        // FNV-1a, then splitmix64's finaliser so sums of entries mix well.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let down = [u8::from(e.member.state() == State::Down)];
        let seq = e.seq.map_or([0xff; 9], |s| {
            let mut b = [0u8; 9];
            b[1..].copy_from_slice(&s.to_le_bytes());
            b
        });
        for byte in id
            .node
            .iter()
            .chain(&id.stamp.to_le_bytes())
            .chain(&down)
            .chain(&seq)
        {
            h = (h ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let b = &mut sums[digest_bucket(&id.node)];
        *b = b.wrapping_add(h);
    }
    sums.into_iter().map(u64::to_le_bytes).collect()
}

/// The buckets in which two digests differ, as a [`Body::Sync`] scope; the
/// whole view if they are not both [`DIGEST_BUCKETS`] long.
pub fn digest_diff(mine: &[[u8; 8]], theirs: &[[u8; 8]]) -> u64 {
    if mine.len() != DIGEST_BUCKETS || theirs.len() != DIGEST_BUCKETS {
        return WHOLE_VIEW;
    }
    mine.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .fold(0, |scope, (i, _)| scope | 1 << i)
}

/// How long after the last push-pull the next is due: [`SYNC_FAST`] in the
/// first [`SYNC_FAST_AFTER_START`] and for [`SYNC_FAST_AFTER_JOIN`] after a
/// member came up (a view still changing), `steady` otherwise.
pub fn sync_delay(since_start: Duration, since_join: Duration, steady: Duration) -> Duration {
    if since_start < SYNC_FAST_AFTER_START || since_join < SYNC_FAST_AFTER_JOIN {
        SYNC_FAST.min(steady)
    } else {
        steady
    }
}

/// A foca identity: who, where its gossip goes, and which start of it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshIdentity {
    /// The node id's bytes.
    pub node: [u8; 32],
    /// Its gossip socket.
    pub addr: SocketAddr,
    /// UNIX ms when this identity was made; higher wins.
    pub stamp: u64,
}

impl fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.node[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "{short}@{}#{}", self.addr, self.stamp)
    }
}

impl foca::Identity for MeshIdentity {
    type Addr = [u8; 32];

    fn renew(&self) -> Option<Self> {
        Some(MeshIdentity {
            stamp: self.stamp + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> [u8; 32] {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.stamp, self.addr) > (adversary.stamp, adversary.addr)
    }
}

/// The time as membership sees it: monotonic for timers, wall clock for
/// datagram timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic.
    pub mono: Instant,
    /// UNIX milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// The real time.
    pub fn real() -> Self {
        Now {
            mono: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// This time plus `d`.
    pub fn after(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

impl From<&SignedDescriptor> for WireDescriptor {
    fn from(s: &SignedDescriptor) -> Self {
        WireDescriptor {
            signer: *s.signer.as_bytes(),
            descriptor: s.descriptor.clone(),
            signature: s.signature.to_vec(),
        }
    }
}

#[derive(Clone, Debug)]
struct Stored {
    verified: VerifiedDescriptor,
    wire: WireDescriptor,
    received: Instant,
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorRejected {
    /// Its signer is not a valid Ed25519 key or its signature is not 64 bytes.
    #[error("descriptor with a malformed signer or signature")]
    Malformed,
    /// It did not verify against the token.
    #[error(transparent)]
    Invalid(#[from] basalt_formats::mesh::DescriptorError),
}

/// The latest verified descriptor of each node.
#[derive(Debug)]
pub struct DescriptorStore {
    token: NetworkToken,
    by_node: BTreeMap<[u8; 32], Stored>,
}

impl DescriptorStore {
    /// An empty store for this network.
    pub fn new(token: NetworkToken) -> Self {
        DescriptorStore {
            token,
            by_node: BTreeMap::new(),
        }
    }

    /// The `seq` held for a node.
    pub fn seq(&self, node: &[u8; 32]) -> Option<u64> {
        self.by_node.get(node).map(|s| s.verified.descriptor().seq)
    }

    /// Verify and keep a descriptor; `Ok(Some(seq))` when it is news.
    pub fn accept(
        &mut self,
        wire: &WireDescriptor,
        now: Instant,
    ) -> Result<Option<u64>, DescriptorRejected> {
        if let Some(s) = self.by_node.get_mut(&wire.signer) {
            if s.wire == *wire {
                s.received = now;
                return Ok(None);
            }
        }
        let signer = NodeId::from_bytes(wire.signer).map_err(|_| DescriptorRejected::Malformed)?;
        let signature: [u8; 64] = wire
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| DescriptorRejected::Malformed)?;
        let verified = SignedDescriptor {
            signer,
            descriptor: wire.descriptor.clone(),
            signature,
        }
        .verify(&self.token)?;
        let seq = verified.descriptor().seq;
        if self.seq(&wire.signer).is_some_and(|have| have >= seq) {
            return Ok(None);
        }
        self.by_node.insert(
            wire.signer,
            Stored {
                verified,
                wire: wire.clone(),
                received: now,
            },
        );
        Ok(Some(seq))
    }

    /// A node's descriptor as it travels.
    pub fn wire(&self, node: &[u8; 32]) -> Option<&WireDescriptor> {
        self.by_node.get(node).map(|s| &s.wire)
    }

    /// Every descriptor held.
    pub fn verified(&self) -> impl Iterator<Item = &VerifiedDescriptor> {
        self.by_node.values().map(|s| &s.verified)
    }

    /// Nodes held.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    fn retain(&mut self, mut keep: impl FnMut(&[u8; 32], Instant) -> bool) {
        self.by_node.retain(|n, s| keep(n, s.received));
    }
}

/// foca's key for a descriptor broadcast: a newer `seq` of the same node
/// replaces an older one still being spread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorKey {
    node: [u8; 32],
    seq: u64,
}

impl foca::Invalidates for DescriptorKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.seq > other.seq
    }
}

/// Receives descriptors that arrive as foca custom broadcasts.
#[derive(Debug)]
pub struct DescriptorBroadcasts {
    store: Rc<RefCell<DescriptorStore>>,
    rejected: Rc<RefCell<u64>>,
    changed: Rc<RefCell<bool>>,
}

impl foca::BroadcastHandler<MeshIdentity> for DescriptorBroadcasts {
    type Key = DescriptorKey;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&MeshIdentity>,
    ) -> Result<Option<DescriptorKey>, Self::Error> {
        // A bad descriptor is counted and not spread; the rest of the
        // message is still handled.
        let Ok(wire) = postcard::from_bytes::<WireDescriptor>(data) else {
            *self.rejected.borrow_mut() += 1;
            return Ok(None);
        };
        match self.store.borrow_mut().accept(&wire, Instant::now()) {
            Ok(Some(seq)) => {
                *self.changed.borrow_mut() = true;
                Ok(Some(DescriptorKey {
                    node: wire.signer,
                    seq,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                log::debug!("dropped a gossiped descriptor: {e}");
                *self.rejected.borrow_mut() += 1;
                Ok(None)
            }
        }
    }
}

/// Membership timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Expected fleet size: sets how often updates are repeated and how long
    /// a suspect has to answer (foca's `new_lan`).
    pub cluster_size_hint: u32,
    /// Push-pull with one random member this often once the view is
    /// stable ([`sync_delay`]).
    pub sync_interval: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            cluster_size_hint: 16,
            sync_interval: Duration::from_secs(15),
        }
    }
}

impl MembershipConfig {
    /// foca's configuration: memberlist's LAN defaults (1 s probes,
    /// suspicion of 4 × log10(size) probe periods, at least 4 s), 1200-byte
    /// messages, dead members forgotten after 15 minutes.
    pub fn foca(&self) -> foca::Config {
        let size = NonZeroU32::new(self.cluster_size_hint.max(1)).expect("at least 1");
        let mut c = foca::Config::new_lan(size);
        c.max_packet_size = NonZeroUsize::new(FOCA_MAX_PACKET).expect("not zero");
        c.remove_down_after = FORGET_AFTER;
        c
    }
}

/// What this node says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnInfo {
    /// Its WireGuard public key.
    pub wg_public_key: WgPublicKey,
    /// Where its WireGuard listens.
    pub endpoints: Vec<SocketAddr>,
    /// The IPv4 address it takes.
    pub ipv4: Ipv4Addr,
    /// The models it serves.
    pub models: Vec<basalt_formats::mesh::ModelName>,
    /// How busy its inference server is.
    pub load: Load,
    /// The update bundles it serves to peers.
    pub bundles: Vec<basalt_formats::mesh::BundleAd>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The own descriptor could not be signed (too many endpoints, too large).
    #[error("signing this node's descriptor: {0}")]
    Descriptor(#[from] basalt_formats::mesh::DescriptorError),
    /// The own descriptor did not verify against the token.
    #[error("this node's own descriptor does not verify: {0}")]
    OwnDescriptor(DescriptorRejected),
}

type FocaInstance = Foca<MeshIdentity, PostcardCodec, StdRng, DescriptorBroadcasts>;

/// A node's membership state machine; see the module docs.
pub struct Membership {
    token: NetworkToken,
    key: SigningKey,
    me: MeshIdentity,
    config: MembershipConfig,
    foca: FocaInstance,
    rt: AccumulatingRuntime<MeshIdentity>,
    store: Rc<RefCell<DescriptorStore>>,
    rejected: Rc<RefCell<u64>>,
    changed: Rc<RefCell<bool>>,
    sealer: Sealer,
    replay: ReplayGuard,
    drops: DropCounters,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: HashMap<u64, Timer<MeshIdentity>>,
    timer_seq: u64,
    out: Vec<(SocketAddr, Vec<u8>)>,
    observed: HashMap<[u8; 32], SocketAddr>,
    beacon_synced: HashMap<[u8; 32], Instant>,
    rng: StdRng,
    own: OwnInfo,
    own_seq: u64,
    sent_bytes: u64,
    sent_datagrams: u64,
    started: Instant,
    last_join: Instant,
    last_sync: Instant,
    sync_jitter: f64,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .field("members", &self.foca.num_members())
            .field("descriptors", &self.store.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Start membership for the node whose key this is, gossiping from
    /// `gossip_addr`. `seed` feeds the random choices (use fresh entropy
    /// outside simulations).
    pub fn new(
        token: NetworkToken,
        key: SigningKey,
        gossip_addr: SocketAddr,
        own: OwnInfo,
        config: MembershipConfig,
        now: Now,
        seed: u64,
    ) -> Result<Self, MembershipError> {
        let node = *NodeId::from_verifying_key(&key.verifying_key()).as_bytes();
        let me = MeshIdentity {
            node,
            addr: gossip_addr,
            stamp: now.unix_ms,
        };
        let store = Rc::new(RefCell::new(DescriptorStore::new(token.clone())));
        let rejected = Rc::new(RefCell::new(0));
        let changed = Rc::new(RefCell::new(true));
        let handler = DescriptorBroadcasts {
            store: store.clone(),
            rejected: rejected.clone(),
            changed: changed.clone(),
        };
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            config.foca(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
            handler,
        );
        let mut m = Membership {
            sealer: Sealer::new(&token.keys()),
            token,
            key,
            me,
            config,
            foca,
            rt: AccumulatingRuntime::new(),
            store,
            rejected,
            changed,
            replay: ReplayGuard::default(),
            drops: DropCounters::default(),
            timers: BinaryHeap::new(),
            timer_events: HashMap::new(),
            timer_seq: 0,
            out: Vec::new(),
            observed: HashMap::new(),
            beacon_synced: HashMap::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            own: own.clone(),
            own_seq: 0,
            sent_bytes: 0,
            sent_datagrams: 0,
            started: now.mono,
            last_join: now.mono,
            last_sync: now.mono,
            sync_jitter: 1.0,
        };
        m.sync_jitter = m.rng.random_range(0.5..1.5);
        m.sign_own(now)?;
        Ok(m)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_verifying_key(&self.key.verifying_key())
    }

    /// The current foca identity.
    pub fn identity(&self) -> &MeshIdentity {
        &self.me
    }

    /// What this node says about itself now.
    pub fn own(&self) -> &OwnInfo {
        &self.own
    }

    /// Push-pull with a random member if one is due by [`sync_delay`]
    /// (give or take a quarter, so nodes started together drift apart). The
    /// runtime calls this every tick, the simulation too.
    pub fn poll_sync(&mut self, now: Now) {
        let since = |t: Instant| now.mono.saturating_duration_since(t);
        let delay = sync_delay(
            since(self.started),
            since(self.last_join),
            self.config.sync_interval,
        );
        if since(self.last_sync) >= delay.mul_f64(self.sync_jitter) {
            self.sync_random(now);
            self.last_sync = now.mono;
            self.sync_jitter = self.rng.random_range(0.75..1.25);
        }
    }

    /// Datagrams dropped, by reason.
    pub fn drops(&self) -> DropCounters {
        let mut d = self.drops.clone();
        d.bad_descriptors += *self.rejected.borrow();
        d
    }

    /// Bytes and datagrams sent so far.
    pub fn sent(&self) -> (u64, u64) {
        (self.sent_bytes, self.sent_datagrams)
    }

    /// Members foca holds as alive or suspect, not counting this node.
    pub fn active_members(&self) -> usize {
        self.foca.num_members()
    }

    /// Descriptors held, this node's included.
    pub fn descriptor_count(&self) -> usize {
        self.store.borrow().len()
    }

    /// One node's SWIM state as this node sees it; `None` if unknown.
    pub fn liveness_of(&self, node: &[u8; 32]) -> Option<Liveness> {
        self.foca
            .iter_membership_state()
            .find(|m| &m.id().node == node)
            .map(|m| match m.state() {
                State::Alive => Liveness::Alive,
                State::Suspect => Liveness::Suspect,
                State::Down => Liveness::Dead,
            })
    }

    /// Whether membership changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut *self.changed.borrow_mut())
    }

    /// Note a change to act on later.
    pub fn mark_changed(&mut self) {
        *self.changed.borrow_mut() = true;
    }

    /// Datagrams to send.
    pub fn take_outgoing(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.out)
    }

    /// When the next foca timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn nonce(&mut self) -> [u8; 12] {
        self.rng.random()
    }

    fn push(&mut self, to: SocketAddr, kind: Kind, body: Body, now: Now) {
        let plain = Packet {
            from: self.me.clone(),
            body,
        }
        .encode();
        let nonce = self.nonce();
        let sealed = self.sealer.seal(kind, &plain, now.unix_ms, nonce);
        self.sent_bytes += sealed.len() as u64;
        self.sent_datagrams += 1;
        self.out.push((to, sealed));
    }

    /// Where to send to member `id`: where its gossip was last seen coming
    /// from (right behind NAT, and the only address there is for a node
    /// that listens on every interface, `0.0.0.0`), else the gossip address
    /// in its identity unless that is unspecified.
    fn dest(&self, id: &MeshIdentity) -> Option<SocketAddr> {
        self.observed
            .get(&id.node)
            .copied()
            .or_else(|| (!id.addr.ip().is_unspecified()).then_some(id.addr))
    }

    fn drain(&mut self, now: Now) {
        while let Some(n) = self.rt.to_notify() {
            self.on_notification(n, now);
        }
        while let Some((to, data)) = self.rt.to_send() {
            match self.dest(&to) {
                Some(addr) => self.push(addr, Kind::Gossip, Body::Foca(data.to_vec()), now),
                // Nothing heard from it yet: foca's indirect probes reach it
                // through members that have.
                None => log::debug!("no address for {to:?} yet"),
            }
        }
        while let Some((after, ev)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers
                .push(Reverse((now.mono + after, self.timer_seq)));
            self.timer_events.insert(self.timer_seq, ev);
        }
    }

    fn on_notification(&mut self, n: OwnedNotification<MeshIdentity>, now: Now) {
        match n {
            OwnedNotification::MemberUp(id) => {
                log::info!("member up: {id:?}");
                self.last_join = now.mono;
                if self.store.borrow().seq(&id.node).is_none() {
                    if let Some(addr) = self.dest(&id) {
                        self.push(addr, Kind::Gossip, Body::Want(vec![id.node]), now);
                    }
                }
            }
            OwnedNotification::MemberDown(id) => log::info!("member down: {id:?}"),
            OwnedNotification::Rename(a, b) => log::info!("member {a:?} is now {b:?}"),
            OwnedNotification::Rejoin(id) => {
                log::warn!("this node was declared down; rejoined as {id:?}");
                self.me = id;
            }
            OwnedNotification::Active => log::info!("joined the mesh"),
            OwnedNotification::Idle => log::warn!("no live members left"),
            OwnedNotification::Defunct => log::warn!("this node was declared down"),
        }
        *self.changed.borrow_mut() = true;
    }

    fn sign_own(&mut self, now: Now) -> Result<(), MembershipError> {
        let node_id = self.node_id();
        let seq = now.unix_ms.max(self.own_seq + 1);
        let d = NodeDescriptor {
            version: 1,
            network: self.token.name().clone(),
            node_id,
            wg_public_key: self.own.wg_public_key,
            endpoints: self.own.endpoints.clone(),
            ipv6: mesh_ipv6(&self.token.ipv6_prefix(), &node_id),
            ipv4: self.own.ipv4,
            capabilities: Capabilities {
                models: self.own.models.clone(),
                load: self.own.load,
                bundles: self.own.bundles.clone(),
                agent_version: env!("CARGO_PKG_VERSION")
                    .parse()
                    .expect("the crate version is semver"),
            },
            seq,
            issued_at: now.unix_ms / 1000,
        };
        let signed = SignedDescriptor::sign(&d, &self.key)?;
        let wire = WireDescriptor::from(&signed);
        let bytes = postcard::to_allocvec(&wire).expect("a descriptor encodes");
        // foca hands the broadcast to the store through the handler, which
        // keeps it only if it verifies.
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            // Too large to piggyback: push-pull still carries it.
            log::debug!("own descriptor not broadcast: {e}");
        }
        if self.store.borrow().seq(&self.me.node) != Some(seq) {
            self.store
                .borrow_mut()
                .accept(&wire, now.mono)
                .map_err(MembershipError::OwnDescriptor)?;
        }
        self.own_seq = seq;
        *self.changed.borrow_mut() = true;
        Ok(())
    }

    /// Re-sign this node's descriptor if what it says has changed.
    pub fn update_own(&mut self, own: OwnInfo, now: Now) -> Result<(), MembershipError> {
        if own == self.own {
            return Ok(());
        }
        log::info!(
            "descriptor changes: endpoints {:?} -> {:?}, ipv4 {} -> {}, models {:?} -> {:?}, load {} -> {}, bundles {:?} -> {:?}",
            self.own.endpoints,
            own.endpoints,
            self.own.ipv4,
            own.ipv4,
            self.own.models,
            own.models,
            self.own.load.percent(),
            own.load.percent(),
            self.own.bundles.iter().map(|b| b.version.to_string()).collect::<Vec<_>>(),
            own.bundles.iter().map(|b| b.version.to_string()).collect::<Vec<_>>()
        );
        let old = std::mem::replace(&mut self.own, own);
        if let Err(e) = self.sign_own(now) {
            self.own = old;
            return Err(e);
        }
        Ok(())
    }

    /// Handle one received datagram; drops are counted, never fatal.
    pub fn handle_datagram(&mut self, src: SocketAddr, datagram: &[u8], now: Now) {
        if let Err(why) = self.handle_inner(src, datagram, now) {
            log::debug!("dropped a datagram from {src}: {why}");
            self.drops.count(why);
        }
        self.drain(now);
    }

    fn handle_inner(&mut self, src: SocketAddr, datagram: &[u8], now: Now) -> Result<(), Drop> {
        let opened = self.sealer.open(datagram)?;
        self.replay
            .check(opened.timestamp_ms, opened.nonce, now.unix_ms)?;
        let packet = Packet::decode(&opened.plaintext)?;
        let from = packet.from;
        if from.node == self.me.node {
            // Our own beacon, back from the broadcast address.
            return Ok(());
        }
        NodeId::from_bytes(from.node).map_err(|_| Drop::Malformed)?;
        match (opened.kind, packet.body) {
            (Kind::Beacon, Body::Beacon) => {
                self.on_beacon(src, from, now);
                Ok(())
            }
            (Kind::Beacon, _) => Err(Drop::Malformed),
            (Kind::Gossip, body) => {
                self.observed.insert(from.node, src);
                match body {
                    Body::Foca(data) => {
                        if let Err(e) = self.foca.handle_data(&data, &mut self.rt) {
                            log::debug!("foca refused a message from {from:?}: {e}");
                            if matches!(e, foca::Error::MalformedPacket | foca::Error::Decode(_)) {
                                return Err(Drop::Malformed);
                            }
                        }
                    }
                    Body::Sync {
                        reply,
                        first,
                        scope,
                        entries,
                    } => self.on_sync(src, reply, first, scope, entries, now),
                    Body::Digest(hashes) => {
                        let scope = digest_diff(&view_digest(&self.view(WHOLE_VIEW)), &hashes);
                        if scope != 0 {
                            self.send_sync(src, false, scope, now);
                        }
                    }
                    Body::Want(nodes) => {
                        for n in nodes.iter().take(WANT_CHUNK) {
                            let wire = self.store.borrow().wire(n).cloned();
                            if let Some(w) = wire {
                                self.push(src, Kind::Gossip, Body::Descriptor(w), now);
                            }
                        }
                    }
                    Body::Descriptor(wire) => match self.store.borrow_mut().accept(&wire, now.mono)
                    {
                        Ok(Some(_)) => *self.changed.borrow_mut() = true,
                        Ok(None) => {}
                        Err(e) => {
                            log::debug!("dropped a descriptor from {src}: {e}");
                            *self.rejected.borrow_mut() += 1;
                        }
                    },
                    Body::Beacon => return Err(Drop::Malformed),
                }
                Ok(())
            }
        }
    }

    fn knows_alive(&self, node: &[u8; 32]) -> bool {
        self.foca.iter_members().any(|m| &m.id().node == node)
    }

    fn on_beacon(&mut self, src: SocketAddr, from: MeshIdentity, now: Now) {
        if self.knows_alive(&from.node) {
            return;
        }
        let recent = self
            .beacon_synced
            .get(&from.node)
            .is_some_and(|at| now.mono.saturating_duration_since(*at) < BEACON_SYNC_EVERY);
        if recent {
            return;
        }
        log::info!("beacon from {from:?} at {src}: syncing");
        self.beacon_synced.insert(from.node, now.mono);
        self.send_sync(src, false, WHOLE_VIEW, now);
    }

    fn on_sync(
        &mut self,
        src: SocketAddr,
        reply: bool,
        first: bool,
        scope: u64,
        entries: Vec<SyncEntry>,
        now: Now,
    ) {
        let members: Vec<Member<MeshIdentity>> = entries.iter().map(|e| e.member.clone()).collect();
        // Spread what is news: a join seen by one member reaches the rest by
        // SWIM's piggybacking instead of waiting for the next push-pull.
        if let Err(e) = self
            .foca
            .apply_many(members.into_iter(), true, &mut self.rt)
        {
            log::debug!("applying a sync from {src}: {e}");
        }
        let mut want = Vec::new();
        for e in &entries {
            let node = e.member.id().node;
            let mine = self.store.borrow().seq(&node);
            match (mine, e.seq) {
                (Some(m), theirs) if theirs.is_none_or(|t| t < m) => {
                    let wire = self.store.borrow().wire(&node).cloned();
                    if let Some(w) = wire {
                        self.push(src, Kind::Gossip, Body::Descriptor(w), now);
                    }
                }
                (mine, Some(t)) if mine.is_none_or(|m| m < t) => want.push(node),
                _ => {}
            }
        }
        for chunk in want.chunks(WANT_CHUNK) {
            self.push(src, Kind::Gossip, Body::Want(chunk.to_vec()), now);
        }
        if !reply && first {
            self.send_sync(src, true, scope, now);
        }
    }

    /// This node's view in the buckets of `scope`: itself and every member
    /// foca holds, with the `seq` of the descriptor held.
    fn view(&self, scope: u64) -> Vec<SyncEntry> {
        let store = self.store.borrow();
        std::iter::once(Member::alive(self.me.clone()))
            .chain(self.foca.iter_membership_state().cloned())
            .filter(|m| in_scope(&m.id().node, scope))
            .map(|m| {
                let seq = if m.id().node == self.me.node {
                    Some(self.own_seq)
                } else {
                    store.seq(&m.id().node)
                };
                SyncEntry { member: m, seq }
            })
            .collect()
    }

    fn send_sync(&mut self, to: SocketAddr, reply: bool, scope: u64, now: Now) {
        let entries = self.view(scope);
        // An empty scope still gets one datagram, so a request is answered.
        let chunks: Vec<&[SyncEntry]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(SYNC_CHUNK).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.push(
                to,
                Kind::Gossip,
                Body::Sync {
                    reply,
                    first: i == 0,
                    scope,
                    entries: chunk.to_vec(),
                },
                now,
            );
        }
    }

    /// Ask each address (bootstrap nodes) for its view, skipping `own`.
    pub fn bootstrap(&mut self, addrs: &[SocketAddr], now: Now) {
        for a in addrs {
            if *a != self.me.addr {
                self.send_sync(*a, false, WHOLE_VIEW, now);
            }
        }
    }

    /// Push-pull with one random live member, if there is one: send it the
    /// view's digest; it answers with its members in the buckets that
    /// differ, and gets this node's back.
    pub fn sync_random(&mut self, now: Now) {
        let reachable: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .filter_map(|m| self.dest(m.id()))
            .collect();
        let pick = reachable.into_iter().choose(&mut self.rng);
        if let Some(addr) = pick {
            self.sync_with(addr, now);
        }
    }

    fn sync_with(&mut self, addr: SocketAddr, now: Now) {
        let digest = view_digest(&self.view(WHOLE_VIEW));
        self.push(addr, Kind::Gossip, Body::Digest(digest), now);
    }

    /// A sealed LAN beacon.
    pub fn beacon(&mut self, now: Now) -> Vec<u8> {
        let plain = Packet {
            from: self.me.clone(),
            body: Body::Beacon,
        }
        .encode();
        let nonce = self.nonce();
        let sealed = self.sealer.seal(Kind::Beacon, &plain, now.unix_ms, nonce);
        self.sent_bytes += sealed.len() as u64;
        self.sent_datagrams += 1;
        sealed
    }

    /// Fire the foca timers that are due.
    pub fn handle_timers(&mut self, now: Now) {
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now.mono {
                break;
            }
            self.timers.pop();
            if let Some(ev) = self.timer_events.remove(&seq) {
                if let Err(e) = self.foca.handle_timer(ev, &mut self.rt) {
                    log::debug!("foca timer: {e}");
                }
            }
            self.drain(now);
        }
    }

    /// Leave the mesh: tell some members this node is going.
    pub fn leave(&mut self, now: Now) {
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            log::debug!("leaving: {e}");
        }
        self.drain(now);
    }

    /// Forget descriptors of nodes foca forgot long ago.
    pub fn forget_old(&mut self, now: Now) {
        let known: std::collections::HashSet<[u8; 32]> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().node)
            .collect();
        let me = self.me.node;
        self.store.borrow_mut().retain(|n, received| {
            *n == me
                || known.contains(n)
                || now.mono.saturating_duration_since(received) < FORGET_AFTER
        });
    }

    /// Every node's SWIM state as this node sees it (itself excluded).
    pub fn liveness(&self) -> HashMap<[u8; 32], Liveness> {
        self.foca
            .iter_membership_state()
            .map(|m| {
                let l = match m.state() {
                    State::Alive => Liveness::Alive,
                    State::Suspect => Liveness::Suspect,
                    State::Down => Liveness::Dead,
                };
                (m.id().node, l)
            })
            .collect()
    }

    /// Members with verified descriptors, this node included: what
    /// [`super::wanted_peers`] takes. A node foca does not know is dead;
    /// its observed endpoint is where its gossip comes from, on the
    /// WireGuard port it advertises.
    pub fn members(&self) -> Vec<VerifiedMember> {
        let live = self.liveness();
        let store = self.store.borrow();
        store
            .verified()
            .map(|v| {
                let node = *v.node_id().as_bytes();
                let liveness = if node == self.me.node {
                    Liveness::Alive
                } else {
                    live.get(&node).copied().unwrap_or(Liveness::Dead)
                };
                let port = v.descriptor().endpoints.first().map(|e| e.port());
                let observed_endpoint = match (self.observed.get(&node), port) {
                    (Some(src), Some(port)) => Some(SocketAddr::new(src.ip(), port)),
                    _ => None,
                };
                VerifiedMember {
                    descriptor: v.clone(),
                    liveness,
                    observed_endpoint,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::mesh::NetworkSecret;

    fn token(secret: u8) -> NetworkToken {
        NetworkToken::new(
            "lab".parse().unwrap(),
            NetworkSecret::from_bytes([secret; 32]),
        )
    }

    fn node(i: u8, secret: u8, now: Now) -> Membership {
        node_at(i, secret, format!("192.0.2.{i}:7946").parse().unwrap(), now)
    }

    fn node_at(i: u8, secret: u8, gossip: SocketAddr, now: Now) -> Membership {
        let key = SigningKey::from_bytes(&[i; 32]);
        Membership::new(
            token(secret),
            key,
            gossip,
            OwnInfo {
                wg_public_key: WgPublicKey::from_bytes([i; 32]).unwrap(),
                endpoints: vec![format!("192.0.2.{i}:51821").parse().unwrap()],
                ipv4: format!("10.77.0.{i}").parse().unwrap(),
                models: vec![],
                load: Load::new(0).unwrap(),
                bundles: vec![],
            },
            MembershipConfig::default(),
            now,
            u64::from(i),
        )
        .unwrap()
    }

    /// Deliver every datagram until the network is quiet; returns how many
    /// were delivered. `lost` nodes receive nothing.
    fn pump(nodes: &mut [Membership], now: Now) -> usize {
        let wire: Vec<SocketAddr> = nodes.iter().map(|n| n.identity().addr).collect();
        pump_on(nodes, &wire, now)
    }

    /// [`pump`] where node `i` sends from and is reached at `wire[i]`.
    fn pump_on(nodes: &mut [Membership], wire: &[SocketAddr], now: Now) -> usize {
        let mut delivered = 0;
        for _ in 0..100 {
            let mut batch = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                for (to, d) in n.take_outgoing() {
                    batch.push((i, to, d));
                }
            }
            if batch.is_empty() {
                return delivered;
            }
            for (from, to, d) in batch {
                if let Some(k) = wire.iter().position(|w| *w == to) {
                    nodes[k].handle_datagram(wire[from], &d, now);
                    delivered += 1;
                }
            }
        }
        delivered
    }

    fn run_for(nodes: &mut [Membership], mut now: Now, secs: u64) -> Now {
        for _ in 0..secs * 10 {
            now = now.after(Duration::from_millis(100));
            for n in nodes.iter_mut() {
                n.handle_timers(now);
            }
            pump(nodes, now);
        }
        now
    }

    #[test]
    fn push_pull_is_fast_while_the_view_changes() {
        let steady = Duration::from_secs(15);
        let s = Duration::from_secs;
        // Just started: fast, whatever happened since.
        assert_eq!(sync_delay(s(0), s(0), steady), SYNC_FAST);
        assert_eq!(sync_delay(s(29), s(29), steady), SYNC_FAST);
        // Long up and nobody new for a while: steady.
        assert_eq!(sync_delay(s(30), s(30), steady), steady);
        assert_eq!(sync_delay(s(3600), s(10), steady), steady);
        // A member came up recently: fast again.
        assert_eq!(sync_delay(s(3600), s(9), steady), SYNC_FAST);
        // Never slower than asked for.
        assert_eq!(
            sync_delay(s(0), s(0), Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    fn entry(first: u8, stamp: u64, state: State, inc: u16, seq: Option<u64>) -> SyncEntry {
        let mut node = [7u8; 32];
        node[0] = first;
        let id = MeshIdentity {
            node,
            addr: "192.0.2.1:7946".parse().unwrap(),
            stamp,
        };
        SyncEntry {
            member: Member::new(id, inc, state),
            seq,
        }
    }

    #[test]
    fn digests_differ_only_where_the_views_do() {
        let view: Vec<SyncEntry> = (0..=255u8)
            .map(|i| entry(i, 1000, State::Alive, 0, Some(u64::from(i))))
            .collect();
        let d = view_digest(&view);
        assert_eq!(d.len(), DIGEST_BUCKETS);
        let mut reversed = view.clone();
        reversed.reverse();
        assert_eq!(digest_diff(&d, &view_digest(&reversed)), 0, "order is free");

        // What push-pull reconciles shows in the member's bucket only.
        let bucket_of_9 = 1u64 << digest_bucket(&view[9].member.id().node);
        for changed in [
            entry(9, 1000, State::Alive, 0, Some(10)),
            entry(9, 1000, State::Alive, 0, None),
            entry(9, 1001, State::Alive, 0, Some(9)),
            entry(9, 1000, State::Down, 0, Some(9)),
        ] {
            let mut other = view.clone();
            other[9] = changed.clone();
            assert_eq!(
                digest_diff(&d, &view_digest(&other)),
                bucket_of_9,
                "{changed:?}"
            );
        }
        let mut missing = view.clone();
        missing.remove(200);
        let bucket_of_200 = 1u64 << digest_bucket(&view[200].member.id().node);
        assert_eq!(digest_diff(&d, &view_digest(&missing)), bucket_of_200);

        // SWIM's own business does not.
        let mut other = view.clone();
        other[9] = entry(9, 1000, State::Suspect, 3, Some(9));
        assert_eq!(digest_diff(&d, &view_digest(&other)), 0);

        // A digest of another shape asks for everything.
        assert_eq!(digest_diff(&d, &d[..10]), WHOLE_VIEW);
        assert_eq!(digest_diff(&d, &[]), WHOLE_VIEW);
    }

    #[test]
    fn push_pull_between_agreeing_nodes_is_one_datagram() {
        let now = Now::real();
        let mut nodes: Vec<Membership> = (1..=3).map(|i| node(i, 1, now)).collect();
        let seed = nodes[0].identity().addr;
        for n in nodes.iter_mut().skip(1) {
            n.bootstrap(&[seed], now);
        }
        pump(&mut nodes, now);
        let now = run_for(&mut nodes, now, 3);
        let before: u64 = nodes.iter().map(|n| n.sent().1).sum();
        nodes[1].sync_random(now);
        assert_eq!(pump(&mut nodes, now), 1);
        let after: u64 = nodes.iter().map(|n| n.sent().1).sum();
        assert_eq!(after - before, 1);

        // A new descriptor makes one bucket differ; the exchange carries it.
        let mut own = nodes[2].own().clone();
        own.endpoints = vec!["198.51.100.3:51821".parse().unwrap()];
        nodes[2].update_own(own, now).unwrap();
        nodes[2].take_outgoing();
        let mut pair: Vec<Membership> = nodes.drain(1..).collect();
        let to = pair[0].identity().addr;
        pair[1].sync_with(to, now);
        // Digest, the differing bucket both ways, the descriptor.
        assert_eq!(pump(&mut pair, now), 4);
        let seq = pair[1].own_seq;
        assert_eq!(
            pair[0].store.borrow().seq(&pair[1].identity().node),
            Some(seq)
        );
    }

    #[test]
    fn push_pull_is_frequent_at_first_then_backs_off() {
        let start = Now::real();
        let mut nodes = vec![node(1, 1, start), node(2, 1, start)];
        let a = nodes[0].identity().addr;
        nodes[1].bootstrap(&[a], start);
        pump(&mut nodes, start);
        let mut now = start;
        let mut syncs = Vec::new();
        for _ in 0..900 {
            now = now.after(Duration::from_millis(100));
            for n in nodes.iter_mut() {
                n.handle_timers(now);
            }
            let before = nodes[0].last_sync;
            nodes[0].poll_sync(now);
            if nodes[0].last_sync != before {
                syncs.push((now.mono - start.mono).as_secs_f64());
            }
            nodes[1].poll_sync(now);
            pump(&mut nodes, now);
        }
        let early = syncs.iter().filter(|t| **t < 30.0).count();
        let late = syncs.iter().filter(|t| **t >= 45.0).count();
        assert!(early >= 20, "{syncs:?}");
        // 45 s at 15 s give or take a quarter.
        assert!((2..=4).contains(&late), "{syncs:?}");
        assert!(nodes.iter().all(|n| n.active_members() == 1));
    }

    #[test]
    fn bootstrap_converges_views_and_descriptors() {
        let now = Now::real();
        let mut nodes: Vec<Membership> = (1..=4).map(|i| node(i, 1, now)).collect();
        let seed = nodes[0].identity().addr;
        for n in nodes.iter_mut().skip(1) {
            n.bootstrap(&[seed], now);
        }
        pump(&mut nodes, now);
        let now = run_for(&mut nodes, now, 3);
        for n in &nodes {
            assert_eq!(n.active_members(), 3, "{n:?}");
            let members = n.members();
            assert_eq!(members.len(), 4, "{n:?}");
            assert!(members.iter().all(|m| m.liveness == Liveness::Alive));
            assert_eq!(n.drops().total(), 0);
        }
        // A stopped node is declared dead within the failure-detection bound.
        let gone = nodes[3].identity().node;
        let mut three: Vec<Membership> = nodes.drain(..3).collect();
        run_for(&mut three, now, 20);
        for n in &three {
            assert_eq!(n.liveness()[&gone], Liveness::Dead, "{n:?}");
            assert_eq!(n.active_members(), 2);
        }
    }

    /// Devices listen on every interface (`0.0.0.0`), so their identities
    /// carry no address to reach them at: after a beacon, members are reached
    /// where their packets come from, and stay alive.
    #[test]
    fn nodes_listening_on_every_interface_stay_members() {
        let mut now = Now::real();
        let any: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        let mut nodes: Vec<Membership> = (1..=3).map(|i| node_at(i, 1, any, now)).collect();
        let wire: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("192.0.2.{i}:7946").parse().unwrap())
            .collect();
        for i in 1..3 {
            let beacon = nodes[i].beacon(now);
            nodes[0].handle_datagram(wire[i], &beacon, now);
        }
        for _ in 0..300 {
            now = now.after(Duration::from_millis(100));
            for n in nodes.iter_mut() {
                n.handle_timers(now);
            }
            pump_on(&mut nodes, &wire, now);
        }
        for n in &nodes {
            assert_eq!(n.active_members(), 2, "{n:?}");
            assert!(n.members().iter().all(|m| m.liveness == Liveness::Alive));
        }
        // The observed address is also where WireGuard reaches the member.
        let m = nodes[0]
            .members()
            .into_iter()
            .find(|m| m.descriptor.node_id() == nodes[1].node_id())
            .unwrap();
        assert_eq!(
            m.observed_endpoint,
            Some("192.0.2.2:51821".parse().unwrap())
        );
    }

    #[test]
    fn another_network_learns_nothing() {
        let now = Now::real();
        let mut nodes = vec![node(1, 1, now), node(2, 1, now), node(3, 2, now)];
        let (a, b) = (nodes[0].identity().addr, nodes[1].identity().addr);
        nodes[1].bootstrap(&[a], now);
        nodes[2].bootstrap(&[a, b], now);
        let beacon = nodes[2].beacon(now);
        let src = nodes[2].identity().addr;
        nodes[0].handle_datagram(src, &beacon, now);
        let beacon = nodes[0].beacon(now);
        let src = nodes[0].identity().addr;
        nodes[2].handle_datagram(src, &beacon, now);
        pump(&mut nodes, now);
        run_for(&mut nodes, now, 3);
        assert_eq!(nodes[0].active_members(), 1);
        assert_eq!(nodes[1].active_members(), 1);
        assert_eq!(nodes[2].active_members(), 0);
        assert_eq!(nodes[2].members().len(), 1, "only itself");
        assert!(nodes[0].drops().wrong_network >= 2);
        assert!(nodes[2].drops().wrong_network >= 1);
    }

    #[test]
    fn a_replayed_sync_is_dropped() {
        let now = Now::real();
        let mut a = node(1, 1, now);
        let mut b = node(2, 1, now);
        b.bootstrap(&[a.identity().addr], now);
        let (_, d) = b.take_outgoing().remove(0);
        a.handle_datagram(b.identity().addr, &d, now);
        a.handle_datagram(b.identity().addr, &d, now);
        assert_eq!(a.drops().replayed, 1);
        let later = now.after(Duration::from_secs(31));
        a.handle_datagram(b.identity().addr, &d, later);
        assert_eq!(a.drops().stale, 1);
        a.handle_datagram(b.identity().addr, b"junk", now);
        assert_eq!(a.drops().garbage, 1);
    }

    #[test]
    fn a_beacon_brings_two_nodes_together() {
        let now = Now::real();
        let mut nodes = vec![node(1, 1, now), node(2, 1, now)];
        let beacon = nodes[1].beacon(now);
        let src = nodes[1].identity().addr;
        nodes[0].handle_datagram(src, &beacon, now);
        pump(&mut nodes, now);
        assert_eq!(nodes[0].active_members(), 1);
        assert_eq!(nodes[1].active_members(), 1);
        assert_eq!(nodes[0].members().len(), 2);
        assert_eq!(nodes[1].members().len(), 2);
    }

    #[test]
    fn a_new_descriptor_reaches_members() {
        let now = Now::real();
        let mut nodes = vec![node(1, 1, now), node(2, 1, now)];
        let a = nodes[0].identity().addr;
        nodes[1].bootstrap(&[a], now);
        pump(&mut nodes, now);
        let mut own = nodes[1].own().clone();
        own.endpoints = vec!["198.51.100.2:51821".parse().unwrap()];
        let now = now.after(Duration::from_secs(1));
        nodes[1].update_own(own, now).unwrap();
        assert_eq!(nodes[1].foca.custom_broadcast_backlog(), 1);
        let now = run_for(&mut nodes, now, 2);
        let seen = nodes[0].members();
        let m = seen
            .iter()
            .find(|m| m.descriptor.node_id() == nodes[1].node_id())
            .unwrap();
        assert_eq!(
            m.descriptor.descriptor().endpoints,
            vec!["198.51.100.2:51821".parse::<SocketAddr>().unwrap()]
        );
        // The observed endpoint is the gossip source on the WireGuard port.
        assert_eq!(
            m.observed_endpoint,
            Some("192.0.2.2:51821".parse().unwrap())
        );
        let _ = now;
    }
}
