//! Export: disk formats, the OVA appliance, the EC2 import kit, the SPDX SBOM,
//! `SHA256SUMS` (optionally signed) and the JSON build manifest, published into the
//! output directory by rename so that a failed build leaves nothing half-written.
//!
//! Each format is one [`Format`] variant with its file name, qemu-img format and options;
//! new formats slot in there. Conversions run `qemu-img convert -p` and show its
//! percentage; each output is then pinned ([`pin`]) so that the same disk gives the same
//! bytes.

pub mod check;
pub mod diff;
pub mod ec2;
pub mod manifest;
pub mod ova;
pub mod pin;
pub mod qcow2;
pub mod sbom;
pub mod stream;
pub mod vmdk_stream;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::cache::sha256_file;
use crate::context::BuildContext;
use crate::layers::{Configured, Provisioned};
use crate::progress::PercentBar;
use crate::run::Cmd;
use crate::stage::layout::Layout;

pub use crate::context::ExportOptions;
pub use crate::settings::{parse_formats, Format, Qcow2Compression, ALL_FORMATS};

/// Converts `src` into `dest` with `qemu-img convert -p`, feeding its percentage to `bar`.
pub fn convert(
    src: &Path,
    dest: &Path,
    qemu_format: &str,
    options: &[&str],
    bar: &PercentBar,
) -> Result<()> {
    let watch = bar.clone();
    Cmd::new("qemu-img")
        .args(["convert", "-p", "-O", qemu_format])
        .args(options)
        .arg(src)
        .arg(dest)
        .watch_stdout(move |chunk| {
            if let Some(p) = last_percent(chunk) {
                watch.set(p);
            }
        })
        .run()
        .with_context(|| format!("converting to {qemu_format}"))
}

/// The last `(NN.NN/100%)` figure in a chunk of `qemu-img -p` output.
pub fn last_percent(chunk: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(chunk);
    let end = text.rfind("/100%)")?;
    let start = text[..end].rfind('(')? + 1;
    text[start..end].trim().parse().ok()
}

/// One published output file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    /// The file name in the output directory.
    pub file: String,
    /// The format it belongs to.
    pub format: Format,
    /// What the file is.
    #[serde(default)]
    pub kind: OutputKind,
    /// The disk's virtual size in bytes (0 for files that are not disks).
    pub virtual_size: u64,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's SHA256.
    pub sha256: String,
    /// A qcow2's compression type (zstd by default; zlib for old QEMU). `mesobake check`
    /// compares it with the file's own header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Qcow2Compression>,
}

/// What an output file is, which decides how `mesobake check` examines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A disk image in the format's qemu-img format.
    #[default]
    Disk,
    /// An OVA appliance.
    Appliance,
    /// A text file that goes with a disk (containers.json, user-data, LAUNCH.md).
    Text,
    /// The image's SPDX SBOM (`NAME.spdx.json`). Its `format` is the build's first
    /// format; it describes the image in every format.
    Sbom,
}

impl OutputKind {
    /// Whether the file is a disk or holds one (and so has a virtual size).
    pub fn has_disk(self) -> bool {
        matches!(self, OutputKind::Disk | OutputKind::Appliance)
    }
}

