//! Named testbeds and defaults from `dep8.toml` (the source tree's) and
//! `~/.config/dep8/config.toml` (here under `$XDG_CONFIG_HOME`), used by
//! `dep8 run --testbed NAME`, `dep8 run` without a testbed, `dep8
//! compare --on NAME`, and `dep8 check` and `dep8 explain` alike; flags
//! override them; a bad file is named with its line and key. Every run is a real `dep8 run` on the host (`null`) or on
//! dep8's own virt server through `external`, whose arguments come from
//! the file.

use dep8_tests::e2e::{dep8_bin, source_tree, write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A source tree with one passing test, and an empty user config dir.
struct Project {
    dir: tempfile::TempDir,
    tree: PathBuf,
}

impl Project {
    fn new() -> Project {
        Project::with_tests("Test-Command: true\nDepends:\n")
    }

    /// A project whose debian/tests/control is `control`.
    fn with_tests(control: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let tree = source_tree(dir.path(), "configured", control);
        std::fs::create_dir(dir.path().join("xdg")).unwrap();
        Project { dir, tree }
    }

    fn project_file(&self, text: &str) {
        write(&self.tree.join("dep8.toml"), text);
    }

    fn user_file(&self, text: &str) {
        write(&self.dir.path().join("xdg/dep8/config.toml"), text);
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `dep8 ARGS...` with this project's user config dir.
    fn dep8(&self, args: &[&str]) -> Output {
        Command::new(dep8_bin())
            .args(args)
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .output()
            .unwrap()
    }

    /// `dep8 run -o OUT SRC EXTRA...`; returns the testbed results.json
    /// names, after checking the run passed.
    fn run(&self, out: &str, extra: &[&str]) -> String {
        let out = self.out(out);
        // -B: the tests, not a build of the package.
        let mut args = vec![
            "run",
            "-B",
            "-o",
            out.to_str().unwrap(),
            self.tree.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let run = self.dep8(&args);
        assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
        testbed_of(&out)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn testbed_of(out: &Path) -> String {
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    results["testbed"].as_str().unwrap().to_string()
}

/// A testbed whose arguments show in results.json: dep8's virt server.
fn external_testbed(name: &str) -> String {
    format!(
        "[testbed.{name}]\nbackend = \"external\"\nargs = [\"{}\", \"virt-server\", \"null\"]\n",
        dep8_bin().display()
    )
}

#[test]
fn run_takes_a_named_testbed_with_its_arguments() {
    let p = Project::new();
    p.project_file(&external_testbed("served"));
    let testbed = p.run("out", &["--testbed", "served"]);
    assert_eq!(
        testbed,
        format!("external {} virt-server null", dep8_bin().display())
    );
}

#[test]
fn run_without_a_testbed_takes_the_default_and_flags_override_it() {
    let p = Project::new();
    p.project_file(&format!(
        "[defaults]\ntestbed = \"served\"\n\n{}",
        external_testbed("served")
    ));
    assert!(p.run("default", &[]).starts_with("external "));
    assert_eq!(p.run("flag", &["--", "null"]), "null");
    assert_eq!(p.run("name", &["--testbed", "null"]), "null");
}

#[test]
fn the_project_file_goes_over_the_users() {
    let p = Project::new();
    p.user_file(&format!(
        "[defaults]\ntestbed = \"mine\"\n\n{}\n[testbed.host]\nbackend = \"null\"\n",
        external_testbed("mine")
    ));
    // The user's default names the user's testbed.
    assert!(p.run("user", &[]).starts_with("external "));
    // The project redefines it: the project's wins.
    p.project_file("[testbed.mine]\nbackend = \"null\"\n");
    assert_eq!(p.run("project", &[]), "null");
}

#[test]
fn compare_takes_named_testbeds_and_its_default_set() {
    let p = Project::new();
    p.project_file(&format!(
        "[defaults]\ncompare = [\"host\", \"served\"]\n\n[testbed.host]\nbackend = \"null\"\n\n{}",
        external_testbed("served")
    ));
    let root = p.out("compare");
    let compare = p.dep8(&[
        "compare",
        p.tree.to_str().unwrap(),
        "-o",
        root.to_str().unwrap(),
        "--",
        "-B",
    ]);
    assert_eq!(compare.status.code(), Some(0), "{}", stderr(&compare));
    let matrix = String::from_utf8_lossy(&compare.stdout);
    assert!(matrix.contains("[1] host (exit 0)"), "{matrix}");
    assert!(matrix.contains("[2] served (exit 0)"), "{matrix}");
    assert_eq!(testbed_of(&root.join("1-host")), "null");
    assert!(testbed_of(&root.join("2-served")).starts_with("external "));

    // --on overrides the default set, and takes names and backends alike.
    let root = p.out("compare-on");
    let compare = p.dep8(&[
        "compare",
        p.tree.to_str().unwrap(),
        "-o",
        root.to_str().unwrap(),
        "--on",
        "served",
        "--on",
        "null",
        "--",
        "-B",
    ]);
    assert_eq!(compare.status.code(), Some(0), "{}", stderr(&compare));
    assert!(testbed_of(&root.join("1-served")).starts_with("external "));
    assert_eq!(testbed_of(&root.join("2-null")), "null");
}

/// `dep8 run --testbed x` with `text` as the project file: exit 20 and the
/// error message.
fn refused(text: &str) -> String {
    let p = Project::new();
    p.project_file(text);
    let out = p.out("out");
    let run = p.dep8(&[
        "run",
        "-o",
        out.to_str().unwrap(),
        p.tree.to_str().unwrap(),
        "--testbed",
        "x",
    ]);
    assert_eq!(run.status.code(), Some(20), "{}", stderr(&run));
    stderr(&run)
}

#[test]
fn bad_files_are_named_with_line_and_key() {
    let e = refused("[testbed.x]\nbackend = \"null\"\nargz = [\"-d\"]\n");
    assert!(e.contains("dep8.toml: TOML parse error at line 3"), "{e}");
    assert!(
        e.contains("unknown field `argz`, expected `backend` or `args`"),
        "{e}"
    );

    let e = refused("# comment\n[testbed.x]\nbackend = \"nonesuch\"\n");
    assert!(
        e.contains("dep8.toml:3: testbed.x.backend: unknown backend \"nonesuch\""),
        "{e}"
    );

    let e = refused("[defaults]\ntestbed = \"nowhere\"\n");
    assert!(
        e.contains("dep8.toml:2: defaults.testbed: \"nowhere\""),
        "{e}"
    );

    let e = refused("[defaults]\ntestbed = 3\n");
    assert!(e.contains("dep8.toml: TOML parse error at line 2"), "{e}");
    assert!(
        e.contains("invalid type: integer `3`, expected a string"),
        "{e}"
    );
}

#[test]
fn compare_without_testbeds_says_where_to_name_them() {
    let p = Project::new();
    let compare = p.dep8(&["compare", p.tree.to_str().unwrap()]);
    assert_eq!(compare.status.code(), Some(20));
    assert!(
        stderr(&compare)
            .contains("no testbeds to compare: give --on BACKEND... or set defaults.compare"),
        "{}",
        stderr(&compare)
    );
}

/// A project whose one test runs only on a machine (qemu, ssh), and whose
/// dep8.toml names a qemu testbed `vm` (plus `extra`); neither check nor
/// explain opens it.
fn machine_project(extra: &str) -> Project {
    let p = Project::with_tests("Test-Command: true\nDepends:\nRestrictions: isolation-machine\n");
    let disk = p.out("disk.qcow2");
    write(&disk, "");
    p.project_file(&format!(
        "{extra}\n[testbed.vm]\nbackend = \"qemu\"\nargs = [\"{}\"]\n",
        disk.display()
    ));
    p
}

/// What `dep8 ARGS... SRC` printed, after checking it exited 0.
fn printed(p: &Project, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.insert(1, p.tree.to_str().unwrap());
    let out = p.dep8(&all);
    assert_eq!(out.status.code(), Some(0), "{all:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const RUNS_ON_CHECK: &str = "command1             command: true  [runs]";
const SKIPPED_ON_CHECK: &str = "[SKIP Test restriction \"isolation-machine\" requires";
const RUNS_ON_EXPLAIN: &str = "command1             RUN";
const SKIPPED_ON_EXPLAIN: &str = "command1             SKIP Test restriction \"isolation-machine\"";

#[test]
fn check_and_explain_take_a_named_testbed() {
    let p = machine_project("");
    assert!(printed(&p, &["check", "--testbed", "vm"]).contains(RUNS_ON_CHECK));
    assert!(printed(&p, &["check", "--testbed", "null"]).contains(SKIPPED_ON_CHECK));
    // No testbed and no default: check lists the tests without verdicts.
    assert_eq!(
        printed(&p, &["check"]),
        "command1             command: true\n"
    );

    let explained = printed(&p, &["explain", "--testbed", "vm"]);
    assert!(
        explained.starts_with("testbed qemu can provide: "),
        "{explained}"
    );
    assert!(explained.contains(RUNS_ON_EXPLAIN), "{explained}");
    let explained = printed(&p, &["explain"]);
    assert!(
        explained.starts_with("testbed null can provide: "),
        "{explained}"
    );
    assert!(explained.contains(SKIPPED_ON_EXPLAIN), "{explained}");
}

#[test]
fn check_and_explain_take_the_default_and_flags_override_it() {
    let p = machine_project("[defaults]\ntestbed = \"vm\"\n");
    assert!(printed(&p, &["check"]).contains(RUNS_ON_CHECK));
    assert!(printed(&p, &["check", "--testbed", "null"]).contains(SKIPPED_ON_CHECK));
    assert!(printed(&p, &["explain"]).contains(RUNS_ON_EXPLAIN));
    assert!(printed(&p, &["explain", "--testbed", "null"]).contains(SKIPPED_ON_EXPLAIN));
    assert!(printed(&p, &["explain", "--", "null"]).contains(SKIPPED_ON_EXPLAIN));
}

#[test]
fn check_and_explain_refuse_a_bad_file() {
    let p = Project::new();
    p.project_file("[defaults]\ntestbed = \"nowhere\"\n");
    for command in ["check", "explain"] {
        let out = p.dep8(&[command, p.tree.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(20), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("dep8.toml:2: defaults.testbed: \"nowhere\""),
            "{command}: {}",
            stderr(&out)
        );
    }
}
