//! The fault-injection suite: on every backend that runs here, dep8 gets
//! SIGINT, SIGTERM and SIGKILL in each phase it can be held in (setup, copy,
//! test; revert where the testbed reverts; open on qemu), and testbeds die
//! under it. Afterwards nothing of the
//! run is left on the host (process, mount, schroot session, temp file),
//! after a SIGKILL once `dep8 clean` ran; the output dir names the test that
//! was interrupted and those not run, with `complete: false`; dep8 ends by
//! the signal it got, as autopkgtest does on SIGTERM, or with 16 when the
//! testbed died. Under load: 200 tests in one run, five runs at once on the
//! same image, and dep8's peak memory as the number of tests grows.

use dep8_conformance::e2e::unshare_rootfs_as_root;
use dep8_conformance::faults::{processes, FaultRun, Phase};
use dep8_conformance::required_resource;
use dep8_conformance::sshd::LoopbackSshd;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL];

/// One run hurt by `signal` in `phase`; returns what went wrong.
fn signal_case(testbed: &[String], phase: Phase, signal: Signal) -> Result<(), String> {
    let extra: &[&str] = match phase {
        Phase::Setup => &["--setup-commands", "sleep 600"],
        _ => &[],
    };
    let mut run = FaultRun::start(testbed, extra, Some(phase));
    run.reach(phase, Duration::from_secs(300));
    run.signal(signal);
    let status = run.wait(Duration::from_secs(60));
    let case = format!("{} {phase:?} {signal}", testbed.join(" "));
    let log = run.read("log");
    if status.signal() != Some(signal as i32) {
        return Err(format!("{case}: dep8 ended with {status}; log:\n{log}"));
    }
    if signal == Signal::SIGKILL {
        run.clean();
    }
    let left = run.leftovers(Duration::from_secs(10));
    if !left.is_empty() {
        return Err(format!("{case}: left behind:\n{}", left.join("\n")));
    }
    if signal == Signal::SIGKILL {
        // What it wrote before it died is all there is; it says it is partial.
        let partial = run.read("results.json").is_empty() || run.results()["complete"] == false;
        return partial
            .then_some(())
            .ok_or_else(|| format!("{case}: results.json claims to be complete"));
    }
    let results = run.results();
    let expected = match phase {
        Phase::Test | Phase::Revert => [
            ("first", "PASS"),
            ("sleeper", "INTERRUPTED"),
            ("never", "NOT_RUN"),
        ],
        _ => [
            ("first", "NOT_RUN"),
            ("sleeper", "NOT_RUN"),
            ("never", "NOT_RUN"),
        ],
    };
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(test, word)| run.result_of(test) != *word)
        .map(|(test, word)| format!("{test}: {} (expected {word})", run.result_of(test)))
        .collect();
    let junit = run.read("junit.xml");
    let note = format!("quitting: interrupted by signal {}", signal as i32);
    let problems = [
        (
            results["complete"] != false,
            "results.json: complete is not false",
        ),
        (!wrong.is_empty(), "results.json names the tests wrongly"),
        (
            !junit.contains("name=\"never\""),
            "junit.xml lacks the test not run",
        ),
        (
            !run.read("summary").contains(&note),
            "the summary lacks the interruption",
        ),
        (!log.contains("cleaning up"), "the log lacks the signal"),
    ];
    match problems.iter().find(|(bad, _)| *bad) {
        Some((_, what)) => Err(format!("{case}: {what}: {wrong:?}; log:\n{log}")),
        None => Ok(()),
    }
}

