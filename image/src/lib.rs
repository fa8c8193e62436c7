//! basalt's image builder.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`cli`] | the `basalt` command line |
//! | [`assets`] | boards, the default spec and the overlays compiled into the binary |
//! | [`config_cmd`] | `basalt config validate`: checking a cloud-config |
//! | [`build`] | `basalt build`: root file system, initrd, ESP or Pi boot slots, slots, disk, outputs |
//! | [`flash`] | `basalt flash`: an image onto an SD card, USB stick or disk, block map aware, read back and compared |
//! | [`iso`] | `basalt iso`: a hybrid installer ISO (CD or USB stick) from a built x86_64 UEFI image |
//! | [`bundle_cmd`] | `basalt keygen`, `bundle`, `sign`, `inspect`: signed update bundles |
//! | [`channel_cmd`] | `basalt channel`: the update channel's documents for a bundle (rollout share, recalls) |
//! | [`mesh_cmd`] | `basalt mesh`: network tokens |
//! | [`tools`] | running external tools (mmdebstrap, mksquashfs, …) with errors that name them |
//! | [`progress`] | progress bars and step lines |
//! | [`qemu`] | booting a built image under QEMU (`basalt run`, and the tests) |
//! | [`pi_launch`] | booting a Raspberry Pi image under QEMU `-M raspi4b` as the Pi firmware would (autoboot.txt, tryboot) |

pub mod assets;
pub mod build;
pub mod bundle_cmd;
pub mod channel_cmd;
pub mod cli;
pub mod config_cmd;
pub mod flash;
pub mod iso;
pub mod mesh_cmd;
pub mod pi_launch;
pub mod progress;
pub mod qemu;
pub mod tools;
