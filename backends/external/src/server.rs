//! The server side: any dep8 [`Backend`] behind autopkgtest's virt-server
//! protocol on stdin/stdout (`dep8 virt-server BACKEND [ARGS...]`).
//!
//! `print-execute-command` gives `AUXVERB... SOCKET`, where the caller's
//! auxverb prefix (`dep8 virt-exec`) connects to a unix socket this server
//! listens on in its private temporary dir, and the server runs the command
//! with [`Testbed::exec`], streaming its input and output through the
//! [`crate::exec_channel`] frames. A request the server cannot honour gets
//! an `error MESSAGE` line (autopkgtest's clients treat any reply but `ok`
//! as a failure) and the server carries on; end of file on stdin, `quit`
//! or SIGTERM/SIGINT/SIGHUP close the testbed and remove the temporary dir.

use crate::exec_channel::{self, read_frame, write_frame, CHUNK, EXIT, FAIL};
use crate::words;
use dep8_testbed::capability::{Capabilities, Capability};
use dep8_testbed::exec::proc_path;
use dep8_testbed::{Backend, ExecRequest, ExitStatus, Input, Output, Testbed};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, RwLock};
use tokio::task::JoinHandle;

/// Longest command line accepted.
const MAX_LINE: usize = 64 * 1024;
/// How long output may keep coming after a command ended (a process it
/// left behind may hold the pipes).
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

type SharedTestbed = Arc<RwLock<Box<dyn Testbed>>>;

/// Serves `backend` (opened with `args` on `open`) on `input`/`output`
/// until `quit`, end of file or a signal; returns the exit status.
/// `auxverb` is the argv prefix that runs [`exec_channel::client`] with the
/// socket path as its first argument.
pub async fn serve(
    backend: &dyn Backend,
    args: &[String],
    auxverb: &[String],
    input: impl AsyncBufRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
) -> i32 {
    let mut server = Server {
        backend,
        args,
        auxverb,
        session: None,
    };
    let mut input = input;
    if reply(&mut output, "ok").await.is_err() {
        return 1;
    }
    let mut signals = Signals::new();
    loop {
        let line = tokio::select! {
            line = read_line(&mut input) => line,
            sig = signals.next() => {
                eprintln!("dep8 virt-server: caught signal {sig}, closing the testbed");
                server.close().await.ok();
                return 128 + sig;
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => {
                if server.session.is_some() {
                    eprintln!("dep8 virt-server: end of file on stdin (caller quit?): closing the testbed");
                }
                return server.shut_down().await;
            }
        };
        let answer = match line {
            Line::TooLong => Err(format!("command line longer than {MAX_LINE} bytes")),
            Line::Text(text) => {
                let command = words::parse(&text);
                if command.first().map(String::as_str) == Some("quit") {
                    let code = server.shut_down().await;
                    // autopkgtest's client stops reading before `quit`.
                    let _ = reply(&mut output, "ok").await;
                    return code;
                }
                server.command(&command).await
            }
        };
        let line = match answer {
            Ok(results) => {
                let mut words = vec!["ok".to_string()];
                words.extend(results);
                words.join(" ")
            }
            Err(message) => {
                eprintln!("dep8 virt-server: {message}");
                // One line, readable as autopkgtest prints it.
                format!("error {}", message.replace('\n', "; "))
            }
        };
        if reply(&mut output, &line).await.is_err() {
            server.close().await.ok();
            return 1;
        }
    }
}

async fn reply(output: &mut (impl AsyncWrite + Unpin), line: &str) -> std::io::Result<()> {
    output.write_all(format!("{line}\n").as_bytes()).await?;
    output.flush().await
}

enum Line {
    Text(String),
    TooLong,
}

/// The next line, or `None` at end of file; an over-long line is skipped.
async fn read_line(input: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let n = input
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() <= MAX_LINE {
            // End of file in the middle of a line.
            return Ok(None);
        }
        let mut rest = Vec::new();
        input.read_until(b'\n', &mut rest).await?;
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Text(
        String::from_utf8_lossy(&line).into_owned(),
    )))
}

/// SIGTERM, SIGINT and SIGHUP, which end the server after closing.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let on = |kind: SignalKind| signal(kind).expect("installing a signal handler");
        Signals {
            term: on(SignalKind::terminate()),
            int: on(SignalKind::interrupt()),
            hup: on(SignalKind::hangup()),
        }
    }

    /// Waits for one; returns its number.
    async fn next(&mut self) -> i32 {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM as i32,
            _ = self.int.recv() => Signal::SIGINT as i32,
            _ = self.hup.recv() => Signal::SIGHUP as i32,
        }
    }
}

