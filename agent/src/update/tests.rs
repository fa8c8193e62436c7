use super::*;
use basalt_formats::bundle::stream::BundleWriter;
use basalt_formats::bundle::{Payload, SecretKey, SignatureEntry, Signatures, MANIFEST_FORMAT};
use basalt_formats::entry::Counter;
use basalt_formats::spec::RootfsType;
use basalt_formats::{Arch, BoardId};

pub(crate) fn entry(slot: Slot, counter: Option<(u32, u32)>) -> EntryName {
    EntryName {
        slot,
        counter: counter.map(|(left, done)| Counter { left, done }),
    }
}

/// A state where `apply` left slot B: staged, not yet recorded as trying.
fn staged_on_b(v: &str) -> UpdateState {
    let mut st = UpdateState::default();
    st.set(Slot::B, SlotRecord::Staged { version: v.into() });
    st
}

fn trying(v: &str) -> SlotRecord {
    SlotRecord::Trying { version: v.into() }
}

#[test]
fn a_blessed_trial_is_committed() {
    let mut st = UpdateState::default();
    st.set(Slot::B, trying("0.2.0"));
    let (st, events) = on_boot(
        st,
        Slot::B,
        "0.2.0",
        &[entry(Slot::A, None), entry(Slot::B, None)],
        5,
    );
    assert_eq!(
        st.get(Slot::B),
        Some(&SlotRecord::Installed {
            version: "0.2.0".into()
        })
    );
    assert_eq!(events, ["update to 0.2.0 committed in slot b"]);
}

#[test]
fn a_trial_whose_state_was_not_written_before_a_power_cut_is_still_a_trial() {
    // apply wrote basalt-b+3.conf, then the power went before state.json said `trying`.
    let st = staged_on_b("0.2.0");
    let (st, _) = on_boot(
        st,
        Slot::B,
        "0.2.0",
        &[entry(Slot::A, None), entry(Slot::B, Some((2, 1)))],
        5,
    );
    assert_eq!(st.get(Slot::B), Some(&trying("0.2.0")));
    // The trial fails: the boot loader falls back, and the failure is recorded.
    let (st, events) = on_boot(
        st,
        Slot::A,
        "0.1.0",
        &[entry(Slot::A, None), entry(Slot::B, Some((0, 3)))],
        9,
    );
    assert!(
        matches!(st.get(Slot::B), Some(SlotRecord::Bad { .. })),
        "{st:?}"
    );
    assert_eq!(st.failed[0].version, "0.2.0");
    assert!(events[0].contains("did not come up healthy"), "{events:?}");
    // Blessed on its first try: committed.
    let st = staged_on_b("0.2.0");
    let (st, _) = on_boot(
        st,
        Slot::B,
        "0.2.0",
        &[entry(Slot::A, None), entry(Slot::B, None)],
        5,
    );
    assert_eq!(
        st.get(Slot::B),
        Some(&SlotRecord::Installed {
            version: "0.2.0".into()
        })
    );
}

#[test]
fn a_trial_still_counting_stays_a_trial() {
    let mut st = UpdateState::default();
    st.set(Slot::B, trying("0.2.0"));
    let (st2, events) = on_boot(
        st.clone(),
        Slot::B,
        "0.2.0",
        &[entry(Slot::A, None), entry(Slot::B, Some((2, 1)))],
        5,
    );
    assert_eq!(st2.get(Slot::B), st.get(Slot::B));
    assert!(events.is_empty());
}

#[test]
fn a_trial_out_of_tries_is_reported_as_rolled_back() {
    let mut st = UpdateState::default();
    st.set(Slot::B, trying("0.2.0"));
    let (st, events) = on_boot(
        st,
        Slot::A,
        "0.1.0",
        &[entry(Slot::A, None), entry(Slot::B, Some((0, 3)))],
        77,
    );
    assert!(matches!(st.get(Slot::B), Some(SlotRecord::Bad { version, .. }) if version == "0.2.0"));
    assert_eq!(
        st.get(Slot::A),
        Some(&SlotRecord::Installed {
            version: "0.1.0".into()
        })
    );
    assert_eq!(st.failed.len(), 1);
    assert_eq!(
        (st.failed[0].version.as_str(), st.failed[0].noticed_at),
        ("0.2.0", 77)
    );
    assert_eq!(
        events,
        ["update to 0.2.0 in slot b did not come up healthy; rolled back to 0.1.0 in slot a"]
    );
}

pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) device: Device,
    pub(crate) key: SecretKey,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let esp = Esp {
        root: dir.path().join("esp"),
    };
    std::fs::create_dir_all(esp.entries_dir()).unwrap();
    std::fs::write(
        esp.entries_dir().join("basalt-a.conf"),
        "title t\nsort-key basalt\nversion 0.1.0\nlinux /basalt/a/vmlinuz\ninitrd /basalt/a/initrd\noptions basalt.slot=a console=ttyS0\n",
    )
    .unwrap();
    std::fs::write(esp.entries_dir().join("basalt-b+3.conf"), "factory copy").unwrap();
    for s in ["a", "b"] {
        std::fs::write(dir.path().join(format!("slot-{s}")), vec![0u8; 1 << 20]).unwrap();
    }
    let key = SecretKey::from_seed(&[7; 32]);
    let device = Device {
        esp,
        tryboot: None,
        state_dir: dir.path().join("state"),
        release: Release {
            name: "demo".into(),
            version: semver::Version::new(0, 1, 0),
            board: BoardId::X86_64Uefi,
            arch: Arch::Amd64,
            rootfs_type: RootfsType::Squashfs,
            build_time: 0,
        },
        boot: BootInfo {
            slot: Slot::A,
            disk: "/dev/vda".into(),
            esp_device: "/dev/vda1".into(),
            root_device: "/dev/vda2".into(),
            data_device: "/dev/vda4".into(),
            data_grown: None,
            initrd_done_ms: 0,
            live: false,
        },
        slot_devices: vec![
            (Slot::A, dir.path().join("slot-a")),
            (Slot::B, dir.path().join("slot-b")),
        ],
        boot_devices: Vec::new(),
        policy: Some(TrustPolicy::new(vec![key.public_key()], 1).unwrap()),
        node_id: Ok(NodeId::from_verifying_key(
            &ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key(),
        )),
    };
    Fixture {
        _dir: dir,
        device,
        key,
    }
}

/// A signed bundle of `version` for the fixture's image and board (a delta
/// from `base_version` when given), its members as given.
pub(crate) fn signed_bundle(
    key: &SecretKey,
    version: &str,
    base_version: Option<&str>,
    members: Vec<(Payload, Vec<u8>)>,
) -> Vec<u8> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: "demo".into(),
        version: version.parse().unwrap(),
        // A Pi bundle carries its boot slot; a UEFI one its kernel and initrd.
        boards: vec![
            if members.iter().any(|(p, _)| p.name == PayloadName::Boot) {
                BoardId::Rpi4
            } else {
                BoardId::X86_64Uefi
            },
        ],
        min_version: semver::Version::new(0, 0, 0),
        created: 1,
        rootfs_type: RootfsType::Squashfs,
        payloads: members.iter().map(|(p, _)| p.clone()).collect(),
        base_version: base_version.map(|v| v.parse().unwrap()),
    };
    let bytes = manifest.to_bytes();
    let sigs = Signatures(vec![SignatureEntry::sign(key, &bytes)]);
    let mut w = BundleWriter::new(Vec::new(), &bytes, &sigs).unwrap();
    for (p, c) in &members {
        w.payload(p.name, &c[..]).unwrap();
    }
    w.finish().unwrap()
}

/// A payload compressed as one zstd stream, and its member.
pub(crate) fn plain(name: PayloadName, raw: &[u8]) -> (Payload, Vec<u8>) {
    let c = zstd::encode_all(raw, 1).unwrap();
    (Payload::zstd(name, raw, &c), c)
}

