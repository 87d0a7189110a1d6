//! The plan: which entries of a suite run on a testbed, and what is
//! decided of the others before anything runs. `dep8 run` (with the
//! opened testbed's capabilities), `check --testbed` and `explain` (with
//! `Backend::capabilities_for`) share it.

use crate::capability::Capabilities;
use crate::control::{self, DependsContext, Entry, Test};
use crate::error::Error;
use crate::report::Outcome;
use crate::restriction::{resolve, Decision, ResolveOptions};
use crate::source::SourcePackage;
use std::path::Path;

/// The host's dpkg architecture, when it has dpkg.
pub fn host_arch() -> Option<String> {
    let out = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Parses the suite of `tree` in `control` for `arch`: the entries in file
/// order. A debian/control that cannot be read is the package's fault.
pub fn load_suite(control: &Path, tree: &Path, arch: &str) -> Result<Vec<Entry>, Error> {
    let source = SourcePackage::read(tree)?;
    let ctx = DependsContext {
        source: source.as_ref(),
        arch,
    };
    Ok(control::parse_file(control, &ctx))
}

/// What is decided of an entry before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    Skip(String),
    Broken(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Run => write!(f, "RUN"),
            Verdict::Skip(reason) => write!(f, "SKIP {reason}"),
            Verdict::Broken(problem) => write!(f, "BROKEN {problem}"),
        }
    }
}

impl Verdict {
    /// An entry's fate on a testbed with `caps`.
    pub fn of(entry: &Entry, caps: &Capabilities, opts: &ResolveOptions) -> Verdict {
        match entry {
            Entry::Test(t) => match resolve(t, caps, opts) {
                Decision::Run => Verdict::Run,
                Decision::Skip(reason) => Verdict::Skip(reason),
            },
            Entry::Unsupported { reason, .. } => Verdict::Skip(reason.clone()),
            Entry::Broken { problem, .. } => Verdict::Broken(problem.to_string()),
        }
    }

    /// The result of an entry that does not run; `None` for one that does.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Verdict::Run => None,
            Verdict::Skip(reason) => Some(Outcome::Skip(reason.clone())),
            Verdict::Broken(problem) => Some(Outcome::Broken(problem.clone())),
        }
    }

    /// The reason a testbed skips the entry, if it does.
    pub fn skip_reason(&self) -> Option<&str> {
        match self {
            Verdict::Skip(reason) => Some(reason),
            Verdict::Run | Verdict::Broken(_) => None,
        }
    }
}

/// An entry and its verdict.
#[derive(Clone, Debug)]
pub struct Planned {
    pub entry: Entry,
    pub verdict: Verdict,
}

/// A suite's entries in file order, each with its verdict.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub entries: Vec<Planned>,
}

impl Plan {
    /// Decides every entry of `entries` for a testbed with `caps`.
    pub fn new(entries: Vec<Entry>, caps: &Capabilities, opts: &ResolveOptions) -> Plan {
        let entries = entries
            .into_iter()
            .map(|entry| Planned {
                verdict: Verdict::of(&entry, caps, opts),
                entry,
            })
            .collect();
        Plan { entries }
    }

    /// Keeps the entries `selected` names (`--test-name`, `--skip-test`);
    /// a whole-file problem (`*`) is always kept.
    pub fn select(mut self, selected: impl Fn(&str) -> bool) -> Plan {
        self.entries
            .retain(|p| p.entry.name() == "*" || selected(p.entry.name()));
        self
    }

    /// The tests that run, in order.
    pub fn runnable(&self) -> Vec<Test> {
        self.entries
            .iter()
            .filter_map(|p| match (&p.entry, &p.verdict) {
                (Entry::Test(test), Verdict::Run) => Some(test.clone()),
                _ => None,
            })
            .collect()
    }

    /// The entries decided before anything runs, with their results.
    pub fn decided(&self) -> impl Iterator<Item = (&Entry, Outcome)> {
        self.entries
            .iter()
            .filter_map(|p| p.verdict.outcome().map(|o| (&p.entry, o)))
    }

    /// The first malformed entry's problem (`-V`).
    pub fn first_problem(&self) -> Option<&control::Problem> {
        self.entries.iter().find_map(|p| match &p.entry {
            Entry::Broken { problem, .. } => Some(problem),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Capability;
    use crate::control::{Location, Problem};
    use crate::restriction::Restriction;

    fn suite() -> Vec<Entry> {
        let mut root = Test::for_command("root", "true");
        root.restrictions.push(Restriction::NeedsRoot);
        vec![
            Entry::Test(Test::for_command("plain", "true")),
            Entry::Test(root),
            Entry::Unsupported {
                name: "odd".into(),
                reason: "unknown field".into(),
                location: Location {
                    file: "control".into(),
                    line: 3,
                },
            },
            Entry::Broken {
                name: "*".into(),
                problem: Problem {
                    location: Location {
                        file: "control".into(),
                        line: 9,
                    },
                    field: None,
                    message: "bad".into(),
                },
            },
        ]
    }

    #[test]
    fn verdicts_follow_the_capabilities() {
        let opts = ResolveOptions::default();
        let without_root = Plan::new(suite(), &Capabilities::default(), &opts);
        let words: Vec<String> = without_root
            .entries
            .iter()
            .map(|p| p.verdict.to_string())
            .collect();
        assert_eq!(words[0], "RUN");
        assert!(words[1].starts_with("SKIP"), "{words:?}");
        assert_eq!(words[2], "SKIP unknown field");
        assert_eq!(words[3], "BROKEN control:9: bad");
        let with_root = Plan::new(
            suite(),
            &Capabilities::new([Capability::RootOnTestbed]),
            &opts,
        );
        let runnable: Vec<String> = with_root.runnable().into_iter().map(|t| t.name).collect();
        assert_eq!(runnable, ["plain", "root"]);
    }

    #[test]
    fn selection_keeps_whole_file_problems_and_decided_entries_have_results() {
        let plan = Plan::new(
            suite(),
            &Capabilities::default(),
            &ResolveOptions::default(),
        )
        .select(|name| name == "odd");
        let decided: Vec<(String, Outcome)> = plan
            .decided()
            .map(|(e, o)| (e.name().to_string(), o))
            .collect();
        assert_eq!(
            decided,
            [
                ("odd".to_string(), Outcome::Skip("unknown field".into())),
                ("*".to_string(), Outcome::Broken("control:9: bad".into()))
            ]
        );
        assert!(plan.runnable().is_empty());
        assert_eq!(plan.first_problem().unwrap().location.line, 9);
    }
}
