//! `dep8 run SRC --on A --on B` (or `--testbed auto`: every testbed of the
//! configuration): each test goes to the cheapest testbed that can run it,
//! backends ranked by `defaults.route` (cheapest first; [`DEFAULT_ORDER`]
//! by default). Each testbed gets one run of its tests, in an output dir
//! of its own under OUTPUT_DIR, all at once; their results are then merged
//! into OUTPUT_DIR in the control file's order: the summary as a single
//! run's (autopkgtest's lines), results.json and junit.xml naming each
//! test's testbed, the log with a section per testbed, and the per-test
//! files. A source to fetch (a `.dsc`, a `.changes`, a source package
//! name, a git URL, an unbuilt tree with unapplied patches) is got once, on
//! the host, and each testbed tests that tree.

use super::run::{routed_not_started, run_in, timeouts, RunArgs, Signals};
use crate::config::Config;
use crate::{Exit, Registry};
use dep8_core::acquire::{acquire, check_dsc, Fetch};
use dep8_core::capability::Capabilities;
use dep8_core::control::Entry;
use dep8_core::engine::{host_arch, load_suite, Verdict};
use dep8_core::error::Error;
use dep8_core::inputs::Inputs;
use dep8_core::report::{Report, TestRecord, EXIT_UNEXPECTED};
use dep8_core::restriction::ResolveOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Backends from cheapest to dearest to open and run on.
pub const DEFAULT_ORDER: [&str; 7] = [
    "null", "unshare", "schroot", "lxc", "qemu", "ssh", "external",
];

/// One of the run's testbeds.
pub struct Candidate {
    pub label: String,
    pub argv: Vec<String>,
    pub capabilities: Capabilities,
}

/// Which tests go where: for each candidate (by index), its tests in the
/// control file's order. A test goes to the cheapest candidate (by the
/// rank of its backend in `order`, then as given) whose capabilities run
/// it; one that none runs goes to the cheapest, which says why it skips.
pub fn route(
    entries: &[Entry],
    candidates: &[Candidate],
    order: &[String],
    opts: &ResolveOptions,
) -> Vec<Vec<String>> {
    let cheapest_first = cheapest_first(candidates, order);
    let mut routes = vec![Vec::new(); candidates.len()];
    for entry in entries {
        let runs =
            |&&i: &&usize| Verdict::of(entry, &candidates[i].capabilities, opts) == Verdict::Run;
        let chosen = cheapest_first
            .iter()
            .find(runs)
            .unwrap_or(&cheapest_first[0]);
        routes[*chosen].push(entry.name().to_string());
    }
    routes
}

/// The indexes of `candidates` from the cheapest (by the rank of its
/// backend in `order`, then as given) to the dearest.
fn cheapest_first(candidates: &[Candidate], order: &[String]) -> Vec<usize> {
    let rank = |c: &Candidate| {
        order
            .iter()
            .position(|b| *b == c.argv[0])
            .unwrap_or(order.len())
    };
    let mut indexes: Vec<usize> = (0..candidates.len()).collect();
    indexes.sort_by_key(|&i| rank(&candidates[i]));
    indexes
}

/// The routed run: OUTPUT_DIR `out` exists and is empty. An error before
/// any testbed runs ends it with the exit code of its blame; one while the
/// source is got on the host (or a signal then) also leaves the files a
/// run on one testbed leaves when it stops before opening it.
pub async fn run_routed(args: &RunArgs, registry: &Registry, out: &Path) -> Exit {
    let inputs = match args.classify_inputs() {
        Ok(inputs) => inputs,
        Err(e) => return super::failed(e).into(),
    };
    let said = Arc::new(Mutex::new(Vec::new()));
    let source = match Source::get(args, &inputs, registry, &said).await {
        Ok(source) => source,
        Err(why) => {
            let said = std::mem::take(&mut *said.lock().unwrap());
            return routed_not_started(args, &inputs, out, &said, why).await;
        }
    };
    // It reads the configuration and the control file.
    match tokio::task::block_in_place(|| plan_routes(args, registry, &source)) {
        Ok(plan) => run_routes(args, registry, out, &source, plan).await,
        Err(e) => super::failed(e).into(),
    }
}

/// The source tree whose tests are routed, and what each testbed's run is
/// given to test it.
struct Source {
    /// The tree given, or the one got on the host.
    tree: PathBuf,
    /// Where the project's dep8.toml is: as for a run on one testbed, the
    /// tree given, else the current directory.
    project: PathBuf,
    /// The positional arguments of each testbed's run.
    inputs: Vec<String>,
    /// Whether each testbed's run builds the source, as the run given would.
    build: bool,
    /// What getting the source on the host printed, for the log.
    log: String,
    /// Keeps the tree got on the host until the end of the run.
    _acquired: Option<tempfile::TempDir>,
}

