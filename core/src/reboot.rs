//! Reboots requested by a test, as autopkgtest's README.package-tests
//! describes them:
//! - a `needs-reboot` test calls `/tmp/autopkgtest-reboot MARK`, which
//!   records MARK and kills the test; the runner reboots the testbed and
//!   runs the test again from the start with `AUTOPKGTEST_REBOOT_MARK=MARK`,
//!   keeping the scratch dir;
//! - or it calls `/tmp/autopkgtest-reboot-prepare MARK`, which records MARK
//!   and waits; the runner, which watches for that mark while the test
//!   runs, gets the testbed ready to go down and removes the mark
//!   ([`crate::testbed::Testbed::prepare_reboot`]); the test then reboots
//!   the testbed by itself (`reboot`, kexec, ...), what it printed since is
//!   dropped, and it is run again with the mark once the testbed is back
//!   ([`crate::testbed::Testbed::await_reboot`]).

use crate::capability::{Capabilities, Capability};
use crate::testbed::{ExecRequest, ExitStatus, Input, Result, Testbed, TestbedError};

/// Where the shell that runs a test records its pid.
pub const SCRIPT_PID_FILE: &str = "/tmp/autopkgtest_script_pid";
/// Where `/tmp/autopkgtest-reboot` records the test's mark.
pub const MARK_FILE: &str = "/run/autopkgtest-reboot-mark";
pub use crate::testbed::{PREPARE_MARK_FILE, RELEASE_PREPARED};

