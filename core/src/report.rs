//! What a run leaves behind, as types and as files: the typed [`Report`]
//! (results.json's layout), and the observers of the event stream that
//! write the log, autopkgtest's summary, results.json and junit.xml, the
//! latter rewritten after every test so that a crash or Ctrl-C keeps
//! everything finished so far.

use crate::capability::Capabilities;
use crate::events::{Event, Level, Observer};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::error::{EXIT_BAD_PACKAGE, EXIT_TESTBED_FAILURE, EXIT_UNEXPECTED};

/// The version of results.json's layout; bumped on incompatible changes.
pub const RESULTS_SCHEMA: &str = "dep8-results/1";

/// A test's result, in autopkgtest's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ResultWords", into = "ResultWords")]
pub enum Outcome {
    Pass,
    PassSuperficial,
    Fail(String),
    Flaky(String),
    Skip(String),
    /// The control entry could not be parsed (dep8's word; autopkgtest's
    /// summary says `FAIL badpkg`).
    Broken(String),
    /// The package is at fault for this test (`FAIL badpkg`): its
    /// dependencies cannot be installed, its test path leads out of the
    /// tree. The why is in the result's details.
    BadPackage,
}

/// An [`Outcome`] as results.json spells it: `{"result": "FAIL", "reason": "..."}`.
#[derive(Serialize, Deserialize)]
struct ResultWords {
    result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The reason autopkgtest gives a test that blames its package.
const BADPKG: &str = "badpkg";

impl From<Outcome> for ResultWords {
    fn from(outcome: Outcome) -> Self {
        let (result, reason) = match outcome {
            Outcome::Pass => ("PASS", None),
            Outcome::PassSuperficial => ("PASS (superficial)", None),
            Outcome::Fail(r) => ("FAIL", Some(r)),
            Outcome::Flaky(r) => ("FLAKY", Some(r)),
            Outcome::Skip(r) => ("SKIP", Some(r)),
            Outcome::Broken(r) => ("BROKEN", Some(r)),
            Outcome::BadPackage => ("FAIL", Some(BADPKG.to_string())),
        };
        ResultWords {
            result: result.into(),
            reason,
        }
    }
}

impl TryFrom<ResultWords> for Outcome {
    type Error = String;

    fn try_from(words: ResultWords) -> Result<Self, String> {
        let reason = || words.reason.clone().unwrap_or_default();
        Ok(match words.result.as_str() {
            "PASS" => Outcome::Pass,
            "PASS (superficial)" => Outcome::PassSuperficial,
            "FAIL" if words.reason.as_deref() == Some(BADPKG) => Outcome::BadPackage,
            "FAIL" => Outcome::Fail(reason()),
            "FLAKY" => Outcome::Flaky(reason()),
            "SKIP" => Outcome::Skip(reason()),
            "BROKEN" => Outcome::Broken(reason()),
            other => return Err(format!("unknown result {other:?}")),
        })
    }
}

impl Outcome {
    /// The summary text after the name: `PASS`, `FAIL non-zero exit status 1`, ...
    /// Only autopkgtest's words: a test dep8 could not parse (BROKEN in
    /// results.json) is `FAIL badpkg`, as autopkgtest blames the package.
    pub fn summary_text(&self) -> String {
        match self {
            Outcome::Broken(_) | Outcome::BadPackage => format!("FAIL {BADPKG}"),
            Outcome::PassSuperficial => "PASS (superficial)".into(),
            other => {
                let words = ResultWords::from(other.clone());
                match words.reason {
                    Some(reason) => format!("{} {reason}", words.result),
                    None => words.result,
                }
            }
        }
    }

    /// The result word alone (`PASS`, `FAIL`, ...), as results.json has it.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass | Outcome::PassSuperficial => "PASS",
            Outcome::Fail(_) | Outcome::BadPackage => "FAIL",
            Outcome::Flaky(_) => "FLAKY",
            Outcome::Skip(_) => "SKIP",
            Outcome::Broken(_) => "BROKEN",
        }
    }
}

/// One line of the summary, with what results.json and junit.xml need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_secs: f64,
    /// Extra summary lines (`blame: ...`, `badpkg: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The testbed the test ran on, when a run sent its tests to several
    /// (`dep8 run --on A --on B`); not in the summary, whose lines stay
    /// autopkgtest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testbed: Option<String>,
}

impl TestResult {
    /// The summary's lines for this result: `NAME  RESULT`, then the details.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("{:<20} {}", self.name, self.outcome.summary_text())];
        lines.extend(self.details.iter().cloned());
        lines
    }
}

