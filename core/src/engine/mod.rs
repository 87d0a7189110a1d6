//! Runs a DEP-8 suite on an open testbed. The orchestrator here sets the
//! testbed up, gets (and builds) the source and hands each test of the
//! [`plan`] to the per-test flow ([`test`]); the pure decisions live in
//! [`plan`] (what runs), [`judge`] (results, reverts) and [`script`] (the
//! test's shell), the package state in [`packages`], the testbed's facts
//! in [`probe`]. Everything the run does is said as [`Event`]s; it returns
//! the typed [`Report`].

pub mod judge;
mod options;
pub mod packages;
mod parallel;
pub mod plan;
pub mod probe;
pub mod script;
mod steps;
mod test;

pub use options::{RunOptions, ShellPolicy, Timeouts};
pub use parallel::Clones;
pub use plan::{host_arch, load_suite, Plan, Verdict};

use crate::blocking;
use crate::capability::Capability;
use crate::control::{self, Entry, Test};
use crate::error::Error;
use crate::events::{Event, Events};
use crate::install::DependencyPolicy;
use crate::report::{Outcome, Report, TestRecord, TestResult, Unfinished, UnfinishedTest};
use crate::restriction::Restriction;
use crate::testbed::{ExecRequest, Testbed, TestbedError};
use packages::PackageState;
use probe::Probe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the suite on `tb`; results are emitted as each test finishes, and
/// the report says how the run ended. `interrupt` resolving to a signal
/// number stops the run, and the report then names the interrupted test
/// and those not run.
pub async fn run(
    opts: &RunOptions,
    tb: &mut dyn Testbed,
    events: &Events,
    interrupt: impl std::future::Future<Output = i32> + Send,
) -> Report {
    run_on_clones(opts, tb, None, events, interrupt).await
}

/// [`run`], with up to `opts.jobs` tests at once when `clones` can open
/// more testbeds like `tb` (each test on one of them; results and log
/// sections in the control file's order).
pub async fn run_on_clones(
    opts: &RunOptions,
    tb: &mut dyn Testbed,
    clones: Option<&dyn Clones>,
    events: &Events,
    interrupt: impl std::future::Future<Output = i32> + Send,
) -> Report {
    let mut report = opts.empty_report();
    report.capabilities = Some(tb.capabilities().clone());
    events.emit(Event::TestbedReady {
        testbed: report.testbed.clone(),
        capabilities: tb.capabilities().clone(),
    });
    let mut run = Run {
        opts,
        events: events.clone(),
        report,
        dirty: false,
        packages: fresh_packages(opts),
        built_tree: None,
        built_debs: (Vec::new(), None),
        blamed: Vec::new(),
        acquired: None,
        started: Instant::now(),
        probe: Probe::default(),
        test_kernels: Vec::new(),
        current: None,
        base_kept: false,
        pending: Vec::new(),
        board: Default::default(),
        clones: Vec::new(),
    };
    tokio::pin!(interrupt);
    let result = tokio::select! {
        r = run.all(tb, clones) => r,
        signal = &mut interrupt => Err(Error::Interrupted(signal)),
    };
    let parallel = run.end_parallel().await;
    // As autopkgtest: no apt reset on the way out of an interrupted run.
    if !matches!(result, Err(Error::Interrupted(_))) {
        if let Err(e) = run.unpublish(tb).await {
            events.error(format!("resetting the testbed's apt configuration: {e}"));
        }
    }
    for (name, path) in tb.logs() {
        if let Err(e) = tokio::fs::copy(&path, opts.output_dir.join(&name)).await {
            events.error(format!("keeping {}: {e}", path.display()));
        }
    }
    let ending = Ending {
        result,
        current: run
            .current
            .take()
            .into_iter()
            .chain(parallel.running)
            .collect(),
        pending: parallel
            .pending
            .into_iter()
            .chain(std::mem::take(&mut run.pending))
            .collect(),
        blamed: std::mem::take(&mut run.blamed),
        validate: opts.validate,
    };
    ending.finish(run.report, events)
}

/// The package state of a testbed as opened.
fn fresh_packages(opts: &RunOptions) -> PackageState {
    PackageState::new(
        opts.dependencies,
        opts.setup.clone(),
        opts.timeouts.short,
        opts.timeouts.install,
    )
}

