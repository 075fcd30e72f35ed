//! The difference between the provisioned layer and a finished disk, cluster by cluster.
//!
//! Configure and finalize change a few MiB of a 1.5 GiB disk. Compressing the whole disk
//! again for every rebuild (35 s of zlib on two cores) would dominate the edit-rebuild
//! loop, so the compressed qcow2 of the provisioned layer is made once and cached, and a
//! rebuild writes only the changed clusters into a copy of it: `qemu-io` performs the
//! writes, so the qcow2 is still produced by QEMU's own driver. The same delta, applied to
//! a copy of the layer's raw disk, recreates the finished disk without mounting anything:
//! that is what the configured layer stores.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::run::Cmd;

/// The comparison unit: qcow2's default cluster size, so every write covers whole
/// clusters and never makes the driver merge into a compressed cluster.
pub const CLUSTER: u64 = 64 * 1024;
/// How much is read from each file per step.
const CHUNK: u64 = 16 * CLUSTER;

/// A run of changed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Byte offset in the disk.
    pub offset: u64,
    /// Length in bytes (a multiple of [`CLUSTER`], except at the end of the disk).
    pub len: u64,
    /// The new content is all zeroes (trimmed or zeroed); no data is stored for it.
    pub zero: bool,
}

/// The changes from an old disk to a new one of the same size. Data for the non-zero
/// extents lives in a separate file, concatenated in extent order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The disk size both sides have.
    pub disk_size: u64,
    /// The changed runs, in order.
    pub extents: Vec<Extent>,
}

impl Delta {
    /// Bytes of stored (non-zero) data.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().filter(|e| !e.zero).map(|e| e.len).sum()
    }

    /// Bytes the delta covers, zero runs included.
    pub fn changed_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    fn push(&mut self, offset: u64, len: u64, zero: bool) {
        if let Some(last) = self.extents.last_mut() {
            if last.zero == zero && last.offset + last.len == offset {
                last.len += len;
                return;
            }
        }
        self.extents.push(Extent { offset, len, zero });
    }
}

/// The next offset at or after `pos` where `f` has data, or None past the last data.
pub(crate) fn next_data(f: &File, pos: u64) -> Result<Option<u64>> {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
        Ok(p) => Ok(Some(p)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        // A filesystem without SEEK_DATA: treat everything as data.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(Some(pos)),
        Err(e) => Err(e.into()),
    }
}

/// Compares `old` and `new` (raw disks of the same size) and writes the changed data to
/// `data`. Holes on both sides are skipped without reading them.
pub fn diff(old: &Path, new: &Path, data: &Path) -> Result<Delta> {
    let a = File::open(old).with_context(|| format!("opening {}", old.display()))?;
    let b = File::open(new).with_context(|| format!("opening {}", new.display()))?;
    let size = a.metadata()?.len();
    if b.metadata()?.len() != size {
        bail!(
            "{} and {} differ in size; no delta between them",
            old.display(),
            new.display()
        );
    }
    let mut out = std::io::BufWriter::new(
        File::create(data).with_context(|| format!("creating {}", data.display()))?,
    );
    let mut delta = Delta {
        disk_size: size,
        extents: Vec::new(),
    };
    let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < size {
        let next = match (next_data(&a, pos)?, next_data(&b, pos)?) {
            (None, None) => break,
            (Some(p), None) | (None, Some(p)) => p,
            (Some(p), Some(q)) => p.min(q),
        };
        pos = next / CLUSTER * CLUSTER;
        let n = CHUNK.min(size - pos) as usize;
        a.read_exact_at(&mut x[..n], pos)?;
        b.read_exact_at(&mut y[..n], pos)?;
        for (i, (cx, cy)) in x[..n]
            .chunks(CLUSTER as usize)
            .zip(y[..n].chunks(CLUSTER as usize))
            .enumerate()
        {
            if cx != cy {
                let zero = cy.iter().all(|&v| v == 0);
                if !zero {
                    out.write_all(cy)?;
                }
                delta.push(pos + (i as u64) * CLUSTER, cy.len() as u64, zero);
            }
        }
        pos += n as u64;
        crate::run::check_interrupted()?;
    }
    out.flush()?;
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("writing {}", data.display()))?;
    Ok(delta)
}