/// Every phase and signal on `testbed`, the three signals of a phase at
/// once; panics with every failure.
fn signal_matrix(testbed: &[String], phases: &[Phase]) {
    let started = Instant::now();
    let mut failures = Vec::new();
    for &phase in phases {
        std::thread::scope(|s| {
            let cases: Vec<_> = SIGNALS
                .iter()
                .map(|&signal| s.spawn(move || signal_case(testbed, phase, signal)))
                .collect();
            for case in cases {
                if let Err(e) = case.join().expect("case thread") {
                    failures.push(e);
                }
            }
        });
    }
    eprintln!(
        "{}: {} cases in {:.1?}",
        testbed[0],
        phases.len() * SIGNALS.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The testbed dies while `sleeper` runs (`kill_testbed` does it): exit 16,
/// the test named as interrupted by the testbed failure, nothing left.
fn testbed_dies(testbed: &[String], kill_testbed: impl FnOnce(&FaultRun)) {
    let mut run = FaultRun::start(testbed, &[], None);
    run.reach(Phase::Test, Duration::from_secs(300));
    kill_testbed(&run);
    let status = run.wait(Duration::from_secs(120));
    let log = run.read("log");
    assert_eq!(status.code(), Some(16), "log:\n{log}");
    assert!(
        run.read("summary").contains("testbed failure"),
        "log:\n{log}"
    );
    assert_eq!(run.results()["complete"], false);
    assert_eq!(run.result_of("first"), "PASS");
    assert_eq!(run.result_of("sleeper"), "INTERRUPTED", "log:\n{log}");
    assert_eq!(run.result_of("never"), "NOT_RUN");
    let left = run.leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// Processes of `run` whose command line starts with `program`.
fn run_processes(run: &FaultRun, program: &str) -> Vec<u32> {
    let tmp = run.tmp().to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|p| p.cmdline.starts_with(program))
        .filter(|p| p.environ.contains(&tmp) || p.cmdline.contains(&tmp))
        .map(|p| p.pid)
        .collect()
}

fn sigkill(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn null() {
    signal_matrix(&words(&["null"]), &[Phase::Setup, Phase::Copy, Phase::Test]);
}

#[test]
fn unshare() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    signal_matrix(
        &words(&["unshare", "--tarball", &tarball]),
        &[Phase::Setup, Phase::Copy, Phase::Test, Phase::Revert],
    );
}

#[test]
fn unshare_variants() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    for variant in [["--private-network"], ["--userns"]] {
        let mut testbed = words(&["unshare", "--tarball", &tarball]);
        testbed.extend(words(&variant));
        signal_matrix(&testbed, &[Phase::Test]);
    }
}

#[test]
fn unshare_holder_killed() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    testbed_dies(&words(&["unshare", "--tarball", &tarball]), |run| {
        let holders = run_processes(run, "unshare ");
        assert!(!holders.is_empty(), "no unshare holder found");
        holders.into_iter().for_each(sigkill);
    });
}

fn schroot_chroot() -> Option<String> {
    let chroot = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot")?;
    nix::unistd::geteuid().is_root().then_some(chroot)
}

#[test]
fn schroot() {
    let Some(chroot) = schroot_chroot() else {
        return;
    };
    signal_matrix(
        &words(&["schroot", &chroot]),
        // No Revert: a schroot session is no full system, breaks-testbed
        // tests are skipped there.
        &[Phase::Setup, Phase::Copy, Phase::Test],
    );
}

#[test]
fn ssh() {
    let Some(sshd) = LoopbackSshd::start() else {
        return;
    };
    let mut testbed = words(&["ssh"]);
    testbed.extend(sshd.backend_args());
    signal_matrix(&testbed, &[Phase::Setup, Phase::Copy, Phase::Test]);
}

#[test]
fn sshd_killed() {
    let Some(sshd) = LoopbackSshd::start() else {
        return;
    };
    let mut testbed = words(&["ssh"]);
    testbed.extend(sshd.backend_args());
    let listener = sshd.pid();
    testbed_dies(&testbed, |_| {
        // Every connection: the listener's children and theirs.
        let mut doomed = vec![listener];
        let mut found = true;
        while found {
            found = false;
            for p in processes() {
                if !doomed.contains(&p.pid) && doomed.contains(&parent(p.pid)) {
                    doomed.push(p.pid);
                    found = true;
                }
            }
        }
        doomed[1..].iter().copied().for_each(sigkill);
    });
}

