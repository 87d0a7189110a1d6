//! The dep8 binary links the conformance checks (for `dep8 conformance`)
//! and none of the test support (sshd harness, e2e helpers, fault
//! injection), which lives in this crate, dep8-tests.

use dep8_tests::e2e::repo;
use std::process::Command;

#[test]
fn the_binary_links_the_checks_but_not_the_test_support() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "--offline",
            "-p",
            "dep8",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(crates.contains(&"dep8-conformance"), "{tree}");
    for support in ["dep8-tests", "libtest-mimic"] {
        assert!(!crates.contains(&support), "dep8 links {support}:\n{tree}");
    }
}
