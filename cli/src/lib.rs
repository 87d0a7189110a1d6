//! The `dep8` command line: argument parsing, the backend registry, and the
//! subcommands. `main_with` lets a custom binary add its own backends.

/// `eprintln!` that a closed stderr cannot turn into a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod autopkgtest;
mod compare;
mod conformance;
mod image;
mod registry;
mod virt_server;

pub use registry::Registry;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use dep8_core::acquire::Fetch;
use dep8_core::build::BuildOptions;
use dep8_core::capability::Capabilities;
use dep8_core::control::Entry;
use dep8_core::inputs::Inputs;
use dep8_core::install::DependencyPolicy;
use dep8_core::report::{RunLog, EXIT_BAD_PACKAGE, EXIT_UNEXPECTED};
use dep8_core::restriction::{self, InternetPolicy, ResolveOptions};
use dep8_core::runner::{
    self, verdict, NotStarted, RunEnd, RunOptions, ShellPolicy, Timeouts, Verdict,
};
use dep8_core::setup::{self, Setup};
use dep8_core::testbed::TestbedError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dep8",
    version,
    about = "Run Debian package tests (DEP-8) on the testbed of your choice"
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short = 'd', long = "debug", action = clap::ArgAction::Count, global = true)]
    debug: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a source tree's tests: `dep8 run [OPTIONS] SRC [-- BACKEND ARGS...]`.
    /// Takes autopkgtest's options, unambiguous prefixes of them and
    /// `@FILE` argument files (one argument per line).
    #[command(infer_long_args = true)]
    Run(Box<RunArgs>),
    /// Validate debian/tests/control and list the tests it defines.
    Check(CheckArgs),
    /// Print each test's run/skip decision for a testbed, running nothing.
    Explain(ExplainArgs),
    /// Run one suite on several testbeds at once and show the results side
    /// by side: `dep8 compare SRC --on BACKEND... [-- RUN OPTIONS]`.
    Compare(compare::CompareArgs),
    /// List the backends and the capabilities they can provide.
    Backends,
    /// Print the restriction -> capability reference.
    Restrictions {
        /// As the Markdown of docs/restrictions.md.
        #[arg(long)]
        markdown: bool,
    },
    /// Serve a backend over autopkgtest's virt-server protocol on stdin/stdout.
    VirtServer(virt_server::ServerArgs),
    /// The auxverb of `dep8 virt-server` (internal).
    #[command(hide = true)]
    VirtExec(virt_server::ExecArgs),
    /// Run the conformance checks on a testbed: `dep8 conformance -- BACKEND ARGS...`.
    Conformance(conformance::Args),
    /// Remove what dead dep8 runs left behind (processes, schroot
    /// sessions, temp files); live runs and anything else are untouched.
    Clean,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Build testbed images from Debian's archive.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

#[derive(clap::Args)]
struct RunArgs {
    /// What to test, sorted as autopkgtest sorts it: a source tree
    /// (default: the current directory), a .dsc, a .changes (its .dsc and
    /// .debs), a source package name (apt-get source in the testbed) or a
    /// git URL[#BRANCH]; and any binary .deb files to test with.
    #[arg(value_name = "SRC [BINARIES]")]
    inputs: Vec<String>,
    /// The testbed: BACKEND [ARGS...] after `--` (default: null).
    #[arg(last = true, value_name = "BACKEND ARGS")]
    testbed: Vec<String>,
    /// The testbed backend, when it takes no arguments (same as `-- NAME`).
    #[arg(long, visible_alias = "testbed", conflicts_with = "testbed")]
    testbed_name: Option<String>,
    /// Write log, summary and per-test files here (must be empty or new).
    #[arg(short = 'o', long)]
    output_dir: Option<PathBuf>,
    /// Also write the summary to this file.
    #[arg(long, alias = "summary")]
    summary_file: Option<PathBuf>,
    /// Write the log to this file instead of OUTPUT_DIR/log.
    #[arg(short = 'l', long)]
    log_file: Option<PathBuf>,
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
    /// Only the test results on the terminal: dep8's messages and the
    /// tests' output go to the log file only.
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
}

