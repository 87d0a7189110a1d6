//! The shell a test runs in, as pure functions: its environment, the
//! prologue autopkgtest runs before every test, the preparation of its
//! dirs, and the command line that may survive a reboot.

use crate::control::Test;
use crate::reboot;
use crate::restriction::Restriction;
use shell_words::quote;

/// A `Test-Command` longer than this reaches the testbed as a file: one
/// argument may hold at most 128 KiB (Linux's MAX_ARG_STRLEN), and the
/// script that runs the test holds more than the command.
pub const LONG_COMMAND: usize = 32 * 1024;

/// How much of a command the log shows.
const LOGGED_COMMAND: usize = 1024;

/// `command`, cut after [`LOGGED_COMMAND`] bytes with a note of its size.
pub fn abridged(command: &str) -> std::borrow::Cow<'_, str> {
    if command.len() <= LOGGED_COMMAND {
        return command.into();
    }
    let mut end = LOGGED_COMMAND;
    while !command.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &command[..end], command.len()).into()
}

/// Where a test's files live in the testbed.
#[derive(Clone, Debug)]
pub struct TestDirs {
    /// The source tree.
    pub tree: String,
    /// `AUTOPKGTEST_TMP`.
    pub tmp: String,
    /// `AUTOPKGTEST_ARTIFACTS`.
    pub artifacts: String,
    /// Where a long `Test-Command` is copied.
    pub command_file: String,
}

impl TestDirs {
    pub fn new(scratch: &str, tree: &str, test: &str) -> TestDirs {
        TestDirs {
            tree: tree.to_string(),
            tmp: format!("{scratch}/autopkgtest_tmp"),
            artifacts: format!("{scratch}/{test}-artifacts"),
            command_file: format!("{scratch}/{test}-command"),
        }
    }
}

/// What a test's environment is made of, besides its dirs.
#[derive(Clone, Debug, Default)]
pub struct EnvFacts {
    /// The testbed's dpkg architecture.
    pub arch: String,
    /// `parallel=N` for DEB_BUILD_OPTIONS.
    pub parallel: String,
    /// The normal user, told to needs-root tests.
    pub normal_user: Option<String>,
    /// `/dev/baseimage`'s path and kind, where the testbed has one.
    pub baseimage: Option<(String, String)>,
    /// `--env`, last so that it wins.
    pub extra: Vec<(String, String)>,
}

/// The variables autopkgtest 5.49 gives a test, in its order.
pub fn test_env(test: &Test, dirs: &TestDirs, facts: &EnvFacts) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("AUTOPKGTEST_TMP", dirs.tmp.clone()),
        ("ADTTMP", dirs.tmp.clone()),
        ("AUTOPKGTEST_ARTIFACTS", dirs.artifacts.clone()),
        ("ADT_ARTIFACTS", dirs.artifacts.clone()),
        ("AUTOPKGTEST_TESTBED_ARCH", facts.arch.clone()),
        ("AUTOPKGTEST_TEST_ARCH", facts.arch.clone()),
        ("DEBIAN_FRONTEND", "noninteractive".into()),
        ("LANG", "C.UTF-8".into()),
        ("DEB_BUILD_OPTIONS", format!("parallel={}", facts.parallel)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if test.has(&Restriction::NeedsRoot) {
        if let Some(u) = &facts.normal_user {
            env.push(("AUTOPKGTEST_NORMAL_USER".into(), u.clone()));
            env.push(("ADT_NORMAL_USER".into(), u.clone()));
        }
    }
    if let Some((path, kind)) = &facts.baseimage {
        env.push(("DEP8_BASEIMAGE".into(), path.clone()));
        env.push(("DEP8_BASEIMAGE_KIND".into(), kind.clone()));
    }
    env.extend(facts.extra.iter().cloned());
    env
}

