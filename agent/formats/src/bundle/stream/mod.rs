//! Reading and writing bundles as streams, pure over [`Read`] and [`Write`].
//!
//! The reader is what the device runs: it reads the manifest and the
//! signatures (the first two members) and stops, so the caller can verify
//! them and decide before any payload byte is read. Each payload is then a
//! [`Read`] of its uncompressed bytes, checked as they pass: the size is
//! enforced on the way, and the SHA-256 of both forms is compared when the
//! payload ends, so a wrong hash or a truncated bundle is an error at the end
//! of that payload, never silent.
//!
//! ```no_run
//! # use basalt_formats::bundle::{check, Decision, TrustPolicy, PayloadName};
//! # use basalt_formats::bundle::stream::BundleReader;
//! # fn f(input: impl std::io::Read, policy: &TrustPolicy, running: &basalt_formats::release::Release,
//! #      slot: &mut impl std::io::Write) -> Result<(), Box<dyn std::error::Error>> {
//! let bundle = BundleReader::new(input)?; // manifest and signatures only
//! let mut payloads = bundle.verify(policy)?; // signatures checked, manifest parsed
//! if let Decision::Refuse(reason) = check(payloads.manifest(), running) {
//!     return Err(reason.into());
//! }
//! while let Some(mut payload) = payloads.next_payload()? {
//!     if payload.payload().name == PayloadName::Rootfs {
//!         std::io::copy(&mut payload, slot)?; // the last read fails on a bad hash
//!     }
//!     payload.finish()?;
//! }
//! payloads.finish()?; // the end-of-archive marker, nothing after it
//! # Ok(()) }
//! ```

use super::digest::Sha256Digest;
use super::manifest::{Manifest, ManifestError, Payload, PayloadName};
use super::trust::{verify, Signatures, SignaturesError, TrustPolicy, VerifyError};
use super::{MANIFEST_MEMBER, MAX_MANIFEST_BYTES, MAX_SIGNATURES_BYTES, SIGNATURES_MEMBER};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, BufReader, Read};

pub mod delta;
mod writer;
pub use writer::BundleWriter;

/// The bytes a delta payload is decoded against, shared with the decoder
/// (a memory map of the running slot, or a file read into memory).
pub type Base = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Size of a tar block.
pub const BLOCK: u64 = 512;
/// Zero bytes allowed after the end-of-archive marker (padding some tools add).
const MAX_TRAILING_ZEROS: u64 = 64 << 10;

/// Which form of a payload a size or digest is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The bytes stored in the bundle.
    Compressed,
    /// The bytes written to the device.
    Uncompressed,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Compressed => "compressed",
            Form::Uncompressed => "uncompressed",
        })
    }
}

/// What is wrong with a payload's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadProblem {
    /// The stream ended inside the payload.
    #[error("the bundle ends after {read} of its {expected} compressed bytes")]
    Truncated { read: u64, expected: u64 },
    /// A digest differs from the manifest's.
    #[error("{form} SHA-256 is {actual}, the manifest says {expected}")]
    Digest {
        form: Form,
        actual: Sha256Digest,
        expected: Sha256Digest,
    },
    /// More bytes came out of zstd than the manifest allows (stopped there).
    #[error("decompresses to more than the manifest's {expected} bytes")]
    TooLong { expected: u64 },
    /// A size differs from the manifest's.
    #[error("{form} size is {actual} bytes, the manifest says {expected}")]
    Size {
        form: Form,
        actual: u64,
        expected: u64,
    },
    /// zstd could not decode bytes whose digest was right.
    #[error("zstd: {0}")]
    Zstd(String),
}

/// A payload whose bytes do not match the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload {name}: {problem}")]
pub struct PayloadError {
    /// The payload.
    pub name: PayloadName,
    /// What is wrong with it.
    pub problem: PayloadProblem,
}

