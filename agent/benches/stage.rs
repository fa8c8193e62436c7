//! Stage throughput: `update::stage` (the agent's own code: signature check,
//! zstd, SHA-256 while streaming, write, fsync, read-back) from a local
//! bundle into a file-backed slot, next to the shell pipeline
//! `zstd -d < rootfs.zst | tee slot | sha256sum` (then `sync slot`, since
//! stage syncs too) on the same payload, the same file system, the same
//! machine. Also prints the bundle's size against the raw slot.
//!
//! The payload is `BASALT_BENCH_PAYLOAD` (a file, such as a root file system
//! image cut out of a built `.img`), or else 512 MiB made here that
//! compresses like a root file system image does: mostly blocks that are
//! already compressed (squashfs and erofs compress their own blocks), with
//! runs of text and zeros between them.
//!
//! Then the same root as a delta bundle against the root it replaces
//! (`BASALT_BENCH_BASE`, such as the root of the previous build; or else the
//! synthetic root with 2 MiB cut out and a few bytes changed): the delta's
//! size and the time `stage` takes to rebuild the slot from the running one.
//!
//! Run: `cargo bench -p basalt-agent --bench stage` (`-- --runs N`, default 3;
//! the median of each is compared). Files go to `BASALT_BENCH_DIR`, default
//! the cargo target directory.

use basalt_agent::update::esp::Esp;
use basalt_agent::update::{self, Device};
use basalt_formats::boot::BootInfo;
use basalt_formats::bundle::stream::BundleWriter;
use basalt_formats::bundle::{
    Manifest, Payload, PayloadBase, PayloadName, SecretKey, Sha256Digest, SignatureEntry,
    Signatures, TrustPolicy, MANIFEST_FORMAT,
};
use basalt_formats::release::Release;
use basalt_formats::spec::RootfsType;
use basalt_formats::{Arch, BoardId, Slot};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The level `basalt bundle` compresses with.
const ZSTD_LEVEL: i32 = 6;
const MIB: f64 = 1024.0 * 1024.0;

/// 512 MiB that compresses about as a root file system image does.
fn synthetic_payload() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "usr",
        "lib",
        "systemd",
        "basalt",
        "x86_64",
        "linux",
        "gnu",
        "share",
        "locale",
        "ELF",
        "module",
        "firmware",
        "python3",
        "dist-packages",
        "__init__",
        "config",
        "debian",
        "etc",
    ];
    let mut rng = StdRng::seed_from_u64(1);
    let mut out = Vec::with_capacity(512 << 20);
    while out.len() < 512 << 20 {
        match rng.random_range(0..10) {
            // A compressed block: nothing left for zstd to find.
            0..=6 => {
                let n = rng.random_range(16 << 10..128 << 10);
                let start = out.len();
                out.resize(start + n, 0);
                rng.fill_bytes(&mut out[start..]);
            }
            // Text: paths, names, tables.
            7 | 8 => {
                let n = rng.random_range(4 << 10..64 << 10);
                let end = out.len() + n;
                while out.len() < end {
                    out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
                    out.push(b"/ \n=._"[rng.random_range(0..6)]);
                }
            }
            // Padding and sparse tables.
            _ => {
                let n = rng.random_range(4 << 10..64 << 10);
                out.resize(out.len() + n, 0);
            }
        }
    }
    out.truncate(512 << 20);
    out
}

/// The bench's kernel and initrd, the same in every version.
fn boot_files() -> [(PayloadName, Vec<u8>); 2] {
    [
        (PayloadName::Kernel, vec![0x4b; 8 << 20]),
        (PayloadName::Initrd, vec![0x49; 16 << 20]),
    ]
}