#[derive(Clone, Copy, ValueEnum)]
enum Internet {
    Run,
    Try,
    Skip,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The unpacked source tree.
    source: PathBuf,
    /// Print the tests as a JSON array.
    #[arg(long)]
    json: bool,
    /// Also give each test's static skip reason on this backend.
    #[arg(long)]
    testbed: Option<String>,
    /// The testbed's dpkg architecture (default: the host's).
    #[arg(long)]
    arch: Option<String>,
}

#[derive(clap::Args)]
struct ExplainArgs {
    source: PathBuf,
    /// BACKEND [ARGS...] after `--` (default: null).
    #[arg(last = true)]
    testbed: Vec<String>,
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

/// Runs the command line with `registry`'s backends; returns the exit status.
pub fn main_with(registry: Registry) -> i32 {
    let args = match autopkgtest::command_line(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => return error(e),
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // autopkgtest maps usage errors to 20; --help and --version are fine.
            return if e.use_stderr() { EXIT_UNEXPECTED } else { 0 };
        }
    };
    let filter = match cli.debug {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // A run's temp files go to its own dir, claimed while dep8 has one thread.
    if matches!(cli.command, Command::Run(_)) {
        if let Err(e) = dep8_core::leftovers::claim() {
            return error(format!("creating the run's temp dir: {e}"));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let exit = runtime.block_on(dispatch(cli.command, &registry));
    // Whatever is still running (a testbed's processes killed on drop) ends
    // with the runtime, before dep8 itself does.
    drop(runtime);
    match exit {
        Exit::Code(code) => code,
        Exit::Signal(signal) => {
            dep8_core::exec::die_by_signal(signal);
            128 + signal
        }
    }
}

/// How a subcommand ends: an exit status, or (a run, after cleaning up) by
/// the signal that interrupted it, as autopkgtest ends on SIGTERM.
enum Exit {
    Code(i32),
    Signal(i32),
}

impl From<i32> for Exit {
    fn from(code: i32) -> Self {
        Exit::Code(code)
    }
}

async fn dispatch(command: Command, registry: &Registry) -> Exit {
    let code = match command {
        Command::Run(args) => return run(*args, registry).await,
        Command::Image(command) => tokio::task::block_in_place(|| image::main(command)),
        Command::Check(args) => check(args, registry),
        Command::Compare(args) => compare::compare(args).await,
        Command::VirtServer(args) => virt_server::serve(args, registry).await,
        Command::VirtExec(args) => virt_server::exec(args).await,
        Command::Conformance(args) => conformance::run(args, registry).await,
        Command::Explain(args) => explain(args, registry),
        Command::Backends => {
            let mut text = String::new();
            for b in registry.all() {
                let caps: Vec<String> = b
                    .capabilities_hint()
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                text += &format!(
                    "{:<10} {}\n{:<10} capabilities: {}\n",
                    b.name(),
                    b.summary(),
                    "",
                    caps.join(", ")
                );
            }
            emit(text)
        }
        Command::Restrictions { markdown } => emit(if markdown {
            restriction::reference_markdown()
        } else {
            restriction::table()
                .iter()
                .map(|row| format!("{:<26} {}\n", row.restriction.word(), row.meaning))
                .collect()
        }),
        Command::Clean => {
            let lines: String = dep8_core::leftovers::sweep()
                .into_iter()
                .map(|line| line + "\n")
                .collect();
            emit(lines)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dep8", &mut script);
            emit(script)
        }
        Command::Man => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => emit(page),
                Err(e) => error(format!("rendering the man page: {e}")),
            }
        }
    };
    code.into()
}

fn error(message: impl std::fmt::Display) -> i32 {
    say!("dep8: error: {message}");
    EXIT_UNEXPECTED
}

/// Writes a command's whole output to stdout; returns 0, or 20 if it could
/// not be written. A reader that went away (`dep8 explain | head -1`) ends
/// it quietly, as with other Unix tools.
fn emit(text: impl AsRef<[u8]>) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_ref()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => error(format!("writing to stdout: {e}")),
    }
}

