//! `dep8 image build KIND`: testbed images from Debian's archive.

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Build an image.
    #[command(subcommand)]
    Build(BuildKind),
}

#[derive(clap::Subcommand)]
pub enum BuildKind {
    /// A qcow2 disk image for the qemu backend (kernel and initrd beside it
    /// as IMAGE.vmlinuz and IMAGE.initrd). Needs root.
    Qemu(QemuArgs),
}

#[derive(clap::Args)]
pub struct QemuArgs {
    /// Debian release (codename or suite).
    #[arg(long, default_value = "bookworm")]
    release: String,
    /// Size of the root filesystem (as mke2fs takes it).
    #[arg(long, default_value = "2G")]
    size: String,
    /// Debian mirror (default: mmdebstrap's).
    #[arg(long)]
    mirror: Option<String>,
    /// Install these packages too (comma-separated; repeatable).
    #[arg(long = "include", value_delimiter = ',')]
    include: Vec<String>,
    /// The image to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// Runs `dep8 image ...`; returns the exit status.
pub fn run(command: ImageCommand) -> i32 {
    let result = match command {
        ImageCommand::Build(BuildKind::Qemu(args)) => {
            dep8_images::qemu::build(&dep8_images::qemu::QemuImageSpec {
                release: args.release,
                size: args.size,
                output: args.output,
                mirror: args.mirror,
                extra_packages: args.include,
            })
            .map(|_| ())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => crate::error(e),
    }
}
