//! Export: disk formats, the OVA appliance, the EC2 import kit, `SHA256SUMS` (optionally
//! signed) and the JSON build manifest, published into the output directory by rename so
//! that a failed build leaves nothing half-written.
//!
//! Each format is one [`Format`] variant with its file name, qemu-img format and options;
//! new formats slot in there. Conversions run `qemu-img convert -p` and show its
//! percentage; each output is then pinned ([`pin`]) so that the same disk gives the same
//! bytes.

pub mod check;
pub mod ec2;
pub mod manifest;
pub mod ova;
pub mod pin;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::cache::sha256_file;
use crate::progress::PercentBar;
use crate::run::Cmd;
use crate::stage::layout::Layout;
use crate::stage::BuildContext;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Compressed qcow2, for KVM/libvirt.
    Qcow2,
    /// A raw disk (sparse; EC2 import, `dd`).
    Raw,
    /// monolithicSparse VMDK, for VMware and VirtualBox.
    Vmdk,
    /// VirtualBox's native VDI (dynamic).
    Vdi,
    /// Hyper-V's VHDX (dynamic).
    Vhdx,
    /// VHD (qemu's `vpc`), dynamic, with the exact virtual size (`force_size`).
    Vhd,
    /// VHD with the fixed subformat, as Azure requires.
    VhdFixed,
    /// A VirtualBox/VMware appliance: OVF + streamOptimized VMDK + .mf in one tar.
    Ova,
    /// EC2 import kit: streamOptimized VMDK, containers.json, user-data, LAUNCH.md.
    Ec2,
}

/// Every format, in the order outputs are written.
pub const ALL_FORMATS: [Format; 9] = [
    Format::Qcow2,
    Format::Raw,
    Format::Vmdk,
    Format::Vdi,
    Format::Vhdx,
    Format::Vhd,
    Format::VhdFixed,
    Format::Ova,
    Format::Ec2,
];

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Format> {
        ALL_FORMATS
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown output format {s:?}: supported formats are {}",
                    ALL_FORMATS.map(|f| f.name()).join(", ")
                )
            })
    }
}

impl Format {
    /// The name used in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Vhdx => "vhdx",
            Format::Vhd => "vhd",
            Format::VhdFixed => "vhd-fixed",
            Format::Ova => "ova",
            Format::Ec2 => "ec2",
        }
    }

    /// The extension of the main output file (`NAME.EXT`).
    pub fn ext(self) -> &'static str {
        match self {
            Format::VhdFixed => "fixed.vhd",
            Format::Ec2 => "ec2.vmdk",
            f => f.name(),
        }
    }

    /// The qemu-img format of the disk this format writes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
            Format::Vmdk | Format::Ova | Format::Ec2 => "vmdk",
            Format::Vdi => "vdi",
            Format::Vhdx => "vhdx",
            Format::Vhd | Format::VhdFixed => "vpc",
        }
    }

    /// `qemu-img convert` options for this format.
    pub fn qemu_options(self) -> &'static [&'static str] {
        match self {
            // -c compresses; -m 16 keeps 16 requests in flight. Not -W: out-of-order
            // writes are ~2x faster but place clusters differently on every run, and
            // the qcow2 would no longer be reproducible.
            Format::Qcow2 => &["-c", "-m", "16"],
            Format::Ova | Format::Ec2 => &["-o", "subformat=streamOptimized"],
            // Without force_size, vpc rounds the size to a CHS geometry and the disk
            // comes out a little smaller than the original.
            Format::Vhd => &["-o", "subformat=dynamic,force_size=on"],
            Format::VhdFixed => &["-o", "subformat=fixed,force_size=on"],
            _ => &[],
        }
    }

    /// [`qemu_options`](Self::qemu_options) plus the chosen qcow2 compression.
    pub fn options_with(self, compression: Qcow2Compression) -> Vec<&'static str> {
        let mut opts = self.qemu_options().to_vec();
        if self == Format::Qcow2 && compression == Qcow2Compression::Zstd {
            opts.extend(["-o", "compression_type=zstd"]);
        }
        opts
    }

    /// Checks the host tools this format needs.
    pub fn check_tools(self) -> Result<()> {
        crate::stage::check_tools(&[("qemu-img", "qemu-utils")])
    }
}

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

