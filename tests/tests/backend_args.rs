//! Backends take their autopkgtest-virt-* counterparts' arguments as debci,
//! Debusine and sbuild write them; a virt server dep8 has no backend for
//! runs through `external`; and autopkgtest 5.48's security rules hold:
//! no world-writable dir where the testbed does not isolate, keys and
//! sockets in 0700 dirs, the guest's ssh port on 127.0.0.1 only.

use dep8_tests::e2e::{
    assert_same_results, autopkgtest_as_root, dep8_bin, repo, required_program, source_tree,
    EXAMPLE_TIMEOUT,
};
use dep8_tests::required_resource;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A test that records the modes and owners of AUTOPKGTEST_TMP, the
/// artifacts dir, the scratch dir and the source tree, and the schroot
/// session it runs in, in its artifacts; and one that needs isolation.
const CONTROL: &str = "\
Test-Command: stat -c '%a %U' \"$AUTOPKGTEST_TMP\" \"$AUTOPKGTEST_ARTIFACTS\" \"$(dirname \"$AUTOPKGTEST_TMP\")\" . > \"$AUTOPKGTEST_ARTIFACTS/modes\"; echo \"${SCHROOT_SESSION_ID-}\" > \"$AUTOPKGTEST_ARTIFACTS/session\"
Features: test-name=modes
Depends:

Test-Command: stat -c '%a' \"$AUTOPKGTEST_ARTIFACTS\" > \"$AUTOPKGTEST_ARTIFACTS/isolated-modes\"
Features: test-name=isolated
Restrictions: isolation-machine
Depends:
";

/// `dep8 run -o OUT SRC -- TESTBED...` with `env` added; its output.
fn run(src: &Path, out: &Path, testbed: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(dep8_bin())
        .current_dir(repo())
        .args(["run", "-B", "-o"])
        .arg(out)
        .arg(src)
        .arg("--")
        .args(testbed)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running dep8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture source tree in a new temp dir (and the dir).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(dir.path(), "backend-args", CONTROL);
    (dir, src)
}

