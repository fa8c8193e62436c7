//! `basalt flash`: an image onto an SD card, USB stick or disk (or into a
//! file).
//!
//! Only the ranges that hold data are written: those of the block map beside
//! the image (`.bmap`, each range checked against its SHA-256 as it is
//! written), or of the sparse image file (`SEEK_DATA`/`SEEK_HOLE`); a
//! compressed image without a block map is written whole. Then the device is
//! synced, its cached pages dropped, and every written range read back and
//! compared by SHA-256.
//!
//! Before a byte is written the flash is refused when the device is mounted,
//! holds the running system or is a partition (unless `force`), is smaller
//! than the image, when the image is for another board than `--board` or its
//! build record says, and when the image is corrupt: a bad MBR signature or
//! GPT checksum, a size or SHA-256 other than its build record's, a damaged
//! block map.

pub mod bmap;
pub mod cloud;
pub mod device;
pub mod image;

use crate::progress::{Progress, Step};
use basalt_formats::record::BuildRecord;
use basalt_formats::BoardId;
use bmap::{BlockMap, MappedRange};
use device::TargetKind;
use image::{Compression, ImageReader, Table};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Write every mapped range, then read back and compare.
    Write,
    /// Compare each chunk on the device with the image and write only those
    /// that differ, then read back and compare (after an interrupted write).
    Resume,
    /// Compare only; write nothing.
    VerifyOnly,
}

#[derive(Debug, Clone)]
pub struct FlashOptions {
    pub image: PathBuf,
    pub device: PathBuf,
    /// The block map; by default `<stem>.bmap` beside the image, when there is one.
    pub bmap: Option<PathBuf>,
    /// The board the operator means to flash; checked against the build
    /// record and the image's partition table.
    pub board: Option<BoardId>,
    /// A cloud-config to put on the boot partition after writing.
    pub cloud_config: Option<PathBuf>,
    pub mode: Mode,
    /// Write even to a device that is mounted, holds the running system or
    /// is a partition.
    pub force: bool,
    /// Stop as if interrupted once this many ranges are written (for tests
    /// of [`Mode::Resume`]).
    pub stop_after_ranges: Option<usize>,
}

impl FlashOptions {
    pub fn new(image: impl Into<PathBuf>, device: impl Into<PathBuf>) -> FlashOptions {
        FlashOptions {
            image: image.into(),
            device: device.into(),
            bmap: None,
            board: None,
            cloud_config: None,
            mode: Mode::Write,
            force: false,
            stop_after_ranges: None,
        }
    }
}

/// What a flash did; `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    pub image: PathBuf,
    pub device: PathBuf,
    /// `block device` or `file`.
    pub target: &'static str,
    pub mode: Mode,
    pub image_size: u64,
    /// Where the ranges came from: `block map`, `sparse file` or `whole image`.
    pub mapping: &'static str,
    pub block_map: Option<PathBuf>,
    pub ranges: usize,
    /// Bytes in the ranges.
    pub mapped_bytes: u64,
    pub bytes_written: u64,
    /// Bytes found on the device as the image has them (resume, verify-only).
    pub bytes_unchanged: u64,
    /// The build record whose size and SHA-256 the image was checked against.
    pub image_checked_against: Option<PathBuf>,
    /// The board of the image, from `--board` or its build record.
    pub board: Option<BoardId>,
    /// Every range was read back from the device and matched.
    pub verified: bool,
    pub duration_s: f64,
    pub cloud_config: Option<PlacedConfig>,
}

/// Where a cloud-config went.
#[derive(Debug, Clone, Serialize)]
pub struct PlacedConfig {
    pub file: PathBuf,
    /// Partition number on the device.
    pub partition: u32,
    pub files: Vec<String>,
    pub instance_id: String,
}

