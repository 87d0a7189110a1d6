//! What a run leaves behind, as types and as files: the typed [`Report`]
//! (results.json's layout), and the observers of the event stream that
//! write the log, autopkgtest's summary, results.json and junit.xml.
//! results.json names every finished test as soon as it finishes, so that
//! a crash keeps everything finished so far; junit.xml follows it now and
//! then, at a small share of the run's time, and both are rewritten whole
//! when the run ends.

use crate::capability::Capabilities;
use crate::error::Error;
use crate::events::{Event, Level, Observer};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Why the run stopped before its tests were done, as the summary's
    /// last line says it (`erroneous package: ...`, `testbed failure: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What an erroneous package blames, as the summary's `blame:` line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blame: Vec<String>,
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

    /// Reads a run's results.json. The file is the user's word (`dep8
    /// report OUTPUT_DIR`): one that is missing, unreadable or malformed
    /// is a usage error naming it (and, for bad content, the line and
    /// column).
    pub fn read(path: &Path) -> Result<Report, Error> {
        let unusable = |e: &dyn std::fmt::Display| Error::Usage(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| unusable(&e))?;
        serde_json::from_str(&text).map_err(|e| unusable(&e))
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
        if let Some(error) = &self.error {
            suite.set_system_err(error.as_str());
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
/// extended by each result ([`PartialResults`]), junit.xml rewritten now
/// and then ([`RewritePace`]), both rewritten whole at the end.
pub struct ResultFiles {
    summary: File,
    summary_path: PathBuf,
    output_dir: PathBuf,
    report: Report,
    /// results.json on disk, once the first result wrote it.
    partial: Option<PartialResults>,
    /// When junit.xml is next rewritten during the run.
    junit_pace: RewritePace,
    unwritten: Unwritten,
}

/// A file rewritten whole during a run (junit.xml, the `--html` page) is
/// rewritten only after 1 / this share of the time its last rewrite took
/// has passed (and at least a second): its cost stays a small share of
/// the run however many tests it has, instead of growing with the square
/// of their number.
const REWRITE_COST_SHARE: u32 = 50;

/// When a file rewritten whole during a run may be rewritten next
/// ([`REWRITE_COST_SHARE`]); the first rewrite is due at once.
pub struct RewritePace {
    next: Instant,
}

impl Default for RewritePace {
    fn default() -> Self {
        RewritePace {
            next: Instant::now(),
        }
    }
}

impl RewritePace {
    /// Whether a rewrite during the run is due.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Runs `rewrite`, and paces the next one by the time it took.
    pub fn rewrite(&mut self, rewrite: impl FnOnce()) {
        let started = Instant::now();
        rewrite();
        let took = started.elapsed();
        self.next = Instant::now() + (took * REWRITE_COST_SHARE).max(Duration::from_secs(1));
    }
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
            partial: None,
            junit_pace: RewritePace::default(),
            unwritten,
        })
    }

    /// A line to the summary file; a failure is noted.
    fn write_summary(&mut self, line: &str) {
        if let Err(e) = writeln!(self.summary, "{line}") {
            self.unwritten.note(&self.summary_path, &e);
        }
    }

    /// Adds the last result to results.json: in place, or by writing the
    /// file whole the first time (or after a failed write).
    fn record_last_result(&mut self) {
        let path = self.output_dir.join(RESULTS_JSON);
        if let (Some(partial), Some(last)) = (self.partial.as_mut(), self.report.tests.last()) {
            match partial.append(last) {
                Ok(()) => return,
                // Then written whole, if the disk has room again.
                Err(e) => self.unwritten.note(&path, &e),
            }
        }
        let json = results_json(&self.report);
        let written = write_atomically(&path, json.as_bytes())
            .and_then(|()| PartialResults::open(&path, &json));
        self.partial = match written {
            Ok(partial) => Some(partial),
            Err(e) => {
                self.unwritten.note(&path, &e);
                None
            }
        };
    }

    /// Rewrites junit.xml, and says when it may be rewritten next.
    fn write_junit(&mut self) {
        let path = self.output_dir.join(JUNIT_XML);
        let (report, unwritten) = (&self.report, &self.unwritten);
        self.junit_pace.rewrite(|| {
            if let Err(e) = write_atomically(&path, report.junit().as_bytes()) {
                unwritten.note(&path, &e);
            }
        });
    }
}

/// The name of the run's results in its output dir.
const RESULTS_JSON: &str = "results.json";
/// The name of the run's junit report in its output dir.
const JUNIT_XML: &str = "junit.xml";

/// results.json's text for `report`.
fn results_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// How results.json ends while it has tests: `tests` is its last field.
const RESULTS_TAIL: &str = "\n  ]\n}";

/// results.json during a run, open to take one more result at a time in
/// linear time: each result is written, with the closing brackets after
/// it, over the closing brackets, by one positioned write. The file then
/// is the text a whole rewrite would give, and valid JSON between writes.
struct PartialResults {
    file: File,
    /// Where the closing brackets begin.
    tail_at: u64,
}

