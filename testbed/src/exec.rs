//! Process plumbing shared by backends that run testbed commands through a
//! local program (null, schroot, unshare, ssh, external): building the
//! in-testbed argv, spawning with streaming output and timeouts, and copying
//! files through `exec` when the host cannot see the testbed's files.

use crate::{ExecOutcome, ExecRequest, ExitStatus, Input, Output, Result, Testbed, TestbedError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How long to wait for output pipes after a command ended before giving up
/// on a leaked process that still holds them.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Anything that runs commands in a testbed: every [`Testbed`], and the
/// transports testbeds are built on (the ssh backend's connection, which the
/// qemu backend reuses), so the copy helpers below work over either.
#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    async fn run(&self, req: ExecRequest) -> Result<ExecOutcome>;
}

#[async_trait::async_trait]
impl<T: Testbed + ?Sized> Exec for T {
    async fn run(&self, req: ExecRequest) -> Result<ExecOutcome> {
        self.exec(req).await
    }
}

/// The argv that runs `req` inside a testbed whose command runner executes
/// argv as root: `[runuser -u USER --] env [--chdir=CWD] -- VAR=VALUE... ARGV`.
/// Shell-free, so no quoting can go wrong; `env` also turns a missing
/// program into exit 127, as a shell would, instead of a testbed failure.
pub fn in_testbed_argv(req: &ExecRequest) -> Vec<String> {
    let mut argv = Vec::new();
    if let Some(user) = &req.user {
        argv.extend(["runuser", "-u", user.as_str(), "--"].map(String::from));
    }
    argv.push("env".into());
    if let Some(cwd) = &req.cwd {
        argv.push(format!("--chdir={cwd}"));
    }
    argv.push("--".into());
    argv.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(req.argv.iter().cloned());
    argv
}

/// Runs `argv` on the host in its own process group, feeding stdin and
/// streaming stdout/stderr to where `req` says. On timeout the whole process
/// group is killed; so are processes the command leaves behind.
pub async fn run_local(argv: &[String], req: ExecRequest) -> Result<ExecOutcome> {
    run_local_with(argv, req, None).await
}

/// [`run_local`] for a program that runs the command for dep8 (schroot) and
/// may itself write to its stderr, even about other sessions than dep8's:
/// the command's stderr is handed to it as fd 3, which the command must
/// move to its fd 2 (`exec 2>&3 3>&-`), and what `tool` writes to its own
/// stderr is logged as its warnings, never taken as the command's output.
pub async fn run_local_with_stderr_on_fd3(
    argv: &[String],
    req: ExecRequest,
    tool: &str,
) -> Result<ExecOutcome> {
    run_local_with(argv, req, Some(tool)).await
}

