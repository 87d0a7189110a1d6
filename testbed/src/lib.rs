//! dep8-testbed: the testbed contract, and all a backend depends on.
//!
//! - the [`Backend`] and [`Testbed`] traits every runner implements, and the
//!   types they exchange ([`ExecRequest`], [`ExecOutcome`], ...);
//! - [`capability`]: what a testbed offers;
//! - [`exec`]: the process plumbing shared by every backend that runs
//!   commands through a local program, and the copy helpers;
//! - [`leftovers`]: the run dir every temp file and process of a run is
//!   tied to, and the sweep that removes what a killed run left;
//! - [`kept`]: root filesystems kept unpacked between runs in dep8's cache.
//!
//! Nothing here knows DEP-8: control files, restrictions and the runner
//! live in dep8-core, which backends do not depend on.

pub mod capability;
pub mod exec;
pub mod kept;
pub mod leftovers;
pub mod ports;

use crate::capability::{Capabilities, Capability};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a testbed operation failed. A `Failure` means the testbed broke (the
/// run ends with exit 16); it is never confused with a test failing.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The testbed (or the channel to it) broke.
    #[error("testbed failure: {0}")]
    Failure(String),
    /// The operation is not offered by this testbed.
    #[error("{0} is not supported by this testbed")]
    Unsupported(&'static str),
    /// The backend's arguments or environment are wrong (missing image,
    /// unknown option): a usage error, exit 20.
    #[error("{0}")]
    Usage(String),
}

impl TestbedError {
    pub fn failure(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        TestbedError::Failure(format!("{context}: {err}"))
    }

    /// What went wrong, without the `testbed failure:` prefix (for reports
    /// that add their own).
    pub fn detail(&self) -> String {
        match self {
            TestbedError::Failure(m) | TestbedError::Usage(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// A callback that sees output as it arrives (for live logs).
pub type Tap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where `/tmp/autopkgtest-reboot-prepare` records the test's mark, and
/// waits for it to go.
pub const PREPARE_MARK_FILE: &str = "/run/autopkgtest-reboot-prepare-mark";
/// What lets a test waiting in `/tmp/autopkgtest-reboot-prepare` go on (as
/// autopkgtest's virt servers do it for `reboot prepare-only`).
pub const RELEASE_PREPARED: &str = "rm -f /run/autopkgtest-reboot-prepare-mark";

/// Where a command's standard input comes from.
#[derive(Clone, Debug, Default)]
pub enum Input {
    #[default]
    Null,
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Where one output stream of a command goes; any combination of a host
/// file, an in-memory capture and a live tap.
#[derive(Clone, Default)]
pub struct Output {
    /// Appended to (created if missing), so a test re-run after a reboot
    /// keeps what it printed before.
    pub file: Option<PathBuf>,
    pub capture: bool,
    pub tap: Option<Tap>,
    /// Where the stream stops being kept, if it may stop before it ends.
    pub cut: Option<Arc<Cut>>,
}

/// Ends what an [`Output`] keeps before its stream ends: at the first
/// `marker` in the stream (which is not kept either), or at once when
/// [`Cut::now`] is called. From there on the stream is still read, so the
/// command never blocks on it, but nothing more is written, captured or
/// tapped.
pub struct Cut {
    marker: Vec<u8>,
    done: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
}

impl Cut {
    pub fn at(marker: &[u8]) -> Arc<Self> {
        assert!(!marker.is_empty(), "a cut needs a marker");
        Arc::new(Cut {
            marker: marker.to_vec(),
            done: Default::default(),
            reached: Default::default(),
        })
    }

    pub fn marker(&self) -> &[u8] {
        &self.marker
    }

    /// Stops keeping the stream from here on.
    pub fn now(&self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.reached.notify_waiters();
    }

    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once the stream has been cut.
    pub async fn reached(&self) {
        loop {
            let notified = self.reached.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

impl Output {
    pub fn capture() -> Self {
        Output {
            capture: true,
            ..Default::default()
        }
    }
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Output {
            file: Some(path.into()),
            ..Default::default()
        }
    }
    pub fn with_tap(mut self, tap: Tap) -> Self {
        self.tap = Some(tap);
        self
    }
    pub fn with_cut(mut self, cut: Arc<Cut>) -> Self {
        self.cut = Some(cut);
        self
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("file", &self.file)
            .field("capture", &self.capture)
            .field("tap", &self.tap.is_some())
            .field("cut", &self.cut.is_some())
            .finish()
    }
}

/// A command to run inside the testbed.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Variables added to the testbed's environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the testbed.
    pub cwd: Option<String>,
    /// Run as this user instead of the testbed's default (root when the
    /// testbed has root-on-testbed).
    pub user: Option<String>,
    pub stdin: Input,
    pub stdout: Output,
    pub stderr: Output,
    /// Kill the command's whole process tree after this long.
    pub timeout: Option<Duration>,
}

impl ExecRequest {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    /// `sh -c SCRIPT`.
    pub fn shell(script: &str) -> Self {
        Self::new(["sh", "-c", script])
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn cwd(mut self, dir: &str) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }
    pub fn stdin(mut self, input: Input) -> Self {
        self.stdin = input;
        self
    }
    pub fn stdout(mut self, out: Output) -> Self {
        self.stdout = out;
        self
    }
    pub fn stderr(mut self, out: Output) -> Self {
        self.stderr = out;
        self
    }
    pub fn capture(self) -> Self {
        self.stdout(Output::capture()).stderr(Output::capture())
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it (128 + signal for a signal death).
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// What happened when a command ran.
#[derive(Clone, Debug)]
pub struct ExecOutcome {
    pub status: ExitStatus,
    pub timed_out: bool,
    pub duration: Duration,
    /// Captured output, when the request asked for it.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The last non-blank line of the captured stderr, trimmed ("" if none):
    /// what a failed command said last, for an error message.
    pub fn stderr_last_line(&self) -> String {
        let text = self.stderr_text();
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        last.unwrap_or("").trim().to_string()
    }
}

/// An open testbed. The scratch dir stays at the same path across reverts,
/// because built trees embed absolute paths.
#[async_trait]
pub trait Testbed: Send + Sync {
    fn capabilities(&self) -> &Capabilities;

    /// A writable scratch dir inside the testbed, empty when opened.
    fn scratch(&self) -> &str;

    /// Facts for testinfo.json (kernel, accelerator, CPU model, ...).
    fn describe(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Host files kept with the results when the run ends (a VM's console
    /// log): each as (file name in the output dir, host path).
    fn logs(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome>;

    /// Copies a host file or directory (its contents) to `testbed_path`,
    /// creating missing parent directories.
    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()>;

    /// Copies a testbed file or directory (its contents) to `host`.
    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()>;

    /// Restores the pristine testbed (only with [`Capability::Revert`]).
    async fn revert(&mut self) -> Result<()> {
        Err(TestbedError::Unsupported("revert"))
    }

    /// Makes the testbed's present state the one [`Testbed::revert`]
    /// returns to, so that reverts need not repeat the setup (`-U`, the apt
    /// options, `--setup-commands`). Running processes are not kept; the
    /// scratch dir is empty again after a revert. `Ok(false)` where the
    /// backend cannot (the default): the runner then repeats the setup
    /// after every revert.
    async fn commit_base(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// What the testbed reverts to, as the backend's part of the key of a
    /// layer of installed packages kept between runs
    /// ([`Testbed::stack_layer`], [`Testbed::keep_layer`]): two testbeds
    /// with the same base, and the same apt state and command (the
    /// caller's part), get the same files from apt. `None` where the
    /// backend keeps no layers (the default).
    fn layer_base(&self) -> Option<String> {
        None
    }

    /// Puts the layer a run kept under `key` beneath the testbed's changes
    /// since the last revert, until the next revert: the testbed then has
    /// the files it had when the layer was kept. `Ok(false)` when no run
    /// kept one.
    async fn stack_layer(&self, _key: &str) -> Result<bool> {
        Ok(false)
    }

    /// Keeps the testbed's changes since the last revert (without the
    /// scratch dir and apt's downloaded packages) as the layer `key`, for
    /// [`Testbed::stack_layer`] in later runs. `purpose` says what made
    /// them (an install command): a layer kept for the same purpose over
    /// the same base under another key is an earlier state's, which the
    /// backend may remove once unused.
    async fn keep_layer(&self, _key: &str, _purpose: &str) -> Result<()> {
        Err(TestbedError::Unsupported("keeping a layer"))
    }

    /// Reboots, keeping the scratch dir (only with [`Capability::Reboot`]).
    async fn reboot(&mut self) -> Result<()> {
        Err(TestbedError::Unsupported("reboot"))
    }

    /// First half of a reboot that a test starts by itself (autopkgtest's
    /// `reboot prepare-only`), called while the test's command still runs:
    /// gets the testbed ready to go down, then runs
    /// [`RELEASE_PREPARED`] as root, which lets the test go
    /// on and reboot. Only with [`Capability::Reboot`].
    async fn prepare_reboot(&self) -> Result<()> {
        Err(TestbedError::Unsupported("reboot prepare-only"))
    }

    /// Second half, once the test's command has ended: returns when the
    /// testbed is back, scratch dir kept.
    async fn await_reboot(&mut self) -> Result<()> {
        Err(TestbedError::Unsupported("reboot prepare-only"))
    }

    /// Releases the testbed: processes, mounts, temporary files.
    async fn close(&mut self) -> Result<()>;
}

/// What a run tells a backend as it opens a testbed ([`Backend::open_in`]).
/// The default, what [`Backend::open`] passes, promises nothing: no cache,
/// and reverts may return to the state the open leaves.
#[derive(Clone, Copy, Debug)]
pub struct OpenContext<'a> {
    /// dep8's cache dir, where a backend may keep what later opens can
    /// reuse, such as an unpacked rootfs ([`kept`]); `None` with
    /// `--no-cache`, when nothing may be kept.
    pub cache: Option<&'a Path>,
    /// Whether a revert may return to the state the open leaves. Not when
    /// the run keeps a setup ([`Testbed::commit_base`]) before any revert,
    /// nor when it never reverts (one test, nothing built on the
    /// testbed): a backend that saves that state for reverts may then
    /// leave it unsaved, and restore an unforeseen revert a slower way.
    pub reverts_to_open: bool,
}

impl Default for OpenContext<'_> {
    fn default() -> Self {
        OpenContext {
            cache: None,
            reverts_to_open: true,
        }
    }
}

/// A kind of testbed, and how to open one from command-line arguments.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The name used after `--` (`null`, `unshare`, ...).
    fn name(&self) -> &'static str;

    /// One line for `dep8 backends`.
    fn summary(&self) -> &'static str;

    /// The capabilities this backend can offer at most (some depend on
    /// arguments or on the host).
    fn capabilities_hint(&self) -> Vec<Capability>;

    /// The capabilities a testbed opened with `args` would offer, as far as
    /// the arguments tell, without opening anything (`dep8 explain`); by
    /// default the hint. Arguments `open` would refuse may give the hint.
    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        let _ = args;
        self.capabilities_hint()
    }

    /// Checks `args` as `open` would before it starts anything (`dep8
    /// explain`): a usage error, or a failure such as a missing image, as
    /// the run would end. By default nothing is checked.
    fn check_args(&self, args: &[String]) -> Result<()> {
        let _ = args;
        Ok(())
    }

    /// Opens a testbed. `args` are the words after the backend name.
    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>>;

    /// [`Backend::open`] as a run opens its testbeds, told what the run
    /// knows ([`OpenContext`]). By default the context is not used.
    async fn open_in(&self, args: &[String], context: OpenContext<'_>) -> Result<Box<dyn Testbed>> {
        let _ = context;
        self.open(args).await
    }

    /// How many testbeds opened with `args` may be open at once, each
    /// another pristine testbed like the first and independent of it
    /// (another overlay, session, VM or container), for running tests in
    /// parallel (`dep8 run -j N`); `usize::MAX` when only the host's CPUs
    /// limit them. 1 by default: the host, or one given machine.
    fn max_testbeds(&self, args: &[String]) -> usize {
        let _ = args;
        1
    }

    /// Whether the testbed is the machine dep8 runs on; dep8 then only
    /// checks test dependencies and never installs packages.
    fn is_host(&self) -> bool {
        false
    }
}
