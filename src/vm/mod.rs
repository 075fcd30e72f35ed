//! Booting images under QEMU: the launcher, `verify` and the local cluster `lab`.
pub mod lab;
pub mod probe;
pub mod qemu;
pub mod qmp;
pub mod verify;
