//! Helpers for the end-to-end tests that drive the `dep8` binary and
//! Debian's autopkgtest on the example packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's top directory (where `examples/` is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository dir")
        .to_path_buf()
}

/// The dep8 binary next to the running test's executable (built by `cargo
/// test --workspace`, which builds the cli package's binary for its own
/// tests).
pub fn dep8_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("dep8");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p dep8` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A program the test needs from the host, found in PATH; `None` (with the
/// reason printed) when it is missing on a developer machine, a failure
/// under CI, where `.ci/install-deps` installs it from `package`.
pub fn required_program(program: &str, package: &str) -> Option<PathBuf> {
    match which::which(program) {
        Ok(path) => Some(path),
        Err(_) if std::env::var_os("DEP8_CI").is_some() => {
            panic!("{program} is not installed under CI: .ci/install-deps should install {package}")
        }
        Err(_) => {
            eprintln!("SKIP: {program} is not installed (apt-get install {package})");
            None
        }
    }
}

/// `name -> result word` from a summary file; `*` lines and detail lines are
/// left out.
pub fn result_words(summary: &str) -> BTreeMap<String, String> {
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

/// Runs `program args` from the repository's top directory; returns the
/// result words of the summary it wrote in `out` and its exit status.
pub fn summary_of(
    program: &Path,
    args: &[&str],
    out: &Path,
) -> (BTreeMap<String, String>, Option<i32>) {
    let status = Command::new(program)
        .current_dir(repo())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    (result_words(&summary), status.code())
}

/// Runs `examples/EXAMPLE` with Debian's autopkgtest (`-B`) and with dep8 on
/// the testbed `testbed` (`BACKEND ARGS...`, the same words for both) and
/// asserts that every test gets the same result word and that both exit
/// with the same status.
pub fn assert_same_as_autopkgtest(example: &str, testbed: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a_out, d_out) = (dir.path().join("autopkgtest"), dir.path().join("dep8"));
    let src = format!("examples/{example}");
    let a_dir = a_out.to_str().expect("utf-8 path");
    let d_dir = d_out.to_str().expect("utf-8 path");
    let theirs_args = [
        &["-B", "--timeout-test=3", "-o", a_dir, &src, "--"],
        testbed,
    ]
    .concat();
    let ours_args = [
        &["run", "--timeout-test=3", "-o", d_dir, &src, "--"],
        testbed,
    ]
    .concat();
    let (theirs, their_code) = summary_of(Path::new("/usr/bin/autopkgtest"), &theirs_args, &a_out);
    let (ours, our_code) = summary_of(&dep8_bin(), &ours_args, &d_out);
    let on = testbed.join(" ");
    assert!(
        !theirs.is_empty(),
        "autopkgtest produced no summary for {example} on {on}"
    );
    assert_eq!(ours, theirs, "result words differ on {example} on {on}");
    assert_eq!(
        our_code, their_code,
        "exit status differs on {example} on {on}"
    );
}
