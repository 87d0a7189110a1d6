//! dep8 as the `autopkgtest` that Debian's real callers run, unchanged:
//! debci 3.6 (`debci localtest` on null and schroot, and `debci worker`
//! fed by a RabbitMQ broker), Debusine 0.11's autopkgtest task and
//! sbuild 0.89's `--run-autopkgtest`. debci and Debusine run once with
//! dep8 and once with Debian's autopkgtest 5.49 as their `autopkgtest` (a
//! symlink first in PATH), and what the caller makes of the run must be
//! the same; sbuild's log must say what it says with Debian's.
//!
//! On null both implementations install test dependencies on the host
//! with dpkg: those runs take [`HOST`] and go one at a time, dep8 first, so
//! that dep8 cannot lean on a package autopkgtest installed, and hello
//! (what bookworm's hello test installs) is removed from the host before
//! each of them.

use dep8_tests::callers::{
    debci_chroot_definition, debusine_cmdline, debusine_verdict, output_within, Autopkgtest,
    AutopkgtestOnPath, Background, DebciResult, Rabbitmq, DEBCI_CHROOT, DEBCI_CHROOT_SETUP,
};
use dep8_tests::e2e::{check, repo, required_program, source_tree, write};
use dep8_tests::required_resource;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The host's dpkg, taken by every run on null.
static HOST: Mutex<()> = Mutex::new(());

fn host() -> MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What bookworm's hello test installs on null: removed from the host
/// before each run there, so that each implementation must install it.
const HELLO_ON_THE_HOST: &str = "hello";

