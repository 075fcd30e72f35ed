//! What the stages of one build share: the request, the base once it is known, the
//! work dir, the cache and progress. It sits below `stage`, `layers` and `export`, which
//! all take a [`BuildContext`], and imports none of them.
//!
//! The host-tool checks live here too: the orchestrator runs them before any work, and
//! formats and export options add the tools they need.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::base::{cache::Cache, BaseImage, BaseOptions};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::settings::{Format, MfDigest, Qcow2Compression};

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
    pub export: ExportOptions,
    /// Print per-stage timings at the end.
    pub timings: bool,
}

/// Export settings beyond the format list.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// GnuPG key to sign SHA256SUMS with (detached, ASCII-armoured SHA256SUMS.asc).
    pub sign: Option<String>,
    /// The OVA manifest's digest.
    pub ova_digest: MfDigest,
    /// qcow2 compression: zlib reads everywhere; zstd is several times faster to write
    /// but needs QEMU 5.1 or later wherever the image is used.
    pub qcow2_compression: Qcow2Compression,
}

impl ExportOptions {
    /// Checks the host tools these options need, before the build starts.
    pub fn check_tools(&self) -> Result<()> {
        if self.sign.is_some() {
            check_tools(&[("gpg", "gpg")])?;
        }
        Ok(())
    }
}

/// How long each stage took, in order.
pub type Timings = Vec<(&'static str, Duration)>;

/// A build before its base is known: everything a [`BuildContext`] holds but the base.
/// The base stage runs on it; [`Setup::with_base`] then makes the context.
pub struct Setup {
    /// The request.
    pub req: BuildRequest,
    /// The private work directory (inside the output dir, so publishing is a rename).
    pub work: PathBuf,
    /// The cache.
    pub cache: Cache,
    /// Progress reporting.
    pub progress: Progress,
    /// How long each stage took.
    pub timings: Timings,
}

/// State shared by the stages of one build.
pub struct BuildContext {
    /// The request.
    pub req: BuildRequest,
    /// The base image; family and codename are filled in from the image if the base's
    /// name did not say.
    pub base: BaseImage,
    /// The private work directory (inside the output dir, so publishing is a rename).
    pub work: PathBuf,
    /// The cache.
    pub cache: Cache,
    /// Progress reporting.
    pub progress: Progress,
    /// How long each stage took.
    pub timings: Timings,
}

/// The parts of a build that time and show its stages.
trait Clock {
    fn clock(&mut self) -> (&mut Progress, &mut Timings);
}

impl Clock for Setup {
    fn clock(&mut self) -> (&mut Progress, &mut Timings) {
        (&mut self.progress, &mut self.timings)
    }
}

impl Clock for BuildContext {
    fn clock(&mut self) -> (&mut Progress, &mut Timings) {
        (&mut self.progress, &mut self.timings)
    }
}

/// Runs one named stage: checks for Ctrl-C, shows it, times it, gives its errors context.
fn timed<C: Clock, T>(
    ctx: &mut C,
    name: &'static str,
    what: &str,
    f: impl FnOnce(&mut C) -> Result<T>,
) -> Result<T> {
    crate::run::check_interrupted()?;
    ctx.clock().0.stage(name, what);
    let t = Instant::now();
    let r = f(ctx).with_context(|| format!("{what} ({name})"));
    ctx.clock().1.push((name, t.elapsed()));
    r
}

impl Setup {
    /// Runs one named stage, timing it and giving its errors context.
    pub fn stage<T>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        timed(self, name, what, f)
    }

    /// The context the later stages share, now that the base is known.
    pub fn with_base(self, base: BaseImage) -> BuildContext {
        BuildContext {
            req: self.req,
            base,
            work: self.work,
            cache: self.cache,
            progress: self.progress,
            timings: self.timings,
        }
    }
}

impl BuildContext {
    /// The working disk: raw, in the work dir. The layers fill it, and export converts it.
    pub fn disk(&self) -> PathBuf {
        self.work.join("disk.raw")
    }

    /// Runs one named stage, timing it and giving its errors context.
    pub fn stage<T>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        timed(self, name, what, f)
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

/// Everything a build checks before it does any work: root, the host tools (the
/// bootstrap's too when the base is bootstrapped, each format's, signing's), the base spec.
pub fn preflight(req: &BuildRequest) -> Result<()> {
    check_root()?;
    check_tools(BUILD_TOOLS)?;
    let named = crate::base::named(&req.profile.base);
    if named.is_some_and(|b| matches!(b.source, crate::base::Source::Bootstrap)) {
        check_tools(BOOTSTRAP_TOOLS)?;
    }
    crate::base::check_spec(&req.profile.base, &req.base_opts)?;
    // Every format is written with qemu-img, which BUILD_TOOLS has; signing needs gpg.
    req.export.check_tools()
}
