//! Bootstrapped bases: a cloud-image-like disk built from a distribution archive with
//! mmdebstrap.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::cache::Cache;
use super::NamedBase;

/// Bootstraps (or finds in the cache) the base `nb`; returns the qcow2 path.
pub fn bootstrap(_cache: &Cache, nb: &NamedBase, _mirror: Option<&str>) -> Result<PathBuf> {
    bail!("bootstrapping {} is not wired up yet", nb.name)
}
