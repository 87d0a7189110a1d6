//! The conformance suite: behaviour checks written once against the
//! [`Testbed`] trait and run for every backend, like OpenDAL's behaviour
//! tests. A check whose capability the testbed does not advertise is
//! skipped, never passed; a capability that is advertised must really work.

use dep8_core::capability::Capability;
use dep8_core::testbed::{ExecRequest, ExitStatus, Input, Output, Testbed};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One behaviour every testbed with `needs` must have.
pub struct Check {
    pub name: &'static str,
    pub needs: &'static [Capability],
    pub run: for<'a> fn(&'a mut dyn Testbed) -> CheckFuture<'a>,
}

/// The verdict on one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

macro_rules! check {
    ($name:ident, [$($cap:ident),*]) => {
        Check {
            name: stringify!($name),
            needs: &[$(Capability::$cap),*],
            run: |tb| Box::pin($name(tb)),
        }
    };
}

/// Every check, in the order they run. Reverting and rebooting checks come
/// last so that earlier ones see the testbed as opened.
pub fn checks() -> Vec<Check> {
    vec![
        check!(scratch_is_empty_and_writable, []),
        check!(exit_codes, []),
        check!(exit_255_is_not_a_transport_failure, []),
        check!(signals, []),
        check!(environment, []),
        check!(working_directory, []),
        check!(binary_stdin_round_trip, []),
        check!(stdout_and_stderr_apart, []),
        check!(large_output, []),
        check!(copy_file_round_trip, []),
        check!(copy_tree_round_trip, []),
        check!(timeout_kills_process_tree, []),
        check!(root_is_real, [RootOnTestbed]),
        check!(normal_user_is_real, [RootOnTestbed]),
        check!(baseimage_is_read_only_and_pristine, [BaseImage]),
        check!(
            nested_testbed_on_the_base_image,
            [Nesting, BaseImage, RootOnTestbed]
        ),
        check!(revert_restores_root_filesystem, [Revert]),
        check!(revert_full_system_restores_tmp, [RevertFullSystem]),
        check!(reboot_keeps_scratch, [Reboot]),
        check!(reboot_started_by_the_testbed, [Reboot]),
    ]
}

