//! dep8's inputs and testbed setup options, end to end on the unshare
//! backend: binary `.deb`s (new ones, and ones already installed, which are
//! reinstalled as autopkgtest does), a source package name fetched with
//! `apt-get source`, `-U`, `--add-apt-source`, `--apt-pocket`, `--copy`,
//! `needs-sudo`, and the errors: uninstallable dependencies, an unknown
//! source package, a `.dsc` with missing files, corrupt `.deb`s, no network.
//! Every fixture is generated in a temp dir; each test asserts what the
//! testbed saw, not only dep8's exit status. Where autopkgtest can run the
//! same case cheaply, its result words and exit status are compared.
//!
//! Most tests need the network to deb.debian.org (as CI has).

use dep8_tests::e2e::{
    autopkgtest_as_root, check, dep8_bin, required_program, result_words, source_tree, summary_of,
    unshare_rootfs_as_root, write,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

/// An installed, architecture-independent leaf package of the rootfs that
/// no test here uses: marker builds of it replace the real one.
const INSTALLED: &str = "libtext-glob-perl";

/// What a dep8 run left: its exit status, stderr, summary, log,
/// results.json and junit.xml.
struct Run {
    code: Option<i32>,
    stderr: String,
    summary: String,
    log: String,
    results: String,
    junit: String,
}

impl Run {
    fn words(&self) -> BTreeMap<String, String> {
        result_words(&self.summary)
    }

    /// Everything the run said, for assertion messages.
    fn said(&self) -> String {
        format!(
            "\n--- summary:\n{}--- stderr:\n{}--- log:\n{}",
            self.summary, self.stderr, self.log
        )
    }

    /// The exit status is `code`, and dep8 did not panic.
    fn assert_exit(&self, code: i32) {
        assert!(!self.stderr.contains("panicked"), "{}", self.said());
        assert_eq!(self.code, Some(code), "{}", self.said());
    }

    /// The run stopped before any test as an erroneous package blaming
    /// `blame`: results.json says so (incomplete, exit 12, the summary's
    /// last line as its error, no test), and so does junit.xml.
    fn assert_stopped_as_badpkg(&self, blame: &str) {
        let results: serde_json::Value = serde_json::from_str(&self.results)
            .unwrap_or_else(|e| panic!("results.json: {e}{}", self.said()));
        let last = self.summary.lines().last().unwrap_or_default();
        assert!(last.starts_with("erroneous package: "), "{}", self.said());
        assert_eq!(
            (
                &results["complete"],
                &results["exit_code"],
                &results["error"],
                &results["blame"],
                &results["tests"],
            ),
            (
                &serde_json::json!(false),
                &serde_json::json!(12),
                &serde_json::json!(last),
                &serde_json::json!([blame]),
                &serde_json::json!([]),
            ),
            "{}",
            self.said()
        );
        assert!(
            self.junit
                .contains(&format!("<system-err>{last}</system-err>")),
            "{}",
            self.junit
        );
    }

    /// Both the summary and the log say `text`.
    fn assert_says(&self, text: &str) {
        assert!(
            self.summary.contains(text) && self.log.contains(text),
            "summary and log should say {text:?}{}",
            self.said()
        );
    }
}

/// Runs `dep8 run -B -o DIR/OUT ARGS` in `dir` (the tests, not a build).
fn dep8(dir: &Path, out: &str, args: &[&str]) -> Run {
    let out_dir = dir.join(out);
    let output = Command::new(dep8_bin())
        .current_dir(dir)
        .args(["run", "-B", "-o", out_dir.to_str().expect("utf-8 path")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dep8");
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    Run {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        summary: read("summary"),
        log: read("log"),
        results: read("results.json"),
        junit: read("junit.xml"),
    }
}

/// The words after `--` for an unshare testbed of `tarball`.
fn unshare(tarball: &str) -> Vec<&str> {
    vec!["--", "unshare", "--tarball", tarball]
}

/// Builds `dir/PACKAGE_VERSION_all.deb` holding `files` (path, content).
fn build_deb(dir: &Path, package: &str, version: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = TempDir::new_in(dir).expect("temp dir");
    write(
        &root.path().join("DEBIAN/control"),
        &format!(
            "Package: {package}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: dep8 <dep8@example.org>\nDescription: dep8 test fixture\n"
        ),
    );
    for (path, content) in files {
        write(&root.path().join(path.trim_start_matches('/')), content);
    }
    let deb = dir.join(format!("{package}_{version}_all.deb"));
    let args = ["--build", "--root-owner-group"];
    let (root, deb_arg) = (
        root.path().to_str().expect("utf-8"),
        deb.to_str().expect("utf-8"),
    );
    check("dpkg-deb", &[&args[..], &[root, deb_arg]].concat(), dir);
    deb
}

/// The version of `package` installed in the rootfs tarball.
fn installed_version(tarball: &str, package: &str) -> String {
    let status = check(
        "tar",
        &["-xOf", tarball, "./var/lib/dpkg/status"],
        Path::new("/"),
    );
    status
        .split("\n\n")
        .find(|stanza| stanza.lines().any(|l| l == format!("Package: {package}")))
        .and_then(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Version: ")))
        .unwrap_or_else(|| panic!("{package} is not installed in {tarball}"))
        .to_string()
}

/// The rootfs and the host programs that build fixtures, or `None` (with
/// the reason printed).
fn rootfs() -> Option<String> {
    let tarball = unshare_rootfs_as_root()?;
    required_program("dpkg-deb", "dpkg")?;
    required_program("dpkg-source", "dpkg-dev")?;
    Some(tarball)
}

/// Runs autopkgtest `-B -o DIR/autopkgtest THEIRS` (paths in `theirs` must
/// be absolute: it runs from the repository) while `ours` runs, and asserts
/// both agree on every test's result word (every test autopkgtest ran, if
/// `subset`: `theirs` selects tests) and the exit status; returns `ours`'
/// run. Only `ours` runs where autopkgtest cannot.
fn same_as_autopkgtest(
    dir: &Path,
    theirs: &[&str],
    subset: bool,
    ours: impl FnOnce() -> Run,
) -> Run {
    let Some(autopkgtest) = autopkgtest_as_root() else {
        return ours();
    };
    let out = dir.join("autopkgtest");
    let args = [&["-B", "-o", out.to_str().expect("utf-8")], theirs].concat();
    let (theirs, run) = std::thread::scope(|s| {
        let theirs = s.spawn(|| summary_of(&autopkgtest, &args, &out));
        let run = ours();
        (theirs.join().expect("autopkgtest thread"), run)
    });
    let their_summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    let mut ours = run.words();
    if subset {
        ours.retain(|name, _| theirs.0.contains_key(name));
    }
    assert!(
        !theirs.0.is_empty() || !subset,
        "autopkgtest ran no test:\n{their_summary}"
    );
    assert_eq!(
        ours,
        theirs.0,
        "result words differ from autopkgtest's:\n{their_summary}{}",
        run.said()
    );
    assert_eq!(
        run.code,
        theirs.1,
        "exit status differs from autopkgtest's:\n{their_summary}{}",
        run.said()
    );
    run
}

/// Point 1: a new binary is installed from the given `.deb`; a given binary
/// of the same name and version as an installed package is reinstalled from
/// it, and again after a revert, with the same results as autopkgtest.
#[test]
fn given_binaries_are_installed_and_reinstalled() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let version = installed_version(&tarball, INSTALLED);
    let new = build_deb(
        dir.path(),
        "dep8-new-binary",
        "1.2-3",
        &[("/usr/share/dep8-new-binary/marker", "new binary 1.2-3\n")],
    );
    let same = build_deb(
        dir.path(),
        INSTALLED,
        &version,
        &[(
            "/usr/share/dep8-inputs/reinstalled",
            "from the given binary\n",
        )],
    );
    let reinstalled = format!(
        "Depends: {INSTALLED}\n\
         Test-Command: grep -x 'from the given binary' /usr/share/dep8-inputs/reinstalled \
         && test \"$(dpkg-query -W -f '${{Version}}' {INSTALLED})\" = '{version}'\n"
    );
    let control = format!(
        "{reinstalled}\n\
         Depends: dep8-new-binary (= 1.2-3)\n\
         Test-Command: grep -x 'new binary 1.2-3' /usr/share/dep8-new-binary/marker \
         && test \"$(dpkg-query -W -f '${{Version}}' dep8-new-binary)\" = 1.2-3\n\n\
         {reinstalled}"
    );
    let tree = source_tree(dir.path(), "binaries", &control);
    let args = [
        new.to_str().expect("utf-8"),
        same.to_str().expect("utf-8"),
        tree.to_str().expect("utf-8"),
    ];
    // autopkgtest reinstalls too (on the first test only: each of its
    // reverts costs a new unpack, apt-get update and apt-utils, which it
    // needs and dep8 does not).
    let theirs = [
        &["--setup-commands=apt-get update", "--test-name=command1"][..],
        &args,
        &unshare(&tarball),
    ]
    .concat();
    let run = same_as_autopkgtest(dir.path(), &theirs, true, || {
        dep8(dir.path(), "out", &[&args[..], &unshare(&tarball)].concat())
    });
    run.assert_exit(0);
    assert_eq!(
        run.summary,
        "command1             PASS\ncommand2             PASS\ncommand3             PASS\n"
    );
    let reinstalls = run
        .log
        .matches(&format!(
            "reinstalling the given binaries that are installed: {INSTALLED}"
        ))
        .count();
    assert_eq!(
        reinstalls,
        2,
        "once after opening, once after the revert{}",
        run.said()
    );
    assert!(run.log.contains("reverting the testbed"), "{}", run.said());
}

/// Point 2: a source package name is fetched with `apt-get source` in the
/// testbed; the rootfs has no deb-src lines, so dep8 derives them (where
/// autopkgtest stops with a testbed failure: it gets the same results once
/// given a deb-src line).
#[test]
fn a_source_package_name_is_fetched_in_the_testbed() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    // autopkgtest needs the deb-src line, and the archive's package lists
    // that dep8 gets itself when a testbed has none.
    let deb_src = "--add-apt-source=deb-src http://deb.debian.org/debian bookworm main";
    let update = "--setup-commands=apt-get update";
    let theirs = [&[deb_src, update, "hello"][..], &unshare(&tarball)].concat();
    let run = same_as_autopkgtest(dir.path(), &theirs, false, || {
        dep8(
            dir.path(),
            "out",
            &[&["hello"][..], &unshare(&tarball)].concat(),
        )
    });
    run.assert_exit(0);
    assert_eq!(
        run.words(),
        BTreeMap::from([
            ("command1".to_string(), "PASS".to_string()),
            ("upstream-tests".to_string(), "PASS".to_string()),
        ]),
        "{}",
        run.said()
    );
    assert!(
        run.log
            .contains("no deb-src entries: adding one for each deb entry")
            && run
                .log
                .contains("dpkg-source: info: extracting hello in hello-"),
        "{}",
        run.said()
    );
}

/// Point 3: `--copy`, `--add-apt-source` (a local repository copied in
/// with `--copy`, and bookworm-backports), `-U` (which dist-upgrades an
/// installed package to the local repository's newer build) and
/// `needs-sudo` (passwordless sudo for the normal user).
#[test]
fn setup_options_take_effect() {
    let Some(tarball) = rootfs() else { return };
    let Some(_) = required_program("dpkg-scanpackages", "dpkg-dev") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let newer = format!("{}+dep8.1", installed_version(&tarball, INSTALLED));
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    build_deb(
        &repo,
        INSTALLED,
        &newer,
        &[("/usr/share/dep8-inputs/upgraded", "upgraded by -U\n")],
    );
    let packages = check("dpkg-scanpackages", &["."], &repo);
    write(&repo.join("Packages"), &packages);
    let file = dir.path().join("copied.txt");
    write(&file, "copied by dep8\n");
    let control = format!(
        "Depends:\nTest-Command: grep -x 'copied by dep8' /srv/dep8-copied.txt\n\n\
         Depends:\nTest-Command: apt-cache policy > \"$AUTOPKGTEST_TMP/policy\"; cd \"$AUTOPKGTEST_TMP\"; \
         grep -F 'file:/srv/dep8-repo' policy \
         && grep -F 'http://deb.debian.org/debian bookworm-backports/main' policy\n\n\
         Depends:\nTest-Command: test \"$(dpkg-query -W -f '${{Version}}' {INSTALLED})\" = '{newer}' \
         && grep -x 'upgraded by -U' /usr/share/dep8-inputs/upgraded\n\n\
         Depends: sudo\n\
         Restrictions: needs-sudo\n\
         Test-Command: test \"$(id -u)\" != 0 && sudo -n true && test \"$(sudo -n id -u)\" = 0\n"
    );
    let tree = source_tree(dir.path(), "setup", &control);
    let copy_file = format!("--copy={}:/srv/dep8-copied.txt", file.display());
    let copy_repo = format!("--copy={}:/srv/dep8-repo", repo.display());
    let args = [
        &copy_file,
        &copy_repo,
        "--add-apt-source=deb [trusted=yes] file:/srv/dep8-repo /",
        "--add-apt-source=deb http://deb.debian.org/debian bookworm-backports main",
        "-U",
        tree.to_str().expect("utf-8"),
    ];
    let run = dep8(dir.path(), "out", &[&args[..], &unshare(&tarball)].concat());
    run.assert_exit(0);
    assert_eq!(
        run.summary,
        "command1             PASS\ncommand2             PASS\n\
         command3             PASS\ncommand4             PASS\n",
        "{}",
        run.said()
    );
    assert!(
        run.log
            .contains("setting up user dep8 to sudo without password"),
        "{}",
        run.said()
    );
}

/// Point 3: `--apt-pocket backports=PKG` adds bookworm-backports and, as
/// autopkgtest 5.49 pins it, takes PKG from it (995) and nothing else
/// (100).
#[test]
fn apt_pocket_pins_the_listed_packages() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let control = "Depends:\nTest-Command: cd \"$AUTOPKGTEST_TMP\"; apt-cache policy > all; \
        grep -E '^ +100 http://deb.debian.org/debian bookworm-backports/main' all \
        && apt-cache policy ubuntu-archive-keyring | grep -E '^ +[^ ]+~bpo[^ ]* 995$' \
        && apt-cache policy debian-tag2upload-keyring | grep -E '^ +[^ ]+~bpo[^ ]* 100$'\n";
    let tree = source_tree(dir.path(), "pocket", control);
    let args = [
        "--apt-pocket=backports=ubuntu-archive-keyring",
        tree.to_str().expect("utf-8"),
    ];
    let run = dep8(dir.path(), "out", &[&args[..], &unshare(&tarball)].concat());
    run.assert_exit(0);
    assert_eq!(run.summary, "command1             PASS\n", "{}", run.said());
}

/// Point 4: a dependency that does not exist is badpkg, or SKIP with
/// skip-not-installable, as with autopkgtest; the summary names it.
#[test]
fn uninstallable_dependencies_are_badpkg() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let control = "Test-Command: true\nDepends: dep8-no-such-package\n\n\
                   Test-Command: true\nDepends: dep8-no-such-package\n\
                   Restrictions: skip-not-installable\n";
    let tree = source_tree(dir.path(), "uninstallable", control);
    let tree = tree.to_str().expect("utf-8");
    let args = [&[tree][..], &unshare(&tarball)].concat();
    let run = same_as_autopkgtest(dir.path(), &args, false, || dep8(dir.path(), "out", &args));
    run.assert_exit(14);
    assert_eq!(
        run.words(),
        BTreeMap::from([
            ("command1".to_string(), "FAIL".to_string()),
            ("command2".to_string(), "SKIP".to_string()),
        ])
    );
    run.assert_says("badpkg: Test dependencies are unsatisfiable");
    run.assert_says("dep8-no-such-package but it is not installable");
    run.assert_says("SKIP installation fails and skip-not-installable set");
}

