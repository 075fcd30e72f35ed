//! cloud-init seeds: a node's `user-data`, `meta-data` and `network-config`, written as a
//! NoCloud ISO (volume label `cidata`) for KVM and VirtualBox, and as plain EC2 user-data.
//!
//! network-config is version 2 restricted to what Debian 12's cloud-init 22.4 renders
//! with its ENI renderer: interfaces matched by MAC (22.4 looks the name up by MAC, so no
//! `set-name` and no rename), `addresses`, a default gateway and `nameservers`. The
//! gateway is written the way the node's base renders it ([`RouteStyle`],
//! [`default_route_style`]): `gateway4` by default and on ifupdown (ENI) bases, a
//! `routes` entry to `0.0.0.0/0` on netplan bases whose cloud-init hands v2 to netplan
//! as it is. The choice comes from the image's manifest (the cloud-init version and
//! whether netplan is installed, recorded at build time); without one, `gateway4`.
//!
//! Node settings travel as `/etc/mesobake/node.env`, written by cloud-init's
//! `write_files`; the first-boot configurator reads that file. A node's credentials
//! ([`secrets`]) travel in a separate entry, `/etc/mesobake/secrets.env`, root-owned 0600,
//! so node.env stays world-readable and secret-free. Every seed file that carries a
//! secret (user-data, the ISO) is 0600 on the host too.

pub mod record;
pub mod secrets;
pub mod user_config;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::run::Cmd;

/// One node's seed.
#[derive(Debug, Clone, Default)]
pub struct NodeSeed {
    /// The instance id; a new id makes cloud-init treat the boot as a first boot.
    pub instance_id: String,
    /// The hostname cloud-init sets.
    pub hostname: String,
    /// `MESOBAKE_*` settings for /etc/mesobake/node.env.
    pub node_env: BTreeMap<String, String>,
    /// The node's credentials for /etc/mesobake/secrets.env (root, 0600); empty means no
    /// such file, and the node runs without authentication.
    pub secrets_env: BTreeMap<String, String>,
    /// SSH public keys for the default user.
    pub ssh_keys: Vec<String>,
    /// Interfaces for network-config (v2); none means no network-config file, so
    /// cloud-init's fallback (DHCP on the first NIC) applies.
    pub network: Vec<NetIface>,
    /// The user's own cloud-configs (cluster-wide, then the group's or the node's),
    /// merged by cloud-init after mesobake's own ([`user_config`]).
    pub user_parts: Vec<user_config::UserPart>,
    /// How network-config spells each interface's default gateway (from the image's
    /// manifest; [`default_route_style`]).
    pub route_style: RouteStyle,
}

/// How network-config (v2) spells an interface's default gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteStyle {
    /// `gateway4: GW`: deprecated by netplan, but accepted by every cloud-init and
    /// netplan, and the only form the ENI renderer turns into ifupdown's own `gateway`.
    #[default]
    Gateway4,
    /// `routes: [{to: 0.0.0.0/0, via: GW}]`, for bases that hand v2 to netplan.
    Routes,
}

/// What renders a base's network-config: what cloud-init finds installed (netplan
/// first, as its Debian and Ubuntu `renderers` lists have it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetRenderer {
    /// ifupdown's /etc/network/interfaces (Debian 12, Ubuntu 14.04 and 16.04).
    Eni,
    /// netplan (Ubuntu 18.04 and later, bases with `netplan.io`).
    Netplan,
}

/// The first cloud-init whose netplan renderer passes a v2 network-config to netplan
/// unparsed (canonical/cloud-init PR #1650, "Passthough v2 netconfigs in netplan
/// systems", the fix of issue #3988, released in 22.3). Older ones rebuild it from
/// their own parse, which knows only part of v2.
const NETPLAN_PASSTHROUGH: &str = "22.3";

