//! Command-line interface: the clap definitions and one function per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::base::BaseOptions;
use crate::context::{BuildRequest, ExportOptions};
use crate::profile::{self, Service};
use crate::settings::{AccelChoice, Format, MfDigest, Qcow2Compression};
use crate::vm::verify::{self, VerifyOptions};
use crate::{out, outln};

/// The top-level help's tail: where profiles are found, and the exit statuses.
fn top_help() -> String {
    format!(
        "{}\n{}",
        crate::project::LOOKUP_HELP,
        crate::output::EXIT_STATUS_HELP
    )
}

/// Bakes bootable, self-configuring VM images for Apache Mesos clusters.
#[derive(Debug, Parser)]
#[command(name = "mesobake", version, about, long_about = None, after_help = top_help())]
pub struct Cli {
    /// Show every external command and its output.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Look for profiles (and `--with` includes, and topologies' roles) here first.
    #[arg(long, global = true, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List the role profiles along the lookup path: name, where it comes from (later
    /// ones of the same name are shadowed), description.
    #[command(after_help = crate::project::LOOKUP_HELP)]
    Profiles,
    /// Write an editable project: profiles, includes, overlays, keys, an example
    /// cluster.toml and a README.
    Init(crate::project::InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Build an image from a role profile (needs root).
    #[command(after_help = crate::base::proxy::HELP)]
    Build(BuildArgs),
    /// Check a profile or a cluster.toml without doing any work: every referenced file
    /// (overlays, apt keys, local debs, the base) and every value; exit 1 on problems.
    Validate(ValidateArgs),
    /// Boot an image under QEMU and check that it configures itself and runs its role.
    Verify(VerifyArgs),
    /// Write every node's cloud-init seeds from a cluster.toml (NoCloud ISO, EC2 user-data).
    Seed(SeedArgs),
    /// Run a whole cluster from a cluster.toml locally under QEMU: up, status, down; ssh,
    /// console and logs of a node; kill one (a crash).
    Lab {
        /// What to do.
        #[command(subcommand)]
        action: LabAction,
    },
    /// Re-verify an output directory: digests, signature, qemu-img check, OVA structure.
    Check(CheckArgs),
    /// Show what changed between two builds, per image: packages added, removed,
    /// upgraded and downgraded, and changed inputs (profile files, base, local debs,
    /// fingerprint, mesobake). Exits 0 whether or not they differ.
    Diff(DiffArgs),
    /// Remove what killed builds left: stale work directories in the given output
    /// directories and the cache's temporary entries (stopping leftover processes,
    /// unmounting and detaching first). Live builds' work is never touched.
    Clean(CleanArgs),
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
    /// The role profile: a name looked up along the lookup path (`mesobake profiles`), or
    /// a file (anything with a '/' or ending in .toml).
    pub profile: PathBuf,
    /// The base and its checksums (the profile's `[base]`, overridden).
    #[command(flatten)]
    pub base: profile::BaseFile,
    /// Archive mirror for bootstrapped bases.
    #[arg(long)]
    pub mirror: Option<String>,
    /// Extra profile files layered on top, last wins: a file, or a name looked up as
    /// include/NAME.toml, then NAME.toml, along the lookup path (e.g. offline-standins).
    #[arg(long = "with", value_name = "NAME|FILE")]
    pub with: Vec<PathBuf>,
    /// Output formats, comma-separated (qcow2, raw, vmdk, vdi, vhdx, vhd, vhd-fixed, ova,
    /// ec2); overrides [output] formats.
    #[arg(long, value_delimiter = ',', value_parser = parse_format)]
    pub format: Vec<Format>,
    /// Sign SHA256SUMS with this GnuPG key (detached, armoured: SHA256SUMS.asc).
    #[arg(long, value_name = "KEYID")]
    pub sign: Option<String>,
    /// The digest of the OVA's .mf: sha256, or sha1 for old hosts.
    #[arg(long, value_name = "sha256|sha1", default_value = "sha256")]
    pub ova_digest: MfDigest,
    /// qcow2 compression: zstd (faster to write, smaller; QEMU >= 5.1 reads it) or
    /// zlib (for older QEMU, such as Ubuntu 20.04's 4.2).
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: Qcow2Compression,
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

/// `mesobake validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// A role profile or a cluster topology (told apart by their keys).
    pub file: PathBuf,
    /// Treat the file as this kind instead of telling it by its keys.
    #[arg(long, value_enum)]
    pub kind: Option<crate::validate::InputKind>,
    /// Extra profile files layered on top, as `build --with` (profiles only).
    #[arg(long = "with", value_name = "FILE")]
    pub with: Vec<PathBuf>,
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
    /// A NoCloud seed: an ISO, or a directory with user-data and meta-data. When its
    /// network-config names a NIC by MAC (a node's seed from `mesobake seed`, or the ISO
    /// in its OVA), the VM's NIC takes that MAC; its static address must then be on QEMU's
    /// user network 10.0.2.0/24 (10.0.2.15, gateway 10.0.2.2), or verify refuses it.
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
    #[arg(long, value_enum, default_value_t)]
    pub accel: AccelChoice,
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

/// `mesobake clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Output directories to look in for stale `.mesobake-work-*` directories (the
    /// cache's temporary entries are always looked at).
    #[arg(default_value = ".")]
    pub dirs: Vec<PathBuf>,
}

/// `mesobake check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The output directory (with SHA256SUMS, and manifest.json when mesobake wrote it).
    pub dir: PathBuf,
}

