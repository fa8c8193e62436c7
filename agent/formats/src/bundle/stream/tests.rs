//! Bundles written and read back, and every way reading one can fail.

use super::*;
use crate::board::BoardId;
use crate::bundle::keys::SecretKey;
use crate::bundle::trust::SignatureEntry;
use crate::spec::RootfsType;
use std::cell::Cell;
use std::rc::Rc;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

/// Bytes that compress somewhat, different per payload.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(seed) ^ (i % 251) as u8)
        .collect()
}

struct Built {
    bundle: Vec<u8>,
    manifest: Vec<u8>,
    payloads: Vec<(PayloadName, Vec<u8>)>,
}

/// A bundle of `payloads`, its manifest edited by `edit`, signed by `keys`.
fn build_with(
    payloads: &[(PayloadName, Vec<u8>)],
    keys: &[&SecretKey],
    edit: impl FnOnce(&mut Manifest),
) -> Built {
    let compressed: Vec<Vec<u8>> = payloads
        .iter()
        .map(|(_, d)| zstd::encode_all(&d[..], 3).unwrap())
        .collect();
    let mut manifest = Manifest {
        format: 1,
        name: "basalt-appliance".into(),
        version: "1.2.0".parse().unwrap(),
        boards: vec![BoardId::X86_64Uefi],
        min_version: "1.0.0".parse().unwrap(),
        created: 1_700_000_000,
        rootfs_type: RootfsType::Squashfs,
        payloads: payloads
            .iter()
            .zip(&compressed)
            .map(|((name, d), c)| Payload::zstd(*name, d, c))
            .collect(),
        base_version: None,
    };
    edit(&mut manifest);
    let manifest_bytes = manifest.to_bytes();
    let sigs = Signatures(
        keys.iter()
            .map(|k| SignatureEntry::sign(k, &manifest_bytes))
            .collect(),
    );
    let mut w = BundleWriter::new(Vec::new(), &manifest_bytes, &sigs).unwrap();
    for ((name, _), c) in payloads.iter().zip(&compressed) {
        w.payload(*name, &c[..]).unwrap();
    }
    Built {
        bundle: w.finish().unwrap(),
        manifest: manifest_bytes,
        payloads: payloads.to_vec(),
    }
}

fn three() -> Vec<(PayloadName, Vec<u8>)> {
    vec![
        (PayloadName::Rootfs, data(3, 300_000)),
        (PayloadName::Kernel, data(5, 40_000)),
        (PayloadName::Initrd, data(7, 70_001)),
    ]
}

fn build(keys: &[&SecretKey]) -> Built {
    build_with(&three(), keys, |_| {})
}

fn policy(keys: &[&SecretKey], threshold: usize) -> TrustPolicy {
    TrustPolicy::new(keys.iter().map(|k| k.public_key()).collect(), threshold).unwrap()
}

/// Reads every payload of `bundle`, returning them or the first error.
fn read_all(
    bundle: &[u8],
    policy: &TrustPolicy,
) -> Result<Vec<(PayloadName, Vec<u8>)>, BundleError> {
    let mut payloads = BundleReader::new(bundle)?.verify(policy)?;
    let mut out = Vec::new();
    while let Some(mut p) = payloads.next_payload()? {
        let mut bytes = Vec::new();
        p.read_to_end(&mut bytes).map_err(BundleError::from_io)?;
        out.push((p.payload().name, bytes));
    }
    payloads.finish()?;
    Ok(out)
}

fn payload_error(e: BundleError) -> PayloadError {
    match e {
        BundleError::Payload(p) => p,
        other => panic!("expected a payload error, got {other:?}: {other}"),
    }
}

#[test]
fn round_trip() {
    let k = key(1);
    let b = build(&[&k]);
    assert_eq!(read_all(&b.bundle, &policy(&[&k], 1)).unwrap(), b.payloads);
}

