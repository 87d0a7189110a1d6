//! Reboots requested by a test, as autopkgtest's README.package-tests
//! describes them: a `needs-reboot` test calls `/tmp/autopkgtest-reboot
//! MARK`, which records MARK and kills the test; the runner reboots the
//! testbed and runs the test again from the start with
//! `AUTOPKGTEST_REBOOT_MARK=MARK`, keeping the scratch dir.
//!
//! `/tmp/autopkgtest-reboot-prepare` (the test reboots by itself) is not
//! provided yet: it needs a "wait for the testbed to come back" operation
//! that the Testbed trait does not have.

use crate::capability::{Capabilities, Capability};
use crate::testbed::{ExecRequest, ExitStatus, Input, Result, Testbed, TestbedError};

/// Where the shell that runs a test records its pid.
pub const SCRIPT_PID_FILE: &str = "/tmp/autopkgtest_script_pid";
/// Where `/tmp/autopkgtest-reboot` records the test's mark.
pub const MARK_FILE: &str = "/run/autopkgtest-reboot-mark";

/// The in-testbed `autopkgtest-reboot` command: records the mark, then
/// SIGKILLs the test, i.e. the ancestor of this script whose parent is the
/// shell that recorded its pid (so that shell survives to report exit 137).
const REBOOT_SCRIPT: &str = r#"#!/bin/sh
# Usage: /tmp/autopkgtest-reboot MARK  (provided by dep8)
set -e
[ -n "$1" ] || { echo "Usage: $0 MARK" >&2; exit 1; }
echo "$1" > /run/autopkgtest-reboot-mark
shell=$(cat /tmp/autopkgtest_script_pid)
p=$PPID
while [ "$p" -gt 1 ] && [ "$p" != "$shell" ]; do
    stat=$(cat "/proc/$p/stat")
    set -- ${stat##*) }
    if [ "$2" = "$shell" ]; then kill -KILL "$p"; exit 0; fi
    p=$2
done
echo "$0: not called from a test that dep8 runs" >&2
exit 1
"#;

/// Whether tests on this testbed can ask for a reboot.
pub fn available(caps: &Capabilities) -> bool {
    caps.has(Capability::Reboot) && caps.has(Capability::RootOnTestbed)
}

/// Whether a test's shell ended the way a reboot request ends it.
pub fn killed(status: ExitStatus) -> bool {
    matches!(status, ExitStatus::Signal(9) | ExitStatus::Code(137))
}

/// Puts `/tmp/autopkgtest-reboot` (and `/sbin/autopkgtest-reboot`) in place;
/// again after every reboot, since /tmp may not survive one.
pub async fn install(tb: &dyn Testbed) -> Result<()> {
    let path = format!("{}/autopkgtest-reboot", tb.scratch());
    let script = format!(
        "set -e; cat > '{path}'; chmod 755 '{path}'; \
         ln -fns '{path}' /tmp/autopkgtest-reboot; ln -fns '{path}' /sbin/autopkgtest-reboot"
    );
    let out = tb
        .exec(
            ExecRequest::shell(&script)
                .stdin(Input::Bytes(REBOOT_SCRIPT.as_bytes().to_vec()))
                .capture(),
        )
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestbedError::failure(
            "installing /tmp/autopkgtest-reboot",
            out.stderr_text().trim(),
        ))
    }
}

/// The mark a killed test left, if it asked for a reboot; removes it.
pub async fn take_mark(tb: &dyn Testbed) -> Result<Option<String>> {
    let out = tb
        .exec(ExecRequest::shell(&format!("cat {MARK_FILE} && rm -f {MARK_FILE}")).capture())
        .await?;
    Ok(out
        .status
        .success()
        .then(|| out.stdout_text().trim().to_string()))
}
