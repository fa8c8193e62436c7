//! Reading the sources that are not plain documents: the kernel command
//! line, NoCloud `meta-data` (with `seedfrom`) and cloud-init's `#include`
//! documents; and the instance id run-once steps use.

use super::value::{Hostname, HttpUrl, ValueError};
use super::{CloudConfig, CloudConfigError};
use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::{alphabet, Engine};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The name kernel command line errors are reported under.
pub const KERNEL_CMDLINE_SOURCE: &str = "kernel command line";

/// The kernel parameter carrying a whole document, base64url-encoded.
pub const CMDLINE_DOCUMENT_PARAM: &str = "basalt.cloud-config";

/// The kernel parameter naming a URL to fetch a document from.
pub const CMDLINE_URL_PARAM: &str = "basalt.cloud-config-url";

/// What the kernel command line says about cloud-config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdlineSource {
    /// The decoded `basalt.cloud-config=` document (to be read with
    /// [`CloudConfig::parse`], so it starts with `#cloud-config` too).
    pub document: Option<String>,
    /// `basalt.cloud-config-url=`: where to fetch a document.
    pub url: Option<HttpUrl>,
}

/// Reads `basalt.cloud-config=<base64url>` and `basalt.cloud-config-url=<URL>`
/// from a kernel command line (`/proc/cmdline`). As with other kernel
/// parameters, the last of a repeated parameter counts. Padding on the
/// base64url is optional.
pub fn parse_kernel_cmdline(cmdline: &str) -> Result<KernelCmdlineSource, CloudConfigError> {
    const BASE64URL: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let err = |field: &str, reason: String| CloudConfigError::Invalid {
        source_name: KERNEL_CMDLINE_SOURCE.to_string(),
        field: field.to_string(),
        reason,
    };
    let mut out = KernelCmdlineSource::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if key == CMDLINE_DOCUMENT_PARAM {
            let bytes = BASE64URL.decode(value).map_err(|e| {
                err(
                    key,
                    format!("not base64url (the alphabet with '-' and '_'): {e}"),
                )
            })?;
            let text = String::from_utf8(bytes).map_err(|e| {
                err(
                    key,
                    format!(
                        "the decoded document is not UTF-8 (at byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })?;
            out.document = Some(text);
        } else if key == CMDLINE_URL_PARAM {
            out.url = Some(value.parse().map_err(|e: ValueError| err(key, e.0))?);
        }
    }
    Ok(out)
}

/// The id of one provisioning of a device: steps that run once per
/// instance (`runcmd`, users, `write_files` without `reapply`) run again
/// when it changes. Letters, digits, `.`, `_` and `-`, so it can name a
/// marker file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl FromStr for InstanceId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(ValueError(format!(
                "{s:?} is not an instance id: 1-128 characters of letters, digits, '.', '_' and '-'"
            )));
        }
        Ok(InstanceId(s.to_string()))
    }
}

/// Most URLs one `#include` document may name.
pub const MAX_INCLUDES: usize = 8;

/// cloud-init's `#include` user-data: instead of a configuration, a list of
/// URLs whose documents take its place, in order. `None` when `text` is not
/// one (it does not start with a line `#include`); otherwise the URLs (one a
/// line; blank lines and `#` comments skipped) or an error naming the line.
pub fn parse_include(
    source_name: &str,
    text: &str,
) -> Option<Result<Vec<HttpUrl>, CloudConfigError>> {
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next()?;
    if first.trim_end() != "#include" {
        return None;
    }
    let invalid = |line: usize, reason: String| CloudConfigError::Invalid {
        source_name: source_name.to_string(),
        field: format!("#include line {line}"),
        reason,
    };
    let mut urls = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<HttpUrl>() {
            Ok(u) => urls.push(u),
            Err(e) => return Some(Err(invalid(i + 1, e.0))),
        }
    }
    if urls.is_empty() {
        return Some(Err(invalid(1, "names no URL".to_string())));
    }
    if urls.len() > MAX_INCLUDES {
        return Some(Err(invalid(
            1,
            format!("names {} URLs; at most {MAX_INCLUDES}", urls.len()),
        )));
    }
    Some(Ok(urls))
}

/// The instance id: NoCloud's `instance-id` when the meta-data has one,
/// else `sha256-` and the SHA-256 of the merged config serialised as JSON.
///
/// The JSON leaves unset keys out, so a device whose config does not change
/// keeps its id across updates that add keys to the format.
pub fn instance_id(meta_data: Option<&NoCloudMetaData>, merged: &CloudConfig) -> InstanceId {
    if let Some(id) = meta_data.and_then(|m| m.instance_id.clone()) {
        return id;
    }
    let json = serde_json::to_vec(merged).expect("a CloudConfig always serialises");
    InstanceId(format!("sha256-{}", hex::encode(Sha256::digest(&json))))
}