/// Point 4: an unknown source package name is badpkg (exit 12), as with
/// autopkgtest, and apt's word for it is in the summary; results.json and
/// junit.xml say why the run stopped.
#[test]
fn an_unknown_source_package_is_badpkg() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let deb_src = "--add-apt-source=deb-src http://deb.debian.org/debian bookworm main";
    let theirs = [&[deb_src, "dep8-no-such-source"][..], &unshare(&tarball)].concat();
    let run = same_as_autopkgtest(dir.path(), &theirs, false, || {
        let ours = [&["dep8-no-such-source"][..], &unshare(&tarball)].concat();
        dep8(dir.path(), "out", &ours)
    });
    run.assert_exit(12);
    run.assert_says("Unable to find a source package for dep8-no-such-source");
    run.assert_stopped_as_badpkg("dep8-no-such-source");
}

/// Point 4: a `.dsc` whose files are missing is refused on the host, before
/// a testbed is opened, naming the missing file (exit 12; autopkgtest dies
/// of a Python traceback with 16 there), with results.json and junit.xml.
/// With its files it runs, even on a testbed without dpkg-dev.
#[test]
fn a_dsc_with_missing_files_is_refused_before_opening() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    source_tree(
        dir.path(),
        "dep8-dsc",
        "Depends:\nTest-Command: cat debian/source/format\n",
    );
    check("dpkg-source", &["-b", "dep8-dsc"], dir.path());
    // A testbed without dpkg-source gets dpkg-dev installed first.
    let without = "--setup-commands=apt-get remove -y -q dpkg-dev";
    let run = dep8(
        dir.path(),
        "whole",
        &[&[without, "dep8-dsc_1.0.dsc"][..], &unshare(&tarball)].concat(),
    );
    run.assert_exit(0);
    assert_eq!(run.summary, "command1             PASS\n", "{}", run.said());
    assert!(
        run.log
            .contains("the testbed has no dpkg-source: installing dpkg-dev")
            && run
                .log
                .contains("dpkg-source: info: extracting dep8-dsc in tree"),
        "{}",
        run.said()
    );

    std::fs::remove_file(dir.path().join("dep8-dsc_1.0.tar.xz")).expect("rm");
    let run = dep8(
        dir.path(),
        "missing",
        &[&["dep8-dsc_1.0.dsc"][..], &unshare(&tarball)].concat(),
    );
    run.assert_exit(12);
    run.assert_says("dep8-dsc_1.0.dsc lists files that are missing: dep8-dsc_1.0.tar.xz");
    run.assert_stopped_as_badpkg("dep8-dsc_1.0.dsc");
    assert!(!run.log.contains("opening testbed"), "{}", run.said());
}

