//! `dep8 compare`: one suite on several testbeds at once, side by side.
//!
//! Each testbed gets its own `dep8 run` process (so that logs, output dirs,
//! testbeds and Ctrl-C stay apart), all started together; the matrix is
//! built from their `results.json` files.

use crate::report_html::{self, differs, names, text, word, Run};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The source to test (as for `dep8 run`).
    source: PathBuf,
    /// A testbed: a name from dep8.toml or ~/.config/dep8/config.toml, or
    /// as after `--` in `dep8 run` (e.g. "unshare --tarball T"); repeat for
    /// each testbed to compare (default: the configuration's
    /// defaults.compare).
    #[arg(long = "on", value_name = "NAME | BACKEND ARGS")]
    on: Vec<String>,
    /// Keep every run's output dir under this dir (default: a new temp dir).
    #[arg(short = 'o', long)]
    output_dir: Option<PathBuf>,
    /// Print the matrix as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the matrix and every run's report to this self-contained
    /// HTML file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Options for every `dep8 run` (e.g. `-- --timeout-test 60`).
    #[arg(last = true, value_name = "RUN OPTIONS")]
    run_options: Vec<String>,
}

pub async fn compare(args: CompareArgs, registry: &crate::Registry) -> i32 {
    // It reads the configuration files.
    let testbeds = match tokio::task::block_in_place(|| {
        crate::config::compare_testbeds(&args.on, &args.source, registry)
    }) {
        Ok(testbeds) => testbeds,
        Err(e) => return crate::error(e),
    };
    let root = match &args.output_dir {
        Some(dir) => dir.clone(),
        None => match tempfile::Builder::new().prefix("dep8.compare.").tempdir() {
            Ok(d) => d.keep(),
            Err(e) => return crate::error(format!("creating an output dir: {e}")),
        },
    };
    if let Err(e) = std::fs::create_dir_all(&root) {
        return crate::error(format!("{}: {e}", root.display()));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return crate::error(format!("cannot find the dep8 binary: {e}")),
    };
    say!(
        "dep8 compare: running on {} testbeds; output in {}",
        testbeds.len(),
        root.display()
    );
    // All runs start at once; then each is waited for in turn.
    let mut running = Vec::new();
    for (i, (label, argv)) in testbeds.into_iter().enumerate() {
        let dir = root.join(format!("{}-{}", i + 1, dir_name(&label, &argv)));
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("-o")
            .arg(&dir)
            .args(&args.run_options)
            .arg(&args.source)
            .arg("--")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(child) => running.push((label, dir, child)),
            Err(e) => return crate::error(format!("cannot start {}: {e}", exe.display())),
        }
    }
    let mut runs = Vec::new();
    for (label, dir, mut child) in running {
        let exit_code = child.wait().await.ok().and_then(|s| s.code());
        runs.push(Run::read(label, dir, exit_code));
    }
    if args.json {
        crate::emit(matrix_json(&runs) + "\n");
    } else {
        crate::emit(matrix_text(&runs));
    }
    let page = report_html::page("dep8 compare", &runs);
    for html in [Some(root.join("compare.html")), args.html]
        .into_iter()
        .flatten()
    {
        if let Err(e) = report_html::write(&html, &page) {
            say!("dep8 compare: cannot write {e}");
        }
    }
    runs.iter().fold(0, |code, c| {
        code | c.exit_code.unwrap_or(dep8_core::report::EXIT_UNEXPECTED)
    })
}

/// A run's dir name after its number: the testbed's name, or its backend.
fn dir_name(label: &str, argv: &[String]) -> String {
    let name = if label.contains(' ') { &argv[0] } else { label };
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn matrix_text(runs: &[Run]) -> String {
    let width = 20;
    let mut out = format!("{:<width$}", "test");
    for i in 0..runs.len() {
        out.push_str(&format!(" {:<8}", format!("[{}]", i + 1)));
    }
    out.push('\n');
    for name in names(runs) {
        out.push_str(&format!("{name:<width$}"));
        for c in runs {
            out.push_str(&format!(" {:<8}", word(c, name)));
        }
        if differs(runs, name) {
            out.push_str(" <- differs");
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, c) in runs.iter().enumerate() {
        let code = c.exit_code.map_or("none".to_string(), |c| c.to_string());
        out.push_str(&format!(
            "[{}] {} (exit {code}): {}\n",
            i + 1,
            c.label,
            c.dir.display()
        ));
    }
    out
}

fn matrix_json(runs: &[Run]) -> String {
    let doc = serde_json::json!({
        "testbeds": runs.iter().map(|c| serde_json::json!({
            "testbed": c.label,
            "exit_code": c.exit_code,
            "output_dir": c.dir,
        })).collect::<Vec<_>>(),
        "tests": names(runs).iter().map(|name| serde_json::json!({
            "name": name,
            "results": runs.iter().map(|c| text(c, name)).collect::<Vec<_>>(),
            "differs": differs(runs, name),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