/// Applies a delta to a raw disk in place: data is written, zero runs become holes.
pub fn apply_raw(delta: &Delta, data: &Path, disk: &Path) -> Result<()> {
    let mut src = File::open(data).with_context(|| format!("opening {}", data.display()))?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    if dst.metadata()?.len() != delta.disk_size {
        bail!("{} is not the disk this delta was made for", disk.display());
    }
    let mut buf = vec![0u8; CHUNK as usize];
    for e in &delta.extents {
        if e.zero {
            use rustix::fs::FallocateFlags as F;
            rustix::fs::fallocate(&dst, F::PUNCH_HOLE | F::KEEP_SIZE, e.offset, e.len)
                .with_context(|| format!("zeroing {} bytes at {}", e.len, e.offset))?;
            continue;
        }
        let mut done = 0;
        while done < e.len {
            let n = (e.len - done).min(CHUNK) as usize;
            src.read_exact(&mut buf[..n])
                .context("the delta's data file is shorter than its extents")?;
            dst.write_all_at(&buf[..n], e.offset + done)?;
            done += n as u64;
        }
    }
    let mut rest = Vec::new();
    if src.read_to_end(&mut rest)? != 0 {
        bail!("the delta's data file is longer than its extents");
    }
    // No fsync: the disk is a work file, and flushing 1.5 GiB of fresh copy would cost
    // more than everything else in a cached rebuild.
    Ok(())
}

