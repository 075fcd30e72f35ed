//! The build pipeline: resolve -> base -> provision -> configure -> finalize -> export.
//!
//! [`build`] reads like the stage list in the design. Every stage takes the one
//! [`BuildContext`]; nothing is global.

pub mod cgroup;
pub mod configure;
pub mod delta;
pub mod finalize;
pub mod layer;
pub mod layout;
pub mod pack;
pub mod provision;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::base::{self, cache::Cache, BaseImage, BaseOptions};
use crate::export::{self, Format};
use crate::image::{guard, AttachedImage};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::run::Cmd;

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The resolved profile.
    pub profile: Profile,
    /// Where outputs go.
    pub out_dir: PathBuf,
    /// Base options (checksums, mirror).
    pub base_opts: BaseOptions,
    /// Output formats.
    pub formats: Vec<Format>,
    /// Signing and OVA options for export.
    pub export: export::ExportOptions,
    /// Print per-stage timings at the end.
    pub timings: bool,
}

/// State shared by the stages of one build.
pub struct BuildContext {
    /// The request.
    pub req: BuildRequest,
    /// The base image.
    pub base: BaseImage,
    /// The private work directory (inside the output dir, so publishing is a rename).
    pub work: PathBuf,
    /// The cache.
    pub cache: Cache,
    /// Progress reporting.
    pub progress: Progress,
    /// How long each stage took.
    pub timings: Vec<(&'static str, Duration)>,
    /// Set once the disk is finished: lets export make a qcow2 from the packed layer.
    pub packing: Option<Packing>,
}

impl BuildContext {
    /// Runs one named stage, timing it and giving its errors context.
    pub fn stage<T>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        crate::run::check_interrupted()?;
        self.progress.stage(name, what);
        let t = Instant::now();
        let r = f(self).with_context(|| format!("{what} ({name})"));
        self.timings.push((name, t.elapsed()));
        r
    }
}

/// The host tools a build needs, with the Debian package that provides each.
pub const BUILD_TOOLS: &[(&str, &str)] = &[
    ("qemu-img", "qemu-utils"),
    ("qemu-io", "qemu-utils"),
    ("losetup", "mount"),
    ("mount", "mount"),
    ("sfdisk", "fdisk"),
    ("sgdisk", "gdisk"),
    ("growpart", "cloud-guest-utils"),
    ("blkid", "util-linux"),
    ("resize2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("fstrim", "util-linux"),
    ("chroot", "coreutils"),
    ("dpkg-scanpackages", "dpkg-dev"),
    ("gpg", "gpg"),
];

/// Tools needed only to bootstrap a base.
pub const BOOTSTRAP_TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("grub-mkimage", "grub-common"),
];

/// A host tool is missing.
#[derive(Debug, thiserror::Error)]
#[error("missing host tool{}: {}\n  install with: apt-get install {}", if .0.len() > 1 { "s" } else { "" }, .0.iter().map(|(t, p)| format!("{t} (package {p})")).collect::<Vec<_>>().join(", "), .0.iter().map(|(_, p)| p.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(" "))]
pub struct MissingTools(pub Vec<(String, String)>);

/// Checks that every tool is on PATH before any work starts.
pub fn check_tools(tools: &[(&str, &str)]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<(String, String)> = tools
        .iter()
        .filter(|(t, _)| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingTools(missing).into())
    }
}

/// The builder mounts filesystems and attaches loop devices, which needs root.
pub fn check_root() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("mesobake build must run as root: it attaches loop devices, mounts the image and runs apt in a chroot (try: sudo mesobake build ...)");
    }
    Ok(())
}

