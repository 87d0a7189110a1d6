//! The standard qemu image (`dep8 image build qemu`: GPT, ext4 root, GRUB
//! for BIOS and UEFI) with both tools: Debian's autopkgtest-virt-qemu 5.49
//! boots the same image dep8 does and the two give the same outcomes; five
//! dep8 runs at once on one image all complete with the right results.

use dep8_tests::e2e::{assert_same_results, autopkgtest_as_root, Dep8Run};
use dep8_tests::required_resource;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::Instant;

/// The two tests boot seven emulated machines between them. Together on
/// two cores (beside the host's tests, in CI), autopkgtest-virt-qemu once
/// gave no summary at all; they take turns.
static BOOTS: Mutex<()> = Mutex::new(());

/// autopkgtest-virt-qemu passes `-enable-kvm` whenever /dev/kvm exists,
/// and KVM does not work on every host that has it (dep8 probes it first):
/// its QEMU runs through this wrapper, which drops that option, so both
/// tools run the guest the same way where KVM is broken (software
/// emulation).
const TCG_QEMU: &str = "#!/bin/sh\n\
for arg; do shift; [ \"$arg\" = -enable-kvm ] || set -- \"$@\" \"$arg\"; done\n\
exec qemu-system-x86_64 \"$@\"\n";

/// autopkgtest-virt-qemu logs in on the image's serial console, finds the
/// root shell dep8's image runs on hvc1, and runs the example there; dep8
/// runs it over ssh. Same result words, same exit status. Both wait for
/// a boot up to 10 minutes: an emulated boot on a loaded host takes longer
/// than autopkgtest's default of 60 s.
#[test]
fn same_outcomes_as_autopkgtest_virt_qemu() {
    let Some(image) = required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    if autopkgtest_as_root().is_none() {
        return;
    }
    let _turn = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu-system-x86_64");
    std::fs::write(&qemu, TCG_QEMU).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let qemu = qemu.to_str().unwrap();
    let started = Instant::now();
    // outcomes has hello's two kinds of test (a script, a superficial
    // inline command) among its others: each more example is two more
    // emulated boots.
    assert_same_results(
        "examples/outcomes",
        &["--timeout-test=10"],
        &["qemu", "--timeout-reboot=600", "-q", qemu, &image],
        &["qemu", "--timeout-reboot=600", &image],
    );
    eprintln!("both tools on outcomes: {:.1?}", started.elapsed());
}

/// Five `dep8 run`s at once on the same image (each its own overlay, port
/// and snapshot): every one completes with hello's results. Five emulated
/// boots on two cores take long: each may take 15 minutes.
#[test]
fn five_concurrent_runs_on_one_image() {
    let Some(image) = required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let _turn = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..5)
            .map(|_| {
                let image = &image;
                s.spawn(move || {
                    Dep8Run::new(
                        "examples/hello",
                        &["qemu", image, "--ram-size=512", "--timeout-reboot=900"],
                    )
                })
            })
            .collect();
        for run in runs {
            let run = run.join().expect("run thread");
            run.assert_exit(0);
            assert_eq!(
                run.read("summary"),
                "greets               PASS\ncommand1             PASS (superficial)\n"
            );
        }
    });
    eprintln!("5 concurrent runs: {:.1?}", started.elapsed());
}
