//! Signed bundles made from a small synthetic image: `keygen`, `bundle`,
//! `sign`, `inspect` and `channel` through the library and through the binary.

use basalt::build::{disk, esp};
use basalt::bundle_cmd::{self, BundleOptions, CheckStatus, InspectOptions};
use basalt_formats::bundle::stream::BundleReader;
use basalt_formats::bundle::{PayloadName, PublicKey, TrustPolicy};
use basalt_formats::layout::DiskLayout;
use basalt_formats::record::BuildRecord;
use basalt_formats::spec::{RootfsType, Sizes};
use basalt_formats::{Arch, BoardId, ByteSize, Slot};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;

const EPOCH: u64 = 1_700_000_000;

/// Bytes that are not all alike, so compression and flipped bytes matter.
fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Half noise, half runs: compressible, but not trivially.
            if i % 2048 < 1024 {
                x as u8
            } else {
                (i / 4096) as u8
            }
        })
        .collect()
}

struct Image {
    img: PathBuf,
    rootfs: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

/// A GPT image with a FAT ESP (slot A's kernel and initrd, a different slot
/// B), a fake root file system image in both root slots, and its build record.
fn make_image(dir: &Path) -> Image {
    make_image_at(dir, "1.2.0", |_| {})
}

/// [`make_image`] at `version`, its root file system edited by `edit`.
fn make_image_at(dir: &Path, version: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Image {
    let sizes = Sizes {
        esp: ByteSize::mib(4),
        slot: ByteSize::mib(2),
        data: ByteSize::mib(1),
    };
    let mut rootfs = b"hsqs".to_vec();
    rootfs.extend(noise(1, 700_001));
    edit(&mut rootfs);
    let kernel = noise(2, 150_000);
    let initrd = noise(3, 90_000);
    let slots: Vec<esp::SlotBoot> = Slot::ALL
        .into_iter()
        .map(|slot| esp::SlotBoot {
            slot,
            version: version.into(),
            title: format!("test (slot {slot})"),
            kernel: if slot == Slot::A {
                kernel.clone()
            } else {
                vec![0xbb; 1000]
            },
            initrd: if slot == Slot::A {
                initrd.clone()
            } else {
                vec![0xcc; 1000]
            },
            cmdline: format!("basalt.slot={slot}"),
        })
        .collect();
    let esp_img = dir.join("esp.img");
    esp::write(
        &esp_img,
        sizes.esp.bytes(),
        Arch::Amd64,
        b"MZ-efi",
        &slots,
        7,
        EPOCH,
    )
    .unwrap();
    let root_img = dir.join("root.img");
    std::fs::write(&root_img, &rootfs).unwrap();

    let layout = DiskLayout::uefi(Arch::Amd64, &sizes);
    let stem = format!("test-{version}-x86_64-uefi");
    let img = dir.join(format!("{stem}.img"));
    let guids: Vec<Uuid> = (1..=4u128).map(Uuid::from_u128).collect();
    let mut f = disk::create(&img, &layout, Uuid::from_u128(9), &guids).unwrap();
    disk::write_partition(&mut f, &img, &layout, "esp", "sizes.esp", &esp_img).unwrap();
    for slot in ["root-a", "root-b"] {
        disk::write_partition(&mut f, &img, &layout, slot, "sizes.slot", &root_img).unwrap();
    }
    drop(f);
    write_record(
        &img,
        version,
        BoardId::X86_64Uefi,
        &sizes,
        &layout,
        rootfs.len(),
    );
    Image {
        img,
        rootfs,
        kernel,
        initrd,
    }
}

/// The build record `basalt build` writes beside `img`.
fn write_record(
    img: &Path,
    version: &str,
    board: BoardId,
    sizes: &Sizes,
    layout: &DiskLayout,
    rootfs_size: usize,
) {
    let record = BuildRecord {
        name: "test".into(),
        version: version.into(),
        board,
        arch: if board == BoardId::X86_64Uefi {
            Arch::Amd64
        } else {
            Arch::Arm64
        },
        suite: "bookworm".into(),
        rootfs_type: RootfsType::Squashfs,
        kernel_version: "6.1.0-test".into(),
        source_date_epoch: EPOCH,
        esp_size: sizes.esp.bytes(),
        slot_size: sizes.slot.bytes(),
        data_size: sizes.data.bytes(),
        rootfs_size: rootfs_size as u64,
        disk_size: layout.total_bytes(),
        packages: vec![],
        artifacts: vec![],
    };
    std::fs::write(
        basalt::build::record_path(img),
        serde_json::to_vec_pretty(&record).unwrap(),
    )
    .unwrap();
}

fn key(dir: &Path, name: &str) -> (PathBuf, PublicKey) {
    let out = bundle_cmd::keygen(&dir.join(name)).unwrap();
    (out.secret_key_file, out.public_key)
}

fn make_bundle(image: &Image, key: &Path) -> PathBuf {
    bundle_cmd::bundle(&BundleOptions {
        image: image.img.clone(),
        key: key.to_path_buf(),
        min_version: Some("1.0.0".parse().unwrap()),
        out: None,
        delta_from: None,
        created: EPOCH,
    })
    .unwrap()
    .bundle
}

fn inspect(bundle: &Path, trust: &[PublicKey], threshold: usize) -> bundle_cmd::InspectReport {
    bundle_cmd::inspect(&InspectOptions {
        bundle: bundle.to_path_buf(),
        trust: trust.to_vec(),
        threshold: Some(threshold),
        payloads: true,
    })
    .unwrap()
}

#[test]
fn bundle_carries_slot_a_and_verifies_on_the_device_side() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path());
    let (secret, public) = key(dir.path(), "release");
    let bundle = make_bundle(&image, &secret);
    assert_eq!(bundle, dir.path().join("test-1.2.0-x86_64-uefi.basalt"));

