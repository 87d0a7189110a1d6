//! The client side: a virt server program as a dep8 [`Testbed`].

use crate::words;
use async_trait::async_trait;
use dep8_testbed::capability::{Capabilities, Capability};
use dep8_testbed::exec::{in_testbed_argv, run_local};
use dep8_testbed::{ExecOutcome, ExecRequest, ExitStatus, Result, Testbed, TestbedError};
use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// Lines of the server's stderr kept for error messages.
const STDERR_TAIL: usize = 20;
/// How long a server may take to exit after `quit` or after it broke.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Runs the command in `$2...` and, when it exits 254 or 255 (which the
/// protocol reserves for a failing auxverb), writes its status to `$1`, so
/// that a real exit 255 can be told from a broken transport.
const STATUS_WRAPPER: &str =
    "m=$1; shift; \"$@\"; rc=$?; if [ $rc -ge 254 ]; then echo $rc > \"$m\"; fi; exit $rc";

/// A testbed behind a virt server program (`autopkgtest-virt-*` or
/// `dep8 virt-server`): commands run through its auxverb on the host.
pub struct ExternalTestbed {
    channel: Mutex<Channel>,
    scratch: String,
    auxverb: Vec<String>,
    caps: Capabilities,
    /// The server's pid, watched while commands run.
    server_pid: Option<u32>,
    /// Numbers the status files of [`STATUS_WRAPPER`].
    execs: AtomicU64,
    closed: bool,
}

impl ExternalTestbed {
    /// Starts `program` and opens its testbed.
    pub async fn open(program: &str, args: &[String]) -> Result<Self> {
        let mut channel = Channel::spawn(program, args)?;
        channel.banner().await?;
        let scratch = channel.command(&["open"], 1..=1).await?.remove(0);
        let server_pid = channel.child.id();
        let mut tb = ExternalTestbed {
            channel: Mutex::new(channel),
            scratch: words::decode(&scratch),
            auxverb: Vec::new(),
            caps: Capabilities::default(),
            server_pid,
            execs: AtomicU64::new(0),
            closed: false,
        };
        tb.refresh().await?;
        Ok(tb)
    }

    /// Asks for the auxverb and capabilities again: both are only valid
    /// until the next revert or reboot.
    async fn refresh(&mut self) -> Result<()> {
        let channel = self.channel.get_mut();
        let auxverb = channel
            .command(&["print-execute-command"], 1..=1)
            .await?
            .remove(0);
        // Each element is encoded on its own, so split before decoding.
        self.auxverb = auxverb.split(',').map(words::decode).collect();
        if self.auxverb.iter().all(String::is_empty) {
            return Err(channel.failure("print-execute-command gave an empty command"));
        }
        let caps = channel.command(&["capabilities"], 0..=usize::MAX).await?;
        let caps: Vec<String> = caps.iter().map(|w| words::decode(w)).collect();
        self.caps = Capabilities::from_protocol_words(&caps);
        Ok(())
    }

    /// `revert` or `reboot`.
    async fn restart(&mut self, command: &[&str], results: RangeInclusive<usize>) -> Result<()> {
        restart_command(self.channel.get_mut(), command, results, &self.scratch).await?;
        self.refresh().await
    }

