//! The source package around the tests: `debian/control` read with
//! `debian-control`, `@`/`@builddeps@`/`@recommends@` expansion, dpkg
//! architecture wildcards, and checking relations against installed packages.

use crate::error::Error;
use debian_control::lossless::relations::{Relation, Relations};
use debian_control::lossless::Control;
use debian_control::relations::BuildProfile;
use std::collections::HashMap;
use std::path::Path;

/// A binary package built by the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binary {
    pub name: String,
    /// `Architecture:` as written (`any`, `all`, `amd64 arm64`, ...).
    pub architecture: String,
}

impl Binary {
    /// Whether it is built for `arch` (autopkgtest's `@` lists only these).
    pub fn built_for(&self, arch: &str) -> bool {
        let archs: Vec<String> = self
            .architecture
            .split_whitespace()
            .map(str::to_string)
            .collect();
        self.architecture == "all" || arch_list_matches(arch, &archs)
    }
}

/// What dep8 needs from `debian/control`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePackage {
    pub name: String,
    /// Real `.deb` binaries (udebs and other package types are left out).
    pub binaries: Vec<Binary>,
    /// Build-Depends, Build-Depends-Indep and Build-Depends-Arch, unfolded
    /// and joined.
    pub build_depends: String,
    /// Every binary's Recommends, unfolded and joined.
    pub recommends: String,
    /// The source paragraph's `Testsuite:` (autodep8's
    /// `autopkgtest-pkg-*` words).
    pub testsuite: String,
}

impl SourcePackage {
    /// Reads `TREE/debian/control`; `Ok(None)` when there is none. One
    /// that cannot be read or parsed is the package's fault.
    pub fn read(tree: &Path) -> Result<Option<SourcePackage>, Error> {
        let path = tree.join("debian/control");
        let bad = |e: &dyn std::fmt::Display| Error::BadPackage(format!("{}: {e}", path.display()));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(&e)),
        };
        Self::parse(&text).map(Some).map_err(|e| bad(&e))
    }

    /// Parses a debian/control's text; the error is the parser's message.
    pub fn parse(text: &str) -> Result<SourcePackage, String> {
        // Comment lines are legal in debian/control; the lossless parser keeps
        // them, autopkgtest drops them: drop them here too.
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed = Control::parse(&text);
        if let Some(err) = parsed.positioned_errors().first() {
            return Err(err.message.clone());
        }
        let control = parsed.tree();
        let source = control.source();
        let field = |name: &str| {
            source
                .as_ref()
                .and_then(|s| s.get(name))
                .unwrap_or_default()
        };
        let build_depends = ["Build-Depends", "Build-Depends-Indep", "Build-Depends-Arch"]
            .iter()
            .map(|f| unfold(&field(f)))
            .filter(|v| !v.trim().is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        let mut binaries = Vec::new();
        let mut recommends = Vec::new();
        for binary in control.binaries() {
            let get = |f: &str| binary.as_deb822().get(f);
            if let Some(r) = get("Recommends") {
                recommends.push(unfold(&r));
            }
            let package_type = get("Package-Type").or_else(|| get("XC-Package-Type"));
            if package_type.is_some_and(|t| t != "deb") {
                continue;
            }
            if let Some(name) = binary.name() {
                binaries.push(Binary {
                    name,
                    architecture: get("Architecture").unwrap_or_else(|| "any".into()),
                });
            }
        }
        Ok(SourcePackage {
            name: field("Source"),
            binaries,
            build_depends,
            recommends: recommends.join(", "),
            testsuite: field("Testsuite"),
        })
    }
}

/// A folded field on one line, as autopkgtest hands it to apt (which
/// reads any whitespace alike).
fn unfold(value: &str) -> String {
    value.replace('\n', " ")
}

/// Whether autopkgtest asks autodep8 for the tests of `tree`: it has no
/// debian/tests/control, or its debian/control says `Testsuite:
/// autopkgtest-pkg-*`.
pub fn wants_autodep8(tree: &Path) -> bool {
    !tree.join("debian/tests/control").exists()
        || SourcePackage::read(tree)
            .ok()
            .flatten()
            .is_some_and(|s| s.testsuite.contains("autopkgtest-pkg-"))
}

