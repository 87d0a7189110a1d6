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
/// as autopkgtest's pinning does (by suite or codename).
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
# pin PACKAGES RELEASE PRIORITY: RELEASE may be a suite (a=) or a codename
# (n=), as in sources.list; autopkgtest's a= alone misses codenames.
pin() {
    printf 'Package: %s\nPin: release a=%s\nPin-Priority: %s\n\nPackage: %s\nPin: release n=%s\nPin-Priority: %s\n\n' \
        "$1" "$2" "$3" "$1" "$2" "$3"
}
mkdir -p /etc/apt/preferences.d
pin '*' "$release-$pocket" 500 > "/etc/apt/preferences.d/dep8-$pocket-baseline"
if [ -n "$pkgs" ]; then
    bins=$(printf '%s' "$pkgs" | tr ',' '\n' | sed -n '/^src:/!p' | tr '\n' ' ')
    srcs=$(printf '%s' "$pkgs" | tr ',' '\n' | sed -n 's/^src://p' | tr '\n' ' ')
    [ -z "$srcs" ] || bins="$bins $(apt-cache showsrc $srcs | awk '/^Package-List:/ { show=1; next } (/^ / && show==1) { print $1; next } { show=0 }' | sort -u | tr '\n' ' ')"
    { pin "$bins" "$release-$pocket" 995; pin '*' "$release" 990; } > "/etc/apt/preferences.d/dep8-$pocket"
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

/// Indexes the `.deb` files in `$1` (the binaries dir) as a flat apt
/// repository with dpkg-deb and coreutils only (a minimal testbed has no
/// apt-ftparchive, and may have no package lists to install it from),
/// pins it at 1002 and reads it in. As autopkgtest does, given binaries that
/// are already installed are then reinstalled from it: a test depending on
/// them would otherwise use the testbed's copy. Exit 100: a binary is
/// unreadable or cannot be installed (the package's fault).
const PUBLISH_BINARIES: &str = r#"dir=$1
cd "$dir"
: > Packages
packages=
for deb in *.deb; do
    fields=$(dpkg-deb --field "$deb") || { echo "$deb: not a binary package dpkg-deb can read" >&2; exit 100; }
    printf '%s\nFilename: ./%s\nSize: %s\nSHA256: %s\n\n' "$fields" "$deb" "$(stat -c %s "$deb")" \
        "$(sha256sum < "$deb" | cut -d' ' -f1)" >> Packages
    packages="$packages $(printf '%s\n' "$fields" | sed -n 's/^Package: *//p')"
done
mkdir -p /etc/apt/preferences.d
printf 'Package: *\nPin: origin ""\nPin-Priority: 1002\n' > /etc/apt/preferences.d/90dep8
echo "deb [trusted=yes] file://$dir /" > /etc/apt/sources.list.d/dep8-binaries.list
apt-get -q --no-list-cleanup -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/dep8-binaries.list \
    -o Dir::Etc::sourceparts=/dev/null update || { echo "apt-get update of $dir failed" >&2; exit 1; }
installed=
for pkg in $packages; do
    [ "$(dpkg-query -W -f '${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "ii " ] || installed="$installed $pkg"
done
if [ -n "$installed" ]; then
    echo "reinstalling the given binaries that are installed:$installed"
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Options::=--force-confnew --reinstall install $installed ||
        { echo "installing the given binaries$installed failed" >&2; exit 100; }
fi
"#;

/// Undoes [`PUBLISH_BINARIES`]'s apt configuration, on a testbed that
/// cannot revert (as autopkgtest's binaries reset).
const UNPUBLISH_BINARIES: &str =
    "rm -f /etc/apt/sources.list.d/dep8-binaries.list /etc/apt/preferences.d/90dep8; \
    apt-get -q update || { sleep 15; apt-get -q update; }";

/// Removes the published binaries from the testbed's apt sources, where
/// no revert will.
pub async fn unpublish_binaries(
    tb: &dyn Testbed,
    timeout: Duration,
    log: &Tap,
) -> Result<(), SetupError> {
    let req = ExecRequest::new(["sh", "-ec", UNPUBLISH_BINARIES]);
    run(tb, req, "resetting the apt configuration", timeout, log).await
}

impl Setup {
    /// Copies the binaries to `SCRATCH/binaries` and publishes them there
    /// ([`PUBLISH_BINARIES`]).
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
        let req = ExecRequest::new(["sh", "-ec", PUBLISH_BINARIES, "publish", &dir]);
        run(tb, req, "publishing the binaries", timeout, log).await
    }
}

/// Checks that `path` is a Debian binary package as far as its `ar`
/// structure goes (`debian-binary`, then `control.tar*` and `data.tar*`, all
/// whole), so that random bytes or a truncated download are refused on the
/// host, before a testbed is opened.
pub fn check_binary(path: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: &str| format!("{}: not a Debian binary package: {why}", path.display());
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut magic = [0u8; 8];
    if file.read_exact(&mut magic).is_err() || &magic != b"!<arch>\n" {
        return Err(bad("no ar archive header"));
    }
    let (mut at, mut members) = (8u64, Vec::new());
    while at < len {
        let mut header = [0u8; 60];
        if file.read_exact(&mut header).is_err() || &header[58..] != b"`\n" {
            return Err(bad("truncated or corrupt ar member header"));
        }
        let name = String::from_utf8_lossy(&header[..16]);
        let name = name.trim_end().trim_end_matches('/').to_string();
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("corrupt ar member size"))?;
        if at + 60 + size > len {
            return Err(bad(&format!("{name} is truncated")));
        }
        at = (at + 60 + size + size % 2).min(len);
        file.seek(SeekFrom::Start(at)).map_err(io)?;
        members.push(name);
    }
    match members.as_slice() {
        [first, control, data, ..]
            if first == "debian-binary"
                && control.starts_with("control.tar")
                && data.starts_with("data.tar") =>
        {
            Ok(())
        }
        _ => Err(bad(&format!("unexpected members {members:?}"))),
    }
}

/// Runs one setup step as root with its output in the log; a failure names
/// the step and quotes the last line it wrote on stderr.
async fn run(
    tb: &dyn Testbed,
    req: ExecRequest,
    what: &str,
    timeout: Duration,
    log: &Tap,
) -> Result<(), SetupError> {
    let req = req
        .stdout(Output::default().with_tap(log.clone()))
        .stderr(Output::capture().with_tap(log.clone()))
        .timeout(timeout);
    let out = tb.exec(req).await?;
    let said = match out.stderr_last_line() {
        line if line.is_empty() => line,
        line => format!(": {line}"),
    };
    match out.status.code() {
        0 => Ok(()),
        _ if out.timed_out => Err(SetupError::Testbed(format!(
            "{what} timed out after {}s",
            timeout.as_secs()
        ))),
        100 => Err(SetupError::BadPackage(format!(
            "{what} failed with status 100{said}"
        ))),
        code => Err(SetupError::Testbed(format!(
            "{what} failed with status {code}{said}"
        ))),
    }
}