/// A NoCloud `meta-data` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoCloudMetaData {
    /// `instance-id`.
    pub instance_id: Option<InstanceId>,
    /// `local-hostname`: the host name unless a cloud-config sets one.
    pub local_hostname: Option<Hostname>,
    /// `seedfrom`: a URL prefix to fetch `user-data` (and nothing else)
    /// from, as cloud-init's NoCloud does: `<seedfrom>user-data`.
    pub seedfrom: Option<HttpUrl>,
    /// Other keys found (cloud-init knows more, such as `network-interfaces`);
    /// basalt does not use them and the agent may log them.
    pub ignored_keys: Vec<String>,
}

impl NoCloudMetaData {
    /// Reads `meta-data`: a YAML mapping, or, when the text is not YAML,
    /// plain `key: value` lines (`#` comments and blank lines skipped).
    pub fn parse(source_name: &str, text: &str) -> Result<NoCloudMetaData, CloudConfigError> {
        let pairs = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            Ok(value) => yaml_pairs(source_name, value)?,
            Err(_) => line_pairs(source_name, text)?,
        };
        let err = |field: &str, e: ValueError| CloudConfigError::Invalid {
            source_name: source_name.to_string(),
            field: field.to_string(),
            reason: e.0,
        };
        let mut out = NoCloudMetaData::default();
        for (key, value) in pairs {
            match key.as_str() {
                "instance-id" => {
                    out.instance_id = Some(value.parse().map_err(|e| err("instance-id", e))?)
                }
                "local-hostname" => {
                    out.local_hostname = Some(value.parse().map_err(|e| err("local-hostname", e))?)
                }
                "seedfrom" => out.seedfrom = Some(value.parse().map_err(|e| err("seedfrom", e))?),
                _ => out.ignored_keys.push(key),
            }
        }
        Ok(out)
    }

    /// The part of the meta-data that is configuration (`local-hostname` as
    /// `hostname`), to merge as a [`NoCloud`](super::SourceKind::NoCloud)
    /// source before the seed's `user-data`.
    pub fn to_cloud_config(&self) -> CloudConfig {
        CloudConfig {
            hostname: self.local_hostname.clone(),
            ..CloudConfig::default()
        }
    }
}

fn yaml_pairs(
    source_name: &str,
    value: serde_yaml_ng::Value,
) -> Result<Vec<(String, String)>, CloudConfigError> {
    use serde_yaml_ng::Value;
    let invalid = |field: &str, reason: &str| CloudConfigError::Invalid {
        source_name: source_name.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let map = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        _ => {
            return Err(invalid(
                "meta-data",
                "must be a mapping of keys such as instance-id and local-hostname",
            ))
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = match k {
            Value::String(s) => s,
            _ => return Err(invalid("meta-data", "keys must be strings")),
        };
        let value = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            // Structured values (network config, key lists) are not read.
            _ => String::new(),
        };
        out.push((key, value));
    }
    Ok(out)
}

