//! The ssh backend against a real sshd on 127.0.0.1: host key checking,
//! `--accept-new-host-key`, the transport's timeouts, and autopkgtest's
//! ssh-setup protocol with a setup script of our own.

use dep8_backend_ssh::{SshBackend, SshConnection, SshTarget};
use dep8_core::capability::Capability;
use dep8_core::testbed::{Backend, ExecRequest, ExitStatus};
use dep8_tests::sshd::{Login, LoopbackSshd, TEST_USER};
use std::path::Path;
use std::time::{Duration, Instant};

fn log() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

/// The backend's arguments for `sshd` with `known_hosts` instead of the
/// file holding the real key.
fn args_with_known_hosts(sshd: &LoopbackSshd, known_hosts: &Path) -> Vec<String> {
    let mut args = sshd.backend_args();
    let i = args.iter().position(|a| a == "--known-hosts").unwrap();
    args[i + 1] = known_hosts.to_string_lossy().into_owned();
    args
}

async fn open_err(args: &[String]) -> String {
    match SshBackend.open(args).await {
        Ok(_) => panic!("opening with {args:?} succeeded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_host_key_is_refused_at_once() {
    log();
    let Some(sshd) = LoopbackSshd::start() else {
        return;
    };
    let other = sshd.dir().join("other_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let wrong = sshd.dir().join("wrong_known_hosts");
    let key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    std::fs::write(&wrong, format!("[127.0.0.1]:{} {key}", sshd.port())).unwrap();

    let started = Instant::now();
    let err = open_err(&args_with_known_hosts(&sshd, &wrong)).await;
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(err.contains(&wrong.display().to_string()), "{err}");
    assert!(err.contains("--accept-new-host-key"), "{err}");
    // A host key mismatch is never retried for --timeout-ssh.
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");

    // accept-new does not accept a *changed* key either.
    let mut args = args_with_known_hosts(&sshd, &wrong);
    args.push("--accept-new-host-key".into());
    let err = open_err(&args).await;
    assert!(err.contains("Host key verification failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_needs_accept_new_host_key() {
    log();
    let Some(sshd) = LoopbackSshd::start() else {
        return;
    };
    let empty = sshd.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = open_err(&args_with_known_hosts(&sshd, &empty)).await;
    assert!(err.contains("Host key verification failed"), "{err}");

    let mut args = args_with_known_hosts(&sshd, &empty);
    args.push("--accept-new-host-key".into());
    let mut tb = SshBackend.open(&args).await.expect("open with accept-new");
    let out = tb.exec(ExecRequest::new(["true"])).await.unwrap();
    assert!(out.status.success());
    tb.close().await.unwrap();
    let recorded = std::fs::read_to_string(&empty).unwrap();
    let real = std::fs::read_to_string(sshd.dir().join("host_key.pub")).unwrap();
    let real_key = real.split_whitespace().nth(1).unwrap();
    assert!(
        recorded.contains(real_key),
        "the accepted key was not recorded: {recorded}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_timeout_kills_the_remote_tree() {
    log();
    let Some(sshd) = LoopbackSshd::start() else {
        return;
    };
    let mut target = SshTarget::new("127.0.0.1");
    target.port = Some(sshd.port());
    target.login = Some("root".into());
    target.identity = Some(sshd.client_key());
    target.known_hosts = Some(sshd.known_hosts());
    let mut conn = SshConnection::connect(target).await.expect("connect");
    assert!(conn.is_root());
    let (dir, _) = conn.create_scratch().await.unwrap();
    let started = Instant::now();
    let out = conn
        .exec(
            ExecRequest::shell("(sleep 3; touch survivor) & echo started; sleep 60")
                .cwd(&dir)
                .capture()
                .timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.status, ExitStatus::Signal(9));
    assert_eq!(
        out.stdout_text(),
        "started\n",
        "output before the timeout is kept"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the timeout took {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = conn
        .exec(ExecRequest::new(["test", "-e", "survivor"]).cwd(&dir))
        .await
        .unwrap();
    assert!(
        !left.status.success(),
        "a child of the timed-out command survived"
    );
    conn.exec(ExecRequest::new(["rm", "-rf", &dir]))
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_script_protocol() {
    log();
    let Some(sshd) = LoopbackSshd::start_with(Login::RootFakeReboot) else {
        return;
    };
    let script = sshd.setup_script();
    let args: Vec<String> = [
        "--known-hosts",
        &sshd.known_hosts().to_string_lossy(),
        "-s",
        &script.to_string_lossy(),
        "--capability",
        "isolation-container",
        "--",
        "--flavour",
        "small",
    ]
    .map(String::from)
    .to_vec();
    let mut tb = SshBackend.open(&args).await.expect("open via setup script");
    let caps = tb.capabilities().clone();
    for cap in [
        Capability::IsolationMachine,
        Capability::IsolationContainer,
        Capability::Revert,
        Capability::Reboot,
        Capability::RootOnTestbed,
    ] {
        assert!(caps.has(cap), "{cap} missing from {caps:?}");
    }

    let scratch = tb.scratch().to_string();
    let out = tb
        .exec(
            ExecRequest::shell("id -u; touch file")
                .cwd(&scratch)
                .capture(),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "0\n");
    tb.revert().await.expect("revert");
    assert_eq!(tb.scratch(), scratch);
    let state = sshd.dir().join("state");
    assert_eq!(
        std::fs::read_to_string(state.join("reverted")).unwrap(),
        "reverted\n"
    );
    let out = tb
        .exec(ExecRequest::new(["test", "-d", &scratch]))
        .await
        .unwrap();
    assert!(out.status.success(), "scratch gone after revert");
    tb.reboot().await.expect("reboot");
    let out = tb
        .exec(ExecRequest::new(["test", "-e", "file"]).cwd(&scratch))
        .await
        .unwrap();
    assert!(out.status.success(), "scratch file gone after reboot");
    tb.close().await.expect("close");

    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    let extra = format!("--state {}", state.display());
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "open --flavour small".to_string(),
            format!("revert --flavour small {extra}"),
            format!("wait-reboot --flavour small {extra}"),
            format!("cleanup --flavour small {extra}"),
        ]
    );
    let gone = std::process::Command::new("test")
        .args(["-e", &scratch])
        .status()
        .unwrap();
    assert!(!gone.success(), "scratch {scratch} left behind");
}

/// `dep8 run` on an example package over ssh, the whole way through.
#[test]
fn dep8_run_over_ssh() {
    let Some(sshd) = LoopbackSshd::start() else {
        return;
    };
    let repo = dep8_tests::e2e::repo();
    let out = sshd.dir().join("out");
    let run = std::process::Command::new(dep8_tests::e2e::dep8_bin())
        .current_dir(repo)
        .args(["run", "-B", "examples/hello", "-o"])
        .arg(&out)
        .arg("--")
        .arg("ssh")
        .args(sshd.backend_args())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let summary = std::fs::read_to_string(out.join("summary")).unwrap();
    assert_eq!(
        summary, "greets               PASS\ncommand1             PASS (superficial)\n",
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_root_or_sudo_root_is_not_offered() {
    log();
    let Some(sshd) = LoopbackSshd::start_with(Login::User { sudo: false }) else {
        return;
    };
    let mut tb = SshBackend.open(&sshd.backend_args()).await.expect("open");
    let caps = tb.capabilities().clone();
    assert!(!caps.has(Capability::RootOnTestbed), "{caps:?}");
    assert_eq!(caps.suggested_normal_users, [TEST_USER]);
    let out = tb
        .exec(ExecRequest::new(["id", "-un"]).capture())
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), format!("{TEST_USER}\n"));
    let err = tb
        .exec(ExecRequest::new(["true"]).user("nobody"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without root"), "{err}");
    tb.close().await.expect("close");
}
