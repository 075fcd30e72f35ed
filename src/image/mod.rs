//! Disk images on the host: loop devices, mounts, partitions, and the image root.
pub mod disk;
pub mod guard;
pub mod root;

pub use disk::{chroot, AttachedImage};
pub use guard::{LoopDevice, Mount, Mounts};
pub use root::ImageRoot;
