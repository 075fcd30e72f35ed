//! Bootstrapped bases: a cloud-image-like disk built from a distribution archive.
//!
//! The disk has the layout of a cloud image: GPT with a BIOS boot partition (14), an ESP
//! (15), an ext4 root (1) and, in Ubuntu's layout, a separate ext4 `/boot` (16), with
//! kernel, grub and cloud-init. Bootstrapped bases differ only in a small [`Layout`];
//! the build is shared. It is made without mounting anything, because this machine's
//! kernel can neither mount vfat nor parse partition tables:
//! 1. `mmdebstrap` into a directory, with hooks that write fstab, grub config and the
//!    boot loader images (made by the target's own `grub-mkimage`);
//! 2. the ESP as a FAT file (`mkfs.vfat`, `mcopy`), the root (and a separate /boot) as
//!    ext4 files (`mkfs.ext4 -d`), all copied into a GPT disk file made with `sgdisk`;
//! 3. grub's `boot.img` and `core.img` written the way `grub-bios-setup` writes them
//!    (which itself refuses to work on a plain file).
//!
//! The result is cached as a layer keyed by everything that shapes it, with its SHA256
//! (the base's identity in every later key) and its content digest, which is checked
//! before every use (see [`cached`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cache::Cache;
use super::digest;
use super::NamedBase;
use crate::image::disk::Partition;
use crate::image::guard;
use crate::run::Cmd;

const ESSENTIAL_HOOK: &str = include_str!("essential-hook.sh");
const CUSTOMIZE_HOOK: &str = include_str!("customize-hook.sh");

/// Bump when the recipe changes in a way the key would not see.
const RECIPE: &str = "mesobake-bootstrap-2";
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

/// How fstab and the kernel command line name the filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameBy {
    /// `UUID=...`, as Debian's cloud images.
    Uuid,
    /// `LABEL=...`, as Ubuntu's cloud images.
    Label,
}

/// One partition of a bootstrapped disk.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// GPT partition number.
    pub number: u32,
    /// First sector (512 bytes).
    pub start: u64,
    /// Last sector, inclusive; 0 for "up to the end of the disk".
    pub end: u64,
    /// sgdisk type code.
    pub type_code: &'static str,
    /// GPT partition name; empty for none.
    pub name: &'static str,
    /// Filesystem label; empty for none.
    pub label: &'static str,
    /// fstab options, dump and pass (mounted filesystems only).
    pub fstab: &'static str,
}

/// The disk layout of a bootstrapped base: all that the bootstrapped bases of one release
/// differ in. The whole description is part of the cache key.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Short name, for the manifest.
    pub id: &'static str,
    /// The base disk's virtual size; builds grow it to the profile's disk size.
    pub disk_size: u64,
    /// BIOS boot partition (grub's core.img).
    pub bios: Part,
    /// EFI system partition (FAT, built as a file, never mounted here), at /boot/efi.
    pub esp: Part,
    /// A separate ext4 /boot, when the layout has one.
    pub boot: Option<Part>,
    /// The ext4 root. It must be physically last, so that a build (or growpart at first
    /// boot) can grow it into the rest of a larger disk.
    pub root: Part,
    /// How fstab and the kernel command line name the filesystems.
    pub name_by: NameBy,
}

/// Debian's cloud-image layout: BIOS boot 1-4 MiB, ESP 4-128 MiB, root after; fstab and
/// `root=` by UUID.
pub const DEBIAN: Layout = Layout {
    id: "debian",
    disk_size: 3 << 30,
    bios: Part {
        number: 14,
        start: 2048,
        end: 8191,
        type_code: "ef02",
        name: "bios",
        label: "",
        fstab: "",
    },
    esp: Part {
        number: 15,
        start: 8192,
        end: 262143,
        type_code: "ef00",
        name: "esp",
        label: "EFI",
        fstab: "umask=0077,nofail 0 2",
    },
    boot: None,
    root: Part {
        number: 1,
        start: 262144,
        end: 0,
        type_code: "8300",
        name: "root",
        label: "cloudimg-rootfs",
        fstab: "rw,discard,errors=remount-ro 0 1",
    },
    name_by: NameBy::Uuid,
};

