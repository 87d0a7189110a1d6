//! autopkgtest's virt-server protocol (its
//! `README.virtualisation-server.rst`), both ways:
//!
//! - [`ExternalBackend`] (`external PROGRAM [ARGS...]`) drives any program
//!   that speaks it, so every `autopkgtest-virt-*` works as a dep8 testbed;
//! - [`server::serve`] offers any dep8 [`Backend`] over it, so Debian's
//!   autopkgtest can drive dep8's backends; its auxverb is
//!   [`exec_channel::client`], which reaches the server over a unix socket.

mod client;
pub mod exec_channel;
pub mod server;
mod words;

pub use client::ExternalTestbed;

use async_trait::async_trait;
use dep8_testbed::capability::Capability;
use dep8_testbed::{Backend, Result, Testbed, TestbedError};
use std::path::PathBuf;

pub struct ExternalBackend;

#[async_trait]
impl Backend for ExternalBackend {
    fn name(&self) -> &'static str {
        "external"
    }

    fn summary(&self) -> &'static str {
        "any autopkgtest virt server: external PROGRAM [ARGS...] (e.g. autopkgtest-virt-lxd)"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        // Whatever the program advertises; nothing is known before it runs.
        Vec::new()
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        let Some((program, rest)) = args.split_first() else {
            return Err(TestbedError::Usage(
                "external needs a virt server program: external PROGRAM [ARGS...]".into(),
            ));
        };
        Ok(Box::new(ExternalTestbed::open(program, rest).await?))
    }
}

/// The virt server program autopkgtest would run for `name` after `--`: a
/// path when `name` contains a `/`, else `autopkgtest-virt-NAME` in `PATH`.
pub fn find_virt_server(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        which::which(name).ok()
    } else {
        which::which(format!("autopkgtest-virt-{name}")).ok()
    }
}
