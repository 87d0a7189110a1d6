//! Getting the source tree when the user gave something else than an
//! unpacked tree, as autopkgtest does: a `.dsc` is unpacked in the testbed
//! with `dpkg-source -x`, a source package name is fetched there with
//! `apt-get source`, a git URL cloned with git. The unpacked tree is copied back to a host temp dir so
//! that the runner can read its control files and copy it again after a
//! revert.

use crate::install::UPDATE_IF_NO_LISTS;
use crate::testbed::{ExecRequest, Output, Tap, Testbed};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Before `apt-get source`: a testbed whose apt sources have no `deb-src`
/// entry (a minimal rootfs, unlike autopkgtest's own images) gets one for
/// each `deb` entry, and their lists. autopkgtest would stop with "You must
/// put some 'deb-src' URIs in your sources.list".
const DEB_SRC: &str = r#"lists=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
sources=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if ! grep -qsE '^[[:space:]]*deb-src[[:space:]]|^Types:.*deb-src' $lists $sources /dev/null; then
    echo "the testbed's apt sources have no deb-src entries: adding one for each deb entry" >&2
    parts=$(mktemp -d)
    sed -n 's/^[[:space:]]*deb\([[:space:]]\)/deb-src\1/p' $lists /dev/null > "$parts/dep8-deb-src.list"
    for f in $sources; do
        grep -q '^Types:.*\bdeb\b' "$f" || continue
        sed 's/^Types:.*/Types: deb-src/' "$f" > "$parts/dep8-deb-src-${f##*/}"
    done
    apt-get -q --no-list-cleanup -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$parts" update
    cp "$parts"/* /etc/apt/sources.list.d/
    rm -rf "$parts"
fi"#;

/// A source that must be unpacked or fetched in the testbed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// A `.dsc` and the files it lists, beside it on the host.
    Dsc(PathBuf),
    /// A source package name, for `apt-get source` in the testbed.
    AptSource(String),
    /// A git repository, `URL[#BRANCH_OR_REFSPEC]`, cloned in the testbed.
    Git(String),
    /// An unbuilt tree whose quilt patches are not applied: copied in and
    /// patched with `dpkg-source --before-build`, as autopkgtest prepares
    /// every unbuilt tree (for the others that changes nothing).
    Unapplied(PathBuf),
}

impl std::fmt::Display for Fetch {
    /// What getting the tree does, for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetch::Dsc(dsc) => write!(f, "unpacking {}", dsc.display()),
            Fetch::AptSource(name) => write!(f, "apt-get source {name}"),
            Fetch::Git(url) => write!(f, "cloning {url}"),
            Fetch::Unapplied(tree) => write!(f, "applying the patches of {}", tree.display()),
        }
    }
}

/// Why the source could not be had: the package's fault (badpkg) or the
/// testbed's.
pub type AcquireError = crate::error::Error;

/// The `Files:` field of a `.dsc` or `.changes` (signed or not); the
/// caller, who knows which it read, decides whose fault a failure is.
pub fn files_field(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (body, _) = debian_control::pgp::strip_pgp_signature(&text)
        .map_err(|e| format!("{}: {e:?}", path.display()))?;
    let deb822: deb822_lossless::Deb822 = body
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    deb822
        .paragraphs()
        .next()
        .and_then(|p| p.get("Files"))
        .ok_or_else(|| format!("{} is invalid and does not contain Files:", path.display()))
}

/// The files a `.dsc` lists in `Files:`; a `.dsc` without them is the
/// package's fault.
pub fn dsc_files(dsc: &Path) -> Result<Vec<PathBuf>, AcquireError> {
    let files = files_field(dsc).map_err(AcquireError::BadPackage)?;
    let dir = dsc.parent().unwrap_or(Path::new("."));
    Ok(files
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .map(|name| dir.join(name))
        .collect())
}

/// Checks on the host that a `.dsc` and every file it lists are there
/// (else the package is at fault).
pub fn check_dsc(dsc: &Path) -> Result<(), AcquireError> {
    let missing: Vec<String> = dsc_files(dsc)?
        .iter()
        .filter(|f| !f.is_file())
        .map(|f| f.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AcquireError::BadPackage(format!(
            "{} lists files that are missing: {}",
            dsc.display(),
            missing.join(", ")
        )))
    }
}

/// Unpacks or fetches `fetch` in the testbed (under `SCRATCH/acquire`) and
/// copies the tree to `host`. Where dep8 may change the testbed's packages
/// (`may_install`), it installs dpkg-dev when dpkg-source is missing and
/// adds `deb-src` entries when there are none.
pub async fn acquire(
    tb: &dyn Testbed,
    fetch: &Fetch,
    host: &Path,
    timeout: Duration,
    log: Tap,
    may_install: bool,
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
    // As autopkgtest: dpkg-source (for both) comes with dpkg-dev.
    let dpkg_dev = if may_install {
        format!(
            "command -v dpkg-source >/dev/null && exit 0; \
             echo 'the testbed has no dpkg-source: installing dpkg-dev' >&2; \
             export DEBIAN_FRONTEND=noninteractive; {UPDATE_IF_NO_LISTS}; \
             apt-get install -y -q --no-install-recommends dpkg-dev"
        )
    } else {
        "command -v dpkg-source >/dev/null || { echo 'the testbed has no dpkg-source' >&2; exit 1; }"
            .to_string()
    };
    let out = tb
        .exec(
            ExecRequest::new(["sh", "-ec", &dpkg_dev])
                .stdout(Output::default().with_tap(log.clone()))
                .stderr(Output::capture().with_tap(log.clone()))
                .timeout(timeout),
        )
        .await?;
    if !out.status.success() {
        return Err(AcquireError::Testbed(format!(
            "getting dpkg-source (dpkg-dev) failed: {}",
            out.stderr_last_line()
        )));
    }
    let script = match fetch {
        Fetch::Dsc(dsc) => {
            let mut files = dsc_files(dsc)?;
            files.push(dsc.clone());
            for file in &files {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                tb.copy_down(file, &format!("{work}/{name}")).await?;
            }
            let name = dsc.file_name().unwrap_or_default().to_string_lossy();
            format!(
                "cd {} && dpkg-source -x {} tree",
                shell_words::quote(&work),
                shell_words::quote(&name)
            )
        }
        Fetch::AptSource(package) => format!(
            "{}\ncd {} && apt-get source -q --only-source {} && \
             for d in */; do mv \"$d\" tree; break; done",
            if may_install { DEB_SRC } else { "" },
            shell_words::quote(&work),
            shell_words::quote(package)
        ),
        Fetch::Git(url) => git_clone(url, may_install, &work),
        Fetch::Unapplied(tree) => {
            tb.copy_down(tree, &format!("{work}/tree")).await?;
            format!("cd '{work}' && dpkg-source --before-build tree")
        }
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
        let stderr = out.stderr_text();
        let said = out.stderr_last_line();
        return Err(match fetch {
            Fetch::Dsc(dsc) => {
                AcquireError::BadPackage(format!("dpkg-source -x {} failed: {said}", dsc.display()))
            }
            // As autopkgtest: no such source package is the package's
            // fault; any other apt failure (the network, the mirror) the
            // testbed's.
            Fetch::AptSource(p) if stderr.contains("Unable to find a source package") => {
                AcquireError::BadPackage(format!("apt-get source {p} failed: {said}"))
            }
            Fetch::AptSource(p) => {
                AcquireError::Testbed(format!("apt-get source {p} failed: {said}"))
            }
            // As autopkgtest: a clone or patch that fails is the package's fault.
            Fetch::Git(url) => AcquireError::BadPackage(format!("git clone {url} failed: {said}")),
            Fetch::Unapplied(tree) => AcquireError::BadPackage(format!(
                "dpkg-source --before-build {} failed: {said}",
                tree.display()
            )),
        });
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

/// Clones `URL[#BRANCH]` into `WORK/tree` as autopkgtest does (one retry
/// after 15 s; a branch or refspec fetched as `testbranch` and checked
/// out), installing git first where dep8 may.
fn git_clone(source: &str, may_install: bool, work: &str) -> String {
    let (url, branch) = source.split_once('#').unwrap_or((source, ""));
    let (url, branch) = (shell_words::quote(url), shell_words::quote(branch));
    let install = if may_install {
        format!(
            "command -v git >/dev/null || {{ export DEBIAN_FRONTEND=noninteractive; \
             {UPDATE_IF_NO_LISTS}; apt-get install -y -q --no-install-recommends git ca-certificates; }}\n"
        )
    } else {
        String::new()
    };
    format!(
        "{install}cd '{work}' && {{ git clone {url} tree || {{ sleep 15; git clone {url} tree; }}; }}\n\
         [ -z {branch} ] || {{ cd tree && {{ git fetch -fu origin {branch}:testbranch || \
         {{ sleep 15; git fetch -fu origin {branch}:testbranch; }}; }} && git checkout testbranch; }}"
    )
}
