//! The `dep8` command line: argument parsing, the backend registry, and the
//! subcommands. `main_with` lets a custom binary add its own backends.

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
use dep8_core::report::{RunLog, EXIT_UNEXPECTED};
use dep8_core::restriction::{self, InternetPolicy, ResolveOptions};
use dep8_core::runner::{self, NotStarted, RunEnd, RunOptions, Timeouts};
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
    /// Accepted for compatibility: dep8 never builds binaries before testing.
    #[arg(short = 'B', long = "no-built-binaries")]
    no_built_binaries: bool,
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
    let cli = match Cli::try_parse_from(command_line(std::env::args_os())) {
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

/// The command line as `dep8` reads it. Started as `autopkgtest` (a symlink
/// to dep8), the arguments are autopkgtest's: they become `dep8 run ...`.
fn command_line(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.collect();
    let called_as = args
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|name| name.to_os_string());
    if called_as.as_deref() == Some(std::ffi::OsStr::new("autopkgtest")) {
        args.insert(1, "run".into());
    }
    args
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
        Command::Clean => {
            for line in dep8_core::leftovers::sweep() {
                println!("{line}");
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
    };
    code.into()
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
    let mut commands = Vec::new();
    if args.apt_upgrade {
        commands.push(setup::APT_UPGRADE.to_string());
    }
    for arg in &args.setup_commands {
        commands.push(setup::setup_command(arg)?);
    }
    Ok(Setup {
        copies: args.copy.clone(),
        apt_sources: args.add_apt_source.clone(),
        apt_pockets: args.apt_pocket.clone(),
        commands,
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
    let log = match RunLog::new(Some(&log_path), true) {
        Ok(log) => log,
        Err(e) => return error(format!("{}: {e}", log_path.display())).into(),
    };
    let mut signals = listen(log.clone());
    let usage = |message: String| {
        log.error(&message);
        Exit::Code(EXIT_UNEXPECTED)
    };
    let inputs = match Inputs::classify(&args.inputs) {
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
    let (backend, backend_args) = match registry.resolve(&testbed_argv) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    if backend.is_host() && !inputs.binaries.is_empty() {
        return usage(format!(
            "{}: dep8 installs no packages on the host ({}): install them yourself, \
             or test them on another testbed",
            inputs.binaries[0].display(),
            backend.name()
        ));
    }
    log.info(&format!("output dir {}", out.display()));
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
        env: args.env.clone(),
        user: args.user.clone(),
        timeouts: timeouts(args),
        testbed_argv: testbed_argv.clone(),
        fetch: inputs.fetch,
        setup: match testbed_setup(args, inputs.binaries) {
            Ok(setup) => setup,
            Err(e) => return usage(e),
        },
        dependencies: if backend.is_host() {
            DependencyPolicy::CheckOnly
        } else {
            DependencyPolicy::Install
        },
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
        Err(TestbedError::Usage(msg)) => return usage(format!("{}: {msg}", testbed_argv[0])),
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
