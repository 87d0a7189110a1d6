//! The `unshare` backend: a Debian root filesystem run in private Linux
//! namespaces, with no daemon and no init.
//!
//! Opening a testbed starts a *holder*: util-linux `unshare` running a small
//! bash script (`holder.sh`) as pid 1 of new mount, pid, uts, ipc and
//! (with `--private-network`) net namespaces. A rootfs tarball is kept
//! unpacked in dep8's cache dir for every open ([`dep8_testbed::kept`]; as
//! root, when the run has the cache). Otherwise the holder unpacks it once
//! per open into a tmpfs (RAM the size of the rootfs, gone with the
//! namespace). A `--rootfs DIR` is used in place. The holder mounts an
//! overlay whose lower layer is the pristine rootfs and whose upper
//! layer is a fresh tmpfs, plus /proc, /sys (read-only), a minimal /dev
//! (bind mounts of the host's null, zero, full, random, urandom, tty; its
//! own devpts and /dev/shm), and an /etc/hosts naming the testbed where the
//! rootfs has none (as container runtimes give). Commands enter the namespaces with `nsenter`
//! and `chroot` into the overlay.
//!
//! Revert asks the holder (a line on its stdin) to kill every other process
//! of the pid namespace, unmount and mount again with an empty upper layer:
//! nothing is unpacked again. Commit (after the setup, so that reverts keep
//! it) does the same, but keeps the upper layer as the top lower one. Everything mounted lives in the private mount
//! namespace, so the host's mount table never changes; when dep8 closes the
//! testbed or dies, the holder reads end-of-file, kills what is left,
//! unmounts and removes the temp dir; a dropped testbed kills the holder,
//! which takes the whole namespace down.
//!
//! Why util-linux and a script rather than dep8 re-executing itself: the
//! backend is a library (custom binaries, the test suite) and cannot rely on
//! a hidden subcommand of a `dep8` binary; `unshare`/`nsenter` are in every
//! Debian system (util-linux is essential), so the same code runs nested
//! inside a testbed. bash as pid 1 reaps the orphans it inherits.
//!
//! As a normal user (or with `--userns`), the namespaces are owned by a new
//! user namespace mapping the user to root and the user's /etc/subuid range
//! to the other ids (`unshare --map-auto --map-root-user`, as
//! autopkgtest-virt-unshare does); root inside is then not root outside.

use async_trait::async_trait;
use clap::Parser;
use dep8_testbed::capability::{BaseImage, BaseImageKind, Capabilities, Capability};
use dep8_testbed::exec::{
    copy_down_via_exec, copy_up_via_exec, host_result, in_testbed_argv, run_local,
};
use dep8_testbed::kept::{self, KeptTree};
use dep8_testbed::{Backend, ExecOutcome, ExecRequest, OpenContext, Result, Testbed, TestbedError};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

const HOLDER: &str = include_str!("holder.sh");

/// Where the pristine rootfs is mounted read-only with `--baseimage`.
pub const BASEIMAGE_PATH: &str = "/run/dep8/baseimage";

/// The most the kept layers may take together: beyond it, those unused
/// longest are removed as a new one is kept.
const LAYERS_MAX: u64 = 16 << 30;

/// The scratch dir inside the testbed; the same path after every revert.
const SCRATCH: &str = "/tmp/dep8-scratch";

/// The environment commands start with (plus what the request adds).
const BASE_ENV: [&str; 4] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "USER=root",
    "LOGNAME=root",
];

pub struct UnshareBackend;

/// autopkgtest-virt-unshare's default `--bootstrapcmd` (5.49).
const BOOTSTRAP: &str = "mmdebstrap --mode=unshare --variant=apt \
    --skip=output/mknod,cleanup/apt/lists \
    --customize-hook='sed \"s/^deb /deb-src /\" \"$1/etc/apt/sources.list\" > \
    \"$1/etc/apt/sources.list.d/src.list\" && APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-get update'";

