//! The `lxc` backend:
//! `dep8 run SRC -- lxc [-e] [-s] [--name NAME] [-P PATH] [--baseimage] TEMPLATE [LXC-START-ARGS]`
//! (autopkgtest-virt-lxc's arguments, as debci writes them).
//!
//! A testbed is a *clone* of the container TEMPLATE, never TEMPLATE itself:
//! `lxc-copy --snapshot` makes it (an overlay over a directory-backed
//! template, the storage's own snapshot otherwise), `lxc-start --daemon`
//! boots it with its init, and dep8 waits until the boot is complete
//! (`systemctl is-system-running --wait` under systemd). Commands run with
//! `lxc-attach --clear-env`: the attached command is a child of
//! `lxc-attach` in its process group, so exit codes, signals, streams and
//! timeouts (which kill the group) are exact. Files are copied with tar
//! through `lxc-attach`.
//!
//! Revert destroys the clone and swaps in the next one; from the first
//! revert on, that one is made and booted in the background, so that a
//! revert costs little more than a destroy. Once the setup is done
//! ([`Testbed::commit_base`]), the clone is stopped and becomes the run's
//! *base*: later clones are snapshots of it (lxc copies its overlay's
//! upper layer), so they start with the setup and reverts return to it.
//! Reboot (`lxc-stop --reboot`, or a test's own `reboot`) keeps the
//! clone's disk, hence the scratch dir in /var/tmp; dep8 waits for a new
//! init and a complete boot, and a clone that does not come back is a
//! testbed failure with its console log kept.
//!
//! Every clone is noted in the run dir with the `lxc-destroy` that removes
//! it before it is made ([`dep8_testbed::leftovers::record_undo`]), so that a
//! sweep of a killed run removes it, and only it (the clones before the
//! base they were made from: lxc destroys no container that has clones).
//! With `--ephemeral` the clone is also `lxc.ephemeral`: lxc itself
//! destroys it when it stops.

use async_trait::async_trait;
use clap::Parser;
use dep8_testbed::capability::{BaseImage, BaseImageKind, Capabilities, Capability};
use dep8_testbed::exec::{
    copy_down_via_exec, copy_up_via_exec, host_run, in_testbed_argv, run_local,
};
use dep8_testbed::leftovers::{record_undo, Undo};
use dep8_testbed::{Backend, ExecOutcome, ExecRequest, ExitStatus, Result, Testbed, TestbedError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Where the template's pristine root filesystem is bind-mounted read-only
/// with `--baseimage` (not under /run or /tmp: the container's systemd
/// mounts a tmpfs there at boot, over the mount).
pub const BASEIMAGE_PATH: &str = "/var/lib/dep8/baseimage";

/// The scratch dir in the clone: on disk (not /tmp, which systemd empties
/// at boot), so it survives a reboot.
const SCRATCH: &str = "/var/tmp/dep8-scratch";

/// The environment attached commands start with (`--clear-env` leaves
/// only PATH and `container=lxc`).
const BASE_ENV: [&str; 3] = ["HOME=/root", "USER=root", "LOGNAME=root"];

/// Waits, inside the clone, until its init has finished booting: under
/// systemd, `is-system-running --wait` (a degraded system is booted too);
/// under a SysV-style init, until the rc scripts are done. Prints the
/// state.
const AWAIT_BOOT: &str = r#"
if [ "$(cat /proc/1/comm)" = systemd ]; then
    while [ ! -S /run/systemd/private ]; do sleep 0.1; done
    systemctl is-system-running --wait 2>/dev/null || true
else
    while pgrep -f '/etc/init[.]d/rc' >/dev/null 2>&1; do sleep 0.2; done
    echo started
fi
"#;

/// How long one probe of a booting clone (`lxc-attach -- true`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a booting or rebooting clone is probed.
const POLL: Duration = Duration::from_millis(100);

/// lxc-attach's own exit status when it cannot attach (the container is
/// not running); a command's exit 1 looks the same, so the state decides.
const ATTACH_FAILED: i32 = 1;

pub struct LxcBackend;

#[async_trait]
impl Backend for LxcBackend {
    fn name(&self) -> &'static str {
        "lxc"
    }

    fn summary(&self) -> &'static str {
        "an overlay clone of an lxc container, booted with its init; revert starts a new clone \
         (of the clone kept after the setup)"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        vec![
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::IsolationContainer,
            Capability::Reboot,
            Capability::Nesting,
            Capability::BaseImage,
        ]
    }

    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        let Ok(opts) = Options::parse(args) else {
            return self.capabilities_hint();
        };
        // Without sudo the template's config can be read here; with it,
        // nesting is known only once opened.
        let nesting = Lxc::new(&opts)
            .config_file(&opts.template)
            .map_or(true, |path| {
                std::fs::read_to_string(path).map_or(true, |c| TemplateConfig::parse(&c).nesting)
            });
        let mut caps = self.capabilities_hint();
        caps.retain(|c| match c {
            Capability::BaseImage => opts.baseimage,
            Capability::Nesting => nesting,
            _ => true,
        });
        caps
    }

    /// Every open is another clone of the same template container.
    fn max_testbeds(&self, _args: &[String]) -> usize {
        usize::MAX
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        Ok(Box::new(LxcTestbed::open(Options::parse(args)?).await?))
    }
}

