//! `dep8 run SRC --on A --on B` (or `--testbed auto`: every testbed of the
//! configuration): each test goes to the cheapest testbed that can run it,
//! backends ranked by `defaults.route` (cheapest first; [`DEFAULT_ORDER`]
//! by default). Each testbed gets one run of its tests, in an output dir
//! of its own under OUTPUT_DIR, all at once; their results are then merged
//! into OUTPUT_DIR in the control file's order: the summary as a single
//! run's (autopkgtest's lines), results.json and junit.xml naming each
//! test's testbed, the log with a section per testbed, and the per-test
//! files.

use super::run::{run_in, RunArgs};
use crate::config::Config;
use crate::{error, Exit, Registry};
use dep8_core::capability::Capabilities;
use dep8_core::control::Entry;
use dep8_core::engine::Verdict;
use dep8_core::report::{Report, TestRecord, EXIT_UNEXPECTED};
use dep8_core::restriction::ResolveOptions;
use std::path::{Path, PathBuf};

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
    let rank = |c: &Candidate| {
        order
            .iter()
            .position(|b| *b == c.argv[0])
            .unwrap_or(order.len())
    };
    let mut cheapest_first: Vec<usize> = (0..candidates.len()).collect();
    cheapest_first.sort_by_key(|&i| rank(&candidates[i]));
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

/// The routed run: OUTPUT_DIR `out` exists and is empty.
pub async fn run_routed(args: &RunArgs, registry: &Registry, out: &Path) -> Exit {
    // It reads the configuration and the control file.
    match tokio::task::block_in_place(|| plan_routes(args, registry)) {
        Ok(routes) => run_routes(args, registry, out, routes).await,
        Err(e) => error(e).into(),
    }
}

/// A testbed and the tests it runs.
struct Routed {
    label: String,
    argv: Vec<String>,
    tests: Vec<String>,
}

/// The testbeds and their tests; the selected tests in control file order.
fn plan_routes(args: &RunArgs, registry: &Registry) -> Result<(Vec<Routed>, Vec<String>), String> {
    let source = args.source_tree()?;
    let config = Config::for_source(&source, registry).map_err(|e| e.to_string())?;
    let names = if args.on.is_empty() {
        let names: Vec<String> = config.names().iter().map(|n| n.to_string()).collect();
        if names.is_empty() {
            return Err(format!(
                "--testbed auto: no testbed in {} or ~/.config/dep8/config.toml",
                crate::config::PROJECT_FILE
            ));
        }
        names
    } else {
        args.on.clone()
    };
    let candidates = candidates(&config, &names, registry)?;
    let (entries, arch) = super::load(&source, None).map_err(|e| e.to_string())?;
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| e.name() == "*" || args.selects(e.name()))
        .collect();
    let order = order(&config);
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
) -> Result<Vec<Candidate>, String> {
    let mut candidates = Vec::new();
    for (label, mut argv) in config.labelled(names).map_err(|e| e.to_string())? {
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
pub fn explain_routes(source: &Path, on: &[String], registry: &Registry) -> Result<String, String> {
    let config = Config::for_source(source, registry).map_err(|e| e.to_string())?;
    let candidates = candidates(&config, on, registry)?;
    let (entries, arch) = super::load(source, None).map_err(|e| e.to_string())?;
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
    (routes, order): (Vec<Routed>, Vec<String>),
) -> Exit {
    let dirs: Vec<PathBuf> = (1..=routes.len())
        .map(|i| out.join(format!("testbed-{i}")))
        .collect();
    for (route, dir) in routes.iter().zip(&dirs) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return error(format!("{}: {e}", dir.display())).into();
        }
        say!(
            "dep8: on {} ({}): {}",
            route.label,
            dir.display(),
            route.tests.join(" ")
        );
    }
    let runs = routes.iter().zip(&dirs).map(|(route, dir)| {
        let sub = args.on_one(route.argv.clone(), route.tests.clone());
        async move { run_in(&sub, registry, dir, None).await }
    });
    let exits = futures_util::future::join_all(runs).await;
    let merged = match merge(&routes, &dirs, &order, out) {
        Ok(merged) => merged,
        Err(e) => return error(e).into(),
    };
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    if let Some(file) = args.summary_file() {
        if let Err(e) = std::fs::write(file, &summary) {
            return error(format!("{}: {e}", file.display())).into();
        }
    }
    // The results, as a run shows them (also with -q).
    crate::emit(summary);
    // A run stopped by a signal stops them all; else the merged results'.
    exits
        .into_iter()
        .find(|exit| matches!(exit, Exit::Signal(_)))
        .unwrap_or(Exit::Code(merged.exit_code.unwrap_or(EXIT_UNEXPECTED)))
}

/// Merges the testbeds' output dirs `dirs` into `out`: the tests in
/// `order`, each with its testbed; per-test files moved up.
fn merge(
    routes: &[Routed],
    dirs: &[PathBuf],
    order: &[String],
    out: &Path,
) -> Result<Report, String> {
    let suite = order.first().map_or("tests", |_| "routed");
    let labels: Vec<&str> = routes.iter().map(|r| r.label.as_str()).collect();
    let mut merged = Report::new(suite, &labels.join(" + "));
    merged.complete = true;
    let mut records = Vec::new();
    let mut notes = Vec::new();
    let mut log = String::new();
    let mut stopped = None;
    for (route, dir) in routes.iter().zip(dirs) {
        let report = Report::read(&dir.join("results.json"))?;
        merged.suite = report.suite.clone();
        if !report.complete {
            merged.complete = false;
            stopped = stopped.or(report.exit_code);
        }
        merged.signal = merged.signal.or(report.signal);
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
            route.tests.join(" ")
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
    let json = serde_json::to_string_pretty(&merged).map_err(|e| e.to_string())?;
    let text = |lines: Vec<String>| lines.into_iter().map(|l| l + "\n").collect::<String>();
    for (name, bytes) in [
        ("summary", text(summary)),
        ("results.json", json),
        ("junit.xml", merged.junit()),
        ("log", log),
    ] {
        std::fs::write(out.join(name), bytes)
            .map_err(|e| format!("{}: {e}", out.join(name).display()))?;
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
fn move_test_files(dir: &Path, out: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
        std::fs::rename(entry.path(), &target)
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
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