async fn run_local_with(
    argv: &[String],
    req: ExecRequest,
    stderr_on_fd3_of: Option<&str>,
) -> Result<ExecOutcome> {
    let start = Instant::now();
    let program = argv
        .first()
        .ok_or_else(|| TestbedError::Failure("empty command".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..]).process_group(0).kill_on_drop(true);
    crate::leftovers::tag(cmd.as_std_mut());
    crate::leftovers::die_with_dep8(cmd.as_std_mut());
    cmd.stdin(match &req.stdin {
        Input::Null => Stdio::null(),
        Input::Bytes(_) => Stdio::piped(),
        Input::File(path) => Stdio::from(
            std::fs::File::open(path).map_err(|e| TestbedError::failure(path.display(), e))?,
        ),
    });
    let wanted = |o: &Output| o.file.is_some() || o.capture || o.tap.is_some();
    cmd.stdout(if wanted(&req.stdout) {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let command_stderr_on_fd3 = match stderr_on_fd3_of {
        None => {
            cmd.stderr(if wanted(&req.stderr) {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            None
        }
        Some(tool) => {
            cmd.stderr(Stdio::piped());
            let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| TestbedError::failure("creating a pipe", e))?;
            give_as_fd3(cmd.as_std_mut(), writer);
            Some((tool, tokio::fs::File::from_std(std::fs::File::from(reader))))
        }
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| TestbedError::failure(format!("cannot run {program}"), e))?;
    // The child has its copy of the pipe's write end: dropping dep8's lets
    // the read end see the end of the command's stderr.
    drop(cmd);
    if let Some(id) = child.id() {
        crate::leftovers::record_group(id);
    }
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // If this future is dropped (Ctrl-C), the whole group still dies.
    let _group = GroupGuard(pgid);

    if let (Input::Bytes(bytes), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // The command may exit without reading: a broken pipe is fine.
            let _ = stdin.write_all(&bytes).await;
        });
    }
    let out_pump = child
        .stdout
        .take()
        .map(|s| tokio::spawn(pump(s, req.stdout.clone())));
    let own_stderr = child.stderr.take();
    let (err_pump, tool_pump) = match command_stderr_on_fd3 {
        None => (
            own_stderr.map(|s| tokio::spawn(pump(s, req.stderr.clone()))),
            None,
        ),
        Some((tool, command_stderr)) => (
            Some(tokio::spawn(pump(command_stderr, req.stderr.clone()))),
            own_stderr.map(|s| (tool, tokio::spawn(pump(s, Output::capture())))),
        ),
    };

    let waited = match req.timeout {
        Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let timed_out = waited.is_none();
    let status = match waited {
        Some(status) => status,
        None => {
            kill_group(pgid);
            child.wait().await
        }
    }
    .map_err(|e| TestbedError::failure(format!("waiting for {program}"), e))?;
    // Leftover background processes would hold the pipes open forever.
    kill_group(pgid);

    let stdout = finish_pump(out_pump).await?;
    let stderr = finish_pump(err_pump).await?;
    if let Some((tool, tool_pump)) = tool_pump {
        let said = finish_pump(Some(tool_pump)).await?;
        for line in String::from_utf8_lossy(&said).lines() {
            tracing::warn!("{tool}: {line}");
        }
    }
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    };
    Ok(ExecOutcome {
        status,
        timed_out,
        duration: start.elapsed(),
        stdout,
        stderr,
    })
}

/// Makes `fd` the child's fd 3, open across its exec.
fn give_as_fd3(cmd: &mut std::process::Command, fd: std::os::fd::OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and fcntl are async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == 3 {
                fcntl(raw, FcntlArg::F_SETFD(FdFlag::empty()))?;
            } else {
                nix::unistd::dup2(raw, 3)?;
            }
            Ok(())
        });
    }
}

/// Kills a process group when dropped.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        // ESRCH (nothing left) is the normal case.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

type Pump = tokio::task::JoinHandle<std::io::Result<Vec<u8>>>;

async fn finish_pump(pump: Option<Pump>) -> Result<Vec<u8>> {
    let Some(pump) = pump else {
        return Ok(Vec::new());
    };
    match tokio::time::timeout(PIPE_GRACE, pump).await {
        Ok(Ok(Ok(captured))) => Ok(captured),
        Ok(Ok(Err(e))) => Err(TestbedError::failure("writing command output", e)),
        Ok(Err(e)) => Err(TestbedError::failure("output pump", e)),
        Err(_) => {
            tracing::warn!(
                "a process left behind by the command still holds its output; not waiting for it"
            );
            Ok(Vec::new())
        }
    }
}

/// An error that names the file it happened to: a full output dir must say
/// which file it could not keep.
fn naming(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Copies a stream to an [`Output`] as it arrives, up to its cut if it has
/// one; what comes after the cut is read and dropped.
async fn pump(mut from: impl AsyncRead + Unpin, to: Output) -> std::io::Result<Vec<u8>> {
    let mut sink = Sink::open(&to).await?;
    let mut buf = vec![0u8; 64 * 1024];
    // The end of what was read that may be the start of a marker.
    let mut held = Vec::new();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let Some(cut) = &to.cut else {
            sink.keep(chunk).await?;
            continue;
        };
        if cut.is_done() {
            continue;
        }
        held.extend_from_slice(chunk);
        let marker = cut.marker();
        if let Some(at) = held.windows(marker.len()).position(|w| w == marker) {
            sink.keep(&held[..at]).await?;
            held.clear();
            cut.now();
            continue;
        }
        let undecided = (1..marker.len().min(held.len() + 1))
            .rev()
            .find(|&n| held.ends_with(&marker[..n]))
            .unwrap_or(0);
        let decided = held.len() - undecided;
        sink.keep(&held[..decided]).await?;
        held.drain(..decided);
    }
    if !to.cut.as_ref().is_some_and(|cut| cut.is_done()) {
        sink.keep(&held).await?;
    }
    sink.close().await
}

/// The places an [`Output`] keeps what it is given.
struct Sink<'a> {
    to: &'a Output,
    file: Option<tokio::fs::File>,
    captured: Vec<u8>,
}

