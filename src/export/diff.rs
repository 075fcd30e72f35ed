//! `mesobake diff OLD NEW`: what changed between two builds, from their manifests.
//!
//! Per image: packages added, removed, upgraded and downgraded (Debian version order,
//! [`compare_versions`](crate::debversion::compare_versions)), and the inputs that changed: profile files (by SHA256), the
//! base, local .debs, the input fingerprint, mesobake and qemu-img. An image in only one
//! manifest is reported as added or removed; two manifests of one image each are
//! compared even when the names differ.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::manifest::{Entry, Manifest};
use crate::debversion::compare_versions;
use crate::stage::provision::Package;

/// One input that differs. `old` or `new` is None where that build had no such input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputChange {
    /// What it is: `base`, `profile file profiles/master.toml`, `local deb x.deb`, ...
    pub input: String,
    /// Its value in the old build.
    pub old: Option<String>,
    /// Its value in the new build.
    pub new: Option<String>,
}

/// A package whose version changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    /// The package.
    pub name: String,
    /// Its architecture (the new build's).
    pub architecture: String,
    /// The old version.
    pub old: String,
    /// The new version.
    pub new: String,
}

/// How the package lists differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackageChanges {
    /// Only in the new build.
    pub added: Vec<Package>,
    /// Only in the old build.
    pub removed: Vec<Package>,
    /// A later version in the new build.
    pub upgraded: Vec<VersionChange>,
    /// An earlier version in the new build.
    pub downgraded: Vec<VersionChange>,
}

impl PackageChanges {
    fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.upgraded.is_empty()
            && self.downgraded.is_empty()
    }
}

/// What happened to an image between the two builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Only in the new manifest.
    Added,
    /// Only in the old manifest.
    Removed,
    /// In both, with differences.
    Changed,
    /// In both, no differences.
    Unchanged,
}

/// One image's differences.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDiff {
    /// The image (its name in the new manifest).
    pub image: String,
    /// The old image it was compared with, when its name differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
    /// Added, removed, changed or unchanged.
    pub status: ImageStatus,
    /// The inputs that differ.
    pub inputs: Vec<InputChange>,
    /// How the packages differ.
    pub packages: PackageChanges,
}

/// The whole comparison, as `mesobake diff --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestDiff {
    /// The old manifest file.
    pub old: PathBuf,
    /// The new manifest file.
    pub new: PathBuf,
    /// Whether anything differs.
    pub changed: bool,
    /// Per image, by name.
    pub images: Vec<ImageDiff>,
}

/// The manifest a command-line argument names: the file, or `DIR/manifest.json`.
pub fn manifest_path(arg: &Path) -> PathBuf {
    if arg.is_dir() {
        arg.join("manifest.json")
    } else {
        arg.to_path_buf()
    }
}

/// Reads both manifests (files or output directories) and compares them.
pub fn diff_paths(old: &Path, new: &Path) -> Result<ManifestDiff> {
    let (old, new) = (manifest_path(old), manifest_path(new));
    let images = diff(&Manifest::read(&old)?, &Manifest::read(&new)?);
    Ok(ManifestDiff {
        changed: images.iter().any(|i| i.status != ImageStatus::Unchanged),
        old,
        new,
        images,
    })
}

/// Compares two manifests image by image.
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<ImageDiff> {
    let (olds, news): (Vec<_>, Vec<_>) = (old.images.iter().collect(), new.images.iter().collect());
    if let ([(on, oe)], [(nn, ne)]) = (&olds[..], &news[..]) {
        if on != nn {
            let mut d = diff_entry(nn, oe, ne);
            d.compared_with = Some(on.to_string());
            return vec![d];
        }
    }
    let names: BTreeSet<&String> = old.images.keys().chain(new.images.keys()).collect();
    names
        .into_iter()
        .map(|name| match (old.images.get(name), new.images.get(name)) {
            (Some(o), Some(n)) => diff_entry(name, o, n),
            (o, _) => ImageDiff {
                image: name.clone(),
                compared_with: None,
                status: if o.is_some() {
                    ImageStatus::Removed
                } else {
                    ImageStatus::Added
                },
                inputs: Vec::new(),
                packages: PackageChanges::default(),
            },
        })
        .collect()
}

fn diff_entry(name: &str, old: &Entry, new: &Entry) -> ImageDiff {
    let inputs = diff_inputs(old, new);
    let packages = diff_packages(&old.packages, &new.packages);
    ImageDiff {
        image: name.to_string(),
        compared_with: None,
        status: if inputs.is_empty() && packages.is_empty() {
            ImageStatus::Unchanged
        } else {
            ImageStatus::Changed
        },
        inputs,
        packages,
    }
}

/// The inputs of a build record, by name; what [`diff_inputs`] compares.
fn inputs_of(e: &Entry) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(b) = &e.build {
        m.insert("input fingerprint".into(), b.input_fingerprint.clone());
        m.insert("mesobake version".into(), b.mesobake_version.clone());
        m.insert("mesobake revision".into(), b.mesobake_revision.clone());
        m.insert("qemu-img".into(), b.qemu_img.clone());
    }
    m.insert("base".into(), e.base.spec.clone());
    m.insert("base sha256".into(), e.base.sha256.clone());
    m.insert("services".into(), e.profile.services.join(" "));
    for (f, sha) in &e.profile.files {
        m.insert(format!("profile file {f}"), sha.clone());
    }
    for (f, sha) in &e.local_debs {
        m.insert(format!("local deb {f}"), sha.clone());
    }
    m
}

