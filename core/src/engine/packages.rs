//! The testbed's packages as the runner knows them: the installed list,
//! cached until something changes it, what was installed for the last
//! test (what a revert undoes), and how a test's dependencies are made
//! present.

use super::timed;
use crate::error::Error;
use crate::events::{Event, Events, Wait};
use crate::install::{self, DependencyPolicy};
use crate::setup::Setup;
use crate::source::{self, Installed};
use crate::testbed::{ExecRequest, Testbed};
use std::time::Duration;

/// How dependencies came to be present, or why they are not.
#[derive(Debug, PartialEq, Eq)]
pub enum Provision {
    /// Nothing was missing (or the testbed has no dpkg to ask).
    Present,
    /// They were installed: what changed, as `<test>-packages` lists it.
    Installed { changes: String },
    /// They are not present: why (autopkgtest's `badpkg:` line).
    Missing(String),
}

/// The package side of the testbed's state.
pub struct PackageState {
    policy: DependencyPolicy,
    /// The apt side of the setup: whether to retry without pins when apt
    /// fails (`--apt-pocket`, `--pin-packages`), and the package cache.
    setup: Setup,
    short: Duration,
    install: Duration,
    installed: Option<Installed>,
    installed_for_last: Vec<String>,
    /// No test or build ran since the testbed was opened or reverted: its
    /// changes since are the setup's and the installs' alone, which the
    /// testbed may keep as a layer for later runs.
    untouched: bool,
}

impl PackageState {
    pub fn new(policy: DependencyPolicy, setup: Setup, short: Duration, install: Duration) -> Self {
        PackageState {
            policy,
            setup,
            short,
            install,
            installed: None,
            installed_for_last: Vec::new(),
            untouched: true,
        }
    }

    /// Whether dep8 may install packages on a testbed where it is (or is
    /// not) `root`.
    pub fn may_install(&self, root: bool) -> bool {
        self.policy == DependencyPolicy::Install && root
    }

    /// Something else changed the packages (a build): list them again.
    pub fn changed(&mut self) {
        self.installed = None;
    }

    /// The testbed was reverted: nothing is installed for any test.
    pub fn reverted(&mut self) {
        self.installed = None;
        self.installed_for_last.clear();
        self.untouched = true;
    }

    /// A test or a build runs on the testbed: what it leaves there is not
    /// apt's, and no later install is kept as a layer until a revert.
    pub fn touched(&mut self) {
        self.untouched = false;
    }

    /// Whether the testbed must be reverted before `test` (see
    /// [`super::judge::revert_needed`]).
    pub fn revert_needed(
        &self,
        can_revert: bool,
        dirty: bool,
        test: &crate::control::Test,
    ) -> bool {
        super::judge::revert_needed(can_revert, dirty, &self.installed_for_last, test)
    }

    /// The installed packages, listed once and cached until they change;
    /// `None` where the testbed has no dpkg.
    pub async fn installed(&mut self, tb: &dyn Testbed) -> Result<Option<&Installed>, Error> {
        if self.installed.is_none() {
            let req =
                ExecRequest::new(["dpkg-query", "-W", "-f", source::DPKG_QUERY_FORMAT]).capture();
            let out = timed(self.short, "listing installed packages", tb.exec(req)).await?;
            if !out.status.success() {
                return Ok(None);
            }
            self.installed = Some(source::parse_installed(&out.stdout_text()));
        }
        Ok(self.installed.as_ref())
    }

