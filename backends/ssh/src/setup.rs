//! autopkgtest's ssh-setup protocol: an executable called as
//! `SCRIPT COMMAND [ARGS...] [-l LOGIN] [EXTRAOPTS...]` with COMMAND one of
//! `open`, `revert`, `wait-reboot`, `cleanup`, `debug-failure`. `open` (and
//! optionally `revert`) print `key=value` lines: `login`, `hostname`, `port`,
//! `identity`, `options` (raw ssh arguments), `capabilities`, `extraopts`
//! (handed back to every later command), `password`.

use dep8_testbed::exec::run_local;
use dep8_testbed::leftovers::{self, Undo};
use dep8_testbed::{ExecRequest, Result, TestbedError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where autopkgtest installs its setup scripts; a script name that is not
/// a path to an existing file is looked up there, as autopkgtest does.
const SHIPPED: &str = "/usr/share/autopkgtest/ssh-setup";

/// autopkgtest's limit for one setup script command.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(1800);

/// A setup script and the arguments it is called with.
pub struct SetupScript {
    path: PathBuf,
    args: Vec<String>,
    /// `-l LOGIN` from the command line, passed on to the script.
    login: Option<String>,
    /// `extraopts` from the script's last `open`/`revert`.
    extraopts: Option<String>,
    /// `SCRIPT cleanup ...`, noted for a sweep from the first `open` on:
    /// if dep8 dies, `dep8 clean` or the next run calls it (what the
    /// script made, a cloud VM say, would be left otherwise).
    cleanup_undo: Option<Undo>,
}

impl SetupScript {
    pub fn new(script: &Path, args: Vec<String>, login: Option<String>) -> Result<Self> {
        let shipped = Path::new(SHIPPED).join(script);
        let path = if !script.exists() && script.components().count() == 1 && shipped.exists() {
            shipped
        } else {
            script.to_path_buf()
        };
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&path)
            .map_err(|e| TestbedError::Usage(format!("setup script {}: {e}", path.display())))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(TestbedError::Usage(format!(
                "setup script {} is not an executable file",
                path.display()
            )));
        }
        Ok(SetupScript {
            path,
            args,
            login,
            extraopts: None,
            cleanup_undo: None,
        })
    }

    /// Runs `open` or `revert` and returns the `key=value` pairs it printed;
    /// a failure runs `debug-failure` and fails.
    pub async fn configure(&mut self, command: &str) -> Result<BTreeMap<String, String>> {
        if self.cleanup_undo.is_none() {
            self.note_cleanup();
        }
        let out = self.checked(command).await?;
        let config = parse(&out);
        if let Some(extra) = config.get("extraopts") {
            self.extraopts = Some(extra.clone());
            self.note_cleanup();
        }
        Ok(config)
    }

    /// Notes `cleanup` as the script would be called now (with the latest
    /// `extraopts`) for a sweep, in place of what was noted before.
    fn note_cleanup(&mut self) {
        let undo = leftovers::record_undo(&self.argv("cleanup"));
        if let Some(old) = self.cleanup_undo.replace(undo) {
            old.done();
        }
    }

    /// Drops the script without calling `cleanup`, nor leaving it to a
    /// sweep.
    pub fn forget_cleanup(mut self) {
        if let Some(undo) = self.cleanup_undo.take() {
            undo.done();
        }
    }

    /// Runs `cleanup`; once it succeeded, a sweep no longer calls it.
    pub async fn cleanup(mut self) -> Result<()> {
        self.checked("cleanup").await?;
        if let Some(undo) = self.cleanup_undo.take() {
            undo.done();
        }
        Ok(())
    }

    /// Runs a command that prints nothing of interest; a failure runs
    /// `debug-failure` and fails.
    pub async fn checked(&self, command: &str) -> Result<String> {
        let (ok, out) = self.run(command).await?;
        if ok {
            return Ok(out);
        }
        self.debug_failure().await;
        Err(TestbedError::Failure(format!(
            "setup script {} {command} failed",
            self.path.display()
        )))
    }

    /// Runs a command; returns whether it succeeded and its stdout. Its
    /// stderr goes to the log.
    pub async fn run(&self, command: &str) -> Result<(bool, String)> {
        let argv = self.argv(command);
        tracing::debug!("running setup script: {}", shell_words::join(&argv));
        let req = ExecRequest::new(argv.clone())
            .capture()
            .timeout(SCRIPT_TIMEOUT);
        let out = run_local(&argv, req).await?;
        for line in out.stderr_text().lines() {
            tracing::info!("{} {command}: {line}", self.path.display());
        }
        if out.timed_out {
            tracing::error!(
                "setup script {} {command} timed out after {SCRIPT_TIMEOUT:?}",
                self.path.display()
            );
        }
        Ok((out.status.success(), out.stdout_text()))
    }

    /// `SCRIPT COMMAND ARGS... [-l LOGIN] [EXTRAOPTS...]`.
    fn argv(&self, command: &str) -> Vec<String> {
        let mut argv = vec![self.path.to_string_lossy().into_owned(), command.into()];
        argv.extend(self.args.iter().cloned());
        if let Some(login) = &self.login {
            argv.extend(["-l".into(), login.clone()]);
        }
        if let Some(extra) = &self.extraopts {
            argv.extend(extra.split(' ').map(String::from));
        }
        argv
    }

    /// Logs what `debug-failure` prints (it is optional, so its own failure
    /// is ignored).
    pub async fn debug_failure(&self) {
        if let Ok((_, out)) = self.run("debug-failure").await {
            for line in out.lines() {
                tracing::error!("{} debug-failure: {line}", self.path.display());
            }
        }
    }
}

/// The `key=value` lines of a script's output; other lines are ignored.
pub fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_lines() {
        let c = parse("login=tester\nhostname=10.0.0.1\nnoise\nextraopts=a b=c\n");
        assert_eq!(c["login"], "tester");
        assert_eq!(c["hostname"], "10.0.0.1");
        assert_eq!(c["extraopts"], "a b=c");
        assert_eq!(c.len(), 3);
    }
}
