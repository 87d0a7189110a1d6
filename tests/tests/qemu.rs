//! qemu specifics the conformance suite does not see: the standard image
//! boots by BIOS (chosen from its partition table) and by UEFI; the base
//! image is kept out of /dev/disk/by-*, is read-only, comes back after a
//! reboot; the console log and the accelerator facts are reported; a
//! snapshot revert sets the clock; a run that keeps a setup saves the
//! guest once, and fails its revert when QEMU is gone, and one that never
//! reverts saves none; an image without sshd fails a minute after its
//! login prompt (qemu_images.rs: unless it runs autopkgtest's root shell
//! on hvc1); an ELF kernel is loaded by dep8's PVH loader, which fails
//! at once where it cannot; `dep8 image update` upgrades an image in
//! place. examples/nested on the standard image (a VM inside the VM, from
//! /dev/baseimage) is the conformance suite's
//! `qemu::nested_testbed_on_the_base_image`: run here too, it took
//! another 2 minutes of emulation inside emulation, and the runner's side
//! of it (DEP8_BASEIMAGE, the Depends) is the same on every backend, where
//! unshare_nesting.rs and lxc.rs run the example whole.

use dep8_core::testbed::{Backend, ExecRequest, OpenContext, Testbed};
use dep8_tests::e2e::Dep8Run;
use std::os::unix::fs::PermissionsExt;

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

/// The guest's clock is within 2 s of the host's (a guest restored from a
/// snapshot wakes up with the snapshot's time unless dep8 sets it).
async fn assert_clock_set(tb: &dyn Testbed, when: &str) {
    let guest: f64 = sh(tb, "date +%s.%N").await.parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (guest - host).abs() < 2.0,
        "{when}: guest clock {guest}, host {host}"
    );
}

/// The base image is /dev/vdb, read-only, and no /dev/disk/by-* link
/// points at it or its partitions (its filesystem has the root's UUID and
/// label).
async fn check_baseimage(tb: &dyn Testbed) {
    assert_eq!(sh(tb, "readlink -f /dev/baseimage").await, "/dev/vdb");
    assert_eq!(sh(tb, "blockdev --getro /dev/baseimage").await, "1");
    assert!(sh(tb, "findmnt -no SOURCE /").await.starts_with("/dev/vda"));
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
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let mut tb = dep8_backend_qemu::QemuBackend
        .open(&[
            image,
            "--baseimage".into(),
            "--revert".into(),
            "boot".into(),
            "--boot".into(),
            "bios".into(),
        ])
        .await
        .expect("open qemu");
    let facts = tb.describe();
    // --boot bios: the image's own GRUB, even with a kernel beside it.
    assert_eq!(facts.get("qemu_firmware").map(String::as_str), Some("bios"));
    assert_eq!(
        facts.get("qemu_boot").map(String::as_str),
        Some("boot-loader")
    );
    assert_eq!(
        sh(tb.as_ref(), "test -d /sys/firmware/efi || echo bios").await,
        "bios"
    );
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

/// `--boot efi` (Debusine's form): OVMF boots the image's GRUB from its
/// EFI system partition, the guest runs under UEFI; a second image is a
/// read-only disk. Opened for a run that keeps a setup, the guest is saved
/// once, by the commit: a snapshot revert returns to it with that firmware
/// and gives the guest the host's time back; with `--timeout-poweroff` the
/// guest powers itself off at close.
#[tokio::test(flavor = "multi_thread")]
async fn efi_boot_and_snapshot_revert() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    if !dep8_tests::e2e::required_file("/usr/share/ovmf/OVMF.fd", "ovmf") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.img");
    std::fs::File::create(&extra)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let extra = extra.to_string_lossy().into_owned();
    let log = LogCapture::default();
    let _capturing = log.capture("dep8_backend_qemu=info");
    let args = [
        image,
        extra,
        "--boot".into(),
        "efi".into(),
        "--timeout-poweroff".into(),
        "120".into(),
    ];
    let context = OpenContext {
        cache: None,
        reverts_to_open: false,
    };
    let mut tb = dep8_backend_qemu::QemuBackend
        .open_in(&args, context)
        .await
        .expect("open qemu --boot efi");
    assert!(!log.text().contains("snapshot saved"), "{}", log.text());
    assert_eq!(
        sh(tb.as_ref(), "blockdev --getro --getsize64 /dev/vdb").await,
        "1\n1048576"
    );
    let facts = tb.describe();
    assert_eq!(facts.get("qemu_firmware").map(String::as_str), Some("uefi"));
    assert_eq!(
        facts.get("qemu_boot").map(String::as_str),
        Some("boot-loader")
    );
    let efi = "test -d /sys/firmware/efi && echo uefi";
    assert_eq!(sh(tb.as_ref(), efi).await, "uefi");
    sh(tb.as_ref(), "touch /var/tmp/setup").await;
    assert!(tb.commit_base().await.expect("commit"));
    sh(tb.as_ref(), "touch /var/tmp/dirty").await;
    // Long enough for a clock left at the snapshot's time to show.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    tb.revert().await.expect("revert");
    assert_eq!(sh(tb.as_ref(), efi).await, "uefi");
    assert_eq!(
        sh(tb.as_ref(), "ls /var/tmp/dirty 2>&1 || true").await,
        "ls: cannot access '/var/tmp/dirty': No such file or directory"
    );
    assert_eq!(sh(tb.as_ref(), "ls /var/tmp/setup").await, "/var/tmp/setup");
    assert_clock_set(tb.as_ref(), "after the revert").await;
    tb.close().await.expect("close");
    assert_eq!(
        log.text().matches("snapshot saved").count(),
        1,
        "{}",
        log.text()
    );
    let console = std::fs::read_to_string(&tb.logs()[0].1).expect("console log");
    assert!(console.contains("reboot: Power down"), "{console}");
}

