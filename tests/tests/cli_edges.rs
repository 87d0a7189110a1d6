//! `dep8 run` and the printing commands given bad input, on the null
//! testbed: every option with edge values (negative, zero, NaN, huge, empty,
//! non-UTF-8), closed stdout and stderr, an output dir on a full
//! filesystem, unreadable source files, and package faults that used to be
//! blamed on the testbed. Each case asserts the message, the exit status
//! (autopkgtest's: 20 usage, 12 erroneous package, 16 testbed failure) and
//! that dep8 did not panic.

use dep8_tests::e2e::{dep8_bin, result_words, source_tree, write};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tempfile::TempDir;

/// Two passing tests that need nothing installed.
const TWO_TESTS: &str = "Test-Command: echo one\nFeatures: test-name=one\nDepends:\n\n\
                         Test-Command: echo two\nFeatures: test-name=two\nDepends:\n";

/// A temp dir holding the source tree `pkg` with `control`.
fn package(control: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(dir.path(), "pkg", control);
    (dir, tree)
}

/// Runs dep8 with `args`, stdin from /dev/null.
fn dep8<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(dep8_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running dep8")
}

/// `dep8 run -B -o OUT TREE`.
fn run_into(out: &Path, tree: &Path) -> Output {
    dep8(&[
        OsStr::new("run"),
        OsStr::new("-B"),
        OsStr::new("-o"),
        out.as_os_str(),
        tree.as_os_str(),
    ])
}

/// The exit status is `code`, stderr says `says`, and nothing panicked.
fn assert_exit(out: &Output, code: i32, says: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked at"),
        "{what}: dep8 panicked:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(code), "{what}: stderr:\n{stderr}");
    assert!(
        stderr.contains(says),
        "{what}: stderr should say {says:?}:\n{stderr}"
    );
}

/// `name -> result word` of a summary file.
fn words(path: &Path) -> BTreeMap<String, String> {
    result_words(&read(path))
}