/// Runs one check against `tb`: skipped when the testbed lacks a
/// capability the check needs.
pub async fn run_check(check: &Check, tb: &mut dyn Testbed) -> Verdict {
    let missing: Vec<String> = check
        .needs
        .iter()
        .filter(|c| !tb.capabilities().has(**c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Verdict::Skip(format!("testbed does not provide {}", missing.join(", ")));
    }
    match (check.run)(tb).await {
        Ok(()) => Verdict::Pass,
        Err(e) => Verdict::Fail(e),
    }
}

/// Runs every check against `tb`; returns each check's name and verdict.
pub async fn run_all(tb: &mut dyn Testbed) -> Vec<(&'static str, Verdict)> {
    let mut verdicts = Vec::new();
    for check in checks() {
        verdicts.push((check.name, run_check(&check, tb).await));
    }
    verdicts
}

/// A table of verdicts, one line each, for logs and `dep8 conformance`.
pub fn format_verdicts(verdicts: &[(&str, Verdict)]) -> String {
    verdicts
        .iter()
        .map(|(name, v)| match v {
            Verdict::Pass => format!("{name:<45} PASS\n"),
            Verdict::Fail(why) => format!("{name:<45} FAIL {why}\n"),
            Verdict::Skip(why) => format!("{name:<45} SKIP {why}\n"),
        })
        .collect()
}

// ---- helpers ----

async fn sh(tb: &dyn Testbed, script: &str) -> Result<dep8_core::testbed::ExecOutcome, String> {
    tb.exec(ExecRequest::shell(script).capture())
        .await
        .map_err(|e| format!("exec `{script}`: {e}"))
}

/// Runs a script that must succeed; returns its stdout.
async fn ok(tb: &dyn Testbed, script: &str) -> Result<String, String> {
    let out = sh(tb, script).await?;
    if !out.status.success() {
        return Err(format!(
            "`{script}` exited {:?}: {}",
            out.status,
            out.stderr_text()
        ));
    }
    Ok(out.stdout_text())
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn scratch_path(tb: &dyn Testbed, name: &str) -> String {
    format!("{}/{}", tb.scratch(), name)
}

// ---- checks ----

async fn scratch_is_empty_and_writable(tb: &mut dyn Testbed) -> Result<(), String> {
    let dir = tb.scratch().to_string();
    let listing = ok(tb, &format!("ls -A '{dir}'")).await?;
    expect("scratch contents", listing.trim(), "")?;
    ok(tb, &format!("echo x > '{dir}/probe' && rm '{dir}/probe'"))
        .await
        .map(|_| ())
}

async fn exit_codes(tb: &mut dyn Testbed) -> Result<(), String> {
    for code in [0, 1, 2, 42, 77, 125, 126, 127, 253, 254] {
        let out = sh(tb, &format!("exit {code}")).await?;
        expect(&format!("exit {code}"), out.status.code(), code)?;
    }
    let out = tb
        .exec(ExecRequest::new(["/nonexistent/program"]).capture())
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Err("running a missing program succeeded".into());
    }
    Ok(())
}

async fn exit_255_is_not_a_transport_failure(tb: &mut dyn Testbed) -> Result<(), String> {
    let out = sh(tb, "exit 255").await?;
    expect("exit 255", out.status.code(), 255)
}

async fn signals(tb: &mut dyn Testbed) -> Result<(), String> {
    let out = tb
        .exec(ExecRequest::new(["sh", "-c", "kill -TERM $$"]).capture())
        .await
        .map_err(|e| e.to_string())?;
    match out.status {
        ExitStatus::Signal(15) | ExitStatus::Code(143) => Ok(()),
        other => Err(format!("killed by SIGTERM, got {other:?}")),
    }
}

async fn environment(tb: &mut dyn Testbed) -> Result<(), String> {
    let tricky = "a 'quoted' \"value\" with $dollar and\nnewline";
    let req = ExecRequest::new(["printenv", "DEP8_TRICKY"])
        .env("DEP8_TRICKY", tricky)
        .capture();
    let out = tb.exec(req).await.map_err(|e| e.to_string())?;
    expect("printenv", out.stdout_text(), format!("{tricky}\n"))
}

async fn working_directory(tb: &mut dyn Testbed) -> Result<(), String> {
    let dir = tb.scratch().to_string();
    let out = tb
        .exec(ExecRequest::new(["pwd"]).cwd(&dir).capture())
        .await
        .map_err(|e| e.to_string())?;
    expect("pwd", out.stdout_text().trim().to_string(), dir)
}

async fn binary_stdin_round_trip(tb: &mut dyn Testbed) -> Result<(), String> {
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = tb
        .exec(
            ExecRequest::new(["cat"])
                .stdin(Input::Bytes(data.clone()))
                .capture(),
        )
        .await
        .map_err(|e| e.to_string())?;
    expect("bytes through cat", out.stdout == data, true)
}

async fn stdout_and_stderr_apart(tb: &mut dyn Testbed) -> Result<(), String> {
    let out = sh(tb, "echo out; echo err >&2; echo out2").await?;
    expect("stdout", out.stdout_text(), "out\nout2\n".to_string())?;
    expect("stderr", out.stderr_text(), "err\n".to_string())
}

async fn large_output(tb: &mut dyn Testbed) -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let req = ExecRequest::shell("head -c 20000000 /dev/zero; echo done >&2")
        .stdout(Output::file(file.path()))
        .stderr(Output::capture());
    let out = tb.exec(req).await.map_err(|e| e.to_string())?;
    expect("status", out.status.code(), 0)?;
    expect("stderr", out.stderr_text(), "done\n".to_string())?;
    let size = std::fs::metadata(file.path())
        .map_err(|e| e.to_string())?
        .len();
    expect("bytes written to the host file", size, 20_000_000)
}

async fn copy_file_round_trip(tb: &mut dyn Testbed) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = host.path().join("-odd name.sh");
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    std::fs::write(&src, &data).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    // The parent dirs do not exist yet: copy_down creates them.
    let target = scratch_path(tb, "new/dirs/-odd name.sh");
    tb.copy_down(&src, &target)
        .await
        .map_err(|e| e.to_string())?;
    ok(tb, &format!("test -x '{target}'")).await?;
    let back = host.path().join("back");
    tb.copy_up(&target, &back)
        .await
        .map_err(|e| e.to_string())?;
    expect(
        "file contents after a round trip",
        std::fs::read(&back).map_err(|e| e.to_string())? == data,
        true,
    )
}

