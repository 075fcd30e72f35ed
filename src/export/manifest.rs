//! The build manifest (`manifest.json`) and `SHA256SUMS`.
//!
//! One output directory can hold several images (all roles of a cluster), so the
//! manifest maps each image name to its build record, and SHA256SUMS lists every output
//! in the directory. Both are rewritten whole and published by rename.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{BuildFacts, Output};
use crate::context::BuildContext;
use crate::sums::{self, Sums};

/// `manifest.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The mesobake version that last wrote the file.
    pub mesobake: String,
    /// Build records by image name.
    pub images: BTreeMap<String, Entry>,
}

/// One image's build record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The profile.
    pub profile: ProfileRecord,
    /// The base it was built from.
    pub base: BaseRecord,
    /// Init system and Mesos package layout found in the image.
    pub layout: serde_json::Value,
    /// Every installed package and its version.
    pub packages: BTreeMap<String, String>,
    /// Local .deb files offered to apt, with their SHA256.
    pub local_debs: BTreeMap<String, String>,
    /// The outputs.
    pub outputs: Vec<Output>,
}

/// The profile part of a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// Profile name.
    pub name: String,
    /// The services the role runs.
    pub services: Vec<String>,
    /// SHA256 over the profile files in merge order (one hash for the whole input).
    pub sha256: String,
    /// Each file and its SHA256.
    pub files: Vec<(String, String)>,
}

/// The base part of a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseRecord {
    /// What was asked for.
    pub spec: String,
    /// The base image's SHA256.
    pub sha256: String,
    /// Distribution family.
    pub family: Option<String>,
    /// Release codename.
    pub codename: Option<String>,
}

impl Entry {
    /// The record for a finished build.
    pub fn new(ctx: &BuildContext, facts: &BuildFacts, outputs: &[Output]) -> Entry {
        let p = &ctx.req.profile;
        let combined = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for (_, d) in &p.sources {
                h.update(d.as_bytes());
                h.update(b"\n");
            }
            hex::encode(h.finalize())
        };
        Entry {
            profile: ProfileRecord {
                name: p.name.clone(),
                services: p.services.iter().map(|s| s.name().to_string()).collect(),
                sha256: combined,
                files: p
                    .sources
                    .iter()
                    .map(|(f, d)| (f.display().to_string(), d.clone()))
                    .collect(),
            },
            base: BaseRecord {
                spec: ctx.base.spec.clone(),
                sha256: ctx.base.sha256.clone(),
                family: ctx.base.family.map(|f| format!("{f:?}").to_lowercase()),
                codename: ctx.base.codename.clone(),
            },
            layout: serde_json::to_value(&facts.layout).unwrap_or_default(),
            packages: facts.packages.iter().cloned().collect(),
            local_debs: facts.debs.iter().cloned().collect(),
            outputs: outputs.to_vec(),
        }
    }
}

/// A fingerprint of everything that went into the disk: the profile files, the base
/// digest, every installed package version and the local .deb digests. Output headers
/// that need an id (VMDK CID, VDI and VHD UUIDs) derive it from this, so two builds from
/// the same pinned inputs agree without hashing the multi-GiB disk itself.
pub fn input_fingerprint(ctx: &BuildContext, facts: &BuildFacts) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut put = |k: &str, v: &str| {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([b'\n']);
    };
    put("name", &ctx.req.profile.name);
    for (f, d) in &ctx.req.profile.sources {
        put(&f.display().to_string(), d);
    }
    put("base", &ctx.base.sha256);
    let pkgs: BTreeMap<_, _> = facts.packages.iter().cloned().collect();
    for (p, v) in pkgs {
        put(&p, &v);
    }
    let debs: BTreeMap<_, _> = facts.debs.iter().cloned().collect();
    for (p, d) in debs {
        put(&p, &d);
    }
    hex::encode(h.finalize())
}

impl Manifest {
    /// Reads the manifest in `dir`, or an empty one.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join("manifest.json");
        let mut m = match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        m.mesobake = env!("CARGO_PKG_VERSION").to_string();
        Ok(m)
    }

    /// Finds the image record that lists `file` among its outputs.
    pub fn find_output(&self, file: &str) -> Option<(&String, &Entry)> {
        self.images
            .iter()
            .find(|(_, e)| e.outputs.iter().any(|o| o.file == file))
    }
}

/// SHA256SUMS for the directory: the new outputs plus every earlier entry whose file is
/// still there and not replaced now, sorted by name.
///
/// An existing SHA256SUMS that does not parse stops the publish rather than being
/// rewritten without its unreadable lines: the list is what a signature vouches for, and
/// silently dropping another image's entry would unlist a file nobody asked to unlist.
pub fn sha256sums(dir: &Path, new: &[Output]) -> Result<String> {
    let path = dir.join("SHA256SUMS");
    let mut lines: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(old) => Sums::parse(&old)
            .and_then(Sums::into_map)
            .with_context(|| {
                format!(
                    "reading the SHA256SUMS already in {} (fix or remove it, then build again)",
                    dir.display()
                )
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    lines.retain(|f, _| dir.join(f).exists());
    for o in new {
        lines.insert(o.file.clone(), o.sha256.clone());
    }
    Ok(sums::render(
        lines.iter().map(|(f, h)| (f.as_str(), h.as_str())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Format;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn output(file: &str, sha256: &str) -> Output {
        Output {
            file: file.into(),
            format: Format::Qcow2,
            kind: crate::export::OutputKind::Disk,
            virtual_size: 1,
            size: 1,
            sha256: sha256.into(),
        }
    }

    #[test]
    fn sums_keep_other_images_and_replace_ours() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.qcow2"), "a").unwrap();
        // Written by hand, in both forms the parser reads, with the binary marker.
        std::fs::write(
            d.path().join("SHA256SUMS"),
            format!("# old\n{A}  a.qcow2\nSHA256 (gone.qcow2) = {B}\n{B} *b.qcow2\n"),
        )
        .unwrap();
        std::fs::write(d.path().join("b.qcow2"), "b").unwrap();
        assert_eq!(
            sha256sums(d.path(), &[output("b.qcow2", C)]).unwrap(),
            format!("{A}  a.qcow2\n{C}  b.qcow2\n")
        );
    }

    #[test]
    fn a_damaged_sums_file_stops_the_rewrite() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("SHA256SUMS"), format!("{A}  a\n11  b\n")).unwrap();
        let err = sha256sums(d.path(), &[output("c.qcow2", C)]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("line 2") && msg.contains("fix or remove"),
            "{msg}"
        );
    }
}
