//! DEP-8 `debian/tests/control` parsing, with autopkgtest 5.28's quirks and
//! a source position for every problem.
//!
//! Hand-rolled rather than built on `deb822-lossless`: autopkgtest cuts
//! comments in the middle of lines, unfolds continuation lines without a
//! separator and halves runs of spaces, and real packages rely on exactly
//! that. A generic deb822 parser keeps comments and folding differently, so
//! its output would not match autopkgtest's on real files.

use crate::restriction::Restriction;
use crate::source::SourcePackage;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where something is in a control file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem in a control file: file, line, field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub location: Location,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.location, field, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// One test, as declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Test {
    pub name: String,
    /// The script, relative to the source tree (for `Tests:`).
    pub path: Option<String>,
    /// The unfolded shell command (for `Test-Command:`).
    pub command: Option<String>,
    pub restrictions: Vec<Restriction>,
    pub features: Vec<String>,
    /// Dependencies, one alternative group each, after expanding `@`,
    /// `@builddeps@` and `@recommends@`.
    pub depends: Vec<String>,
    pub classes: Option<String>,
    pub architectures: Vec<String>,
    pub location: Option<Location>,
}

impl Test {
    /// A plain Test-Command test, for tests and programmatic use.
    pub fn for_command(name: &str, command: &str) -> Test {
        Test {
            name: name.to_string(),
            path: None,
            command: Some(command.to_string()),
            restrictions: Vec::new(),
            features: Vec::new(),
            depends: Vec::new(),
            classes: None,
            architectures: Vec::new(),
            location: None,
        }
    }

    pub fn has(&self, r: &Restriction) -> bool {
        self.restrictions.contains(r)
    }
}

/// One entry of a control file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// A well-formed test.
    Test(Test),
    /// A test dep8 cannot run whatever the testbed (unknown field, `/` in
    /// the name): reported SKIP, as autopkgtest does.
    Unsupported {
        name: String,
        reason: String,
        location: Location,
    },
    /// Invalid control data: reported BROKEN, the rest of the file still runs.
    Broken { name: String, problem: Problem },
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::Test(t) => &t.name,
            Entry::Unsupported { name, .. } | Entry::Broken { name, .. } => name,
        }
    }
}

/// Everything needed to expand `@`-style dependencies.
pub struct DependsContext<'a> {
    pub source: Option<&'a SourcePackage>,
    /// The testbed's dpkg architecture.
    pub arch: &'a str,
}

/// A field of a stanza: its name as written, unfolded value and first line.
#[derive(Debug)]
struct Field {
    name: String,
    value: String,
    line: usize,
}

#[derive(Debug)]
struct Stanza {
    line: usize,
    fields: Vec<Field>,
    /// A syntax problem inside the stanza (the whole stanza is broken).
    problem: Option<(usize, String)>,
}

impl Stanza {
    fn get(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// Fields of the DEP-8 spec; anything else makes the stanza unsupported.
const KNOWN_FIELDS: [&str; 8] = [
    "Tests",
    "Test-Command",
    "Restrictions",
    "Features",
    "Depends",
    "Tests-Directory",
    "Classes",
    "Architecture",
];

/// Reads `path` and parses it. I/O problems and non-UTF-8 text are reported
/// as one BROKEN entry, never as a panic or an abort.
pub fn parse_file(path: &Path, ctx: &DependsContext) -> Vec<Entry> {
    match std::fs::read(path) {
        Ok(bytes) => parse_bytes(path, &bytes, ctx),
        Err(e) => vec![broken_file(path, 0, format!("cannot read: {e}"))],
    }
}

fn broken_file(path: &Path, line: usize, message: String) -> Entry {
    Entry::Broken {
        name: "*".into(),
        problem: Problem {
            location: Location {
                file: path.to_path_buf(),
                line,
            },
            field: None,
            message,
        },
    }
}

/// Parses control-file bytes (named `path` in messages).
pub fn parse_bytes(path: &Path, bytes: &[u8], ctx: &DependsContext) -> Vec<Entry> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            return vec![broken_file(path, line, format!("not valid UTF-8: {e}"))];
        }
    };
    let stanzas = split_stanzas(text);
    if stanzas.is_empty() {
        return vec![broken_file(path, 1, "no test stanzas".into())];
    }
    let mut entries = Vec::new();
    let mut command_counter = 0;
    for stanza in &stanzas {
        entries.extend(stanza_entries(path, stanza, ctx, &mut command_counter));
    }
    entries
}

