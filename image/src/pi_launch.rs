//! Booting a Raspberry Pi image under QEMU `-M raspi4b`, doing what the Pi
//! firmware does with the SD card, for `basalt run` and the qemu-tests.
//!
//! QEMU's Raspberry Pi machines have no Pi firmware: they start a kernel
//! given with `-kernel`, `-dtb`, `-initrd` and `-append`. Before each power-on
//! the launcher does the firmware's part:
//!
//! 1. reads `autoboot.txt` from partition 1 of the VM's SD card (the disk as
//!    the guest left it), and the tryboot flag, kept as the file `tryboot` in
//!    the VM's state directory;
//! 2. picks the partition: `[tryboot] boot_partition` when the flag is set,
//!    else `[all] boot_partition`, and clears the flag, as the firmware does
//!    before it boots, so that whatever happens next the following power-on
//!    returns to the committed slot;
//! 3. takes that partition's `config.txt` (`kernel=`, `initramfs`),
//!    `cmdline.txt`, kernel, initrd and the board's first device tree, and
//!    sets `/chosen/bootloader/tryboot` and `/chosen/bootloader/partition`
//!    in the device tree as the firmware does (with `fdtput`, package
//!    device-tree-compiler). Nodes of devices QEMU does not model (the HDMI
//!    block and its interrupt controller and I²C, the display pipeline),
//!    which fault on first access, are disabled in that copy, and the
//!    console and SD card are moved to where QEMU has them (below).
//!
//! Where QEMU's `raspi4b` differs from a Pi 4, and what the launcher does:
//!
//! - The console: a Pi's GPIO header UART is the mini UART (`ttyS1`), but
//!   QEMU's mini UART model has the two interrupt-enable bits the other way
//!   round (bit 0 enables its transmit interrupt; on the chip, and in
//!   Linux's 8250 driver, bit 0 is receive). When Linux opens `ttyS1` and
//!   enables receive interrupts, QEMU raises a transmit interrupt that the
//!   driver never clears, and CPU 0 takes it forever: the boot stalls (RCU
//!   stall and soft lockup reports in the idle task, nothing after the
//!   console opens). So under QEMU the console is the PL011 (`ttyAMA0`,
//!   QEMU's first serial port): the mini UART is disabled, the PL011's
//!   Bluetooth child node removed (else the port is Bluetooth's, not a
//!   tty), and `console=` arguments naming a serial port are replaced with
//!   the board's `qemu.console`.
//! - The watchdog: QEMU's resets the machine as soon as it is armed, so
//!   systemd is given no watchdog device (see [`qemu_cmdline`]).
//! - The SD card: on a Pi 4 it is on EMMC2 (`mmc@7e340000`); QEMU attaches
//!   `-drive if=sd` to the Arasan SDHCI (`mmc@7e300000`, the Wi-Fi's SDIO
//!   host on a Pi 4) and nothing to EMMC2. So EMMC2 is disabled, and the
//!   Arasan host loses its Wi-Fi child and power sequence (which waits on
//!   the firmware's GPIO expander, which QEMU does not have). The same
//!   `sdhci-iproc` driver serves both; the card is `mmcblk0` either way.
//!
//! How the guest's `reboot "0 tryboot"` reaches the launcher: QEMU runs with
//! `-no-reboot`, so a guest reboot ends the QEMU process. The kernel prints
//! the reboot argument on the console as it restarts
//! (`reboot: Restarting system with command '0 tryboot'`); when the last
//! such line of a boot names `tryboot`, the launcher sets the flag before
//! the next power-on. That is the same information the Pi firmware gets, by
//! another path: on a Pi the kernel hands the flag to the firmware through
//! its mailbox, which QEMU does not emulate. Any other end of QEMU (a
//! power-off, a crash, a killed VM) leaves the flag as it was.
//!
//! The SD card is a sparse copy of the image in the state directory, grown
//! to a power of two (QEMU's SD card model requires it).

