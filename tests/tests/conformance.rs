//! The conformance suite against every backend this machine can run.
//! A backend whose tools are missing is skipped with a reason; one whose
//! tools are present but broken fails loudly.

use dep8_conformance::e2e::{dep8_bin, required_program};
use dep8_conformance::{format_verdicts, required_resource, run_all, Verdict};
use dep8_core::testbed::{Backend, Testbed};

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

/// The unshare backend on the test rootfs, with `extra` arguments.
async fn certify_unshare(name: &str, extra: &[&str]) {
    let Some(tarball) = dep8_conformance::required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball")
    else {
        return;
    };
    let mut args = vec!["--tarball".to_string(), tarball, "--baseimage".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let tb = dep8_backend_unshare::UnshareBackend
        .open(&args)
        .await
        .expect("open unshare");
    certify(name, tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unshare() {
    certify_unshare("unshare", &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unshare_in_a_user_namespace() {
    certify_unshare("unshare --userns", &["--userns"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unshare_with_private_network() {
    certify_unshare("unshare --private-network", &["--private-network"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schroot() {
    use dep8_backend_schroot::{Options, SchrootTestbed};
    let Some(chroot) = dep8_conformance::required_resource(
        "DEP8_TEST_SCHROOT",
        "a schroot chroot with a union-type",
    ) else {
        return;
    };
    let tb = SchrootTestbed::open(Options {
        chroot,
        baseimage: true,
        session_id: None,
        debug: false,
    })
    .await
    .expect("open schroot");
    certify("schroot", Box::new(tb)).await;
}

/// `external PROGRAM ARGS...`, as `dep8 run SRC -- external ...` opens it.
async fn external(program: &str, args: &[&str]) -> Box<dyn Testbed> {
    let mut argv = vec![program.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    dep8_backend_external::ExternalBackend
        .open(&argv)
        .await
        .unwrap_or_else(|e| panic!("open external {}: {e}", argv.join(" ")))
}

#[tokio::test(flavor = "multi_thread")]
async fn external_autopkgtest_virt_null() {
    if required_program("autopkgtest-virt-null", "autopkgtest").is_none() {
        return;
    }
    let tb = external("autopkgtest-virt-null", &[]).await;
    certify("external autopkgtest-virt-null", tb).await;
}

/// dep8 driving itself: the client over `dep8 virt-server null`.
#[tokio::test(flavor = "multi_thread")]
async fn external_dep8_virt_server_null() {
    let dep8 = dep8_bin();
    let tb = external(dep8.to_str().unwrap(), &["virt-server", "null"]).await;
    certify("external dep8 virt-server null", tb).await;
}

/// Reboots both ways through the protocol (`reboot`, `reboot
/// prepare-only`): the client over `dep8 virt-server ssh --reboot` on a
/// machine whose reboot is simulated.
#[tokio::test(flavor = "multi_thread")]
async fn external_dep8_virt_server_ssh_reboot() {
    let Some(sshd) = dep8_conformance::sshd::LoopbackSshd::start_with(
        dep8_conformance::sshd::Login::RootFakeReboot,
    ) else {
        return;
    };
    let dep8 = dep8_bin();
    let mut args = vec!["virt-server".to_string(), "ssh".into()];
    args.extend(sshd.backend_args());
    args.push("--reboot".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tb = external(dep8.to_str().unwrap(), &args).await;
    certify("external dep8 virt-server ssh --reboot", tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn external_autopkgtest_virt_unshare() {
    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") else {
        return;
    };
    if required_program("autopkgtest-virt-unshare", "autopkgtest").is_none() {
        return;
    }
    let tb = external("autopkgtest-virt-unshare", &["-t", &tarball]).await;
    certify("external autopkgtest-virt-unshare", tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn external_autopkgtest_virt_schroot() {
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot") else {
        return;
    };
    if required_program("autopkgtest-virt-schroot", "autopkgtest").is_none() {
        return;
    }
    let tb = external("autopkgtest-virt-schroot", &[&chroot]).await;
    certify("external autopkgtest-virt-schroot", tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu() {
    let Some(image) = required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let tb = dep8_backend_qemu::QemuBackend
        .open(&[image, "--baseimage".into()])
        .await
        .expect("open qemu");
    certify("qemu", tb).await;
}
