//! The basalt initrd: `basalt-agent` as `/init`, the shared libraries it
//! links, the kernel modules the board needs (with their dependencies, in
//! load order) and `/etc/basalt/initrd.json`. Written as a newc cpio with
//! fixed owners and times, compressed with zstd, so the same inputs give the
//! same bytes.

use basalt_formats::initrd::{InitrdConfig, INITRD_CONFIG_PATH};
use basalt_formats::Arch;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("{path} is built for {found}, but the board needs {arch}; build the agent with `cargo build --release -p basalt-agent --target {target}`")]
    WrongArch {
        path: PathBuf,
        found: String,
        arch: String,
        target: String,
    },
    #[error("library {lib} (needed by {by}) is not in the root file system")]
    MissingLibrary { lib: String, by: String },
    #[error(
        "kernel {kver} has no module {module} and does not build it in (board file initrd_modules)"
    )]
    MissingModule { kver: String, module: String },
    #[error("{path}: symbolic link loop")]
    LinkLoop { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitrdError + '_ {
    move |source| InitrdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves `path` (absolute, as seen inside `root`) to a real file under
/// `root`, following symbolic links the way they resolve on the device.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, InitrdError> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        cur.push(comp);
        let host = root.join(cur.join("/"));
        if let Ok(target) = std::fs::read_link(&host) {
            hops += 1;
            if hops > 40 {
                return Err(InitrdError::LinkLoop { path: host });
            }
            cur.pop();
            let t = target.to_string_lossy().into_owned();
            if t.starts_with('/') {
                cur.clear();
            }
            pending.extend(
                t.split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                    .map(String::from),
            );
        }
    }
    Ok(root.join(cur.join("/")))
}

/// Reads an ELF file's interpreter and needed libraries, checking its machine.
fn elf_needs(path: &Path, arch: Arch) -> Result<(Option<String>, Vec<String>), InitrdError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| InitrdError::NotElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let want = match arch {
        Arch::Amd64 => goblin::elf::header::EM_X86_64,
        Arch::Arm64 => goblin::elf::header::EM_AARCH64,
    };
    if elf.header.e_machine != want {
        return Err(InitrdError::WrongArch {
            path: path.to_path_buf(),
            found: goblin::elf::header::machine_to_str(elf.header.e_machine).to_string(),
            arch: arch.debian().to_string(),
            target: arch.rust_target().to_string(),
        });
    }
    Ok((
        elf.interpreter.map(String::from),
        elf.libraries.iter().map(|s| s.to_string()).collect(),
    ))
}

/// Checks that `agent` is an ELF executable for `arch`.
pub fn check_agent(agent: &Path, arch: Arch) -> Result<(), InitrdError> {
    elf_needs(agent, arch).map(|_| ())
}

