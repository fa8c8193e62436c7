//! The network token: everything a device needs to join a mesh, in one line
//! of cloud-config.
//!
//! # Text form
//!
//! `basalt-mesh-v1:` followed by the binary form in unpadded base64url.
//!
//! # Binary form (version 1)
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | format version, `1` |
//! | 1 | flags: bit 0 IPv6 prefix present, bit 1 IPv4 range present, bit 2 port present; other bits zero |
//! | 1 + n | network name: length n (1 to 32), ASCII |
//! | 32 | secret |
//! | 6 | IPv6 prefix, first 48 bits (only with flag bit 0) |
//! | 4 + 1 | IPv4 range: network address, prefix length (only with flag bit 1) |
//! | 2 | mesh port (gossip; WireGuard listens on the next one), big-endian (only with flag bit 2) |
//! | 1 | number of bootstrap addresses (at most 16), then each as: |
//! | 1 + … | kind `4` and 4 address bytes, kind `6` and 16 address bytes, or kind `0`, a length and a DNS name |
//! | 2 | … and its port, big-endian |
//! | 4 | checksum: the first 4 bytes of SHA-256 of `basalt-mesh-token` and every byte above |
//!
//! A field left out takes its default: the IPv6 prefix derived from the name
//! and secret ([`derive_ipv6_prefix`]), `10.77.0.0/16`, port 51820. Encoding
//! leaves out every field equal to its default, so a token's text is a
//! function of its contents.

use super::keys::{derive_ipv6_prefix, derive_keys, MeshKeys};
use super::net::{
    serde_via_str, BootstrapAddr, BootstrapHost, Ipv4Range, MeshPrefix, MAX_DNS_NAME,
};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// What every mesh token's text starts with.
pub const TOKEN_PREFIX: &str = "basalt-mesh-v1:";
/// The binary format version this code writes and reads.
pub const TOKEN_VERSION: u8 = 1;
/// WireGuard's customary port, used unless the token names another.
pub const DEFAULT_PORT: u16 = 51820;
/// Most bootstrap addresses a token may carry.
pub const MAX_BOOTSTRAP: usize = 16;
const CHECKSUM_DOMAIN: &[u8] = b"basalt-mesh-token";
const CHECKSUM_LEN: usize = 4;
const FLAG_PREFIX: u8 = 1;
/// Unpadded base64url that lets the last character's unused bits through, so
/// a token cut short reaches the checksum and is reported as such.
const TOKEN_BASE64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);
const FLAG_RANGE: u8 = 2;
const FLAG_PORT: u8 = 4;

/// A mesh network's name: 1 to 32 characters of `a-z`, `0-9` and `-`, not
/// starting with `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkName(String);

/// Why a network name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network name {0:?}: use 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct ParseNetworkNameError(String);

impl NetworkName {
    /// Longest name.
    pub const MAX_LEN: usize = 32;

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetworkName {
    type Err = ParseNetworkNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(NetworkName(s.to_string()))
        } else {
            Err(ParseNetworkNameError(s.to_string()))
        }
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkName({:?})", self.0)
    }
}

serde_via_str!(NetworkName);

/// The network's 32-byte shared secret. Its `Debug` form hides it, and it
/// has no `Display`: it leaves the process only inside a token.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkSecret([u8; 32]);

impl NetworkSecret {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// A secret from its bytes, which should come from the OS's random source.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NetworkSecret(bytes)
    }

    /// The secret's bytes, for key derivation.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkSecret(<redacted>)")
    }
}

/// A mesh network token, decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkToken {
    name: NetworkName,
    secret: NetworkSecret,
    bootstrap: Vec<BootstrapAddr>,
    ipv6_prefix: MeshPrefix,
    ipv4_range: Ipv4Range,
    port: u16,
}

/// Why a token was refused. No variant holds the secret or the token's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text does not start with `basalt-mesh-`.
    #[error("not a mesh token: a mesh token starts with \"basalt-mesh-v1:\"")]
    WrongPrefix,
    /// A token of another version (in the text prefix or the binary form).
    #[error("mesh token version {0} is not supported; this basalt reads version 1 (\"basalt-mesh-v1:\") tokens")]
    UnsupportedVersion(String),
    /// The part after the prefix is not base64url.
    #[error("bad base64 in the mesh token at position {position}: {reason}")]
    Base64 {
        /// 1-based character position in the whole token, prefix included.
        position: usize,
        /// What is wrong there.
        reason: String,
    },
    /// Too few bytes to hold even a checksum.
    #[error("mesh token is too short ({0} bytes): it was cut short")]
    TooShort(usize),
    /// The checksum does not match.
    #[error("token checksum mismatch: the token was changed or cut short")]
    Checksum,
    /// A field has a value the format does not allow.
    #[error("mesh token field {field}: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn field(field: &'static str, reason: impl fmt::Display) -> TokenError {
    TokenError::Field {
        field,
        reason: reason.to_string(),
    }
}

