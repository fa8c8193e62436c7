//! File system images made from directories in user space: the read-only
//! root (squashfs or erofs) and the data partition (ext4).

use crate::tools::{self, ToolError};
use basalt_formats::spec::RootfsType;
use std::path::Path;
use std::process::Command;
use uuid::Uuid;

/// Makes the root file system image of `dir` at `out`.
pub fn root_image(
    fs: RootfsType,
    level: u8,
    dir: &Path,
    out: &Path,
    epoch: u64,
    uuid: Uuid,
) -> Result<(), ToolError> {
    let _ = std::fs::remove_file(out);
    let e = epoch.to_string();
    match fs {
        RootfsType::Squashfs => tools::run(
            Command::new("mksquashfs")
                .arg(dir)
                .arg(out)
                .args([
                    "-noappend",
                    "-comp",
                    "zstd",
                    "-Xcompression-level",
                    &level.to_string(),
                    "-b",
                    "256K",
                    "-no-progress",
                    "-quiet",
                ])
                .args(["-mkfs-time", &e, "-all-time", &e]),
        ),
        RootfsType::Erofs => tools::run(
            Command::new("mkfs.erofs")
                .arg(format!("-zlz4hc,{level}"))
                .arg("--quiet")
                .arg(format!("-T{e}"))
                .arg(format!("-U{uuid}"))
                .arg(out)
                .arg(dir),
        ),
    }
    .map(|_| ())
}

/// Makes an empty ext4 image of `size` bytes at `out`.
/// Block size is fixed at 4 KiB. The default reserved GDT blocks let the
/// kernel grow it online 1024-fold; past that it converts to meta_bg by
/// itself. (A large `resize=` reservation would make each online-resize
/// transaction larger than a small file system's journal: ENOSPC.)
pub fn ext4_image(
    out: &Path,
    size: u64,
    label: &str,
    epoch: u64,
    uuid: Uuid,
) -> Result<(), ToolError> {
    let _ = std::fs::remove_file(out);
    let blocks = size / 4096;
    tools::run(
        Command::new("mkfs.ext4")
            // mke2fs's own knob for a fixed time in every timestamp it writes.
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .args(["-q", "-F", "-b", "4096", "-T", "default", "-L", label])
            .arg("-U")
            .arg(uuid.to_string())
            .arg("-E")
            .arg(format!(
                "hash_seed={uuid},root_owner=0:0,lazy_itable_init=0"
            ))
            .arg(out)
            .arg(blocks.to_string()),
    )
    .map(|_| ())
}
