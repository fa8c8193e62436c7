//! The peer reconcile diff: what to change on the WireGuard device so its
//! peers become the wanted set.
//!
//! [`diff`] is pure: it reads the wanted peers and what the device reported,
//! and says what to add, remove and update. Applying it is someone else's
//! job. A peer whose endpoint, allowed IPs or keepalive changed is updated in
//! place, never removed and added again: that would drop its session and
//! counters, and a backend that cannot update in place must turn an update
//! into remove-and-add itself.

use basalt_formats::mesh::WgPublicKey;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A handshake younger than this means the session works: its endpoint
/// (which WireGuard may have learnt by roaming) is left alone. WireGuard
/// re-handshakes every 2 minutes on a live session.
pub const RECENT_HANDSHAKE: Duration = Duration::from_secs(180);

/// A peer as the mesh wants it on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPeer {
    /// The peer's WireGuard public key.
    pub public_key: WgPublicKey,
    /// Where to send its packets; `None` leaves whatever the device has.
    pub endpoint: Option<SocketAddr>,
    /// Addresses routed to it (its mesh /128 and /32).
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive in seconds; `None` or `Some(0)` is off.
    pub keepalive: Option<u16>,
}

/// A peer as the WireGuard device reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActualPeer {
    /// The peer's WireGuard public key.
    pub public_key: WgPublicKey,
    /// The endpoint the device uses now.
    pub endpoint: Option<SocketAddr>,
    /// Addresses routed to it.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive in seconds; `None` or `Some(0)` is off.
    pub keepalive: Option<u16>,
    /// How long ago the last handshake was, when the device was read; `None` if never.
    pub last_handshake: Option<Duration>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// A value before and after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<T> {
    /// What the device has.
    pub from: T,
    /// What it should have.
    pub to: T,
}

/// What to change on one existing peer; fields left `None` stay as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer.
    pub public_key: WgPublicKey,
    /// Set its endpoint (the new one is always `Some`).
    pub endpoint: Option<Change<Option<SocketAddr>>>,
    /// Replace its allowed IPs (sorted, as wanted).
    pub allowed_ips: Option<Change<Vec<IpNet>>>,
    /// Set its persistent keepalive.
    pub keepalive: Option<Change<Option<u16>>>,
}

impl PeerUpdate {
    fn is_empty(&self) -> bool {
        self.endpoint.is_none() && self.allowed_ips.is_none() && self.keepalive.is_none()
    }
}

/// Everything to do to the device, each list sorted by public key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// Peers to create, with allowed IPs sorted.
    pub add: Vec<WantedPeer>,
    /// Peers to delete.
    pub remove: Vec<WgPublicKey>,
    /// Peers to change in place.
    pub update: Vec<PeerUpdate>,
}

impl PeerDiff {
    /// Whether the device already matches.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.update.is_empty()
    }
}

fn normalise_ips(ips: &[IpNet]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = ips.iter().map(IpNet::trunc).collect();
    v.sort();
    v.dedup();
    v
}

fn normalise_keepalive(k: Option<u16>) -> Option<u16> {
    k.filter(|&s| s != 0)
}

/// What to change so the device's peers match `wanted`.
///
/// - A wanted peer the device lacks is added; a device peer nobody wants is removed.
/// - An endpoint is set only when one is wanted, it differs, and the
///   peer has not handshaken within [`RECENT_HANDSHAKE`] (a live session
///   keeps the endpoint WireGuard found).
/// - Allowed IPs compare as sets of networks; keepalive `0` equals none.
/// - When a key appears twice in `wanted`, the first entry counts.
///
/// The result is sorted by public key and empty when nothing needs doing.
pub fn diff(wanted: &[WantedPeer], actual: &[ActualPeer]) -> PeerDiff {
    let mut want: BTreeMap<WgPublicKey, &WantedPeer> = BTreeMap::new();
    for w in wanted {
        want.entry(w.public_key).or_insert(w);
    }
    let have: BTreeMap<WgPublicKey, &ActualPeer> =
        actual.iter().map(|a| (a.public_key, a)).collect();

    let mut out = PeerDiff::default();
    for (key, w) in &want {
        let allowed_ips = normalise_ips(&w.allowed_ips);
        let keepalive = normalise_keepalive(w.keepalive);
        let Some(a) = have.get(key) else {
            out.add.push(WantedPeer {
                public_key: *key,
                endpoint: w.endpoint,
                allowed_ips,
                keepalive,
            });
            continue;
        };
        let live = a.last_handshake.is_some_and(|age| age < RECENT_HANDSHAKE);
        let mut update = PeerUpdate {
            public_key: *key,
            endpoint: None,
            allowed_ips: None,
            keepalive: None,
        };
        if let Some(e) = w.endpoint {
            if a.endpoint != Some(e) && !live {
                update.endpoint = Some(Change {
                    from: a.endpoint,
                    to: Some(e),
                });
            }
        }
        let have_ips = normalise_ips(&a.allowed_ips);
        if have_ips != allowed_ips {
            update.allowed_ips = Some(Change {
                from: have_ips,
                to: allowed_ips,
            });
        }
        let have_keepalive = normalise_keepalive(a.keepalive);
        if have_keepalive != keepalive {
            update.keepalive = Some(Change {
                from: have_keepalive,
                to: keepalive,
            });
        }
        if !update.is_empty() {
            out.update.push(update);
        }
    }
    out.remove = have
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    out
}

