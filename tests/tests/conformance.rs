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
async fn unshare_with_host_network() {
    certify_unshare("unshare --network", &["--network"]).await;
}
