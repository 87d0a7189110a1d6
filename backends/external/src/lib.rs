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

    /// Each run of a container or VM server opens a testbed of its own;
    /// see [`virt_server_testbeds`].
    fn max_testbeds(&self, args: &[String]) -> usize {
        match args.split_first() {
            Some((program, rest)) => virt_server_testbeds(program, rest),
            None => 1,
        }
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

/// How many testbeds runs of virt server `program` with `args` may have open
/// at once, each independent of the others: as many as the host allows for
/// the container and VM servers, whose every run makes a container, VM or
/// session of its own; one where two runs would share a machine or a name
/// (virt-null, virt-chroot, virt-ssh without a setup script, schroot with
/// a session id, lxc with a container name), or the program is not known.
/// `dep8 virt-server` is not known here: the caller, who knows its
/// backends, asks the one it serves.
pub fn virt_server_testbeds(program: &str, args: &[String]) -> usize {
    let name = program.rsplit('/').next().unwrap_or(program);
    let unbounded = match name.strip_prefix("autopkgtest-virt-") {
        Some("qemu" | "lxd" | "incus" | "podman" | "docker" | "unshare") => true,
        Some("schroot") => !has_option(args, Some('s'), "session-id"),
        Some("lxc") => !has_option(args, None, "name"),
        Some("ssh") => has_option(args, Some('s'), "setup-script"),
        _ => false,
    };
    if unbounded {
        usize::MAX
    } else {
        1
    }
}

/// Whether `args`, a Python virt server's command line, give option
/// `--LONG` (or `-SHORT`) in any of argparse's spellings (`--long X`,
/// `--long=X`, `-s X`, `-sX`) before the words it hands on (after `--`).
fn has_option(args: &[String], short: Option<char>, long: &str) -> bool {
    let long = format!("--{long}");
    let long_with_value = format!("{long}=");
    let short = short.map(|c| format!("-{c}"));
    args.iter().take_while(|a| *a != "--").any(|a| {
        *a == long
            || a.starts_with(&long_with_value)
            || short
                .as_ref()
                .is_some_and(|s| a.starts_with(s.as_str()) && !a.starts_with("--"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testbeds(program: &str, args: &[&str]) -> usize {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        ExternalBackend.max_testbeds(&[&[program.to_string()][..], &args].concat())
    }

    #[test]
    fn container_and_vm_servers_open_as_many_testbeds_as_asked() {
        for server in [
            "qemu", "lxd", "incus", "podman", "docker", "unshare", "schroot", "lxc",
        ] {
            let program = format!("/usr/bin/autopkgtest-virt-{server}");
            assert_eq!(testbeds(&program, &["image"]), usize::MAX, "{server}");
        }
        assert_eq!(
            testbeds("autopkgtest-virt-unshare", &["-t", "t.tar"]),
            usize::MAX
        );
    }

    #[test]
    fn a_named_schroot_session_or_lxc_container_is_one_testbed() {
        for args in [
            &["-s", "mine", "sid"][..],
            &["-smine", "sid"],
            &["sid", "--session-id", "mine"],
            &["--session-id=mine", "sid"],
        ] {
            assert_eq!(testbeds("autopkgtest-virt-schroot", args), 1, "{args:?}");
        }
        assert_eq!(testbeds("autopkgtest-virt-lxc", &["--name", "c", "t"]), 1);
        // lxc's -s is --sudo, no name.
        assert_eq!(testbeds("autopkgtest-virt-lxc", &["-s", "t"]), usize::MAX);
    }

    #[test]
    fn ssh_opens_several_machines_only_through_a_setup_script() {
        let ssh = "autopkgtest-virt-ssh";
        assert_eq!(testbeds(ssh, &["-H", "host"]), 1);
        assert_eq!(
            testbeds(ssh, &["-s", "nova", "--", "--flavor", "m1"]),
            usize::MAX
        );
        assert_eq!(testbeds(ssh, &["--setup-script=nova"]), usize::MAX);
        // After --, the words are the setup script's.
        assert_eq!(testbeds(ssh, &["-H", "host", "--", "-s"]), 1);
    }

    #[test]
    fn the_host_a_chroot_and_unknown_programs_are_one_testbed() {
        assert_eq!(testbeds("autopkgtest-virt-null", &[]), 1);
        assert_eq!(testbeds("autopkgtest-virt-chroot", &["/srv/sid"]), 1);
        assert_eq!(testbeds("./my-virt-server", &["-s", "x"]), 1);
        assert_eq!(testbeds("dep8", &["virt-server", "unshare"]), 1);
        assert_eq!(ExternalBackend.max_testbeds(&[]), 1);
    }
}