impl NetworkToken {
    /// A token with default bootstrap list (none), address plan and port.
    pub fn new(name: NetworkName, secret: NetworkSecret) -> Self {
        let ipv6_prefix = derive_ipv6_prefix(&name, &secret);
        NetworkToken {
            name,
            secret,
            bootstrap: Vec::new(),
            ipv6_prefix,
            ipv4_range: Ipv4Range::DEFAULT,
            port: DEFAULT_PORT,
        }
    }

    /// Set the bootstrap addresses (at most [`MAX_BOOTSTRAP`]; duplicates are dropped).
    pub fn with_bootstrap(mut self, addrs: Vec<BootstrapAddr>) -> Result<Self, TokenError> {
        let mut seen = std::collections::BTreeSet::new();
        let addrs: Vec<BootstrapAddr> = addrs
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();
        if addrs.len() > MAX_BOOTSTRAP {
            return Err(field(
                "bootstrap",
                format!(
                    "{} addresses given; a token holds at most {MAX_BOOTSTRAP}",
                    addrs.len()
                ),
            ));
        }
        self.bootstrap = addrs;
        Ok(self)
    }

    /// Set the mesh IPv6 prefix instead of the derived one.
    pub fn with_ipv6_prefix(mut self, prefix: MeshPrefix) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// Set the mesh IPv4 range instead of `10.77.0.0/16`.
    pub fn with_ipv4_range(mut self, range: Ipv4Range) -> Self {
        self.ipv4_range = range;
        self
    }

    /// Set the mesh port (1 to 65535): gossip and beacons use it, WireGuard the next one.
    pub fn with_port(mut self, port: u16) -> Result<Self, TokenError> {
        if port == 0 {
            return Err(field("port", "0 is not a port WireGuard can listen on"));
        }
        self.port = port;
        Ok(self)
    }

    /// The binary format version.
    pub fn version(&self) -> u8 {
        TOKEN_VERSION
    }

    /// The network's name.
    pub fn name(&self) -> &NetworkName {
        &self.name
    }

    /// The shared secret.
    pub fn secret(&self) -> &NetworkSecret {
        &self.secret
    }

    /// Where new nodes look for members first.
    pub fn bootstrap(&self) -> &[BootstrapAddr] {
        &self.bootstrap
    }

    /// The mesh's IPv6 /48.
    pub fn ipv6_prefix(&self) -> MeshPrefix {
        self.ipv6_prefix
    }

    /// Whether the IPv6 prefix is the one derived from name and secret.
    pub fn ipv6_prefix_is_derived(&self) -> bool {
        self.ipv6_prefix == derive_ipv6_prefix(&self.name, &self.secret)
    }

    /// The mesh's IPv4 range.
    pub fn ipv4_range(&self) -> Ipv4Range {
        self.ipv4_range
    }

    /// The mesh port: gossip and beacons use it, WireGuard the next one.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The keys derived from the secret.
    pub fn keys(&self) -> MeshKeys {
        derive_keys(&self.name, &self.secret)
    }

