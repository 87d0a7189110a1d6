//! `dep8 run -j N` on real unshare, schroot and autopkgtest-virt-unshare
//! testbeds: the outputs of a parallel run are a serial run's (minus
//! timings); through an ssh setup script that gives one machine twice, the
//! run goes on serially; a breaks-testbed test beside others does not
//! disturb them, and SIGINT during a parallel run kills every clone and
//! leaves complete partial results and nothing else.
//! `dep8 run --on A --on B` sends each test to the cheapest testbed that
//! can run it.

use dep8_tests::e2e::{
    dep8_bin, interrupt_when, marked_processes, repo, result_states, source_tree,
    unshare_rootfs_as_root, wait_for_the_killed, EXAMPLE_TIMEOUT,
};
use dep8_tests::required_resource;
use dep8_tests::sshd::{Login, LoopbackSshd};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

/// `dep8 run -B -j JOBS OPTIONS -o OUT SRC -- TESTBED...` from the
/// repository's top directory.
fn dep8(jobs: &str, options: &[&str], out: &Path, src: &str, testbed: &[&str]) -> Output {
    Command::new(dep8_bin())
        .current_dir(repo())
        .args(["run", "-B", "-j", jobs])
        .args(options)
        .arg("-o")
        .arg(out)
        .arg(src)
        .arg("--")
        .args(testbed)
        .output()
        .expect("running dep8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// results.json without the tests' durations, nor the testbed's scratch
/// dir on the host (which differs from one run to the next).
fn results_without_timings(out: &Path) -> serde_json::Value {
    let mut results: serde_json::Value = serde_json::from_str(&read(&out.join("results.json")))
        .unwrap_or_else(|e| panic!("{}/results.json: {e}", out.display()));
    results["capabilities"]["downtmp_host"] = serde_json::Value::Null;
    for test in results["tests"].as_array_mut().expect("tests") {
        test.as_object_mut()
            .expect("a test")
            .remove("duration_secs");
    }
    results
}

/// junit.xml without its `time="..."` attributes.
fn junit_without_timings(out: &Path) -> String {
    let xml = read(&out.join("junit.xml"));
    let mut kept = String::new();
    let mut rest = xml.as_str();
    while let Some(at) = rest.find(" time=\"") {
        kept.push_str(&rest[..at]);
        let value = &rest[at + " time=\"".len()..];
        rest = &value[value.find('"').expect("closing quote") + 1..];
    }
    kept + rest
}

/// Runs `src` with `-j 1` and `-j 3` on `testbed` and asserts the same
/// exit status, summary, results.json, junit.xml and per-test files.
fn assert_parallel_same_as_serial(src: &str, options: &[&str], testbed: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (serial, parallel) = (dir.path().join("serial"), dir.path().join("parallel"));
    let started = Instant::now();
    let one = dep8("1", options, &serial, src, testbed);
    let serial_time = started.elapsed();
    let started = Instant::now();
    let three = dep8("3", options, &parallel, src, testbed);
    eprintln!(
        "{src}: -j 1 {:.1}s, -j 3 {:.1}s",
        serial_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        one.status.code(),
        three.status.code(),
        "{}",
        String::from_utf8_lossy(&three.stderr)
    );
    assert_eq!(
        read(&serial.join("summary")),
        read(&parallel.join("summary"))
    );
    assert_eq!(
        results_without_timings(&serial),
        results_without_timings(&parallel)
    );
    assert_eq!(
        junit_without_timings(&serial),
        junit_without_timings(&parallel)
    );
    let files = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&serial), files(&parallel));
    for name in files(&serial) {
        if name.ends_with("-stdout") || name.ends_with("-stderr") {
            assert_eq!(
                read(&serial.join(&name)),
                read(&parallel.join(&name)),
                "{name}"
            );
        }
    }
    let log = read(&parallel.join("log"));
    assert!(
        log.contains("tests at once, each on a testbed of its own"),
        "{log}"
    );
    assert!(!log.contains("opening another testbed:"), "{log}");
}

#[test]
fn parallel_outputs_match_serial_ones_on_unshare() {
    let Some(rootfs) = unshare_rootfs_as_root() else {
        return;
    };
    let testbed = ["unshare", "--tarball", &rootfs];
    for example in ["outcomes", "hello"] {
        assert_parallel_same_as_serial(
            &format!("examples/{example}"),
            &[EXAMPLE_TIMEOUT],
            &testbed,
        );
    }
}

/// Each run of autopkgtest-virt-unshare unpacks a testbed of its own.
#[test]
fn parallel_outputs_match_serial_ones_on_external_virt_unshare() {
    let Some(rootfs) = unshare_rootfs_as_root() else {
        return;
    };
    assert_parallel_same_as_serial(
        "examples/outcomes",
        &["--timeout-test", "3"],
        &["external", "autopkgtest-virt-unshare", "-t", &rootfs],
    );
}

/// `-j 2` through an ssh setup script that gives the same machine at each
/// open: the second open finds the machine in use and closes its
/// connection, without the script's cleanup (which would end the machine
/// under the first testbed), and the run goes on with the first testbed,
/// one test after another; the first testbed's cleanup is the only one.
#[test]
fn a_setup_script_giving_one_machine_twice_runs_the_tests_serially() {
    let Some(sshd) = LoopbackSshd::start_with(Login::RootOwnMachine) else {
        return;
    };
    let script = sshd.setup_script();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = dep8(
        "2",
        &[],
        &out,
        "examples/hello",
        &[
            "ssh",
            "--known-hosts",
            &sshd.known_hosts().to_string_lossy(),
            "-s",
            &script.to_string_lossy(),
        ],
    );
    let log = read(&out.join("log"));
    assert_eq!(run.status.code(), Some(0), "{log}");
    assert_eq!(
        result_states(&out),
        [("greets", "PASS"), ("command1", "PASS (superficial)")]
            .map(|(n, r)| (n.to_string(), r.to_string()))
    );
    assert!(
        log.contains("opening another testbed: ")
            && log.contains("which another testbed of this run is using already")
            && log.contains("; running the tests one after another"),
        "{log}"
    );
    let calls = read(&sshd.dir().join("state/calls"));
    let count = |call: &str| calls.lines().filter(|l| l.starts_with(call)).count();
    assert_eq!((count("open"), count("cleanup")), (2, 1), "{calls}");
}

