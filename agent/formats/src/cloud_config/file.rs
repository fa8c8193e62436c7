//! The cloud-config document as written: serde types, every one strict.
//!
//! Nothing here is checked beyond YAML types; [`super::CloudConfig::check`]
//! turns a [`CloudConfigFile`] into the checked [`super::CloudConfig`].

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A whole cloud-config document.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfigFile {
    /// Host name of the device.
    pub hostname: Option<String>,
    /// Fully qualified domain name of the device.
    pub fqdn: Option<String>,
    /// Accounts to create.
    pub users: Option<Vec<UserFile>>,
    /// Keys that may log in as root.
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// Files to write.
    pub write_files: Option<Vec<WriteFileFile>>,
    /// Commands run early on every boot.
    pub bootcmd: Option<Vec<CommandFile>>,
    /// Commands run once per instance, late in first boot.
    pub runcmd: Option<Vec<CommandFile>>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Time synchronisation.
    pub ntp: Option<NtpFile>,
    /// basalt's own section.
    pub basalt: Option<BasaltFile>,
}

/// One entry of `users`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    pub name: String,
    pub gecos: Option<String>,
    pub groups: Option<StringOrList>,
    pub passwd: Option<String>,
    pub lock_passwd: Option<bool>,
    pub ssh_authorized_keys: Option<Vec<String>>,
    pub sudo: Option<SudoFile>,
    pub shell: Option<String>,
}

/// One entry of `write_files`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFileFile {
    pub path: String,
    pub content: Option<String>,
    pub encoding: Option<EncodingFile>,
    pub permissions: Option<String>,
    pub owner: Option<String>,
    pub append: Option<bool>,
    /// basalt: rewrite the file on every boot, not only on the first.
    pub reapply: Option<bool>,
}

/// How `write_files[].content` is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum EncodingFile {
    /// The content is the text itself.
    #[default]
    #[serde(rename = "text/plain")]
    Text,
    /// Base64 (`b64` or `base64`).
    #[serde(rename = "b64", alias = "base64")]
    Base64,
    /// Gzip, then base64 (`gzip+base64` or `gz+b64`).
    #[serde(rename = "gzip+base64", alias = "gz+b64")]
    GzipBase64,
}

/// `ntp:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NtpFile {
    pub enabled: Option<bool>,
    pub servers: Option<Vec<String>>,
    pub pools: Option<Vec<String>>,
}

/// `basalt:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasaltFile {
    /// Required; 1 is the only version so far.
    pub version: Option<u64>,
    pub alias: Option<String>,
    pub mesh: Option<MeshFile>,
    pub update: Option<UpdateFile>,
    pub models: Option<Vec<ModelFile>>,
    pub inference: Option<InferenceFile>,
    pub health: Option<HealthFile>,
    pub allowed_clients: Option<Vec<AllowedClientFile>>,
    pub api_tokens: Option<Vec<ApiTokenFile>>,
    pub install: Option<InstallFile>,
}

/// `basalt.install`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstallFile {
    pub device: String,
    pub reboot: Option<bool>,
}

/// `basalt.mesh`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    pub token: String,
}

/// `basalt.update`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    pub channel: String,
    pub trusted_keys: Vec<String>,
    pub threshold: Option<u64>,
    pub poll_interval: Option<u64>,
    pub share: Option<bool>,
}

/// One entry of `basalt.models`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub batch_max: Option<u64>,
}

/// `basalt.inference`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceFile {
    pub max_request_bytes: Option<u64>,
    pub queue_capacity: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub threads: Option<u64>,
}

/// `basalt.health`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub checks: Vec<HealthCheckFile>,
}

/// One entry of `basalt.health.checks`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub name: String,
    pub command: Vec<String>,
    pub timeout_s: Option<u64>,
}

/// One entry of `basalt.allowed_clients`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedClientFile {
    pub key: String,
    pub alias: Option<String>,
}

/// One entry of `basalt.api_tokens`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenFile {
    pub name: String,
    pub sha256: String,
}

/// A string, or a list of strings: `groups`, and each `bootcmd`/`runcmd` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// Written as one string.
    One(String),
    /// Written as a list.
    Many(Vec<String>),
}

/// A `bootcmd`/`runcmd` item: a string for `/bin/sh -c`, or an argv list.
pub type CommandFile = StringOrList;

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut items = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    items.push(s);
                }
                Ok(StringOrList::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// `users[].sudo`: a sudoers rule, a list of them, or `false` for none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SudoFile {
    /// `true` or `false` as written (only `false` is accepted by the check).
    Bool(bool),
    /// One rule.
    One(String),
    /// Several rules.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for SudoFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SudoFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sudoers rule, a list of them, or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SudoFile, E> {
                Ok(SudoFile::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SudoFile, E> {
                Ok(SudoFile::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SudoFile, A::Error> {
                let mut items = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    items.push(s);
                }
                Ok(SudoFile::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}