/// The image boots by default from the uncompressed kernel and the initrd
/// that `dep8 image build qemu` wrote beside it, through the initramfs's
/// fast /init (which hands over to initramfs-tools' only when it cannot
/// mount the root). The run goes on from the snapshot over the forwarded
/// port; snapshot reverts take up the spare ssh links kept idle
/// in the snapshot (sshd on a virtio-serial port: no TCP peer in
/// `SSH_CONNECTION`), one per revert, also after a reboot (which itself
/// reconnects over the forwarded port); once they are used up, a revert
/// connects anew. Each revert throws the guest's changes away and sets its
/// clock, on the spare links through the clock link's loop (perl here), as
/// the backend's log says. Last, with a setup kept, the guest powers
/// itself off: the revert fails, naming the setup, instead of booting a
/// fresh guest without it.
#[tokio::test(flavor = "multi_thread")]
async fn direct_boot_and_reverts_on_the_spare_ssh_links() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let log = LogCapture::default();
    let _capturing = log.capture("dep8_backend_qemu=info");
    let kernel = format!("{image}.vmlinux");
    assert!(std::path::Path::new(&kernel).is_file(), "no {kernel}");
    let mut tb = dep8_backend_qemu::QemuBackend
        .open(&[image, "--quick-reverts".into(), "2".into()])
        .await
        .expect("open qemu");
    let facts = tb.describe();
    assert_eq!(facts.get("qemu_boot").map(String::as_str), Some("kernel"));
    assert_eq!(
        facts.get("qemu_kernel_loader").map(String::as_str),
        Some("dep8's PVH loader (the kernel by fw_cfg)")
    );
    let console = std::fs::read_to_string(&tb.logs()[0].1).expect("console log");
    assert!(console.contains("Run /init"), "{console}");
    assert!(!console.contains("dep8 initramfs:"), "{console}");
    let peer = "set -- $SSH_CONNECTION; echo $1";
    let spare = "UNKNOWN";
    let forwarded = "10.0.2.2";
    assert_eq!(sh(tb.as_ref(), peer).await, forwarded, "after the snapshot");
    let dirty = "ls /var/tmp/dirty 2>/dev/null || echo clean";
    for (step, link) in [(1, spare), (2, "reboot"), (3, spare), (4, forwarded)] {
        sh(tb.as_ref(), "touch /var/tmp/dirty").await;
        if link == "reboot" {
            tb.reboot().await.expect("reboot");
            assert_eq!(sh(tb.as_ref(), peer).await, forwarded, "after the reboot");
            continue;
        }
        // Long enough for a clock left at the snapshot's time to show.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        tb.revert().await.expect("revert");
        assert_eq!(sh(tb.as_ref(), peer).await, link, "revert {step}");
        assert_eq!(sh(tb.as_ref(), dirty).await, "clean", "revert {step}");
        assert_clock_set(tb.as_ref(), &format!("revert {step}")).await;
    }
    let clock_loop = sh(tb.as_ref(), "cat /proc/$(cat /run/dep8-clock.pid)/comm").await;
    assert_eq!(clock_loop, "perl");
    assert!(tb.commit_base().await.expect("commit"));
    // The command ends as QEMU does: with the guest's power off.
    let _ = tb.exec(ExecRequest::shell("poweroff -f")).await;
    let lost = tb.revert().await.expect_err("a revert with QEMU gone");
    assert!(
        lost.to_string()
            .contains("the kept setup cannot be restored"),
        "{lost}"
    );
    let _ = tb.close().await;
    let log = log.text();
    let on_the_link = "the clock set on its link, on a spare ssh link";
    assert_eq!(log.matches(on_the_link).count(), 2, "{log}");
    assert_eq!(log.matches("connected anew").count(), 1, "{log}");
    assert!(!log.contains("over ssh"), "{log}");
}