impl Output {
    /// Describes a finished file in `dir`.
    pub fn describe(
        dir: &Path,
        file: &str,
        format: Format,
        kind: OutputKind,
        virtual_size: u64,
    ) -> Result<Output> {
        let p = dir.join(file);
        Ok(Output {
            file: file.to_string(),
            format,
            kind,
            virtual_size,
            size: std::fs::metadata(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .len(),
            sha256: sha256_file(&p)?,
            compression: None,
        })
    }
}

/// What the earlier stages learned, for the manifest.
#[derive(Debug, Clone)]
pub struct BuildFacts {
    /// Installed packages.
    pub packages: Vec<crate::stage::provision::Package>,
    /// Local .debs offered to apt, with digests.
    pub debs: Vec<(String, String)>,
    /// The detected layout.
    pub layout: Layout,
    /// Mount points that could not be mounted during the build.
    pub skipped_mounts: Vec<String>,
}

/// Converts the working disk into every requested format, writes the SBOM, then
/// publishes outputs, SHA256SUMS (and its signature) and the manifest into the output
/// directory.
pub fn run(ctx: &mut BuildContext, prov: &Provisioned, conf: &Configured) -> Result<Vec<Output>> {
    let facts = BuildFacts {
        packages: prov.report.packages.clone(),
        debs: prov.report.debs.clone(),
        layout: conf.layout.clone(),
        skipped_mounts: conf.skipped_mounts.clone(),
    };
    let record = manifest::BuildRecord::new(ctx, &facts)?;
    let mut st = Staging::new(ctx, &record)?;
    let mut outputs = Vec::new();
    let mut times = Vec::new();
    for f in ctx.req.formats.clone() {
        let started = Instant::now();
        let written = match f {
            Format::Qcow2 => write_qcow2(ctx, &st, prov, conf)?,
            Format::Ova => {
                let vmdk = st.stream(ctx, prov, conf)?;
                write_ova(ctx, &st, &vmdk)?
            }
            Format::Ec2 => {
                let vmdk = st.stream(ctx, prov, conf)?;
                write_ec2(ctx, &st, &vmdk)?
            }
            _ => write_disk(ctx, &st, f)?,
        };
        let size = written[0].size;
        times.push((
            written[0].file.clone(),
            started.elapsed().as_secs_f64(),
            size,
        ));
        outputs.extend(written);
    }
    if ctx.req.timings {
        // Per output: conversion (and packing) time, digest included, and file size.
        for (file, secs, size) in &times {
            eprintln!(
                "timing output {file:<32} {secs:>7.1} s {:>8.1} MiB",
                *size as f64 / 1048576.0
            );
        }
    }
    outputs.push(write_sbom(ctx, &st, &facts, &record, outputs[0].format)?);
    publish_all(ctx, &st.dir, &facts, &record, &outputs)?;
    Ok(outputs)
}

/// `NAME.spdx.json`: the image's installed packages as an SPDX 2.3 document.
fn write_sbom(
    ctx: &BuildContext,
    st: &Staging,
    facts: &BuildFacts,
    record: &manifest::BuildRecord,
    format: Format,
) -> Result<Output> {
    let file = format!("{}.spdx.json", st.name);
    let doc = sbom::document(&sbom::SbomInput {
        image: &st.name,
        packages: &facts.packages,
        build: record,
        family: ctx.base.family,
        codename: ctx.base.codename.as_deref(),
    });
    let mut json = serde_json::to_vec_pretty(&doc)?;
    json.push(b'\n');
    write(&st.dir.join(&file), json)?;
    st.describe(&file, format, OutputKind::Sbom)
}

/// Where a build's outputs are written before they are published, and what pins them.
struct Staging {
    /// The staging directory, in the work dir (same filesystem as the output dir).
    dir: PathBuf,
    /// The image name (the profile's).
    name: String,
    /// The finished raw disk.
    disk: PathBuf,
    /// Its size.
    virtual_size: u64,
    /// What derived UUIDs and serials are seeded with.
    seed: String,
    /// SOURCE_DATE_EPOCH, or 0.
    epoch: u64,
    /// The streamOptimized VMDK the OVA and the EC2 kit share, once converted.
    stream: Option<PathBuf>,
}

impl Staging {
    fn new(ctx: &BuildContext, record: &manifest::BuildRecord) -> Result<Staging> {
        let dir = ctx.work.join("out");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let disk = ctx.disk();
        let virtual_size = std::fs::metadata(&disk)
            .with_context(|| format!("reading {}", disk.display()))?
            .len();
        Ok(Staging {
            dir,
            name: ctx.req.profile.name.clone(),
            disk,
            virtual_size,
            seed: record.input_fingerprint.clone(),
            epoch: pin::source_date_epoch(),
            stream: None,
        })
    }

    /// The main file of format `f`.
    fn file(&self, f: Format) -> String {
        format!("{}.{}", self.name, f.ext())
    }

    /// Describes a staged file.
    fn describe(&self, file: &str, f: Format, kind: OutputKind) -> Result<Output> {
        let vsize = if kind.has_disk() {
            self.virtual_size
        } else {
            0
        };
        Output::describe(&self.dir, file, f, kind, vsize)
    }

    /// Converts the disk to `dest` with `f`'s options and pins it.
    fn convert(&self, ctx: &BuildContext, f: Format, dest: &Path, what: &str) -> Result<()> {
        let opts = f.options_with(ctx.req.export.qcow2_compression);
        let bar = ctx.progress.percent(what);
        convert(&self.disk, dest, f.qemu_name(), &opts, &bar)?;
        bar.done();
        pin::pin(f.qemu_name(), dest, &self.seed, self.epoch)?;
        Ok(())
    }

