//! Runs a DEP-8 suite on an open testbed: copy the tree in, decide each
//! test's fate, check dependencies, run, judge, collect, revert.

use crate::acquire::{self, AcquireError, Fetch};
use crate::build::{self, BuildError, BuildOptions};
use crate::capability::{Capabilities, Capability};
use crate::control::{self, DependsContext, Entry, Test};
use crate::install::{self, DependencyPolicy};
use crate::reboot;
use crate::report::{
    Outcome, Reporter, RunLog, Unfinished, EXIT_BAD_PACKAGE, EXIT_TESTBED_FAILURE, EXIT_UNEXPECTED,
};
use crate::restriction::{resolve, Decision, InternetPolicy, ResolveOptions, Restriction};
use crate::setup::{Setup, SetupError};
use crate::source::{self, SourcePackage};
use crate::testbed::{ExecRequest, Output, Tap, Testbed, TestbedError};
use shell_words::quote;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-operation time limits (autopkgtest's `--timeout-*`).
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub short: Duration,
    pub copy: Duration,
    pub install: Duration,
    pub test: Duration,
    pub build: Duration,
    /// Rebooting or reverting the testbed (may be a full boot).
    pub reboot: Duration,
    /// `--timeout`: the whole run's time for tests and builds, as
    /// autopkgtest's global timeout: the test or build running when it is
    /// up times out, and the tests after it are skipped.
    pub global: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            short: Duration::from_secs(100),
            copy: Duration::from_secs(300),
            install: Duration::from_secs(3000),
            test: Duration::from_secs(10000),
            build: Duration::from_secs(100000),
            reboot: Duration::from_secs(600),
            global: None,
        }
    }
}

/// Which tests to run, and how.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The unpacked source tree.
    pub source: PathBuf,
    /// Use this control file instead of `debian/tests/control`.
    pub override_control: Option<PathBuf>,
    pub output_dir: PathBuf,
    /// Where the summary goes (default: OUTPUT_DIR/summary).
    pub summary_file: Option<PathBuf>,
    pub only_tests: Vec<String>,
    pub skip_tests: Vec<String>,
    pub resolve: ResolveOptions,
    /// `--env VAR=VALUE`, exported to every test.
    pub env: Vec<(String, String)>,
    /// `--user`: the normal user for tests without needs-root.
    pub user: Option<String>,
    pub timeouts: Timeouts,
    /// How the testbed was asked for (for testinfo.json), e.g. `["null"]`.
    pub testbed_argv: Vec<String>,
    /// Install test dependencies, or only check them (the host).
    pub dependencies: DependencyPolicy,
    /// Unpack or fetch the source in the testbed instead of using `source`.
    pub fetch: Option<Fetch>,
    /// What to do to the testbed after opening and every revert.
    pub setup: Setup,
    /// `-a`: the architecture to test (default: the testbed's).
    pub test_arch: Option<String>,
    /// `--shell-fail`, `--shell`.
    pub shell: ShellPolicy,
    /// Whether and how the source is built.
    pub build: BuildOptions,
    /// `--no-auto-control`: never ask autodep8 for tests.
    pub no_auto_control: bool,
    /// `-V`: validate the test control file, run nothing.
    pub validate: bool,
    /// `--insecure`: allow what autopkgtest 5.48 made opt-in.
    pub insecure: bool,
}

/// When to open an interactive shell in the testbed (`--shell-fail`,
/// `--shell`), as autopkgtest does: only on a terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShellPolicy {
    #[default]
    Never,
    /// After a failed test or dependency installation.
    OnFailure,
    /// After every test.
    Always,
}

impl RunOptions {
    /// The control file of the tree at `source`, or `--override-control`.
    pub fn control_path(&self, source: &Path) -> PathBuf {
        self.override_control
            .clone()
            .unwrap_or_else(|| source.join("debian/tests/control"))
    }

    /// Whether `--test-name` and `--skip-test` select the test `name`.
    pub fn selected(&self, name: &str) -> bool {
        (self.only_tests.is_empty() || self.only_tests.iter().any(|t| t == name))
            && !self.skip_tests.iter().any(|t| t == name)
    }
}

/// What the runner learns about the testbed once, right after opening it.
struct Probe {
    arch: Option<String>,
    kernel: String,
    nproc: String,
    /// /proc/cpuinfo's model name and flags, for testinfo.json.
    cpu_model: String,
    cpu_flags: String,
    /// `dpkg-query` output, when the testbed has dpkg.
    packages: Option<String>,
}

/// How a test's command came back.
enum TestRun {
    /// It ended (maybe killed by `/tmp/autopkgtest-reboot`).
    Ended(crate::testbed::ExecOutcome),
    /// The test called `/tmp/autopkgtest-reboot-prepare` with this mark
    /// and is rebooting the testbed.
    PreparedReboot(String),
}

/// A failure that ends the run early.
enum Abort {
    Testbed(String),
    /// An option the testbed cannot honour (exit 20).
    Usage(String),
    /// The package is at fault before any test could run (exit 12).
    BadPackage(String),
    /// This signal stopped the run.
    Interrupted(i32),
}

/// How a run ended, as the runner saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The run ended by itself with autopkgtest's exit status.
    Exited(i32),
    /// This signal stopped it; the results so far are on disk.
    Interrupted(i32),
}

impl From<TestbedError> for Abort {
    fn from(e: TestbedError) -> Self {
        Abort::Testbed(e.detail())
    }
}