impl FlashReport {
    /// Lines for people.
    pub fn human(&self) -> String {
        let h = device::human_bytes;
        let mut out = match self.mode {
            Mode::VerifyOnly => format!(
                "{} matches {} ({} ranges, {})\n",
                self.device.display(),
                self.image.display(),
                self.ranges,
                h(self.mapped_bytes)
            ),
            Mode::Write | Mode::Resume => format!(
                "{}: wrote {} of {} ({} ranges from the {}{}), verified, in {:.1} s\n",
                self.device.display(),
                h(self.bytes_written),
                self.image.display(),
                self.ranges,
                self.mapping,
                if self.bytes_unchanged > 0 {
                    format!("; {} were already there", h(self.bytes_unchanged))
                } else {
                    String::new()
                },
                self.duration_s
            ),
        };
        if let Some(c) = &self.cloud_config {
            out.push_str(&format!(
                "{}: {} on partition {} ({})\n",
                c.file.display(),
                c.files.join(" and "),
                c.partition,
                c.instance_id
            ));
        }
        out
    }
}

/// How far a write got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub bytes: u64,
    pub total: u64,
    pub ranges: usize,
    pub ranges_total: usize,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.total == 0 {
            100.0
        } else {
            self.bytes as f64 * 100.0 / self.total as f64
        };
        write!(
            f,
            "{} of {} bytes ({pct:.0} %), {} of {} ranges complete",
            self.bytes, self.total, self.ranges, self.ranges_total
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Bmap(#[from] bmap::BmapError),
    #[error("{message}")]
    CloudConfig { message: String },
    #[error("{image} is corrupt: {reason}")]
    CorruptImage { image: PathBuf, reason: String },
    #[error("{image}: bytes {start}..{end} (range {index} of block map {bmap}) have SHA-256 {actual}, the block map says {expected}: the image or its block map is damaged{}", if *.written { "; the device holds a partial image" } else { "" })]
    RangeChecksum {
        image: PathBuf,
        bmap: PathBuf,
        index: usize,
        start: u64,
        end: u64,
        actual: String,
        expected: String,
        written: bool,
    },
    #[error(
        "{image} was built for {built_for} (build record {record}), not for {board} (--board)"
    )]
    RecordBoard {
        image: PathBuf,
        record: PathBuf,
        built_for: BoardId,
        board: BoardId,
    },
    #[error("{image} is not an image for {board} ({said_by}): {reason}")]
    WrongBoard {
        image: PathBuf,
        board: BoardId,
        said_by: String,
        reason: String,
    },
    #[error("{image}: the size of the decompressed image is unknown without its block map (.bmap) or build record (.json); decompress it first")]
    UnknownSize { image: PathBuf },
    #[error("{image}: reading an .xz image needs the xz command (Debian package xz-utils): {source}; or decompress it first: xz -dk {image}")]
    NoXz { image: PathBuf, source: io::Error },
    #[error("{device} {reason}")]
    Device { device: PathBuf, reason: String },
    #[error("refusing to write to {device}{desc}: {reasons}{}", if *.forcible { " (--force writes anyway)" } else { "" })]
    Refused {
        device: PathBuf,
        desc: String,
        reasons: String,
        forcible: bool,
    },
    #[error(
        "{device}{desc} holds {device_size} bytes, less than the {image_size} bytes of {image}"
    )]
    TooSmall {
        device: PathBuf,
        desc: String,
        device_size: u64,
        image: PathBuf,
        image_size: u64,
    },
    #[error(
        "interrupted: {device} holds {done}; `basalt flash --resume {image} {device}` continues"
    )]
    Interrupted {
        device: PathBuf,
        image: PathBuf,
        done: Done,
    },
    #[error("{what} {device} at byte {offset} failed: {source}; {done} (was the device removed? `basalt flash --resume {image} {device}` continues)")]
    DeviceIo {
        what: &'static str,
        device: PathBuf,
        image: PathBuf,
        offset: u64,
        done: Done,
        source: io::Error,
    },
    #[error("{device} does not match {image}: {count} of {chunks} chunks differ, the first at bytes {start}..{end}")]
    Differs {
        device: PathBuf,
        image: PathBuf,
        count: usize,
        chunks: usize,
        start: u64,
        end: u64,
    },
    #[error("{device}: nowhere to put the cloud-config: {reason}")]
    NoBootPartition { device: PathBuf, reason: String },
    #[error("{device} partition {partition}: writing the cloud-config {file}: {source}")]
    CloudConfigWrite {
        device: PathBuf,
        partition: u32,
        file: PathBuf,
        source: io::Error,
    },
}

