//! Named testbeds and defaults from TOML files: `dep8.toml` in the project
//! dir (the source tree tested; the current directory when the source is a
//! .dsc, a package name or a URL) over `~/.config/dep8/config.toml` (`$XDG_CONFIG_HOME`
//! honoured). Command-line flags override both.
//!
//! ```toml
//! [defaults]
//! testbed = "sid"                  # `dep8 run`, `explain`, `check` without a testbed
//! compare = ["sid", "bookworm-vm"] # `dep8 compare` without --on
//! # `dep8 run --on A --on B`: backends from cheapest to dearest; each
//! # test goes to the first that can run it (this is the default order)
//! route = ["null", "unshare", "schroot", "lxc", "qemu", "ssh", "external"]
//!
//! [testbed.sid]
//! backend = "unshare"
//! args = ["--tarball", "/var/cache/dep8/sid.tar"]
//! ```

use crate::Registry;
use dep8_core::inputs::Inputs;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The name of the project's configuration file.
pub const PROJECT_FILE: &str = "dep8.toml";

/// Why the configuration cannot be used (a usage error: exit 20).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file that is there could not be read.
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not TOML, or not the configuration's (an unknown key).
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// `testbed.NAME.backend` (set at `origin`) names no backend.
    #[error(
        "{origin}: testbed.{name}.backend: unknown backend {backend:?}; known backends: {}",
        known.join(", ")
    )]
    UnknownBackend {
        origin: String,
        name: String,
        backend: String,
        known: Vec<&'static str>,
    },
    /// A default (`defaults.KEY`, set at `origin`) names neither a
    /// testbed nor a backend.
    #[error(
        "{origin}: defaults.{key}: {name:?} is neither a testbed of the \
         configuration ({}) nor a backend ({})",
        testbeds.join(", "),
        backends.join(", ")
    )]
    UnknownDefault {
        origin: String,
        key: &'static str,
        name: String,
        testbeds: Vec<String>,
        backends: Vec<&'static str>,
    },
    /// `dep8 compare` without `--on` nor `defaults.compare`.
    #[error(
        "no testbeds to compare: give --on BACKEND... or set defaults.compare \
         in {PROJECT_FILE} or ~/.config/dep8/config.toml"
    )]
    NothingToCompare,
    /// An `--on` value that is not a testbed's command line.
    #[error("--on {given:?}: {why}")]
    BadOn { given: String, why: String },
}

/// A configuration that cannot be used is the user's to mend.
impl From<ConfigError> for dep8_core::error::Error {
    fn from(e: ConfigError) -> Self {
        dep8_core::error::Error::Usage(e.to_string())
    }
}

/// One configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    testbed: BTreeMap<String, Testbed>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    testbed: Option<Spanned<String>>,
    compare: Option<Spanned<Vec<String>>>,
    route: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Testbed {
    backend: Spanned<String>,
    #[serde(default)]
    args: Vec<String>,
}

/// A named testbed, with where it was defined (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTestbed {
    /// BACKEND ARGS..., as after `--` in `dep8 run`.
    pub argv: Vec<String>,
    pub defined_in: PathBuf,
}

/// A default, with where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    /// `FILE:LINE`.
    pub origin: String,
}

/// The configuration in force: the project's file over the user's.
#[derive(Debug, Default)]
pub struct Config {
    testbeds: BTreeMap<String, NamedTestbed>,
    pub default_testbed: Option<Setting<String>>,
    pub default_compare: Option<Setting<Vec<String>>>,
    /// `defaults.route`: backends from cheapest to dearest.
    pub route_order: Option<Vec<String>>,
}

impl Config {
    /// Reads the user's file and the project's (either may be missing),
    /// and checks them against `registry`'s backends.
    pub fn load(project_dir: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for path in user_file()
            .into_iter()
            .chain([project_dir.join(PROJECT_FILE)])
        {
            // A file this user cannot even see (no such file, or a dir on
            // its way they may not enter: another user's HOME) is absent;
            // one that is there but unreadable is an error.
            if std::fs::metadata(&path).is_err() {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => config.merge(&path, &text, registry)?,
                Err(source) => return Err(ConfigError::Unreadable { path, source }),
            }
        }
        config.check_defaults(registry)?;
        Ok(config)
    }

