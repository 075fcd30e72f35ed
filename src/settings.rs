//! Settings that both the command line and the profile take, each defined once.
//!
//! An output format, the qcow2 compression and the VM acceleration are enums that clap
//! parses and serde reads and writes, through the same names and the same error
//! message, so `--format qcow3` and `formats = ["qcow3"]` are refused alike (the profile
//! error names its file and line: `toml` reports where a value failed to deserialize).
//! A test below proves the command line and the profile accept the same set.

use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
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

impl TryFrom<String> for Format {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Format> {
        s.parse()
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

    /// `qemu-img convert` options for this format. The OVA's and EC2's streamOptimized
    /// VMDK is not a qemu-img conversion: `export::vmdk_stream` writes it.
    pub fn qemu_options(self) -> &'static [&'static str] {
        match self {
            // -c compresses; -m 16 keeps 16 requests in flight. Not -W: out-of-order
            // writes are ~2x faster but place clusters differently on every run, and
            // the qcow2 would no longer be reproducible.
            Format::Qcow2 => &["-c", "-m", "16"],
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
}

/// Parses format lists written as text: comma-separated items, duplicates dropped.
pub fn parse_formats(list: &[String]) -> Result<Vec<Format>> {
    let parsed = list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Format>>>()?;
    dedup_formats(parsed)
}

/// Drops repeated formats, keeping the first of each; refuses an empty list. The command
/// line and the profile both end here.
pub fn dedup_formats(list: impl IntoIterator<Item = Format>) -> Result<Vec<Format>> {
    let mut v = Vec::new();
    for f in list {
        if !v.contains(&f) {
            v.push(f);
        }
    }
    if v.is_empty() {
        bail!("no output format given");
    }
    Ok(v)
}

/// The compression of qcow2 outputs.
///
/// zstd is the default: it writes about three times faster than zlib and gives a smaller
/// file, and every QEMU since 5.1 (2020: Debian 11, Ubuntu 22.04, RHEL 8.4, Proxmox 6.3)
/// reads it. zlib stays one flag away for older readers (Ubuntu 20.04's QEMU 4.2).
/// The manifest records which one an image has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qcow2Compression {
    /// Readable by every QEMU.
    Zlib,
    /// Faster and smaller; needs QEMU >= 5.1 to read.
    #[default]
    Zstd,
}

/// The digest the `.mf` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MfDigest {
    /// SHA256 (OVF 2.0; VirtualBox 5 and later, VMware 6.5 and later).
    #[default]
    Sha256,
    /// SHA1, for old hosts that reject SHA256 manifests.
    Sha1,
}

impl FromStr for MfDigest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<MfDigest> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" => Ok(MfDigest::Sha256),
            "sha1" => Ok(MfDigest::Sha1),
            o => bail!("unknown OVA manifest digest {o:?}: use sha256 or sha1"),
        }
    }
}

impl MfDigest {
    /// The label in `.mf` lines.
    pub fn label(self) -> &'static str {
        match self {
            MfDigest::Sha256 => "SHA256",
            MfDigest::Sha1 => "SHA1",
        }
    }
}

/// CPU emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (always works, slower).
    Tcg,
}

impl Accel {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How a VM runs: `auto` probes KVM briefly and falls back to TCG.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Probe KVM briefly, fall back to TCG.
    #[default]
    Auto,
    /// Hardware virtualisation only.
    Kvm,
    /// Software emulation only.
    Tcg,
}

impl AccelChoice {
    /// The acceleration forced by this choice (None: probe).
    pub fn forced(self) -> Option<Accel> {
        match self {
            AccelChoice::Auto => None,
            AccelChoice::Kvm => Some(Accel::Kvm),
            AccelChoice::Tcg => Some(Accel::Tcg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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

    /// The command line and a profile accept the same format names, and refuse the same
    /// others with the same message.
    #[test]
    fn cli_and_profile_accept_the_same_formats() {
        let candidates: Vec<String> = ALL_FORMATS
            .iter()
            .map(|f| f.name().to_string())
            .chain(["qcow3", "QCOW2", "vhd_fixed", "vpc", "iso", ""].map(String::from))
            .collect();
        for name in candidates {
            let cli =
                crate::cli::Cli::try_parse_from(["mesobake", "build", "p.toml", "--format", &name])
                    .map_err(|e| e.to_string())
                    .and_then(|c| match c.cmd {
                        crate::cli::Cmd::Build(a) => {
                            dedup_formats(a.format).map_err(|e| e.to_string())
                        }
                        _ => unreachable!(),
                    });
            let toml = format!("[output]\nformats = [{name:?}]\n");
            let profile = toml::from_str::<crate::profile::ProfileFile>(&toml)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    dedup_formats(f.output.and_then(|o| o.formats).unwrap_or_default())
                        .map_err(|e| e.to_string())
                });
            assert_eq!(
                cli.is_ok(),
                profile.is_ok(),
                "{name:?}: cli {cli:?}, profile {profile:?}"
            );
            match (cli, profile) {
                (Ok(c), Ok(p)) => assert_eq!(c, p, "{name:?}"),
                (Err(c), Err(p)) if !name.is_empty() => {
                    let want = format!("unknown output format {name:?}");
                    assert!(c.contains(&want) && p.contains(&want), "{c}\n{p}");
                    assert!(
                        p.contains("line 2"),
                        "the profile error names the line: {p}"
                    );
                }
                _ => {}
            }
        }
    }

    #[test]
    fn accel_and_compression_read_the_same_names_everywhere() {
        use clap::ValueEnum;
        for a in AccelChoice::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_string();
            let via_serde: AccelChoice = serde_json::from_str(&format!("{name:?}")).unwrap();
            assert_eq!(*a, via_serde);
        }
        for c in Qcow2Compression::value_variants() {
            let name = c.to_possible_value().unwrap().get_name().to_string();
            let via_serde: Qcow2Compression = serde_json::from_str(&format!("{name:?}")).unwrap();
            assert_eq!(*c, via_serde);
        }
    }
}
