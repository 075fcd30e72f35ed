//! What got installed: the init system and the Mesos package layout.
//!
//! Mesosphere's packages name the agent `mesos-slave` and read `/etc/mesos-slave`;
//! AVENTER's `aventer-mesos` names it `mesos-agent` and reads `/etc/mesos-agent`. The
//! layout is read from the files the packages installed, never assumed.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::image::ImageRoot;
use crate::profile::{Profile, Service};

/// The image's init system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// systemd (Ubuntu 16.04 and later, Debian 8 and later).
    Systemd,
    /// upstart (Ubuntu 14.04).
    Upstart,
}

impl Init {
    /// The name the configurator's role.env uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Upstart => "upstart",
        }
    }
}

/// Whose Mesos packaging is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Packaging {
    /// Mesosphere's `mesos` (Apache Mesos builds): `mesos-slave`, `/etc/mesos-slave`,
    /// `/etc/default/mesos*`. Apache 1.11's Docker containerizer needs cgroup v1.
    Mesosphere,
    /// AVENTER's `aventer-mesos` (clusterd): `mesos-agent`, `/etc/mesos-agent`, no
    /// `/etc/default` files; runs on cgroup v2.
    Aventer,
}

/// Where the installed packages put things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The init system.
    pub init: Init,
    /// Whose Mesos packages (None when no Mesos is installed).
    #[serde(default)]
    pub packaging: Option<Packaging>,
    /// The cgroup hierarchy the image boots (set by the configure stage).
    #[serde(default)]
    pub cgroup: Option<super::cgroup::Cgroup>,
    /// The agent's service name: `mesos-slave` or `mesos-agent` (None when no Mesos agent
    /// is installed).
    pub agent_service: Option<String>,
    /// The agent's flag directory.
    pub agent_dir: Option<String>,
    /// The agent's /etc/default file.
    pub agent_defaults: Option<String>,
    /// Which of the four services exist in the image, as (service, unit or job name).
    pub installed: Vec<(Service, String)>,
}

const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
];

/// Whether an init script, unit or upstart job called `name` exists in the image.
fn has_service(root: &ImageRoot, init: Init, name: &str) -> bool {
    let sysv = root.exists(&format!("etc/init.d/{name}"));
    match init {
        Init::Systemd => {
            sysv || UNIT_DIRS
                .iter()
                .any(|d| root.exists(&format!("{d}/{name}.service")))
        }
        Init::Upstart => sysv || root.exists(&format!("etc/init/{name}.conf")),
    }
}

/// Detects the init system from /sbin/init and what is installed.
pub fn detect_init(root: &ImageRoot) -> Init {
    let init_target = std::fs::read_link(root.path().join("sbin/init")).ok();
    let init_is_systemd = init_target
        .as_ref()
        .is_some_and(|t| t.to_string_lossy().contains("systemd"));
    let upstart_init = (root.exists("sbin/initctl")
        && root.exists("etc/init")
        && !root.exists("lib/systemd/systemd"))
        || root.exists("sbin/upstart");
    if !init_is_systemd && upstart_init {
        Init::Upstart
    } else {
        Init::Systemd
    }
}

/// Detects the layout of what got installed.
pub fn detect(root: &ImageRoot) -> Layout {
    let init = detect_init(root);
    let (agent_service, agent_dir, agent_defaults) = if has_service(root, init, "mesos-agent") {
        (
            Some("mesos-agent"),
            Some("/etc/mesos-agent"),
            Some("/etc/default/mesos-agent"),
        )
    } else if has_service(root, init, "mesos-slave") {
        (
            Some("mesos-slave"),
            Some("/etc/mesos-slave"),
            Some("/etc/default/mesos-slave"),
        )
    } else {
        (None, None, None)
    };
    let installed = crate::service::SERVICES
        .iter()
        .filter_map(|spec| {
            let unit = spec.units.iter().find(|u| has_service(root, init, u))?;
            Some((spec.service, unit.to_string()))
        })
        .collect();
    let packaging = match agent_service {
        Some("mesos-agent") => Some(Packaging::Aventer),
        Some(_) => Some(Packaging::Mesosphere),
        None => None,
    };
    Layout {
        init,
        packaging,
        cgroup: None,
        agent_service: agent_service.map(String::from),
        agent_dir: agent_dir.map(String::from),
        agent_defaults: agent_defaults.map(String::from),
        installed,
    }
}

impl Layout {
    /// The installed unit or job name of a service.
    pub fn unit(&self, s: Service) -> Option<&str> {
        self.installed
            .iter()
            .find(|(x, _)| *x == s)
            .map(|(_, n)| n.as_str())
    }

    /// Fails unless every service the role runs is installed, naming what is missing.
    pub fn check_role(&self, profile: &Profile) -> Result<()> {
        let missing: Vec<_> = profile
            .services
            .iter()
            .filter(|s| self.unit(**s).is_none())
            .map(|s| s.name().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the role {} runs {} but the installed packages provide no such service; check [packages] install (installed: {})",
                profile.name,
                missing.join(", "),
                if self.installed.is_empty() {
                    "none".to_string()
                } else {
                    self.installed.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
                }
            );
        }
        Ok(())
    }

    /// The role's services as unit names, in start order.
    pub fn role_units(&self, profile: &Profile) -> Vec<String> {
        Service::ALL
            .iter()
            .filter(|s| profile.runs(**s))
            .filter_map(|s| self.unit(*s).map(String::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "").unwrap();
    }

    #[test]
    fn mesosphere_layout_on_systemd() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("sbin")).unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", d.path().join("sbin/init")).unwrap();
        touch(d.path(), "lib/systemd/system/mesos-master.service");
        touch(d.path(), "lib/systemd/system/mesos-slave.service");
        touch(d.path(), "etc/init.d/zookeeper");
        let l = detect(&ImageRoot::open(d.path()).unwrap());
        assert_eq!(l.init, Init::Systemd);
        assert_eq!(l.agent_service.as_deref(), Some("mesos-slave"));
        assert_eq!(l.agent_dir.as_deref(), Some("/etc/mesos-slave"));
        assert_eq!(l.unit(Service::Zookeeper), Some("zookeeper"));
        assert_eq!(l.unit(Service::Marathon), None);
    }

    #[test]
    fn optional_services_are_found_by_the_table() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "lib/systemd/system/mesos-agent.service");
        touch(
            d.path(),
            "lib/systemd/system/prometheus-node-exporter.service",
        );
        let l = detect(&ImageRoot::open(d.path()).unwrap());
        assert_eq!(
            l.unit(Service::NodeExporter),
            Some("prometheus-node-exporter")
        );
        assert_eq!(l.unit(Service::Agent), Some("mesos-agent"));
    }

    #[test]
    fn aventer_layout_and_upstart_are_detected() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "lib/systemd/system/mesos-agent.service");
        let l = detect(&ImageRoot::open(d.path()).unwrap());
        assert_eq!(l.agent_service.as_deref(), Some("mesos-agent"));
        assert_eq!(l.agent_dir.as_deref(), Some("/etc/mesos-agent"));

        let u = tempfile::tempdir().unwrap();
        touch(u.path(), "sbin/initctl");
        touch(u.path(), "sbin/init");
        touch(u.path(), "etc/init/mesos-slave.conf");
        touch(u.path(), "etc/init/mesos-master.conf");
        let l = detect(&ImageRoot::open(u.path()).unwrap());
        assert_eq!(l.init, Init::Upstart);
        assert_eq!(l.unit(Service::Master), Some("mesos-master"));
        assert_eq!(l.agent_service.as_deref(), Some("mesos-slave"));
    }
}
