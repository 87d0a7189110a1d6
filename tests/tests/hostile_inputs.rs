//! A property test: hostile test names, test directories, `--env` values
//! and Depends go through `dep8 run` without reaching a shell unquoted.
//!
//! The strings are made of quotes, `$(...)`, backticks, `;`, `&&`, globs,
//! newlines and spaces. The injected commands `touch $DEP8_CANARY`: on null,
//! where dep8's own shell steps inherit its environment, a canary file
//! appears if any of them runs. Anywhere else an injection still shows: a
//! quote left open is a syntax error (a testbed failure, exit 16), and a
//! `touch` without its variable fails the step or writes to the test's
//! stderr (a FAIL). So every test must PASS, print exactly the value it was
//! given, and the canary must not exist. On unshare (`DEP8_TEST_ROOTFS`,
//! as root) a few cases run as well.

use dep8_tests::e2e::{dep8_bin, source_tree, unshare_rootfs_as_root, write};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Pieces of hostile strings that fit in a control file field: no
/// whitespace, `,` (they split names), `#` (a comment) or `/`.
const PIECES: &[&str] = &[
    "'",
    "\"",
    "$(touch${IFS}$DEP8_CANARY)",
    "`touch${IFS}$DEP8_CANARY`",
    "';touch${IFS}$DEP8_CANARY;'",
    "\";touch${IFS}$DEP8_CANARY;\"",
    ";",
    "&&",
    "|",
    "$",
    "\\",
    "*",
    "?",
    "~",
    "!",
    "<",
    ">",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "=",
    "%",
    "-",
    ":",
    "é",
    "a",
    "b",
    "1",
];

/// More pieces for values that never pass through the control file.
const VALUE_PIECES: &[&str] = &[
    " ",
    "\n",
    "\t",
    "/",
    "$(touch $DEP8_CANARY)",
    "`touch $DEP8_CANARY`",
    "'; touch $DEP8_CANARY; '",
    "\n touch $DEP8_CANARY\n",
    "#",
    ",",
];

fn piece() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(PIECES)
}

/// A hostile word for a control file: a name or a directory.
fn word() -> impl Strategy<Value = String> {
    proptest::collection::vec(piece(), 1..6)
        .prop_map(|p| p.concat())
        .prop_filter("not a dir of its own", |w| w != "." && w != "..")
}

/// A hostile `--env` value.
fn value() -> impl Strategy<Value = String> {
    let any = proptest::sample::select([PIECES, VALUE_PIECES].concat());
    proptest::collection::vec(any, 0..8).prop_map(|p| p.concat())
}

/// A suite: hostile test names (some scripts in a hostile Tests-Directory,
/// some Test-Commands named with `test-name=`) and an `--env` value.
#[derive(Debug, Clone)]
struct Suite {
    names: Vec<String>,
    dir: String,
    value: String,
}

fn suite() -> impl Strategy<Value = Suite> {
    (
        proptest::collection::btree_set(word(), 1..4),
        word(),
        value(),
    )
        .prop_map(|(names, dir, value)| Suite {
            names: names.into_iter().collect(),
            dir,
            value,
        })
}

/// What a dep8 run showed.
struct Ran {
    code: Option<i32>,
    stderr: String,
    out: tempfile::TempDir,
    canary: std::path::PathBuf,
}

impl Ran {
    fn said(&self) -> String {
        let summary =
            std::fs::read_to_string(self.out.path().join("out/summary")).unwrap_or_default();
        format!(
            "exit {:?}\n--- summary:\n{summary}--- stderr:\n{}",
            self.code, self.stderr
        )
    }
}

