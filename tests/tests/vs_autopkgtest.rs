//! The same example packages through Debian's autopkgtest and through dep8
//! on the null, unshare and schroot testbeds, and through each other over
//! the virt-server protocol: every test must get the same result word, and the runs the
//! same exit status, as `autopkgtest -B SRC -- null`.

use dep8_conformance::e2e::{assert_same_as_autopkgtest, dep8_bin, required_program, summary_of};
use dep8_conformance::required_resource;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

const EXAMPLES: [&str; 3] = ["hello", "outcomes", "build-needed"];

type Results = (BTreeMap<String, String>, Option<i32>);

/// autopkgtest's own results on null, once per test binary: every
/// comparison below waits for them (so two autopkgtest runs, which
/// install on the host, never overlap).
fn reference() -> Option<&'static BTreeMap<&'static str, Results>> {
    static REFERENCE: OnceLock<Option<BTreeMap<&'static str, Results>>> = OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let autopkgtest = required_program("autopkgtest", "autopkgtest")?;
            if !nix::unistd::geteuid().is_root() {
                eprintln!(
                    "SKIP: compared as root only (autopkgtest's null behaves differently otherwise)"
                );
                return None;
            }
            Some(
                EXAMPLES
                    .into_iter()
                    .map(|example| {
                        let results = run(&autopkgtest, &["-B"], example, &["null"]);
                        assert!(
                            !results.0.is_empty(),
                            "autopkgtest produced no summary for {example}"
                        );
                        (example, results)
                    })
                    .collect(),
            )
        })
        .as_ref()
}

/// `PROGRAM OPTIONS --timeout-test=3 -o OUT examples/EXAMPLE -- TESTBED`.
fn run(program: &Path, options: &[&str], example: &str, testbed: &[&str]) -> Results {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let src = format!("examples/{example}");
    let mut args = options.to_vec();
    args.extend(["--timeout-test=3", "-o", out.to_str().unwrap(), &src, "--"]);
    args.extend(testbed);
    summary_of(program, &args, &out)
}

/// Runs every example through `program` and compares with autopkgtest.
fn same_as_autopkgtest(program: &Path, options: &[&str], testbed: &[&str]) {
    let Some(reference) = reference() else {
        return;
    };
    for example in EXAMPLES {
        let (ours, our_code) = run(program, options, example, testbed);
        let (theirs, their_code) = &reference[example];
        assert_eq!(&ours, theirs, "result words differ on {example}");
        assert_eq!(&our_code, their_code, "exit status differs on {example}");
    }
}

#[test]
fn dep8_on_null() {
    same_as_autopkgtest(&dep8_bin(), &["run"], &["null"]);
}

#[test]
fn dep8_over_autopkgtest_virt_null() {
    if required_program("autopkgtest-virt-null", "autopkgtest").is_none() {
        return;
    }
    same_as_autopkgtest(
        &dep8_bin(),
        &["run"],
        &["external", "autopkgtest-virt-null"],
    );
}

#[test]
fn autopkgtest_over_dep8_virt_server_null() {
    let Some(autopkgtest) = required_program("autopkgtest", "autopkgtest") else {
        return;
    };
    // autopkgtest takes a path to a virt server program after `--`.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("dep8-virt-null");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' virt-server null \"$@\"\n",
            dep8_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    same_as_autopkgtest(&autopkgtest, &["-B"], &[wrapper.to_str().unwrap()]);
}

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
fn same_results_as_autopkgtest_on_unshare() {
    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") else {
        return;
    };
    if !comparable() {
        return;
    }
    for example in ["hello", "outcomes"] {
        assert_same_as_autopkgtest(example, &["unshare", "--tarball", &tarball]);
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
