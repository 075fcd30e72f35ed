//! `mesobake check DIR`: re-verifies an output directory without trusting the build that
//! made it. Every SHA256SUMS digest is recomputed, the signature (if any) is verified
//! with gpg, each disk is opened by `qemu-img info` and `qemu-img check`, and each OVA's
//! member order, `.mf` digests and descriptor are checked, then its VMDK is extracted
//! and checked like any other disk. An SBOM must be SPDX 2.3 JSON listing as many
//! packages as the manifest records for its image.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::manifest::Manifest;
use super::{
    ova, sbom, Format, Output, OutputKind, Qcow2Compression, ALL_FORMATS, SIGNATURE_FILES,
};
use crate::base::cache::sha256_file;
use crate::run::Cmd;
use crate::sums::Sums;
use clap::ValueEnum;

/// One line of the result.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The file.
    pub file: String,
    /// What was checked.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// The result of checking a directory.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The directory.
    pub dir: String,
    /// The checks in order.
    pub items: Vec<Item>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.ok)
    }

    /// The pass/fail table.
    pub fn table(&self) -> String {
        let mut t = crate::output::Table::new(&["file", "check", "result", "detail"]);
        for i in &self.items {
            t.row(vec![
                i.file.clone(),
                i.check.clone(),
                if i.ok { "PASS" } else { "FAIL" }.into(),
                i.detail.clone(),
            ]);
        }
        t.render()
    }

    fn push(&mut self, file: &str, check: &str, r: Result<String>) {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        self.items.push(Item {
            file: file.into(),
            check: check.into(),
            ok,
            detail,
        });
    }
}

/// Reads `SHA256SUMS` into file → digest.
pub fn read_sums(dir: &Path) -> Result<BTreeMap<String, String>> {
    let p = dir.join("SHA256SUMS");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Sums::parse(&text)
        .and_then(Sums::into_map)
        .with_context(|| format!("reading {}", p.display()))
}

/// What a file without a manifest record is, from its name.
fn infer(file: &str) -> Option<(Format, OutputKind)> {
    if file.ends_with(".ova") {
        return Some((Format::Ova, OutputKind::Appliance));
    }
    if file.ends_with(".spdx.json") {
        return Some((Format::Raw, OutputKind::Sbom));
    }
    // Longest extension first: NAME.fixed.vhd before NAME.vhd, NAME.ec2.vmdk before .vmdk.
    let mut fs: Vec<Format> = ALL_FORMATS
        .into_iter()
        .filter(|f| *f != Format::Ova)
        .collect();
    fs.sort_by_key(|f| std::cmp::Reverse(f.ext().len()));
    fs.into_iter()
        .find(|f| file.ends_with(&format!(".{}", f.ext())))
        .map(|f| (f, OutputKind::Disk))
}

