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
mod cache;
mod cmd;
mod config;
mod conformance;
mod console;
mod image;
mod registry;
mod report_html;
mod virt_server;
mod warnings;

pub use registry::Registry;

use clap::{CommandFactory, Parser, Subcommand};
use dep8_core::report::EXIT_UNEXPECTED;
use dep8_core::restriction;
use std::io::Write;

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
    /// Colour `dep8 run`'s results (`auto`: when stdout is a terminal and
    /// NO_COLOR is not set). Given before the subcommand, so that `run`
    /// takes exactly autopkgtest's options and their prefixes.
    #[arg(long, value_enum, default_value_t = console::ColorChoice::Auto)]
    color: console::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a source tree's tests: `dep8 run [OPTIONS] SRC [-- BACKEND ARGS...]`.
    /// Takes autopkgtest's options, unambiguous prefixes of them and
    /// `@FILE` argument files (one argument per line).
    #[command(infer_long_args = true)]
    Run(Box<cmd::run::RunArgs>),
    /// Validate debian/tests/control and list the tests it defines.
    Check(cmd::check::CheckArgs),
    /// Print each test's run/skip decision for a testbed, running nothing.
    Explain(cmd::explain::ExplainArgs),
    /// Run one suite on several testbeds at once and show the results side
    /// by side: `dep8 compare SRC --on BACKEND... [-- RUN OPTIONS]`.
    Compare(cmd::compare::CompareArgs),
    /// Write output dirs' results as one self-contained HTML page:
    /// `dep8 report OUTPUT_DIR... --html FILE`.
    Report(report_html::ReportArgs),
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
    /// dep8's package cache (apt's downloads and lists, shared by runs).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

/// Runs the command line with `registry`'s backends; returns the exit status.
pub fn main_with(registry: Registry) -> i32 {
    let args = match autopkgtest::command_line(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => return cmd::failed(e),
    };
    let as_autopkgtest = autopkgtest::called_as_autopkgtest(args.first());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // autopkgtest maps usage errors to 20; --help and --version are fine.
            return if e.use_stderr() { EXIT_UNEXPECTED } else { 0 };
        }
    };
    if let (true, Command::Run(run)) = (as_autopkgtest, &cli.command) {
        if let Err(e) = autopkgtest::refuse_dep8_options(run) {
            return cmd::failed(e);
        }
    }
    let filter = match cli.debug {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    {
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| filter.into()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(|| Stderr)
                    .with_filter(tracing_subscriber::filter::filter_fn(warnings::formatted)),
            )
            .with(warnings::Warnings)
            .init();
    }
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
    let exit = runtime.block_on(dispatch(cli.command, &registry, cli.color));
    // Whatever is still running (a testbed's processes killed on drop) ends
    // with the runtime, before dep8 itself does; a blocking task that hangs
    // (a `schroot --end-session` that never returns) is given up on after a
    // while, where a plain drop would wait for it forever. What it did not
    // end is the sweep's.
    runtime.shutdown_timeout(std::time::Duration::from_secs(60));
    match exit {
        Exit::Code(code) => code,
        Exit::Signal(signal) => {
            dep8_core::exec::die_by_signal(signal);
            128 + signal
        }
    }
}

/// stderr for the debug log (`-d`), above the live display when one is
/// drawn: a closed or full stderr loses the line. tracing-subscriber
/// reports a failed write with `eprintln!`, which panics when stderr cannot
/// be written; it has no option to ignore them.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        console::write_stderr(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a subcommand ends: an exit status, or (a run, after cleaning up) by
/// the signal that interrupted it, as autopkgtest ends on SIGTERM.
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

impl From<i32> for Exit {
    fn from(code: i32) -> Self {
        Exit::Code(code)
    }
}

async fn dispatch(command: Command, registry: &Registry, color: console::ColorChoice) -> Exit {
    let code = match command {
        Command::Run(args) => return cmd::run::run(*args, registry, color).await,
        Command::Image(command) => tokio::task::block_in_place(|| image::main(command)),
        Command::Cache(command) => dep8_core::blocking(move || cache::main(command)).await,
        Command::Check(args) => tokio::task::block_in_place(|| cmd::check::check(args, registry)),
        Command::Compare(args) => cmd::compare::compare(args, registry).await,
        Command::Report(args) => report_html::report(args),
        Command::VirtServer(args) => virt_server::serve(args, registry).await,
        Command::VirtExec(args) => virt_server::exec(args).await,
        Command::Conformance(args) => conformance::run(args, registry).await,
        Command::Explain(args) => {
            tokio::task::block_in_place(|| cmd::explain::explain(args, registry))
        }
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
            let swept = dep8_core::blocking(dep8_core::leftovers::sweep).await;
            let lines: String = swept
                .done
                .into_iter()
                .chain(swept.live)
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

pub(crate) fn error(message: impl std::fmt::Display) -> i32 {
    say!("dep8: error: {message}");
    EXIT_UNEXPECTED
}

/// Writes a command's whole output to stdout; returns 0, or 20 if it could
/// not be written. A reader that went away (`dep8 explain | head -1`) ends
/// it quietly, as with other Unix tools.
pub(crate) fn emit(text: impl AsRef<[u8]>) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_ref()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => error(format!("writing to stdout: {e}")),
    }
}
