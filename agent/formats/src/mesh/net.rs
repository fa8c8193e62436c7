//! The address plan a network token carries: the mesh's IPv6 prefix, its
//! IPv4 range, and the bootstrap addresses new nodes first call.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A mesh's IPv6 prefix: a /48 inside the locally assigned half of the unique
/// local range, `fd00::/8` (RFC 4193), written `fd12:3456:789a::/48`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshPrefix([u8; 6]);

/// Why a mesh IPv6 prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mesh IPv6 prefix {value:?}: {reason}")]
pub struct ParsePrefixError {
    value: String,
    reason: &'static str,
}

impl MeshPrefix {
    /// Length of the prefix in bits.
    pub const LEN: u8 = 48;

    /// The prefix from its first 48 bits; the first byte must be `0xfd`.
    pub fn from_bytes(bytes: [u8; 6]) -> Result<Self, ParsePrefixError> {
        if bytes[0] != 0xfd {
            return Err(ParsePrefixError {
                value: MeshPrefix(bytes).to_string(),
                reason: "must be a unique local /48 starting with fd",
            });
        }
        Ok(MeshPrefix(bytes))
    }

    /// The first 48 bits.
    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// The prefix's first address (`fdxx:xxxx:xxxx::`).
    pub fn network(&self) -> Ipv6Addr {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&self.0);
        Ipv6Addr::from(b)
    }

    /// Whether `addr` lies inside this /48.
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        addr.octets()[..6] == self.0
    }
}

impl fmt::Display for MeshPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), Self::LEN)
    }
}

impl fmt::Debug for MeshPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshPrefix({self})")
    }
}

impl FromStr for MeshPrefix {
    type Err = ParsePrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePrefixError {
            value: s.to_string(),
            reason,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| err("write it as fdxx:xxxx:xxxx::/48"))?;
        if len != "48" {
            return Err(err("the mesh prefix is always a /48"));
        }
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| err("not an IPv6 address followed by /48"))?;
        let o = addr.octets();
        if o[6..].iter().any(|&b| b != 0) {
            return Err(err("bits after the first 48 must be zero"));
        }
        if o[0] != 0xfd {
            return Err(err("must be a unique local /48 starting with fd"));
        }
        let mut b = [0u8; 6];
        b.copy_from_slice(&o[..6]);
        Ok(MeshPrefix(b))
    }
}

/// The mesh's IPv4 range: a CIDR block inside one of the RFC 1918 private
/// ranges, between a /8 and a /24.
///
/// Usable host addresses leave out the network and broadcast addresses and,
/// in ranges larger than a /24, every address ending in `.0` or `.255`,
/// which some stacks and firewalls still treat as special.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Range {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// Why an IPv4 range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mesh IPv4 range {value:?}: {reason}")]
pub struct ParseIpv4RangeError {
    value: String,
    reason: String,
}

const PRIVATE_V4: [(Ipv4Addr, u8); 3] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl Ipv4Range {
    /// `10.77.0.0/16`, the range a token gets unless it names another.
    pub const DEFAULT: Ipv4Range = Ipv4Range {
        network: Ipv4Addr::new(10, 77, 0, 0),
        prefix_len: 16,
    };
    /// The largest range a mesh may use.
    pub const MIN_PREFIX_LEN: u8 = 8;
    /// The smallest range a mesh may use (254 nodes).
    pub const MAX_PREFIX_LEN: u8 = 24;

    /// A checked range: private, /8 to /24, host bits zero.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, ParseIpv4RangeError> {
        let err = |reason: String| ParseIpv4RangeError {
            value: format!("{network}/{prefix_len}"),
            reason,
        };
        if !(Self::MIN_PREFIX_LEN..=Self::MAX_PREFIX_LEN).contains(&prefix_len) {
            return Err(err(format!(
                "the prefix length must be between /{} and /{}",
                Self::MIN_PREFIX_LEN,
                Self::MAX_PREFIX_LEN
            )));
        }
        let n = u32::from(network);
        if n & !mask(prefix_len) != 0 {
            return Err(err(format!(
                "host bits are set; the network address is {}/{prefix_len}",
                Ipv4Addr::from(n & mask(prefix_len))
            )));
        }
        let private = PRIVATE_V4
            .iter()
            .any(|&(p, l)| prefix_len >= l && n & mask(l) == u32::from(p));
        if !private {
            return Err(err(
                "must lie inside a private range: 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
                    .to_string(),
            ));
        }
        Ok(Ipv4Range {
            network,
            prefix_len,
        })
    }

    /// A range of any size, for tests that need collisions in a handful of addresses.
    #[cfg(test)]
    pub(crate) fn tiny(network: Ipv4Addr, prefix_len: u8) -> Self {
        assert!((25..=30).contains(&prefix_len));
        assert_eq!(u32::from(network) & !mask(prefix_len), 0);
        Ipv4Range {
            network,
            prefix_len,
        }
    }

    /// The range's first address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The CIDR prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` lies inside the range (usable or not).
    pub fn contains(&self, addr: &Ipv4Addr) -> bool {
        u32::from(*addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// How many addresses nodes can be given.
    pub fn usable_hosts(&self) -> u32 {
        if self.prefix_len <= 24 {
            254 << (24 - u32::from(self.prefix_len))
        } else {
            (1u32 << (32 - u32::from(self.prefix_len))) - 2
        }
    }

    /// The `index`th usable address, counting from 0; `None` past the end.
    pub fn host(&self, index: u32) -> Option<Ipv4Addr> {
        if index >= self.usable_hosts() {
            return None;
        }
        let offset = if self.prefix_len <= 24 {
            (index / 254) * 256 + index % 254 + 1
        } else {
            index + 1
        };
        Some(Ipv4Addr::from(u32::from(self.network) + offset))
    }

    /// The index of a usable address ([`Ipv4Range::host`] backwards); `None`
    /// for addresses outside the range or not usable.
    pub fn host_index(&self, addr: &Ipv4Addr) -> Option<u32> {
        if !self.contains(addr) {
            return None;
        }
        let offset = u32::from(*addr) - u32::from(self.network);
        if self.prefix_len <= 24 {
            let last = offset % 256;
            (last != 0 && last != 255).then(|| (offset / 256) * 254 + last - 1)
        } else {
            let size = 1u32 << (32 - u32::from(self.prefix_len));
            (offset != 0 && offset != size - 1).then(|| offset - 1)
        }
    }

    /// Whether `addr` may be given to a node.
    pub fn is_usable(&self, addr: &Ipv4Addr) -> bool {
        self.host_index(addr).is_some()
    }
}

impl Default for Ipv4Range {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl fmt::Debug for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ipv4Range({self})")
    }
}