/// The backend's arguments: autopkgtest-virt-lxc's (5.49), plus
/// `--baseimage` and `--boot-timeout`.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(
    name = "lxc",
    no_binary_name = true,
    infer_long_args = true,
    about = "Run tests in clones of an lxc container (dep8 run SRC -- lxc ...)"
)]
pub struct Options {
    /// Accepted for autopkgtest-virt-lxc; dep8's own `-d` (before `--`)
    /// turns on debug output.
    #[arg(short, long)]
    pub debug: bool,
    /// Make each clone ephemeral too (`lxc.ephemeral`): lxc destroys it
    /// when it stops. Every clone is an overlay snapshot either way.
    #[arg(short, long)]
    pub ephemeral: bool,
    /// The lxc path holding TEMPLATE and the clones (lxc's default
    /// otherwise).
    #[arg(short = 'P', long, value_name = "PATH")]
    pub lxcpath: Option<String>,
    /// Run the lxc-* commands with sudo (dep8 as a normal user).
    #[arg(short, long)]
    pub sudo: bool,
    /// The clone's name (later clones, after reverts, are NAME-1,
    /// NAME-2...); `dep8-RUN-N` by default.
    #[arg(long)]
    pub name: Option<String>,
    /// autopkgtest-virt-lxc's loop-device full copy of this size: refused,
    /// dep8's clones are overlay snapshots.
    #[arg(long, value_name = "SIZE")]
    pub disk_limit: Option<String>,
    /// Bind-mount the template's root filesystem read-only at
    /// /var/lib/dep8/baseimage in every clone (a directory-backed template).
    #[arg(long)]
    pub baseimage: bool,
    /// How long a clone may take to boot or reboot, in seconds.
    #[arg(
        long,
        alias = "timeout-reboot",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub boot_timeout: u64,
    /// The container the clones are made from (`lxc-ls` lists them).
    pub template: String,
    /// Further arguments for lxc-start, as autopkgtest-virt-lxc passes them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub lxcargs: Vec<String>,
}

impl Options {
    /// Parses the words after `lxc` on the command line; refuses what dep8
    /// cannot honour.
    pub fn parse(args: &[String]) -> Result<Options> {
        let opts = Options::try_parse_from(args)
            .map_err(|e| TestbedError::Usage(e.render().to_string()))?;
        if let Some(size) = &opts.disk_limit {
            return Err(TestbedError::Usage(format!(
                "--disk-limit {size} is not supported: autopkgtest-virt-lxc makes a full \
                 copy on a loop device of that size, dep8's clones are overlay snapshots of the \
                 template"
            )));
        }
        Ok(opts)
    }
}

/// How the lxc tools are run: with sudo or not, on which lxc path.
#[derive(Clone, Debug)]
struct Lxc {
    sudo: bool,
    lxcpath: Option<String>,
}

impl Lxc {
    fn new(opts: &Options) -> Lxc {
        Lxc {
            sudo: opts.sudo,
            lxcpath: opts.lxcpath.clone(),
        }
    }

    /// The argv of `tool` (an lxc-* command) with `args`.
    fn argv<S: AsRef<str>>(&self, tool: &str, args: &[S]) -> Vec<String> {
        let mut argv = Vec::new();
        if self.sudo {
            argv.extend(["sudo", "--non-interactive"].map(String::from));
        }
        argv.push(tool.to_string());
        if let Some(path) = &self.lxcpath {
            argv.push(format!("--lxcpath={path}"));
        }
        argv.extend(args.iter().map(|a| a.as_ref().to_string()));
        argv
    }

    /// Runs `tool args` as one of the run's processes; its stdout, or a
    /// failure with lxc's error messages.
    async fn run<S: AsRef<str>>(&self, tool: &str, args: &[S]) -> Result<String> {
        self.run_marked(tool, args, true).await
    }

