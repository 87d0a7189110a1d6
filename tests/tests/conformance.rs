//! The conformance suite against every backend this machine can run.
//! A backend whose tools are missing is skipped with a reason; one whose
//! tools are present but broken fails loudly.

use dep8_conformance::{format_verdicts, run_all, Verdict};
use dep8_core::testbed::Testbed;

async fn certify(name: &str, mut tb: Box<dyn Testbed>) {
    let verdicts = run_all(tb.as_mut()).await;
    tb.close().await.expect("close");
    let table = format_verdicts(&verdicts);
    eprintln!("conformance on {name}:\n{table}");
    assert!(
        !verdicts.iter().any(|(_, v)| matches!(v, Verdict::Fail(_))),
        "{name} failed conformance:\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn null() {
    let tb = dep8_backend_null::NullTestbed::open().expect("open null");
    certify("null", Box::new(tb)).await;
}

async fn certify_ssh(name: &str, login: dep8_conformance::sshd::Login, extra: &[&str]) {
    use dep8_core::testbed::Backend;
    let Some(sshd) = dep8_conformance::sshd::LoopbackSshd::start_with(login) else {
        return;
    };
    let mut args = sshd.backend_args();
    args.extend(extra.iter().map(|a| a.to_string()));
    let tb = dep8_backend_ssh::SshBackend
        .open(&args)
        .await
        .expect("open ssh");
    assert!(
        tb.capabilities()
            .has(dep8_core::capability::Capability::RootOnTestbed),
        "{name}: no root"
    );
    certify(name, tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh() {
    certify_ssh("ssh", dep8_conformance::sshd::Login::Root, &[]).await;
}

/// Logged in as an unprivileged user, root through `sudo -n`.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_sudo() {
    certify_ssh(
        "ssh via sudo",
        dep8_conformance::sshd::Login::User { sudo: true },
        &[],
    )
    .await;
}

/// `--reboot` on a machine whose reboot is simulated (see `Login`).
#[tokio::test(flavor = "multi_thread")]
async fn ssh_reboot() {
    certify_ssh(
        "ssh with reboot",
        dep8_conformance::sshd::Login::RootFakeReboot,
        &["--reboot"],
    )
    .await;
}