/// The Ubuntu 24.04 (noble) cloud image's disk layout, so that builds can be tested
/// against it here, where Ubuntu's images cannot be downloaded. The system on it stays
/// Debian 12. What it copies, and where that comes from (Ubuntu's image build,
/// livecd-rootfs, as stored in the lubuntu-team/livecd-rootfs mirror):
/// - `live-build/ubuntu-cpc/hooks.d/base/disk-image-uefi.binary` (amd64): the image is
///   3.5 GiB (`IMAGE_SIZE=3758096384`); partitions are created in the order 14 (BIOS
///   boot, `+4M`, ef02), 15 (ESP, `+106M`, ef00), the boot partition (ending at 1 GiB,
///   type ea00 = XBOOTLDR), then 1 (root, the rest: physically last, so growpart can
///   grow it), with no partition names. The ESP is `mkfs.vfat -F 32 -n UEFI`, /boot is
///   `mkfs.ext4 -L BOOT`, and fstab gets `LABEL=BOOT /boot ext4 defaults 0 2` and
///   `LABEL=UEFI /boot/efi vfat umask=0077 0 1`. grub-install runs with the BOOT
///   filesystem mounted on /boot, so grub's prefix is `/grub` on that filesystem,
///   grub.cfg lives there and its kernel paths are relative to it (`/vmlinuz-...`).
/// - `debian/changelog`: 23.10.41 "create a new boot partition on all UEFI
///   cloud-images"; 24.10.10 "Shift down boot partition to 13 to support systems which
///   don't handle partition numbers higher than 15 (LP: #2072929)". So noble numbers it
///   16; the mirror's current hook is the later one (13, created first, 1023 MiB). The
///   noble sizes agree with the `lsblk` of a noble image in canonical/lxd PR #16086:
///   sda1 /, sda14 4M, sda15 106M /boot/efi, sda16 913M /boot (111 MiB to 1 GiB).
/// - `live-build/functions`: `make_ext4_partition` labels the root with `FS_LABEL`
///   (`cloudimg-rootfs` in the cloud hooks); `replace_grub_root_with_label` rewrites
///   `root=` in grub.cfg to `root=LABEL=cloudimg-rootfs`; `mount_disk_image` mounts the
///   boot partition only if its type is XBOOTLDR (BC13C2FF-59E6-4262-A352-B275FD6F7172).
/// - The root's fstab entry, `LABEL=cloudimg-rootfs / ext4
///   discard,commit=30,errors=remount-ro 0 1`, is as noble images carry it (users'
///   copies of noble fstabs beside their 913M sda16); the `999-cpc-fixes.chroot`
///   versions in the mirror write older options, so this one is not from Ubuntu's source.
pub const UBUNTU_2404: Layout = Layout {
    id: "ubuntu-24.04",
    disk_size: 3584 << 20,
    bios: Part {
        number: 14,
        start: 2048,
        end: 10239,
        type_code: "ef02",
        name: "",
        label: "",
        fstab: "",
    },
    esp: Part {
        number: 15,
        start: 10240,
        end: 227327,
        type_code: "ef00",
        name: "",
        label: "UEFI",
        fstab: "umask=0077 0 1",
    },
    boot: Some(Part {
        number: 16,
        start: 227328,
        end: 2097151,
        type_code: "ea00",
        name: "",
        label: "BOOT",
        fstab: "defaults 0 2",
    }),
    root: Part {
        number: 1,
        start: 2097152,
        end: 0,
        type_code: "8300",
        name: "",
        label: "cloudimg-rootfs",
        fstab: "discard,commit=30,errors=remount-ro 0 1",
    },
    name_by: NameBy::Label,
};

