//! The per-node data disk: where a master's state lives so that it outlives the image.
//!
//! A master's state is ZooKeeper's `dataDir` (`/var/lib/zookeeper`: the transaction log
//! and snapshots) and the Mesos `work_dir` (`/var/lib/mesos`: the replicated log that
//! holds the registry). Images are replaced, not patched; if that state lived on the
//! root disk, every replaced master would come back empty and rebuild it from its peers
//! (a full ZooKeeper snapshot, a replicated-log catch-up), and a cluster whose masters
//! were all replaced at once, or powered off and rebooted into new images, would lose
//! it. So the state lives on its own disk, and the image only mounts it: the node
//! configurator (src/stage/firstboot/mesobake-configure, `mount_data`) looks for an ext4
//! filesystem labelled [`LABEL`], mounts it at `/var/lib/mesobake-data` and binds its
//! `zookeeper` and `mesos` directories over `/var/lib/zookeeper` and `/var/lib/mesos`
//! before it writes any configuration or starts a service. By label, because the disk's
//! device name differs between KVM (`/dev/vdc`), VirtualBox (`/dev/sdb`) and EC2
//! (`/dev/nvme1n1`). Without such a disk the state stays on the root disk, as before.
//!
//! The lab gives every node that runs ZooKeeper or a Mesos master one such disk,
//! `<node>-data.img` in the run dir, made here with `mkfs.ext4` on a sparse file (no
//! loop device, no mount). It is attached writable, unlike the boot disk's snapshot
//! overlay, and kept by `lab down` and `lab replace`; `lab down --purge` removes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::profile::Service;
use crate::run::Cmd;

/// The filesystem label the node configurator mounts.
pub const LABEL: &str = "mesobake-data";

/// A data disk's size: sparse, so only what the guest writes takes space.
const SIZE: u64 = 4 << 30;

/// Whether a node with these services keeps state that must outlive its image.
pub fn wanted(services: &[Service]) -> bool {
    services
        .iter()
        .any(|s| matches!(s, Service::Zookeeper | Service::Master))
}

/// The data disk of VM `name` in the run dir.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-data.img"))
}

/// The data disk of VM `name`, made (empty, ext4, labelled [`LABEL`]) when it does not
/// exist yet; an existing one is kept as it is, with whatever the guest wrote to it.
pub fn ensure(dir: &Path, name: &str) -> Result<PathBuf> {
    let disk = path(dir, name);
    if disk.exists() {
        return Ok(disk);
    }
    // Made beside it and renamed into place, so an interrupted mkfs leaves no disk
    // that a later `lab up` would take for a good one. 0600 (tempfile's mode): the
    // masters' state is the cluster's (znodes, ACL digests, the registry).
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}-data-"))
        .tempfile_in(dir)
        .with_context(|| format!("creating a data disk in {}", dir.display()))?;
    tmp.as_file().set_len(SIZE)?;
    // -m 0: no blocks reserved for root on a disk only services write; -F: it is a file.
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", LABEL])
        .arg(tmp.path())
        .run()
        .with_context(|| format!("making the data disk of {name}"))?;
    tmp.persist(&disk)
        .with_context(|| format!("writing {}", disk.display()))?;
    Ok(disk)
}

/// `lab down --purge`: removes the run dir's data disks (regular files only: a link
/// named like one is not followed).
pub fn purge(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let is_disk = name.to_string_lossy().ends_with("-data.img");
        if is_disk && e.file_type()?.is_file() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing the data disk {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_and_zookeeper_get_a_data_disk_agents_do_not() {
        assert!(wanted(&[Service::Zookeeper, Service::Master]));
        assert!(wanted(&[Service::Master, Service::Marathon]));
        assert!(!wanted(&[Service::Agent]));
        assert!(!wanted(&[]));
    }

    #[test]
    fn a_data_disk_is_a_labelled_ext4_made_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = ensure(tmp.path(), "m1").unwrap();
        assert_eq!(disk, tmp.path().join("m1-data.img"));
        let label = std::process::Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), LABEL);
        let ty = std::process::Command::new("blkid")
            .args(["-o", "value", "-s", "TYPE"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ty.stdout).trim(), "ext4");
        // Sparse: the 4 GiB disk takes a few MiB on the host.
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), SIZE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 256 << 20,
            "{} bytes used",
            meta.blocks() * 512
        );
        // A second call keeps what the guest wrote (here: a marker in the last block).
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            f.seek(SeekFrom::Start(SIZE - 4096)).unwrap();
            f.write_all(b"guest state").unwrap();
        }
        let again = ensure(tmp.path(), "m1").unwrap();
        let mut f = std::fs::File::open(&again).unwrap();
        let mut got = [0u8; 11];
        use std::io::{Read, Seek, SeekFrom};
        f.seek(SeekFrom::Start(SIZE - 4096)).unwrap();
        f.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"guest state");
        // Nothing else is left in the directory.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["m1-data.img"]);
    }
}