/// Records a run that ended before its testbed was open (`why`): the
/// summary's note, and the report naming the selected tests as not run
/// (none when the source is still to be got: its tests are not known).
pub async fn not_started(opts: &RunOptions, events: &Events, why: Error) -> Report {
    let (pending, blamed) = blocking({
        let opts = opts.clone();
        move || {
            let pending = host_arch()
                .filter(|_| opts.fetch.is_none())
                .map(|arch| opts.selected_tests(&arch))
                .unwrap_or_default();
            (pending, blame(&opts.setup.binaries, &opts.source))
        }
    })
    .await;
    let ending = Ending {
        result: Err(why),
        current: Vec::new(),
        pending,
        blamed,
        validate: false,
    };
    ending.finish(opts.empty_report(), events)
}

/// How a run ended, for the last words of its report.
struct Ending {
    result: Result<(), Error>,
    /// The tests whose turn it was (several in a parallel run).
    current: Vec<String>,
    /// The tests never reached.
    pending: Vec<String>,
    /// What a bad package blames.
    blamed: Vec<String>,
    /// `-V`'s run: valid means exit 0.
    validate: bool,
}

impl Ending {
    /// Says why the run stopped (autopkgtest's summary lines), names the
    /// tests without a result, and completes the report.
    fn finish(self, mut report: Report, events: &Events) -> Report {
        let note = |line: String| events.emit(Event::Note(line));
        let (code, why) = match &self.result {
            Ok(()) if self.validate => (0, String::new()),
            Ok(()) => (report.exit_code_of_results(), String::new()),
            Err(e) => {
                let why = match e {
                    Error::Usage(msg) => msg.clone(),
                    Error::Testbed(msg) => format!("testbed failure: {msg}"),
                    Error::BadPackage(msg) => {
                        // As autopkgtest: what it blames, why, then the verdict.
                        note(format!("blame: {}", self.blamed.join(" ")));
                        note(format!("badpkg: {msg}"));
                        report.blame = self.blamed.clone();
                        format!("erroneous package: {msg}")
                    }
                    Error::Interrupted(_) => e.to_string(),
                };
                let line = match e {
                    Error::Interrupted(_) => format!("quitting: {why}"),
                    _ => why.clone(),
                };
                note(line.clone());
                report.error = Some(line);
                (e.exit_code(), why)
            }
        };
        let unfinished =
            |name: String, state| TestRecord::Unfinished(UnfinishedTest { name, state });
        for name in self.current {
            report
                .tests
                .push(unfinished(name, Unfinished::Interrupted(why.clone())));
        }
        for name in self.pending {
            report
                .tests
                .push(unfinished(name, Unfinished::NotRun(why.clone())));
        }
        report.complete = why.is_empty();
        report.exit_code = Some(code);
        if let Err(Error::Interrupted(signal)) = self.result {
            report.signal = Some(signal);
        }
        events.emit(Event::RunFinished(report.clone()));
        report
    }
}

/// Runs `fut`, a testbed operation described by `what`, within `limit`;
/// its time goes to the debug log (`-d`).
pub(crate) async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, TestbedError>>,
) -> Result<T, Error> {
    let started = Instant::now();
    let result = tokio::time::timeout(limit, fut).await;
    tracing::info!("{what}: {:.3}s", started.elapsed().as_secs_f64());
    match result {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Testbed(format!(
            "{what} timed out after {}s",
            limit.as_secs()
        ))),
    }
}

