//! A report to read and send: `dep8 report OUTPUT_DIR... --html FILE`,
//! `dep8 compare --html FILE` and `dep8 run --html FILE` (an observer of
//! the run's events, [`HtmlReport`]) write one self-contained HTML file: each
//! test's result, duration and reason, its part of the log, its stdout,
//! stderr and `-packages` (folded), links to the artifacts and, for several
//! runs, the matrix with the differing results marked. Inline CSS only, no
//! script: the file loads nothing from anywhere.
//!
//! Output dirs are read through results.json's own types
//! ([`dep8_core::report`]); the page is written with `format!` and one
//! escaping function, which is all a page without templates needs.

use dep8_core::error::Error;
use dep8_core::events::{Event, Observer};
use dep8_core::report::{
    write_atomically, Outcome, Report, RewritePace, TestRecord, Unfinished, Unwritten,
    RESULTS_SCHEMA,
};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// The title of the page of one or more runs' results.
const REPORT_TITLE: &str = "dep8 report";

/// The most of one file (log part, stdout, ...) shown inline; the rest is
/// behind a link to the file.
const SHOWN_BYTES: usize = 256 * 1024;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Output dirs of `dep8 run` or autopkgtest-compatible runs (with
    /// results.json).
    #[arg(required = true, value_name = "OUTPUT_DIR")]
    output_dirs: Vec<PathBuf>,
    /// Write the report to this HTML file.
    #[arg(long, value_name = "FILE", required = true)]
    html: PathBuf,
}

/// `dep8 report`: 0 when the page is written, 20 when a dir cannot be read.
pub fn report(args: ReportArgs) -> i32 {
    let mut runs = Vec::new();
    for dir in &args.output_dirs {
        match read_results(dir) {
            Ok(results) => runs.push(Run::of(dir.clone(), results)),
            Err(e) => return super::cmd::failed(e),
        }
    }
    match write(&args.html, &page(REPORT_TITLE, &runs)) {
        Ok(()) => 0,
        Err(e) => super::cmd::failed(e),
    }
}

/// The page `dep8 report OUTPUT_DIR --html FILE` writes for one run with
/// these results, its files in `output_dir`.
pub fn run_page(output_dir: &Path, results: Report) -> String {
    page(REPORT_TITLE, &[Run::of(output_dir.to_path_buf(), results)])
}

/// `dep8 run --html FILE`: keeps the run's results as they arrive and
/// rewrites FILE whole (through a sibling and a rename) after a test's
/// result, the page marked incomplete, as often as [`RewritePace`] allows
/// (after the first result at once; the page holds every test's output,
/// so rewriting it after each one would cost the square of their number),
/// and once more when the run ends. A write that fails is noted in
/// [`Unwritten`], which ends the run with 20.
pub struct HtmlReport {
    path: PathBuf,
    output_dir: PathBuf,
    results: Report,
    unwritten: Unwritten,
    pace: RewritePace,
}

impl HtmlReport {
    /// The report of a run writing into `output_dir`, starting from its
    /// `results` without tests.
    pub fn new(path: &Path, output_dir: &Path, results: Report, unwritten: Unwritten) -> Self {
        HtmlReport {
            path: path.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            results,
            unwritten,
            pace: RewritePace::default(),
        }
    }

    /// Writes the page for the results so far; the output dir's files
    /// (log, stdout, ...) are read now, as `dep8 report` reads them.
    fn write(&mut self) {
        let (path, output_dir, results, unwritten) =
            (&self.path, &self.output_dir, &self.results, &self.unwritten);
        self.pace.rewrite(|| {
            let html = run_page(output_dir, results.clone());
            if let Err(e) = write_atomically(path, html.as_bytes()) {
                unwritten.note(path, &e);
            }
        });
    }
}

impl Observer for HtmlReport {
    fn event(&mut self, event: &Event) {
        match event {
            Event::TestbedReady { testbed, .. } => self.results.testbed = testbed.clone(),
            Event::TestFinished(result) => {
                self.results
                    .tests
                    .push(TestRecord::Finished(result.clone()));
                if self.pace.due() {
                    self.write();
                }
            }
            Event::RunFinished(results) => {
                self.results = results.clone();
                self.write();
            }
            _ => {}
        }
    }
}

