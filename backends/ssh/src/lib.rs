//! The `ssh` backend: tests run on a machine reached over ssh, as with
//! autopkgtest's `ssh` virt server, optionally created and torn down by an
//! autopkgtest ssh-setup script ([`setup`]). [`transport`] is the
//! connection itself, public so that other backends (qemu) reuse it.
//!
//! ```text
//! dep8 run SRC -- ssh -H HOST [-p PORT] [-l LOGIN] [-i KEY] [-o OPT]...
//!     [--known-hosts FILE] [--accept-new-host-key] [--capability CAP]...
//!     [--reboot] [--timeout-ssh SECS] [-d] [-s SETUP-SCRIPT [-- ARGS...]]
//! ```
//!
//! These are autopkgtest-virt-ssh's arguments (5.49), and `-o` also takes
//! its form: a value that starts with `-` is raw ssh arguments
//! (`-o "-o Foo=bar -4"`). Its `-P/--password` (a sudo password) is refused.
//!
//! Root comes from logging in as root, or from `sudo -n` when the login is
//! not root; `root-on-testbed` is advertised only when one of them works.
//! As autopkgtest 5.48 documents, root over ssh is only safe on a testbed
//! that never runs untrusted code; dep8 warns when it has root on a testbed
//! declared neither `isolation-container` nor `isolation-machine`.
//! Host keys are always checked (`StrictHostKeyChecking=yes` against the
//! user's known_hosts, or `--known-hosts`); `--accept-new-host-key` trusts a
//! key seen for the first time and logs it. autopkgtest instead turns host
//! key checking off.
//!
//! # Why the system `ssh` and not the `openssh` crate
//!
//! The `openssh` crate (0.11) also drives OpenSSH's ControlMaster, and its
//! native-mux mode saves the fork+exec of a client per command. It was not
//! chosen because:
//! - output must stream to host files, captures and live taps with
//!   timeouts, which core's `run_local` already does for every local
//!   transport; the crate would need a second copy of that plumbing;
//! - its `SessionBuilder` takes no arbitrary `-o` options, which users need
//!   (and setup scripts' `options=` passes raw ssh arguments);
//! - it maps exit status 255 to "disconnected" and a signal death to an
//!   error, so the remote wrapper that keeps 255 and signals apart, and
//!   kills process trees on timeout, would be needed anyway.
//!
//! A mux client costs a few milliseconds (see scripts/bench-ssh), small next
//! to a test's own run time.

mod machine;
pub mod setup;
pub mod transport;

use async_trait::async_trait;
use clap::Parser;
use dep8_testbed::capability::{Capabilities, Capability};
use dep8_testbed::leftovers::Undo;
use dep8_testbed::{Backend, ExecOutcome, ExecRequest, Result, Testbed, TestbedError};
use machine::{Claim, Machine};
use setup::SetupScript;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use transport::{Root, SshConnection, SshTarget};

pub struct SshBackend;

// The backend's command line, after `-- ssh`.
#[derive(Parser, Debug)]
#[command(
    name = "ssh",
    no_binary_name = true,
    infer_long_args = true,
    about = "Run tests on a machine reached over ssh (dep8 run SRC -- ssh ...)"
)]
struct Args {
    /// Host to connect to ([USER@]HOST, or a Host from ssh_config).
    #[arg(short = 'H', long = "hostname")]
    hostname: Option<String>,
    /// Port of the sshd.
    #[arg(short, long)]
    port: Option<u16>,
    /// User to log in as; root comes from `sudo -n` if it is not root.
    #[arg(short, long)]
    login: Option<String>,
    /// Private key file.
    #[arg(short, long)]
    identity: Option<PathBuf>,
    /// An ssh option (`ssh -o OPT`), repeatable; a value starting with `-`
    /// is raw ssh arguments, split on whitespace (autopkgtest's form).
    #[arg(
        short = 'o',
        long = "options",
        alias = "option",
        value_name = "OPT",
        allow_hyphen_values = true
    )]
    options: Vec<String>,
    /// known_hosts file to check the host key against.
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Trust a host key not seen before (logged), instead of refusing.
    #[arg(long)]
    accept_new_host_key: bool,
    /// Declare a capability of the testbed (never on a precious machine).
    #[arg(long, value_name = "CAP")]
    capability: Vec<String>,
    /// Declare that the testbed may be rebooted.
    #[arg(short, long)]
    reboot: bool,
    /// autopkgtest ssh-setup script (a path, or a name under
    /// /usr/share/autopkgtest/ssh-setup).
    #[arg(short, long, value_name = "SCRIPT")]
    setup_script: Option<PathBuf>,
    /// How long to wait for the ssh connection, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout_ssh: u64,
    /// Refused: a sudo password (dep8 uses `sudo -n`: log in as root, or
    /// give the login passwordless sudo).
    #[arg(short = 'P', long, hide = true)]
    password: Option<String>,
    /// Accepted for autopkgtest-virt-ssh; dep8's own `-d` (before `--`)
    /// turns on debug output.
    #[arg(short, long)]
    debug: bool,
    /// Arguments for the setup script.
    #[arg(last = true, value_name = "SCRIPT ARGS")]
    script_args: Vec<String>,
}

