//! Getting the source tree when the user gave something else than an
//! unpacked tree, as autopkgtest does: a `.dsc` is unpacked in the testbed
//! with `dpkg-source -x`, a source package name is fetched there with
//! `apt-get source`. The unpacked tree is copied back to a host temp dir so
//! that the runner can read its control files and copy it again after a
//! revert.

use crate::testbed::{ExecRequest, Output, Tap, Testbed, TestbedError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A source that must be unpacked or fetched in the testbed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// A `.dsc` and the files it lists, beside it on the host.
    Dsc(PathBuf),
    /// A source package name, for `apt-get source` in the testbed.
    AptSource(String),
}

/// Why the source could not be had: the package's fault (badpkg) or the
/// testbed's.
pub enum AcquireError {
    BadPackage(String),
    Testbed(String),
}

impl From<TestbedError> for AcquireError {
    fn from(e: TestbedError) -> Self {
        AcquireError::Testbed(e.detail())
    }
}

/// The files a `.dsc` lists in `Files:` (signed or not).
pub fn dsc_files(dsc: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(dsc).map_err(|e| format!("{}: {e}", dsc.display()))?;
    let (body, _) = debian_control::pgp::strip_pgp_signature(&text)
        .map_err(|e| format!("{}: {e:?}", dsc.display()))?;
    let deb822: deb822_lossless::Deb822 = body
        .parse()
        .map_err(|e| format!("{}: {e}", dsc.display()))?;
    let files = deb822
        .paragraphs()
        .next()
        .and_then(|p| p.get("Files"))
        .ok_or_else(|| format!("{}: no Files field", dsc.display()))?;
    let dir = dsc.parent().unwrap_or(Path::new("."));
    Ok(files
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .map(|name| dir.join(name))
        .collect())
}

/// Unpacks or fetches `fetch` in the testbed (under `SCRATCH/acquire`) and
/// copies the tree to `host`.
pub async fn acquire(
    tb: &dyn Testbed,
    fetch: &Fetch,
    host: &Path,
    timeout: Duration,
    log: Tap,
) -> Result<(), AcquireError> {
    let work = format!("{}/acquire", tb.scratch());
    let mkdir = tb
        .exec(ExecRequest::new(["mkdir", "-p", &work]).capture())
        .await?;
    if !mkdir.status.success() {
        return Err(AcquireError::Testbed(format!(
            "mkdir {work}: {}",
            mkdir.stderr_text().trim()
        )));
    }
    let script = match fetch {
        Fetch::Dsc(dsc) => {
            let mut files = dsc_files(dsc).map_err(AcquireError::BadPackage)?;
            files.push(dsc.clone());
            for file in &files {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                tb.copy_down(file, &format!("{work}/{name}")).await?;
            }
            let name = dsc.file_name().unwrap_or_default().to_string_lossy();
            format!(
                "cd '{work}' && dpkg-source -x {} tree",
                shell_words::quote(&name)
            )
        }
        Fetch::AptSource(package) => format!(
            "cd '{work}' && apt-get source -q --only-source {} && \
             for d in */; do mv \"$d\" tree; break; done",
            shell_words::quote(package)
        ),
    };
    let out = tb
        .exec(
            ExecRequest::new(["sh", "-ec", &script])
                .stdout(Output::default().with_tap(log.clone()))
                .stderr(Output::capture().with_tap(log))
                .timeout(timeout),
        )
        .await?;
    if !out.status.success() {
        let what = match fetch {
            Fetch::Dsc(dsc) => format!("dpkg-source -x {}", dsc.display()),
            Fetch::AptSource(p) => format!("apt-get source {p}"),
        };
        return Err(AcquireError::BadPackage(format!(
            "{what} failed: {}",
            out.stderr_text().lines().last().unwrap_or("").trim()
        )));
    }
    tb.copy_up(&format!("{work}/tree"), host).await?;
    let cleanup = tb
        .exec(ExecRequest::new(["rm", "-rf", &work]).capture())
        .await?;
    if !cleanup.status.success() {
        return Err(AcquireError::Testbed(format!("removing {work} failed")));
    }
    Ok(())
}