impl Layout {
    /// The partitions in the order they lie on the disk (root last).
    fn parts(&self) -> Vec<Part> {
        let mut v = vec![self.bios, self.esp];
        v.extend(self.boot);
        v.push(self.root);
        v
    }

    fn spec(&self, p: &Part, uuid: &str) -> String {
        match self.name_by {
            NameBy::Label => format!("LABEL={}", p.label),
            NameBy::Uuid => format!("UUID={uuid}"),
        }
    }

    /// The image's /etc/fstab.
    fn fstab(&self, ids: &Ids) -> String {
        let line = |p: &Part, uuid: &str, target: &str, fs: &str| {
            let (opts, rest) = p.fstab.split_once(' ').unwrap_or((p.fstab, "0 0"));
            format!("{}\t{target}\t{fs}\t{opts}\t{rest}\n", self.spec(p, uuid))
        };
        let mut t =
            String::from("# <file system>\t<mount point>\t<type>\t<options>\t<dump> <pass>\n");
        t += &line(&self.root, &ids.root_uuid, "/", "ext4");
        if let Some(b) = &self.boot {
            t += &line(b, &ids.boot_uuid, "/boot", "ext4");
        }
        t += &line(&self.esp, &ids.esp_uuid, "/boot/efi", "vfat");
        t
    }

    /// What grub needs: the UUID of the filesystem that holds /boot, the path of /boot's
    /// contents in it, and the kernel's `root=`.
    fn grub(&self, ids: &Ids) -> (String, &'static str, String) {
        let kernel_root = self.spec(&self.root, &ids.root_uuid);
        match self.boot {
            Some(_) => (ids.boot_uuid.clone(), "", kernel_root),
            None => (ids.root_uuid.clone(), "/boot", kernel_root),
        }
    }
}

/// The layout a named bootstrapped base uses.
pub fn layout_of(nb: &NamedBase) -> &'static Layout {
    nb.layout.unwrap_or(&DEBIAN)
}

