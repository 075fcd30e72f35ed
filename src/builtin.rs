//! The shipped profiles, includes, overlays and keys, built into the binary by `build.rs`
//! with their modes. Profiles refer to each other and to overlays and keys by relative
//! paths, so the tree is materialised once into the cache, at
//! `<cache>/builtin/<digest>/` (content-addressed, checked on every use), and loaded
//! from there like any other profiles directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

mod tree {
    include!(concat!(env!("OUT_DIR"), "/builtin_tree.rs"));
}

/// One entry of the built-in tree.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its path, relative to the tree's root (`profiles/master.toml`).
    pub path: &'static str,
    /// Its permission bits (0755 for directories and executables, else 0644).
    pub mode: u32,
    /// Its contents; None for a directory.
    pub contents: Option<&'static [u8]>,
}

/// Every entry, parents before children.
pub fn entries() -> impl Iterator<Item = Entry> {
    tree::TREE.iter().map(|&(path, mode, contents)| Entry {
        path,
        mode,
        contents,
    })
}

/// The contents of the built-in file at `path` (relative to the tree's root).
pub fn file(path: &str) -> Option<&'static [u8]> {
    entries().find(|e| e.path == path).and_then(|e| e.contents)
}

/// A digest of the whole tree: paths, modes and contents.
pub fn digest() -> String {
    let mut h = Sha256::new();
    for e in entries() {
        h.update(e.path.as_bytes());
        h.update(b"\0");
        h.update(e.mode.to_be_bytes());
        match e.contents {
            None => h.update(b"d"),
            Some(c) => {
                h.update(b"f");
                h.update((c.len() as u64).to_be_bytes());
                h.update(c);
            }
        }
    }
    hex::encode(h.finalize())
}

/// Writes the entries for which `keep` is true under `dest`, which must exist. Files are
/// created new (`create_new`): an existing file is an error unless `overwrite`.
pub fn write_tree(
    dest: &Path,
    keep: impl Fn(&str) -> bool,
    overwrite: bool,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for e in entries().filter(|e| keep(e.path)) {
        written.extend(write_entry(dest, e.path, e.mode, e.contents, overwrite)?);
    }
    Ok(written)
}

/// Writes one entry under `dest`: a directory (made unless it is one already), or a file
/// with `mode`, created new (`create_new`) unless `overwrite`. Returns the file written.
pub fn write_entry(
    dest: &Path,
    rel: &str,
    mode: u32,
    contents: Option<&[u8]>,
    overwrite: bool,
) -> Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let p = dest.join(rel);
    let Some(c) = contents else {
        if !p.is_dir() {
            std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        return Ok(None);
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(!overwrite)
        .create(overwrite)
        .truncate(overwrite)
        .mode(mode)
        .open(&p)
        .with_context(|| format!("writing {}", p.display()))?;
    f.write_all(c)
        .with_context(|| format!("writing {}", p.display()))?;
    // The mode again: `mode()` at creation is masked by the umask.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", p.display()))?;
    Ok(Some(p))
}

/// Whether `dir` holds exactly what the tree holds (every entry with its mode and
/// contents; extra files are refused too, so an edited copy is never used).
fn matches(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mut n = 0usize;
    for e in entries() {
        let p = dir.join(e.path);
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            return false;
        };
        if md.permissions().mode() & 0o7777 != e.mode {
            return false;
        }
        match e.contents {
            None if !md.is_dir() => return false,
            Some(c) if !md.is_file() || std::fs::read(&p).ok().as_deref() != Some(c) => {
                return false
            }
            _ => {}
        }
        n += 1;
    }
    count(dir) == Some(n)
}

/// The number of entries under `dir` (not counting `dir`), without following links.
fn count(dir: &Path) -> Option<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).ok()? {
        let e = e.ok()?;
        n += 1;
        if e.file_type().ok()?.is_dir() {
            n += count(&e.path())?;
        }
    }
    Some(n)
}

/// Materialises the tree at `parent/<digest>` (if it is not there already, or differs)
/// and returns that directory.
pub fn materialise_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(&digest()[..16]);
    if matches(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    if dir.exists() {
        // Not what this binary ships (edited, or half-removed): replace it. Another
        // mesobake may be removing it at the same time.
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", dir.display()));
            }
            _ => {}
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    write_tree(tmp.path(), |_| true, false)?;
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
        }
        // Another mesobake put it there first.
        Err(_) if matches(&dir) => {}
        Err(e) => {
            return Err(e).with_context(|| format!("creating {}", dir.display()));
        }
    }
    if !matches(&dir) {
        bail!("{}: does not hold the built-in profiles", dir.display());
    }
    Ok(dir)
}

/// The materialised tree of this process: under the cache (`<cache>/builtin/`), or, when
/// there is no usable cache directory, in a private temporary directory removed at exit.
pub fn root() -> Result<&'static Path> {
    static TMP: OnceLock<tempfile::TempDir> = OnceLock::new();
    if let Some(r) = ROOT.get() {
        return Ok(r);
    }
    let in_cache = crate::base::cache::Cache::open(None)
        .and_then(|c| materialise_in(&c.root().join("builtin")));
    let dir = match in_cache {
        Ok(d) => d,
        Err(_) => {
            let t = tempfile::Builder::new()
                .prefix("mesobake-builtin-")
                .tempdir()
                .context("creating a directory for the built-in profiles")?;
            let d = materialise_in(t.path())?;
            let _ = TMP.set(t);
            d
        }
    };
    // Canonical, as the profile loader makes every path it resolves.
    let dir = dir.canonicalize().unwrap_or(dir);
    Ok(ROOT.get_or_init(|| dir))
}

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Whether `p` lies inside this process's materialised tree (false before [`root`]).
pub fn contains(p: &Path) -> bool {
    ROOT.get().is_some_and(|r| p.starts_with(r))
}

/// The built-in profiles directory (materialising the tree).
pub fn profiles_dir() -> Result<PathBuf> {
    Ok(root()?.join("profiles"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_holds_the_roles_includes_and_an_executable_overlay_file() {
        for p in [
            "profiles/master.toml",
            "profiles/master-slave.toml",
            "profiles/slave-only.toml",
            "profiles/include/common.toml",
            "profiles/include/offline-standins.toml",
        ] {
            assert!(file(p).is_some(), "{p} is not built in");
        }
        let status = entries()
            .find(|e| e.path == "overlays/common/usr/local/bin/mesobake-status")
            .unwrap();
        assert_eq!(status.mode, 0o755);
        let motd = entries()
            .find(|e| e.path == "overlays/common/etc/motd")
            .unwrap();
        assert_eq!(motd.mode, 0o644);
    }

    #[test]
    fn materialise_is_checked_and_repaired() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = materialise_in(t.path()).unwrap();
        let st = d.join("overlays/common/usr/local/bin/mesobake-status");
        assert_eq!(
            std::fs::metadata(&st).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Same place the second time.
        assert_eq!(materialise_in(t.path()).unwrap(), d);
        // An edited copy is replaced, an extra file too.
        std::fs::write(d.join("profiles/master.toml"), "x").unwrap();
        std::fs::write(d.join("profiles/extra.toml"), "x").unwrap();
        assert_eq!(materialise_in(t.path()).unwrap(), d);
        assert!(!d.join("profiles/extra.toml").exists());
        assert_eq!(
            std::fs::read(d.join("profiles/master.toml")).unwrap(),
            file("profiles/master.toml").unwrap()
        );
    }
}
