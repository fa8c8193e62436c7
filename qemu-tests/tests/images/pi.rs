//! Raspberry Pi 4 images under QEMU `-M raspi4b`, through the Pi launcher
//! (`basalt::pi_launch`), which does the Pi firmware's part on each power-on:
//! `autoboot.txt` and the tryboot flag pick the boot partition.
//!
//! Each test boots the debug image (a root shell on the console), built
//! once per run as the raw `.img` only, at most three times.

use basalt::build::SpecSource;
use basalt::pi_launch::PiMachine;
use basalt::qemu::Vm;
use basalt_formats::tryboot::Autoboot;
use basalt_formats::{BoardId, Slot};
use qemu_tests::*;
use std::path::Path;
use std::time::Duration;

/// The default appliance for `rpi4` with the `debug-console` overlay,
/// without the compressed images (xz alone would take minutes).
fn debug_image_rpi4() -> Built {
    cached_image("debug-rpi4-raw", || {
        let dir = work_dir().join("specs/debug-rpi4-raw");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("spec dir");
        let spec =
            basalt::assets::DEFAULT_SPEC.replace("  - base\n", "  - base\n  - debug-console\n");
        assert!(spec.contains("debug-console"));
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

fn wait_ready(vm: &mut Vm, slot: Slot) {
    let line = vm
        .wait_for(READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(line.contains(&format!("board=rpi4 slot={slot}")), "{line}");
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
fn rpi4_boots_slot_a_and_commits_a_trial_of_b() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting rpi4");
        return;
    }
    let built = debug_image_rpi4();
    let pi = pi(&built.image, "rpi4-tryboot");
    let t = Duration::from_secs(120);

    // Power-on 1: the committed slot A.
    let mut vm = power_on(&pi, 2, false);
    wait_ready(&mut vm, Slot::A);
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

    // `update apply --reboot` restarts with "0 tryboot".
    vm.send("basalt-agent update apply --reboot\n").unwrap();
    assert!(
        restarted(&pi, &mut vm),
        "the restart did not ask for tryboot"
    );

    // Power-on 2: a trial of slot B, which passes its health checks and is committed.
    let mut vm = power_on(&pi, 3, true);
    wait_ready(&mut vm, Slot::B);
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
    let user_data = dir.join("failing-health.yaml");
    std::fs::write(
        &user_data,
        "#cloud-config\nbasalt:\n  version: 1\n  health:\n    checks:\n      - name: always-fails\n        command: [/bin/false]\n",
    )
    .unwrap();
    let card = dir.join("failing-health.img");
    let _ = std::fs::remove_file(&card);
    let mut opts = basalt::flash::FlashOptions::new(&built.image, &card);
    opts.board = Some(BoardId::Rpi4);
    opts.cloud_config = Some(user_data);
    basalt::flash::flash(&opts).unwrap_or_else(|e| panic!("basalt flash: {e:#}"));

    let pi = pi(&card, "rpi4-failed-trial");
    // As `update apply --reboot` leaves it (the test above goes through that):
    // slot A committed, the firmware's tryboot flag set.
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
