//! The installer ISO: `basalt iso` from the default image, booted as a CD
//! beside an empty disk, installs itself unattended (cloud-config
//! `basalt.install: {device: auto}`), reboots, and the installed system
//! comes up from the disk.

use basalt_formats::BoardId;
use qemu_tests::*;
use std::time::{Duration, Instant};

#[test]
fn x86_64_iso_installs_onto_an_empty_disk_and_boots_it() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the installer ISO");
        return;
    }
    let started = Instant::now();
    let built = default_image(BoardId::X86_64Uefi);
    let iso = built.dir.join("installer.iso");
    let summary = basalt::iso::make(&built.image, &iso).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        summary.live_cmdline.starts_with("basalt.live "),
        "{summary:?}"
    );
    eprintln!("ISO made in {:.1} s", started.elapsed().as_secs_f64());

    // An empty 4 GiB disk, the ISO as a SCSI CD, cloud-config on a CIDATA volume.
    let state = work_dir().join("vms").join("x86_64-iso-disk");
    std::fs::create_dir_all(&state).unwrap();
    let blank = state.join("blank.img");
    let f = std::fs::File::create(&blank).unwrap();
    f.set_len(4 << 30).unwrap();
    drop(f);
    let mut cfg = vm_config(BoardId::X86_64Uefi, &blank, "x86_64-iso");
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let cidata = cfg.state_dir.join("cidata.img");
    cidata_image(
        &cidata,
        "#cloud-config\nhostname: installed-1\nbasalt:\n  version: 1\n  install: {device: auto, reboot: true}\n",
        "instance-id: iid-iso-1\n",
    );
    cfg.extra_args = extra_disk("cidata", &cidata);
    cfg.extra_args.extend(basalt::qemu::cdrom(&iso));

    let mut vm = basalt::qemu::Vm::start(&cfg).unwrap_or_else(|e| panic!("starting QEMU: {e:#}"));
    let live = vm
        .wait_for(READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(live.contains("slot=live"), "{live}");
    eprintln!(
        "live system ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (i, line) = vm
        .wait_for_any(
            &["basalt-agent: installed", "basalt-agent: install failed"],
            Duration::from_secs(900),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(i, 0, "{line}");
    assert!(line.contains("onto /dev/vda, rebooting"), "{line}");
    eprintln!("installed after {:.1} s", started.elapsed().as_secs_f64());

    let mark = vm.mark();
    let ready = vm
        .wait_for_since(mark, READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(ready.contains("slot=a"), "{ready}");
    assert!(ready.contains("hostname=installed-1"), "{ready}");
    let console = vm.console();
    let after = &console[mark.min(console.len())..];
    assert!(
        after.contains("data partition grown"),
        "the installed system grows its data partition to the 4 GiB disk:\n{after}"
    );
    assert!(!after.contains("live system"), "{after}");
    eprintln!(
        "installed system ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    vm.kill();
}