/// The host's dpkg architecture, when it has dpkg.
pub fn host_arch() -> Option<String> {
    let out = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Parses the suite of `tree` in `control` for `arch`: the entries in file
/// order.
pub fn load_suite(control: &Path, tree: &Path, arch: &str) -> Result<Vec<Entry>, String> {
    let source = SourcePackage::read(tree)?;
    let ctx = DependsContext {
        source: source.as_ref(),
        arch,
    };
    Ok(control::parse_file(control, &ctx))
}

/// Runs the suite on `tb` and says how it ended. Results are on disk as
/// each test finishes; `interrupt` resolving to a signal number stops the
/// run, and results.json then names the interrupted test and those not run.
pub async fn run(
    opts: &RunOptions,
    tb: &mut dyn Testbed,
    log: &RunLog,
    interrupt: impl std::future::Future<Output = i32> + Send,
) -> RunEnd {
    let Some(mut reporter) = reporter(opts, log) else {
        return RunEnd::Exited(EXIT_UNEXPECTED);
    };
    reporter.context.insert(
        "capabilities".into(),
        serde_json::to_value(tb.capabilities()).unwrap_or_default(),
    );
    let mut run = Run {
        opts,
        log,
        reporter,
        dirty: false,
        installed: None,
        deps_installed: Vec::new(),
        built_tree: None,
        built_debs: (Vec::new(), None),
        blamed: Vec::new(),
        acquired: None,
        started: Instant::now(),
        test_kernels: Vec::new(),
        current: None,
        pending: Vec::new(),
    };
    tokio::pin!(interrupt);
    let result = tokio::select! {
        r = run.all(tb) => r,
        signal = &mut interrupt => Err(Abort::Interrupted(signal)),
    };
    // As autopkgtest: no apt reset on the way out of an interrupted run.
    if !matches!(result, Err(Abort::Interrupted(_))) {
        if let Err(msg) = run.unpublish(tb).await {
            log.error(&format!("resetting the testbed's apt configuration: {msg}"));
        }
    }
    for (name, path) in tb.logs() {
        if let Err(e) = tokio::fs::copy(&path, opts.output_dir.join(&name)).await {
            log.error(&format!("keeping {}: {e}", path.display()));
        }
    }
    let blamed = std::mem::take(&mut run.blamed);
    let (current, pending) = (run.current.take(), std::mem::take(&mut run.pending));
    finish(
        &mut run.reporter,
        result,
        current,
        &pending,
        &blamed,
        opts.validate,
    )
}

/// Why a run ended before its testbed was open.
pub enum NotStarted {
    /// A signal.
    Interrupted(i32),
    /// The testbed did not open (exit 16).
    Testbed(String),
    /// The package is at fault (exit 12).
    BadPackage(String),
    /// The testbed refused its arguments (exit 20).
    Usage(String),
}

/// Records a run that ended before its testbed was open: the summary's
/// note, and results.json naming the selected tests as not run.
pub fn not_started(opts: &RunOptions, log: &RunLog, why: NotStarted) -> RunEnd {
    let Some(mut reporter) = reporter(opts, log) else {
        return RunEnd::Exited(EXIT_UNEXPECTED);
    };
    let planned: Vec<String> = host_arch()
        .and_then(|arch| load_suite(&opts.control_path(&opts.source), &opts.source, &arch).ok())
        .unwrap_or_default()
        .iter()
        .map(Entry::name)
        .filter(|name| opts.selected(name))
        .map(str::to_string)
        .collect();
    let abort = match why {
        NotStarted::Interrupted(signal) => Abort::Interrupted(signal),
        NotStarted::Testbed(msg) => Abort::Testbed(msg),
        NotStarted::BadPackage(msg) => Abort::BadPackage(msg),
        NotStarted::Usage(msg) => Abort::Usage(msg),
    };
    finish(
        &mut reporter,
        Err(abort),
        None,
        &planned,
        &blame(opts),
        false,
    )
}

/// The reporter of a run, with the facts known before it starts.
fn reporter(opts: &RunOptions, log: &RunLog) -> Option<Reporter> {
    let suite = opts
        .source
        .file_name()
        .map_or("tests".into(), |n| n.to_string_lossy().into_owned());
    let summary_path = opts
        .summary_file
        .clone()
        .unwrap_or_else(|| opts.output_dir.join("summary"));
    match Reporter::new(&opts.output_dir, &summary_path, &suite, log.clone()) {
        Ok(mut reporter) => {
            reporter
                .context
                .insert("testbed".into(), opts.testbed_argv.join(" ").into());
            Some(reporter)
        }
        Err(e) => {
            log.error(&format!("cannot write {}: {e}", summary_path.display()));
            None
        }
    }
}

/// Writes how the run ended: the summary's note, the test it stopped in
/// and those it never reached, results.json with `complete` and the code.
/// `blamed` is what a bad package blames; `validate` is `-V`'s run.
fn finish(
    reporter: &mut Reporter,
    result: Result<(), Abort>,
    current: Option<String>,
    pending: &[String],
    blamed: &[String],
    validate: bool,
) -> RunEnd {
    let (end, why) = match result {
        Ok(()) if validate => (RunEnd::Exited(0), String::new()),
        Ok(()) => (RunEnd::Exited(reporter.exit.finish()), String::new()),
        Err(Abort::Usage(msg)) => {
            reporter.summary_note(&msg);
            (RunEnd::Exited(EXIT_UNEXPECTED), msg)
        }
        Err(Abort::Testbed(msg)) => {
            let note = format!("testbed failure: {msg}");
            reporter.summary_note(&note);
            (RunEnd::Exited(EXIT_TESTBED_FAILURE), note)
        }
        Err(Abort::BadPackage(msg)) => {
            // As autopkgtest: what it blames, why, then the verdict.
            reporter.summary_note(&format!("blame: {}", blamed.join(" ")));
            reporter.summary_note(&format!("badpkg: {msg}"));
            let note = format!("erroneous package: {msg}");
            reporter.summary_note(&note);
            (RunEnd::Exited(EXIT_BAD_PACKAGE), note)
        }
        Err(Abort::Interrupted(signal)) => {
            let note = format!("interrupted by signal {signal}");
            reporter.summary_note(&format!("quitting: {note}"));
            (RunEnd::Interrupted(signal), note)
        }
    };
    if let Some(name) = current {
        reporter.unfinished(&name, Unfinished::Interrupted(why.clone()));
    }
    for name in pending {
        reporter.unfinished(name, Unfinished::NotRun(why.clone()));
    }
    let code = match end {
        RunEnd::Exited(code) => code,
        RunEnd::Interrupted(signal) => 128 + signal,
    };
    reporter.write_files(Some((code, why.is_empty())));
    end
}

struct Run<'a> {
    opts: &'a RunOptions,
    log: &'a RunLog,
    reporter: Reporter,
    /// A test broke the testbed: revert before the next one.
    dirty: bool,
    /// Installed packages, cached until the next revert.
    installed: Option<source::Installed>,
    /// The dependencies installed for the last test (what a revert undoes).
    deps_installed: Vec<String>,
    /// The source tree after it was built, copied back to the host so
    /// that a revert does not cost another build.
    built_tree: Option<tempfile::TempDir>,
    /// The binaries the build made, when they are tested, and their host
    /// temp dir: published like given binaries after every revert.
    built_debs: (Vec<PathBuf>, Option<tempfile::TempDir>),
    /// What a bad package blames, as autopkgtest lists it (`arg:DEB
    /// deb:NAME` for each binary, then the source as given), once the
    /// testbed is set up.
    blamed: Vec<String>,
    /// The tree unpacked or fetched in the testbed (`.dsc`, package name).
    acquired: Option<tempfile::TempDir>,
    /// When the run started, for `--timeout`.
    started: Instant,
    /// Kernels other than the first that tests rebooted into: (test,
    /// reboot mark, `uname -srv`).
    test_kernels: Vec<(String, String, String)>,
    /// The test whose turn it is (its testbed being prepared, or running).
    current: Option<String>,
    /// The tests still to run, in order.
    pending: Vec<String>,
}