/// The in-testbed `autopkgtest-reboot` command: records the mark, then
/// SIGKILLs the test, i.e. the ancestor of this script whose parent is the
/// shell that recorded its pid (so that shell survives to report exit 137).
const REBOOT_SCRIPT: &str = r#"#!/bin/sh
# Usage: /tmp/autopkgtest-reboot MARK  (provided by dep8)
set -e
[ -n "$1" ] || { echo "Usage: $0 MARK" >&2; exit 1; }
echo "$1" > /run/autopkgtest-reboot-mark
shell=$(cat /tmp/autopkgtest_script_pid)
p=$PPID
while [ "$p" -gt 1 ] && [ "$p" != "$shell" ]; do
    stat=$(cat "/proc/$p/stat")
    set -- ${stat##*) }
    if [ "$2" = "$shell" ]; then kill -KILL "$p"; exit 0; fi
    p=$2
done
echo "$0: not called from a test that dep8 runs" >&2
exit 1
"#;

/// What `/tmp/autopkgtest-reboot-prepare` writes to the test's stdout and
/// stderr before it records its mark: what the test wrote before it reaches
/// dep8 first, through the same pipes, however slow they are. dep8 keeps
/// the test's output up to it and drops the rest.
pub const PREPARE_MARKER: &[u8] = b"\x1edep8: autopkgtest-reboot-prepare\x1e\n";

/// The in-testbed `autopkgtest-reboot-prepare` command: writes
/// [`PREPARE_MARKER`] to stdout and (unless it is the same pipe) stderr,
/// notes in /run/autopkgtest-reboot-prepare-streams which of the test
/// shell's streams (1: stdout, 2: stderr) those went to straight (a test
/// may have sent its own output elsewhere; that shell, see
/// [`crate::engine::script::exec_line`], has the test's stderr on its fd
/// 3), records the mark, and waits until dep8 removes it. It then keeps
/// the test's output pipes drained (dep8 may stop reading them as the testbed
/// goes down, and a write to a pipe nobody reads would kill the test
/// before it reboots).
const PREPARE_SCRIPT: &str = r#"#!/bin/sh
# Usage: /tmp/autopkgtest-reboot-prepare MARK  (provided by dep8)
set -e
[ -n "$1" ] || { echo "Usage: $0 MARK" >&2; exit 1; }
shell=$(cat /tmp/autopkgtest_script_pid 2>/dev/null) || shell=
reaches() {
    [ /proc/$$/fd/$1 -ef /proc/$shell/fd/1 ] && echo 1
    [ /proc/$$/fd/$1 -ef /proc/$shell/fd/3 ] && echo 2
    true
}
printf '\036dep8: autopkgtest-reboot-prepare\036\n' || true
streams=$(reaches 1)
if ! [ /proc/$$/fd/1 -ef /proc/$$/fd/2 ]; then
    printf '\036dep8: autopkgtest-reboot-prepare\036\n' >&2 || true
    streams="$streams $(reaches 2)"
fi
rm -f /run/autopkgtest-reboot-prepare-streams
[ -z "$shell" ] || echo $streams > /run/autopkgtest-reboot-prepare-streams
echo "$1" > /run/autopkgtest-reboot-prepare-mark
while [ -e /run/autopkgtest-reboot-prepare-mark ]; do sleep 0.5; done
for fd in 1 2; do
    if [ -p "/proc/$$/fd/$fd" ]; then
        cat "/proc/$$/fd/$fd" >/dev/null 2>&1 </dev/null &
    fi
done
"#;

/// Run beside a test: prints the mark (and on a second line the streams
/// the prepare command noted) and exits 0 when the test calls
/// `/tmp/autopkgtest-reboot-prepare`, exits 1 once the test's shell (whose
/// pid it finds in [`SCRIPT_PID_FILE`]) is gone.
const WATCH_PREPARE: &str = r#"while :; do
    if [ -e /run/autopkgtest-reboot-prepare-mark ]; then
        cat /run/autopkgtest-reboot-prepare-mark
        cat /run/autopkgtest-reboot-prepare-streams 2>/dev/null
        exit 0
    fi
    if [ -s /tmp/autopkgtest_script_pid ]; then
        read -r pid < /tmp/autopkgtest_script_pid
        kill -0 "$pid" 2>/dev/null || exit 1
    fi
    sleep 0.5
done"#;

/// Whether tests on this testbed can ask for a reboot.
pub fn available(caps: &Capabilities) -> bool {
    caps.has(Capability::Reboot) && caps.has(Capability::RootOnTestbed)
}

/// Whether a test's shell ended the way a reboot request ends it.
pub fn killed(status: ExitStatus) -> bool {
    matches!(status, ExitStatus::Signal(9) | ExitStatus::Code(137))
}

/// Puts `/tmp/autopkgtest-reboot` and `/tmp/autopkgtest-reboot-prepare`
/// (and their `/sbin` links) in place and forgets the last test's shell;
/// again after every reboot, since /tmp may not survive one.
pub async fn install(tb: &dyn Testbed) -> Result<()> {
    let scratch = shell_words::quote(tb.scratch());
    // Both scripts on stdin, split at the second `#!` line.
    let script = format!(
        "set -e; rm -f {SCRIPT_PID_FILE}; cd {scratch}; \
         awk 'NR > 1 && /^#!/ {{ n++ }} {{ print > (n ? \"autopkgtest-reboot-prepare\" : \"autopkgtest-reboot\") }}'; \
         for s in autopkgtest-reboot autopkgtest-reboot-prepare; do \
         chmod 755 $s; ln -fns {scratch}/$s /tmp/$s; ln -fns {scratch}/$s /sbin/$s; done"
    );
    let out = tb
        .exec(
            ExecRequest::shell(&script)
                .stdin(Input::Bytes(
                    [REBOOT_SCRIPT, PREPARE_SCRIPT].concat().into_bytes(),
                ))
                .capture(),
        )
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestbedError::failure(
            "installing /tmp/autopkgtest-reboot",
            out.stderr_text().trim(),
        ))
    }
}

/// A test's call of `/tmp/autopkgtest-reboot-prepare`.
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    pub mark: String,
    /// Whether a marker went straight to the test's stdout and to its
    /// stderr; both when the command could not tell.
    pub marked: [bool; 2],
}

impl Prepared {
    /// From [`WATCH_PREPARE`]'s output.
    fn parse(output: &str) -> Self {
        let mut lines = output.lines();
        let mark = lines.next().unwrap_or_default().trim().to_string();
        let marked = match lines.next() {
            Some(streams) => {
                let has = |s| streams.split_whitespace().any(|w| w == s);
                [has("1"), has("2")]
            }
            None => [true, true],
        };
        Prepared { mark, marked }
    }
}

