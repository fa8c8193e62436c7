//! Several cloud-config sources, one config.
//!
//! The agent reads every source it finds, checks each with
//! [`CloudConfig::parse`](super::CloudConfig::parse), and merges them here.
//! Sources count in the order of [`SourceKind`], later over earlier:
//!
//! | key | rule |
//! | --- | --- |
//! | `hostname`, `fqdn`, `timezone`, `ntp` | the last source that sets it wins (`ntp` as a whole) |
//! | `users` | by `name`: a later source's user replaces the earlier one with that name, in its place |
//! | `write_files` | by `path`: a later source's file replaces the earlier one with that path, in its place |
//! | `bootcmd`, `runcmd` | concatenated in source order |
//! | `ssh_authorized_keys` | union, first occurrence kept (keys compared by type and data, not comment) |
//! | `basalt` | per key (`alias`, `mesh`, `update`, `models`, …): the last source that sets it wins |
//!
//! [`Merged::provenance`] records which sources each key came from.

use super::{Basalt, CloudConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Where a cloud-config came from. The order of the variants is the
/// precedence order: a later kind overrides an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The document built into the image.
    ImageDefault,
    /// `user-data` on the boot partition, written by whoever flashed the device.
    BootPartition,
    /// A NoCloud seed: a volume labelled `cidata` with `user-data` and `meta-data`.
    NoCloud,
    /// `basalt.cloud-config=` on the kernel command line.
    KernelCmdline,
    /// Fetched from `basalt.cloud-config-url=`.
    Url,
}

impl SourceKind {
    /// Every kind, in precedence order (lowest first).
    pub const ALL: [SourceKind; 5] = [
        SourceKind::ImageDefault,
        SourceKind::BootPartition,
        SourceKind::NoCloud,
        SourceKind::KernelCmdline,
        SourceKind::Url,
    ];

    /// The kind's name as shown to users.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::ImageDefault => "image-default",
            SourceKind::BootPartition => "boot-partition",
            SourceKind::NoCloud => "nocloud",
            SourceKind::KernelCmdline => "kernel-cmdline",
            SourceKind::Url => "url",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One source: its kind and the name it was read under (a path or URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    /// The kind, which fixes its precedence.
    pub kind: SourceKind,
    /// The name used in errors and status: a path, a URL, `kernel command line`.
    pub name: String,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind)
    }
}

/// For each key, the sources that gave the value in effect.
///
/// Keys are the top-level keys, and `basalt.<key>` for the keys of the
/// basalt section. A key whose value one source decides (`hostname`,
/// `basalt.mesh`) has that one source; a merged key (`users`, `runcmd`,
/// `ssh_authorized_keys`, …) has every source that contributed, in order.
/// Keys no source set are absent.
pub type Provenance = BTreeMap<String, Vec<SourceRef>>;

/// The merged config and where each part of it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Merged {
    /// The config in effect.
    pub config: CloudConfig,
    /// Every source merged, in precedence order.
    pub sources: Vec<SourceRef>,
    /// Which sources set each key.
    pub provenance: Provenance,
}

