//! qemu specifics the conformance suite does not see: the base image is
//! kept out of /dev/disk/by-*, is read-only, comes back after a reboot; the
//! console log and the accelerator facts are reported.

use dep8_core::testbed::{Backend, ExecRequest, Testbed};

async fn sh(tb: &dyn Testbed, script: &str) -> String {
    let out = tb
        .exec(ExecRequest::shell(script).capture())
        .await
        .expect("exec");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        out.stderr_text()
    );
    out.stdout_text().trim().to_string()
}

/// The base image is /dev/vdb, read-only, and no /dev/disk/by-* link
/// points at it (its filesystem has the root's UUID and label).
async fn check_baseimage(tb: &dyn Testbed) {
    assert_eq!(sh(tb, "readlink -f /dev/baseimage").await, "/dev/vdb");
    assert_eq!(sh(tb, "blockdev --getro /dev/baseimage").await, "1");
    assert_eq!(sh(tb, "findmnt -no SOURCE /").await, "/dev/vda");
    let links = sh(
        tb,
        "for l in /dev/disk/by-*/*; do echo \"$l -> $(readlink -f \"$l\")\"; done",
    )
    .await;
    assert!(links.contains("-> /dev/vda"), "{links}");
    assert!(!links.contains("-> /dev/vdb"), "{links}");
}

#[tokio::test(flavor = "multi_thread")]
async fn baseimage_console_log_and_facts() {
    let Some(image) = dep8_conformance::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image")
    else {
        return;
    };
    let mut tb = dep8_backend_qemu::QemuBackend
        .open(&[
            image,
            "--baseimage".into(),
            "--revert".into(),
            "boot".into(),
        ])
        .await
        .expect("open qemu");
    let facts = tb.describe();
    let accel = facts.get("qemu_accel").expect("qemu_accel").clone();
    assert!(accel == "tcg" || accel == "kvm", "{facts:?}");
    if accel == "tcg" {
        assert_eq!(facts.get("qemu_cpu").map(String::as_str), Some("qemu64"));
    }
    check_baseimage(tb.as_ref()).await;
    tb.reboot().await.expect("reboot");
    check_baseimage(tb.as_ref()).await;
    let logs = tb.logs();
    let console = std::fs::read_to_string(&logs[0].1).expect("console log");
    assert!(console.contains("Linux version"), "{console}");
    tb.close().await.expect("close");
}

/// A `needs-reboot` test that reboots twice through
/// `/tmp/autopkgtest-reboot`: the runner reboots the VM and re-runs it with
/// `AUTOPKGTEST_REBOOT_MARK`; the shell's "Killed" is not the test's stderr.
#[test]
fn a_test_reboots_twice() {
    let Some(image) = dep8_conformance::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = std::process::Command::new(dep8_conformance::e2e::dep8_bin())
        .current_dir(dep8_conformance::e2e::repo())
        .args([
            "run",
            "-o",
            out_dir.to_str().unwrap(),
            "examples/reboot",
            "--",
            "qemu",
            &image,
        ])
        .output()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        read("summary"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read("summary"), "reboots-twice        PASS\n");
    assert_eq!(
        read("reboots-twice-stdout"),
        "first run\nafter reboot one\nafter reboot two\nthree boots\n"
    );
    assert!(out_dir.join("qemu-console.log").exists());
}
