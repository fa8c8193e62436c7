//! cloud-config: how a basalt device is provisioned on first boot.
//!
//! A cloud-init compatible subset, read strictly, plus a `basalt:` section:
//!
//! ```yaml
//! #cloud-config
//! hostname: edge-7
//! users:
//!   - name: ops
//!     groups: [adm]
//!     ssh_authorized_keys: ["ssh-ed25519 AAAA... ops@laptop"]
//! write_files:
//!   - path: /etc/motd
//!     content: "edge-7\n"
//! runcmd:
//!   - [systemctl, enable, --now, basalt-inference.service]
//! basalt:
//!   version: 1
//!   mesh: { token: "basalt-mesh-v1:..." }
//! ```
//!
//! [`CloudConfig::parse`] reads one document (the first line must be
//! `#cloud-config`) into the raw [`file::CloudConfigFile`] and checks it into
//! a [`CloudConfig`]; [`merge::merge`] combines the documents of several
//! [`merge::SourceKind`]s; [`sources`] reads the kernel command line and the
//! NoCloud `meta-data`, and derives the instance id that run-once steps are
//! keyed by. The repository's `cloud-config/README.md` is the user's guide.

mod check;
pub mod file;
pub mod merge;
pub mod sources;
pub mod value;

#[cfg(test)]
mod tests;

pub use merge::{merge, Merged, Provenance, SourceKind, SourceRef};
pub use sources::{
    instance_id, parse_include, parse_kernel_cmdline, InstanceId, KernelCmdlineSource,
    NoCloudMetaData, MAX_INCLUDES,
};
pub use value::{
    Alias, Ed25519PublicKey, Hostname, HttpUrl, MeshToken, ModelName, PasswordHash, SshPublicKey,
    Timezone, UserName, ValueError, WritePath, WRITABLE_PLACES,
};

use crate::yaml::YamlError;
use base64::Engine;
use serde::{Serialize, Serializer};
use std::fmt;

/// The first line every cloud-config document starts with.
pub const HEADER: &str = "#cloud-config";

/// The `basalt.version`s this code reads.
pub const SUPPORTED_BASALT_VERSIONS: &[u64] = &[1];

/// The top-level keys of a cloud-config, in the order of the documentation.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "hostname",
    "fqdn",
    "users",
    "ssh_authorized_keys",
    "write_files",
    "bootcmd",
    "runcmd",
    "timezone",
    "ntp",
    "basalt",
];

/// The keys of the `basalt:` section.
pub const BASALT_KEYS: &[&str] = &[
    "version",
    "alias",
    "mesh",
    "update",
    "models",
    "inference",
    "health",
    "allowed_clients",
    "api_tokens",
    "install",
];

/// Largest decoded `write_files` content: a bigger file belongs in the image
/// or in a model download, and a gzip bomb must not exhaust the device.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

/// A checked cloud-config document (or several, merged).
///
/// Serialised (to JSON, say) with unset keys left out, so adding a key to
/// the format does not change the serialisation, and so the
/// [`instance_id`], of documents that do not use it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CloudConfig {
    /// `hostname`: the device's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// `fqdn`: the device's fully qualified name (at least two labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<Hostname>,
    /// `users`: accounts to create, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Top-level `ssh_authorized_keys`: keys that may log in as root, without duplicates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<SshPublicKey>,
    /// `write_files`, with contents decoded; each path once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<WriteFile>,
    /// `bootcmd`: run early on every boot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<Command>,
    /// `runcmd`: run once per instance, after users and files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<Command>,
    /// `timezone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<Timezone>,
    /// `ntp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Ntp>,
    /// The `basalt:` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basalt: Option<Basalt>,
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Login name.
    pub name: UserName,
    /// Full name or description (no `:` or line breaks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    /// Supplementary groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<UserName>,
    /// Password hash for `/etc/shadow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passwd: Option<PasswordHash>,
    /// Lock the password (key login only). Default true, as in cloud-init.
    pub lock_passwd: bool,
    /// Keys that may log in as this user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<SshPublicKey>,
    /// sudoers rules (`ALL=(ALL) NOPASSWD:ALL`); empty for none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sudo: Vec<String>,
    /// Login shell (an absolute path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    /// Where, below one of [`WRITABLE_PLACES`].
    pub path: WritePath,
    /// The decoded bytes.
    #[serde(serialize_with = "serialize_base64")]
    pub content: Vec<u8>,
    /// Mode bits, at most `0o7777`. Default `0o644`.
    #[serde(serialize_with = "serialize_octal")]
    pub mode: u32,
    /// Owner. Default `root:root`.
    pub owner: Owner,
    /// Append to the file instead of replacing it.
    pub append: bool,
    /// basalt: write on every boot, not only once per instance.
    pub reapply: bool,
}