    /// The binary form, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut flags = 0;
        if !self.ipv6_prefix_is_derived() {
            flags |= FLAG_PREFIX;
        }
        if self.ipv4_range != Ipv4Range::DEFAULT {
            flags |= FLAG_RANGE;
        }
        if self.port != DEFAULT_PORT {
            flags |= FLAG_PORT;
        }
        let mut b = vec![TOKEN_VERSION, flags, self.name.0.len() as u8];
        b.extend_from_slice(self.name.0.as_bytes());
        b.extend_from_slice(&self.secret.0);
        if flags & FLAG_PREFIX != 0 {
            b.extend_from_slice(self.ipv6_prefix.as_bytes());
        }
        if flags & FLAG_RANGE != 0 {
            b.extend_from_slice(&self.ipv4_range.network().octets());
            b.push(self.ipv4_range.prefix_len());
        }
        if flags & FLAG_PORT != 0 {
            b.extend_from_slice(&self.port.to_be_bytes());
        }
        b.push(self.bootstrap.len() as u8);
        for a in &self.bootstrap {
            match a.host() {
                BootstrapHost::Ip(IpAddr::V4(ip)) => {
                    b.push(4);
                    b.extend_from_slice(&ip.octets());
                }
                BootstrapHost::Ip(IpAddr::V6(ip)) => {
                    b.push(6);
                    b.extend_from_slice(&ip.octets());
                }
                BootstrapHost::Dns(name) => {
                    b.push(0);
                    b.push(name.len() as u8);
                    b.extend_from_slice(name.as_bytes());
                }
            }
            b.extend_from_slice(&a.port().to_be_bytes());
        }
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Read the binary form: checksum first, then version, then fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() <= CHECKSUM_LEN {
            return Err(TokenError::TooShort(bytes.len()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(body) != sum {
            return Err(TokenError::Checksum);
        }
        let mut r = Reader(body);
        let version = r.u8("version")?;
        if version != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(version.to_string()));
        }
        let flags = r.u8("flags")?;
        if flags & !(FLAG_PREFIX | FLAG_RANGE | FLAG_PORT) != 0 {
            return Err(field("flags", format!("unknown flag bits in {flags:#04x}")));
        }
        let len = usize::from(r.u8("network")?);
        let name = std::str::from_utf8(r.take("network", len)?)
            .map_err(|_| field("network", "the name is not ASCII"))?;
        let name: NetworkName = name.parse().map_err(|e| field("network", e))?;
        let secret = NetworkSecret(r.array("secret")?);
        let mut token = NetworkToken::new(name, secret);
        if flags & FLAG_PREFIX != 0 {
            let p = MeshPrefix::from_bytes(r.array("ipv6_prefix")?)
                .map_err(|e| field("ipv6_prefix", e))?;
            token = token.with_ipv6_prefix(p);
        }
        if flags & FLAG_RANGE != 0 {
            let net = Ipv4Addr::from(r.array::<4>("ipv4_range")?);
            let len = r.u8("ipv4_range")?;
            let range = Ipv4Range::new(net, len).map_err(|e| field("ipv4_range", e))?;
            token = token.with_ipv4_range(range);
        }
        if flags & FLAG_PORT != 0 {
            token = token.with_port(u16::from_be_bytes(r.array("port")?))?;
        }
        let count = usize::from(r.u8("bootstrap")?);
        if count > MAX_BOOTSTRAP {
            return Err(field(
                "bootstrap",
                format!("{count} addresses; a token holds at most {MAX_BOOTSTRAP}"),
            ));
        }
        let mut bootstrap = Vec::with_capacity(count);
        for _ in 0..count {
            let host = match r.u8("bootstrap")? {
                4 => BootstrapHost::Ip(IpAddr::V4(Ipv4Addr::from(r.array::<4>("bootstrap")?))),
                6 => BootstrapHost::Ip(IpAddr::V6(Ipv6Addr::from(r.array::<16>("bootstrap")?))),
                0 => {
                    let len = usize::from(r.u8("bootstrap")?);
                    if len > MAX_DNS_NAME {
                        return Err(field("bootstrap", format!("a DNS name of {len} bytes")));
                    }
                    let name = std::str::from_utf8(r.take("bootstrap", len)?)
                        .map_err(|_| field("bootstrap", "a DNS name that is not ASCII"))?;
                    BootstrapHost::Dns(name.to_string())
                }
                kind => return Err(field("bootstrap", format!("unknown address kind {kind}"))),
            };
            let port = u16::from_be_bytes(r.array("bootstrap")?);
            bootstrap.push(BootstrapAddr::new(host, port).map_err(|e| field("bootstrap", e))?);
        }
        if !r.0.is_empty() {
            return Err(field(
                "checksum",
                format!("{} unexpected bytes before the checksum", r.0.len()),
            ));
        }
        token.with_bootstrap(bootstrap)
    }
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Sha256::new();
    h.update(CHECKSUM_DOMAIN);
    h.update(body);
    let d = h.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d[..CHECKSUM_LEN]);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, name: &'static str, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(field(name, "the token ends inside this field"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, name: &'static str) -> Result<u8, TokenError> {
        Ok(self.take(name, 1)?[0])
    }
    fn array<const N: usize>(&mut self, name: &'static str) -> Result<[u8; N], TokenError> {
        Ok(self.take(name, N)?.try_into().expect("took N bytes"))
    }
}

impl fmt::Display for NetworkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes())
        )
    }
}

