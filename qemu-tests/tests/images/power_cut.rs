//! Power cuts during an update: QEMU is killed (SIGKILL, so the guest
//! flushes nothing) at a random moment while `update stage` writes the
//! inactive slot, while `update apply` arms the boot loader, and during the
//! first boot of the new version. After every cut the same disk and EFI
//! variables boot again and must reach the ready line on a good slot: the
//! old version with its slot committed, or the new one, which the health
//! flow then commits. A slot that is not wholly written never gets a boot
//! entry, the update completes in the end, and the data partition keeps the
//! device's identity and configuration.
//!
//! `BASALT_POWER_CUT_SEED` replays a run (the seed is printed);
//! `BASALT_POWER_CUTS` sets how many cuts (default 3, one per phase; more
//! run further sequences on fresh VMs). `scripts/power-cut.sh N` runs N.

use crate::update::{make_bundle, stick, version_image};
use basalt::bundle_cmd;
use basalt::qemu::{Vm, VmConfig};
use basalt_formats::bundle::PayloadName;
use basalt_formats::BoardId;
use qemu_tests::*;
use std::time::{Duration, Instant};

/// A small seeded generator (SplitMix64): the same seed cuts at the same places.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: not a whole number: {e}")),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stage,
    Apply,
    FirstBoot,
}

const PHASES: [Phase; 3] = [Phase::Stage, Phase::Apply, Phase::FirstBoot];

/// The update this test installs, and what the device must still hold.
struct Fixture {
    cfg: VmConfig,
    rootfs_size: u64,
    rootfs_sha256: String,
}

/// What a boot came up as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    Old,
    New,
}

