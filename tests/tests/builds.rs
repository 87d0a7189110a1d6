//! Building what is unbuilt, end to end on the unshare backend, as
//! autopkgtest 5.49 does without `-B`: an unbuilt tree and a `.dsc` are
//! built in the testbed (build dependencies from the archive) and `@`
//! installs the binaries just built; a `.changes` brings its own binaries,
//! so nothing is built; a build that fails blames the package with
//! autopkgtest's exit status and summary; autodep8 adds its tests to a
//! `Testsuite: autopkgtest-pkg-python` package as in autopkgtest, and
//! `--no-auto-control` leaves them out; a git URL is cloned at its branch.
//!
//! The fixtures are tests/fixtures/built (debhelper, installs a program
//! that says which DEB_BUILD_OPTIONS it was built with) and
//! tests/fixtures/autodep8-python. They need the network to
//! deb.debian.org (as CI has).

use dep8_tests::e2e::{
    autopkgtest_as_root, check, repo, required_program, result_words, source_tree, summary_of,
    unshare_rootfs_as_root, write, Dep8Run,
};
use std::collections::BTreeMap;

const BUILT: &str = "tests/fixtures/built";

/// The words after `--` for an unshare testbed of `tarball`.
fn unshare(tarball: &str) -> [&str; 3] {
    ["unshare", "--tarball", tarball]
}

/// What the fixture's test printed: the program's line, then the
/// DEB_BUILD_OPTIONS of the build that made it.
fn printed(run: &Dep8Run) -> String {
    run.read("runs-the-built-binary-stdout")
}

/// An unbuilt tree is built in the testbed with `--build-parallel`, and `@`
/// installs the binary it built (dep8-built is in no archive); with `-B`
/// nothing is built and `@` cannot be installed (badpkg), as before.
#[test]
fn an_unbuilt_tree_is_built_and_at_installs_what_it_built() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let run = Dep8Run::with(&["--build-parallel=3"], BUILT, &unshare(&tarball));
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "runs-the-built-binary PASS\n");
    let printed = printed(&run);
    assert!(
        printed.starts_with("dep8-built 1.0\n") && printed.contains("parallel=3"),
        "{printed}"
    );
    let log = run.read("log");
    assert!(
        log.contains("build needed for binaries")
            && log.contains("dpkg-buildpackage: info: binary-only upload")
            && log.contains("built binaries: dep8-built_1.0_all.deb"),
        "{log}"
    );

    let run = Dep8Run::new(BUILT, &unshare(&tarball));
    run.assert_exit(12);
    let summary = run.read("summary");
    assert!(
        summary.starts_with("runs-the-built-binary FAIL badpkg\nblame: tests/fixtures/built\n")
            && summary.contains("dep8-built but it is not installable"),
        "{summary}"
    );
    assert!(!run.read("log").contains("build needed"));
}

/// A `.dsc` is built in the testbed; a `.changes` of a build made on the
/// host stands for its `.dsc` and `.deb`: the host's binary is tested and
/// nothing is built.
#[test]
fn a_dsc_is_built_and_a_changes_brings_its_binaries() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    if required_program("dh", "debhelper").is_none()
        || required_program("dpkg-buildpackage", "dpkg-dev").is_none()
        || required_program("fakeroot", "fakeroot").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = dir.path().join("dep8-built");
    check("cp", &["-r", BUILT, tree.to_str().expect("utf-8")], &repo());
    // A full build on the host, marked so that its binary is recognised.
    let out = std::process::Command::new("dpkg-buildpackage")
        .args(["-us", "-uc", "-rfakeroot"])
        .env("DEB_BUILD_OPTIONS", "dep8-host-build")
        .current_dir(&tree)
        .output()
        .expect("dpkg-buildpackage");
    assert!(out.status.success(), "{out:?}");
    let file = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();

    let run = Dep8Run::with(&[], &file("dep8-built_1.0.dsc"), &unshare(&tarball));
    run.assert_exit(0);
    let said = printed(&run);
    assert!(
        said.starts_with("dep8-built 1.0\n") && !said.contains("dep8-host-build"),
        "built in the testbed, not taken from the host: {said}"
    );
    assert!(run.read("log").contains("build needed for binaries"));

    let changes = file("dep8-built_1.0_amd64.changes");
    let run = Dep8Run::with(&[], &changes, &unshare(&tarball));
    run.assert_exit(0);
    assert!(
        printed(&run).contains("dep8-host-build"),
        "{}",
        printed(&run)
    );
    assert!(!run.read("log").contains("build needed"));
}

