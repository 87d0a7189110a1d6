//! dep8's package cache and the setup kept as the revert base, end to end
//! on the unshare backend (as root), each run with its own cache dir
//! (`DEP8_CACHE_DIR`):
//!
//! - a cached run installs the same package versions as an uncached one,
//!   and a second run takes every package and the apt lists from the cache;
//! - `--no-cache` leaves no cache dir and says nothing of a cache;
//! - two concurrent runs share one cache without corrupting it;
//! - a run waiting for the lists lock ends at once on SIGINT;
//! - a package in the cache never replaces what the archive now has: not
//!   an older version, not a rebuild of the same version (a local HTTP
//!   archive changes between runs);
//! - the setup runs once: reverts return to it, `--setup-commands-boot`
//!   still runs after each;
//! - `-U` from a state it already left unchanged is skipped;
//! - a rootfs tarball is unpacked once and kept for later runs;
//! - installed test dependencies are kept as a layer over it, which later
//!   runs in the same state stack instead of running apt: the same files
//!   and versions, and never a layer from another state.
//!
//! The first two need the network to deb.debian.org (as CI has).

use dep8_tests::e2e::{
    check, dep8_bin, required_program, source_tree, unshare_rootfs_as_root, write,
};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Small bookworm packages no rootfs has: what the tests install.
const PACKAGES: &str = "hello, tree, bc";

/// What a dep8 run left.
struct Run {
    code: Option<i32>,
    stderr: String,
    summary: String,
    log: String,
    out: PathBuf,
}

impl Run {
    fn said(&self) -> String {
        format!(
            "\n--- summary:\n{}--- stderr:\n{}--- log:\n{}",
            self.summary, self.stderr, self.log
        )
    }

    fn assert_passed(&self) {
        assert!(!self.stderr.contains("panicked"), "{}", self.said());
        assert_eq!(self.code, Some(0), "{}", self.said());
    }

    fn assert_log(&self, text: &str) {
        assert!(
            self.log.contains(text),
            "the log should say {text:?}{}",
            self.said()
        );
    }

    /// The versions dep8 recorded for the test's dependencies.
    fn packages(&self, test: &str) -> String {
        std::fs::read_to_string(self.out.join(format!("{test}-packages")))
            .unwrap_or_else(|e| panic!("{test}-packages: {e}{}", self.said()))
    }
}

/// A new dir `name` in `dir`.
fn subdir(dir: &Path, name: &str) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).expect("mkdir");
    sub
}

/// `dep8 run -B -o DIR/OUT ARGS` with the cache in `cache`.
fn dep8(dir: &Path, out: &str, cache: &Path, args: &[&str]) -> Run {
    let out = dir.join(out);
    let output = Command::new(dep8_bin())
        .current_dir(dir)
        .env("DEP8_CACHE_DIR", cache)
        .args(["run", "-B", "-o", out.to_str().expect("utf-8")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dep8");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    Run {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        summary: read("summary"),
        log: read("log"),
        out,
    }
}

/// `SRC -- unshare --tarball TARBALL EXTRA...`
fn on_unshare<'a>(src: &'a Path, tarball: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        src.to_str().expect("utf-8"),
        "--",
        "unshare",
        "--tarball",
        tarball,
    ];
    args.extend(extra);
    args
}

/// Asserts that every cached package's content has the SHA256 its name
/// says, that no staging file is left, and returns how many there are.
fn assert_cache_sound(cache: &Path) -> usize {
    let debs = cache.join("debs");
    let names: Vec<String> = std::fs::read_dir(&debs)
        .expect("cache debs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    if !names.is_empty() {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let sums = check("sha256sum", &names, &debs);
        for line in sums.lines() {
            let (hash, name) = line.split_once("  ").expect("sha256sum line");
            assert_eq!(format!("{hash}.deb"), name, "corrupt cache entry");
        }
    }
    let staged = std::fs::read_dir(cache.join("tmp")).map_or(0, |d| d.count());
    assert_eq!(staged, 0, "staging files left in {}", cache.display());
    names.len()
}

