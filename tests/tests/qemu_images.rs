//! The standard qemu image (`dep8 image build qemu`: GPT, ext4 root, GRUB
//! for BIOS and UEFI) with both tools: Debian's autopkgtest-virt-qemu 5.49
//! boots the same image dep8 does and the two give the same outcomes; five
//! dep8 runs at once on one image all complete with the right results. An
//! image made the autopkgtest way (no sshd, autopkgtest's root shell on
//! hvc1) with both tools: dep8 lets itself in through the shell.

use dep8_tests::e2e::{
    assert_same_results, autopkgtest_as_root, result_words, summary_of, Dep8Run,
};
use dep8_tests::required_resource;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
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

/// [`TCG_QEMU`] as `qemu-system-x86_64` in `dir`; its path.
fn tcg_qemu(dir: &Path) -> String {
    let qemu = dir.join("qemu-system-x86_64");
    std::fs::write(&qemu, TCG_QEMU).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    qemu.to_str().unwrap().to_string()
}

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
    let qemu = tcg_qemu(dir.path());
    let qemu = qemu.as_str();
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

/// autopkgtest's setup-testbed (run by autopkgtest-build-qemu on its
/// images) writes the unit for the root shell on hvc1 in it.
const SETUP_TESTBED: &str = "/usr/share/autopkgtest/setup-commands/setup-testbed";

/// A layer over the CI image in `dir`, prepared as autopkgtest-build-qemu
/// prepares its images: no sshd, none of dep8's units but the network's,
/// and autopkgtest's root shell on hvc1 (`autopkgtest@.service`, taken
/// from the installed setup-testbed). Its own guest changes it
/// (`update_image`): a real autopkgtest-build-qemu image cannot be built
/// here (vmdb2 needs device-mapper). It boots by its boot loader.
fn autopkgtest_like_image(image: &str, dir: &Path) -> String {
    let setup_testbed = std::fs::read_to_string(SETUP_TESTBED).unwrap();
    let unit = setup_testbed
        .split_once("autopkgtest@.service\"\n")
        .and_then(|(_, rest)| rest.split_once("\nEOF\n"))
        .map(|(unit, _)| unit)
        .expect("setup-testbed writes autopkgtest@.service");
    assert!(unit.contains("ExecStart=/bin/sh"), "{unit}");
    let layer = dir.join("autopkgtest-like.qcow2");
    let layer = layer.to_str().unwrap().to_string();
    dep8_tests::e2e::check(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", &layer,
        ],
        dir,
    );
    // The guest that changes the layer boots from the CI image's kernel.
    for suffix in [".vmlinux", ".initrd"] {
        std::fs::copy(format!("{image}{suffix}"), format!("{layer}{suffix}")).unwrap();
    }
    let units = "/etc/systemd/system";
    let prepare = format!(
        "set -e\n\
         apt-get purge -y -q openssh-server openssh-sftp-server\n\
         rm -rf /root/.ssh /etc/ssh/ssh_host_*\n\
         systemctl disable -q dep8-ready.service dep8-fw-cfg-keys.service\n\
         rm {units}/dep8-ready.service {units}/dep8-fw-cfg-keys.service \
         {units}/dep8-root-shell@.service /etc/udev/rules.d/60-dep8.rules\n\
         cat > {units}/autopkgtest@.service <<'EOF'\n{unit}\nEOF\n\
         ln -s ../autopkgtest@.service {units}/multi-user.target.wants/autopkgtest@hvc1.service\n"
    );
    let said = Arc::new(Mutex::new(Vec::new()));
    let tap = {
        let said = said.clone();
        Arc::new(move |bytes: &[u8]| said.lock().unwrap().extend_from_slice(bytes))
    };
    let prepared =
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(dep8_backend_qemu::update_image(
                Path::new(&layer),
                &prepare,
                tap,
                None,
            ));
    let said = String::from_utf8_lossy(&said.lock().unwrap()).into_owned();
    prepared.unwrap_or_else(|e| panic!("preparing the image: {e}\n{said}"));
    for suffix in [".vmlinux", ".initrd"] {
        std::fs::remove_file(format!("{layer}{suffix}")).unwrap();
    }
    layer
}

/// An image made the autopkgtest way, two tests with a revert between
/// them (the first breaks the testbed). dep8 finds the login prompt and
/// the root shell on hvc1, installs openssh-server through it, keeps that
/// as a layer in its cache and boots again on it, and reverts to a
/// snapshot; a second run boots from the kept layer and installs
/// nothing. autopkgtest-virt-qemu 5.49 runs the same tests through the
/// same shell. Same result words, same exit status.
#[test]
fn an_image_made_the_autopkgtest_way_with_both_tools() {
    let Some(image) = required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let Some(autopkgtest) = autopkgtest_as_root() else {
        return;
    };
    if !dep8_tests::e2e::required_file(SETUP_TESTBED, "autopkgtest") {
        return;
    }
    let _turn = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let layer = autopkgtest_like_image(&image, dir.path());
    let src = dep8_tests::e2e::source_tree(
        dir.path(),
        "dep8-two",
        "Test-Command: touch /etc/dep8-touched\nDepends:\n\
         Restrictions: needs-root, breaks-testbed\n\n\
         Test-Command: test ! -e /etc/dep8-touched\nDepends:\n",
    );
    let src = src.to_str().unwrap();
    let cache = dir.path().join("cache");
    let env = [("DEP8_CACHE_DIR", cache.to_str().unwrap())];
    let dep8 = || {
        let started = Instant::now();
        let run = Dep8Run::with_env(
            &env,
            &["-B", "-d"],
            src,
            &["qemu", &layer, "--timeout-reboot=900"],
        );
        run.assert_exit(0);
        assert_eq!(
            run.read("summary"),
            "command1             PASS\ncommand2             PASS\n"
        );
        let said = format!("{}{}", run.stderr, run.read("testinfo.json"));
        assert!(
            said.contains("let in through the root shell on hvc1"),
            "{said}"
        );
        assert!(said.contains("\"qemu_boot\": \"boot-loader\""), "{said}");
        (run, said, started.elapsed())
    };
    let (_, first, first_took) = dep8();
    for words in [
        "(openssh-server installed)",
        "kept the guest with openssh-server",
    ] {
        assert!(first.contains(words), "{words}: {first}");
    }
    let (run, again, again_took) = dep8();
    assert!(!again.contains("openssh-server installed"), "{again}");
    assert!(again.contains("let-in.qcow2"), "{again}");
    let qemu = tcg_qemu(dir.path());
    let out = dir.path().join("autopkgtest");
    let started = Instant::now();
    let (theirs, code) = summary_of(
        &autopkgtest,
        &[
            "-B",
            "-o",
            out.to_str().unwrap(),
            src,
            "--",
            "qemu",
            "--timeout-reboot=600",
            "-q",
            &qemu,
            &layer,
        ],
        &out,
    );
    assert_eq!(
        (theirs, code),
        (result_words(&run.read("summary")), Some(0)),
        "autopkgtest's log:\n{}",
        dep8_tests::e2e::log_tail(&out, 30)
    );
    eprintln!(
        "dep8: {first_took:.1?}, then {again_took:.1?} on the kept layer; autopkgtest: {:.1?}",
        started.elapsed()
    );
}