#[test]
fn headers_are_deterministic_ustar() {
    let k = key(1);
    let b = build(&[&k]);
    assert_eq!(b.bundle.len() % BLOCK as usize, 0);
    assert_eq!(&b.bundle[257..265], b"ustar\x0000");
    let mut archive = tar::Archive::new(&b.bundle[..]);
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        assert_eq!(h.username().unwrap(), Some(""));
        names.push(e.path().unwrap().display().to_string());
    }
    assert_eq!(
        names,
        [
            "manifest.json",
            "signatures.json",
            "rootfs.zst",
            "kernel.zst",
            "initrd.zst"
        ]
    );
    // The manifest member is the signed bytes, exactly.
    let start = BLOCK as usize;
    assert_eq!(&b.bundle[start..start + b.manifest.len()], &b.manifest[..]);
    assert_eq!(build(&[&k]).bundle, b.bundle, "same inputs, same bytes");
}

/// Counts the bytes taken from the inner reader.
#[derive(Debug)]
struct Counting<'a> {
    inner: &'a [u8],
    taken: Rc<Cell<usize>>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n);
        Ok(n)
    }
}

#[test]
fn signatures_are_checked_before_any_payload_byte() {
    let (k1, stranger) = (key(1), key(9));
    let b = build(&[&stranger]);
    let taken = Rc::new(Cell::new(0));
    let reader = BundleReader::new(Counting {
        inner: &b.bundle,
        taken: taken.clone(),
    })
    .unwrap();
    let sig_len = reader.signatures().to_bytes().len();
    let header_len = |n: usize| BLOCK as usize + n.div_ceil(BLOCK as usize) * BLOCK as usize;
    assert_eq!(
        taken.get(),
        header_len(b.manifest.len()) + header_len(sig_len),
        "the reader stops at the first payload's header"
    );
    assert_eq!(reader.manifest_bytes(), &b.manifest[..]);
    let e = reader.verify(&policy(&[&k1], 1)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "0 of 1 required signatures valid; key {} not trusted",
            stranger.public_key().key_id()
        )
    );
    assert!(!e.is_retryable());
}

