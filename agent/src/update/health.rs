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

/// Longest wait for models still loading.
pub const MODELS_WAIT: Duration = Duration::from_secs(300);

/// Every model the inference server knows has loaded (waiting up to
/// `wait` for those still loading); a model that failed fails the boot.
pub fn models_check(status: &Path, wait: Duration) -> CheckOutcome {
    use crate::serve::models::{State, Status};
    let started = Instant::now();
    loop {
        let list: Option<Vec<Status>> = std::fs::read(status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(list) = list else {
            if started.elapsed() >= wait {
                return CheckOutcome {
                    name: "models-loaded".into(),
                    ok: false,
                    detail: format!(
                        "{} did not appear: the inference server did not start",
                        status.display()
                    ),
                };
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let failed: Vec<String> = list
            .iter()
            .filter_map(|m| match &m.state {
                State::Failed { error } => Some(format!("{}: {error}", m.name)),
                _ => None,
            })
            .collect();
        let loading = list.iter().filter(|m| m.state == State::Loading).count();
        if !failed.is_empty() {
            return CheckOutcome {
                name: "models-loaded".into(),
                ok: false,
                detail: failed.join("; "),
            };
        }
        if loading == 0 {
            return CheckOutcome {
                name: "models-loaded".into(),
                ok: true,
                detail: format!("{} model(s) ready", list.len()),
            };
        }
        if started.elapsed() >= wait {
            return CheckOutcome {
                name: "models-loaded".into(),
                ok: false,
                detail: format!(
                    "{loading} model(s) still loading after {} s",
                    wait.as_secs()
                ),
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs every check: basalt's own, then those named in cloud-config.
pub fn run_checks(ready: &Path, models: &Path, checks: &[HealthCheck]) -> Vec<CheckOutcome> {
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
    if ready.exists() {
        out.push(models_check(models, MODELS_WAIT));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, states: &[(&str, &str)]) {
        let list: Vec<serde_json::Value> = states
            .iter()
            .map(|(name, state)| {
                let mut v = serde_json::json!({"name": name, "version": "1", "dir": "/x", "batch_max": 1, "state": state});
                if *state == "ready" {
                    v["load_ms"] = 5.into();
                }
                if *state == "failed" {
                    v["error"] = "model.onnx: not ONNX".into();
                }
                v
            })
            .collect();
        std::fs::write(path, serde_json::to_vec(&list).unwrap()).unwrap();
    }

    #[test]
    fn models_must_all_load() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("models.json");
        let short = Duration::from_millis(300);
        let o = models_check(&p, short);
        assert!(!o.ok && o.detail.contains("did not appear"), "{o:?}");
        write(&p, &[]);
        assert!(models_check(&p, short).ok);
        write(&p, &[("a", "ready"), ("b", "ready")]);
        let o = models_check(&p, short);
        assert!(o.ok && o.detail.contains("2 model(s)"), "{o:?}");
        write(&p, &[("a", "ready"), ("b", "loading")]);
        let o = models_check(&p, short);
        assert!(!o.ok && o.detail.contains("still loading"), "{o:?}");
        write(&p, &[("a", "failed"), ("b", "ready")]);
        let o = models_check(&p, short);
        assert!(
            !o.ok && o.detail.contains("a: model.onnx: not ONNX"),
            "{o:?}"
        );
    }

    #[test]
    fn a_model_that_finishes_loading_in_time_passes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("models.json");
        write(&p, &[("a", "loading")]);
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            write(&p2, &[("a", "ready")]);
        });
        assert!(models_check(&p, Duration::from_secs(10)).ok);
        t.join().unwrap();
    }
}