/// The backend's command line, after `-- unshare`: dep8's options and
/// autopkgtest-virt-unshare's (5.49), as sbuild and Debusine write them.
#[derive(Parser, Debug)]
#[command(
    name = "unshare",
    no_binary_name = true,
    infer_long_args = true,
    about = "Run tests in a rootfs in private namespaces (dep8 run SRC -- unshare ...)"
)]
struct Args {
    /// Rootfs tarball (any compression tar understands).
    #[arg(short, long, value_name = "FILE", conflicts_with = "rootfs")]
    tarball: Option<PathBuf>,
    /// An unpacked rootfs, used read-only as the lower layer.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Without --tarball: the release of sbuild's cached tarball
    /// (~/.cache/sbuild/RELEASE-ARCH.t*), or the one mmdebstrap makes.
    #[arg(short, long, default_value = "*")]
    release: String,
    /// Without --tarball: the architecture of sbuild's cached tarball, or
    /// the one mmdebstrap makes.
    #[arg(short, long, default_value = "*")]
    arch: String,
    /// The command that makes a tarball when there is none (the release
    /// and the output file are appended).
    #[arg(long, value_name = "COMMAND", default_value = BOOTSTRAP, hide_default_value = true)]
    bootstrapcmd: String,
    /// Bind mount the host dir OUTSIDE at INSIDE in the testbed (repeatable).
    #[arg(short, long, num_args = 2, value_names = ["OUTSIDE", "INSIDE"])]
    bind: Vec<String>,
    /// Prefix of the testbed's temp dir on the host (`/var/tmp/x-`).
    #[arg(short, long, conflicts_with = "unpack_dir")]
    prefix: Option<String>,
    /// The testbed's dir on the host (created; must not exist).
    #[arg(short, long, value_name = "DIR")]
    unpack_dir: Option<PathBuf>,
    /// Accepted for autopkgtest-virt-unshare; dep8's own `-d` (before `--`)
    /// turns on debug output.
    #[arg(short, long)]
    debug: bool,
    /// Share the host's network (the default).
    #[arg(long, overrides_with = "private_network")]
    network: bool,
    /// A network namespace with only loopback.
    #[arg(long, overrides_with = "network")]
    private_network: bool,
    /// Mount the pristine rootfs read-only at /run/dep8/baseimage.
    #[arg(long)]
    baseimage: bool,
    /// Run in a user namespace even as root.
    #[arg(long)]
    userns: bool,
}

#[async_trait]
impl Backend for UnshareBackend {
    fn name(&self) -> &'static str {
        "unshare"
    }

    fn summary(&self) -> &'static str {
        "a rootfs tarball or dir in private namespaces over an overlay, reverted by remounting"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::Nesting,
            Capability::BaseImage,
        ]
    }

    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        let baseimage = Options::parse(args).map_or(true, |o| o.baseimage);
        let mut caps = self.capabilities_hint();
        caps.retain(|c| baseimage || *c != Capability::BaseImage);
        caps
    }

    fn check_args(&self, args: &[String]) -> Result<()> {
        Options::parse(args).map(drop)
    }

    /// Every open is another overlay on the same rootfs.
    fn max_testbeds(&self, _args: &[String]) -> usize {
        usize::MAX
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        self.open_in(args, OpenContext::default()).await
    }

    /// With dep8's cache dir, a tarball is kept unpacked there for later
    /// opens (as root, without a user namespace).
    async fn open_in(&self, args: &[String], context: OpenContext<'_>) -> Result<Box<dyn Testbed>> {
        let mut options = Options::parse(args)?;
        options.keep_in = context.cache.map(Path::to_path_buf);
        Ok(Box::new(UnshareTestbed::open(options).await?))
    }
}

/// Where the pristine root filesystem comes from.
#[derive(Clone, Debug)]
pub enum Rootfs {
    /// A tarball (any compression tar understands), unpacked once per open
    /// into RAM, or once for all opens into [`Options::keep_in`].
    Tarball(PathBuf),
    /// An unpacked root filesystem, used read-only as the lower layer.
    Dir(PathBuf),
    /// A tarball this command makes first (the output file appended), as
    /// autopkgtest-virt-unshare does with mmdebstrap when no tarball is
    /// given and sbuild has none cached; removed at close.
    Bootstrap(Vec<String>),
}

/// Where the testbed's dir (mount points only) goes on the host.
#[derive(Clone, Debug, Default)]
pub enum HostDir {
    /// A new temp dir in $TMPDIR.
    #[default]
    Temp,
    /// A new temp dir whose path starts with this (`-p`).
    Prefix(String),
    /// This dir, created (`-u`).
    Exactly(PathBuf),
}

/// How to open an unshare testbed.
#[derive(Clone, Debug)]
pub struct Options {
    pub rootfs: Rootfs,
    /// Share the host's network (and its resolv.conf), as
    /// autopkgtest-virt-unshare does; `--private-network` gives the testbed
    /// a network namespace of its own with only loopback instead.
    pub network: bool,
    /// Mount the pristine rootfs read-only at [`BASEIMAGE_PATH`].
    pub baseimage: bool,
    /// Run in a user namespace (root inside is not root outside); always so
    /// when dep8 is not root. Needs the user's range in /etc/subuid and
    /// /etc/subgid.
    pub userns: bool,
    /// Host dirs bind-mounted into the testbed: (outside, absolute inside).
    pub binds: Vec<(PathBuf, String)>,
    pub host_dir: HostDir,
    /// dep8's cache dir, where a tarball is kept unpacked for every open
    /// ([`dep8_testbed::kept`]), as root without a user namespace; else it
    /// is unpacked into a tmpfs of the testbed's own.
    pub keep_in: Option<PathBuf>,
}

