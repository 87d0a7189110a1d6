//! A debci fleet on one host: a RabbitMQ broker of the test's own, jobs
//! enqueued by debci's own code (`Debci::Job#enqueue`, as `debci enqueue`
//! and debci's web front end call it), `debci worker` processes that each
//! run on a [`Machine`] of their own and take `autopkgtest` from an
//! [`AutopkgtestOnPath`], and debci's own `debci collector` ([`Collector`])
//! filing the results into the site's database, which the test reads back
//! with debci's own models ([`Site::records`]).
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
/// `RUN_ID MESSAGE`. This is what `debci enqueue` and debci's web API do:
/// the job is a row of the site's database first, and its id is the
/// message's run id, which is all `Debci::Job.receive` (the collector)
/// finds a result's job by. `debci enqueue` itself prints no run id and
/// takes no extra apt source, hence the Ruby.
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

    /// `program` with the site's debci environment: its config, its data
    /// dir (and so its database, `DATA/debci.sqlite3`) and the broker.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("debci_config_dir", self.dir.path().join("config"))
            .env("debci_data_basedir", self.dir.path().join("data"))
            .env("debci_amqp_server", &self.broker_url)
            .env("debci_quiet", "true");
        command
    }

    /// Declares every backend's job queue as debci's workers do (priority
    /// queues: a queue declared otherwise makes debci's enqueue fail).
    pub fn declare_queues(&self) {
        for backend in [Backend::Null, Backend::Schroot] {
            let mut command = self.command("debci");
            command.args(["amqp", "declare-queue", "--backend", backend.name()]);
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
        let mut child = self
            .command("ruby")
            .arg("-e")
            .arg(DEBCI_ENQUEUE)
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

/// The Ruby that lists every job of debci's database with debci's own
/// models (the same code the site's pages use), one line each:
/// `RUN_ID PACKAGE STATUS VERSION DATE RESULT_DIR`, `-` for a job with no
/// result yet; DATE in seconds since the epoch.
const DEBCI_JOBS: &str = r##"
require 'debci'
require 'debci/job'
Debci::Job.includes(:package).order(:id).each do |job|
  puts [job.id, job.package.name, job.status || '-', job.version || '-',
        job.date ? job.date.to_i : '-', job.autopkgtest_data_dir].join(' ')
end
"##;

/// debci's collector program (package debci-collector).
pub const DEBCI_COLLECTOR: &str = "/usr/share/debci/bin/debci-collector";

/// Runs debci's collector program (its path is the first argument) after
/// making it log the run id of each result it is handed (`dep8-fleet:
/// delivered run N`); debci then files the result as usual.
const LOG_DELIVERIES: &str = r##"
require 'debci/collector'
module Dep8FleetDeliveries
  def receive(directory)
    Debci.log("dep8-fleet: delivered run #{File.basename(directory)}")
    super
  end
end
Debci::Collector.prepend(Dep8FleetDeliveries)
load ARGV.shift
"##;

impl Site {
    /// Starts debci's collector on the site's database and broker.
    pub fn start_collector(&self) -> Collector {
        let log = self.dir.path().join("collector.log");
        let mut command = self.command("sh");
        command
            .env("debci_quiet", "false")
            .args(["-c", SUPERVISE, "sh", "ruby", "-e", LOG_DELIVERIES])
            .arg(DEBCI_COLLECTOR);
        Collector {
            process: Some(Background::start(command, &log)),
            log,
        }
    }

    /// Every job in debci's database by run id, with the result the
    /// collector filed for it (`None` while there is none): debci's
    /// status and tested version from the database, the exit code and
    /// the log from the result dir the collector stored.
    pub fn records(&self) -> BTreeMap<u64, Option<JobResult>> {
        let out = self
            .command("ruby")
            .args(["-e", DEBCI_JOBS])
            .output()
            .expect("ruby");
        assert!(
            out.status.success(),
            "reading debci's jobs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let [id, package, status, version, date, dir] = words[..] else {
                    panic!("a job line of six words: {line}");
                };
                let run_id: u64 = id.parse().expect("a run id");
                let result = (status != "-").then(|| {
                    let dir = Path::new(dir);
                    let artifact = |name: &str| artifact(dir, name);
                    let date: u64 = date.parse().expect("a date");
                    JobResult::new(
                        run_id,
                        package,
                        artifact("exitcode").trim(),
                        status,
                        version,
                        &artifact("testbed-packages"),
                        SystemTime::UNIX_EPOCH + Duration::from_secs(date),
                        &check("zcat", &["-f", "log.gz"], dir),
                    )
                });
                (run_id, result)
            })
            .collect()
    }
}

