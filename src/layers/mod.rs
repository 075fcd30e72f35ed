//! The layer cache: the cache halves of the pipeline.
//!
//! - [`provisioned`]: the disk after package installation and cleaning. On a hit, apt
//!   does not run; on a miss the base is copied into the working disk, the caller's
//!   stages run on it and the result is saved.
//! - [`configured`]: the delta from the provisioned disk to the finished one. On a hit it
//!   is applied to a copy of the provisioned layer without mounting anything; on a miss
//!   the caller's stages run on the working disk and the delta is saved.
//!
//! Either way the working disk ([`BuildContext::disk`]) holds the finished image when
//! [`configured`] returns. The callers pass the stages as closures, so the orchestrator
//! still lists every stage while this module does the keys, locks, lookups and copies.
//! The layers themselves (manifests, lookup, save) are in [`store`], the cluster deltas
//! in [`delta`].

pub mod delta;
pub mod store;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::context::BuildContext;
use crate::image::AttachedImage;
use crate::run::Cmd;
use crate::stage::layout::Layout;
use crate::stage::provision::ProvisionReport;

/// The provisioned layer of this build.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The layer's raw disk, in the cache.
    pub disk: PathBuf,
    /// The layer's key (a hash of its inputs).
    pub key: String,
    /// This instance of the layer ([`store::instance`]).
    pub instance: String,
    /// What provisioning installed.
    pub report: ProvisionReport,
}

/// The configured layer of this build: how the finished disk differs from the
/// provisioned one, and what configure found.
#[derive(Debug, Clone)]
pub struct Configured {
    /// The changed clusters.
    pub delta: delta::Delta,
    /// The delta's data (in the cache).
    pub data: PathBuf,
    /// The layout configure detected.
    pub layout: Layout,
    /// Mount points that could not be mounted during the build.
    pub skipped_mounts: Vec<String>,
}

/// What the configured layer records besides the delta's data.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ConfiguredFacts {
    delta: delta::Delta,
    layout: Layout,
    skipped_mounts: Vec<String>,
    os_release: String,
}

/// Finds the provisioned layer or makes it. On a miss the working disk is prepared from
/// the base, attached, and handed to `provision`; it is left holding the provisioned
/// content. On a hit the working disk is not created.
pub fn provisioned(
    ctx: &mut BuildContext,
    provision: impl FnOnce(&mut BuildContext, &mut AttachedImage) -> Result<ProvisionReport>,
) -> Result<Provisioned> {
    let inputs = store::inputs(ctx)?;
    let key = store::key(&inputs);
    // One build at a time makes a given layer; the others wait and then reuse it.
    let _lock = ctx
        .cache
        .lock_entry(&format!("{}-{key}", store::PROVISIONED))?;
    let (disk, m) = match store::lookup(&ctx.cache, store::PROVISIONED, &key)? {
        Some(hit) => hit,
        None => {
            explain_miss(ctx, store::PROVISIONED, &key, &inputs);
            let work = ctx.disk();
            ctx.stage("disk", "preparing a working copy of the base disk", |c| {
                prepare_disk(c, &work)
            })?;
            let report = with_image(ctx, |c, img| provision(c, img))?;
            ctx.stage("layer", "saving the provisioned layer", |c| {
                let facts = store::LayerFacts {
                    packages: report.packages.clone(),
                    debs: report.debs.clone(),
                    ..Default::default()
                };
                let save = |p: &Path| store::copy_sparse(&work, p);
                store::save(
                    &c.cache,
                    store::PROVISIONED,
                    &key,
                    inputs,
                    "disk.raw",
                    facts,
                    save,
                )
            })?
        }
    };
    let instance = store::instance(&key, &m);
    let report = ProvisionReport {
        packages: m.packages,
        debs: m.debs,
    };
    Ok(Provisioned {
        disk,
        key,
        instance,
        report,
    })
}

/// Finds the configured layer or makes it, and leaves the finished image in the working
/// disk. On a miss the working disk (the provisioned layer's content) is attached and
/// handed to `configure`, and the delta it made is saved.
pub fn configured(
    ctx: &mut BuildContext,
    prov: &Provisioned,
    configure: impl FnOnce(&mut BuildContext, &mut AttachedImage) -> Result<Layout>,
) -> Result<Configured> {
    let inputs = store::configured_inputs(ctx, &prov.instance)?;
    let key = store::key(&inputs);
    let _lock = ctx
        .cache
        .lock_entry(&format!("{}-{key}", store::CONFIGURED))?;
    let disk = ctx.disk();
    // A provisioned miss left the working disk in place; a hit copies the layer.
    if !disk.exists() {
        let what = format!("using the cached provisioned layer {}", &prov.key[..12]);
        ctx.stage("disk", &what, |_| store::copy_sparse(&prov.disk, &disk))?;
    }
    if let Some((data, m)) = store::lookup(&ctx.cache, store::CONFIGURED, &key)? {
        let facts: ConfiguredFacts =
            serde_json::from_value(m.extra).context("reading the configured layer")?;
        let what = format!("using the cached configured layer {}", &key[..12]);
        ctx.stage("layer", &what, |_| {
            delta::apply_raw(&facts.delta, &data, &disk)
        })?;
        crate::base::detect_release(&mut ctx.base, &facts.os_release);
        return Ok(facts.into_configured(data));
    }
    explain_miss(ctx, store::CONFIGURED, &key, &inputs);
    let (layout, skipped_mounts, os_release) = with_image(ctx, |c, img| {
        let layout = configure(c, img)?;
        let os_release = img
            .root
            .read_to_string("etc/os-release")
            .unwrap_or_default();
        Ok((layout, img.skipped.clone(), os_release))
    })?;
    let scratch = ctx.work.join("delta.bin");
    let delta = ctx.stage("delta", "finding the changed clusters", |_| {
        delta::diff(&prov.disk, &disk, &scratch)
    })?;
    report_delta(&ctx.req.profile.name, &delta);
    let facts = ConfiguredFacts {
        delta,
        layout,
        skipped_mounts,
        os_release,
    };
    let (data, _) = ctx.stage("layer", "saving the configured layer", |c| {
        let extra = serde_json::to_value(&facts)?;
        let facts = store::LayerFacts {
            extra,
            ..Default::default()
        };
        let save = |p: &Path| move_file(&scratch, p);
        store::save(
            &c.cache,
            store::CONFIGURED,
            &key,
            inputs,
            "delta.bin",
            facts,
            save,
        )
    })?;
    Ok(facts.into_configured(data))
}

