//! Preparing a freshly opened (or reverted) testbed before any test, as
//! autopkgtest 5.49's "test bed setup options" do: `--copy`,
//! `--add-apt-source`, `--add-apt-release`, `--apt-pocket`,
//! `--pin-packages`, `--apt-default-release`, `--setup-commands`,
//! `-U/--apt-upgrade` and `--setup-commands-boot`. Commands run as root with
//! `sh -ec`; exit 100 blames the package (badpkg), any other failure the
//! testbed.

use crate::cache::{say, AptCache, ListsKey, ListsReuse};
use crate::capability::Capability;
use crate::error::Error;
use crate::testbed::{ExecRequest, Output, Tap, Testbed};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The apt part of the setup, in autopkgtest 5.49's order, configured by
/// the environment (lists are newline-separated):
/// - `DEP8_DEFAULT_RELEASE`: `--apt-default-release`, pinned at 990;
/// - `DEP8_RELEASES`, `DEP8_POCKETS`: `--add-apt-release R` and
///   `--apt-pocket P[=PKGS]` (the release `BASE-P`, BASE being the first
///   suite of the testbed's own sources). For each, deb and deb-src entries
///   copied from the testbed's own entries for BASE (one-line and deb822),
///   and a baseline pin at 500 over NotAutomatic;
/// - `DEP8_SOURCES`: `--add-apt-source` lines; `DEP8_SOURCE_FILES`: copied
///   .list/.sources files, added under their own names;
/// - `DEP8_PINS`: `--pin-packages R=PKGS` (and the pockets' PKGS): only
///   PKGS from R (995), the rest of R at 100.
const APT_SETUP: &str = r#"lists=/etc/apt/sources.list.d prefs=/etc/apt/preferences.d
mkdir -p "$lists" "$prefs"
# pin FILE PACKAGES RELEASE PRIORITY: RELEASE may be a suite (a=) or a
# codename (n=), as in sources.list.
pin() {
    printf 'Package: %s\nPin: release a=%s\nPin-Priority: %s\n\nPackage: %s\nPin: release n=%s\nPin-Priority: %s\n\n' \
        "$2" "$3" "$4" "$2" "$3" "$4" >> "$prefs/$1"
}
[ -z "$DEP8_DEFAULT_RELEASE" ] || { rm -f "$prefs/dep8-00-default-release.pref"; pin dep8-00-default-release.pref '*' "$DEP8_DEFAULT_RELEASE" 990; }
releases=$DEP8_RELEASES pins=$DEP8_PINS
if [ -n "$DEP8_RELEASES$DEP8_POCKETS" ]; then
    base=$(sed -n 's/^Suites:[[:space:]]*\([^[:space:]]*\).*/\1/Ip' "$lists"/*.sources 2>/dev/null | head -n1)
    [ -n "$base" ] || base=$(cat /etc/apt/sources.list "$lists"/*.list 2>/dev/null |
        sed -En 's/^deb +(\[[^]]*\] *)?[^ ]+ +([^ ]+) .*/\2/p' | head -n1)
    [ -n "$base" ] || { echo "cannot guess the testbed's release from its apt sources, but adding releases or pockets needs it" >&2; exit 1; }
    echo "testbed release detected to be: $base"
    for p in $DEP8_POCKETS; do
        releases="$releases
$base-${p%%=*}"
        case $p in *=?*) pins="$pins
