//! Framed payloads: independent zstd frames of at most [`FRAME_SIZE`]
//! bytes, each stating its size, so that a device decodes one frame at a
//! time and can resume a payload at a frame boundary (after a reboot too);
//! and delta payloads, framed the same way, whose frames reach back into
//! bytes the device already has.
//!
//! A delta payload is made against a *base*: the same payload of the release
//! the device runs (its active root slot, its kernel, its initrd). Each frame
//! holds up to [`FRAME_SIZE`] bytes of the new payload, compressed with the
//! whole base as zstd's reference prefix (what `zstd --patch-from` does) and
//! long-distance matching, so the parts of the new slot that the old one
//! already holds — nearly all of it after a one-package change — cost a few
//! bytes each wherever they moved to.
//!
//! Frames are independent of each other (each references only the base) and
//! each states its content size, so the device decodes one frame at a time
//! into a buffer of that size: memory stays at about two frames whatever
//! the slot size, and the base is read in place (the agent maps the active
//! slot). The manifest keeps the full payload's size and SHA-256, so a
//! reconstructed slot is checked exactly like a fully downloaded one, and
//! the base's size and SHA-256, so a device checks it holds the right base
//! before writing a byte.

use std::io::{self, Read, Write};

/// Uncompressed bytes per frame.
pub const FRAME_SIZE: usize = 16 << 20;
pub use crate::bundle::manifest::MAX_FRAME_SIZE;
/// zstd level of delta frames. With long-distance matching the level
/// matters little for what the base already holds; higher levels mostly
/// re-index the base once per frame for nothing.
pub const DELTA_LEVEL: i32 = 9;
/// zstd's largest window on 64-bit targets.
const MAX_WINDOW_LOG: u32 = 31;

/// The window log a frame needs to reach the start of a `base_len` base
/// from anywhere in a frame of `frame_len` bytes.
pub fn window_log(base_len: usize, frame_len: usize) -> u32 {
    let span = (base_len + frame_len).max(1 << 20) as u64;
    (64 - (span - 1).leading_zeros()).clamp(20, MAX_WINDOW_LOG)
}

fn zstd_err(what: &str, code: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: {}", zstd::zstd_safe::get_error_name(code)),
    )
}

/// Compresses `input` frame by frame against `base` into `out`. Calls
/// `progress` with the uncompressed bytes of each frame done.
pub fn encode(
    base: &[u8],
    input: impl Read,
    out: impl Write,
    level: i32,
    progress: impl FnMut(u64),
) -> io::Result<()> {
    encode_frames(Some(base), input, out, level, 0, progress)
}

/// Compresses `input` into independent frames of [`FRAME_SIZE`] bytes,
/// against `base` when given (long-distance matching, the base as each
/// frame's reference prefix), with `threads` zstd workers where zstd was
/// built with threads (0: none).
pub fn encode_frames(
    base: Option<&[u8]>,
    mut input: impl Read,
    mut out: impl Write,
    level: i32,
    threads: u32,
    mut progress: impl FnMut(u64),
) -> io::Result<()> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::create();
    let mut frame = vec![0u8; FRAME_SIZE];
    let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME_SIZE));
    loop {
        let n = super::read_full(&mut input, &mut frame)?;
        if n == 0 {
            return Ok(());
        }
        let mut params = vec![
            CParameter::CompressionLevel(level),
            CParameter::ChecksumFlag(true),
            CParameter::ContentSizeFlag(true),
        ];
        if let Some(base) = base {
            params.push(CParameter::WindowLog(window_log(base.len(), n)));
            params.push(CParameter::EnableLongDistanceMatching(true));
        }
        for p in params {
            cctx.set_parameter(p)
                .map_err(|c| zstd_err("zstd parameter", c))?;
        }
        if threads > 0 {
            // Only a zstd built with threads (the `zstdmt` feature, which the
            // builder turns on) takes workers; otherwise one thread does.
            let _ = cctx.set_parameter(CParameter::NbWorkers(threads));
        }
        if let Some(base) = base {
            // The prefix holds for one frame only; set it again for each.
            cctx.ref_prefix(base)
                .map_err(|c| zstd_err("zstd reference prefix", c))?;
        }
        packed.clear();
        cctx.compress2(&mut packed, &frame[..n])
            .map_err(|c| zstd_err("zstd", c))?;
        out.write_all(&packed)?;
        progress(n as u64);
        if n < frame.len() {
            return Ok(());
        }
    }
}