/// dep8's PVH loader copies the ELF kernel into the guest's RAM: where it
/// does not fit, the loader says so in the firmware log and the open fails
/// at once with its line, instead of waiting out a silent console.
#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_too_big_for_the_ram_fails_the_boot_at_once() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let started = std::time::Instant::now();
    let opened = dep8_backend_qemu::QemuBackend
        .open(&[image, "--ram-size".into(), "48".into()])
        .await;
    let Err(err) = opened else {
        panic!("a 48 MiB guest booted a kernel that needs more");
    };
    let err = err.to_string();
    assert!(
        err.contains("the kernel could not be loaded (dep8 PVH loader: fw_cfg DMA failed)"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
}

/// The log lines of the thread that calls [`LogCapture::capture`].
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    fn capture(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `needs-reboot` test that reboots twice through
/// `/tmp/autopkgtest-reboot`: the runner reboots the VM and re-runs it with
/// `AUTOPKGTEST_REBOOT_MARK`; the shell's "Killed" is not the test's stderr.
/// And one that calls `/tmp/autopkgtest-reboot-prepare`, then reboots the
/// VM itself.
#[test]
fn tests_reboot_twice_and_by_themselves() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let run = Dep8Run::new("examples/reboot", &["qemu", &image, "--show-boot"]);
    run.assert_exit(0);
    // --show-boot: the console as the guest boots, on stderr.
    assert!(run.stderr.contains("Linux version"), "{}", run.stderr);
    run.assert_reboot_example_passed();
    assert!(run.out().join("qemu-console.log").exists());
}

/// A `breaks-testbed` test, then one that proves the revert: dep8 restores
/// the snapshot between them, which holds the setup (saved over the
/// pristine one once the setup commands ran): the revert does not run
/// them again.
#[test]
fn a_broken_testbed_is_reverted_to_the_kept_setup() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    Dep8Run::kept_setup(&["qemu", &image]);
}

