//! dep8 as a drop-in `autopkgtest`: started through a symlink named
//! `autopkgtest`, it takes autopkgtest 5.49's command line (every option of
//! its own parser, argparse's prefixes, `@file`), writes the output dir the
//! callers read, and exits as autopkgtest does. `dep8 run` on `null` refuses
//! what would change the host.

use dep8_tests::e2e::{autopkgtest_as_root, dep8_bin, repo, required_file, EXAMPLE_TIMEOUT};
use dep8_tests::sshd::LoopbackSshd;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temp dir holding `autopkgtest`, a symlink to dep8.
fn entry_point() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("autopkgtest");
    std::os::unix::fs::symlink(dep8_bin(), &link).unwrap();
    (dir, link)
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .current_dir(repo())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// autopkgtest 5.49's options as its own parser declares them, each as
/// (option strings, whether it takes a value), listed by
/// tests/scripts/autopkgtest-options; `None` when autopkgtest is missing.
fn autopkgtest_options() -> Option<Vec<(Vec<String>, bool)>> {
    if !required_file(
        "/usr/share/autopkgtest/lib/autopkgtest_args.py",
        "autopkgtest",
    ) {
        return None;
    }
    let out = run(&repo().join("tests/scripts/autopkgtest-options"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let options: Vec<(Vec<String>, bool)> = text(&out.stdout)
        .lines()
        .map(|line| {
            let (names, kind) = line.split_once('\t').unwrap();
            let names = names.split(' ').map(str::to_string).collect();
            (names, kind == "takes-value")
        })
        .collect();
    assert!(options.len() > 35, "{options:?}");
    Some(options)
}

/// A value each option accepts; the output paths are new ones in `dir`
/// (the test's temp dir, removed with it), since dep8 writes its output
/// dir and log before it looks at the source.
fn value_for(option: &str, dir: &Path) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if ["--output-dir", "--log-file", "--summary-file"].contains(&option) {
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return dir.join(format!("out.{n}")).to_string_lossy().into_owned();
    }
    match option {
        "--pin-packages" => "bookworm-backports=hello,src:dpkg",
        "--env" => "A=b",
        "--copy" => "/etc/hostname:/tmp/x",
        "--needs-internet" => "try",
        "--ignore-restrictions" => "needs-root,flaky",
        o if o.starts_with("--timeout") || o == "--build-parallel" => "2",
        _ => "x",
    }
    .to_string()
}

/// Asserts that dep8 parsed `args` (given before a source that does not
/// exist): it then stops, exit 20, on the missing source, not on an option.
fn assert_parsed(link: &Path, args: &[&str]) {
    let mut all = args.to_vec();
    all.extend(["/nonexistent-dropin-source", "--", "null"]);
    let out = run(link, &all);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(20), "{args:?}: {stderr}");
    assert!(
        stderr.contains("/nonexistent-dropin-source") && !stderr.contains("argument"),
        "{args:?} was not parsed: {stderr}"
    );
}

#[test]
fn every_option_of_autopkgtest_5_49_is_accepted() {
    let Some(options) = autopkgtest_options() else {
        return;
    };
    let (dir, link) = entry_point();
    for (names, takes_value) in &options {
        if names.iter().any(|n| n == "--help") {
            continue;
        }
        let long = names.last().unwrap();
        for name in names {
            if *takes_value {
                assert_parsed(&link, &[name, &value_for(long, dir.path())]);
            } else {
                assert_parsed(&link, &[name]);
            }
        }
    }
}

#[test]
fn unambiguous_prefixes_as_argparse_takes_them() {
    let Some(options) = autopkgtest_options() else {
        return;
    };
    let longs: Vec<(&str, bool)> = options
        .iter()
        .flat_map(|(names, value)| {
            names
                .iter()
                .filter(|n| n.starts_with("--") && *n != "--help")
                .map(move |n| (n.as_str(), *value))
        })
        .collect();
    let (dir, link) = entry_point();
    for (long, takes_value) in &longs {
        // The shortest prefix no other option of autopkgtest's starts with.
        let prefix = (3..=long.len())
            .map(|n| &long[..n])
            .find(|p| longs.iter().filter(|(o, _)| o.starts_with(p)).count() == 1);
        let Some(prefix) = prefix.filter(|p| p != long) else {
            continue;
        };
        if *takes_value {
            assert_parsed(
                &link,
                &[&format!("{prefix}={}", value_for(long, dir.path()))],
            );
        } else {
            assert_parsed(&link, &[prefix]);
        }
    }
    // Debusine's spelling of --summary-file.
    let summary = dir.path().join("summary");
    assert_parsed(&link, &[&format!("--summary={}", summary.display())]);
    // An ambiguous prefix is a usage error, as with argparse.
    let out = run(&link, &["--test", "x", "examples/hello", "--", "null"]);
    assert_eq!(out.status.code(), Some(20), "{}", text(&out.stderr));
}

