//! Checked values of a cloud-config: host names, user names, keys, paths, URLs.
//!
//! Each is a newtype built by [`FromStr`]; the error is the reason the text
//! was refused, written to follow the field path in a [`CloudConfigError`].
//!
//! [`CloudConfigError`]: super::CloudConfigError

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a value was refused: one sentence, without the field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

fn refuse<T>(reason: String) -> Result<T, ValueError> {
    Err(ValueError(reason))
}

/// Declares a checked string newtype: `as_str`, `Display`, `Serialize` as the
/// string, and `FromStr` through the given check.
macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The value as written (and checked).
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                $check(s)?;
                Ok($name(s.to_string()))
            }
        }
    };
}

string_value!(
    /// A host name by RFC 1123: dot-separated labels of letters, digits and
    /// `-` (not at either end of a label), each at most 63 characters, at
    /// most 253 in all.
    Hostname,
    check_hostname
);

fn check_hostname(s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return refuse("a host name must not be empty".into());
    }
    if s.len() > 253 {
        return refuse(format!(
            "{s:?} is {} characters long; a host name has at most 253",
            s.len()
        ));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return refuse(format!(
                "{s:?} has an empty label (two dots in a row, or a dot at either end)"
            ));
        }
        if label.len() > 63 {
            return refuse(format!(
                "{s:?}: the label {label:?} is {} characters long; a label has at most 63",
                label.len()
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return refuse(format!(
                "{s:?} is not a host name: labels hold only letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse(format!(
                "{s:?} is not a host name: the label {label:?} starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

string_value!(
    /// A Linux user or group name: a lower-case letter or `_`, then up to 31
    /// lower-case letters, digits, `_` or `-` (the shadow-utils default rule).
    UserName,
    check_user_name
);

fn check_user_name(s: &str) -> Result<(), ValueError> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok
        || s.len() > 32
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return refuse(format!(
            "{s:?} is not a valid Linux user name: 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'"
        ));
    }
    Ok(())
}

/// The kinds of SSH public key a basalt device accepts.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// An SSH public key as in `authorized_keys`: `<type> <base64> [comment]`.
///
/// The base64 must decode to an SSH wire-format key blob whose embedded
/// type equals the written type, so a truncated or pasted-wrong key is
/// refused here rather than silently ignored by sshd.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshPublicKey {
    /// The key type, one of [`SSH_KEY_TYPES`].
    pub key_type: String,
    /// The base64 key blob as written.
    pub blob: String,
    /// The free-text comment, when there is one.
    pub comment: Option<String>,
}

impl SshPublicKey {
    /// Type and blob only: two keys that differ only in comment are the same key.
    pub fn identity(&self) -> (&str, &str) {
        (&self.key_type, &self.blob)
    }
}

impl fmt::Display for SshPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key_type, self.blob)?;
        if let Some(c) = &self.comment {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

impl Serialize for SshPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for SshPublicKey {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.contains(['\n', '\r', '\0']) {
            return refuse("an SSH key must be one line".into());
        }
        let mut parts = s.trim().splitn(3, [' ', '\t']);
        let key_type = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default().trim();
        let comment = parts
            .next()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if !SSH_KEY_TYPES.contains(&key_type) {
            let shown: String = key_type.chars().take(40).collect();
            return refuse(format!(
                "{shown:?} is not a known SSH key type; write \"<type> <base64> [comment]\" with a type of {}",
                SSH_KEY_TYPES.join(", ")
            ));
        }
        if blob.is_empty() {
            return refuse(format!("the {key_type} key has no base64 key data"));
        }
        let bytes = STANDARD
            .decode(blob)
            .map_err(|e| ValueError(format!("the {key_type} key data is not base64: {e}")))?;
        let malformed = || ValueError(format!("the {key_type} key data is truncated or malformed"));
        let fields = ssh_wire_strings(&bytes).ok_or_else(malformed)?;
        let embedded = fields.first().copied().unwrap_or_default();
        if embedded != key_type.as_bytes() {
            let embedded: String = String::from_utf8_lossy(embedded).chars().take(40).collect();
            return refuse(format!(
                "the key data holds a {embedded:?} key, not {key_type}"
            ));
        }
        let expected = match key_type {
            "ssh-ed25519" | "ssh-rsa" => 2 + usize::from(key_type == "ssh-rsa"),
            "sk-ecdsa-sha2-nistp256@openssh.com" => 4,
            _ => 3,
        };
        let ed25519_len_ok =
            !key_type.contains("ed25519") || fields.get(1).is_some_and(|k| k.len() == 32);
        if fields.len() != expected || !ed25519_len_ok {
            return Err(malformed());
        }
        Ok(SshPublicKey {
            key_type: key_type.to_string(),
            blob: blob.to_string(),
            comment,
        })
    }
}

/// Splits an SSH wire-format blob into its length-prefixed strings; `None`
/// unless they use up the blob exactly.
fn ssh_wire_strings(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let end = 4usize.checked_add(len)?;
        out.push(bytes.get(4..end)?);
        bytes = &bytes[end..];
    }
    Some(out)
}

