//! `dep8 report OUT --html FILE`, `dep8 compare --html FILE` and `dep8 run
//! --html FILE`, opened in a real headless browser (Debian's chromium):
//! what it shows (printed to PDF, read back with pdftotext) has every
//! test's name, result and reason, the artifacts and, for compare, the one
//! differing row marked; the logs and outputs are in the page but folded;
//! and the page loads nothing: no external reference in its DOM, and no
//! request reaches the proxy the browser is given (a control page proves
//! the proxy sees one). `run --html`'s page has every test with the
//! summary's result, and is there, marked incomplete, after a Ctrl-C.

use dep8_tests::e2e::{
    dep8_bin, interrupt_when, repo, required_program, result_words, source_tree, write, Dep8Run,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hosts Chromium itself calls (time, component updates, sign-in) even
/// with background networking off; exact names, so that a page loading
/// from any other host (fonts.googleapis.com, a CDN) is still caught.
const BROWSER_OWN_HOSTS: &[&str] = &[
    "clients2.google.com",
    "update.googleapis.com",
    "accounts.google.com",
    "redirector.gvt1.com",
];

/// A suite with a pass (and an artifact), a failure, and a test that needs
/// a container (skipped on the host, run where it is faked).
fn suite(dir: &Path) -> PathBuf {
    let tree = source_tree(
        dir,
        "reported",
        "Tests: passes fails\nDepends:\n\nTests: container-only\nDepends:\nRestrictions: isolation-container\n",
    );
    let script = |name: &str, body: &str| {
        let path = tree.join("debian/tests").join(name);
        write(&path, &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "passes",
        "echo stdout-of-passes\necho art > \"$AUTOPKGTEST_ARTIFACTS/artifact-of-passes.txt\"",
    );
    script("fails", "echo stdout-of-fails\nexit 3");
    script("container-only", "echo in-a-container");
    tree
}

fn dep8(args: &[&str]) -> Output {
    let out = Command::new(dep8_bin()).args(args).output().unwrap();
    eprintln!(
        "dep8 {}:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A proxy that answers nothing and notes each request's first line.
struct Proxy {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let noted = Arc::clone(&requests);
        // Ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let _ = BufReader::new(stream).read_line(&mut line);
                noted.lock().unwrap().push(line.trim_end().to_string());
            }
        });
        Proxy { port, requests }
    }

    /// The hosts requested since the last call.
    fn take_hosts(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
            .iter()
            .filter_map(|line| {
                // `GET http://HOST/...` or `CONNECT HOST:443`.
                let target = line.split_whitespace().nth(1)?;
                let host = target.strip_prefix("http://").unwrap_or(target);
                let host = host.split(['/', ':']).next()?;
                Some(host.to_string())
            })
            .collect()
    }
}