impl FromStr for NetworkToken {
    type Err = TokenError;
    /// Leading and trailing white space (a pasted newline) is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lead = s.len() - s.trim_start().len();
        let s = s.trim();
        let Some(body) = s.strip_prefix(TOKEN_PREFIX) else {
            if let Some(rest) = s.strip_prefix("basalt-mesh-v") {
                let v: String = rest.chars().take_while(|c| *c != ':').take(8).collect();
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) && rest.len() > v.len() {
                    return Err(TokenError::UnsupportedVersion(v));
                }
            }
            return Err(TokenError::WrongPrefix);
        };
        let at = |offset: usize| lead + TOKEN_PREFIX.len() + offset + 1;
        let bytes = TOKEN_BASE64.decode(body).map_err(|e| {
            use base64::DecodeError as E;
            match e {
                E::InvalidByte(off, b'=') => TokenError::Base64 {
                    position: at(off),
                    reason: "'=' padding is not used in mesh tokens".to_string(),
                },
                E::InvalidByte(off, b) => TokenError::Base64 {
                    position: at(off),
                    reason: format!("{:?} is not a base64url character", char::from(b)),
                },
                E::InvalidLength(len) => TokenError::Base64 {
                    position: at(len.saturating_sub(1)),
                    reason: "the token has a length base64 cannot have: it was cut short or has extra characters".to_string(),
                },
                E::InvalidLastSymbol(off, b) => TokenError::Base64 {
                    position: at(off),
                    reason: format!("{:?} cannot be the last character: the token was changed or cut short", char::from(b)),
                },
                E::InvalidPadding => TokenError::Base64 {
                    position: at(body.len().saturating_sub(1)),
                    reason: "'=' padding is not used in mesh tokens".to_string(),
                },
            }
        })?;
        NetworkToken::from_bytes(&bytes)
    }
}

