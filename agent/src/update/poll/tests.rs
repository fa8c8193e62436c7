use super::*;
use crate::fetch::test_server::{Behaviour, TestServer};
use crate::update::tests::{bundle, entry, fixture};
use basalt_formats::BoardId;

fn channel(version: &str, board: BoardId) -> Channel {
    Channel {
        board,
        version: version.parse().unwrap(),
        bundle: "https://u.example/x.basalt".parse().unwrap(),
        size: None,
        rollout: basalt_formats::channel::rollout::Percent::ALL,
        recalled: Vec::new(),
    }
}

fn release() -> Release {
    crate::update::tests::fixture().device.release
}

#[test]
fn only_a_newer_version_for_this_board_is_taken() {
    let r = release();
    let st = UpdateState::default();
    let d = |v: &str| decide(&channel(v, BoardId::X86_64Uefi), &r, &st, Slot::B, false).unwrap();
    assert_eq!(
        d("0.1.0"),
        PollDecision::UpToDate {
            running: "0.1.0".into(),
            latest: "0.1.0".into()
        }
    );
    assert!(matches!(d("0.0.9"), PollDecision::UpToDate { .. }));
    // Build metadata does not make a version newer.
    assert!(matches!(d("0.1.0+rebuild"), PollDecision::UpToDate { .. }));
    assert_eq!(
        d("0.2.0"),
        PollDecision::Install {
            version: "0.2.0".into(),
            bundle: "https://u.example/x.basalt".into()
        }
    );
    let e = decide(
        &channel("0.2.0", BoardId::Arm64Uefi),
        &r,
        &st,
        Slot::B,
        false,
    )
    .unwrap_err();
    assert_eq!(
        e,
        "the channel document is for board arm64-uefi, this device is x86_64-uefi"
    );
}

#[test]
fn trials_rollbacks_and_staged_versions() {
    let r = release();
    let c = channel("0.2.0", BoardId::X86_64Uefi);
    let mut st = UpdateState::default();
    assert!(matches!(
        decide(&c, &r, &st, Slot::B, true).unwrap(),
        PollDecision::Hold { reason, .. } if reason.contains("on trial")
    ));
    st.set(
        Slot::B,
        SlotRecord::Staged {
            version: "0.2.0".into(),
        },
    );
    assert_eq!(
        decide(&c, &r, &st, Slot::B, false).unwrap(),
        PollDecision::ApplyStaged {
            version: "0.2.0".into()
        }
    );
    st.set(
        Slot::B,
        SlotRecord::Staged {
            version: "0.1.5".into(),
        },
    );
    assert!(matches!(
        decide(&c, &r, &st, Slot::B, false).unwrap(),
        PollDecision::Install { .. }
    ));
    st.set(
        Slot::B,
        SlotRecord::Trying {
            version: "0.2.0".into(),
        },
    );
    assert_eq!(
        decide(&c, &r, &st, Slot::B, false).unwrap(),
        PollDecision::Armed {
            version: "0.2.0".into()
        }
    );
    // A failed download left the slot bad: the next poll tries again.
    st.set(
        Slot::B,
        SlotRecord::Bad {
            version: "0.2.0".into(),
            reason: "dropped".into(),
        },
    );
    assert!(matches!(
        decide(&c, &r, &st, Slot::B, false).unwrap(),
        PollDecision::Install { .. }
    ));
    st.record_failure("0.2.0".into(), Slot::B, 5);
    assert!(matches!(
        decide(&c, &r, &st, Slot::B, false).unwrap(),
        PollDecision::Hold { reason, .. } if reason.contains("rolled back")
    ));
    assert!(matches!(
        decide(
            &channel("0.2.1", BoardId::X86_64Uefi),
            &r,
            &st,
            Slot::B,
            false
        )
        .unwrap(),
        PollDecision::Install { .. }
    ));
}

#[test]
fn jitter_stays_within_ten_percent() {
    let h = Duration::from_secs(3600);
    assert_eq!(jittered(h, 0.0), Duration::from_secs(3240));
    assert_eq!(jittered(h, 0.5), h);
    assert_eq!(jittered(h, 1.0), Duration::from_secs(3960));
    assert_eq!(jittered(h, 7.0), Duration::from_secs(3960));
    for _ in 0..1000 {
        let d = jittered(h, rand::random::<f64>());
        assert!(
            d >= Duration::from_secs(3240) && d < Duration::from_secs(3960),
            "{d:?}"
        );
    }
    assert_eq!(first_delay(h, 0.5), Duration::from_secs(300));
    assert_eq!(
        first_delay(Duration::from_secs(60), 0.0),
        Duration::from_secs(54)
    );
}