impl Source {
    /// The source of `inputs`: a tree is routed as it is; anything else is
    /// got on the host (`null`) as a run on the host gets it, once, and
    /// each testbed's run tests that tree with the binaries given. What
    /// getting it prints goes to `said`. SIGINT or SIGTERM meanwhile stops
    /// it and removes what it made.
    async fn get(
        args: &RunArgs,
        inputs: &Inputs,
        registry: &Registry,
        said: &Arc<Mutex<Vec<u8>>>,
    ) -> Result<Source, Error> {
        let project = crate::config::project_dir(inputs);
        let Some(fetch) = &inputs.fetch else {
            return Ok(Source {
                tree: inputs.source.clone(),
                project,
                inputs: args.inputs().to_vec(),
                build: inputs.build,
                log: String::new(),
                _acquired: None,
            });
        };
        let tap = {
            let said = said.clone();
            Arc::new(move |bytes: &[u8]| said.lock().unwrap().extend_from_slice(bytes))
        };
        tap(format!("dep8: on the host: {fetch}\n").as_bytes());
        if let Fetch::Dsc(dsc) = fetch {
            check_dsc(dsc)?;
        }
        let mut signals = Signals::new();
        let (host, host_args) = registry
            .resolve(&["null".to_string()])
            .map_err(|e| Error::Usage(format!("getting {fetch} on the host: {e}")))?;
        let mut tb = host.open(&host_args).await?;
        let dir = tempfile::Builder::new()
            .prefix("dep8-source.")
            .tempdir()
            .map_err(|e| Error::Testbed(format!("creating a temp dir: {e}")))?;
        let getting = acquire(
            tb.as_ref(),
            fetch,
            dir.path(),
            timeouts(args).install,
            tap,
            false,
        );
        // An interrupted acquire drops its future: what it started is killed.
        let got = tokio::select! {
            got = getting => got,
            signal = signals.next() => Err(Error::Interrupted(signal)),
        };
        if !matches!(got, Err(Error::Interrupted(_))) {
            tb.close().await?;
        }
        got?;
        let tree = dir.path().to_path_buf();
        let binaries = inputs.binaries.iter().map(|b| b.display().to_string());
        Ok(Source {
            inputs: std::iter::once(tree.display().to_string())
                .chain(binaries)
                .collect(),
            tree,
            project,
            build: inputs.build,
            log: String::from_utf8_lossy(&said.lock().unwrap()).into_owned(),
            _acquired: Some(dir),
        })
    }
}

/// A testbed and the tests it runs (none: all of them).
struct Routed {
    label: String,
    argv: Vec<String>,
    tests: Vec<String>,
}

impl Routed {
    /// Its tests, for the terminal and the log.
    fn tests_said(&self) -> String {
        if self.tests.is_empty() {
            "the whole run".to_string()
        } else {
            self.tests.join(" ")
        }
    }
}

/// The testbeds and their tests, and the selected tests in control file
/// order. A suite that cannot be routed (no control file: autodep8's, or
/// none; a debian/control that cannot be read) is run whole on the
/// cheapest testbed, which ends it as a run on that testbed alone would.
fn plan_routes(
    args: &RunArgs,
    registry: &Registry,
    source: &Source,
) -> Result<(Vec<Routed>, Vec<String>), Error> {
    let config = Config::load(&source.project, registry)?;
    let names = if args.on.is_empty() {
        let names: Vec<String> = config.names().iter().map(|n| n.to_string()).collect();
        if names.is_empty() {
            return Err(Error::Usage(format!(
                "--testbed auto: no testbed in {} or ~/.config/dep8/config.toml",
                crate::config::PROJECT_FILE
            )));
        }
        names
    } else {
        args.on.clone()
    };
    let mut candidates = candidates(&config, &names, registry)?;
    let order = order(&config);
    let control = args.control_path(&source.tree);
    let arch = host_arch().unwrap_or_else(|| "amd64".into());
    let suite = match control.try_exists() {
        Ok(false) => None,
        _ => load_suite(&control, &source.tree, &arch).ok(),
    };
    let Some(entries) = suite else {
        let cheapest = candidates.swap_remove(cheapest_first(&candidates, &order)[0]);
        let whole = Routed {
            label: cheapest.label,
            argv: cheapest.argv,
            tests: Vec::new(),
        };
        return Ok((vec![whole], Vec::new()));
    };
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| e.name() == "*" || args.selects(e.name()))
        .collect();
    let mut opts = args.resolve_options();
    opts.arch = Some(arch);
    let routes = route(&entries, &candidates, &order, &opts);
    let all = entries.iter().map(|e| e.name().to_string()).collect();
    let routed = candidates
        .into_iter()
        .zip(routes)
        .filter(|(_, tests)| !tests.is_empty())
        .map(|(c, tests)| Routed {
            label: c.label,
            argv: c.argv,
            tests,
        })
        .collect();
    Ok((routed, all))
}

