//! The fault-injection suite: on every backend that runs here but qemu
//! (tests/faults_qemu.rs), dep8 gets SIGINT, SIGTERM and SIGKILL in each
//! phase it can be held in (setup, copy, dependency install, test; revert
//! where the testbed reverts; a reboot on ssh), and testbeds die under it.
//! Afterwards nothing of the run is left on the host (process, mount,
//! schroot session, temp file, the slow package in the host's dpkg) nor on
//! an ssh machine (process, scratch or job dir), after a SIGKILL once
//! `dep8 clean` ran; the output dir names the test that was interrupted and
//! those not run, with `complete: false`; dep8 ends by the signal it got, as
//! autopkgtest does on SIGTERM, or with 16 when the testbed died (see
//! [`signal_case`]). Under load: 200 tests in one run, and dep8's peak
//! memory as the number of tests grows (five runs at once:
//! tests/concurrent.rs).

use dep8_tests::e2e::unshare_rootfs_as_root;
use dep8_tests::faults::{
    processes, run_processes, sigkill, signal_case, signal_matrix, signal_matrix_with,
    testbed_dies, wait_for, words, FaultRun, LoadRun, Phase, SIGNALS, SLOW_PACKAGE,
};
use dep8_tests::required_resource;
use dep8_tests::sshd::{Login, LoopbackSshd};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

#[test]
fn null() {
    // No Install: on the host dep8 installs nothing unless asked to, and a
    // signal in the middle of dpkg would leave the host's dpkg half done.
    signal_matrix(
        &words(&["null"]),
        &[Phase::Setup, Phase::Copy, Phase::Test, Phase::Close],
    );
}

/// On the host itself (`null`) `dep8 run` installs nothing, so there is no
/// install phase to hurt: given [`SLOW_PACKAGE`] as a binary, the run is
/// refused (20, the binary named); with the package only in `sleeper`'s
/// Depends, `sleeper` is badpkg (12) for it, the other tests run, and the
/// host's dpkg never hears of it. (`--on-host-as-autopkgtest` installs on
/// the host, as autopkgtest does; hurting dpkg there would break this
/// host's package state, so it is not done.)
#[test]
fn null_has_no_install_phase() {
    let null = words(&["null"]);
    let mut refused = FaultRun::start_with(&null, &[], Some(Phase::Install), true);
    let status = refused.wait(Duration::from_secs(60));
    let log = refused.read("log");
    assert_eq!(status.code(), Some(20), "log:\n{log}");
    assert!(
        log.contains(&format!(
            "{SLOW_PACKAGE}_1_all.deb (a binary to install): would change the host"
        )),
        "log:\n{log}"
    );
    let mut run = FaultRun::start_with(&null, &[], Some(Phase::Install), false);
    let status = run.wait(Duration::from_secs(60));
    let log = run.read("log");
    assert_eq!(status.code(), Some(12), "log:\n{log}");
    assert_eq!(run.result_of("first"), "PASS");
    assert_eq!(run.result_of("sleeper"), "FAIL", "log:\n{log}");
    assert_eq!(run.result_of("never"), "PASS");
    assert!(
        run.read("summary").contains(&format!(
            "dep8 does not install packages on this testbed: {SLOW_PACKAGE}"
        )),
        "log:\n{log}"
    );
    for run in [refused, run] {
        let left = run.leftovers(Duration::from_secs(10));
        assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    }
}

#[test]
fn unshare() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    signal_matrix(
        &words(&["unshare", "--tarball", &tarball]),
        &[
            Phase::Open,
            Phase::Setup,
            Phase::Copy,
            Phase::Install,
            Phase::Test,
            Phase::Revert,
            Phase::Close,
        ],
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
        signal_matrix(&testbed, &[Phase::Test, Phase::Close]);
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
        &[
            Phase::Setup,
            Phase::Copy,
            Phase::Install,
            Phase::Test,
            Phase::Close,
        ],
    );
}

