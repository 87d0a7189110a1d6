//! dep8's DEP-8 parser against autopkgtest's own (`testdesc.py`, run by
//! `tests/fixtures/testdesc_dump.py`): real control files must give the same
//! tests field by field, malformed ones must be reported with file, line and
//! field and affect the tests autopkgtest's would (or deviate as documented
//! here), randomly mutated ones must give the same tests wherever both
//! accept them, and no input at all may make the parser panic.
//!
//! Normalizations, applied to both sides before comparing:
//! - restrictions and features are sorted (autopkgtest keeps sets);
//! - empty dependencies are dropped: autopkgtest keeps the empty groups of
//!   an empty Build-Depends field or of `a,,b` in debian/control;
//! - the skip reasons in [`REASON_DIFFERENCES`] are deliberate wording
//!   differences and are mapped to autopkgtest's text.
//! - an entry dep8 reports BROKEN is compared by name only (autopkgtest
//!   stops at the first invalid stanza and reports the whole package);
//! - runs of whitespace inside a dependency are one space: autopkgtest
//!   unfolds debian/control's folded fields keeping (halved) indentation,
//!   dep8 puts one space for each line break; apt reads both alike;
//! - needs-sudo's `passwd` and `sudo`: autopkgtest 5.49 appends both in
//!   Python's set order even when Depends lists them (its check compares a
//!   name with alternative groups), dep8 appends the missing ones in order.

use dep8_backend_null::NullBackend;
use dep8_core::capability::Capabilities;
use dep8_core::control::{self, DependsContext, Entry};
use dep8_core::restriction::{self, Decision, ResolveOptions};
use dep8_core::source::SourcePackage;
use dep8_core::testbed::Backend;
use dep8_tests::e2e::{dep8_bin, repo};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Testbed architectures the real files are compared on: listed in
/// positive Architecture lists or not, `[arch]` qualified Build-Depends.
const ARCHES: [&str; 3] = ["amd64", "arm64", "i386"];

const TESTDESC: &str = "/usr/share/autopkgtest/lib/testdesc.py";

/// (dep8's skip reason, autopkgtest 5.49's) where dep8 words it differently
/// on purpose.
const REASON_DIFFERENCES: &[(&str, &str)] = &[(
    // autopkgtest 5.49 does not know the word; dep8 knows it never runs.
    "Test restriction \"hint-testsuite-triggers\" means it is never run",
    "unknown restriction hint-testsuite-triggers",
)];

fn fixtures(kind: &str) -> PathBuf {
    repo().join("tests/fixtures").join(kind)
}

/// Whether autopkgtest's parser can be run; under CI it must be
/// (.ci/install-deps installs it).
fn have_autopkgtest() -> bool {
    if Path::new(TESTDESC).exists() && Path::new("/usr/bin/python3").exists() {
        return true;
    }
    assert!(
        std::env::var_os("DEP8_CI").is_none(),
        "{TESTDESC} or /usr/bin/python3 is missing under CI: .ci/install-deps installs autopkgtest"
    );
    eprintln!("SKIP: {TESTDESC} is missing (apt-get install autopkgtest)");
    false
}

/// The null backend's capability words, given to both parsers.
fn null_caps() -> Vec<dep8_core::capability::Capability> {
    NullBackend.capabilities_hint()
}

/// Runs testdesc_dump.py with `args` and returns its JSON object.
fn autopkgtest_dump(arch: &str, args: &[&str]) -> Value {
    let caps: Vec<String> = null_caps().iter().map(|c| c.to_string()).collect();
    let out = Command::new("/usr/bin/python3")
        .arg(fixtures("testdesc_dump.py"))
        .args(["--arch", arch, "--caps", &caps.join(",")])
        .args(args)
        .output()
        .expect("running testdesc_dump.py");
    assert!(
        out.status.success(),
        "testdesc_dump.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("testdesc_dump.py prints JSON")
}

fn sorted(list: &Value) -> Value {
    let mut words: Vec<Value> = list.as_array().cloned().unwrap_or_default();
    words.sort_by_key(|w| w.to_string());
    Value::Array(words)
}

fn test_fields(t: &Value) -> Value {
    // dep8 keeps each group as the string it hands apt; autopkgtest keeps
    // a list of alternatives and hands apt them joined with " | ".
    let depends: Vec<String> = t["depends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|group| match group.as_array() {
            Some(alternatives) => alternatives
                .iter()
                .map(|a| a.as_str().expect("alternatives are strings"))
                .collect::<Vec<_>>()
                .join(" | "),
            None => group.as_str().expect("groups are strings").to_string(),
        })
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|d| !d.is_empty())
        .collect();
    json!({
        "name": t["name"], "path": t["path"], "command": t["command"],
        "restrictions": sorted(&t["restrictions"]), "features": sorted(&t["features"]),
        "depends": depends,
    })
}

