//! The distribution formats, as part of the e2e tier (tests/e2e.rs): one real build in
//! every format, then `mesobake check`, independent re-checks with `tar`, `sha256sum` and
//! `qemu-img`, an OVF consumer (virt-v2v, when installed), and, through [`check_boot`], a
//! boot of the VMDK taken out of the OVA (run by e2e.rs beside its other boots, so that
//! no boot leaves a core idle).
//!
//! The build is the one combination the other tiers do not boot: the base copies the
//! default real base's disk layout (`debian-12-ubuntu-24.04-layout`: Debian 12 on the
//! Ubuntu 24.04 cloud image's partitions, since Ubuntu's images cannot be downloaded
//! here), with Mesosphere's package layout booted in cgroup v1 through `[boot] cgroup`.
//! The raw output is checked with outside tools only (sfdisk, blkid, losetup, a read-only
//! mount, dumpe2fs): the layout survived, root grew to the profile's size, fstab is by
//! LABEL, and grub.cfg on the separate /boot carries the cgroup setting.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const FORMATS: &str = "qcow2,vmdk,vdi,vhdx,vhd,vhd-fixed,raw,ova,ec2";

fn tool(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const BASE: &str = "debian-12-ubuntu-24.04-layout";
/// The profile's disk size (profiles/include/common.toml).
const DISK_SIZE: u64 = 6 << 30;
const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// A partition of the output image attached read-only and mounted read-only; both are
/// undone on drop.
struct RoMount {
    dev: String,
    dir: PathBuf,
}

impl RoMount {
    fn new(image: &Path, offset: u64, size: u64, dir: PathBuf) -> RoMount {
        let dev = tool(
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
        tool(
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
    let text = tool(
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

fn on_path(t: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        .unwrap_or(false)
}

/// Builds master-slave in every format and checks them all without booting. Returns the
/// VMDK taken out of the OVA, for [`check_boot`].
pub fn build_and_check() -> PathBuf {
    // A space in the output path, as users pick them (qemu-io once failed on one).
    let out = repo().join("target/e2e formats-out");
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.to_string_lossy().into_owned();
    let mut build = mesobake(&[
        "build",
        "profiles/master-slave.toml",
        "--base",
        BASE,
        "--with",
        OFFLINE,
        // Mesosphere's layout (Apache Mesos builds), where it can really run: booted in
        // cgroup v1, which Apache 1.11's Docker containerizer needs.
        "--with",
        "profiles/include/offline-standins-mesosphere.toml",
        "--format",
        FORMATS,
        "--out",
        &out_s,
        "--timings",
    ]);
    build.env("SOURCE_DATE_EPOCH", "1700000000");
    run_ok_text(build, "build master-slave in every format");

    // Our own re-check of the whole directory.
    let report = run_ok_text(mesobake(&["check", &out_s]), "mesobake check");
    assert!(report.contains("check: PASS"), "{report}");

    // Independent: sha256sum over SHA256SUMS, and qemu-img on every disk.
    tool(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&out),
    );
    for (file, fmt) in [
        ("master-slave.qcow2", "qcow2"),
        ("master-slave.vmdk", "vmdk"),
        ("master-slave.vdi", "vdi"),
        ("master-slave.vhdx", "vhdx"),
        ("master-slave.vhd", "vpc"),
        ("master-slave.fixed.vhd", "vpc"),
        ("master-slave.raw", "raw"),
        ("master-slave.ec2.vmdk", "vmdk"),
    ] {
        let p = out.join(file);
        let info: serde_json::Value = serde_json::from_str(&tool(
            Command::new("qemu-img")
                .args(["info", "--output=json", "-f", fmt])
                .arg(&p),
        ))
        .unwrap();
        assert_eq!(info["virtual-size"].as_u64().unwrap(), 6 << 30, "{file}");
        if ["qcow2", "vmdk", "vdi", "vhdx"].contains(&fmt) {
            tool(Command::new("qemu-img").args(["check", "-f", fmt]).arg(&p));
        }
    }
    for f in [
        "master-slave.ec2.containers.json",
        "master-slave.ec2.LAUNCH.md",
        "master-slave.ec2.user-data",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let formats: Vec<&str> = m["images"]["master-slave"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["format"].as_str().unwrap())
        .collect();
    for f in FORMATS.split(',') {
        assert!(formats.contains(&f), "{f} in manifest: {formats:?}");
    }
    let layout = &m["images"]["master-slave"]["layout"];
    assert_eq!(layout["packaging"], "mesosphere", "{layout}");
    assert_eq!(layout["agent_service"], "mesos-slave", "{layout}");
    let cg = &layout["cgroup"];
    assert_eq!(cg["mode"], "v1", "{cg}");
    assert_eq!(cg["hierarchy"], "hybrid", "{cg}");
    assert_eq!(cg["from_profile"], true, "{cg}");
    assert_eq!(cg["cmdline"], "systemd.unified_cgroup_hierarchy=0", "{cg}");

    assert_eq!(m["images"]["master-slave"]["base"]["spec"], BASE);
    check_ubuntu_layout(&out.join("master-slave.raw"), &out.join("mnt"));

    // Independent: the OVA's order with tar -tf, its .mf with sha256sum.
    let ova = out.join("master-slave.ova");
    let listing = tool(Command::new("tar").arg("-tf").arg(&ova));
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        [
            "master-slave.ovf",
            "master-slave-disk1.vmdk",
            "master-slave.mf"
        ]
    );
    let x = repo().join("target/e2e-formats-ova");
    let _ = std::fs::remove_dir_all(&x);
    std::fs::create_dir_all(&x).unwrap();
    tool(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
    let mf = std::fs::read_to_string(x.join("master-slave.mf")).unwrap();
    for m in ["master-slave.ovf", "master-slave-disk1.vmdk"] {
        let sum = tool(Command::new("sha256sum").arg(m).current_dir(&x));
        let line = format!("SHA256({m})= {}", sum.split_whitespace().next().unwrap());
        assert!(mf.lines().any(|l| l == line), "{line} not in {mf}");
    }
    let ovf = std::fs::read_to_string(x.join("master-slave.ovf")).unwrap();
    assert!(ovf.contains("<VirtualSystem ovf:id=\"master-slave\">"));
    assert!(ovf.contains("Debian_64"));
    assert!(ovf.contains("ovf:capacity=\"6442450944\""));

    // An independent OVF consumer, when the host has one: Debian's virt-v2v parses the
    // descriptor. --print-source stops before conversion: a full `virt-v2v -i ova` runs
    // its libguestfs appliance under TCG here and did not finish within 15 minutes.
    if on_path("virt-v2v") {
        let mut c = Command::new("virt-v2v");
        c.env("LIBGUESTFS_BACKEND", "direct")
            .args(["-i", "ova"])
            .arg(&ova)
            .arg("--print-source");
        let text = run_ok_text(c, "virt-v2v -i ova --print-source");
        for want in [
            "source name: master-slave",
            "memory: 4294967296 (bytes)",
            "nr vCPUs: 2",
            "[ide]",
            "[virtio-net]",
        ] {
            assert!(text.contains(want), "virt-v2v lacks {want:?}:\n{text}");
        }
    } else {
        eprintln!("e2e-formats: no virt-v2v on this host; skipping the independent OVF parse");
    }

    x.join("master-slave-disk1.vmdk")
}

/// The VMDK from the OVA boots and configures itself. The Apache-flavoured stand-in agent
/// (Docker containerizer, systemd support left on) only starts when the image really
/// booted cgroup v1, and it must register with the node's own master. `stdout` is
/// `mesobake verify --json`'s.
pub fn check_boot(stdout: &str) {
    let r: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let checks = r["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["ok"] == true), "{stdout}");
    assert_eq!(checks.len(), 7, "{stdout}");
    assert_eq!(checks[5]["name"], "node-exporter :9100", "{stdout}");
    assert_eq!(checks[6]["name"], "agent registered", "{stdout}");
}

/// The Ubuntu 24.04 cloud image's layout, as outside tools see it in a raw output.
fn check_ubuntu_layout(raw: &Path, mnt: &Path) {
    assert_eq!(std::fs::metadata(raw).unwrap().len(), DISK_SIZE);
    // Partition table: numbers, types, order on disk.
    let dump: serde_json::Value =
        serde_json::from_str(&tool(Command::new("sfdisk").arg("--json").arg(raw))).unwrap();
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
    let fs = |p: &(u32, u64, u64, String)| probe(raw, p.1 * sector, p.2 * sector);
    let (esp_t, esp_l, _) = fs(&esp);
    assert_eq!((esp_t.as_str(), esp_l.as_str()), ("vfat", "UEFI"));
    let (boot_t, boot_l, boot_uuid) = fs(&boot);
    assert_eq!((boot_t.as_str(), boot_l.as_str()), ("ext4", "BOOT"));
    let (root_t, root_l, _) = fs(&root);
    assert_eq!(
        (root_t.as_str(), root_l.as_str()),
        ("ext4", "cloudimg-rootfs")
    );

    let rootfs = RoMount::new(raw, root.1 * sector, root.2 * sector, mnt.join("root"));
    // The root filesystem fills the grown partition (resize2fs ran).
    let sb = tool(Command::new("dumpe2fs").arg("-h").arg(&rootfs.dev));
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
    let bootfs = RoMount::new(raw, boot.1 * sector, boot.2 * sector, mnt.join("boot"));
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
    // The profile's [boot] cgroup = "v1": every kernel line, and the snippet that keeps
    // it across the image's own update-grub.
    for l in cfg
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("linux "))
    {
        assert!(
            l.ends_with(" systemd.unified_cgroup_hierarchy=0"),
            "cgroup v1 on the kernel line: {l}"
        );
    }
    assert!(rootfs
        .read("etc/default/grub.d/60-mesobake-cgroup.cfg")
        .contains("systemd.unified_cgroup_hierarchy=0"));
}
