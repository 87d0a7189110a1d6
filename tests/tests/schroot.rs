//! The schroot backend against the real schroot: a chroot that sessions
//! would change is refused, and the host is left as it was (mounts, temp
//! dirs, sessions, processes) after a run, a timeout and a testbed dropped
//! without being closed.

use dep8_backend_schroot::{Options, SchrootBackend, SchrootTestbed};
use dep8_core::testbed::{Backend, ExecRequest, Testbed, TestbedError};
use dep8_tests::e2e::{dep8_bin, log_tail, source_tree};
use dep8_tests::required_resource;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test chroot, when this machine has one and the tests run as root
/// (they write /etc/schroot and read every process's root).
fn test_chroot() -> Option<String> {
    let chroot = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot with a union-type")?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the schroot tests run as root only");
        return None;
    }
    Some(chroot)
}

/// Every schroot command reads every chroot definition, and the host-state
/// test counts sessions: these tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chroot definition in /etc/schroot/chroot.d, removed when dropped.
struct ChrootDefinition(PathBuf);

impl ChrootDefinition {
    fn write(name: &str, body: &str) -> Self {
        // Written beside and renamed, so that no schroot reads half of it.
        let draft = Path::new("/etc/schroot").join(format!(".{name}.draft"));
        std::fs::write(&draft, format!("[{name}]\n{body}")).expect("write chroot definition");
        let path = Path::new("/etc/schroot/chroot.d").join(name);
        std::fs::rename(&draft, &path).expect("install chroot definition");
        ChrootDefinition(path)
    }
}

impl Drop for ChrootDefinition {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sessions() -> String {
    let out = std::process::Command::new("schroot")
        .args(["--list", "--all-sessions"])
        .output()
        .expect("schroot --list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn refuses_a_chroot_that_sessions_would_change() {
    if test_chroot().is_none() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("dep8-test-persistent-{}", std::process::id());
    let _definition = ChrootDefinition::write(
        &name,
        &format!(
            "type=directory\ndirectory={}\nusers=root\nroot-users=root\n",
            dir.path().display()
        ),
    );
    let err = SchrootBackend
        .open(std::slice::from_ref(&name))
        .await
        .err()
        .expect("a directory chroot without union-type was opened");
    match err {
        TestbedError::Usage(msg) => assert!(
            msg.contains(&format!("schroot chroot {name} ")) && msg.contains("not ephemeral"),
            "unclear refusal: {msg}"
        ),
        other => panic!("refused with the wrong kind of error: {other}"),
    }
    assert!(!sessions().contains(&name), "a session was begun anyway");
}

/// What a schroot testbed could leave behind on the host.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    mounts: Vec<String>,
    temp_dirs: Vec<String>,
    sessions: String,
    overlays: Vec<String>,
}

fn host_state() -> HostState {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.contains("schroot") || m.contains("dep8"))
        .map(String::from)
        .collect();
    let names = |dir: &str, prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    HostState {
        mounts,
        temp_dirs: names("/tmp", "dep8-schroot."),
        sessions: sessions(),
        overlays: names("/var/lib/schroot/union/overlay", ""),
    }
}

async fn open(chroot: &str) -> SchrootTestbed {
    SchrootTestbed::open(Options {
        chroot: chroot.to_string(),
        baseimage: true,
        session_id: None,
        debug: false,
    })
    .await
    .expect("open schroot")
}

/// Starts a process in its own session that outlives the command; returns
/// its pid.
async fn leave_a_process(tb: &dyn Testbed) -> i32 {
    // The pid file is written from inside the new session, so once it is
    // there the process is out of the command's process group (which is
    // killed when the command ends) and the pid is its own (setsid may fork).
    let pid_file = format!("{}/left-behind.pid", tb.scratch());
    let script = format!(
        "setsid sh -c 'echo $$ > {pid_file}.new && mv {pid_file}.new {pid_file}; exec sleep 600' \
         </dev/null >/dev/null 2>&1 & while [ ! -s {pid_file} ]; do sleep 0.05; done; cat {pid_file}"
    );
    let out = tb
        .exec(ExecRequest::shell(&script).capture())
        .await
        .expect("exec");
    out.stdout_text().trim().parse().expect("a pid")
}

/// Whether `pid` is still running (a zombie is not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_unchanged_after_run_timeout_and_drop() {
    let Some(chroot) = test_chroot() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let before = host_state();

    // A run: copies both ways, a revert, a close.
    let mut tb = open(&chroot).await;
    let first = leave_a_process(&tb).await;
    assert!(running(first), "the left-behind process did not start");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "data").unwrap();
    let target = format!("{}/f", tb.scratch());
    tb.copy_down(&host.path().join("f"), &target).await.unwrap();
    tb.copy_up(&target, &host.path().join("back"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(host.path().join("back")).unwrap(),
        "data"
    );
    tb.revert().await.expect("revert");
    assert!(!running(first), "revert left pid {first} running");
    let second = leave_a_process(&tb).await;
    tb.close().await.expect("close");
    assert!(!running(second), "close left pid {second} running");
    assert_eq!(host_state(), before, "after a run");

    // A command that times out, with a child in the background.
    let mut tb = open(&chroot).await;
    let out = tb
        .exec(ExecRequest::shell("sleep 60 & sleep 60").timeout(Duration::from_millis(500)))
        .await
        .expect("exec");
    assert!(out.timed_out);
    tb.close().await.expect("close");
    assert_eq!(host_state(), before, "after a timeout");

    // A testbed dropped without close (a panic, a cancelled run).
    let tb = open(&chroot).await;
    let third = leave_a_process(&tb).await;
    drop(tb);
    assert!(!running(third), "drop left pid {third} running");
    assert_eq!(host_state(), before, "after a drop");
}

/// schroot warns on its own stderr about every session file it cannot
/// stat, such as one that another schroot user is ending at that moment:
/// those warnings are not the test's stderr, so the test still passes and
/// dep8 passes the warning on as its own, on the terminal and in the run's
/// log. A dangling session file, in a private session dir that no other
/// schroot user sees, makes schroot warn at every command.
#[tokio::test]
async fn warnings_about_other_sessions_are_not_the_tests_stderr() {
    let Some(chroot) = test_chroot() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let session_dir = dir.path().join("sessions");
    std::fs::create_dir(&session_dir).unwrap();
    std::os::unix::fs::symlink("/nonexistent", session_dir.join("dep8-test-dangling")).unwrap();
    let src = source_tree(dir.path(), "quiet", "Test-Command: echo fine\nDepends:\n");
    let out = dir.path().join("out");
    let run = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /var/lib/schroot/session && shift && exec "$@""#)
        .arg("sh")
        .arg(&session_dir)
        .arg(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["--", "schroot", &chroot])
        .output()
        .expect("running dep8 under unshare");
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        log_tail(&out, 30)
    );
    // On the terminal and in the run's log, as one of dep8's warnings.
    let warning =
        "WARNING: schroot: W: /var/lib/schroot/session/dep8-test-dangling: Failed to stat file";
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(
        said.contains(warning),
        "dep8 did not pass schroot's warning on:\n{said}"
    );
    let log = std::fs::read_to_string(out.join("log")).unwrap();
    assert!(log.contains(warning), "not in the log:\n{log}");
}
