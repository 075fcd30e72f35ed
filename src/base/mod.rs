//! Bases: what an image is built from.
//!
//! A base is a named cloud image (downloaded, verified and cached by digest), a local
//! image path, an http(s) URL with its SHA256 or SHA256SUMS, or a bootstrap from a
//! distribution archive with mmdebstrap (`debian-12`), which yields the same kind of disk
//! as a cloud image.

pub mod bootstrap;
pub mod cache;
pub mod digest;
pub mod fetch;
pub mod gc;
pub mod proxy;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use cache::Cache;
use fetch::Expected;

/// The distribution family of a base, which picks apt sources and the init system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Ubuntu.
    Ubuntu,
    /// Debian.
    Debian,
}

/// How a named base is obtained.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A cloud image and the SHA256SUMS file it is checked against.
    Download {
        /// The image URL.
        url: &'static str,
        /// The SHA256SUMS URL listing it.
        sums: &'static str,
    },
    /// Bootstrapped locally from the distribution's archive.
    Bootstrap,
}

/// A base known by name.
#[derive(Debug, Clone, Copy)]
pub struct NamedBase {
    /// The name users type.
    pub name: &'static str,
    /// Distribution family.
    pub family: Family,
    /// Release codename (also the apt suite).
    pub codename: &'static str,
    /// Where it comes from.
    pub source: Source,
    /// The disk layout a bootstrapped base copies (`None`: Debian's cloud-image layout).
    pub layout: Option<&'static bootstrap::Layout>,
}

/// Every named base. Ubuntu's cloud images are the upstream ones; `debian-12` is
/// bootstrapped with mmdebstrap because it is the base these build machines can reach,
/// and `debian-12-ubuntu-24.04-layout` is the same system on Ubuntu 24.04's disk layout.
pub const NAMED: &[NamedBase] = &[
    NamedBase {
        name: "ubuntu-24.04",
        family: Family::Ubuntu,
        codename: "noble",
        source: Source::Download {
            url: "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img",
            sums: "https://cloud-images.ubuntu.com/releases/noble/release/SHA256SUMS",
        },
        layout: None,
    },
    NamedBase {
        name: "ubuntu-22.04",
        family: Family::Ubuntu,
        codename: "jammy",
        source: Source::Download {
            url: "https://cloud-images.ubuntu.com/releases/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img",
            sums: "https://cloud-images.ubuntu.com/releases/jammy/release/SHA256SUMS",
        },
        layout: None,
    },
    NamedBase {
        name: "ubuntu-20.04",
        family: Family::Ubuntu,
        codename: "focal",
        source: Source::Download {
            url: "https://cloud-images.ubuntu.com/releases/focal/release/ubuntu-20.04-server-cloudimg-amd64.img",
            sums: "https://cloud-images.ubuntu.com/releases/focal/release/SHA256SUMS",
        },
        layout: None,
    },
    NamedBase {
        name: "ubuntu-16.04",
        family: Family::Ubuntu,
        codename: "xenial",
        source: Source::Download {
            url: "https://cloud-images.ubuntu.com/releases/xenial/release/ubuntu-16.04-server-cloudimg-amd64-disk1.img",
            sums: "https://cloud-images.ubuntu.com/releases/xenial/release/SHA256SUMS",
        },
        layout: None,
    },
    NamedBase {
        name: "ubuntu-14.04",
        family: Family::Ubuntu,
        codename: "trusty",
        source: Source::Download {
            url: "https://cloud-images.ubuntu.com/releases/trusty/release/ubuntu-14.04-server-cloudimg-amd64-disk1.img",
            sums: "https://cloud-images.ubuntu.com/releases/trusty/release/SHA256SUMS",
        },
        layout: None,
    },
    NamedBase { name: "debian-12", family: Family::Debian, codename: "bookworm", source: Source::Bootstrap, layout: None },
    // For tests: a Debian 12 system on the Ubuntu 24.04 cloud image's disk layout (root
    // on 1 last on disk, BIOS boot 14, ESP 15 "UEFI", ext4 /boot 16 "BOOT", fstab by
    // LABEL), so builds meet that layout here, where Ubuntu's images can't be fetched.
    NamedBase {
        name: "debian-12-ubuntu-24.04-layout",
        family: Family::Debian,
        codename: "bookworm",
        source: Source::Bootstrap,
        layout: Some(&bootstrap::UBUNTU_2404),
    },
];

/// A base image ready to build from: a local file and what is known about it.
#[derive(Debug, Clone, Serialize)]
pub struct BaseImage {
    /// What the user asked for (name, path or URL).
    pub spec: String,
    /// The image file (qcow2 or raw).
    pub path: PathBuf,
    /// The SHA256 of the image file.
    pub sha256: String,
    /// Distribution family, when known.
    pub family: Option<Family>,
    /// Release codename, when known.
    pub codename: Option<String>,
}

/// Looks up a named base.
pub fn named(name: &str) -> Option<&'static NamedBase> {
    NAMED.iter().find(|b| b.name == name)
}

