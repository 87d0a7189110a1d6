//! DEP-8 restrictions, the one table that maps them to testbed capabilities,
//! and [`resolve`]: the pure decision whether a test runs on a testbed.

use crate::capability::{Capabilities, Capability};
use crate::control::Test;
use serde::{Serialize, Serializer};
use std::collections::BTreeSet;
use std::fmt;

/// A `Restrictions:` word. Unknown words are kept, and make the test skip
/// unless ignored, as in autopkgtest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Restriction {
    AllowStderr,
    BreaksTestbed,
    BuildNeeded,
    Flaky,
    HintTestsuiteTriggers,
    IsolationContainer,
    IsolationMachine,
    NeedsInternet,
    NeedsReboot,
    NeedsRecommends,
    NeedsRoot,
    NeedsSudo,
    RwBuildTree,
    SkipForeignArchitecture,
    SkipNotInstallable,
    Skippable,
    Superficial,
    /// dep8: the test starts VMs or containers inside the testbed.
    NeedsNesting,
    /// dep8: the test needs a read-only pristine copy of the testbed.
    NeedsBaseimage,
    Unknown(String),
}

/// What a restriction asks of the testbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// This capability must be present.
    Capability(Capability),
    /// At least one of these capabilities must be present.
    AnyOf(&'static [Capability]),
    /// Decided while running, not from capabilities alone (needs-sudo).
    Dynamic,
    /// The test must never run (hint-testsuite-triggers).
    NeverRun,
}

/// One row of the restriction table: the single source of truth for
/// resolution and for docs/restrictions.md.
pub struct RestrictionInfo {
    pub restriction: Restriction,
    pub requires: &'static [Requirement],
    pub meaning: &'static str,
    /// Where the word comes from: the DEP-8 spec, a later autopkgtest, or dep8.
    pub origin: &'static str,
}

use Capability as C;
use Requirement as R;

/// The restriction table. Order is the order of docs/restrictions.md.
pub fn table() -> Vec<RestrictionInfo> {
    let row = |restriction, requires, meaning, origin| RestrictionInfo {
        restriction,
        requires,
        meaning,
        origin,
    };
    vec![
        row(
            Restriction::AllowStderr,
            &[],
            "Output on stderr does not fail the test.",
            "DEP-8",
        ),
        row(
            Restriction::BreaksTestbed,
            &[R::Capability(C::RevertFullSystem)],
            "The test may damage the testbed; it is reverted afterwards.",
            "DEP-8",
        ),
        row(
            Restriction::BuildNeeded,
            &[],
            "The source tree is built before the test runs.",
            "DEP-8",
        ),
        row(
            Restriction::Flaky,
            &[],
            "A failure is reported FLAKY and counts as a skip.",
            "DEP-8",
        ),
        row(
            Restriction::HintTestsuiteTriggers,
            &[R::NeverRun],
            "Only feeds Testsuite-Triggers; the test is never run.",
            "DEP-8",
        ),
        row(
            Restriction::IsolationContainer,
            &[R::AnyOf(&[C::IsolationContainer, C::IsolationMachine])],
            "Starts services or opens ports; pid 1 is an init system.",
            "DEP-8",
        ),
        row(
            Restriction::IsolationMachine,
            &[R::Capability(C::IsolationMachine)],
            "Needs a whole machine: kernel, hardware, reboot.",
            "DEP-8",
        ),
        row(
            Restriction::NeedsInternet,
            &[R::Capability(C::HasInternet)],
            "Needs unrestricted internet access (see --needs-internet).",
            "DEP-8",
        ),
        row(
            Restriction::NeedsReboot,
            &[R::Capability(C::Reboot)],
            "Reboots the testbed through /tmp/autopkgtest-reboot.",
            "DEP-8",
        ),
        row(
            Restriction::NeedsRecommends,
            &[],
            "Deprecated: adds @recommends@ to Depends.",
            "DEP-8",
        ),
        row(
            Restriction::NeedsRoot,
            &[R::Capability(C::RootOnTestbed)],
            "Runs as root.",
            "DEP-8",
        ),
        row(
            Restriction::NeedsSudo,
            &[R::Dynamic],
            "Runs as a normal user with passwordless sudo; implies Depends: sudo.",
            "DEP-8",
        ),
        row(
            Restriction::RwBuildTree,
            &[],
            "The test user may write to the source tree.",
            "DEP-8",
        ),
        row(
            Restriction::SkipForeignArchitecture,
            &[],
            "Skipped when testing a foreign architecture (dep8 never does).",
            "autopkgtest 5.3x",
        ),
        row(
            Restriction::SkipNotInstallable,
            &[],
            "A dependency that cannot be installed skips the test instead of failing it.",
            "DEP-8",
        ),
        row(
            Restriction::Skippable,
            &[],
            "Exit status 77 means SKIP.",
            "DEP-8",
        ),
        row(
            Restriction::Superficial,
            &[],
            "Passing is PASS (superficial): not evidence that the package works.",
            "DEP-8",
        ),
        row(
            Restriction::NeedsNesting,
            &[R::Capability(C::Nesting)],
            "Starts VMs or containers inside the testbed.",
            "dep8",
        ),
        row(
            Restriction::NeedsBaseimage,
            &[R::Capability(C::BaseImage)],
            "Needs a read-only pristine copy of the testbed ($DEP8_BASEIMAGE).",
            "dep8",
        ),
    ]
}