/// Builds an image from a profile, end to end. Outputs appear in `out_dir` only when the
/// whole build succeeded.
pub fn build(req: BuildRequest) -> Result<Vec<export::Output>> {
    check_root()?;
    check_tools(BUILD_TOOLS)?;
    if base::named(&req.profile.base).is_some_and(|b| matches!(b.source, base::Source::Bootstrap)) {
        check_tools(BOOTSTRAP_TOOLS)?;
    }
    base::check_spec(&req.profile.base, &req.base_opts)?;
    for f in &req.formats {
        f.check_tools()?;
    }
    req.export.check_tools()?;
    std::fs::create_dir_all(&req.out_dir)
        .with_context(|| format!("creating {}", req.out_dir.display()))?;
    let cache = Cache::open(None)?;
    let progress = Progress::new();
    let work = tempfile::Builder::new()
        .prefix(".mesobake-work-")
        .tempdir_in(&req.out_dir)
        .with_context(|| format!("creating a work dir in {}", req.out_dir.display()))?
        .keep();
    let started = Instant::now();
    let mut ctx = BuildContext {
        base: BaseImage {
            spec: String::new(),
            path: PathBuf::new(),
            sha256: String::new(),
            family: None,
            codename: None,
        },
        req,
        work: work.clone(),
        cache,
        progress,
        timings: Vec::new(),
        packing: None,
    };
    let result = run_stages(&mut ctx);
    // The work dir goes on every path; remove_work_dir refuses if anything is still
    // mounted under it, so a failed teardown never deletes inside a mounted image.
    let cleanup = guard::remove_work_dir(&work);
    let outputs = result?;
    cleanup?;
    if ctx.req.timings {
        for (name, d) in &ctx.timings {
            eprintln!("timing {name:<10} {:>7.1} s", d.as_secs_f64());
        }
        eprintln!(
            "timing {:<10} {:>7.1} s",
            "total",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(outputs)
}

fn run_stages(ctx: &mut BuildContext) -> Result<Vec<export::Output>> {
    let spec = ctx.req.profile.base.clone();
    ctx.base = ctx.stage("base", &format!("getting base {spec}"), |c| {
        c.progress
            .suspend(|| base::obtain(&spec, &c.req.base_opts, &c.cache))
    })?;
    let disk = ctx.work.join("disk.raw");
    let (layer_disk, prov_key, report) = provisioned(ctx, &disk)?;
    let prov_instance = layer::instance(&prov_key, &layer_disk)?;
    let inputs = layer::configured_inputs(ctx, &prov_instance)?;
    let key = layer::key(&inputs);
    let lock = ctx
        .cache
        .lock_entry(&format!("{}-{key}", layer::CONFIGURED))?;
    // A provisioned miss left the working disk in place; a hit copies the layer.
    if !disk.exists() {
        ctx.stage(
            "disk",
            &format!("using the cached provisioned layer {}", &prov_key[..12]),
            |_| layer::copy_sparse(&layer_disk, &disk),
        )?;
    }
    let configured = match layer::lookup(&ctx.cache, layer::CONFIGURED, &key)? {
        Some((data, m)) => {
            let facts: ConfiguredFacts =
                serde_json::from_value(m.extra).context("reading the configured layer")?;
            ctx.stage(
                "layer",
                &format!("using the cached configured layer {}", &key[..12]),
                |_| delta::apply_raw(&facts.delta, &data, &disk),
            )?;
            base::detect_release(&mut ctx.base, &facts.os_release);
            Configured { facts, data }
        }
        None => {
            if crate::run::verbose() {
                eprintln!(
                    "mesobake: configured layer {} missed: {}",
                    &key[..12],
                    layer::explain_miss(&ctx.cache, layer::CONFIGURED, &inputs)
                );
            }
            let (facts, data) = configure(ctx, &disk, &layer_disk)?;
            let data = ctx.stage("layer", "saving the configured layer", |c| {
                let extra = serde_json::to_value(&facts)?;
                layer::save(
                    &c.cache,
                    layer::CONFIGURED,
                    &key,
                    inputs,
                    "delta.bin",
                    layer::LayerFacts {
                        extra,
                        ..Default::default()
                    },
                    |p| move_file(&data, p),
                )
            })?;
            Configured { facts, data }
        }
    };
    drop(lock);
    let facts = export::BuildFacts {
        packages: report.packages,
        debs: report.debs,
        layout: configured.facts.layout.clone(),
        skipped_mounts: configured.facts.skipped_mounts.clone(),
    };
    ctx.packing = Some(Packing {
        layer_disk,
        provisioned: prov_instance,
        delta: configured.facts.delta,
        data: configured.data,
    });
    ctx.stage("export", "writing outputs", |c| {
        export::run(c, &disk, &facts)
    })
}

/// What the configured layer records besides the delta's data.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ConfiguredFacts {
    delta: delta::Delta,
    layout: layout::Layout,
    skipped_mounts: Vec<String>,
    os_release: String,
}

struct Configured {
    facts: ConfiguredFacts,
    data: PathBuf,
}

/// How a qcow2 output can be made from the packed provisioned layer plus a delta.
pub struct Packing {
    /// The provisioned layer's raw disk.
    pub layer_disk: PathBuf,
    /// Its instance ([`layer::instance`]).
    pub provisioned: String,
    /// The changes from it to the finished disk.
    pub delta: delta::Delta,
    /// The delta's data.
    pub data: PathBuf,
}

/// Finds or makes the provisioned layer. On a miss the working disk is left holding the
/// provisioned content; on a hit it is not created. Returns the layer's disk, its key and
/// what provisioning installed.
fn provisioned(
    ctx: &mut BuildContext,
    disk: &Path,
) -> Result<(PathBuf, String, provision::ProvisionReport)> {
    let name = ctx.req.profile.name.clone();
    let mnt = ctx.work.join("root");
    let inputs = layer::inputs(ctx)?;
    let key = layer::key(&inputs);
    // One build at a time makes a given layer; the others wait and then reuse it.
    let _lock = ctx
        .cache
        .lock_entry(&format!("{}-{key}", layer::PROVISIONED))?;
    if let Some((layer_disk, m)) = layer::lookup(&ctx.cache, layer::PROVISIONED, &key)? {
        let report = provision::ProvisionReport {
            packages: m.packages,
            debs: m.debs,
        };
        return Ok((layer_disk, key, report));
    }
    if crate::run::verbose() {
        eprintln!(
            "mesobake: provisioned layer {} missed: {}",
            &key[..12],
            layer::explain_miss(&ctx.cache, layer::PROVISIONED, &inputs)
        );
    }
    ctx.stage("disk", "preparing a working copy of the base disk", |c| {
        prepare_disk(c, disk)
    })?;
    let report = with_image(disk, &mnt, |img| {
        detect_release(ctx, img);
        let report = ctx.stage(
            "provision",
            &format!("installing packages into {name}"),
            |c| provision::run(c, img),
        )?;
        // The layer is cleaned like a finished image, so that the clusters apt and its
        // lists dirtied are not part of every role's delta.
        ctx.stage("clean", "cleaning the provisioned disk", |c| {
            finalize::run(c, img)
        })?;
        Ok(report)
    })?;
    let layer_disk = ctx.stage("layer", "saving the provisioned layer", |c| {
        layer::save(
            &c.cache,
            layer::PROVISIONED,
            &key,
            inputs,
            "disk.raw",
            layer::LayerFacts {
                packages: report.packages.clone(),
                debs: report.debs.clone(),
                ..Default::default()
            },
            |p| layer::copy_sparse(disk, p),
        )
    })?;
    Ok((layer_disk, key, report))
}

/// Configures and finalizes the working disk, then records how it differs from the
/// provisioned layer. Returns the facts and the delta's data file (in the work dir).
fn configure(
    ctx: &mut BuildContext,
    disk: &Path,
    layer_disk: &Path,
) -> Result<(ConfiguredFacts, PathBuf)> {
    let name = ctx.req.profile.name.clone();
    let mnt = ctx.work.join("root");
    let (layout, skipped_mounts, os_release) = with_image(disk, &mnt, |img| {
        detect_release(ctx, img);
        let layout = ctx.stage("configure", &format!("configuring {name}"), |c| {
            configure::run(c, img)
        })?;
        ctx.stage(
            "finalize",
            &format!("cleaning {name} for distribution"),
            |c| finalize::run(c, img),
        )?;
        let os_release = img
            .root
            .read_to_string("etc/os-release")
            .unwrap_or_default();
        Ok((layout, img.skipped.clone(), os_release))
    })?;
    let data = ctx.work.join("delta.bin");
    let delta = ctx.stage("delta", "finding the changed clusters", |_| {
        delta::diff(layer_disk, disk, &data)
    })?;
    if crate::run::verbose() {
        eprintln!(
            "mesobake: {name} differs from the provisioned layer in {} runs, {} KiB of data and {} KiB zeroed",
            delta.extents.len(),
            delta.data_bytes() >> 10,
            (delta.changed_bytes() - delta.data_bytes()) >> 10
        );
    }
    Ok((
        ConfiguredFacts {
            delta,
            layout,
            skipped_mounts,
            os_release,
        },
        data,
    ))
}

/// Moves a file, copying when the two places are on different filesystems.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::remove_file(from)?;
    }
    Ok(())
}

