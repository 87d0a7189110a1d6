//! The same example packages through Debian's autopkgtest and through dep8,
//! on the null and unshare testbeds: every test must get the same result
//! word.

use dep8_conformance::{dep8_bin, repo_root as repo};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `name -> result word` from a summary file; `*` lines and detail lines are
/// left out.
fn words(summary: &str) -> BTreeMap<String, String> {
    summary
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(' ')?;
            let word = rest.split_whitespace().next()?;
            let known = ["PASS", "FAIL", "SKIP", "FLAKY", "BROKEN"];
            (name != "*" && known.contains(&word)).then(|| (name.to_string(), word.to_string()))
        })
        .collect()
}

fn summary_of(
    program: &Path,
    args: &[String],
    out: &Path,
) -> (BTreeMap<String, String>, Option<i32>) {
    let status = Command::new(program)
        .current_dir(repo())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    (words(&summary), status.code())
}

/// Runs `example` through autopkgtest on `theirs` and through dep8 on
/// `ours` (testbed words after `--`); asserts the same result word per test
/// and the same exit status.
fn compare(example: &str, theirs: &[&str], ours: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (a_out, d_out) = (dir.path().join("autopkgtest"), dir.path().join("dep8"));
    let src = format!("examples/{example}");
    let args = |tool: &[&'static str], out: &Path, testbed: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = tool.iter().map(|s| s.to_string()).collect();
        args.extend(["--timeout-test=3".into(), "-o".into()]);
        args.push(out.to_string_lossy().into_owned());
        args.extend([src.clone(), "--".into()]);
        args.extend(testbed.iter().map(|s| s.to_string()));
        args
    };
    let a_args = args(&["-B"], &a_out, theirs);
    let d_args = args(&["run"], &d_out, ours);
    let (their_words, their_code) = summary_of(Path::new(AUTOPKGTEST), &a_args, &a_out);
    let (our_words, our_code) = summary_of(&dep8_bin(), &d_args, &d_out);
    assert!(
        !their_words.is_empty(),
        "autopkgtest produced no summary for {example}"
    );
    assert_eq!(our_words, their_words, "result words differ on {example}");
    assert_eq!(our_code, their_code, "exit status differs on {example}");
}

const AUTOPKGTEST: &str = "/usr/bin/autopkgtest";

/// Whether the comparison can run here; prints why not.
fn comparable() -> bool {
    if !Path::new(AUTOPKGTEST).exists() {
        eprintln!("skipped: Debian's autopkgtest is not installed (apt-get install autopkgtest)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: compared as root only (autopkgtest's null and dep8's unshare need it)");
        return false;
    }
    true
}

#[test]
fn same_results_as_autopkgtest_on_null() {
    if !comparable() {
        return;
    }
    for example in ["hello", "outcomes", "build-needed"] {
        compare(example, &["null"], &["null"]);
    }
}

#[test]
fn same_results_as_autopkgtest_on_unshare() {
    let Some(tarball) =
        dep8_conformance::required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball")
    else {
        return;
    };
    if !comparable() {
        return;
    }
    for example in ["hello", "outcomes"] {
        compare(
            example,
            &["unshare", "--tarball", &tarball],
            &["unshare", "--tarball", &tarball],
        );
    }
}