/// Reads `DIR/results.json` into the engine's own [`Report`]; the error
/// names the file and, for bad content, the line and column. The dir is
/// the user's word: one without readable results is a usage error.
pub fn read_results(dir: &Path) -> Result<Report, Error> {
    let path = dir.join("results.json");
    let report = Report::read(&path)?;
    if report.schema != RESULTS_SCHEMA {
        return Err(Error::Usage(format!(
            "{}: schema {:?}, this dep8 reads {RESULTS_SCHEMA:?}",
            path.display(),
            report.schema
        )));
    }
    Ok(report)
}

/// results.json's result word of a test (`PASS`, `BROKEN`, `NOT_RUN`, ...).
fn result_word(test: &TestRecord) -> &'static str {
    match test {
        TestRecord::Finished(r) => r.outcome.word(),
        TestRecord::Unfinished(u) => match u.state {
            Unfinished::Interrupted(_) => "INTERRUPTED",
            Unfinished::NotRun(_) => "NOT_RUN",
        },
    }
}

/// Why a test got its result, if a reason goes with it.
fn reason(test: &TestRecord) -> Option<String> {
    match test {
        TestRecord::Finished(r) => match &r.outcome {
            Outcome::Pass | Outcome::PassSuperficial => None,
            Outcome::BadPackage => Some("badpkg".into()),
            Outcome::Fail(why)
            | Outcome::Flaky(why)
            | Outcome::Skip(why)
            | Outcome::Broken(why) => Some(why.clone()),
        },
        TestRecord::Unfinished(u) => match &u.state {
            Unfinished::Interrupted(why) | Unfinished::NotRun(why) => Some(why.clone()),
        },
    }
}

/// The matrix rows of a report, in run order.
fn rows(report: &Report) -> Vec<Row> {
    report
        .tests
        .iter()
        .map(|t| Row {
            name: t.name().to_string(),
            word: result_word(t),
            text: t.result_text(),
        })
        .collect()
}

/// One test's line in a matrix.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub word: &'static str,
    pub text: String,
}

/// One run (a column of the matrix, a section of the page).
pub struct Run {
    pub label: String,
    pub dir: PathBuf,
    pub exit_code: Option<i32>,
    /// None when the run left no readable results.json.
    pub results: Option<Report>,
    /// The tests in run order; for a run without results, one row `*` with
    /// the summary's first line.
    pub rows: Vec<Row>,
}

impl Run {
    /// A run with `results`, its files in `dir`, named by its testbed.
    fn of(dir: PathBuf, results: Report) -> Run {
        Run {
            label: if results.testbed.is_empty() {
                dir.display().to_string()
            } else {
                results.testbed.clone()
            },
            dir,
            exit_code: results.exit_code,
            rows: rows(&results),
            results: Some(results),
        }
    }

    /// A finished run of `dep8 compare`, exited with `exit_code`.
    pub fn read(label: String, dir: PathBuf, exit_code: Option<i32>) -> Run {
        let (results, rows) = match read_results(&dir) {
            Ok(results) if !results.tests.is_empty() => {
                let rows = rows(&results);
                (Some(results), rows)
            }
            read => {
                let summary = std::fs::read_to_string(dir.join("summary")).unwrap_or_default();
                let text = match (summary.lines().next(), read) {
                    (Some(line), _) => line.to_string(),
                    (None, Err(e)) => e.to_string(),
                    (None, Ok(_)) => "no results".into(),
                };
                let row = Row {
                    name: "*".into(),
                    word: "?",
                    text,
                };
                (None, vec![row])
            }
        };
        Run {
            label,
            dir,
            exit_code,
            results,
            rows,
        }
    }

    fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Every test name of any run, in the order the runs reported them.
pub fn names(runs: &[Run]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for row in runs.iter().flat_map(|r| &r.rows) {
        if !names.contains(&row.name.as_str()) {
            names.push(&row.name);
        }
    }
    names
}

/// The result word of a test in a run (`-` when it has none).
pub fn word<'a>(run: &'a Run, name: &str) -> &'a str {
    run.row(name).map_or("-", |r| r.word)
}

/// The result with its reason of a test in a run.
pub fn text<'a>(run: &'a Run, name: &str) -> Option<&'a str> {
    run.row(name).map(|r| r.text.as_str())
}