/// Point 4: random bytes and a truncated `.deb` are refused on the host,
/// before a testbed is opened, naming the file (exit 12, as autopkgtest's
/// "failed to parse binary package").
#[test]
fn corrupt_debs_are_refused_before_opening() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(dir.path(), "corrupt", "Depends:\nTest-Command: true\n");
    let tree = tree.to_str().expect("utf-8");
    let whole = build_deb(
        dir.path(),
        "dep8-whole",
        "1",
        &[("/usr/share/doc/dep8-whole/data", &"data ".repeat(2000))],
    );
    let bytes = std::fs::read(&whole).expect("read deb");
    let truncated = dir.path().join("truncated_1_all.deb");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    let random = dir.path().join("random_1_all.deb");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, noise).expect("write");
    let (random, truncated) = (
        random.to_str().expect("utf-8"),
        truncated.to_str().expect("utf-8"),
    );

    let args = [&[random, tree][..], &unshare(&tarball)].concat();
    let run = same_as_autopkgtest(dir.path(), &args, false, || {
        dep8(dir.path(), "random", &args)
    });
    run.assert_exit(12);
    run.assert_says("random_1_all.deb: not a Debian binary package");
    assert!(!run.log.contains("opening testbed"), "{}", run.said());

    let run = dep8(
        dir.path(),
        "truncated",
        &[&[truncated, tree][..], &unshare(&tarball)].concat(),
    );
    run.assert_exit(12);
    run.assert_says("truncated_1_all.deb: not a Debian binary package: data.tar");
    assert!(!run.log.contains("opening testbed"), "{}", run.said());
}