impl Options {
    /// The defaults for `rootfs`: the host's network, no base image, a user
    /// namespace unless dep8 is root.
    pub fn new(rootfs: Rootfs) -> Options {
        Options {
            rootfs,
            network: true,
            baseimage: false,
            userns: !nix::unistd::geteuid().is_root(),
            binds: Vec::new(),
            host_dir: HostDir::Temp,
            keep_in: None,
        }
    }

    /// Parses the words after `unshare` on the command line.
    pub fn parse(args: &[String]) -> Result<Options> {
        Self::parse_with_cache(args, sbuild_cache())
    }

    /// [`Options::parse`] with sbuild's tarball cache dir given.
    fn parse_with_cache(args: &[String], cache: Option<PathBuf>) -> Result<Options> {
        let args =
            Args::try_parse_from(args).map_err(|e| TestbedError::Usage(e.render().to_string()))?;
        let usage = |msg: String| TestbedError::Usage(msg);
        // A missing image is a testbed failure (16), as with
        // autopkgtest-virt-unshare: a CI retries it as a temporary failure.
        let rootfs = match (&args.tarball, &args.rootfs) {
            (Some(p), _) if !p.is_file() => {
                return Err(TestbedError::Failure(format!(
                    "--tarball {}: no such file",
                    p.display()
                )))
            }
            (Some(p), _) => Rootfs::Tarball(p.clone()),
            (None, Some(p)) if !p.join("etc").is_dir() => {
                return Err(TestbedError::Failure(format!(
                    "--rootfs {}: not a root filesystem (no etc/)",
                    p.display()
                )))
            }
            (None, Some(p)) => Rootfs::Dir(p.clone()),
            (None, None) => cached_or_bootstrap(&args, cache)?,
        };
        let mut binds = Vec::new();
        for pair in args.bind.chunks(2) {
            let (outside, inside) = (PathBuf::from(&pair[0]), pair[1].clone());
            if !outside.is_dir() {
                return Err(usage(format!("--bind {}: no such dir", outside.display())));
            }
            if !inside.starts_with('/') {
                return Err(usage(format!(
                    "--bind {} {inside}: the mount point must be an absolute path in the testbed",
                    outside.display()
                )));
            }
            let outside = std::path::absolute(&outside)
                .map_err(|e| usage(format!("--bind {}: {e}", outside.display())))?;
            binds.push((outside, inside));
        }
        Ok(Options {
            rootfs,
            network: !args.private_network,
            baseimage: args.baseimage,
            userns: args.userns || !nix::unistd::geteuid().is_root(),
            binds,
            host_dir: match (args.prefix, args.unpack_dir) {
                (Some(prefix), _) => HostDir::Prefix(prefix),
                (None, Some(dir)) => HostDir::Exactly(dir),
                (None, None) => HostDir::Temp,
            },
            keep_in: None,
        })
    }
}

/// autopkgtest-virt-unshare's release names: experimental, rc-buggy and
/// UNRELEASED* are unstable; -backports and -security are their base.
fn release_name(release: &str) -> &str {
    if ["experimental", "rc-buggy", "UNRELEASED"]
        .iter()
        .any(|p| release.starts_with(p))
    {
        return "unstable";
    }
    release
        .strip_suffix("-backports")
        .or_else(|| release.strip_suffix("-security"))
        .unwrap_or(release)
}

/// sbuild's tarball cache: `$XDG_CACHE_HOME/sbuild`, else `~/.cache/sbuild`.
fn sbuild_cache() -> Option<PathBuf> {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("sbuild")),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/sbuild")),
    }
}

/// Whether `name` is `RELEASE-ARCH.t…`, where `*` matches anything.
fn is_cached_tarball(name: &str, release: &str, arch: &str) -> bool {
    let Some((stem, _)) = name.split_once(".t") else {
        return false;
    };
    match (release, arch) {
        ("*", "*") => stem.contains('-'),
        ("*", arch) => stem.ends_with(&format!("-{arch}")),
        (release, "*") => stem
            .strip_prefix(release)
            .is_some_and(|rest| rest.starts_with('-')),
        (release, arch) => stem == format!("{release}-{arch}"),
    }
}

