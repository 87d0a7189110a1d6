//! One test's turn: its dependencies, its dirs, its run (through the
//! reboots it asks for), its result, its artifacts.

use super::judge::{judge, Ended};
use super::packages::Provision;
use super::script::{self, EnvFacts, TestDirs};
use super::{timed, Run, ShellPolicy};
use crate::capability::Capability;
use crate::control::Test;
use crate::error::Error;
use crate::events::{Event, Wait};
use crate::reboot;
use crate::report::Outcome;
use crate::restriction::Restriction;
use crate::testbed::{Cut, ExecOutcome, ExecRequest, Output, Testbed, TestbedError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a test's command came back.
enum TestRun {
    /// It ended (maybe killed by `/tmp/autopkgtest-reboot`).
    Ended(ExecOutcome),
    /// The test called `/tmp/autopkgtest-reboot-prepare` with this mark
    /// and is rebooting the testbed.
    PreparedReboot(String),
}

/// A test's result and the summary lines under it.
type Judged = (Outcome, Vec<String>);

impl Run<'_> {
    /// Runs `test` from the tree at `tree` in the testbed.
    pub(super) async fn one(
        &mut self,
        tb: &mut dyn Testbed,
        test: &Test,
        tree: &str,
    ) -> Result<Judged, Error> {
        let name = &test.name;
        self.events.info(format!("test {name}: preparing testbed"));
        if let Some(result) = self.provide_depends(tb, test).await? {
            if self.opts.shell != ShellPolicy::Never && result.0 == Outcome::BadPackage {
                self.shell(tb, "/", &[]).await?;
            }
            return Ok(result);
        }
        self.packages.touched();
        // As autopkgtest: every test that ran has its -packages file.
        let packages = self.opts.output_dir.join(format!("{name}-packages"));
        if !packages.exists() {
            if let Err(e) = tokio::fs::write(&packages, "").await {
                self.events
                    .warning(format!("cannot write {}: {e}", packages.display()));
            }
        }
        let caps = tb.capabilities().clone();
        let user = if test.has(&Restriction::NeedsRoot) {
            None
        } else {
            self.normal_user(&caps)
        };
        let user = user.filter(|_| caps.has(Capability::RootOnTestbed));
        if test.has(&Restriction::NeedsSudo) {
            if let Some(reason) = self.check_sudo(tb, user.as_deref()).await? {
                return Ok((Outcome::Skip(reason), vec![]));
            }
        }
        if let Some(path) = &test.path {
            if let Err(why) = test_path_inside(self.source(), path).await {
                return Ok((Outcome::BadPackage, vec![format!("badpkg: {why}")]));
            }
        }

        let dirs = TestDirs::new(tb.scratch(), tree, name);
        let can_reboot = reboot::available(&caps);
        let prepare =
            script::prepare_script(test, &dirs, user.as_deref(), self.opts.insecure, can_reboot);
        self.shell_step(tb, &prepare, &format!("preparing test {name}"))
            .await?;
        let facts = EnvFacts {
            arch: self.probe.arch.clone().unwrap_or_default(),
            parallel: self.parallel(),
            normal_user: self.normal_user(&caps),
            baseimage: caps
                .baseimage
                .as_ref()
                .map(|b| (b.path.clone(), b.kind.to_string())),
            extra: self.opts.env.clone(),
        };
        let env = script::test_env(test, &dirs, &facts);
        let long = test
            .command
            .as_ref()
            .filter(|c| test.path.is_none() && c.len() > script::LONG_COMMAND);
        if let Some(command) = long {
            self.copy_text(tb, command, &dirs.command_file).await?;
        }
        let command = script::test_command(test, &dirs, long.is_some());
        let exec_line = script::exec_line(&command, can_reboot);
        let prologue = script::prologue(&env, tree);
        if let Some(c) = &test.command {
            self.events
                .info(format!("test {name}: {}", script::abridged(c)));
        }
        self.events
            .info(format!("test {name}: [-----------------------"));
        let stdout_path = self.opts.output_dir.join(format!("{name}-stdout"));
        let stderr_path = self.opts.output_dir.join(format!("{name}-stderr"));
        let tap = self.events.output_tap();
        let mut mark: Option<String> = None;
        let out = loop {
            let script = format!(
                "{prologue}{}{exec_line}",
                script::reboot_mark_env(mark.as_deref())
            );
            tracing::debug!("test {name}: {script}");
            let mut req = ExecRequest::new(["bash", "-c", &script])
                .stdout(Output::file(&stdout_path).with_tap(tap.clone()))
                .stderr(Output::file(&stderr_path).with_tap(tap.clone()))
                .timeout(self.within_global(self.opts.timeouts.test));
            req.user = user.clone();
            let next = match self.run_watched(tb, req, can_reboot, name).await? {
                TestRun::Ended(out) => {
                    if !can_reboot || out.timed_out || !reboot::killed(out.status) {
                        break out;
                    }
                    let Some(next) = timed(
                        self.opts.timeouts.short,
                        "reading the reboot mark",
                        reboot::take_mark(tb),
                    )
                    .await?
                    else {
                        break out;
                    };
                    self.events
                        .info(format!("test {name}: requested reboot with marker {next}"));
                    self.reboot_step(name, &next, tb.reboot()).await?;
                    next
                }
                TestRun::PreparedReboot(next) => {
                    self.reboot_step(name, &next, tb.await_reboot()).await?;
                    next
                }
            };
            timed(
                self.opts.timeouts.short,
                "preparing the testbed",
                reboot::install(tb),
            )
            .await?;
            self.opts
                .setup
                .boot(
                    tb,
                    self.normal_user(tb.capabilities()).as_deref(),
                    self.opts.timeouts.install,
                    self.events.output_tap(),
                )
                .await?;
            self.note_kernel(tb, name, &next).await?;
            mark = Some(next);
        };
        self.events
            .info(format!("test {name}: -----------------------]"));

        let stderr = first_line_if_any(&stderr_path).await;
        let allow_stderr = test.has(&Restriction::AllowStderr);
        let ended = Ended {
            code: out.status.code(),
            timed_out: out.timed_out,
            stderr: stderr.clone(),
        };
        let outcome = judge(test, &ended, self.opts.resolve.needs_internet);
        self.events.info(format!(
            "test {name}:  - - - - - - - - - - results - - - - - - - - - -"
        ));
        let failed = matches!(outcome, Outcome::Fail(_) | Outcome::Flaky(_));
        if self.opts.shell == ShellPolicy::Always
            || (self.opts.shell == ShellPolicy::OnFailure && failed)
        {
            let env = [
                format!("AUTOPKGTEST_ARTIFACTS={}", dirs.artifacts),
                format!("AUTOPKGTEST_TMP={}", dirs.tmp),
            ];
            self.shell(tb, tree, &env).await?;
        }
        remove_if_empty(&stdout_path).await;
        if stderr.is_none() || allow_stderr {
            remove_if_empty(&stderr_path).await;
        }
        if out.timed_out {
            self.events
                .warning(format!("test {name} timed out; the testbed may be broken"));
            if caps.has(Capability::Revert) {
                self.dirty = true;
            }
            return Ok((outcome, vec![]));
        }
        self.collect_artifacts(tb, &dirs.artifacts).await?;
        self.shell_step(
            tb,
            &script::cleanup_script(&dirs),
            &format!("cleaning up after test {name}"),
        )
        .await?;
        Ok((outcome, vec![]))
    }

    /// Makes the test's dependencies present (writing `<test>-packages`
    /// when they were installed); `Some` result when they are not: badpkg,
    /// or SKIP with skip-not-installable.
    async fn provide_depends(
        &mut self,
        tb: &dyn Testbed,
        test: &Test,
    ) -> Result<Option<Judged>, Error> {
        let arch = self.probe.arch.clone().unwrap_or_default();
        let root = tb.capabilities().has(Capability::RootOnTestbed);
        let provision = self
            .packages
            .ensure(
                tb,
                &test.depends,
                test.has(&Restriction::NeedsRecommends),
                &arch,
                root,
                &test.name,
                &self.events,
            )
            .await?;
        let why = match provision {
            Provision::Present => return Ok(None),
            Provision::Installed { changes } => {
                let path = self.opts.output_dir.join(format!("{}-packages", test.name));
                if let Err(e) = tokio::fs::write(&path, changes).await {
                    self.events
                        .warning(format!("cannot write {}: {e}", path.display()));
                }
                return Ok(None);
            }
            Provision::Missing(why) => why,
        };
        if test.has(&Restriction::SkipNotInstallable) {
            return Ok(Some((
                Outcome::Skip("installation fails and skip-not-installable set".into()),
                vec![],
            )));
        }
        Ok(Some((
            Outcome::BadPackage,
            vec![
                format!("blame: {}", self.blamed.join(" ")),
                format!("badpkg: {why}"),
            ],
        )))
    }

    /// needs-sudo is decided while running, as autopkgtest does: `Some`
    /// reason to skip the test.
    async fn check_sudo(
        &mut self,
        tb: &dyn Testbed,
        user: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let caps = tb.capabilities().clone();
        let root = caps.has(Capability::RootOnTestbed);
        if root && user.is_none() {
            return Ok(Some(
                "Cannot enable needs-sudo restriction: no ordinary user available".into(),
            ));
        }
        let mut req =
            ExecRequest::shell("id -Gn | tr ' ' '\\n' | grep -qx sudo && sudo -n -v").capture();
        req.user = user.map(str::to_string);
        let out = timed(self.opts.timeouts.short, "checking sudo", tb.exec(req)).await?;
        if out.status.success() {
            return Ok(None);
        }
        let Some(user) = user.filter(|_| root) else {
            return Ok(Some(
                "Cannot enable needs-sudo restriction: not root".into(),
            ));
        };
        if !caps.has(Capability::RevertFullSystem) {
            return Ok(Some(
                "Cannot enable needs-sudo restriction: cannot revert".into(),
            ));
        }
        // As autopkgtest's enable-sudo: the sudo group, without password.
        self.events
            .info(format!("setting up user {user} to sudo without password"));
        self.dirty = true;
        let script = "usermod -a -G sudo \"$1\" && install -d /etc/sudoers.d && \
                      echo '%sudo ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/dep8-needs-sudo && \
                      chmod 440 /etc/sudoers.d/dep8-needs-sudo";
        let req = ExecRequest::new(["sh", "-ec", script, "enable-sudo", user]).capture();
        let out = timed(self.opts.timeouts.short, "enabling sudo", tb.exec(req)).await?;
        Ok((!out.status.success()).then(|| {
            format!(
                "Failed to enable needs-sudo restriction: exit status {}",
                out.status.code()
            )
        }))
    }

    /// A reboot a test asked for: errors and the timeout name the test and
    /// its mark.
    async fn reboot_step(
        &self,
        name: &str,
        mark: &str,
        reboot: impl std::future::Future<Output = Result<(), TestbedError>>,
    ) -> Result<(), Error> {
        self.events.emit(Event::Waiting(Wait::Reboot {
            test: name.to_string(),
            mark: mark.to_string(),
        }));
        let what = format!("test {name}: the reboot with marker {mark}");
        let reboot = async {
            reboot.await.map_err(|e| {
                TestbedError::Failure(format!("{what} did not come back: {}", e.detail()))
            })
        };
        timed(self.opts.timeouts.reboot, &what, reboot).await?;
        self.events.emit(Event::Rebooted {
            test: name.to_string(),
            mark: mark.to_string(),
        });
        Ok(())
    }

    /// Runs a test's command; where the testbed can reboot, a watcher runs
    /// beside it for `/tmp/autopkgtest-reboot-prepare`. When the test calls
    /// that, the testbed is got ready to go down, the test released, and
    /// its command left to end as the testbed goes down; what it wrote from
    /// then on is dropped, as autopkgtest drops it: its output is kept up
    /// to the [`reboot::PREPARE_MARKER`] the prepare command writes.
    async fn run_watched(
        &self,
        tb: &dyn Testbed,
        mut req: ExecRequest,
        can_reboot: bool,
        name: &str,
    ) -> Result<TestRun, Error> {
        let cuts = [&mut req.stdout, &mut req.stderr].map(|output| {
            let cut = Cut::at(reboot::PREPARE_MARKER);
            if can_reboot {
                output.cut = Some(cut.clone());
            }
            cut
        });
        let watch = async {
            match reboot::watch_prepare(tb).await {
                Ok(Some(prepared)) => prepared,
                Ok(None) => std::future::pending().await,
                Err(e) => {
                    tracing::debug!("watching for a reboot preparation: {e}");
                    std::future::pending().await
                }
            }
        };
        let mut exec = std::pin::pin!(tb.exec(req));
        let reboot::Prepared { mark, marked } = tokio::select! {
            out = &mut exec => return Ok(TestRun::Ended(out?)),
            prepared = watch, if can_reboot => prepared,
        };
        self.events.info(format!(
            "test {name}: preparing for a reboot with marker {mark}"
        ));
        let going_down = async {
            if tokio::time::timeout(self.opts.timeouts.reboot, &mut exec)
                .await
                .is_err()
            {
                tracing::warn!("test {name}: still running after its reboot");
            }
        };
        let prepared = async {
            cut_at_markers(&cuts, marked).await;
            timed(
                self.opts.timeouts.reboot,
                "getting the testbed ready to reboot",
                tb.prepare_reboot(),
            )
            .await
        };
        let (prepared, ()) = tokio::join!(prepared, going_down);
        prepared.map(|()| TestRun::PreparedReboot(mark))
    }

    /// After a test's reboot: a kernel other than the first one is
    /// recorded (testinfo.json's `test_kernel_versions`), as autopkgtest does.
    async fn note_kernel(&mut self, tb: &dyn Testbed, test: &str, mark: &str) -> Result<(), Error> {
        let out = timed(
            self.opts.timeouts.short,
            "reading the kernel version",
            tb.exec(ExecRequest::new(["uname", "-srv"]).capture()),
        )
        .await?;
        let kernel = out.stdout_text().trim().to_string();
        if out.status.success() && kernel != self.probe.kernel {
            self.events.info(format!(
                "testbed running kernel changed: {kernel} (current test: {test}, last reboot marker: {mark})"
            ));
            self.test_kernels.push((test.into(), mark.into(), kernel));
            self.write_testinfo(tb).await;
        }
        Ok(())
    }

    /// Copies the test's artifacts into OUTPUT_DIR/artifacts (merged across
    /// tests, as autopkgtest does); no empty dir is left behind.
    async fn collect_artifacts(&self, tb: &dyn Testbed, artifacts: &str) -> Result<(), Error> {
        // One test at a time (`-j`): every test's artifacts go into the one
        // dir, which is removed again when it stays empty.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_AT_A_TIME.lock().await;
        let host = self.opts.output_dir.join("artifacts");
        timed(
            self.opts.timeouts.copy,
            "copying artifacts",
            tb.copy_up(artifacts, &host),
        )
        .await?;
        if let Ok(mut dir) = tokio::fs::read_dir(&host).await {
            if let Ok(None) = dir.next_entry().await {
                let _ = tokio::fs::remove_dir(&host).await;
            }
        }
        Ok(())
    }

    /// `--shell`, `--shell-fail`: an interactive shell in the testbed, in
    /// `cwd` with `env`, on dep8's terminal; without one, only a note.
    async fn shell(&self, tb: &dyn Testbed, cwd: &str, env: &[String]) -> Result<(), Error> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            self.events
                .warning("--shell/--shell-fail: stdin is not a terminal, so no shell is opened");
            return Ok(());
        }
        self.events
            .info(" - - - - - - - - - - running shell - - - - - - - - - -");
        // What was said so far is on the terminal before the shell is.
        self.events.emit(Event::Shell { open: true });
        self.events.flush().await;
        let tty = Path::new("/dev/tty");
        // The command runs in a process group of its own: the shell takes
        // the terminal's foreground (perl is in every Debian), and dep8
        // takes it back afterwards.
        let mut req = ExecRequest::new(["perl", "-MPOSIX", "-e", TAKE_TERMINAL, "env"])
            .stdin(crate::testbed::Input::File(tty.to_path_buf()))
            .stdout(Output::file(tty))
            .stderr(Output::file(tty))
            .cwd(cwd);
        req.argv.extend(env.iter().cloned());
        req.argv.extend(["bash".to_string(), "-i".to_string()]);
        let result = tb.exec(req).await;
        take_back_terminal();
        self.events.emit(Event::Shell { open: false });
        result?;
        Ok(())
    }
}