impl Run<'_> {
    async fn all(&mut self, tb: &mut dyn Testbed) -> Result<(), Abort> {
        let probe = self.probe(tb).await?;
        self.write_testinfo(tb, &probe);
        if let Some(packages) = &probe.packages {
            let _ = std::fs::write(
                self.opts.output_dir.join("testbed-packages"),
                dpkg_list(packages),
            );
        }
        let arch = probe.arch.clone().unwrap_or_else(|| "amd64".into());
        if let Some(test_arch) = self.opts.test_arch.as_ref().filter(|a| **a != arch) {
            return Err(Abort::Usage(format!(
                "--test-architecture {test_arch}: dep8 tests only the testbed's own architecture ({arch})"
            )));
        }
        let mut resolve_opts = self.opts.resolve.clone();
        resolve_opts.arch = Some(arch.clone());
        if self.opts.fetch.is_none() {
            // Known before setup, so that an interrupt there names them.
            let control = self.opts.control_path(self.source());
            self.pending = load_suite(&control, self.source(), &arch)
                .unwrap_or_default()
                .iter()
                .map(Entry::name)
                .filter(|name| self.opts.selected(name))
                .map(str::to_string)
                .collect();
        }

        let apt_options = self.opts.setup.apt_options();
        if !apt_options.is_empty() && !tb.capabilities().has(Capability::RootOnTestbed) {
            return Err(Abort::Usage(format!(
                "{}: the testbed offers no root to change its apt configuration",
                apt_options.join(", ")
            )));
        }
        // As autopkgtest: set up first (a setup command may add the deb-src
        // lines `apt-get source` needs), then get the source.
        self.secure_scratch(tb).await?;
        self.setup_testbed(tb).await?;
        self.blamed = blame(self.opts);
        if let Some(fetch) = &self.opts.fetch {
            self.acquire(tb, fetch).await?;
        }
        self.write_testpkg_version();
        if self.opts.build.binaries {
            if self.opts.dependencies == DependencyPolicy::CheckOnly {
                self.log.info(
                    "not building the source: dep8 installs no build dependencies on this \
                     testbed, so -B is implied (dep8 started as autopkgtest builds here)",
                );
            } else {
                self.log.info("build needed for binaries");
                self.build(tb, &probe, true).await?;
            }
        }
        let tests_tree = self.tests_tree().to_path_buf();
        let generated = self.autodep8(&tests_tree);
        let control = generated.as_ref().map_or_else(
            || self.opts.control_path(&tests_tree),
            |f| f.path().to_path_buf(),
        );
        // One that cannot be read is BROKEN below, not missing.
        if let Ok(false) = control.try_exists() {
            self.log.info(&format!(
                "{} has no {}",
                self.source().display(),
                control.display()
            ));
            self.record_no_tests();
            return Ok(());
        }
        let entries = match load_suite(&control, &tests_tree, &arch) {
            Ok(entries) => entries,
            Err(e) => vec![Entry::Broken {
                name: "*".into(),
                problem: control::Problem {
                    location: control::Location {
                        file: self.source().join("debian/control"),
                        line: 0,
                    },
                    field: None,
                    message: e,
                },
            }],
        };
        if self.opts.validate {
            if let Some(Entry::Broken { problem, .. }) =
                entries.iter().find(|e| matches!(e, Entry::Broken { .. }))
            {
                return Err(Abort::BadPackage(problem.to_string()));
            }
            self.reporter
                .summary_line("*                    Test specification is valid");
            return Ok(());
        }
        // Static decisions first, as autopkgtest reports them at parse time.
        self.pending.clear();
        let mut runnable = Vec::new();
        for entry in entries
            .into_iter()
            .filter(|e| self.opts.selected(e.name()) || e.name() == "*")
        {
            let name = entry.name().to_string();
            let mut details = vec![];
            let outcome = match verdict(&entry, tb.capabilities(), &resolve_opts) {
                Verdict::Run => {
                    if let Entry::Test(test) = entry {
                        runnable.push(test);
                    }
                    continue;
                }
                Verdict::Broken(problem) => {
                    self.log.error(&problem);
                    // autopkgtest's summary has no BROKEN: a bad package.
                    details = vec![
                        format!("blame: {}", self.source().display()),
                        format!("badpkg: {problem}"),
                    ];
                    Outcome::Broken(problem)
                }
                Verdict::Skip(reason) => {
                    if let Entry::Unsupported { location, .. } = &entry {
                        self.log.warning(&format!("{location}: {name}: {reason}"));
                    }
                    Outcome::Skip(reason)
                }
            };
            self.reporter
                .record(&name, outcome, Duration::ZERO, details);
        }
        if !self.opts.only_tests.is_empty()
            && runnable.is_empty()
            && self.reporter.results().is_empty()
        {
            self.log.error(&format!(
                "no test matches --test-name {}",
                self.opts.only_tests.join(", ")
            ));
        }
        if runnable.is_empty() && self.reporter.results().is_empty() {
            self.record_no_tests();
            return Ok(());
        }
        self.pending = runnable.iter().map(|t| t.name.clone()).collect();

        let source = self.tests_tree().to_path_buf();
        if let Ok(Err(why)) = tokio::task::spawn_blocking(move || readable(&source)).await {
            return Err(Abort::BadPackage(format!(
                "cannot read the source tree: {why}"
            )));
        }
        if self.built_tree.is_none() && runnable.iter().any(|t| t.has(&Restriction::BuildNeeded)) {
            self.log.info("build needed for tests");
            self.build(tb, &probe, false).await?;
        }
        let tree = format!("{}/src", tb.scratch());
        let mut copied = false;
        for test in runnable {
            let reverting = self.needs_revert(tb, &test);
            if !reverting && !copied {
                // The tree's first copy is no test's turn yet.
                self.copy_tree(tb, &tree).await?;
                copied = true;
            }
            self.pending.remove(0);
            self.current = Some(test.name.clone());
            if reverting {
                self.revert(tb).await?;
                self.setup_testbed(tb).await?;
                self.copy_tree(tb, &tree).await?;
                copied = true;
            }
            if self.within_global(Duration::MAX).is_zero() {
                let skip = Outcome::Skip("global timeout exceeded".into());
                self.reporter
                    .record(&test.name, skip, Duration::ZERO, vec![]);
                continue;
            }
            let started = Instant::now();
            let (outcome, details) = self.one(tb, &test, &tree, &probe).await?;
            self.current = None;
            self.reporter
                .record(&test.name, outcome, started.elapsed(), details);
            if test.has(&Restriction::BreaksTestbed) {
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// `limit`, cut to what is left of `--timeout` (zero once it is up).
    fn within_global(&self, limit: Duration) -> Duration {
        match self.opts.timeouts.global {
            Some(global) => limit.min(global.saturating_sub(self.started.elapsed())),
            None => limit,
        }
    }

    async fn timed<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, TestbedError>>,
    ) -> Result<T, Abort> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(Abort::from),
            Err(_) => Err(Abort::Testbed(format!(
                "{what} timed out after {}s",
                limit.as_secs()
            ))),
        }
    }

    /// Puts `text` into the testbed file `target`, through a host temp file.
    async fn copy_text(&self, tb: &dyn Testbed, text: &str, target: &str) -> Result<(), Abort> {
        let dir = host_temp_dir("dep8-text.")?;
        let file = dir.path().join("text");
        std::fs::write(&file, text)
            .map_err(|e| Abort::Testbed(format!("writing {}: {e}", file.display())))?;
        self.timed(
            self.opts.timeouts.copy,
            &format!("copying {target} to the testbed"),
            tb.copy_down(&file, target),
        )
        .await
    }

    /// Runs one of the runner's own shell steps in the testbed, as root,
    /// with the short time limit; a failure is the testbed's.
    async fn shell_step(&self, tb: &dyn Testbed, script: &str, what: &str) -> Result<(), Abort> {
        let out = self
            .timed(
                self.opts.timeouts.short,
                what,
                tb.exec(ExecRequest::shell(script).capture()),
            )
            .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Abort::Testbed(format!(
                "{what} failed: {}",
                out.stderr_text().trim()
            )))
        }
    }

    /// autopkgtest's line for a package without tests (exit 8).
    fn record_no_tests(&mut self) {
        self.reporter.record(
            "*",
            Outcome::Skip("no tests in this package".into()),
            Duration::ZERO,
            vec![],
        );
    }

    /// Gives the scratch dir autopkgtest 5.48's mode
    /// ([`Capabilities::scratch_mode`]); where it is not world-writable, the
    /// normal user owns it. After opening and after every revert.
    async fn secure_scratch(&self, tb: &dyn Testbed) -> Result<(), Abort> {
        let caps = tb.capabilities();
        let mode = caps.scratch_mode(self.opts.insecure);
        let script = format!("chmod {mode} -- \"$1\"; [ -z \"$2\" ] || chown -- \"$2\" \"$1\"");
        let owner = match self.normal_user(caps) {
            Some(user) if mode != "1777" && caps.has(Capability::RootOnTestbed) => user,
            _ => String::new(),
        };
        let req = ExecRequest::new(["sh", "-ec", &script, "sh", tb.scratch(), &owner]).capture();
        let out = self
            .timed(
                self.opts.timeouts.short,
                "securing the scratch dir",
                tb.exec(req),
            )
            .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Abort::Testbed(format!(
                "setting the mode of {}: {}",
                tb.scratch(),
                out.stderr_text().trim()
            )))
        }
    }

    /// Applies the setup options; after opening and after every revert.
    async fn setup_testbed(&self, tb: &dyn Testbed) -> Result<(), Abort> {
        let mut setup = std::borrow::Cow::Borrowed(&self.opts.setup);
        if !self.built_debs.0.is_empty() {
            setup
                .to_mut()
                .binaries
                .extend(self.built_debs.0.iter().cloned());
        }
        self.apply(tb, &setup).await
    }

    /// Takes the published binaries (given or built) out of the apt
    /// sources of a testbed that cannot revert, as autopkgtest does.
    async fn unpublish(&self, tb: &dyn Testbed) -> Result<(), String> {
        let published = !self.opts.setup.binaries.is_empty() || !self.built_debs.0.is_empty();
        if !published || tb.capabilities().has(Capability::Revert) {
            return Ok(());
        }
        self.log
            .info("removing the binaries from the testbed's apt sources");
        let tap = self.log_tap();
        match crate::setup::unpublish_binaries(tb, self.opts.timeouts.install, &tap).await {
            Ok(()) => Ok(()),
            Err(SetupError::BadPackage(m) | SetupError::Testbed(m)) => Err(m),
        }
    }

    /// Applies `setup`, with what it says in the log.
    async fn apply(&self, tb: &dyn Testbed, setup: &Setup) -> Result<(), Abort> {
        if !setup.is_empty() {
            self.log.info("setting up the testbed");
            let user = self.normal_user(tb.capabilities());
            let apply = setup.apply(
                tb,
                user.as_deref(),
                self.opts.timeouts.install,
                self.log_tap(),
            );
            match apply.await {
                Ok(()) => {}
                Err(SetupError::BadPackage(m)) => return Err(Abort::BadPackage(m)),
                Err(SetupError::Testbed(m)) => return Err(Abort::Testbed(m)),
            }
        }
        Ok(())
    }

    /// Copies the source tree in and installs the in-testbed helpers; after
    /// setting up the testbed.
    async fn copy_tree(&self, tb: &dyn Testbed, tree: &str) -> Result<(), Abort> {
        let source = self.tests_tree();
        self.log
            .info(&format!("copying {} to the testbed", source.display()));
        self.timed(
            self.opts.timeouts.copy,
            "copying the source tree",
            tb.copy_down(source, tree),
        )
        .await?;
        // As autopkgtest: the tree belongs to the normal user, so tests
        // without needs-root may write into it (world-writable where chown
        // fails only with --insecure, as in autopkgtest 5.48).
        if let Some(user) = self.normal_user(tb.capabilities()) {
            let (user, tree) = (quote(&user), quote(tree));
            let fallback = if self.opts.insecure {
                format!(" 2>/dev/null || chmod -R go+rwX -- {tree}")
            } else {
                String::new()
            };
            let own = format!("chown -R {user} -- {tree}{fallback}");
            self.shell_step(tb, &own, &format!("handing {tree} to {user}"))
                .await?;
        }
        if reboot::available(tb.capabilities()) {
            self.timed(
                self.opts.timeouts.short,
                "preparing the testbed",
                reboot::install(tb),
            )
            .await?;
        }
        Ok(())
    }

    /// Builds the source in `SCRATCH/build` ([`build::Build`]) and keeps
    /// the built tree on the host for the tests; with `binaries`, also the
    /// `.deb`s it made, published in the testbed like given ones (now
    /// where the testbed cannot revert; otherwise after the revert that
    /// drops the build dependencies).
    async fn build(
        &mut self,
        tb: &dyn Testbed,
        probe: &Probe,
        binaries: bool,
    ) -> Result<(), Abort> {
        let caps = tb.capabilities().clone();
        let root = caps.has(Capability::RootOnTestbed);
        let user = self.normal_user(&caps).filter(|_| root);
        let dir = format!("{}/build", tb.scratch());
        let tree = format!("{dir}/src");
        self.shell_step(
            tb,
            &format!("rm -rf '{dir}'; mkdir -p '{dir}'"),
            "making the build dir",
        )
        .await?;
        self.timed(
            self.opts.timeouts.copy,
            "copying the source tree",
            tb.copy_down(self.source(), &tree),
        )
        .await?;
        if let Some(user) = &user {
            self.shell_step(
                tb,
                &format!("chown -R '{user}' -- '{dir}'"),
                "handing the build dir over",
            )
            .await?;
        }
        let parallel = self.parallel(probe);
        let build = build::Build {
            tree: &tree,
            user: user.as_deref(),
            root,
            may_install: self.opts.dependencies == DependencyPolicy::Install,
            parallel,
            gain_root: self.opts.build.gain_root.as_deref(),
            env: &self.opts.env,
            install_timeout: self.opts.timeouts.install,
            build_timeout: self.within_global(self.opts.timeouts.build),
            log: self.log_tap(),
        };
        // The build dependencies stay: start the tests afresh.
        self.dirty = true;
        self.installed = None;
        build.run(tb).await.map_err(abort)?;
        let built = host_temp_dir("dep8-built-tree.")?;
        self.timed(
            self.opts.timeouts.copy,
            "copying the built tree",
            tb.copy_up(&tree, built.path()),
        )
        .await?;
        self.built_tree = Some(built);
        if binaries {
            let host = host_temp_dir("dep8-built-debs.")?;
            let debs = self
                .timed(
                    self.opts.timeouts.copy,
                    "copying the built binaries",
                    async { Ok(build::collect_debs(tb, &dir, host.path()).await) },
                )
                .await?
                .map_err(abort)?;
            let names: Vec<String> = debs
                .iter()
                .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            self.log
                .info(&format!("built binaries: {}", names.join(" ")));
            self.built_debs = (debs, Some(host));
            if !caps.has(Capability::Revert) && !self.built_debs.0.is_empty() {
                let publish = Setup {
                    binaries: self.built_debs.0.clone(),
                    ..Setup::default()
                };
                self.apply(tb, &publish).await?;
            }
        }
        self.shell_step(tb, &format!("rm -rf '{dir}'"), "removing the build dir")
            .await
    }

    /// The tree the tests run from: the built one, or the source.
    fn tests_tree(&self) -> &Path {
        self.built_tree.as_ref().map_or(self.source(), |t| t.path())
    }

    /// autodep8's control file for `tree`, where autopkgtest would ask for
    /// one (no `--no-auto-control` or `--override-control`, and no
    /// debian/tests/control or a `Testsuite: autopkgtest-pkg-*`).
    fn autodep8(&self, tree: &Path) -> Option<tempfile::NamedTempFile> {
        if self.opts.no_auto_control
            || self.opts.override_control.is_some()
            || !source::wants_autodep8(tree)
        {
            return None;
        }
        match source::autodep8(tree) {
            Ok(Some(control)) => {
                self.log.info("tests generated by autodep8");
                Some(control)
            }
            Ok(None) => None,
            Err(e) => {
                self.log.info(&format!("autodep8 generated no tests: {e}"));
                None
            }
        }
    }

    /// The source tree on the host: the one given, or the one acquired.
    fn source(&self) -> &Path {
        self.acquired
            .as_ref()
            .map_or(self.opts.source.as_path(), |t| t.path())
    }

    async fn acquire(&mut self, tb: &dyn Testbed, fetch: &Fetch) -> Result<(), Abort> {
        self.log.info(&format!("getting the source: {fetch}"));
        let dir = host_temp_dir("dep8-source.")?;
        let limit = self.opts.timeouts.install;
        let may_install = self.opts.dependencies == DependencyPolicy::Install
            && tb.capabilities().has(Capability::RootOnTestbed);
        let get = acquire::acquire(tb, fetch, dir.path(), limit, self.log_tap(), may_install);
        let result = self
            .timed(
                limit + Duration::from_secs(5),
                "getting the source",
                async { Ok(get.await) },
            )
            .await?;
        match result {
            Ok(()) => {
                self.acquired = Some(dir);
                Ok(())
            }
            Err(AcquireError::BadPackage(m)) => Err(Abort::BadPackage(m)),
            Err(AcquireError::Testbed(m)) => Err(Abort::Testbed(m)),
        }
    }

    /// Copies what a testbed command prints into the log as it arrives.
    fn log_tap(&self) -> Tap {
        let log = self.log.clone();
        Arc::new(move |bytes: &[u8]| log.raw(bytes))
    }

    /// A reboot a test asked for: errors and the timeout name the test and
    /// its mark.
    async fn reboot_step(
        &self,
        name: &str,
        mark: &str,
        reboot: impl std::future::Future<Output = Result<(), TestbedError>>,
    ) -> Result<(), Abort> {
        let what = format!("test {name}: the reboot with marker {mark}");
        let reboot = async {
            reboot.await.map_err(|e| {
                TestbedError::Failure(format!("{what} did not come back: {}", e.detail()))
            })
        };
        self.timed(self.opts.timeouts.reboot, &what, reboot).await
    }

    /// Runs a test's command; where the testbed can reboot, a watcher runs
    /// beside it for `/tmp/autopkgtest-reboot-prepare`. When the test calls
    /// that, the testbed is got ready to go down, the test released, and
    /// its command left to end as the testbed goes down; what it wrote to
    /// `outputs` (its stdout and stderr files) from then on is dropped, as
    /// autopkgtest drops it.
    async fn run_watched(
        &self,
        tb: &dyn Testbed,
        req: ExecRequest,
        can_reboot: bool,
        name: &str,
        outputs: [&Path; 2],
    ) -> Result<TestRun, Abort> {
        let watch = async {
            match reboot::watch_prepare(tb).await {
                Ok(Some(mark)) => mark,
                Ok(None) => std::future::pending().await,
                Err(e) => {
                    tracing::debug!("watching for a reboot preparation: {e}");
                    std::future::pending().await
                }
            }
        };
        let mut exec = std::pin::pin!(tb.exec(req));
        let mark = tokio::select! {
            out = &mut exec => return Ok(TestRun::Ended(out?)),
            mark = watch, if can_reboot => mark,
        };
        self.log.info(&format!(
            "test {name}: preparing for a reboot with marker {mark}"
        ));
        let kept = outputs.map(|path| std::fs::metadata(path).map_or(0, |m| m.len()));
        let going_down = async {
            if tokio::time::timeout(self.opts.timeouts.reboot, &mut exec)
                .await
                .is_err()
            {
                tracing::warn!("test {name}: still running after its reboot");
            }
        };
        let (prepared, ()) = tokio::join!(
            self.timed(
                self.opts.timeouts.reboot,
                "getting the testbed ready to reboot",
                tb.prepare_reboot(),
            ),
            going_down
        );
        for (path, len) in outputs.iter().zip(kept) {
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
                let _ = file.set_len(len);
            }
        }
        prepared.map(|()| TestRun::PreparedReboot(mark))
    }

    /// Reverting may restart a whole machine: it gets the reboot time limit.
    async fn revert(&mut self, tb: &mut dyn Testbed) -> Result<(), Abort> {
        self.log.info("reverting the testbed");
        self.timed(self.opts.timeouts.reboot, "reverting", tb.revert())
            .await?;
        self.secure_scratch(tb).await?;
        self.installed = None;
        self.deps_installed.clear();
        self.dirty = false;
        Ok(())
    }

    /// One exec learns everything the runner needs about the testbed.
    async fn probe(&self, tb: &dyn Testbed) -> Result<Probe, Abort> {
        let script = "uname -srv; nproc; dpkg --print-architecture 2>/dev/null || echo; \
                      cpu() { v=$(grep -m1 -iE \"^($1)[[:space:]]*:\" /proc/cpuinfo 2>/dev/null | sed 's/^[^:]*:[[:space:]]*//'); echo \"$v\"; }; \
                      cpu 'model.*name|cpu'; cpu 'flags|features'; \
                      dpkg-query -W -f \"$1\" 2>/dev/null || true";
        let out = self
            .timed(
                self.opts.timeouts.short,
                "probing the testbed",
                tb.exec(
                    ExecRequest::new(["sh", "-c", script, "probe", source::DPKG_QUERY_FORMAT])
                        .capture(),
                ),
            )
            .await?;
        if !out.status.success() {
            return Err(Abort::Testbed(format!(
                "probing the testbed failed: {}",
                out.stderr_text().trim()
            )));
        }
        let text = out.stdout_text();
        let mut lines = text.splitn(6, '\n');
        let mut next = || lines.next().unwrap_or_default().trim().to_string();
        let (kernel, nproc, arch) = (next(), next(), next());
        let (cpu_model, cpu_flags) = (next(), next());
        let packages = next();
        Ok(Probe {
            arch: (!arch.is_empty()).then_some(arch),
            kernel,
            nproc,
            cpu_model,
            cpu_flags,
            packages: (!packages.is_empty()).then_some(packages),
        })
    }

    /// After a test's reboot: a kernel other than the first one is
    /// recorded (testinfo.json's `test_kernel_versions`), as autopkgtest does.
    async fn note_kernel(
        &mut self,
        tb: &dyn Testbed,
        test: &str,
        mark: &str,
        probe: &Probe,
    ) -> Result<(), Abort> {
        let out = self
            .timed(
                self.opts.timeouts.short,
                "reading the kernel version",
                tb.exec(ExecRequest::new(["uname", "-srv"]).capture()),
            )
            .await?;
        let kernel = out.stdout_text().trim().to_string();
        if out.status.success() && kernel != probe.kernel {
            self.log.info(&format!(
                "testbed running kernel changed: {kernel} (current test: {test}, last reboot marker: {mark})"
            ));
            self.test_kernels.push((test.into(), mark.into(), kernel));
            self.write_testinfo(tb, probe);
        }
        Ok(())
    }

    fn write_testinfo(&self, tb: &dyn Testbed, probe: &Probe) {
        let mut info = serde_json::Map::new();
        info.insert(
            "virt_server".into(),
            virt_server_line(&self.opts.testbed_argv).into(),
        );
        info.insert("kernel_version".into(), probe.kernel.clone().into());
        info.insert("nproc".into(), probe.nproc.clone().into());
        if !self.test_kernels.is_empty() {
            info.insert(
                "test_kernel_versions".into(),
                serde_json::to_value(&self.test_kernels).unwrap_or_default(),
            );
        }
        for (key, value) in [
            ("cpu_model", &probe.cpu_model),
            ("cpu_flags", &probe.cpu_flags),
        ] {
            if !value.is_empty() {
                info.insert(key.into(), value.clone().into());
            }
        }
        if let Some(arch) = &probe.arch {
            info.insert("dpkg_architecture".into(), arch.clone().into());
        }
        if !self.opts.env.is_empty() {
            let env: Vec<String> = self
                .opts
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            info.insert("custom_environment".into(), env.into());
        }
        info.insert("dep8_version".into(), env!("CARGO_PKG_VERSION").into());
        for (k, v) in tb.describe() {
            info.insert(k, v.into());
        }
        let text = serde_json::to_string_pretty(&info).unwrap_or_default();
        let _ = std::fs::write(self.opts.output_dir.join("testinfo.json"), text);
    }

    /// parallel=N for DEB_BUILD_OPTIONS: `--build-parallel`, or nproc.
    fn parallel(&self, probe: &Probe) -> String {
        self.opts
            .build
            .parallel
            .map_or_else(|| probe.nproc.clone(), |n| n.to_string())
    }

    /// `--setup-commands-boot` after a reboot.
    async fn boot_setup(&self, tb: &dyn Testbed) -> Result<(), Abort> {
        let user = self.normal_user(tb.capabilities());
        let boot = self.opts.setup.boot(
            tb,
            user.as_deref(),
            self.opts.timeouts.install,
            self.log_tap(),
        );
        match boot.await {
            Ok(()) => Ok(()),
            Err(SetupError::BadPackage(m)) => Err(Abort::BadPackage(m)),
            Err(SetupError::Testbed(m)) => Err(Abort::Testbed(m)),
        }
    }

    /// `--shell`, `--shell-fail`: an interactive shell in the testbed, in
    /// `cwd` with `env`, on dep8's terminal; without one, only a note.
    async fn shell(&self, tb: &dyn Testbed, cwd: &str, env: &[String]) -> Result<(), Abort> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            self.log
                .warning("--shell/--shell-fail: stdin is not a terminal, so no shell is opened");
            return Ok(());
        }
        self.log
            .info(" - - - - - - - - - - running shell - - - - - - - - - -");
        let tty = Path::new("/dev/tty");
        // The command runs in a process group of its own: the shell takes
        // the terminal's foreground (perl is in every Debian), and dep8
        // takes it back afterwards.
        let mut req = ExecRequest::new(["perl", "-MPOSIX", "-e", TAKE_TERMINAL, "env"])
            .stdin(crate::testbed::Input::File(tty.to_path_buf()))
            .stdout(Output::file(tty))
            .stderr(Output::file(tty))
            .cwd(cwd);
        req.argv.extend(env.iter().cloned());
        req.argv.extend(["bash".to_string(), "-i".to_string()]);
        let result = tb.exec(req).await;
        take_back_terminal();
        result?;
        Ok(())
    }

    /// `testpkg-version`: "SOURCE VERSION" from the tree's changelog, as
    /// autopkgtest writes it for debci.
    fn write_testpkg_version(&self) {
        let changelog = self.source().join("debian/changelog");
        let Ok(text) = std::fs::read_to_string(&changelog) else {
            return;
        };
        let first = text.lines().next().unwrap_or_default();
        let mut words = first.splitn(3, ' ');
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            return;
        };
        let version = version.trim_start_matches('(').trim_end_matches(')');
        self.log
            .info(&format!("testing package {name} version {version}"));
        let path = self.opts.output_dir.join("testpkg-version");
        if let Err(e) = std::fs::write(&path, format!("{name} {version}\n")) {
            self.log
                .warning(&format!("cannot write {}: {e}", path.display()));
        }
    }

    /// The normal user for tests without needs-root, if any.
    fn normal_user(&self, caps: &Capabilities) -> Option<String> {
        self.opts
            .user
            .clone()
            .or_else(|| caps.suggested_normal_users.first().cloned())
    }

    /// The installed packages, listed once and cached until they change.
    async fn installed(&mut self, tb: &dyn Testbed) -> Result<Option<&source::Installed>, Abort> {
        if self.installed.is_none() {
            let req =
                ExecRequest::new(["dpkg-query", "-W", "-f", source::DPKG_QUERY_FORMAT]).capture();
            let out = self
                .timed(
                    self.opts.timeouts.short,
                    "listing installed packages",
                    tb.exec(req),
                )
                .await?;
            if !out.status.success() {
                return Ok(None);
            }
            self.installed = Some(source::parse_installed(&out.stdout_text()));
        }
        Ok(self.installed.as_ref())
    }

    /// Makes the test's dependencies present; an unsatisfiable one is
    /// `badpkg` (or SKIP with skip-not-installable).
    async fn provide_depends(
        &mut self,
        tb: &dyn Testbed,
        test: &Test,
        arch: &str,
    ) -> Result<Option<(Outcome, Vec<String>)>, Abort> {
        let recommends = test.has(&Restriction::NeedsRecommends);
        let why = match self
            .ensure_packages(tb, &test.depends, recommends, arch, &test.name)
            .await?
        {
            Ok(()) => return Ok(None),
            Err(why) => why,
        };
        if test.has(&Restriction::SkipNotInstallable) {
            return Ok(Some((
                Outcome::Skip("installation fails and skip-not-installable set".into()),
                vec![],
            )));
        }
        Ok(Some((
            Outcome::Fail("badpkg".into()),
            vec![
                format!("blame: {}", self.blamed.join(" ")),
                format!("badpkg: {why}"),
            ],
        )))
    }

    /// Makes `deps` present: installed with apt where dep8 may change the
    /// testbed's packages, otherwise checked. `Err(why)` when they are not;
    /// `what` names the test (for `<test>-packages`) or the build.
    async fn ensure_packages(
        &mut self,
        tb: &dyn Testbed,
        deps: &[String],
        recommends: bool,
        arch: &str,
        what: &str,
    ) -> Result<Result<(), String>, Abort> {
        if deps.is_empty() {
            return Ok(Ok(()));
        }
        let Some(installed) = self.installed(tb).await? else {
            self.log
                .warning("the testbed has no dpkg: dependencies are not checked");
            return Ok(Ok(()));
        };
        let missing = source::unsatisfied(deps, installed, arch);
        if missing.is_empty() {
            return Ok(Ok(()));
        }
        let may_install = self.opts.dependencies == DependencyPolicy::Install
            && tb.capabilities().has(Capability::RootOnTestbed);
        let why = if may_install {
            self.log
                .info(&format!("{what}: installing {}", missing.join(", ")));
            let limit = self.opts.timeouts.install;
            let result = self
                .timed(
                    limit + Duration::from_secs(5),
                    "installing dependencies",
                    install::apt_satisfy(
                        tb,
                        &missing,
                        recommends,
                        self.opts.setup.apt_fallback(),
                        limit,
                        self.log_tap(),
                    ),
                )
                .await?;
            let before = self.installed.take().unwrap_or_default();
            self.deps_installed = deps.to_vec();
            match result {
                Ok(()) => {
                    self.write_packages_diff(tb, what, &before).await?;
                    return Ok(Ok(()));
                }
                Err(install::Unsatisfiable(said)) => format!(
                    "Test dependencies are unsatisfiable: {}{said}",
                    if said.is_empty() { "" } else { "apt says: " }
                ),
            }
        } else if self.opts.dependencies == DependencyPolicy::CheckOnly {
            format!(
                "dependencies are not installed and dep8 does not install packages on this testbed: {}",
                missing.join(", ")
            )
        } else {
            format!(
                "dependencies are not installed and the testbed has no root to install them: {}",
                missing.join(", ")
            )
        };
        self.log.info(&format!("{what}: {why}"));
        Ok(Err(why))
    }

    /// Writes `<test>-packages`: what installing its dependencies added or
    /// changed, as name TAB version lines (autopkgtest's format).
    async fn write_packages_diff(
        &mut self,
        tb: &dyn Testbed,
        what: &str,
        before: &source::Installed,
    ) -> Result<(), Abort> {
        let Some(after) = self.installed(tb).await? else {
            return Ok(());
        };
        let mut lines: Vec<String> = after
            .iter()
            .filter(|(name, version)| before.get(name) != Some(*version))
            .map(|(name, version)| format!("{name}\t{version}\n"))
            .collect();
        lines.sort();
        let path = self.opts.output_dir.join(format!("{what}-packages"));
        if let Err(e) = std::fs::write(&path, lines.concat()) {
            self.log
                .warning(&format!("cannot write {}: {e}", path.display()));
        }
        Ok(())
    }

    /// Whether the testbed must be reverted before `test`, as autopkgtest
    /// decides: it was broken, or it holds packages installed for an earlier
    /// test that this one does not ask for.
    fn needs_revert(&self, tb: &dyn Testbed, test: &Test) -> bool {
        tb.capabilities().has(Capability::Revert)
            && (self.dirty
                || self
                    .deps_installed
                    .iter()
                    .any(|d| !test.depends.contains(d)))
    }

    /// needs-sudo is decided while running, as autopkgtest does.
    async fn check_sudo(
        &mut self,
        tb: &dyn Testbed,
        user: Option<&str>,
    ) -> Result<Option<String>, Abort> {
        let caps = tb.capabilities().clone();
        let root = caps.has(Capability::RootOnTestbed);
        if root && user.is_none() {
            return Ok(Some(
                "Cannot enable needs-sudo restriction: no ordinary user available".into(),
            ));
        }
        let mut req =
            ExecRequest::shell("id -Gn | tr ' ' '\\n' | grep -qx sudo && sudo -n -v").capture();
        req.user = user.map(str::to_string);
        let out = self
            .timed(self.opts.timeouts.short, "checking sudo", tb.exec(req))
            .await?;
        if out.status.success() {
            return Ok(None);
        }
        let Some(user) = user.filter(|_| root) else {
            return Ok(Some(
                "Cannot enable needs-sudo restriction: not root".into(),
            ));
        };
        if !caps.has(Capability::RevertFullSystem) {
            return Ok(Some(
                "Cannot enable needs-sudo restriction: cannot revert".into(),
            ));
        }
        // As autopkgtest's enable-sudo: the sudo group, without password.
        self.log
            .info(&format!("setting up user {user} to sudo without password"));
        self.dirty = true;
        let script = "usermod -a -G sudo \"$1\" && install -d /etc/sudoers.d && \
                      echo '%sudo ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/dep8-needs-sudo && \
                      chmod 440 /etc/sudoers.d/dep8-needs-sudo";
        let req = ExecRequest::new(["sh", "-ec", script, "enable-sudo", user]).capture();
        let out = self
            .timed(self.opts.timeouts.short, "enabling sudo", tb.exec(req))
            .await?;
        Ok((!out.status.success()).then(|| {
            format!(
                "Failed to enable needs-sudo restriction: exit status {}",
                out.status.code()
            )
        }))
    }

    async fn one(
        &mut self,
        tb: &mut dyn Testbed,
        test: &Test,
        tree: &str,
        probe: &Probe,
    ) -> Result<(Outcome, Vec<String>), Abort> {
        let name = &test.name;
        self.log.info(&format!("test {name}: preparing testbed"));
        let arch = probe.arch.clone().unwrap_or_default();
        if let Some(result) = self.provide_depends(tb, test, &arch).await? {
            if self.opts.shell != ShellPolicy::Never && matches!(result.0, Outcome::Fail(_)) {
                self.shell(tb, "/", &[]).await?;
            }
            return Ok(result);
        }
        // As autopkgtest: every test that ran has its -packages file.
        let packages = self.opts.output_dir.join(format!("{name}-packages"));
        if !packages.exists() {
            if let Err(e) = std::fs::write(&packages, "") {
                self.log
                    .warning(&format!("cannot write {}: {e}", packages.display()));
            }
        }
        let caps = tb.capabilities().clone();
        let user = if test.has(&Restriction::NeedsRoot) {
            None
        } else {
            self.normal_user(&caps)
        };
        let user = user.filter(|_| caps.has(Capability::RootOnTestbed));
        if test.has(&Restriction::NeedsSudo) {
            if let Some(reason) = self.check_sudo(tb, user.as_deref()).await? {
                return Ok((Outcome::Skip(reason), vec![]));
            }
        }
        if let Some(path) = &test.path {
            if let Err(why) = test_path_inside(self.source(), path) {
                return Ok((
                    Outcome::Fail("badpkg".into()),
                    vec![format!("badpkg: {why}")],
                ));
            }
        }

        let scratch = tb.scratch().to_string();
        let artifacts = format!("{scratch}/{name}-artifacts");
        let forget_reboot = if reboot::available(&caps) {
            format!(
                "; rm -f {} {} {}",
                reboot::SCRIPT_PID_FILE,
                reboot::MARK_FILE,
                reboot::PREPARE_MARK_FILE
            )
        } else {
            String::new()
        };
        let tmp = format!("{scratch}/autopkgtest_tmp");
        // As autopkgtest 5.48's wrapper: AUTOPKGTEST_TMP 0755 and the
        // artifacts dir world-writable only for a test that declares
        // isolation (or --insecure), both the test user's.
        let artifacts_mode = if self.opts.insecure
            || test.has(&Restriction::IsolationContainer)
            || test.has(&Restriction::IsolationMachine)
        {
            "1777"
        } else {
            "755"
        };
        let (q_tmp, q_artifacts) = (quote(&tmp), quote(&artifacts));
        let setup = format!(
            "set -e; rm -rf {q_tmp}; mkdir -p -m {artifacts_mode} {q_artifacts}; mkdir -p -m 755 {q_tmp}{}{forget_reboot}{}{}",
            match &user {
                Some(u) => format!("; chown {} {q_artifacts} {q_tmp}", quote(u)),
                None => String::new(),
            },
            match (&user, test.has(&Restriction::RwBuildTree)) {
                (Some(u), true) => format!("; chown -R {} -- {}", quote(u), quote(tree)),
                _ => String::new(),
            },
            match &test.path {
                Some(p) => format!("; chmod +x -- {}", quote(&format!("{tree}/{p}"))),
                None => String::new(),
            }
        );
        self.shell_step(tb, &setup, &format!("preparing test {name}"))
            .await?;

        let mut env: Vec<(String, String)> = vec![
            ("AUTOPKGTEST_TMP".into(), tmp.clone()),
            ("ADTTMP".into(), tmp.clone()),
            ("AUTOPKGTEST_ARTIFACTS".into(), artifacts.clone()),
            ("ADT_ARTIFACTS".into(), artifacts.clone()),
            ("AUTOPKGTEST_TESTBED_ARCH".into(), arch.clone()),
            ("AUTOPKGTEST_TEST_ARCH".into(), arch.clone()),
            ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "DEB_BUILD_OPTIONS".into(),
                format!("parallel={}", self.parallel(probe)),
            ),
        ];
        if test.has(&Restriction::NeedsRoot) {
            if let Some(u) = self.normal_user(&caps) {
                env.push(("AUTOPKGTEST_NORMAL_USER".into(), u.clone()));
                env.push(("ADT_NORMAL_USER".into(), u));
            }
        }
        if let Some(base) = &caps.baseimage {
            env.push(("DEP8_BASEIMAGE".into(), base.path.clone()));
            env.push(("DEP8_BASEIMAGE_KIND".into(), base.kind.to_string()));
        }
        env.extend(self.opts.env.iter().cloned());
        let command_file = format!("{scratch}/{name}-command");
        let command = match (&test.path, &test.command) {
            (Some(p), _) => shell_words::quote(&format!("{tree}/{p}")).into_owned(),
            (None, Some(c)) if c.len() > LONG_COMMAND => {
                self.copy_text(tb, c, &command_file).await?;
                format!("bash -e {}", quote(&command_file))
            }
            (None, Some(c)) => format!("bash -ec {}", quote(c)),
            (None, None) => unreachable!("a parsed test has a path or a command"),
        };
        let can_reboot = reboot::available(&caps);
        // Like autopkgtest: a login-ish environment, then the test. Where the
        // testbed can reboot, the shell stays the test's parent and records
        // its pid so that /tmp/autopkgtest-reboot can kill just the test.
        let run = if can_reboot {
            // The shell's own stderr (its "Killed" when a reboot request
            // kills the test) is not the test's: only the test writes to
            // the stderr that is judged, as with autopkgtest's wrapper. The
            // subshell keeps the redirection out of the reporting shell.
            let inner = format!(
                "echo $$ > {}; (exec {command} 2>&3 3>&-); exit $?",
                reboot::SCRIPT_PID_FILE
            );
            format!("exec sh -c {} 3>&2 2>/dev/null", shell_words::quote(&inner))
        } else {
            format!("exec {command}")
        };
        let prologue = format!(
            "export USER=$(id -nu); . /etc/profile >/dev/null 2>&1 || true; . ~/.profile >/dev/null 2>&1 || true; \
             unset LANGUAGE LC_CTYPE LC_NUMERIC LC_TIME LC_COLLATE LC_MONETARY LC_MESSAGES LC_PAPER LC_NAME \
             LC_ADDRESS LC_TELEPHONE LC_MEASUREMENT LC_IDENTIFICATION LC_ALL; {}cd {}; ",
            env.iter().map(|(k, v)| format!("export {}; ", quote(&format!("{k}={v}")))).collect::<String>(),
            shell_words::quote(tree),
        );
        if let Some(c) = &test.command {
            self.log.info(&format!("test {name}: {}", abridged(c)));
        }
        self.log
            .info(&format!("test {name}: [-----------------------"));
        let stdout_path = self.opts.output_dir.join(format!("{name}-stdout"));
        let stderr_path = self.opts.output_dir.join(format!("{name}-stderr"));
        let tap = self.log_tap();
        let mut mark: Option<String> = None;
        let out = loop {
            let mark_env = mark.as_ref().map_or(String::new(), |m| {
                let m = shell_words::quote(m);
                format!("export AUTOPKGTEST_REBOOT_MARK={m}; export ADT_REBOOT_MARK={m}; ")
            });
            let script = format!("{prologue}{mark_env}{run}");
            let mut req = ExecRequest::new(["bash", "-c", &script])
                .stdout(Output::file(&stdout_path).with_tap(tap.clone()))
                .stderr(Output::file(&stderr_path).with_tap(tap.clone()))
                .timeout(self.within_global(self.opts.timeouts.test));
            req.user = user.clone();
            let next = match self
                .run_watched(tb, req, can_reboot, name, [&stdout_path, &stderr_path])
                .await?
            {
                TestRun::Ended(out) => {
                    if !can_reboot || out.timed_out || !reboot::killed(out.status) {
                        break out;
                    }
                    let Some(next) = self
                        .timed(
                            self.opts.timeouts.short,
                            "reading the reboot mark",
                            reboot::take_mark(tb),
                        )
                        .await?
                    else {
                        break out;
                    };
                    self.log
                        .info(&format!("test {name}: requested reboot with marker {next}"));
                    self.reboot_step(name, &next, tb.reboot()).await?;
                    next
                }
                TestRun::PreparedReboot(next) => {
                    self.reboot_step(name, &next, tb.await_reboot()).await?;
                    next
                }
            };
            self.timed(
                self.opts.timeouts.short,
                "preparing the testbed",
                reboot::install(tb),
            )
            .await?;
            self.boot_setup(tb).await?;
            self.note_kernel(tb, name, &next, probe).await?;
            mark = Some(next);
        };
        self.log
            .info(&format!("test {name}: -----------------------]"));

        let stderr_size = std::fs::metadata(&stderr_path).map_or(0, |m| m.len());
        let allow_stderr = test.has(&Restriction::AllowStderr);
        // As autopkgtest 5.39's wrapper: 254 and 255 are reported as 253.
        let code = match out.status.code() {
            254 | 255 => 253,
            code => code,
        };
        let outcome = if out.timed_out {
            Outcome::Fail("timed out".into())
        } else if code == 77 && test.has(&Restriction::Skippable) {
            Outcome::Skip("exit status 77 and marked as skippable".into())
        } else if code != 0 {
            if test.has(&Restriction::NeedsInternet)
                && self.opts.resolve.needs_internet == InternetPolicy::Try
            {
                Outcome::Skip(
                    "Failed, but test has needs-internet and that's not guaranteed".into(),
                )
            } else {
                Outcome::Fail(format!("non-zero exit status {code}"))
            }
        } else if stderr_size > 0 && !allow_stderr {
            let first = std::fs::read(&stderr_path).unwrap_or_default();
            let first = String::from_utf8_lossy(&first);
            Outcome::Fail(format!(
                "stderr: {}",
                first.lines().next().unwrap_or("").trim_end()
            ))
        } else if test.has(&Restriction::Superficial) {
            Outcome::PassSuperficial
        } else {
            Outcome::Pass
        };
        let outcome = match outcome {
            Outcome::Fail(reason) if test.has(&Restriction::Flaky) => Outcome::Flaky(reason),
            other => other,
        };
        self.log.info(&format!(
            "test {name}:  - - - - - - - - - - results - - - - - - - - - -"
        ));
        let failed = matches!(outcome, Outcome::Fail(_) | Outcome::Flaky(_));
        if self.opts.shell == ShellPolicy::Always
            || (self.opts.shell == ShellPolicy::OnFailure && failed)
        {
            let env = [
                format!("AUTOPKGTEST_ARTIFACTS={artifacts}"),
                format!("AUTOPKGTEST_TMP={tmp}"),
            ];
            self.shell(tb, tree, &env).await?;
        }
        remove_if_empty(&stdout_path);
        if stderr_size == 0 || allow_stderr {
            remove_if_empty(&stderr_path);
        }
        if out.timed_out {
            self.log
                .warning(&format!("test {name} timed out; the testbed may be broken"));
            if caps.has(Capability::Revert) {
                self.dirty = true;
            }
            return Ok((outcome, vec![]));
        }
        self.collect_artifacts(tb, &artifacts).await?;
        let cleanup = format!("rm -rf -- {q_artifacts} {q_tmp} {}", quote(&command_file));
        self.shell_step(tb, &cleanup, &format!("cleaning up after test {name}"))
            .await?;
        Ok((outcome, vec![]))
    }

    /// Copies the test's artifacts into OUTPUT_DIR/artifacts (merged across
    /// tests, as autopkgtest does); no empty dir is left behind.
    async fn collect_artifacts(&self, tb: &dyn Testbed, artifacts: &str) -> Result<(), Abort> {
        let host = self.opts.output_dir.join("artifacts");
        self.timed(
            self.opts.timeouts.copy,
            "copying artifacts",
            tb.copy_up(artifacts, &host),
        )
        .await?;
        if std::fs::read_dir(&host).is_ok_and(|mut d| d.next().is_none()) {
            let _ = std::fs::remove_dir(&host);
        }
        Ok(())
    }
}

