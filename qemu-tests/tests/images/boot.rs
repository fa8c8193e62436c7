//! Boot the default appliance under QEMU (TCG) with UEFI firmware.

use basalt_formats::BoardId;
use qemu_tests::*;

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