/// The crypt(5) hash methods a `$id$` password hash may name.
pub const CRYPT_METHODS: &[&str] = &[
    "y", "gy", "7", "2b", "2a", "2x", "2y", "6", "5", "sha1", "md5", "1", "3",
];

string_value!(
    /// A password for `/etc/shadow`: a crypt(5) hash (`$6$salt$hash`,
    /// `$y$params$salt$hash`, …), or `!` / `*` for no password. Plain-text
    /// passwords are refused.
    PasswordHash,
    check_password_hash
);

fn check_password_hash(s: &str) -> Result<(), ValueError> {
    if s == "!" || s == "*" {
        return Ok(());
    }
    let reason = || {
        ValueError(
            "not a crypt(5) hash such as \"$6$salt$hash\" or \"$y$j9T$salt$hash\" (make one with `mkpasswd`), nor \"!\" or \"*\"; plain-text passwords are not accepted".into(),
        )
    };
    let rest = s.strip_prefix('$').ok_or_else(reason)?;
    let mut fields = rest.split('$');
    let method = fields.next().unwrap_or_default();
    let fields: Vec<&str> = fields.collect();
    if !CRYPT_METHODS.contains(&method)
        || fields.is_empty()
        || fields.last().is_some_and(|f| f.is_empty())
        || !s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '$' | '.' | '/' | '=' | ',' | '+' | '-')
        })
    {
        return Err(reason());
    }
    Ok(())
}

string_value!(
    /// An IANA time zone name such as `Europe/Berlin`, `America/Argentina/Salta`,
    /// `Etc/GMT+5` or `UTC`: `/`-separated parts of letters, digits, `_`, `-`
    /// and `+`, each starting with a letter.
    Timezone,
    check_timezone
);

fn check_timezone(s: &str) -> Result<(), ValueError> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        });
    if !ok {
        return refuse(format!(
            "{s:?} is not an IANA time zone name such as \"Europe/Berlin\" or \"UTC\""
        ));
    }
    Ok(())
}

string_value!(
    /// An `http://` or `https://` URL with a host, and no spaces or control characters.
    HttpUrl,
    check_http_url
);

fn check_http_url(s: &str) -> Result<(), ValueError> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| ValueError(format!("{s:?} is not an http:// or https:// URL")))?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse(format!("{s:?} contains spaces or control characters"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| ValueError(format!("{s:?} has an unclosed [IPv6] host")))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return refuse(format!("{s:?}: [{addr}] is not an IPv6 address"));
        }
        check_port(s, after.strip_prefix(':'))?;
        return Ok(());
    } else {
        match host_port.split_once(':') {
            Some((h, port)) => {
                check_port(s, Some(port))?;
                h
            }
            None => host_port,
        }
    };
    if host.is_empty() {
        return refuse(format!("{s:?} has no host"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        check_hostname(host).map_err(|e| ValueError(format!("{s:?}: {e}")))?;
    }
    Ok(())
}

fn check_port(url: &str, port: Option<&str>) -> Result<(), ValueError> {
    match port {
        None => Ok(()),
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        Some(p) => refuse(format!("{url:?}: {p:?} is not a port number")),
    }
}

/// An Ed25519 public key: 32 bytes, written as 64 hex digits or as base64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ed25519PublicKey(pub [u8; 32]);

impl fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519PublicKey({self})")
    }
}