/// Splits the text into stanzas of unfolded fields, dropping comments the way
/// autopkgtest does.
fn split_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut current: Option<Stanza> = None;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        // A line starting with '#' vanishes; elsewhere '#' cuts the line and
        // a line left blank by the cut vanishes too.
        if raw.starts_with('#') {
            continue;
        }
        let line = match raw.find('#') {
            Some(cut) if raw[..cut].trim().is_empty() => continue,
            Some(cut) => &raw[..cut],
            None => raw,
        };
        // Blank (whitespace, form feed) lines separate stanzas.
        if line.chars().all(char::is_whitespace) {
            stanzas.extend(current.take());
            continue;
        }
        let stanza = current.get_or_insert_with(|| Stanza {
            line: number,
            fields: Vec::new(),
            problem: None,
        });
        if line.starts_with([' ', '\t']) {
            match stanza.fields.last_mut() {
                // Continuation lines are joined without a separator.
                Some(field) => field.value.push_str(line),
                None => {
                    stanza
                        .problem
                        .get_or_insert((number, "continuation line without a field".into()));
                }
            }
        } else if let Some((name, value)) = line.split_once(':') {
            let name = name.trim_end();
            if name.is_empty() || name.contains(char::is_whitespace) {
                stanza
                    .problem
                    .get_or_insert((number, format!("invalid field name {name:?}")));
            } else if stanza.get(name).is_some() {
                stanza
                    .problem
                    .get_or_insert((number, format!("duplicate field {name}")));
            } else {
                stanza.fields.push(Field {
                    name: name.to_string(),
                    value: value.trim().to_string(),
                    line: number,
                });
            }
        } else {
            stanza
                .problem
                .get_or_insert((number, format!("not a field: {:?}", line.trim())));
        }
    }
    stanzas.extend(current);
    for stanza in &mut stanzas {
        for field in &mut stanza.fields {
            // autopkgtest halves runs of spaces (each pair becomes one).
            field.value = field.value.replace("  ", " ");
        }
    }
    stanzas
}

