//! Helpers for the end-to-end tests that drive the `dep8` binary and
//! Debian's autopkgtest on the example packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's top directory (where `examples/` is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository dir")
        .to_path_buf()
}

/// The dep8 binary next to the running test's executable (built by `cargo
/// test --workspace`, which builds the cli package's binary for its own
/// tests).
pub fn dep8_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("dep8");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p dep8` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A program the test needs from the host, found in PATH; `None` (with the
/// reason printed) when it is missing on a developer machine, a failure
/// under CI, where `.ci/install-deps` installs it from `package`.
pub fn required_program(program: &str, package: &str) -> Option<PathBuf> {
    match which::which(program) {
        Ok(path) => Some(path),
        Err(_) if std::env::var_os("DEP8_CI").is_some() => {
            panic!("{program} is not installed under CI: .ci/install-deps should install {package}")
        }
        Err(_) => {
            eprintln!("SKIP: {program} is not installed (apt-get install {package})");
            None
        }
    }
}

/// A file the test needs from the host (firmware, data); `false` (with the
/// reason printed) when it is missing on a developer machine, a failure
/// under CI, where `.ci/install-deps` installs it from `package`.
pub fn required_file(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        true
    } else if std::env::var_os("DEP8_CI").is_some() {
        panic!("{path} is missing under CI: .ci/install-deps should install {package}")
    } else {
        eprintln!("SKIP: {path} is missing (apt-get install {package})");
        false
    }
}

/// The rootfs tarball (`DEP8_TEST_ROOTFS`) for tests that open unshare
/// testbeds as root; `None` with the reason printed otherwise.
pub fn unshare_rootfs_as_root() -> Option<String> {
    let tarball = crate::required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball")?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the unshare backend needs root");
        return None;
    }
    Some(tarball)
}

/// Debian's autopkgtest, when the comparison with it can run here (as
/// root: its testbeds behave differently otherwise); `None` with the
/// reason printed, a failure under CI when it is not installed.
pub fn autopkgtest_as_root() -> Option<PathBuf> {
    let autopkgtest = required_program("autopkgtest", "autopkgtest")?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipped: compared as root only (autopkgtest's testbeds behave differently otherwise)"
        );
        return None;
    }
    Some(autopkgtest)
}

/// `name -> result word` from a summary file; `*` lines and detail lines are
/// left out.
pub fn result_words(summary: &str) -> BTreeMap<String, String> {
    summary
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(' ')?;
            let word = rest.split_whitespace().next()?;
            let known = ["PASS", "FAIL", "SKIP", "FLAKY", "BROKEN"];
            (name != "*" && known.contains(&word)).then(|| (name.to_string(), word.to_string()))
        })
        .collect()
}

/// Runs `program args` from the repository's top directory; returns the
/// result words of the summary it wrote in `out` and its exit status.
pub fn summary_of(
    program: &Path,
    args: &[&str],
    out: &Path,
) -> (BTreeMap<String, String>, Option<i32>) {
    let status = Command::new(program)
        .current_dir(repo())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    (result_words(&summary), status.code())
}

/// [`summary_of`] Debian's autopkgtest, run once more when its testbed
/// failed before any test had a result (exit 16, no summary): the
/// reference tool's own fixed time limits can cut its open on a loaded
/// host (autopkgtest-virt-qemu gives its first command in the guest 5 s),
/// which says nothing about dep8. Said on stderr when it happens.
fn reference_summary(args: &[&str], out: &Path) -> (BTreeMap<String, String>, Option<i32>) {
    let autopkgtest = Path::new("/usr/bin/autopkgtest");
    let (summary, code) = summary_of(autopkgtest, args, out);
    if !summary.is_empty() || code != Some(16) {
        return (summary, code);
    }
    eprintln!(
        "autopkgtest's testbed failed before any result (exit 16); running it once more. \
         The end of its log:\n{}",
        log_tail(out, 10)
    );
    let _ = std::fs::remove_dir_all(out);
    summary_of(autopkgtest, args, out)
}

/// `--timeout-test` for the example packages: long enough for any quick
/// test on a loaded CI machine (a 3 s limit cut quick tests there), short
/// enough to cut examples/outcomes' `sleeps-too-long` (60 s).
pub const EXAMPLE_TIMEOUT: &str = "--timeout-test=10";

/// Runs `examples/EXAMPLE` with Debian's autopkgtest (`-B`) and with dep8 on
/// the testbed `testbed` (`BACKEND ARGS...`, the same words for both) and
/// asserts that every test gets the same result word and that both exit
/// with the same status.
pub fn assert_same_as_autopkgtest(example: &str, testbed: &[&str]) {
    assert_same_results(
        &format!("examples/{example}"),
        &[EXAMPLE_TIMEOUT],
        testbed,
        testbed,
    );
}

/// Runs the source package `src` (relative to the repository, or absolute)
/// with `autopkgtest -B OPTIONS -o OUT SRC -- THEIR_TESTBED` and `dep8 run
/// -B OPTIONS -o OUT SRC -- OUR_TESTBED` (the tests, not a build), both at once, and asserts that every
/// test gets the same result word and that both exit with the same status.
pub fn assert_same_results(
    src: &str,
    options: &[&str],
    their_testbed: &[&str],
    our_testbed: &[&str],
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a_out, d_out) = (dir.path().join("autopkgtest"), dir.path().join("dep8"));
    let a_dir = a_out.to_str().expect("utf-8 path");
    let d_dir = d_out.to_str().expect("utf-8 path");
    let theirs_args = [&["-B"], options, &["-o", a_dir, src, "--"], their_testbed].concat();
    let ours_args = [
        &["run", "-B"],
        options,
        &["-o", d_dir, src, "--"],
        our_testbed,
    ]
    .concat();
    let dep8 = dep8_bin();
    let ((theirs, their_code), (ours, our_code)) = std::thread::scope(|s| {
        let theirs = s.spawn(|| reference_summary(&theirs_args, &a_out));
        let ours = summary_of(&dep8, &ours_args, &d_out);
        (theirs.join().expect("autopkgtest thread"), ours)
    });
    let on = our_testbed.join(" ");
    let summaries = || {
        let read = |out: &Path| std::fs::read_to_string(out.join("summary")).unwrap_or_default();
        format!(
            "\n--- autopkgtest's summary:\n{}--- dep8's summary:\n{}\
             --- the end of autopkgtest's log:\n{}\n--- the end of dep8's log:\n{}",
            read(&a_out),
            read(&d_out),
            log_tail(&a_out, 20),
            log_tail(&d_out, 20)
        )
    };
    assert!(
        !theirs.is_empty(),
        "autopkgtest produced no summary for {src} on {on} (exit {their_code:?}); \
         the end of its log:\n{}",
        log_tail(&a_out, 40)
    );
    assert_eq!(
        ours,
        theirs,
        "result words differ on {src} on {on}{}",
        summaries()
    );
    assert_eq!(
        our_code,
        their_code,
        "exit status differs on {src} on {on}{}",
        summaries()
    );
}