    // What the agent does: verify, then stream each payload.
    let policy = TrustPolicy::new(vec![public], 1).unwrap();
    let file = std::fs::File::open(&bundle).unwrap();
    let mut payloads = BundleReader::new(file).unwrap().verify(&policy).unwrap();
    let m = payloads.manifest().clone();
    assert_eq!(m.name, "test");
    assert_eq!(m.version.to_string(), "1.2.0");
    assert_eq!(m.min_version.to_string(), "1.0.0");
    assert_eq!(m.boards, [BoardId::X86_64Uefi]);
    assert_eq!(m.created, EPOCH);
    let mut got = Vec::new();
    while let Some(mut p) = payloads.next_payload().unwrap() {
        let mut bytes = Vec::new();
        p.read_to_end(&mut bytes).unwrap();
        got.push((p.payload().name, bytes));
    }
    payloads.finish().unwrap();
    assert_eq!(
        got,
        [
            (PayloadName::Rootfs, image.rootfs.clone()),
            (PayloadName::Kernel, image.kernel.clone()),
            (PayloadName::Initrd, image.initrd.clone()),
        ]
    );
    for p in &m.payloads {
        assert!(p.compressed_size < p.size, "{} compresses", p.name);
    }

    // Same image, key and time: the same bundle.
    let first = std::fs::read(&bundle).unwrap();
    make_bundle(&image, &secret);
    assert_eq!(std::fs::read(&bundle).unwrap(), first);

    let report = inspect(&bundle, &[public], 1);
    assert!(report.problems().is_empty(), "{:?}", report.problems());
    assert!(report.payloads.iter().all(|p| p.status == CheckStatus::Ok));
    bundle_cmd::require_ok(&report).unwrap();
    let text = report.render();
    assert!(text.contains("policy      met: 1 of 1"), "{text}");
}