/// The first (by name) `RELEASE-ARCH.t*` in sbuild's cache dir.
fn cached_tarball(cache: &Path, release: &str, arch: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| is_cached_tarball(&e.file_name().to_string_lossy(), release, arch))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Without `--tarball`: sbuild's cached `RELEASE-ARCH.t*` tarball, else
/// one mmdebstrap makes (as autopkgtest-virt-unshare 5.49).
fn cached_or_bootstrap(args: &Args, cache: Option<PathBuf>) -> Result<Rootfs> {
    let release = release_name(&args.release);
    let cache = cache.unwrap_or_default();
    if let Some(tarball) = cached_tarball(&cache, release, &args.arch) {
        tracing::info!("unshare: using sbuild's tarball {}", tarball.display());
        return Ok(Rootfs::Tarball(tarball));
    }
    if release == "*" {
        return Err(TestbedError::Usage(format!(
            "no --tarball, no --rootfs, and no --release to find sbuild's tarball \
             ({}/RELEASE-ARCH.t*) or to make one with mmdebstrap",
            cache.display()
        )));
    }
    let mut command = shell_words::split(&args.bootstrapcmd)
        .map_err(|e| TestbedError::Usage(format!("--bootstrapcmd: {e}")))?;
    if command.is_empty() {
        return Err(TestbedError::Usage("--bootstrapcmd is empty".into()));
    }
    if which(&command[0]).is_none() {
        return Err(TestbedError::Usage(format!(
            "no tarball for {release} in {} and no {} to make one \
             (install the mmdebstrap package, or give --tarball)",
            cache.display(),
            command[0]
        )));
    }
    if args.arch != "*" {
        command.push(format!("--arch={}", args.arch));
    }
    command.push(release.to_string());
    Ok(Rootfs::Bootstrap(command))
}

/// `program` found in PATH (or as a path).
fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| p.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The holder process and the pipes to talk to it.
struct Holder {
    /// util-linux `unshare`; the holder script is its only child.
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Reads the holder's lines up to its verdict; the other lines explain
    /// a failure.
    fn verdict(&mut self, what: &str) -> Result<String> {
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| TestbedError::failure(what, e))?;
            if n == 0 {
                said.push("the namespace holder exited".to_string());
                break;
            }
            match line.trim_end().strip_prefix("dep8-holder: ") {
                Some(verdict) if verdict == "ok" || verdict.starts_with("ready ") => {
                    return Ok(verdict.to_string())
                }
                Some(failed) => {
                    said.push(failed.to_string());
                    break;
                }
                None => said.push(line.trim_end().to_string()),
            }
        }
        Err(TestbedError::Failure(format!(
            "{what}: {}",
            said.join("; ")
        )))
    }

    fn request(&mut self, request: &str) -> Result<()> {
        let what = format!("{request} in the unshare testbed");
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| TestbedError::Failure(format!("{what}: testbed is closed")))?;
        writeln!(stdin, "{request}").map_err(|e| TestbedError::failure(&what, e))?;
        self.verdict(&what).map(drop)
    }
}

/// An open unshare testbed.
pub struct UnshareTestbed {
    /// Our temp dir, holding only mount points (seen inside the namespace):
    /// `root/` (the overlay), `rw/` (the tmpfs upper layer), `lower/` (the
    /// tmpfs with the unpacked tarball).
    dir: PathBuf,
    holder: Arc<Mutex<Holder>>,
    /// The holder's pid on the host, for nsenter.
    pid: String,
    caps: Capabilities,
    network: bool,
    userns: bool,
    /// The tarball made by `--bootstrapcmd`, removed with the testbed.
    _bootstrapped: Option<tempfile::TempDir>,
    /// The kept unpacked tarball the overlay's lower layer is, in use until
    /// the testbed is dropped.
    kept: Option<KeptTree>,
    /// dep8's cache dir, where layers of installed packages are kept (with
    /// a kept tarball only: a layer is keyed by the tree it goes over).
    layers_in: Option<PathBuf>,
    /// The kept layers stacked since the last revert, in use until it.
    stacked: Mutex<Vec<KeptTree>>,
}

/// Makes the testbed's dir on the host (mount points only, 0700).
fn host_dir(place: &HostDir) -> Result<PathBuf> {
    let fail = |what: &dyn std::fmt::Display, e| TestbedError::failure(what, e);
    match place {
        HostDir::Temp => tempfile::Builder::new()
            .prefix("dep8-unshare.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map(tempfile::TempDir::keep)
            .map_err(|e| fail(&"creating the testbed's temp dir", e)),
        HostDir::Prefix(prefix) => {
            let (parent, name) = match prefix.rsplit_once('/') {
                Some(("", name)) => (PathBuf::from("/"), name),
                Some((parent, name)) => (PathBuf::from(parent), name),
                None => (std::env::temp_dir(), prefix.as_str()),
            };
            tempfile::Builder::new()
                .prefix(name)
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir_in(&parent)
                .map(tempfile::TempDir::keep)
                .map_err(|e| fail(&format!("--prefix {prefix}"), e))
        }
        HostDir::Exactly(dir) => {
            use std::os::unix::fs::DirBuilderExt;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| fail(&format!("--unpack-dir {}", dir.display()), e))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(&format!("--unpack-dir {}", dir.display()), e))?;
            std::path::absolute(dir).map_err(|e| fail(&dir.display(), e))
        }
    }
}

