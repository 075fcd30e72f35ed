//! Export: disk formats, `SHA256SUMS` and the JSON build manifest, published into the
//! output directory by rename so that a failed build leaves nothing half-written.
//!
//! Each format is one [`Format`] variant with its file extension, the tools it needs and
//! the conversion; new formats slot in there.

pub mod manifest;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::cache::sha256_file;
use crate::run::Cmd;
use crate::stage::layout::Layout;
use crate::stage::BuildContext;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Compressed qcow2, for KVM/libvirt.
    Qcow2,
    /// A raw disk (EC2 import, `dd`).
    Raw,
}

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "qcow2" => Ok(Format::Qcow2),
            "raw" => Ok(Format::Raw),
            other => bail!("unknown output format {other:?}: supported formats are qcow2, raw"),
        }
    }
}

impl Format {
    /// The file extension.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }

    /// The qemu-img format name.
    pub fn qemu_name(self) -> &'static str {
        self.ext()
    }

    /// Checks the host tools this format needs.
    pub fn check_tools(self) -> Result<()> {
        crate::stage::check_tools(&[("qemu-img", "qemu-utils")])
    }

    /// Converts the finished raw disk into this format at `dest`.
    pub fn convert(self, disk: &Path, dest: &Path) -> Result<()> {
        let mut cmd = Cmd::new("qemu-img").args(["convert", "-O", self.qemu_name()]);
        if self == Format::Qcow2 {
            // -c compresses; -W and -m let it use every core, which halves export time.
            cmd = cmd.args(["-c", "-W", "-m", "16"]);
        }
        cmd.arg(disk)
            .arg(dest)
            .run()
            .with_context(|| format!("converting to {}", self.ext()))
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
    /// Its format.
    pub format: Format,
    /// The disk's virtual size in bytes.
    pub virtual_size: u64,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's SHA256.
    pub sha256: String,
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

/// Converts the disk into every requested format, then publishes outputs, SHA256SUMS and
/// the manifest into the output directory.
pub fn run(ctx: &mut BuildContext, disk: &Path, facts: &BuildFacts) -> Result<Vec<Output>> {
    let staging = ctx.work.join("out");
    std::fs::create_dir_all(&staging)?;
    let name = ctx.req.profile.name.clone();
    let virtual_size = std::fs::metadata(disk)?.len();
    let mut outputs = Vec::new();
    for f in ctx.req.formats.clone() {
        let file = format!("{name}.{}", f.ext());
        ctx.progress.step(&format!("converting to {file}"));
        let dest = staging.join(&file);
        f.convert(disk, &dest)?;
        let size = std::fs::metadata(&dest)?.len();
        let sha256 = sha256_file(&dest)?;
        outputs.push(Output {
            file,
            format: f,
            virtual_size,
            size,
            sha256,
        });
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
    let sums = manifest::sha256sums(&out_dir, &outputs)?;
    std::fs::write(staging.join("SHA256SUMS"), sums)?;
    // Publish: the images first, then the files that describe them.
    for o in &outputs {
        publish(&staging.join(&o.file), &out_dir.join(&o.file))?;
    }
    publish(&staging.join("SHA256SUMS"), &out_dir.join("SHA256SUMS"))?;
    publish(
        &staging.join("manifest.json"),
        &out_dir.join("manifest.json"),
    )?;
    Ok(outputs)
}

/// Moves a finished file into place atomically (same filesystem: the work dir lives in
/// the output directory).
fn publish(from: &Path, to: &PathBuf) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("publishing {}", to.display()))
}

/// `qemu-img info` of a disk, as JSON.
pub fn qemu_info(path: &Path) -> Result<serde_json::Value> {
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .read()?;
    serde_json::from_str(&out).context("parsing qemu-img info")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