impl FromStr for Ipv4Range {
    type Err = ParseIpv4RangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseIpv4RangeError {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| err("write it in CIDR form, such as 10.77.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| err("the prefix length is not a number"))?;
        Ipv4Range::new(addr, len).map_err(|e| ParseIpv4RangeError {
            value: s.to_string(),
            reason: e.reason,
        })
    }
}

/// The host part of a bootstrap address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BootstrapHost {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, kept in lower case.
    Dns(String),
}

/// Where a new node first looks for members: `host:port`, with an IP
/// address (IPv6 in brackets) or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootstrapAddr {
    host: BootstrapHost,
    port: u16,
}

/// Why a bootstrap address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bootstrap address {value:?}: {reason}")]
pub struct ParseBootstrapError {
    value: String,
    reason: &'static str,
}

/// Longest DNS name a bootstrap address may hold.
pub const MAX_DNS_NAME: usize = 253;

fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_DNS_NAME {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    // A last label of digits only is a mistyped IPv4 address, not a name.
    labels.iter().all(label_ok)
        && !labels
            .last()
            .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
}

impl BootstrapAddr {
    /// An address from its parts; DNS names are checked and lower-cased.
    pub fn new(host: BootstrapHost, port: u16) -> Result<Self, ParseBootstrapError> {
        let value = || match &host {
            BootstrapHost::Ip(ip) => ip.to_string(),
            BootstrapHost::Dns(d) => d.clone(),
        };
        if port == 0 {
            return Err(ParseBootstrapError {
                value: format!("{}:0", value()),
                reason: "port 0 cannot be dialled",
            });
        }
        let host = match host {
            BootstrapHost::Dns(d) => {
                if !is_dns_name(&d) {
                    return Err(ParseBootstrapError {
                        value: d,
                        reason: "the host is neither an IP address nor a DNS name",
                    });
                }
                BootstrapHost::Dns(d.to_ascii_lowercase())
            }
            ip => ip,
        };
        Ok(BootstrapAddr { host, port })
    }

    /// The host to resolve or dial.
    pub fn host(&self) -> &BootstrapHost {
        &self.host
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for BootstrapAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            BootstrapHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            BootstrapHost::Ip(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            BootstrapHost::Dns(d) => write!(f, "{d}:{}", self.port),
        }
    }
}

