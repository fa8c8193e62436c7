//! The update flow on a Raspberry Pi: the boot slot is a partition payload,
//! the trial is armed by the reboot, and where the firmware went decides.

use super::*;
use basalt_formats::tryboot::{Autoboot, AUTOBOOT_TXT};

/// The fixture as a Pi 4: file-backed boot and root partitions, the
/// firmware's report and `autoboot.txt` in directories, slot A committed and
/// running.
fn pi_fixture() -> Fixture {
    let mut f = fixture();
    let dir = f._dir.path().to_path_buf();
    let (fw, mount) = (dir.join("fw"), dir.join("autoboot"));
    std::fs::create_dir_all(&fw).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(
        mount.join(AUTOBOOT_TXT),
        Autoboot { committed: Slot::A }.render(),
    )
    .unwrap();
    for s in Slot::ALL {
        // A factory boot slot: what the image put in both.
        std::fs::write(dir.join(format!("boot-{s}")), noise(9, 256 << 10)).unwrap();
    }
    f.device.tryboot = Some(tryboot::Tryboot {
        device: PathBuf::from("/dev/null"),
        mount,
        firmware_dir: fw,
    });
    f.device.boot_devices = Slot::ALL
        .iter()
        .map(|s| (*s, dir.join(format!("boot-{s}"))))
        .collect();
    f.device.release.board = BoardId::Rpi4;
    power_on(&mut f, 2, false);
    f
}

/// What the firmware reports for a boot of `partition`, and the slot the device runs.
fn power_on(f: &mut Fixture, partition: u32, tryboot: bool) {
    let t = f.device.tryboot.as_ref().unwrap();
    std::fs::write(
        t.firmware_dir.join("tryboot"),
        u32::from(tryboot).to_be_bytes(),
    )
    .unwrap();
    std::fs::write(t.firmware_dir.join("partition"), partition.to_be_bytes()).unwrap();
    f.device.boot.slot = basalt_formats::layout::rpi_slot_of_boot_partition(partition).unwrap();
}

fn autoboot(f: &Fixture) -> String {
    let t = f.device.tryboot.as_ref().unwrap();
    std::fs::read_to_string(t.mount.join(AUTOBOOT_TXT)).unwrap()
}

fn partition(f: &Fixture, name: PayloadName, slot: Slot) -> Vec<u8> {
    std::fs::read(f.device.partition(name, slot).unwrap()).unwrap()
}

fn record(f: &Fixture, slot: Slot) -> Option<SlotRecord> {
    UpdateState::load(&f.device.state_dir)
        .unwrap()
        .get(slot)
        .cloned()
}

fn pi_bundle(f: &Fixture, version: &str, rootfs: &[u8], boot: &[u8]) -> Vec<u8> {
    signed_bundle(
        &f.key,
        version,
        None,
        vec![
            plain(PayloadName::Rootfs, rootfs),
            plain(PayloadName::Boot, boot),
        ],
    )
}

/// Stages 0.2.0 into slot B and arms it: what `update apply --reboot` leaves before the reboot.
fn staged_and_armed(f: &Fixture) -> (Vec<u8>, Vec<u8>) {
    let rootfs = noise(11, 300_000);
    let boot = noise(12, 200_000);
    assert!(matches!(
        apply(&f.device),
        Err(UpdateError::NotStaged { slot: Slot::B })
    ));
    let report = stage(&pi_bundle(f, "0.2.0", &rootfs, &boot)[..], &f.device).unwrap();
    assert_eq!(report.target_slot, Slot::B);
    assert_eq!(
        record(f, Slot::B),
        Some(SlotRecord::Staged {
            version: "0.2.0".into()
        })
    );
    assert_eq!(apply(&f.device).unwrap(), Slot::B);
    assert_eq!(record(f, Slot::B), Some(trying("0.2.0")));
    (rootfs, boot)
}

