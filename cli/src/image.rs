//! `dep8 image build KIND ...`: testbed images from Debian's archive.

use dep8_images::rootfs::{self, RootfsSpec, Variant};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Build an image.
    #[command(subcommand)]
    Build(BuildKind),
    /// Bring an image built by `dep8 image build` up to date in place
    /// (apt-get update and dist-upgrade, package lists kept). Needs root.
    Update {
        /// A rootfs tarball (`.tar`, `.tar.zst`, ...), a qemu disk image
        /// (`.qcow2`, `.img`, `.raw`), a rootfs dir, or `lxc:NAME` for an
        /// lxc template container (in lxc's default path).
        image: PathBuf,
    },
}

/// The kinds of image dep8 builds.
#[derive(clap::Subcommand)]
pub enum BuildKind {
    /// A rootfs tarball for the unshare, schroot and lxc backends.
    Rootfs(RootfsArgs),
    /// A bootable qcow2 disk image for the qemu backend (and
    /// autopkgtest-virt-qemu): GPT, ext4 root, GRUB for BIOS and UEFI.
    /// Needs root.
    Qemu(QemuArgs),
    /// A template container for the lxc backend (in lxc's path, with an
    /// init): `dep8 run SRC -- lxc NAME` tests in clones of it. Needs root.
    Lxc(LxcArgs),
}

#[derive(clap::Args)]
pub struct LxcArgs {
    /// The container's name.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    source: SourceArgs,
    /// Use this rootfs tarball (with an init) instead of building one.
    #[arg(long, value_name = "TARBALL", conflicts_with_all = ["release", "mirror", "include"])]
    from: Option<PathBuf>,
    /// The lxc path to make it in (lxc's default otherwise).
    #[arg(short = 'P', long, value_name = "PATH")]
    lxcpath: Option<PathBuf>,
    /// The containers' network: only loopback, the host's network
    /// namespace (apt works without a bridge), or lxc's bridge lxcbr0.
    #[arg(long, value_enum, default_value_t = NetworkArg::Empty)]
    network: NetworkArg,
    /// Let tests start containers of their own (lxc's nesting.conf).
    #[arg(long)]
    nesting: bool,
    /// Replace a container of that name.
    #[arg(long)]
    replace: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NetworkArg {
    Empty,
    Host,
    Bridge,
}

/// What every image is built from: a Debian release from an archive.
#[derive(clap::Args)]
pub struct SourceArgs {
    /// The Debian release (suite or codename).
    #[arg(long, default_value = "bookworm")]
    release: String,
    /// The archive to build from (default: http://deb.debian.org/debian).
    #[arg(long)]
    mirror: Option<String>,
    /// Extra packages (comma-separated; repeatable).
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
}

/// What an image file is built from, and where it goes.
#[derive(clap::Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The file to write (rootfs: .tar, .tar.gz, .tar.zst, ...; qemu: qcow2).
    #[arg(short = 'o', long)]
    output: PathBuf,
}

#[derive(clap::Args)]
pub struct QemuArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Size of the disk (2G, 4096M).
    #[arg(long, default_value = "2G")]
    size: String,
}

#[derive(clap::Args)]
pub struct RootfsArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    #[arg(long, value_enum, default_value_t = VariantArg::Minbase)]
    variant: VariantArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VariantArg {
    Minbase,
    Apt,
}

/// Runs `dep8 image ...`; returns the exit status.
pub fn main(command: ImageCommand) -> i32 {
    match command {
        ImageCommand::Build(BuildKind::Rootfs(args)) => build_rootfs(args),
        ImageCommand::Build(BuildKind::Qemu(args)) => build_qemu(args),
        ImageCommand::Build(BuildKind::Lxc(args)) => build_lxc(args),
        ImageCommand::Update { image } => update(&image),
    }
}

/// The kinds of image `dep8 image update` brings up to date.
enum Updatable {
    Tarball(PathBuf),
    QemuDisk(PathBuf),
    RootfsDir(PathBuf),
}

impl Updatable {
    fn of(image: &std::path::Path) -> Result<Self, String> {
        if let Some(name) = image.to_str().and_then(|s| s.strip_prefix("lxc:")) {
            let lxcpath = std::process::Command::new("lxc-config")
                .arg("lxc.lxcpath")
                .output()
                .map_err(|e| format!("lxc:{name}: cannot run lxc-config: {e}"))?;
            let lxcpath = String::from_utf8_lossy(&lxcpath.stdout).trim().to_string();
            return Ok(Updatable::RootfsDir(
                std::path::Path::new(&lxcpath).join(name).join("rootfs"),
            ));
        }
        let name = image.file_name().unwrap_or_default().to_string_lossy();
        if !image.exists() {
            Err(format!("{}: no such image", image.display()))
        } else if image.is_dir() {
            Ok(Updatable::RootfsDir(image.to_path_buf()))
        } else if [".qcow2", ".img", ".raw"].iter().any(|e| name.ends_with(e)) {
            Ok(Updatable::QemuDisk(image.to_path_buf()))
        } else if name.contains(".t") {
            Ok(Updatable::Tarball(image.to_path_buf()))
        } else {
            Err(format!(
                "{}: not an image dep8 updates (a rootfs tarball, a qemu disk image, \
                 a rootfs dir or lxc:NAME)",
                image.display()
            ))
        }
    }
}

