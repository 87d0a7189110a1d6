//! `dep8 explain`: each test's run/skip decision for a testbed.

use super::{failed, load};
use crate::{config, emit, error, Registry};
use dep8_core::capability::Capabilities;
use dep8_core::control::Entry;
use dep8_core::engine::Plan;
use dep8_core::error::Error;
use dep8_core::report::EXIT_BAD_PACKAGE;
use dep8_core::restriction::ResolveOptions;
use dep8_core::testbed::TestbedError;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExplainArgs {
    source: PathBuf,
    /// BACKEND [ARGS...] after `--` (default: `--testbed`'s, else the
    /// configuration's `defaults.testbed`, else null).
    #[arg(last = true)]
    testbed: Vec<String>,
    /// Several testbeds, as `dep8 run --on` takes them: say where each
    /// test would run (the cheapest that can) and its verdict there.
    #[arg(
        long = "on",
        value_name = "NAME | BACKEND ARGS",
        conflicts_with = "testbed"
    )]
    on: Vec<String>,
    /// A testbed by name: one of dep8.toml or ~/.config/dep8/config.toml,
    /// or a backend.
    #[arg(long, visible_alias = "testbed", conflicts_with = "testbed")]
    testbed_name: Option<String>,
}

pub fn explain(args: ExplainArgs, registry: &Registry) -> i32 {
    if !args.on.is_empty() {
        return match super::route::explain_routes(&args.source, &args.on, registry) {
            Ok(text) => emit(text),
            Err(e) => failed(e),
        };
    }
    let (entries, arch) = match load(&args.source, None) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let testbed = match config::run_testbed(
        &args.testbed,
        args.testbed_name.as_deref(),
        &args.source,
        registry,
    ) {
        Ok(argv) => argv,
        Err(e) => return error(e),
    };
    let (backend, backend_args) = match registry.resolve(&testbed) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let name = backend.name();
    // A testbed the run could not open ends explain as it would end the run.
    match backend.check_args(&backend_args) {
        Err(TestbedError::Usage(e)) => return failed(Error::Usage(format!("{name}: {e}"))),
        Err(e) => return failed(Error::Testbed(format!("{name}: {e}"))),
        Ok(()) => {}
    }
    let caps = Capabilities::new(backend.capabilities_for(&backend_args));
    let words: Vec<String> = caps.flags.iter().map(|c| c.to_string()).collect();
    let mut text = format!("testbed {name} can provide: {}\n", words.join(", "));
    let resolve_opts = ResolveOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let plan = Plan::new(entries, &caps, &resolve_opts);
    // A BROKEN test: an erroneous package, as for check and run.
    let broken = plan
        .entries
        .iter()
        .any(|planned| matches!(planned.entry, Entry::Broken { .. }));
    for planned in plan.entries {
        text += &format!("{:<20} {}\n", planned.entry.name(), planned.verdict);
    }
    match emit(text) {
        0 if broken => EXIT_BAD_PACKAGE,
        code => code,
    }
}
