//! The `null` backend: tests run on the host itself, in a temporary scratch
//! dir, with the capabilities autopkgtest's null advertises:
//! `isolation-machine`, `root-on-testbed` when dep8 runs as root, and the
//! scratch dir shared with the host. It cannot revert or reboot, so
//! `breaks-testbed` and `needs-reboot` tests are skipped.

use async_trait::async_trait;
use dep8_core::capability::{Capabilities, Capability};
use dep8_core::exec::{host_copy, in_testbed_argv, run_local};
use dep8_core::testbed::{Backend, ExecOutcome, ExecRequest, Result, Testbed, TestbedError};
use std::path::Path;

pub struct NullBackend;

#[async_trait]
impl Backend for NullBackend {
    fn name(&self) -> &'static str {
        "null"
    }

    fn summary(&self) -> &'static str {
        "the host itself: no isolation, nothing is reverted"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![Capability::IsolationMachine, Capability::RootOnTestbed]
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        if let Some(arg) = args.first() {
            return Err(TestbedError::Usage(format!(
                "null takes no arguments, got {arg:?}"
            )));
        }
        Ok(Box::new(NullTestbed::open()?))
    }

    fn is_host(&self) -> bool {
        true
    }
}

/// The host as a testbed.
pub struct NullTestbed {
    scratch: tempfile::TempDir,
    scratch_path: String,
    caps: Capabilities,
}

impl NullTestbed {
    pub fn open() -> Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("dep8-null.")
            .tempdir()
            .map_err(|e| TestbedError::failure("creating the scratch dir", e))?;
        let mut caps = Capabilities::new([Capability::IsolationMachine]);
        if nix::unistd::geteuid().is_root() {
            caps.insert(Capability::RootOnTestbed);
        }
        caps.downtmp_host = Some(scratch.path().to_path_buf());
        Ok(NullTestbed {
            scratch_path: scratch.path().to_string_lossy().into_owned(),
            scratch,
            caps,
        })
    }
}

#[async_trait]
impl Testbed for NullTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        &self.scratch_path
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        if req.user.is_some() && !self.caps.has(Capability::RootOnTestbed) {
            return Err(TestbedError::Unsupported(
                "running as another user without root",
            ));
        }
        run_local(&in_testbed_argv(&req), req).await
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        host_copy(host, Path::new(testbed_path)).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        host_copy(Path::new(testbed_path), host).await
    }

    async fn close(&mut self) -> Result<()> {
        let path = self.scratch.path().to_path_buf();
        std::fs::remove_dir_all(&path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(TestbedError::failure(
                format!("removing {}", path.display()),
                e,
            )),
        })
    }
}