#[test]
fn arguments_from_files_and_the_virt_server_forms() {
    let (dir, link) = entry_point();
    let out = dir.path().join("out");
    let args = dir.path().join("args");
    std::fs::write(
        &args,
        format!("-o\n  {}  \n--test-name\ngreets\n", out.display()),
    )
    .unwrap();
    let res = run(
        &link,
        &[
            &format!("@{}", args.display()),
            "-B",
            "examples/hello",
            "--",
            "autopkgtest-virt-null",
        ],
    );
    assert_eq!(res.status.code(), Some(0), "{}", text(&res.stderr));
    let summary = std::fs::read_to_string(out.join("summary")).unwrap();
    assert_eq!(summary, "greets               PASS\n");
    let info = std::fs::read_to_string(out.join("testinfo.json")).unwrap();
    assert!(
        info.contains("\"virt_server\": \"autopkgtest-virt-null\""),
        "{info}"
    );
}

/// Every file under the host's apt configuration dirs, with its size and
/// modification time.
fn apt_configuration() -> BTreeSet<(PathBuf, u64, std::time::SystemTime)> {
    let mut files = BTreeSet::new();
    for dir in ["/etc/apt/sources.list.d", "/etc/apt/preferences.d"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            files.insert((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    files
}

#[test]
fn dep8_run_refuses_to_change_the_host_on_null() {
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("x_1_all.deb");
    std::fs::write(&deb, "not looked at").unwrap();
    let before = apt_configuration();
    let deb = deb.to_str().unwrap();
    for (args, named) in [
        (
            vec!["--add-apt-source", "deb http://x y z"],
            "--add-apt-source",
        ),
        (
            vec!["--add-apt-release=bookworm-backports"],
            "--add-apt-release",
        ),
        (vec!["--pin-packages", "unstable=hello"], "--pin-packages"),
        (vec!["--apt-pocket", "backports"], "--apt-pocket"),
        (
            vec!["--apt-default-release", "bookworm"],
            "--apt-default-release",
        ),
        (vec!["-U"], "-U/--apt-upgrade"),
        (vec!["--copy", "/etc/hostname:/tmp/x"], "--copy"),
        (vec![deb], deb),
    ] {
        let mut all = vec!["run"];
        all.extend(&args);
        all.extend(["examples/hello", "--", "null"]);
        let out = run(&dep8_bin(), &all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(20), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("would change the host"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        apt_configuration(),
        before,
        "the host's apt configuration changed"
    );
}

/// Whether Debusine's `_parse_summary_file` takes `line`: `[a-z ]+: ...`
/// (blame, badpkg, errors) or `NAME WORD ...` with one of autopkgtest's
/// result words.
fn parsed_as_debusine_does(line: &str) -> bool {
    let note = line.split_once(": ").is_some_and(|(head, _)| {
        !head.is_empty() && head.chars().all(|c| c.is_ascii_lowercase() || c == ' ')
    });
    let word = line.split_whitespace().nth(1).unwrap_or_default();
    note || ["PASS", "FAIL", "SKIP", "FLAKY"].contains(&word)
}

/// The output files, the summary (exactly for hello; in autopkgtest's
/// words for outcomes, whose skip reasons differ) and the exit status of
/// `autopkgtest -B -- null` and of dep8 started as autopkgtest.
#[test]
fn output_dir_and_exit_status_as_autopkgtest_writes_them() {
    let Some(autopkgtest) = autopkgtest_as_root() else {
        return;
    };
    let (dir, link) = entry_point();
    for example in ["hello", "outcomes"] {
        let theirs = dir.path().join(format!("autopkgtest-{example}"));
        let ours = dir.path().join(format!("dep8-{example}"));
        let args = |out: &Path| {
            let out = out.to_str().unwrap().to_string();
            let src = format!("examples/{example}");
            ["-B", EXAMPLE_TIMEOUT, "-o", &out, &src, "--", "null"].map(str::to_string)
        };
        let (their_run, our_run) = std::thread::scope(|s| {
            let theirs_args = args(&theirs);
            let autopkgtest = &autopkgtest;
            let theirs = s.spawn(move || {
                let args: Vec<&str> = theirs_args.iter().map(String::as_str).collect();
                run(autopkgtest, &args)
            });
            let ours_args = args(&ours);
            let args: Vec<&str> = ours_args.iter().map(String::as_str).collect();
            (theirs.join().unwrap(), run(&link, &args))
        });
        let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let (their_summary, our_summary) = (read(&theirs, "summary"), read(&ours, "summary"));
        let context = format!(
            "{example}:\n--- autopkgtest's summary:\n{their_summary}--- dep8's:\n{our_summary}{}",
            text(&our_run.stderr)
        );
        assert_eq!(our_run.status.code(), their_run.status.code(), "{context}");
        if example == "hello" {
            assert_eq!(our_summary, their_summary, "{context}");
        }
        for line in our_summary.lines() {
            assert!(
                parsed_as_debusine_does(line),
                "{context}\nunexpected line {line:?}"
            );
        }
        assert_eq!(
            read(&ours, "testpkg-version"),
            read(&theirs, "testpkg-version")
        );
        let names = |dir: &Path| -> BTreeSet<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        // outcomes: until null stops offering isolation-machine (autopkgtest
        // 5.48), dep8 runs two tests there that autopkgtest skips.
        if example == "hello" {
            let ours_only: BTreeSet<String> =
                names(&ours).difference(&names(&theirs)).cloned().collect();
            let extras: BTreeSet<String> = ["results.json", "junit.xml"].map(String::from).into();
            assert!(
                ours_only.is_subset(&extras),
                "{context}\nonly dep8 wrote {ours_only:?}"
            );
            let theirs_only: Vec<String> =
                names(&theirs).difference(&names(&ours)).cloned().collect();
            assert!(
                theirs_only.is_empty(),
                "{context}\nonly autopkgtest wrote {theirs_only:?}"
            );
        }
        let keys = |dir: &Path| -> BTreeSet<String> {
            let info: serde_json::Value =
                serde_json::from_str(&read(dir, "testinfo.json")).unwrap();
            info.as_object().unwrap().keys().cloned().collect()
        };
        let missing: Vec<String> = keys(&theirs).difference(&keys(&ours)).cloned().collect();
        assert!(missing.is_empty(), "testinfo.json lacks {missing:?}");
    }
}

/// `--shell` on a terminal (a pty from script(1)) opens a shell in the
/// testbed after the test; without one, dep8 says so and goes on.
#[test]
fn shell_after_a_test_on_a_terminal_only() {
    let dep8 = dep8_bin();
    let command = format!(
        "{} run --shell --test-name greets examples/hello",
        dep8.display()
    );
    // The input comes once the shell has had time to start.
    let typed =
        "sleep 5; echo 'echo IN-SHELL-$((6*7)) $AUTOPKGTEST_TMP'; sleep 1; echo exit; sleep 2";
    // Plain results: on a terminal they are coloured otherwise.
    let out = Command::new("sh")
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .args([
            "-c",
            &format!("({typed}) | script -qec \"$0\" /dev/null"),
            &command,
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        // The null testbed's scratch dir is in the run's dir under /tmp.
        stdout.contains("IN-SHELL-42 /tmp/") && stdout.contains("/dep8-null."),
        "no shell ran: {stdout}"
    );
    assert!(stdout.contains("greets               PASS"), "{stdout}");

    let out = run(&dep8, &["run", "--shell", "examples/hello"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("stdin is not a terminal, so no shell is opened"),
        "{}",
        text(&out.stderr)
    );
}

/// What debci's null backend runs (`debci-autopkgtest` on `-- null`, as
/// root) for bookworm's hello, fetched with `apt-get source` on the host:
/// started as autopkgtest, dep8 installs the tests' dependencies on the
/// host as autopkgtest does, says so, and the tests pass.
#[test]
fn debci_null_run_of_hello_installs_on_the_host_and_passes() {
    if autopkgtest_as_root().is_none() {
        return;
    }
    let (dir, link) = entry_point();
    let out = dir.path().join("out");
    let res = run(
        &link,
        &[
            "--no-built-binaries",
            "--setup-commands=echo 'hello bookworm/amd64' > /var/tmp/debci.pkg 2>&1 || true",
            "--setup-commands=echo 'Acquire::Retries \"10\";' > /etc/apt/apt.conf.d/75retry 2>&1 || true",
            "--output-dir",
            out.to_str().unwrap(),
            "hello",
            "--",
            "null",
        ],
    );
    let log = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    assert_eq!(res.status.code(), Some(0), "{log}");
    assert!(log.contains("is THIS HOST"), "{log}");
    let version = std::fs::read_to_string(out.join("testpkg-version")).unwrap();
    assert!(version.starts_with("hello 2.10"), "{version}");
    let installed = run(Path::new("dpkg-query"), &["-W", "-f", "${Status}", "hello"]);
    assert_eq!(text(&installed.stdout), "install ok installed");
}

/// 5.49's apt options on a container: `--apt-pocket` with packages (a
/// release derived from the testbed's one-line and deb822 sources, and
/// pins), `--apt-default-release`, `--add-apt-source` from a host file.
#[test]
fn apt_pockets_releases_pins_and_source_files_on_unshare() {
    let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deb822 = dir.path().join("extra.sources");
    std::fs::write(
        &deb822,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
         Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .unwrap();
    let list = dir.path().join("proposed.list");
    std::fs::write(
        &list,
        "deb http://deb.debian.org/debian bookworm-proposed-updates main\n",
    )
    .unwrap();
    let show = "cat /etc/apt/sources.list.d/dep8-add-apt-release-bookworm-backports.sources \
                /etc/apt/sources.list.d/proposed.list /etc/apt/preferences.d/dep8-*; \
                apt-cache policy autopkgtest | sed -n 's/^ *Candidate: /CANDIDATE /p'";
    let out = run(
        &dep8_bin(),
        &[
            "run",
            "-B",
            "--copy",
            &format!("{}:/etc/apt/sources.list.d/extra.sources", deb822.display()),
            "--apt-pocket=backports=src:autopkgtest",
            "--apt-default-release=bookworm",
            "--add-apt-source",
            list.to_str().unwrap(),
            "--setup-commands",
            show,
            "--test-name=greets",
            "examples/hello",
            "--",
            "unshare",
            "--tarball",
            &tarball,
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for expected in [
        "testbed release detected to be: bookworm",
        "Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main contrib",
        "deb http://deb.debian.org/debian bookworm-proposed-updates main",
        "Package: *\nPin: release a=bookworm\nPin-Priority: 990",
        "Package: *\nPin: release a=bookworm-backports\nPin-Priority: 100",
        "Package: src:autopkgtest:any\nPin: release a=bookworm-backports\nPin-Priority: 995",
        "Package: *\nPin: release a=bookworm-backports\nPin-Priority: 500",
        "CANDIDATE 5.49~bpo12+1",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
}

/// `--timeout` is the whole run's limit, `-q` keeps dep8's messages off the
/// terminal.
#[test]
fn global_timeout_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = run(
        &dep8_bin(),
        &[
            "run",
            "-q",
            "--timeout=3",
            "--env=SLOW_MARKER=/dev/null",
            "-o",
            out_dir.to_str().unwrap(),
            "examples/slow",
        ],
    );
    // As autopkgtest 5.49 (`autopkgtest -B -q --timeout=3 ... -- null`):
    // the test running when the time is up times out, exit 4.
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(text(&out.stderr), "", "-q");
    assert_eq!(
        text(&out.stdout),
        "quick                PASS\nslow                 FAIL timed out\n"
    );
}

/// autopkgtest's apt fallback: a dependency only the pinned release can
/// satisfy (acr newer than bookworm's, from bookworm-backports whose
/// other packages are pinned at 100) is installed once the pins are dropped,
/// and is badpkg with `--no-apt-fallback`.
#[test]
fn apt_fallback_drops_the_pins_unless_told_not_to() {
    let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("fallback");
    std::fs::create_dir_all(tree.join("debian/tests")).unwrap();
    std::fs::write(
        tree.join("debian/tests/control"),
        "Test-Command: dpkg-query -W acr\nDepends: acr (>> 1.9.4-1)\n",
    )
    .unwrap();
    let tree = tree.to_str().unwrap();
    let args = |extra: &'static [&'static str]| {
        let mut args = vec![
            "run",
            "--add-apt-release=bookworm-backports",
            "--pin-packages=bookworm-backports=dep8-no-such-package",
        ];
        args.extend(extra);
        args.extend([tree, "--", "unshare", "--tarball", &tarball]);
        args
    };
    let out = run(&dep8_bin(), &args(&["--no-apt-fallback"]));
    assert_eq!(out.status.code(), Some(12), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("command1             FAIL badpkg"));
    let out = run(&dep8_bin(), &args(&[]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("retrying without /etc/apt/preferences.d/dep8-pin-bookworm-backports.pref"),
        "{stderr}"
    );
}

/// Exit statuses 254 and 255 are reported as 253, as autopkgtest's
/// wrapper has done since 5.39.
#[test]
fn exit_statuses_254_and_255_read_253_as_with_autopkgtest() {
    let Some(autopkgtest) = autopkgtest_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("src");
    std::fs::create_dir_all(tree.join("debian/tests")).unwrap();
    std::fs::write(
        tree.join("debian/tests/control"),
        "Test-Command: exit 255\nDepends:\n\nTest-Command: exit 254\nDepends:\n",
    )
    .unwrap();
    let (_link_dir, link) = entry_point();
    let summaries: Vec<String> = [&autopkgtest, &link]
        .iter()
        .enumerate()
        .map(|(i, program)| {
            let out = dir.path().join(format!("out{i}"));
            let args = [
                "-B",
                "-o",
                out.to_str().unwrap(),
                tree.to_str().unwrap(),
                "--",
                "null",
            ];
            assert_eq!(run(program, &args).status.code(), Some(4));
            std::fs::read_to_string(out.join("summary")).unwrap()
        })
        .collect();
    assert_eq!(
        summaries[1],
        "command1             FAIL non-zero exit status 253\n\
         command2             FAIL non-zero exit status 253\n"
    );
    assert_eq!(summaries[1], summaries[0]);
}

/// The control file of [`options_take_effect_on_every_backend`]: a test
/// per option it checks, in the testbed.
const EFFECTS: &str = "\
Test-Command: test \"$DEP8_AUDIT\" = env-ok && test \"$LANG\" = de_DE.UTF-8
Features: test-name=env-and-lang
Depends:

Test-Command: test -e \"$DEP8_AUDIT_DIR/setup\" && test -e \"$DEP8_AUDIT_DIR/boot\" && { test -z \"$DEP8_AUDIT_COPY\" || test -e \"$DEP8_AUDIT_DIR/copied/file\"; }
Features: test-name=setup-boot-copy
Depends:

Test-Command: true
Features: test-name=ignored-restriction
Restrictions: isolation-machine
Depends:

Test-Command: true
Features: test-name=internet
Restrictions: needs-internet
Depends:

Test-Command: false
Features: test-name=skipped
Depends:

Test-Command: test \"$(id -un)\" = nobody
Features: test-name=user
Depends:

Test-Command: sleep 60
Features: test-name=timeout
Depends:
";

/// Every option of autopkgtest 5.49 that `dep8 run` takes is honoured or
/// refused (exit 20, the option named) on each testbed, never silently
/// dropped: a real run on null, unshare, schroot and ssh with the options
/// whose effect a test can see, `-a` for another architecture, `-V`,
/// `--shell-fail` without a terminal, and the log and summary options. The
/// apt options are refused on null (`dep8_run_refuses_to_change_the_host_on_null`);
/// `--gain-root` and `--build-parallel` act only on builds (tests/builds.rs).
#[test]
fn options_take_effect_on_every_backend() {
    let mut testbeds: Vec<(Vec<String>, Option<LoopbackSshd>)> = vec![(vec!["null".into()], None)];
    if let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() {
        testbeds.push((vec!["unshare".into(), "--tarball".into(), tarball], None));
    }
    if let Some(chroot) = dep8_tests::required_resource("DEP8_TEST_SCHROOT", "a schroot chroot") {
        testbeds.push((vec!["schroot".into(), chroot], None));
    }
    if let Some(sshd) = LoopbackSshd::start() {
        let mut testbed = vec!["ssh".to_string()];
        testbed.extend(sshd.backend_args());
        testbeds.push((testbed, Some(sshd)));
    }
    std::thread::scope(|s| {
        for (testbed, _) in &testbeds {
            s.spawn(move || options_take_effect_on(testbed));
        }
    });
}

fn options_take_effect_on(testbed: &[String]) {
    let name = &testbed[0];
    let dir = tempfile::tempdir().unwrap();
    let tree = dep8_tests::e2e::source_tree(dir.path(), "audit", "Test-Command: true\n");
    let control = dir.path().join("control");
    std::fs::write(&control, EFFECTS).unwrap();
    // Where the setup commands leave their marks: the host itself on null
    // and ssh (this machine), so in the test's temp dir.
    let marks = dir.path().join("marks");
    // Traversable: the tests run as nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copied = dir.path().join("copied-from");
    std::fs::create_dir(&copied).unwrap();
    std::fs::write(copied.join("file"), "x").unwrap();
    let m = marks.display();
    let out = dir.path().join("out");
    let summary_file = dir.path().join("summary-file");
    let log_file = dir.path().join("log-file");
    let mut args: Vec<String> = [
        "run",
        "-B",
        "-o",
        &out.to_string_lossy(),
        "--override-control",
        &control.to_string_lossy(),
        "--summary-file",
        &summary_file.to_string_lossy(),
        "-l",
        &log_file.to_string_lossy(),
        "--env",
        "DEP8_AUDIT=env-ok",
        "--env",
        &format!("DEP8_AUDIT_DIR={m}"),
        "--set-lang",
        "de_DE.UTF-8",
        "--setup-commands",
        &format!("mkdir -p '{m}' && touch '{m}/setup'"),
        "--setup-commands-boot",
        &format!("touch '{m}/boot'"),
        "--ignore-restrictions",
        "isolation-machine",
        "--needs-internet",
        "skip",
        "--skip-test",
        "skipped",
        "-u",
        "nobody",
        // Long enough for the quick tests on a loaded machine (ssh's
        // `user` test took 8 s once in CI), short beside `sleep 60`.
        "--timeout-test",
        "15",
        "--insecure",
        "-s",
        "-q",
    ]
    .map(String::from)
    .to_vec();
    // --copy changes the host on null: refused there (tested above).
    if name != "null" {
        args.extend([
            "--copy".into(),
            format!("{}:{m}/copied", copied.display()),
            "--env".into(),
            "DEP8_AUDIT_COPY=yes".into(),
        ]);
    }
    args.push(tree.to_string_lossy().into_owned());
    args.push("--".into());
    args.extend(testbed.iter().cloned());
    let res = Command::new(dep8_bin())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // As autopkgtest: the summary goes to --summary-file only.
    let summary = std::fs::read_to_string(&summary_file).unwrap_or_default();
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    let said = format!("{name}: {}\nlog:\n{log}", text(&res.stderr));
    // A FAIL (the timeout) and a SKIP (needs-internet): 4 | 2.
    assert_eq!(res.status.code(), Some(6), "{said}");
    let words = dep8_tests::e2e::result_words(&summary);
    let expected = [
        ("env-and-lang", "PASS"),
        ("setup-boot-copy", "PASS"),
        ("ignored-restriction", "PASS"),
        ("internet", "SKIP"),
        ("user", "PASS"),
        ("timeout", "FAIL"),
    ];
    assert_eq!(
        words,
        expected
            .iter()
            .map(|(t, w)| (t.to_string(), w.to_string()))
            .collect(),
        "{said}"
    );
    assert!(summary.contains("timed out"), "{said}");
    // -q: nothing of dep8's own on stderr; the log file has it.
    assert!(!text(&res.stderr).contains("dep8 ["), "{said}");
    assert!(log.contains("--insecure"), "{said}");
    assert!(log.contains("stdin is not a terminal"), "-s: {said}");

    // -a for another architecture: refused, named.
    let res = dep8_run(&["-a", "s390x"], &tree, testbed, &dir.path().join("out-a"));
    assert_eq!(
        res.status.code(),
        Some(20),
        "{name} -a: {}",
        text(&res.stderr)
    );
    assert!(
        text(&res.stderr).contains("--test-architecture s390x"),
        "{name}: {}",
        text(&res.stderr)
    );
    // -V: validates, runs nothing.
    let res = dep8_run(&["-V"], &tree, testbed, &dir.path().join("out-v"));
    assert_eq!(
        res.status.code(),
        Some(0),
        "{name} -V: {}",
        text(&res.stderr)
    );
    assert!(
        text(&res.stdout).contains("Test specification is valid"),
        "{name} -V"
    );
}

/// `dep8 run -B -o OUT ARGS TREE -- TESTBED`.
fn dep8_run(args: &[&str], tree: &Path, testbed: &[String], out: &Path) -> Output {
    Command::new(dep8_bin())
        .args(["run", "-B", "-o"])
        .arg(out)
        .args(args)
        .arg(tree)
        .arg("--")
        .args(testbed)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
