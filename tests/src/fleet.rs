//! A debci fleet on one host: a RabbitMQ broker of the test's own, jobs
//! enqueued by debci's own code (`Debci::Job#enqueue`, as `debci enqueue`
//! and debci's web front end call it), and `debci worker` processes that
//! each run on a [`Machine`] of their own and take `autopkgtest` from an
//! [`AutopkgtestOnPath`]. The results are read back from debci's results
//! queue as its collector would read them.
//!
//! A machine stands for a worker host: the worker runs in a private mount
//! namespace in which schroot's state (/var/lib/schroot, /run/schroot)
//! and chroot definitions (/etc/schroot/chroot.d) are the machine's own,
//! and its TMPDIR (where dep8 keeps its run dirs) is the machine's. Two
//! workers then never share a schroot session name (debci names a session
//! after the package it tests), and nothing of the host's schroot set-up
//! is touched.

use crate::callers::{
    debci_chroot_definition, debci_status, AutopkgtestOnPath, Background, Rabbitmq, DEBCI_CHROOT,
    DEBCI_CHROOT_SETUP,
};
use crate::e2e::{check, dep8_bin, write};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The debci backends the fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// The worker's host itself.
    Null,
    /// A session of the machine's [`DEBCI_CHROOT`].
    Schroot,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Null => "null",
            Backend::Schroot => "schroot",
        }
    }

    /// debci's job queue for this backend on amd64.
    pub fn queue(self) -> String {
        format!("debci-tests-amd64-{}", self.name())
    }
}

/// One test request, as debci's database holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Job {
    /// A bookworm source package.
    pub package: String,
    /// The package's backend (debci's `packages.backend`).
    pub backend: Backend,
    /// `RELEASE=PKG,src:NAME,...` (`debci enqueue --pin-packages`).
    pub pin_packages: Option<String>,
    /// The name of an entry of debci's `extra_apt_sources_list.yaml`.
    pub extra_apt_source: Option<String>,
}

impl Job {
    pub fn new(package: &str, backend: Backend) -> Self {
        Job {
            package: package.to_string(),
            backend,
            pin_packages: None,
            extra_apt_source: None,
        }
    }

    pub fn pinned(self, pin_packages: &str) -> Self {
        Job {
            pin_packages: Some(pin_packages.to_string()),
            ..self
        }
    }

    pub fn with_extra_apt_source(self, name: &str) -> Self {
        Job {
            extra_apt_source: Some(name.to_string()),
            ..self
        }
    }
}

/// A job in the queue: its run id (debci's job id) and when it was sent.
#[derive(Debug, Clone)]
pub struct Enqueued {
    pub run_id: u64,
    pub job: Job,
    pub at: SystemTime,
    /// The message debci published (`PACKAGE SUITE run-id:N ...`).
    pub message: String,
}

/// The Ruby that enqueues jobs with debci's own code. Each line of stdin
/// is `PACKAGE BACKEND PIN EXTRA` (`-` for none); for each, it sets the
/// package's backend, creates the job and calls `Debci::Job#enqueue`
/// (which picks the queue with `Debci::Backend.select`), then prints
/// `RUN_ID MESSAGE`.
const DEBCI_ENQUEUE: &str = r##"
require 'debci'
require 'debci/job'
Debci::DB.migrate
user = Debci::User.find_or_create_by!(username: 'dep8-fleet')
STDIN.each_line do |line|
  name, backend, pin, extra = line.split
  package = Debci::Package.find_or_create_by!(name: name)
  package.update!(backend: backend)
  pins = []
  if pin != '-'
    suite, packages = pin.split('=', 2)
    pins << [*packages.split(','), suite]
  end
  job = Debci::Job.create!(
    package: package, suite: 'bookworm', arch: 'amd64', requestor: user,
    pin_packages: pins, extra_apt_sources: extra == '-' ? [] : [extra])
  job.enqueue
  puts "#{job.id} #{package.name} bookworm #{job.enqueue_parameters.join(' ')}"
  STDOUT.flush
end
"##;