/// A build that failed ends the run as the package's or the testbed's fault.
fn abort(e: BuildError) -> Abort {
    match e {
        BuildError::BadPackage(m) => Abort::BadPackage(m),
        BuildError::Testbed(m) => Abort::Testbed(m),
    }
}

/// What a bad package blames, as autopkgtest lists it: `arg:PATH
/// deb:NAME` for each given binary, then the source as given.
fn blame(opts: &RunOptions) -> Vec<String> {
    let mut blamed = Vec::new();
    for deb in &opts.setup.binaries {
        blamed.push(format!("arg:{}", deb.display()));
        let name = std::process::Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg("Package")
            .output();
        if let Some(out) = name.ok().filter(|o| o.status.success()) {
            blamed.push(format!(
                "deb:{}",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    blamed.push(opts.source.display().to_string());
    blamed
}

fn host_temp_dir(prefix: &str) -> Result<tempfile::TempDir, Abort> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| Abort::Testbed(format!("creating a temp dir: {e}")))
}

/// A `Test-Command` longer than this reaches the testbed as a file: one
/// argument may hold at most 128 KiB (Linux's MAX_ARG_STRLEN), and the
/// script that runs the test holds more than the command.
const LONG_COMMAND: usize = 32 * 1024;

/// How much of a command the log shows.
const LOGGED_COMMAND: usize = 1024;

/// `command`, cut after [`LOGGED_COMMAND`] bytes with a note of its size.
fn abridged(command: &str) -> std::borrow::Cow<'_, str> {
    if command.len() <= LOGGED_COMMAND {
        return command.into();
    }
    let mut end = LOGGED_COMMAND;
    while !command.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &command[..end], command.len()).into()
}

