//! Our own writer of streamOptimized VMDKs (the disk of an OVA and of the EC2 import
//! kit), after VMware's Virtual Disk Format 1.1, "Stream-Optimized Compressed Sparse
//! Extents".
//!
//! `qemu-img convert -O vmdk -o subformat=streamOptimized` compresses on one thread: about
//! 70 s for a 6 GiB disk holding 1.3 GiB. Here grains are compressed on every core, and a
//! finished disk that is the cached provisioned disk plus a small delta costs only the
//! delta's grains: [`pack`] compresses the provisioned disk once into a grain store, and
//! [`write`] copies the stored grains the delta leaves alone. A grain's compressed bytes
//! depend only on its content, so the output is the same bytes as a from-scratch write of
//! the finished disk.
//!
//! Layout of the output, in 512-byte sectors: the sparse header (its gdOffset says "at the
//! end"), the embedded descriptor, then from sector [`OVERHEAD`] each non-zero grain in
//! increasing LBA order (a 12-byte marker, the zlib data, padding to a sector), each grain
//! table after the grains it covers (with its marker), the grain directory (with its
//! marker), the footer (a marker and a copy of the header with the real gdOffset), and the
//! end-of-stream marker. Readers that take the file as a stream (VirtualBox's and EC2's
//! import) read grains in order; QEMU reads the footer and the tables.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use crate::layers::delta::{Delta, CLUSTER};

/// Grain size: 64 KiB (128 sectors), equal to delta::CLUSTER so delta extents cover whole
/// grains.
pub const GRAIN: u64 = 64 * 1024;
const _: () = assert!(GRAIN == CLUSTER);

const SECTOR: u64 = 512;
const GRAIN_SECTORS: u64 = GRAIN / SECTOR;
const GTES_PER_GT: u64 = 512;
/// One grain table: 512 four-byte entries.
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
/// QEMU's descriptor area, which `pin::vmdk_cid` rewrites in place.
const DESC_SECTORS: u64 = 20;
/// Where the first grain starts, as in QEMU's and VMware's stream writers.
const OVERHEAD: u64 = 128;
const GD_AT_END: u64 = u64::MAX;
/// Header flags: valid new-line test (bit 0), compressed grains (16), markers (17).
const FLAGS: u32 = 1 | 1 << 16 | 1 << 17;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// zlib level of every grain (6 is QEMU's). Measured with `measure` below on the cached
/// provisioned disk of a real image (6 GiB, 1.3 GiB of data in 21406 grains), two busy
/// cores: level 1 packs in 13.0 s to 608 MB, 6 in 25.2 s to 484 MB, 7 in 39.8 s to 481 MB,
/// 9 in 75.9 s to 472 MB (qemu-img, level 6 on one core: 72 s, 481 MB). The warm path
/// compresses a few MiB at any level, so the cold pack decides: 6 costs 12 s more than 1
/// once per provisioned layer and saves 124 MB (20 %) on every OVA and EC2 upload; past
/// 6, each percent of size costs another 10 to 20 s.
const LEVEL: u32 = 6;
/// Grains compressed per parallel step (16 MiB): enough work for every core, little
/// memory.
const BATCH: usize = 256;

const STORE_MAGIC: &[u8; 8] = b"MBGRAINS";
const STORE_VERSION: u32 = 1;
const STORE_HEADER: u64 = 128;
/// An index entry: grain number (u64) and compressed length (u32).
const INDEX_ENTRY: u64 = 12;

/// Compresses every grain of the raw disk `raw` that holds non-zero data (holes are
/// skipped with SEEK_DATA; an all-zero grain is not stored) on all cores, and writes the
/// grain store `store`, through a temporary file in the same directory and a rename.
///
/// Store format (little-endian): a 128-byte header (magic `MBGRAINS`, format version, zlib
/// level, disk size in bytes, number of stored grains, offset of the index, a fingerprint
/// of the compressor, and the BLAKE3 hash of everything after the header), the compressed
/// grains back to back from byte 128, then the index: per stored grain, in increasing
/// order, its number (u64) and compressed length (u32); offsets are the running sum.
pub fn pack(raw: &Path, store: &Path) -> Result<()> {
    pack_at(raw, store, LEVEL)
}

