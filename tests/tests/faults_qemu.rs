//! The fault-injection suite on qemu (the other backends are in
//! tests/faults.rs; a VM under software emulation takes a minute or two to
//! boot, so this file runs in the testbeds stream of scripts/test): dep8
//! gets SIGINT, SIGTERM and SIGKILL in each phase — open, copy, dependency
//! install, test, revert, a real reboot, close — and the VM dies under it.
//! Afterwards no QEMU, run dir, key or overlay of the run is left on the
//! host, and the output dir tells what happened, as in tests/faults.rs.

use dep8_tests::faults::{
    run_processes, sigkill, signal_matrix, testbed_dies, words, FaultRun, Phase,
};
use std::time::Duration;

/// The qemu image under test, or `None` (printed) when it is not given.
fn qemu_image() -> Option<String> {
    let image = std::env::var("DEP8_TEST_QEMU_IMAGE").ok();
    if image.is_none() {
        eprintln!("SKIP: DEP8_TEST_QEMU_IMAGE is not set");
    }
    image
}

/// Every phase and signal: seven rounds of three VMs at once.
#[test]
fn qemu() {
    let Some(image) = qemu_image() else {
        return;
    };
    signal_matrix(
        &words(&["qemu", &image]),
        &[
            Phase::Open,
            Phase::Copy,
            Phase::Install,
            Phase::Test,
            Phase::Revert,
            Phase::Reboot,
            Phase::Close,
        ],
    );
}

/// QEMU is killed while a test runs: a testbed failure.
#[test]
fn qemu_killed() {
    let Some(image) = qemu_image() else {
        return;
    };
    testbed_dies(&words(&["qemu", &image]), |run| {
        let vms = run_processes(run, "qemu-system");
        assert!(!vms.is_empty(), "no qemu of the run");
        vms.into_iter().for_each(sigkill);
    });
}

/// A disk that never boots (no boot loader, no kernel beside it) fails
/// within a minute, not after the 300 s boot timeout, and leaves nothing.
#[test]
fn qemu_disk_that_never_boots() {
    let qemu = "qemu-system-x86_64";
    if dep8_tests::e2e::required_program(qemu, "qemu-system-x86").is_none() {
        return;
    }
    let disk = tempfile::NamedTempFile::new().expect("disk");
    disk.as_file().set_len(16 << 20).expect("16 MB of zeros");
    let testbed = words(&["qemu", &disk.path().to_string_lossy()]);
    let mut run = FaultRun::start(&testbed, &[], None);
    let status = run.wait(Duration::from_secs(120));
    let log = run.read("log");
    assert_eq!(status.code(), Some(16), "log:\n{log}");
    // The firmware's own word comes first on a blank disk; the silent
    // console's 60 s limit is the net under it.
    let summary = run.read("summary");
    assert!(
        summary.contains("cannot be booted") || summary.contains("stayed silent for 60s"),
        "log:\n{log}"
    );
    assert!(run.started.elapsed() < Duration::from_secs(100));
    assert_eq!(run.results()["complete"], false);
    assert_eq!(run.result_of("first"), "NOT_RUN");
    let left = run.leftovers(Duration::from_secs(10));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}