async fn copy_tree_round_trip(tb: &mut dyn Testbed) -> Result<(), String> {
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = host.path().join("tree");
    std::fs::create_dir_all(src.join("sub dir/deeper")).map_err(|e| e.to_string())?;
    std::fs::write(src.join("sub dir/deeper/file"), "deep\n").map_err(|e| e.to_string())?;
    std::fs::write(src.join("ünïcode ☃"), "snow\n").map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("sub dir/deeper/file", src.join("link"))
        .map_err(|e| e.to_string())?;
    std::fs::create_dir(src.join("empty")).map_err(|e| e.to_string())?;
    let target = scratch_path(tb, "tree");
    tb.copy_down(&src, &target)
        .await
        .map_err(|e| e.to_string())?;
    expect(
        "link in testbed",
        ok(tb, &format!("readlink '{target}/link'")).await?,
        "sub dir/deeper/file\n".into(),
    )?;
    expect(
        "read through link",
        ok(tb, &format!("cat '{target}/link'")).await?,
        "deep\n".into(),
    )?;
    let back = host.path().join("back");
    tb.copy_up(&target, &back)
        .await
        .map_err(|e| e.to_string())?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
    expect(
        "deep file",
        read(&back.join("sub dir/deeper/file"))?,
        "deep\n".into(),
    )?;
    expect(
        "unicode name",
        read(&back.join("ünïcode ☃"))?,
        "snow\n".into(),
    )?;
    expect(
        "symlink kept",
        std::fs::read_link(back.join("link")).ok(),
        Some("sub dir/deeper/file".into()),
    )?;
    expect("empty dir kept", back.join("empty").is_dir(), true)
}