/// The session is ended from outside (`schroot --end-session`) while a
/// test runs: a testbed failure, not the test's.
#[test]
fn schroot_session_ended() {
    let Some(chroot) = schroot_chroot() else {
        return;
    };
    testbed_dies(&words(&["schroot", &chroot]), |run| {
        let session = format!("-{}-", run.child.id());
        let out = std::process::Command::new("schroot")
            .args(["--list", "--all-sessions"])
            .output()
            .expect("schroot --list");
        let sessions: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("session:dep8-") && l.contains(&session))
            .map(str::to_string)
            .collect();
        assert_eq!(sessions.len(), 1, "the run's sessions: {sessions:?}");
        let ended = std::process::Command::new("schroot")
            .args(["--end-session", "--chroot", &sessions[0]])
            .status()
            .expect("schroot --end-session");
        assert!(ended.success());
    });
}

/// ssh's matrix, one machine per case ([`Login::RootOwnMachine`], whose
/// installs stay in it): besides the host, the machine is left with
/// nothing of the run in its /tmp and /var/tmp (its scratch and job dirs),
/// after a SIGKILL once `dep8 clean` ran: the sweep removes them over ssh.
#[test]
fn ssh() {
    let phases = [
        Phase::Setup,
        Phase::Copy,
        Phase::Install,
        Phase::Test,
        Phase::Close,
    ];
    signal_matrix_with("ssh", &phases, ssh_case);
}

/// [`signal_case`] on a machine of its own, whose /tmp and /var/tmp are
/// then checked.
fn ssh_case(phase: Phase, signal: Signal) -> Result<(), String> {
    let Some(sshd) = LoopbackSshd::start_with(Login::RootOwnMachine) else {
        return Ok(());
    };
    let mut testbed = words(&["ssh"]);
    testbed.extend(sshd.backend_args());
    signal_case(&testbed, phase, signal)?;
    let mut left = sshd.remote_leftovers();
    left.extend(remote_processes_after(&sshd, Duration::from_secs(10)));
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "ssh {phase:?} {signal}: left on the machine: {left:?}"
        ))
    }
}