$base-${p%%=*}=${p#*=}" ;; esac
    done
    for r in $(printf '%s\n' $releases | awk 'NF && !seen[$0]++'); do
        cat /etc/apt/sources.list "$lists"/*.list 2>/dev/null |
            awk -v base="$base" -v rel="$r" '$1 == "deb" {
                    i = 2; opts = ""
                    if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts $i " "; i++ } opts = opts $i " "; i++ }
                    if ($(i + 1) != base) next
                    comps = ""; for (j = i + 2; j <= NF; j++) comps = comps " " $j
                    print "deb " opts $i " " rel comps; print "deb-src " opts $i " " rel comps
                }' > "$lists/dep8-add-apt-release-$r.list"
        cat "$lists"/*.sources 2>/dev/null |
            awk -v base="$base" -v rel="$r" 'BEGIN { RS = ""; ORS = "\n\n" } {
                    n = split($0, l, "\n"); types = ""; suites = ""
                    for (i = 1; i <= n; i++) {
                        if (tolower(l[i]) ~ /^types:/) types = " " substr(l[i], 7) " "
                        if (tolower(l[i]) ~ /^suites:/) suites = " " substr(l[i], 8) " "
                    }
                    gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites)
                    if (types !~ / deb / || index(suites, " " base " ") == 0) next
                    out = ""
                    for (i = 1; i <= n; i++) {
                        if (tolower(l[i]) ~ /^types:/) l[i] = "Types: deb deb-src"
                        else if (tolower(l[i]) ~ /^suites:/) l[i] = "Suites: " rel
                        out = out (out == "" ? "" : "\n") l[i]
                    }
                    print out
                }' > "$lists/dep8-add-apt-release-$r.sources"
        for f in "$lists/dep8-add-apt-release-$r.list" "$lists/dep8-add-apt-release-$r.sources"; do
            [ -s "$f" ] || rm -f "$f"
        done
        rm -f "$prefs/dep8-zz-$r-baseline.pref"
        pin "dep8-zz-$r-baseline.pref" '*' "$r" 500
    done
fi
if [ -n "$DEP8_SOURCES" ]; then
    printf '%s\n' "$DEP8_SOURCES" >> "$lists/dep8-add-apt-sources.list"
fi
for f in $DEP8_SOURCE_FILES; do
    cat "$f" >> "$lists/${f##*/}"
    case $f in *.sources) echo >> "$lists/${f##*/}" ;; esac
done
for p in $(printf '%s\n' $pins | awk 'NF && !seen[$0]++'); do
    r=${p%%=*}
    pkgs=$(printf '%s' "${p#*=}" | tr ',' '\n' | awk 'NF { x = $0; sub(/^src:/, "", x); if (x !~ /:/) $0 = $0 ":any"; printf "%s ", $0 }')
    rm -f "$prefs/dep8-pin-$r.pref"
    pin "dep8-pin-$r.pref" '*' "$r" 100
    [ -z "$pkgs" ] || pin "dep8-pin-$r.pref" "${pkgs% }" "$r" 995
done
"#;

/// apt-get update, run after [`APT_SETUP`] where it adds sources or `-U`
/// is given (and the package cache has no fresh lists for the sources):
/// its failure is a testbed failure, as 5.49's "failed testbed apt update"
/// (a 404 at once, other failures after two retries).
const APT_UPDATE: &str = r#"echo "updating the testbed's package index (apt-get update)"
O=$(bash -o pipefail -ec 'apt-get update 2>&1 | tee /proc/self/fd/2') ||
    { [ "${O%404*Not Found*}" = "$O" ] || { echo "apt-get update failed: a source is not there (404)" >&2; exit 1; }; sleep 15; apt-get update; } ||
    { sleep 60; apt-get update; } ||
    { echo "apt-get update failed" >&2; exit 1; }
"#;

/// `-U`, after the setup commands (the package lists were updated before
/// them): dist-upgrade, then autoremove ([`AUTOREMOVE`]).
const DIST_UPGRADE: &str = "apt-get dist-upgrade -y -q -o Dpkg::Options::=--force-confnew";
const AUTOREMOVE: &str = "apt-get --purge autoremove -y -q";

/// Where autopkgtest keeps its named setup commands (`--setup-commands
/// enable-sudo`), used when it is installed.
const NAMED_SETUP_COMMANDS: &str = "/usr/share/autopkgtest/setup-commands";

#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// `--copy HOST:TESTBED`.
    pub copies: Vec<(PathBuf, String)>,
    /// `--add-apt-source`.
    pub apt_sources: Vec<AptSource>,
    /// `--add-apt-release RELEASE`.
    pub apt_releases: Vec<String>,
    /// `--apt-pocket POCKET[=PKG,src:SRC,...]`.
    pub apt_pockets: Vec<String>,
    /// `--pin-packages RELEASE=PKG,src:SRC,...`.
    pub pins: Vec<(String, String)>,
    /// `--apt-default-release`.
    pub default_release: Option<String>,
    /// `-U`: apt-get update before the commands, dist-upgrade after.
    pub apt_upgrade: bool,
    /// `--no-apt-fallback`: keep the pins when dependencies cannot be
    /// installed under them.
    pub no_apt_fallback: bool,
    /// Shell command lists, in order (`--setup-commands`).
    pub commands: Vec<String>,
    /// `--setup-commands-boot`: after `commands`, and after every reboot.
    pub boot_commands: Vec<String>,
    /// Binary packages given on the command line: published to apt in the
    /// testbed as a local repository pinned above every other, so that
    /// dependencies are satisfied from them first.
    pub binaries: Vec<PathBuf>,
    /// The machine's package cache, for apt's downloads and lists (`None`
    /// with `--no-cache`).
    pub apt_cache: Option<AptCache>,
}

