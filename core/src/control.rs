//! DEP-8 `debian/tests/control` parsing, with autopkgtest 5.49's quirks and
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

/// A field of a stanza: its name (as autopkgtest spells it, see
/// [`capwords`]), unfolded value and first line.
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
    /// A syntax problem inside the stanza (the whole stanza is broken):
    /// line, field concerned, message.
    problem: Option<(usize, Option<String>, String)>,
}

impl Stanza {
    /// The field called `name` (any spelling autopkgtest accepts).
    fn get(&self, name: &str) -> Option<&Field> {
        let name = capwords(name);
        self.fields.iter().find(|f| f.name == name)
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
            let valid = &bytes[..e.valid_up_to()];
            let breaks = |b: u8| valid.iter().filter(|c| **c == b).count();
            let crlf = valid.windows(2).filter(|w| w == b"\r\n").count();
            let line = 1 + breaks(b'\n') + breaks(b'\r') - crlf;
            return vec![broken_file(path, line, format!("not valid UTF-8: {e}"))];
        }
    };
    let stanzas = split_stanzas(text);
    if stanzas.is_empty() {
        // autopkgtest: no tests, `* SKIP no tests in this package`.
        return vec![Entry::Unsupported {
            name: "*".into(),
            reason: "no tests in this package".into(),
            location: Location {
                file: path.to_path_buf(),
                line: 1,
            },
        }];
    }
    let mut entries = Vec::new();
    let mut command_counter = 0;
    for stanza in &stanzas {
        entries.extend(stanza_entries(path, stanza, ctx, &mut command_counter));
    }
    entries
}

/// Python's `str.isspace()` for one character, which autopkgtest's parser
/// (python-debian, `str.split`, `str.strip`) uses: Unicode whitespace plus
/// the ASCII separators U+001C..U+001F.
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Whether python-debian sees a blank line (a stanza separator): empty or
/// only ASCII whitespace, vertical tab and form feed included.
fn is_blank(line: &str) -> bool {
    line.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
}

/// The lines of `text` as Python's text files give them: `\n`, `\r\n` and
/// a lone `\r` all end a line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match rest.find(['\n', '\r']) {
            Some(i) if rest[i..].starts_with("\r\n") => (&rest[..i], &rest[i + 2..]),
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        Some(line)
    })
}

/// `Name: value` as python-debian reads it: the name is everything before
/// the colon up to the first ASCII whitespace, the value is trimmed.
fn field_line(line: &str) -> Option<(&str, &str)> {
    let end = line
        .find([':', ' ', '\t', '\x0b', '\x0c'])
        .unwrap_or(line.len());
    if end == 0 {
        return None;
    }
    let (name, rest) = line.split_at(end);
    let value = rest.trim_start_matches(py_space).strip_prefix(':')?;
    Some((name, value.trim_matches(py_space)))
}

/// Splits the text into stanzas of unfolded fields, dropping comments the way
/// autopkgtest does.
fn split_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut current: Option<Stanza> = None;
    for (index, raw) in lines(text).enumerate() {
        let number = index + 1;
        // A line starting with '#' vanishes; elsewhere '#' cuts the line and
        // a line left blank by the cut vanishes too.
        if raw.starts_with('#') {
            continue;
        }
        let line = match raw.find('#') {
            Some(cut) if raw[..cut].chars().all(py_space) => continue,
            Some(cut) => &raw[..cut],
            None => raw,
        };
        if is_blank(line) {
            stanzas.extend(current.take());
            continue;
        }
        if line.chars().all(py_space) {
            // Only non-ASCII whitespace: python-debian skips the line.
            continue;
        }
        let stanza = current.get_or_insert_with(|| Stanza {
            line: number,
            fields: Vec::new(),
            problem: None,
        });
        if let Some((name, value)) = field_line(line) {
            let name = capwords(name);
            if stanza.get(&name).is_some() {
                // python-debian keeps the last one silently; dep8 refuses.
                stanza.problem.get_or_insert((
                    number,
                    Some(name.clone()),
                    format!("duplicate field {name}"),
                ));
            } else {
                stanza.fields.push(Field {
                    name,
                    value: value.to_string(),
                    line: number,
                });
            }
        } else if line.starts_with(py_space) {
            match stanza.fields.last_mut() {
                Some(field) => {
                    field.value.push('\n');
                    field.value.push_str(line);
                }
                None => {
                    stanza.problem.get_or_insert((
                        number,
                        None,
                        "continuation line without a field".into(),
                    ));
                }
            }
        } else {
            // python-debian drops such a line silently; dep8 refuses.
            stanza.problem.get_or_insert((
                number,
                None,
                format!("not a field: {:?}", line.trim_matches(py_space)),
            ));
        }
    }
    stanzas.extend(current);
    for stanza in &mut stanzas {
        for field in &mut stanza.fields {
            if !python_debian_accepts(&field.value) {
                stanza.problem.get_or_insert((
                    field.line,
                    Some(field.name.clone()),
                    "a line separator (form feed, U+2028...) inside the value".into(),
                ));
            }
            // autopkgtest joins continuation lines without a separator and
            // halves runs of spaces (each pair becomes one).
            field.value = field.value.replace('\n', "").replace("  ", " ");
        }
    }
    stanzas
}

