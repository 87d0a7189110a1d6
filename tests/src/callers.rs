//! The harness for running Debian's real callers of `autopkgtest` (debci,
//! Debusine, sbuild) over dep8 and over Debian's autopkgtest: a PATH dir
//! whose `autopkgtest` is one or the other, a RabbitMQ broker of the test's
//! own, and what debci and Debusine read back from an output dir.

use crate::e2e::dep8_bin;
use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which program a caller gets when it runs `autopkgtest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autopkgtest {
    /// dep8, through a symlink named `autopkgtest`.
    Dep8,
    /// Debian's /usr/bin/autopkgtest, the reference.
    Debian,
}

impl Autopkgtest {
    /// The program the `autopkgtest` symlink points at.
    pub fn target(self) -> PathBuf {
        match self {
            Autopkgtest::Dep8 => dep8_bin(),
            Autopkgtest::Debian => PathBuf::from("/usr/bin/autopkgtest"),
        }
    }
}

/// A directory holding only `autopkgtest`, a symlink to one implementation,
/// to put first in a caller's PATH. Removed when dropped.
pub struct AutopkgtestOnPath {
    dir: tempfile::TempDir,
}

impl AutopkgtestOnPath {
    pub fn new(which: Autopkgtest) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dep8-callers-path.")
            .tempdir()
            .expect("temp dir");
        std::os::unix::fs::symlink(which.target(), dir.path().join("autopkgtest"))
            .expect("autopkgtest symlink");
        AutopkgtestOnPath { dir }
    }

    /// The `autopkgtest` symlink.
    pub fn program(&self) -> PathBuf {
        self.dir.path().join("autopkgtest")
    }

    /// PATH with this directory first.
    pub fn path(&self) -> OsString {
        let mut path = OsString::from(self.dir.path());
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        path
    }

    /// `program args...` with this PATH, stdin closed.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("PATH", self.path()).stdin(Stdio::null());
        command
    }
}

/// `N` distinct TCP ports on 127.0.0.1 that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let ports = dep8_core::testbed::ports::free_loopback_ports(N).expect("free ports");
    std::array::from_fn(|i| ports[i])
}

/// Runs `command` to the end, failing the test after `limit` (the command
/// and its children are killed then); returns its output. The output goes
/// through files, so that a process left behind with them open cannot
/// hold the test up.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    let what = format!("{command:?}");
    let (mut out, mut err) = (
        tempfile::tempfile().expect("temp file"),
        tempfile::tempfile().expect("temp file"),
    );
    let mut child = command
        .process_group(0)
        .stdout(out.try_clone().expect("temp file"))
        .stderr(err.try_clone().expect("temp file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let watchdog = Watchdog::new(child.id(), limit);
    let status = child.wait().expect("wait");
    let timed_out = watchdog.disarm();
    let read = |file: &mut std::fs::File| {
        let mut buf = Vec::new();
        file.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut buf))
            .expect("reading the output back");
        buf
    };
    let (stdout, stderr) = (read(&mut out), read(&mut err));
    assert!(
        !timed_out,
        "{what} took longer than {limit:?}; its output:\n{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Kills a process group after a time limit unless disarmed first.
struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn new(pgid: u32, limit: Duration) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || match wait.recv_timeout(limit) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
                true
            }
            _ => false,
        });
        Watchdog { done, thread }
    }

    /// Whether the limit was reached.
    fn disarm(self) -> bool {
        let _ = self.done.send(());
        self.thread.join().expect("watchdog")
    }
}

fn kill_group(pgid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal);
}

/// Stops a process group started by the test: SIGTERM, then SIGKILL after
/// `grace`; returns what it wrote on stdout and stderr (both piped to one
/// file).
pub struct Background {
    /// `None` once stopped.
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    /// Starts `command` in its own process group, its output appended to
    /// `log`.
    pub fn start(mut command: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        Background {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// The group leader's pid, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the whole group; returns its log.
    pub fn stop(mut self, grace: Duration) -> String {
        self.terminate(grace);
        self.log()
    }

    /// SIGKILLs the whole group at once (no SIGTERM first); returns its
    /// log.
    pub fn kill(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id(), nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        self.log()
    }

    fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        kill_group(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        // The group's other processes may outlive its leader.
        kill_group(child.id(), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// A RabbitMQ broker of the test's own: `rabbitmq-server` run as root
/// without systemd, with its own node name, data and log dirs, listening
/// on 127.0.0.1 on free ports. Stopped when dropped.
pub struct Rabbitmq {
    pub url: String,
    /// The Erlang node name, for `rabbitmqctl -n`.
    node: String,
    port: u16,
    dist_port: u16,
    /// How many times `rabbitmq-server` was started (each has its log).
    starts: usize,
    server: Option<Background>,
    dir: tempfile::TempDir,
}

impl Rabbitmq {
    /// Starts the broker and waits until it takes connections (at most
    /// two minutes).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dep8-rabbitmq.")
            .tempdir()
            .expect("temp dir");
        let [port, dist_port] = free_ports();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        let mut broker = Rabbitmq {
            url: format!("amqp://127.0.0.1:{port}"),
            node: format!("dep8-{}-{port}@localhost", std::process::id()),
            port,
            dist_port,
            starts: 0,
            server: None,
            dir,
        };
        broker.launch();
        broker
    }

    /// Starts `rabbitmq-server` on this broker's ports and dirs and waits
    /// until it takes connections.
    fn launch(&mut self) {
        let base = self.dir.path();
        let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        command
            .current_dir(base)
            // The Erlang cookie goes into $HOME.
            .env("HOME", base)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", base.join("pid"));
        self.starts += 1;
        let log = base.join(format!("server.{}.log", self.starts));
        self.server = Some(Background::start(command, &log));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let probe = Command::new("amqp-declare-queue")
                .args(["--url", &self.url, "--queue", "dep8-probe"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("amqp-declare-queue");
            if probe.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not take connections on {} within 2 minutes:\n{}",
                self.url,
                self.server
                    .as_ref()
                    .map(Background::log)
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the broker (SIGTERM: a clean shutdown, which keeps durable
    /// queues and persistent messages) and starts it again on the same
    /// node, ports and data; returns once it takes connections.
    pub fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_secs(30));
        }
        self.launch();
    }

    /// Each queue's name with its ready and unacknowledged message counts
    /// (`rabbitmqctl list_queues`).
    pub fn queue_counts(&self) -> Vec<(String, u64, u64)> {
        // rabbitmqctl's wrapper in /usr/sbin sets HOME to the system
        // broker's; this broker's cookie is in its own dir.
        let out = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .env("HOME", self.dir.path())
            .args(["-q", "-n", &self.node, "list_queues", "--no-table-headers"])
            .args(["name", "messages_ready", "messages_unacknowledged"])
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl list_queues: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words[..] {
                    [name, ready, unacked] => {
                        Some((name.to_string(), ready.parse().ok()?, unacked.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Waits until something declared `queue` (at most `limit`).
    pub fn await_queue(&self, queue: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        // amqp-get exits 2 on an empty queue, 1 on a missing one (and 0
        // would take a message: nothing is published before this).
        while Command::new("amqp-get")
            .args(["--url", &self.url, "--queue", queue])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("amqp-get")
            .code()
            != Some(2)
        {
            assert!(
                Instant::now() < deadline,
                "nothing declared the queue {queue} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Publishes `body` with `routing_key` (a queue name), persistent.
    pub fn publish(&self, routing_key: &str, body: &str) {
        let mut child = Command::new("amqp-publish")
            .args([
                "--url",
                &self.url,
                "--persistent",
                "--routing-key",
                routing_key,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("amqp-publish");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .expect("amqp-publish stdin");
        assert!(
            child.wait().expect("amqp-publish").success(),
            "amqp-publish"
        );
    }

    /// Takes `count` messages from `queue`, waiting for them at most
    /// `limit`; each message's body is written to a file in `dir`, whose
    /// paths are returned in the order they came.
    pub fn consume(&self, queue: &str, count: usize, dir: &Path, limit: Duration) -> Vec<PathBuf> {
        // amqp-consume runs its command once per message, the body on stdin.
        let script = format!(
            "cat > \"{}/message.$(date +%s%N)\"",
            dir.display().to_string().replace('"', "\\\"")
        );
        let mut command = Command::new("amqp-consume");
        command.args([
            "--url",
            &self.url,
            "--queue",
            queue,
            "--count",
            &count.to_string(),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        let out = output_within(command, limit);
        assert!(
            out.status.success(),
            "amqp-consume on {queue}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut messages: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("message dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        messages.sort();
        messages
    }
}

impl Drop for Rabbitmq {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_secs(20));
        }
    }
}

/// The chroot debci's schroot backend opens for bookworm on amd64
/// (backends/schroot/environment.sh fixes the name:
/// `debci-SUITE-ARCH`); its sessions are `debci-bookworm-amd64-PACKAGE`.
pub const DEBCI_CHROOT: &str = "debci-bookworm-amd64";

/// The definition of the schroot chroot `chroot` (as `schroot --config`
/// prints it) under the name [`DEBCI_CHROOT`], without its aliases, with
/// the mounts of the `debci` profile that debci's create-testbed gives its
/// chroots: not the host's /tmp (the default profile binds it, and runs in
/// concurrent sessions then share autopkgtest's /tmp/autopkgtest_script_pid).
/// The users stay the host's, among them debci's.
pub fn debci_chroot_definition(chroot: &str) -> String {
    let out = Command::new("schroot")
        .args(["--config", "--chroot", &format!("chroot:{chroot}")])
        .stdin(Stdio::null())
        .output()
        .expect("schroot");
    assert!(
        out.status.success(),
        "schroot --config --chroot chroot:{chroot}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .replace(&format!("[{chroot}]"), &format!("[{DEBCI_CHROOT}]"))
        .replace("aliases=\n", "")
        .lines()
        .map(|line| match line.starts_with("setup.fstab=") {
            true => "setup.fstab=debci/fstab\n".to_string(),
            false => format!("{line}\n"),
        })
        .collect()
}

/// What debci's create-testbed for schroot puts into its chroots and the
/// test rootfs lacks: deb-src lines (for `apt-get source`) and a `debci`
/// user (debci runs tests with `--user debci`). Given to autopkgtest as a
/// setup commands file through debci's config.
pub const DEBCI_CHROOT_SETUP: &str = "\
if ! grep -q '^deb-src' /etc/apt/sources.list; then
    sed -n 's/^deb\\s/deb-src /p' /etc/apt/sources.list >> /etc/apt/sources.list
    apt-get update -q
fi
id debci >/dev/null 2>&1 || useradd --home-dir /home/debci --create-home debci
";

/// What debci reads back from an autopkgtest output dir (`debci-test`,
/// `debci-worker`, `debci-collector`): the exit code and the status it maps
/// to, the tested version, whether there is a log and a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebciResult {
    pub status: String,
    pub exitcode: String,
    /// The last word of `testpkg-version`; "n/a" when there is none, as
    /// debci records it.
    pub version: String,
    /// `log` or `log.gz` is there and not empty.
    pub log: bool,
    /// `duration` holds a number of seconds (`None`: not looked for).
    pub duration: Option<bool>,
}

impl DebciResult {
    /// Reads `dir`; `duration` tells whether debci wrote a duration there
    /// (`debci test` does, `debci localtest` does not).
    pub fn read(dir: &Path, duration: bool) -> Self {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let exitcode = read("exitcode").trim().to_string();
        let version = read("testpkg-version")
            .split_whitespace()
            .last()
            .unwrap_or("n/a")
            .to_string();
        let non_empty = |name: &str| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() > 0);
        DebciResult {
            status: debci_status(&exitcode).to_string(),
            exitcode,
            version,
            log: non_empty("log") || non_empty("log.gz"),
            duration: duration.then(|| read("duration").trim().parse::<u64>().is_ok()),
        }
    }
}

/// The status debci gives an autopkgtest exit code (`debci-worker`'s
/// `case`): 0 and 2 pass; 4, 6, 12 and 14 fail; 8 neutral; anything else
/// (16, 20, none) tmpfail.
pub fn debci_status(exitcode: &str) -> &'static str {
    match exitcode {
        "0" | "2" => "pass",
        "4" | "6" | "12" | "14" => "fail",
        "8" => "neutral",
        _ => "tmpfail",
    }
}

/// The Python that drives Debusine 0.11's real autopkgtest task
/// (`debusine.tasks.autopkgtest.Autopkgtest`), from the installed
/// python3-debusine. The task is made from its task data, as the server
/// sends it; its executor is the real `UnshareExecutor`, made without its
/// constructor (which downloads the image from a Debusine server) and given
/// the image's metadata and local path, as `download_image` leaves them.
///
/// - `cmdline DSC TARBALL`: `configure_for_execution` on the .dsc's
///   directory (its .dsc and every .deb there), then prints `_cmdline()`
///   as a JSON array;
/// - `parse DIR RETURNCODE`: `_parse_summary_file(DIR/artifact-dir/summary)`
///   and `task_succeeded(RETURNCODE, DIR)`, printed as JSON; a summary the
///   parser refuses raises, as it does in Debusine.
const DEBUSINE_TASK: &str = r#"
import json, sys, types
from pathlib import Path
from debusine.tasks.autopkgtest import Autopkgtest
from debusine.tasks.executors.unshare import UnshareExecutor

task = Autopkgtest({
    "input": {"source_artifact": 1, "binary_artifacts": []},
    "host_architecture": "amd64",
    "environment": "debian/match:codename=bookworm",
    "backend": "unshare",
    "use_packages_from_base_repository": True,
    "timeout": {"test": 10},
})
mode = sys.argv[1]
if mode == "cmdline":
    dsc, tarball = Path(sys.argv[2]), sys.argv[3]
    executor = UnshareExecutor.__new__(UnshareExecutor)
    executor.system_image = types.SimpleNamespace(
        data={"architecture": "amd64", "codename": "bookworm", "vendor": "debian"})
    executor._local_path = Path(tarball)
    task.executor = executor
    task._source_package_path = dsc.name
    assert task.configure_for_execution(dsc.parent), f"{dsc} is not a valid .dsc"
    print(json.dumps(task._cmdline()))
elif mode == "parse":
    directory, returncode = Path(sys.argv[2]), int(sys.argv[3])
    parsed = task._parse_summary_file(directory / Autopkgtest.SUMMARY_FILE)
    succeeded = task.task_succeeded(returncode, directory)
    print(json.dumps({
        "results": {name: [str(r.status), r.details] for name, r in parsed.items()},
        "succeeded": succeeded,
    }))
"#;

/// Debian's python3 (the one python3-debusine is installed for, whatever
/// python3 comes first in PATH).
const PYTHON: &str = "/usr/bin/python3";

/// Runs [`DEBUSINE_TASK`] with `args`; its stdout, or Err with its stderr.
fn debusine_task(args: &[&str]) -> Result<String, String> {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(DEBUSINE_TASK)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The command line Debusine's autopkgtest task runs for `dsc` (and the
/// .debs beside it) on an unshare executor with the image `tarball`.
pub fn debusine_cmdline(dsc: &Path, tarball: &str) -> Vec<String> {
    let dsc = dsc.to_str().expect("utf-8 path");
    let json = debusine_task(&["cmdline", dsc, tarball])
        .unwrap_or_else(|e| panic!("Debusine's _cmdline() for {dsc}:\n{e}"));
    serde_json::from_str(&json).expect("a JSON array")
}

/// What Debusine makes of a run in `dir` (its summary at
/// `artifact-dir/summary`) that exited with `returncode`: each test's
/// status and details, and whether the task succeeded. Err with the
/// parser's exception when it refuses the summary.
pub fn debusine_verdict(dir: &Path, returncode: i32) -> Result<serde_json::Value, String> {
    let dir = dir.to_str().expect("utf-8 path");
    let json = debusine_task(&["parse", dir, &returncode.to_string()])?;
    Ok(serde_json::from_str(&json).expect("JSON"))
}