    /// The streamOptimized VMDK that the OVA and the EC2 kit share, written once.
    fn stream(
        &mut self,
        ctx: &mut BuildContext,
        prov: &Provisioned,
        conf: &Configured,
    ) -> Result<PathBuf> {
        if let Some(s) = &self.stream {
            return Ok(s.clone());
        }
        let dest = ctx.work.join("stream.vmdk");
        stream::from_layers(ctx, prov, conf, pin::derive_cid(&self.seed), &dest)?;
        self.stream = Some(dest.clone());
        Ok(dest)
    }
}

/// A qcow2: the packed provisioned layer plus the changed clusters, or a conversion of
/// the whole disk when the delta is large.
fn write_qcow2(
    ctx: &mut BuildContext,
    st: &Staging,
    prov: &Provisioned,
    conf: &Configured,
) -> Result<Vec<Output>> {
    let f = Format::Qcow2;
    let file = st.file(f);
    let dest = st.dir.join(&file);
    let opts = f.options_with(ctx.req.export.qcow2_compression);
    if qcow2::from_layers(ctx, prov, conf, &dest, &opts)? {
        pin::pin(f.qemu_name(), &dest, &st.seed, st.epoch)?;
    } else {
        st.convert(ctx, f, &dest, &format!("converting to {file}"))?;
    }
    let mut out = st.describe(&file, f, OutputKind::Disk)?;
    out.compression = Some(ctx.req.export.qcow2_compression);
    Ok(vec![out])
}

/// A disk format that is one `qemu-img convert` (vmdk, vdi, vhdx, vhd, vhd-fixed), or the
/// finished disk itself (raw).
fn write_disk(ctx: &BuildContext, st: &Staging, f: Format) -> Result<Vec<Output>> {
    let file = st.file(f);
    if f == Format::Raw {
        link_raw(&st.disk, &st.dir.join(&file))?;
        return Ok(vec![st.describe(&file, f, OutputKind::Disk)?]);
    }
    st.convert(
        ctx,
        f,
        &st.dir.join(&file),
        &format!("converting to {file}"),
    )?;
    Ok(vec![st.describe(&file, f, OutputKind::Disk)?])
}

/// The raw output is the finished disk: nothing changes it after finalize, and the work
/// directory is on the output directory's filesystem, so a hard link publishes it without
/// copying 6 GiB (a copy, keeping holes, where a link is refused).
fn link_raw(disk: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::hard_link(disk, dest).is_err() {
        crate::layers::store::copy_sparse(disk, dest)?;
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", dest.display()))
}

/// The OVA: descriptor, the shared streamOptimized VMDK and the `.mf`, in one tar.
fn write_ova(ctx: &BuildContext, st: &Staging, stream: &Path) -> Result<Vec<Output>> {
    let file = st.file(Format::Ova);
    ctx.progress.step(&format!("packing {file}"));
    let input = ova::OvaInput {
        appliance: appliance(ctx, st.virtual_size),
        vmdk: stream,
        seed_iso: None,
        digest: ctx.req.export.ova_digest,
        mtime: st.epoch,
    };
    ova::write_ova(&input, &st.dir.join(&file))?;
    Ok(vec![st.describe(
        &file,
        Format::Ova,
        OutputKind::Appliance,
    )?])
}

/// The EC2 import kit: the shared streamOptimized VMDK, containers.json, user-data and
/// LAUNCH.md.
fn write_ec2(ctx: &BuildContext, st: &Staging, stream: &Path) -> Result<Vec<Output>> {
    use crate::profile::Service;
    let f = Format::Ec2;
    let file = st.file(f);
    let dest = st.dir.join(&file);
    // A hard link: the OVA packs the same VMDK.
    std::fs::hard_link(stream, &dest)
        .or_else(|_| std::fs::copy(stream, &dest).map(|_| ()))
        .with_context(|| format!("writing {file}"))?;
    let mut outputs = vec![st.describe(&file, f, OutputKind::Disk)?];
    let p = &ctx.req.profile;
    let kit = ec2::Ec2Kit {
        image: st.name.clone(),
        disk_file: file.clone(),
        disk_format: "vmdk".into(),
        nodes: vec![ec2::Ec2Node {
            name: st.name.clone(),
            user_data: ec2::default_user_data(p.runs(Service::Zookeeper)),
        }],
        // A JVM (ZooKeeper, Marathon) wants the larger instance.
        instance_type: if crate::service::wants_jvm_memory(&p.services) {
            "t3.large".into()
        } else {
            "t3.medium".into()
        },
    };
    for t in kit.write(&st.dir)? {
        outputs.push(st.describe(&t, f, OutputKind::Text)?);
    }
    Ok(outputs)
}

/// Writes the manifest and SHA256SUMS (signed if asked) beside the staged outputs, then
/// publishes: the images first, then the files that describe them.
fn publish_all(
    ctx: &BuildContext,
    staging: &Path,
    facts: &BuildFacts,
    record: &manifest::BuildRecord,
    outputs: &[Output],
) -> Result<()> {
    let entry = manifest::Entry::new(ctx, facts, record, outputs);
    publish_record(
        &ctx.req.out_dir,
        staging,
        &ctx.req.profile.name,
        entry,
        outputs,
        ctx.req.export.sign.as_deref(),
        &ctx.progress,
    )
}

/// What [`publish_all`] does once the build's record is made: under the output
/// directory's lock, merges the record into the directory's manifest and SHA256SUMS,
/// signs, and publishes by rename.
fn publish_record(
    out_dir: &Path,
    staging: &Path,
    image: &str,
    entry: manifest::Entry,
    outputs: &[Output],
    sign: Option<&str>,
    progress: &crate::progress::Progress,
) -> Result<()> {
    // Two builds into the same directory take turns updating SHA256SUMS and the manifest.
    let _lock = lock_out_dir(out_dir)?;
    let mut m = manifest::Manifest::load(out_dir)?;
    m.images.insert(image.to_string(), entry);
    let mut json = serde_json::to_vec_pretty(&m)?;
    json.push(b'\n');
    write(&staging.join("manifest.json"), json)?;
    // SHA256SUMS covers the manifest too, so a signature vouches for both.
    let manifest_out =
        Output::describe(staging, "manifest.json", Format::Raw, OutputKind::Text, 0)?;
    let mut listed = outputs.to_vec();
    listed.push(manifest_out);
    let sums = manifest::sha256sums(out_dir, &listed)?;
    write(&staging.join("SHA256SUMS"), sums)?;
    if let Some(key) = sign {
        progress.step(&format!("signing SHA256SUMS with {key}"));
        self::sign(&staging.join("SHA256SUMS"), key)?;
    }
    for o in outputs {
        publish(&staging.join(&o.file), &out_dir.join(&o.file))?;
    }
    // A signature from an earlier build no longer matches, so it goes before the new
    // SHA256SUMS arrives.
    for old in SIGNATURE_FILES {
        match std::fs::remove_file(out_dir.join(old)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the stale {old}"))
            }
            _ => {}
        }
    }
    let mut last = vec!["manifest.json", "SHA256SUMS"];
    if sign.is_some() {
        last.push("SHA256SUMS.asc");
    }
    for f in last {
        publish(&staging.join(f), &out_dir.join(f))?;
    }
    Ok(())
}

/// The lock file that earlier mesobake builds left in the output directory; it holds no
/// data, and a published directory should hold only what was published.
const LEGACY_LOCK_FILE: &str = ".mesobake.lock";

/// Takes the output directory's publish lock: an exclusive `flock` on the directory
/// itself, so that no lock file sits among the published files. Waits for a build that
/// holds it (publishing takes seconds); released when the returned file is dropped.
fn lock_out_dir(dir: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(dir)
        .with_context(|| format!("opening the output directory {}", dir.display()))?;
    f.lock()
        .with_context(|| format!("locking the output directory {}", dir.display()))?;
    match std::fs::remove_file(dir.join(LEGACY_LOCK_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| {
                format!(
                    "removing the old lock file {LEGACY_LOCK_FILE} in {}",
                    dir.display()
                )
            })
        }
        _ => {}
    }
    Ok(f)
}

