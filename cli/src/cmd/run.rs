//! `dep8 run`: the options autopkgtest takes, the output dir, the event
//! stream's observers, the testbed, and the run.

use crate::console::{self, ColorChoice};
use crate::report_html::HtmlReport;
use crate::{autopkgtest, error, Exit, Registry};
use clap::ValueEnum;
use dep8_core::acquire::Fetch;
use dep8_core::build::BuildOptions;
use dep8_core::engine::{self, RunOptions, ShellPolicy, Timeouts};
use dep8_core::error::Error;
use dep8_core::events::{self, Dispatcher, Event, Events, Observer};
use dep8_core::inputs::Inputs;
use dep8_core::install::DependencyPolicy;
use dep8_core::report::{
    write_atomically, LogFile, Report, ResultFiles, Unwritten, EXIT_TESTBED_FAILURE,
    EXIT_UNEXPECTED,
};
use dep8_core::restriction::{InternetPolicy, ResolveOptions};
use dep8_core::setup::{self, Setup};
use dep8_core::testbed::{OpenContext, TestbedError};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// What to test, sorted as autopkgtest sorts it: a source tree
    /// (default: the current directory), a .dsc, a .changes (its .dsc and
    /// .debs), a source package name (apt-get source in the testbed) or a
    /// git URL[#BRANCH]; and any binary .deb files to test with.
    #[arg(value_name = "SRC [BINARIES]")]
    inputs: Vec<String>,
    /// The testbed: BACKEND [ARGS...] after `--` (default: null).
    #[arg(last = true, value_name = "BACKEND ARGS")]
    testbed: Vec<String>,
    /// A testbed by name: one of dep8.toml or ~/.config/dep8/config.toml,
    /// or a backend that takes no arguments (same as `-- NAME`).
    #[arg(long, visible_alias = "testbed", conflicts_with = "testbed")]
    testbed_name: Option<String>,
    /// Several testbeds for one run (repeatable): a name from dep8.toml,
    /// or BACKEND ARGS as one word; each test runs on the cheapest that
    /// can run it (`defaults.route`). `--testbed auto`: every testbed of
    /// the configuration.
    #[arg(long = "on", value_name = "NAME | BACKEND ARGS", conflicts_with_all = ["testbed", "testbed_name"])]
    pub(super) on: Vec<String>,
    /// Write log, summary and per-test files here (must be empty or new).
    #[arg(short = 'o', long)]
    output_dir: Option<PathBuf>,
    /// Also write the summary to this file.
    #[arg(long, alias = "summary")]
    summary_file: Option<PathBuf>,
    /// Write the log to this file instead of OUTPUT_DIR/log.
    #[arg(short = 'l', long)]
    log_file: Option<PathBuf>,
    /// Also write the run's report to this self-contained HTML file, as
    /// `dep8 report OUTPUT_DIR --html FILE` writes it: rewritten after each
    /// test's result (marked incomplete until the run ends); with `--on`,
    /// once the results are merged. Not taken by the `autopkgtest` entry
    /// point.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Run only this test (repeatable).
    #[arg(long = "test-name", alias = "testname")]
    test_name: Vec<String>,
    /// Do not run this test (repeatable).
    #[arg(long)]
    skip_test: Vec<String>,
    /// Use this control file instead of debian/tests/control.
    #[arg(long)]
    override_control: Option<PathBuf>,
    /// Set VAR=VALUE in every test's environment (repeatable).
    #[arg(long = "env", value_name = "VAR=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Run tests even if they have these restrictions (comma-separated; repeatable).
    #[arg(long, value_delimiter = ',')]
    ignore_restrictions: Vec<String>,
    /// How to treat needs-internet tests.
    #[arg(long, value_enum, default_value_t = Internet::Run)]
    needs_internet: Internet,
    /// Run these shell commands as root after opening the testbed and after
    /// every revert: commands, a file holding them, or the name of one of
    /// autopkgtest's setup commands (repeatable; exit 100 blames the package).
    #[arg(long = "setup-commands", value_name = "COMMANDS_OR_PATH")]
    setup_commands: Vec<String>,
    /// apt-get update and dist-upgrade before the setup commands.
    #[arg(short = 'U', long)]
    apt_upgrade: bool,
    /// Add an apt source line ("deb URL SUITE COMPONENTS"; repeatable).
    #[arg(long = "add-apt-source", value_name = "LINE")]
    add_apt_source: Vec<String>,
    /// Use packages from RELEASE-POCKET too (e.g. backports); with a list,
    /// only those packages (`src:NAME` = its binaries) (repeatable).
    #[arg(long = "apt-pocket", value_name = "POCKET[=PKG,...]")]
    apt_pocket: Vec<String>,
    /// Copy a host file or dir into the testbed before setup (repeatable).
    #[arg(long, value_name = "HOSTPATH:TESTBEDPATH", value_parser = setup::copy_pair)]
    copy: Vec<(PathBuf, String)>,
    /// Run tests without needs-root as this user.
    #[arg(short = 'u', long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    user: Option<String>,
    /// Do not build an unbuilt tree, .dsc or git source to test its
    /// binaries (implied on null, where dep8 installs no packages).
    #[arg(short = 'B', long = "no-built-binaries")]
    no_built_binaries: bool,
    /// parallel=N in DEB_BUILD_OPTIONS for builds (default: the testbed's
    /// processor count).
    #[arg(long, value_name = "N")]
    build_parallel: Option<u32>,
    /// Never generate tests with autodep8.
    #[arg(long = "no-auto-control")]
    no_auto_control: bool,
    /// Command to gain root when building as a user (dpkg-buildpackage -r).
    #[arg(long = "gain-root", value_name = "COMMAND")]
    gain_root: Option<String>,
    /// Run the tests for ARCH instead of the testbed's architecture.
    #[arg(short = 'a', long, value_name = "ARCH")]
    test_architecture: Option<String>,
    /// Add apt sources for RELEASE, derived from the testbed's sources
    /// for its own release (repeatable).
    #[arg(long = "add-apt-release", value_name = "RELEASE")]
    add_apt_release: Vec<String>,
    /// Take only these packages from RELEASE (apt pinning; `src:NAME` =
    /// its binaries) (repeatable).
    #[arg(long = "pin-packages", value_name = "RELEASE=PKG,src:NAME,...", value_parser = setup::pin_packages)]
    pin_packages: Vec<(String, String)>,
    /// apt's default release (pinned at 990), for pinning to work.
    #[arg(long, value_name = "SUITE_OR_CODENAME")]
    apt_default_release: Option<String>,
    /// When installing dependencies fails under --apt-pocket or
    /// --pin-packages pins, do not retry without them.
    #[arg(long)]
    no_apt_fallback: bool,
    /// Run these commands after --setup-commands and after every reboot
    /// (repeatable).
    #[arg(long = "setup-commands-boot", value_name = "COMMANDS_OR_PATH")]
    setup_commands_boot: Vec<String>,
    /// Set LANG in the tests' environment (default C.UTF-8).
    #[arg(long, value_name = "LANGVAL")]
    set_lang: Option<String>,
    /// Allow what autopkgtest 5.48 made opt-in because it is unsafe.
    #[arg(long)]
    insecure: bool,
    /// Only the test results and dep8's errors on the terminal: its other
    /// messages and the tests' output go to the log file only.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Open a shell in the testbed after a failed test or dependency
    /// installation (on a terminal).
    #[arg(short = 's', long)]
    shell_fail: bool,
    /// Open a shell in the testbed after every test (on a terminal).
    #[arg(long)]
    shell: bool,
    /// Validate the test control file and exit.
    #[arg(short = 'V', long)]
    validate: bool,
    /// On the host (`null`), do what autopkgtest does: install the tests'
    /// dependencies and the given binaries with apt and apply the apt
    /// options there. Implied when dep8 is started as `autopkgtest`.
    #[arg(long)]
    on_host_as_autopkgtest: bool,
    /// Time limit for short testbed operations (default 100).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = seconds())]
    timeout_short: Option<u64>,
    /// Time limit for copying the source tree and results (default 300).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = seconds())]
    timeout_copy: Option<u64>,
    /// Time limit for installing a test's dependencies (default 3000).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = seconds())]
    timeout_install: Option<u64>,
    /// Kill a test (and everything it started) after this long.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = seconds())]
    timeout_test: Option<u64>,
    /// Time limit for building the package (default 100000).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = seconds())]
    timeout_build: Option<u64>,
    /// Time limit for rebooting or reverting the testbed (default 600).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = seconds())]
    timeout_reboot: Option<u64>,
    /// Multiply the default timeouts by this factor.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse_factor)]
    timeout_factor: f64,
    /// Limit the whole run's tests and builds to this many seconds (0: none).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    timeout: u64,
    /// Do not use dep8's package cache (the packages and apt lists that
    /// runs on this machine share; see `dep8 cache`).
    #[arg(long)]
    no_cache: bool,
    /// Run up to N tests at once, each on a clone of the testbed (another
    /// overlay, session, VM or container); `auto`: as many as CPUs (and,
    /// for qemu, memory). Results stay in the control file's order.
    #[arg(short = 'j', long, value_name = "N", value_parser = super::jobs::parse_jobs, default_value = "1")]
    jobs: super::jobs::Jobs,
    /// Reuse cached apt lists of the same sources up to this age instead
    /// of running apt-get update (default 300; 0: always update).
    #[arg(long, value_name = "SECONDS", value_parser = seconds())]
    apt_lists_max_age: Option<u64>,
}