/// Checks that a test's `path` names a file of the tree `source`, after
/// symlinks: a test may not run what lies outside its package.
fn test_path_inside(source: &Path, path: &str) -> Result<(), String> {
    let real =
        std::fs::canonicalize(source.join(path)).map_err(|_| format!("{path} does not exist"))?;
    let root = std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    if real.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "{path} leads out of the source tree (to {})",
            real.display()
        ))
    }
}

/// Checks that every file and dir of `tree` can be read, so that an
/// unreadable package fails as one, not as a copy that broke half-way.
fn readable(tree: &Path) -> Result<(), String> {
    fn at(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
        move |e| format!("{}: {e}", path.display())
    }
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let path = entry.map_err(at(&dir))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(at(&path))?;
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                std::fs::File::open(&path).map_err(at(&path))?;
            }
        }
    }
    Ok(())
}

fn remove_if_empty(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}

/// Perl that makes its process group the terminal's foreground one, then
/// runs its arguments (for `--shell`).
const TAKE_TERMINAL: &str = "$SIG{TTOU} = 'IGNORE'; \
    open(my $t, '+<', '/dev/tty') and tcsetpgrp(fileno($t), getpgrp()); exec @ARGV or die \"$ARGV[0]: $!\\n\"";

/// Makes dep8's process group the terminal's foreground one again, after
/// an interactive shell had it.
fn take_back_terminal() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIGTTOU is ignored only around tcsetpgrp, from this thread;
    // no handler of dep8's is replaced.
    unsafe {
        let _ = signal(Signal::SIGTTOU, SigHandler::SigIgn);
        let _ = nix::unistd::tcsetpgrp(std::io::stdin(), nix::unistd::getpgrp());
        let _ = signal(Signal::SIGTTOU, SigHandler::SigDfl);
    }
}

