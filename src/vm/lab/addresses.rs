//! The lab's members and their addresses: every node, and `lab-count` instances of each
//! group, on the cluster network. Addresses the topology leaves open are handed out here,
//! from the top of the cidr, the way a cloud's DHCP would; the topology itself
//! (`crate::cluster`) knows nothing of the lab. The one thing the lab adds to a seed's
//! user-data is `MESOBAKE_TRUSTED_MACS`, the MAC of the management NIC the host's probes
//! arrive through (the same on every VM).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::cluster::{derived_mac, prefix_mask, Cluster, Target};
use crate::profile::Service;
use crate::seed::NodeSeed;

/// One VM of the lab.
#[derive(Debug, Clone)]
pub struct LabMember {
    /// VM name (node name, or `<group>-<n>`).
    pub name: String,
    /// Its role (profile name; the image is `<role>.qcow2`).
    pub role: String,
    /// The role's services.
    pub services: Vec<Service>,
    /// Its cluster address.
    pub ip: Ipv4Addr,
    /// Its cluster NIC's MAC.
    pub mac: String,
    /// Its seed.
    pub seed: NodeSeed,
}

impl Cluster {
    /// Nodes and group instances as the lab boots them: (name, role, services, seed
    /// user-data source, address, MAC). Instances of a group share the group's user-data;
    /// addresses the topology leaves open are handed out from the top of the CIDR, the
    /// way a cloud's DHCP would.
    pub fn lab_members(&self) -> Result<Vec<LabMember>> {
        let Some((net, len)) = self.network.cidr else {
            anyhow::bail!("{}: the lab needs a static cluster network ([network] cidr): its private network has no DHCP server", self.path.display());
        };
        let d = self.derive();
        let mut used: BTreeSet<Ipv4Addr> = self.nodes.iter().filter_map(|n| n.ip).collect();
        used.extend(self.network.gateway);
        // Host addresses, without the network and broadcast addresses (none on a /31
        // or /32). Counted in u64: a /0 has 2^32 addresses.
        let size = (1u64 << (32 - u32::from(len.min(32)))).saturating_sub(2) as u32;
        let base = u32::from(net) & prefix_mask(len);
        let mut free = (1..=size)
            .rev()
            .map(|i| Ipv4Addr::from(base + i))
            .filter(|ip| !used.contains(ip));
        let mgmt = super::mgmt_mac(&self.name);
        let mut out = Vec::new();
        for n in &self.nodes {
            let mut seed = self.node_seed(&d, n, Target::NoCloud);
            let ip = match n.ip {
                Some(ip) => ip,
                None => {
                    let ip = free.next().with_context(|| {
                        format!("no free address left in the cidr for node {}", n.name)
                    })?;
                    seed.network = self.network_config(&n.mac, Some(ip)).into_iter().collect();
                    ip
                }
            };
            out.push(LabMember {
                name: n.name.clone(),
                role: n.role.clone(),
                services: n.services.clone(),
                ip,
                mac: n.mac.clone(),
                seed,
            });
        }
        for g in &self.groups {
            for i in 1..=g.lab_count {
                let name = format!("{}-{i}", g.name);
                let mac = derived_mac(&self.name, &name);
                let ip = free
                    .next()
                    .with_context(|| format!("no free address left in the cidr for {name}"))?;
                let mut seed = self.group_seed(&d, g);
                // Per instance: the NoCloud instance id (set below) and the network (the
                // platform's part); the user-data stays the group's, the same for every
                // instance.
                seed.network = self.network_config(&mac, Some(ip)).into_iter().collect();
                out.push(LabMember {
                    name,
                    role: g.role.clone(),
                    services: g.services.clone(),
                    ip,
                    mac,
                    seed,
                });
            }
        }
        for m in &mut out {
            if m.mac == mgmt {
                anyhow::bail!(
                    "{}: {}'s MAC {} is the lab's management NIC's: give the node another mac",
                    self.path.display(),
                    m.name,
                    m.mac
                );
            }
            // The host's probes arrive through the management NIC: the node's firewall
            // trusts it. The same line for every VM, so a group's instances still share
            // one user-data.
            if self.firewall {
                m.seed
                    .node_env
                    .insert("MESOBAKE_TRUSTED_MACS".into(), mgmt.clone());
            }
            m.seed.instance_id = format!("{}-{}-{}", self.name, m.name, m.seed.digest());
        }
        Ok(out)
    }
}