/// The files an ELF program needs, as (path in initrd, path on the build host).
fn elf_closure(
    root: &Path,
    arch: Arch,
    program: &Path,
) -> Result<BTreeMap<String, PathBuf>, InitrdError> {
    let libdirs = [
        format!("/lib/{}", arch.multiarch()),
        format!("/usr/lib/{}", arch.multiarch()),
        "/lib".to_string(),
        "/usr/lib".to_string(),
    ];
    let mut out = BTreeMap::new();
    let mut queue = vec![(program.to_path_buf(), program.display().to_string())];
    while let Some((file, name)) = queue.pop() {
        let (interp, libs) = elf_needs(&file, arch)?;
        if let Some(i) = interp {
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(i) {
                let host = resolve_in_root(root, slot.key())?;
                if !host.is_file() {
                    return Err(InitrdError::MissingLibrary {
                        lib: slot.key().clone(),
                        by: name.clone(),
                    });
                }
                slot.insert(host);
            }
        }
        for lib in libs {
            let in_initrd = format!("/lib/{}/{lib}", arch.multiarch());
            if out.contains_key(&in_initrd) {
                continue;
            }
            let host = libdirs
                .iter()
                .map(|d| resolve_in_root(root, &format!("{d}/{lib}")))
                .find(|p| p.as_ref().is_ok_and(|p| p.is_file()))
                .ok_or_else(|| InitrdError::MissingLibrary {
                    lib: lib.clone(),
                    by: name.clone(),
                })??;
            out.insert(in_initrd, host.clone());
            queue.push((host, lib));
        }
    }
    Ok(out)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The kernel's module index, from `modules.dep`, `modules.softdep`,
/// `modules.alias` and `modules.builtin`.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// name → (path relative to the modules directory, hard dependencies by name)
    modules: HashMap<String, (String, Vec<String>)>,
    softdeps: HashMap<String, Vec<String>>,
    aliases: HashMap<String, String>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    pub fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> ModuleIndex {
        let mut idx = ModuleIndex::default();
        for line in dep.lines() {
            if let Some((m, deps)) = line.split_once(':') {
                let deps = deps.split_whitespace().map(module_name).collect();
                idx.modules.insert(module_name(m), (m.to_string(), deps));
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(m) = words.next() else { continue };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    _ if in_pre => pre.push(w.replace('-', "_")),
                    _ => {}
                }
            }
            idx.softdeps.insert(m.replace('-', "_"), pre);
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                idx.aliases
                    .entry(a.to_string())
                    .or_insert_with(|| m.replace('-', "_"));
            }
        }
        idx.builtin = builtin.lines().map(module_name).collect();
        idx
    }

    pub fn read(modules_dir: &Path) -> Result<ModuleIndex, InitrdError> {
        let read = |name: &str| -> Result<String, InitrdError> {
            let p = modules_dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "modules.dep" => {
                    Ok(String::new())
                }
                Err(e) => Err(InitrdError::Io { path: p, source: e }),
            }
        };
        Ok(ModuleIndex::parse(
            &read("modules.dep")?,
            &read("modules.softdep")?,
            &read("modules.alias")?,
            &read("modules.builtin")?,
        ))
    }

    /// Module files for `wanted` and everything they depend on, each after
    /// its dependencies. Built-in modules are skipped.
    pub fn load_order(&self, kver: &str, wanted: &[String]) -> Result<Vec<String>, InitrdError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            let name = w.replace('-', "_");
            let name = if self.modules.contains_key(&name) || self.builtin.contains(&name) {
                name
            } else if let Some(a) = self.aliases.get(&name) {
                a.clone()
            } else {
                return Err(InitrdError::MissingModule {
                    kver: kver.to_string(),
                    module: w.clone(),
                });
            };
            self.visit(&name, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        for pre in self.softdeps.get(name).into_iter().flatten() {
            let pre = self
                .aliases
                .get(pre)
                .cloned()
                .unwrap_or_else(|| pre.clone());
            if self.modules.contains_key(&pre) {
                self.visit(&pre, seen, order);
            }
        }
        if let Some((path, deps)) = self.modules.get(name) {
            // modules.dep lists the deepest dependency last: load from the end.
            for d in deps.iter().rev() {
                self.visit(d, seen, order);
            }
            order.push(path.clone());
        }
    }
}

/// What goes into an initrd.
#[derive(Debug)]
pub struct InitrdInputs<'a> {
    pub root: &'a Path,
    pub arch: Arch,
    pub agent: &'a Path,
    pub modules: &'a [String],
    pub config: InitrdConfig,
    pub mtime: u64,
}

