//! The on-disk cache that base images and the build's layers (provisioned, packed,
//! configured: see [`crate::layers`]) live in.
//!
//! Layout under the cache root:
//!
//! ```text
//! CACHEDIR.TAG               so backup tools skip the cache
//! lock                       cache-wide lock (see [`Cache::lock`])
//! locks/<name>.lock          per-entry locks (see [`Cache::lock_entry`])
//! tmp/                       private work files; same filesystem, so publishing is a rename
//! blobs/sha256/<hex>         a blob, named by the SHA256 of its content, read-only
//! blobs/sha256/<hex>.json    its sidecar: size, content digest, source URL, insertion time
//! layers/<kind>/<key>/       a derived layer keyed by a hash of its inputs,
//!   manifest.json            with the manifest of those inputs beside the artifact
//! ```
//!
//! Entries appear only by rename from `tmp/`, so an interrupted build never leaves a
//! half-written entry behind. Reads never trust an entry: [`Cache::get`] re-hashes the
//! blob on every use against the content digest its sidecar records, and a damaged entry
//! is deleted, reported (with both digests) and treated as a miss, so it is fetched again.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::digest;
use crate::run::{check_interrupted, verbose};

/// Environment variable that overrides the default cache root.
pub const CACHE_DIR_ENV: &str = "MESOBAKE_CACHE_DIR";

/// The file inside every published layer directory that records the layer's inputs.
pub const LAYER_MANIFEST: &str = "manifest.json";

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by mesobake.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// How often a blocked lock attempt re-checks for Ctrl-C.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// A digest-keyed cache directory shared by every mesobake build on this machine.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    verify_full: bool,
}

/// What the sidecar `<hex>.json` beside a blob records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// The blob's SHA256, lowercase hex.
    pub sha256: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// The blob's extent digest ([`crate::base::digest`]), taken when its SHA256 had just
    /// been verified and checked on every use. Empty in sidecars older mesobakes wrote;
    /// such a blob is checked by its SHA256 and the digest filled in.
    #[serde(default)]
    pub digest: String,
    /// Where the blob came from (a URL), for humans and build manifests.
    pub source: String,
    /// When the blob entered the cache, in seconds since the epoch.
    pub inserted_unix: u64,
}

/// Why [`Cache::probe`] found no usable blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    /// The digest is not 64 hex characters, so it cannot name a blob.
    #[error("{0:?} is not a SHA256 digest")]
    InvalidDigest(String),
    /// No blob with that digest is stored.
    #[error("not in the cache")]
    Absent,
    /// The blob's size disagrees with its sidecar; it was removed.
    #[error("cached blob is {actual} bytes but was stored as {expected} bytes; removed it")]
    SizeMismatch {
        /// The size recorded at insertion.
        expected: u64,
        /// The size found now.
        actual: u64,
    },
    /// The blob's content no longer has its recorded digest; it was removed.
    #[error("cached base blob is damaged: its content digest is {actual}, not the {expected} recorded when it was cached; removed it")]
    DigestMismatch {
        /// The digest it was cached with (its name for a `sha256:` digest).
        expected: String,
        /// What the blob hashes to now.
        actual: String,
    },
    /// The blob could not be read or removed.
    #[error("cached blob could not be checked: {0}")]
    Unreadable(String),
}

/// An exclusive lock on a file in the cache, released when dropped.
///
/// The lock is an advisory `flock(2)`, which conflicts between separate opens of the file
/// even inside one process, so it serialises threads as well as processes.
#[derive(Debug)]
pub struct CacheLock {
    file: File,
    path: PathBuf,
}