/// Removes `package` from the host (under [`HOST`]).
fn remove_from_host(package: &str) {
    let status = Command::new("dpkg")
        .args(["--purge", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("dpkg");
    assert!(status.success(), "dpkg --purge {package} failed");
}

/// The longest one caller's run of one package may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Whether these tests can run here: as root (the callers' testbeds and
/// debci's null runs need it) with `programs` installed.
fn can_run(programs: &[(&str, &str)]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the callers run as root only");
        return false;
    }
    programs
        .iter()
        .all(|(program, package)| required_program(program, package).is_some())
}

/// Runs `f` on every item on at most `threads` threads; returns the
/// results in the items' order.
fn parallel<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0..items.len());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| loop {
                let Some(i) = next.lock().unwrap().next() else {
                    break;
                };
                let r = f(&items[i]);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The last lines of a program's output, for messages.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Fails with every mismatch at once, so that one run shows them all.
fn assert_no_mismatches(what: &str, mismatches: Vec<String>, took: Duration) {
    eprintln!("{what}: {:.0?}", took);
    assert!(
        mismatches.is_empty(),
        "{what}: {} mismatch(es):\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}

// ---- debci ----

const DEBCI: [(&str, &str); 2] = [("debci", "debci"), ("autopkgtest", "autopkgtest")];

/// One package debci tests, and the status Debian's autopkgtest gets.
struct DebciCase {
    /// A bookworm source package name, or a source tree's path.
    package: String,
    /// Extra autopkgtest arguments from debci's config
    /// (`debci_autopkgtest_args`).
    autopkgtest_args: String,
    expect: &'static str,
}

impl DebciCase {
    fn new(package: &str, expect: &'static str) -> Self {
        DebciCase {
            package: package.to_string(),
            autopkgtest_args: String::new(),
            expect,
        }
    }

    fn with_args(self, autopkgtest_args: &str) -> Self {
        DebciCase {
            autopkgtest_args: autopkgtest_args.to_string(),
            ..self
        }
    }
}

/// A source tree with one test that passes and one that fails.
fn failing_tree(dir: &Path) -> String {
    let tree = source_tree(
        dir,
        "dep8-debci-fails",
        "Test-Command: true\nDepends:\n\nTest-Command: false\nDepends:\n",
    );
    tree.to_str().expect("utf-8 path").to_string()
}

/// A debci config dir (what `debci_config_dir` names): its debci.conf
/// gives autopkgtest `autopkgtest_args`.
fn debci_config(dir: &Path, autopkgtest_args: &str) -> PathBuf {
    let config = dir.join("debci-config");
    write(
        &config.join("debci.conf"),
        &format!("debci_autopkgtest_args=\"{autopkgtest_args}\"\n"),
    );
    config
}

/// `debci localtest -s bookworm -b BACKEND PACKAGE` with `on`'s autopkgtest;
/// returns what debci reads from the output dir and debci's output.
fn localtest(on: &AutopkgtestOnPath, backend: &str, case: &DebciCase) -> (DebciResult, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let mut command = on.command("debci");
    command
        .env(
            "debci_config_dir",
            debci_config(dir.path(), &case.autopkgtest_args),
        )
        .args(["localtest", "-s", "bookworm", "-b", backend, "-d"])
        .arg(&data)
        .arg(&case.package);
    let out = output_within(command, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // debci-localtest makes the output dir with mktemp and names it last.
    let Some(artifacts) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("I: test artifacts available at "))
    else {
        panic!("debci localtest named no output dir:\n{output}");
    };
    let result = DebciResult::read(Path::new(artifacts), false);
    let _ = std::fs::remove_dir_all(artifacts);
    assert_eq!(
        out.status.code().map(|c| c.to_string()),
        Some(result.exitcode.clone()),
        "debci localtest's exit status is autopkgtest's"
    );
    (result, output)
}

/// Runs `case` with dep8 and then with Debian's autopkgtest through `run`;
/// returns the mismatch, if any.
fn compare_debci(
    case: &DebciCase,
    run: impl Fn(&AutopkgtestOnPath, &DebciCase) -> (DebciResult, String),
) -> Option<String> {
    let (ours, our_output) = run(&AutopkgtestOnPath::new(Autopkgtest::Dep8), case);
    let (theirs, their_output) = run(&AutopkgtestOnPath::new(Autopkgtest::Debian), case);
    if theirs.status != case.expect {
        Some(format!(
            "{}: Debian's autopkgtest gave {:?}, where this test expects {}: the case \
             no longer tests what it should\n--- its output ends:\n{}",
            case.package,
            theirs,
            case.expect,
            tail(&their_output)
        ))
    } else if ours != theirs {
        Some(format!(
            "{} ({}): debci read\n  with dep8:        {ours:?}\n  with autopkgtest: {theirs:?}\n\
             --- with dep8, debci's output ends:\n{}",
            case.package,
            case.autopkgtest_args,
            tail(&our_output)
        ))
    } else {
        None
    }
}

/// `debci localtest` on null: bookworm's hello passes (its test installs
/// hello), hostname has no tests (neutral), a source that does not exist
/// fails, a tree with a failing test fails, and failing setup commands
/// are a testbed failure (tmpfail).
#[test]
fn debci_localtest_on_null() {
    if !can_run(&DEBCI) {
        return;
    }
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        DebciCase::new("hello", "pass"),
        DebciCase::new("hostname", "neutral"),
        DebciCase::new("dep8-no-such-source", "fail"),
        DebciCase::new(&failing_tree(dir.path()), "fail"),
        DebciCase::new("hostname", "tmpfail").with_args("--setup-commands=false"),
    ];
    let _host = host();
    let mismatches = cases
        .iter()
        .filter_map(|case| {
            compare_debci(case, |on, case| {
                remove_from_host(HELLO_ON_THE_HOST);
                localtest(on, "null", case)
            })
        })
        .collect();
    assert_no_mismatches("debci localtest on null", mismatches, start.elapsed());
}

/// debci's schroot backend opens `schroot --session-id=ID debci-SUITE-ARCH`:
/// the test chroot under that name, removed when dropped.
struct DebciChroot(PathBuf);

impl DebciChroot {
    /// The first line of the definitions this test writes.
    const MARK: &'static str = "# dep8's tests/tests/callers.rs: removed after the test\n";

    /// The definition of `chroot` (DEP8_TEST_SCHROOT) under debci's name;
    /// one of debci's own is never replaced.
    fn over(chroot: &str) -> Self {
        let path = Path::new("/etc/schroot/chroot.d").join(DEBCI_CHROOT);
        if let Ok(existing) = std::fs::read_to_string(&path) {
            assert!(
                existing.starts_with(Self::MARK),
                "{} exists and is not this test's: debci has a chroot of that name here",
                path.display()
            );
        }
        let body = Self::MARK.to_string() + &debci_chroot_definition(chroot);
        let draft = Path::new("/etc/schroot").join(format!(".{DEBCI_CHROOT}.draft"));
        std::fs::write(&draft, body).expect("write chroot definition");
        std::fs::rename(&draft, &path).expect("install chroot definition");
        DebciChroot(path)
    }
}

impl Drop for DebciChroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `debci localtest` on schroot (the test chroot under debci's name):
/// hello passes, hostname is neutral, failing setup commands are tmpfail.
/// The packages run at once; dep8 and autopkgtest one after the other on
/// each (debci names the session after the package).
#[test]
fn debci_localtest_on_schroot() {
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot") else {
        return;
    };
    if !can_run(&[DEBCI[0], DEBCI[1], ("schroot", "schroot")]) {
        return;
    }
    let start = Instant::now();
    let _chroot = DebciChroot::over(&chroot);
    let dir = tempfile::tempdir().expect("temp dir");
    let setup = dir.path().join("debci-chroot-setup");
    write(&setup, DEBCI_CHROOT_SETUP);
    let setup_args = format!("--setup-commands={}", setup.display());
    let failing_args = format!("{setup_args} --setup-commands=false");
    let cases = [
        DebciCase::new("hello", "pass").with_args(&setup_args),
        DebciCase::new("hostname", "neutral").with_args(&setup_args),
        DebciCase::new("sed", "tmpfail").with_args(&failing_args),
    ];
    let mismatches = parallel(&cases, 3, |case| {
        compare_debci(case, |on, case| localtest(on, "schroot", case))
    });
    assert_no_mismatches(
        "debci localtest on schroot",
        mismatches.into_iter().flatten().collect(),
        start.elapsed(),
    );
}

/// debci's queue of test jobs for amd64 on null.
const JOB_QUEUE: &str = "debci-tests-amd64-null";
/// The queue debci's workers publish results to (`debci_amqp_results_queue`).
const RESULTS_QUEUE: &str = "debci_results";

/// What one `debci worker` reported for one package.
struct WorkerResult {
    /// The status the worker logged.
    status: Option<String>,
    /// What debci reads from the result tarball the worker published.
    read: Option<DebciResult>,
    /// The end of the tarball's log.gz, for messages.
    log_tail: String,
}

impl WorkerResult {
    fn same_as(&self, other: &WorkerResult) -> bool {
        (&self.status, &self.read) == (&other.status, &other.read)
    }
}

/// What one `debci worker` reported for each package.
fn worker_results(
    broker: &Rabbitmq,
    on: &AutopkgtestOnPath,
    packages: &[&str],
) -> Vec<WorkerResult> {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let mut command = on.command("debci");
    command
        .env("debci_amqp_server", &broker.url)
        .args(["worker", "-s", "bookworm", "-b", "null", "-d"])
        .arg(&data);
    let worker = Background::start(command, &dir.path().join("worker.log"));
    broker.await_queue(JOB_QUEUE, Duration::from_secs(120));
    for package in packages {
        broker.publish(JOB_QUEUE, &format!("{package} bookworm"));
    }
    let messages = dir.path().join("messages");
    std::fs::create_dir(&messages).expect("messages dir");
    let tarballs = broker.consume(
        RESULTS_QUEUE,
        packages.len(),
        &messages,
        RUN_LIMIT * packages.len() as u32,
    );
    let log = worker.stop(Duration::from_secs(10));
    // Each tarball holds autopkgtest-incoming/SUITE/ARCH/P/PACKAGE/RUN_ID/.
    let unpacked = dir.path().join("results");
    std::fs::create_dir(&unpacked).expect("results dir");
    for tarball in &tarballs {
        let tarball = tarball.to_str().expect("utf-8 path");
        check("tar", &["-xzf", tarball], &unpacked);
    }
    let incoming = unpacked.join("autopkgtest-incoming/bookworm/amd64");
    packages
        .iter()
        .map(|package| {
            // The last word of `PACKAGE SUITE/ARCH/BACKEND STATUS`.
            let status = log.lines().rev().find_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                (words.len() == 3
                    && words[0] == *package
                    && words[1] == "bookworm/amd64/null"
                    && words[2] != "started")
                    .then(|| words[2].to_string())
            });
            let prefix = &package[..1];
            let runs = incoming.join(prefix).join(package);
            let run = std::fs::read_dir(&runs)
                .ok()
                .and_then(|mut runs| runs.next())
                .map(|run| run.expect("dir entry").path());
            let log_tail = run
                .as_ref()
                .map_or(String::new(), |run| tail(&check("zcat", &["log.gz"], run)));
            WorkerResult {
                status,
                read: run.map(|run| DebciResult::read(&run, true)),
                log_tail,
            }
        })
        .collect()
}