/// Why a bundle could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The underlying reader or writer failed (a network or disk error).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The stream ended inside a header member or before one.
    #[error("the bundle ends inside {member}")]
    Truncated { member: String },
    /// A member header that is not a plain ustar file header.
    #[error("bundle member {position} ({expected}): {reason}")]
    BadHeader {
        position: usize,
        expected: String,
        reason: String,
    },
    /// A member other than the one the layout puts here.
    #[error("bundle member {position}: found {found:?}, expected {expected}")]
    UnexpectedMember {
        position: usize,
        expected: String,
        found: String,
    },
    /// A member larger than the format allows.
    #[error("{member}: {size} bytes, more than the {limit} a bundle may have")]
    TooLarge {
        member: String,
        size: u64,
        limit: u64,
    },
    /// A payload member whose size is not the manifest's `compressed_size`.
    #[error(
        "{member}: {size} bytes, the manifest says payload {name} has {expected} compressed bytes"
    )]
    SizeDisagrees {
        member: String,
        name: PayloadName,
        size: u64,
        expected: u64,
    },
    /// Something other than zeros after the end-of-archive marker.
    #[error("the bundle continues after its end-of-archive marker")]
    TrailingData,
    #[error(transparent)]
    Signatures(#[from] SignaturesError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The writer was given payloads out of the manifest's order.
    #[error("payload {found} given where the manifest has {expected}")]
    PayloadOrder {
        expected: String,
        found: PayloadName,
    },
    /// The writer was finished before every payload was written.
    #[error("payload {0} was not written")]
    MissingPayload(PayloadName),
    /// A reading cannot resume where it was asked to.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// A delta payload was asked for without the base it is decoded against.
    #[error("payload {0} is a delta: it can only be decoded against the release it was made from")]
    NeedsBase(PayloadName),
    /// A call after an earlier error.
    #[error("the bundle stream stopped at an earlier error")]
    Stopped,
}

impl BundleError {
    /// Whether fetching the bundle again may help (a read failed or the
    /// stream was cut short), as opposed to a bundle that is bad as published.
    pub fn is_retryable(&self) -> bool {
        match self {
            BundleError::Io { .. } | BundleError::Truncated { .. } => true,
            BundleError::Payload(p) => matches!(p.problem, PayloadProblem::Truncated { .. }),
            _ => false,
        }
    }