/// Deterministic identifiers derived from the cache key, so the same inputs give the same
/// disk ids.
struct Ids {
    root_uuid: String,
    boot_uuid: String,
    esp_serial: String,
    esp_uuid: String,
    disk_guid: String,
    part_guids: Vec<(u32, String)>,
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
    fn new(key: &str, layout: &Layout) -> Ids {
        let root_uuid = guid_from(&format!("root {key}"));
        let esp_serial = root_uuid[..8].to_uppercase();
        let esp_uuid = format!("{}-{}", &esp_serial[..4], &esp_serial[4..]);
        Ids {
            esp_uuid,
            esp_serial,
            boot_uuid: guid_from(&format!("boot {key}")),
            disk_guid: guid_from(&format!("disk {key}")),
            part_guids: layout
                .parts()
                .iter()
                .map(|p| (p.number, guid_from(&format!("part{} {key}", p.number))))
                .collect(),
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
        &format!("{:?}", layout_of(nb)),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The layer kind bootstrapped bases are cached as.
const BASE: &str = "base";

/// Returns the cached bootstrapped base `nb` and its SHA256, building it first on a miss
/// (or when the cached one is damaged).
pub fn bootstrap(cache: &Cache, nb: &NamedBase, mirror: Option<&str>) -> Result<(PathBuf, String)> {
    let key = key(nb, mirror);
    let layout = layout_of(nb);
    let _lock = cache.lock_entry(&format!("bootstrap-{key}"))?;
    let report = |msg: &str| eprintln!("mesobake: base {}: {msg}", nb.name);
    if let Some((disk, sha256)) = cached(cache, &key, report)? {
        if crate::run::verbose() {
            eprintln!(
                "mesobake: base {} found in the cache ({})",
                nb.name,
                disk.display()
            );
        }
        return Ok((disk, sha256));
    }
    let tmp = cache
        .tmp_dir()
        .join(format!("bootstrap-{}-{}", &key[..12], std::process::id()));
    let _ = guard::remove_work_dir(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let built = build(nb, layout, mirror, &key, &tmp);
    let result = built.and_then(|()| {
        // Only the disk and its manifest go into the cache; the tree and pieces are scratch.
        let layer = tmp.join("layer");
        std::fs::create_dir_all(&layer)?;
        let disk = layer.join("disk.qcow2");
        std::fs::rename(tmp.join("disk.qcow2"), &disk)?;
        let sha256 = super::cache::sha256_file(&disk)?;
        let manifest = serde_json::json!({
            "kind": "base",
            "name": nb.name,
            "codename": nb.codename,
            "mirror": mirror,
            "recipe": RECIPE,
            "packages": PACKAGES,
            "layout": layout.id,
            "disk_size": layout.disk_size,
            "key": key,
            "sha256": sha256,
            // From the file the rename of `layer` publishes, in this process (see digest).
            "digest": digest::extent_digest(&disk)?,
        });
        std::fs::write(
            layer.join(super::cache::LAYER_MANIFEST),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        cache.publish_dir(&layer, BASE, &key)
    });
    // The scratch tree held mmdebstrap's chroot. A stopped mmdebstrap can leave its
    // /proc, /sys and /dev mounts there; unmount those, then remove the tree (which
    // refuses if anything is still mounted).
    let cleaned = guard::unmount_all_under(&tmp).and_then(|()| guard::remove_work_dir(&tmp));
    let dir = result?;
    cleaned?;
    match cached(cache, &key, report)? {
        Some(found) => Ok(found),
        None => bail!(
            "the base just bootstrapped into {} is damaged",
            dir.display()
        ),
    }
}

/// The cached base layer `key`, verified: its disk and its SHA256 (the base's identity:
/// every provisioned layer's key names it, so it must be the SHA256 of the bytes used).
/// The disk's content digest is re-computed on every call and compared with the
/// manifest's; a layer an older mesobake cached has no digest, so its SHA256 is checked
/// instead and the digest recorded. A damaged layer (missing disk, unreadable manifest,
/// either digest wrong) is reported to `report`, naming both digests, and dropped; the
/// caller bootstraps it again.
pub fn cached(
    cache: &Cache,
    key: &str,
    report: impl FnOnce(&str),
) -> Result<Option<(PathBuf, String)>> {
    let Some(dir) = cache.layer_get(BASE, key) else {
        return Ok(None);
    };
    match verify(cache, &dir) {
        Ok(found) => {
            super::gc::touch(&dir);
            Ok(Some(found))
        }
        Err(e) => {
            report(&format!(
                "cached base layer {} is damaged ({e:#}); dropping it and bootstrapping it again",
                &key[..key.len().min(12)]
            ));
            cache.remove_layer(BASE, key)?;
            Ok(None)
        }
    }
}

fn verify(cache: &Cache, dir: &Path) -> Result<(PathBuf, String)> {
    let path = dir.join(super::cache::LAYER_MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).context("reading its manifest")?)
            .context("reading its manifest")?;
    let field = |k: &str| manifest[k].as_str().unwrap_or_default().to_string();
    let (sha256, recorded) = (field("sha256"), field("digest"));
    let disk = dir.join("disk.qcow2");
    if !disk.is_file() {
        bail!("disk.qcow2 is missing");
    }
    if sha256.is_empty() {
        bail!("its manifest records no sha256");
    }
    // Why the extent digest rather than the SHA256 on every build: BLAKE3 over the data
    // is 3 to 4 times faster here (0.22 s against 0.78 s for the warm 465 MiB base, see
    // ci/bench/verify-cost.sh), and it was recorded from the same bytes the SHA256 was.
    if !recorded.is_empty() {
        digest::verify(&disk, &recorded).context("disk.qcow2 changed")?;
        return Ok((disk, sha256));
    }
    let actual = super::cache::sha256_file(&disk)?;
    if actual != sha256 {
        bail!(digest::Mismatch {
            expected: format!("sha256:{sha256}"),
            found: format!("sha256:{actual}"),
        });
    }
    // Proven good by its SHA256: record the faster digest for the next build. Failing
    // to only costs a SHA256 next time.
    manifest["digest"] = digest::extent_digest(&disk)?.into();
    let _ = (|| -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(cache.tmp_dir())?;
        tmp.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)?;
        Ok(())
    })();
    Ok((disk, sha256))
}

/// The sgdisk arguments that create `layout`'s partitions with `ids`' GUIDs.
fn sgdisk_args(layout: &Layout, ids: &Ids) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-a".into(),
        "2048".into(),
        "-U".into(),
        ids.disk_guid.clone(),
    ];
    for p in layout.parts() {
        let n = p.number;
        a.push("-n".into());
        a.push(format!("{n}:{}:{}", p.start, p.end));
        a.push("-t".into());
        a.push(format!("{n}:{}", p.type_code));
        if !p.name.is_empty() {
            a.push("-c".into());
            a.push(format!("{n}:{}", p.name));
        }
    }
    for (n, g) in &ids.part_guids {
        a.push("-u".into());
        a.push(format!("{n}:{g}"));
    }
    a
}