#[test]
fn a_flipped_payload_byte_is_named() {
    let k = key(1);
    let b = build(&[&k]);
    let p = policy(&[&k], 1);
    // Flip a byte in the middle of each payload's compressed bytes.
    let mut offset = {
        let reader = BundleReader::new(&b.bundle[..]).unwrap();
        let r = |n: usize| BLOCK as usize + n.div_ceil(512) * 512;
        r(reader.manifest_bytes().len()) + r(reader.signatures().to_bytes().len())
    };
    let manifest = Manifest::parse(&b.manifest).unwrap();
    for payload in &manifest.payloads {
        let size = payload.compressed_size as usize;
        let mut bad = b.bundle.clone();
        bad[offset + BLOCK as usize + size / 2] ^= 0x40;
        let e = payload_error(read_all(&bad, &p).unwrap_err());
        assert_eq!(e.name, payload.name, "{e}");
        assert!(
            matches!(
                e.problem,
                PayloadProblem::Digest {
                    form: Form::Compressed,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e
            .to_string()
            .starts_with(&format!("payload {}: ", payload.name)));
        offset += BLOCK as usize + size.div_ceil(512) * 512;
    }
}

#[test]
fn truncation_is_reported_wherever_it_happens() {
    let k = key(1);
    let b = build(&[&k]);
    let p = policy(&[&k], 1);
    let len = b.bundle.len();
    let cases = [
        (100, "the bundle ends inside the header of manifest.json"),
        (700, "the bundle ends inside manifest.json"),
        (
            BLOCK as usize + b.manifest.len().div_ceil(512) * 512 + 10,
            "the bundle ends inside the header of signatures.json",
        ),
        (len / 3, "payload rootfs: the bundle ends after"),
        (len - 1100, "payload initrd: the bundle ends after"),
        (
            len - 600,
            "the bundle ends inside the end-of-archive marker",
        ),
        (len - 1, "the bundle ends inside the end-of-archive marker"),
    ];
    for (cut, expect) in cases {
        let e = read_all(&b.bundle[..cut], &p).unwrap_err();
        assert!(e.to_string().starts_with(expect), "cut at {cut}: {e}");
        assert!(e.is_retryable(), "cut at {cut}: {e}");
    }
}

#[test]
fn sizes_and_digests_must_match_the_manifest() {
    let k = key(1);
    let p = policy(&[&k], 1);
    type Edit = fn(&mut Manifest);
    let cases: &[(Edit, &str)] = &[
        (
            |m| m.payloads[1].size -= 1,
            "payload kernel: decompresses to more than the manifest's 39999 bytes",
        ),
        (
            |m| m.payloads[1].size += 1,
            "payload kernel: uncompressed size is 40000 bytes, the manifest says 40001",
        ),
        (
            |m| m.payloads[2].sha256 = Sha256Digest([0; 32]),
            "payload initrd: uncompressed SHA-256 is ",
        ),
    ];
    for (edit, expect) in cases {
        let b = build_with(&three(), &[&k], edit);
        let e = read_all(&b.bundle, &p).unwrap_err();
        assert!(e.to_string().starts_with(expect), "{e}");
        assert!(!e.is_retryable());
    }
}

#[test]
fn unread_payloads_are_still_checked() {
    let k = key(1);
    let p = policy(&[&k], 1);
    let b = build_with(&three(), &[&k], |m| {
        m.payloads[1].sha256 = Sha256Digest([0; 32])
    });
    // Read a little of the rootfs, skip the rest, then finish.
    let mut payloads = BundleReader::new(&b.bundle[..])
        .unwrap()
        .verify(&p)
        .unwrap();
    let mut buf = [0u8; 10];
    {
        let mut first = payloads.next_payload().unwrap().unwrap();
        first.read_exact(&mut buf).unwrap();
    }
    let e = payloads.finish().unwrap_err();
    assert!(e.to_string().starts_with("payload kernel: "), "{e}");

    // Dropping a payload half read still checks it before the next one.
    let b = build_with(&three(), &[&k], |m| {
        m.payloads[0].sha256 = Sha256Digest([0; 32])
    });
    let mut payloads = BundleReader::new(&b.bundle[..])
        .unwrap()
        .verify(&p)
        .unwrap();
    assert!(payloads.next_payload().unwrap().is_some());
    let e = payloads.next_payload().unwrap_err();
    assert!(e.to_string().starts_with("payload rootfs: "), "{e}");
    assert!(matches!(payloads.next_payload(), Err(BundleError::Stopped)));
}

#[test]
fn copying_compressed_payloads_reproduces_the_bundle() {
    let (k1, k2) = (key(1), key(2));
    let b = build(&[&k1]);
    let reader = BundleReader::new(&b.bundle[..]).unwrap();
    let manifest_bytes = reader.manifest_bytes().to_vec();
    let mut sigs = reader.signatures().clone();
    let mut payloads = reader.without_verification().unwrap();
    sigs.0.push(SignatureEntry {
        key_id: k2.public_key().key_id(),
        signature: k2.sign(&manifest_bytes),
    });
    let mut w = BundleWriter::new(Vec::new(), &manifest_bytes, &sigs).unwrap();
    while let Some(c) = payloads.next_compressed().unwrap() {
        let name = c.payload().name;
        w.payload(name, c).unwrap();
    }
    payloads.finish().unwrap();
    let two = w.finish().unwrap();
    assert_eq!(build(&[&k1, &k2]).bundle, two);
    read_all(&two, &policy(&[&k1, &k2], 2)).unwrap();
}

#[test]
fn writer_checks_order_and_bytes() {
    let k = key(1);
    let b = build(&[&k]);
    let sigs = Signatures::default();
    let mut w = BundleWriter::new(Vec::new(), &b.manifest, &sigs).unwrap();
    let e = w.payload(PayloadName::Kernel, &b"x"[..]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "payload kernel given where the manifest has rootfs"
    );
    let mut w = BundleWriter::new(Vec::new(), &b.manifest, &sigs).unwrap();
    let e = w.payload(PayloadName::Rootfs, &b"short"[..]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("payload rootfs: compressed size is 5 bytes"),
        "{e}"
    );
    let w = BundleWriter::new(Vec::new(), &b.manifest, &sigs).unwrap();
    assert_eq!(
        w.finish().unwrap_err().to_string(),
        "payload rootfs was not written"
    );
    let e = BundleWriter::new(Vec::new(), b"{}", &sigs).unwrap_err();
    assert!(e.to_string().starts_with("manifest.json: "), "{e}");
}

#[test]
fn strict_layout() {
    let k = key(1);
    let p = policy(&[&k], 1);
    let b = build(&[&k]);
    // Zeros after the end marker are padding; anything else is not.
    let mut padded = b.bundle.clone();
    padded.extend_from_slice(&[0; 8192]);
    read_all(&padded, &p).unwrap();
    let mut extra = b.bundle.clone();
    extra.extend_from_slice(&member_header("evil.sh", 0, 0));
    extra.extend_from_slice(&[0; 1024]);
    let e = read_all(&extra, &p).unwrap_err();
    assert!(matches!(e, BundleError::TrailingData), "{e}");

    // A member out of order.
    let sigs = Signatures(vec![SignatureEntry {
        key_id: k.public_key().key_id(),
        signature: k.sign(&b.manifest),
    }]);
    let mut swapped = Vec::new();
    for (name, bytes) in [
        (MANIFEST_MEMBER, b.manifest.clone()),
        (SIGNATURES_MEMBER, sigs.to_bytes()),
        ("kernel.zst", vec![1; 10]),
    ] {
        swapped.extend_from_slice(&member_header(name, bytes.len() as u64, 0));
        swapped.extend_from_slice(&bytes);
        swapped.resize(swapped.len().div_ceil(512) * 512, 0);
    }
    let e = read_all(&swapped, &p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bundle member 3: found \"kernel.zst\", expected rootfs.zst"
    );

    // A damaged header.
    let mut bad = b.bundle.clone();
    bad[0] = b'M';
    let e = read_all(&bad, &p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bundle member 1 (manifest.json): header checksum mismatch"
    );

    // Not a tar stream at all.
    let e = read_all(&[0u8; 4096], &p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bundle member 1: found \"end of archive\", expected manifest.json"
    );

    // An oversized manifest is refused before it is read.
    let mut big = member_header(MANIFEST_MEMBER, MAX_MANIFEST_BYTES + 1, 0).to_vec();
    big.extend_from_slice(&[b' '; 1024]);
    let e = read_all(&big, &p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "manifest.json: 1048577 bytes, more than the 1048576 a bundle may have"
    );
}

#[test]
fn payload_errors_survive_io_copy() {
    let k = key(1);
    let b = build_with(&three(), &[&k], |m| {
        m.payloads[0].sha256 = Sha256Digest([0; 32])
    });
    let mut payloads = BundleReader::new(&b.bundle[..])
        .unwrap()
        .verify(&policy(&[&k], 1))
        .unwrap();
    let mut rootfs = payloads.next_payload().unwrap().unwrap();
    let mut slot = Vec::new();
    let e = BundleError::from_io(io::copy(&mut rootfs, &mut slot).unwrap_err());
    let e = payload_error(e);
    assert_eq!(e.name, PayloadName::Rootfs);
    assert!(matches!(
        e.problem,
        PayloadProblem::Digest {
            form: Form::Uncompressed,
            ..
        }
    ));
    assert_eq!(rootfs.payload().name, PayloadName::Rootfs);
}

/// A bundle whose root payload is framed (`frame_size`), three frames long.
fn framed(key: &SecretKey) -> (Vec<u8>, Vec<u8>) {
    let root = data(11, 2 * delta::FRAME_SIZE + 12_345);
    let mut c = Vec::new();
    delta::encode_frames(None, &root[..], &mut c, 3, 0, |_| ()).unwrap();
    let mut manifest = Manifest {
        format: 1,
        name: "basalt-appliance".into(),
        version: "1.2.0".parse().unwrap(),
        boards: vec![BoardId::X86_64Uefi],
        min_version: "1.0.0".parse().unwrap(),
        created: 1_700_000_000,
        rootfs_type: RootfsType::Squashfs,
        payloads: vec![Payload {
            frame_size: Some(delta::FRAME_SIZE as u64),
            ..Payload::zstd(PayloadName::Rootfs, &root, &c)
        }],
        base_version: None,
    };
    let kernel = data(5, 40_000);
    let kc = zstd::encode_all(&kernel[..], 3).unwrap();
    manifest
        .payloads
        .push(Payload::zstd(PayloadName::Kernel, &kernel, &kc));
    let bytes = manifest.to_bytes();
    let sigs = Signatures(vec![SignatureEntry::sign(key, &bytes)]);
    let mut w = BundleWriter::new(Vec::new(), &bytes, &sigs).unwrap();
    w.payload(PayloadName::Rootfs, &c[..]).unwrap();
    w.payload(PayloadName::Kernel, &kc[..]).unwrap();
    (w.finish().unwrap(), root)
}

#[test]
fn a_framed_payload_resumes_at_a_frame_boundary() {
    let k = key(1);
    let (bundle, root) = framed(&k);
    let policy = policy(&[&k], 1);
    // Read into the second frame, remember the last boundary passed.
    let mut payloads = BundleReader::new(&bundle[..])
        .unwrap()
        .verify(&policy)
        .unwrap();
    let offset = payloads.member_data_offset(0);
    let mut p = payloads.next_payload().unwrap().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut mark = None;
    let mut read = 0;
    while read < delta::FRAME_SIZE + (3 << 20) {
        let n = p.read(&mut buf).unwrap();
        read += n;
        if let Some(b) = p.boundary() {
            mark = Some(b);
        }
    }
    let (c, u) = mark.unwrap();
    assert_eq!(u, delta::FRAME_SIZE as u64);

    // "After the reboot": the head again, then the rest from the boundary.
    let head = BundleReader::new(&bundle[..])
        .unwrap()
        .verify(&policy)
        .unwrap();
    let rest = &bundle[(offset + c) as usize..];
    let mut resumed = head.resume(rest, 0, c, u, None).unwrap();
    let mut p = resumed.next_payload().unwrap().unwrap();
    assert_eq!(p.boundary(), Some((c, u)));
    let mut tail = Vec::new();
    p.read_to_end(&mut tail).unwrap();
    assert!(tail == root[u as usize..]);
    let mut p = resumed.next_payload().unwrap().unwrap();
    assert_eq!(p.payload().name, PayloadName::Kernel);
    std::io::copy(&mut p, &mut std::io::sink()).unwrap();
    resumed.finish().unwrap();

    // A damaged frame after the resume point is still found.
    let mut bad = bundle.clone();
    let at = (offset + c) as usize + 5000;
    bad[at] ^= 1;
    let head = BundleReader::new(&bad[..])
        .unwrap()
        .verify(&policy)
        .unwrap();
    let mut resumed = head
        .resume(&bad[(offset + c) as usize..], 0, c, u, None)
        .unwrap();
    let mut p = resumed.next_payload().unwrap().unwrap();
    assert!(std::io::copy(&mut p, &mut std::io::sink()).is_err());

    // Only framed payloads resume, only within them.
    let head = BundleReader::new(&bundle[..])
        .unwrap()
        .verify(&policy)
        .unwrap();
    let e = head.resume(&b""[..], 1, 0, 0, None).unwrap_err();
    assert!(e.to_string().contains("one zstd stream"), "{e}");
    let head = BundleReader::new(&bundle[..])
        .unwrap()
        .verify(&policy)
        .unwrap();
    let e = head.resume(&b""[..], 0, u64::MAX, 0, None).unwrap_err();
    assert!(e.to_string().contains("cannot resume"), "{e}");
}
