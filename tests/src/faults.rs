//! The fault-injection harness: runs `dep8 run` with a temp dir of its own
//! (`TMPDIR`), reaches a phase by reading its log, hurts it (a signal to
//! dep8, a testbed that dies) and then checks that nothing of that run is
//! left on the host and that its output dir tells what happened.

use crate::e2e::{dep8_bin, source_tree};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The fixture's tests: `first` passes, `sleeper` runs until it is hurt,
/// `never` comes after it.
const CONTROL: &str = "Test-Command: echo first\nFeatures: test-name=first\nDepends:\n\n\
     Test-Command: sleep 600\nFeatures: test-name=sleeper\nDepends:\n\n\
     Test-Command: echo never\nFeatures: test-name=never\nDepends:\n";

/// The package the `sleeper` test depends on in [`Phase::Install`]: its
/// preinst sleeps, so apt stays in the middle of installing it.
pub const SLOW_PACKAGE: &str = "dep8-faults-slow";

/// Where a run is hurt, and the log line that says it got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Opening the testbed (long on qemu; unshare and
    /// autopkgtest-virt-unshare unpack their tarball).
    Open,
    /// A setup command that sleeps.
    Setup,
    /// Copying the source tree: the host-side copy (a `cp` or `tar` of the
    /// tree, or on `external` the virt server, which copies by itself) is
    /// stopped (SIGSTOP) once seen, so the run stays there.
    Copy,
    /// apt installs `sleeper`'s dependency, [`SLOW_PACKAGE`] (given as a
    /// binary), whose preinst sleeps.
    Install,
    /// The `sleeper` test runs.
    Test,
    /// The testbed is reverted before `sleeper` (`first` breaks it);
    /// reverting is quick, so the run may be hurt in `sleeper` already: the
    /// results are the same.
    Revert,
    /// `sleeper` asked for a reboot: a real machine (qemu) reboots, which
    /// takes a while by itself; the simulated one of
    /// [`crate::sshd::Login::RootFakeReboot`], a script over
    /// /usr/local/sbin/reboot, is made to do nothing, so it never comes back.
    Reboot,
    /// Every test passed and the testbed is being closed. `sleeper` left
    /// 20000 files in the tree's copy, which the close removes (the unshare
    /// holder drops its tmpfs at once instead, so it is stopped first; over
    /// ssh, the client that removes them is stopped once seen).
    Close,
}

impl Phase {
    fn marker(self) -> &'static str {
        match self {
            Phase::Open => "opening testbed:",
            Phase::Setup => "setting up the testbed",
            Phase::Copy => "to the testbed",
            Phase::Install => "sleeper: installing",
            Phase::Test => "test sleeper: [-----",
            Phase::Revert => "reverting the testbed",
            Phase::Reboot => "test sleeper: requested reboot with marker",
            Phase::Close => "closing the testbed",
        }
    }

    /// The fixture's control file for this phase.
    fn control(self) -> String {
        match self {
            Phase::Revert => CONTROL.replacen(
                "test-name=first\n",
                "test-name=first\nRestrictions: breaks-testbed\n",
                1,
            ),
            Phase::Install => CONTROL.replacen(
                "test-name=sleeper\nDepends:",
                &format!("test-name=sleeper\nDepends: {SLOW_PACKAGE}"),
                1,
            ),
            // Only root may reboot. A simulated `reboot` is made a no-op
            // first; once back from a real one, the test sleeps.
            Phase::Reboot => CONTROL
                .replacen(
                    "test-name=sleeper\n",
                    "test-name=sleeper\nRestrictions: needs-root\n",
                    1,
                )
                .replacen(
                    "sleep 600",
                    "if [ -e /usr/local/sbin/reboot ]; then echo : > /usr/local/sbin/reboot; fi; \
                 [ -n \"$AUTOPKGTEST_REBOOT_MARK\" ] || /tmp/autopkgtest-reboot m1; sleep 600",
                    1,
                ),
            Phase::Close => CONTROL.replacen(
                "sleep 600",
                "mkdir many && cd many && seq 20000 | xargs touch",
                1,
            ),
            _ => CONTROL.to_string(),
        }
    }
}