/// Point 4: without a network (`--private-network`) a dependency missing
/// from the rootfs is badpkg (exit 12), and the summary says which and that
/// the archive could not be reached.
#[test]
fn no_network_names_the_failed_download() {
    let Some(tarball) = rootfs() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(
        dir.path(),
        "offline",
        "Test-Command: hello\nDepends: hello\n",
    );
    // Without the package cache: lists and packages cached by other runs
    // would let the test pass offline.
    let args = [
        &["--no-cache", tree.to_str().expect("utf-8")][..],
        &unshare(&tarball),
        &["--private-network"],
    ]
    .concat();
    let run = dep8(dir.path(), "out", &args);
    run.assert_exit(12);
    run.assert_says("badpkg: Test dependencies are unsatisfiable");
    run.assert_says("Depends: hello but it is not installable");
    run.assert_says("W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease");
    run.assert_says("Temporary failure resolving 'deb.debian.org'");
}

/// `dep8 run` installs no packages on the host: binaries given with the
/// null backend are refused (exit 20, before anything runs), naming the
/// file.
#[test]
fn binaries_are_refused_on_the_host() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(dir.path(), "host", "Depends:\nTest-Command: true\n");
    std::fs::write(dir.path().join("foo_1_all.deb"), "not used").expect("write");
    let run = dep8(
        dir.path(),
        "out",
        &["foo_1_all.deb", tree.to_str().expect("utf-8"), "--", "null"],
    );
    run.assert_exit(20);
    assert!(
        run.stderr
            .contains("foo_1_all.deb (a binary to install): would change the host"),
        "{}",
        run.said()
    );
}