/// Writes a file, naming it in the error.
fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Detached signatures of SHA256SUMS that `check` verifies.
pub const SIGNATURE_FILES: [&str; 2] = ["SHA256SUMS.asc", "SHA256SUMS.sig"];

/// Writes `SUMS.asc`, an ASCII-armoured detached signature of `sums` by `key`.
pub fn sign(sums: &Path, key: &str) -> Result<()> {
    let mut asc = sums.as_os_str().to_owned();
    asc.push(".asc");
    Cmd::new("gpg")
        .args(["--batch", "--yes", "--armor", "--local-user", key])
        .arg("--output")
        .arg(&asc)
        .arg("--detach-sign")
        .arg(sums)
        .run()
        .with_context(|| format!("signing {} with key {key}", sums.display()))
}

/// The OVF's virtual machine for this build. Roles with the JVM services (ZooKeeper,
/// Marathon) get 4 GiB; agents 2 GiB. Both can be changed in the import dialog.
fn appliance(ctx: &BuildContext, capacity: u64) -> ova::Appliance {
    let p = &ctx.req.profile;
    ova::Appliance {
        name: p.name.clone(),
        os: match ctx.base.family {
            Some(crate::base::Family::Ubuntu) => ova::GuestOs::Ubuntu64,
            _ => ova::GuestOs::Debian64,
        },
        cpus: 2,
        memory_mb: if crate::service::wants_jvm_memory(&p.services) {
            4096
        } else {
            2048
        },
        disk_capacity: capacity,
    }
}

