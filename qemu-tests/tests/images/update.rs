//! Signed A/B updates under QEMU: refusals that leave the device as it was,
//! an update that commits, and one that fails its health checks and is
//! rolled back by the boot loader by itself.

use basalt::build::SpecSource;
use basalt::bundle_cmd;
use basalt_formats::BoardId;
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The debug image at another version, with extra built-in or path overlays.
pub(crate) fn version_image(version: &str, extra_overlay: Option<&Path>) -> Built {
    version_image_with(version, extra_overlay, &[])
}

/// [`version_image`] with extra Debian packages.
pub(crate) fn version_image_with(
    version: &str,
    extra_overlay: Option<&Path>,
    packages: &[&str],
) -> Built {
    cached_image(&format!("debug-x86_64-{version}"), || {
        let dir = work_dir().join(format!("specs/update-{version}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut overlays = "  - base\n  - debug-console\n".to_string();
        if let Some(o) = extra_overlay {
            overlays += &format!("  - {}\n", o.display());
        }
        let mut package_list = "  - sudo\n".to_string();
        for p in packages {
            package_list += &format!("  - {p}\n");
        }
        let spec = basalt::assets::DEFAULT_SPEC
            .replace("version: 0.1.0", &format!("version: {version}"))
            .replace("  - base\n", &overlays)
            .replace("  - sudo\n", &package_list);
        assert!(packages
            .iter()
            .all(|p| spec.contains(&format!("  - {p}\n"))));
        std::fs::write(dir.join("spec.yaml"), spec).unwrap();
        build_image(&options(
            BoardId::X86_64Uefi,
            SpecSource::File(dir.join("spec.yaml")),
            dir.join("out"),
        ))
    })
}

pub(crate) fn make_bundle(image: &Path, key: &Path, out: &Path) -> PathBuf {
    bundle_cmd::bundle(&bundle_cmd::BundleOptions {
        image: image.to_path_buf(),
        key: key.to_path_buf(),
        min_version: None,
        out: Some(out.to_path_buf()),
        delta_from: None,
        created: 1_700_000_000,
    })
    .unwrap_or_else(|e| panic!("bundling {}: {e:#}", image.display()));
    out.to_path_buf()
}

/// A FAT "USB stick" holding `files`.
pub(crate) fn stick(path: &Path, files: &[PathBuf]) {
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let size_kib = (total / 1024) * 11 / 10 + 65536;
    let _ = std::fs::remove_file(path);
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "BUNDLES", "-C"])
        .arg(path)
        .arg(size_kib.to_string()));
    for f in files {
        ok(Command::new("mcopy").arg("-i").arg(path).arg(f).arg("::/"));
    }
}

fn status_json(vm: &mut basalt::qemu::Vm) -> serde_json::Value {
    let out = vm
        .run_ok("basalt-agent update status --json", Duration::from_secs(60))
        .unwrap();
    serde_json::from_str(&out[out.find('{').expect("JSON")..]).unwrap()
}

fn entries(vm: &mut basalt::qemu::Vm) -> String {
    vm.run_ok(
        "ls /efi/loader/entries | sort | tr '\\n' ' '",
        Duration::from_secs(60),
    )
    .unwrap()
}

/// Boots `image` (0.1.0, slot A) with a CIDATA volume that names `host`
/// and trusts `public_key` for updates, and `stick` as a second disk
/// mounted on /run/stick; waits for the login prompt.
fn update_vm(
    name: &str,
    image: &Path,
    host: &str,
    public_key: &str,
    stick: &Path,
) -> basalt::qemu::Vm {
    let mut cfg = vm_config(BoardId::X86_64Uefi, image, name);
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let cidata = cfg.state_dir.join("cidata.img");
    cidata_image(
        &cidata,
        &format!(
            "#cloud-config\nhostname: {host}\nbasalt:\n  version: 1\n  update:\n    channel: http://updates.invalid/\n    trusted_keys: [\"{public_key}\"]\n",
        ),
        &format!("instance-id: iid-{host}\n"),
    );
    cfg.extra_args = extra_disk("cidata", &cidata);
    cfg.extra_args.extend(extra_disk("stick", stick));
    let t = Duration::from_secs(60);
    let (mut vm, line) = boot_to_ready(&cfg);
    assert!(
        line.contains("version=0.1.0") && line.contains("slot=a"),
        "{line}"
    );
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for(&format!("root@{host}"), t))
        .unwrap();
    vm.run_ok("mkdir -p /run/stick && mount -o ro /dev/vdc /run/stick", t)
        .unwrap();
    vm
}

/// Reboots into the armed slot: the ready line must name `version` in
/// `slot`; waits for the login prompt and mounts the stick again.
fn reboot_into(vm: &mut basalt::qemu::Vm, version: &str, slot: &str, host: &str) {
    let (t, long) = (Duration::from_secs(60), Duration::from_secs(600));
    let mark = vm.mark();
    vm.send("systemctl reboot\n").unwrap();
    let line = vm
        .wait_for_since(mark, "basalt-agent: ready", long)
        .unwrap();
    assert!(
        line.contains(&format!("version={version}")) && line.contains(&format!("slot={slot}")),
        "{line}"
    );
    vm.wait_for_since(mark, "login:", t)
        .or_else(|_| vm.wait_for_since(mark, &format!("root@{host}"), t))
        .unwrap();
    vm.run_ok("mkdir -p /run/stick && mount -o ro /dev/vdc /run/stick", t)
        .unwrap();
}