/// The control file `autodep8` writes for `tree`, run on the host in the
/// tree as autopkgtest runs it; `Ok(None)` when it is not installed,
/// `Err` with what it said when it generates nothing.
pub async fn autodep8(tree: &Path) -> Result<Option<tempfile::NamedTempFile>, String> {
    let control = tempfile::Builder::new()
        .prefix("autodep8.")
        .tempfile()
        .map_err(|e| format!("creating a temp file: {e}"))?;
    let stdout = control
        .reopen()
        .map_err(|e| format!("{}: {e}", control.path().display()))?;
    // spawn, not output(): tokio's output() would pipe stdout, not write
    // the file.
    let child = match tokio::process::Command::new("autodep8")
        .current_dir(tree)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("autodep8: {e}")),
    };
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("autodep8: {e}"))?;
    if out.status.success() {
        Ok(Some(control))
    } else {
        Err(format!(
            "autodep8 exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Expands a test's `Depends:` value into alternative groups, each the
/// string handed to apt, as autopkgtest 5.49 does: `@` is every binary built
/// for `arch`, `@builddeps@` the build dependencies as written (apt applies
/// their architecture lists and build profiles) plus build-essential,
/// `@recommends@` every Recommends group as written. Alternatives are
/// joined with " | ", trimmed as autopkgtest trims them.
pub fn expand_depends(
    value: &str,
    source: Option<&SourcePackage>,
    arch: &str,
) -> Result<Vec<String>, String> {
    let mut deps = Vec::new();
    for group in value.split(',').map(py_trim).filter(|g| !g.is_empty()) {
        match group {
            "@" => deps.extend(
                source
                    .into_iter()
                    .flat_map(|s| &s.binaries)
                    .filter(|b| b.built_for(arch))
                    .map(|b| b.name.clone()),
            ),
            "@builddeps@" => {
                let text = source.map_or("", |s| s.build_depends.as_str());
                validate(text).map_err(|e| format!("invalid build dependencies: {e}"))?;
                deps.extend(text.split(',').map(alternatives));
                deps.push("build-essential".into());
            }
            "@recommends@" => {
                let groups = source.map(|s| without_substvars(&s.recommends));
                let groups = groups.unwrap_or_default();
                validate(&groups.join(", ")).map_err(|e| format!("invalid Recommends: {e}"))?;
                deps.extend(groups);
            }
            _ => {
                check_dependency(group)?;
                deps.push(alternatives(group));
            }
        }
    }
    deps.retain(|d| !d.is_empty());
    Ok(deps)
}

/// Python's `str.strip()`, which autopkgtest trims dependencies with.
fn py_trim(s: &str) -> &str {
    s.trim_matches(crate::control::py_space)
}

/// One alternative group as autopkgtest hands it to apt: each alternative
/// trimmed, joined with " | ".
fn alternatives(group: &str) -> String {
    group
        .split('|')
        .map(py_trim)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Whether relations parse (dep8 is stricter here than autopkgtest, which
/// leaves invalid ones for apt to refuse).
fn validate(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Ok(());
    }
    text.parse::<Relations>().map(drop)
}

/// The Recommends groups without `${...}` substitution variables, which
/// only a built package resolves, as autopkgtest does: whole `${...}`
/// entries go, and version constraints that use one (`foo (= ${binary:Version})`
/// is `foo`).
fn without_substvars(deps: &str) -> Vec<String> {
    deps.split(',')
        .map(py_trim)
        .filter(|d| !d.is_empty() && !d.starts_with("${"))
        .map(|d| match (d.find('('), d.find("${"), d.rfind(')')) {
            (Some(open), Some(var), Some(close)) if open < var && var < close => {
                py_trim(&format!("{}{}", &d[..open], &d[close + 1..])).to_string()
            }
            _ => d.to_string(),
        })
        .collect()
}

/// Validates one alternative group of a test's Depends against the grammar
/// autopkgtest accepts for each alternative: `name[:arch] [(op version)]
/// [[arch list]]`, lower-case names, the five relation operators and a valid
/// Debian version. Stricter than autopkgtest in one way: it rejects an empty
/// version (`foo (>= )`).
/// Hand-rolled because `debian-control`'s parser accepts more (build
/// profiles, `>`, upper case) than apt takes in a test's Depends.
fn check_dependency(group: &str) -> Result<(), String> {
    for alternative in group.split('|') {
        match check_alternative(alternative.trim()) {
            Ok(()) => {}
            Err(Invalid::Syntax) => {
                return Err(format!(
                    "Test Depends field contains an invalid dependency `{group}'"
                ))
            }
            Err(Invalid::Version) => {
                return Err(format!(
                    "Test Depends field contains dependency `{group}' with an invalid version"
                ))
            }
        }
    }
    Ok(())
}

enum Invalid {
    Syntax,
    Version,
}

/// One alternative of a test dependency; see [`check_dependency`].
fn check_alternative(dep: &str) -> Result<(), Invalid> {
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c);
    let name_end = dep.find(|c| !is_name(c)).unwrap_or(dep.len());
    if name_end == 0 {
        return Err(Invalid::Syntax);
    }
    let mut rest = &dep[name_end..];
    if let Some(qualified) = rest.strip_prefix(':') {
        let end = qualified
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)))
            .unwrap_or(qualified.len());
        if end == 0 {
            return Err(Invalid::Syntax);
        }
        rest = &qualified[end..];
    }
    rest = rest.trim_start();
    if let Some(constraint) = rest.strip_prefix('(') {
        let op = ["<<", "<=", ">=", ">>", "="]
            .into_iter()
            .find(|op| constraint.starts_with(op))
            .ok_or(Invalid::Syntax)?;
        let (version, after) = constraint[op.len()..]
            .split_once(')')
            .ok_or(Invalid::Syntax)?;
        if !valid_version(version.trim_start()) {
            return Err(Invalid::Version);
        }
        rest = after.trim_start();
    }
    if let Some(list) = rest.strip_prefix('[') {
        let is_arch = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.! ".contains(c);
        match list.split_once(']') {
            Some((archs, "")) if !archs.is_empty() && archs.chars().all(is_arch) => return Ok(()),
            _ => return Err(Invalid::Syntax),
        }
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Invalid::Syntax)
    }
}

