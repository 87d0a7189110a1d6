//! The native `lxc` backend on a real privileged container (`DEP8_TEST_LXC`,
//! made by `.ci/setup-lxc` with `dep8 image build lxc`: systemd, the
//! host's network, nesting.conf): the conformance suite, the example
//! packages next to Debian's `autopkgtest ... -- lxc`, reboots, a clone
//! that does not come back, signals and killed runs (no clone left, no
//! other container touched), debci's lxc backend, and `dep8 image build
//! lxc` itself.

use dep8_conformance::{format_verdicts, run_all, Verdict};
use dep8_core::capability::Capability;
use dep8_core::testbed::Backend;
use dep8_tests::e2e::{
    assert_same_as_autopkgtest, autopkgtest_as_root, check, dep8_bin, required_program,
    source_tree, write, Dep8Run,
};
use dep8_tests::faults::{signal_matrix_with, FaultRun, Phase};
use dep8_tests::required_resource;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Debian's autopkgtest-virt-lxc lists the containers (`lxc-ls`), and that
/// fails on a container being made at the same moment ("Failed to load
/// config for ci-…", seen twice when this file ran whole): a test that runs
/// it has its turn alone, the others that make containers share theirs.
static TURNS: RwLock<()> = RwLock::new(());

/// The template container, when the tests can use it (as root: a
/// privileged container), and a turn shared with the other tests that
/// make containers.
fn template() -> Option<(String, RwLockReadGuard<'static, ()>)> {
    let name = template_name()?;
    Some((name, TURNS.read().unwrap_or_else(|e| e.into_inner())))
}

/// [`template`], with a turn alone: for a test that runs
/// autopkgtest-virt-lxc.
fn template_alone() -> Option<(String, RwLockWriteGuard<'static, ()>)> {
    let name = template_name()?;
    Some((name, TURNS.write().unwrap_or_else(|e| e.into_inner())))
}

fn template_name() -> Option<String> {
    let name = required_resource("DEP8_TEST_LXC", "an lxc container")?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the lxc tests need root (a privileged container)");
        return None;
    }
    Some(name)
}

/// The names of every lxc container on the host.
fn containers() -> Vec<String> {
    let out = check("lxc-ls", &["-1"], Path::new("/"));
    out.split_whitespace().map(String::from).collect()
}

/// Asserts that no container's name starts with `prefix` (a run's
/// `--name`): its clones, and any base, are gone.
fn assert_no_container_named(prefix: &str) {
    let left: Vec<String> = containers()
        .into_iter()
        .filter(|c| c.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "clones left: {left:?}");
}

