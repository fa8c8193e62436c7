use super::*;
use crate::fetch::test_server::{Behaviour, TestServer};
use crate::update::poll::{poll_shared, Mode, Outcome};
use crate::update::state::{SlotRecord, UpdateState};
use crate::update::tests::{bundle, fixture, noise, Fixture};
use basalt_formats::bundle::SecretKey;
use basalt_formats::cloud_config::HttpUrl;
use basalt_formats::Slot;

fn quick() -> Fetcher {
    Fetcher::new(crate::fetch::tests::quick()).unwrap()
}

/// A cache with no free-space margin, in the fixture's state directory.
fn cache(f: &Fixture) -> BundleCache {
    BundleCache {
        min_free: 0,
        min_free_percent: 0,
        ..BundleCache::in_state_dir(&f.device.state_dir)
    }
}

/// An advertisement of 0.2.0 for x86_64-uefi, a delta from `base` if given.
fn ad_of(base: Option<&str>) -> BundleAd {
    BundleAd {
        version: "0.2.0".parse().unwrap(),
        board: BoardId::X86_64Uefi,
        manifest_sha256: "0f".repeat(32),
        size: 10,
        base_version: base.map(|b| b.parse().unwrap()),
    }
}

fn sharing(f: &Fixture, peers: Vec<PeerBundle>) -> Sharing {
    Sharing {
        cache: Some(cache(f)),
        peers: Box::new(StaticPeers(
            peers.into_iter().map(|p| (ad_of(None), p)).collect(),
        )),
    }
}

/// The update channel: `/c/x86_64-uefi.json` offering 0.2.0 as `/c/full.basalt`.
fn origin(full: Vec<u8>) -> (TestServer, HttpUrl) {
    let server = TestServer::start();
    server.route("/c/full.basalt", full, Behaviour::Serve);
    server.route(
        "/c/x86_64-uefi.json",
        r#"{"format":1,"board":"x86_64-uefi","version":"0.2.0","bundle":"full.basalt"}"#,
        Behaviour::Serve,
    );
    let url = server.url("/c").parse().unwrap();
    (server, url)
}

fn manifest_sha(bundle: &[u8]) -> String {
    let head = BundleReader::new(bundle).unwrap();
    Sha256Digest::of(head.manifest_bytes()).to_string()
}

/// A peer serving `body` as the bundle named `sha`.
fn peer(name: &str, sha: &str, body: Vec<u8>, behaviour: Behaviour) -> (TestServer, PeerBundle) {
    let server = TestServer::start();
    let path = format!("{BUNDLE_ROUTE}/{sha}");
    server.route(&path, body, behaviour);
    let p = PeerBundle {
        node: name.into(),
        url: server.url(&path),
        load: 0,
    };
    (server, p)
}

fn kept(f: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache(f).dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_damaged_or_refused_peer_bundle_falls_back_to_the_channel() {
    let f = fixture();
    let rootfs = noise(11, 300_000);
    let good = bundle(&f.key, "0.2.0", &rootfs, false);
    let sha = manifest_sha(&good);
    let (origin, url) = origin(good.clone());
    // The first peer refuses, the second sends a damaged root file system
    // (the same manifest and signatures: only the payload's digest finds
    // it), the third is never asked: two tries at most.
    let (refusing, p1) = peer("node-refusing", &sha, Vec::new(), Behaviour::Status(403));
    let (damaged, p2) = peer(
        "node-damaged",
        &sha,
        bundle(&f.key, "0.2.0", &rootfs, true),
        Behaviour::Serve,
    );
    let (third, p3) = peer("node-third", &sha, good.clone(), Behaviour::Serve);
    let s = sharing(&f, vec![p1, p2, p3]);
    let rec = poll_shared(
        &f.device,
        &url,
        &quick(),
        Mode::StageOnly,
        &mut || Ok(()),
        &s,
    )
    .unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert!(
        rec.detail
            .contains("from the channel (mesh peers failed: node-refusing:")
            && rec.detail.contains("node-damaged:")
            && rec.detail.contains("rootfs"),
        "{rec:?}"
    );
    assert!(!refusing.requests().is_empty());
    assert!(!damaged.requests().is_empty());
    assert!(third.requests().is_empty(), "a third peer was asked");
    assert!(origin.requests().iter().any(|r| r.path == "/c/full.basalt"));
    // The right slot, from the channel's bytes.
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap().get(Slot::B),
        Some(&SlotRecord::Staged {
            version: "0.2.0".into()
        })
    );
    // The channel's bundle is kept for peers, byte for byte.
    assert_eq!(
        kept(&f),
        vec![format!("{sha}.basalt"), format!("{sha}.json")]
    );
    assert_eq!(
        std::fs::read(cache(&f).dir.join(format!("{sha}.basalt"))).unwrap(),
        good
    );
}