/// `mesobake diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older build: its manifest.json or its output directory.
    pub old: PathBuf,
    /// The newer build: its manifest.json or its output directory.
    pub new: PathBuf,
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> Result<i32> {
    crate::run::set_verbose(cli.verbose);
    crate::project::set_flag(cli.profiles.clone());
    // Before the interrupt handler starts its thread: see crate::isolate.
    let mounts_or_boots = match &cli.cmd {
        Cmd::Build(a) => !a.dry_run,
        Cmd::Verify(_) => true,
        _ => false,
    };
    if mounts_or_boots {
        if let Err(e) = crate::isolate::enter() {
            eprintln!(
                "mesobake: warning: {e:#}; if mesobake is killed, its mounts, loop devices \
                 and child processes may stay behind (`mesobake clean` finds them)"
            );
        }
    }
    crate::run::install_interrupt_handler()?;
    match cli.cmd {
        Cmd::Profiles => profiles(cli.json),
        Cmd::Init(a) => crate::project::init_cmd(&a, cli.json),
        Cmd::Completions { shell } => {
            crate::install::completions(shell, <Cli as clap::CommandFactory>::command())
        }
        Cmd::Man => crate::install::man(<Cli as clap::CommandFactory>::command()),
        Cmd::Build(a) => build(a, cli.json),
        Cmd::Validate(a) => validate_cmd(a, cli.json),
        Cmd::Verify(a) => verify_cmd(a, cli.json),
        Cmd::Seed(a) => seed_cmd(a, cli.json),
        Cmd::Lab { action } => lab_cmd(action, cli.json),
        Cmd::Check(a) => check_cmd(a, cli.json),
        Cmd::Diff(a) => diff_cmd(a, cli.json),
        Cmd::Clean(a) => clean_cmd(a, cli.json),
        Cmd::Cache { action } => cache_cmd(action, cli.json),
    }
}

/// clap's parser for one `--format` item: the same words and message as the profile's.
fn parse_format(s: &str) -> Result<Format> {
    s.trim().parse()
}

fn profiles(json: bool) -> Result<i32> {
    let all = crate::project::Search::new(None)?.list()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        out!("{}", crate::project::table(&all));
    }
    Ok(0)
}