impl<'a> Sink<'a> {
    async fn open(to: &'a Output) -> std::io::Result<Sink<'a>> {
        let file = match &to.file {
            Some(path) => Some(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(naming(path))?,
            ),
            None => None,
        };
        Ok(Sink {
            to,
            file,
            captured: Vec::new(),
        })
    }

    async fn keep(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let (Some(f), Some(path)) = (self.file.as_mut(), &self.to.file) {
            f.write_all(bytes).await.map_err(naming(path))?;
        }
        if self.to.capture {
            self.captured.extend_from_slice(bytes);
        }
        if let Some(tap) = &self.to.tap {
            tap(bytes);
        }
        Ok(())
    }

    /// What was captured, once the file has all it was given.
    async fn close(self) -> std::io::Result<Vec<u8>> {
        if let (Some(mut f), Some(path)) = (self.file, &self.to.file) {
            f.flush().await.map_err(naming(path))?;
        }
        Ok(self.captured)
    }
}

/// Fails with the command's stderr unless it exited 0.
fn check(what: &str, outcome: &ExecOutcome) -> Result<()> {
    if outcome.status.success() {
        Ok(())
    } else {
        Err(TestbedError::Failure(format!(
            "{what} failed with status {}: {}",
            outcome.status.code(),
            outcome.stderr_text().trim()
        )))
    }
}

/// A pipe whose ends close on exec; its read end can be given to any
/// backend as an [`Input::File`] at [`proc_path`].
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| TestbedError::failure("pipe", std::io::Error::from(e)))
}

/// A path naming the open `fd` of this process (`/proc/PID/fd/N`), for
/// this process and its children alike.
pub fn proc_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

/// `copy_down` for testbeds the host cannot see into: a tar stream (for a
/// directory) or the bytes (for a file) fed to a command in the testbed.
pub async fn copy_down_via_exec(
    tb: &(impl Exec + ?Sized),
    host: &Path,
    target: &str,
) -> Result<()> {
    let meta = std::fs::metadata(host).map_err(|e| TestbedError::failure(host.display(), e))?;
    let what = format!("copying {} to testbed:{target}", host.display());
    if !meta.is_dir() {
        use std::os::unix::fs::PermissionsExt;
        let mode = format!("{:o}", meta.permissions().mode() & 0o7777);
        let req = ExecRequest::new([
            "sh",
            "-c",
            "mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1\" && chmod \"$2\" \"$1\"",
            "sh",
            target,
            &mode,
        ])
        .stdin(Input::File(host.to_path_buf()));
        return check(&what, &tb.run(req.stderr(Output::capture())).await?);
    }
    // A dir: tar on the host streams it through a pipe to tar in the
    // testbed (no spool file to write and read again).
    let (read, write) = pipe()?;
    let tar_args = [
        OsStr::new("-C"),
        host.as_os_str(),
        OsStr::new("-cf"),
        OsStr::new("-"),
        OsStr::new("."),
    ];
    let host_tar = {
        let mut cmd = host_command_for("tar", &tar_args);
        cmd.stdin(Stdio::null()).stdout(Stdio::from(write));
        spawn_recorded("tar", cmd)?
        // The command, and with it this process's write end, is dropped
        // here: the testbed's tar sees the end of the stream.
    };
    let script = "mkdir -p -- \"$1\" && tar --no-same-owner -C \"$1\" -xf -";
    let req = ExecRequest::new(["sh", "-c", script, "sh", target])
        .stdin(Input::File(proc_path(&read)))
        .stderr(Output::capture());
    let outcome = tb.run(req).await;
    // Unread, the host's tar ends on a broken pipe rather than waiting.
    drop(read);
    let tar = host_tar.wait_with_output().await;
    check(&what, &outcome?)?;
    let tar = tar.map_err(|e| TestbedError::failure("waiting for tar", e))?;
    host_result("tar", &tar_args, tar).map(drop)
}