/// Builds the disk in `tmp` (`disk.qcow2`), in the steps the module docs list.
fn build(
    nb: &NamedBase,
    layout: &Layout,
    mirror: Option<&str>,
    key: &str,
    tmp: &Path,
) -> Result<()> {
    let ids = Ids::new(key, layout);
    let root = tmp.join("root");
    mmdebstrap(nb, layout, mirror, &ids, tmp, &root)?;
    let disk = tmp.join("disk.raw");
    let parts = partition(layout, &ids, &disk)?;
    let part = |n: u32| {
        parts
            .iter()
            .find(|p| p.number == n)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("partition {n} missing"))
    };
    let (bios, esp, rootp) = (
        part(layout.bios.number)?,
        part(layout.esp.number)?,
        part(layout.root.number)?,
    );
    write_esp(layout, &ids, tmp, &disk, &esp)?;
    if let Some(b) = &layout.boot {
        write_boot(b, &ids, tmp, &root, &disk, &part(b.number)?)?;
    }
    write_root(layout, &ids, tmp, &root, &disk, &rootp)?;
    boot_loader(tmp, &disk, &bios)?;
    Cmd::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&disk)
        .arg(tmp.join("disk.qcow2"))
        .run()
        .context("converting the base to qcow2")?;
    Ok(())
}

/// Step 1: `mmdebstrap` into `root`, with hooks that write fstab, grub config and the
/// boot loader images (into `tmp`).
fn mmdebstrap(
    nb: &NamedBase,
    layout: &Layout,
    mirror: Option<&str>,
    ids: &Ids,
    tmp: &Path,
    root: &Path,
) -> Result<()> {
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
    let (grub_fs_uuid, boot_dir, kernel_root) = layout.grub(ids);
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
        .env("MESOBAKE_FSTAB", layout.fstab(ids))
        .env("MESOBAKE_GRUB_FS_UUID", &grub_fs_uuid)
        .env("MESOBAKE_BOOT_DIR", boot_dir)
        .env("MESOBAKE_KERNEL_ROOT", &kernel_root)
        .env("MESOBAKE_WORK", tmp)
        .env("MESOBAKE_APT_SOURCES", &sources)
        .arg(nb.codename)
        .arg(root);
    if let Some(m) = mirror {
        cmd = cmd.arg(m);
    }
    eprintln!(
        "mesobake:   mmdebstrap {} (this takes a minute or two)",
        nb.codename
    );
    cmd.run()
        .with_context(|| format!("bootstrapping {} with mmdebstrap", nb.codename))?;
    Ok(())
}

/// Step 2, the partitions: a sparse `disk` file of the layout's size with its GPT, and
/// the partitions as they lie on it.
fn partition(layout: &Layout, ids: &Ids, disk: &Path) -> Result<Vec<Partition>> {
    File::create(disk)?.set_len(layout.disk_size)?;
    Cmd::new("sgdisk")
        .args(sgdisk_args(layout, ids))
        .arg(disk)
        .run()
        .context("writing the partition table")?;
    crate::image::disk::partitions(disk)
}

