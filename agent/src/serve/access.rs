//! Who may call the inference API.
//!
//! - Callers on the node itself (loopback) may do everything.
//! - Mesh peers: a connection from an address inside the mesh's IPv6 prefix
//!   or IPv4 range. WireGuard only lets a peer send from its own mesh
//!   addresses, and a TCP handshake cannot be completed from a forged
//!   source, since the answer is routed through the mesh to the real peer.
//! - Clients on the allow-list (`basalt-agent allow KEY`), anywhere, with a
//!   signed request: the header
//!   `Authorization: Basalt-Ed25519 key=<key>, ts=<unix seconds>, sig=<hex>`
//!   where `sig` is the client's Ed25519 signature over
//!   [`signed_message`]. Requests more than [`MAX_SKEW_S`] from the node's
//!   clock are refused, which bounds replays.
//! - Clients holding a bearer token the node accepts
//!   (`Authorization: Bearer <token>`, see [`super::tokens`]).
//!
//! Everyone else gets 401 (no or malformed credentials) or 403 (valid
//! credentials of a key that is not allowed). `GET /v2/health/live` and
//! `/v2/health/ready` are open to all, for load balancers.

use basalt_formats::cloud_config::Ed25519PublicKey;
use basalt_formats::mesh::{Ipv4Range, MeshPrefix};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::PathBuf;

/// Largest difference between a signed request's time and the node's clock.
pub const MAX_SKEW_S: u64 = 300;
/// The authorization scheme of signed requests.
pub const SCHEME: &str = "Basalt-Ed25519";

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Local,
    Mesh(IpAddr),
    /// An allowed client, by key (64 hex digits).
    Client(String),
    /// A bearer token's holder, by the token's name.
    Token(String),
}

impl Caller {
    /// As written in metering records.
    pub fn label(&self) -> String {
        match self {
            Caller::Local => "local".into(),
            Caller::Mesh(ip) => format!("mesh:{ip}"),
            Caller::Client(k) => format!("client:{k}"),
            Caller::Token(name) => format!("token:{name}"),
        }
    }
}

/// A refusal: the status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub reason: String,
}

fn denied(status: u16, reason: impl Into<String>) -> Denied {
    Denied {
        status,
        reason: reason.into(),
    }
}

/// What is signed: the scheme, method, path (with query), time and the
/// SHA-256 of the body, one per line.
pub fn signed_message(method: &str, path: &str, ts: u64, body: &[u8]) -> String {
    format!(
        "{SCHEME}\n{method}\n{path}\n{ts}\n{}",
        hex::encode(Sha256::digest(body))
    )
}

/// The header value a client sends (used by `basalt-agent infer --key` and tests).
pub fn authorization(
    key: &ed25519_dalek::SigningKey,
    method: &str,
    path: &str,
    ts: u64,
    body: &[u8],
) -> String {
    use ed25519_dalek::Signer;
    let sig = key.sign(signed_message(method, path, ts, body).as_bytes());
    format!(
        "{SCHEME} key={}, ts={ts}, sig={}",
        hex::encode(key.verifying_key().to_bytes()),
        hex::encode(sig.to_bytes())
    )
}

/// The rules, made once when the server starts.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub mesh_v6: Option<MeshPrefix>,
    pub mesh_v4: Option<Ipv4Range>,
    /// Directory of the allow-list and the bearer tokens (read on each
    /// request that needs them, so `basalt-agent allow` and `token` take
    /// effect at once).
    pub clients_dir: PathBuf,
}

