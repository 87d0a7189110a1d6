//! Choosing the accelerator: KVM only when a probe shows that a guest
//! really runs under it, TCG (software emulation) otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts (paravirtualised KVM in
//! a VM) a guest hangs, or `-cpu host` aborts QEMU. The probe starts a VM
//! with no disk under `-accel kvm -cpu host`: under a working KVM its BIOS
//! runs and says it found nothing to boot on its debug port within a
//! second; a probe that says nothing within [`PROBE_TIMEOUT`] is killed.
//! No image is needed, so every boot (a disk's boot loader or a kernel)
//! gets KVM where it works. The verdict is cached per host kernel and QEMU
//! binary.

use dep8_testbed::{Result, TestbedError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a KVM probe may take before KVM is declared broken.
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

/// Picks the accelerator for `qemu`, probing KVM when the cache has no
/// verdict.
pub async fn choose(qemu: &str) -> Result<Accel> {
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
    let accel = if probe_kvm(qemu).await? {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    tracing::info!("KVM probe: using {}", accel.name());
    if let Some(file) = cache {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // A lost cache only costs another probe.
        let _ = std::fs::write(&file, format!("{key}\n{}\n", accel.name()));
    }
    Ok(accel)
}

/// Starts a VM without disks under KVM; true when its BIOS got as far as
/// finding nothing to boot.
async fn probe_kvm(qemu: &str) -> Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("dep8-kvm-probe.")
        .tempdir()
        .map_err(|e| TestbedError::failure("creating a temp dir", e))?;
    let log = dir.path().join("firmware");
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args([
            "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "64",
        ])
        .arg("-chardev")
        .arg(format!("file,id=firmware,path={}", log.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=firmware"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| TestbedError::failure(format!("cannot run {qemu}"), e))?;
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    let works = loop {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if said.contains("No bootable device") {
            break true;
        }
        // QEMU gave up (`-cpu host` refused, KVM failed to start) or hangs.
        if matches!(child.try_wait(), Ok(Some(_))) || tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill().await;
    Ok(works)
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
