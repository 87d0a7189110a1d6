//! The `qemu` backend: a whole virtual machine per testbed.
//!
//! The image is never written: the VM runs on a temporary qcow2 overlay
//! backed by it. It boots the image's own boot loader (BIOS or UEFI, as
//! the image's partition table says; see [`boot`]) or a kernel given on
//! the command line or kept beside the image (an ELF kernel through
//! dep8's PVH loader, see [`pvh`]). Commands go over ssh to the guest's sshd through a
//! user-network port forward on 127.0.0.1; the client key and the guest's
//! host key are made per testbed and handed to the guest with `-fw_cfg`
//! (a unit installed by `dep8 image build qemu` puts them in place before
//! sshd starts), so the host key is checked exactly. The guest says when
//! sshd is up on a virtio-serial port, so ssh connects once. A guest
//! without dep8's units but with autopkgtest's root shell on hvc1 (the
//! images autopkgtest-build-qemu makes) is let in through that shell
//! (see [`shell`]). QEMU is
//! driven over QMP; the serial console goes to a log file.
//!
//! KVM is used only when a probe proves it works (see [`accel`]), TCG
//! otherwise. Revert restores a snapshot taken right after the first boot
//! (`savevm`/`loadvm` in the overlay) or, with `--revert boot`, boots a
//! fresh overlay.

mod accel;
mod boot;
mod clock;
mod pvh;
mod qmp;
mod shell;

