//! [`Mesh`]: the running mesh. One tokio task owns the gossip socket, the
//! [`Membership`] state machine, the WireGuard device and the interface's
//! addresses:
//!
//! - datagrams in → [`Membership::handle_datagram`]; foca timers when due;
//! - every second, and soon after a membership change: re-sign this node's
//!   descriptor if its endpoints or IPv4 changed, set the interface's
//!   addresses, compute [`wanted_peers`], [`diff`] it against the peers read
//!   back from the device, log the diff and apply it, and rewrite the
//!   status file;
//! - while it knows no member: a sync request to every bootstrap address
//!   every 2 s; LAN beacons every 2 s while alone or in its first 30 s (so
//!   groups that formed at a mass boot find each other), every 10 s after;
//!   push-pull with a random member when [`Membership::poll_sync`] finds
//!   one due (every second while the view changes, every
//!   [`MembershipConfig::sync_interval`] once it is stable);
//! - on SIGTERM or Ctrl-C: leave the cluster, remove the interface.
//!
//! # Ports
//!
//! Gossip and beacons use the token's port (51820 unless the token names
//! another); bootstrap addresses in a token name gossip sockets.
//! WireGuard listens on the next port up unless told otherwise, since both
//! cannot hold one UDP port.

use super::device::{
    clamp_private_key, wg_public_key, DeviceError, HostTools, IpAddresses, ToolError, Tools,
    WgDevice, WireGuardControl,
};
use super::diff::{diff, PeerDiff};
use super::gossip::{Membership, MembershipConfig, MembershipError, Now, OwnInfo};
use super::status::{MeshStatus, PeerState, PeerStatus, StatusError};
use super::{address_members, own_ipv4, wanted_peers, Liveness};
use crate::identity::{load_or_create_secret, random_secret, IdentityError};
use basalt_formats::mesh::{
    assign_ipv4, mesh_ipv6, BootstrapHost, Load, NetworkToken, NodeId, WgPublicKey,
};
use ed25519_dalek::SigningKey;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// The WireGuard private key's file in the state directory.
pub const WG_KEY_FILE: &str = "wireguard.key";
/// Persistent keepalive given to every peer, seconds.
pub const DEFAULT_KEEPALIVE: u16 = 25;
/// Reconcile and status period.
pub const TICK: Duration = Duration::from_secs(1);
/// Bootstrap retry period while alone.
pub const BOOTSTRAP_EVERY: Duration = Duration::from_secs(2);
const BEACON_ALONE: Duration = Duration::from_secs(2);
const BEACON_MEMBER: Duration = Duration::from_secs(10);
/// Beacons stay frequent this long after start.
const BEACON_FAST_FOR: Duration = Duration::from_secs(30);
/// Soonest reconcile after a membership change.
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(200);

/// What the mesh needs to run.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The network.
    pub token: NetworkToken,
    /// Where the WireGuard key and the status file live.
    pub state_dir: PathBuf,
    /// The WireGuard interface (unique per host with userspace WireGuard).
    pub interface: String,
    /// The gossip socket.
    pub listen: SocketAddr,
    /// WireGuard's listen port.
    pub wg_port: u16,
    /// Endpoints to advertise; `None`: this host's addresses on `wg_port`.
    pub endpoints: Option<Vec<SocketAddr>>,
    /// Persistent keepalive for peers, seconds.
    pub keepalive: u16,
    /// Membership timing.
    pub membership: MembershipConfig,
    /// Whether to send LAN beacons.
    pub beacons: bool,
    /// What this node's inference server serves ([`crate::serve::Advert`]),
    /// advertised in its descriptor; `None`: nothing.
    pub advert: Option<PathBuf>,
    /// Where this node keeps update bundles for its peers
    /// ([`crate::update::share`]), advertised in its descriptor; `None`: none.
    pub bundles: Option<PathBuf>,
}

impl MeshConfig {
    /// Defaults: gossip on `0.0.0.0:<token port>`, WireGuard on the next port.
    pub fn new(token: NetworkToken, state_dir: PathBuf, interface: String) -> Self {
        let port = token.port();
        MeshConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            wg_port: default_wg_port(port),
            token,
            state_dir,
            interface,
            endpoints: None,
            keepalive: DEFAULT_KEEPALIVE,
            membership: MembershipConfig::default(),
            beacons: true,
            advert: None,
            bundles: None,
        }
    }
}