/// Checks everything in `dir`.
pub fn check_dir(dir: &Path) -> Result<Report> {
    let mut r = Report {
        dir: dir.display().to_string(),
        items: Vec::new(),
    };
    // A build's work directory means one is running here or was killed here: the files
    // beside it are about to change, or are what the killed build left.
    for w in crate::recover::work_dirs_in(dir)? {
        let name = w.file_name().unwrap_or_default().to_string_lossy();
        r.push(
            &name,
            "no build work",
            Err(anyhow::anyhow!(
                "a build is running here or was killed here: wait for it, or run `mesobake clean {}`",
                dir.display()
            )),
        );
    }
    let sums = match read_sums(dir) {
        Ok(s) => s,
        // A killed build publishes nothing: say what is there rather than what is not.
        Err(_) if !r.items.is_empty() => return Ok(r),
        Err(e) => return Err(e),
    };
    for (f, want) in &sums {
        let p = dir.join(f);
        r.push(
            f,
            "sha256",
            (|| {
                let got = sha256_file(&p)?;
                if &got != want {
                    bail!("is {got}, SHA256SUMS says {want}");
                }
                Ok("matches SHA256SUMS".to_string())
            })(),
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "SHA256SUMS")
        .collect();
    names.sort();
    for n in &names {
        if SIGNATURE_FILES.contains(&n.as_str()) {
            r.push(n, "signature", verify_signature(dir, n));
        } else if !sums.contains_key(n) {
            r.push(n, "listed", Err(anyhow::anyhow!("not in SHA256SUMS")));
        }
    }
    let manifest = if dir.join("manifest.json").is_file() {
        Some(Manifest::load(dir)?)
    } else {
        None
    };
    let recorded: BTreeMap<String, Output> = manifest
        .iter()
        .flat_map(|m| m.images.values())
        .flat_map(|e| e.outputs.iter())
        .map(|o| (o.file.clone(), o.clone()))
        .collect();
    for o in recorded.values() {
        r.push(&o.file, "manifest", agrees_with_manifest(dir, o, &sums));
    }
    for f in sums.keys() {
        let (format, kind, vsize) = match recorded.get(f) {
            Some(o) => (o.format, o.kind, Some(o.virtual_size)),
            None => match infer(f) {
                Some((fm, k)) => (fm, k, None),
                None => continue,
            },
        };
        let p = dir.join(f);
        match kind {
            OutputKind::Disk => {
                check_disk(&mut r, f, &p, format, vsize);
                if let Some(want) = recorded.get(f).and_then(|o| o.compression) {
                    r.push(f, "compression", check_compression(&p, want));
                }
            }
            OutputKind::Appliance => check_ova(&mut r, dir, f, &p, vsize),
            OutputKind::Sbom => {
                let packages = manifest
                    .as_ref()
                    .and_then(|m| m.find_output(f))
                    .map(|(_, e)| e.packages.len());
                r.push(f, "sbom", check_sbom(&p, packages));
            }
            OutputKind::Text => {}
        }
    }
    Ok(r)
}

/// An output's size and digest are what the manifest and SHA256SUMS say.
fn agrees_with_manifest(dir: &Path, o: &Output, sums: &BTreeMap<String, String>) -> Result<String> {
    let size = std::fs::metadata(dir.join(&o.file))
        .with_context(|| format!("{} is missing", o.file))?
        .len();
    if size != o.size {
        bail!("is {size} bytes, manifest.json says {}", o.size);
    }
    match sums.get(&o.file) {
        Some(d) if *d == o.sha256 => Ok("size and digest agree".into()),
        Some(d) => bail!("manifest.json says {}, SHA256SUMS {d}", o.sha256),
        None => bail!("not in SHA256SUMS"),
    }
}

/// The SBOM parses as SPDX 2.3 and lists `packages` debs, when the manifest says how
/// many.
fn check_sbom(p: &Path, packages: Option<usize>) -> Result<String> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let found = sbom::check(&text)?;
    match packages {
        Some(want) if want != found => {
            bail!("lists {found} packages, manifest.json records {want}")
        }
        _ => Ok(format!("SPDX-2.3, {found} packages")),
    }
}

fn verify_signature(dir: &Path, sig: &str) -> Result<String> {
    Cmd::new("gpg")
        .args(["--batch", "--verify", sig, "SHA256SUMS"])
        .current_dir(dir)
        .run()
        .context("gpg --verify")?;
    Ok("good signature of SHA256SUMS".into())
}

/// `qemu-img info` agrees on format (and VMDK subformat) and virtual size, and
/// `qemu-img check` passes where the format has a check.
fn check_disk(r: &mut Report, file: &str, p: &Path, format: Format, vsize: Option<u64>) {
    r.push(
        file,
        "qemu-img info",
        (|| {
            let forced = (format == Format::VhdFixed).then_some("vpc");
            let info = super::qemu_info_as(p, forced)?;
            let got = info["format"].as_str().unwrap_or("");
            if got != format.qemu_name() {
                bail!(
                    "qemu-img reads it as {got}, expected {}",
                    format.qemu_name()
                );
            }
            let sub = info["format-specific"]["data"]["create-type"]
                .as_str()
                .unwrap_or("");
            if matches!(format, Format::Ova | Format::Ec2) && sub != "streamOptimized" {
                bail!("VMDK subformat is {sub:?}, expected streamOptimized");
            }
            let vs = info["virtual-size"].as_u64().unwrap_or(0);
            if let Some(want) = vsize {
                if vs != want {
                    bail!("virtual size {vs}, manifest.json says {want}");
                }
            }
            Ok(format!(
                "{got}{} virtual size {vs}",
                if sub.is_empty() {
                    String::new()
                } else {
                    format!(" ({sub})")
                }
            ))
        })(),
    );
    if matches!(format.qemu_name(), "qcow2" | "vmdk" | "vdi" | "vhdx") {
        r.push(
            file,
            "qemu-img check",
            Cmd::new("qemu-img")
                .args(["check", "-f", format.qemu_name()])
                .arg(p)
                .read()
                .map(|out| {
                    out.lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no errors")
                        .to_string()
                }),
        );
    }
}

