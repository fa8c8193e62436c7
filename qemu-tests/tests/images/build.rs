//! Image builds: reproducibility and the root file system cache.

use basalt::build::SpecSource;
use basalt_formats::BoardId;
use qemu_tests::*;
use std::process::Command;

#[test]
fn same_inputs_give_a_bit_identical_image() {
    let first = default_image(BoardId::X86_64Uefi);
    // Everything again, mmdebstrap included, from the same packages and SOURCE_DATE_EPOCH.
    let mut opts = options(
        BoardId::X86_64Uefi,
        SpecSource::Builtin,
        work_dir().join("images/x86_64-uefi-again"),
    );
    opts.no_cache = true;
    let second = build_image(&opts);
    assert!(
        !second.outcome.rootfs_from_cache,
        "the second build must re-run mmdebstrap"
    );
    let a = &first.outcome.record.artifacts;
    let b = &second.outcome.record.artifacts;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.file, y.file);
        assert_eq!(x.sha256, y.sha256, "{} differs between two builds", x.file);
    }
    assert_eq!(
        first.outcome.record.packages,
        second.outcome.record.packages
    );
}

#[test]
fn an_overlay_change_reuses_the_cached_root_file_system() {
    let _warm = default_image(BoardId::X86_64Uefi);
    let dir = work_dir().join("specs/overlay-change");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("site/etc/basalt")).unwrap();
    std::fs::write(dir.join("site/etc/basalt/site.conf"), "site = lab-7\n").unwrap();
    let spec = basalt::assets::DEFAULT_SPEC.replace("  - base\n", "  - base\n  - ./site\n");
    assert!(spec.contains("./site"));
    std::fs::write(dir.join("spec.yaml"), spec).unwrap();

    let built = build_image(&options(
        BoardId::X86_64Uefi,
        SpecSource::File(dir.join("spec.yaml")),
        dir.join("out"),
    ));
    assert!(
        built.outcome.rootfs_from_cache,
        "mmdebstrap ran again for an overlay change"
    );

    // The overlay's file is in slot A's root file system.
    let layout =
        basalt_formats::layout::DiskLayout::uefi(basalt_formats::Arch::Amd64, &default_sizes());
    let offset = layout.by_label("root-a").unwrap().offset_bytes();
    let out = Command::new("unsquashfs")
        .args(["-o", &offset.to_string(), "-lc"])
        .arg(&built.image)
        .output()
        .expect("unsquashfs (squashfs-tools)");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("squashfs-root/etc/basalt/site.conf"),
        "{listing}"
    );
    assert!(
        listing.contains("squashfs-root/usr/bin/basalt-agent"),
        "{listing}"
    );
}

fn default_sizes() -> basalt_formats::spec::Sizes {
    basalt_formats::ImageSpec::parse("default", basalt::assets::DEFAULT_SPEC)
        .unwrap()
        .sizes
}
