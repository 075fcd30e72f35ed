//! cloud-init seeds: a node's `user-data`, `meta-data` and `network-config`, written as a
//! NoCloud ISO (volume label `cidata`) for KVM and VirtualBox, and as plain EC2 user-data.
//!
//! network-config is version 2 restricted to what Debian 12's cloud-init 22.4 renders
//! with its ENI renderer: interfaces matched by MAC (22.4 looks the name up by MAC, so no
//! `set-name` and no rename), `addresses`, `gateway4` rather than `routes` (22.4 does not
//! know `to: default`) and `nameservers`.
//!
//! Node settings travel as `/etc/mesobake/node.env`, written by cloud-init's
//! `write_files`; the first-boot configurator reads that file.

use std::collections::BTreeMap;
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
    /// SSH public keys for the default user.
    pub ssh_keys: Vec<String>,
    /// Interfaces for network-config (v2); none means no network-config file, so
    /// cloud-init's fallback (DHCP on the first NIC) applies.
    pub network: Vec<NetIface>,
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

impl NodeSeed {
    /// The node.env file content.
    pub fn node_env_text(&self) -> String {
        let mut s = String::from("# Written by cloud-init from mesobake's seed.\n");
        for (k, v) in &self.node_env {
            s += &format!("{k}='{}'\n", v.replace('\'', r"'\''"));
        }
        s
    }

    /// The `#cloud-config` user-data.
    pub fn user_data(&self) -> String {
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
                        // gateway4, not routes: 22.4's ENI renderer turns a route into
                        // `post-up route add` (net-tools, absent from cloud images) but
                        // gateway4 into ifupdown's own `gateway` line.
                        s += &format!("    gateway4: {}\n", yq(g));
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

    /// Writes the seed files into `dir`.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, body: String| {
            let p = dir.join(name);
            std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))
        };
        write("user-data", self.user_data())?;
        write("meta-data", self.meta_data())?;
        if let Some(n) = self.network_config() {
            write("network-config", n)?;
        }
        Ok(())
    }

    /// Writes a NoCloud ISO at `iso` (files staged in a temp dir beside it).
    pub fn write_iso(&self, iso: &Path) -> Result<()> {
        let parent = iso.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".seed-")
            .tempdir_in(parent)?;
        self.write_dir(tmp.path())?;
        iso_from_dir(tmp.path(), iso)
    }
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
    }
}
