//! `basalt config validate`: check a cloud-config before it goes on a device.
//!
//! The rules are those the agent applies on the device
//! ([`basalt_formats::cloud_config`]); this module only reads the file and
//! words the verdict for people (one line) and for machines (JSON).

use basalt_formats::cloud_config::{CloudConfig, CloudConfigError};
use serde::Serialize;
use std::path::Path;

/// The verdict on one document.
#[derive(Debug)]
pub struct Validation {
    /// The name the document was read under (the path as given).
    pub source_name: String,
    /// The checked config, or the first rule it breaks.
    pub result: Result<CloudConfig, CloudConfigError>,
    /// For an `#include` document, the URLs it names (checked, not fetched).
    pub includes: Vec<String>,
}

/// Reads and checks the cloud-config at `path`. Only a file that cannot be
/// read (or is not UTF-8) is an `Err`; an invalid document is a [`Validation`].
pub fn validate_file(path: &Path) -> std::io::Result<Validation> {
    let text = std::fs::read_to_string(path)?;
    Ok(validate_text(&path.display().to_string(), &text))
}

/// Checks a document already in memory.
pub fn validate_text(source_name: &str, text: &str) -> Validation {
    let (result, includes) = match basalt_formats::cloud_config::parse_include(source_name, text) {
        None => (CloudConfig::parse(source_name, text), Vec::new()),
        Some(Ok(urls)) => (
            Ok(CloudConfig::default()),
            urls.iter().map(|u| u.as_str().to_string()).collect(),
        ),
        Some(Err(e)) => (Err(e), Vec::new()),
    };
    Validation {
        source_name: source_name.to_string(),
        result,
        includes,
    }
}

/// The NoCloud instance-id a document is given when basalt hands it to a
/// device (`basalt run --cloud-config`, `basalt flash --cloud-config`): it
/// follows the content, so an edited document is applied as a new instance.
pub fn instance_id(text: &str) -> String {
    use sha2::Digest;
    format!(
        "iid-{}",
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    )
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Validation {
    /// Whether the document passed every rule.
    pub fn is_valid(&self) -> bool {
        self.result.is_ok()
    }

    /// One line for people: `FILE: valid (hostname x, 2 users, 3 files,
    /// basalt: mesh, update)`, or the error (which names the file).
    pub fn human(&self) -> String {
        match &self.result {
            Err(e) => e.to_string(),
            Ok(_) if !self.includes.is_empty() => format!(
                "{}: valid #include of {} (not fetched here; the device checks each): {}",
                self.source_name,
                count(self.includes.len(), "URL", "URLs"),
                self.includes.join(", ")
            ),
            Ok(c) => {
                let mut parts = Vec::new();
                if let Some(h) = &c.hostname {
                    parts.push(format!("hostname {h}"));
                }
                parts.push(count(c.users.len(), "user", "users"));
                parts.push(count(c.write_files.len(), "file", "files"));
                if let Some(b) = &c.basalt {
                    let keys = b.keys_set();
                    if keys.is_empty() {
                        parts.push(format!("basalt: version {}", b.version));
                    } else {
                        parts.push(format!("basalt: {}", keys.join(", ")));
                    }
                }
                format!("{}: valid ({})", self.source_name, parts.join(", "))
            }
        }
    }

    /// The verdict for machines, one line of JSON with `valid` first:
    /// `{"valid":true,"source":…,"hostname":…,"users":[…],…}` listing what the
    /// document sets, or
    /// `{"valid":false,"error":{"source","field","line","column","message"}}`.
    pub fn json(&self) -> String {
        let out = match &self.result {
            Ok(c) => serde_json::to_string(&ValidJson {
                valid: true,
                source: &self.source_name,
                hostname: c.hostname.as_ref().map(|h| h.as_str()),
                fqdn: c.fqdn.as_ref().map(|h| h.as_str()),
                users: c.users.iter().map(|u| u.name.as_str()).collect(),
                write_files: c.write_files.iter().map(|f| f.path.as_str()).collect(),
                bootcmd: c.bootcmd.len(),
                runcmd: c.runcmd.len(),
                basalt: c.basalt.as_ref().map(|b| b.keys_set()),
                include: self.includes.iter().map(String::as_str).collect(),
            }),
            Err(e) => serde_json::to_string(&InvalidJson {
                valid: false,
                error: ErrorJson {
                    source: e.source_name(),
                    field: e.field(),
                    line: e.line(),
                    column: e.column(),
                    message: e.reason(),
                },
            }),
        };
        out.expect("plain data serialises")
    }
}

/// `--json` output of a valid document; fields in this order.
#[derive(Serialize)]
struct ValidJson<'a> {
    valid: bool,
    source: &'a str,
    hostname: Option<&'a str>,
    fqdn: Option<&'a str>,
    users: Vec<&'a str>,
    write_files: Vec<&'a str>,
    bootcmd: usize,
    runcmd: usize,
    /// The basalt keys set, or null without a basalt section.
    basalt: Option<Vec<&'static str>>,
    /// The URLs of an `#include` document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    include: Vec<&'a str>,
}