/// Whether a spec is a URL.
fn is_url(spec: &str) -> bool {
    spec.starts_with("http://") || spec.starts_with("https://") || spec.starts_with("file://")
}

/// Options that shape how a base is obtained.
#[derive(Debug, Clone, Default)]
pub struct BaseOptions {
    /// The SHA256 of a URL base.
    pub sha256: Option<String>,
    /// The SHA256SUMS URL of a URL base.
    pub sha256sums: Option<String>,
    /// An archive mirror for bootstrapped bases (the distribution's default when unset).
    pub mirror: Option<String>,
}

/// Checks a base spec without fetching anything, for `--dry-run` and early errors.
pub fn check_spec(spec: &str, opts: &BaseOptions) -> Result<()> {
    if named(spec).is_some() {
        return Ok(());
    }
    if is_url(spec) {
        if opts.sha256.is_none() && opts.sha256sums.is_none() {
            bail!("base {spec} is a URL: give its checksum with [base] sha256 = \"...\" or sha256sums = \"URL\" so the download can be verified");
        }
        return Ok(());
    }
    let p = Path::new(spec);
    if p.exists() {
        return Ok(());
    }
    let names: Vec<_> = NAMED.iter().map(|b| b.name).collect();
    bail!(
        "base {spec:?} not found: it is neither a named base ({}) nor an existing image file nor an http(s) URL",
        names.join(", ")
    )
}

/// Obtains the base: from the cache, by download, by bootstrap, or in place.
pub fn obtain(spec: &str, opts: &BaseOptions, cache: &Cache) -> Result<BaseImage> {
    check_spec(spec, opts)?;
    if let Some(nb) = named(spec) {
        let (path, sha256) = match nb.source {
            Source::Download { url, sums } => {
                let path = fetch::fetch(cache, url, &Expected::SumsUrl(sums.to_string()))
                    .with_context(|| format!("getting base {}", nb.name))?;
                let sha256 = digest_of_cached(&path)?;
                (path, sha256)
            }
            // Verified against the SHA256 its layer records (see bootstrap::cached).
            Source::Bootstrap => bootstrap::bootstrap(cache, nb, opts.mirror.as_deref())
                .with_context(|| format!("bootstrapping base {}", nb.name))?,
        };
        return Ok(BaseImage {
            spec: spec.into(),
            path,
            sha256,
            family: Some(nb.family),
            codename: Some(nb.codename.into()),
        });
    }
    if is_url(spec) {
        let expected = match (&opts.sha256, &opts.sha256sums) {
            (Some(h), _) => Expected::Sha256(h.clone()),
            (None, Some(s)) => Expected::SumsUrl(s.clone()),
            (None, None) => unreachable!("check_spec requires one"),
        };
        let path =
            fetch::fetch(cache, spec, &expected).with_context(|| format!("getting base {spec}"))?;
        let sha256 = digest_of_cached(&path)?;
        return Ok(BaseImage {
            spec: spec.into(),
            path,
            sha256,
            family: None,
            codename: None,
        });
    }
    let path = PathBuf::from(spec);
    let sha256 =
        cache::sha256_file(&path).with_context(|| format!("hashing base {}", path.display()))?;
    if let Some(want) = &opts.sha256 {
        let want = cache::normalize_sha256(want)?;
        if want != sha256 {
            bail!(fetch::ChecksumMismatch {
                url: spec.into(),
                expected: want,
                actual: sha256
            });
        }
    }
    Ok(BaseImage {
        spec: spec.into(),
        path,
        sha256,
        family: None,
        codename: None,
    })
}

/// Cached blobs are named by their digest (verified by the cache on every get).
fn digest_of_cached(path: &Path) -> Result<String> {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(n) if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(n.to_string()),
        _ => cache::sha256_file(path),
    }
}

/// Fills in family and codename from the image's /etc/os-release when the base did not
/// come by name.
pub fn detect_release(base: &mut BaseImage, os_release: &str) {
    let get = |k: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    if base.family.is_none() {
        base.family = match get("ID").as_deref() {
            Some("ubuntu") => Some(Family::Ubuntu),
            Some("debian") => Some(Family::Debian),
            _ => None,
        };
    }
    if base.codename.is_none() {
        base.codename = get("VERSION_CODENAME");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_base_lists_the_names() {
        let e = check_spec("ubuntu-99.04", &BaseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ubuntu-24.04") && e.contains("debian-12") && e.contains("ubuntu-99.04"),
            "{e}"
        );
    }

    #[test]
    fn url_base_needs_a_checksum() {
        let e = check_spec("https://example.invalid/x.img", &BaseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256"), "{e}");
    }

    #[test]
    fn os_release_fills_family_and_codename() {
        let mut b = BaseImage {
            spec: "x".into(),
            path: "x".into(),
            sha256: String::new(),
            family: None,
            codename: None,
        };
        detect_release(&mut b, "ID=ubuntu\nVERSION_CODENAME=jammy\n");
        assert_eq!(b.family, Some(Family::Ubuntu));
        assert_eq!(b.codename.as_deref(), Some("jammy"));
    }
}