impl Restriction {
    /// Parses one word; every word is accepted, unknown ones as `Unknown`.
    pub fn parse(word: &str) -> Restriction {
        let known = table()
            .into_iter()
            .map(|row| row.restriction)
            .find(|r| r.word() == word);
        // Accept autopkgtest-style alternative spellings of dep8's words.
        match word {
            "needs-nested-virt" | "needs-nested-virtualisation" => Restriction::NeedsNesting,
            "needs-base-image" => Restriction::NeedsBaseimage,
            _ => known.unwrap_or_else(|| Restriction::Unknown(word.to_string())),
        }
    }

    pub fn word(&self) -> &str {
        match self {
            Restriction::AllowStderr => "allow-stderr",
            Restriction::BreaksTestbed => "breaks-testbed",
            Restriction::BuildNeeded => "build-needed",
            Restriction::Flaky => "flaky",
            Restriction::HintTestsuiteTriggers => "hint-testsuite-triggers",
            Restriction::IsolationContainer => "isolation-container",
            Restriction::IsolationMachine => "isolation-machine",
            Restriction::NeedsInternet => "needs-internet",
            Restriction::NeedsReboot => "needs-reboot",
            Restriction::NeedsRecommends => "needs-recommends",
            Restriction::NeedsRoot => "needs-root",
            Restriction::NeedsSudo => "needs-sudo",
            Restriction::RwBuildTree => "rw-build-tree",
            Restriction::SkipForeignArchitecture => "skip-foreign-architecture",
            Restriction::SkipNotInstallable => "skip-not-installable",
            Restriction::Skippable => "skippable",
            Restriction::Superficial => "superficial",
            Restriction::NeedsNesting => "needs-nesting",
            Restriction::NeedsBaseimage => "needs-baseimage",
            Restriction::Unknown(word) => word,
        }
    }

    /// The table's requirements for this restriction (none for unknown ones).
    pub fn requirements(&self) -> &'static [Requirement] {
        table()
            .into_iter()
            .find(|row| &row.restriction == self)
            .map_or(&[], |row| row.requires)
    }
}

impl fmt::Display for Restriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl Serialize for Restriction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.word())
    }
}

/// How `needs-internet` tests are treated (autopkgtest's `--needs-internet`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InternetPolicy {
    /// Run them; the restriction is basically ignored (the default).
    #[default]
    Run,
    /// Run them; a failure is a SKIP.
    Try,
    /// Never run them.
    Skip,
}

