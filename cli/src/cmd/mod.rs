//! One module per subcommand; what check and explain share is here.

pub mod check;
pub mod compare;
pub mod explain;
pub mod jobs;
mod route;
pub mod run;

use crate::Registry;
use dep8_core::capability::Capabilities;
use dep8_core::control::Entry;
use dep8_core::engine::{host_arch, load_suite};
use dep8_core::error::Error;
use std::path::Path;

/// The parsed suite and the architecture used, for check and explain: a
/// bad SRC is a usage error (exit 20), an unreadable debian/control the
/// package's (12), as for `dep8 run`.
fn load(source: &Path, arch: Option<&str>) -> Result<(Vec<Entry>, String), Error> {
    source_dir(source)?;
    let control = source.join("debian/tests/control");
    if let Ok(false) = control.try_exists() {
        return Err(Error::Usage(format!(
            "{}: no debian/tests/control",
            source.display()
        )));
    }
    let arch = arch
        .map(str::to_string)
        .or_else(host_arch)
        .unwrap_or_else(|| "amd64".into());
    Ok((load_suite(&control, source, &arch)?, arch))
}

/// Says why a command stopped; returns the exit code its blame gives.
pub(crate) fn failed(e: Error) -> i32 {
    crate::error(&e);
    e.exit_code()
}

/// Checks that SRC is an existing directory; else it is a usage error.
fn source_dir(source: &Path) -> Result<(), Error> {
    if source.is_dir() {
        Ok(())
    } else if source.exists() {
        Err(Error::Usage(format!(
            "{}: not a source tree, .dsc or .deb",
            source.display()
        )))
    } else {
        Err(Error::Usage(format!(
            "{}: no such file or directory",
            source.display()
        )))
    }
}

/// The capabilities a testbed argv (`[NAME, ARGS...]`) would offer, with
/// the backend's name; nothing is opened.
fn testbed_capabilities(
    registry: &Registry,
    testbed: &[String],
) -> Result<(&'static str, Capabilities), Error> {
    let (b, args) = registry.resolve(testbed)?;
    Ok((b.name(), Capabilities::new(b.capabilities_for(&args))))
}