/// A build that fails blames the package: the same exit status (12) and
/// the same summary, blame line included, as autopkgtest 5.49 on the same
/// tree and testbed.
#[test]
fn a_build_failure_blames_the_package_as_autopkgtest_does() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = dir.path().join("dep8-build-fails");
    write(
        &tree.join("debian/control"),
        "Source: dep8-build-fails\nMaintainer: dep8 <dep8@example.org>\n\n\
         Package: dep8-build-fails\nArchitecture: all\nDescription: dep8 fixture\n fixture\n",
    );
    write(
        &tree.join("debian/changelog"),
        "dep8-build-fails (1.0) unstable; urgency=medium\n\n  * Fixture.\n\n \
         -- dep8 <dep8@example.org>  Fri, 04 Dec 2026 12:00:00 +0000\n",
    );
    write(&tree.join("debian/source/format"), "3.0 (native)\n");
    write(&tree.join("debian/tests/control"), "Test-Command: true\n");
    write(
        &tree.join("debian/rules"),
        "#!/usr/bin/make -f\nclean:\n\t@:\nbuild build-arch build-indep binary binary-arch binary-indep:\n\
         \techo 'dep8 fixture: this build fails' >&2; exit 3\n",
    );
    check("chmod", &["+x", "debian/rules"], &tree);
    let tree = tree.to_str().expect("utf-8");
    // autopkgtest needs the archive's package lists, which the rootfs does
    // not have (dep8 gets them itself): both get the same setup command.
    let options = ["--setup-commands=apt-get update"];
    let ours = || Dep8Run::with(&options, tree, &unshare(&tarball));
    let Some(autopkgtest) = autopkgtest_as_root() else {
        ours().assert_exit(12);
        return;
    };
    let their_out = dir.path().join("autopkgtest");
    let their_args = [
        &options[..],
        &["-o", their_out.to_str().expect("utf-8"), tree, "--"],
        &unshare(&tarball),
    ]
    .concat();
    let (run, (_, their_code)) = std::thread::scope(|s| {
        let theirs = s.spawn(|| summary_of(&autopkgtest, &their_args, &their_out));
        (ours(), theirs.join().expect("autopkgtest thread"))
    });
    let their_summary = std::fs::read_to_string(their_out.join("summary")).unwrap_or_default();
    run.assert_exit(12);
    assert_eq!(their_code, Some(12), "autopkgtest: {their_summary}");
    assert_eq!(run.read("summary"), their_summary);
    assert!(
        their_summary.contains(&format!(
            "blame: {tree}\nbadpkg: rules build failed with exit code"
        )),
        "{their_summary}"
    );
    assert!(run.read("log").contains("dep8 fixture: this build fails"));
}