/// Chromium, headless, on `page`, every request sent to `proxy`; `what`
/// is `--dump-dom` or `--print-to-pdf=FILE`. Returns its stdout.
fn chromium(chromium: &Path, page: &Path, proxy: &Proxy, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            // As root, chromium refuses to start sandboxed.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--disable-sync",
            "--no-pings",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-server=http://127.0.0.1:{}", proxy.port))
        .arg(what)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("chromium did not finish with {} in 180 s", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium {what} {}: {:?}",
        page.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the browser shows of `page`: its text as printed.
fn shown_text(browser: &Path, pdftotext: &Path, page: &Path, proxy: &Proxy) -> String {
    let pdf = page.with_extension("pdf");
    chromium(
        browser,
        page,
        proxy,
        &format!("--print-to-pdf={}", pdf.display()),
    );
    let out = Command::new(pdftotext).arg(&pdf).arg("-").output().unwrap();
    assert!(out.status.success(), "pdftotext {}", pdf.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every reference in the DOM is to the page itself or a local file, and
/// nothing can load: no script, stylesheet link, frame or CSS import.
fn assert_self_contained(dom: &str) {
    for needle in [
        "<script", "<link", "<iframe", "<object", "<embed", "@import", "url(",
    ] {
        assert!(!dom.contains(needle), "the page has {needle}:\n{dom}");
    }
    for attribute in ["src=\"", "href=\"", "srcset=\"", "action=\"", "poster=\""] {
        for value in dom.split(attribute).skip(1) {
            let value = value.split('"').next().unwrap_or("");
            assert!(
                value.starts_with('#') || value.starts_with("file:///"),
                "{attribute}{value}\" leaves the page"
            );
        }
    }
}

fn assert_no_request(proxy: &Proxy, page: &str) {
    let page_hosts: Vec<String> = proxy
        .take_hosts()
        .into_iter()
        .filter(|h| !BROWSER_OWN_HOSTS.contains(&h.as_str()))
        .collect();
    assert!(
        page_hosts.is_empty(),
        "{page} made requests to {page_hosts:?}"
    );
}

#[test]
fn report_and_compare_pages_show_results_and_load_nothing() {
    let (Some(browser), Some(pdftotext)) = (
        required_program("chromium", "chromium"),
        required_program("pdftotext", "poppler-utils"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = suite(dir.path());
    let proxy = Proxy::start();

    // The detector works: a page with a remote image is caught.
    let control = dir.path().join("control.html");
    write(
        &control,
        "<!DOCTYPE html><p>control</p><img src=\"http://dep8-canary.invalid/x.png\">",
    );
    chromium(&browser, &control, &proxy, "--dump-dom");
    assert!(
        proxy
            .take_hosts()
            .contains(&"dep8-canary.invalid".to_string()),
        "the proxy did not see the control page's request"
    );

    // One run on the host: passes, fails, container-only skipped.
    let out = dir.path().join("out");
    let run = dep8(&[
        "run",
        "-o",
        out.to_str().unwrap(),
        tree.to_str().unwrap(),
        "--",
        "null",
    ]);
    assert_eq!(run.status.code(), Some(6), "a failure and a skip");
    let report = dir.path().join("report.html");
    let made = dep8(&[
        "report",
        out.to_str().unwrap(),
        "--html",
        report.to_str().unwrap(),
    ]);
    assert_eq!(made.status.code(), Some(0));

    let dom = chromium(&browser, &report, &proxy, "--dump-dom");
    assert_self_contained(&dom);
    assert_no_request(&proxy, "the report");
    // The outputs are in the page...
    for folded in [
        "stdout-of-passes",
        "stdout-of-fails",
        "test fails: [-----------------------",
    ] {
        assert!(dom.contains(folded), "{folded} is not in the page");
    }
    let shown = shown_text(&browser, &pdftotext, &report, &proxy);
    assert_no_request(&proxy, "the report");
    eprintln!("the report shows:\n{shown}");
    for expected in [
        "passes",
        "fails",
        "container-only",
        "PASS",
        "FAIL",
        "SKIP",
        "non-zero exit status 3",
        "artifact-of-passes.txt",
        "exit status 6",
    ] {
        assert!(
            shown.contains(expected),
            "the report does not show {expected:?}"
        );
    }
    // ... but folded: not shown until opened.
    for folded in ["stdout-of-passes", "stdout-of-fails", "preparing testbed"] {
        assert!(!shown.contains(folded), "{folded} is shown unfolded");
    }

    // Compare: the host, and the host faking a container.
    let root = dir.path().join("compare");
    let page = dir.path().join("compare.html");
    let compare = dep8(&[
        "compare",
        tree.to_str().unwrap(),
        "-o",
        root.to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
        "--on",
        "null",
        "--on",
        "null --fake-capability isolation-container",
    ]);
    assert_eq!(compare.status.code(), Some(6), "6 | 4");
    let dom = chromium(&browser, &page, &proxy, "--dump-dom");
    assert_self_contained(&dom);
    let differing: Vec<&str> = dom
        .split("<tr class=\"differs\">")
        .skip(1)
        .map(|row| row.split("</td>").next().unwrap_or(""))
        .collect();
    assert_eq!(differing, ["<td>container-only"], "the differing rows");
    let shown = shown_text(&browser, &pdftotext, &page, &proxy);
    assert_no_request(&proxy, "the compare page");
    eprintln!("the compare page shows:\n{shown}");
    assert_eq!(shown.matches("differs").count(), 1, "one row marked");
    for expected in [
        "[1] null",
        "[2] null --fake-capability isolation-container",
        "PASS",
        "SKIP",
        "FAIL non-zero exit status 3",
        "container-only",
    ] {
        assert!(
            shown.contains(expected),
            "the compare page does not show {expected:?}"
        );
    }
}

#[test]
fn report_names_a_dir_without_results() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("r.html");
    let made = dep8(&[
        "report",
        dir.path().to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert_eq!(made.status.code(), Some(20));
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(
        stderr.contains(&format!(
            "{}/results.json: No such file",
            dir.path().display()
        )),
        "{stderr}"
    );
    write(
        &dir.path().join("results.json"),
        "{\"schema\": \"dep8-results/1\",\n\"suite\": 3}",
    );
    let made = dep8(&[
        "report",
        dir.path().to_str().unwrap(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert_eq!(made.status.code(), Some(20));
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(
        stderr.contains("results.json: invalid type: integer `3`"),
        "{stderr}"
    );
    assert!(stderr.contains("line 2"), "{stderr}");
}

/// Each test's name and result word in the results table of a report
/// page (of one run), in its order.
fn page_results(page: &str) -> Vec<(String, String)> {
    page.split("<tr><td><a href=\"#run1-test")
        .skip(1)
        .map(|row| {
            let name = row.split_once("\">").unwrap().1;
            let (name, rest) = name.split_once("</a></td><td class=\"").unwrap();
            let word = rest.split('"').next().unwrap();
            (name.to_string(), word.to_string())
        })
        .collect()
}

#[test]
fn run_html_names_every_test_with_the_summary_s_result() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("run.html");
    let run = Dep8Run::with(
        &[
            "-B",
            "--timeout-test",
            "3",
            "--html",
            page.to_str().unwrap(),
        ],
        "examples/outcomes",
        &["null"],
    );
    let summary = result_words(&run.read("summary"));
    assert!(summary.len() > 15, "{summary:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    let shown: BTreeMap<String, String> = page_results(&html).into_iter().collect();
    assert_eq!(shown, summary, "the page's results and the summary's");
    assert!(!html.contains("incomplete"), "the run ended");
    let status = run.status.expect("an exit status");
    assert!(html.contains(&format!("exit status {status};")), "{html}");
    // The tests' outputs, read from the output dir as `dep8 report` reads them.
    assert!(html.contains("writes-stderr-stderr"), "{html}");

    let (Some(browser), Some(pdftotext)) = (
        required_program("chromium", "chromium"),
        required_program("pdftotext", "poppler-utils"),
    ) else {
        return;
    };
    let proxy = Proxy::start();
    assert_self_contained(&chromium(&browser, &page, &proxy, "--dump-dom"));
    let shown_text = shown_text(&browser, &pdftotext, &page, &proxy);
    assert_no_request(&proxy, "the run's page");
    for (name, word) in &summary {
        assert!(shown_text.contains(name.as_str()), "{name} is not shown");
        assert!(shown_text.contains(word.as_str()), "{word} is not shown");
    }
}

#[test]
fn run_html_after_ctrl_c_has_what_finished_marked_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("run.html");
    let mut dep8 = Command::new(dep8_bin());
    dep8.current_dir(repo())
        .args(["run", "-B", "--html", page.to_str().unwrap(), "-o"])
        .arg(dir.path().join("out"))
        .args(["examples/slow", "--", "null"]);
    let has_quick = || {
        std::fs::read_to_string(&page)
            .is_ok_and(|html| page_results(&html).iter().any(|(name, _)| name == "quick"))
    };
    interrupt_when(dep8, has_quick, "a page with the quick test's result");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        page_results(&html),
        [
            ("quick".to_string(), "PASS".to_string()),
            ("slow".to_string(), "INTERRUPTED".to_string())
        ]
    );
    assert!(html.contains("<b>incomplete</b>"), "{html}");
}

#[test]
fn run_html_that_cannot_be_written_or_from_autopkgtest_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let page = dir.path().join("missing/run.html");
    let run = dep8(&[
        "run",
        "-B",
        "--html",
        page.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "examples/hello",
        "--",
        "null",
    ]);
    assert_eq!(run.status.code(), Some(20));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("--html {}: No such file", page.display())),
        "{stderr}"
    );
    assert!(!out.exists(), "the run started");

    let link = dir.path().join("autopkgtest");
    std::os::unix::fs::symlink(dep8_bin(), &link).unwrap();
    let page = dir.path().join("run.html");
    let run = Command::new(&link)
        .current_dir(repo())
        .args(["-B", "--html", page.to_str().unwrap(), "examples/hello"])
        .args(["--", "null"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(20));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("unrecognized arguments: --html"),
        "{stderr}"
    );
    assert!(!page.exists(), "autopkgtest wrote the page");
}