/// A suite whose one test needs [`PACKAGES`] and checks that dep8's
/// gathering dir is gone from the testbed.
fn archive_suite(dir: &Path) -> PathBuf {
    let control = format!(
        "Depends: {PACKAGES}\n\
         Test-Command: hello && test ! -e /var/cache/apt/dep8-gathered\n"
    );
    source_tree(dir, "cached", &control)
}

/// The same versions with and without the cache; the second cached run
/// takes every package and the lists from the cache; `--no-cache` leaves
/// no trace.
#[test]
fn cached_runs_install_what_uncached_ones_do() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = archive_suite(dir.path());
    let args = on_unshare(&tree, &tarball, &[]);
    let no_cache_dir = dir.path().join("unused-cache");
    let uncached = dep8(
        dir.path(),
        "uncached",
        &no_cache_dir,
        &[&["--no-cache"], &args[..]].concat(),
    );
    uncached.assert_passed();
    assert!(
        !no_cache_dir.exists(),
        "--no-cache made {}",
        no_cache_dir.display()
    );
    for word in ["package cache:", "apt lists:", "dep8's cache"] {
        assert!(!uncached.log.contains(word), "{word}{}", uncached.said());
    }

    let cache = dir.path().join("cache");
    let cold = dep8(dir.path(), "cold", &cache, &args);
    cold.assert_passed();
    cold.assert_log("apt lists: refreshed (none cached for these sources)");
    cold.assert_log("packages from dep8's cache");
    let stored = assert_cache_sound(&cache);
    assert!(stored >= 3, "{stored} packages cached{}", cold.said());

    cold.assert_log("kept what apt installed as the layer");
    let warm = dep8(dir.path(), "warm", &cache, &args);
    warm.assert_passed();
    warm.assert_log("apt lists: reused from dep8's cache");
    warm.assert_log("installed: the layer");
    // Without the layer, apt installs again, every package from the cache.
    remove_layers(&cache);
    let again = dep8(dir.path(), "again", &cache, &args);
    again.assert_passed();
    again.assert_log(&format!(
        "package cache: {stored} of {stored} packages from dep8's cache, 0 to download"
    ));
    assert_eq!(assert_cache_sound(&cache), stored);
    for run in [&cold, &warm, &again] {
        assert_eq!(
            run.packages("command1"),
            uncached.packages("command1"),
            "{}",
            run.said()
        );
    }
}

/// Two runs at once on one empty cache: both pass, the cache holds only
/// sound packages, and a third run finds all it needs there.
#[test]
fn concurrent_runs_share_the_cache() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = archive_suite(dir.path());
    let args = on_unshare(&tree, &tarball, &[]);
    let cache = dir.path().join("cache");
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| dep8(dir.path(), "first", &cache, &args));
        let second = dep8(dir.path(), "second", &cache, &args);
        (first.join().expect("first run"), second)
    });
    first.assert_passed();
    second.assert_passed();
    assert_eq!(first.packages("command1"), second.packages("command1"));
    assert_cache_sound(&cache);
    assert_eq!(layers(&cache).len(), 1, "both kept the same layer");
    let third = dep8(dir.path(), "third", &cache, &args);
    third.assert_passed();
    third.assert_log("installed: the layer");
    assert_eq!(first.packages("command1"), third.packages("command1"));
}