/// Moves a finished file into place atomically (same filesystem: the work dir lives in
/// the output directory).
fn publish(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("publishing {}", to.display()))
}

/// `qemu-img info` of a disk, as JSON.
pub fn qemu_info(path: &Path) -> Result<serde_json::Value> {
    qemu_info_as(path, None)
}

/// `qemu-img info` with the format given rather than probed (qemu-img cannot probe a
/// fixed VHD: its only footer is at the end, and it reads as raw).
pub fn qemu_info_as(path: &Path, format: Option<&str>) -> Result<serde_json::Value> {
    let mut cmd = Cmd::new("qemu-img").args(["info", "--output=json"]);
    if let Some(f) = format {
        cmd = cmd.args(["-f", f]);
    }
    let out = cmd.arg(path).read()?;
    serde_json::from_str(&out).context("parsing qemu-img info")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_qcow2_is_what_qemu_img_reports() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("d.raw");
        std::fs::write(&raw, vec![7u8; 4 << 20]).unwrap();
        let out = d.path().join("d.qcow2");
        let opts = Format::Qcow2.options_with(Qcow2Compression::Zstd);
        convert(
            &raw,
            &out,
            "qcow2",
            &opts,
            &crate::progress::PercentBar::hidden(),
        )
        .unwrap();
        let info = qemu_info(&out).unwrap();
        assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");
        assert!(!Format::Qcow2
            .options_with(Qcow2Compression::Zlib)
            .contains(&"compression_type=zstd"));
    }

    fn record(outputs: &[Output]) -> manifest::Entry {
        manifest::Entry {
            profile: manifest::ProfileRecord {
                name: "node".into(),
                services: vec![],
                sha256: String::new(),
                files: vec![],
            },
            base: manifest::BaseRecord {
                spec: "test".into(),
                sha256: String::new(),
                family: None,
                codename: None,
            },
            build: None,
            layout: serde_json::Value::Null,
            packages: Default::default(),
            local_debs: Default::default(),
            outputs: outputs.to_vec(),
        }
    }

    #[test]
    fn a_published_directory_holds_no_lock_file() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let staging = d.path().join("staging");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&staging).unwrap();
        // What an earlier mesobake left behind goes too.
        std::fs::write(out.join(LEGACY_LOCK_FILE), "").unwrap();
        let progress = crate::progress::Progress::new();
        for image in ["node", "other"] {
            let file = format!("{image}.qcow2");
            std::fs::write(staging.join(&file), image).unwrap();
            let outputs =
                vec![
                    Output::describe(&staging, &file, Format::Qcow2, OutputKind::Disk, 1).unwrap(),
                ];
            publish_record(
                &out,
                &staging,
                image,
                record(&outputs),
                &outputs,
                None,
                &progress,
            )
            .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["SHA256SUMS", "manifest.json", "node.qcow2", "other.qcow2"],
            "no dotfile (lock or otherwise) is left among the outputs"
        );
        let sums = check::read_sums(&out).unwrap();
        assert_eq!(
            sums.keys().collect::<Vec<_>>(),
            ["manifest.json", "node.qcow2", "other.qcow2"]
        );
    }

    #[test]
    fn the_output_directory_lock_excludes_a_second_publisher() {
        let d = tempfile::tempdir().unwrap();
        let held = lock_out_dir(d.path()).unwrap();
        let other = std::fs::File::open(d.path()).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        other.try_lock().unwrap();
    }

    #[test]
    fn qemu_progress_is_parsed() {
        assert_eq!(
            last_percent(b"    (0.00/100%)\r    (50.05/100%)\r"),
            Some(50.05)
        );
        assert_eq!(last_percent(b"no progress here"), None);
    }
}