fn both_pass() -> BTreeMap<String, String> {
    [("one", "PASS"), ("two", "PASS")]
        .map(|(n, w)| (n.to_string(), w.to_string()))
        .into()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const TIMEOUTS: [&str; 6] = [
    "--timeout-short",
    "--timeout-copy",
    "--timeout-install",
    "--timeout-test",
    "--timeout-build",
    "--timeout-reboot",
];

#[test]
fn numeric_options_refuse_edge_values_with_a_usage_error() {
    let (_dir, tree) = package(TWO_TESTS);
    let tree = tree.to_str().unwrap();
    for option in TIMEOUTS {
        for value in [
            "-1",
            "NaN",
            "1e300",
            "",
            "1.5",
            "4294967296",
            "99999999999999999999",
        ] {
            let out = dep8(&["run", "-B", option, value, tree]);
            assert_exit(
                &out,
                20,
                &format!("invalid value '{value}' for '{option}"),
                option,
            );
        }
    }
    for value in ["-1", "-0.5", "NaN", "inf", "-inf", "1e300", "50000", ""] {
        let out = dep8(&["run", "-B", "--timeout-factor", value, tree]);
        assert_exit(
            &out,
            20,
            &format!("invalid value '{value}' for '--timeout-factor"),
            value,
        );
    }
}

#[test]
fn zero_and_the_largest_time_limits_run_the_tests() {
    let (dir, tree) = package(TWO_TESTS);
    let tree = tree.to_str().unwrap();
    // 0 is no limit, as with autopkgtest (alarm(0)).
    let mut args = vec!["run".to_string(), "--timeout-factor".into(), "0".into()];
    for option in TIMEOUTS {
        args.extend([option.to_string(), "0".into()]);
    }
    let out_dir = dir.path().join("zero");
    args.extend(["-o".into(), out_dir.to_str().unwrap().into(), tree.into()]);
    assert_exit(&dep8(&args), 0, "", "all limits 0");
    assert_eq!(words(&out_dir.join("summary")), both_pass());

    let out_dir = dir.path().join("largest");
    let out = dep8(&[
        "run",
        "--timeout-test",
        "4294967295",
        "--timeout-factor",
        "42949",
        "-o",
        out_dir.to_str().unwrap(),
        tree,
    ]);
    assert_exit(&out, 0, "", "largest limits");
}

#[test]
fn empty_and_malformed_values_are_usage_errors() {
    let (_dir, tree) = package(TWO_TESTS);
    let tree = tree.to_str().unwrap();
    for (args, says) in [
        (vec!["-o", ""], "a value is required for '--output-dir"),
        (
            vec!["--summary-file", ""],
            "a value is required for '--summary-file",
        ),
        (vec!["-l", ""], "a value is required for '--log-file"),
        (vec!["--html", ""], "a value is required for '--html"),
        (
            vec!["--override-control", ""],
            "a value is required for '--override-control",
        ),
        (vec!["-u", ""], "a value is required for '--user"),
        (
            vec!["--needs-internet", ""],
            "a value is required for '--needs-internet",
        ),
        (vec!["--env", ""], "\"\" is not VAR=VALUE"),
        (vec!["--env", "=x"], "\"\" is not a variable name"),
        (vec!["--env", "A B=x"], "\"A B\" is not a variable name"),
        (vec!["--env", "$(touch x)=1"], "is not a variable name"),
        (vec!["--copy", ""], "expected HOSTPATH:/TESTBED/PATH"),
        (vec!["--copy", ":"], "expected HOSTPATH:/TESTBED/PATH"),
        (vec!["--testbed", ""], "unknown backend \"\""),
        (
            vec!["-l", "/nonexistent/dir/log"],
            "/nonexistent/dir/log: No such file",
        ),
    ] {
        let mut argv = vec!["run"];
        argv.extend(&args);
        argv.push(tree);
        assert_exit(&dep8(&argv), 20, says, &args.join(" "));
    }
    assert_exit(
        &dep8(&["run", "-B", ""]),
        20,
        ": no such file or directory",
        "SRC ''",
    );
    assert_exit(
        &dep8(&["run", "-B", tree, "--", ""]),
        20,
        "unknown backend \"\"",
        "backend ''",
    );
}

/// As autopkgtest, which refuses them before it starts: a `--copy` of a
/// host path that does not exist was a testbed failure (16, on a testbed
/// that takes copies), an `--override-control` that cannot be read a
/// package without tests (8).
#[test]
fn files_named_by_options_that_cannot_be_read_are_usage_errors() {
    let (dir, tree) = package(TWO_TESTS);
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "--on-host-as-autopkgtest",
                "--copy",
                &format!("{missing}:/tmp/x"),
            ],
            format!("--copy host path {missing} does not exist"),
        ),
        (
            vec!["--override-control", missing],
            format!("cannot read {missing}: No such file"),
        ),
        (
            vec!["--override-control", tree.to_str().unwrap()],
            format!("cannot read {}: Is a directory", tree.display()),
        ),
    ] {
        let out_dir = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out_dir);
        let mut argv = vec!["run", "-o", out_dir.to_str().unwrap()];
        argv.extend(&args);
        argv.extend([tree.to_str().unwrap(), "--", "null"]);
        assert_exit(&dep8(&argv), 20, &says, &args.join(" "));
    }
}

#[test]
fn non_utf8_paths() {
    let (dir, tree) = package(TWO_TESTS);
    let odd = |name: &[u8]| dir.path().join(OsStr::from_bytes(name));
    let (out_dir, summary, log) = (odd(b"out-\xff"), odd(b"summary-\xfe"), odd(b"log-\xfd"));
    let args: Vec<OsString> = vec![
        "run".into(),
        "-o".into(),
        out_dir.clone().into(),
        "--summary-file".into(),
        summary.clone().into(),
        "-l".into(),
        log.clone().into(),
        tree.clone().into(),
    ];
    assert_exit(&dep8(&args), 0, "", "non-UTF-8 -o, --summary-file, -l");
    assert_eq!(words(&summary), both_pass());
    assert!(read(&log).contains("@@@@@@@@@@@@@@@@@@@@ summary"));
    // Artifacts and per-test files land in the dir as named.
    assert!(out_dir.join("one-stdout").exists());

    // SRC, backend words and --env values are text.
    for args in [
        vec![OsString::from("run"), odd(b"src-\xff").into()],
        vec![
            "run".into(),
            tree.clone().into(),
            "--".into(),
            OsStr::from_bytes(b"null\xff").into(),
        ],
        vec![
            "run".into(),
            "--env".into(),
            OsStr::from_bytes(b"A=\xff").into(),
            tree.clone().into(),
        ],
    ] {
        assert_exit(&dep8(&args), 20, "invalid UTF-8", "non-UTF-8 argument");
    }
}