impl ConfiguredFacts {
    fn into_configured(self, data: PathBuf) -> Configured {
        Configured {
            delta: self.delta,
            data,
            layout: self.layout,
            skipped_mounts: self.skipped_mounts,
        }
    }
}

/// Under `-v`, says why a layer missed.
fn explain_miss(
    ctx: &BuildContext,
    kind: &str,
    key: &str,
    inputs: &std::collections::BTreeMap<String, String>,
) {
    if crate::run::verbose() {
        eprintln!(
            "mesobake: {kind} layer {} missed: {}",
            &key[..12],
            store::explain_miss(&ctx.cache, kind, inputs)
        );
    }
}

/// Under `-v`, says how much configure and finalize changed.
fn report_delta(name: &str, delta: &delta::Delta) {
    if crate::run::verbose() {
        eprintln!(
            "mesobake: {name} differs from the provisioned layer in {} runs, {} KiB of data and {} KiB zeroed",
            delta.extents.len(),
            delta.data_bytes() >> 10,
            (delta.changed_bytes() - delta.data_bytes()) >> 10
        );
    }
}

/// Moves a file, copying when the two places are on different filesystems.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::remove_file(from).with_context(|| format!("removing {}", from.display()))?;
    }
    Ok(())
}

/// Attaches the working disk, fills in the base's family and codename from the image
/// when its name did not say, runs `f`, and always unmounts before returning, reporting
/// both errors if `f` and the unmount fail.
fn with_image<T>(
    ctx: &mut BuildContext,
    f: impl FnOnce(&mut BuildContext, &mut AttachedImage) -> Result<T>,
) -> Result<T> {
    let mnt = ctx.work.join("root");
    let mut img = AttachedImage::attach(&ctx.disk(), &mnt).context("attaching the image")?;
    let os_release = img
        .root
        .read_to_string("etc/os-release")
        .unwrap_or_default();
    crate::base::detect_release(&mut ctx.base, &os_release);
    let inner = f(ctx, &mut img);
    let closed = img.close().context("unmounting the image");
    match (inner, closed) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("and then: {c:#}"))),
    }
}

/// Copies the base into a raw working disk and grows it to the profile's size.
fn prepare_disk(ctx: &mut BuildContext, disk: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&ctx.base.path)
        .arg(disk)
        .run()
        .context("converting the base to a raw working disk")?;
    let size = std::fs::metadata(disk)
        .with_context(|| format!("reading {}", disk.display()))?
        .len();
    let want = ctx.req.profile.disk_size;
    if want > size {
        grow_disk(disk, want)?;
    } else if want < size {
        eprintln!(
            "mesobake: note: the base disk ({} MiB) is larger than disk-size ({} MiB); keeping the base size",
            size >> 20,
            want >> 20
        );
    }
    Ok(())
}

/// Grows a raw disk to `size` bytes, then its root partition and filesystem.
fn grow_disk(disk: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    f.set_len(size)
        .with_context(|| format!("growing {}", disk.display()))?;
    drop(f);
    // Move the GPT backup header to the new end, then grow the root partition.
    Cmd::new("sgdisk")
        .arg("-e")
        .arg(disk)
        .run()
        .context("moving the GPT backup header")?;
    let parts = crate::image::disk::partitions(disk)?;
    let root = crate::image::disk::root_partition(&parts)?.clone();
    // growpart parses sfdisk's listing, which a space in the path breaks: it gets the
    // disk by its bare file name, from the disk's directory.
    let (dir, name) = (
        disk.parent().filter(|d| !d.as_os_str().is_empty()),
        disk.file_name().context("the disk has no file name")?,
    );
    let mut grow = Cmd::new("growpart").arg(name).arg(root.number.to_string());
    if let Some(d) = dir {
        grow = grow.current_dir(d);
    }
    let grow = grow.output();
    if let Err(e) = grow {
        // growpart exits 1 with NOCHANGE when the partition can't grow (not the last one).
        if !format!("{e:#}").contains("NOCHANGE") {
            return Err(e).context("growing the root partition");
        }
    }
    let parts = crate::image::disk::partitions(disk)?;
    let root = crate::image::disk::root_partition(&parts)?.clone();
    if root.fs.starts_with("ext") {
        let dev = crate::image::LoopDevice::attach(disk, root.offset, Some(root.size), false)?;
        let r = Cmd::new("e2fsck")
            .args(["-f", "-p"])
            .arg(dev.path())
            .run()
            .and_then(|_| Cmd::new("resize2fs").arg(dev.path()).run())
            .context("growing the root filesystem");
        dev.close()?;
        r?;
    }
    Ok(())
}
