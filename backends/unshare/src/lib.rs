//! The `unshare` backend: a Debian root filesystem run in private Linux
//! namespaces, with no daemon and no init.
//!
//! Opening a testbed starts a *holder*: util-linux `unshare` running a small
//! bash script (`holder.sh`) as pid 1 of new mount, pid, uts, ipc and
//! (with `--private-network`) net namespaces. The holder unpacks the rootfs
//! tarball once into a tmpfs (a `--rootfs DIR` is used in place; the tmpfs
//! costs RAM the size of the rootfs but unpacks several times faster than a
//! disk and vanishes with the namespace) and mounts an overlay whose lower layer is the pristine rootfs and whose upper
//! layer is a fresh tmpfs, plus /proc, /sys (read-only), a minimal /dev
//! (bind mounts of the host's null, zero, full, random, urandom, tty; its
//! own devpts and /dev/shm), and an /etc/hosts naming the testbed where the
//! rootfs has none (as container runtimes give). Commands enter the namespaces with `nsenter`
//! and `chroot` into the overlay.
//!
//! Revert asks the holder (a line on its stdin) to kill every other process
//! of the pid namespace, unmount and mount again with an empty upper layer:
//! nothing is unpacked again. Everything mounted lives in the private mount
//! namespace, so the host's mount table never changes; when dep8 closes the
//! testbed or dies, the holder reads end-of-file, kills what is left,
//! unmounts and removes the temp dir; a dropped testbed kills the holder,
//! which takes the whole namespace down.
//!
//! Why util-linux and a script rather than dep8 re-executing itself: the
//! backend is a library (custom binaries, the test suite) and cannot rely on
//! a hidden subcommand of a `dep8` binary; `unshare`/`nsenter` are in every
//! Debian system (util-linux is essential), so the same code runs nested
//! inside a testbed. bash as pid 1 reaps the orphans it inherits.
//!
//! As a normal user (or with `--userns`), the namespaces are owned by a new
//! user namespace mapping the user to root and the user's /etc/subuid range
//! to the other ids (`unshare --map-auto --map-root-user`, as
//! autopkgtest-virt-unshare does); root inside is then not root outside.

use async_trait::async_trait;
use dep8_core::capability::{BaseImage, BaseImageKind, Capabilities, Capability};
use dep8_core::exec::{copy_down_via_exec, copy_up_via_exec, in_testbed_argv, run_local};
use dep8_core::testbed::{Backend, ExecOutcome, ExecRequest, Result, Testbed, TestbedError};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

const HOLDER: &str = include_str!("holder.sh");

/// Where the pristine rootfs is mounted read-only with `--baseimage`.
pub const BASEIMAGE_PATH: &str = "/run/dep8/baseimage";

/// The scratch dir inside the testbed; the same path after every revert.
const SCRATCH: &str = "/tmp/dep8-scratch";

/// The environment commands start with (plus what the request adds).
const BASE_ENV: [&str; 4] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "USER=root",
    "LOGNAME=root",
];

pub struct UnshareBackend;

const USAGE: &str =
    "usage: unshare (--tarball FILE | --rootfs DIR) [--private-network] [--baseimage] [--userns]";

#[async_trait]
impl Backend for UnshareBackend {
    fn name(&self) -> &'static str {
        "unshare"
    }

    fn summary(&self) -> &'static str {
        "a rootfs tarball or dir in private namespaces over an overlay, reverted by remounting"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::Nesting,
            Capability::BaseImage,
        ]
    }

    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        let baseimage = Options::parse(args).map_or(true, |o| o.baseimage);
        let mut caps = self.capabilities_hint();
        caps.retain(|c| baseimage || *c != Capability::BaseImage);
        caps
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        let options = Options::parse(args)?;
        Ok(Box::new(UnshareTestbed::open(options).await?))
    }
}

/// Where the pristine root filesystem comes from.
#[derive(Clone, Debug)]
pub enum Rootfs {
    /// A tarball (any compression tar understands), unpacked once per open.
    Tarball(PathBuf),
    /// An unpacked root filesystem, used read-only as the lower layer.
    Dir(PathBuf),
}