/// The state of one run, owned by its orchestrator.
struct Run<'a> {
    opts: &'a RunOptions,
    /// Where the run's events go: the run's stream, or (a test on a
    /// parallel run's worker) that test's held section.
    events: Events,
    /// The results so far.
    report: Report,
    /// A test broke the testbed: revert before the next one.
    dirty: bool,
    packages: PackageState,
    /// The source tree after it was built, copied back to the host so
    /// that a revert does not cost another build.
    built_tree: Option<Arc<tempfile::TempDir>>,
    /// The binaries the build made, when they are tested, and their host
    /// temp dir: published like given binaries after every revert.
    built_debs: (Vec<PathBuf>, Option<Arc<tempfile::TempDir>>),
    /// What a bad package blames, as autopkgtest lists it (`arg:DEB
    /// deb:NAME` for each binary, then the source as given), once the
    /// testbed is set up.
    blamed: Vec<String>,
    /// The tree unpacked or fetched in the testbed (`.dsc`, package name).
    acquired: Option<Arc<tempfile::TempDir>>,
    /// When the run started, for `--timeout`.
    started: Instant,
    probe: Probe,
    /// Kernels other than the first that tests rebooted into: (test,
    /// reboot mark, `uname -srv`).
    test_kernels: Vec<(String, String, String)>,
    /// The test whose turn it is (its testbed being prepared, or running).
    current: Option<String>,
    /// The testbed reverts to its state after the setup's base part.
    base_kept: bool,
    /// The tests still to run, in order.
    pending: Vec<String>,
    /// A parallel run's tests: who runs what, the results held back until
    /// their turn in the control file's order.
    board: std::sync::Mutex<parallel::Board>,
    /// The testbeds opened beside the first for a parallel run; closed
    /// when the run ends, however it ends.
    clones: Vec<Box<dyn Testbed>>,
}