/// A `needs-reboot` test that masks sshd before asking for a reboot: the
/// guest never answers again. dep8 gives up after its reboot time limit,
/// exits 16 (testbed failure) naming the reboot, and keeps the console log,
/// which shows the boot that did not come back. The run has one test and
/// builds nothing, so the open saves no snapshot for reverts.
#[test]
fn a_reboot_that_does_not_come_back_is_a_testbed_failure() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tests = src.join("debian/tests");
    std::fs::create_dir_all(&tests).unwrap();
    std::fs::write(
        src.join("debian/control"),
        "Source: dep8-breaks-ssh\nMaintainer: dep8 <dep8@example.org>\n\n\
         Package: dep8-breaks-ssh\nArchitecture: all\nDescription: breaks ssh\n",
    )
    .unwrap();
    std::fs::write(
        tests.join("control"),
        "Tests: breaks-ssh\nDepends:\nRestrictions: needs-reboot, needs-root\n",
    )
    .unwrap();
    let script = tests.join("breaks-ssh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\n\
         if [ -n \"${AUTOPKGTEST_REBOOT_MARK:-}\" ]; then echo 'ssh came back' >&2; exit 1; fi\n\
         systemctl mask ssh.service ssh.socket\n\
         /tmp/autopkgtest-reboot no-ssh\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = dir.path().join("out");
    let out = std::process::Command::new(dep8_tests::e2e::dep8_bin())
        .args([
            "run",
            "-B",
            "-d",
            "--timeout-reboot",
            "20",
            "-o",
            out_dir.to_str().unwrap(),
            src.to_str().unwrap(),
            "--",
            "qemu",
            &image,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(16), "{stderr}");
    assert!(
        stderr.contains(
            "testbed failure: test breaks-ssh: the reboot with marker no-ssh timed out after 20s"
        ),
        "{stderr}"
    );
    // One test, nothing built: the run never reverts, so the open saves
    // no snapshot (the backend's log, with -d).
    assert!(stderr.contains("qemu: guest ready"), "{stderr}");
    assert!(!stderr.contains("snapshot saved"), "{stderr}");
    // Two boots: the first, and the one that never got to sshd (the
    // kernel beside the image prints its first line at once).
    let console = std::fs::read_to_string(out_dir.join("qemu-console.log")).unwrap_or_default();
    assert_eq!(console.matches("Linux version").count(), 2, "{console}");
}

/// Images without dep8's readiness unit (here the CI image with it masked
/// on the kernel command line): the guest is taken to be up at its login
/// prompt, and its sshd lets dep8 in. Without sshd too (as
/// autopkgtest-build-qemu makes images), dep8 gives up on ssh a minute
/// after the prompt, not after the 300 s boot timeout, with a testbed
/// failure that says what the image lacks and shows the console.
#[test]
fn images_without_the_readiness_unit() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src =
        dep8_tests::e2e::source_tree(dir.path(), "dep8-one", "Test-Command: true\nDepends:\n");
    let src = src.to_str().unwrap();
    let cmdline = format!(
        "{} systemd.mask=dep8-ready.service",
        dep8_backend_qemu::DEFAULT_CMDLINE
    );
    let run = Dep8Run::new(src, &["qemu", &image, "--append", &cmdline]);
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "command1             PASS\n");
    let no_sshd = format!("{cmdline} systemd.mask=ssh.service");
    let started = std::time::Instant::now();
    let run = Dep8Run::new(src, &["qemu", &image, "--append", &no_sshd]);
    let took = started.elapsed();
    run.assert_exit(16);
    for words in [
        "the guest is up (a login prompt on its console",
        "did not let dep8 in over ssh within 60s",
        "needs openssh-server and dep8-fw-cfg-keys.service",
        "login:",
    ] {
        assert!(run.stderr.contains(words), "{words}: {}", run.stderr);
    }
    assert!(took.as_secs() < 200, "{took:?}");
}

/// `dep8 image update` on a qemu disk image: its own guest upgrades it and
/// powers off, and the overlay is committed into the image, which then
/// boots with the package lists in place. The kernel and initrd beside
/// the image are written again from the updated guest. The image updated
/// here is a qcow2 layer over the CI image, which stays as it was.
#[test]
fn image_update_upgrades_a_qemu_image_in_place() {
    let Some(image) = dep8_tests::required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("updated.qcow2");
    let layer = layer.to_str().unwrap();
    dep8_tests::e2e::check(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", &image, "-F", "qcow2", layer,
        ],
        dir.path(),
    );
    // The CI image's kernel and initrd, beside the layer: it boots directly.
    let beside = |suffix: &str| format!("{layer}{suffix}");
    for suffix in [".vmlinux", ".initrd"] {
        std::fs::copy(format!("{image}{suffix}"), beside(suffix)).unwrap();
    }
    let written = |suffix: &str| {
        std::fs::metadata(beside(suffix))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let kernel_before = written(".vmlinux");
    let size = || std::fs::metadata(layer).unwrap().len();
    let before = size();
    let output = std::process::Command::new(dep8_tests::e2e::dep8_bin())
        .args(["image", "update", layer])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run dep8");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        size() > before,
        "nothing was committed into {layer}\n{said}"
    );
    assert!(written(".vmlinux") > kernel_before, "{said}");
    let kernel = std::fs::read(beside(".vmlinux")).unwrap();
    assert!(kernel.starts_with(b"\x7fELF"), "not an ELF kernel");
    let src = dep8_tests::e2e::source_tree(
        dir.path(),
        "dep8-updated",
        "Test-Command: ls /var/lib/apt/lists/ | grep -q _Packages\n\
         Depends:\nFeatures: test-name=has-lists\n",
    );
    let run = Dep8Run::new(
        src.to_str().unwrap(),
        &["qemu", layer, "--timeout-reboot=900"],
    );
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "has-lists            PASS\n");
    assert!(run
        .read("testinfo.json")
        .contains("\"qemu_boot\": \"kernel\""));
}