/// debci's central side: its config (the broker, the backends, the extra
/// apt sources users may ask for) and its database, in a temp dir.
pub struct Site {
    dir: tempfile::TempDir,
    broker_url: String,
}

impl Site {
    /// `extra_apt_sources`: (name, one-line apt source) pairs.
    pub fn new(broker_url: &str, extra_apt_sources: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dep8-fleet-site.")
            .tempdir()
            .expect("temp dir");
        write(
            &dir.path().join("config/debci.conf"),
            &debci_conf(broker_url, "debci_backend_list=\"null schroot\"\n"),
        );
        let yaml: String = extra_apt_sources
            .iter()
            .map(|(name, entry)| format!("{name}:\n  entry: {entry}\n"))
            .collect();
        write(
            &dir.path().join("config/extra_apt_sources_list.yaml"),
            &yaml,
        );
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        Site {
            dir,
            broker_url: broker_url.to_string(),
        }
    }

    /// Declares every backend's job queue as debci's workers do (priority
    /// queues: a queue declared otherwise makes debci's enqueue fail).
    pub fn declare_queues(&self) {
        for backend in [Backend::Null, Backend::Schroot] {
            let mut command = Command::new("debci");
            command
                .env("debci_config_dir", self.dir.path().join("config"))
                .args(["amqp", "declare-queue", "--backend", backend.name()]);
            let out = command.output().expect("debci amqp declare-queue");
            assert!(
                out.status.success(),
                "debci amqp declare-queue --backend {}: {}",
                backend.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Enqueues `jobs` with debci's code, in order.
    pub fn enqueue(&self, jobs: &[Job]) -> Vec<Enqueued> {
        let input: String = jobs
            .iter()
            .map(|job| {
                format!(
                    "{} {} {} {}\n",
                    job.package,
                    job.backend.name(),
                    job.pin_packages.as_deref().unwrap_or("-"),
                    job.extra_apt_source.as_deref().unwrap_or("-")
                )
            })
            .collect();
        let at = SystemTime::now();
        let mut child = Command::new("ruby")
            .arg("-e")
            .arg(DEBCI_ENQUEUE)
            .env("debci_config_dir", self.dir.path().join("config"))
            .env("debci_data_basedir", self.dir.path().join("data"))
            .env("debci_amqp_server", &self.broker_url)
            .env("debci_quiet", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ruby");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("ruby's stdin");
        let out = child.wait_with_output().expect("ruby");
        assert!(
            out.status.success(),
            "debci's enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), jobs.len(), "one line per job: {stdout}");
        jobs.iter()
            .zip(lines)
            .map(|(job, line)| {
                let (id, message) = line.split_once(' ').expect("RUN_ID MESSAGE");
                Enqueued {
                    run_id: id.parse().expect("a run id"),
                    job: job.clone(),
                    at,
                    message: message.to_string(),
                }
            })
            .collect()
    }
}

/// A debci.conf for bookworm on amd64 with `broker_url`, and `extra`.
fn debci_conf(broker_url: &str, extra: &str) -> String {
    format!(
        "debci_amqp_server={broker_url}\ndebci_suite=bookworm\ndebci_arch=amd64\n\
         debci_backend=null\n{extra}"
    )
}

/// A worker host (see the module's doc): a dir holding its schroot state,
/// its chroot definitions, its temp dir, its debci config and data.
pub struct Machine {
    pub name: String,
    dir: tempfile::TempDir,
}

/// What [`Machine::command`] runs first in the machine's mount namespace:
/// the machine's dirs over schroot's, then the command.
const ENTER_MACHINE: &str = r#"set -e
mount --bind "$DEP8_MACHINE/schroot-state" /var/lib/schroot
mount --bind "$DEP8_MACHINE/schroot-run" /run/schroot
mount --bind "$DEP8_MACHINE/chroot.d" /etc/schroot/chroot.d
exec "$@"
"#;

impl Machine {
    /// A machine whose debci workers use `backend`; on schroot, `chroot`
    /// (DEP8_TEST_SCHROOT) is defined as debci's chroot there.
    pub fn new(name: &str, broker_url: &str, backend: Backend, chroot: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("dep8-fleet-{name}."))
            .tempdir()
            .expect("temp dir");
        let base = dir.path();
        for sub in [
            "schroot-state/session",
            "schroot-state/union/overlay",
            "schroot-state/union/underlay",
            "schroot-state/unpack",
            "schroot-run",
            "chroot.d",
            "tmp",
            "data",
        ] {
            std::fs::create_dir_all(base.join(sub)).expect("machine dir");
        }
        // schroot's own dir, made by schroot at its first session anyway.
        std::fs::create_dir_all("/run/schroot").expect("/run/schroot");
        let autopkgtest_args = match backend {
            Backend::Null => String::new(),
            Backend::Schroot => {
                let chroot = chroot.expect("a chroot for a schroot machine");
                write(
                    &base.join("chroot.d").join(DEBCI_CHROOT),
                    &debci_chroot_definition(chroot),
                );
                let setup = base.join("debci-chroot-setup");
                write(&setup, DEBCI_CHROOT_SETUP);
                format!(
                    "debci_autopkgtest_args=\"--setup-commands={}\"\n",
                    setup.display()
                )
            }
        };
        write(
            &base.join("config/debci.conf"),
            &debci_conf(broker_url, &autopkgtest_args),
        );
        Machine {
            name: name.to_string(),
            dir,
        }
    }

    /// `program` in the machine: in a mount namespace of its own with the
    /// machine's schroot dirs, the machine's TMPDIR, debci config and data.
    pub fn command(&self, program: &str) -> Command {
        let base = self.dir.path();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(ENTER_MACHINE)
            .args(["sh", program])
            .env("DEP8_MACHINE", base)
            .env("TMPDIR", base.join("tmp"))
            .env("debci_config_dir", base.join("config"))
            .env("debci_data_basedir", base.join("data"))
            .stdin(Stdio::null());
        command
    }

    /// `dep8 clean` in the machine; returns what it did.
    pub fn dep8_clean(&self) -> String {
        let mut command = self.command(dep8_bin().to_str().expect("utf-8 path"));
        command.arg("clean");
        let out = command.output().expect("dep8 clean");
        assert!(
            out.status.success(),
            "dep8 clean on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What a run of dep8 left on the machine: schroot sessions (and their
    /// union and mount dirs), dep8 run dirs, and live processes marked with
    /// one of its run dirs.
    pub fn leftovers(&self) -> Vec<String> {
        let base = self.dir.path();
        let mut found = Vec::new();
        for sub in [
            "schroot-state/session",
            "schroot-state/union/overlay",
            "schroot-state/union/underlay",
            "schroot-run/mount",
        ] {
            found.extend(entries(&base.join(sub)));
        }
        found.extend(
            entries(&base.join("tmp"))
                .into_iter()
                .filter(|path| path.contains("/dep8-run.")),
        );
        let mark = format!("DEP8_RUN_DIR={}/", base.join("tmp").display());
        found.extend(processes_marked(&mark));
        found
    }

    /// The debci-worker temp dirs (`debci-worker-RUN_ID-XXXXXXXXXX`) in
    /// the machine's TMPDIR: the run ids of the jobs a worker there took
    /// and did not finish (debci removes the dir when the job ends).
    pub fn unfinished_run_ids(&self) -> Vec<u64> {
        entries(&self.dir.path().join("tmp"))
            .iter()
            .filter_map(|path| {
                let name = path.rsplit('/').next()?;
                let rest = name.strip_prefix("debci-worker-")?;
                rest.split('-').next()?.parse().ok()
            })
            .collect()
    }

    /// Whether a schroot session is open on the machine.
    pub fn has_session(&self) -> bool {
        !entries(&self.dir.path().join("schroot-state/session")).is_empty()
    }
}

/// How many processes are in the mount namespace `namespace` (the link
/// target of `/proc/PID/ns/mnt`).
fn processes_in(namespace: &Path) -> usize {
    std::fs::read_dir("/proc")
        .map(|procs| {
            procs
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path().join("ns/mnt")).is_ok_and(|ns| ns == namespace)
                })
                .count()
        })
        .unwrap_or(0)
}

/// The paths in `dir` (none when it cannot be read).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The live processes whose environment holds a variable starting with
/// `mark`, as `PID COMMAND`.
fn processes_marked(mark: &str) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|var| var.starts_with(mark.as_bytes()))
            })
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            format!("process {pid}: {cmdline}")
        })
        .collect()
}

