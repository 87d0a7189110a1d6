//! autopkgtest's root shell on the guest's second virtio console (hvc1).
//!
//! Images prepared by autopkgtest's setup-testbed (autopkgtest-build-qemu
//! makes them so) run `/bin/sh` on `/dev/hvc1` (`autopkgtest@hvc1.service`)
//! when QEMU gives the guest two virtio consoles, and have no sshd.
//! dep8 reaches every guest over ssh; where a guest gives no readiness
//! signal, it uses this shell once per boot to let itself in: it writes
//! the testbed's keys, installs openssh-server if it is missing, and
//! (re)starts sshd. The shell is a terminal: what is written to it is
//! read line by line and echoed (until `stty -echo`), and its output
//! comes back with `\r\n` line ends.

use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

/// The root shell, connected through QEMU's socket for hvc1.
pub struct RootShell {
    stream: UnixStream,
    /// What the guest wrote that no wait has taken yet.
    unread: String,
}

/// How often an unanswered probe is written again while the shell may
/// still be starting.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl RootShell {
    /// Connects to the console's socket and waits at most `limit` until a
    /// shell answers there; `None` if nothing does.
    pub async fn find(socket: &Path, limit: Duration) -> Option<RootShell> {
        let deadline = Instant::now() + limit;
        let stream = timeout_at(deadline, UnixStream::connect(socket))
            .await
            .ok()?
            .ok()?;
        let mut shell = RootShell {
            stream,
            unread: String::new(),
        };
        // The marker is split by quotes in what is written, so the echo of
        // a probe never passes for the shell's answer.
        let mut probe = 0;
        while Instant::now() < deadline {
            probe += 1;
            let line = format!("echo dep8-''shell-{probe}\n");
            shell.stream.write_all(line.as_bytes()).await.ok()?;
            let until = deadline.min(Instant::now() + PROBE_EVERY);
            if shell.wait_for("dep8-shell-", until).await.is_some() {
                // No echo from here on: the keys written next stay out of
                // what is read back.
                let quiet = "stty -echo 2>/dev/null; echo dep8-''quiet\n";
                shell.stream.write_all(quiet.as_bytes()).await.ok()?;
                shell.wait_for("dep8-quiet", deadline).await?;
                return Some(shell);
            }
        }
        None
    }

    /// Runs `script` in the guest (written to a file through a here
    /// document, then run with its output on the console) and returns its
    /// exit status and output, or `None` if it does not end by
    /// `deadline`. The script must not hold control characters, nor
    /// lines of 4 KiB or more (the terminal's line limit).
    pub async fn run(&mut self, script: &str, deadline: Instant) -> Option<(i32, String)> {
        let end = format!("dep8-done-{}", std::process::id());
        let (head, tail) = end.split_at(5);
        let command = format!(
            "cat > /run/dep8-root-shell.sh <<'DEP8_EOF'\n{script}\nDEP8_EOF\n\
             echo dep8-''start; sh /run/dep8-root-shell.sh </dev/null 2>&1; \
             echo {head}''{tail} $?\n"
        );
        self.stream.write_all(command.as_bytes()).await.ok()?;
        self.wait_for("dep8-start", deadline).await?;
        let output = self.wait_for(&format!("{end} "), deadline).await?;
        let status = loop {
            if let Some((status, _)) = self.unread.split_once('\n') {
                break status.trim().parse().unwrap_or(-1);
            }
            self.read_some(deadline).await?;
        };
        let output = output.replace("\r\n", "\n");
        Some((status, output.trim_start_matches('\n').to_string()))
    }

    /// Reads until `marker` shows; returns what came before it, and keeps
    /// what follows it for the next wait. `None` at `deadline`, or when
    /// the socket closes.
    async fn wait_for(&mut self, marker: &str, deadline: Instant) -> Option<String> {
        loop {
            if let Some(at) = self.unread.find(marker) {
                let before = self.unread[..at].to_string();
                self.unread.drain(..at + marker.len());
                return Some(before);
            }
            self.read_some(deadline).await?;
        }
    }

    /// Reads what the guest wrote next into `unread`.
    async fn read_some(&mut self, deadline: Instant) -> Option<()> {
        let mut buf = [0u8; 4096];
        match timeout_at(deadline, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.unread.push_str(&String::from_utf8_lossy(&buf[..n]));
                Some(())
            }
            _ => None,
        }
    }
}

/// What [`let_in_script`] says before it installs openssh-server.
pub const INSTALLING_SSHD: &str = "dep8: installing openssh-server";

/// The script that lets dep8 in over ssh: the client's public key for
/// root, the testbed's host key, openssh-server installed if there is no
/// sshd (from the guest's apt sources, refreshing the lists if the
/// install fails without), and sshd enabled and restarted with that key.
pub fn let_in_script(authorized_key: &str, host_key: &str, host_key_pub: &str) -> String {
    format!(
        "set -e\n\
         umask 077\n\
         mkdir -p /root/.ssh /etc/ssh\n\
         cat > /root/.ssh/authorized_keys <<'EOF'\n{}\nEOF\n\
         cat > /etc/ssh/ssh_host_ed25519_key <<'EOF'\n{}\nEOF\n\
         umask 022\n\
         cat > /etc/ssh/ssh_host_ed25519_key.pub <<'EOF'\n{}\nEOF\n\
         if ! command -v sshd >/dev/null && ! [ -x /usr/sbin/sshd ]; then\n\
         \x20 echo '{INSTALLING_SSHD}'\n\
         \x20 export DEBIAN_FRONTEND=noninteractive\n\
         \x20 install='apt-get -q install -y --no-install-recommends -o Dpkg::Options::=--force-confold openssh-server'\n\
         \x20 $install || {{ apt-get -q update -o Acquire::Languages=none && $install; }}\n\
         fi\n\
         systemctl enable ssh.service >/dev/null 2>&1 || true\n\
         systemctl restart ssh.service\n",
        authorized_key.trim(),
        host_key.trim(),
        host_key_pub.trim()
    )
}