fn build(a: BuildArgs, json: bool) -> Result<i32> {
    let search = crate::project::Search::new(None)?;
    let mut prof = crate::project::load_profile(&search, &a.profile, &a.with)
        .map_err(|e| crate::validate::invalid_profile(&a.profile, e))?;
    let base_from_cli = a.base.name.is_some();
    prof.override_base(a.base);
    let base_opts = BaseOptions {
        sha256: prof.base_sha256.clone(),
        sha256sums: prof.base_sha256sums.clone(),
        mirror: a.mirror,
    };
    let formats = if a.format.is_empty() {
        prof.formats.clone()
    } else {
        crate::settings::dedup_formats(a.format)?
    };
    // Every referenced file and the base, before any download, mount or bootstrap.
    crate::validate::require(&prof, base_from_cli)?;
    if a.dry_run {
        if json {
            outln!("{}", serde_json::to_string_pretty(&prof)?);
        } else {
            out!("{}", prof.plan());
            outln!(
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
    let outputs = crate::build::build(BuildRequest {
        profile: prof,
        out_dir: a.out.clone(),
        base_opts,
        formats,
        timings: a.timings,
        export: ExportOptions {
            sign: a.sign,
            ova_digest: a.ova_digest,
            qcow2_compression: a.compression,
        },
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&outputs)?);
    } else {
        for o in &outputs {
            outln!(
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
    let services: Option<Vec<Service>> = match &a.role {
        None => None,
        Some(r) => {
            let search = crate::project::Search::new(None)?;
            Some(
                crate::project::load_profile(&search, std::path::Path::new(r), &[])
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
        accel: a.accel.forced(),
        boot_timeout: Duration::from_secs(a.timeout),
        service_timeout: Duration::from_secs(a.service_timeout),
        memory_mb: a.memory,
    })?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.table());
        if let Some(l) = &report.serial_log {
            outln!("serial log kept at {l}");
        }
        outln!(
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
        CacheAction::Ls => {
            let mut all = gc::list(&cache)?;
            // Work of running or killed builds, counted like an entry so that the total is
            // what the cache takes on disk; `mesobake clean` removes the stale part.
            let (n, bytes) = crate::recover::cache_tmp_usage(&cache);
            if n > 0 {
                all.push(gc::Entry {
                    kind: "tmp".into(),
                    key: format!("{n} entries"),
                    size: bytes,
                    last_used: 0,
                    path: cache.tmp_dir(),
                });
            }
            all
        }
        CacheAction::Gc { keep, max_size } => {
            let max = max_size
                .as_deref()
                .map(crate::profile::parse_size)
                .transpose()?;
            let mut removed = gc::gc(&cache, keep, max)?;
            // Killed builds' temporary entries are garbage too, when no build is running.
            let (stale, lock) = crate::recover::find(&cache, &[])?;
            for s in &stale {
                crate::recover::clean(s)?;
                removed.push(gc::Entry {
                    kind: "tmp".into(),
                    key: s
                        .path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into(),
                    size: s.bytes,
                    last_used: 0,
                    path: s.path.clone(),
                });
            }
            drop(lock);
            removed
        }
        CacheAction::Clear => gc::clear(&cache)?,
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        out!("{}", gc::table(&entries));
    }
    Ok(0)
}

fn clean_cmd(a: CleanArgs, json: bool) -> Result<i32> {
    use crate::recover;
    let cache = crate::base::cache::Cache::open(None)?;
    let (stale, cache_lock) = recover::find(&cache, &a.dirs)?;
    let cache_checked = cache_lock.is_some();
    let mut done = Vec::new();
    for s in &stale {
        let c = recover::clean(s)?;
        if !json {
            outln!("removed {}", c.describe());
        }
        done.push(c);
    }
    drop(cache_lock);
    if json {
        outln!(
            "{}",
            serde_json::json!({"removed": done, "cache_tmp_checked": cache_checked})
        );
        return Ok(0);
    }
    if done.is_empty() {
        outln!("nothing to clean");
    }
    if !cache_checked {
        outln!(
            "the cache ({}) is in use by a running build: its temporary entries were left alone",
            cache.root().display()
        );
    }
    Ok(0)
}

fn check_cmd(a: CheckArgs, json: bool) -> Result<i32> {
    let report = crate::export::check::check_dir(&a.dir)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.table());
        outln!(
            "{}",
            if report.passed() {
                "check: PASS"
            } else {
                "check: FAIL"
            }
        );
    }
    Ok(if report.passed() { 0 } else { 1 })
}

/// Differences are information, not a failure: the status is 0 either way, and only
/// an unreadable manifest is an error.
fn diff_cmd(a: DiffArgs, json: bool) -> Result<i32> {
    let d = crate::export::diff::diff_paths(&a.old, &a.new)?;
    if json {
        crate::output::print_json(&d)?;
    } else {
        out!("{}", d.text());
    }
    Ok(0)
}

fn validate_cmd(a: ValidateArgs, json: bool) -> Result<i32> {
    use crate::validate::{self, InputKind};
    let kind = match a.kind {
        Some(k) => k,
        None => validate::detect(&a.file)?,
    };
    let r = match kind {
        InputKind::Profile => {
            // Names as `build` takes them, along the lookup path.
            let search = crate::project::Search::new(None)?;
            let with: Vec<PathBuf> = a
                .with
                .iter()
                .map(|w| search.include(w))
                .collect::<Result<_>>()?;
            validate::validate_profile(&search.profile(&a.file)?, &with)
        }
        InputKind::Cluster => {
            let dirs = crate::project::Search::new(Some(&a.file))?.paths()?;
            validate::validate_cluster(&a.file, &dirs)
        }
    };
    if json {
        crate::output::print_json(&r)?;
    } else {
        for w in &r.warnings {
            eprintln!("mesobake: warning: {w}");
        }
        for p in &r.problems {
            outln!("{p}");
        }
        let what = match kind {
            InputKind::Profile => "profile",
            InputKind::Cluster => "cluster",
        };
        if r.valid {
            outln!(
                "validate: {} is a valid {what}{}",
                a.file.display(),
                r.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
        } else {
            outln!(
                "validate: {} problem(s) in {}",
                r.problems.len(),
                a.file.display()
            );
        }
    }
    Ok(if r.valid {
        crate::output::exit::SUCCESS
    } else {
        crate::output::exit::CHECK_FAILED
    })
}

/// `mesobake seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// The cluster topology.
    pub cluster: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "seeds")]
    pub out: PathBuf,
    /// Make new secrets instead of reusing those in `<out>/secrets/` (every node then
    /// needs its new seed).
    #[arg(long)]
    pub rotate: bool,
    /// Directory holding the images from `mesobake build`: its manifest.json tells each
    /// role's cloud-init, so network-config writes the default gateway the way that base
    /// renders it (without it: `gateway4`, which every base accepts).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Also write `<out>/<name>.ova` per node and group: its role's qcow2 from `--images`
    /// (needed) with its seed ISO as a CD-ROM, an appliance that configures itself on
    /// first boot.
    #[arg(long, requires = "images")]
    pub ova: bool,
}

/// `mesobake lab` actions.
#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Boot every node (and `lab-count` instances of each group) on a private network.
    Up {
        /// The cluster topology.
        cluster: PathBuf,
        /// Directory holding `<role>.qcow2` images from `mesobake build`.
        #[arg(long, default_value = "out")]
        images: PathBuf,
        /// Memory per VM in MiB (default: [lab] memory, else 1536).
        #[arg(long)]
        memory: Option<u32>,
        /// vCPUs per VM (default: [lab] cpus, else 1).
        #[arg(long)]
        cpus: Option<u32>,
        /// kvm, tcg, or auto (probe KVM briefly, fall back to TCG).
        #[arg(long, value_enum, default_value_t)]
        accel: AccelChoice,
        /// Seconds to wait for the ZooKeeper quorum and every node's configured line.
        #[arg(long, default_value_t = 1200)]
        timeout: u64,
        /// Return once the VMs are started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show each node: role, ip, up or down, its SSH port, configured, each service's
    /// health, ports.
    Status {
        /// The cluster topology.
        cluster: PathBuf,
    },
    /// Power the VMs down (ACPI power button, up to 60 s), then stop whatever is left of
    /// exactly the QEMU processes `lab up` started. The masters' data disks are kept for
    /// the next `lab up`.
    Down {
        /// The cluster topology.
        cluster: PathBuf,
        /// Also remove the data disks (the masters' ZooKeeper and Mesos state).
        #[arg(long)]
        purge: bool,
    },
    /// Log in to a node with the system ssh through its forwarded port 22, or run a
    /// command there (after `--`); the exit status is the remote command's (255: ssh
    /// failed).
    Ssh {
        /// The cluster topology.
        cluster: PathBuf,
        /// The node: a node name, or `<group>-<n>` for a group's instance.
        node: String,
        /// The private key [default: the private half of the first of the topology's
        /// ssh-keys found as KEY.pub with KEY beside it, beside the topology or in ~/.ssh].
        #[arg(long, short = 'i', value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The login user [default: the user cloud-init gave the key to, as the node's
        /// console says, else the image's default user: debian, ubuntu].
        #[arg(long, short = 'l')]
        user: Option<String>,
        /// The remote command (default: a login shell).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Connect the terminal to a node's serial console (raw mode; Ctrl-] leaves).
    Console {
        /// The cluster topology.
        cluster: PathBuf,
        /// The node.
        node: String,
    },
    /// Print a node's serial console log.
    Logs {
        /// The cluster topology.
        cluster: PathBuf,
        /// The node.
        node: String,
        /// Keep printing what the node prints next, until it stops or Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Crash a node: SIGKILL its QEMU, no shutdown. `lab status` shows it down and the
    /// next `lab up` starts it again.
    Kill {
        /// The cluster topology.
        cluster: PathBuf,
        /// The node.
        node: String,
    },
    /// Replace a node's image: power it down, boot it again from `--image` with the same
    /// seed and data disk, and wait until it has rejoined (configured, every service of
    /// its role answering, a ZooKeeper member back in the ensemble).
    Replace {
        /// The cluster topology.
        cluster: PathBuf,
        /// The node.
        node: String,
        /// The new image (from `mesobake build`; a manifest.json beside it is checked
        /// for the node's role).
        #[arg(long)]
        image: PathBuf,
        /// Memory of the new VM in MiB (default: [lab] memory, else 1536).
        #[arg(long)]
        memory: Option<u32>,
        /// vCPUs of the new VM (default: [lab] cpus, else 1).
        #[arg(long)]
        cpus: Option<u32>,
        /// Seconds to wait for the node to rejoin.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Return once the new VM is started.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Loads a topology; its roles are looked up along the lookup path, with the
/// `profiles/` beside it before `./profiles`.
fn load_cluster(path: &std::path::Path) -> Result<crate::cluster::Cluster> {
    let dirs = crate::project::Search::new(Some(path))?.paths()?;
    let c = crate::validate::load_cluster(path, &dirs)?;
    for w in &c.warnings {
        eprintln!("mesobake: warning: {w}");
    }
    Ok(c)
}

fn seed_cmd(a: SeedArgs, json: bool) -> Result<i32> {
    use crate::seed::secrets::{self, Origin};
    let mut c = load_cluster(&a.cluster)?;
    // Every role's disk is found before anything (secrets included) is written.
    let disks = match (&a.images, a.ova) {
        (Some(images), true) => Some(c.role_disks(images)?),
        _ => None,
    };
    if c.auth {
        let dir = secrets::dir_in(&a.out);
        let (s, origin) = secrets::load_or_create(&dir, a.rotate)?;
        let how = match origin {
            Origin::Generated => "generated",
            Origin::Reused => "reused",
            Origin::Rotated => "rotated (boot every node with its new seed)",
        };
        eprintln!(
            "mesobake: secrets {how}: {} (keep it; the operator's login is in {})",
            dir.display(),
            dir.join(secrets::OPERATOR_FILE).display()
        );
        c.secrets = Some(s);
    } else if a.rotate {
        anyhow::bail!(
            "--rotate: {} turns authentication off ([security] auth = false), so there are no secrets to rotate",
            a.cluster.display()
        );
    } else {
        eprintln!(
            "mesobake: warning: {}: [security] auth = false: the seeds carry no secrets and the cluster runs WITHOUT authentication",
            a.cluster.display()
        );
    }
    if let Some(images) = &a.images {
        c.read_route_styles(images, true)?;
    }
    let written = c.write_seeds_with(&a.out, disks.as_ref(), crate::settings::MfDigest::Sha256)?;
    for l in written.tidy.lines(&a.out) {
        eprintln!("mesobake: {l}");
    }
    let out = written.seeds;
    if json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let mut t = crate::output::Table::new(&["node", "role", "ip", "mac", "files"]);
        for o in &out {
            t.row(vec![
                o.name.clone(),
                o.role.clone(),
                o.ip.clone().unwrap_or_else(|| "dhcp".into()),
                o.mac.clone().unwrap_or_else(|| "(any)".into()),
                o.files
                    .iter()
                    .map(|f| a.out.join(f).display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ]);
        }
        out!("{}", t.render());
    }
    Ok(0)
}

fn lab_cmd(action: LabAction, json: bool) -> Result<i32> {
    use crate::vm::lab;
    match action {
        LabAction::Up {
            cluster,
            images,
            memory,
            cpus,
            accel,
            timeout,
            no_wait,
        } => {
            let c = load_cluster(&cluster)?;
            let state = lab::up(
                &c,
                &lab::UpOptions {
                    images,
                    memory_mb: memory.or(c.lab.memory).unwrap_or(lab::DEFAULT_MEMORY_MB),
                    cpus: cpus.or(c.lab.cpus).unwrap_or(lab::DEFAULT_CPUS),
                    accel: accel.forced(),
                    wait: (!no_wait).then(|| Duration::from_secs(timeout)),
                },
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                out!("{}", lab::status_table(&lab::status(&c)?));
            }
            Ok(0)
        }
        LabAction::Status { cluster } => lab_status(&cluster, json),
        LabAction::Down { cluster, purge } => {
            let c = load_cluster(&cluster)?;
            let stopped = lab::down(&c, purge)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&stopped)?);
            } else if stopped.is_empty() {
                outln!("nothing was running");
            } else {
                outln!("stopped {}", stopped.join(" "));
            }
            Ok(0)
        }
        LabAction::Ssh {
            cluster,
            node,
            identity,
            user,
            command,
        } => lab_ssh(
            &cluster,
            &node,
            &lab::SshOptions {
                identity,
                user,
                command,
            },
        ),
        LabAction::Console { cluster, node } => {
            let c = load_cluster(&cluster)?;
            lab::console(&c, &node)?;
            Ok(0)
        }
        LabAction::Logs {
            cluster,
            node,
            follow,
        } => {
            let c = load_cluster(&cluster)?;
            lab::logs(&c, &node, follow, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        LabAction::Kill { cluster, node } => lab_kill(&cluster, &node, json),
        LabAction::Replace {
            cluster,
            node,
            image,
            memory,
            cpus,
            timeout,
            no_wait,
        } => {
            let c = load_cluster(&cluster)?;
            let opts = lab::ReplaceOptions {
                image,
                memory_mb: memory.or(c.lab.memory).unwrap_or(lab::DEFAULT_MEMORY_MB),
                cpus: cpus.or(c.lab.cpus).unwrap_or(lab::DEFAULT_CPUS),
                accel: None,
                wait: (!no_wait).then(|| Duration::from_secs(timeout)),
            };
            lab_replace(&c, &node, &opts, json)
        }
    }
}

/// `lab status`: the table or JSON; no lab is an empty state, not a failure.
fn lab_status(cluster: &std::path::Path, json: bool) -> Result<i32> {
    use crate::vm::lab;
    let c = load_cluster(cluster)?;
    let rows = match lab::status(&c) {
        Err(e) if e.is::<lab::NoLab>() => {
            if json {
                crate::output::print_json(&serde_json::json!({
                    "lab": null,
                    "message": "no lab running",
                    "cluster": c.path,
                }))?;
            } else {
                outln!("{e}");
            }
            return Ok(0);
        }
        r => r?,
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        out!("{}", lab::status_table(&rows));
    }
    Ok(0)
}

/// `lab replace`: prints what it did and when.
fn lab_replace(
    c: &crate::cluster::Cluster,
    node: &str,
    opts: &crate::vm::lab::ReplaceOptions,
    json: bool,
) -> Result<i32> {
    let done = crate::vm::lab::replace(c, node, opts)?;
    if json {
        crate::output::print_json(&done)?;
    } else {
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.0} s"));
        outln!(
            "replaced {node}: now on {} (down after {:.0} s, configured after {}, rejoined after {})",
            done.image.display(),
            done.down_s,
            secs(done.configured_s),
            secs(done.rejoined_s)
        );
    }
    Ok(0)
}

/// `lab ssh`: replaces mesobake with ssh, so it returns only when that failed.
fn lab_ssh(
    cluster: &std::path::Path,
    node: &str,
    opts: &crate::vm::lab::SshOptions,
) -> Result<i32> {
    let c = load_cluster(cluster)?;
    let ssh = crate::vm::lab::ssh_command(&c, node, opts)?;
    // exec, not the runner: see crate::run::Cmd::exec.
    Err(ssh.exec()).context("ssh is in package openssh-client")
}

fn lab_kill(cluster: &std::path::Path, node: &str, json: bool) -> Result<i32> {
    let c = load_cluster(cluster)?;
    let pid = crate::vm::lab::kill(&c, node)?;
    if json {
        crate::output::print_json(&serde_json::json!({ "killed": node, "pid": pid }))?;
    } else {
        outln!("killed {node} (QEMU pid {pid}): a crash, no shutdown");
    }
    Ok(0)
}