/// Options that change decisions, from the command line.
#[derive(Clone, Debug, Default)]
pub struct ResolveOptions {
    /// `--ignore-restrictions`: these words never cause a skip.
    pub ignore: BTreeSet<String>,
    pub needs_internet: InternetPolicy,
    /// The testbed's dpkg architecture, for `Architecture:`; `None` skips the check.
    pub arch: Option<String>,
}

/// Whether a test runs on a testbed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", content = "reason", rename_all = "lowercase")]
pub enum Decision {
    Run,
    Skip(String),
}

/// The capabilities the runner adds to what the backend advertises.
pub fn effective_capabilities(caps: &Capabilities, opts: &ResolveOptions) -> Capabilities {
    let mut caps = caps.clone();
    if opts.needs_internet != InternetPolicy::Skip {
        caps.insert(Capability::HasInternet);
    }
    caps
}

/// Decides Run or Skip for `test` on a testbed with `caps`. Pure: the same
/// inputs always give the same answer, with autopkgtest's reason texts.
pub fn resolve(test: &Test, caps: &Capabilities, opts: &ResolveOptions) -> Decision {
    if let Some(arch) = &opts.arch {
        if let Err(reason) = crate::source::check_architecture(arch, &test.architectures) {
            return Decision::Skip(reason);
        }
    }
    let caps = effective_capabilities(caps, opts);
    let effective: Vec<&Restriction> = test
        .restrictions
        .iter()
        .filter(|r| !opts.ignore.contains(r.word()))
        .collect();
    if let Some(r) = effective
        .iter()
        .find(|r| matches!(r, Restriction::Unknown(_)))
    {
        return Decision::Skip(format!("unknown restriction {r}"));
    }
    for r in &effective {
        for need in r.requirements() {
            match need {
                Requirement::Capability(c) if !caps.has(*c) => {
                    return Decision::Skip(format!(
                        "Test restriction \"{r}\" requires testbed capability \"{c}\""
                    ));
                }
                Requirement::AnyOf(any) if !any.iter().any(|c| caps.has(*c)) => {
                    let mut names: Vec<String> = any.iter().map(|c| format!("\"{c}\"")).collect();
                    names.sort();
                    let last = names.pop().unwrap_or_default();
                    return Decision::Skip(format!(
                        "Test restriction \"{r}\" requires testbed capability {} and/or {last}",
                        names.join(", ")
                    ));
                }
                Requirement::NeverRun => {
                    return Decision::Skip(format!(
                        "Test restriction \"{r}\" means it is never run"
                    ));
                }
                _ => {}
            }
        }
    }
    Decision::Run
}

/// docs/restrictions.md, generated from [`table`] so that the two cannot drift.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Restrictions and capabilities\n\n\
         Generated by `dep8 restrictions --markdown` from the table in\n\
         `core/src/restriction.rs`; a test fails when this file is out of date.\n\n\
         A test runs only when the testbed provides every capability its\n\
         restrictions require; otherwise it is reported `SKIP` with the\n\
         restriction and the missing capability named. `--ignore-restrictions`\n\
         lifts a restriction (unknown ones too).\n\n\
         | restriction | requires | meaning | origin |\n|---|---|---|---|\n",
    );
    for row in table() {
        let requires: Vec<String> = row
            .requires
            .iter()
            .map(|need| match need {
                Requirement::Capability(c) => format!("`{c}`"),
                Requirement::AnyOf(any) => any
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                Requirement::Dynamic => "checked while running".to_string(),
                Requirement::NeverRun => "never runs".to_string(),
            })
            .collect();
        let requires = if requires.is_empty() {
            "—".to_string()
        } else {
            requires.join(", ")
        };
        out += &format!(
            "| `{}` | {} | {} | {} |\n",
            row.restriction, requires, row.meaning, row.origin
        );
    }
    out += "\nAny other word is an unknown restriction: the test is skipped with\n\
            `unknown restriction WORD`, as autopkgtest does.\n\n\
            ## Capabilities\n\n| capability | meaning |\n|---|---|\n";
    for cap in Capability::ALL {
        out += &format!("| `{cap}` | {} |\n", capability_meaning(cap));
    }
    out
}

