//! The provisioned layer: the disk after package installation, cached by a hash of
//! everything that went into it.
//!
//! Roles that share a package set (all three shipped profiles do) share one layer, so
//! building a second role, or rebuilding after an overlay edit, skips apt entirely.
//! Each layer directory holds `disk.qcow2` and a manifest of its inputs; a miss under
//! `-v` names the inputs that differ from the newest layer of the same kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BuildContext;
use crate::base::cache::{Cache, LAYER_MANIFEST};
use crate::run::Cmd;

/// Bump when provisioning changes in a way the inputs would not show.
const RECIPE: &str = "provision-1";
/// The cache kind of provisioned layers.
pub const KIND: &str = "provisioned";

/// A layer's manifest: its inputs and what provisioning reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerManifest {
    /// Always [`KIND`].
    pub kind: String,
    /// The hash of `inputs`.
    pub key: String,
    /// Every input, by name.
    pub inputs: BTreeMap<String, String>,
    /// Installed packages and versions.
    pub packages: Vec<(String, String)>,
    /// Local .debs offered to apt, with their SHA256.
    pub debs: Vec<(String, String)>,
    /// Size and modification time of disk.qcow2 when it was published, to detect damage.
    pub disk_size: u64,
    /// Modification time in nanoseconds.
    pub disk_mtime_ns: u128,
}

/// The inputs of the provisioned layer, by name.
pub fn inputs(ctx: &BuildContext) -> Result<BTreeMap<String, String>> {
    let p = &ctx.req.profile;
    let mut m = BTreeMap::new();
    m.insert("recipe".into(), RECIPE.into());
    m.insert("base".into(), ctx.base.sha256.clone());
    m.insert("disk-size".into(), p.disk_size.to_string());
    let mut pkgs = p.packages.clone();
    pkgs.sort();
    m.insert("packages".into(), pkgs.join(" "));
    for s in &p.apt_sources {
        let key = std::fs::read(&s.key)
            .map(|k| hex::encode(Sha256::digest(k)))
            .unwrap_or_else(|_| "missing".into());
        m.insert(
            format!(
                "apt-source {}/{}",
                s.name,
                s.family.as_deref().unwrap_or("all")
            ),
            format!(
                "{} {} {} key:{key}",
                s.uri,
                s.suites.join(","),
                s.components.join(",")
            ),
        );
    }
    for (name, digest) in local_deb_digests(&p.debs)? {
        m.insert(format!("deb {name}"), digest);
    }
    Ok(m)
}