/// `copy_up` for testbeds the host cannot see into: one command sends a
/// marker byte (`d` or `f`) and then a tar stream or the file's bytes.
pub async fn copy_up_via_exec(tb: &(impl Exec + ?Sized), source: &str, host: &Path) -> Result<()> {
    let what = format!("copying testbed:{source} to {}", host.display());
    let fail = |e: std::io::Error| TestbedError::failure(&what, e);
    let spool = tempfile::NamedTempFile::new().map_err(fail)?;
    let script = "if [ -d \"$1\" ]; then printf d; tar -C \"$1\" -cf - .; \
                  elif [ -e \"$1\" ]; then printf f; cat \"$1\"; \
                  else echo \"$1: No such file or directory\" >&2; exit 1; fi";
    let req = ExecRequest::new(["sh", "-c", script, "sh", source])
        .stdout(Output::file(spool.path()))
        .stderr(Output::capture());
    check(&what, &tb.run(req).await?)?;
    let mut file = std::fs::File::open(spool.path()).map_err(fail)?;
    let mut marker = [0u8; 1];
    file.read_exact(&mut marker).map_err(fail)?;
    if marker[0] == b'd' {
        std::fs::create_dir_all(host).map_err(fail)?;
        file.seek(SeekFrom::Start(1)).map_err(fail)?;
        host_run(
            "tar",
            &["--no-same-owner", "-C", &host.to_string_lossy(), "-xf", "-"],
            Stdio::from(file),
        )
        .await?;
    } else {
        let mut file = tokio::fs::File::from_std(file);
        let mut out = tokio::fs::File::create(host).await.map_err(fail)?;
        tokio::io::copy(&mut file, &mut out).await.map_err(fail)?;
        out.flush().await.map_err(fail)?;
    }
    Ok(())
}

/// Copies a host file or directory (its contents) to another host path,
/// keeping modes, links and special files (`cp -a`). Dropping the future
/// (a timeout, Ctrl-C) kills the copy.
pub async fn host_copy(from: &Path, to: &Path) -> Result<()> {
    let what = format!("copying {} to {}", from.display(), to.display());
    let meta = std::fs::symlink_metadata(from).map_err(|e| TestbedError::failure(&what, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| TestbedError::failure(&what, e))?;
        let mut src = from.as_os_str().to_owned();
        src.push("/.");
        let args = [OsStr::new("-a"), OsStr::new("--"), &src, to.as_os_str()];
        host_run("cp", &args, Stdio::null()).await.map(drop)
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| TestbedError::failure(&what, e))?;
        }
        let args = [
            OsStr::new("-a"),
            OsStr::new("--"),
            from.as_os_str(),
            to.as_os_str(),
        ];
        host_run("cp", &args, Stdio::null()).await.map(drop)
    }
}

/// Runs a helper program on the host without blocking the runtime, in a
/// process group of its own that dies if the future is dropped; returns its
/// stdout, or fails with its stderr.
pub async fn host_run<S: AsRef<OsStr>>(program: &str, args: &[S], stdin: Stdio) -> Result<String> {
    let mut cmd = host_command_for(program, args);
    cmd.stdin(stdin).stdout(Stdio::piped());
    let out = spawn_recorded(program, cmd)?
        .wait_with_output()
        .await
        .map_err(|e| TestbedError::failure(format!("waiting for {program}"), e))?;
    host_result(program, args, out)
}

/// A helper program on the host, its stderr captured, in a process group
/// of its own that dies with dep8 and is killed when dropped.
fn host_command_for<S: AsRef<OsStr>>(program: &str, args: &[S]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    crate::leftovers::tag(cmd.as_std_mut());
    crate::leftovers::die_with_dep8(cmd.as_std_mut());
    cmd
}

/// Starts `cmd` (from [`host_command_for`]) and records its process group
/// with the run.
fn spawn_recorded(
    program: &str,
    mut cmd: tokio::process::Command,
) -> Result<tokio::process::Child> {
    let child = cmd
        .spawn()
        .map_err(|e| TestbedError::failure(format!("cannot run {program}"), e))?;
    if let Some(id) = child.id() {
        crate::leftovers::record_group(id);
    }
    Ok(child)
}

/// Runs a helper program on the host and fails with its stderr.
pub fn host_command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<()> {
    host_output(program, args).map(drop)
}

/// Runs a helper program on the host; returns its stdout, or fails with its
/// stderr.
pub fn host_output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestbedError::failure(format!("cannot run {program}"), e))?;
    host_result(program, args, out)
}

