//! Bootable disk images for the qemu backend.
//!
//! `build` makes a Debian root filesystem directory with the rootfs builder
//! (minbase, dpkg-dev and the `dep8` user, plus a kernel, systemd, udev and
//! sshd), prepares it for the qemu backend (fstab, a static network address
//! for qemu's user networking, the unit that installs per-boot ssh keys
//! from fw_cfg), writes it into an
//! ext4 filesystem with `mke2fs -d` (no loop devices, no device-mapper) and
//! converts that to qcow2. The image has no partition table and no boot
//! loader: the backend boots it directly with the kernel and initrd kept
//! beside it as `IMAGE.vmlinuz` and `IMAGE.initrd`.

use crate::rootfs::{self, RootfsSpec, Variant};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Guest packages beyond the rootfs builder's: what booting and the ssh
/// channel need.
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "openssh-server",
];

/// Why a qemu image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QemuImageError {
    #[error(transparent)]
    Rootfs(#[from] rootfs::BuildError),
    /// Bad arguments or environment (not root, missing directory).
    #[error("{0}")]
    Usage(String),
    /// A step after mmdebstrap failed.
    #[error("{0}")]
    Step(String),
}

impl QemuImageError {
    fn io(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        QemuImageError::Step(format!("{what}: {err}"))
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct QemuImageSpec {
    /// Debian release (codename or suite), e.g. `bookworm`.
    pub release: String,
    /// Filesystem size as mke2fs takes it, e.g. `2G`.
    pub size: String,
    /// The qcow2 image to write; the kernel and initrd go beside it.
    pub output: PathBuf,
    /// Mirror URL; mmdebstrap's default when `None`.
    pub mirror: Option<String>,
    /// More packages to install.
    pub extra_packages: Vec<String>,
}

/// The files of a built image.
#[derive(Clone, Debug)]
pub struct QemuImage {
    pub image: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The kernel and initrd paths that go with `image`.
pub fn boot_files(image: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut name = image.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with(".vmlinuz"), with(".initrd"))
}

/// Builds the image described by `spec`, calling `progress` with each step
/// and each line mmdebstrap prints. Needs root (mke2fs -d keeps file owners
/// only when it can read them all) and mmdebstrap, mke2fs, qemu-img.
pub fn build(
    spec: &QemuImageSpec,
    mut progress: impl FnMut(&str),
) -> Result<QemuImage, QemuImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(QemuImageError::Usage(
            "building a qemu image needs root".into(),
        ));
    }
    let output = std::path::absolute(&spec.output)
        .map_err(|e| QemuImageError::io(spec.output.display(), e))?;
    let out_dir = output.parent().ok_or_else(|| {
        QemuImageError::Usage(format!("{}: no parent directory", output.display()))
    })?;
    if !out_dir.is_dir() {
        return Err(QemuImageError::Usage(format!(
            "{}: the output directory does not exist",
            out_dir.display()
        )));
    }
    // Work next to the output: the root tree and raw filesystem are large,
    // and the final rename must not cross filesystems.
    let work = tempfile::Builder::new()
        .prefix(".dep8-image.")
        .tempdir_in(out_dir)
        .map_err(|e| QemuImageError::io(out_dir.display(), e))?;
    let root = work.path().join("root");

    progress(&format!(
        "[1/4] installing Debian {} with mmdebstrap",
        spec.release
    ));
    let mut include: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    include.extend(spec.extra_packages.iter().cloned());
    rootfs::build(
        &RootfsSpec {
            release: spec.release.clone(),
            variant: Variant::Minbase,
            mirror: spec.mirror.clone(),
            include,
            output: root.clone(),
        },
        &mut progress,
    )?;

    progress("[2/4] preparing the guest for the qemu backend");
    customize(&root)?;
    let (kernel, initrd) = boot_files(&output);
    copy_boot_file(&root, "vmlinuz-", &kernel)?;
    copy_boot_file(&root, "initrd.img-", &initrd)?;

    let raw = work.path().join("root.ext4");
    progress(&format!("[3/4] writing a {} ext4 filesystem", spec.size));
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "dep8-root", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg(&spec.size))?;
    let qcow2 = work.path().join("image.qcow2");
    progress("[4/4] converting to qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2))?;
    std::fs::rename(&qcow2, &output).map_err(|e| QemuImageError::io(output.display(), e))?;
    Ok(QemuImage {
        image: output,
        kernel,
        initrd,
    })
}

