//! `dep8 compare`: one suite on several testbeds at once, side by side.
//!
//! Each testbed gets its own `dep8 run` process (so that logs, output dirs,
//! testbeds and Ctrl-C stay apart), all started together; the matrix is
//! built from their `results.json` files.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The source to test (as for `dep8 run`).
    source: PathBuf,
    /// A testbed, as after `--` in `dep8 run` (e.g. "unshare --tarball T");
    /// repeat for each testbed to compare.
    #[arg(long = "on", value_name = "BACKEND ARGS", required = true)]
    on: Vec<String>,
    /// Keep every run's output dir under this dir (default: a new temp dir).
    #[arg(short = 'o', long)]
    output_dir: Option<PathBuf>,
    /// Print the matrix as JSON.
    #[arg(long)]
    json: bool,
    /// Options for every `dep8 run` (e.g. `-- --timeout-test 60`).
    #[arg(last = true, value_name = "RUN OPTIONS")]
    run_options: Vec<String>,
}

/// One testbed's column.
struct Column {
    label: String,
    dir: PathBuf,
    exit_code: Option<i32>,
    results: BTreeMap<String, String>,
    /// Test names in the order the run reported them.
    order: Vec<String>,
}

pub async fn compare(args: CompareArgs) -> i32 {
    let specs: Vec<Vec<String>> = match args
        .on
        .iter()
        .map(|s| shell_words::split(s).map_err(|e| format!("--on {s:?}: {e}")))
        .collect()
    {
        Ok(specs) => specs,
        Err(e) => return super::error(e),
    };
    if let Some(empty) = args.on.iter().zip(&specs).find(|(_, s)| s.is_empty()) {
        return super::error(format!("--on {:?}: names no backend", empty.0));
    }
    let root = match &args.output_dir {
        Some(dir) => dir.clone(),
        None => match tempfile::Builder::new().prefix("dep8.compare.").tempdir() {
            Ok(d) => d.keep(),
            Err(e) => return super::error(format!("creating an output dir: {e}")),
        },
    };
    if let Err(e) = std::fs::create_dir_all(&root) {
        return super::error(format!("{}: {e}", root.display()));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return super::error(format!("cannot find the dep8 binary: {e}")),
    };
    say!(
        "dep8 compare: running on {} testbeds; output in {}",
        specs.len(),
        root.display()
    );
    // All runs start at once; then each is waited for in turn.
    let mut running = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let dir = root.join(format!("{}-{}", i + 1, spec[0]));
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("-o")
            .arg(&dir)
            .args(&args.run_options)
            .arg(&args.source)
            .arg("--")
            .args(spec)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(child) => running.push((spec.join(" "), dir, child)),
            Err(e) => return super::error(format!("cannot start {}: {e}", exe.display())),
        }
    }
    let mut columns = Vec::new();
    for (label, dir, mut child) in running {
        let exit_code = child.wait().await.ok().and_then(|s| s.code());
        let (order, results) = results_of(&dir);
        columns.push(Column {
            results,
            order,
            label,
            dir,
            exit_code,
        });
    }
    if args.json {
        super::emit(matrix_json(&columns) + "\n");
    } else {
        super::emit(matrix_text(&columns));
    }
    let html = root.join("compare.html");
    if let Err(e) = std::fs::write(&html, matrix_html(&columns)) {
        say!("dep8 compare: cannot write {}: {e}", html.display());
    }
    columns.iter().fold(0, |code, c| {
        code | c.exit_code.unwrap_or(super::EXIT_UNEXPECTED)
    })
}

/// The tests in run order and `test -> summary text`, from a run's
/// results.json (or its summary when the run died before writing any).
fn results_of(dir: &Path) -> (Vec<String>, BTreeMap<String, String>) {
    let doc: Value = std::fs::read_to_string(dir.join("results.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let mut order = Vec::new();
    let mut results = BTreeMap::new();
    for test in doc["tests"].as_array().into_iter().flatten() {
        let name = test["name"].as_str().unwrap_or("?").to_string();
        let word = test["result"].as_str().unwrap_or("?");
        let text = match test["reason"].as_str() {
            Some(reason) => format!("{word} {reason}"),
            None => word.to_string(),
        };
        order.push(name.clone());
        results.insert(name, text);
    }
    if results.is_empty() {
        let summary = std::fs::read_to_string(dir.join("summary")).unwrap_or_default();
        order.push("*".into());
        results.insert(
            "*".into(),
            summary.lines().next().unwrap_or("no results").to_string(),
        );
    }
    (order, results)
}

/// Every test name in any column, in the order the runs reported them.
fn names(columns: &[Column]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for name in columns.iter().flat_map(|c| &c.order) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
}

/// The result word of a cell (`PASS`, `SKIP`, ..., `-` when absent).
fn word<'a>(column: &'a Column, name: &str) -> &'a str {
    column
        .results
        .get(name)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("-")
}

fn differs(columns: &[Column], name: &str) -> bool {
    columns
        .windows(2)
        .any(|w| word(&w[0], name) != word(&w[1], name))
}

fn matrix_text(columns: &[Column]) -> String {
    let width = 20;
    let mut out = format!("{:<width$}", "test");
    for i in 0..columns.len() {
        out.push_str(&format!(" {:<8}", format!("[{}]", i + 1)));
    }
    out.push('\n');
    for name in names(columns) {
        out.push_str(&format!("{name:<width$}"));
        for c in columns {
            out.push_str(&format!(" {:<8}", word(c, name)));
        }
        if differs(columns, name) {
            out.push_str(" <- differs");
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, c) in columns.iter().enumerate() {
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

fn matrix_json(columns: &[Column]) -> String {
    let doc = serde_json::json!({
        "testbeds": columns.iter().map(|c| serde_json::json!({
            "testbed": c.label,
            "exit_code": c.exit_code,
            "output_dir": c.dir,
        })).collect::<Vec<_>>(),
        "tests": names(columns).iter().map(|name| serde_json::json!({
            "name": name,
            "results": columns.iter().map(|c| c.results.get(*name)).collect::<Vec<_>>(),
            "differs": differs(columns, name),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn matrix_html(columns: &[Column]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut html = String::from(
        "<!DOCTYPE html>\n<meta charset=\"utf-8\"><title>dep8 compare</title>\n\
         <style>td,th{padding:2px 8px;text-align:left}tr.differs{background:#fdd}\
         .PASS{color:#070}.FAIL{color:#b00}.SKIP{color:#777}</style>\n<table>\n<tr><th>test</th>",
    );
    for c in columns {
        html.push_str(&format!("<th>{}</th>", esc(&c.label)));
    }
    html.push_str("</tr>\n");
    for name in names(columns) {
        let class = if differs(columns, name) {
            " class=\"differs\""
        } else {
            ""
        };
        html.push_str(&format!("<tr{class}><td>{}</td>", esc(name)));
        for c in columns {
            let text = c.results.get(name).map_or("-", String::as_str);
            html.push_str(&format!(
                "<td class=\"{}\">{}</td>",
                word(c, name),
                esc(text)
            ));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}