/// [`host_output`] for a helper that must not hold dep8 up: it runs in a
/// process group of its own, recorded for the sweep
/// ([`crate::leftovers::record_group`]), and after `limit` dep8 stops
/// waiting and fails, leaving it running: the run's dir is then kept for a
/// later sweep ([`crate::leftovers::keep_for_sweep`]), which kills it and
/// undoes what it was doing. A blocking call.
///
/// Its own process group also keeps a terminal's Ctrl-C, meant for dep8,
/// from killing it halfway (a `schroot --begin-session` between two of its
/// set-up scripts).
pub fn host_output_within<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    limit: Duration,
) -> Result<String> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| TestbedError::failure(format!("cannot run {program}"), e))?;
    crate::leftovers::record_group(child.id());
    // Waited for on a thread of its own, which may outlive this call: the
    // pipes are read as the program writes, and the wait can be given up.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(limit) {
        Ok(out) => {
            let out =
                out.map_err(|e| TestbedError::failure(format!("waiting for {program}"), e))?;
            host_result(program, args, out)
        }
        Err(_) => {
            crate::leftovers::keep_for_sweep();
            Err(TestbedError::Failure(format!(
                "{program} {} did not finish within {limit:?}; it is left running, \
                 for `dep8 clean` or the next run to end",
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
            )))
        }
    }
}

/// A helper program's stdout, or its failure with its stderr.
pub fn host_result<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    out: std::process::Output,
) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TestbedError::Failure(format!(
            "{program} {} failed: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Raises `sig` with its default action (and no core dump): how a program
/// that cleaned up after a signal ends, so that its parent sees the signal.
pub fn die_by_signal(sig: i32) {
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::{raise, signal, SigHandler, SigSet, Signal};
    let Ok(sig) = Signal::try_from(sig) else {
        return;
    };
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring the default action installs no handler code.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = set.thread_unblock();
    let _ = raise(sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a pump keeps of `chunks`, each arriving in its own read, when
    /// the stream is cut at `MARK`.
    async fn kept_of(chunks: &[&str]) -> (String, bool) {
        let (mut tx, rx) = tokio::io::duplex(4);
        let cut = crate::Cut::at(b"MARK");
        let pumped = tokio::spawn(pump(rx, Output::capture().with_cut(cut.clone())));
        for chunk in chunks {
            tx.write_all(chunk.as_bytes()).await.unwrap();
            tx.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        let kept = pumped.await.unwrap().unwrap();
        (String::from_utf8(kept).unwrap(), cut.is_done())
    }

    #[tokio::test]
    async fn a_cut_keeps_what_came_before_its_marker_however_it_arrives() {
        for chunks in [
            &["before MARK after"][..],
            &["befo", "re M", "AR", "K aft", "er"],
            &["before MA", "RK", " after MARK"],
        ] {
            assert_eq!(
                kept_of(chunks).await,
                ("before ".into(), true),
                "{chunks:?}"
            );
        }
        // A marker's start that is not followed by the rest is kept.
        assert_eq!(kept_of(&["MA", "MAR", "!"]).await, ("MAMAR!".into(), false));
        assert_eq!(
            kept_of(&["no mark, MAR"]).await,
            ("no mark, MAR".into(), false)
        );
    }

    #[test]
    fn a_helper_that_hangs_is_given_up_after_its_limit() {
        assert_eq!(
            host_output_within("echo", &["done"], Duration::from_secs(30)).unwrap(),
            "done\n"
        );
        let started = Instant::now();
        let hung = host_output_within("sleep", &["3"], Duration::from_millis(300));
        let waited = started.elapsed();
        let message = hung.unwrap_err().to_string();
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
        assert!(
            message.contains("sleep 3 did not finish within 300ms"),
            "{message}"
        );
        assert!(crate::leftovers::kept_for_sweep());
    }

    #[test]
    fn argv_wrapping() {
        let req = ExecRequest::new(["id", "-u"]);
        assert_eq!(in_testbed_argv(&req), ["env", "--", "id", "-u"]);
        let req = ExecRequest::new(["id"])
            .user("nobody")
            .cwd("/tmp")
            .env("A", "b c");
        assert_eq!(
            in_testbed_argv(&req),
            [
                "runuser",
                "-u",
                "nobody",
                "--",
                "env",
                "--chdir=/tmp",
                "--",
                "A=b c",
                "id"
            ]
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let argv: Vec<String> = ["sh", "-c", "sleep 30 & sleep 30; echo late"]
            .map(String::from)
            .to_vec();
        let req = ExecRequest::new(argv.clone())
            .capture()
            .timeout(Duration::from_millis(300));
        let outcome = run_local(&argv, req).await.unwrap();
        assert!(outcome.timed_out);
        assert!(
            outcome.duration < Duration::from_secs(5),
            "{:?}",
            outcome.duration
        );
        assert_eq!(outcome.status, ExitStatus::Signal(9));
    }
}
