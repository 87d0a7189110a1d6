//! What a run leaves behind: the log, autopkgtest's summary format, and the
//! machine-readable results.json and junit.xml, rewritten after every test
//! so that a crash or Ctrl-C keeps everything finished so far.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The version of results.json's layout; bumped on incompatible changes.
pub const RESULTS_SCHEMA: &str = "dep8-results/1";

/// A test's result, in autopkgtest's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    tag = "result",
    content = "reason",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum Outcome {
    Pass,
    #[serde(rename = "PASS (superficial)")]
    PassSuperficial,
    Fail(String),
    Flaky(String),
    Skip(String),
    Broken(String),
}

impl Outcome {
    /// The summary text after the name: `PASS`, `FAIL non-zero exit status 1`, ...
    /// Only autopkgtest's words: a test dep8 could not parse (BROKEN in
    /// results.json) is `FAIL badpkg`, as autopkgtest blames the package.
    pub fn summary_text(&self) -> String {
        match self {
            Outcome::Pass => "PASS".into(),
            Outcome::PassSuperficial => "PASS (superficial)".into(),
            Outcome::Fail(r) => format!("FAIL {r}"),
            Outcome::Flaky(r) => format!("FLAKY {r}"),
            Outcome::Skip(r) => format!("SKIP {r}"),
            Outcome::Broken(_) => "FAIL badpkg".into(),
        }
    }

    /// The result word alone (`PASS`, `FAIL`, ...).
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass | Outcome::PassSuperficial => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Flaky(_) => "FLAKY",
            Outcome::Skip(_) => "SKIP",
            Outcome::Broken(_) => "BROKEN",
        }
    }
}

/// One line of the summary, with what results.json and junit.xml need.
#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_secs: f64,
    /// Extra summary lines (`blame: ...`, `badpkg: ...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// A selected test that got no result because the run stopped first; it is
/// named in results.json and junit.xml, not in the summary (autopkgtest's
/// summary has no line for it either).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

#[derive(Serialize)]
struct UnfinishedEntry<'a> {
    name: &'a str,
    #[serde(flatten)]
    state: &'a Unfinished,
}

/// The exit status, computed the way autopkgtest's runner does.
#[derive(Clone, Debug, Default)]
pub struct ExitCode {
    code: i32,
    any_positive: bool,
}

impl ExitCode {
    /// Folds one result in.
    pub fn record(&mut self, result: &TestResult) {
        match &result.outcome {
            Outcome::Pass => self.any_positive = true,
            Outcome::PassSuperficial => {}
            Outcome::Skip(_) | Outcome::Flaky(_) => self.code |= 2,
            Outcome::Fail(reason) if reason == "badpkg" => self.code |= 12,
            Outcome::Fail(_) => self.code |= 4,
            Outcome::Broken(_) => self.code |= 12,
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

/// Exit status for a testbed failure.
/// An erroneous package: setup commands blamed it (autopkgtest's 12).
pub const EXIT_BAD_PACKAGE: i32 = 12;
pub const EXIT_TESTBED_FAILURE: i32 = 16;
/// Exit status for bad usage and unexpected errors.
pub const EXIT_UNEXPECTED: i32 = 20;

/// The run's log: timestamped lines and test output, on stderr and in a file.
#[derive(Clone)]
pub struct RunLog {
    file: Option<Arc<Mutex<File>>>,
    echo: bool,
}

impl RunLog {
    pub fn new(path: Option<&Path>, echo: bool) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(Arc::new(Mutex::new(File::create(p)?))),
            None => None,
        };
        Ok(RunLog { file, echo })
    }

    /// Raw bytes (test output) to the log and stderr.
    pub fn raw(&self, bytes: &[u8]) {
        if self.echo {
            let _ = std::io::stderr().write_all(bytes);
        }
        if let Some(f) = &self.file {
            let _ = f.lock().map(|mut f| f.write_all(bytes));
        }
    }

    /// `dep8 [HH:MM:SS]: MESSAGE`, as autopkgtest formats its log lines.
    pub fn info(&self, message: &str) {
        self.raw(format!("dep8 [{}]: {message}\n", clock()).as_bytes());
    }

    pub fn error(&self, message: &str) {
        self.info(&format!("ERROR: {message}"));
    }

    pub fn warning(&self, message: &str) {
        self.info(&format!("WARNING: {message}"));
    }
}

/// The current UTC time of day, `HH:MM:SS`.
fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The output directory's result files, kept up to date as tests finish.
pub struct Reporter {
    log: RunLog,
    summary: File,
    output_dir: PathBuf,
    suite: String,
    results: Vec<TestResult>,
    unfinished: Vec<(String, Unfinished)>,
    pub exit: ExitCode,
    /// Top-level facts for results.json (testbed, capabilities, ...).
    pub context: serde_json::Map<String, serde_json::Value>,
}

impl Reporter {
    pub fn new(
        output_dir: &Path,
        summary_path: &Path,
        suite: &str,
        log: RunLog,
    ) -> std::io::Result<Self> {
        let summary = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(summary_path)?;
        Ok(Reporter {
            log,
            summary,
            output_dir: output_dir.to_path_buf(),
            suite: suite.to_string(),
            results: Vec::new(),
            unfinished: Vec::new(),
            exit: ExitCode::default(),
            context: serde_json::Map::new(),
        })
    }