#[test]
fn a_pi_stages_both_partitions_of_the_other_slot_and_commits_a_good_trial() {
    let mut f = pi_fixture();
    let factory_boot = partition(&f, PayloadName::Boot, Slot::A);
    let factory_root = partition(&f, PayloadName::Rootfs, Slot::A);
    let committed_a = autoboot(&f);

    let (rootfs, boot) = staged_and_armed(&f);
    let boot_b = partition(&f, PayloadName::Boot, Slot::B);
    let root_b = partition(&f, PayloadName::Rootfs, Slot::B);
    assert_eq!(&boot_b[..boot.len()], &boot[..]);
    assert_eq!(&root_b[..rootfs.len()], &rootfs[..]);
    // The running slot and the firmware's file are as they were: the trial
    // is armed by the reboot's argument, not by a file.
    assert_eq!(partition(&f, PayloadName::Boot, Slot::A), factory_boot);
    assert_eq!(partition(&f, PayloadName::Rootfs, Slot::A), factory_root);
    assert_eq!(autoboot(&f), committed_a);

    // The firmware starts partition 3 on trial; the service reconciles.
    power_on(&mut f, 3, true);
    f.device.release.version = "0.2.0".parse().unwrap();
    reconcile_on_boot(&f.device);
    assert_eq!(record(&f, Slot::B), Some(trying("0.2.0")));
    assert_eq!(
        record(&f, Slot::A),
        None,
        "the committed slot's record is not touched by the trial"
    );

    // The health checks pass: committed in autoboot.txt and in the record.
    assert!(mark_good(&f.device).unwrap());
    assert_eq!(
        Autoboot::parse(&autoboot(&f)).unwrap().committed,
        Slot::B,
        "{}",
        autoboot(&f)
    );
    assert_eq!(
        record(&f, Slot::B),
        Some(SlotRecord::Installed {
            version: "0.2.0".into()
        })
    );
}

#[test]
fn a_pi_trial_that_does_not_commit_is_a_recorded_failure_on_the_committed_slot() {
    let mut f = pi_fixture();
    staged_and_armed(&f);
    // The trial failed its health checks (or crashed, or its reboot was
    // cut): the next power-on starts the committed slot A again.
    power_on(&mut f, 2, false);
    reconcile_on_boot(&f.device);
    match record(&f, Slot::B) {
        Some(SlotRecord::Bad { version, reason }) => {
            assert_eq!(version, "0.2.0");
            assert!(reason.contains("fell back"), "{reason}");
        }
        other => panic!("slot b: {other:?}"),
    }
    let st = UpdateState::load(&f.device.state_dir).unwrap();
    assert_eq!(st.failed.len(), 1);
    assert_eq!(st.failed[0].version, "0.2.0");
    // A failed trial is not armed again by `apply`.
    assert!(matches!(
        apply(&f.device),
        Err(UpdateError::NotStaged { slot: Slot::B })
    ));
}

#[test]
fn a_pi_delta_takes_its_boot_base_from_the_running_boot_slot() {
    let f = pi_fixture();
    let old_root = noise(1, 400_000);
    let mut slot = vec![0u8; 1 << 20];
    slot[..old_root.len()].copy_from_slice(&old_root);
    std::fs::write(
        f.device.partition(PayloadName::Rootfs, Slot::A).unwrap(),
        &slot,
    )
    .unwrap();
    let old_boot = partition(&f, PayloadName::Boot, Slot::A);
    let mut new_root = old_root.clone();
    new_root[1000..1100].fill(7);
    let mut new_boot = old_boot.clone();
    new_boot[5000..5010].fill(1);

    let b = delta_bundle(
        &f.key,
        "0.2.0",
        "0.1.0",
        &[
            (PayloadName::Rootfs, new_root.clone()),
            (PayloadName::Boot, new_boot.clone()),
        ],
        &[old_root.clone(), old_boot.clone()],
    );
    assert!(b.len() < 20_000, "a delta of {} bytes", b.len());
    stage(&b[..], &f.device).unwrap();
    assert_eq!(
        &partition(&f, PayloadName::Boot, Slot::B)[..new_boot.len()],
        &new_boot[..]
    );
    assert_eq!(
        &partition(&f, PayloadName::Rootfs, Slot::B)[..new_root.len()],
        &new_root[..]
    );

    // Against another boot slot than the one it was made from: refused
    // before slot B is touched.
    let before = partition(&f, PayloadName::Boot, Slot::B);
    let other = delta_bundle(
        &f.key,
        "0.3.0",
        "0.1.0",
        &[
            (PayloadName::Rootfs, new_root.clone()),
            (PayloadName::Boot, new_boot.clone()),
        ],
        &[old_root, noise(3, old_boot.len())],
    );
    let e = stage(&other[..], &f.device).unwrap_err().to_string();
    assert!(
        e.contains("boot payload") && e.contains("running slot a's boot"),
        "{e}"
    );
    assert_eq!(partition(&f, PayloadName::Boot, Slot::B), before);
}

#[test]
fn a_uefi_bundle_is_refused_by_a_pi_before_anything_is_written() {
    let f = pi_fixture();
    let before = partition(&f, PayloadName::Boot, Slot::B);
    let e = stage(
        &bundle(&f.key, "0.2.0", &noise(4, 1000), false)[..],
        &f.device,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("x86_64-uefi") && e.contains("rpi4"), "{e}");
    assert_eq!(partition(&f, PayloadName::Boot, Slot::B), before);
    assert_eq!(record(&f, Slot::B), None);
}