#[async_trait]
impl Backend for SshBackend {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn summary(&self) -> &'static str {
        "a machine reached over ssh, optionally set up by an autopkgtest ssh-setup script"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::IsolationMachine,
            Capability::Reboot,
        ]
    }

    /// What is declared (`--capability`, `--reboot`) and root; with a setup
    /// script, which may declare anything when it runs, the hint.
    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        match Args::try_parse_from(args) {
            Ok(args) if args.setup_script.is_none() => {
                let mut caps = declared_capabilities(&args);
                caps.insert(Capability::RootOnTestbed);
                caps.flags.into_iter().collect()
            }
            _ => self.capabilities_hint(),
        }
    }

    /// The arguments, and a host (from -H, or a setup script to come).
    fn check_args(&self, args: &[String]) -> Result<()> {
        let args = parse_args(args)?;
        check_password(&args)?;
        match args.setup_script {
            Some(_) => Ok(()),
            None => target(&args, &BTreeMap::new()).map(drop),
        }
    }

    /// One machine, unless a setup script gives one at each open (cloud
    /// scripts make a new one): then as many as it gives; a testbed that
    /// opens on a machine another one runs on fails.
    fn max_testbeds(&self, args: &[String]) -> usize {
        match parse_args(args) {
            Ok(args) if args.setup_script.is_some() => usize::MAX,
            _ => 1,
        }
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        Ok(Box::new(SshTestbed::open(parse_args(args)?).await?))
    }
}

/// A machine reached over ssh.
pub struct SshTestbed {
    args: Args,
    script: Option<SetupScript>,
    /// What the setup script printed so far (`revert` updates it).
    config: BTreeMap<String, String>,
    conn: SshConnection,
    caps: Capabilities,
    scratch: String,
    /// The sweep's command for the scratch dir, while it exists.
    scratch_undo: Option<Undo>,
    /// The machine a setup script gave, which no other testbed of this
    /// process may run on while this one is open.
    machine: Option<Claim>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    Args::try_parse_from(args).map_err(|e| TestbedError::Usage(e.render().to_string()))
}

/// Refuses `-P/--password`.
fn check_password(args: &Args) -> Result<()> {
    match args.password {
        Some(_) => Err(TestbedError::Usage(
            "-P/--password: sudo passwords are not supported; log in as root, or give the \
             login passwordless sudo (dep8 uses `sudo -n`)"
                .into(),
        )),
        None => Ok(()),
    }
}

