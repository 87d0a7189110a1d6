//! One multiplexed ssh connection to a machine: the transport of the ssh
//! backend, and of the qemu backend (sshd inside a VM on a forwarded
//! loopback port).
//!
//! A master `ssh -M -N` holds the connection; every command is a short-lived
//! `ssh -S SOCKET` client run through core's [`run_local`], so a command
//! costs one local fork+exec and one channel, never a new handshake.
//!
//! On the remote side each command runs under a small `sh` wrapper that
//! puts it in its own session (`setsid -w`) and records the session id in a
//! per-connection control dir, so that:
//! - a timeout (or [`SshConnection::close`]) kills the command's whole
//!   process tree over a second channel, and background processes left
//!   behind by a finished command are killed, as [`run_local`] does locally;
//! - a command killed by a signal reports `128 + N` (sshd would report the
//!   signal, and ssh would turn it into its own 255);
//! - a command exiting 255 leaves a marker, so a real 255 is told apart from
//!   ssh's 255 (transport failure, [`TestbedError::Failure`]).
//!
//! The remote machine needs a POSIX `sh` and `setsid` (util-linux). A
//! process that leaves the command's session (a daemon started without
//! systemd) and keeps its stdout open keeps the command from ending until
//! its timeout; autopkgtest's ssh wrapper hunts such processes down
//! through /proc on every command, which dep8 does not pay for.
//!
//! The dirs dep8 makes there (the control dir, the scratch dir) are named
//! on this side, so that on a machine that outlives dep8 the command that
//! removes them is noted for the sweep before they exist
//! ([`SshTarget::outlives_dep8`]).

