//! Cluster topologies: `cluster.toml` parsed strictly, validated, and derived once into
//! every node's first-boot settings.
//!
//! Everything cluster-wide comes from the masters, in one place ([`Cluster::derive`]):
//! the ZooKeeper URL, the `zoo.cfg` server lines and each member's id, the master quorum
//! (a majority of the masters) and the `/etc/hosts` entries. The result is one
//! [`NodeSeed`] per node and one per autoscaling group; `mesobake seed` writes them and
//! `mesobake lab` boots them, so the two can never disagree.

mod model;

pub use model::*;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::profile::{self, Service};
use crate::seed::secrets::{Needs, Secrets};
use crate::seed::user_config::{self, UserPart};
use crate::seed::{NetIface, NodeSeed, RouteStyle};

/// A problem in cluster.toml, located by line and named by node and key.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {subject}key \"{key}\": {message}")]
pub struct ClusterError {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based) of the offending value.
    pub line: usize,
    /// `node "m1" ` or `group "workers" `, or empty for cluster-wide keys.
    pub subject: String,
    /// The key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A validated node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its name, which is also its hostname.
    pub name: String,
    /// Its role: a profile name.
    pub role: String,
    /// The services that profile runs.
    pub services: Vec<Service>,
    /// Its static address, if any (else DHCP).
    pub ip: Option<Ipv4Addr>,
    /// Its ZooKeeper id (only for nodes that run ZooKeeper; assigned when not given).
    pub zk_id: Option<u8>,
    /// The MAC address its cluster NIC must have for the network-config to match.
    pub mac: String,
    /// The per-node extras.
    pub extras: Extras,
    /// The node's own cloud-configs (after the cluster-wide ones).
    pub cloud_config: Vec<UserPart>,
}

/// A validated autoscaling group of agents sharing one user-data.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its role: a profile that runs only an agent.
    pub role: String,
    /// That profile's services.
    pub services: Vec<Service>,
    /// How many instances `mesobake lab` boots.
    pub lab_count: u32,
    /// The extras every instance gets.
    pub extras: Extras,
    /// The group's own cloud-configs (after the cluster-wide ones).
    pub cloud_config: Vec<UserPart>,
}

/// Agent attributes and resources, and extra flag files.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Mesos agent attributes.
    pub attributes: BTreeMap<String, String>,
    /// Mesos agent resources.
    pub resources: BTreeMap<String, String>,
    /// Extra master flag files.
    pub master_flags: BTreeMap<String, String>,
    /// Extra agent flag files.
    pub agent_flags: BTreeMap<String, String>,
}

/// The cluster network.
#[derive(Debug, Clone)]
pub struct Network {
    /// The static network and prefix length; None for DHCP.
    pub cidr: Option<(Ipv4Addr, u8)>,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
}

/// The most instances of one group `mesobake lab` boots.
pub const MAX_LAB_COUNT: u32 = 256;

/// The netmask of a prefix length from 0 to 32 (`/0` is no mask at all).
pub(crate) fn prefix_mask(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// `a.b.c.d/len` with a prefix length from 0 to 32.
pub(crate) fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        a.parse::<Ipv4Addr>().ok()?,
        l.parse::<u8>().ok().filter(|l| *l <= 32)?,
    ))
}

impl Network {
    /// The cidr in network form (host bits cleared), if the network is static.
    pub fn cidr_net(&self) -> Option<(Ipv4Addr, u8)> {
        let (ip, len) = self.cidr?;
        Some((Ipv4Addr::from(u32::from(ip) & prefix_mask(len)), len))
    }

    /// Whether `ip` is the network or the broadcast address of the CIDR, which no host
    /// may have: `Some("network")` or `Some("broadcast")`. A /31 and a /32 have neither:
    /// a /31 is a point-to-point link whose two addresses are both hosts (RFC 3021), and
    /// a /32 is the one host itself.
    pub fn reserved(&self, ip: Ipv4Addr) -> Option<&'static str> {
        let (net, len) = self.cidr_net()?;
        if len > 30 || !self.contains(ip) {
            return None;
        }
        let net = u32::from(net);
        if u32::from(ip) == net {
            Some("network")
        } else if u32::from(ip) == net | !prefix_mask(len) {
            Some("broadcast")
        } else {
            None
        }
    }

    /// Whether `ip` lies in the CIDR.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        match self.cidr {
            Some((net, len)) => {
                let mask = prefix_mask(len);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            None => false,
        }
    }
}

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The cluster name.
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The network.
    pub network: Network,
    /// SSH public keys for every node (they go into seeds only, never into images).
    pub ssh_keys: Vec<String>,
    /// The nodes, in file order.
    pub nodes: Vec<Node>,
    /// Autoscaling agent groups.
    pub groups: Vec<Group>,
    /// Lab VM sizing.
    pub lab: LabFile,
    /// Things that are allowed but probably wrong (an even number of masters).
    pub warnings: Vec<String>,
    /// Whether nodes authenticate (`[security] auth`, default true).
    pub auth: bool,
    /// Whether nodes filter the cluster's ports with nftables (`[security] firewall`,
    /// default true).
    pub firewall: bool,
    /// `[security] allow`: networks admitted besides `[network] cidr`, in file order,
    /// each in network form (host bits clear), without duplicates.
    pub allow: Vec<(Ipv4Addr, u8)>,
    /// The cluster's secrets, which the seeds carry: `mesobake seed` and `lab` set them
    /// from their `secrets/` when `auth` is on. None gives seeds without authentication.
    pub secrets: Option<Secrets>,
    /// The user's cloud-configs for every node and group, in file order.
    pub cloud_config: Vec<UserPart>,
    /// How each role's network-config writes the default gateway, by role: set from the
    /// images' manifest ([`Cluster::read_route_styles`]); a role not here gets
    /// `gateway4`.
    pub route_styles: BTreeMap<String, RouteStyle>,
}

/// What is derived from the masters, once.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// `zk://m1:2181,m2:2181,m3:2181/mesos`, members in id order.
    pub zk_url: String,
    /// `1=m1 2=m2 3=m3`: the configurator's MESOBAKE_ZK_SERVERS (zoo.cfg server.N lines).
    pub zk_servers: String,
    /// The master quorum: a majority of the masters.
    pub quorum: usize,
    /// `10.0.0.11=m1 ...`: /etc/hosts entries for every node with a static address.
    pub hosts: String,
}

/// Which kind of seed a NodeSeed is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// NoCloud (KVM, VirtualBox): static addresses travel in network-config.
    NoCloud,
    /// EC2 user-data: no network-config, the instance's address is detected.
    Ec2,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Loads and validates `path`; roles are looked up as `<profiles>/<role>.toml`.
pub fn load(path: &Path, profiles: &Path) -> Result<Cluster> {
    load_in(path, &[profiles.to_owned()])
}