impl SshTestbed {
    async fn open(args: Args) -> Result<Self> {
        check_password(&args)?;
        let declared = declared_capabilities(&args);
        if declared.has(Capability::Revert) && args.setup_script.is_none() {
            return Err(TestbedError::Usage(
                "the revert capability needs a setup script (-s) that implements revert".into(),
            ));
        }
        let mut script = match &args.setup_script {
            Some(path) => Some(SetupScript::new(
                path,
                args.script_args.clone(),
                args.login.clone(),
            )?),
            None if !args.script_args.is_empty() => {
                return Err(TestbedError::Usage(
                    "arguments after -- are for a setup script, but no -s was given".into(),
                ))
            }
            None => None,
        };
        let config = match &mut script {
            Some(s) => s.configure("open").await?,
            None => BTreeMap::new(),
        };
        let conn = match connect(&args, &config, script.as_ref()).await {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(s) = script {
                    let _ = s.cleanup().await;
                }
                return Err(e);
            }
        };
        let mut tb = SshTestbed {
            caps: Capabilities::default(),
            scratch: String::new(),
            scratch_undo: None,
            machine: None,
            args,
            script,
            config,
            conn,
        };
        tb.caps = tb.capabilities_now();
        if tb.caps.has(Capability::RootOnTestbed) && !tb.caps.isolates() {
            tracing::warn!(
                "{}: dep8 has root there; as autopkgtest 5.48 says, that is only safe on a \
                 testbed that never runs untrusted code (declare --capability \
                 isolation-machine when it is a throw-away machine)",
                tb.conn.target().display()
            );
        }
        if let Err(e) = tb.claim_machine().await {
            let _ = tb.close().await;
            return Err(e);
        }
        match tb.conn.create_scratch().await {
            Ok((scratch, undo)) => (tb.scratch, tb.scratch_undo) = (scratch, undo),
            Err(e) => {
                // Best effort: the error that matters is the first one.
                let _ = tb.close().await;
                return Err(e);
            }
        }
        Ok(tb)
    }

    /// Holds the machine a setup script gave (see [`machine`]): fails,
    /// naming it, when another open testbed runs on it. Without a setup
    /// script, the machine is the one the command line names: not held.
    async fn claim_machine(&mut self) -> Result<()> {
        if self.script.is_none() {
            return Ok(());
        }
        self.machine = None;
        let machine = Machine {
            machine_id: self.conn.machine_id().to_string(),
            boot_id: self.conn.boot_id().to_string(),
        };
        match Claim::take(machine) {
            Ok(claim) => {
                self.machine = Some(claim);
                Ok(())
            }
            Err(machine) => {
                // Its cleanup would end the machine under the testbed that
                // holds it: that testbed's own cleanup comes at its close.
                if let Some(script) = self.script.take() {
                    script.forget_cleanup();
                }
                Err(TestbedError::Failure(format!(
                    "the setup script gave {} ({machine}), which another testbed of this run \
                     is using already (its cleanup is left to that testbed)",
                    self.conn.target().display()
                )))
            }
        }
    }

    /// Declared capabilities (options and the script's output) plus root,
    /// which is advertised only when it really works.
    fn capabilities_now(&self) -> Capabilities {
        let mut caps = declared_capabilities(&self.args);
        if let Some(words) = self.config.get("capabilities") {
            let words: Vec<&str> = words.split([',', ' ']).filter(|w| !w.is_empty()).collect();
            let scripted = Capabilities::from_protocol_words(&words);
            caps.flags.extend(scripted.flags);
            caps.suggested_normal_users
                .extend(scripted.suggested_normal_users);
        }
        if self.conn.is_root() {
            caps.insert(Capability::RootOnTestbed);
        } else if caps.flags.remove(&Capability::RootOnTestbed) {
            tracing::warn!(
                "{}: neither root login nor `sudo -n` works: not offering root-on-testbed",
                self.conn.target().display()
            );
        }
        if let Some(login) = &self.conn.target().login {
            if login != "root" && !caps.suggested_normal_users.contains(login) {
                caps.suggested_normal_users.push(login.clone());
            }
        }
        caps
    }

    async fn ensure_scratch(&self) -> Result<()> {
        let out = self
            .conn
            .exec(ExecRequest::new(["mkdir", "-p", "-m", "755", &self.scratch]).capture())
            .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestbedError::Failure(format!(
                "recreating {}: {}",
                self.scratch,
                out.stderr_text().trim()
            )))
        }
    }

    /// Reboots (`request`) or waits for a reboot the machine started
    /// itself, then reconnects and restores the scratch dir.
    async fn restart(&mut self, request: bool) -> Result<()> {
        if !self.caps.has(Capability::Reboot) {
            return Err(TestbedError::Unsupported("reboot"));
        }
        if request {
            self.conn.request_reboot().await;
        }
        if let Some(script) = &self.script {
            let (ok, _) = script.run("wait-reboot").await?;
            if !ok {
                tracing::debug!("setup script wait-reboot failed; waiting for a new boot id");
            }
        }
        if let Err(e) = self.conn.await_reboot().await {
            if let Some(script) = &self.script {
                script.debug_failure().await;
            }
            return Err(e);
        }
        self.claim_machine().await?;
        self.ensure_scratch().await
    }
}

