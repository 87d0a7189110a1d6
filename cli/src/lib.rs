//! The `dep8` command line: argument parsing, the backend registry, and the
//! subcommands. `main_with` lets a custom binary add its own backends.

mod autopkgtest;
mod compare;
mod conformance;
mod image;
mod registry;
mod virt_server;

pub use registry::Registry;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use dep8_core::acquire::Fetch;
use dep8_core::capability::Capabilities;
use dep8_core::control::Entry;
use dep8_core::install::DependencyPolicy;
use dep8_core::report::{RunLog, EXIT_BAD_PACKAGE, EXIT_TESTBED_FAILURE, EXIT_UNEXPECTED};
use dep8_core::restriction::{self, InternetPolicy, ResolveOptions};
use dep8_core::runner::{self, RunOptions, ShellPolicy, Timeouts};
use dep8_core::setup::{self, Setup};
use dep8_core::testbed::TestbedError;
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
    /// What to test: an unpacked source tree (default: the current
    /// directory), a .dsc, or a source package name (fetched with apt-get
    /// source in the testbed); then any binary .deb files to test with.
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
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Do not build or use binaries from a .dsc or an unbuilt tree.
    #[arg(short = 'B', long = "no-built-binaries")]
    no_built_binaries: bool,
    /// Set parallel=N in DEB_BUILD_OPTIONS for building (default: the
    /// testbed's number of processors).
    #[arg(long, value_name = "N")]
    build_parallel: Option<u32>,
    /// Do not generate tests with autodep8 for packages without
    /// debian/tests/control.
    #[arg(long)]
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
    #[arg(long, value_name = "SECONDS")]
    timeout_short: Option<u64>,
    /// Time limit for copying the source tree and results (default 300).
    #[arg(long, value_name = "SECONDS")]
    timeout_copy: Option<u64>,
    /// Time limit for installing a test's dependencies (default 3000).
    #[arg(long, value_name = "SECONDS")]
    timeout_install: Option<u64>,
    /// Kill a test (and everything it started) after this long.
    #[arg(long, value_name = "SECONDS")]
    timeout_test: Option<u64>,
    /// Time limit for building the package (default 100000).
    #[arg(long, value_name = "SECONDS")]
    timeout_build: Option<u64>,
    /// Time limit for rebooting or reverting the testbed (default 600).
    #[arg(long, value_name = "SECONDS")]
    timeout_reboot: Option<u64>,
    /// Multiply the default timeouts by this factor.
    #[arg(long, default_value_t = 1.0)]
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
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not VAR=VALUE"))
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(dispatch(cli.command, &registry))
}

async fn dispatch(command: Command, registry: &Registry) -> i32 {
    match command {
        Command::Run(args) => run(*args, registry).await,
        Command::Image(command) => tokio::task::block_in_place(|| image::main(command)),
        Command::Check(args) => check(args, registry),
        Command::Compare(args) => compare::compare(args).await,
        Command::VirtServer(args) => virt_server::serve(args, registry).await,
        Command::VirtExec(args) => virt_server::exec(args).await,
        Command::Conformance(args) => conformance::run(args, registry).await,
        Command::Explain(args) => explain(args, registry),
        Command::Backends => {
            for b in registry.all() {
                let caps: Vec<String> = b
                    .capabilities_hint()
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                println!(
                    "{:<10} {}\n{:<10} capabilities: {}",
                    b.name(),
                    b.summary(),
                    "",
                    caps.join(", ")
                );
            }
            0
        }
        Command::Restrictions { markdown } => {
            if markdown {
                print!("{}", restriction::reference_markdown());
            } else {
                for row in restriction::table() {
                    println!("{:<26} {}", row.restriction.word(), row.meaning);
                }
            }
            0
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dep8", &mut std::io::stdout());
            0
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(_) => EXIT_UNEXPECTED,
            }
        }
    }
}

fn error(message: impl std::fmt::Display) -> i32 {
    eprintln!("dep8: error: {message}");
    EXIT_UNEXPECTED
}

/// `dep8 run`'s positional arguments, sorted as autopkgtest sorts them.
struct Inputs {
    /// The tree, or what names the source for `fetch`.
    source: PathBuf,
    fetch: Option<Fetch>,
    binaries: Vec<PathBuf>,
}

