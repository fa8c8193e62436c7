//! `basalt keygen`, `bundle`, `sign` and `inspect`: signed update bundles
//! made from built images.
//!
//! A bundle carries slot A's root file system image and boot files from a
//! built `.img`, each compressed with zstd, behind a manifest signed with
//! Ed25519 (see [`basalt_formats::bundle`]).

use crate::progress::Progress;
use basalt_formats::bundle::stream::{delta, BundleError, BundleReader, BundleWriter};
use basalt_formats::bundle::{
    signature_report, Compression, KeyError, KeyId, Manifest, Payload, PayloadBase, PayloadName,
    PolicyError, PublicKey, SecretKey, Sha256Digest, SignatureEntry, SignatureStatus, Signatures,
    TrustPolicy, MANIFEST_FORMAT,
};
use basalt_formats::layout::LABEL_ESP;
use basalt_formats::record::BuildRecord;
use basalt_formats::Slot;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// zstd level of bundle payloads.
pub const ZSTD_LEVEL: i32 = 6;

/// What went wrong, naming the file, partition, payload or key.
#[derive(Debug, thiserror::Error)]
pub enum BundleCmdError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} already exists; keygen never overwrites a key")]
    KeyExists { path: PathBuf },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("{path}: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {field} {value:?} is not a semantic version: {source}")]
    Version {
        path: PathBuf,
        field: &'static str,
        value: String,
        source: semver::Error,
    },
    #[error("{path}: reading the partition table: {source} (nor is it an MBR disk with basalt's Raspberry Pi layout)")]
    Gpt {
        path: PathBuf,
        source: gptman::Error,
    },
    #[error("{path}: no partition labelled {label:?}")]
    NoPartition { path: PathBuf, label: String },
    #[error("{path}: the build record's rootfs_size ({size} bytes) does not fit partition {label} ({room} bytes)")]
    RootfsSize {
        path: PathBuf,
        label: String,
        size: u64,
        room: u64,
    },
    #[error("{path}: ESP file {file}: {source}")]
    Esp {
        path: PathBuf,
        file: String,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error("--delta-from {path}: {reason}")]
    Delta { path: PathBuf, reason: String },
    #[error("{path}: key {key_id} has already signed this bundle")]
    AlreadySigned { path: PathBuf, key_id: KeyId },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{path}: {}", problems.join("; "))]
    Inspect {
        path: PathBuf,
        problems: Vec<String>,
    },
}

type Result<T> = std::result::Result<T, BundleCmdError>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleCmdError + '_ {
    move |source| BundleCmdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bundle_at(path: &Path) -> impl FnOnce(BundleError) -> BundleCmdError + '_ {
    move |source| BundleCmdError::Bundle {
        path: path.to_path_buf(),
        source,
    }
}

/// `SOURCE_DATE_EPOCH` when set (reproducible bundles), else the current time.
pub fn created_now() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

// ---------------------------------------------------------------- keys

/// The files `keygen` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct KeygenOutcome {
    pub public_key: PublicKey,
    pub key_id: KeyId,
    pub secret_key_file: PathBuf,
    pub public_key_file: PathBuf,
}