    /// Runs `tool args`; `marked`: as the run's (a sweep of a dead run
    /// kills it). lxc writes its errors to stderr only on a terminal: they
    /// go to a log file, read back on failure. Killed if dropped.
    async fn run_marked<S: AsRef<str>>(
        &self,
        tool: &str,
        args: &[S],
        marked: bool,
    ) -> Result<String> {
        let log = tempfile::NamedTempFile::new()
            .map_err(|e| TestbedError::failure("making a temp file", e))?;
        let mut with_log = vec![
            format!("--logfile={}", log.path().display()),
            "--logpriority=ERROR".to_string(),
        ];
        with_log.extend(args.iter().map(|a| a.as_ref().to_string()));
        let argv = self.argv(tool, &with_log);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if marked {
            dep8_testbed::leftovers::tag(cmd.as_std_mut());
        } else {
            cmd.env_remove("DEP8_RUN_DIR");
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TestbedError::failure(format!("cannot run {tool}"), e))?;
        if let (true, Some(id)) = (marked, child.id()) {
            dep8_testbed::leftovers::record_group(id);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| TestbedError::failure(format!("waiting for {tool}"), e))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        // `lxc-copy NAME TIME ERROR  storage - FILE:FUNC:LINE - MESSAGE`
        let logged = std::fs::read_to_string(log.path()).unwrap_or_default();
        let mut said: Vec<&str> = logged
            .lines()
            .map(|l| l.rsplit_once(" - ").map_or(l, |(_, m)| m).trim())
            .collect();
        said.dedup();
        let stderr = String::from_utf8_lossy(&out.stderr);
        said.extend(stderr.lines().map(str::trim).filter(|l| !l.is_empty()));
        Err(TestbedError::Failure(format!(
            "{} failed: {}",
            argv.join(" "),
            said.join("; ")
        )))
    }

    /// The lxc path: `--lxcpath`, else lxc's default for this user.
    fn path(&self) -> Result<String> {
        if let Some(path) = &self.lxcpath {
            return Ok(path.clone());
        }
        let argv = self.argv("lxc-config", &["lxc.lxcpath"]);
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|e| TestbedError::failure("cannot run lxc-config", e))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The config file of `container`.
    fn config_file(&self, container: &str) -> Result<PathBuf> {
        Ok(Path::new(&self.path()?).join(container).join("config"))
    }

    /// The text of `container`'s config file (read with sudo under
    /// `--sudo`); a usage error naming the container when there is none.
    async fn read_config(&self, container: &str) -> Result<String> {
        let path = self.config_file(container)?;
        let text = if self.sudo {
            let argv = ["sudo", "--non-interactive", "cat", "--"];
            host_run(
                argv[0],
                &[&argv[1..], &[path.to_str().unwrap_or("")]].concat(),
                Stdio::null(),
            )
            .await
            .ok()
        } else {
            std::fs::read_to_string(&path).ok()
        };
        text.ok_or_else(|| {
            TestbedError::Usage(format!(
                "there is no container {container} ({} is missing; `lxc-ls` lists the \
                 containers, `dep8 image build lxc --name {container}` makes one)",
                path.display()
            ))
        })
    }

    /// Kills `container` (no clean shutdown: it is thrown away), waits
    /// until it is stopped and destroys it, retrying while lxc still lets
    /// go of it (a clone caught restarting). Gone already (an ephemeral
    /// clone removes itself when it stops) is fine. Blocking.
    fn destroy_blocking(&self, container: &str) -> Result<()> {
        let run = |argv: Vec<String>| {
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| TestbedError::failure(format!("cannot run {}", argv[0]), e))
        };
        let mut said = String::new();
        for attempt in 0..5u64 {
            std::thread::sleep(Duration::from_millis(300 * attempt));
            run(self.argv("lxc-stop", &["--kill", "--name", container]))?;
            run(self.argv(
                "lxc-wait",
                &["--name", container, "--state", "STOPPED", "--timeout", "10"],
            ))?;
            let out = run(self.argv("lxc-destroy", &["--force", "--quiet", "--name", container]))?;
            let exists = run(self.argv("lxc-info", &["--name", container, "--state"]))?;
            if out.status.success() || !exists.status.success() {
                return Ok(());
            }
            said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        Err(TestbedError::Failure(format!(
            "destroying lxc container {container}: {said}"
        )))
    }

    /// The state of `container` as lxc-info says it (`RUNNING`, `STOPPED`,
    /// ...; "" if lxc-info fails).
    async fn state(&self, container: &str) -> String {
        self.run(
            "lxc-info",
            &["--name", container, "--state", "--no-humanize"],
        )
        .await
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
    }