/// Checks that SRC is an existing directory.
fn source_dir(source: &Path) -> Result<(), String> {
    if source.is_dir() {
        Ok(())
    } else if source.exists() {
        Err(format!(
            "{}: not a source tree, .dsc or .deb",
            source.display()
        ))
    } else {
        Err(format!("{}: no such file or directory", source.display()))
    }
}

fn internet(policy: Internet) -> InternetPolicy {
    match policy {
        Internet::Run => InternetPolicy::Run,
        Internet::Try => InternetPolicy::Try,
        Internet::Skip => InternetPolicy::Skip,
    }
}

fn testbed_setup(args: &RunArgs, binaries: Vec<PathBuf>) -> Result<Setup, String> {
    let commands = |given: &[String]| -> Result<Vec<String>, String> {
        given.iter().map(|c| setup::setup_command(c)).collect()
    };
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
    })
}

fn timeouts(args: &RunArgs) -> Timeouts {
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
/// without `-o`, a temporary one (`true`: remove it at the end).
fn output_dir(given: Option<&Path>) -> Result<(PathBuf, bool), String> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut entries =
                std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if entries.next().is_some() {
                return Err(format!("--output-dir \"{}\" is not empty", dir.display()));
            }
            Ok((dir.to_path_buf(), false))
        }
        None => tempfile::Builder::new()
            .prefix("dep8.output.")
            .tempdir()
            .map(|d| (d.keep(), true))
            .map_err(|e| format!("creating an output dir: {e}")),
    }
}

/// `dep8 run`: the output dir and log first, so that every later error is
/// in the log; a temporary output dir is removed at the end, as autopkgtest
/// removes its own.
async fn run(args: RunArgs, registry: &Registry) -> Exit {
    // Dead runs' leftovers go away (this run's dir was claimed at start).
    for line in dep8_core::leftovers::sweep() {
        tracing::info!("leftovers of a dead run: {line}");
    }
    let (out, temporary) = match output_dir(args.output_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return error(e).into(),
    };
    let exit = run_in(&args, registry, &out).await;
    if temporary {
        let _ = tokio::fs::remove_dir_all(&out).await;
    }
    dep8_core::leftovers::release();
    exit
}