impl Run<'_> {
    async fn all(
        &mut self,
        tb: &mut dyn Testbed,
        clones: Option<&dyn Clones>,
    ) -> Result<(), Error> {
        self.probe = probe::probe(tb, self.opts.timeouts.short).await?;
        self.write_testinfo(tb).await;
        let arch = self.arch();
        if let Some(test_arch) = self.opts.test_arch.as_ref().filter(|a| **a != arch) {
            return Err(Error::Usage(format!(
                "--test-architecture {test_arch}: dep8 tests only the testbed's own architecture ({arch})"
            )));
        }
        if self.opts.fetch.is_none() {
            // Known before setup, so that an interrupt there names them.
            let (opts, arch) = (self.opts.clone(), arch.clone());
            self.pending = blocking(move || opts.selected_tests(&arch)).await;
        }

        let apt_options = self.opts.setup.apt_options();
        if !apt_options.is_empty() && !tb.capabilities().has(Capability::RootOnTestbed) {
            return Err(Error::Usage(format!(
                "{}: the testbed offers no root to change its apt configuration",
                apt_options.join(", ")
            )));
        }
        // As autopkgtest: set up first (a setup command may add the deb-src
        // lines `apt-get source` needs), then get the source.
        self.secure_scratch(tb).await?;
        self.setup_testbed(tb).await?;
        self.write_testbed_packages(tb).await?;
        let (binaries, source) = (self.opts.setup.binaries.clone(), self.opts.source.clone());
        self.blamed = blocking(move || blame(&binaries, &source)).await;
        if let Some(fetch) = &self.opts.fetch {
            self.acquire(tb, fetch).await?;
        }
        self.write_testpkg_version().await;
        if self.opts.build.binaries {
            if self.opts.dependencies == DependencyPolicy::CheckOnly {
                self.events.info(
                    "not building the source: dep8 installs no build dependencies on this \
                     testbed, so -B is implied (dep8 started as autopkgtest builds here)",
                );
            } else {
                self.events.info("build needed for binaries");
                self.build(tb, true).await?;
            }
        }
        let Some(plan) = self.plan(tb, &arch).await? else {
            return Ok(());
        };
        // Static decisions first, as autopkgtest reports them at parse time.
        for (entry, outcome) in plan.decided() {
            let details = match (entry, &outcome) {
                (_, Outcome::Broken(problem)) => {
                    self.events.error(problem.clone());
                    // autopkgtest's summary has no BROKEN: a bad package.
                    vec![
                        format!("blame: {}", self.source().display()),
                        format!("badpkg: {problem}"),
                    ]
                }
                (Entry::Unsupported { location, name, .. }, Outcome::Skip(reason)) => {
                    self.events.warning(format!("{location}: {name}: {reason}"));
                    vec![]
                }
                _ => vec![],
            };
            self.record(entry.name(), outcome, Duration::ZERO, details);
        }
        let runnable = plan.runnable();
        if !self.opts.only_tests.is_empty() && plan.entries.is_empty() {
            self.events.error(format!(
                "no test matches --test-name {}",
                self.opts.only_tests.join(", ")
            ));
        }
        if plan.entries.is_empty() {
            self.record_no_tests();
            return Ok(());
        }
        self.pending = runnable.iter().map(|t| t.name.clone()).collect();
        self.events.emit(Event::Planned {
            tests: self.pending.clone(),
        });

        let source = self.tests_tree().to_path_buf();
        blocking(move || readable(&source)).await?;
        if self.built_tree.is_none() && runnable.iter().any(|t| t.has(&Restriction::BuildNeeded)) {
            self.events.info("build needed for tests");
            self.build(tb, false).await?;
        }
        let tree = format!("{}/src", tb.scratch());
        let jobs = self.jobs(clones, runnable.len());
        if let (Some(clones), true) = (clones, jobs > 1) {
            self.open_clones(clones, jobs).await;
            if !self.clones.is_empty() {
                return self.in_parallel(tb, runnable, &tree).await;
            }
        }
        let mut copied = false;
        for test in runnable {
            self.turn(tb, &test, &tree, &mut copied).await?;
        }
        Ok(())
    }

    /// A test's turn on `tb`: a revert first where needed, the tree copied
    /// in where it is not yet (`copied`), the test run and recorded.
    async fn turn(
        &mut self,
        tb: &mut dyn Testbed,
        test: &Test,
        tree: &str,
        copied: &mut bool,
    ) -> Result<(), Error> {
        let can_revert = tb.capabilities().has(Capability::Revert);
        let reverting = self.packages.revert_needed(can_revert, self.dirty, test);
        if !reverting && !*copied {
            // The tree's first copy is no test's turn yet.
            self.copy_tree(tb, tree).await?;
            *copied = true;
        }
        if let Some(at) = self.pending.iter().position(|n| *n == test.name) {
            self.pending.remove(at);
        }
        self.current = Some(test.name.clone());
        self.events.emit(Event::TestStarted {
            name: test.name.clone(),
        });
        if reverting {
            self.revert(tb).await?;
            self.setup_testbed(tb).await?;
            self.copy_tree(tb, tree).await?;
            *copied = true;
        }
        if self.within_global(Duration::MAX).is_zero() {
            let skip = Outcome::Skip("global timeout exceeded".into());
            self.current = None;
            self.record(&test.name, skip, Duration::ZERO, vec![]);
            return Ok(());
        }
        let started = Instant::now();
        let (outcome, details) = self.one(tb, test, tree).await?;
        self.current = None;
        self.record(&test.name, outcome, started.elapsed(), details);
        if test.has(&Restriction::BreaksTestbed) {
            self.dirty = true;
        }
        Ok(())
    }

    /// The testbed's architecture (amd64 where it has no dpkg).
    fn arch(&self) -> String {
        self.probe.arch.clone().unwrap_or_else(|| "amd64".into())
    }

    /// The plan of the tests' tree, after autodep8 where it has a say;
    /// `None` when the package has no tests (recorded) or `-V` is done.
    async fn plan(&mut self, tb: &dyn Testbed, arch: &str) -> Result<Option<Plan>, Error> {
        let tests_tree = self.tests_tree().to_path_buf();
        let generated = self.autodep8(&tests_tree).await;
        let control = generated.as_ref().map_or_else(
            || self.opts.control_path(&tests_tree),
            |f| f.path().to_path_buf(),
        );
        // One that cannot be read is BROKEN below, not missing.
        let suite = blocking({
            let (control, tree, arch) = (control.clone(), tests_tree.clone(), arch.to_string());
            move || match control.try_exists() {
                Ok(false) => None,
                _ => Some(load_suite(&control, &tree, &arch)),
            }
        })
        .await;
        let Some(suite) = suite else {
            self.events.info(format!(
                "{} has no {}",
                self.source().display(),
                control.display()
            ));
            self.record_no_tests();
            return Ok(None);
        };
        let entries = suite.unwrap_or_else(|e| {
            vec![Entry::Broken {
                name: "*".into(),
                problem: control::Problem {
                    location: control::Location {
                        file: self.source().join("debian/control"),
                        line: 0,
                    },
                    field: None,
                    message: e.to_string(),
                },
            }]
        });
        let mut resolve = self.opts.resolve.clone();
        resolve.arch = Some(arch.to_string());
        let plan = Plan::new(entries, tb.capabilities(), &resolve);
        if self.opts.validate {
            if let Some(problem) = plan.first_problem() {
                return Err(Error::BadPackage(problem.to_string()));
            }
            self.events.emit(Event::SummaryLine(
                "*                    Test specification is valid".into(),
            ));
            return Ok(None);
        }
        self.pending.clear();
        Ok(Some(plan.select(|name| self.opts.selected(name))))
    }

    /// Records a test's result and says so.
    fn record(&mut self, name: &str, outcome: Outcome, duration: Duration, details: Vec<String>) {
        let result = TestResult {
            name: name.to_string(),
            outcome,
            duration_secs: duration.as_secs_f64(),
            details,
            testbed: None,
        };
        self.report.tests.push(TestRecord::Finished(result.clone()));
        self.events.emit(Event::TestFinished(result));
    }

    /// autopkgtest's line for a package without tests (exit 8).
    fn record_no_tests(&mut self) {
        self.record(
            "*",
            Outcome::Skip("no tests in this package".into()),
            Duration::ZERO,
            vec![],
        );
    }

    /// `limit`, cut to what is left of `--timeout` (zero once it is up).
    fn within_global(&self, limit: Duration) -> Duration {
        match self.opts.timeouts.global {
            Some(global) => limit.min(global.saturating_sub(self.started.elapsed())),
            None => limit,
        }
    }

    /// Puts `text` into the testbed file `target`, through a host temp file.
    async fn copy_text(&self, tb: &dyn Testbed, text: &str, target: &str) -> Result<(), Error> {
        let dir = host_temp_dir("dep8-text.")?;
        let file = dir.path().join("text");
        tokio::fs::write(&file, text)
            .await
            .map_err(|e| Error::Testbed(format!("writing {}: {e}", file.display())))?;
        timed(
            self.opts.timeouts.copy,
            &format!("copying {target} to the testbed"),
            tb.copy_down(&file, target),
        )
        .await
    }

    /// Runs one of the runner's own shell steps in the testbed, as root,
    /// with the short time limit; a failure is the testbed's.
    async fn shell_step(&self, tb: &dyn Testbed, script: &str, what: &str) -> Result<(), Error> {
        tracing::debug!("{what}: {script}");
        let out = timed(
            self.opts.timeouts.short,
            what,
            tb.exec(ExecRequest::shell(script).capture()),
        )
        .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Testbed(format!(
                "{what} failed: {}",
                out.stderr_text().trim()
            )))
        }
    }
}

