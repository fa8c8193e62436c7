//! Staged rollouts: which devices take a channel's version now.
//!
//! A channel document may give its version to a share of the fleet only
//! (`"rollout": {"percent": 25}`). Each device places itself, asking no one:
//! its bucket for a version is
//!
//! ```text
//! h      = SHA-256("basalt-rollout" 0x00 <node id> 0x00 <version>)
//! bucket = big-endian u64 of h[0..8] / 2^64 × 100          in [0, 100)
//! ```
//!
//! where `<node id>` is the node's id as text (43 characters of base64url:
//! what `/data/basalt/identity/node.id` holds and the agent logs at start)
//! and `<version>` is the version as semver writes it (`0.2.0`,
//! `1.0.0-rc.1+b7`). The device takes the version iff `bucket < percent`.
//! Hence:
//!
//! - a node gets the same answer for the same version every time;
//! - raising the percent only adds nodes: a node that is in at 10 % is in at 50 %;
//! - each version draws its own subset, so the same nodes are not always first.
//!
//! Both sides of the comparison are kept in hundredths of a percent, the
//! precision a percent is written with: a bucket is `floor(h64 × 10000 /
//! 2^64)` in `0..10000`, a percent `p × 100` in `0..=10000`. For a whole
//! number of hundredths `p`, `floor(x) < p` exactly when `x < p`, so this is
//! the comparison above with no rounding.
//!
//! An operator can work out a node's bucket by hand:
//!
//! ```sh
//! printf 'basalt-rollout\0%s\0%s' "$(cat /data/basalt/identity/node.id)" 0.2.0 \
//!   | sha256sum | cut -c1-16    # h64 in hex; × 100 / 2^64 is the bucket
//! ```

use crate::mesh::NodeId;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The domain the bucket hash is made in, so it matches no other hash of a node id.
pub const BUCKET_DOMAIN: &[u8] = b"basalt-rollout";

/// Hundredths in 100 %.
const ALL_HUNDREDTHS: u16 = 10_000;

/// A share of the fleet: 0–100 %, in steps of 0.01 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u16);

impl Percent {
    /// Every device: the share when a document gives no `rollout`.
    pub const ALL: Percent = Percent(ALL_HUNDREDTHS);
    /// No device: a rollout that is paused before it starts.
    pub const NONE: Percent = Percent(0);

    /// A percent from hundredths of a percent (`2550` is 25.5 %); `None` above 100 %.
    pub fn from_hundredths(hundredths: u16) -> Option<Percent> {
        (hundredths <= ALL_HUNDREDTHS).then_some(Percent(hundredths))
    }

    /// The percent in hundredths of a percent.
    pub fn hundredths(self) -> u16 {
        self.0
    }

    /// A percent as a number is written (`25`, `12.5`, `0.01`): between 0
    /// and 100, with at most two decimal places. The error says which rule
    /// the value breaks.
    pub fn from_f64(value: f64) -> Result<Percent, String> {
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(format!("{value} is not between 0 and 100"));
        }
        let hundredths = value * 100.0;
        let rounded = hundredths.round();
        // 0.29 × 100 is 28.999999999999996 in binary floating point.
        if (hundredths - rounded).abs() > 1e-6 {
            return Err(format!(
                "{value} has more than two decimal places; a rollout is set in steps of 0.01 %"
            ));
        }
        Ok(Percent(rounded as u16))
    }

    /// The percent as a JSON number: an integer when it is whole (`25`, not `25.0`).
    pub fn to_json(self) -> serde_json::Number {
        if self.0.is_multiple_of(100) {
            serde_json::Number::from(self.0 / 100)
        } else {
            serde_json::Number::from_f64(f64::from(self.0) / 100.0).expect("a finite number")
        }
    }

    /// Whether a node in `bucket` takes the version.
    pub fn admits(self, bucket: Bucket) -> bool {
        bucket.0 < self.0
    }
}

/// Hundredths written as a decimal without trailing zeros: `25`, `12.5`, `0.01`.
fn write_hundredths(f: &mut fmt::Formatter<'_>, hundredths: u16) -> fmt::Result {
    let (whole, frac) = (hundredths / 100, hundredths % 100);
    match frac {
        0 => write!(f, "{whole}"),
        _ if frac.is_multiple_of(10) => write!(f, "{whole}.{}", frac / 10),
        _ => write!(f, "{whole}.{frac:02}"),
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hundredths(f, self.0)
    }
}