#[test]
fn delta_bundle_rebuilds_the_new_payloads_from_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let old = make_image_at(&old_dir, "1.1.0", |_| {});
    // A "package" inserted in the middle, and a byte changed near the end.
    let new = make_image_at(&new_dir, "1.2.0", |r| {
        let at = r.len() / 2;
        r.splice(at..at, noise(9, 20_000));
        let last = r.len() - 10;
        r[last] ^= 1;
    });
    let (secret, public) = key(dir.path(), "release");
    let full = make_bundle(&new, &secret);
    let opts = |delta_from: &Path| BundleOptions {
        image: new.img.clone(),
        key: secret.clone(),
        min_version: None,
        out: None,
        delta_from: Some(delta_from.to_path_buf()),
        created: EPOCH,
    };
    let outcome = bundle_cmd::bundle(&opts(&old.img)).unwrap();
    assert_eq!(
        outcome.bundle,
        new_dir.join("test-1.2.0-x86_64-uefi.from-1.1.0.basalt")
    );
    let m = &outcome.manifest;
    assert_eq!(m.base_version, Some("1.1.0".parse().unwrap()));
    // The full payloads' sizes and digests, so the device checks the result
    // exactly as it checks a full download.
    let full_manifest = BundleReader::new(std::fs::File::open(&full).unwrap())
        .unwrap()
        .without_verification()
        .unwrap()
        .manifest()
        .clone();
    for (d, f) in m.payloads.iter().zip(&full_manifest.payloads) {
        assert_eq!((d.name, d.size, d.sha256), (f.name, f.size, f.sha256));
        assert!(d.base.is_some());
    }
    let rootfs = m.payload(PayloadName::Rootfs).unwrap();
    let base = rootfs.base.unwrap();
    assert_eq!(base.size, old.rootfs.len() as u64);
    assert_eq!(
        base.sha256,
        basalt_formats::bundle::Sha256Digest::of(&old.rootfs)
    );
    // The 20 kB of new noise is most of the delta; the 700 kB the old slot
    // holds cost next to nothing.
    let full_rootfs = full_manifest.payload(PayloadName::Rootfs).unwrap();
    assert!(
        rootfs.compressed_size < 40_000
            && rootfs.compressed_size * 10 < full_rootfs.compressed_size,
        "delta {} bytes, full {}",
        rootfs.compressed_size,
        full_rootfs.compressed_size
    );

    // The device's side: the bases are what it runs.
    let policy = TrustPolicy::new(vec![public], 1).unwrap();
    let mut payloads = BundleReader::new(std::fs::File::open(&outcome.bundle).unwrap())
        .unwrap()
        .verify(&policy)
        .unwrap();
    let e = payloads.next_payload().map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("payload rootfs is a delta"), "{e}");
    let bases = [&old.rootfs, &old.kernel, &old.initrd];
    let wanted = [&new.rootfs, &new.kernel, &new.initrd];
    for (base, want) in bases.into_iter().zip(wanted) {
        let base: basalt_formats::bundle::stream::Base = std::sync::Arc::new(base.clone());
        let mut p = payloads.next_payload_from(Some(base)).unwrap().unwrap();
        let mut got = Vec::new();
        p.read_to_end(&mut got).unwrap();
        assert!(got == *want, "payload {}", p.payload().name);
    }
    payloads.finish().unwrap();

    // Against a wrong base the payload's digest fails: never a wrong slot.
    let mut payloads = BundleReader::new(std::fs::File::open(&outcome.bundle).unwrap())
        .unwrap()
        .verify(&policy)
        .unwrap();
    let mut wrong = old.rootfs.clone();
    wrong[100] ^= 0xff;
    let mut p = payloads
        .next_payload_from(Some(std::sync::Arc::new(wrong)))
        .unwrap()
        .unwrap();
    let e = std::io::copy(&mut p, &mut std::io::sink()).unwrap_err();
    assert!(e.to_string().contains("payload rootfs"), "{e}");

    // inspect checks a delta's payloads as stored and says what it needs.
    let report = inspect(&outcome.bundle, &[public], 1);
    assert!(report.problems().is_empty(), "{:?}", report.problems());
    let text = report.render();
    assert!(text.contains("delta       from 1.1.0"), "{text}");
    assert!(text.contains("(zstd delta)  ok"), "{text}");
    assert!(
        text.contains(&format!("sha256 {} (base)", base.sha256)),
        "{text}"
    );

    // Bases that cannot be: the same version, another image.
    let e = bundle_cmd::bundle(&opts(&new.img)).unwrap_err().to_string();
    assert!(
        e.contains("is version 1.2.0, which is not older than 1.2.0"),
        "{e}"
    );
    let record = old_dir.join("test-1.1.0-x86_64-uefi.json");
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(
        &record,
        text.replace("\"name\": \"test\"", "\"name\": \"other\""),
    )
    .unwrap();
    let e = bundle_cmd::bundle(&opts(&old.img)).unwrap_err().to_string();
    assert!(
        e.starts_with("--delta-from ") && e.contains("is image other, not test"),
        "{e}"
    );
}

#[test]
fn sign_adds_a_second_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path());
    let (old_secret, old_public) = key(dir.path(), "old");
    let (new_secret, new_public) = key(dir.path(), "new");
    let bundle = make_bundle(&image, &old_secret);

    let report = inspect(&bundle, &[old_public, new_public], 2);
    let e = bundle_cmd::require_ok(&report).unwrap_err().to_string();
    assert!(e.contains("1 of 2 required signatures valid"), "{e}");

    let s = bundle_cmd::sign(&bundle, &new_secret).unwrap();
    assert_eq!(s.signatures, 2);
    assert_eq!(s.key_id, new_public.key_id());
    let report = inspect(&bundle, &[old_public, new_public], 2);
    bundle_cmd::require_ok(&report).unwrap();
    // A device that trusts only the new key takes it too (key rotation).
    bundle_cmd::require_ok(&inspect(&bundle, &[new_public], 1)).unwrap();

    let e = bundle_cmd::sign(&bundle, &new_secret).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: key {} has already signed this bundle",
            bundle.display(),
            new_public.key_id()
        )
    );
}

