//! The build manifest (`manifest.json`) and `SHA256SUMS`.
//!
//! One output directory can hold several images (all roles of a cluster), so the
//! manifest maps each image name to its build record, and SHA256SUMS lists every output
//! in the directory. Both are rewritten whole and published by rename.
//!
//! The manifest names no file of the build host by its absolute path ([`HostNames`]):
//! profile files are named relative to the project root or as `builtin:PATH`, and a local
//! base image outside the project by its file name (its SHA256 is beside it).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

use super::{BuildFacts, Output};
use crate::context::BuildContext;
use crate::run::Cmd;
use crate::seed::{default_route_style, NetRenderer, RouteStyle};
use crate::stage::provision::Package;
use crate::sums::{self, Sums};

/// The git commit mesobake was built from (`build.rs`), or `unknown` when it was not
/// built from a git checkout.
pub const MESOBAKE_REVISION: &str = env!("MESOBAKE_REVISION");

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
    /// Who built it, when, and from what (absent in manifests older mesobakes wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRecord>,
    /// Init system and Mesos package layout found in the image.
    pub layout: serde_json::Value,
    /// Every installed package, sorted by name and architecture. Older manifests kept a
    /// map of name (with `:ARCH` for multi-arch packages) to version; it reads as records
    /// with an empty architecture where the name had none.
    #[serde(deserialize_with = "packages_any_form")]
    pub packages: Vec<Package>,
    /// Local .deb files offered to apt (by file name), with their SHA256.
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
    /// Each file ([`HostNames::name`]) and its SHA256, in merge order.
    pub files: Vec<(String, String)>,
}

/// The base part of a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseRecord {
    /// What was asked for: a base name, a URL, or a local image named as
    /// [`HostNames::name`] names files.
    pub spec: String,
    /// The base image's SHA256.
    pub sha256: String,
    /// Distribution family.
    pub family: Option<String>,
    /// Release codename.
    pub codename: Option<String>,
}

/// Who built an image, when, and from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// [`input_fingerprint`]: equal for two builds from the same pinned inputs.
    pub input_fingerprint: String,
    /// The mesobake version that built it.
    pub mesobake_version: String,
    /// The git commit that mesobake was built from, or `unknown`.
    pub mesobake_revision: String,
    /// When, as RFC 3339 UTC: `SOURCE_DATE_EPOCH` when set, else the clock.
    pub time: String,
    /// What `qemu-img --version` says (`7.2.22 (Debian 1:7.2+dfsg-7+deb12u12)`).
    pub qemu_img: String,
}

impl BuildRecord {
    /// The record for this build: fingerprint, mesobake, time, qemu-img.
    pub fn new(ctx: &BuildContext, facts: &BuildFacts) -> Result<BuildRecord> {
        Ok(BuildRecord {
            input_fingerprint: input_fingerprint(ctx, facts),
            mesobake_version: env!("CARGO_PKG_VERSION").into(),
            mesobake_revision: MESOBAKE_REVISION.into(),
            time: crate::utc::rfc3339(build_time()),
            qemu_img: qemu_img_version()?,
        })
    }
}

/// The build's time in seconds since the epoch: `SOURCE_DATE_EPOCH` when it is set (and
/// a number), so that a reproducible build records the same time twice; else now.
pub fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        })
}

/// The version `qemu-img --version` prints on its first line.
fn qemu_img_version() -> Result<String> {
    let out = Cmd::new("qemu-img")
        .arg("--version")
        .read()
        .context("asking qemu-img for its version")?;
    let first = out.lines().next().unwrap_or_default().trim();
    Ok(first
        .strip_prefix("qemu-img version ")
        .unwrap_or(first)
        .to_string())
}

/// Reads `packages` in either form (see [`Entry::packages`]).
fn packages_any_form<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Package>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Records(Vec<Package>),
        Versions(BTreeMap<String, String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::Records(v) => v,
        Form::Versions(m) => m
            .into_iter()
            .map(|(key, version)| {
                let (name, arch) = key.split_once(':').unwrap_or((&key, ""));
                Package {
                    name: name.into(),
                    version,
                    architecture: arch.into(),
                    source: None,
                    license: None,
                }
            })
            .collect(),
    })
}