/// Fills in the base's family and codename from the image when they are not known.
fn detect_release(ctx: &mut BuildContext, img: &AttachedImage) {
    let os_release = img
        .root
        .read_to_string("etc/os-release")
        .unwrap_or_default();
    base::detect_release(&mut ctx.base, &os_release);
}

/// Attaches the disk, runs `f`, and always unmounts before returning, reporting both
/// errors if `f` and the unmount fail.
fn with_image<T>(
    disk: &Path,
    mnt: &Path,
    f: impl FnOnce(&mut AttachedImage) -> Result<T>,
) -> Result<T> {
    let mut img = AttachedImage::attach(disk, mnt).context("attaching the image")?;
    let inner = f(&mut img);
    let closed = img.close().context("unmounting the image");
    match (inner, closed) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("and then: {c:#}"))),
    }
}

/// Unpacks a base or cached layer (any qemu-img format) into the raw working disk.
fn raw_copy(from: &Path, disk: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(from)
        .arg(disk)
        .run()
}

/// Copies the base into a raw working disk and grows it to the profile's size.
fn prepare_disk(ctx: &mut BuildContext, disk: &Path) -> Result<()> {
    raw_copy(&ctx.base.path, disk).context("converting the base to a raw working disk")?;
    let size = std::fs::metadata(disk)?.len();
    let want = ctx.req.profile.disk_size;
    if want > size {
        let f = std::fs::OpenOptions::new().write(true).open(disk)?;
        f.set_len(want)?;
        drop(f);
        // Move the GPT backup header to the new end, then grow the root partition.
        Cmd::new("sgdisk")
            .arg("-e")
            .arg(disk)
            .run()
            .context("moving the GPT backup header")?;
        let parts = crate::image::disk::partitions(disk)?;
        let root = crate::image::disk::root_partition(&parts)?.clone();
        let grow = Cmd::new("growpart")
            .arg(disk)
            .arg(root.number.to_string())
            .output();
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
    } else if want < size {
        eprintln!(
            "mesobake: note: the base disk ({} MiB) is larger than disk-size ({} MiB); keeping the base size",
            size >> 20,
            want >> 20
        );
    }
    Ok(())
}