fn declared_capabilities(args: &Args) -> Capabilities {
    for word in &args.capability {
        if Capability::from_word(word).is_none() {
            tracing::warn!("--capability {word}: not a capability dep8 knows; ignored");
        }
    }
    let mut caps = Capabilities::from_protocol_words(&args.capability);
    if args.reboot {
        caps.insert(Capability::Reboot);
    }
    caps
}

/// The target from the command line, which wins over the setup script's
/// `key=value` output, as in autopkgtest.
fn target(args: &Args, config: &BTreeMap<String, String>) -> Result<SshTarget> {
    let host = args
        .hostname
        .clone()
        .or_else(|| config.get("hostname").cloned())
        .ok_or_else(|| {
            TestbedError::Usage(
                "no host: give -H HOST, or a setup script that prints hostname=".into(),
            )
        })?;
    let mut t = SshTarget::new(host);
    t.port =
        match (args.port, config.get("port")) {
            (Some(p), _) => Some(p),
            (None, Some(p)) => Some(p.trim().parse().map_err(|_| {
                TestbedError::Failure(format!("setup script printed a bad port={p}"))
            })?),
            (None, None) => None,
        };
    t.login = args.login.clone().or_else(|| config.get("login").cloned());
    t.identity = args
        .identity
        .clone()
        .or_else(|| config.get("identity").map(PathBuf::from));
    if let Some(raw) = config.get("options") {
        t.ssh_args.extend(raw.split_whitespace().map(String::from));
    }
    for opt in &args.options {
        if opt.starts_with('-') {
            t.ssh_args.extend(opt.split_whitespace().map(String::from));
        } else {
            t.ssh_args.extend(["-o".to_string(), opt.clone()]);
        }
    }
    if t.ssh_args
        .iter()
        .any(|a| a.to_ascii_lowercase().contains("stricthostkeychecking"))
    {
        tracing::warn!(
            "ssh options {:?} override dep8's host key checking",
            t.ssh_args
        );
    }
    if config.contains_key("password") {
        tracing::warn!(
            "setup script printed password=: sudo passwords are not supported; using `sudo -n`"
        );
    }
    t.known_hosts = args.known_hosts.clone();
    t.accept_new_host_key = args.accept_new_host_key;
    t.connect_timeout = Duration::from_secs(args.timeout_ssh);
    t.outlives_dep8 = true;
    Ok(t)
}

/// Connects to the target; on failure lets the script report what it knows.
async fn connect(
    args: &Args,
    config: &BTreeMap<String, String>,
    script: Option<&SetupScript>,
) -> Result<SshConnection> {
    let result = SshConnection::connect(target(args, config)?).await;
    if let (Err(_), Some(script)) = (&result, script) {
        script.debug_failure().await;
    }
    result
}