use dep8_testbed::exec::{copy_down_via_exec, copy_up_via_exec, in_testbed_argv, run_local, Exec};
use dep8_testbed::leftovers::{self, Undo};
use dep8_testbed::{ExecOutcome, ExecRequest, ExitStatus, Result, TestbedError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where an sshd is and how to log in to it.
#[derive(Clone, Debug)]
pub struct SshTarget {
    pub host: String,
    pub port: Option<u16>,
    /// `-l`: the user to log in as (default: ssh's, from its config).
    pub login: Option<String>,
    /// `-i`: the private key.
    pub identity: Option<PathBuf>,
    /// More ssh arguments (`-o Option=value`, ...), passed before dep8's own
    /// options, so they win over dep8's defaults.
    pub ssh_args: Vec<String>,
    /// The known_hosts file the host key is checked against (default: the
    /// user's and the system's).
    pub known_hosts: Option<PathBuf>,
    /// Trust a host key seen for the first time
    /// (`StrictHostKeyChecking=accept-new`) and log that it was. Without
    /// `known_hosts`, the key is recorded in a known_hosts file private to
    /// the connection, so reconnections (after a reboot) are still checked.
    pub accept_new_host_key: bool,
    /// How long to keep trying to connect (a machine still booting).
    pub connect_timeout: Duration,
    /// Set the remote clock to the local one at every (re)connection, in
    /// the same round trip as the connection's probe (a machine restored
    /// from a snapshot wakes up with the snapshot's time). Needs root (as
    /// the login or through `sudo -n`).
    pub sync_clock: bool,
    /// The machine outlives dep8 (it is no VM that dies with it): before
    /// each dir dep8 makes there, the command that removes it is noted for
    /// the sweep ([`leftovers::record_undo`]), so that a SIGKILL of dep8
    /// does not leave it behind.
    pub outlives_dep8: bool,
}

impl SshTarget {
    pub fn new(host: impl Into<String>) -> Self {
        SshTarget {
            host: host.into(),
            port: None,
            login: None,
            identity: None,
            ssh_args: Vec::new(),
            known_hosts: None,
            accept_new_host_key: false,
            connect_timeout: Duration::from_secs(300),
            sync_clock: false,
            outlives_dep8: false,
        }
    }

    /// `user@host:port`, for messages.
    pub fn display(&self) -> String {
        let mut s = String::new();
        if let Some(login) = &self.login {
            s.push_str(login);
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s
    }
}

/// How commands get root on the remote machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    /// The login is root.
    Login,
    /// `sudo -n` works for the login.
    Sudo,
    /// Neither: commands run as the login user.
    None,
}

/// How long a killed command may take to end before it is abandoned.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Lines after which a failed master connection is not retried.
const PERMANENT_FAILURES: &[&str] = &["Host key verification failed"];

/// Runs (as root when possible) the command after the job path, in its own
/// session; `JOB.pid` holds the session id while it runs (emptied, not
/// removed, after: no extra `rm` process) and `JOB.255` marks an exit status
/// of 255. The inner `sh` does not `exec`, so a signal death becomes 128+N.
const WRAPPER: &str = r#"j=$1; shift
setsid -w sh -c 'echo $$ > "$1"; shift; "$@"' dep8-exec "$j.pid" "$@"
rc=$?
read pg < "$j.pid" && kill -KILL "-$pg" 2>/dev/null
: > "$j.pid"
[ $rc -ne 255 ] || : > "$j.255"
exit $rc"#;

/// Kills the session of job `$1` (waiting briefly for it to have started).
const KILL_JOB: &str = r#"i=0
while [ ! -e "$1.pid" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
[ ! -s "$1.pid" ] || { read pg < "$1.pid" && kill -KILL "-$pg"; }"#;

/// Kills every job still running under control dir `$1` and removes it.
const KILL_ALL: &str = r#"for f in "$1"/*.pid; do
  [ -s "$f" ] && read pg < "$f" && kill -KILL "-$pg" 2>/dev/null
done
rm -rf -- "$1""#;

/// Runs `sh -c "$@"` as root where the login can (it is root, or has
/// `sudo -n`), else as the login: for the commands a sweep runs, noted
/// before the connection knows how it gets root.
const AS_ROOT_IF_ABLE: &str = r#"if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then exec sudo -n sh -c "$@"; fi
exec sh -c "$@""#;

/// Removes dir `$1`.
const REMOVE_DIR: &str = r#"rm -rf -- "$1""#;

/// Prints the uid, the boot id, how root is had (`root`, `sudo`,
/// `nosudo`), the machine id (empty without `/etc/machine-id`), and the
/// control dir `$1`: made (it must not exist yet: its
/// name was chosen on this side, see [`remote_name`]), or with `$3` =
/// `again` remade if a reboot removed it. With `$2` (seconds since the
/// epoch), also sets the clock to it. As few
/// processes as possible: each costs under emulation.
const HELLO: &str = r#"u=$(id -u)
if [ "$u" = 0 ]; then r=root; elif sudo -n true >/dev/null 2>&1; then r=sudo; else r=nosudo; fi
if [ -n "$2" ]; then
  case $r in root) date -u -s "@$2" ;; sudo) sudo -n date -u -s "@$2" ;; *) false ;; esac >/dev/null || exit 1
fi
read b < /proc/sys/kernel/random/boot_id
m=; read m 2>/dev/null < /etc/machine-id
echo "$u"; echo "$b"; echo "$r"; echo "$m"
if [ "$3" = again ]; then mkdir -p -m 700 "$1"; else mkdir -m 700 "$1"; fi && echo "$1""#;

/// Kills a remote job when dropped still armed (its command's future was
/// dropped before the command ended): runs the ssh command it holds in the
/// background, reaped by a thread of its own.
struct KillOnDrop(Option<Vec<String>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(argv) = self.0.take() {
            std::thread::spawn(move || {
                let _ = std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            });
        }
    }
}

