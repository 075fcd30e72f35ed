//! A raw disk image: its partitions, their filesystems, and mounting them the way the
//! image's own /etc/fstab says.
//!
//! The kernel here has no partition-table parser, so partitions are read with
//! `sfdisk --json` and each one is attached as its own loop device with an offset and a
//! size limit. That works on any kernel.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::guard::{LoopDevice, Mount, Mounts};
use super::root::ImageRoot;
use crate::run::Cmd;

/// One partition of a disk image, with what `blkid` found on it.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Partition number, 1-based.
    pub number: u32,
    /// Byte offset in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// The GPT partition type GUID (or MBR type), upper case.
    pub type_id: String,
    /// Filesystem type, e.g. "ext4", "vfat"; empty when none was found.
    pub fs: String,
    /// Filesystem UUID.
    pub uuid: String,
    /// Filesystem label.
    pub label: String,
    /// GPT partition UUID.
    pub partuuid: String,
}

#[derive(Deserialize)]
struct SfdiskDump {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    #[serde(default)]
    sectorsize: Option<u64>,
    partitions: Vec<SfdiskPart>,
}

#[derive(Deserialize)]
struct SfdiskPart {
    node: String,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    type_id: String,
    #[serde(default)]
    uuid: Option<String>,
}

/// The GPT type of an x86-64 root partition (Discoverable Partitions Specification).
const GPT_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Reads the partition table of `image` and probes each partition's filesystem.
pub fn partitions(image: &Path) -> Result<Vec<Partition>> {
    let json = Cmd::new("sfdisk")
        .arg("--json")
        .arg(image)
        .read()
        .with_context(|| format!("reading the partition table of {}", image.display()))?;
    let dump: SfdiskDump = serde_json::from_str(&json).context("parsing sfdisk --json output")?;
    let sector = dump.partitiontable.sectorsize.unwrap_or(512);
    let mut out = Vec::new();
    for p in dump.partitiontable.partitions {
        let number: u32 = p
            .node
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let offset = p.start * sector;
        let size = p.size * sector;
        let probe = Cmd::new("blkid")
            .args(["-p", "-o", "export", "--offset"])
            .arg(offset.to_string())
            .arg("--size")
            .arg(size.to_string())
            .arg(image)
            .output()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&probe);
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(String::from))
                .unwrap_or_default()
        };
        out.push(Partition {
            number,
            offset,
            size,
            type_id: p.type_id.to_uppercase(),
            fs: field("TYPE"),
            uuid: field("UUID"),
            label: field("LABEL"),
            partuuid: p.uuid.unwrap_or_default().to_uppercase(),
        });
    }
    if out.is_empty() {
        bail!(
            "{} has no partitions: expected a cloud image (GPT with a root partition)",
            image.display()
        );
    }
    Ok(out)
}

/// Picks the root partition: the one typed as x86-64 root, else the largest Linux
/// filesystem. Cloud images differ here (Ubuntu's root is partition 1, others number it
/// last), so the table decides, not a fixed number.
pub fn root_partition(parts: &[Partition]) -> Result<&Partition> {
    let linux_fs =
        |p: &&Partition| matches!(p.fs.as_str(), "ext4" | "ext3" | "ext2" | "xfs" | "btrfs");
    if let Some(p) = parts
        .iter()
        .filter(linux_fs)
        .find(|p| p.type_id == GPT_ROOT_X86_64)
    {
        return Ok(p);
    }
    parts
        .iter()
        .filter(linux_fs)
        .max_by_key(|p| p.size)
        .ok_or_else(|| anyhow::anyhow!("no partition holds an ext4, xfs or btrfs filesystem: cannot find the root filesystem"))
}

/// One /etc/fstab entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FstabEntry {
    /// The source, e.g. `UUID=...`, `LABEL=...`, `/dev/vda1`.
    pub spec: String,
    /// The mount point.
    pub target: String,
    /// The filesystem type.
    pub fs: String,
}