impl FlashError {
    /// A Ctrl-C or SIGTERM stopped the write.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, FlashError::Interrupted { .. })
    }
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> FlashError + 'a {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Bytes read, written and hashed at a time.
const CHUNK: usize = 4 << 20;
/// Written bytes between syncs, so that progress is the device's and not
/// the page cache's.
const SYNC_EVERY: u64 = 64 << 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`INTERRUPTED`] while this lives, so a write
/// stops between chunks with the device synced and the progress known.
struct SignalGuard {
    old: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigAction)>,
}

impl SignalGuard {
    fn install() -> SignalGuard {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        INTERRUPTED.store(false, Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut old = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only stores to an atomic.
            if let Ok(prev) = unsafe { sigaction(sig, &action) } {
                old.push((sig, prev));
            }
        }
        SignalGuard { old }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: puts back the handler that was there before.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, prev) };
        }
    }
}

nix::ioctl_none!(blkflsbuf, 0x12, 97);
nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Drops the device's pages from the page cache, so that what is read next
/// comes from the device.
fn drop_cache(dev: &File, block: bool) {
    use std::os::fd::AsRawFd;
    if block {
        // SAFETY: BLKFLSBUF takes no argument; the descriptor is open.
        let _ = unsafe { blkflsbuf(dev.as_raw_fd()) };
    }
    let _ = nix::fcntl::posix_fadvise(
        dev.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// The image as read and checked, before the device is touched.
struct Checked {
    compression: Compression,
    image_size: u64,
    mapping: &'static str,
    block_map: Option<PathBuf>,
    ranges: Vec<MappedRange>,
    table: Table,
    board: Option<BoardId>,
    /// The build record and the artifact's SHA-256 to check the file against.
    record_sum: Option<(PathBuf, String)>,
}

fn check_image(opts: &FlashOptions) -> Result<Checked, FlashError> {
    let image = &opts.image;
    let meta = std::fs::metadata(image).map_err(io_err(image, "reading the image"))?;
    if !meta.is_file() {
        return Err(FlashError::CorruptImage {
            image: image.clone(),
            reason: "it is not a regular file".into(),
        });
    }
    let file_len = meta.len();
    let compression = Compression::detect(image).map_err(io_err(image, "reading the image"))?;

    let bmap_path = opts.bmap.clone().or_else(|| image::bmap_beside(image));
    let bmap = match &bmap_path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(io_err(p, "reading the block map"))?;
            Some(BlockMap::parse(p, &text)?)
        }
        None => None,
    };

    let record_path = crate::build::record_path(image);
    let record: Option<BuildRecord> = if record_path.is_file() {
        let text = std::fs::read_to_string(&record_path)
            .map_err(io_err(&record_path, "reading the build record"))?;
        Some(
            serde_json::from_str(&text).map_err(|e| FlashError::CorruptImage {
                image: image.clone(),
                reason: format!(
                    "its build record {} cannot be read: {e}",
                    record_path.display()
                ),
            })?,
        )
    } else {
        None
    };
    let corrupt = |reason: String| FlashError::CorruptImage {
        image: image.clone(),
        reason,
    };

    let image_size = match (compression, &bmap, &record) {
        (Compression::None, Some(b), _) if b.image_size != file_len => {
            return Err(corrupt(format!(
                "it is {file_len} bytes but its block map {} describes {} bytes",
                bmap_path.as_ref().expect("a map has a path").display(),
                b.image_size
            )))
        }
        (Compression::None, _, _) => file_len,
        (_, Some(b), _) => b.image_size,
        (_, None, Some(r)) => r.disk_size,
        (_, None, None) => {
            return Err(FlashError::UnknownSize {
                image: image.clone(),
            })
        }
    };
    if let Some(r) = &record {
        if r.disk_size != image_size {
            return Err(corrupt(format!(
                "it holds a {image_size}-byte disk but its build record {} says {} bytes",
                record_path.display(),
                r.disk_size
            )));
        }
    }

    let (mapping, ranges) = match (&bmap, compression) {
        (Some(b), _) => ("block map", b.ranges.clone()),
        (None, Compression::None) => {
            let f = File::open(image).map_err(io_err(image, "reading the image"))?;
            let ranges = image::data_ranges(&f, image_size)
                .map_err(io_err(image, "finding the ranges that hold data"))?;
            (
                "sparse file",
                ranges
                    .into_iter()
                    .map(|(start, len)| MappedRange {
                        start,
                        len,
                        sha256: None,
                    })
                    .collect(),
            )
        }
        (None, _) => (
            "whole image",
            vec![MappedRange {
                start: 0,
                len: image_size,
                sha256: None,
            }],
        ),
    };

    // The partition table.
    let mut reader = open_reader(image, compression)?;
    let mut head = vec![0u8; image::HEAD_BYTES.min(image_size as usize)];
    reader.read_at(0, &mut head).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt("it ends before its partition table".into())
        } else {
            FlashError::Io {
                path: image.clone(),
                what: "reading the image",
                source: e,
            }
        }
    })?;
    let backup = match &reader {
        ImageReader::Raw(f) if image_size >= 512 => {
            let mut s = vec![0u8; 512];
            f.read_exact_at(&mut s, image_size - 512)
                .map_err(io_err(image, "reading the image"))?;
            Some(s)
        }
        _ => None,
    };
    drop(reader);
    let table = image::read_table(&head, image_size, backup.as_deref()).map_err(corrupt)?;

    // The board.
    if let (Some(b), Some(r)) = (opts.board, &record) {
        if b != r.board {
            return Err(FlashError::RecordBoard {
                image: image.clone(),
                record: record_path.clone(),
                built_for: r.board,
                board: b,
            });
        }
    }
    let claim = opts.board.map(|b| (b, "--board".to_string())).or_else(|| {
        record.as_ref().map(|r| {
            (
                r.board,
                format!("its build record {} says so", record_path.display()),
            )
        })
    });
    if let Some((b, said_by)) = &claim {
        let board = crate::assets::board(*b).map_err(|e| FlashError::WrongBoard {
            image: image.clone(),
            board: *b,
            said_by: said_by.clone(),
            reason: e.to_string(),
        })?;
        if let Some(reason) = table.misfit(&board) {
            return Err(FlashError::WrongBoard {
                image: image.clone(),
                board: *b,
                said_by: said_by.clone(),
                reason,
            });
        }
    }

    // Size and SHA-256 against the build record (checked in `flash`, with progress).
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    let mut record_sum = None;
    if let Some(a) = record
        .as_ref()
        .and_then(|r| r.artifacts.iter().find(|a| a.file == name))
    {
        if a.size != file_len {
            return Err(corrupt(format!(
                "it is {file_len} bytes but its build record {} says {}",
                record_path.display(),
                a.size
            )));
        }
        record_sum = Some((record_path.clone(), a.sha256.clone()));
    }

    Ok(Checked {
        compression,
        image_size,
        mapping,
        block_map: bmap.as_ref().and(bmap_path),
        ranges,
        table,
        board: claim.map(|(b, _)| b),
        record_sum,
    })
}

