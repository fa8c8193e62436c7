//! `basalt-agent health`: is this boot good? Run by `basalt-health.service`
//! before `boot-complete.target`; `systemd-bless-boot` makes a counted boot
//! entry permanent only when this passed.

use basalt_formats::cloud_config::HealthCheck;
use log::{error, info};
use std::path::Path;
use std::time::{Duration, Instant};

/// Written by the service once it has provisioned and is ready.
pub const READY_PATH: &str = "/run/basalt/ready";

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckOutcome {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs every check: basalt's own, then those named in cloud-config.
pub fn run_checks(ready: &Path, checks: &[HealthCheck]) -> Vec<CheckOutcome> {
    let mut out = Vec::new();
    out.push(CheckOutcome {
        name: "agent-ready".into(),
        ok: ready.exists(),
        detail: if ready.exists() {
            "basalt-agent is running and provisioned".into()
        } else {
            format!(
                "{} is missing: the agent did not become ready",
                ready.display()
            )
        },
    });
    for c in checks {
        let argv = &c.command;
        let started = Instant::now();
        let result = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let (ok, detail) = match result {
            Err(e) => (false, format!("{}: {e}", argv[0])),
            Ok(mut child) => {
                let limit = Duration::from_secs(c.timeout_s);
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            break (status.success(), format!("exited with {status}"))
                        }
                        Ok(None) if started.elapsed() >= limit => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break (false, format!("timed out after {} s", c.timeout_s));
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                        Err(e) => break (false, e.to_string()),
                    }
                }
            }
        };
        out.push(CheckOutcome {
            name: c.name.as_str().to_string(),
            ok,
            detail,
        });
    }
    for o in &out {
        if o.ok {
            info!("health check {}: ok ({})", o.name, o.detail);
        } else {
            error!("health check {} failed: {}", o.name, o.detail);
        }
    }
    out
}