/// Reads a framed payload's frames from `input`, each decoded against `base`
/// when given. Errors are [`io::ErrorKind::InvalidData`] for bytes that do
/// not decode (the caller tells a wrong digest apart), or the input's own
/// errors.
pub struct FrameDecoder<R> {
    input: R,
    base: Option<super::Base>,
    /// Compressed bytes of the frames decoded so far.
    consumed: u64,
    /// Uncompressed bytes of the frames decoded so far.
    produced: u64,
    inbuf: Vec<u8>,
    lo: usize,
    hi: usize,
    eof: bool,
    /// The current frame's bytes, handed out from `pos`.
    out: Vec<u8>,
    pos: usize,
}

impl<R> std::fmt::Debug for FrameDecoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field(
                "base_len",
                &self.base.as_ref().map(|b| (**b).as_ref().len()),
            )
            .field("frame_len", &self.out.len())
            .field("pos", &self.pos)
            .finish()
    }
}

/// Bytes of compressed input read at a time.
const IN_CHUNK: usize = 128 << 10;
/// Enough bytes for any zstd frame header.
const MAX_HEADER: usize = 18;

impl<R: Read> FrameDecoder<R> {
    pub fn new(input: R, base: Option<super::Base>) -> FrameDecoder<R> {
        FrameDecoder {
            input,
            base,
            consumed: 0,
            produced: 0,
            inbuf: vec![0u8; IN_CHUNK],
            lo: 0,
            hi: 0,
            eof: false,
            out: Vec::new(),
            pos: 0,
        }
    }

    /// The input, after the last frame.
    pub fn into_inner(self) -> R {
        self.input
    }

    /// When every byte handed out so far ends a frame: the compressed and
    /// uncompressed bytes of the frames so far, where decoding can resume.
    pub fn boundary(&self) -> Option<(u64, u64)> {
        (self.pos == self.out.len()).then_some((self.consumed, self.produced))
    }

    /// Makes at least `want` unread input bytes available, unless the input ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while self.hi - self.lo < want && !self.eof {
            if self.lo > 0 {
                self.inbuf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            let n = loop {
                match self.input.read(&mut self.inbuf[self.hi..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.hi += n;
        }
        Ok(())
    }

    /// Decodes the next frame into `out`. `false` at the end of the input.
    fn next_frame(&mut self) -> io::Result<bool> {
        use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};
        self.fill(MAX_HEADER)?;
        if self.lo == self.hi {
            return Ok(false);
        }
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let size = match zstd::zstd_safe::get_frame_content_size(&self.inbuf[self.lo..self.hi]) {
            Ok(Some(size)) if size <= MAX_FRAME_SIZE => size as usize,
            Ok(Some(size)) => {
                return Err(bad(format!(
                    "a delta frame of {size} bytes is over the limit of {MAX_FRAME_SIZE}"
                )))
            }
            Ok(None) => return Err(bad("a delta frame does not state its size".into())),
            Err(_) => return Err(bad("not a zstd frame".into())),
        };
        let base = self.base.clone();
        let mut dctx = DCtx::create();
        dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(|c| zstd_err("zstd parameter", c))?;
        if let Some(base) = &base {
            dctx.ref_prefix((**base).as_ref())
                .map_err(|c| zstd_err("zstd reference prefix", c))?;
        }
        self.out.clear();
        self.out.reserve_exact(size);
        self.pos = 0;
        loop {
            self.fill(1)?;
            if self.lo == self.hi {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the payload ends inside a delta frame",
                ));
            }
            let mut input = InBuffer::around(&self.inbuf[self.lo..self.hi]);
            let len = self.out.len();
            let mut output = OutBuffer::around_pos(&mut self.out, len);
            let hint = dctx
                .decompress_stream(&mut output, &mut input)
                .map_err(|c| zstd_err("zstd", c))?;
            self.lo += input.pos();
            self.consumed += input.pos() as u64;
            if hint == 0 {
                break;
            }
            if self.out.len() == self.out.capacity() && input.pos() == 0 {
                return Err(bad(format!(
                    "a delta frame decodes to more than its stated {size} bytes"
                )));
            }
        }
        if self.out.len() != size {
            return Err(bad(format!(
                "a delta frame decoded to {} bytes, its header says {size}",
                self.out.len()
            )));
        }
        self.produced += size as u64;
        Ok(true)
    }
}