/// A process's parent pid (0 if it is gone).
fn parent(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

#[test]
fn external() {
    if dep8_conformance::e2e::required_program("autopkgtest-virt-null", "autopkgtest").is_none() {
        return;
    }
    signal_matrix(
        &words(&["external", "autopkgtest-virt-null"]),
        &[Phase::Setup, Phase::Test],
    );
}

#[test]
fn qemu() {
    let Ok(image) = std::env::var("DEP8_TEST_QEMU_IMAGE") else {
        eprintln!("SKIP: DEP8_TEST_QEMU_IMAGE is not set");
        return;
    };
    signal_matrix(&words(&["qemu", &image]), &[Phase::Open, Phase::Test]);
}

#[test]
fn qemu_killed() {
    let Ok(image) = std::env::var("DEP8_TEST_QEMU_IMAGE") else {
        eprintln!("SKIP: DEP8_TEST_QEMU_IMAGE is not set");
        return;
    };
    testbed_dies(&words(&["qemu", &image]), |run| {
        let vms = run_processes(run, "qemu-system");
        assert!(!vms.is_empty(), "no qemu of the run");
        vms.into_iter().for_each(sigkill);
    });
}

/// `--timeout-copy` fires while the copy of the tree hangs (the copy is
/// stopped): the copy does not block dep8.
#[test]
fn timeout_copy_fires_during_a_copy() {
    let mut run = FaultRun::start(
        &words(&["null"]),
        &["--timeout-copy", "2"],
        Some(Phase::Copy),
    );
    run.reach(Phase::Copy, Duration::from_secs(60));
    let status = run.wait(Duration::from_secs(30));
    let log = run.read("log");
    assert_eq!(status.code(), Some(16), "log:\n{log}");
    assert!(
        run.read("summary")
            .contains("copying the source tree timed out after 2s"),
        "log:\n{log}"
    );
    let left = run.leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// A control file of `n` tests: each checks that no other run's testbed
/// leaks into its own (a marker in its tree), then leaves its own.
fn many_tests(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Test-Command: test ! -e run || grep -qx \"$RUN\" run; echo \"$RUN\" > run\n\
                 Features: test-name=t{i}\nDepends:\n\n"
            )
        })
        .collect()
}

/// Runs `n` tests on `testbed` as run `id`; returns the run's summary, exit
/// code and dep8's peak resident memory (VmHWM, kB).
fn load_run(testbed: &[String], n: usize, id: usize) -> (String, Option<i32>, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = dep8_conformance::e2e::source_tree(dir.path(), "load", &many_tests(n));
    let mut child = std::process::Command::new(dep8_conformance::e2e::dep8_bin())
        .args(["run", "-B", "--env", &format!("RUN={id}"), "-o"])
        .arg(dir.path().join("out"))
        .arg(&tree)
        .arg("--")
        .args(testbed)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("dep8");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let status = std::fs::read_to_string(&status_file).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        {
            peak = kb;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut summary = std::fs::read_to_string(dir.path().join("out/summary")).unwrap_or_default();
    if !status.success() {
        summary += &std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    }
    (summary, status.code(), peak)
}

fn assert_all_pass(summary: &str, n: usize, code: Option<i32>) {
    assert_eq!(code, Some(0), "summary:\n{summary}");
    let passed = summary.lines().filter(|l| l.ends_with(" PASS")).count();
    assert_eq!(passed, n, "summary:\n{summary}");
}

/// 200 tests in one run on unshare; dep8's peak memory is about the same
/// for 10 tests and for 200 (the figure is in docs/benchmarks.md).
#[test]
fn load_200_tests_and_flat_memory() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let testbed = words(&["unshare", "--tarball", &tarball]);
    let started = Instant::now();
    let (summary, code, peak_200) = load_run(&testbed, 200, 0);
    let took = started.elapsed();
    assert_all_pass(&summary, 200, code);
    let (summary, code, peak_10) = load_run(&testbed, 10, 0);
    assert_all_pass(&summary, 10, code);
    eprintln!("unshare: 200 tests in {took:.1?}; dep8 peak RSS {peak_10} kB for 10 tests, {peak_200} kB for 200");
    assert!(
        peak_200 < peak_10 + peak_10 / 2,
        "peak memory grows with the tests: {peak_10} kB for 10, {peak_200} kB for 200"
    );
}

