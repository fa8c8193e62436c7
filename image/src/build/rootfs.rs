//! The root file system: Debian packages assembled by mmdebstrap (cached as a
//! tarball keyed by every input), unpacked, then customised in place.

use crate::tools::{self, ToolError};
use basalt_formats::Arch;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the way a root file system is assembled changes, so old cache entries are not reused.
const RECIPE: &str = "basalt-rootfs-3";

/// Everything that decides what mmdebstrap produces.
#[derive(Debug, Clone)]
pub struct RootfsRequest {
    pub suite: String,
    pub mirror: String,
    pub components: Vec<String>,
    /// Further suites of the same mirror (`bookworm-backports`); packages
    /// from them are named `package/suite`.
    pub extra_suites: Vec<String>,
    pub arch: Arch,
    /// Sorted, deduplicated.
    pub packages: Vec<String>,
    pub source_date_epoch: u64,
}

impl RootfsRequest {
    /// The cache key: a hash over every input and the recipe version.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            RECIPE,
            &self.suite,
            &self.mirror,
            &self.components.join(","),
            self.arch.debian(),
            &self.packages.join(","),
            &self.source_date_epoch.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        // Only when present, so that keys of requests without them stay as they were.
        for suite in &self.extra_suites {
            h.update(b"suite:");
            h.update(suite.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..12])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the root file system has no kernel in /boot (is {0} in the package list?)")]
    NoKernel(String),
    #[error("the root file system has several kernels in /boot: {0}")]
    SeveralKernels(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Shell run by mmdebstrap after the essential packages: keeps the kernel
/// package's initramfs hook from building an initramfs we would throw away
/// (under qemu-user that alone takes many minutes). basalt makes its own initrd.
const NO_INITRAMFS_HOOK: &str = r#"chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.distrib --add /usr/sbin/update-initramfs && printf '#!/bin/sh\n# basalt builds its own initrd\nexit 0\n' > "$1/usr/sbin/update-initramfs" && chmod 755 "$1/usr/sbin/update-initramfs""#;

/// Returns the cached root file system tarball for `req`, running mmdebstrap
/// when it is missing or `rebuild` is set. Downloaded packages are kept in
/// `cache/apt/<arch>` and reused (apt checks them against the index).
pub fn obtain(
    req: &RootfsRequest,
    cache: &Path,
    rebuild: bool,
) -> Result<(PathBuf, bool), RootfsError> {
    let dir = cache.join("rootfs");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tar = dir.join(format!("{}-{}.tar", req.arch.debian(), req.key()));
    if tar.exists() && !rebuild {
        return Ok((tar, true));
    }
    let apt = cache.join("apt").join(req.arch.debian());
    std::fs::create_dir_all(&apt).map_err(io(&apt))?;
    let partial = tar.with_extension("tar.partial");
    let apt_s = apt.display().to_string();
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", req.source_date_epoch.to_string())
        .arg("--variant=essential")
        .arg(format!("--arch={}", req.arch.debian()))
        .arg(format!("--components={}", req.components.join(",")))
        .arg(format!("--include={}", req.packages.join(",")))
        .arg(format!("--essential-hook={NO_INITRAMFS_HOOK}"))
        // Documentation and translations have no place on an appliance.
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
        ])
        // Reuse downloaded packages between builds.
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {apt_s} /var/cache/apt/archives/"
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {apt_s}"
        ))
        .arg("--format=tar")
        .arg(&req.suite)
        .arg(&partial)
        .arg(&req.mirror);
    for suite in &req.extra_suites {
        cmd.arg(format!(
            "deb {} {suite} {}",
            req.mirror,
            req.components.join(" ")
        ));
    }
    tools::run(&mut cmd)?;
    std::fs::rename(&partial, &tar).map_err(io(&tar))?;
    Ok((tar, false))
}

/// Unpacks the tarball into `dir` (which must not exist), keeping owners,
/// modes and extended attributes.
pub fn unpack(tar: &Path, dir: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    tools::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(dir),
    )?;
    Ok(())
}

/// The kernel in `/boot`: (path, version).
pub fn find_kernel(root: &Path, kernel_package: &str) -> Result<(PathBuf, String), RootfsError> {
    let boot = root.join("boot");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&boot).map_err(io(&boot))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("vmlinuz-") {
            found.push((e.path(), ver.to_string()));
        }
    }
    match found.len() {
        0 => Err(RootfsError::NoKernel(kernel_package.to_string())),
        1 => Ok(found.remove(0)),
        _ => Err(RootfsError::SeveralKernels(
            found
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// `package=version` for every installed package, from dpkg's status file.
pub fn installed_packages(root: &Path) -> Result<Vec<String>, RootfsError> {
    let status = root.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&status).map_err(io(&status))?;
    Ok(parse_dpkg_status(&text))
}

pub fn parse_dpkg_status(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.push(format!("{n}={v}"));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RootfsRequest {
        RootfsRequest {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            components: vec!["main".into()],
            extra_suites: Vec::new(),
            arch: Arch::Amd64,
            packages: vec!["systemd".into(), "udev".into()],
            source_date_epoch: 1,
        }
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = req().key();
        assert_eq!(base, req().key());
        let mut r = req();
        r.packages.push("vim".into());
        assert_ne!(r.key(), base);
        let mut r = req();
        r.arch = Arch::Arm64;
        assert_ne!(r.key(), base);
        let mut r = req();
        r.extra_suites.push("bookworm-backports".into());
        assert_ne!(r.key(), base);
        let mut r = req();
        r.source_date_epoch = 2;
        assert_ne!(r.key(), base);
    }

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let text = "Package: b\nStatus: install ok installed\nVersion: 2\n\nPackage: a\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: c\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3:1.0-1\n";
        assert_eq!(parse_dpkg_status(text), vec!["b=2", "c=3:1.0-1"]);
    }
}
