//! End-to-end: the build on a base with the Ubuntu 24.04 cloud image's disk layout.
//!
//! `debian-12-ubuntu-24.04-layout` is a Debian 12 system bootstrapped onto the layout of
//! Ubuntu's noble cloud image (root on partition 1, physically last; BIOS boot 14; vfat
//! ESP 15 labelled UEFI; ext4 /boot 16 labelled BOOT; fstab by LABEL), because Ubuntu's
//! images cannot be downloaded here. The test builds a role on it, then checks the output
//! with outside tools only (sfdisk, blkid, losetup, a read-only mount, dumpe2fs): the
//! layout survived, the root was grown to the profile's disk size, /boot holds grub.cfg
//! with paths relative to itself. Finally the image boots under `mesobake verify`.
//!
//! Root tier: needs root, QEMU and `MESOBAKE_E2E=1`, like tests/e2e.rs.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const BASE: &str = "debian-12-ubuntu-24.04-layout";
/// The profile's disk size (profiles/include/common.toml).
const DISK_SIZE: u64 = 6 << 30;
const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

fn output(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A partition of the output image attached read-only and mounted read-only; both are
/// undone on drop.
struct RoMount {
    dev: String,
    dir: PathBuf,
}

impl RoMount {
    fn new(image: &Path, offset: u64, size: u64, dir: PathBuf) -> RoMount {
        let dev = output(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only", "--offset"])
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(size.to_string())
                .arg(image),
        )
        .trim()
        .to_string();
        std::fs::create_dir_all(&dir).unwrap();
        let m = RoMount { dev, dir };
        output(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "ro,noload"])
                .arg(&m.dev)
                .arg(&m.dir),
        );
        m
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.join(path))
            .unwrap_or_else(|e| panic!("{path} on {}: {e}", self.dev))
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// `blkid -p` of a byte range of the image: TYPE, LABEL, UUID.
fn probe(image: &Path, offset: u64, size: u64) -> (String, String, String) {
    let text = output(
        Command::new("blkid")
            .args(["-p", "-o", "export", "--offset"])
            .arg(offset.to_string())
            .arg("--size")
            .arg(size.to_string())
            .arg(image),
    );
    let f = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    (f("TYPE"), f("LABEL"), f("UUID"))
}