/// The conformance suite on one clone; every check that needs a
/// capability the backend offers here must have run.
// The turn is held for the whole test on purpose; the tests that wait for
// it wait in threads of their own.
#[allow(clippy::await_holding_lock)]
async fn certify(args: &[&str]) {
    let Some((template, _turn)) = template() else {
        return;
    };
    let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    argv.push(template);
    let started = Instant::now();
    let mut tb = dep8_backend_lxc::LxcBackend
        .open(&argv)
        .await
        .expect("open lxc");
    let caps = tb.capabilities().clone();
    for cap in [
        Capability::IsolationContainer,
        Capability::Reboot,
        Capability::RevertFullSystem,
        Capability::Nesting,
    ] {
        assert!(caps.has(cap), "{cap} missing: {caps:?}");
    }
    assert_eq!(caps.suggested_normal_users, ["dep8"]);
    let verdicts = run_all(tb.as_mut()).await;
    tb.close().await.expect("close");
    let table = format_verdicts(&verdicts);
    eprintln!(
        "conformance on lxc {} in {:.1?}:\n{table}",
        argv.join(" "),
        started.elapsed()
    );
    assert!(
        !verdicts.iter().any(|(_, v)| matches!(v, Verdict::Fail(_))),
        "lxc failed conformance:\n{table}"
    );
    // Only the base image's checks may be skipped, without --baseimage.
    let skipped: Vec<&str> = verdicts
        .iter()
        .filter(|(_, v)| match v {
            Verdict::Skip(why) => args.contains(&"--baseimage") || !why.contains("baseimage"),
            _ => false,
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(skipped.is_empty(), "skipped: {skipped:?}\n{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance() {
    certify(&["--baseimage"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_ephemeral() {
    certify(&["--ephemeral"]).await;
}

/// hello and outcomes get autopkgtest's results on the same template
/// (autopkgtest-virt-lxc makes full copies, or ephemeral overlays with
/// --ephemeral; dep8 overlay clones either way).
#[test]
fn examples_as_autopkgtest_gets_them() {
    let Some((template, _turn)) = template_alone() else {
        return;
    };
    if autopkgtest_as_root().is_none() {
        return;
    }
    // autopkgtest's full copies are slow: each example in one mode.
    for (example, mode) in [("hello", None), ("outcomes", Some("--ephemeral"))] {
        let started = Instant::now();
        let testbed: Vec<&str> = ["lxc"]
            .into_iter()
            .chain(mode)
            .chain([template.as_str()])
            .collect();
        assert_same_as_autopkgtest(example, &testbed);
        eprintln!("{example}: compared in {:.1?}", started.elapsed());
    }
}

/// examples/reboot: twice through `/tmp/autopkgtest-reboot`, twice
/// through `/tmp/autopkgtest-reboot-prepare` and the test's own `reboot`.
/// With the test's output sent elsewhere around the prepare call, dep8
/// does not wait for markers that cannot come (it waited 30 s before).
/// (Not compared: autopkgtest 5.49 fails `reboots-itself` on lxc,
/// docs/lxc.md.)
#[test]
fn tests_reboot_twice_and_by_themselves() {
    let Some((template, _turn)) = template() else {
        return;
    };
    let run = Dep8Run::new("examples/reboot", &["lxc", &template]);
    run.assert_exit(0);
    run.assert_reboot_example_passed();
    let quiet_reboot = run.seconds_between(
        "reboots-quietly: preparing for a reboot",
        "reboots-quietly: -----------------------]",
    );
    assert!(quiet_reboot < 20, "{quiet_reboot} s: {}", run.read("log"));
    assert!(run.out().join("lxc-console.log").exists());
}

/// examples/nested: a container made by the test on the base image (the
/// template's pristine root, read-only) answers with its Debian version.
#[test]
fn a_nested_container_on_the_base_image() {
    let Some((template, _turn)) = template() else {
        return;
    };
    dep8_tests::e2e::assert_nested_example_passes(
        &["lxc", "--baseimage", &template],
        "/var/lib/dep8/baseimage (directory)",
    );
}

/// A `needs-reboot` test that removes the clone's init before it asks for
/// a reboot: the clone never comes back. Exit 16 naming the reboot, the
/// console log kept, the clone destroyed.
#[test]
fn a_reboot_that_does_not_come_back_is_a_testbed_failure() {
    let Some((template, _turn)) = template() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = source_tree(
        dir.path(),
        "dep8-no-init",
        "Tests: loses-init\nDepends:\nRestrictions: needs-reboot, needs-root\n",
    );
    write(
        &src.join("debian/tests/loses-init"),
        "#!/bin/sh\nrm /sbin/init\n/tmp/autopkgtest-reboot no-init\n",
    );
    // Named, so that clones of tests running beside it do not count.
    let name = format!("dep8-test-no-init-{}", std::process::id());
    let run = Dep8Run::new(
        src.to_str().unwrap(),
        &["lxc", "--boot-timeout", "15", "--name", &name, &template],
    );
    run.assert_exit(16);
    assert!(
        run.read("summary").contains("reboot with marker no-init")
            && run.read("summary").contains("did not come back"),
        "{}",
        run.read("summary")
    );
    assert!(run.out().join("lxc-console.log").exists());
    assert_no_container_named(&name);
}

/// The clone `--setup-commands` ran in is kept, stopped, as the base that
/// reverts return to: the setup runs once (the log says so once). A test
/// breaks the testbed; the next one, on a new clone of the base, finds the
/// setup's mark and no trace of the break. Neither the clones nor the base
/// are left.
#[test]
fn a_broken_testbed_is_reverted_to_the_kept_setup() {
    let Some((template, _turn)) = template() else {
        return;
    };
    // Named, so that clones of tests running beside it do not count.
    let name = format!("dep8-test-kept-setup-{}", std::process::id());
    let run = Dep8Run::kept_setup(&["lxc", "--name", &name, &template]);
    let log = run.read("log");
    assert_eq!(log.matches("setting up the testbed").count(), 1, "{log}");
    assert_no_container_named(&name);
}

/// Bad arguments and a missing template: exit 20, with what is wrong.
#[test]
fn what_lxc_cannot_do_is_a_usage_error() {
    if template().is_none() {
        return;
    }
    for (testbed, says) in [
        (
            &["lxc", "dep8-no-such-container"][..],
            "there is no container dep8-no-such-container",
        ),
        (&["lxc", "--disk-limit", "2G", "t"], "--disk-limit 2G"),
        (&["lxc"], "TEMPLATE"),
    ] {
        let run = Dep8Run::new("examples/hello", testbed);
        run.assert_exit(20);
        assert!(run.stderr.contains(says), "{testbed:?}: {}", run.stderr);
    }
}

/// dep8 gets `signal` in `phase`: it ends by the signal, its clones are
/// gone (after `dep8 clean` for SIGKILL), nothing else of it is left.
fn signal_case(template: &str, phase: Phase, signal: Signal) -> Result<(), String> {
    // Around a revert, the base kept after the setup is left too, and
    // destroyed after the clones made from it.
    let extra: &[&str] = match phase {
        Phase::Setup => &["--setup-commands", "sleep 600"],
        Phase::Revert => &["--setup-commands", "true"],
        _ => &[],
    };
    let testbed = ["lxc".to_string(), template.to_string()];
    let mut run = FaultRun::start(&testbed, extra, Some(phase));
    run.reach(phase, Duration::from_secs(300));
    let id = run.run_id().ok_or("no run dir")?;
    let clones = run.lxc_clones();
    if clones.is_empty() {
        return Err(format!("{phase:?} {signal}: no clone dep8-{id}-* seen"));
    }
    run.signal(signal);
    let status = run.wait(Duration::from_secs(120));
    let case = format!("lxc {phase:?} {signal}");
    if status.signal() != Some(signal as i32) {
        return Err(format!("{case}: dep8 ended with {status}"));
    }
    if signal == Signal::SIGKILL {
        let cleaned = run.clean();
        if !cleaned.contains("lxc-destroy") {
            return Err(format!("{case}: dep8 clean said:\n{cleaned}"));
        }
    }
    // The run's clones are among its leftovers. The grace matters after a
    // SIGKILL that cut a destroy short: lxc-ls lists a container while its
    // monitor runs (by its command socket), and the monitor may still be
    // stopping the clone for a few seconds after the sweep's lxc-destroy.
    let left = run.leftovers(Duration::from_secs(10));
    if !left.is_empty() {
        return Err(format!("{case}: left behind:\n{}", left.join("\n")));
    }
    if signal != Signal::SIGKILL && phase == Phase::Test {
        let word = run.result_of("sleeper");
        if word != "INTERRUPTED" {
            return Err(format!("{case}: sleeper is {word}"));
        }
    }
    Ok(())
}

/// SIGINT, SIGTERM and SIGKILL while a setup command runs, while a test
/// runs, and around a revert (the next clone is being made in the
/// background); a decoy container named like a clone of a dead run that
/// dep8 did not make is never touched.
#[test]
fn signals_leave_no_clone() {
    let Some((template, _turn)) = template() else {
        return;
    };
    let decoy = Decoy::make(&template);
    signal_matrix_with(
        "lxc",
        &[Phase::Setup, Phase::Test, Phase::Revert],
        |phase, signal| signal_case(&template, phase, signal),
    );
    assert!(containers().contains(&decoy.0), "the decoy was removed");
    assert!(containers().contains(&template), "the template was removed");
}

/// A stopped container named like a clone of some other dep8 run
/// (`dep8-decoy0-0`), on the template's root; destroyed when dropped.
struct Decoy(String);

impl Decoy {
    fn make(template: &str) -> Decoy {
        let name = "dep8-decoy0-0".to_string();
        let dir = Path::new("/var/lib/lxc").join(&name);
        let _ = Command::new("lxc-destroy")
            .args(["-f", "-q", "-n", &name])
            .stderr(Stdio::null())
            .status();
        check(
            "lxc-copy",
            &["-n", template, "-N", &name, "-s", "-B", "overlayfs"],
            Path::new("/"),
        );
        assert!(dir.exists());
        Decoy(name)
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = Command::new("lxc-destroy")
            .args(["-f", "-q", "-n", &self.0])
            .status();
    }
}

/// `lxc --sudo` with dep8 run by a normal user who may run the lxc tools
/// (and cat) with sudo without a password, as debci's setup has it: the lxc tools run through `sudo`, hello
/// passes, the clone is gone afterwards. The user exists only in a private
/// mount namespace (bind-mounted account files, see `sshd::as_test_user`).
#[test]
fn sudo_as_a_normal_user() {
    let Some((template, _turn)) = template() else {
        return;
    };
    if required_program("sudo", "sudo").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("home/out");
    let clone = "dep8-lxc-sudo-test";
    let started = Instant::now();
    // What docs/lxc.md says `--sudo` needs: the lxc tools, and cat for the
    // template's config.
    let sudo_rule = "/usr/bin/lxc-*, /usr/bin/cat";
    let run = dep8_tests::sshd::as_test_user(dir.path(), Some(sudo_rule), &dep8_bin())
        .expect("the test user's files")
        .current_dir(dep8_tests::e2e::repo())
        .args(["run", "-B", "-o"])
        .arg(&out)
        .args(["examples/hello", "--", "lxc", "--sudo", "--name", clone])
        .arg(&template)
        .stdin(Stdio::null())
        .output()
        .expect("dep8 as the test user");
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    eprintln!("lxc --sudo as a normal user: {:.1?}", started.elapsed());
    assert_eq!(run.status.code(), Some(0), "{run:?}\nsummary:\n{summary}");
    assert!(
        summary.contains("greets") && summary.contains("PASS"),
        "{summary}"
    );
    let owner = std::fs::metadata(out.join("summary")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    assert_ne!(owner.ok(), Some(0), "dep8 ran as root");
    assert!(
        !containers().iter().any(|c| c.starts_with(clone)),
        "clone left"
    );
}

/// debci 3.6's lxc backend (`lxc --sudo --name ci-... autopkgtest-SUITE-ARCH`)
/// over dep8 and over Debian's autopkgtest: bookworm's hello passes, with
/// the same status. The template is a copy of the test container under
/// debci's name (removed afterwards); its network is the host's, which apt
/// needs for deb-src and the test's dependencies.
#[test]
fn debci_localtest_on_lxc() {
    let Some((template, _turn)) = template_alone() else {
        return;
    };
    for (program, package) in [("debci", "debci"), ("autopkgtest", "autopkgtest")] {
        if required_program(program, package).is_none() {
            return;
        }
    }
    let _named = DebciTemplate::over(&template);
    let mut statuses = Vec::new();
    for which in [
        dep8_tests::callers::Autopkgtest::Dep8,
        dep8_tests::callers::Autopkgtest::Debian,
    ] {
        let started = Instant::now();
        let (status, output) = debci_localtest(which, "hello");
        eprintln!(
            "debci on lxc with {which:?}: {status} in {:.1?}",
            started.elapsed()
        );
        statuses.push((status, output));
    }
    assert_eq!(
        statuses[0].0,
        "pass",
        "with dep8; debci's output ends:\n{}",
        tail(&statuses[0].1)
    );
    assert_eq!(
        statuses[1].0,
        "pass",
        "with autopkgtest; its output ends:\n{}",
        tail(&statuses[1].1)
    );
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What debci's create-testbed for lxc puts in its containers and the test
/// root lacks: deb-src lines (for `apt-get source`) and the `debci` user.
const DEBCI_SETUP: &str = "\
if ! grep -q '^deb-src' /etc/apt/sources.list; then
    sed -n 's/^deb\\s/deb-src /p' /etc/apt/sources.list >> /etc/apt/sources.list
    apt-get update -q
fi
id debci >/dev/null 2>&1 || useradd --home-dir /home/debci --create-home debci
";

/// `debci localtest -s bookworm -b lxc PACKAGE` with `which` as
/// autopkgtest: the status debci gives and its output.
fn debci_localtest(which: dep8_tests::callers::Autopkgtest, package: &str) -> (String, String) {
    let on = dep8_tests::callers::AutopkgtestOnPath::new(which);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let setup = dir.path().join("setup");
    write(&setup, DEBCI_SETUP);
    let config = dir.path().join("debci-config");
    write(
        &config.join("debci.conf"),
        &format!(
            "debci_autopkgtest_args=\"--setup-commands={}\"\n",
            setup.display()
        ),
    );
    let mut command = on.command("debci");
    command
        .env("debci_config_dir", &config)
        .args(["localtest", "-s", "bookworm", "-b", "lxc", "-d"])
        .arg(&data)
        .arg(package);
    let out = dep8_tests::callers::output_within(command, Duration::from_secs(900));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let artifacts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("I: test artifacts available at "))
        .unwrap_or_else(|| panic!("debci named no output dir:\n{output}"))
        .to_string();
    let exitcode = std::fs::read_to_string(Path::new(&artifacts).join("exitcode"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let _ = std::fs::remove_dir_all(&artifacts);
    let status = match exitcode.as_str() {
        "0" | "2" => "pass",
        "8" => "neutral",
        "4" | "6" | "12" | "14" => "fail",
        _ => "tmpfail",
    };
    (status.to_string(), output)
}

/// The test template under debci's name, `autopkgtest-bookworm-amd64`: a
/// full copy (lxc wants a container's root dir to bear its name), marked
/// as this test's and destroyed when dropped. A container of that name
/// that is not this test's is never replaced.
struct DebciTemplate(String);

impl DebciTemplate {
    const NAME: &'static str = "autopkgtest-bookworm-amd64";
    const MARK: &'static str = "dep8-tests-lxc-rs";

    fn over(template: &str) -> Self {
        let dir = Path::new("/var/lib/lxc").join(Self::NAME);
        if dir.exists() {
            assert!(
                dir.join(Self::MARK).exists(),
                "{} exists and is not this test's",
                dir.display()
            );
            check("lxc-destroy", &["-f", "-n", Self::NAME], Path::new("/"));
        }
        check(
            "lxc-copy",
            &["-n", template, "-N", Self::NAME],
            Path::new("/"),
        );
        std::fs::write(dir.join(Self::MARK), "made by dep8's tests/tests/lxc.rs\n").unwrap();
        DebciTemplate(Self::NAME.to_string())
    }
}

impl Drop for DebciTemplate {
    fn drop(&mut self) {
        let _ = Command::new("lxc-destroy")
            .args(["-f", "-q", "-n", &self.0])
            .status();
    }
}

/// `dep8 image build lxc --from TARBALL` in a private lxc path: the
/// template it makes runs examples/hello (with `-P`); without `--replace`
/// a second build is refused.
#[test]
fn image_build_lxc_makes_a_template() {
    let Some(tarball) = required_resource("DEP8_TEST_LXC_ROOTFS", "an lxc rootfs tarball") else {
        return;
    };
    if template().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lxcpath = dir.path().join("lxc");
    let lxcpath = lxcpath.to_str().unwrap();
    let build = |extra: &[&str]| {
        Command::new(dep8_bin())
            .args([
                "image",
                "build",
                "lxc",
                "--name",
                "dep8-image-test",
                "-P",
                lxcpath,
            ])
            .args(["--from", &tarball])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("dep8 image build lxc")
    };
    let started = Instant::now();
    let out = build(&[]);
    assert!(out.status.success(), "{out:?}");
    eprintln!("dep8 image build lxc --from: {:.1?}", started.elapsed());
    let config = std::fs::read_to_string(dir.path().join("lxc/dep8-image-test/config")).unwrap();
    assert!(config.contains("lxc.net.0.type = empty"), "{config}");
    let again = build(&[]);
    assert_eq!(again.status.code(), Some(20), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));
    let run = Dep8Run::new("examples/hello", &["lxc", "-P", lxcpath, "dep8-image-test"]);
    run.assert_exit(0);
    let out = build(&["--replace", "--network", "host", "--nesting"]);
    assert!(out.status.success(), "{out:?}");
    let config = std::fs::read_to_string(dir.path().join("lxc/dep8-image-test/config")).unwrap();
    assert!(config.contains("nesting.conf") && config.contains("lxc.net.0.type = none"));
}