    /// The project dir of a run, compare, check or explain: the source
    /// tree tested, else (a .dsc, a package name, a URL) the current
    /// directory.
    fn project_dir(source_tree: Option<&Path>) -> PathBuf {
        source_tree.map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// Parses one file's `text` and lays it over what is already there.
    fn merge(&mut self, path: &Path, text: &str, registry: &Registry) -> Result<(), ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let at = |span: std::ops::Range<usize>| {
            format!("{}:{}", path.display(), line_of(text, span.start))
        };
        for (name, testbed) in file.testbed {
            let backend = testbed.backend.get_ref();
            if registry.resolve(std::slice::from_ref(backend)).is_err() {
                return Err(ConfigError::UnknownBackend {
                    origin: at(testbed.backend.span()),
                    name,
                    backend: backend.clone(),
                    known: registry.names(),
                });
            }
            let mut argv = vec![backend.clone()];
            argv.extend(testbed.args);
            self.testbeds.insert(
                name,
                NamedTestbed {
                    argv,
                    defined_in: path.to_path_buf(),
                },
            );
        }
        if let Some(testbed) = file.defaults.testbed {
            self.default_testbed = Some(Setting {
                origin: at(testbed.span()),
                value: testbed.into_inner(),
            });
        }
        if let Some(order) = file.defaults.route {
            self.route_order = Some(order);
        }
        if let Some(compare) = file.defaults.compare {
            self.default_compare = Some(Setting {
                origin: at(compare.span()),
                value: compare.into_inner(),
            });
        }
        Ok(())
    }

    /// Checks that each default names a configured testbed or a backend;
    /// once all files are in, as a default may name another file's testbed.
    fn check_defaults(&self, registry: &Registry) -> Result<(), ConfigError> {
        for (key, origin, name) in self.default_names() {
            let known = self.testbeds.contains_key(&name)
                || registry.resolve(std::slice::from_ref(&name)).is_ok();
            if !known {
                return Err(ConfigError::UnknownDefault {
                    origin,
                    key,
                    name,
                    testbeds: self.names().iter().map(|n| n.to_string()).collect(),
                    backends: registry.names(),
                });
            }
        }
        Ok(())
    }

    /// The testbed names the defaults give, with their key and origin.
    fn default_names(&self) -> Vec<(&'static str, String, String)> {
        let mut names = Vec::new();
        if let Some(t) = &self.default_testbed {
            names.push(("testbed", t.origin.clone(), t.value.clone()));
        }
        if let Some(c) = &self.default_compare {
            names.extend(
                c.value
                    .iter()
                    .map(|n| ("compare", c.origin.clone(), n.clone())),
            );
        }
        names
    }

    /// The configured testbed names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.testbeds.keys().map(String::as_str).collect()
    }

    pub fn testbed(&self, name: &str) -> Option<&NamedTestbed> {
        self.testbeds.get(name)
    }

    /// The testbed argv of a name: a configured testbed's, or the name
    /// alone (a backend).
    pub fn argv_of(&self, name: &str) -> Vec<String> {
        self.testbed(name)
            .map_or_else(|| vec![name.to_string()], |t| t.argv.clone())
    }
}

/// The testbed argv of `dep8 run` and `dep8 explain`: the one after `--`
/// as given (no file is read); else `--testbed NAME`'s, else
/// `defaults.testbed`'s, else null.
pub fn run_testbed(
    given: &[String],
    name: Option<&str>,
    project_dir: &Path,
    registry: &Registry,
) -> Result<Vec<String>, ConfigError> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    Ok(named_testbed(name, project_dir, registry)?.unwrap_or_else(|| vec!["null".into()]))
}

