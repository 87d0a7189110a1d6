//! The same example packages through Debian's autopkgtest and through dep8,
//! on the null testbed: every test must get the same result word.

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
    args: &[&str],
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

#[test]
fn same_results_as_autopkgtest_on_null() {
    let autopkgtest = Path::new("/usr/bin/autopkgtest");
    if !autopkgtest.exists() {
        eprintln!("skipped: Debian's autopkgtest is not installed (apt-get install autopkgtest)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipped: compared as root only (autopkgtest's null behaves differently otherwise)"
        );
        return;
    }
    for example in ["hello", "outcomes", "build-needed"] {
        let dir = tempfile::tempdir().unwrap();
        let (a_out, d_out) = (dir.path().join("autopkgtest"), dir.path().join("dep8"));
        let src = format!("examples/{example}");
        let (theirs, their_code) = summary_of(
            autopkgtest,
            &[
                "-B",
                "--timeout-test=3",
                "-o",
                a_out.to_str().unwrap(),
                &src,
                "--",
                "null",
            ],
            &a_out,
        );
        let (ours, our_code) = summary_of(
            &dep8_bin(),
            &[
                "run",
                "--timeout-test=3",
                "-o",
                d_out.to_str().unwrap(),
                &src,
                "--",
                "null",
            ],
            &d_out,
        );
        assert!(
            !theirs.is_empty(),
            "autopkgtest produced no summary for {example}"
        );
        assert_eq!(ours, theirs, "result words differ on {example}");
        assert_eq!(our_code, their_code, "exit status differs on {example}");
    }
}
