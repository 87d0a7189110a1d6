//! What a run tests, from its positional arguments, sorted exactly as
//! autopkgtest 5.49 sorts them (`process_package_arguments`): a `.changes`
//! stands for the `.dsc` and `.deb`s it lists; an existing `.deb` is a
//! binary, an existing `.dsc` a source; a word that can be a source package
//! name is one (fetched with `apt-get source`), before any directory of that
//! name; a directory with `debian/control` is a built tree when it has
//! `debian/files`, else an unbuilt one; a directory with only
//! `debian/tests/control` is a built tree; anything with `://` a git
//! repository (`URL#BRANCH`). Only unbuilt trees, `.dsc`s and git sources
//! are built, and only when no binary is given and `-B` is not.

use crate::acquire::Fetch;
use crate::error::Error;
use std::path::{Path, PathBuf};

/// The sorted positional arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The source as given: a tree, a `.dsc`, a package name or a URL.
    pub source: PathBuf,
    /// How to get the tree when `source` is not one.
    pub fetch: Option<Fetch>,
    /// Binary packages to test with.
    pub binaries: Vec<PathBuf>,
    /// Build the source and test its binaries (autopkgtest without `-B`).
    pub build: bool,
}

/// The kinds of source autopkgtest knows.
enum Kind {
    Dsc,
    AptSource,
    BuiltTree,
    UnbuiltTree,
    Git,
}

impl Inputs {
    /// Sorts `args` as autopkgtest does; `no_built_binaries` is `-B`. With
    /// no source among them, the current directory is one if it has
    /// `debian/control`. Arguments that name no package to test are a
    /// usage error.
    pub fn classify(args: &[String], no_built_binaries: bool) -> Result<Inputs, Error> {
        let usage = |message: String| Err(Error::Usage(message));
        let mut expanded = Vec::new();
        for arg in args {
            if arg.ends_with(".changes") {
                expanded.extend(changes_files(Path::new(arg))?);
            } else {
                expanded.push(PathBuf::from(arg));
            }
        }
        let mut source: Option<(PathBuf, Kind)> = None;
        let mut binaries = Vec::new();
        for path in expanded {
            let arg = path.to_string_lossy().into_owned();
            let kind = if arg.ends_with(".deb") && path.exists() {
                binaries.push(path);
                continue;
            } else if arg.ends_with(".dsc") && path.exists() {
                Kind::Dsc
            } else if is_package_name(&arg) {
                Kind::AptSource
            } else if let Some(kind) = tree_kind(&path) {
                kind
            } else if arg.contains("://") {
                Kind::Git
            } else if path.exists() {
                return usage(format!(
                    "{arg} is not a valid test package: not a .deb, .dsc or .changes, \
                     and no debian/control or debian/tests/control in it"
                ));
            } else {
                return usage(format!("{arg}: no such file or directory"));
            };
            if source.is_some() {
                return usage(format!(
                    "{arg}: you must specify only one source package to test"
                ));
            }
            source = Some((path, kind));
        }
        let (source, kind) = match source {
            Some(source) => source,
            None => {
                let here = PathBuf::from(".");
                let kind = tree_kind(&here)
                    .filter(|_| here.join("debian/control").is_file())
                    .ok_or_else(|| {
                        Error::Usage("you must specify a source package to test".into())
                    })?;
                (here, kind)
            }
        };
        let fetch = match kind {
            Kind::Dsc => Some(Fetch::Dsc(source.clone())),
            Kind::AptSource => Some(Fetch::AptSource(source.to_string_lossy().into_owned())),
            Kind::Git => Some(Fetch::Git(source.to_string_lossy().into_owned())),
            Kind::UnbuiltTree if unapplied_patches(&source) => {
                Some(Fetch::Unapplied(source.clone()))
            }
            Kind::BuiltTree | Kind::UnbuiltTree => None,
        };
        let buildable = matches!(kind, Kind::Dsc | Kind::UnbuiltTree | Kind::Git);
        Ok(Inputs {
            build: buildable && binaries.is_empty() && !no_built_binaries,
            source,
            fetch,
            binaries,
        })
    }
}

/// A tree's kind, if `dir` is one.
fn tree_kind(dir: &Path) -> Option<Kind> {
    if dir.join("debian/control").is_file() {
        Some(if dir.join("debian/files").exists() {
            Kind::BuiltTree
        } else {
            Kind::UnbuiltTree
        })
    } else if dir.join("debian/tests/control").is_file() {
        Some(Kind::BuiltTree)
    } else {
        None
    }
}

/// Whether `tree` is a `3.0 (quilt)` source with patches that are not
/// applied (no `.pc/applied-patches`).
fn unapplied_patches(tree: &Path) -> bool {
    let read = |path: &str| std::fs::read_to_string(tree.join(path)).unwrap_or_default();
    read("debian/source/format").trim() == "3.0 (quilt)"
        && read("debian/patches/series")
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        && !tree.join(".pc/applied-patches").exists()
}

