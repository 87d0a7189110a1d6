//! Choosing the accelerator: KVM only when a boot probe shows that a guest
//! kernel really runs under it, TCG (software emulation) otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts (paravirtualised KVM in
//! a VM) a guest kernel hangs. The probe boots the testbed's own kernel
//! with no root filesystem and `panic=-1 -no-reboot`: under a working KVM it
//! panics and QEMU exits within a second or two. The verdict is cached per
//! host kernel and QEMU binary.

use dep8_core::testbed::{Result, TestbedError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a KVM boot probe may take before KVM is declared broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model dep8 picks when the user gave none: the host's own
    /// under KVM (anything else only hides features, and nested guests need
    /// VMX/SVM), the stable baseline `qemu64` under TCG, which every QEMU
    /// version emulates the same way and Debian's amd64 baseline runs on,
    /// without its SVM flag: TCG's SVM is too partial for KVM in the guest
    /// (`kvm_amd` loads, /dev/kvm appears, and a nested guest dies at its
    /// first instruction), so the guest is told the truth and a nested VM
    /// falls back to software emulation.
    pub fn default_cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "qemu64,-svm",
        }
    }
}

/// Picks the accelerator for `qemu`, probing KVM with `kernel` when the
/// cache has no verdict. Without a kernel (EFI boot) KVM is used only when
/// an earlier probe proved it.
pub async fn choose(qemu: &str, kernel: Option<&Path>) -> Result<Accel> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let key = cache_key(qemu);
    let cache = cache_file();
    if let Some(known) = cache.as_deref().and_then(|f| read_cache(f, &key)) {
        return Ok(known);
    }
    let Some(kernel) = kernel else {
        return Ok(Accel::Tcg);
    };
    let accel = if probe_kvm(qemu, kernel).await? {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    tracing::info!("KVM boot probe: using {}", accel.name());
    if let Some(file) = cache {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // A lost cache only costs another probe.
        let _ = std::fs::write(&file, format!("{key}\n{}\n", accel.name()));
    }
    Ok(accel)
}

/// Boots `kernel` under KVM; true when it got as far as its panic.
async fn probe_kvm(qemu: &str, kernel: &Path) -> Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("dep8-kvm-probe.")
        .tempdir()
        .map_err(|e| TestbedError::failure("creating a temp dir", e))?;
    let log = dir.path().join("console");
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| TestbedError::failure(format!("cannot run {qemu}"), e))?;
    let exited = tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await;
    if exited.is_err() {
        let _ = child.kill().await;
        return Ok(false);
    }
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    Ok(console.contains("Kernel panic"))
}

/// Identifies the host kernel and QEMU binary a verdict holds for.
fn cache_key(qemu: &str) -> String {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let binary = which(qemu).unwrap_or_else(|| PathBuf::from(qemu));
    let stamp = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    format!("kernel={release} qemu={} mtime={stamp}", binary.display())
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `$XDG_CACHE_HOME/dep8/qemu-kvm-probe` (or under `~/.cache`).
fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dep8/qemu-kvm-probe"))
}

fn read_cache(file: &Path, key: &str) -> Option<Accel> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("probe");
        std::fs::write(&file, "k1\ntcg\n").unwrap();
        assert_eq!(read_cache(&file, "k1"), Some(Accel::Tcg));
        assert_eq!(read_cache(&file, "other"), None);
        std::fs::write(&file, "k1\nkvm\n").unwrap();
        assert_eq!(read_cache(&file, "k1"), Some(Accel::Kvm));
    }
}