fn local_deb_digests(sources: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for s in sources {
        let files: Vec<PathBuf> = if s.is_dir() {
            std::fs::read_dir(s)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect()
        } else {
            vec![s.clone()]
        };
        for f in files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push((
                name,
                crate::base::cache::sha256_file(&f).unwrap_or_else(|_| "missing".into()),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// The key of a set of inputs.
pub fn key(inputs: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in inputs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn mtime_ns(p: &Path) -> Result<u128> {
    Ok(std::fs::metadata(p)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos())
}

/// Looks up a layer and checks it before use: the manifest must parse and match the key,
/// and the disk must have the recorded size and time and pass `qemu-img check`. A damaged
/// entry is removed and reported as a miss, never used.
pub fn lookup(cache: &Cache, key: &str) -> Result<Option<(PathBuf, LayerManifest)>> {
    let Some(dir) = cache.layer_get(KIND, key) else {
        return Ok(None);
    };
    match check(&dir, key) {
        Ok(m) => {
            crate::base::gc::touch(&dir);
            Ok(Some((dir.join("disk.qcow2"), m)))
        }
        Err(e) => {
            eprintln!(
                "mesobake: cached layer {KIND}/{} is damaged ({e:#}); rebuilding it",
                &key[..12]
            );
            cache.remove_layer(KIND, key)?;
            Ok(None)
        }
    }
}

fn check(dir: &Path, key: &str) -> Result<LayerManifest> {
    let m: LayerManifest = serde_json::from_slice(&std::fs::read(dir.join(LAYER_MANIFEST))?)
        .context("reading the layer manifest")?;
    if m.key != key {
        bail!("manifest key {} does not match", m.key);
    }
    let disk = dir.join("disk.qcow2");
    let size = std::fs::metadata(&disk)
        .context("disk.qcow2 is missing")?
        .len();
    if size != m.disk_size || mtime_ns(&disk)? != m.disk_mtime_ns {
        bail!("disk.qcow2 changed since it was cached");
    }
    Cmd::new("qemu-img")
        .args(["check", "-q"])
        .arg(&disk)
        .run()
        .context("qemu-img check")?;
    Ok(m)
}

/// Saves the provisioned raw disk as a layer (an uncompressed qcow2: fast to write and to
/// read back, and sparse).
pub fn save(
    cache: &Cache,
    raw: &Path,
    key: &str,
    inputs: BTreeMap<String, String>,
    report: &super::provision::ProvisionReport,
) -> Result<PathBuf> {
    let tmp = cache
        .tmp_dir()
        .join(format!("layer-{}-{}", &key[..12], std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let r = (|| {
        let disk = tmp.join("disk.qcow2");
        Cmd::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(raw)
            .arg(&disk)
            .run()
            .context("saving the provisioned layer")?;
        let m = LayerManifest {
            kind: KIND.into(),
            key: key.into(),
            inputs,
            packages: report.packages.clone(),
            debs: report.debs.clone(),
            disk_size: std::fs::metadata(&disk)?.len(),
            disk_mtime_ns: mtime_ns(&disk)?,
        };
        std::fs::write(tmp.join(LAYER_MANIFEST), serde_json::to_vec_pretty(&m)?)?;
        cache.publish_dir(&tmp, KIND, key)
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// Says which inputs differ from the newest cached layer of this kind, for `-v`.
pub fn explain_miss(cache: &Cache, inputs: &BTreeMap<String, String>) -> String {
    let dir = cache.root().join("layers").join(KIND);
    let newest = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.path().join(LAYER_MANIFEST);
            let t = std::fs::metadata(&m).and_then(|md| md.modified()).ok()?;
            Some((t, m))
        })
        .max_by_key(|(t, _)| *t);
    let Some((_, path)) = newest else {
        return "no provisioned layer is cached yet".into();
    };
    let Ok(old) = std::fs::read(&path)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice::<LayerManifest>(&b)?))
    else {
        return "the newest cached layer has no readable manifest".into();
    };
    diff(&old.inputs, inputs)
}

/// Names the inputs that were added, removed or changed.
pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => parts.push(format!("{k} added")),
            Some(o) if o != v => parts.push(format!("{k} changed ({o} -> {v})")),
            _ => {}
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        parts.push(format!("{k} removed"));
    }
    if parts.is_empty() {
        "inputs are equal to the newest layer's".into()
    } else {
        format!("differs from the newest cached layer: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn key_depends_on_every_input_and_diff_names_it() {
        let a = m(&[("base", "1"), ("packages", "mesos zookeeperd")]);
        let b = m(&[("base", "1"), ("packages", "mesos marathon zookeeperd")]);
        assert_ne!(key(&a), key(&b));
        assert_eq!(key(&a), key(&a.clone()));
        let d = diff(&a, &b);
        assert!(
            d.contains("packages changed (mesos zookeeperd -> mesos marathon zookeeperd)"),
            "{d}"
        );
        let c = m(&[("base", "2")]);
        let d = diff(&a, &c);
        assert!(
            d.contains("base changed") && d.contains("packages removed"),
            "{d}"
        );
    }

    #[test]
    fn a_damaged_layer_is_detected_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let raw = d.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let inputs = m(&[("base", "x")]);
        let k = key(&inputs);
        save(&cache, &raw, &k, inputs, &Default::default()).unwrap();
        assert!(lookup(&cache, &k).unwrap().is_some());
        // Corrupt the cached disk: the entry must be refused and dropped.
        let disk = cache.layer_get(KIND, &k).unwrap().join("disk.qcow2");
        let mut perms = std::fs::metadata(&disk).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&disk, perms).unwrap();
        std::fs::write(&disk, b"garbage").unwrap();
        assert!(lookup(&cache, &k).unwrap().is_none());
        assert!(cache.layer_get(KIND, &k).is_none());
    }
}
