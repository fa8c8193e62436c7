//! `basalt-agent`: PID 1 of the initrd, the system service and the operator CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The kernel starts /init (a link to this binary) as PID 1 of the initrd.
    if basalt_agent::initrd::is_initrd_pid1() {
        basalt_agent::initrd::main();
    }
    basalt_agent::cli::main()
}
