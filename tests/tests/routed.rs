//! `dep8 run --on A --on B` on the host: a bad package is blamed as
//! without `--on` (exit 12, the same summary), a bad testbed is a usage
//! error (20), `-l` gets the merged log, and a `.dsc` is unpacked once on
//! the host and its tests routed. The unshare testbed given beside null
//! runs nothing here (null runs every test), so it needs no tarball.

use dep8_tests::e2e::{dep8_bin, repo, required_program, source_tree, write};
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
fn a_dsc_is_unpacked_on_the_host_and_routed() {
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
}