use accel::Accel;
use async_trait::async_trait;
use boot::{file_len, tail, tail_from, BootFiles, BootWatch, DiskBoot, Ready};
use clap::Parser;
use clock::{ClockLink, CLOCK_PORT, START_CLOCK};
use dep8_backend_ssh::{SshConnection, SshTarget};
use dep8_testbed::capability::{BaseImage, BaseImageKind, Capabilities, Capability};
use dep8_testbed::exec::host_command;
use dep8_testbed::kept::{self, KeptTree};
use dep8_testbed::ports::free_loopback_ports;
use dep8_testbed::{
    Backend, ExecOutcome, ExecRequest, OpenContext, Output, Result, Tap, Testbed, TestbedError,
};
use qmp::Qmp;
use serde_json::json;
use shell::RootShell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The scratch dir in the guest: on disk (not /tmp, which systemd empties
/// at boot), so it survives a reboot.
const SCRATCH: &str = "/var/tmp/dep8-scratch";

/// The QEMU binary dep8 runs unless told otherwise.
const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The account `dep8 image build qemu` creates for tests without needs-root.
const NORMAL_USER: &str = "dep8";

/// Kernel command line for direct kernel boot of an image built by dep8
/// (its root filesystem's label, partitioned or not).
pub const DEFAULT_CMDLINE: &str =
    "root=LABEL=dep8-root rw console=ttyS0 no_timer_check net.ifnames=0";

/// The name the guest's host key is recorded under, whatever the port.
const HOST_ALIAS: &str = "dep8-testbed";

/// The internal snapshot reverts load: the pristine guest, or the kept setup.
const SNAPSHOT: &str = "dep8-pristine";

/// How long ssh may take to let dep8 in once a guest without dep8's
/// readiness unit shows a login prompt: sshd starts about when the gettys
/// do. An image without sshd or dep8's key unit (autopkgtest-build-qemu's)
/// fails after this, not after the whole `--boot-timeout`.
const SSH_AFTER_LOGIN_PROMPT: Duration = Duration::from_secs(60);

/// How long autopkgtest's root shell on hvc1 may take to answer once a
/// guest without dep8's readiness unit shows a login prompt: setup-testbed
/// starts it with the gettys (`multi-user.target`).
const ROOT_SHELL_AFTER_LOGIN_PROMPT: Duration = Duration::from_secs(15);

/// The file, in its kept dir ([`kept`]), of the layer over an image that
/// holds the openssh-server installed through the root shell.
const LET_IN_LAYER: &str = "let-in.qcow2";

/// How long the guest may take to power off before its let-in layer is
/// kept.
const LET_IN_POWEROFF: Duration = Duration::from_secs(60);

/// How long the spare ssh links may take to connect, all together.
const SPARE_CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// How long to wait for the guest to go quiet before a snapshot.
const QUIET_LIMIT: Duration = Duration::from_secs(5);

/// Waits (a bounded while) until systemd has no start-up job left and
/// udev no event, where the guest has them.
const SETTLE: &str = "timeout 30 systemctl is-system-running --wait >/dev/null 2>&1; \
                      udevadm settle --timeout=10 >/dev/null 2>&1; true";

/// The virtio-serial port names of the spare ssh links, numbered from 0.
const SPARE_PORT: &str = "org.dep8.spare.";

/// `start_spares PREFIX N`: (re)starts an `sshd -i` on each of the guest's
/// virtio-serial ports PREFIX0 .. PREFIX(N-1), each in a session of its own
/// recorded in /run, ending the one a previous call started there. Its
/// banner waits in the port until the host connects. Returns once each
/// has its session: the command's own process group is killed as it ends.
const SPARE_SSHD: &str = r#"start_spares() {
  sshd=$(command -v sshd || echo /usr/sbin/sshd)
  n=0
  while [ $n -lt $2 ]; do
    pid=/run/dep8-spare$n.pid
    [ -s $pid ] && kill -KILL -- -$(cat $pid) 2>/dev/null
    rm -f $pid
    i=0
    # The port by its name in sysfs: its /dev/virtio-ports link waits for
    # udev's coldplug, which may still run.
    until port=/dev/$(grep -lx "$1$n" /sys/class/virtio-ports/*/name | cut -d/ -f5) &&
      ( : <>$port ) 2>/dev/null; do
      [ $i -lt 100 ] || { echo "$port cannot be opened" >&2; return 1; }
      sleep 0.05; i=$((i+1))
    done
    setsid sh -c 'echo $$ > "$1"; exec "$2" -i <>"$3" >&0 2>/dev/null' \
      sh $pid "$sshd" $port </dev/null >/dev/null 2>&1 &
    n=$((n+1))
  done
  n=0 i=0
  while [ $n -lt $2 ]; do
    if [ -s /run/dep8-spare$n.pid ]; then n=$((n+1)); continue; fi
    [ $i -lt 100 ] || { echo "sshd -i on $1$n did not start" >&2; return 1; }
    sleep 0.05; i=$((i+1))
  done
}"#;

/// The udev rule that names the base image drive `/dev/baseimage` and
/// keeps it out of `/dev/disk/by-*` (its filesystem has the root's UUID
/// and label), written to /run before the drive is plugged in.
const BASEIMAGE_RULE: &str = "\
SUBSYSTEM==\"block\", KERNEL==\"vd*\", ATTRS{serial}==\"BASEIMAGE\", \
ENV{UDEV_DISABLE_PERSISTENT_STORAGE_RULES_FLAG}=\"1\", OPTIONS+=\"link_priority=-1024\"
SUBSYSTEM==\"block\", KERNEL==\"vd*\", ENV{DEVTYPE}==\"disk\", ATTRS{serial}==\"BASEIMAGE\", \
SYMLINK+=\"baseimage\"
SUBSYSTEM==\"block\", KERNEL==\"vd*\", ENV{DEVTYPE}==\"partition\", ATTRS{serial}==\"BASEIMAGE\", \
SYMLINK+=\"baseimage-part%n\"
";

/// What the overlay's snapshot holds: what a snapshot revert loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saved {
    /// Nothing yet: a revert boots a fresh overlay.
    Nothing,
    /// The guest as it booted.
    Pristine,
    /// The guest with the run's setup (`commit_base`): nothing else can
    /// give it back.
    Setup,
}

/// How `revert` restores the saved guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RevertMethod {
    /// Load the snapshot saved after the first boot, or after the run's
    /// setup when it has one (`loadvm`).
    Snapshot,
    /// Kill the VM and boot it again on a fresh overlay.
    Boot,
}

/// How the firmware boots the VM (autopkgtest-virt-qemu's `--boot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BootMode {
    /// As the image says: BIOS when its MBR has boot code (or a kernel is
    /// given), UEFI when it has only an EFI system partition.
    Auto,
    /// QEMU's BIOS (SeaBIOS).
    Bios,
    /// UEFI firmware (OVMF).
    Efi,
    /// OpenFirmware (POWER): refused, dep8 runs x86 guests.
    Ieee1275,
    /// No firmware setup of autopkgtest's own: QEMU's default, the BIOS.
    None,
}

/// The Debian architectures dep8's QEMU (`qemu-system-x86_64`, machine
/// `pc`) runs, and their QEMU names.
const X86: [(&str, &str); 2] = [("amd64", "x86_64"), ("i386", "i386")];

/// `dep8 run SRC -- qemu [OPTIONS] IMAGE [IMAGE...]`: dep8's options and
/// autopkgtest-virt-qemu's (5.49), as Debusine and debci write them.
#[derive(Parser, Debug, Clone)]
#[command(name = "qemu", no_binary_name = true, infer_long_args = true)]
struct Args {
    /// The disk image (qcow2 or raw), then more disks attached read-only
    /// in order. The first is only read: the VM writes to a temporary
    /// overlay.
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Virtual CPUs.
    #[arg(short, long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    ram_size: u32,
    /// Put the overlay here instead of in a temporary dir.
    #[arg(short, long, value_name = "DIR")]
    overlay_dir: Option<PathBuf>,
    /// Boot with UEFI firmware (OVMF) instead of QEMU's BIOS: the kernel
    /// (direct boot) or the image's own boot loader. Same as --boot efi.
    #[arg(long)]
    efi: bool,
    /// The boot protocol: bios (and none) boot with QEMU's BIOS, efi with
    /// OVMF, auto (the default) as the image's partition table says, or a
    /// kernel beside the image; ieee1275 (POWER) is refused. bios, efi and
    /// none boot the image's own boot loader unless --kernel is given.
    #[arg(long, value_enum)]
    boot: Option<BootMode>,
    /// The guest's Debian architecture (amd64 or i386; checked once booted).
    #[arg(long, value_name = "ARCH")]
    dpkg_architecture: Option<String>,
    /// The guest's QEMU architecture (x86_64 or i386).
    #[arg(long, value_name = "ARCH")]
    qemu_architecture: Option<String>,
    /// More QEMU options (one string, split like a shell does).
    #[arg(long, value_name = "OPTIONS", allow_hyphen_values = true)]
    qemu_options: Option<String>,
    /// The QEMU binary (then dep8 picks no CPU model).
    #[arg(short, long, value_name = "PROGRAM")]
    qemu_command: Option<String>,
    /// Refused: dep8 never logs in on the serial console (it reaches the
    /// guest over ssh with keys handed over by fw_cfg).
    #[arg(short, long, hide = true)]
    user: Option<String>,
    /// Refused, as --user.
    #[arg(short, long, hide = true)]
    password: Option<String>,
    /// Copy the serial console to stderr while the guest boots.
    #[arg(long)]
    show_boot: bool,
    /// At close, power the guest off from within and wait this long before
    /// killing QEMU (default: QEMU is stopped at once).
    #[arg(long, value_name = "SECONDS")]
    timeout_poweroff: Option<u64>,
    /// Accepted for autopkgtest-virt-qemu; dep8's own `-d` (before `--`)
    /// turns on debug output.
    #[arg(short, long)]
    debug: bool,
    /// Attach the pristine image read-only as /dev/baseimage.
    #[arg(long)]
    baseimage: bool,
    /// QEMU CPU model (default: `host` under KVM, `qemu64,-svm` under TCG).
    #[arg(long, value_name = "MODEL")]
    cpu: Option<String>,
    /// Kernel for direct boot (default with --boot auto: IMAGE.vmlinux
    /// or IMAGE.vmlinuz, if there).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd for direct boot (default: IMAGE.initrd, if present).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    append: String,
    /// How long a boot or reboot may take until ssh answers, in seconds
    /// (autopkgtest's --timeout-reboot).
    #[arg(
        long,
        alias = "timeout-reboot",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    boot_timeout: u64,
    /// How to revert.
    #[arg(long, value_enum, default_value_t = RevertMethod::Snapshot)]
    revert: RevertMethod,
    /// How many snapshot reverts take up an ssh connection kept idle in
    /// the snapshot instead of connecting anew (each costs a connection
    /// when the snapshot is taken); later reverts connect again.
    #[arg(long, value_name = "N", default_value_t = 4)]
    quick_reverts: usize,
}

pub struct QemuBackend;

/// What every qemu testbed provides; `baseimage` is added with
/// `--baseimage`. `nesting` always holds: a guest can run VMs of its own,
/// with nested KVM where the host exposes it, by software emulation
/// otherwise, and containers on its own kernel.
const ALWAYS: [Capability; 7] = [
    Capability::RootOnTestbed,
    Capability::Revert,
    Capability::RevertFullSystem,
    Capability::IsolationContainer,
    Capability::IsolationMachine,
    Capability::Reboot,
    Capability::Nesting,
];

#[async_trait]
impl Backend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn summary(&self) -> &'static str {
        "a QEMU virtual machine on a throw-away overlay of a disk image"
    }

    fn capabilities_hint(&self) -> Vec<Capability> {
        let mut caps = ALWAYS.to_vec();
        caps.push(Capability::BaseImage);
        caps
    }

    fn capabilities_for(&self, args: &[String]) -> Vec<Capability> {
        match Args::try_parse_from(args) {
            Ok(args) if !args.baseimage => ALWAYS.to_vec(),
            _ => self.capabilities_hint(),
        }
    }

    /// Every open is another overlay on the same image, in another VM:
    /// as many as the host's available memory holds.
    fn max_testbeds(&self, args: &[String]) -> usize {
        let Ok(args) = Args::try_parse_from(args) else {
            return 1;
        };
        let available_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| mem_available_kb(&info))
            .map_or(0, |kb| kb / 1024);
        // QEMU itself takes some memory beside the guest's.
        let per_vm_mb = u64::from(args.ram_size) + 256;
        usize::try_from(available_mb / per_vm_mb)
            .unwrap_or(usize::MAX)
            .max(1)
    }

    async fn open(&self, args: &[String]) -> Result<Box<dyn Testbed>> {
        self.open_in(args, OpenContext::default()).await
    }

    /// When no revert can return to the state the open leaves (the run
    /// keeps a setup first, or never reverts), the pristine guest is not
    /// saved: the setup's snapshot ([`Testbed::commit_base`]), if any, is
    /// the first.
    async fn open_in(&self, args: &[String], context: OpenContext<'_>) -> Result<Box<dyn Testbed>> {
        let tb = QemuTestbed::open(parse_args(args)?, context).await?;
        Ok(Box::new(tb))
    }
}

/// Waits until process `pid` (QEMU) uses at most a tenth of a CPU over
/// 200 ms, that is until its guest idles; false when `limit` passed first.
async fn wait_until_quiet(pid: u32, limit: Duration) -> bool {
    const WINDOW: Duration = Duration::from_millis(200);
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let started = Instant::now();
    let Some(mut before) = cpu_ticks(pid) else {
        return false;
    };
    while started.elapsed() < limit {
        tokio::time::sleep(WINDOW).await;
        let Some(now) = cpu_ticks(pid) else {
            return false;
        };
        if (now - before) as f64 / ticks_per_second <= WINDOW.as_secs_f64() / 10.0 {
            return true;
        }
        before = now;
    }
    false
}

/// The CPU time process `pid` has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses: utime
    // and stime are the 14th and 15th of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `MemAvailable` of /proc/meminfo, in kB.
fn mem_available_kb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Refuses what dep8's QEMU cannot honour (exit 20, never ignored).
/// The backend's arguments, parsed and checked.
fn parse_args<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(
    words: I,
) -> Result<Args> {
    let args = Args::try_parse_from(words).map_err(|e| TestbedError::Usage(e.to_string()))?;
    check_args(&args)?;
    Ok(args)
}

fn check_args(args: &Args) -> Result<()> {
    let usage = |msg: String| Err(TestbedError::Usage(msg));
    match (args.efi, args.boot) {
        (true, Some(mode)) if mode != BootMode::Efi => {
            return usage(format!("--efi and --boot {mode:?} disagree").to_lowercase())
        }
        (_, Some(BootMode::Ieee1275)) => {
            return usage(
                "--boot ieee1275: OpenFirmware boots POWER machines; dep8's qemu backend \
                 runs x86 guests (qemu-system-x86_64)"
                    .into(),
            )
        }
        _ => {}
    }
    if let Some(arch) = &args.dpkg_architecture {
        if !X86.iter().any(|(dpkg, _)| dpkg == arch) {
            return usage(format!(
                "--dpkg-architecture {arch}: dep8's qemu backend runs x86 guests (amd64, i386) \
                 with qemu-system-x86_64; a foreign architecture is not supported"
            ));
        }
    }
    if let Some(arch) = &args.qemu_architecture {
        if !X86.iter().any(|(_, qemu)| qemu == arch) && arch != "i686" {
            return usage(format!(
                "--qemu-architecture {arch}: dep8's qemu backend runs x86 guests (x86_64, i386) \
                 with qemu-system-x86_64"
            ));
        }
    }
    if args.user.is_some() || args.password.is_some() {
        return usage(
            "--user/--password: dep8 never logs in on the serial console; it reaches the guest \
             over ssh as root with a key handed over by fw_cfg (images from `dep8 image build qemu`)"
                .into(),
        );
    }
    Ok(())
}

/// The UEFI firmware `--efi` boots with (package `ovmf`): one image with
/// its variable store in RAM, so no writable flash drive keeps `savevm`
/// from working.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// What the firmware boots.
enum Boot {
    Direct {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
        /// dep8's PVH loader for an ELF kernel (see [`pvh`]), which QEMU
        /// starts instead, the kernel going in by fw_cfg.
        loader: Option<PathBuf>,
    },
    /// The image's own boot loader.
    Disk,
}

/// A running QEMU.
struct Vm {
    child: tokio::process::Child,
    /// Locked only where the testbed is shared ([`Testbed::prepare_reboot`]).
    qmp: tokio::sync::Mutex<Qmp>,
    /// Sets the guest's clock after a `loadvm` (with the spare links);
    /// dropped when the guest's loop does not answer.
    clock: Option<ClockLink>,
}

/// A qemu testbed.
pub struct QemuTestbed {
    args: Args,
    image: PathBuf,
    format: &'static str,
    /// More disks, attached read-only after the image (and their formats).
    extra_disks: Vec<(PathBuf, &'static str)>,
    boot: Boot,
    /// UEFI firmware (`--efi`); QEMU's BIOS without.
    firmware: Option<PathBuf>,
    qemu: String,
    qemu_version: String,
    accel: Accel,
    cpu: Option<String>,
    work: tempfile::TempDir,
    overlay: PathBuf,
    /// Holds the overlay when `--overlay-dir` is given.
    _overlay_dir: Option<tempfile::TempDir>,
    /// The port forwarded to the guest's sshd in the current boot.
    port: u16,
    /// The loopback ports of the spare ssh links in the current boot
    /// (virtio-serial ports, see [`QemuTestbed::make_spares`]).
    spare_ports: Vec<u16>,
    vm: Option<Vm>,
    conn: Option<SshConnection>,
    /// Connections that were idle when the snapshot was taken, the next to
    /// take up first: after a `loadvm` each is where the guest's side is.
    spares: Vec<SshConnection>,
    /// Spare connections taken up and then left behind by a revert: kept
    /// open (and idle) until the VM stops, so that the restored guest never
    /// spends time tearing their sessions down.
    used_spares: Vec<SshConnection>,
    caps: Capabilities,
    saved: Saved,
    boot_time: Duration,
    /// Watches the reboot a test asked for, from before it was let go
    /// ([`Testbed::prepare_reboot`]) to [`Testbed::await_reboot`].
    reboot_watch: std::sync::Mutex<Option<BootWatch>>,
    /// The layer over the image, kept in dep8's cache, with openssh-server
    /// installed through the root shell: fresh overlays are made over it.
    let_in_layer: Option<KeptTree>,
}

impl QemuTestbed {
    /// Boots the guest; saves it for snapshot reverts if they may return
    /// to it ([`OpenContext::reverts_to_open`]). With a cache, an image
    /// let in through its root shell boots from the layer kept there.
    async fn open(args: Args, context: OpenContext<'_>) -> Result<Self> {
        let usage = |msg: String| TestbedError::Usage(msg);
        let mut disks = Vec::new();
        for image in &args.images {
            let path = std::path::absolute(image)
                .map_err(|e| usage(format!("{}: {e}", image.display())))?;
            let format =
                image_format(&path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            disks.push((path, format));
        }
        let (image, format) = disks.remove(0);
        // 0700: it holds the ssh keys and the QMP socket.
        let work = tempfile::Builder::new()
            .prefix("dep8-qemu.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| TestbedError::failure("creating a temp dir", e))?;
        let mut boot = boot_files(&args, &image)?;
        let firmware = match boot {
            Boot::Disk => firmware_for(
                &args,
                Some(&DiskBoot::inspect(&image, format, work.path())?),
            ),
            Boot::Direct { .. } => firmware_for(&args, None),
        };
        if let (Boot::Direct { kernel, loader, .. }, None) = (&mut boot, &firmware) {
            *loader = pvh::write_loader(kernel, work.path());
        }
        if let Some(firmware) = firmware.as_ref().filter(|f| !f.exists()) {
            return Err(usage(format!(
                "UEFI boot needs {} (install the ovmf package)",
                firmware.display()
            )));
        }
        let qemu = args
            .qemu_command
            .clone()
            .unwrap_or_else(|| DEFAULT_QEMU.into());
        let qemu_version = qemu_version(&qemu)?;
        let accel = accel::choose(&qemu).await?;
        let user_cpu = args.cpu.clone().or_else(|| {
            let opts = args.qemu_options.as_deref().unwrap_or("");
            (args.qemu_command.is_none() && !opts.contains("-cpu"))
                .then(|| accel.default_cpu().to_string())
        });
        let overlay_dir = match &args.overlay_dir {
            Some(dir) => Some(
                tempfile::Builder::new()
                    .prefix("dep8-qemu-overlay.")
                    .tempdir_in(dir)
                    .map_err(|e| usage(format!("--overlay-dir {}: {e}", dir.display())))?,
            ),
            None => None,
        };
        let overlay = overlay_dir
            .as_ref()
            .map_or(work.path(), |d| d.path())
            .join("overlay.qcow2");
        make_keys(work.path())?;

        let mut caps = Capabilities::new(ALWAYS);
        if args.baseimage {
            caps.insert(Capability::BaseImage);
            caps.baseimage = Some(BaseImage {
                path: "/dev/baseimage".into(),
                kind: BaseImageKind::Block,
            });
        }
        let mut tb = QemuTestbed {
            args,
            image,
            format,
            extra_disks: disks,
            boot,
            firmware,
            qemu,
            qemu_version,
            accel,
            cpu: user_cpu,
            work,
            overlay,
            _overlay_dir: overlay_dir,
            port: 0,
            spare_ports: Vec::new(),
            vm: None,
            conn: None,
            spares: Vec::new(),
            used_spares: Vec::new(),
            caps,
            saved: Saved::Nothing,
            boot_time: Duration::ZERO,
            reboot_watch: std::sync::Mutex::new(None),
            let_in_layer: None,
        };
        let cache = context.cache.filter(|_| tb.offers_root_shell_console());
        if let Some(cache) = cache {
            // It may wait for another run's lock on the layer.
            let (cache, image) = (cache.to_path_buf(), tb.image.clone());
            let found = tokio::task::spawn_blocking(move || kept::find(&cache, &image))
                .await
                .map_err(std::io::Error::other)
                .and_then(|found| found);
            tb.let_in_layer = found.unwrap_or_else(|e| {
                tracing::warn!("qemu: looking for a kept let-in layer: {e}");
                None
            });
        }
        // On failure, `tb` is dropped: QEMU is killed, temp files removed.
        let installed_sshd = tb.boot_fresh().await?;
        if let (true, Some(cache)) = (installed_sshd, cache) {
            tb.keep_let_in_layer(cache).await?;
        }
        if let Some(want) = &tb.args.dpkg_architecture {
            let arch = tb.run_ok("dpkg --print-architecture").await?;
            if arch.trim() != want {
                return Err(TestbedError::Usage(format!(
                    "--dpkg-architecture {want}: the guest of {} is {}",
                    tb.image.display(),
                    arch.trim()
                )));
            }
        }
        let user = tb
            .conn()?
            .exec(ExecRequest::new(["id", "-u", NORMAL_USER]).capture())
            .await?;
        if user.status.success() {
            tb.caps.suggested_normal_users.push(NORMAL_USER.into());
        }
        if tb.args.revert == RevertMethod::Snapshot && context.reverts_to_open {
            tb.save_snapshot(Saved::Pristine).await?;
        }
        Ok(tb)
    }

    fn console_log(&self) -> PathBuf {
        self.work.path().join("console.log")
    }

    /// The files a boot is watched through, in the work dir.
    fn boot_files(&self) -> BootFiles {
        let file = |name: &str| self.work.path().join(name);
        BootFiles {
            console: self.console_log(),
            firmware: file("firmware.log"),
            ready: file("ready.log"),
            qemu_log: file("qemu.log"),
        }
    }

    fn conn(&self) -> Result<&SshConnection> {
        self.conn.as_ref().ok_or_else(not_running)
    }

    /// A failed boot's or reboot's error, with the tail of the console log.
    fn with_console<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            let console = tail(&self.console_log(), 15);
            TestbedError::Failure(format!("{}\nconsole:\n{console}", e.detail()))
        })
    }

    fn conn_mut(&mut self) -> Result<&mut SshConnection> {
        self.conn.as_mut().ok_or_else(not_running)
    }

    fn key(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Kills any running VM, then boots a new one on a fresh overlay and
    /// prepares it (scratch dir, base image). Returns whether openssh-server
    /// was installed through the root shell ([`Self::let_in_through_root_shell`]).
    async fn boot_fresh(&mut self) -> Result<bool> {
        self.stop_vm().await;
        let _ = std::fs::remove_file(&self.overlay);
        let (backing, format) = match &self.let_in_layer {
            Some(kept) => (kept.path().join(LET_IN_LAYER), "qcow2"),
            None => (self.image.clone(), self.format),
        };
        host_command(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &backing.to_string_lossy(),
                "-F",
                format,
                &self.overlay.to_string_lossy(),
            ],
        )?;
        let started = Instant::now();
        let mut watch = self.boot_watch();
        self.start_vm().await?;
        let installed_sshd = match self.wait_up(&mut watch).await? {
            Ready::Signalled => {
                self.connect().await?;
                false
            }
            Ready::LoginPrompt => {
                let installed = self.let_in_through_root_shell().await?;
                self.connect_after_login_prompt().await?;
                installed
            }
        };
        self.boot_time = started.elapsed();
        tracing::info!("qemu: guest ready after {:.1?}", self.boot_time);
        self.run_ok(&format!("mkdir -p -m 1777 {SCRATCH}")).await?;
        self.attach_baseimage().await?;
        Ok(installed_sshd)
    }

    /// A watcher for the boot that starts next.
    fn boot_watch(&self) -> BootWatch {
        BootWatch::new(
            self.boot_files(),
            self.image.display().to_string(),
            self.args.show_boot,
        )
    }

    /// Waits until the guest `watch` watches says it is up; returns how it
    /// said so.
    async fn wait_up(&mut self, watch: &mut BootWatch) -> Result<Ready> {
        let started = Instant::now();
        let limit = Duration::from_secs(self.args.boot_timeout);
        let vm = self.vm.as_mut().ok_or_else(not_running)?;
        let ready = watch.wait(&mut vm.child, limit).await?;
        tracing::debug!(
            "qemu: the guest says it is up ({ready:?}) after {:.1?}",
            started.elapsed()
        );
        Ok(ready)
    }

    /// Starts QEMU on the current overlay and connects to its monitor. The
    /// ports it listens on were free when chosen; one taken in the moment
    /// before QEMU bound it (by another program choosing ports) means
    /// starting again on others.
    async fn start_vm(&mut self) -> Result<()> {
        let spares = match self.args.revert {
            RevertMethod::Snapshot => self.args.quick_reverts,
            RevertMethod::Boot => 0,
        };
        let mut tries = 1;
        loop {
            let mut ports = free_loopback_ports(1 + spares)
                .map_err(|e| TestbedError::failure("finding free ports", e))?;
            self.port = ports.remove(0);
            self.spare_ports = ports;
            match self.start_vm_on_chosen_ports().await {
                Err(TestbedError::Failure(why)) if tries < PORT_TRIES && a_port_was_taken(&why) => {
                    tracing::debug!("qemu: starting again on other ports: {why}");
                    tries += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_vm_on_chosen_ports(&mut self) -> Result<()> {
        let qmp_socket = self.work.path().join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_socket);
        let argv = self.qemu_argv(&qmp_socket)?;
        tracing::debug!("qemu: {}", shell_words::join(&argv));
        let log_path = self.boot_files().qemu_log;
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| TestbedError::failure(log_path.display(), e))
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            // Ctrl-C on the terminal is dep8's to handle, not QEMU's.
            .process_group(0)
            .kill_on_drop(true);
        // A dep8 killed before it could stop QEMU: the next run stops it.
        dep8_testbed::leftovers::tag(cmd.as_std_mut());
        // The log is appended to across starts: this start's lines follow.
        let log_from = file_len(&log_path);
        let mut child = cmd
            .spawn()
            .map_err(|e| TestbedError::failure(format!("cannot run {}", self.qemu), e))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let qmp = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(TestbedError::Failure(format!(
                    "{} exited at start ({status}): {}",
                    self.qemu,
                    tail_from(&log_path, log_from, 10)
                )));
            }
            if qmp_socket.exists() {
                if let Ok(qmp) = Qmp::connect(&qmp_socket).await {
                    break qmp;
                }
            }
            if Instant::now() > deadline {
                return Err(TestbedError::Failure(format!(
                    "{}: no QMP socket after 30 s",
                    self.qemu
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Connected before the guest's loop reads the port, which it
        // would otherwise find at end of file.
        let clock = match self.spare_ports.is_empty() {
            true => None,
            false => ClockLink::connect(&self.clock_socket())
                .await
                .inspect_err(|e| tracing::warn!("qemu: {}", e.detail()))
                .ok(),
        };
        self.vm = Some(Vm {
            child,
            qmp: tokio::sync::Mutex::new(qmp),
            clock,
        });
        Ok(())
    }

    fn clock_socket(&self) -> PathBuf {
        self.work.path().join("clock.sock")
    }

    fn qemu_argv(&self, qmp_socket: &Path) -> Result<Vec<String>> {
        let port = self.port;
        let p = |path: &Path| path.to_string_lossy().into_owned();
        let files = self.boot_files();
        let mut argv: Vec<String> = vec![self.qemu.clone()];
        let mut add = |words: &[&str]| argv.extend(words.iter().map(|w| w.to_string()));
        add(&["-nodefaults", "-no-user-config", "-display", "none"]);
        add(&["-machine", "pc", "-accel", self.accel.name()]);
        if let Some(cpu) = &self.cpu {
            add(&["-cpu", cpu]);
        }
        add(&["-smp", &self.args.cpus.to_string()]);
        add(&["-m", &self.args.ram_size.to_string()]);
        add(&[
            "-chardev",
            &format!("file,id=console,path={},append=on", p(&self.console_log())),
            "-serial",
            "chardev:console",
        ]);
        add(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", p(qmp_socket)),
        ]);
        // cache=unsafe: the overlay is thrown away if the host crashes.
        add(&[
            "-drive",
            &format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                p(&self.overlay)
            ),
        ]);
        for (disk, format) in &self.extra_disks {
            add(&[
                "-drive",
                &format!(
                    "file={},if=virtio,format={format},readonly=on",
                    opt_path(disk)
                ),
            ]);
        }
        add(&[
            "-netdev",
            &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"),
            "-device",
            "virtio-net-pci,netdev=net0",
        ]);
        add(&["-device", "virtio-rng-pci"]);
        // SeaBIOS's log (its I/O port 0x402), where "No bootable device"
        // shows: the serial console stays silent when nothing boots.
        add(&[
            "-chardev",
            &format!("file,id=firmware,path={}", p(&files.firmware)),
            "-device",
            "isa-debugcon,iobase=0x402,chardev=firmware",
        ]);
        // The readiness port: dep8's images write a line to it once sshd
        // is up (dep8-ready.service); appended across boots.
        add(&[
            "-device",
            "virtio-serial-pci,id=dep8-serial",
            "-chardev",
            &format!("file,id=dep8-ready,path={},append=on", p(&files.ready)),
            "-device",
            "virtserialport,bus=dep8-serial.0,chardev=dep8-ready,name=org.dep8.ready",
        ]);
        for (n, port) in self.spare_ports.iter().enumerate() {
            add(&[
                "-chardev",
                &format!("socket,id=dep8-spare{n},host=127.0.0.1,port={port},server=on,wait=off,nodelay=on"),
                "-device",
                &format!("virtserialport,bus=dep8-serial.0,chardev=dep8-spare{n},name={SPARE_PORT}{n}"),
            ]);
        }
        if !self.spare_ports.is_empty() {
            add(&[
                "-chardev",
                &format!(
                    "socket,id=dep8-clock,path={},server=on,wait=off",
                    p(&self.clock_socket())
                ),
                "-device",
                &format!("virtserialport,bus=dep8-serial.0,chardev=dep8-clock,name={CLOCK_PORT}"),
            ]);
        }
        if self.offers_root_shell_console() {
            // As autopkgtest-virt-qemu: hvc0, and hvc1 for the root shell.
            add(&[
                "-device",
                "virtio-serial-pci,id=dep8-consoles",
                "-chardev",
                "null,id=dep8-hvc0",
                "-device",
                "virtconsole,bus=dep8-consoles.0,chardev=dep8-hvc0",
                "-chardev",
                &format!(
                    "socket,id=dep8-hvc1,path={},server=on,wait=off",
                    p(&self.root_shell_socket())
                ),
                "-device",
                "virtconsole,bus=dep8-consoles.0,chardev=dep8-hvc1",
            ]);
        }
        add(&[
            "-fw_cfg",
            &format!(
                "name=opt/dep8/authorized_keys,file={}",
                p(&self.key("id_ed25519.pub"))
            ),
            "-fw_cfg",
            &format!(
                "name=opt/dep8/ssh_host_ed25519_key,file={}",
                p(&self.key("ssh_host_ed25519_key"))
            ),
            "-fw_cfg",
            &format!(
                "name=opt/dep8/ssh_host_ed25519_key.pub,file={}",
                p(&self.key("ssh_host_ed25519_key.pub"))
            ),
        ]);
        match &self.boot {
            Boot::Direct {
                kernel,
                initrd,
                append,
                loader,
            } => {
                match loader {
                    Some(loader) => add(&[
                        "-kernel",
                        &p(loader),
                        "-fw_cfg",
                        &format!("name={},file={}", pvh::FW_CFG_NAME, opt_path(kernel)),
                    ]),
                    None => add(&["-kernel", &p(kernel)]),
                }
                add(&["-append", append]);
                if let Some(initrd) = initrd {
                    add(&["-initrd", &p(initrd)]);
                }
            }
            Boot::Disk => {}
        }
        // OVMF loads a direct-boot kernel from fw_cfg as an EFI program.
        if let Some(firmware) = &self.firmware {
            add(&["-bios", &p(firmware)]);
        }
        if let Some(opts) = &self.args.qemu_options {
            let words = shell_words::split(opts)
                .map_err(|e| TestbedError::Usage(format!("--qemu-options: {e}")))?;
            argv.extend(words);
        }
        Ok(argv)
    }

    /// How ssh reaches the guest in the current boot.
    fn ssh_target(&self) -> SshTarget {
        let mut target = SshTarget::new("127.0.0.1");
        target.port = Some(self.port);
        target.login = Some("root".into());
        target.identity = Some(self.key("id_ed25519"));
        target.known_hosts = Some(self.key("known_hosts"));
        // Key exchange: curve25519 costs an emulated guest about 0.1 s
        // less than OpenSSH 9's default post-quantum hybrid; the link is
        // a loopback port to a throw-away VM.
        target.ssh_args = [
            "-F",
            "none",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org,\
             ecdh-sha2-nistp256,diffie-hellman-group14-sha256",
        ]
        .map(String::from)
        .to_vec();
        target
            .ssh_args
            .extend(["-o".into(), format!("HostKeyAlias={HOST_ALIAS}")]);
        target.connect_timeout = Duration::from_secs(self.args.boot_timeout);
        target.sync_clock = true;
        target
    }

    /// How ssh reaches the `sshd -i` on spare link `port` (a virtio-serial
    /// port behind a loopback socket): as [`Self::ssh_target`], with no
    /// keepalives, so that nothing crosses the link while it is kept idle.
    fn spare_target(&self, port: u16) -> SshTarget {
        let mut target = self.ssh_target();
        target.port = Some(port);
        target
            .ssh_args
            .splice(0..0, ["-o".into(), "ServerAliveInterval=0".into()]);
        target.connect_timeout = SPARE_CONNECT_LIMIT;
        target
    }

    /// Replaces the spare connections: starts an `sshd -i` on each spare
    /// link in the guest and connects to them all, and (re)starts the
    /// clock loop (first asked at the first revert, and dropped if it does
    /// not answer then). A spare that fails is left out (its reverts
    /// connect anew), with a warning.
    async fn make_spares(&mut self) {
        self.spares.clear();
        self.used_spares.clear();
        if self.spare_ports.is_empty() {
            return;
        }
        let started = Instant::now();
        let script = format!(
            "{SPARE_SSHD}\n{START_CLOCK}\nstart_spares {SPARE_PORT} {} && start_clock {CLOCK_PORT}",
            self.spare_ports.len()
        );
        if let Err(e) = self.run_ok(&script).await {
            tracing::warn!(
                "qemu: no spare ssh links ({}): every revert connects anew",
                e.detail()
            );
            self.drop_clock();
            return;
        }
        let connecting: Vec<_> = self
            .spare_ports
            .iter()
            .map(|&port| tokio::spawn(SshConnection::connect(self.spare_target(port))))
            .collect();
        let deadline = tokio::time::Instant::now() + SPARE_CONNECT_LIMIT;
        for mut task in connecting {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(conn))) => self.spares.push(conn),
                Ok(Ok(Err(e))) => tracing::warn!("qemu: a spare ssh link failed: {}", e.detail()),
                Ok(Err(e)) => tracing::warn!("qemu: a spare ssh link failed: {e}"),
                Err(_) => {
                    task.abort();
                    tracing::warn!(
                        "qemu: a spare ssh link did not connect within {SPARE_CONNECT_LIMIT:?}"
                    );
                }
            }
        }
        tracing::debug!(
            "qemu: {} spare ssh links in {:.1?}",
            self.spares.len(),
            started.elapsed()
        );
    }

    /// Whether `conn` goes over a spare link (not the forwarded port).
    fn is_spare_link(&self, conn: &SshConnection) -> bool {
        conn.target().port != Some(self.port)
    }

    /// The first spare connection that takes up where the guest is (just
    /// restored from the snapshot), dropping those that do not. With
    /// `clock_set` the guest has answered on the clock link, so a spare is
    /// taken as it is: it was idle, and connected, when the snapshot was
    /// saved. Otherwise each is tried with a command that sets the clock.
    async fn take_spare(&mut self, clock_set: bool) -> Option<SshConnection> {
        while !self.spares.is_empty() {
            let mut conn = self.spares.remove(0);
            if clock_set {
                if conn.is_up() {
                    return Some(conn);
                }
                tracing::warn!("qemu: a spare ssh link is lost: its ssh client ended");
                continue;
            }
            match conn.resume(Duration::from_secs(10)).await {
                Ok(()) => return Some(conn),
                Err(e) => tracing::warn!("qemu: a spare ssh link is lost: {}", e.detail()),
            }
        }
        None
    }

    /// Sets the guest's clock over the clock link, if there is one; true
    /// when the guest answered. A link that fails is not used again.
    async fn set_clock(&mut self) -> bool {
        let Some(clock) = self.vm.as_mut().and_then(|vm| vm.clock.as_mut()) else {
            return false;
        };
        let started = Instant::now();
        match clock.set(Duration::from_secs(10)).await {
            Ok(()) => {
                tracing::debug!("qemu: clock set in {:.2?}", started.elapsed());
                true
            }
            Err(e) => {
                tracing::warn!("qemu: {}; setting the clock over ssh", e.detail());
                self.drop_clock();
                false
            }
        }
    }

    /// Stops using the clock link until the VM starts again.
    fn drop_clock(&mut self) {
        if let Some(vm) = self.vm.as_mut() {
            vm.clock = None;
        }
    }

    /// Connects ssh to the guest (up, or just restored by `loadvm`).
    async fn connect(&mut self) -> Result<()> {
        self.conn = None;
        let conn = SshConnection::connect(self.ssh_target()).await;
        self.conn = Some(self.with_console(conn)?);
        Ok(())
    }

    /// Whether the guest gets the two virtio consoles autopkgtest's images
    /// start a root shell on (see [`shell`]): unless it boots from the
    /// kernel `dep8 image build qemu` wrote beside the image (dep8's own
    /// image, which needs no shell and would start one).
    fn offers_root_shell_console(&self) -> bool {
        matches!(self.boot, Boot::Disk) || self.args.kernel.is_some()
    }

    fn root_shell_socket(&self) -> PathBuf {
        self.work.path().join("hvc1.sock")
    }

    /// Where a guest without dep8's readiness unit runs autopkgtest's root
    /// shell on hvc1: lets dep8 in over ssh through it (keys, sshd; see
    /// [`shell::let_in_script`]). Without such a shell, nothing is done.
    /// Returns whether openssh-server was installed.
    async fn let_in_through_root_shell(&mut self) -> Result<bool> {
        if !self.offers_root_shell_console() {
            return Ok(false);
        }
        let started = Instant::now();
        let Some(mut shell) =
            RootShell::find(&self.root_shell_socket(), ROOT_SHELL_AFTER_LOGIN_PROMPT).await
        else {
            tracing::info!("qemu: no root shell on hvc1");
            return Ok(false);
        };
        let read = |name: &str| {
            std::fs::read_to_string(self.key(name))
                .map_err(|e| TestbedError::failure(format!("reading {name}"), e))
        };
        let script = shell::let_in_script(
            &read("id_ed25519.pub")?,
            &read("ssh_host_ed25519_key")?,
            &read("ssh_host_ed25519_key.pub")?,
        );
        let limit = Duration::from_secs(self.args.boot_timeout);
        let failure = |why: String| {
            TestbedError::Failure(format!(
                "qemu: letting dep8 in over ssh through the root shell on hvc1 {why}"
            ))
        };
        match shell
            .run(&script, tokio::time::Instant::now() + limit)
            .await
        {
            Some((0, output)) => {
                tracing::debug!("qemu: the root shell on hvc1 said:\n{output}");
                let installed = output.contains(shell::INSTALLING_SSHD);
                tracing::info!(
                    "qemu: let in through the root shell on hvc1 in {:.1?}{}",
                    started.elapsed(),
                    if installed {
                        " (openssh-server installed)"
                    } else {
                        ""
                    }
                );
                Ok(installed)
            }
            Some((status, output)) => Err(failure(format!(
                "failed (status {status}):\n{}",
                boot::tail_of(&output, 15)
            ))),
            None => Err(failure(format!("did not end within {}s", limit.as_secs()))),
        }
    }

    /// After openssh-server was installed through the root shell: powers the
    /// guest off, keeps its disk in dep8's cache as the layer later opens
    /// of the image boot from (so the install is done once per machine and
    /// image, see [`kept`]), and boots again on it. A guest that does not
    /// power off in time keeps nothing.
    async fn keep_let_in_layer(&mut self, cache: &Path) -> Result<()> {
        let started = Instant::now();
        if self.stop_vm_within(Some(LET_IN_POWEROFF.as_secs())).await {
            let (cache, image, overlay) = (
                cache.to_path_buf(),
                self.image.clone(),
                self.overlay.clone(),
            );
            let keep = move |dir: &Path| {
                let layer = dir.join(LET_IN_LAYER);
                std::fs::rename(&overlay, &layer)
                    .or_else(|_| std::fs::copy(&overlay, &layer).map(drop))
            };
            // It may wait for another run's lock on the layer.
            let kept = tokio::task::spawn_blocking(move || kept::acquire(&cache, &image, keep))
                .await
                .map_err(std::io::Error::other)
                .and_then(|kept| kept);
            match kept {
                Ok(layer) => {
                    tracing::info!(
                        "qemu: kept the guest with openssh-server for later runs of {} \
                         in {} ({:.1?})",
                        self.image.display(),
                        layer.path().display(),
                        started.elapsed()
                    );
                    self.let_in_layer = Some(layer);
                }
                Err(e) => tracing::warn!("qemu: keeping the let-in layer: {e}"),
            }
        }
        self.boot_fresh().await.map(drop)
    }

    /// Connects ssh to a guest that showed a login prompt without dep8's
    /// readiness signal (not dep8's image), for at most
    /// [`SSH_AFTER_LOGIN_PROMPT`]; failing that, says what such an image
    /// lacks.
    async fn connect_after_login_prompt(&mut self) -> Result<()> {
        self.conn = None;
        let mut target = self.ssh_target();
        target.connect_timeout = target.connect_timeout.min(SSH_AFTER_LOGIN_PROMPT);
        let limit = target.connect_timeout;
        let conn = SshConnection::connect(target).await.map_err(|e| {
            TestbedError::Failure(format!(
                "the guest is up (a login prompt on its console, no readiness signal \
                 from dep8's units) but did not let dep8 in over ssh within {}s: {}\n\
                 dep8 reaches a guest over ssh, with keys it passes by fw_cfg: an image \
                 not built by `dep8 image build qemu` needs openssh-server and \
                 dep8-fw-cfg-keys.service, or autopkgtest's root shell on hvc1 \
                 (autopkgtest-build-qemu's images have it) and a disk boot: \
                 docs/qemu.md, \"Using an existing cloud or autopkgtest image\"",
                limit.as_secs(),
                e.detail()
            ))
        });
        self.conn = Some(self.with_console(conn)?);
        Ok(())
    }

    /// Once a reboot is under way: waits until the guest says it is up
    /// again, reconnects (to a new boot id) and plugs the base image back.
    async fn after_reboot(&mut self, watch: &mut BootWatch) -> Result<()> {
        self.wait_up(watch).await?;
        // A spare link's sshd does not come back with the guest.
        let target = self.ssh_target();
        let conn = self.conn_mut()?;
        conn.retarget(target);
        let rebooted = conn.await_reboot().await;
        self.with_console(rebooted)?;
        self.attach_baseimage().await
    }

    /// Runs a setup script in the guest as root; fails with its stderr.
    async fn run_ok(&self, script: &str) -> Result<String> {
        let out = self
            .conn()?
            .exec(ExecRequest::shell(script).capture())
            .await?;
        if !out.status.success() {
            return Err(TestbedError::Failure(format!(
                "`{script}` failed in the guest ({}): {}",
                out.status.code(),
                out.stderr_text().trim()
            )));
        }
        Ok(out.stdout_text())
    }

    fn qmp(&mut self) -> Result<&mut Qmp> {
        self.vm
            .as_mut()
            .map(|vm| vm.qmp.get_mut())
            .ok_or_else(not_running)
    }

    /// Plugs the pristine image in read-only as `/dev/baseimage`.
    async fn attach_baseimage(&mut self) -> Result<()> {
        if !self.args.baseimage {
            return Ok(());
        }
        self.run_ok(&format!(
            "mkdir -p /run/udev/rules.d && cat > /run/udev/rules.d/59-dep8-baseimage.rules <<'EOF'\n{BASEIMAGE_RULE}EOF\nudevadm control --reload"
        ))
        .await?;
        let (format, image) = (self.format, self.image.to_string_lossy().into_owned());
        let qmp = self.qmp()?;
        qmp.execute(
            "blockdev-add",
            json!({
                "driver": format, "node-name": "dep8-base", "read-only": true,
                "file": { "driver": "file", "filename": image, "read-only": true },
            }),
        )
        .await?;
        qmp.execute(
            "device_add",
            json!({
                "driver": "virtio-blk-pci", "id": "dep8-base",
                "drive": "dep8-base", "serial": "BASEIMAGE",
            }),
        )
        .await?;
        self.run_ok(
            "for i in $(seq 300); do [ -e /dev/baseimage ] && exit 0; sleep 0.1; done; \
             echo '/dev/baseimage did not appear' >&2; exit 1",
        )
        .await
        .map(|_| ())
    }

    /// Unplugs the base image (before a reboot: the next boot must not see
    /// two disks with the root's filesystem).
    async fn detach_baseimage(&self) -> Result<()> {
        if !self.args.baseimage {
            return Ok(());
        }
        let mut qmp = self.vm.as_ref().ok_or_else(not_running)?.qmp.lock().await;
        qmp.execute("device_del", json!({ "id": "dep8-base" }))
            .await?;
        qmp.wait_event(
            "DEVICE_DELETED",
            |data| data["device"] == "dep8-base",
            Duration::from_secs(60),
        )
        .await?;
        qmp.execute("blockdev-del", json!({ "node-name": "dep8-base" }))
            .await?;
        Ok(())
    }

    /// Saves the guest (RAM, devices, overlay) inside the overlay, as the
    /// state reverts return to: the pristine one, or the kept setup.
    /// The ssh connection is closed first so the snapshot holds no session
    /// of it, only the idle spare connections, kept for reverts. The run
    /// goes on over a new connection on the forwarded port: both times a
    /// command hung on a spare link (2026-12-05, in CI), it was the link
    /// taken right after `savevm`, never one taken after `loadvm`.
    async fn save_snapshot(&mut self, what: Saved) -> Result<()> {
        let started = Instant::now();
        // The spare links are all made anew: go on over the forwarded port.
        if self.is_spare_link(self.conn()?) {
            self.connect().await?;
        }
        // A guest saved in the middle of its boot's last jobs would do
        // them again after every revert.
        let settled = Instant::now();
        self.run_ok(SETTLE).await?;
        tracing::debug!("qemu: the guest settled in {:.1?}", settled.elapsed());
        self.make_spares().await;
        if let Some(mut conn) = self.conn.take() {
            conn.close().await?;
        }
        // Closing it set the guest's sshd and logind to work: saved in
        // the middle of that, every revert would do the work again.
        if let Some(pid) = self.vm.as_ref().and_then(|vm| vm.child.id()) {
            let quiet = Instant::now();
            let done = wait_until_quiet(pid, QUIET_LIMIT).await;
            tracing::debug!(
                "qemu: the guest was quiet ({done}) after {:.2?}",
                quiet.elapsed()
            );
        }
        self.qmp()?.human(&format!("savevm {SNAPSHOT}")).await?;
        self.saved = what;
        tracing::info!("qemu: snapshot saved in {:.1?}", started.elapsed());
        // ssh sets the clock as it connects.
        self.connect().await
    }

    /// Connects to a guest that is where the snapshot left it, its clock
    /// set: on a spare connection while there is one, else anew. Says
    /// which, for the log.
    async fn go_on_from_snapshot(&mut self) -> Result<&'static str> {
        let clock_set = self.set_clock().await;
        match (self.take_spare(clock_set).await, clock_set) {
            (Some(conn), true) => {
                self.conn = Some(conn);
                Ok("the clock set on its link, on a spare ssh link")
            }
            (Some(conn), false) => {
                self.conn = Some(conn);
                Ok("the clock set over ssh, on a spare ssh link")
            }
            // ssh sets the clock as it connects.
            (None, _) => self.connect().await.map(|()| "connected anew"),
        }
    }

    /// Ends QEMU: a power-off from inside with `--timeout-poweroff`, else
    /// (or when that takes too long) a polite `quit`, then a kill. True
    /// when the guest powered itself off.
    async fn stop_vm(&mut self) -> bool {
        self.stop_vm_within(self.args.timeout_poweroff).await
    }

    /// [`Self::stop_vm`], with the guest given `poweroff` seconds (if any)
    /// to power itself off.
    async fn stop_vm_within(&mut self, poweroff: Option<u64>) -> bool {
        self.spares.clear();
        self.used_spares.clear();
        let conn = self.conn.take();
        let Some(mut vm) = self.vm.take() else {
            return false;
        };
        if let (Some(secs), Some(conn)) = (poweroff, conn) {
            // The connection drops as the guest goes down: no status to read.
            let _ = conn
                .exec(ExecRequest::shell("poweroff").timeout(Duration::from_secs(secs)))
                .await;
            if tokio::time::timeout(Duration::from_secs(secs), vm.child.wait())
                .await
                .is_ok()
            {
                return true;
            }
            tracing::warn!("qemu: the guest did not power off within {secs} s: stopping QEMU");
        }
        let _ = vm.qmp.get_mut().execute("quit", json!({})).await;
        if tokio::time::timeout(Duration::from_secs(10), vm.child.wait())
            .await
            .is_err()
        {
            let _ = vm.child.kill().await;
        }
        false
    }
}

#[async_trait]
impl Testbed for QemuTestbed {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scratch(&self) -> &str {
        SCRATCH
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut facts = BTreeMap::from([
            ("qemu_version".into(), self.qemu_version.clone()),
            ("qemu_accel".into(), self.accel.name().into()),
            (
                "qemu_cpu".into(),
                self.cpu
                    .clone()
                    .unwrap_or_else(|| "(qemu's default)".into()),
            ),
            ("qemu_image".into(), self.image.display().to_string()),
            (
                "qemu_let_in_layer".into(),
                self.let_in_layer.as_ref().map_or("none".into(), |kept| {
                    kept.path().join(LET_IN_LAYER).display().to_string()
                }),
            ),
            (
                "qemu_nested_kvm".into(),
                (self.accel == Accel::Kvm && nested_kvm()).to_string(),
            ),
            ("qemu_cpus".into(), self.args.cpus.to_string()),
            ("qemu_ram_mb".into(), self.args.ram_size.to_string()),
            (
                "qemu_revert".into(),
                match self.args.revert {
                    RevertMethod::Snapshot => "snapshot",
                    RevertMethod::Boot => "boot",
                }
                .into(),
            ),
            (
                "qemu_boot_seconds".into(),
                format!("{:.1}", self.boot_time.as_secs_f64()),
            ),
        ]);
        match &self.boot {
            Boot::Direct { kernel, loader, .. } => {
                facts.insert("qemu_boot".into(), "kernel".into());
                facts.insert("qemu_kernel".into(), kernel.display().to_string());
                facts.insert(
                    "qemu_kernel_loader".into(),
                    match loader {
                        Some(_) => "dep8's PVH loader (the kernel by fw_cfg)",
                        None => "QEMU's",
                    }
                    .into(),
                );
            }
            Boot::Disk => {
                facts.insert("qemu_boot".into(), "boot-loader".into());
            }
        }
        match &self.firmware {
            Some(file) => {
                facts.insert("qemu_firmware".into(), "uefi".into());
                facts.insert("qemu_firmware_file".into(), file.display().to_string());
            }
            None => {
                facts.insert("qemu_firmware".into(), "bios".into());
            }
        }
        facts
    }

    fn logs(&self) -> Vec<(String, PathBuf)> {
        vec![("qemu-console.log".into(), self.console_log())]
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecOutcome> {
        self.conn()?.exec(req).await
    }

    async fn copy_down(&self, host: &Path, testbed_path: &str) -> Result<()> {
        self.conn()?.copy_down(host, testbed_path).await
    }

    async fn copy_up(&self, testbed_path: &str, host: &Path) -> Result<()> {
        self.conn()?.copy_up(testbed_path, host).await
    }

    async fn revert(&mut self) -> Result<()> {
        if self.saved == Saved::Nothing {
            return self.boot_fresh().await.map(drop);
        }
        // The connection belongs to the state being thrown away.
        if let Some(conn) = self.conn.take() {
            if self.is_spare_link(&conn) {
                self.used_spares.push(conn);
            }
        }
        let started = Instant::now();
        if let Err(e) = self.qmp()?.human(&format!("loadvm {SNAPSHOT}")).await {
            if self.saved == Saved::Setup {
                return Err(TestbedError::Failure(format!(
                    "qemu: the kept setup cannot be restored: {}",
                    e.detail()
                )));
            }
            tracing::warn!("qemu: {e}; reverting by booting a fresh overlay instead");
            self.saved = Saved::Nothing;
            self.boot_fresh().await?;
            return self.save_snapshot(Saved::Pristine).await;
        }
        let loaded = started.elapsed();
        let how = self.go_on_from_snapshot().await?;
        tracing::info!(
            "qemu: reverted in {:.2?} (loadvm {loaded:.2?}, {how})",
            started.elapsed()
        );
        Ok(())
    }

    /// Saves the present guest over the pristine snapshot, so that reverts
    /// return to it. Only where reverts load a snapshot: `--revert boot`
    /// boots a fresh overlay, which cannot keep anything.
    async fn commit_base(&mut self) -> Result<bool> {
        if self.args.revert != RevertMethod::Snapshot {
            return Ok(false);
        }
        // A revert leaves the scratch dir empty, as after the first boot.
        self.run_ok(&format!("rm -rf {SCRATCH} && mkdir -p -m 1777 {SCRATCH}"))
            .await?;
        self.save_snapshot(Saved::Setup).await?;
        Ok(true)
    }

    async fn reboot(&mut self) -> Result<()> {
        self.detach_baseimage().await?;
        let mut watch = self.boot_watch();
        self.conn_mut()?.request_reboot().await;
        self.after_reboot(&mut watch).await
    }

    async fn prepare_reboot(&self) -> Result<()> {
        self.detach_baseimage().await?;
        *self.reboot_watch.lock().expect("reboot watch") = Some(self.boot_watch());
        self.conn()?
            .release_reboot(dep8_testbed::RELEASE_PREPARED)
            .await
    }

    async fn await_reboot(&mut self) -> Result<()> {
        let watch = self.reboot_watch.get_mut().expect("reboot watch").take();
        let mut watch = watch.unwrap_or_else(|| self.boot_watch());
        self.after_reboot(&mut watch).await
    }

    async fn close(&mut self) -> Result<()> {
        // With --timeout-poweroff the connection stays up for `poweroff`
        // (stop_vm), and what runs in the guest ends with it.
        let closed = match self.conn.as_mut() {
            Some(conn) if self.args.timeout_poweroff.is_none() => conn.close().await,
            _ => Ok(()),
        };
        self.stop_vm().await;
        closed
    }
}

/// `dep8 image update` for a qemu image: boots it (on an overlay, as every
/// run does), runs `script` as root in the guest with its output sent to
/// `tap`, powers the guest off so that its filesystems are clean, and
/// commits the overlay into the image. With `boot_files`, the guest's
/// kernel and initrd as the update left them (`/vmlinuz`, `/initrd.img`)
/// are copied into that dir first, as `vmlinuz` and `initrd.img`, for
/// whoever keeps a copy of them beside the image. The image is left as it
/// was when anything fails.
pub async fn update_image(
    image: &Path,
    script: &str,
    tap: Tap,
    boot_files: Option<&Path>,
) -> Result<()> {
    let words = [
        image.to_string_lossy().into_owned(),
        "--revert".into(),
        "boot".into(),
    ];
    let mut tb = QemuTestbed::open(
        parse_args(words)?,
        OpenContext {
            cache: None,
            reverts_to_open: false,
        },
    )
    .await?;
    let output = Output {
        tap: Some(tap),
        ..Default::default()
    };
    let req = ExecRequest::shell(script)
        .stdout(output.clone())
        .stderr(output);
    let updated = tb.exec(req).await;
    let failed = match updated {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "the update exited with status {}",
            out.status.code()
        )),
        Err(e) => Some(e.to_string()),
    };
    let copied = match (failed, boot_files) {
        (Some(why), _) => Err(TestbedError::Failure(why)),
        (None, Some(dir)) => copy_up_boot_files(&tb, dir).await,
        (None, None) => Ok(()),
    };
    if let Err(e) = copied {
        tb.close().await.ok();
        return Err(e);
    }
    // A clean power-off: nothing of the guest's page cache is lost.
    if !tb.stop_vm_within(Some(POWEROFF_FOR_UPDATE.as_secs())).await {
        return Err(TestbedError::Failure(format!(
            "the updated guest did not power off within {} s: {} is unchanged",
            POWEROFF_FOR_UPDATE.as_secs(),
            image.display()
        )));
    }
    host_command(
        "qemu-img",
        &[
            OsStr::new("commit"),
            OsStr::new("-q"),
            tb.overlay.as_os_str(),
        ],
    )
}

/// Copies the guest's kernel and initrd into `dir` (see [`update_image`]).
async fn copy_up_boot_files(tb: &QemuTestbed, dir: &Path) -> Result<()> {
    for (link, name) in [("/vmlinuz", "vmlinuz"), ("/initrd.img", "initrd.img")] {
        let out = tb
            .exec(ExecRequest::new(["readlink", "-f", link]).capture())
            .await?;
        let target = out.stdout_text().trim().to_string();
        if !out.status.success() || target.is_empty() {
            return Err(TestbedError::Failure(format!(
                "the updated guest has no {link}: {}",
                out.stderr_last_line()
            )));
        }
        tb.copy_up(&target, &dir.join(name)).await?;
    }
    Ok(())
}

/// How long an updated guest may take to power off.
const POWEROFF_FOR_UPDATE: Duration = Duration::from_secs(120);

/// Makes the testbed's ssh keys in `dir`: a client key pair (`id_ed25519`)
/// and the guest's host key pair (`ssh_host_ed25519_key`), and a
/// known_hosts file that trusts exactly that host key.
fn make_keys(dir: &Path) -> Result<()> {
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
    .map_err(|e| TestbedError::failure("writing known_hosts", e))
}

/// `qcow2` or `raw`, from the image's first bytes.
fn image_format(image: &Path) -> std::io::Result<&'static str> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(image)?;
    let n = file.read(&mut magic)?;
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

/// The firmware to boot with: UEFI's (OVMF) or `None` for QEMU's BIOS.
/// As asked (`--boot`, `--efi`), else as the image's first sectors say
/// (`disk`, when the image's own boot loader boots): BIOS when the MBR has
/// boot code, UEFI when there is only an EFI system partition. A disk
/// with both (dep8's images, most cloud images) boots by BIOS: SeaBIOS
/// starts in a fraction of the time OVMF takes under emulation.
fn firmware_for(args: &Args, disk: Option<&DiskBoot>) -> Option<PathBuf> {
    let efi = match (args.efi, args.boot) {
        (true, _) | (_, Some(BootMode::Efi)) => true,
        (_, Some(BootMode::Bios | BootMode::None)) => false,
        _ => disk.is_some_and(|d| d.esp && !d.mbr_code),
    };
    efi.then(|| PathBuf::from(OVMF))
}

/// The kernel and initrd the image is booted with, or its boot loader.
fn boot_files(args: &Args, image: &Path) -> Result<Boot> {
    let beside = |suffix: &str| {
        let mut name = image.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let kernel = match &args.kernel {
        Some(kernel) if !kernel.is_file() => {
            return Err(TestbedError::Usage(format!(
                "--kernel {}: no such file",
                kernel.display()
            )))
        }
        Some(kernel) => kernel.clone(),
        // A kernel beside the image, when no firmware was asked for: the
        // uncompressed one (`dep8 image build qemu` writes it) starts by
        // QEMU's PVH entry, without seconds of decompressing itself under
        // emulation.
        None => {
            let auto = matches!(args.boot, None | Some(BootMode::Auto)) && !args.efi;
            match [".vmlinux", ".vmlinuz"]
                .map(beside)
                .into_iter()
                .find(|k| auto && k.is_file())
            {
                Some(kernel) => kernel,
                // Otherwise the image's own boot loader boots.
                None => return Ok(Boot::Disk),
            }
        }
    };
    let initrd = match &args.initrd {
        Some(initrd) if !initrd.is_file() => {
            return Err(TestbedError::Usage(format!(
                "--initrd {}: no such file",
                initrd.display()
            )))
        }
        Some(initrd) => Some(initrd.clone()),
        None => Some(beside(".initrd")).filter(|p| p.is_file()),
    };
    Ok(Boot::Direct {
        kernel,
        initrd,
        append: args.append.clone(),
        loader: None,
    })
}

/// A path as the value in a QEMU `-opt key=value,...` list, where a
/// comma is written twice (a user's image may have one in its name).
fn opt_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The first line of `qemu --version`.
fn qemu_version(qemu: &str) -> Result<String> {
    let out = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .map_err(|e| {
            TestbedError::Usage(format!("cannot run {qemu}: {e} (install qemu-system-x86)"))
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Whether the host's KVM module lets guests run VMs themselves.
fn nested_kvm() -> bool {
    ["kvm_intel", "kvm_amd"].iter().any(|m| {
        std::fs::read_to_string(format!("/sys/module/{m}/parameters/nested"))
            .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
    })
}

/// How many times QEMU is started on newly chosen ports when one it was
/// given was taken before it could bind it.
const PORT_TRIES: u32 = 3;

/// Whether QEMU failed to start because a port it was given was taken
/// (a `-chardev socket` or the forwarded ssh port).
fn a_port_was_taken(why: &str) -> bool {
    why.contains("Address already in use") || why.contains("Could not set up host forwarding rule")
}

/// What every operation that needs the VM says when there is none.
fn not_running() -> TestbedError {
    TestbedError::Failure("the VM is not running".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_comma_in_a_path_is_doubled_in_qemu_options() {
        let path = std::path::Path::new("/srv/images/a,b.qcow2");
        assert_eq!(super::opt_path(path), "/srv/images/a,,b.qcow2");
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let info = "MemTotal:       16314532 kB\nMemFree:  100 kB\nMemAvailable:    8157266 kB\n";
        assert_eq!(super::mem_available_kb(info), Some(8157266));
        assert_eq!(super::mem_available_kb("MemTotal: 1 kB\n"), None);
    }

    use super::*;

    #[test]
    fn a_taken_port_is_told_from_other_start_failures() {
        // What QEMU 10.0 (bookworm-backports) says for a chardev's port and the forwarded one.
        assert!(a_port_was_taken(
            "qemu-system-x86_64: -chardev socket,id=dep8-spare0,host=127.0.0.1,port=38181,\
             server=on,wait=off,nodelay=on: Failed to find an available port: Address already in use"
        ));
        assert!(a_port_was_taken(
            "qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22: \
             Could not set up host forwarding rule 'tcp:127.0.0.1:2222-:22'"
        ));
        assert!(!a_port_was_taken(
            "qemu-system-x86_64: -drive file=x.qcow2: Could not open 'x.qcow2': No such file"
        ));
    }

    #[test]
    fn arguments() {
        let args = Args::try_parse_from([
            "img.qcow2",
            "--cpus",
            "2",
            "--qemu-options",
            "-device virtio-balloon",
            "--baseimage",
        ])
        .unwrap();
        assert_eq!(args.cpus, 2);
        assert_eq!(args.qemu_options.as_deref(), Some("-device virtio-balloon"));
        assert!(args.baseimage);
        assert_eq!(args.revert, RevertMethod::Snapshot);
        assert!(Args::try_parse_from(["img", "--efi", "--kernel", "k"]).is_ok());
    }

    #[test]
    fn autopkgtest_virt_qemu_arguments() {
        let parse =
            |words: &[&str]| Args::try_parse_from(words).map(|a| check_args(&a).map(|()| a));
        // Debusine's form; -c/-o/-q short options; several images.
        let a = parse(&["--boot", "efi", "--dpkg-architecture", "amd64", "img"])
            .unwrap()
            .unwrap();
        assert_eq!(a.boot, Some(BootMode::Efi));
        let a = parse(&[
            "-c",
            "2",
            "--ram-size=4096",
            "-o",
            "/var/tmp",
            "-q",
            "qemu-x",
            "a",
            "b",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((a.cpus, a.ram_size), (2, 4096));
        assert_eq!(a.images, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(a.qemu_command.as_deref(), Some("qemu-x"));
        let a = parse(&[
            "--timeout-reboot",
            "90",
            "--timeout-poweroff=5",
            "--show-boot",
            "-d",
            "i",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((a.boot_timeout, a.timeout_poweroff), (90, Some(5)));
        for mode in ["auto", "bios", "none"] {
            assert!(parse(&["--boot", mode, "img"]).unwrap().is_ok(), "{mode}");
        }
        // What dep8 cannot honour: exit 20 with a reason.
        for (words, reason) in [
            (&["--boot", "ieee1275", "img"][..], "POWER"),
            (
                &["--dpkg-architecture", "arm64", "img"],
                "foreign architecture",
            ),
            (&["--qemu-architecture", "aarch64", "img"], "x86"),
            (&["--efi", "--boot", "bios", "img"], "disagree"),
            (&["-u", "root", "-p", "pw", "img"], "serial console"),
        ] {
            let err = parse(words).unwrap().unwrap_err();
            assert!(
                matches!(&err, TestbedError::Usage(m) if m.contains(reason)),
                "{words:?}: {err}"
            );
        }
        assert!(parse(&["--cpus", "2"]).is_err(), "an image is required");
        // An exact long option wins over a longer one it is a prefix of.
        let a = parse(&["--cpu", "host", "img"]).unwrap().unwrap();
        assert_eq!((a.cpu.as_deref(), a.cpus), (Some("host"), 1));
    }

    /// BIOS for a disk whose MBR has boot code (with or without an ESP),
    /// UEFI for one with only an ESP; `--boot`/`--efi` win.
    #[test]
    fn firmware_follows_the_disk_unless_told() {
        let args = |words: &[&str]| Args::try_parse_from(words).unwrap();
        let disk = |mbr_code, esp| DiskBoot { mbr_code, esp };
        let uefi = Some(PathBuf::from(OVMF));
        let img = args(&["img"]);
        assert_eq!(firmware_for(&img, Some(&disk(true, true))), None);
        assert_eq!(firmware_for(&img, Some(&disk(false, true))), uefi);
        assert_eq!(firmware_for(&img, Some(&disk(false, false))), None);
        assert_eq!(firmware_for(&img, None), None, "a kernel boots by BIOS");
        let auto = args(&["--boot", "auto", "img"]);
        assert_eq!(firmware_for(&auto, Some(&disk(false, true))), uefi);
        for efi in [&["--efi", "img"][..], &["--boot", "efi", "img"]] {
            assert_eq!(firmware_for(&args(efi), Some(&disk(true, true))), uefi);
            assert_eq!(firmware_for(&args(efi), None), uefi);
        }
        for bios in ["bios", "none"] {
            let a = args(&["--boot", bios, "img"]);
            assert_eq!(firmware_for(&a, Some(&disk(false, true))), None);
        }
    }

    #[test]
    fn format_from_magic() {
        let dir = tempfile::tempdir().unwrap();
        let qcow = dir.path().join("a");
        std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(image_format(&qcow).unwrap(), "qcow2");
        let raw = dir.path().join("b");
        std::fs::write(&raw, [0u8; 512]).unwrap();
        assert_eq!(image_format(&raw).unwrap(), "raw");
    }
}