    /// Makes `deps` present: installed with apt where dep8 may change the
    /// testbed's packages (`root`), otherwise checked. `what` names the
    /// test (or the build) in the log.
    #[allow(clippy::too_many_arguments)]
    pub async fn ensure(
        &mut self,
        tb: &dyn Testbed,
        deps: &[String],
        recommends: bool,
        arch: &str,
        root: bool,
        what: &str,
        events: &Events,
    ) -> Result<Provision, Error> {
        if deps.is_empty() {
            return Ok(Provision::Present);
        }
        let Some(installed) = self.installed(tb).await? else {
            events.warning("the testbed has no dpkg: dependencies are not checked");
            return Ok(Provision::Present);
        };
        let missing = source::unsatisfied(deps, installed, arch);
        if missing.is_empty() {
            return Ok(Provision::Present);
        }
        if !self.may_install(root) {
            let why = not_installed(self.policy, &missing);
            events.info(format!("{what}: {why}"));
            return Ok(Provision::Missing(why));
        }
        events.info(format!("{what}: installing {}", missing.join(", ")));
        events.emit(Event::Waiting(Wait::Install {
            what: what.to_string(),
            packages: missing.clone(),
        }));
        let limit = self.install;
        let result = timed(
            limit + Duration::from_secs(5),
            "installing dependencies",
            install::apt_satisfy(
                tb,
                &missing,
                recommends,
                &self.setup,
                self.untouched,
                limit,
                events.output_tap(),
            ),
        )
        .await?;
        let before = self.installed.take().unwrap_or_default();
        self.installed_for_last = deps.to_vec();
        match result {
            Ok(()) => {
                events.emit(Event::DependenciesInstalled {
                    what: what.to_string(),
                    packages: missing,
                });
                let changes = match self.installed(tb).await? {
                    Some(after) => changes(&before, after),
                    None => String::new(),
                };
                Ok(Provision::Installed { changes })
            }
            Err(install::Unsatisfiable(said)) => {
                let why = format!(
                    "Test dependencies are unsatisfiable: {}{said}",
                    if said.is_empty() { "" } else { "apt says: " }
                );
                events.info(format!("{what}: {why}"));
                Ok(Provision::Missing(why))
            }
        }
    }
}

/// Why `missing` stays missing where dep8 may not install it.
fn not_installed(policy: DependencyPolicy, missing: &[String]) -> String {
    let why = match policy {
        DependencyPolicy::CheckOnly => "dep8 does not install packages on this testbed",
        DependencyPolicy::Install => "the testbed has no root to install them",
    };
    format!(
        "dependencies are not installed and {why}: {}",
        missing.join(", ")
    )
}

/// What installing added or changed, as `name TAB version` lines in
/// name order (autopkgtest's `<test>-packages`).
pub fn changes(before: &Installed, after: &Installed) -> String {
    package_lines(
        after
            .iter()
            .filter(|(name, version)| before.get(name) != Some(*version)),
    )
}

/// Packages as `name TAB version` lines in name order, the form of
/// autopkgtest's `<test>-packages` and `testbed-packages`.
pub fn package_lines<'a, V: std::fmt::Display + 'a>(
    packages: impl Iterator<Item = (&'a String, &'a V)>,
) -> String {
    let mut lines: Vec<String> = packages
        .map(|(name, version)| format!("{name}\t{version}\n"))
        .collect();
    lines.sort();
    lines.concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Test;

    fn installed(lines: &[&str]) -> Installed {
        let text: String = lines.iter().map(|l| format!("{l}\tii \t\n")).collect();
        source::parse_installed(&text)
    }

    #[test]
    fn changes_lists_new_and_upgraded_packages_sorted() {
        let before = installed(&["a\t1", "b\t1"]);
        let after = installed(&["a\t1", "b\t2", "0new\t3"]);
        assert_eq!(changes(&before, &after), "0new\t3\nb\t2\n");
        assert_eq!(changes(&after, &after), "");
    }

    #[test]
    fn reasons_name_the_policy_and_the_packages() {
        let missing = ["x".to_string(), "y (>= 1)".to_string()];
        assert_eq!(
            not_installed(DependencyPolicy::CheckOnly, &missing),
            "dependencies are not installed and dep8 does not install packages on this testbed: x, y (>= 1)"
        );
        assert!(not_installed(DependencyPolicy::Install, &missing).contains("no root"));
    }

    #[test]
    fn only_root_installs_and_a_revert_forgets_the_last_tests_packages() {
        let mut state = PackageState::new(
            DependencyPolicy::Install,
            Setup::default(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(state.may_install(true));
        assert!(!state.may_install(false));
        state.installed_for_last = vec!["a".into()];
        let test = Test::for_command("t", "true");
        assert!(state.revert_needed(true, false, &test));
        state.reverted();
        assert!(!state.revert_needed(true, false, &test));
        let check_only = PackageState::new(
            DependencyPolicy::CheckOnly,
            Setup::default(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(!check_only.may_install(true));
    }
}
