//! Cached layers, each keyed by a hash of its inputs: their manifests, lookup, save.
//!
//! - `provisioned`: the disk after package installation and cleaning, as a sparse raw
//!   file. Roles that share a package set (all three shipped profiles do) share one, so
//!   building a second role, or rebuilding after an overlay edit, skips apt entirely.
//! - `packed`: that disk as a compressed qcow2, made once per compression; a qcow2
//!   output is this plus the changed clusters (see [`super::delta`]); export makes and
//!   uses it (`export::qcow2`).
//! - `configured`: the delta from the provisioned disk to the finished one, plus what
//!   configure found; an unchanged rebuild skips mounting the image at all.
//!
//! Each layer directory holds one file and a manifest of its inputs; a miss under `-v`
//! names the inputs that differ from the newest layer of the same kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::cache::{Cache, LAYER_MANIFEST};
use crate::context::BuildContext;
use crate::run::Cmd;

/// Bump when provisioning changes in a way the inputs would not show.
const RECIPE: &str = "provision-2";
/// Bump when configure or finalize change in a way the inputs would not show (the
/// mesobake binary's identity is an input too).
const CONFIGURE_RECIPE: &str = "configure-1";
/// The provisioned disk, raw and sparse.
pub const PROVISIONED: &str = "provisioned";
/// The provisioned disk as a compressed qcow2.
pub const PACKED: &str = "packed";
/// The delta that configure and finalize make.
pub const CONFIGURED: &str = "configured";

/// A layer's manifest: its inputs and what the step that made it reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerManifest {
    /// The layer kind.
    pub kind: String,
    /// The hash of `inputs`.
    pub key: String,
    /// Every input, by name.
    pub inputs: BTreeMap<String, String>,
    /// Installed packages and versions.
    #[serde(default)]
    pub packages: Vec<(String, String)>,
    /// Local .debs offered to apt, with their SHA256.
    #[serde(default)]
    pub debs: Vec<(String, String)>,
    /// The layer's one file, in its directory.
    pub file: String,
    /// Size and modification time of `file` when it was published, to detect damage.
    pub disk_size: u64,
    /// Modification time in nanoseconds.
    pub disk_mtime_ns: u128,
    /// Kind-specific facts (the configured layer's delta and layout).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// What a layer records besides its inputs and file.