/// How to open an unshare testbed.
#[derive(Clone, Debug)]
pub struct Options {
    pub rootfs: Rootfs,
    /// Share the host's network (and its resolv.conf), as
    /// autopkgtest-virt-unshare does; `--private-network` gives the testbed
    /// a network namespace of its own with only loopback instead.
    pub network: bool,
    /// Mount the pristine rootfs read-only at [`BASEIMAGE_PATH`].
    pub baseimage: bool,
    /// Run in a user namespace (root inside is not root outside); always so
    /// when dep8 is not root. Needs the user's range in /etc/subuid and
    /// /etc/subgid.
    pub userns: bool,
}

impl Options {
    /// The defaults for `rootfs`: the host's network, no base image, a user
    /// namespace unless dep8 is root.
    pub fn new(rootfs: Rootfs) -> Options {
        Options {
            rootfs,
            network: true,
            baseimage: false,
            userns: !nix::unistd::geteuid().is_root(),
        }
    }

    /// Parses the words after `unshare` on the command line.
    pub fn parse(args: &[String]) -> Result<Options> {
        let usage = |msg: String| TestbedError::Usage(format!("{msg}\n{USAGE}"));
        let mut rootfs = None;
        let (mut network, mut baseimage) = (true, false);
        let mut userns = !nix::unistd::geteuid().is_root();
        let mut words = args.iter();
        while let Some(word) = words.next() {
            let (flag, inline) = match word.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (word.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| words.next().cloned())
                    .ok_or_else(|| usage(format!("{flag} needs a value")))
            };
            match flag {
                "-t" | "--tarball" => rootfs = Some(Rootfs::Tarball(value()?.into())),
                "--rootfs" => rootfs = Some(Rootfs::Dir(value()?.into())),
                "--network" => network = true,
                "--private-network" => network = false,
                "--baseimage" => baseimage = true,
                "--userns" => userns = true,
                _ => return Err(usage(format!("unknown argument {word:?}"))),
            }
        }
        let rootfs = rootfs.ok_or_else(|| usage("no --tarball or --rootfs given".into()))?;
        match &rootfs {
            Rootfs::Tarball(p) if !p.is_file() => {
                return Err(usage(format!("--tarball {}: no such file", p.display())))
            }
            Rootfs::Dir(p) if !p.join("etc").is_dir() => {
                return Err(usage(format!(
                    "--rootfs {}: not a root filesystem (no etc/)",
                    p.display()
                )))
            }
            _ => {}
        }
        Ok(Options {
            rootfs,
            network,
            baseimage,
            userns,
        })
    }
}

/// The holder process and the pipes to talk to it.
struct Holder {
    /// util-linux `unshare`; the holder script is its only child.
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Reads the holder's lines up to its verdict; the other lines explain
    /// a failure.
    fn verdict(&mut self, what: &str) -> Result<String> {
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| TestbedError::failure(what, e))?;
            if n == 0 {
                said.push("the namespace holder exited".to_string());
                break;
            }
            match line.trim_end().strip_prefix("dep8-holder: ") {
                Some(verdict) if verdict == "ok" || verdict.starts_with("ready ") => {
                    return Ok(verdict.to_string())
                }
                Some(failed) => {
                    said.push(failed.to_string());
                    break;
                }
                None => said.push(line.trim_end().to_string()),
            }
        }
        Err(TestbedError::Failure(format!(
            "{what}: {}",
            said.join("; ")
        )))
    }

    fn request(&mut self, request: &str) -> Result<()> {
        let what = format!("{request} in the unshare testbed");
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| TestbedError::Failure(format!("{what}: testbed is closed")))?;
        writeln!(stdin, "{request}").map_err(|e| TestbedError::failure(&what, e))?;
        self.verdict(&what).map(drop)
    }
}