impl Access {
    fn is_mesh(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.is_mesh(IpAddr::V4(v4)),
                None => self.mesh_v6.is_some_and(|p| p.contains(&v6)),
            },
            IpAddr::V4(v4) => self.mesh_v4.is_some_and(|r| r.contains(&v4)),
        }
    }

    /// Decides who `peer` is, from its address and the request.
    pub fn check(
        &self,
        peer: IpAddr,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_s: u64,
    ) -> Result<Caller, Denied> {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        if peer.is_loopback() {
            return Ok(Caller::Local);
        }
        if self.is_mesh(peer) {
            return Ok(Caller::Mesh(peer));
        }
        let Some(auth) = authorization else {
            return Err(denied(
                401,
                format!(
                    "{peer} is neither local nor a mesh peer: sign the request ({SCHEME}) or send a bearer token"
                ),
            ));
        };
        if let Some(token) = auth.strip_prefix("Bearer ") {
            return match super::tokens::find(&self.clients_dir, token.trim()) {
                Ok(Some(name)) => Ok(Caller::Token(name)),
                Ok(None) => Err(denied(
                    401,
                    "bearer token not accepted by this node (revoked, or never given to it)",
                )),
                Err(e) => Err(denied(403, format!("token list unreadable: {e}"))),
            };
        }
        let (key, ts, sig) = parse_authorization(auth).map_err(|r| denied(401, r))?;
        if now_s.abs_diff(ts) > MAX_SKEW_S {
            return Err(denied(
                401,
                format!(
                    "request time {ts} is more than {MAX_SKEW_S} s from the node's clock ({now_s})"
                ),
            ));
        }
        let vk = VerifyingKey::from_bytes(&key.0)
            .map_err(|_| denied(401, "key is not an Ed25519 public key"))?;
        vk.verify(signed_message(method, path, ts, body).as_bytes(), &sig)
            .map_err(|_| denied(401, "signature does not verify"))?;
        let key_hex = hex::encode(key.0);
        let allowed = crate::node::clients(&self.clients_dir)
            .map_err(|e| denied(403, format!("allow-list unreadable: {e}")))?;
        if allowed.iter().any(|c| c.key == key_hex) {
            Ok(Caller::Client(key_hex))
        } else {
            Err(denied(
                403,
                format!("key {key_hex} is not on this node's allow-list"),
            ))
        }
    }
}

