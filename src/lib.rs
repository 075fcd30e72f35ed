//! mesobake: bakes bootable, preconfigured VM images for Apache Mesos clusters.
//!
//! The pipeline is `profile` (resolve) -> `base` -> `stage` (provision, configure,
//! finalize) -> `export`; `vm` boots the result to verify it.
pub mod base;
pub mod cli;
pub mod cluster;
pub mod export;
pub mod image;
pub mod nodeconf;
pub mod profile;
pub mod progress;
pub mod run;
pub mod seed;
pub mod stage;
pub mod vm;