fn skipped(name: &Value, reason: &str) -> Value {
    let reason = REASON_DIFFERENCES
        .iter()
        .find(|(ours, _)| *ours == reason)
        .map_or(reason, |(_, theirs)| theirs);
    json!({"name": name, "skip": reason})
}

/// One entry of `dep8 check --json --testbed ...`, comparable.
fn from_check_json(e: &Value) -> Value {
    if e.get("broken").is_some() {
        json!({"name": e["name"], "broken": true})
    } else if let Some(reason) = e["skip"].as_str() {
        skipped(&e["name"], reason)
    } else {
        test_fields(e)
    }
}

/// One entry of dep8's parser, decided for `caps` on amd64, comparable.
fn from_entry(entry: &Entry, caps: &Capabilities) -> Value {
    let opts = ResolveOptions {
        arch: Some("amd64".into()),
        ..Default::default()
    };
    match entry {
        Entry::Test(t) => match restriction::resolve(t, caps, &opts) {
            Decision::Skip(reason) => skipped(&json!(t.name), &reason),
            Decision::Run => test_fields(&serde_json::to_value(t).unwrap()),
        },
        Entry::Unsupported { name, reason, .. } => skipped(&json!(name), reason),
        Entry::Broken { name, .. } => json!({"name": name, "broken": true}),
    }
}

/// autopkgtest's entries, comparable, and its error (whole package) if any.
fn from_autopkgtest(dump: &Value) -> (Vec<Value>, Option<Value>) {
    let entries = dump["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| match e["skip"].as_str() {
            Some(reason) => {
                json!({"name": e["name"], "skip": reason, "skip_any_of": e["skip_any_of"]})
            }
            None => implied_by_needs_sudo(test_fields(e)),
        })
        .collect();
    let error = Some(dump["error"].clone()).filter(|e| !e.is_null());
    (entries, error)
}

/// autopkgtest's test with needs-sudo's dependencies as dep8 adds them
/// (see the module's normalizations).
fn implied_by_needs_sudo(mut test: Value) -> Value {
    if !test["restrictions"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("needs-sudo")))
    {
        return test;
    }
    let depends = test["depends"].as_array_mut().expect("depends");
    let mut implied = depends.split_off(depends.len().saturating_sub(2));
    implied.sort_by_key(|d| d.to_string());
    assert_eq!(implied, [json!("passwd"), json!("sudo")], "{test}");
    for d in implied {
        if !depends.contains(&d) {
            depends.push(d);
        }
    }
    test
}

/// Field-by-field differences, one readable line each.
fn diff(label: &str, ours: &[Value], theirs: &[Value]) -> Vec<String> {
    // autopkgtest names one unmet restriction of several at random: any
    // of them is a match.
    let theirs: Vec<Value> = theirs
        .iter()
        .zip(ours.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(t, o)| {
            let mut t = t.clone();
            if let Some(any_of) = t.as_object_mut().and_then(|t| t.remove("skip_any_of")) {
                let ours = o.map_or(&Value::Null, |o| &o["skip"]);
                if any_of.as_array().is_some_and(|a| a.contains(ours)) {
                    t["skip"] = ours.clone();
                }
            }
            t
        })
        .collect();
    let mut out = Vec::new();
    for i in 0..ours.len().max(theirs.len()) {
        match (ours.get(i), theirs.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                let keys: std::collections::BTreeSet<&String> = a
                    .as_object()
                    .into_iter()
                    .chain(b.as_object())
                    .flat_map(|o| o.keys())
                    .collect();
                for k in keys.into_iter().filter(|k| a.get(*k) != b.get(*k)) {
                    let null = Value::Null;
                    let (ours, theirs) =
                        around_difference(a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
                    out.push(format!(
                        "{label}: entry {i} ({}) {k}:\n    dep8:        {ours}\n    autopkgtest: {theirs}",
                        b["name"],
                    ));
                }
            }
            (Some(a), None) => out.push(format!("{label}: only dep8 has entry {i}: {a}")),
            (None, Some(b)) => out.push(format!("{label}: only autopkgtest has entry {i}: {b}")),
            (None, None) => unreachable!(),
        }
    }
    out
}

