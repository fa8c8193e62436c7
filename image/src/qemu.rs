//! Booting a built image under QEMU with UEFI firmware (OVMF on x86_64,
//! AAVMF on ARM64), for `basalt run` and the qemu-tests.
//!
//! The image itself is never written: the VM runs on a qcow2 overlay backed
//! by it, and on a private copy of the firmware's variable store.

use crate::tools;
use anyhow::{bail, Context, Result};
use basalt_formats::Board;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub board: Board,
    /// The built disk image (`.img` or `.qcow2`).
    pub image: PathBuf,
    /// Directory for the overlay, the variable store and the console log.
    pub state_dir: PathBuf,
    /// Size of the virtual disk; larger than the image to exercise growing the data partition.
    pub disk_size: Option<u64>,
    pub cpus: u32,
    /// Reuse an overlay and variable store already in `state_dir` (a reboot of the same machine).
    pub keep_state: bool,
    /// Extra arguments passed to QEMU as they are.
    pub extra_args: Vec<String>,
    /// TCP ports of the guest reachable on the host's loopback: (host, guest).
    pub forwards: Vec<(u16, u16)>,
    /// A second network card on an Ethernet segment shared with other VMs.
    pub lan: Option<Lan>,
}

/// An Ethernet segment that VMs on this host share, as a second network
/// card beside the one that reaches the host (QEMU's multicast socket
/// network, bound to the loopback interface so no frame leaves the host).
/// Nothing on it hands out addresses: the guests number themselves, as
/// devices on a switch without a DHCP server do (IPv4 link-local).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lan {
    /// The multicast group and UDP port that carry the segment's frames.
    pub group: SocketAddrV4,
    /// This VM's MAC address there.
    pub mac: [u8; 6],
}

impl Lan {
    /// VM number `index` on the segment carried by UDP `port`.
    pub fn new(port: u16, index: u8) -> Lan {
        Lan {
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 66, 1), port),
            mac: [0x52, 0x54, 0x00, 0xba, 0x5a, index],
        }
    }

    /// The segment called `name` (every VM started with the same name
    /// shares it), for the VM whose state lives in `state_dir`: the UDP port
    /// comes from the name, the MAC address from the state directory.
    pub fn named(name: &str, state_dir: &Path) -> Lan {
        use sha2::{Digest, Sha256};
        let n = Sha256::digest(name.as_bytes());
        let port = 40000 + u16::from_be_bytes([n[0], n[1]]) % 20000;
        let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let m = Sha256::digest(dir.as_os_str().as_encoded_bytes());
        Lan {
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 66, 1), port),
            mac: [0x52, 0x54, 0x00, m[0], m[1], m[2]],
        }
    }

    /// This VM's MAC address, written the usual way.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn args(&self) -> [String; 4] {
        [
            "-netdev".into(),
            format!("socket,id=lan0,mcast={},localaddr=127.0.0.1", self.group),
            "-device".into(),
            format!("virtio-net-pci,netdev=lan0,mac={}", self.mac_string()),
        ]
    }
}

/// A running VM whose serial console is captured.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    commands: u32,
    console: Arc<(Mutex<String>, Condvar)>,
    /// The thread copying QEMU's standard output into `console`.
    reader: Option<std::thread::JoinHandle<()>>,
    pub log_path: PathBuf,
}

/// Checks that QEMU and the firmware for `board` are installed.
pub fn check_host(board: &Board) -> Result<()> {
    if !tools::exists(&board.qemu.system) {
        bail!(
            "{} is not installed (scripts/setup.sh installs it)",
            board.qemu.system
        );
    }
    for f in [&board.qemu.firmware_code, &board.qemu.firmware_vars]
        .into_iter()
        .flatten()
    {
        if !Path::new(f).is_file() {
            bail!("UEFI firmware {f} is missing (scripts/setup.sh installs ovmf and qemu-efi-aarch64)");
        }
    }
    Ok(())
}