pub(crate) fn bundle(
    key: &SecretKey,
    version: &str,
    rootfs: &[u8],
    corrupt_rootfs: bool,
) -> Vec<u8> {
    let members = vec![
        plain(PayloadName::Rootfs, rootfs),
        plain(PayloadName::Kernel, b"new kernel"),
        plain(PayloadName::Initrd, b"new initrd"),
    ];
    let mut out = signed_bundle(key, version, None, members);
    if corrupt_rootfs {
        // Inside the first payload's member, past the two 512-byte-aligned metadata members.
        let pos = out
            .windows(4)
            .position(|w| w == [0x28, 0xb5, 0x2f, 0xfd])
            .unwrap()
            + 1000;
        out[pos] ^= 0x01;
    }
    out
}

#[test]
fn stage_and_apply_write_only_the_inactive_slot() {
    let f = fixture();
    let rootfs: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let report = stage(&bundle(&f.key, "0.2.0", &rootfs, false)[..], &f.device).unwrap();
    assert_eq!(
        (report.target_slot, report.bundle_version.as_str()),
        (Slot::B, "0.2.0")
    );
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);
    assert_eq!(
        std::fs::read(&f.device.slot_devices[0].1).unwrap(),
        vec![0u8; 1 << 20],
        "slot A was written"
    );
    // Staging took the slot out of the menu; the running entry is untouched.
    assert_eq!(f.device.esp.entries().unwrap(), vec![entry(Slot::A, None)]);

    assert_eq!(apply(&f.device).unwrap(), Slot::B);
    let entries = f.device.esp.entries().unwrap();
    assert_eq!(
        entries,
        vec![entry(Slot::A, None), entry(Slot::B, Some((3, 0)))]
    );
    let text = f.device.esp.read_entry(&entries[1]).unwrap();
    assert!(
        text.contains("version 0.2.0") && text.contains("options basalt.slot=b console=ttyS0"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(f.device.esp.root.join("basalt/b/vmlinuz")).unwrap(),
        b"new kernel"
    );
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    assert_eq!(st.get(Slot::B), Some(&trying("0.2.0")));
}

#[test]
fn a_flipped_byte_marks_the_inactive_slot_bad_and_touches_nothing_else() {
    let f = fixture();
    // Incompressible, so the flipped byte lands inside the compressed payload.
    let mut x = 1u32;
    let rootfs: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let e = stage(&bundle(&f.key, "0.2.0", &rootfs, true)[..], &f.device).unwrap_err();
    assert!(e.to_string().contains("rootfs"), "{e}");
    assert_eq!(e.disposition(), Disposition::GiveUp);
    assert_eq!(f.device.esp.entries().unwrap(), vec![entry(Slot::A, None)]);
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    assert!(
        matches!(st.get(Slot::B), Some(SlotRecord::Bad { .. })),
        "{st:?}"
    );
    assert!(matches!(
        apply(&f.device),
        Err(UpdateError::NotStaged { slot: Slot::B })
    ));
}

#[test]
fn untrusted_signer_downgrade_and_truncation_are_refused_before_any_write() {
    let f = fixture();
    let stranger = SecretKey::from_seed(&[9; 32]);
    let before = f.device.esp.entries().unwrap();
    let e = stage(&bundle(&stranger, "0.2.0", b"x", false)[..], &f.device).unwrap_err();
    assert!(
        e.to_string().contains("not trusted") || e.to_string().contains("signature"),
        "{e}"
    );
    let e = stage(&bundle(&f.key, "0.0.9", b"x", false)[..], &f.device).unwrap_err();
    assert!(matches!(e, UpdateError::Refused(_)), "{e}");
    let full = bundle(&f.key, "0.2.0", &vec![1u8; 300_000], false);
    let e = stage(&full[..200], &f.device).unwrap_err();
    assert_eq!(e.disposition(), Disposition::Retry, "{e}");
    // Nothing was written: the factory entry of slot B is still there, no state recorded.
    assert_eq!(f.device.esp.entries().unwrap(), before);
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap(),
        UpdateState::default()
    );
}

