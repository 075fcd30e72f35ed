//! The profile schema (one definition for every setting) and its resolved form.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One profile file as written: every key optional so that includes can supply it.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileFile {
    /// One line shown by `mesobake profiles`.
    pub description: Option<String>,
    /// Files merged in before this one, relative to this file.
    pub include: Option<Vec<String>>,
    /// Which services the image runs.
    pub role: Option<RoleFile>,
    /// What the image is built from.
    pub base: Option<BaseFile>,
    /// Extra apt repositories.
    pub apt: Option<AptFile>,
    /// Packages to install.
    pub packages: Option<PackagesFile>,
    /// Cluster-wide Mesos settings.
    pub mesos: Option<MesosFile>,
    /// Extra Marathon settings for /etc/default/marathon.
    pub marathon: Option<MarathonFile>,
    /// Config trees laid over the image root, in order.
    pub overlays: Option<Vec<String>>,
    /// What overlays not owned by root may carry.
    pub overlay_policy: Option<OverlayPolicy>,
    /// What the export stage writes.
    pub output: Option<OutputFile>,
    /// How the image boots.
    pub boot: Option<BootFile>,
}

/// `[overlay-policy]`: file modes an overlay that root does not own may bring into the
/// image. Such files land root-owned, so a setuid file from a user's checkout would
/// become a root setuid program; they are refused unless allowed here (and warned about
/// either way).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OverlayPolicy {
    /// Allow setuid and setgid files.
    #[serde(default)]
    pub allow_setuid: bool,
    /// Allow world-writable files (and world-writable directories without the sticky bit).
    #[serde(default)]
    pub allow_world_writable: bool,
}

/// `[boot]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootFile {
    /// The cgroup hierarchy the image boots: "v1" (hybrid: what Apache Mesos 1.11's Docker
    /// containerizer needs) or "v2" (unified). Unset: whatever the base boots.
    pub cgroup: Option<CgroupMode>,
}

/// A cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup v1 controllers (legacy or hybrid): `/sys/fs/cgroup/systemd` is a v1 hierarchy.
    V1,
    /// cgroup v2 only (unified).
    V2,
}

impl std::fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupMode::V1 => "v1",
            CgroupMode::V2 => "v2",
        })
    }
}

/// `[role]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleFile {
    /// The services, from: zookeeper, master, marathon, agent.
    pub services: Option<Vec<Service>>,
}

/// `[base]`, and `build --base`, `--base-sha256`, `--base-sha256sums`: one definition
/// for both (see [`Profile::override_base`]).
#[derive(Debug, Default, Clone, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BaseFile {
    /// Base: a name (ubuntu-24.04, ubuntu-22.04, ubuntu-20.04, ubuntu-16.04, ubuntu-14.04,
    /// debian-12, debian-12-ubuntu-24.04-layout), a local image path, or an http(s) URL;
    /// overrides the profile.
    #[arg(long = "base", id = "base")]
    pub name: Option<String>,
    /// SHA256 of a URL or local base.
    #[arg(long = "base-sha256", id = "base_sha256")]
    pub sha256: Option<String>,
    /// SHA256SUMS URL for a URL base.
    #[arg(long = "base-sha256sums", id = "base_sha256sums")]
    pub sha256sums: Option<String>,
    /// The disk size of the image, e.g. "6G"; the root filesystem grows to fill it.
    #[arg(skip)]
    pub disk_size: Option<String>,
}

/// `[apt]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AptFile {
    /// Repositories added to the image, each pinned to its key.
    pub sources: Option<Vec<AptSource>>,
}

/// One apt repository, written by provision as a one-line-style `.list` file pinned to its
/// key with `signed-by`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AptSource {
    /// Names the files: /etc/apt/sources.list.d/mesobake-NAME.list and its key,
    /// /etc/apt/keyrings/mesobake-NAME.gpg.
    pub name: String,
    /// Only for bases of this family ("ubuntu" or "debian"); all bases when unset.
    pub family: Option<String>,
    /// The repository URI; `{codename}` is replaced by the base's codename.
    pub uri: String,
    /// Suites; `{codename}` is replaced.
    pub suites: Vec<String>,
    /// Components.
    #[serde(default)]
    pub components: Vec<String>,
    /// The repository's public key file (ASCII-armoured or binary), relative to the file.
    pub key: String,
}

