//! The example backend passes the same conformance suite as the built-in
//! ones, on a root filesystem unpacked from the CI rootfs tarball.

use dep8_conformance::{format_verdicts, run_all, Verdict};
use dep8_testbed::Testbed;
use dep8_tests::required_resource;

#[tokio::test(flavor = "multi_thread")]
async fn chroot_backend_conforms() {
    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: chroot needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let unpacked = std::process::Command::new("tar")
        .args(["-xf", &tarball, "-C"])
        .arg(root.path())
        .status()
        .unwrap();
    assert!(unpacked.success(), "unpacking {tarball}");
    let mut tb = dep8_example_backend::ChrootTestbed::open(root.path()).expect("open chroot");
    let verdicts = run_all(&mut tb).await;
    tb.close().await.expect("close");
    let table = format_verdicts(&verdicts);
    eprintln!("conformance on the example chroot backend:\n{table}");
    assert!(
        !verdicts.iter().any(|(_, v)| matches!(v, Verdict::Fail(_))),
        "the example backend failed conformance:\n{table}"
    );
}