struct Server<'a> {
    backend: &'a dyn Backend,
    args: &'a [String],
    auxverb: &'a [String],
    session: Option<Session>,
}

/// An open testbed and the exec socket in front of it.
struct Session {
    tb: SharedTestbed,
    /// Holds the socket; removed on drop.
    dir: tempfile::TempDir,
    listener: Arc<UnixListener>,
    /// Accepts exec connections; aborting it kills every running command.
    acceptor: JoinHandle<()>,
}

impl Session {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("exec.sock")
    }

    /// Kills the running commands and stops accepting (before a revert,
    /// reboot or close, after which old commands must not run on).
    async fn stop_commands(&mut self) {
        self.acceptor.abort();
        let _ = (&mut self.acceptor).await;
    }

    fn accept_commands(&mut self) {
        self.acceptor = tokio::spawn(accept(self.listener.clone(), self.tb.clone()));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

type Reply = Result<Vec<String>, String>;

/// How long the commands running when a test reboots the testbed itself
/// may take to end (as the testbed goes down) before they are killed.
const GOING_DOWN: Duration = Duration::from_secs(120);

/// What [`Server::restart`] does to the testbed.
#[derive(Clone, Copy)]
enum Restart {
    Revert,
    Reboot,
    /// `reboot prepare-only`: a test reboots the testbed by itself.
    AwaitReboot,
}

impl Server<'_> {
    async fn command(&mut self, command: &[String]) -> Reply {
        let Some((name, args)) = command.split_first() else {
            return Err("empty commands are not permitted".into());
        };
        let arity = |min: usize, max: usize| {
            if args.len() < min {
                Err(format!("too few arguments to command `{name}'"))
            } else if args.len() > max {
                Err(format!("too many arguments to command `{name}'"))
            } else {
                Ok(())
            }
        };
        match name.replace('_', "-").as_str() {
            "capabilities" => {
                arity(0, 0)?;
                Ok(match &self.session {
                    Some(s) => s.tb.read().await.capabilities().protocol_words(),
                    None => Capabilities::new(self.backend.capabilities_hint()).protocol_words(),
                }
                .iter()
                .map(|w| words::encode(w))
                .collect())
            }
            "open" => {
                arity(0, 0)?;
                self.open().await
            }
            "revert" => {
                arity(0, 0)?;
                self.restart(Restart::Revert).await
            }
            "reboot" => {
                arity(0, 1)?;
                match args.first().map(String::as_str) {
                    None => self.restart(Restart::Reboot).await,
                    Some("prepare-only") => self.restart(Restart::AwaitReboot).await,
                    Some(other) => Err(format!("unknown reboot option `{other}'")),
                }
            }
            "close" => {
                arity(0, 0)?;
                self.open_session(name)?;
                self.close().await.map(|()| Vec::new())
            }
            "print-execute-command" => {
                arity(0, 0)?;
                let socket = self.open_session(name)?.socket();
                let mut argv = self.auxverb.to_vec();
                argv.push(socket.to_string_lossy().into_owned());
                let encoded: Vec<String> = argv.iter().map(|a| words::encode(a)).collect();
                Ok(vec![encoded.join(",")])
            }
            "copydown" | "copyup" => {
                arity(2, 2)?;
                self.copy(name, &args[0], &args[1])
                    .await
                    .map(|()| Vec::new())
            }
            "shell" => {
                arity(1, usize::MAX)?;
                Err("not supported by virt server".into())
            }
            "auxverb-debug-fail" => Ok(Vec::new()),
            _ => Err(format!("unknown command `{name}'")),
        }
    }

    fn open_session(&self, command: &str) -> Result<&Session, String> {
        self.session
            .as_ref()
            .ok_or_else(|| format!("`{command}' when not open"))
    }

    async fn open(&mut self) -> Reply {
        if self.session.is_some() {
            return Err("`open' when already open".into());
        }
        // The socket first: nothing to undo if it fails.
        let dir = tempfile::Builder::new()
            .prefix("dep8-virt-server.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| format!("creating a temporary dir: {e}"))?;
        let path = dir.path().join("exec.sock");
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("listening on {}: {e}", path.display()))?;
        let listener = Arc::new(listener);
        let tb = self
            .backend
            .open(self.args)
            .await
            .map_err(|e| format!("opening {}: {e}", self.backend.name()))?;
        let scratch = tb.scratch().to_string();
        let tb: SharedTestbed = Arc::new(RwLock::new(tb));
        let acceptor = tokio::spawn(accept(listener.clone(), tb.clone()));
        self.session = Some(Session {
            tb,
            dir,
            listener,
            acceptor,
        });
        Ok(vec![words::encode(&scratch)])
    }

    /// `revert`, `reboot` or `reboot prepare-only`.
    async fn restart(&mut self, how: Restart) -> Reply {
        let needs = match how {
            Restart::Revert => Capability::Revert,
            Restart::Reboot | Restart::AwaitReboot => Capability::Reboot,
        };
        let name = needs.word();
        let Some(session) = self.session.as_mut() else {
            return Err(format!("`{name}' when not open"));
        };
        if !session.tb.read().await.capabilities().has(needs) {
            return Err(format!("`{name}' when `{name}' not advertised"));
        }
        if let Restart::AwaitReboot = how {
            // The test's command still runs: let the test go on, then let
            // the commands running now end as the testbed goes down.
            let prepared = session.tb.read().await.prepare_reboot().await;
            prepared.map_err(|e| format!("{name}: {e}"))?;
            let _ = tokio::time::timeout(GOING_DOWN, session.tb.write()).await;
        }
        session.stop_commands().await;
        let done = {
            let mut tb = session.tb.write().await;
            match how {
                Restart::Revert => tb.revert().await,
                Restart::Reboot => tb.reboot().await,
                Restart::AwaitReboot => tb.await_reboot().await,
            }
            .map(|()| words::encode(tb.scratch()))
        };
        session.accept_commands();
        done.map(|scratch| vec![scratch])
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Closes for good: the exit status, 0 unless closing failed.
    async fn shut_down(&mut self) -> i32 {
        match self.close().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("dep8 virt-server: {e}");
                1
            }
        }
    }

    /// Closes the testbed, if open, and removes the socket's dir.
    async fn close(&mut self) -> Result<(), String> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        session.stop_commands().await;
        let closed = session.tb.write().await.close().await;
        closed.map_err(|e| format!("closing the testbed: {e}"))
    }

    async fn copy(&self, name: &str, from: &str, to: &str) -> Result<(), String> {
        let session = self.open_session(name)?;
        if from.is_empty() || to.is_empty() {
            return Err(format!("{name} paths must be nonempty"));
        }
        let is_dir = from.ends_with('/');
        if is_dir != to.ends_with('/') {
            return Err(format!(
                "{name} paths must agree about directoryness (presence or absence of trailing /)"
            ));
        }
        let strip = |p: &str| {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() { "/" } else { trimmed }.to_string()
        };
        let (from, to) = (strip(from), strip(to));
        let tb = session.tb.read().await;
        // Through a shared scratch dir the host may already see the file at
        // its destination (autopkgtest copies files it made there).
        let (host, testbed) = if name == "copydown" {
            (&from, &to)
        } else {
            (&to, &from)
        };
        if host_view(tb.as_ref(), testbed).is_some_and(|seen| same_file(&seen, Path::new(host))) {
            return Ok(());
        }
        if name == "copydown" {
            let host = Path::new(&from);
            match std::fs::metadata(host) {
                Ok(m) if m.is_dir() != is_dir => {
                    return Err(format!(
                        "copydown: {from} is {}a directory",
                        if is_dir { "not " } else { "" }
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("copydown: {from}: {e}")),
            }
            tb.copy_down(host, &to).await
        } else {
            tb.copy_up(&from, Path::new(&to)).await
        }
        .map_err(|e| format!("{name}: {e}"))
    }
}

/// Where the host sees a testbed path, when it is in a shared scratch dir.
fn host_view(tb: &dyn Testbed, path: &str) -> Option<PathBuf> {
    let shared = tb.capabilities().downtmp_host.as_ref()?;
    let rest = Path::new(path).strip_prefix(tb.scratch()).ok()?;
    Some(shared.join(rest))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Accepts exec connections; each runs in a task that dies with this one.
async fn accept(listener: Arc<UnixListener>, tb: SharedTestbed) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    running.spawn(serve_exec(stream, tb.clone()));
                }
                Err(e) => {
                    eprintln!("dep8 virt-server: accepting an exec connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished commands.
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
}

/// One auxverb invocation: read its argv, run it, stream, report.
async fn serve_exec(stream: UnixStream, tb: SharedTestbed) {
    let (mut from_client, to_client) = stream.into_split();
    let to_client = Mutex::new(to_client);
    let end = match read_frame(&mut from_client).await {
        Ok(Some((exec_channel::ARGV, payload))) => {
            let argv: Vec<String> = exec_channel::decode_argv(&payload)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if argv.is_empty() {
                Some((FAIL, b"no command given".to_vec()))
            } else {
                run(argv, &tb, &mut from_client, &to_client).await
            }
        }
        Ok(Some((kind, _))) => Some((
            FAIL,
            format!("expected the command first, got a {:?} frame", kind as char).into_bytes(),
        )),
        Ok(None) => None,
        Err(e) => Some((FAIL, format!("reading the command: {e}").into_bytes())),
    };
    if let Some((kind, payload)) = end {
        let mut to_client = to_client.into_inner();
        let _ = write_frame(&mut to_client, kind, &payload).await;
        // Closing with unread input would reset the connection and could
        // lose the last frame: signal the end, then wait for the client's.
        let _ = to_client.shutdown().await;
        let mut sink = tokio::io::sink();
        let drain = tokio::io::copy(&mut from_client, &mut sink);
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// A pipe whose read end any backend can use as an [`Input::File`] at its
/// [`proc_path`]; and one for each output stream.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    dep8_testbed::exec::pipe().map_err(|e| e.to_string())
}

/// Runs `argv`; returns the final frame, or `None` when the client left
/// (its command is then killed by dropping the exec).
async fn run(
    argv: Vec<String>,
    tb: &SharedTestbed,
    from_client: &mut OwnedReadHalf,
    to_client: &Mutex<OwnedWriteHalf>,
) -> Option<(u8, Vec<u8>)> {
    let pipes = (|| Ok::<_, String>((pipe()?, pipe()?, pipe()?)))();
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return Some((FAIL, e.into_bytes())),
    };
    let req = ExecRequest {
        argv,
        stdin: Input::File(proc_path(&in_r)),
        stdout: Output::file(proc_path(&out_w)),
        stderr: Output::file(proc_path(&err_w)),
        ..Default::default()
    };
    let stdin = match tokio::net::unix::pipe::Sender::from_owned_fd(in_w) {
        Ok(s) => s,
        Err(e) => return Some((FAIL, format!("stdin pipe: {e}").into_bytes())),
    };
    let running = async {
        let outcome = tb.read().await.exec(req).await;
        // The backend has closed its copies: end of file for the forwarders.
        drop((in_r, out_w, err_w));
        outcome
    };
    let forwarding = async {
        tokio::join!(
            forward(out_r, exec_channel::STDOUT, to_client),
            forward(err_r, exec_channel::STDERR, to_client)
        )
    };
    let client_gone = feed_stdin(from_client, stdin);
    tokio::pin!(running, forwarding, client_gone);
    let mut forwarded = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut running => break outcome,
            _ = &mut forwarding, if !forwarded => forwarded = true,
            () = &mut client_gone => return None,
        }
    };
    if !forwarded {
        let _ = tokio::time::timeout(OUTPUT_GRACE, &mut forwarding).await;
    }
    Some(match outcome {
        Ok(outcome) => (
            EXIT,
            match outcome.status {
                ExitStatus::Code(c) => format!("exit {c}"),
                ExitStatus::Signal(s) => format!("signal {s}"),
            }
            .into_bytes(),
        ),
        Err(e) => (FAIL, e.to_string().into_bytes()),
    })
}

/// Copies the client's stdin frames into the command's stdin; returns only
/// when the client disconnects (or breaks the framing).
async fn feed_stdin(from_client: &mut OwnedReadHalf, stdin: tokio::net::unix::pipe::Sender) {
    let mut stdin = Some(stdin);
    loop {
        match read_frame(from_client).await {
            Ok(Some((exec_channel::STDIN, data))) if data.is_empty() => stdin = None,
            Ok(Some((exec_channel::STDIN, data))) => {
                if let Some(pipe) = stdin.as_mut() {
                    // A command that stopped reading just loses its input.
                    if pipe.write_all(&data).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(Some(_)) | Ok(None) | Err(_) => return,
        }
    }
}

/// Streams one output pipe to the client as frames until end of file.
async fn forward(from: OwnedFd, kind: u8, to_client: &Mutex<OwnedWriteHalf>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(from) else {
        return;
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if write_frame(&mut *to_client.lock().await, kind, &buf[..n])
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