#[test]
fn a_bundle_from_a_peer_spares_the_channel() {
    let f = fixture();
    let rootfs = noise(12, 300_000);
    let good = bundle(&f.key, "0.2.0", &rootfs, false);
    let sha = manifest_sha(&good);
    let (origin, url) = origin(good.clone());
    // The peer drops the connection every 100 kB: the download resumes against it.
    let (peer_server, p) = peer("node-7", &sha, good.clone(), Behaviour::DropEvery(100_000));
    let rec = poll_shared(
        &f.device,
        &url,
        &quick(),
        Mode::StageOnly,
        &mut || Ok(()),
        &sharing(&f, vec![p]),
    )
    .unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert!(rec.detail.contains("from mesh peer node-7"), "{rec:?}");
    assert_eq!(origin.bytes_sent("/c/full.basalt"), 0);
    assert!(peer_server.requests().iter().any(|r| r.range.is_some()));
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);
    // Kept, so this node serves it on in turn; `update status` says so.
    let status = crate::update::status(&f.device).unwrap();
    assert!(
        status
            .human()
            .contains("kept for mesh peers: 0.2.0 for x86_64-uefi"),
        "{}",
        status.human()
    );
    assert_eq!(
        cache(&f).list(),
        vec![BundleAd {
            version: "0.2.0".parse().unwrap(),
            board: BoardId::X86_64Uefi,
            manifest_sha256: sha,
            size: good.len() as u64,
            base_version: None,
        }]
    );
}

fn stage_caching(f: &Fixture, c: &BundleCache, body: Vec<u8>) -> bool {
    let server = TestServer::start();
    server.route("/b.basalt", body, Behaviour::Serve);
    let fetcher = quick();
    check_and_stage(&fetcher, &server.url("/b.basalt"), &f.device, Some(c), None).is_ok()
}

#[test]
fn only_a_bundle_that_staged_is_kept_and_a_newer_one_replaces_it() {
    let f = fixture();
    let c = cache(&f);
    let rootfs = noise(13, 200_000);
    let key: &SecretKey = &f.key;
    // Damaged: the stage fails, nothing is kept, no partial file is left.
    assert!(!stage_caching(&f, &c, bundle(key, "0.2.0", &rootfs, true)));
    assert_eq!(kept(&f), Vec::<String>::new());
    // Truncated: likewise.
    let good = bundle(key, "0.2.0", &rootfs, false);
    assert!(!stage_caching(&f, &c, good[..good.len() / 2].to_vec()));
    assert_eq!(kept(&f), Vec::<String>::new());
    // Signed by a stranger: refused before any write, nothing kept.
    let stranger = SecretKey::from_seed(&[9; 32]);
    assert!(!stage_caching(
        &f,
        &c,
        bundle(&stranger, "0.2.0", &rootfs, false)
    ));
    assert_eq!(kept(&f), Vec::<String>::new());
    // Good: kept whole.
    assert!(stage_caching(&f, &c, good.clone()));
    let sha = manifest_sha(&good);
    assert_eq!(
        kept(&f),
        vec![format!("{sha}.basalt"), format!("{sha}.json")]
    );
    assert_eq!(std::fs::read(c.path_of(&sha).unwrap()).unwrap(), good);
    // A newer one supersedes it.
    let newer = bundle(key, "0.3.0", &rootfs, false);
    assert!(stage_caching(&f, &c, newer.clone()));
    let sha3 = manifest_sha(&newer);
    assert_eq!(
        kept(&f),
        vec![format!("{sha3}.basalt"), format!("{sha3}.json")]
    );
    assert_eq!(c.list()[0].version.to_string(), "0.3.0");
    // Not enough room once the margin is counted: staged, not kept.
    let f2 = fixture();
    let tight = BundleCache {
        min_free: u64::MAX / 2,
        ..cache(&f2)
    };
    assert!(stage_caching(&f2, &tight, good));
    assert_eq!(kept(&f2), Vec::<String>::new());
}