/// Debian version syntax, as python-debian checks it: `[epoch:]upstream
/// [-revision]` from `A-Za-z0-9.+~-` (and `:` after an epoch).
fn valid_version(version: &str) -> bool {
    let (epoch, rest) = match version.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()) => (true, rest),
        _ => (false, version),
    };
    !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c) || (epoch && c == ':'))
}

/// Whether a relation's architecture list and build profiles keep it for
/// `arch` with no profile active.
fn relation_applies(relation: &Relation, arch: &str) -> bool {
    let arch_ok = match relation.architectures() {
        Some(list) => arch_list_matches(arch, &list.collect::<Vec<_>>()),
        None => true,
    };
    let mut profiles = relation.profiles().peekable();
    let profiles_ok = profiles.peek().is_none()
        || profiles.any(|conj| {
            conj.iter().all(|p| match p {
                BuildProfile::Enabled(_) => false,
                BuildProfile::Disabled(_) => true,
            })
        });
    arch_ok && profiles_ok
}

/// `[amd64 !i386]` semantics: a positive list must contain a match, a
/// negated list must not.
fn arch_list_matches(arch: &str, list: &[String]) -> bool {
    let negated = list.iter().any(|a| a.starts_with('!'));
    if negated {
        !list
            .iter()
            .any(|a| arch_matches(arch, a.trim_start_matches('!')))
    } else {
        list.iter().any(|a| arch_matches(arch, a))
    }
}

/// dpkg's `debarch_is`: exact names and wildcards (`any`, `linux-any`,
/// `any-arm`, ...), by dpkg's architecture tables ([`crate::arch`]).
pub fn arch_matches(arch: &str, wildcard: &str) -> bool {
    crate::arch::is(arch, wildcard)
}

/// The `Architecture:` field check, with autopkgtest's reason texts.
pub fn check_architecture(arch: &str, architectures: &[String]) -> Result<(), String> {
    if architectures.iter().any(|a| a == "all") {
        return Err("Arch 'all' not allowed in Architecture field".into());
    }
    if architectures.is_empty() || architectures == ["any"] {
        return Ok(());
    }
    let negative = architectures.iter().any(|a| a.starts_with('!'));
    let positive = architectures.iter().any(|a| !a.starts_with('!'));
    for a in architectures.iter().filter_map(|a| a.strip_prefix('!')) {
        if arch_matches(arch, a) {
            return Err(format!(
                "Test declares architecture as not supported: {arch}"
            ));
        }
    }
    if positive {
        if negative {
            return Err(
                "It is not permitted for some archs to be prepended by an exclamation \
                        mark while others aren't"
                    .into(),
            );
        }
        if !architectures.iter().any(|a| arch_matches(arch, a)) {
            return Err(format!(
                "Test lists explicitly supported architectures, but the current architecture \
                 {arch} isn't listed."
            ));
        }
    }
    Ok(())
}