    /// The bundle error inside an [`io::Error`] returned by a payload's
    /// `read`, or the I/O error itself.
    pub fn from_io(e: io::Error) -> BundleError {
        if e.get_ref().is_some_and(|inner| inner.is::<BundleError>()) {
            let inner = e.into_inner().expect("checked above");
            return *inner.downcast::<BundleError>().expect("checked above");
        }
        BundleError::Io {
            what: "reading the bundle",
            source: e,
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

fn read_err(source: io::Error) -> BundleError {
    BundleError::Io {
        what: "reading the bundle",
        source,
    }
}

fn write_err(source: io::Error) -> BundleError {
    BundleError::Io {
        what: "writing the bundle",
        source,
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The ustar header of a bundle member: a regular file, mode 0644, owner
/// 0:0, no user or group names, modified at `mtime`.
pub fn member_header(name: &str, size: u64, mtime: u64) -> [u8; BLOCK as usize] {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .expect("member names are short and relative");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Skips `n` bytes; `false` when the stream ends first.
fn skip(r: &mut impl Read, n: u64) -> io::Result<bool> {
    Ok(io::copy(&mut r.take(n), &mut io::sink())? == n)
}

/// Reads the header of member `position` (1-based), which must be `expected`.
/// Returns its size.
fn read_member_header(
    r: &mut impl Read,
    position: usize,
    expected: &str,
) -> Result<u64, BundleError> {
    let mut block = [0u8; BLOCK as usize];
    if read_full(r, &mut block).map_err(read_err)? < block.len() {
        return Err(BundleError::Truncated {
            member: format!("the header of {expected}"),
        });
    }
    let bad = |reason: String| BundleError::BadHeader {
        position,
        expected: expected.to_string(),
        reason,
    };
    if block.iter().all(|&b| b == 0) {
        return Err(BundleError::UnexpectedMember {
            position,
            expected: expected.to_string(),
            found: "end of archive".into(),
        });
    }
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&block);
    let computed: u32 = block[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum();
    match h.cksum() {
        Ok(stored) if stored == computed => {}
        _ => return Err(bad("header checksum mismatch".into())),
    }
    if h.as_ustar().is_none() {
        return Err(bad("not a ustar header".into()));
    }
    let found = String::from_utf8_lossy(&h.path_bytes()).into_owned();
    if found != expected {
        return Err(BundleError::UnexpectedMember {
            position,
            expected: expected.to_string(),
            found,
        });
    }
    if h.entry_type() != tar::EntryType::Regular {
        return Err(bad(format!(
            "entry type {:?}, expected a regular file",
            h.entry_type()
        )));
    }
    h.size()
        .map_err(|e| bad(format!("unreadable size field: {e}")))
}

/// Reads a small member whole.
fn read_small_member(
    r: &mut impl Read,
    position: usize,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, BundleError> {
    let size = read_member_header(r, position, name)?;
    if size > limit {
        return Err(BundleError::TooLarge {
            member: name.to_string(),
            size,
            limit,
        });
    }
    let mut bytes = vec![0u8; size as usize];
    let truncated = || BundleError::Truncated {
        member: name.to_string(),
    };
    if read_full(r, &mut bytes).map_err(read_err)? < bytes.len() {
        return Err(truncated());
    }
    if !skip(r, padding(size)).map_err(read_err)? {
        return Err(truncated());
    }
    Ok(bytes)
}

/// A bundle whose manifest and signatures have been read, and nothing more.
#[derive(Debug)]
pub struct BundleReader<R> {
    inner: R,
    manifest_bytes: Vec<u8>,
    signatures: Signatures,
    /// Bytes of the first two members, headers and padding included.
    head_len: u64,
}

impl<R: Read> BundleReader<R> {
    /// Reads the first two members (`manifest.json`, `signatures.json`) and
    /// stops before the first payload's header.
    pub fn new(mut inner: R) -> Result<BundleReader<R>, BundleError> {
        let manifest_bytes = read_small_member(&mut inner, 1, MANIFEST_MEMBER, MAX_MANIFEST_BYTES)?;
        let sig_bytes = read_small_member(&mut inner, 2, SIGNATURES_MEMBER, MAX_SIGNATURES_BYTES)?;
        let signatures = Signatures::parse(&sig_bytes)?;
        let member_len = |n: usize| BLOCK + n as u64 + padding(n as u64);
        Ok(BundleReader {
            inner,
            head_len: member_len(manifest_bytes.len()) + member_len(sig_bytes.len()),
            manifest_bytes,
            signatures,
        })
    }

    /// The manifest exactly as stored: the bytes the signatures cover.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The signatures as stored.
    pub fn signatures(&self) -> &Signatures {
        &self.signatures
    }

    /// Verifies the signatures against `policy`, parses the manifest, and
    /// gives the payloads.
    pub fn verify(self, policy: &TrustPolicy) -> Result<Payloads<R>, BundleError> {
        let manifest = verify(&self.manifest_bytes, &self.signatures, policy)?;
        Ok(Payloads::new(self.inner, manifest, self.head_len))
    }

    /// Parses the manifest without checking any signature: for inspecting
    /// and signing bundles, never for installing them.
    pub fn without_verification(self) -> Result<Payloads<R>, BundleError> {
        let manifest = Manifest::parse(&self.manifest_bytes)?;
        Ok(Payloads::new(self.inner, manifest, self.head_len))
    }
}

/// The compressed bytes of one member, counted and hashed as they are read.
#[derive(Debug)]
struct Member<R> {
    inner: R,
    remaining: u64,
    read: u64,
    hash: Sha256,
    /// The stream ended inside the member.
    truncated: bool,
    /// The underlying reader failed.
    failed: bool,
    /// Read from the middle on (a resumed payload): its digest cannot be checked.
    partial: bool,
}

impl<R: Read> Read for Member<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
                Ok(n) => break n,
            }
        };
        if n == 0 {
            self.truncated = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the bundle ends inside a payload",
            ));
        }
        self.hash.update(&buf[..n]);
        self.remaining -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

type ZstdDecoder<R> = zstd::stream::read::Decoder<'static, BufReader<Member<R>>>;

/// zstd over a payload's member: one stream, or delta frames against a base.
enum Decoder<R> {
    Full(ZstdDecoder<R>),
    Frames(delta::FrameDecoder<Member<R>>),
}

impl<R: Read> Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Full(d) => d.read(buf),
            Decoder::Frames(d) => d.read(buf),
        }
    }

