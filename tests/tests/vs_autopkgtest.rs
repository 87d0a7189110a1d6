//! The same example packages through Debian's autopkgtest and through dep8,
//! on the same testbed: every test must get the same result word.

use dep8_conformance::e2e::assert_same_as_autopkgtest;
use dep8_conformance::required_resource;
use std::path::Path;

/// Whether the comparison can run here; prints why not.
fn comparable() -> bool {
    if !Path::new("/usr/bin/autopkgtest").exists() {
        eprintln!("skipped: Debian's autopkgtest is not installed (apt-get install autopkgtest)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipped: compared as root only (autopkgtest's testbeds behave differently otherwise)"
        );
        return false;
    }
    true
}

#[test]
fn same_results_as_autopkgtest_on_null() {
    if !comparable() {
        return;
    }
    for example in ["hello", "outcomes"] {
        assert_same_as_autopkgtest(example, &["null"]);
    }
}

#[test]
fn same_results_as_autopkgtest_on_schroot() {
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot with a union-type")
    else {
        return;
    };
    if !comparable() {
        return;
    }
    for example in ["hello", "outcomes"] {
        assert_same_as_autopkgtest(example, &["schroot", &chroot]);
    }
}
