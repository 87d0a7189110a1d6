//! Helpers for the end-to-end tests: the binaries they drive and the
//! summaries they compare.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root (examples/ lives there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
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
pub fn words(summary: &str) -> BTreeMap<String, String> {
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

/// Runs `program args` in the repository and returns the result words of
/// the summary it wrote in `out`, and its exit status.
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
    (words(&summary), status.code())
}
