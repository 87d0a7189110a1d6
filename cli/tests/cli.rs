//! The command line's own contract: usage errors, exit statuses, listings.

use std::process::{Command, Output};

fn dep8(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dep8"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run dep8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_backend_lists_the_known_ones() {
    let out = dep8(&["run", "examples/hello", "--", "frobnicator"]);
    assert_eq!(out.status.code(), Some(20));
    assert!(
        stderr(&out).contains("unknown backend \"frobnicator\"; known backends: null, ")
            && stderr(&out)
                .contains("no autopkgtest virt server autopkgtest-virt-frobnicator in PATH"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_source_is_a_usage_error() {
    let out = dep8(&["run", "examples/does-not-exist"]);
    assert_eq!(out.status.code(), Some(20));
    assert!(stderr(&out).contains("examples/does-not-exist: no such file or directory"));
}

#[test]
fn bad_options_exit_20_like_autopkgtest() {
    assert_eq!(dep8(&["run", "--no-such-option"]).status.code(), Some(20));
    assert_eq!(dep8(&["--help"]).status.code(), Some(0));
}

#[test]
fn backend_arguments_are_checked() {
    let out = dep8(&["run", "examples/hello", "--", "null", "extra"]);
    assert_eq!(out.status.code(), Some(20));
    assert!(
        stderr(&out).contains("unexpected argument 'extra'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn non_empty_output_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("leftover"), "x").unwrap();
    let out = dep8(&["run", "examples/hello", "-o", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(20));
    assert!(stderr(&out).contains("is not empty"));
}

#[test]
fn source_without_tests() {
    let dir = tempfile::tempdir().unwrap();
    // As autopkgtest: a directory without debian/control is no source.
    let out = dep8(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(20));
    assert!(stderr(&out).contains("is not a valid test package"));
    std::fs::create_dir(dir.path().join("debian")).unwrap();
    std::fs::write(dir.path().join("debian/control"), "Source: x\n").unwrap();
    let out = dep8(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "*                    SKIP no tests in this package\n"
    );
    let out = dep8(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(20));
    assert!(stderr(&out).contains("no debian/tests/control"));
}

#[test]
fn restrictions_reference_is_current() {
    let out = dep8(&["restrictions", "--markdown"]);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/restrictions.md"
    ))
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        committed,
        "docs/restrictions.md is stale: run `dep8 restrictions --markdown > docs/restrictions.md`"
    );
}

#[test]
fn backends_and_man_page() {
    let out = dep8(&["backends"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("isolation-machine"));
    let out = dep8(&["man"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH dep8"));
    let out = dep8(&["completions", "bash"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("_dep8"));
}

#[test]
fn setup_commands_blame_the_package_with_100_and_the_testbed_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    for (command, code, summary) in [
        (
            "exit 100",
            12,
            // As autopkgtest: nothing is blamed yet when the testbed is set up.
            "blame: \nbadpkg: testbed setup commands failed with status 100\n\
             erroneous package: testbed setup commands failed with status 100",
        ),
        (
            "exit 3",
            16,
            "testbed failure: testbed setup commands failed with status 3",
        ),
    ] {
        let out_dir = dir.path().join(code.to_string());
        let out = dep8(&[
            "run",
            "-o",
            out_dir.to_str().unwrap(),
            "examples/hello",
            "--setup-commands",
            command,
        ]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        let written = std::fs::read_to_string(out_dir.join("summary")).unwrap();
        assert_eq!(written.trim(), summary);
    }
}

#[test]
fn compare_runs_every_testbed_and_prints_a_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dep8(&[
        "compare",
        "examples/hello",
        "--on",
        "null",
        "--on",
        "null",
        "-o",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tests = doc["tests"].as_array().unwrap();
    let names: Vec<&str> = tests.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["greets", "command1"]);
    assert!(tests.iter().all(|t| t["differs"] == false));
    assert_eq!(tests[0]["results"], serde_json::json!(["PASS", "PASS"]));
    assert!(dir.path().join("1-null/summary").exists());
    assert!(dir.path().join("2-null/summary").exists());
    assert!(dir.path().join("compare.html").exists());
}

/// The worked example of a backend as a program (docs/backends.md) is
/// certified by the conformance suite through the external backend.
#[test]
fn example_shell_backend_passes_conformance() {
    let out = dep8(&[
        "conformance",
        "--",
        "external",
        "examples/backend-shell/virt-hostdir",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("0 failed"), "{report}");
}
