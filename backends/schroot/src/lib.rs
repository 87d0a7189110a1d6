//! The `schroot` backend:
//! `dep8 run SRC -- schroot [-s|--session-id ID] [-d] [--baseimage] CHROOT`
//! (autopkgtest-virt-schroot's arguments, as debci writes them, plus
//! `--baseimage`).
//!
//! The testbed is a schroot session of CHROOT (`schroot --begin-session`);
//! commands run through `schroot --run-session`, files are copied on the
//! host through the session's mount location, and a revert ends the
//! session and begins a new one. Only chroots whose sessions are thrown
//! away are accepted (a union-type, a tarball or a snapshot), so a test can
//! never change the chroot itself.
//!
//! Capabilities follow autopkgtest-virt-schroot: `revert`, and
//! `root-on-testbed` when dep8 runs as root or the chroot's `root-users` /
//! `root-groups` allow the invoking user. No `revert-full-system`: the
//! usual schroot profiles share the host's `/tmp` and `/home`.
//! With `--baseimage`, the chroot's pristine directory is bind-mounted
//! read-only at [`BASEIMAGE_PATH`] inside every session.

use async_trait::async_trait;
use clap::Parser;
use dep8_testbed::capability::{BaseImage, BaseImageKind, Capabilities, Capability};
use dep8_testbed::exec::{
    copy_down_via_exec, copy_up_via_exec, host_copy, host_output, host_output_within,
    in_testbed_argv, run_local_with_stderr_on_fd3,
};
use dep8_testbed::{Backend, ExecOutcome, ExecRequest, Result, Testbed, TestbedError};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Where the base image appears inside the session with `--baseimage`.
pub const BASEIMAGE_PATH: &str = "/run/dep8/baseimage";

/// Where schroot keeps a file for every session that has begun and not ended.
const SESSION_DIR: &str = "/var/lib/schroot/session";

/// How long dep8 waits for `schroot --begin-session` or `--end-session`
/// (seconds under load, usually). Past it, the command is left running and
/// the run's leftovers to a later sweep, so that a hung set-up script does
/// not keep dep8 from ending.
const SESSION_LIMIT: Duration = Duration::from_secs(180);

/// schroot reports every signal death of its command as exit 1. This
/// wrapper runs the command in a subshell so that the shell reports it as
/// 128+N instead, with the shell's own "Terminated" notice sent to
/// /dev/null. The command's stderr comes on fd 3
/// ([`run_local_with_stderr_on_fd3`]): schroot's own stderr carries its
/// warnings, even about other sessions ending at that moment ("Failed to
/// stat file"), which are not the command's output.
const SIGNAL_WRAPPER: &str = "exec 9>&3 3>&- 2>/dev/null; (exec \"$@\" 2>&9 9>&-)";

pub struct SchrootBackend;

#[async_trait]
impl Backend for SchrootBackend {
    fn name(&self) -> &'static str {
        "schroot"
    }

    fn summary(&self) -> &'static str {
        "a session of a schroot chroot with a union-type or a tarball; revert starts a new session"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::BaseImage,
        ]
    }

    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        let baseimage = Options::parse(args).map_or(true, |o| o.baseimage);
        let mut caps = self.capabilities_hint();
        caps.retain(|c| baseimage || *c != Capability::BaseImage);
        caps
    }

    /// The arguments, and the chroot: known to schroot, and ephemeral.
    fn check_args(&self, args: &[String]) -> Result<()> {
        ChrootConfig::read(&Options::parse(args)?.chroot)?.check_ephemeral()
    }

    /// Every open is another session of the same chroot, unless the
    /// session's name is given (`--session-id`): then two would clash.
    fn max_testbeds(&self, args: &[String]) -> usize {
        match Options::parse(args) {
            Ok(opts) if opts.session_id.is_none() => usize::MAX,
            _ => 1,
        }
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        Ok(Box::new(SchrootTestbed::open(Options::parse(args)?).await?))
    }
}