/// Names files of the build host without their absolute paths: a file of the built-in
/// tree as `builtin:PATH` (never the cache directory it is materialised in), a file
/// under the project root by its path relative to it, anything else as
/// `external:FILENAME`.
///
/// The project root is the directory that holds the main profile's `profiles/`
/// directory (the checkout, or what `mesobake init` made), or the main profile's own
/// directory when it is not in one; for a built-in main profile, the current directory.
#[derive(Debug, Clone)]
pub struct HostNames {
    /// The project root, canonical.
    project: PathBuf,
    /// Directories that hold materialised built-in trees (`<cache>/builtin`).
    builtin_parents: Vec<PathBuf>,
}

impl HostNames {
    /// The names for a build of `profile` with this cache.
    pub fn new(profile: &Path, cache_root: &Path) -> HostNames {
        let mut names = HostNames {
            project: PathBuf::new(),
            builtin_parents: vec![canonical(&cache_root.join("builtin"))],
        };
        let main = canonical(profile);
        names.project = if names.builtin_path(&main).is_some() {
            canonical(Path::new("."))
        } else {
            main.ancestors()
                .skip(1)
                .find(|a| a.file_name().is_some_and(|n| n == "profiles"))
                .and_then(Path::parent)
                .or_else(|| main.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        names
    }

    /// The names for this build.
    pub fn for_build(ctx: &BuildContext) -> HostNames {
        HostNames::new(&ctx.req.profile.path, ctx.cache.root())
    }

    /// The project root the names are relative to.
    pub fn project(&self) -> &Path {
        &self.project
    }

    /// A path inside a materialised built-in tree, relative to the tree's root: this
    /// process's (wherever it is, a temporary directory when the cache is unusable) or
    /// any under the cache.
    fn builtin_path(&self, p: &Path) -> Option<PathBuf> {
        if crate::builtin::contains(p) {
            if let Some(inner) = crate::builtin::root()
                .ok()
                .and_then(|r| p.strip_prefix(r).ok())
            {
                return Some(inner.to_path_buf());
            }
        }
        self.builtin_parents.iter().find_map(|parent| {
            let rest = p.strip_prefix(parent).ok()?;
            // <parent>/<digest>/PATH
            let mut c = rest.components();
            c.next()?;
            let inner = c.as_path();
            (!inner.as_os_str().is_empty()).then(|| inner.to_path_buf())
        })
    }

    /// How the manifest names `p`.
    pub fn name(&self, p: &Path) -> String {
        let abs = canonical(p);
        if let Some(inner) = self.builtin_path(&abs) {
            return format!("builtin:{}", inner.display());
        }
        match abs.strip_prefix(&self.project) {
            Ok(rel) if !rel.as_os_str().is_empty() && !self.project.as_os_str().is_empty() => {
                rel.display().to_string()
            }
            _ => format!(
                "external:{}",
                abs.file_name().unwrap_or_default().to_string_lossy()
            ),
        }
    }

    /// How the manifest names a base spec: names and http(s) URLs as they are, a local
    /// image (or `file://` URL) as [`HostNames::name`] does.
    pub fn base_spec(&self, spec: &str) -> String {
        if crate::base::named(spec).is_some()
            || spec.starts_with("http://")
            || spec.starts_with("https://")
        {
            return spec.to_string();
        }
        self.name(Path::new(spec.strip_prefix("file://").unwrap_or(spec)))
    }
}

/// `p` made absolute and, where it exists, with its links resolved; `..` removed
/// lexically otherwise.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Entry {
    /// The record for a finished build.
    pub fn new(
        ctx: &BuildContext,
        facts: &BuildFacts,
        build: &BuildRecord,
        outputs: &[Output],
    ) -> Entry {
        let p = &ctx.req.profile;
        let names = HostNames::for_build(ctx);
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
                    .map(|(f, d)| (names.name(f), d.clone()))
                    .collect(),
            },
            base: BaseRecord {
                spec: names.base_spec(&ctx.base.spec),
                sha256: ctx.base.sha256.clone(),
                family: ctx.base.family.map(|f| format!("{f:?}").to_lowercase()),
                codename: ctx.base.codename.clone(),
            },
            build: Some(build.clone()),
            layout: serde_json::to_value(&facts.layout).unwrap_or_default(),
            packages: facts.packages.clone(),
            local_debs: facts.debs.iter().cloned().collect(),
            outputs: outputs.to_vec(),
        }
    }
}