/// `NAME` → `NAME.key`, `NAME.pub` (an existing `.key` extension is replaced).
fn key_paths(name: &Path) -> (PathBuf, PathBuf) {
    let base = match name.extension().and_then(|e| e.to_str()) {
        Some("key" | "pub") => name.with_extension(""),
        _ => name.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = base.clone().into_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Makes a key pair from the OS random number generator and writes
/// `NAME.key` (mode 0600, never overwriting) and `NAME.pub`.
pub fn keygen(name: &Path) -> Result<KeygenOutcome> {
    let (secret_path, public_path) = key_paths(name);
    for p in [&secret_path, &public_path] {
        if p.symlink_metadata().is_ok() {
            return Err(BundleCmdError::KeyExists { path: p.clone() });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleCmdError::Io {
        path: secret_path.clone(),
        source: io::Error::other(format!("reading the OS random number generator: {e}")),
    })?;
    let secret = SecretKey::from_seed(&seed);
    seed.fill(0);
    let public = secret.public_key();
    let create = |path: &Path, mode: u32, text: String| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => BundleCmdError::KeyExists {
                    path: path.to_path_buf(),
                },
                _ => io_at(path)(e),
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_at(path))
    };
    create(&secret_path, 0o600, format!("{secret}\n"))?;
    create(&public_path, 0o644, format!("{public}\n"))?;
    Ok(KeygenOutcome {
        public_key: public,
        key_id: public.key_id(),
        secret_key_file: secret_path,
        public_key_file: public_path,
    })
}

/// Reads a secret key file, warning when others may read it.
pub fn read_secret_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).map_err(io_at(path))?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "basalt: warning: {} can be read by other users (chmod 600 it)",
                path.display()
            );
        }
    }
    text.parse().map_err(|source| BundleCmdError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// A public key given as its text, or as a file holding it.
pub fn read_public_key(arg: &str) -> Result<PublicKey> {
    if let Ok(k) = arg.parse() {
        return Ok(k);
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path).map_err(io_at(path))?;
    text.parse().map_err(|source| BundleCmdError::Key {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------- reading a built image

/// A partition of a disk image file, as a file of its own. Writes fail.
#[derive(Debug)]
pub(crate) struct PartitionFile {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for PartitionFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(left.min(usize::MAX as u64) as usize);
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let k = self.file.read(&mut buf[..n])?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Seek for PartitionFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

impl Write for PartitionFile {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is opened read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens partition `label` of the disk image at `path`: a GPT partition of
/// that name, or on an MBR disk with basalt's Raspberry Pi layout the
/// partition its number gives that label (`boot-a` is partition 2).
pub(crate) fn open_partition(path: &Path, label: &str) -> Result<PartitionFile> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let no_partition = || BundleCmdError::NoPartition {
        path: path.to_path_buf(),
        label: label.to_string(),
    };
    let (start, len) = match gptman::GPT::find_from(&mut file) {
        Ok(gpt) => {
            let (_, part) = gpt
                .iter()
                .find(|(_, p)| p.is_used() && p.partition_name.as_str() == label)
                .ok_or_else(no_partition)?;
            (
                part.starting_lba * gpt.sector_size,
                (part.ending_lba + 1 - part.starting_lba) * gpt.sector_size,
            )
        }
        Err(source) => {
            let mbr = basalt_formats::layout::read_mbr(&mut file)
                .filter(|t| t.is_rpi_layout())
                .ok_or_else(|| BundleCmdError::Gpt {
                    path: path.to_path_buf(),
                    source,
                })?;
            let part = mbr
                .partitions
                .iter()
                .find(|p| basalt_formats::layout::rpi_label(p.number).as_deref() == Some(label))
                .ok_or_else(no_partition)?;
            (part.first_lba * 512, part.sectors * 512)
        }
    };
    Ok(PartitionFile {
        file,
        start,
        len,
        pos: 0,
    })
}

/// Reads a file from the FAT ESP of the image at `path`.
fn read_esp_file(path: &Path, file: &str) -> Result<Vec<u8>> {
    let part = open_partition(path, LABEL_ESP)?;
    let err = |source| BundleCmdError::Esp {
        path: path.to_path_buf(),
        file: file.to_string(),
        source,
    };
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).map_err(err)?;
    let mut bytes = Vec::new();
    fs.root_dir()
        .open_file(file)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(err)?;
    Ok(bytes)
}

/// The build record beside an image, parsed.
pub fn read_record(image: &Path) -> Result<(PathBuf, BuildRecord)> {
    let path = crate::build::record_path(image);
    let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
    let record = serde_json::from_str(&text).map_err(|source| BundleCmdError::Record {
        path: path.clone(),
        source,
    })?;
    Ok((path, record))
}

// ---------------------------------------------------------------- hashing and compressing

/// Counts and hashes what passes through.
#[derive(Debug)]
struct Hashing<T> {
    inner: T,
    hash: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses `input` (read from `in_path`) into `out` with zstd, in
/// independent frames that a device can resume at ([`delta`]), returning
/// the payload entry. With a `base`, the payload is a delta against it.
fn compress_payload(
    name: PayloadName,
    input: impl Read,
    base: Option<&[u8]>,
    in_path: &Path,
    out: &mut File,
    out_path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Payload> {
    let mut input = Hashing::new(input);
    let w = io_at(out_path);
    let mut sink = Hashing::new(BufWriter::new(&mut *out));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .min(8);
    let (level, threads) = match base {
        Some(_) => (delta::DELTA_LEVEL, 0),
        None => (ZSTD_LEVEL, threads),
    };
    delta::encode_frames(base, &mut input, &mut sink, level, threads, &mut progress).map_err(
        |e| BundleCmdError::Io {
            path: in_path.to_path_buf(),
            source: io::Error::new(e.kind(), format!("compressing {name}: {e}")),
        },
    )?;
    sink.flush().map_err(w)?;
    Ok(Payload {
        name,
        compression: Compression::Zstd,
        size: input.bytes,
        sha256: Sha256Digest::from_hasher(input.hash),
        compressed_size: sink.bytes,
        compressed_sha256: Sha256Digest::from_hasher(sink.hash),
        frame_size: Some(delta::FRAME_SIZE as u64),
        base: base.map(|b| PayloadBase {
            size: b.len() as u64,
            sha256: Sha256Digest::of(b),
        }),
    })
}

/// A built image's version and payloads: slot A's root file system (the
/// first `rootfs_size` bytes of its partition), and its kernel and initrd
/// (UEFI) or its boot slot partition up to the last cluster in use
/// (Raspberry Pi).
struct ImagePayloads {
    record: BuildRecord,
    version: semver::Version,
    root: PartitionFile,
    boot: BootPayloads,
}

/// What boots a slot, by board.
enum BootPayloads {
    Uefi { kernel: Vec<u8>, initrd: Vec<u8> },
    Rpi { boot: PartitionFile },
}

impl ImagePayloads {
    fn open(image: &Path) -> Result<ImagePayloads> {
        let (record_path, record) = read_record(image)?;
        let version: semver::Version =
            record
                .version
                .parse()
                .map_err(|source| BundleCmdError::Version {
                    path: record_path.clone(),
                    field: "version",
                    value: record.version.clone(),
                    source,
                })?;
        let root_label = Slot::A.root_label();
        let mut root = open_partition(image, &root_label)?;
        if record.rootfs_size == 0 || record.rootfs_size > root.len {
            return Err(BundleCmdError::RootfsSize {
                path: record_path,
                label: root_label,
                size: record.rootfs_size,
                room: root.len,
            });
        }
        root.len = record.rootfs_size;
        let boot = if record.board.is_rpi() {
            // The boot partition up to its last cluster in use.
            let mut boot = open_partition(image, &format!("boot-{}", Slot::A))?;
            boot.len = crate::build::rpi::fat_used_len(&mut boot).map_err(io_at(image))?;
            boot.seek(SeekFrom::Start(0)).map_err(io_at(image))?;
            BootPayloads::Rpi { boot }
        } else {
            BootPayloads::Uefi {
                kernel: read_esp_file(image, &format!("basalt/{}/vmlinuz", Slot::A))?,
                initrd: read_esp_file(image, &format!("basalt/{}/initrd", Slot::A))?,
            }
        };
        Ok(ImagePayloads {
            record,
            version,
            root,
            boot,
        })
    }

    /// The payloads in bundle order: name, bytes, size.
    fn inputs(self) -> Vec<(PayloadName, Box<dyn Read>, u64)> {
        let mut out: Vec<(PayloadName, Box<dyn Read>, u64)> = vec![(
            PayloadName::Rootfs,
            Box::new(self.root),
            self.record.rootfs_size,
        )];
        match self.boot {
            BootPayloads::Uefi { kernel, initrd } => {
                for (name, bytes) in [(PayloadName::Kernel, kernel), (PayloadName::Initrd, initrd)]
                {
                    let len = bytes.len() as u64;
                    out.push((name, Box::new(io::Cursor::new(bytes)), len));
                }
            }
            BootPayloads::Rpi { boot } => {
                let len = boot.len;
                out.push((PayloadName::Boot, Box::new(boot), len));
            }
        }
        out
    }
}

/// The bases of a delta bundle: the older image's payloads, in memory.
struct Bases {
    version: semver::Version,
    payloads: Vec<(PayloadName, Vec<u8>)>,
}

impl Bases {
    /// Reads `old`, which must be an older build of the same image for the same board.
    fn read(old: &Path, new: &ImagePayloads) -> Result<Bases> {
        let o = ImagePayloads::open(old)?;
        let refuse = |reason: String| BundleCmdError::Delta {
            path: old.to_path_buf(),
            reason,
        };
        if o.record.name != new.record.name {
            return Err(refuse(format!(
                "is image {}, not {}",
                o.record.name, new.record.name
            )));
        }
        if o.record.board != new.record.board {
            return Err(refuse(format!(
                "is for board {}, not {}",
                o.record.board, new.record.board
            )));
        }
        if o.version.cmp_precedence(&new.version).is_ge() {
            return Err(refuse(format!(
                "is version {}, which is not older than {}",
                o.version, new.version
            )));
        }
        let version = o.version.clone();
        let mut payloads = Vec::new();
        for (name, mut input, size) in o.inputs() {
            let mut bytes = Vec::with_capacity(size as usize);
            input.read_to_end(&mut bytes).map_err(io_at(old))?;
            payloads.push((name, bytes));
        }
        Ok(Bases { version, payloads })
    }

    fn of(&self, name: PayloadName) -> &[u8] {
        self.payloads
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[], |(_, b)| b)
    }
}

// ---------------------------------------------------------------- bundle

/// What `basalt bundle` is asked to do.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// The `.img` made by `basalt build`, with its `.json` record beside it.
    pub image: PathBuf,
    /// The secret key to sign with.
    pub key: PathBuf,
    /// The oldest running version the bundle may replace (default: any, `0.0.0`).
    pub min_version: Option<semver::Version>,
    /// Where to write the bundle (default: `<stem>.basalt` beside the
    /// image, `<stem>.from-<old version>.basalt` for a delta).
    pub out: Option<PathBuf>,
    /// Make a delta bundle against this older built image.
    pub delta_from: Option<PathBuf>,
    /// The manifest's `created` (UNIX seconds).
    pub created: u64,
}

/// What `basalt bundle` made.
#[derive(Debug, Clone, Serialize)]
pub struct BundleOutcome {
    pub bundle: PathBuf,
    pub key_id: KeyId,
    pub manifest: Manifest,
}

/// The default bundle path: `X.img` → `X.basalt`.
pub fn default_bundle_path(image: &Path) -> PathBuf {
    let record = crate::build::record_path(image);
    record.with_extension(basalt_formats::bundle::EXTENSION)
}

/// Makes a signed bundle from a built image.
pub fn bundle(opts: &BundleOptions) -> Result<BundleOutcome> {
    let secret = read_secret_key(&opts.key)?;
    let image = ImagePayloads::open(&opts.image)?;
    let bases = match &opts.delta_from {
        Some(old) => Some(Bases::read(old, &image)?),
        None => None,
    };
    let out = opts.out.clone().unwrap_or_else(|| match &bases {
        Some(b) => default_bundle_path(&opts.image).with_extension(format!(
            "from-{}.{}",
            b.version,
            basalt_formats::bundle::EXTENSION
        )),
        None => default_bundle_path(&opts.image),
    });
    let out_dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };

    let record = image.record.clone();
    let version = image.version.clone();
    let inputs = image.inputs();
    let mut progress = Progress::new(inputs.len() + 1);
    let mut payloads = Vec::new();
    let mut files = Vec::new();
    for (name, input, size) in inputs {
        let base = bases.as_ref().map(|b| b.of(name));
        let step = progress.step(&match &bases {
            Some(b) => format!("delta-compressing {name} against {}", b.version),
            None => format!("compressing {name}"),
        });
        step.bytes(size);
        let mut tmp = tempfile::tempfile_in(&out_dir).map_err(io_at(&out_dir))?;
        let payload = compress_payload(name, input, base, &opts.image, &mut tmp, &out, |n| {
            step.inc(n)
        })?;
        step.done(&format!(
            "{} MiB → {} KiB",
            payload.size.div_ceil(1 << 20),
            payload.compressed_size.div_ceil(1 << 10)
        ));
        payloads.push(payload);
        files.push(tmp);
    }

    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: record.name.clone(),
        version,
        boards: vec![record.board],
        min_version: opts
            .min_version
            .clone()
            .unwrap_or(semver::Version::new(0, 0, 0)),
        created: opts.created,
        rootfs_type: record.rootfs_type,
        payloads,
        base_version: bases.map(|b| b.version),
    };
    let manifest_bytes = manifest.to_bytes();
    // Refuses a floor above the version, an invalid name and the like.
    Manifest::parse(&manifest_bytes).map_err(|e| bundle_at(&out)(e.into()))?;
    let step = progress.step("signing and writing the bundle");
    let signatures = Signatures(vec![SignatureEntry::sign(&secret, &manifest_bytes)]);
    write_atomically(&out, None, |w| {
        let mut writer = BundleWriter::new(w, &manifest_bytes, &signatures)?;
        for (payload, file) in manifest.payloads.iter().zip(&mut files) {
            file.seek(SeekFrom::Start(0))
                .map_err(|source| BundleError::Io {
                    what: "reading a compressed payload",
                    source,
                })?;
            writer.payload(payload.name, BufReader::new(&mut *file))?;
        }
        writer.finish()?;
        Ok(())
    })?;
    step.done(&out.display().to_string());
    Ok(BundleOutcome {
        bundle: out,
        key_id: secret.public_key().key_id(),
        manifest,
    })
}

/// Writes `path` through a temporary file in the same directory, renamed
/// over it once complete. `mode` sets the permissions (default 0644).
fn write_atomically(
    path: &Path,
    mode: Option<u32>,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::result::Result<(), BundleError>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".basalt-")
        .tempfile_in(dir)
        .map_err(io_at(dir))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut w).map_err(bundle_at(path))?;
        w.flush().map_err(io_at(path))?;
    }
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(mode.unwrap_or(0o644)))
        .and_then(|()| file.sync_all())
        .map_err(io_at(path))?;
    tmp.persist(path).map_err(|e| io_at(path)(e.error))?;
    Ok(())
}