    /// The host pid of `container`'s init, if it runs.
    async fn init_pid(&self, container: &str) -> Option<u32> {
        self.run("lxc-info", &["--name", container, "--pid", "--no-humanize"])
            .await
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// What dep8 reads from the template's configuration.
#[derive(Debug, Default, PartialEq, Eq)]
struct TemplateConfig {
    /// `lxc.rootfs.path`, as written (`dir:/var/lib/lxc/T/rootfs`,
    /// `btrfs:...`, a plain path).
    rootfs: String,
    /// The config includes lxc's nesting.conf.
    nesting: bool,
}

impl TemplateConfig {
    fn parse(text: &str) -> TemplateConfig {
        let mut config = TemplateConfig::default();
        for (key, value) in text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
        {
            match key {
                "lxc.rootfs.path" => config.rootfs = value.to_string(),
                "lxc.include" if value.ends_with("/nesting.conf") => config.nesting = true,
                _ => {}
            }
        }
        config
    }

    /// The template's root directory, when it is directory-backed.
    fn rootfs_dir(&self) -> Option<&str> {
        match self.rootfs.split_once(':') {
            Some(("dir", dir)) => Some(dir),
            None if self.rootfs.starts_with('/') => Some(&self.rootfs),
            _ => None,
        }
    }
}

/// Everything a clone is made with.
#[derive(Clone, Debug)]
struct CloneSpec {
    lxc: Lxc,
    template: String,
    /// The container clones are copied from: the template, then the run's
    /// base once the setup is kept.
    origin: String,
    /// `lxc-copy --backingstorage=overlayfs` (a directory-backed template).
    overlay: bool,
    ephemeral: bool,
    /// The template's root dir, bind-mounted at [`BASEIMAGE_PATH`].
    baseimage: Option<String>,
    lxcargs: Vec<String>,
    boot_timeout: Duration,
    /// Where console logs go (`NAME.console.log`).
    log_dir: PathBuf,
}

/// One clone of the template, destroyed when dropped.
struct LxcClone {
    lxc: Lxc,
    name: String,
    console_log: PathBuf,
    undo: Option<Undo>,
}

impl LxcClone {
    /// Makes the clone `name` of the spec's origin, boots it and waits for
    /// the boot to complete; makes the scratch dir.
    async fn create(spec: &CloneSpec, name: String) -> Result<LxcClone> {
        let undo = record_undo(&spec.lxc.argv(
            "lxc-destroy",
            &["--force", "--quiet", "--name", name.as_str()],
        ));
        // From here on, dropping the clone destroys it.
        let clone = LxcClone {
            lxc: spec.lxc.clone(),
            console_log: spec.log_dir.join(format!("{name}.console.log")),
            name,
            undo: Some(undo),
        };
        let mut copy = vec![
            "--name".to_string(),
            spec.origin.clone(),
            "--newname".into(),
            clone.name.clone(),
            "--snapshot".into(),
        ];
        if spec.overlay {
            copy.push("--backingstorage=overlayfs".into());
        }
        if let Some(path) = &spec.lxc.lxcpath {
            copy.push(format!("--newpath={path}"));
        }
        spec.lxc.run("lxc-copy", &copy).await.map_err(|e| {
            TestbedError::Failure(format!(
                "cloning lxc container {}: {}",
                spec.origin,
                e.detail()
            ))
        })?;
        clone.start(spec).await?;
        clone.wait_booted(spec.boot_timeout, None).await?;
        let scratch = format!("rm -rf {SCRATCH} && mkdir -p -m 1777 {SCRATCH}");
        clone.check_root(&scratch, "making the scratch dir").await?;
        Ok(clone)
    }

    /// `lxc-start --daemon` with dep8's definitions. Not marked as the
    /// run's: lxc-start leaves its monitor running, which a sweep must not
    /// kill before `lxc-destroy` stops the container through it.
    async fn start(&self, spec: &CloneSpec) -> Result<()> {
        let mut args = vec![
            "--name".to_string(),
            self.name.clone(),
            "--daemon".into(),
            format!(
                "--define=lxc.console.logfile={}",
                self.console_log.display()
            ),
        ];
        if spec.ephemeral {
            args.push("--define=lxc.ephemeral=1".into());
        }
        if let Some(dir) = &spec.baseimage {
            args.push(format!(
                "--define=lxc.mount.entry={dir} {} none bind,ro,create=dir 0 0",
                BASEIMAGE_PATH.trim_start_matches('/')
            ));
        }
        args.extend(spec.lxcargs.iter().cloned());
        self.lxc
            .run_marked("lxc-start", &args, false)
            .await
            .map(drop)
            .map_err(|e| self.failure(&e.detail()))
    }

    /// A testbed failure saying `what`, with the end of the console log.
    fn failure(&self, what: &str) -> TestbedError {
        let log = std::fs::read_to_string(&self.console_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        if tail.is_empty() {
            return TestbedError::Failure(what.to_string());
        }
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        TestbedError::Failure(format!(
            "{what}; the end of its console log ({}):\n{}",
            self.console_log.display(),
            tail.join("\n")
        ))
    }

    /// The host argv that runs `req` in the clone as root (or its user).
    fn attach_argv(&self, req: &ExecRequest) -> Vec<String> {
        let mut args = vec![
            "--name".to_string(),
            self.name.clone(),
            "--clear-env".into(),
            "--".into(),
            "env".into(),
        ];
        args.extend(BASE_ENV.map(String::from));
        args.extend(in_testbed_argv(req));
        self.lxc.argv("lxc-attach", &args)
    }

    async fn attach(&self, req: ExecRequest) -> Result<ExecOutcome> {
        run_local(&self.attach_argv(&req), req).await
    }

    /// Runs `script` as root; fails saying `what` unless it exits 0.
    async fn check_root(&self, script: &str, what: &str) -> Result<String> {
        let out = self.attach(ExecRequest::shell(script).capture()).await?;
        if out.status.success() {
            Ok(out.stdout_text())
        } else {
            Err(TestbedError::Failure(format!(
                "{what} in lxc container {}: {}",
                self.name,
                out.stderr_last_line()
            )))
        }
    }

    /// Waits until a command runs in the clone, with an init other than
    /// `old_init` (a reboot), and the boot is complete; within `limit`.
    async fn wait_booted(&self, limit: Duration, old_init: Option<u32>) -> Result<()> {
        let deadline = Instant::now() + limit;
        let late = |what: &str| {
            self.failure(&format!(
                "lxc container {} {what} within {}s",
                self.name,
                limit.as_secs()
            ))
        };
        loop {
            let init = self.lxc.init_pid(&self.name).await;
            if init.is_some() && init != old_init {
                let probe = ExecRequest::new(["true"])
                    .capture()
                    .timeout(PROBE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now())));
                if self.attach(probe).await?.status.success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(late(if old_init.is_some() {
                    "did not come back after its reboot"
                } else {
                    "did not start"
                }));
            }
            tokio::time::sleep(POLL).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let out = self
            .attach(ExecRequest::shell(AWAIT_BOOT).capture().timeout(left))
            .await?;
        if out.timed_out {
            return Err(late("did not finish booting"));
        }
        let state = out.stdout_text().trim().to_string();
        if !matches!(state.as_str(), "running" | "started") {
            tracing::warn!("lxc container {} booted in state {state:?}", self.name);
        }
        Ok(())
    }

    /// Destroys the clone ([`Lxc::destroy_blocking`] on a thread of its
    /// own, which finishes even if this future is dropped); forgets the
    /// undo note.
    async fn destroy(mut self) -> Result<()> {
        let (lxc, name) = (self.lxc.clone(), std::mem::take(&mut self.name));
        let destroyed = tokio::task::spawn_blocking(move || lxc.destroy_blocking(&name))
            .await
            .map_err(|e| TestbedError::failure("destroying an lxc clone", e))?;
        if destroyed.is_ok() {
            self.forget();
        }
        destroyed
    }

    fn forget(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo.done();
        }
    }
}

impl Drop for LxcClone {
    /// A clone not destroyed (an open dropped by Ctrl-C, a testbed dropped
    /// without close) is destroyed here, blocking.
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        match self.lxc.destroy_blocking(&self.name) {
            Ok(()) => self.forget(),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// The clone names of a testbed: `--name`, then NAME-1, NAME-2... (`n`
/// counts its clones); by default `dep8-RUN-N`, RUN from the run dir's name
/// (or dep8's pid) and N counting every clone of the process, so that
/// `lxc-ls` tells whose a clone is.
fn clone_name(name: Option<&str>, n: usize) -> String {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    match (name, n) {
        (Some(name), 0) => name.to_string(),
        (Some(name), n) => format!("{name}-{n}"),
        (None, _) => {
            let run = dep8_testbed::leftovers::current()
                .and_then(|dir| {
                    let name = dir.file_name()?.to_string_lossy().into_owned();
                    name.rsplit_once('.').map(|(_, id)| id.to_string())
                })
                .unwrap_or_else(|| std::process::id().to_string());
            format!("dep8-{run}-{}", MADE.fetch_add(1, Ordering::Relaxed))
        }
    }
}

/// An open lxc testbed: the current clone, the next one being made, the
/// bases kept after the setup.
pub struct LxcTestbed {
    spec: CloneSpec,
    /// `--name`.
    name: Option<String>,
    /// Clones made so far (for their names).
    made: AtomicUsize,
    clone: Option<LxcClone>,
    /// The next clone, made in the background from the first revert on.
    spare: Option<JoinHandle<Result<LxcClone>>>,
    /// Reverted clones being destroyed.
    ending: Vec<JoinHandle<Result<()>>>,
    /// The stopped clones kept as revert bases ([`Testbed::commit_base`]),
    /// each made from the one before; the last is the spec's origin.
    /// Destroyed last-first, after every clone made from them.
    bases: Vec<LxcClone>,
    caps: Capabilities,
    /// The init pid before a reboot the testbed starts itself.
    prepared_init: Mutex<Option<u32>>,
    /// Between prepare_reboot and await_reboot: a command that fails
    /// because the clone goes down is no testbed failure.
    rebooting: AtomicBool,
    /// Keeps the console logs until the testbed is dropped.
    _log_dir: tempfile::TempDir,
}

impl LxcTestbed {
    pub async fn open(opts: Options) -> Result<LxcTestbed> {
        let lxc = Lxc::new(&opts);
        if which::which("lxc-copy").is_err() {
            return Err(TestbedError::Usage(
                "lxc-copy is not installed (apt-get install lxc)".into(),
            ));
        }
        let config = TemplateConfig::parse(&lxc.read_config(&opts.template).await?);
        let baseimage = match (opts.baseimage, config.rootfs_dir()) {
            (false, _) => None,
            (true, Some(dir)) if !dir.contains(char::is_whitespace) => Some(dir.to_string()),
            (true, _) => {
                return Err(TestbedError::Usage(format!(
                    "--baseimage needs a directory-backed template, and {} has \
                     lxc.rootfs.path = {}",
                    opts.template, config.rootfs
                )))
            }
        };
        let log_dir = tempfile::Builder::new()
            .prefix("dep8-lxc.")
            .tempdir()
            .map_err(|e| TestbedError::failure("making a temp dir", e))?;
        let spec = CloneSpec {
            lxc,
            template: opts.template.clone(),
            origin: opts.template.clone(),
            overlay: config.rootfs_dir().is_some(),
            ephemeral: opts.ephemeral,
            baseimage,
            lxcargs: opts.lxcargs.clone(),
            boot_timeout: Duration::from_secs(opts.boot_timeout),
            log_dir: log_dir.path().to_path_buf(),
        };
        let mut caps = Capabilities::new([
            Capability::RootOnTestbed,
            Capability::Revert,
            Capability::RevertFullSystem,
            Capability::IsolationContainer,
            Capability::Reboot,
        ]);
        if config.nesting {
            caps.insert(Capability::Nesting);
        }
        if spec.baseimage.is_some() {
            caps.insert(Capability::BaseImage);
            caps.baseimage = Some(BaseImage {
                path: BASEIMAGE_PATH.into(),
                kind: BaseImageKind::Directory,
            });
        }
        let clone = LxcClone::create(&spec, clone_name(opts.name.as_deref(), 0)).await?;
        caps.suggested_normal_users = normal_user(&clone).await?.into_iter().collect();
        Ok(LxcTestbed {
            spec,
            name: opts.name,
            made: AtomicUsize::new(1),
            clone: Some(clone),
            spare: None,
            ending: Vec::new(),
            bases: Vec::new(),
            caps,
            prepared_init: Mutex::new(None),
            rebooting: AtomicBool::new(false),
            _log_dir: log_dir,
        })
    }

    fn clone(&self) -> Result<&LxcClone> {
        self.clone
            .as_ref()
            .ok_or_else(|| TestbedError::Failure("the lxc clone is gone".into()))
    }

    /// The name of the next clone.
    fn next_name(&self) -> String {
        clone_name(
            self.name.as_deref(),
            self.made.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Makes the next clone in the background.
    fn make_in_background(&self) -> JoinHandle<Result<LxcClone>> {
        let spec = self.spec.clone();
        let name = self.next_name();
        tokio::spawn(async move { LxcClone::create(&spec, name).await })
    }

    /// Destroys the spare, if any, in the background once it is made.
    fn discard_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            self.ending.push(tokio::spawn(async move {
                spare
                    .await
                    .map_err(|e| TestbedError::failure("making an lxc clone", e))??
                    .destroy()
                    .await
            }));
        }
    }

    /// Waits for the clone to come back from a reboot (a new init, a
    /// complete boot).
    async fn await_new_init(&self, old_init: Option<u32>) -> Result<()> {
        let clone = self.clone()?;
        clone
            .wait_booted(self.spec.boot_timeout, Some(old_init.unwrap_or(0)))
            .await?;
        // The scratch dir is on the clone's disk; make sure it is there.
        clone
            .check_root(
                &format!("test -d {SCRATCH}"),
                "finding the scratch dir after a reboot",
            )
            .await
            .map(drop)
    }
}

/// The first account with a uid from 1000 to 59999 (Debian Policy's
/// dynamically allocated users), as autopkgtest-virt-lxc picks it.
async fn normal_user(clone: &LxcClone) -> Result<Option<String>> {
    let out = clone
        .check_root(
            "getent passwd | sort -t: -nk3 | awk -F: '$3 >= 1000 && $3 <= 59999 { print $1; exit }'",
            "looking for a normal user",
        )
        .await?;
    Ok(Some(out.trim().to_string()).filter(|u| !u.is_empty()))
}

#[async_trait]
impl Testbed for LxcTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        SCRATCH
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut facts = BTreeMap::new();
        facts.insert("lxc-template".into(), self.spec.template.clone());
        if let Some(clone) = &self.clone {
            facts.insert("lxc-clone".into(), clone.name.clone());
        }
        facts.insert("lxc-ephemeral".into(), self.spec.ephemeral.to_string());
        facts
    }