impl RunArgs {
    /// This run on one of its testbeds (`--on`): the testbed `argv`, only
    /// the tests `tests` (none: all), of `inputs`, building the source if
    /// `build`; its files in the output dir it is given.
    pub(super) fn on_one(
        &self,
        argv: Vec<String>,
        tests: Vec<String>,
        inputs: Vec<String>,
        build: bool,
    ) -> RunArgs {
        RunArgs {
            inputs,
            no_built_binaries: !build,
            testbed: argv,
            testbed_name: None,
            on: Vec::new(),
            test_name: tests,
            skip_test: Vec::new(),
            output_dir: None,
            summary_file: None,
            log_file: None,
            html: None,
            ..self.clone()
        }
    }

    /// The positional arguments, sorted as autopkgtest sorts them.
    pub(super) fn classify_inputs(&self) -> Result<Inputs, Error> {
        Inputs::classify(&self.inputs, self.no_built_binaries)
    }

    /// The positional arguments as given.
    pub(super) fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The control file to read in the tree `source`: `--override-control`,
    /// else its debian/tests/control.
    pub(super) fn control_path(&self, source: &Path) -> PathBuf {
        self.override_control
            .clone()
            .unwrap_or_else(|| source.join("debian/tests/control"))
    }

    /// Whether `--test-name` and `--skip-test` select the test `name`.
    pub(super) fn selects(&self, name: &str) -> bool {
        (self.test_name.is_empty() || self.test_name.iter().any(|t| t == name))
            && !self.skip_test.iter().any(|t| t == name)
    }

