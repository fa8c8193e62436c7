use super::*;
use crate::fetch::test_server::{Behaviour, TestServer};
use crate::update::stage;
use crate::update::tests::{bundle, entry, fixture};
use basalt_formats::bundle::PayloadName;
use basalt_formats::BoardId;

fn channel(version: &str, board: BoardId) -> Channel {
    Channel {
        board,
        version: version.parse().unwrap(),
        bundle: "https://u.example/x.basalt".parse().unwrap(),
        size: None,
        rollout: basalt_formats::channel::rollout::Percent::ALL,
        recalled: Vec::new(),
        deltas: Vec::new(),
    }
}

fn release() -> Release {
    crate::update::tests::fixture().device.release
}

/// The node the fixture's device is.
fn node() -> NodeId {
    crate::update::tests::fixture().device.node_id.unwrap()
}

/// `decide`'s decision for the fixture's node, where no recall is in play.
fn decision(c: &Channel, r: &Release, st: &UpdateState, on_trial: bool) -> PollDecision {
    let plan = decide(c, r, st, Slot::B, on_trial, Ok(&node())).unwrap();
    assert_eq!((&plan.disarm, &plan.running_recalled), (&None, &None));
    plan.decision
}

#[test]
fn only_a_newer_version_for_this_board_is_taken() {
    let r = release();
    let st = UpdateState::default();
    let d = |v: &str| decision(&channel(v, BoardId::X86_64Uefi), &r, &st, false);
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
        Ok(&node()),
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
        decision(&c, &r, &st, true),
        PollDecision::Hold { reason, .. } if reason.contains("on trial")
    ));
    st.set(
        Slot::B,
        SlotRecord::Staged {
            version: "0.2.0".into(),
        },
    );
    assert_eq!(
        decision(&c, &r, &st, false),
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
        decision(&c, &r, &st, false),
        PollDecision::Install { .. }
    ));
    st.set(
        Slot::B,
        SlotRecord::Trying {
            version: "0.2.0".into(),
        },
    );
    assert_eq!(
        decision(&c, &r, &st, false),
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
        decision(&c, &r, &st, false),
        PollDecision::Install { .. }
    ));
    st.record_failure("0.2.0".into(), Slot::B, 5);
    assert!(matches!(
        decision(&c, &r, &st, false),
        PollDecision::Hold { reason, .. } if reason.contains("rolled back")
    ));
    assert!(matches!(
        decision(&channel("0.2.1", BoardId::X86_64Uefi), &r, &st, false),
        PollDecision::Install { .. }
    ));
}

fn at(c: Channel, percent: &str) -> Channel {
    Channel {
        rollout: percent.parse().unwrap(),
        ..c
    }
}

fn recalling(c: Channel, versions: &[&str]) -> Channel {
    Channel {
        recalled: versions.iter().map(|v| v.parse().unwrap()).collect(),
        ..c
    }
}

#[test]
fn a_staged_rollout_takes_the_nodes_below_the_percent() {
    let r = release();
    let st = UpdateState::default();
    let c = channel("0.2.0", BoardId::X86_64Uefi);
    let bucket = Bucket::of(&node(), &c.version);
    let just_above = Percent::from_hundredths(bucket.hundredths() + 1).unwrap();
    let install = PollDecision::Install {
        version: "0.2.0".into(),
        bundle: "https://u.example/x.basalt".into(),
    };
    assert_eq!(
        decision(&at(c.clone(), &just_above.to_string()), &r, &st, false),
        install
    );
    assert_eq!(decision(&at(c.clone(), "100"), &r, &st, false), install);
    let exactly = Percent::from_hundredths(bucket.hundredths()).unwrap();
    assert_eq!(
        decision(&at(c.clone(), &exactly.to_string()), &r, &st, false),
        PollDecision::Hold {
            version: "0.2.0".into(),
            reason: format!("rollout at {exactly} %: this node's bucket is {bucket}"),
        }
    );
    assert!(matches!(
        decision(&at(c.clone(), "0"), &r, &st, false),
        PollDecision::Hold { reason, .. } if reason.starts_with("rollout at 0 %: this node's bucket is ")
    ));

    // Held back, a staged version is not applied; an armed one is left armed.
    let mut staged = UpdateState::default();
    staged.set(
        Slot::B,
        SlotRecord::Staged {
            version: "0.2.0".into(),
        },
    );
    assert!(matches!(
        decision(&at(c.clone(), "0"), &r, &staged, false),
        PollDecision::Hold { .. }
    ));
    let mut armed = UpdateState::default();
    armed.set(
        Slot::B,
        SlotRecord::Trying {
            version: "0.2.0".into(),
        },
    );
    assert_eq!(
        decision(&at(c.clone(), "0"), &r, &armed, false),
        PollDecision::Armed {
            version: "0.2.0".into()
        }
    );

    // Without its identity a node cannot place itself: it waits for 100 %.
    let no_id = |c: &Channel| {
        decide(c, &r, &st, Slot::B, false, Err("key file gone"))
            .unwrap()
            .decision
    };
    assert_eq!(
        no_id(&at(c.clone(), "99.99")),
        PollDecision::Hold {
            version: "0.2.0".into(),
            reason: "rollout at 99.99 %, and this node cannot place itself in it without its identity (key file gone); it waits for 100 %".into(),
        }
    );
    assert_eq!(no_id(&c), install);
}