/// A `debci worker` on a machine, restarted when it exits as systemd
/// restarts debci-worker@.service (`Restart=on-failure`; debci's 5 s
/// are 2 s here). Stopped when dropped.
pub struct Worker {
    pub machine: Machine,
    pub backend: Backend,
    process: Option<Background>,
    log: PathBuf,
    /// The mount namespace of a killed worker (`/proc/PID/ns/mnt`).
    killed_namespace: Option<PathBuf>,
}

/// The supervisor loop that runs `debci worker -b BACKEND` in a machine.
const SUPERVISE: &str = r#"until debci worker -b "$1"; do
    echo "dep8-fleet: debci worker exited ($?), restarting in 2 s"
    sleep 2
done"#;

impl Worker {
    /// Starts the worker; `on` gives its `autopkgtest`.
    pub fn start(machine: Machine, backend: Backend, on: &AutopkgtestOnPath) -> Self {
        let log = machine.dir.path().join("worker.log");
        let process = Self::supervise(&machine, backend, on, &log);
        Worker {
            machine,
            backend,
            process: Some(process),
            log,
            killed_namespace: None,
        }
    }

    /// [`SUPERVISE`] on `machine`, its output appended to `log`.
    fn supervise(
        machine: &Machine,
        backend: Backend,
        on: &AutopkgtestOnPath,
        log: &Path,
    ) -> Background {
        let mut command = machine.command("sh");
        command
            .args(["-c", SUPERVISE, "sh", backend.name()])
            .env("PATH", on.path());
        Background::start(command, log)
    }

