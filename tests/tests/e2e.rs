//! End to end: the `dep8` binary on the example packages, asserting the
//! exact summary, the exit status and the files in the output dir.

use dep8_tests::e2e::{dep8_bin, repo, source_tree, EXAMPLE_TIMEOUT};
use std::path::Path;
use std::process::{Command, Output};

fn run(example: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(dep8_bin())
        .current_dir(repo())
        .args([
            "run",
            "-B",
            &format!("examples/{example}"),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .expect("run dep8")
}

/// Asserts the exit status, showing dep8's stderr when it differs.
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[test]
fn hello_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("hello", &dir.path().join("out"), &[]);
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "greets               PASS\ncommand1             PASS (superficial)\n"
    );
}

#[test]
fn every_outcome_on_null() {
    if !nix_is_root() {
        eprintln!("skipped: the expected summary assumes dep8 runs as root (needs-root passes)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = run("outcomes", &out_dir, &[EXAMPLE_TIMEOUT]);
    let expected = "\
command3             SKIP Test restriction \"breaks-testbed\" requires testbed capability \"revert-full-system\"
command4             SKIP Test restriction \"needs-reboot\" requires testbed capability \"reboot\"
container            SKIP Test restriction \"isolation-container\" requires testbed capability \"isolation-container\" and/or \"isolation-machine\"
machine              SKIP Test restriction \"isolation-machine\" requires testbed capability \"isolation-machine\"
unknown-restriction  SKIP unknown restriction needs-a-unicorn
triggers-only        SKIP Test restriction \"hint-testsuite-triggers\" means it is never run
nested               SKIP Test restriction \"needs-nesting\" requires testbed capability \"nesting\"
other-arch           SKIP Test lists explicitly supported architectures, but the current architecture amd64 isn't listed.
passes               PASS
not-executable       PASS
fails                FAIL non-zero exit status 3
writes-stderr        FAIL stderr: a warning
allowed-stderr       PASS
skips-itself         SKIP exit status 77 and marked as skippable
flaky-fails          FLAKY non-zero exit status 1
command1             PASS (superficial)
command2             PASS
not-installable      SKIP installation fails and skip-not-installable set
sleeps-too-long      FAIL timed out
env-and-artifacts    PASS
elsewhere            PASS
";
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(out_dir.join("summary")), expected);
    assert_eq!(out.status.code(), Some(6), "failures and skips");

    // Per-test files: non-empty ones only, as autopkgtest.
    assert_eq!(read(out_dir.join("passes-stdout")), "this one passes\n");
    assert_eq!(read(out_dir.join("writes-stderr-stderr")), "a warning\n");
    assert!(
        !out_dir.join("allowed-stderr-stderr").exists()
            || read(out_dir.join("allowed-stderr-stderr")).contains("allowed")
    );
    assert!(
        !out_dir.join("command1-stdout").exists(),
        "empty stdout files are removed"
    );
    assert_eq!(read(out_dir.join("artifacts/hello.txt")), "an artifact\n");
    assert!(read(out_dir.join("log")).contains("test passes: [-----------------------"));
    assert!(read(out_dir.join("testbed-packages")).contains("dpkg\t"));

    let testinfo: serde_json::Value =
        serde_json::from_str(&read(out_dir.join("testinfo.json"))).unwrap();
    assert_eq!(testinfo["virt_server"], "autopkgtest-virt-null");
    let results: serde_json::Value =
        serde_json::from_str(&read(out_dir.join("results.json"))).unwrap();
    assert_eq!(results["schema"], "dep8-results/1");
    assert_eq!(results["exit_code"], 6);
    assert_eq!(results["complete"], true);
    let tests = results["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 21);
    let fails = tests.iter().find(|t| t["name"] == "fails").unwrap();
    assert_eq!(fails["result"], "FAIL");
    assert_eq!(fails["reason"], "non-zero exit status 3");
    let junit = read(out_dir.join("junit.xml"));
    assert!(
        junit.contains("<testsuite name=\"outcomes\" tests=\"21\""),
        "{junit}"
    );
    assert!(junit.contains("non-zero exit status 3"));
}

#[test]
fn broken_stanzas_do_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("broken", &dir.path().join("out"), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let control = "examples/broken/debian/tests/control";
    // autopkgtest's words in the summary: a broken stanza blames the package.
    let expected = format!("\
both                 FAIL badpkg
blame: examples/broken
badpkg: {control}:8: Test-Command: Only one of \"Tests\" or \"Test-Command\" may be given
*                    FAIL badpkg
blame: examples/broken
badpkg: {control}:11: missing \"Tests\" or \"Test-Command\" field
bad-depends          FAIL badpkg
blame: examples/broken
badpkg: {control}:15: Depends: Test Depends field contains dependency `foo (>= )' with an invalid version
odd                  SKIP unknown field Frobnicate
good                 PASS
");
    assert_eq!(stdout, expected);
    // results.json keeps dep8's word.
    let results = std::fs::read_to_string(dir.path().join("out/results.json")).unwrap();
    assert!(results.contains("\"BROKEN\""), "{results}");
    assert_eq!(out.status.code(), Some(14), "erroneous package and skips");
}

#[test]
fn ctrl_c_keeps_results_and_kills_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let marker = dir.path().join("slow-survived");
    let child = Command::new(dep8_bin())
        .current_dir(repo())
        .args(["run", "examples/slow", "-o", out_dir.to_str().unwrap()])
        .args(["--env", &format!("SLOW_MARKER={}", marker.display())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the slow test has started.
    let started = std::time::Instant::now();
    while !read_or_empty(&out_dir.join("log")).contains("test slow: [---") {
        assert!(
            started.elapsed().as_secs() < 30,
            "the slow test never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    // As autopkgtest on SIGTERM: it cleans up, then dies by the signal.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(2), "{:?}", out.status);
    let summary = read(out_dir.join("summary"));
    assert!(
        summary.starts_with("quick                PASS\n"),
        "{summary}"
    );
    assert!(summary.contains("quitting: interrupted"), "{summary}");
    let results: serde_json::Value =
        serde_json::from_str(&read(out_dir.join("results.json"))).unwrap();
    assert_eq!(results["tests"][0]["name"], "quick");
    assert_eq!(results["tests"][1]["name"], "slow");
    assert_eq!(results["tests"][1]["result"], "INTERRUPTED");
    assert_eq!(results["complete"], false);
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(!marker.exists(), "the interrupted test kept running");
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn a_dsc_is_unpacked_in_the_testbed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let built = Command::new("cp")
        .args(["-a", "examples/hello", src.to_str().unwrap()])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(built.success());
    let dsc_made = Command::new("dpkg-source")
        .args(["-b", "hello"])
        .current_dir(&src)
        .output()
        .expect("dpkg-source (dpkg-dev) is installed by .ci/install-deps");
    assert!(dsc_made.status.success(), "{dsc_made:?}");
    let dsc = src.join("dep8-hello_1.0.dsc");
    let out_dir = dir.path().join("out");
    let out = Command::new(dep8_bin())
        .args([
            "run",
            "-o",
            out_dir.to_str().unwrap(),
            dsc.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        read(out_dir.join("summary")),
        "greets               PASS\ncommand1             PASS (superficial)\n"
    );
}

/// `--needs-internet=run|try|skip` decide what a failing needs-internet
/// test becomes, and `-u USER` runs the tests as that user.
#[test]
fn needs_internet_modes_and_the_test_user() {
    if !nix_is_root() {
        eprintln!("skipped: -u needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(
        dir.path(),
        "options",
        "Test-Command: id -un\nDepends:\nFeatures: test-name=who\n\n\
         Test-Command: echo offline >&2; exit 1\nDepends:\nFeatures: test-name=online\n\
         Restrictions: needs-internet\n",
    );
    let summary = |args: &[&str]| {
        let out_dir = dir.path().join(format!("out{}", args.join("")));
        let out = Command::new(dep8_bin())
            .args([
                "run",
                src.to_str().unwrap(),
                "-o",
                out_dir.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .expect("run dep8");
        (read(out_dir.join("summary")), out.status.code(), out_dir)
    };
    let (text, code, _) = summary(&["--needs-internet=run"]);
    assert!(
        text.contains("online               FAIL non-zero exit status 1"),
        "{text}"
    );
    assert_eq!(code, Some(4));
    let (text, code, _) = summary(&["--needs-internet=try"]);
    assert!(
        text.contains("online               SKIP Failed, but test has needs-internet and that's not guaranteed"),
        "{text}"
    );
    assert_eq!(code, Some(2));
    let (text, code, out_dir) = summary(&["--needs-internet=skip", "-u", "nobody"]);
    assert!(
        text.contains("online               SKIP Test restriction \"needs-internet\" requires testbed capability \"has_internet\""),
        "{text}"
    );
    assert!(
        !out_dir.join("online-stderr").exists(),
        "a skipped test does not run"
    );
    assert_eq!(read(out_dir.join("who-stdout")), "nobody\n");
    assert_eq!(code, Some(2));
}

/// `--override-control FILE` replaces the tree's debian/tests/control.
#[test]
fn override_control_replaces_the_trees_tests() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    std::fs::write(
        &control,
        "Test-Command: echo overridden\nDepends:\nFeatures: test-name=instead\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = run(
        "hello",
        &out_dir,
        &["--override-control", control.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    assert_eq!(read(out_dir.join("summary")), "instead              PASS\n");
    assert_eq!(read(out_dir.join("instead-stdout")), "overridden\n");
}