impl PartialResults {
    /// Opens results.json at `path`, just written whole as `json` (with
    /// tests).
    fn open(path: &Path, json: &str) -> std::io::Result<PartialResults> {
        debug_assert!(json.ends_with(RESULTS_TAIL), "{json}");
        Ok(PartialResults {
            file: std::fs::OpenOptions::new().write(true).open(path)?,
            tail_at: (json.len() - RESULTS_TAIL.len()) as u64,
        })
    }

    /// Writes `record` after the others; on failure (a full disk) the
    /// closing brackets are put back.
    fn append(&mut self, record: &TestRecord) -> std::io::Result<()> {
        // The record as to_string_pretty indents an element of `tests`.
        let record = serde_json::to_string_pretty(record)
            .unwrap_or_default()
            .replace('\n', "\n    ");
        let bytes = format!(",\n    {record}{RESULTS_TAIL}");
        if let Err(e) = self.file.write_all_at(bytes.as_bytes(), self.tail_at) {
            let tail_end = self.tail_at + RESULTS_TAIL.len() as u64;
            let _ = self
                .file
                .write_all_at(RESULTS_TAIL.as_bytes(), self.tail_at);
            let _ = self.file.set_len(tail_end);
            return Err(e);
        }
        self.tail_at += (bytes.len() - RESULTS_TAIL.len()) as u64;
        Ok(())
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
                self.record_last_result();
                if self.junit_pace.due() {
                    self.write_junit();
                }
            }
            Event::SummaryLine(line) | Event::Note(line) => self.write_summary(line),
            Event::RunFinished(report) => {
                self.report = report.clone();
                self.partial = None;
                let path = self.output_dir.join(RESULTS_JSON);
                if let Err(e) = write_atomically(&path, results_json(&self.report).as_bytes()) {
                    self.unwritten.note(&path, &e);
                }
                self.write_junit();
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
    fn a_rewrite_is_due_at_first_then_paced_by_its_cost() {
        let mut pace = RewritePace::default();
        assert!(pace.due());
        pace.rewrite(|| std::thread::sleep(Duration::from_millis(30)));
        // 30 ms × 50: not due for 1.5 s.
        assert!(!pace.due());
        assert!(pace.next >= Instant::now() + Duration::from_millis(1400));
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
    fn a_run_stopped_early_names_its_error_and_blame() {
        let mut report = Report::new("pkg", "null");
        assert!(!serde_json::to_string(&report).unwrap().contains("error"));
        report.exit_code = Some(12);
        report.error = Some("erroneous package: no source".into());
        report.blame = vec!["pkg".into()];
        let json = serde_json::to_string_pretty(&report).unwrap();
        assert!(json.ends_with("\"tests\": []\n}"), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
        let junit = report.junit();
        assert!(
            junit.contains("<system-err>erroneous package: no source</system-err>"),
            "{junit}"
        );
    }

    #[test]
    fn results_json_names_each_finished_test_and_reads_as_a_whole_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let summary = dir.path().join("summary");
        let empty = Report::new("suite", "null");
        let mut files =
            ResultFiles::create(dir.path(), &summary, empty.clone(), Unwritten::default()).unwrap();
        let mut expected = empty;
        for (name, outcome) in [
            ("a", Outcome::Pass),
            (
                "b \"quoted\"\nline",
                Outcome::Fail("non-zero exit status 1".into()),
            ),
            ("c", Outcome::BadPackage),
        ] {
            let result = TestResult {
                name: name.into(),
                outcome,
                duration_secs: 0.5,
                details: vec!["badpkg: why".into()],
                testbed: None,
            };
            files.event(&Event::TestFinished(result.clone()));
            expected.tests.push(TestRecord::Finished(result));
            let on_disk = std::fs::read_to_string(dir.path().join("results.json")).unwrap();
            assert_eq!(on_disk, serde_json::to_string_pretty(&expected).unwrap());
            assert_eq!(
                Report::read(&dir.path().join("results.json")).unwrap(),
                expected
            );
        }
        expected.complete = true;
        expected.exit_code = Some(12);
        files.event(&Event::RunFinished(expected.clone()));
        assert_eq!(
            Report::read(&dir.path().join("results.json")).unwrap(),
            expected
        );
        let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
        assert!(junit.contains("tests=\"3\""), "{junit}");
    }

    #[test]
    fn a_results_json_that_cannot_be_read_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        let missing = Report::read(&path).unwrap_err();
        assert!(matches!(missing, Error::Usage(_)), "{missing:?}");
        assert!(
            missing
                .to_string()
                .starts_with(&format!("{}: No such file", path.display())),
            "{missing}"
        );
        std::fs::write(&path, "{\"schema\": 3}").unwrap();
        let malformed = Report::read(&path).unwrap_err();
        assert!(matches!(malformed, Error::Usage(_)), "{malformed:?}");
        assert!(malformed.to_string().contains("line 1"), "{malformed}");
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