    fn logs(&self) -> Vec<(String, PathBuf)> {
        self.clone
            .iter()
            .filter(|c| c.console_log.exists())
            .map(|c| ("lxc-console.log".to_string(), c.console_log.clone()))
            .collect()
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        let clone = self.clone()?;
        let out = clone.attach(req).await?;
        if out.status == ExitStatus::Code(ATTACH_FAILED)
            && !self.rebooting.load(Ordering::Relaxed)
            && clone.lxc.state(&clone.name).await != "RUNNING"
        {
            return Err(clone.failure(&format!("lxc container {} is not running", clone.name)));
        }
        Ok(out)
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        copy_down_via_exec(self, host, testbed_path).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        copy_up_via_exec(self, testbed_path, host).await
    }

    /// Swaps in the next clone; the old one is destroyed in the
    /// background, and the one after is made in the background too.
    async fn revert(&mut self) -> Result<()> {
        let (done, busy): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ending)
            .into_iter()
            .partition(|work| work.is_finished());
        self.ending = busy;
        for work in done {
            if let Ok(Err(e)) = work.await {
                tracing::warn!("{e}");
            }
        }
        if let Some(old) = self.clone.take() {
            self.ending.push(tokio::spawn(old.destroy()));
        }
        let spare = match self.spare.take() {
            Some(spare) => spare,
            None => self.make_in_background(),
        };
        let clone = spare
            .await
            .map_err(|e| TestbedError::failure("making an lxc clone", e))??;
        self.clone = Some(clone);
        self.spare = Some(self.make_in_background());
        Ok(())
    }

