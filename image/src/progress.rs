//! Progress for long work: a spinner or bar per step on a terminal, one line
//! per step otherwise (CI logs). Everything goes to stderr; stdout is kept for
//! machine output such as `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    tty: bool,
    total_steps: usize,
    step: usize,
    started: Instant,
}

/// One running step.
#[derive(Debug)]
pub struct Step {
    bar: ProgressBar,
    name: String,
    started: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(total_steps: usize) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            total_steps,
            step: 0,
            started: Instant::now(),
        }
    }

    /// Starts a step with a spinner (no known length).
    pub fn step(&mut self, name: &str) -> Step {
        self.step += 1;
        let label = format!("[{}/{}] {name}", self.step, self.total_steps);
        let bar = if self.tty {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            eprintln!("==> {label}");
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
        };
        bar.set_message(label.clone());
        Step {
            bar,
            name: label,
            started: Instant::now(),
            tty: self.tty,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Step {
    /// Turns the spinner into a byte bar of `total` bytes.
    pub fn bytes(&self, total: u64) {
        self.bar.set_length(total);
        if self.tty {
            self.bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
        }
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn note(&self, text: &str) {
        if self.tty {
            self.bar.set_message(format!("{} ({text})", self.name));
        }
    }

    pub fn done(self, detail: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let line = if detail.is_empty() {
            format!("{} done in {secs:.1} s", self.name)
        } else {
            format!("{}: {detail} ({secs:.1} s)", self.name)
        };
        if self.tty {
            self.bar.finish_and_clear();
            eprintln!("✓ {line}");
        } else {
            eprintln!("    {line}");
        }
    }
}