/// An open, multiplexed ssh connection.
pub struct SshConnection {
    target: SshTarget,
    /// Control socket, master log and (with accept-new) known_hosts.
    local: tempfile::TempDir,
    master: Option<tokio::process::Child>,
    /// Control dir on the remote machine, for job pid files.
    remote_dir: String,
    root: Root,
    boot_id: String,
    machine_id: String,
    next_job: AtomicU64,
    /// The sweep's command for the control dir, while it exists.
    remote_dir_undo: Option<Undo>,
}

impl SshConnection {
    /// Connects (retrying until `target.connect_timeout`), checks the host
    /// key, finds out how to get root and makes a remote control dir.
    pub async fn connect(target: SshTarget) -> Result<Self> {
        // 0700: it holds the ControlMaster socket.
        let local = tempfile::Builder::new()
            .prefix("dep8-ssh.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| TestbedError::failure("creating the ssh control dir", e))?;
        let mut conn = SshConnection {
            target,
            local,
            master: None,
            remote_dir: String::new(),
            root: Root::None,
            boot_id: String::new(),
            machine_id: String::new(),
            next_job: AtomicU64::new(0),
            remote_dir_undo: None,
        };
        conn.reconnect(None).await?;
        Ok(conn)
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The machine's boot id (`/proc/sys/kernel/random/boot_id`) when it
    /// was last connected to.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The machine's `/etc/machine-id` when it was last connected to
    /// (empty if it has none).
    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    /// Whether the master connection still runs, as far as this host can
    /// tell without asking the remote machine.
    pub fn is_up(&mut self) -> bool {
        self.master
            .as_mut()
            .is_some_and(|master| matches!(master.try_wait(), Ok(None)))
    }

    /// How commands get root.
    pub fn root(&self) -> Root {
        self.root
    }

    /// Whether commands run as root.
    pub fn is_root(&self) -> bool {
        self.root != Root::None
    }

    /// Runs `req` on the remote machine, as root when [`Self::is_root`].
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        if req.user.is_some() && !self.is_root() {
            return Err(TestbedError::Unsupported(
                "running as another user without root",
            ));
        }
        let job = format!(
            "{}/{}",
            self.remote_dir,
            self.next_job.fetch_add(1, Ordering::Relaxed)
        );
        let mut remote = vec!["sh".to_string(), "-c".into(), WRAPPER.into()];
        remote.extend(["dep8-exec".to_string(), job.clone()]);
        remote.extend(in_testbed_argv(&req));
        let argv = self.client_argv(&self.as_root(remote));
        // Dropping this future (a caller that gave up) kills the command.
        let mut guard = KillOnDrop(Some(self.client_argv(&self.kill_job_remote(&job))));
        let Some(limit) = req.timeout else {
            let outcome = run_local(&argv, req).await;
            guard.0 = None;
            return self.finish(&job, outcome?).await;
        };
        // The ssh client hands its pipes to the master, so killing it would
        // not end the command: on timeout the remote tree is killed, which
        // ends the client.
        let started = Instant::now();
        let run = run_local(
            &argv,
            ExecRequest {
                timeout: None,
                ..req
            },
        );
        tokio::pin!(run);
        if let Ok(outcome) = tokio::time::timeout(limit, &mut run).await {
            guard.0 = None;
            return self.finish(&job, outcome?).await;
        }
        guard.0 = None;
        self.kill_job(&job).await;
        let mut outcome = match tokio::time::timeout(KILL_GRACE, run).await {
            Ok(outcome) => outcome?,
            Err(_) => {
                tracing::warn!(
                    "a timed-out command on {} did not end after being killed; abandoning it",
                    self.target.display()
                );
                ExecOutcome {
                    status: ExitStatus::Signal(9),
                    timed_out: true,
                    duration: started.elapsed(),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                }
            }
        };
        outcome.status = ExitStatus::Signal(9);
        outcome.timed_out = true;
        Ok(outcome)
    }

    /// Tells a command's own exit status 255 from ssh failing.
    async fn finish(&self, job: &str, outcome: ExecOutcome) -> Result<ExecOutcome> {
        if outcome.status == ExitStatus::Code(255) && !self.exited_255(job).await? {
            return Err(TestbedError::Failure(format!(
                "ssh connection to {} failed{}",
                self.target.display(),
                self.master_log_tail()
            )));
        }
        Ok(outcome)
    }

    /// Copies a host file or directory (its contents) to `remote_path`.
    pub async fn copy_down(&self, host: &Path, remote_path: &str) -> Result<()> {
        copy_down_via_exec(self, host, remote_path).await
    }

    /// Copies a remote file or directory (its contents) to `host`.
    pub async fn copy_up(&self, remote_path: &str, host: &Path) -> Result<()> {
        copy_up_via_exec(self, remote_path, host).await
    }

    /// Makes a new scratch dir (mode 0755: the runner decides who else may
    /// write there) under /var/tmp, which survives a reboot, unlike /tmp.
    /// Returns it with the sweep's command that removes it (see
    /// [`SshTarget::outlives_dep8`]): [`Undo::done`] once it is removed.
    pub async fn create_scratch(&self) -> Result<(String, Option<Undo>)> {
        let dir = remote_name("/var/tmp/dep8.")?;
        let undo = self.note_undo(REMOVE_DIR, &dir);
        let out = self
            .exec(ExecRequest::new(["mkdir", "-m", "755", &dir]).capture())
            .await?;
        if !out.status.success() {
            // Not made, so not ours: the sweep must not remove it.
            if let Some(undo) = undo {
                undo.done();
            }
            return Err(TestbedError::Failure(format!(
                "creating a scratch dir on {}: {}",
                self.target.display(),
                out.stderr_text().trim()
            )));
        }
        Ok((dir, undo))
    }

    /// Notes (where the machine outlives dep8) the command that runs
    /// `script` with `dir` over a new connection with this one's options,
    /// as root where it can: [`leftovers::record_undo`].
    fn note_undo(&self, script: &str, dir: &str) -> Option<Undo> {
        if !self.target.outlives_dep8 {
            return None;
        }
        let remote = ["sh", "-c", AS_ROOT_IF_ABLE, "sh", script, "sh", dir].map(String::from);
        // Its own connection: the master is gone by then.
        let mut argv = self.common_argv("none");
        argv.extend(["-T", "--", &self.target.host].map(String::from));
        argv.push(format!("exec {}", shell_words::join(remote)));
        Some(leftovers::record_undo(&argv))
    }

    /// Asks the machine to reboot; the connection drops. Follow with
    /// [`Self::await_reboot`].
    pub async fn request_reboot(&mut self) {
        let req = ExecRequest::new(["reboot"])
            .capture()
            .timeout(Duration::from_secs(60));
        // The connection may well drop before `reboot` reports anything.
        match self.exec(req).await {
            Ok(out) if !out.status.success() && !out.timed_out => tracing::warn!(
                "reboot on {} exited {}: {}",
                self.target.display(),
                out.status.code(),
                out.stderr_text().trim()
            ),
            _ => {}
        }
        self.stop_master().await;
    }

    /// Runs `release` as root: the command that lets a process waiting on
    /// the machine go on and reboot it by itself. Follow with
    /// [`Self::await_reboot`].
    pub async fn release_reboot(&self, release: &str) -> Result<()> {
        let req = ExecRequest::shell(release)
            .capture()
            .timeout(Duration::from_secs(60));
        let out = match self.exec(req).await {
            Ok(out) => out,
            // The machine may go down before `release` reports back.
            Err(e) => {
                tracing::debug!("{e} (the machine is going down)");
                return Ok(());
            }
        };
        if out.status.success() {
            Ok(())
        } else {
            Err(TestbedError::Failure(format!(
                "`{release}` on {} exited {}: {}",
                self.target.display(),
                out.status.code(),
                out.stderr_text().trim()
            )))
        }
    }

    /// Reboots the machine and reconnects once it is back.
    pub async fn reboot(&mut self) -> Result<()> {
        self.request_reboot().await;
        self.await_reboot().await
    }

    /// Takes the connection up again after the machine was restored from a
    /// snapshot taken while it was idle (the remote side is where the local
    /// side left it): one command, which sets the clock with
    /// [`SshTarget::sync_clock`]. Fails within `limit` when the two sides
    /// no longer match. Cheaper than the probe of a new connection: right
    /// after a restore every process the remote starts runs cold.
    pub async fn resume(&mut self, limit: Duration) -> Result<()> {
        // No `sh -c`: the login shell execs the one command itself.
        let command = match clock_now() {
            Some(now) if self.target.sync_clock => set_clock_to(&now),
            _ => vec!["true".into()],
        };
        let remote = self.as_root(command);
        let asked = Instant::now();
        tokio::time::timeout(limit, self.control("resuming", remote))
            .await
            .map_err(|_| {
                TestbedError::Failure(format!(
                    "{} did not answer within {limit:?}",
                    self.target.display()
                ))
            })??;
        self.set_clock_again_if_late(asked.elapsed()).await
    }

    /// With [`SshTarget::sync_clock`], sets the clock once more when the
    /// command that set it took `took`, over [`CLOCK_STALE_AFTER`]: a
    /// machine starved of CPU (just restored, on a loaded host) may have
    /// set a time seconds older than the time it was. The second command
    /// runs warm, and quickly.
    async fn set_clock_again_if_late(&self, took: Duration) -> Result<()> {
        let now = clock_now().filter(|_| self.target.sync_clock && took > CLOCK_STALE_AFTER);
        let Some(now) = now else {
            return Ok(());
        };
        tracing::debug!("ssh: the clock was set {took:.2?} late; setting it again");
        let remote = self.as_root(set_clock_to(&now));
        self.control("setting the clock", remote).await.map(drop)
    }

    /// Points the connection at another way to the same machine, used from
    /// the next (re)connection on (after a reboot, say).
    pub fn retarget(&mut self, target: SshTarget) {
        self.target = target;
    }

    /// Reconnects once the machine has rebooted (it has another boot id).
    pub async fn await_reboot(&mut self) -> Result<()> {
        let before = self.boot_id.clone();
        self.reconnect(Some(&before)).await
    }

    /// Drops the master connection and connects again, until
    /// `target.connect_timeout`; with `old_boot_id`, until the machine
    /// reports another boot id (it went down and came back).
    async fn reconnect(&mut self, old_boot_id: Option<&str>) -> Result<()> {
        self.stop_master().await;
        if self.remote_dir.is_empty() {
            self.remote_dir = remote_name("/tmp/dep8-jobs.")?;
            self.remote_dir_undo = self.note_undo(KILL_ALL, &self.remote_dir);
        }
        // A limit past the end of time (a huge --timeout-ssh) is none.
        let deadline = Instant::now()
            .checked_add(self.target.connect_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(u64::from(u32::MAX)));
        loop {
            self.start_master(deadline).await?;
            let asked = Instant::now();
            match self.hello().await {
                Ok(hello) if Some(hello.boot_id.as_str()) != old_boot_id => {
                    self.boot_id = hello.boot_id;
                    self.machine_id = hello.machine_id;
                    self.root = hello.root;
                    return self.set_clock_again_if_late(asked.elapsed()).await;
                }
                // Still the old boot: the machine has not gone down yet.
                Ok(_) => {}
                // A machine going down may drop a fresh connection.
                Err(e) if old_boot_id.is_some() && Instant::now() < deadline => {
                    tracing::debug!("{e}; retrying");
                }
                Err(e) => return Err(e),
            }
            self.stop_master().await;
            if Instant::now() >= deadline {
                return Err(TestbedError::Failure(format!(
                    "{} did not reboot within {:?}",
                    self.target.display(),
                    self.target.connect_timeout
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Kills what is left of the commands, removes the remote control dir
    /// and ends the master connection.
    pub async fn close(&mut self) -> Result<()> {
        let mut result = Ok(());
        if self.master.is_some() && !self.remote_dir.is_empty() {
            let remote = self.as_root(
                ["sh", "-c", KILL_ALL, "sh", &self.remote_dir]
                    .map(String::from)
                    .to_vec(),
            );
            let argv = self.client_argv(&remote);
            let req = ExecRequest::new(argv.clone())
                .capture()
                .timeout(Duration::from_secs(60));
            result = match run_local(&argv, req).await {
                Ok(out) if out.status.success() => {
                    if let Some(undo) = self.remote_dir_undo.take() {
                        undo.done();
                    }
                    Ok(())
                }
                Ok(out) => Err(TestbedError::Failure(format!(
                    "removing {} on {}: {}",
                    self.remote_dir,
                    self.target.display(),
                    out.stderr_text().trim()
                ))),
                Err(e) => Err(e),
            };
        }
        self.stop_master().await;
        result
    }

    // ---- internals ----

    /// `sudo -n` in front of `argv` when root comes from sudo.
    fn as_root(&self, argv: Vec<String>) -> Vec<String> {
        match self.root {
            Root::Sudo => ["sudo".to_string(), "-n".into()]
                .into_iter()
                .chain(argv)
                .collect(),
            _ => argv,
        }
    }

    fn control_socket(&self) -> PathBuf {
        self.local.path().join("ctl")
    }

    fn master_log(&self) -> PathBuf {
        self.local.path().join("master.log")
    }

    /// The options every ssh invocation (master and clients) shares, with
    /// `control_path` (`-S`).
    fn common_argv(&self, control_path: &str) -> Vec<String> {
        let t = &self.target;
        let mut argv = vec!["ssh".to_string()];
        argv.extend(t.ssh_args.iter().cloned());
        let strict = if t.accept_new_host_key {
            "accept-new"
        } else {
            "yes"
        };
        argv.extend([
            "-S".into(),
            control_path.into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("StrictHostKeyChecking={strict}"),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "ServerAliveInterval=15".into(),
        ]);
        let private = self.local.path().join("known_hosts");
        let known_hosts = match (&t.known_hosts, t.accept_new_host_key) {
            (Some(file), _) => Some(file.as_path()),
            (None, true) => Some(private.as_path()),
            (None, false) => None,
        };
        if let Some(file) = known_hosts {
            argv.extend([
                "-o".into(),
                format!("UserKnownHostsFile={}", ssh_option_path(file)),
            ]);
        }
        if let Some(port) = t.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
        if let Some(login) = &t.login {
            argv.extend(["-l".into(), login.clone()]);
        }
        if let Some(key) = &t.identity {
            // Not `-i`: ssh checks that path before expanding its `%%`.
            argv.extend([
                "-o".into(),
                format!("IdentityFile={}", ssh_option_path(key)),
            ]);
        }
        argv
    }

    /// `ssh ... -T -o ControlMaster=no HOST 'exec REMOTE...'`.
    fn client_argv(&self, remote: &[String]) -> Vec<String> {
        let mut argv = self.common_argv(&ssh_path(&self.control_socket()));
        argv.extend(["-T", "-o", "ControlMaster=no", "--", &self.target.host].map(String::from));
        argv.push(format!("exec {}", shell_words::join(remote)));
        argv
    }

    /// Starts the master, retrying until `deadline` unless the failure is
    /// permanent (a host key mismatch).
    async fn start_master(&mut self, deadline: Instant) -> Result<()> {
        loop {
            match self.try_master().await {
                Ok(()) => return Ok(()),
                Err(log) => {
                    let permanent = PERMANENT_FAILURES.iter().any(|p| log.contains(p));
                    if permanent || Instant::now() >= deadline {
                        return Err(self.connect_error(&log, permanent));
                    }
                    tracing::debug!(
                        "ssh to {} failed, retrying: {}",
                        self.target.display(),
                        log.trim()
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn connect_error(&self, log: &str, host_key: bool) -> TestbedError {
        let t = &self.target;
        let mut msg = format!("cannot connect to {} with ssh: {}", t.display(), log.trim());
        if host_key {
            let file = match &t.known_hosts {
                Some(f) => f.display().to_string(),
                None => "~/.ssh/known_hosts".into(),
            };
            msg.push_str(&format!(
                "\nthe host key of {} does not match {file} or is not in it; \
                 add the right key there, or pass --accept-new-host-key to trust \
                 a host that is not listed yet",
                t.host
            ));
        }
        TestbedError::Failure(msg)
    }

    /// One attempt: spawns `ssh -M -N` and waits for its control socket.
    /// Fails with what the master printed.
    async fn try_master(&mut self) -> Result<(), String> {
        let log_path = self.master_log();
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut argv = self.common_argv(&ssh_path(&self.control_socket()));
        argv.extend(
            [
                "-M",
                "-N",
                "-T",
                "-o",
                "ControlPersist=no",
                "--",
                &self.target.host,
            ]
            .map(String::from),
        );
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        dep8_testbed::leftovers::tag(cmd.as_std_mut());
        dep8_testbed::leftovers::die_with_dep8(cmd.as_std_mut());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
        let socket = self.control_socket();
        let started = Instant::now();
        loop {
            if socket.exists() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(if log.trim().is_empty() {
                    format!("ssh exited with {status}")
                } else {
                    log
                });
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill().await;
                return Err("ssh did not connect within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("Permanently added")) {
            tracing::warn!(
                "--accept-new-host-key: trusted a host key not seen before: {}",
                line.trim()
            );
        }
        self.master = Some(child);
        Ok(())
    }

    async fn stop_master(&mut self) {
        if let Some(mut master) = self.master.take() {
            let _ = master.kill().await;
        }
        let _ = std::fs::remove_file(self.control_socket());
    }

    /// The last lines the master printed, for error messages.
    fn master_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.master_log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        if lines.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = lines.into_iter().rev().collect();
            format!(": {}", lines.join("\n"))
        }
    }

    /// Runs a plain (unwrapped) command over the connection, capturing its
    /// output; any ssh failure is a transport failure.
    async fn control(&self, what: &str, remote: Vec<String>) -> Result<String> {
        let argv = self.client_argv(&remote);
        let req = ExecRequest::new(argv.clone())
            .capture()
            .timeout(Duration::from_secs(60));
        let out = run_local(&argv, req).await?;
        if out.status.success() {
            Ok(out.stdout_text())
        } else {
            Err(TestbedError::Failure(format!(
                "{what} on {} failed ({}): {}{}",
                self.target.display(),
                out.status.code(),
                out.stderr_text().trim(),
                self.master_log_tail()
            )))
        }
    }

    async fn hello(&self) -> Result<Hello> {
        let now = clock_now()
            .filter(|_| self.target.sync_clock)
            .unwrap_or_default();
        let again = if self.boot_id.is_empty() { "" } else { "again" };
        let remote = ["sh", "-c", HELLO, "sh", &self.remote_dir, &now, again].map(String::from);
        let out = self.control("probing", remote.to_vec()).await?;
        let lines: Vec<&str> = out.lines().collect();
        let [uid, boot_id, sudo, machine_id, _dir] = lines[..] else {
            return Err(TestbedError::Failure(format!(
                "unexpected reply from {}: {out:?}",
                self.target.display()
            )));
        };
        let root = match (uid, sudo) {
            ("0", _) => Root::Login,
            (_, "sudo") => Root::Sudo,
            _ => Root::None,
        };
        Ok(Hello {
            boot_id: boot_id.to_string(),
            machine_id: machine_id.to_string(),
            root,
        })
    }

    /// Whether job `job` really exited 255 (rather than ssh failing).
    async fn exited_255(&self, job: &str) -> Result<bool> {
        let marker = format!("{job}.255");
        let script = "if [ -e \"$1\" ]; then rm -f \"$1\"; echo yes; else echo no; fi";
        let remote = self.as_root(
            ["sh", "-c", script, "sh", &marker]
                .map(String::from)
                .to_vec(),
        );
        Ok(self
            .control("checking an exit status", remote)
            .await?
            .trim()
            == "yes")
    }

    /// Kills a timed-out job's process tree; failures are only logged (the
    /// command's outcome is already known).
    async fn kill_job(&self, job: &str) {
        if let Err(e) = self
            .control("killing a timed-out command", self.kill_job_remote(job))
            .await
        {
            tracing::warn!("{e}");
        }
    }

    fn kill_job_remote(&self, job: &str) -> Vec<String> {
        self.as_root(["sh", "-c", KILL_JOB, "sh", job].map(String::from).to_vec())
    }
}

/// How late a clock set may answer before it is set again: the time it
/// was given may then be that much old.
pub const CLOCK_STALE_AFTER: Duration = Duration::from_millis(500);

/// The command that sets the clock to `now` ([`clock_now`]).
fn set_clock_to(now: &str) -> Vec<String> {
    ["date", "-u", "-s", &format!("@{now}")]
        .map(String::from)
        .to_vec()
}

/// The local clock as `date -s @...` takes it (seconds since the epoch).
fn clock_now() -> Option<String> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
}

/// A local path as ssh reads the file options it expands (`-S`,
/// `IdentityFile`, `UserKnownHostsFile`): `%` doubled, so that it is no
/// `%h`-style token, and made absolute, so that a leading `~` is no home
/// dir.
fn ssh_path(path: &Path) -> String {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    path.to_string_lossy().replace('%', "%%")
}

/// [`ssh_path`] as the value of a `-o` option: ssh splits those on
/// whitespace (`UserKnownHostsFile` takes several files), so it is
/// double-quoted, with `\` and `"` escaped as ssh's argument splitter
/// reads them.
fn ssh_option_path(path: &Path) -> String {
    let escaped = ssh_path(path).replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

struct Hello {
    boot_id: String,
    machine_id: String,
    root: Root,
}

/// `prefix` and 24 random hex digits: the name of a dir to make on the
/// remote machine, chosen here so that the sweep's command for it can be
/// noted before it is made (mktemp there would name it only after). Made
/// with a plain `mkdir`, which fails rather than take over a dir that
/// exists; the kernel's randomness makes the name unguessable.
fn remote_name(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|e| TestbedError::Failure(format!("naming a dir for the remote machine: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

#[async_trait::async_trait]
impl Exec for SshConnection {
    async fn run(&self, req: ExecRequest) -> Result<ExecOutcome> {
        self.exec(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ssh -G` (OpenSSH's own parser) makes of the paths as dep8
    /// writes them: each one whole, spaces, quotes and `%` kept. (`-G`
    /// shows IdentityFile before its expansion: the ssh tests log in with
    /// such a key, tests/hostile_inputs.rs.)
    #[test]
    fn paths_reach_ssh_whole() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a b%h\"q\\x");
        let known = odd.join("known hosts");
        let socket = odd.join("ctl %r");
        let out = std::process::Command::new("ssh")
            .arg("-G")
            .args([
                "-o",
                &format!("UserKnownHostsFile={}", ssh_option_path(&known)),
            ])
            .args(["-S", &ssh_path(&socket), "h"])
            .output();
        let Ok(out) = out else {
            eprintln!("SKIP: no ssh (openssh-client)");
            return;
        };
        let config = String::from_utf8_lossy(&out.stdout);
        for (key, path) in [("userknownhostsfile", &known), ("controlpath", &socket)] {
            let line = format!("{key} {}", path.display());
            assert!(
                config.lines().any(|l| l == line),
                "no `{line}` in:\n{config}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