/// What a bad package blames, as autopkgtest lists it: `arg:PATH
/// deb:NAME` for each given binary, then the source as given.
fn blame(binaries: &[PathBuf], source: &Path) -> Vec<String> {
    let mut blamed = Vec::new();
    for deb in binaries {
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
    blamed.push(source.display().to_string());
    blamed
}

fn host_temp_dir(prefix: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| Error::Testbed(format!("creating a temp dir: {e}")))
}

/// Checks that every file and dir of `tree` can be read, so that an
/// unreadable package fails as one (bad package), not as a copy that broke
/// half-way.
fn readable(tree: &Path) -> Result<(), Error> {
    fn at(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
        move |e| {
            Error::BadPackage(format!(
                "cannot read the source tree: {}: {e}",
                path.display()
            ))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acquire::Fetch;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_source_not_got_is_recorded_with_its_error_and_blame() {
        let opts = RunOptions {
            source: "no-such-source".into(),
            fetch: Some(Fetch::AptSource("no-such-source".into())),
            testbed_argv: vec!["null".into()],
            ..RunOptions::default()
        };
        let why = Error::BadPackage("apt-get source no-such-source failed".into());
        let report = not_started(&opts, &Events::discard(), why).await;
        assert!(!report.complete);
        assert_eq!(report.exit_code, Some(12));
        assert_eq!(
            report.error.as_deref(),
            Some("erroneous package: apt-get source no-such-source failed")
        );
        assert_eq!(report.blame, ["no-such-source"]);
        assert_eq!(report.tests, []);
    }
}