/// A fingerprint of everything that went into the disk: the profile files (by their
/// [`HostNames`], so the checkout's place does not matter), the base digest, every
/// installed package's version and the local .deb digests. Output headers that need an
/// id (VMDK CID, VDI and VHD UUIDs) and the SBOM's namespace derive it from this, so two
/// builds from the same pinned inputs agree without hashing the multi-GiB disk itself.
pub fn input_fingerprint(ctx: &BuildContext, facts: &BuildFacts) -> String {
    use sha2::Digest;
    let names = HostNames::for_build(ctx);
    let mut h = sha2::Sha256::new();
    let mut put = |k: &str, v: &str| {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([b'\n']);
    };
    put("name", &ctx.req.profile.name);
    for (f, d) in &ctx.req.profile.sources {
        put(&names.name(f), d);
    }
    put("base", &ctx.base.sha256);
    let pkgs: BTreeMap<_, _> = facts
        .packages
        .iter()
        .map(|p| (format!("{}:{}", p.name, p.architecture), &p.version))
        .collect();
    for (p, v) in pkgs {
        put(&p, v);
    }
    let debs: BTreeMap<_, _> = facts.debs.iter().cloned().collect();
    for (p, d) in debs {
        put(&p, &d);
    }
    hex::encode(h.finalize())
}

impl Entry {
    /// The version of the installed package `name` (of any architecture).
    pub fn package_version(&self, name: &str) -> Option<&str> {
        self.packages
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.version.as_str())
    }

    /// The base's cloud-init version as installed at build time (the `cloud-init`
    /// package record; None when the image has none). Seed generation reads it to write
    /// network-config the way this cloud-init renders it ([`Entry::route_style`]).
    pub fn cloud_init_version(&self) -> Option<&str> {
        self.package_version("cloud-init")
    }

    /// What cloud-init renders network-config with on this image: netplan when
    /// `netplan.io` is installed (cloud-init tries it first), else ifupdown's ENI.
    pub fn net_renderer(&self) -> NetRenderer {
        if self.package_version("netplan.io").is_some() {
            NetRenderer::Netplan
        } else {
            NetRenderer::Eni
        }
    }

    /// How seeds for this image write the default gateway ([`default_route_style`]).
    pub fn route_style(&self) -> RouteStyle {
        default_route_style(self.cloud_init_version(), self.net_renderer())
    }
}

impl Manifest {
    /// The record of a role's image as `lab up` boots it: the image whose outputs list
    /// `<role>.qcow2`, else the image named `role`.
    pub fn role_image(&self, role: &str) -> Option<&Entry> {
        self.find_output(&format!("{role}.qcow2"))
            .map(|(_, e)| e)
            .or_else(|| self.images.get(role))
    }