#[derive(Debug, Clone, Default)]
pub struct LayerFacts {
    /// Installed packages and versions.
    pub packages: Vec<(String, String)>,
    /// Local .debs with their SHA256.
    pub debs: Vec<(String, String)>,
    /// Kind-specific facts.
    pub extra: serde_json::Value,
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
            std::fs::read_dir(s)
                .with_context(|| format!("listing {}", s.display()))?
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
    Ok(std::fs::metadata(p)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the time of {}", p.display()))?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos())
}

/// Looks up a layer and checks it before use: the manifest must parse and match the
/// kind and key, the file must have the recorded size and time, and a qcow2 must pass
/// `qemu-img check`. A damaged entry is removed and reported as a miss, never used.
/// Returns the layer's file and manifest.
pub fn lookup(cache: &Cache, kind: &str, key: &str) -> Result<Option<(PathBuf, LayerManifest)>> {
    let Some(dir) = cache.layer_get(kind, key) else {
        return Ok(None);
    };
    match check(&dir, kind, key) {
        Ok(m) => {
            crate::base::gc::touch(&dir);
            Ok(Some((dir.join(&m.file), m)))
        }
        Err(e) => {
            eprintln!(
                "mesobake: cached layer {kind}/{} is damaged ({e:#}); rebuilding it",
                &key[..12]
            );
            cache.remove_layer(kind, key)?;
            Ok(None)
        }
    }
}

fn check(dir: &Path, kind: &str, key: &str) -> Result<LayerManifest> {
    let path = dir.join(LAYER_MANIFEST);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: LayerManifest = serde_json::from_slice(&text).context("reading the layer manifest")?;
    if m.key != key || m.kind != kind {
        bail!("manifest says {}/{}", m.kind, m.key);
    }
    if m.file.contains('/') || m.file.is_empty() || m.file == LAYER_MANIFEST {
        bail!("manifest names a bad file {:?}", m.file);
    }
    let file = dir.join(&m.file);
    let size = std::fs::metadata(&file)
        .with_context(|| format!("{} is missing", m.file))?
        .len();
    if size != m.disk_size || mtime_ns(&file)? != m.disk_mtime_ns {
        bail!("{} changed since it was cached", m.file);
    }
    if m.file.ends_with(".qcow2") {
        Cmd::new("qemu-img")
            .args(["check", "-q"])
            .arg(&file)
            .run()
            .context("qemu-img check")?;
    }
    Ok(m)
}

/// Saves a layer: `make` writes the layer's file `file` into the directory it is given
/// (a private directory in the cache), then the manifest is written and the directory
/// published by one rename. Returns the published file's path.
pub fn save(
    cache: &Cache,
    kind: &str,
    key: &str,
    inputs: BTreeMap<String, String>,
    file: &str,
    facts: LayerFacts,
    make: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let tmp = cache.tmp_dir().join(format!(
        "layer-{kind}-{}-{}",
        &key[..12],
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let r = (|| {
        let path = tmp.join(file);
        make(&path).with_context(|| format!("saving the {kind} layer"))?;
        let m = LayerManifest {
            kind: kind.into(),
            key: key.into(),
            inputs,
            packages: facts.packages,
            debs: facts.debs,
            file: file.into(),
            disk_size: std::fs::metadata(&path)?.len(),
            disk_mtime_ns: mtime_ns(&path)?,
            extra: facts.extra,
        };
        let manifest = tmp.join(LAYER_MANIFEST);
        std::fs::write(&manifest, serde_json::to_vec_pretty(&m)?)
            .with_context(|| format!("writing {}", manifest.display()))?;
        cache.publish_dir(&tmp, kind, key)
    })();
    match r {
        Ok(dir) => Ok(dir.join(file)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Names one instance of a layer: its key plus its file's size and time. A layer
/// rebuilt from the same inputs (after `cache gc`, or damage) has the same key but, since
/// apt and ext4 are not byte-reproducible, different bytes; layers derived from it
/// (packed, configured) take this as their input so they never combine with another
/// instance's bytes.
pub fn instance(key: &str, file: &Path) -> Result<String> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    Ok(format!("{key} {size} {}", mtime_ns(file)?))
}

/// Copies a raw disk keeping it sparse (GNU cp finds the holes with SEEK_DATA).
pub fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    Cmd::new("cp")
        .args(["--sparse=always", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .run()
        .with_context(|| format!("copying {}", from.display()))
}

/// The part of any manifest version that a miss explanation needs.
#[derive(Deserialize)]
struct InputsOnly {
    inputs: BTreeMap<String, String>,
}

/// Says which inputs differ from the newest cached layer of this kind, for `-v`.
pub fn explain_miss(cache: &Cache, kind: &str, inputs: &BTreeMap<String, String>) -> String {
    let dir = cache.root().join("layers").join(kind);
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
        return format!("no {kind} layer is cached yet");
    };
    let Ok(old) = std::fs::read(&path)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice::<InputsOnly>(&b)?))
    else {
        return "the newest cached layer has no readable manifest".into();
    };
    diff(&old.inputs, inputs)
}

/// The inputs of the configured layer: the provisioned layer's key, the resolved
/// profile, every overlay file (path, mode and content or link target), and the
/// mesobake binary that configures.
pub fn configured_inputs(
    ctx: &BuildContext,
    provisioned: &str,
) -> Result<BTreeMap<String, String>> {
    let p = &ctx.req.profile;
    let mut m = BTreeMap::new();
    m.insert("recipe".into(), CONFIGURE_RECIPE.into());
    m.insert("provisioned".into(), provisioned.into());
    m.insert("mesobake".into(), binary_identity());
    // The profile's sources (file -> digest) are left out: an edit that changes no
    // setting (a comment) should not miss. The resolved settings are what matter.
    let mut settings = serde_json::to_value(p)?;
    if let Some(o) = settings.as_object_mut() {
        o.remove("sources");
    }
    m.insert(
        "profile".into(),
        hex::encode(Sha256::digest(serde_json::to_vec(&settings)?)),
    );
    for (i, dir) in p.overlays.iter().enumerate() {
        for (rel, digest) in overlay_digests(dir)? {
            m.insert(format!("overlay {i} {rel}"), digest);
        }
    }
    Ok(m)
}

/// Identifies the running mesobake: its version and the executable's size and time, so
/// a rebuilt binary never reuses a configured layer an older one made.
fn binary_identity() -> String {
    let exe = std::env::current_exe().ok();
    let md = exe.as_ref().and_then(|e| std::fs::metadata(e).ok());
    let t = md
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{} {} {t}",
        env!("CARGO_PKG_VERSION"),
        md.map(|m| m.len()).unwrap_or_default()
    )
}

/// Every entry under an overlay tree, by relative path: mode and content digest for
/// files, target for links, mode for directories.
fn overlay_digests(dir: &Path) -> Result<Vec<(String, String)>> {
    if !dir.is_dir() {
        // A missing overlay is reported by configure, with the profile that lists it.
        return Ok(vec![(String::new(), "missing".into())]);
    }
    // Read exactly as configure reads it: no link followed, no FIFO or device opened.
    crate::stage::configure::overlay_digests(dir)
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
    fn a_rebuilt_layer_is_a_new_instance_though_its_key_is_the_same() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let inputs = m(&[("base", "x")]);
        let k = key(&inputs);
        let save_one = |byte: u8| {
            save(
                &cache,
                PROVISIONED,
                &k,
                inputs.clone(),
                "disk.raw",
                Default::default(),
                |p| Ok(std::fs::write(p, [byte; 4096])?),
            )
            .unwrap()
        };
        let first = instance(&k, &save_one(1)).unwrap();
        assert_eq!(
            first,
            instance(&k, &lookup(&cache, PROVISIONED, &k).unwrap().unwrap().0).unwrap()
        );
        cache.remove_layer(PROVISIONED, &k).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let second = instance(&k, &save_one(2)).unwrap();
        assert_ne!(
            first, second,
            "layers derived from the first must not match the second"
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
        let disk = save(
            &cache,
            PROVISIONED,
            &k,
            inputs,
            "disk.raw",
            Default::default(),
            |p| copy_sparse(&raw, p),
        )
        .unwrap();
        assert!(lookup(&cache, PROVISIONED, &k).unwrap().is_some());
        // Corrupt the cached disk: the entry must be refused and dropped.
        let mut perms = std::fs::metadata(&disk).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&disk, perms).unwrap();
        std::fs::write(&disk, b"garbage").unwrap();
        assert!(lookup(&cache, PROVISIONED, &k).unwrap().is_none());
        assert!(cache.layer_get(PROVISIONED, &k).is_none());
    }
}
