//! The conformance suite against every backend this machine can run.
//! A backend whose tools are missing is skipped with a reason; one whose
//! tools are present but broken fails loudly.

use dep8_conformance::{format_verdicts, run_all, Verdict};
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

#[tokio::test(flavor = "multi_thread")]
async fn ssh() {
    use dep8_core::testbed::Backend;
    let Some(sshd) = dep8_conformance::sshd::LoopbackSshd::start() else {
        return;
    };
    let tb = dep8_backend_ssh::SshBackend
        .open(&sshd.backend_args())
        .await
        .expect("open ssh");
    certify("ssh", tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu() {
    use dep8_core::testbed::Backend;
    let Some(image) = dep8_conformance::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image")
    else {
        return;
    };
    let tb = dep8_backend_qemu::QemuBackend
        .open(&[image, "--baseimage".into()])
        .await
        .expect("open qemu");
    certify("qemu", tb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unshare() {
    let Some(tarball) = dep8_conformance::required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball")
    else {
        return;
    };
    let args: Vec<String> = ["--tarball", &tarball, "--baseimage"]
        .map(String::from)
        .to_vec();
    let tb = dep8_backend_unshare::UnshareBackend
        .open(&args)
        .await
        .expect("open unshare");
    certify("unshare", tb).await;
}