fn channel_doc(version: &str, bundle: &str) -> String {
    format!(r#"{{"format":1,"board":"x86_64-uefi","version":"{version}","bundle":"{bundle}"}}"#)
}

#[test]
fn a_poll_stages_applies_and_reboots_then_finds_it_armed() {
    let f = fixture();
    let server = TestServer::start();
    let rootfs: Vec<u8> = (0..150_000u32).map(|i| (i % 249) as u8).collect();
    server.route(
        "/stable/bundles/x-0.2.0.basalt",
        bundle(&f.key, "0.2.0", &rootfs, false),
        Behaviour::DropEvery(50_000),
    );
    server.route(
        "/stable/x86_64-uefi.json",
        channel_doc("0.2.0", "bundles/x-0.2.0.basalt"),
        Behaviour::Serve,
    );
    let url: HttpUrl = server.url("/stable/").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let mut reboots = 0;
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut || {
        reboots += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(reboots, 1);
    assert_eq!(rec.outcome, Outcome::Applied, "{rec:?}");
    assert_eq!(rec.latest.as_deref(), Some("0.2.0"));
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert_eq!(&slot_b[..rootfs.len()], &rootfs[..]);
    assert_eq!(
        f.device.esp.entries().unwrap(),
        vec![entry(Slot::A, None), entry(Slot::B, Some((3, 0)))]
    );
    assert_eq!(PollRecord::load(&f.device.state_dir), Some(rec));
    let status = crate::update::status(&f.device).unwrap();
    assert_eq!(status.poll.unwrap().outcome, Outcome::Applied);

    // The next poll (the reboot has not happened) downloads nothing.
    let before = server.requests().len();
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut || {
        panic!("no second reboot")
    })
    .unwrap();
    assert!(rec.detail.contains("is armed in slot b"), "{rec:?}");
    assert_eq!(server.requests().len(), before + 1);
}

#[test]
fn no_apply_stages_only_and_a_later_poll_applies_without_downloading() {
    let f = fixture();
    let server = TestServer::start();
    server.route(
        "/b.basalt",
        bundle(&f.key, "0.3.0", b"root", false),
        Behaviour::Serve,
    );
    server.route(
        "/c/x86_64-uefi.json",
        channel_doc("0.3.0", "/b.basalt"),
        Behaviour::Serve,
    );
    let url: HttpUrl = server.url("/c").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let mut no_reboot = || -> Result<(), String> { panic!("stage only") };
    let rec = poll(&f.device, &url, &fetcher, Mode::StageOnly, &mut no_reboot).unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert_eq!(f.device.esp.entries().unwrap(), vec![entry(Slot::A, None)]);
    let bundle_requests = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/b.basalt")
            .count()
    };
    // One request for the signature check, one to stage.
    assert_eq!(bundle_requests(), 2);
    let mut reboots = 0;
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut || {
        reboots += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        (rec.outcome, reboots, bundle_requests()),
        (Outcome::Applied, 1, 2)
    );
}

#[test]
fn failed_polls_are_recorded_with_the_url() {
    let f = fixture();
    let server = TestServer::start();
    let url: HttpUrl = server.url("/none").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let mut no_reboot = || -> Result<(), String> { panic!("nothing to apply") };
    let e = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap_err();
    assert!(e.to_string().contains("/none/x86_64-uefi.json"), "{e}");
    let rec = PollRecord::load(&f.device.state_dir).unwrap();
    assert_eq!(rec.outcome, Outcome::Failed);
    assert_eq!(rec.error, Some(e.to_string()));
    assert_eq!(rec.disposition, Some(Disposition::Retry));

    // A channel that names a bundle signed by a stranger: refused, nothing staged.
    let stranger = basalt_formats::bundle::SecretKey::from_seed(&[9; 32]);
    server.route(
        "/evil.basalt",
        bundle(&stranger, "9.0.0", b"x", false),
        Behaviour::Serve,
    );
    server.route(
        "/none/x86_64-uefi.json",
        channel_doc("9.0.0", "../evil.basalt"),
        Behaviour::Serve,
    );
    let e = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap_err();
    assert_eq!(e.disposition(), Disposition::GiveUp, "{e}");
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap(),
        UpdateState::default()
    );
    server.route("/none/x86_64-uefi.json", "{\"format\":1}", Behaviour::Serve);
    let e = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap_err();
    assert!(e.to_string().contains("missing field"), "{e}");
}
