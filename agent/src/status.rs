//! `basalt-agent status`: what image and slot this device runs, and what the
//! initrd found at boot.

use basalt_formats::boot::{BootInfo, BOOT_INFO_PATH};
use basalt_formats::release::{Release, RELEASE_PATH};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Status {
    pub hostname: String,
    /// The node's identity (its Ed25519 public key), once the service made it.
    pub node_id: Option<String>,
    pub release: Option<Release>,
    pub boot: Option<BootInfo>,
    /// What cloud-config provisioning did on this boot, with its errors.
    pub provision: Option<crate::provision::ProvisionStatus>,
    pub agent_version: &'static str,
    pub uptime_s: u64,
    /// Problems reading the above, each naming its file.
    pub errors: Vec<String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, errors: &mut Vec<String>) -> Option<T> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                None
            }
        },
        Err(e) => {
            errors.push(format!("{}: {e}", path.display()));
            None
        }
    }
}

/// Collects the status from the files under `root` (`/` on a device).
pub fn collect(root: &Path) -> Status {
    let mut errors = Vec::new();
    let release = read_json(
        &root.join(RELEASE_PATH.trim_start_matches('/')),
        &mut errors,
    );
    let boot = read_json(
        &root.join(BOOT_INFO_PATH.trim_start_matches('/')),
        &mut errors,
    );
    let uptime_s = std::fs::read_to_string(root.join("proc/uptime"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let provision = crate::provision::load_status(
        &root.join(crate::provision::STATE_DIR.trim_start_matches('/')),
    );
    let node_id = std::fs::read_to_string(
        root.join(crate::identity::DEVICE_IDENTITY_DIR.trim_start_matches('/'))
            .join(crate::identity::NODE_ID_FILE),
    )
    .ok()
    .map(|s| s.trim().to_string());
    Status {
        node_id,
        provision,
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        release,
        boot,
        agent_version: env!("CARGO_PKG_VERSION"),
        uptime_s,
        errors,
    }
}

impl Status {
    /// The one line the service prints when it is ready, which tests and
    /// operators watching a serial console wait for.
    pub fn ready_line(&self) -> String {
        let (name, version, board) = match &self.release {
            Some(r) => (r.name.as_str(), r.version.to_string(), r.board.to_string()),
            None => ("unknown", "unknown".to_string(), "unknown".to_string()),
        };
        let slot = self
            .boot
            .as_ref()
            .map(|b| {
                if b.live {
                    "live".to_string()
                } else {
                    b.slot.to_string()
                }
            })
            .unwrap_or_else(|| "?".into());
        format!("basalt-agent: ready name={name} version={version} board={board} slot={slot} hostname={}", self.hostname)
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        match &self.release {
            Some(r) => {
                out += &format!(
                    "image:    {} {} ({}, {})\n",
                    r.name, r.version, r.board, r.rootfs_type
                )
            }
            None => out += "image:    unknown\n",
        }
        out += &format!("hostname: {}\n", self.hostname);
        if let Some(id) = &self.node_id {
            out += &format!("node:     {id}\n");
        }
        if let Some(b) = &self.boot {
            out += &format!(
                "slot:     {} (root {}, data {})\n",
                b.slot, b.root_device, b.data_device
            );
            if let Some(g) = &b.data_grown {
                out += &format!(
                    "data:     grown from {} to {} bytes on this boot\n",
                    g.from_bytes, g.to_bytes
                );
            }
        }
        if let Some(p) = &self.provision {
            out += &format!(
                "config:   instance {}, {}{}\n",
                p.instance_id.as_deref().unwrap_or("-"),
                if p.config_current {
                    "current"
                } else {
                    "last good kept"
                },
                if p.once_done {
                    ""
                } else {
                    ", first-boot steps pending"
                }
            );
            for e in &p.errors {
                out += &format!("config error: {e}\n");
            }
        }
        out += &format!(
            "uptime:   {} s\nagent:    {}\n",
            self.uptime_s, self.agent_version
        );
        for e in &self.errors {
            out += &format!("error:    {e}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_errors_are_shown() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = collect(dir.path());
        assert!(!st.human().contains("config:"));
        st.provision = Some(crate::provision::ProvisionStatus {
            instance_id: Some("iid-1".into()),
            config_current: false,
            once_done: true,
            errors: vec!["CIDATA:user-data:3:1: unknown field `userz`".into()],
            ..Default::default()
        });
        let h = st.human();
        assert!(
            h.contains("config:   instance iid-1, last good kept\n"),
            "{h}"
        );
        assert!(
            h.contains("config error: CIDATA:user-data:3:1: unknown field `userz`\n"),
            "{h}"
        );
    }

    #[test]
    fn reads_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("usr/lib/basalt");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(
            lib.join("release.json"),
            r#"{"name":"demo","version":"1.2.3","board":"x86_64-uefi","arch":"amd64","rootfs_type":"squashfs","build_time":0}"#,
        )
        .unwrap();
        let s = collect(dir.path());
        assert_eq!(s.release.as_ref().unwrap().version.to_string(), "1.2.3");
        assert!(s.boot.is_none());
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].contains("run/basalt/boot.json"),
            "{:?}",
            s.errors
        );
        assert!(s
            .ready_line()
            .contains("version=1.2.3 board=x86_64-uefi slot=?"));
    }
}