/// A site of `n` nodes polling one after the other for a bundle of about
/// `size` bytes: the bytes of the channel's bundle the origin sends, with
/// and without mesh peers (each node offering what it kept to the next).
/// With `damaged`, the first node to get the bundle serves a damaged copy.
fn site(n: usize, size: usize, share: bool, damaged: bool) -> (u64, u64, Vec<String>, usize) {
    let key = fixture().key;
    let rootfs = noise(21, size);
    let good = bundle(&key, "0.2.0", &rootfs, false);
    let sha = manifest_sha(&good);
    let (origin, url) = origin(good.clone());
    let mut serving: Vec<(TestServer, PeerBundle)> = Vec::new();
    let mut how = Vec::new();
    let mut from_peers = 0u64;
    for i in 0..n {
        let f = fixture();
        let peers: Vec<PeerBundle> = serving.iter().rev().map(|(_, p)| p.clone()).collect();
        let s = if share {
            sharing(&f, peers)
        } else {
            Sharing::off()
        };
        let rec = poll_shared(
            &f.device,
            &url,
            &quick(),
            Mode::StageOnly,
            &mut || Ok(()),
            &s,
        )
        .unwrap();
        assert_eq!(rec.outcome, Outcome::Staged, "node {i}: {rec:?}");
        let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
        assert_eq!(&slot_b[..rootfs.len()], &rootfs[..], "node {i}");
        how.push(rec.detail.clone());
        if share {
            let body = if damaged && serving.is_empty() {
                bundle(&key, "0.2.0", &rootfs, true)
            } else {
                std::fs::read(cache(&f).path_of(&sha).unwrap()).unwrap()
            };
            let (server, p) = peer(&format!("node-{i}"), &sha, body, Behaviour::Serve);
            serving.push((server, p));
        }
    }
    for (s, p) in &serving {
        from_peers += s.bytes_sent(&p.url[p.url.find(BUNDLE_ROUTE).unwrap()..]);
    }
    (
        origin.bytes_sent("/c/full.basalt"),
        from_peers,
        how,
        good.len(),
    )
}

#[test]
fn a_site_of_ten_nodes_takes_the_bundle_from_the_origin_once() {
    let (n, size) = (10, 900_000);
    let (without, _, _, len) = site(n, size, false, false);
    let (with, peers, how, _) = site(n, size, true, false);
    let (damaged, damaged_peers, how_damaged, _) = site(n, size, true, true);
    let times = |b: u64| b as f64 / len as f64;
    println!("site of {n} nodes polling in turn, bundle of {len} bytes (incompressible root file system):");
    println!(
        "  channel only:                       origin sent {without} bytes of bundle ({:.1} bundles)",
        times(without)
    );
    println!(
        "  mesh peers first:                   origin sent {with} bytes ({:.1} bundles), peers {peers} ({:.1})",
        times(with),
        times(peers)
    );
    println!(
        "  mesh peers first, one peer damaged: origin sent {damaged} bytes ({:.1} bundles), peers {damaged_peers} ({:.1})",
        times(damaged),
        times(damaged_peers)
    );
    // Every node reads the bundle from the origin (twice: the head, then the stage).
    assert!(without >= n as u64 * size as u64, "{without}");
    // Only the first node takes it from the origin; the rest from peers.
    assert!(with < without / 5, "{with} vs {without}");
    assert_eq!(
        how.iter().filter(|d| d.contains("from mesh peer")).count(),
        n - 1
    );
    // The damaged copy sends nodes back to the origin only until a good peer is there.
    assert!(how_damaged
        .iter()
        .any(|d| d.contains("mesh peers failed: node-0")));
    assert!(damaged < without / 2, "{damaged} vs {without}");
}