#[test]
fn staging_from_a_url_that_drops_gives_the_same_slot() {
    use crate::fetch::test_server::{Behaviour, TestServer};
    let f = fixture();
    let rootfs: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    let server = TestServer::start();
    server.route(
        "/x.basalt",
        bundle(&f.key, "0.2.0", &rootfs, false),
        Behaviour::DropEvery(700),
    );
    let fetcher = crate::fetch::Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let report = stage(fetcher.open(&server.url("/x.basalt")).unwrap(), &f.device).unwrap();
    assert_eq!(report.target_slot, Slot::B);
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);
    assert!(server.requests().len() > 2, "the download was resumed");
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap().get(Slot::B),
        Some(&SlotRecord::Staged {
            version: "0.2.0".into()
        })
    );
}

#[test]
fn a_truncated_download_is_refused_and_the_running_slot_untouched() {
    use crate::fetch::test_server::{Behaviour, TestServer};
    let f = fixture();
    let mut x = 3u32;
    let rootfs: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let full = bundle(&f.key, "0.2.0", &rootfs, false);
    let server = TestServer::start();
    // The server never sends past the middle of the root file system payload.
    server.route(
        "/x.basalt",
        full.clone(),
        Behaviour::CutAt(full.len() as u64 / 2),
    );
    let url = server.url("/x.basalt");
    let fetcher = crate::fetch::Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let slot_a_before = std::fs::read(&f.device.slot_devices[0].1).unwrap();
    let e = stage(fetcher.open(&url).unwrap(), &f.device).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&url) && msg.contains("gave up after"), "{msg}");
    assert_eq!(e.disposition(), Disposition::Retry, "{msg}");
    assert_eq!(
        std::fs::read(&f.device.slot_devices[0].1).unwrap(),
        slot_a_before,
        "slot A was written"
    );
    assert_eq!(f.device.esp.entries().unwrap(), vec![entry(Slot::A, None)]);
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    assert!(
        matches!(st.get(Slot::B), Some(SlotRecord::Bad { .. })),
        "{st:?}"
    );
    assert!(matches!(
        apply(&f.device),
        Err(UpdateError::NotStaged { .. })
    ));
}

pub(crate) fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A delta bundle of `new` payloads made against `bases`, from `base_version`.
pub(crate) fn delta_bundle(
    key: &SecretKey,
    version: &str,
    base_version: &str,
    new: &[(PayloadName, Vec<u8>)],
    bases: &[Vec<u8>],
) -> Vec<u8> {
    use basalt_formats::bundle::stream::delta;
    use basalt_formats::bundle::PayloadBase;
    let members = new
        .iter()
        .zip(bases)
        .map(|((name, raw), base)| {
            let mut c = Vec::new();
            delta::encode(base, &raw[..], &mut c, delta::DELTA_LEVEL, |_| ()).unwrap();
            let p = Payload {
                base: Some(PayloadBase {
                    size: base.len() as u64,
                    sha256: Sha256Digest::of(base),
                }),
                ..Payload::zstd(*name, raw, &c)
            };
            (p, c)
        })
        .collect();
    signed_bundle(key, version, Some(base_version), members)
}