#[test]
fn damage_and_strangers_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path());
    let (secret, public) = key(dir.path(), "release");
    let (_, stranger) = key(dir.path(), "stranger");
    let bundle = make_bundle(&image, &secret);
    let bytes = std::fs::read(&bundle).unwrap();

    // An untrusted key.
    let report = inspect(&bundle, &[stranger], 1);
    let e = bundle_cmd::require_ok(&report).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "0 of 1 required signatures valid; key {} not trusted",
            public.key_id()
        )),
        "{e}"
    );

    // One flipped byte inside the kernel payload.
    let reader = BundleReader::new(&bytes[..]).unwrap();
    let m: basalt_formats::bundle::Manifest =
        serde_json::from_slice(reader.manifest_bytes()).unwrap();
    let block = |n: u64| 512 + n.div_ceil(512) * 512;
    let kernel_start = block(reader.manifest_bytes().len() as u64)
        + block(reader.signatures().to_bytes().len() as u64)
        + block(m.payloads[0].compressed_size)
        + 512;
    let mut flipped = bytes.clone();
    flipped[(kernel_start + m.payloads[1].compressed_size / 3) as usize] ^= 0x10;
    let damaged = dir.path().join("flipped.basalt");
    std::fs::write(&damaged, &flipped).unwrap();
    let report = inspect(&damaged, &[public], 1);
    let statuses: Vec<_> = report.payloads.iter().map(|p| p.status).collect();
    assert_eq!(
        statuses,
        [
            CheckStatus::Ok,
            CheckStatus::Failed,
            CheckStatus::NotChecked
        ]
    );
    let e = bundle_cmd::require_ok(&report).unwrap_err().to_string();
    assert!(e.contains("payload kernel: compressed SHA-256 is "), "{e}");
    assert!(
        e.contains("payload initrd: not checked after the earlier error"),
        "{e}"
    );

    // Truncated in the middle of the root file system payload.
    let truncated = dir.path().join("truncated.basalt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let report = inspect(&truncated, &[public], 1);
    let e = bundle_cmd::require_ok(&report).unwrap_err().to_string();
    assert!(e.contains("payload rootfs: the bundle ends after"), "{e}");

    // Truncated inside the manifest: nothing to show.
    std::fs::write(&truncated, &bytes[..600]).unwrap();
    let e = bundle_cmd::inspect(&InspectOptions {
        bundle: truncated.clone(),
        trust: vec![],
        threshold: None,
        payloads: false,
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "{}: the bundle ends inside manifest.json",
            truncated.display()
        )
    );
}

#[test]
fn keygen_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = bundle_cmd::keygen(&dir.path().join("k")).unwrap();
    assert_eq!(out.secret_key_file, dir.path().join("k.key"));
    let mode = std::fs::metadata(&out.secret_key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(&out.public_key_file).unwrap();
    assert_eq!(public.trim(), out.public_key.to_string());
    let before = std::fs::read(&out.secret_key_file).unwrap();
    let e = bundle_cmd::keygen(&dir.path().join("k")).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&out.secret_key_file).unwrap(), before);
    // A public key is read from its file or given as text.
    let p = out.public_key_file.to_str().unwrap();
    assert_eq!(bundle_cmd::read_public_key(p).unwrap(), out.public_key);
    assert_eq!(
        bundle_cmd::read_public_key(&out.public_key.to_string()).unwrap(),
        out.public_key
    );
}