/// The backend's arguments.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(
    name = "schroot",
    no_binary_name = true,
    infer_long_args = true,
    about = "Run tests in schroot sessions (dep8 run SRC -- schroot ...)"
)]
pub struct Options {
    /// The chroot's name (as in `schroot --list`).
    pub chroot: String,
    /// Bind-mount the chroot's pristine directory at [`BASEIMAGE_PATH`].
    #[arg(long)]
    pub baseimage: bool,
    /// Name of the session (`schroot --list --all-sessions`); later
    /// sessions of the same testbed (reverts) are ID-1, ID-2, ...
    #[arg(short, long, value_name = "ID")]
    pub session_id: Option<String>,
    /// Accepted for autopkgtest-virt-schroot; dep8's own `-d` (before `--`)
    /// turns on debug output.
    #[arg(short, long)]
    pub debug: bool,
}

impl Options {
    /// Parses the words after `schroot` on the command line.
    pub fn parse(args: &[String]) -> Result<Options> {
        Options::try_parse_from(args).map_err(|e| TestbedError::Usage(e.render().to_string()))
    }
}

/// The name of a testbed's `n`th session (from 0): `--session-id`, then
/// ID-1, ID-2...; by default named after dep8's pid, so that
/// `schroot --list --all-sessions` tells whose a session is.
fn session_name(id: Option<&str>, chroot: &str, n: usize) -> String {
    static BEGUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    match (id, n) {
        (Some(id), 0) => id.to_string(),
        (Some(id), n) => format!("{id}-{n}"),
        (None, _) => {
            let unique = BEGUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("dep8-{chroot}-{}-{unique}", std::process::id())
        }
    }
}

/// A chroot's configuration, as `schroot --config` prints it.
struct ChrootConfig {
    name: String,
    keys: BTreeMap<String, String>,
}

