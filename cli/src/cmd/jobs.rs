//! `dep8 run -j N`: how many tests run at once, and the clones of the
//! testbed they run on.

use crate::Registry;
use async_trait::async_trait;
use dep8_core::engine::Clones;
use dep8_core::testbed::{Backend, OpenContext, Testbed, TestbedError};

/// `-j N` / `--jobs N`: a number of tests, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jobs {
    Count(usize),
    /// As many as the host has CPUs (and, for VMs, memory for).
    Auto,
}

/// Parses `-j`'s value: a number from 1, or `auto`.
pub fn parse_jobs(s: &str) -> Result<Jobs, String> {
    if s == "auto" {
        return Ok(Jobs::Auto);
    }
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Jobs::Count(n)),
        _ => Err(format!(
            "{s:?} is not a number of tests (1 or more) or auto"
        )),
    }
}

/// How many tests run at once on testbeds of `backend` opened with
/// `args`; says why in `note` when it is fewer than asked.
pub fn resolve(
    jobs: Jobs,
    registry: &Registry,
    backend: &dyn Backend,
    args: &[String],
    note: impl Fn(String),
) -> usize {
    let most = registry.max_testbeds(backend, args);
    let wanted = match jobs {
        Jobs::Count(n) => n,
        Jobs::Auto => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(most),
    };
    if wanted > 1 && most <= 1 {
        note(format!(
            "-j {wanted}: {} cannot open more testbeds like this one; the tests run one after another",
            backend.name()
        ));
        return 1;
    }
    wanted
}

/// More testbeds of the run's backend, opened with the same arguments.
pub struct BackendClones<'a> {
    pub backend: &'a dyn Backend,
    pub args: &'a [String],
    /// What the first testbed was told as it opened.
    pub context: OpenContext<'a>,
}

#[async_trait]
impl Clones for BackendClones<'_> {
    async fn open_clone(&self) -> Result<Box<dyn Testbed>, TestbedError> {
        self.backend.open_in(self.args, self.context).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_a_count_from_one_or_auto() {
        assert_eq!(parse_jobs("4"), Ok(Jobs::Count(4)));
        assert_eq!(parse_jobs("auto"), Ok(Jobs::Auto));
        assert!(parse_jobs("0").is_err());
        assert!(parse_jobs("many").is_err());
    }

    #[cfg(feature = "unshare")]
    #[test]
    fn dep8_virt_server_opens_as_many_testbeds_as_the_backend_it_serves() {
        let registry = Registry::builtin();
        let external = registry.get("external").unwrap();
        let served = |testbed: &[&str]| {
            let args: Vec<String> = ["/usr/bin/dep8", "virt-server"]
                .iter()
                .chain(testbed)
                .map(|a| a.to_string())
                .collect();
            registry.max_testbeds(external, &args)
        };
        assert_eq!(served(&["unshare", "-t", "sid.tar"]), usize::MAX);
        assert_eq!(served(&["null"]), 1);
        assert_eq!(served(&["no-such-backend"]), 1);
    }
}