/// The qcow2's own compression type is the one the manifest records.
fn check_compression(p: &Path, want: Qcow2Compression) -> Result<String> {
    let info = super::qemu_info(p)?;
    // qemu-img leaves the field out of images from QEMU before 5.1: those are zlib.
    let got = info["format-specific"]["data"]["compression-type"]
        .as_str()
        .unwrap_or("zlib")
        .to_string();
    let want = want
        .to_possible_value()
        .expect("a value")
        .get_name()
        .to_string();
    if got != want {
        bail!("the qcow2 is {got}-compressed, manifest.json says {want}");
    }
    Ok(got)
}

fn check_ova(r: &mut Report, dir: &Path, file: &str, p: &Path, vsize: Option<u64>) {
    let structure = ova::check(p);
    let c = match structure {
        Ok(c) => c,
        Err(e) => {
            r.push(file, "ova", Err(e));
            return;
        }
    };
    let order: Vec<&str> = c.members.iter().map(|e| e.name.as_str()).collect();
    r.push(
        file,
        "ova",
        Ok(format!(
            "order {}; every {} in the .mf matches",
            order.join(", "),
            c.digest.label()
        )),
    );
    r.push(
        file,
        "ovf",
        (|| {
            let o = &c.ovf;
            if o.has_eula {
                bail!("carries an EulaSection");
            }
            let disk = o
                .disks
                .iter()
                .find(|d| d.3 == ova::VMDK_STREAM_URI)
                .ok_or_else(|| anyhow::anyhow!("no streamOptimized VMDK disk"))?;
            if let Some(want) = vsize {
                if disk.2 != want {
                    bail!("disk capacity {}, manifest.json says {want}", disk.2);
                }
            }
            for (t, what) in [(3, "CPU"), (4, "memory"), (10, "NIC"), (17, "disk")] {
                if o.items_of(t).is_empty() {
                    bail!("no {what} item");
                }
            }
            Ok(format!(
                "VirtualSystem {} ({}), capacity {}",
                o.name, o.os_description, disk.2
            ))
        })(),
    );
    let Some(disk) = c
        .ovf
        .disks
        .iter()
        .find(|d| d.3 == ova::VMDK_STREAM_URI)
        .and_then(|d| c.ovf.files.iter().find(|f| f.0 == d.1))
        .map(|f| f.1.clone())
    else {
        return;
    };
    let tmp = match tempfile::Builder::new()
        .prefix(".mesobake-check-")
        .tempdir_in(dir)
    {
        Ok(t) => t,
        Err(e) => {
            r.push(file, "extract", Err(e.into()));
            return;
        }
    };
    let vmdk = tmp.path().join(&disk);
    if let Err(e) = ova::extract(p, &disk, &vmdk) {
        r.push(file, "extract", Err(e));
        return;
    }
    check_disk(r, &format!("{file}:{disk}"), &vmdk, Format::Ova, vsize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qcow2_whose_compression_differs_from_the_manifest_fails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.qcow2");
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "compression_type=zlib"])
            .arg(&p)
            .arg("1M")
            .run()
            .unwrap();
        assert_eq!(
            check_compression(&p, Qcow2Compression::Zlib).unwrap(),
            "zlib"
        );
        let e = check_compression(&p, Qcow2Compression::Zstd).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the qcow2 is zlib-compressed, manifest.json says zstd"
        );
    }

    #[test]
    fn names_map_to_formats() {
        assert_eq!(infer("a.fixed.vhd").unwrap().0, Format::VhdFixed);
        assert_eq!(infer("a.vhd").unwrap().0, Format::Vhd);
        assert_eq!(infer("a.ec2.vmdk").unwrap().0, Format::Ec2);
        assert_eq!(infer("a.vmdk").unwrap().0, Format::Vmdk);
        assert_eq!(infer("a.ova").unwrap().1, OutputKind::Appliance);
        assert!(infer("a.ec2.LAUNCH.md").is_none());
        assert_eq!(infer("a.spdx.json").unwrap().1, OutputKind::Sbom);
    }
}