impl ChrootConfig {
    /// A chroot schroot does not know is a testbed failure (16), as for
    /// autopkgtest-virt-schroot, and as a missing unshare tarball is.
    fn read(name: &str) -> Result<ChrootConfig> {
        let text = host_output("schroot", &["--config", "--chroot", name])?;
        let keys = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('['))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(ChrootConfig {
            name: name.to_string(),
            keys,
        })
    }

    fn get(&self, key: &str) -> &str {
        self.keys.get(key).map(String::as_str).unwrap_or("")
    }

    /// A comma-separated list value.
    fn list(&self, key: &str) -> impl Iterator<Item = &str> {
        self.get(key)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// Refuses chroots whose sessions write to the chroot itself.
    /// autopkgtest refuses `type=directory` without a union-type; dep8 also
    /// refuses the other persistent kinds (plain, block-device and loopback
    /// without a union, a tarball that is repacked at the session's end).
    fn check_ephemeral(&self) -> Result<()> {
        let kind = self.get("type");
        let union = !matches!(self.get("union-type"), "" | "none");
        let ephemeral = match kind {
            "file" => self.get("file-repack") != "true",
            "btrfs-snapshot" | "lvm-snapshot" | "zfs-snapshot" => true,
            _ => union,
        };
        if ephemeral {
            return Ok(());
        }
        Err(TestbedError::Usage(format!(
            "schroot chroot {name} (type={kind}) is not ephemeral: its sessions would change \
             the chroot itself. Set \"union-type\" (e.g. union-type=overlay) in its \
             configuration, or use a tarball (type=file) or snapshot chroot",
            name = self.name
        )))
    }

    /// Whether `--user=root` is allowed: dep8 runs as root, or the chroot's
    /// `root-users` / `root-groups` name the invoking user or one of its
    /// groups (autopkgtest's rule).
    fn root_allowed(&self) -> bool {
        use nix::unistd::{getgid, getgroups, getuid, Group, User};
        let uid = getuid();
        if uid.is_root() {
            return true;
        }
        let user_ok = self
            .list("root-users")
            .any(|name| matches!(User::from_name(name), Ok(Some(u)) if u.uid == uid));
        let mut gids = getgroups().unwrap_or_default();
        gids.push(getgid());
        let group_ok = self
            .list("root-groups")
            .any(|name| matches!(Group::from_name(name), Ok(Some(g)) if gids.contains(&g.gid)));
        user_ok || group_ok
    }

    /// The pristine tree the sessions are made from, for `--baseimage`.
    fn source_directory(&self) -> Result<PathBuf> {
        match (self.get("type"), self.get("directory")) {
            ("directory", dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
            (kind, _) => Err(TestbedError::Usage(format!(
                "--baseimage needs a directory chroot, and schroot chroot {} has type={kind}",
                self.name
            ))),
        }
    }
}

/// One schroot session and what dep8 set up in it.
struct Session {
    id: String,
    /// The session's root on the host (`schroot --location`).
    location: PathBuf,
    /// The scratch dir's host path.
    scratch_host: PathBuf,
    /// The base image's mount point on the host, while mounted.
    baseimage: Option<PathBuf>,
    /// The scratch dir as the host sees it outside the session, where the
    /// session shares its parent with the host (the default profile
    /// bind-mounts the host's /tmp): it outlives a session ended from
    /// outside, and a dead dep8 (recorded for the sweep).
    shared_scratch: Option<PathBuf>,
}

impl Session {
    /// Begins a session `name` of `chroot` with, given `baseimage`, that
    /// directory mounted read-only at [`BASEIMAGE_PATH`]. Blocking.
    fn begin(chroot: &str, name: &str, baseimage: Option<&Path>) -> Result<Session> {
        dep8_testbed::leftovers::record_schroot_session(name);
        let id = host_output_within(
            "schroot",
            &[
                "--quiet",
                "--begin-session",
                "--chroot",
                chroot,
                "--session-name",
                name,
            ],
            SESSION_LIMIT,
        )
        .map_err(|e| begin_failure(name, e))?
        .trim()
        .to_string();
        // From here on, dropping the session ends it.
        let mut session = Session {
            id,
            location: PathBuf::new(),
            scratch_host: PathBuf::new(),
            baseimage: None,
            shared_scratch: None,
        };
        let location = host_output(
            "schroot",
            &["--location", "--chroot", &format!("session:{}", session.id)],
        )?;
        session.location = PathBuf::from(location.trim());
        if let Some(source) = baseimage {
            session.mount_baseimage(source)?;
        }
        Ok(session)
    }

    /// The testbed path of the scratch dir.
    fn scratch(&self) -> String {
        let rel = self
            .scratch_host
            .strip_prefix(&self.location)
            .unwrap_or(&self.scratch_host);
        format!("/{}", rel.display())
    }

    /// Creates an empty scratch dir at `scratch`, or at a new
    /// `/tmp/dep8-schroot.XXXXXX` when `None`.
    fn make_scratch(&mut self, scratch: Option<&str>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |e: std::io::Error| TestbedError::failure("creating the scratch dir", e);
        self.scratch_host = match scratch {
            Some(path) => {
                let host = self.host_path(path)?;
                std::fs::create_dir_all(&host).map_err(fail)?;
                host
            }
            None => tempfile::Builder::new()
                .prefix("dep8-schroot.")
                .tempdir_in(self.host_path("/tmp")?)
                .map_err(fail)?
                .keep(),
        };
        self.shared_scratch = shared_with_host(&self.location, &self.scratch());
        if let Some(path) = &self.shared_scratch {
            dep8_testbed::leftovers::record_path(path);
        }
        // Not world-writable: the runner gives it to the normal user
        // (autopkgtest 5.48's downtmp).
        std::fs::set_permissions(&self.scratch_host, std::fs::Permissions::from_mode(0o755))
            .map_err(fail)
    }

    fn mount_baseimage(&mut self, source: &Path) -> Result<()> {
        use nix::mount::{mount, MsFlags};
        let target = self.host_path(BASEIMAGE_PATH)?;
        let what = format!("mounting {} at {BASEIMAGE_PATH}", source.display());
        std::fs::create_dir_all(&target).map_err(|e| TestbedError::failure(&what, e))?;
        mount(
            Some(source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| TestbedError::failure(&what, e))?;
        self.baseimage = Some(target.clone());
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, &target, None::<&str>, ro, None::<&str>)
            .map_err(|e| TestbedError::failure(&what, e))
    }

    /// The host path of a testbed path, resolving symlinks inside the
    /// session's root as the testbed would.
    fn host_path(&self, testbed_path: &str) -> Result<PathBuf> {
        resolve_in_root(&self.location, testbed_path)
    }

    /// Kills what tests left running and removes the scratch dir, so that
    /// the next session may use the same path (the usual profiles share
    /// the host's /tmp between sessions).
    fn release_scratch(&mut self) -> Result<()> {
        if !self.location.as_os_str().is_empty() {
            kill_processes_in(&self.location);
        }
        let scratch = std::mem::take(&mut self.scratch_host);
        // Gone with the session's mounts if it was ended from outside.
        let shared = self.shared_scratch.take().filter(|s| s.exists());
        for dir in [scratch].into_iter().chain(shared) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TestbedError::failure(
                        format!("removing {}", dir.display()),
                        e,
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the session was ended, or is being ended, behind dep8's
    /// back (`schroot --end-session` from outside): schroot keeps a file
    /// per session in [`SESSION_DIR`] and removes it last, after its
    /// `setup-stop` scripts killed what ran in the session. Never so where
    /// that dir is missing (cannot tell).
    fn ended_elsewhere(&self) -> bool {
        let dir = Path::new(SESSION_DIR);
        if self.id.is_empty() || !dir.is_dir() {
            return false;
        }
        !dir.join(&self.id).exists() || being_ended(&self.id)
    }

    /// Waits (up to ten seconds) for a session being ended elsewhere to be
    /// gone.
    fn wait_ended(&self) {
        let file = Path::new(SESSION_DIR).join(&self.id);
        for _ in 0..100 {
            if !file.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the session: [`Session::release_scratch`], unmounts the base
    /// image, then `schroot --end-session`. Idempotent; blocking.
    fn end(&mut self) -> Result<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        let mut errors = Vec::new();
        if let Err(e) = self.release_scratch() {
            errors.push(reason(e));
        }
        if let Some(target) = self.baseimage.take() {
            // Lazy: a process that escaped the kill cannot keep it busy.
            if let Err(e) = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("unmounting {}: {e}", target.display()));
            }
        }
        // schroot sometimes fails with EBUSY while the kernel lets go of
        // the session's mounts; autopkgtest retries too.
        let mut ended = Err(TestbedError::Failure(String::new()));
        if self.ended_elsewhere() {
            tracing::info!("schroot session {} was ended elsewhere", self.id);
            self.wait_ended();
            ended = Ok(String::new());
        }
        for attempt in 0..5 {
            if ended.is_ok() {
                break;
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            ended = host_output_within(
                "schroot",
                &["--quiet", "--end-session", "--chroot", &self.id],
                SESSION_LIMIT,
            );
            if dep8_testbed::leftovers::kept_for_sweep() {
                // Hung (this try or an earlier one): the sweep retries.
                break;
            }
        }
        if let Err(e) = ended {
            errors.push(format!("ending schroot session {}: {}", self.id, reason(e)));
        }
        self.id.clear();
        failures(errors)
    }
}

/// The host's own path of the testbed path `scratch` when the session at
/// `location` shares its parent dir with the host (the same dir on both
/// sides, as /tmp under schroot's default profile).
fn shared_with_host(location: &Path, scratch: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let host = PathBuf::from(scratch);
    let parent = host.parent()?;
    let inside =
        std::fs::metadata(resolve_in_root(location, &parent.to_string_lossy()).ok()?).ok()?;
    let outside = std::fs::metadata(parent).ok()?;
    (inside.dev() == outside.dev() && inside.ino() == outside.ino()).then_some(host)
}

/// Whether schroot is ending session `id` now: a process runs its
/// `setup-stop` scripts for it, or is the `schroot --end-session` (`-e`)
/// that runs them. Only processes in dep8's mount namespace count: in
/// another one (a container, a fleet test's machine), a session of the same
/// name is another session.
fn being_ended(id: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    let namespace = |proc: &Path| std::fs::read_link(proc.join("ns/mnt")).ok();
    let Some(ours) = namespace(Path::new("/proc/self")) else {
        return false;
    };
    let session = format!("SESSION_ID={id}\0");
    let names = [id.to_string(), format!("session:{id}")];
    procs.flatten().any(|p| {
        if namespace(&p.path()).as_ref() != Some(&ours) {
            return false;
        }
        let read = |what: &str| std::fs::read(p.path().join(what)).unwrap_or_default();
        let environ = read("environ");
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        if has(&environ, session.as_bytes()) && has(&environ, b"STAGE=setup-stop\0") {
            return true;
        }
        let cmdline = read("cmdline");
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ending = args.iter().any(|a| *a == b"-e" || *a == b"--end-session");
        ending
            && args
                .iter()
                .any(|a| names.iter().any(|n| *a == n.as_bytes()))
    })
}

/// A failed `schroot --begin-session` of session `name`. With `--quiet`,
/// schroot says nothing when the name is taken: say it.
fn begin_failure(name: &str, e: TestbedError) -> TestbedError {
    let taken = host_output("schroot", &["--list", "--all-sessions"])
        .is_ok_and(|list| list.lines().any(|l| l == format!("session:{name}")));
    if taken {
        TestbedError::Failure(format!(
            "{}; a schroot session named {name} already exists (`schroot --end-session \
             --chroot {name}` ends it)",
            reason(e)
        ))
    } else {
        e
    }
}

/// What went wrong, without the "testbed failure" prefix.
fn reason(e: TestbedError) -> String {
    match e {
        TestbedError::Failure(msg) => msg,
        other => other.to_string(),
    }
}

/// One failure for all of `errors`, if any.
fn failures(errors: Vec<String>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TestbedError::Failure(errors.join("; ")))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::warn!("{e}");
        }
    }
}

