//! Installing a test's dependencies in the testbed with apt, as autopkgtest
//! does on every testbed where it is root.
//!
//! autopkgtest builds a dummy `autopkgtest-satdep` package whose Depends are
//! the test's and lets `apt-get --fix-broken install` resolve it. dep8 uses
//! `apt-get satisfy` (apt >= 1.9), which takes the same relation syntax —
//! alternatives, versions, `[arch]` qualifiers, `<profile>`s — directly, so
//! nothing has to be built on the host and no dummy package is left to purge.

use crate::cache::{say, AptCache, CacheError};
use crate::setup::{Setup, SetupError};
use crate::testbed::{ExecRequest, Output, Result, Tap, Testbed, TestbedError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs `apt-get update` when the testbed has no package lists of a remote
/// archive (lists of local `file:` sources, such as the given binaries',
/// are named from their path and start with `_`).
pub const UPDATE_IF_NO_LISTS: &str =
    "ls /var/lib/apt/lists | grep -q '^[^_].*_Packages$' || apt-get update -q";

/// Whether dependencies are installed or only checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DependencyPolicy {
    /// Install missing dependencies with apt (needs root on the testbed).
    #[default]
    Install,
    /// Never change the testbed's packages: a missing dependency is badpkg,
    /// and the source is not built for its binaries (`-B` is implied). The
    /// default for the host itself (`null`) under `dep8 run`.
    CheckOnly,
}

/// What `apt-get satisfy` said when it could not install the dependencies.
pub struct Unsatisfiable(pub String);

/// The pins `--pin-packages` and `--apt-pocket P=PKGS` leave in the testbed.
const PIN_FILES: &str = "/etc/apt/preferences.d/dep8-pin-*.pref";

/// Whether the testbed has package lists of a remote archive (see
/// [`UPDATE_IF_NO_LISTS`]).
const HAS_LISTS: &str = "ls /var/lib/apt/lists | grep -q '^[^_].*_Packages$'";

/// Installs the alternative groups `deps` without recommends (unless
/// `recommends`), after updating the package lists where the testbed has
/// none. apt's output goes to `log`. Where `setup` allows the apt
/// fallback, a failure is retried after dropping the pins of one release
/// at a time, as autopkgtest's does. The packages go through `setup`'s
/// package cache. On a testbed that keeps layers and is `untouched` since
/// its last revert (no test or build ran:
/// [`crate::engine::packages::PackageState::touched`]), a layer an earlier
/// run kept after the same install in the same state is stacked instead,
/// and an install is kept as one.
#[allow(clippy::too_many_arguments)]
pub async fn apt_satisfy(
    tb: &dyn Testbed,
    deps: &[String],
    recommends: bool,
    setup: &Setup,
    untouched: bool,
    timeout: Duration,
    log: Tap,
) -> Result<std::result::Result<(), Unsatisfiable>> {
    // With the cache, lists come from it where they can; without, as
    // before it: apt-get update in the install script.
    let mut update = UPDATE_IF_NO_LISTS;
    if setup.lists_cache(tb).is_some() {
        update = "true";
        let has_lists = tb.exec(ExecRequest::shell(HAS_LISTS).capture()).await?;
        if !has_lists.status.success() {
            if let Err(SetupError::Testbed(why) | SetupError::BadPackage(why)) = setup
                .update_lists(tb, "apt-get update -q", timeout, &log)
                .await
            {
                return Ok(Err(Unsatisfiable(why)));
            }
        }
    }
    let relations = deps.join(", ");
    let satisfy = format!(
        "apt-get satisfy -y -q {} -o Dpkg::Options::=--force-confnew {}",
        if recommends {
            "--install-recommends"
        } else {
            "--no-install-recommends"
        },
        shell_words::quote(&relations)
    );
    let fallback = if setup.apt_fallback() {
        format!(
            "for f in $(ls -r {PIN_FILES} 2>/dev/null); do \
             echo \"WARNING: Test dependencies are unsatisfiable with apt pinning; retrying without $f\" >&2; \
             rm -f \"$f\"; {satisfy} && exit 0; done; "
        )
    } else {
        String::new()
    };
    let script = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; \
         {update}; {satisfy} && exit 0; {fallback}exit 1"
    );
    let layer = match setup.layers_cache(tb).filter(|_| untouched) {
        // Keyed by the whole script: with apt's fallback, pins may go.
        Some((cache, base)) => KeptLayer::for_install(tb, cache, &base, &script, &log).await,
        None => None,
    };
    if let Some(layer) = &layer {
        if layer.stack(tb, &log).await {
            return Ok(Ok(()));
        }
    }
    let said = Arc::new(Mutex::new(Vec::new()));
    let apt_log = match &layer {
        Some(_) => recording(log.clone(), said.clone()),
        None => log.clone(),
    };
    let install = tb.exec(
        ExecRequest::shell(&script)
            .stdout(Output::capture().with_tap(apt_log.clone()))
            .stderr(Output::capture().with_tap(apt_log))
            .timeout(timeout),
    );
    let out = setup.with_cached_debs(tb, &satisfy, &log, install).await?;
    if out.status.success() {
        if let Some(layer) = &layer {
            let said = std::mem::take(&mut *said.lock().unwrap_or_else(|e| e.into_inner()));
            layer.keep(tb, &satisfy, said, &log).await;
        }
        return Ok(Ok(()));
    }
    let output = format!("{}{}", out.stdout_text(), out.stderr_text());
    if out.timed_out {
        let said = format!(
            "installing dependencies timed out after {}s",
            timeout.as_secs()
        );
        return Ok(Err(Unsatisfiable(said)));
    }
    if download_failed(&output) {
        // autopkgtest 5.49 too: "apt failed to download packages" is a
        // testbed failure (a mirror's hiccup), not the package's fault.
        return Err(TestbedError::Failure(format!(
            "apt failed to download packages: {}",
            apt_complaint(&output)
        )));
    }
    Ok(Err(Unsatisfiable(apt_complaint(&output))))
}

