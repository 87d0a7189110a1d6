//! Rootfs tarballs for the container backends (unshare, schroot, lxc).
