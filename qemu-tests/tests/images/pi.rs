//! Raspberry Pi 4 images under QEMU `-M raspi4b`, through the Pi launcher
//! (`basalt::pi_launch`), which does the Pi firmware's part on each power-on:
//! `autoboot.txt` and the tryboot flag pick the boot partition.
//!
//! Each test boots the debug image (a root shell on the console), built
//! once per run as the raw `.img` only.

use basalt::build::SpecSource;
use basalt::bundle_cmd;
use basalt::pi_launch::PiMachine;
use basalt::qemu::Vm;
use basalt_formats::bundle::PayloadName;
use basalt_formats::tryboot::Autoboot;
use basalt_formats::{BoardId, Slot};
use qemu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The default appliance for `rpi4` at `version` with the `debug-console`
/// overlay, without the compressed images (xz alone would take minutes).
fn debug_image_rpi4_at(version: &str) -> Built {
    cached_image(&format!("debug-rpi4-raw-{version}"), || {
        let dir = work_dir().join(format!("specs/debug-rpi4-raw-{version}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("spec dir");
        let spec = basalt::assets::DEFAULT_SPEC
            .replace("  - base\n", "  - base\n  - debug-console\n")
            .replace("version: 0.1.0", &format!("version: {version}"));
        assert!(spec.contains("debug-console") && spec.contains(&format!("version: {version}")));
        std::fs::write(dir.join("spec.yaml"), spec).expect("spec file");
        let mut opts = options(
            BoardId::Rpi4,
            SpecSource::File(dir.join("spec.yaml")),
            dir.join("out"),
        );
        opts.compressed = false;
        build_image(&opts)
    })
}

fn debug_image_rpi4() -> Built {
    debug_image_rpi4_at("0.1.0")
}

/// `image` written to `card` by `basalt flash` with `user_data` as its cloud-config.
fn flash_card(image: &Path, card: &Path, user_data: &str) {
    let yaml = card.with_extension("yaml");
    std::fs::write(&yaml, user_data).unwrap();
    let _ = std::fs::remove_file(card);
    let mut opts = basalt::flash::FlashOptions::new(image, card);
    opts.board = Some(BoardId::Rpi4);
    opts.cloud_config = Some(yaml);
    basalt::flash::flash(&opts).unwrap_or_else(|e| panic!("basalt flash: {e:#}"));
}

/// Copies `file` to the top of the card's data partition (ext4, partition
/// 7) as `name`, as someone would before putting the card in: the Pi 4
/// under QEMU has no network and no USB.
fn put_on_data_partition(card: &Path, file: &Path, name: &str) {
    let table = basalt::pi_launch::read_table(card).unwrap();
    let data = table
        .partition(basalt_formats::layout::RPI_DATA_PARTITION)
        .expect("a data partition");
    let fs = format!("{}?offset={}", card.display(), data.first_lba * 512);
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} {name}", file.display()))
        .arg(&fs)
        .output()
        .expect("debugfs (e2fsprogs)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("rror"),
        "debugfs write {}: {err}",
        file.display()
    );
}

/// A Raspberry Pi 4 with `image` on its SD card and its state in `work_dir()/vms/<name>`.
fn pi(image: &Path, name: &str) -> PiMachine {
    let cfg = vm_config(BoardId::Rpi4, image, name);
    PiMachine::prepare(&cfg).unwrap_or_else(|e| panic!("preparing the Pi: {e:#}"))
}

/// Powers the Pi on and checks the partition the firmware chose.
fn power_on(pi: &PiMachine, partition: u32, tryboot: bool) -> Vm {
    let (vm, choice) = pi
        .power_on()
        .unwrap_or_else(|e| panic!("powering the Pi on: {e:#}"));
    assert_eq!(
        (choice.partition, choice.tryboot),
        (partition, tryboot),
        "the firmware chose {choice:?}"
    );
    vm
}

/// Waits for the agent's ready line, which must name `slot`, and returns it.
fn wait_ready(vm: &mut Vm, slot: Slot) -> String {
    let line = vm
        .wait_for(READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(line.contains(&format!("board=rpi4 slot={slot}")), "{line}");
    line
}

/// The slot `autoboot.txt` on the SD card commits (the VM must be off).
fn committed(pi: &PiMachine) -> Slot {
    let text = pi.autoboot().unwrap_or_else(|e| panic!("{e:#}"));
    Autoboot::parse(&text)
        .unwrap_or_else(|e| panic!("autoboot.txt: {e}:\n{text}"))
        .committed
}

/// Waits for QEMU to end after a guest restart and returns whether the
/// restart armed a tryboot (the launcher sets the flag if so).
fn restarted(pi: &PiMachine, vm: &mut Vm) -> bool {
    vm.wait_exit(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e:#}; the console's end:\n{}", tail(&vm.console())));
    let console = vm.console();
    assert!(
        console.contains("reboot: Restarting system"),
        "QEMU ended without a guest restart:\n{}",
        tail(&console)
    );
    pi.after_exit(&console).unwrap()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn rpi4_stages_a_delta_into_slot_b_and_commits_its_trial() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting rpi4");
        return;
    }
    let work = work_dir().join("pi-update");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let release = bundle_cmd::keygen(&work.join("release")).unwrap();
    let (v1, v2) = (debug_image_rpi4(), debug_image_rpi4_at("0.2.0"));
    let delta = bundle_cmd::bundle(&bundle_cmd::BundleOptions {
        image: v2.image.clone(),
        key: work.join("release.key"),
        min_version: None,
        out: Some(work.join("v2.basalt")),
        delta_from: Some(v1.image.clone()),
        created: 1_700_000_000,
    })
    .unwrap_or_else(|e| panic!("delta bundle: {e:#}"));
    let names: Vec<PayloadName> = delta.manifest.payloads.iter().map(|p| p.name).collect();
    assert_eq!(names, [PayloadName::Rootfs, PayloadName::Boot]);
    let card = work.join("card.img");
    flash_card(
        &v1.image,
        &card,
        &format!(
            "#cloud-config\nbasalt:\n  version: 1\n  update:\n    channel: http://updates.invalid/\n    trusted_keys: [\"{}\"]\n",
            release.public_key
        ),
    );
    put_on_data_partition(&card, &delta.bundle, "v2.basalt");
    let pi = pi(&card, "rpi4-update");
    let (t, long) = (Duration::from_secs(120), Duration::from_secs(1200));

    // Power-on 1: the committed slot A runs 0.1.0.
    let mut vm = power_on(&pi, 2, false);
    let line = wait_ready(&mut vm, Slot::A);
    assert!(line.contains("version=0.1.0"), "{line}");
    let console = vm.console();
    assert!(
        console.contains("disk /dev/mmcblk0: root /dev/mmcblk0p5 (root-a), data /dev/mmcblk0p7"),
        "{}",
        tail(&console)
    );
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@basalt", t))
        .unwrap();
    let fw = vm
        .run_ok(
            "od -An -tx1 /proc/device-tree/chosen/bootloader/partition /proc/device-tree/chosen/bootloader/tryboot",
            t,
        )
        .unwrap();
    assert_eq!(
        fw.split_whitespace().collect::<Vec<_>>(),
        ["00", "00", "00", "02", "00", "00", "00", "00"],
        "{fw}"
    );
    let status = vm.run_ok("basalt-agent update status", t).unwrap();
    assert!(status.contains("Committed { slot: A }"), "{status}");
    let (code, refused) = vm.run("basalt-agent update apply --reboot", t).unwrap();
    assert!(code != 0 && refused.contains("nothing staged"), "{refused}");

    // Stage the delta: slot B's root and boot partitions rebuilt from A's,
    // read back against the signed digests; slot A's boot partition is
    // still the image's (the delta's base).
    let staged = std::time::Instant::now();
    let out = vm
        .run_ok("basalt-agent update stage /data/v2.basalt", long)
        .unwrap();
    eprintln!(
        "rpi4: delta staged in {:.1} s under QEMU",
        staged.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("delta bundle from 0.1.0: every base matches the running slot a")
            && out.contains("staged 0.2.0 in slot b"),
        "{out}"
    );
    let boot = &delta.manifest.payloads[1];
    let base = boot.base.expect("a delta payload");
    let sums = vm
        .run_ok(
            &format!(
                "head -c {} /dev/mmcblk0p2 | sha256sum; head -c {} /dev/mmcblk0p3 | sha256sum",
                base.size, boot.size
            ),
            long,
        )
        .unwrap();
    let base = base.sha256.to_string();
    let lines: Vec<&str> = sums.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with(&base)
            && lines[1].starts_with(&boot.sha256.to_string()),
        "slot A's boot partition should be the image's ({base}), slot B's the bundle's ({}):\n{sums}",
        boot.sha256
    );

    // `update apply --reboot` restarts with "0 tryboot".
    vm.send("basalt-agent update apply --reboot\n").unwrap();
    assert!(
        restarted(&pi, &mut vm),
        "the restart did not ask for tryboot"
    );

    // Power-on 2: a trial of slot B, running 0.2.0, which passes its health
    // checks and is committed.
    let mut vm = power_on(&pi, 3, true);
    let line = wait_ready(&mut vm, Slot::B);
    assert!(line.contains("version=0.2.0"), "{line}");
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@basalt", t))
        .unwrap();
    let status = vm
        .run_ok(
            "systemctl start basalt-health.service; basalt-agent update status",
            Duration::from_secs(300),
        )
        .unwrap();
    assert!(status.contains("Committed { slot: B }"), "{status}");
    let json = vm.run_ok("basalt-agent update status --json", t).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&json[json.find('{').expect("JSON")..]).unwrap();
    assert_eq!(
        json["state"]["b"],
        serde_json::json!({"state": "installed", "version": "0.2.0"}),
        "{json:#}"
    );
    vm.run_ok("sync", t).unwrap();
    vm.kill();
    assert_eq!(committed(&pi), Slot::B);

    // Power-on 3: slot B is the committed slot now.
    let mut vm = power_on(&pi, 3, false);
    vm.wait_for("basalt-initrd: booting slot b", t)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vm.kill();
}