fn overlay_len(cfg: &VmConfig) -> u64 {
    std::fs::metadata(cfg.state_dir.join("disk.qcow2"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn status_json(vm: &mut Vm) -> serde_json::Value {
    let out = vm
        .run_ok("basalt-agent update status --json", Duration::from_secs(60))
        .unwrap();
    serde_json::from_str(&out[out.find('{').expect("JSON")..]).unwrap()
}

/// Slot b's loader entry, if it has one.
fn entry_b(st: &serde_json::Value) -> Option<String> {
    st["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["slot"] == "b")
        .map(|e| e["file"].as_str().expect("file").to_string())
}

/// SHA-256 of slot b's first `len` bytes, read on the device.
fn slot_b_sha256(vm: &mut Vm, len: u64) -> String {
    let out = vm
        .run_ok(
            &format!("head -c {len} /dev/vda3 | sha256sum"),
            Duration::from_secs(300),
        )
        .unwrap();
    out.split_whitespace().next().expect("digest").to_string()
}

/// Boots and waits for the ready line; checks it is a good slot and the
/// update state agrees with the boot entries.
fn check_boot(vm: &mut Vm, fx: &Fixture, mark: usize, what: &str) -> Up {
    let line = vm
        .wait_for_since(mark, READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: the device did not come up: {e:#}"));
    let up = if line.contains("version=0.1.0") && line.contains("slot=a") {
        Up::Old
    } else if line.contains("version=0.2.0") && line.contains("slot=b") {
        Up::New
    } else {
        panic!("{what}: came up as neither 0.1.0 in slot a nor 0.2.0 in slot b: {line}");
    };
    vm.run_ok(
        "mountpoint -q /run/stick || { mkdir -p /run/stick && mount -o ro /dev/vdc /run/stick; }",
        Duration::from_secs(120),
    )
    .unwrap();
    let st = status_json(vm);
    let b_state = st["state"]["b"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    eprintln!(
        "power-cut: {what}: up as {up:?}; slot b {b_state}, entries {}",
        st["entries"]
    );
    match up {
        Up::Old => {
            assert_eq!(st["running_slot"], "a", "{what}: {st}");
            // The running slot is committed: its entry counts no tries.
            let a = st["entries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["slot"] == "a")
                .unwrap_or_else(|| panic!("{what}: no entry for the running slot: {st}"));
            assert_eq!(a["file"], "basalt-a.conf", "{what}: {st}");
            // A slot that holds anything less than the whole new root has no boot entry.
            // (The factory copy of 0.1.0 keeps its entry until a stage begins.)
            // (An entry with no tries left, after a rollback, is never started.)
            if let Some(e) = entry_b(&st).filter(|e| !e.contains("+0-")) {
                assert!(
                    !matches!(b_state.as_str(), "writing" | "bad"),
                    "{what}: slot b has the entry {e} but is {b_state}: {st}"
                );
                // An entry left empty by a rename that did not reach the disk is skipped by the boot loader.
                vm.run_ok(
                    &format!("test -s /efi/loader/entries/{e}"),
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|err| panic!("{what}: the entry {e} is empty: {err:#}"));
            }
            if let (Some(e), "staged" | "trying") = (entry_b(&st), b_state.as_str()) {
                assert_eq!(
                    slot_b_sha256(vm, fx.rootfs_size),
                    fx.rootfs_sha256,
                    "{what}: slot b has the entry {e} but does not hold the new root"
                );
            }
        }
        Up::New => {
            assert_eq!(st["running_slot"], "b", "{what}: {st}");
        }
    }
    up
}

/// Waits until the running new slot is blessed by the health flow.
fn wait_committed(vm: &mut Vm, what: &str) {
    vm.run_ok(
        "for i in $(seq 150); do ls /efi/loader/entries | grep -qx basalt-b.conf && break; sleep 1; done; ls /efi/loader/entries | grep -qx basalt-b.conf",
        Duration::from_secs(200),
    )
    .unwrap_or_else(|e| panic!("{what}: 0.2.0 was never committed: {e:#}"));
}

/// Waits for the kernel to start and then for the ready line; returns the time between.
fn kernel_to_ready(vm: &mut Vm) -> Duration {
    let mark = vm.mark();
    vm.wait_for_since(mark, "basalt.slot=", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("no kernel command line: {e:#}"));
    let kernel = Instant::now();
    vm.wait_for_since(mark, READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    kernel.elapsed()
}

/// Power back on: the same disk overlay and EFI variables.
fn restart(fx: &Fixture) -> Vm {
    let mut cfg = fx.cfg.clone();
    cfg.keep_state = true;
    Vm::start(&cfg).unwrap_or_else(|e| panic!("starting QEMU: {e:#}"))
}

/// Sends `command` with a start marker and returns once the shell has started it.
fn start_command(vm: &mut Vm, tag: &str, command: &str) -> usize {
    // A command that answers proves the shell is reading.
    vm.run_ok("true", Duration::from_secs(60)).unwrap();
    let mark = vm.mark();
    vm.send(&format!(
        "echo __{tag}_start''__; {command}; echo __{tag}_done''__ $?\n"
    ))
    .unwrap();
    vm.wait_for_since(mark, &format!("__{tag}_start__"), Duration::from_secs(60))
        .unwrap();
    mark
}

fn finished(vm: &Vm, mark: usize, tag: &str) -> bool {
    vm.console()[mark..].contains(&format!("__{tag}_done__"))
}

/// One VM through `phases`, each cut once, ending with 0.2.0 committed.
fn sequence(fx: &Fixture, rng: &mut Rng, phases: &[Phase], seq: usize) {
    let t = Duration::from_secs(60);
    let long = Duration::from_secs(900);
    let mut vm = Vm::start(&fx.cfg).unwrap_or_else(|e| panic!("starting QEMU: {e:#}"));
    // From the kernel's start to the ready line: the window a cut during a boot falls in.
    let mut boot_time = kernel_to_ready(&mut vm);
    eprintln!(
        "power-cut: sequence {seq}: 0.1.0 ready {:.1} s after its kernel started (first boot)",
        boot_time.as_secs_f64()
    );
    vm.run_ok(
        "for i in $(seq 120); do ls /efi/loader/entries | grep -qx basalt-a.conf && break; sleep 1; done; ls /efi/loader/entries | grep -qx basalt-a.conf",
        Duration::from_secs(180),
    )
    .unwrap();
    vm.run_ok(
        "mkdir -p /run/stick && mount -o ro /dev/vdc /run/stick && echo kept > /etc/basalt-power-cut && sync",
        t,
    )
    .unwrap();
    let keep =
        "cat /etc/machine-id /etc/basalt-power-cut /data/basalt/identity/node.id /etc/hostname";
    let kept = vm.run_ok(keep, t).unwrap();
    let mut cuts = 0;
    // Where the cut stage recorded it got to, if it did: the next stage goes on there.
    let mut resume_at = None;

    if phases.contains(&Phase::Stage) {
        let before = overlay_len(&fx.cfg);
        let fraction = rng.range(0.02, 0.98);
        let extra = Duration::from_millis(rng.range(0.0, 1500.0) as u64);
        let mark = start_command(
            &mut vm,
            "stage",
            "basalt-agent update stage /run/stick/v2.basalt",
        );
        let began = Instant::now();
        let goal = (fx.rootfs_size as f64 * fraction) as u64;
        while overlay_len(&fx.cfg) - before < goal && !finished(&vm, mark, "stage") {
            assert!(began.elapsed() < long, "stage made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(extra);
        let done = finished(&vm, mark, "stage");
        vm.kill();
        cuts += 1;
        eprintln!(
            "power-cut: sequence {seq}: cut during stage after {:.1} s, {} MiB of {} MiB on the disk{}",
            began.elapsed().as_secs_f64(),
            (overlay_len(&fx.cfg) - before) >> 20,
            fx.rootfs_size >> 20,
            if done { " (stage had just finished)" } else { "" }
        );
        vm = restart(fx);
        boot_time = kernel_to_ready(&mut vm);
        let up = check_boot(&mut vm, fx, 0, "after the cut during stage");
        assert_eq!(up, Up::Old, "nothing was applied, yet 0.2.0 booted");
        let st = status_json(&mut vm);
        if st["state"]["b"]["state"] == "writing" {
            resume_at = st["state"]["b"]["resume"]["uncompressed"].as_u64();
        }
    }

    let staged = Instant::now();
    let out = vm
        .run_ok("basalt-agent update stage /run/stick/v2.basalt", long)
        .unwrap();
    if let Some(at) = resume_at {
        assert!(
            out.contains(&format!("resuming slot b at byte {at} of rootfs")),
            "the cut stage had recorded byte {at}, but the next stage did not go on from there:\n{out}"
        );
    }
    eprintln!(
        "power-cut: sequence {seq}: staged in {:.1} s{}",
        staged.elapsed().as_secs_f64(),
        resume_at
            .map(|at| format!(", going on from byte {at} after the cut"))
            .unwrap_or_default()
    );

    // Arm the boot loader, cut or not; then boot until 0.2.0 is committed.
    let mut applied_at;
    if phases.contains(&Phase::Apply) {
        let delay = Duration::from_millis(rng.range(0.0, 2000.0) as u64);
        let mark = start_command(&mut vm, "apply", "basalt-agent update apply");
        applied_at = Instant::now();
        std::thread::sleep(delay);
        let done = finished(&vm, mark, "apply");
        vm.kill();
        cuts += 1;
        eprintln!(
            "power-cut: sequence {seq}: cut {} ms after apply began{}",
            delay.as_millis(),
            if done { " (apply had finished)" } else { "" }
        );
        vm = restart(fx);
    } else {
        vm.run_ok("basalt-agent update apply", t).unwrap();
        applied_at = Instant::now();
        vm.send("systemctl reboot\n").unwrap();
    }
    let mut mark = vm.mark();
    let mut first_boot_cut = !phases.contains(&Phase::FirstBoot);
    let mut boots = 0;
    loop {
        boots += 1;
        assert!(boots <= 6, "0.2.0 was not committed after 6 boots");
        let (slot, _) = vm
            .wait_for_any_since(mark, &["basalt.slot=a", "basalt.slot=b"], BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("no kernel command line: {e:#}"));
        let into_new = slot == 1;
        if into_new && !first_boot_cut {
            // Between the kernel's start and a little after the ready line, where the health decision is made.
            let at = Duration::from_secs_f64(boot_time.as_secs_f64() * rng.range(0.05, 1.25));
            let kernel = Instant::now();
            while kernel.elapsed() < at {
                std::thread::sleep(Duration::from_millis(20));
            }
            let console = vm.console();
            let seen = |needle: &str| console[mark..].contains(needle);
            let when = if seen("basalt-health") {
                "around the health decision"
            } else if seen(READY) {
                "after the ready line"
            } else if seen("switching root") {
                "while systemd started"
            } else {
                "in the boot loader or the initrd"
            };
            vm.kill();
            cuts += 1;
            first_boot_cut = true;
            eprintln!(
                "power-cut: sequence {seq}: cut {:.1} s after the kernel of 0.2.0 started ({when})",
                at.as_secs_f64()
            );
            vm = restart(fx);
            mark = 0;
            continue;
        }
        let what = format!("boot {boots} after apply");
        match check_boot(&mut vm, fx, mark, &what) {
            Up::New => {
                wait_committed(&mut vm, &what);
                eprintln!(
                    "power-cut: sequence {seq}: 0.2.0 committed {:.1} s after apply",
                    applied_at.elapsed().as_secs_f64()
                );
                break;
            }
            Up::Old => {
                // The cut came before the entry was in place: apply again.
                let st = status_json(&mut vm);
                assert_eq!(
                    st["state"]["b"]["state"], "staged",
                    "{what}: 0.1.0 came up although apply had armed slot b: {st}"
                );
                vm.run_ok("basalt-agent update apply", t).unwrap();
                applied_at = Instant::now();
                mark = vm.mark();
                vm.send("systemctl reboot\n").unwrap();
            }
        }
    }
    assert_eq!(cuts, phases.len(), "every phase is cut once");

    // The committed slot holds exactly the new root, and the data partition survived.
    assert_eq!(
        slot_b_sha256(&mut vm, fx.rootfs_size),
        fx.rootfs_sha256,
        "slot b"
    );
    assert_eq!(vm.run_ok(keep, t).unwrap(), kept, "the data partition");
    let st = status_json(&mut vm);
    assert_eq!(entry_b(&st).as_deref(), Some("basalt-b.conf"), "{st}");
    vm.kill();
}

#[test]
fn x86_64_power_cuts_during_update() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the power-cut test");
        return;
    }
    let seed = env_number("BASALT_POWER_CUT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    });
    let cuts = env_number("BASALT_POWER_CUTS").unwrap_or(3) as usize;
    assert!(cuts >= 1, "BASALT_POWER_CUTS must be at least 1");
    eprintln!("power-cut: BASALT_POWER_CUT_SEED={seed} BASALT_POWER_CUTS={cuts}");
    let mut rng = Rng(seed);

    let work = work_dir().join("power-cut");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("keys")).unwrap();
    let release = bundle_cmd::keygen(&work.join("keys/release")).unwrap();
    let v1 = debug_image(BoardId::X86_64Uefi);
    let v2 = version_image("0.2.0", None);
    let bundle = make_bundle(
        &v2.image,
        &work.join("keys/release.key"),
        &work.join("v2.basalt"),
    );
    let inspected = bundle_cmd::inspect(&bundle_cmd::InspectOptions {
        bundle: bundle.clone(),
        trust: vec![],
        threshold: None,
        payloads: false,
    })
    .unwrap();
    let rootfs = inspected
        .manifest
        .payloads
        .iter()
        .find(|p| p.name == PayloadName::Rootfs)
        .expect("a rootfs payload");
    stick(&work.join("stick.img"), std::slice::from_ref(&bundle));

    let mut cfg = vm_config(BoardId::X86_64Uefi, &v1.image, "x86_64-power-cut");
    // One vCPU: this test boots the guest many times while other QEMU tests
    // run beside it, and on a 2-core host a second TCG vCPU thread that gets
    // no time leaves the guest kernel in RCU stalls ("timer wakeup didn't
    // happen"), which is the host's doing, not the update's.
    cfg.cpus = 1;
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let cidata = work.join("cidata.img");
    cidata_image(
        &cidata,
        &format!(
            "#cloud-config\nhostname: cutter\nbasalt:\n  version: 1\n  update:\n    channel: http://updates.invalid/\n    trusted_keys: [\"{}\"]\n",
            release.public_key
        ),
        "instance-id: iid-power-cut\n",
    );
    cfg.extra_args = extra_disk("cidata", &cidata);
    cfg.extra_args
        .extend(extra_disk("stick", &work.join("stick.img")));
    let fx = Fixture {
        cfg,
        rootfs_size: rootfs.size,
        rootfs_sha256: rootfs.sha256.to_string(),
    };
    let started = Instant::now();
    for (seq, phases) in PHASES
        .iter()
        .copied()
        .cycle()
        .take(cuts)
        .collect::<Vec<_>>()
        .chunks(3)
        .enumerate()
    {
        // Each sequence starts from a freshly flashed disk.
        let _ = std::fs::remove_dir_all(&fx.cfg.state_dir);
        std::fs::create_dir_all(&fx.cfg.state_dir).unwrap();
        eprintln!("power-cut: sequence {seq}: cuts during {phases:?}");
        sequence(&fx, &mut rng, phases, seq);
    }
    eprintln!(
        "power-cut: {cuts} cut(s) survived in {:.0} s (BASALT_POWER_CUT_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
}