/// A run waiting for the apt lists lock, which another run holds while it
/// replaces the lists, still ends at once on SIGINT, by the signal: the
/// wait does not hold dep8 up.
#[test]
fn an_interrupt_ends_a_wait_for_the_lists_lock() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = archive_suite(dir.path());
    let args = on_unshare(&tree, &tarball, &[]);
    let cache = dir.path().join("cache");
    dep8(dir.path(), "first", &cache, &args).assert_passed();
    let held: Vec<Flock<std::fs::File>> = std::fs::read_dir(cache.join("lists"))
        .expect("cached lists")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|x| x == "lock"))
        .map(|path| {
            let file = std::fs::File::open(&path).expect("lists lock");
            Flock::lock(file, FlockArg::LockExclusive).expect("flock")
        })
        .collect();
    assert!(!held.is_empty(), "no lists lock in {}", cache.display());
    let out = dir.path().join("waiting");
    let mut waiting = Command::new(dep8_bin())
        .current_dir(dir.path())
        .env("DEP8_CACHE_DIR", &cache)
        .args(["run", "-B", "-o", out.to_str().expect("utf-8")])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run dep8");
    let log = || std::fs::read_to_string(out.join("log")).unwrap_or_default();
    let started = Instant::now();
    while !log().contains("opening testbed") && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Time to open the testbed and reach the lists, where it stays.
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        waiting.try_wait().expect("wait").is_none() && !log().contains("apt lists:"),
        "the run did not wait for the lists lock; log:\n{}",
        log()
    );
    kill(Pid::from_raw(waiting.id() as i32), Signal::SIGINT).expect("SIGINT");
    let interrupted = Instant::now();
    let status = loop {
        if let Some(status) = waiting.try_wait().expect("wait") {
            break status;
        }
        if interrupted.elapsed() > Duration::from_secs(30) {
            let _ = waiting.kill();
            panic!("still running 30s after SIGINT; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.signal(),
        Some(Signal::SIGINT as i32),
        "{status}; log:\n{}",
        log()
    );
    assert!(
        interrupted.elapsed() < Duration::from_secs(15),
        "ended {:?} after SIGINT",
        interrupted.elapsed()
    );
}

/// Serves the files of `root` over HTTP/1.0 on 127.0.0.1 (a thread per
/// connection, for as long as the test runs); returns the port. apt needs
/// no more of an archive than GET with Content-Length, and 404.
fn serve(root: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                // The headers, up to the blank line.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let file = root.join(path.trim_start_matches('/'));
                let mut stream = &stream;
                let _ = match std::fs::read(&file).ok().filter(|_| !path.contains("..")) {
                    Some(body) => write!(
                        stream,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .and_then(|()| stream.write_all(&body)),
                    None => write!(
                        stream,
                        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                };
            });
        }
    });
    port
}

/// Makes `repo` a flat archive holding only `PACKAGE_VERSION_all.deb`,
/// whose file says `content`.
fn publish(repo: &Path, package: &str, version: &str, content: &str) {
    publish_with(repo, package, version, content, None);
}