fn line_pairs(source_name: &str, text: &str) -> Result<Vec<(String, String)>, CloudConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| {
            CloudConfigError::Yaml(crate::yaml::YamlError {
                source_name: source_name.to_string(),
                line: Some(i + 1),
                column: Some(1),
                message: format!("expected `key: value`, found {line:?}"),
            })
        })?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    #[test]
    fn include_documents() {
        assert!(parse_include("u", "#cloud-config\nhostname: a\n").is_none());
        assert!(parse_include("u", "").is_none());
        let urls = parse_include(
            "CIDATA:user-data",
            "#include\n# the site's config\nhttps://cfg.example/site.yaml\n\n  http://10.0.2.2:8000/node.yaml\n",
        )
        .unwrap()
        .unwrap();
        let urls: Vec<&str> = urls.iter().map(|u| u.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://cfg.example/site.yaml",
                "http://10.0.2.2:8000/node.yaml"
            ]
        );
        let e = parse_include(
            "CIDATA:user-data",
            "#include\nhttps://ok.example/a\nftp://x/y\n",
        )
        .unwrap()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("CIDATA:user-data") && e.contains("#include line 3"),
            "{e}"
        );
        let e = parse_include("u", "#include\n\n")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no URL"), "{e}");
        let many: String = (0..9).map(|i| format!("https://h.example/{i}\n")).collect();
        let e = parse_include("u", &format!("#include\n{many}"))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 8"), "{e}");
    }

    #[test]
    fn meta_data_seedfrom() {
        let m = NoCloudMetaData::parse(
            "CIDATA:meta-data",
            "instance-id: i-1\nseedfrom: http://10.0.2.2:8000/seed/\n",
        )
        .unwrap();
        assert_eq!(m.seedfrom.unwrap().as_str(), "http://10.0.2.2:8000/seed/");
        let e = NoCloudMetaData::parse("CIDATA:meta-data", "seedfrom: file:///x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CIDATA:meta-data") && e.contains("seedfrom"),
            "{e}"
        );
    }

    #[test]
    fn cmdline_document_and_url() {
        let doc = "#cloud-config\nhostname: from-cmdline\n";
        let line = format!(
            "console=ttyS0 basalt.slot=a basalt.cloud-config={} basalt.cloud-config-url=https://cfg.example/x quiet",
            URL_SAFE_NO_PAD.encode(doc)
        );
        let s = parse_kernel_cmdline(&line).unwrap();
        assert_eq!(s.document.as_deref(), Some(doc));
        assert_eq!(s.url.unwrap().as_str(), "https://cfg.example/x");
        let c = CloudConfig::parse(KERNEL_CMDLINE_SOURCE, &s.document.unwrap()).unwrap();
        assert_eq!(c.hostname.unwrap().as_str(), "from-cmdline");
        assert_eq!(
            parse_kernel_cmdline("ro quiet").unwrap(),
            KernelCmdlineSource::default()
        );
    }

    #[test]
    fn cmdline_padding_is_optional_and_last_wins() {
        let padded = URL_SAFE.encode("#cloud-config\n");
        assert!(padded.ends_with('='));
        let line = format!("basalt.cloud-config=eA basalt.cloud-config={padded}");
        let s = parse_kernel_cmdline(&line).unwrap();
        assert_eq!(s.document.as_deref(), Some("#cloud-config\n"));
    }

    #[test]
    fn cmdline_errors_name_the_parameter() {
        // '+' and '/' belong to standard base64, not base64url.
        let std_b64 = STANDARD.encode([0xfb, 0xff, 0xfe]);
        let e = parse_kernel_cmdline(&format!("basalt.cloud-config={std_b64}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("kernel command line: basalt.cloud-config: not base64url"),
            "{e}"
        );
        let e = parse_kernel_cmdline(&format!(
            "basalt.cloud-config={}",
            URL_SAFE_NO_PAD.encode([0xff, 0xfe])
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = parse_kernel_cmdline("basalt.cloud-config-url=ftp://x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("basalt.cloud-config-url: \"ftp://x\" is not an http"),
            "{e}"
        );
    }

    use base64::engine::general_purpose::URL_SAFE;

    #[test]
    fn meta_data_as_yaml_and_as_lines() {
        let m = NoCloudMetaData::parse(
            "meta-data",
            "instance-id: iid-local01\nlocal-hostname: edge-7\nnetwork-interfaces: |\n  auto eth0\n",
        )
        .unwrap();
        assert_eq!(m.instance_id.as_ref().unwrap().as_str(), "iid-local01");
        assert_eq!(m.local_hostname.as_ref().unwrap().as_str(), "edge-7");
        assert_eq!(m.ignored_keys, ["network-interfaces"]);
        assert_eq!(m.to_cloud_config().hostname.unwrap().as_str(), "edge-7");
        // Not YAML (an unclosed flow mapping), read as lines.
        let m = NoCloudMetaData::parse("meta-data", "# seed\ninstance-id: {abc\n").unwrap_err();
        assert!(m.to_string().contains("instance-id"), "{m}");
        let m = NoCloudMetaData::parse("meta-data", "instance-id: 12345\n").unwrap();
        assert_eq!(m.instance_id.unwrap().as_str(), "12345");
        assert_eq!(
            NoCloudMetaData::parse("meta-data", "").unwrap(),
            NoCloudMetaData::default()
        );
    }

    #[test]
    fn meta_data_line_fallback() {
        let m = NoCloudMetaData::parse(
            "meta-data",
            "instance-id: i-1\nlocal-hostname: n1\ndsmode: [local\n",
        )
        .unwrap();
        assert_eq!(m.instance_id.unwrap().as_str(), "i-1");
        assert_eq!(m.ignored_keys, ["dsmode"]);
        let e = NoCloudMetaData::parse("meta-data", "instance-id: [x\njust words\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(e.to_string().contains("expected `key: value`"), "{e}");
    }

    #[test]
    fn meta_data_values_are_checked() {
        let e = NoCloudMetaData::parse("meta-data", "instance-id: ../../etc\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("meta-data: instance-id: \"../../etc\" is not an instance id"),
            "{e}"
        );
        let e = NoCloudMetaData::parse("meta-data", "local-hostname: bad_host\n").unwrap_err();
        assert_eq!(e.field().as_deref(), Some("local-hostname"));
        let e = NoCloudMetaData::parse("meta-data", "- a\n").unwrap_err();
        assert!(e.to_string().contains("must be a mapping"), "{e}");
    }

    #[test]
    fn instance_id_prefers_meta_data_then_hashes_config() {
        let c = CloudConfig::parse("t", "#cloud-config\nhostname: a\n").unwrap();
        let meta = NoCloudMetaData::parse("m", "instance-id: iid-1\n").unwrap();
        assert_eq!(instance_id(Some(&meta), &c).as_str(), "iid-1");
        let hashed = instance_id(None, &c);
        assert_eq!(instance_id(Some(&NoCloudMetaData::default()), &c), hashed);
        // Pinned: the id must not change unless the config does.
        assert_eq!(
            hashed.as_str(),
            format!(
                "sha256-{}",
                hex::encode(Sha256::digest(br#"{"hostname":"a"}"#))
            )
        );
        let other = CloudConfig::parse("t", "#cloud-config\nhostname: b\n").unwrap();
        assert_ne!(instance_id(None, &other), hashed);
        assert!(hashed.as_str().parse::<InstanceId>().is_ok());
    }
}