/// Loads and validates `path`; a role is the first `<dir>/<role>.toml` of `profiles`
/// (the lookup path, [`crate::project::Search`]).
pub fn load_in(path: &Path, profiles: &[PathBuf]) -> Result<Cluster> {
    let text = profile::read_config_file(path, "cluster file")?;
    let file: ClusterFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    Cluster::resolve(path, &text, file, profiles)
}

/// Hostname label rules (RFC 1123): the node name is its hostname and its /etc/hosts name.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A literal the configurator's env parser takes inside single quotes, and that cannot
/// break the `;`-separated lists.
fn valid_value(s: &str) -> bool {
    !s.is_empty() && !s.contains(['\'', ';', '\n', '\r', '\\', '$', '`'])
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Warnings found so far, each located like an error.
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Ctx<'_> {
    /// A warning located like a [`ClusterError`]: `FILE:LINE: subject key "k": message`.
    fn warn(&self, span: std::ops::Range<usize>, subject: &str, key: &str, msg: String) {
        self.warnings.borrow_mut().push(format!(
            "{}:{}: {subject}key \"{key}\": {msg}",
            self.path.display(),
            line_of(self.text, span.start)
        ));
    }

    fn err(
        &self,
        span: std::ops::Range<usize>,
        subject: &str,
        key: &str,
        msg: String,
    ) -> anyhow::Error {
        ClusterError {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            subject: subject.to_string(),
            key: key.to_string(),
            message: msg,
        }
        .into()
    }

    fn extras(
        &self,
        e: &ExtrasFile,
        subject: &str,
        services: &[Service],
        role: &str,
    ) -> Result<Extras> {
        let agent = services.contains(&Service::Agent);
        let master = services.contains(&Service::Master);
        for (key, map, runs, what) in [
            ("attributes", &e.attributes, agent, "Mesos agent"),
            ("resources", &e.resources, agent, "Mesos agent"),
            ("agent-flags", &e.agent_flags, agent, "Mesos agent"),
            ("master-flags", &e.master_flags, master, "Mesos master"),
        ] {
            let Some(map) = map else { continue };
            if !runs && !map.get_ref().is_empty() {
                return Err(self.err(
                    map.span(),
                    subject,
                    key,
                    format!("role {role} runs no {what}"),
                ));
            }
            if key.ends_with("flags") {
                if let Err(c) =
                    crate::nodeconf::check_flags(map.get_ref().keys().map(String::as_str))
                {
                    return Err(self.err(map.span(), subject, key, c.to_string()));
                }
            }
            for (k, v) in map.get_ref() {
                let flag = key.ends_with("flags");
                let name_ok = if flag {
                    let bare = k.strip_prefix('?').unwrap_or(k);
                    !bare.is_empty()
                        && !bare.starts_with('-')
                        && bare
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                } else {
                    !k.is_empty()
                        && !k.starts_with('.')
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                };
                if !name_ok {
                    return Err(self.err(
                        map.span(),
                        subject,
                        key,
                        format!("{k:?} is not a valid name"),
                    ));
                }
                if flag {
                    if let Err(c) = crate::nodeconf::check_flags([k.as_str()]) {
                        return Err(self.err(map.span(), subject, key, c.to_string()));
                    }
                    if k.starts_with('?') && !v.is_empty() {
                        return Err(self.err(
                            map.span(),
                            subject,
                            key,
                            format!("{k:?} is a bare flag (the '?' form): its value must be empty"),
                        ));
                    }
                    if !k.starts_with('?') && !valid_value(v) {
                        return Err(self.err(map.span(), subject, key, format!("{k:?}: value {v:?} must be non-empty, one line, without ' ; \\ $ `")));
                    }
                } else if !valid_value(v) {
                    return Err(self.err(
                        map.span(),
                        subject,
                        key,
                        format!(
                            "{k:?}: value {v:?} must be non-empty, one line, without ' ; \\ $ `"
                        ),
                    ));
                }
            }
        }
        let get = |m: &Option<toml::Spanned<BTreeMap<String, String>>>| {
            m.as_ref().map(|m| m.get_ref().clone()).unwrap_or_default()
        };
        Ok(Extras {
            attributes: get(&e.attributes),
            resources: get(&e.resources),
            master_flags: get(&e.master_flags),
            agent_flags: get(&e.agent_flags),
        })
    }

    fn role(
        &self,
        role: &toml::Spanned<String>,
        subject: &str,
        profiles: &[PathBuf],
    ) -> Result<Vec<Service>> {
        let r = role.get_ref();
        let found = profiles
            .iter()
            .map(|d| d.join(format!("{r}.toml")))
            .find(|p| p.is_file());
        let p = match found {
            Some(p) if !r.is_empty() && !r.contains('/') => p,
            _ => {
                let mut known: Vec<String> = profiles
                    .iter()
                    .filter_map(|d| profile::list(d).ok())
                    .flatten()
                    .map(|(n, _, _)| n)
                    .collect();
                known.sort();
                known.dedup();
                let looked: Vec<String> =
                    profiles.iter().map(|d| d.display().to_string()).collect();
                return Err(self.err(
                    role.span(),
                    subject,
                    "role",
                    format!(
                        "no profile {r}.toml in {} (roles are profile names: {})",
                        looked.join(", "),
                        known.join(", ")
                    ),
                ));
            }
        };
        let prof = profile::load(&p, &[])
            .map_err(|e| self.err(role.span(), subject, "role", format!("{e:#}")))?;
        Ok(prof.services)
    }
}

fn parse_ip(ctx: &Ctx, s: &toml::Spanned<String>, subject: &str, key: &str) -> Result<Ipv4Addr> {
    s.get_ref().parse::<Ipv4Addr>().map_err(|_| {
        ctx.err(
            s.span(),
            subject,
            key,
            format!("{:?} is not an IPv4 address", s.get_ref()),
        )
    })
}

