//! `nesting` on unshare: a test may create its own namespaces and overlay
//! mounts, so dep8 itself runs inside the testbed, on the base image.

use dep8_backend_unshare::{Options, Rootfs, UnshareTestbed, BASEIMAGE_PATH};
use dep8_core::capability::Capability;
use dep8_core::testbed::{ExecRequest, Testbed};
use dep8_tests::e2e::{dep8_bin, repo};

#[tokio::test(flavor = "multi_thread")]
async fn dep8_runs_unshare_inside_unshare() {
    nested_run(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dep8_runs_unshare_inside_unshare_in_a_user_namespace() {
    nested_run(true).await;
}

/// Copies dep8 and examples/hello into an unshare testbed and runs
/// `dep8 run hello -- unshare --rootfs $DEP8_BASEIMAGE` there.
async fn nested_run(userns: bool) {
    let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    let mut tb = UnshareTestbed::open(Options {
        baseimage: true,
        userns,
        ..Options::new(Rootfs::Tarball(tarball.into()))
    })
    .await
    .expect("open unshare");
    assert!(tb.capabilities().has(Capability::Nesting));
    tb.copy_down(&dep8_bin(), "/usr/local/bin/dep8")
        .await
        .unwrap();
    tb.copy_down(&repo().join("examples/hello"), "/root/hello")
        .await
        .unwrap();
    let out = tb
        .exec(
            ExecRequest::new([
                "dep8",
                "run",
                "-B",
                "-o",
                "/root/out",
                "/root/hello",
                "--",
                "unshare",
                "--rootfs",
                BASEIMAGE_PATH,
            ])
            .capture(),
        )
        .await
        .unwrap();
    let summary = tb
        .exec(ExecRequest::new(["cat", "/root/out/summary"]).capture())
        .await
        .unwrap()
        .stdout_text();
    tb.close().await.unwrap();
    assert!(
        out.status.success(),
        "nested dep8 run failed ({:?}):\n{}{}",
        out.status,
        out.stdout_text(),
        out.stderr_text()
    );
    assert!(
        summary.contains("greets               PASS"),
        "nested summary:\n{summary}"
    );
    // The nested run's own testbed was an unshare one, not the null host.
    assert!(
        out.stderr_text()
            .contains("opening testbed: unshare --rootfs /run/dep8/baseimage"),
        "{}",
        out.stderr_text()
    );
}

/// examples/nested on unshare: the same test as on qemu finds a directory
/// in DEP8_BASEIMAGE and starts a container on it.
#[test]
fn the_nested_example_starts_a_container_on_the_base_image() {
    let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    dep8_tests::e2e::assert_nested_example_passes(
        &["unshare", "--tarball", &tarball, "--baseimage"],
        "/run/dep8/baseimage (directory)",
    );
}