use crate::qemu::{Vm, VmConfig};
use crate::tools;
use anyhow::{bail, Context, Result};
use basalt_formats::layout::{read_mbr, MbrTable, RPI_AUTOBOOT_PARTITION};
use basalt_formats::tryboot::{Autoboot, AUTOBOOT_TXT, TRYBOOT_REBOOT_ARG};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Device tree nodes of the BCM2711 that QEMU's `raspi4b` does not model.
const UNMODELLED_BCM2711_NODES: &[&str] = &[
    "/soc/clock@7ef00000",
    "/soc/interrupt-controller@7ef00100",
    "/soc/hdmi@7ef00700",
    "/soc/hdmi@7ef05700",
    "/soc/i2c@7ef04500",
    "/soc/i2c@7ef09500",
    "/soc/hvs@7e400000",
    "/soc/pixelvalve@7e206000",
    "/soc/pixelvalve@7e207000",
    "/soc/pixelvalve@7e20a000",
    "/soc/pixelvalve@7e216000",
    "/soc/pixelvalve@7ec12000",
    "/soc/vec@7ec13000",
    "/soc/txp@7e004000",
    "/soc/dsi@7e209000",
    "/soc/dsi@7e700000",
    "/soc/dpi@7e208000",
    // The VideoCore's services (VCHIQ: camera, audio) and the 3D GPU: their
    // drivers wait on, and then fail without, a VideoCore QEMU does not run.
    "/soc/mailbox@7e00b840",
    "/scb/gpu@7ec00000",
    // The display driver's master node: with its HVS, HDMI and pixel valves
    // disabled above, Debian's 6.1 vc4 driver dereferences a null pointer.
    "/gpu",
];

/// Changes to the board's device tree for QEMU's `raspi4b` (see the module
/// documentation). A node the device tree lacks is skipped.
const QEMU_DT_CHANGES: &[DtChange] = &[
    // The mini UART: QEMU's interrupt-enable bits are swapped.
    DtChange::Disable("/soc/serial@7e215040"),
    // The PL011 is a tty, not Bluetooth's serial device.
    DtChange::RemoveNode("/soc/serial@7e201000/bluetooth"),
    // The SD card is on the Arasan SDHCI; EMMC2 has no card.
    DtChange::Disable("/emmc2bus/mmc@7e340000"),
    DtChange::RemoveNode("/soc/mmc@7e300000/wifi@1"),
    DtChange::DeleteProperty("/soc/mmc@7e300000", "mmc-pwrseq"),
];

/// One change to a device tree, made with `fdtput`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DtChange {
    Disable(&'static str),
    RemoveNode(&'static str),
    DeleteProperty(&'static str, &'static str),
}

impl DtChange {
    fn apply(&self, dtb: &Path) {
        let mut c = Command::new("fdtput");
        match self {
            DtChange::Disable(node) => c
                .args(["-t", "s"])
                .arg(dtb)
                .args([node, "status", "disabled"]),
            DtChange::RemoveNode(node) => c.arg("-r").arg(dtb).arg(node),
            DtChange::DeleteProperty(node, prop) => c.arg("-d").arg(dtb).args([node, prop]),
        };
        // A node or property the board's device tree lacks is fine.
        let _ = c.output();
    }
}

/// Given to systemd as its watchdog device under QEMU: a path that does not
/// exist, so that it arms none (see [`qemu_cmdline`]).
pub const NO_WATCHDOG: &str = "systemd.watchdog_device=/dev/no-watchdog-under-qemu";

/// The kernel command line for QEMU: `cmdline` with each `console=` naming
/// a serial port (`ttyS*`, `ttyAMA*`) replaced by one `console=` for the
/// port QEMU shows (`console`, the board's `qemu.console`), placed last so
/// that it is `/dev/console`; and [`NO_WATCHDOG`]: QEMU's model of the
/// BCM2835 watchdog resets the machine as soon as the watchdog is armed,
/// whatever its timeout, so systemd arming it (for 10 minutes) as it starts
/// to shut down would end QEMU before the kernel prints its `reboot:` line,
/// and the launcher would never see `0 tryboot`. The kernel's own restart
/// goes through the same watchdog and works as on a Pi.
pub fn qemu_cmdline(cmdline: &str, console: &str) -> String {
    let mut words: Vec<String> = cmdline
        .split_whitespace()
        .filter(|w| {
            !w.strip_prefix("console=")
                .is_some_and(|dev| dev.starts_with("ttyS") || dev.starts_with("ttyAMA"))
        })
        .map(str::to_string)
        .collect();
    words.push(format!("console={console},115200"));
    words.push(NO_WATCHDOG.to_string());
    words.join(" ")
}

/// Which of QEMU's serial ports (`-serial` in order) is `console` on a
/// Raspberry Pi machine: the PL011 (`ttyAMA0`) is the first, the mini UART
/// (`ttyS1`) the second.
pub fn console_serial_index(console: &str) -> usize {
    usize::from(!console.starts_with("ttyAMA"))
}

/// The console line of a kernel restarting with an argument.
const RESTART_WITH_COMMAND: &str = "reboot: Restarting system with command '";

/// A Raspberry Pi under QEMU: its SD card and firmware state.
#[derive(Debug, Clone)]
pub struct PiMachine {
    pub cfg: VmConfig,
    pub sd: PathBuf,
    /// Present while a tryboot is armed.
    pub tryboot_flag: PathBuf,
}

/// What the emulated firmware chose for one power-on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareChoice {
    pub partition: u32,
    pub tryboot: bool,
    pub cmdline: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub dtb: PathBuf,
}