    /// After the auxverb exited 254 or 255: did the command itself exit so?
    async fn real_status(&self, status_file: &str, code: i32) -> bool {
        let mut argv = self.auxverb.clone();
        argv.extend(
            [
                "sh",
                "-c",
                "cat -- \"$1\" && rm -f -- \"$1\"",
                "sh",
                status_file,
            ]
            .map(String::from),
        );
        let req = ExecRequest::new(argv.clone()).capture();
        match run_local(&argv, req).await {
            Ok(out) => out.status.success() && out.stdout_text().trim() == code.to_string(),
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Testbed for ExternalTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        &self.scratch
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        // Commands run through the auxverb, not the server; but a server
        // that died has closed (and removed) its testbed behind them.
        if let Ok(mut channel) = self.channel.try_lock() {
            channel.check_alive()?;
        }
        let n = self.execs.fetch_add(1, Ordering::Relaxed);
        let status_file = format!("{}/.dep8-status.{n}", self.scratch);
        let mut argv = self.auxverb.clone();
        argv.extend(["sh", "-c", STATUS_WRAPPER, "sh", &status_file].map(String::from));
        argv.extend(in_testbed_argv(&req));
        // A server that dies under a command may leave its testbed (and
        // the command) running with nobody to end them: the command is
        // killed (with its process group) and the testbed has failed.
        let outcome = tokio::select! {
            outcome = run_local(&argv, req) => outcome?,
            () = exited(self.server_pid) => {
                let mut channel = self.channel.lock().await;
                channel.check_alive()?;
                return Err(channel.failure("it exited while a command ran"));
            }
        };
        match outcome.status {
            ExitStatus::Code(code @ (254 | 255)) if !outcome.timed_out => {
                if self.real_status(&status_file, code).await {
                    Ok(outcome)
                } else {
                    let channel = self.channel.lock().await;
                    Err(channel.failure(format!(
                        "the auxverb {} failed with exit code {code}{}",
                        self.auxverb.join(" "),
                        stderr_note(&outcome)
                    )))
                }
            }
            _ => Ok(outcome),
        }
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        let meta = std::fs::metadata(host).map_err(|e| TestbedError::failure(host.display(), e))?;
        // Servers create neither the parent dirs nor (for a file) the
        // target's dir; autopkgtest's client makes them first too.
        let parent = Path::new(testbed_path.trim_end_matches('/')).parent();
        if let Some(parent) = parent.filter(|p| *p != Path::new(&self.scratch)) {
            let parent = parent.to_string_lossy();
            let made = self
                .exec(ExecRequest::new(["mkdir", "-p", "--", &parent]).capture())
                .await?;
            if !made.status.success() {
                return Err(TestbedError::Failure(format!(
                    "creating testbed:{parent}: {}",
                    made.stderr_text().trim()
                )));
            }
        }
        let (from, to) = paths(&host.to_string_lossy(), testbed_path, meta.is_dir());
        self.channel
            .lock()
            .await
            .command(&["copydown", &from, &to], 0..=0)
            .await
            .map(drop)
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        // The protocol needs to know whether the source is a directory.
        let probe = self
            .exec(ExecRequest::new(["test", "-d", testbed_path]))
            .await?;
        let is_dir = probe.status.success();
        let parent = if is_dir { Some(host) } else { host.parent() };
        if let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| TestbedError::failure(dir.display(), e))?;
        }
        let (from, to) = paths(testbed_path, &host.to_string_lossy(), is_dir);
        self.channel
            .lock()
            .await
            .command(&["copyup", &from, &to], 0..=0)
            .await
            .map(drop)
    }

    async fn revert(&mut self) -> Result<()> {
        if !self.caps.has(Capability::Revert) {
            return Err(TestbedError::Unsupported("revert"));
        }
        self.restart(&["revert"], 1..=1).await
    }

    async fn reboot(&mut self) -> Result<()> {
        if !self.caps.has(Capability::Reboot) {
            return Err(TestbedError::Unsupported("reboot"));
        }
        // The spec says `ok SCRATCH`; autopkgtest's servers say `ok`.
        self.restart(&["reboot"], 0..=1).await
    }

    /// `reboot prepare-only`: the server removes the prepare mark, which
    /// lets the test reboot, and answers once the testbed is back.
    async fn prepare_reboot(&self) -> Result<()> {
        if !self.caps.has(Capability::Reboot) {
            return Err(TestbedError::Unsupported("reboot"));
        }
        let mut channel = self.channel.lock().await;
        restart_command(
            &mut channel,
            &["reboot", "prepare-only"],
            0..=1,
            &self.scratch,
        )
        .await
    }

    async fn await_reboot(&mut self) -> Result<()> {
        self.refresh().await
    }

    async fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let channel = self.channel.get_mut();
        if channel.dead.is_some() {
            // Its failure was reported when it happened, and a server
            // closes its testbed itself when it gives up.
            return Ok(());
        }
        if channel.unanswered.is_some() && channel.child.try_wait().is_ok_and(|s| s.is_none()) {
            // Still busy with a command whose reply nobody waits for (a
            // revert that a Ctrl-C cut short): `close` would wait behind it.
            return channel.terminate().await;
        }
        channel.command(&["close"], 0..=0).await?;
        channel.quit().await
    }
}