/// One `dep8 run` under test, with its own temp dir and output dir.
pub struct FaultRun {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub started: Instant,
    /// Processes of the run stopped to hold it in a phase, continued by
    /// [`FaultRun::resume`].
    stopped: Vec<u32>,
    /// The id of dep8's run dir (`dep8-run.ID`), kept once seen: a sweep
    /// removes the dir, and the id still names the run's lxc clones.
    run_id: std::sync::OnceLock<String>,
    /// Whether the testbed is closed through an ssh connection (qemu, ssh).
    closes_over_ssh: bool,
}

impl FaultRun {
    /// Starts `dep8 run -o OUT SRC [extra] -- testbed...` on the fixture
    /// made for `phase` (and for none: the plain fixture); for
    /// [`Phase::Copy`], the tree holds a 256 MB file (a copy to catch).
    pub fn start(testbed: &[String], extra: &[&str], phase: Option<Phase>) -> FaultRun {
        Self::start_with(testbed, extra, phase, phase == Some(Phase::Install))
    }

    /// [`Self::start`], with [`SLOW_PACKAGE`] given as a binary or not.
    pub fn start_with(
        testbed: &[String],
        extra: &[&str],
        phase: Option<Phase>,
        slow_binary: bool,
    ) -> FaultRun {
        let dir = tempfile::Builder::new()
            .prefix("dep8-faults.")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("tmp")).expect("mkdir tmp");
        let control = phase.map_or_else(|| CONTROL.to_string(), Phase::control);
        let tree = source_tree(dir.path(), "fx", &control);
        if phase == Some(Phase::Copy) {
            write_big(&tree.join("big"));
        }
        let binaries = match slow_binary {
            true => vec![slow_deb(dir.path())],
            false => Vec::new(),
        };
        let child = Command::new(dep8_bin())
            .env("TMPDIR", dir.path().join("tmp"))
            .args(["run", "-B", "-o"])
            .arg(dir.path().join("out"))
            .args(extra)
            .arg(&tree)
            .args(binaries)
            .arg("--")
            .args(testbed)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running dep8");
        FaultRun {
            dir,
            child,
            started: Instant::now(),
            stopped: Vec::new(),
            run_id: std::sync::OnceLock::new(),
            closes_over_ssh: matches!(testbed.first().map(String::as_str), Some("qemu" | "ssh")),
        }
    }

    /// The id of dep8's run dir (`dep8-run.ID` in [`Self::tmp`]), once it
    /// has claimed one.
    pub fn run_id(&self) -> Option<String> {
        if let Some(id) = self.run_id.get() {
            return Some(id.clone());
        }
        let id = std::fs::read_dir(self.tmp())
            .ok()?
            .flatten()
            .find_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("dep8-run.")
                    .map(String::from)
            })?;
        Some(self.run_id.get_or_init(|| id).clone())
    }

    /// The lxc containers of the run: the lxc backend names its clones
    /// `dep8-ID-N` after the run dir (none without lxc).
    pub fn lxc_clones(&self) -> Vec<String> {
        let Some(id) = self.run_id() else {
            return Vec::new();
        };
        let Ok(out) = Command::new("lxc-ls")
            .arg("-1")
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        let prefix = format!("dep8-{id}-");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|name| name.starts_with(&prefix))
            .map(String::from)
            .collect()
    }

    /// The run's own temp dir: everything it makes on the host is in it.
    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// A file of the output dir ("" if there is none).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.out().join(name)).unwrap_or_default()
    }

    /// Waits until the log shows `marker`, within `deadline`.
    fn wait_log(&mut self, marker: &str, deadline: Instant) {
        while !self.read("log").contains(marker) {
            assert!(
                self.child.try_wait().expect("waiting").is_none(),
                "dep8 ended before {marker:?}; log:\n{}",
                self.read("log")
            );
            assert!(
                Instant::now() < deadline,
                "no {marker:?} in the log in time:\n{}",
                self.read("log")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log shows `phase` (and, for [`Phase::Copy`], stops
    /// the host-side copy; for [`Phase::Close`], the helper that closes),
    /// within `limit`.
    pub fn reach(&mut self, phase: Phase, limit: Duration) {
        let deadline = Instant::now() + limit;
        if phase == Phase::Close {
            self.hold_close(deadline);
            return;
        }
        self.wait_log(phase.marker(), deadline);
        self.run_id();
        if phase == Phase::Copy {
            let tree = self.dir.path().join("fx").to_string_lossy().into_owned();
            let tmp = self.tmp().to_string_lossy().into_owned();
            let copier = wait_for(deadline, || {
                processes().into_iter().find(|p| {
                    let copies_tree = (p.cmdline.starts_with("cp ")
                        || p.cmdline.starts_with("tar "))
                        && p.cmdline.contains(&tree);
                    let virt_server = p.cmdline.contains("autopkgtest-virt-")
                        && p.environ.contains(&tmp)
                        && p.pid != self.child.id();
                    copies_tree || virt_server
                })
            })
            .unwrap_or_else(|| panic!("no copy of {tree} seen"));
            self.stop(copier.pid);
        }
    }

    /// Holds the run in closing its testbed: the unshare holder, which
    /// does the closing and is needed by no test, is stopped while the
    /// last test runs; over ssh (qemu, ssh), the ssh client that kills what
    /// is left and removes the scratch dir is stopped once seen; elsewhere
    /// the close takes a while by itself (see [`Phase::Close`]).
    fn hold_close(&mut self, deadline: Instant) {
        self.wait_log("test never: [-----", deadline);
        let tmp = self.tmp().to_string_lossy().into_owned();
        let holders: Vec<u32> = processes()
            .into_iter()
            .filter(|p| p.cmdline.contains("dep8-holder") && p.cmdline.contains(&tmp))
            .map(|p| p.pid)
            .collect();
        holders.into_iter().for_each(|pid| self.stop(pid));
        self.wait_log(Phase::Close.marker(), deadline);
        if self.closes_over_ssh {
            let remover = wait_for(deadline, || {
                processes().into_iter().find(|p| {
                    p.cmdline.starts_with("ssh ")
                        && p.cmdline.contains("kill -KILL")
                        && p.cmdline.contains("rm -rf --")
                        && p.environ.contains(&tmp)
                })
            })
            .unwrap_or_else(|| panic!("no ssh client removing the scratch dir seen"));
            self.stop(remover.pid);
        }
        self.run_id();
    }

    /// Stops a process of the run until [`Self::resume`].
    fn stop(&mut self, pid: u32) {
        if kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).is_ok() {
            self.stopped.push(pid);
        }
    }

    /// Lets the processes stopped to hold the run go on.
    pub fn resume(&mut self) {
        for pid in self.stopped.drain(..) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
    }

    /// The run's long-lived helpers still running (the unshare holder, an
    /// ssh master, an external virt server): after a SIGKILL of dep8 they
    /// must end by themselves, before any sweep.
    pub fn helpers_left(&self, grace: Duration) -> Vec<String> {
        let tmp = self.tmp().to_string_lossy().into_owned();
        let deadline = Instant::now() + grace;
        loop {
            let left: Vec<String> = processes()
                .into_iter()
                .filter(|p| p.cmdline.contains(&tmp) || p.environ.contains(&tmp))
                .filter(|p| p.pid != self.child.id())
                .filter(|p| {
                    p.cmdline.contains("dep8-holder")
                        || p.cmdline.contains("autopkgtest-virt-")
                        || (p.cmdline.starts_with("ssh ") && p.cmdline.contains(" -M "))
                })
                .map(|p| format!("process {} {}", p.pid, p.cmdline))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to dep8.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    /// Waits for dep8 to end, within `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "dep8 still runs {limit:?} later; log:\n{}",
                    self.read("log")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `dep8 clean` with this run's temp dir.
    pub fn clean(&self) -> String {
        let out = Command::new(dep8_bin())
            .env("TMPDIR", self.tmp())
            .arg("clean")
            .output()
            .expect("dep8 clean");
        assert!(out.status.success(), "dep8 clean: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What is left of the run on the host: processes, mounts, schroot
    /// sessions, lxc clones, files in its temp dir. Waits up to `grace` for
    /// it to go.
    pub fn leftovers(&self, grace: Duration) -> Vec<String> {
        let deadline = Instant::now() + grace;
        loop {
            let left = self.leftovers_now();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftovers_now(&self) -> Vec<String> {
        let tmp = self.tmp().to_string_lossy().into_owned();
        let mut left: Vec<String> = processes()
            .into_iter()
            .filter(|p| p.pid != std::process::id())
            .filter(|p| p.cmdline.contains(&tmp) || p.environ.contains(&tmp))
            .map(|p| format!("process {} {}", p.pid, p.cmdline))
            .collect();
        let session = format!("-{}-", self.child.id());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mountinfo
                .lines()
                .filter(|l| l.contains(&tmp) || (l.contains("/dep8-") && l.contains(&session)))
                .map(|l| format!("mount {l}")),
        );
        if let Ok(out) = Command::new("schroot")
            .args(["--list", "--all-sessions"])
            .stderr(Stdio::null())
            .output()
        {
            left.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("session:dep8-") && l.contains(&session))
                    .map(|l| format!("schroot {l}")),
            );
        }
        left.extend(
            self.lxc_clones()
                .into_iter()
                .map(|name| format!("lxc container {name}")),
        );
        if let Ok(entries) = std::fs::read_dir(self.tmp()) {
            left.extend(
                entries
                    .flatten()
                    .map(|e| format!("file {}", e.path().display())),
            );
        }
        if host_has_slow_package() {
            left.push(format!("{SLOW_PACKAGE} in the host's dpkg status"));
        }
        left.extend(
            self.shared_scratch()
                .filter(|dir| dir.exists())
                .map(|dir| format!("scratch dir {}", dir.display())),
        );
        left
    }

    /// A schroot session's scratch dir as the host sees it in its own
    /// /tmp, which the default profile shares with the session: the last
    /// component of results.json's `downtmp_host`, in /tmp.
    fn shared_scratch(&self) -> Option<PathBuf> {
        let results: serde_json::Value = serde_json::from_str(&self.read("results.json")).ok()?;
        let downtmp = results["capabilities"]["downtmp_host"].as_str()?;
        let name = Path::new(downtmp).file_name()?.to_str()?;
        name.starts_with("dep8-schroot.")
            .then(|| Path::new("/tmp").join(name))
    }

    /// results.json, parsed.
    pub fn results(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("results.json"))
            .unwrap_or_else(|e| panic!("results.json: {e}; log:\n{}", self.read("log")))
    }

    /// `test -> result word` from results.json.
    pub fn result_of(&self, test: &str) -> String {
        self.results()["tests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == test)
            .map(|t| t["result"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }
}

impl Drop for FaultRun {
    /// A failed test leaves no dep8 running, nor what it started.
    fn drop(&mut self) {
        self.resume();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.clean();
        }
    }
}

/// The signals every phase is hurt with.
pub const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL];

/// One run hurt by `signal` in `phase`; returns what went wrong.
pub fn signal_case(testbed: &[String], phase: Phase, signal: Signal) -> Result<(), String> {
    let extra: &[&str] = match phase {
        Phase::Setup => &["--setup-commands", "sleep 600"],
        _ => &[],
    };
    let mut run = FaultRun::start(testbed, extra, Some(phase));
    run.reach(phase, Duration::from_secs(300));
    run.signal(signal);
    run.resume();
    let status = run.wait(Duration::from_secs(60));
    let case = format!("{} {phase:?} {signal}", testbed.join(" "));
    let log = run.read("log");
    if status.signal() != Some(signal as i32) {
        return Err(format!("{case}: dep8 ended with {status}; log:\n{log}"));
    }
    if signal == Signal::SIGKILL {
        // Its helpers die with it, before any sweep.
        let helpers = run.helpers_left(Duration::from_secs(30));
        if !helpers.is_empty() {
            return Err(format!("{case}: outlived dep8:\n{}", helpers.join("\n")));
        }
        run.clean();
    }
    let left = run.leftovers(Duration::from_secs(10));
    if !left.is_empty() {
        return Err(format!("{case}: left behind:\n{}", left.join("\n")));
    }
    if signal == Signal::SIGKILL {
        // What it wrote before it died is all there is; it says it is
        // partial, unless every test had its result (in the close).
        let partial = run.read("results.json").is_empty() || run.results()["complete"] == false;
        return (partial != (phase == Phase::Close))
            .then_some(())
            .ok_or_else(|| format!("{case}: results.json: wrong \"complete\""));
    }
    let results = run.results();
    let expected = match phase {
        Phase::Close => [("first", "PASS"), ("sleeper", "PASS"), ("never", "PASS")],
        Phase::Install | Phase::Test | Phase::Revert | Phase::Reboot => [
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
    // Every test got its result before the close was interrupted.
    let complete = phase == Phase::Close;
    let problems = [
        (
            results["complete"] != complete,
            "results.json: complete is wrong",
        ),
        (!wrong.is_empty(), "results.json names the tests wrongly"),
        (
            !junit.contains("name=\"never\""),
            "junit.xml lacks the test not run",
        ),
        (
            !complete && !run.read("summary").contains(&note),
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
pub fn signal_matrix(testbed: &[String], phases: &[Phase]) {
    signal_matrix_with(&testbed[0], phases, |phase, signal| {
        signal_case(testbed, phase, signal)
    });
}

/// Every phase and signal, each a `case` (the three signals of a phase at
/// once); every case runs, even after one fails or panics, and then this
/// panics with every failure.
pub fn signal_matrix_with(
    label: &str,
    phases: &[Phase],
    case: impl Fn(Phase, Signal) -> Result<(), String> + Sync,
) {
    let started = Instant::now();
    let case = &case;
    let mut failures = Vec::new();
    for &phase in phases {
        std::thread::scope(|s| {
            let running: Vec<_> = SIGNALS
                .map(|signal| (signal, s.spawn(move || case(phase, signal))))
                .into_iter()
                .collect();
            for (signal, outcome) in running {
                match outcome.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(e),
                    Err(panic) => failures.push(format!(
                        "{label} {phase:?} {signal}: panicked: {}",
                        panic_message(&panic)
                    )),
                }
            }
        });
    }
    eprintln!(
        "{label}: {} cases in {:.1?}",
        phases.len() * SIGNALS.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What a panic said, if it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

/// The testbed dies while `sleeper` runs (`kill_testbed` does it): exit 16,
/// the test named as interrupted by the testbed failure, nothing left.
pub fn testbed_dies(testbed: &[String], kill_testbed: impl FnOnce(&FaultRun)) {
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
    assert_eq!(run.results()["complete"], false, "log:\n{log}");
    assert_eq!(run.result_of("first"), "PASS", "log:\n{log}");
    assert_eq!(run.result_of("sleeper"), "INTERRUPTED", "log:\n{log}");
    assert_eq!(run.result_of("never"), "NOT_RUN", "log:\n{log}");
    let left = run.leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// Processes of `run` whose command line starts with `program`.
pub fn run_processes(run: &FaultRun, program: &str) -> Vec<u32> {
    let tmp = run.tmp().to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|p| p.cmdline.starts_with(program))
        .filter(|p| p.environ.contains(&tmp) || p.cmdline.contains(&tmp))
        .map(|p| p.pid)
        .collect()
}

/// Kills `pid` (gone already is fine).
pub fn sigkill(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// A testbed's words as owned strings.
pub fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Whether the host's dpkg knows [`SLOW_PACKAGE`] (a test installed it on
/// the host, or started to).
pub fn host_has_slow_package() -> bool {
    std::fs::read_to_string("/var/lib/dpkg/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l == format!("Package: {SLOW_PACKAGE}"))
}

/// [`SLOW_PACKAGE`]'s .deb, built in `dir`: its preinst sleeps for ten
/// minutes.
fn slow_deb(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("slow-deb");
    std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir DEBIAN");
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {SLOW_PACKAGE}\nVersion: 1\nArchitecture: all\n\
             Maintainer: dep8 <dep8@example.org>\nDescription: installs slowly\n"
        ),
    )
    .expect("control");
    let preinst = root.join("DEBIAN/preinst");
    std::fs::write(&preinst, "#!/bin/sh\nsleep 600\n").expect("preinst");
    std::fs::set_permissions(&preinst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let deb = dir.join(format!("{SLOW_PACKAGE}_1_all.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .stdout(Stdio::null())
        .status()
        .expect("dpkg-deb");
    assert!(status.success(), "dpkg-deb --build failed");
    deb
}

/// A file of 256 MB of non-zero bytes (no copy can skip it as a hole).
fn write_big(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("big file");
    let block = vec![0xa5u8; 1 << 20];
    for _ in 0..256 {
        file.write_all(&block).expect("writing the big file");
    }
}

/// A process on the host, as /proc shows it.
pub struct Proc {
    pub pid: u32,
    /// Its arguments joined by spaces.
    pub cmdline: String,
    /// Its environment, NUL-separated.
    pub environ: String,
}

/// Every process on the host (those that vanish while read are skipped).
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let read = |what: &str| {
                std::fs::read(e.path().join(what))
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            Some(Proc {
                pid,
                cmdline: read("cmdline")?.replace('\0', " "),
                environ: read("environ").unwrap_or_default(),
            })
        })
        .collect()
}

/// Polls `f` until it gives something or `deadline` passes.
pub fn wait_for<T>(deadline: Instant, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(x) = f() {
            return Some(x);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A control file of `n` tests: each checks that no other run's testbed
/// leaks into its own (a marker in its tree and one in the testbed's
/// /var/tmp, which no other testbed shares), leaves its own and prints the
/// run's id.
fn many_tests(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Test-Command: for f in run /var/tmp/dep8-run; do \
                 test ! -e $f || grep -qx \"$RUN\" $f || exit 1; echo \"$RUN\" > $f; done; \
                 echo \"$RUN\"\n\
                 Features: test-name=t{i}\nDepends:\n\n"
            )
        })
        .collect()
}

/// A finished run of [`many_tests`], for load and concurrency tests.
pub struct LoadRun {
    /// Its summary, and dep8's stderr when it failed.
    pub summary: String,
    pub code: Option<i32>,
    /// dep8's peak resident memory (VmHWM, kB).
    pub peak_kb: u64,
    /// The run's id, in `$RUN` of its tests.
    pub id: usize,
    /// Holds the output dir, `out`.
    pub dir: tempfile::TempDir,
    n: usize,
}

impl LoadRun {
    /// Runs `n` tests on `testbed` as run `id`, to the end.
    pub fn new(testbed: &[String], n: usize, id: usize) -> LoadRun {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = source_tree(dir.path(), "load", &many_tests(n));
        let mut child = Command::new(dep8_bin())
            .args(["run", "-B", "--env", &format!("RUN={id}"), "-o"])
            .arg(dir.path().join("out"))
            .arg(&tree)
            .arg("--")
            .args(testbed)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("dep8");
        let status_file = format!("/proc/{}/status", child.id());
        let mut peak_kb = 0;
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
                peak_kb = kb;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut summary =
            std::fs::read_to_string(dir.path().join("out/summary")).unwrap_or_default();
        if !status.success() {
            summary += &std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        }
        LoadRun {
            summary,
            code: status.code(),
            peak_kb,
            id,
            dir,
            n,
        }
    }

    /// Asserts that every test passed, and printed this run's id.
    pub fn assert_all_pass(&self) -> &Self {
        let summary = &self.summary;
        assert_eq!(self.code, Some(0), "summary:\n{summary}");
        let passed = summary.lines().filter(|l| l.ends_with(" PASS")).count();
        assert_eq!(passed, self.n, "summary:\n{summary}");
        for i in 0..self.n {
            let out = self.dir.path().join(format!("out/t{i}-stdout"));
            let said = std::fs::read_to_string(&out).unwrap_or_default();
            assert_eq!(said, format!("{}\n", self.id), "{}", out.display());
        }
        self
    }
}