/// A test's reboot that never ends, on a machine whose reboot is
/// simulated (the only testbed here that reboots, besides qemu). One
/// machine per case: the reboot helpers live at fixed paths in its /tmp,
/// as autopkgtest's do, so two runs cannot reboot one machine at once.
#[test]
fn ssh_reboot() {
    let mut failures = Vec::new();
    for signal in SIGNALS {
        let Some(sshd) = LoopbackSshd::start_with(Login::RootFakeReboot) else {
            return;
        };
        let mut testbed = words(&["ssh", "--reboot", "--timeout-ssh", "600"]);
        testbed.extend(sshd.backend_args());
        failures.extend(signal_case(&testbed, Phase::Reboot, signal).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
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
        // Once the test's command runs there: the log names the test a
        // moment before its session exists, and a session started after
        // the kill would be a new connection, alive.
        let sleeper_runs = || {
            let ours = descendants(listener);
            processes()
                .into_iter()
                .any(|p| ours.contains(&p.pid) && p.cmdline.starts_with("sleep 600"))
                .then_some(())
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(
            wait_for(deadline, sleeper_runs).is_some(),
            "the sleeper never ran"
        );
        // Every connection: the listener's children and theirs.
        descendants(listener).into_iter().for_each(sigkill);
    });
}

/// After a SIGKILL of dep8 in a test, the machine keeps the run's dirs and
/// the test still runs there (nothing on the host can end it); the sweep
/// (`dep8 clean`) kills it and removes the dirs over ssh.
#[test]
fn ssh_sweep_ends_what_a_killed_run_left_on_the_machine() {
    let Some(sshd) = LoopbackSshd::start_with(Login::RootOwnMachine) else {
        return;
    };
    let mut testbed = words(&["ssh"]);
    testbed.extend(sshd.backend_args());
    let mut run = FaultRun::start(&testbed, &[], Some(Phase::Test));
    run.reach(Phase::Test, Duration::from_secs(300));
    wait_until_the_sleeper_runs_on(&sshd);
    run.signal(Signal::SIGKILL);
    run.wait(Duration::from_secs(60));
    let left = sshd.remote_leftovers();
    assert_eq!(left.len(), 2, "the scratch and job dirs: {left:?}");
    assert!(
        !sshd.remote_processes().is_empty(),
        "the test no longer runs on the machine"
    );
    let swept = run.clean();
    assert!(swept.contains("ran ssh"), "dep8 clean said:\n{swept}");
    assert_eq!(sshd.remote_leftovers(), Vec::<String>::new(), "{swept}");
    let left = remote_processes_after(&sshd, Duration::from_secs(10));
    assert!(left.is_empty(), "{swept}left on the machine: {left:?}");
}

/// With an ssh-setup script (`-s`), whose `cleanup` may be what ends a
/// cloud VM: after a SIGKILL of dep8 in a test, `dep8 clean` calls
/// `SCRIPT cleanup` with the `extraopts` its `open` printed, and ends what
/// the run left on the machine.
#[test]
fn ssh_sweep_calls_the_setup_script_s_cleanup() {
    let Some(sshd) = LoopbackSshd::start_with(Login::RootOwnMachine) else {
        return;
    };
    let script = sshd.setup_script();
    let testbed = words(&[
        "ssh",
        "--known-hosts",
        &sshd.known_hosts().to_string_lossy(),
        "-s",
        &script.to_string_lossy(),
    ]);
    let mut run = FaultRun::start(&testbed, &[], Some(Phase::Test));
    run.reach(Phase::Test, Duration::from_secs(300));
    wait_until_the_sleeper_runs_on(&sshd);
    run.signal(Signal::SIGKILL);
    run.wait(Duration::from_secs(60));
    let calls = sshd.dir().join("state/calls");
    let read_calls = || std::fs::read_to_string(&calls).expect("the script's calls");
    assert_eq!(
        read_calls().lines().last(),
        Some("open"),
        "{}",
        read_calls()
    );
    let swept = run.clean();
    let state = sshd.dir().join("state");
    assert_eq!(
        read_calls().lines().last(),
        Some(format!("cleanup --state {}", state.display()).as_str()),
        "dep8 clean said:\n{swept}"
    );
    assert_eq!(sshd.remote_leftovers(), Vec::<String>::new(), "{swept}");
    let left = remote_processes_after(&sshd, Duration::from_secs(10));
    assert!(left.is_empty(), "{swept}left on the machine: {left:?}");
}

/// Waits until the fixture's `sleep 600` runs on the machine (the log says
/// the test starts before ssh has started it).
fn wait_until_the_sleeper_runs_on(sshd: &LoopbackSshd) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remote_commands(sshd)
        .iter()
        .any(|c| c.contains("sleep 600"))
    {
        assert!(
            Instant::now() < deadline,
            "the test never started on the machine"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The machine's processes (their command lines) still there after up to
/// `grace`.
fn remote_processes_after(sshd: &LoopbackSshd, grace: Duration) -> Vec<String> {
    let deadline = Instant::now() + grace;
    while !sshd.remote_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    remote_commands(sshd)
}

/// The machine's processes, as `PID COMMAND LINE`.
fn remote_commands(sshd: &LoopbackSshd) -> Vec<String> {
    let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    sshd.remote_processes()
        .into_iter()
        .map(|pid| {
            format!(
                "{pid} {}",
                String::from_utf8_lossy(&cmdline(pid)).replace('\0', " ")
            )
        })
        .collect()
}

/// Every process under `pid` (its children and theirs).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = vec![pid];
    let mut more = true;
    while more {
        more = false;
        for p in processes() {
            if !found.contains(&p.pid) && found.contains(&parent(p.pid)) {
                found.push(p.pid);
                more = true;
            }
        }
    }
    found.split_off(1)
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
    if dep8_tests::e2e::required_program("autopkgtest-virt-null", "autopkgtest").is_none() {
        return;
    }
    signal_matrix(
        &words(&["external", "autopkgtest-virt-null"]),
        &[Phase::Setup, Phase::Copy, Phase::Test, Phase::Close],
    );
}

/// The open (the server unpacks its tarball), install and revert phases on
/// `external`, with autopkgtest's own unshare virt server (whose testbed, unlike autopkgtest-virt-null's, is
/// not the host, and can be reverted).
#[test]
fn external_unshare() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    if dep8_tests::e2e::required_program("autopkgtest-virt-unshare", "autopkgtest").is_none() {
        return;
    }
    signal_matrix(
        &words(&["external", "autopkgtest-virt-unshare", "-t", &tarball]),
        &[Phase::Open, Phase::Install, Phase::Revert],
    );
}

/// The lxc backend's copy, install, reboot and close (its setup, test and
/// revert are in tests/lxc.rs, `signals_leave_no_clone`, with a decoy
/// container; a container reboots fast, so the signal may find the test
/// running again after it, with the same results):
/// no clone of the run is left either ([`FaultRun::leftovers`]).
#[test]
fn lxc() {
    let Some(template) = required_resource("DEP8_TEST_LXC", "an lxc container") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the lxc template is a privileged container (run as root)");
        return;
    }
    signal_matrix(
        &words(&["lxc", &template]),
        &[Phase::Copy, Phase::Install, Phase::Reboot, Phase::Close],
    );
}

