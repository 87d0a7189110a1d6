//! Building the source in the testbed, as autopkgtest 5.49 does when it
//! wants the binaries (an unbuilt tree, a `.dsc` or a git source without
//! `-B`) or a test is `build-needed`: `apt-get build-dep` on the tree with
//! the `nocheck noudeb` profiles, fakeroot when building as a normal user,
//! then `dpkg-buildpackage -us -uc -b` without tests, udebs or debug
//! symbols, patches kept applied. A build that fails is the package's fault;
//! exit 100 (apt) and a timeout are the testbed's.

use crate::install::UPDATE_IF_NO_LISTS;
use crate::testbed::{ExecRequest, Output, Tap, Testbed};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The build options of a run.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Build the source and test the binaries it builds (autopkgtest
    /// without `-B`, for an unbuilt tree, a `.dsc` or a git source). Not
    /// on a testbed where dep8 installs no packages (the host under `dep8
    /// run`): there `-B` is implied, and the log says so.
    pub binaries: bool,
    /// `--build-parallel N` (default: the testbed's processor count).
    pub parallel: Option<u32>,
    /// `--gain-root COMMAND` for dpkg-buildpackage `-r`.
    pub gain_root: Option<String>,
}

/// How to build.
pub struct Build<'a> {
    /// The unpacked source in the testbed; the binaries land beside it.
    pub tree: &'a str,
    /// Build as this user (with fakeroot), as autopkgtest does when there
    /// is a normal user; as the testbed's default user otherwise.
    pub user: Option<&'a str>,
    /// The testbed gives root (to install the build dependencies).
    pub root: bool,
    /// dep8 may install packages in this testbed.
    pub may_install: bool,
    /// `parallel=N` for DEB_BUILD_OPTIONS (`--build-parallel`, or the
    /// testbed's processor count).
    pub parallel: String,
    /// `--gain-root`: dpkg-buildpackage's `-r` command instead of fakeroot.
    pub gain_root: Option<&'a str>,
    /// `--env`, for the build too.
    pub env: &'a [(String, String)],
    pub install_timeout: Duration,
    pub build_timeout: Duration,
    pub log: Tap,
}

/// Why the build did not happen: the package's fault or the testbed's.
pub type BuildError = crate::error::Error;