/// How to write the default gateway for a base with `cloud_init` (its Debian package
/// version; None when no manifest says) rendering with `renderer`.
///
/// The rule, from cloud-init's own code:
/// * ENI: `cloudinit/net/eni.py` (`Renderer._render_route`, every version up to 25.x;
///   issue #6250 asks to change it, still open) renders every v2 route as
///   `post-up route add …`, which needs net-tools, absent from minimal images; gateway4
///   becomes the subnet's `gateway`, which ifupdown applies itself. So gateway4, on any
///   version. `tests/seed.rs` proves it with Debian 12's 22.4.
/// * netplan, cloud-init 22.3 and later: the v2 document reaches netplan verbatim
///   ([`NETPLAN_PASSTHROUGH`]), and netplan deprecates gateway4 for default routes: so
///   `routes`. The destination is spelled `0.0.0.0/0`, not `default`: netplan 0.99
///   (Ubuntu 20.04) rejects `default` (cloud-init issue #4133, whose focal patch keeps
///   `0.0.0.0/0`), and cloud-init's own v2 parser (`cloudinit/net/network_state.py`,
///   `_normalize_net_keys`) refuses `default` until PR #6391 (2025); `0.0.0.0/0`
///   parses everywhere.
/// * netplan with an older cloud-init: gateway4, which its own parse keeps.
/// * Unknown version (no manifest beside the images, or a manifest without
///   cloud-init): gateway4, deprecated but accepted by every cloud-init and netplan.
pub fn default_route_style(cloud_init: Option<&str>, renderer: NetRenderer) -> RouteStyle {
    use std::cmp::Ordering::Less;
    let Some(v) = cloud_init else {
        return RouteStyle::Gateway4;
    };
    match renderer {
        NetRenderer::Eni => RouteStyle::Gateway4,
        NetRenderer::Netplan
            if crate::debversion::compare_versions(v, NETPLAN_PASSTHROUGH) == Less =>
        {
            RouteStyle::Gateway4
        }
        NetRenderer::Netplan => RouteStyle::Routes,
    }
}

/// One ethernet of a network-config, matched by MAC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetIface {
    /// The v2 id (a label; the interface is found by MAC).
    pub id: String,
    /// Its MAC address.
    pub mac: String,
    /// A static `address/prefix`; None means DHCP.
    pub address: Option<String>,
    /// The default gateway.
    pub gateway: Option<String>,
    /// Name servers.
    pub dns: Vec<String>,
}

/// Quotes a YAML scalar as a double-quoted string (JSON strings are valid YAML).
fn yq(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `KEY='value'` lines under a header, the way the configurator parses them.
fn env_text(header: &str, env: &BTreeMap<String, String>) -> String {
    let mut s = format!("# {header}\n");
    for (k, v) in env {
        s += &format!("{k}='{}'\n", v.replace('\'', r"'\''"));
    }
    s
}

impl NodeSeed {
    /// The node.env file content.
    pub fn node_env_text(&self) -> String {
        env_text(
            "Written by cloud-init from mesobake's seed.",
            &self.node_env,
        )
    }

    /// The secrets.env file content (None when the seed carries no secrets).
    pub fn secrets_env_text(&self) -> Option<String> {
        (!self.secrets_env.is_empty()).then(|| {
            env_text(
                "Written by cloud-init from mesobake's seed. Secrets: root only (0600).",
                &self.secrets_env,
            )
        })
    }

    /// Whether any file of this seed carries a secret (and must be 0600 on the host).
    pub fn has_secrets(&self) -> bool {
        !self.secrets_env.is_empty()
    }

    /// The user-data: mesobake's own `#cloud-config`, or, when the topology names user
    /// cloud-configs, a MIME multipart message with mesobake's part first and theirs after
    /// it ([`user_config::multipart`]). Without user parts it stays a plain cloud-config,
    /// byte for byte what it was before they existed, so existing seeds keep their
    /// instance ids.
    pub fn user_data(&self) -> String {
        let own = self.own_cloud_config();
        if self.user_parts.is_empty() {
            return own;
        }
        user_config::multipart(&own, &self.user_parts)
    }

    /// mesobake's own `#cloud-config`: hostname, SSH keys, node.env and secrets.env.
    pub fn own_cloud_config(&self) -> String {
        let mut s = String::from("#cloud-config\n");
        if !self.hostname.is_empty() {
            s += &format!("hostname: {}\n", yq(&self.hostname));
            s += "manage_etc_hosts: false\n";
        }
        if !self.ssh_keys.is_empty() {
            s += "ssh_authorized_keys:\n";
            for k in &self.ssh_keys {
                s += &format!("  - {}\n", yq(k));
            }
        }
        s += "write_files:\n  - path: /etc/mesobake/node.env\n    owner: root:root\n    permissions: '0644'\n    content: ";
        s += &yq(&self.node_env_text());
        s += "\n";
        if let Some(text) = self.secrets_env_text() {
            s += "  - path: /etc/mesobake/secrets.env\n    owner: root:root\n    permissions: '0600'\n    content: ";
            s += &yq(&text);
            s += "\n";
        }
        s
    }

    /// The network-config (v2) document, if the seed configures any interface.
    pub fn network_config(&self) -> Option<String> {
        if self.network.is_empty() {
            return None;
        }
        let mut s = String::from("version: 2\nethernets:\n");
        for i in &self.network {
            s += &format!(
                "  {}:\n    match:\n      macaddress: {}\n",
                i.id,
                yq(&i.mac)
            );
            match &i.address {
                Some(a) => {
                    s += &format!("    dhcp4: false\n    addresses: [{}]\n", yq(a));
                    if let Some(g) = &i.gateway {
                        // See default_route_style: the ENI renderer turns a route into
                        // `post-up route add` (net-tools, absent from cloud images) but
                        // gateway4 into ifupdown's own `gateway` line.
                        s += &match self.route_style {
                            RouteStyle::Gateway4 => format!("    gateway4: {}\n", yq(g)),
                            RouteStyle::Routes => {
                                format!("    routes: [{{to: \"0.0.0.0/0\", via: {}}}]\n", yq(g))
                            }
                        };
                    }
                }
                None => s += "    dhcp4: true\n",
            }
            if !i.dns.is_empty() {
                let d: Vec<String> = i.dns.iter().map(|d| yq(d)).collect();
                s += &format!("    nameservers:\n      addresses: [{}]\n", d.join(", "));
            }
        }
        Some(s)
    }

    /// A short digest of everything the seed says: part of instance ids, so that a changed
    /// seed is a new instance to cloud-init and its per-instance modules run again.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let all = format!(
            "{}\0{}\0{}",
            self.user_data(),
            self.hostname,
            self.network_config().unwrap_or_default()
        );
        hex::encode(&Sha256::digest(all.as_bytes())[..4])
    }

    /// The NoCloud meta-data.
    pub fn meta_data(&self) -> String {
        let mut s = format!("instance-id: {}\n", yq(&self.instance_id));
        if !self.hostname.is_empty() {
            s += &format!("local-hostname: {}\n", yq(&self.hostname));
        }
        s
    }

    /// Writes the seed files into `dir` (user-data 0600 when it carries secrets).
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, body: String| {
            let p = dir.join(name);
            std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))
        };
        write_user_data(
            &dir.join("user-data"),
            &self.user_data(),
            self.has_secrets(),
        )?;
        write("meta-data", self.meta_data())?;
        if let Some(n) = self.network_config() {
            write("network-config", n)?;
        }
        Ok(())
    }

    /// Writes a NoCloud ISO at `iso` (files staged in a temp dir beside it). The ISO is
    /// made inside that private (0700) dir and renamed into place, 0600 when the seed
    /// carries secrets: it is never readable by others, not even half written.
    pub fn write_iso(&self, iso: &Path) -> Result<()> {
        let parent = iso.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".seed-")
            .tempdir_in(parent)?;
        let files = tmp.path().join("files");
        self.write_dir(&files)?;
        let staged = tmp.path().join("seed.iso");
        iso_from_dir(&files, &staged)?;
        let mode = if self.has_secrets() { 0o600 } else { 0o644 };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, iso).with_context(|| format!("writing {}", iso.display()))
    }
}

