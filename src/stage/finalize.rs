//! Finalize: make the image fit to hand out. cloud-init state, machine identity, SSH
//! host keys, apt lists, logs, shell history and the random seed go; free space is
//! trimmed so the outputs stay small.

use std::path::Path;

use anyhow::{Context, Result};

use super::BuildContext;
use crate::image::{chroot, AttachedImage, ImageRoot};

/// Runs the finalize stage.
pub fn run(ctx: &mut BuildContext, img: &mut AttachedImage) -> Result<()> {
    let root = &img.root;
    ctx.progress.step("cloud-init clean");
    if root.exists("usr/bin/cloud-init") {
        // --seed is not passed: a seed baked under /var/lib/cloud/seed must survive.
        let cleaned = chroot(root.path(), &["cloud-init", "clean", "--logs"]).succeeds()?;
        if !cleaned {
            // cloud-init before 17.2 (Ubuntu 14.04) has no `clean`: do what it would.
            for d in [
                "var/lib/cloud/instances",
                "var/lib/cloud/instance",
                "var/lib/cloud/data",
                "var/lib/cloud/sem",
            ] {
                remove_tree(root, d)?;
            }
        }
    }
    remove_tree(root, "var/lib/cloud/instances")?;
    root.remove_file("var/lib/cloud/instance")?;
    ctx.progress
        .step("machine identity, host keys, history, seeds");
    // Empty, not "uninitialized": "uninitialized" makes systemd treat the boot as a
    // first boot and apply presets, which would re-enable the services this build
    // disabled or masked on purpose. Empty still gets a fresh id at every first boot.
    root.write("etc/machine-id", b"", 0o444)?;
    if std::fs::symlink_metadata(root.path().join("var/lib/dbus/machine-id"))
        .is_ok_and(|m| m.is_file())
    {
        root.remove_file("var/lib/dbus/machine-id")?;
    }
    remove_matching(root, "etc/ssh", |n| n.starts_with("ssh_host_"))?;
    for f in [
        "root/.bash_history",
        "var/lib/systemd/random-seed",
        "var/lib/urandom/random-seed",
        "var/lib/dhcp/dhclient.leases",
    ] {
        root.remove_file(f)?;
    }
    if let Ok(home) = root.resolve("home") {
        for e in std::fs::read_dir(home)?.flatten() {
            root.remove_file(&format!(
                "home/{}/.bash_history",
                e.file_name().to_string_lossy()
            ))?;
        }
    }
    ctx.progress.step("apt lists, logs, temp files");
    remove_matching(root, "var/lib/apt/lists", |n| n != "partial" && n != "lock")?;
    remove_matching(root, "var/cache/apt", |n| n.ends_with(".bin"))?;
    clear_logs(root)?;
    for d in ["tmp", "var/tmp"] {
        root.empty_dir(d)?;
    }
    ctx.progress.step("trimming free space");
    img.trim()?;
    Ok(())
}

fn remove_tree(root: &ImageRoot, rel: &str) -> Result<()> {
    if std::fs::symlink_metadata(root.path().join(rel)).is_ok_and(|m| m.is_dir()) {
        root.empty_dir(rel)?;
        std::fs::remove_dir(root.resolve(rel)?).with_context(|| format!("removing /{rel}"))?;
    }
    Ok(())
}

fn remove_matching(root: &ImageRoot, dir: &str, pred: impl Fn(&str) -> bool) -> Result<()> {
    let Ok(host) = root.resolve(dir) else {
        return Ok(());
    };
    for e in std::fs::read_dir(&host)
        .with_context(|| format!("listing /{dir}"))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if pred(&name) && e.file_type().is_ok_and(|t| !t.is_dir()) {
            root.remove_file(&format!("{dir}/{name}"))?;
        }
    }
    Ok(())
}

/// Empties log files (keeping them, since some daemons expect them to exist) and drops
/// rotated ones.
fn clear_logs(root: &ImageRoot) -> Result<()> {
    let Ok(host) = root.resolve("var/log") else {
        return Ok(());
    };
    if !crate::image::guard::mounts_under(&host)?.is_empty() {
        anyhow::bail!("not clearing /var/log: something is mounted under it");
    }
    clear_dir(&host)
}

fn clear_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let ft = e.file_type()?;
        let name = e.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            clear_dir(&p)?;
        } else if ft.is_file() {
            let rotated = name.ends_with(".gz")
                || name.contains(".journal")
                || name.ends_with(".old")
                || name
                    .rsplit('.')
                    .next()
                    .is_some_and(|s| s.parse::<u32>().is_ok());
            if rotated {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&p)
                    .with_context(|| format!("emptying {}", p.display()))?;
            }
        }
    }
    Ok(())
}
