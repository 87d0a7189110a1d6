//! `dep8 virt-server` speaking autopkgtest's protocol, driven line by line,
//! and autopkgtest's short testbed names resolved through PATH.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const DEP8: &str = env!("CARGO_BIN_EXE_dep8");

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(DEP8)
            .args(["virt-server", "null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut server = Server {
            child,
            stdin,
            stdout,
        };
        assert_eq!(server.read(), "ok", "banner");
        server
    }

    fn read(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "unterminated reply {line:?}");
        line.trim_end().to_string()
    }

    fn send(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        self.read()
    }

    /// Closes stdin and waits (at most 10 s) for the exit status.
    fn eof(&mut self) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    /// Even after a failed assertion: end of file lets the server clean up.
    fn drop(&mut self) {
        if self.eof().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn decode(word: &str) -> String {
    percent_encoding::percent_decode_str(word)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

#[test]
fn malformed_requests_get_error_replies() {
    let mut server = Server::start();
    let error = |reply: String, what: &str| {
        assert!(
            reply.starts_with("error ") && reply.contains(what),
            "expected an error about {what:?}, got {reply:?}"
        );
    };
    error(server.send("frobnicate"), "unknown command `frobnicate'");
    error(server.send(""), "empty commands are not permitted");
    error(server.send("capabilities extra"), "too many arguments");
    error(server.send("copydown /etc/hostname"), "too few arguments");
    error(server.send("print-execute-command"), "when not open");
    error(server.send("revert"), "when not open");
    error(server.send(&"x".repeat(100_000)), "longer than");
    let scratch = server.send("open");
    let scratch = decode(
        scratch
            .strip_prefix("ok ")
            .expect("open replies ok SCRATCH"),
    );
    assert!(Path::new(&scratch).is_dir());
    error(server.send("open"), "already open");
    error(server.send("revert"), "not advertised");
    error(server.send("reboot"), "not advertised");
    error(
        server.send("copydown /etc/hostname /tmp/x/"),
        "directoryness",
    );
    error(
        server.send("copydown /nonexistent/file /tmp/x"),
        "No such file",
    );
    let caps = server.send("capabilities");
    // autopkgtest 5.48: null does not claim isolation.
    assert!(!caps.contains("isolation"), "{caps}");
    assert!(
        caps.contains(&format!("downtmp-host%3D{scratch}")),
        "{caps}"
    );

    // A garbled exec connection is refused; the server carries on.
    let aux = server.send("print-execute-command");
    let aux: Vec<String> = aux
        .strip_prefix("ok ")
        .unwrap()
        .split(',')
        .map(decode)
        .collect();
    let socket = aux.last().unwrap();
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.write_all(b"garbage that is no frame").unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    assert_eq!(answer.first(), Some(&b'F'), "{answer:?}");

    // The auxverb runs commands, with their status.
    let out = Command::new(&aux[0])
        .args(&aux[1..])
        .args(["sh", "-c", "cat; echo err >&2; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"in\0put")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"in\0put");
    assert_eq!(out.stderr, b"err\n");

    // End of file closes the testbed and removes the scratch and socket.
    let status = server.eof().expect("no exit within 10 s of end of file");
    assert_eq!(status.code(), Some(0));
    assert!(!Path::new(&scratch).exists(), "scratch left behind");
    assert!(!Path::new(socket).exists(), "socket left behind");
}

#[test]
fn short_names_find_autopkgtest_virt_programs_in_path() {
    let bin = tempfile::tempdir().unwrap();
    let server = bin.path().join("autopkgtest-virt-dep8selftest");
    std::fs::write(
        &server,
        format!("#!/bin/sh\nexec '{DEP8}' virt-server null \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out_dir = bin.path().join("out");
    let out = Command::new(DEP8)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("PATH", path)
        .args(["run", "examples/hello", "-o", out_dir.to_str().unwrap()])
        .args(["--", "dep8selftest"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "greets               PASS\ncommand1             PASS (superficial)\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}