impl fmt::Display for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Ed25519PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Ed25519PublicKey {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        // `basalt keygen` prints keys as `basalt-ed25519:<base64>`.
        let s = s.strip_prefix("basalt-ed25519:").unwrap_or(s);
        let bytes = if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(s).map_err(|e| ValueError(e.to_string()))?
        } else {
            let unpadded = s.trim_end_matches('=');
            STANDARD_NO_PAD.decode(unpadded).map_err(|_| {
                ValueError(format!(
                    "{s:?} is not an Ed25519 public key: write 64 hex digits or the base64 of 32 bytes"
                ))
            })?
        };
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            ValueError(format!(
                "{s:?} is not an Ed25519 public key: write 64 hex digits or the base64 of 32 bytes (this decodes to {} bytes)",
                bytes.len()
            ))
        })?;
        Ok(Ed25519PublicKey(key))
    }
}

string_value!(
    /// A model name: `[a-z0-9][a-z0-9._-]{0,63}`. It names the model in the
    /// inference API (`/v2/models/{name}`) and its directory on the data partition.
    ModelName,
    check_model_name
);

fn check_model_name(s: &str) -> Result<(), ValueError> {
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return refuse(format!(
            "{s:?} is not a model name: 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

string_value!(
    /// A node alias in the mesh, also used as a name for health checks: one
    /// DNS label, `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
    Alias,
    check_alias
);

fn check_alias(s: &str) -> Result<(), ValueError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return refuse(format!(
            "{s:?} is not a valid name: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

string_value!(
    /// A mesh network token (`basalt-mesh-v1:…`, made by `basalt mesh token`).
    MeshToken,
    check_mesh_token
);

fn check_mesh_token(s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return refuse("the token is empty".into());
    }
    // The whole token is checked here (prefix, encoding, checksum, fields),
    // so `basalt config validate` catches a mistyped or cut token.
    match s.parse::<crate::mesh::NetworkToken>() {
        Ok(_) => Ok(()),
        Err(e) => refuse(e.to_string()),
    }
}

string_value!(
    /// A path that `write_files` may write: absolute, without `.`/`..` or
    /// empty parts, and below one of [`WRITABLE_PLACES`].
    WritePath,
    check_write_path
);

/// Where a basalt device can write files; everything else is the read-only root.
pub const WRITABLE_PLACES: &[&str] = &["/etc/", "/var/", "/home/", "/root/", "/data/"];

fn check_write_path(s: &str) -> Result<(), ValueError> {
    if !s.starts_with('/') {
        return refuse(format!("{s:?} is not an absolute path"));
    }
    if s.contains('\0') || s.len() > 4095 {
        return refuse(format!("{s:?} is not a usable path"));
    }
    let parts: Vec<&str> = s[1..].split('/').collect();
    if parts.contains(&"..") || parts.contains(&".") {
        return refuse(format!("{s:?} contains a '.' or '..' part"));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return refuse(format!(
            "{s:?} has an empty part ('//' or a trailing '/'); name a file"
        ));
    }
    if !WRITABLE_PLACES.iter().any(|p| s.starts_with(p)) {
        return refuse(format!(
            "{s:?} is on the read-only root file system; files can be written only below {}",
            WRITABLE_PLACES.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGkL6oMYeLYUqSxEDbBVWvqeZsHdxX9v2k3m8Ar4CGe/ alice@laptop";

    fn ok<T: FromStr<Err = ValueError>>(s: &str) -> T {
        s.parse::<T>()
            .unwrap_or_else(|e| panic!("{s:?} should be accepted: {e}"))
    }

    fn bad<T: FromStr<Err = ValueError> + fmt::Debug>(s: &str) -> String {
        s.parse::<T>()
            .map(|v| panic!("{s:?} should be refused, got {v:?}"))
            .unwrap_err()
            .0
    }

    #[test]
    fn host_names() {
        ok::<Hostname>("node-1");
        ok::<Hostname>("node-1.fleet.example.com");
        ok::<Hostname>(&format!("{}.b", "a".repeat(63)));
        assert!(bad::<Hostname>("").contains("empty"));
        assert!(bad::<Hostname>("-node").contains("starts or ends with '-'"));
        assert!(bad::<Hostname>("node_1").contains("only letters, digits and '-'"));
        assert!(bad::<Hostname>("a..b").contains("empty label"));
        assert!(bad::<Hostname>(&"a".repeat(64)).contains("at most 63"));
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(bad::<Hostname>(&long).contains("at most 253"));
    }

    #[test]
    fn user_names() {
        ok::<UserName>("alice");
        ok::<UserName>("_svc-2");
        assert!(bad::<UserName>("Alice").contains("not a valid Linux user name"));
        bad::<UserName>("1abc");
        bad::<UserName>("");
        bad::<UserName>(&"a".repeat(33));
        bad::<UserName>("a b");
    }

    #[test]
    fn ssh_keys() {
        let k: SshPublicKey = ok(ED25519);
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.comment.as_deref(), Some("alice@laptop"));
        assert_eq!(k.to_string(), ED25519);
        let no_comment: SshPublicKey = ok(ED25519.rsplit_once(' ').unwrap().0);
        assert_eq!(no_comment.identity(), k.identity());
        assert!(bad::<SshPublicKey>("ssh-dss AAAA").contains("not a known SSH key type"));
        assert!(bad::<SshPublicKey>("ssh-ed25519").contains("no base64"));
        assert!(bad::<SshPublicKey>("ssh-ed25519 not*base64").contains("not base64"));
        // An ed25519 blob labelled as RSA.
        let relabelled = ED25519.replace("ssh-ed25519", "ssh-rsa");
        assert!(
            bad::<SshPublicKey>(&relabelled).contains("holds a \"ssh-ed25519\" key, not ssh-rsa")
        );
        assert!(bad::<SshPublicKey>(&format!("{ED25519}\nssh-rsa x")).contains("one line"));
        let truncated = &ED25519[..ED25519.find(" alice").unwrap() - 8];
        assert!(bad::<SshPublicKey>(truncated).contains("truncated or malformed"));
    }

    #[test]
    fn password_hashes() {
        ok::<PasswordHash>("!");
        ok::<PasswordHash>("*");
        ok::<PasswordHash>("$6$rounds=5000$saltsalt$3nGmF0bq3y0mN5Yp0F4xDk9zGvQm7q0l4r0.TqUeZ7Kq/d2uLsS9p1XQk2w2bQ6Qm1aG8m9xJ1n3bS6c4O0Y/");
        ok::<PasswordHash>(
            "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
        );
        ok::<PasswordHash>("$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy");
        let e = bad::<PasswordHash>("hunter2");
        assert!(e.contains("plain-text passwords are not accepted"), "{e}");
        bad::<PasswordHash>("$6$");
        bad::<PasswordHash>("$9$salt$hash");
        bad::<PasswordHash>("$6$salt$ha sh");
        bad::<PasswordHash>("!!");
    }

    #[test]
    fn time_zones() {
        ok::<Timezone>("Europe/Berlin");
        ok::<Timezone>("America/Argentina/Buenos_Aires");
        ok::<Timezone>("Etc/GMT+5");
        ok::<Timezone>("UTC");
        assert!(bad::<Timezone>("../etc/passwd").contains("not an IANA time zone"));
        bad::<Timezone>("Europe//Berlin");
        bad::<Timezone>("/Europe/Berlin");
        bad::<Timezone>("Europe/Berlin/");
        bad::<Timezone>("Europe/Ber lin");
        bad::<Timezone>("");
    }

    #[test]
    fn urls() {
        ok::<HttpUrl>("https://updates.example.com/stable");
        ok::<HttpUrl>("http://10.0.0.1:8080/x?y=1");
        ok::<HttpUrl>("http://[fd00::1]:80/");
        ok::<HttpUrl>("https://user@host.example");
        assert!(bad::<HttpUrl>("ftp://x.example").contains("not an http:// or https:// URL"));
        assert!(bad::<HttpUrl>("https:///path").contains("no host"));
        assert!(bad::<HttpUrl>("https://a b").contains("spaces"));
        assert!(bad::<HttpUrl>("https://host:99999/").contains("not a port"));
        bad::<HttpUrl>("https://[nope]/");
        bad::<HttpUrl>("https://bad_host/");
    }

    #[test]
    fn ed25519_keys() {
        let hex_key = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
        let k: Ed25519PublicKey = ok(hex_key);
        assert_eq!(k.to_string(), hex_key);
        let b64 = STANDARD.encode(k.0);
        assert_eq!(ok::<Ed25519PublicKey>(&b64), k);
        assert_eq!(ok::<Ed25519PublicKey>(b64.trim_end_matches('=')), k);
        assert!(bad::<Ed25519PublicKey>(&hex_key[..62]).contains("64 hex digits"));
        assert!(
            bad::<Ed25519PublicKey>(&STANDARD.encode([1u8; 31])).contains("decodes to 31 bytes")
        );
        assert!(bad::<Ed25519PublicKey>("not a key!").contains("64 hex digits"));
    }

    #[test]
    fn names_and_tokens() {
        ok::<ModelName>("resnet50-v1.7_int8");
        ok::<ModelName>(&"m".repeat(64));
        bad::<ModelName>(&"m".repeat(65));
        bad::<ModelName>("-model");
        bad::<ModelName>("Model");
        ok::<Alias>("edge-7");
        bad::<Alias>("edge-");
        bad::<Alias>("edge_7");
        ok::<MeshToken>("basalt-mesh-v1:AQAHZmxlZXQtYd99nAzlMQv9sqax9tOdyaK-gjRkNaMJqDwcmFwwKm8TAQTAAAIKymw6n114");
        assert!(bad::<MeshToken>("").contains("empty"));
        let cut = &"basalt-mesh-v1:AQAHZmxlZXQtYd99nAzlMQv9sqax9tOdyaK-gjRkNaMJqDwcmFwwKm8TAQTAAAIKymw6n114"[..40];
        assert!(
            bad::<MeshToken>(cut).contains("token"),
            "{}",
            bad::<MeshToken>(cut)
        );
        bad::<MeshToken>("abc def");
    }

    #[test]
    fn write_paths() {
        ok::<WritePath>("/etc/basalt/agent.toml");
        ok::<WritePath>("/data/models/x.onnx");
        ok::<WritePath>("/root/.ssh/config");
        let e = bad::<WritePath>("/usr/local/bin/x");
        assert!(
            e.contains("read-only root") && e.contains("/etc/, /var/"),
            "{e}"
        );
        assert!(bad::<WritePath>("etc/x").contains("not an absolute path"));
        assert!(bad::<WritePath>("/etc/../usr/x").contains("'..'"));
        assert!(bad::<WritePath>("/etc/./x").contains("'.'"));
        assert!(bad::<WritePath>("/etc//x").contains("empty part"));
        assert!(bad::<WritePath>("/etc/").contains("empty part"));
        bad::<WritePath>("/etc");
        bad::<WritePath>("/etcetera/x");
    }
}