    /// See [`delta::FrameDecoder::boundary`]; `None` for a one-stream payload.
    fn boundary(&self) -> Option<(u64, u64)> {
        match self {
            Decoder::Full(_) => None,
            Decoder::Frames(d) => d.boundary(),
        }
    }

    fn into_member(self) -> Member<R> {
        match self {
            Decoder::Full(d) => d.finish().into_inner(),
            Decoder::Frames(d) => d.into_inner(),
        }
    }
}

/// A payload being read through zstd.
struct Decoding<R> {
    decoder: Decoder<R>,
    written: u64,
    hash: Sha256,
    /// Where a resumed payload started: (compressed, uncompressed) bytes.
    resumed_at: Option<(u64, u64)>,
}

enum State<R> {
    /// At the header of the next member (or the end-of-archive marker).
    Between(R),
    /// Inside payload `current`, uncompressed.
    Decoding(Box<Decoding<R>>),
    /// Inside payload `current`, compressed bytes as stored.
    Raw(Member<R>),
    /// After an error.
    Stopped,
}

impl<R> fmt::Debug for State<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Between(_) => "Between",
            State::Decoding(_) => "Decoding",
            State::Raw(_) => "Raw",
            State::Stopped => "Stopped",
        })
    }
}

/// The payloads of a bundle whose manifest has been read, in manifest order.
#[derive(Debug)]
pub struct Payloads<R> {
    manifest: Manifest,
    /// Bytes before the first payload's header.
    head_len: u64,
    /// A resumed payload whose reader has not been handed out yet.
    resumed: bool,
    /// Index of the payload being read, or of the next one.
    current: usize,
    state: State<R>,
}

impl<R: Read> Payloads<R> {
    fn new(inner: R, manifest: Manifest, head_len: u64) -> Payloads<R> {
        Payloads {
            manifest,
            head_len,
            resumed: false,
            current: 0,
            state: State::Between(inner),
        }
    }

    /// Where payload `index`'s compressed bytes start in the bundle.
    pub fn member_data_offset(&self, index: usize) -> u64 {
        let before: u64 = self.manifest.payloads[..index]
            .iter()
            .map(|p| BLOCK + p.compressed_size + padding(p.compressed_size))
            .sum();
        self.head_len + before + BLOCK
    }

    /// Goes on with a framed payload from a frame boundary that an earlier
    /// reading reached ([`PayloadReader::boundary`]): `inner` reads the
    /// bundle from [`Payloads::member_data_offset`] + `compressed`, and the
    /// next [`Payloads::next_payload_from`] gives payload `index` from its
    /// `uncompressed`th byte on. The manifest is the one verified here, so
    /// a resumed reading trusts no more than a whole one; but the digests of
    /// a payload read from its middle cannot be checked here: the caller
    /// checks what it wrote against the payload's SHA-256 (the agent reads
    /// the slot back).
    pub fn resume<R2: Read>(
        self,
        inner: R2,
        index: usize,
        compressed: u64,
        uncompressed: u64,
        base: Option<Base>,
    ) -> Result<Payloads<R2>, BundleError> {
        let Some(payload) = self.manifest.payloads.get(index) else {
            return Err(BundleError::Resume(format!("no payload {index}")));
        };
        if payload.base.is_none() && payload.frame_size.is_none() {
            return Err(BundleError::Resume(format!(
                "payload {} is one zstd stream, not frames",
                payload.name
            )));
        }
        if payload.base.is_some() && base.is_none() {
            return Err(BundleError::NeedsBase(payload.name));
        }
        if compressed > payload.compressed_size || uncompressed > payload.size {
            return Err(BundleError::Resume(format!(
                "payload {} has {} compressed and {} bytes, not {compressed} and {uncompressed}",
                payload.name, payload.compressed_size, payload.size
            )));
        }
        let member = Member {
            inner,
            remaining: payload.compressed_size - compressed,
            read: compressed,
            hash: Sha256::new(),
            truncated: false,
            failed: false,
            partial: true,
        };
        Ok(Payloads {
            head_len: self.head_len,
            resumed: true,
            current: index,
            state: State::Decoding(Box::new(Decoding {
                decoder: Decoder::Frames(delta::FrameDecoder::new(member, base)),
                written: uncompressed,
                hash: Sha256::new(),
                resumed_at: Some((compressed, uncompressed)),
            })),
            manifest: self.manifest,
        })
    }