    /// Stops the clone (a clean shutdown, so that services the setup
    /// started write their state) and keeps it as the base later clones are made from;
    /// swaps in a clone of it at once, and drops the spare made before.
    /// Only for overlay clones: not with `--ephemeral` (lxc destroys an
    /// ephemeral clone as it stops), nor on other storages (lvm makes no
    /// snapshot of a snapshot).
    async fn commit_base(&mut self) -> Result<bool> {
        if self.spec.ephemeral || !self.spec.overlay {
            return Ok(false);
        }
        self.discard_spare();
        let base = self
            .clone
            .take()
            .ok_or_else(|| TestbedError::Failure("the lxc clone is gone".into()))?;
        let stopped = base
            .lxc
            .run("lxc-stop", &["--name", base.name.as_str()])
            .await
            .map_err(|e| base.failure(&format!("stopping it to keep its setup: {}", e.detail())));
        self.spec.origin = base.name.clone();
        self.bases.push(base);
        stopped?;
        self.clone = Some(LxcClone::create(&self.spec, self.next_name()).await?);
        Ok(true)
    }

    async fn reboot(&mut self) -> Result<()> {
        let clone = self.clone()?;
        let old_init = clone.lxc.init_pid(&clone.name).await;
        // --nowait: lxc-stop would wait for the reboot with a limit of its
        // own; dep8 waits below, with the boot timeout and a console log.
        clone
            .lxc
            .run(
                "lxc-stop",
                &["--name", clone.name.as_str(), "--reboot", "--nowait"],
            )
            .await
            .map_err(|e| clone.failure(&format!("rebooting: {}", e.detail())))?;
        self.await_new_init(old_init).await
    }

