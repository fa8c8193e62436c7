//! `basalt flash` on small synthetic images (GPT and the Raspberry Pi's MBR,
//! made by the builder's own layout code): to regular files, and to loop
//! devices (as root; `BASALT_SKIP_LOOP=1` skips those explicitly).

use basalt::build::disk;
use basalt::flash::{self, bmap, cloud::PartitionSlice, FlashOptions};
use basalt_formats::layout::DiskLayout;
use basalt_formats::spec::Sizes;
use basalt_formats::{Arch, ByteSize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;

const SIZES: Sizes = Sizes {
    esp: ByteSize::mib(64),
    slot: ByteSize::mib(128),
    data: ByteSize::mib(32),
};

fn basalt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Some bytes that are not zero and differ from block to block.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32) as u8
                | 1
        })
        .collect()
}

/// A sparse image with the builder's partition table, a FAT file system in
/// its first partition and data in the next ones, holes in between.
fn make_image(dir: &Path, name: &str, layout: &DiskLayout) -> PathBuf {
    let img = dir.join(name);
    let guids: Vec<Uuid> = layout
        .partitions
        .iter()
        .map(|p| Uuid::from_u128(0x1000 + p.number as u128))
        .collect();
    let f = disk::create(&img, layout, Uuid::from_u128(7), &guids).unwrap();
    let boot = &layout.partitions[0];
    fatfs::format_volume(
        PartitionSlice::new(&f, boot.offset_bytes(), boot.size_bytes()),
        fatfs::FormatVolumeOptions::new(),
    )
    .unwrap();
    for (i, p) in layout.partitions.iter().enumerate().skip(1) {
        if p.label == "extended" {
            continue;
        }
        // A few separate extents per partition.
        for k in 0..3u64 {
            let off = p.offset_bytes() + k * (5 << 20) + 4096 * i as u64;
            f.write_all_at(&pattern(i as u8 + k as u8, 300_000), off)
                .unwrap();
        }
    }
    f.sync_all().unwrap();
    img
}

fn uefi_image(dir: &Path) -> PathBuf {
    make_image(
        dir,
        "a-x86_64-uefi.img",
        &DiskLayout::uefi(Arch::Amd64, &SIZES),
    )
}

fn rpi_image(dir: &Path) -> PathBuf {
    make_image(dir, "a-rpi4.img", &DiskLayout::rpi(&SIZES))
}

fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The build record `basalt build` would write beside `img`.
fn write_record(img: &Path, board: &str) {
    let name = img.file_name().unwrap().to_str().unwrap();
    let record = serde_json::json!({
        "name": "a", "version": "0.1.0", "board": board,
        "arch": if board == "arm64-uefi" || board.starts_with("rpi") { "arm64" } else { "amd64" },
        "suite": "bookworm", "rootfs_type": "squashfs", "kernel_version": "6.1.0",
        "source_date_epoch": 1700000000u64,
        "esp_size": SIZES.esp.bytes(), "slot_size": SIZES.slot.bytes(), "data_size": SIZES.data.bytes(),
        "rootfs_size": 1u64, "disk_size": std::fs::metadata(img).unwrap().len(),
        "packages": [],
        "artifacts": [{"file": name, "size": std::fs::metadata(img).unwrap().len(), "sha256": sha256_file(img)}],
    });
    std::fs::write(
        basalt::build::record_path(img),
        serde_json::to_string_pretty(&record).unwrap(),
    )
    .unwrap();
}

/// The block map bmaptool would write for `img` (4 KiB blocks).
fn write_bmap(img: &Path) -> PathBuf {
    let f = File::open(img).unwrap();
    let size = f.metadata().unwrap().len();
    let ranges = flash::image::data_ranges(&f, size).unwrap();
    let blocks = ranges
        .iter()
        .map(|&(start, len)| {
            let first = start / 4096;
            let last = (start + len).div_ceil(4096) - 1;
            let mut buf =
                vec![0u8; ((last + 1) * 4096).min(size) as usize - (first * 4096) as usize];
            f.read_exact_at(&mut buf, first * 4096).unwrap();
            (first, last, <[u8; 32]>::from(Sha256::digest(&buf)))
        })
        .collect::<Vec<_>>();
    let path = img.with_file_name(
        img.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(".img", ".bmap"),
    );
    std::fs::write(&path, bmap::render(size, 4096, &blocks)).unwrap();
    path
}