#[test]
fn parallel_outputs_match_serial_ones_on_schroot() {
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot with a union-type")
    else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the schroot tests run as root only");
        return;
    }
    assert_parallel_same_as_serial(
        "examples/outcomes",
        &[EXAMPLE_TIMEOUT],
        &["schroot", &chroot],
    );
}

/// A breaks-testbed test runs beside others on a clone of its own, and
/// its clone is reverted before its next test: none sees what it broke.
#[test]
fn a_breaks_testbed_test_does_not_disturb_the_others() {
    let Some(rootfs) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unbroken = "test ! -e /etc/dep8-broken && sleep 1";
    let mut control = String::from(
        "Test-Command: touch /etc/dep8-broken && sleep 2\nDepends:\n\
         Features: test-name=breaks\nRestrictions: breaks-testbed, needs-root\n\n",
    );
    for i in 1..=5 {
        control += &format!("Test-Command: {unbroken}\nDepends:\nFeatures: test-name=sees-{i}\n\n");
    }
    let src = source_tree(dir.path(), "breaker", &control);
    let out = dir.path().join("out");
    let run = dep8(
        "2",
        &[],
        &out,
        src.to_str().unwrap(),
        &["unshare", "--tarball", &rootfs],
    );
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        read(&out.join("summary")),
        String::from_utf8_lossy(&run.stderr)
    );
    let expected: String = ["breaks", "sees-1", "sees-2", "sees-3", "sees-4", "sees-5"]
        .iter()
        .map(|name| format!("{name:<20} PASS\n"))
        .collect();
    assert_eq!(read(&out.join("summary")), expected);
    let log = read(&out.join("log"));
    assert!(log.contains("reverting the testbed"), "{log}");
}

/// What a test leaves running is found on the host by this argv[0].
const MARKER: &str = "dep8-parallel-marker";

/// SIGINT while three tests run on three testbeds: dep8 dies by it, every
/// test has its result (interrupted, not run, or what it got), and no
/// process, mount or temp file of the run is left.
#[test]
fn sigint_during_a_parallel_run_kills_every_clone_and_keeps_the_results() {
    let Some(rootfs) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut control = String::new();
    for i in 1..=5 {
        control += &format!(
            "Test-Command: exec -a {MARKER} sleep 300\nDepends:\nFeatures: test-name=sleeps-{i}\n\n"
        );
    }
    let src = source_tree(dir.path(), "sleepers", &control);
    let out = dir.path().join("out");
    let mut dep8 = Command::new(dep8_bin());
    dep8.env("TMPDIR", &tmp)
        .args(["run", "-B", "-j", "3", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["--", "unshare", "--tarball", &rootfs]);
    interrupt_when(
        dep8,
        || marked_processes(MARKER) >= 3,
        "three tests at once",
    );
    wait_for_the_killed(|| marked_processes(MARKER) > 0);

    let results: serde_json::Value =
        serde_json::from_str(&read(&out.join("results.json"))).unwrap();
    assert_eq!(results["complete"], false);
    let expected: Vec<(String, String)> = (1..=5)
        .map(|i| {
            let state = if i <= 3 { "INTERRUPTED" } else { "NOT_RUN" };
            (format!("sleeps-{i}"), state.to_string())
        })
        .collect();
    assert_eq!(result_states(&out), expected);
    assert_eq!(
        marked_processes(MARKER),
        0,
        "a test's process outlived dep8"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*tmp.to_string_lossy()),
        "a clone's mount is left: {mounts}"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// `--on null --on unshare`: each test on the cheapest testbed that can
/// run it, whatever order the testbeds are given in; the summary stays
/// autopkgtest's, results.json names each test's testbed.
#[test]
fn on_sends_each_test_to_the_cheapest_capable_testbed() {
    let Some(rootfs) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let control = "Test-Command: true\nDepends:\nFeatures: test-name=plain\n\n\
                   Test-Command: touch /etc/broken\nDepends:\nFeatures: test-name=breaks\n\
                   Restrictions: breaks-testbed, needs-root\n\n\
                   Test-Command: true\nDepends:\nFeatures: test-name=machine\n\
                   Restrictions: isolation-machine\n";
    let src = source_tree(dir.path(), "routed", control);
    let out = dir.path().join("out");
    let unshare = format!("unshare --tarball {rootfs}");
    let run = Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["--on", &unshare, "--on", "null"])
        .output()
        .expect("running dep8");
    assert_eq!(
        run.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = read(&out.join("summary"));
    assert_eq!(
        summary,
        "plain                PASS\nbreaks               PASS\n\
         machine              SKIP Test restriction \"isolation-machine\" requires testbed capability \"isolation-machine\"\n"
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), summary);
    let results: serde_json::Value =
        serde_json::from_str(&read(&out.join("results.json"))).unwrap();
    let placed: Vec<(&str, &str)> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["testbed"].as_str().unwrap()))
        .collect();
    assert_eq!(
        placed,
        [
            ("plain", "null"),
            ("breaks", unshare.as_str()),
            ("machine", "null")
        ]
    );
    let log = read(&out.join("log"));
    assert!(log.contains(&format!("dep8: testbed {unshare} (")), "{log}");
}