impl<R: Read> Read for FrameDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if buf.is_empty() || !self.next_frame()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A base, and a "new version" of it: an insertion, a change, a move.
    fn versions(len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut x = 0x9e37_79b9_u32;
        let base: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        let mut new = Vec::with_capacity(len + 4096);
        new.extend_from_slice(&base[len / 2..len * 3 / 4]);
        new.extend_from_slice(&base[..len / 3]);
        new.extend_from_slice(b"a new package's files");
        new.extend_from_slice(&[7u8; 3000]);
        new.extend_from_slice(&base[len / 3..len / 2]);
        new.extend_from_slice(&base[len * 3 / 4..]);
        new[len / 5] ^= 0xff;
        (base, new)
    }

    fn decode(delta: &[u8], base: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        FrameDecoder::new(delta, Some(Arc::new(base))).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn window_logs() {
        assert_eq!(window_log(0, 10), 20);
        assert_eq!(window_log(150 << 20, FRAME_SIZE), 28);
        assert_eq!(window_log(256 << 20, 0), 28);
        assert_eq!(window_log((256 << 20) + 1, 0), 29);
        assert_eq!(window_log(64 << 30, FRAME_SIZE), 31);
    }

    #[test]
    fn round_trip_is_small_and_exact() {
        // Random bytes do not compress: what the delta saves is all from the base.
        let (base, new) = versions(3 * FRAME_SIZE / 2);
        let mut delta = Vec::new();
        let mut done = 0;
        encode(&base, &new[..], &mut delta, DELTA_LEVEL, |n| done += n).unwrap();
        assert_eq!(done, new.len() as u64);
        assert!(delta.len() < 64 << 10, "delta is {} bytes", delta.len());
        assert_eq!(decode(&delta, base.clone()).unwrap(), new);
        // Two frames, each stating its size.
        let first = zstd::zstd_safe::find_frame_compressed_size(&delta).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&delta).unwrap(),
            Some(FRAME_SIZE as u64)
        );
        assert!(first < delta.len());
    }

    #[test]
    fn frames_without_a_base_resume_at_any_boundary() {
        let (_, new) = versions(5 * FRAME_SIZE / 2);
        let mut packed = Vec::new();
        encode_frames(None, &new[..], &mut packed, 3, 2, |_| ()).unwrap();
        let mut d = FrameDecoder::new(&packed[..], None);
        assert_eq!(d.boundary(), Some((0, 0)));
        let mut first = vec![0u8; FRAME_SIZE + 10];
        d.read_exact(&mut first).unwrap();
        assert_eq!(d.boundary(), None, "inside the second frame");
        let mut rest = vec![0u8; FRAME_SIZE - 10];
        d.read_exact(&mut rest).unwrap();
        let (c, u) = d.boundary().unwrap();
        assert_eq!(u, 2 * FRAME_SIZE as u64);
        // Decoding again from there gives the rest.
        let mut tail = Vec::new();
        FrameDecoder::new(&packed[c as usize..], None)
            .read_to_end(&mut tail)
            .unwrap();
        assert!(tail == new[2 * FRAME_SIZE..]);
    }

    #[test]
    fn empty_input_is_no_frames() {
        let mut delta = Vec::new();
        encode(b"base", &b""[..], &mut delta, DELTA_LEVEL, |_| ()).unwrap();
        assert!(delta.is_empty());
        assert!(decode(&delta, b"base".to_vec()).unwrap().is_empty());
    }

    #[test]
    fn another_base_does_not_decode_to_the_new_bytes() {
        let (base, new) = versions(1 << 20);
        let mut delta = Vec::new();
        encode(&base, &new[..], &mut delta, DELTA_LEVEL, |_| ()).unwrap();
        let mut other = base.clone();
        other[1000] ^= 1;
        // The frame checksum catches what the base changed.
        let e = decode(&delta, other).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A base that is too short is refused by zstd.
        assert!(decode(&delta, base[..1000].to_vec()).is_err());
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let (base, new) = versions(1 << 20);
        let mut delta = Vec::new();
        encode(&base, &new[..], &mut delta, DELTA_LEVEL, |_| ()).unwrap();
        let cut = decode(&delta[..delta.len() - 5], base.clone()).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
        for i in [0, 4, 6, delta.len() / 2, delta.len() - 1] {
            let mut d = delta.clone();
            d[i] ^= 0x55;
            assert!(decode(&d, base.clone()).is_err(), "byte {i} flipped");
        }
        // A frame without a content size (as plain zstd writes when streaming).
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(b"hello").unwrap();
        let plain = enc.finish().unwrap();
        let e = decode(&plain, base).unwrap_err();
        assert!(e.to_string().contains("does not state its size"), "{e}");
    }
}