fn image_format(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        _ => "raw",
    }
}

/// The QEMU command line for `cfg`, with the overlay at `disk` and the variable store at `vars`.
pub fn command(cfg: &VmConfig, disk: &Path, vars: &Path) -> Command {
    let q = &cfg.board.qemu;
    let mut c = Command::new(&q.system);
    c.args(["-machine", &q.machine, "-cpu", &q.cpu, "-accel", "tcg"])
        .args([
            "-smp",
            &cfg.cpus.to_string(),
            "-m",
            &(q.memory.bytes() >> 20).to_string(),
        ])
        .args(["-nodefaults", "-display", "none", "-no-user-config"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            q.firmware_code.as_deref().unwrap_or_default()
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=none,id=disk0,format=qcow2,file={}",
            disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"])
        .arg("-netdev")
        .arg(
            cfg.forwards
                .iter()
                .fold("user,id=net0".to_string(), |acc, (host, guest)| {
                    format!("{acc},hostfwd=tcp:127.0.0.1:{host}-:{guest}")
                }),
        )
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .args(cfg.lan.iter().flat_map(Lan::args))
        .args(["-device", "virtio-rng-pci"])
        .args(["-serial", "mon:stdio"])
        .args(&cfg.extra_args);
    c
}

/// Writes a NoCloud seed volume at `path`: a FAT file system labelled
/// `CIDATA` holding `user-data` and `meta-data`, what cloud-init (and the
/// basalt agent) look for on a second disk.
pub fn write_cidata(path: &Path, user_data: &str, meta_data: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(8 << 20)
        .with_context(|| format!("sizing {}", path.display()))?;
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .with_context(|| format!("formatting {}", path.display()))?;
    let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new())
        .with_context(|| format!("opening {}", path.display()))?;
    for (name, text) in [("user-data", user_data), ("meta-data", meta_data)] {
        let mut file = fs
            .root_dir()
            .create_file(name)
            .with_context(|| format!("{name} in {}", path.display()))?;
        file.truncate()?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {name} in {}", path.display()))?;
    }
    Ok(())
}

/// QEMU arguments that attach `image` as a read-only virtio disk.
pub fn readonly_disk(id: &str, image: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "if=none,id={id},format=raw,readonly=on,file={}",
            image.display()
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive={id}"),
    ]
}

/// QEMU arguments that attach `iso` as a read-only SCSI CD, booted after the
/// disk (an empty disk is skipped by the firmware, an installed one wins).
pub fn cdrom(iso: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        "virtio-scsi-pci,id=scsi0".into(),
        "-drive".into(),
        format!(
            "if=none,id=cd0,media=cdrom,format=raw,readonly=on,file={}",
            iso.display()
        ),
        "-device".into(),
        "scsi-cd,bus=scsi0.0,drive=cd0,bootindex=1".into(),
    ]
}

/// Creates the overlay and variable store unless kept from an earlier boot.
pub fn prepare(cfg: &VmConfig) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let disk = cfg.state_dir.join("disk.qcow2");
    let vars = cfg.state_dir.join("efivars.fd");
    if !cfg.keep_state || !disk.exists() {
        let _ = std::fs::remove_file(&disk);
        let image = std::fs::canonicalize(&cfg.image)
            .with_context(|| format!("image {}", cfg.image.display()))?;
        let mut c = Command::new("qemu-img");
        c.args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            image_format(&image),
            "-b",
        ])
        .arg(&image)
        .arg(&disk);
        if let Some(size) = cfg.disk_size {
            c.arg(size.to_string());
        }
        tools::run(&mut c)?;
        let template = cfg
            .board
            .qemu
            .firmware_vars
            .as_deref()
            .context("the board has no UEFI variable store")?;
        std::fs::copy(template, &vars).with_context(|| format!("copying {template}"))?;
    }
    Ok((disk, vars))
}