struct Opt<'a, T>(&'a Option<T>);

impl<T: fmt::Display> fmt::Display for Opt<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

struct Ips<'a>(&'a [IpNet]);

impl fmt::Display for Ips<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, ip) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            ip.fmt(f)?;
        }
        Ok(())
    }
}

/// One line per change, for the log:
///
/// ```text
/// add peer KEY endpoint 192.0.2.1:51820 allowed-ips fd00::1/128,10.77.0.1/32 keepalive 25
/// update peer KEY endpoint 192.0.2.1:51820 -> 192.0.2.9:51820
/// remove peer KEY
/// ```
impl fmt::Display for PeerDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.add {
            writeln!(
                f,
                "add peer {} endpoint {} allowed-ips {} keepalive {}",
                p.public_key,
                Opt(&p.endpoint),
                Ips(&p.allowed_ips),
                Opt(&p.keepalive)
            )?;
        }
        for u in &self.update {
            let k = &u.public_key;
            if let Some(c) = &u.endpoint {
                writeln!(
                    f,
                    "update peer {k} endpoint {} -> {}",
                    Opt(&c.from),
                    Opt(&c.to)
                )?;
            }
            if let Some(c) = &u.allowed_ips {
                writeln!(
                    f,
                    "update peer {k} allowed-ips {} -> {}",
                    Ips(&c.from),
                    Ips(&c.to)
                )?;
            }
            if let Some(c) = &u.keepalive {
                writeln!(
                    f,
                    "update peer {k} keepalive {} -> {}",
                    Opt(&c.from),
                    Opt(&c.to)
                )?;
            }
        }
        for k in &self.remove {
            writeln!(f, "remove peer {k}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> WgPublicKey {
        WgPublicKey::from_bytes([n; 32]).unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ep(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn wanted(n: u8, endpoint: &str) -> WantedPeer {
        WantedPeer {
            public_key: key(n),
            endpoint: ep(endpoint),
            allowed_ips: ips(&[&format!("fd00::{n}/128"), &format!("10.77.0.{n}/32")]),
            keepalive: Some(25),
        }
    }

    fn actual(w: &WantedPeer) -> ActualPeer {
        ActualPeer {
            public_key: w.public_key,
            endpoint: w.endpoint,
            allowed_ips: w.allowed_ips.clone(),
            keepalive: w.keepalive,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn table() {
        let w1 = wanted(1, "192.0.2.1:51820");
        let same = actual(&w1);
        let with = |f: &dyn Fn(&mut ActualPeer)| {
            let mut a = actual(&w1);
            f(&mut a);
            a
        };
        let cases: Vec<(&str, Vec<WantedPeer>, Vec<ActualPeer>, String)> = vec![
            ("nothing at all", vec![], vec![], String::new()),
            ("in step", vec![w1.clone()], vec![same.clone()], String::new()),
            (
                "new peer",
                vec![w1.clone()],
                vec![],
                format!("add peer {K1} endpoint 192.0.2.1:51820 allowed-ips 10.77.0.1/32,fd00::1/128 keepalive 25\n"),
            ),
            ("unwanted peer", vec![], vec![same.clone()], format!("remove peer {K1}\n")),
            (
                "moved, never handshaken: updated in place",
                vec![w1.clone()],
                vec![with(&|a| a.endpoint = ep("192.0.2.9:1"))],
                format!("update peer {K1} endpoint 192.0.2.9:1 -> 192.0.2.1:51820\n"),
            ),
            (
                "no endpoint on the device yet",
                vec![w1.clone()],
                vec![with(&|a| a.endpoint = None)],
                format!("update peer {K1} endpoint none -> 192.0.2.1:51820\n"),
            ),
            (
                "roamed with a live session: left alone",
                vec![w1.clone()],
                vec![with(&|a| {
                    a.endpoint = ep("198.51.100.7:40000");
                    a.last_handshake = Some(Duration::from_secs(30));
                })],
                String::new(),
            ),
            (
                "roamed, session gone stale",
                vec![w1.clone()],
                vec![with(&|a| {
                    a.endpoint = ep("198.51.100.7:40000");
                    a.last_handshake = Some(Duration::from_secs(600));
                })],
                format!("update peer {K1} endpoint 198.51.100.7:40000 -> 192.0.2.1:51820\n"),
            ),
            (
                "no endpoint wanted: keep the device's",
                vec![WantedPeer { endpoint: None, ..w1.clone() }],
                vec![same.clone()],
                String::new(),
            ),
            (
                "allowed IPs in another order, one repeated",
                vec![w1.clone()],
                vec![with(&|a| a.allowed_ips = ips(&["fd00::1/128", "10.77.0.1/32", "10.77.0.1/32"]))],
                String::new(),
            ),
            (
                "allowed IPs changed",
                vec![w1.clone()],
                vec![with(&|a| a.allowed_ips = ips(&["10.77.0.9/32"]))],
                format!("update peer {K1} allowed-ips 10.77.0.9/32 -> 10.77.0.1/32,fd00::1/128\n"),
            ),
            (
                "keepalive 0 is none",
                vec![WantedPeer { keepalive: None, ..w1.clone() }],
                vec![with(&|a| a.keepalive = Some(0))],
                String::new(),
            ),
            (
                "keepalive changed, and endpoint too: one line each",
                vec![w1.clone()],
                vec![with(&|a| {
                    a.keepalive = None;
                    a.endpoint = ep("192.0.2.9:1");
                })],
                format!("update peer {K1} endpoint 192.0.2.9:1 -> 192.0.2.1:51820\nupdate peer {K1} keepalive none -> 25\n"),
            ),
        ];
        for (name, w, a, want) in cases {
            let d = diff(&w, &a);
            assert_eq!(d.to_string(), want, "{name}");
            assert_eq!(d.is_empty(), want.is_empty(), "{name}");
            assert!(
                d.add.iter().all(|p| !d.remove.contains(&p.public_key)),
                "{name}: a peer is never removed and added"
            );
        }
    }

    #[test]
    fn deterministic_and_sorted() {
        let ws: Vec<WantedPeer> = [5, 1, 3, 9]
            .iter()
            .map(|&n| wanted(n, "192.0.2.1:1"))
            .collect();
        let mut acts: Vec<ActualPeer> = [7, 3, 2]
            .iter()
            .map(|&n| actual(&wanted(n, "192.0.2.2:1")))
            .collect();
        let d = diff(&ws, &acts);
        let mut ws_rev = ws.clone();
        ws_rev.reverse();
        acts.reverse();
        assert_eq!(diff(&ws_rev, &acts), d);
        let keys = |v: Vec<WgPublicKey>| v.iter().map(|k| k.as_bytes()[0]).collect::<Vec<_>>();
        assert_eq!(
            keys(d.add.iter().map(|p| p.public_key).collect()),
            [1, 5, 9]
        );
        assert_eq!(keys(d.remove.clone()), [2, 7]);
        assert_eq!(keys(d.update.iter().map(|u| u.public_key).collect()), [3]);
    }

    #[test]
    fn first_of_duplicate_wanted_keys_counts() {
        let a = wanted(1, "192.0.2.1:1");
        let b = wanted(1, "192.0.2.2:2");
        let d = diff(&[a.clone(), b], &[]);
        assert_eq!(d.add.len(), 1);
        assert_eq!(d.add[0].endpoint, a.endpoint);
    }

    #[test]
    fn applying_the_diff_leaves_nothing_to_do() {
        let ws: Vec<WantedPeer> = (1..=6).map(|n| wanted(n, "192.0.2.1:1")).collect();
        let mut device: Vec<ActualPeer> = [2, 4, 8]
            .iter()
            .map(|&n| actual(&wanted(n, "192.0.2.7:7")))
            .collect();
        device[0].allowed_ips = ips(&["10.0.0.1/32"]);
        let d = diff(&ws, &device);
        device.retain(|p| !d.remove.contains(&p.public_key));
        for u in &d.update {
            let p = device
                .iter_mut()
                .find(|p| p.public_key == u.public_key)
                .unwrap();
            if let Some(c) = &u.endpoint {
                p.endpoint = c.to;
            }
            if let Some(c) = &u.allowed_ips {
                p.allowed_ips = c.to.clone();
            }
            if let Some(c) = &u.keepalive {
                p.keepalive = c.to;
            }
        }
        device.extend(d.add.iter().map(actual));
        assert!(diff(&ws, &device).is_empty(), "{}", diff(&ws, &device));
    }
}
