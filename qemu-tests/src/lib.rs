//! Shared fixtures of the QEMU tests: images built once per test run, and
//! VMs booted from them.
//!
//! The tests need QEMU, OVMF/AAVMF, mmdebstrap and the agent built for each
//! architecture (`scripts/test.sh` installs and builds all of it). Where they
//! cannot run, they fail, naming what is missing, unless `BASALT_SKIP_QEMU=1`
//! is set.

use basalt::build::{self, BuildOptions, BuildOutcome, SpecSource};
use basalt::qemu::{Vm, VmConfig};
use basalt_formats::{Arch, BoardId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The line the agent prints when the device is up.
pub const READY: &str = "basalt-agent: ready";

/// How long a boot to the ready line may take under TCG, generously.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// True when the QEMU tests were explicitly switched off with `BASALT_SKIP_QEMU=1`.
pub fn qemu_opted_out() -> bool {
    std::env::var("BASALT_SKIP_QEMU").is_ok_and(|v| v == "1")
}

/// The cargo target directory these tests were built in.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // .../target/debug/deps/boot-xxxx
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf()
}

/// Where the tests keep their images and VM state.
pub fn work_dir() -> PathBuf {
    target_dir().join("qemu-tests")
}

/// The release agent for `arch`, which `scripts/test.sh` builds before the tests.
pub fn agent(arch: Arch) -> PathBuf {
    let p = target_dir()
        .join(arch.rust_target())
        .join("release/basalt-agent");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release -p basalt-agent --target {}` (scripts/test.sh does)",
        p.display(),
        arch.rust_target()
    );
    p
}

/// A built image and what the build reported.
#[derive(Debug, Clone)]
pub struct Built {
    pub outcome: BuildOutcome,
    pub dir: PathBuf,
    pub image: PathBuf,
}

pub fn options(board: BoardId, spec: SpecSource, out_dir: PathBuf) -> BuildOptions {
    let arch = basalt::assets::board(board).expect("board file").arch;
    BuildOptions {
        spec,
        board: Some(board),
        out_dir,
        cache_dir: build::default_cache_dir(),
        no_cache: false,
        agent: Some(agent(arch)),
        source_date_epoch: 1_700_000_000,
        compressed: true,
    }
}

/// Builds `opts` and returns the image path.
pub fn build_image(opts: &BuildOptions) -> Built {
    let outcome = build::build(opts)
        .unwrap_or_else(|e| panic!("building {:?} for {:?}: {e:#}", opts.spec, opts.board));
    let stem = format!(
        "{}-{}-{}",
        outcome.record.name, outcome.record.version, outcome.record.board
    );
    Built {
        image: opts.out_dir.join(format!("{stem}.img")),
        dir: opts.out_dir.clone(),
        outcome,
    }
}

/// The image `key` made by `make`, built once per test run.
pub fn cached_image(key: &str, make: impl FnOnce() -> Built) -> Built {
    /// One build slot per image; a test waiting on one image does not block another.
    type Slot = Arc<Mutex<Option<Built>>>;
    static CACHE: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let slot = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("lock")
        .entry(key.to_string())
        .or_default()
        .clone();
    let mut guard = slot.lock().expect("lock");
    if let Some(b) = guard.as_ref() {
        return b.clone();
    }
    let built = make();
    *guard = Some(built.clone());
    built
}

/// The default appliance for `board`, built once per test run.
pub fn default_image(board: BoardId) -> Built {
    cached_image(&format!("default-{board}"), || {
        build_image(&options(
            board,
            SpecSource::Builtin,
            work_dir().join("images").join(board.as_str()),
        ))
    })
}

/// The default appliance plus the `debug-console` overlay (root shell on the
/// serial console, for tests that look inside), built once per test run.
pub fn debug_image(board: BoardId) -> Built {
    cached_image(&format!("debug-{board}"), || {
        let dir = work_dir().join(format!("specs/debug-{board}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("spec dir");
        let spec =
            basalt::assets::DEFAULT_SPEC.replace("  - base\n", "  - base\n  - debug-console\n");
        assert!(spec.contains("debug-console"));
        std::fs::write(dir.join("spec.yaml"), spec).expect("spec file");
        build_image(&options(
            board,
            SpecSource::File(dir.join("spec.yaml")),
            dir.join("out"),
        ))
    })
}

/// A NoCloud volume: a FAT file system labelled `CIDATA` holding `user-data` and `meta-data`.
pub fn cidata_image(path: &Path, user_data: &str, meta_data: &str) {
    basalt::qemu::write_cidata(path, user_data, meta_data)
        .unwrap_or_else(|e| panic!("cidata image: {e:#}"));
}

/// QEMU arguments that attach `image` as a read-only virtio disk.
pub fn extra_disk(id: &str, image: &Path) -> Vec<String> {
    basalt::qemu::readonly_disk(id, image)
}

/// A VM for `image` with its state in `work_dir()/vms/<name>`.
pub fn vm_config(board: BoardId, image: &Path, name: &str) -> VmConfig {
    let state_dir = work_dir().join("vms").join(name);
    let _ = std::fs::remove_dir_all(&state_dir);
    VmConfig {
        board: basalt::assets::board(board).expect("board file"),
        image: image.to_path_buf(),
        state_dir,
        disk_size: None,
        cpus: 2,
        keep_state: false,
        extra_args: Vec::new(),
        forwards: Vec::new(),
        lan: None,
    }
}

/// Boots `cfg` and waits for the ready line, returning the VM and that line.
pub fn boot_to_ready(cfg: &VmConfig) -> (Vm, String) {
    let mut vm = Vm::start(cfg).unwrap_or_else(|e| panic!("starting QEMU: {e:#}"));
    let line = vm
        .wait_for(READY, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (vm, line)
}

/// Serves `body` to every request on the host's loopback, on a thread that
/// lives as long as the test process, and returns the port. Guests on QEMU's
/// user network reach it at `http://10.0.2.2:<port>/`.
pub fn serve_bytes(body: Vec<u8>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            });
        }
    });
    port
}

/// A UDP port free on the host's loopback: a [`basalt::qemu::Lan`] of this
/// test's own, which no other test run hears.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A TCP port free on the host's loopback, for forwarding a guest port to.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The numbers of a v2 output tensor's `data` (a JSON array).
pub fn tensor_data(output: &serde_json::Value) -> Vec<f64> {
    output["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array in {output}"))
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

/// Runs the v2 request `body` through tract on the host with the model at
/// `path` and returns how far the device's first output (`device`, a v2
/// output tensor) is from the host's, element by element; panics if the
/// shapes differ.
pub fn max_diff_from_host(name: &str, path: &Path, body: &[u8], device: &serde_json::Value) -> f64 {
    let model = basalt_infer::Model::load(name, "host", path, &Default::default())
        .unwrap_or_else(|e| panic!("{name} on the host: {e}"));
    let req = basalt_infer::v2::parse_request(body, &Default::default()).expect("a valid request");
    let want =
        serde_json::to_value(&model.infer(&req).expect("host inference").outputs[0]).expect("JSON");
    assert_eq!(device["shape"], want["shape"], "device and host shapes");
    let (got, want) = (tensor_data(device), tensor_data(&want));
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// Seconds since the UNIX epoch, for signing requests to a device.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}
