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
}

/// The kinds of image dep8 builds.
#[derive(clap::Subcommand)]
pub enum BuildKind {
    /// A rootfs tarball for the unshare, schroot and lxc backends.
    Rootfs(RootfsArgs),
    /// A qcow2 disk image for the qemu backend, with its kernel and initrd
    /// beside it (IMAGE.vmlinuz, IMAGE.initrd). Needs root.
    Qemu(QemuArgs),
}

/// What every image is built from.
#[derive(clap::Args)]
pub struct ArchiveArgs {
    /// The Debian release (suite or codename).
    #[arg(long, default_value = "bookworm")]
    release: String,
    /// The archive to build from (default: http://deb.debian.org/debian).
    #[arg(long)]
    mirror: Option<String>,
    /// Extra packages (comma-separated; repeatable).
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
    /// The file to write (rootfs: .tar, .tar.gz, .tar.zst, ...; qemu: qcow2).
    #[arg(short = 'o', long)]
    output: PathBuf,
}

#[derive(clap::Args)]
pub struct QemuArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Size of the root filesystem (as mke2fs takes it: 2G, 4096M).
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
    }
}

fn build_qemu(args: QemuArgs) -> i32 {
    let spec = dep8_images::qemu::QemuImageSpec {
        release: args.archive.release,
        size: args.size,
        output: args.archive.output,
        mirror: args.archive.mirror,
        extra_packages: args.archive.include,
    };
    let progress = Progress::new(&format!("building a {} qemu image", spec.release));
    let result = dep8_images::qemu::build(&spec, |line| progress.line(line));
    progress.finish();
    match result {
        Ok(image) => {
            say!(
                "dep8: wrote {} (kernel {}, initrd {})",
                image.image.display(),
                image.kernel.display(),
                image.initrd.display()
            );
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
        release: args.archive.release,
        variant: match args.variant {
            VariantArg::Minbase => Variant::Minbase,
            VariantArg::Apt => Variant::Apt,
        },
        mirror: args.archive.mirror,
        include: args.archive.include,
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

/// A spinner showing the latest line of a long build on a terminal; plain
/// lines otherwise.
struct Progress(Option<indicatif::ProgressBar>);

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
        Progress(Some(bar))
    }

    fn line(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(line.to_string()),
            None => say!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