/// A file's owner, `user:group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning user.
    pub user: UserName,
    /// The owning group.
    pub group: UserName,
}

impl Owner {
    /// `root:root`.
    pub fn root() -> Owner {
        let root: UserName = "root".parse().expect("root is a user name");
        Owner {
            user: root.clone(),
            group: root,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.user, self.group)
    }
}

impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn serialize_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn serialize_octal<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{mode:04o}"))
}

fn serialize_hex<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// A `bootcmd` or `runcmd` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// A string, run as `/bin/sh -c STRING`.
    Shell(String),
    /// An argv list, executed directly (`argv[0]` looked up in `PATH`).
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute: `["/bin/sh", "-c", s]` for a shell string.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Argv(v) => v.clone(),
        }
    }
}

/// Time synchronisation (`ntp:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ntp {
    /// Run time synchronisation. Default true.
    pub enabled: bool,
    /// NTP servers: host names or IP addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// NTP pools: host names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
}

/// The `basalt:` section. Keys left out are `None`, so that merging can
/// tell "not set here" from "set to nothing" (`models: []`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Basalt {
    /// `basalt.version`: always one of [`SUPPORTED_BASALT_VERSIONS`].
    pub version: u64,
    /// `alias`: this node's alias in the mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Alias>,
    /// `mesh`: the network to join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<Mesh>,
    /// `update`: where signed updates come from and who may sign them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// `models`: models to download onto the data partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<Model>>,
    /// `inference`: limits of the inference server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference: Option<Inference>,
    /// `health`: extra checks that decide whether a boot is good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// `allowed_clients`: node keys allowed to call this node's API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_clients: Option<Vec<AllowedClient>>,
    /// `api_tokens`: SHA-256 of bearer tokens this node accepts, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_tokens: Option<Vec<ApiToken>>,
    /// `install`: on a live system booted from the installer ISO, the disk
    /// to install the image onto without asking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
}

impl Basalt {
    /// The keys set in this section other than `version`, in documentation order.
    pub fn keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        for (key, set) in [
            ("alias", self.alias.is_some()),
            ("mesh", self.mesh.is_some()),
            ("update", self.update.is_some()),
            ("models", self.models.is_some()),
            ("inference", self.inference.is_some()),
            ("health", self.health.is_some()),
            ("allowed_clients", self.allowed_clients.is_some()),
            ("api_tokens", self.api_tokens.is_some()),
            ("install", self.install.is_some()),
        ] {
            if set {
                keys.push(key);
            }
        }
        keys
    }
}

/// `basalt.install`: an unattended installation from the live system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Install {
    /// The disk to write.
    pub device: InstallTarget,
    /// Reboot into the installed system when done. Default true.
    pub reboot: bool,
}

/// `basalt.install.device`: a whole disk by its path, or `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum InstallTarget {
    /// The only non-removable disk, other than the live medium, that the
    /// image fits on.
    Auto,
    /// A device path under `/dev/`.
    Device(String),
}

impl From<InstallTarget> for String {
    fn from(t: InstallTarget) -> String {
        t.to_string()
    }
}

impl std::fmt::Display for InstallTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallTarget::Auto => f.write_str("auto"),
            InstallTarget::Device(d) => f.write_str(d),
        }
    }
}

impl std::str::FromStr for InstallTarget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "auto" {
            return Ok(InstallTarget::Auto);
        }
        match s.strip_prefix("/dev/") {
            Some(rest)
                if !rest.is_empty()
                    && !rest
                        .split('/')
                        .any(|c| c.is_empty() || c == "." || c == "..")
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(InstallTarget::Device(s.to_string()))
            }
            _ => Err(format!(
                "{s:?} is neither `auto` nor a device path such as /dev/sda"
            )),
        }
    }
}

/// `basalt.mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mesh {
    /// The network token (opaque here; the mesh reads it).
    pub token: MeshToken,
}