fn basalt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_keygen_bundle_sign_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    let (code, out, err) = basalt(&["keygen", "--out", &path("a")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("basalt-ed25519:"), "{out}");
    let (code, out, err) = basalt(&["keygen", "--out", &path("b"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b_id = b["key_id"].as_str().unwrap().to_string();
    let (code, _, err) = basalt(&["keygen", "--out", &path("a")]);
    assert_eq!(code, 1);
    assert!(err.contains("a.key already exists"), "{err}");

    let bundle = path("update.basalt");
    let (code, out, err) = basalt(&[
        "bundle",
        image.img.to_str().unwrap(),
        "--key",
        &path("a.key"),
        "--min-version",
        "1.1.0",
        "--out",
        &bundle,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["manifest"]["min_version"], "1.1.0");
    assert_eq!(made["manifest"]["created"], EPOCH);

    let (code, out, err) = basalt(&["sign", &bundle, "--key", &path("b.key")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&b_id) && out.contains("2 signatures"), "{out}");

    let (code, out, err) = basalt(&[
        "inspect",
        &bundle,
        "--trust",
        &path("a.pub"),
        "--trust",
        &path("b.pub"),
        "--threshold",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["policy"]["met"], true);
    assert_eq!(report["payloads"].as_array().unwrap().len(), 3);
    assert_eq!(report["signatures"][1]["key_id"], b_id.as_str());
    assert_eq!(report["signatures"][1]["status"], "valid");

    let (code, out, err) = basalt(&["inspect", &bundle]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version     1.2.0"), "{out}");
    assert!(out.contains(&format!("key {b_id}")), "{out}");

    // A flipped byte near the end of the root file system payload.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let rootfs_end = made["manifest"]["payloads"][0]["compressed_size"]
        .as_u64()
        .unwrap();
    let reader = BundleReader::new(&bytes[..]).unwrap();
    let start = 1024
        + (reader.manifest_bytes().len() as u64).div_ceil(512) * 512
        + (reader.signatures().to_bytes().len() as u64).div_ceil(512) * 512
        + 512;
    bytes[(start + rootfs_end - 100) as usize] ^= 1;
    std::fs::write(&bundle, &bytes).unwrap();
    let (code, _, err) = basalt(&["inspect", &bundle, "--trust", &path("a.pub")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("update.basalt: payload rootfs: compressed SHA-256 is "),
        "{err}"
    );
    // The signatures are still fine: only the payload is named.
    assert!(!err.contains("signatures valid"), "{err}");
    let (code, _, err) = basalt(&["inspect", &bundle, "--no-payloads"]);
    assert_eq!(code, 0, "{err}");

    // Help with examples for the new commands.
    for sub in ["keygen", "bundle", "sign", "inspect"] {
        let (code, out, _) = basalt(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:"), "basalt {sub} --help:\n{out}");
    }
}

#[test]
fn cli_channel_writes_what_devices_read() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path());
    let (secret, _) = key(dir.path(), "release");
    let bundle = make_bundle(&image, &secret);
    let www = dir.path().join("www/stable");
    let (code, out, err) = basalt(&[
        "channel",
        bundle.to_str().unwrap(),
        "--out",
        www.to_str().unwrap(),
        "--percent",
        "10",
        "--recall",
        "1.1.0",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let done: serde_json::Value = serde_json::from_str(&out).unwrap();
    let doc_path = www.join("x86_64-uefi.json");
    assert_eq!(
        done["documents"][0]["path"],
        doc_path.to_str().unwrap(),
        "{out}"
    );
    assert_eq!(done["documents"][0]["document"]["rollout"]["percent"], 10);
    let c = basalt_formats::channel::Channel::parse(
        "https://updates.example/stable/x86_64-uefi.json",
        &std::fs::read(&doc_path).unwrap(),
    )
    .unwrap();
    assert_eq!(c.version, semver::Version::new(1, 2, 0));
    assert_eq!(c.rollout.to_string(), "10");
    assert_eq!(c.recalled, vec![semver::Version::new(1, 1, 0)]);
    assert_eq!(c.size, Some(std::fs::metadata(&bundle).unwrap().len()));
    let name = bundle.file_name().unwrap().to_str().unwrap();
    assert_eq!(c.bundle.as_str(), format!("https://updates.example/{name}"));

    // Bad values are refused by name, before anything is written.
    let (code, _, err) = basalt(&[
        "channel",
        bundle.to_str().unwrap(),
        "--out",
        www.to_str().unwrap(),
        "--percent",
        "101",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--percent") && err.contains("101 is not between 0 and 100"),
        "{err}"
    );
    let (code, _, err) = basalt(&[
        "channel",
        bundle.to_str().unwrap(),
        "--out",
        www.to_str().unwrap(),
        "--recall",
        "1.2",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--recall"), "{err}");
    let (code, _, err) = basalt(&[
        "channel",
        bundle.to_str().unwrap(),
        "--out",
        www.to_str().unwrap(),
        "--recall",
        "1.2.0",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--recall 1.2.0: that is the bundle's own version"),
        "{err}"
    );
    let (code, _, err) = basalt(&[
        "channel",
        image.img.to_str().unwrap(),
        "--out",
        www.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!("basalt: error: {}: ", image.img.display())),
        "{err}"
    );
    // An image is not a bundle, and the cause is said once.
    assert_eq!(err.matches("manifest.json").count(), 1, "{err}");
    // The document from the first run is still there, unchanged.
    assert_eq!(
        basalt_formats::channel::Channel::parse(
            "https://updates.example/stable/x86_64-uefi.json",
            &std::fs::read(&doc_path).unwrap(),
        )
        .unwrap(),
        c
    );
}

/// A Raspberry Pi image: an MBR with the Pi layout, one boot FAT (a kernel,
/// an initrd, `config.txt`) in both boot slots, a fake root file system in
/// both root slots, and its build record; what `bundle` should carry.
fn make_pi_image(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    use basalt::build::rpi::{write_fat, FatFile};
    let sizes = Sizes {
        esp: ByteSize::mib(16),
        slot: ByteSize::mib(2),
        data: ByteSize::mib(1),
    };
    let mut rootfs = b"hsqs".to_vec();
    rootfs.extend(noise(4, 500_000));
    let files = [
        FatFile {
            name: "config.txt".into(),
            bytes: b"arm_64bit=1\n".to_vec(),
        },
        FatFile {
            name: "vmlinuz".into(),
            bytes: noise(5, 900_000),
        },
        FatFile {
            name: "initrd.img".into(),
            bytes: noise(6, 300_000),
        },
    ];
    let boot_img = dir.join("boot.img");
    write_fat(
        &boot_img,
        sizes.esp.bytes(),
        b"BOOT       ",
        &files,
        3,
        EPOCH,
        None,
    )
    .unwrap();
    let root_img = dir.join("root.img");
    std::fs::write(&root_img, &rootfs).unwrap();
    let layout = DiskLayout::rpi(&sizes);
    let img = dir.join("test-0.2.0-rpi4.img");
    let mut f = disk::create(&img, &layout, Uuid::from_u128(9), &[]).unwrap();
    for (label, field, from) in [
        ("boot-a", "sizes.esp", &boot_img),
        ("boot-b", "sizes.esp", &boot_img),
        ("root-a", "sizes.slot", &root_img),
        ("root-b", "sizes.slot", &root_img),
    ] {
        disk::write_partition(&mut f, &img, &layout, label, field, from).unwrap();
    }
    drop(f);
    write_record(&img, "0.2.0", BoardId::Rpi4, &sizes, &layout, rootfs.len());
    let boot = std::fs::read(&boot_img).unwrap();
    (img, rootfs, boot)
}

#[test]
fn a_pi_bundle_carries_the_root_and_the_boot_partition_up_to_its_last_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (img, rootfs, boot) = make_pi_image(dir.path());
    let (secret, public) = key(dir.path(), "release");
    let out = bundle_cmd::bundle(&BundleOptions {
        image: img,
        key: secret,
        min_version: None,
        out: None,
        delta_from: None,
        created: EPOCH,
    })
    .unwrap();
    assert_eq!(out.manifest.boards, [BoardId::Rpi4]);
    let policy = TrustPolicy::new(vec![public], 1).unwrap();
    let mut payloads = BundleReader::new(std::fs::File::open(&out.bundle).unwrap())
        .unwrap()
        .verify(&policy)
        .unwrap();
    let mut got = Vec::new();
    while let Some(mut p) = payloads.next_payload().unwrap() {
        let mut bytes = Vec::new();
        p.read_to_end(&mut bytes).unwrap();
        got.push((p.payload().name, bytes));
    }
    payloads.finish().unwrap();
    let names: Vec<PayloadName> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, [PayloadName::Rootfs, PayloadName::Boot]);
    assert_eq!(got[0].1, rootfs);
    // The boot payload is a prefix of the partition: everything after it is zeros
    // (free space), and it ends within a cluster of the last file's data.
    let prefix = &got[1].1;
    assert!(prefix.len() < boot.len() / 2, "{} bytes", prefix.len());
    assert_eq!(&boot[..prefix.len()], &prefix[..]);
    assert!(boot[prefix.len()..].iter().all(|b| *b == 0));
    assert!(prefix.len() >= 1_200_000, "{} bytes", prefix.len());
    let report = inspect(&out.bundle, &[public], 1);
    assert!(report.problems().is_empty(), "{:?}", report.problems());
}