async fn timeout_kills_process_tree(tb: &mut dyn Testbed) -> Result<(), String> {
    let marker = scratch_path(tb, "survivor");
    let script = format!("(sleep 3; touch '{marker}') & sleep 60");
    let started = Instant::now();
    let out = tb
        .exec(
            ExecRequest::shell(&script)
                .capture()
                .timeout(Duration::from_secs(1)),
        )
        .await
        .map_err(|e| e.to_string())?;
    expect("timed out", out.timed_out, true)?;
    if started.elapsed() > Duration::from_secs(15) {
        return Err(format!("timeout took {:?}", started.elapsed()));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let left = sh(tb, &format!("test -e '{marker}'")).await?;
    expect(
        "a child of the timed-out command survived",
        left.status.success(),
        false,
    )
}

async fn root_is_real(tb: &mut dyn Testbed) -> Result<(), String> {
    expect("id -u", ok(tb, "id -u").await?, "0\n".into())
}

async fn normal_user_is_real(tb: &mut dyn Testbed) -> Result<(), String> {
    let Some(user) = tb.capabilities().suggested_normal_users.first().cloned() else {
        return Ok(());
    };
    let out = tb
        .exec(ExecRequest::new(["id", "-un"]).user(&user).capture())
        .await
        .map_err(|e| e.to_string())?;
    expect(
        "id -un as the normal user",
        out.stdout_text(),
        format!("{user}\n"),
    )
}

async fn baseimage_is_read_only_and_pristine(tb: &mut dyn Testbed) -> Result<(), String> {
    let base = tb
        .capabilities()
        .baseimage
        .clone()
        .ok_or("baseimage advertised without a path")?;
    ok(tb, &format!("test -e '{}'", base.path)).await?;
    if base.kind == dep8_core::capability::BaseImageKind::Directory {
        ok(tb, "echo changed > /etc/dep8-conformance-probe").await?;
        let write = sh(
            tb,
            &format!("echo x > '{}/etc/dep8-conformance-probe'", base.path),
        )
        .await?;
        expect(
            "writing into the base image succeeded",
            write.status.success(),
            false,
        )?;
        let seen = sh(
            tb,
            &format!("test -e '{}/etc/dep8-conformance-probe'", base.path),
        )
        .await?;
        ok(tb, "rm -f /etc/dep8-conformance-probe").await?;
        expect(
            "a change to / shows in the base image",
            seen.status.success(),
            false,
        )
    } else {
        let write = sh(
            tb,
            &format!(
                "dd if=/dev/zero of='{}' bs=512 count=1 conv=notrunc",
                base.path
            ),
        )
        .await?;
        expect(
            "writing to the base image device succeeded",
            write.status.success(),
            false,
        )
    }
}

async fn revert_restores_root_filesystem(tb: &mut dyn Testbed) -> Result<(), String> {
    let scratch = tb.scratch().to_string();
    ok(tb, "echo dirty > /etc/dep8-conformance-dirty").await?;
    tb.revert().await.map_err(|e| e.to_string())?;
    expect(
        "scratch path kept across revert",
        tb.scratch().to_string(),
        scratch.clone(),
    )?;
    ok(tb, &format!("test -d '{scratch}'")).await?;
    let left = sh(tb, "test -e /etc/dep8-conformance-dirty").await?;
    expect("file in / survived revert", left.status.success(), false)
}

async fn revert_full_system_restores_tmp(tb: &mut dyn Testbed) -> Result<(), String> {
    ok(tb, "echo dirty > /tmp/dep8-conformance-dirty").await?;
    tb.revert().await.map_err(|e| e.to_string())?;
    let left = sh(tb, "test -e /tmp/dep8-conformance-dirty").await?;
    expect(
        "file in /tmp survived a full revert",
        left.status.success(),
        false,
    )
}

async fn reboot_keeps_scratch(tb: &mut dyn Testbed) -> Result<(), String> {
    let keep = scratch_path(tb, "kept-over-reboot");
    ok(tb, &format!("echo kept > '{keep}'")).await?;
    let boot_id = ok(tb, "cat /proc/sys/kernel/random/boot_id").await?;
    tb.reboot().await.map_err(|e| e.to_string())?;
    expect(
        "scratch file after reboot",
        ok(tb, &format!("cat '{keep}'")).await?,
        "kept\n".into(),
    )?;
    let after = ok(tb, "cat /proc/sys/kernel/random/boot_id").await?;
    if after == boot_id {
        return Err("boot_id unchanged: the testbed did not reboot".into());
    }
    Ok(())
}

/// The test of `examples/nested`, the one way a test author finds the base
/// image on every backend.
const NESTED_TEST: &str = include_str!("../../examples/nested/debian/tests/nested-testbed");

/// `examples/nested`'s test, run as is: a nested testbed made from the base
/// image (a VM booted from a block device, a container on a directory)
/// runs a command and answers with the base image's Debian version.
async fn nested_testbed_on_the_base_image(tb: &mut dyn Testbed) -> Result<(), String> {
    let base = tb
        .capabilities()
        .baseimage
        .clone()
        .ok_or("baseimage advertised without a path")?;
    if base.kind == dep8_core::capability::BaseImageKind::Block {
        // What the example's Depends installs.
        ok(
            tb,
            "command -v qemu-system-x86_64 >/dev/null || \
             { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
               apt-get install -y -q --no-install-recommends qemu-system-x86; } >/dev/null",
        )
        .await?;
    }
    let tmp = scratch_path(tb, "nested-tmp");
    ok(tb, &format!("mkdir -p '{tmp}'")).await?;
    let out = tb
        .exec(
            ExecRequest::new(["sh", "-c", NESTED_TEST, "nested-testbed"])
                .env("DEP8_BASEIMAGE", &base.path)
                .env("DEP8_BASEIMAGE_KIND", &base.kind.to_string())
                .env("AUTOPKGTEST_TMP", &tmp)
                .capture()
                .timeout(Duration::from_secs(1800)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let said = format!("booted from {} ({}) and answered", base.path, base.kind);
    if out.status.success() && out.stdout_text().contains(&said) {
        Ok(())
    } else {
        Err(format!(
            "the nested testbed did not answer ({:?}): {}\n{}",
            out.status,
            out.stdout_text(),
            out.stderr_text()
        ))
    }
}

/// `prepare_reboot` + `await_reboot`: a process on the testbed waits for
/// the prepare mark (what `/tmp/autopkgtest-reboot-prepare` writes) to go,
/// then reboots the testbed itself; the backend removes the mark and
/// returns once the testbed is back.
async fn reboot_started_by_the_testbed(tb: &mut dyn Testbed) -> Result<(), String> {
    let flag = dep8_core::reboot::PREPARE_MARK_FILE;
    let ready = scratch_path(tb, "waiting-for-the-mark");
    let boot_id = ok(tb, "cat /proc/sys/kernel/random/boot_id").await?;
    // In a session of its own (the command waits until it is), or the
    // command's end would kill it.
    ok(
        tb,
        &format!(
            "echo mark > {flag}; \
             setsid sh -c 'touch \"$1\"; while [ -e {flag} ]; do sleep 0.1; done; reboot' \
             sh '{ready}' </dev/null >/dev/null 2>&1 & \
             while [ ! -e '{ready}' ]; do sleep 0.05; done"
        ),
    )
    .await?;
    tb.prepare_reboot().await.map_err(|e| e.to_string())?;
    tb.await_reboot().await.map_err(|e| e.to_string())?;
    let after = ok(tb, "cat /proc/sys/kernel/random/boot_id").await?;
    if after == boot_id {
        return Err("boot_id unchanged: the testbed did not reboot".into());
    }
    expect(
        "the mark after the reboot",
        sh(tb, &format!("test -e {flag}")).await?.status.success(),
        false,
    )
}
