//! Cache housekeeping: `mesobake cache ls`, `cache gc` and `cache clear`.
//!
//! Entries are the downloaded blobs and the layers (bootstrapped bases, provisioned
//! disks). "Last used" is the entry's modification time, which a build refreshes on
//! every hit, so `gc --keep N` keeps what recent builds actually used.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::cache::Cache;

/// One cache entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// `blob`, `base` or `provisioned`.
    pub kind: String,
    /// The digest or layer key.
    pub key: String,
    /// Bytes on disk.
    pub size: u64,
    /// Seconds since the epoch of the last use.
    pub last_used: u64,
    /// Where it is.
    #[serde(skip)]
    pub path: PathBuf,
}

/// Bytes allocated at or under `p` (sparse files count what they use).
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.blocks() * 512
    }
}

fn mtime(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Marks an entry as used now.
pub fn touch(p: &Path) {
    if let Ok(f) = std::fs::File::open(p) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Every entry, newest use first.
pub fn list(cache: &Cache) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let blobs = cache.root().join("blobs/sha256");
    if let Ok(rd) = std::fs::read_dir(&blobs) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && !name.contains('.') {
                let path = e.path();
                out.push(Entry {
                    kind: "blob".into(),
                    key: name,
                    size: disk_usage(&path),
                    last_used: mtime(&path),
                    path,
                });
            }
        }
    }
    if let Ok(kinds) = std::fs::read_dir(cache.root().join("layers")) {
        for k in kinds.flatten() {
            let kind = k.file_name().to_string_lossy().into_owned();
            for e in std::fs::read_dir(k.path())?.flatten() {
                let path = e.path();
                out.push(Entry {
                    kind: kind.clone(),
                    key: e.file_name().to_string_lossy().into_owned(),
                    size: disk_usage(&path),
                    last_used: mtime(&path),
                    path,
                });
            }
        }
    }
    out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
    Ok(out)
}

fn remove(e: &Entry) -> Result<()> {
    if e.path.is_dir() {
        crate::image::guard::remove_work_dir(&e.path)
    } else {
        std::fs::remove_file(&e.path).with_context(|| format!("removing {}", e.path.display()))?;
        let sidecar = e.path.with_extension("json");
        let _ = std::fs::remove_file(sidecar);
        Ok(())
    }
}

/// Removes entries beyond the `keep` most recently used of each kind, then the least
/// recently used until the cache is under `max_size` bytes. Returns what was removed.
pub fn gc(cache: &Cache, keep: Option<usize>, max_size: Option<u64>) -> Result<Vec<Entry>> {
    if keep.is_none() && max_size.is_none() {
        bail!("cache gc needs --keep N or --max-size SIZE");
    }
    let _lock = cache.lock()?;
    let all = list(cache)?;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for e in all {
        let n = seen.entry(e.kind.clone()).or_default();
        *n += 1;
        if keep.is_some_and(|k| *n > k) {
            remove(&e)?;
            removed.push(e);
        } else {
            kept.push(e);
        }
    }
    if let Some(limit) = max_size {
        let mut total: u64 = kept.iter().map(|e| e.size).sum();
        while total > limit {
            let Some(e) = kept.pop() else { break };
            remove(&e)?;
            total -= e.size;
            removed.push(e);
        }
    }
    Ok(removed)
}

/// Removes every entry and the scratch directory.
pub fn clear(cache: &Cache) -> Result<Vec<Entry>> {
    let _lock = cache.lock()?;
    let all = list(cache)?;
    for e in &all {
        remove(e)?;
    }
    let tmp = cache.tmp_dir();
    crate::image::guard::remove_work_dir(&tmp)?;
    Ok(all)
}

/// The `cache ls` table.
pub fn table(entries: &[Entry]) -> String {
    let mut t = crate::output::Table::new(&["kind", "key", "size", "last used (UTC)"]).right(2);
    let mut total = 0;
    for e in entries {
        total += e.size;
        // Digests are shown by their first 12 digits, as `git` shows commits.
        let key = if e.key.len() > 12 && e.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            e.key[..12].to_string()
        } else {
            e.key.clone()
        };
        let used = if e.last_used == 0 {
            "-".to_string()
        } else {
            crate::utc::minutes(e.last_used)
        };
        t.row(vec![
            e.kind.clone(),
            key,
            format!("{} MiB", e.size >> 20),
            used,
        ]);
    }
    let mut s = t.render();
    s += &format!("{} entries, {} MiB\n", entries.len(), total >> 20);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(cache: &Cache, kind: &str, key: &str, age: u64) {
        let tmp = cache.tmp_dir().join(key);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join(super::super::cache::LAYER_MANIFEST), "{}").unwrap();
        std::fs::write(tmp.join("disk.qcow2"), vec![1u8; 8192]).unwrap();
        let d = cache.publish_dir(&tmp, kind, key).unwrap();
        let t = SystemTime::now() - std::time::Duration::from_secs(age);
        std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn gc_keeps_the_most_recent_per_kind_and_respects_size() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        layer(&cache, "provisioned", "aaaa", 300);
        layer(&cache, "provisioned", "bbbb", 200);
        layer(&cache, "provisioned", "cccc", 100);
        layer(&cache, "base", "dddd", 400);
        let all = list(&cache).unwrap();
        assert_eq!(
            all.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["cccc", "bbbb", "aaaa", "dddd"]
        );
        let removed = gc(&cache, Some(2), None).unwrap();
        assert_eq!(
            removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["aaaa"]
        );
        assert!(cache.layer_get("provisioned", "aaaa").is_none());
        assert!(cache.layer_get("base", "dddd").is_some());
        let one = list(&cache).unwrap()[0].size;
        let removed = gc(&cache, None, Some(one * 2)).unwrap();
        assert_eq!(
            removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["dddd"]
        );
        assert_eq!(clear(&cache).unwrap().len(), 2);
        assert!(list(&cache).unwrap().is_empty());
        assert!(gc(&cache, None, None).is_err());
    }

    #[test]
    fn dates_print() {
        assert_eq!(crate::utc::minutes(0), "1970-01-01 00:00");
        assert_eq!(crate::utc::minutes(1_795_000_000), "2026-11-18 11:06");
    }
}
