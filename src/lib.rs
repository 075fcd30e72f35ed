//! mesobake: bakes bootable, preconfigured VM images for Apache Mesos clusters.
//!
//! The pipeline is `profile` (resolve) -> `base` -> `stage` (provision, configure,
//! finalize, inside the `layers` cache) -> `export`, run by `build`; `vm` boots the
//! result to verify it.
pub mod base;
pub mod build;
pub mod builtin;
pub mod cli;
pub mod cluster;
pub mod context;
pub mod debversion;
pub mod export;
pub mod failure;
pub mod image;
pub mod install;
pub mod isolate;
pub mod layers;
pub mod nodeconf;
pub mod output;
pub mod profile;
pub mod progress;
pub mod project;
pub mod recover;
pub mod run;
pub mod seed;
pub mod service;
pub mod settings;
pub mod stage;
pub mod sums;
pub mod utc;
pub mod validate;
pub mod vm;
pub mod xdg;