impl Inputs {
    fn classify(args: &[String]) -> Result<Inputs, String> {
        let mut source = None;
        let mut binaries = Vec::new();
        for arg in args {
            let path = PathBuf::from(arg);
            if arg.ends_with(".deb") {
                if !path.is_file() {
                    return Err(format!("{arg}: no such file"));
                }
                binaries.push(path);
                continue;
            }
            if source.is_some() {
                return Err(format!(
                    "{arg}: only one source can be tested at a time (binaries must end in .deb)"
                ));
            }
            source = Some(if arg.ends_with(".dsc") {
                if !path.is_file() {
                    return Err(format!("{arg}: no such file"));
                }
                (path.clone(), Some(Fetch::Dsc(path)))
            } else if path.exists() || arg.contains('/') {
                source_dir(&path)?;
                (path, None)
            } else if is_package_name(arg) {
                (path, Some(Fetch::AptSource(arg.clone())))
            } else {
                return Err(format!("{arg}: no such file or directory"));
            });
        }
        let (source, fetch) = source.unwrap_or_else(|| (PathBuf::from("."), None));
        if fetch.is_none() {
            source_dir(&source)?;
        }
        Ok(Inputs {
            source,
            fetch,
            binaries,
        })
    }
}

/// Debian's rule for a source package name.
fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
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
        given.map_or_else(|| default.mul_f64(args.timeout_factor), Duration::from_secs)
    };
    Timeouts {
        short: pick(args.timeout_short, d.short),
        copy: pick(args.timeout_copy, d.copy),
        install: pick(args.timeout_install, d.install),
        test: pick(args.timeout_test, d.test),
        build: pick(args.timeout_build, d.build),
        reboot: pick(args.timeout_reboot, d.reboot),
    }
}

/// Creates OUTPUT_DIR, refusing a non-empty one as autopkgtest does.
fn output_dir(given: Option<&Path>) -> Result<PathBuf, String> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut entries =
                std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if entries.next().is_some() {
                return Err(format!("--output-dir \"{}\" is not empty", dir.display()));
            }
            Ok(dir.to_path_buf())
        }
        None => tempfile::Builder::new()
            .prefix("dep8.output.")
            .tempdir()
            .map(|d| d.keep())
            .map_err(|e| format!("creating an output dir: {e}")),
    }
}

async fn run(args: RunArgs, registry: &Registry) -> i32 {
    let inputs = match Inputs::classify(&args.inputs) {
        Ok(inputs) => inputs,
        Err(e) => return error(e),
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
        Err(e) => return error(e),
    };
    let on_host = backend.is_host();
    let setup = match testbed_setup(&args, inputs.binaries) {
        Ok(setup) => setup,
        Err(e) => return error(e),
    };
    let host_changes = setup.system_changes();
    if on_host && !args.on_host_as_autopkgtest && !host_changes.is_empty() {
        return error(format!(
            "{}: would change the host ({} is the host itself); dep8 run changes \
             the host only through --setup-commands: test on another testbed, or \
             give --on-host-as-autopkgtest for autopkgtest's behaviour",
            host_changes.join(", "),
            backend.name()
        ));
    }
    let out = match output_dir(args.output_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return error(e),
    };
    let log_path = args.log_file.clone().unwrap_or_else(|| out.join("log"));
    let log = match RunLog::new(Some(&log_path), !args.quiet) {
        Ok(log) => log,
        Err(e) => return error(format!("{}: {e}", log_path.display())),
    };
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
        output_dir: out.clone(),
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
        timeouts: timeouts(&args),
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
        gain_root: args.gain_root.clone(),
        build_parallel: args.build_parallel,
        no_auto_control: args.no_auto_control,
        validate: args.validate,
        insecure: args.insecure,
    };

    let summary = opts
        .summary_file
        .clone()
        .unwrap_or_else(|| out.join("summary"));
    // Ends the run before a testbed is opened: the log, the summary, the code.
    let stop = |message: String, code: i32| {
        log.error(&message);
        let _ = std::fs::write(&summary, format!("{message}\n"));
        code
    };
    if let Err(e) = check_inputs(&opts) {
        return stop(format!("erroneous package: {e}"), EXIT_BAD_PACKAGE);
    }
    log.info(&format!("opening testbed: {}", testbed_argv.join(" ")));
    let mut tb = match backend.open(&backend_args).await {
        Ok(tb) => tb,
        Err(TestbedError::Usage(msg)) => return error(format!("{}: {msg}", testbed_argv[0])),
        Err(e) => return stop(e.to_string(), EXIT_TESTBED_FAILURE),
    };
    let global = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    let code = runner::run(&opts, tb.as_mut(), &log, interrupted(global, &log)).await;
    if code == EXIT_UNEXPECTED {
        log.error("interrupted: the running test was killed; results so far are kept");
    }
    if let Err(e) = tb.close().await {
        log.error(&format!("closing the testbed: {e}"));
    }
    log.info("@@@@@@@@@@@@@@@@@@@@ summary");
    log.raw(&std::fs::read(summary).unwrap_or_default());
    code
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