#[test]
fn x86_64_update_refusals_commit_and_rollback() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the update test");
        return;
    }
    let work = work_dir().join("update");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("keys")).unwrap();
    let release = bundle_cmd::keygen(&work.join("keys/release")).unwrap();
    bundle_cmd::keygen(&work.join("keys/stranger")).unwrap();
    let (release_key, stranger_key) = (
        work.join("keys/release.key"),
        work.join("keys/stranger.key"),
    );

    // v0.3.0 fails a health check of its own.
    let bad = work.join("bad-health");
    std::fs::create_dir_all(bad.join("usr/lib/basalt")).unwrap();
    std::fs::write(
        bad.join("usr/lib/basalt/cloud-config.yaml"),
        "#cloud-config\nbasalt:\n  version: 1\n  health:\n    checks:\n      - name: always-fails\n        command: [/bin/false]\n",
    )
    .unwrap();
    let v1 = debug_image(BoardId::X86_64Uefi);
    let v2 = version_image("0.2.0", None);
    let v3 = version_image("0.3.0", Some(&bad));

    let b = |name: &str| work.join(name);
    let bundles = vec![
        make_bundle(&v1.image, &release_key, &b("v1.basalt")),
        make_bundle(&v2.image, &release_key, &b("v2.basalt")),
        make_bundle(&v3.image, &release_key, &b("v3.basalt")),
        make_bundle(&v3.image, &stranger_key, &b("untrusted.basalt")),
    ];
    let v3_bytes = std::fs::read(b("v3.basalt")).unwrap();
    let mut tampered = v3_bytes.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x40;
    std::fs::write(b("tampered.basalt"), tampered).unwrap();
    std::fs::write(b("truncated.basalt"), &v3_bytes[..v3_bytes.len() * 3 / 5]).unwrap();
    let mut files = bundles.clone();
    files.extend([b("tampered.basalt"), b("truncated.basalt")]);
    stick(&b("stick.img"), &files);

    let t = Duration::from_secs(60);
    let long = Duration::from_secs(600);
    let mut vm = update_vm(
        "x86_64-update",
        &v1.image,
        "updater",
        &release.public_key.to_string(),
        &b("stick.img"),
    );
    vm.run_ok("for i in $(seq 90); do ls /efi/loader/entries | grep -qx basalt-a.conf && break; sleep 1; done", Duration::from_secs(120))
        .unwrap();
    vm.run_ok("echo kept > /etc/basalt-update-test && sync", t)
        .unwrap();
    let machine_id = vm.run_ok("cat /etc/machine-id", t).unwrap();
    let before = entries(&mut vm);
    assert!(before.contains("basalt-a.conf"), "{before}");

    // (c) refused, each with the running system unchanged.
    for (file, expect) in [
        ("untrusted.basalt", "signature"),
        ("tampered.basalt", "rootfs"),
        ("truncated.basalt", "retry"),
    ] {
        let (status, out) = vm
            .run(
                &format!("basalt-agent update stage /run/stick/{file}"),
                long,
            )
            .unwrap();
        assert_ne!(status, 0, "{file} was accepted:\n{out}");
        assert!(
            out.to_lowercase().contains(expect),
            "{file}: expected {expect:?} in:\n{out}"
        );
        let now = entries(&mut vm);
        assert!(
            now.contains("basalt-a.conf"),
            "{file} touched the running slot's entry: {now}"
        );
        let st = status_json(&mut vm);
        assert_eq!(st["running_slot"], "a", "{st}");
    }

    // (a) v0.2.0 commits.
    vm.run_ok("basalt-agent update stage /run/stick/v2.basalt", long)
        .unwrap();
    let applied = std::time::Instant::now();
    vm.run_ok("basalt-agent update apply", long).unwrap();
    assert!(entries(&mut vm).contains("basalt-b+3.conf"));
    reboot_into(&mut vm, "0.2.0", "b", "updater");
    vm.run_ok("for i in $(seq 90); do ls /efi/loader/entries | grep -qx basalt-b.conf && break; sleep 1; done; ls /efi/loader/entries | grep -qx basalt-b.conf", Duration::from_secs(120))
        .unwrap();
    // Within a second of the entry's rename (the loop above polls once a second).
    eprintln!(
        "update: 0.2.0 committed {:.1} s after `update apply` began (QEMU TCG)",
        applied.elapsed().as_secs_f64()
    );
    // A downgrade is refused.
    let (status, out) = vm
        .run("basalt-agent update check /run/stick/v1.basalt", t)
        .unwrap();
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("refused"), "{out}");

    // (b) v0.3.0 fails its health check on every try; the boot loader goes back to 0.2.0.
    vm.run_ok(
        "basalt-agent update stage /run/stick/v3.basalt && basalt-agent update apply",
        long,
    )
    .unwrap();
    let mark = vm.mark();
    vm.send("systemctl reboot\n").unwrap();
    vm.wait_for_since(mark, "version=0.3.0 board=x86_64-uefi slot=a", long)
        .unwrap();
    let line = vm
        .wait_for_since(
            mark,
            "version=0.2.0 board=x86_64-uefi slot=b",
            Duration::from_secs(900),
        )
        .unwrap();
    assert!(line.contains("hostname=updater"), "{line}");
    let tries = vm.console()[mark..]
        .matches("version=0.3.0 board=x86_64-uefi slot=a")
        .count();
    assert_eq!(tries, 3, "0.3.0 should have been tried three times");
    vm.wait_for_since(mark, "login:", t).ok();
    let st = status_json(&mut vm);
    assert_eq!(st["state"]["failed"][0]["version"], "0.3.0", "{st}");
    assert_eq!(st["running_slot"], "b", "{st}");
    // Data survives updates and rollbacks.
    assert_eq!(
        vm.run_ok("cat /etc/basalt-update-test", t).unwrap().trim(),
        "kept"
    );
    assert_eq!(vm.run_ok("cat /etc/machine-id", t).unwrap(), machine_id);
}