// ---------------------------------------------------------------- sign

/// What `basalt sign` did.
#[derive(Debug, Clone, Serialize)]
pub struct SignOutcome {
    pub bundle: PathBuf,
    pub key_id: KeyId,
    /// Signatures the bundle now carries.
    pub signatures: usize,
}

/// Adds a signature by `key` to the bundle at `path`. Refuses when that key
/// has already signed; an invalid signature under the same key id is replaced.
pub fn sign(path: &Path, key: &Path) -> Result<SignOutcome> {
    let secret = read_secret_key(key)?;
    let public = secret.public_key();
    let file = File::open(path).map_err(io_at(path))?;
    let mode = file.metadata().map_err(io_at(path))?.permissions().mode() & 0o7777;
    let reader =
        BundleReader::new(BufReader::with_capacity(1 << 20, file)).map_err(bundle_at(path))?;
    let manifest_bytes = reader.manifest_bytes().to_vec();
    let mut signatures = reader.signatures().clone();
    if signatures
        .0
        .iter()
        .any(|e| e.key_id == public.key_id() && public.verifies(&manifest_bytes, &e.signature))
    {
        return Err(BundleCmdError::AlreadySigned {
            path: path.to_path_buf(),
            key_id: public.key_id(),
        });
    }
    signatures.0.retain(|e| e.key_id != public.key_id());
    signatures
        .0
        .push(SignatureEntry::sign(&secret, &manifest_bytes));
    let mut payloads = reader.without_verification().map_err(bundle_at(path))?;
    let count = signatures.0.len();
    write_atomically(path, Some(mode), |w| {
        let mut writer = BundleWriter::new(w, &manifest_bytes, &signatures)?;
        while let Some(c) = payloads.next_compressed()? {
            let name = c.payload().name;
            writer.payload(name, c).map_err(|e| match e {
                BundleError::Io { source, .. } => BundleError::from_io(source),
                other => other,
            })?;
        }
        payloads.finish()?;
        writer.finish()?;
        Ok(())
    })?;
    Ok(SignOutcome {
        bundle: path.to_path_buf(),
        key_id: public.key_id(),
        signatures: count,
    })
}

