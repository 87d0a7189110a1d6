//! Installing a test's dependencies in the testbed with apt, as autopkgtest
//! does on every testbed where it is root.
//!
//! autopkgtest builds a dummy `autopkgtest-satdep` package whose Depends are
//! the test's and lets `apt-get --fix-broken install` resolve it. dep8 uses
//! `apt-get satisfy` (apt >= 1.9), which takes the same relation syntax —
//! alternatives, versions, `[arch]` qualifiers, `<profile>`s — directly, so
//! nothing has to be built on the host and no dummy package is left to purge.

use crate::testbed::{ExecRequest, Output, Result, Tap, Testbed};
use std::time::Duration;

/// Whether dependencies are installed or only checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DependencyPolicy {
    /// Install missing dependencies with apt (needs root on the testbed).
    #[default]
    Install,
    /// Never change the testbed's packages: a missing dependency is badpkg.
    /// The default for the host itself (`null`).
    CheckOnly,
}

/// What `apt-get satisfy` said when it could not install the dependencies.
pub struct Unsatisfiable(pub String);

/// Installs the alternative groups `deps` without recommends (unless
/// `recommends`); runs `apt-get update` first when the testbed has no
/// package lists. apt's output goes to `log`.
pub async fn apt_satisfy(
    tb: &dyn Testbed,
    deps: &[String],
    recommends: bool,
    timeout: Duration,
    log: Tap,
) -> Result<std::result::Result<(), Unsatisfiable>> {
    let relations = deps.join(", ");
    let script = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; \
         ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q; \
         apt-get satisfy -y -q {} -o Dpkg::Options::=--force-confnew {}",
        if recommends {
            "--install-recommends"
        } else {
            "--no-install-recommends"
        },
        shell_words::quote(&relations)
    );
    let out = tb
        .exec(
            ExecRequest::shell(&script)
                .stdout(Output::capture().with_tap(log.clone()))
                .stderr(Output::capture().with_tap(log))
                .timeout(timeout),
        )
        .await?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    let said = if out.timed_out {
        format!(
            "installing dependencies timed out after {}s",
            timeout.as_secs()
        )
    } else {
        out.stderr_text()
            .lines()
            .filter(|l| l.starts_with("E:"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(Err(Unsatisfiable(said)))
}