/// Like autopkgtest: a login-ish environment (`/etc/profile` and
/// `~/.profile` sourced, the locale variables unset), the test's
/// variables, then `cd` to the tree.
pub fn prologue(env: &[(String, String)], tree: &str) -> String {
    format!(
        "export USER=$(id -nu); . /etc/profile >/dev/null 2>&1 || true; . ~/.profile >/dev/null 2>&1 || true; \
         unset LANGUAGE LC_CTYPE LC_NUMERIC LC_TIME LC_COLLATE LC_MONETARY LC_MESSAGES LC_PAPER LC_NAME \
         LC_ADDRESS LC_TELEPHONE LC_MEASUREMENT LC_IDENTIFICATION LC_ALL; {}cd {}; ",
        env.iter()
            .map(|(k, v)| format!("export {}; ", quote(&format!("{k}={v}"))))
            .collect::<String>(),
        quote(tree),
    )
}

/// The exports a test sees after a reboot it asked for with `mark`.
pub fn reboot_mark_env(mark: Option<&str>) -> String {
    mark.map_or(String::new(), |m| {
        let m = quote(m);
        format!("export AUTOPKGTEST_REBOOT_MARK={m}; export ADT_REBOOT_MARK={m}; ")
    })
}

/// How the test is started: its script, or its command (from a file when
/// it is long: `long_command_in_file`).
pub fn test_command(test: &Test, dirs: &TestDirs, long_command_in_file: bool) -> String {
    match (&test.path, &test.command) {
        (Some(p), _) => quote(&format!("{}/{p}", dirs.tree)).into_owned(),
        (None, Some(_)) if long_command_in_file => {
            format!("bash -e {}", quote(&dirs.command_file))
        }
        (None, Some(c)) => format!("bash -ec {}", quote(c)),
        (None, None) => unreachable!("a parsed test has a path or a command"),
    }
}

/// The last words of the test's script: `exec COMMAND`. Where the testbed
/// can reboot, a shell stays the test's parent and records its pid so that
/// /tmp/autopkgtest-reboot can kill just the test; the shell's own stderr
/// (its "Killed" when a reboot request kills the test) is not the
/// test's, as with autopkgtest's wrapper.
pub fn exec_line(command: &str, can_reboot: bool) -> String {
    if can_reboot {
        let inner = format!(
            "echo $$ > {}; (exec {command} 2>&3 3>&-); exit $?",
            reboot::SCRIPT_PID_FILE
        );
        format!("exec sh -c {} 3>&2 2>/dev/null", quote(&inner))
    } else {
        format!("exec {command}")
    }
}

/// The mode of the artifacts dir, as autopkgtest 5.48's wrapper: world
/// writable only for a test that declares isolation (or `--insecure`).
pub fn artifacts_mode(test: &Test, insecure: bool) -> &'static str {
    if insecure
        || test.has(&Restriction::IsolationContainer)
        || test.has(&Restriction::IsolationMachine)
    {
        "1777"
    } else {
        "755"
    }
}

/// The root shell step that prepares a test: a fresh `AUTOPKGTEST_TMP`
/// and artifacts dir owned by the test's `user`, the tree handed over for
/// rw-build-tree, the script made executable, reboot leftovers removed.
pub fn prepare_script(
    test: &Test,
    dirs: &TestDirs,
    user: Option<&str>,
    insecure: bool,
    can_reboot: bool,
) -> String {
    let (tmp, artifacts) = (quote(&dirs.tmp), quote(&dirs.artifacts));
    let mut script = format!(
        "set -e; rm -rf {tmp}; mkdir -p -m {} {artifacts}; mkdir -p -m 755 {tmp}",
        artifacts_mode(test, insecure)
    );
    if can_reboot {
        script += &format!(
            "; rm -f {} {} {}",
            reboot::SCRIPT_PID_FILE,
            reboot::MARK_FILE,
            reboot::PREPARE_MARK_FILE
        );
    }
    if let Some(u) = user {
        script += &format!("; chown {} {artifacts} {tmp}", quote(u));
        if test.has(&Restriction::RwBuildTree) {
            script += &format!("; chown -R {} -- {}", quote(u), quote(&dirs.tree));
        }
    }
    if let Some(p) = &test.path {
        script += &format!("; chmod +x -- {}", quote(&format!("{}/{p}", dirs.tree)));
    }
    script
}