fn update(image: &std::path::Path) -> i32 {
    use dep8_images::update;
    let kind = match Updatable::of(image) {
        Ok(kind) => kind,
        Err(why) => {
            say!("dep8: error: {why}");
            return 1;
        }
    };
    let progress = Progress::new(&format!("updating {}", image.display()));
    let result = match kind {
        Updatable::Tarball(path) => {
            update::update_rootfs(&path, |line| progress.line(line)).map_err(|e| e.to_string())
        }
        Updatable::RootfsDir(path) => {
            update::update_rootfs_dir(&path, |line| progress.line(line)).map_err(|e| e.to_string())
        }
        Updatable::QemuDisk(path) => update_qemu(&path, &progress),
    };
    progress.finish();
    match result {
        Ok(()) => {
            say!("dep8: updated {}", image.display());
            0
        }
        Err(e) => {
            say!("dep8: error: {e}");
            1
        }
    }
}

#[cfg(feature = "qemu")]
fn update_qemu(path: &std::path::Path, progress: &Progress) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let line = progress.sink();
    let tap: dep8_core::testbed::Tap = std::sync::Arc::new(move |chunk: &[u8]| {
        String::from_utf8_lossy(chunk).lines().for_each(&line);
    });
    let script = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive\n{}",
        dep8_images::update::APT_UPGRADE
    );
    // The kernel and initrd beside the image (for direct boot) follow
    // the update, which may have installed others.
    let boot_files = dep8_images::qemu::has_direct_boot_files(path)
        .then(tempfile::tempdir)
        .transpose()
        .map_err(|e| e.to_string())?;
    let dir = boot_files.as_ref().map(|d| d.path());
    runtime
        .block_on(dep8_backend_qemu::update_image(path, &script, tap, dir))
        .map_err(|e| format!("updating {}: {e}", path.display()))?;
    match dir {
        Some(dir) => dep8_images::qemu::write_direct_boot_files(
            &dir.join("vmlinuz"),
            &dir.join("initrd.img"),
            path,
        )
        .map_err(|e| format!("updating {}'s kernel and initrd: {e}", path.display())),
        None => Ok(()),
    }
}

#[cfg(not(feature = "qemu"))]
fn update_qemu(path: &std::path::Path, _: &Progress) -> Result<(), String> {
    Err(format!(
        "{}: this dep8 was built without the qemu backend",
        path.display()
    ))
}

fn build_lxc(args: LxcArgs) -> i32 {
    use dep8_images::lxc::{LxcTemplateSpec, Network, RootfsSource};
    let spec = LxcTemplateSpec {
        name: args.name,
        lxcpath: args.lxcpath,
        rootfs: match args.from {
            Some(tarball) => RootfsSource::Tarball(tarball),
            None => RootfsSource::Build {
                release: args.source.release,
                mirror: args.source.mirror,
                include: args.source.include,
            },
        },
        network: match args.network {
            NetworkArg::Empty => Network::Empty,
            NetworkArg::Host => Network::Host,
            NetworkArg::Bridge => Network::Bridge,
        },
        nesting: args.nesting,
        replace: args.replace,
    };
    let progress = Progress::new(&format!("making lxc container {}", spec.name));
    let result = dep8_images::lxc::build(&spec, |line| progress.line(line));
    progress.finish();
    match result {
        Ok(dir) => {
            say!(
                "dep8: made lxc container {} in {} (dep8 run SRC -- lxc {})",
                spec.name,
                dir.display(),
                spec.name
            );
            0
        }
        Err(e) => {
            say!("dep8: error: {e}");
            match e {
                dep8_images::lxc::LxcTemplateError::Usage(_) => 20,
                _ => 1,
            }
        }
    }
}

fn build_qemu(args: QemuArgs) -> i32 {
    let spec = dep8_images::qemu::QemuImageSpec {
        release: args.archive.source.release,
        size: args.size,
        output: args.archive.output,
        mirror: args.archive.source.mirror,
        extra_packages: args.archive.source.include,
    };
    let progress = Progress::new(&format!("building a {} qemu image", spec.release));
    let result = dep8_images::qemu::build(&spec, |line| progress.line(line));
    progress.finish();
    match result {
        Ok(image) => {
            say!("dep8: wrote {}", image.display());
            0
        }
        Err(e) => {
            say!("dep8: error: {e}");
            1
        }
    }
}

fn build_rootfs(args: RootfsArgs) -> i32 {
    let spec = RootfsSpec {
        release: args.archive.source.release,
        variant: match args.variant {
            VariantArg::Minbase => Variant::Minbase,
            VariantArg::Apt => Variant::Apt,
        },
        mirror: args.archive.source.mirror,
        include: args.archive.source.include,
        output: args.archive.output,
    };
    let progress = Progress::new(&format!("building {} rootfs", spec.release));
    let result = rootfs::build(&spec, |line| progress.line(line));
    progress.finish();
    match result {
        Ok(()) => {
            say!("dep8: wrote {}", spec.output.display());
            0
        }
        Err(e) => {
            say!("dep8: error: {e}");
            1
        }
    }
}

/// A spinner showing the latest line of a long build on a terminal (the
/// `-d` log above it); plain lines otherwise.
struct Progress(Option<(indicatif::ProgressBar, crate::console::Shown)>);

impl Progress {
    fn new(what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            say!("dep8: {what}");
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner().with_prefix(what.to_string());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let shown = crate::console::shown(&bar);
        Progress(Some((bar, shown)))
    }

    fn line(&self, line: &str) {
        self.sink()(line)
    }

    /// What [`Progress::line`] does, for another thread.
    fn sink(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let bar = self.0.as_ref().map(|(bar, _)| bar.clone());
        move |line| match &bar {
            Some(bar) => bar.set_message(line.to_string()),
            None => say!("{line}"),
        }
    }

    fn finish(self) {
        if let Some((bar, _)) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