/// Writes a signed bundle of `rootfs` (and a small kernel and initrd) to
/// `dir`, a delta against `base` (the root of 0.1.0) when given; returns its
/// path and the compressed root payload's path for the pipeline.
fn write_bundle(
    dir: &Path,
    key: &SecretKey,
    rootfs: &[u8],
    base: Option<&[u8]>,
) -> (PathBuf, PathBuf) {
    use basalt_formats::bundle::stream::delta;
    let mut parts: Vec<(PayloadName, Vec<u8>)> = vec![(PayloadName::Rootfs, rootfs.to_vec())];
    parts.extend(boot_files());
    let bases: Vec<Option<Vec<u8>>> = match base {
        Some(b) => std::iter::once(Some(b.to_vec()))
            .chain(boot_files().into_iter().map(|(_, f)| Some(f)))
            .collect(),
        None => vec![None, None, None],
    };
    let compressed: Vec<Vec<u8>> = parts
        .iter()
        .zip(&bases)
        .map(|((_, raw), base)| match base {
            Some(base) => {
                let mut out = Vec::new();
                delta::encode(base, &raw[..], &mut out, delta::DELTA_LEVEL, |_| ()).unwrap();
                out
            }
            None => {
                let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).unwrap();
                enc.include_checksum(true).unwrap();
                enc.write_all(raw).unwrap();
                enc.finish().unwrap()
            }
        })
        .collect();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: "bench".into(),
        version: semver::Version::new(0, 2, 0),
        boards: vec![BoardId::X86_64Uefi],
        min_version: semver::Version::new(0, 0, 0),
        created: 1,
        rootfs_type: RootfsType::Squashfs,
        payloads: parts
            .iter()
            .zip(&compressed)
            .zip(&bases)
            .map(|(((name, raw), c), base)| Payload {
                base: base.as_ref().map(|b| PayloadBase {
                    size: b.len() as u64,
                    sha256: Sha256Digest::of(b),
                }),
                ..Payload::zstd(*name, raw, c)
            })
            .collect(),
        base_version: base.map(|_| semver::Version::new(0, 1, 0)),
    };
    let bytes = manifest.to_bytes();
    let sigs = Signatures(vec![SignatureEntry::sign(key, &bytes)]);
    let bundle = dir.join(if base.is_some() {
        "bench.from-0.1.0.basalt"
    } else {
        "bench.basalt"
    });
    let file = std::fs::File::create(&bundle).unwrap();
    let mut w = BundleWriter::new(std::io::BufWriter::new(file), &bytes, &sigs).unwrap();
    for ((name, _), c) in parts.iter().zip(&compressed) {
        w.payload(*name, &c[..]).unwrap();
    }
    w.finish().unwrap().flush().unwrap();
    let zst = dir.join("rootfs.zst");
    std::fs::write(&zst, &compressed[0]).unwrap();
    (bundle, zst)
}

fn device(dir: &Path, key: &SecretKey, slot_len: u64) -> Device {
    let esp = Esp {
        root: dir.join("esp"),
    };
    let _ = std::fs::remove_dir_all(dir.join("esp"));
    let _ = std::fs::remove_dir_all(dir.join("state"));
    std::fs::create_dir_all(esp.entries_dir()).unwrap();
    std::fs::write(
        esp.entries_dir().join("basalt-a.conf"),
        "title t\nsort-key basalt\nversion 0.1.0\nlinux /basalt/a/vmlinuz\ninitrd /basalt/a/initrd\noptions basalt.slot=a\n",
    )
    .unwrap();
    for s in ["a", "b"] {
        let f = std::fs::File::create(dir.join(format!("slot-{s}"))).unwrap();
        f.set_len(slot_len).unwrap();
    }
    Device {
        esp,
        state_dir: dir.join("state"),
        release: Release {
            name: "bench".into(),
            version: semver::Version::new(0, 1, 0),
            board: BoardId::X86_64Uefi,
            arch: Arch::Amd64,
            rootfs_type: RootfsType::Squashfs,
            build_time: 0,
        },
        boot: BootInfo {
            slot: Slot::A,
            disk: "/dev/bench".into(),
            esp_device: "/dev/bench1".into(),
            root_device: "/dev/bench2".into(),
            data_device: "/dev/bench4".into(),
            data_grown: None,
            initrd_done_ms: 0,
            live: false,
        },
        slot_devices: vec![(Slot::A, dir.join("slot-a")), (Slot::B, dir.join("slot-b"))],
        boot_devices: Vec::new(),
        policy: Some(TrustPolicy::new(vec![key.public_key()], 1).unwrap()),
        tryboot: None,
        // Staging does not look at the node's identity.
        node_id: Err("no identity in the bench".into()),
    }
}