/// WireGuard's port next to the gossip port.
pub fn default_wg_port(gossip: u16) -> u16 {
    if gossip == u16::MAX {
        gossip - 1
    } else {
        gossip + 1
    }
}

/// Why the mesh stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The state directory could not be made.
    #[error("mesh state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The WireGuard key could not be loaded or made.
    #[error("WireGuard key: {0}")]
    WgKey(#[from] IdentityError),
    /// The WireGuard device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Setting the interface's addresses failed.
    #[error("interface {iface}: setting addresses: {source}")]
    Addresses {
        /// The interface.
        iface: String,
        /// The cause.
        source: ToolError,
    },
    /// The gossip socket could not be opened.
    #[error("gossip socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Membership could not start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The status file could not be written.
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// The running mesh; see the module docs.
#[derive(Debug)]
pub struct Mesh<D, T> {
    config: MeshConfig,
    device: D,
    ip: IpAddresses<T>,
    membership: Membership,
    wg_private: [u8; 32],
    wg_public: WgPublicKey,
    self_id: NodeId,
    applied_addresses: Option<Vec<IpNet>>,
    backend: String,
}

impl Mesh<WireGuardControl, HostTools> {
    /// The mesh on this host's WireGuard (kernel module if loaded, else
    /// userspace) and `ip`.
    pub fn open(config: MeshConfig, key: SigningKey) -> Result<Self, MeshError> {
        let device = WireGuardControl::new(&config.interface)?;
        let backend = device.backend().to_string();
        let mut mesh = Mesh::with_parts(config, key, device, HostTools, Now::real())?;
        mesh.backend = backend;
        Ok(mesh)
    }
}

/// This host's addresses, by interface (from `getifaddrs`).
pub fn host_addresses() -> Vec<(String, IpAddr, Option<Ipv4Addr>)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            let bcast = a.broadcast.and_then(|b| b.as_sockaddr_in().map(|b| b.ip()));
            Some((a.interface_name, ip, bcast))
        })
        .collect()
}

/// Whether a peer could reach this host at `ip`. IPv4 link-local addresses
/// (169.254.0.0/16, what a device takes where no DHCP server answers) count:
/// peers on the same link reach them, and nobody else needs them. IPv6
/// link-local ones do not: they mean nothing without the sender's interface.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The broadcast address of the IPv4 link-local network.
const LINK_LOCAL_BROADCAST: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 255);

/// The WireGuard endpoints to advertise: each usable address of an
/// interface other than the mesh's own, on `port`, IPv4 first, link-local
/// ones last (a peer falls back to them only when nothing else is known), at
/// most 16.
pub fn advertised_endpoints(
    addrs: &[(String, IpAddr, Option<Ipv4Addr>)],
    mesh_iface: &str,
    port: u16,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter(|(name, ip, _)| name != mesh_iface && usable(ip))
        .map(|(_, ip, _)| SocketAddr::new(*ip, port))
        .collect();
    let link_local = |a: &SocketAddr| matches!(a.ip(), IpAddr::V4(v4) if v4.is_link_local());
    out.sort_by_key(|a| (link_local(a), a.is_ipv6(), *a));
    out.dedup();
    out.truncate(16);
    out
}