/// `tarball` unpacked in dep8's cache dir `cache`, unpacking it there
/// first if no run has; `None` (and a warning) if that fails, so that the
/// testbed unpacks it into RAM as without a cache.
fn keep(cache: &Path, tarball: &Path) -> Option<KeptTree> {
    let unpack = |dir: &Path| {
        tracing::info!(
            "unshare: unpacking {} into {} (kept for later runs)",
            tarball.display(),
            dir.display()
        );
        // As a tmpfs's root, where the tarball has no `./` to say.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let args = [
            "--numeric-owner".as_ref(),
            "--exclude=./dev/*".as_ref(),
            "-C".as_ref(),
            dir.as_os_str(),
            "-xf".as_ref(),
            tarball.as_os_str(),
        ];
        let mut tar = Command::new("tar");
        tar.args(args).stdin(Stdio::null());
        // This thread waits for it, so it outlives tar unless dep8 dies; a
        // killed unpack leaves a partial tree the next one removes.
        dep8_testbed::leftovers::tag(&mut tar);
        dep8_testbed::leftovers::die_with_dep8(&mut tar);
        host_result("tar", &args, tar.output()?)
            .map(drop)
            .map_err(|e| std::io::Error::other(e.detail()))
    };
    match dep8_testbed::kept::acquire(cache, tarball, unpack) {
        Ok(kept) => {
            tracing::debug!("unshare: lower layer {}", kept.path().display());
            Some(kept)
        }
        Err(e) => {
            tracing::warn!(
                "unshare: cannot keep {} unpacked in {}: {e}; unpacking it for this testbed alone",
                tarball.display(),
                cache.display()
            );
            None
        }
    }
}