fn capability_meaning(cap: Capability) -> &'static str {
    match cap {
        C::RootOnTestbed => "commands run as root (possibly namespaced root)",
        C::Revert => "the testbed can be reverted to its pristine state",
        C::RevertFullSystem => "revert restores everything, not just packages",
        C::IsolationContainer => "own container with an init system",
        C::IsolationMachine => "a whole (virtual) machine",
        C::Reboot => "the testbed can reboot during a test",
        C::Nesting => "tests may start VMs or containers inside the testbed",
        C::BaseImage => "a read-only pristine copy of the testbed is at $DEP8_BASEIMAGE",
        C::HasInternet => "added by the runner unless --needs-internet=skip",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Test;

    fn test_with(restrictions: &[&str]) -> Test {
        Test {
            restrictions: restrictions.iter().map(|r| Restriction::parse(r)).collect(),
            ..Test::for_command("t", "true")
        }
    }

    #[test]
    fn every_word_round_trips() {
        for row in table() {
            assert_eq!(Restriction::parse(row.restriction.word()), row.restriction);
        }
        assert_eq!(
            Restriction::parse("needs-nested-virt"),
            Restriction::NeedsNesting
        );
        assert_eq!(
            Restriction::parse("bogus"),
            Restriction::Unknown("bogus".into())
        );
    }

    #[test]
    fn missing_capability_is_named() {
        let caps = Capabilities::new([Capability::IsolationMachine]);
        let d = resolve(
            &test_with(&["needs-reboot"]),
            &caps,
            &ResolveOptions::default(),
        );
        assert_eq!(
            d,
            Decision::Skip(
                "Test restriction \"needs-reboot\" requires testbed capability \"reboot\"".into()
            )
        );
    }

    #[test]
    fn any_of_is_met_by_either() {
        let opts = ResolveOptions::default();
        let t = test_with(&["isolation-container"]);
        assert_eq!(
            resolve(&t, &Capabilities::new([C::IsolationMachine]), &opts),
            Decision::Run
        );
        assert_eq!(
            resolve(&t, &Capabilities::new([C::IsolationContainer]), &opts),
            Decision::Run
        );
        assert_eq!(
            resolve(&t, &Capabilities::default(), &opts),
            Decision::Skip(
                "Test restriction \"isolation-container\" requires testbed capability \
                 \"isolation-container\" and/or \"isolation-machine\""
                    .into()
            )
        );
    }

    #[test]
    fn unknown_and_ignored() {
        let t = test_with(&["frob", "needs-reboot"]);
        let mut opts = ResolveOptions::default();
        assert_eq!(
            resolve(&t, &Capabilities::default(), &opts),
            Decision::Skip("unknown restriction frob".into())
        );
        opts.ignore = ["frob".to_string(), "needs-reboot".to_string()].into();
        assert_eq!(resolve(&t, &Capabilities::default(), &opts), Decision::Run);
    }

    #[test]
    fn internet_policy() {
        let t = test_with(&["needs-internet"]);
        let mut opts = ResolveOptions::default();
        assert_eq!(resolve(&t, &Capabilities::default(), &opts), Decision::Run);
        opts.needs_internet = InternetPolicy::Skip;
        assert!(matches!(
            resolve(&t, &Capabilities::default(), &opts),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn nesting_words_need_dep8_capabilities() {
        let caps = Capabilities::new([C::IsolationMachine, C::RootOnTestbed]);
        let opts = ResolveOptions::default();
        assert_eq!(
            resolve(&test_with(&["needs-baseimage"]), &caps, &opts),
            Decision::Skip(
                "Test restriction \"needs-baseimage\" requires testbed capability \"baseimage\""
                    .into()
            )
        );
        let caps = Capabilities::new([C::Nesting, C::BaseImage]);
        assert_eq!(
            resolve(
                &test_with(&["needs-nesting", "needs-baseimage"]),
                &caps,
                &opts
            ),
            Decision::Run
        );
    }
}
