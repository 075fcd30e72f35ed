//! cloud-init seeds: a node's `user-data`, `meta-data` and `network-config`, written as a
//! NoCloud ISO (volume label `cidata`) for KVM and VirtualBox.
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
    /// A network-config (v2) document, if any.
    pub network_config: Option<String>,
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
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("user-data"), self.user_data())?;
        std::fs::write(dir.join("meta-data"), self.meta_data())?;
        if let Some(n) = &self.network_config {
            std::fs::write(dir.join("network-config"), n)?;
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
