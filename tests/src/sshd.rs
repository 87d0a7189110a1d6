//! A real OpenSSH server on 127.0.0.1, for the ssh backend's tests: a free
//! port, throwaway host and client keys in a temp dir, root login by key
//! only. Killed (and its files removed) on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

pub struct LoopbackSshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl LoopbackSshd {
    /// Starts an sshd, or returns `None` with a printed reason when
    /// openssh-server is not installed (a failure under CI, `DEP8_CI=1`).
    pub fn start() -> Option<Self> {
        if !Path::new(SSHD).exists() {
            if std::env::var_os("DEP8_CI").is_some() {
                panic!("{SSHD} is missing under CI: .ci/install-deps installs openssh-server");
            }
            eprintln!("SKIP: {SSHD} is missing (install openssh-server)");
            return None;
        }
        Some(Self::spawn().expect("starting a loopback sshd"))
    }

    fn spawn() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("dep8-sshd.")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "dep8-test", "-f"])
                .arg(d.join(key)))?;
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        // Privilege separation needs this dir; it is shared with a system
        // sshd and harmless to leave.
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nMaxSessions 100\nMaxStartups 100\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| e.to_string())?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("{SSHD}: {e}"))?;
        let host_key =
            std::fs::read_to_string(d.join("host_key.pub")).map_err(|e| e.to_string())?;
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_key}"),
        )
        .map_err(|e| e.to_string())?;
        let sshd = LoopbackSshd { dir, port, child };
        sshd.wait_listening()?;
        Ok(sshd)
    }

    fn wait_listening(&self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "sshd did not listen on port {} within 10 s: {}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key authorised for root.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known_hosts file with the server's real host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// A temp dir that lives as long as the server, for test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `ssh` backend's arguments to log in as root with the real host
    /// key checked.
    pub fn backend_args(&self) -> Vec<String> {
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-l".into(),
            "root".into(),
            "-i".into(),
            self.client_key().to_string_lossy().into_owned(),
            "--known-hosts".into(),
            self.known_hosts().to_string_lossy().into_owned(),
        ]
    }
}

impl Drop for LoopbackSshd {
    fn drop(&mut self) {
        // sshd -D forks a child per connection; they end with their
        // connections, which the backends under test close.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