/// Two values as JSON; long ones cut to where they first differ.
fn around_difference(a: &Value, b: &Value) -> (String, String) {
    let (a, b) = (a.to_string(), b.to_string());
    if a.len() + b.len() < 400 {
        return (a, b);
    }
    let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let cut = |s: &str| {
        let start = (at.saturating_sub(60)..=at)
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        let end = (at + 60..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        format!(
            "[{} chars, first difference at {at}] …{}…",
            s.len(),
            &s[start..end]
        )
    };
    (cut(&a), cut(&b))
}

#[test]
fn real_control_files_match_autopkgtest() {
    if !have_autopkgtest() {
        return;
    }
    // Real packages, and made-up ones for what they do not exercise.
    let mut trees: Vec<PathBuf> = ["real", "synthetic"]
        .iter()
        .flat_map(|kind| std::fs::read_dir(fixtures(kind)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("debian/tests/control").exists())
        .collect();
    trees.sort();
    assert!(
        trees.len() >= 10,
        "expected the real fixtures, found {trees:?}"
    );
    let tree_args: Vec<&str> = trees.iter().map(|t| t.to_str().unwrap()).collect();
    let (problems, compared): (Vec<Vec<String>>, Vec<usize>) = std::thread::scope(|s| {
        let jobs: Vec<_> = ARCHES
            .iter()
            .map(|arch| {
                let (trees, tree_args) = (&trees, &tree_args);
                s.spawn(move || compare_real(arch, trees, tree_args))
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).unzip()
    });
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    assert!(
        problems.is_empty(),
        "dep8 and autopkgtest disagree on real control files:\n{}",
        problems.join("\n")
    );
    let compared: usize = compared.iter().sum();
    assert!(compared > 300, "only {compared} entries compared");
}

/// Compares every tree on `arch`; returns the differences and how many
/// entries were compared.
fn compare_real(arch: &str, trees: &[PathBuf], tree_args: &[&str]) -> (Vec<String>, usize) {
    let theirs = autopkgtest_dump(arch, tree_args);
    let mut problems = Vec::new();
    let mut compared = 0;
    for (tree, key) in trees.iter().zip(tree_args) {
        let out = Command::new(dep8_bin())
            .args(["check", "--json", "--testbed", "null", "--arch", arch])
            .arg(tree)
            .output()
            .unwrap();
        let label = format!("{} on {arch}", tree.file_name().unwrap().to_string_lossy());
        let ours: Vec<Value> = match serde_json::from_slice::<Vec<Value>>(&out.stdout) {
            Ok(entries) => entries.iter().map(from_check_json).collect(),
            Err(e) => {
                problems.push(format!(
                    "{label}: dep8 check printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
        };
        let (their_entries, error) = from_autopkgtest(&theirs[*key]);
        if let Some(error) = error {
            problems.push(format!("{label}: autopkgtest rejects it: {error}"));
        }
        compared += ours.len();
        problems.extend(diff(&label, &ours, &their_entries));
    }
    (problems, compared)
}

/// What dep8 must report for one entry of a malformed file.
enum Expect {
    /// BROKEN test `name`: a problem at this line, about this field, whose
    /// message contains the text.
    Broken(&'static str, usize, Option<&'static str>, &'static str),
    /// SKIP test `name` with a reason containing the text.
    Skip(&'static str, &'static str),
    /// A test that runs.
    Runs(&'static str),
}

/// How autopkgtest's verdict on a malformed file relates to dep8's.
enum Agreement {
    /// The same entries, field by field.
    Same,
    /// autopkgtest rejects the package (InvalidControl, or its parser
    /// crashes); dep8 reports the stanza BROKEN and keeps the rest, which
    /// must be what autopkgtest had accepted before giving up.
    Rejected,
    /// autopkgtest accepts the file, dep8 reports BROKEN: a deliberate
    /// deviation, for the reason given.
    Stricter(&'static str),
}

use Agreement::*;
use Expect::*;

/// The malformed corpus: every file in tests/fixtures/malformed, with what
/// dep8 reports and how that relates to autopkgtest.
fn corpus() -> Vec<(&'static str, Agreement, Vec<Expect>)> {
    const DEP_INVALID: &str = "contains an invalid dependency";
    const DEP_VERSION: &str = "with an invalid version";
    const NOT_FIELD: &str = "not a field";
    vec![
        (
            "bad-architecture.control",
            Same,
            vec![Skip("a", "prepended by an exclamation mark"), Skip("b", "'all' not allowed")],
        ),
        (
            "bad-test-name.control",
            Rejected,
            vec![
                Broken("command1", 2, Some("Features"), "test-name feature with no argument"),
                Broken("x", 5, Some("Features"), "only one test-name feature allowed"),
                Broken("a", 8, Some("Features"), "test-name feature incompatible with Tests"),
            ],
        ),
        ("crlf.control", Same, vec![Runs("a"), Runs("command1")]),
        (
            "empty-test-name.control",
            Stricter("autopkgtest runs a test whose name is empty"),
            vec![Broken("*", 2, Some("Features"), "test-name feature with an empty name")],
        ),
        ("depends-arch-list.control", Same, vec![Runs("a"), Runs("b")]),
        ("depends-bad-operator.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_INVALID)]),
        ("depends-bad-version.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_VERSION)]),
        ("depends-build-profile.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_INVALID)]),
        ("depends-empty-alternative.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_INVALID)]),
        (
            "depends-empty-version.control",
            Stricter("autopkgtest hands `foo (>= )` to apt, which fails the test as badpkg"),
            vec![Broken("a", 2, Some("Depends"), DEP_VERSION)],
        ),
        ("depends-no-spaces.control", Same, vec![Runs("a")]),
        ("depends-two-words.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_INVALID)]),
        ("depends-unclosed.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_INVALID)]),
        ("depends-uppercase.control", Rejected, vec![Broken("a", 2, Some("Depends"), DEP_INVALID)]),
        (
            "duplicate-field.control",
            Stricter("python-debian keeps the last of two equal fields silently"),
            vec![Broken("a", 2, Some("Tests"), "duplicate field Tests")],
        ),
        (
            "empty-tests.control",
            Rejected,
            vec![
                Broken("*", 1, Some("Tests"), "\"Tests\" field is empty"),
                Broken("*", 3, Some("Tests"), "\"Tests\" field is empty"),
            ],
        ),
        ("empty.control", Same, vec![Skip("*", "no tests in this package")]),
        ("field-name-spellings.control", Same, vec![Runs("a"), Runs("b"), Runs("c"), Runs("d")]),
        (
            "garbage-stanza.control",
            Stricter("autopkgtest stops reading at a stanza without fields and silently drops every test after it"),
            vec![Runs("a"), Broken("*", 3, None, NOT_FIELD), Runs("b")],
        ),
        ("hash-in-command.control", Same, vec![Runs("command1")]),
        (
            "line-separator.control",
            Rejected,
            vec![
                // python-debian raises ValueError: autopkgtest crashes.
                Broken("a", 2, Some("Depends"), "a line separator"),
                Broken("b", 6, Some("Depends"), DEP_INVALID),
            ],
        ),
        ("lone-cr.control", Same, vec![Runs("a"), Runs("b")]),
        ("neither.control", Rejected, vec![Broken("*", 1, None, "missing \"Tests\" or \"Test-Command\" field")]),
        (
            "no-colon.control",
            Stricter("python-debian drops a line it cannot parse silently"),
            vec![Broken("a", 3, None, NOT_FIELD)],
        ),
        (
            "no-field-name.control",
            Stricter("python-debian drops a line it cannot parse silently"),
            vec![Broken("a", 1, None, NOT_FIELD)],
        ),
        ("not-utf8.control", Rejected, vec![Broken("*", 4, None, "not valid UTF-8")]),
        ("only-comments.control", Same, vec![Skip("*", "no tests in this package")]),
        ("slash-in-name.control", Same, vec![Skip("a/b", "may not contain / character"), Runs("c")]),
        (
            "stray-continuation.control",
            Stricter("python-debian drops a continuation line without a field silently"),
            vec![Broken("a", 1, None, "continuation line without a field")],
        ),
        ("tabs-formfeed.control", Same, vec![Runs("a"), Runs("b"), Runs("command1")]),
        (
            "tests-and-command.control",
            Rejected,
            vec![Broken("a", 2, Some("Test-Command"), "Only one of \"Tests\" or \"Test-Command\"")],
        ),
        (
            "tests-directory-escape.control",
            Stricter("autopkgtest runs ../../etc/a and /usr/bin/b, outside the source tree"),
            vec![
                Broken("a", 2, Some("Tests-Directory"), "not a directory inside the source tree"),
                Broken("b", 5, Some("Tests-Directory"), "not a directory inside the source tree"),
            ],
        ),
        ("tests-directory-join.control", Same, vec![Runs("a"), Runs("b")]),
        ("unknown-field.control", Same, vec![Skip("a", "unknown field Frobnicate"), Runs("b")]),
        ("unknown-restriction.control", Same, vec![Skip("a", "unknown restriction frobnicate")]),
    ]
}

/// A generated file over 1 MB: 3,000 stanzas and a 750 kB Test-Command.
fn big_control(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..3_000 {
        text += &format!(
            "# stanza {i}\nTests: t{i}, u{i}\nDepends: pkg{i} (>= 1.{i}), other | alt{i}\nRestrictions: needs-root\n\n"
        );
    }
    text += "Test-Command: true";
    for _ in 0..75_000 {
        text += "\n  && true";
    }
    text += "\nDepends:\n";
    assert!(text.len() > 1_000_000);
    let path = dir.join("big.control");
    std::fs::write(&path, text).unwrap();
    path
}

/// Checks dep8's entries for one file against `expect`; returns problems.
fn check_expectations(path: &Path, entries: &[Entry], expect: &[Expect]) -> Vec<String> {
    let caps = Capabilities::new(null_caps());
    let file = path.file_name().unwrap().to_string_lossy();
    let mut problems = Vec::new();
    if entries.len() != expect.len() {
        problems.push(format!(
            "{file}: {} entries, expected {}: {entries:#?}",
            entries.len(),
            expect.len()
        ));
        return problems;
    }
    for (entry, want) in entries.iter().zip(expect) {
        let ok = match (entry, want) {
            (Entry::Broken { name, problem }, Broken(n, line, field, text)) => {
                // The error names the file, the line and the field.
                problem.location.file == path
                    && name == n
                    && problem.location.line == *line
                    && problem.field.as_deref() == *field
                    && problem.message.contains(text)
                    && problem
                        .to_string()
                        .starts_with(&format!("{}:{line}: ", path.display()))
            }
            (Entry::Unsupported { location, .. }, Skip(..)) if location.file != path => false,
            (_, Skip(n, text)) => {
                let got = from_entry(entry, &caps);
                got["name"] == *n && got["skip"].as_str().is_some_and(|r| r.contains(text))
            }
            (_, Runs(n)) => {
                let got = from_entry(entry, &caps);
                got["name"] == *n && got.get("skip").is_none() && got.get("broken").is_none()
            }
            _ => false,
        };
        if !ok {
            problems.push(format!("{file}: unexpected {entry:#?}"));
        }
    }
    problems
}

#[test]
fn malformed_control_files_are_reported_like_autopkgtest() {
    let dir = fixtures("malformed");
    let corpus = corpus();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<&str> = corpus.iter().map(|(f, ..)| *f).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "every malformed fixture needs an expectation"
    );

    let ctx = DependsContext {
        source: None,
        arch: "amd64",
    };
    let caps = Capabilities::new(null_caps());
    let tmp = tempfile::tempdir().unwrap();
    let big = big_control(tmp.path());
    let mut cases: Vec<(PathBuf, Agreement, Vec<Expect>)> = corpus
        .into_iter()
        .map(|(f, agreement, expect)| (dir.join(f), agreement, expect))
        .collect();
    let big_expect = (0..3_000)
        .flat_map(|i| [format!("t{i}"), format!("u{i}")])
        .map(|n| Runs(Box::leak(n.into_boxed_str())))
        .chain([Runs("command1")])
        .collect();
    cases.push((big, Same, big_expect));

    let mut problems = Vec::new();
    let mut ours = Vec::new();
    for (path, _, expect) in &cases {
        let entries = control::parse_file(path, &ctx);
        problems.extend(check_expectations(path, &entries, expect));
        ours.push(entries);
    }

    if have_autopkgtest() {
        // A tree without debian/control, as dep8's context has no source.
        let mut args = vec!["--tree", tmp.path().to_str().unwrap(), "--control"];
        args.extend(cases.iter().map(|(p, ..)| p.to_str().unwrap()));
        let theirs = autopkgtest_dump("amd64", &args);
        for ((path, agreement, _), entries) in cases.iter().zip(&ours) {
            let file = path.file_name().unwrap().to_string_lossy();
            let ours: Vec<Value> = entries.iter().map(|e| from_entry(e, &caps)).collect();
            let (their_entries, error) = from_autopkgtest(&theirs[path.to_str().unwrap()]);
            let broken = ours.iter().any(|e| e.get("broken").is_some());
            match agreement {
                Same => {
                    // autopkgtest's runner says this when the parser finds
                    // no test; dep8's parser says it itself.
                    let no_tests = json!({"name": "*", "skip": "no tests in this package"});
                    let ours: Vec<Value> = ours.into_iter().filter(|e| *e != no_tests).collect();
                    if let Some(error) = error {
                        problems.push(format!("{file}: autopkgtest rejects it: {error}"));
                    }
                    problems.extend(diff(&file, &ours, &their_entries));
                }
                Rejected => {
                    if error.is_none() || !broken {
                        problems.push(format!(
                            "{file}: expected both to reject it; autopkgtest: {error:?}, dep8: {ours:?}"
                        ));
                    }
                    let accepted: Vec<Value> = ours
                        .into_iter()
                        .filter(|e| e.get("broken").is_none())
                        .collect();
                    problems.extend(diff(&file, &accepted, &their_entries));
                }
                Stricter(why) => {
                    if error.is_some() || !broken {
                        problems.push(format!(
                            "{file}: the documented deviation ({why}) no longer holds; \
                             autopkgtest: {error:?} {their_entries:?}, dep8: {ours:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The DEP-8 control files among the fixtures, and the debian/control files.
fn fixture_files() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut controls, mut sources) = (Vec::new(), Vec::new());
    for kind in ["real", "synthetic", "malformed"] {
        let mut stack = vec![fixtures(kind)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.ends_with("tests/control") || kind == "malformed" {
                    controls.push(std::fs::read(path).unwrap());
                } else if path.ends_with("debian/control") {
                    sources.push(std::fs::read(path).unwrap());
                }
            }
        }
    }
    controls.sort();
    sources.sort();
    (controls, sources)
}

#[test]
fn mutated_control_files_agree_with_autopkgtest() {
    if !have_autopkgtest() {
        return;
    }
    let (seeds, _) = fixture_files();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xa9_7e57);
    let files: Vec<PathBuf> = (0..600)
        .map(|case| {
            let path = tmp.path().join(format!("{case}.control"));
            std::fs::write(&path, mutate(&mut rng, &seeds[case % seeds.len()])).unwrap();
            path
        })
        .collect();
    let mut args = vec!["--tree", tmp.path().to_str().unwrap(), "--control"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let theirs = autopkgtest_dump("amd64", &args);
    let ctx = DependsContext {
        source: None,
        arch: "amd64",
    };
    let caps = Capabilities::new(null_caps());
    let no_tests = json!({"name": "*", "skip": "no tests in this package"});
    let (mut problems, mut agreed) = (Vec::new(), 0);
    for path in &files {
        let ours: Vec<Value> = control::parse_file(path, &ctx)
            .iter()
            .map(|e| from_entry(e, &caps))
            .filter(|e| *e != no_tests)
            .collect();
        let (their_entries, error) = from_autopkgtest(&theirs[path.to_str().unwrap()]);
        let broken = ours.iter().any(|e| e.get("broken").is_some());
        match error {
            // Where autopkgtest finds the control data invalid, so does dep8.
            Some(e) if e["kind"] == "InvalidControl" && !broken => problems.push(format!(
                "{}: autopkgtest rejects it ({e}), dep8 does not",
                path.display()
            )),
            // Where both accept it, they agree on every test.
            None if !broken => {
                agreed += 1;
                problems.extend(diff(&path.display().to_string(), &ours, &their_entries));
            }
            // dep8 is stricter (see `corpus`), or autopkgtest crashed.
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(agreed > 100, "only {agreed} inputs accepted by both");
}

/// splitmix64: a fixed, dependency-free random sequence, so every run and
/// every machine tests the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `input`.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const INTERESTING: [&[u8]; 14] = [
        b":",
        b"#",
        b" ",
        b"\t",
        b"\n",
        b"\r",
        b"\r\n",
        b"\x0c",
        b"\x0b",
        b"\xff",
        b"\xc2\xa0",
        b"\xe2\x80\xa8",
        b"@builddeps@",
        b"test-name=",
    ];
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let at = at.min(out.len() - 1);
                out[at] ^= 1 << rng.below(8);
            }
            1 => out.truncate(at),
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 => {
                let mut lines: Vec<&[u8]> = out.split_inclusive(|b| *b == b'\n').collect();
                for i in (1..lines.len()).rev() {
                    lines.swap(i, rng.below(i + 1));
                }
                out = lines.concat();
            }
            4 => {
                // Duplicate a line somewhere else.
                let lines: Vec<Vec<u8>> = out
                    .split_inclusive(|b| *b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if !lines.is_empty() {
                    let line = lines[rng.below(lines.len())].clone();
                    out.splice(at..at, line);
                }
            }
            _ => {
                let end = (at + rng.below(40)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

#[test]
fn mutated_control_files_never_panic() {
    // DEP-8 control files, and debian/control files for `@` expansion.
    let (seeds, mut sources) = fixture_files();
    // Relations parsing is slow in debug builds: the small ones suffice.
    sources.retain(|s| s.len() < 10_000);
    let parsed: Vec<Option<SourcePackage>> = sources
        .iter()
        .map(|s| SourcePackage::parse(&String::from_utf8_lossy(s)).ok())
        .collect();
    let caps = Capabilities::new(null_caps());
    let path = Path::new("mutated/control");
    let mut rng = Rng(0xdeb8_5eed);
    let mut counts = [0usize; 3];
    for case in 0..4000 {
        let input = mutate(&mut rng, &seeds[case % seeds.len()]);
        // A mutated debian/control in some cases, an intact one else.
        let source = match case % 8 {
            0 => {
                let text = mutate(&mut rng, &sources[case / 8 % sources.len()]);
                SourcePackage::parse(&String::from_utf8_lossy(&text)).ok()
            }
            _ => parsed[case % parsed.len()].clone(),
        };
        let ctx = DependsContext {
            source: source.as_ref(),
            arch: ["amd64", "i386", "arm64"][case % 3],
        };
        let lines = input.split(|b| matches!(b, b'\n' | b'\r')).count();
        let entries = control::parse_bytes(path, &input, &ctx);
        assert!(!entries.is_empty(), "case {case}: no entries for {input:?}");
        for entry in &entries {
            match entry {
                Entry::Test(t) => {
                    counts[0] += 1;
                    assert!(
                        !t.name.is_empty() && !t.name.contains('/'),
                        "case {case}: {t:?}"
                    );
                    let _ = restriction::resolve(t, &caps, &ResolveOptions::default());
                }
                Entry::Unsupported { location, .. } => {
                    counts[1] += 1;
                    assert!(location.file == path && (1..=lines).contains(&location.line));
                }
                Entry::Broken { problem, .. } => {
                    counts[2] += 1;
                    let line = problem.location.line;
                    assert!(
                        problem.location.file == path && (1..=lines).contains(&line),
                        "case {case}: {problem} is outside the {lines} lines of {input:?}"
                    );
                }
            }
        }
    }
    // The mutations reach every kind of result.
    assert!(
        counts.iter().all(|c| *c > 100),
        "tests, skips, broken: {counts:?}"
    );
}