/// The last `lines` lines of the log a run wrote in `out`, or why there
/// is none.
pub fn log_tail(out: &Path, lines: usize) -> String {
    match std::fs::read_to_string(out.join("log")) {
        Ok(log) => {
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log in {}: {e})", out.display()),
    }
}

/// Runs `program args` in `dir`; returns its stdout, panics with its
/// output on failure.
pub fn check(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed in {}:\n{}{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `text` to `path`, creating its parent dirs.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent dir")).expect("mkdir");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A source tree `dir/NAME` of the native source package `NAME` whose
/// debian/tests/control is `control`.
pub fn source_tree(dir: &Path, name: &str, control: &str) -> PathBuf {
    let tree = dir.join(name);
    write(
        &tree.join("debian/control"),
        &format!(
            "Source: {name}\nMaintainer: dep8 <dep8@example.org>\n\n\
             Package: {name}\nArchitecture: all\nDescription: dep8 test fixture\n fixture\n"
        ),
    );
    write(
        &tree.join("debian/changelog"),
        &format!(
            "{name} (1.0) unstable; urgency=medium\n\n  * Fixture.\n\n \
             -- dep8 <dep8@example.org>  Tue, 25 Nov 2025 12:00:00 +0000\n"
        ),
    );
    write(&tree.join("debian/source/format"), "3.0 (native)\n");
    write(&tree.join("debian/tests/control"), control);
    tree
}

/// Runs examples/nested on `testbed` (which offers a base image) and
/// checks that its nested testbed booted from `base` (`PATH (KIND)`, as
/// the example prints it) and answered.
pub fn assert_nested_example_passes(testbed: &[&str], base: &str) {
    let run = Dep8Run::new("examples/nested", testbed);
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "nested-testbed       PASS\n");
    let stdout = run.read("nested-testbed-stdout");
    assert!(
        stdout.contains("nested testbed says 12.")
            && stdout.contains(&format!("booted from {base} and answered")),
        "{stdout}"
    );
}

/// A finished `dep8 run -o DIR SRC -- TESTBED...`.
pub struct Dep8Run {
    pub status: Option<i32>,
    pub stderr: String,
    dir: tempfile::TempDir,
}

impl Dep8Run {
    /// Asserts the outputs of examples/reboot: all tests pass, one
    /// rebooting twice through `/tmp/autopkgtest-reboot`, the others once
    /// by themselves after `/tmp/autopkgtest-reboot-prepare` (what they
    /// wrote after the prepare, their "rebooting now" and reboot's
    /// complaints, is dropped, as autopkgtest does), one of them with its
    /// output sent elsewhere around the call.
    pub fn assert_reboot_example_passed(&self) {
        assert_eq!(
            self.read("summary"),
            "reboots-twice        PASS\nreboots-itself       PASS\nreboots-quietly      PASS\n"
        );
        assert_eq!(
            self.read("reboots-twice-stdout"),
            "first run\nafter reboot one\nafter reboot two\nthree boots\n"
        );
        assert_eq!(
            self.read("reboots-itself-stdout"),
            "before the reboot\nafter rebooting myself\n"
        );
        assert_eq!(
            self.read("reboots-quietly-stdout"),
            "before the quiet reboot\nafter the quiet reboot\n"
        );
    }

    /// Seconds from the first log line that contains `first` to the
    /// first one after it that contains `then` (by the log's clock, to
    /// the second).
    pub fn seconds_between(&self, first: &str, then: &str) -> u32 {
        let log = self.read("log");
        let time = |line: &str| -> u32 {
            let clock = line.split(['[', ']']).nth(1).expect("a log line's time");
            clock
                .split(':')
                .fold(0, |secs, part| secs * 60 + part.parse::<u32>().unwrap())
        };
        let mut lines = log.lines().skip_while(|l| !l.contains(first));
        let start = time(
            lines
                .next()
                .unwrap_or_else(|| panic!("no {first:?} in {log}")),
        );
        let end = time(
            lines
                .find(|l| l.contains(then))
                .unwrap_or_else(|| panic!("no {then:?} after {first:?} in {log}")),
        );
        (end + 86_400 - start) % 86_400
    }

    /// A `breaks-testbed` test, then one that proves the revert, on
    /// `testbed` with a `--setup-commands` that counts its runs: the
    /// revert returns to the kept setup (its mark is there, it ran once)
    /// with no trace of the break. Asserts what every backend that keeps
    /// the setup must show: both pass, and the log says the setup is kept
    /// and the testbed reverted.
    pub fn kept_setup(testbed: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = source_tree(
            dir.path(),
            "dep8-breaks",
            "Test-Command: echo broken > /etc/dep8-broken; rm -f /usr/bin/dpkg-query\n\
             Depends:\nFeatures: test-name=breaks\nRestrictions: needs-root, breaks-testbed\n\n\
             Test-Command: test ! -e /etc/dep8-broken && command -v dpkg-query \
             && test \"$(cat /root/setups)\" = once\n\
             Depends:\nFeatures: test-name=sees-the-setup\nRestrictions: needs-root\n",
        );
        let run = Self::with(
            &["-B", "--setup-commands=echo once >> /root/setups"],
            src.to_str().expect("UTF-8 path"),
            testbed,
        );
        run.assert_exit(0);
        assert_eq!(
            run.read("summary"),
            "breaks               PASS\nsees-the-setup       PASS\n"
        );
        let log = run.read("log");
        assert!(
            log.contains("the testbed keeps this setup: reverts return to it")
                && log.contains("reverting"),
            "{log}"
        );
        run
    }

    /// Runs dep8 from the repository's top directory, with `-B`: the
    /// tests as they are, no build.
    pub fn new(src: &str, testbed: &[&str]) -> Self {
        Self::with(&["-B"], src, testbed)
    }

    /// `dep8 run OPTIONS -o DIR SRC -- TESTBED...` from the repository's
    /// top directory.
    pub fn with(options: &[&str], src: &str, testbed: &[&str]) -> Self {
        Self::with_env(&[], options, src, testbed)
    }

    /// [`Self::with`], with `env` added to dep8's environment.
    pub fn with_env(env: &[(&str, &str)], options: &[&str], src: &str, testbed: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(dep8_bin())
            .current_dir(repo())
            .envs(env.iter().copied())
            .arg("run")
            .args(options)
            .arg("-o")
            .arg(dir.path().join("out"))
            .arg(src)
            .arg("--")
            .args(testbed)
            .output()
            .expect("running dep8");
        Dep8Run {
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            dir,
        }
    }

    /// The output dir.
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// A file of the output dir ("" if there is none).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.out().join(name)).unwrap_or_default()
    }

    /// Asserts that dep8 exited with `code`, showing the summary and log if not.
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.status,
            Some(code),
            "summary:\n{}\nstderr:\n{}",
            self.read("summary"),
            self.stderr
        );
    }
}

/// How many processes run whose command line starts with `marker` (a
/// test's `exec -a MARKER ...`).
pub fn marked_processes(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.starts_with(marker.as_bytes()))
        .count()
}

/// Starts `dep8` (stdout discarded), sends it SIGINT once `ready()` holds
/// (it panics if `ready` does not within 120 s: `what` says what it
/// waits for), asserts that dep8 died by that signal and returns its
/// stderr.
pub fn interrupt_when(mut dep8: Command, ready: impl Fn() -> bool, what: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let child = dep8
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running dep8");
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "never {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("dep8's status");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.signal(), Some(2), "{:?}: {stderr}", out.status);
    stderr
}

/// Waits up to 5 s while `alive()`: what dep8 SIGKILLed as it exited may
/// take a moment to be gone.
pub fn wait_for_the_killed(alive: impl Fn() -> bool) {
    let killed = std::time::Instant::now();
    while alive() && killed.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Each test's name and result word in `OUT/results.json`, in its order.
pub fn result_states(out: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let results: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    results["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .map(|t| {
            let word = |key: &str| t[key].as_str().expect(key).to_string();
            (word("name"), word("result"))
        })
        .collect()
}