fn parse_authorization(v: &str) -> Result<(Ed25519PublicKey, u64, Signature), String> {
    let rest = v
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("Authorization: expected the {SCHEME} or Bearer scheme"))?;
    let (mut key, mut ts, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, val) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("Authorization: {part:?} is not key=value"))?;
        match k {
            "key" => {
                key = Some(
                    val.parse::<Ed25519PublicKey>()
                        .map_err(|e| format!("Authorization key: {e}"))?,
                )
            }
            "ts" => {
                ts = Some(
                    val.parse::<u64>()
                        .map_err(|_| format!("Authorization ts: {val:?} is not a Unix time"))?,
                )
            }
            "sig" => {
                let b: [u8; 64] = hex::decode(val)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or("Authorization sig: expected 128 hex digits")?;
                sig = Some(Signature::from_bytes(&b));
            }
            other => return Err(format!("Authorization: unknown parameter {other:?}")),
        }
    }
    match (key, ts, sig) {
        (Some(k), Some(t), Some(s)) => Ok((k, t, s)),
        _ => Err("Authorization: key, ts and sig are all required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const NOW: u64 = 1_764_620_000;

    fn access(dir: &std::path::Path) -> Access {
        Access {
            mesh_v6: Some(MeshPrefix::from_bytes([0xfd, 1, 2, 3, 4, 5]).unwrap()),
            mesh_v4: Some(Ipv4Range::new("10.99.0.0".parse().unwrap(), 16).unwrap()),
            clients_dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn local_and_mesh_callers_need_no_signature() {
        let d = tempfile::tempdir().unwrap();
        let a = access(d.path());
        for (ip, want) in [
            ("127.0.0.1", Caller::Local),
            ("::1", Caller::Local),
            ("::ffff:127.0.0.1", Caller::Local),
            ("10.99.3.4", Caller::Mesh("10.99.3.4".parse().unwrap())),
            (
                "fd01:203:405::9",
                Caller::Mesh("fd01:203:405::9".parse().unwrap()),
            ),
        ] {
            assert_eq!(
                a.check(ip.parse().unwrap(), None, "GET", "/v2", b"", NOW),
                Ok(want),
                "{ip}"
            );
        }
    }

    #[test]
    fn strangers_get_401_and_unknown_keys_403() {
        let d = tempfile::tempdir().unwrap();
        let a = access(d.path());
        let ip: IpAddr = "192.168.1.20".parse().unwrap();
        let e = a.check(ip, None, "GET", "/v2", b"", NOW).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.reason.contains("192.168.1.20"), "{}", e.reason);

        let key = SigningKey::from_bytes(&[9; 32]);
        let body = br#"{"inputs":[]}"#;
        let auth = authorization(&key, "POST", "/v2/models/m/infer", NOW, body);
        let e = a
            .check(ip, Some(&auth), "POST", "/v2/models/m/infer", body, NOW)
            .unwrap_err();
        assert_eq!(e.status, 403, "{}", e.reason);

        crate::node::allow(
            d.path(),
            &hex::encode(key.verifying_key().to_bytes()),
            Some("cam"),
        )
        .unwrap();
        let ok = a
            .check(
                ip,
                Some(&auth),
                "POST",
                "/v2/models/m/infer",
                body,
                NOW + 10,
            )
            .unwrap();
        assert!(matches!(ok, Caller::Client(_)));

        // Another body, path, or a stale time: the signature no longer holds.
        for (path, body2, now, want) in [
            (
                "/v2/models/m/infer",
                &b"{}"[..],
                NOW,
                "signature does not verify",
            ),
            (
                "/v2/models/n/infer",
                &body[..],
                NOW,
                "signature does not verify",
            ),
            (
                "/v2/models/m/infer",
                &body[..],
                NOW + MAX_SKEW_S + 1,
                "from the node's clock",
            ),
        ] {
            let e = a
                .check(ip, Some(&auth), "POST", path, body2, now)
                .unwrap_err();
            assert_eq!(e.status, 401);
            assert!(e.reason.contains(want), "{}", e.reason);
        }
    }

    #[test]
    fn bearer_tokens_name_their_holder_until_revoked() {
        let d = tempfile::tempdir().unwrap();
        let a = access(d.path());
        let ip: IpAddr = "192.168.1.20".parse().unwrap();
        let t = super::super::tokens::create(d.path(), "dashboard", NOW).unwrap();
        let header = format!("Bearer {t}");
        assert_eq!(
            a.check(ip, Some(&header), "POST", "/v2/models/m/infer", b"{}", NOW),
            Ok(Caller::Token("dashboard".into()))
        );
        assert_eq!(Caller::Token("dashboard".into()).label(), "token:dashboard");
        super::super::tokens::revoke(d.path(), "dashboard").unwrap();
        let e = a
            .check(ip, Some(&header), "POST", "/v2/models/m/infer", b"{}", NOW)
            .unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.reason.contains("not accepted"), "{}", e.reason);
    }

    #[test]
    fn malformed_headers_are_401_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        let a = access(d.path());
        let ip: IpAddr = "192.168.1.20".parse().unwrap();
        for (h, want) in [
            ("Basic abc", "expected the Basalt-Ed25519 or Bearer scheme"),
            ("Bearer abc", "bearer token not accepted"),
            ("Basalt-Ed25519 key=zz, ts=1, sig=00", "Authorization key"),
            ("Basalt-Ed25519 ts=1", "all required"),
            ("Basalt-Ed25519 nonsense", "is not key=value"),
        ] {
            let e = a.check(ip, Some(h), "GET", "/", b"", NOW).unwrap_err();
            assert_eq!(e.status, 401);
            assert!(e.reason.contains(want), "{h}: {}", e.reason);
        }
    }
}
