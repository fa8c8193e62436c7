//! SHA-256 digests and fixed-length hex, as the manifest writes them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A string that is not `2 × len` lower- or upper-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{found:?} is not {} hex digits ({bytes} bytes)", bytes * 2)]
pub struct HexError {
    /// How many bytes the hex should encode.
    pub bytes: usize,
    /// The text as found, cut short when long.
    pub found: String,
}

/// Decodes exactly `N` bytes of hex.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| HexError {
        bytes: N,
        found: s.chars().take(2 * N + 8).collect(),
    })?;
    Ok(out)
}

/// A SHA-256 digest, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// The digest of everything `r` yields, read in 1 MiB blocks.
    pub fn of_reader(mut r: impl std::io::Read) -> std::io::Result<Sha256Digest> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(Sha256Digest::from_hasher(h));
            }
            h.update(&buf[..n]);
        }
    }

    /// The digest a finished hasher holds.
    pub fn from_hasher(h: Sha256) -> Sha256Digest {
        Sha256Digest(h.finalize().into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl FromStr for Sha256Digest {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(Sha256Digest)
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(
            d.to_string()
                .to_uppercase()
                .parse::<Sha256Digest>()
                .unwrap(),
            d
        );
        for bad in ["", "ab", &"g".repeat(64), &"a".repeat(66)] {
            let e = bad.parse::<Sha256Digest>().unwrap_err();
            assert!(e.to_string().contains("64 hex digits"), "{e}");
        }
    }
}
