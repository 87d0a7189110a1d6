//! Choosing the accelerator: KVM only when a probe shows that a guest
//! really runs under it, and faster than under TCG (software emulation);
//! TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts (paravirtualised or
//! nested KVM in a VM) `-cpu host` aborts QEMU, a guest hangs, or the BIOS
//! runs but every boot loader crawls or stops. The probe boots a tiny disk
//! whose boot sector writes a word to the firmware's debug port: the BIOS
//! has to find the disk and hand over to real-mode code, as it does for a
//! boot loader. It runs under TCG first, then under KVM, which must say
//! the word within TCG's time (at least [`KVM_PROBE_MIN`]); a working KVM
//! takes a fraction of it. No image is needed, so every boot (a disk's
//! boot loader or a kernel) gets KVM where it works. The verdict is cached
//! per host kernel and QEMU binary.

use dep8_testbed::{Result, TestbedError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the TCG probe may take (it takes about a second).
const TCG_PROBE_LIMIT: Duration = Duration::from_secs(30);

/// The least time the KVM probe is given, however fast TCG was.
const KVM_PROBE_MIN: Duration = Duration::from_secs(2);

/// What the probe's boot sector writes to the debug port.
const PROBE_WORD: &str = "dep8-probe-booted";

/// A boot sector (real mode, loaded at 0:7c00) that writes [`PROBE_WORD`]
/// to port 0x402 (SeaBIOS's debug port) and halts.
fn probe_boot_sector() -> Vec<u8> {
    let code: [u8; 22] = [
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xFC, // cld
        0xBE, 0x16, 0x7C, // mov si, 0x7c16 (the word, after this code)
        0xBA, 0x02, 0x04, // mov dx, 0x402
        0xAC, // next: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz halt
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp next
        0xF4, // halt: hlt
        0xEB, 0xFD, // jmp halt
    ];
    let mut sector = code.to_vec();
    sector.extend_from_slice(PROBE_WORD.as_bytes());
    sector.extend_from_slice(b"\n\0");
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xAA]);
    // A 1 MiB disk: SeaBIOS does not boot from one of 64 KiB.
    sector.resize(1 << 20, 0);
    sector
}

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
    let dir = tempfile::Builder::new()
        .prefix("dep8-kvm-probe.")
        .tempdir()
        .map_err(|e| TestbedError::failure("creating a temp dir", e))?;
    let disk = dir.path().join("probe.img");
    std::fs::write(&disk, probe_boot_sector())
        .map_err(|e| TestbedError::failure(disk.display(), e))?;
    let tcg = probe(qemu, &["-accel", "tcg"], &disk, TCG_PROBE_LIMIT).await?;
    let kvm_limit = tcg.map_or(TCG_PROBE_LIMIT, |t| t.max(KVM_PROBE_MIN));
    let kvm = probe(qemu, &["-accel", "kvm", "-cpu", "host"], &disk, kvm_limit).await?;
    tracing::info!("KVM probe: a boot sector ran after {kvm:.1?} under KVM, {tcg:.1?} under TCG");
    let accel = if kvm.is_some() {
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

/// Boots the probe `disk` with `accel` (QEMU's words); how long until its
/// boot sector ran, or None if it did not within `limit` or QEMU gave up
/// (`-cpu host` refused, KVM failed to start).
async fn probe(
    qemu: &str,
    accel: &[&str],
    disk: &Path,
    limit: Duration,
) -> Result<Option<Duration>> {
    let log = disk.with_extension(accel[1]);
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "pc", "-m", "64"])
        .args(accel)
        .arg("-chardev")
        .arg(format!("file,id=firmware,path={}", log.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=firmware"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            disk.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| TestbedError::failure(format!("cannot run {qemu}"), e))?;
    let booted = loop {
        if std::fs::read_to_string(&log).is_ok_and(|said| said.contains(PROBE_WORD)) {
            break Some(started.elapsed());
        }
        if matches!(child.try_wait(), Ok(Some(_))) || started.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill().await;
    Ok(booted)
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
    // (probe=: a verdict of an earlier, weaker probe is not taken.)
    format!(
        "kernel={release} qemu={} mtime={stamp} probe=boot-sector",
        binary.display()
    )
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

    /// The probe's boot sector runs (under TCG, which every host has).
    #[tokio::test]
    async fn the_probe_disk_boots() {
        if which("qemu-system-x86_64").is_none() {
            eprintln!("SKIP: qemu-system-x86_64 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("probe.img");
        std::fs::write(&disk, probe_boot_sector()).unwrap();
        let tcg = ["-accel", "tcg"];
        let booted = probe("qemu-system-x86_64", &tcg, &disk, TCG_PROBE_LIMIT);
        assert!(
            booted.await.unwrap().is_some(),
            "the boot sector said nothing"
        );
    }

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