/// `--json` output of an invalid document.
#[derive(Serialize)]
struct InvalidJson<'a> {
    valid: bool,
    error: ErrorJson<'a>,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    source: &'a str,
    field: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(v: &Validation) -> Value {
        serde_json::from_str(&v.json()).unwrap()
    }

    #[test]
    fn include_documents_are_checked_not_fetched() {
        let v = validate_text(
            "seed/user-data",
            "#include\nhttps://provision.example.com/site.yaml\n",
        );
        assert!(v.is_valid());
        assert_eq!(
            v.human(),
            "seed/user-data: valid #include of 1 URL (not fetched here; the device checks each): https://provision.example.com/site.yaml"
        );
        assert_eq!(
            parsed(&v)["include"],
            json!(["https://provision.example.com/site.yaml"])
        );
        let v = validate_text(
            "seed/user-data",
            "#include\nprovision.example.com/site.yaml\n",
        );
        assert!(!v.is_valid());
        assert_eq!(parsed(&v)["error"]["field"], "#include line 2");
        assert!(parsed(&validate_text("a", "#cloud-config\n"))
            .get("include")
            .is_none());
    }

    #[test]
    fn valid_summary_counts_and_names_basalt_keys() {
        let v = validate_text(
            "c.yaml",
            "#cloud-config\nhostname: x\nusers: [{name: a}, {name: b}]\nwrite_files: [{path: /etc/a}, {path: /etc/b}, {path: /etc/c}]\nbasalt: {version: 1, mesh: {token: basalt-mesh-v1:AQAHZmxlZXQtYd99nAzlMQv9sqax9tOdyaK-gjRkNaMJqDwcmFwwKm8TAQTAAAIKymw6n114}, update: {channel: 'https://u.example', trusted_keys: [4321ce8d3d13cc4814865c22d45614e714d93d567cd357aeaab3e3c9a4e031c1]}}\n",
        );
        assert!(v.is_valid());
        assert_eq!(
            v.human(),
            "c.yaml: valid (hostname x, 2 users, 3 files, basalt: mesh, update)"
        );
        assert!(v
            .json()
            .starts_with(r#"{"valid":true,"source":"c.yaml","hostname":"x""#));
        let j = parsed(&v);
        assert_eq!(j["valid"], true);
        assert_eq!(j["users"], json!(["a", "b"]));
        assert_eq!(j["basalt"], json!(["mesh", "update"]));
        let small = validate_text(
            "s.yaml",
            "#cloud-config\nwrite_files: [{path: /etc/a}]\nbasalt: {version: 1}\n",
        );
        assert_eq!(
            small.human(),
            "s.yaml: valid (0 users, 1 file, basalt: version 1)"
        );
        assert_eq!(parsed(&small)["hostname"], Value::Null);
    }

    #[test]
    fn invalid_gives_the_error_with_its_parts() {
        let v = validate_text("c.yaml", "#cloud-config\nhostname: a\nhostnme: b\n");
        assert!(!v.is_valid());
        assert!(
            v.human().starts_with("c.yaml:3:1: unknown field `hostnme`"),
            "{}",
            v.human()
        );
        let e = &parsed(&v)["error"];
        assert_eq!(e["source"], "c.yaml");
        assert_eq!(e["field"], "hostnme");
        assert_eq!(
            (e["line"].as_u64(), e["column"].as_u64()),
            (Some(3), Some(1))
        );
        assert!(e["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `hostnme`"));

        let v = validate_text("c.yaml", "#cloud-config\nwrite_files: [{path: /usr/x}]\n");
        let e = &parsed(&v)["error"];
        assert_eq!(e["field"], "write_files[0].path");
        assert_eq!(e["line"], Value::Null);
        assert!(e["message"].as_str().unwrap().contains("read-only root"));
    }
}
