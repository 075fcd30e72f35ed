//! mesobake: bakes bootable, preconfigured VM images for Apache Mesos clusters.
pub mod base;
pub mod image;
pub mod profile;
pub mod run;
