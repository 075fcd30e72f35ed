//! Command-line interface: the clap definitions and one function per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::base::BaseOptions;
use crate::profile::{self, Service};
use crate::stage::{self, BuildRequest};
use crate::vm::qemu::Accel;
use crate::vm::verify::{self, VerifyOptions};

/// Bakes bootable, self-configuring VM images for Apache Mesos clusters.
#[derive(Debug, Parser)]
#[command(name = "mesobake", version, about, long_about = None)]
pub struct Cli {
    /// Show every external command and its output.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List the role profiles with a one-line description each.
    Profiles {
        /// The profiles directory.
        #[arg(long, default_value = "profiles")]
        dir: PathBuf,
    },
    /// Build an image from a role profile (needs root).
    Build(BuildArgs),
    /// Boot an image under QEMU and check that it configures itself and runs its role.
    Verify(VerifyArgs),
    /// Inspect and prune the cache of bases and provisioned layers.
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheAction,
    },
}

/// `mesobake build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The role profile (TOML).
    pub profile: PathBuf,
    /// Base: a name (ubuntu-24.04, ubuntu-22.04, ubuntu-20.04, ubuntu-16.04, ubuntu-14.04,
    /// debian-12), a local image path, or an http(s) URL; overrides the profile.
    #[arg(long)]
    pub base: Option<String>,
    /// SHA256 of a URL or local base.
    #[arg(long)]
    pub base_sha256: Option<String>,
    /// SHA256SUMS URL for a URL base.
    #[arg(long)]
    pub base_sha256sums: Option<String>,
    /// Archive mirror for bootstrapped bases.
    #[arg(long)]
    pub mirror: Option<String>,
    /// Extra profile files layered on top, last wins (e.g. profiles/include/offline-standins.toml).
    #[arg(long = "with", value_name = "FILE")]
    pub with: Vec<PathBuf>,
    /// Output formats, comma-separated (qcow2, raw); overrides [output] formats.
    #[arg(long)]
    pub format: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Print the resolved profile and the plan; do no work.
    #[arg(long)]
    pub dry_run: bool,
    /// Print how long each stage took.
    #[arg(long)]
    pub timings: bool,
}

/// `mesobake cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// List entries: kind, key, size, last use.
    Ls,
    /// Remove old entries: all but the N most recently used of each kind, and/or the
    /// least recently used until the cache is under a size.
    Gc {
        /// Keep this many entries of each kind.
        #[arg(long)]
        keep: Option<usize>,
        /// Keep the cache under this size (e.g. 20G).
        #[arg(long)]
        max_size: Option<String>,
    },
    /// Remove everything.
    Clear,
}

/// `mesobake verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The image to boot (qcow2, raw, vmdk, ...). It is opened read-only (snapshot).
    pub image: PathBuf,
    /// A NoCloud seed: an ISO, or a directory with user-data and meta-data.
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// The role (a profile name or file) when no manifest.json lists the image.
    #[arg(long)]
    pub role: Option<String>,
    /// ZooKeeper URL given to agent-only images (10.0.2.2 is QEMU's host side, which the
    /// restricted guest network cannot reach: the agent runs and keeps looking for it).
    #[arg(long, default_value = "zk://10.0.2.2:2181/mesos")]
    pub zk: String,
    /// kvm, tcg, or auto (probe KVM briefly, fall back to TCG).
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Seconds to wait for the configured line.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Seconds each service check may retry after the configured line.
    #[arg(long, default_value_t = 300)]
    pub service_timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1536)]
    pub memory: u32,
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> Result<i32> {
    crate::run::set_verbose(cli.verbose);
    crate::run::install_interrupt_handler()?;
    match cli.cmd {
        Cmd::Profiles { dir } => profiles(&dir, cli.json),
        Cmd::Build(a) => build(a, cli.json),
        Cmd::Verify(a) => verify_cmd(a, cli.json),
        Cmd::Cache { action } => cache_cmd(action, cli.json),
    }
}

fn profiles(dir: &std::path::Path, json: bool) -> Result<i32> {
    let all = profile::list(dir)?;
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|(n, p, d)| serde_json::json!({"name": n, "path": p, "description": d}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let w = all.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
        for (n, _, d) in all {
            println!("{n:<w$}  {d}");
        }
    }
    Ok(0)
}

fn build(a: BuildArgs, json: bool) -> Result<i32> {
    let mut prof = profile::load(&a.profile, &a.with)?;
    if let Some(b) = a.base {
        prof.base = b;
        prof.base_sha256 = None;
        prof.base_sha256sums = None;
    }
    let base_opts = BaseOptions {
        sha256: a.base_sha256.or(prof.base_sha256.clone()),
        sha256sums: a.base_sha256sums.or(prof.base_sha256sums.clone()),
        mirror: a.mirror,
    };
    let formats = crate::export::parse_formats(if a.format.is_empty() {
        &prof.formats
    } else {
        &a.format
    })?;
    crate::base::check_spec(&prof.base, &base_opts)?;
    if a.dry_run {
        if json {
            println!("{}", serde_json::to_string_pretty(&prof)?);
        } else {
            print!("{}", prof.plan());
            println!(
                "outputs     {}",
                formats
                    .iter()
                    .map(|f| format!("{}/{}.{}", a.out.display(), prof.name, f.ext()))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        return Ok(0);
    }
    let outputs = stage::build(BuildRequest {
        profile: prof,
        out_dir: a.out.clone(),
        base_opts,
        formats,
        timings: a.timings,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outputs)?);
    } else {
        for o in &outputs {
            println!(
                "{}  {} MiB  sha256:{}",
                a.out.join(&o.file).display(),
                o.size >> 20,
                o.sha256
            );
        }
    }
    Ok(0)
}

fn verify_cmd(a: VerifyArgs, json: bool) -> Result<i32> {
    let accel = match a.accel.as_str() {
        "auto" => None,
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        other => bail!("--accel {other}: use kvm, tcg or auto"),
    };
    let services: Option<Vec<Service>> = match &a.role {
        None => None,
        Some(r) => {
            let path = if r.ends_with(".toml") {
                PathBuf::from(r)
            } else {
                PathBuf::from(format!("profiles/{r}.toml"))
            };
            Some(
                profile::load(&path, &[])
                    .with_context(|| format!("loading role {r}"))?
                    .services,
            )
        }
    };
    let report = verify::verify(&VerifyOptions {
        image: a.image,
        seed: a.seed,
        services,
        zk: a.zk,
        accel,
        boot_timeout: Duration::from_secs(a.timeout),
        service_timeout: Duration::from_secs(a.service_timeout),
        memory_mb: a.memory,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        if let Some(l) = &report.serial_log {
            println!("serial log kept at {l}");
        }
        println!(
            "{}",
            if report.passed() {
                "verify: PASS"
            } else {
                "verify: FAIL"
            }
        );
    }
    Ok(if report.passed() { 0 } else { 1 })
}

fn cache_cmd(action: CacheAction, json: bool) -> Result<i32> {
    use crate::base::gc;
    let cache = crate::base::cache::Cache::open(None)?;
    let entries = match action {
        CacheAction::Ls => gc::list(&cache)?,
        CacheAction::Gc { keep, max_size } => {
            let max = max_size
                .as_deref()
                .map(crate::profile::parse_size)
                .transpose()?;
            gc::gc(&cache, keep, max)?
        }
        CacheAction::Clear => gc::clear(&cache)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", gc::table(&entries));
    }
    Ok(0)
}