impl CacheLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock anyway; unlocking first just makes the
        // release not depend on every duplicate of the descriptor being closed.
        let _ = self.file.unlock();
    }
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`, or else at `$MESOBAKE_CACHE_DIR`,
    /// or else at `mesobake/` under the user's cache directory (`$XDG_CACHE_HOME`,
    /// usually `~/.cache`).
    pub fn open(root: Option<PathBuf>) -> Result<Cache> {
        let root = match root {
            Some(r) => r,
            None => default_root()?,
        };
        for sub in ["blobs/sha256", "tmp", "layers", "locks"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating the cache directory {}", dir.display()))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Best effort: the tag only spares backups, the cache works without it.
            let _ = fs::write(&tag, CACHEDIR_TAG);
        }
        Ok(Cache {
            root,
            verify_full: false,
        })
    }

    /// Makes [`Cache::get`] also re-compute every blob's SHA256 (its name), not only the
    /// faster content digest it checks on every use anyway.
    pub fn with_full_verify(mut self, on: bool) -> Cache {
        self.verify_full = on;
        self
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (`blobs/sha256/<hex>`), whether or not it is
    /// there. `sha256_hex` must already be a validated digest; [`Cache::get`] and
    /// [`Cache::insert_file`] validate theirs.
    pub fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256_hex)
    }

    fn sidecar_path(&self, sha256_hex: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(format!("{sha256_hex}.json"))
    }

    /// The private work directory. Files created here are on the cache's filesystem, so
    /// [`Cache::insert_file`] and [`Cache::publish_dir`] can publish them by rename.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh directory under [`Cache::tmp_dir`] that is removed on drop unless it is
    /// published first.
    pub fn new_tmp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_dir())
            .with_context(|| format!("creating a work directory in {}", self.tmp_dir().display()))
    }

    /// Returns the blob with this digest if it is present and intact.
    ///
    /// The blob is checked against its sidecar: a size change means damage, and so does
    /// content whose digest differs from the recorded one (re-computed on every call,
    /// whatever the blob's mtime says). A damaged entry is deleted, reported on stderr and
    /// returned as a miss, never returned. Under `-v` the reason for any other miss is
    /// printed. Must not be called while this process holds [`Cache::lock`], since
    /// removing a damaged entry takes that lock.
    pub fn get(&self, sha256: &str) -> Option<PathBuf> {
        match self.probe(sha256) {
            Ok(p) => Some(p),
            Err(miss @ (Miss::SizeMismatch { .. } | Miss::DigestMismatch { .. })) => {
                eprintln!("mesobake: sha256:{sha256}: {miss}; fetching it again");
                None
            }
            Err(miss) => {
                if verbose() {
                    eprintln!("mesobake: cache miss for sha256:{sha256}: {miss}");
                }
                None
            }
        }
    }

    /// Like [`Cache::get`], but says why there is no usable blob.
    pub fn probe(&self, sha256: &str) -> std::result::Result<PathBuf, Miss> {
        let hex = normalize_sha256(sha256).map_err(|_| Miss::InvalidDigest(sha256.to_string()))?;
        match self.check_blob(&hex) {
            Ok(path) => Ok(path),
            Err(Miss::SizeMismatch { .. } | Miss::DigestMismatch { .. }) => {
                // Re-check under the lock: another process may have just replaced the blob
                // with a good copy, and that copy must not be deleted.
                let _lock = self
                    .lock()
                    .map_err(|e| Miss::Unreadable(format!("{e:#}")))?;
                match self.check_blob(&hex) {
                    Ok(path) => Ok(path),
                    Err(miss @ (Miss::SizeMismatch { .. } | Miss::DigestMismatch { .. })) => {
                        self.remove_blob(&hex)
                            .map_err(|e| Miss::Unreadable(format!("{e:#}")))?;
                        Err(miss)
                    }
                    Err(other) => Err(other),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// The sidecar of a stored blob, if it has a readable one.
    pub fn info(&self, sha256: &str) -> Option<BlobInfo> {
        let hex = normalize_sha256(sha256).ok()?;
        let text = fs::read_to_string(self.sidecar_path(&hex)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn check_blob(&self, hex: &str) -> std::result::Result<PathBuf, Miss> {
        let path = self.blob_path(hex);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Miss::Absent),
            Err(e) => return Err(Miss::Unreadable(format!("{}: {e}", path.display()))),
        };
        let info = self.info(hex).filter(|i| i.sha256 == hex);
        if let Some(info) = &info {
            if info.size != meta.len() {
                return Err(Miss::SizeMismatch {
                    expected: info.size,
                    actual: meta.len(),
                });
            }
        }
        let unreadable = |e: anyhow::Error| Miss::Unreadable(format!("{e:#}"));
        // Why not SHA256 on every use: the blob's name is its SHA256, but BLAKE3 over the
        // data extents is 3 to 4 times faster on the build machines (0.22 s against 0.78 s
        // for a warm 465 MiB base; ci/bench/verify-cost.sh), and this runs on every build.
        // The extent digest is recorded only right after the SHA256 was verified, so it
        // vouches for the same bytes.
        let recorded = info.as_ref().map(|i| i.digest.clone()).unwrap_or_default();
        if !recorded.is_empty() {
            let actual = digest::extent_digest(&path).map_err(unreadable)?;
            if actual != recorded {
                return Err(Miss::DigestMismatch {
                    expected: recorded,
                    actual,
                });
            }
            if !self.verify_full {
                return Ok(path);
            }
        }
        let actual = sha256_file(&path).map_err(unreadable)?;
        if actual != hex {
            return Err(Miss::DigestMismatch {
                expected: format!("sha256:{hex}"),
                actual: format!("sha256:{actual}"),
            });
        }
        if recorded.is_empty() {
            // The content is proven good; record its extent digest so that the next use
            // checks that instead. Failing to do so only costs a SHA256 next time.
            let source = info
                .map(|i| i.source)
                .unwrap_or_else(|| "unknown".to_string());
            if let Ok(d) = digest::extent_digest(&path) {
                let _ = self.write_sidecar(hex, &path, &source, &d);
            }
        }
        Ok(path)
    }

    fn remove_blob(&self, hex: &str) -> Result<()> {
        for p in [self.blob_path(hex), self.sidecar_path(hex)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing corrupt cache entry {}", p.display()))
                }
            }
        }
        Ok(())
    }

    /// Publishes `tmp` as the blob with digest `sha256`, by rename, and writes its sidecar
    /// naming `source`. Returns the blob's path.
    ///
    /// The caller must already have verified that `tmp` hashes to `sha256` (the fetch layer
    /// hashes while downloading; hashing a multi-gigabyte image twice would be waste). `tmp`
    /// should live under [`Cache::tmp_dir`]; a file elsewhere is copied there first. Takes
    /// [`Cache::lock`] for the rename, so it must not be called while holding it.
    pub fn insert_file(&self, tmp: &Path, sha256: &str, source: &str) -> Result<PathBuf> {
        let hex = normalize_sha256(sha256)?;
        let staged = self.stage_in_tmp(tmp)?;
        // Flush the content before the rename makes it visible, so a crash cannot leave a
        // published blob whose data never reached the disk.
        File::open(&staged)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("flushing {} to disk", staged.display()))?;
        set_read_only(&staged)?;
        // Taken from the file the rename below publishes, after the caller verified its
        // SHA256 (see check_blob for why a second digest).
        let digest = digest::extent_digest(&staged)?;
        let dest = self.blob_path(&hex);
        let _lock = self.lock()?;
        fs::rename(&staged, &dest).with_context(|| {
            format!(
                "moving {} into the cache as {}",
                staged.display(),
                dest.display()
            )
        })?;
        self.write_sidecar(&hex, &dest, source, &digest)?;
        Ok(dest)
    }

    /// Returns `tmp` if it is already in the cache's tmp dir, else a copy of it there.
    fn stage_in_tmp(&self, tmp: &Path) -> Result<PathBuf> {
        let tmp_dir = self.tmp_dir();
        // Anywhere under tmp/ is on the cache's filesystem, so a rename will do.
        let under_tmp = match (
            tmp.parent().map(fs::canonicalize),
            fs::canonicalize(&tmp_dir),
        ) {
            (Some(Ok(parent)), Ok(tmp_dir)) => parent.starts_with(tmp_dir),
            _ => false,
        };
        if under_tmp {
            return Ok(tmp.to_path_buf());
        }
        let staged = tempfile::Builder::new()
            .prefix("insert-")
            .tempfile_in(&tmp_dir)
            .with_context(|| format!("creating a temporary file in {}", tmp_dir.display()))?
            .into_temp_path()
            .keep()
            .context("keeping a temporary file in the cache")?;
        fs::copy(tmp, &staged)
            .with_context(|| format!("copying {} into the cache", tmp.display()))?;
        Ok(staged)
    }

    fn write_sidecar(&self, hex: &str, blob: &Path, source: &str, digest: &str) -> Result<()> {
        let meta = fs::metadata(blob)
            .with_context(|| format!("reading metadata of {}", blob.display()))?;
        let info = BlobInfo {
            sha256: hex.to_string(),
            size: meta.len(),
            digest: digest.to_string(),
            source: source.to_string(),
            inserted_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&info).context("encoding a cache sidecar")?;
        write_atomically(&self.tmp_dir(), &self.sidecar_path(hex), &json)
    }

    /// Takes the cache-wide exclusive lock on `<root>/lock`, waiting (and saying so) while
    /// another mesobake holds it. Ctrl-C stops the wait.
    ///
    /// Publishing, removing corrupt entries and removing layers take this lock themselves,
    /// briefly; hold it yourself only for multi-step changes to the cache (such as garbage
    /// collection), and do not call those methods while holding it, or the process waits on
    /// itself.
    pub fn lock(&self) -> Result<CacheLock> {
        lock_file(&self.root.join("lock"), "the cache lock")
    }

    /// Takes an exclusive lock named `name` (a plain file name such as `sha256-<hex>`), used
    /// to let one process produce an entry while others with the same key wait and then
    /// reuse it. Independent of [`Cache::lock`].
    pub fn lock_entry(&self, name: &str) -> Result<CacheLock> {
        check_component(name, "lock name")?;
        let what = format!("the cache entry {name}");
        lock_file(&self.root.join("locks").join(format!("{name}.lock")), &what)
    }

    /// Where the layer of this kind and key lives (`layers/<kind>/<key>/`), whether or not
    /// it is there. Both must be plain names (letters, digits, `.`, `_`, `-`).
    pub fn layer_dir(&self, kind: &str, key: &str) -> Result<PathBuf> {
        check_component(kind, "layer kind")?;
        check_component(key, "layer key")?;
        Ok(self.root.join("layers").join(kind).join(key))
    }

    /// Returns the layer directory if that layer has been published (it has its manifest).
    pub fn layer_get(&self, kind: &str, key: &str) -> Option<PathBuf> {
        let dir = self.layer_dir(kind, key).ok()?;
        dir.join(LAYER_MANIFEST).is_file().then_some(dir)
    }

    /// Publishes `tmp_dir` (made with [`Cache::new_tmp_dir`] or otherwise under
    /// [`Cache::tmp_dir`]) as the layer `kind`/`key`, by one rename, and returns its final
    /// path. `tmp_dir` must contain [`LAYER_MANIFEST`].
    ///
    /// If the layer already exists, another build produced it from the same inputs (the key
    /// is a hash of them), so the existing one is kept and `tmp_dir` is deleted. To replace a
    /// layer, call [`Cache::remove_layer`] first.
    pub fn publish_dir(&self, tmp_dir: &Path, kind: &str, key: &str) -> Result<PathBuf> {
        let dest = self.layer_dir(kind, key)?;
        if !tmp_dir.join(LAYER_MANIFEST).is_file() {
            bail!(
                "refusing to publish {} as layer {kind}/{key}: it has no {LAYER_MANIFEST}",
                tmp_dir.display()
            );
        }
        let parent = dest.parent().context("layer directory has no parent")?;
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the cache directory {}", parent.display()))?;
        let _lock = self.lock()?;
        if dest.join(LAYER_MANIFEST).is_file() {
            if verbose() {
                eprintln!(
                    "mesobake: layer {kind}/{key} was published meanwhile; keeping that copy"
                );
            }
            fs::remove_dir_all(tmp_dir).with_context(|| {
                format!("removing the unneeded work directory {}", tmp_dir.display())
            })?;
            return Ok(dest);
        }
        if dest.exists() {
            // A directory without a manifest was never published by us; move it aside so the
            // rename below (which cannot replace a non-empty directory) succeeds.
            self.discard_dir(&dest)?;
        }
        fs::rename(tmp_dir, &dest).with_context(|| {
            format!(
                "publishing {} as the cache layer {}",
                tmp_dir.display(),
                dest.display()
            )
        })?;
        Ok(dest)
    }

    /// Removes the layer `kind`/`key` if present. It is first renamed into the tmp dir, so
    /// no half-deleted layer is ever visible under `layers/`.
    pub fn remove_layer(&self, kind: &str, key: &str) -> Result<()> {
        let dest = self.layer_dir(kind, key)?;
        let _lock = self.lock()?;
        if dest.exists() {
            self.discard_dir(&dest)?;
        }
        Ok(())
    }

    fn discard_dir(&self, dir: &Path) -> Result<()> {
        let graveyard = self.new_tmp_dir("removing-")?;
        fs::rename(dir, graveyard.path().join("entry"))
            .with_context(|| format!("moving {} out of the cache", dir.display()))?;
        let where_ = graveyard.path().display().to_string();
        graveyard
            .close()
            .with_context(|| format!("removing {where_}"))
    }
}

fn default_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match crate::xdg::cache_home() {
        Some(d) => Ok(d.join("mesobake")),
        None => bail!(
            "cannot tell where the user's cache directory is (neither $XDG_CACHE_HOME nor $HOME is an absolute path); set {CACHE_DIR_ENV}"
        ),
    }
}

/// Lowercases a SHA256 digest (an optional `sha256:` prefix is dropped) and checks that it
/// is 64 hex characters.
pub fn normalize_sha256(digest: &str) -> Result<String> {
    let d = digest.trim();
    let d = d.strip_prefix("sha256:").unwrap_or(d);
    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{digest:?} is not a SHA256 digest (64 hex characters)");
    }
    Ok(d.to_ascii_lowercase())
}

/// Hashes a whole file, checking for Ctrl-C between chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    hash_reader(&mut f, &mut hasher, |_| {})
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds everything `r` yields into `hasher`, calling `progress` with the running byte count.
/// Returns the number of bytes read.
pub(crate) fn hash_reader(
    r: &mut impl Read,
    hasher: &mut Sha256,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        check_interrupted()?;
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        progress(total);
    }
}

fn set_read_only(path: &Path) -> Result<()> {
    // Blobs are shared by every build; read-only keeps a stray `qemu-img` or `dd` from
    // modifying one in place (which the digest check would catch, but only after the fact).
    let mut perms = fs::metadata(path)
        .with_context(|| format!("reading metadata of {}", path.display()))?
        .permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms).with_context(|| format!("making {} read-only", path.display()))
}

/// Writes `data` to `dest` via a temporary file in `tmp_dir` and a rename, so readers see
/// either the old file or the whole new one.
fn write_atomically(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)
        .with_context(|| format!("creating a temporary file in {}", tmp_dir.display()))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

fn check_component(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("{what} {name:?} must be a plain name of letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Opens `path` and takes an exclusive lock on it, polling so that Ctrl-C can end the wait.
fn lock_file(path: &Path, what: &str) -> Result<CacheLock> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                return Ok(CacheLock {
                    file,
                    path: path.to_path_buf(),
                })
            }
            Err(TryLockError::WouldBlock) => {
                if !announced {
                    eprintln!("mesobake: waiting for {what}, which another mesobake build holds");
                    announced = true;
                }
                check_interrupted()?;
                std::thread::sleep(LOCK_POLL);
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

impl fmt::Display for BlobInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256:{} ({} bytes, from {})",
            self.sha256, self.size, self.source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path().join("cache"))).unwrap();
        (dir, cache)
    }

    fn insert(cache: &Cache, data: &[u8]) -> (String, PathBuf) {
        let hex = sha(data);
        let tmp = cache.tmp_dir().join("x.partial");
        fs::write(&tmp, data).unwrap();
        let path = cache
            .insert_file(&tmp, &hex, "https://example.invalid/x")
            .unwrap();
        (hex, path)
    }

    fn overwrite_keeping_mtime(path: &Path, data: &[u8]) {
        let mtime = fs::metadata(path).unwrap().modified().unwrap();
        let mut perms = fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(path, perms).unwrap();
        fs::write(path, data).unwrap();
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    #[test]
    fn open_creates_layout() {
        let (_d, cache) = cache();
        for sub in ["blobs/sha256", "tmp", "layers", "locks"] {
            assert!(cache.root().join(sub).is_dir(), "{sub}");
        }
        assert!(cache.root().join("CACHEDIR.TAG").is_file());
        assert_eq!(cache.blob_path("ab"), cache.root().join("blobs/sha256/ab"));
    }

    #[test]
    fn insert_then_get_round_trips_with_sidecar() {
        let (_d, cache) = cache();
        let (hex, path) = insert(&cache, b"hello world");
        assert_eq!(path, cache.blob_path(&hex));
        assert!(
            !cache.tmp_dir().join("x.partial").exists(),
            "published by rename"
        );
        assert_eq!(cache.get(&hex.to_uppercase()), Some(path.clone()));
        let info = cache.info(&hex).unwrap();
        assert_eq!(info.size, 11);
        assert_eq!(info.source, "https://example.invalid/x");
        assert!(fs::metadata(&path).unwrap().permissions().readonly());
    }

    #[test]
    fn insert_from_outside_tmp_copies() {
        let (d, cache) = cache();
        let outside = d.path().join("outside");
        fs::write(&outside, b"abc").unwrap();
        let hex = sha(b"abc");
        let path = cache.insert_file(&outside, &hex, "local").unwrap();
        assert!(outside.exists(), "the caller's file is left alone");
        assert_eq!(fs::read(path).unwrap(), b"abc");
    }

    #[test]
    fn miss_reasons() {
        let (_d, cache) = cache();
        assert_eq!(cache.probe("zz"), Err(Miss::InvalidDigest("zz".into())));
        assert_eq!(cache.probe(&sha(b"nothing")), Err(Miss::Absent));
    }

    #[test]
    fn truncated_blob_is_removed() {
        let (_d, cache) = cache();
        let (hex, path) = insert(&cache, b"0123456789");
        overwrite_keeping_mtime(&path, b"01234");
        assert_eq!(
            cache.probe(&hex),
            Err(Miss::SizeMismatch {
                expected: 10,
                actual: 5
            })
        );
        assert!(!path.exists());
        assert!(cache.info(&hex).is_none(), "sidecar removed with the blob");
    }

    #[test]
    fn modified_blob_is_rehashed_and_removed() {
        let (_d, cache) = cache();
        let (hex, path) = insert(&cache, b"0123456789");
        std::thread::sleep(Duration::from_millis(20));
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, b"0123456780").unwrap();
        assert!(matches!(
            cache.probe(&hex),
            Err(Miss::DigestMismatch { .. })
        ));
        assert!(!path.exists());
    }

    #[test]
    fn a_flip_that_keeps_size_and_mtime_is_caught_on_every_use() {
        let (_d, cache) = cache();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (hex, path) = insert(&cache, &data);
        assert_eq!(cache.probe(&hex), Ok(path.clone()));
        let recorded = cache.info(&hex).unwrap().digest;
        assert!(recorded.starts_with(digest::EXTENT_DIGEST), "{recorded}");
        crate::base::digest::damage::flip_byte_keeping_mtime(&path, 123_456);
        let now = digest::extent_digest(&path).unwrap();
        // Same size and mtime: only the content digest can tell.
        let miss = cache.probe(&hex).unwrap_err();
        assert_eq!(
            miss,
            Miss::DigestMismatch {
                expected: recorded.clone(),
                actual: now.clone()
            }
        );
        let said = miss.to_string();
        assert!(
            said.contains("base") && said.contains(&recorded) && said.contains(&now),
            "{said}"
        );
        assert!(!path.exists(), "the damaged blob is removed");
        assert!(cache.get(&hex).is_none());
    }

    #[test]
    fn a_sidecar_without_a_digest_means_sha256_then_the_digest_is_recorded() {
        let (_d, cache) = cache();
        let (hex, path) = insert(&cache, b"an older mesobake cached this");
        let old_sidecar = |cache: &Cache| {
            let mut info = cache.info(&hex).unwrap();
            info.digest.clear();
            let json = serde_json::to_vec(&info).unwrap();
            fs::write(cache.sidecar_path(&hex), json).unwrap();
        };
        old_sidecar(&cache);
        assert_eq!(cache.get(&hex), Some(path.clone()));
        assert_eq!(
            cache.info(&hex).unwrap().digest,
            digest::extent_digest(&path).unwrap()
        );
        // Damage under an old sidecar is caught by the SHA256.
        old_sidecar(&cache);
        overwrite_keeping_mtime(&path, b"an older mesobake cached thiS");
        assert!(matches!(
            cache.probe(&hex),
            Err(Miss::DigestMismatch { expected, .. }) if expected == format!("sha256:{hex}")
        ));
        assert!(!path.exists());
    }

    #[test]
    fn full_verify_also_checks_the_sha256() {
        let (_d, cache) = cache();
        let (hex, path) = insert(&cache, b"0123456789");
        // A sidecar whose digest vouches for damaged bytes: only the SHA256 can tell.
        overwrite_keeping_mtime(&path, b"0123456780");
        let mut info = cache.info(&hex).unwrap();
        info.digest = digest::extent_digest(&path).unwrap();
        fs::write(cache.sidecar_path(&hex), serde_json::to_vec(&info).unwrap()).unwrap();
        assert!(cache.get(&hex).is_some());
        let full = cache.clone().with_full_verify(true);
        assert!(full.get(&hex).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn missing_sidecar_means_rehash_and_heal() {
        let (_d, cache) = cache();
        let (hex, path) = insert(&cache, b"payload");
        fs::remove_file(cache.sidecar_path(&hex)).unwrap();
        assert_eq!(cache.get(&hex), Some(path.clone()));
        let info = cache.info(&hex).expect("sidecar rewritten");
        assert_eq!(info.source, "unknown");
        assert_eq!(info.digest, digest::extent_digest(&path).unwrap());
    }

    #[test]
    fn lock_excludes_a_second_holder_until_dropped() {
        let (_d, cache) = cache();
        let held = cache.lock().unwrap();
        let acquired = Arc::new(AtomicBool::new(false));
        let t = {
            let cache = cache.clone();
            let acquired = acquired.clone();
            std::thread::spawn(move || {
                let _l = cache.lock().unwrap();
                acquired.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!acquired.load(Ordering::SeqCst), "second lock must wait");
        drop(held);
        t.join().unwrap();
        assert!(acquired.load(Ordering::SeqCst));
    }

    #[test]
    fn entry_locks_are_independent_of_the_cache_lock() {
        let (_d, cache) = cache();
        let _a = cache.lock().unwrap();
        let _b = cache.lock_entry("sha256-abc").unwrap();
        assert!(cache.lock_entry("../evil").is_err());
    }

    #[test]
    fn layers_publish_atomically_and_keep_the_first_copy() {
        let (_d, cache) = cache();
        assert!(cache.layer_dir("provisioned", "../x").is_err());
        assert!(cache.layer_get("provisioned", "k1").is_none());

        let first = cache.new_tmp_dir("layer-").unwrap().keep();
        fs::write(first.join("disk.qcow2"), b"first").unwrap();
        assert!(
            cache.publish_dir(&first, "provisioned", "k1").is_err(),
            "manifest required"
        );
        fs::write(first.join(LAYER_MANIFEST), b"{}").unwrap();
        let dest = cache.publish_dir(&first, "provisioned", "k1").unwrap();
        assert_eq!(dest, cache.layer_dir("provisioned", "k1").unwrap());
        assert_eq!(cache.layer_get("provisioned", "k1"), Some(dest.clone()));
        assert!(!first.exists());

        let second = cache.new_tmp_dir("layer-").unwrap().keep();
        fs::write(second.join("disk.qcow2"), b"second").unwrap();
        fs::write(second.join(LAYER_MANIFEST), b"{}").unwrap();
        let again = cache.publish_dir(&second, "provisioned", "k1").unwrap();
        assert_eq!(again, dest);
        assert_eq!(fs::read(dest.join("disk.qcow2")).unwrap(), b"first");
        assert!(!second.exists());

        cache.remove_layer("provisioned", "k1").unwrap();
        assert!(cache.layer_get("provisioned", "k1").is_none());
        assert!(!dest.exists());
    }

    #[test]
    fn digests_are_normalized() {
        let upper = "A".repeat(64);
        assert_eq!(
            normalize_sha256(&format!("sha256:{upper}")).unwrap(),
            "a".repeat(64)
        );
        assert!(normalize_sha256("abc").is_err());
        assert!(normalize_sha256(&"g".repeat(64)).is_err());
    }
}
