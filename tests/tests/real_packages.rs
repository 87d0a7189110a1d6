//! Real Debian bookworm source packages, fetched from the archive with
//! `apt-get source` (the host needs a `deb-src` entry, which
//! `.ci/install-deps` adds), run on the unshare backend by Debian's
//! autopkgtest and by dep8: every test must get the same result word, and
//! both runs the same exit status.
//!
//! Between them they cover a non-executable test script (sed), `@`
//! installed from the archive (hello, file), a script that writes into the
//! source tree as the normal user (hello) and an upstream test suite run
//! against the installed program (file). The small bookworm packages whose
//! sources the archive serves here use neither `Tests-Directory`,
//! `build-needed` nor `skip-not-installable`, and the one with `@builddeps@`
//! (grep) builds its whole test suite for minutes: `examples/tests-directory`
//! covers those four.

use dep8_tests::e2e::{assert_same_results, check, required_program};
use dep8_tests::required_resource;
use std::path::PathBuf;
use tempfile::TempDir;

/// The testbed needs the archive's package lists to install dependencies;
/// a rootfs tarball has none, and `-U` would also dist-upgrade.
const OPTIONS: [&str; 1] = ["--setup-commands=apt-get update"];

/// Downloads the bookworm source package `name` and unpacks it; returns
/// the temp dir (removed on drop) and the unpacked tree in it.
fn fetch_source(name: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    check(
        "apt-get",
        &["source", "--download-only", "-q", name],
        dir.path(),
    );
    let dsc = std::fs::read_dir(dir.path())
        .expect("temp dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "dsc"))
        .unwrap_or_else(|| panic!("apt-get source {name} fetched no .dsc"));
    let tree = dir.path().join("tree");
    let (dsc, tree_arg) = (dsc.to_str().expect("utf-8"), tree.to_str().expect("utf-8"));
    check("dpkg-source", &["-x", dsc, tree_arg], dir.path());
    (dir, tree)
}

/// The rootfs tarball, or `None` (with the reason printed) where the
/// machine lacks it or the programs the comparison needs.
fn rootfs() -> Option<String> {
    let tarball = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball")?;
    required_program("autopkgtest", "autopkgtest")?;
    required_program("dpkg-source", "dpkg-dev")?;
    Some(tarball)
}

/// Compares autopkgtest and dep8 on the source tree `src`, on unshare with
/// the same words (both share the host's network, so apt reaches the
/// archive).
fn compare(src: &str, tarball: &str) {
    let testbed = ["unshare", "--tarball", tarball];
    assert_same_results(src, &OPTIONS, &testbed, &testbed);
}

/// Fetches the bookworm source package `name` and compares on it.
fn real_package(name: &str) {
    let Some(tarball) = rootfs() else {
        return;
    };
    let (_dir, tree) = fetch_source(name);
    compare(tree.to_str().expect("utf-8 path"), &tarball);
}

/// A non-executable test script (mode 644), `Depends: @`.
#[test]
fn sed() {
    real_package("sed");
}

/// `@` installed from the archive; a script that writes into the source
/// tree as the normal user; an unnamed Test-Command.
#[test]
fn hello() {
    real_package("hello");
}

/// `@` and upstream's test data checked against the installed `file`.
#[test]
fn file() {
    real_package("file");
}

/// `Tests-Directory`, `build-needed`, `@builddeps@` and
/// `skip-not-installable`.
#[test]
fn tests_directory_example() {
    if let Some(tarball) = rootfs() {
        compare("examples/tests-directory", &tarball);
    }
}
