//! Testbed images built from Debian's archive with mmdebstrap: rootfs
//! tarballs for the container backends, bootable disk images for qemu.

pub mod qemu;
pub mod rootfs;

use indicatif::{ProgressBar, ProgressStyle};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Bad arguments or environment (not root, missing directory).
    #[error("{0}")]
    Usage(String),
    /// A build step failed.
    #[error("{0}")]
    Step(String),
}

impl ImageError {
    fn io(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        ImageError::Step(format!("{what}: {err}"))
    }
}

/// Fails unless running as root.
fn require_root(what: &str) -> Result<(), ImageError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ImageError::Usage(format!("{what} needs root")))
    }
}

/// A spinner with the current step and the elapsed time on a terminal;
/// one line per step otherwise.
struct Progress {
    bar: ProgressBar,
    steps: u64,
}

impl Progress {
    fn new(steps: u64) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                .expect("valid template"),
        );
        bar.set_length(steps);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar, steps }
    }

    fn step(&self, message: &str) {
        self.bar.inc(1);
        if self.bar.is_hidden() {
            eprintln!("[{}/{}] {message}", self.bar.position(), self.steps);
        }
        self.bar.set_message(message.to_string());
    }

    fn finish(&self, message: &str) {
        self.bar.finish_and_clear();
        eprintln!("{message} in {:.0?}", self.bar.elapsed());
    }
}

/// Runs one build step's command; on failure the error names the step and
/// ends with the tail of the command's output.
fn run_step(progress: &Progress, step: &str, cmd: &mut Command) -> Result<(), ImageError> {
    progress.step(step);
    run_quiet(cmd).map_err(|e| ImageError::Step(format!("{step}: {e}")))
}

/// Runs a command with its output captured; fails with the last lines of it.
fn run_quiet(cmd: &mut Command) -> Result<(), ImageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Step(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(ImageError::Step(format!(
        "{program} failed ({}):\n{tail}",
        out.status
    )))
}
