//! A real OpenSSH server on 127.0.0.1, for the ssh backend's tests: a free
//! port, throwaway host and client keys in a temp dir, login by key only, as
//! root or as an unprivileged user with or without sudo. Killed (and its
//! files removed) on drop.

use crate::e2e::required_program;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

pub struct LoopbackSshd {
    dir: tempfile::TempDir,
    port: u16,
    login: &'static str,
    child: Child,
}

/// Who the tests log in as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Root,
    /// [`TEST_USER`], with or without passwordless sudo.
    User {
        sudo: bool,
    },
    /// Root, on a "machine" whose reboot is simulated in sshd's private
    /// mount namespace: `reboot` (a script over /usr/local/sbin) gives
    /// /proc/sys/kernel/random/boot_id (a bind-mounted file) a new value and
    /// drops every connection, as a real reboot would; /var/tmp survives.
    RootFakeReboot,
    /// Root, on a "machine" of its own as far as dep8 goes, in sshd's
    /// private mount namespace: its /tmp and /var/tmp are empty dirs of its
    /// own, so what a run leaves there is seen by
    /// [`LoopbackSshd::remote_leftovers`], apart from what other runs leave
    /// on the host; apt's and dpkg's state (and logs) are overlays, so
    /// that installing a package without files (the fault suite's) leaves
    /// the host's package state as it was.
    RootOwnMachine,
}

/// The unprivileged account [`Login::User`] logs in as. It exists only in
/// sshd's private mount namespace, where /etc/passwd, /etc/group,
/// /etc/shadow (and /etc/sudoers.d) are bind-mounted copies: the host's
/// files are never changed.
pub const TEST_USER: &str = "dep8-ssh-test";
const TEST_UID: u32 = 64242;

impl LoopbackSshd {
    /// Starts an sshd for root logins; see [`Self::start_with`].
    pub fn start() -> Option<Self> {
        Self::start_with(Login::Root)
    }

    /// Starts an sshd, or returns `None` with a printed reason when a
    /// program it needs is not installed (a failure under CI).
    pub fn start_with(login: Login) -> Option<Self> {
        let mut needs = vec![("sshd", "openssh-server"), ("ssh", "openssh-client")];
        if login != Login::Root {
            needs.push(("unshare", "util-linux"));
        }
        if login == (Login::User { sudo: true }) {
            needs.push(("sudo", "sudo"));
        }
        for (program, package) in needs {
            required_program(program, package)?;
        }
        Some(Self::spawn(login).expect("starting a loopback sshd"))
    }

    fn spawn(login: Login) -> Result<Self, String> {
        let mut dir = tempfile::Builder::new();
        dir.prefix("dep8-sshd.");
        // sshd's own files must stay in sight once /tmp is covered.
        let dir = match login {
            Login::RootOwnMachine => dir.tempdir_in("/run"),
            _ => dir.tempdir(),
        }
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
        let port = dep8_core::testbed::ports::free_loopback_ports(1).map_err(|e| e.to_string())?[0];
        // SetEnv: a login shell on this machine runs `pyenv rehash`, which
        // would wait 60 s on a lock that a killed shell left (see .ci/run).
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nMaxSessions 100\nMaxStartups 100\n\
             SetEnv PYENV_REHASH_TIMEOUT=1\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| e.to_string())?;
        let mut cmd = match login {
            Login::Root => Command::new(SSHD),
            _ => namespace_command(d, login)?,
        };
        let child = cmd
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
        let login = match login {
            Login::User { .. } => TEST_USER,
            _ => "root",
        };
        let sshd = LoopbackSshd {
            dir,
            port,
            login,
            child,
        };
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

    /// The listening sshd's pid (its connections are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key authorised for the login.
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