    /// Reads the manifest in `dir`, or an empty one, to be rewritten by this mesobake.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join("manifest.json");
        let mut m = if p.exists() {
            Manifest::read(&p)?
        } else {
            Manifest::default()
        };
        m.mesobake = env!("CARGO_PKG_VERSION").to_string();
        Ok(m)
    }

    /// Reads a manifest file as it was written.
    pub fn read(path: &Path) -> Result<Manifest> {
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))
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

    #[test]
    fn host_files_are_named_without_their_absolute_paths() {
        let d = tempfile::tempdir().unwrap();
        let proj = d.path().join("proj");
        let cache = d.path().join("cache");
        let builtin = cache.join("builtin/0123456789abcdef/profiles/include");
        std::fs::create_dir_all(proj.join("profiles/include")).unwrap();
        std::fs::create_dir_all(&builtin).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        for f in [
            proj.join("profiles/master.toml"),
            proj.join("profiles/include/common.toml"),
            proj.join("base.qcow2"),
            builtin.join("common.toml"),
            d.path().join("elsewhere/extra.toml"),
        ] {
            std::fs::write(&f, "").unwrap();
        }
        let names = HostNames::new(&proj.join("profiles/master.toml"), &cache);
        assert_eq!(names.project(), proj.canonicalize().unwrap());
        let name = |p: PathBuf| names.name(&p);
        assert_eq!(
            name(proj.join("profiles/master.toml")),
            "profiles/master.toml"
        );
        assert_eq!(
            name(proj.join("profiles/include/../include/common.toml")),
            "profiles/include/common.toml"
        );
        assert_eq!(
            name(builtin.join("common.toml")),
            "builtin:profiles/include/common.toml"
        );
        assert_eq!(
            name(d.path().join("elsewhere/extra.toml")),
            "external:extra.toml"
        );
        let base = proj.join("base.qcow2");
        assert_eq!(names.base_spec(&base.to_string_lossy()), "base.qcow2");
        assert_eq!(
            names.base_spec(&format!("file://{}", base.display())),
            "base.qcow2"
        );
        assert_eq!(names.base_spec("/srv/images/x.img"), "external:x.img");
        assert_eq!(names.base_spec("debian-12"), "debian-12");
        let url = "https://example.invalid/a.img";
        assert_eq!(names.base_spec(url), url);
        // A main profile that is not in a profiles/ directory is its own project.
        let lone = HostNames::new(&d.path().join("elsewhere/extra.toml"), &cache);
        assert_eq!(
            lone.name(&d.path().join("elsewhere/extra.toml")),
            "extra.toml"
        );
        // A built-in main profile: its files are builtin:, the rest relative to `.`.
        let b = HostNames::new(&builtin.join("common.toml"), &cache);
        assert_eq!(
            b.name(&builtin.join("common.toml")),
            "builtin:profiles/include/common.toml"
        );
    }

    #[test]
    fn older_manifests_read_with_package_maps() {
        let old = serde_json::json!({"mesobake": "0.1.0", "images": {"node": {
            "profile": {"name": "node", "services": [], "sha256": "", "files": []},
            "base": {"spec": "debian-12", "sha256": "", "family": null, "codename": null},
            "layout": null,
            "packages": {"libc6:amd64": "2.36-9", "zookeeper": "3.8.0-11"},
            "local_debs": {}, "outputs": []}}});
        let m: Manifest = serde_json::from_value(old).unwrap();
        let e = &m.images["node"];
        assert!(e.build.is_none());
        assert_eq!(e.packages.len(), 2);
        assert_eq!(
            (
                e.packages[0].name.as_str(),
                e.packages[0].architecture.as_str()
            ),
            ("libc6", "amd64")
        );
        assert_eq!(
            (
                e.packages[1].name.as_str(),
                e.packages[1].architecture.as_str()
            ),
            ("zookeeper", "")
        );
    }

    #[test]
    fn a_roles_image_tells_its_cloud_init_and_route_style() {
        let image = |pkgs: serde_json::Value| {
            serde_json::json!({
                "profile": {"name": "node", "services": [], "sha256": "", "files": []},
                "base": {"spec": "x", "sha256": "", "family": null, "codename": null},
                "layout": null, "packages": pkgs, "local_debs": {}, "outputs": []})
        };
        let m: Manifest = serde_json::from_value(serde_json::json!({"mesobake": "0.1.0",
            "images": {
                "master": image(serde_json::json!({"cloud-init": "22.4.2-1+deb12u4"})),
                "slave-only": image(serde_json::json!([
                    {"name": "cloud-init", "version": "24.4.1-0ubuntu0~24.04.1",
                     "architecture": "all"},
                    {"name": "netplan.io", "version": "1.1.2-2~ubuntu24.04.1",
                     "architecture": "amd64"}])),
                "bare": image(serde_json::json!({}))}}))
        .unwrap();
        let master = m.role_image("master").unwrap();
        assert_eq!(master.cloud_init_version(), Some("22.4.2-1+deb12u4"));
        assert_eq!(master.net_renderer(), NetRenderer::Eni);
        assert_eq!(master.route_style(), RouteStyle::Gateway4);
        let agent = m.role_image("slave-only").unwrap();
        assert_eq!(agent.net_renderer(), NetRenderer::Netplan);
        assert_eq!(agent.route_style(), RouteStyle::Routes);
        let bare = m.role_image("bare").unwrap();
        assert_eq!(bare.cloud_init_version(), None);
        assert_eq!(bare.route_style(), RouteStyle::Gateway4);
        assert!(m.role_image("other").is_none());
    }

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
            compression: None,
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
