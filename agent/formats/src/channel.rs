//! The update channel: a small JSON document per board that says which
//! version is the latest, where its bundle is, which share of the fleet
//! takes it now, and which versions are recalled.
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
//!   "size": 734003200,
//!   "rollout": { "percent": 25 },
//!   "recalled": ["0.1.3"],
//!   "deltas": [
//!     { "from": "0.1.2", "bundle": "appliance-0.2.0-x86_64-uefi.from-0.1.2.basalt", "size": 2097152 }
//!   ]
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
//! | `rollout.percent` | optional, the share of devices that take `version` now: 0–100, at most two decimal places; 100 when `rollout` is absent. Which devices is decided by each device from its node id ([`rollout`]) |
//! | `recalled` | optional, versions (semver) no device installs, and none keeps staged or armed; it must not hold `version` itself |
//! | `deltas` | optional, delta bundles of `version` (`basalt bundle --delta-from`): each `from` (the version it was made from, below `version`, each listed once), `bundle` (resolved like the full one) and optional `size`. A device running `from` takes the delta, and falls back to the full `bundle` by itself when its slot is not the delta's base |
//!
//! Unknown keys are errors. `rollout` and `recalled` are optional, so a
//! document without them reads as it always has and `format` stays 1; an
//! agent older than the two keys refuses a document that has them (unknown
//! field) and stays on its version, which errs on the safe side. Versions are
//! compared by semver precedence, so build metadata is ignored: a recalled
//! `0.3.0` is also `0.3.0+rebuild`.
//!
//! The document is not signed: the bundle is, and the device checks it
//! against its trusted keys before writing a byte, so a forged channel can
//! at worst point at a bundle the device refuses, hold devices back or take
//! a staged update out of the boot menu. It can never make a device go back
//! to an older version: a device never downgrades on its own, recalled or not.

pub mod rollout;

use crate::board::BoardId;
use crate::cloud_config::HttpUrl;
use rollout::Percent;
use serde::{Deserialize, Serialize};

/// The `format` this code reads.
pub const CHANNEL_FORMAT: u32 = 1;

/// The largest channel document a device reads.
pub const MAX_CHANNEL_BYTES: u64 = 64 << 10;

/// The document as written: what `basalt channel` writes and
/// [`Channel::parse`] reads before checking it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFile {
    pub format: u32,
    pub board: BoardId,
    pub version: semver::Version,
    /// As written: a URL or a reference relative to the document.
    pub bundle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutFile>,
    /// As written; each must be a semver version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recalled: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaFile>,
}

/// One of `deltas` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaFile {
    pub from: semver::Version,
    pub bundle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A delta bundle of the channel's version, for devices running `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delta {
    pub from: semver::Version,
    /// Resolved against the document's URL.
    pub bundle: HttpUrl,
    pub size: Option<u64>,
}

/// `rollout` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    /// 0–100, at most two decimal places ([`Percent::from_f64`]).
    pub percent: serde_json::Number,
}

