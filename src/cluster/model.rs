//! The cluster.toml schema. Values that can be wrong are `Spanned`, so every error can
//! give the line, the node and the key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// cluster.toml as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterFile {
    /// The cluster name (Mesos `--cluster`, instance ids, the lab's run dir).
    pub name: Spanned<String>,
    /// SSH public keys for the default user (seeds only, never images).
    pub ssh_keys: Option<Spanned<Vec<String>>>,
    /// The cluster network.
    pub network: NetworkFile,
    /// The nodes (`[[node]]`).
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeFile>,
    /// Autoscaling agent groups (`[[group]]`), one shared user-data each.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupFile>,
    /// `mesobake lab` VM sizing.
    pub lab: Option<LabFile>,
    /// Authentication and the nodes' firewall (`[security]`).
    pub security: Option<SecurityFile>,
    /// The user's own cloud-config files for every node and group, relative to this
    /// file; merged by cloud-init after mesobake's own, in this order.
    pub cloud_config: Option<Vec<Spanned<String>>>,
}

/// `[security]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecurityFile {
    /// Mesos and Marathon authentication with generated secrets (default true). `false`
    /// gives seeds without secrets: every node runs unauthenticated, as before.
    pub auth: Option<bool>,
    /// The nodes' nftables policy (default true): ZooKeeper, Mesos, Marathon and the task
    /// ports accept only the cluster networks. `false` leaves them open to everyone.
    pub firewall: Option<bool>,
    /// Networks admitted besides `[network] cidr` (an admin network, a VPC), as IPv4
    /// CIDRs in network form, e.g. "192.168.9.0/24".
    pub allow: Option<Vec<Spanned<String>>>,
}

/// `[network]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetworkFile {
    /// The static network, e.g. "10.77.0.0/24".
    pub cidr: Option<Spanned<String>>,
    /// The default gateway.
    pub gateway: Option<Spanned<String>>,
    /// Name servers.
    pub dns: Option<Spanned<Vec<String>>>,
    /// Addresses come from DHCP instead (no cidr).
    pub dhcp: Option<Spanned<bool>>,
}

/// Per-node or per-group extras, gathered from a node or group (serde's `flatten` would
/// lose `deny_unknown_fields` and the spans).
#[derive(Debug, Default, Clone)]
pub struct ExtrasFile {
    /// Mesos agent attributes: /etc/mesos-slave/attributes/<key>.
    pub attributes: Option<Spanned<BTreeMap<String, String>>>,
    /// Mesos agent resources: /etc/mesos-slave/resources/<key>.
    pub resources: Option<Spanned<BTreeMap<String, String>>>,
    /// Extra master flag files (`?name` = bare flag).
    pub master_flags: Option<Spanned<BTreeMap<String, String>>>,
    /// Extra agent flag files (`?name` = bare flag).
    pub agent_flags: Option<Spanned<BTreeMap<String, String>>>,
}

/// `[[node]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    /// Name and hostname.
    pub name: Spanned<String>,
    /// A profile name.
    pub role: Spanned<String>,
    /// Static address (else DHCP).
    pub ip: Option<Spanned<String>>,
    /// ZooKeeper id (assigned when not given).
    pub zk_id: Option<Spanned<i64>>,
    /// MAC of the cluster NIC (derived from cluster and node name when not given).
    pub mac: Option<Spanned<String>>,
    /// Mesos agent attributes: /etc/mesos-slave/attributes/<key>.
    pub attributes: Option<Spanned<BTreeMap<String, String>>>,
    /// Mesos agent resources: /etc/mesos-slave/resources/<key>.
    pub resources: Option<Spanned<BTreeMap<String, String>>>,
    /// Extra master flag files (`?name` = bare flag).
    pub master_flags: Option<Spanned<BTreeMap<String, String>>>,
    /// Extra agent flag files (`?name` = bare flag).
    pub agent_flags: Option<Spanned<BTreeMap<String, String>>>,
    /// The user's own cloud-config files for this node, after the cluster-wide ones.
    pub cloud_config: Option<Vec<Spanned<String>>>,
}

/// `[[group]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GroupFile {
    /// Group name.
    pub name: Spanned<String>,
    /// A profile that runs only an agent.
    pub role: Spanned<String>,
    /// Instances `mesobake lab` boots (default 1).
    pub lab_count: Option<u32>,
    /// Mesos agent attributes: /etc/mesos-slave/attributes/<key>.
    pub attributes: Option<Spanned<BTreeMap<String, String>>>,
    /// Mesos agent resources: /etc/mesos-slave/resources/<key>.
    pub resources: Option<Spanned<BTreeMap<String, String>>>,
    /// Extra master flag files (`?name` = bare flag).
    pub master_flags: Option<Spanned<BTreeMap<String, String>>>,
    /// Extra agent flag files (`?name` = bare flag).
    pub agent_flags: Option<Spanned<BTreeMap<String, String>>>,
    /// The user's own cloud-config files for this group, after the cluster-wide ones.
    pub cloud_config: Option<Vec<Spanned<String>>>,
}

/// `[lab]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LabFile {
    /// Memory per VM in MiB.
    pub memory: Option<u32>,
    /// vCPUs per VM.
    pub cpus: Option<u32>,
}

macro_rules! extras_of {
    ($t:ty) => {
        impl $t {
            /// Its extras.
            pub fn extras(&self) -> ExtrasFile {
                ExtrasFile {
                    attributes: self.attributes.clone(),
                    resources: self.resources.clone(),
                    master_flags: self.master_flags.clone(),
                    agent_flags: self.agent_flags.clone(),
                }
            }
        }
    };
}
extras_of!(NodeFile);
extras_of!(GroupFile);