/// `debci worker` on null, fed by a RabbitMQ broker of the test's own:
/// a job per package published to debci's queue, each result tarball read
/// back from `debci_results`. For hello (pass), hostname (neutral) and a
/// source that does not exist (fail), the status the worker reports and
/// what debci reads from the tarball (exitcode, duration, testpkg-version,
/// log.gz) are the same with dep8 and with Debian's autopkgtest.
#[test]
fn debci_worker_over_rabbitmq() {
    if !can_run(&[
        DEBCI[0],
        DEBCI[1],
        ("rabbitmq-server", "rabbitmq-server"),
        ("amqp-publish", "amqp-tools"),
    ]) {
        return;
    }
    let start = Instant::now();
    let broker = Rabbitmq::start();
    eprintln!(
        "rabbitmq-server took connections after {:.0?}",
        start.elapsed()
    );
    let cases = [
        ("hello", "pass"),
        ("hostname", "neutral"),
        ("dep8-no-such-source", "fail"),
    ];
    let packages: Vec<&str> = cases.iter().map(|(package, _)| *package).collect();
    let _host = host();
    let mut results = Vec::new();
    for which in [Autopkgtest::Dep8, Autopkgtest::Debian] {
        remove_from_host(HELLO_ON_THE_HOST);
        results.push(worker_results(
            &broker,
            &AutopkgtestOnPath::new(which),
            &packages,
        ));
    }
    let mut mismatches = Vec::new();
    for (i, (package, expect)) in cases.iter().enumerate() {
        let (ours, theirs) = (&results[0][i], &results[1][i]);
        let their_status = theirs.read.as_ref().map(|r| r.status.as_str());
        if theirs.status.as_deref() != Some(expect) || their_status != Some(expect) {
            mismatches.push(format!(
                "{package}: with Debian's autopkgtest the worker gave {:?} {:?}, \
                 where this test expects {expect}\n--- its log ends:\n{}",
                theirs.status, theirs.read, theirs.log_tail
            ));
        } else if !ours.same_as(theirs) {
            mismatches.push(format!(
                "{package}: the worker's status and what debci read\n  \
                 with dep8:        {:?} {:?}\n  with autopkgtest: {:?} {:?}\n\
                 --- with dep8, the log ends:\n{}",
                ours.status, ours.read, theirs.status, theirs.read, ours.log_tail
            ));
        }
    }
    assert_no_mismatches("debci worker over RabbitMQ", mismatches, start.elapsed());
}