/// SIGKILLs every process whose root directory is `root` (what tests left
/// running), until none is left. schroot's own clean-up at the session's
/// end does the same, but waits a second or more per process.
///
/// The root is compared by device and inode, not by path: a session of the
/// same name in another mount namespace (another container or machine on
/// this kernel, a fleet test's worker) has the same path and a different
/// root, and its processes are not ours to kill.
fn kill_processes_in(root: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::metadata(root).map(|m| (m.dev(), m.ino())) else {
        return;
    };
    for _ in 0..10 {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let victims: Vec<i32> = procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/root"))
                    .is_ok_and(|m| (m.dev(), m.ino()) == root)
            })
            .collect();
        if victims.is_empty() {
            return;
        }
        for pid in victims {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `path` as seen from inside the directory tree `root`, as a host path:
/// symlinks are followed with `root` as `/`, so neither an absolute link nor
/// `..` leads out of it. Missing components are kept as they are.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = Path::new(path)
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(next) = pending.pop() {
        match next.components().next() {
            Some(Component::Normal(name)) => {
                let candidate = resolved.join(name);
                match std::fs::read_link(root.join(&candidate)) {
                    Ok(target) => {
                        links += 1;
                        if links > 40 {
                            return Err(TestbedError::Failure(format!(
                                "{path}: too many levels of symbolic links"
                            )));
                        }
                        if target.is_absolute() {
                            resolved.clear();
                        }
                        pending.extend(
                            target
                                .components()
                                .rev()
                                .map(|c| PathBuf::from(c.as_os_str())),
                        );
                    }
                    Err(_) => resolved = candidate,
                }
            }
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            _ => {}
        }
    }
    Ok(root.join(resolved))
}