/// Step 2, the ESP: a FAT file with grub's EFI image, never mounted, copied into `esp`.
fn write_esp(layout: &Layout, ids: &Ids, tmp: &Path, disk: &Path, esp: &Partition) -> Result<()> {
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
            layout.esp.label,
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
    copy_into(&esp_img, disk, esp.offset)
}

/// Step 2, a separate /boot: the tree's /boot becomes its own filesystem (in `bootp`),
/// and the root keeps an empty /boot to mount it on.
fn write_boot(
    b: &Part,
    ids: &Ids,
    tmp: &Path,
    root: &Path,
    disk: &Path,
    bootp: &Partition,
) -> Result<()> {
    let boot_tree = tmp.join("boot-tree");
    std::fs::rename(root.join("boot"), &boot_tree).context("splitting off /boot")?;
    std::fs::create_dir(root.join("boot"))?;
    let mode = std::fs::metadata(&boot_tree)?.permissions();
    std::fs::set_permissions(root.join("boot"), mode)?;
    let boot_img = tmp.join("boot.ext4");
    make_ext4(&boot_tree, &ids.boot_uuid, b.label, bootp.size, &boot_img)
        .context("making the /boot filesystem")?;
    copy_into(&boot_img, disk, bootp.offset)
}

/// Step 2, the root: the tree as an ext4 file, copied into `rootp`.
fn write_root(
    layout: &Layout,
    ids: &Ids,
    tmp: &Path,
    root: &Path,
    disk: &Path,
    rootp: &Partition,
) -> Result<()> {
    let root_img = tmp.join("root.ext4");
    make_ext4(
        root,
        &ids.root_uuid,
        layout.root.label,
        rootp.size,
        &root_img,
    )
    .context("making the root filesystem")?;
    copy_into(&root_img, disk, rootp.offset)
}

/// Step 3, the boot loader: grub's BIOS images from the hooks (in `tmp`) into the MBR and
/// the BIOS boot partition; then the partition table must still verify.
fn boot_loader(tmp: &Path, disk: &Path, bios: &Partition) -> Result<()> {
    install_bios_grub(
        disk,
        bios.offset / 512,
        bios.size / 512,
        &tmp.join("boot.img"),
        &tmp.join("core.img"),
    )?;
    let check = Cmd::new("sgdisk").arg("-v").arg(disk).read()?;
    if !check.contains("No problems found") {
        bail!("the new partition table does not verify:\n{check}");
    }
    Ok(())
}