/// The two parts of the setup: what a testbed can keep as its revert base
/// ([`crate::testbed::Testbed::commit_base`]), and what follows every boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupPart {
    /// `--copy`, the apt options and `--setup-commands`.
    Base,
    /// `--setup-commands-boot` and publishing the binaries.
    EveryBoot,
}

/// One `--add-apt-source`, in a form autopkgtest 5.49 takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AptSource {
    /// A one-line `deb`/`deb-src` entry, options such as `[signed-by=...]`
    /// included.
    Line(String),
    /// A host `.list` or `.sources` (deb822) file, added under its name.
    File(PathBuf),
}

/// Splits `--add-apt-source` arguments as autopkgtest 5.49 does: each line
/// of each argument is an entry (trimmed; blank and `#` lines dropped,
/// duplicates once); a readable host file ending in `.list` or `.sources`
/// is added whole. Launchpad PPAs (`ppa:OWNER/NAME`) are refused: dep8
/// cannot fetch their keys. A source refused is a usage error.
pub fn apt_sources(args: &[String]) -> Result<Vec<AptSource>, Error> {
    let refused = |why: String| Error::Usage(format!("--add-apt-source {why}"));
    let mut sources = Vec::new();
    for line in args.iter().flat_map(|a| a.lines()).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = Path::new(line);
        let source = if is_one_line_entry(line) {
            AptSource::Line(line.to_string())
        } else if (line.ends_with(".list") || line.ends_with(".sources")) && path.is_file() {
            std::fs::File::open(path).map_err(|e| refused(format!("{line}: {e}")))?;
            AptSource::File(path.to_path_buf())
        } else if line.to_ascii_lowercase().starts_with("ppa:") {
            return Err(refused(format!(
                "{line}: dep8 does not add Launchpad PPAs; give their \
                 \"deb [signed-by=KEY] URL SUITE COMPONENTS\" line and --copy the key"
            )));
        } else {
            return Err(Error::Usage(format!(
                "--add-apt-source: invalid apt source: {line}"
            )));
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    Ok(sources)
}

/// autopkgtest's pattern for a one-line entry, `TYPE [OPTIONS] URI SUITE
/// COMPONENTS`, as its regular expression matches: the type, then at least
/// three words (a flat repository's `[trusted=yes] URI /` passes).
fn is_one_line_entry(line: &str) -> bool {
    line.strip_prefix("deb-src")
        .or_else(|| line.strip_prefix("deb"))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .is_some_and(|rest| rest.split_whitespace().count() >= 3)
}

/// `--pin-packages RELEASE=PKG,...`.
pub fn pin_packages(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((release, packages)) if !release.trim().is_empty() => {
            Ok((release.trim().to_string(), packages.trim().to_string()))
        }
        _ => Err(format!(
            "--pin-packages {arg}: expected RELEASE=PKG,src:NAME,..."
        )),
    }
}

/// Why setup failed: a setup command that exited 100 blames the package
/// (`BadPackage`), anything else the testbed.
pub type SetupError = crate::error::Error;