/// Session work running on a thread of its own: the spare session being
/// begun, reverted sessions being ended.
type Background<T> = std::thread::JoinHandle<Result<T>>;

fn join<T>(work: Background<T>) -> Result<T> {
    work.join().unwrap_or_else(|_| {
        Err(TestbedError::Failure(
            "a schroot helper thread panicked".into(),
        ))
    })
}

/// Runs blocking session work off the async runtime.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| TestbedError::failure(what, e))?
}

/// An open schroot session as a testbed.
pub struct SchrootTestbed {
    config: ChrootConfig,
    baseimage_source: Option<PathBuf>,
    session: Option<Session>,
    /// The next session, begun in the background from the first revert on,
    /// so that a revert only swaps sessions.
    spare: Option<Background<Session>>,
    /// Reverted sessions being ended in the background.
    ending: Vec<Background<()>>,
    scratch: String,
    caps: Capabilities,
    /// Files are copied on the host through the session's location (only
    /// root can see it); otherwise through commands in the session.
    host_copies: bool,
    /// `--session-id`, the first session's name.
    session_id: Option<String>,
    /// Sessions begun so far (for their names).
    begun: std::sync::atomic::AtomicUsize,
}

impl SchrootTestbed {
    pub async fn open(opts: Options) -> Result<SchrootTestbed> {
        let chroot = opts.chroot.clone();
        let config = blocking("reading the chroot's configuration", move || {
            ChrootConfig::read(&chroot)
        })
        .await?;
        config.check_ephemeral()?;
        let root_euid = nix::unistd::geteuid().is_root();
        let baseimage_source = if opts.baseimage {
            if !root_euid {
                return Err(TestbedError::Usage(
                    "--baseimage needs root (it bind-mounts the chroot's directory)".into(),
                ));
            }
            Some(config.source_directory()?)
        } else {
            None
        };
        let mut caps = Capabilities::new([Capability::Revert]);
        if config.root_allowed() {
            caps.insert(Capability::RootOnTestbed);
        }
        if baseimage_source.is_some() {
            caps.insert(Capability::BaseImage);
            caps.baseimage = Some(BaseImage {
                path: BASEIMAGE_PATH.into(),
                kind: BaseImageKind::Directory,
            });
        }
        let (chroot, base) = (config.name.clone(), baseimage_source.clone());
        let name = session_name(opts.session_id.as_deref(), &chroot, 0);
        let session = blocking("beginning a schroot session", move || {
            let mut session = Session::begin(&chroot, &name, base.as_deref())?;
            session.make_scratch(None)?;
            Ok(session)
        })
        .await?;
        caps.suggested_normal_users = normal_users(&config, &session);
        let mut tb = SchrootTestbed {
            scratch: session.scratch(),
            config,
            baseimage_source,
            session: Some(session),
            spare: None,
            ending: Vec::new(),
            caps,
            host_copies: root_euid,
            session_id: opts.session_id,
            begun: std::sync::atomic::AtomicUsize::new(1),
        };
        tb.note_downtmp_host();
        Ok(tb)
    }

    fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| TestbedError::Failure("the schroot session has ended".into()))
    }

    /// The scratch dir's host path goes in the capabilities when the host
    /// copies files, as autopkgtest's `downtmp-host`.
    fn note_downtmp_host(&mut self) {
        self.caps.downtmp_host = self
            .session
            .as_ref()
            .filter(|_| self.host_copies)
            .map(|s| s.scratch_host.clone());
    }

    /// Begins a session on a thread of its own.
    fn begin_in_background(&self) -> Background<Session> {
        let (chroot, base) = (self.config.name.clone(), self.baseimage_source.clone());
        let n = self
            .begun
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = session_name(self.session_id.as_deref(), &chroot, n);
        std::thread::spawn(move || Session::begin(&chroot, &name, base.as_deref()))
    }
}

impl Drop for SchrootTestbed {
    /// Background work must not outlive the testbed: a spare session is
    /// ended, reverted sessions finish ending.
    fn drop(&mut self) {
        let spare = self.spare.take().map(|work| join(work).map(drop));
        for result in spare.into_iter().chain(self.ending.drain(..).map(join)) {
            if let Err(e) = result {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Unprivileged accounts for tests: the invoking user when dep8 is not root
/// (as autopkgtest), otherwise the chroot's non-root `users=` and the
/// `dep8` user of dep8's images, when the chroot has them.
fn normal_users(config: &ChrootConfig, session: &Session) -> Vec<String> {
    use nix::unistd::{getuid, User};
    if !getuid().is_root() {
        return User::from_uid(getuid())
            .ok()
            .flatten()
            .map(|u| vec![u.name])
            .unwrap_or_default();
    }
    let passwd = session
        .host_path("/etc/passwd")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let present: Vec<&str> = passwd.lines().filter_map(|l| l.split(':').next()).collect();
    let mut users: Vec<String> = Vec::new();
    for name in config.list("users").chain(["dep8"]) {
        if name != "root" && present.contains(&name) && !users.iter().any(|u| u == name) {
            users.push(name.to_string());
        }
    }
    users
}

#[async_trait]
impl Testbed for SchrootTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        &self.scratch
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut facts = BTreeMap::new();
        facts.insert("schroot-chroot".into(), self.config.name.clone());
        facts.insert("schroot-type".into(), self.config.get("type").to_string());
        let union = self.config.get("union-type");
        if !union.is_empty() {
            facts.insert("schroot-union-type".into(), union.to_string());
        }
        facts
    }

    async fn exec(&self, mut req: ExecRequest) -> Result<ExecOutcome> {
        let session = self.session()?;
        let mut argv: Vec<String> = ["schroot", "--run-session", "--quiet", "--chroot"]
            .map(String::from)
            .to_vec();
        argv.push(session.id.clone());
        argv.push("--directory=/".into());
        if self.caps.has(Capability::RootOnTestbed) {
            argv.push("--user=root".into());
        } else if let Some(user) = req.user.take() {
            // Without root, commands run as the invoking user only.
            if !self.caps.suggested_normal_users.contains(&user) {
                return Err(TestbedError::Unsupported(
                    "running as another user without root",
                ));
            }
        }
        argv.extend(["--", "sh", "-c", SIGNAL_WRAPPER, "sh"].map(String::from));
        argv.extend(in_testbed_argv(&req));
        let outcome = run_local_with_stderr_on_fd3(&argv, req, "schroot").await?;
        // A session ended under the command kills it (or schroot finds no
        // session): the testbed is gone, not the command at fault.
        if !outcome.status.success() && session.ended_elsewhere() {
            return Err(TestbedError::Failure(format!(
                "the schroot session {} was ended while dep8 used it \
                 (schroot --end-session from outside dep8?)",
                session.id
            )));
        }
        Ok(outcome)
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        if self.host_copies {
            host_copy(host, &self.session()?.host_path(testbed_path)?).await
        } else {
            copy_down_via_exec(self, host, testbed_path).await
        }
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        if self.host_copies {
            host_copy(&self.session()?.host_path(testbed_path)?, host).await
        } else {
            copy_up_via_exec(self, testbed_path, host).await
        }
    }

    /// Swaps in a fresh session: the old one is ended in the background and
    /// the next one is begun in the background too, so that from the
    /// second revert on, a revert costs little more than a new scratch dir.
    async fn revert(&mut self) -> Result<()> {
        for work in std::mem::take(&mut self.ending) {
            if work.is_finished() {
                if let Err(e) = join(work) {
                    tracing::warn!("{e}");
                }
            } else {
                self.ending.push(work);
            }
        }
        if let Some(mut old) = self.session.take() {
            let old = blocking("clearing the old schroot session", move || {
                old.release_scratch().map(|()| old)
            })
            .await?;
            self.ending.push(std::thread::spawn(move || {
                let mut old = old;
                old.end()
            }));
        }
        let spare = self
            .spare
            .take()
            .unwrap_or_else(|| self.begin_in_background());
        let scratch = self.scratch.clone();
        let session = blocking("beginning a schroot session", move || {
            let mut session = join(spare)?;
            session.make_scratch(Some(&scratch))?;
            Ok(session)
        })
        .await?;
        self.session = Some(session);
        self.spare = Some(self.begin_in_background());
        self.note_downtmp_host();
        Ok(())
    }

    /// Ends the session, the spare one and the reverted ones, in parallel.
    async fn close(&mut self) -> Result<()> {
        let mut ending = std::mem::take(&mut self.ending);
        if let Some(spare) = self.spare.take() {
            ending.push(std::thread::spawn(move || join(spare)?.end()));
        }
        let current = self.session.take();
        blocking("ending the schroot session", move || {
            let errors = current
                .into_iter()
                .filter_map(|mut session| session.end().err())
                .chain(ending.into_iter().filter_map(|work| join(work).err()))
                .map(reason)
                .collect();
            failures(errors)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn parses_arguments() {
        assert_eq!(
            Options::parse(&args(&["sid", "--baseimage"])).unwrap(),
            Options {
                chroot: "sid".into(),
                baseimage: true,
                session_id: None,
                debug: false,
            }
        );
        assert!(!Options::parse(&args(&["sid"])).unwrap().baseimage);
        // debci's form, autopkgtest-virt-schroot's short options, and
        // argparse's unambiguous prefixes.
        for words in [
            &["--session-id=sid-hello", "sid"][..],
            &["-s", "sid-hello", "-d", "sid"],
            &["sid", "--session", "sid-hello"],
        ] {
            let o = Options::parse(&args(words)).unwrap();
            assert_eq!(o.chroot, "sid", "{words:?}");
            assert_eq!(o.session_id.as_deref(), Some("sid-hello"), "{words:?}");
        }
        assert_eq!(session_name(Some("x"), "sid", 0), "x");
        assert_eq!(session_name(Some("x"), "sid", 2), "x-2");
        assert!(session_name(None, "sid", 0).starts_with("dep8-sid-"));
        for bad in [&[][..], &["--frob", "sid"], &["sid", "other"]] {
            assert!(matches!(
                Options::parse(&args(bad)),
                Err(TestbedError::Usage(_))
            ));
        }
    }

    fn config(pairs: &[(&str, &str)]) -> ChrootConfig {
        ChrootConfig {
            name: "c".into(),
            keys: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn only_ephemeral_chroots() {
        let ok = [
            &[("type", "directory"), ("union-type", "overlay")][..],
            &[("type", "file")],
            &[("type", "btrfs-snapshot")],
            &[("type", "loopback"), ("union-type", "aufs")],
        ];
        for keys in ok {
            assert!(config(keys).check_ephemeral().is_ok(), "{keys:?}");
        }
        let refused = [
            &[("type", "directory")][..],
            &[("type", "directory"), ("union-type", "none")],
            &[("type", "plain")],
            &[("type", "file"), ("file-repack", "true")],
        ];
        for keys in refused {
            let err = config(keys).check_ephemeral().unwrap_err().to_string();
            assert!(err.contains("schroot chroot c "), "{err}");
        }
    }

    #[test]
    fn resolves_links_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("/run", r.join("var-run")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("usr/lib/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let at = |p: &str| resolve_in_root(r, p).unwrap();
        assert_eq!(at("/lib/x"), r.join("usr/lib/x"));
        assert_eq!(at("/var-run/lock"), r.join("run/lock"));
        assert_eq!(at("/usr/lib/up/etc"), r.join("etc"));
        assert_eq!(at("/../../etc/passwd"), r.join("etc/passwd"));
        assert_eq!(at("/missing/./a/../b"), r.join("missing/b"));
        assert!(resolve_in_root(r, "/loop/x").is_err());
    }
}