// ---------------------------------------------------------------- inspect

/// What `basalt inspect` is asked to check.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    pub bundle: PathBuf,
    /// Keys to check the signatures against; none: signatures are listed only.
    pub trust: Vec<PublicKey>,
    /// Signatures required (default 1).
    pub threshold: Option<usize>,
    /// Stream every payload through zstd and SHA-256.
    pub payloads: bool,
}

/// One signature as `inspect` saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureInfo {
    pub key_id: KeyId,
    /// `None` without `--trust`.
    pub status: Option<SignatureStatus>,
}

/// The policy given with `--trust`, and whether the bundle meets it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    pub met: bool,
    pub valid: usize,
    pub required: usize,
    pub summary: String,
}

/// How one payload's check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    Ok,
    Failed,
    /// An earlier payload failed, so the stream could not go on to this one.
    NotChecked,
}

/// One payload's check.
#[derive(Debug, Clone, Serialize)]
pub struct PayloadCheck {
    pub name: PayloadName,
    pub status: CheckStatus,
    /// Why it failed, or why it was not checked.
    pub error: Option<String>,
}

/// Everything `inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub bundle: PathBuf,
    pub manifest: Manifest,
    pub signatures: Vec<SignatureInfo>,
    pub policy: Option<PolicyInfo>,
    /// Empty with `--no-payloads`.
    pub payloads: Vec<PayloadCheck>,
    /// A problem after the last payload (the end-of-archive marker).
    pub archive_error: Option<String>,
}

