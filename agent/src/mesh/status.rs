//! The mesh status file: written by the running mesh every second
//! (atomically: a temporary file renamed over `status.json` in the state
//! directory), read by `basalt-agent mesh status` and `mesh peers`.

use super::wire::DropCounters;
use basalt_formats::mesh::{NodeId, WgPublicKey};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The file's name in the state directory.
pub const STATUS_FILE: &str = "status.json";

/// A member's health, as shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Answering.
    Alive,
    /// Missed probes.
    Suspect,
    /// Declared dead (or not known to membership).
    Dead,
}

/// One member other than this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerStatus {
    /// Its node id.
    pub node_id: NodeId,
    /// Its host name, when it tells one (descriptors of version 1 do not).
    pub hostname: Option<String>,
    /// Its WireGuard key.
    pub wg_public_key: WgPublicKey,
    /// Its mesh IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Its mesh IPv4 address, if the range had room.
    pub ipv4: Option<Ipv4Addr>,
    /// The endpoint the device uses (or would use).
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last WireGuard handshake.
    pub last_handshake_s: Option<u64>,
    /// Bytes received through WireGuard.
    pub rx_bytes: u64,
    /// Bytes sent through WireGuard.
    pub tx_bytes: u64,
    /// Its health.
    pub state: PeerState,
    /// Whether it is a peer on the WireGuard device.
    pub on_device: bool,
    /// The models it serves.
    #[serde(default)]
    pub models: Vec<String>,
    /// How busy its inference server is, percent.
    #[serde(default)]
    pub load: u8,
    /// The update bundles it serves to peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<basalt_formats::mesh::BundleAd>,
}

/// This node's mesh, as last written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshStatus {
    /// When this was written, UNIX seconds.
    pub updated_unix: u64,
    /// The network's name.
    pub network: String,
    /// This node's id.
    pub node_id: NodeId,
    /// The WireGuard interface.
    pub interface: String,
    /// `kernel` or `userspace`.
    pub backend: String,
    /// This node's WireGuard key.
    pub wg_public_key: WgPublicKey,
    /// This node's mesh IPv6 address.
    pub ipv6: Ipv6Addr,
    /// This node's mesh IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Where gossip is received.
    pub gossip_listen: SocketAddr,
    /// The WireGuard listen port.
    pub wg_port: u16,
    /// The endpoints this node advertises.
    pub endpoints: Vec<SocketAddr>,
    /// Live members other than this node.
    pub members_alive: usize,
    /// Gossip bytes sent since start.
    pub gossip_sent_bytes: u64,
    /// Datagrams dropped, by reason.
    pub drops: DropCounters,
    /// Every other member, by node id.
    pub peers: Vec<PeerStatus>,
}

/// Why the status file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// I/O on the file.
    #[error("mesh status {path}: {source} (is `basalt-agent mesh run` running with this state directory?)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid status JSON.
    #[error("mesh status {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Write the status into `dir` atomically.
pub fn write(dir: &Path, status: &MeshStatus) -> Result<(), StatusError> {
    let path = dir.join(STATUS_FILE);
    let tmp = dir.join(format!(".{STATUS_FILE}.new"));
    let io = |source| StatusError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let json = serde_json::to_vec_pretty(status).expect("status serialises");
    f.write_all(&json).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Read the status from `dir`.
pub fn read(dir: &Path) -> Result<MeshStatus, StatusError> {
    let path = dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StatusError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StatusError::Parse { path, source })
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl MeshStatus {
    /// For `basalt-agent mesh status`.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "network:    {}", self.network);
        let _ = writeln!(s, "node:       {}", self.node_id);
        let _ = writeln!(s, "interface:  {} ({})", self.interface, self.backend);
        let _ = writeln!(s, "addresses:  {} {}", self.ipv6, opt(&self.ipv4));
        let _ = writeln!(
            s,
            "gossip:     {} (sent {} bytes)",
            self.gossip_listen, self.gossip_sent_bytes
        );
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(
            s,
            "wireguard:  port {}, endpoints {}",
            self.wg_port,
            endpoints.join(" ")
        );
        let count = |st| self.peers.iter().filter(|p| p.state == st).count();
        let _ = writeln!(
            s,
            "members:    {} alive, {} suspect, {} dead",
            count(PeerState::Alive),
            count(PeerState::Suspect),
            count(PeerState::Dead)
        );
        let d = &self.drops;
        let _ = writeln!(
            s,
            "dropped:    {} (wrong network {}, forged {}, replayed {}, stale {}, oversized {}, garbage {}, malformed {}, bad descriptors {})",
            d.total(), d.wrong_network, d.forged, d.replayed, d.stale, d.oversized, d.garbage, d.malformed, d.bad_descriptors
        );
        s
    }

    /// For `basalt-agent mesh peers`: one line per member.
    pub fn peers_human(&self) -> String {
        let mut s = String::from("NODE          STATE    IPV6                                     IPV4             ENDPOINT               HANDSHAKE   RX        TX        LOAD  MODELS\n");
        for p in &self.peers {
            let id = p.node_id.to_string();
            let _ = writeln!(
                s,
                "{:<13} {:<8} {:<40} {:<16} {:<22} {:<11} {:<9} {:<9} {:<5} {}",
                &id[..id.len().min(12)],
                match p.state {
                    PeerState::Alive => "alive",
                    PeerState::Suspect => "suspect",
                    PeerState::Dead => "dead",
                },
                p.ipv6,
                opt(&p.ipv4),
                opt(&p.endpoint),
                p.last_handshake_s
                    .map_or_else(|| "never".to_string(), |s| format!("{s}s ago")),
                p.rx_bytes,
                p.tx_bytes,
                format!("{}%", p.load),
                if p.models.is_empty() {
                    "-".to_string()
                } else {
                    p.models.join(",")
                }
            );
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    pub(crate) fn status() -> MeshStatus {
        let id = NodeId::from_verifying_key(&SigningKey::from_bytes(&[1; 32]).verifying_key());
        MeshStatus {
            updated_unix: 1,
            network: "lab".into(),
            node_id: id,
            interface: "wgt0".into(),
            backend: "userspace".into(),
            wg_public_key: WgPublicKey::from_bytes([2; 32]).unwrap(),
            ipv6: "fd00::1".parse().unwrap(),
            ipv4: Some("10.77.0.1".parse().unwrap()),
            gossip_listen: "0.0.0.0:51820".parse().unwrap(),
            wg_port: 51821,
            endpoints: vec![],
            members_alive: 1,
            gossip_sent_bytes: 10,
            drops: DropCounters::default(),
            peers: vec![PeerStatus {
                node_id: id,
                hostname: None,
                wg_public_key: WgPublicKey::from_bytes([3; 32]).unwrap(),
                ipv6: "fd00::2".parse().unwrap(),
                ipv4: None,
                endpoint: None,
                last_handshake_s: Some(3),
                rx_bytes: 1,
                tx_bytes: 2,
                state: PeerState::Suspect,
                on_device: true,
                models: vec!["magika".into()],
                load: 25,
                bundles: vec![],
            }],
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("status.json"), "{e}");
        write(dir.path(), &status()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), status());
        assert!(status().human().contains("0 alive, 1 suspect, 0 dead"));
        assert!(status().peers_human().contains("suspect"));
        assert!(status().peers_human().contains("3s ago"));
        assert!(
            status().peers_human().contains("25%   magika"),
            "{}",
            status().peers_human()
        );
    }
}