/// Whether a test's result word is not the same in every run.
pub fn differs(runs: &[Run], name: &str) -> bool {
    runs.windows(2)
        .any(|w| word(&w[0], name) != word(&w[1], name))
}

/// Writes `html` to `path`; a path that cannot be written is a usage error.
pub fn write(path: &Path, html: &str) -> Result<(), Error> {
    std::fs::write(path, html).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

const STYLE: &str = "\
body{font-family:sans-serif;margin:1em 2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}\
.PASS{color:#070}.FAIL,.BROKEN,.INTERRUPTED{color:#b00;font-weight:bold}\
.SKIP,.FLAKY,.NOT_RUN{color:#946200}\
tr.differs td{background:#fdd}td.differs-mark{color:#b00;font-weight:bold}\
pre{background:#f6f6f6;padding:.5em;overflow-x:auto;white-space:pre-wrap}\
details{margin:.3em 0}summary{cursor:pointer}section.test{margin-left:1em}";

/// The whole page: the matrix when there are several runs, then each run.
pub fn page(title: &str, runs: &[Run]) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    if runs.len() > 1 {
        html += &matrix(runs);
    }
    for (i, run) in runs.iter().enumerate() {
        html += &run_section(i + 1, run);
    }
    html += "</body>\n</html>\n";
    html
}

/// The tests × runs table; the rows whose result words differ are marked.
fn matrix(runs: &[Run]) -> String {
    let mut html =
        String::from("<h2>Results side by side</h2>\n<table class=\"matrix\">\n<tr><th>test</th>");
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(
            html,
            "<th><a href=\"#run{}\">[{}] {}</a></th>",
            i + 1,
            i + 1,
            esc(&run.label)
        );
    }
    html += "<th></th></tr>\n";
    for name in names(runs) {
        let differs = differs(runs, name);
        html += if differs {
            "<tr class=\"differs\">"
        } else {
            "<tr>"
        };
        let _ = write!(html, "<td>{}</td>", esc(name));
        for run in runs {
            let _ = write!(
                html,
                "<td class=\"{}\">{}</td>",
                word(run, name),
                esc(text(run, name).unwrap_or("-"))
            );
        }
        html += if differs {
            "<td class=\"differs-mark\">differs</td></tr>\n"
        } else {
            "<td></td></tr>\n"
        };
    }
    html += "</table>\n";
    html
}

/// One run: its facts, its results table, then each test's details.
fn run_section(number: usize, run: &Run) -> String {
    let mut html = format!(
        "<section class=\"run\" id=\"run{number}\">\n<h2>[{number}] {}</h2>\n<p>",
        esc(&run.label)
    );
    if let Some(results) = &run.results {
        let _ = write!(html, "suite <b>{}</b>; ", esc(&results.suite));
        if !results.complete {
            html += "<b>incomplete</b> (the run stopped before every test had its result); ";
        }
    }
    let exit = run.exit_code.map_or("none".to_string(), |c| c.to_string());
    let _ = writeln!(
        html,
        "exit status {exit}; output dir <a href=\"{}\">{}</a></p>",
        href(&run.dir),
        esc(&run.dir.display().to_string())
    );
    let Some(results) = &run.results else {
        let _ = writeln!(html, "<p>{}</p>\n</section>", esc(&run.rows[0].text));
        return html;
    };
    html += "<table class=\"results\">\n<tr><th>test</th><th>result</th><th>duration</th><th>reason</th></tr>\n";
    for (i, test) in results.tests.iter().enumerate() {
        let duration = match test {
            TestRecord::Finished(r) => format!("{:.1} s", r.duration_secs),
            TestRecord::Unfinished(_) => String::new(),
        };
        let _ = writeln!(
            html,
            "<tr><td><a href=\"#run{number}-test{i}\">{}</a></td><td class=\"{}\">{}</td><td>{duration}</td><td>{}</td></tr>",
            esc(test.name()),
            result_word(test),
            result_word(test),
            esc(reason(test).as_deref().unwrap_or(""))
        );
    }
    html += "</table>\n";
    let log = std::fs::read(run.dir.join("log")).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let names: Vec<&str> = results.tests.iter().map(TestRecord::name).collect();
    let sections = log_sections(&log, &names);
    for (i, test) in results.tests.iter().enumerate() {
        let _ = writeln!(
            html,
            "<section class=\"test\" id=\"run{number}-test{i}\">\n<h3>{} <span class=\"{}\">{}</span></h3>",
            esc(test.name()),
            result_word(test),
            esc(&test.result_text())
        );
        if let TestRecord::Finished(r) = test {
            for line in &r.details {
                let _ = writeln!(html, "<p>{}</p>", esc(line));
            }
        }
        if let Some(section) = sections.get(test.name()) {
            html += &folded("log", section, None);
        }
        for suffix in ["stdout", "stderr", "packages"] {
            let path = run.dir.join(format!("{}-{suffix}", test.name()));
            if let Ok(bytes) = std::fs::read(&path) {
                html += &folded(
                    &format!("{}-{suffix}", test.name()),
                    &String::from_utf8_lossy(&bytes),
                    Some(&path),
                );
            }
        }
        html += "</section>\n";
    }
    html += &artifacts(&run.dir.join("artifacts"));
    html += "</section>\n";
    html
}

