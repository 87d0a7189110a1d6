//! Bootable disk images for the qemu backend.
