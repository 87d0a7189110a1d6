//! Preparing a freshly opened (or reverted) testbed before any test, as
//! autopkgtest's "test bed setup options" do: `--copy`, `--add-apt-source`,
//! `--apt-pocket`, `--setup-commands` and `-U/--apt-upgrade`. Commands run as root with
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

/// `--apt-pocket P[=PKGS]` (arguments: P, PKGS): the testbed's first
/// release with `-P` appended, from the same mirrors and components, pinned
/// at 500 (over NotAutomatic); with PKGS (`src:NAME` = its binaries), only
/// those come from the pocket (995) while the default release stays at 990,
/// as autopkgtest's pinning does.
const APT_POCKET: &str = r#"pocket=$1 pkgs=$2
srcs=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
lines=$(sed -rn 's/^deb +(\[[^]]*\] *)?((http|https|file):[^ ]+) +([^ -]+) +(.*)$/deb \1\2 \4-'"$pocket"' \5/p' $srcs /dev/null)
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' "$f" | head -n1)
    suite=$(sed -n 's/^Suites: *//p' "$f" | head -n1 | tr ' ' '\n' | grep -v -e - | head -n1)
    comps=$(sed -n 's/^Components: *//p' "$f" | head -n1)
    [ -z "$uri" ] || [ -z "$suite" ] || lines="$lines
deb $uri $suite-$pocket $comps"
done
release=$(printf '%s\n' "$lines" | sed -n 's/^deb \(\[[^]]*\] *\)\{0,1\}[^ ]* \([^ ]*\)-'"$pocket"' .*/\2/p' | head -n1)
[ -n "$release" ] || { echo "no apt source to derive the $pocket pocket from" >&2; exit 1; }
list=/etc/apt/sources.list.d/dep8-$pocket.list
printf '%s\n' "$lines" | sed '/^$/d' | sort -u > "$list"
apt-get -q --no-list-cleanup -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=/dev/null update
mkdir -p /etc/apt/preferences.d
printf 'Package: *\nPin: release a=%s-%s\nPin-Priority: 500\n' "$release" "$pocket" > "/etc/apt/preferences.d/dep8-$pocket-baseline"
if [ -n "$pkgs" ]; then
    bins=$(printf '%s' "$pkgs" | tr ',' '\n' | sed -n '/^src:/!p' | tr '\n' ' ')
    srcs=$(printf '%s' "$pkgs" | tr ',' '\n' | sed -n 's/^src://p' | tr '\n' ' ')
    [ -z "$srcs" ] || bins="$bins $(apt-cache showsrc $srcs | awk '/^Package-List:/ { show=1; next } (/^ / && show==1) { print $1; next } { show=0 }' | sort -u | tr '\n' ' ')"
    printf 'Package: %s\nPin: release a=%s-%s\nPin-Priority: 995\n\nPackage: *\nPin: release a=%s\nPin-Priority: 990\n' \
        "$bins" "$release" "$pocket" "$release" > "/etc/apt/preferences.d/dep8-$pocket"
fi
"#;

/// Where autopkgtest keeps its named setup commands (`--setup-commands
/// enable-sudo`), used when it is installed.
const NAMED_SETUP_COMMANDS: &str = "/usr/share/autopkgtest/setup-commands";

#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// `--copy HOST:TESTBED`.
    pub copies: Vec<(PathBuf, String)>,
    /// `--add-apt-source "deb URL SUITE COMPONENTS"`.
    pub apt_sources: Vec<String>,
    /// `--apt-pocket POCKET[=PKG,src:SRC,...]`.
    pub apt_pockets: Vec<String>,
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
            && self.apt_pockets.is_empty()
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
        for pocket in &self.apt_pockets {
            let (pocket, packages) = pocket.split_once('=').unwrap_or((pocket, ""));
            let req = ExecRequest::new(["sh", "-ec", APT_POCKET, "apt-pocket", pocket, packages]);
            run(
                tb,
                req,
                &format!("enabling the {pocket} pocket"),
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