    /// A setup script speaking autopkgtest's protocol: `open` points at
    /// this server (as root); every call is logged to STATE/calls with its
    /// arguments, STATE being `extraopts`' `--state DIR`, [`Self::dir`]`/state`.
    pub fn setup_script(&self) -> PathBuf {
        let script = self.dir().join("setup");
        let state = self.dir().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let text = format!(
            r#"#!/bin/sh
set -e
echo "$*" >> {state}/calls
case "$1" in
open)
    cat <<EOF
login=root
hostname=127.0.0.1
port={port}
identity={key}
capabilities=isolation-machine,revert reboot
extraopts=--state {state}
EOF
    ;;
revert) echo reverted > {state}/reverted ;;
wait-reboot) sleep 1 ;;
cleanup) ;;
*) exit 1 ;;
esac
"#,
            state = state.display(),
            port = self.port(),
            key = self.client_key().display(),
        );
        std::fs::write(&script, text).expect("setup script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod setup script");
        script
    }

    /// What dep8 made in the machine's /tmp and /var/tmp
    /// ([`Login::RootOwnMachine`] only; its names start with `dep8`), as
    /// paths the machine sees. What else is there is the machine's: apt
    /// killed in the middle of an install leaves its own temp files, with
    /// autopkgtest as with dep8.
    pub fn remote_leftovers(&self) -> Vec<String> {
        PRIVATE_TMP
            .iter()
            .flat_map(|(name, mount_point)| {
                std::fs::read_dir(self.dir.path().join(name))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("dep8"))
                    .map(move |name| format!("{mount_point}/{name}"))
            })
            .collect()
    }

    /// The processes on the machine besides sshd's listener: those in its
    /// mount namespace ([`Login::RootOwnMachine`] and the other logins
    /// that have one), wherever they were reparented.
    pub fn remote_processes(&self) -> Vec<u32> {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let own = ns(&self.pid().to_string());
        let host = ns("self");
        if own.is_none() || own == host {
            return Vec::new();
        }
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != self.pid() && ns(&pid.to_string()) == own)
            .collect()
    }

    /// The `ssh` backend's arguments to log in with the real host key
    /// checked.
    pub fn backend_args(&self) -> Vec<String> {
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-l".into(),
            self.login.into(),
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

/// `unshare -m sh -c 'mount --bind ...; exec "$@"' sh`, sshd's arguments to
/// follow, with the bind mounts `login` needs (see [`Login`]).
fn namespace_command(dir: &Path, login: Login) -> Result<Command, String> {
    let mut binds = match login {
        Login::User { sudo } => user_files(dir, sudo.then_some("ALL")),
        Login::RootFakeReboot => reboot_files(dir),
        Login::RootOwnMachine => private_tmp_dirs(dir),
        Login::Root => Ok(Vec::new()),
    }
    .map_err(|e| e.to_string())?;
    // The host's root login shell setup is not the machine's: where it
    // prints (pyenv's rehash, fighting over its lock with every other
    // login), a test that must not write to stderr would fail.
    if Path::new(ROOT_BASHRC).exists() {
        let quiet = dir.join("root-bashrc");
        std::fs::write(&quiet, "").map_err(|e| e.to_string())?;
        binds.push((quiet, ROOT_BASHRC));
    }
    let overlays = if login == Login::RootOwnMachine {
        package_state_overlays(dir).map_err(|e| e.to_string())?
    } else {
        String::new()
    };
    let mut cmd = in_private_namespace(&binds, &overlays);
    cmd.arg(SSHD);
    Ok(cmd)
}

/// root's shell startup file, replaced by an empty one on the machine.
const ROOT_BASHRC: &str = "/root/.bashrc";

/// `unshare -m sh -c 'mount --bind ...; MOUNTS; exec "$@"' sh`, the
/// command to follow, with `binds` (file, mount point) mounted, then the
/// shell lines `mounts` run.
fn in_private_namespace(binds: &[(PathBuf, &str)], mounts: &str) -> Command {
    let mut script = String::from("set -e\n");
    for (from, to) in binds {
        script.push_str(&format!("mount --bind '{}' '{to}'\n", from.display()));
    }
    script.push_str(mounts);
    script.push_str("exec \"$@\"\n");
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"]);
    cmd
}

/// A command that runs `program` as [`TEST_USER`] (home `DIR/home`), with
/// passwordless sudo for `sudo_commands` (a sudoers command list), in a
/// private mount namespace where that account exists; its files are made
/// in `dir`, which must outlive the command. Root only.
pub fn as_test_user(
    dir: &Path,
    sudo_commands: Option<&str>,
    program: &Path,
) -> std::io::Result<Command> {
    let binds = user_files(dir, sudo_commands)?;
    let mut cmd = in_private_namespace(&binds, "");
    cmd.args(["runuser", "-u", TEST_USER, "--"])
        .arg(program)
        .env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("home"));
    Ok(cmd)
}

