//! Bootable disk images for the qemu backend.
//!
//! `build` makes a Debian root filesystem directory with the rootfs builder
//! (minbase, dpkg-dev and the `dep8` user, plus a kernel, systemd, udev,
//! sshd and Python's minimal interpreter for autopkgtest-virt-qemu),
//! prepares it for the qemu backend and for autopkgtest-virt-qemu (below),
//! and writes a standard disk: a GPT with a BIOS boot partition, an EFI
//! system partition and the ext4 root, GRUB for BIOS and for UEFI
//! ([`disk`]). No loop devices, no device-mapper, nothing mounted. The
//! image carries its kernel and initrd in `/boot`; the raw disk is
//! converted to qcow2 at the end.

mod disk;

use crate::rootfs::{self, RootfsSpec, Variant};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use disk::{BIOS_BOOT_TYPE, ESP_TYPE};

/// Guest packages beyond the rootfs builder's: what booting and the ssh
/// channel need, and the interpreter autopkgtest-virt-qemu's helpers run
/// with in the guest.
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "openssh-server",
    "python3-minimal",
    "iproute2",
];

/// Why a qemu image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QemuImageError {
    #[error(transparent)]
    Rootfs(#[from] rootfs::BuildError),
    /// Bad arguments or environment (not root, missing directory or tool).
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
    /// Disk size: a number of bytes or with K, M, G, T (e.g. `2G`).
    pub size: String,
    /// The qcow2 image to write.
    pub output: PathBuf,
    /// Mirror URL; mmdebstrap's default when `None`.
    pub mirror: Option<String>,
    /// More packages to install.
    pub extra_packages: Vec<String>,
}

/// Builds the image described by `spec`, calling `progress` with each step
/// and each line mmdebstrap prints; returns the image's path. Needs root
/// (mke2fs -d keeps file owners only when it can read them all) and
/// mmdebstrap, sfdisk, mke2fs, grub-mkimage (grub-pc-bin,
/// grub-efi-amd64-bin), mkfs.vfat, mtools and qemu-img.
pub fn build(
    spec: &QemuImageSpec,
    mut progress: impl FnMut(&str),
) -> Result<PathBuf, QemuImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(QemuImageError::Usage(
            "building a qemu image needs root".into(),
        ));
    }
    let layout = disk::Layout::new(disk::parse_size(&spec.size)?)?;
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
    // Work next to the output: the root tree and raw disk are large, and
    // the final rename must not cross filesystems.
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

    progress("[2/4] preparing the guest for the qemu backend and autopkgtest-virt-qemu");
    let uuid = new_uuid()?;
    customize(&root, &uuid)?;

    let raw = work.path().join("disk.raw");
    progress(&format!(
        "[3/4] writing a {} disk: GPT, ext4 root, GRUB for BIOS and UEFI",
        spec.size
    ));
    disk::write(&layout, &root, &uuid, &raw, work.path())?;
    let qcow2 = work.path().join("image.qcow2");
    progress("[4/4] converting to qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2))?;
    std::fs::rename(&qcow2, &output).map_err(|e| QemuImageError::io(output.display(), e))?;
    write_guest_boot_files(&root, &output)?;
    Ok(output)
}

/// Writes the guest's kernel and initrd (the files in its root tree) beside
/// the image.
fn write_guest_boot_files(root: &Path, image: &Path) -> Result<(), QemuImageError> {
    // /vmlinuz and /initrd.img are links to the files in /boot.
    let in_root = |link: &str| -> Result<PathBuf, QemuImageError> {
        let target = std::fs::read_link(root.join(link))
            .map_err(|e| QemuImageError::io(format!("/{link} in the guest"), e))?;
        Ok(root.join(target.strip_prefix("/").unwrap_or(&target)))
    };
    write_direct_boot_files(&in_root("vmlinuz")?, &in_root("initrd.img")?, image)
}

/// Beside `image`: its kernel for the qemu backend's direct boot, as
/// `IMAGE.vmlinux` or `IMAGE.vmlinuz`.
const DIRECT_BOOT_KERNELS: [&str; 2] = [".vmlinux", ".vmlinuz"];