impl FromStr for BootstrapAddr {
    type Err = ParseBootstrapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseBootstrapError {
            value: s.to_string(),
            reason,
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| err("write an IPv6 address as [addr]:port"))?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| err("not an IPv6 address"))?;
            (BootstrapHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| err("write it as host:port"))?;
            if host.contains(':') {
                return Err(err("write an IPv6 address in brackets: [addr]:port"));
            }
            match host.parse::<Ipv4Addr>() {
                Ok(ip) => (BootstrapHost::Ip(IpAddr::V4(ip)), port),
                Err(_) if is_dns_name(host) => (BootstrapHost::Dns(host.to_string()), port),
                Err(_) => return Err(err("the host is neither an IP address nor a DNS name")),
            }
        };
        let port: u16 = port
            .parse()
            .map_err(|_| err("the port is not a number from 1 to 65535"))?;
        BootstrapAddr::new(host, port).map_err(|e| err(e.reason))
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl ::serde::Serialize for $t {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as ::serde::Deserialize>::deserialize(d)?
                    .parse()
                    .map_err(::serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_str;

serde_via_str!(MeshPrefix);
serde_via_str!(Ipv4Range);
serde_via_str!(BootstrapAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["fd12:3456:789a::/48", "fd00::/48", "fdff:ffff:ffff::/48"] {
            let p: MeshPrefix = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(p.to_string(), ok);
        }
        for (bad, why) in [
            ("fd12:3456:789a::", "fdxx:xxxx:xxxx::/48"),
            ("fd12:3456:789a::/64", "always a /48"),
            ("fd12:3456:789a:1::/48", "must be zero"),
            ("fc12:3456:789a::/48", "starting with fd"),
            ("2001:db8::/48", "starting with fd"),
            ("fd12::zz/48", "not an IPv6 address"),
            ("", "fdxx"),
        ] {
            let e = bad.parse::<MeshPrefix>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn ipv4_ranges() {
        for ok in [
            "10.77.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "172.31.5.0/24",
            "192.168.0.0/16",
            "192.168.7.0/24",
        ] {
            let r: Ipv4Range = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(r.to_string(), ok);
        }
        for (bad, why) in [
            ("10.77.0.0", "CIDR form"),
            ("10.77.0.1/16", "the network address is 10.77.0.0/16"),
            ("10.0.0.0/7", "between /8 and /24"),
            ("10.0.0.0/25", "between /8 and /24"),
            ("172.0.0.0/8", "private range"),
            ("172.32.0.0/16", "private range"),
            ("100.64.0.0/10", "private range"),
            ("8.8.8.0/24", "private range"),
            ("10.0.0.0/x", "not a number"),
            ("10.0.0/16", "not an IPv4 address"),
        ] {
            let e = bad.parse::<Ipv4Range>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn usable_hosts_skip_network_broadcast_and_dot_0_and_255() {
        let r: Ipv4Range = "10.77.0.0/23".parse().unwrap();
        assert_eq!(r.usable_hosts(), 508);
        assert_eq!(r.host(0), Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(r.host(253), Some(Ipv4Addr::new(10, 77, 0, 254)));
        assert_eq!(r.host(254), Some(Ipv4Addr::new(10, 77, 1, 1)));
        assert_eq!(r.host(507), Some(Ipv4Addr::new(10, 77, 1, 254)));
        assert_eq!(r.host(508), None);
        for bad in [
            [10, 77, 0, 0],
            [10, 77, 0, 255],
            [10, 77, 1, 0],
            [10, 77, 1, 255],
        ] {
            assert!(!r.is_usable(&Ipv4Addr::from(bad)), "{bad:?}");
        }
        assert!(!r.is_usable(&Ipv4Addr::new(10, 77, 2, 1)));
        for i in 0..r.usable_hosts() {
            assert_eq!(r.host_index(&r.host(i).unwrap()), Some(i));
        }
        let tiny = Ipv4Range::tiny(Ipv4Addr::new(10, 0, 0, 248), 29);
        assert_eq!(tiny.usable_hosts(), 6);
        assert_eq!(tiny.host(0), Some(Ipv4Addr::new(10, 0, 0, 249)));
        assert_eq!(tiny.host(5), Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(tiny.host_index(&Ipv4Addr::new(10, 0, 0, 255)), None);
        assert_eq!(tiny.host_index(&Ipv4Addr::new(10, 0, 0, 248)), None);
        let big: Ipv4Range = "10.0.0.0/8".parse().unwrap();
        assert_eq!(big.usable_hosts(), 254 * 65536);
        assert_eq!(
            big.host(big.usable_hosts() - 1),
            Some(Ipv4Addr::new(10, 255, 255, 254))
        );
    }

    #[test]
    fn bootstrap_addresses() {
        for (ok, shown) in [
            ("192.0.2.1:51820", "192.0.2.1:51820"),
            ("[2001:db8::1]:51820", "[2001:db8::1]:51820"),
            ("seed.example.com:443", "seed.example.com:443"),
            ("Seed-1.Example.COM:1", "seed-1.example.com:1"),
            ("localhost:51820", "localhost:51820"),
        ] {
            let a: BootstrapAddr = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(a.to_string(), shown);
            assert_eq!(a.to_string().parse::<BootstrapAddr>().unwrap(), a);
        }
        for (bad, why) in [
            ("192.0.2.1", "host:port"),
            ("192.0.2.1:0", "port 0"),
            ("192.0.2.1:65536", "1 to 65535"),
            ("192.0.2.1:", "1 to 65535"),
            ("2001:db8::1:51820", "in brackets"),
            ("[2001:db8::1]", "[addr]:port"),
            ("[nope]:1", "not an IPv6"),
            ("10.0.0.256:1", "neither an IP address nor a DNS name"),
            ("-bad.example:1", "neither"),
            ("under_score.example:1", "neither"),
            ("a..b:1", "neither"),
            (":1", "neither"),
        ] {
            let e = bad.parse::<BootstrapAddr>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }
}