    /// The manifest (verified, if this came from [`BundleReader::verify`]).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The next payload as its uncompressed bytes, or `None` after the last.
    /// An unfinished previous payload is read to its end and checked first.
    /// A delta payload needs its base: see [`Payloads::next_payload_from`].
    pub fn next_payload(&mut self) -> Result<Option<PayloadReader<'_, R>>, BundleError> {
        self.next_payload_from(None)
    }

    /// The payload that [`Payloads::next_payload`] would read next.
    pub fn peek(&self) -> Option<&Payload> {
        self.manifest.payloads.get(self.current)
    }

    /// Like [`Payloads::next_payload`], decoding a delta payload against
    /// `base`, which must be the bytes its manifest entry names (a wrong base
    /// is found by the frame checksums or the payload's SHA-256). `base` is
    /// ignored for a full payload.
    pub fn next_payload_from(
        &mut self,
        base: Option<Base>,
    ) -> Result<Option<PayloadReader<'_, R>>, BundleError> {
        if std::mem::take(&mut self.resumed) {
            let index = self.current;
            return Ok(Some(PayloadReader {
                payloads: self,
                index,
            }));
        }
        let delta = self.peek().is_some_and(|p| p.base.is_some());
        let framed = self.peek().is_some_and(|p| p.frame_size.is_some());
        if delta && base.is_none() {
            let name = self.peek().expect("checked").name;
            return Err(BundleError::NeedsBase(name));
        }
        let Some(member) = self.open_next()? else {
            return Ok(None);
        };
        let decoder = match base {
            Some(base) if delta => Decoder::Frames(delta::FrameDecoder::new(member, Some(base))),
            _ if framed && !delta => Decoder::Frames(delta::FrameDecoder::new(member, None)),
            _ => Decoder::Full(
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                    128 << 10,
                    member,
                ))
                .map_err(|e| self.payload_failed(PayloadProblem::Zstd(e.to_string())))?,
            ),
        };
        self.state = State::Decoding(Box::new(Decoding {
            decoder,
            written: 0,
            hash: Sha256::new(),
            resumed_at: None,
        }));
        let index = self.current;
        Ok(Some(PayloadReader {
            payloads: self,
            index,
        }))
    }

    /// The next payload as the compressed bytes stored in the bundle (for
    /// copying a bundle), or `None` after the last. Their size and SHA-256
    /// are checked when the last byte has been read.
    pub fn next_compressed(&mut self) -> Result<Option<CompressedReader<'_, R>>, BundleError> {
        let Some(member) = self.open_next()? else {
            return Ok(None);
        };
        self.state = State::Raw(member);
        let index = self.current;
        Ok(Some(CompressedReader {
            payloads: self,
            index,
        }))
    }

    /// Reads and checks what is left (unread payloads too), then the
    /// end-of-archive marker. Returns the underlying reader.
    /// Delta payloads left unread are checked as stored (their size and
    /// compressed SHA-256), having no base here to decode against.
    pub fn finish(mut self) -> Result<R, BundleError> {
        loop {
            let more = if self.peek().is_some_and(|p| p.base.is_some()) {
                self.next_compressed()?.is_some()
            } else {
                self.next_payload()?.is_some()
            };
            if !more {
                break;
            }
        }
        self.drain()?;
        let State::Between(mut inner) = std::mem::replace(&mut self.state, State::Stopped) else {
            return Err(BundleError::Stopped);
        };
        let mut end = [0u8; 2 * BLOCK as usize];
        let n = read_full(&mut inner, &mut end).map_err(read_err)?;
        if end[..n].iter().any(|&b| b != 0) {
            let last = self.manifest.payloads.last().map(|p| p.name.member_name());
            return Err(BundleError::UnexpectedMember {
                position: 3 + self.manifest.payloads.len(),
                expected: format!(
                    "the end of the archive after {}",
                    last.as_deref().unwrap_or(SIGNATURES_MEMBER)
                ),
                found: tar_name(&end[..BLOCK as usize]),
            });
        }
        if n < end.len() {
            return Err(BundleError::Truncated {
                member: "the end-of-archive marker".into(),
            });
        }
        let mut rest = Vec::new();
        (&mut inner)
            .take(MAX_TRAILING_ZEROS + 1)
            .read_to_end(&mut rest)
            .map_err(read_err)?;
        if rest.len() as u64 > MAX_TRAILING_ZEROS || rest.iter().any(|&b| b != 0) {
            return Err(BundleError::TrailingData);
        }
        Ok(inner)
    }

    /// Finishes the current payload if any, reads the next member header.
    fn open_next(&mut self) -> Result<Option<Member<R>>, BundleError> {
        self.drain()?;
        if self.current >= self.manifest.payloads.len() {
            return Ok(None);
        }
        let State::Between(mut inner) = std::mem::replace(&mut self.state, State::Stopped) else {
            return Err(BundleError::Stopped);
        };
        let payload = &self.manifest.payloads[self.current];
        let member = payload.name.member_name();
        let size = read_member_header(&mut inner, 3 + self.current, &member)?;
        if size != payload.compressed_size {
            return Err(BundleError::SizeDisagrees {
                member,
                name: payload.name,
                size,
                expected: payload.compressed_size,
            });
        }
        Ok(Some(Member {
            inner,
            remaining: size,
            read: 0,
            hash: Sha256::new(),
            truncated: false,
            failed: false,
            partial: false,
        }))
    }

    /// Reads the current payload, if any, to its end, checking it.
    fn drain(&mut self) -> Result<(), BundleError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match &self.state {
                State::Decoding(_) => self.read_decoded(&mut buf)?,
                State::Raw(_) => self.read_raw(&mut buf)?,
                State::Between(_) => return Ok(()),
                State::Stopped => return Err(BundleError::Stopped),
            };
            if n == 0 {
                // A finished payload moves the state on; anything else is a bug.
                if !matches!(self.state, State::Between(_)) {
                    return Err(BundleError::Stopped);
                }
                return Ok(());
            }
        }
    }

    fn payload(&self) -> &Payload {
        &self.manifest.payloads[self.current]
    }

    fn payload_failed(&mut self, problem: PayloadProblem) -> BundleError {
        self.state = State::Stopped;
        PayloadError {
            name: self.payload().name,
            problem,
        }
        .into()
    }

    fn read_decoded(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        let State::Decoding(d) = &mut self.state else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let expected = self.manifest.payloads[self.current].size;
        let read = loop {
            match d.decoder.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                let State::Decoding(d) = std::mem::replace(&mut self.state, State::Stopped) else {
                    unreachable!("matched above")
                };
                let Decoding {
                    decoder,
                    written,
                    hash,
                    resumed_at,
                } = *d;
                let inner = self.end_member(decoder.into_member())?;
                if written != expected {
                    return Err(self.payload_failed(PayloadProblem::Size {
                        form: Form::Uncompressed,
                        actual: written,
                        expected,
                    }));
                }
                let actual = Sha256Digest::from_hasher(hash);
                let want = self.payload().sha256;
                if actual != want && resumed_at.is_none() {
                    return Err(self.payload_failed(PayloadProblem::Digest {
                        form: Form::Uncompressed,
                        actual,
                        expected: want,
                    }));
                }
                self.state = State::Between(inner);
                self.current += 1;
                Ok(0)
            }
            Ok(n) => {
                d.written += n as u64;
                if d.written > expected {
                    return Err(self.payload_failed(PayloadProblem::TooLong { expected }));
                }
                d.hash.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let State::Decoding(d) = std::mem::replace(&mut self.state, State::Stopped) else {
                    unreachable!("matched above")
                };
                let mut member = d.decoder.into_member();
                if member.failed {
                    return Err(read_err(e));
                }
                // Say what is wrong with the bytes rather than what zstd made
                // of them, when the rest of the member tells.
                let expected = self.payload().compressed_size;
                let drained = io::copy(&mut member, &mut io::sink());
                let problem = if member.truncated {
                    PayloadProblem::Truncated {
                        read: member.read,
                        expected,
                    }
                } else if drained.is_err() {
                    return Err(read_err(drained.expect_err("checked")));
                } else {
                    let actual = Sha256Digest::from_hasher(member.hash);
                    let want = self.payload().compressed_sha256;
                    if actual != want {
                        PayloadProblem::Digest {
                            form: Form::Compressed,
                            actual,
                            expected: want,
                        }
                    } else {
                        PayloadProblem::Zstd(e.to_string())
                    }
                };
                Err(self.payload_failed(problem))
            }
        }
    }

    fn read_raw(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        let State::Raw(member) = &mut self.state else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        match member.read(buf) {
            Ok(0) => {
                let State::Raw(member) = std::mem::replace(&mut self.state, State::Stopped) else {
                    unreachable!("matched above")
                };
                let inner = self.end_member(member)?;
                self.state = State::Between(inner);
                self.current += 1;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(_) if member.truncated && !member.failed => {
                let problem = PayloadProblem::Truncated {
                    read: member.read,
                    expected: self.payload().compressed_size,
                };
                Err(self.payload_failed(problem))
            }
            Err(e) => {
                self.state = State::Stopped;
                Err(read_err(e))
            }
        }
    }

    /// Reads what zstd left of the member, checks its digest, skips the
    /// padding. Returns the underlying reader, at the next header.
    fn end_member(&mut self, mut member: Member<R>) -> Result<R, BundleError> {
        let expected = self.payload().compressed_size;
        let rest = io::copy(&mut member, &mut io::sink());
        if rest.is_err() {
            return Err(if member.truncated {
                self.payload_failed(PayloadProblem::Truncated {
                    read: member.read,
                    expected,
                })
            } else {
                self.state = State::Stopped;
                read_err(rest.expect_err("checked"))
            });
        }
        let actual = Sha256Digest::from_hasher(member.hash);
        let want = self.payload().compressed_sha256;
        if actual != want && !member.partial {
            return Err(self.payload_failed(PayloadProblem::Digest {
                form: Form::Compressed,
                actual,
                expected: want,
            }));
        }
        let mut inner = member.inner;
        if !skip(&mut inner, padding(expected)).map_err(read_err)? {
            return Err(self.payload_failed(PayloadProblem::Truncated {
                read: expected,
                expected,
            }));
        }
        Ok(inner)
    }
}