/// `--setup-commands` takes commands, a file holding them, or the name of
/// one of autopkgtest's own setup scripts; a file that cannot be read is a
/// usage error.
pub fn setup_command(arg: &str) -> Result<String, Error> {
    let named = Path::new(NAMED_SETUP_COMMANDS).join(arg);
    let file = [Path::new(arg), named.as_path()]
        .into_iter()
        .find(|p| !arg.contains('\n') && p.is_file());
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::Usage(format!("--setup-commands {}: {e}", path.display()))),
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
    /// Whether `part` has nothing to do.
    pub fn is_empty_part(&self, part: SetupPart) -> bool {
        match part {
            SetupPart::Base => {
                self.copies.is_empty() && !self.changes_apt() && self.commands.is_empty()
            }
            SetupPart::EveryBoot => self.boot_commands.is_empty() && self.binaries.is_empty(),
        }
    }

    /// Whether the run has a base part, which the engine applies once and
    /// asks the testbed to keep as its revert base ([`Testbed::commit_base`]).
    pub fn keeps_a_base(&self) -> bool {
        !self.is_empty_part(SetupPart::Base)
    }

    /// The apt options given: they change the testbed's apt configuration
    /// (and need root there).
    pub fn apt_options(&self) -> Vec<&'static str> {
        [
            ("--add-apt-source", !self.apt_sources.is_empty()),
            ("--add-apt-release", !self.apt_releases.is_empty()),
            ("--apt-pocket", !self.apt_pockets.is_empty()),
            ("--pin-packages", !self.pins.is_empty()),
            ("--apt-default-release", self.default_release.is_some()),
            ("-U/--apt-upgrade", self.apt_upgrade),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }

    fn changes_apt(&self) -> bool {
        !self.apt_options().is_empty()
    }

    /// What is given that changes the testbed as a system, beyond the
    /// scratch dir and the user's own setup commands: the apt options,
    /// `--copy`, binaries to install. `dep8 run` refuses these on the host.
    pub fn system_changes(&self) -> Vec<String> {
        let mut given: Vec<String> = self.binaries.first().map_or_else(Vec::new, |deb| {
            vec![format!("{} (a binary to install)", deb.display())]
        });
        given.extend(self.apt_options().into_iter().map(String::from));
        if !self.copies.is_empty() {
            given.push("--copy".into());
        }
        given
    }

    /// Whether a failed dependency installation is retried without the
    /// pins of `--pin-packages` and `--apt-pocket P=PKGS`, one release at a
    /// time, as autopkgtest's apt fallback does.
    pub fn apt_fallback(&self) -> bool {
        !self.no_apt_fallback
            && (!self.pins.is_empty() || self.apt_pockets.iter().any(|p| p.contains('=')))
    }

    /// Applies `part`, in autopkgtest 5.49's order: copies, apt
    /// configuration and update, setup commands, dist-upgrade (the base);
    /// then boot commands and the given binaries. `normal_user` is exported
    /// to the commands as `AUTOPKGTEST_NORMAL_USER`.
    pub async fn apply(
        &self,
        tb: &dyn Testbed,
        part: SetupPart,
        normal_user: Option<&str>,
        timeout: Duration,
        log: Tap,
    ) -> Result<(), SetupError> {
        if part == SetupPart::EveryBoot {
            self.boot(tb, normal_user, timeout, log.clone()).await?;
            if !self.binaries.is_empty() {
                self.publish_binaries(tb, timeout, &log).await?;
            }
            return Ok(());
        }
        for (host, path) in &self.copies {
            tb.copy_down(host, path).await?;
        }
        if self.changes_apt() {
            self.configure_apt(tb, timeout, &log).await?;
        }
        let commands = self.commands.iter().map(String::as_str);
        run_commands(tb, commands, false, normal_user, timeout, &log).await?;
        if self.apt_upgrade {
            self.upgrade(tb, timeout, &log).await?;
        }
        Ok(())
    }

    /// `-U`'s dist-upgrade and autoremove, skipped where the package cache
    /// knows that they changed nothing from the testbed's very state.
    async fn upgrade(
        &self,
        tb: &dyn Testbed,
        timeout: Duration,
        log: &Tap,
    ) -> Result<(), SetupError> {
        let inputs = match &self.apt_cache {
            Some(cache) => match cache.upgrade_inputs(tb).await {
                Ok(inputs) if cache.upgrade_changed_nothing(&inputs) => {
                    say(
                        log,
                        "apt-get dist-upgrade and autoremove skipped: from the same packages, \
                         lists and apt configuration they changed nothing before",
                    );
                    return Ok(());
                }
                Ok(inputs) => Some((cache, inputs)),
                Err(why) => {
                    say(log, &format!("upgrade not cached: {why}"));
                    None
                }
            },
            None => None,
        };
        let upgrade =
            format!("export DEBIAN_FRONTEND=noninteractive; {DIST_UPGRADE} && {AUTOREMOVE}");
        let req = ExecRequest::new(["sh", "-ec", &upgrade]);
        let what = "upgrading the testbed (apt-get dist-upgrade)";
        self.with_cached_debs(tb, DIST_UPGRADE, log, run(tb, req, what, timeout, log))
            .await?;
        if let Some((cache, before)) = inputs {
            if cache
                .upgrade_inputs(tb)
                .await
                .is_ok_and(|after| after == before)
            {
                if let Err(why) = cache.note_upgrade_changed_nothing(&before).await {
                    say(log, &format!("upgrade not cached: {why}"));
                }
            }
        }
        Ok(())
    }

    /// Runs `apt_step` with the package cache around it: the packages the
    /// apt-get command `apt` would download are taken from the cache first,
    /// and those downloaded stored after.
    pub async fn with_cached_debs<T>(
        &self,
        tb: &dyn Testbed,
        apt: &str,
        log: &Tap,
        apt_step: impl std::future::Future<Output = T>,
    ) -> T {
        let Some(cache) = &self.apt_cache else {
            return apt_step.await;
        };
        let missing = cache.seed_debs(tb, apt, log).await;
        let result = apt_step.await;
        cache.store_debs(tb, &missing, log).await;
        result
    }

    /// The package cache, where the testbed's installs may be kept as
    /// layers for later runs ([`Testbed::layer_base`]): only when apt alone
    /// made the testbed what it is, so that the apt state in a layer's key
    /// tells the whole of it (no `--copy` or setup commands).
    pub fn layers_cache(&self, tb: &dyn Testbed) -> Option<(&AptCache, String)> {
        let apt_alone =
            self.copies.is_empty() && self.commands.is_empty() && self.boot_commands.is_empty();
        let cache = self.apt_cache.as_ref().filter(|_| apt_alone)?;
        Some((cache, tb.layer_base()?))
    }

    /// The package cache for the testbed's apt lists: only on a testbed
    /// that reverts, which is dep8's to change. A testbed that persists
    /// (null: the host; an ssh machine without revert) keeps its own
    /// lists, which other apt runs there may be reading.
    pub fn lists_cache(&self, tb: &dyn Testbed) -> Option<&AptCache> {
        self.apt_cache
            .as_ref()
            .filter(|_| tb.capabilities().has(Capability::Revert))
    }

    /// Brings the testbed's package lists up to date: from the package
    /// cache when it holds lists for the same sources younger than its
    /// maximum age, else with the script `update` (whose lists are then
    /// cached). The log says which, and why.
    pub async fn update_lists(
        &self,
        tb: &dyn Testbed,
        update: &str,
        timeout: Duration,
        log: &Tap,
    ) -> Result<(), SetupError> {
        let key = match self.lists_cache(tb) {
            Some(cache) => match cache.lists_key(tb).await? {
                ListsKey::Local => {
                    say(
                        log,
                        "apt lists: refreshed (a source is local, so never reused)",
                    );
                    None
                }
                ListsKey::Cacheable(key) => match cache.restore_lists(tb, &key).await {
                    Ok(ListsReuse::Reused(age)) => {
                        say(
                            log,
                            &format!(
                                "apt lists: reused from dep8's cache (same sources, {}s old, \
                                 at most {}s)",
                                age.as_secs(),
                                cache.lists_max_age().as_secs()
                            ),
                        );
                        return Ok(());
                    }
                    Ok(ListsReuse::Missing) => {
                        say(log, "apt lists: refreshed (none cached for these sources)");
                        Some((cache, key))
                    }
                    Ok(ListsReuse::Stale(age)) => {
                        say(
                            log,
                            &format!(
                                "apt lists: refreshing the cached ones ({}s old, more than {}s)",
                                age.as_secs(),
                                cache.lists_max_age().as_secs()
                            ),
                        );
                        Some((cache, key))
                    }
                    Err(why) => {
                        say(
                            log,
                            &format!("apt lists: refreshed (the cache failed: {why})"),
                        );
                        Some((cache, key))
                    }
                },
            },
            None => None,
        };
        let req = ExecRequest::new(["sh", "-ec", update]);
        run(tb, req, "updating the package lists", timeout, log).await?;
        if let Some((cache, key)) = key {
            if let Err(why) = cache.store_lists(tb, &key).await {
                say(log, &format!("apt lists: not cached: {why}"));
            }
        }
        Ok(())
    }

    /// `--setup-commands-boot`: after the setup and after every reboot.
    pub async fn boot(
        &self,
        tb: &dyn Testbed,
        normal_user: Option<&str>,
        timeout: Duration,
        log: Tap,
    ) -> Result<(), SetupError> {
        let commands = self.boot_commands.iter().map(String::as_str);
        run_commands(tb, commands, true, normal_user, timeout, &log).await
    }

    /// Runs [`APT_SETUP`]; `--add-apt-source` files are copied to the
    /// scratch dir first.
    async fn configure_apt(
        &self,
        tb: &dyn Testbed,
        timeout: Duration,
        log: &Tap,
    ) -> Result<(), SetupError> {
        let mut lines = Vec::new();
        let mut files = Vec::new();
        for source in &self.apt_sources {
            match source {
                AptSource::Line(line) => lines.push(line.as_str()),
                AptSource::File(path) => {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    let tb_path =
                        format!("{}/apt-sources/{}", tb.scratch(), sanitize_apt_name(&name));
                    tb.copy_down(path, &tb_path).await?;
                    files.push(tb_path);
                }
            }
        }
        let pins: Vec<String> = self.pins.iter().map(|(r, p)| format!("{r}={p}")).collect();
        let update = !self.apt_sources.is_empty()
            || !self.apt_releases.is_empty()
            || !self.apt_pockets.is_empty()
            || self.apt_upgrade;
        let req = ExecRequest::new(["sh", "-ec", APT_SETUP])
            .env(
                "DEP8_DEFAULT_RELEASE",
                self.default_release.as_deref().unwrap_or(""),
            )
            .env("DEP8_RELEASES", &self.apt_releases.join("\n"))
            .env("DEP8_POCKETS", &self.apt_pockets.join("\n"))
            .env("DEP8_SOURCES", &lines.join("\n"))
            .env("DEP8_SOURCE_FILES", &files.join("\n"))
            .env("DEP8_PINS", &pins.join("\n"));
        run(
            tb,
            req,
            "setting up apt (apt sources, releases, pockets, pinning)",
            timeout,
            log,
        )
        .await?;
        if update {
            self.update_lists(tb, APT_UPDATE, timeout, log).await?;
        }
        Ok(())
    }
}

