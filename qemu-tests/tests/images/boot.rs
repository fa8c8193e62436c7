//! Boot the default appliance under QEMU (TCG) with UEFI firmware.

use basalt::build::SpecSource;
use basalt_formats::BoardId;
use qemu_tests::*;
use std::time::Duration;

#[test]
fn x86_64_boots_grows_data_and_boots_again() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting x86_64-uefi");
        return;
    }
    let built = default_image(BoardId::X86_64Uefi);
    let mut cfg = vm_config(BoardId::X86_64Uefi, &built.image, "x86_64-first-boot");
    // A 3 GiB "SD card" for a 1.8 GiB image: the data partition must grow into it.
    cfg.disk_size = Some(3 << 30);
    let (mut vm, line) = boot_to_ready(&cfg);
    assert!(
        line.contains("name=basalt-appliance version=0.1.0 board=x86_64-uefi slot=a"),
        "{line}"
    );
    let console = vm.console();
    assert!(
        console.contains("basalt-initrd: data partition grown from"),
        "no growth:\n{console}"
    );
    assert!(
        console.contains("basalt-initrd: data file system grown to"),
        "no fs growth:\n{console}"
    );
    assert!(
        !console.contains("Failed to rename"),
        "systemd-boot could not count the boot:\n{console}"
    );
    vm.kill();

    // The same machine again (power cut, then power on): nothing left to grow.
    cfg.keep_state = true;
    let (vm, line) = boot_to_ready(&cfg);
    assert!(line.contains("slot=a"), "{line}");
    let console = vm.console();
    assert!(!console.contains("grown"), "grew twice:\n{console}");
}

#[test]
fn arm64_boots() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting arm64-uefi");
        return;
    }
    let built = default_image(BoardId::Arm64Uefi);
    let cfg = vm_config(BoardId::Arm64Uefi, &built.image, "arm64-first-boot");
    let (vm, line) = boot_to_ready(&cfg);
    assert!(
        line.contains("name=basalt-appliance version=0.1.0 board=arm64-uefi slot=a"),
        "{line}"
    );
    let console = vm.console();
    assert!(
        !console.contains("Failed to rename"),
        "systemd-boot could not count the boot:\n{console}"
    );
}

#[test]
fn erofs_root_boots() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the erofs image");
        return;
    }
    let dir = work_dir().join("specs/erofs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = basalt::assets::DEFAULT_SPEC.replace("type: squashfs", "type: erofs");
    assert!(spec.contains("type: erofs"));
    std::fs::write(dir.join("spec.yaml"), spec).unwrap();
    let built = build_image(&options(
        BoardId::X86_64Uefi,
        SpecSource::File(dir.join("spec.yaml")),
        dir.join("out"),
    ));
    assert_eq!(
        built.outcome.record.rootfs_type,
        basalt_formats::spec::RootfsType::Erofs
    );
    let cfg = vm_config(BoardId::X86_64Uefi, &built.image, "x86_64-erofs");
    let (vm, line) = boot_to_ready(&cfg);
    assert!(line.contains("slot=a"), "{line}");
    assert!(
        vm.console().contains("booting slot a (erofs)"),
        "{}",
        vm.console()
    );
}

#[test]
fn x86_64_mounts_identity_and_boot_blessing() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the x86_64 debug image");
        return;
    }
    let built = debug_image(BoardId::X86_64Uefi);
    let mut cfg = vm_config(BoardId::X86_64Uefi, &built.image, "x86_64-debug");
    let (mut vm, _) = boot_to_ready(&cfg);
    let t = std::time::Duration::from_secs(60);
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@basalt", t))
        .unwrap();

    let root = vm.run_ok("findmnt -no FSTYPE,OPTIONS /", t).unwrap();
    assert!(root.contains("squashfs") && root.contains("ro"), "{root}");
    let etc = vm.run_ok("findmnt -no FSTYPE /etc", t).unwrap();
    assert!(etc.contains("overlay"), "{etc}");
    let var = vm.run_ok("findmnt -no SOURCE /var", t).unwrap();
    assert!(var.contains("/dev/vda4[/var]"), "{var}");
    let machine_id = vm
        .run_ok("cat /etc/machine-id", t)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(machine_id.len(), 32, "{machine_id:?}");

    // SSH host keys are made on the device, not shipped in the image.
    // (RSA key generation under emulation takes a while: wait for the unit.)
    let keys = vm
        .run_ok("systemctl start basalt-ssh-keygen.service; ls /etc/ssh/", t)
        .unwrap();
    assert!(keys.contains("ssh_host_ed25519_key.pub"), "{keys}");

    let status = vm.run_ok("basalt-agent status --json", t).unwrap();
    let json_start = status.find('{').expect("JSON in status output");
    let st: serde_json::Value = serde_json::from_str(status[json_start..].trim()).unwrap();
    assert_eq!(st["boot"]["slot"], "a", "{st}");
    assert_eq!(st["release"]["board"], "x86_64-uefi", "{st}");

    // systemd-bless-boot makes the counted entry permanent once boot-complete.target is reached.
    let blessed = vm
        .run_ok(
            "for i in $(seq 60); do ls /efi/loader/entries | grep -qx basalt-a.conf && break; sleep 1; done; ls /efi/loader/entries",
            std::time::Duration::from_secs(90),
        )
        .unwrap();
    assert!(
        blessed.contains("basalt-a.conf"),
        "slot A was not blessed:\n{blessed}"
    );
    // The network is up by DHCP (QEMU's user network hands out 10.0.2.15).
    let addr = vm
        .run_ok(
            "for i in $(seq 60); do ip -4 -o addr show scope global | grep -q inet && break; sleep 1; done; ip -4 -o addr show scope global",
            Duration::from_secs(90),
        )
        .unwrap();
    assert!(addr.contains("10.0.2.15"), "{addr}");
    let failed = vm
        .run_ok("systemctl --failed --no-legend --plain", t)
        .unwrap();
    assert!(failed.trim().is_empty(), "failed units:\n{failed}");

    // /etc changes persist across a power cut and reboot.
    vm.run_ok("echo kept > /etc/basalt-persist-test && sync", t)
        .unwrap();
    vm.kill();
    cfg.keep_state = true;
    let (mut vm, _) = boot_to_ready(&cfg);
    vm.wait_for("login:", t)
        .or_else(|_| vm.wait_for("root@basalt", t))
        .unwrap();
    assert_eq!(
        vm.run_ok("cat /etc/basalt-persist-test", t).unwrap().trim(),
        "kept"
    );
    assert_eq!(
        vm.run_ok("cat /etc/machine-id", t).unwrap().trim(),
        machine_id
    );
}