/// Runs the bootstrap command (mmdebstrap) to make `chroot.tar` in a new
/// temp dir, as autopkgtest-virt-unshare does without a tarball.
fn bootstrap(command: &[String]) -> Result<tempfile::TempDir> {
    let made = tempfile::Builder::new()
        .prefix("dep8-unshare-bootstrap.")
        .tempdir()
        .map_err(|e| TestbedError::failure("creating a dir for the bootstrapped tarball", e))?;
    let tarball = made.path().join("chroot.tar");
    // Shown without -d: it takes minutes and downloads from the archive.
    tracing::warn!(
        "unshare: no cached tarball; making one (this takes minutes): {} {}",
        shell_words::join(command),
        tarball.display()
    );
    let out = Command::new(&command[0])
        .args(&command[1..])
        .arg(&tarball)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestbedError::failure(format!("cannot run {}", command[0]), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        return Err(TestbedError::Failure(format!(
            "{} failed ({}): {}",
            shell_words::join(command),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(made)
}

impl UnshareTestbed {
    pub async fn open(options: Options) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(options))
            .await
            .map_err(|e| TestbedError::failure("opening the unshare testbed", e))?
    }

    fn open_blocking(options: Options) -> Result<Self> {
        let dir = host_dir(&options.host_dir)?;
        // From here on, a failure must remove `dir`.
        let cleanup = DirGuard(Some(dir.clone()));
        for sub in ["root", "rw"] {
            std::fs::create_dir(dir.join(sub))
                .map_err(|e| TestbedError::failure(dir.join(sub).display(), e))?;
        }
        let bootstrapped = match &options.rootfs {
            Rootfs::Bootstrap(command) => Some(bootstrap(command)?),
            _ => None,
        };
        let kept = match (&options.rootfs, &options.keep_in) {
            (Rootfs::Tarball(tarball), Some(cache)) if !options.userns => keep(cache, tarball),
            _ => None,
        };
        let (kind, source) = match (&options.rootfs, &bootstrapped, &kept) {
            (_, _, Some(kept)) => ("dir", kept.path().to_path_buf()),
            (Rootfs::Tarball(path), _, None) => ("tarball", path.clone()),
            (Rootfs::Dir(path), _, None) => ("dir", path.clone()),
            (Rootfs::Bootstrap(_), Some(made), None) => ("tarball", made.path().join("chroot.tar")),
            (Rootfs::Bootstrap(_), None, None) => unreachable!("bootstrapped above"),
        };
        let source =
            std::path::absolute(&source).map_err(|e| TestbedError::failure(source.display(), e))?;
        let mut caps = Capabilities::new([
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::Nesting,
        ]);
        if options.baseimage {
            caps.insert(Capability::BaseImage);
            caps.baseimage = Some(BaseImage {
                path: BASEIMAGE_PATH.into(),
                kind: BaseImageKind::Directory,
            });
        }

        let mut cmd = Command::new("unshare");
        if options.userns {
            // Our uid is root inside, the subuid range the other ids.
            cmd.args(["--user", "--map-auto", "--map-root-user"]);
        }
        cmd.args([
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--kill-child",
            "--uts",
            "--ipc",
        ]);
        if !options.network {
            cmd.arg("--net");
        }
        let mut child = cmd
            .args(["--", "bash", "-c", HOLDER, "dep8-holder"])
            .arg(&dir)
            .arg(kind)
            .arg(&source)
            .arg(SCRATCH)
            .arg(if options.network { "host" } else { "private" })
            .arg(if options.baseimage { "yes" } else { "no" })
            .arg(if options.userns { "yes" } else { "no" })
            .args(
                options
                    .binds
                    .iter()
                    .flat_map(|(outside, inside)| [outside.as_os_str(), inside.as_ref()]),
            )
            .current_dir("/")
            .env_clear()
            .envs(BASE_ENV.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // unshare's own errors (no subuid range, ...); the holder
            // writes to stdout.
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TestbedError::failure("cannot run unshare (util-linux)", e))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut holder = Holder {
            child,
            stdin,
            stdout,
        };
        let ready = match holder.verdict("setting up the unshare testbed") {
            Ok(ready) => ready,
            Err(e) => {
                let _ = holder.child.kill();
                let _ = holder.child.wait();
                let mut stderr = String::new();
                if let Some(mut pipe) = holder.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let said = stderr.trim();
                return Err(if said.contains("/etc/sub") {
                    TestbedError::Usage(format!(
                        "{said}: a user namespace needs a range of ids for this user \
                         in /etc/subuid and /etc/subgid (usermod --add-subuids \
                         --add-subgids)"
                    ))
                } else {
                    match e {
                        TestbedError::Failure(msg) if !said.is_empty() => {
                            TestbedError::Failure(format!("{msg}; {said}"))
                        }
                        e => e,
                    }
                });
            }
        };
        let pid = ready.trim_start_matches("ready ").to_string();
        // The host sees the holder's mounts through /proc/PID/root.
        let passwd = format!("/proc/{pid}/root{}/root/etc/passwd", dir.display());
        if has_user(Path::new(&passwd), "dep8") {
            caps.suggested_normal_users.push("dep8".into());
        }
        let mut cleanup = cleanup;
        cleanup.0 = None;
        Ok(UnshareTestbed {
            dir,
            holder: Arc::new(Mutex::new(holder)),
            pid,
            caps,
            network: options.network,
            userns: options.userns,
            _bootstrapped: bootstrapped,
            layers_in: kept.as_ref().and(options.keep_in),
            kept,
            stacked: Mutex::new(Vec::new()),
        })
    }

    /// The host-side prefix that runs an argv inside the testbed.
    fn enter(&self) -> Vec<String> {
        let mut argv = vec!["env".to_string(), "-i".to_string()];
        argv.extend(BASE_ENV.iter().map(|s| s.to_string()));
        argv.extend(["nsenter", "--target", &self.pid].map(String::from));
        if self.userns {
            argv.push("--user".into());
        }
        argv.extend(["--mount", "--pid", "--uts", "--ipc"].map(String::from));
        if !self.network {
            // With the host's network there is nothing to enter (and in a
            // user namespace entering it again is not permitted).
            argv.push("--net".into());
        }
        argv.extend(
            [
                // The holder's root: after entering a mount namespace the
                // root is that namespace's, which differs when nested in a
                // chroot.
                "--root", "--", "chroot",
            ]
            .map(String::from),
        );
        argv.push(self.dir.join("root").to_string_lossy().into_owned());
        argv
    }

    /// Asks the holder for `request` without blocking the async runtime.
    async fn request(&self, request: String) -> Result<()> {
        let holder = self.holder.clone();
        blocking(&request.clone(), move || ask(&holder, &request)).await
    }

    /// The cache dir layers are kept in, for `what` (a failure without).
    fn layers_in(&self, what: &str) -> Result<PathBuf> {
        self.layers_in
            .clone()
            .ok_or_else(|| TestbedError::Failure(format!("{what}: no kept rootfs to go over")))
    }
}

/// Asks the holder behind `holder` for `request` (blocking).
fn ask(holder: &Mutex<Holder>, request: &str) -> Result<()> {
    holder
        .lock()
        .map_err(|_| TestbedError::Failure("unshare holder lock poisoned".into()))?
        .request(request)
}

/// Runs `work` on tokio's blocking threads: it may wait for the holder,
/// or for another run's lock on a kept tree.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| TestbedError::failure(what, e))?
}

/// The holder's request for `command` on the host dir `path` (refused for
/// a path the request's one line cannot carry).
fn path_request(command: &str, path: &Path) -> std::io::Result<String> {
    let path = path.to_string_lossy();
    if path.contains('\n') {
        return Err(std::io::Error::other(format!(
            "{path:?}: a newline in the path"
        )));
    }
    Ok(format!("{command} {path}"))
}

/// Whether the `passwd` file has an account named `user`.
fn has_user(passwd: &Path, user: &str) -> bool {
    std::fs::read_to_string(passwd)
        .map(|passwd| passwd.lines().any(|l| l.split(':').next() == Some(user)))
        .unwrap_or(false)
}

/// Removes a directory tree when dropped (unless disarmed).
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            remove_tree(&dir);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

#[async_trait]
impl Testbed for UnshareTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        SCRATCH
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let network = if self.network { "host" } else { "private" };
        BTreeMap::from([
            ("unshare_network".to_string(), network.to_string()),
            ("unshare_userns".to_string(), self.userns.to_string()),
        ])
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        let mut argv = self.enter();
        argv.extend(in_testbed_argv(&req));
        run_local(&argv, req).await
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        copy_down_via_exec(self, host, testbed_path).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        copy_up_via_exec(self, testbed_path, host).await
    }

    async fn revert(&mut self) -> Result<()> {
        self.request("revert".into()).await?;
        self.stacked.get_mut().map(Vec::clear).ok();
        Ok(())
    }

    /// The upper layer becomes a lower one: a commit costs what a revert
    /// does, and keeps the setup in RAM (the tmpfs it was written to).
    async fn commit_base(&mut self) -> Result<bool> {
        self.request("commit".into()).await.map(|()| true)
    }

    /// The kept tree the overlay goes over: layers kept over it go over
    /// any testbed opened from the same tarball.
    fn layer_base(&self) -> Option<String> {
        let kept = self.kept.as_ref().filter(|_| self.layers_in.is_some())?;
        Some(format!("unshare {}", kept.key()))
    }

    async fn stack_layer(&self, key: &str) -> Result<bool> {
        let what = format!("stacking the kept layer {key}");
        let cache = self.layers_in(&what)?;
        let (key_owned, failed) = (key.to_string(), what.clone());
        let found = blocking(&what, move || {
            kept::find_keyed(&cache, &key_owned).map_err(|e| TestbedError::failure(failed, e))
        })
        .await?;
        let Some(layer) = found else {
            return Ok(false);
        };
        let request =
            path_request("stack", layer.path()).map_err(|e| TestbedError::failure(&what, e))?;
        self.request(request).await?;
        self.stacked
            .lock()
            .map_err(|_| TestbedError::Failure(format!("{what}: lock poisoned")))?
            .push(layer);
        Ok(true)
    }

    async fn keep_layer(&self, key: &str, purpose: &str) -> Result<()> {
        let what = format!("keeping the layer {key}");
        let cache = self.layers_in(&what)?;
        let (holder, key) = (self.holder.clone(), key.to_string());
        // An earlier layer for the same purpose over the same tree is an
        // earlier state's (older lists): replaced.
        let names = format!(
            "layer over {}\n{purpose}\n",
            self.layer_base().unwrap_or_default()
        );
        blocking(&what.clone(), move || {
            let kept = kept::acquire_keyed(&cache, &key, &names, |dir| {
                let request = path_request("keep", dir)?;
                ask(&holder, &request).map_err(|e| std::io::Error::other(e.detail()))
            })
            .map_err(|e| TestbedError::failure(&what, e))?;
            // The new layer is in use (held) and the newest: never trimmed.
            match kept::trim(&cache, kept::LAYER_PREFIX, LAYERS_MAX) {
                Ok(0) => {}
                Ok(freed) => {
                    tracing::info!("unshare: removed {freed} bytes of layers unused longest")
                }
                Err(e) => tracing::warn!("unshare: trimming the kept layers: {e}"),
            }
            drop(kept);
            Ok(())
        })
        .await
    }

    /// Ends the holder's input and waits for it to clean up and exit,
    /// polling: no thread is blocked on it and no lock is held across the
    /// wait, so a close that is given up (a signal to dep8) leaves the
    /// holder to [`Drop`], which kills it.
    async fn close(&mut self) -> Result<()> {
        let what = "closing the unshare testbed";
        let poisoned = || TestbedError::Failure("unshare holder lock poisoned".into());
        // End of input: the holder kills, unmounts and removes `dir`.
        self.holder.lock().map_err(|_| poisoned())?.stdin = None;
        let status = loop {
            let exited = self.holder.lock().map_err(|_| poisoned())?.child.try_wait();
            match exited {
                Ok(Some(status)) => break status,
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                Err(e) => return Err(TestbedError::failure(what, e)),
            }
        };
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.dir.display());
            }
        }
        if status.success() {
            Ok(())
        } else {
            Err(TestbedError::Failure(format!(
                "{what}: the holder exited with {status}"
            )))
        }
    }
}