/// Drops the page cache, so that each run reads the bundle from the disk
/// and writes into a cold slot (root only; otherwise runs are warm).
fn drop_caches() -> bool {
    Command::new("sync").status().is_ok_and(|s| s.success())
        && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N");
        }
        // `cargo bench` passes --bench; other flags are ignored.
    }
    let dir = match std::env::var_os("BASALT_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("stage-bench"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let (payload, source) = match std::env::var_os("BASALT_BENCH_PAYLOAD") {
        Some(p) => (
            std::fs::read(&p).unwrap_or_else(|e| panic!("BASALT_BENCH_PAYLOAD {p:?}: {e}")),
            PathBuf::from(p).display().to_string(),
        ),
        None => (synthetic_payload(), "synthetic, 512 MiB".to_string()),
    };
    let key = SecretKey::from_seed(&[9; 32]);
    let (bundle, zst) = write_bundle(&dir, &key, &payload, None);
    let bundle_len = std::fs::metadata(&bundle).unwrap().len();
    let zst_len = std::fs::metadata(&zst).unwrap().len();
    let slot_len = (payload.len() as u64).next_multiple_of(1 << 20) + (64 << 20);
    let want = Sha256Digest::of(&payload).to_string();
    let payload_len = payload.len() as u64;
    // Kept on disk for the delta runs, out of memory for the full ones.
    std::fs::write(dir.join("payload"), &payload).unwrap();
    drop(payload);
    let cold = drop_caches();
    println!(
        "payload: {source}; root {} MiB, its zstd -{ZSTD_LEVEL} {} MiB ({:.1} %), bundle {} MiB; {} runs, {}",
        payload_len >> 20,
        zst_len >> 20,
        100.0 * zst_len as f64 / payload_len as f64,
        bundle_len >> 20,
        runs,
        if cold { "page cache dropped before each run" } else { "warm page cache (not root)" }
    );

    let mut stage_times = Vec::new();
    let mut pipe_times = Vec::new();
    for run in 0..runs {
        // The agent.
        let device = device(&dir, &key, slot_len);
        if cold {
            drop_caches();
        }
        let t = Instant::now();
        let source = basalt_agent::cli::open_source(&bundle.display().to_string()).unwrap();
        update::stage(source, &device).unwrap_or_else(|e| panic!("stage: {e}"));
        let stage_time = t.elapsed();

        // The pipeline, into a slot file made the same way.
        let slot = dir.join("slot-pipe");
        std::fs::File::create(&slot)
            .unwrap()
            .set_len(slot_len)
            .unwrap();
        if cold {
            drop_caches();
        }
        let t = Instant::now();
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"set -o pipefail; zstd -q -d < "$1" | tee "$2" | sha256sum && sync "$2""#)
            .arg("bash")
            .arg(&zst)
            .arg(&slot)
            .output()
            .expect("bash");
        let pipe_time = t.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with(&want),
            "the pipeline failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "run {run}: stage {:.2} s ({:.0} MiB/s), pipeline {:.2} s ({:.0} MiB/s)",
            stage_time.as_secs_f64(),
            payload_len as f64 / MIB / stage_time.as_secs_f64(),
            pipe_time.as_secs_f64(),
            payload_len as f64 / MIB / pipe_time.as_secs_f64(),
        );
        stage_times.push(stage_time);
        pipe_times.push(pipe_time);
    }
    let (s, p) = (median(stage_times), median(pipe_times));
    let mibs = |d: Duration| payload_len as f64 / MIB / d.as_secs_f64();
    println!(
        "median: stage {:.0} MiB/s, pipeline {:.0} MiB/s, ratio {:.2} (goal >= 0.90)",
        mibs(s),
        mibs(p),
        p.as_secs_f64() / s.as_secs_f64()
    );

    // A delta of the same root against the one it replaces: the base is
    // `BASALT_BENCH_BASE`, or the synthetic root with 2 MiB of a "package"
    // cut out of the middle and a few small changes (so the new root is the
    // base plus one package).
    let payload = std::fs::read(dir.join("payload")).unwrap();
    let base = match std::env::var_os("BASALT_BENCH_BASE") {
        Some(b) => std::fs::read(&b).unwrap_or_else(|e| panic!("BASALT_BENCH_BASE {b:?}: {e}")),
        None => {
            let mut b = payload.clone();
            let mid = b.len() / 2;
            b.drain(mid..mid + (2 << 20));
            for i in 1..16 {
                let at = b.len() / 16 * i;
                b[at] ^= 0x5a;
            }
            b
        }
    };
    let t = Instant::now();
    let (delta, _) = write_bundle(&dir, &key, &payload, Some(&base));
    let made = t.elapsed();
    let delta_len = std::fs::metadata(&delta).unwrap().len();
    let mut delta_times = Vec::new();
    for run in 0..runs {
        let device = device(&dir, &key, slot_len);
        let mut slot_a = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("slot-a"))
            .unwrap();
        slot_a.write_all(&base).unwrap();
        drop(slot_a);
        let boot = dir.join("esp/basalt/a");
        std::fs::create_dir_all(&boot).unwrap();
        for (name, bytes) in boot_files() {
            let file = if name == PayloadName::Kernel {
                "vmlinuz"
            } else {
                "initrd"
            };
            std::fs::write(boot.join(file), bytes).unwrap();
        }
        if cold {
            drop_caches();
        }
        let t = Instant::now();
        let source = basalt_agent::cli::open_source(&delta.display().to_string()).unwrap();
        update::stage(source, &device).unwrap_or_else(|e| panic!("stage of the delta: {e}"));
        let d = t.elapsed();
        println!("delta run {run}: stage {:.2} s", d.as_secs_f64());
        delta_times.push(d);
    }
    let d = median(delta_times);
    println!(
        "delta: bundle {:.2} MiB against the full {:.1} MiB ({:.2} %), made in {:.1} s; stage median {:.2} s against the full bundle's {:.2} s",
        delta_len as f64 / MIB,
        bundle_len as f64 / MIB,
        100.0 * delta_len as f64 / bundle_len as f64,
        made.as_secs_f64(),
        d.as_secs_f64(),
        s.as_secs_f64()
    );
}