/// Splits a list field on commas and whitespace alike.
fn words(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn stanza_entries(
    path: &Path,
    stanza: &Stanza,
    ctx: &DependsContext,
    command_counter: &mut usize,
) -> Vec<Entry> {
    let at = |line: usize| Location {
        file: path.to_path_buf(),
        line,
    };
    let problem = |line: usize, field: Option<&str>, message: String| Problem {
        location: at(line),
        field: field.map(str::to_string),
        message,
    };
    let field_line = |name: &str| stanza.get(name).map_or(stanza.line, |f| f.line);

    // The names this stanza declares, for reporting problems against them.
    let tests_field = stanza.get("Tests");
    let command_field = stanza.get("Test-Command");
    let features = stanza
        .get("Features")
        .map(|f| words(&f.value))
        .unwrap_or_default();
    let test_name_feature = features.iter().find_map(|f| f.strip_prefix("test-name="));
    if command_field.is_some() && test_name_feature.is_none() && tests_field.is_none() {
        *command_counter += 1;
    }
    let names: Vec<String> = match (tests_field, command_field) {
        (Some(t), _) => words(&t.value),
        (None, Some(_)) => vec![test_name_feature
            .map(str::to_string)
            .unwrap_or_else(|| format!("command{command_counter}"))],
        (None, None) => vec![],
    };
    let broken = |p: Problem| -> Vec<Entry> {
        let names = if names.is_empty() {
            vec!["*".to_string()]
        } else {
            names.clone()
        };
        names
            .into_iter()
            .map(|name| Entry::Broken {
                name,
                problem: p.clone(),
            })
            .collect()
    };

    if let Some((line, message)) = &stanza.problem {
        return broken(problem(*line, None, message.clone()));
    }

    // Features: at most one test-name=, always with a value, only with Test-Command.
    let test_names: Vec<&String> = features
        .iter()
        .filter(|f| f.split('=').next() == Some("test-name"))
        .collect();
    if test_names.iter().any(|f| !f.contains('=')) {
        return broken(problem(
            field_line("Features"),
            Some("Features"),
            "test-name feature with no argument".into(),
        ));
    }
    if test_names.len() > 1 {
        return broken(problem(
            field_line("Features"),
            Some("Features"),
            "only one test-name feature allowed".into(),
        ));
    }

    let (name_line, field_name) = match (tests_field, command_field) {
        (Some(_), Some(c)) => {
            return broken(problem(
                c.line,
                Some("Test-Command"),
                "Only one of \"Tests\" or \"Test-Command\" may be given".into(),
            ));
        }
        (None, None) => {
            return broken(problem(
                stanza.line,
                None,
                "missing \"Tests\" or \"Test-Command\" field".into(),
            ));
        }
        (Some(t), None) => {
            if names.is_empty() {
                return broken(problem(
                    t.line,
                    Some("Tests"),
                    "\"Tests\" field is empty".into(),
                ));
            }
            if test_name_feature.is_some() {
                return broken(problem(
                    field_line("Features"),
                    Some("Features"),
                    "test-name feature incompatible with Tests".into(),
                ));
            }
            (t.line, "Tests")
        }
        (None, Some(c)) => (c.line, "Test-Command"),
    };

    let mut restrictions: Vec<Restriction> = stanza
        .get("Restrictions")
        .map(|f| {
            words(&f.value)
                .iter()
                .map(|w| Restriction::parse(w))
                .collect()
        })
        .unwrap_or_default();
    restrictions.sort();
    restrictions.dedup();

    // needs-recommends is deprecated: it adds @recommends@ to Depends.
    let mut depends_value = stanza
        .get("Depends")
        .map_or("@".to_string(), |f| f.value.clone());
    if restrictions.contains(&Restriction::NeedsRecommends) {
        depends_value.push_str(",@recommends@");
    }
    let mut depends = match crate::source::expand_depends(&depends_value, ctx.source, ctx.arch) {
        Ok(deps) => deps,
        Err(message) => return broken(problem(field_line("Depends"), Some("Depends"), message)),
    };
    if restrictions.contains(&Restriction::NeedsSudo) && !depends.iter().any(|d| d == "sudo") {
        depends.push("sudo".into());
    }

    let unknown_field = stanza
        .fields
        .iter()
        .find(|f| !KNOWN_FIELDS.iter().any(|k| k.eq_ignore_ascii_case(&f.name)));
    let tests_dir = stanza
        .get("Tests-Directory")
        .map_or("debian/tests".to_string(), |f| f.value.trim().to_string());
    let mut features = features.clone();
    features.sort();
    features.dedup();

    names
        .iter()
        .map(|name| {
            let location = at(name_line);
            if let Some(f) = unknown_field {
                return Entry::Unsupported {
                    name: name.clone(),
                    reason: format!("unknown field {}", capwords(&f.name)),
                    location: at(f.line),
                };
            }
            if name.contains('/') {
                return Entry::Unsupported {
                    name: name.clone(),
                    reason: "test name may not contain / character".into(),
                    location,
                };
            }
            let is_script = field_name == "Tests";
            Entry::Test(Test {
                name: name.clone(),
                path: is_script.then(|| format!("{tests_dir}/{name}")),
                command: command_field.map(|f| f.value.clone()),
                restrictions: restrictions.clone(),
                features: features.clone(),
                depends: depends.clone(),
                classes: stanza.get("Classes").map(|f| f.value.trim().to_string()),
                architectures: stanza
                    .get("Architecture")
                    .map(|f| words(&f.value))
                    .unwrap_or_default(),
                location: Some(location),
            })
        })
        .collect()
}

/// autopkgtest names fields with Python's `string.capwords`.
fn capwords(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Entry> {
        let ctx = DependsContext {
            source: None,
            arch: "amd64",
        };
        parse_bytes(Path::new("control"), text.as_bytes(), &ctx)
    }

    fn tests(text: &str) -> Vec<Test> {
        parse(text)
            .into_iter()
            .map(|e| match e {
                Entry::Test(t) => t,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn quirks_match_autopkgtest() {
        // Same input as autopkgtest's parse_rfc822 gives
        // {'Tests': 'a, b\t c', ...} and ' foo &&  bar baz  '.
        let text = "Tests: a,\n  b\n\t c\nDepends:\n\nTest-Command:\n foo  &&\n    bar # comment\n  # indented comment\n baz   \nDepends:\nfeatures: x\n\x0c\ntests: z\nDepends:\nRestrictions:  needs-root  \n";
        let t = tests(text);
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "command1", "z"]
        );
        assert_eq!(t[0].path.as_deref(), Some("debian/tests/a"));
        assert_eq!(t[3].command.as_deref(), Some(" foo &&  bar baz  "));
        assert_eq!(t[3].features, ["x"]);
        assert_eq!(t[4].restrictions, [Restriction::NeedsRoot]);
        assert_eq!(t[4].location.as_ref().unwrap().line, 14);
    }

    #[test]
    fn command_numbering_and_test_name() {
        let t = tests("Test-Command: a\nDepends:\n\nTest-Command: b\nFeatures: test-name=bee\nDepends:\n\nTest-Command: c\nDepends:\n");
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["command1", "bee", "command2"]
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse("Tests: a\nDepends:\n\nTests: b\nTest-Command: c\n");
        assert!(matches!(&e[0], Entry::Test(_)));
        match &e[1] {
            Entry::Broken { name, problem } => {
                assert_eq!(name, "b");
                assert_eq!(problem.to_string(),
                    "control:5: Test-Command: Only one of \"Tests\" or \"Test-Command\" may be given");
            }
            other => panic!("{other:?}"),
        }
        let e = parse("Restrictions: needs-root\n");
        assert_eq!(e.len(), 1);
        assert!(matches!(&e[0], Entry::Broken { name, .. } if name == "*"));
    }

    #[test]
    fn unknown_field_and_slash() {
        let e = parse("Tests: a/b c\nDepends:\nFrobnicate: yes\n");
        assert!(
            matches!(&e[0], Entry::Unsupported { reason, .. } if reason == "unknown field Frobnicate")
        );
        let e = parse("Tests: a/b\nDepends:\n");
        assert!(
            matches!(&e[0], Entry::Unsupported { reason, .. } if reason.contains("/ character"))
        );
    }

    #[test]
    fn empty_and_binary_files() {
        assert!(
            matches!(&parse("# only a comment\n")[0], Entry::Broken { problem, .. } if problem.message == "no test stanzas")
        );
        let ctx = DependsContext {
            source: None,
            arch: "amd64",
        };
        let e = parse_bytes(Path::new("c"), b"Tests: a\n\xff\n", &ctx);
        assert!(matches!(&e[0], Entry::Broken { problem, .. } if problem.location.line == 2));
    }

    #[test]
    fn garbage_lines_are_broken_not_panics() {
        for text in [
            "Tests a\n",
            " leading\n",
            ": x\n",
            "Tests: a\nTests: b\n",
            "Tests:\n",
            "Features: test-name\nTest-Command: x\n",
            "Features: test-name=a test-name=b\nTest-Command: x\n",
            "Tests: a\nFeatures: test-name=x\n",
            "Tests: a\nDepends: (((\n",
        ] {
            let e = parse(text);
            assert!(
                e.iter().all(|e| matches!(e, Entry::Broken { .. })),
                "{text:?} gave {e:?}"
            );
        }
    }
}