/// Whether `s` is a MAC address written as six colon-separated hex pairs.
pub(crate) fn valid_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':')
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A MAC that is stable for a cluster and node: locally administered range of QEMU's OUI.
pub fn derived_mac(cluster: &str, node: &str) -> String {
    let h = Sha256::digest(format!("{cluster}\0{node}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// A user cloud-config as the topology check loaded it.
struct LoadedPart {
    /// What the seed carries.
    part: UserPart,
    /// Where cluster.toml names it.
    span: std::ops::Range<usize>,
    /// Its path as messages show it (the topology's directory joined with the entry).
    shown: PathBuf,
    /// Its canonical path, to find the same file given twice.
    canonical: PathBuf,
    /// The scalars it sets, by key path.
    settings: BTreeMap<String, user_config::Setting>,
}

/// What earlier nodes took: addresses, MACs and ZooKeeper ids, each with its node's name.
#[derive(Default)]
struct Taken {
    ips: BTreeMap<Ipv4Addr, String>,
    macs: BTreeMap<String, String>,
    ids: BTreeMap<u8, String>,
}

/// The steps of [`Cluster::resolve`], in the order it takes them.
impl Ctx<'_> {
    /// `[network]`: a static cidr (with gateway and name servers) or DHCP, not both.
    fn network(&self, n: &NetworkFile) -> Result<Network> {
        let dhcp = n.dhcp.as_ref().is_some_and(|d| *d.get_ref());
        let cidr = match &n.cidr {
            None => None,
            Some(c) => Some(self.cidr(c)?),
        };
        if dhcp && cidr.is_some() {
            let span = n.cidr.as_ref().expect("set").span();
            return Err(self.err(
                span,
                "[network] ",
                "cidr",
                "dhcp = true and a cidr: choose one".into(),
            ));
        }
        if !dhcp && cidr.is_none() {
            return Err(ClusterError {
                path: self.path.to_owned(),
                line: 1,
                subject: "[network] ".into(),
                key: "cidr".into(),
                message: "missing: give the cluster network (cidr, gateway, dns) or dhcp = true"
                    .into(),
            }
            .into());
        }
        let mut network = Network {
            cidr,
            gateway: None,
            dns: Vec::new(),
        };
        if let (Some(c), Some((ip, len))) = (&n.cidr, network.cidr) {
            let (net, _) = network.cidr_net().expect("static");
            if net != ip {
                // Allowed (the prefix length is what the nodes use), but it often means a
                // mistyped network or a node address pasted in its place.
                self.warn(
                    c.span(),
                    "[network] ",
                    "cidr",
                    format!("\"{ip}/{len}\" has host bits set: the network is {net}/{len} (write cidr = \"{net}/{len}\")"),
                );
            }
        }
        if let Some(g) = &n.gateway {
            let ip = parse_ip(self, g, "[network] ", "gateway")?;
            let Some((net, len)) = network.cidr_net() else {
                return Err(self.err(
                    g.span(),
                    "[network] ",
                    "gateway",
                    "a gateway needs a static network (cidr): with dhcp = true the DHCP server gives the route".into(),
                ));
            };
            if !network.contains(ip) {
                return Err(self.err(
                    g.span(),
                    "[network] ",
                    "gateway",
                    format!("{ip} is outside the cluster network {net}/{len}: the nodes reach their gateway directly, so it must be an address on that network"),
                ));
            }
            if let Some(what) = network.reserved(ip) {
                return Err(self.err(
                    g.span(),
                    "[network] ",
                    "gateway",
                    format!("{ip} is the {what} address of {net}/{len}, not a host"),
                ));
            }
            network.gateway = Some(ip);
        }
        if let Some(d) = &n.dns {
            for s in d.get_ref() {
                let ip = s.parse::<Ipv4Addr>().map_err(|_| {
                    self.err(
                        d.span(),
                        "[network] ",
                        "dns",
                        format!("{s:?} is not an IPv4 address"),
                    )
                })?;
                network.dns.push(ip);
            }
        }
        Ok(network)
    }

    /// `cidr = "10.0.0.0/24"`: an address and a prefix length from 0 to 32.
    fn cidr(&self, c: &toml::Spanned<String>) -> Result<(Ipv4Addr, u8)> {
        let s = c.get_ref();
        parse_cidr(s).ok_or_else(|| {
            self.err(
                c.span(),
                "[network] ",
                "cidr",
                format!("{s:?} is not an IPv4 CIDR like 10.0.0.0/24"),
            )
        })
    }

    /// `[security] allow`: IPv4 CIDRs in network form (host bits clear), not `/0`; the
    /// duplicates, and those equal to the cluster network, dropped.
    fn allow(&self, sec: &SecurityFile, network: &Network) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut out: Vec<(Ipv4Addr, u8)> = Vec::new();
        for a in sec.allow.iter().flatten() {
            let s = a.get_ref();
            let err = |m: String| self.err(a.span(), "[security] ", "allow", m);
            let Some((ip, len)) = parse_cidr(s) else {
                let hint = match s.parse::<Ipv4Addr>() {
                    Ok(ip) => format!(" (one address is {ip}/32)"),
                    Err(_) => String::new(),
                };
                return Err(err(format!(
                    "{s:?} is not an IPv4 CIDR like 192.168.9.0/24{hint}"
                )));
            };
            let net = Ipv4Addr::from(u32::from(ip) & prefix_mask(len));
            if net != ip {
                return Err(err(format!(
                    "{s:?} has host bits set: the network is \"{net}/{len}\""
                )));
            }
            if len == 0 {
                return Err(err(format!(
                    "{s:?} admits every address: to leave the ports open to all, set firewall = false"
                )));
            }
            if Some((net, len)) != network.cidr_net() && !out.contains(&(net, len)) {
                out.push((net, len));
            }
        }
        Ok(out)
    }

    /// `ssh-keys`: one OpenSSH public key line each.
    fn ssh_keys(&self, keys: &Option<toml::Spanned<Vec<String>>>) -> Result<()> {
        for k in keys.iter().flat_map(|k| k.get_ref()) {
            if k.contains(['\n', '\r'])
                || !(k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-"))
            {
                let span = keys.as_ref().expect("set").span();
                return Err(self.err(
                    span,
                    "",
                    "ssh-keys",
                    format!(
                        "{:?} is not an OpenSSH public key line",
                        k.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[[node]]`s, in file order; then ZooKeeper ids for the members that have none.
    fn nodes(
        &self,
        files: &[NodeFile],
        cluster: &str,
        network: &Network,
        profiles: &[PathBuf],
        names: &mut BTreeMap<String, String>,
    ) -> Result<Vec<Node>> {
        let mut taken = Taken::default();
        let mut nodes = Vec::new();
        for nf in files {
            nodes.push(self.node(nf, cluster, network, profiles, names, &mut taken)?);
        }
        // ZooKeeper ids for members that have none: the smallest free ids, in file order.
        // ZooKeeper ids run from 1 to 255 (a myid Mesos and the configurator take).
        let mut free = (1..=u8::MAX).filter(|id| !taken.ids.contains_key(id));
        for (n, nf) in nodes.iter_mut().zip(files) {
            if !n.services.contains(&Service::Zookeeper) || n.zk_id.is_some() {
                continue;
            }
            let Some(id) = free.next() else {
                return Err(self.err(
                    nf.name.span(),
                    &format!("node \"{}\" ", n.name),
                    "zk-id",
                    "no ZooKeeper id is left: ids run from 1 to 255, and every one is taken by an earlier member; at most 255 nodes may run ZooKeeper".into(),
                ));
            };
            n.zk_id = Some(id);
        }
        Ok(nodes)
    }

    /// One `[[node]]`: its name, role, address, ZooKeeper id, MAC and extras.
    fn node(
        &self,
        nf: &NodeFile,
        cluster: &str,
        network: &Network,
        profiles: &[PathBuf],
        names: &mut BTreeMap<String, String>,
        taken: &mut Taken,
    ) -> Result<Node> {
        let nm = nf.name.get_ref().clone();
        let subj = format!("node \"{nm}\" ");
        if !valid_name(&nm) {
            return Err(self.err(
                nf.name.span(),
                &subj,
                "name",
                "must be a hostname label: letters, digits and '-', at most 63".into(),
            ));
        }
        if names.insert(nm.clone(), "node".into()).is_some() {
            return Err(self.err(
                nf.name.span(),
                &subj,
                "name",
                "another node already has this name".into(),
            ));
        }
        let services = self.role(&nf.role, &subj, profiles)?;
        let ip = match &nf.ip {
            None => None,
            Some(s) => Some(self.node_ip(s, &nm, &subj, network, &mut taken.ips)?),
        };
        let zk_id = match &nf.zk_id {
            None => None,
            Some(z) => Some(self.node_zk_id(z, nf, &services, &subj, &mut taken.ids)?),
        };
        let mac = match &nf.mac {
            None => derived_mac(cluster, &nm),
            Some(m) => self.mac(m, &subj)?,
        };
        if let Some(other) = taken.macs.insert(mac.clone(), nm.clone()) {
            let span = nf.mac.as_ref().map(|m| m.span()).unwrap_or(nf.name.span());
            return Err(self.err(
                span,
                &subj,
                "mac",
                format!("{mac} is already node \"{other}\"'s"),
            ));
        }
        let extras = self.extras(&nf.extras(), &subj, &services, nf.role.get_ref())?;
        Ok(Node {
            name: nm,
            role: nf.role.get_ref().clone(),
            services,
            ip,
            zk_id,
            mac,
            extras,
            cloud_config: Vec::new(),
        })
    }

    /// A node's static address: in the cidr, not the gateway, not another node's.
    fn node_ip(
        &self,
        s: &toml::Spanned<String>,
        nm: &str,
        subj: &str,
        network: &Network,
        ips: &mut BTreeMap<Ipv4Addr, String>,
    ) -> Result<Ipv4Addr> {
        let ip = parse_ip(self, s, subj, "ip")?;
        // The network step let through exactly one of a cidr and DHCP.
        let dhcp = network.cidr.is_none();
        if dhcp {
            return Err(self.err(s.span(), subj, "ip", "the network uses DHCP ([network] dhcp = true): give a cidr to use static addresses".into()));
        }
        if !network.contains(ip) {
            let (net, len) = network.cidr.expect("static");
            return Err(self.err(
                s.span(),
                subj,
                "ip",
                format!("{ip} is outside the cluster network {net}/{len}"),
            ));
        }
        if let Some(what) = network.reserved(ip) {
            let (net, len) = network.cidr_net().expect("static");
            return Err(self.err(
                s.span(),
                subj,
                "ip",
                format!("{ip} is the {what} address of {net}/{len}, which no host can have"),
            ));
        }
        if Some(ip) == network.gateway {
            return Err(self.err(s.span(), subj, "ip", format!("{ip} is the gateway")));
        }
        if let Some(other) = ips.insert(ip, nm.to_string()) {
            return Err(self.err(
                s.span(),
                subj,
                "ip",
                format!("{ip} is already node \"{other}\"'s address"),
            ));
        }
        Ok(ip)
    }

    /// A node's given ZooKeeper id: its role runs ZooKeeper, from 1 to 255, no other
    /// node's.
    fn node_zk_id(
        &self,
        z: &toml::Spanned<i64>,
        nf: &NodeFile,
        services: &[Service],
        subj: &str,
        ids: &mut BTreeMap<u8, String>,
    ) -> Result<u8> {
        if !services.contains(&Service::Zookeeper) {
            return Err(self.err(
                z.span(),
                subj,
                "zk-id",
                format!("role {} runs no ZooKeeper", nf.role.get_ref()),
            ));
        }
        let v = *z.get_ref();
        if !(1..=255).contains(&v) {
            return Err(self.err(z.span(), subj, "zk-id", format!("{v} is not from 1 to 255")));
        }
        if let Some(other) = ids.insert(v as u8, nf.name.get_ref().clone()) {
            return Err(self.err(
                z.span(),
                subj,
                "zk-id",
                format!("ZooKeeper id {v} is already node \"{other}\"'s"),
            ));
        }
        Ok(v as u8)
    }

    /// A node's given MAC, lower-cased: six colon-separated hex pairs.
    fn mac(&self, m: &toml::Spanned<String>, subj: &str) -> Result<String> {
        let s = m.get_ref().to_ascii_lowercase();
        if !valid_mac(&s) {
            return Err(self.err(
                m.span(),
                subj,
                "mac",
                format!("{s:?} is not a MAC address like 52:54:00:12:34:56"),
            ));
        }
        Ok(s)
    }

    /// `cloud-config = [...]`: files relative to the topology's directory, each a
    /// cloud-config [`user_config::check`] accepts; a problem names the entry's line in
    /// cluster.toml and the line in the cloud-config file.
    fn cloud_configs(
        &self,
        list: &Option<Vec<toml::Spanned<String>>>,
        subject: &str,
    ) -> Result<Vec<LoadedPart>> {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let mut out = Vec::new();
        for e in list.iter().flatten() {
            let name = e.get_ref();
            let err = |m: String| self.err(e.span(), subject, "cloud-config", m);
            if name.is_empty() || name.contains(['\n', '\r']) {
                return Err(err(format!(
                    "{name:?} is not a file name (cloud-configs are files beside cluster.toml, e.g. \"cloud-config/site.yaml\")"
                )));
            }
            let shown = dir.join(name);
            let text = profile::read_config_file(&shown, "cloud-config file")
                .map_err(|x| err(format!("{x:#}")))?;
            let settings = user_config::check(&text)
                .map_err(|p| err(format!("{}:{}: {}", shown.display(), p.line, p.message)))?;
            let canonical = shown.canonicalize().unwrap_or_else(|_| shown.clone());
            out.push(LoadedPart {
                part: UserPart {
                    name: name.clone(),
                    text,
                },
                span: e.span(),
                shown,
                canonical,
                settings,
            });
        }
        Ok(out)
    }

    /// `parts` merge after `before` (cloud-init's order): a file given twice would run its
    /// commands twice, so it is refused; a scalar an earlier part already set keeps the
    /// earlier value (`no_replace`), which is a warning.
    fn merge_order(
        &self,
        before: &[LoadedPart],
        parts: &[LoadedPart],
        subject: &str,
    ) -> Result<()> {
        for (i, p) in parts.iter().enumerate() {
            let earlier = before.iter().chain(&parts[..i]);
            if let Some(o) = earlier.clone().find(|o| o.canonical == p.canonical) {
                return Err(self.err(
                    p.span.clone(),
                    subject,
                    "cloud-config",
                    format!(
                        "{} is already given (as {:?}{}): each file once, or its lists (runcmd, write_files) would be applied twice",
                        p.shown.display(),
                        o.part.name,
                        if before.iter().any(|b| std::ptr::eq(b, o)) { ", cluster-wide" } else { "" }
                    ),
                ));
            }
            for (key, s) in &p.settings {
                let Some((o, os)) = earlier
                    .clone()
                    .find_map(|o| Some((o, o.settings.get(key)?)))
                else {
                    continue;
                };
                if os.value == s.value {
                    continue;
                }
                self.warn(
                    p.span.clone(),
                    subject,
                    "cloud-config",
                    format!(
                        "{}:{}: \"{key}\" is already set by {}:{}, whose value stays ({:?}): cloud-init merges the parts with dict(no_replace), so the first value wins",
                        p.shown.display(),
                        s.line,
                        o.shown.display(),
                        os.line,
                        os.value
                    ),
                );
            }
        }
        Ok(())
    }

    /// A static network without a gateway is a warning when nodes have static addresses:
    /// their network-config then has no default route, so they reach nothing outside the
    /// cidr (no apt, no image or package pulls). DHCP nodes get their route from DHCP.
    fn no_gateway(&self, f: &NetworkFile, network: &Network, nodes: &[Node]) {
        let (Some(c), Some((net, len)), None) = (&f.cidr, network.cidr_net(), network.gateway)
        else {
            return;
        };
        let fixed: Vec<String> = nodes
            .iter()
            .filter(|n| n.ip.is_some())
            .map(|n| format!("\"{}\"", n.name))
            .collect();
        if fixed.is_empty() {
            return;
        }
        let (shown, more) = if fixed.len() > 4 {
            (&fixed[..3], format!(" and {} more", fixed.len() - 3))
        } else {
            (&fixed[..], String::new())
        };
        self.warn(
            c.span(),
            "[network] ",
            "gateway",
            format!(
                "none given, so node{} {}{more} (static addresses) get no default route: they reach nothing outside {net}/{len} (no apt, no image or package pulls); add gateway = \"...\" unless the network is isolated on purpose",
                if fixed.len() == 1 { "" } else { "s" },
                shown.join(", "),
            ),
        );
    }

    /// At least one node runs a Mesos master; an even number of masters is a warning.
    fn masters(&self, nodes: &[Node]) -> Result<Vec<String>> {
        let path = self.path;
        let masters = nodes
            .iter()
            .filter(|n| n.services.contains(&Service::Master))
            .count();
        if masters == 0 {
            return Err(ClusterError {
                path: path.to_owned(),
                line: 1,
                subject: String::new(),
                key: "node.role".into(),
                message: "no node runs a Mesos master: give at least one node a role with a master (e.g. role = \"master\")".into(),
            }
            .into());
        }
        let mut warnings = Vec::new();
        if masters % 2 == 0 {
            warnings.push(format!(
                "{}: {masters} masters: the quorum is a majority, {}, so {masters} masters survive only {} failure(s), no more than {} would; use an odd number",
                path.display(),
                crate::nodeconf::quorum(masters),
                (masters - 1) / 2,
                masters - 1
            ));
        }
        Ok(warnings)
    }

    /// `[[group]]`s: agent-only roles, names no node or other group has.
    fn groups(
        &self,
        files: &[GroupFile],
        profiles: &[PathBuf],
        names: &mut BTreeMap<String, String>,
    ) -> Result<Vec<Group>> {
        let mut groups = Vec::new();
        for gf in files {
            let nm = gf.name.get_ref().clone();
            let subj = format!("group \"{nm}\" ");
            if !valid_name(&nm) {
                return Err(self.err(
                    gf.name.span(),
                    &subj,
                    "name",
                    "must be letters, digits and '-'".into(),
                ));
            }
            if names.insert(nm.clone(), "group".into()).is_some() {
                return Err(self.err(
                    gf.name.span(),
                    &subj,
                    "name",
                    "a node or group already has this name".into(),
                ));
            }
            let services = self.role(&gf.role, &subj, profiles)?;
            if services != [Service::Agent] {
                return Err(self.err(gf.role.span(), &subj, "role", format!("role {} runs more than a Mesos agent: a group of identical instances can only be agents", gf.role.get_ref())));
            }
            let extras = self.extras(&gf.extras(), &subj, &services, gf.role.get_ref())?;
            if let Some(n) = gf.lab_count.filter(|n| !(1..=MAX_LAB_COUNT).contains(n)) {
                return Err(self.err(
                    gf.name.span(),
                    &subj,
                    "lab-count",
                    format!("{n} is not from 1 to {MAX_LAB_COUNT} (the VMs the lab boots on this machine)"),
                ));
            }
            groups.push(Group {
                name: nm,
                role: gf.role.get_ref().clone(),
                services,
                lab_count: gf.lab_count.unwrap_or(1),
                extras,
                cloud_config: Vec::new(),
            });
        }
        Ok(groups)
    }
}

impl Cluster {
    /// Validates the file in the order a reader meets it: the name, the network and the
    /// SSH keys, then the nodes (and the masters among them), then the groups. Node and
    /// group names share one namespace.
    fn resolve(path: &Path, text: &str, f: ClusterFile, profiles: &[PathBuf]) -> Result<Cluster> {
        let ctx = Ctx {
            path,
            text,
            warnings: Default::default(),
        };
        let name = f.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(ctx.err(f.name.span(), "", "name", format!("{name:?} must be letters, digits and '-' (it names VMs, instance ids and the lab's run dir)")));
        }
        let network = ctx.network(&f.network)?;
        let security = f.security.unwrap_or_default();
        let allow = ctx.allow(&security, &network)?;
        ctx.ssh_keys(&f.ssh_keys)?;
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut nodes = ctx.nodes(&f.nodes, &name, &network, profiles, &mut names)?;
        ctx.no_gateway(&f.network, &network, &nodes);
        let mut warnings = ctx.warnings.take();
        warnings.extend(ctx.masters(&nodes)?);
        let mut groups = ctx.groups(&f.groups, profiles, &mut names)?;
        // The user's cloud-configs: cluster-wide, then each node's and group's after them.
        let everyone = ctx.cloud_configs(&f.cloud_config, "")?;
        ctx.merge_order(&[], &everyone, "")?;
        for (n, nf) in nodes.iter_mut().zip(&f.nodes) {
            let subj = format!("node \"{}\" ", n.name);
            let own = ctx.cloud_configs(&nf.cloud_config, &subj)?;
            ctx.merge_order(&everyone, &own, &subj)?;
            n.cloud_config = own.into_iter().map(|p| p.part).collect();
        }
        for (g, gf) in groups.iter_mut().zip(&f.groups) {
            let subj = format!("group \"{}\" ", g.name);
            let own = ctx.cloud_configs(&gf.cloud_config, &subj)?;
            ctx.merge_order(&everyone, &own, &subj)?;
            g.cloud_config = own.into_iter().map(|p| p.part).collect();
        }
        warnings.extend(ctx.warnings.take());
        let firewall = security.firewall.unwrap_or(true);
        if !firewall {
            warnings.push(format!(
                "{}: [security] firewall = false: the nodes filter nothing, so ZooKeeper, the Mesos masters and agents, Marathon and the task ports answer every address that reaches them{}",
                path.display(),
                if allow.is_empty() { "" } else { " ([security] allow has no effect)" }
            ));
        }
        Ok(Cluster {
            name,
            path: path.to_owned(),
            network,
            ssh_keys: f.ssh_keys.map(|k| k.into_inner()).unwrap_or_default(),
            nodes,
            groups,
            lab: f.lab.unwrap_or_default(),
            warnings,
            auth: security.auth.unwrap_or(true),
            firewall,
            allow,
            secrets: None,
            cloud_config: everyone.into_iter().map(|p| p.part).collect(),
            route_styles: BTreeMap::new(),
        })
    }

    /// The cluster-wide values, derived from the masters.
    pub fn derive(&self) -> Derived {
        let mut members: Vec<(u8, &str)> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.zk_id?, n.name.as_str())))
            .collect();
        members.sort();
        let zk_url = format!(
            "zk://{}/mesos",
            members
                .iter()
                .map(|(_, h)| format!("{h}:2181"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let zk_servers = members
            .iter()
            .map(|(i, h)| format!("{i}={h}"))
            .collect::<Vec<_>>()
            .join(" ");
        let masters = self
            .nodes
            .iter()
            .filter(|n| n.services.contains(&Service::Master))
            .count();
        let hosts = self
            .nodes
            .iter()
            .filter_map(|n| Some(format!("{}={}", n.ip?, n.name)))
            .collect::<Vec<_>>()
            .join(" ");
        Derived {
            zk_url,
            zk_servers,
            quorum: crate::nodeconf::quorum(masters),
            hosts,
        }
    }

    /// `MESOBAKE_CLUSTER_NETWORKS`: the networks the nodes' firewall admits to the
    /// cluster's ports, space-separated in network form: `[network] cidr`, then every
    /// `[security] allow` entry. None for a DHCP cluster without `allow` (the configurator
    /// then admits the node's own connected subnets).
    /// A network inside another one on the list is left out, so the list is disjoint
    /// (nftables refuses overlapping intervals in a set).
    pub fn cluster_networks(&self) -> Option<String> {
        let all: Vec<(Ipv4Addr, u8)> = self
            .network
            .cidr_net()
            .into_iter()
            .chain(self.allow.iter().copied())
            .collect();
        // Whether network `a` holds all of `b`.
        let holds = |(an, al): (Ipv4Addr, u8), (bn, bl): (Ipv4Addr, u8)| {
            al <= bl && u32::from(bn) & prefix_mask(al) == u32::from(an)
        };
        let nets: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|&(i, &b)| {
                !all.iter()
                    .enumerate()
                    .any(|(j, &a)| j != i && holds(a, b) && (a != b || j < i))
            })
            .map(|(_, (ip, len))| format!("{ip}/{len}"))
            .collect();
        (!nets.is_empty()).then(|| nets.join(" "))
    }

    fn common_env(&self, d: &Derived, e: &Extras) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("MESOBAKE_CLUSTER".into(), self.name.clone());
        if !self.firewall {
            env.insert("MESOBAKE_FIREWALL".into(), "off".into());
        } else if let Some(nets) = self.cluster_networks() {
            env.insert("MESOBAKE_CLUSTER_NETWORKS".into(), nets);
        }
        env.insert("MESOBAKE_ZK".into(), d.zk_url.clone());
        if !d.hosts.is_empty() {
            env.insert("MESOBAKE_HOSTS".into(), d.hosts.clone());
        }
        let list = |m: &BTreeMap<String, String>, sep: char| {
            m.iter()
                .map(|(k, v)| {
                    if k.starts_with('?') {
                        k.clone()
                    } else {
                        format!("{k}{sep}{v}")
                    }
                })
                .collect::<Vec<_>>()
                .join(";")
        };
        for (key, m, sep) in [
            ("MESOBAKE_ATTRIBUTES", &e.attributes, ':'),
            ("MESOBAKE_RESOURCES", &e.resources, ':'),
            ("MESOBAKE_MASTER_FLAGS", &e.master_flags, '='),
            ("MESOBAKE_AGENT_FLAGS", &e.agent_flags, '='),
        ] {
            if !m.is_empty() {
                env.insert(key.into(), list(m, sep));
            }
        }
        env
    }

    /// The static network-config (v2) for one node's cluster NIC, matched by MAC.
    pub fn network_config(&self, mac: &str, ip: Option<Ipv4Addr>) -> Option<NetIface> {
        let (_, len) = self.network.cidr?;
        Some(NetIface {
            id: "cluster0".into(),
            mac: mac.to_string(),
            address: ip.map(|ip| format!("{ip}/{len}")),
            gateway: self.network.gateway.map(|g| g.to_string()),
            dns: self.network.dns.iter().map(|d| d.to_string()).collect(),
        })
    }

    /// Sets each role's [`RouteStyle`] from the manifest.json in `images` (what `mesobake
    /// build` wrote beside the `<role>.qcow2` images): the cloud-init version and the
    /// renderer its base had at build time. Without a manifest (`required` false) or a
    /// record of the role's image, the role keeps `gateway4`, which every base accepts.
    pub fn read_route_styles(&mut self, images: &Path, required: bool) -> Result<()> {
        let path = images.join("manifest.json");
        if !required && !path.exists() {
            return Ok(());
        }
        let m = crate::export::manifest::Manifest::read(&path)?;
        let roles: Vec<&String> = self
            .nodes
            .iter()
            .map(|n| &n.role)
            .chain(self.groups.iter().map(|g| &g.role))
            .collect();
        for role in roles {
            if let Some(e) = m.role_image(role) {
                self.route_styles.insert(role.clone(), e.route_style());
            }
        }
        Ok(())
    }

    /// The secrets.env settings for a node or group running `services` (none without
    /// secrets).
    fn secrets_env(&self, services: &[Service]) -> BTreeMap<String, String> {
        let Some(s) = &self.secrets else {
            return BTreeMap::new();
        };
        s.env_for(Needs {
            master: services.contains(&Service::Master),
            agent: services.contains(&Service::Agent),
            marathon: services.contains(&Service::Marathon),
        })
    }

    /// The seed of one node.
    pub fn node_seed(&self, d: &Derived, n: &Node, target: Target) -> NodeSeed {
        let mut env = self.common_env(d, &n.extras);
        env.insert("MESOBAKE_HOSTNAME".into(), n.name.clone());
        if let (Some(ip), Target::NoCloud) = (n.ip, target) {
            // On EC2 the instance's own address is detected (launch it with this one).
            env.insert("MESOBAKE_IP".into(), ip.to_string());
        }
        if let Some(id) = n.zk_id {
            env.insert("MESOBAKE_ZK_ID".into(), id.to_string());
            env.insert("MESOBAKE_ZK_SERVERS".into(), d.zk_servers.clone());
        }
        if n.services.contains(&Service::Master) {
            env.insert("MESOBAKE_QUORUM".into(), d.quorum.to_string());
        }
        let mut s = NodeSeed {
            instance_id: String::new(),
            hostname: n.name.clone(),
            node_env: env,
            secrets_env: self.secrets_env(&n.services),
            ssh_keys: self.ssh_keys.clone(),
            network: Vec::new(),
            user_parts: self
                .cloud_config
                .iter()
                .chain(&n.cloud_config)
                .cloned()
                .collect(),
            route_style: self.route_styles.get(&n.role).copied().unwrap_or_default(),
        };
        if target == Target::NoCloud {
            s.network.extend(self.network_config(&n.mac, n.ip));
        }
        s.instance_id = format!("{}-{}-{}", self.name, n.name, s.digest());
        s
    }

    /// The one seed every instance of an autoscaling group shares: no address, no name.
    pub fn group_seed(&self, d: &Derived, g: &Group) -> NodeSeed {
        let mut s = NodeSeed {
            instance_id: String::new(),
            hostname: String::new(),
            node_env: self.common_env(d, &g.extras),
            secrets_env: self.secrets_env(&g.services),
            ssh_keys: self.ssh_keys.clone(),
            network: Vec::new(),
            user_parts: self
                .cloud_config
                .iter()
                .chain(&g.cloud_config)
                .cloned()
                .collect(),
            route_style: self.route_styles.get(&g.role).copied().unwrap_or_default(),
        };
        s.instance_id = format!("{}-{}-{}", self.name, g.name, s.digest());
        s
    }
}

/// What `mesobake seed` wrote for one node or group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeedOut {
    /// Node or group name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its static address, if any.
    pub ip: Option<String>,
    /// The MAC its cluster NIC must have for network-config to match (nodes only).
    pub mac: Option<String>,
    /// The files written, relative to the output directory.
    pub files: Vec<String>,
}

/// What `mesobake seed` did in its output directory.
#[derive(Debug)]
pub struct SeedsWritten {
    /// Each node's and group's files.
    pub seeds: Vec<SeedOut>,
    /// The files of nodes that left (or that a node no longer gets) removed, and those
    /// kept ([`crate::seed::record`]).
    pub tidy: crate::seed::record::Tidy,
}

/// The streamOptimized VMDKs of `seed --ova`: each role's disk written once (the slow
/// part of an OVA: its grains compressed on every core), then copied for each of its
/// nodes and groups with the copy's CID pinned from the node's name, so every OVA is the
/// same as if written on its own. They live in a temporary directory in the output directory,
/// removed when this is dropped.
struct RoleVmdks {
    tmp: Option<tempfile::TempDir>,
    converted: BTreeMap<String, PathBuf>,
}

impl RoleVmdks {
    fn new() -> RoleVmdks {
        RoleVmdks {
            tmp: None,
            converted: BTreeMap::new(),
        }
    }

    /// `name`'s own copy of its role's VMDK (converted now if it is the role's first).
    fn for_node(
        &mut self,
        out: &Path,
        role: &str,
        name: &str,
        disk: &RoleDisk,
        progress: &mut crate::progress::Progress,
    ) -> Result<PathBuf> {
        if self.tmp.is_none() {
            self.tmp = Some(
                tempfile::Builder::new()
                    .prefix(".mesobake-ova-")
                    .tempdir_in(out)
                    .with_context(|| format!("creating a work directory in {}", out.display()))?,
            );
        }
        let tmp = self.tmp.as_ref().expect("made above").path().to_owned();
        if !self.converted.contains_key(role) {
            let v = tmp.join(format!("{role}.role.vmdk"));
            progress.step(&format!(
                "{role}: writing the disk as a streamOptimized VMDK (once for every {role} OVA)"
            ));
            // The CID is pinned per node below.
            crate::export::stream::from_image(&disk.path, 0, &tmp.join("scratch"), &v)?;
            self.converted.insert(role.to_string(), v);
        }
        let copy = tmp.join(format!("{name}.vmdk"));
        std::fs::copy(&self.converted[role], &copy)
            .with_context(|| format!("copying the {role} VMDK for {name}"))?;
        crate::export::pin::pin("vmdk", &copy, &format!("{}:{name}", disk.sha256), 0)?;
        Ok(copy)
    }
}

/// Writes `<out>/<name>.ova`: its role's disk (as a VMDK from `vmdks`) with the
/// `<name>.iso` already in `out` as its CD-ROM, sized as `mesobake build` sizes the
/// role's OVA. Returns its name in `out`.
fn write_ova(
    out: &Path,
    (name, role, services): (&str, &str, &[Service]),
    disk: &RoleDisk,
    vmdks: &mut RoleVmdks,
    digest: crate::export::ova::MfDigest,
    progress: &mut crate::progress::Progress,
) -> Result<String> {
    let ova = format!("{name}.ova");
    let dest = out.join(&ova);
    progress.stage(
        "ova",
        &format!("{}: {} + {name}.iso", dest.display(), disk.path.display()),
    );
    let vmdk = vmdks.for_node(out, role, name, disk, progress)?;
    let bar = progress.percent(&format!("{name}: writing the OVA"));
    crate::export::ova::ova_from_disk(
        &vmdk,
        crate::export::ova::Appliance {
            name: name.to_string(),
            os: disk.os,
            cpus: 2,
            memory_mb: if crate::service::wants_jvm_memory(services) {
                4096
            } else {
                2048
            },
            disk_capacity: 0,
        },
        Some(&out.join(format!("{name}.iso"))),
        digest,
        &format!("{}:{name}", disk.sha256),
        &dest,
        &bar,
    )
    .with_context(|| format!("writing {}", dest.display()))?;
    bar.done();
    progress.finish();
    // Each OVA holds its own copy; the next node makes its own.
    std::fs::remove_file(&vmdk).with_context(|| format!("removing {}", vmdk.display()))?;
    Ok(ova)
}

/// A role's disk as `mesobake seed --ova` packs it: the qcow2 `mesobake build` wrote.
#[derive(Debug, Clone)]
pub struct RoleDisk {
    /// The qcow2 file.
    pub path: PathBuf,
    /// Its SHA-256 as the manifest records it (pins the VMDK's CID with the node name).
    pub sha256: String,
    /// The guest OS type the descriptor names.
    pub os: crate::export::ova::GuestOs,
}

impl Cluster {
    /// Each role's disk for `seed --ova`, from the manifest.json in `images`
    /// ([`crate::export::manifest::Manifest::role_image`]): the image's `<role>.qcow2`
    /// output, else its first qcow2. Every role is looked up before anything is written,
    /// and a missing one names the build that makes it.
    pub fn role_disks(&self, images: &Path) -> Result<BTreeMap<String, RoleDisk>> {
        let path = images.join("manifest.json");
        let build = |role: &str| {
            format!(
                "make it with `mesobake build {role} --format qcow2 --out {}`",
                images.display()
            )
        };
        let roles: std::collections::BTreeSet<&String> = self
            .nodes
            .iter()
            .map(|n| &n.role)
            .chain(self.groups.iter().map(|g| &g.role))
            .collect();
        if !path.exists() {
            let first = roles.iter().next().map(|r| r.as_str()).unwrap_or("ROLE");
            anyhow::bail!(
                "--ova: {} has no manifest.json, so there is no image for any role ({}; {} for each role)",
                images.display(),
                roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
                build(first)
            );
        }
        let m = crate::export::manifest::Manifest::read(&path)?;
        let mut disks = BTreeMap::new();
        for role in roles {
            let Some(e) = m.role_image(role) else {
                anyhow::bail!(
                    "--ova: no image for role {role} in {} ({}); {}",
                    images.display(),
                    path.display(),
                    build(role)
                );
            };
            let own = format!("{role}.qcow2");
            let Some(o) = e.outputs.iter().find(|o| o.file == own).or_else(|| {
                e.outputs
                    .iter()
                    .find(|o| o.format == crate::export::Format::Qcow2)
            }) else {
                anyhow::bail!(
                    "--ova: the image of role {role} in {} has no qcow2 output; {}",
                    images.display(),
                    build(role)
                );
            };
            let disk = images.join(&o.file);
            if !disk.is_file() {
                anyhow::bail!(
                    "--ova: {} (role {role}'s image, as {} lists it) is missing; {}",
                    disk.display(),
                    path.display(),
                    build(role)
                );
            }
            let os = match e.base.family.as_deref() {
                Some("ubuntu") => crate::export::ova::GuestOs::Ubuntu64,
                _ => crate::export::ova::GuestOs::Debian64,
            };
            disks.insert(
                role.clone(),
                RoleDisk {
                    path: disk,
                    sha256: o.sha256.clone(),
                    os,
                },
            );
        }
        Ok(disks)
    }

    /// Writes every node's and group's seeds into `out`: `<name>/` (user-data, meta-data,
    /// network-config), `<name>.iso` (NoCloud, label cidata), `<name>.user-data` (EC2) and
    /// `<name>.network-config`. Then removes what the previous run wrote for nodes and
    /// groups no longer in the topology, going by its record ([`crate::seed::record`]).
    pub fn write_seeds(&self, out: &Path) -> Result<SeedsWritten> {
        self.write_seeds_with(out, None, crate::export::ova::MfDigest::Sha256)
    }

    /// [`Cluster::write_seeds`], and with `disks` ([`Cluster::role_disks`]) one
    /// `<name>.ova` per node and group as well: its role's disk with its seed ISO as a
    /// CD-ROM ([`crate::export::ova::ova_from_disk`]), written through a temporary name
    /// and renamed, 0600 when the seed carries secrets.
    pub fn write_seeds_with(
        &self,
        out: &Path,
        disks: Option<&BTreeMap<String, RoleDisk>>,
        digest: crate::export::ova::MfDigest,
    ) -> Result<SeedsWritten> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let d = self.derive();
        let mut written = Vec::new();
        let mut record = crate::seed::record::Files::new();
        let mut progress = crate::progress::Progress::new();
        let mut vmdks = RoleVmdks::new();
        let mut one = |name: &str,
                       role: &str,
                       services: &[Service],
                       ip: Option<String>,
                       mac: Option<String>,
                       nocloud: NodeSeed,
                       ec2: NodeSeed|
         -> Result<()> {
            let mut files = Vec::new();
            // Every file, for the record (the listing shows the directory once).
            let mut each = Vec::new();
            nocloud.write_dir(&out.join(name))?;
            files.push(format!("{name}/"));
            each.push(format!("{name}/user-data"));
            each.push(format!("{name}/meta-data"));
            let nc = nocloud.network_config();
            if nc.is_some() {
                each.push(format!("{name}/network-config"));
            }
            nocloud.write_iso(&out.join(format!("{name}.iso")))?;
            files.push(format!("{name}.iso"));
            crate::seed::write_user_data(
                &out.join(format!("{name}.user-data")),
                &ec2.user_data(),
                ec2.has_secrets(),
            )?;
            files.push(format!("{name}.user-data"));
            if let Some(n) = nc {
                let p = out.join(format!("{name}.network-config"));
                std::fs::write(&p, n).with_context(|| format!("writing {}", p.display()))?;
                files.push(format!("{name}.network-config"));
            }
            if let Some(disk) = disks.and_then(|m| m.get(role)) {
                files.push(write_ova(
                    out,
                    (name, role, services),
                    disk,
                    &mut vmdks,
                    digest,
                    &mut progress,
                )?);
            }
            each.extend(files.iter().filter(|f| !f.ends_with('/')).cloned());
            record.insert(name.to_string(), crate::seed::record::digests(out, &each)?);
            written.push(SeedOut {
                name: name.into(),
                role: role.into(),
                ip,
                mac,
                files,
            });
            Ok(())
        };
        for n in &self.nodes {
            one(
                &n.name,
                &n.role,
                &n.services,
                n.ip.map(|i| i.to_string()),
                Some(n.mac.clone()),
                self.node_seed(&d, n, Target::NoCloud),
                self.node_seed(&d, n, Target::Ec2),
            )?;
        }
        for g in &self.groups {
            let s = self.group_seed(&d, g);
            one(&g.name, &g.role, &g.services, None, None, s.clone(), s)?;
        }
        let tidy = crate::seed::record::tidy(out, &record)?;
        Ok(SeedsWritten {
            seeds: written,
            tidy,
        })
    }
}

#[cfg(test)]
mod tests;
