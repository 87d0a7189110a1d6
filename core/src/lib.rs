//! dep8-core: the model and the engine of dep8, with no backend code.
//!
//! - [`control`] reads DEP-8 `debian/tests/control` files into [`control::Test`]s,
//!   with source positions for every problem.
//! - [`source`] reads `debian/control` to expand `@`, `@builddeps@` and
//!   `@recommends@`, and checks dependency relations; [`arch`] has dpkg's
//!   architecture wildcards.
//! - [`capability`] and [`restriction`] are the typed model; [`restriction::resolve`]
//!   is the one pure function that decides whether a test runs on a testbed.
//! - [`testbed`] holds the [`testbed::Backend`] and [`testbed::Testbed`] traits;
//!   [`exec`] has the process plumbing shared by every backend that runs
//!   commands through a local program.
//! - [`runner`] runs a suite on a testbed; [`report`] writes what it found.

pub mod acquire;
pub mod arch;
pub mod build;
pub mod capability;
pub mod control;
pub mod exec;
pub mod inputs;
pub mod install;
pub mod leftovers;
pub mod reboot;
pub mod report;
pub mod restriction;
pub mod runner;
pub mod setup;
pub mod source;
pub mod testbed;
