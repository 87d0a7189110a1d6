//! The same example packages through Debian's autopkgtest and through dep8
//! on the null, unshare and schroot testbeds, and through each other over
//! the virt-server protocol: every test must get the same result word, and the runs the
//! same exit status, as `autopkgtest -B SRC -- null`.

use dep8_tests::e2e::{
    assert_same_as_autopkgtest, assert_same_results, autopkgtest_as_root, dep8_bin,
    required_program, summary_of, EXAMPLE_TIMEOUT,
};
use dep8_tests::required_resource;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

const EXAMPLES: [&str; 3] = ["hello", "outcomes", "build-needed"];

/// Result words, exit status, and the end of the log (for the message).
type Results = (BTreeMap<String, String>, Option<i32>, String);

/// autopkgtest's own results on null, once per test binary.
fn reference() -> Option<&'static BTreeMap<&'static str, Results>> {
    static REFERENCE: OnceLock<Option<BTreeMap<&'static str, Results>>> = OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let autopkgtest = autopkgtest_as_root()?;
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

/// `PROGRAM OPTIONS --timeout-test=10 -o OUT examples/EXAMPLE -- TESTBED`.
fn run(program: &Path, options: &[&str], example: &str, testbed: &[&str]) -> Results {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let src = format!("examples/{example}");
    let mut args = options.to_vec();
    args.extend([EXAMPLE_TIMEOUT, "-o", out.to_str().unwrap(), &src, "--"]);
    args.extend(testbed);
    let (words, code) = summary_of(program, &args, &out);
    let log = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    (words, code, tail)
}

/// Runs every example through `program` and compares with autopkgtest.
/// One comparison at a time: autopkgtest installs packages on the host (the
/// null testbed), which must not happen under another run's feet.
fn same_as_autopkgtest(program: &Path, options: &[&str], testbed: &[&str]) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(reference) = reference() else {
        return;
    };
    for example in EXAMPLES {
        let (ours, our_code, our_log) = run(program, options, example, testbed);
        let (theirs, their_code, their_log) = &reference[example];
        let logs = format!("our log ends:\n{our_log}\nautopkgtest's log ends:\n{their_log}");
        assert_eq!(&ours, theirs, "result words differ on {example}; {logs}");
        assert_eq!(
            &our_code, their_code,
            "exit status differs on {example}; {logs}"
        );
    }
}

#[test]
fn dep8_on_null() {
    same_as_autopkgtest(&dep8_bin(), &["run", "-B"], &["null"]);
}

#[test]
fn dep8_over_autopkgtest_virt_null() {
    if required_program("autopkgtest-virt-null", "autopkgtest").is_none() {
        return;
    }
    same_as_autopkgtest(
        &dep8_bin(),
        &["run", "-B"],
        &["external", "autopkgtest-virt-null"],
    );
}

/// A virt server program for autopkgtest (which takes a path after `--`)
/// that runs `dep8 virt-server ARGS`.
fn virt_server_wrapper(dir: &Path, args: &[&str]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join("dep8-virt-server");
    let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' virt-server {} \"$@\"\n",
            dep8_bin().display(),
            args.join(" ")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

#[test]
fn autopkgtest_over_dep8_virt_server_null() {
    let Some(autopkgtest) = required_program("autopkgtest", "autopkgtest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrapper = virt_server_wrapper(dir.path(), &["null"]);
    same_as_autopkgtest(&autopkgtest, &["-B"], &[wrapper.to_str().unwrap()]);
}

/// Both directions of the protocol on a container testbed: Debian's
/// autopkgtest driving dep8's unshare backend, and dep8 driving
/// autopkgtest's unshare and schroot servers, each against the native run.
#[test]
fn protocol_both_ways_on_containers() {
    if autopkgtest_as_root().is_none() {
        return;
    }
    const OPTIONS: [&str; 1] = [EXAMPLE_TIMEOUT];
    if let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") {
        let dir = tempfile::tempdir().unwrap();
        let wrapper = virt_server_wrapper(dir.path(), &["unshare", "--tarball", &tarball]);
        let unshare = ["unshare", "--tarball", &tarball];
        // autopkgtest over dep8's unshare = dep8's own unshare run.
        assert_same_results(
            "examples/outcomes",
            &OPTIONS,
            &[wrapper.to_str().unwrap()],
            &unshare,
        );
        // dep8 over autopkgtest's unshare = autopkgtest's own.
        assert_same_results(
            "examples/outcomes",
            &OPTIONS,
            &unshare,
            &[
                "external",
                "autopkgtest-virt-unshare",
                "--tarball",
                &tarball,
            ],
        );
    }
    if let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot") {
        assert_same_results(
            "examples/outcomes",
            &OPTIONS,
            &["schroot", &chroot],
            &["external", "autopkgtest-virt-schroot", &chroot],
        );
    }
}

#[test]
fn same_results_as_autopkgtest_on_unshare() {
    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") else {
        return;
    };
    if autopkgtest_as_root().is_none() {
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
    if autopkgtest_as_root().is_none() {
        return;
    }
    for example in ["hello", "outcomes"] {
        assert_same_as_autopkgtest(example, &["schroot", &chroot]);
    }
}