/// A checked channel document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub board: BoardId,
    pub version: semver::Version,
    /// The bundle's URL, resolved against the document's URL.
    pub bundle: HttpUrl,
    pub size: Option<u64>,
    /// The share of devices that take `version` now: [`Percent::ALL`] when
    /// the document has no `rollout`.
    pub rollout: Percent,
    /// Versions no device installs, nor keeps staged or armed. Never holds `version`.
    pub recalled: Vec<semver::Version>,
    /// Delta bundles of `version`, at most one per `from`.
    pub deltas: Vec<Delta>,
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
    /// A key that parses but breaks a rule: `field` is its path in the
    /// document (`bundle`, `rollout.percent`, `recalled[2]`).
    #[error("{url}: {field}: {reason}")]
    Invalid {
        url: String,
        field: String,
        reason: String,
    },
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
        let invalid = |field: String, reason: String| ChannelError::Invalid {
            url: url.to_string(),
            field,
            reason,
        };
        let bundle =
            resolve(url, &file.bundle).map_err(|reason| invalid("bundle".into(), reason))?;
        let rollout = match &file.rollout {
            None => Percent::ALL,
            Some(r) => r
                .percent
                .as_f64()
                .ok_or_else(|| format!("{} is not a number", r.percent))
                .and_then(Percent::from_f64)
                .map_err(|reason| invalid("rollout.percent".into(), reason))?,
        };
        let mut recalled: Vec<semver::Version> = Vec::with_capacity(file.recalled.len());
        for (i, text) in file.recalled.iter().enumerate() {
            let field = format!("recalled[{i}]");
            let v: semver::Version = text.parse().map_err(|e| {
                invalid(
                    field.clone(),
                    format!("{text:?} is not a semantic version: {e}"),
                )
            })?;
            if let Some(j) = recalled.iter().position(|r| r.cmp_precedence(&v).is_eq()) {
                return Err(invalid(
                    field,
                    format!("{v} is listed twice (also recalled[{j}])"),
                ));
            }
            if v.cmp_precedence(&file.version).is_eq() {
                return Err(invalid(
                    field,
                    format!(
                        "{v} is also the document's version: a channel cannot offer a version and recall it; offer another version first"
                    ),
                ));
            }
            recalled.push(v);
        }
        let mut deltas: Vec<Delta> = Vec::with_capacity(file.deltas.len());
        for (i, d) in file.deltas.iter().enumerate() {
            if !d.from.cmp_precedence(&file.version).is_lt() {
                return Err(invalid(
                    format!("deltas[{i}].from"),
                    format!(
                        "{} is not below the document's version {}",
                        d.from, file.version
                    ),
                ));
            }
            if let Some(j) = deltas
                .iter()
                .position(|o| o.from.cmp_precedence(&d.from).is_eq())
            {
                return Err(invalid(
                    format!("deltas[{i}].from"),
                    format!("{} is listed twice (also deltas[{j}])", d.from),
                ));
            }
            let bundle = resolve(url, &d.bundle)
                .map_err(|reason| invalid(format!("deltas[{i}].bundle"), reason))?;
            deltas.push(Delta {
                from: d.from.clone(),
                bundle,
                size: d.size,
            });
        }
        Ok(Channel {
            board: file.board,
            version: file.version,
            bundle,
            size: file.size,
            rollout,
            recalled,
            deltas,
        })
    }

    /// The delta bundle for a device running `running`, if the channel has one.
    pub fn delta_for(&self, running: &semver::Version) -> Option<&Delta> {
        self.deltas
            .iter()
            .find(|d| d.from.cmp_precedence(running).is_eq())
    }

    /// Whether the channel recalls `version` (by semver precedence, so build
    /// metadata is ignored).
    pub fn recalls(&self, version: &semver::Version) -> bool {
        self.recalled
            .iter()
            .any(|r| r.cmp_precedence(version).is_eq())
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
    fn deltas_per_base_version() {
        let c = Channel::parse(
            DOC,
            br#"{"format":1,"board":"x86_64-uefi","version":"0.3.0","bundle":"full.basalt",
                 "deltas":[{"from":"0.2.0","bundle":"d.from-0.2.0.basalt","size":99},
                           {"from":"0.1.0","bundle":"https://cdn.example/d1.basalt"}]}"#,
        )
        .unwrap();
        let d = c.delta_for(&"0.2.0".parse().unwrap()).unwrap();
        assert_eq!(
            d.bundle.as_str(),
            "https://updates.example/stable/d.from-0.2.0.basalt"
        );
        assert_eq!(d.size, Some(99));
        assert_eq!(
            c.delta_for(&"0.1.0".parse().unwrap())
                .unwrap()
                .bundle
                .as_str(),
            "https://cdn.example/d1.basalt"
        );
        assert!(c.delta_for(&"0.2.1".parse().unwrap()).is_none());
        let bad = |deltas: &str, expect: &str| {
            let doc = format!(
                r#"{{"format":1,"board":"x86_64-uefi","version":"0.3.0","bundle":"f.basalt","deltas":{deltas}}}"#
            );
            let e = Channel::parse(DOC, doc.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(expect), "{e}");
        };
        bad(
            r#"[{"from":"0.3.0","bundle":"d"}]"#,
            "deltas[0].from: 0.3.0 is not below the document's version 0.3.0",
        );
        bad(
            r#"[{"from":"0.2.0","bundle":"d"},{"from":"0.2.0","bundle":"e"}]"#,
            "deltas[1].from: 0.2.0 is listed twice (also deltas[0])",
        );
        bad(r#"[{"from":"0.2.0","bundle":""}]"#, "deltas[0].bundle:");
        bad(
            r#"[{"from":"0.2.0","bundle":"d","sha":"x"}]"#,
            "unknown field `sha`",
        );
    }

    #[test]
    fn a_document_without_rollout_or_recalls_is_for_everyone() {
        let c = Channel::parse(
            DOC,
            br#"{"format":1,"board":"x86_64-uefi","version":"0.2.0","bundle":"x.basalt"}"#,
        )
        .unwrap();
        assert_eq!(c.rollout, Percent::ALL);
        assert!(c.recalled.is_empty());
        assert_eq!(c.size, None);
    }

    #[test]
    fn a_document_with_a_rollout_and_recalls() {
        let c = Channel::parse(
            DOC,
            br#"{
              "format": 1,
              "board": "x86_64-uefi",
              "version": "0.4.0",
              "bundle": "x.basalt",
              "rollout": {"percent": 12.5},
              "recalled": ["0.3.0", "0.3.1-rc.1", "0.5.0"]
            }"#,
        )
        .unwrap();
        assert_eq!(c.rollout.hundredths(), 1250);
        assert_eq!(
            c.recalled,
            vec![
                semver::Version::new(0, 3, 0),
                "0.3.1-rc.1".parse().unwrap(),
                semver::Version::new(0, 5, 0)
            ]
        );
        assert!(c.recalls(&"0.3.0".parse().unwrap()));
        // Build metadata does not make another version.
        assert!(c.recalls(&"0.3.0+rebuild".parse().unwrap()));
        assert!(!c.recalls(&"0.3.1".parse().unwrap()));
        assert!(!c.recalls(&c.version));
        for (percent, hundredths) in [("0", 0), ("100", 10_000), ("0.01", 1), ("25", 2500)] {
            let doc = format!(
                r#"{{"format":1,"board":"x86_64-uefi","version":"0.4.0","bundle":"x","rollout":{{"percent":{percent}}}}}"#
            );
            let c = Channel::parse(DOC, doc.as_bytes()).unwrap();
            assert_eq!(c.rollout.hundredths(), hundredths, "{percent}");
        }
    }

    #[test]
    fn what_channel_file_writes_parses_back() {
        let file = ChannelFile {
            format: CHANNEL_FORMAT,
            board: BoardId::Arm64Uefi,
            version: "1.2.0".parse().unwrap(),
            bundle: "../bundles/a-1.2.0.basalt".into(),
            size: Some(99),
            rollout: Some(RolloutFile {
                percent: "33.33".parse::<Percent>().unwrap().to_json(),
            }),
            recalled: vec!["1.1.0".into()],
            deltas: vec![],
        };
        let text = serde_json::to_string(&file).unwrap();
        assert!(text.contains(r#""rollout":{"percent":33.33}"#), "{text}");
        assert_eq!(serde_json::from_str::<ChannelFile>(&text).unwrap(), file);
        let c = Channel::parse("https://u.example/beta/arm64-uefi.json", text.as_bytes()).unwrap();
        assert_eq!(c.rollout.hundredths(), 3333);
        assert_eq!(c.recalled, vec![semver::Version::new(1, 1, 0)]);
        assert_eq!(
            c.bundle.as_str(),
            "https://u.example/bundles/a-1.2.0.basalt"
        );
        // The optional keys are left out when unset.
        let bare = ChannelFile {
            rollout: None,
            recalled: Vec::new(),
            size: None,
            ..file
        };
        let text = serde_json::to_string(&bare).unwrap();
        assert!(
            !text.contains("rollout") && !text.contains("recalled") && !text.contains("size"),
            "{text}"
        );
    }

    #[test]
    fn bad_rollouts_and_recalls_name_the_field() {
        let bad = |extra: &str| {
            let doc = format!(
                r#"{{"format":1,"board":"x86_64-uefi","version":"0.4.0","bundle":"x",{extra}}}"#
            );
            Channel::parse(DOC, doc.as_bytes()).unwrap_err().to_string()
        };
        assert_eq!(
            bad(r#""rollout":{"percent":150}"#),
            format!("{DOC}: rollout.percent: 150 is not between 0 and 100")
        );
        assert_eq!(
            bad(r#""rollout":{"percent":-5}"#),
            format!("{DOC}: rollout.percent: -5 is not between 0 and 100")
        );
        let e = bad(r#""rollout":{"percent":12.345}"#);
        assert!(
            e.starts_with(&format!(
                "{DOC}: rollout.percent: 12.345 has more than two decimal places"
            )),
            "{e}"
        );
        let e = bad(r#""rollout":{"percent":"25"}"#);
        assert!(
            e.starts_with(DOC) && e.contains("invalid type: string"),
            "{e}"
        );
        let e = bad(r#""rollout":{}"#);
        assert!(e.contains("missing field `percent`"), "{e}");
        let e = bad(r#""rollout":{"percent":5,"step":1}"#);
        assert!(e.contains("unknown field `step`"), "{e}");
        let e = bad(r#""rollout":25"#);
        assert!(e.contains("invalid type: integer `25`"), "{e}");
        assert_eq!(
            bad(r#""recalled":["0.3.0","0.3.1","0.3"]"#),
            format!(
                "{DOC}: recalled[2]: \"0.3\" is not a semantic version: unexpected end of input while parsing minor version number"
            )
        );
        assert_eq!(
            bad(r#""recalled":["0.3.0","0.3.1","0.3.0+b2"]"#),
            format!("{DOC}: recalled[2]: 0.3.0+b2 is listed twice (also recalled[0])")
        );
        let e = bad(r#""recalled":["0.3.0","0.4.0"]"#);
        assert!(
            e.starts_with(&format!(
                "{DOC}: recalled[1]: 0.4.0 is also the document's version"
            )),
            "{e}"
        );
        let e = bad(r#""recalled":"0.3.0""#);
        assert!(e.contains("expected a sequence"), "{e}");
        let e = bad(r#""recalled":[3]"#);
        assert!(e.contains("invalid type: integer `3`"), "{e}");
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