/// Merges checked configs by the rules in the [module docs](self).
///
/// The sources are put in [`SourceKind`] order first (stably, so several
/// sources of one kind keep the order given), whatever order they come in.
pub fn merge(sources: Vec<(SourceKind, String, CloudConfig)>) -> Merged {
    let mut sources = sources;
    sources.sort_by_key(|(kind, _, _)| *kind);
    let mut out = CloudConfig::default();
    let mut provenance = Provenance::new();
    let mut refs = Vec::new();
    for (kind, name, config) in sources {
        let source = SourceRef { kind, name };
        let mut set = |key: &str, replace: bool| {
            let entry = provenance.entry(key.to_string()).or_default();
            if replace {
                entry.clear();
            }
            entry.push(source.clone());
        };
        let keys = config.keys_set();
        for key in &keys {
            let replaces = matches!(*key, "hostname" | "fqdn" | "timezone" | "ntp");
            if *key != "basalt" {
                set(key, replaces);
            }
        }
        let CloudConfig {
            hostname,
            fqdn,
            users,
            ssh_authorized_keys,
            write_files,
            bootcmd,
            runcmd,
            timezone,
            ntp,
            basalt,
        } = config;
        out.hostname = hostname.or(out.hostname);
        out.fqdn = fqdn.or(out.fqdn);
        out.timezone = timezone.or(out.timezone);
        out.ntp = ntp.or(out.ntp);
        for user in users {
            match out.users.iter_mut().find(|u| u.name == user.name) {
                Some(existing) => *existing = user,
                None => out.users.push(user),
            }
        }
        for file in write_files {
            match out.write_files.iter_mut().find(|f| f.path == file.path) {
                Some(existing) => *existing = file,
                None => out.write_files.push(file),
            }
        }
        for key in ssh_authorized_keys {
            if !out
                .ssh_authorized_keys
                .iter()
                .any(|k| k.identity() == key.identity())
            {
                out.ssh_authorized_keys.push(key);
            }
        }
        out.bootcmd.extend(bootcmd);
        out.runcmd.extend(runcmd);
        if let Some(b) = basalt {
            set("basalt", false);
            for key in b.keys_set() {
                set(&format!("basalt.{key}"), true);
            }
            out.basalt = Some(merge_basalt(out.basalt.take(), b));
        }
        refs.push(source);
    }
    Merged {
        config: out,
        sources: refs,
        provenance,
    }
}

fn merge_basalt(earlier: Option<Basalt>, later: Basalt) -> Basalt {
    let Some(e) = earlier else {
        return later;
    };
    Basalt {
        version: later.version,
        alias: later.alias.or(e.alias),
        mesh: later.mesh.or(e.mesh),
        update: later.update.or(e.update),
        models: later.models.or(e.models),
        inference: later.inference.or(e.inference),
        health: later.health.or(e.health),
        allowed_clients: later.allowed_clients.or(e.allowed_clients),
        api_tokens: later.api_tokens.or(e.api_tokens),
        install: later.install.or(e.install),
    }
}