/// The testbeds `names` (configured names, or BACKEND ARGS) with the
/// capabilities they would offer, opening nothing.
fn candidates(
    config: &Config,
    names: &[String],
    registry: &Registry,
) -> Result<Vec<Candidate>, Error> {
    let mut candidates = Vec::new();
    for (label, mut argv) in config.labelled(names)? {
        let (backend, backend_args) = registry.resolve(&argv)?;
        let capabilities = Capabilities::new(backend.capabilities_for(&backend_args));
        // The backend's own name, as the order names it.
        argv[0] = backend.name().to_string();
        candidates.push(Candidate {
            label,
            argv,
            capabilities,
        });
    }
    Ok(candidates)
}

/// The backends from cheapest to dearest: `defaults.route`, or
/// [`DEFAULT_ORDER`].
fn order(config: &Config) -> Vec<String> {
    config
        .route_order
        .clone()
        .unwrap_or_else(|| DEFAULT_ORDER.iter().map(|b| b.to_string()).collect())
}

/// `dep8 explain SRC --on A --on B`: where each test of `source` would
/// run, and its verdict there.
pub fn explain_routes(source: &Path, on: &[String], registry: &Registry) -> Result<String, Error> {
    let config = Config::for_source(source, registry)?;
    let candidates = candidates(&config, on, registry)?;
    let (entries, arch) = super::load(source, None)?;
    let opts = ResolveOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let routes = route(&entries, &candidates, &order(&config), &opts);
    let mut text = format!("backends from cheapest: {}\n", order(&config).join(", "));
    for entry in &entries {
        let Some(at) = routes
            .iter()
            .position(|r| r.iter().any(|n| n == entry.name()))
        else {
            continue;
        };
        let verdict = Verdict::of(entry, &candidates[at].capabilities, &opts);
        text += &format!(
            "{:<20} {verdict} (on {})\n",
            entry.name(),
            candidates[at].label
        );
    }
    Ok(text)
}

/// Runs each testbed's tests at once, then merges their results into `out`.
async fn run_routes(
    args: &RunArgs,
    registry: &Registry,
    out: &Path,
    source: &Source,
    (routes, order): (Vec<Routed>, Vec<String>),
) -> Exit {
    let dirs: Vec<PathBuf> = (1..=routes.len())
        .map(|i| out.join(format!("testbed-{i}")))
        .collect();
    for (route, dir) in routes.iter().zip(&dirs) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return super::failed(unwritten(dir, e)).into();
        }
        say!(
            "dep8: on {} ({}): {}",
            route.label,
            dir.display(),
            route.tests_said()
        );
    }
    let runs = routes.iter().zip(&dirs).map(|(route, dir)| {
        let sub = args.on_one(
            route.argv.clone(),
            route.tests.clone(),
            source.inputs.clone(),
            source.build,
        );
        async move { run_in(&sub, registry, dir, None).await }
    });
    let exits = futures_util::future::join_all(runs).await;
    let log = args.log_path(out);
    let merged = match merge(&routes, &dirs, &order, out, (&source.log, &log)) {
        Ok(merged) => merged,
        Err(e) => return super::failed(e).into(),
    };
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    if let Some(file) = args.summary_file() {
        if let Err(e) = std::fs::write(file, &summary) {
            return super::failed(unwritten(file, e)).into();
        }
    }
    // The results, as a run shows them (also with -q).
    crate::emit(summary);
    if let Some(html) = args.html() {
        let page = crate::report_html::run_page(out, merged.clone());
        if let Err(e) = crate::report_html::write(html, &page) {
            return super::failed(e).into();
        }
    }
    // A run stopped by a signal stops them all; else the merged results'.
    exits
        .into_iter()
        .find(|exit| matches!(exit, Exit::Signal(_)))
        .unwrap_or(Exit::Code(merged.exit_code.unwrap_or(EXIT_UNEXPECTED)))
}

/// An output file or dir that could not be written: exit 20, as
/// autopkgtest's unexpected errors.
fn unwritten(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{}: {e}", path.display()))
}