/// [`publish`], the package with the maintainer script `postinst`.
fn publish_with(repo: &Path, package: &str, version: &str, content: &str, postinst: Option<&str>) {
    for entry in std::fs::read_dir(repo).expect("repo dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    let root = tempfile::tempdir().expect("temp dir");
    write(
        &root.path().join("DEBIAN/control"),
        &format!(
            "Package: {package}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: dep8 <dep8@example.org>\nDescription: dep8 cache fixture\n"
        ),
    );
    write(
        &root.path().join("usr/share/dep8-cache/content"),
        &format!("{content}\n"),
    );
    if let Some(script) = postinst {
        let path = root.path().join("DEBIAN/postinst");
        write(&path, script);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod postinst");
    }
    let deb = repo.join(format!("{package}_{version}_all.deb"));
    let root = root.path().to_str().expect("utf-8");
    check(
        "dpkg-deb",
        &[
            "--build",
            "--root-owner-group",
            root,
            deb.to_str().expect("utf-8"),
        ],
        repo,
    );
    let packages = check("dpkg-scanpackages", &["."], repo);
    write(&repo.join("Packages"), &packages);
    let sum = check("sha256sum", &["Packages"], repo);
    let hash = sum.split_whitespace().next().expect("hash");
    let date = check("date", &["-uR"], repo);
    write(
        &repo.join("Release"),
        &format!(
            "Origin: dep8\nLabel: dep8\nDate: {}\nSHA256:\n {hash} {} Packages\n",
            date.trim(),
            packages.len()
        ),
    );
}

/// What a test with an archive of its own needs: the unshare rootfs, a
/// temp dir, a flat archive dir in it served on loopback, the
/// `--add-apt-source` option for it, and a cache dir (not made); `None`
/// (with the reason printed) where the test cannot run here.
fn local_archive() -> Option<(String, tempfile::TempDir, PathBuf, String, PathBuf)> {
    let tarball = unshare_rootfs_as_root()?;
    required_program("dpkg-scanpackages", "dpkg-dev")?;
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = subdir(dir.path(), "repo");
    let port = serve(repo.clone());
    let source = format!("--add-apt-source=deb [trusted=yes] http://127.0.0.1:{port} ./");
    let cache = dir.path().join("cache");
    Some((tarball, dir, repo, source, cache))
}

/// The archive changes between runs: a newer version, then a rebuild of
/// that version with other content. Each run installs what the archive
/// has now, never the cached package.
#[test]
fn a_cached_package_never_replaces_the_archives() {
    let Some((tarball, dir, repo, source, cache)) = local_archive() else {
        return;
    };
    let package = "dep8-cache-fixture";
    let run = |version: &str, content: &str, out: &str| {
        let control = format!(
            "Depends: {package}\n\
             Test-Command: test \"$(dpkg-query -W -f '${{Version}}' {package})\" = {version} \
             && grep -x {content} /usr/share/dep8-cache/content\n"
        );
        let tree = source_tree(&dir.path().join(format!("src-{out}")), "stale", &control);
        let args = on_unshare(&tree, &tarball, &[]);
        // Lists always refreshed: the archive changed within the age at
        // which they would be reused.
        let options = [source.as_str(), "--apt-lists-max-age=0"];
        let run = dep8(dir.path(), out, &cache, &[&options[..], &args[..]].concat());
        run.assert_passed();
        run
    };
    // apt's download plans noted so far: each change of the archive makes
    // another, and an unchanged one reuses its own.
    let plans = || std::fs::read_dir(cache.join("plans")).map_or(0, |d| d.count());
    publish(&repo, package, "1.0", "one");
    let first = run("1.0", "one", "first");
    first.assert_log("package cache: 0 of 1 packages from dep8's cache, 1 to download");
    assert_eq!(plans(), 1);
    publish(&repo, package, "2.0", "two");
    let newer = run("2.0", "two", "newer");
    newer.assert_log("package cache: 0 of 1 packages from dep8's cache, 1 to download");
    newer.assert_log("apt lists: refreshing the cached ones");
    assert_eq!(plans(), 2);
    publish(&repo, package, "2.0", "rebuilt");
    let rebuilt = run("2.0", "rebuilt", "rebuilt");
    rebuilt.assert_log("package cache: 0 of 1 packages from dep8's cache, 1 to download");
    assert_eq!(plans(), 3);
    // The archive unchanged: the layer the last run kept serves, and
    // without it the cached plan and package.
    let again = run("2.0", "rebuilt", "again");
    again.assert_log("installed: the layer");
    remove_layers(&cache);
    let without_layer = run("2.0", "rebuilt", "without-layer");
    without_layer.assert_log("package cache: 1 of 1 packages from dep8's cache, 0 to download");
    assert_eq!(plans(), 3);
    assert_eq!(assert_cache_sound(&cache), 3);
}

/// The layers of installed packages kept in `cache` (see
/// [`kept_entries`]).
fn layers(cache: &Path) -> Vec<String> {
    kept_entries(cache)
        .into_iter()
        .filter(|name| name.starts_with("layer-") && !name.contains('.'))
        .collect()
}

/// Removes the kept layers from `cache`: the next run's apt runs.
fn remove_layers(cache: &Path) {
    for name in kept_entries(cache) {
        if name.starts_with("layer-") {
            let path = cache.join("rootfs").join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// What apt installs on an untouched testbed is kept as a layer over the
/// kept tree, and a later run in the same state stacks it instead of
/// running apt: the test sees the same files (a deleted one stays deleted,
/// a dir made anew hides the old content) and the same versions. An
/// install after a test ran is not kept; setup commands turn layers off;
/// a rebuilt package in the archive is installed, not the old layer, and
/// its layer replaces the old one; an install that leaves a daemon
/// running is not kept.
#[test]
fn installed_dependencies_are_kept_as_a_layer() {
    let Some((tarball, dir, repo, source, cache)) = local_archive() else {
        return;
    };
    let package = "dep8-layer-fixture";
    // Deletes a file and remakes a dir of the rootfs: whiteouts and an
    // opaque dir in the layer.
    let postinst = "#!/bin/sh\nrm /etc/issue.net\n\
                    rm -r /usr/share/doc/bash && mkdir /usr/share/doc/bash \
                    && touch /usr/share/doc/bash/dep8\n";
    let run = |content: &str, out: &str, extra: &[&str]| {
        // The second test needs more than the first: no revert between,
        // so its install comes after a test ran.
        let checks = format!(
            "grep -x {content} /usr/share/dep8-cache/content && test ! -e /etc/issue.net \
             && test \"$(ls /usr/share/doc/bash)\" = dep8"
        );
        let control = format!(
            "Depends: {package}\nTest-Command: {checks}\n\n\
             Depends: {package}, hello\nTest-Command: {checks} && hello\n"
        );
        let tree = source_tree(&dir.path().join(format!("src-{out}")), "layered", &control);
        let args = on_unshare(&tree, &tarball, &[]);
        let options = [&[source.as_str()], extra].concat();
        let run = dep8(dir.path(), out, &cache, &[&options[..], &args[..]].concat());
        run.assert_passed();
        run
    };
    publish_with(&repo, package, "1.0", "one", Some(postinst));
    let first = run("one", "first", &[]);
    let kept = first
        .log
        .matches("kept what apt installed as the layer")
        .count();
    assert_eq!(
        kept,
        1,
        "only the untouched testbed's install{}",
        first.said()
    );
    let kept_layer = layers(&cache);
    assert_eq!(kept_layer.len(), 1);

    let second = run("one", "second", &[]);
    assert_eq!(
        second.log.matches("installed: the layer").count(),
        1,
        "{}",
        second.said()
    );
    assert!(!second.log.contains("kept what apt"), "{}", second.said());
    // apt's output when the layer was kept, given again.
    second.assert_log("Its output then:");
    second.assert_log("Setting up dep8-layer-fixture (1.0)");
    assert_eq!(second.packages("command1"), first.packages("command1"));
    assert_eq!(second.packages("command2"), first.packages("command2"));

    let with_commands = run("one", "with-commands", &["--setup-commands", "true"]);
    for word in ["installed: the layer", "kept what apt"] {
        assert!(
            !with_commands.log.contains(word),
            "{}",
            with_commands.said()
        );
    }

    publish_with(&repo, package, "1.0", "rebuilt", Some(postinst));
    let rebuilt = run("rebuilt", "rebuilt", &["--apt-lists-max-age=0"]);
    assert!(
        !rebuilt.log.contains("installed: the layer"),
        "{}",
        rebuilt.said()
    );
    let replaced = layers(&cache);
    assert_eq!(replaced.len(), 1, "the earlier state's layer replaced");
    assert_ne!(replaced, kept_layer);

    // A daemon the install started is not in a layer: none is kept.
    let daemon = format!("{postinst}setsid sleep 600 </dev/null >/dev/null 2>&1 &\n");
    publish_with(&repo, package, "1.0", "daemon", Some(&daemon));
    let started = run("daemon", "daemon", &["--apt-lists-max-age=0"]);
    started.assert_log("layer not kept");
    started.assert_log("processes run in the testbed");
    assert_eq!(layers(&cache), replaced);
}

/// The trees under the cache's `rootfs/` (kept unpacked tarballs and their
/// lock files).
fn kept_entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("rootfs"))
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `dep8 cache clean` with the cache in `cache`; its stdout.
fn cache_clean(cache: &Path) -> String {
    let out = Command::new(dep8_bin())
        .env("DEP8_CACHE_DIR", cache)
        .args(["cache", "clean"])
        .output()
        .expect("run dep8 cache clean");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// As root, a tarball is unpacked once into the cache and later runs open
/// their overlays on that tree: what a test writes never reaches it, the
/// base image is it (read-only), `dep8 cache clean` spares it while a run
/// uses it and removes it after; `--no-cache` unpacks into RAM as before.
#[test]
fn a_tarball_is_unpacked_once_per_machine() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let started = subdir(dir.path(), "started");
    let control = "Depends:\n\
         Restrictions: needs-root\n\
         Test-Command: echo probe > /etc/dep8-kept-probe && rm /etc/debian_version \
         && test -e /run/dep8/baseimage/etc/debian_version \
         && ! touch /run/dep8/baseimage/probe 2>/dev/null \
         && touch /srv/started/now && sleep \"${DEP8_TEST_SLEEP:-0}\"\n";
    let tree = source_tree(dir.path(), "kept", control);
    let bind = started.to_str().expect("utf-8");
    let args = on_unshare(
        &tree,
        &tarball,
        &["--baseimage", "--bind", bind, "/srv/started"],
    );
    let cache = dir.path().join("cache");

    let first = dep8(dir.path(), "first", &cache, &args);
    first.assert_passed();
    let kept = kept_entries(&cache);
    assert_eq!(kept.len(), 3, "a tree, its lock and its size: {kept:?}");
    let tree_dir = cache.join("rootfs").join(&kept[0]);
    assert!(tree_dir.join("etc/debian_version").is_file());
    assert!(!tree_dir.join("etc/dep8-kept-probe").exists());
    let mode = std::fs::metadata(cache.join("rootfs"))
        .expect("rootfs/")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

    // A second run uses the same tree; a clean meanwhile spares it.
    std::fs::remove_file(started.join("now")).expect("rm");
    let mut second = Command::new(dep8_bin())
        .current_dir(dir.path())
        .env("DEP8_CACHE_DIR", &cache)
        .args(["run", "-B", "-o"])
        .arg(dir.path().join("second"))
        .args(["--env", "DEP8_TEST_SLEEP=5"])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run dep8");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !started.join("now").exists() {
        assert!(
            Instant::now() < deadline,
            "the second run's test never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = cache_clean(&cache);
    assert!(said.contains("kept, a testbed uses it"), "{said}");
    assert_eq!(kept_entries(&cache), kept);
    assert!(
        second.wait().expect("wait").success(),
        "the second run failed"
    );
    let left: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["rootfs"], "clean left more than the tree in use");

    // Unused now: the next clean removes it.
    let said = cache_clean(&cache);
    assert!(!said.contains("kept"), "{said}");
    assert_eq!(kept_entries(&cache), Vec::<String>::new());

    let uncached = dep8(
        dir.path(),
        "uncached",
        &cache,
        &[&["--no-cache"], &args[..]].concat(),
    );
    uncached.assert_passed();
    assert_eq!(kept_entries(&cache), Vec::<String>::new());
}

/// The setup runs once and reverts return to it, deletions included;
/// `--setup-commands-boot` runs after every revert. A host dir bound into the testbed counts the
/// runs of each. As root, and in a user namespace.
#[test]
fn reverts_return_to_the_setup() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    for userns in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let count = subdir(dir.path(), "count");
        // A deleted file, and as root a replaced dir, stay so in the kept
        // layer. (In a user namespace the overlay cannot remove a dir of
        // the rootfs on this kernel, with or without a kept setup.)
        let (replace_dir, replaced_dir) = if userns {
            ("true", "true")
        } else {
            (
                "rm -r /usr/share/doc/apt; mkdir /usr/share/doc/apt; touch /usr/share/doc/apt/only",
                "test \"$(ls /usr/share/doc/apt)\" = only",
            )
        };
        let control = format!(
            "Depends:\n\
             Restrictions: breaks-testbed, needs-root\n\
             Test-Command: test -e /root/set-up && touch /root/dirt\n\n\
             Depends:\n\
             Restrictions: needs-root\n\
             Test-Command: test -e /root/set-up && test ! -e /root/dirt \
             && test ! -e /etc/debian_version && {replaced_dir}\n"
        );
        let tree = source_tree(dir.path(), "kept", &control);
        let bind = count.to_str().expect("utf-8");
        let mut extra = vec!["--bind", bind, "/srv/count"];
        if userns {
            extra.push("--userns");
        }
        let args = on_unshare(&tree, &tarball, &extra);
        let changes = format!("--setup-commands=rm /etc/debian_version; {replace_dir}");
        let options = [
            "--setup-commands=touch /root/set-up; echo setup >> /srv/count/runs",
            &changes,
            "--setup-commands-boot=echo boot >> /srv/count/runs",
        ];
        let cache = dir.path().join("cache");
        let run = dep8(
            dir.path(),
            "out",
            &cache,
            &[&options[..], &args[..]].concat(),
        );
        run.assert_passed();
        run.assert_log("the testbed keeps this setup: reverts return to it");
        let runs = std::fs::read_to_string(count.join("runs")).expect("runs");
        assert_eq!(runs, "setup\nboot\nboot\n", "userns {userns}{}", run.said());
    }
}

/// `-U` again from the same state skips the dist-upgrade and autoremove
/// that changed nothing the first time, and ends with the same packages; a
/// setup that changes the installed packages' state (a package marked as
/// installed automatically) upgrades again.
#[test]
fn an_upgrade_that_changed_nothing_is_skipped_from_the_same_state() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tree = source_tree(dir.path(), "upgraded", "Depends:\nTest-Command: true\n");
    let args = on_unshare(&tree, &tarball, &[]);
    let cache = dir.path().join("cache");
    let upgrade = |out: &str, setup: &[&str]| {
        let run = dep8(
            dir.path(),
            out,
            &cache,
            &[&["-U"], setup, &args[..]].concat(),
        );
        run.assert_passed();
        run
    };
    let skipped = "apt-get dist-upgrade and autoremove skipped";
    // What apt-get dist-upgrade prints as it starts.
    let upgraded = "Calculating upgrade...";
    let first = upgrade("first", &[]);
    first.assert_log(upgraded);
    assert!(!first.log.contains(skipped), "{}", first.said());
    let again = upgrade("again", &[]);
    again.assert_log(skipped);
    assert!(!again.log.contains(upgraded), "{}", again.said());
    assert_eq!(again.packages("testbed"), first.packages("testbed"));
    let changed = upgrade("changed", &["--setup-commands=apt-mark auto gzip"]);
    changed.assert_log(upgraded);
    assert!(!changed.log.contains(skipped), "{}", changed.said());
}

