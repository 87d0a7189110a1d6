//! What a person sees of `dep8 run` on a terminal: a live display (tests
//! done and left, the running test and its last output line) above which
//! dep8's messages scroll, and coloured results; `NO_COLOR`, `--color` and
//! `-q` are respected, `-d`'s log goes above the display, and without a
//! terminal the output is plain lines.
//! The terminal is a real pseudo-terminal (nix's openpty).

use dep8_tests::e2e::{dep8_bin, source_tree};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::pty::{openpty, Winsize};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// A slow test that prints a marker half-way, and one that fails.
const CONTROL: &str = "\
Test-Command: echo first-line; sleep 1; echo progress-marker-line; sleep 2
Features: test-name=slow
Depends: bash

Test-Command: sleep 1; false
Features: test-name=fails
Depends: bash
";

/// Held while a test has a terminal open.
static TERMINAL: Mutex<()> = Mutex::new(());

/// The green PASS and red FAIL of the summary lines.
const GREEN_PASS: &str = "\u{1b}[32mPASS";
const RED_FAIL: &str = "\u{1b}[31m\u{1b}[1mFAIL";

/// Runs `dep8 DEP8_ARGS run RUN_ARGS -o OUT SRC -- null` with stdin, stdout and stderr on a new
/// pseudo-terminal; returns the exit status and every byte the terminal
/// got.
fn run_on_terminal(
    src: &Path,
    out: &Path,
    (dep8_args, run_args): (&[&str], &[&str]),
    env: &[(&str, &str)],
) -> (i32, String) {
    let winsize = Winsize {
        ws_row: 30,
        ws_col: 150,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // One terminal at a time: a dep8 started by another test in between
    // could inherit this one's descriptors and keep it open.
    let _alone = TERMINAL.lock().unwrap_or_else(|e| e.into_inner());
    let pty = openpty(Some(&winsize), None::<&nix::sys::termios::Termios>).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("close-on-exec");
    }
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
    let mut command = Command::new(dep8_bin());
    command
        .args(dep8_args)
        .arg("run")
        .args(run_args)
        .arg("-o")
        .arg(out)
        .arg(src)
        .args(["--", "null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave));
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("dep8 starts");
    // Only the child holds the terminal now: reading ends (EIO) when it exits.
    drop(command);
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut bytes = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        match master.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    let status = child.wait().expect("dep8 ends");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[test]
fn a_terminal_gets_a_live_display_and_coloured_results() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(dir.path(), "progress", CONTROL);
    let (code, screen) = run_on_terminal(&src, &dir.path().join("out"), (&[], &[]), &[]);
    assert_eq!(code, 4, "{screen}");
    // The display: done/total, the running test, its last output line.
    assert!(screen.contains("[0/2]"), "{screen}");
    assert!(
        screen.contains("running slow (2 left): progress-marker-line"),
        "{screen}"
    );
    assert!(screen.contains("[1/2]"), "{screen}");
    // dep8's messages above it, the results coloured.
    assert!(screen.contains("opening testbed: null"), "{screen}");
    assert!(
        screen.contains(&format!("slow                 {GREEN_PASS}")),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("fails                {RED_FAIL}")),
        "{screen}"
    );
    // The files stay plain.
    let summary = std::fs::read_to_string(dir.path().join("out/summary")).unwrap();
    assert_eq!(
        summary,
        "slow                 PASS\nfails                FAIL non-zero exit status 1\n"
    );
}

#[test]
fn the_debug_log_goes_above_the_live_display() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(dir.path(), "progress", CONTROL);
    let (code, screen) = run_on_terminal(&src, &dir.path().join("out"), (&["-dd"], &[]), &[]);
    assert_eq!(code, 4, "{screen}");
    // The engine's step timings and test commands, through tracing.
    let log_lines: Vec<usize> = screen
        .match_indices("dep8_core::engine")
        .map(|(at, _)| at)
        .collect();
    assert!(log_lines.len() >= 3, "{screen}");
    assert!(screen.contains("probing the testbed: "), "{screen}");
    assert!(screen.contains("test slow: "), "{screen}");
    // Each starts on a line of its own: after a newline or after the
    // display's line was cleared (`\r\x1b[2K`), never after the display's
    // spinner, as when a line is written into the drawn display.
    for at in log_lines {
        let line_start = ["\n", "\x1b[2K"]
            .iter()
            .filter_map(|end| screen[..at].rfind(end).map(|i| i + end.len()))
            .max()
            .unwrap_or(0);
        let before = &screen[line_start..at];
        assert!(
            !before
                .chars()
                .any(|c| ('\u{2800}'..='\u{28ff}').contains(&c)),
            "a log line broke into the display: {before:?}\n{screen}"
        );
    }
    // The display was there all along.
    assert!(screen.contains("[1/2]"), "{screen}");
}

#[test]
fn no_color_and_color_never_keep_the_results_plain() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(dir.path(), "progress", CONTROL);
    for (i, (args, env)) in [
        (&[][..], &[("NO_COLOR", "1")][..]),
        (&["--color", "never"][..], &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let (code, screen) =
            run_on_terminal(&src, &dir.path().join(format!("out{i}")), (args, &[]), env);
        assert_eq!(code, 4, "{screen}");
        assert!(screen.contains("slow                 PASS"), "{screen}");
        assert!(!screen.contains(GREEN_PASS), "{screen}");
        // The live display is still there.
        assert!(screen.contains("[1/2]"), "{screen}");
    }
}

#[test]
fn quiet_on_a_terminal_shows_only_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(dir.path(), "progress", CONTROL);
    let (code, screen) = run_on_terminal(&src, &dir.path().join("out"), (&[], &["-q"]), &[]);
    assert_eq!(code, 4, "{screen}");
    assert!(
        !screen.contains("[0/2]"),
        "no live display with -q: {screen}"
    );
    assert!(!screen.contains("opening testbed"), "{screen}");
    assert!(
        screen.contains(&format!("slow                 {GREEN_PASS}")),
        "{screen}"
    );
}

#[test]
fn without_a_terminal_the_lines_are_plain() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(dir.path(), "progress", CONTROL);
    let out = Command::new(dep8_bin())
        .arg("run")
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg(&src)
        .args(["--", "null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        stdout,
        "slow                 PASS\nfails                FAIL non-zero exit status 1\n"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    // The whole output of the tests, and dep8's lines, as autopkgtest's.
    assert!(
        stderr.contains("first-line\nprogress-marker-line\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("]: test slow: [-----------------------"),
        "{stderr}"
    );
    // --color always colours even a pipe.
    let coloured = Command::new(dep8_bin())
        .args(["--color", "always", "run", "-o"])
        .arg(dir.path().join("out2"))
        .arg(&src)
        .args(["--", "null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&coloured.stdout).contains(GREEN_PASS),
        "{coloured:?}"
    );
}
