//! The command channel into the guest: OpenSSH to the guest's sshd through
//! QEMU's user-network port forward, multiplexed over one ControlMaster
//! connection, with the guest's host key checked exactly (the key pair is
//! made per testbed and handed to the guest through fw_cfg).

use dep8_core::exec::{host_command, in_testbed_argv, run_local};
use dep8_core::testbed::{ExecOutcome, ExecRequest, ExitStatus, Result, TestbedError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The name the guest's host key is recorded under, whatever the port.
const HOST_ALIAS: &str = "dep8-testbed";

/// Keys and the control socket of one testbed's ssh channel.
pub struct Ssh {
    dir: PathBuf,
    port: u16,
    next_id: AtomicU64,
}

impl Ssh {
    /// Makes a client key and a guest host key in `dir`, and a known_hosts
    /// file that trusts exactly that host key.
    pub fn new(dir: &Path) -> Result<Ssh> {
        for key in ["id_ed25519", "ssh_host_ed25519_key"] {
            let path = dir.join(key);
            host_command(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "dep8",
                    "-f",
                    &path.to_string_lossy(),
                ],
            )?;
        }
        let host_pub = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub"))
            .map_err(|e| TestbedError::failure("reading the new host key", e))?;
        std::fs::write(
            dir.join("known_hosts"),
            format!("{HOST_ALIAS} {}\n", host_pub.trim()),
        )
        .map_err(|e| TestbedError::failure("writing known_hosts", e))?;
        Ok(Ssh {
            dir: dir.to_path_buf(),
            port: 0,
            next_id: AtomicU64::new(0),
        })
    }

    /// The client's public key (for the guest's authorized_keys).
    pub fn authorized_keys(&self) -> PathBuf {
        self.dir.join("id_ed25519.pub")
    }

    /// The guest's private host key.
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    /// Points the channel at a new forwarded port (a new boot).
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// `ssh OPTIONS... EXTRA... root@127.0.0.1`; a remote command goes after.
    fn argv(&self, extra: &[&str]) -> Vec<String> {
        let d = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        let mut argv: Vec<String> = vec!["ssh".into(), "-F".into(), "none".into()];
        for opt in [
            format!("IdentityFile={}", d("id_ed25519")),
            "IdentitiesOnly=yes".into(),
            "BatchMode=yes".into(),
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", d("known_hosts")),
            "GlobalKnownHostsFile=/dev/null".into(),
            format!("HostKeyAlias={HOST_ALIAS}"),
            format!("ControlPath={}", d("control")),
            "ConnectTimeout=10".into(),
            "ServerAliveInterval=15".into(),
            "LogLevel=ERROR".into(),
        ] {
            argv.push("-o".into());
            argv.push(opt);
        }
        argv.extend(["-p".into(), self.port.to_string()]);
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push("root@127.0.0.1".into());
        argv
    }

    /// Tries once to bring up the background master connection; the error
    /// is ssh's message.
    ///
    /// Not through `run_local`: the master daemonises (`-f`) and must not
    /// be killed with the process group of the ssh that started it.
    pub async fn connect(&self) -> std::result::Result<(), String> {
        let argv = self.argv(&["-M", "-N", "-f", "-o", "ControlPersist=yes"]);
        let run = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(30), run).await {
            Err(_) => Err("ssh connection timed out".into()),
            Ok(Err(e)) => Err(format!("cannot run ssh: {e}")),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    }

    /// Whether the master connection is up.
    pub async fn connected(&self) -> bool {
        let argv = self.argv(&["-O", "check"]);
        let req = ExecRequest::new(argv.clone()).timeout(Duration::from_secs(10));
        matches!(run_local(&argv, req).await, Ok(o) if o.status.success())
    }

    /// Closes the master connection (the guest is going away).
    pub async fn disconnect(&self) {
        let argv = self.argv(&["-O", "exit"]);
        let req = ExecRequest::new(argv.clone()).timeout(Duration::from_secs(10));
        // Nothing to close is fine.
        let _ = run_local(&argv, req).await;
    }

    /// Runs `req` in the guest as root (or `req.user` through runuser).
    ///
    /// The remote shell is a session leader (sshd calls setsid), so its pid
    /// names the process group of everything the command starts; it is
    /// recorded so that a timeout can kill the whole tree in the guest, not
    /// just the local ssh client.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pidfile = format!("/run/dep8-exec-{id}.pid");
        let remote = format!(
            "echo $$ > {pidfile}; {}; s=$?; rm -f {pidfile}; exit $s",
            shell_words::join(in_testbed_argv(&req))
        );
        let mut argv = self.argv(&["-o", "ControlMaster=no"]);
        argv.push(remote);
        let outcome = run_local(&argv, req).await?;
        if outcome.timed_out {
            // The command may not have started yet on a slow guest.
            let kill = format!(
                "for i in $(seq 100); do if [ -e {pidfile} ]; then \
                 kill -KILL -- -$(cat {pidfile}); rm -f {pidfile}; exit 0; fi; sleep 0.1; done"
            );
            let mut argv = self.argv(&["-o", "ControlMaster=no"]);
            argv.push(kill);
            let req = ExecRequest::new(argv.clone()).timeout(Duration::from_secs(30));
            run_local(&argv, req).await?;
        } else if outcome.status == ExitStatus::Code(255) && !self.connected().await {
            // 255 is also ssh's own failure status: tell them apart by
            // whether the connection survived.
            return Err(TestbedError::Failure(format!(
                "the ssh connection to the guest broke: {}",
                outcome.stderr_text().trim()
            )));
        }
        Ok(outcome)
    }
}