/// `[packages]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackagesFile {
    /// Package names apt installs (with their dependencies from the archive).
    pub install: Option<Vec<String>>,
    /// Local `.deb` files, or directories of them, made available to apt.
    pub debs: Option<Vec<String>>,
}

/// `[mesos]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MesosFile {
    /// The cluster name shown in the Mesos web UI.
    pub cluster: Option<String>,
    /// Extra master flags: one flag file each in /etc/mesos-master.
    pub master_flags: Option<BTreeMap<String, String>>,
    /// Extra agent flags: one flag file each in the agent's flag dir.
    pub agent_flags: Option<BTreeMap<String, String>>,
}

/// `[marathon]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MarathonFile {
    /// Extra `MARATHON_*` settings for /etc/default/marathon.
    pub env: Option<BTreeMap<String, String>>,
}

/// `[output]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutputFile {
    /// Output formats; `--format` on the command line wins.
    pub formats: Option<Vec<crate::settings::Format>>,
}

/// A service a role can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// ZooKeeper (`zookeeperd`).
    Zookeeper,
    /// The Mesos master.
    Master,
    /// Marathon.
    Marathon,
    /// The Mesos agent (`mesos-slave` or `mesos-agent`, by package layout).
    Agent,
    /// The Prometheus node exporter (`prometheus-node-exporter`), optional on any role.
    NodeExporter,
}

impl Service {
    /// Its name in profiles, manifests, verify's checks and `lab status` (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            Service::Zookeeper => "zookeeper",
            Service::Master => "master",
            Service::Marathon => "marathon",
            Service::Agent => "agent",
            Service::NodeExporter => "node-exporter",
        }
    }

    /// Every service, in start order (the order of [`crate::service::SERVICES`]).
    pub const ALL: [Service; 5] = [
        Service::Zookeeper,
        Service::Master,
        Service::Marathon,
        Service::Agent,
        Service::NodeExporter,
    ];
}

/// A fully resolved, validated profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The profile's name (its file stem).
    pub name: String,
    /// The profile file.
    pub path: PathBuf,
    /// One line of description.
    pub description: String,
    /// Services in start order.
    pub services: Vec<Service>,
    /// The base spec (`--base` may replace it).
    pub base: String,
    /// The SHA256 of a URL base.
    pub base_sha256: Option<String>,
    /// The SHA256SUMS URL of a URL base.
    pub base_sha256sums: Option<String>,
    /// The disk size in bytes.
    pub disk_size: u64,
    /// Apt repositories.
    pub apt_sources: Vec<AptSource>,
    /// Packages to install.
    pub packages: Vec<String>,
    /// Local .deb files or directories.
    pub debs: Vec<PathBuf>,
    /// The cluster name.
    pub cluster: String,
    /// Extra master flags.
    pub master_flags: BTreeMap<String, String>,
    /// Extra agent flags.
    pub agent_flags: BTreeMap<String, String>,
    /// Extra Marathon environment.
    pub marathon_env: BTreeMap<String, String>,
    /// Overlay directories, in order.
    pub overlays: Vec<PathBuf>,
    /// What overlays not owned by root may carry.
    pub overlay_policy: OverlayPolicy,
    /// Output formats.
    pub formats: Vec<crate::settings::Format>,
    /// The cgroup hierarchy to boot (None: the base's default).
    pub cgroup: Option<CgroupMode>,
    /// Every file that went into the profile with its SHA256, in merge order.
    pub sources: Vec<(PathBuf, String)>,
}

