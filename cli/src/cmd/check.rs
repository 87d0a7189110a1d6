//! `dep8 check`: validate debian/tests/control and list its tests, with
//! each one's verdict on a backend (`--testbed`).

use super::{failed, load, testbed_capabilities};
use crate::{config, emit, error, Registry};
use dep8_core::control::Entry;
use dep8_core::engine::{Plan, Verdict};
use dep8_core::report::EXIT_BAD_PACKAGE;
use dep8_core::restriction::ResolveOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The unpacked source tree.
    source: PathBuf,
    /// Print the tests as a JSON array.
    #[arg(long)]
    json: bool,
    /// Also give each test's static skip reason on this testbed: a backend
    /// or a testbed of dep8.toml or ~/.config/dep8/config.toml (default:
    /// their `defaults.testbed`, if set).
    #[arg(long)]
    testbed: Option<String>,
    /// The testbed's dpkg architecture (default: the host's).
    #[arg(long)]
    arch: Option<String>,
}

pub fn check(args: CheckArgs, registry: &Registry) -> i32 {
    let (entries, arch) = match load(&args.source, args.arch.as_deref()) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let broken = entries.iter().any(|e| matches!(e, Entry::Broken { .. }));
    let testbed = match config::named_testbed(args.testbed.as_deref(), &args.source, registry) {
        Ok(testbed) => testbed,
        Err(e) => return error(e),
    };
    // Each entry with its verdict on the testbed, when one is named.
    let planned: Vec<(Entry, Option<Verdict>)> = match testbed {
        Some(argv) => match testbed_capabilities(registry, &argv) {
            Ok((_, caps)) => {
                let resolve_opts = ResolveOptions {
                    arch: Some(arch),
                    ..Default::default()
                };
                Plan::new(entries, &caps, &resolve_opts)
                    .entries
                    .into_iter()
                    .map(|p| (p.entry, Some(p.verdict)))
                    .collect()
            }
            Err(e) => return failed(e),
        },
        None => entries.into_iter().map(|e| (e, None)).collect(),
    };
    let text = if args.json {
        let tests: Vec<serde_json::Value> = planned
            .iter()
            .map(|(entry, verdict)| json(entry, verdict.as_ref()))
            .collect();
        serde_json::to_string_pretty(&tests).unwrap_or_default() + "\n"
    } else {
        planned
            .iter()
            .map(|(entry, verdict)| {
                format!("{:<20} {}\n", entry.name(), line(entry, verdict.as_ref()))
            })
            .collect()
    };
    match emit(text) {
        0 if broken => EXIT_BAD_PACKAGE,
        code => code,
    }
}

/// An entry as `check --json` prints it; `skip` is the testbed's reason.
fn json(entry: &Entry, verdict: Option<&Verdict>) -> serde_json::Value {
    let skip = verdict.and_then(Verdict::skip_reason);
    match entry {
        Entry::Test(t) => serde_json::json!({
            "name": t.name, "path": t.path, "command": t.command,
            "restrictions": t.restrictions, "features": t.features,
            "depends": t.depends, "classes": t.classes,
            "architecture": t.architectures, "location": t.location, "skip": skip,
        }),
        Entry::Unsupported {
            name,
            reason,
            location,
        } => serde_json::json!({
            "name": name, "unsupported": reason, "location": location, "skip": skip,
        }),
        Entry::Broken { name, problem } => serde_json::json!({
            "name": name, "broken": problem.to_string(), "location": problem.location,
            "field": problem.field, "skip": skip,
        }),
    }
}

/// An entry's line after its name: what it runs and, on a testbed, its
/// verdict.
fn line(entry: &Entry, verdict: Option<&Verdict>) -> String {
    match entry {
        Entry::Test(t) => {
            let what = t
                .path
                .clone()
                .unwrap_or_else(|| format!("command: {}", t.command.as_deref().unwrap_or("")));
            let decision = verdict.map(|v| match v {
                Verdict::Run => "  [runs]".to_string(),
                other => format!("  [{other}]"),
            });
            format!("{what}{}", decision.unwrap_or_default())
        }
        Entry::Unsupported {
            reason, location, ..
        } => format!("SKIP {reason} ({location})"),
        Entry::Broken { problem, .. } => format!("BROKEN {problem}"),
    }
}