#[test]
fn rpi4_failed_trial_of_b_returns_to_a() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting rpi4");
        return;
    }
    let built = debug_image_rpi4();
    // The card, written by `basalt flash` with a cloud-config whose health check fails.
    let dir = work_dir().join("pi");
    std::fs::create_dir_all(&dir).unwrap();
    let card = dir.join("failing-health.img");
    flash_card(
        &built.image,
        &card,
        "#cloud-config\nbasalt:\n  version: 1\n  health:\n    checks:\n      - name: always-fails\n        command: [/bin/false]\n",
    );

    let pi = pi(&card, "rpi4-failed-trial");
    // As `update apply --reboot` leaves it (the test above goes through
    // that): slot A committed, the firmware's tryboot flag set. Slot B
    // holds the image's own boot and root partitions, the same as A's.
    pi.set_tryboot(true).unwrap();

    // Power-on 1: the trial of slot B fails its health check and restarts, without tryboot.
    let mut vm = power_on(&pi, 3, true);
    wait_ready(&mut vm, Slot::B);
    assert!(
        !restarted(&pi, &mut vm),
        "the failed trial asked for tryboot"
    );
    assert_eq!(committed(&pi), Slot::A);

    // Power-on 2: back to the committed slot A, whose journal has the trial's verdict.
    let mut vm = power_on(&pi, 2, false);
    wait_ready(&mut vm, Slot::A);
    let t = Duration::from_secs(120);
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@basalt", t))
        .unwrap();
    let journal = vm
        .run_ok(
            "journalctl -b -1 --no-pager -o cat -u basalt-health.service",
            t,
        )
        .unwrap();
    assert!(
        journal.contains("FAIL always-fails")
            && journal.contains("the trial of slot b failed its health checks"),
        "{journal}"
    );
    let status = vm.run_ok("basalt-agent update status", t).unwrap();
    assert!(status.contains("Committed { slot: A }"), "{status}");
    vm.kill();
}