#[test]
fn a_recalled_version_is_taken_out_of_the_slot_that_has_not_booted() {
    let r = release();
    let mut st = UpdateState::default();
    st.set(
        Slot::A,
        SlotRecord::Installed {
            version: "0.1.0".into(),
        },
    );
    st.set(
        Slot::B,
        SlotRecord::Staged {
            version: "0.2.0".into(),
        },
    );
    let plan =
        |c: &Channel, st: &UpdateState| decide(c, &r, st, Slot::B, false, Ok(&node())).unwrap();
    // Staged, recalled, and the channel offers a fix: out with it, in with the fix.
    let fix = recalling(channel("0.2.1", BoardId::X86_64Uefi), &["0.2.0"]);
    assert_eq!(
        plan(&fix, &st),
        PollPlan {
            disarm: Some(Disarm {
                slot: Slot::B,
                version: "0.2.0".into(),
                armed: false
            }),
            running_recalled: None,
            decision: PollDecision::Install {
                version: "0.2.1".into(),
                bundle: "https://u.example/x.basalt".into()
            },
        }
    );
    // Armed, recalled, and nothing newer than the running version on offer.
    st.set(
        Slot::B,
        SlotRecord::Trying {
            version: "0.2.0".into(),
        },
    );
    let back = recalling(channel("0.1.0", BoardId::X86_64Uefi), &["0.2.0"]);
    let p = plan(&back, &st);
    assert_eq!(
        p.disarm,
        Some(Disarm {
            slot: Slot::B,
            version: "0.2.0".into(),
            armed: true
        })
    );
    assert!(matches!(p.decision, PollDecision::UpToDate { .. }));
    // Build metadata does not hide a recalled version.
    st.set(
        Slot::B,
        SlotRecord::Staged {
            version: "0.2.0+rebuild".into(),
        },
    );
    assert!(plan(&back, &st).disarm.is_some());
    // A slot that holds a recalled version but cannot boot it is left alone.
    st.set(
        Slot::B,
        SlotRecord::Bad {
            version: "0.2.0".into(),
            reason: RECALLED_REASON.into(),
        },
    );
    assert_eq!(plan(&back, &st).disarm, None);
    // So is the running slot, whatever it holds.
    assert_eq!(
        decide(&back, &r, &st, Slot::A, false, Ok(&node()))
            .unwrap()
            .disarm,
        None
    );
    // The channel's own version is never recalled (parsing refuses it too).
    let both = recalling(channel("0.2.0", BoardId::X86_64Uefi), &["0.2.0"]);
    assert_eq!(
        decide(&both, &r, &st, Slot::B, false, Ok(&node())).unwrap_err(),
        "the channel offers 0.2.0 and recalls it"
    );
}