/// The testbed argv `name` stands for (a configured testbed, or a
/// backend), else `defaults.testbed`'s; `None` when neither is given, as
/// for `dep8 check` without `--testbed`.
pub fn named_testbed(
    name: Option<&str>,
    project_dir: &Path,
    registry: &Registry,
) -> Result<Option<Vec<String>>, ConfigError> {
    let config = Config::load(project_dir, registry)?;
    let name = name.or(config.default_testbed.as_ref().map(|d| d.value.as_str()));
    Ok(name.map(|name| config.argv_of(name)))
}

/// The project dir of a run's inputs: the source tree tested, else (a
/// .dsc, a package name, a URL) the current directory.
pub fn project_dir(inputs: &Inputs) -> PathBuf {
    Config::project_dir(source_tree(inputs))
}

/// `dep8 compare`'s testbeds, each with its label: every `--on` (a
/// configured testbed's name, or BACKEND ARGS as one string), else
/// `defaults.compare`.
pub fn compare_testbeds(
    on: &[String],
    source: &Path,
    registry: &Registry,
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let config = Config::for_source(source, registry)?;
    let names = match (on.is_empty(), &config.default_compare) {
        (false, _) => on.to_vec(),
        (true, Some(compare)) => compare.value.clone(),
        (true, None) => return Err(ConfigError::NothingToCompare),
    };
    config.labelled(&names)
}

impl Config {
    /// The configuration of the project whose source is `source`.
    pub fn for_source(source: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let inputs = Inputs::classify(&[source.to_string_lossy().into_owned()], true).ok();
        Config::load(
            &Config::project_dir(inputs.as_ref().and_then(source_tree)),
            registry,
        )
    }

    /// Each of `names` (a configured testbed's name, or BACKEND ARGS as one
    /// string, as `--on` takes them) with its testbed argv.
    pub fn labelled(&self, names: &[String]) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        names.iter().map(|given| self.labelled_one(given)).collect()
    }

    fn labelled_one(&self, given: &str) -> Result<(String, Vec<String>), ConfigError> {
        let bad_on = |why: String| ConfigError::BadOn {
            given: given.to_string(),
            why,
        };
        match self.testbed(given) {
            Some(named) => Ok((given.to_string(), named.argv.clone())),
            None => match shell_words::split(given) {
                Ok(argv) if argv.is_empty() => Err(bad_on("names no backend".into())),
                Ok(argv) => Ok((given.to_string(), argv)),
                Err(e) => Err(bad_on(e.to_string())),
            },
        }
    }
}

/// The source tree among a run's inputs (not one to fetch).
fn source_tree(inputs: &Inputs) -> Option<&Path> {
    inputs.fetch.is_none().then_some(inputs.source.as_path())
}

/// `~/.config/dep8/config.toml`, or under `$XDG_CONFIG_HOME`.
fn user_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("dep8/config.toml"))
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let registry = Registry::builtin();
        config.merge(Path::new("dep8.toml"), text, &registry)?;
        config.check_defaults(&registry)?;
        Ok(config)
    }

    #[test]
    fn named_testbeds_and_defaults() {
        let config = parse(
            "[defaults]\ntestbed = \"sid\"\ncompare = [\"sid\", \"null\"]\n\
             [testbed.sid]\nbackend = \"unshare\"\nargs = [\"--tarball\", \"sid.tar\"]\n",
        )
        .unwrap();
        assert_eq!(config.argv_of("sid"), ["unshare", "--tarball", "sid.tar"]);
        assert_eq!(config.argv_of("null"), ["null"]);
        let testbed = config.default_testbed.unwrap();
        assert_eq!(
            (testbed.value.as_str(), testbed.origin.as_str()),
            ("sid", "dep8.toml:2")
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[testbed.sid]\nbackend = \"unshare\"\nargz = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dep8.toml: TOML parse error at line 3"),
            "{e}"
        );
        assert!(e.contains("unknown field `argz`"), "{e}");
        let e = parse("\n[testbed.sid]\nbackend = \"unshar\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dep8.toml:3: testbed.sid.backend: unknown backend \"unshar\""),
            "{e}"
        );
        let e = parse("[defaults]\ntestbed = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dep8.toml:2: defaults.testbed: \"nowhere\""),
            "{e}"
        );
    }
}