// ---- Debusine ----

/// One run of Debusine's autopkgtest task.
struct DebusineCase {
    name: String,
    dsc: PathBuf,
    /// The executor's image (a missing one is a testbed failure).
    tarball: String,
    /// Also run with Debian's autopkgtest and compared.
    compare: bool,
}

/// `dpkg-source -b` of the tree `tree`, in a dir of its own under `dir`;
/// returns the .dsc.
fn dsc_of(tree: &Path, dir: &Path) -> PathBuf {
    let name = tree.file_name().expect("tree name");
    let build = dir.join(name);
    std::fs::create_dir_all(&build).expect("build dir");
    let copy = build.join(name);
    let (tree, copy_arg) = (tree.to_str().expect("utf-8"), copy.to_str().expect("utf-8"));
    check("cp", &["-a", tree, copy_arg], &build);
    check("dpkg-source", &["-b", copy_arg], &build);
    std::fs::read_dir(&build)
        .expect("build dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "dsc"))
        .unwrap_or_else(|| panic!("dpkg-source -b {tree} made no .dsc"))
}

/// Runs Debusine's command line for `case` with `on`'s autopkgtest in a
/// fresh execute directory, as Debusine's worker does; returns what the
/// task makes of it, and the run's exit status and log for messages.
fn debusine_run(on: &AutopkgtestOnPath, case: &DebusineCase) -> (Result<String, String>, String) {
    let cmdline = debusine_cmdline(&case.dsc, &case.tarball);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = on.command(&cmdline[0]);
    command.args(&cmdline[1..]).current_dir(dir.path());
    let out = output_within(command, RUN_LIMIT);
    let output = format!(
        "{}\n{}{}",
        cmdline.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(code) = out.status.code() else {
        return (Err(format!("killed: {:?}", out.status)), output);
    };
    let verdict =
        debusine_verdict(dir.path(), code).map(|v| format!("exit {code}, Debusine's verdict {v}"));
    (verdict, output)
}

/// Debusine 0.11's autopkgtest task: the command line its `_cmdline()`
/// builds (the real method of the installed python3-debusine, called on a
/// task made from its task data, with the real `UnshareExecutor`) runs
/// unchanged with dep8 as `autopkgtest` on unshare, for every example
/// package (but examples/broken: `dpkg-source -b` refuses its control
/// file, so no Debusine artifact can hold it), a package whose test
/// cannot be installed, and an executor
/// image that is not there (a testbed failure). Debusine's
/// `_parse_summary_file` must accept every summary dep8 writes; for
/// examples/hello, the bad package and the testbed failure, the exit
/// status and what the task makes of the run (each test's status and
/// details, success) are the same as with Debian's autopkgtest.
#[test]
fn debusine_autopkgtest_task_on_unshare() {
    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") else {
        return;
    };
    if !can_run(&[
        ("autopkgtest", "autopkgtest"),
        ("dpkg-source", "dpkg-dev"),
        ("/usr/bin/python3", "python3-debusine"),
    ]) {
        return;
    }
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut trees: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("examples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("debian/control").exists() && !p.ends_with("examples/broken"))
        .collect();
    trees.sort();
    let fixtures = dir.path().join("fixtures");
    trees.push(source_tree(
        &fixtures,
        "dep8-debusine-badpkg",
        "Test-Command: true\nDepends: dep8-no-such-package\n",
    ));
    let hello = repo().join("examples/hello");
    let mut plans: Vec<(&Path, &str, bool)> = trees
        .iter()
        .map(|tree| {
            let compare = tree.ends_with("examples/hello") || tree.starts_with(&fixtures);
            (tree.as_path(), tarball.as_str(), compare)
        })
        .collect();
    plans.push((&hello, "/nonexistent/dep8-rootfs.tar", true));
    let cases: Vec<DebusineCase> = plans
        .iter()
        .enumerate()
        .map(|(i, (tree, tarball, compare))| {
            let name = tree.file_name().unwrap().to_string_lossy();
            DebusineCase {
                name: format!("{name} on {tarball}"),
                dsc: dsc_of(tree, &dir.path().join(i.to_string())),
                tarball: tarball.to_string(),
                compare: *compare,
            }
        })
        .collect();
    // Each case with dep8, and the compared ones with autopkgtest too.
    let runs: Vec<(&DebusineCase, Autopkgtest)> = cases
        .iter()
        .flat_map(|case| {
            let debian = case.compare.then_some((case, Autopkgtest::Debian));
            std::iter::once((case, Autopkgtest::Dep8)).chain(debian)
        })
        .collect();
    let results = parallel(&runs, 4, |(case, which)| {
        debusine_run(&AutopkgtestOnPath::new(*which), case)
    });
    let mut mismatches = Vec::new();
    for (i, ((case, which), (verdict, output))) in runs.iter().zip(&results).enumerate() {
        if *which == Autopkgtest::Debian {
            let ours = &results[i - 1].0;
            if ours != verdict {
                mismatches.push(format!(
                    "{}: with dep8: {ours:?}\n  with autopkgtest: {verdict:?}",
                    case.name
                ));
            }
        } else if let Err(e) = verdict {
            mismatches.push(format!(
                "{}: Debusine refused dep8's run: {e}\n--- dep8's output ends:\n{}",
                case.name,
                tail(output)
            ));
        }
    }
    assert_no_mismatches("Debusine's autopkgtest task", mismatches, start.elapsed());
}

// ---- sbuild ----

/// sbuild 0.89's `--run-autopkgtest` in unshare mode, with dep8 as the
/// `autopkgtest` it runs (`$autopkgtest` in the file SBUILD_CONFIG names):
/// sbuild builds examples/hello's .dsc in a chroot from its bookworm
/// tarball, then runs `autopkgtest DSC CHANGES -- unshare --release
/// bookworm --arch amd64`, its default options in unshare mode, which name
/// no tarball: the testbed comes from the same `$XDG_CACHE_HOME/sbuild/`
/// tarball. The build log's summary must say "Autopkgtest: pass", as it
/// does with Debian's autopkgtest (not run here: it takes six minutes
/// there, two of them to unpack the tarball for each testbed).
#[test]
fn sbuild_run_autopkgtest_on_unshare() {
    let Some(tarball) = required_resource(
        "DEP8_TEST_SBUILD_TARBALL",
        "sbuild's bookworm tarball (mmdebstrap --variant=buildd)",
    ) else {
        return;
    };
    if !can_run(&[("sbuild", "sbuild"), ("dpkg-source", "dpkg-dev")]) {
        return;
    }
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("sbuild")).expect("cache dir");
    std::os::unix::fs::symlink(&tarball, cache.join("sbuild/bookworm-amd64.tar.zst"))
        .expect("tarball symlink");
    let dsc = dsc_of(&repo().join("examples/hello"), &dir.path().join("build"));
    let build = dsc.parent().expect("build dir");
    let on = AutopkgtestOnPath::new(Autopkgtest::Dep8);
    let config = dir.path().join("sbuild.conf");
    write(
        &config,
        &format!("$autopkgtest = '{}';\n1;\n", on.program().display()),
    );
    let mut command = on.command("sbuild");
    command
        .current_dir(build)
        .env("XDG_CACHE_HOME", &cache)
        .env("SBUILD_CONFIG", &config)
        // Not what this checks, and slow.
        .args([
            "--chroot-mode=unshare",
            "-d",
            "bookworm",
            "--run-autopkgtest",
            "--no-run-lintian",
        ])
        .arg(&dsc);
    let out = output_within(command, Duration::from_secs(900));
    let log =
        std::fs::read_to_string(build.join("dep8-hello_1.0_amd64.build")).unwrap_or_else(|e| {
            panic!(
                "sbuild wrote no build log ({e}):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("sbuild --run-autopkgtest: {:.0?}", start.elapsed());
    // The autopkgtest run is logged between these two headings.
    let autopkgtest_part = log
        .split_once("| Post Build")
        .and_then(|(_, rest)| rest.split_once("| Cleanup"))
        .map_or(log.as_str(), |(part, _)| part);
    let summary = log.rsplit_once("| Summary").map_or("", |(_, s)| s);
    assert!(
        summary.lines().any(|l| l == "Autopkgtest: pass"),
        "sbuild's summary does not say \"Autopkgtest: pass\":{summary}\n\
         --- the autopkgtest part of the build log:{autopkgtest_part}"
    );
}