/// Where LAN beacons go: the broadcast address of each IPv4 network this
/// host is on (the link-local one included), except the mesh's own, on `port`.
pub fn beacon_targets(
    addrs: &[(String, IpAddr, Option<Ipv4Addr>)],
    mesh_iface: &str,
    port: u16,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter(|(name, ip, _)| name != mesh_iface && usable(ip))
        .filter_map(|(_, ip, b)| {
            let b = match (ip, b) {
                (_, Some(b)) => *b,
                (IpAddr::V4(v4), None) if v4.is_link_local() => LINK_LOCAL_BROADCAST,
                _ => return None,
            };
            Some(SocketAddr::new(IpAddr::V4(b), port))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl<D: WgDevice, T: Tools> Mesh<D, T> {
    /// The mesh on the given device and tools. Loads (or makes) the
    /// WireGuard key in the state directory; touches nothing else until
    /// [`Mesh::run`] or [`Mesh::reconcile`].
    pub fn with_parts(
        config: MeshConfig,
        key: SigningKey,
        device: D,
        tools: T,
        now: Now,
    ) -> Result<Self, MeshError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| MeshError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let (wg_private, made) =
            load_or_create_secret(&config.state_dir.join(WG_KEY_FILE), || {
                clamp_private_key(random_secret())
            })?;
        let wg_public = wg_public_key(&wg_private);
        if made {
            log::info!("made a new WireGuard key {wg_public}");
        }
        let self_id = NodeId::from_verifying_key(&key.verifying_key());
        let endpoints = Self::endpoints_of(&config);
        let ipv4 = own_ipv4(&self_id, &[], &config.token).unwrap_or_else(|| {
            config
                .token
                .ipv4_range()
                .host(0)
                .expect("a range has hosts")
        });
        let membership = Membership::new(
            config.token.clone(),
            key,
            config.listen,
            OwnInfo {
                wg_public_key: wg_public,
                endpoints,
                ipv4,
                models: Vec::new(),
                load: Load::new(0).expect("0 is a load"),
                bundles: Vec::new(),
            },
            config.membership.clone(),
            now,
            rand::random(),
        )?;
        Ok(Mesh {
            config,
            device,
            ip: IpAddresses::new(tools),
            membership,
            wg_private,
            wg_public,
            self_id,
            applied_addresses: None,
            backend: "userspace".to_string(),
        })
    }

    fn endpoints_of(config: &MeshConfig) -> Vec<SocketAddr> {
        if let Some(e) = &config.endpoints {
            return e.clone();
        }
        if !config.listen.ip().is_unspecified() {
            return vec![SocketAddr::new(config.listen.ip(), config.wg_port)];
        }
        advertised_endpoints(&host_addresses(), &config.interface, config.wg_port)
    }

    /// The membership state machine.
    pub fn membership(&mut self) -> &mut Membership {
        &mut self.membership
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    /// One reconcile step: descriptor, addresses, peers. Returns the diff applied.
    pub fn reconcile(&mut self, now: Now) -> Result<PeerDiff, MeshError> {
        let token = self.config.token.clone();
        let members = self.membership.members();
        let ipv4 = own_ipv4(&self.self_id, &members, &token).unwrap_or(self.membership.own().ipv4);
        let advert = self
            .config
            .advert
            .as_deref()
            .map(crate::serve::Advert::read)
            .unwrap_or_default();
        let own = OwnInfo {
            wg_public_key: self.wg_public,
            endpoints: Self::endpoints_of(&self.config),
            ipv4,
            models: advert.models,
            load: Load::new(advert.load.min(100)).expect("at most 100"),
            bundles: self
                .config
                .bundles
                .as_deref()
                .map(crate::update::share::list)
                .unwrap_or_default(),
        };
        if let Err(e) = self.membership.update_own(own, now) {
            log::warn!("{e}");
        }
        let want_addrs = vec![
            IpNet::V6(
                Ipv6Net::new(mesh_ipv6(&token.ipv6_prefix(), &self.self_id), 48)
                    .expect("48 is a valid prefix length"),
            ),
            IpNet::V4(
                Ipv4Net::new(ipv4, token.ipv4_range().prefix_len())
                    .expect("the range's prefix length is valid"),
            ),
        ];
        if self.applied_addresses.as_ref() != Some(&want_addrs) {
            let iface = self.config.interface.clone();
            self.ip
                .ensure(&iface, &want_addrs)
                .map_err(|source| MeshError::Addresses { iface, source })?;
            log::info!(
                "interface {}: addresses {} {}",
                self.config.interface,
                want_addrs[0],
                want_addrs[1]
            );
            self.applied_addresses = Some(want_addrs);
        }
        let own: Vec<IpAddr> = host_addresses().into_iter().map(|(_, ip, _)| ip).collect();
        let wanted = wanted_peers(
            &self.self_id,
            &members,
            &token,
            Some(self.config.keepalive),
            &own,
        );
        let actual = self.device.peers()?;
        let d = diff(&wanted, &actual);
        if !d.is_empty() {
            for line in d.to_string().lines() {
                log::info!("{}: {line}", self.config.interface);
            }
            self.device.apply(&d)?;
        }
        Ok(d)
    }

    /// The status as of now (reads the device's peers).
    pub fn status(&mut self) -> Result<MeshStatus, MeshError> {
        let token = &self.config.token;
        let members = self.membership.members();
        let ipv4s = assign_ipv4(
            token.ipv4_range(),
            &address_members(&self.self_id, &members),
        );
        let actual: BTreeMap<WgPublicKey, _> = self
            .device
            .peers()?
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect();
        let own: Vec<IpAddr> = host_addresses().into_iter().map(|(_, ip, _)| ip).collect();
        let mut peers: Vec<PeerStatus> = members
            .iter()
            .filter(|m| m.descriptor.node_id() != self.self_id)
            .map(|m| {
                let d = m.descriptor.descriptor();
                let on = actual.get(&d.wg_public_key);
                PeerStatus {
                    node_id: d.node_id,
                    hostname: None,
                    wg_public_key: d.wg_public_key,
                    ipv6: d.ipv6,
                    ipv4: ipv4s.get(&d.node_id).copied(),
                    endpoint: on
                        .and_then(|p| p.endpoint)
                        .or_else(|| m.preferred_endpoint(&own)),
                    last_handshake_s: on.and_then(|p| p.last_handshake).map(|d| d.as_secs()),
                    rx_bytes: on.map_or(0, |p| p.rx_bytes),
                    tx_bytes: on.map_or(0, |p| p.tx_bytes),
                    state: match m.liveness {
                        Liveness::Alive => PeerState::Alive,
                        Liveness::Suspect => PeerState::Suspect,
                        Liveness::Dead => PeerState::Dead,
                    },
                    on_device: on.is_some(),
                    models: d
                        .capabilities
                        .models
                        .iter()
                        .map(|m| m.to_string())
                        .collect(),
                    load: d.capabilities.load.percent(),
                    bundles: d.capabilities.bundles.clone(),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        let (sent, _) = self.membership.sent();
        Ok(MeshStatus {
            updated_unix: Now::real().unix_ms / 1000,
            network: token.name().to_string(),
            node_id: self.self_id,
            interface: self.config.interface.clone(),
            backend: self.backend.clone(),
            wg_public_key: self.wg_public,
            ipv6: mesh_ipv6(&token.ipv6_prefix(), &self.self_id),
            ipv4: self
                .applied_addresses
                .as_ref()
                .and_then(|a| match a.get(1) {
                    Some(IpNet::V4(n)) => Some(n.addr()),
                    _ => None,
                }),
            gossip_listen: self.config.listen,
            wg_port: self.config.wg_port,
            endpoints: self.membership.own().endpoints.clone(),
            members_alive: self.membership.active_members(),
            gossip_sent_bytes: sent,
            drops: self.membership.drops(),
            peers,
        })
    }

    async fn bootstrap_addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for b in self.config.token.bootstrap() {
            match b.host() {
                BootstrapHost::Ip(ip) => out.push(SocketAddr::new(*ip, b.port())),
                BootstrapHost::Dns(name) => {
                    match tokio::net::lookup_host((name.as_str(), b.port())).await {
                        Ok(addrs) => out.extend(addrs),
                        Err(e) => log::warn!("bootstrap address {b}: {e}"),
                    }
                }
            }
        }
        out
    }

    async fn flush(&mut self, sock: &UdpSocket) {
        for (to, d) in self.membership.take_outgoing() {
            if let Err(e) = sock.send_to(&d, to).await {
                log::debug!("gossip to {to}: {e}");
            }
        }
    }

    fn write_status(&mut self) {
        match self.status() {
            Ok(st) => {
                if let Err(e) = super::status::write(&self.config.state_dir, &st) {
                    log::warn!("{e}");
                }
            }
            Err(e) => log::warn!("mesh status: {e}"),
        }
    }

    /// Run until `shutdown` completes, then leave the mesh and remove the
    /// interface.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), MeshError> {
        self.device.ensure(&self.wg_private, self.config.wg_port)?;
        let sock = tokio::net::UdpSocket::bind(self.config.listen)
            .await
            .map_err(|source| MeshError::Socket {
                addr: self.config.listen,
                source,
            })?;
        sock.set_broadcast(true)
            .map_err(|source| MeshError::Socket {
                addr: self.config.listen,
                source,
            })?;
        log::info!(
            "mesh {} as {}: gossip on {}, WireGuard {} port {} ({} backend), key {}",
            self.config.token.name(),
            self.self_id,
            self.config.listen,
            self.config.interface,
            self.config.wg_port,
            self.backend,
            self.wg_public
        );
        self.reconcile(Now::real())?;
        self.write_status();

        tokio::pin!(shutdown);
        let mut buf = vec![0u8; 65536];
        let mut tick = tokio::time::interval(TICK);
        let started = Instant::now();
        let mut last_bootstrap: Option<Instant> = None;
        let mut last_beacon: Option<Instant> = None;
        let mut last_reconcile = Instant::now();
        loop {
            let deadline = self
                .membership
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + TICK);
            let mut reconcile_now = false;
            tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    Ok((n, src)) => self.membership.handle_datagram(src, &buf[..n], Now::real()),
                    Err(e) => log::debug!("gossip socket: {e}"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.membership.handle_timers(Now::real());
                }
                _ = tick.tick() => {
                    let now = Now::real();
                    let alone = self.membership.active_members() == 0;
                    if alone && last_bootstrap.is_none_or(|t| t.elapsed() >= BOOTSTRAP_EVERY) {
                        let addrs = self.bootstrap_addrs().await;
                        self.membership.bootstrap(&addrs, now);
                        last_bootstrap = Some(Instant::now());
                    }
                    let beacon_every = if alone || started.elapsed() < BEACON_FAST_FOR {
                        BEACON_ALONE
                    } else {
                        BEACON_MEMBER
                    };
                    if self.config.beacons && last_beacon.is_none_or(|t| t.elapsed() >= beacon_every) {
                        let targets = beacon_targets(&host_addresses(), &self.config.interface, self.config.listen.port());
                        for t in targets {
                            let b = self.membership.beacon(now);
                            if let Err(e) = sock.send_to(&b, t).await {
                                log::debug!("beacon to {t}: {e}");
                            }
                        }
                        last_beacon = Some(Instant::now());
                    }
                    self.membership.poll_sync(now);
                    self.membership.forget_old(now);
                    reconcile_now = true;
                }
                _ = &mut shutdown => break,
            }
            self.flush(&sock).await;
            if self.membership.take_changed() || reconcile_now {
                if reconcile_now || last_reconcile.elapsed() >= RECONCILE_DEBOUNCE {
                    if let Err(e) = self.reconcile(Now::real()) {
                        log::warn!("reconcile: {e}");
                    }
                    last_reconcile = Instant::now();
                    self.write_status();
                } else {
                    // Keep the flag for the next turn.
                    self.membership.mark_changed();
                }
            }
        }
        log::info!("leaving the mesh");
        self.membership.leave(Now::real());
        self.flush(&sock).await;
        if let Err(e) = self.device.delete() {
            log::warn!("{e}");
        }
        if let Err(e) = self.ip.delete(&self.config.interface) {
            log::debug!("{e}");
        }
        let _ = std::fs::remove_file(self.config.state_dir.join(super::status::STATUS_FILE));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::device::{FakeDevice, FakeTools};
    use basalt_formats::mesh::NetworkSecret;

    fn token() -> NetworkToken {
        NetworkToken::new("lab".parse().unwrap(), NetworkSecret::from_bytes([7; 32]))
    }

    fn mesh(i: u8, dir: &std::path::Path, now: Now) -> Mesh<FakeDevice, FakeTools> {
        let mut config = MeshConfig::new(token(), dir.join(format!("n{i}")), format!("wgt{i}"));
        config.listen = format!("192.0.2.{i}:51820").parse().unwrap();
        Mesh::with_parts(
            config,
            SigningKey::from_bytes(&[i; 32]),
            FakeDevice::default(),
            FakeTools::default(),
            now,
        )
        .unwrap()
    }

    /// Deliver datagrams and fire timers for three (virtual) seconds.
    fn exchange(meshes: &mut [Mesh<FakeDevice, FakeTools>], mut now: Now) {
        for _ in 0..30 {
            now = now.after(Duration::from_millis(100));
            for m in meshes.iter_mut() {
                m.membership().handle_timers(now);
            }
            deliver(meshes, now);
        }
    }

    fn deliver(meshes: &mut [Mesh<FakeDevice, FakeTools>], now: Now) {
        for _ in 0..20 {
            let mut batch = Vec::new();
            for (i, m) in meshes.iter_mut().enumerate() {
                for (to, d) in m.membership().take_outgoing() {
                    batch.push((i, to, d));
                }
            }
            if batch.is_empty() {
                return;
            }
            for (from, to, d) in batch {
                let src = meshes[from].membership().identity().addr;
                if let Some(m) = meshes.iter_mut().find(|m| m.config.listen == to) {
                    m.membership().handle_datagram(src, &d, now);
                }
            }
        }
    }

    #[test]
    fn reconcile_puts_members_on_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let now = Now::real();
        let mut meshes: Vec<_> = (1..=3).map(|i| mesh(i, dir.path(), now)).collect();
        let seed = meshes[0].config.listen;
        for m in meshes.iter_mut().skip(1) {
            m.membership().bootstrap(&[seed], now);
        }
        exchange(&mut meshes, now);
        for m in meshes.iter_mut() {
            let d = m.reconcile(now).unwrap();
            assert_eq!(d.add.len(), 2, "{d}");
            assert_eq!(m.device().peers.len(), 2);
            assert!(
                m.reconcile(now).unwrap().is_empty(),
                "a second pass has nothing to do"
            );
            let calls = m.ip.tools().calls.borrow().clone();
            assert!(
                calls.iter().any(|c| c.starts_with("ip addr add fd")),
                "{calls:?}"
            );
            let st = m.status().unwrap();
            assert_eq!(st.peers.len(), 2);
            assert!(st
                .peers
                .iter()
                .all(|p| p.on_device && p.state == PeerState::Alive));
        }
        // Each node's peers carry the others' WireGuard keys and addresses.
        let keys: Vec<WgPublicKey> = meshes.iter().map(|m| m.wg_public).collect();
        let on_first: Vec<WgPublicKey> = meshes[0].device().peers.keys().copied().collect();
        assert!(on_first.contains(&keys[1]) && on_first.contains(&keys[2]));
        // The WireGuard key is kept in the state directory, mode 0600.
        let kf = dir.path().join("n1").join(WG_KEY_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = mesh(1, dir.path(), now);
        assert_eq!(again.wg_public, keys[0]);
    }

    #[test]
    fn endpoints_and_beacon_targets() {
        let addrs = vec![
            ("lo".to_string(), "127.0.0.1".parse().unwrap(), None),
            (
                "eth0".to_string(),
                "10.9.0.4".parse().unwrap(),
                Some("10.9.0.255".parse().unwrap()),
            ),
            ("eth0".to_string(), "fe80::1".parse().unwrap(), None),
            ("eth0".to_string(), "2001:db8::4".parse().unwrap(), None),
            // A link with no DHCP server: IPv4 link-local, with or without a broadcast address.
            ("eth1".to_string(), "169.254.7.9".parse().unwrap(), None),
            (
                "eth2".to_string(),
                "169.254.80.1".parse().unwrap(),
                Some("169.254.255.255".parse().unwrap()),
            ),
            (
                "wgt0".to_string(),
                "10.77.0.3".parse().unwrap(),
                Some("10.77.255.255".parse().unwrap()),
            ),
        ];
        assert_eq!(
            advertised_endpoints(&addrs, "wgt0", 51821),
            vec![
                "10.9.0.4:51821".parse::<SocketAddr>().unwrap(),
                "[2001:db8::4]:51821".parse().unwrap(),
                "169.254.7.9:51821".parse().unwrap(),
                "169.254.80.1:51821".parse().unwrap(),
            ]
        );
        assert_eq!(
            beacon_targets(&addrs, "wgt0", 51820),
            vec![
                "10.9.0.255:51820".parse::<SocketAddr>().unwrap(),
                "169.254.255.255:51820".parse().unwrap()
            ]
        );
        assert_eq!(default_wg_port(51820), 51821);
        assert_eq!(default_wg_port(65535), 65534);
    }
}