/// The run's containers are stopped (`lxc-stop --kill`) while a test runs:
/// a testbed failure, and no clone is left.
#[test]
fn lxc_container_stopped() {
    let Some(template) = required_resource("DEP8_TEST_LXC", "an lxc container") else {
        return;
    };
    testbed_dies(&words(&["lxc", &template]), |run| {
        let clones = run.lxc_clones();
        assert!(!clones.is_empty(), "no lxc clone of the run found");
        for clone in clones {
            let _ = std::process::Command::new("lxc-stop")
                .args(["--kill", "-n", &clone])
                .status();
        }
    });
}

/// The virt server (autopkgtest's own) is killed while a test runs: a
/// testbed failure, and nothing of the run is left.
#[test]
fn external_virt_server_killed() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    if dep8_tests::e2e::required_program("autopkgtest-virt-unshare", "autopkgtest").is_none() {
        return;
    }
    let testbed = words(&["external", "autopkgtest-virt-unshare", "-t", &tarball]);
    testbed_dies(&testbed, |run| {
        let servers = run_processes(run, "/usr/bin/python3 /usr/bin/autopkgtest-virt-unshare");
        assert!(!servers.is_empty(), "no virt server of the run found");
        servers.into_iter().for_each(sigkill);
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

/// 200 tests in one run on unshare; dep8's peak memory is about the same
/// for 10 tests and for 200 (the figure is in docs/benchmarks.md).
#[test]
fn load_200_tests_and_flat_memory() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let testbed = words(&["unshare", "--tarball", &tarball]);
    let started = Instant::now();
    let peak_200 = LoadRun::new(&testbed, 200, 0).assert_all_pass().peak_kb;
    let took = started.elapsed();
    let peak_10 = LoadRun::new(&testbed, 10, 0).assert_all_pass().peak_kb;
    eprintln!("unshare: 200 tests in {took:.1?}; dep8 peak RSS {peak_10} kB for 10 tests, {peak_200} kB for 200");
    assert!(
        peak_200 < peak_10 + peak_10 / 2,
        "peak memory grows with the tests: {peak_10} kB for 10, {peak_200} kB for 200"
    );
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
    let tree = dep8_tests::e2e::source_tree(dir.path(), "quick", "Test-Command: true\nDepends:\n");
    let status = std::process::Command::new(dep8_tests::e2e::dep8_bin())
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

/// `dep8 clean` sweeps only its own user's dead runs: a run dir another
/// user planted in a shared $TMPDIR, naming a dir to remove, is left alone
/// with that dir.
#[test]
fn clean_ignores_another_user_s_run_dir() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (to give a dir to another user)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let victim = dir.path().join("dep8-victim");
    std::fs::create_dir(&victim).expect("victim");
    let planted = dir.path().join("dep8-run.planted");
    std::fs::create_dir(&planted).expect("planted");
    for (name, text) in [
        ("pid", "1\n".to_string()),
        ("lock", String::new()),
        ("paths", format!("{}\n", victim.display())),
    ] {
        std::fs::write(planted.join(name), text).expect("planted file");
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("a user nobody");
    nix::unistd::chown(&planted, Some(nobody.uid), Some(nobody.gid)).expect("chown");
    let out = std::process::Command::new(dep8_tests::e2e::dep8_bin())
        .env("TMPDIR", dir.path())
        .arg("clean")
        .output()
        .expect("dep8 clean");
    assert!(out.status.success(), "{out:?}");
    assert!(victim.exists() && planted.exists(), "{out:?}");
}