fn diff_inputs(old: &Entry, new: &Entry) -> Vec<InputChange> {
    let (o, n) = (inputs_of(old), inputs_of(new));
    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| InputChange {
            input: k.clone(),
            old: o.get(k).cloned(),
            new: n.get(k).cloned(),
        })
        .collect()
}

/// Pairs packages by name (and architecture, where a name has several), then sorts the
/// pairs by version order.
fn diff_packages(old: &[Package], new: &[Package]) -> PackageChanges {
    let mut by_name: BTreeMap<&str, (Vec<&Package>, Vec<&Package>)> = BTreeMap::new();
    for p in old {
        by_name.entry(&p.name).or_default().0.push(p);
    }
    for p in new {
        by_name.entry(&p.name).or_default().1.push(p);
    }
    let mut c = PackageChanges::default();
    for (_, (mut olds, mut news)) in by_name {
        let mut pairs = Vec::new();
        // Same architecture first; then one left on each side is the same package
        // (an older manifest did not record the architecture of most packages).
        olds.retain(
            |o| match news.iter().position(|n| n.architecture == o.architecture) {
                Some(i) => {
                    pairs.push((*o, news.remove(i)));
                    false
                }
                None => true,
            },
        );
        if let ([o], [n]) = (&olds[..], &news[..]) {
            pairs.push((o, n));
            olds.clear();
            news.clear();
        }
        c.removed.extend(olds.into_iter().cloned());
        c.added.extend(news.into_iter().cloned());
        for (o, n) in pairs {
            let change = || VersionChange {
                name: n.name.clone(),
                architecture: n.architecture.clone(),
                old: o.version.clone(),
                new: n.version.clone(),
            };
            match compare_versions(&o.version, &n.version) {
                Ordering::Less => c.upgraded.push(change()),
                Ordering::Greater => c.downgraded.push(change()),
                Ordering::Equal => {}
            }
        }
    }
    c
}

/// A value for the text form: digests shortened to 12 characters.
fn short(v: &Option<String>) -> String {
    match v {
        None => "(none)".into(),
        Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => s[..12].to_string(),
        Some(s) => s.clone(),
    }
}

impl ManifestDiff {
    /// The text form: one heading per image, then a table of its changes.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for i in &self.images {
            let heading = match (&i.compared_with, i.status) {
                (_, ImageStatus::Added) => "added (only in the new manifest)".to_string(),
                (_, ImageStatus::Removed) => "removed (only in the old manifest)".to_string(),
                (_, ImageStatus::Unchanged) => "unchanged".to_string(),
                (with, ImageStatus::Changed) => {
                    let p = &i.packages;
                    format!(
                        "{}{} inputs changed; packages: {} added, {} removed, {} upgraded, {} downgraded",
                        with.as_ref()
                            .map(|w| format!("compared with {w}: "))
                            .unwrap_or_default(),
                        i.inputs.len(),
                        p.added.len(),
                        p.removed.len(),
                        p.upgraded.len(),
                        p.downgraded.len()
                    )
                }
            };
            s += &format!("{}: {heading}\n", i.image);
            if i.status != ImageStatus::Changed {
                continue;
            }
            let mut t = crate::output::Table::new(&["change", "what", "old", "new"]);
            for c in &i.inputs {
                t.row(vec![
                    "input".into(),
                    c.input.clone(),
                    short(&c.old),
                    short(&c.new),
                ]);
            }
            let p = &i.packages;
            let label = |n: &str, a: &str| {
                if a.is_empty() {
                    n.to_string()
                } else {
                    format!("{n} ({a})")
                }
            };
            for a in &p.added {
                t.row(vec![
                    "added".into(),
                    label(&a.name, &a.architecture),
                    String::new(),
                    a.version.clone(),
                ]);
            }
            for r in &p.removed {
                t.row(vec![
                    "removed".into(),
                    label(&r.name, &r.architecture),
                    r.version.clone(),
                ]);
            }
            for (what, list) in [("upgraded", &p.upgraded), ("downgraded", &p.downgraded)] {
                for v in list {
                    t.row(vec![
                        what.into(),
                        label(&v.name, &v.architecture),
                        v.old.clone(),
                        v.new.clone(),
                    ]);
                }
            }
            for line in t.render().lines() {
                s += &format!("  {line}\n");
            }
        }
        s += if self.changed {
            "diff: the builds differ\n"
        } else {
            "diff: no differences\n"
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, arch: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            architecture: arch.into(),
            source: None,
            license: None,
        }
    }

    #[test]
    fn packages_pair_by_name_and_architecture() {
        let old = [
            pkg("gone", "all", "1"),
            pkg("libc6", "amd64", "2.36-9"),
            pkg("libc6", "i386", "2.36-9"),
            pkg("zookeeper", "", "3.8.0-11"),
            pkg("down", "amd64", "2.0"),
        ];
        let new = [
            pkg("libc6", "amd64", "2.36-9+deb12u4"),
            pkg("new", "amd64", "1"),
            pkg("zookeeper", "all", "3.8.4-1"),
            pkg("down", "amd64", "1:1.0"),
        ];
        let c = diff_packages(&old, &new);
        let names = |v: &[Package]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&c.removed), ["gone", "libc6"]);
        assert_eq!(c.removed[1].architecture, "i386");
        assert_eq!(names(&c.added), ["new"]);
        let up: Vec<&str> = c.upgraded.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(up, ["down", "libc6", "zookeeper"]);
        assert!(c.downgraded.is_empty());
        let c = diff_packages(&new, &old);
        assert_eq!(c.downgraded.len(), 3);
    }
}