/// The boot partition the firmware starts, from `autoboot.txt` and the flag.
pub fn choose_partition(autoboot: &Autoboot, tryboot: bool) -> u32 {
    let slot = if tryboot {
        autoboot.trial()
    } else {
        autoboot.committed
    };
    basalt_formats::layout::rpi_boot_partition(slot)
}

/// Whether a boot's console asked for a tryboot with its last restart.
pub fn console_requests_tryboot(console: &str) -> bool {
    console
        .lines()
        .rev()
        .find_map(|l| {
            let (_, rest) = l.split_once(RESTART_WITH_COMMAND)?;
            Some(rest.trim_end().trim_end_matches('\'').to_string())
        })
        .is_some_and(|arg| {
            arg.split_whitespace().any(|w| w == "tryboot") || arg == TRYBOOT_REBOOT_ARG
        })
}

/// `kernel=` and `initramfs` of a `config.txt` (the `[all]` lines basalt writes).
pub fn kernel_and_initrd(config_txt: &str) -> (Option<String>, Option<String>) {
    let mut kernel = None;
    let mut initrd = None;
    for line in config_txt.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("kernel=") {
            kernel = Some(k.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initrd = rest.split_whitespace().next().map(str::to_string);
        }
    }
    (kernel, initrd)
}

/// Reads the MBR of an image file.
pub fn read_table(image: &Path) -> Result<MbrTable> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    read_mbr(&mut f).with_context(|| format!("{} has no MBR partition table", image.display()))
}

/// Reads the file `name` from the top of FAT partition `number` of `image`.
pub fn read_fat_file(image: &Path, number: u32, name: &str) -> Result<Vec<u8>> {
    let label = basalt_formats::layout::rpi_label(number)
        .with_context(|| format!("partition {number} is not one of basalt's Pi layout"))?;
    let part = crate::bundle_cmd::open_partition(image, &label)?;
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).with_context(|| {
        format!(
            "{} partition {number}: not a FAT file system",
            image.display()
        )
    })?;
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(name)
        .with_context(|| format!("{} partition {number}: no {name}", image.display()))?
        .read_to_end(&mut out)
        .with_context(|| format!("{} partition {number}: reading {name}", image.display()))?;
    Ok(out)
}

