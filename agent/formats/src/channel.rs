//! The update channel: a small JSON document per board that says which
//! version is the latest and where its bundle is.
//!
//! A device whose cloud-config sets `basalt.update.channel` to
//! `https://updates.example/stable` reads
//! `https://updates.example/stable/<board>.json` ([`document_url`]):
//!
//! ```json
//! {
//!   "format": 1,
//!   "board": "x86_64-uefi",
//!   "version": "0.2.0",
//!   "bundle": "appliance-0.2.0-x86_64-uefi.basalt",
//!   "size": 734003200
//! }
//! ```
//!
//! | key | value |
//! | --- | --- |
//! | `format` | required, [`CHANNEL_FORMAT`] |
//! | `board` | required, the board the document is for; must be the device's |
//! | `version` | required, semver of the latest release on the channel |
//! | `bundle` | required, the bundle's URL: absolute `http(s)://`, or relative to the document (`x.basalt`, `../bundles/x.basalt`, `/bundles/x.basalt`) |
//! | `size` | optional, the bundle's size in bytes, for logs and progress |
//!
//! Unknown keys are errors. The document is not signed: the bundle is, and
//! the device checks it against its trusted keys before writing a byte, so a
//! forged channel can at worst point at a bundle the device refuses.

use crate::board::BoardId;
use crate::cloud_config::HttpUrl;
use serde::{Deserialize, Serialize};

/// The `format` this code reads.
pub const CHANNEL_FORMAT: u32 = 1;

/// The largest channel document a device reads.
pub const MAX_CHANNEL_BYTES: u64 = 64 << 10;

/// The document as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFile {
    format: u32,
    board: BoardId,
    version: semver::Version,
    bundle: String,
    #[serde(default)]
    size: Option<u64>,
}

/// A checked channel document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub board: BoardId,
    pub version: semver::Version,
    /// The bundle's URL, resolved against the document's URL.
    pub bundle: HttpUrl,
    pub size: Option<u64>,
}

/// A channel document that cannot be used. Names the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("{url}: line {line}, column {column}: {message}")]
    Json {
        url: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{url}: format {found} is not supported; this basalt reads format {CHANNEL_FORMAT}")]
    Format { url: String, found: u32 },
    #[error("{url}: bundle: {reason}")]
    Bundle { url: String, reason: String },
}

/// `<channel>/<board>.json`.
pub fn document_url(channel: &HttpUrl, board: BoardId) -> String {
    format!("{}/{board}.json", channel.as_str().trim_end_matches('/'))
}

impl Channel {
    /// Reads the document fetched from `url`.
    pub fn parse(url: &str, bytes: &[u8]) -> Result<Channel, ChannelError> {
        let file: ChannelFile = serde_json::from_slice(bytes).map_err(|e| ChannelError::Json {
            url: url.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string().split(" at line ").next().unwrap_or("").into(),
        })?;
        if file.format != CHANNEL_FORMAT {
            return Err(ChannelError::Format {
                url: url.to_string(),
                found: file.format,
            });
        }
        let bundle = resolve(url, &file.bundle).map_err(|reason| ChannelError::Bundle {
            url: url.to_string(),
            reason,
        })?;
        Ok(Channel {
            board: file.board,
            version: file.version,
            bundle,
            size: file.size,
        })
    }
}