/// The first line of a test's stderr file, when the test wrote any.
async fn first_line_if_any(path: &Path) -> Option<String> {
    let bytes = tokio::fs::read(path).await.unwrap_or_default();
    (!bytes.is_empty()).then(|| {
        String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

async fn remove_if_empty(path: &Path) {
    if tokio::fs::metadata(path).await.is_ok_and(|m| m.len() == 0) {
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// Checks that a test's `path` names a file of the tree `source`, after
/// symlinks: a test may not run what lies outside its package.
async fn test_path_inside(source: &Path, path: &str) -> Result<(), String> {
    let real = tokio::fs::canonicalize(source.join(path))
        .await
        .map_err(|_| format!("{path} does not exist"))?;
    let root = tokio::fs::canonicalize(source)
        .await
        .map_err(|e| format!("{}: {e}", source.display()))?;
    if real.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "{path} leads out of the source tree (to {})",
            real.display()
        ))
    }
}

/// Perl that makes its process group the terminal's foreground one, then
/// runs its arguments (for `--shell`).
const TAKE_TERMINAL: &str = "$SIG{TTOU} = 'IGNORE'; \
    open(my $t, '+<', '/dev/tty') and tcsetpgrp(fileno($t), getpgrp()); exec @ARGV or die \"$ARGV[0]: $!\\n\"";

/// Makes dep8's process group the terminal's foreground one again, after
/// an interactive shell had it.
fn take_back_terminal() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIGTTOU is ignored only around tcsetpgrp, from this thread;
    // no handler of dep8's is replaced.
    unsafe {
        let _ = signal(Signal::SIGTTOU, SigHandler::SigIgn);
        let _ = nix::unistd::tcsetpgrp(std::io::stdin(), nix::unistd::getpgrp());
        let _ = signal(Signal::SIGTTOU, SigHandler::SigDfl);
    }
}

/// Waits until the test's stdout and stderr have reached the marker the
/// prepare command wrote to them, then cuts them. The marker may be slow
/// to come through the testbed's pipes (an lxc-attach or ssh that relays
/// it may wait for a CPU): up to 30 s on a stream it went to straight
/// (`marked`). On a stream the test had sent elsewhere (to a file, to the
/// other stream) it may never come, or only through a pipe of the test's
/// own: up to 2 s there. Then both are cut as they stand.
async fn cut_at_markers(cuts: &[Arc<Cut>; 2], marked: [bool; 2]) {
    let limit = |marked: bool| Duration::from_secs(if marked { 30 } else { 2 });
    let [stdout, stderr] = cuts;
    let _ = tokio::join!(
        tokio::time::timeout(limit(marked[0]), stdout.reached()),
        tokio::time::timeout(limit(marked[1]), stderr.reached()),
    );
    for cut in cuts {
        cut.now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A stream the prepare command's marker did not go to straight is cut
    /// after 2 s, not after the 30 s a marked one may take; a marked one
    /// is cut as soon as its marker comes.
    #[tokio::test]
    async fn only_marked_streams_are_waited_for() {
        let cuts = || [Cut::at(b"m"), Cut::at(b"m")];
        let unmarked = cuts();
        let started = Instant::now();
        cut_at_markers(&unmarked, [false, false]).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(unmarked.iter().all(|cut| cut.is_done()));

        let stdout_marked = cuts();
        let stdout = stdout_marked[0].clone();
        let started = Instant::now();
        tokio::join!(cut_at_markers(&stdout_marked, [true, false]), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stdout.now();
        });
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(5));
    }
}