/// A pipe whose reading end is already closed: writing to it fails with
/// EPIPE, whatever the timing.
fn closed_pipe() -> Stdio {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn closed_stdout_loses_only_the_echo() {
    let (dir, tree) = package(TWO_TESTS);
    let out_dir = dir.path().join("out");
    let out = Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(&out_dir)
        .arg(&tree)
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .output()
        .expect("running dep8");
    assert_exit(&out, 0, "@@@@@@@@@@@@@@@@@@@@ summary", "run | closed");
    assert_eq!(words(&out_dir.join("summary")), both_pass());
    assert!(read(&out_dir.join("results.json")).contains("\"two\""));

    let tree = tree.to_str().unwrap();
    for args in [
        vec!["explain", tree],
        vec!["check", tree],
        vec!["check", "--json", tree],
        vec!["backends"],
        vec!["restrictions"],
        vec!["restrictions", "--markdown"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
    ] {
        let out = Command::new(dep8_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .output()
            .expect("running dep8");
        // Quiet, like other Unix tools whose reader went away.
        assert_exit(&out, 0, "", &args.join(" "));
        assert_eq!(out.stderr, b"", "{}", args.join(" "));
    }
}

#[test]
fn full_stdout_is_an_error_not_a_panic() {
    let full = std::fs::File::create("/dev/full").expect("/dev/full");
    let out = Command::new(dep8_bin())
        .arg("man")
        .stdout(full)
        .output()
        .expect("running dep8");
    assert_exit(
        &out,
        20,
        "writing to stdout: No space left on device",
        "man > /dev/full",
    );
}

#[test]
fn closed_stderr_loses_nothing_else() {
    let (dir, tree) = package(TWO_TESTS);
    let out_dir = dir.path().join("out");
    let out = Command::new(dep8_bin())
        .args(["run", "-B", "-dd", "-o"])
        .arg(&out_dir)
        .arg(&tree)
        .stdin(Stdio::null())
        .stderr(closed_pipe())
        .output()
        .expect("running dep8");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        result_words(&String::from_utf8_lossy(&out.stdout)),
        both_pass()
    );
    assert!(read(&out_dir.join("log")).contains("@@@@@@@@@@@@@@@@@@@@ summary"));
    // An error with nowhere to go still gives its status.
    let out = Command::new(dep8_bin())
        .args(["run", "--timeout-test", "-1", "."])
        .stderr(closed_pipe())
        .output()
        .expect("running dep8");
    assert_eq!(out.status.code(), Some(20));
    let out = Command::new(dep8_bin())
        .args(["run", "/nonexistent"])
        .stderr(closed_pipe())
        .output()
        .expect("running dep8");
    assert_eq!(out.status.code(), Some(20));
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "dep8-full"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn output_dir_on_a_full_filesystem() {
    let Some(fs) = Tmpfs::mount("64k") else {
        return;
    };
    let (_dir, tree) = package(
        "Test-Command: head -c 300000 /dev/zero | tr '\\0' x\nFeatures: test-name=big\nDepends:\n\n\
         Test-Command: echo small\nFeatures: test-name=small\nDepends:\n",
    );
    let out = Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(fs.0.path().join("out"))
        .arg(&tree)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("running dep8");
    // As autopkgtest 5.49 when it cannot copy a test's output up: a
    // testbed failure (debci retries 16), with the file named.
    assert_exit(
        &out,
        16,
        "big-stdout: No space left on device",
        "full output dir",
    );
    assert_no_temp_files(&fs.0.path().join("out"));

    // Nothing but the output dir's first bytes fit: the summary, the log
    // and results.json cannot be written. Exit 20, as autopkgtest's
    // unexpected errors, with what could not be written named.
    let (_dir, tree) = package("Test-Command: true\nDepends:\n");
    let fs = Tmpfs::mount("64k").expect("tmpfs");
    let out_dir = fs.0.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    fill(&fs.0.path().join("filler"));
    let out = Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(&out_dir)
        .arg(&tree)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("running dep8");
    let summary = out_dir.join("summary");
    let says = format!(
        "cannot write {}: No space left on device",
        summary.display()
    );
    assert_exit(&out, 20, &says, "no space for the summary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["log", "results.json"] {
        let path = out_dir.join(name);
        assert!(
            stderr.contains(&format!("cannot write {}", path.display())),
            "{name} not named:\n{stderr}"
        );
    }
    assert_no_temp_files(&out_dir);
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = [b'x'; 512];
    while file.write_all(&block).is_ok() {}
    while file.write_all(b"x").is_ok() {}
}

/// No `*.tmp` (results.tmp, junit.tmp) is left in `dir`.
fn assert_no_temp_files(dir: &Path) {
    let temps: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(temps.is_empty(), "left behind: {temps:?}");
}

/// Runs `dep8 ARGS` as the user nobody (root can read anything).
fn dep8_as_nobody(args: &[&OsStr]) -> Option<Output> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching to nobody needs root");
        return None;
    }
    Some(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(dep8_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux)"),
    )
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn unreadable_source_files_are_the_package_s_fault() {
    let (dir, tree) = package("Tests: t1\nDepends:\n");
    write(&tree.join("debian/tests/t1"), "#!/bin/sh\necho t1\n");
    chmod(dir.path(), 0o755);
    chmod(&tree.join("debian/tests/t1"), 0o755);
    let outputs = dir.path().join("outputs");
    std::fs::create_dir(&outputs).unwrap();
    chmod(&outputs, 0o777);
    for (path, says) in [
        (
            "debian/tests/control",
            "control:0: cannot read: Permission denied",
        ),
        ("debian/tests/t1", "cannot read the source tree: "),
        ("debian/tests", "cannot read the source tree: "),
    ] {
        let target = tree.join(path);
        let mode = if target.is_dir() { 0o755 } else { 0o644 };
        chmod(&target, 0);
        let out_dir = outputs.join(path.replace('/', "-"));
        let args = [
            OsStr::new("run"),
            OsStr::new("-B"),
            OsStr::new("-o"),
            out_dir.as_os_str(),
            tree.as_os_str(),
        ];
        let out = dep8_as_nobody(&args);
        chmod(&target, if path.ends_with("t1") { 0o755 } else { mode });
        let Some(out) = out else { return };
        assert_exit(&out, 12, says, path);
        assert!(read(&out_dir.join("summary")).contains(path), "{path}");
    }
}

#[test]
fn package_faults_are_blamed_on_the_package() {
    // A quote in a test name reaches no shell unquoted: the test runs.
    let (dir, tree) = package("Test-Command: echo hi\nFeatures: test-name=it's\nDepends:\n");
    let out = run_into(&dir.path().join("out"), &tree);
    assert_exit(&out, 0, "", "test-name=it's");
    assert_eq!(words(&dir.path().join("out/summary"))["it's"], "PASS");
    assert_eq!(read(&dir.path().join("out/it's-stdout")), "hi\n");

    // A NUL byte: BROKEN with file, line and field (autopkgtest crashes).
    let (dir, tree) = package("Test-Command: echo a\0b\nDepends:\n");
    let out = run_into(&dir.path().join("out"), &tree);
    assert_exit(
        &out,
        12,
        "control:1: Test-command: contains a NUL byte",
        "NUL",
    );

    // A Tests-Directory that is a symlink out of the tree: badpkg, and the
    // script outside never runs (autopkgtest runs it).
    let (dir, tree) = package("Tests: t1\nTests-Directory: elsewhere\nDepends:\n");
    let outside = dir.path().join("outside");
    let ran = dir.path().join("ran");
    write(
        &outside.join("t1"),
        &format!("#!/bin/sh\ntouch {}\n", ran.display()),
    );
    chmod(&outside.join("t1"), 0o755);
    std::os::unix::fs::symlink(&outside, tree.join("elsewhere")).unwrap();
    let out = run_into(&dir.path().join("out"), &tree);
    assert_exit(
        &out,
        12,
        "elsewhere/t1 leads out of the source tree",
        "symlink",
    );
    assert!(!ran.exists(), "the script outside the tree ran");
    let summary = read(&dir.path().join("out/summary"));
    assert!(summary.contains("FAIL badpkg"), "{summary}");
    assert_eq!(result_words(&summary)["t1"], "FAIL");

    // A test file that is a symlink out of the tree, the same.
    let (dir, tree) = package("Tests: t1\nDepends:\n");
    std::os::unix::fs::symlink("/bin/true", tree.join("debian/tests/t1")).unwrap();
    let out = run_into(&dir.path().join("out"), &tree);
    assert_exit(
        &out,
        12,
        "debian/tests/t1 leads out of the source tree",
        "t1 link",
    );
}

#[test]
fn a_10_mb_test_command_runs_and_is_abridged_in_the_log() {
    let big = format!("echo done; true {}\n", "x".repeat(10 << 20));
    let (dir, tree) = package(&format!("Test-Command: {big}Depends:\n"));
    let out_dir = dir.path().join("out");
    let out = run_into(&out_dir, &tree);
    assert_exit(&out, 0, "bytes in all)", "10 MB Test-Command");
    assert_eq!(read(&out_dir.join("command1-stdout")), "done\n");
    let log = std::fs::metadata(out_dir.join("log")).unwrap().len();
    assert!(log < 64 * 1024, "the log holds {log} bytes");
}

#[test]
fn explain_takes_the_backend_s_arguments() {
    let (_dir, tree) = package(
        "Test-Command: true\nFeatures: test-name=base\nRestrictions: needs-baseimage\nDepends:\n\n\
         Test-Command: true\nFeatures: test-name=rb\nRestrictions: needs-reboot\nDepends:\n",
    );
    let tree = tree.to_str().unwrap();
    let explain = |testbed: &[&str]| {
        let mut args = vec!["explain", tree, "--"];
        args.extend(testbed);
        let out = dep8(&args);
        assert_exit(&out, 0, "", &testbed.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let line = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .split_once(' ')
            .unwrap()
            .1
            .trim()
            .to_string()
    };
    let skip = |cap: &str| {
        format!("SKIP Test restriction \"needs-{cap}\" requires testbed capability \"{cap}\"")
    };
    let qemu = explain(&["qemu", "/var/cache/dep8-ci/qemu-bookworm.qcow2"]);
    assert_eq!(line(&qemu, "base"), skip("baseimage"));
    assert_eq!(line(&qemu, "rb"), "RUN");
    let qemu = explain(&[
        "qemu",
        "--baseimage",
        "/var/cache/dep8-ci/qemu-bookworm.qcow2",
    ]);
    assert_eq!(line(&qemu, "base"), "RUN");
    let ssh = explain(&["ssh", "-H", "testbed.invalid"]);
    assert_eq!(line(&ssh, "rb"), skip("reboot"));
    let ssh = explain(&["ssh", "-H", "testbed.invalid", "--reboot"]);
    assert_eq!(line(&ssh, "rb"), "RUN");
    let unshare = explain(&["unshare", "--rootfs", "/"]);
    assert_eq!(line(&unshare, "base"), skip("baseimage"));
    let unshare = explain(&["unshare", "--rootfs", "/", "--baseimage"]);
    assert_eq!(line(&unshare, "base"), "RUN");

    // run decides as explain does: the same words in the summary.
    let null = explain(&["null"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dep8(&[
        "run",
        "-B",
        "-o",
        dir.path().join("o").to_str().unwrap(),
        tree,
    ]);
    assert_exit(&out, 8, "", "run on null");
    let summary = read(&dir.path().join("o/summary"));
    for name in ["base", "rb"] {
        assert_eq!(line(&summary, name), line(&null, name), "{name}");
    }
}

/// `explain` ends as `run` would: 16 for a testbed that cannot be opened
/// (a missing tarball), 20 for arguments it refuses, 12 for a BROKEN test.
#[test]
fn explain_exits_as_run_would() {
    let (dir, tree) = package(TWO_TESTS);
    for (testbed, code, says) in [
        (
            &["unshare", "--tarball", "/nonexistent.tar"][..],
            16,
            "/nonexistent.tar: no such file",
        ),
        (&["unshare", "--frobnicate"], 20, "--frobnicate"),
        (&["ssh", "-H", "h", "-P", "secret"], 20, "-P/--password"),
        (&["ssh"], 20, "no host"),
    ] {
        let what = testbed.join(" ");
        let mut args = vec![OsStr::new("explain"), tree.as_os_str(), OsStr::new("--")];
        args.extend(testbed.iter().map(OsStr::new));
        assert_exit(&dep8(&args), code, says, &format!("explain -- {what}"));
        let out = dir.path().join(format!("run-{code}-{}", testbed.len()));
        let mut args = vec![
            OsStr::new("run"),
            OsStr::new("-B"),
            OsStr::new("-o"),
            out.as_os_str(),
            tree.as_os_str(),
            OsStr::new("--"),
        ];
        args.extend(testbed.iter().map(OsStr::new));
        assert_exit(&dep8(&args), code, says, &format!("run -- {what}"));
    }
    // No tarball given nor cached: the testbed's name is said once.
    let empty_cache = tempfile::tempdir().unwrap();
    for (command, says) in [
        (&["explain"][..], "dep8: error: unshare: no --tarball"),
        (&["run", "-B"][..], "ERROR: unshare: no --tarball"),
    ] {
        let out = Command::new(dep8_bin())
            .env("XDG_CACHE_HOME", empty_cache.path())
            .args(command)
            .arg(&tree)
            .args(["--", "unshare"])
            .output()
            .expect("running dep8");
        let what = format!("{} -- unshare, no tarball", command[0]);
        assert_exit(&out, 20, says, &what);
    }
    let (_dir, tree) = package("Test-Command: true\nDepends: bad (\n");
    let out = dep8(&[OsStr::new("explain"), tree.as_os_str()]);
    assert_exit(&out, 12, "", "explain, a BROKEN test");

    // A debian/control that cannot be parsed is the package's fault, for
    // explain and check as for the run.
    let (dir, tree) = package("Test-Command: true\nDepends:\n");
    write(&tree.join("debian/control"), "Source: pkg\n\nPackage pkg\n");
    let says = "debian/control";
    for command in ["explain", "check"] {
        let out = dep8(&[OsStr::new(command), tree.as_os_str()]);
        assert_exit(&out, 12, says, &format!("{command}, a bad debian/control"));
    }
    assert_exit(
        &run_into(&dir.path().join("out"), &tree),
        12,
        "",
        "run, a bad debian/control",
    );
}

#[test]
fn a_long_command_and_a_quoted_name_on_unshare() {
    let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    let big = format!("echo done; true {}\n", "x".repeat(1 << 20));
    let (dir, tree) = package(&format!(
        "Test-Command: {big}Depends:\n\nTest-Command: echo hi\nFeatures: test-name=it's\nDepends:\n"
    ));
    let out_dir = dir.path().join("out");
    let out = dep8(&[
        OsStr::new("run"),
        OsStr::new("-B"),
        OsStr::new("-o"),
        out_dir.as_os_str(),
        tree.as_os_str(),
        OsStr::new("--"),
        OsStr::new("unshare"),
        OsStr::new("--tarball"),
        OsStr::new(&tarball),
    ]);
    assert_exit(&out, 0, "bytes in all)", "unshare");
    assert_eq!(read(&out_dir.join("command1-stdout")), "done\n");
    assert_eq!(read(&out_dir.join("it's-stdout")), "hi\n");
}
