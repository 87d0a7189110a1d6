//! Preparing a freshly opened (or reverted) testbed before any test, as
//! autopkgtest's "test bed setup options" do: `--copy`, `--add-apt-source`,
//! `--setup-commands` and `-U/--apt-upgrade`. Commands run as root with
//! `sh -ec`; exit 100 blames the package (badpkg), any other failure the
//! testbed.

use crate::testbed::{ExecRequest, Output, Tap, Testbed, TestbedError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `-U`: update the package lists (a 404 means a bad source: exit 100,
/// anything else is retried, as transient), then dist-upgrade.
pub const APT_UPGRADE: &str = "(O=$(bash -o pipefail -ec 'apt-get update | tee /proc/self/fd/2') || \
{ [ \"${O%404*Not Found*}\" = \"$O\" ] || exit 100; sleep 15; apt-get update; } || \
{ sleep 60; apt-get update; } || false) && apt-get dist-upgrade -y -o Dpkg::Options::=--force-confnew \
&& apt-get --purge autoremove -y";

/// Where autopkgtest keeps its named setup commands (`--setup-commands
/// enable-sudo`), used when it is installed.
const NAMED_SETUP_COMMANDS: &str = "/usr/share/autopkgtest/setup-commands";

#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// `--copy HOST:TESTBED`.
    pub copies: Vec<(PathBuf, String)>,
    /// `--add-apt-source "deb URL SUITE COMPONENTS"`.
    pub apt_sources: Vec<String>,
    /// Shell command lists, in order (`--setup-commands`, `-U`).
    pub commands: Vec<String>,
    /// Binary packages given on the command line: published to apt in the
    /// testbed as a local repository pinned above every other, so that
    /// dependencies are satisfied from them first.
    pub binaries: Vec<PathBuf>,
}

/// Why setup failed.
#[derive(Debug)]
pub enum SetupError {
    /// A setup command exited 100: the package's fault (exit 12).
    BadPackage(String),
    /// The testbed could not be set up (exit 16).
    Testbed(String),
}

impl From<TestbedError> for SetupError {
    fn from(e: TestbedError) -> Self {
        SetupError::Testbed(e.detail())
    }
}

/// `--setup-commands` takes commands, a file holding them, or the name of
/// one of autopkgtest's own setup scripts.
pub fn setup_command(arg: &str) -> Result<String, String> {
    let named = Path::new(NAMED_SETUP_COMMANDS).join(arg);
    let file = [Path::new(arg), named.as_path()]
        .into_iter()
        .find(|p| !arg.contains('\n') && p.is_file());
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("--setup-commands {}: {e}", path.display())),
        None => Ok(arg.to_string()),
    }
}

/// `--copy HOST:TESTBED`.
pub fn copy_pair(arg: &str) -> Result<(PathBuf, String), String> {
    match arg.split_once(':') {
        Some((host, tb)) if !host.is_empty() && tb.starts_with('/') => {
            Ok((PathBuf::from(host), tb.to_string()))
        }
        _ => Err(format!("--copy {arg}: expected HOSTPATH:/TESTBED/PATH")),
    }
}

impl Setup {
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
            && self.apt_sources.is_empty()
            && self.commands.is_empty()
            && self.binaries.is_empty()
    }

    /// Applies everything in autopkgtest's order: copies, apt sources,
    /// commands. `normal_user` is exported to the commands as
    /// `AUTOPKGTEST_NORMAL_USER`.
    pub async fn apply(
        &self,
        tb: &dyn Testbed,
        normal_user: Option<&str>,
        timeout: Duration,
        log: Tap,
    ) -> Result<(), SetupError> {
        for (host, path) in &self.copies {
            tb.copy_down(host, path).await?;
        }
        for source in &self.apt_sources {
            let script = "echo \"$1\" >> /etc/apt/sources.list.d/dep8-add-apt-sources.list; \
                for retry in 1 2 3; do apt-get --no-list-cleanup \
                -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/dep8-add-apt-sources.list \
                -o Dir::Etc::sourceparts=/dev/null update 2>&1 && exit 0; sleep 15; done; exit 1";
            let req = ExecRequest::new(["sh", "-ec", script, "sh", source.as_str()]);
            run(
                tb,
                req,
                &format!("adding apt source {source:?}"),
                timeout,
                &log,
            )
            .await?;
        }
        for command in &self.commands {
            let mut req = ExecRequest::new(["sh", "-ec", command.as_str()])
                .env("AUTOPKGTEST_IS_SETUP_COMMAND", "1");
            if let Some(user) = normal_user {
                req = req
                    .env("AUTOPKGTEST_NORMAL_USER", user)
                    .env("ADT_NORMAL_USER", user);
            }
            run(tb, req, "testbed setup commands", timeout, &log).await?;
        }
        if !self.binaries.is_empty() {
            self.publish_binaries(tb, timeout, &log).await?;
        }
        Ok(())
    }
}

impl Setup {
    /// Copies the binaries to `SCRATCH/binaries` and makes them an apt
    /// repository with priority 1002 (as autopkgtest does).
    async fn publish_binaries(
        &self,
        tb: &dyn Testbed,
        timeout: Duration,
        log: &Tap,
    ) -> Result<(), SetupError> {
        let dir = format!("{}/binaries", tb.scratch());
        for deb in &self.binaries {
            let name = deb.file_name().unwrap_or_default().to_string_lossy();
            tb.copy_down(deb, &format!("{dir}/{name}")).await?;
        }
        let script = format!(
            "cd '{dir}'; \
             command -v apt-ftparchive >/dev/null || apt-get install -y -q apt-utils; \
             apt-ftparchive packages . > Packages; apt-ftparchive release . > Release; \
             printf 'Package: *\\nPin: origin \"\"\\nPin-Priority: 1002\\n' > /etc/apt/preferences.d/90dep8; \
             echo 'deb [trusted=yes] file://{dir} /' > /etc/apt/sources.list.d/dep8-binaries.list; \
             apt-get -q --no-list-cleanup -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/dep8-binaries.list \
             -o Dir::Etc::sourceparts=/dev/null update"
        );
        let req = ExecRequest::new(["sh", "-ec", &script]);
        run(tb, req, "publishing the binaries", timeout, log).await
    }
}

/// Runs one setup step as root with its output in the log.
async fn run(
    tb: &dyn Testbed,
    req: ExecRequest,
    what: &str,
    timeout: Duration,
    log: &Tap,
) -> Result<(), SetupError> {
    let req = req
        .stdout(Output::default().with_tap(log.clone()))
        .stderr(Output::default().with_tap(log.clone()))
        .timeout(timeout);
    let out = tb.exec(req).await?;
    match out.status.code() {
        0 => Ok(()),
        _ if out.timed_out => Err(SetupError::Testbed(format!(
            "{what} timed out after {}s",
            timeout.as_secs()
        ))),
        100 => Err(SetupError::BadPackage(format!(
            "{what} failed with status 100"
        ))),
        code => Err(SetupError::Testbed(format!(
            "{what} failed with status {code}"
        ))),
    }
}