impl Drop for UnshareTestbed {
    /// Without close: kill the holder (and with it the whole namespace),
    /// then remove the temp dir.
    fn drop(&mut self) {
        if let Ok(mut holder) = self.holder.lock() {
            if holder.child.try_wait().ok().flatten().is_none() {
                let _ = holder.child.kill();
                let _ = holder.child.wait();
            }
        }
        remove_tree(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with an empty sbuild cache, whatever the machine's holds.
    fn parse(args: &[String]) -> Result<Options> {
        let empty = tempfile::tempdir().unwrap();
        Options::parse_with_cache(args, Some(empty.path().into()))
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let d = dir.path().display();
        let o = parse(&words(&format!("--rootfs {d} --baseimage"))).unwrap();
        assert!(o.network && o.baseimage, "the host's network by default");
        let o = parse(&words(&format!("--rootfs {d} --private-network"))).unwrap();
        assert!(!o.network);
        assert!(matches!(o.rootfs, Rootfs::Dir(_)));
        let err = parse(&words("--tarball /nonexistent.tar")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.tar"), "{err}");
        let err = parse(&words("--frobnicate")).unwrap_err();
        assert!(err.to_string().contains("--frobnicate"), "{err}");
        let err = parse(&[]).unwrap_err();
        assert!(err.to_string().contains("--release"), "{err}");
    }

    #[test]
    fn autopkgtest_virt_unshare_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("sid.tar");
        std::fs::write(&tarball, "").unwrap();
        let d = dir.path().display();
        // Debusine's form; argparse's unambiguous prefixes too.
        for line in [
            format!("-r bookworm -a amd64 -t {d}/sid.tar"),
            format!("--arch amd64 --release bookworm --tarball {d}/sid.tar"),
            format!("--arc=amd64 --rel=bookworm --tar={d}/sid.tar -d"),
        ] {
            let o = parse(&words(&line)).unwrap();
            assert!(
                matches!(&o.rootfs, Rootfs::Tarball(p) if *p == tarball),
                "{line}"
            );
        }
        let o = parse(&words(&format!(
            "-t {d}/sid.tar -b {d} /srv/in -p /var/tmp/x- --private-network"
        )))
        .unwrap();
        assert_eq!(o.binds, [(dir.path().to_path_buf(), "/srv/in".to_string())]);
        assert!(matches!(&o.host_dir, HostDir::Prefix(p) if p == "/var/tmp/x-"));
        assert!(!o.network);
        let o = parse(&words(&format!("-t {d}/sid.tar -u {d}/unpack"))).unwrap();
        assert!(matches!(&o.host_dir, HostDir::Exactly(p) if p.ends_with("unpack")));
        let err = parse(&words(&format!("-t {d}/sid.tar -b {d} relative"))).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = parse(&words(&format!("-t {d}/sid.tar -b {d}/nonexistent /x"))).unwrap_err();
        assert!(err.to_string().contains("no such dir"), "{err}");
        // No cached tarball: the bootstrap command, with the arch and the
        // mapped release appended (the output file comes at open).
        let mut args = words("-r UNRELEASED -a arm64");
        args.push("--bootstrapcmd=/bin/true --variant='a b'".into());
        match parse(&args).unwrap().rootfs {
            Rootfs::Bootstrap(cmd) => {
                assert_eq!(
                    cmd,
                    ["/bin/true", "--variant=a b", "--arch=arm64", "unstable"]
                );
            }
            other => panic!("{other:?}"),
        }
        let err = parse(&words("-r sid --bootstrapcmd no-such-mmdebstrap")).unwrap_err();
        assert!(err.to_string().contains("mmdebstrap package"), "{err}");
    }

    #[test]
    fn sbuild_release_names_and_cache() {
        assert_eq!(release_name("experimental"), "unstable");
        assert_eq!(release_name("rc-buggy"), "unstable");
        assert_eq!(release_name("UNRELEASED-foo"), "unstable");
        assert_eq!(release_name("bookworm-backports"), "bookworm");
        assert_eq!(release_name("bookworm-security"), "bookworm");
        assert_eq!(release_name("trixie"), "trixie");
        let cache = tempfile::tempdir().unwrap();
        for name in [
            "bookworm-amd64.tar.zst",
            "bookworm-arm64.tgz",
            "sid-amd64.tar",
            "README",
        ] {
            std::fs::write(cache.path().join(name), "").unwrap();
        }
        let found = |r, a| {
            cached_tarball(cache.path(), r, a)
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        };
        assert_eq!(
            found("bookworm", "amd64").as_deref(),
            Some("bookworm-amd64.tar.zst")
        );
        assert_eq!(
            found("bookworm", "arm64").as_deref(),
            Some("bookworm-arm64.tgz")
        );
        assert_eq!(
            found("bookworm", "*").as_deref(),
            Some("bookworm-amd64.tar.zst")
        );
        assert_eq!(
            found("*", "amd64").as_deref(),
            Some("bookworm-amd64.tar.zst")
        );
        assert_eq!(found("sid", "arm64"), None);
        assert_eq!(found("trixie", "*"), None);
    }
}