impl PiMachine {
    /// Makes the SD card in the state directory unless kept from an earlier boot.
    pub fn prepare(cfg: &VmConfig) -> Result<PiMachine> {
        if !tools::exists(&cfg.board.qemu.system) {
            bail!(
                "{} is not installed (scripts/setup.sh installs it)",
                cfg.board.qemu.system
            );
        }
        if !tools::exists("fdtput") {
            bail!("fdtput is not installed: it is in the package device-tree-compiler (scripts/setup.sh installs it)");
        }
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        let m = PiMachine {
            cfg: cfg.clone(),
            sd: cfg.state_dir.join("sd.img"),
            tryboot_flag: cfg.state_dir.join("tryboot"),
        };
        if !cfg.keep_state || !m.sd.exists() {
            let _ = std::fs::remove_file(&m.sd);
            let _ = std::fs::remove_file(&m.tryboot_flag);
            tools::run(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&cfg.image)
                    .arg(&m.sd),
            )?;
            let len = std::fs::metadata(&m.sd)?.len();
            let want = len.max(cfg.disk_size.unwrap_or(0)).next_power_of_two();
            File::options()
                .write(true)
                .open(&m.sd)?
                .set_len(want)
                .with_context(|| format!("growing {}", m.sd.display()))?;
        }
        Ok(m)
    }

    /// Arms (or disarms) a tryboot for the next power-on.
    pub fn set_tryboot(&self, on: bool) -> Result<()> {
        if on {
            std::fs::write(&self.tryboot_flag, TRYBOOT_REBOOT_ARG)?;
        } else if self.tryboot_flag.exists() {
            std::fs::remove_file(&self.tryboot_flag)?;
        }
        Ok(())
    }

    /// The `autoboot.txt` on the SD card now.
    pub fn autoboot(&self) -> Result<String> {
        let bytes = read_fat_file(&self.sd, RPI_AUTOBOOT_PARTITION, AUTOBOOT_TXT)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Does the firmware's part of a power-on: chooses the partition, clears
    /// the flag, and prepares the kernel, initrd and device tree.
    pub fn firmware(&self) -> Result<FirmwareChoice> {
        let text = self.autoboot()?;
        let autoboot = Autoboot::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {AUTOBOOT_TXT}: {e}; the Pi firmware would find no boot partition",
                self.sd.display()
            )
        })?;
        let tryboot = self.tryboot_flag.exists();
        let partition = choose_partition(&autoboot, tryboot);
        self.set_tryboot(false)?;
        let rpi = self
            .cfg
            .board
            .rpi
            .as_ref()
            .context("the board has no rpi section")?;
        let read = |name: &str| read_fat_file(&self.sd, partition, name);
        let config = String::from_utf8_lossy(&read("config.txt")?).into_owned();
        let (kernel_name, initrd_name) = kernel_and_initrd(&config);
        let kernel_name = kernel_name.context("config.txt has no kernel= line")?;
        let initrd_name = initrd_name.context("config.txt has no initramfs line")?;
        let cmdline = qemu_cmdline(
            &String::from_utf8_lossy(&read("cmdline.txt")?),
            &self.cfg.board.qemu.console,
        );
        let boot = self.cfg.state_dir.join("firmware");
        std::fs::create_dir_all(&boot)?;
        let kernel = boot.join("kernel");
        let initrd = boot.join("initrd");
        let dtb = boot.join("board.dtb");
        std::fs::write(&kernel, read(&kernel_name)?)?;
        std::fs::write(&initrd, read(&initrd_name)?)?;
        std::fs::write(&dtb, read(&rpi.dtbs[0])?)?;
        for node in UNMODELLED_BCM2711_NODES {
            DtChange::Disable(node).apply(&dtb);
        }
        for change in QEMU_DT_CHANGES {
            change.apply(&dtb);
        }
        tools::run(
            Command::new("fdtput")
                .arg("-c")
                .arg(&dtb)
                .arg("/chosen/bootloader"),
        )?;
        for (prop, value) in [("tryboot", u32::from(tryboot)), ("partition", partition)] {
            tools::run(Command::new("fdtput").args(["-t", "u"]).arg(&dtb).args([
                "/chosen/bootloader",
                prop,
                &value.to_string(),
            ]))?;
        }
        Ok(FirmwareChoice {
            partition,
            tryboot,
            cmdline,
            kernel,
            initrd,
            dtb,
        })
    }

    /// The QEMU command line for one power-on.
    pub fn command(&self, choice: &FirmwareChoice) -> Command {
        let q = &self.cfg.board.qemu;
        let mut c = Command::new(&q.system);
        c.args(["-machine", &q.machine, "-accel", "tcg"])
            .args(["-display", "none", "-no-user-config", "-no-reboot"])
            .arg("-kernel")
            .arg(&choice.kernel)
            .arg("-initrd")
            .arg(&choice.initrd)
            .arg("-dtb")
            .arg(&choice.dtb)
            .args(["-append", &choice.cmdline])
            .arg("-drive")
            .arg(format!("if=sd,format=raw,file={}", self.sd.display()));
        for port in self.serial_ports("mon:stdio") {
            c.args(["-serial", port]);
        }
        c.args(["-monitor", "none"]).args(&self.cfg.extra_args);
        c
    }

    /// QEMU's `-serial` values: `console` for the board's QEMU console, `null` for the other port.
    fn serial_ports<'a>(&self, console: &'a str) -> [&'a str; 2] {
        let mut ports = ["null"; 2];
        ports[console_serial_index(&self.cfg.board.qemu.console)] = console;
        ports
    }

    /// Powers the Pi on: the firmware's choice, then QEMU with its console captured.
    pub fn power_on(&self) -> Result<(Vm, FirmwareChoice)> {
        let choice = self.firmware()?;
        let log = self.cfg.state_dir.join("console.log");
        let vm = Vm::spawn(self.command(&choice), &self.cfg.board.qemu.system, log)?;
        Ok((vm, choice))
    }

    /// `basalt run`: boots with the console on this terminal, and powers the
    /// Pi on again after each guest restart (with the tryboot flag when the
    /// restart asked for it), until the guest powers off or QEMU is left
    /// (Ctrl-A X).
    pub fn run_interactive(&self) -> Result<()> {
        loop {
            let choice = self.firmware()?;
            eprintln!(
                "firmware: booting partition {}{}",
                choice.partition,
                if choice.tryboot { " (tryboot)" } else { "" }
            );
            let log = self.cfg.state_dir.join("console-boot.log");
            let _ = std::fs::remove_file(&log);
            let mut c = self.command(&choice);
            // The same console, also written to a file the launcher reads after the boot.
            let args: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_owned()).collect();
            let mut c2 = Command::new(c.get_program());
            let mut skip = 0;
            for a in &args {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if a == "-serial" || a == "-monitor" {
                    skip = 1;
                    continue;
                }
                c2.arg(a);
            }
            c2.arg("-chardev").arg(format!(
                "stdio,id=console,mux=on,signal=off,logfile={}",
                log.display()
            ));
            for port in self.serial_ports("chardev:console") {
                c2.args(["-serial", port]);
            }
            c2.args(["-mon", "chardev=console"]);
            c = c2;
            let status = c.status().context("starting QEMU")?;
            if !status.success() {
                bail!("QEMU exited with {status}");
            }
            let console = std::fs::read_to_string(&log).unwrap_or_default();
            let restarted = console
                .lines()
                .rev()
                .find(|l| l.contains("reboot: "))
                .is_some_and(|l| l.contains("Restarting system"));
            if !restarted {
                return Ok(());
            }
            self.after_exit(&console)?;
        }
    }

    /// After QEMU ended by itself: sets the flag when the guest restarted
    /// with `tryboot` (`console` is that boot's console).
    pub fn after_exit(&self, console: &str) -> Result<bool> {
        let tryboot = console_requests_tryboot(console);
        if tryboot {
            self.set_tryboot(true)?;
        }
        Ok(tryboot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::Slot;

    #[test]
    fn firmware_choice() {
        let a = Autoboot { committed: Slot::A };
        assert_eq!(choose_partition(&a, false), 2);
        assert_eq!(choose_partition(&a, true), 3);
        let b = Autoboot { committed: Slot::B };
        assert_eq!(choose_partition(&b, false), 3);
        assert_eq!(choose_partition(&b, true), 2);
    }

    #[test]
    fn reboot_argument_from_the_console() {
        let c = "[   30.1] reboot: Restarting system with command '0 tryboot'\n";
        assert!(console_requests_tryboot(c));
        assert!(!console_requests_tryboot(
            "[   30.1] reboot: Restarting system\n"
        ));
        assert!(!console_requests_tryboot("[   30.1] reboot: Power down\n"));
        // Only the last restart counts.
        let two = format!("{c}[   60.2] reboot: Restarting system with command '0'\n");
        assert!(!console_requests_tryboot(&two));
    }

    #[test]
    fn console_moves_to_the_qemu_port() {
        assert_eq!(
            qemu_cmdline(
                "basalt.slot=a console=tty0 console=ttyS1,115200\n",
                "ttyAMA0"
            ),
            format!("basalt.slot=a console=tty0 console=ttyAMA0,115200 {NO_WATCHDOG}")
        );
        assert_eq!(
            qemu_cmdline("basalt.slot=b quiet", "ttyAMA0"),
            format!("basalt.slot=b quiet console=ttyAMA0,115200 {NO_WATCHDOG}")
        );
        assert_eq!(console_serial_index("ttyAMA0"), 0);
        assert_eq!(console_serial_index("ttyS1"), 1);
        let b = crate::assets::board(basalt_formats::BoardId::Rpi4).unwrap();
        assert_eq!(b.qemu.console, "ttyAMA0");
    }

    #[test]
    fn config_txt_names_kernel_and_initrd() {
        let b = crate::assets::board(basalt_formats::BoardId::Rpi4).unwrap();
        let text = crate::build::rpi::config_txt(b.rpi.as_ref().unwrap());
        assert_eq!(
            kernel_and_initrd(&text),
            (Some("vmlinuz".into()), Some("initrd.img".into()))
        );
    }
}