/// The layer an install leaves on a testbed that keeps layers
/// ([`Testbed::layer_base`]), under its key in the package cache.
struct KeptLayer<'a> {
    cache: &'a AptCache,
    key: String,
}

impl<'a> KeptLayer<'a> {
    /// The layer the install script `apt` leaves on `tb`, whose base is
    /// `base`; `None` (and why, in `log`) when its key cannot be had.
    async fn for_install(
        tb: &dyn Testbed,
        cache: &'a AptCache,
        base: &str,
        apt: &str,
        log: &Tap,
    ) -> Option<KeptLayer<'a>> {
        match cache.layer_key(tb, base, apt).await {
            Ok(key) => Some(KeptLayer { cache, key }),
            Err(why) => {
                say(log, &format!("no kept layer: {why}"));
                None
            }
        }
    }

    /// Stacks the layer if a run kept it, with apt's output then in the
    /// log; whether it did.
    async fn stack(&self, tb: &dyn Testbed, log: &Tap) -> bool {
        let key = &self.key;
        match tb.stack_layer(key).await {
            Ok(true) => {
                let said = self.cache.layer_log(key).await;
                say(
                    log,
                    &format!(
                        "installed: the layer {key}, which an earlier run kept after \
                         the same apt-get on a testbed in the same state; apt did not \
                         run{}",
                        if said.is_some() {
                            ". Its output then:"
                        } else {
                            ""
                        }
                    ),
                );
                if let Some(said) = said {
                    log(&said);
                }
                true
            }
            Ok(false) => false,
            Err(why) => {
                say(log, &format!("kept layer not used: {}", why.detail()));
                false
            }
        }
    }

    /// Keeps what `apt` installed as the layer, with `said`, apt's output.
    async fn keep(&self, tb: &dyn Testbed, apt: &str, said: Vec<u8>, log: &Tap) {
        let key = &self.key;
        let kept = match tb.keep_layer(key, apt).await {
            Ok(()) => self.cache.note_layer_log(key, said).await,
            Err(why) => Err(CacheError::Command(why.detail())),
        };
        match kept {
            Ok(()) => say(
                log,
                &format!("kept what apt installed as the layer {key}, for later runs"),
            ),
            Err(why) => say(log, &format!("layer not kept: {why}")),
        }
    }
}

/// A tap that passes what it gets on to `log` and adds it to `said`.
fn recording(log: Tap, said: Arc<Mutex<Vec<u8>>>) -> Tap {
    Arc::new(move |bytes: &[u8]| {
        said.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        log(bytes);
    })
}

/// Whether apt failed only to download the packages it had resolved
/// (nothing unmet, dpkg never started): autopkgtest's `AptDownloadError`.
fn download_failed(output: &str) -> bool {
    output.contains("E: Unable to fetch some archives")
        && !output.contains("The following packages have unmet dependencies")
        && !output.lines().any(|l| l.starts_with("Unpacking "))
}

/// What apt's output says went wrong, in one line: the unmet dependencies
/// it lists, the first download that failed (with how many more did), and
/// its `E:` lines.
fn apt_complaint(output: &str) -> String {
    let mut said: Vec<String> = Vec::new();
    let mut unmet = false;
    for line in output.lines() {
        if line.starts_with("The following packages have unmet dependencies") {
            unmet = true;
        } else if unmet && line.starts_with(' ') {
            let relation = line.split_once(" : ").map_or(line, |(_, r)| r);
            said.push(relation.trim().to_string());
        } else {
            unmet = false;
        }
    }
    let failed: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("W: Failed to fetch") || l.starts_with("E: Failed to fetch"))
        .collect();
    if let Some(first) = failed.first() {
        let more = match failed.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        said.push(format!(
            "{}{more}",
            first.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    said.extend(
        output
            .lines()
            .filter(|l| l.starts_with("E:") && !l.starts_with("E: Failed to fetch"))
            .map(str::to_string),
    );
    said.join("; ")
}

#[cfg(test)]
mod tests {
    use super::{apt_complaint, download_failed};

    #[test]
    fn a_failed_download_is_not_an_unmet_dependency() {
        let fetch_failed = "Reading package lists...
The following NEW packages will be installed:
  hello
Err:1 http://deb.debian.org/debian bookworm/main amd64 hello amd64 2.10-3
  Could not connect to deb.debian.org:80, connection timed out
E: Failed to fetch http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb  Could not connect to deb.debian.org:80
E: Unable to fetch some archives, maybe run apt-get update or try with --fix-missing?
";
        assert!(download_failed(fetch_failed));
        let unmet = "The following packages have unmet dependencies:
 satisfy:command-line : Depends: dep8-no-such-package but it is not installable
E: Unable to correct problems, you have held broken packages.
";
        assert!(!download_failed(unmet));
    }

    #[test]
    fn names_the_unmet_dependency_and_the_failed_download() {
        let apt = "Reading package lists...
W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'
W: Failed to fetch http://security.debian.org/debian-security/dists/bookworm-security/InRelease  Temporary failure resolving 'security.debian.org'
W: Some index files failed to download. They have been ignored, or old ones used instead.
The following packages have unmet dependencies:
 satisfy:command-line : Depends: hello but it is not installable
E: Unable to correct problems, you have held broken packages.
";
        assert_eq!(
            apt_complaint(apt),
            "Depends: hello but it is not installable; \
             W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease \
             Temporary failure resolving 'deb.debian.org' (and 1 more); \
             E: Unable to correct problems, you have held broken packages."
        );
    }
}