/// The file `name` of the artifacts debci's collector stored in the result
/// dir `dir` (`artifacts.tar.gz`: every file of the result but the log);
/// empty when there is none.
fn artifact(dir: &Path, name: &str) -> String {
    let out = Command::new("tar")
        .args(["-xzOf", "artifacts.tar.gz", name])
        .current_dir(dir)
        .output()
        .expect("tar");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `debci collector` for a [`Site`]: [`DEBCI_COLLECTOR`] as is, run by
/// [`LOG_DELIVERIES`], restarted when it fails as systemd restarts
/// debci-collector.service. Stopped when dropped.
pub struct Collector {
    process: Option<Background>,
    log: PathBuf,
}

impl Collector {
    /// What the collector wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The run id of each result the collector was handed, in order: a run
    /// whose result was published twice is there twice.
    pub fn deliveries(&self) -> Vec<u64> {
        self.log()
            .lines()
            .filter_map(|line| {
                line.strip_prefix("dep8-fleet: delivered run ")?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
    }
}

/// Waits (at most `limit`) until debci's collector has taken and
/// acknowledged every result on `debci_results`; it acknowledges a result
/// once it is filed in the database.
pub fn await_collected(broker: &Rabbitmq, limit: Duration, collector: &Collector) {
    let deadline = Instant::now() + limit;
    loop {
        let counts = queue_counts(broker);
        let (ready, unacked) = counts.get("debci_results").copied().unwrap_or_default();
        if ready + unacked == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} result(s) not taken and {unacked} not filed by debci's collector \
             after {limit:?}\n--- collector log:\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_secs(1));
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

/// The supervisor loop that runs its arguments as a command again each
/// time it fails, as systemd's `Restart=on-failure` does for debci's units
/// (debci's 5 s are 2 s here).
const SUPERVISE: &str = r#"until "$@"; do
    echo "dep8-fleet: $1 exited ($?), restarting in 2 s"
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
            .args([
                "-c",
                SUPERVISE,
                "sh",
                "debci",
                "worker",
                "-b",
                backend.name(),
            ])
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

/// One job's result, as a worker published it or as debci's collector
/// filed it.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub run_id: u64,
    pub package: String,
    pub exitcode: String,
    /// debci's status for the exit code.
    pub status: String,
    /// The tested source version: the last word of `testpkg-version`,
    /// "n/a" when there is none (debci's job version).
    pub version: String,
    /// The testbed's packages (`testbed-packages`: name and version) as
    /// the runner listed them once the testbed was set up.
    pub testbed_packages: BTreeMap<String, String>,
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
    /// The result of run `run_id`, whose `testbed-packages` file holds
    /// `testbed_packages` and whose whole log is `log`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        run_id: u64,
        package: &str,
        exitcode: &str,
        status: &str,
        version: &str,
        testbed_packages: &str,
        finished: SystemTime,
        log: &str,
    ) -> Self {
        JobResult {
            run_id,
            package: package.to_string(),
            exitcode: exitcode.to_string(),
            status: status.to_string(),
            version: version.to_string(),
            testbed_packages: testbed_packages
                .lines()
                .filter_map(|line| {
                    let (name, version) = line.split_once('\t')?;
                    Some((name.to_string(), version.to_string()))
                })
                .collect(),
            finished,
            log_tail: tail(log, 25),
            network_trouble: NETWORK_TROUBLE.iter().any(|m| log.contains(m)),
            dpkg_busy: log.contains(DPKG_BUSY),
        }
    }

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
    let exitcode = read("exitcode");
    let exitcode = exitcode.trim();
    let version = read("testpkg-version");
    let name = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
    JobResult::new(
        name(&run).parse().expect("a run id"),
        &name(run.parent().expect("package dir")),
        exitcode,
        debci_status(exitcode),
        version.split_whitespace().last().unwrap_or("n/a"),
        &read("testbed-packages"),
        std::fs::metadata(run.join("duration"))
            .and_then(|m| m.modified())
            .expect("duration"),
        &check("zcat", &["-f", "log.gz"], &run),
    )
}