impl Build<'_> {
    /// Installs the build dependencies, then builds.
    pub async fn run(&self, tb: &dyn Testbed) -> Result<(), BuildError> {
        self.build_depends(tb).await?;
        let fakeroot = self.gain_root.is_none() && (self.user.is_some() || !self.root);
        if fakeroot {
            self.ensure_fakeroot(tb).await?;
        }
        let gain_root = match self.gain_root {
            Some(command) => format!(" -r{}", shell_words::quote(command)),
            None if fakeroot => " -rfakeroot".into(),
            None => String::new(),
        };
        let script = format!(
            "cd {}; DEB_BUILD_OPTIONS=\"nocheck noautodbgsym noddebs parallel={} $DEB_BUILD_OPTIONS\" \
             DEB_BUILD_PROFILES=\"noudeb nocheck $DEB_BUILD_PROFILES\" \
             dpkg-buildpackage -us -uc -b{gain_root}; dpkg-source --before-build .",
            shell_words::quote(self.tree),
            shell_words::quote(&self.parallel),
        );
        let mut req = self
            .request(["sh", "-ec", &script])
            .timeout(self.build_timeout);
        req.user = self.user.map(str::to_string);
        let out = tb.exec(req).await?;
        match out.status.code() {
            _ if out.timed_out => Err(BuildError::Testbed(format!(
                "building the package timed out after {}s",
                self.build_timeout.as_secs()
            ))),
            0 => Ok(()),
            100 => Err(BuildError::Testbed(
                "rules build failed with exit code 100 (apt failure)".into(),
            )),
            code => Err(BuildError::BadPackage(format!(
                "rules build failed with exit code {code}"
            ))),
        }
    }

    /// A request with `--env` and the output in the log.
    fn request<S: Into<String>>(&self, argv: impl IntoIterator<Item = S>) -> ExecRequest {
        let mut req = ExecRequest::new(argv)
            .stdout(Output::default().with_tap(self.log.clone()))
            .stderr(Output::capture().with_tap(self.log.clone()));
        for (k, v) in self.env {
            req = req.env(k, v);
        }
        req
    }

    /// `apt-get build-dep` on the tree, after a simulation that tells
    /// whether anything is missing (so a testbed without root builds when
    /// nothing is). The simulation failing, or something missing where dep8
    /// installs nothing, is the package's fault; something missing without
    /// root, or the installation failing, the testbed's.
    async fn build_depends(&self, tb: &dyn Testbed) -> Result<(), BuildError> {
        let tree = shell_words::quote(self.tree);
        let update = if self.may_install {
            format!("{UPDATE_IF_NO_LISTS} >&2; ")
        } else {
            String::new()
        };
        let simulate = format!("{update}apt-get -q --simulate build-dep {tree}");
        let out = tb
            .exec(
                self.profiles(ExecRequest::new(["sh", "-ec", &simulate]).capture())
                    .timeout(self.install_timeout),
            )
            .await?;
        if !out.status.success() || out.timed_out {
            let said = format!("{}{}", out.stdout_text(), out.stderr_text());
            (self.log)(format!("apt-get --simulate build-dep {tree}:\n{said}").as_bytes());
            return Err(BuildError::BadPackage(
                "Can't resolve build dependencies on testbed".into(),
            ));
        }
        let needed: Vec<String> = out
            .stdout_text()
            .lines()
            .filter_map(|l| l.strip_prefix("Inst "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        if needed.is_empty() {
            return Ok(());
        }
        if !self.root {
            return Err(BuildError::Testbed(format!(
                "Can't install build dependencies (must be root): {}",
                needed.join(", ")
            )));
        }
        if !self.may_install {
            // As for a test's dependencies on such a testbed: badpkg.
            return Err(BuildError::BadPackage(format!(
                "build dependencies are not installed and dep8 does not install packages \
                 on this testbed: {}",
                needed.join(", ")
            )));
        }
        let install = format!(
            "DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q \
             -o Dpkg::Options::=--force-confnew {tree}"
        );
        let req = self.profiles(self.request(["sh", "-ec", &install]));
        self.step(tb, req, "Failure installing build dependencies on testbed")
            .await
    }

    /// The `nocheck noudeb` profiles for apt, after any the user gave.
    fn profiles(&self, req: ExecRequest) -> ExecRequest {
        let given = self
            .env
            .iter()
            .find(|(k, _)| k == "DEB_BUILD_PROFILES")
            .map(|(_, v)| format!("{v} "))
            .unwrap_or_default();
        req.env("DEB_BUILD_PROFILES", &format!("{given}nocheck noudeb"))
    }

    /// fakeroot, for a build as a normal user or without root.
    async fn ensure_fakeroot(&self, tb: &dyn Testbed) -> Result<(), BuildError> {
        let script = if self.may_install && self.root {
            format!(
                "command -v fakeroot >/dev/null && exit 0; export DEBIAN_FRONTEND=noninteractive; \
                 {UPDATE_IF_NO_LISTS}; apt-get install -y -q --no-install-recommends fakeroot"
            )
        } else {
            "command -v fakeroot >/dev/null".into()
        };
        let req = self.request(["sh", "-ec", &script]);
        let what = "the build needs fakeroot, which is not installed and cannot be";
        self.step(tb, req, what).await
    }

    /// Runs a preparation step (within the install timeout); its failure,
    /// `what` and stderr's last line, is the testbed's.
    async fn step(&self, tb: &dyn Testbed, req: ExecRequest, what: &str) -> Result<(), BuildError> {
        let out = tb.exec(req.timeout(self.install_timeout)).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BuildError::Testbed(format!(
                "{what}: {}",
                out.stderr_last_line()
            )))
        }
    }
}

/// Copies the `.deb`s the build left in `dir` (the tree's parent) to
/// `host`; returns their host paths.
pub async fn collect_debs(
    tb: &dyn Testbed,
    dir: &str,
    host: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    let debs = format!("{dir}/debs");
    let script = "mkdir -p \"$1/debs\"; for f in \"$1\"/*.deb; do [ ! -e \"$f\" ] || mv \"$f\" \"$1/debs/\"; done";
    let out = tb
        .exec(ExecRequest::new(["sh", "-ec", script, "collect", dir]).capture())
        .await?;
    if !out.status.success() {
        return Err(BuildError::Testbed(format!(
            "collecting the built binaries failed: {}",
            out.stderr_last_line()
        )));
    }
    tb.copy_up(&debs, host).await?;
    let host = host.to_owned();
    crate::blocking(move || {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&host)
            .map_err(|e| BuildError::Testbed(format!("{}: {e}", host.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        found.sort();
        Ok(found)
    })
    .await
}
