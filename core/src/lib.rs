//! dep8-core: the model and the engine of dep8, with no backend code.
//!
//! - [`control`] reads DEP-8 `debian/tests/control` files into [`control::Test`]s,
//!   with source positions for every problem.
//! - [`source`] reads `debian/control` to expand `@`, `@builddeps@` and
//!   `@recommends@`, and checks dependency relations; [`arch`] has dpkg's
//!   architecture wildcards.
//! - [`capability`] and [`restriction`] are the typed model; [`restriction::resolve`]
//!   is the one pure function that decides whether a test runs on a testbed.
//! - [`testbed`], [`capability`], [`exec`] and [`leftovers`] are the testbed
//!   contract, re-exported from the dep8-testbed crate (which backends
//!   depend on instead of this one).
//! - [`engine`] runs a suite on a testbed and says what happens as
//!   [`events::Event`]s; [`report`] has the typed report and the observers
//!   that write the log, the summary, results.json and junit.xml.
//! - [`error::Error`] is why a run stops, by blame, and its exit code.

pub mod acquire;
pub mod arch;
pub mod build;
pub mod cache;
pub mod control;
pub mod engine;
pub mod error;
pub mod events;
pub mod inputs;
pub mod install;
pub mod reboot;
pub mod report;
pub mod restriction;
pub mod setup;
pub mod source;

pub use dep8_testbed as testbed;
pub use dep8_testbed::{capability, exec, leftovers};

/// `work` (file system calls, processes) on tokio's blocking threads, off
/// the async ones; a panic there is the caller's.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