fn pack_at(raw: &Path, store: &Path, level: u32) -> Result<()> {
    let src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let size = src.metadata()?.len();
    if size == 0 || !size.is_multiple_of(SECTOR) {
        bail!(
            "{}: a VMDK disk is whole 512-byte sectors; this one is {size} bytes",
            raw.display()
        );
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir_of(store))
        .with_context(|| format!("creating a temporary file beside {}", store.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
    out.write_all(&[0; STORE_HEADER as usize])?;
    let mut hash = blake3::Hasher::new();
    let mut index = Vec::new();
    let mut pos = 0;
    while let Some(data) = next_data(&src, pos)? {
        let start = data / GRAIN * GRAIN;
        if start >= size {
            break;
        }
        // Up to the hole after this data (a grain that starts in a hole can still hold
        // data), so long holes are never read.
        let hole = next_hole(&src, data)?.unwrap_or(size).max(data + 1);
        let end = size
            .min(hole.div_ceil(GRAIN) * GRAIN)
            .min(start + BATCH as u64 * GRAIN);
        let mut items = Vec::with_capacity(BATCH);
        for g in start / GRAIN..end.div_ceil(GRAIN) {
            items.push(Item::Raw(g, read_grain(&src, g, size, raw)?));
        }
        compress_all(&mut items, level);
        for it in items {
            if let Item::Zlib(g, z) = it {
                out.write_all(&z)?;
                hash.update(&z);
                index.push((g, z.len() as u32));
            }
        }
        pos = end;
        crate::run::check_interrupted()?;
    }
    let header = StoreHeader {
        level,
        disk_size: size,
        count: index.len() as u64,
        index_offset: STORE_HEADER + index.iter().map(|&(_, n)| n as u64).sum::<u64>(),
        compressor: compressor_fingerprint(level),
        hash: [0; 32],
    };
    let mut bytes = Vec::with_capacity(index.len() * INDEX_ENTRY as usize);
    for (g, n) in &index {
        bytes.extend_from_slice(&g.to_le_bytes());
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    out.write_all(&bytes)?;
    hash.update(&bytes);
    out.flush()?;
    drop(out);
    let header = StoreHeader {
        hash: *hash.finalize().as_bytes(),
        ..header
    };
    tmp.as_file().write_all_at(&header.encode(), 0)?;
    readable(tmp.as_file())?;
    tmp.as_file().sync_all()?;
    tmp.persist(store)
        .with_context(|| format!("writing {}", store.display()))?;
    Ok(())
}

/// Writes the streamOptimized VMDK `dest` for the disk that is `store`'s disk with `delta`
/// applied (None = the store's disk itself). `cid` is the descriptor's CID. Grains the
/// delta does not touch are copied compressed from the store; changed non-zero grains are
/// compressed (in parallel); changed all-zero grains are left out (unallocated). The
/// descriptor names the extent after `dest`'s file name, as qemu-img does.
pub fn write(store: &Path, delta: Option<(&Delta, &Path)>, cid: u32, dest: &Path) -> Result<()> {
    let mut st = StoreReader::open(store)?;
    let size = st.header.disk_size;
    let (changes, data) = match delta {
        Some((d, p)) => (
            changed_grains(d, p, size, store)?,
            Some(Fresh {
                file: File::open(p).with_context(|| format!("opening {}", p.display()))?,
                path: p.to_path_buf(),
                size,
            }),
        ),
        None => (Vec::new(), None),
    };
    let name = extent_name(dest)?;
    let tmp = tempfile::NamedTempFile::new_in(dir_of(dest))
        .with_context(|| format!("creating a temporary file beside {}", dest.display()))?;
    let mut out = Vmdk::new(BufWriter::with_capacity(1 << 20, tmp.as_file()), size);
    out.start(cid, &name)?;
    let level = st.header.level;
    let mut batch = Vec::with_capacity(BATCH);
    let mut changes = changes.into_iter().peekable();
    while let Some((g, z)) = st.next_grain()? {
        let mut replaced = false;
        while let Some(c) = changes.next_if(|c| c.grain <= g) {
            replaced |= c.grain == g;
            if let (Some(at), Some(f)) = (c.data_at, &data) {
                batch.push(Item::Raw(c.grain, f.grain(c.grain, at)?));
            }
        }
        if !replaced {
            batch.push(Item::Zlib(g, z));
        }
        if batch.len() >= BATCH {
            out.grains(&mut batch, level)?;
        }
    }
    for c in changes {
        if let (Some(at), Some(f)) = (c.data_at, &data) {
            batch.push(Item::Raw(c.grain, f.grain(c.grain, at)?));
        }
        if batch.len() >= BATCH {
            out.grains(&mut batch, level)?;
        }
    }
    out.grains(&mut batch, level)?;
    st.verify()?;
    out.finish()?;
    readable(tmp.as_file())?;
    // No fsync: like every conversion, the output is a work file that the build
    // publishes (and digests) later.
    tmp.persist(dest)
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// A grain on its way to the output: raw content still to be compressed (`Raw`), its
/// zlib bytes (`Zlib`), or nothing (`Zero`: an all-zero grain, left unallocated).
enum Item {
    Raw(u64, Vec<u8>),
    Zlib(u64, Vec<u8>),
    Zero,
}

/// Compresses the raw grains of `items` on all cores; order is kept.
fn compress_all(items: &mut [Item], level: u32) {
    items.par_iter_mut().for_each(|it| {
        if let Item::Raw(g, raw) = it {
            *it = if is_zero(raw) {
                Item::Zero
            } else {
                Item::Zlib(*g, compress(raw, level))
            };
        }
    });
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// zlib format (RFC 1950), what zlib's `compress()` gives and VMDK readers inflate.
fn compress(raw: &[u8], level: u32) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(raw.len() / 2),
        flate2::Compression::new(level),
    );
    z.write_all(raw).expect("writing to a Vec");
    z.finish().expect("writing to a Vec")
}

/// What this build's zlib makes of a fixed sample. A store's grains are reused only by a
/// build whose compressor gives the same bytes, or its output would differ from a
/// from-scratch write of the same disk.
fn compressor_fingerprint(level: u32) -> [u8; 32] {
    let mut probe = Vec::with_capacity(GRAIN as usize);
    let mut i = 0u64;
    while probe.len() < GRAIN as usize / 2 {
        probe.extend_from_slice(format!("mesobake grain store probe line {i}\n").as_bytes());
        i += 1;
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while probe.len() < GRAIN as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        probe.push((x & 0x1f) as u8);
    }
    *blake3::hash(&compress(&probe, level)).as_bytes()
}

/// Grain `g` of the raw disk `f` (`size` bytes), zero-padded to a whole grain when the
/// disk ends inside it.
fn read_grain(f: &File, g: u64, size: u64, path: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; GRAIN as usize];
    let len = GRAIN.min(size - g * GRAIN) as usize;
    f.read_exact_at(&mut buf[..len], g * GRAIN)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

fn next_data(f: &File, pos: u64) -> Result<Option<u64>> {
    crate::layers::delta::next_data(f, pos)
}

/// The next hole at or after `pos` (the end of the file counts as one), or None where
/// the filesystem cannot tell.
fn next_hole(f: &File, pos: u64) -> Result<Option<u64>> {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(pos)) {
        Ok(p) => Ok(Some(p)),
        Err(rustix::io::Errno::NXIO)
        | Err(rustix::io::Errno::INVAL)
        | Err(rustix::io::Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Mode 0644, as qemu-img leaves its outputs: a temporary file starts private, and the
/// EC2 kit publishes this very file (a hard link).
fn readable(f: &File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .context("setting the mode of a new file")
}

fn dir_of(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The extent file name the descriptor gives: `dest`'s own, as qemu-img writes it. QEMU
/// reads the quoted name up to a quote or a line end, at most 511 bytes.
fn extent_name(dest: &Path) -> Result<String> {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: the VMDK's file name is not UTF-8", dest.display()))?;
    if name.len() > 511 || name.chars().any(|c| c == '"' || c.is_control()) {
        bail!(
            "{}: a VMDK descriptor cannot name this file (a quote, a control character or \
             over 511 bytes)",
            dest.display()
        );
    }
    Ok(name.to_string())
}

/// The grain store's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoreHeader {
    level: u32,
    disk_size: u64,
    count: u64,
    index_offset: u64,
    compressor: [u8; 32],
    hash: [u8; 32],
}

impl StoreHeader {
    fn encode(&self) -> [u8; STORE_HEADER as usize] {
        let mut b = [0u8; STORE_HEADER as usize];
        b[0..8].copy_from_slice(STORE_MAGIC);
        b[8..12].copy_from_slice(&STORE_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.level.to_le_bytes());
        b[16..24].copy_from_slice(&self.disk_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_offset.to_le_bytes());
        b[40..72].copy_from_slice(&self.compressor);
        b[72..104].copy_from_slice(&self.hash);
        b
    }

    /// The header of `path`, whose first bytes are `b`; checks what can be checked
    /// without the rest of the file.
    fn decode(b: &[u8; STORE_HEADER as usize], path: &Path) -> Result<StoreHeader> {
        let p = path.display();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        ensure!(
            &b[0..8] == STORE_MAGIC,
            "{p}: not a grain store (bad magic)"
        );
        let version = u32_at(8);
        ensure!(
            version == STORE_VERSION,
            "{p}: grain store format {version}, this build reads {STORE_VERSION}; pack it again"
        );
        let h = StoreHeader {
            level: u32_at(12),
            disk_size: u64_at(16),
            count: u64_at(24),
            index_offset: u64_at(32),
            compressor: b[40..72].try_into().expect("32 bytes"),
            hash: b[72..104].try_into().expect("32 bytes"),
        };
        ensure!(
            h.level == LEVEL,
            "{p}: grains compressed at zlib level {}, this build writes level {LEVEL}; pack it \
             again",
            h.level
        );
        ensure!(
            h.compressor == compressor_fingerprint(h.level),
            "{p}: packed by a zlib that compresses differently from this build's; pack it again"
        );
        ensure!(
            h.disk_size > 0 && h.disk_size.is_multiple_of(SECTOR) && h.index_offset >= STORE_HEADER,
            "{p}: corrupt grain store header"
        );
        Ok(h)
    }
}

/// Reads a grain store front to back, checking it as it goes.
struct StoreReader {
    path: PathBuf,
    header: StoreHeader,
    index: Vec<(u64, u32)>,
    index_bytes: Vec<u8>,
    next: usize,
    data: BufReader<File>,
    hash: blake3::Hasher,
}

impl StoreReader {
    fn open(path: &Path) -> Result<StoreReader> {
        let p = path.display();
        let f = File::open(path).with_context(|| format!("opening {p}"))?;
        let len = f.metadata()?.len();
        let mut hb = [0u8; STORE_HEADER as usize];
        let got = (len.min(STORE_HEADER)) as usize;
        f.read_exact_at(&mut hb[..got], 0)
            .with_context(|| format!("reading {p}"))?;
        ensure!(
            hb[..got.min(8)] == STORE_MAGIC[..got.min(8)],
            "{p}: not a grain store (bad magic)"
        );
        ensure!(
            len >= STORE_HEADER,
            "{p}: truncated grain store ({len} bytes)"
        );
        let header = StoreHeader::decode(&hb, path)?;
        let want = header
            .count
            .checked_mul(INDEX_ENTRY)
            .and_then(|n| n.checked_add(header.index_offset));
        ensure!(
            want == Some(len),
            "{p}: truncated or corrupt grain store ({len} bytes, its header says {})",
            want.map_or("more".into(), |n| n.to_string())
        );
        let mut index_bytes = vec![0u8; (header.count * INDEX_ENTRY) as usize];
        f.read_exact_at(&mut index_bytes, header.index_offset)
            .with_context(|| format!("reading {p}"))?;
        let index = parse_index(&index_bytes, &header, path)?;
        let mut data = BufReader::with_capacity(4 << 20, f);
        std::io::Seek::seek(&mut data, std::io::SeekFrom::Start(STORE_HEADER))?;
        Ok(StoreReader {
            path: path.to_path_buf(),
            header,
            index,
            index_bytes,
            next: 0,
            data,
            hash: blake3::Hasher::new(),
        })
    }

    /// The next stored grain: its number and zlib bytes.
    fn next_grain(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(&(g, n)) = self.index.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let mut z = vec![0u8; n as usize];
        self.data
            .read_exact(&mut z)
            .with_context(|| format!("reading {}", self.path.display()))?;
        self.hash.update(&z);
        Ok(Some((g, z)))
    }

    /// After every grain was read: the content matches the hash the store was made with.
    fn verify(mut self) -> Result<()> {
        ensure!(
            self.next == self.index.len(),
            "not every stored grain was read"
        );
        self.hash.update(&self.index_bytes);
        ensure!(
            *self.hash.finalize().as_bytes() == self.header.hash,
            "{}: corrupt grain store (its content does not match its hash); pack it again",
            self.path.display()
        );
        Ok(())
    }
}

/// The index of a store with header `h`: grains in increasing order within the disk,
/// lengths that a VMDK reader accepts, adding up to the data area.
fn parse_index(b: &[u8], h: &StoreHeader, path: &Path) -> Result<Vec<(u64, u32)>> {
    let grains = h.disk_size.div_ceil(GRAIN);
    let mut out = Vec::with_capacity(b.len() / INDEX_ENTRY as usize);
    let mut total = 0u64;
    for e in b.chunks_exact(INDEX_ENTRY as usize) {
        let g = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(e[8..].try_into().expect("4 bytes"));
        let ordered = out.last().is_none_or(|&(last, _)| g > last);
        ensure!(
            ordered && g < grains && n > 0 && (n as u64) < 2 * GRAIN,
            "{}: corrupt grain store index (entry for grain {g})",
            path.display()
        );
        total += n as u64;
        out.push((g, n));
    }
    ensure!(
        STORE_HEADER + total == h.index_offset,
        "{}: corrupt grain store index (lengths do not add up)",
        path.display()
    );
    Ok(out)
}

/// A grain the delta changes; `data_at` is where its new content starts in the delta's
/// data file, None when the new content is zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    grain: u64,
    data_at: Option<u64>,
}

/// The grains `d` changes, in increasing order, after checking that it fits the store's
/// disk (`size` bytes) and its data file `data`.
fn changed_grains(d: &Delta, data: &Path, size: u64, store: &Path) -> Result<Vec<Change>> {
    ensure!(
        d.disk_size == size,
        "the delta with data {} is for a disk of {} bytes, but the grain store {} holds a disk \
         of {size} bytes",
        data.display(),
        d.disk_size,
        store.display()
    );
    let have = std::fs::metadata(data)
        .with_context(|| format!("reading {}", data.display()))?
        .len();
    ensure!(
        have == d.data_bytes(),
        "{}: {have} bytes of delta data, its extents need {}",
        data.display(),
        d.data_bytes()
    );
    let mut out = Vec::new();
    let (mut at, mut end) = (0u64, 0u64);
    for e in &d.extents {
        let stop = e.offset.checked_add(e.len).filter(|&s| s <= size);
        ensure!(
            e.len > 0
                && e.offset.is_multiple_of(GRAIN)
                && e.offset >= end
                && stop.is_some_and(|s| s.is_multiple_of(GRAIN) || s == size),
            "the delta with data {} has an extent ({} bytes at {}) that is not whole grains \
             within the disk, in order",
            data.display(),
            e.len,
            e.offset
        );
        end = e.offset + e.len;
        for g in e.offset / GRAIN..end.div_ceil(GRAIN) {
            out.push(Change {
                grain: g,
                data_at: (!e.zero).then_some(at + g * GRAIN - e.offset),
            });
        }
        if !e.zero {
            at += e.len;
        }
    }
    Ok(out)
}

/// The delta's data file.
struct Fresh {
    file: File,
    path: PathBuf,
    size: u64,
}

impl Fresh {
    /// The new content of grain `g`, at `at` in the data file, zero-padded past the disk's
    /// end.
    fn grain(&self, g: u64, at: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; GRAIN as usize];
        let len = GRAIN.min(self.size - g * GRAIN) as usize;
        self.file
            .read_exact_at(&mut buf[..len], at)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(buf)
    }
}

/// The output file as it is laid down, sector by sector.
struct Vmdk<W: Write> {
    w: W,
    /// The next sector to be written.
    sector: u64,
    /// Disk size in sectors.
    capacity: u64,
    /// The grain tables the disk needs.
    gt_count: u64,
    /// The entries of the grain table being filled (grain marker sectors; 0 = none).
    gt: Vec<u32>,
    /// Which grain table that is.
    gt_index: u64,
    /// Sector of each grain table written so far.
    gd: Vec<u32>,
    /// The last grain written, to keep grains in increasing order.
    last: Option<u64>,
}

impl<W: Write> Vmdk<W> {
    fn new(w: W, size: u64) -> Vmdk<W> {
        let capacity = size / SECTOR;
        Vmdk {
            w,
            sector: 0,
            capacity,
            gt_count: capacity.div_ceil(GRAIN_SECTORS).div_ceil(GTES_PER_GT),
            gt: vec![0; GTES_PER_GT as usize],
            gt_index: 0,
            gd: Vec::new(),
            last: None,
        }
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        debug_assert!((b.len() as u64).is_multiple_of(SECTOR));
        self.w.write_all(b)?;
        self.sector += b.len() as u64 / SECTOR;
        Ok(())
    }

    /// The header, the descriptor and the padding up to the first grain.
    fn start(&mut self, cid: u32, name: &str) -> Result<()> {
        self.put(&sparse_header(self.capacity, GD_AT_END))?;
        self.put(&descriptor(cid, self.capacity, name)?)?;
        let pad = (OVERHEAD - self.sector) * SECTOR;
        self.put(&vec![0; pad as usize])
    }

    /// Compresses `batch` and writes its non-zero grains; empties it.
    fn grains(&mut self, batch: &mut Vec<Item>, level: u32) -> Result<()> {
        compress_all(batch, level);
        for it in batch.drain(..) {
            match it {
                Item::Zlib(g, z) => self.grain(g, &z)?,
                Item::Zero => {}
                Item::Raw(..) => unreachable!("compress_all leaves no raw grain"),
            }
        }
        crate::run::check_interrupted()
    }

    /// A grain marker (LBA, compressed size) and the zlib data, padded to a sector.
    fn grain(&mut self, g: u64, z: &[u8]) -> Result<()> {
        assert!(self.last.is_none_or(|l| g > l), "grains out of order");
        self.last = Some(g);
        self.tables_until(g / GTES_PER_GT)?;
        self.gt[(g % GTES_PER_GT) as usize] = self.here()?;
        let mut b = Vec::with_capacity(z.len() + 12 + SECTOR as usize);
        b.extend_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
        b.extend_from_slice(&(z.len() as u32).to_le_bytes());
        b.extend_from_slice(z);
        b.resize(b.len().next_multiple_of(SECTOR as usize), 0);
        self.put(&b)
    }

    /// The current sector as a table entry (tables hold 32-bit sector numbers).
    fn here(&self) -> Result<u32> {
        u32::try_from(self.sector).context("the VMDK would pass 2 TiB, beyond its tables")
    }

    /// Writes the grain tables before table `upto`: each covers grains already written.
    fn tables_until(&mut self, upto: u64) -> Result<()> {
        while self.gt_index < upto {
            self.put(&marker(GT_SECTORS, MARKER_GT))?;
            let at = self.here()?;
            self.gd.push(at);
            let gt = std::mem::replace(&mut self.gt, vec![0; GTES_PER_GT as usize]);
            self.put(&entries(&gt))?;
            self.gt_index += 1;
        }
        Ok(())
    }

    /// The remaining grain tables, the grain directory, the footer and the end of stream.
    fn finish(mut self) -> Result<()> {
        self.tables_until(self.gt_count)?;
        let gd = entries(&self.gd);
        self.put(&marker(gd.len() as u64 / SECTOR, MARKER_GD))?;
        let gd_at = self.sector;
        self.put(&gd)?;
        self.put(&marker(1, MARKER_FOOTER))?;
        self.put(&sparse_header(self.capacity, gd_at))?;
        self.put(&marker(0, MARKER_EOS))?;
        self.w.flush()?;
        Ok(())
    }
}

/// Little-endian u32 table entries, padded to whole sectors.
fn entries(v: &[u32]) -> Vec<u8> {
    let mut b: Vec<u8> = v.iter().flat_map(|e| e.to_le_bytes()).collect();
    b.resize(b.len().next_multiple_of(SECTOR as usize), 0);
    b
}

/// A metadata marker: a sector with the size of what follows (in sectors) and its type.
fn marker(sectors: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut b = [0u8; SECTOR as usize];
    b[..8].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&kind.to_le_bytes());
    b
}

/// The sparse extent header of a disk of `capacity` sectors whose grain directory is at
/// sector `gd` (GD_AT_END in the header, the real one in the footer).
fn sparse_header(capacity: u64, gd: u64) -> [u8; SECTOR as usize] {
    let mut b = [0u8; SECTOR as usize];
    b[0..4].copy_from_slice(b"KDMV");
    b[4..8].copy_from_slice(&3u32.to_le_bytes());
    b[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    b[12..20].copy_from_slice(&capacity.to_le_bytes());
    b[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    b[28..36].copy_from_slice(&1u64.to_le_bytes());
    b[36..44].copy_from_slice(&DESC_SECTORS.to_le_bytes());
    b[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    // rgdOffset (48..56) stays 0: no redundant directory in a stream.
    b[56..64].copy_from_slice(&gd.to_le_bytes());
    b[64..72].copy_from_slice(&OVERHEAD.to_le_bytes());
    // uncleanShutdown (72) is 0; then the line-end characters a text-mode transfer would
    // mangle.
    b[73..77].copy_from_slice(b"\n \r\n");
    b[77..79].copy_from_slice(&1u16.to_le_bytes());
    b
}

/// The embedded descriptor, QEMU's text (the one `qemu-img convert` writes, with the CID
/// as `pin::vmdk_cid` sets it), padded to its area.
fn descriptor(cid: u32, capacity: u64, name: &str) -> Result<Vec<u8>> {
    // QEMU's geometry: 16 heads, 63 sectors, as many cylinders as fit.
    let cylinders = capacity / (63 * 16);
    let text = format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n\
         ddb.toolsVersion = \"2147483647\"\n"
    );
    let mut b = text.into_bytes();
    ensure!(
        b.len() < (DESC_SECTORS * SECTOR) as usize,
        "the VMDK descriptor for {name} does not fit its {DESC_SECTORS} sectors"
    );
    b.resize((DESC_SECTORS * SECTOR) as usize, 0);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::delta;
    use crate::run::Cmd;

    const MIB: u64 = 1 << 20;
    /// Not a multiple of the grain: the last grain is partial.
    const SIZE: u64 = 20 * MIB + 9 * 512;

    fn have_qemu_img() -> bool {
        let ok = Cmd::new("qemu-img").arg("--version").read().is_ok();
        if !ok {
            eprintln!("qemu-img not found; skipping");
        }
        ok
    }

    /// Compressible but varied bytes: no two grains alike.
    fn noise(len: u64, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0x0f) as u8
            })
            .collect()
    }

    fn put(path: &Path, off: u64, data: &[u8]) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(data, off)
            .unwrap();
    }

    /// Data grains (across more than one batch and grain table), grains of written
    /// zeroes, holes, a partly written grain and data in the partial last grain.
    fn raw_disk(path: &Path) {
        File::create(path).unwrap().set_len(SIZE).unwrap();
        put(path, 0, &noise(2 * GRAIN, 1));
        put(path, 5 * GRAIN, &vec![0; 3 * GRAIN as usize]);
        // The grain starts in a hole: its first 8 KiB were never written.
        put(path, 9 * GRAIN + 8192 + 1000, b"a few bytes inside a grain");
        put(path, MIB, &noise(17 * MIB, 2));
        put(path, 4 * MIB, &vec![0; GRAIN as usize]);
        put(path, SIZE - 4096, &noise(4096, 3));
    }

    fn qemu_ok(vmdk: &Path, raw: &Path) {
        Cmd::new("qemu-img")
            .args(["check", "-f", "vmdk"])
            .arg(vmdk)
            .run()
            .unwrap();
        Cmd::new("qemu-img")
            .args(["compare", "-f", "vmdk", "-F", "raw"])
            .arg(vmdk)
            .arg(raw)
            .run()
            .unwrap();
        let info = Cmd::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(vmdk)
            .read()
            .unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], "vmdk");
        assert_eq!(info["virtual-size"], SIZE);
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
    }

    #[test]
    fn a_packed_disk_writes_a_vmdk_that_qemu_reads_as_the_disk() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (raw, store, out) = (
            d.path().join("disk.raw"),
            d.path().join("grains"),
            d.path().join("stream.vmdk"),
        );
        raw_disk(&raw);
        pack(&raw, &store).unwrap();
        write(&store, None, 0x1234_abcd, &out).unwrap();
        qemu_ok(&out, &raw);
        // qemu-img convert back to raw reads every grain through the footer's tables.
        let back = d.path().join("back.raw");
        Cmd::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&out)
            .arg(&back)
            .run()
            .unwrap();
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&raw).unwrap());
    }

    #[test]
    fn a_delta_on_the_store_gives_the_bytes_of_packing_the_changed_disk() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        raw_disk(&p("old.raw"));
        std::fs::copy(p("old.raw"), p("new.raw")).unwrap();
        let new = p("new.raw");
        // Changed data, a data grain zeroed, new data in a hole and in a zero grain, a
        // run across a batch and a grain table boundary, and the partial last grain.
        put(&new, GRAIN, &noise(GRAIN, 10));
        put(&new, 0, &vec![0; GRAIN as usize]);
        put(&new, 12 * GRAIN, &noise(100, 11));
        put(&new, 6 * GRAIN, &noise(GRAIN, 12));
        put(&new, 15 * MIB + 7, &noise(2 * MIB, 13));
        put(&new, 3 * MIB, &vec![0; 2 * GRAIN as usize]);
        put(&new, SIZE - 10, &noise(10, 14));
        let delta = delta::diff(&p("old.raw"), &new, &p("delta.data")).unwrap();
        assert!(delta.extents.iter().any(|e| e.zero));
        pack(&p("old.raw"), &p("old.grains")).unwrap();
        let (a, b) = (p("a/stream.vmdk"), p("b/stream.vmdk"));
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        write(&p("old.grains"), Some((&delta, &p("delta.data"))), 7, &a).unwrap();
        pack(&new, &p("new.grains")).unwrap();
        write(&p("new.grains"), None, 7, &b).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        qemu_ok(&a, &new);
    }

    #[test]
    fn writes_are_deterministic_and_carry_the_cid_in_the_stream_layout() {
        let d = tempfile::tempdir().unwrap();
        let (raw, store) = (d.path().join("disk.raw"), d.path().join("grains"));
        raw_disk(&raw);
        pack(&raw, &store).unwrap();
        let (a, b) = (d.path().join("x.vmdk"), d.path().join("y/x.vmdk"));
        std::fs::create_dir(d.path().join("y")).unwrap();
        write(&store, None, 0xdead_beef, &a).unwrap();
        write(&store, None, 0xdead_beef, &b).unwrap();
        let v = std::fs::read(&a).unwrap();
        assert!(v == std::fs::read(&b).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let desc = String::from_utf8_lossy(&v[512..512 * 21]);
        assert!(desc.contains("\nCID=deadbeef\n"), "{desc}");
        assert!(desc.contains(&format!("\nRW {} SPARSE \"x.vmdk\"\n", SIZE / 512)));
        assert_eq!(&v[..4], b"KDMV");
        assert_eq!(v[56..64], GD_AT_END.to_le_bytes());
        // The stream ends with the footer marker, the footer and the end-of-stream marker.
        let n = v.len();
        assert_eq!(n % 512, 0);
        assert_eq!(v[n - 1536..n - 1024], marker(1, MARKER_FOOTER));
        assert_eq!(&v[n - 1024..n - 1020], b"KDMV");
        assert!(v[n - 512..].iter().all(|&x| x == 0));
        let gd = u64::from_le_bytes(v[n - 1024 + 56..n - 1024 + 64].try_into().unwrap());
        assert_eq!(v[(gd as usize - 1) * 512 + 12], MARKER_GD as u8);
        // The first grain starts at the overhead, with its LBA.
        assert_eq!(v[OVERHEAD as usize * 512..][..8], 0u64.to_le_bytes());
        // pin.rs can still rewrite the CID in place.
        crate::export::pin::vmdk_cid(&a, 0x0102_0304).unwrap();
        let v = std::fs::read(&a).unwrap();
        assert!(String::from_utf8_lossy(&v[512..512 * 21]).contains("\nCID=01020304\n"));
    }

    #[test]
    fn broken_stores_and_mismatched_deltas_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        raw_disk(&p("disk.raw"));
        pack(&p("disk.raw"), &p("grains")).unwrap();
        let good = std::fs::read(p("grains")).unwrap();
        let out = p("out.vmdk");
        let err = |store: &Path| format!("{:#}", write(store, None, 1, &out).unwrap_err());

        std::fs::write(p("short"), &good[..good.len() - 1]).unwrap();
        let e = err(&p("short"));
        assert!(e.contains("short") && e.contains("truncated"), "{e}");

        let mut bad = good.clone();
        bad[STORE_HEADER as usize + 100] ^= 1;
        std::fs::write(p("flipped"), &bad).unwrap();
        let e = err(&p("flipped"));
        assert!(e.contains("flipped") && e.contains("corrupt"), "{e}");
        assert!(!out.exists(), "no output is left from a corrupt store");

        std::fs::write(p("text"), "not a grain store\n".repeat(20)).unwrap();
        let e = err(&p("text"));
        assert!(e.contains("text: not a grain store"), "{e}");
        std::fs::write(p("tiny"), b"xy").unwrap();
        let e = err(&p("tiny"));
        assert!(e.contains("tiny: not a grain store"), "{e}");
        std::fs::write(p("head"), &good[..40]).unwrap();
        let e = err(&p("head"));
        assert!(e.contains("head: truncated"), "{e}");

        let delta = Delta {
            disk_size: SIZE + 512,
            extents: vec![],
        };
        std::fs::write(p("delta.data"), b"").unwrap();
        let e = format!(
            "{:#}",
            write(&p("grains"), Some((&delta, &p("delta.data"))), 1, &out).unwrap_err()
        );
        assert!(e.contains("delta.data") && e.contains("grains"), "{e}");

        let odd = p("odd.raw");
        File::create(&odd).unwrap().set_len(MIB + 100).unwrap();
        let e = format!("{:#}", pack(&odd, &p("odd.grains")).unwrap_err());
        assert!(e.contains("odd.raw") && e.contains("512"), "{e}");
    }

    /// Times `pack` at each level in MESOBAKE_VMDK_LEVELS (default: this build's) and
    /// `write` of the raw disk at MESOBAKE_VMDK_MEASURE, writing into
    /// MESOBAKE_VMDK_MEASURE_OUT (default /var/tmp). Run in release:
    /// `MESOBAKE_VMDK_MEASURE=disk.raw cargo test --release measure -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn measure() {
        let Ok(raw) = std::env::var("MESOBAKE_VMDK_MEASURE") else {
            return;
        };
        let raw = PathBuf::from(raw);
        let dir =
            PathBuf::from(std::env::var("MESOBAKE_VMDK_MEASURE_OUT").unwrap_or("/var/tmp".into()));
        let levels = std::env::var("MESOBAKE_VMDK_LEVELS").unwrap_or(LEVEL.to_string());
        for level in levels.split(',').map(|l| l.parse::<u32>().unwrap()) {
            let store = dir.join(format!("measure-{level}.grains"));
            let t = std::time::Instant::now();
            pack_at(&raw, &store, level).unwrap();
            let size = std::fs::metadata(&store).unwrap().len();
            eprintln!(
                "level {level}: pack {:.1?}, store {size} bytes",
                t.elapsed()
            );
            if level == LEVEL {
                let out = dir.join("measure.vmdk");
                let t = std::time::Instant::now();
                write(&store, None, 1, &out).unwrap();
                let size = std::fs::metadata(&out).unwrap().len();
                eprintln!("write(None): {:.1?}, {size} bytes", t.elapsed());
            } else {
                std::fs::remove_file(&store).unwrap();
            }
        }
    }
}