/// testinfo.json's `virt_server` as autopkgtest writes it: the virt
/// server's command line, shell-quoted, `NAME` spelled
/// `autopkgtest-virt-NAME`.
fn virt_server_line(argv: &[String]) -> String {
    let mut words: Vec<String> = argv.to_vec();
    if let Some(first) = words.first_mut() {
        if !first.contains('/') && !first.starts_with("autopkgtest-virt-") {
            *first = format!("autopkgtest-virt-{first}");
        }
    }
    shell_words::join(words)
}

/// `dpkg-query` lines as autopkgtest's `testbed-packages`: name TAB version.
fn dpkg_list(dpkg_query: &str) -> String {
    let mut lines: Vec<String> = source::parse_installed(dpkg_query)
        .iter()
        .map(|(name, version)| format!("{name}\t{version}\n"))
        .collect();
    lines.sort();
    lines.concat()
}

/// What is decided of an entry before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    Skip(String),
    Broken(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Run => write!(f, "RUN"),
            Verdict::Skip(reason) => write!(f, "SKIP {reason}"),
            Verdict::Broken(problem) => write!(f, "BROKEN {problem}"),
        }
    }
}

/// An entry's fate on a testbed with `caps`: the one decision `dep8 run`
/// (with the opened testbed's capabilities), `check --testbed` and
/// `explain` (with `Backend::capabilities_for`) share.
pub fn verdict(entry: &Entry, caps: &Capabilities, opts: &ResolveOptions) -> Verdict {
    match entry {
        Entry::Test(t) => match resolve(t, caps, opts) {
            Decision::Run => Verdict::Run,
            Decision::Skip(reason) => Verdict::Skip(reason),
        },
        Entry::Unsupported { reason, .. } => Verdict::Skip(reason.clone()),
        Entry::Broken { problem, .. } => Verdict::Broken(problem.to_string()),
    }
}