fn open_reader(image: &Path, compression: Compression) -> Result<ImageReader, FlashError> {
    ImageReader::open(image, compression).map_err(|e| match e {
        image::OpenError::Io(source) => FlashError::Io {
            path: image.to_path_buf(),
            what: "reading the image",
            source,
        },
        image::OpenError::NoXz(source) => FlashError::NoXz {
            image: image.to_path_buf(),
            source,
        },
    })
}

/// SHA-256 of a file, with progress.
fn sha256_with_progress(path: &Path, step: &Step) -> io::Result<String> {
    let mut f = File::open(path)?;
    step.bytes(f.metadata()?.len());
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        step.inc(n as u64);
    }
    Ok(hex::encode(h.finalize()))
}

/// Flashes `opts.image` to `opts.device` as described in the module's documentation.
pub fn flash(opts: &FlashOptions) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let image = &opts.image;
    let device = &opts.device;

    // The cloud-config first: a bad document stops all before the device is touched.
    let cloud = match &opts.cloud_config {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(io_err(file, "reading the cloud-config"))?;
            let v = crate::config_cmd::validate_text(&file.display().to_string(), &text);
            if !v.is_valid() {
                return Err(FlashError::CloudConfig { message: v.human() });
            }
            Some((file.clone(), text))
        }
        None => None,
    };

    let checked = check_image(opts)?;

    // The target.
    let device_err = |reason: String| FlashError::Device {
        device: device.clone(),
        reason,
    };
    let kind = device::classify(device).map_err(device_err)?;
    let sys = Path::new("/sys");
    let mut desc = String::new();
    match kind {
        TargetKind::Block { rdev } => {
            let family = device::Family::read(sys, rdev).map_err(io_err(
                device,
                "reading the device's partitions and holders in /sys",
            ))?;
            let d = device::describe(sys, &family.name);
            if !d.is_empty() {
                desc = format!(" ({d})");
            }
            if opts.mode != Mode::VerifyOnly {
                let host = device::Host::read().map_err(io_err(
                    Path::new("/proc/self/mountinfo"),
                    "reading the mounts",
                ))?;
                let refusals = device::refusals(&family, &host);
                if !refusals.is_empty() && !opts.force {
                    return Err(FlashError::Refused {
                        device: device.clone(),
                        desc,
                        reasons: refusals
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join("; "),
                        forcible: true,
                    });
                }
            }
        }
        TargetKind::New if opts.mode == Mode::VerifyOnly => {
            return Err(device_err("does not exist".into()))
        }
        _ => {}
    }
    let device_size = match kind {
        TargetKind::Block { .. } => {
            use std::io::Seek;
            File::open(device)
                .and_then(|mut f| f.seek(io::SeekFrom::End(0)))
                .map_err(io_err(device, "reading the device's size"))?
        }
        TargetKind::File => std::fs::metadata(device)
            .map_err(io_err(device, "reading the file's size"))?
            .len(),
        TargetKind::New => 0,
    };
    let grows = matches!(kind, TargetKind::File | TargetKind::New) && opts.mode != Mode::VerifyOnly;
    if device_size < checked.image_size && !grows {
        return Err(FlashError::TooSmall {
            device: device.clone(),
            desc,
            device_size,
            image: image.clone(),
            image_size: checked.image_size,
        });
    }

    // The image's SHA-256 against its build record.
    let steps = 1
        + usize::from(checked.record_sum.is_some())
        + usize::from(opts.mode != Mode::VerifyOnly)
        + usize::from(cloud.is_some());
    let mut progress = Progress::new(steps);
    if let Some((record, want)) = &checked.record_sum {
        let step = progress.step(&format!(
            "checking {} against its build record",
            image.display()
        ));
        let got = sha256_with_progress(image, &step).map_err(io_err(image, "reading the image"))?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(FlashError::CorruptImage {
                image: image.clone(),
                reason: format!(
                    "its SHA-256 is {got} but its build record {} says {want}",
                    record.display()
                ),
            });
        }
        step.done("SHA-256 matches");
    }

    // Open the device. O_EXCL makes the kernel refuse a block device it holds (mounted, swap, RAID).
    let block = matches!(kind, TargetKind::Block { .. });
    let dev = if opts.mode == Mode::VerifyOnly {
        File::open(device).map_err(io_err(device, "opening"))?
    } else {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if block {
            o.custom_flags(libc::O_EXCL);
        } else {
            o.create(true);
        }
        let f = o.open(device).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                FlashError::Refused {
                    device: device.clone(),
                    desc: desc.clone(),
                    reasons: "the kernel holds it (mounted, swap, or part of a RAID or LVM volume)"
                        .into(),
                    forcible: false,
                }
            } else {
                FlashError::Io {
                    path: device.clone(),
                    what: "opening for writing",
                    source: e,
                }
            }
        })?;
        if !block && device_size < checked.image_size {
            f.set_len(checked.image_size)
                .map_err(io_err(device, "extending the file to the image's size"))?;
        }
        f
    };
    if opts.mode != Mode::Write {
        drop_cache(&dev, block);
    }

    let mut reader = open_reader(image, checked.compression)?;
    let step_name = match opts.mode {
        Mode::Write => format!("writing {} to {}{desc}", image.display(), device.display()),
        Mode::Resume => format!("resuming {} on {}{desc}", image.display(), device.display()),
        Mode::VerifyOnly => format!(
            "comparing {}{desc} with {}",
            device.display(),
            image.display()
        ),
    };
    let step = progress.step(&step_name);
    let guard = (opts.mode != Mode::VerifyOnly).then(SignalGuard::install);
    let pass = copy_pass(&mut reader, &dev, opts, &checked, &step)?;
    drop(guard);
    let mapped: u64 = checked.ranges.iter().map(|r| r.len).sum();
    step.done(&match opts.mode {
        Mode::VerifyOnly => format!("{} compared", device::human_bytes(mapped)),
        _ => format!(
            "{} written in {} ranges",
            device::human_bytes(pass.written),
            checked.ranges.len()
        ),
    });

    if opts.mode == Mode::VerifyOnly {
        if let Some(&(start, end)) = pass.differing.first() {
            return Err(FlashError::Differs {
                device: device.clone(),
                image: image.clone(),
                count: pass.differing.len(),
                chunks: pass.chunks.len(),
                start,
                end,
            });
        }
    } else {
        let step = progress.step(&format!("verifying {}", device.display()));
        verify(&dev, block, opts, &pass.chunks, &step)?;
        step.done("every range reads back as written");
    }

    let cloud_config = match cloud {
        None => None,
        Some((file, text)) => {
            let step = progress.step("cloud-config");
            let part =
                checked
                    .table
                    .boot_partition()
                    .ok_or_else(|| FlashError::NoBootPartition {
                        device: device.clone(),
                        reason: format!(
                            "{} has no EFI system partition or FAT partition",
                            image.display()
                        ),
                    })?;
            let instance_id = crate::config_cmd::instance_id(&text);
            let meta = format!("instance-id: {instance_id}\n");
            cloud::write_files(
                &dev,
                part.offset,
                part.size,
                &[("user-data", text.as_str()), ("meta-data", meta.as_str())],
            )
            .map_err(|source| FlashError::CloudConfigWrite {
                device: device.clone(),
                partition: part.number,
                file: file.clone(),
                source,
            })?;
            step.done(&format!(
                "user-data and meta-data on partition {}",
                part.number
            ));
            Some(PlacedConfig {
                file,
                partition: part.number,
                files: vec!["user-data".into(), "meta-data".into()],
                instance_id,
            })
        }
    };

    if block && opts.mode != Mode::VerifyOnly {
        // Have the kernel read the new partition table, as partprobe would
        // (udev does the same on close, where it runs).
        use std::os::fd::AsRawFd;
        // SAFETY: BLKRRPART takes no argument; the descriptor is open.
        let _ = unsafe { blkrrpart(dev.as_raw_fd()) };
    }

    Ok(FlashReport {
        image: image.clone(),
        device: device.clone(),
        target: if block { "block device" } else { "file" },
        mode: opts.mode,
        image_size: checked.image_size,
        mapping: checked.mapping,
        block_map: checked.block_map,
        ranges: checked.ranges.len(),
        mapped_bytes: mapped,
        bytes_written: pass.written,
        bytes_unchanged: pass.unchanged,
        image_checked_against: checked.record_sum.map(|(p, _)| p),
        board: checked.board,
        verified: true,
        duration_s: started.elapsed().as_secs_f64(),
        cloud_config,
    })
}