/// A package with its own tests and `Testsuite: autopkgtest-pkg-python`
/// gets autodep8's import test after its own, built and run as with
/// autopkgtest; `--no-auto-control` leaves autodep8's test out.
#[test]
fn autodep8_adds_its_tests_as_with_autopkgtest() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    if required_program("autodep8", "autodep8").is_none() {
        return;
    }
    let src = "tests/fixtures/autodep8-python";
    let options = ["--setup-commands=apt-get update"];
    let ours = || Dep8Run::with(&options, src, &unshare(&tarball));
    let run = match autopkgtest_as_root() {
        Some(autopkgtest) => {
            let dir = tempfile::tempdir().expect("temp dir");
            let their_out = dir.path().join("autopkgtest");
            let their_args = [
                &options[..],
                &["-o", their_out.to_str().expect("utf-8"), src, "--"],
                &unshare(&tarball),
            ]
            .concat();
            let (run, (theirs, their_code)) = std::thread::scope(|s| {
                let theirs = s.spawn(|| summary_of(&autopkgtest, &their_args, &their_out));
                (ours(), theirs.join().expect("autopkgtest thread"))
            });
            assert_eq!(result_words(&run.read("summary")), theirs);
            assert_eq!(run.status, their_code, "{}", run.read("summary"));
            run
        }
        None => ours(),
    };
    run.assert_exit(0);
    assert_eq!(
        result_words(&run.read("summary")),
        BTreeMap::from([
            ("own-test".to_string(), "PASS".to_string()),
            ("autodep8-python3".to_string(), "PASS".to_string()),
        ])
    );
    assert!(run.read("autodep8-python3-stdout").contains(
        "<module 'dep8_autodep8' from '/usr/lib/python3/dist-packages/dep8_autodep8.py'>"
    ));

    let run = Dep8Run::with(&["-B", "--no-auto-control"], src, &unshare(&tarball));
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "own-test             PASS\n");
}

/// A git URL with a branch is cloned in the testbed (git installed there
/// first) and that branch's tests run: here a repository copied in with
/// `--copy` and cloned over `file://`, with `-B` (tests, not a build).
#[test]
fn a_git_source_is_cloned_at_its_branch() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    if required_program("git", "git").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let repo_dir = source_tree(
        dir.path(),
        "dep8-git",
        "Test-Command: test \"$(git branch --show-current)\" = testbranch && cat on-the-branch\n\
         Depends: git\n",
    );
    let git = |args: &[&str]| {
        let base = ["-c", "user.name=dep8", "-c", "user.email=dep8@example.org"];
        check("git", &[&base[..], args].concat(), &repo_dir)
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "main"]);
    git(&["checkout", "-q", "-b", "tested"]);
    write(&repo_dir.join("on-the-branch"), "from the tested branch\n");
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "tested"]);
    git(&["checkout", "-q", "main"]);
    let repo_path = repo_dir.to_str().expect("utf-8");
    let copy = format!("--copy={repo_path}:{repo_path}");
    let url = format!("file://{repo_path}#tested");
    let run = Dep8Run::with(&["-B", &copy], &url, &unshare(&tarball));
    run.assert_exit(0);
    assert_eq!(run.read("summary"), "command1             PASS\n");
    assert_eq!(run.read("command1-stdout"), "from the tested branch\n");
}

/// An unbuilt `3.0 (quilt)` tree whose patches are not applied is tested
/// patched, also with `-B`, as autopkgtest prepares unbuilt trees
/// (`dpkg-source --before-build`); the tree given is left as it was.
#[test]
fn an_unbuilt_tree_is_tested_with_its_patches_applied() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(
        dir.path(),
        "dep8-quilt",
        "Test-Command: cat file\nDepends:\n",
    );
    write(&tree.join("debian/source/format"), "3.0 (quilt)\n");
    write(
        &tree.join("debian/changelog"),
        "dep8-quilt (1.0-1) unstable; urgency=medium\n\n  * Fixture.\n\n \
         -- dep8 <dep8@example.org>  Fri, 04 Dec 2026 12:00:00 +0000\n",
    );
    write(&tree.join("file"), "original\n");
    write(
        &tree.join("debian/patches/fix"),
        "--- a/file\n+++ b/file\n@@ -1 +1 @@\n-original\n+patched\n",
    );
    write(&tree.join("debian/patches/series"), "fix\n");
    let run = Dep8Run::with(&["-B"], tree.to_str().expect("utf-8"), &unshare(&tarball));
    run.assert_exit(0);
    assert_eq!(run.read("command1-stdout"), "patched\n");
    let given = std::fs::read_to_string(tree.join("file")).expect("read");
    assert_eq!(given, "original\n");
}