/// Writes a user-data file: privately (0600, see [`secrets::write_private`]) when it
/// carries secrets, else as an ordinary file.
pub fn write_user_data(path: &Path, body: &str, private: bool) -> Result<()> {
    if private {
        return secrets::write_private(path, body.as_bytes());
    }
    // A user-data that carried secrets before keeps its 0600 otherwise.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
}

/// Makes a NoCloud ISO (label `cidata`) from a directory holding user-data and meta-data.
pub fn iso_from_dir(dir: &Path, iso: &Path) -> Result<()> {
    for f in ["user-data", "meta-data"] {
        if !dir.join(f).is_file() {
            anyhow::bail!(
                "seed directory {} has no {f}: NoCloud needs both user-data and meta-data",
                dir.display()
            );
        }
    }
    // genisoimage runs inside `dir`, so a relative output path would land there.
    let iso = &std::path::absolute(iso)?;
    let mut files = vec!["user-data", "meta-data"];
    if dir.join("network-config").is_file() {
        files.push("network-config");
    }
    Cmd::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .args(&files)
        .current_dir(dir)
        .run()
        .with_context(|| format!("writing seed ISO {}", iso.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_node_env_quoted() {
        let mut s = NodeSeed {
            instance_id: "i-1".into(),
            hostname: "a1".into(),
            ..Default::default()
        };
        s.node_env
            .insert("MESOBAKE_ZK".into(), "zk://10.0.0.1:2181/mesos".into());
        s.node_env.insert("MESOBAKE_CLUSTER".into(), "it's".into());
        let ud = s.user_data();
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("path: /etc/mesobake/node.env"));
        assert!(s
            .node_env_text()
            .contains("MESOBAKE_ZK='zk://10.0.0.1:2181/mesos'\n"));
        assert!(s.node_env_text().contains(r"MESOBAKE_CLUSTER='it'\''s'"));
        assert_eq!(
            s.meta_data(),
            "instance-id: \"i-1\"\nlocal-hostname: \"a1\"\n"
        );
        assert!(!ud.contains("secrets.env"), "no secrets, no entry: {ud}");
    }

    #[test]
    fn secrets_go_in_their_own_private_entry() {
        let mut s = NodeSeed {
            instance_id: "i-1".into(),
            ..Default::default()
        };
        s.node_env
            .insert("MESOBAKE_ZK".into(), "zk://m1:2181/mesos".into());
        s.secrets_env
            .insert("MESOBAKE_AGENT_SECRET".into(), "Abc123".into());
        let ud = s.user_data();
        let at = ud.find("- path: /etc/mesobake/secrets.env").expect(&ud);
        assert!(
            ud[at..].starts_with("- path: /etc/mesobake/secrets.env\n    owner: root:root\n    permissions: '0600'\n    content: \"# "),
            "{ud}"
        );
        assert!(ud[at..].contains("MESOBAKE_AGENT_SECRET='Abc123'"));
        assert!(
            !ud[..at].contains("Abc123"),
            "node.env is secret-free: {ud}"
        );
        assert!(!s.node_env_text().contains("Abc123"));

        let tmp = tempfile::tempdir().unwrap();
        s.write_dir(tmp.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("user-data")), 0o600);
        s.secrets_env.clear();
        s.write_dir(tmp.path()).unwrap();
        assert_eq!(mode(&tmp.path().join("user-data")), 0o644 & !umask());
    }

    fn static_seed(style: RouteStyle) -> NodeSeed {
        NodeSeed {
            network: vec![NetIface {
                id: "cluster0".into(),
                mac: "52:54:00:12:34:56".into(),
                address: Some("10.20.0.11/24".into()),
                gateway: Some("10.20.0.1".into()),
                dns: vec!["10.20.0.2".into()],
            }],
            route_style: style,
            ..Default::default()
        }
    }

    #[test]
    fn gateway_is_written_in_the_chosen_style() {
        let g4 = static_seed(RouteStyle::default()).network_config().unwrap();
        assert!(g4.contains("    gateway4: \"10.20.0.1\"\n"), "{g4}");
        assert!(!g4.contains("routes"), "{g4}");
        let r = static_seed(RouteStyle::Routes).network_config().unwrap();
        assert!(
            r.contains("    routes: [{to: \"0.0.0.0/0\", via: \"10.20.0.1\"}]\n"),
            "{r}"
        );
        assert!(!r.contains("gateway4"), "{r}");
        // Everything else is the same, and the style is part of the instance id.
        assert_eq!(
            g4.lines()
                .filter(|l| !l.contains("10.20.0.1\""))
                .collect::<Vec<_>>(),
            r.lines()
                .filter(|l| !l.contains("10.20.0.1\""))
                .collect::<Vec<_>>()
        );
        assert_ne!(
            static_seed(RouteStyle::Gateway4).digest(),
            static_seed(RouteStyle::Routes).digest()
        );
        // DHCP interfaces have no gateway to write.
        let mut dhcp = static_seed(RouteStyle::Routes);
        dhcp.network[0].address = None;
        let d = dhcp.network_config().unwrap();
        assert!(!d.contains("routes") && !d.contains("gateway4"), "{d}");
    }

    #[test]
    fn route_style_follows_the_bases_cloud_init_and_renderer() {
        use NetRenderer::*;
        use RouteStyle::*;
        // Unknown: gateway4, which every cloud-init and netplan accepts.
        assert_eq!(default_route_style(None, Eni), Gateway4);
        assert_eq!(default_route_style(None, Netplan), Gateway4);
        // ENI renders routes with net-tools' `route`, in every version.
        assert_eq!(default_route_style(Some("22.4.2-1+deb12u4"), Eni), Gateway4);
        assert_eq!(default_route_style(Some("25.1.4-1"), Eni), Gateway4);
        // netplan: routes once cloud-init passes v2 through (22.3).
        assert_eq!(
            default_route_style(Some("22.2-0ubuntu1~22.04.3"), Netplan),
            Gateway4
        );
        assert_eq!(
            default_route_style(Some("0.7.5-0ubuntu1.23"), Netplan),
            Gateway4
        );
        assert_eq!(
            default_route_style(Some("22.3-13-g70ce6442-0ubuntu1~22.10.1"), Netplan),
            Routes
        );
        assert_eq!(
            default_route_style(Some("23.1.2-0ubuntu0~20.04.2"), Netplan),
            Routes
        );
        assert_eq!(
            default_route_style(Some("24.4.1-0ubuntu0~24.04.1"), Netplan),
            Routes
        );
    }

    fn umask() -> u32 {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, "").unwrap();
        0o666 & !std::fs::metadata(&p).unwrap().permissions().mode()
    }
}