/// Resolves on Ctrl-C or SIGTERM, or once `--timeout` (`global`) is up.
async fn interrupted(global: Option<Duration>, log: &RunLog) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let deadline = async {
        match global {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = deadline => log.error(&format!(
            "global timeout reached (--timeout {})",
            global.unwrap_or_default().as_secs()
        )),
    }
}

/// The parsed suite and the architecture used, for check and explain.
fn load(source: &Path, arch: Option<&str>) -> Result<(Vec<Entry>, String), String> {
    source_dir(source)?;
    let control = source.join("debian/tests/control");
    if !control.exists() {
        return Err(format!("{}: no debian/tests/control", source.display()));
    }
    let arch = arch
        .map(str::to_string)
        .or_else(runner::host_arch)
        .unwrap_or_else(|| "amd64".into());
    let opts = RunOptions {
        source: source.to_path_buf(),
        ..Default::default()
    };
    Ok((runner::load_suite(&opts, source, &arch)?, arch))
}

fn hint_capabilities(backend: &dyn dep8_core::testbed::Backend) -> Capabilities {
    Capabilities::new(backend.capabilities_hint())
}

fn check(args: CheckArgs, registry: &Registry) -> i32 {
    let (entries, arch) = match load(&args.source, args.arch.as_deref()) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let caps = match &args.testbed {
        Some(name) => match registry.resolve(std::slice::from_ref(name)) {
            Ok((b, _)) => Some(hint_capabilities(b)),
            Err(e) => return error(e),
        },
        None => None,
    };
    let resolve_opts = ResolveOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let broken = entries.iter().any(|e| matches!(e, Entry::Broken { .. }));
    if args.json {
        let tests: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let skip = caps.as_ref().and_then(|caps| match e {
                    Entry::Test(t) => match restriction::resolve(t, caps, &resolve_opts) {
                        restriction::Decision::Skip(r) => Some(r),
                        restriction::Decision::Run => None,
                    },
                    Entry::Unsupported { reason, .. } => Some(reason.clone()),
                    Entry::Broken { .. } => None,
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
        println!(
            "{}",
            serde_json::to_string_pretty(&tests).unwrap_or_default()
        );
    } else {
        for entry in &entries {
            let line = match entry {
                Entry::Test(t) => {
                    let what = t.path.clone().unwrap_or_else(|| {
                        format!("command: {}", t.command.as_deref().unwrap_or(""))
                    });
                    let decision = caps.as_ref().map(|caps| {
                        match restriction::resolve(t, caps, &resolve_opts) {
                            restriction::Decision::Run => "  [runs]".to_string(),
                            restriction::Decision::Skip(r) => format!("  [SKIP {r}]"),
                        }
                    });
                    format!("{what}{}", decision.unwrap_or_default())
                }
                Entry::Unsupported {
                    reason, location, ..
                } => format!("SKIP {reason} ({location})"),
                Entry::Broken { problem, .. } => format!("BROKEN {problem}"),
            };
            println!("{:<20} {line}", entry.name());
        }
    }
    if broken {
        12
    } else {
        0
    }
}

fn explain(args: ExplainArgs, registry: &Registry) -> i32 {
    let (entries, arch) = match load(&args.source, None) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let b = match registry.resolve(&args.testbed) {
        Ok((b, _)) => b,
        Err(e) => return error(e),
    };
    let caps = hint_capabilities(b);
    let words: Vec<String> = caps.flags.iter().map(|c| c.to_string()).collect();
    println!("testbed {} can provide: {}", b.name(), words.join(", "));
    let resolve_opts = ResolveOptions {
        arch: Some(arch),
        ..Default::default()
    };
    for (name, verdict) in runner::explain(&entries, &caps, &resolve_opts) {
        println!("{name:<20} {verdict}");
    }
    0
}