impl InspectReport {
    /// Every failure, each naming the payload or key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.policy {
            if !p.met {
                out.push(p.summary.clone());
            }
        }
        for p in &self.payloads {
            if let Some(e) = &p.error {
                out.push(e.clone());
            }
        }
        out.extend(self.archive_error.clone());
        out
    }

    /// The report for a terminal. Problems are not repeated here: the
    /// command's error (see [`require_ok`]) lists them.
    pub fn render(&self) -> String {
        let m = &self.manifest;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<12}{v}\n"));
        line("bundle", self.bundle.display().to_string());
        line("name", m.name.clone());
        line("version", m.version.to_string());
        line("replaces", format!("{} or newer", m.min_version));
        if let Some(base) = &m.base_version {
            line(
                "delta",
                format!("from {base}: only a device running {base} can install it"),
            );
        }
        line(
            "boards",
            m.boards
                .iter()
                .map(|b| b.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        line("created", m.created.to_string());
        line("rootfs", m.rootfs_type.to_string());
        s.push_str("payloads\n");
        for p in &m.payloads {
            let check = match self.payloads.iter().find(|c| c.name == p.name) {
                Some(c) => match c.status {
                    CheckStatus::Ok => "  ok",
                    CheckStatus::Failed => "  FAILED",
                    CheckStatus::NotChecked => "  not checked",
                },
                None => "",
            };
            s.push_str(&format!(
                "  {:<8}{:>14} bytes  sha256 {}\n  {:<8}{:>14} bytes  sha256 {} (zstd{}){check}\n",
                p.name,
                p.size,
                p.sha256,
                "",
                p.compressed_size,
                p.compressed_sha256,
                if p.base.is_some() { " delta" } else { "" }
            ));
            if let Some(b) = &p.base {
                s.push_str(&format!(
                    "  {:<8}{:>14} bytes  sha256 {} (base)\n",
                    "", b.size, b.sha256
                ));
            }
        }
        s.push_str("signatures\n");
        if self.signatures.is_empty() {
            s.push_str("  none\n");
        }
        for sig in &self.signatures {
            match sig.status {
                Some(st) => s.push_str(&format!("  key {}  {st}\n", sig.key_id)),
                None => s.push_str(&format!("  key {}\n", sig.key_id)),
            }
        }
        if let Some(p) = &self.policy {
            let verdict = if p.met { "met" } else { "NOT met" };
            s.push_str(&format!("{:<12}{verdict}: {}\n", "policy", p.summary));
        }
        s
    }
}

