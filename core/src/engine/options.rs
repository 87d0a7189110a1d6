//! What a run is asked to do: the options of `dep8 run`, as the engine
//! takes them.

use super::{host_arch, load_suite};
use crate::acquire::Fetch;
use crate::build::BuildOptions;
use crate::control::Entry;
use crate::install::DependencyPolicy;
use crate::report::Report;
use crate::restriction::ResolveOptions;
use crate::setup::Setup;
use crate::source;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Per-operation time limits (autopkgtest's `--timeout-*`).
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub short: Duration,
    pub copy: Duration,
    pub install: Duration,
    pub test: Duration,
    pub build: Duration,
    /// Rebooting or reverting the testbed (may be a full boot).
    pub reboot: Duration,
    /// `--timeout`: the whole run's time for tests and builds, as
    /// autopkgtest's global timeout: the test or build running when it is
    /// up times out, and the tests after it are skipped.
    pub global: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            short: Duration::from_secs(100),
            copy: Duration::from_secs(300),
            install: Duration::from_secs(3000),
            test: Duration::from_secs(10000),
            build: Duration::from_secs(100000),
            reboot: Duration::from_secs(600),
            global: None,
        }
    }
}

/// Which tests to run, and how.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The unpacked source tree.
    pub source: PathBuf,
    /// Use this control file instead of `debian/tests/control`.
    pub override_control: Option<PathBuf>,
    pub output_dir: PathBuf,
    /// Where the summary goes (default: OUTPUT_DIR/summary).
    pub summary_file: Option<PathBuf>,
    pub only_tests: Vec<String>,
    pub skip_tests: Vec<String>,
    pub resolve: ResolveOptions,
    /// `--env VAR=VALUE`, exported to every test.
    pub env: Vec<(String, String)>,
    /// `--user`: the normal user for tests without needs-root.
    pub user: Option<String>,
    pub timeouts: Timeouts,
    /// How the testbed was asked for (for testinfo.json), e.g. `["null"]`.
    pub testbed_argv: Vec<String>,
    /// Install test dependencies, or only check them (the host).
    pub dependencies: DependencyPolicy,
    /// Unpack or fetch the source in the testbed instead of using `source`.
    pub fetch: Option<Fetch>,
    /// What to do to the testbed after opening and every revert.
    pub setup: Setup,
    /// `-a`: the architecture to test (default: the testbed's).
    pub test_arch: Option<String>,
    /// `--shell-fail`, `--shell`.
    pub shell: ShellPolicy,
    /// Whether and how the source is built.
    pub build: BuildOptions,
    /// `--no-auto-control`: never ask autodep8 for tests.
    pub no_auto_control: bool,
    /// `-V`: validate the test control file, run nothing.
    pub validate: bool,
    /// `--insecure`: allow what autopkgtest 5.48 made opt-in.
    pub insecure: bool,
    /// `-j N`: run up to N tests at once, each on a testbed of its own
    /// (0 and 1: one after another).
    pub jobs: usize,
}

/// When to open an interactive shell in the testbed (`--shell-fail`,
/// `--shell`), as autopkgtest does: only on a terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShellPolicy {
    #[default]
    Never,
    /// After a failed test or dependency installation.
    OnFailure,
    /// After every test.
    Always,
}

impl RunOptions {
    /// The control file of the tree at `source`, or `--override-control`.
    pub fn control_path(&self, source: &Path) -> PathBuf {
        self.override_control
            .clone()
            .unwrap_or_else(|| source.join("debian/tests/control"))
    }

    /// Whether `--test-name` and `--skip-test` select the test `name`.
    pub fn selected(&self, name: &str) -> bool {
        (self.only_tests.is_empty() || self.only_tests.iter().any(|t| t == name))
            && !self.skip_tests.iter().any(|t| t == name)
    }