/// The size of `path` in bytes.
fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn x86_64_delta_update_for_a_one_package_change() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the delta update test");
        return;
    }
    let work = work_dir().join("delta");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("keys")).unwrap();
    let release = bundle_cmd::keygen(&work.join("keys/release")).unwrap();
    let key = work.join("keys/release.key");
    let v1 = debug_image(BoardId::X86_64Uefi);
    // One package more than 0.1.0 (less), and a new version.
    let v2 = version_image_with("0.1.1", None, &["less"]);
    let full = make_bundle(&v2.image, &key, &work.join("full.basalt"));
    let delta = bundle_cmd::bundle(&bundle_cmd::BundleOptions {
        image: v2.image.clone(),
        key: key.clone(),
        min_version: None,
        out: Some(work.join("delta.basalt")),
        delta_from: Some(v1.image.clone()),
        created: 1_700_000_000,
    })
    .unwrap_or_else(|e| panic!("delta bundle: {e:#}"));
    let (full_size, delta_size) = (size(&full), size(&delta.bundle));
    eprintln!(
        "delta: one-package change 0.1.0 -> 0.1.1: full bundle {full_size} bytes, delta {delta_size} bytes ({:.2} %)",
        100.0 * delta_size as f64 / full_size as f64
    );
    assert!(
        delta_size * 5 <= full_size,
        "the delta ({delta_size} bytes) is more than a fifth of the full bundle ({full_size})"
    );
    let rootfs = delta
        .manifest
        .payload(basalt_formats::bundle::PayloadName::Rootfs)
        .unwrap()
        .clone();
    stick(
        &work.join("stick.img"),
        &[delta.bundle.clone(), full.clone()],
    );

    let t = Duration::from_secs(60);
    let long = Duration::from_secs(600);
    let mut vm = update_vm(
        "x86_64-delta",
        &v1.image,
        "delta",
        &release.public_key.to_string(),
        &work.join("stick.img"),
    );
    let (status, _) = vm.run("command -v less", t).unwrap();
    assert_ne!(status, 0, "0.1.0 already has less");
    let check = vm
        .run_ok("basalt-agent update check /run/stick/delta.basalt", long)
        .unwrap();
    assert!(check.contains("delta from 0.1.0"), "{check}");
    let started = std::time::Instant::now();
    vm.run_ok("basalt-agent update stage /run/stick/delta.basalt", long)
        .unwrap();
    eprintln!(
        "delta: staged in {:.1} s (QEMU TCG)",
        started.elapsed().as_secs_f64()
    );
    // The slot the delta made is the full bundle's, byte for byte.
    let sum = vm
        .run_ok(
            &format!(
                "head -c {} /dev/disk/by-partlabel/root-b | sha256sum",
                rootfs.size
            ),
            long,
        )
        .unwrap();
    let full_manifest =
        basalt_formats::bundle::stream::BundleReader::new(std::fs::File::open(&full).unwrap())
            .unwrap()
            .without_verification()
            .unwrap()
            .manifest()
            .clone();
    let full_rootfs = full_manifest
        .payload(basalt_formats::bundle::PayloadName::Rootfs)
        .unwrap();
    assert_eq!(full_rootfs.sha256, rootfs.sha256);
    assert!(
        sum.contains(&full_rootfs.sha256.to_string()),
        "slot b: {sum}, the full bundle's root: {}",
        full_rootfs.sha256
    );
    vm.run_ok("basalt-agent update apply", long).unwrap();
    reboot_into(&mut vm, "0.1.1", "b", "delta");
    let less = vm.run_ok("less --version | head -1", t).unwrap();
    assert!(less.contains("less "), "{less}");
}