/// A folded block of text; past [`SHOWN_BYTES`], the rest is behind a link
/// to `file`.
fn folded(title: &str, text: &str, file: Option<&Path>) -> String {
    let mut shown = text;
    if shown.len() > SHOWN_BYTES {
        let mut end = SHOWN_BYTES;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown = &shown[..end];
    }
    let mut html = format!(
        "<details class=\"{}\"><summary>{} ({} bytes)</summary><pre>{}</pre>",
        title.rsplit('-').next().unwrap_or(title),
        esc(title),
        text.len(),
        esc(shown)
    );
    if shown.len() < text.len() {
        let _ = write!(html, "<p>{} more bytes", text.len() - shown.len());
        if let Some(file) = file {
            let _ = write!(html, " in <a href=\"{}\">{}</a>", href(file), esc(title));
        }
        html += "</p>";
    }
    html += "</details>\n";
    html
}

/// Each test's part of the log, in one pass (the page of `dep8 run
/// --html` is rendered after every result): from a `test NAME: ` line to
/// the first line of another test (or of the summary). Tests without a
/// line in the log have no part.
fn log_sections<'n>(log: &str, names: &[&'n str]) -> HashMap<&'n str, String> {
    let known: HashSet<&str> = names.iter().copied().collect();
    let mut sections: HashMap<&str, String> = HashMap::new();
    let mut current: Option<&str> = None;
    for line in log.split_inclusive('\n') {
        if line.contains("@@@@@@@@@@@@@@@@@@@@ summary") {
            current = None;
        } else if let Some((_, rest)) = line.split_once("]: test ") {
            // The shortest `NAME: ` it starts with that names a test.
            let named = rest
                .match_indices(": ")
                .find_map(|(end, _)| known.get(&rest[..end]).copied());
            current = named.or(current);
        }
        if let Some(name) = current {
            sections.entry(name).or_default().push_str(line);
        }
    }
    sections
}

/// Links to every file under the run's artifacts dir.
fn artifacts(dir: &Path) -> String {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        return String::new();
    }
    files.sort();
    let mut html = String::from("<h3>Artifacts</h3>\n<ul class=\"artifacts\">\n");
    for file in files {
        let shown = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        let _ = writeln!(
            html,
            "<li><a href=\"{}\">{}</a></li>",
            href(&file),
            esc(&shown)
        );
    }
    html += "</ul>\n";
    html
}

/// A link to a local file: its absolute path as a `file:` URL, so that the
/// page works wherever it is written.
fn href(path: &Path) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    /// What a URL path must not hold as is.
    const PATH: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'&')
        .add(b'\'');
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let clean: PathBuf = absolute
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    format!(
        "file://{}",
        utf8_percent_encode(&clean.to_string_lossy(), PATH)
    )
}

