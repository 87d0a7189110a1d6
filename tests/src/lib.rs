//! Test support for dep8's integration tests (tests/tests/): a loopback
//! sshd, helpers to run the dep8 binary on source trees, the callers'
//! harnesses and fault injection. The conformance checks themselves are the
//! `dep8-conformance` crate; nothing here is linked into the dep8 binary.

pub mod callers;
pub mod e2e;
pub mod faults;
pub mod fleet;
pub mod sshd;

/// A resource the tests drive for real (an image, a chroot name), named by
/// the environment variable `var` that `.ci/build-images` prints.
///
/// Returns `None` with a printed skip reason when the variable is unset on a
/// developer machine; under CI (`DEP8_CI=1`) a missing resource is a failure,
/// so a broken image build can never turn into a silent skip.
pub fn required_resource(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("DEP8_CI").is_some() => {
            panic!("{var} is not set under CI: .ci/build-images did not provide {what}")
        }
        _ => {
            eprintln!(
                "SKIP: {var} is not set (no {what}); run `eval \"$(.ci/build-images)\"` first"
            );
            None
        }
    }
}
