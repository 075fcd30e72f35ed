//! mesobake: bakes bootable, preconfigured VM images for Apache Mesos clusters.
pub mod run;
