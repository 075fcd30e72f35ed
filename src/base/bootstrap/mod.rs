//! Bootstrapped bases: a cloud-image-like disk built from a distribution archive.
//!
//! The disk has the layout of Debian's and Ubuntu's cloud images: GPT with a BIOS boot
//! partition (14), an ESP (15) and an ext4 root (1), kernel, grub, cloud-init. It is
//! made without mounting anything, because this machine's kernel can neither mount
//! vfat nor parse partition tables:
//! 1. `mmdebstrap` into a directory, with hooks that write fstab, grub config and the
//!    boot loader images (made by the target's own `grub-mkimage`);
//! 2. the ESP as a FAT file (`mkfs.vfat`, `mcopy`), the root as an ext4 file
//!    (`mkfs.ext4 -d`), both copied into a GPT disk file made with `sgdisk`;
//! 3. grub's `boot.img` and `core.img` written the way `grub-bios-setup` writes them
//!    (which itself refuses to work on a plain file).
//!
//! The result is cached as a layer keyed by everything that shapes it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cache::Cache;
use super::NamedBase;
use crate::image::guard;
use crate::run::Cmd;

const ESSENTIAL_HOOK: &str = include_str!("essential-hook.sh");
const CUSTOMIZE_HOOK: &str = include_str!("customize-hook.sh");

/// Bump when the recipe changes in a way the key would not see.
const RECIPE: &str = "mesobake-bootstrap-1";
/// Packages beyond minbase: what a cloud image has.
const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "cloud-guest-utils",
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "grub-pc",
    "grub-efi-amd64-bin",
    "locales",
    "sudo",
    "python3",
    "ca-certificates",
    "iproute2",
    "procps",
    "curl",
    "e2fsprogs",
    "netbase",
    "less",
    "vim-tiny",
    "dbus",
    "libpam-systemd",
    "systemd-timesyncd",
];
/// The base disk's virtual size; builds grow it to the profile's disk size.
const DISK_SIZE: u64 = 3 << 30;
/// Sector layout, as Debian's cloud images: BIOS boot 1-4 MiB, ESP 4-128 MiB, root after.
const BIOS_START: u64 = 2048;
const BIOS_END: u64 = 8191;
const ESP_START: u64 = 8192;
const ESP_END: u64 = 262143;
const ROOT_START: u64 = 262144;

/// Deterministic identifiers derived from the cache key, so the same inputs give the same
/// disk ids.
struct Ids {
    root_uuid: String,
    esp_serial: String,
    esp_uuid: String,
    disk_guid: String,
    part_guids: [(u32, String); 3],
}