/// The fixture's running slot A holding `rootfs`, and its kernel and initrd on the ESP.
pub(crate) fn running(f: &Fixture, rootfs: &[u8]) -> Vec<Vec<u8>> {
    let mut slot = vec![0u8; 1 << 20];
    slot[..rootfs.len()].copy_from_slice(rootfs);
    std::fs::write(&f.device.slot_devices[0].1, &slot).unwrap();
    let dir = f.device.esp.root.join("basalt/a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"old kernel 6.1.0-40").unwrap();
    std::fs::write(dir.join("initrd"), noise(5, 30_000)).unwrap();
    vec![
        rootfs.to_vec(),
        b"old kernel 6.1.0-40".to_vec(),
        noise(5, 30_000),
    ]
}

#[test]
fn a_delta_bundle_rebuilds_the_new_slot_from_the_running_one() {
    let f = fixture();
    let old_root = noise(1, 600_000);
    let bases = running(&f, &old_root);
    let mut new_root = old_root.clone();
    new_root.splice(300_000..300_000, noise(2, 5_000));
    new_root.truncate(590_000);
    let mut new_initrd = bases[2].clone();
    new_initrd[100] ^= 1;
    let new = [
        (PayloadName::Rootfs, new_root.clone()),
        (PayloadName::Kernel, b"new kernel 6.1.0-41".to_vec()),
        (PayloadName::Initrd, new_initrd.clone()),
    ];
    let b = delta_bundle(&f.key, "0.2.0", "0.1.0", &new, &bases);
    assert!(b.len() < 40_000, "delta bundle is {} bytes", b.len());

    let report = check_bundle(&b[..], &f.device).unwrap();
    assert_eq!(report.delta_from.as_deref(), Some("0.1.0"));
    assert!(report.decision.contains("delta from 0.1.0"), "{report:?}");
    stage(&b[..], &f.device).unwrap();
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert!(slot_b[..new_root.len()] == new_root[..]);
    assert_eq!(
        std::fs::read(&f.device.slot_devices[0].1).unwrap()[..old_root.len()],
        old_root[..]
    );
    apply(&f.device).unwrap();
    assert_eq!(
        std::fs::read(f.device.esp.slot_file(Slot::B, "vmlinuz")).unwrap(),
        b"new kernel 6.1.0-41"
    );
    assert_eq!(
        std::fs::read(f.device.esp.slot_file(Slot::B, "initrd")).unwrap(),
        new_initrd
    );
}

#[test]
fn a_delta_for_another_base_is_refused_before_any_write() {
    let f = fixture();
    let old_root = noise(1, 300_000);
    let bases = running(&f, &old_root);
    let new = [
        (PayloadName::Rootfs, noise(3, 1000)),
        (PayloadName::Kernel, b"k".to_vec()),
        (PayloadName::Initrd, b"i".to_vec()),
    ];
    let before = f.device.esp.entries().unwrap();

    // Made from another version than the running one.
    let b = delta_bundle(&f.key, "0.3.0", "0.2.0", &new, &bases);
    let e = stage(&b[..], &f.device).unwrap_err();
    assert!(e.full_bundle_may_do(), "{e}");
    assert!(
        e.to_string()
            .contains("delta from 0.2.0, this device runs 0.1.0"),
        "{e}"
    );

    // Same version, other bytes (a rebuild): found by the base's digest.
    let mut other = bases.clone();
    other[0][1234] ^= 1;
    let b = delta_bundle(&f.key, "0.2.0", "0.1.0", &new, &other);
    let e = check_bundle(&b[..], &f.device).unwrap_err();
    assert!(e.full_bundle_may_do(), "{e}");
    let e = stage(&b[..], &f.device).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("its rootfs payload is made against 300000 bytes")
            && text.contains("running slot a")
            && text.ends_with("install the full bundle"),
        "{text}"
    );
    assert_eq!(e.disposition(), Disposition::GiveUp);
    // A kernel that differs.
    let mut other = bases.clone();
    other[1].push(b'!');
    let b = delta_bundle(&f.key, "0.2.0", "0.1.0", &new, &other);
    let e = stage(&b[..], &f.device).unwrap_err().to_string();
    assert!(
        e.contains("kernel payload") && e.contains("basalt/a/vmlinuz"),
        "{e}"
    );

    assert_eq!(f.device.esp.entries().unwrap(), before);
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap(),
        UpdateState::default()
    );
}

/// A bundle whose root payload is framed, so that staging it can resume.
pub(crate) fn framed_bundle(key: &SecretKey, version: &str, rootfs: &[u8]) -> Vec<u8> {
    use basalt_formats::bundle::stream::delta;
    let mut c = Vec::new();
    delta::encode_frames(None, rootfs, &mut c, 1, 0, |_| ()).unwrap();
    let root = Payload {
        frame_size: Some(delta::FRAME_SIZE as u64),
        ..Payload::zstd(PayloadName::Rootfs, rootfs, &c)
    };
    let members = vec![(root, c), plain(PayloadName::Kernel, b"new kernel")];
    signed_bundle(key, version, None, members)
}

/// A bundle source that breaks after `fail_after` bytes of its first
/// opening (a dropped connection, a power cut), and records every offset
/// it is opened at and every byte it gives.
struct Flaky {
    bytes: Vec<u8>,
    fail_after: std::cell::Cell<Option<usize>>,
    opened: std::cell::RefCell<Vec<u64>>,
    given: std::rc::Rc<std::cell::Cell<u64>>,
}