/// `basalt.update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Update {
    /// Base URL of the update channel.
    pub channel: HttpUrl,
    /// Keys whose signatures on a bundle manifest count; no duplicates.
    pub trusted_keys: Vec<Ed25519PublicKey>,
    /// How many distinct trusted keys must have signed, `1..=trusted_keys.len()`. Default 1.
    pub threshold: u32,
    /// Seconds between checks of the channel. Default [`DEFAULT_POLL_INTERVAL_S`].
    pub poll_interval: u64,
    /// Keep the bundle last staged and serve it to mesh peers, and fetch
    /// bundles from peers before the channel. `None`: on when a mesh is
    /// configured ([`Update::shares`]).
    pub share: Option<bool>,
}

impl Update {
    /// Whether bundles are shared with mesh peers, given whether this node
    /// has a mesh (`basalt.mesh`).
    pub fn shares(&self, mesh: bool) -> bool {
        self.share.unwrap_or(mesh)
    }
}

/// Default `basalt.update.poll_interval`: one hour.
pub const DEFAULT_POLL_INTERVAL_S: u64 = 3600;

/// Default `basalt.health.checks[].timeout_s`.
pub const DEFAULT_HEALTH_TIMEOUT_S: u64 = 10;

/// Longest allowed `basalt.health.checks[].timeout_s`: the boot waits for it.
pub const MAX_HEALTH_TIMEOUT_S: u64 = 600;

/// One entry of `basalt.api_tokens`: a bearer token made elsewhere, by its
/// hash, so that the token itself is never in user-data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    /// Its name, in metering records and `basalt-agent token list`.
    pub name: Alias,
    /// SHA-256 of the token as sent after `Bearer `.
    #[serde(serialize_with = "serialize_hex")]
    pub sha256: [u8; 32],
}

/// One entry of `basalt.models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Model {
    /// The model's name in the inference API.
    pub name: ModelName,
    /// Where to download it.
    pub url: HttpUrl,
    /// SHA-256 of the download.
    #[serde(serialize_with = "serialize_hex")]
    pub sha256: [u8; 32],
    /// Largest batch the server will form for it, when limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<u32>,
}

/// `basalt.inference`. Unset limits take the inference server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inference {
    /// Largest request body accepted, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Requests that may wait for a worker before new ones are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<u32>,
    /// Time limit of one request, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Worker threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// `basalt.health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The checks, each a command that must exit 0 within its time.
    pub checks: Vec<HealthCheck>,
}

/// One entry of `basalt.health.checks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Unique name, shown in `basalt-agent status`.
    pub name: Alias,
    /// argv to execute (no shell).
    pub command: Vec<String>,
    /// Seconds before the check counts as failed.
    pub timeout_s: u64,
}

/// One entry of `basalt.allowed_clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowedClient {
    /// The client's node key.
    pub key: Ed25519PublicKey,
    /// A name to show for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Alias>,
}

/// A cloud-config that could not be read, or breaks a rule.
///
/// Every variant names the source; [`field`](Self::field) gives the field
/// path and [`reason`](Self::reason) the cause, and `Display` puts them on
/// one line: `user-data: write_files[2].content: invalid base64 at byte 17: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudConfigError {
    /// The first line is not `#cloud-config`.
    #[error("{source_name}: the first line must be `#cloud-config`, found {found:?}; only #cloud-config documents are supported (not shell scripts, #include or MIME multi-part user-data)")]
    NotCloudConfig {
        /// Where the text came from.
        source_name: String,
        /// The first line as found (shortened).
        found: String,
    },
    /// Not YAML, a wrong type, or an unknown key; with line and column.
    #[error("{0}")]
    Yaml(YamlError),
    /// `basalt.version` is a number this code does not read.
    #[error("{source_name}: basalt.version: version {found} is not supported; this basalt reads version {}", supported_list())]
    UnsupportedVersion {
        /// Where the text came from.
        source_name: String,
        /// The version written.
        found: u64,
    },
    /// A value breaks a rule.
    #[error("{source_name}: {field}: {reason}")]
    Invalid {
        /// Where the text came from.
        source_name: String,
        /// Path of the field, such as `write_files[2].content`.
        field: String,
        /// Why it was refused.
        reason: String,
    },
}