/// Parses fstab text, skipping comments, swap and pseudo filesystems.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| FstabEntry {
                spec: f[0].into(),
                target: f[1].into(),
                fs: f[2].into(),
            })
        })
        .filter(|e| {
            e.target.starts_with('/')
                && !matches!(
                    e.fs.as_str(),
                    "swap" | "proc" | "sysfs" | "tmpfs" | "devpts" | "none"
                )
        })
        .collect()
}

/// Finds the partition an fstab spec names.
pub fn find_by_spec<'a>(parts: &'a [Partition], spec: &str) -> Option<&'a Partition> {
    let (k, v) = spec.split_once('=')?;
    let v = v.trim_matches('"');
    parts.iter().find(|p| match k {
        "UUID" => p.uuid.eq_ignore_ascii_case(v),
        "LABEL" => p.label == v,
        "PARTUUID" => p.partuuid.eq_ignore_ascii_case(v),
        _ => false,
    })
}

/// A disk image whose filesystems are mounted under a directory.
pub struct AttachedImage {
    /// The mounted root.
    pub root: ImageRoot,
    /// The root's loop device (for fstrim and resize2fs).
    pub root_dev: PathBuf,
    /// Mount points that were skipped, with why (e.g. vfat, which this kernel can't mount).
    pub skipped: Vec<String>,
    mounts: Mounts,
}

impl AttachedImage {
    /// Attaches `image` and mounts its root on `mountpoint`, then whatever else its fstab
    /// lists that this host can mount.
    pub fn attach(image: &Path, mountpoint: &Path) -> Result<AttachedImage> {
        let parts = partitions(image)?;
        let root_part = root_partition(&parts)?.clone();
        let mut mounts = Mounts::default();
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let root_dev = mounts.push_loop(LoopDevice::attach(
            image,
            root_part.offset,
            Some(root_part.size),
            false,
        )?);
        mounts.push_mount(Mount::new(&root_dev, mountpoint, &["-t", &root_part.fs])?);
        let root = ImageRoot::open(mountpoint)?;
        let fstab = root.read_to_string("etc/fstab").unwrap_or_default();
        let mut skipped = Vec::new();
        let mut entries = parse_fstab(&fstab);
        // Parents before children: /boot before /boot/efi.
        entries.sort_by_key(|e| e.target.matches('/').count() + usize::from(e.target.len() > 1));
        for e in entries {
            if e.target == "/" {
                continue;
            }
            let Some(p) = find_by_spec(&parts, &e.spec) else {
                skipped.push(format!(
                    "{} ({}: no matching partition in the image)",
                    e.target, e.spec
                ));
                continue;
            };
            if p.fs == "vfat" || e.fs == "vfat" {
                // No vfat module here: the ESP stays untouched, which is fine because
                // provisioning installs no boot loader into it.
                skipped.push(format!("{} (vfat: not mounted, left as it is)", e.target));
                continue;
            }
            let target = root.mkdir_all(e.target.trim_start_matches('/'), 0o755)?;
            let dev = mounts.push_loop(LoopDevice::attach(image, p.offset, Some(p.size), false)?);
            mounts.push_mount(Mount::new(&dev, &target, &["-t", &p.fs])?);
        }
        Ok(AttachedImage {
            root,
            root_dev,
            skipped,
            mounts,
        })
    }

    /// The mounted root directory on the host.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Gives the image back its freed blocks: `sync` first, or fstrim finds little to trim.
    pub fn trim(&self) -> Result<()> {
        Cmd::new("sync").run()?;
        for p in self.mounts.mount_targets() {
            Cmd::new("fstrim")
                .arg(&p)
                .run()
                .with_context(|| format!("trimming free space in {}", p.display()))?;
        }
        Ok(())
    }

