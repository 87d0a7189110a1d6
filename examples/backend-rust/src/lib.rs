//! A worked example of a third-party backend (see docs/backends.md): `chroot
//! DIR` runs tests with chroot(8) in an unpacked root filesystem that the
//! user owns and does not mind being changed. It needs root, cannot revert
//! or reboot, and isolates nothing but the file system — like the
//! `autopkgtest-virt-chroot` of old.
//!
//! Everything a backend needs beyond its own setup comes from dep8-testbed:
//! `in_testbed_argv` (user, env, cwd), `run_local` (stdin/stdout/stderr,
//! timeouts that kill the whole process group) and `host_copy`.

use async_trait::async_trait;
use dep8_testbed::capability::{Capabilities, Capability};
use dep8_testbed::exec::{host_copy, in_testbed_argv, run_local};
use dep8_testbed::{Backend, ExecOutcome, ExecRequest, Result, Testbed, TestbedError};
use std::path::{Path, PathBuf};

/// The backend: a name, what it can offer, and how to open a testbed.
pub struct ChrootBackend;

#[async_trait]
impl Backend for ChrootBackend {
    fn name(&self) -> &'static str {
        "chroot"
    }

    fn summary(&self) -> &'static str {
        "chroot(8) into an unpacked root filesystem (example backend; changes it)"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![Capability::RootOnTestbed]
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        let [dir] = args else {
            return Err(TestbedError::Usage("usage: chroot DIR".into()));
        };
        Ok(Box::new(ChrootTestbed::open(Path::new(dir))?))
    }
}

/// An open testbed: the root dir and a scratch dir inside it.
pub struct ChrootTestbed {
    root: PathBuf,
    scratch: String,
    caps: Capabilities,
}

impl ChrootTestbed {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("bin/sh").exists() {
            return Err(TestbedError::Usage(format!(
                "{}: not a root filesystem (no bin/sh)",
                root.display()
            )));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(TestbedError::Usage("chroot needs root".into()));
        }
        let scratch = tempfile::Builder::new()
            .prefix("dep8-chroot.")
            .tempdir_in(root.join("tmp"))
            .map_err(|e| TestbedError::failure("creating the scratch dir", e))?
            .keep();
        let mut caps = Capabilities::new([Capability::RootOnTestbed]);
        // A normal user, if the root filesystem has one dep8 knows.
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        if passwd.lines().any(|l| l.starts_with("dep8:")) {
            caps.suggested_normal_users.push("dep8".into());
        }
        Ok(ChrootTestbed {
            scratch: format!(
                "/{}",
                scratch.strip_prefix(root).unwrap_or(&scratch).display()
            ),
            root: root.to_path_buf(),
            caps,
        })
    }

    /// Where a testbed path is on the host.
    fn on_host(&self, testbed_path: &str) -> PathBuf {
        self.root.join(testbed_path.trim_start_matches('/'))
    }
}

#[async_trait]
impl Testbed for ChrootTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        &self.scratch
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        let mut argv = vec!["chroot".to_string(), self.root.to_string_lossy().into()];
        argv.extend(in_testbed_argv(&req));
        run_local(&argv, req).await
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        host_copy(host, &self.on_host(testbed_path)).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        host_copy(&self.on_host(testbed_path), host).await
    }

    async fn close(&mut self) -> Result<()> {
        let path = self.on_host(&self.scratch);
        std::fs::remove_dir_all(&path)
            .map_err(|e| TestbedError::failure(format!("removing {}", path.display()), e))
    }
}