impl FromStr for Percent {
    type Err = String;

    /// `25`, `12.5`, `0.01`: what `basalt channel --percent` takes.
    fn from_str(s: &str) -> Result<Percent, String> {
        let value: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number such as 25 or 12.5"))?;
        Percent::from_f64(value)
    }
}

impl serde::Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// Where a node falls for one version: 0–99.99, in hundredths of a percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(u16);

impl Bucket {
    /// The bucket of `node` for `version` (see the module docs).
    pub fn of(node: &NodeId, version: &semver::Version) -> Bucket {
        let mut h = Sha256::new();
        h.update(BUCKET_DOMAIN);
        h.update([0]);
        h.update(node.to_string().as_bytes());
        h.update([0]);
        h.update(version.to_string().as_bytes());
        let digest = h.finalize();
        let h64 = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Bucket(((u128::from(h64) * u128::from(ALL_HUNDREDTHS)) >> 64) as u16)
    }

    /// The bucket in hundredths of a percent, `0..10000`.
    pub fn hundredths(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hundredths(f, self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node id made from `seed` alone (the first valid key at or after it).
    fn node(seed: u64) -> NodeId {
        (0u64..)
            .find_map(|i| {
                let bytes: [u8; 32] = Sha256::new()
                    .chain_update(b"test node")
                    .chain_update(seed.to_be_bytes())
                    .chain_update(i.to_be_bytes())
                    .finalize()
                    .into();
                NodeId::from_bytes(bytes).ok()
            })
            .expect("half of all byte strings are keys")
    }

    fn v(s: &str) -> semver::Version {
        s.parse().unwrap()
    }

    fn pct(s: &str) -> Percent {
        s.parse().unwrap()
    }

    #[test]
    fn percents_are_read_in_hundredths() {
        assert_eq!(pct("25").hundredths(), 2500);
        assert_eq!(pct("12.5").hundredths(), 1250);
        assert_eq!(pct("0.01").hundredths(), 1);
        assert_eq!(pct("0.29").hundredths(), 29);
        assert_eq!(pct("100"), Percent::ALL);
        assert_eq!(pct("0"), Percent::NONE);
        for (s, shown) in [
            ("25", "25"),
            ("12.5", "12.5"),
            ("0.01", "0.01"),
            ("7.05", "7.05"),
        ] {
            assert_eq!(pct(s).to_string(), shown);
        }
        assert_eq!(pct("25").to_json().to_string(), "25");
        assert_eq!(pct("12.5").to_json().to_string(), "12.5");
        assert_eq!(pct("33.33").to_json().to_string(), "33.33");
        let e = "150".parse::<Percent>().unwrap_err();
        assert_eq!(e, "150 is not between 0 and 100");
        let e = "-1".parse::<Percent>().unwrap_err();
        assert_eq!(e, "-1 is not between 0 and 100");
        let e = "33.333".parse::<Percent>().unwrap_err();
        assert!(
            e.starts_with("33.333 has more than two decimal places"),
            "{e}"
        );
        let e = "NaN".parse::<Percent>().unwrap_err();
        assert!(e.contains("not between"), "{e}");
        let e = "a lot".parse::<Percent>().unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        assert_eq!(Percent::from_hundredths(10_001), None);
        // Every written percent reads back as itself.
        for h in 0..=10_000u16 {
            let p = Percent::from_hundredths(h).unwrap();
            assert_eq!(p.to_string().parse::<Percent>(), Ok(p));
            let json: f64 = p.to_json().as_f64().unwrap();
            assert_eq!(Percent::from_f64(json), Ok(p));
        }
    }

    #[test]
    fn the_bucket_is_the_documented_hash() {
        let n = node(1);
        let input = format!("basalt-rollout\0{n}\00.2.0");
        let digest = Sha256::digest(input.as_bytes());
        let h64 = u64::from_be_bytes(digest[..8].try_into().unwrap());
        let expected = (h64 as f64 / 2f64.powi(64) * 100.0 * 100.0).floor() as u16;
        assert_eq!(Bucket::of(&n, &v("0.2.0")).hundredths(), expected);
    }

    /// Worked out with `printf … | sha256sum` as in the module docs.
    #[test]
    fn golden_buckets() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let n = NodeId::from_verifying_key(&key.verifying_key());
        assert_eq!(n.to_string(), "6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw");
        // h64 0xbb5806260fddb952: 73.1811… %
        assert_eq!(Bucket::of(&n, &v("0.2.0")).hundredths(), 7318);
        assert_eq!(Bucket::of(&n, &v("0.2.0")).to_string(), "73.18");
        // h64 0xee757574298dc27a: 93.1479… %
        assert_eq!(Bucket::of(&n, &v("0.3.0")).hundredths(), 9314);
        assert!(pct("73.19").admits(Bucket::of(&n, &v("0.2.0"))));
        assert!(!pct("73.18").admits(Bucket::of(&n, &v("0.2.0"))));
    }

    #[test]
    fn a_node_gets_the_same_answer_every_time() {
        for i in 0..50 {
            let n = node(i);
            let b = Bucket::of(&n, &v("1.4.0"));
            assert!(b.hundredths() < 10_000);
            assert_eq!(Bucket::of(&n, &v("1.4.0")), b);
            let n_again = NodeId::from_bytes(*n.as_bytes()).unwrap();
            assert_eq!(Bucket::of(&n_again, &v("1.4.0")), b);
        }
    }

    #[test]
    fn edges_of_the_range() {
        let b = Bucket::of(&node(7), &v("0.2.0"));
        assert!(!Percent::NONE.admits(b));
        assert!(Percent::ALL.admits(b));
        assert!(Percent::from_hundredths(b.hundredths() + 1)
            .unwrap()
            .admits(b));
        assert!(!Percent::from_hundredths(b.hundredths()).unwrap().admits(b));
        assert!(Percent::ALL.admits(Bucket(9_999)));
        assert!(!Percent::NONE.admits(Bucket(0)));
        assert!(Percent::from_hundredths(1).unwrap().admits(Bucket(0)));
    }

    /// 10 000 nodes: the share that takes a version is the percent within
    /// 1.5 points, raising the percent only adds nodes, and two versions
    /// draw different subsets.
    #[test]
    fn a_simulated_fleet() {
        let fleet: Vec<NodeId> = (0..10_000).map(node).collect();
        let version = v("2.3.0");
        let buckets: Vec<Bucket> = fleet.iter().map(|n| Bucket::of(n, &version)).collect();
        let mut previous: Vec<bool> = vec![false; fleet.len()];
        for p in ["0", "10", "25", "50", "100"] {
            let p = pct(p);
            let taking: Vec<bool> = buckets.iter().map(|b| p.admits(*b)).collect();
            let share = taking.iter().filter(|t| **t).count() as f64 / fleet.len() as f64 * 100.0;
            let target = f64::from(p.hundredths()) / 100.0;
            assert!(
                (share - target).abs() <= 1.5,
                "at {p} % the share taking it is {share:.2} %"
            );
            for (i, (was, is)) in previous.iter().zip(&taking).enumerate() {
                assert!(
                    !was || *is,
                    "node {i} took the version at a lower percent but not at {p} %"
                );
            }
            previous = taking;
        }
        assert!(previous.iter().all(|t| *t), "100 % takes every node");

        // Another version: about as many nodes at 25 %, but not the same ones.
        let p = pct("25");
        let first: Vec<bool> = buckets.iter().map(|b| p.admits(*b)).collect();
        let second: Vec<bool> = fleet
            .iter()
            .map(|n| p.admits(Bucket::of(n, &v("2.4.0"))))
            .collect();
        let both = first
            .iter()
            .zip(&second)
            .filter(|(a, b)| **a && **b)
            .count();
        let second_only = first
            .iter()
            .zip(&second)
            .filter(|(a, b)| !**a && **b)
            .count();
        // Independent draws overlap in about 25 % × 25 % = 6.25 % of the fleet,
        // and about 18.75 % take the second version but not the first.
        let overlap = both as f64 / fleet.len() as f64 * 100.0;
        assert!((overlap - 6.25).abs() <= 1.5, "overlap {overlap:.2} %");
        let fresh = second_only as f64 / fleet.len() as f64 * 100.0;
        assert!((fresh - 18.75).abs() <= 1.5, "{fresh:.2} % new nodes");
    }
}