/// Export settings beyond the format list.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// GnuPG key to sign SHA256SUMS with (detached, ASCII-armoured SHA256SUMS.asc).
    pub sign: Option<String>,
    /// The OVA manifest's digest.
    pub ova_digest: ova::MfDigest,
    /// qcow2 compression: zlib reads everywhere; zstd is several times faster to write
    /// but needs QEMU 5.1 or later wherever the image is used.
    pub qcow2_compression: Qcow2Compression,
}

/// The compression of qcow2 outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Qcow2Compression {
    /// Readable by every QEMU.
    #[default]
    Zlib,
    /// Faster; needs QEMU >= 5.1 to read.
    Zstd,
}

impl ExportOptions {
    /// Checks the host tools these options need, before the build starts.
    pub fn check_tools(&self) -> Result<()> {
        if self.sign.is_some() {
            crate::stage::check_tools(&[("gpg", "gpg")])?;
        }
        Ok(())
    }
}

/// Parses a comma-separated format list.
pub fn parse_formats(list: &[String]) -> Result<Vec<Format>> {
    let mut v = Vec::new();
    for item in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let f: Format = item.parse()?;
        if !v.contains(&f) {
            v.push(f);
        }
    }
    if v.is_empty() {
        bail!("no output format given");
    }
    Ok(v)
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
        })
    }
}

/// What the earlier stages learned, for the manifest.
#[derive(Debug, Clone)]
pub struct BuildFacts {
    /// Installed packages and versions.
    pub packages: Vec<(String, String)>,
    /// Local .debs offered to apt, with digests.
    pub debs: Vec<(String, String)>,
    /// The detected layout.
    pub layout: Layout,
    /// Mount points that could not be mounted during the build.
    pub skipped_mounts: Vec<String>,
}