/// Applies a delta to a qcow2 image in place with `qemu-io`: data runs are written
/// compressed from per-run files under `scratch`, zero runs are written as zeroes with
/// unmapping allowed, which frees the compressed clusters they replace.
pub fn apply_qcow2(delta: &Delta, data: &Path, image: &Path, scratch: &Path) -> Result<()> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut src = File::open(data).with_context(|| format!("opening {}", data.display()))?;
    let mut script = String::new();
    for (i, e) in delta.extents.iter().enumerate() {
        if e.zero {
            script.push_str(&format!("write -q -z -u {} {}\n", e.offset, e.len));
            continue;
        }
        // One cluster per command: qcow2 splits a longer write into parallel tasks whose
        // clusters land in the file in completion order, and the output would differ
        // from build to build.
        let mut done = 0;
        while done < e.len {
            let off = e.offset + done;
            let len = CLUSTER.min(e.len - done);
            let part = scratch.join(format!("{i}-{done}"));
            let mut f = File::create(&part)?;
            let copied = std::io::copy(&mut (&mut src).take(len), &mut f)?;
            if copied != len {
                bail!("the delta's data file is shorter than its extents");
            }
            // qemu-io splits its commands at spaces with no quoting, so data files are
            // named relative to `scratch`, its working directory, and never contain one,
            // whatever the output path is.
            let p = part
                .file_name()
                .and_then(|n| n.to_str())
                .context("scratch file name")?
                .to_string();
            if len == CLUSTER && off % CLUSTER == 0 {
                // Compressed, like the rest of the image. qcow2 refuses a compressed write
                // over an allocated cluster, so the cluster is discarded first; the data
                // that follows makes the discard invisible.
                script.push_str(&format!("discard -q {off} {len}\n"));
                script.push_str(&format!("write -q -c -s {p} {off} {len}\n"));
            } else {
                script.push_str(&format!("write -q -s {p} {off} {len}\n"));
            }
            done += len;
        }
    }
    // Commas in an --image-opts value are escaped by doubling them.
    // The image goes by absolute path: qemu-io runs in `scratch`.
    let image =
        &std::path::absolute(image).with_context(|| format!("resolving {}", image.display()))?;
    let file = image
        .to_str()
        .context("image path is not UTF-8")?
        .replace(',', ",,");
    Cmd::new("qemu-io")
        .current_dir(scratch)
        .arg("--image-opts")
        .arg(format!(
            "driver=qcow2,file.driver=file,file.filename={file},pass-discard-other=on"
        ))
        .stdin_bytes(script)
        .output()
        .with_context(|| format!("writing the changed clusters into {}", image.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &Path, size: u64, writes: &[(u64, u8, u64)]) {
        let f = File::create(path).unwrap();
        f.set_len(size).unwrap();
        for &(off, byte, len) in writes {
            f.write_all_at(&vec![byte; len as usize], off).unwrap();
        }
    }

    #[test]
    fn diff_finds_changed_and_zeroed_clusters_and_apply_raw_recreates_the_new_disk() {
        let d = tempfile::tempdir().unwrap();
        let (old, new, data) = (d.path().join("a"), d.path().join("b"), d.path().join("d"));
        let size = 8 << 20;
        disk(&old, size, &[(0, 1, 1 << 20), (4 << 20, 2, 3 * CLUSTER)]);
        // Changed data in two adjacent clusters, one cluster zeroed, one new cluster in a
        // hole, and a partial change inside a cluster.
        disk(
            &new,
            size,
            &[
                (0, 1, 1 << 20),
                (CLUSTER, 9, 2 * CLUSTER),
                (4 << 20, 2, 3 * CLUSTER),
                (6 << 20, 7, 100),
            ],
        );
        let f = std::fs::OpenOptions::new().write(true).open(&new).unwrap();
        f.write_all_at(&vec![0; CLUSTER as usize], (4 << 20) + CLUSTER)
            .unwrap();
        drop(f);
        let delta = diff(&old, &new, &data).unwrap();
        assert_eq!(
            delta.extents,
            vec![
                Extent {
                    offset: CLUSTER,
                    len: 2 * CLUSTER,
                    zero: false
                },
                Extent {
                    offset: (4 << 20) + CLUSTER,
                    len: CLUSTER,
                    zero: true
                },
                Extent {
                    offset: 6 << 20,
                    len: CLUSTER,
                    zero: false
                },
            ]
        );
        assert_eq!(std::fs::metadata(&data).unwrap().len(), delta.data_bytes());
        let copy = d.path().join("c");
        std::fs::copy(&old, &copy).unwrap();
        apply_raw(&delta, &data, &copy).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&new).unwrap());
    }

    #[test]
    fn equal_disks_have_an_empty_delta_and_sizes_must_match() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, data) = (d.path().join("a"), d.path().join("b"), d.path().join("d"));
        disk(&a, 4 << 20, &[(CLUSTER, 3, 5000)]);
        disk(&b, 4 << 20, &[(CLUSTER, 3, 5000)]);
        assert!(diff(&a, &b, &data).unwrap().extents.is_empty());
        disk(&b, 5 << 20, &[]);
        assert!(diff(&a, &b, &data).is_err());
    }

    #[test]
    fn apply_qcow2_makes_the_compressed_old_disk_equal_to_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        let (old, new, data) = (d.path().join("a"), d.path().join("b"), d.path().join("d"));
        let size = 16 << 20;
        disk(&old, size, &[(0, 1, 4 << 20), (8 << 20, 2, 2 << 20)]);
        disk(
            &new,
            size,
            &[
                (0, 1, 4 << 20),
                (CLUSTER * 3, 5, 300_000),
                (12 << 20, 6, CLUSTER),
            ],
        );
        // Two MiB of varied data, so that clusters take different times to compress.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..(2u64 << 20))
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / CLUSTER).is_multiple_of(2) {
                    (x & 0xff) as u8
                } else {
                    (i % 7) as u8
                }
            })
            .collect();
        File::options()
            .write(true)
            .open(&new)
            .unwrap()
            .write_all_at(&noise, 13 << 20)
            .unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&new).unwrap();
        // Zero out what was data in the old disk, as fstrim does.
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            8 << 20,
            1 << 20,
        )
        .unwrap();
        drop(f);
        let delta = diff(&old, &new, &data).unwrap();
        assert!(delta.extents.iter().any(|e| e.zero));
        // Commas and spaces, as in any output path a user may pick.
        let img = d.path().join("out, 1.qcow2");
        Cmd::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&old)
            .arg(&img)
            .run()
            .unwrap();
        let twin = d.path().join("twin.qcow2");
        std::fs::copy(&img, &twin).unwrap();
        apply_qcow2(&delta, &data, &img, &d.path().join("scratch dir")).unwrap();
        apply_qcow2(&delta, &data, &twin, &d.path().join("scratch2")).unwrap();
        assert!(
            std::fs::read(&img).unwrap() == std::fs::read(&twin).unwrap(),
            "the same delta on the same image must give the same bytes"
        );
        // qemu-img compare exits 0 only when the guest-visible contents are identical.
        Cmd::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&img)
            .arg(&new)
            .run()
            .unwrap();
        Cmd::new("qemu-img")
            .args(["check", "-q"])
            .arg(&img)
            .run()
            .unwrap();
    }
}