/// Why a selected test got no result because the run stopped first; it is
/// named in results.json and junit.xml, not in the summary (autopkgtest's
/// summary has no line for it either).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "result",
    content = "reason",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum Unfinished {
    /// It was running (or its testbed was being prepared) when the run stopped.
    Interrupted(String),
    /// Its turn never came.
    NotRun(String),
}

/// A selected test without a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfinishedTest {
    pub name: String,
    #[serde(flatten)]
    pub state: Unfinished,
}

/// One entry of results.json's `tests`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "not a test's result (name; result: PASS, FAIL, SKIP, FLAKY, BROKEN, \
                 INTERRUPTED or NOT_RUN; reason; duration_secs)"
)]
pub enum TestRecord {
    Finished(TestResult),
    Unfinished(UnfinishedTest),
}

impl TestRecord {
    pub fn name(&self) -> &str {
        match self {
            TestRecord::Finished(r) => &r.name,
            TestRecord::Unfinished(u) => &u.name,
        }
    }

    /// The result word and reason as results.json has them
    /// (`FAIL non-zero exit status 1`, `NOT_RUN interrupted by signal 2`).
    pub fn result_text(&self) -> String {
        let (word, reason) = match self {
            TestRecord::Finished(r) => {
                let words = ResultWords::from(r.outcome.clone());
                (words.result, words.reason)
            }
            TestRecord::Unfinished(u) => match &u.state {
                Unfinished::Interrupted(r) => ("INTERRUPTED".into(), Some(r.clone())),
                Unfinished::NotRun(r) => ("NOT_RUN".into(), Some(r.clone())),
            },
        };
        match reason {
            Some(reason) => format!("{word} {reason}"),
            None => word,
        }
    }
}

/// A run's results: results.json's layout, and what `run` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// The source tree's name.
    pub suite: String,
    /// How the testbed was asked for (`unshare --tarball T`).
    #[serde(default)]
    pub testbed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Every selected test got its result.
    pub complete: bool,
    /// autopkgtest's exit status, once the run is over.
    pub exit_code: Option<i32>,
    /// The signal that stopped the run, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub tests: Vec<TestRecord>,
}

impl Report {
    pub fn new(suite: &str, testbed: &str) -> Report {
        Report {
            schema: RESULTS_SCHEMA.into(),
            suite: suite.into(),
            testbed: testbed.into(),
            ..Report::default()
        }
    }

    /// The results so far (not the unfinished tests).
    pub fn results(&self) -> impl Iterator<Item = &TestResult> {
        self.tests.iter().filter_map(|t| match t {
            TestRecord::Finished(r) => Some(r),
            TestRecord::Unfinished(_) => None,
        })
    }

    /// autopkgtest's exit status for the results so far.
    pub fn exit_code_of_results(&self) -> i32 {
        let mut exit = ExitCode::default();
        self.results().for_each(|r| exit.record(&r.outcome));
        exit.finish()
    }

    /// Reads a run's results.json.
    pub fn read(path: &Path) -> Result<Report, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// junit.xml for this report.
    pub fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
        let status = |kind: Option<NonSuccessKind>, message: String| {
            let mut status = match kind {
                Some(kind) => TestCaseStatus::non_success(kind),
                None => TestCaseStatus::skipped(),
            };
            status.set_message(message);
            status
        };
        let mut suite = TestSuite::new(self.suite.as_str());
        for test in &self.tests {
            let (status, duration) = match test {
                TestRecord::Finished(r) => {
                    let status = match &r.outcome {
                        Outcome::Pass | Outcome::PassSuperficial => TestCaseStatus::success(),
                        Outcome::Skip(reason) | Outcome::Flaky(reason) => {
                            status(None, reason.clone())
                        }
                        Outcome::Fail(reason) => {
                            status(Some(NonSuccessKind::Failure), reason.clone())
                        }
                        Outcome::BadPackage => status(Some(NonSuccessKind::Failure), BADPKG.into()),
                        Outcome::Broken(reason) => {
                            status(Some(NonSuccessKind::Error), reason.clone())
                        }
                    };
                    (status, Some(Duration::from_secs_f64(r.duration_secs)))
                }
                TestRecord::Unfinished(u) => match &u.state {
                    Unfinished::Interrupted(reason) => {
                        (status(Some(NonSuccessKind::Error), reason.clone()), None)
                    }
                    Unfinished::NotRun(reason) => {
                        (status(None, format!("not run: {reason}")), None)
                    }
                },
            };
            let mut case = TestCase::new(test.name(), status);
            if let Some(duration) = duration {
                case.set_time(duration);
            }
            suite.add_test_case(case);
        }
        let mut report = quick_junit::Report::new("dep8");
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }
}