#[async_trait]
impl Testbed for SshTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        &self.scratch
    }

    fn describe(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("ssh".to_string(), self.conn.target().display())])
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        self.conn.exec(req).await
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        self.conn.copy_down(host, testbed_path).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        self.conn.copy_up(testbed_path, host).await
    }

    async fn revert(&mut self) -> Result<()> {
        let (true, Some(script)) = (self.caps.has(Capability::Revert), &mut self.script) else {
            return Err(TestbedError::Unsupported("revert"));
        };
        // Jobs and the control dir go now; the machine may not keep them.
        if let Err(e) = self.conn.close().await {
            tracing::debug!("closing the connection before revert: {e}");
        }
        let update = script.configure("revert").await?;
        self.config.extend(update);
        self.conn = connect(&self.args, &self.config, self.script.as_ref()).await?;
        self.claim_machine().await?;
        self.ensure_scratch().await
    }

    async fn reboot(&mut self) -> Result<()> {
        self.restart(true).await
    }

    async fn prepare_reboot(&self) -> Result<()> {
        if !self.caps.has(Capability::Reboot) {
            return Err(TestbedError::Unsupported("reboot"));
        }
        self.conn
            .release_reboot(dep8_testbed::RELEASE_PREPARED)
            .await
    }

    async fn await_reboot(&mut self) -> Result<()> {
        self.restart(false).await
    }

    async fn close(&mut self) -> Result<()> {
        let scratch = std::mem::take(&mut self.scratch);
        let removed = match scratch.as_str() {
            "" => Ok(()),
            dir => match self
                .conn
                .exec(ExecRequest::new(["rm", "-rf", "--", dir]).capture())
                .await
            {
                Ok(out) if !out.status.success() => Err(TestbedError::Failure(format!(
                    "removing {dir}: {}",
                    out.stderr_text().trim()
                ))),
                Ok(_) => {
                    if let Some(undo) = self.scratch_undo.take() {
                        undo.done();
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        let closed = self.conn.close().await;
        let cleaned = match self.script.take() {
            Some(script) => script.cleanup().await,
            None => Ok(()),
        };
        self.machine = None;
        removed.and(closed).and(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Args {
        Args::try_parse_from(words).unwrap()
    }

    #[test]
    fn command_line_wins_over_the_script() {
        let args = parse(&[
            "-H",
            "cli-host",
            "-o",
            "Compression=yes",
            "-s",
            "x",
            "--",
            "a",
        ]);
        assert_eq!(args.script_args, ["a"]);
        let config = setup::parse("hostname=script-host\nport=2222\nlogin=tester\noptions=-4 -C\n");
        let t = target(&args, &config).unwrap();
        assert_eq!(t.host, "cli-host");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.login.as_deref(), Some("tester"));
        assert_eq!(t.ssh_args, ["-4", "-C", "-o", "Compression=yes"]);
    }

    #[test]
    fn autopkgtest_virt_ssh_arguments() {
        let args = parse(&[
            "-H",
            "h",
            "-l",
            "tester",
            "-i",
            "/k",
            "-p",
            "2222",
            "--options",
            "-o Compression=yes -4",
            "-o",
            "BatchMode=yes",
            "-d",
            "--capability",
            "isolation-machine",
            "--reboot",
            "--timeout-ssh",
            "9",
            "-s",
            "nova",
            "--",
            "--flavor",
            "m1",
        ]);
        let t = target(&args, &BTreeMap::new()).unwrap();
        assert_eq!(
            t.ssh_args,
            ["-o", "Compression=yes", "-4", "-o", "BatchMode=yes"]
        );
        assert_eq!((t.port, t.login.as_deref()), (Some(2222), Some("tester")));
        assert_eq!(t.connect_timeout, Duration::from_secs(9));
        assert_eq!(args.script_args, ["--flavor", "m1"]);
        // argparse's prefixes: --host for --hostname.
        assert_eq!(parse(&["--host", "h2"]).hostname.as_deref(), Some("h2"));
        assert!(parse(&["-H", "h", "-P", "secret"]).password.is_some());
    }

    #[test]
    fn only_a_setup_script_gives_more_than_one_machine() {
        let testbeds = |words: &[&str]| {
            let args: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            SshBackend.max_testbeds(&args)
        };
        assert_eq!(testbeds(&["-H", "host"]), 1);
        assert_eq!(
            testbeds(&["-s", "nova", "--", "--flavor", "m1"]),
            usize::MAX
        );
    }

    #[test]
    fn a_host_is_required() {
        let err = target(&parse(&[]), &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("-H HOST"), "{err}");
    }

    #[test]
    fn declared_capabilities_are_read() {
        let caps = declared_capabilities(&parse(&[
            "-H",
            "h",
            "--capability",
            "isolation-machine",
            "--reboot",
        ]));
        assert!(caps.has(Capability::IsolationMachine));
        assert!(caps.has(Capability::Reboot));
    }
}