/// The `dpkg-query -W -f` format [`parse_installed`] reads.
pub const DPKG_QUERY_FORMAT: &str = "${Package}\t${Version}\t${db:Status-Abbrev}\t${Provides}\n";

/// Installed packages and their versions, and the virtual packages they
/// provide (from `dpkg-query`).
#[derive(Clone, Debug, Default)]
pub struct Installed {
    versions: HashMap<String, debversion::Version>,
    /// Virtual package -> the versions it is provided at (`None`: an
    /// unversioned Provides, which satisfies only unversioned relations).
    provided: HashMap<String, Vec<Option<debversion::Version>>>,
}

impl Installed {
    /// The installed version of a real package.
    pub fn get(&self, name: &str) -> Option<&debversion::Version> {
        self.versions.get(name)
    }

    /// The real packages and their versions.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &debversion::Version)> {
        self.versions.iter()
    }

    /// Whether `relation`'s package is installed or provided at a version
    /// that satisfies it, as dpkg decides.
    fn satisfies(&self, relation: &Relation) -> bool {
        let name = relation.try_name().unwrap_or_default();
        let version = relation.version();
        let fits = |have: Option<&debversion::Version>| match (&version, have) {
            (None, _) => true,
            (Some((op, want)), Some(have)) => version_satisfies(have, op.clone(), want),
            (Some(_), None) => false,
        };
        self.versions.get(&name).is_some_and(|v| fits(Some(v)))
            || self
                .provided
                .get(&name)
                .is_some_and(|vs| vs.iter().any(|v| fits(v.as_ref())))
    }
}