/// What the copy pass did.
struct Pass {
    written: u64,
    unchanged: u64,
    /// Offset, length and SHA-256 of every chunk, as the image has it.
    chunks: Vec<(u64, usize, [u8; 32])>,
    /// Chunks whose bytes on the device differ (verify-only).
    differing: Vec<(u64, u64)>,
}

fn copy_pass(
    reader: &mut ImageReader,
    dev: &File,
    opts: &FlashOptions,
    checked: &Checked,
    step: &Step,
) -> Result<Pass, FlashError> {
    let ranges = &checked.ranges;
    let total: u64 = ranges.iter().map(|r| r.len).sum();
    step.bytes(total);
    let mut done = Done {
        bytes: 0,
        total,
        ranges: 0,
        ranges_total: ranges.len(),
    };
    let mut pass = Pass {
        written: 0,
        unchanged: 0,
        chunks: Vec::new(),
        differing: Vec::new(),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut on_device = vec![0u8; if opts.mode == Mode::Write { 0 } else { CHUNK }];
    let mut since_sync = 0u64;
    let device_io = |what: &'static str, offset: u64, done: Done| {
        move |source| FlashError::DeviceIo {
            what,
            device: opts.device.clone(),
            image: opts.image.clone(),
            offset,
            done,
            source,
        }
    };
    let interrupted = |done: Done| {
        let _ = dev.sync_data();
        FlashError::Interrupted {
            device: opts.device.clone(),
            image: opts.image.clone(),
            done,
        }
    };
    for (i, r) in ranges.iter().enumerate() {
        let mut range_hash = r.sha256.map(|_| Sha256::new());
        let mut off = r.start;
        while off < r.end() {
            let n = (r.end() - off).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            reader.read_at(off, chunk).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    FlashError::CorruptImage {
                        image: opts.image.clone(),
                        reason: format!(
                            "it ends before byte {}, short of its {} bytes",
                            off + n as u64,
                            checked.image_size
                        ),
                    }
                } else {
                    FlashError::Io {
                        path: opts.image.clone(),
                        what: "reading the image",
                        source: e,
                    }
                }
            })?;
            if let Some(h) = range_hash.as_mut() {
                h.update(&*chunk);
            }
            let sum: [u8; 32] = Sha256::digest(&*chunk).into();
            let same = if opts.mode == Mode::Write {
                false
            } else {
                dev.read_exact_at(&mut on_device[..n], off)
                    .map_err(device_io("reading", off, done))?;
                on_device[..n] == *chunk
            };
            if same {
                pass.unchanged += n as u64;
            } else if opts.mode == Mode::VerifyOnly {
                pass.differing.push((off, off + n as u64));
            } else {
                dev.write_all_at(chunk, off)
                    .map_err(device_io("writing", off, done))?;
                pass.written += n as u64;
                since_sync += n as u64;
                if since_sync >= SYNC_EVERY {
                    dev.sync_data().map_err(device_io("syncing", off, done))?;
                    since_sync = 0;
                }
            }
            pass.chunks.push((off, n, sum));
            off += n as u64;
            done.bytes += n as u64;
            step.inc(n as u64);
            if INTERRUPTED.load(Ordering::SeqCst) && opts.mode != Mode::VerifyOnly {
                return Err(interrupted(done));
            }
        }
        if let (Some(h), Some(want)) = (range_hash, r.sha256) {
            let got: [u8; 32] = h.finalize().into();
            if got != want {
                return Err(FlashError::RangeChecksum {
                    image: opts.image.clone(),
                    bmap: checked.block_map.clone().unwrap_or_default(),
                    index: i + 1,
                    start: r.start,
                    end: r.end(),
                    actual: hex::encode(got),
                    expected: hex::encode(want),
                    written: pass.written > 0,
                });
            }
        }
        done.ranges = i + 1;
        if opts.stop_after_ranges == Some(i + 1) && i + 1 < ranges.len() {
            return Err(interrupted(done));
        }
    }
    Ok(pass)
}