    /// What the worker wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the worker's process group at once: debci's worker, its
    /// amqp-consume, the job's debci-test and autopkgtest. What the
    /// testbed started in groups of its own is left running, as when
    /// `kill -9` hits a worker.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            self.killed_namespace = process
                .id()
                .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok());
            process.kill();
        }
    }

    /// Starts the worker again on its machine (after [`Worker::kill`]).
    /// Once no process is left in a killed worker's mount namespace (at
    /// most a minute), as a machine's worker comes back after the dead
    /// one is gone.
    pub fn restart(&mut self, on: &AutopkgtestOnPath) {
        self.stop();
        if let Some(namespace) = self.killed_namespace.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while processes_in(&namespace) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        self.process = Some(Self::supervise(&self.machine, self.backend, on, &self.log));
    }

    /// Stops the worker (SIGTERM, then SIGKILL after a grace time).
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
    }

    /// The packages the worker started, in order (debci's
    /// `PACKAGE SUITE/ARCH/BACKEND started` lines).
    pub fn started(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                (words.len() == 3 && words[2] == "started").then(|| words[0].to_string())
            })
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One result from debci's results queue, as debci's collector reads it.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub run_id: u64,
    pub package: String,
    pub exitcode: String,
    /// debci's status for the exit code.
    pub status: String,
    /// The mtime of the result's `duration` (debci's job date): when
    /// debci-test finished, just before the worker published it.
    pub finished: SystemTime,
    /// The last lines of the run's log, for messages.
    pub log_tail: String,
    /// The log says apt could not reach or fetch from the mirror (see
    /// [`NETWORK_TROUBLE`]).
    pub network_trouble: bool,
    /// The log says apt found dpkg's lock held ([`DPKG_BUSY`]): on null the
    /// testbed is the host, where another program may be running apt.
    pub dpkg_busy: bool,
}