/// Resolves a bundle reference against the document's URL (RFC 3986 for the
/// forms the channel allows; `.` and `..` segments are removed).
pub fn resolve(base: &str, reference: &str) -> Result<HttpUrl, String> {
    if reference.is_empty() {
        return Err("must not be empty".into());
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{reference:?} contains spaces or control characters"
        ));
    }
    let absolute = if reference.starts_with("http://") || reference.starts_with("https://") {
        reference.to_string()
    } else if reference.starts_with("//") {
        return Err(format!(
            "{reference:?}: give the scheme (https://…) or a path"
        ));
    } else if reference
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        return Err(format!(
            "{reference:?} is not an http:// or https:// URL or a relative path"
        ));
    } else {
        let (scheme, rest) = base
            .split_once("://")
            .ok_or_else(|| format!("the base {base:?} is not a URL"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let joined = if reference.starts_with('/') {
            reference.to_string()
        } else {
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{reference}")
        };
        format!("{scheme}://{authority}{}", remove_dots(&joined))
    };
    absolute
        .parse()
        .map_err(|e: crate::cloud_config::ValueError| e.0)
}

/// Removes `.` and `..` path segments (a query is left alone).
fn remove_dots(path: &str) -> String {
    let (path, query) = match path.find(['?', '#']) {
        Some(i) => path.split_at(i),
        None => (path, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}{query}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "https://updates.example/stable/x86_64-uefi.json";

    #[test]
    fn document_url_per_board() {
        let c: HttpUrl = "https://updates.example/stable/".parse().unwrap();
        assert_eq!(document_url(&c, BoardId::X86_64Uefi), DOC);
        let c: HttpUrl = "http://10.0.0.1:8080".parse().unwrap();
        assert_eq!(
            document_url(&c, BoardId::Arm64Uefi),
            "http://10.0.0.1:8080/arm64-uefi.json"
        );
    }

    #[test]
    fn a_document_with_a_relative_bundle() {
        let c = Channel::parse(
            DOC,
            br#"{"format":1,"board":"x86_64-uefi","version":"0.2.0","bundle":"appliance-0.2.0.basalt","size":12}"#,
        )
        .unwrap();
        assert_eq!(c.version, semver::Version::new(0, 2, 0));
        assert_eq!(c.board, BoardId::X86_64Uefi);
        assert_eq!(c.size, Some(12));
        assert_eq!(
            c.bundle.as_str(),
            "https://updates.example/stable/appliance-0.2.0.basalt"
        );
    }

    #[test]
    fn bundle_references_resolve_like_a_browser() {
        let r = |s: &str| resolve(DOC, s).map(|u| u.as_str().to_string());
        assert_eq!(
            r("x.basalt").unwrap(),
            "https://updates.example/stable/x.basalt"
        );
        assert_eq!(
            r("./a/x.basalt").unwrap(),
            "https://updates.example/stable/a/x.basalt"
        );
        assert_eq!(
            r("../b/x.basalt").unwrap(),
            "https://updates.example/b/x.basalt"
        );
        assert_eq!(r("../../../x").unwrap(), "https://updates.example/x");
        assert_eq!(
            r("/b/x.basalt?t=1").unwrap(),
            "https://updates.example/b/x.basalt?t=1"
        );
        assert_eq!(
            r("http://cdn.example/x.basalt").unwrap(),
            "http://cdn.example/x.basalt"
        );
        assert_eq!(
            resolve("http://10.0.0.1:8080/c.json?x=1", "x.basalt")
                .unwrap()
                .as_str(),
            "http://10.0.0.1:8080/x.basalt"
        );
        assert!(r("ftp://x/y").unwrap_err().contains("not an http"));
        assert!(r("//cdn.example/x").unwrap_err().contains("scheme"));
        assert!(r("a b").unwrap_err().contains("spaces"));
        assert!(r("").unwrap_err().contains("empty"));
        assert!(r("https://bad_host/x").is_err());
    }

    #[test]
    fn strict_documents() {
        let bad = |s: &str| Channel::parse(DOC, s.as_bytes()).unwrap_err().to_string();
        let e =
            bad(r#"{"format":1,"board":"x86_64-uefi","version":"0.2.0","bundle":"x","sise":1}"#);
        assert!(
            e.starts_with(DOC) && e.contains("unknown field `sise`"),
            "{e}"
        );
        assert!(e.contains("line 1, column"), "{e}");
        let e = bad(r#"{"format":2,"board":"x86_64-uefi","version":"0.2.0","bundle":"x"}"#);
        assert!(e.contains("format 2 is not supported"), "{e}");
        let e = bad(r#"{"format":1,"board":"pdp-11","version":"0.2.0","bundle":"x"}"#);
        assert!(e.contains("unknown variant `pdp-11`"), "{e}");
        let e = bad(r#"{"format":1,"board":"x86_64-uefi","version":"two","bundle":"x"}"#);
        assert!(e.contains("unexpected character"), "{e}");
        let e = bad(r#"{"format":1,"board":"x86_64-uefi","version":"0.2.0"}"#);
        assert!(e.contains("missing field `bundle`"), "{e}");
        let e = bad(r#"{"format":1,"board":"x86_64-uefi","version":"0.2.0","bundle":"file:///x"}"#);
        assert!(e.contains("bundle: \"file:///x\""), "{e}");
        let e = bad("{\n  \"format\": 1,\n  oops\n}");
        assert!(e.contains("line 3, column 3"), "{e}");
    }
}