/// Parses `dpkg-query -W -f DPKG_QUERY_FORMAT` output, keeping packages
/// that are really installed and what they provide.
pub fn parse_installed(dpkg_query: &str) -> Installed {
    let mut installed = Installed::default();
    for line in dpkg_query.lines() {
        let mut parts = line.split('\t');
        let (Some(name), Some(version), Some(status)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(version) = version.parse() else {
            continue;
        };
        if !status.starts_with("ii") {
            continue;
        }
        installed.versions.insert(name.to_string(), version);
        let provides = parts.next().unwrap_or_default();
        let Ok(provides) = provides.parse::<Relations>() else {
            continue;
        };
        for relation in provides
            .entries()
            .flat_map(|e| e.relations().collect::<Vec<_>>())
        {
            let provided = relation.version().map(|(_, v)| v);
            installed
                .provided
                .entry(relation.try_name().unwrap_or_default())
                .or_default()
                .push(provided);
        }
    }
    installed
}

/// The alternative groups in `deps` that `installed` does not satisfy on
/// `arch`; a virtual package that an installed one provides counts.
pub fn unsatisfied(deps: &[String], installed: &Installed, arch: &str) -> Vec<String> {
    deps.iter()
        .filter(|group| {
            let Ok(relations) = group.parse::<Relations>() else {
                return true;
            };
            let unmet = relations.entries().any(|entry| {
                let applicable: Vec<Relation> = entry
                    .relations()
                    .filter(|r| relation_applies(r, arch))
                    .collect();
                !applicable.is_empty() && !applicable.iter().any(|r| installed.satisfies(r))
            });
            unmet
        })
        .cloned()
        .collect()
}

fn version_satisfies(
    have: &debversion::Version,
    op: debian_control::relations::VersionConstraint,
    want: &debversion::Version,
) -> bool {
    use debian_control::relations::VersionConstraint as V;
    match op {
        V::LessThan => have < want,
        V::LessThanEqual => have <= want,
        V::Equal => have == want,
        V::GreaterThanEqual => have >= want,
        V::GreaterThan => have > want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: &str = "Source: demo\n# a comment\nBuild-Depends: debhelper-compat (= 13), libfoo-dev [amd64], libbar-dev [!amd64],\n nocheck-only <!nocheck>, with-check <check>\nBuild-Depends-Indep: python3 | python3-all\n\nPackage: demo\nArchitecture: any\nRecommends: ${misc:Depends}, demo-doc\n\nPackage: demo-doc\nArchitecture: all\nRecommends: demo-doc [amd64],\n x|y\n\nPackage: demo-x86\nArchitecture: amd64 i386\n\nPackage: demo-udeb\nPackage-Type: udeb\nArchitecture: any\n";

    #[test]
    fn expands_at_forms() {
        let src = SourcePackage::parse(CONTROL).unwrap();
        assert_eq!(src.name, "demo");
        let deps = expand_depends("@, foo (>= 1.0)|bar", Some(&src), "amd64").unwrap();
        assert_eq!(deps, ["demo", "demo-doc", "demo-x86", "foo (>= 1.0) | bar"]);
        // A binary not built for the architecture is left out.
        let deps = expand_depends("@", Some(&src), "arm64").unwrap();
        assert_eq!(deps, ["demo", "demo-doc"]);
        // As written, for apt to reduce, whatever the architecture.
        for arch in ["amd64", "arm64"] {
            let deps = expand_depends("@builddeps@", Some(&src), arch).unwrap();
            assert_eq!(
                deps,
                [
                    "debhelper-compat (= 13)",
                    "libfoo-dev [amd64]",
                    "libbar-dev [!amd64]",
                    "nocheck-only <!nocheck>",
                    "with-check <check>",
                    "python3 | python3-all",
                    "build-essential"
                ]
            );
        }
        assert_eq!(
            expand_depends("@recommends@", Some(&src), "amd64").unwrap(),
            ["demo-doc", "demo-doc [amd64]", "x|y"]
        );
    }

    #[test]
    fn needs_sudo_implies_passwd_and_sudo_once() {
        let ctx = crate::control::DependsContext {
            source: None,
            arch: "amd64",
        };
        let text = "Tests: a\nRestrictions: needs-sudo\nDepends: sudo\n";
        let entries = crate::control::parse_bytes(Path::new("c"), text.as_bytes(), &ctx);
        match &entries[..] {
            [crate::control::Entry::Test(t)] => assert_eq!(t.depends, ["sudo", "passwd"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_invalid_dependencies() {
        // What autopkgtest rejects too, and the two cases where dep8 is stricter.
        for bad in [
            "foo bar",
            "foo (> 1.0)",
            "foo ( >= 1)",
            "foo (>= 1:)",
            "foo (>= 1.0 )",
            "foo (>= 1.0",
            "foo <!nocheck>",
            "Foo",
            "foo [amd64] bar",
            "foo (>= )",
            "foo |",
        ] {
            assert!(expand_depends(bad, None, "amd64").is_err(), "{bad}");
        }
        for good in [
            "foo:any (>= 1:2.3-4) [linux-any]",
            "foo (>=1.0) , bar(<<2)",
            "sudo:native | foo [!i386 amd64]",
            "g++-12 (= 12.2.0-14+deb12u1~bpo1)",
        ] {
            assert!(expand_depends(good, None, "amd64").is_ok(), "{good}");
        }
    }

    #[test]
    fn recommends_lose_substvars_like_autopkgtest() {
        assert_eq!(
            without_substvars("${misc:Recommends}, foo (= ${binary:Version}), bar (>= 1) | baz"),
            ["foo", "bar (>= 1) | baz"]
        );
    }

    #[test]
    fn architecture_wildcards() {
        assert!(arch_matches("amd64", "any-amd64"));
        assert!(arch_matches("amd64", "linux-any"));
        assert!(!arch_matches("hurd-i386", "linux-any"));
        assert!(check_architecture("amd64", &["!i386".into()]).is_ok());
        assert!(check_architecture("amd64", &["arm64".into()]).is_err());
        assert!(check_architecture("amd64", &["all".into()]).is_err());
        assert!(check_architecture("amd64", &["amd64".into(), "!i386".into()]).is_err());
    }

    #[test]
    fn checks_installed_versions() {
        let installed = parse_installed("bash\t5.2.15-2+b2\tii \nold\t1.0\trc \n");
        let deps: Vec<String> = ["bash (>= 5)", "bash (<< 5) | old", "x [arm64]", "nope"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            unsatisfied(&deps, &installed, "amd64"),
            ["bash (<< 5) | old", "nope"]
        );
    }

    #[test]
    fn virtual_packages_and_architecture_wildcards() {
        let installed = parse_installed(
            "mawk\t1.3.4\tii \tawk\nlibc6\t2.36\tii \tlibc6-x (= 2.36), x\ngone\t1\trc \tghost\n",
        );
        let deps: Vec<String> = [
            "awk",
            "awk (>= 1)",
            "libc6-x (>= 2.30)",
            "libc6-x (>= 3)",
            "ghost",
            "hello [any-arm]",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            unsatisfied(&deps, &installed, "armhf"),
            ["awk (>= 1)", "libc6-x (>= 3)", "ghost", "hello [any-arm]"]
        );
        assert_eq!(
            unsatisfied(&deps[5..], &installed, "amd64"),
            Vec::<String>::new()
        );
    }
}
