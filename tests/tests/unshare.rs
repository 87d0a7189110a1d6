//! The unshare backend leaves the host as it found it: no mount, no file in
//! the temp dir, no process, after a normal close, after a timed-out
//! command, and after a testbed dropped without close.

use dep8_backend_unshare::{Options, Rootfs, UnshareTestbed};
use dep8_core::testbed::{ExecRequest, Testbed};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A process the test leaves behind, found on the host by this argv[0].
const MARKER: &str = "dep8-leftover-marker";

/// The source names of the backend's mounts (holder.sh).
const SOURCES: [&str; 5] = ["dep8-root", "dep8-rw", "dep8-lower", "dep8-dev", "dep8-shm"];

/// Host mounts that belong to unshare testbeds under `tmp`. Other programs
/// may mount and unmount concurrently, so only ours are compared.
fn our_mounts(tmp: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains(&*tmp.to_string_lossy())
                || SOURCES.iter().any(|s| l.contains(&format!(" {s} ")))
        })
        .map(String::from)
        .collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Host pids whose argv[0] is [`MARKER`].
fn leftovers() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .starts_with(MARKER.as_bytes())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Waits a little for leftovers to disappear (a dropped testbed's
/// namespace dies asynchronously).
async fn no_leftovers_within(limit: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = leftovers();
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leave_a_process_behind(tb: &dyn Testbed) {
    // In its own session, out of reach of the command's process group; the
    // command returns once the process runs.
    let script = format!(
        "setsid -f bash -c 'exec -a {MARKER} sleep 1000' </dev/null >/dev/null 2>&1; \
         until grep -qs '^[{first}]{rest}' /proc/[0-9]*/cmdline; do sleep 0.05; done",
        first = &MARKER[..1],
        rest = &MARKER[1..]
    );
    let out = tb
        .exec(ExecRequest::shell(&script).capture())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(!leftovers().is_empty(), "the marker process did not start");
}

async fn open(tarball: &str) -> UnshareTestbed {
    UnshareTestbed::open(Options {
        baseimage: true,
        ..Options::new(Rootfs::Tarball(tarball.into()))
    })
    .await
    .expect("open unshare")
}

#[tokio::test(flavor = "multi_thread")]
async fn host_is_left_as_found() {
    let Some(tarball) = dep8_tests::e2e::unshare_rootfs_as_root() else {
        return;
    };
    // An unpacked rootfs for `--rootfs DIR`, outside the watched temp dir.
    let unpacked = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .args(["--numeric-owner", "--exclude=./dev/*", "-C"])
        .arg(unpacked.path())
        .args(["-xf", &tarball])
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {tarball}");

    // Every temp dir the backend makes goes here (one test in this binary,
    // so nothing else reads TMPDIR concurrently).
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("TMPDIR", tmp.path());
    assert_eq!(our_mounts(tmp.path()), Vec::<String>::new());

    // open, exec, revert, close
    let mut tb = open(&tarball).await;
    assert_eq!(entries(tmp.path()).len(), 1, "one temp dir while open");
    assert_eq!(tb.capabilities().suggested_normal_users, ["dep8"]);
    let inside = tb
        .exec(ExecRequest::new(["cat", "/proc/self/mountinfo"]).capture())
        .await
        .unwrap();
    assert!(
        inside.stdout_text().contains("overlay"),
        "no overlay inside"
    );
    leave_a_process_behind(&tb).await;
    let started = Instant::now();
    tb.revert().await.unwrap();
    eprintln!("revert took {:?}", started.elapsed());
    assert_eq!(leftovers(), Vec::<String>::new(), "revert left a process");
    leave_a_process_behind(&tb).await;
    tb.close().await.unwrap();
    assert_eq!(leftovers(), Vec::<String>::new(), "close left a process");
    assert_eq!(our_mounts(tmp.path()), Vec::<String>::new());
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new());

    // a timed-out command, then close
    let mut tb = open(&tarball).await;
    let out = tb
        .exec(
            ExecRequest::shell("sleep 60 & sleep 60")
                .capture()
                .timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    tb.close().await.unwrap();
    assert_eq!(our_mounts(tmp.path()), Vec::<String>::new());
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new());

    // a rootfs dir is the lower layer, never written
    let mut tb = UnshareTestbed::open(Options::new(Rootfs::Dir(unpacked.path().into())))
        .await
        .expect("open unshare --rootfs");
    let out = tb
        .exec(ExecRequest::shell("echo changed > /etc/dep8-probe && rm /etc/hostname").capture())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_text());
    tb.close().await.unwrap();
    assert!(!unpacked.path().join("etc/dep8-probe").exists());
    assert!(unpacked.path().join("etc/hostname").exists());
    assert_eq!(our_mounts(tmp.path()), Vec::<String>::new());
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new());

    // dropped without close, with a process left behind
    let tb = open(&tarball).await;
    leave_a_process_behind(&tb).await;
    drop(tb);
    assert_eq!(
        no_leftovers_within(Duration::from_secs(5)).await,
        Vec::<String>::new(),
        "a dropped testbed left a process"
    );
    assert_eq!(our_mounts(tmp.path()), Vec::<String>::new());
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new());
}
