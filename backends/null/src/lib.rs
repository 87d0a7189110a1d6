//! The `null` backend: tests run on the host itself, in a temporary scratch
//! dir, with the capabilities autopkgtest 5.48's null advertises:
//! `root-on-testbed` when dep8 runs as root, and the scratch dir shared with
//! the host. No isolation: since 5.48 null no longer claims
//! `isolation-machine` ("a dangerous lie"); a caller that isolates the host
//! itself (a throw-away VM or container) says so with `--fake-capability`.
//! It cannot revert or reboot, so `breaks-testbed` and `needs-reboot` tests
//! are skipped.
//!
//! ```text
//! dep8 run SRC -- null [-d] [--retain-tmp] [--fake-capability CAP]...
//! ```

use async_trait::async_trait;
use clap::Parser;
use dep8_testbed::capability::{Capabilities, Capability};
use dep8_testbed::exec::{host_copy, in_testbed_argv, run_local};
use dep8_testbed::{Backend, ExecOutcome, ExecRequest, Result, Testbed, TestbedError};
use std::path::Path;

pub struct NullBackend;

/// autopkgtest-virt-null's arguments.
#[derive(Parser, Debug, Default)]
#[command(
    name = "null",
    no_binary_name = true,
    infer_long_args = true,
    about = "Run tests on the host itself (dep8 run SRC -- null ...)"
)]
pub struct NullOptions {
    /// Accepted for autopkgtest-virt-null; dep8's own `-d` (before `--`)
    /// turns on debug output.
    #[arg(short, long)]
    pub debug: bool,
    /// Keep the scratch dir when the testbed is closed (its path is logged).
    #[arg(long)]
    pub retain_tmp: bool,
    /// Declare a capability the caller provides, e.g. `isolation-machine`
    /// when the host is a throw-away VM (repeatable).
    #[arg(long, value_name = "CAPABILITY")]
    pub fake_capability: Vec<String>,
}

#[async_trait]
impl Backend for NullBackend {
    fn name(&self) -> &'static str {
        "null"
    }

    fn summary(&self) -> &'static str {
        "the host itself: no isolation, nothing is reverted"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![Capability::RootOnTestbed]
    }

    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        match NullOptions::try_parse_from(args) {
            Ok(options) => offered(&options).flags.into_iter().collect(),
            Err(_) => self.capabilities_hint(),
        }
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        let options = NullOptions::try_parse_from(args)
            .map_err(|e| TestbedError::Usage(e.render().to_string()))?;
        Ok(Box::new(NullTestbed::open_with(&options)?))
    }

    fn is_host(&self) -> bool {
        true
    }
}

/// The host as a testbed.
pub struct NullTestbed {
    /// Removed when dropped, unless `--retain-tmp`.
    scratch: tempfile::TempDir,
    scratch_path: String,
    caps: Capabilities,
    retain: bool,
}

/// What the host offers as a testbed opened with `options`: root when
/// dep8 runs as root, and the capabilities faked.
fn offered(options: &NullOptions) -> Capabilities {
    let mut caps = Capabilities::default();
    if nix::unistd::geteuid().is_root() {
        caps.insert(Capability::RootOnTestbed);
    }
    let faked = Capabilities::from_protocol_words(&options.fake_capability);
    caps.flags.extend(faked.flags);
    caps.suggested_normal_users
        .extend(faked.suggested_normal_users);
    caps
}

impl NullTestbed {
    /// The host with no arguments.
    pub fn open() -> Result<Self> {
        Self::open_with(&NullOptions::default())
    }

    pub fn open_with(options: &NullOptions) -> Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("dep8-null.")
            .disable_cleanup(options.retain_tmp)
            .tempdir()
            .map_err(|e| TestbedError::failure("creating the scratch dir", e))?;
        for word in &options.fake_capability {
            if Capability::from_word(word).is_none() && !word.contains('=') {
                tracing::warn!("--fake-capability {word}: not a capability dep8 knows; ignored");
            }
        }
        let mut caps = offered(options);
        caps.downtmp_host = Some(scratch.path().to_path_buf());
        Ok(NullTestbed {
            scratch_path: scratch.path().to_string_lossy().into_owned(),
            scratch,
            caps,
            retain: options.retain_tmp,
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
        if self.retain {
            tracing::info!("null: --retain-tmp: keeping {}", path.display());
            return Ok(());
        }
        // On a blocking thread: a large scratch dir takes a while, and a
        // signal must still be heard meanwhile.
        tokio::fs::remove_dir_all(&path)
            .await
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(TestbedError::failure(
                    format!("removing {}", path.display()),
                    e,
                )),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capabilities_for_its_arguments_include_the_faked_ones() {
        let faked = ["--fake-capability", "isolation-machine"].map(String::from);
        assert!(NullBackend
            .capabilities_for(&faked)
            .contains(&Capability::IsolationMachine));
        assert!(!NullBackend
            .capabilities_for(&[])
            .contains(&Capability::IsolationMachine));
    }
}