#[test]
fn build_on_the_ubuntu_24_04_layout_grows_root_mounts_boot_and_boots() {
    if !enabled() {
        return;
    }
    standins();
    let out = target_dir("e2e-ubuntu-layout-out");
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.to_string_lossy().into_owned();
    let (_, build_s) = run_ok(
        mesobake(&[
            "build",
            "profiles/master-slave.toml",
            "--with",
            OFFLINE,
            "--base",
            BASE,
            "--out",
            &out_s,
            "--timings",
        ]),
        &format!("build master-slave on {BASE}"),
    );
    let qcow = out.join("master-slave.qcow2");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["images"]["master-slave"]["base"]["spec"], BASE);

    // The output as a raw disk, for the outside tools.
    let raw = out.join("inspect.raw");
    output(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&qcow)
            .arg(&raw),
    );
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), DISK_SIZE);

    // Partition table: numbers, types, order on disk.
    let dump: serde_json::Value =
        serde_json::from_str(&output(Command::new("sfdisk").arg("--json").arg(&raw))).unwrap();
    let table = &dump["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let last_lba = table["lastlba"].as_u64().unwrap();
    let mut parts: Vec<(u32, u64, u64, String)> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u32 = node
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (
                n,
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_uppercase(),
            )
        })
        .collect();
    parts.sort_by_key(|p| p.1);
    let order: Vec<u32> = parts.iter().map(|p| p.0).collect();
    assert_eq!(
        order,
        [14, 15, 16, 1],
        "on-disk order, root last: {parts:?}"
    );
    let get = |n: u32| parts.iter().find(|p| p.0 == n).unwrap().clone();
    let (bios, esp, boot, root) = (get(14), get(15), get(16), get(1));
    assert_eq!(bios.3, BIOS_BOOT);
    assert_eq!(esp.3, ESP);
    assert_eq!(boot.3, XBOOTLDR);
    assert_eq!(root.3, LINUX_FS);
    // Noble's sizes: 4 MiB, 106 MiB, /boot up to 1 GiB.
    assert_eq!((bios.2 * sector, esp.2 * sector), (4 << 20, 106 << 20));
    assert_eq!((boot.1 + boot.2) * sector, 1 << 30);
    // The root was grown: it ends at the last usable sector of the 6 GiB disk.
    assert_eq!(
        root.1 + root.2 - 1,
        last_lba,
        "root runs to the end of the disk"
    );
    assert_eq!(root.1 * sector, 1 << 30);

    // Filesystems and labels.
    let fs = |p: &(u32, u64, u64, String)| probe(&raw, p.1 * sector, p.2 * sector);
    let (esp_t, esp_l, _) = fs(&esp);
    assert_eq!((esp_t.as_str(), esp_l.as_str()), ("vfat", "UEFI"));
    let (boot_t, boot_l, boot_uuid) = fs(&boot);
    assert_eq!((boot_t.as_str(), boot_l.as_str()), ("ext4", "BOOT"));
    let (root_t, root_l, _) = fs(&root);
    assert_eq!(
        (root_t.as_str(), root_l.as_str()),
        ("ext4", "cloudimg-rootfs")
    );

    let mnt = out.join("mnt");
    let rootfs = RoMount::new(&raw, root.1 * sector, root.2 * sector, mnt.join("root"));
    // The root filesystem fills the grown partition (resize2fs ran).
    let sb = output(Command::new("dumpe2fs").arg("-h").arg(&rootfs.dev));
    let field = |k: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in dumpe2fs"))
            .trim()
            .parse()
            .unwrap()
    };
    let fs_bytes = field("Block count:") * field("Block size:");
    assert!(
        fs_bytes <= root.2 * sector && root.2 * sector - fs_bytes < 4 << 20,
        "root fs {fs_bytes} bytes in a {} byte partition",
        root.2 * sector
    );
    assert!(fs_bytes > 4 << 30, "root grown past the base's 2.5 GiB");

    // fstab by LABEL, like Ubuntu's.
    let fstab: Vec<Vec<String>> = rootfs
        .read("etc/fstab")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let entry = |target: &str| {
        fstab
            .iter()
            .find(|e| e[1] == target)
            .unwrap_or_else(|| panic!("no {target} in fstab: {fstab:?}"))
            .clone()
    };
    assert_eq!(entry("/")[..3], ["LABEL=cloudimg-rootfs", "/", "ext4"]);
    assert_eq!(entry("/boot")[..3], ["LABEL=BOOT", "/boot", "ext4"]);
    assert_eq!(entry("/boot/efi")[..3], ["LABEL=UEFI", "/boot/efi", "vfat"]);
    // The root's /boot is only a mount point: the kernels are on partition 16.
    let on_root: Vec<_> = std::fs::read_dir(rootfs.dir.join("boot"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        on_root.is_empty(),
        "/boot on the root is empty: {on_root:?}"
    );

    // /boot: grub.cfg there, finding this filesystem and loading a kernel by a path
    // relative to it.
    let bootfs = RoMount::new(&raw, boot.1 * sector, boot.2 * sector, mnt.join("boot"));
    let cfg = bootfs.read("grub/grub.cfg");
    assert!(
        cfg.contains(&format!("--set=root {boot_uuid}")),
        "grub.cfg searches the BOOT filesystem:\n{cfg}"
    );
    let linux = cfg
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("linux "))
        .unwrap_or_else(|| panic!("no linux line in grub.cfg:\n{cfg}"));
    let kernel = linux.split_whitespace().nth(1).unwrap();
    assert!(
        kernel.starts_with("/vmlinuz-"),
        "kernel path relative to /boot: {linux}"
    );
    assert!(linux.contains("root=LABEL=cloudimg-rootfs"), "{linux}");
    assert!(bootfs.dir.join(kernel.trim_start_matches('/')).is_file());
    assert!(bootfs.dir.join("grub/i386-pc/core.img").is_file());
    assert!(bootfs.dir.join("efi").is_dir(), "mount point for the ESP");
    drop(bootfs);
    drop(rootfs);
    std::fs::remove_file(&raw).unwrap();

    // It boots: BIOS, grub from /boot on partition 16, root by label, first boot as a
    // one-node cluster.
    let (stdout, verify_s) = run_ok(
        mesobake(&["verify", &qcow.to_string_lossy(), "--json"]),
        "verify master-slave on the Ubuntu layout",
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let checks = r["checks"].as_array().unwrap();
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c["ok"] == true),
        "{stdout}"
    );
    eprintln!(
        "e2e: {BASE}: build {build_s:.0} s, boot to configured {:.0} s under {} (verify total {verify_s:.0} s)",
        r["boot_to_configured_s"].as_f64().unwrap_or(-1.0),
        r["accel"].as_str().unwrap_or("?")
    );
}