/// Runs dep8 on the tree `control` (plus `files`) with `--env V=value`.
fn run(control: &str, files: &[(String, String)], value: &str, testbed: &[&str]) -> Ran {
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(dir.path(), "pkg", control);
    for (path, text) in files {
        let path = tree.join(path);
        write(&path, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let canary = dir.path().join("canary");
    let out = Command::new(dep8_bin())
        .env("DEP8_CANARY", &canary)
        .args(["run", "-B", "--env"])
        .arg(format!("V={value}"))
        .arg("--env")
        .arg(format!("DEP8_CANARY={}", canary.display()))
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg(&tree)
        .arg("--")
        .args(testbed)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("running dep8");
    Ran {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        out: dir,
        canary,
    }
}

/// The control file and test scripts of `suite`: names alternate between
/// a script in the hostile dir and a named Test-Command; both print $V.
fn package(suite: &Suite) -> (String, Vec<(String, String)>) {
    let mut control = String::new();
    let mut files = Vec::new();
    for (i, name) in suite.names.iter().enumerate() {
        if i % 2 == 0 {
            control += &format!(
                "Tests: {name}\nTests-Directory: {}\nDepends:\n\n",
                suite.dir
            );
            files.push((
                format!("{}/{name}", suite.dir),
                "#!/bin/sh\nprintf '%s' \"$V\"\n".to_string(),
            ));
        } else {
            control += &format!(
                "Test-Command: printf '%s' \"$V\"\nFeatures: test-name={name}\nDepends:\n\n"
            );
        }
    }
    (control, files)
}

fn check_suite(suite: &Suite, testbed: &[&str]) -> Result<(), TestCaseError> {
    let (control, files) = package(suite);
    let ran = run(&control, &files, &suite.value, testbed);
    prop_assert!(!ran.canary.exists(), "an injection ran: {}", ran.said());
    prop_assert_eq!(ran.code, Some(0), "{}", ran.said());
    let summary = std::fs::read_to_string(ran.out.path().join("out/summary")).unwrap_or_default();
    // `name WORD` lines (result_words leaves out `*`, a name here).
    let results: BTreeSet<(&str, &str)> = summary
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            Some((name, rest.split_whitespace().next()?))
        })
        .collect();
    let expected: BTreeSet<(&str, &str)> =
        suite.names.iter().map(|n| (n.as_str(), "PASS")).collect();
    prop_assert_eq!(results, expected, "{}", ran.said());
    for name in &suite.names {
        let stdout = ran.out.path().join(format!("out/{name}-stdout"));
        let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
        prop_assert_eq!(&printed, &suite.value, "{}: {}", name, ran.said());
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn hostile_names_dirs_and_values_reach_no_shell_on_null() {
    runner(16)
        .run(&suite(), |suite| check_suite(&suite, &["null"]))
        .unwrap();
}

#[test]
fn hostile_names_dirs_and_values_reach_no_shell_on_unshare() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    runner(3)
        .run(&suite(), |suite| {
            check_suite(&suite, &["unshare", "--tarball", &tarball])
        })
        .unwrap();
}

/// A Depends made of a real package and hostile pieces: dep8 either reads
/// it (and checks `bash`) or says the field is BROKEN; never a testbed
/// failure, and nothing runs.
#[test]
fn hostile_depends_are_broken_or_checked_never_run() {
    let depends = (
        word(),
        proptest::sample::select(vec!["", " (>= ", " [", " <", " | "]),
    )
        .prop_map(|(w, sep)| format!("bash{sep}{w}"));
    runner(16)
        .run(&depends, |depends| {
            let control = format!("Test-Command: true\nDepends: {depends}\n");
            let ran = run(&control, &[], "", &["null"]);
            prop_assert!(!ran.canary.exists(), "an injection ran: {}", ran.said());
            let summary =
                std::fs::read_to_string(ran.out.path().join("out/summary")).unwrap_or_default();
            match ran.code {
                Some(0) => prop_assert!(summary.contains("PASS"), "{}", ran.said()),
                // BROKEN, or a name that parses but is not installed.
                Some(12) => prop_assert!(
                    summary.contains("Depends")
                        || summary.contains("dependencies are not installed"),
                    "{}",
                    ran.said()
                ),
                _ => prop_assert!(false, "{depends:?}: {}", ran.said()),
            }
            Ok(())
        })
        .unwrap();
}

/// The canary check itself works: an unquoted `$(touch $DEP8_CANARY)` in a
/// test's own command creates it.
#[test]
fn the_canary_sees_an_injection() {
    let ran = run(
        "Test-Command: echo $(touch${IFS}$DEP8_CANARY)\nDepends:\n",
        &[],
        "",
        &["null"],
    );
    assert!(ran.canary.exists(), "{}", ran.said());
    assert!(Path::new(&ran.canary).is_file());
}

/// ssh's file options (`-i`, `--known-hosts`, and the control socket and
/// private known_hosts in dep8's temp dir) whose paths hold spaces, quotes,
/// `%` tokens and backslashes reach ssh whole: the run logs in with the
/// host key checked and its test passes.
#[test]
fn ssh_paths_with_spaces_quotes_and_percents() {
    let Some(sshd) = dep8_tests::sshd::LoopbackSshd::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let odd = dir.path().join("a b%h \"q\\x");
    std::fs::create_dir(&odd).expect("odd dir");
    let key = odd.join("id %r");
    std::fs::copy(sshd.client_key(), &key).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let known = odd.join("known hosts");
    std::fs::copy(sshd.known_hosts(), &known).expect("known_hosts");
    let tree = source_tree(dir.path(), "pkg", "Test-Command: echo hi\nDepends:\n");
    let port = sshd.port().to_string();
    let common = ["-H", "127.0.0.1", "-p", &port, "-l", "root"];
    for how in [
        vec![OsStr::new("--known-hosts"), known.as_os_str()],
        // The private known_hosts and the socket in a TMPDIR as odd.
        vec![OsStr::new("--accept-new-host-key")],
    ] {
        let out_dir = dir.path().join(format!("out{}", how.len()));
        let out = Command::new(dep8_bin())
            .env("TMPDIR", &odd)
            .args(["run", "-B", "-o"])
            .arg(&out_dir)
            .arg(&tree)
            .args(["--", "ssh"])
            .args(common)
            .arg("-i")
            .arg(&key)
            .args(&how)
            .stdin(Stdio::null())
            .output()
            .expect("dep8");
        let summary = std::fs::read_to_string(out_dir.join("summary")).unwrap_or_default();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{how:?}: {summary}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(summary, "command1             PASS\n");
    }
}