/// Copies of the account files that add [`TEST_USER`] (home in `dir`), and
/// a sudoers.d granting it passwordless sudo for `sudo_commands` (a
/// sudoers command list: `ALL`, `/usr/bin/lxc-*`...); with their mount
/// points.
fn user_files(
    dir: &Path,
    sudo_commands: Option<&str>,
) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    use std::os::unix::fs::PermissionsExt;
    // sshd reads authorized_keys as the user.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let home = dir.join("home");
    std::fs::create_dir(&home)?;
    std::os::unix::fs::chown(&home, Some(TEST_UID), Some(TEST_UID))?;
    let accounts = [
        (
            "/etc/passwd",
            format!(
                "{TEST_USER}:x:{TEST_UID}:{TEST_UID}::{}:/bin/sh\n",
                home.display()
            ),
        ),
        ("/etc/group", format!("{TEST_USER}:x:{TEST_UID}:\n")),
        ("/etc/shadow", format!("{TEST_USER}:*:19000:0:99999:7:::\n")),
    ];
    let mut binds = Vec::new();
    for (system, line) in accounts {
        let mut text = std::fs::read_to_string(system)?;
        text.push_str(&line);
        let copy = dir.join(&system[5..]);
        std::fs::write(&copy, text)?;
        std::fs::set_permissions(&copy, std::fs::metadata(system)?.permissions())?;
        binds.push((copy, system));
    }
    if let Some(commands) = sudo_commands {
        let sudoers = dir.join("sudoers.d");
        std::fs::create_dir(&sudoers)?;
        let grant = sudoers.join("dep8-ssh-test");
        std::fs::write(
            &grant,
            format!("{TEST_USER} ALL=(ALL:ALL) NOPASSWD: {commands}\n"),
        )?;
        std::fs::set_permissions(&grant, std::fs::Permissions::from_mode(0o440))?;
        binds.push((sudoers, "/etc/sudoers.d"));
    }
    Ok(binds)
}

/// A boot id file and a `reboot` that (in the background, as a real
/// `reboot` returns before the machine goes down) drops every connection
/// to this sshd and only then gives the boot id a new value, in place (the
/// file is bind-mounted), so that a connection the "reboot" drops never
/// sees the new id; with their mount points. `reboot` returns once the
/// background process has a session of its own: before that, the end of
/// the command that ran `reboot` (its process group killed) would kill it.
fn reboot_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    use std::os::unix::fs::PermissionsExt;
    let boot_id = dir.join("boot_id");
    std::fs::copy("/proc/sys/kernel/random/uuid", &boot_id)?;
    let sbin = dir.join("sbin");
    std::fs::create_dir(&sbin)?;
    let reboot = sbin.join("reboot");
    let d = dir.display();
    std::fs::write(
        &reboot,
        format!(
            "#!/bin/sh\nrm -f '{d}/detached'\n\
             setsid sh -c ': > \"$3\"; sleep 0.2; pkill -KILL -P \"$(cat \"$1\")\"; \
             cat /proc/sys/kernel/random/uuid > \"$2\"' \
             sh '{d}/sshd.pid' '{d}/boot_id' '{d}/detached' </dev/null >/dev/null 2>&1 &\n\
             until [ -e '{d}/detached' ]; do sleep 0.01; done\n"
        ),
    )?;
    std::fs::set_permissions(&reboot, std::fs::Permissions::from_mode(0o755))?;
    Ok(vec![
        (boot_id, "/proc/sys/kernel/random/boot_id"),
        (sbin, "/usr/local/sbin"),
    ])
}

/// The machine's own /tmp and /var/tmp (see [`Login::RootOwnMachine`]),
/// with their mount points.
fn private_tmp_dirs(dir: &Path) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    use std::os::unix::fs::PermissionsExt;
    PRIVATE_TMP
        .iter()
        .map(|&(name, mount_point)| {
            let private = dir.join(name);
            std::fs::create_dir(&private)?;
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o1777))?;
            Ok((private, mount_point))
        })
        .collect()
}

/// Where apt and dpkg keep their state and logs.
const PACKAGE_STATE: [&str; 5] = [
    "/etc/apt",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/cache/apt",
    "/var/log",
];

/// The commands that put an overlay (its changes kept in `dir`) on each of
/// [`PACKAGE_STATE`] (see [`Login::RootOwnMachine`]).
fn package_state_overlays(dir: &Path) -> std::io::Result<String> {
    let mut script = String::new();
    for (i, lower) in PACKAGE_STATE.iter().enumerate() {
        let (upper, work) = (dir.join(format!("upper{i}")), dir.join(format!("work{i}")));
        std::fs::create_dir(&upper)?;
        std::fs::create_dir(&work)?;
        script.push_str(&format!(
            "mount -t overlay overlay -o 'lowerdir={lower},upperdir={},workdir={}' '{lower}'\n",
            upper.display(),
            work.display()
        ));
    }
    Ok(script)
}

/// [`Login::RootOwnMachine`]'s dirs in sshd's dir, and where the machine
/// sees them.
const PRIVATE_TMP: [(&str, &str); 2] = [("tmp", "/tmp"), ("var-tmp", "/var/tmp")];

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
