//! What provisioning asks of the device, behind one trait: the real device
//! ([`System`]) and, in tests, a recording fake.

use basalt_formats::cloud_config::{Command, Ntp, SshPublicKey, User, WriteFile};
use log::{info, warn};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub type HostResult = Result<(), String>;

pub trait Host {
    fn set_hostname(&mut self, name: &str) -> HostResult;
    fn set_timezone(&mut self, zone: &str) -> HostResult;
    fn set_ntp(&mut self, ntp: &Ntp) -> HostResult;
    fn write_file(&mut self, file: &WriteFile) -> HostResult;
    fn ensure_user(&mut self, user: &User) -> HostResult;
    fn authorize_keys(&mut self, user: &str, keys: &[SshPublicKey]) -> HostResult;
    fn run(&mut self, command: &Command) -> HostResult;
}

/// The running device: systemd's hostnamed and timedated over D-Bus, shadow
/// utilities for accounts, plain files for the rest. `root` is `/` except in tests.
#[derive(Debug)]
pub struct System {
    pub root: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        System {
            root: PathBuf::from("/"),
        }
    }
}

fn run_tool(argv: &[&str]) -> HostResult {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn dbus_call(
    service: &str,
    path: &str,
    interface: &str,
    method: &str,
    body: &(&str, bool),
) -> HostResult {
    let conn = zbus::blocking::Connection::system()
        .map_err(|e| format!("connecting to the system bus: {e}"))?;
    conn.call_method(Some(service), path, Some(interface), method, body)
        .map_err(|e| format!("{interface}.{method}: {e}"))?;
    Ok(())
}

fn chown(path: &Path, user: &str, group: &str) -> HostResult {
    let uid = nix::unistd::User::from_name(user)
        .map_err(|e| format!("looking up user {user}: {e}"))?
        .ok_or_else(|| format!("no user {user}"))?
        .uid;
    let gid = nix::unistd::Group::from_name(group)
        .map_err(|e| format!("looking up group {group}: {e}"))?
        .ok_or_else(|| format!("no group {group}"))?
        .gid;
    nix::unistd::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

impl System {
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

impl Host for System {
    fn set_hostname(&mut self, name: &str) -> HostResult {
        let short = name.split('.').next().unwrap_or(name);
        match dbus_call(
            "org.freedesktop.hostname1",
            "/org/freedesktop/hostname1",
            "org.freedesktop.hostname1",
            "SetStaticHostname",
            &(short, false),
        ) {
            Ok(()) => {
                // The static name becomes the running name too.
                let _ = dbus_call(
                    "org.freedesktop.hostname1",
                    "/org/freedesktop/hostname1",
                    "org.freedesktop.hostname1",
                    "SetHostname",
                    &(short, false),
                );
                info!("host name set to {short} through systemd-hostnamed");
                Ok(())
            }
            Err(e) => {
                warn!("{e}; writing /etc/hostname directly");
                crate::provision::atomic_write(
                    &self.path("/etc/hostname"),
                    format!("{short}\n").as_bytes(),
                    0o644,
                )
                .map_err(|e| format!("/etc/hostname: {e}"))?;
                nix::unistd::sethostname(short).map_err(|e| format!("sethostname: {e}"))
            }
        }
    }

    fn set_timezone(&mut self, zone: &str) -> HostResult {
        if !self.path(&format!("/usr/share/zoneinfo/{zone}")).is_file() {
            return Err(format!(
                "unknown time zone (no /usr/share/zoneinfo/{zone}; is tzdata installed?)"
            ));
        }
        dbus_call(
            "org.freedesktop.timedate1",
            "/org/freedesktop/timedate1",
            "org.freedesktop.timedate1",
            "SetTimezone",
            &(zone, false),
        )
    }

    fn set_ntp(&mut self, ntp: &Ntp) -> HostResult {
        let dir = self.path("/etc/systemd/timesyncd.conf.d");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let names: Vec<&str> = ntp
            .servers
            .iter()
            .chain(&ntp.pools)
            .map(String::as_str)
            .collect();
        let text = format!(
            "# Written by basalt-agent from cloud-config (ntp).\n[Time]\nNTP={}\n",
            names.join(" ")
        );
        crate::provision::atomic_write(&dir.join("basalt.conf"), text.as_bytes(), 0o644)
            .map_err(|e| format!("timesyncd.conf.d/basalt.conf: {e}"))?;
        let set = dbus_call(
            "org.freedesktop.timedate1",
            "/org/freedesktop/timedate1",
            "org.freedesktop.timedate1",
            "SetNTP",
            &("", false),
        );
        drop(set);
        let action = if ntp.enabled { "restart" } else { "stop" };
        run_tool(&[
            "systemctl",
            "--no-block",
            action,
            "systemd-timesyncd.service",
        ])
    }

    fn write_file(&mut self, f: &WriteFile) -> HostResult {
        let path = self.path(f.path.as_str());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        if f.append {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            file.write_all(&f.content)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            file.sync_all()
                .map_err(|e| format!("{}: {e}", path.display()))?;
        } else {
            crate::provision::atomic_write(&path, &f.content, f.mode)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        chown(&path, f.owner.user.as_str(), f.owner.group.as_str())
    }

    fn ensure_user(&mut self, u: &User) -> HostResult {
        let name = u.name.as_str();
        for g in &u.groups {
            run_tool(&["groupadd", "-f", g.as_str()])?;
        }
        let groups: Vec<&str> = u.groups.iter().map(|g| g.as_str()).collect();
        let groups = groups.join(",");
        let exists = nix::unistd::User::from_name(name)
            .map_err(|e| e.to_string())?
            .is_some();
        let mut argv: Vec<&str> = if exists {
            vec!["usermod"]
        } else {
            vec!["useradd", "--create-home", "--user-group"]
        };
        if !groups.is_empty() {
            // usermod replaces the supplementary groups unless told to append; useradd has no --append.
            if exists {
                argv.push("--append");
            }
            argv.extend(["--groups", &groups]);
        }
        if let Some(shell) = &u.shell {
            argv.extend(["--shell", shell]);
        }
        if let Some(gecos) = &u.gecos {
            argv.extend(["--comment", gecos]);
        }
        if let Some(hash) = &u.passwd {
            argv.extend(["--password", hash.as_str()]);
        }
        if exists && argv.len() == 1 {
            // Nothing to change on an existing account.
        } else {
            argv.push(name);
            run_tool(&argv)?;
        }
        if u.lock_passwd {
            run_tool(&["usermod", "--lock", name])?;
        }
        if !u.sudo.is_empty() {
            let dir = self.path("/etc/sudoers.d");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let rules: String = u.sudo.iter().map(|r| format!("{name} {r}\n")).collect();
            crate::provision::atomic_write(
                &dir.join(format!("90-basalt-{name}")),
                rules.as_bytes(),
                0o440,
            )
            .map_err(|e| format!("sudoers.d: {e}"))?;
        }
        if !u.ssh_authorized_keys.is_empty() {
            self.authorize_keys(name, &u.ssh_authorized_keys)?;
        }
        Ok(())
    }

    fn authorize_keys(&mut self, user: &str, keys: &[SshPublicKey]) -> HostResult {
        let pw = nix::unistd::User::from_name(user)
            .map_err(|e| format!("looking up {user}: {e}"))?
            .ok_or_else(|| format!("no user {user}"))?;
        let dir = self.path(&pw.dir.join(".ssh").display().to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        let file = dir.join("authorized_keys");
        let mut lines: Vec<String> = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        for k in keys {
            let line = k.to_string();
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        let text = lines.join("\n") + "\n";
        crate::provision::atomic_write(&file, text.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let group = nix::unistd::Group::from_gid(pw.gid)
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_else(|| user.to_string());
        chown(&dir, user, &group)?;
        chown(&file, user, &group)
    }

    fn run(&mut self, command: &Command) -> HostResult {
        let argv = command.argv();
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        for line in text.lines().take(200) {
            info!("{program}: {line}");
        }
        if out.status.success() {
            Ok(())
        } else {
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Err(format!(
                "{} exited with {}{}",
                argv.join(" "),
                out.status,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    )
                }
            ))
        }
    }
}
