//! Pure decisions about a test that ran: how its end becomes a result,
//! and whether the testbed must be reverted before the next one.

use crate::control::Test;
use crate::report::Outcome;
use crate::restriction::{InternetPolicy, Restriction};

/// How a test's command ended, as far as judging it goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// The exit status (128 + n for a signal, as the shell reports it).
    pub code: i32,
    pub timed_out: bool,
    /// The first line of its stderr, when it wrote any.
    pub stderr: Option<String>,
}

/// The result of a test that ended so, as autopkgtest 5.49 judges it.
pub fn judge(test: &Test, ended: &Ended, internet: InternetPolicy) -> Outcome {
    // As autopkgtest 5.39's wrapper: 254 and 255 are reported as 253.
    let code = match ended.code {
        254 | 255 => 253,
        code => code,
    };
    let outcome = if ended.timed_out {
        Outcome::Fail("timed out".into())
    } else if code == 77 && test.has(&Restriction::Skippable) {
        Outcome::Skip("exit status 77 and marked as skippable".into())
    } else if code != 0 {
        if test.has(&Restriction::NeedsInternet) && internet == InternetPolicy::Try {
            Outcome::Skip("Failed, but test has needs-internet and that's not guaranteed".into())
        } else {
            Outcome::Fail(format!("non-zero exit status {code}"))
        }
    } else if let Some(line) = ended
        .stderr
        .as_ref()
        .filter(|_| !test.has(&Restriction::AllowStderr))
    {
        Outcome::Fail(format!("stderr: {}", line.trim_end()))
    } else if test.has(&Restriction::Superficial) {
        Outcome::PassSuperficial
    } else {
        Outcome::Pass
    };
    match outcome {
        Outcome::Fail(reason) if test.has(&Restriction::Flaky) => Outcome::Flaky(reason),
        other => other,
    }
}

/// Whether the testbed must be reverted before `test`, as autopkgtest
/// decides: it can be, and it was broken (`dirty`) or holds packages
/// installed for an earlier test that this one does not ask for.
pub fn revert_needed(
    can_revert: bool,
    dirty: bool,
    installed_for_last: &[String],
    test: &Test,
) -> bool {
    can_revert && (dirty || installed_for_last.iter().any(|d| !test.depends.contains(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(restrictions: &[Restriction]) -> Test {
        let mut t = Test::for_command("t", "true");
        t.restrictions = restrictions.to_vec();
        t
    }

    fn ended(code: i32, stderr: Option<&str>) -> Ended {
        Ended {
            code,
            timed_out: false,
            stderr: stderr.map(str::to_string),
        }
    }

    fn judged(restrictions: &[Restriction], end: Ended) -> Outcome {
        judge(&test(restrictions), &end, InternetPolicy::Run)
    }

    #[test]
    fn exit_status_and_stderr() {
        assert_eq!(judged(&[], ended(0, None)), Outcome::Pass);
        assert_eq!(
            judged(&[], ended(1, None)),
            Outcome::Fail("non-zero exit status 1".into())
        );
        assert_eq!(
            judged(&[], ended(255, None)),
            Outcome::Fail("non-zero exit status 253".into())
        );
        assert_eq!(
            judged(&[], ended(0, Some("oops \n"))),
            Outcome::Fail("stderr: oops".into())
        );
        assert_eq!(
            judged(&[Restriction::AllowStderr], ended(0, Some("oops"))),
            Outcome::Pass
        );
        assert_eq!(
            judged(&[Restriction::Superficial], ended(0, None)),
            Outcome::PassSuperficial
        );
    }

    #[test]
    fn skippable_flaky_timeout_and_internet() {
        assert_eq!(
            judged(&[Restriction::Skippable], ended(77, None)),
            Outcome::Skip("exit status 77 and marked as skippable".into())
        );
        assert_eq!(
            judged(&[], ended(77, None)),
            Outcome::Fail("non-zero exit status 77".into())
        );
        assert_eq!(
            judged(&[Restriction::Flaky], ended(2, None)),
            Outcome::Flaky("non-zero exit status 2".into())
        );
        let timed_out = Ended {
            timed_out: true,
            ..ended(137, None)
        };
        assert_eq!(judged(&[], timed_out), Outcome::Fail("timed out".into()));
        let online = test(&[Restriction::NeedsInternet]);
        assert!(matches!(
            judge(&online, &ended(1, None), InternetPolicy::Try),
            Outcome::Skip(_)
        ));
        assert!(matches!(
            judge(&online, &ended(1, None), InternetPolicy::Run),
            Outcome::Fail(_)
        ));
    }

    #[test]
    fn revert_when_dirty_or_holding_packages_the_test_did_not_ask_for() {
        let mut t = test(&[]);
        t.depends = vec!["a".into()];
        let a = ["a".to_string()];
        let b = ["b".to_string()];
        assert!(!revert_needed(true, false, &[], &t));
        assert!(!revert_needed(true, false, &a, &t));
        assert!(revert_needed(true, false, &b, &t));
        assert!(revert_needed(true, true, &[], &t));
        assert!(!revert_needed(false, true, &b, &t));
    }
}