/// The exit status, computed the way autopkgtest's runner does.
#[derive(Clone, Debug, Default)]
pub struct ExitCode {
    code: i32,
    any_positive: bool,
}

impl ExitCode {
    /// Folds one result in.
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Pass => self.any_positive = true,
            Outcome::PassSuperficial => {}
            Outcome::Skip(_) | Outcome::Flaky(_) => self.code |= 2,
            Outcome::BadPackage | Outcome::Broken(_) => self.code |= EXIT_BAD_PACKAGE,
            Outcome::Fail(_) => self.code |= 4,
        }
    }

    /// The final status: 8 when nothing non-superficial passed and nothing
    /// worse than a skip happened.
    pub fn finish(&self) -> i32 {
        if matches!(self.code, 0 | 2) && !self.any_positive {
            8
        } else {
            self.code
        }
    }
}

/// `dep8 [HH:MM:SS]: MESSAGE`, as autopkgtest formats its log lines, with
/// `ERROR: ` or `WARNING: ` before the message by its level.
pub fn log_line(level: Level, text: &str, at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = match level {
        Level::Info => "",
        Level::Warning => "WARNING: ",
        Level::Error => "ERROR: ",
    };
    format!(
        "dep8 [{:02}:{:02}:{:02}]: {prefix}{text}\n",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The bytes the log holds for `event`: dep8's lines, the testbed's
/// output, and the reason a run stopped; nothing for the others.
pub fn log_bytes(event: &Event) -> Option<std::borrow::Cow<'_, [u8]>> {
    match event {
        Event::Message { level, text, at } => Some(log_line(*level, text, *at).into_bytes().into()),
        Event::Note(note) => Some(
            log_line(Level::Error, note, SystemTime::now())
                .into_bytes()
                .into(),
        ),
        Event::Output(bytes) => Some(bytes.as_slice().into()),
        _ => None,
    }
}

/// The output files that could not be written (a full disk), one line per
/// file, shared by the observers that write them: the run ends with them
/// named ([`Unwritten::lines`]).
#[derive(Clone, Default)]
pub struct Unwritten(Arc<Mutex<Vec<String>>>);

impl Unwritten {
    /// Records that `path` could not be written (once per file).
    pub fn note(&self, path: &Path, e: &std::io::Error) {
        let file = format!("cannot write {}: ", path.display());
        if let Ok(mut lines) = self.0.lock() {
            if !lines.iter().any(|u| u.starts_with(&file)) {
                lines.push(format!("{file}{e}"));
            }
        }
    }

    /// What could not be written so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

/// The log file: dep8's lines and everything the testbed printed.
pub struct LogFile {
    file: File,
    path: PathBuf,
    unwritten: Unwritten,
}

impl LogFile {
    pub fn create(path: &Path, unwritten: Unwritten) -> std::io::Result<LogFile> {
        Ok(LogFile {
            file: File::create(path)?,
            path: path.to_path_buf(),
            unwritten,
        })
    }
}

impl Observer for LogFile {
    fn event(&mut self, event: &Event) {
        if let Some(bytes) = log_bytes(event) {
            if let Err(e) = self.file.write_all(&bytes) {
                self.unwritten.note(&self.path, &e);
            }
        }
    }
}

/// The output dir's result files: the summary as tests finish, results.json
/// and junit.xml rewritten after every result and at the end.
pub struct ResultFiles {
    summary: File,
    summary_path: PathBuf,
    output_dir: PathBuf,
    report: Report,
    unwritten: Unwritten,
}

impl ResultFiles {
    /// Creates (truncates) the summary file at `summary_path`.
    pub fn create(
        output_dir: &Path,
        summary_path: &Path,
        report: Report,
        unwritten: Unwritten,
    ) -> std::io::Result<Self> {
        Ok(ResultFiles {
            summary: File::create(summary_path)?,
            summary_path: summary_path.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            report,
            unwritten,
        })
    }

    /// A line to the summary file; a failure is noted.
    fn write_summary(&mut self, line: &str) {
        if let Err(e) = writeln!(self.summary, "{line}") {
            self.unwritten.note(&self.summary_path, &e);
        }
    }

    fn write_files(&self) {
        let json = serde_json::to_string_pretty(&self.report).unwrap_or_default();
        for (name, bytes) in [
            ("results.json", json.into_bytes()),
            ("junit.xml", self.report.junit().into_bytes()),
        ] {
            let path = self.output_dir.join(name);
            if let Err(e) = write_atomically(&path, &bytes) {
                self.unwritten.note(&path, &e);
            }
        }
    }
}

impl Observer for ResultFiles {
    fn event(&mut self, event: &Event) {
        match event {
            Event::TestbedReady {
                testbed,
                capabilities,
            } => {
                self.report.testbed = testbed.clone();
                self.report.capabilities = Some(capabilities.clone());
            }
            Event::TestFinished(result) => {
                for line in result.summary_lines() {
                    self.write_summary(&line);
                }
                self.report.tests.push(TestRecord::Finished(result.clone()));
                self.write_files();
            }
            Event::SummaryLine(line) | Event::Note(line) => self.write_summary(line),
            Event::RunFinished(report) => {
                self.report = report.clone();
                self.write_files();
            }
            _ => {}
        }
    }
}

/// Writes a file through a temporary sibling and a rename, so readers never
/// see half a file; on failure (a full disk) the sibling is removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_of(outcomes: Vec<Outcome>) -> i32 {
        let mut exit = ExitCode::default();
        outcomes.iter().for_each(|o| exit.record(o));
        exit.finish()
    }

    #[test]
    fn exit_codes_like_autopkgtest() {
        assert_eq!(exit_of(vec![Outcome::Pass]), 0);
        assert_eq!(exit_of(vec![Outcome::Pass, Outcome::Skip("x".into())]), 2);
        assert_eq!(exit_of(vec![Outcome::Pass, Outcome::Fail("x".into())]), 4);
        assert_eq!(
            exit_of(vec![Outcome::Skip("x".into()), Outcome::Fail("x".into())]),
            6
        );
        assert_eq!(exit_of(vec![Outcome::Skip("x".into())]), 8);
        assert_eq!(exit_of(vec![Outcome::PassSuperficial]), 8);
        assert_eq!(exit_of(vec![]), 8);
        assert_eq!(exit_of(vec![Outcome::Pass, Outcome::BadPackage]), 12);
        assert_eq!(exit_of(vec![Outcome::Pass, Outcome::Flaky("x".into())]), 2);
        assert_eq!(
            exit_of(vec![
                Outcome::Pass,
                Outcome::Broken("x".into()),
                Outcome::Skip("y".into())
            ]),
            14
        );
    }

    #[test]
    fn summary_lines_are_autopkgtests() {
        let result = |outcome, details: &[&str]| TestResult {
            name: "t".into(),
            outcome,
            duration_secs: 0.0,
            details: details.iter().map(|d| d.to_string()).collect(),
            testbed: None,
        };
        assert_eq!(
            result(Outcome::Pass, &[]).summary_lines(),
            ["t                    PASS"]
        );
        assert_eq!(
            result(Outcome::BadPackage, &["badpkg: why"]).summary_lines(),
            ["t                    FAIL badpkg", "badpkg: why"]
        );
        assert_eq!(
            result(Outcome::Broken("x".into()), &[]).summary_lines(),
            ["t                    FAIL badpkg"]
        );
    }

    #[test]
    fn results_json_round_trips_through_the_report_types() {
        let mut report = Report::new("suite", "null");
        report.exit_code = Some(14);
        for outcome in [
            Outcome::Pass,
            Outcome::PassSuperficial,
            Outcome::Fail("non-zero exit status 1".into()),
            Outcome::Flaky("x".into()),
            Outcome::Skip("y".into()),
            Outcome::Broken("z".into()),
            Outcome::BadPackage,
        ] {
            report.tests.push(TestRecord::Finished(TestResult {
                name: outcome.word().into(),
                outcome,
                duration_secs: 1.5,
                details: vec!["blame: x".into()],
                testbed: None,
            }));
        }
        report.tests.push(TestRecord::Unfinished(UnfinishedTest {
            name: "late".into(),
            state: Unfinished::NotRun("interrupted".into()),
        }));
        let json = serde_json::to_string_pretty(&report).unwrap();
        assert!(
            json.contains("\"result\": \"FAIL\",\n      \"reason\": \"badpkg\""),
            "{json}"
        );
        assert!(json.contains("\"result\": \"NOT_RUN\""), "{json}");
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.tests[2].result_text(), "FAIL non-zero exit status 1");
        assert_eq!(back.tests[7].result_text(), "NOT_RUN interrupted");
    }

    #[test]
    fn log_lines_name_their_level() {
        let at = UNIX_EPOCH + Duration::from_secs(3600 + 2 * 60 + 3);
        assert_eq!(log_line(Level::Info, "hi", at), "dep8 [01:02:03]: hi\n");
        assert_eq!(
            log_line(Level::Error, "no", at),
            "dep8 [01:02:03]: ERROR: no\n"
        );
    }
}
