//! `dep8 image update`: brings an image built by `dep8 image build` up to
//! date in place (apt-get update, dist-upgrade, autoremove), keeping the
//! package lists, so that runs without `-U` need no `apt-get update` and
//! runs with it have little to upgrade.
//!
//! A rootfs tarball is unpacked into a temp dir next to it, upgraded in a
//! chroot inside a private mount and pid namespace (util-linux `unshare`:
//! nothing stays mounted on the host, whatever happens), packed again with
//! the same compression (tar picks it from the name) under a temporary
//! name, and renamed over the original. A rootfs dir (an lxc template's)
//! is upgraded the same way in place. A qemu disk image is upgraded by
//! its own guest (the qemu backend's `update_image`, with
//! [`APT_UPGRADE`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What an update runs as root in the image: apt's lists refreshed and
/// kept, every package upgraded, what nothing needs removed, the
/// downloaded packages dropped.
pub const APT_UPGRADE: &str = "apt-get update
apt-get -y -q -o Dpkg::Options::=--force-confnew dist-upgrade
apt-get -y -q --purge autoremove
apt-get clean";

/// A shell function, `upgrade ROOT`, run in private mount and pid
/// namespaces: [`APT_UPGRADE`] in a chroot of the rootfs dir ROOT, which
/// gets the host's resolv.conf and a /dev of bind mounts on a tmpfs (both
/// gone after: the image keeps its own), and /proc.
const UPGRADE_IN_CHROOT: &str = r#"upgrade() {
root=$1
etc=$root/etc
keep=
if [ -e "$etc/resolv.conf" ] || [ -L "$etc/resolv.conf" ]; then
    keep=$etc/.dep8-resolv.conf
    mv "$etc/resolv.conf" "$keep"
fi
cp -L /etc/resolv.conf "$etc/resolv.conf"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755 dep8-dev "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -ec "$APT_UPGRADE"
umount -R "$root/dev"
umount "$root/proc"
rm -f "$etc/resolv.conf"
[ -z "$keep" ] || mv "$keep" "$etc/resolv.conf"
}
"#;

/// `$1` tarball, `$2` new tarball, `$3` the dir to unpack in: unpacks,
/// upgrades, packs with the same compression (tar picks it from the name).
const UPDATE_ROOTFS: &str = r#"tarball=$1 out=$2 dir=$3
echo "unpacking $tarball"
tar --numeric-owner -C "$dir" -xf "$tarball"
upgrade "$dir"
echo "packing $out"
tar --numeric-owner -C "$dir" -caf "$out" .
"#;

/// Why an update failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}: no such image")]
    Missing(PathBuf),
    #[error("updating an image needs root (its files belong to many users)")]
    NotRoot,
    #[error("updating {image} failed: {detail}")]
    Failed { image: PathBuf, detail: String },
}

/// Updates the rootfs tarball `tarball` in place, calling `progress` with
/// each line apt and the script print.
pub fn update_rootfs(tarball: &Path, progress: impl FnMut(&str)) -> Result<(), UpdateError> {
    if !tarball.is_file() {
        return Err(UpdateError::Missing(tarball.to_path_buf()));
    }
    let failed = |detail: String| UpdateError::Failed {
        image: tarball.to_path_buf(),
        detail,
    };
    let tarball = std::path::absolute(tarball).map_err(|e| failed(e.to_string()))?;
    let parent = tarball.parent().unwrap_or(Path::new("/"));
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let work = tempfile::Builder::new()
        .prefix(".dep8-update.")
        .tempdir_in(parent)
        .map_err(|e| failed(format!("a temp dir in {}: {e}", parent.display())))?;
    let root = work.path().join("root");
    std::fs::create_dir(&root).map_err(|e| failed(e.to_string()))?;
    // Keep the extension last: tar picks the compression from it.
    let partial = work.path().join(format!("new.{name}"));
    let args = [tarball.as_os_str(), partial.as_os_str(), root.as_os_str()];
    run_upgrade(&tarball, UPDATE_ROOTFS, &args, progress)?;
    std::fs::rename(&partial, &tarball)
        .map_err(|e| failed(format!("renaming the new tarball over it: {e}")))
}

/// Updates the rootfs dir `root` in place (an lxc template's rootfs, a
/// schroot directory chroot), calling `progress` with each line apt
/// prints.
pub fn update_rootfs_dir(root: &Path, progress: impl FnMut(&str)) -> Result<(), UpdateError> {
    if !root.join("etc").is_dir() {
        return Err(UpdateError::Missing(root.to_path_buf()));
    }
    let root = std::path::absolute(root).map_err(|e| UpdateError::Failed {
        image: root.to_path_buf(),
        detail: e.to_string(),
    })?;
    run_upgrade(&root, "upgrade \"$1\"", &[root.as_os_str()], progress)
}

/// Runs `script` (after the `upgrade` function) with `args` as root in
/// new mount and pid namespaces (util-linux `unshare`: nothing stays
/// mounted on the host, whatever happens).
fn run_upgrade(
    image: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
    mut progress: impl FnMut(&str),
) -> Result<(), UpdateError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(UpdateError::NotRoot);
    }
    let failed = |detail: String| UpdateError::Failed {
        image: image.to_path_buf(),
        detail,
    };
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--kill-child",
        ])
        .args([
            "--",
            "bash",
            "-ec",
            &format!("{UPGRADE_IN_CHROOT}\n{script}"),
            "dep8-update",
        ])
        .args(args)
        .env("APT_UPGRADE", APT_UPGRADE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run unshare (util-linux): {e}")))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            progress(&line);
        }
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    let said = errors.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = said
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(String::as_str)
        .collect();
    Err(failed(format!("{status}: {}", tail.join("\n"))))
}