impl JobResult {
    /// Whether the run failed for a reason outside the package and the
    /// runner: the mirror (a tmpfail with apt's network errors) or the
    /// host's dpkg in use by someone else.
    pub fn failed_by_surroundings(&self) -> bool {
        (self.status == "tmpfail" && self.network_trouble)
            || (self.status != "pass" && self.dpkg_busy)
    }
}

/// What apt says when another program holds dpkg's lock.
pub const DPKG_BUSY: &str = "Could not get lock /var/lib/dpkg/";

/// What apt says when the mirror or the network fails it.
pub const NETWORK_TROUBLE: [&str; 7] = [
    "Failed to fetch",
    "Temporary failure resolving",
    "Could not connect to",
    "Connection timed out",
    "Connection failed",
    "Hash Sum mismatch",
    "apt failed to download packages",
];

/// Each queue's (ready, unacknowledged) message counts.
pub fn queue_counts(broker: &Rabbitmq) -> BTreeMap<String, (u64, u64)> {
    broker
        .queue_counts()
        .into_iter()
        .map(|(name, ready, unacked)| (name, (ready, unacked)))
        .collect()
}

/// Waits (at most `limit`) until no job is left in debci's job queues,
/// ready or being run. A worker acknowledges a job after it published its
/// result, so then every result is in the results queue.
pub fn await_idle(broker: &Rabbitmq, limit: Duration, workers: &[&Worker]) {
    let deadline = Instant::now() + limit;
    loop {
        let counts = queue_counts(broker);
        let pending: u64 = counts
            .iter()
            .filter(|(name, _)| name.starts_with("debci-tests-"))
            .map(|(_, (ready, unacked))| ready + unacked)
            .sum();
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} job(s) still queued or running after {limit:?}: {counts:?}\n{}",
            worker_logs(workers)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The workers' logs, for messages.
pub fn worker_logs(workers: &[&Worker]) -> String {
    workers
        .iter()
        .map(|w| format!("--- worker {} log:\n{}", w.machine.name, w.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Takes every message from debci's results queue and reads each as
/// debci's collector does (the dir holding `exitcode` is the run).
pub fn drain_results(broker: &Rabbitmq) -> Vec<JobResult> {
    let count = queue_counts(broker)
        .get("debci_results")
        .map_or(0, |(ready, _)| *ready) as usize;
    if count == 0 {
        return Vec::new();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let messages = dir.path().join("messages");
    std::fs::create_dir(&messages).expect("messages dir");
    let tarballs = broker.consume("debci_results", count, &messages, Duration::from_secs(120));
    tarballs
        .iter()
        .enumerate()
        .map(|(i, tarball)| {
            let unpacked = dir.path().join(i.to_string());
            std::fs::create_dir(&unpacked).expect("result dir");
            check(
                "tar",
                &["-xzf", tarball.to_str().expect("utf-8 path")],
                &unpacked,
            );
            read_result(&unpacked)
        })
        .collect()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads the one run under `dir` (autopkgtest-incoming/SUITE/ARCH/P/PACKAGE/RUN_ID).
fn read_result(dir: &Path) -> JobResult {
    let out = check("find", &[".", "-name", "exitcode"], dir);
    let exitcode_file = out.lines().next().unwrap_or_else(|| {
        panic!("a result without an exitcode in {}", dir.display());
    });
    let run = dir
        .join(exitcode_file)
        .parent()
        .expect("run dir")
        .to_path_buf();
    let read = |name: &str| std::fs::read_to_string(run.join(name)).unwrap_or_default();
    let exitcode = read("exitcode").trim().to_string();
    let log = check("zcat", &["-f", "log.gz"], &run);
    let name = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
    JobResult {
        run_id: name(&run).parse().expect("a run id"),
        package: name(run.parent().expect("package dir")),
        status: debci_status(&exitcode).to_string(),
        exitcode,
        finished: std::fs::metadata(run.join("duration"))
            .and_then(|m| m.modified())
            .expect("duration"),
        log_tail: tail(&log, 25),
        network_trouble: NETWORK_TROUBLE.iter().any(|m| log.contains(m)),
        dpkg_busy: log.contains(DPKG_BUSY),
    }
}