serde_via_str!(NetworkToken);

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> NetworkToken {
        NetworkToken::new(
            "lab".parse().unwrap(),
            NetworkSecret::from_bytes([0x42; 32]),
        )
    }

    fn full() -> NetworkToken {
        token()
            .with_bootstrap(vec![
                "192.0.2.1:51820".parse().unwrap(),
                "[2001:db8::1]:4000".parse().unwrap(),
                "seed.example.com:51820".parse().unwrap(),
            ])
            .unwrap()
            .with_ipv4_range("192.168.40.0/22".parse().unwrap())
            .with_ipv6_prefix("fd00:1:2::/48".parse().unwrap())
            .with_port(4242)
            .unwrap()
    }

    #[test]
    fn round_trips() {
        for t in [token(), full()] {
            let text = t.to_string();
            assert!(text.starts_with(TOKEN_PREFIX), "{text}");
            let back: NetworkToken = text.parse().unwrap();
            assert_eq!(back, t);
            assert_eq!(back.to_string(), text);
            assert_eq!(format!("  {text}\n").parse::<NetworkToken>().unwrap(), t);
        }
    }

    #[test]
    fn defaults() {
        let t = token();
        assert_eq!(t.port(), 51820);
        assert_eq!(t.ipv4_range().to_string(), "10.77.0.0/16");
        assert!(t.ipv6_prefix_is_derived());
        assert!(t.bootstrap().is_empty());
        // 3 + name + secret + bootstrap count + checksum
        assert_eq!(t.to_bytes().len(), 3 + 3 + 32 + 1 + 4);
        // Pinned: the text of a token must not change between releases.
        assert_eq!(
            t.to_string(),
            "basalt-mesh-v1:AQADbGFiQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkIA-ryGOA"
        );
    }

    #[test]
    fn explicit_default_values_encode_as_defaults() {
        let t = token()
            .with_port(DEFAULT_PORT)
            .unwrap()
            .with_ipv4_range(Ipv4Range::DEFAULT);
        assert_eq!(t.to_bytes(), token().to_bytes());
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", full());
        assert!(shown.contains("NetworkSecret(<redacted>)"), "{shown}");
        assert!(!shown.contains("66, 66"), "{shown}");
        assert!(!shown.to_lowercase().contains("4242424242"), "{shown}");
    }

    #[test]
    fn rejects_bad_text() {
        let good = full().to_string();
        let body = &good[TOKEN_PREFIX.len()..];
        let mut flipped = good.clone().into_bytes();
        let i = TOKEN_PREFIX.len() + 10;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let cut = &good[..good.len() - 4];
        let bang = format!("{TOKEN_PREFIX}{}!{}", &body[..5], &body[6..]);
        for (bad, want) in [
            ("", "not a mesh token"),
            ("hello", "not a mesh token"),
            (body, "not a mesh token"),
            (
                &format!("basalt-mesh-v2:{body}"),
                "version 2 is not supported",
            ),
            (&format!("{TOKEN_PREFIX}{body}="), "'=' padding"),
            (&bang, "position 21: '!' is not a base64url character"),
            (
                &flipped,
                "token checksum mismatch: the token was changed or cut short",
            ),
            (cut, "token checksum mismatch"),
            (&format!("{TOKEN_PREFIX}AAAA"), "too short (3 bytes)"),
            (&format!("{TOKEN_PREFIX}A"), "bad base64"),
        ] {
            let e = bad.parse::<NetworkToken>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: got {e:?}, want {want:?}");
        }
    }

    fn sealed(mut body: Vec<u8>) -> String {
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
    }

    #[test]
    fn rejects_bad_fields_behind_a_good_checksum() {
        let head = |version: u8, flags: u8, name: &[u8]| {
            let mut b = vec![version, flags, name.len() as u8];
            b.extend_from_slice(name);
            b.extend_from_slice(&[9; 32]);
            b
        };
        let with = |mut b: Vec<u8>, more: &[u8]| {
            b.extend_from_slice(more);
            b
        };
        for (body, want) in [
            (with(head(2, 0, b"lab"), &[0]), "version 2 is not supported"),
            (
                with(head(1, 8, b"lab"), &[0]),
                "field flags: unknown flag bits in 0x08",
            ),
            (
                with(head(1, 0, b"Lab"), &[0]),
                "field network: invalid network name \"Lab\"",
            ),
            (with(head(1, 0, b""), &[0]), "field network"),
            (
                head(1, 0, b"lab"),
                "field bootstrap: the token ends inside this field",
            ),
            (
                with(head(1, 0, b"lab"), &[0, 7]),
                "field checksum: 1 unexpected bytes",
            ),
            (
                with(head(1, FLAG_PREFIX, b"lab"), &[0xfc, 0, 0, 0, 0, 0, 0]),
                "field ipv6_prefix",
            ),
            (
                with(head(1, FLAG_RANGE, b"lab"), &[8, 8, 8, 0, 24, 0]),
                "field ipv4_range: invalid mesh IPv4 range \"8.8.8.0/24\"",
            ),
            (
                with(head(1, FLAG_PORT, b"lab"), &[0, 0, 0]),
                "field port: 0 is not a port",
            ),
            (
                with(head(1, 0, b"lab"), &[17]),
                "field bootstrap: 17 addresses",
            ),
            (
                with(head(1, 0, b"lab"), &[1, 9, 1, 2, 3, 4, 0, 1]),
                "field bootstrap: unknown address kind 9",
            ),
            (
                with(head(1, 0, b"lab"), &[1, 4, 1, 2, 3, 4, 0, 0]),
                "field bootstrap: invalid bootstrap address \"1.2.3.4:0\"",
            ),
            (
                with(head(1, 0, b"lab"), &[1, 0, 3, b'a', b'_', b'b', 0, 1]),
                "field bootstrap: invalid bootstrap address \"a_b\"",
            ),
        ] {
            let e = sealed(body)
                .parse::<NetworkToken>()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn limits() {
        let many: Vec<BootstrapAddr> = (1..=17)
            .map(|p| format!("192.0.2.1:{p}").parse().unwrap())
            .collect();
        let e = token().with_bootstrap(many).unwrap_err().to_string();
        assert!(e.contains("17 addresses given"), "{e}");
        let dup: Vec<BootstrapAddr> = (0..20).map(|_| "192.0.2.1:1".parse().unwrap()).collect();
        assert_eq!(token().with_bootstrap(dup).unwrap().bootstrap().len(), 1);
        assert!(token().with_port(0).is_err());
        let long_dns = format!("{}.example:1", vec!["a".repeat(63); 3].join("."));
        let t = token()
            .with_bootstrap(vec![long_dns.parse().unwrap()])
            .unwrap();
        assert_eq!(t.to_string().parse::<NetworkToken>().unwrap(), t);
    }

    #[test]
    fn network_names() {
        for ok in ["a", "lab", "0", "edge-fleet-7", "a-", &"x".repeat(32)] {
            assert_eq!(ok.parse::<NetworkName>().unwrap().as_str(), ok);
        }
        for bad in ["", "-lab", "Lab", "la b", "lab.x", "läb", &"x".repeat(33)] {
            let e = bad.parse::<NetworkName>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn serde_as_text() {
        let t = full();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{t}\""));
        assert_eq!(serde_json::from_str::<NetworkToken>(&json).unwrap(), t);
        let e = serde_json::from_str::<NetworkToken>("\"basalt-mesh-v1:AAAAAAAA\"").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