struct FlakyReader<'a> {
    rest: &'a [u8],
    left: Option<usize>,
    given: std::rc::Rc<std::cell::Cell<u64>>,
}

impl Read for FlakyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = buf.len().min(self.rest.len());
        if let Some(left) = &mut self.left {
            if *left == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the line went down",
                ));
            }
            n = n.min(*left);
            *left -= n;
        }
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        self.given.set(self.given.get() + n as u64);
        Ok(n)
    }
}

impl Reopen for Flaky {
    fn open_at(&self, offset: u64) -> Result<Box<dyn Read + '_>, UpdateError> {
        self.opened.borrow_mut().push(offset);
        Ok(Box::new(FlakyReader {
            rest: &self.bytes[offset as usize..],
            left: self.fail_after.take(),
            given: self.given.clone(),
        }))
    }
}

#[test]
fn an_interrupted_stage_goes_on_from_where_it_stopped() {
    let mut f = fixture();
    let slot_len = 80 << 20;
    for (_, path) in &f.device.slot_devices {
        std::fs::File::create(path)
            .unwrap()
            .set_len(slot_len)
            .unwrap();
    }
    // Four frames and a bit; compressible so that the test is quick.
    let rootfs: Vec<u8> = (0..(64 << 20) + 4321u32)
        .map(|i| ((i / 4096) ^ (i % 61)) as u8)
        .collect();
    let bytes = framed_bundle(&f.key, "0.2.0", &rootfs);
    let source = Flaky {
        fail_after: std::cell::Cell::new(Some(bytes.len() * 3 / 4)),
        bytes,
        opened: Default::default(),
        given: Default::default(),
    };
    let e = stage_resumable(&source, &f.device).unwrap_err();
    assert_eq!(e.disposition(), Disposition::Retry, "{e}");
    // The slot is not bootable, and the state says how far it got.
    assert_eq!(f.device.esp.entries().unwrap(), vec![entry(Slot::A, None)]);
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    let Some(SlotRecord::Writing {
        resume: Some(point),
        ..
    }) = st.get(Slot::B)
    else {
        panic!("{st:?}")
    };
    assert_eq!(point.uncompressed, 32 << 20, "{point:?}");

    // "After the reboot": the same bundle again, read from the head, then
    // from the frame boundary recorded.
    source.opened.borrow_mut().clear();
    source.given.set(0);
    let report = stage_resumable(&source, &f.device).unwrap();
    assert_eq!(report.bundle_version, "0.2.0");
    let opened = source.opened.borrow().clone();
    assert_eq!(opened.len(), 2, "{opened:?}");
    assert_eq!(opened[0], 0);
    assert!(opened[1] > 0, "{opened:?}");
    assert!(
        source.given.get() < source.bytes.len() as u64 * 3 / 5,
        "read {} of {} bytes again",
        source.given.get(),
        source.bytes.len()
    );
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert!(slot_b[..rootfs.len()] == rootfs[..]);
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    assert_eq!(
        st.get(Slot::B),
        Some(&SlotRecord::Staged {
            version: "0.2.0".into()
        })
    );

    // A recorded point of another bundle (another manifest) is not used.
    f.device.release.version = semver::Version::new(0, 0, 5);
    let other = framed_bundle(&f.key, "0.2.1", &rootfs);
    let mut st = UpdateState::load(&f.device.state_dir).unwrap();
    st.set(
        Slot::B,
        SlotRecord::Writing {
            version: "0.2.1".into(),
            resume: Some(state::ResumePoint {
                manifest_sha256: "00".repeat(32),
                ..point.clone()
            }),
        },
    );
    st.write(&f.device.state_dir).unwrap();
    let source = Flaky {
        fail_after: Default::default(),
        bytes: other,
        opened: Default::default(),
        given: Default::default(),
    };
    stage_resumable(&source, &f.device).unwrap();
    assert_eq!(source.opened.borrow().clone(), vec![0]);
}

mod pi;