/// The name in a tar header block, for error messages.
fn tar_name(block: &[u8]) -> String {
    let end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
    String::from_utf8_lossy(&block[..end]).into_owned()
}

/// One payload's uncompressed bytes. The read that reaches the end checks
/// the size and both digests and fails (with a [`BundleError`] inside the
/// [`io::Error`], see [`BundleError::from_io`]) if they do not match.
#[derive(Debug)]
pub struct PayloadReader<'a, R: Read> {
    payloads: &'a mut Payloads<R>,
    index: usize,
}

impl<R: Read> PayloadReader<'_, R> {
    /// The manifest's entry for this payload.
    pub fn payload(&self) -> &Payload {
        &self.payloads.manifest.payloads[self.index]
    }

    /// Reads what is left of the payload and checks it.
    pub fn finish(self) -> Result<(), BundleError> {
        self.payloads.drain()
    }

    /// For a framed payload, when every byte read so far ends a frame: the
    /// payload's compressed and uncompressed bytes up to there, from which
    /// [`Payloads::resume`] can go on. `None` inside a frame, and for a
    /// payload that is one zstd stream.
    pub fn boundary(&self) -> Option<(u64, u64)> {
        let State::Decoding(d) = &self.payloads.state else {
            return None;
        };
        let (c0, u0) = d.resumed_at.unwrap_or((0, 0));
        d.decoder.boundary().map(|(c, u)| (c0 + c, u0 + u))
    }
}

impl<R: Read> Read for PayloadReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.payloads
            .read_decoded(buf)
            .map_err(BundleError::into_io)
    }
}

/// One payload's compressed bytes as stored. The read that reaches the end
/// checks the size and digest.
#[derive(Debug)]
pub struct CompressedReader<'a, R: Read> {
    payloads: &'a mut Payloads<R>,
    index: usize,
}

impl<R: Read> CompressedReader<'_, R> {
    /// The manifest's entry for this payload.
    pub fn payload(&self) -> &Payload {
        &self.payloads.manifest.payloads[self.index]
    }

    /// Reads what is left of the payload and checks it.
    pub fn finish(self) -> Result<(), BundleError> {
        self.payloads.drain()
    }
}

impl<R: Read> Read for CompressedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.payloads.read_raw(buf).map_err(BundleError::into_io)
    }
}

#[cfg(test)]
mod tests;
