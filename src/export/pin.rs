//! Pins the header fields that `qemu-img convert` fills with random or clock values, so
//! that the same raw disk converts to the same bytes every time.
//!
//! qemu-img 7.2 writes: a random `CID` into every VMDK descriptor, two random UUIDs into
//! a VDI header, and a random UUID plus the current time into each VHD footer. VHDX has
//! GUIDs in CRC-protected headers and metadata; it is left as qemu-img writes it (see
//! the README's reproducibility table). qcow2 and raw are deterministic already.
//!
//! Replacement values come from [`derive_uuid`]: a hash of a seed (the build's input
//! fingerprint) and the field's name, so two builds from the same pinned inputs agree and
//! different images differ.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::Digest;

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;

/// A UUID derived from `seed` and `what`: the first 16 bytes of SHA256(seed NUL what),
/// marked as an RFC 9562 version-8 (custom) UUID.
pub fn derive_uuid(seed: &str, what: &str) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(what.as_bytes());
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The usual 8-4-4-4-12 text form.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `SOURCE_DATE_EPOCH` when set and valid, else 0.
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Pins what `qemu_format` leaves random in `path`. Returns whether the file is now a
/// pure function of the disk content (false for VHDX).
pub fn pin(qemu_format: &str, path: &Path, seed: &str, epoch: u64) -> Result<bool> {
    let r = match qemu_format {
        "qcow2" | "raw" => Ok(true),
        "vmdk" => vmdk_cid(path, derive_cid(seed)).map(|_| true),
        "vdi" => vdi_uuids(path, seed).map(|_| true),
        "vpc" => vhd_footers(path, seed, epoch).map(|_| true),
        _ => Ok(false),
    };
    r.with_context(|| format!("pinning the {qemu_format} header of {}", path.display()))
}

/// The VMDK descriptor's CID for a build seeded with `seed` (the streamOptimized writer
/// writes it directly; qemu-img's VMDKs are pinned to it).
pub fn derive_cid(seed: &str) -> u32 {
    u32::from_be_bytes(first4(seed, "vmdk-cid"))
}

fn first4(seed: &str, what: &str) -> [u8; 4] {
    let u = derive_uuid(seed, what);
    [u[0], u[1], u[2], u[3]]
}

fn read_at(f: &mut File, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut b)?;
    Ok(b)
}

fn write_at(f: &mut File, off: u64, data: &[u8]) -> Result<()> {
    f.seek(SeekFrom::Start(off))?;
    f.write_all(data)?;
    Ok(())
}

/// Rewrites the `CID=` line of a hosted sparse VMDK's embedded descriptor
/// (monolithicSparse and streamOptimized both carry it after the sparse header).
pub fn vmdk_cid(path: &Path, cid: u32) -> Result<()> {
    let mut f = File::options().read(true).write(true).open(path)?;
    let hdr = read_at(&mut f, 0, 512)?;
    if &hdr[..4] != b"KDMV" {
        bail!("not a hosted sparse VMDK (no KDMV magic)");
    }
    let sectors = |o: usize| u64::from_le_bytes(hdr[o..o + 8].try_into().expect("8 bytes"));
    let (off, len) = (sectors(28) * 512, sectors(36) * 512);
    if off == 0 || len == 0 || len > 1 << 20 {
        bail!("VMDK header has no embedded descriptor");
    }
    let area = read_at(&mut f, off, len as usize)?;
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = std::str::from_utf8(&area[..end]).context("VMDK descriptor is not text")?;
    let mut out = String::new();
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("CID=") {
            out += &format!("CID={cid:08x}\n");
            found = true;
        } else {
            out += line;
        }
    }
    if !found {
        bail!("VMDK descriptor has no CID line");
    }
    if out.len() > area.len() {
        bail!("pinned VMDK descriptor does not fit its area");
    }
    let mut new = out.into_bytes();
    new.resize(area.len(), 0);
    write_at(&mut f, off, &new)
}

/// Sets the VDI image and last-snapshot UUIDs (header offsets 0x188 and 0x198).
pub fn vdi_uuids(path: &Path, seed: &str) -> Result<()> {
    let mut f = File::options().read(true).write(true).open(path)?;
    let hdr = read_at(&mut f, 0, 0x1a8)?;
    if hdr[0x40..0x44] != 0xbeda_107fu32.to_le_bytes() {
        bail!("not a VDI (bad signature)");
    }
    write_at(&mut f, 0x188, &derive_uuid(seed, "vdi-image"))?;
    write_at(&mut f, 0x198, &derive_uuid(seed, "vdi-last-snapshot"))
}

/// Sets the timestamp and UUID of each VHD footer (the copy at the start of a dynamic
/// disk and the one at the end of every VHD) and recomputes its checksum.
pub fn vhd_footers(path: &Path, seed: &str, epoch: u64) -> Result<()> {
    let mut f = File::options().read(true).write(true).open(path)?;
    let size = f.metadata()?.len();
    if size < 512 {
        bail!("too short for a VHD");
    }
    let uuid = derive_uuid(seed, "vhd");
    let stamp = (epoch.saturating_sub(VHD_EPOCH) as u32).to_be_bytes();
    let mut fixed = 0;
    for off in [0, size - 512] {
        let mut ft = read_at(&mut f, off, 512)?;
        if &ft[..8] != b"conectix" {
            continue;
        }
        ft[24..28].copy_from_slice(&stamp);
        ft[68..84].copy_from_slice(&uuid);
        ft[64..68].fill(0);
        let sum: u32 = ft[..512].iter().map(|&b| b as u32).sum();
        ft[64..68].copy_from_slice(&(!sum).to_be_bytes());
        write_at(&mut f, off, &ft)?;
        fixed += 1;
    }
    if fixed == 0 {
        bail!("no VHD footer found");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_stable_and_versioned() {
        let a = derive_uuid("seed", "x");
        assert_eq!(a, derive_uuid("seed", "x"));
        assert_ne!(a, derive_uuid("seed", "y"));
        let s = uuid_string(&a);
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "8");
    }
}