/// Text as HTML text or attribute value.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dep8_core::report::TestResult;

    #[test]
    fn results_json_round_trips_through_the_reporters_types() {
        let json = r#"{"schema": "dep8-results/1", "suite": "hello", "complete": false,
            "exit_code": null, "testbed": "null", "tests": [
            {"name": "a", "result": "PASS", "duration_secs": 1.5},
            {"name": "b", "result": "PASS (superficial)", "duration_secs": 0.1},
            {"name": "c", "result": "FAIL", "reason": "non-zero exit status 1",
             "duration_secs": 2.0, "details": ["blame: x"]},
            {"name": "d", "result": "BROKEN", "reason": "bad field", "duration_secs": 0.0},
            {"name": "e", "result": "NOT_RUN", "reason": "the run was interrupted"}]}"#;
        let results: Report = serde_json::from_str(json).unwrap();
        let texts: Vec<String> = results.tests.iter().map(TestRecord::result_text).collect();
        assert_eq!(
            texts,
            [
                "PASS",
                "PASS (superficial)",
                "FAIL non-zero exit status 1",
                "BROKEN bad field",
                "NOT_RUN the run was interrupted"
            ]
        );
    }

    #[test]
    fn a_bad_test_entry_is_named_with_its_line() {
        let json = "{\"schema\": \"dep8-results/1\", \"suite\": \"s\", \"exit_code\": 0,\n\
                    \"tests\": [\n{\"name\": \"a\", \"result\": \"PASSED\"}]}";
        let e = serde_json::from_str::<Report>(json)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("not a test's result (name; result: PASS"),
            "{e}"
        );
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn log_sections_run_to_the_next_test() {
        let log = "dep8 [10:00:00]: opening testbed\n\
                   dep8 [10:00:01]: test a: preparing testbed\n\
                   dep8 [10:00:01]: test a: [-----------------------\n\
                   out of a\n\
                   dep8 [10:00:02]: test a: -----------------------]\n\
                   dep8 [10:00:02]: test ab: preparing testbed\n\
                   out of ab\n\
                   dep8 [10:00:03]: @@@@@@@@@@@@@@@@@@@@ summary\n\
                   a PASS\n";
        let sections = log_sections(log, &["a", "ab", "never"]);
        let section = &sections["a"];
        assert!(
            section.starts_with("dep8 [10:00:01]: test a: preparing"),
            "{section}"
        );
        assert!(section.contains("out of a\n"));
        assert!(
            !section.contains("ab") && !section.contains("summary"),
            "{section}"
        );
        assert_eq!(sections["ab"].lines().count(), 2);
        assert!(!sections.contains_key("never"));
    }

    #[test]
    fn run_html_is_rewritten_as_its_pace_allows_and_when_the_run_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        let unwritten = Unwritten::default();
        let empty = Report::new("suite", "null");
        let mut html = HtmlReport::new(&path, dir.path(), empty.clone(), unwritten.clone());
        let result = |name: &str, outcome| TestResult {
            name: name.into(),
            outcome,
            duration_secs: 0.5,
            details: Vec::new(),
            testbed: None,
        };
        let first = result("first", Outcome::Pass);
        let second = result("second", Outcome::Fail("non-zero exit status 1".into()));
        html.event(&Event::TestFinished(first.clone()));
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(
            page.contains(">first</a></td><td class=\"PASS\">"),
            "{page}"
        );
        assert!(page.contains("<b>incomplete</b>"), "{page}");
        // Within a second of the last rewrite: not yet.
        html.event(&Event::TestFinished(second.clone()));
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(!page.contains(">second</a>"), "{page}");
        // Once the pace allows, the next result rewrites it with all so far.
        html.pace = RewritePace::default();
        let third = result("third", Outcome::Pass);
        html.event(&Event::TestFinished(third));
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(
            page.contains(">second</a></td><td class=\"FAIL\">") && page.contains(">third</a>"),
            "{page}"
        );
        assert!(page.contains("<b>incomplete</b>"), "{page}");
        let finished = Report {
            complete: true,
            exit_code: Some(4),
            tests: vec![TestRecord::Finished(first), TestRecord::Finished(second)],
            ..empty
        };
        html.event(&Event::RunFinished(finished.clone()));
        let page = std::fs::read_to_string(&path).unwrap();
        assert_eq!(page, run_page(dir.path(), finished));
        assert!(
            !page.contains("incomplete") && page.contains("exit status 4"),
            "{page}"
        );
        assert_eq!(unwritten.lines(), Vec::<String>::new());
    }

    #[test]
    fn a_run_html_that_cannot_be_written_is_noted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/report.html");
        let unwritten = Unwritten::default();
        let mut html = HtmlReport::new(
            &path,
            dir.path(),
            Report::new("suite", "null"),
            unwritten.clone(),
        );
        html.event(&Event::RunFinished(Report::new("suite", "null")));
        let lines = unwritten.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!("cannot write {}: ", path.display())),
            "{lines:?}"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