/// An open unshare testbed.
pub struct UnshareTestbed {
    /// Our temp dir, holding only mount points (seen inside the namespace):
    /// `root/` (the overlay), `rw/` (the tmpfs upper layer), `lower/` (the
    /// tmpfs with the unpacked tarball).
    dir: PathBuf,
    holder: Arc<Mutex<Holder>>,
    /// The holder's pid on the host, for nsenter.
    pid: String,
    caps: Capabilities,
    network: bool,
    userns: bool,
}

impl UnshareTestbed {
    pub async fn open(options: Options) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(options))
            .await
            .map_err(|e| TestbedError::failure("opening the unshare testbed", e))?
    }

    fn open_blocking(options: Options) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("dep8-unshare.")
            .tempdir()
            .map_err(|e| TestbedError::failure("creating the testbed's temp dir", e))?
            .keep();
        // From here on, a failure must remove `dir`.
        let cleanup = DirGuard(Some(dir.clone()));
        for sub in ["root", "rw"] {
            std::fs::create_dir(dir.join(sub))
                .map_err(|e| TestbedError::failure(dir.join(sub).display(), e))?;
        }
        let (kind, source) = match &options.rootfs {
            Rootfs::Tarball(path) => ("tarball", path),
            Rootfs::Dir(path) => ("dir", path),
        };
        let source =
            std::path::absolute(source).map_err(|e| TestbedError::failure(source.display(), e))?;
        let mut caps = Capabilities::new([
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::Nesting,
        ]);
        if options.baseimage {
            caps.insert(Capability::BaseImage);
            caps.baseimage = Some(BaseImage {
                path: BASEIMAGE_PATH.into(),
                kind: BaseImageKind::Directory,
            });
        }

        let mut cmd = Command::new("unshare");
        if options.userns {
            // Our uid is root inside, the subuid range the other ids.
            cmd.args(["--user", "--map-auto", "--map-root-user"]);
        }
        cmd.args([
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--kill-child",
            "--uts",
            "--ipc",
        ]);
        if !options.network {
            cmd.arg("--net");
        }
        let mut child = cmd
            .args(["--", "bash", "-c", HOLDER, "dep8-holder"])
            .arg(&dir)
            .arg(kind)
            .arg(&source)
            .arg(SCRATCH)
            .arg(if options.network { "host" } else { "private" })
            .arg(if options.baseimage { "yes" } else { "no" })
            .arg(if options.userns { "yes" } else { "no" })
            .current_dir("/")
            .env_clear()
            .envs(BASE_ENV.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // unshare's own errors (no subuid range, ...); the holder
            // writes to stdout.
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TestbedError::failure("cannot run unshare (util-linux)", e))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut holder = Holder {
            child,
            stdin,
            stdout,
        };
        let ready = match holder.verdict("setting up the unshare testbed") {
            Ok(ready) => ready,
            Err(e) => {
                let _ = holder.child.kill();
                let _ = holder.child.wait();
                let mut stderr = String::new();
                if let Some(mut pipe) = holder.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let said = stderr.trim();
                return Err(if said.contains("/etc/sub") {
                    TestbedError::Usage(format!(
                        "{said}: a user namespace needs a range of ids for this user \
                         in /etc/subuid and /etc/subgid (usermod --add-subuids \
                         --add-subgids)"
                    ))
                } else {
                    match e {
                        TestbedError::Failure(msg) if !said.is_empty() => {
                            TestbedError::Failure(format!("{msg}; {said}"))
                        }
                        e => e,
                    }
                });
            }
        };
        let pid = ready.trim_start_matches("ready ").to_string();
        // The host sees the holder's mounts through /proc/PID/root.
        let passwd = format!("/proc/{pid}/root{}/root/etc/passwd", dir.display());
        if has_user(Path::new(&passwd), "dep8") {
            caps.suggested_normal_users.push("dep8".into());
        }
        let mut cleanup = cleanup;
        cleanup.0 = None;
        Ok(UnshareTestbed {
            dir,
            holder: Arc::new(Mutex::new(holder)),
            pid,
            caps,
            network: options.network,
            userns: options.userns,
        })
    }

    /// The host-side prefix that runs an argv inside the testbed.
    fn enter(&self) -> Vec<String> {
        let mut argv = vec!["env".to_string(), "-i".to_string()];
        argv.extend(BASE_ENV.iter().map(|s| s.to_string()));
        argv.extend(["nsenter", "--target", &self.pid].map(String::from));
        if self.userns {
            argv.push("--user".into());
        }
        argv.extend(["--mount", "--pid", "--uts", "--ipc"].map(String::from));
        if !self.network {
            // With the host's network there is nothing to enter (and in a
            // user namespace entering it again is not permitted).
            argv.push("--net".into());
        }
        argv.extend(
            [
                // The holder's root: after entering a mount namespace the
                // root is that namespace's, which differs when nested in a
                // chroot.
                "--root", "--", "chroot",
            ]
            .map(String::from),
        );
        argv.push(self.dir.join("root").to_string_lossy().into_owned());
        argv
    }

    /// Asks the holder for `request` without blocking the async runtime.
    async fn request(&self, request: &'static str) -> Result<()> {
        let holder = self.holder.clone();
        tokio::task::spawn_blocking(move || {
            holder
                .lock()
                .map_err(|_| TestbedError::Failure("unshare holder lock poisoned".into()))?
                .request(request)
        })
        .await
        .map_err(|e| TestbedError::failure(request, e))?
    }
}