    /// Where the summary goes: `--summary-file`, or OUTPUT_DIR/summary.
    pub fn summary_path(&self) -> PathBuf {
        self.summary_file
            .clone()
            .unwrap_or_else(|| self.output_dir.join("summary"))
    }

    /// An empty report of this run: the suite's and the testbed's names.
    pub fn empty_report(&self) -> Report {
        let suite = self
            .source
            .file_name()
            .map_or("tests".into(), |n| n.to_string_lossy().into_owned());
        Report::new(&suite, &self.testbed_argv.join(" "))
    }

    /// The selected tests of the suite at `source` for `arch`, before
    /// anything is decided of them (for a run that stops first).
    pub(super) fn selected_tests(&self, arch: &str) -> Vec<String> {
        load_suite(&self.control_path(&self.source), &self.source, arch)
            .unwrap_or_default()
            .iter()
            .map(Entry::name)
            .filter(|name| self.selected(name))
            .map(str::to_string)
            .collect()
    }

    /// Whether autodep8 has a say in the tests of `tree`, as autopkgtest
    /// asks it: no `--no-auto-control` or `--override-control`, and no
    /// debian/tests/control or a `Testsuite: autopkgtest-pkg-*`.
    pub fn asks_autodep8(&self, tree: &Path) -> bool {
        !self.no_auto_control && self.override_control.is_none() && source::wants_autodep8(tree)
    }

    /// Whether a revert of this run may return a testbed to the state its
    /// open leaves ([`crate::testbed::OpenContext::reverts_to_open`]). Not
    /// when the run keeps a setup (reverts return to that), nor when the
    /// suite, read from a tree on the host, has at most one selected test
    /// and nothing is built on the testbed: the engine reverts only
    /// between tests and after a build. Where the suite is not known yet
    /// (a `.dsc`, `apt-get source`, autodep8's), it may.
    pub fn reverts_to_open(&self) -> bool {
        if self.setup.keeps_a_base() {
            return false;
        }
        if self.build.binaries
            || self.fetch.is_some()
            || !self.control_path(&self.source).is_file()
            || self.asks_autodep8(&self.source)
        {
            return true;
        }
        let arch = host_arch().unwrap_or_else(|| "amd64".into());
        self.selected_tests(&arch).len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree whose debian/tests/control is `control`.
    fn tree(control: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("debian/tests")).unwrap();
        std::fs::write(dir.path().join("debian/tests/control"), control).unwrap();
        dir
    }

    #[test]
    fn a_run_reverts_to_its_open_unless_it_keeps_a_setup_or_has_one_test_and_no_build() {
        let two = tree("Test-Command: true\n\nTest-Command: false\n");
        let one = tree("Tests: only\n");
        let opts = |tree: &tempfile::TempDir| RunOptions {
            source: tree.path().to_path_buf(),
            ..RunOptions::default()
        };
        assert!(opts(&two).reverts_to_open());
        assert!(!opts(&one).reverts_to_open());
        let mut selected = opts(&two);
        selected.only_tests = vec!["command2".into()];
        assert!(!selected.reverts_to_open());
        let mut built = opts(&one);
        built.build.binaries = true;
        assert!(built.reverts_to_open(), "a build dirties the testbed");
        let mut kept = opts(&two);
        kept.setup.commands = vec!["true".into()];
        assert!(!kept.reverts_to_open(), "reverts return to the setup");
        let mut elsewhere = opts(&one);
        elsewhere.source = one.path().join("no-such-tree");
        assert!(elsewhere.reverts_to_open(), "a suite not on the host");
        std::fs::write(
            one.path().join("debian/control"),
            "Source: one\nTestsuite: autopkgtest, autopkgtest-pkg-python\n",
        )
        .unwrap();
        assert!(opts(&one).reverts_to_open(), "autodep8's tests too");
        let mut own_only = opts(&one);
        own_only.no_auto_control = true;
        assert!(!own_only.reverts_to_open(), "--no-auto-control");
    }
}
