//! Cached layers, each keyed by a hash of its inputs: their manifests, lookup, save.
//!
//! - `provisioned`: the disk after package installation and cleaning, as a sparse raw
//!   file. Roles that share a package set (all three shipped profiles do) share one, so
//!   building a second role, or rebuilding after an overlay edit, skips apt entirely.
//! - `packed`: that disk as a compressed qcow2, made once per compression; a qcow2
//!   output is this plus the changed clusters (see [`super::delta`]); export makes and
//!   uses it (`export::qcow2`).
//! - `packed-vmdk`: that disk's grains compressed once for the streamOptimized VMDK
//!   (`export::stream`); the OVA and EC2 disk copy them and compress only changed grains.
//! - `configured`: the delta from the provisioned disk to the finished one, plus what
//!   configure found; an unchanged rebuild skips mounting the image at all.
//!
//! Each layer directory holds one file and a manifest of its inputs and of the file's
//! content digest ([`crate::base::digest`]); every lookup re-computes the digest, and a
//! layer whose bytes no longer match is dropped and rebuilt. A miss under `-v` names the
//! inputs that differ from the newest layer of the same kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::cache::{Cache, LAYER_MANIFEST};
use crate::base::digest;
use crate::context::BuildContext;
use crate::run::Cmd;
use crate::stage::provision::Package;

/// Bump when provisioning changes in a way the inputs would not show, or what its
/// manifest records changes shape (provision-3: package records with architecture,
/// source and licence, where provision-2 kept name/version pairs; an older entry is
/// never looked up under the new key, so it is a miss and `cache gc` removes it).
const RECIPE: &str = "provision-3";
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
    /// Installed packages.
    #[serde(default)]
    pub packages: Vec<Package>,
    /// Local .debs offered to apt, with their SHA256.
    #[serde(default)]
    pub debs: Vec<(String, String)>,
    /// The layer's one file, in its directory.
    pub file: String,
    /// The extent digest of `file`, computed from the published file by the process
    /// that published it. Empty in manifests older mesobakes wrote: such a layer cannot
    /// be verified and is rebuilt.
    #[serde(default)]
    pub digest: String,
    /// Kind-specific facts (the configured layer's delta and layout).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// What a layer records besides its inputs and file.