    /// What decides whether a test runs, besides the testbed.
    pub(super) fn resolve_options(&self) -> ResolveOptions {
        ResolveOptions {
            ignore: self.ignore_restrictions.iter().cloned().collect(),
            needs_internet: internet(self.needs_internet),
            arch: None,
        }
    }

    pub(super) fn summary_file(&self) -> Option<&Path> {
        self.summary_file.as_deref()
    }

    /// `--html FILE`, the run's HTML report.
    pub(crate) fn html(&self) -> Option<&Path> {
        self.html.as_deref()
    }

    /// Where the log goes: `--log-file`, else OUTPUT_DIR/log.
    pub(super) fn log_path(&self, out: &Path) -> PathBuf {
        self.log_file.clone().unwrap_or_else(|| out.join("log"))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Internet {
    Run,
    Try,
    Skip,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not VAR=VALUE"))?;
    let name_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(format!("{k:?} is not a variable name (letters, digits, _)"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The longest time limit: autopkgtest's limits are alarm(2) seconds, an
/// unsigned int. 0 means no limit, as in autopkgtest.
const MAX_SECONDS: u64 = u32::MAX as u64;

/// A `--timeout-*` value: whole seconds, 0 (no limit) to [`MAX_SECONDS`].
fn seconds() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(..=MAX_SECONDS)
}

/// `--timeout-factor`: a number >= 0 that keeps the longest default limit
/// within [`MAX_SECONDS`] (autopkgtest crashes on NaN and takes negative
/// factors).
fn parse_factor(s: &str) -> Result<f64, String> {
    let factor: f64 = s.parse().map_err(|e| format!("{e}"))?;
    let longest = Timeouts::default().build.as_secs_f64();
    if factor.is_finite() && factor >= 0.0 && factor * longest <= MAX_SECONDS as f64 {
        Ok(factor)
    } else {
        Err(format!(
            "not a number from 0 to {}",
            MAX_SECONDS as f64 / longest
        ))
    }
}

fn internet(policy: Internet) -> InternetPolicy {
    match policy {
        Internet::Run => InternetPolicy::Run,
        Internet::Try => InternetPolicy::Try,
        Internet::Skip => InternetPolicy::Skip,
    }
}

/// The testbed's setup the options ask for; options that cannot be
/// honoured, such as a `--copy` of nothing, are a usage error (as in
/// autopkgtest).
fn testbed_setup(args: &RunArgs, binaries: Vec<PathBuf>) -> Result<Setup, Error> {
    let commands = |given: &[String]| -> Result<Vec<String>, Error> {
        given.iter().map(|c| setup::setup_command(c)).collect()
    };
    if let Some((host, _)) = args.copy.iter().find(|(host, _)| !host.exists()) {
        return Err(Error::Usage(format!(
            "--copy host path {} does not exist",
            host.display()
        )));
    }
    Ok(Setup {
        copies: args.copy.clone(),
        apt_sources: setup::apt_sources(&args.add_apt_source)?,
        apt_releases: args.add_apt_release.clone(),
        apt_pockets: args.apt_pocket.clone(),
        pins: args.pin_packages.clone(),
        default_release: args.apt_default_release.clone(),
        apt_upgrade: args.apt_upgrade,
        no_apt_fallback: args.no_apt_fallback,
        commands: commands(&args.setup_commands)?,
        boot_commands: commands(&args.setup_commands_boot)?,
        binaries,
        apt_cache: crate::cache::for_run(args.no_cache, args.apt_lists_max_age),
    })
}

/// The time limits `args` give.
pub(super) fn timeouts(args: &RunArgs) -> Timeouts {
    let d = Timeouts::default();
    let pick = |given: Option<u64>, default: Duration| {
        let secs = given.unwrap_or((default.as_secs_f64() * args.timeout_factor) as u64);
        // 0 is no limit, as autopkgtest's alarm(0); tokio's timers take a
        // deadline past the end of time as never.
        if secs == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(secs)
        }
    };
    Timeouts {
        short: pick(args.timeout_short, d.short),
        copy: pick(args.timeout_copy, d.copy),
        install: pick(args.timeout_install, d.install),
        test: pick(args.timeout_test, d.test),
        build: pick(args.timeout_build, d.build),
        reboot: pick(args.timeout_reboot, d.reboot),
        global: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
    }
}

/// Creates OUTPUT_DIR, refusing a non-empty one as autopkgtest does;
/// without `-o`, a temporary one (`true`: remove it at the end). One that
/// cannot be had is a usage error, as in autopkgtest.
fn output_dir(given: Option<&Path>) -> Result<(PathBuf, bool), Error> {
    match given {
        Some(dir) => {
            let unusable = |e: std::io::Error| Error::Usage(format!("{}: {e}", dir.display()));
            std::fs::create_dir_all(dir).map_err(unusable)?;
            let mut entries = std::fs::read_dir(dir).map_err(unusable)?;
            if entries.next().is_some() {
                return Err(Error::Usage(format!(
                    "--output-dir \"{}\" is not empty",
                    dir.display()
                )));
            }
            Ok((dir.to_path_buf(), false))
        }
        None => tempfile::Builder::new()
            .prefix("dep8.output.")
            .tempdir()
            .map(|d| (d.keep(), true))
            .map_err(|e| Error::Usage(format!("creating an output dir: {e}"))),
    }
}

/// Writes `--html FILE` empty, as the run's report will be written (through
/// a sibling and a rename), so that a FILE that cannot be written is a
/// usage error before the run starts rather than a failed write later.
fn claim_html(path: &Path) -> Result<(), Error> {
    write_atomically(path, &[]).map_err(|e| Error::Usage(format!("--html {}: {e}", path.display())))
}

/// `dep8 run`: the output dir and log first, so that every later error is
/// in the log; a temporary output dir is removed at the end, as autopkgtest
/// removes its own.
pub async fn run(args: RunArgs, registry: &Registry, color: ColorChoice) -> Exit {
    // Dead runs' leftovers go away (this run's dir was claimed at start);
    // killing and unmounting may take a while: off the async threads.
    for line in dep8_core::blocking(dep8_core::leftovers::sweep).await.done {
        tracing::info!("leftovers of a dead run: {line}");
    }
    if let Some(html) = args.html() {
        if let Err(e) = claim_html(html) {
            return super::failed(e).into();
        }
    }
    let (out, temporary) = match output_dir(args.output_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return super::failed(e).into(),
    };
    let routed = !args.on.is_empty() || args.testbed_name.as_deref() == Some("auto");
    let exit = if routed {
        super::route::run_routed(&args, registry, &out).await
    } else {
        run_in(
            &args,
            registry,
            &out,
            Some(console::observer(args.quiet, color.enabled())),
        )
        .await
    };
    if temporary {
        let _ = tokio::fs::remove_dir_all(&out).await;
    }
    // It may run commands (see release): off the async threads.
    let _ = tokio::task::spawn_blocking(dep8_core::leftovers::release).await;
    exit
}

/// A run writing into `out`, its events seen by the log, the result files
/// and `console` (none: nothing on the terminal). A run with a console is
/// the process's one run: dep8's own warnings (a backend's) go into it.
pub(super) async fn run_in(
    args: &RunArgs,
    registry: &Registry,
    out: &Path,
    console: Option<Box<dyn Observer>>,
) -> Exit {
    let own_run = console.is_some();
    let (events, dispatcher, unwritten) = match logged_events(args, out, console) {
        Ok(logged) => logged,
        Err(exit) => return exit,
    };
    let warnings = own_run.then(|| events::take_warnings(&events));
    let exit = run_with(args, registry, out, &events, &unwritten).await;
    drop(warnings);
    dispatcher.close().await;
    exit
}

/// A run's event stream, seen by its log (`--log-file`, else
/// OUTPUT_DIR/log) and `console`, and the record of the output files it
/// could not write; a log that cannot be created ends the run (20).
fn logged_events(
    args: &RunArgs,
    out: &Path,
    console: Option<Box<dyn Observer>>,
) -> Result<(Events, Dispatcher, Unwritten), Exit> {
    let log_path = args.log_path(out);
    let unwritten = Unwritten::default();
    let log = LogFile::create(&log_path, unwritten.clone())
        .map_err(|e| Exit::from(error(format!("{}: {e}", log_path.display()))))?;
    let mut observers: Vec<Box<dyn Observer>> = vec![Box::new(log)];
    observers.extend(console);
    let (events, dispatcher) = events::dispatch(observers);
    Ok((events, dispatcher, unwritten))
}

/// A routed run (`--on`) whose source could not be got on the host
/// (`why`; `said`: what getting it printed): OUTPUT_DIR gets what a run on
/// one testbed writes when it stops before opening it (the log, the
/// summary, results.json, junit.xml). Its testbed is the `--on` list.
pub(super) async fn routed_not_started(
    args: &RunArgs,
    inputs: &Inputs,
    out: &Path,
    said: &[u8],
    why: Error,
) -> Exit {
    let (events, dispatcher, unwritten) = match logged_events(args, out, None) {
        Ok(logged) => logged,
        Err(exit) => return exit,
    };
    events.emit(Event::Output(said.to_vec()));
    let opts = RunOptions {
        source: inputs.source.clone(),
        override_control: args.override_control.clone(),
        output_dir: out.to_path_buf(),
        summary_file: args.summary_file.clone(),
        only_tests: args.test_name.clone(),
        skip_tests: args.skip_test.clone(),
        // One word: the report joins the argv with spaces.
        testbed_argv: vec![args.on.join(" + ")],
        fetch: inputs.fetch.clone(),
        setup: Setup {
            binaries: inputs.binaries.clone(),
            ..Setup::default()
        },
        ..RunOptions::default()
    };
    // Nothing shows the events on the terminal: the error is said there.
    error(&why);
    let exit = match attach_result_files(&opts, &events, &unwritten) {
        Ok(()) => stop_before_testbed(&opts, &events, false, &unwritten, why).await,
        Err(exit) => exit,
    };
    dispatcher.close().await;
    exit
}

/// The run itself, once its events have observers.
async fn run_with(
    args: &RunArgs,
    registry: &Registry,
    out: &Path,
    events: &Events,
    unwritten: &Unwritten,
) -> Exit {
    let mut signals = listen(events.clone());
    // Ends the run before its output files exist.
    let refuse = |e: Error| {
        // Said on the terminal also with -q (see console::Plain).
        events.error(e.to_string());
        Exit::Code(e.exit_code())
    };
    let inputs = match Inputs::classify(&args.inputs, args.no_built_binaries) {
        Ok(inputs) => inputs,
        Err(e) => return refuse(e),
    };
    // It reads the configuration files.
    let mut testbed_argv = match tokio::task::block_in_place(|| {
        crate::config::run_testbed(
            &args.testbed,
            args.testbed_name.as_deref(),
            &crate::config::project_dir(&inputs),
            registry,
        )
    }) {
        Ok(argv) => argv,
        Err(e) => return refuse(e.into()),
    };
    let short = autopkgtest::native_name(&testbed_argv[0], |n| registry.get(n).is_some());
    testbed_argv[0] = short.to_string();
    let (backend, backend_args) = match registry.resolve(&testbed_argv) {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let on_host = backend.is_host();
    let setup = match testbed_setup(args, inputs.binaries) {
        Ok(setup) => setup,
        Err(e) => return refuse(e),
    };
    let host_changes = setup.system_changes();
    if on_host && !args.on_host_as_autopkgtest && !host_changes.is_empty() {
        return refuse(Error::Usage(format!(
            "{}: would change the host ({} is the host itself); dep8 run changes \
             the host only through --setup-commands: test on another testbed, or \
             give --on-host-as-autopkgtest for autopkgtest's behaviour",
            host_changes.join(", "),
            backend.name()
        )));
    }
    events.info(format!("output dir {}", out.display()));
    if on_host && args.on_host_as_autopkgtest {
        events.warning(format!(
            "testbed {} is THIS HOST: as autopkgtest does, dep8 installs the tests' \
             dependencies here with apt and does not undo it{}",
            backend.name(),
            if host_changes.is_empty() {
                String::new()
            } else {
                format!("; also applied here: {}", host_changes.join(", "))
            }
        ));
    }
    if args.insecure {
        events.warning("--insecure: security checks autopkgtest 5.48 made opt-in are off");
    }
    let mut env = args.env.clone();
    if let Some(lang) = &args.set_lang {
        env.push(("LANG".into(), lang.clone()));
    }
    let opts = RunOptions {
        source: inputs.source,
        override_control: args.override_control.clone(),
        output_dir: out.to_path_buf(),
        summary_file: args.summary_file.clone(),
        only_tests: args.test_name.clone(),
        skip_tests: args.skip_test.clone(),
        resolve: args.resolve_options(),
        env,
        user: args.user.clone(),
        timeouts: timeouts(args),
        testbed_argv: testbed_argv.clone(),
        fetch: inputs.fetch,
        setup,
        dependencies: if on_host && !args.on_host_as_autopkgtest {
            DependencyPolicy::CheckOnly
        } else {
            DependencyPolicy::Install
        },
        test_arch: args.test_architecture.clone(),
        shell: if args.shell {
            ShellPolicy::Always
        } else if args.shell_fail {
            ShellPolicy::OnFailure
        } else {
            ShellPolicy::Never
        },
        build: BuildOptions {
            binaries: inputs.build,
            parallel: args.build_parallel,
            gain_root: args.gain_root.clone(),
        },
        no_auto_control: args.no_auto_control,
        validate: args.validate,
        insecure: args.insecure,
        jobs: super::jobs::resolve(args.jobs, registry, backend, &backend_args, |note| {
            events.info(note)
        }),
    };

    if let Err(exit) = attach_result_files(&opts, events, unwritten) {
        return exit;
    }
    if let Some(html) = args.html() {
        events.attach(Box::new(HtmlReport::new(
            html,
            &opts.output_dir,
            opts.empty_report(),
            unwritten.clone(),
        )));
    }
    let stop = |why: Error| stop_before_testbed(&opts, events, true, unwritten, why);
    // It reads whole .debs and a .dsc's files.
    if let Err(e) = tokio::task::block_in_place(|| check_inputs(&opts)) {
        return stop(e).await;
    }
    events.info(format!("opening testbed: {}", testbed_argv.join(" ")));
    let context = OpenContext {
        // What a backend may keep for later runs goes beside the package cache.
        cache: opts.setup.apt_cache.as_ref().map(|cache| cache.dir()),
        reverts_to_open: opts.reverts_to_open(),
    };
    // An interrupted open drops its future: what it started is killed.
    let opened = tokio::select! {
        opened = backend.open_in(&backend_args, context) => opened,
        Some(signal) = signals.recv() => return stop(Error::Interrupted(signal)).await,
    };
    let mut tb = match opened {
        Ok(tb) => tb,
        // The run's note says it (an ERROR line), once.
        Err(TestbedError::Usage(msg)) => {
            return stop(Error::Usage(format!("{}: {msg}", testbed_argv[0]))).await
        }
        Err(e) => return stop(Error::Testbed(e.detail())).await,
    };
    let interrupt = async {
        match signals.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    };
    let clones = super::jobs::BackendClones {
        backend,
        args: &backend_args,
        context,
    };
    let report = engine::run_on_clones(&opts, tb.as_mut(), Some(&clones), events, interrupt).await;
    let mut exit = exit_of(&report);
    // A signal stops the close (dropping the testbed still kills and
    // removes what it can), and dep8 then ends by it, as autopkgtest does.
    events.info("closing the testbed");
    tokio::select! {
        closed = tb.close() => if let Err(e) = closed {
            events.error(format!("closing the testbed: {e}"));
        },
        Some(signal) = signals.recv() => {
            events.error("closing the testbed: interrupted");
            if let Exit::Code(_) = exit {
                exit = Exit::Signal(signal);
            }
        }
    }
    drop(tb);
    events.info("@@@@@@@@@@@@@@@@@@@@ summary");
    events.flush().await;
    let summary = tokio::fs::read(opts.summary_path())
        .await
        .unwrap_or_default();
    events.emit(Event::Output(summary));
    events.flush().await;
    end_of_run(events, true, exit, unwritten)
}

/// Attaches to `events` the observer that writes the summary, results.json
/// and junit.xml of the run `opts`; a summary that cannot be created ends
/// the run (20).
fn attach_result_files(
    opts: &RunOptions,
    events: &Events,
    unwritten: &Unwritten,
) -> Result<(), Exit> {
    let summary = opts.summary_path();
    let files = ResultFiles::create(
        &opts.output_dir,
        &summary,
        opts.empty_report(),
        unwritten.clone(),
    )
    .map_err(|e| {
        events.error(format!("cannot write {}: {e}", summary.display()));
        Exit::Code(EXIT_UNEXPECTED)
    })?;
    events.attach(Box::new(files));
    Ok(())
}

/// Ends the run `opts` before a testbed is open, with `why`: the log, the
/// summary, results.json and junit.xml say it. `console`: whether the
/// events reach the terminal (see [`end_of_run`]).
async fn stop_before_testbed(
    opts: &RunOptions,
    events: &Events,
    console: bool,
    unwritten: &Unwritten,
    why: Error,
) -> Exit {
    let report = engine::not_started(opts, events, why).await;
    events.flush().await;
    end_of_run(events, console, exit_of(&report), unwritten)
}

/// How a run ends once its files are written: an output file that could
/// not be written (a full disk) is named and ends the run with 20, as
/// autopkgtest's unexpected errors do, unless a signal or a testbed failure
/// (autopkgtest's 16 when a test's output cannot be kept) ended it.
/// Without a `console` on the events, the files are named on stderr too.
fn end_of_run(events: &Events, console: bool, exit: Exit, unwritten: &Unwritten) -> Exit {
    let lines = unwritten.lines();
    for what in &lines {
        events.error(what);
        if !console {
            error(what);
        }
    }
    match exit {
        Exit::Code(code) if !lines.is_empty() && code != EXIT_TESTBED_FAILURE => {
            Exit::Code(EXIT_UNEXPECTED)
        }
        exit => exit,
    }
}

/// How dep8 ends after a run with this report.
fn exit_of(report: &Report) -> Exit {
    match report.signal {
        Some(signal) => Exit::Signal(signal),
        None => Exit::Code(report.exit_code.unwrap_or(EXIT_UNEXPECTED)),
    }
}

/// SIGINT and SIGTERM, heard from when this is made on.
pub(super) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
        }
    }

    /// The number of the next one.
    pub(super) async fn next(&mut self) -> i32 {
        use tokio::signal::unix::SignalKind;
        tokio::select! {
            _ = self.term.recv() => SignalKind::terminate(),
            _ = self.int.recv() => SignalKind::interrupt(),
        }
        .as_raw_value()
    }
}

/// Listens to SIGINT and SIGTERM from the start of a run; each one is
/// logged as autopkgtest logs it, and sent on.
fn listen(events: Events) -> tokio::sync::mpsc::UnboundedReceiver<i32> {
    let mut signals = Signals::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let signal = signals.next().await;
            events.error(format!("Received signal {signal}, cleaning up..."));
            if tx.send(signal).is_err() {
                break;
            }
        }
    });
    rx
}

/// What can be checked of the inputs on the host, before a testbed is
/// opened: `--override-control` can be read (else a usage error, as in
/// autopkgtest), a `.dsc`'s files are all there, binaries are whole `.deb`s.
fn check_inputs(opts: &RunOptions) -> Result<(), Error> {
    if let Some(control) = &opts.override_control {
        std::fs::read(control)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", control.display())))?;
    }
    if let Some(Fetch::Dsc(dsc)) = &opts.fetch {
        dep8_core::acquire::check_dsc(dsc)?;
    }
    opts.setup
        .binaries
        .iter()
        .try_for_each(|deb| setup::check_binary(deb))
}
