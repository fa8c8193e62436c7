//! Raspberry Pi 4 images under QEMU `-M raspi4b`, started by the launcher
//! that does the Pi firmware's part (autoboot.txt, the tryboot flag,
//! `/chosen/bootloader`): a normal boot of slot A, a trial of slot B that
//! fails its health check and comes back to A, and a trial of B that
//! commits. One SD card, one sequence of boots, to keep the test short.

use basalt::pi_launch::PiMachine;
use basalt::qemu::Vm;
use basalt_formats::tryboot::Autoboot;
use basalt_formats::{BoardId, Slot};
use qemu_tests::*;
use std::time::{Duration, Instant};

const CMD: Duration = Duration::from_secs(120);

/// `/chosen/bootloader/<name>` as the guest sees it, as a number.
fn chosen(vm: &mut Vm, name: &str) -> u32 {
    let out = vm
        .run_ok(
            &format!("od -An -tu1 /proc/device-tree/chosen/bootloader/{name} | tr -s ' ' ','"),
            CMD,
        )
        .unwrap();
    out.trim()
        .trim_matches(',')
        .split(',')
        .fold(0u32, |acc, b| {
            (acc << 8) | b.trim().parse::<u32>().unwrap_or(0)
        })
}

fn committed(pi: &PiMachine) -> Slot {
    let text = pi.autoboot().unwrap();
    Autoboot::parse(&text)
        .unwrap_or_else(|e| panic!("autoboot.txt on the SD card: {e}\n{text}"))
        .committed
}

/// Waits for the guest to restart (QEMU runs with -no-reboot) and lets the
/// launcher see the reboot argument. Returns whether it asked for tryboot.
fn wait_restart(pi: &PiMachine, vm: &mut Vm) -> bool {
    let status = vm
        .wait_exit(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}; the console's end:\n{}", tail(&vm.console())));
    assert!(status.success(), "QEMU exited with {status}");
    pi.after_exit(&vm.console()).unwrap()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
#[ignore = "under QEMU 10 -M raspi4b, Debian's 6.1 kernel started by the launcher reaches the basalt initrd, but CPU 0 then stalls (soft lockup) and no SD card appears, so the slots are never reached; see README, Raspberry Pi, Under QEMU"]
fn rpi4_tryboot_a_b() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting");
        return;
    }
    let started = Instant::now();
    let built = debug_image(BoardId::Rpi4);
    let pi = pi_machine(BoardId::Rpi4, &built.image, "rpi4-tryboot");
    assert_eq!(committed(&pi), Slot::A);

    // 1. A normal boot starts slot A, and the firmware says so.
    let (mut vm, choice, line) = pi_boot_to_ready(&pi);
    assert!(line.contains("board=rpi4 slot=a"), "{line}");
    assert_eq!((choice.partition, choice.tryboot), (2, false));
    assert_eq!(chosen(&mut vm, "partition"), 2);
    assert_eq!(chosen(&mut vm, "tryboot"), 0);
    let status = vm.run_ok("basalt-agent update status", CMD).unwrap();
    assert!(
        status.contains("tryboot: Committed { slot: A }"),
        "{status}"
    );
    eprintln!("slot A up after {} s", started.elapsed().as_secs());

    // 2. A trial of slot B that fails its health check: B's cmdline.txt
    // carries a cloud-config whose check fails. The trial reboots, the
    // firmware's flag is spent, and slot A starts again, still committed.
    let failing = "#cloud-config\nbasalt:\n  version: 1\n  health:\n    checks:\n      - name: always-fails\n        command: [/bin/false]\n";
    let b64 = base64url(failing.as_bytes());
    vm.run_ok(
        &format!(
            "d=$(sed -n 's/.*\"disk\": *\"\\([^\"]*\\)\".*/\\1/p' /run/basalt/boot.json) && mkdir -p /mnt/b && mount ${{d}}p3 /mnt/b && cp /mnt/b/cmdline.txt /mnt/b/cmdline.good && printf '%s basalt.cloud-config={b64}\\n' \"$(cat /mnt/b/cmdline.good)\" > /mnt/b/cmdline.txt && umount /mnt/b"
        ),
        CMD,
    )
    .unwrap();
    vm.send("basalt-agent update apply --reboot\n").unwrap();
    assert!(
        wait_restart(&pi, &mut vm),
        "the guest did not restart with tryboot"
    );
    let (mut vm, choice, line) = pi_boot_to_ready(&pi);
    assert_eq!((choice.partition, choice.tryboot), (3, true));
    assert!(line.contains("slot=b"), "{line}");
    // The health check fails and reboots without tryboot.
    assert!(
        !wait_restart(&pi, &mut vm),
        "a failed trial must not re-arm tryboot"
    );
    assert_eq!(committed(&pi), Slot::A);
    let (mut vm, choice, line) = pi_boot_to_ready(&pi);
    assert_eq!((choice.partition, choice.tryboot), (2, false));
    assert!(line.contains("slot=a"), "{line}");
    eprintln!(
        "failed trial back on slot A after {} s",
        started.elapsed().as_secs()
    );

    // 3. A trial of slot B that passes and commits by replacing autoboot.txt.
    vm.run_ok(
        "d=$(sed -n 's/.*\"disk\": *\"\\([^\"]*\\)\".*/\\1/p' /run/basalt/boot.json) && mount ${d}p3 /mnt/b && mv /mnt/b/cmdline.good /mnt/b/cmdline.txt && umount /mnt/b",
        CMD,
    )
    .unwrap();
    vm.send("basalt-agent update apply --reboot\n").unwrap();
    assert!(wait_restart(&pi, &mut vm));
    let (mut vm, choice, line) = pi_boot_to_ready(&pi);
    assert_eq!((choice.partition, choice.tryboot), (3, true));
    assert!(line.contains("slot=b"), "{line}");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let s = vm.run_ok("basalt-agent update status", CMD).unwrap();
        if s.contains("tryboot: Committed { slot: B }") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trial was not committed:\n{s}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    vm.run_ok("sync", CMD).unwrap();
    assert_eq!(committed(&pi), Slot::B);
    vm.send("systemctl reboot\n").unwrap();
    assert!(!wait_restart(&pi, &mut vm));
    let (_vm, choice, line) = pi_boot_to_ready(&pi);
    assert_eq!((choice.partition, choice.tryboot), (3, false));
    assert!(line.contains("slot=b"), "{line}");
    eprintln!(
        "committed slot B up after {} s",
        started.elapsed().as_secs()
    );
}

fn base64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