/// autopkgtest's test for a source package name: `[0-9a-z][0-9a-z.+-]+`.
fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The `.dsc` and `.deb` files a `.changes` lists, beside it; one that
/// cannot be read is a usage error, as a missing file named by the user.
fn changes_files(changes: &Path) -> Result<Vec<PathBuf>, Error> {
    let files = crate::acquire::files_field(changes).map_err(Error::Usage)?;
    let dir = changes.parent().unwrap_or(Path::new(""));
    Ok(files
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter(|name| name.ends_with(".deb") || name.ends_with(".dsc"))
        .map(|name| dir.join(name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, name: &str, files: &[&str]) -> String {
        for file in files {
            let path = dir.join(name).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "Source: x\n").unwrap();
        }
        dir.join(name).to_string_lossy().into_owned()
    }

    fn classify(args: &[&str], no_built: bool) -> Result<Inputs, Error> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Inputs::classify(&args, no_built)
    }

    /// The message of the usage error `args` give.
    fn usage_error(args: &[&str]) -> String {
        match classify(args, false).map(|_| ()) {
            Err(Error::Usage(message)) => message,
            other => panic!("not a usage error: {other:?}"),
        }
    }

    #[test]
    fn trees_by_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let unbuilt = tree(dir.path(), "unbuilt", &["debian/control"]);
        let built = tree(dir.path(), "built", &["debian/control", "debian/files"]);
        let tests_only = tree(dir.path(), "tests-only", &["debian/tests/control"]);
        let empty = tree(dir.path(), "empty", &["README"]);
        assert!(classify(&[&unbuilt], false).unwrap().build);
        assert!(!classify(&[&unbuilt], true).unwrap().build);
        assert!(!classify(&[&built], false).unwrap().build);
        assert!(!classify(&[&tests_only], false).unwrap().build);
        assert!(usage_error(&[&empty]).contains("is not a valid test package"));
        assert!(usage_error(&["/no/such/dir"]).contains("no such file or directory"));
        let two = usage_error(&[&unbuilt, &built]);
        assert!(two.contains("only one source package"), "{two}");
    }

    #[test]
    fn unapplied_quilt_patches_are_applied_first() {
        let dir = tempfile::tempdir().unwrap();
        let quilt = tree(dir.path(), "quilt", &["debian/control"]);
        let write =
            |file: &str, text: &str| std::fs::write(dir.path().join("quilt").join(file), text);
        std::fs::create_dir_all(dir.path().join("quilt/debian/source")).unwrap();
        std::fs::create_dir_all(dir.path().join("quilt/debian/patches")).unwrap();
        write("debian/source/format", "3.0 (quilt)\n").unwrap();
        write("debian/patches/series", "# none\n").unwrap();
        assert_eq!(classify(&[&quilt], false).unwrap().fetch, None);
        write("debian/patches/series", "fix.patch\n").unwrap();
        let fetch = classify(&[&quilt], true).unwrap().fetch;
        assert_eq!(fetch, Some(Fetch::Unapplied(quilt.clone().into())));
        std::fs::create_dir(dir.path().join("quilt/.pc")).unwrap();
        write(".pc/applied-patches", "fix.patch\n").unwrap();
        assert_eq!(classify(&[&quilt], false).unwrap().fetch, None);
    }

    #[test]
    fn names_urls_and_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let hello = classify(&["hello"], false).unwrap();
        assert_eq!(hello.fetch, Some(Fetch::AptSource("hello".into())));
        assert!(!hello.build);
        let git = classify(&["https://salsa.debian.org/x/y.git#main"], false).unwrap();
        assert!(matches!(git.fetch, Some(Fetch::Git(_))) && git.build);
        // A binary given means the source is not built.
        let deb = dir.path().join("x_1_all.deb");
        std::fs::write(&deb, "").unwrap();
        let unbuilt = tree(dir.path(), "unbuilt", &["debian/control"]);
        let both = classify(&[deb.to_str().unwrap(), &unbuilt], false).unwrap();
        assert_eq!(both.binaries, vec![deb]);
        assert!(!both.build);
        // A missing .deb whose name could be a package's is a package name,
        // as in autopkgtest.
        let fetch = classify(&["missing.deb"], false).unwrap().fetch;
        assert_eq!(fetch, Some(Fetch::AptSource("missing.deb".into())));
    }

    #[test]
    fn changes_stand_for_their_dsc_and_debs() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["p_1.dsc", "p_1.tar.xz", "p_1_all.deb"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let changes = dir.path().join("p_1_amd64.changes");
        std::fs::write(
            &changes,
            "Format: 1.8\nSource: p\nFiles:\n \
             0 1 misc optional p_1.dsc\n 0 1 misc optional p_1.tar.xz\n \
             0 1 misc optional p_1_all.deb\n 0 1 misc optional p_1_amd64.buildinfo\n",
        )
        .unwrap();
        let inputs = classify(&[changes.to_str().unwrap()], false).unwrap();
        assert_eq!(inputs.fetch, Some(Fetch::Dsc(dir.path().join("p_1.dsc"))));
        assert_eq!(inputs.binaries, vec![dir.path().join("p_1_all.deb")]);
        assert!(!inputs.build, "binaries in the .changes: nothing is built");
    }
}