/// The root shell step after a test: its dirs and command file removed.
pub fn cleanup_script(dirs: &TestDirs) -> String {
    format!(
        "rm -rf -- {} {} {}",
        quote(&dirs.artifacts),
        quote(&dirs.tmp),
        quote(&dirs.command_file)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> TestDirs {
        TestDirs::new("/s", "/s/src", "t")
    }

    #[test]
    fn environment_in_autopkgtests_order_with_env_last() {
        let mut test = Test::for_command("t", "true");
        test.restrictions.push(Restriction::NeedsRoot);
        let facts = EnvFacts {
            arch: "amd64".into(),
            parallel: "4".into(),
            normal_user: Some("user".into()),
            baseimage: None,
            extra: vec![("LANG".into(), "C".into())],
        };
        let env = test_env(&test, &dirs(), &facts);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names[0], "AUTOPKGTEST_TMP");
        assert!(env.contains(&("AUTOPKGTEST_NORMAL_USER".into(), "user".into())));
        assert!(env.contains(&("DEB_BUILD_OPTIONS".into(), "parallel=4".into())));
        assert_eq!(env.last().unwrap(), &("LANG".into(), "C".into()));
        assert!(!test_env(&Test::for_command("t", "true"), &dirs(), &facts)
            .iter()
            .any(|(k, _)| k == "AUTOPKGTEST_NORMAL_USER"));
    }

    #[test]
    fn prologue_quotes_everything_it_exports() {
        let env = vec![("A".to_string(), "it's".to_string())];
        let p = prologue(&env, "/tree with space");
        assert!(p.contains("export 'A=it'\\''s'; "), "{p}");
        assert!(p.ends_with("cd '/tree with space'; "), "{p}");
        assert!(p.starts_with("export USER=$(id -nu); . /etc/profile"));
    }

    #[test]
    fn commands_and_reboot_wrapper() {
        let long = Test::for_command("t", "echo hi");
        assert_eq!(test_command(&long, &dirs(), false), "bash -ec 'echo hi'");
        assert_eq!(test_command(&long, &dirs(), true), "bash -e /s/t-command");
        assert_eq!(exec_line("x", false), "exec x");
        assert!(exec_line("x", true).contains(reboot::SCRIPT_PID_FILE));
        assert_eq!(reboot_mark_env(None), "");
        assert!(reboot_mark_env(Some("m 1")).contains("AUTOPKGTEST_REBOOT_MARK='m 1'"));
    }

    #[test]
    fn prepare_hands_dirs_to_the_user() {
        let mut test = Test::for_command("t", "true");
        test.restrictions.push(Restriction::RwBuildTree);
        let s = prepare_script(&test, &dirs(), Some("u"), false, false);
        assert_eq!(
            s,
            "set -e; rm -rf /s/autopkgtest_tmp; mkdir -p -m 755 /s/t-artifacts; \
             mkdir -p -m 755 /s/autopkgtest_tmp; chown u /s/t-artifacts /s/autopkgtest_tmp; \
             chown -R u -- /s/src"
        );
        test.restrictions.push(Restriction::IsolationContainer);
        assert!(prepare_script(&test, &dirs(), None, false, true).contains("-m 1777"));
    }

    #[test]
    fn long_commands_are_abridged_in_the_log() {
        assert_eq!(abridged("short"), "short");
        let long = "é".repeat(1000);
        let cut = abridged(&long);
        assert!(cut.ends_with("... (2000 bytes in all)"), "{cut}");
    }
}