/// Waits beside a running test until it calls
/// `/tmp/autopkgtest-reboot-prepare`, or `None` once the test's shell has
/// ended without.
pub async fn watch_prepare(tb: &dyn Testbed) -> Result<Option<Prepared>> {
    let out = tb.exec(ExecRequest::shell(WATCH_PREPARE).capture()).await?;
    Ok(out
        .status
        .success()
        .then(|| Prepared::parse(&out.stdout_text())))
}

/// The mark a killed test left, if it asked for a reboot; removes it.
pub async fn take_mark(tb: &dyn Testbed) -> Result<Option<String>> {
    let out = tb
        .exec(ExecRequest::shell(&format!("cat {MARK_FILE} && rm -f {MARK_FILE}")).capture())
        .await?;
    Ok(out
        .status
        .success()
        .then(|| out.stdout_text().trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the prepare script's marker lines (all but the mark and the
    /// wait) with `sh`, stdout and stderr as `redirect` leaves them, under
    /// the shell a test runs under where it can reboot (its pid recorded,
    /// stdout and stderr the pipes dep8 reads; see
    /// [`crate::engine::script::exec_line`]): what the two pipes got, and
    /// the streams the script noted.
    fn markers_written(redirect: &str) -> (std::process::Output, String) {
        let dir = tempfile::tempdir().unwrap();
        let (pid, streams) = (dir.path().join("pid"), dir.path().join("streams"));
        let part: String = PREPARE_SCRIPT
            .lines()
            .skip_while(|l| !l.starts_with("shell="))
            .take_while(|l| !l.starts_with("echo \"$1\""))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace(SCRIPT_PID_FILE, &pid.to_string_lossy())
            .replace(
                "/run/autopkgtest-reboot-prepare-streams",
                &streams.to_string_lossy(),
            );
        let script = dir.path().join("part");
        std::fs::write(&script, format!("exec {redirect}\n{part}")).unwrap();
        let test = format!("sh {}", script.display());
        let line = crate::engine::script::exec_line(&test, true)
            .replace(SCRIPT_PID_FILE, &pid.to_string_lossy());
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .expect("sh");
        let noted = std::fs::read_to_string(&streams).expect("streams noted");
        (out, noted.trim().to_string())
    }

    #[test]
    fn the_prepare_script_writes_the_marker_once_to_each_pipe_and_notes_which() {
        let (apart, noted) = markers_written("");
        assert_eq!(apart.stdout, PREPARE_MARKER);
        assert_eq!(apart.stderr, PREPARE_MARKER);
        assert_eq!(noted, "1 2");
        let (merged, noted) = markers_written("2>&1");
        assert_eq!(merged.stdout, PREPARE_MARKER);
        assert_eq!(merged.stderr, b"");
        assert_eq!(noted, "1");
        let (to_stderr, noted) = markers_written("1>&2");
        assert_eq!(to_stderr.stdout, b"");
        assert_eq!(to_stderr.stderr, PREPARE_MARKER);
        assert_eq!(noted, "2");
        let (stdout_away, noted) = markers_written(">/dev/null");
        assert_eq!(stdout_away.stderr, PREPARE_MARKER);
        assert_eq!(noted, "2");
        let (both_away, noted) = markers_written(">/dev/null 2>&1");
        assert_eq!((both_away.stdout, both_away.stderr), (vec![], vec![]));
        assert_eq!(noted, "");
    }

    #[test]
    fn the_watcher_s_output_says_which_streams_to_wait_for() {
        let prepared = |output: &str| Prepared::parse(output).marked;
        assert_eq!(Prepared::parse("m1\n1 2\n").mark, "m1");
        assert_eq!(prepared("m1\n1 2\n"), [true, true]);
        assert_eq!(prepared("m1\n2\n"), [false, true]);
        assert_eq!(prepared("m1\n\n"), [false, false]);
        // No note (an older prepare command): wait for both.
        assert_eq!(prepared("m1\n"), [true, true]);
    }
}