impl Profile {
    pub(crate) fn resolve(
        name: String,
        path: &Path,
        f: ProfileFile,
        sources: Vec<(PathBuf, String)>,
    ) -> Result<Profile> {
        let here = path.display();
        let services = check_services(&here, f.role.unwrap_or_default().services)?;
        let base = f.base.unwrap_or_default();
        let base_name = base.name.unwrap_or_else(|| "ubuntu-24.04".to_string());
        let disk_size = parse_size(base.disk_size.as_deref().unwrap_or("6G"))
            .map_err(|e| anyhow::anyhow!("{here}: [base] disk-size: {e}"))?;
        let pk = f.packages.unwrap_or_default();
        let packages = check_packages(&here, pk.install.unwrap_or_default())?;
        let mesos = f.mesos.unwrap_or_default();
        let master_flags = mesos.master_flags.unwrap_or_default();
        let agent_flags = mesos.agent_flags.unwrap_or_default();
        check_flags(&here, "master-flags", &master_flags)?;
        check_flags(&here, "agent-flags", &agent_flags)?;
        let marathon_env = f.marathon.and_then(|m| m.env).unwrap_or_default();
        check_marathon_env(&here, &marathon_env)?;
        let apt_sources = f.apt.and_then(|a| a.sources).unwrap_or_default();
        for s in &apt_sources {
            if let Some(fam) = &s.family {
                if fam != "ubuntu" && fam != "debian" {
                    bail!("{here}: [[apt.sources]] {}: family must be \"ubuntu\" or \"debian\", not {fam:?}", s.name);
                }
            }
        }
        let formats = match f.output.and_then(|o| o.formats) {
            None => vec![crate::settings::Format::Qcow2],
            Some(v) => crate::settings::dedup_formats(v)
                .map_err(|e| anyhow::anyhow!("{here}: [output] formats: {e}"))?,
        };
        Ok(Profile {
            name,
            path: path.to_owned(),
            description: f.description.unwrap_or_default(),
            services,
            base: base_name,
            base_sha256: base.sha256,
            base_sha256sums: base.sha256sums,
            disk_size,
            apt_sources,
            packages,
            debs: pk
                .debs
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            cluster: mesos.cluster.unwrap_or_else(|| "mesobake".into()),
            master_flags,
            agent_flags,
            marathon_env,
            overlays: f
                .overlays
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            overlay_policy: f.overlay_policy.unwrap_or_default(),
            formats,
            cgroup: f.boot.and_then(|b| b.cgroup),
            sources,
        })
    }

    /// Applies the command line's base settings: a base given there replaces the profile's
    /// with its checksums; a checksum given there replaces the profile's.
    pub fn override_base(&mut self, cli: BaseFile) {
        if let Some(b) = cli.name {
            self.base = b;
            self.base_sha256 = None;
            self.base_sha256sums = None;
        }
        self.base_sha256 = cli.sha256.or(self.base_sha256.take());
        self.base_sha256sums = cli.sha256sums.or(self.base_sha256sums.take());
    }

    /// Whether the role runs `s`.
    pub fn runs(&self, s: Service) -> bool {
        self.services.contains(&s)
    }

    /// A human-readable plan for `--dry-run`.
    pub fn plan(&self) -> String {
        let mut s = String::new();
        let svc: Vec<_> = self.services.iter().map(|s| s.name().to_string()).collect();
        s += &format!("profile     {} ({})\n", self.name, self.path.display());
        s += &format!("description {}\n", self.description);
        s += &format!("services    {}\n", svc.join(" "));
        s += &format!("base        {}\n", self.base);
        s += &format!("disk size   {} MiB\n", self.disk_size >> 20);
        for a in &self.apt_sources {
            s += &format!(
                "apt source  {} {} {} (key {})\n",
                a.name,
                a.uri,
                a.suites.join(","),
                a.key
            );
        }
        s += &format!("packages    {}\n", self.packages.join(" "));
        for d in &self.debs {
            s += &format!("local debs  {}\n", d.display());
        }
        s += &format!("cluster     {}\n", self.cluster);
        if !self.master_flags.is_empty() {
            s += &format!("master      {}\n", super::fmt_map(&self.master_flags));
        }
        if !self.agent_flags.is_empty() {
            s += &format!("agent       {}\n", super::fmt_map(&self.agent_flags));
        }
        for o in &self.overlays {
            s += &format!("overlay     {}\n", o.display());
        }
        if self.overlay_policy.allow_setuid {
            s += "overlays    may bring setuid and setgid files\n";
        }
        if self.overlay_policy.allow_world_writable {
            s += "overlays    may bring world-writable files\n";
        }
        if let Some(c) = self.cgroup {
            s += &format!("cgroup      {c}\n");
        }
        let formats: Vec<&str> = self.formats.iter().map(|f| f.name()).collect();
        s += &format!("formats     {}\n", formats.join(","));
        s += "stages      resolve -> base -> provision -> configure -> finalize -> export\n";
        s
    }
}

