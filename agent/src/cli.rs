//! The command line of `basalt-agent`.

use clap::{Parser, Subcommand};
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "basalt-agent", version, about = "The basalt device agent", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run as the system service (started by systemd as basalt-agent.service).
    Run,
    /// Show the image, slot and boot state of this device.
    ///
    /// Example: basalt-agent status --json
    Status {
        /// Print JSON for machines instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes: 0 success, 1 failure, 2 bad usage (clap).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::service::init_logging();
    let result = match cli.command {
        Command::Run => crate::service::run(),
        Command::Status { json } => {
            let st = crate::status::collect(Path::new("/"));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st).expect("status serialises")
                );
            } else {
                print!("{}", st.human());
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