/// Makes an ext4 image file of `size` bytes populated from `tree`. A fixed UUID and hash
/// seed keep it reproducible; it is checked before use.
fn make_ext4(tree: &Path, uuid: &str, label: &str, size: u64, img: &Path) -> Result<()> {
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .args(["-U", uuid, "-L", label, "-E"])
        .arg(format!("hash_seed={uuid},nodiscard"))
        .args(["-b", "4096", "-i", "16384", "-m", "1"])
        .arg(img)
        .arg(format!("{}k", size / 1024))
        .run()?;
    Cmd::new("e2fsck").arg("-fn").arg(img).run()?;
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

    /// Publishes a base layer the way [`bootstrap`] does, with or without the digest.
    fn publish_base(cache: &Cache, key: &str, bytes: &[u8], with_digest: bool) -> PathBuf {
        let layer = cache.new_tmp_dir("layer-").unwrap().keep();
        let disk = layer.join("disk.qcow2");
        std::fs::write(&disk, bytes).unwrap();
        let mut m = serde_json::json!({
            "kind": "base",
            "key": key,
            "sha256": super::super::cache::sha256_file(&disk).unwrap(),
        });
        if with_digest {
            m["digest"] = digest::extent_digest(&disk).unwrap().into();
        }
        std::fs::write(layer.join("manifest.json"), m.to_string()).unwrap();
        cache
            .publish_dir(&layer, BASE, key)
            .unwrap()
            .join("disk.qcow2")
    }

    #[test]
    fn a_damaged_base_with_its_size_and_mtime_kept_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let key = "8133639ecd3a10692d774b7df2408ab057f578c01f025c0756ced7aad35bf5fa";
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let disk = publish_base(&cache, key, &bytes, true);
        let sha = hex::encode(Sha256::digest(&bytes));
        let (found, found_sha) = cached(&cache, key, |m| panic!("{m}")).unwrap().unwrap();
        assert_eq!((found, found_sha.as_str()), (disk.clone(), sha.as_str()));

        let recorded = digest::extent_digest(&disk).unwrap();
        digest::damage::flip_byte_keeping_mtime(&disk, 200_000);
        let now = digest::extent_digest(&disk).unwrap();
        let mut said = String::new();
        assert!(cached(&cache, key, |m| said = m.into()).unwrap().is_none());
        assert!(
            cache.layer_get(BASE, key).is_none(),
            "dropped, to be rebuilt"
        );
        for part in ["base layer 8133639ecd3a", "damaged", &recorded, &now] {
            assert!(said.contains(part), "{part:?} not in {said:?}");
        }
    }

    #[test]
    fn a_truncated_base_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let key = "k1111111111111111";
        let disk = publish_base(&cache, key, &[9u8; 100_000], true);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut said = String::new();
        assert!(cached(&cache, key, |m| said = m.into()).unwrap().is_none());
        assert!(cache.layer_get(BASE, key).is_none(), "{said}");
    }

    #[test]
    fn a_base_cached_without_a_digest_is_checked_by_its_sha256() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(d.path().to_path_buf())).unwrap();
        let key = "k0000000000000000";
        let disk = publish_base(&cache, key, b"an older base layer", false);
        let sha = hex::encode(Sha256::digest(b"an older base layer"));
        let (_, found_sha) = cached(&cache, key, |m| panic!("{m}")).unwrap().unwrap();
        assert_eq!(found_sha, sha);
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(disk.with_file_name("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(
            m["digest"],
            digest::extent_digest(&disk).unwrap(),
            "recorded"
        );

        let disk = {
            cache.remove_layer(BASE, key).unwrap();
            publish_base(&cache, key, b"an older base layer", false)
        };
        digest::damage::flip_byte_keeping_mtime(&disk, 3);
        let mut said = String::new();
        assert!(cached(&cache, key, |m| said = m.into()).unwrap().is_none());
        assert!(said.contains(&format!("not the sha256:{sha}")), "{said}");
        assert!(cache.layer_get(BASE, key).is_none());
    }

    #[test]
    fn ids_are_stable_and_well_formed() {
        let a = Ids::new("k", &DEBIAN);
        let b = Ids::new("k", &DEBIAN);
        assert_eq!(a.root_uuid, b.root_uuid);
        assert_ne!(a.root_uuid, Ids::new("other", &DEBIAN).root_uuid);
        assert_ne!(a.root_uuid, a.boot_uuid);
        let nums = |ids: &Ids| ids.part_guids.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(nums(&a), [14, 15, 1]);
        let u = Ids::new("k", &UBUNTU_2404);
        assert_eq!(nums(&u), [14, 15, 16, 1]);
        assert_eq!(
            u.part_guids[0], a.part_guids[0],
            "same key, same GUID per number"
        );
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

    /// Partitions lie in order, do not overlap, fit the disk, and the root is last and
    /// runs to the end (so growpart can grow it).
    fn check_geometry(l: &Layout) {
        let parts = l.parts();
        let last_usable = l.disk_size / 512 - 34;
        let mut next = 2048;
        for p in &parts[..parts.len() - 1] {
            assert!(
                p.start >= next && p.end > p.start && p.end < last_usable,
                "{p:?}"
            );
            assert_eq!(p.start % 2048, 0, "{p:?} aligned");
            next = p.end + 1;
        }
        let root = parts.last().unwrap();
        assert_eq!(root.number, l.root.number);
        assert!(root.start >= next && root.end == 0);
    }

    #[test]
    fn layouts_are_sound() {
        check_geometry(&DEBIAN);
        check_geometry(&UBUNTU_2404);
        // Noble's sizes: 4 MiB BIOS boot, 106 MiB ESP, /boot up to 1 GiB, root after,
        // on a 3.5 GiB disk.
        let mib = |p: &Part| ((p.end + 1 - p.start) * 512) >> 20;
        let u = &UBUNTU_2404;
        assert_eq!((mib(&u.bios), mib(&u.esp)), (4, 106));
        let boot = u.boot.unwrap();
        assert_eq!((boot.number, (boot.end + 1) * 512), (16, 1 << 30));
        assert_eq!(mib(&boot), 913);
        assert_eq!(u.disk_size, 3758096384);
    }

    #[test]
    fn ubuntu_layout_fstab_and_grub_go_by_label_and_boot_partition() {
        let ids = Ids::new("k", &UBUNTU_2404);
        let fstab = UBUNTU_2404.fstab(&ids);
        let lines: Vec<Vec<&str>> = fstab
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec![
                    "LABEL=cloudimg-rootfs",
                    "/",
                    "ext4",
                    "discard,commit=30,errors=remount-ro",
                    "0",
                    "1"
                ],
                vec!["LABEL=BOOT", "/boot", "ext4", "defaults", "0", "2"],
                vec!["LABEL=UEFI", "/boot/efi", "vfat", "umask=0077", "0", "1"],
            ]
        );
        // mesobake's own fstab reader sees the same three mounts.
        let e = crate::image::disk::parse_fstab(&fstab);
        assert_eq!(e.len(), 3);
        let (fs_uuid, dir, root) = UBUNTU_2404.grub(&ids);
        assert_eq!(
            (fs_uuid, dir, root.as_str()),
            (ids.boot_uuid.clone(), "", "LABEL=cloudimg-rootfs")
        );
        let args = sgdisk_args(&UBUNTU_2404, &ids).join(" ");
        assert!(args.contains("-n 16:227328:2097151 -t 16:ea00"), "{args}");
        assert!(args.contains("-n 1:2097152:0 -t 1:8300"), "{args}");
        assert!(
            !args.contains(" -c "),
            "no partition names, as sgdisk --new: {args}"
        );
    }

    #[test]
    fn debian_layout_fstab_and_grub_are_unchanged() {
        let ids = Ids::new("k", &DEBIAN);
        let fstab = DEBIAN.fstab(&ids);
        assert!(fstab.contains(&format!(
            "UUID={}\t/\text4\trw,discard,errors=remount-ro\t0 1\n",
            ids.root_uuid
        )));
        assert!(fstab.contains(&format!(
            "UUID={}\t/boot/efi\tvfat\tumask=0077,nofail\t0 2\n",
            ids.esp_uuid
        )));
        assert!(!fstab.contains("/boot\text4"));
        let (fs_uuid, dir, root) = DEBIAN.grub(&ids);
        assert_eq!((fs_uuid.as_str(), dir), (ids.root_uuid.as_str(), "/boot"));
        assert_eq!(root, format!("UUID={}", ids.root_uuid));
        let args = sgdisk_args(&DEBIAN, &ids).join(" ");
        assert!(
            args.contains("-n 14:2048:8191 -t 14:ef02 -c 14:bios"),
            "{args}"
        );
    }

    #[test]
    fn the_layout_is_part_of_the_key() {
        let d = super::super::named("debian-12").unwrap();
        let mut u = *d;
        u.layout = Some(&UBUNTU_2404);
        assert_ne!(key(d, None), key(&u, None));
        assert_eq!(key(d, None), key(d, None));
    }
}
