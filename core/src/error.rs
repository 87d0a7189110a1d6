//! The one error type of a run that ends early, and the one place where
//! blame becomes autopkgtest's exit code.

use crate::testbed::TestbedError;

/// autopkgtest's exit status for an erroneous package.
pub const EXIT_BAD_PACKAGE: i32 = 12;
/// autopkgtest's exit status for a testbed failure (debci retries it).
pub const EXIT_TESTBED_FAILURE: i32 = 16;
/// autopkgtest's exit status for bad usage and unexpected errors.
pub const EXIT_UNEXPECTED: i32 = 20;

/// Why a run (or one of its steps: setup, acquiring or building the
/// source) stopped, by whom is to blame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The package is at fault (exit 12).
    #[error("{0}")]
    BadPackage(String),
    /// The testbed broke or could not do what was asked (exit 16).
    #[error("{0}")]
    Testbed(String),
    /// An option or argument the run cannot honour (exit 20).
    #[error("{0}")]
    Usage(String),
    /// This signal stopped the run (dep8 then dies by it: 128 + signal).
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
}

impl Error {
    /// autopkgtest's exit status for a run that ended with this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadPackage(_) => EXIT_BAD_PACKAGE,
            Error::Testbed(_) => EXIT_TESTBED_FAILURE,
            Error::Usage(_) => EXIT_UNEXPECTED,
            Error::Interrupted(signal) => 128 + signal,
        }
    }
}

/// A testbed operation that failed is the testbed's fault, whatever the
/// backend said (a backend's `Usage` is only blamed on the user at `open`).
impl From<TestbedError> for Error {
    fn from(e: TestbedError) -> Self {
        Error::Testbed(e.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_decides_the_exit_code() {
        assert_eq!(Error::BadPackage("x".into()).exit_code(), 12);
        assert_eq!(Error::Testbed("x".into()).exit_code(), 16);
        assert_eq!(Error::Usage("x".into()).exit_code(), 20);
        assert_eq!(Error::Interrupted(15).exit_code(), 143);
    }

    #[test]
    fn a_testbed_error_blames_the_testbed() {
        let e: Error = TestbedError::Usage("bad word".into()).into();
        assert!(matches!(e, Error::Testbed(_)));
    }
}