    /// Mounts the pseudo filesystems a chroot needs; they go on the same stack so they are
    /// torn down first.
    pub fn mount_chroot_fs(&mut self) -> Result<usize> {
        let before = self.mounts.len();
        let r = self.root.path().to_owned();
        for (src, dir, opts) in [
            ("proc", "proc", &["-t", "proc"][..]),
            ("sysfs", "sys", &["-t", "sysfs"][..]),
            ("/dev", "dev", &["--bind"][..]),
            ("/dev/pts", "dev/pts", &["--bind"][..]),
        ] {
            let target = self.root.mkdir_all(dir, 0o755)?;
            debug_assert!(target.starts_with(&r));
            self.mounts
                .push_mount(Mount::new(Path::new(src), &target, opts)?);
        }
        Ok(before)
    }

    /// Unmounts what [`mount_chroot_fs`](Self::mount_chroot_fs) mounted.
    pub fn unmount_chroot_fs(&mut self, mark: usize) -> Result<()> {
        self.mounts.unwind_to(mark)
    }

    /// Unmounts everything and detaches the loop devices, reporting failures.
    pub fn close(self) -> Result<()> {
        let AttachedImage { root, mounts, .. } = self;
        let path = root.path().to_owned();
        // The root's directory descriptor would keep the mount busy.
        drop(root);
        // After Ctrl-C, maintainer scripts that apt started in the chroot can outlive
        // apt itself and keep the image busy; nothing may still run inside it.
        stop_processes_in(&path);
        mounts.close()
    }
}

/// Stops every process whose root directory is inside `root` (SIGTERM, then SIGKILL).
fn stop_processes_in(root: &Path) {
    use rustix::process::{kill_process, Pid, Signal};
    let find = || -> Vec<Pid> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let r = std::fs::read_link(e.path().join("root")).ok()?;
                (r.starts_with(root)).then(|| Pid::from_raw(pid)).flatten()
            })
            .collect()
    };
    for (signal, wait) in [(Signal::TERM, 50), (Signal::KILL, 50)] {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        eprintln!(
            "mesobake: stopping {} process(es) still running inside the image",
            pids.len()
        );
        for p in pids {
            let _ = kill_process(p, signal);
        }
        for _ in 0..wait {
            if find().is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Runs a command inside the image root with `chroot`.
pub fn chroot(root: &Path, argv: &[&str]) -> Cmd {
    Cmd::new("chroot")
        .arg(root)
        .args(argv)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_parsing_skips_comments_swap_and_pseudo() {
        let t = "# comment\nLABEL=cloudimg-rootfs / ext4 discard,errors=remount-ro 0 1\nLABEL=BOOT /boot ext4 defaults 0 2\nLABEL=UEFI /boot/efi vfat umask=0077 0 1\n/swap.img none swap sw 0 0\nproc /proc proc defaults 0 0\n";
        let e = parse_fstab(t);
        assert_eq!(
            e.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            ["/", "/boot", "/boot/efi"]
        );
    }

    fn part(n: u32, fs: &str, size: u64, ty: &str, uuid: &str, label: &str) -> Partition {
        Partition {
            number: n,
            offset: 0,
            size,
            type_id: ty.into(),
            fs: fs.into(),
            uuid: uuid.into(),
            label: label.into(),
            partuuid: String::new(),
        }
    }

    #[test]
    fn root_is_the_typed_root_or_the_largest_linux_fs() {
        let parts = vec![
            part(
                1,
                "ext4",
                10,
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                "a",
                "root",
            ),
            part(
                15,
                "vfat",
                100,
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                "b",
                "UEFI",
            ),
            part(
                16,
                "ext4",
                5,
                "BC13C2FF-59E6-4262-A352-B275FD6F7172",
                "c",
                "BOOT",
            ),
        ];
        assert_eq!(root_partition(&parts).unwrap().number, 1);
        let mut typed = parts.clone();
        typed[2].type_id = GPT_ROOT_X86_64.into();
        assert_eq!(root_partition(&typed).unwrap().number, 16);
        assert_eq!(find_by_spec(&parts, "LABEL=BOOT").unwrap().number, 16);
        assert_eq!(find_by_spec(&parts, "UUID=A").unwrap().number, 1);
        assert!(find_by_spec(&parts, "/dev/vda1").is_none());
    }
}