/// The `modes` lines: `MODE OWNER` of AUTOPKGTEST_TMP, the artifacts dir,
/// the scratch dir and the tree.
fn modes(out: &Path) -> Vec<String> {
    read(&out.join("artifacts/modes"))
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn null_isolates_nothing_unless_the_caller_says_so() {
    let (dir, src) = fixture();
    let out = dir.path().join("plain");
    let o = run(&src, &out, &["null"], &[]);
    let summary = read(&out.join("summary"));
    assert!(
        summary.contains("isolated             SKIP"),
        "{summary}{}",
        stderr(&o)
    );
    let results: serde_json::Value =
        serde_json::from_str(&read(&out.join("results.json"))).unwrap();
    let flags = results["capabilities"]["flags"].to_string();
    assert!(!flags.contains("isolation"), "{flags}");
    // Nothing world-writable: AUTOPKGTEST_TMP, artifacts and scratch 0755.
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    for line in &modes(&out)[..3] {
        assert_eq!(*line, format!("755 {user}"), "{:?}", modes(&out));
    }

    // The caller isolates the host: isolation-machine is faked and the
    // isolated test runs, with its artifacts world-writable (autopkgtest's
    // wrapper); the scratch dir stays 0755, as the host sees it.
    let out = dir.path().join("faked");
    let o = run(
        &src,
        &out,
        &["null", "--fake-capability", "isolation-machine"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(read(&out.join("artifacts/isolated-modes")).trim(), "1777");
    assert_eq!(modes(&out)[2], format!("755 {user}"), "the scratch dir");
    assert_eq!(
        modes(&out)[1],
        format!("755 {user}"),
        "artifacts of a test without isolation"
    );
}

#[test]
fn unshare_finds_sbuilds_tarball_and_binds_host_dirs() {
    let Some(rootfs) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    let (dir, src) = fixture();
    // sbuild's cache, as `~/.cache/sbuild/RELEASE-ARCH.tar`.
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("sbuild")).unwrap();
    std::os::unix::fs::symlink(&rootfs, cache.join("sbuild/bookworm-amd64.tar")).unwrap();
    let bound = dir.path().join("bound");
    std::fs::create_dir(&bound).unwrap();
    std::fs::write(bound.join("marker"), "from the host\n").unwrap();
    let control = format!(
        "{CONTROL}\nTest-Command: cat /srv/dep8-bound/marker\nFeatures: test-name=bound\nDepends:\n"
    );
    std::fs::write(src.join("debian/tests/control"), control).unwrap();
    let out = dir.path().join("out");
    let cache_var = cache.to_str().unwrap();
    // sbuild's form (`--release %r --arch %a`), with a -backports release.
    let o = run(
        &src,
        &out,
        &[
            "unshare",
            "--release",
            "bookworm-backports",
            "--arch",
            "amd64",
            "-b",
            bound.to_str().unwrap(),
            "/srv/dep8-bound",
        ],
        &[("XDG_CACHE_HOME", cache_var)],
    );
    let summary = read(&out.join("summary"));
    assert!(
        summary.contains("bound                PASS"),
        "{summary}{}",
        stderr(&o)
    );
    assert!(read(&out.join("log")).contains("from the host"));
    // Tests without needs-root run as the rootfs's normal user, who owns
    // the dirs; none is world-writable.
    let modes = modes(&out);
    for line in &modes[..3] {
        assert!(line.starts_with("755 "), "{modes:?}");
    }

    // No tarball, no --release: a usage error naming what to give.
    let empty = dir.path().join("empty");
    let o = run(
        &src,
        &dir.path().join("out2"),
        &["unshare"],
        &[("XDG_CACHE_HOME", empty.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert!(stderr(&o).contains("--release"), "{}", stderr(&o));
}

#[test]
fn schroot_takes_debcis_session_id() {
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot") else {
        return;
    };
    let (dir, src) = fixture();
    let out = dir.path().join("out");
    let id = format!("dep8-backend-args-{}", std::process::id());
    let o = run(
        &src,
        &out,
        &["schroot", &format!("--session-id={id}"), &chroot],
        &[],
    );
    let summary = read(&out.join("summary"));
    assert!(
        summary.contains("modes                PASS"),
        "{summary}{}",
        stderr(&o)
    );
    assert_eq!(read(&out.join("artifacts/session")).trim(), id);
    for line in &modes(&out)[..3] {
        assert!(line.starts_with("755 "), "{:?}", modes(&out));
    }
}

/// `-- podman ARGS` runs autopkgtest-virt-podman (found in PATH) through
/// `external`, with exactly those arguments. The `autopkgtest-virt-podman`
/// here records its arguments, then is Debian's autopkgtest-virt-null
/// (which has no isolation: the isolated test is skipped).
#[test]
fn an_unknown_backend_is_an_autopkgtest_virt_server_in_path() {
    let Some(null) = required_program("autopkgtest-virt-null", "autopkgtest") else {
        return;
    };
    let (dir, src) = fixture();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let recorded = dir.path().join("args");
    let podman = bin.join("autopkgtest-virt-podman");
    std::fs::write(
        &podman,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nexec {}\n",
            recorded.display(),
            null.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&podman, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = dir.path().join("out");
    let args = ["--sudo", "--name", "ci-1", "autopkgtest-bookworm-amd64"];
    let mut testbed = vec!["podman"];
    testbed.extend(args);
    let o = run(&src, &out, &testbed, &[("PATH", &path)]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}{}",
        read(&out.join("summary")),
        stderr(&o)
    );
    assert!(read(&out.join("summary")).contains("modes                PASS"));
    assert_eq!(read(&recorded).lines().collect::<Vec<_>>(), args);

    // A name that is no virt server: exit 20, and what would provide it.
    let o = run(
        &src,
        &dir.path().join("out2"),
        &["incus"],
        &[("PATH", "/nonexistent")],
    );
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("apt-get install autopkgtest"),
        "{}",
        stderr(&o)
    );
    let o = run(&src, &dir.path().join("out3"), &["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("autopkgtest-virt-frobnicate"),
        "{}",
        stderr(&o)
    );
}

/// A real one: Debian's autopkgtest-virt-lxc on a privileged container
/// (`.ci/setup-lxc`), through `external`, gives autopkgtest's results
/// (dep8's own lxc backend is tests/tests/lxc.rs).
#[test]
fn lxc_runs_through_autopkgtest_virt_lxc() {
    let Some(name) = required_resource("DEP8_TEST_LXC", "an lxc container") else {
        return;
    };
    if autopkgtest_as_root().is_none() {
        return;
    }
    assert_same_results(
        "examples/hello",
        &[EXAMPLE_TIMEOUT],
        &["lxc", "--ephemeral", &name],
        &["external", "autopkgtest-virt-lxc", "--ephemeral", &name],
    );
}

/// Options a backend cannot honour fail at once with exit 20, never ignored.
#[test]
fn what_a_backend_cannot_honour_is_refused() {
    let (dir, src) = fixture();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, [0u8; 512]).unwrap();
    let image = image.to_str().unwrap();
    for (testbed, reason) in [
        (
            &["qemu", "--dpkg-architecture", "arm64", image][..],
            "foreign architecture",
        ),
        (&["qemu", "--boot", "ieee1275", image], "POWER"),
        (
            &["qemu", "-u", "root", "-p", "secret", image],
            "serial console",
        ),
        (
            &["ssh", "-H", "localhost", "-P", "secret"],
            "sudo passwords",
        ),
        (&["null", "--frobnicate"], "--frobnicate"),
    ] {
        let o = run(
            &src,
            &dir.path().join(testbed[1..].join("_").replace('/', "_")),
            testbed,
            &[],
        );
        assert_eq!(o.status.code(), Some(20), "{testbed:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(reason), "{testbed:?}: {}", stderr(&o));
    }
}

/// A disk nothing boots from fails in seconds with the firmware's words,
/// not after the 300 s boot timeout; meanwhile the keys and the ssh
/// control socket are in 0700 dirs and the guest's ssh port is forwarded
/// on 127.0.0.1 only.
#[test]
fn qemu_unbootable_disk_fails_early_and_keeps_its_keys_private() {
    if required_program("qemu-system-x86_64", "qemu-system-x86").is_none() {
        return;
    }
    let (dir, src) = fixture();
    let image = dir.path().join("blank.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let started = Instant::now();
    let mut child = Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(dir.path().join("out"))
        .arg(&src)
        .args(["--", "qemu"])
        .arg(&image)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut listening = None;
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120) {
        // The run's temp files are in its run dir, $TMPDIR/dep8-run.*/tmp.
        let run_dirs = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path().join("tmp"));
        for entry in run_dirs.flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(kind) = ["dep8-qemu.", "dep8-ssh."]
                .iter()
                .find(|k| name.starts_with(*k))
            {
                if let Ok(meta) = entry.metadata() {
                    seen.push((kind.to_string(), meta.permissions().mode() & 0o7777));
                }
            }
        }
        if listening.is_none() {
            listening = qemu_listening(&tmp);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(16), "{err}");
    assert!(
        err.contains("cannot be booted") && err.contains("No bootable device"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        seen.iter().any(|(k, _)| k == "dep8-qemu."),
        "no work dir seen"
    );
    assert!(seen.iter().all(|(_, mode)| *mode == 0o700), "{seen:?}");
    let listening = listening.expect("QEMU's forwarded port was not seen listening");
    assert!(
        listening.iter().all(|addr| addr.starts_with("127.0.0.1:")),
        "{listening:?}"
    );
}

/// The local addresses QEMU (the one whose console is under `tmp`)
/// listens on, from `ss`.
fn qemu_listening(tmp: &Path) -> Option<Vec<String>> {
    let pid = std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.starts_with("qemu-system") && cmdline.contains(&*tmp.to_string_lossy()))
            .then(|| e.file_name().to_string_lossy().into_owned())
    })?;
    let ss = Command::new("ss").args(["-Hltnp"]).output().ok()?;
    let addrs: Vec<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// `--insecure` (`RunOptions::insecure`) brings back autopkgtest 5.28's
/// world-writable scratch and artifacts dirs.
#[tokio::test(flavor = "multi_thread")]
async fn insecure_brings_back_world_writable_dirs() {
    let (dir, src) = fixture();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let opts = dep8_core::engine::RunOptions {
        source: src,
        output_dir: out.clone(),
        insecure: true,
        ..Default::default()
    };
    let events = dep8_core::events::Events::discard();
    let mut tb = dep8_backend_null::NullTestbed::open().unwrap();
    let report = dep8_core::engine::run(&opts, &mut tb, &events, std::future::pending()).await;
    assert_eq!(
        (report.exit_code, report.signal),
        (Some(2), None),
        "{report:?}"
    );
    let modes = modes(&out);
    let mode = |line: &String| line.split(' ').next().unwrap().to_string();
    assert_eq!(mode(&modes[0]), "755", "AUTOPKGTEST_TMP: {modes:?}");
    assert_eq!(mode(&modes[1]), "1777", "artifacts: {modes:?}");
    assert_eq!(mode(&modes[2]), "1777", "scratch: {modes:?}");
}

/// A virt server that dies in the middle of a run (here autopkgtest's null
/// server, killed by the first test) takes its testbed with it: the next
/// test is a testbed failure that says so, not a test run in a tree that
/// is no longer there.
#[test]
fn a_virt_server_that_dies_is_a_testbed_failure() {
    let Some(null) = required_program("autopkgtest-virt-null", "autopkgtest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("server.pid");
    let server = dir.path().join("dying-virt-server");
    std::fs::write(
        &server,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec {}\n",
            pid_file.display(),
            null.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    let control = format!(
        "Test-Command: kill \"$(cat '{}')\"\nDepends:\nFeatures: test-name=kills-the-server\n\n\
         Tests: needs-the-tree\nDepends:\n",
        pid_file.display()
    );
    let src = source_tree(dir.path(), "dying-server", &control);
    std::fs::write(src.join("debian/tests/needs-the-tree"), "#!/bin/sh\ntrue\n").unwrap();
    let out = dir.path().join("out");
    let o = run(&src, &out, &["external", server.to_str().unwrap()], &[]);
    let summary = read(&out.join("summary"));
    assert_eq!(o.status.code(), Some(16), "{summary}{}", stderr(&o));
    assert!(
        summary.contains("testbed failure: virt server")
            && !summary.contains("needs-the-tree       PASS"),
        "{summary}"
    );
}
