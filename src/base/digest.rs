//! Content digests of cache entries, checked before every use.
//!
//! A cached layer is trusted only if its bytes still hash to the digest recorded when it
//! was cached: size and modification time say nothing about a flipped bit or a careless
//! `dd conv=notrunc` that kept them. The warm rebuild reads a 6 GiB sparse disk (about
//! 1.3 GiB of data) and a 500 MB packed qcow2 on every build, so the digest must be
//! cheap: BLAKE3, spread over every core (`Hasher::update_rayon`), over the file's data
//! extents only (found with `SEEK_DATA`/`SEEK_HOLE`), never over its holes.
//!
//! The digest covers the file's size and, for each data extent in order, its offset,
//! its length and its bytes, so data moved to another offset, or a changed size, is a
//! different digest. It describes the file's bytes *and* its hole layout: the same
//! content re-sparsified differently (a hole filled with written zeroes, or zeroes
//! punched into a hole) has a different digest. That is why the digest is computed, in
//! the process that publishes an entry, from the file that is published (renamed, not
//! copied, into place), and why an entry is never copied within the cache.
//! On a filesystem without `SEEK_DATA` the whole file is one extent, consistently.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::run::check_interrupted;

/// The prefix of every extent digest, naming the algorithm and the rule above.
pub const EXTENT_DIGEST: &str = "blake3-extents:";

/// How much is read (and then hashed on every core) per step: large enough that
/// `update_rayon` splits it across threads, small enough to stay in the CPU caches.
const BUF: usize = 4 << 20;

/// The extent digest of a file (see the module docs): `blake3-extents:<hex>`.
pub fn extent_digest(path: &Path) -> Result<String> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    extent_digest_of(&f).with_context(|| format!("hashing {}", path.display()))
}

fn extent_digest_of(f: &File) -> Result<String> {
    let size = f.metadata()?.len();
    let mut h = blake3::Hasher::new();
    h.update(b"mesobake extent digest 1\0");
    h.update(&size.to_le_bytes());
    let mut buf = vec![0u8; BUF];
    let mut pos = 0;
    while pos < size {
        let Some(start) = seek(f, rustix::fs::SeekFrom::Data(pos), pos)? else {
            break;
        };
        let end = seek(f, rustix::fs::SeekFrom::Hole(start), size)?
            .unwrap_or(size)
            .min(size);
        h.update(&start.to_le_bytes());
        h.update(&(end - start).to_le_bytes());
        let mut off = start;
        while off < end {
            check_interrupted()?;
            let n = (end - off).min(BUF as u64) as usize;
            // A file that shrinks while it is hashed fails here rather than hashing less.
            f.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {n} bytes at {off}"))?;
            h.update_rayon(&buf[..n]);
            off += n as u64;
        }
        pos = end;
    }
    Ok(format!("{EXTENT_DIGEST}{}", h.finalize().to_hex()))
}

/// Where `SEEK_DATA` or `SEEK_HOLE` from `from` lands: None past the last data, and
/// `fallback` (all data: the start for data, the end for a hole) on a filesystem that
/// cannot tell.
fn seek(f: &File, from: rustix::fs::SeekFrom, fallback: u64) -> Result<Option<u64>> {
    match rustix::fs::seek(f, from) {
        Ok(p) => Ok(Some(p)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(Some(fallback)),
        Err(e) => Err(e.into()),
    }
}

/// A recorded digest disagrees with the bytes: the entry is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its content digest is {found}, not the {expected} recorded when it was cached")]
pub struct Mismatch {
    /// The digest recorded when the entry was cached.
    pub expected: String,
    /// The digest of the bytes now.
    pub found: String,
}

/// Checks `path` against the extent digest `expected`.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let found = extent_digest(path)?;
    if found != expected {
        return Err(Mismatch {
            expected: expected.to_string(),
            found,
        }
        .into());
    }
    Ok(())
}

/// Test helpers: damage that size and mtime do not show.
#[cfg(test)]
pub(crate) mod damage {
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    /// Flips every bit of the byte at `offset`, keeping the file's size and mtime (and
    /// making it writable first: cache entries may be read-only).
    pub fn flip_byte_keeping_mtime(path: &Path, offset: u64) {
        let meta = std::fs::metadata(path).unwrap();
        let mut perms = meta.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(path, perms).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .read(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[!b[0]], offset).unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
        drop(f);
        let after = std::fs::metadata(path).unwrap();
        assert_eq!(after.len(), meta.len());
        assert_eq!(after.modified().unwrap(), meta.modified().unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse file of `size` bytes with `data` written at each offset.
    fn sparse(path: &Path, size: u64, writes: &[(u64, &[u8])]) {
        let f = File::create(path).unwrap();
        f.set_len(size).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
    }

    #[test]
    fn digest_sees_bytes_offsets_and_size_but_reads_no_holes() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        let block = vec![7u8; 64 << 10];
        sparse(&p("a"), 64 << 20, &[(0, &block), (32 << 20, &block)]);
        sparse(&p("same"), 64 << 20, &[(0, &block), (32 << 20, &block)]);
        let a = extent_digest(&p("a")).unwrap();
        assert!(a.starts_with(EXTENT_DIGEST), "{a}");
        assert_eq!(a, extent_digest(&p("same")).unwrap(), "deterministic");
        // The same data one block further on.
        sparse(&p("moved"), 64 << 20, &[(0, &block), (33 << 20, &block)]);
        // A longer file with the same extents.
        sparse(&p("longer"), 65 << 20, &[(0, &block), (32 << 20, &block)]);
        for other in ["moved", "longer"] {
            assert_ne!(a, extent_digest(&p(other)).unwrap(), "{other}");
        }
        // One byte flipped, size and time kept.
        damage::flip_byte_keeping_mtime(&p("same"), (32 << 20) + 100);
        let found = extent_digest(&p("same")).unwrap();
        assert_ne!(a, found);
        let e = verify(&p("same"), &a).unwrap_err();
        let m = e.downcast_ref::<Mismatch>().unwrap();
        assert_eq!(
            (m.expected.as_str(), m.found.as_str()),
            (a.as_str(), found.as_str())
        );
        assert!(verify(&p("a"), &a).is_ok());
    }

    #[test]
    fn written_zeroes_differ_from_a_hole_as_documented() {
        let d = tempfile::tempdir().unwrap();
        let (holey, dense) = (d.path().join("h"), d.path().join("d"));
        sparse(&holey, 1 << 20, &[(0, &[1u8; 4096])]);
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..4096].fill(1);
        std::fs::write(&dense, &bytes).unwrap();
        assert_eq!(std::fs::read(&holey).unwrap(), bytes);
        // Only meaningful where the filesystem keeps holes (every Linux one mesobake
        // caches on does; tmpfs and ext4 do).
        let f = File::open(&holey).unwrap();
        if rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(0)).unwrap() < (1 << 20) {
            assert_ne!(
                extent_digest(&holey).unwrap(),
                extent_digest(&dense).unwrap()
            );
        }
        // An empty file has a digest too.
        let empty = d.path().join("e");
        std::fs::write(&empty, b"").unwrap();
        assert!(extent_digest(&empty).unwrap().starts_with(EXTENT_DIGEST));
    }
}