/// Copies the one `/boot/PREFIX*` file of the root tree to `to`.
fn copy_boot_file(root: &Path, prefix: &str, to: &Path) -> Result<(), QemuImageError> {
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map_err(|e| QemuImageError::io(boot.display(), e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    let from = match found.as_slice() {
        [one] => one,
        [] => {
            return Err(QemuImageError::Step(format!(
                "no {}/{prefix}* in the new root filesystem",
                boot.display()
            )))
        }
        _ => {
            return Err(QemuImageError::Step(format!(
                "several kernels in {}: {found:?}",
                boot.display()
            )))
        }
    };
    std::fs::copy(from, to).map_err(|e| QemuImageError::io(to.display(), e))?;
    Ok(())
}

/// Files dep8 adds to the guest, relative to its root, with their modes.
const GUEST_FILES: &[(&str, u32, &str)] = &[
    ("etc/fstab", 0o644, "/dev/vda / ext4 rw,errors=remount-ro 0 1\n"),
    ("etc/hostname", 0o644, "dep8\n"),
    (
        "etc/hosts",
        0o644,
        "127.0.0.1 localhost\n127.0.1.1 dep8\n::1 localhost ip6-localhost ip6-loopback\n",
    ),
    // qemu's user networking always gives the guest 10.0.2.15; a static
    // address saves the DHCP round trip on every boot.
    (
        "etc/systemd/network/50-dep8.network",
        0o644,
        "[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n",
    ),
    (
        "etc/ssh/sshd_config.d/dep8.conf",
        0o644,
        "# dep8: only the per-boot host key from fw_cfg, keys only\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UseDNS no\n",
    ),
    (
        "usr/local/sbin/dep8-fw-cfg-keys",
        0o755,
        include_str!("qemu/dep8-fw-cfg-keys"),
    ),
    (
        "etc/systemd/system/dep8-fw-cfg-keys.service",
        0o644,
        include_str!("qemu/dep8-fw-cfg-keys.service"),
    ),
];

/// Prepares the unpacked root tree for the qemu backend.
fn customize(root: &Path) -> Result<(), QemuImageError> {
    use std::os::unix::fs::PermissionsExt;
    for (path, mode, text) in GUEST_FILES {
        let file = root.join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| QemuImageError::io(dir.display(), e))?;
        }
        std::fs::write(&file, text).map_err(|e| QemuImageError::io(file.display(), e))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| QemuImageError::io(file.display(), e))?;
    }
    // Every testbed gets its own host key at boot; none is baked in.
    let ssh_dir = root.join("etc/ssh");
    for entry in
        std::fs::read_dir(&ssh_dir).map_err(|e| QemuImageError::io(ssh_dir.display(), e))?
    {
        let entry = entry.map_err(|e| QemuImageError::io(ssh_dir.display(), e))?;
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(entry.path())
                .map_err(|e| QemuImageError::io(entry.path().display(), e))?;
        }
    }
    let in_root = |args: &[&str]| run(Command::new("chroot").arg(root).args(args));
    // A console login for debugging (the image has no network service
    // besides sshd on qemu's private user network).
    in_root(&["passwd", "--delete", "root"])?;
    in_root(&[
        "systemctl",
        "enable",
        "--quiet",
        "systemd-networkd.service",
        "dep8-fw-cfg-keys.service",
    ])?;
    // Background jobs only slow an emulated guest down.
    in_root(&[
        "systemctl",
        "mask",
        "--quiet",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
    ])
}

/// Runs a command with its output captured; fails with the last lines of it.
fn run(cmd: &mut Command) -> Result<(), QemuImageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| QemuImageError::Step(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(QemuImageError::Step(format!(
        "{program} failed ({}):\n{tail}",
        out.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_files_sit_beside_the_image() {
        let (k, i) = boot_files(Path::new("/x/bookworm.qcow2"));
        assert_eq!(k, Path::new("/x/bookworm.qcow2.vmlinuz"));
        assert_eq!(i, Path::new("/x/bookworm.qcow2.initrd"));
    }
}