async fn run_in(args: &RunArgs, registry: &Registry, out: &Path) -> Exit {
    let log_path = args.log_file.clone().unwrap_or_else(|| out.join("log"));
    let log = match RunLog::new(Some(&log_path), !args.quiet) {
        Ok(log) => log,
        Err(e) => return error(format!("{}: {e}", log_path.display())).into(),
    };
    let mut signals = listen(log.clone());
    let usage = |message: String| {
        log.error(&message);
        if args.quiet {
            // -q keeps dep8's messages off the terminal, not its errors.
            error(&message);
        }
        Exit::Code(EXIT_UNEXPECTED)
    };
    let inputs = match Inputs::classify(&args.inputs, args.no_built_binaries) {
        Ok(inputs) => inputs,
        Err(e) => return usage(e),
    };
    let mut testbed_argv = args.testbed.clone();
    if let Some(name) = &args.testbed_name {
        testbed_argv = vec![name.clone()];
    }
    if testbed_argv.is_empty() {
        testbed_argv = vec!["null".into()];
    }
    let short = autopkgtest::native_name(&testbed_argv[0], |n| registry.get(n).is_some());
    testbed_argv[0] = short.to_string();
    let (backend, backend_args) = match registry.resolve(&testbed_argv) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    let on_host = backend.is_host();
    let setup = match testbed_setup(args, inputs.binaries) {
        Ok(setup) => setup,
        Err(e) => return usage(e),
    };
    let host_changes = setup.system_changes();
    if on_host && !args.on_host_as_autopkgtest && !host_changes.is_empty() {
        return usage(format!(
            "{}: would change the host ({} is the host itself); dep8 run changes \
             the host only through --setup-commands: test on another testbed, or \
             give --on-host-as-autopkgtest for autopkgtest's behaviour",
            host_changes.join(", "),
            backend.name()
        ));
    }
    log.info(&format!("output dir {}", out.display()));
    if on_host && args.on_host_as_autopkgtest {
        log.warning(&format!(
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
        log.warning("--insecure: security checks autopkgtest 5.48 made opt-in are off");
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
        resolve: ResolveOptions {
            ignore: args.ignore_restrictions.iter().cloned().collect(),
            needs_internet: internet(args.needs_internet),
            arch: None,
        },
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
    };

    let summary = opts
        .summary_file
        .clone()
        .unwrap_or_else(|| out.join("summary"));
    // Ends the run before a testbed is open: the log, the summary, results.
    let stop = |why: NotStarted| match runner::not_started(&opts, &log, why) {
        RunEnd::Exited(code) => Exit::Code(code),
        RunEnd::Interrupted(signal) => Exit::Signal(signal),
    };
    if let Err(e) = check_inputs(&opts) {
        return stop(NotStarted::BadPackage(e));
    }
    log.info(&format!("opening testbed: {}", testbed_argv.join(" ")));
    // An interrupted open drops its future: what it started is killed.
    let opened = tokio::select! {
        opened = backend.open(&backend_args) => opened,
        Some(signal) = signals.recv() => return stop(NotStarted::Interrupted(signal)),
    };
    let mut tb = match opened {
        Ok(tb) => tb,
        Err(TestbedError::Usage(msg)) => {
            let msg = format!("{}: {msg}", testbed_argv[0]);
            log.error(&msg);
            return stop(NotStarted::Usage(msg));
        }
        Err(e) => return stop(NotStarted::Testbed(e.detail())),
    };
    let interrupt = async {
        match signals.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    };
    let end = runner::run(&opts, tb.as_mut(), &log, interrupt).await;
    // A second signal stops the close; dropping the testbed still kills
    // and removes what it can.
    tokio::select! {
        closed = tb.close() => if let Err(e) = closed {
            log.error(&format!("closing the testbed: {e}"));
        },
        Some(_) = signals.recv() => log.error("closing the testbed: interrupted again"),
    }
    drop(tb);
    log.info("@@@@@@@@@@@@@@@@@@@@ summary");
    log.raw(&std::fs::read(summary).unwrap_or_default());
    match end {
        RunEnd::Exited(code) => Exit::Code(code),
        RunEnd::Interrupted(signal) => Exit::Signal(signal),
    }
}

/// Listens to SIGINT and SIGTERM from the start of a run; each one is
/// logged as autopkgtest logs it, and sent on.
fn listen(log: RunLog) -> tokio::sync::mpsc::UnboundedReceiver<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = term.recv() => SignalKind::terminate(),
                _ = int.recv() => SignalKind::interrupt(),
            }
            .as_raw_value();
            log.error(&format!("Received signal {signal}, cleaning up..."));
            if tx.send(signal).is_err() {
                break;
            }
        }
    });
    rx
}

/// What can be checked of the inputs on the host, before a testbed is
/// opened: a `.dsc`'s files are all there, binaries are whole `.deb`s.
fn check_inputs(opts: &RunOptions) -> Result<(), String> {
    if let Some(Fetch::Dsc(dsc)) = &opts.fetch {
        dep8_core::acquire::check_dsc(dsc)?;
    }
    opts.setup
        .binaries
        .iter()
        .try_for_each(|deb| setup::check_binary(deb))
}