/// Converts the disk into every requested format, then publishes outputs, SHA256SUMS (and
/// its signature) and the manifest into the output directory.
pub fn run(ctx: &mut BuildContext, disk: &Path, facts: &BuildFacts) -> Result<Vec<Output>> {
    let staging = ctx.work.join("out");
    std::fs::create_dir_all(&staging)?;
    let name = ctx.req.profile.name.clone();
    let virtual_size = std::fs::metadata(disk)?.len();
    let seed = manifest::input_fingerprint(ctx, facts);
    let epoch = pin::source_date_epoch();
    let opts = ctx.req.export.clone();
    let mut outputs = Vec::new();
    // The OVA and the EC2 kit share one streamOptimized VMDK, converted once.
    let stream = ctx.work.join("stream.vmdk");
    let mut have_stream = false;
    let mut times = Vec::new();
    for f in ctx.req.formats.clone() {
        let started = std::time::Instant::now();
        let file = format!("{name}.{}", f.ext());
        let dest = staging.join(&file);
        match f {
            Format::Ova | Format::Ec2 => {
                if !have_stream {
                    let bar = ctx
                        .progress
                        .percent(&format!("converting to a streamOptimized VMDK for {file}"));
                    convert(disk, &stream, "vmdk", f.qemu_options(), &bar)?;
                    bar.done();
                    pin::pin("vmdk", &stream, &seed, epoch)?;
                    have_stream = true;
                }
            }
            _ => {
                let opts = f.options_with(ctx.req.export.qcow2_compression);
                if !(f == Format::Qcow2 && crate::stage::pack::qcow2(ctx, &dest, &opts)?) {
                    let bar = ctx.progress.percent(&format!("converting to {file}"));
                    convert(disk, &dest, f.qemu_name(), &opts, &bar)?;
                    bar.done();
                }
                pin::pin(f.qemu_name(), &dest, &seed, epoch)?;
            }
        }
        match f {
            Format::Ova => {
                ctx.progress.step(&format!("packing {file}"));
                ova::write_ova(
                    &ova::OvaInput {
                        appliance: appliance(ctx, virtual_size),
                        vmdk: &stream,
                        seed_iso: None,
                        digest: opts.ova_digest,
                        mtime: epoch,
                    },
                    &dest,
                )?;
                outputs.push(Output::describe(
                    &staging,
                    &file,
                    f,
                    OutputKind::Appliance,
                    virtual_size,
                )?);
            }
            Format::Ec2 => {
                // A hard link: the OVA packs the same VMDK.
                std::fs::hard_link(&stream, &dest)
                    .or_else(|_| std::fs::copy(&stream, &dest).map(|_| ()))
                    .with_context(|| format!("writing {file}"))?;
                outputs.push(Output::describe(
                    &staging,
                    &file,
                    f,
                    OutputKind::Disk,
                    virtual_size,
                )?);
                let p = &ctx.req.profile;
                let kit = ec2::Ec2Kit {
                    image: name.clone(),
                    disk_file: file.clone(),
                    disk_format: "vmdk".into(),
                    nodes: vec![ec2::Ec2Node {
                        name: name.clone(),
                        user_data: ec2::default_user_data(
                            p.runs(crate::profile::Service::Zookeeper),
                        ),
                    }],
                    instance_type: if p.runs(crate::profile::Service::Marathon) {
                        "t3.large".into()
                    } else {
                        "t3.medium".into()
                    },
                };
                for t in kit.write(&staging)? {
                    outputs.push(Output::describe(&staging, &t, f, OutputKind::Text, 0)?);
                }
            }
            _ => outputs.push(Output::describe(
                &staging,
                &file,
                f,
                OutputKind::Disk,
                virtual_size,
            )?),
        }
        let size = std::fs::metadata(staging.join(&file))?.len();
        times.push((file, started.elapsed().as_secs_f64(), size));
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
    let out_dir = ctx.req.out_dir.clone();
    // Two builds into the same directory take turns updating SHA256SUMS and the manifest.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out_dir.join(".mesobake.lock"))
        .context("opening the output directory lock")?;
    fs4::fs_std::FileExt::lock_exclusive(&lock).context("locking the output directory")?;
    let entry = manifest::Entry::new(ctx, facts, &outputs);
    let mut m = manifest::Manifest::load(&out_dir)?;
    m.images.insert(name, entry);
    let mut json = serde_json::to_vec_pretty(&m)?;
    json.push(b'\n');
    std::fs::write(staging.join("manifest.json"), json)?;
    // SHA256SUMS covers the manifest too, so a signature vouches for both.
    let manifest_out =
        Output::describe(&staging, "manifest.json", Format::Raw, OutputKind::Text, 0)?;
    let mut listed = outputs.clone();
    listed.push(manifest_out);
    let sums = manifest::sha256sums(&out_dir, &listed)?;
    std::fs::write(staging.join("SHA256SUMS"), sums)?;
    if let Some(key) = &opts.sign {
        ctx.progress.step(&format!("signing SHA256SUMS with {key}"));
        sign(&staging.join("SHA256SUMS"), key)?;
    }
    // Publish: the images first, then the files that describe them. A signature from an
    // earlier build no longer matches, so it goes before the new SHA256SUMS arrives.
    for o in &outputs {
        publish(&staging.join(&o.file), &out_dir.join(&o.file))?;
    }
    for old in SIGNATURE_FILES {
        match std::fs::remove_file(out_dir.join(old)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the stale {old}"))
            }
            _ => {}
        }
    }
    publish(
        &staging.join("manifest.json"),
        &out_dir.join("manifest.json"),
    )?;
    publish(&staging.join("SHA256SUMS"), &out_dir.join("SHA256SUMS"))?;
    if opts.sign.is_some() {
        publish(
            &staging.join("SHA256SUMS.asc"),
            &out_dir.join("SHA256SUMS.asc"),
        )?;
    }
    Ok(outputs)
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
    use crate::profile::Service;
    let p = &ctx.req.profile;
    ova::Appliance {
        name: p.name.clone(),
        os: match ctx.base.family {
            Some(crate::base::Family::Ubuntu) => ova::GuestOs::Ubuntu64,
            _ => ova::GuestOs::Debian64,
        },
        cpus: 2,
        memory_mb: if p.runs(Service::Zookeeper) || p.runs(Service::Marathon) {
            4096
        } else {
            2048
        },
        disk_capacity: capacity,
    }
}

/// Moves a finished file into place atomically (same filesystem: the work dir lives in
/// the output directory).
fn publish(from: &Path, to: &PathBuf) -> Result<()> {
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

    #[test]
    fn formats_parse_from_lists() {
        assert_eq!(
            parse_formats(&["qcow2,raw".into(), "qcow2".into()]).unwrap(),
            vec![Format::Qcow2, Format::Raw]
        );
        assert!(
            format!("{:#}", parse_formats(&["vmdk9".into()]).unwrap_err())
                .contains("unknown output format \"vmdk9\"")
        );
        let all = parse_formats(&["qcow2,vmdk,vdi,vhdx,vhd,vhd-fixed,raw,ova,ec2".into()]).unwrap();
        assert_eq!(all.len(), 9);
        assert_eq!(
            serde_json::to_string(&Format::VhdFixed).unwrap(),
            "\"vhd-fixed\""
        );
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