/// `dep8 image update` upgrades a rootfs tarball in place: it gains the
/// package lists, keeps its files' owners and modes, and its own
/// resolv.conf (the host's serves only while apt runs).
#[test]
fn image_update_keeps_the_lists() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("rootfs.tar");
    std::fs::copy(&tarball, &image).expect("copy the tarball");
    let listing = |path: &Path| check("tar", &["-tvf", path.to_str().expect("utf-8")], dir.path());
    let entry = |listing: &str, name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{name}")))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    };
    let before = listing(&image);
    let output = Command::new(dep8_bin())
        .args(["image", "update", image.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .output()
        .expect("run dep8");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    let after = listing(&image);
    assert!(
        after
            .lines()
            .any(|l| l.contains("var/lib/apt/lists/") && l.ends_with("_Packages")),
        "no package lists in the updated image\n{said}"
    );
    for name in ["etc/shadow", "home/dep8/", "tmp/", "etc/resolv.conf"] {
        assert!(entry(&before, name).is_some(), "{name} is not in {tarball}");
        assert_eq!(entry(&after, name), entry(&before, name), "{name}");
    }
    // Only what `dep8 image update` left next to the image: nothing.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(left.len(), 1, "{left:?}");
    for (image, why) in [
        ("/nonexistent.qcow2", "no such image"),
        ("/etc/hostname", "not an image dep8 updates"),
    ] {
        let refused = Command::new(dep8_bin())
            .args(["image", "update", image])
            .output()
            .expect("run dep8");
        assert_eq!(refused.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&refused.stderr).contains(why));
    }
}

/// `dep8 image update DIR` upgrades a rootfs dir (an lxc template's) in
/// place: it gains the package lists and keeps its own resolv.conf.
#[test]
fn image_update_of_a_rootfs_dir() {
    let Some(tarball) = unshare_rootfs_as_root() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let root = subdir(dir.path(), "rootfs");
    check(
        "tar",
        &[
            "--numeric-owner",
            "-xf",
            &tarball,
            "-C",
            root.to_str().expect("utf-8"),
        ],
        dir.path(),
    );
    let resolv = |root: &Path| {
        std::fs::symlink_metadata(root.join("etc/resolv.conf"))
            .ok()
            .map(|m| (m.len(), m.file_type().is_symlink()))
    };
    let before = resolv(&root);
    let output = Command::new(dep8_bin())
        .args(["image", "update", root.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .output()
        .expect("run dep8");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    let lists = std::fs::read_dir(root.join("var/lib/apt/lists"))
        .expect("lists dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
    assert!(lists, "no package lists in the updated dir\n{said}");
    assert_eq!(resolv(&root), before, "resolv.conf changed");
}