/// Bytes of `a` and `b` at the ranges of `img` that hold data are equal.
fn assert_mapped_equal(img: &Path, target: &Path) {
    let f = File::open(img).unwrap();
    let t = File::open(target).unwrap();
    for (start, len) in flash::image::data_ranges(&f, f.metadata().unwrap().len()).unwrap() {
        let mut a = vec![0u8; len as usize];
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut a, start).unwrap();
        t.read_exact_at(&mut b, start).unwrap();
        assert!(a == b, "bytes {start}..{} differ", start + len);
    }
}

#[test]
fn flash_to_a_new_file_is_a_sparse_copy() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let target = dir.path().join("copy.img");
    let (code, out, err) = basalt(&["flash", s(&img), s(&target), "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["target"], "file");
    assert_eq!(report["mapping"], "sparse file");
    let size = std::fs::metadata(&img).unwrap().len();
    assert_eq!(report["image_size"], size);
    let written = report["bytes_written"].as_u64().unwrap();
    assert!(written > 0 && written < size / 10, "{report}");
    assert!(report["ranges"].as_u64().unwrap() > 3, "{report}");
    assert!(report["duration_s"].as_f64().is_some());
    assert_eq!(std::fs::metadata(&target).unwrap().len(), size);
    assert_eq!(sha256_file(&img), sha256_file(&target));
}

#[test]
fn holes_are_left_alone_and_data_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let size = std::fs::metadata(&img).unwrap().len();
    // A used card: every byte 0xee.
    let target = dir.path().join("used.img");
    let t = File::create(&target).unwrap();
    for off in (0..size).step_by(16 << 20) {
        t.write_all_at(&vec![0xee; (16 << 20).min(size - off) as usize], off)
            .unwrap();
    }
    drop(t);
    let report = flash::flash(&FlashOptions::new(&img, &target)).unwrap();
    assert!(report.verified);
    assert_mapped_equal(&img, &target);
    // A hole of the image (inside the data partition) was not written.
    let f = File::open(&target).unwrap();
    let mut b = [0u8; 4096];
    f.read_exact_at(&mut b, size - (3 << 20)).unwrap();
    assert_eq!(b, [0xee; 4096]);
    assert_eq!(report.bytes_written, report.mapped_bytes);
}

#[test]
fn verify_only_finds_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let target = dir.path().join("copy.img");
    flash::flash(&FlashOptions::new(&img, &target)).unwrap();
    let (code, out, err) = basalt(&["flash", "--verify-only", s(&img), s(&target)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("matches"), "{out}");

    // Flip one byte in the middle of the root-a partition's data.
    let layout = DiskLayout::uefi(Arch::Amd64, &SIZES);
    let at = layout.by_label("root-a").unwrap().offset_bytes() + 2 * 4096 + 1000;
    let t = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&target)
        .unwrap();
    let mut b = [0u8; 1];
    t.read_exact_at(&mut b, at).unwrap();
    t.write_all_at(&[!b[0]], at).unwrap();
    drop(t);
    let (code, _, err) = basalt(&["flash", "--verify-only", s(&img), s(&target)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{} does not match {}: 1 of",
            target.display(),
            img.display()
        )),
        "{err}"
    );
    let chunk_start = err.split("the first at bytes ").nth(1).unwrap();
    let (a, b) = chunk_start.trim().split_once("..").unwrap();
    assert!(
        a.parse::<u64>().unwrap() <= at && at < b.parse::<u64>().unwrap(),
        "{err}"
    );
}

