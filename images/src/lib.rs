//! Testbed images built from Debian's archive with mmdebstrap: rootfs
//! tarballs for the container backends, template containers for lxc,
//! bootable disk images for qemu; and updating tarballs in place.

pub mod lxc;
pub mod qemu;
pub mod rootfs;
pub mod update;