/// Reads a bundle, checks its signatures against the given keys and
/// (unless told not to) every payload. Fails only when the bundle cannot be
/// read up to its manifest; everything after that goes into the report.
pub fn inspect(opts: &InspectOptions) -> Result<InspectReport> {
    let path = &opts.bundle;
    let policy = if opts.trust.is_empty() {
        None
    } else {
        Some(TrustPolicy::new(
            opts.trust.clone(),
            opts.threshold.unwrap_or(1),
        )?)
    };
    let file = File::open(path).map_err(io_at(path))?;
    let reader =
        BundleReader::new(BufReader::with_capacity(1 << 20, file)).map_err(bundle_at(path))?;
    let (signatures, policy_info) = match &policy {
        Some(p) => {
            let r = signature_report(reader.manifest_bytes(), reader.signatures(), p);
            let sigs = r
                .entries
                .iter()
                .map(|(key_id, st)| SignatureInfo {
                    key_id: *key_id,
                    status: Some(*st),
                })
                .collect();
            let info = PolicyInfo {
                met: r.met(),
                valid: r.valid,
                required: r.required,
                summary: r.to_string(),
            };
            (sigs, Some(info))
        }
        None => (
            reader
                .signatures()
                .0
                .iter()
                .map(|e| SignatureInfo {
                    key_id: e.key_id,
                    status: None,
                })
                .collect(),
            None,
        ),
    };
    let mut payloads = reader.without_verification().map_err(bundle_at(path))?;
    let manifest = payloads.manifest().clone();
    let mut checks = Vec::new();
    let mut archive_error = None;
    if opts.payloads {
        let mut progress = Progress::new(manifest.payloads.len());
        let mut failed = false;
        for p in &manifest.payloads {
            if failed {
                checks.push(PayloadCheck {
                    name: p.name,
                    status: CheckStatus::NotChecked,
                    error: Some(format!(
                        "payload {}: not checked after the earlier error",
                        p.name
                    )),
                });
                continue;
            }
            let step = progress.step(&format!("checking {}", p.name));
            // A delta payload is checked as stored: its base is on the device.
            step.bytes(if p.base.is_some() {
                p.compressed_size
            } else {
                p.size
            });
            let result = check_next_payload(&mut payloads, |n| step.inc(n));
            match result {
                Ok(()) => {
                    step.done("ok");
                    checks.push(PayloadCheck {
                        name: p.name,
                        status: CheckStatus::Ok,
                        error: None,
                    });
                }
                Err(e) => {
                    step.done("FAILED");
                    failed = true;
                    checks.push(PayloadCheck {
                        name: p.name,
                        status: CheckStatus::Failed,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        if !failed {
            if let Err(e) = payloads.finish() {
                archive_error = Some(e.to_string());
            }
        }
    }
    Ok(InspectReport {
        bundle: path.clone(),
        manifest,
        signatures,
        policy: policy_info,
        payloads: checks,
        archive_error,
    })
}

/// Streams the next payload through its checks.
fn check_next_payload<R: Read>(
    payloads: &mut basalt_formats::bundle::stream::Payloads<R>,
    mut progress: impl FnMut(u64),
) -> std::result::Result<(), BundleError> {
    let mut p: Box<dyn Read + '_> = if payloads.peek().is_some_and(|p| p.base.is_some()) {
        match payloads.next_compressed()? {
            Some(p) => Box::new(p),
            None => return Ok(()),
        }
    } else {
        match payloads.next_payload()? {
            Some(p) => Box::new(p),
            None => return Ok(()),
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = p.read(&mut buf).map_err(BundleError::from_io)?;
        if n == 0 {
            return Ok(());
        }
        progress(n as u64);
    }
}

/// Fails with every problem of `report`, if any.
pub fn require_ok(report: &InspectReport) -> Result<()> {
    let problems = report.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BundleCmdError::Inspect {
            path: report.bundle.clone(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_names() {
        for (given, key, public) in [
            ("keys/release", "keys/release.key", "keys/release.pub"),
            ("keys/release.key", "keys/release.key", "keys/release.pub"),
            ("release-2025.1", "release-2025.1.key", "release-2025.1.pub"),
        ] {
            let (k, p) = key_paths(Path::new(given));
            assert_eq!((k.to_str().unwrap(), p.to_str().unwrap()), (key, public));
        }
    }

    #[test]
    fn default_bundle_beside_the_image() {
        assert_eq!(
            default_bundle_path(Path::new("out/app-1.2.0-x86_64-uefi.img")),
            Path::new("out/app-1.2.0-x86_64-uefi.basalt")
        );
    }

    #[test]
    fn partition_file_is_a_read_only_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut p = PartitionFile {
            file: File::open(&path).unwrap(),
            start: 2,
            len: 5,
            pos: 0,
        };
        let mut s = String::new();
        p.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        assert_eq!(p.seek(SeekFrom::End(-2)).unwrap(), 3);
        let mut b = [0u8; 8];
        assert_eq!(p.read(&mut b).unwrap(), 2);
        assert_eq!(&b[..2], b"56");
        assert!(p.seek(SeekFrom::Current(-10)).is_err());
        assert!(p.write(b"x").is_err());
    }
}