/// Returns once process `pid` has exited (gone, or a zombie not yet
/// reaped), looking twice a second; never without a pid.
async fn exited(pid: Option<u32>) {
    let Some(pid) = pid else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state is the first field after the command's `)`.
            Ok(stat)
                if stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z')) => {}
            _ => return,
        }
    }
}

/// Sends `revert` or `reboot [prepare-only]`: the scratch dir must stay
/// where it was.
async fn restart_command(
    channel: &mut Channel,
    command: &[&str],
    results: RangeInclusive<usize>,
    scratch: &str,
) -> Result<()> {
    let reply = channel.command(command, results).await?;
    match reply.first().map(|s| words::decode(s)) {
        Some(moved) if moved != scratch => Err(channel.failure(format!(
            "{} moved the scratch dir from {scratch} to {moved}",
            command.join(" "),
        ))),
        _ => Ok(()),
    }
}

/// The protocol's copy arguments: both with a trailing `/` for a directory.
fn paths(from: &str, to: &str, is_dir: bool) -> (String, String) {
    if is_dir {
        let slash = |p: &str| format!("{}/", p.trim_end_matches('/'));
        (slash(from), slash(to))
    } else {
        (from.to_string(), to.to_string())
    }
}

fn stderr_note(outcome: &ExecOutcome) -> String {
    let text = outcome.stderr_text();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The protocol channel: the server's stdin and stdout, and its stderr's
/// last lines.
struct Channel {
    program: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<SyncMutex<VecDeque<String>>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    /// A command whose reply was never read (its future was dropped): the
    /// next reply would be out of step.
    unanswered: Option<String>,
    /// Why the server can no longer be used, once it died.
    dead: Option<String>,
}

impl Channel {
    fn spawn(program: &str, args: &[String]) -> Result<Self> {
        // Dropping the channel closes the server's stdin: on that EOF it
        // closes its testbed itself, so it is not killed.
        let mut cmd = Command::new(program);
        // If dep8 is killed, what the server starts and its temp files are
        // found and removed.
        dep8_testbed::leftovers::tag_helper(cmd.as_std_mut());
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    TestbedError::Usage(format!("{program}: no such virt server program"))
                }
                _ => TestbedError::failure(format!("cannot run virt server {program}"), e),
            })?;
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => unreachable!("all three streams are piped"),
            };
        let stderr_tail = Arc::new(SyncMutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        let name = program.to_string();
        let stderr_reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!("{name}: {line}");
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Channel {
            program: program.to_string(),
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr_tail,
            stderr_reader: Some(stderr_reader),
            unanswered: None,
            dead: None,
        })
    }

    /// A failure naming the server, with the end of its stderr.
    fn failure(&self, what: impl std::fmt::Display) -> TestbedError {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with:\n{}", tail.join("\n"))
        };
        TestbedError::Failure(format!("virt server {}: {what}{tail}", self.program))
    }

    /// The server broke: wait for it to exit so that its status and last
    /// words can be reported.
    async fn died(&mut self, what: String) -> TestbedError {
        self.unanswered = None;
        let status = match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
        let what = format!("{what}{status}");
        self.dead = Some(what.clone());
        self.failure(what)
    }

    async fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        let n = self.stdout.read_until(b'\n', &mut line).await?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&line).trim_end().to_string()))
    }

    async fn banner(&mut self) -> Result<()> {
        match self.read_line().await {
            Ok(Some(line)) if line == "ok" => Ok(()),
            Ok(Some(line)) => Err(self.failure(format!("got banner `{line}', expected `ok'"))),
            Ok(None) => Err(self.died("exited before its `ok' banner".into()).await),
            Err(e) => Err(self.died(format!("reading its banner: {e}")).await),
        }
    }

    /// Fails once the server is known to have died.
    fn gone(&self) -> Result<()> {
        match &self.dead {
            Some(why) => Err(self.failure(format!("it is gone: {why}"))),
            None => Ok(()),
        }
    }

    /// [`Channel::gone`], also when the server has exited since the last
    /// command (what runs through the auxverb does not notice).
    fn check_alive(&mut self) -> Result<()> {
        if self.dead.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.dead = Some(match &self.unanswered {
                    Some(sent) => format!("it exited after `{sent}' without replying ({status})"),
                    None => format!("it exited ({status})"),
                });
            }
        }
        self.gone()
    }

    /// Sends one command; returns the still encoded words after `ok`, whose
    /// number must be in `results`.
    async fn command(
        &mut self,
        words: &[&str],
        results: RangeInclusive<usize>,
    ) -> Result<Vec<String>> {
        self.gone()?;
        if let Some(sent) = self.unanswered.clone() {
            // The caller gave up waiting for that reply: because the server
            // died, or because it is still busy.
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self
                    .died(format!("exited after `{sent}' without replying"))
                    .await);
            }
            return Err(self.failure(format!(
                "the reply to `{sent}' was never read (its caller gave up waiting); \
                 the protocol is out of step"
            )));
        }
        let line = words::line(words);
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.failure("the testbed is closed"));
        };
        self.unanswered = Some(line.clone());
        let sent = async {
            stdin.write_all(format!("{line}\n").as_bytes()).await?;
            stdin.flush().await
        };
        if let Err(e) = sent.await {
            return Err(self.died(format!("cannot send `{line}': {e}")).await);
        }
        let reply = match self.read_line().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(self.died(format!("sent `{line}', got end of file")).await),
            Err(e) => {
                return Err(self
                    .died(format!("sent `{line}', reading the reply: {e}"))
                    .await)
            }
        };
        self.unanswered = None;
        let mut got: Vec<String> = reply.split_whitespace().map(String::from).collect();
        if got.first().map(String::as_str) != Some("ok") {
            return Err(self.failure(format!("sent `{line}', got `{reply}'")));
        }
        got.remove(0);
        if !results.contains(&got.len()) {
            return Err(self.failure(format!(
                "sent `{line}', got `{reply}': {} result words, expected {results:?}",
                got.len()
            )));
        }
        Ok(got)
    }

    /// Ends a busy server by SIGTERM, on which autopkgtest's servers (and
    /// dep8's) close their testbed and exit; SIGKILL if it is still there
    /// after [`EXIT_WAIT`].
    async fn terminate(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if let Ok(Ok(_)) = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            return Ok(());
        }
        let _ = self.child.kill().await;
        Err(self.failure(format!(
            "still running {}s after SIGTERM (killed)",
            EXIT_WAIT.as_secs()
        )))
    }

    /// `quit`, which autopkgtest's servers never answer: close their stdin
    /// and wait for a clean exit.
    async fn quit(&mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            // A server that already went away is judged by its exit status.
            let _ = stdin.write_all(b"quit\n").await;
            let _ = stdin.flush().await;
        }
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(self.died(format!("exited with {status} after quit")).await),
            Ok(Err(e)) => Err(self.failure(format!("waiting for it to exit: {e}"))),
            Err(_) => {
                Err(self.failure(format!("still running {}s after quit", EXIT_WAIT.as_secs())))
            }
        }
    }
}
