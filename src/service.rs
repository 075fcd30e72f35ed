//! The role services in one table: for each, the unit (or upstart job) names it is
//! installed under, the port it serves, how the host probes it (shared by `verify` and
//! `lab`), how much memory it wants, and its start order (the table's order).
//!
//! Adding a service is one row here plus its writer in the first-boot configurator (if it
//! needs config at all: the node exporter needs none).

use crate::profile::Service;

/// How the host reads a service's health through its forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// ZooKeeper's `srvr` four-letter word.
    ZkSrvr,
    /// A Mesos master: `/flags`, and `/state` (leader) or its redirect (follower).
    MesosMaster,
    /// Marathon's `/v2/info`.
    Marathon,
    /// A Mesos agent's `/state`.
    MesosAgent,
    /// A Prometheus exporter's `/metrics`.
    Metrics,
}

/// How much memory a service wants; sizes the OVA's VM and the EC2 instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// A JVM (ZooKeeper, Marathon): a gigabyte or more.
    Jvm,
    /// A native daemon.
    Native,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// The service.
    pub service: Service,
    /// The systemd unit or upstart job names it may be installed under, in preference
    /// order; the first one the image has is used (Mesosphere names the agent
    /// `mesos-slave`, AVENTER `mesos-agent`). The same names serve both init systems.
    pub units: &'static [&'static str],
    /// The port it serves (forwarded to 127.0.0.1 by verify and lab).
    pub port: u16,
    /// How the host probes it.
    pub probe: Probe,
    /// How much memory it wants.
    pub memory: Memory,
    /// The ports (or ranges) the node's firewall opens to the cluster networks only:
    /// the service's own, its peers' and what it hands out to tasks.
    pub guarded: &'static [&'static str],
}

/// Every service, in start order: ZooKeeper before the masters that elect through it,
/// masters before Marathon and the agents that register with them.
pub const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        service: Service::Zookeeper,
        units: &["zookeeper"],
        port: 2181,
        probe: Probe::ZkSrvr,
        memory: Memory::Jvm,
        // Clients, then the ensemble's quorum and leader-election ports.
        guarded: &["2181", "2888", "3888"],
    },
    ServiceSpec {
        service: Service::Master,
        units: &["mesos-master"],
        port: 5050,
        probe: Probe::MesosMaster,
        memory: Memory::Native,
        guarded: &["5050"],
    },
    ServiceSpec {
        service: Service::Marathon,
        units: &["marathon"],
        port: 8080,
        probe: Probe::Marathon,
        memory: Memory::Jvm,
        guarded: &["8080"],
    },
    ServiceSpec {
        service: Service::Agent,
        units: &["mesos-agent", "mesos-slave"],
        port: 5051,
        probe: Probe::MesosAgent,
        memory: Memory::Native,
        // 31000-32000: the ports resource every agent offers by default (Mesos's
        // DEFAULT_PORTS), where tasks listen.
        guarded: &["5051", "31000-32000"],
    },
    ServiceSpec {
        service: Service::NodeExporter,
        // Debian's and Ubuntu's `prometheus-node-exporter`.
        units: &["prometheus-node-exporter"],
        port: 9100,
        probe: Probe::Metrics,
        memory: Memory::Native,
        // Left open: monitoring usually scrapes from outside the cluster, and it
        // serves host metrics only (README, security model).
        guarded: &[],
    },
];

/// The row of a service.
pub fn spec(s: Service) -> &'static ServiceSpec {
    SERVICES
        .iter()
        .find(|x| x.service == s)
        .expect("every service has a row")
}

/// Whether any of `services` runs on a JVM (the OVA and EC2 sizes follow).
pub fn wants_jvm_memory(services: &[Service]) -> bool {
    services.iter().any(|s| spec(*s).memory == Memory::Jvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_one_row_in_start_order() {
        let in_table: Vec<Service> = SERVICES.iter().map(|s| s.service).collect();
        assert_eq!(in_table, Service::ALL.to_vec());
        let mut ports: Vec<u16> = SERVICES.iter().map(|s| s.port).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), SERVICES.len(), "one port each");
        for s in SERVICES {
            // Manifests and checks name a service the way profiles spell it.
            let parsed: Service =
                serde_json::from_value(serde_json::Value::String(s.service.name().into())).unwrap();
            assert_eq!(parsed, s.service);
        }
    }
}