/// Five runs at once on the same tarball and the same chroot: every test
/// passes and none sees another run's testbed.
#[test]
fn five_concurrent_runs() {
    let mut testbeds = Vec::new();
    if let Some(tarball) = unshare_rootfs_as_root() {
        testbeds.push(words(&["unshare", "--tarball", &tarball]));
    }
    if let Some(chroot) = schroot_chroot() {
        testbeds.push(words(&["schroot", &chroot]));
    }
    for testbed in testbeds {
        let started = Instant::now();
        std::thread::scope(|s| {
            let runs: Vec<_> = (1..=5)
                .map(|id| {
                    let testbed = &testbed;
                    s.spawn(move || load_run(testbed, 5, id))
                })
                .collect();
            for run in runs {
                let (summary, code, _) = run.join().expect("run thread");
                assert_all_pass(&summary, 5, code);
            }
        });
        eprintln!(
            "{}: 5 concurrent runs in {:.1?}",
            testbed[0],
            started.elapsed()
        );
    }
}

/// A disk that never boots (no boot loader, no kernel beside it) fails
/// within a minute, not after the 300 s boot timeout, and leaves nothing.
#[test]
fn qemu_disk_that_never_boots() {
    let qemu = "qemu-system-x86_64";
    if dep8_conformance::e2e::required_program(qemu, "qemu-system-x86").is_none() {
        return;
    }
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().set_len(16 << 20).expect("16 MB of zeros");
    let testbed = words(&["qemu", &disk.path().to_string_lossy()]);
    let mut run = FaultRun::start(&testbed, &[], None);
    let status = run.wait(Duration::from_secs(120));
    let log = run.read("log");
    assert_eq!(status.code(), Some(16), "log:\n{log}");
    // The firmware's own word comes first on a blank disk; the silent
    // console's 60 s limit is the net under it.
    let summary = run.read("summary");
    assert!(
        summary.contains("cannot be booted") || summary.contains("stayed silent for 60s"),
        "log:\n{log}"
    );
    assert!(run.started.elapsed() < Duration::from_secs(100));
    assert_eq!(run.results()["complete"], false);
    assert_eq!(run.result_of("first"), "NOT_RUN");
    let left = run.leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// A summary file that cannot be written: exit 20 with the reason in the
/// log, and no word of an interruption (nothing was interrupted).
#[test]
fn unwritable_summary_file_is_not_an_interruption() {
    let mut run = FaultRun::start(
        &words(&["null"]),
        &["--summary-file", "/nonexistent/x"],
        None,
    );
    let status = run.wait(Duration::from_secs(60));
    let log = run.read("log");
    assert_eq!(status.code(), Some(20), "log:\n{log}");
    assert!(log.contains("cannot write /nonexistent/x"), "log:\n{log}");
    assert!(!log.contains("interrupt"), "log:\n{log}");
}

/// An argument error is in the log, not only on stderr.
#[test]
fn argument_errors_are_in_the_log() {
    let mut run = FaultRun::start(&words(&["no-such-backend"]), &[], None);
    let status = run.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(20));
    assert!(
        run.read("log").contains("no-such-backend"),
        "{}",
        run.read("log")
    );
}

/// Without `-o`, the temporary output dir is removed at the end, as
/// autopkgtest removes its own; nothing else of the run stays either.
#[test]
fn no_output_dir_left_without_dash_o() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let tree =
        dep8_conformance::e2e::source_tree(dir.path(), "quick", "Test-Command: true\nDepends:\n");
    let status = std::process::Command::new(dep8_conformance::e2e::dep8_bin())
        .env("TMPDIR", &tmp)
        .arg("run")
        .arg(&tree)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("dep8");
    assert_eq!(status.code(), Some(0));
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