/// The file `image` with `suffix` added to its name.
fn beside(image: &Path, suffix: &str) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether a kernel for direct boot is beside `image` (and so must follow
/// the image's updates).
pub fn has_direct_boot_files(image: &Path) -> bool {
    DIRECT_BOOT_KERNELS
        .iter()
        .any(|suffix| beside(image, suffix).is_file())
}

/// Writes `kernel` (a bzImage) and `initrd` beside the image, as
/// `IMAGE.vmlinux` and `IMAGE.initrd`, for the qemu backend's direct boot.
/// The kernel written is the ELF inside the xz-compressed bzImage: QEMU
/// starts it by its PVH entry, which spares the seconds the kernel takes
/// to decompress itself under emulation. A kernel that is not
/// xz-compressed is written as it is, as `IMAGE.vmlinuz`.
pub fn write_direct_boot_files(
    kernel: &Path,
    initrd: &Path,
    image: &Path,
) -> Result<(), QemuImageError> {
    for suffix in DIRECT_BOOT_KERNELS.iter().chain(&[".initrd"]) {
        let _ = std::fs::remove_file(beside(image, suffix));
    }
    std::fs::copy(initrd, beside(image, ".initrd"))
        .map_err(|e| QemuImageError::io(initrd.display(), e))?;
    let compressed = std::fs::read(kernel).map_err(|e| QemuImageError::io(kernel.display(), e))?;
    match decompress_kernel(&compressed) {
        Some(elf) => std::fs::write(beside(image, ".vmlinux"), elf),
        None => std::fs::write(beside(image, ".vmlinuz"), &compressed),
    }
    .map_err(|e| QemuImageError::io(image.display(), e))
}

/// The ELF kernel inside an xz-compressed bzImage (the first xz stream in
/// it, decompressed by `xz`), or `None`.
fn decompress_kernel(bz_image: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
    let start = bz_image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = xz.stdin.take()?;
    let payload = bz_image[start..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let out = xz.wait_with_output().ok()?;
    // xz stops reading at the stream's end: the rest of the pipe breaks.
    let _ = writer.join();
    (out.status.success() && out.stdout.starts_with(b"\x7fELF")).then_some(out.stdout)
}

/// A random UUID from the kernel, for the root filesystem.
fn new_uuid() -> Result<String, QemuImageError> {
    let path = "/proc/sys/kernel/random/uuid";
    std::fs::read_to_string(path)
        .map(|u| u.trim().to_string())
        .map_err(|e| QemuImageError::io(path, e))
}

/// Files dep8 adds to the guest, relative to its root, with their modes.
/// `/etc/fstab` and `/boot/grub/grub.cfg` name the root by its UUID and
/// are written by [`customize`].
const GUEST_FILES: &[(&str, u32, &str)] = &[
    ("etc/hostname", 0o644, "dep8\n"),
    (
        "etc/hosts",
        0o644,
        "127.0.0.1 localhost\n127.0.1.1 dep8\n::1 localhost ip6-localhost ip6-loopback\n",
    ),
    // qemu's user networking always gives the guest 10.0.2.15 (and DNS
    // on 10.0.2.3): set at once by a oneshot of dep8's, without DHCP and
    // without systemd-networkd, which waits for udev's coldplug before it
    // configures a link (3 s on the boot's critical path under
    // emulation). The kernel configures IPv6 by itself; nothing waits
    // for it.
    (
        "usr/local/sbin/dep8-network",
        0o755,
        include_str!("qemu/dep8-network"),
    ),
    (
        "etc/systemd/system/dep8-network.service",
        0o644,
        include_str!("qemu/dep8-network.service"),
    ),
    ("etc/resolv.conf", 0o644, "nameserver 10.0.2.3\n"),
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
    // The readiness signal: a line on dep8's virtio-serial port once sshd
    // is up, so the backend connects once, never into a booting guest.
    (
        "etc/systemd/system/dep8-ready.service",
        0o644,
        include_str!("qemu/dep8-ready.service"),
    ),
    (
        "usr/local/sbin/dep8-ready",
        0o755,
        include_str!("qemu/dep8-ready"),
    ),
    (
        "etc/udev/rules.d/60-dep8.rules",
        0o644,
        include_str!("qemu/60-dep8.rules"),
    ),
    (
        "etc/systemd/system/dep8-root-shell@.service",
        0o644,
        include_str!("qemu/dep8-root-shell@.service"),
    ),
    // An initramfs with just what mounts the root (6 MB instead of 36 MB
    // with every driver): it loads and starts seconds sooner under
    // emulation. The nested example boots the base image with these same
    // modules.
    (
        "etc/initramfs-tools/conf.d/dep8.conf",
        0o644,
        "MODULES=list\n",
    ),
    (
        "etc/initramfs-tools/modules",
        0o644,
        "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\nvirtio_net\nvirtio_console\n",
    ),
    // The initramfs's /init is dep8's: it mounts the root without udev
    // (about 2 s less under emulation), and hands over to initramfs-tools'
    // own /init for anything else.
    (
        "etc/initramfs-tools/hooks/dep8-fast-init",
        0o755,
        include_str!("qemu/dep8-fast-init-hook"),
    ),
    (
        "usr/share/dep8/fast-init",
        0o755,
        include_str!("qemu/dep8-fast-init"),
    ),
    // udev's coldplug would load these for hardware QEMU's `-machine pc`
    // has but the tests never use; cfg80211 (which systemd-networkd's
    // netlink lookup pulls in) checks its X.509 certificates on the way.
    (
        "etc/modprobe.d/dep8-blacklist.conf",
        0o644,
        MODULE_BLACKLIST,
    ),
    // The journal in memory: no flush to disk at boot, no writes after.
    (
        "etc/systemd/journald.conf.d/dep8.conf",
        0o644,
        "[Journal]\nStorage=volatile\n",
    ),
    // sshd's config is dep8's own: no `sshd -t` on the boot's critical path.
    (
        "etc/systemd/system/ssh.service.d/dep8.conf",
        0o644,
        "[Service]\nExecStartPre=\n",
    ),
];

/// Modules udev must not load in the guest (`blacklist NAME` lines).
const MODULE_BLACKLIST: &str = include_str!("qemu/dep8-blacklist.conf");

/// The guest's GRUB config; `@UUID@` is the root filesystem's.
const GRUB_CFG: &str = include_str!("qemu/grub.cfg");

/// Prepares the unpacked root tree for the qemu backend and for
/// autopkgtest-virt-qemu, whose root filesystem gets `uuid`.
fn customize(root: &Path, uuid: &str) -> Result<(), QemuImageError> {
    use std::os::unix::fs::PermissionsExt;
    let fstab = format!("UUID={uuid} / ext4 rw,errors=remount-ro 0 1\n");
    let grub_cfg = GRUB_CFG.replace("@UUID@", uuid);
    let generated = [
        ("etc/fstab", 0o644, fstab.as_str()),
        ("boot/grub/grub.cfg", 0o644, grub_cfg.as_str()),
    ];
    for (path, mode, text) in GUEST_FILES.iter().chain(&generated) {
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
    // Root logs in on the serial console without a password, as on
    // autopkgtest's images (the console is a socket or file of the host's;
    // the only network service is sshd on qemu's private user network).
    in_root(&["passwd", "--delete", "root"])?;
    in_root(&[
        "systemctl",
        "enable",
        "--quiet",
        "dep8-network.service",
        "dep8-fw-cfg-keys.service",
        "dep8-ready.service",
    ])?;
    // Background jobs only slow an emulated guest down, and so do gettys
    // on virtual consoles nobody sees (the serial console keeps its own).
    in_root(&[
        "systemctl",
        "mask",
        "--quiet",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
        "fstrim.timer",
        "getty-static.service",
        "getty@tty1.service",
        // The modules these load at boot load on first use anyway (their
        // /dev nodes, from kmod-static-nodes, and their filesystems);
        // efi_pstore has no EFI to work with under BIOS.
        "modprobe@configfs.service",
        "modprobe@dm_mod.service",
        "modprobe@efi_pstore.service",
        "modprobe@fuse.service",
        "modprobe@loop.service",
        // Network settings from the kernel command line: dep8 passes none.
        "systemd-network-generator.service",
    ])?;
    mask_generators(root)?;
    in_root(&["update-initramfs", "-u", "-k", "all"])?;
    mark_up_to_date_with_usr(root)
}

/// Writes `/etc/.updated` and `/var/.updated` as systemd-update-done would
/// (Debian does not ship it): with /usr's modification time, so that the
/// units for a changed /usr (`ConditionNeedsUpdate`: systemd-sysusers,
/// ldconfig) do not run at every boot of a throw-away overlay. Packages
/// installed later run those tools themselves.
fn mark_up_to_date_with_usr(root: &Path) -> Result<(), QemuImageError> {
    let usr = root.join("usr");
    let mtime = std::fs::metadata(&usr)
        .and_then(|m| m.modified())
        .map_err(|e| QemuImageError::io(usr.display(), e))?;
    let nsec = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for dir in ["etc", "var"] {
        let path = root.join(dir).join(".updated");
        let write = || -> std::io::Result<()> {
            std::fs::write(
                &path,
                format!("# Written by dep8 image build qemu, as systemd-update-done would.\nTIMESTAMP_NSEC={nsec}\n"),
            )?;
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(mtime)
        };
        write().map_err(|e| QemuImageError::io(path.display(), e))?;
    }
    Ok(())
}

/// systemd generators that find nothing to do in dep8's guest (no
/// encrypted, integrity or verity volumes, no hibernation image, a root
/// named in fstab) but cost a process each at every boot under emulation.
const MASKED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
];

/// Masks [`MASKED_GENERATORS`]: a link to /dev/null in
/// /etc/systemd/system-generators.
fn mask_generators(root: &Path) -> Result<(), QemuImageError> {
    let dir = root.join("etc/systemd/system-generators");
    std::fs::create_dir_all(&dir).map_err(|e| QemuImageError::io(dir.display(), e))?;
    for name in MASKED_GENERATORS {
        let link = dir.join(name);
        std::os::unix::fs::symlink("/dev/null", &link)
            .map_err(|e| QemuImageError::io(link.display(), e))?;
    }
    Ok(())
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
    fn the_kernel_is_the_elf_in_the_bz_image_s_xz_stream() {
        let mut xz = Command::new("xz")
            .args(["-zc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz");
        std::io::Write::write_all(&mut xz.stdin.take().unwrap(), b"\x7fELF kernel").unwrap();
        let stream = xz.wait_with_output().unwrap().stdout;
        let bz_image = [b"setup code".as_slice(), &stream, b"trailer"].concat();
        assert_eq!(decompress_kernel(&bz_image).unwrap(), b"\x7fELF kernel");
        assert_eq!(decompress_kernel(b"no stream in it"), None);
    }

    #[test]
    fn grub_cfg_names_the_root_by_uuid() {
        let cfg = GRUB_CFG.replace("@UUID@", "1234");
        assert!(
            cfg.contains("root=UUID=1234 rw console=ttyS0 no_timer_check"),
            "{cfg}"
        );
        assert!(!cfg.contains('@'));
    }

    #[test]
    fn blacklist_spares_the_modules_the_guest_needs() {
        let blacklisted: Vec<&str> = MODULE_BLACKLIST
            .lines()
            .filter_map(|line| line.strip_prefix("blacklist "))
            .collect();
        assert!(blacklisted.contains(&"cfg80211"), "{blacklisted:?}");
        // The root disk, the network, the consoles and the random source,
        // autopkgtest-virt-qemu's shared dir and dep8's ssh keys.
        for needed in [
            "virtio_pci",
            "virtio_blk",
            "ext4",
            "crc32c_generic",
            "virtio_net",
            "virtio_console",
            "virtio_rng",
            "9p",
            "9pnet_virtio",
            "qemu_fw_cfg",
        ] {
            assert!(!blacklisted.contains(&needed), "{needed} is blacklisted");
        }
    }
}
