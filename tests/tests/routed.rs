//! `dep8 run --on A --on B` on the host: a bad package is blamed as
//! without `--on` (exit 12, the same summary), a bad testbed is a usage
//! error (20), `-l` gets the merged log, a `.dsc` (or its `.changes`) is
//! unpacked once on the host and its tests routed, and SIGINT stops every
//! testbed's run and keeps the results (or, while the source is got on the
//! host, leaves nothing behind). A source that cannot be got leaves the
//! log, summary, results.json and junit.xml, as without `--on` and as
//! autopkgtest's summary. The unshare testbed given beside
//! null in the first tests runs nothing (null runs every test), so it
//! needs no tarball.

use dep8_tests::e2e::{
    autopkgtest_as_root, dep8_bin, interrupt_when, marked_processes, repo, required_program,
    result_states, source_tree, wait_for_the_killed, write,
};
use std::path::Path;
use std::process::{Command, Output};

/// An unshare testbed that is never opened: every test here goes to null.
const UNOPENED_UNSHARE: &str = "unshare --tarball /nonexistent.tar";

/// `dep8 run -B -o OUT ARGS...`.
fn run(out: &Path, args: &[&str]) -> Output {
    Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(out)
        .args(args)
        .output()
        .expect("running dep8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `SRC` run on null alone and routed across null and unshare end alike:
/// the same exit code, the same summary on stdout and in OUTPUT_DIR.
fn assert_routed_same_as_plain(dir: &Path, src: &str, code: i32, what: &str) {
    let (plain_dir, routed_dir) = (dir.join("plain"), dir.join("routed"));
    let plain = run(&plain_dir, &[src]);
    let routed = run(
        &routed_dir,
        &[src, "--on", "null", "--on", UNOPENED_UNSHARE],
    );
    assert_eq!(
        plain.status.code(),
        Some(code),
        "{what}: {}",
        stderr(&plain)
    );
    assert_eq!(
        routed.status.code(),
        Some(code),
        "{what}: {}",
        stderr(&routed)
    );
    assert_eq!(
        String::from_utf8_lossy(&routed.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "{what}"
    );
    assert_eq!(
        read(&routed_dir.join("summary")),
        read(&plain_dir.join("summary")),
        "{what}"
    );
}

#[test]
fn a_bad_package_is_blamed_as_without_on() {
    let cases = [
        (
            "a malformed debian/tests/control",
            "Test-Command: true\nDepends:\nNot a field\n",
            None,
        ),
        (
            "a malformed debian/control",
            "Test-Command: true\nDepends:\n",
            Some("Source: pkg\n\nPackage pkg\n"),
        ),
    ];
    for (what, control, debian_control) in cases {
        let dir = tempfile::tempdir().unwrap();
        let tree = source_tree(dir.path(), "pkg", control);
        if let Some(text) = debian_control {
            write(&tree.join("debian/control"), text);
        }
        assert_routed_same_as_plain(dir.path(), tree.to_str().unwrap(), 12, what);
        let summary = read(&dir.path().join("routed/summary"));
        assert!(summary.contains("FAIL badpkg"), "{what}: {summary}");
    }
    // No tests at all: exit 8, "no tests in this package", as on null alone.
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(dir.path(), "pkg", "");
    std::fs::remove_file(tree.join("debian/tests/control")).unwrap();
    assert_routed_same_as_plain(dir.path(), tree.to_str().unwrap(), 8, "no tests");
}

#[test]
fn an_unknown_testbed_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(dir.path(), "pkg", "Test-Command: true\nDepends:\n");
    let out = run(
        &dir.path().join("out"),
        &[
            tree.to_str().unwrap(),
            "--on",
            "null",
            "--on",
            "frobnicator",
        ],
    );
    assert_eq!(out.status.code(), Some(20), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dep8: error: unknown backend \"frobnicator\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn log_file_gets_the_merged_log() {
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(
        dir.path(),
        "pkg",
        "Test-Command: echo said-by-the-test\nDepends:\nFeatures: test-name=says\n",
    );
    let (out, log) = (dir.path().join("out"), dir.path().join("the.log"));
    let run = run(
        &out,
        &[
            tree.to_str().unwrap(),
            "--on",
            "null",
            "--on",
            UNOPENED_UNSHARE,
            "-l",
            log.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let log = read(&log);
    assert!(log.contains("dep8: testbed null (null): says\n"), "{log}");
    assert!(log.contains("said-by-the-test"), "{log}");
    // As without --on: the log is there instead of OUTPUT_DIR/log.
    assert!(!out.join("log").exists());
    assert_eq!(read(&out.join("summary")), "says                 PASS\n");
}

#[test]
fn a_dsc_or_changes_is_unpacked_on_the_host_and_routed() {
    if required_program("dpkg-source", "dpkg-dev").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("hello-1.0");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(repo().join("examples/hello"))
        .arg(&tree)
        .status()
        .unwrap();
    assert!(copied.success());
    let built = Command::new("dpkg-source")
        .current_dir(dir.path())
        .args(["-b", "hello-1.0"])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    let changes = dir.path().join("dep8-hello_1.0_source.changes");
    let generated = Command::new("dpkg-genchanges")
        .current_dir(&tree)
        .arg("-S")
        .arg(format!("-O{}", changes.display()))
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", stderr(&generated));
    std::fs::remove_dir_all(&tree).unwrap();
    let dsc = dir.path().join("dep8-hello_1.0.dsc");
    assert_routed_same_as_plain(dir.path(), dsc.to_str().unwrap(), 0, "a .dsc");
    let log = read(&dir.path().join("routed/log"));
    assert!(
        log.starts_with(&format!("dep8: on the host: unpacking {}\n", dsc.display())),
        "{log}"
    );
    assert!(
        log.contains("dep8: testbed null (null): greets command1\n"),
        "{log}"
    );
    // Its .changes (the .dsc, no .deb) is routed alike, on a testbed named
    // in the current directory's dep8.toml (a fetched source has none).
    write(
        &dir.path().join("dep8.toml"),
        "[testbed.host]\nbackend = \"null\"\n",
    );
    let routed = Command::new(dep8_bin())
        .current_dir(dir.path())
        .args(["run", "-B", "-o", "changes"])
        .arg(&changes)
        .args(["--on", "host"])
        .output()
        .expect("running dep8");
    assert_eq!(routed.status.code(), Some(0), "{}", stderr(&routed));
    assert_eq!(
        read(&dir.path().join("changes/summary")),
        read(&dir.path().join("plain/summary"))
    );
    let log = read(&dir.path().join("changes/log"));
    assert!(log.contains("dep8: testbed host (null): "), "{log}");
}

/// The kind of each non-empty line of a summary: its words before `: `
/// (`blame`, `badpkg`, `erroneous package`).
fn line_kinds(summary: &str) -> Vec<&str> {
    summary
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once(": ").map_or(l, |(kind, _)| kind))
        .collect()
}

/// Whether the host's apt has deb-src entries (`apt-get source` needs them).
fn host_has_deb_src() -> bool {
    let showsrc = Command::new("apt-cache")
        .args(["showsrc", "dpkg"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !showsrc {
        eprintln!("SKIP: the host's apt has no deb-src entries");
    }
    showsrc
}

/// A source that cannot be got (an unknown source package name, a `.dsc`
/// whose tarball is missing, a git URL that cannot be cloned) is an
/// erroneous package (12) with and without `--on`; both leave the log with
/// the reason, autopkgtest's summary lines (`blame:`, `badpkg:`,
/// `erroneous package:`), results.json (incomplete, with the error and the
/// blame, no test) and junit.xml. autopkgtest on null writes the same
/// summary lines for the name and the git URL, and exits 12 too.
#[test]
fn a_source_that_cannot_be_got_leaves_the_run_files() {
    if required_program("dpkg-source", "dpkg-dev").is_none()
        || required_program("git", "git").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(
        dir.path(),
        "dep8-unfetched",
        "Test-Command: true\nDepends:\n",
    );
    let built = Command::new("dpkg-source")
        .current_dir(dir.path())
        .args(["-b", "dep8-unfetched"])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    std::fs::remove_file(dir.path().join("dep8-unfetched_1.0.tar.xz")).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    let dsc = dir.path().join("dep8-unfetched_1.0.dsc");
    let deb_src = host_has_deb_src();
    let mut cases = vec![
        ("dsc", dsc.to_str().unwrap(), "lists files that are missing"),
        (
            "git",
            "file:///nonexistent/repo",
            "git clone file:///nonexistent/repo failed",
        ),
    ];
    if deb_src {
        cases.push((
            "name",
            "dep8-no-such-source",
            "Unable to find a source package for dep8-no-such-source",
        ));
    }
    for (label, src, reason) in &cases {
        let case = dir.path().join(label);
        assert_routed_same_as_plain(&case, src, 12, src);
        for out in [case.join("plain"), case.join("routed")] {
            let summary = read(&out.join("summary"));
            assert_eq!(
                line_kinds(&summary),
                ["blame", "badpkg", "erroneous package"],
                "{src}: {summary}"
            );
            let last = summary.lines().last().unwrap();
            assert!(last.contains(reason), "{src}: {summary}");
            assert!(summary.starts_with(&format!("blame: {src}\n")), "{summary}");
            assert!(
                read(&out.join("log")).contains(last),
                "{src}: no reason in the log"
            );
            let results: serde_json::Value =
                serde_json::from_str(&read(&out.join("results.json"))).unwrap();
            assert_eq!(results["complete"], false, "{src}: {results}");
            assert_eq!(results["exit_code"], 12, "{src}: {results}");
            assert_eq!(results["error"], last, "{src}: {results}");
            assert_eq!(
                results["blame"],
                serde_json::json!([src]),
                "{src}: {results}"
            );
            assert_eq!(results["tests"], serde_json::json!([]), "{src}: {results}");
            let junit = read(&out.join("junit.xml"));
            assert!(junit.contains("<system-err>erroneous package: "), "{junit}");
        }
        let routed_log = read(&case.join("routed/log"));
        assert!(
            routed_log.starts_with("dep8: on the host: "),
            "{routed_log}"
        );
    }

    let Some(autopkgtest) = autopkgtest_as_root() else {
        return;
    };
    // On the .dsc autopkgtest dies of a traceback, with 16 (see inputs.rs).
    for (label, src, _) in cases.iter().filter(|(label, ..)| *label != "dsc") {
        let theirs = dir.path().join(label).join("autopkgtest");
        let status = Command::new(&autopkgtest)
            .arg("-o")
            .arg(&theirs)
            .args([src, "--", "null"])
            .output()
            .unwrap()
            .status;
        assert_eq!(status.code(), Some(12), "{src}");
        assert_eq!(
            line_kinds(&read(&theirs.join("summary"))),
            line_kinds(&read(&dir.path().join(label).join("plain/summary"))),
            "{src}"
        );
    }
}

/// What a test leaves running is found on the host by this argv[0].
const MARKER: &str = "dep8-routed-marker";

/// The testbed that can revert, beside null: unshare when a rootfs tarball
/// is at hand (`DEP8_TEST_ROOTFS`, as root), else the host again, claiming
/// to revert (the test is interrupted before it would).
fn reverting_testbed() -> String {
    match std::env::var("DEP8_TEST_ROOTFS") {
        Ok(tarball) if !tarball.is_empty() && nix::unistd::geteuid().is_root() => {
            format!("unshare --tarball {tarball}")
        }
        _ => "null --fake-capability revert-full-system".to_string(),
    }
}

/// SIGINT while a test runs on each of two testbeds: dep8 dies by it, no
/// test process is left, and results.json names each test's fate in the
/// control file's order (the running ones interrupted, the others not run).
#[test]
fn sigint_during_a_routed_run_stops_every_testbed_and_keeps_the_results() {
    let reverting = reverting_testbed();
    let dir = tempfile::tempdir().unwrap();
    let sleeper = |name: &str, restrictions: &str| {
        format!(
            "Test-Command: exec -a {MARKER} sleep 300\nDepends:\nFeatures: test-name={name}\n\
             Restrictions: {restrictions}\n\n"
        )
    };
    let control = sleeper("plain-1", "allow-stderr")
        + &sleeper("breaks-1", "breaks-testbed")
        + &sleeper("plain-2", "allow-stderr")
        + &sleeper("breaks-2", "breaks-testbed");
    let src = source_tree(dir.path(), "sleepers", &control);
    let out = dir.path().join("out");
    let mut dep8 = Command::new(dep8_bin());
    dep8.args(["run", "-B", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["--on", "null", "--on", &reverting]);
    interrupt_when(
        dep8,
        || marked_processes(MARKER) >= 2,
        "a test on each testbed",
    );
    wait_for_the_killed(|| marked_processes(MARKER) > 0);
    assert_eq!(
        marked_processes(MARKER),
        0,
        "a test's process outlived dep8"
    );

    let results: serde_json::Value =
        serde_json::from_str(&read(&out.join("results.json"))).unwrap();
    assert_eq!(results["complete"], false);
    let states = result_states(&out);
    let states: Vec<(&str, &str)> = states
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("plain-1", "INTERRUPTED"),
            ("breaks-1", "INTERRUPTED"),
            ("plain-2", "NOT_RUN"),
            ("breaks-2", "NOT_RUN"),
        ]
    );
    let log = read(&out.join("log"));
    assert!(
        log.contains("dep8: testbed null (null): plain-1 plain-2\n"),
        "{log}"
    );
    assert!(log.contains(": breaks-1 breaks-2\n"), "{log}");
}

/// The command lines of the processes whose working directory is under
/// `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let proc = e.ok()?.path();
            let cwd = std::fs::read_link(proc.join("cwd")).ok()?;
            let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
            cwd.starts_with(dir)
                .then(|| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect()
}

/// SIGINT while the source is got on the host (a git clone that fails,
/// then waits 15 s to retry): dep8 dies by it, and leaves no process nor
/// temp dir behind.
#[test]
fn sigint_while_the_source_is_got_on_the_host_leaves_nothing() {
    if required_program("git", "git").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut dep8 = Command::new(dep8_bin());
    dep8.env("TMPDIR", &tmp)
        .args(["run", "-B", "-o"])
        .arg(dir.path().join("out"))
        .args(["file:///nonexistent/repo", "--on", "null"]);
    let ready = || !processes_in(&tmp).is_empty();
    let err = interrupt_when(dep8, ready, "a process in TMPDIR");
    assert!(err.contains("interrupted by signal 2"), "{err}");
    wait_for_the_killed(|| !processes_in(&tmp).is_empty());
    assert_eq!(processes_in(&tmp), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