#[test]
fn a_recalled_running_version_is_reported_and_never_downgraded() {
    let r = release();
    let st = UpdateState::default();
    let p = |c: &Channel| decide(c, &r, &st, Slot::B, false, Ok(&node())).unwrap();
    // Only older versions on offer: nothing is installed.
    let older = recalling(channel("0.0.9", BoardId::X86_64Uefi), &["0.1.0"]);
    assert_eq!(
        p(&older),
        PollPlan {
            disarm: None,
            running_recalled: Some("0.1.0".into()),
            decision: PollDecision::UpToDate {
                running: "0.1.0".into(),
                latest: "0.0.9".into()
            },
        }
    );
    // A newer version is taken as usual, rollout included.
    let fix = recalling(channel("0.1.1", BoardId::X86_64Uefi), &["0.1.0"]);
    assert!(matches!(p(&fix).decision, PollDecision::Install { .. }));
    assert_eq!(p(&fix).running_recalled.as_deref(), Some("0.1.0"));
    assert!(matches!(
        p(&at(fix, "0")).decision,
        PollDecision::Hold { .. }
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

fn channel_doc_with(version: &str, bundle: &str, extra: &str) -> String {
    format!(
        r#"{{"format":1,"board":"x86_64-uefi","version":"{version}","bundle":"{bundle}",{extra}}}"#
    )
}

#[test]
fn a_poll_takes_a_recalled_staged_or_armed_version_out_of_the_boot_menu() {
    let f = fixture();
    let server = TestServer::start();
    let url: HttpUrl = server.url("/c").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let mut no_reboot = || -> Result<(), String> { panic!("nothing to reboot into") };
    stage(&bundle(&f.key, "0.2.0", b"root", false)[..], &f.device).unwrap();
    apply(&f.device).unwrap();
    assert_eq!(
        f.device.esp.entries().unwrap(),
        vec![entry(Slot::A, None), entry(Slot::B, Some((3, 0)))]
    );
    server.route(
        "/c/x86_64-uefi.json",
        channel_doc_with("0.1.0", "/none.basalt", r#""recalled":["0.2.0"]"#),
        Behaviour::Serve,
    );
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap();
    assert_eq!(rec.outcome, Outcome::Disarmed, "{rec:?}");
    assert_eq!(
        rec.disarmed,
        Some(Disarm {
            slot: Slot::B,
            version: "0.2.0".into(),
            armed: true
        })
    );
    assert!(
        rec.detail
            .starts_with("0.2.0 was armed in slot b; the channel recalls it"),
        "{rec:?}"
    );
    assert_eq!(f.device.esp.entries().unwrap(), vec![entry(Slot::A, None)]);
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    assert_eq!(
        st.get(Slot::B),
        Some(&SlotRecord::Bad {
            version: "0.2.0".into(),
            reason: RECALLED_REASON.into()
        })
    );
    assert!(matches!(
        apply(&f.device),
        Err(UpdateError::NotStaged { slot: Slot::B })
    ));

    // Staged by hand, not armed: taken out all the same.
    stage(&bundle(&f.key, "0.2.0", b"root", false)[..], &f.device).unwrap();
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap();
    assert_eq!(rec.outcome, Outcome::Disarmed, "{rec:?}");
    assert!(rec.disarmed.is_some_and(|d| !d.armed));
    assert!(matches!(
        UpdateState::load(&f.device.state_dir).unwrap().get(Slot::B),
        Some(SlotRecord::Bad { reason, .. }) if reason == RECALLED_REASON
    ));
    // Nothing left to take out: the next poll is an ordinary one.
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap();
    assert_eq!((rec.outcome, rec.disarmed), (Outcome::UpToDate, None));
    // No bundle was asked for.
    assert!(server.requests().iter().all(|r| r.path.ends_with(".json")));
}

#[test]
fn a_poll_reports_a_recalled_running_version_and_does_not_downgrade() {
    let f = fixture();
    let server = TestServer::start();
    let url: HttpUrl = server.url("/c").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    server.route(
        "/old.basalt",
        bundle(&f.key, "0.0.9", b"old root", false),
        Behaviour::Serve,
    );
    server.route(
        "/c/x86_64-uefi.json",
        channel_doc_with("0.0.9", "/old.basalt", r#""recalled":["0.1.0"]"#),
        Behaviour::Serve,
    );
    let mut no_reboot = || -> Result<(), String> { panic!("no downgrade") };
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap();
    assert_eq!(rec.outcome, Outcome::Recalled, "{rec:?}");
    assert_eq!(rec.running_recalled.as_deref(), Some("0.1.0"));
    assert!(
        rec.detail.starts_with(
            "the channel recalls 0.1.0, the version this device runs; it never goes back"
        ),
        "{rec:?}"
    );
    assert!(
        rec.detail
            .ends_with("up to date: running 0.1.0, the channel offers 0.0.9"),
        "{rec:?}"
    );
    assert_eq!(
        UpdateState::load(&f.device.state_dir).unwrap(),
        UpdateState::default()
    );
    assert!(server.requests().iter().all(|r| r.path != "/old.basalt"));
    let status = crate::update::status(&f.device).unwrap();
    assert_eq!(
        status.poll.as_ref().unwrap().running_recalled.as_deref(),
        Some("0.1.0")
    );
    assert!(
        status
            .human()
            .contains("RECALLED: the channel recalls 0.1.0, the version this device runs"),
        "{}",
        status.human()
    );
}

#[test]
fn a_poll_outside_the_rollout_downloads_nothing() {
    let f = fixture();
    let server = TestServer::start();
    let url: HttpUrl = server.url("/c").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    server.route(
        "/b.basalt",
        bundle(&f.key, "0.2.0", b"root", false),
        Behaviour::Serve,
    );
    let bucket = Bucket::of(
        f.device.node_id.as_ref().unwrap(),
        &"0.2.0".parse().unwrap(),
    );
    let below = Percent::from_hundredths(bucket.hundredths()).unwrap();
    server.route(
        "/c/x86_64-uefi.json",
        channel_doc_with(
            "0.2.0",
            "/b.basalt",
            &format!(r#""rollout":{{"percent":{}}}"#, below.to_json()),
        ),
        Behaviour::Serve,
    );
    let mut no_reboot = || -> Result<(), String> { panic!("held back") };
    let rec = poll(&f.device, &url, &fetcher, Mode::Apply, &mut no_reboot).unwrap();
    assert_eq!(rec.outcome, Outcome::Held, "{rec:?}");
    assert_eq!(
        rec.detail,
        format!("not taking 0.2.0: rollout at {below} %: this node's bucket is {bucket}")
    );
    assert!(server.requests().iter().all(|r| r.path != "/b.basalt"));

    // One hundredth more, and this node is in.
    let above = Percent::from_hundredths(bucket.hundredths() + 1).unwrap();
    server.route(
        "/c/x86_64-uefi.json",
        channel_doc_with(
            "0.2.0",
            "/b.basalt",
            &format!(r#""rollout":{{"percent":{}}}"#, above.to_json()),
        ),
        Behaviour::Serve,
    );
    let rec = poll(&f.device, &url, &fetcher, Mode::StageOnly, &mut no_reboot).unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
}

#[test]
fn a_poll_takes_the_delta_for_its_version_and_falls_back_to_the_full_bundle() {
    use crate::update::tests::{delta_bundle, noise, running};
    let f = fixture();
    let old_root = noise(1, 400_000);
    let bases = running(&f, &old_root);
    let mut new_root = old_root.clone();
    new_root.splice(200_000..200_000, noise(2, 3_000));
    let parts = [
        (PayloadName::Rootfs, new_root.clone()),
        (PayloadName::Kernel, b"new kernel".to_vec()),
        (PayloadName::Initrd, b"new initrd".to_vec()),
    ];
    let server = TestServer::start();
    server.route(
        "/c/full.basalt",
        bundle(&f.key, "0.2.0", &new_root, false),
        Behaviour::Serve,
    );
    let deltas =
        r#""deltas":[{"from":"0.0.9","bundle":"old.basalt"},{"from":"0.1.0","bundle":"d.basalt"}]"#;
    server.route(
        "/c/x86_64-uefi.json",
        channel_doc_with("0.2.0", "full.basalt", deltas),
        Behaviour::Serve,
    );
    let url: HttpUrl = server.url("/c").parse().unwrap();
    let fetcher = Fetcher::new(crate::fetch::tests::quick()).unwrap();
    let fetched = |server: &TestServer, path: &str| {
        server.requests().iter().filter(|r| r.path == path).count()
    };

    // The delta from the running version: the full bundle is never fetched.
    server.route(
        "/c/d.basalt",
        delta_bundle(&f.key, "0.2.0", "0.1.0", &parts, &bases),
        Behaviour::Serve,
    );
    let rec = poll(&f.device, &url, &fetcher, Mode::StageOnly, &mut || Ok(())).unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert!(rec.detail.contains("from the delta from 0.1.0"), "{rec:?}");
    assert_eq!(fetched(&server, "/c/full.basalt"), 0);
    assert_eq!(fetched(&server, "/c/old.basalt"), 0);
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert!(slot_b[..new_root.len()] == new_root[..]);

    // A delta made against other bytes than this device's: the full bundle.
    let f = fixture();
    let bases = running(&f, &old_root);
    let mut other = bases.clone();
    other[0][5] ^= 1;
    server.route(
        "/c/d.basalt",
        delta_bundle(&f.key, "0.2.0", "0.1.0", &parts, &other),
        Behaviour::Serve,
    );
    let rec = poll(&f.device, &url, &fetcher, Mode::StageOnly, &mut || Ok(())).unwrap();
    assert_eq!(rec.outcome, Outcome::Staged, "{rec:?}");
    assert!(
        rec.detail
            .contains("from the full bundle (the delta from 0.1.0 did not stage")
            && rec.detail.contains("install the full bundle"),
        "{rec:?}"
    );
    assert_eq!(
        fetched(&server, "/c/full.basalt"),
        2,
        "head check, then stage"
    );
    let slot_b = std::fs::read(&f.device.slot_devices[1].1).unwrap();
    assert!(slot_b[..new_root.len()] == new_root[..]);

    // A delta that is missing on the server: the full bundle too.
    let f = fixture();
    running(&f, &old_root);
    server.route("/c/d.basalt", Vec::new(), Behaviour::Status(404));
    let rec = poll(&f.device, &url, &fetcher, Mode::StageOnly, &mut || Ok(())).unwrap();
    assert!(rec.detail.contains("from the full bundle"), "{rec:?}");
}