#[test]
fn a_peer_cannot_make_the_node_take_another_signed_version() {
    let f = fixture();
    let rootfs = noise(14, 200_000);
    let good = bundle(&f.key, "0.2.0", &rootfs, false);
    let sha = manifest_sha(&good);
    let (_origin, url) = origin(good.clone());
    // Signed by a trusted key and newer, but not what the channel offers
    // (a version held back by a rollout, say).
    let other = bundle(&f.key, "0.3.0", &noise(15, 200_000), false);
    let (_peer, p) = peer("node-ahead", &sha, other.clone(), Behaviour::Serve);
    let rec = poll_shared(
        &f.device,
        &url,
        &quick(),
        Mode::StageOnly,
        &mut || Ok(()),
        &sharing(&f, vec![p]),
    )
    .unwrap();
    assert!(
        rec.detail
            .contains("node-ahead: bundle: the bundle is version 0.3.0, not 0.2.0")
            || rec
                .detail
                .contains("the bundle is version 0.3.0, not 0.2.0"),
        "{rec:?}"
    );
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);

    // The stage checks it too (a peer may send another bundle the second
    // time it is asked), before anything is written.
    let f = fixture();
    let before = f.device.esp.entries().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.basalt");
    std::fs::write(&file, &other).unwrap();
    let e = crate::update::stage_resumable_expecting(
        &crate::update::FileSource(file),
        &f.device,
        &"0.2.0".parse().unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, UpdateError::WrongVersion { .. }), "{e}");
    assert_eq!(f.device.esp.entries().unwrap(), before);
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap(),
        UpdateState::default()
    );
}

#[test]
fn mesh_peers_offer_live_peers_with_the_version_least_loaded_first() {
    use crate::mesh::status::{self, PeerState};
    let ad = |v: &str, board| BundleAd {
        version: v.parse().unwrap(),
        board,
        ..ad_of(None)
    };
    let mut st = status::tests::status();
    let template = st.peers[0].clone();
    let peer = |n: u8, state, load, bundles| status::PeerStatus {
        ipv6: format!("fd00::{n}").parse().unwrap(),
        hostname: Some(format!("n{n}")),
        state,
        load,
        bundles,
        ..template.clone()
    };
    st.peers = vec![
        peer(
            2,
            PeerState::Alive,
            50,
            vec![ad("0.2.0", BoardId::X86_64Uefi)],
        ),
        peer(
            3,
            PeerState::Alive,
            0,
            vec![ad("0.2.0", BoardId::X86_64Uefi)],
        ),
        peer(
            4,
            PeerState::Dead,
            0,
            vec![ad("0.2.0", BoardId::X86_64Uefi)],
        ),
        peer(
            5,
            PeerState::Alive,
            0,
            vec![ad("0.2.0", BoardId::Arm64Uefi)],
        ),
        peer(
            6,
            PeerState::Alive,
            0,
            vec![ad("0.1.9", BoardId::X86_64Uefi)],
        ),
        peer(7, PeerState::Alive, 0, vec![]),
    ];
    let dir = tempfile::tempdir().unwrap();
    status::write(dir.path(), &st).unwrap();
    let peers = MeshPeers {
        status_dir: dir.path().to_path_buf(),
        port: 8080,
    };
    let (v2, v3, v1) = (
        "0.2.0".parse().unwrap(),
        "0.3.0".parse().unwrap(),
        "0.1.0".parse().unwrap(),
    );
    let wanted = |version, base| Wanted {
        version,
        board: BoardId::X86_64Uefi,
        base,
    };
    let got = peers.offering(wanted(&v2, None));
    let urls: Vec<&str> = got.iter().map(|p| p.url.as_str()).collect();
    let sha = "0f".repeat(32);
    assert_eq!(
        urls,
        vec![
            format!("http://[fd00::3]:8080/v1/bundles/{sha}"),
            format!("http://[fd00::2]:8080/v1/bundles/{sha}"),
        ]
    );
    assert!(peers.offering(wanted(&v3, None)).is_empty());
    // A full bundle is not a delta, nor a delta a full bundle.
    assert!(peers.offering(wanted(&v2, Some(&v1))).is_empty());
}