fn guid_from(seed: &str) -> String {
    let h = hex::encode(Sha256::digest(seed.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Ids {
    fn new(key: &str) -> Ids {
        let root_uuid = guid_from(&format!("root {key}"));
        let esp_serial = root_uuid[..8].to_uppercase();
        let esp_uuid = format!("{}-{}", &esp_serial[..4], &esp_serial[4..]);
        Ids {
            esp_uuid,
            esp_serial,
            disk_guid: guid_from(&format!("disk {key}")),
            part_guids: [1, 14, 15].map(|n| (n, guid_from(&format!("part{n} {key}")))),
            root_uuid,
        }
    }
}

/// The cache key of a bootstrapped base: every input that shapes it.
pub fn key(nb: &NamedBase, mirror: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [
        RECIPE,
        nb.name,
        nb.codename,
        mirror.unwrap_or(""),
        ESSENTIAL_HOOK,
        CUSTOMIZE_HOOK,
        &PACKAGES.join(","),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(DISK_SIZE.to_le_bytes());
    hex::encode(h.finalize())
}

/// Returns the cached bootstrapped base `nb`, building it first on a miss.
pub fn bootstrap(cache: &Cache, nb: &NamedBase, mirror: Option<&str>) -> Result<PathBuf> {
    let key = key(nb, mirror);
    let _lock = cache.lock_entry(&format!("bootstrap-{key}"))?;
    if let Some(dir) = cache.layer_get("base", &key) {
        let disk = dir.join("disk.qcow2");
        if disk.is_file() {
            super::gc::touch(&dir);
            if crate::run::verbose() {
                eprintln!(
                    "mesobake: base {} found in the cache ({})",
                    nb.name,
                    dir.display()
                );
            }
            return Ok(disk);
        }
    }
    let tmp = cache
        .tmp_dir()
        .join(format!("bootstrap-{}-{}", &key[..12], std::process::id()));
    let _ = guard::remove_work_dir(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let built = build(nb, mirror, &key, &tmp);
    let result = built.and_then(|()| {
        // Only the disk and its manifest go into the cache; the tree and pieces are scratch.
        let layer = tmp.join("layer");
        std::fs::create_dir_all(&layer)?;
        std::fs::rename(tmp.join("disk.qcow2"), layer.join("disk.qcow2"))?;
        let manifest = serde_json::json!({
            "kind": "base",
            "name": nb.name,
            "codename": nb.codename,
            "mirror": mirror,
            "recipe": RECIPE,
            "packages": PACKAGES,
            "disk_size": DISK_SIZE,
            "key": key,
            "sha256": super::cache::sha256_file(&layer.join("disk.qcow2"))?,
        });
        std::fs::write(
            layer.join(super::cache::LAYER_MANIFEST),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        cache.publish_dir(&layer, "base", &key)
    });
    // The scratch tree held mmdebstrap's chroot. A stopped mmdebstrap can leave its
    // /proc, /sys and /dev mounts there; unmount those, then remove the tree (which
    // refuses if anything is still mounted).
    let cleaned = guard::unmount_all_under(&tmp).and_then(|()| guard::remove_work_dir(&tmp));
    let dir = result?;
    cleaned?;
    Ok(dir.join("disk.qcow2"))
}

fn build(nb: &NamedBase, mirror: Option<&str>, key: &str, tmp: &Path) -> Result<()> {
    let ids = Ids::new(key);
    let root = tmp.join("root");
    std::fs::write(tmp.join("essential-hook.sh"), ESSENTIAL_HOOK)?;
    std::fs::write(tmp.join("customize-hook.sh"), CUSTOMIZE_HOOK)?;
    let sources = mirror
        .map(|m| {
            format!(
                "deb {m} {c} main\ndeb {m} {c}-updates main",
                c = nb.codename
            )
        })
        .unwrap_or_default();
    let mut cmd = Cmd::new("mmdebstrap")
        .args(["--mode=root", "--variant=minbase", "--components=main"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        ])
        .arg(format!(
            "--essential-hook=sh {} \"$1\"",
            tmp.join("essential-hook.sh").display()
        ))
        .arg(format!(
            "--customize-hook=sh {} \"$1\"",
            tmp.join("customize-hook.sh").display()
        ))
        .env("MESOBAKE_ROOT_UUID", &ids.root_uuid)
        .env("MESOBAKE_ESP_UUID", &ids.esp_uuid)
        .env("MESOBAKE_WORK", tmp)
        .env("MESOBAKE_APT_SOURCES", &sources)
        .arg(nb.codename)
        .arg(&root);
    if let Some(m) = mirror {
        cmd = cmd.arg(m);
    }
    eprintln!(
        "mesobake:   mmdebstrap {} (this takes a minute or two)",
        nb.codename
    );
    cmd.run()
        .with_context(|| format!("bootstrapping {} with mmdebstrap", nb.codename))?;

    let disk = tmp.join("disk.raw");
    File::create(&disk)?.set_len(DISK_SIZE)?;
    let mut sg = Cmd::new("sgdisk").args(["-a", "2048", "-U", &ids.disk_guid]);
    sg = sg.args([
        "-n".to_string(),
        format!("14:{BIOS_START}:{BIOS_END}"),
        "-t".into(),
        "14:ef02".into(),
        "-c".into(),
        "14:bios".into(),
        "-n".into(),
        format!("15:{ESP_START}:{ESP_END}"),
        "-t".into(),
        "15:ef00".into(),
        "-c".into(),
        "15:esp".into(),
        "-n".into(),
        format!("1:{ROOT_START}:0"),
        "-t".into(),
        "1:8300".into(),
        "-c".into(),
        "1:root".into(),
    ]);
    for (n, g) in &ids.part_guids {
        sg = sg.arg("-u").arg(format!("{n}:{g}"));
    }
    sg.arg(&disk).run().context("writing the partition table")?;
    let parts = crate::image::disk::partitions(&disk)?;
    let part = |n: u32| {
        parts
            .iter()
            .find(|p| p.number == n)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("partition {n} missing"))
    };
    let (bios, esp, rootp) = (part(14)?, part(15)?, part(1)?);

    // ESP: a FAT file with grub's EFI image, never mounted.
    let esp_img = tmp.join("esp.img");
    Cmd::new("mkfs.vfat")
        .args([
            "-C",
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-i",
            &ids.esp_serial,
            "-n",
            "EFI",
        ])
        .arg(&esp_img)
        .arg((esp.size / 1024).to_string())
        .run()
        .context("making the ESP")?;
    let img = esp_img.to_string_lossy().into_owned();
    Cmd::new("mmd")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &img, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"])
        .run()?;
    let efi = tmp.join("grubx64.efi");
    for dest in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/debian/grubx64.efi"] {
        Cmd::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &img])
            .arg(&efi)
            .arg(dest)
            .run()?;
    }
    copy_into(&esp_img, &disk, esp.offset)?;

    // Root: an ext4 file populated from the tree. A fixed hash seed and UUID keep it
    // reproducible.
    let root_img = tmp.join("root.img");
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .args(["-U", &ids.root_uuid, "-L", "cloudimg-rootfs", "-E"])
        .arg(format!("hash_seed={},nodiscard", ids.root_uuid))
        .args(["-b", "4096", "-i", "16384", "-m", "1"])
        .arg(&root_img)
        .arg(format!("{}k", rootp.size / 1024))
        .run()
        .context("making the root filesystem")?;
    Cmd::new("e2fsck")
        .arg("-fn")
        .arg(&root_img)
        .run()
        .context("checking the new root filesystem")?;
    copy_into(&root_img, &disk, rootp.offset)?;

    install_bios_grub(
        &disk,
        bios.offset / 512,
        bios.size / 512,
        &tmp.join("boot.img"),
        &tmp.join("core.img"),
    )?;
    let check = Cmd::new("sgdisk").arg("-v").arg(&disk).read()?;
    if !check.contains("No problems found") {
        bail!("the new partition table does not verify:\n{check}");
    }
    Cmd::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&disk)
        .arg(tmp.join("disk.qcow2"))
        .run()
        .context("converting the base to qcow2")?;
    Ok(())
}

/// Copies `src` into `disk` at `offset`, skipping all-zero blocks so both stay sparse.
fn copy_into(src: &Path, disk: &Path, offset: u64) -> Result<()> {
    let mut r = File::open(src).with_context(|| format!("reading {}", src.display()))?;
    let mut w = std::fs::OpenOptions::new().write(true).open(disk)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        crate::run::check_interrupted()?;
        let n = read_full(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            w.seek(SeekFrom::Start(pos))?;
            w.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    w.sync_all()?;
    Ok(())
}

fn read_full(r: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes grub's BIOS boot code the way `grub-bios-setup` does for a GPT disk with a
/// BIOS boot partition: `core.img` into that partition, with its first sector's
/// blocklist pointing at the rest of it, and `boot.img`'s code into the protective MBR
/// (keeping the MBR's partition table), pointed at `core.img`.
pub fn install_bios_grub(
    disk: &Path,
    part_lba: u64,
    part_sectors: u64,
    boot_img: &Path,
    core_img: &Path,
) -> Result<()> {
    let boot =
        std::fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
    let mut core =
        std::fs::read(core_img).with_context(|| format!("reading {}", core_img.display()))?;
    if boot.len() != 512 {
        bail!(
            "{} is {} bytes, expected 512",
            boot_img.display(),
            boot.len()
        );
    }
    let sectors = core.len().div_ceil(512) as u64;
    if sectors > part_sectors {
        bail!("core.img needs {sectors} sectors, the BIOS boot partition has {part_sectors}");
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    // grub-mkimage leaves diskboot's blocklist for the classic MBR gap: start 2,
    // length sectors-1, load segment 0x820. Only the start moves.
    if u64_at(&core, 0x1f4) != 2
        || u64::from(u16_at(&core, 0x1fc)) != sectors - 1
        || u16_at(&core, 0x1fe) != 0x820
    {
        bail!(
            "{}: unexpected diskboot blocklist; is it an i386-pc core.img?",
            core_img.display()
        );
    }
    core[0x1f4..0x1fc].copy_from_slice(&(part_lba + 1).to_le_bytes());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    f.seek(SeekFrom::Start(part_lba * 512))?;
    f.write_all(&core)?;
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut mbr)?;
    // boot.img code: the jump (0x000-0x002) and the code after the BPB (0x05a-0x1b7);
    // the BPB area and the partition table stay as sgdisk wrote them.
    mbr[..3].copy_from_slice(&boot[..3]);
    mbr[0x5a..0x1b8].copy_from_slice(&boot[0x5a..0x1b8]);
    mbr[0x5c..0x64].copy_from_slice(&part_lba.to_le_bytes()); // kernel_sector: core.img
    mbr[0x64] = 0xff; // boot_drive: use the drive the BIOS booted from
    mbr[0x66] = 0x90; // NOP NOP over the floppy probe jump: this is a hard disk
    mbr[0x67] = 0x90;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_well_formed() {
        let a = Ids::new("k");
        let b = Ids::new("k");
        assert_eq!(a.root_uuid, b.root_uuid);
        assert_ne!(a.root_uuid, Ids::new("other").root_uuid);
        assert_eq!(a.root_uuid.len(), 36);
        assert_eq!(a.esp_uuid.len(), 9);
        assert_eq!(a.esp_serial, a.esp_uuid.replace('-', ""));
    }

    #[test]
    fn bios_grub_is_written_like_grub_bios_setup() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk");
        let mut mbr = vec![0xAAu8; 512];
        mbr[0x1fe] = 0x55;
        let mut image = mbr.clone();
        image.resize(8192 * 512, 0);
        std::fs::write(&disk, &image).unwrap();
        let boot: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("boot.img"), &boot).unwrap();
        let mut core = vec![0x11u8; 3 * 512];
        core[0x1f4..0x1fc].copy_from_slice(&2u64.to_le_bytes());
        core[0x1fc..0x1fe].copy_from_slice(&2u16.to_le_bytes());
        core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
        std::fs::write(d.path().join("core.img"), &core).unwrap();
        install_bios_grub(
            &disk,
            2048,
            6144,
            &d.path().join("boot.img"),
            &d.path().join("core.img"),
        )
        .unwrap();
        let out = std::fs::read(&disk).unwrap();
        assert_eq!(&out[..3], &boot[..3]);
        assert_eq!(&out[3..0x5a], &mbr[3..0x5a], "BPB area kept");
        assert_eq!(&out[0x1b8..512], &mbr[0x1b8..512], "partition table kept");
        assert_eq!(
            u64::from_le_bytes(out[0x5c..0x64].try_into().unwrap()),
            2048
        );
        assert_eq!(out[0x64], 0xff);
        let c = &out[2048 * 512..2048 * 512 + 3 * 512];
        assert_eq!(
            u64::from_le_bytes(c[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );
        assert_eq!(&c[0x200..], &core[0x200..]);
        // A core.img that is not grub's is refused.
        std::fs::write(d.path().join("core.img"), vec![0u8; 1024]).unwrap();
        assert!(install_bios_grub(
            &disk,
            2048,
            6144,
            &d.path().join("boot.img"),
            &d.path().join("core.img")
        )
        .is_err());
    }
}