/// Something done to an image file.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn corrupt_images_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("card.img");
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "gpt-header",
            Box::new(|img: &Path| poke(img, 512 + 60, 0x5a)),
            "the primary GPT header has a bad CRC32",
        ),
        (
            "gpt-entries",
            Box::new(|img: &Path| poke(img, 1024 + 200, 0x5a)),
            "the GPT partition entries have a bad CRC32",
        ),
        (
            "gpt-entry-start",
            Box::new(|img: &Path| poke(img, 1024 + 32, 0x01)),
            "the GPT partition entries have a bad CRC32",
        ),
        (
            "mbr-signature",
            Box::new(|img: &Path| poke(img, 510, 0)),
            "no MBR boot signature (0x55AA)",
        ),
        (
            "truncated",
            Box::new(|img: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - (1 << 20)).unwrap();
            }),
            "truncated or padded",
        ),
    ];
    for (name, damage, want) in cases {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let img = uefi_image(&sub);
        damage(&img);
        let (code, _, err) = basalt(&["flash", s(&img), s(&target)]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.contains(&format!("{} is corrupt: ", img.display())),
            "{name}: {err}"
        );
        assert!(err.contains(want), "{name}: {want:?} not in {err}");
        assert!(!target.exists(), "{name}: the target was made");
    }

    // A byte changed after the build: the record's SHA-256 no longer matches.
    let img = uefi_image(dir.path());
    write_record(&img, "x86_64-uefi");
    let layout = DiskLayout::uefi(Arch::Amd64, &SIZES);
    poke(
        &img,
        layout.by_label("data").unwrap().offset_bytes() + 4096 * 4,
        0,
    );
    let (code, _, err) = basalt(&["flash", s(&img), s(&target)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("its SHA-256 is"), "{err}");
    assert!(err.contains("but its build record"), "{err}");
    assert!(!target.exists());
}

fn poke(img: &Path, at: u64, value: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&[value], at).unwrap();
}