    pub fn results(&self) -> &[TestResult] {
        &self.results
    }

    /// Records a result: summary line on stdout and in the summary file,
    /// then results.json and junit.xml rewritten.
    pub fn record(
        &mut self,
        name: &str,
        outcome: Outcome,
        duration: Duration,
        details: Vec<String>,
    ) {
        let result = TestResult {
            name: name.to_string(),
            outcome,
            duration_secs: duration.as_secs_f64(),
            details,
        };
        let mut lines = vec![format!(
            "{:<20} {}",
            result.name,
            result.outcome.summary_text()
        )];
        lines.extend(result.details.iter().cloned());
        // A closed stdout (`dep8 run | head -1`) loses only the echo: the
        // files and the remaining tests go on.
        let mut stdout = std::io::stdout().lock();
        for line in &lines {
            let _ = writeln!(stdout, "{line}");
            let _ = writeln!(self.summary, "{line}");
        }
        let _ = stdout.flush();
        drop(stdout);
        self.exit.record(&result);
        self.results.push(result);
        self.write_files(None);
    }

    /// A line in the summary file and on stdout that is not a test's result
    /// (`-V`'s "Test specification is valid").
    pub fn summary_line(&mut self, line: &str) {
        let _ = writeln!(std::io::stdout(), "{line}");
        let _ = writeln!(self.summary, "{line}");
    }

    /// Names a test that got no result (the run stopped first).
    pub fn unfinished(&mut self, name: &str, state: Unfinished) {
        self.unfinished.push((name.to_string(), state));
    }

    /// A line in the summary file that is not a test result (`testbed failure: ...`).
    pub fn summary_note(&mut self, line: &str) {
        let _ = writeln!(self.summary, "{line}");
        self.log.error(line);
    }

    /// Rewrites results.json and junit.xml; `end` once the run is over:
    /// its exit code, and whether every selected test got its result.
    pub fn write_files(&self, end: Option<(i32, bool)>) {
        let mut doc = self.context.clone();
        doc.insert("schema".into(), RESULTS_SCHEMA.into());
        doc.insert("suite".into(), self.suite.clone().into());
        doc.insert("complete".into(), end.is_some_and(|(_, all)| all).into());
        doc.insert("exit_code".into(), end.map(|(code, _)| code).into());
        let mut tests: Vec<serde_json::Value> = self
            .results
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect();
        tests.extend(self.unfinished.iter().map(|(name, state)| {
            serde_json::to_value(UnfinishedEntry { name, state }).unwrap_or_default()
        }));
        doc.insert("tests".into(), tests.into());
        let json = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = write_atomically(&self.output_dir.join("results.json"), json.as_bytes()) {
            self.log.warning(&format!("cannot write results.json: {e}"));
        }
        if let Err(e) =
            write_atomically(&self.output_dir.join("junit.xml"), self.junit().as_bytes())
        {
            self.log.warning(&format!("cannot write junit.xml: {e}"));
        }
    }

    fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(self.suite.as_str());
        for r in &self.results {
            let status = match &r.outcome {
                Outcome::Pass | Outcome::PassSuperficial => TestCaseStatus::success(),
                Outcome::Skip(reason) | Outcome::Flaky(reason) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(reason.as_str());
                    s
                }
                Outcome::Fail(reason) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(reason.as_str());
                    s
                }
                Outcome::Broken(reason) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(reason.as_str());
                    s
                }
            };
            let mut case = TestCase::new(r.name.as_str(), status);
            case.set_time(Duration::from_secs_f64(r.duration_secs));
            suite.add_test_case(case);
        }
        for (name, state) in &self.unfinished {
            let status = match state {
                Unfinished::Interrupted(reason) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(reason.as_str());
                    s
                }
                Unfinished::NotRun(reason) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(format!("not run: {reason}"));
                    s
                }
            };
            suite.add_test_case(TestCase::new(name.as_str(), status));
        }
        let mut report = Report::new("dep8");
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }
}

/// Writes a file through a temporary sibling and a rename, so readers never
/// see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome) -> TestResult {
        TestResult {
            name: "t".into(),
            outcome,
            duration_secs: 0.0,
            details: vec![],
        }
    }

    fn exit_of(outcomes: Vec<Outcome>) -> i32 {
        let mut exit = ExitCode::default();
        outcomes.into_iter().for_each(|o| exit.record(&result(o)));
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
        assert_eq!(
            exit_of(vec![Outcome::Pass, Outcome::Fail("badpkg".into())]),
            12
        );
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
    fn summary_line_is_padded_to_20_columns() {
        assert_eq!(
            format!("{:<20} {}", "t", Outcome::Pass.summary_text()),
            "t                    PASS"
        );
    }
}