#[test]
fn a_peer_that_is_gone_sends_the_node_to_the_channel() {
    let f = fixture();
    let rootfs = noise(16, 100_000);
    let good = bundle(&f.key, "0.2.0", &rootfs, false);
    let sha = manifest_sha(&good);
    let (_origin, url) = origin(good);
    // Nothing listens there.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = PeerBundle {
        node: "node-gone".into(),
        url: format!("http://127.0.0.1:{gone}{BUNDLE_ROUTE}/{sha}"),
        load: 0,
    };
    let t = std::time::Instant::now();
    let rec = poll_shared(
        &f.device,
        &url,
        &quick(),
        Mode::StageOnly,
        &mut || Ok(()),
        &sharing(&f, vec![p]),
    )
    .unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert!(
        rec.detail.contains("mesh peers failed: node-gone:"),
        "{rec:?}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);
}

#[test]
fn a_delta_is_kept_and_the_next_node_takes_it_from_that_peer() {
    use crate::update::tests::{delta_bundle, running};
    use basalt_formats::bundle::PayloadName;
    // Two nodes of a site, both running 0.1.0 with the same slot.
    let (first, second) = (fixture(), fixture());
    let old_root = noise(17, 400_000);
    let bases = running(&first, &old_root);
    running(&second, &old_root);
    let mut new_root = old_root.clone();
    new_root[5000..5100].fill(3);
    let delta = delta_bundle(
        &first.key,
        "0.2.0",
        "0.1.0",
        &[
            (PayloadName::Rootfs, new_root.clone()),
            (PayloadName::Kernel, b"new kernel".to_vec()),
            (PayloadName::Initrd, noise(6, 30_000)),
        ],
        &bases,
    );
    let sha = manifest_sha(&delta);
    let origin = TestServer::start();
    origin.route("/c/d.basalt", delta.clone(), Behaviour::Serve);
    origin.route(
        "/c/x86_64-uefi.json",
        r#"{"format":1,"board":"x86_64-uefi","version":"0.2.0","bundle":"full.basalt","deltas":[{"from":"0.1.0","bundle":"d.basalt"}]}"#,
        Behaviour::Serve,
    );
    let url: HttpUrl = origin.url("/c").parse().unwrap();
    let poll = |f: &Fixture, sharing: &Sharing| {
        poll_shared(
            &f.device,
            &url,
            &quick(),
            Mode::StageOnly,
            &mut || Ok(()),
            sharing,
        )
        .unwrap()
    };

    // The first node takes the delta from the channel and keeps it.
    let rec = poll(&first, &sharing(&first, vec![]));
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    let ads = cache(&first).list();
    assert_eq!(
        ads,
        vec![BundleAd {
            manifest_sha256: sha.clone(),
            size: delta.len() as u64,
            ..ad_of(Some("0.1.0"))
        }]
    );
    let sent = origin.bytes_sent("/c/d.basalt");
    assert!(sent >= delta.len() as u64, "{sent}");

    // The second finds it advertised by the first and takes it from there:
    // not a byte more of it from the channel.
    let (peer_server, p) = peer(
        "node-1",
        &sha,
        std::fs::read(cache(&first).path_of(&sha).unwrap()).unwrap(),
        Behaviour::Serve,
    );
    let from_peers = Sharing {
        cache: Some(cache(&second)),
        peers: Box::new(StaticPeers(vec![(ads[0].clone(), p)])),
    };
    let rec = poll(&second, &from_peers);
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert!(
        rec.detail
            .contains("from the delta from 0.1.0 from mesh peer node-1"),
        "{rec:?}"
    );
    assert_eq!(origin.bytes_sent("/c/d.basalt"), sent);
    assert!(!peer_server.requests().is_empty());
    let slot_b = std::fs::read(&second.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..new_root.len()], &new_root[..]);
}
