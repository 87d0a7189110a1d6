//! dep8 as a drop-in `autopkgtest`: the command line autopkgtest 5.49 takes
//! (`@file` argument files, the deprecated `---` separator, virt servers
//! named `autopkgtest-virt-NAME`), turned into `dep8 run`'s.

use dep8_core::error::Error;
use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The program name that makes dep8 behave as autopkgtest.
pub const PROGRAM: &str = "autopkgtest";

/// The `dep8 run` flag the `autopkgtest` entry point implies: on the host
/// (`null`), change it as autopkgtest does.
pub const ON_HOST_AS_AUTOPKGTEST: &str = "--on-host-as-autopkgtest";

/// The command line as `dep8` reads it. Started as `autopkgtest` (a symlink
/// to dep8), the arguments are autopkgtest's: they become `dep8 run
/// --on-host-as-autopkgtest ...`. For `run`, `@FILE` arguments are expanded and `---`
/// is taken for `--`, as autopkgtest does. An argument file that cannot be
/// read is a usage error.
pub fn command_line(args: impl Iterator<Item = OsString>) -> Result<Vec<OsString>, Error> {
    let mut args: Vec<_> = args.collect();
    if called_as_autopkgtest(args.first()) {
        args.splice(1..1, ["run".into(), ON_HOST_AS_AUTOPKGTEST.into()]);
    }
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new("run")) {
        return Ok(args);
    }
    let mut expanded = args[..2].to_vec();
    expand_arg_files(&args[2..], &mut expanded, 0)?;
    if !expanded.iter().any(|a| a == "--") {
        if let Some(sep) = expanded.iter().position(|a| a == "---") {
            eprintln!(
                "{PROGRAM}: WARNING: Using --- to separate virt server arguments is deprecated; use -- instead"
            );
            expanded[sep] = "--".into();
        }
    }
    Ok(expanded)
}

/// Whether dep8 was started as `autopkgtest`, by its program path.
pub fn called_as_autopkgtest(program: Option<&OsString>) -> bool {
    program
        .map(Path::new)
        .and_then(Path::file_name)
        .is_some_and(|name| name == OsStr::new(PROGRAM))
}

/// `dep8 run`'s own options autopkgtest does not have: the `autopkgtest`
/// entry point refuses them, as autopkgtest would.
pub fn refuse_dep8_options(args: &crate::cmd::run::RunArgs) -> Result<(), Error> {
    match args.html() {
        Some(_) => Err(Error::Usage(format!(
            "unrecognized arguments: --html (an option of dep8 run, not of {PROGRAM})"
        ))),
        None => Ok(()),
    }
}

/// argparse's `fromfile_prefix_chars='@'` as autopkgtest sets it up: each
/// line of FILE is one argument, trimmed; files may name further files.
fn expand_arg_files(args: &[OsString], out: &mut Vec<OsString>, depth: u8) -> Result<(), Error> {
    for arg in args {
        let Some(file) = arg.to_str().and_then(|a| a.strip_prefix('@')) else {
            out.push(arg.clone());
            continue;
        };
        if depth > 16 {
            return Err(Error::Usage(format!(
                "@{file}: argument files nested too deep"
            )));
        }
        let text =
            std::fs::read_to_string(file).map_err(|e| Error::Usage(format!("@{file}: {e}")))?;
        let lines: Vec<OsString> = text.lines().map(|l| l.trim().into()).collect();
        expand_arg_files(&lines, out, depth + 1)?;
    }
    Ok(())
}

/// autopkgtest's name for a virt server: `NAME` and `autopkgtest-virt-NAME`
/// are the same one, and a path is a program.
pub fn native_name(name: &str, is_native: impl Fn(&str) -> bool) -> &str {
    match name.strip_prefix("autopkgtest-virt-") {
        Some(short) if is_native(short) => short,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> Vec<String> {
        command_line(args.iter().map(OsString::from))
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn autopkgtest_becomes_run_with_host_changes() {
        assert_eq!(
            line(&["/usr/local/bin/autopkgtest", "-B", "x", "--", "null"]),
            [
                "/usr/local/bin/autopkgtest",
                "run",
                ON_HOST_AS_AUTOPKGTEST,
                "-B",
                "x",
                "--",
                "null"
            ]
        );
        assert_eq!(line(&["dep8", "check", "@x"]), ["dep8", "check", "@x"]);
    }

    #[test]
    fn arg_files_and_three_dashes() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::write(&inner, "--env\nA=b c\n").unwrap();
        let outer = dir.path().join("outer");
        std::fs::write(&outer, format!("  -B \n@{}\n", inner.display())).unwrap();
        assert_eq!(
            line(&[
                "dep8",
                "run",
                &format!("@{}", outer.display()),
                "src",
                "---",
                "null"
            ]),
            ["dep8", "run", "-B", "--env", "A=b c", "src", "--", "null"]
        );
        assert!(matches!(
            command_line(["dep8", "run", "@/nonexistent"].iter().map(OsString::from)),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn virt_server_names() {
        let native = |n: &str| n == "null";
        assert_eq!(native_name("autopkgtest-virt-null", native), "null");
        assert_eq!(native_name("null", native), "null");
        assert_eq!(
            native_name("autopkgtest-virt-lxd", native),
            "autopkgtest-virt-lxd"
        );
    }
}