/// Whether the `passwd` file has an account named `user`.
fn has_user(passwd: &Path, user: &str) -> bool {
    std::fs::read_to_string(passwd)
        .map(|passwd| passwd.lines().any(|l| l.split(':').next() == Some(user)))
        .unwrap_or(false)
}

/// Removes a directory tree when dropped (unless disarmed).
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            remove_tree(&dir);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

#[async_trait]
impl Testbed for UnshareTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        SCRATCH
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let network = if self.network { "host" } else { "private" };
        BTreeMap::from([
            ("unshare_network".to_string(), network.to_string()),
            ("unshare_userns".to_string(), self.userns.to_string()),
        ])
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        let mut argv = self.enter();
        argv.extend(in_testbed_argv(&req));
        run_local(&argv, req).await
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        copy_down_via_exec(self, host, testbed_path).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        copy_up_via_exec(self, testbed_path, host).await
    }

    async fn revert(&mut self) -> Result<()> {
        self.request("revert").await
    }

    async fn close(&mut self) -> Result<()> {
        let holder = self.holder.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut holder = holder
                .lock()
                .map_err(|_| TestbedError::Failure("unshare holder lock poisoned".into()))?;
            // End of input: the holder kills, unmounts and removes `dir`.
            holder.stdin = None;
            let status = holder
                .child
                .wait()
                .map_err(|e| TestbedError::failure("closing the unshare testbed", e))?;
            remove_tree(&dir);
            if status.success() {
                Ok(())
            } else {
                Err(TestbedError::Failure(format!(
                    "closing the unshare testbed: the holder exited with {status}"
                )))
            }
        })
        .await
        .map_err(|e| TestbedError::failure("closing the unshare testbed", e))?
    }
}

impl Drop for UnshareTestbed {
    /// Without close: kill the holder (and with it the whole namespace),
    /// then remove the temp dir.
    fn drop(&mut self) {
        if let Ok(mut holder) = self.holder.lock() {
            if holder.child.try_wait().ok().flatten().is_none() {
                let _ = holder.child.kill();
                let _ = holder.child.wait();
            }
        }
        remove_tree(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let d = dir.path().display();
        let o = Options::parse(&words(&format!("--rootfs {d} --baseimage"))).unwrap();
        assert!(o.network && o.baseimage, "the host's network by default");
        let o = Options::parse(&words(&format!("--rootfs {d} --private-network"))).unwrap();
        assert!(!o.network);
        assert!(matches!(o.rootfs, Rootfs::Dir(_)));
        let err = Options::parse(&words("--tarball /nonexistent.tar")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.tar"), "{err}");
        let err = Options::parse(&words("--frobnicate")).unwrap_err();
        assert!(err.to_string().contains("--frobnicate"), "{err}");
        assert!(Options::parse(&[]).is_err());
    }
}