    async fn prepare_reboot(&self) -> Result<()> {
        let clone = self.clone()?;
        *self.prepared_init.lock().expect("lock") = clone.lxc.init_pid(&clone.name).await;
        self.rebooting.store(true, Ordering::Relaxed);
        clone
            .check_root(
                dep8_testbed::RELEASE_PREPARED,
                "releasing the test to reboot",
            )
            .await
            .map(drop)
    }

    async fn await_reboot(&mut self) -> Result<()> {
        let old_init = self.prepared_init.lock().expect("lock").take();
        let result = self.await_new_init(old_init).await;
        self.rebooting.store(false, Ordering::Relaxed);
        result
    }

    /// Destroys the clone, the spare and the reverted ones, then the
    /// bases.
    async fn close(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        self.discard_spare();
        if let Some(clone) = self.clone.take() {
            self.ending.push(tokio::spawn(clone.destroy()));
        }
        for work in std::mem::take(&mut self.ending) {
            match work.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e.detail()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        while let Some(base) = self.bases.pop() {
            if let Err(e) = base.destroy().await {
                errors.push(e.detail());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TestbedError::Failure(errors.join("; ")))
        }
    }
}

impl Drop for LxcTestbed {
    /// Without close: background work stops (a clone being made is
    /// destroyed as its task is dropped); the current clone, then the
    /// bases, are destroyed as they drop.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.abort();
        }
        for work in self.ending.drain(..) {
            work.abort();
        }
        drop(self.clone.take());
        while let Some(base) = self.bases.pop() {
            drop(base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn autopkgtest_virt_lxc_arguments() {
        // debci's form.
        let o = Options::parse(&args(&[
            "--sudo",
            "--name",
            "ci-1",
            "autopkgtest-sid-amd64",
        ]))
        .unwrap();
        assert!(o.sudo && !o.ephemeral);
        assert_eq!(o.name.as_deref(), Some("ci-1"));
        assert_eq!(o.template, "autopkgtest-sid-amd64");
        // Short options, argparse's prefixes, lxc-start's arguments after
        // the template.
        let o = Options::parse(&args(&[
            "-e",
            "-s",
            "-d",
            "-P",
            "/srv/lxc",
            "--base",
            "t",
            "--define",
            "lxc.net.0.type=none",
        ]))
        .unwrap();
        assert!(o.ephemeral && o.sudo && o.debug && o.baseimage);
        assert_eq!(o.lxcpath.as_deref(), Some("/srv/lxc"));
        assert_eq!(o.lxcargs, ["--define", "lxc.net.0.type=none"]);
        let o = Options::parse(&args(&["--timeout-reboot", "20", "t"])).unwrap();
        assert_eq!(o.boot_timeout, 20);
        for bad in [&[][..], &["--frob", "t"], &["--disk-limit", "2G", "t"]] {
            assert!(
                matches!(Options::parse(&args(bad)), Err(TestbedError::Usage(_))),
                "{bad:?}"
            );
        }
        let err = Options::parse(&args(&["--disk-limit=2G", "t"])).unwrap_err();
        assert!(err.to_string().contains("--disk-limit 2G"), "{err}");
    }

    #[test]
    fn the_lxc_tools_argv() {
        let lxc = Lxc {
            sudo: true,
            lxcpath: Some("/srv/lxc".into()),
        };
        assert_eq!(
            lxc.argv("lxc-info", &["-n", "c"]),
            [
                "sudo",
                "--non-interactive",
                "lxc-info",
                "--lxcpath=/srv/lxc",
                "-n",
                "c"
            ]
        );
        let lxc = Lxc {
            sudo: false,
            lxcpath: None,
        };
        assert_eq!(lxc.argv("lxc-info", &["-n", "c"]), ["lxc-info", "-n", "c"]);
    }

    #[test]
    fn template_configuration() {
        let config = TemplateConfig::parse(
            "# lxc.include = /usr/share/lxc/config/nesting.conf\n\
             lxc.include = /usr/share/lxc/config/common.conf\n\
             lxc.rootfs.path = dir:/var/lib/lxc/t/rootfs\n",
        );
        assert!(!config.nesting, "a comment does not count");
        assert_eq!(config.rootfs_dir(), Some("/var/lib/lxc/t/rootfs"));
        let config = TemplateConfig::parse(
            "lxc.include=/usr/share/lxc/config/nesting.conf\nlxc.rootfs.path = btrfs:/x\n",
        );
        assert!(config.nesting);
        assert_eq!(config.rootfs_dir(), None);
        assert_eq!(
            TemplateConfig::parse("lxc.rootfs.path = /srv/root\n").rootfs_dir(),
            Some("/srv/root")
        );
    }

    #[test]
    fn clone_names() {
        assert_eq!(clone_name(Some("ci-1"), 0), "ci-1");
        assert_eq!(clone_name(Some("ci-1"), 2), "ci-1-2");
        let (first, second) = (clone_name(None, 0), clone_name(None, 0));
        assert!(first.starts_with("dep8-"), "{first}");
        assert_ne!(first, second, "unique in the process");
    }
}
