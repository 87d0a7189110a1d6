//! Testbed images built from Debian's archive with mmdebstrap: rootfs
//! tarballs for the container backends, bootable disk images for qemu.

pub mod qemu;
pub mod rootfs;
