//! Five dep8 runs at once on the same rootfs tarball (unshare) and the same
//! schroot chroot: every run completes with all its tests passed, and no
//! test sees another run's testbed (each checks markers in its tree and in
//! its testbed's /var/tmp, and prints its own run's id).

use dep8_tests::e2e::unshare_rootfs_as_root;
use dep8_tests::faults::LoadRun;
use dep8_tests::required_resource;
use std::time::Instant;

/// Five runs of five tests at once on `testbed`.
fn five_at_once(testbed: &[String]) {
    let started = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (1..=5)
            .map(|id| s.spawn(move || LoadRun::new(testbed, 5, id)))
            .collect();
        for run in runs {
            run.join().expect("run thread").assert_all_pass();
        }
    });
    eprintln!(
        "{}: 5 concurrent runs in {:.1?}",
        testbed[0],
        started.elapsed()
    );
}

#[test]
fn unshare_same_tarball() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    five_at_once(&["unshare".into(), "--tarball".into(), tarball]);
}

#[test]
fn schroot_same_chroot() {
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: schroot sessions need root here");
        return;
    }
    five_at_once(&["schroot".into(), chroot]);
}
