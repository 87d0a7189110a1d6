//! The fault-injection harness: runs `dep8 run` with a temp dir of its own
//! (`TMPDIR`), reaches a phase by reading its log, hurts it (a signal to
//! dep8, a testbed that dies) and then checks that nothing of that run is
//! left on the host and that its output dir tells what happened.

use crate::e2e::{dep8_bin, source_tree};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The fixture's tests: `first` passes, `sleeper` runs until it is hurt,
/// `never` comes after it.
const CONTROL: &str = "Test-Command: echo first\nFeatures: test-name=first\nDepends:\n\n\
     Test-Command: sleep 600\nFeatures: test-name=sleeper\nDepends:\n\n\
     Test-Command: echo never\nFeatures: test-name=never\nDepends:\n";

/// Where a run is hurt, and the log line that says it got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Opening the testbed (long only on qemu).
    Open,
    /// A setup command that sleeps.
    Setup,
    /// Copying the source tree: the host-side copy is stopped (SIGSTOP)
    /// once seen, so the run stays there.
    Copy,
    /// The `sleeper` test runs.
    Test,
    /// The testbed is reverted before `sleeper` (`first` breaks it);
    /// reverting is quick, so the run may be hurt in `sleeper` already: the
    /// results are the same.
    Revert,
}

impl Phase {
    fn marker(self) -> &'static str {
        match self {
            Phase::Open => "opening testbed:",
            Phase::Setup => "setting up the testbed",
            Phase::Copy => "to the testbed",
            Phase::Test => "test sleeper: [-----",
            Phase::Revert => "reverting the testbed",
        }
    }
}

/// One `dep8 run` under test, with its own temp dir and output dir.
pub struct FaultRun {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub started: Instant,
}

impl FaultRun {
    /// Starts `dep8 run -o OUT SRC [extra] -- testbed...` on the fixture
    /// made for `phase` (and for none: the plain fixture); for
    /// [`Phase::Copy`], the tree holds a 256 MB file (a copy to catch).
    pub fn start(testbed: &[String], extra: &[&str], phase: Option<Phase>) -> FaultRun {
        let dir = tempfile::Builder::new()
            .prefix("dep8-faults.")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("tmp")).expect("mkdir tmp");
        let control = match phase {
            Some(Phase::Revert) => CONTROL.replacen(
                "test-name=first\n",
                "test-name=first\nRestrictions: breaks-testbed\n",
                1,
            ),
            _ => CONTROL.to_string(),
        };
        let tree = source_tree(dir.path(), "fx", &control);
        if phase == Some(Phase::Copy) {
            write_big(&tree.join("big"));
        }
        let child = Command::new(dep8_bin())
            .env("TMPDIR", dir.path().join("tmp"))
            .args(["run", "-B", "-o"])
            .arg(dir.path().join("out"))
            .args(extra)
            .arg(&tree)
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
        }
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

    /// Waits until the log shows `phase` (and, for [`Phase::Copy`], stops
    /// the host-side copy), within `limit`.
    pub fn reach(&mut self, phase: Phase, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.read("log").contains(phase.marker()) {
            assert!(
                self.child.try_wait().expect("waiting").is_none(),
                "dep8 ended before {phase:?}; log:\n{}",
                self.read("log")
            );
            assert!(
                Instant::now() < deadline,
                "no {phase:?} in the log after {limit:?}:\n{}",
                self.read("log")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if phase == Phase::Copy {
            let tree = self.dir.path().join("fx");
            let copier = wait_for(deadline, || {
                processes().into_iter().find(|p| {
                    (p.cmdline.starts_with("cp ") || p.cmdline.starts_with("tar "))
                        && p.cmdline.contains(&tree.to_string_lossy().into_owned())
                })
            })
            .unwrap_or_else(|| panic!("no copy of {} seen", tree.display()));
            let _ = kill(Pid::from_raw(copier.pid as i32), Signal::SIGSTOP);
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
    /// sessions, files in its temp dir. Waits up to `grace` for it to go.
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
        if let Ok(entries) = std::fs::read_dir(self.tmp()) {
            left.extend(
                entries
                    .flatten()
                    .map(|e| format!("file {}", e.path().display())),
            );
        }
        left
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
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.clean();
        }
    }
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