fn supported_list() -> String {
    SUPPORTED_BASALT_VERSIONS
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<YamlError> for CloudConfigError {
    fn from(mut e: YamlError) -> Self {
        e.message = e.message.replace(['\n', '\r'], " ");
        CloudConfigError::Yaml(e)
    }
}

impl CloudConfigError {
    /// The name of the source the error is in.
    pub fn source_name(&self) -> &str {
        match self {
            CloudConfigError::NotCloudConfig { source_name, .. }
            | CloudConfigError::UnsupportedVersion { source_name, .. }
            | CloudConfigError::Invalid { source_name, .. } => source_name,
            CloudConfigError::Yaml(e) => &e.source_name,
        }
    }

    /// Path of the offending field (`users[1].passwd`), when known.
    pub fn field(&self) -> Option<String> {
        match self {
            CloudConfigError::NotCloudConfig { .. } => None,
            CloudConfigError::UnsupportedVersion { .. } => Some("basalt.version".into()),
            CloudConfigError::Invalid { field, .. } => Some(field.clone()),
            CloudConfigError::Yaml(e) => split_yaml_message(&e.message).0,
        }
    }

    /// 1-based line, for errors the YAML parser located.
    pub fn line(&self) -> Option<usize> {
        match self {
            CloudConfigError::Yaml(e) => e.line,
            CloudConfigError::NotCloudConfig { .. } => Some(1),
            _ => None,
        }
    }

    /// 1-based column, for errors the YAML parser located.
    pub fn column(&self) -> Option<usize> {
        match self {
            CloudConfigError::Yaml(e) => e.column,
            CloudConfigError::NotCloudConfig { .. } => Some(1),
            _ => None,
        }
    }

    /// The cause alone, without source, position or field.
    pub fn reason(&self) -> String {
        match self {
            CloudConfigError::Invalid { reason, .. } => reason.clone(),
            CloudConfigError::Yaml(e) => split_yaml_message(&e.message).1.to_string(),
            other => {
                let full = other.to_string();
                let prefix = format!("{}: ", other.source_name());
                let rest = full.strip_prefix(&prefix).unwrap_or(&full);
                rest.strip_prefix("basalt.version: ")
                    .unwrap_or(rest)
                    .to_string()
            }
        }
    }
}

/// serde_yaml puts the path in front of its message (`users[0]: unknown
/// field `nmae`, …`); splits it off, and adds the unknown key to the path.
fn split_yaml_message(message: &str) -> (Option<String>, &str) {
    let (path, rest) = match message.split_once(": ") {
        Some((p, rest))
            if !p.is_empty()
                && !p.contains([' ', '`'])
                && p.starts_with(|c: char| c.is_ascii_alphabetic()) =>
        {
            (Some(p.to_string()), rest)
        }
        _ => (None, message),
    };
    let unknown = rest
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(k, _)| k);
    let field = match (path, unknown) {
        (Some(p), Some(k)) => Some(format!("{p}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (p, None) => p,
    };
    (field, rest)
}

impl CloudConfig {
    /// Reads and checks one `#cloud-config` document. `source_name` names
    /// it in errors (a path, `user-data`, `kernel command line`).
    pub fn parse(source_name: &str, text: &str) -> Result<CloudConfig, CloudConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let first = text.lines().next().unwrap_or_default();
        if first.trim_end() != HEADER {
            return Err(CloudConfigError::NotCloudConfig {
                source_name: source_name.to_string(),
                found: first.chars().take(60).collect(),
            });
        }
        let file: file::CloudConfigFile = crate::yaml::from_str(source_name, text)?;
        CloudConfig::check(source_name, file)
    }

    /// Checks a parsed document against every rule; the first broken rule
    /// is the error.
    pub fn check(
        source_name: &str,
        file: file::CloudConfigFile,
    ) -> Result<CloudConfig, CloudConfigError> {
        check::check(source_name, file)
    }

    /// The top-level keys this config sets (non-empty lists, present values),
    /// in the order of [`TOP_LEVEL_KEYS`].
    pub fn keys_set(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        for (key, set) in [
            ("hostname", self.hostname.is_some()),
            ("fqdn", self.fqdn.is_some()),
            ("users", !self.users.is_empty()),
            ("ssh_authorized_keys", !self.ssh_authorized_keys.is_empty()),
            ("write_files", !self.write_files.is_empty()),
            ("bootcmd", !self.bootcmd.is_empty()),
            ("runcmd", !self.runcmd.is_empty()),
            ("timezone", self.timezone.is_some()),
            ("ntp", self.ntp.is_some()),
            ("basalt", self.basalt.is_some()),
        ] {
            if set {
                keys.push(key);
            }
        }
        keys
    }
}
