//! Routing over the mesh: a request for a model this node does not serve
//! goes to a peer that advertises it, least loaded first.
//!
//! Nodes advertise their ready models and a load figure in their signed
//! mesh descriptors ([`Advert`], written by the server, read by the mesh).
//! A forwarded request carries `basalt-hops`; a node does not forward a
//! request that has already made [`MAX_HOPS`] hops, so routing cannot loop.
//! The answer names the node that ran the model (`basalt-served-by`, and
//! `parameters.served_by` in the body).

use basalt_formats::mesh::{ModelName, NodeId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The header counting how often a request was forwarded.
pub const HOPS_HEADER: &str = "basalt-hops";
/// Forwarded at most this often.
pub const MAX_HOPS: u32 = 2;
/// Where the server writes what it serves, for the mesh to advertise.
pub const ADVERT_PATH: &str = "/run/basalt/advert.json";

/// What this node's inference server offers the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// Models ready to serve.
    pub models: Vec<ModelName>,
    /// Admitted requests as a share of what the server admits, in steps of
    /// 25 %, so that the descriptor is not re-signed for every request.
    pub load: u8,
}

impl Advert {
    /// The advert in `path`, or an empty one when there is none.
    pub fn read(path: &Path) -> Advert {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The load figure for `pending` admitted requests out of `capacity`.
    pub fn load_step(pending: usize, capacity: usize) -> u8 {
        let percent = (pending * 100 / capacity.max(1)).min(100);
        (percent / 25 * 25) as u8
    }
}

/// A peer that can run a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    /// `http://host:port` of its inference API.
    pub base: String,
    pub load: u8,
}

/// Who serves what: the mesh's peers, or a fixed list in tests.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// Peers that serve `model`, the one to try first first.
    fn candidates(&self, model: &str) -> Vec<Candidate>;
}

/// The mesh's live peers, from the status file the mesh writes every second.
#[derive(Debug, Clone)]
pub struct MeshDirectory {
    pub status_dir: PathBuf,
    pub port: u16,
}

impl Directory for MeshDirectory {
    fn candidates(&self, model: &str) -> Vec<Candidate> {
        let Ok(st) = crate::mesh::status::read(&self.status_dir) else {
            return Vec::new();
        };
        let mut c: Vec<Candidate> = st
            .peers
            .iter()
            .filter(|p| p.state == crate::mesh::status::PeerState::Alive)
            .filter(|p| p.models.iter().any(|m| m == model))
            .map(|p| Candidate {
                node: p.node_id,
                base: format!("http://[{}]:{}", p.ipv6, self.port),
                load: p.load,
            })
            .collect();
        order(&mut c);
        c
    }
}

/// Least loaded first; ties by node id, so every node agrees.
pub fn order(c: &mut [Candidate]) {
    c.sort_by(|a, b| a.load.cmp(&b.load).then(a.node.cmp(&b.node)));
}

/// A fixed directory: (model, peer) pairs.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory(pub Vec<(String, Candidate)>);

impl Directory for StaticDirectory {
    fn candidates(&self, model: &str) -> Vec<Candidate> {
        let mut c: Vec<Candidate> = self
            .0
            .iter()
            .filter(|(m, _)| m == model)
            .map(|(_, c)| c.clone())
            .collect();
        order(&mut c);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId::from_verifying_key(&ed25519_dalek::SigningKey::from_bytes(&[b; 32]).verifying_key())
    }

    #[test]
    fn least_loaded_first_then_by_node() {
        let c = |b, load| Candidate {
            node: id(b),
            base: format!("http://n{b}"),
            load,
        };
        let d = StaticDirectory(vec![
            ("m".into(), c(1, 50)),
            ("m".into(), c(2, 0)),
            ("other".into(), c(3, 0)),
            ("m".into(), c(4, 0)),
        ]);
        let got: Vec<u8> = d.candidates("m").iter().map(|c| c.load).collect();
        assert_eq!(got, [0, 0, 50]);
        let first_two: Vec<NodeId> = d.candidates("m")[..2].iter().map(|c| c.node).collect();
        let mut want = vec![id(2), id(4)];
        want.sort();
        assert_eq!(first_two, want);
        assert!(d.candidates("none").is_empty());
    }

    #[test]
    fn load_moves_in_steps() {
        assert_eq!(Advert::load_step(0, 10), 0);
        assert_eq!(Advert::load_step(2, 10), 0);
        assert_eq!(Advert::load_step(3, 10), 25);
        assert_eq!(Advert::load_step(10, 10), 100);
        assert_eq!(Advert::load_step(50, 10), 100);
    }

    #[test]
    fn adverts_round_trip_and_missing_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("advert.json");
        assert_eq!(Advert::read(&p), Advert::default());
        let a = Advert {
            models: vec!["magika".parse().unwrap()],
            load: 25,
        };
        std::fs::write(&p, serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(Advert::read(&p), a);
    }
}