#[test]
fn images_for_another_board_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let target = dir.path().join("card.img");

    // No record: the partition table speaks.
    let (code, _, err) = basalt(&["flash", s(&img), s(&target), "--board", "rpi4"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{} is not an image for rpi4 (--board): it has a GPT, and rpi4 images have an MBR",
            img.display()
        )),
        "{err}"
    );
    let (code, _, err) = basalt(&["flash", s(&img), s(&target), "--board", "arm64-uefi"]);
    assert_eq!(code, 1);
    assert!(err.contains("its GPT has no arm64 root partition"), "{err}");

    // The record and --board disagree.
    write_record(&img, "x86_64-uefi");
    let (code, _, err) = basalt(&["flash", s(&img), s(&target), "--board", "arm64-uefi"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("was built for x86_64-uefi (build record")
            && err.contains("not for arm64-uefi (--board)"),
        "{err}"
    );
    // The record disagrees with the image.
    write_record(&img, "rpi4");
    let (code, _, err) = basalt(&["flash", s(&img), s(&target)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not an image for rpi4 (its build record"),
        "{err}"
    );
    assert!(!target.exists());

    write_record(&img, "x86_64-uefi");
    let (code, out, err) = basalt(&[
        "flash",
        s(&img),
        s(&target),
        "--board",
        "x86_64-uefi",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["board"], "x86_64-uefi");
    assert!(report["image_checked_against"]
        .as_str()
        .unwrap()
        .ends_with("a-x86_64-uefi.json"));
}

#[test]
fn resume_after_an_interruption_writes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let target = dir.path().join("card.img");
    let e = flash::flash(&FlashOptions {
        stop_after_ranges: Some(2),
        ..FlashOptions::new(&img, &target)
    })
    .unwrap_err();
    assert!(e.is_interrupted(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("interrupted: {} holds ", target.display())),
        "{msg}"
    );
    assert!(msg.contains("2 of "), "{msg}");
    assert!(
        msg.contains(&format!(
            "`basalt flash --resume {} {}` continues",
            img.display(),
            target.display()
        )),
        "{msg}"
    );
    // Not complete yet.
    let (code, _, _) = basalt(&["flash", "--verify-only", s(&img), s(&target)]);
    assert_eq!(code, 1);

    let (code, out, err) = basalt(&["flash", "--resume", s(&img), s(&target), "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mode"], "resume");
    assert!(report["bytes_unchanged"].as_u64().unwrap() > 0, "{report}");
    assert!(report["bytes_written"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["bytes_unchanged"].as_u64().unwrap() + report["bytes_written"].as_u64().unwrap(),
        report["mapped_bytes"].as_u64().unwrap()
    );
    assert_eq!(sha256_file(&img), sha256_file(&target));
}

#[test]
fn cloud_config_lands_on_the_esp() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let target = dir.path().join("card.img");
    let cc = dir.path().join("node.yaml");
    let text = "#cloud-config\nhostname: line-3\n";
    std::fs::write(&cc, text).unwrap();
    let (code, out, err) = basalt(&[
        "flash",
        s(&img),
        s(&target),
        "--cloud-config",
        s(&cc),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["cloud_config"]["partition"], 1);
    let iid = report["cloud_config"]["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(iid.starts_with("iid-"), "{iid}");

    let esp = DiskLayout::uefi(Arch::Amd64, &SIZES).partitions[0].clone();
    let f = File::open(&target).unwrap();
    let fs = fatfs::FileSystem::new(
        PartitionSlice::new(&f, esp.offset_bytes(), esp.size_bytes()),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let read = |name: &str| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut fs.root_dir().open_file(name).unwrap(), &mut s).unwrap();
        s
    };
    assert_eq!(read("user-data"), text);
    assert_eq!(read("meta-data"), format!("instance-id: {iid}\n"));
}

#[test]
fn a_bad_cloud_config_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let target = dir.path().join("card.img");
    let cc = dir.path().join("node.yaml");
    std::fs::write(&cc, "#cloud-config\nhostnme: x\n").unwrap();
    let (code, _, err) = basalt(&["flash", s(&img), s(&target), "--cloud-config", s(&cc)]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:2:1: unknown field `hostnme`", cc.display())),
        "{err}"
    );
    assert!(!target.exists());
}

#[test]
fn pi_image_with_its_block_map_compressed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let img = rpi_image(dir.path());
    let map = write_bmap(&img);
    write_record(&img, "rpi4");
    let target = dir.path().join("card.img");
    let cc = dir.path().join("node.yaml");
    std::fs::write(&cc, "#cloud-config\nhostname: pi\n").unwrap();
    let (code, out, err) = basalt(&[
        "flash",
        s(&img),
        s(&target),
        "--board",
        "rpi4",
        "--cloud-config",
        s(&cc),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["mapping"], "block map");
    assert_eq!(report["block_map"], s(&map));
    // On the Pi, the first FAT partition (autoboot).
    assert_eq!(report["cloud_config"]["partition"], 1);
    let p1 = DiskLayout::rpi(&SIZES).partitions[0].clone();
    let f = File::open(&target).unwrap();
    assert_eq!(
        flash::cloud::read_file(&f, p1.offset_bytes(), p1.size_bytes(), "user-data").unwrap(),
        b"#cloud-config\nhostname: pi\n"
    );

    // zstd-compressed, read through the same block map.
    let zst = dir.path().join("a-rpi4.img.zst");
    zstd::stream::copy_encode(File::open(&img).unwrap(), File::create(&zst).unwrap(), 3).unwrap();
    let target2 = dir.path().join("card2.img");
    let (code, _, err) = basalt(&["flash", s(&zst), s(&target2)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256_file(&img), sha256_file(&target2));

    // A block map checksum that does not match the image stops the write.
    let layout = DiskLayout::rpi(&SIZES);
    let at = layout
        .partitions
        .iter()
        .find(|p| p.number == 5)
        .unwrap()
        .offset_bytes()
        + 4096 * 5
        + 7;
    std::fs::remove_file(basalt::build::record_path(&img)).unwrap();
    poke(&img, at, 0);
    let (code, _, err) = basalt(&["flash", s(&img), s(&dir.path().join("card3.img"))]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("of block map {}) have SHA-256", map.display())),
        "{err}"
    );
    assert!(err.contains("the device holds a partial image"), "{err}");

    // Without a block map or record, a compressed image's size is unknown.
    std::fs::remove_file(&map).unwrap();
    let (code, _, err) = basalt(&["flash", s(&zst), s(&dir.path().join("card4.img"))]);
    assert_eq!(code, 1);
    assert!(err.contains("decompress it first"), "{err}");
}

#[test]
fn xz_images_are_read_with_xz() {
    let dir = tempfile::tempdir().unwrap();
    let img = rpi_image(dir.path());
    write_bmap(&img);
    let status = Command::new("xz")
        .args(["-k", "-1", s(&img)])
        .status()
        .expect("xz (xz-utils) is installed by scripts/setup.sh");
    assert!(status.success());
    let target = dir.path().join("card.img");
    let xz = dir.path().join("a-rpi4.img.xz");
    let (code, _, err) = basalt(&["flash", s(&xz), s(&target)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256_file(&img), sha256_file(&target));
}

// ---- loop devices ----

fn skip_loop() -> bool {
    if std::env::var_os("BASALT_SKIP_LOOP").is_some_and(|v| v == "1") {
        eprintln!("BASALT_SKIP_LOOP=1: loop device tests skipped");
        return true;
    }
    false
}

/// A loop device over a file, detached when dropped.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--partscan", s(file)])
            .output()
            .expect("losetup (util-linux) must be installed; BASALT_SKIP_LOOP=1 skips these tests");
        assert!(
            out.status.success(),
            "losetup failed (these tests need root; BASALT_SKIP_LOOP=1 skips them): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        }
    }

    /// The device node of partition `n`, once the kernel has made it.
    fn partition(&self, n: u32) -> PathBuf {
        let p = PathBuf::from(format!("{}p{n}", self.dev.display()));
        for i in 0..50 {
            if p.exists() {
                return p;
            }
            if i == 10 {
                let _ = Command::new("partx").args(["-a", s(&self.dev)]).status();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{} did not appear", p.display());
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", s(&self.dev)]).status();
    }
}

/// A mount, unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn sparse_file(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
}

#[test]
fn loop_devices() {
    if skip_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = uefi_image(dir.path());
    let size = std::fs::metadata(&img).unwrap().len();

    // Written, read back, and compared again with --verify-only.
    let backing = dir.path().join("disk");
    sparse_file(&backing, size + (8 << 20));
    let lo = Loop::attach(&backing);
    let (code, out, err) = basalt(&["flash", s(&img), s(&lo.dev), "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["target"], "block device");
    assert_eq!(report["verified"], true);
    assert_mapped_equal(&img, &lo.dev);
    let (code, _, err) = basalt(&["flash", "--verify-only", s(&img), s(&lo.dev)]);
    assert_eq!(code, 0, "{err}");

    // A byte flipped behind the page cache's back (in the backing file) is found.
    let at = DiskLayout::uefi(Arch::Amd64, &SIZES)
        .by_label("root-b")
        .unwrap()
        .offset_bytes()
        + 3 * 4096
        + 5;
    let b = File::options()
        .read(true)
        .write(true)
        .open(&backing)
        .unwrap();
    let mut byte = [0u8; 1];
    b.read_exact_at(&mut byte, at).unwrap();
    b.write_all_at(&[!byte[0]], at).unwrap();
    b.sync_all().unwrap();
    drop(b);
    let (code, _, err) = basalt(&["flash", "--verify-only", s(&img), s(&lo.dev)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not match"), "{err}");

    // A device with a mounted file system is refused, and left as it was.
    let ext4 = lo.partition(4);
    let mkfs = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            s(&ext4),
        ])
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(mkfs.success());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Read-only, so that the mount itself writes nothing.
    let st = Command::new("mount")
        .args(["-o", "ro", s(&ext4), s(&mnt)])
        .status()
        .unwrap();
    assert!(st.success(), "mounting {}", ext4.display());
    let mounted = Mounted(mnt.clone());
    let before = sha256_file(&backing);
    let (code, _, err) = basalt(&["flash", s(&img), s(&lo.dev)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("refusing to write to {}", lo.dev.display()))
            && err.contains(&format!(
                "{} is mounted on {}",
                ext4.display(),
                mnt.display()
            ))
            && err.contains("unmount it first"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    // The partition itself: refused as a partition and as mounted.
    let (code, _, err) = basalt(&["flash", s(&img), s(&ext4)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("it is a partition of"), "{err}");
    drop(mounted);
    assert_eq!(
        before,
        sha256_file(&backing),
        "the refused device was changed"
    );

    // A device smaller than the image is refused before any write.
    let small = dir.path().join("small");
    sparse_file(&small, 64 << 20);
    File::options()
        .write(true)
        .open(&small)
        .unwrap()
        .write_all_at(&pattern(9, 1 << 20), 0)
        .unwrap();
    let small_before = sha256_file(&small);
    let lo_small = Loop::attach(&small);
    let (code, _, err) = basalt(&["flash", s(&img), s(&lo_small.dev)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{} (", lo_small.dev.display()))
            && err.contains(&format!(
                "holds {} bytes, less than the {size} bytes of {}",
                64u64 << 20,
                img.display()
            )),
        "{err}"
    );
    drop(lo_small);
    assert_eq!(small_before, sha256_file(&small));
}
