//! qemu specifics the conformance suite does not see: the base image is
//! kept out of /dev/disk/by-*, is read-only, comes back after a reboot; the
//! console log and the accelerator facts are reported.

use dep8_conformance::e2e::Dep8Run;
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
        assert_eq!(
            facts.get("qemu_cpu").map(String::as_str),
            Some("qemu64,-svm")
        );
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
/// And one that calls `/tmp/autopkgtest-reboot-prepare`, then reboots the
/// VM itself.
#[test]
fn tests_reboot_twice_and_by_themselves() {
    let Some(image) = dep8_conformance::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image")
    else {
        return;
    };
    let run = Dep8Run::new("examples/reboot", &["qemu", &image]);
    run.assert_exit(0);
    assert_eq!(
        run.read("summary"),
        "reboots-twice        PASS\nreboots-itself       PASS\n"
    );
    assert_eq!(
        run.read("reboots-twice-stdout"),
        "first run\nafter reboot one\nafter reboot two\nthree boots\n"
    );
    // What the test wrote after /tmp/autopkgtest-reboot-prepare (its
    // "rebooting now", reboot's complaints) is dropped, as autopkgtest does.
    assert_eq!(
        run.read("reboots-itself-stdout"),
        "before the reboot\nafter rebooting myself\n"
    );
    assert!(run.out().join("qemu-console.log").exists());
}

/// examples/nested on qemu: the test boots a VM of its own (software
/// emulation inside software emulation) from /dev/baseimage, with the base
/// image's own kernel, and runs a command in it.
#[test]
fn a_nested_vm_boots_from_the_base_image() {
    let Some(image) = dep8_conformance::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image")
    else {
        return;
    };
    let run = Dep8Run::new("examples/nested", &["qemu", &image, "--baseimage"]);
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "nested-testbed       PASS\n");
    let stdout = run.read("nested-testbed-stdout");
    assert!(
        stdout.contains("nested testbed says 12.")
            && stdout.contains("booted from /dev/baseimage (block) and answered"),
        "{stdout}"
    );
}