#[derive(Debug, Clone, Default)]
pub struct LayerFacts {
    /// Installed packages.
    pub packages: Vec<Package>,
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

/// Looks up a layer and checks it before use: the manifest must parse and match the
/// kind and key, the file's content digest must be the recorded one, and a qcow2 must
/// pass `qemu-img check`. A damaged entry is removed, reported on stderr (naming the
/// kind and, for changed bytes, both digests) and returned as a miss, never used: the
/// caller rebuilds it. Returns the layer's file and manifest.
pub fn lookup(cache: &Cache, kind: &str, key: &str) -> Result<Option<(PathBuf, LayerManifest)>> {
    lookup_reporting(cache, kind, key, |msg| eprintln!("mesobake: {msg}"))
}

/// [`lookup`], handing the damage message to `report` (tests read it).
fn lookup_reporting(
    cache: &Cache,
    kind: &str,
    key: &str,
    report: impl FnOnce(&str),
) -> Result<Option<(PathBuf, LayerManifest)>> {
    let Some(dir) = cache.layer_get(kind, key) else {
        return Ok(None);
    };
    match check(&dir, kind, key) {
        Ok(m) => {
            crate::base::gc::touch(&dir);
            Ok(Some((dir.join(&m.file), m)))
        }
        Err(e) => {
            report(&format!(
                "cached {kind} layer {} is damaged ({e:#}); dropping it and rebuilding it",
                &key[..12]
            ));
            cache.remove_layer(kind, key)?;
            Ok(None)
        }
    }
}

fn check(dir: &Path, kind: &str, key: &str) -> Result<LayerManifest> {
    let m = read_manifest(dir, kind, key)?;
    let file = dir.join(&m.file);
    if !file.is_file() {
        bail!("{} is missing", m.file);
    }
    if m.digest.is_empty() {
        bail!(
            "its manifest records no content digest (an older mesobake cached it), so it \
             cannot be verified"
        );
    }
    digest::verify(&file, &m.digest).with_context(|| format!("{} changed", m.file))?;
    if m.file.ends_with(".qcow2") {
        Cmd::new("qemu-img")
            .args(["check", "-q"])
            .arg(&file)
            .run()
            .context("qemu-img check")?;
    }
    Ok(m)
}

/// Reads a layer's manifest and checks that it names this layer and one plain file.
fn read_manifest(dir: &Path, kind: &str, key: &str) -> Result<LayerManifest> {
    let path = dir.join(LAYER_MANIFEST);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: LayerManifest = serde_json::from_slice(&text).context("reading the layer manifest")?;
    if m.key != key || m.kind != kind {
        bail!("manifest says {}/{}", m.kind, m.key);
    }
    if m.file.contains('/') || m.file.is_empty() || m.file == LAYER_MANIFEST {
        bail!("manifest names a bad file {:?}", m.file);
    }
    Ok(m)
}

/// Saves a layer: `make` writes the layer's file `file` into the directory it is given
/// (a private directory in the cache), then its content digest and the manifest are
/// written and the directory published by one rename. Returns the published file's
/// path and manifest (the one found there, should another build have published the
/// layer first).
pub fn save(
    cache: &Cache,
    kind: &str,
    key: &str,
    inputs: BTreeMap<String, String>,
    file: &str,
    facts: LayerFacts,
    make: impl FnOnce(&Path) -> Result<()>,
) -> Result<(PathBuf, LayerManifest)> {
    let tmp = cache.tmp_dir().join(format!(
        "layer-{kind}-{}-{}",
        &key[..12],
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let r = (|| {
        let path = tmp.join(file);
        make(&path).with_context(|| format!("saving the {kind} layer"))?;
        // The digest is taken from this file, which the rename below publishes as it is,
        // in this process: a copy could lay out its holes differently (see digest).
        let digest = digest::extent_digest(&path)?;
        let m = LayerManifest {
            kind: kind.into(),
            key: key.into(),
            inputs,
            packages: facts.packages,
            debs: facts.debs,
            file: file.into(),
            digest,
            extra: facts.extra,
        };
        let manifest = tmp.join(LAYER_MANIFEST);
        std::fs::write(&manifest, serde_json::to_vec_pretty(&m)?)
            .with_context(|| format!("writing {}", manifest.display()))?;
        let dir = cache.publish_dir(&tmp, kind, key)?;
        let m = read_manifest(&dir, kind, key)?;
        Ok((dir.join(&m.file), m))
    })();
    match r {
        Ok(saved) => Ok(saved),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Names one instance of a layer: its key plus its content digest. A layer rebuilt
/// from the same inputs (after `cache gc`, or damage) has the same key but, since apt
/// and ext4 are not byte-reproducible, different bytes and so a different digest;
/// layers derived from it (packed, configured) take this as their input so they never
/// combine with another instance's bytes.
pub fn instance(key: &str, m: &LayerManifest) -> String {
    format!("{key} {}", m.digest)
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
        let first = instance(&k, &save_one(1).1);
        assert_eq!(
            first,
            instance(&k, &lookup(&cache, PROVISIONED, &k).unwrap().unwrap().1)
        );
        cache.remove_layer(PROVISIONED, &k).unwrap();
        let second = instance(&k, &save_one(2).1);
        assert_ne!(
            first, second,
            "layers derived from the first must not match the second"
        );
    }

    #[test]
    fn package_records_are_kept_and_an_older_manifest_is_a_miss() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let inputs = m(&[("recipe", RECIPE), ("base", "x")]);
        let k = key(&inputs);
        let pkg = Package {
            name: "libssl3".into(),
            version: "3.0.11-1".into(),
            architecture: "amd64".into(),
            source: Some(crate::stage::provision::SourcePackage {
                name: "openssl".into(),
                version: "3.0.11-1".into(),
            }),
            license: Some("Apache-2.0".into()),
        };
        let facts = LayerFacts {
            packages: vec![pkg.clone()],
            ..Default::default()
        };
        let (_, saved) = save(&cache, PROVISIONED, &k, inputs, "disk.raw", facts, |p| {
            Ok(std::fs::write(p, [1u8; 4096])?)
        })
        .unwrap();
        assert_eq!(saved.packages, std::slice::from_ref(&pkg));
        let (_, found) = lookup(&cache, PROVISIONED, &k).unwrap().unwrap();
        assert_eq!(found.packages, [pkg]);
        // Name/version pairs, as provision-2 wrote them: not a crash, a miss (rebuilt).
        let manifest = cache
            .layer_get(PROVISIONED, &k)
            .unwrap()
            .join(LAYER_MANIFEST);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        v["packages"] = serde_json::json!([["libssl3:amd64", "3.0.11-1"]]);
        std::fs::write(&manifest, serde_json::to_vec(&v).unwrap()).unwrap();
        let mut said = String::new();
        let hit = lookup_reporting(&cache, PROVISIONED, &k, |msg| said = msg.into()).unwrap();
        assert!(hit.is_none(), "{said}");
        assert!(cache.layer_get(PROVISIONED, &k).is_none());
    }

    #[test]
    fn a_damaged_layer_is_detected_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let raw = d.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let inputs = m(&[("base", "x")]);
        let k = key(&inputs);
        let (disk, _) = save(
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

/// Each layer kind, damaged without a change of size or mtime, must be refused.
#[cfg(test)]
mod damage_tests {
    use super::*;
    use crate::base::digest::damage::flip_byte_keeping_mtime;
    use std::os::unix::fs::FileExt;

    fn cache() -> (tempfile::TempDir, Cache) {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().join("cache"))).unwrap();
        (d, cache)
    }

    /// Saves a layer of `kind` whose file `make` writes; returns its key and path.
    fn saved(
        cache: &Cache,
        kind: &str,
        file: &str,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> (String, PathBuf) {
        let inputs: BTreeMap<String, String> = [("kind".to_string(), kind.to_string())].into();
        let k = key(&inputs);
        let (p, _) = save(cache, kind, &k, inputs, file, Default::default(), make).unwrap();
        (k, p)
    }

    /// Flips a byte of a cached layer and checks that lookup reports it (the kind and
    /// both digests), drops it, and that the caller's rebuild (a new save) is then used.
    fn flipped_is_dropped(cache: &Cache, kind: &str, k: &str, file: &Path, offset: u64) {
        let (found, m) = lookup(cache, kind, k)
            .unwrap()
            .expect("intact layer is a hit");
        assert_eq!(found, file);
        let recorded = m.digest.clone();
        assert!(recorded.starts_with(digest::EXTENT_DIGEST), "{recorded}");
        let rebuild = tempfile::NamedTempFile::new().unwrap();
        copy_sparse(file, rebuild.path()).unwrap();
        flip_byte_keeping_mtime(file, offset);
        let now = digest::extent_digest(file).unwrap();
        let mut said = String::new();
        let hit = lookup_reporting(cache, kind, k, |msg| said = msg.to_string()).unwrap();
        assert!(
            hit.is_none(),
            "a {kind} layer with a flipped byte must not be used"
        );
        assert!(cache.layer_get(kind, k).is_none(), "and it is dropped");
        let named = format!("cached {kind} layer {}", &k[..12]);
        for part in [&named, "damaged", &recorded, &now, "rebuilding"] {
            assert!(said.contains(part), "{part:?} not in {said:?}");
        }
        // The caller's miss path makes the layer again; that copy is a hit.
        let (again, m2) = save(cache, kind, k, m.inputs, &m.file, Default::default(), |p| {
            copy_sparse(rebuild.path(), p)
        })
        .unwrap();
        assert_eq!(lookup(cache, kind, k).unwrap().unwrap().0, again);
        assert_eq!(m2.digest, digest::extent_digest(&again).unwrap());
    }

    #[test]
    fn a_flipped_byte_in_the_provisioned_disk_is_caught() {
        let (d, cache) = cache();
        let src = d.path().join("disk.raw");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(256 << 20).unwrap();
        f.write_all_at(&[0x5a; 1 << 20], 0).unwrap();
        f.write_all_at(b"bookworm/sid\n", 200 << 20).unwrap();
        drop(f);
        let (k, disk) = saved(&cache, PROVISIONED, "disk.raw", |p| copy_sparse(&src, p));
        flipped_is_dropped(&cache, PROVISIONED, &k, &disk, (200 << 20) + 2);
    }

    #[test]
    fn a_flipped_byte_in_the_packed_qcow2_is_caught() {
        let (d, cache) = cache();
        let src = d.path().join("disk.raw");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[0x5a; 256 << 10], 4 << 20).unwrap();
        drop(f);
        let (k, packed) = saved(&cache, PACKED, "disk.qcow2", |p| {
            Cmd::new("qemu-img")
                .args(["convert", "-O", "qcow2"])
                .arg(&src)
                .arg(p)
                .run()
        });
        // A byte of guest data, not of qcow2's metadata: `qemu-img check` cannot see it.
        let bytes = std::fs::read(&packed).unwrap();
        let at = bytes
            .windows(4096)
            .position(|w| w.iter().all(|&b| b == 0x5a));
        flipped_is_dropped(&cache, PACKED, &k, &packed, at.unwrap() as u64 + 7);
    }

    #[test]
    fn a_flipped_byte_in_the_configured_delta_is_caught() {
        let (_d, cache) = cache();
        let (k, data) = saved(&cache, CONFIGURED, "delta.bin", |p| {
            Ok(std::fs::write(p, vec![0x42; 3 << 16])?)
        });
        flipped_is_dropped(&cache, CONFIGURED, &k, &data, 1 << 16);
    }

    #[test]
    fn a_layer_cached_without_a_digest_is_rebuilt() {
        let (_d, cache) = cache();
        let (k, data) = saved(&cache, CONFIGURED, "delta.bin", |p| {
            Ok(std::fs::write(p, b"delta")?)
        });
        let manifest = data.with_file_name(LAYER_MANIFEST);
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let o = m.as_object_mut().unwrap();
        o.remove("digest");
        o.insert("disk_size".into(), 5.into());
        o.insert("disk_mtime_ns".into(), 1.into());
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        let mut said = String::new();
        let hit = lookup_reporting(&cache, CONFIGURED, &k, |msg| said = msg.into()).unwrap();
        assert!(
            hit.is_none() && said.contains("no content digest"),
            "{said}"
        );
    }
}