/// Syncs the device, drops its cached pages and reads every chunk back.
fn verify(
    dev: &File,
    block: bool,
    opts: &FlashOptions,
    chunks: &[(u64, usize, [u8; 32])],
    step: &Step,
) -> Result<(), FlashError> {
    let total: u64 = chunks.iter().map(|c| c.1 as u64).sum();
    let done = Done {
        bytes: total,
        total,
        ranges: 0,
        ranges_total: 0,
    };
    dev.sync_all().map_err(|source| FlashError::DeviceIo {
        what: "syncing",
        device: opts.device.clone(),
        image: opts.image.clone(),
        offset: 0,
        done,
        source,
    })?;
    drop_cache(dev, block);
    step.bytes(total);
    let mut buf = vec![0u8; CHUNK];
    let mut bad = Vec::new();
    for &(off, n, sum) in chunks {
        dev.read_exact_at(&mut buf[..n], off)
            .map_err(|source| FlashError::DeviceIo {
                what: "reading back",
                device: opts.device.clone(),
                image: opts.image.clone(),
                offset: off,
                done,
                source,
            })?;
        if <[u8; 32]>::from(Sha256::digest(&buf[..n])) != sum {
            bad.push((off, off + n as u64));
        }
        step.inc(n as u64);
    }
    match bad.first() {
        None => Ok(()),
        Some(&(start, end)) => Err(FlashError::Differs {
            device: opts.device.clone(),
            image: opts.image.clone(),
            count: bad.len(),
            chunks: chunks.len(),
            start,
            end,
        }),
    }
}