impl Merged {
    /// The sources that set `key` (`"hostname"`, `"basalt.mesh"`), for status output.
    pub fn sources_of(&self, key: &str) -> &[SourceRef] {
        self.provenance.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud_config::Command;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGkL6oMYeLYUqSxEDbBVWvqeZsHdxX9v2k3m8Ar4CGe/";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBSGkqjD7Zpkc+VLLoPX9w6H2d2XTRaTH3xWQ7vqtGUQ";

    fn cfg(body: &str) -> CloudConfig {
        CloudConfig::parse("test", &format!("#cloud-config\n{body}")).unwrap()
    }

    fn names(refs: &[SourceRef]) -> Vec<&str> {
        refs.iter().map(|r| r.name.as_str()).collect()
    }

    fn sources() -> Vec<(SourceKind, String, CloudConfig)> {
        vec![
            // Given out of order on purpose: merge sorts by kind.
            (
                SourceKind::KernelCmdline,
                "cmdline".into(),
                cfg(&format!(
                    "hostname: from-cmdline\nruncmd: [c2]\nssh_authorized_keys: ['{KEY_A} again']\nbasalt: {{version: 1, alias: cmd}}\n"
                )),
            ),
            (
                SourceKind::ImageDefault,
                "image".into(),
                cfg(&format!(
                    "hostname: from-image\ntimezone: UTC\nusers: [{{name: ops, shell: /bin/sh}}, {{name: app}}]\n\
                     write_files: [{{path: /etc/a, content: image}}, {{path: /etc/b, content: image}}]\n\
                     bootcmd: [b1]\nruncmd: [c1]\nssh_authorized_keys: ['{KEY_A}']\n\
                     basalt: {{version: 1, alias: img, models: [], inference: {{threads: 2}}}}\n"
                )),
            ),
            (
                SourceKind::BootPartition,
                "boot".into(),
                cfg(&format!(
                    "users: [{{name: ops, shell: /bin/bash}}]\nwrite_files: [{{path: /etc/b, content: boot}}, {{path: /etc/c}}]\n\
                     ssh_authorized_keys: ['{KEY_B}']\nbasalt: {{version: 1, inference: {{threads: 4}}}}\n"
                )),
            ),
        ]
    }

    #[test]
    fn scalars_later_source_wins() {
        let m = merge(sources());
        let c = &m.config;
        assert_eq!(c.hostname.as_ref().unwrap().as_str(), "from-cmdline");
        assert_eq!(c.timezone.as_ref().unwrap().as_str(), "UTC");
        assert_eq!(names(m.sources_of("hostname")), ["cmdline"]);
        assert_eq!(names(m.sources_of("timezone")), ["image"]);
        assert!(m.sources_of("fqdn").is_empty());
        assert_eq!(names(&m.sources), ["image", "boot", "cmdline"]);
    }

    #[test]
    fn users_and_files_merge_by_name_and_path() {
        let m = merge(sources());
        let users: Vec<_> = m
            .config
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.shell.as_deref()))
            .collect();
        assert_eq!(users, [("ops", Some("/bin/bash")), ("app", None)]);
        let files: Vec<_> = m
            .config
            .write_files
            .iter()
            .map(|f| (f.path.as_str(), f.content.as_slice()))
            .collect();
        assert_eq!(
            files,
            [
                ("/etc/a", &b"image"[..]),
                ("/etc/b", b"boot"),
                ("/etc/c", b"")
            ]
        );
        assert_eq!(names(m.sources_of("users")), ["image", "boot"]);
        assert_eq!(names(m.sources_of("write_files")), ["image", "boot"]);
    }

    #[test]
    fn commands_concatenate_and_keys_unite() {
        let m = merge(sources());
        assert_eq!(
            m.config.runcmd,
            [Command::Shell("c1".into()), Command::Shell("c2".into())]
        );
        assert_eq!(m.config.bootcmd, [Command::Shell("b1".into())]);
        let keys: Vec<String> = m
            .config
            .ssh_authorized_keys
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys, [KEY_A, KEY_B]);
        assert_eq!(names(m.sources_of("runcmd")), ["image", "cmdline"]);
        assert_eq!(
            names(m.sources_of("ssh_authorized_keys")),
            ["image", "boot", "cmdline"]
        );
    }

    #[test]
    fn basalt_section_merges_per_key() {
        let m = merge(sources());
        let b = m.config.basalt.as_ref().unwrap();
        assert_eq!(b.alias.as_ref().unwrap().as_str(), "cmd");
        assert_eq!(b.inference.as_ref().unwrap().threads, Some(4));
        // Set to an empty list by the image and left alone since.
        assert_eq!(b.models.as_deref(), Some(&[][..]));
        assert_eq!(names(m.sources_of("basalt.alias")), ["cmdline"]);
        assert_eq!(names(m.sources_of("basalt.inference")), ["boot"]);
        assert_eq!(names(m.sources_of("basalt.models")), ["image"]);
        assert_eq!(names(m.sources_of("basalt")), ["image", "boot", "cmdline"]);
        assert!(m.sources_of("basalt.mesh").is_empty());
    }

    #[test]
    fn one_source_merges_to_itself_and_none_to_empty() {
        let c = cfg("hostname: solo\n");
        let m = merge(vec![(SourceKind::Url, "u".into(), c.clone())]);
        assert_eq!(m.config, c);
        let empty = merge(Vec::new());
        assert_eq!(empty.config, CloudConfig::default());
        assert!(empty.provenance.is_empty());
    }

    #[test]
    fn kinds_are_in_precedence_order() {
        let mut sorted = SourceKind::ALL;
        sorted.sort();
        assert_eq!(sorted, SourceKind::ALL);
        assert_eq!(SourceKind::ALL[0], SourceKind::ImageDefault);
        assert_eq!(SourceKind::ALL[4], SourceKind::Url);
        assert_eq!(SourceKind::NoCloud.to_string(), "nocloud");
    }
}