/// Merges the testbeds' output dirs `dirs` into `out`: the tests in
/// `order`, each with its testbed; per-test files moved up. The log,
/// `preamble` then each testbed's section, goes to `log_path`.
fn merge(
    routes: &[Routed],
    dirs: &[PathBuf],
    order: &[String],
    out: &Path,
    (preamble, log_path): (&str, &Path),
) -> Result<Report, Error> {
    let suite = order.first().map_or("tests", |_| "routed");
    let labels: Vec<&str> = routes.iter().map(|r| r.label.as_str()).collect();
    let mut merged = Report::new(suite, &labels.join(" + "));
    merged.complete = true;
    let mut records = Vec::new();
    let mut notes = Vec::new();
    let mut log = preamble.to_string();
    let mut stopped = None;
    for (route, dir) in routes.iter().zip(dirs) {
        let report = Report::read(&dir.join("results.json"))?;
        merged.suite = report.suite.clone();
        if !report.complete {
            merged.complete = false;
            stopped = stopped.or(report.exit_code);
        }
        merged.signal = merged.signal.or(report.signal);
        merged.error = merged.error.or(report.error);
        if merged.blame.is_empty() {
            merged.blame = report.blame;
        }
        // The summary's lines that are no test's (why a run stopped).
        let mut summary_notes: Vec<String> = std::fs::read_to_string(dir.join("summary"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        for mut record in report.tests {
            if let TestRecord::Finished(result) = &mut record {
                result.testbed = Some(route.label.clone());
                let lines = result.summary_lines();
                summary_notes.retain(|l| !lines.contains(l));
            }
            records.push(record);
        }
        notes.extend(summary_notes);
        log += &format!(
            "dep8: testbed {} ({}): {}\n",
            route.label,
            route.argv.join(" "),
            route.tests_said()
        );
        log += &std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        move_test_files(dir, out)?;
    }
    let position = |r: &TestRecord| {
        order
            .iter()
            .position(|n| n == r.name())
            .unwrap_or(order.len())
    };
    records.sort_by_key(position);
    merged.tests = records;
    merged.exit_code = Some(stopped.unwrap_or_else(|| merged.exit_code_of_results()));
    let mut summary: Vec<String> = merged.results().flat_map(|r| r.summary_lines()).collect();
    summary.extend(notes);
    let results = out.join("results.json");
    let json = serde_json::to_string_pretty(&merged).map_err(|e| unwritten(&results, e))?;
    let text = |lines: Vec<String>| lines.into_iter().map(|l| l + "\n").collect::<String>();
    for (path, bytes) in [
        (out.join("summary"), text(summary)),
        (results, json),
        (out.join("junit.xml"), merged.junit()),
        (log_path.to_path_buf(), log),
    ] {
        std::fs::write(&path, bytes).map_err(|e| unwritten(&path, e))?;
    }
    Ok(merged)
}

/// The files a run writes for itself, kept in its testbed's dir.
const RUN_FILES: [&str; 7] = [
    "log",
    "summary",
    "results.json",
    "junit.xml",
    "testinfo.json",
    "testbed-packages",
    "testpkg-version",
];

/// Moves the per-test files and dirs (`NAME-stdout`, `artifacts`, ...) of
/// `dir` into `out`.
fn move_test_files(dir: &Path, out: &Path) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| unwritten(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if RUN_FILES.iter().any(|f| name == *f) {
            continue;
        }
        let target = out.join(&name);
        if target.exists() {
            // artifacts/ of several testbeds: each test's dir moves.
            if entry.path().is_dir() {
                move_test_files(&entry.path(), &target)?;
            }
            continue;
        }
        std::fs::rename(entry.path(), &target).map_err(|e| unwritten(&entry.path(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dep8_core::capability::Capability;
    use dep8_core::control::Test;
    use dep8_core::restriction::Restriction;

    fn candidate(backend: &str, caps: &[Capability]) -> Candidate {
        Candidate {
            label: backend.to_string(),
            argv: vec![backend.to_string()],
            capabilities: Capabilities::new(caps.iter().copied()),
        }
    }

    #[test]
    fn each_test_goes_to_the_cheapest_testbed_that_runs_it() {
        let test = |name: &str, restrictions: Vec<Restriction>| {
            let mut t = Test::for_command(name, "true");
            t.restrictions = restrictions;
            Entry::Test(t)
        };
        let entries = [
            test("plain", vec![]),
            test("root", vec![Restriction::NeedsRoot]),
            test("breaks", vec![Restriction::BreaksTestbed]),
            test("machine", vec![Restriction::IsolationMachine]),
        ];
        use Capability::*;
        // Given dearest first: the order, not the command line, decides.
        let candidates = [
            candidate(
                "qemu",
                &[RootOnTestbed, Revert, RevertFullSystem, IsolationMachine],
            ),
            candidate("unshare", &[RootOnTestbed, Revert, RevertFullSystem]),
            candidate("null", &[]),
        ];
        let order: Vec<String> = DEFAULT_ORDER.iter().map(|b| b.to_string()).collect();
        let routes = route(&entries, &candidates, &order, &ResolveOptions::default());
        assert_eq!(
            routes,
            [vec!["machine"], vec!["root", "breaks"], vec!["plain"]]
        );
        // Configured the other way round, qemu comes first.
        let reversed: Vec<String> = order.iter().rev().cloned().collect();
        let routes = route(&entries, &candidates, &reversed, &ResolveOptions::default());
        assert_eq!(routes[0], ["plain", "root", "breaks", "machine"]);
    }
}