/// A file name apt reads in sources.list.d: what it ignores (other
/// characters than letters, digits, `_`, `-` and `.`) becomes `_`.
fn sanitize_apt_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs setup commands (`boot`: `--setup-commands-boot`) as root.
async fn run_commands<'a>(
    tb: &dyn Testbed,
    commands: impl Iterator<Item = &'a str>,
    boot: bool,
    normal_user: Option<&str>,
    timeout: Duration,
    log: &Tap,
) -> Result<(), SetupError> {
    let (marker, what) = if boot {
        (
            "AUTOPKGTEST_IS_SETUP_BOOT_COMMAND",
            "testbed boot setup commands",
        )
    } else {
        ("AUTOPKGTEST_IS_SETUP_COMMAND", "testbed setup commands")
    };
    for command in commands {
        let mut req = ExecRequest::new(["sh", "-ec", command]).env(marker, "1");
        if let Some(user) = normal_user {
            req = req
                .env("AUTOPKGTEST_NORMAL_USER", user)
                .env("ADT_NORMAL_USER", user);
        }
        run(tb, req, what, timeout, log).await?;
    }
    Ok(())
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
/// host, before a testbed is opened. One that is not, or cannot be read, is
/// the package's fault.
pub fn check_binary(path: &Path) -> Result<(), Error> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: &str| {
        Error::BadPackage(format!(
            "{}: not a Debian binary package: {why}",
            path.display()
        ))
    };
    let io = |e: std::io::Error| Error::BadPackage(format!("{}: {e}", path.display()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_sources_in_the_forms_autopkgtest_takes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.sources");
        std::fs::write(
            &file,
            "Types: deb\nURIs: http://x\nSuites: y\nComponents: main\n",
        )
        .unwrap();
        let line = "deb [signed-by=/k.asc] http://deb.debian.org/debian bookworm-backports main";
        let args = [
            format!("{line}\n# a comment\n\n  deb-src http://x y main contrib  "),
            line.to_string(),
            file.display().to_string(),
        ];
        assert_eq!(
            apt_sources(&args).unwrap(),
            [
                AptSource::Line(line.into()),
                AptSource::Line("deb-src http://x y main contrib".into()),
                AptSource::File(file),
            ]
        );
        for bad in [
            "deb http://x",
            "debx http://x y z",
            "ppa:owner/name",
            "/nonexistent.list",
        ] {
            assert!(
                matches!(apt_sources(&[bad.to_string()]), Err(Error::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pins_need_a_release() {
        assert_eq!(
            pin_packages("unstable=foo,src:bar").unwrap(),
            ("unstable".into(), "foo,src:bar".into())
        );
        assert!(pin_packages("foo").is_err());
        assert!(pin_packages("=foo").is_err());
    }
}