impl Vm {
    /// Starts the VM with its console captured (and copied to `console.log` in the state directory).
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        check_host(&cfg.board)?;
        let (disk, vars) = prepare(cfg)?;
        Vm::spawn(
            command(cfg, &disk, &vars),
            &cfg.board.qemu.system,
            cfg.state_dir.join("console.log"),
        )
    }

    /// Starts `command` (a QEMU command line with the console on stdio) with
    /// its console captured and appended to `log_path`.
    pub fn spawn(mut command: Command, system: &str, log_path: PathBuf) -> Result<Vm> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {system}"))?;
        let stdin = child.stdin.take();
        let console = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let c2 = console.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                let _ = log.write_all(text.as_bytes());
                let (m, cv) = &*c2;
                m.lock().expect("console lock").push_str(&text);
                cv.notify_all();
                line.clear();
            }
        });
        let c3 = console.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while let Ok(n) = r.read_line(&mut line) {
                if n == 0 {
                    break;
                }
                let (m, cv) = &*c3;
                m.lock()
                    .expect("console lock")
                    .push_str(&format!("[qemu] {line}"));
                cv.notify_all();
                line.clear();
            }
        });
        Ok(Vm {
            child,
            stdin,
            commands: 0,
            console,
            reader: Some(reader),
            log_path,
        })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.0.lock().expect("console lock").clone()
    }

    /// Waits until a console line contains `needle`, returning that line.
    /// Fails when the VM exits or `timeout` passes, showing the console's end.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], timeout).map(|(_, l)| l)
    }

    /// Like [`Vm::wait_for`] for several needles; returns which matched first and its line.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        self.wait_for_any_since(0, needles, timeout)
    }

    /// How much the console has printed so far: a mark for [`Vm::wait_for_since`].
    pub fn mark(&self) -> usize {
        self.console.0.lock().expect("console lock").len()
    }

    /// Like [`Vm::wait_for`], looking only at what the console printed after `mark`.
    pub fn wait_for_since(
        &mut self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_for_any_since(mark, &[needle], timeout)
            .map(|(_, l)| l)
    }

    /// Like [`Vm::wait_for_any`], looking only at what the console printed after `mark`.
    pub fn wait_for_any_since(
        &mut self,
        mark: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.console;
        let mut text = m.lock().expect("console lock");
        loop {
            let start = text.get(mark..).map(|_| mark).unwrap_or(0);
            for line in text[start..].lines() {
                if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                    return Ok((i, line.to_string()));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {} s waiting for {needles:?} on the console ({}); its end:\n{}",
                    timeout.as_secs(),
                    self.log_path.display(),
                    tools::tail(&text, 40)
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "QEMU exited ({status}) before {needles:?} appeared ({}); the console's end:\n{}",
                    self.log_path.display(),
                    tools::tail(&text, 40)
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            text = cv.wait_timeout(text, wait).expect("console lock").0;
        }
    }

    /// Types `text` on the serial console.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the console's input is closed")?;
        stdin
            .write_all(text.as_bytes())
            .context("writing to the console")?;
        stdin.flush().context("writing to the console")?;
        Ok(())
    }

    /// Runs a shell command on the console of an image with a logged-in
    /// shell there (the `debug-console` overlay) and returns what it printed
    /// and its exit status.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        self.commands += 1;
        let n = self.commands;
        let start = format!("__basalt_begin_{n}__");
        let end = format!("__basalt_end_{n}__");
        // A shell must be reading first: input typed while a login or a
        // reboot is still in progress is thrown away, so an echo is sent
        // (harmless if repeated) until it comes back.
        let ready = format!("__basalt_ready_{n}__");
        let deadline = Instant::now() + timeout;
        loop {
            let before = self.console().len();
            self.send(&format!("echo __basalt_ready_{n}''__\n"))?;
            let until = Instant::now() + Duration::from_secs(5);
            let mut seen = false;
            while Instant::now() < until {
                let text = self.console();
                if text[before.min(text.len())..].contains(&ready) {
                    seen = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if seen {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no shell answered on the console before running {command:?}; its end:\n{}",
                    tools::tail(&self.console(), 30)
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("QEMU exited ({status}) before running {command:?}");
            }
        }
        let before = self.console().len();
        // The markers are split in the typed text so the echo of the command line never matches.
        self.send(&format!(
            "echo __basalt_begin_{n}''__; {command}; echo __basalt_end_{n}''__ $?\n"
        ))?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            let new = &text[before.min(text.len())..];
            if let (Some(b), Some(e)) = (new.find(&format!("{start}\n")), new.rfind(&end)) {
                if e > b {
                    let out = &new[b + start.len() + 1..e];
                    let status_text: String = new[e + end.len()..]
                        .chars()
                        .skip(1)
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    if !status_text.is_empty() && new[e..].contains('\n') {
                        return Ok((status_text.parse().unwrap_or(-1), without_kernel_lines(out)));
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out running {command:?} on the console; its end:\n{}",
                    tools::tail(&text, 30)
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("QEMU exited ({status}) while running {command:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `command` and fails unless it exits 0; returns its output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let (status, out) = self.run(command, timeout)?;
        if status != 0 {
            bail!("{command:?} exited with {status}:\n{out}");
        }
        Ok(out)
    }

    /// Pulls the plug: the guest gets no chance to shut down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for QEMU to exit by itself (after a guest power-off), and for
    /// the console to be read to its end: the last lines QEMU printed (the
    /// kernel's `reboot:` line) are in [`Vm::console`] when this returns.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("QEMU did not exit within {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `text` without the kernel's own messages, which the serial console
/// interleaves with a command's output (`[   24.516784] kvm: ...`).
fn without_kernel_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| {
            let Some(rest) = l.strip_prefix('[') else {
                return true;
            };
            let Some((stamp, _)) = rest.split_once(']') else {
                return true;
            };
            let stamp = stamp.trim_start();
            !(stamp.contains('.') && stamp.chars().all(|c| c.is_ascii_digit() || c == '.'))
        })
        .collect()
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_messages_are_taken_out_of_command_output() {
        let out = "[   24.516784] kvm: Nested Virtualization enabled\n[    0.1] x\n13796d7b\n[not a stamp] kept\n";
        assert_eq!(
            super::without_kernel_lines(out),
            "13796d7b\n[not a stamp] kept\n"
        );
    }

    #[test]
    fn a_named_lan_is_shared_by_name_and_told_apart_by_state_directory() {
        let a = super::Lan::named("lab", std::path::Path::new("/tmp/vm-a"));
        let b = super::Lan::named("lab", std::path::Path::new("/tmp/vm-b"));
        let other = super::Lan::named("office", std::path::Path::new("/tmp/vm-a"));
        assert_eq!(a.group, b.group);
        assert_ne!(a.mac, b.mac);
        assert_ne!(a.group, other.group);
        assert!((40000..60000).contains(&a.group.port()));
        assert_eq!(a.mac[..3], [0x52, 0x54, 0x00]);
    }

    #[test]
    fn a_cidata_volume_holds_user_and_meta_data() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cidata.img");
        super::write_cidata(&p, "#cloud-config\nhostname: a\n", "instance-id: i-1\n").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        let mut text = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "#cloud-config\nhostname: a\n");
    }

    #[test]
    fn a_lan_is_a_second_card_with_its_own_address() {
        let lan = super::Lan::new(40123, 3);
        assert_eq!(lan.mac_string(), "52:54:00:ba:5a:03");
        assert_eq!(
            lan.args(),
            [
                "-netdev",
                "socket,id=lan0,mcast=239.255.66.1:40123,localaddr=127.0.0.1",
                "-device",
                "virtio-net-pci,netdev=lan0,mac=52:54:00:ba:5a:03"
            ]
        );
    }
}