/// Whether python-debian stores a field value (lines joined with `\n`): in
/// a folded value, cut by Python's `str.splitlines()`, which also cuts at
/// vertical tab, form feed, U+001C..U+001E, U+0085, U+2028 and U+2029,
/// every line after the first must be non-empty and start with whitespace.
/// Otherwise it raises ValueError and autopkgtest crashes.
fn python_debian_accepts(value: &str) -> bool {
    if !value.contains('\n') {
        return true;
    }
    let is_break = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut rest = value;
    let mut first = true;
    while let Some(at) = rest.find(is_break) {
        let (line, after) = rest.split_at(at);
        if !first && !line.starts_with(py_space) {
            return false;
        }
        first = false;
        let skip = if after.starts_with("\r\n") {
            2
        } else {
            after.chars().next().map_or(1, char::len_utf8)
        };
        rest = &after[skip..];
    }
    // The last line; a value ending in a break has no empty line after it.
    first || rest.is_empty() || rest.starts_with(py_space)
}

/// Splits a list field on commas and whitespace alike.
fn words(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || py_space(c))
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
        // An empty test-name is reported against "*" below.
        (None, Some(_)) => match test_name_feature {
            Some("") => vec![],
            Some(name) => vec![name.to_string()],
            None => vec![format!("command{command_counter}")],
        },
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

    if let Some((line, field, message)) = &stanza.problem {
        return broken(problem(*line, field.as_deref(), message.clone()));
    }
    // No command, path or name can hold one (autopkgtest crashes, exit 20).
    if let Some(f) = stanza.fields.iter().find(|f| f.value.contains('\0')) {
        return broken(problem(f.line, Some(&f.name), "contains a NUL byte".into()));
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
    if test_name_feature == Some("") {
        // autopkgtest runs a test with an empty name; dep8 refuses.
        return broken(problem(
            field_line("Features"),
            Some("Features"),
            "test-name feature with an empty name".into(),
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
    // needs-sudo implies passwd and sudo. autopkgtest 5.49 appends them even
    // when Depends lists them already (its check compares a name with
    // groups); dep8 appends only what is missing.
    if restrictions.contains(&Restriction::NeedsSudo) {
        for implied in ["passwd", "sudo"] {
            if !depends.iter().any(|d| d == implied) {
                depends.push(implied.into());
            }
        }
    }

    let unknown_field = stanza
        .fields
        .iter()
        .find(|f| !KNOWN_FIELDS.iter().any(|k| capwords(k) == f.name));
    let tests_dir = match stanza.get("Tests-Directory") {
        None => "debian/tests".to_string(),
        Some(f) => {
            let dir = f.value.trim_matches(py_space);
            // autopkgtest runs whatever such a path names, outside the tree.
            if dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
                return broken(problem(
                    f.line,
                    Some("Tests-Directory"),
                    format!("{dir:?} is not a directory inside the source tree"),
                ));
            }
            dir.to_string()
        }
    };
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
                    reason: format!("unknown field {}", f.name),
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
                // Python's os.path.join, as autopkgtest builds it.
                path: is_script.then(|| match tests_dir.as_str() {
                    "" => name.clone(),
                    dir if dir.ends_with('/') => format!("{dir}{name}"),
                    dir => format!("{dir}/{name}"),
                }),
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

/// autopkgtest names fields with Python's `string.capwords`: words split on
/// whitespace, each capitalized, joined with one space (`TEST-COMMAND` is
/// `Test-command`).
fn capwords(name: &str) -> String {
    name.split(py_space)
        .filter(|w| !w.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |first| {
                first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn python_debian_line_rules() {
        // Folded values only; Python's splitlines() breaks count.
        assert!(python_debian_accepts("foo\x0cbar"));
        assert!(python_debian_accepts("foo,\n bar\x0c baz"));
        assert!(!python_debian_accepts("foo,\n bar\x0cbaz"));
        assert!(!python_debian_accepts("foo\u{2028}\n bar"));
        assert!(python_debian_accepts("\n a\n b"));
    }

    #[test]
    fn lines_and_field_names_like_python() {
        let t = tests("Tests: a\rDepends: foo\r\rTESTS : b\r\n\ntests\u{a0}: c\n");
        assert_eq!(
            t.iter()
                .map(|t| (t.name.as_str(), t.depends.len()))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 0), ("c", 0)]
        );
        let t = tests("Tests: a\nTests-Directory: t/\n\nTests: b\nTests-Directory:\n");
        assert_eq!(t[0].path.as_deref(), Some("t/a"));
        assert_eq!(t[1].path.as_deref(), Some("b"));
    }

    #[test]
    fn empty_and_binary_files() {
        for text in ["", "# only a comment\n\n  # indented\n"] {
            assert!(
                matches!(&parse(text)[..], [Entry::Unsupported { name, reason, .. }] if name == "*" && reason == "no tests in this package")
            );
        }
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
            "Test-Command: echo a\0b\nDepends:\n",
            "Tests: a\0b\n",
        ] {
            let e = parse(text);
            assert!(
                e.iter().all(|e| matches!(e, Entry::Broken { .. })),
                "{text:?} gave {e:?}"
            );
        }
    }
}
