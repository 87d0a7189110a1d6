//! Template containers for the lxc backend.
//!
//! `build` makes a privileged lxc container `NAME` in the lxc path (lxc's
//! default, /var/lib/lxc for root): a directory-backed root filesystem with
//! an init (the rootfs builder's, plus systemd-sysv; or an existing rootfs
//! tarball that has one) and a config file. The backend never starts the
//! template itself: it boots overlay clones of it.

use crate::rootfs::{self, RootfsSpec, Variant};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The network a template's containers get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Only loopback (`lxc.net.0.type = empty`): works on every host, no
    /// bridge needed; test dependencies must be in the template.
    #[default]
    Empty,
    /// The host's network namespace (`lxc.net.0.type = none`): apt works
    /// wherever the host's does, with no bridge; the container's root can
    /// reconfigure the host's interfaces.
    Host,
    /// A veth pair on lxc's bridge (`lxcbr0`, from the lxc-net service).
    Bridge,
}

/// Where the root filesystem comes from.
#[derive(Clone, Debug)]
pub enum RootfsSource {
    /// Built with mmdebstrap: this release from this mirror (mmdebstrap's
    /// default when `None`), with these extra packages.
    Build {
        release: String,
        mirror: Option<String>,
        include: Vec<String>,
    },
    /// An existing rootfs tarball with an init (`dep8 image build rootfs
    /// --include systemd-sysv`).
    Tarball(PathBuf),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LxcTemplateSpec {
    pub name: String,
    /// The lxc path; lxc's default when `None`.
    pub lxcpath: Option<PathBuf>,
    pub rootfs: RootfsSource,
    pub network: Network,
    /// Include lxc's nesting.conf: tests may start containers of their own
    /// (the backend then offers `nesting`).
    pub nesting: bool,
    /// Replace a container of that name.
    pub replace: bool,
}

/// Why a template could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LxcTemplateError {
    #[error(transparent)]
    Rootfs(#[from] rootfs::BuildError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Step(String),
}

fn io(what: impl std::fmt::Display, err: std::io::Error) -> LxcTemplateError {
    LxcTemplateError::Step(format!("{what}: {err}"))
}

/// The config file's text for a container `name` on `rootfs`.
pub fn config(
    name: &str,
    rootfs: &Path,
    network: Network,
    nesting: bool,
    apparmor: bool,
) -> String {
    let mut text = String::from(
        "# Made by `dep8 image build lxc`: a template for dep8's lxc backend.\n\
         lxc.include = /usr/share/lxc/config/common.conf\n",
    );
    if nesting {
        text.push_str("lxc.include = /usr/share/lxc/config/nesting.conf\n");
    }
    text.push_str(&format!(
        "lxc.arch = {}\nlxc.uts.name = {name}\nlxc.rootfs.path = dir:{}\n",
        std::env::consts::ARCH,
        rootfs.display()
    ));
    text.push_str(match network {
        Network::Empty => "lxc.net.0.type = empty\n",
        Network::Host => "lxc.net.0.type = none\n",
        Network::Bridge => "lxc.net.0.type = veth\nlxc.net.0.link = lxcbr0\nlxc.net.0.flags = up\n",
    });
    if !apparmor {
        // No AppArmor on this host: lxc's default profile cannot load.
        text.push_str("lxc.apparmor.profile = unconfined\n");
    }
    text
}

/// Whether the host runs AppArmor.
fn host_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// Runs a command; fails with its stderr.
fn run(cmd: &mut Command) -> Result<String, LxcTemplateError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io(format!("{cmd:?}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LxcTemplateError::Step(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Builds the template; returns its directory (`LXCPATH/NAME`). Needs
/// root and lxc; mmdebstrap unless a tarball is given.
pub fn build(
    spec: &LxcTemplateSpec,
    mut progress: impl FnMut(&str),
) -> Result<PathBuf, LxcTemplateError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LxcTemplateError::Usage(
            "building an lxc template needs root (a privileged container)".into(),
        ));
    }
    let lxcpath = match &spec.lxcpath {
        Some(path) => path.clone(),
        None => PathBuf::from(
            run(Command::new("lxc-config").arg("lxc.lxcpath"))
                .map_err(|_| {
                    LxcTemplateError::Usage("lxc is not installed (apt-get install lxc)".into())
                })?
                .trim(),
        ),
    };
    if spec.name.is_empty() || spec.name.contains('/') || spec.name.starts_with('.') {
        return Err(LxcTemplateError::Usage(format!(
            "{:?} is not a container name",
            spec.name
        )));
    }
    let dir = lxcpath.join(&spec.name);
    if dir.exists() && !spec.replace {
        return Err(LxcTemplateError::Usage(format!(
            "lxc container {} exists ({}): give --replace to make it again",
            spec.name,
            dir.display()
        )));
    }
    std::fs::create_dir_all(&lxcpath).map_err(|e| io(lxcpath.display(), e))?;
    // Built beside the container, renamed into place at the end.
    let work = tempfile::Builder::new()
        .prefix(".dep8-image.")
        .tempdir_in(&lxcpath)
        .map_err(|e| io(lxcpath.display(), e))?;
    let root = work.path().join("rootfs");
    match &spec.rootfs {
        RootfsSource::Build {
            release,
            mirror,
            include,
        } => {
            progress(&format!(
                "[1/2] installing Debian {release} with systemd-sysv (mmdebstrap)"
            ));
            let mut include = include.clone();
            include.insert(0, "systemd-sysv".into());
            rootfs::build(
                &RootfsSpec {
                    release: release.clone(),
                    variant: Variant::Minbase,
                    mirror: mirror.clone(),
                    include,
                    output: root.clone(),
                },
                &mut progress,
            )?;
        }
        RootfsSource::Tarball(tarball) => {
            progress(&format!("[1/2] unpacking {}", tarball.display()));
            std::fs::create_dir(&root).map_err(|e| io(root.display(), e))?;
            run(Command::new("tar")
                .arg("-C")
                .arg(&root)
                .args(["--numeric-owner", "--exclude=./dev/*", "-xf"])
                .arg(tarball))?;
        }
    }
    if std::fs::symlink_metadata(root.join("sbin/init")).is_err() {
        return Err(LxcTemplateError::Usage(
            "the root filesystem has no /sbin/init: a container needs an init \
             (build the tarball with `dep8 image build rootfs --include systemd-sysv`)"
                .into(),
        ));
    }
    progress("[2/2] writing the container's config");
    if dir.exists() {
        let destroyed = Command::new("lxc-destroy")
            .arg(format!("--lxcpath={}", lxcpath.display()))
            .args(["--force", "--quiet", "--name", &spec.name])
            .status();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| io(format!("removing the old container ({destroyed:?})"), e))?;
        }
    }
    let text = config(
        &spec.name,
        &dir.join("rootfs"),
        spec.network,
        spec.nesting,
        host_has_apparmor(),
    );
    std::fs::write(work.path().join("config"), text).map_err(|e| io("config", e))?;
    let built = work.keep();
    std::fs::rename(&built, &dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&built);
        io(
            format!("renaming {} to {}", built.display(), dir.display()),
            e,
        )
    })?;
    // lxc wants the container dir private, as lxc-create makes it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770))
        .map_err(|e| io(dir.display(), e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file() {
        let text = config(
            "t",
            Path::new("/var/lib/lxc/t/rootfs"),
            Network::Empty,
            false,
            true,
        );
        assert!(text.contains("lxc.rootfs.path = dir:/var/lib/lxc/t/rootfs\n"));
        assert!(text.contains("lxc.net.0.type = empty\n"));
        assert!(!text.contains("nesting") && !text.contains("apparmor"));
        let text = config("t", Path::new("/r"), Network::Host, true, false);
        assert!(text.contains("lxc.net.0.type = none\n"));
        assert!(text.contains("lxc.include = /usr/share/lxc/config/nesting.conf\n"));
        // After nesting.conf, which names an AppArmor profile.
        assert!(text.ends_with("lxc.apparmor.profile = unconfined\n"));
    }
}