/// `[role] services`: some services, each once, masters with their ZooKeeper and Marathon
/// with its master. Returns them in start order.
fn check_services(
    here: &impl std::fmt::Display,
    services: Option<Vec<Service>>,
) -> Result<Vec<Service>> {
    let mut services = services.unwrap_or_default();
    if services.is_empty() {
        bail!("{here}: [role] services is empty or missing: list some of zookeeper, master, marathon, agent");
    }
    let before = services.len();
    services.sort();
    services.dedup();
    if services.len() != before {
        bail!("{here}: [role] services lists a service twice");
    }
    if services.contains(&Service::Master) && !services.contains(&Service::Zookeeper) {
        bail!("{here}: [role] services has master without zookeeper: a master image runs its own ZooKeeper member; add \"zookeeper\"");
    }
    if services.contains(&Service::Marathon) && !services.contains(&Service::Master) {
        bail!("{here}: [role] services has marathon without master: Marathon runs beside a Mesos master; add \"master\"");
    }
    Ok(services)
}

/// `[packages] install`: not empty, and every entry a package name (with an optional
/// version or release).
fn check_packages(here: &impl std::fmt::Display, packages: Vec<String>) -> Result<Vec<String>> {
    if packages.is_empty() {
        bail!(
            "{here}: [packages] install is empty: list the Mesos, Marathon and ZooKeeper packages"
        );
    }
    for p in &packages {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:=~_".contains(c))
        {
            bail!("{here}: [packages] install: {p:?} is not a package name");
        }
    }
    Ok(packages)
}

/// `[mesos] master-flags` / `agent-flags`: Mesos flag names, none of those first boot sets.
fn check_flags(
    here: &impl std::fmt::Display,
    table: &str,
    flags: &BTreeMap<String, String>,
) -> Result<()> {
    for k in flags.keys() {
        if let Err(e) = crate::nodeconf::flag_name(k) {
            bail!("{here}: [mesos] {table}: {e}");
        }
    }
    if let Err(e) = crate::nodeconf::check_flags(flags.keys().map(String::as_str)) {
        bail!("{here}: [mesos] {table}: {e}. Remove it from the profile ({} are set per node at first boot)", crate::nodeconf::OWNED_FLAGS.join(", "));
    }
    Ok(())
}

/// `[marathon] env`: Marathon's and libprocess's variables, none of those first boot sets.
fn check_marathon_env(here: &impl std::fmt::Display, env: &BTreeMap<String, String>) -> Result<()> {
    for k in env.keys() {
        if !k.starts_with("MARATHON_") && !k.starts_with("LIBPROCESS_") && k != "JAVA_OPTS" {
            bail!("{here}: [marathon] env: {k:?} must start with MARATHON_ or LIBPROCESS_");
        }
        if [
            "MARATHON_MASTER",
            "MARATHON_ZK",
            "MARATHON_HOSTNAME",
            "LIBPROCESS_IP",
        ]
        .contains(&k.as_str())
        {
            bail!("{here}: [marathon] env: {k} is set per node at first boot; remove it");
        }
    }
    Ok(())
}

/// Parses "6G", "512M", "4096" (bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a size like 6G or 512M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("{s:?} is too large"))
}