/// Builds the compressed initrd. Returns the bytes and the final config
/// (with the module list filled in).
pub fn build(inputs: InitrdInputs<'_>) -> Result<(Vec<u8>, InitrdConfig), InitrdError> {
    let mut config = inputs.config;
    let kver = config.kernel_version.clone();
    let moddir_rel = format!("/usr/lib/modules/{kver}");
    let moddir = inputs.root.join(moddir_rel.trim_start_matches('/'));
    let index = ModuleIndex::read(&moddir)?;
    let order = index.load_order(&kver, inputs.modules)?;
    config.modules = order.iter().map(|m| format!("{moddir_rel}/{m}")).collect();

    // path in initrd → content source
    let mut files: BTreeMap<String, Source> = BTreeMap::new();
    files.insert(
        "/usr/bin/basalt-agent".into(),
        Source::Host(inputs.agent.to_path_buf(), 0o755),
    );
    for (dst, src) in elf_closure(inputs.root, inputs.arch, inputs.agent)? {
        files.insert(dst, Source::Host(src, 0o755));
    }
    for m in &config.modules {
        files.insert(
            m.clone(),
            Source::Host(inputs.root.join(m.trim_start_matches('/')), 0o644),
        );
    }
    let json = serde_json::to_vec_pretty(&config).expect("config serialises");
    files.insert(INITRD_CONFIG_PATH.into(), Source::Bytes(json, 0o644));

    let mut dirs: BTreeSet<String> = [
        "/dev", "/proc", "/sys", "/run", "/sysroot", "/usr/bin", "/etc",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for f in files.keys() {
        let mut p = Path::new(f).parent();
        while let Some(d) = p {
            if d != Path::new("/") {
                dirs.insert(d.display().to_string());
            }
            p = d.parent();
        }
    }
    let mut cpio = Vec::new();
    let mtime = inputs.mtime as u32;
    let mut ino = 1u32;
    let mut entry = |name: &str, mode: u32| {
        ino += 1;
        cpio::newc::Builder::new(name.trim_start_matches('/'))
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(1)
            .mtime(mtime)
    };
    for d in &dirs {
        entry(d, 0o040755)
            .write(&mut cpio, 0)
            .finish()
            .map_err(io(Path::new(d)))?;
    }
    // The console, so PID 1 has somewhere to write before /dev is mounted.
    entry("/dev/console", 0o020600)
        .rdev_major(5)
        .rdev_minor(1)
        .write(&mut cpio, 0)
        .finish()
        .map_err(io(Path::new("/dev/console")))?;
    let target = b"usr/bin/basalt-agent";
    let mut w = entry("/init", 0o120777).write(&mut cpio, target.len() as u32);
    w.write_all(target).map_err(io(Path::new("/init")))?;
    w.finish().map_err(io(Path::new("/init")))?;
    for (name, src) in &files {
        let (bytes, mode) = match src {
            Source::Host(p, mode) => (std::fs::read(p).map_err(io(p))?, *mode),
            Source::Bytes(b, mode) => (b.clone(), *mode),
        };
        let mut w = entry(name, 0o100000 | mode).write(&mut cpio, bytes.len() as u32);
        w.write_all(&bytes).map_err(io(Path::new(name)))?;
        w.finish().map_err(io(Path::new(name)))?;
    }
    cpio::newc::trailer(&mut cpio).map_err(io(Path::new("TRAILER!!!")))?;
    let compressed = zstd::stream::encode_all(&cpio[..], 12).map_err(io(Path::new("initrd")))?;
    Ok((compressed, config))
}

enum Source {
    Host(PathBuf, u32),
    Bytes(Vec<u8>, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\nkernel/crypto/crc32c_generic.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\nkernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(
            DEP,
            "softdep ext4 pre: crc32c\n",
            "alias crc32c crc32c_generic\nalias fs-squashfs squashfs\n",
            "kernel/fs/squashfs/squashfs.ko\n",
        )
    }

    #[test]
    fn dependencies_come_first() {
        let order = index()
            .load_order(
                "6.1",
                &["virtio_blk".into(), "ext4".into(), "squashfs".into()],
            )
            .unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/crypto/crc32c_generic.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_is_named() {
        let e = index().load_order("6.1", &["nvmf".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel 6.1 has no module nvmf and does not build it in (board file initrd_modules)"
        );
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::write(
            r.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            b"x",
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/lib64", r.join("lib64")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            r.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        let p = resolve_in_root(r, "/lib64/ld-linux-x86-64.so.2").unwrap();
        assert_eq!(p, r.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
    }
}