/// The parsed suite and the architecture used, for check and explain.
fn load(source: &Path, arch: Option<&str>) -> Result<(Vec<Entry>, String), String> {
    source_dir(source)?;
    let control = source.join("debian/tests/control");
    if let Ok(false) = control.try_exists() {
        return Err(format!("{}: no debian/tests/control", source.display()));
    }
    let arch = arch
        .map(str::to_string)
        .or_else(runner::host_arch)
        .unwrap_or_else(|| "amd64".into());
    Ok((runner::load_suite(&control, source, &arch)?, arch))
}

/// The capabilities a testbed argv (`[NAME, ARGS...]`) would offer, with
/// the backend's name; nothing is opened.
fn testbed_capabilities(
    registry: &Registry,
    testbed: &[String],
) -> Result<(&'static str, Capabilities), String> {
    let (b, args) = registry.resolve(testbed)?;
    Ok((b.name(), Capabilities::new(b.capabilities_for(&args))))
}

fn check(args: CheckArgs, registry: &Registry) -> i32 {
    let (entries, arch) = match load(&args.source, args.arch.as_deref()) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let caps = match &args.testbed {
        Some(name) => match testbed_capabilities(registry, std::slice::from_ref(name)) {
            Ok((_, caps)) => Some(caps),
            Err(e) => return error(e),
        },
        None => None,
    };
    let resolve_opts = ResolveOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let broken = entries.iter().any(|e| matches!(e, Entry::Broken { .. }));
    let mut text = String::new();
    if args.json {
        let tests: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let skip = caps
                    .as_ref()
                    .and_then(|caps| match verdict(e, caps, &resolve_opts) {
                        Verdict::Skip(r) => Some(r),
                        Verdict::Run | Verdict::Broken(_) => None,
                    });
                match e {
                    Entry::Test(t) => serde_json::json!({
                        "name": t.name, "path": t.path, "command": t.command,
                        "restrictions": t.restrictions, "features": t.features,
                        "depends": t.depends, "classes": t.classes,
                        "architecture": t.architectures, "location": t.location, "skip": skip,
                    }),
                    Entry::Unsupported {
                        name,
                        reason,
                        location,
                    } => serde_json::json!({
                        "name": name, "unsupported": reason, "location": location, "skip": skip,
                    }),
                    Entry::Broken { name, problem } => serde_json::json!({
                        "name": name, "broken": problem.to_string(), "location": problem.location,
                        "field": problem.field, "skip": skip,
                    }),
                }
            })
            .collect();
        text = serde_json::to_string_pretty(&tests).unwrap_or_default() + "\n";
    } else {
        for entry in &entries {
            let line = match entry {
                Entry::Test(t) => {
                    let what = t.path.clone().unwrap_or_else(|| {
                        format!("command: {}", t.command.as_deref().unwrap_or(""))
                    });
                    let decision =
                        caps.as_ref()
                            .map(|caps| match verdict(entry, caps, &resolve_opts) {
                                Verdict::Run => "  [runs]".to_string(),
                                other => format!("  [{other}]"),
                            });
                    format!("{what}{}", decision.unwrap_or_default())
                }
                Entry::Unsupported {
                    reason, location, ..
                } => format!("SKIP {reason} ({location})"),
                Entry::Broken { problem, .. } => format!("BROKEN {problem}"),
            };
            text += &format!("{:<20} {line}\n", entry.name());
        }
    }
    match emit(text) {
        0 if broken => EXIT_BAD_PACKAGE,
        code => code,
    }
}

fn explain(args: ExplainArgs, registry: &Registry) -> i32 {
    let (entries, arch) = match load(&args.source, None) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let (name, caps) = match testbed_capabilities(registry, &args.testbed) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let words: Vec<String> = caps.flags.iter().map(|c| c.to_string()).collect();
    let mut text = format!("testbed {name} can provide: {}\n", words.join(", "));
    let resolve_opts = ResolveOptions {
        arch: Some(arch),
        ..Default::default()
    };
    for entry in &entries {
        let verdict = verdict(entry, &caps, &resolve_opts);
        text += &format!("{:<20} {verdict}\n", entry.name());
    }
    emit(text)
}
