//! Booting images under QEMU: the launcher and `verify`.
pub mod qemu;
pub mod verify;
